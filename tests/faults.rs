//! Real-mount tests of single reliability cases (docs/RELIABILITY.md): disk faults injected
//! through the daemon's failpoints (`STOREFS_FAILPOINTS`, `src/failpoint.rs`), extended
//! attributes, start-up checks, memory limits and the order of the commit's I/O.

#![cfg(feature = "fuse_tests")]

mod common;

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::{Fixtures, Nginx, daemon_args, fuse_setup as setup, hash_part};

/// A daemon on the zstd cache served by `nginx`, closure prefetch off (so the only fetch is
/// the one a test asks for), with the failpoints `points` armed.
fn start(fx: &Fixtures, nginx: &Nginx, dir: &Path, points: &str, extra: &[&str]) -> Daemon {
    let mut extra = extra.to_vec();
    extra.extend(["--prefetch-jobs", "0"]);
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &extra);
    let mnt = dir.join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let env = [("STOREFS_FAILPOINTS", points)];
    Daemon::start_env(&mnt, &dir.join("cache"), &dir.join("storefs.log"), &args, &env)
}

/// A figure of `storefs stats --json`.
fn stat(d: &Daemon, key: &str) -> u64 {
    let out = d.client(&["stats", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[key].as_u64().unwrap_or_else(|| panic!("no {key} in stats"))
}

/// The NAR requests nginx saw for `store_path` (its narinfo names the NAR by file hash, so
/// they are counted from the narinfo's `URL:`).
fn nar_requests(fx: &Fixtures, nginx: &Nginx, store_path: &str) -> usize {
    let text = fs::read_to_string(fx.narinfo_path("zstd", store_path)).unwrap();
    let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap().to_owned();
    nginx.count_requests(&url)
}

/// The names in `dir` (empty when it does not exist).
fn names_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Polls `cond` until it holds or `within` passes; whether it held.
fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// DSK-4: the disk answers `EIO` to the first read of a cached file. The entry is set aside
/// and fetched again, and the reader gets the right bytes (never an error, never other bytes).
#[test]
fn eio_reading_a_cached_file_sets_the_entry_aside_and_fetches_it_again() {
    let Some(fx) = setup("eio_reading_a_cached_file_sets_the_entry_aside_and_fetches_it_again")
    else {
        return;
    };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = start(fx, &nginx, tmp.path(), "contents::read=eio", &[]);
    let want = fs::read(&fx.big_file).unwrap();
    fs::metadata(d.path(&fx.big_file, "")).unwrap();
    assert_eq!(nar_requests(fx, &nginx, &fx.big), 1);
    let got = fs::read(d.path(&fx.big_file, "")).unwrap();
    assert!(got == want, "the reader got the signed bytes ({} of {} bytes)", got.len(), want.len());
    assert!(d.log_text().contains("failpoint reached: failing once"), "the fault was injected");
    assert!(d.log_text().contains("damaged cache entry set aside"), "{}", d.log_text());
    assert_eq!(stat(&d, "corrupt_entries"), 1, "counted once");
    assert_eq!(nar_requests(fx, &nginx, &fx.big), 2, "fetched again");
}

/// DSK-5: `syncfs` fails with `EIO` while an entry is committed. The entry is lost, never
/// renamed into `entries/` nor synced again; the reader gets `EIO`, the staging directory is
/// discarded, and the next lookup downloads the path afresh and serves it.
#[test]
fn eio_from_sync_while_committing_publishes_nothing_and_the_next_lookup_fetches_again() {
    let test = "eio_from_sync_while_committing_publishes_nothing_and_the_next_lookup_fetches_again";
    let Some(fx) = setup(test) else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = start(fx, &nginx, tmp.path(), "publish::sync=eio", &[]);
    let first = fs::metadata(d.path(&fx.big, "")).map(|_| ()).unwrap_err();
    assert_eq!(first.raw_os_error(), Some(libc::EIO), "{first}");
    let log = d.log_text();
    assert!(log.contains("cannot sync"), "a clear error names the failed sync: {log}");
    let entry = d.cache.join("entries").join(hash_part(&fx.big));
    assert!(!entry.exists(), "the entry was not published");
    let staging = d.cache.join("staging");
    assert!(eventually(Duration::from_secs(5), || names_in(&staging).is_empty()), "staging");
    assert_eq!(nar_requests(fx, &nginx, &fx.big), 1);
    let got = fs::read(d.path(&fx.big_file, "")).unwrap();
    assert!(got == fs::read(&fx.big_file).unwrap(), "the second lookup serves the signed bytes");
    assert_eq!(nar_requests(fx, &nginx, &fx.big), 2, "downloaded afresh, not synced again");
    assert!(entry.exists());
}

/// DSK-2: the disk is full when the entry's manifest (storefs' only index: one per entry,
/// published with it by a rename) is written. That is the `ENOSPC` of unpacking: the download
/// is retried once, the path is served, and the cache left behind is whole: after a restart it
/// serves the path from disk without a request.
#[test]
fn enospc_writing_the_manifest_is_retried_and_leaves_a_whole_cache() {
    let Some(fx) = setup("enospc_writing_the_manifest_is_retried_and_leaves_a_whole_cache") else {
        return;
    };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let want = fs::read(&fx.big_file).unwrap();
    {
        let d = start(fx, &nginx, tmp.path(), "unpack::manifest=enospc", &[]);
        let got = fs::read(d.path(&fx.big_file, "")).unwrap();
        assert!(got == want, "served after the retry");
        assert!(d.log_text().contains("failpoint reached: failing once"), "{}", d.log_text());
        assert_eq!(nar_requests(fx, &nginx, &fx.big), 2, "one retry");
        assert!(
            eventually(Duration::from_secs(5), || names_in(&d.cache.join("staging")).is_empty())
        );
    }
    let requests = nginx.requests().len();
    let d = start(fx, &nginx, tmp.path(), "", &[]);
    let got = fs::read(d.path(&fx.big_file, "")).unwrap();
    assert!(got == want, "served from the cache after a restart");
    assert_eq!(nginx.requests().len(), requests, "without a request");
}

/// `getxattr(path, name)` as an errno (0 when it succeeds).
fn getxattr_errno(path: &Path, name: &str) -> i32 {
    let (p, n) = (CString::new(path.as_os_str().as_bytes()).unwrap(), CString::new(name).unwrap());
    let mut buf = [0u8; 64];
    // SAFETY: valid C strings and a buffer of the size passed.
    let rc = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if rc < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(-1) } else { 0 }
}

/// `listxattr(path)`: the size of the list.
fn listxattr_len(path: &Path) -> isize {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: a valid C string and a buffer of the size passed.
    unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
}

/// SEC-3: no extended attribute exists anywhere in the mount, file capabilities and SELinux
/// labels included: `getxattr` is `ENODATA` and `listxattr` is empty, on the mount root, a
/// store path, a directory, a file and an executable.
#[test]
fn extended_attributes_are_absent_everywhere() {
    let Some(fx) = setup("extended_attributes_are_absent_everywhere") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = start(fx, &nginx, tmp.path(), "", &[]);
    let paths: Vec<PathBuf> = vec![
        d.mnt.clone(),
        d.path(&fx.hello, ""),
        d.path(&fx.hello, "bin"),
        d.path(&fx.exe, ""),
        d.path(&fx.deep_file, ""),
    ];
    for path in &paths {
        fs::metadata(path).unwrap();
        for name in ["security.capability", "security.selinux", "trusted.overlay", "user.x"] {
            assert_eq!(getxattr_errno(path, name), libc::ENODATA, "{name} on {path:?}");
        }
        assert_eq!(listxattr_len(path), 0, "listxattr {path:?}");
    }
}
