//! What the plain-program benchmarks share: a cache directory filled with many small signed
//! entries (written directly, as the daemon would have published them), and a median.

#![allow(dead_code, reason = "each benchmark uses a part")]

use std::path::Path;
use std::time::Duration;

use sha2::{Digest, Sha256};
use storefs::cache::manifest::{Manifest, Node};
use storefs::nix::hash::NarHash;
use storefs::nix::narinfo::NarInfo;
use storefs::nix::nixbase32;
use storefs::nix::signature::SigningKey;

/// Writes `entries` cached paths, each a single 5-byte file `hello` (its own cache file `f0`),
/// signed by `key`; returns their basenames in creation order.
pub fn populate(root: &Path, key: &SigningKey, entries: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(entries);
    std::fs::create_dir_all(root.join("entries")).unwrap();
    std::fs::create_dir_all(root.join("pins")).unwrap();
    std::fs::write(root.join("VERSION"), "storefs-cache 1\n").unwrap();
    std::fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    for i in 0..entries {
        let digest: [u8; 20] = Sha256::digest(i.to_le_bytes())[..20].try_into().unwrap();
        let hash = nixbase32::encode(&digest);
        let text = format!(
            "StorePath: /nix/store/{hash}-bench-{i}\nURL: nar/x.nar\nCompression: none\n\
             NarHash: {}\nNarSize: 120\nReferences: \n",
            NarHash::from_digest(Sha256::digest(hash.as_bytes()).into())
        );
        let mut info = NarInfo::parse(text.as_bytes()).unwrap();
        info.signatures.push(key.sign(&info));
        let manifest = Manifest {
            narinfo: info.to_string(),
            disk_bytes: 8192,
            nodes: vec![Node::File {
                parent: 0,
                executable: false,
                size: 5,
                packed: None,
                sums: None,
            }],
        };
        let dir = root.join("entries").join(&hash);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("manifest"), manifest.encode()).unwrap();
        std::fs::write(dir.join("f0"), "hello").unwrap();
        names.push(format!("{hash}-bench-{i}"));
    }
    names
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
