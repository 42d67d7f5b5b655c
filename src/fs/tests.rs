//! Filesystem semantics over in-memory upstreams: lookups, attributes, listings, links, reads,
//! errno choices. No kernel involved.

use crate::cache::tests::{Fixture, key, publish, sp, tree};

use super::*;

fn mounted(fx: &Fixture) -> Arc<StoreFs> {
    Arc::new(StoreFs::new(fx.open()))
}

/// The answer, which must be ready without a fetch.
fn now<T>(answer: Answer<T>) -> Result<T, FsError> {
    match answer {
        Answer::Now(result) => result,
        Answer::AfterFetch(_) => panic!("needed a fetch, expected an answer now"),
    }
}

#[tokio::test]
async fn invalid_names_are_enoent_without_requests() {
    let fx = Fixture::new(1);
    let fs = mounted(&fx);
    for name in [&b"hello"[..], b"", b".", b"..", b"00000000000000000000000000000000", b"x/y"] {
        let err = fs.lookup(inode::ROOT_INO, name).wait().await.unwrap_err();
        assert_eq!(err.errno(), libc::ENOENT, "{:?}", String::from_utf8_lossy(name));
    }
    assert_eq!(fx.ups[0].requests(), (0, 0));
}

#[tokio::test]
async fn a_store_path_reads_like_the_nar_said() {
    let fx = Fixture::new(1);
    let path = sp('a', "tool");
    publish(&fx.ups[0], &key(), &path, &tree("#!/bin/sh\n", 3));
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    assert_eq!((root.attr.kind, root.attr.perm, root.attr.nlink), (Kind::Directory, 0o555, 3));
    let bin = fs.lookup(root.attr.ino, b"bin").wait().await.unwrap();
    let tool = fs.lookup(bin.attr.ino, b"tool").wait().await.unwrap();
    assert_eq!((tool.attr.kind, tool.attr.perm, tool.attr.size), (Kind::File, 0o555, 10));
    let data = fs.lookup(root.attr.ino, b"data").wait().await.unwrap();
    assert_eq!(data.attr.perm, 0o444);
    let link = fs.lookup(root.attr.ino, b"link").wait().await.unwrap();
    assert_eq!(link.attr.kind, Kind::Symlink);
    assert_eq!(fs.readlink(link.attr.ino).unwrap(), b"bin/tool");
    assert_eq!(fs.readlink(data.attr.ino).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(fs.getattr(tool.attr.ino).unwrap().attr, tool.attr);

    let fh = now(fs.open(tool.attr.ino, libc::O_RDONLY)).expect("cached");
    assert_eq!(now(fs.read(tool.attr.ino, fh, 2, 100)).unwrap(), b"/bin/sh\n");
    assert_eq!(now(fs.read(tool.attr.ino, fh, 10, 100)).unwrap(), b"");
    fs.release(fh);
    let stale = now(fs.read(tool.attr.ino, fh, 2, 100)).expect("an unknown handle reads the inode");
    assert_eq!(stale, b"/bin/sh\n", "a handle a predecessor daemon opened still reads");

    let names: Vec<_> = fs.readdir(root.attr.ino, 0).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, [&b"."[..], b"..", b"bin", b"data", b"link"]);
    let rest = fs.readdir(root.attr.ino, 3).unwrap();
    assert_eq!(rest.len(), 2, "offsets resume where the kernel left off");
    assert_eq!(rest[0].name, b"data");
    let roots = fs.readdir(inode::ROOT_INO, 2).unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].name, path.to_string().as_bytes());
    assert!(fs.readdir(inode::ROOT_INO, roots[0].next_offset).unwrap().is_empty());
}

#[tokio::test]
async fn wrong_kinds_and_writes_get_their_errno() {
    let fx = Fixture::new(1);
    let path = sp('b', "x");
    publish(&fx.ups[0], &key(), &path, &tree("x", 1));
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    let data = fs.lookup(root.attr.ino, b"data").wait().await.unwrap();
    assert_eq!(
        fs.open(data.attr.ino, libc::O_WRONLY).wait().await.unwrap_err().errno(),
        libc::EROFS
    );
    assert_eq!(fs.open(data.attr.ino, libc::O_RDWR).wait().await.unwrap_err().errno(), libc::EROFS);
    assert_eq!(
        fs.open(root.attr.ino, libc::O_RDONLY).wait().await.unwrap_err().errno(),
        libc::EISDIR
    );
    assert_eq!(fs.lookup(data.attr.ino, b"x").wait().await.unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(fs.lookup(root.attr.ino, b"nope").wait().await.unwrap_err().errno(), libc::ENOENT);
    assert_eq!(fs.getattr(42 << inode::NODE_BITS).unwrap_err().errno(), libc::ESTALE);
}

#[tokio::test]
async fn untrusted_paths_are_eio_and_absent_ones_enoent() {
    let fx = Fixture::new(1);
    let evil = sp('c', "evil");
    publish(
        &fx.ups[0],
        &crate::nix::signature::SigningKey::generate("test-1", [3; 32]),
        &evil,
        &tree("x", 1),
    );
    let fs = mounted(&fx);
    let err = fs.lookup(inode::ROOT_INO, evil.to_string().as_bytes()).wait().await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let absent = sp('d', "absent");
    let err = fs.lookup(inode::ROOT_INO, absent.to_string().as_bytes()).wait().await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT);
}

#[tokio::test]
async fn inode_numbers_are_the_same_for_every_mount_of_a_cache() {
    let fx = Fixture::new(1);
    let path = sp('f', "stable");
    publish(&fx.ups[0], &key(), &path, &tree("s", 5));
    let first = {
        let fs = mounted(&fx);
        let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
        fs.lookup(root.attr.ino, b"data").wait().await.unwrap().attr.ino
    };
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    assert_eq!(fs.lookup(root.attr.ino, b"data").wait().await.unwrap().attr.ino, first);
}

#[tokio::test]
async fn opening_an_evicted_file_fetches_the_path_again() {
    let mut fx = Fixture::new(1);
    fx.config.max_bytes = 200 * 1024;
    let (a, b) = (sp('g', "a"), sp('h', "b"));
    publish(&fx.ups[0], &key(), &a, &tree("a", 150 * 1024));
    publish(&fx.ups[0], &key(), &b, &tree("b", 150 * 1024));
    let fs = mounted(&fx);
    let ra = fs.lookup(inode::ROOT_INO, a.to_string().as_bytes()).wait().await.unwrap();
    let data = fs.lookup(ra.attr.ino, b"data").wait().await.unwrap();
    fs.lookup(inode::ROOT_INO, b.to_string().as_bytes()).wait().await.unwrap();
    assert!(fs.cache().cached(&a).is_none(), "a was evicted by b");
    assert!(!fs.open(data.attr.ino, libc::O_RDONLY).is_now(), "needs a fetch");
    let fh = fs.open(data.attr.ino, libc::O_RDONLY).wait().await.unwrap();
    assert_eq!(now(fs.read(data.attr.ino, fh, 0, 4)).unwrap(), [7, 7, 7, 7]);
    assert_eq!(fx.ups[0].requests().1, 3, "a's NAR was fetched a second time");
}

/// Reads without an open handle (the kernel sends no OPEN) name the inode: served from the cache
/// file while the path is cached, after a fetch once it was evicted; the LRU sees them as use.
#[tokio::test]
async fn reads_by_inode_serve_cached_files_and_fetch_evicted_ones() {
    let mut fx = Fixture::new(1);
    fx.config.max_bytes = 200 * 1024;
    let (a, b) = (sp('g', "a"), sp('h', "b"));
    publish(&fx.ups[0], &key(), &a, &tree("#!/bin/sh\n", 150 * 1024));
    publish(&fx.ups[0], &key(), &b, &tree("b", 150 * 1024));
    let fs = mounted(&fx);
    let ra = fs.lookup(inode::ROOT_INO, a.to_string().as_bytes()).wait().await.unwrap();
    let bin = fs.lookup(ra.attr.ino, b"bin").wait().await.unwrap();
    let tool = fs.lookup(bin.attr.ino, b"tool").wait().await.unwrap();
    let data = fs.lookup(ra.attr.ino, b"data").wait().await.unwrap();
    let read = |ino, offset, size| match fs.read(ino, NO_HANDLE, offset, size) {
        Answer::Now(data) => Some(data.unwrap()),
        Answer::AfterFetch(_) => None,
    };
    assert_eq!(read(tool.attr.ino, 2, 100).as_deref(), Some(&b"/bin/sh\n"[..]));
    assert_eq!(read(tool.attr.ino, 10, 100).as_deref(), Some(&b""[..]), "at the end");
    assert_eq!(now(fs.read(bin.attr.ino, NO_HANDLE, 0, 1)).unwrap_err().errno(), libc::EISDIR);

    fs.lookup(inode::ROOT_INO, b.to_string().as_bytes()).wait().await.unwrap();
    assert!(fs.cache().cached(&a).is_none(), "a was evicted by b");
    assert_eq!(read(data.attr.ino, 0, 4), None, "needs a fetch");
    assert_eq!(fs.read(data.attr.ino, NO_HANDLE, 0, 4).wait().await.unwrap(), [7, 7, 7, 7]);
    assert_eq!(fx.ups[0].requests().1, 3, "a's NAR was fetched a second time");
    assert_eq!(read(data.attr.ino, 4, 2).as_deref(), Some(&[7u8, 7][..]), "cached again");
}

#[tokio::test]
async fn forgotten_paths_release_their_manifest() {
    let fx = Fixture::new(1);
    let path = sp('k', "forget");
    publish(&fx.ups[0], &key(), &path, &tree("k", 5));
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    let data = fs.lookup(root.attr.ino, b"data").wait().await.unwrap();
    fs.forget(data.attr.ino, 1);
    assert!(fs.getattr(root.attr.ino).is_ok(), "still referenced through the root");
    assert_eq!(fs.held_paths(), 1);
    fs.forget(root.attr.ino, 1);
    assert_eq!(fs.held_paths(), 0, "released");
    assert!(fs.getattr(root.attr.ino).is_ok(), "a known slot still answers from the cache");
    assert_eq!(fs.held_paths(), 0, "without being held again");
    let again = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    assert_eq!(again.attr.ino, root.attr.ino, "same inode number after a reload");
    assert_eq!(fx.ups[0].requests(), (1, 1), "reloaded from the cache, not upstream");
}

/// Lists `ino` with readdirplus from `offset`, taking at most `room` entries, as a reply buffer
/// with room for that many would.
fn list_plus(fs: &StoreFs, ino: u64, offset: u64, room: usize) -> Vec<(DirEntry, Lookup)> {
    let mut out = Vec::new();
    fs.readdirplus(ino, offset, |e, l| {
        if out.len() == room {
            return true;
        }
        out.push((e.clone(), *l));
        false
    })
    .unwrap();
    out
}

#[tokio::test]
async fn readdirplus_gives_what_lookup_gives_and_fetches_nothing() {
    let fx = Fixture::new(1);
    let path = sp('m', "plus");
    publish(&fx.ups[0], &key(), &path, &tree("#!/bin/sh\n", 3));
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    let bin = fs.lookup(root.attr.ino, b"bin").wait().await.unwrap();
    for (dir, parent) in [(root.attr.ino, inode::ROOT_INO), (bin.attr.ino, root.attr.ino)] {
        let listed = list_plus(&fs, dir, 0, usize::MAX);
        let plain = fs.readdir(dir, 0).unwrap();
        assert_eq!(listed.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(), plain);
        assert_eq!(
            (listed[0].0.name.as_slice(), listed[0].1.attr),
            (&b"."[..], fs.getattr(dir).unwrap().attr)
        );
        assert_eq!(
            (listed[1].0.name.as_slice(), listed[1].1.attr),
            (&b".."[..], fs.getattr(parent).unwrap().attr)
        );
        for (entry, got) in &listed[2..] {
            let want = fs.lookup(dir, &entry.name).wait().await.unwrap();
            assert_eq!((got.attr, got.ttl), (want.attr, want.ttl), "{:?}", entry.name);
            assert_eq!((entry.ino, entry.kind), (got.attr.ino, got.attr.kind));
        }
    }
    let by_name = |dir, name: &[u8]| {
        let listed = list_plus(&fs, dir, 0, usize::MAX);
        listed.into_iter().find(|(e, _)| e.name == name).unwrap().1.attr
    };
    let link = by_name(root.attr.ino, b"link");
    assert_eq!((link.kind, link.size, link.perm), (Kind::Symlink, 8, 0o777));
    let data = by_name(root.attr.ino, b"data");
    assert_eq!((data.kind, data.size, data.perm), (Kind::File, 3, 0o444));
    let tool = by_name(bin.attr.ino, b"tool");
    assert_eq!((tool.kind, tool.size, tool.perm), (Kind::File, 10, 0o555));

    // The mount root lists what is cached, with the attributes a lookup gives, and asks nobody.
    let requests = fx.ups[0].requests();
    let listed = list_plus(&fs, inode::ROOT_INO, 0, usize::MAX);
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[2].0.name, path.to_string().as_bytes());
    assert_eq!((listed[2].1.attr, listed[2].1.ttl), (root.attr, root.ttl));
    assert_eq!(fx.ups[0].requests(), requests, "a listing fetches nothing");
}

/// Every entry readdirplus hands out, except "." and "..", is a kernel lookup that the kernel will
/// FORGET: entries a full reply left out are not counted, and the manifest goes exactly when the
/// last reference is forgotten.
#[tokio::test]
async fn readdirplus_entries_are_counted_like_lookups() {
    let fx = Fixture::new(1);
    let path = sp('n', "counted");
    publish(&fx.ups[0], &key(), &path, &tree("n", 5));
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    // Room for ".", ".." and "bin" only; then the rest ("data", "link") in a second reply.
    let first = list_plus(&fs, root.attr.ino, 0, 3);
    assert_eq!(first.len(), 3);
    let rest = list_plus(&fs, root.attr.ino, first[2].0.next_offset, usize::MAX);
    let names: Vec<_> = rest.iter().map(|(e, _)| e.name.clone()).collect();
    assert_eq!(names, [&b"data"[..], b"link"]);
    let mut held: Vec<u64> = first[2..].iter().chain(&rest).map(|(e, _)| e.ino).collect();
    held.push(root.attr.ino);
    let last = held.pop().unwrap();
    for ino in held {
        fs.forget(ino, 1);
        assert!(fs.getattr(root.attr.ino).is_ok(), "released while the kernel still holds {last}");
    }
    assert_eq!(fs.held_paths(), 1);
    fs.forget(last, 1);
    assert_eq!(fs.held_paths(), 0, "released");

    // The mount root: a listed path is held by its listing alone, and released by its forget.
    let listed = list_plus(&fs, inode::ROOT_INO, 0, usize::MAX);
    assert_eq!(listed[2].1.attr.ino, root.attr.ino);
    assert!(fs.getattr(root.attr.ino).is_ok(), "held by the listing");
    assert!(fs.lookup(root.attr.ino, b"bin").wait().await.is_ok());
    fs.forget(root.attr.ino, 1);
    assert!(fs.getattr(root.attr.ino).is_ok(), "bin is still held");
    fs.forget(fs.lookup(root.attr.ino, b"bin").wait().await.unwrap().attr.ino, 2);
    assert_eq!(fs.held_paths(), 0, "released");
    assert_eq!(fx.ups[0].requests(), (1, 1), "listings fetched nothing");
}

/// The mount root's listing has no opendir snapshot: an entry's cookie is its slot, so a listing
/// continued after paths arrived repeats nothing, and the root's mtime moves with every change so
/// the kernel drops the listing it kept.
#[tokio::test]
async fn the_root_listing_continues_by_slot_and_its_mtime_moves() {
    let fx = Fixture::new(1);
    let paths = [sp('a', "first"), sp('b', "second"), sp('c', "third")];
    for p in &paths {
        publish(&fx.ups[0], &key(), p, &tree("r", 5));
    }
    let fs = mounted(&fx);
    let before = fs.getattr(inode::ROOT_INO).unwrap();
    assert_eq!(before.ttl, std::time::Duration::ZERO, "re-read at every listing");
    fs.lookup(inode::ROOT_INO, paths[0].to_string().as_bytes()).wait().await.unwrap();
    let after_one = fs.getattr(inode::ROOT_INO).unwrap().attr;
    assert_ne!(after_one.mtime(), before.attr.mtime(), "a new path moves the root's mtime");
    let first = fs.readdir(inode::ROOT_INO, 0).unwrap();
    assert_eq!(first.len(), 3);
    let cookie = first[2].next_offset;
    for p in &paths[1..] {
        fs.lookup(inode::ROOT_INO, p.to_string().as_bytes()).wait().await.unwrap();
    }
    let all: Vec<_> = fs.readdir(inode::ROOT_INO, 2).unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    let rest = fs.readdir(inode::ROOT_INO, cookie).unwrap();
    assert!(rest.iter().all(|e| e.name != first[2].name), "nothing repeats: {rest:?}");
    let mut seen: Vec<_> = rest.iter().map(|e| e.name.clone()).collect();
    seen.push(first[2].name.clone());
    let earlier = all.iter().take_while(|e| e.name != first[2].name).count();
    assert_eq!(
        seen.len() + earlier,
        3,
        "only paths ordered before the cookie are not listed again"
    );
    let cookies: Vec<_> = all.iter().map(|e| e.next_offset).collect();
    assert!(cookies.windows(2).all(|w| w[0] < w[1]), "cookies ascend: {cookies:?}");
}

/// The cache file holding regular file `id` of `path` in the cache of `fx`: `f<id>` or the pack.
/// Made writable, so a test can damage it.
fn cache_file_of(fx: &Fixture, fs: &StoreFs, path: &StorePath, id: NodeId) -> std::path::PathBuf {
    let dir = fx.config.dir.join("entries").join(path.hash_part());
    let file = match fs.cache().cached(path).unwrap().manifest.node(id) {
        Some(Node::File { packed: Some(_), .. }) => dir.join(crate::cache::layout::PACK_FILE),
        _ => dir.join(crate::cache::unpack::file_name(id)),
    };
    let mut perms = std::fs::metadata(&file).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false, reason = "the test damages a 0444 file")]
    perms.set_readonly(false);
    std::fs::set_permissions(&file, perms).unwrap();
    file
}

/// Acceptance (issue 12): a cached file with a flipped byte, a zero fill, cut short, deleted or
/// replaced by a symlink is never served: the entry is set aside (counted once), the path
/// fetched again, and the reader gets the right bytes, through a handle or without one.
#[tokio::test]
async fn damaged_cache_files_are_set_aside_and_fetched_again() {
    type Damage = fn(&std::path::Path);
    let flip: Damage = |f| {
        let mut bytes = std::fs::read(f).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        std::fs::write(f, bytes).unwrap();
    };
    let zero_fill: Damage = |f| {
        let len = std::fs::metadata(f).unwrap().len();
        std::fs::write(f, vec![0u8; len as usize]).unwrap();
    };
    let cut_short: Damage = |f| {
        let len = std::fs::metadata(f).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(f).unwrap().set_len(len - 1).unwrap();
    };
    let delete: Damage = |f| std::fs::remove_file(f).unwrap();
    let symlink: Damage = |f| {
        let elsewhere = f.with_extension("elsewhere");
        std::fs::rename(f, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, f).unwrap();
    };
    let damages = [("flip", flip), ("zero fill", zero_fill), ("cut short", cut_short)];
    let damages = damages.into_iter().chain([("deleted", delete), ("symlink", symlink)]);
    let fx = Fixture::new(1);
    let path = sp('k', "rot");
    let size = 150 * 1024;
    publish(&fx.ups[0], &key(), &path, &tree("#!/bin/sh\n", size));
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).wait().await.unwrap();
    let bin = fs.lookup(root.attr.ino, b"bin").wait().await.unwrap();
    let tool = fs.lookup(bin.attr.ino, b"tool").wait().await.unwrap();
    let data = fs.lookup(root.attr.ino, b"data").wait().await.unwrap();
    let ids = |ino: u64| match Inode::from_ino(ino) {
        Some(Inode::Node { node, .. }) => node,
        _ => panic!("not a node"),
    };
    let mut expected_nars = 1;
    for (n, (what, damage)) in damages.enumerate() {
        // The packed tool, then data's own file, at its last byte, through no handle.
        for (ino, offset, want) in [
            (tool.attr.ino, 2, b"/bin/sh\n".to_vec()),
            (data.attr.ino, size as u64 - 3, vec![7u8; 3]),
        ] {
            damage(&cache_file_of(&fx, &fs, &path, ids(ino)));
            let read = fs.read(ino, NO_HANDLE, offset, 100);
            assert!(!read.is_now(), "{what}: served from the damaged copy");
            assert_eq!(read.wait().await.unwrap(), want, "{what}: the right bytes");
            expected_nars += 1;
            assert_eq!(fx.ups[0].requests().1, expected_nars, "{what}: fetched again");
        }
        let corrupt = fs.cache().stats.corrupt_entries.load(Ordering::Relaxed);
        assert_eq!(corrupt, 2 * (n as u64 + 1), "{what}: each entry counted once");
    }
    // Through an open handle: the handle moves to the fresh copy.
    let fh = fs.open(data.attr.ino, libc::O_RDONLY).wait().await.unwrap();
    flip(&cache_file_of(&fx, &fs, &path, ids(data.attr.ino)));
    let last = size as u64 - 4;
    assert_eq!(now(fs.read(data.attr.ino, fh, 0, 4)).unwrap(), [7; 4], "the first block is fine");
    let read = fs.read(data.attr.ino, fh, last, 4);
    assert!(!read.is_now(), "served from the damaged copy through a handle");
    assert_eq!(read.wait().await.unwrap(), [7; 4]);
    assert_eq!(now(fs.read(data.attr.ino, fh, last, 4)).unwrap(), [7; 4], "the fresh copy, now");
    // An own file opened (for passthrough) is checked whole before the handle exists.
    flip(&cache_file_of(&fx, &fs, &path, ids(data.attr.ino)));
    let fh = fs.open(data.attr.ino, libc::O_RDONLY).wait().await.unwrap();
    assert_eq!(fx.ups[0].requests().1, expected_nars + 2, "the open fetched it again");
    assert_eq!(now(fs.read(data.attr.ino, fh, 0, 4)).unwrap(), [7; 4]);
}
