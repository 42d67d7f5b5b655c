//! Names and link targets from a NAR are data, never paths on this host. Reliability case
//! NAR-10: names that one filesystem would fold together (`Foo` and `foo`, NFC and NFD spellings
//! of `â`) stay distinct whatever the cache filesystem folds, because no NAR name ever becomes a
//! name on that filesystem. NAR-4: symlink targets are returned verbatim, never followed.

use crate::cache::tests::{Fixture, key, publish, sp};
use crate::nix::nar::Node as NarNode;

use super::*;

/// NFC `â` (U+00E2) and NFD `a` + U+0302: equal under Unicode normalisation.
const NFC: &str = "\u{e2}";
const NFD: &str = "a\u{302}";

#[tokio::test]
async fn names_that_fold_together_stay_distinct_and_never_reach_the_disk() {
    let fx = Fixture::new(1);
    let path = sp('f', "folding");
    // NAR order is byte order: `Foo` < `a\u{302}` < `foo` < `\u{e2}`.
    let names = ["Foo", NFD, "foo", NFC];
    let file =
        |i: usize| NarNode::File { executable: false, contents: vec![b'0' + i as u8; 70_000 + i] };
    let tree = NarNode::Directory(
        names.iter().enumerate().map(|(i, n)| (n.as_bytes().to_vec(), file(i))).collect(),
    );
    publish(&fx.ups[0], &key(), &path, &tree);
    let fs = Arc::new(StoreFs::new(fx.open()));
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    let mut inodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let found = fs.lookup(root.attr.ino, name.as_bytes()).wait().await.unwrap();
        assert_eq!(found.attr.size, 70_000 + i as u64, "{name:?}");
        let bytes = fs.read(found.attr.ino, NO_HANDLE, 0, 100_000).wait().await.unwrap();
        assert_eq!(bytes, vec![b'0' + i as u8; 70_000 + i], "{name:?} reads its own bytes");
        inodes.push(found.attr.ino);
    }
    inodes.dedup();
    assert_eq!(inodes.len(), names.len(), "four distinct inodes");
    // On disk: the manifest and `f<node id>` files (these are larger than the pack's 64 KiB
    // limit), never a name from the NAR.
    let dir = fx.config.dir.join("entries").join(path.hash_part());
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    assert_eq!(on_disk, ["f1", "f2", "f3", "f4", "manifest"], "{dir:?}");
}

/// NAR-4: symlink targets that are absolute, climb out of the store path, or name a FIFO on
/// this host are data: `readlink` returns them verbatim and the daemon never resolves them, so
/// a FIFO behind one (which would block an `open`) costs it nothing.
#[tokio::test]
async fn symlink_targets_are_returned_verbatim_and_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let targets: Vec<(&[u8], Vec<u8>)> = vec![
        (b"climb", b"../../../../etc/shadow".to_vec()),
        (b"fifo", fifo.as_os_str().as_encoded_bytes().to_vec()),
        (b"shadow", b"/etc/shadow".to_vec()),
    ];
    let tree = NarNode::Directory(
        targets
            .iter()
            .map(|(name, target)| (name.to_vec(), NarNode::Symlink { target: target.clone() }))
            .collect(),
    );
    let fx = Fixture::new(1);
    let path = sp('l', "links");
    publish(&fx.ups[0], &key(), &path, &tree);
    let fs = Arc::new(StoreFs::new(fx.open()));
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    let start = std::time::Instant::now();
    for (name, target) in &targets {
        let link = fs.lookup(root.attr.ino, name).wait().await.unwrap();
        assert_eq!(link.attr.kind, Kind::Symlink);
        assert_eq!(link.attr.size, target.len() as u64);
        assert_eq!(&fs.readlink(link.attr.ino).unwrap(), target);
    }
    assert!(start.elapsed() < std::time::Duration::from_secs(2), "nothing blocked on the FIFO");
}
