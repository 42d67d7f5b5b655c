//! Real-kernel FUSE tests of `storefs mount` against binary caches made by real Nix and served
//! by real nginx on loopback. Needs root, /dev/fuse, nix-bin and nginx; skips loudly without them
//! (and fails under CI=true). Run with `cargo test --features fuse_tests`.

#![cfg(feature = "fuse_tests")]

mod common;
#[path = "fuse/upstream.rs"]
mod upstream;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::big::hundred_mb_cache;
use common::daemon::{Daemon, storefs_bin};
use common::hostile::{CacheWriter, Tamper, fake_basename, small_tree_nar};
use common::{
    COMPRESSIONS, Fixtures, Nginx, daemon_args, du_bytes, fuse_setup as setup, hash_part, run,
};
use sha2::{Digest, Sha256};
use storefs::nix::nar::Node;
use storefs::nix::signature::SigningKey;

fn nar_hash_of(fx: &Fixtures, compression: &str, store_path: &str) -> String {
    let text = fs::read_to_string(fx.narinfo_path(compression, store_path)).unwrap();
    let line = text.lines().find(|l| l.starts_with("NarHash: ")).unwrap();
    line.trim_start_matches("NarHash: sha256:").to_owned()
}

fn errno_of(result: std::io::Result<impl Sized>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn sha256_file(path: &Path) -> [u8; 32] {
    let mut f = fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// Acceptance: for every path and every compression, nix-hash of the mounted path equals the
/// narinfo NarHash and `nix-store --dump` is byte-identical to the original's.
#[test]
fn every_path_of_every_compression_matches_nix() {
    let Some(fx) = setup("every_path_of_every_compression_matches_nix") else { return };
    assert!(fx.closure.len() >= 20, "fixture closure has {} paths", fx.closure.len());
    let nginx = Nginx::start(&fx.caches_dir(), "");
    for compression in COMPRESSIONS {
        let tmp = tempfile::tempdir().unwrap();
        let d =
            Daemon::start(tmp.path(), &daemon_args(&[nginx.url(compression)], &fx.public_key, &[]));
        for sp in &fx.closure {
            let mounted = d.path(sp, "");
            let got =
                run(Command::new("nix-hash").args(["--type", "sha256", "--base32"]).arg(&mounted));
            assert_eq!(
                String::from_utf8_lossy(&got).trim(),
                nar_hash_of(fx, compression, sp),
                "{compression}: nix-hash of {sp}"
            );
            let dump_mounted = run(Command::new("nix-store").arg("--dump").arg(&mounted));
            let dump_original = run(Command::new("nix-store").arg("--dump").arg(sp));
            assert!(
                dump_mounted == dump_original,
                "{compression}: nix-store --dump of {sp} differs"
            );
        }
        // The root lists exactly what was fetched, never the upstream.
        let listed: BTreeSet<String> = fs::read_dir(&d.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let want: BTreeSet<String> =
            fx.closure.iter().map(|p| p.trim_start_matches("/nix/store/").to_owned()).collect();
        assert_eq!(listed, want, "{compression}: root listing");
    }
}

/// Acceptance: canonical metadata — modes 0444/0555, owner root, mtime 1, stable inodes.
#[test]
fn metadata_is_canonical_and_inodes_are_stable() {
    let Some(fx) = setup("metadata_is_canonical_and_inodes_are_stable") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]);
    let mut d = Daemon::start(tmp.path(), &args);
    use std::os::unix::fs::MetadataExt;
    let exe = d.path(&fx.exe, "");
    let meta = fs::metadata(&exe).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o555);
    assert_eq!((meta.uid(), meta.gid(), meta.mtime()), (0, 0, 1));
    let data = d.path(&fx.big_file, "");
    assert_eq!(fs::metadata(&data).unwrap().mode() & 0o7777, 0o444);
    let dir = fs::metadata(d.path(&fx.deep, "")).unwrap();
    assert!(dir.is_dir());
    assert_eq!(dir.mode() & 0o7777, 0o555);
    let single = fs::symlink_metadata(d.path(&fx.busybox, "")).unwrap();
    assert!(single.is_file(), "a single-file store path is served as a file");
    let link = fs::symlink_metadata(d.path(&fx.symlink_root, "")).unwrap();
    assert!(link.file_type().is_symlink(), "a symlink store path is served as a symlink");
    let before = (fs::metadata(&exe).unwrap().ino(), fs::metadata(&data).unwrap().ino());
    assert_ne!(before.0, before.1);
    d.stop();
    // Same cache, new daemon: same inode numbers, and served without upstream requests.
    nginx.clear_log();
    let d = Daemon::start(tmp.path(), &args);
    let after = (fs::metadata(&exe).unwrap().ino(), fs::metadata(&data).unwrap().ino());
    assert_eq!(before, after, "inode numbers survive a restart");
    assert_eq!(nginx.count_requests(".narinfo"), 0, "restart served from the cache");
    let statfs = statvfs_of(&d.mnt);
    assert_ne!(statfs.f_flag & libc::ST_RDONLY, 0, "mount is read-only");
    assert!(statfs.f_files > 0, "statfs counts the cached paths");
}

/// The mount root is listed without OPENDIR and its listing is kept by the kernel, yet `ls`
/// shows a path right after it was fetched and stops showing it once evicted: the root's mtime
/// moves with its contents and is re-read at each listing.
#[test]
fn the_root_listing_follows_fetches_and_evictions() {
    let Some(fx) = setup("the_root_listing_follows_fetches_and_evictions") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &["--prefetch-jobs", "0"]);
    let d = Daemon::start(tmp.path(), &args);
    let names = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&d.mnt)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert!(names().is_empty());
    let base = |p: &str| p.trim_start_matches("/nix/store/").to_owned();
    for (i, p) in [&fx.hello, &fx.deep, &fx.big].into_iter().enumerate() {
        assert!(fs::symlink_metadata(d.path(p, "")).is_ok());
        let listed = names();
        assert_eq!(listed.len(), i + 1, "{listed:?}");
        assert!(listed.contains(&base(p)), "{p} missing from {listed:?}");
    }
    let out = d.client(&["evict", &fx.deep]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = names();
    assert!(!listed.contains(&base(&fx.deep)), "evicted path still listed: {listed:?}");
    assert_eq!(listed.len(), 2, "{listed:?}");
}

fn statvfs_of(path: &Path) -> libc::statvfs {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s
}

/// `df` on the mount shows the cache quota (as CVMFS does), not a full disk: size `--max-size`,
/// used the bytes cached, available the rest, through `statvfs(3)` and the real `df`.
#[test]
fn df_reports_the_cache_quota() {
    let Some(fx) = setup("df_reports_the_cache_quota") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let max: u64 = 64 << 20;
    let extra = ["--max-size", "64M", "--prefetch-jobs", "0"];
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &extra));
    let bytes = |s: &libc::statvfs| {
        let unit = s.f_frsize;
        (s.f_blocks * unit, (s.f_blocks - s.f_bfree) * unit, s.f_bavail * unit)
    };
    let empty = statvfs_of(&d.mnt);
    assert_eq!(bytes(&empty), (max, 0, max), "an empty cache: all of --max-size available");
    fs::read(d.path(&fx.hello, "bin/hello")).unwrap();
    let out = d.client(&["stats", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cached = stats["cache_bytes"].as_u64().unwrap();
    assert!(cached > 0, "{stats}");
    let used = cached.next_multiple_of(4096);
    assert_eq!(bytes(&statvfs_of(&d.mnt)), (max, used, max - used), "cached {cached} bytes");
    // The real df, as a monitoring agent or an operator runs it.
    let df = Command::new("df").args(["-B1", "--output=size,used,avail"]).arg(&d.mnt).output();
    let df = String::from_utf8(df.unwrap().stdout).unwrap();
    let row: Vec<u64> =
        df.lines().nth(1).unwrap().split_whitespace().map(|n| n.parse().unwrap()).collect();
    assert_eq!(row, [max, used, max - used], "df:\n{df}");
}

/// Acceptance: an executable whose interpreter is another store path runs with storefs on
/// /nix/store, in a private mount namespace (the host's store is hidden there).
#[test]
fn executable_runs_with_storefs_on_nix_store() {
    let Some(fx) = setup("executable_runs_with_storefs_on_nix_store") else { return };
    if common::require(&["unshare"], "executable_runs_with_storefs_on_nix_store") {
        return;
    }
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let script = format!(
        r#"set -eu
mount --make-rprivate /
"{bin}" mount /nix/store --cache-dir "{tmp}/cache" --nix-conf /dev/null \
    --substituter "{url}" --trusted-public-key "{key}" 2>"{tmp}/daemon.log" &
pid=$!
i=0
until grep -q ' /nix/store fuse.storefs ' /proc/self/mounts; do
    i=$((i+1)); [ $i -lt 400 ] || {{ echo "no mount"; cat "{tmp}/daemon.log"; exit 3; }}
    kill -0 $pid || {{ echo "daemon died"; cat "{tmp}/daemon.log"; exit 3; }}
    sleep 0.05
done
out=$("{exe}")
kill -TERM $pid; wait $pid || true
printf '%s' "$out"
"#,
        bin = storefs_bin(),
        tmp = tmp.path().display(),
        url = nginx.url("xz"),
        key = fx.public_key,
        exe = fx.exe,
    );
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), fx.exe_expected);
    // The script, its interpreter and the file it reads came through storefs.
    assert!(nginx.count_requests(hash_part(&fx.busybox)) >= 1);
    assert!(nginx.count_requests(hash_part(&fx.weird)) >= 1);
}

/// Acceptance: non-store-path names are ENOENT with zero upstream requests; a valid name no
/// cache has is ENOENT.
#[test]
fn bad_and_absent_names_are_enoent() {
    let Some(fx) = setup("bad_and_absent_names_are_enoent") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]));
    nginx.clear_log();
    let bad = [
        "hello",
        "00000000000000000000000000000000",
        "00000000000000000000000000000000-",
        "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-hello",
        "0000000000000000000000000000000-short",
        "00000000000000000000000000000000-bad name",
        "00000000000000000000000000000000-..",
        ".nix-cache-info",
    ];
    for name in bad {
        assert_eq!(errno_of(fs::metadata(d.mnt.join(name))), libc::ENOENT, "{name}");
    }
    assert_eq!(nginx.requests().len(), 0, "invalid names caused requests: {:?}", nginx.requests());
    let absent = fake_basename(1, "not-in-any-cache");
    assert_eq!(errno_of(fs::metadata(d.mnt.join(&absent))), libc::ENOENT);
    nginx.wait_for_requests(".narinfo", 1, Duration::from_secs(5));
    assert_eq!(nginx.count_requests(".narinfo"), 1);
    // Within the negative TTL, asking again costs nothing.
    for _ in 0..50 {
        assert_eq!(errno_of(fs::metadata(d.mnt.join(&absent))), libc::ENOENT);
    }
    assert_eq!(nginx.count_requests(".narinfo"), 1, "absent answers are cached");
    // Another name inside an existing path is ENOENT too, and the kernel remembers it: a store
    // path never changes, so it asks the daemon once.
    let missing = d.path(&fx.deep, "no-such-file");
    for _ in 0..50 {
        assert_eq!(errno_of(fs::metadata(&missing)), libc::ENOENT);
    }
    let asked = d.log_text().matches("lookup: absent, for good").count();
    assert_eq!(asked, 1, "the daemon was asked {asked} times:\n{}", d.log_text());
}

/// Acceptance: untrusted, tampered, mismatching, truncated and hostile inputs give EIO, nothing
/// becomes visible, nothing is written outside the cache; a later cache's good copy is served.
#[test]
fn hostile_caches_give_eio_and_later_good_copies_win() {
    let Some(fx) = setup("hostile_caches_give_eio_and_later_good_copies_win") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let web = tmp.path().join("web");
    let trusted =
        SigningKey::parse(fs::read_to_string(fx.secret_key_path()).unwrap().trim()).unwrap();
    let impostor = SigningKey::generate("storefs-test-1", [7; 32]);
    let stranger = SigningKey::generate("someone-else-1", [9; 32]);
    let bad = CacheWriter::new(&web.join("bad"), trusted.clone());
    let bad_impostor = CacheWriter::new(&web.join("impostor"), impostor);
    let bad_stranger = CacheWriter::new(&web.join("stranger"), stranger);
    let canary = tmp.path().join("canary");
    fs::create_dir(&canary).unwrap();

    let mut eio_cases: Vec<(String, &str)> = Vec::new();
    let mut seed = 10;
    let mut case = |writer: &CacheWriter, what: &'static str, nar: Vec<u8>, tamper: Tamper| {
        seed += 1;
        let base = fake_basename(seed, what);
        writer.publish(&base, &nar, tamper);
        eio_cases.push((base, what));
    };
    case(&bad_impostor, "signed-by-impostor", small_tree_nar("x"), Tamper::None);
    case(&bad_stranger, "signed-by-stranger", small_tree_nar("x"), Tamper::None);
    case(&bad, "tampered-narhash", small_tree_nar("x"), Tamper::NarHash);
    case(&bad, "tampered-narsize", small_tree_nar("x"), Tamper::NarSize);
    case(&bad, "tampered-references", small_tree_nar("x"), Tamper::References);
    case(&bad, "nar-mismatch", small_tree_nar("x"), Tamper::OtherNar);
    case(&bad, "nar-truncated", small_tree_nar("x"), Tamper::TruncatedNar);
    let file = |c: &str| Node::File { executable: false, contents: c.as_bytes().to_vec() };
    let hostile_trees = [
        ("name-dotdot", Node::Directory(vec![(b"..".to_vec(), file("x"))])),
        ("name-slash", Node::Directory(vec![(b"a/b".to_vec(), file("x"))])),
        ("name-empty", Node::Directory(vec![(b"".to_vec(), file("x"))])),
        (
            "duplicate",
            Node::Directory(vec![(b"a".to_vec(), file("1")), (b"a".to_vec(), file("2"))]),
        ),
        ("unsorted", Node::Directory(vec![(b"b".to_vec(), file("1")), (b"a".to_vec(), file("2"))])),
        (
            "symlink-then-dir",
            Node::Directory(vec![
                (b"x".to_vec(), Node::Symlink { target: canary.as_os_str().as_bytes().to_vec() }),
                (b"x".to_vec(), Node::Directory(vec![(b"pwned".to_vec(), file("owned"))])),
            ]),
        ),
    ];
    for (what, tree) in hostile_trees {
        case(&bad, what, tree.to_nar(), Tamper::None);
    }
    // Real fixture paths, tampered in the first cache, good in the second.
    for (i, sp) in [&fx.hello, &fx.deep, &fx.big].into_iter().enumerate() {
        let base = sp.trim_start_matches("/nix/store/");
        let tamper = [Tamper::NarHash, Tamper::OtherNar, Tamper::TruncatedNar][i];
        let nar = run(Command::new("nix-store").arg("--dump").arg(sp.as_str()));
        bad.publish(base, &nar, tamper);
    }
    for (name, writer) in [("bad", &bad), ("impostor", &bad_impostor), ("stranger", &bad_stranger)]
    {
        let _ = (name, writer);
    }
    fs::create_dir_all(web.join("good")).unwrap();
    let good = fx.cache_dir("zstd");
    let nginx = Nginx::start(&web, "");
    let good_nginx = Nginx::start(&good, "");
    let subs =
        vec![nginx.url("impostor"), nginx.url("stranger"), nginx.url("bad"), good_nginx.url("")];
    let d = Daemon::start(tmp.path(), &daemon_args(&subs, &fx.public_key, &[]));
    for (base, what) in &eio_cases {
        assert_eq!(errno_of(fs::metadata(d.mnt.join(base))), libc::EIO, "case {what}");
        let entry = d.cache.join("entries").join(&base[..32]);
        assert!(!entry.exists(), "case {what}: entry published");
    }
    let listed: Vec<_> = fs::read_dir(&d.mnt).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(listed.is_empty(), "nothing became visible: {listed:?}");
    assert_eq!(fs::read_dir(&canary).unwrap().count(), 0, "a hostile NAR wrote outside the cache");
    assert_eq!(fs::read_dir(d.cache.join("staging")).unwrap().count(), 0, "staging left behind");
    // Good copies from the last cache are served instead of the tampered ones.
    let out = run(Command::new("nix-hash")
        .args(["--type", "sha256", "--base32"])
        .arg(d.path(&fx.hello, "")));
    assert_eq!(String::from_utf8_lossy(&out).trim(), nar_hash_of(fx, "zstd", &fx.hello));
    assert_eq!(sha256_file(&d.path(&fx.big_file, "")), sha256_file(Path::new(&fx.big_file)));
    assert_eq!(fs::read(d.path(&fx.deep_file, "")).unwrap(), fs::read(&fx.deep_file).unwrap());
    // The log names the path, the cache and the reason.
    let log = d.log_text();
    assert!(log.contains("untrusted narinfo"), "log:\n{log}");
    assert!(log.contains("NAR rejected"), "log:\n{log}");
}

/// Acceptance: every mutating call is EROFS.
#[test]
fn mutations_are_erofs() {
    let Some(fx) = setup("mutations_are_erofs") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]));
    let dir = d.path(&fx.deep, "");
    let file = d.path(&fx.deep_file, "");
    fs::metadata(&file).unwrap();
    let checks: Vec<(&str, i32)> = vec![
        ("write", errno_of(fs::OpenOptions::new().write(true).open(&file))),
        ("append", errno_of(fs::OpenOptions::new().append(true).open(&file))),
        ("create", errno_of(fs::File::create(dir.join("new")))),
        ("mkdir", errno_of(fs::create_dir(dir.join("newdir")))),
        ("unlink", errno_of(fs::remove_file(&file))),
        ("rmdir", errno_of(fs::remove_dir(d.path(&fx.deep, "depth-01")))),
        ("rename", errno_of(fs::rename(&file, dir.join("moved")))),
        ("chmod", errno_of(fs::set_permissions(&file, fs::Permissions::from_mode(0o777)))),
        ("symlink", errno_of(std::os::unix::fs::symlink("x", dir.join("l")))),
        ("link", errno_of(fs::hard_link(&file, dir.join("h")))),
        ("truncate", errno_of(fs::OpenOptions::new().write(true).truncate(true).open(&file))),
        ("create-in-root", errno_of(fs::File::create(d.mnt.join("x")))),
    ];
    for (op, errno) in checks {
        assert_eq!(errno, libc::EROFS, "{op}");
    }
    let c = CString::new(file.as_os_str().as_bytes()).unwrap();
    let rc = unsafe { libc::setxattr(c.as_ptr(), c"user.x".as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    assert_eq!(rc, -1);
    assert_eq!(std::io::Error::last_os_error().raw_os_error(), Some(libc::EROFS), "setxattr");
    let rc = unsafe { libc::chown(c.as_ptr(), 1, 1) };
    assert_eq!(
        (rc, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EROFS)),
        "chown"
    );
}

fn closure_nar_sizes(fx: &Fixtures) -> Vec<(String, u64)> {
    fx.closure
        .iter()
        .map(|sp| {
            let text = fs::read_to_string(fx.narinfo_path("none", sp)).unwrap();
            let size = text.lines().find_map(|l| l.strip_prefix("NarSize: ")).unwrap();
            (sp.clone(), size.parse().unwrap())
        })
        .collect()
}

/// Acceptance: with --max-size a third of the closure, reading every path in turn succeeds and
/// disk usage stays within the limit plus the largest path.
#[test]
fn max_size_evicts_whole_paths() {
    let Some(fx) = setup("max_size_evicts_whole_paths") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let sizes = closure_nar_sizes(fx);
    let total: u64 = sizes.iter().map(|(_, s)| s).sum();
    let limit = total / 3;
    let limit_arg = limit.to_string();
    let d = Daemon::start(
        tmp.path(),
        &daemon_args(&[nginx.url("zstd")], &fx.public_key, &["--max-size", &limit_arg]),
    );
    let mut largest_entry = 0;
    for round in 0..2 {
        for (sp, _) in &sizes {
            let out = run(Command::new("nix-hash")
                .args(["--type", "sha256", "--base32"])
                .arg(d.path(sp, "")));
            assert_eq!(
                String::from_utf8_lossy(&out).trim(),
                nar_hash_of(fx, "zstd", sp),
                "round {round}: {sp}"
            );
            let entry = d.cache.join("entries").join(hash_part(sp));
            if entry.exists() {
                largest_entry = largest_entry.max(du_bytes(&entry));
            }
            let used = du_bytes(&d.cache.join("entries"));
            assert!(
                used <= limit + largest_entry,
                "after {sp}: {used} bytes on disk > limit {limit} + largest path {largest_entry}"
            );
        }
    }
    let log = d.log_text();
    assert!(log.contains("evicted"), "nothing was evicted; log:\n{log}");
}

/// Acceptance: 100 concurrent readers of one cold path cause exactly one narinfo request and one
/// NAR download.
#[test]
fn concurrent_cold_readers_share_one_download() {
    let Some(fx) = setup("concurrent_cold_readers_share_one_download") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("xz")], &fx.public_key, &[]));
    nginx.clear_log();
    let want = sha256_file(Path::new(&fx.big_file));
    let target = Arc::new(d.path(&fx.big_file, ""));
    let barrier = Arc::new(std::sync::Barrier::new(100));
    let readers: Vec<_> = (0..100)
        .map(|_| {
            let (target, barrier) = (target.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                sha256_file(&target)
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), want);
    }
    let narinfo = format!("/xz/{}.narinfo", hash_part(&fx.big));
    nginx.wait_for_requests(".nar.xz", 1, Duration::from_secs(5));
    assert_eq!(nginx.count_requests(&narinfo), 1, "narinfo requests: {:?}", nginx.requests());
    assert_eq!(nginx.count_requests(".nar.xz"), 1, "NAR requests: {:?}", nginx.requests());
}

/// Acceptance: while a 100 MB NAR downloads through a rate-limited link, stat and read of an
/// already cached path keep answering in milliseconds.
#[test]
fn slow_download_does_not_block_cached_paths() {
    let Some(fx) = setup("slow_download_does_not_block_cached_paths") else { return };
    let (slow_cache, big) = hundred_mb_cache(fx);
    let web = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&slow_cache, web.path().join("slow")).unwrap();
    std::os::unix::fs::symlink(fx.cache_dir("zstd"), web.path().join("zstd")).unwrap();
    // 100 MB at 10 MB/s: the download takes about ten seconds.
    let nginx = Nginx::start(web.path(), "location /slow/nar/ { limit_rate 10m; }");
    let tmp = tempfile::tempdir().unwrap();
    let subs = [nginx.url("zstd"), nginx.url("slow")];
    let d = Daemon::start(tmp.path(), &daemon_args(&subs, &fx.public_key, &["--max-size", "1G"]));
    // Cache the weird-names path (lookup of its root only: its files are not yet known to the kernel).
    fs::metadata(d.path(&fx.weird, "")).unwrap();
    let mut files = Vec::new();
    collect_files(Path::new(&fx.weird), &mut files);
    assert!(files.len() >= 5);
    let cold = d.path(&big, "data.bin");
    let downloader = std::thread::spawn(move || sha256_file(&cold));
    let staging = d.cache.join("staging");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_dir(&staging).unwrap().count() == 0 {
        assert!(Instant::now() < deadline, "the download never started");
        assert!(!downloader.is_finished(), "the download finished before it was seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut worst = Duration::ZERO;
    for original in &files {
        let rel = original.strip_prefix(&fx.weird).unwrap();
        let mounted = d.path(&fx.weird, &rel.to_string_lossy());
        let start = Instant::now();
        let meta = fs::symlink_metadata(&mounted).unwrap();
        if meta.is_file() {
            assert_eq!(fs::read(&mounted).unwrap(), fs::read(original).unwrap());
        }
        fs::read_dir(&d.mnt).unwrap().count();
        worst = worst.max(start.elapsed());
    }
    assert!(!downloader.is_finished(), "the download ended before the checks did");
    eprintln!("worst stat+read latency during the download: {worst:?} over {} files", files.len());
    assert!(worst < Duration::from_millis(500), "cached paths stalled for {worst:?}");
    let got = downloader.join().unwrap();
    assert_eq!(got, sha256_file(&Path::new(&big).join("data.bin")));
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            collect_files(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// `storefs mount` refuses a mountpoint where a storefs is mounted, telling to stop that daemon
/// rather than to unmount it, and exits cleanly on SIGTERM.
#[test]
fn refuses_a_mounted_mountpoint_and_stops_cleanly() {
    let Some(fx) = setup("refuses_a_mounted_mountpoint_and_stops_cleanly") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]);
    let mut d = Daemon::start(tmp.path(), &args);
    let out = Command::new(storefs_bin())
        .arg("mount")
        .arg(&d.mnt)
        .args(["--cache-dir"])
        .arg(tmp.path().join("cache2"))
        .args(["--nix-conf", "/dev/null"])
        .args(&args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // A live storefs must be stopped, never detached by hand (jobs would lose the store).
    assert!(stderr.contains("a running storefs is mounted here; stop that daemon"), "{stderr}");
    assert!(!stderr.contains("umount"), "{stderr}");
    assert_eq!(d.stop(), Some(0), "clean exit on SIGTERM; log:\n{}", d.log_text());
    assert!(!common::daemon::is_storefs_mount(&d.mnt), "unmounted on SIGTERM");
}

/// `--allow-other` lets other users (container jobs) read; without it only the owner may.
#[test]
fn allow_other_admits_unprivileged_readers() {
    let Some(fx) = setup("allow_other_admits_unprivileged_readers") else { return };
    if common::require(&["setpriv"], "allow_other_admits_unprivileged_readers") {
        return;
    }
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let as_nobody = |path: &Path| {
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups", "cat"])
            .arg(path)
            .output()
            .unwrap()
    };
    for allow_other in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let extra: &[&str] = if allow_other { &["--allow-other"] } else { &[] };
        let d =
            Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, extra));
        let file = d.path(&fx.deep_file, "");
        fs::metadata(&file).unwrap();
        let out = as_nobody(&file);
        if allow_other {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout, fs::read(&fx.deep_file).unwrap());
        } else {
            assert!(!out.status.success(), "another user read the mount without --allow-other");
        }
    }
}

/// A killed daemon leaves a dead mount (ENOTCONN); a restarted daemon takes the mountpoint back
/// and serves the cached paths without asking upstream.
#[test]
fn a_restart_after_sigkill_recovers_the_mountpoint() {
    let Some(fx) = setup("a_restart_after_sigkill_recovers_the_mountpoint") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]);
    let d = Daemon::start(tmp.path(), &args);
    let file = d.path(&fx.deep_file, "");
    let want = fs::read(&file).unwrap();
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while errno_of(fs::metadata(&d.mnt)) != libc::ENOTCONN {
        assert!(Instant::now() < deadline, "mount never went dead");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mnt, cache, log) = (d.mnt.clone(), d.cache.clone(), d.log.clone());
    std::mem::forget(d); // its child is dead; the new daemon owns the mountpoint now
    nginx.clear_log();
    let d = Daemon::start_at(&mnt, &cache, &log, &args);
    assert_eq!(fs::read(&file).unwrap(), want);
    assert_eq!(nginx.count_requests(".narinfo"), 0, "served from the cache after the crash");
    assert!(d.log_text().contains("dead storefs mount"), "log:\n{}", d.log_text());
}
