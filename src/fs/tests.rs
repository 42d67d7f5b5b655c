//! Filesystem semantics over in-memory upstreams: lookups, attributes, listings, links, reads,
//! errno choices. No kernel involved.

use crate::cache::tests::{Fixture, key, publish, sp, tree};

use super::*;

fn mounted(fx: &Fixture) -> StoreFs {
    StoreFs::new(fx.open())
}

#[tokio::test]
async fn invalid_names_are_enoent_without_requests() {
    let fx = Fixture::new(1);
    let fs = mounted(&fx);
    for name in [&b"hello"[..], b"", b".", b"..", b"00000000000000000000000000000000", b"x/y"] {
        let err = fs.lookup(inode::ROOT_INO, name).await.unwrap_err();
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
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).await.unwrap();
    assert_eq!((root.attr.kind, root.attr.perm, root.attr.nlink), (Kind::Directory, 0o555, 3));
    let bin = fs.lookup(root.attr.ino, b"bin").await.unwrap();
    let tool = fs.lookup(bin.attr.ino, b"tool").await.unwrap();
    assert_eq!((tool.attr.kind, tool.attr.perm, tool.attr.size), (Kind::File, 0o555, 10));
    let data = fs.lookup(root.attr.ino, b"data").await.unwrap();
    assert_eq!(data.attr.perm, 0o444);
    let link = fs.lookup(root.attr.ino, b"link").await.unwrap();
    assert_eq!(link.attr.kind, Kind::Symlink);
    assert_eq!(fs.readlink(link.attr.ino).unwrap(), b"bin/tool");
    assert_eq!(fs.readlink(data.attr.ino).unwrap_err().errno(), libc::EINVAL);
    assert_eq!(fs.getattr(tool.attr.ino).unwrap().attr, tool.attr);

    let fh = fs.open(tool.attr.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(fs.read(fh, 2, 100).unwrap(), b"/bin/sh\n");
    assert_eq!(fs.read(fh, 10, 100).unwrap(), b"");
    fs.release(fh);
    assert_eq!(fs.read(fh, 0, 1).unwrap_err().errno(), libc::EBADF);

    let names: Vec<_> =
        fs.readdir(root.attr.ino, 0, 0).unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(names, [&b"."[..], b"..", b"bin", b"data", b"link"]);
    let rest = fs.readdir(root.attr.ino, 0, 3).unwrap();
    assert_eq!(rest.len(), 2, "offsets resume where the kernel left off");
    assert_eq!(rest[0].name, b"data");
    let listing = fs.opendir(inode::ROOT_INO).unwrap();
    let roots = fs.readdir(inode::ROOT_INO, listing, 2).unwrap();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].name, path.to_string().as_bytes());
    fs.releasedir(listing);
}

#[tokio::test]
async fn wrong_kinds_and_writes_get_their_errno() {
    let fx = Fixture::new(1);
    let path = sp('b', "x");
    publish(&fx.ups[0], &key(), &path, &tree("x", 1));
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).await.unwrap();
    let data = fs.lookup(root.attr.ino, b"data").await.unwrap();
    assert_eq!(fs.open(data.attr.ino, libc::O_WRONLY).await.unwrap_err().errno(), libc::EROFS);
    assert_eq!(fs.open(data.attr.ino, libc::O_RDWR).await.unwrap_err().errno(), libc::EROFS);
    assert_eq!(fs.open(root.attr.ino, libc::O_RDONLY).await.unwrap_err().errno(), libc::EISDIR);
    assert_eq!(fs.lookup(data.attr.ino, b"x").await.unwrap_err().errno(), libc::ENOTDIR);
    assert_eq!(fs.lookup(root.attr.ino, b"nope").await.unwrap_err().errno(), libc::ENOENT);
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
    let err = fs.lookup(inode::ROOT_INO, evil.to_string().as_bytes()).await.unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    let absent = sp('d', "absent");
    let err = fs.lookup(inode::ROOT_INO, absent.to_string().as_bytes()).await.unwrap_err();
    assert_eq!(err.errno(), libc::ENOENT);
}

#[tokio::test]
async fn inode_numbers_are_the_same_for_every_mount_of_a_cache() {
    let fx = Fixture::new(1);
    let path = sp('f', "stable");
    publish(&fx.ups[0], &key(), &path, &tree("s", 5));
    let first = {
        let fs = mounted(&fx);
        let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).await.unwrap();
        fs.lookup(root.attr.ino, b"data").await.unwrap().attr.ino
    };
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).await.unwrap();
    assert_eq!(fs.lookup(root.attr.ino, b"data").await.unwrap().attr.ino, first);
}

#[tokio::test]
async fn opening_an_evicted_file_fetches_the_path_again() {
    let mut fx = Fixture::new(1);
    fx.config.max_bytes = 200 * 1024;
    let (a, b) = (sp('g', "a"), sp('h', "b"));
    publish(&fx.ups[0], &key(), &a, &tree("a", 150 * 1024));
    publish(&fx.ups[0], &key(), &b, &tree("b", 150 * 1024));
    let fs = mounted(&fx);
    let ra = fs.lookup(inode::ROOT_INO, a.to_string().as_bytes()).await.unwrap();
    let data = fs.lookup(ra.attr.ino, b"data").await.unwrap();
    fs.lookup(inode::ROOT_INO, b.to_string().as_bytes()).await.unwrap();
    assert!(fs.cache().cached(&a).is_none(), "a was evicted by b");
    let fh = fs.open(data.attr.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(fs.read(fh, 0, 4).unwrap(), [7, 7, 7, 7]);
    assert_eq!(fx.ups[0].requests().1, 3, "a's NAR was fetched a second time");
}

#[tokio::test]
async fn forgotten_paths_release_their_manifest() {
    let fx = Fixture::new(1);
    let path = sp('k', "forget");
    publish(&fx.ups[0], &key(), &path, &tree("k", 5));
    let fs = mounted(&fx);
    let root = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).await.unwrap();
    let data = fs.lookup(root.attr.ino, b"data").await.unwrap();
    fs.forget(data.attr.ino, 1);
    assert!(fs.getattr(root.attr.ino).is_ok(), "still referenced through the root");
    fs.forget(root.attr.ino, 1);
    assert_eq!(fs.getattr(root.attr.ino).unwrap_err().errno(), libc::ESTALE, "released");
    let again = fs.lookup(inode::ROOT_INO, path.to_string().as_bytes()).await.unwrap();
    assert_eq!(again.attr.ino, root.attr.ino, "same inode number after a reload");
    assert_eq!(fx.ups[0].requests(), (1, 1), "reloaded from the cache, not upstream");
}
