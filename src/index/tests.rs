//! Tests of `storefs index` over small caches written here (real-Nix caches: tests/index.rs).

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::*;
use crate::nix::file_index::SignedIndex;
use crate::nix::hash::NarHash;
use crate::nix::nar::Node;
use crate::nix::narinfo::{Compression, NarInfo};
use crate::nix::nixbase32;
use crate::nix::signature::TrustedKeys;
use crate::nix::store_path::StorePath;

fn key() -> SigningKey {
    SigningKey::generate("cache-test-1", [3; 32])
}

fn tree(n: u8) -> Node {
    Node::Directory(vec![
        (b"bin".to_vec(), Node::File { executable: true, contents: vec![n; 100] }),
        (b"lib".to_vec(), Node::File { executable: false, contents: vec![n; 300_000] }),
        (b"link".to_vec(), Node::Symlink { target: b"bin".to_vec() }),
    ])
}

/// Writes `<hash>.narinfo` and its NAR (xz or none) at `url`, signed; returns the narinfo path.
fn add_path(dir: &Path, hash: &str, nar: &[u8], compression: Compression, url: &str) -> NarInfo {
    fs::create_dir_all(dir.join("nar")).unwrap();
    let body = match compression {
        Compression::Xz => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
            e.write_all(nar).unwrap();
            e.finish().unwrap()
        }
        _ => nar.to_vec(),
    };
    fs::write(dir.join(url), &body).unwrap();
    let mut info = NarInfo {
        store_path: StorePath::from_basename(format!("{hash}-p").as_bytes()).unwrap(),
        url: url.to_owned(),
        compression,
        nar_hash: NarHash::from_digest(Sha256::digest(nar).into()),
        nar_size: nar.len() as u64,
        file_hash: Some(NarHash::from_digest(Sha256::digest(&body).into()).to_string()),
        file_size: Some(body.len() as u64),
        references: Vec::new(),
        deriver: None,
        signatures: Vec::new(),
        ca: None,
    };
    info.signatures.push(key().sign(&info));
    fs::write(dir.join(format!("{hash}.narinfo")), info.to_string()).unwrap();
    info
}

fn settings(dir: &Path) -> IndexSettings {
    IndexSettings {
        dir: dir.to_path_buf(),
        key: key(),
        jobs: 2,
        frame_bytes: 64 << 10,
        zstd_level: DEFAULT_ZSTD_LEVEL,
        warm: None,
    }
}

fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for sub in ["", "nar"] {
        for e in fs::read_dir(dir.join(sub)).unwrap().flatten() {
            if e.path().is_file() && e.file_name() != LOCK_FILE {
                out.push((
                    format!("{sub}/{}", e.file_name().to_string_lossy()),
                    fs::read(e.path()).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

const H1: &str = "7rjj86a15146cq1d3qy068lml7n8ykzm";
const H2: &str = "0rjj86a15146cq1d3qy068lml7n8ykzm";
const H3: &str = "1rjj86a15146cq1d3qy068lml7n8ykzm";

#[test]
fn indexes_every_path_keeps_signatures_and_a_rerun_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let nar1 = tree(1).to_nar();
    let nar2 = tree(2).to_nar();
    let old1 = add_path(dir.path(), H1, &nar1, Compression::Xz, "nar/one.nar.xz");
    add_path(dir.path(), H2, &nar2, Compression::None, "nar/two.nar");
    let summary = run(&settings(dir.path()), &|_| {}).unwrap();
    assert_eq!((summary.indexed, summary.skipped, summary.failed.len()), (2, 0, 0));
    assert!(summary.frames >= 2 * 5, "300 kB in 64 KiB frames: {}", summary.frames);

    let text = fs::read(dir.path().join(format!("{H1}.narinfo"))).unwrap();
    let new1 = NarInfo::parse(&text).unwrap();
    assert_eq!(new1.signatures, old1.signatures, "Sig lines untouched");
    assert_eq!(new1.fingerprint(), old1.fingerprint());
    let keys = TrustedKeys::new(vec![key().public()]).unwrap();
    keys.verify(&new1).unwrap();
    assert_eq!(new1.compression, Compression::Zstd);
    let file = fs::read(dir.path().join(&new1.url)).unwrap();
    let digest = nixbase32::encode(&Sha256::digest(&file));
    assert_eq!(new1.url, format!("nar/{digest}.nar.zst"));
    assert_eq!(new1.file_size, Some(file.len() as u64));
    let mut decoded = Vec::new();
    zstd::stream::read::Decoder::new(&file[..]).unwrap().read_to_end(&mut decoded).unwrap();
    assert_eq!(decoded, nar1);
    assert!(!dir.path().join("nar/one.nar.xz").exists(), "the old NAR is removed");

    let index = fs::read(dir.path().join(format!("{H1}{INDEX_SUFFIX}"))).unwrap();
    let (ix, _) = SignedIndex::open(&index, &keys, &new1).unwrap();
    ix.check_tree(&nar1[..]).unwrap();

    let before = snapshot(dir.path());
    let again = run(&settings(dir.path()), &|_| {}).unwrap();
    assert_eq!((again.indexed, again.skipped), (0, 2));
    assert_eq!(snapshot(dir.path()), before);
}

#[test]
fn a_bad_nar_fails_its_path_only_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    add_path(dir.path(), H1, &tree(1).to_nar(), Compression::None, "nar/one.nar");
    add_path(dir.path(), H2, &tree(2).to_nar(), Compression::None, "nar/two.nar");
    // Same size, other bytes: NarHash differs.
    let mut other = tree(2).to_nar();
    let middle = other.len() / 2; // inside lib's contents
    other[middle] ^= 1;
    fs::write(dir.path().join("nar/two.nar"), &other).unwrap();
    let before = fs::read(dir.path().join(format!("{H2}.narinfo"))).unwrap();
    let summary = run(&settings(dir.path()), &|_| {}).unwrap();
    assert_eq!(summary.indexed, 1);
    let (name, err) = &summary.failed[0];
    assert_eq!(name, &format!("{H2}.narinfo"));
    assert!(err.contains("nar/two.nar") && err.contains("NarHash"), "{err}");
    assert_eq!(fs::read(dir.path().join(format!("{H2}.narinfo"))).unwrap(), before);
    assert!(!dir.path().join(format!("{H2}{INDEX_SUFFIX}")).exists());
}

#[test]
fn a_nar_shared_by_two_narinfos_is_removed_after_both_moved() {
    let dir = tempfile::tempdir().unwrap();
    let nar = tree(1).to_nar();
    add_path(dir.path(), H1, &nar, Compression::None, "nar/shared.nar");
    add_path(dir.path(), H3, &nar, Compression::None, "nar/shared.nar");
    let counts = url_counts(dir.path(), &narinfo_names(dir.path()).unwrap());
    assert!(!counts.moved("nar/shared.nar", "nar/new.nar.zst"));
    assert!(counts.moved("nar/shared.nar", "nar/new.nar.zst"));
    let summary = run(&settings(dir.path()), &|_| {}).unwrap();
    assert_eq!(summary.indexed, 2);
    assert!(!dir.path().join("nar/shared.nar").exists());
}

#[test]
fn a_url_outside_the_cache_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let nar = tree(1).to_nar();
    add_path(dir.path(), H1, &nar, Compression::None, "nar/one.nar");
    let file = dir.path().join(format!("{H1}.narinfo"));
    let text = fs::read_to_string(&file).unwrap().replace("URL: nar/one.nar", "URL: ../one.nar");
    fs::write(&file, text).unwrap();
    let summary = run(&settings(dir.path()), &|_| {}).unwrap();
    assert!(summary.failed[0].1.contains("\"../one.nar\" is not a relative path inside"));
}

/// `settings` of cache `dir` with the warm lists of the log `lines`, written in `logs`.
fn with_warm(dir: &Path, logs: &Path, lines: &str) -> IndexSettings {
    let log = logs.join("reads.log");
    fs::write(&log, lines).unwrap();
    IndexSettings { warm: Some(Arc::new(warm::WarmLists::read(&log).unwrap())), ..settings(dir) }
}

/// The warm list of `hash`'s index in `dir`, as (node, rank) pairs.
fn warm_of(dir: &Path, hash: &str) -> Vec<(crate::nix::nar::NodeId, u64)> {
    let index = fs::read(dir.join(format!("{hash}{INDEX_SUFFIX}"))).unwrap();
    SignedIndex::parse(&index).unwrap().index.warm.iter().map(|w| (w.node, w.rank)).collect()
}

/// The warm paths of `hash`'s index in `dir`.
fn warm_paths_of(dir: &Path, hash: &str) -> Vec<String> {
    let index = fs::read(dir.join(format!("{hash}{INDEX_SUFFIX}"))).unwrap();
    let index = SignedIndex::parse(&index).unwrap().index;
    index.warm_paths.iter().map(StorePath::to_absolute_path).collect()
}

#[test]
fn a_warm_list_goes_into_new_indexes_and_rewrites_only_indexes_whose_list_changed() {
    let dir = tempfile::tempdir().unwrap();
    let logs = tempfile::tempdir().unwrap();
    add_path(dir.path(), H1, &tree(1).to_nar(), Compression::None, "nar/one.nar");
    add_path(dir.path(), H2, &tree(2).to_nar(), Compression::None, "nar/two.nar");
    // Nodes of `tree`: 0 root, 1 bin, 2 lib, 3 link.
    let first = format!("/nix/store/{H1}-p/lib\n/nix/store/{H1}-p/bin\n/nix/store/{H1}-p/nope\n");
    let summary = run(&with_warm(dir.path(), logs.path(), &first), &|_| {}).unwrap();
    assert_eq!((summary.indexed, summary.warm_files, summary.rewarmed), (2, 2, 0));
    assert_eq!(warm_of(dir.path(), H1), vec![(2, 0), (1, 1)]);
    assert!(warm_of(dir.path(), H2).is_empty());
    assert!(warm_paths_of(dir.path(), H1).is_empty(), "the log names no other path");

    // The same list again, and no list at all: nothing is written.
    let before = snapshot(dir.path());
    let again = run(&with_warm(dir.path(), logs.path(), &first), &|_| {}).unwrap();
    assert_eq!((again.skipped, again.rewarmed), (2, 0));
    let plain = run(&settings(dir.path()), &|_| {}).unwrap();
    assert_eq!((plain.skipped, plain.rewarmed), (2, 0));
    assert_eq!(snapshot(dir.path()), before);

    // A new list: only the indexes whose list changes are written, NARs and narinfos stay.
    let second = format!("/nix/store/{H2}-p/bin\n/nix/store/{H1}-p/lib\n");
    let changed = run(&with_warm(dir.path(), logs.path(), &second), &|_| {}).unwrap();
    assert_eq!((changed.indexed, changed.rewarmed, changed.warm_files), (0, 2, 2));
    assert_eq!(warm_of(dir.path(), H1), vec![(2, 1)]);
    assert_eq!(warm_of(dir.path(), H2), vec![(1, 0)]);
    // Each names the other path the run used.
    assert_eq!(warm_paths_of(dir.path(), H1), [format!("/nix/store/{H2}-p")]);
    assert_eq!(warm_paths_of(dir.path(), H2), [format!("/nix/store/{H1}-p")]);
    let after = snapshot(dir.path());
    let unchanged = |(name, _): &&(String, Vec<u8>)| !name.ends_with(INDEX_SUFFIX);
    assert!(before.iter().filter(unchanged).eq(after.iter().filter(unchanged)));
    // Each rewritten index still verifies against its narinfo.
    let keys = TrustedKeys::new(vec![key().public()]).unwrap();
    for hash in [H1, H2] {
        let info = NarInfo::parse(&fs::read(dir.path().join(format!("{hash}.narinfo"))).unwrap());
        let index = fs::read(dir.path().join(format!("{hash}{INDEX_SUFFIX}"))).unwrap();
        SignedIndex::open(&index, &keys, &info.unwrap()).unwrap();
    }
}
