//! A cache that lasts: restarts, crashes at every commit step, a full disk (of bytes, of inodes,
//! of someone else's files), a read-only or unknown-version cache at start, eviction under open
//! and mapped files, the cache lock, and the negative-lookup TTL — through the real kernel, with
//! caches made by real Nix and served by nginx. Run with `cargo test --features fuse_tests`.

#![cfg(feature = "fuse_tests")]

mod common;

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::big::hundred_mb_cache;
use common::daemon::{Daemon, stat, stats, storefs_bin};
use common::{Fixtures, Nginx, daemon_args as args, du_bytes, fuse_setup as setup, hash_part};

fn nar_field(fx: &Fixtures, sp: &str, field: &str) -> String {
    let text = fs::read_to_string(fx.narinfo_path("zstd", sp)).unwrap();
    let prefix = format!("{field}: ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap().to_owned()
}

fn nix_hash(path: &Path) -> Result<String, String> {
    let out =
        Command::new("nix-hash").args(["--type", "sha256", "--base32"]).arg(path).output().unwrap();
    if out.status.success() {
        Ok(format!("sha256:{}", String::from_utf8_lossy(&out.stdout).trim()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// Every path the mount lists hashes to its NarHash, staging is empty, trash empties, and the
/// daemon's accounting equals `du`.
fn check_cache_is_whole(fx: &Fixtures, d: &Daemon) {
    let log = d.wait_log("cache loaded", Duration::from_secs(20));
    let line = log.lines().rev().find(|l| l.contains("cache loaded")).unwrap();
    let bytes: u64 =
        line.split("bytes=").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let staged: Vec<_> =
        fs::read_dir(d.cache.join("staging")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(
        staged.is_empty(),
        "staging left after restart: {staged:?} (daemon pid {}):\n{}",
        d.pid(),
        d.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&d.cache.join("trash")) > 0 {
        assert!(Instant::now() < deadline, "trash never emptied");
        std::thread::sleep(Duration::from_millis(10));
    }
    // `entries/` itself is no entry's: its blocks (one or more, as names came and went) are
    // left out of the accounting.
    let entries_dir = fs::metadata(d.cache.join("entries")).unwrap().blocks() * 512;
    assert_eq!(du_bytes(&d.cache.join("entries")), bytes + entries_dir, "accounting vs du");
    for entry in fs::read_dir(&d.mnt).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let sp = format!("/nix/store/{name}");
        assert_eq!(nix_hash(&d.mnt.join(&name)).unwrap(), nar_field(fx, &sp, "NarHash"), "{name}");
    }
}

/// Acceptance: with the closure cached, a restarted daemon serves every path with zero upstream
/// requests.
#[test]
fn a_restart_serves_the_closure_without_upstream_requests() {
    let Some(fx) = setup("a_restart_serves_the_closure_without_upstream_requests") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let a = args(&[nginx.url("zstd")], &fx.public_key, &[]);
    let mut d = Daemon::start(tmp.path(), &a);
    for sp in &fx.closure {
        nix_hash(&d.path(sp, "")).unwrap();
    }
    assert_eq!(d.stop(), Some(0));
    nginx.clear_log();
    let d = Daemon::start(tmp.path(), &a);
    for sp in &fx.closure {
        assert_eq!(nix_hash(&d.path(sp, "")).unwrap(), nar_field(fx, sp, "NarHash"), "{sp}");
    }
    assert_eq!(nginx.requests().len(), 0, "requests after restart: {:?}", nginx.requests());
    check_cache_is_whole(fx, &d);
}

/// PRC-5: a restart on a cache filled to its quota mounts within a bound that does not wait
/// for the scan of the entries, serves them without a request, and respects a smaller quota
/// given at the restart: the scan's end evicts down to it, least recently used first.
#[test]
fn a_restart_on_a_full_cache_mounts_at_once_and_keeps_a_smaller_quota() {
    let Some(fx) = setup("a_restart_on_a_full_cache_mounts_at_once_and_keeps_a_smaller_quota")
    else {
        return;
    };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let mut d = Daemon::start(tmp.path(), &args(&[nginx.url("zstd")], &fx.public_key, &[]));
    for sp in &fx.closure {
        nix_hash(&d.path(sp, "")).unwrap();
    }
    let full = stat(&stats(&d), "cache_bytes");
    assert_eq!(d.stop(), Some(0));
    nginx.clear_log();
    // Half the largest path less: one eviction or a few, never all (which entry goes first
    // depends on last-use times a second apart at best).
    let big: u64 = nar_field(fx, &fx.big, "NarSize").parse().unwrap();
    let quota = full - big / 2;
    let smaller = args(&[nginx.url("zstd")], &fx.public_key, &["--max-size", &quota.to_string()]);
    let started = Instant::now();
    let d = Daemon::start(tmp.path(), &smaller);
    let mounted = started.elapsed();
    assert!(mounted < Duration::from_secs(3), "mounted after {mounted:?}");
    // The log holds both runs: the scan of this one ends with the second `cache loaded`.
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.log_text().matches("cache loaded").count() < 2 {
        assert!(Instant::now() < deadline, "the scan never ended:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    while stat(&stats(&d), "cache_bytes") > quota {
        assert!(Instant::now() < deadline, "the smaller quota was never kept: {}", stats(&d));
        std::thread::sleep(Duration::from_millis(50));
    }
    let cached = stat(&stats(&d), "cached_paths");
    assert!(cached > 0 && cached < fx.closure.len() as u64, "{cached} paths kept");
    eprintln!("restart on a full cache ({full} bytes): mounted after {mounted:?}");
    assert_eq!(nginx.requests().len(), 0, "nothing asked upstream: {:?}", nginx.requests());
}

/// Acceptance: SIGKILL at each commit step (failpoints) and at random moments leaves, after a
/// restart, only whole verified entries, empty staging and trash, and accounting equal to du.
#[test]
fn sigkill_at_any_step_leaves_only_whole_entries() {
    let Some(fx) = setup("sigkill_at_any_step_leaves_only_whole_entries") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let (mnt, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    fs::create_dir(&mnt).unwrap();
    // One log per daemon, so each check reads its own daemon's "cache loaded" line.
    let mut logs = 0;
    let mut log = || {
        logs += 1;
        tmp.path().join(format!("daemon-{logs}.log"))
    };
    let total: u64 =
        fx.closure.iter().map(|sp| nar_field(fx, sp, "NarSize").parse::<u64>().unwrap()).sum();
    let limit = (total / 2).to_string();
    let a = args(&[nginx.url("xz")], &fx.public_key, &["--max-size", &limit]);
    let points = [
        "unpack::after_first_file",
        "publish::before_rename",
        "publish::after_rename",
        "evict::after_trash_rename",
    ];
    for (round, point) in points.iter().enumerate() {
        let mut d = Daemon::start_env(&mnt, &cache, &log(), &a, &[("STOREFS_FAILPOINTS", point)]);
        // Read paths in a different order each round until the failpoint kills the daemon.
        let mut order = fx.closure.clone();
        order.rotate_left(round * 5);
        let died = order.iter().any(|sp| nix_hash(&d.path(sp, "")).is_err());
        assert!(died, "{point}: never reached");
        let status = d.wait_exit(Duration::from_secs(10)).expect("daemon did not die");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "{point}"
        );
        std::mem::forget(d);
        let d = Daemon::start_at(&mnt, &cache, &log(), &a);
        check_cache_is_whole(fx, &d);
        drop(d);
    }
    // Random kills while the closure downloads.
    for delay_ms in [30u64, 120, 400] {
        let mut d = Daemon::start_at(&mnt, &cache, &log(), &a);
        let pid = d.pid();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(delay_ms));
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let mut order = fx.closure.clone();
        order.reverse();
        for sp in &order {
            if nix_hash(&d.path(sp, "")).is_err() {
                break;
            }
        }
        killer.join().unwrap();
        d.wait_exit(Duration::from_secs(10)).expect("daemon did not die");
        std::mem::forget(d);
        let d = Daemon::start_at(&mnt, &cache, &log(), &a);
        check_cache_is_whole(fx, &d);
    }
    // And everything still reads correctly afterwards.
    let d = Daemon::start_at(&mnt, &cache, &log(), &a);
    for sp in &fx.closure {
        assert_eq!(nix_hash(&d.path(sp, "")).unwrap(), nar_field(fx, sp, "NarHash"), "{sp}");
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` on `dir`.
    fn mount(dir: &Path, size_bytes: u64) -> Tmpfs {
        Self::mount_with(dir, &format!("size={size_bytes}"))
    }

    /// Mounts a tmpfs with `options` (`size=…,nr_inodes=…`) on `dir`.
    fn mount_with(dir: &Path, options: &str) -> Tmpfs {
        fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("{options},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success());
        Tmpfs(dir.into())
    }

    /// Remounts it read-only (as ext4's errors=remount-ro would).
    fn remount_read_only(&self) {
        let st = Command::new("mount").args(["-o", "remount,ro"]).arg(&self.0).status().unwrap();
        assert!(st.success());
    }

    /// Bytes free on it now.
    fn free_bytes(&self) -> u64 {
        let path = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs is plain old data; `path` is NUL-terminated.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Acceptance: cache on a tmpfs smaller than the closure, --max-size larger than the tmpfs:
/// every path reads, twice over, because paths are evicted for it (before its download, by the
/// filesystem's free space); a path larger than the disk gets EIO while everything else keeps
/// working. The ENOSPC evict-and-retry itself is what `inode_exhaustion_is_handled_by_eviction`
/// proves (free bytes cannot foresee inodes, so only the retry can save those reads).
#[test]
fn a_full_disk_is_handled_by_eviction() {
    let Some(fx) = setup("a_full_disk_is_handled_by_eviction") else { return };
    let (slow_cache, hundred) = hundred_mb_cache(fx);
    let web = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(fx.cache_dir("zstd"), web.path().join("zstd")).unwrap();
    std::os::unix::fs::symlink(&slow_cache, web.path().join("big")).unwrap();
    let nginx = Nginx::start(web.path(), "");
    let sizes: Vec<u64> =
        fx.closure.iter().map(|sp| nar_field(fx, sp, "NarSize").parse().unwrap()).collect();
    let total: u64 = sizes.iter().sum();
    let largest = *sizes.iter().max().unwrap();
    let tmpfs_size = largest + largest / 4 + (512 << 10);
    assert!(tmpfs_size < total, "the tmpfs must be smaller than the closure");
    let tmp = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(&tmp.path().join("disk"), tmpfs_size);
    let (mnt, cache, log) =
        (tmp.path().join("mnt"), tmp.path().join("disk/cache"), tmp.path().join("log"));
    fs::create_dir(&mnt).unwrap();
    let a = args(
        &[nginx.url("zstd"), nginx.url("big")],
        &fx.public_key,
        &["--max-size", "1G", "--min-free", "0"],
    );
    let d = Daemon::start_at(&mnt, &cache, &log, &a);
    for round in 0..2 {
        for sp in &fx.closure {
            assert_eq!(
                nix_hash(&d.path(sp, "")).unwrap(),
                nar_field(fx, sp, "NarHash"),
                "round {round}: {sp}"
            );
        }
    }
    let v = stats(&d);
    // Each round reads both large paths, which never fit together: each evicts the other.
    assert!(stat(&v, "evictions") >= 3, "too few evictions: {v}");
    assert_eq!(stat(&v, "fetch_failures"), 0, "{v}");
    let err = fs::metadata(d.path(&hundred, "")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "a path larger than the disk");
    assert_eq!(count(&cache.join("staging")), 0);
    for sp in &fx.closure {
        assert_eq!(
            nix_hash(&d.path(sp, "")).unwrap(),
            nar_field(fx, sp, "NarHash"),
            "after EIO: {sp}"
        );
    }
}

/// Acceptance: a process holding a file open, and one with it mmapped, read correct bytes while
/// the path is evicted under them. By default the daemon does not know the file is open, so
/// pages the kernel dropped come from fetching the path again.
#[test]
fn open_and_mapped_files_survive_eviction() {
    let Some(fx) = setup("open_and_mapped_files_survive_eviction") else { return };
    open_and_mapped_files_read_after_eviction(fx, &[], false);
}

/// With `--passthrough` the open handle keeps the cache file open: after eviction it reads
/// correct bytes with every substituter down.
#[test]
fn with_passthrough_open_files_survive_eviction_offline() {
    let Some(fx) = setup("with_passthrough_open_files_survive_eviction_offline") else { return };
    open_and_mapped_files_read_after_eviction(fx, &["--passthrough"], true);
}

fn open_and_mapped_files_read_after_eviction(fx: &Fixtures, extra: &[&str], offline: bool) {
    let mut nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let limit = (2u64 << 20).to_string();
    let mut flags = vec!["--max-size", limit.as_str()];
    flags.extend_from_slice(extra);
    let d = Daemon::start(tmp.path(), &args(&[nginx.url("zstd")], &fx.public_key, &flags));
    let want = fs::read(&fx.big_file).unwrap();
    let mut file = fs::File::open(d.path(&fx.big_file, "")).unwrap();
    let len = want.len();
    // SAFETY: a private read-only mapping of a file we keep open; unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    let mut head = vec![0u8; 4096];
    file.read_exact(&mut head).unwrap();
    // Fill the cache with everything else: the big path is the least recently used.
    for sp in fx.closure.iter().filter(|p| **p != fx.big) {
        nix_hash(&d.path(sp, "")).unwrap();
    }
    assert!(!d.cache.join("entries").join(hash_part(&fx.big)).exists(), "big path not evicted");
    if offline {
        nginx.stop();
    }
    // Drop the kernel's cached pages so the reads below really reach the daemon.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    let mut rest = Vec::new();
    file.read_to_end(&mut rest).unwrap();
    assert!(head.iter().chain(&rest).eq(want.iter()), "open file read wrong bytes after eviction");
    // SAFETY: the mapping is `len` bytes long and stays mapped until munmap.
    let mapped = unsafe { std::slice::from_raw_parts(map as *const u8, len) };
    assert!(mapped == &want[..], "mapped file read wrong bytes after eviction");
    unsafe { libc::munmap(map, len) };
}

/// Acceptance: a second daemon on the same cache directory exits non-zero at once, naming the
/// lock holder.
#[test]
fn a_second_daemon_on_the_same_cache_fails_fast() {
    let Some(fx) = setup("a_second_daemon_on_the_same_cache_fails_fast") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let a = args(&[nginx.url("zstd")], &fx.public_key, &[]);
    let d = Daemon::start(tmp.path(), &a);
    let other = tmp.path().join("mnt2");
    fs::create_dir(&other).unwrap();
    let start = Instant::now();
    let out = Command::new(storefs_bin())
        .arg("mount")
        .arg(&other)
        .arg("--cache-dir")
        .arg(&d.cache)
        .args(["--nix-conf", "/dev/null"])
        .args(&a)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(start.elapsed() < Duration::from_secs(10), "took {:?}", start.elapsed());
    assert!(stderr.contains(&format!("pid {}", d.pid())), "{stderr}");
}

/// Acceptance: 1000 lookups of one absent path within the TTL cause one upstream request; after
/// the TTL, and after the path is published upstream, the lookup succeeds.
#[test]
fn absent_answers_are_cached_for_the_negative_ttl() {
    let Some(fx) = setup("absent_answers_are_cached_for_the_negative_ttl") else { return };
    let web = tempfile::tempdir().unwrap();
    let cache_dir = web.path().join("late");
    fs::create_dir_all(cache_dir.join("nar")).unwrap();
    fs::copy(fx.cache_dir("zstd").join("nix-cache-info"), cache_dir.join("nix-cache-info"))
        .unwrap();
    let nginx = Nginx::start(web.path(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        tmp.path(),
        &args(&[nginx.url("late")], &fx.public_key, &["--negative-ttl", "2"]),
    );
    let target = d.path(&fx.deep, "");
    for _ in 0..1000 {
        assert_eq!(fs::metadata(&target).unwrap_err().raw_os_error(), Some(libc::ENOENT));
    }
    nginx.wait_for_requests(".narinfo", 1, Duration::from_secs(5));
    assert_eq!(nginx.count_requests(".narinfo"), 1, "{:?}", nginx.requests());
    // Publish it upstream.
    let narinfo = fx.narinfo_path("zstd", &fx.deep);
    let url = fs::read_to_string(&narinfo)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("URL: ").map(str::to_owned))
        .unwrap();
    fs::copy(fx.cache_dir("zstd").join(&url), cache_dir.join(&url)).unwrap();
    fs::copy(&narinfo, cache_dir.join(narinfo.file_name().unwrap())).unwrap();
    let published = Instant::now();
    let deadline = published + Duration::from_secs(10);
    while fs::metadata(&target).is_err() {
        assert!(Instant::now() < deadline, "never found after the TTL");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(fs::read(d.path(&fx.deep_file, "")).unwrap(), fs::read(&fx.deep_file).unwrap());
    let narinfo_requests = nginx.count_requests(".narinfo");
    assert!(
        narinfo_requests <= 2 + published.elapsed().as_millis() as usize / 2000,
        "{narinfo_requests} narinfo requests"
    );
}

/// Acceptance (issue 12, item 3): a cache filesystem that is read-only at start (ext4
/// errors=remount-ro, then a reboot) still gets a mount: every cached path is served, every other
/// path is EIO with no request sent, the reason is logged once at ERROR, and `stats` shows it.
#[test]
fn a_read_only_cache_at_start_serves_what_it_holds() {
    let Some(fx) = setup("a_read_only_cache_at_start_serves_what_it_holds") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 64 << 20);
    let (mnt, cache) = (tmp.path().join("mnt"), tmp.path().join("disk/cache"));
    fs::create_dir(&mnt).unwrap();
    let a = args(&[nginx.url("zstd")], &fx.public_key, &["--prefetch-jobs", "0"]);
    let (cached, uncached) = fx.closure.split_at(fx.closure.len() / 2);
    let mut d = Daemon::start_at(&mnt, &cache, &tmp.path().join("log1"), &a);
    for sp in cached {
        nix_hash(&d.path(sp, "")).unwrap();
    }
    assert_eq!(d.stop(), Some(0));
    disk.remount_read_only();
    nginx.clear_log();
    let d = Daemon::start_at(&mnt, &cache, &tmp.path().join("log2"), &a);
    for sp in cached {
        assert_eq!(nix_hash(&d.path(sp, "")).unwrap(), nar_field(fx, sp, "NarHash"), "{sp}");
    }
    for sp in uncached {
        let err = fs::metadata(d.path(sp, "")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{sp}");
    }
    assert_eq!(nginx.requests(), Vec::<String>::new(), "a read-only cache fetches nothing");
    let log = d.log_text();
    let loud: Vec<_> =
        log.lines().filter(|l| l.contains("cache filesystem is read-only")).collect();
    assert_eq!(loud.len(), 1, "said once:\n{log}");
    assert!(loud[0].contains("ERROR"), "{}", loud[0]);
    let v = stats(&d);
    assert_eq!(v["cache_writable"], serde_json::Value::Bool(false), "{v}");
    assert_eq!(stat(&v, "cached_paths"), cached.len() as u64, "{v}");
    let human = d.client(&["stats"]);
    let human = String::from_utf8_lossy(&human.stdout);
    let flag = human.lines().find(|l| l.trim_start().starts_with("cache writable"));
    assert!(flag.is_some_and(|l| l.trim_end().ends_with("NO")), "{human}");
}

/// A cache filesystem that turns read-only under a running daemon: the first write that meets
/// EROFS switches the cache to read-only (ERROR once, `cache writable NO`); cached paths are still
/// served, and later uncached paths are EIO without a request.
#[test]
fn a_cache_turned_read_only_mid_run_keeps_serving() {
    let Some(fx) = setup("a_cache_turned_read_only_mid_run_keeps_serving") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 64 << 20);
    let (mnt, cache) = (tmp.path().join("mnt"), tmp.path().join("disk/cache"));
    fs::create_dir(&mnt).unwrap();
    let a = args(&[nginx.url("zstd")], &fx.public_key, &["--prefetch-jobs", "0"]);
    let d = Daemon::start_at(&mnt, &cache, &tmp.path().join("log"), &a);
    let (cached, uncached) = fx.closure.split_at(fx.closure.len() / 2);
    for sp in cached {
        nix_hash(&d.path(sp, "")).unwrap();
    }
    assert_eq!(stats(&d)["cache_writable"], serde_json::Value::Bool(true));
    disk.remount_read_only();
    let err = fs::metadata(d.path(&uncached[0], "")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    nginx.clear_log();
    for sp in &uncached[1..] {
        let err = fs::metadata(d.path(sp, "")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO), "{sp}");
    }
    assert_eq!(nginx.requests(), Vec::<String>::new(), "read-only now: nothing fetched");
    for sp in cached {
        assert_eq!(nix_hash(&d.path(sp, "")).unwrap(), nar_field(fx, sp, "NarHash"), "{sp}");
    }
    let log = d.log_text();
    let loud: Vec<_> = log.lines().filter(|l| l.contains("turned read-only")).collect();
    assert_eq!(loud.len(), 1, "said once:\n{log}");
    assert!(loud[0].contains("ERROR"), "{}", loud[0]);
    assert_eq!(stats(&d)["cache_writable"], serde_json::Value::Bool(false));
}

/// Acceptance (issue 12, item 3): a cache of an unknown VERSION is moved aside whole, the daemon
/// starts empty and serves, and says so at ERROR.
#[test]
fn a_cache_of_an_unknown_version_is_moved_aside() {
    let Some(fx) = setup("a_cache_of_an_unknown_version_is_moved_aside") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let a = args(&[nginx.url("zstd")], &fx.public_key, &["--prefetch-jobs", "0"]);
    let mut d = Daemon::start(tmp.path(), &a);
    nix_hash(&d.path(&fx.deep, "")).unwrap();
    assert_eq!(d.stop(), Some(0));
    let cache = tmp.path().join("cache");
    fs::write(cache.join("VERSION"), "storefs-cache 999\n").unwrap();
    let d = Daemon::start(tmp.path(), &a);
    let aside: Vec<PathBuf> = fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("unknown-version."))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(fs::read_to_string(aside[0].join("VERSION")).unwrap(), "storefs-cache 999\n");
    assert!(aside[0].join("entries").join(hash_part(&fx.deep)).is_dir(), "moved whole");
    assert_eq!(fs::read_to_string(cache.join("VERSION")).unwrap(), "storefs-cache 1\n");
    let log = d.log_text();
    let line = log.lines().find(|l| l.contains("unknown format")).expect("logged");
    assert!(line.contains("ERROR") && line.contains("unknown-version."), "{line}");
    assert_eq!(stat(&stats(&d), "cached_paths"), 0, "starts empty");
    assert_eq!(nix_hash(&d.path(&fx.deep, "")).unwrap(), nar_field(fx, &fx.deep, "NarHash"));
}

/// Acceptance (issue 12, item 5): with the disk filled by someone else's file, a path that would
/// not fit even after evicting every cached path is refused at once: nothing evicted, its NAR
/// never requested, and the refusal remembered (no request at all for the next lookups).
#[test]
fn a_path_that_cannot_fit_is_refused_without_evicting() {
    let Some(fx) = setup("a_path_that_cannot_fit_is_refused_without_evicting") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 32 << 20);
    let (mnt, cache) = (tmp.path().join("mnt"), tmp.path().join("disk/cache"));
    fs::create_dir(&mnt).unwrap();
    let flags = ["--max-size", "1G", "--min-free", "0", "--prefetch-jobs", "0"];
    let d = Daemon::start_at(
        &mnt,
        &cache,
        &tmp.path().join("log"),
        &args(&[nginx.url("zstd")], &fx.public_key, &flags),
    );
    let small: Vec<&String> = fx.closure.iter().filter(|sp| **sp != fx.big).take(6).collect();
    for sp in &small {
        nix_hash(&d.path(sp, "")).unwrap();
    }
    // Someone else's file leaves 1 MiB free: the 4 MiB path cannot fit, whatever is evicted.
    let balloon = tmp.path().join("disk/balloon");
    let st = Command::new("fallocate")
        .args(["-l", &(disk.free_bytes() - (1 << 20)).to_string()])
        .arg(&balloon)
        .status()
        .unwrap();
    assert!(st.success());
    nginx.clear_log();
    let started = Instant::now();
    let err = fs::metadata(d.path(&fx.big, "")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(nginx.count_requests("/nar/"), 0, "NAR requested: {:?}", nginx.requests());
    assert_eq!(nginx.count_requests(".narinfo"), 1, "{:?}", nginx.requests());
    for _ in 0..3 {
        let err = fs::metadata(d.path(&fx.big, "")).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EIO));
    }
    assert_eq!(nginx.requests().len(), 1, "refusal remembered: {:?}", nginx.requests());
    let v = stats(&d);
    assert_eq!(stat(&v, "evictions"), 0, "nothing evicted for a path that cannot fit: {v}");
    assert_eq!(stat(&v, "cached_paths"), small.len() as u64, "{v}");
    assert_eq!(stat(&v, "no_room_refusals"), 4, "{v}");
    assert_eq!(count(&cache.join("staging")), 0);
    for sp in &small {
        assert_eq!(nix_hash(&d.path(sp, "")).unwrap(), nar_field(fx, sp, "NarHash"), "{sp}");
    }
}

/// DSK-11: another tenant's file leaves the cache filesystem just above `--min-free`. A path
/// that fits only below the floor evicts the least recently used entry (the 4 MiB one) to keep
/// the floor, nothing more, and is served; free space is back above the floor.
#[test]
fn the_min_free_floor_is_kept_by_evicting_during_fetches() {
    let Some(fx) = setup("the_min_free_floor_is_kept_by_evicting_during_fetches") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&tmp.path().join("disk"), 32 << 20);
    let (mnt, cache) = (tmp.path().join("mnt"), tmp.path().join("disk/cache"));
    fs::create_dir(&mnt).unwrap();
    const FLOOR: u64 = 8 << 20;
    let flags = ["--max-size", "1G", "--min-free", "8M", "--prefetch-jobs", "0"];
    let d = Daemon::start_at(
        &mnt,
        &cache,
        &tmp.path().join("log"),
        &args(&[nginx.url("zstd")], &fx.public_key, &flags),
    );
    // The 4 MiB path first (least recently used), then small ones.
    nix_hash(&d.path(&fx.big, "")).unwrap();
    let small: Vec<&String> =
        fx.closure.iter().filter(|sp| **sp != fx.big && **sp != fx.busybox).take(4).collect();
    for sp in &small {
        nix_hash(&d.path(sp, "")).unwrap();
    }
    // Someone else's file: 1 MiB above the floor is left, less than busybox's 2 MB.
    let st = Command::new("fallocate")
        .args(["-l", &(disk.free_bytes() - FLOOR - (1 << 20)).to_string()])
        .arg(tmp.path().join("disk/balloon"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(nix_hash(&d.path(&fx.busybox, "")).unwrap(), nar_field(fx, &fx.busybox, "NarHash"));
    let v = stats(&d);
    assert_eq!(stat(&v, "evictions"), 1, "the least recently used entry only: {v}");
    assert!(!cache.join("entries").join(hash_part(&fx.big)).exists(), "the 4 MiB path went");
    for sp in &small {
        assert!(cache.join("entries").join(hash_part(sp)).exists(), "{sp} stayed");
    }
    // The evicted entry is deleted from the trash in the background.
    let deadline = Instant::now() + Duration::from_secs(10);
    while disk.free_bytes() < FLOOR {
        assert!(Instant::now() < deadline, "free {} below the floor", disk.free_bytes());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Inodes one entry of `sp` takes in the cache: its directory, the manifest, `pack` if it has a
/// file of at most 64 KiB, and one file per larger file.
fn entry_inodes(sp: &str) -> u64 {
    let (mut small, mut large) = (0, 0);
    let mut stack = vec![PathBuf::from(sp)];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if meta.is_file() {
            if meta.len() <= 64 << 10 { small += 1 } else { large += 1 }
        }
    }
    2 + u64::from(small > 0) + large
}

/// Acceptance (issue 12, item 6; DSK-3): the cache filesystem runs out of inodes long before
/// bytes. ENOSPC from creating a staging directory or a file evicts and retries, so every path
/// of the closure reads, twice over, with evictions. Fails if the evict-and-retry is removed.
#[test]
fn inode_exhaustion_is_handled_by_eviction() {
    let Some(fx) = setup("inode_exhaustion_is_handled_by_eviction") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let per_entry: Vec<u64> = fx.closure.iter().map(|sp| entry_inodes(sp)).collect();
    let all: u64 = per_entry.iter().sum();
    // The tmpfs root, the cache directory and its 7 files and directories, one narinfo per path
    // (kept after eviction) and one being written: what is left is room for a third of the
    // entries, and for the largest one twice over.
    let fixed = 9 + fx.closure.len() as u64 + 1;
    let for_entries = (all / 3).max(2 * per_entry.iter().max().unwrap());
    assert!(for_entries < all, "the inodes must not hold every entry");
    let tmp = tempfile::tempdir().unwrap();
    let options = format!("size={},nr_inodes={}", 256 << 20, fixed + for_entries);
    let _disk = Tmpfs::mount_with(&tmp.path().join("disk"), &options);
    let (mnt, cache) = (tmp.path().join("mnt"), tmp.path().join("disk/cache"));
    fs::create_dir(&mnt).unwrap();
    let flags = ["--max-size", "1G", "--min-free", "0", "--prefetch-jobs", "0"];
    let a = args(&[nginx.url("zstd")], &fx.public_key, &flags);
    let d = Daemon::start_at(&mnt, &cache, &tmp.path().join("log"), &a);
    for round in 0..2 {
        for sp in &fx.closure {
            let got = nix_hash(&d.path(sp, ""));
            assert_eq!(
                got.as_deref(),
                Ok(nar_field(fx, sp, "NarHash").as_str()),
                "round {round}: {sp}\n{}",
                d.log_text()
            );
        }
    }
    let v = stats(&d);
    assert!(stat(&v, "evictions") > 0, "{v}");
    assert_eq!(stat(&v, "fetch_failures"), 0, "{v}");
    assert_eq!(stat(&v, "no_room_refusals"), 0, "{v}");
    assert!(d.log_text().contains("evicting and retrying once"), "the retry never ran");
    assert_eq!(count(&cache.join("staging")), 0);
}
