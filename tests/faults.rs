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

/// For a real-FUSE test that also needs `tools`: the fixture, or None after a loud skip.
fn setup_with(test: &str, tools: &[&str]) -> Option<&'static Fixtures> {
    let fx = setup(test)?;
    (!common::require(tools, test)).then_some(fx)
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

/// A memory cgroup of this test's own (v2 if its memory controller is there, else v1), removed
/// when dropped; None when this host has no writable one.
struct MemoryCgroup {
    dir: PathBuf,
    v2: bool,
}

impl MemoryCgroup {
    fn new(name: &str, limit: u64) -> Option<MemoryCgroup> {
        let v2_root = Path::new("/sys/fs/cgroup");
        let v2 = fs::read_to_string(v2_root.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"));
        let dir = match v2 {
            true => v2_root.join(name),
            false => Path::new("/sys/fs/cgroup/memory").join(name),
        };
        fs::create_dir(&dir).ok()?;
        let cg = MemoryCgroup { dir, v2 };
        let limit_file = if v2 { "memory.max" } else { "memory.limit_in_bytes" };
        fs::write(cg.dir.join(limit_file), limit.to_string()).ok()?;
        if !v2 {
            // Swap would hide the pressure: memory and swap together get the same limit.
            let _ = fs::write(cg.dir.join("memory.memsw.limit_in_bytes"), limit.to_string());
        }
        Some(cg)
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }

    /// A `key value` line of one of the cgroup's files.
    fn field(&self, file: &str, key: &str) -> u64 {
        let text = fs::read_to_string(self.dir.join(file)).unwrap();
        let line = text.lines().find_map(|l| l.strip_prefix(key).map(str::trim));
        line.and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// Processes of the cgroup killed by the OOM killer.
    fn oom_kills(&self) -> u64 {
        match self.v2 {
            true => self.field("memory.events", "oom_kill "),
            false => self.field("memory.oom_control", "oom_kill "),
        }
    }

    /// The most memory the cgroup used.
    fn peak(&self) -> u64 {
        let file = if self.v2 { "memory.peak" } else { "memory.max_usage_in_bytes" };
        fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once its daemon has exited (the daemon is dropped first).
        let _ = eventually(Duration::from_secs(10), || fs::remove_dir(&self.dir).is_ok());
    }
}

/// `sha256` of the file at `path`, read in 1 MiB pieces.
fn sha256_file(path: &Path) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = fs::File::open(path).unwrap();
    let (mut hash, mut buf) = (Sha256::new(), vec![0u8; 1 << 20]);
    loop {
        match file.read(&mut buf).unwrap() {
            0 => return hash.finalize().into(),
            n => hash.update(&buf[..n]),
        }
    }
}

/// The cgroup memory limit of the PRC-17 test: well below the 100 MB NAR it serves.
const MEMORY_LIMIT: u64 = 64 << 20;

/// PRC-17: under a cgroup memory limit (64 MiB) the daemon serves a 100 MB path and the whole
/// closure at once, every byte right, and is never OOM-killed: NARs are streamed, never held.
#[test]
fn a_memory_limit_below_the_nar_size_is_served_without_oom() {
    let test = "a_memory_limit_below_the_nar_size_is_served_without_oom";
    let Some(fx) = setup(test) else { return };
    let Some(cgroup) = MemoryCgroup::new(&format!("storefs-{}", std::process::id()), MEMORY_LIMIT)
    else {
        assert!(!common::is_ci(), "{test}: no writable memory cgroup");
        eprintln!("SKIPPING {test}: no writable memory cgroup (v2 memory.max or v1 memory)");
        return;
    };
    let (hundred_cache, hundred) = common::big::hundred_mb_cache(fx);
    let web = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&hundred_cache, web.path().join("big")).unwrap();
    std::os::unix::fs::symlink(fx.cache_dir("zstd"), web.path().join("zstd")).unwrap();
    let nginx = Nginx::start(web.path(), "");
    let tmp = tempfile::tempdir().unwrap();
    let subs = [nginx.url("zstd"), nginx.url("big")];
    let d = Daemon::start(tmp.path(), &daemon_args(&subs, &fx.public_key, &["--max-size", "1G"]));
    cgroup.add(d.pid());
    let big = d.path(&hundred, "data.bin");
    let reader = std::thread::spawn(move || sha256_file(&big));
    // Meanwhile every path of the closure, through nix-hash, against its signed NarHash.
    for sp in &fx.closure {
        let text = fs::read_to_string(fx.narinfo_path("zstd", sp)).unwrap();
        let want = text.lines().find_map(|l| l.strip_prefix("NarHash: sha256:")).unwrap();
        let mounted = d.path(sp, "");
        let got = common::run(
            std::process::Command::new("nix-hash")
                .args(["--type", "sha256", "--base32"])
                .arg(&mounted),
        );
        assert_eq!(String::from_utf8_lossy(&got).trim(), want, "{sp}");
    }
    let got = reader.join().unwrap();
    assert_eq!(got, sha256_file(&Path::new(&hundred).join("data.bin")), "the 100 MB file");
    assert_eq!(cgroup.oom_kills(), 0, "no OOM kill");
    assert!(common::daemon::statfs_ok(&d.mnt), "the daemon still serves");
    // The daemon's own peak resident set (the cgroup's peak includes the page cache).
    let status = fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap_or("?").trim();
    eprintln!(
        "under a {} MiB limit: cgroup peak {} MiB (page cache included), daemon VmHWM {hwm}, \
         for the 100 MB path and {} closure paths",
        MEMORY_LIMIT >> 20,
        cgroup.peak() >> 20,
        fx.closure.len()
    );
    drop(d);
}

/// Polls until `pid`'s main thread is traced (strace attached), for at most 10 s.
fn traced(pid: u32) -> bool {
    eventually(Duration::from_secs(10), || {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.lines().any(|l| l.starts_with("TracerPid:") && l.trim_end() != "TracerPid:\t0")
    })
}

/// PRC-4, as the shared plan allows without a VM (a power loss cannot be simulated here): the
/// order of the commit's I/O, from an `strace` of the real daemon. Every byte of an entry is
/// written into staging, then `syncfs` flushes it, then one rename publishes it, then
/// `entries/` is fsynced; nothing is written into a published entry. So an entry in `entries/`
/// after a power loss had all its bytes on disk before its name was; bytes lost anyway (a lying
/// disk) are caught by the block checksums on the first read (`tests/integrity.rs`).
#[test]
fn a_commit_writes_then_syncs_then_renames_then_syncs_the_directory() {
    let test = "a_commit_writes_then_syncs_then_renames_then_syncs_the_directory";
    let Some(fx) = setup_with(test, &["strace"]) else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = start(fx, &nginx, tmp.path(), "", &[]);
    let log = tmp.path().join("strace.log");
    let calls =
        "trace=openat,write,pwrite64,writev,fsync,fdatasync,syncfs,rename,renameat,renameat2";
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-y", "-s", "4096", "-e", calls, "-o"])
        .arg(&log)
        .args(["-p", &d.pid().to_string()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(traced(d.pid()), "strace attached");
    let got = fs::read(d.path(&fx.big_file, "")).unwrap();
    assert!(got == fs::read(&fx.big_file).unwrap(), "served");
    // SAFETY: signalling the strace this test started; SIGINT makes it detach and exit.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let hash = hash_part(&fx.big);
    let (staging, entry) = (format!("/staging/{hash}."), format!("/entries/{hash}"));
    let find = |what: &dyn Fn(&str) -> bool| lines.iter().position(|l| what(l));
    let is_write = |l: &str| ["write(", "pwrite64(", "writev("].iter().any(|c| l.contains(c));
    let rename = find(&|l| l.contains("rename") && l.contains(&format!("{entry}\"")))
        .unwrap_or_else(|| panic!("no rename into {entry}:\n{text}"));
    let sync = find(&|l| l.contains("syncfs(") && l.contains(&staging))
        .unwrap_or_else(|| panic!("no syncfs of the staging directory:\n{text}"));
    let dir_sync = lines[rename..]
        .iter()
        .position(|l| l.contains("fsync(") && l.contains("/entries>"))
        .map(|i| rename + i);
    let writes: Vec<usize> =
        (0..lines.len()).filter(|&i| is_write(lines[i]) && lines[i].contains(&staging)).collect();
    assert!(writes.len() >= 2, "the entry's files and manifest were written: {writes:?}");
    assert!(writes.iter().all(|&w| w < sync), "every write before the syncfs:\n{text}");
    assert!(sync < rename, "syncfs before the rename:\n{text}");
    assert!(dir_sync.is_some(), "entries/ fsynced after the rename:\n{text}");
    let after = lines.iter().filter(|l| is_write(l) && l.contains(&format!("{entry}/"))).count();
    assert_eq!(after, 0, "nothing written into the published entry:\n{text}");
}

/// The mount options and the superblock options of the mount at `mnt`, from
/// `/proc/self/mountinfo` (fields 6 and 11).
fn mount_options(mnt: &Path) -> (Vec<String>, Vec<String>) {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = mnt.to_str().unwrap();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(mnt))
        .unwrap_or_else(|| panic!("{mnt} not in mountinfo"));
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-").unwrap();
    let split = |s: &str| s.split(',').map(str::to_owned).collect::<Vec<_>>();
    (split(fields[5]), split(fields[dash + 3]))
}

/// SEC-1: the kernel shows the mount `ro,nosuid,nodev` (with `allow_other` and
/// `default_permissions` when other users are let in), and reads never change an atime, as
/// `noatime` would promise (a read-only mount updates none, and every time reported is 1).
#[test]
fn the_mount_is_read_only_nosuid_nodev_and_keeps_atimes() {
    let Some(fx) = setup("the_mount_is_read_only_nosuid_nodev_and_keeps_atimes") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    for allow_other in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let extra: &[&str] = if allow_other { &["--allow-other"] } else { &[] };
        let d = start(fx, &nginx, tmp.path(), "", extra);
        let (options, super_options) = mount_options(&d.mnt);
        for want in ["ro", "nosuid", "nodev"] {
            assert!(options.iter().any(|o| o == want), "{want} in {options:?}");
        }
        for want in ["allow_other", "default_permissions"] {
            let has = super_options.iter().any(|o| o == want);
            assert_eq!(has, allow_other, "{want} in {super_options:?}");
        }
        let file = d.path(&fx.deep_file, "");
        let before = fs::metadata(&file).unwrap();
        fs::read(&file).unwrap();
        let after = fs::metadata(&file).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!((before.atime(), after.atime()), (1, 1), "atime never moves");
    }
}

/// SEC-4: the control socket is the daemon's owner's alone: another uid cannot connect (the
/// socket is `0600`), even when it can reach the directory holding it, so it can neither read
/// the stats nor evict nor pin.
#[test]
fn another_uid_cannot_use_the_control_socket() {
    let test = "another_uid_cannot_use_the_control_socket";
    let Some(fx) = setup_with(test, &["setpriv"]) else { return };
    use std::os::unix::fs::PermissionsExt;
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let d = start(fx, &nginx, tmp.path(), "", &[]);
    let mode = fs::metadata(&d.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{:?}", d.control);
    fs::metadata(d.path(&fx.hello, "")).unwrap();
    let as_user = |uid: &str, command: &[&str]| {
        std::process::Command::new("setpriv")
            .args([&format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups"])
            .arg(common::daemon::storefs_bin())
            .args(command)
            .arg("--control-socket")
            .arg(&d.control)
            .output()
            .unwrap()
    };
    for command in [&["stats"][..], &["evict", &fx.hello], &["pin", &fx.hello]] {
        let other = as_user("1000", command);
        let text = String::from_utf8_lossy(&other.stderr);
        assert!(!other.status.success(), "uid 1000 ran {command:?}: {text}");
        assert!(text.contains("cannot connect to the storefs daemon"), "storefs ran: {text}");
        assert!(text.contains("ermission denied"), "the error says why: {text}");
    }
    assert!(d.cache.join("entries").join(hash_part(&fx.hello)).exists(), "nothing evicted");
    assert!(as_user("0", &["stats"]).status.success(), "root, the daemon's owner, can");
}

/// SEC-2: a `0444` file cannot be executed through the mount (`EACCES`), even by root, while
/// a `0555` one runs.
#[test]
fn a_file_without_exec_bits_cannot_be_executed() {
    let Some(fx) = setup("a_file_without_exec_bits_cannot_be_executed") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    for allow_other in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let extra: &[&str] = if allow_other { &["--allow-other"] } else { &[] };
        let d = start(fx, &nginx, tmp.path(), "", extra);
        let data = d.path(&fx.deep_file, "");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o444);
        let err = std::process::Command::new(&data).output().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "allow_other {allow_other}: {err}");
        let out = std::process::Command::new(d.path(&fx.exe, "")).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), fx.exe_expected);
    }
}

/// Drops the kernel's clean page cache, so the next reads of mounted files reach the daemon.
fn drop_page_cache() {
    // SAFETY: sync(2) takes no arguments.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
}

/// PRC-9: a program running from the mount while its store path is evicted (and the page
/// cache dropped, so its next page faults reach the daemon) runs to its end and prints the
/// right output; the path is fetched again for it and for the next run.
#[test]
fn a_running_program_survives_the_eviction_of_its_path() {
    let Some(fx) = setup("a_running_program_survives_the_eviction_of_its_path") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = start(fx, &nginx, tmp.path(), "", &[]);
    let busybox = d.path(&fx.busybox, "");
    use std::os::unix::process::CommandExt;
    // busybox picks its applet from argv[0]'s name (the store path's is `<hash>-busybox`).
    let mut child = std::process::Command::new(&busybox)
        .arg0("busybox")
        .arg("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // `cat` now waits on its input: evict its path and drop the pages it has.
    let out = d.client(&["evict", &fx.busybox]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!d.cache.join("entries").join(hash_part(&fx.busybox)).exists(), "evicted");
    drop_page_cache();
    use std::io::Write;
    let written = child.stdin.take().unwrap().write_all(b"ok\n");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?} {written:?}: {}", out.status, d.log_text());
    written.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n");
    let mut again = std::process::Command::new(&busybox);
    let again = again.arg0("busybox").args(["echo", "again"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&again.stdout), "again\n");
}

/// A daemon serving the zstd cache and the 100 MB path's cache (its NARs sent at `rate` by
/// nginx), closure prefetch off; with the web root and nginx (keep them alive).
fn slow_daemon(
    fx: &Fixtures,
    dir: &Path,
    rate: &str,
    more: &[&str],
) -> (Daemon, tempfile::TempDir, Nginx, String) {
    let (hundred_cache, hundred) = common::big::hundred_mb_cache(fx);
    let web = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&hundred_cache, web.path().join("slow")).unwrap();
    std::os::unix::fs::symlink(fx.cache_dir("zstd"), web.path().join("zstd")).unwrap();
    let nginx = Nginx::start(web.path(), &format!("location /slow/nar/ {{ limit_rate {rate}; }}"));
    let subs = [nginx.url("zstd"), nginx.url("slow")];
    let mut extra = vec!["--max-size", "1G", "--prefetch-jobs", "0"];
    extra.extend_from_slice(more);
    let d = Daemon::start(dir, &daemon_args(&subs, &fx.public_key, &extra));
    (d, web, nginx, hundred)
}

/// Waits until a download is being unpacked (staging is not empty).
fn download_running(d: &Daemon) -> bool {
    let staging = d.cache.join("staging");
    eventually(Duration::from_secs(30), || !names_in(&staging).is_empty())
}

/// NET-21: while a 100 MB NAR downloads slowly, lookups of small paths that are *not* cached
/// are fetched and answered at once, not queued behind it.
#[test]
fn small_cold_paths_are_served_during_a_large_download() {
    let Some(fx) = setup("small_cold_paths_are_served_during_a_large_download") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (d, _web, _nginx, hundred) = slow_daemon(fx, tmp.path(), "10m", &[]);
    let big = d.path(&hundred, "data.bin");
    let downloader = std::thread::spawn(move || sha256_file(&big));
    assert!(download_running(&d), "the download started");
    let mut worst = Duration::ZERO;
    let small = [&fx.hello, &fx.deep, &fx.weird, &fx.busybox, &fx.single_file_ref];
    for sp in small {
        let start = Instant::now();
        fs::symlink_metadata(d.path(sp, "")).unwrap();
        worst = worst.max(start.elapsed());
    }
    assert!(!downloader.is_finished(), "the download was still running");
    eprintln!("worst cold lookup of a small path during the download: {worst:?}");
    assert!(worst < Duration::from_secs(2), "a small cold path waited {worst:?}");
    let got = downloader.join().unwrap();
    assert_eq!(got, sha256_file(&Path::new(&hundred).join("data.bin")));
}

/// PRC-18: SIGTERM while a 100 MB NAR downloads (20 s at 5 MB/s). The mount is busy (a reader
/// waits), so the daemon detaches it lazily and exits once that reader is answered: its error
/// comes at `--fetch-timeout` (3 s here), the download is not published after the stop, and
/// the process does not wait for it. The exit is clean (0); the restarted daemon starts with an
/// empty staging directory and serves what was cached.
#[test]
fn sigterm_during_a_download_exits_cleanly_and_publishes_nothing_partial() {
    let test = "sigterm_during_a_download_exits_cleanly_and_publishes_nothing_partial";
    let Some(fx) = setup(test) else { return };
    let tmp = tempfile::tempdir().unwrap();
    let (mut d, _web, nginx, hundred) =
        slow_daemon(fx, tmp.path(), "5m", &["--fetch-timeout", "3"]);
    fs::read_dir(d.path(&fx.hello, "")).unwrap().count();
    let big = d.path(&hundred, "data.bin");
    let reader = std::thread::spawn(move || fs::read(big).map(|b| b.len()));
    assert!(download_running(&d), "the download started");
    let start = Instant::now();
    assert_eq!(d.stop(), Some(0), "a clean exit");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "exit took {took:?}: {}", d.log_text());
    let read = reader.join().unwrap();
    assert!(read.is_err(), "the reader got an error, not a partial file: {read:?}");
    assert!(!d.cache.join("entries").join(hash_part(&hundred)).exists(), "nothing published");
    // nginx logs a request when it ends: the aborted download is logged once nginx sees the
    // connection closed, which may be after the daemon exited. Count from then on.
    let download_logged = || nginx.entries().iter().any(|e| e.path().starts_with("/slow/nar/"));
    assert!(eventually(Duration::from_secs(30), download_logged), "the download was logged");
    let requests = nginx.requests().len();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]));
    assert!(names_in(&d.cache.join("staging")).is_empty(), "staging emptied at start");
    fs::read_dir(d.path(&fx.hello, "")).unwrap().count();
    assert_eq!(nginx.requests().len(), requests, "the cached path needs no request");
}

/// Entries in the big directory of the PRC-10 test: many READDIRPLUS replies' worth.
const BIG_DIR_ENTRIES: usize = 3000;

/// PRC-10: a listing open across the eviction of its store path goes on to its end, each name
/// once, and a process whose working directory is inside the evicted path still lists it; the
/// path is fetched again for them.
#[test]
fn a_listing_and_a_working_directory_survive_the_eviction_of_their_path() {
    let test = "a_listing_and_a_working_directory_survive_the_eviction_of_their_path";
    let Some(fx) = setup(test) else { return };
    use storefs::nix::nar::Node;
    let web = tempfile::tempdir().unwrap();
    let key = storefs::nix::signature::SigningKey::parse(
        fs::read_to_string(fx.secret_key_path()).unwrap().trim(),
    )
    .unwrap();
    let writer = common::hostile::CacheWriter::new(&web.path().join("big-dir"), key);
    let names: Vec<String> = (0..BIG_DIR_ENTRIES).map(|i| format!("entry-{i:05}")).collect();
    let file = |i: usize| Node::File { executable: false, contents: i.to_string().into_bytes() };
    let inner = Node::Directory(
        names.iter().enumerate().map(|(i, n)| (n.as_bytes().to_vec(), file(i))).collect(),
    );
    let tree = Node::Directory(vec![(b"dir".to_vec(), inner)]);
    let basename = common::hostile::fake_basename(7, "big-dir");
    writer.publish(&basename, &tree.to_nar(), common::hostile::Tamper::None);
    let nginx = Nginx::start(web.path(), "");
    let tmp = tempfile::tempdir().unwrap();
    let args = daemon_args(&[nginx.url("big-dir")], &fx.public_key, &["--prefetch-jobs", "0"]);
    let d = Daemon::start(tmp.path(), &args);
    let dir = d.path(&basename, "dir");
    // A shell whose working directory is in the path, waiting for its cue to list it.
    let mut shell = std::process::Command::new("sh")
        .args(["-c", "read cue; ls | wc -l"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut listing = fs::read_dir(&dir).unwrap();
    let mut seen: Vec<String> =
        listing.by_ref().take(10).map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    let out = d.client(&["evict", &basename]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!d.cache.join("entries").join(hash_part(&basename)).exists(), "evicted");
    seen.extend(listing.map(|e| e.unwrap().file_name().into_string().unwrap()));
    seen.sort();
    assert_eq!(seen, names, "the listing went on, each name once");
    use std::io::Write;
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = shell.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), BIG_DIR_ENTRIES.to_string());
    let content = fs::read_to_string(dir.join("entry-02999")).unwrap();
    assert_eq!(content, "2999", "a file of the evicted path reads right");
}

/// PRC-8: a hung daemon (stopped with SIGSTOP) holds a reader; the kernel's FUSE connection
/// shows it `waiting`, and writing to the connection's `abort` (what a watchdog does, through
/// fusectl mounted in a private mount namespace) ends the wait at once (`ECONNABORTED`), and
/// later requests get `ENOTCONN`.
#[test]
fn a_hung_daemon_is_aborted_through_fusectl_and_its_reader_is_answered() {
    let test = "a_hung_daemon_is_aborted_through_fusectl_and_its_reader_is_answered";
    let Some(fx) = setup_with(test, &["unshare"]) else { return };
    use std::os::unix::fs::MetadataExt;
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = start(fx, &nginx, tmp.path(), "", &[]);
    let connection = fs::metadata(&d.mnt).unwrap().dev();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(d.pid() as i32, libc::SIGSTOP) };
    let cold = d.path(&fx.deep, "");
    let reader = std::thread::spawn(move || {
        let started = Instant::now();
        (fs::metadata(cold).map(|_| ()), started)
    });
    let dir = format!("/sys/fs/fuse/connections/{connection}");
    let script = format!(
        "mount -t fusectl none /sys/fs/fuse/connections || exit 2; \
         for i in $(seq 100); do [ \"$(cat {dir}/waiting)\" -gt 0 ] && break; sleep 0.05; done; \
         cat {dir}/waiting; echo 1 > {dir}/abort"
    );
    let out = std::process::Command::new("unshare").args(["-m", "sh", "-c", &script]).output();
    let out = out.unwrap();
    let aborted = Instant::now();
    let (read, started) = reader.join().unwrap();
    // SAFETY: as above; the daemon finds its connection aborted and exits.
    unsafe { libc::kill(d.pid() as i32, libc::SIGCONT) };
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let waiting: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(waiting >= 1, "the reader's request was waiting");
    // The request in flight is aborted (`ECONNABORTED`); every later one is `ENOTCONN`.
    let err = read.unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ECONNABORTED), "{err}");
    assert!(aborted.elapsed() < Duration::from_secs(2), "answered at once after the abort");
    assert!(started.elapsed() < Duration::from_secs(15), "the reader did not hang");
    let later = fs::metadata(d.path(&fx.hello, "")).unwrap_err();
    assert_eq!(later.raw_os_error(), Some(libc::ENOTCONN), "{later}");
}

/// A shell in a mount namespace of its own holding a bind mount of `mnt` at `bind`, as a job
/// container does; it stats `target` (under the bind mount) when told, and reports how.
fn bind_mounted_shell(mnt: &Path, bind: &Path, target: &str) -> std::process::Child {
    fs::create_dir_all(bind).unwrap();
    let script = format!(
        "mount --bind {} {} || exit 2; echo ready; read cue; stat {}/{target} >/dev/null 2>&1 \
         && echo ok || ls {}/{target} 2>&1",
        mnt.display(),
        bind.display(),
        bind.display(),
        bind.display()
    );
    std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the shell's `ready`, tells it to go on, and returns what it printed then.
fn cue(mut shell: std::process::Child) -> String {
    use std::io::{BufRead, Write};
    let mut out = std::io::BufReader::new(shell.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the bind mount was made");
    shell.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    shell.wait().unwrap();
    rest
}

/// PRC-7: the daemon dies (SIGKILL) while a job's mount namespace holds a bind mount of the
/// store: the job's reads fail at once with `ENOTCONN`, never hang; a restarted daemon takes
/// the mountpoint back, and a new bind mount (the next job) reads again.
#[test]
fn a_dead_daemon_under_a_bind_mount_gives_enotconn_and_a_restart_serves_new_binds() {
    let test = "a_dead_daemon_under_a_bind_mount_gives_enotconn_and_a_restart_serves_new_binds";
    let Some(fx) = setup_with(test, &["unshare"]) else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = start(fx, &nginx, tmp.path(), "", &[]);
    // A path the kernel does not know yet, so the job's stat needs the daemon (a known one is
    // answered from the kernel's caches even with the daemon dead).
    let target = fx.deep.trim_start_matches("/nix/store/").to_owned();
    fs::metadata(d.path(&fx.hello, "")).unwrap();
    let job = bind_mounted_shell(&d.mnt, &tmp.path().join("job-store"), &target);
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    assert!(
        eventually(Duration::from_secs(10), || fs::metadata(&d.mnt)
            .is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))),
        "the mount went dead"
    );
    let started = Instant::now();
    let said = cue(job);
    assert!(said.contains("not connected"), "the job's read: {said}");
    assert!(started.elapsed() < Duration::from_secs(2), "at once: {:?}", started.elapsed());
    let (mnt, cache, log) = (d.mnt.clone(), d.cache.clone(), d.log.clone());
    std::mem::forget(d); // its child is dead; the new daemon owns the mountpoint now
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &["--prefetch-jobs", "0"]);
    let d = Daemon::start_at(&mnt, &cache, &log, &args);
    let next_job = bind_mounted_shell(&d.mnt, &tmp.path().join("next-job-store"), &target);
    assert_eq!(cue(next_job).trim(), "ok", "a new bind mount reads");
}

/// SEC-6: a job (uid 1000) floods the daemon with lookups of every valid path of the closure
/// under a quota too small for them. Its fetches are paced by `--uid-rate` (the rest `EAGAIN`),
/// what it does fetch evicts only unpinned entries, and the working set root pinned stays
/// cached and is served without a request; the refusals are counted and logged.
#[test]
fn a_flood_of_valid_paths_never_evicts_a_pinned_working_set() {
    let test = "a_flood_of_valid_paths_never_evicts_a_pinned_working_set";
    let Some(fx) = setup_with(test, &["setpriv", "perl"]) else { return };
    use std::os::unix::fs::PermissionsExt;
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let flags = ["--allow-other", "--max-size", "5M", "--uid-rate", "2"];
    let d = start(fx, &nginx, tmp.path(), "", &flags);
    let working = [&fx.hello, &fx.deep];
    for sp in working {
        fs::read_dir(d.path(sp, "")).unwrap().count();
    }
    let out = d.client(&["pin", &fx.hello, &fx.deep]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The flood: every path of the closure, three times over, as uid 1000.
    let script = "use Errno; my ($ok, $again, $other) = (0, 0, 0); for (1..3) { for (@ARGV) { \
                  if (stat($_)) { $ok++ } elsif ($!{EAGAIN}) { $again++ } else { $other++ } } } \
                  print \"$ok $again $other\\n\";";
    // The two largest first, so the turns it gets overflow the quota.
    let mut flood: Vec<&String> = vec![&fx.big, &fx.busybox];
    flood.extend(fx.closure.iter().filter(|sp| **sp != fx.big && **sp != fx.busybox));
    let paths: Vec<PathBuf> = flood.iter().map(|sp| d.path(sp, "")).collect();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=1000", "--regid=1000", "--clear-groups", "perl", "-e", script])
        .args(&paths)
        .output()
        .unwrap();
    let counts: Vec<usize> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 3, "{}", String::from_utf8_lossy(&out.stderr));
    let (again, other) = (counts[1], counts[2]);
    assert!(again > 0, "the flood was paced: {counts:?}");
    assert_eq!(other, 0, "no other error: {counts:?}");
    let requests = nginx.requests().len();
    for sp in working {
        assert!(d.cache.join("entries").join(hash_part(sp)).exists(), "{sp} stayed cached");
        let file = if *sp == fx.deep { fx.deep_file.clone() } else { fx.exe.clone() };
        assert_eq!(fs::read(d.path(&file, "")).unwrap(), fs::read(&file).unwrap(), "{file}");
    }
    assert_eq!(nginx.requests().len(), requests, "the working set needed no request");
    assert_eq!(stat(&d, "lookup_failures_rate_limited"), again as u64);
    assert!(stat(&d, "evictions") >= 1, "the flood's fetches did evict (unpinned entries)");
    assert!(d.log_text().contains("--uid-rate"), "the refusals are logged");
}
