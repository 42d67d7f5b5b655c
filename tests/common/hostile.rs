//! Hand-made binary caches for the adversarial tests: signed (or mis-signed) narinfos and NARs
//! written with storefs' own NAR writer and the fixture's signing key, served by real nginx.

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use storefs::nix::hash::NarHash;
use storefs::nix::nar::Node;
use storefs::nix::narinfo::NarInfo;
use storefs::nix::signature::SigningKey;

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A made-up but valid store path basename, distinct for each `seed`.
pub fn fake_basename(seed: usize, name: &str) -> String {
    let hash: String =
        (0..32).map(|j| NIX32[(seed * 7 + j * 3 + seed / 32) % 32] as char).collect();
    format!("{hash}-{name}")
}

/// A directory laid out as a binary cache, written path by path.
#[derive(Debug)]
pub struct CacheWriter {
    /// The cache directory.
    pub dir: PathBuf,
    /// The key narinfos are signed with.
    pub key: SigningKey,
}

/// What to do to a narinfo or its NAR after signing.
#[derive(Clone, Copy, Debug)]
pub enum Tamper {
    /// Nothing: a valid entry.
    None,
    /// Replace NarHash after signing.
    NarHash,
    /// Add 8 to NarSize after signing.
    NarSize,
    /// Change References after signing.
    References,
    /// Serve other bytes of the same length than the ones signed.
    OtherNar,
    /// Serve only the first half of the NAR.
    TruncatedNar,
}

impl CacheWriter {
    /// Creates `dir` with a nix-cache-info.
    pub fn new(dir: &Path, key: SigningKey) -> Self {
        fs::create_dir_all(dir.join("nar")).unwrap();
        fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
        Self { dir: dir.into(), key }
    }

    /// Publishes `nar` as store path `basename` (uncompressed), tampered as asked.
    pub fn publish(&self, basename: &str, nar: &[u8], tamper: Tamper) {
        let hash = basename.split('-').next().unwrap();
        let nar_hash = NarHash::from_digest(Sha256::digest(nar).into());
        let url = format!("nar/{hash}.nar");
        let text = format!(
            "StorePath: /nix/store/{basename}\nURL: {url}\nCompression: none\n\
             NarHash: {nar_hash}\nNarSize: {}\nReferences: \n",
            nar.len()
        );
        let info = NarInfo::parse(text.as_bytes()).unwrap();
        let mut text = format!("{text}Sig: {}\n", self.key.sign(&info));
        let mut body = nar.to_vec();
        match tamper {
            Tamper::None => {}
            Tamper::NarHash => {
                let other = NarHash::from_digest(Sha256::digest(b"other").into());
                text = text.replace(&nar_hash.to_string(), &other.to_string());
            }
            Tamper::NarSize => {
                text = text.replace(
                    &format!("NarSize: {}", nar.len()),
                    &format!("NarSize: {}", nar.len() + 8),
                );
            }
            Tamper::References => {
                text = text.replace(
                    "References: \n",
                    &format!("References: {}\n", fake_basename(999, "injected")),
                );
            }
            Tamper::OtherNar => {
                let last = body.len() - 9;
                body[last] ^= 0xff;
            }
            Tamper::TruncatedNar => body.truncate(nar.len() / 2),
        }
        fs::write(self.dir.join(format!("{hash}.narinfo")), text).unwrap();
        fs::write(self.dir.join(url), body).unwrap();
    }
}

/// A small valid directory NAR.
pub fn small_tree_nar(marker: &str) -> Vec<u8> {
    Node::Directory(vec![
        (b"a".to_vec(), Node::File { executable: false, contents: marker.as_bytes().to_vec() }),
        (b"b".to_vec(), Node::File { executable: true, contents: b"#!/bin/sh\n".to_vec() }),
    ])
    .to_nar()
}
