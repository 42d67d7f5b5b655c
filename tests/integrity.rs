//! Integrity at rest (issue 12), through the real kernel: cache files damaged on disk (a flipped
//! byte in every cached file, a file cut short, deleted, or replaced by a symlink), with the daemon
//! stopped or running, are never served: every path still hashes to its NarHash through the
//! mount, because the daemon checks each block it reads, sets the damaged entry aside and fetches
//! the path again. No `storefs verify` is run. Reads after damage use `O_DIRECT`, past the kernel's page cache.

#![cfg(feature = "fuse_tests")]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemon::Daemon;
use common::{Fixtures, Nginx, daemon_args as args, fuse_setup as setup, hash_part};
use serde_json::Value;

fn nar_hash(fx: &Fixtures, sp: &str) -> String {
    let text = fs::read_to_string(fx.narinfo_path("zstd", sp)).unwrap();
    text.lines().find_map(|l| l.strip_prefix("NarHash: ")).unwrap().to_owned()
}

/// `nix-hash` of `path` read through `d`'s mount; a failure names `when` and shows the log.
fn nix_hash(d: &Daemon, path: &Path, when: &str) -> String {
    let out =
        Command::new("nix-hash").args(["--type", "sha256", "--base32"]).arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "{when}: nix-hash {}: {}\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr),
        d.log_text()
    );
    format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim())
}

/// Every path of the closure hashes to its NarHash through the mount.
fn closure_is_right(fx: &Fixtures, d: &Daemon, when: &str) {
    for sp in &fx.closure {
        let got = nix_hash(d, &d.path(sp, ""), when);
        assert_eq!(got, nar_hash(fx, sp), "{when}: {sp}\n{}", d.log_text());
    }
}

/// Reads every regular file under `path` with `O_DIRECT` (see [`read_direct`]).
fn read_tree_direct(path: &Path) {
    let meta = fs::symlink_metadata(path).unwrap();
    if meta.is_dir() {
        for child in fs::read_dir(path).unwrap() {
            read_tree_direct(&child.unwrap().path());
        }
    } else if meta.is_file() {
        read_direct(path);
    }
}

/// The bytes of `file` read with `O_DIRECT`, past the kernel's page cache, so each read
/// reaches the daemon (or, with passthrough, the open does). Dropping the page cache is not
/// enough: now and then a page stays.
fn read_direct(file: &Path) -> Vec<u8> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let open = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(file);
    let mut file_handle = open.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    // A page-aligned window: O_DIRECT wants aligned buffers on some file systems.
    let mut buf = vec![0u8; 2 << 20];
    let skip = buf.as_ptr().align_offset(4096);
    let window = &mut buf[skip..skip + (1 << 20)];
    let mut bytes = Vec::new();
    loop {
        let n = file_handle.read(window).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if n == 0 {
            return bytes;
        }
        bytes.extend_from_slice(&window[..n]);
    }
}

fn stat(d: &Daemon, key: &str) -> u64 {
    let out = d.client(&["stats", "--json"]);
    assert!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// The cache files (`pack` and `f<id>`) of every cached entry.
fn cache_files(cache: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in fs::read_dir(cache.join("entries")).unwrap() {
        for file in fs::read_dir(entry.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name == "pack" || name.starts_with('f') {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Flips one bit of the byte in the middle of `file` (root writes the 0444 file).
fn flip_a_byte(file: &Path) {
    let mut bytes = fs::read(file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    fs::write(file, bytes).unwrap();
}

/// How many entries hold at least one of `files`.
fn entries_of(files: &[PathBuf]) -> u64 {
    let mut dirs: Vec<_> = files.iter().map(|f| f.parent().unwrap()).collect();
    dirs.dedup();
    dirs.len() as u64
}

fn nar_requests(nginx: &Nginx) -> usize {
    nginx.requests().iter().filter(|r| r.contains("/nar/")).count()
}

/// One flipped byte in every cached file, daemon stopped, then again while it runs (page
/// cache dropped): every path of the closure still hashes to its NarHash, each damaged entry
/// fetched again once and counted once.
fn flipped_bytes_are_never_served(extra: &[&str]) {
    let fx = common::fixtures();
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let a = args(&[nginx.url("zstd")], &fx.public_key, extra);
    let mut d = Daemon::start(tmp.path(), &a);
    closure_is_right(fx, &d, "first read");
    assert_eq!(d.stop(), Some(0));

    let files = cache_files(&d.cache);
    let damaged = entries_of(&files);
    assert!(damaged >= 5 && files.iter().any(|f| f.ends_with("pack")), "{files:?}");
    files.iter().for_each(|f| flip_a_byte(f));
    nginx.clear_log();
    let d = Daemon::start(tmp.path(), &a);
    closure_is_right(fx, &d, "after a restart");
    assert_eq!(stat(&d, "corrupt_entries"), damaged, "each damaged entry counted once");
    assert_eq!(nar_requests(&nginx), damaged as usize, "each damaged entry fetched again once");

    let files = cache_files(&d.cache);
    files.iter().for_each(|f| flip_a_byte(f));
    nginx.clear_log();
    // Not the page cache (dropping it leaves a page now and then): reads that skip it reach
    // the daemon, which finds each damaged entry; then every path must hash right.
    for sp in &fx.closure {
        read_tree_direct(&d.path(sp, ""));
    }
    closure_is_right(fx, &d, "while running");
    let damaged_files = format!("{files:#?}");
    assert_eq!(stat(&d, "corrupt_entries"), 2 * damaged, "{damaged_files}\n{}", d.log_text());
    assert_eq!(nar_requests(&nginx), damaged as usize, "{}", d.log_text());
    let logged = d.log_text().matches("damaged cache entry set aside").count();
    assert_eq!(logged as u64, 2 * damaged, "logged once each");
}

/// Acceptance: reads through the daemon (the default).
#[test]
fn a_flipped_byte_in_every_cached_file_is_never_served() {
    if setup("a_flipped_byte_in_every_cached_file_is_never_served").is_none() {
        return;
    }
    flipped_bytes_are_never_served(&[]);
}

/// Acceptance: with `--passthrough`, each file with a cache file of its own is checked whole
/// when opened, before the kernel reads it directly (where the kernel has no passthrough, reads
/// go through the daemon and are checked there).
#[test]
fn with_passthrough_a_flipped_byte_is_never_served() {
    if setup("with_passthrough_a_flipped_byte_is_never_served").is_none() {
        return;
    }
    flipped_bytes_are_never_served(&["--passthrough"]);
}

/// Acceptance: a cache file cut short, deleted, or replaced by a symlink, a directory or a FIFO
/// gives the right bytes at the first read, with no manual `verify`.
#[test]
fn short_missing_and_symlinked_cache_files_are_fetched_again() {
    let Some(fx) = setup("short_missing_and_symlinked_cache_files_are_fetched_again") else {
        return;
    };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &args(&[nginx.url("zstd")], &fx.public_key, &[]));
    let want = fs::read(&fx.big_file).unwrap();
    let mounted = d.path(&fx.big_file, "");
    assert_eq!(fs::read(&mounted).unwrap(), want);
    let entry = d.cache.join("entries").join(hash_part(&fx.big));
    let biggest = || {
        fs::read_dir(&entry)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with('f'))
            .max_by_key(|p| fs::symlink_metadata(p).unwrap().len())
            .unwrap()
    };
    type Damage = fn(&Path);
    let cut_short: Damage = |f| {
        let len = fs::metadata(f).unwrap().len();
        fs::OpenOptions::new().write(true).open(f).unwrap().set_len(len / 2).unwrap();
    };
    let delete: Damage = |f| fs::remove_file(f).unwrap();
    let symlink: Damage = |f| {
        let elsewhere = f.with_extension("elsewhere");
        fs::rename(f, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, f).unwrap();
    };
    let directory: Damage = |f| {
        fs::remove_file(f).unwrap();
        fs::create_dir(f).unwrap();
    };
    let fifo: Damage = |f| {
        fs::remove_file(f).unwrap();
        let c = std::ffi::CString::new(f.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    };
    let faults = [
        ("cut short", cut_short),
        ("deleted", delete),
        ("symlink", symlink),
        ("directory", directory),
        ("fifo", fifo),
    ];
    for (n, (what, damage)) in faults.into_iter().enumerate() {
        damage(&biggest());
        nginx.clear_log();
        assert!(read_direct(&mounted) == want, "{what}: wrong bytes");
        assert_eq!(nar_requests(&nginx), 1, "{what}: fetched again");
        assert_eq!(stat(&d, "corrupt_entries"), n as u64 + 1, "{what}");
    }
    assert_eq!(nix_hash(&d, &d.path(&fx.big, ""), "after the faults"), nar_hash(fx, &fx.big));
}
