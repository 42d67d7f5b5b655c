//! The kernel's dentry and inode cache against a real mount: READDIRPLUS listings carry the
//! attributes a LOOKUP would give, and every name they hand out is FORGOTTEN exactly once, so
//! manifests are neither dropped while the kernel holds an inode nor kept after it let go.
//!
//! Its own test binary, with one test: dropping the kernel's caches (`/proc/sys/vm/drop_caches`)
//! is global, and would add LOOKUPs to tests that count them if they ran beside it. Needs root,
//! /dev/fuse, nix-bin and nginx (like tests/fuse.rs); run with `--features fuse_tests`.

#![cfg(feature = "fuse_tests")]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Nginx, daemon_args, fuse_setup as setup, hash_part};

/// What `lstat` says of one entry: kind, mode, size (not of directories: that is the
/// filesystem's own business), symlink target, owner, group and mtime.
type Seen = (&'static str, u32, Option<u64>, Option<PathBuf>, u32, u32, i64);

/// Walks `dir` as `find` does (readdir, then lstat of each name), by relative path.
fn walk(dir: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("readdir {}: {e}", d.display())) {
            let path = e.unwrap().path();
            let m = fs::symlink_metadata(&path).unwrap();
            let (kind, size, target) = if m.is_dir() {
                todo.push(path.clone());
                ("dir", None, None)
            } else if m.is_symlink() {
                ("symlink", Some(m.size()), Some(fs::read_link(&path).unwrap()))
            } else {
                ("file", Some(m.size()), None)
            };
            let seen = (kind, m.mode() & 0o7777, size, target, m.uid(), m.gid(), m.mtime());
            out.insert(path.strip_prefix(dir).unwrap().to_path_buf(), seen);
        }
    }
    out
}

/// Makes the kernel drop every unused dentry and inode (2 = reclaimable slab objects), which sends
/// FORGET for each inode of the mount nothing holds.
fn drop_kernel_caches() {
    fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

/// Waits until the daemon logged that it released the manifest of each of `paths`.
fn wait_released(d: &Daemon, paths: &[&String]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = d.log_text();
        let released = |p: &&String| {
            let base = p.trim_start_matches("/nix/store/");
            log.lines().any(|l| l.contains("manifest released") && l.contains(base))
        };
        if paths.iter().all(released) {
            return;
        }
        assert!(Instant::now() < deadline, "manifests of {paths:?} never released; log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn lookups(d: &Daemon) -> usize {
    d.log_text().matches(" LOOKUP name ").count()
}

/// A walk of a fresh mount sends one LOOKUP per store path and none inside (the listings carried
/// every name's attributes), and sees exactly what the local store has. The names the listings
/// handed out are kernel references: after the kernel drops every inode it does not need, the
/// path of a file held open keeps its manifest (its directories still list), and once the file
/// is closed every path's manifest is released.
#[test]
fn listings_carry_attributes_and_their_names_are_forgotten_exactly() {
    let Some(fx) = setup("listings_carry_attributes_and_their_names_are_forgotten_exactly") else {
        return;
    };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]);
    let env = [("STOREFS_LOG", "storefs=debug,info")];
    let d =
        Daemon::start_env(&mnt, &tmp.path().join("cache"), &tmp.path().join("log"), &args, &env);

    let paths = [&fx.weird, &fx.deep, &fx.busybox_bin];
    for sp in paths {
        assert!(fs::metadata(d.path(sp, "")).unwrap().is_dir());
    }
    let before = lookups(&d);
    for sp in paths {
        assert_eq!(walk(&d.path(sp, "")), walk(Path::new(sp)), "{sp}");
    }
    assert_eq!(lookups(&d), before, "names inside store paths came with their listings");

    // Hold a file of `weird` open, then let the kernel drop everything else: every sibling the
    // listings handed out is forgotten, and `weird` must keep its manifest for what is held.
    let held = "with space/file name.txt";
    let mut file = fs::File::open(d.path(&fx.weird, held)).unwrap();
    drop_kernel_caches();
    wait_released(&d, &[&fx.deep, &fx.busybox_bin]);
    assert_eq!(walk(&d.path(&fx.weird, "")), walk(Path::new(&fx.weird)), "after the forgets");
    // A dropped manifest would show as ESTALE, which the kernel hides by looking the path up
    // again: the daemon's log is what tells.
    let log = d.log_text();
    assert!(!log.contains("unknown inode"), "a held inode went stale; log:\n{log}");
    let mut got = Vec::new();
    file.read_to_end(&mut got).unwrap();
    assert_eq!(got, fs::read(Path::new(&fx.weird).join(held)).unwrap());

    // Nothing held: every manifest goes, and comes back on the next lookup.
    drop(file);
    drop_kernel_caches();
    wait_released(&d, &[&fx.weird]);
    assert_eq!(walk(&d.path(&fx.weird, "")), walk(Path::new(&fx.weird)), "after a reload");
    for sp in paths {
        let narinfo = format!("{}.narinfo", hash_part(sp));
        assert_eq!(nginx.count_requests(&narinfo), 1, "{sp}: reloads come from the cache");
    }
    assert!(!d.log_text().contains("request failed"), "log:\n{}", d.log_text());
}
