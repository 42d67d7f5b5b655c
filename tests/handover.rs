//! Real-kernel acceptance of the handover (issue 11): the mount outlives the daemon. Four jobs,
//! each in its own mount namespace with a bind mount of the store, read a closure again and
//! again from a cold cache while the daemon is SIGKILLed and SIGTERM-restarted under a
//! supervisor speaking systemd's fd-store protocol, or replaced by `storefs upgrade`: no read
//! fails, no byte is wrong, no reader is stuck, the mount is the same mount throughout.

#![cfg(feature = "fuse_tests")]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, storefs_bin};
use common::readers::Readers;
use common::supervisor::{Supervisor, mount_id, unique_mount_id};
use common::{Nginx, daemon_args, fuse_setup as setup};
use serde_json::Value;

/// What the readers run on.
const READER_NEEDS: &[&str] = &["python3", "unshare"];
/// Readers, as in the issue.
const READERS: usize = 4;
/// Reads the readers must do between two handovers, so each one hits reading in progress.
const READS_BETWEEN: u64 = 40;
/// At least this long between two handovers (the crash loop then lasts about a minute).
const PACE: Duration = Duration::from_secs(3);
/// How long the readers may take to finish their round after the last handover.
const FINISH: Duration = Duration::from_secs(120);

/// Drops the kernel's dentries and inodes (not page cache): the next walk sends LOOKUPs and
/// the dropped inodes are FORGOTten, so handovers meet both.
fn drop_dentries() {
    std::fs::write("/proc/sys/vm/drop_caches", "2").unwrap();
}

/// Asserts the readers' figures: every read right; returns the longest stall and total reads.
fn check_readers(figures: &[Value]) -> (f64, u64) {
    let mut longest = 0.0f64;
    let mut reads = 0;
    for (i, f) in figures.iter().enumerate() {
        assert_eq!(f["failure_count"], 0, "reader {i} failed reads: {}", f["failures"]);
        assert!(f["rounds"].as_u64().unwrap() >= 1, "reader {i} never finished a round: {f}");
        longest = longest.max(f["max_stall"].as_f64().unwrap());
        reads += f["reads"].as_u64().unwrap();
        eprintln!(
            "reader {i}: {} reads in {} rounds, longest stall {:.3} s ({})",
            f["reads"], f["rounds"], f["max_stall"], f["max_stall_path"]
        );
    }
    (longest, reads)
}

/// Lets the readers read on past the last handover, stops them, prints the warnings in the
/// daemon's `log` (taken once they stopped) and checks their figures: the log, the longest
/// stall and the reads.
fn finish_readers(mut readers: Readers, log: impl FnOnce() -> String) -> (String, f64, u64) {
    readers.wait_progress(READS_BETWEEN);
    let figures = readers.finish(FINISH);
    let log = log();
    print_warnings(&log);
    let (longest, reads) = check_readers(&figures);
    (log, longest, reads)
}

/// The daemon's warnings and errors, for a failing test's output.
fn print_warnings(log: &str) {
    for line in log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")) {
        eprintln!("daemon: {line}");
    }
}

/// statfs(`mnt`) in a thread, waited for at most 10 s: the errno (0 for success), or None if
/// it hung.
fn statfs_errno_within(mnt: &Path) -> Option<i32> {
    let mnt = mnt.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(mnt.as_os_str().as_bytes()).unwrap();
        // SAFETY: zeroed plain-old-data out-struct, NUL-terminated path.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        let errno =
            if rc == 0 { 0 } else { std::io::Error::last_os_error().raw_os_error().unwrap() };
        let _ = tx.send(errno);
    });
    rx.recv_timeout(Duration::from_secs(10)).ok()
}

#[test]
fn crash_loop_under_readers_loses_no_read() {
    let Some(fx) = setup("crash_loop_under_readers_loses_no_read") else { return };
    if common::require(READER_NEEDS, "crash_loop_under_readers_loses_no_read") {
        return;
    }
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]);
    let mut sup = Supervisor::start(dir.path(), &mnt, &args);
    assert_eq!(sup.stored(), ["fuse", "state"], "both descriptors stored");
    let id = mount_id(&mnt).expect("mounted");
    let unique = unique_mount_id(&mnt).expect("statx mount id");
    let pids_before = sup.pid();
    let mut readers = Readers::start(dir.path(), &mnt, &fx.closure, READERS);
    let started = Instant::now();
    // 10 SIGKILLs and 5 SIGTERM restarts, interleaved: K K T K K T ...
    let (mut kills, mut restarts) = (0, 0);
    for n in 0..15 {
        let last = Instant::now();
        while last.elapsed() < PACE {
            readers.wait_progress(READS_BETWEEN);
        }
        if n % 3 == 2 {
            sup.restart();
            restarts += 1;
        } else {
            sup.crash_and_restart();
            kills += 1;
        }
        assert_eq!(mount_id(&mnt), Some(id), "the mount was replaced at handover {n}");
        assert_eq!(unique_mount_id(&mnt), Some(unique), "not the same mount at handover {n}");
        assert_eq!(sup.stored(), ["fuse", "state"], "the store after handover {n}");
        if n % 4 == 1 {
            drop_dentries();
        }
    }
    let (log, longest, reads) = finish_readers(readers, || sup.log_text());
    eprintln!(
        "crash loop: {kills} SIGKILLs, {restarts} SIGTERM restarts, {} starts, {reads} reads in \
         {:.1} s, 0 failures, longest stall {longest:.3} s, mount id {id} throughout",
        sup.starts,
        started.elapsed().as_secs_f64()
    );
    assert_ne!(sup.pid(), pids_before);
    assert!(log.contains("took the live mount over"), "no resume in the log:\n{log}");
    assert!(!log.contains("cannot resume"), "a resume failed:\n{log}");

    // `systemctl stop`: the old daemon exits 0 and the store closes; the mount then errors
    // (ENOTCONN), never hangs, and the next start without stored descriptors mounts cleanly.
    assert_eq!(sup.stop(), Some(0));
    let errno = statfs_errno_within(&mnt).expect("statfs hung on a stopped mount");
    assert_eq!(errno, libc::ENOTCONN, "a stopped mount with its store closed");
    drop(sup);
    let log = dir.path().join("again.log");
    let d = Daemon::start_at(&mnt, &dir.path().join("cache"), &log, &args);
    let big = std::fs::read(d.path(&fx.big, "random.bin")).unwrap();
    assert_eq!(big, std::fs::read(&fx.big_file).unwrap());
    assert_ne!(unique_mount_id(&mnt), Some(unique), "a fresh mount after a stop");
}

/// Partial entries through the handover: an indexed cache (4 KiB frames, so files keep
/// arriving in many batches) mounted with `--trusted-index-key`, read from cold by two jobs while
/// the daemon is SIGKILLed and restarted: the successor reloads what was recorded present,
/// fetches the rest by range, and no read fails or is wrong.
#[test]
fn partial_entries_through_crashes_and_restarts_lose_no_read() {
    let test = "partial_entries_through_crashes_and_restarts_lose_no_read";
    let Some(fx) = setup(test) else { return };
    if common::require(READER_NEEDS, test) {
        return;
    }
    let (cache, _) = common::indexed_copy(fx, "4K");
    let nginx = Nginx::start(cache.path(), "");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let index_key = ["--trusted-index-key", &fx.public_key, "--index-min-nar-size", "0"];
    let args = daemon_args(&[nginx.url("xz")], &fx.public_key, &index_key);
    let mut sup = Supervisor::start(dir.path(), &mnt, &args);
    let unique = unique_mount_id(&mnt).expect("statx mount id");
    let mut readers = Readers::start(dir.path(), &mnt, &fx.closure, 2);
    // 4 SIGKILLs and 2 SIGTERM restarts, the first while the first round still fetches.
    for n in 0..6 {
        readers.wait_progress(READS_BETWEEN);
        if n % 3 == 2 {
            sup.restart();
        } else {
            sup.crash_and_restart();
        }
        assert_eq!(unique_mount_id(&mnt), Some(unique), "not the same mount at handover {n}");
        if n % 2 == 1 {
            drop_dentries_and_pages();
        }
    }
    let (log, longest, reads) = finish_readers(readers, || sup.log_text());
    eprintln!("partial entries: {reads} reads through 6 handovers, longest stall {longest:.3} s");
    assert!(log.contains("published from its file index"), "no partial entry:\n{log}");
    assert!(log.contains("took the live mount over"), "no resume in the log:\n{log}");
    let ranged = nginx.entries().iter().filter(|e| e.range.is_some() && e.status == 206).count();
    assert!(ranged > 0, "no file came by range");
}

#[test]
fn upgrade_hands_the_mount_to_a_new_program_under_readers() {
    let Some(fx) = setup("upgrade_hands_the_mount_to_a_new_program_under_readers") else {
        return;
    };
    if common::require(READER_NEEDS, "upgrade_hands_the_mount_to_a_new_program_under_readers") {
        return;
    }
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let dir = tempfile::tempdir().unwrap();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]);
    // Not supervised: no fd store, as in a container or by hand.
    let d = Daemon::start(dir.path(), &args);
    let id = mount_id(&d.mnt).expect("mounted");
    let unique = unique_mount_id(&d.mnt).expect("statx mount id");
    let pid = d.pid();
    let mut readers = Readers::start(dir.path(), &d.mnt, &fx.closure, READERS);
    let upgrade = |extra: &[&str]| {
        Command::new(storefs_bin())
            .arg("upgrade")
            .args(extra)
            .arg("--control-socket")
            .arg(&d.control)
            .output()
            .unwrap()
    };
    // A copy of the binary stands for the new version.
    let new = dir.path().join("storefs-new");
    std::fs::copy(storefs_bin(), &new).unwrap();
    for round in 0..3 {
        readers.wait_progress(READS_BETWEEN);
        let binary = if round == 1 { vec!["--binary", new.to_str().unwrap()] } else { vec![] };
        let out = upgrade(&binary);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "upgrade {round}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(said.contains(&format!("pid {pid}")), "{said}");
        eprintln!("{}", said.trim());
        assert_eq!(mount_id(&d.mnt), Some(id), "the mount was replaced at upgrade {round}");
        assert_eq!(unique_mount_id(&d.mnt), Some(unique), "not the same mount at {round}");
    }
    // A program that cannot be run: refused up front, and one the kernel refuses to exec:
    // either way the old daemon serves on.
    let out = upgrade(&["--binary", "/nonexistent/storefs"]);
    assert_eq!(out.status.code(), Some(2));
    let not_a_program = dir.path().join("not-a-program");
    std::fs::write(&not_a_program, [0u8; 64]).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&not_a_program, std::fs::Permissions::from_mode(0o755)).unwrap();
    readers.wait_progress(READS_BETWEEN);
    let out = upgrade(&["--binary", not_a_program.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("serves on"), "{err}");
    let (_, longest, reads) = finish_readers(readers, || d.log_text());
    eprintln!(
        "upgrade: 3 upgrades and 2 refused, {reads} reads, 0 failures, longest stall {longest:.3} s"
    );
    assert_eq!(d.pid(), pid, "the same process throughout");
}

#[test]
fn passthrough_handles_open_across_a_restart_or_crash_keep_reading_and_share_their_backing() {
    use std::io::{Read, Seek, SeekFrom};
    let test =
        "passthrough_handles_open_across_a_restart_or_crash_keep_reading_and_share_their_backing";
    let Some(fx) = setup(test) else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &["--passthrough"]);
    let mut sup = Supervisor::start(dir.path(), &mnt, &args);
    let path = mnt.join(fx.big.trim_start_matches("/nix/store/")).join("random.bin");
    let want = std::fs::read(&fx.big_file).unwrap();
    let half = want.len() / 2;
    let read_from = |f: &mut std::fs::File, at: usize| {
        f.seek(SeekFrom::Start(at as u64)).unwrap();
        let mut got = Vec::new();
        f.read_to_end(&mut got).unwrap();
        got
    };
    let mut held = std::fs::File::open(&path).unwrap();
    let mut first = vec![0; half];
    held.read_exact(&mut first).unwrap();
    assert_eq!(first, want[..half]);
    assert!(sup.log_text().contains("FUSE passthrough on"), "{}", sup.log_text());

    sup.restart();
    assert_eq!(read_from(&mut held, half), want[half..], "the held handle reads on");
    // The kernel refuses a second backing file for an inode with open passthrough handles
    // (EBUSY): a new open must share the id the old daemon left open.
    assert_eq!(std::fs::read(&path).unwrap(), want, "a new open of the held inode");
    drop(held);
    assert_eq!(std::fs::read(&path).unwrap(), want, "after the last release: a fresh id");

    // A crash cannot hand anything over, but the id each inode's handles share was logged in
    // the state file when registered: the successor shares it too.
    let mut held = std::fs::File::open(&path).unwrap();
    held.read_exact(&mut first).unwrap();
    sup.crash_and_restart();
    assert_eq!(read_from(&mut held, half), want[half..], "the held handle reads on");
    assert_eq!(std::fs::read(&path).unwrap(), want, "a new open of the inode held at the crash");
    drop(held);
    assert_eq!(std::fs::read(&path).unwrap(), want);
    let log = sup.log_text();
    assert!(!log.contains("passthrough refused"), "{log}");
    print_warnings(&log);
}

/// A dockerd of this test's own (data root, socket, no network), stopped on drop.
struct Dockerd {
    child: std::process::Child,
    sock: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl Dockerd {
    fn start(root: &Path) -> Dockerd {
        std::fs::create_dir_all(root).unwrap();
        let sock = root.join("docker.sock");
        let log = std::fs::File::create(root.join("dockerd.log")).unwrap();
        let child = Command::new(common::find_tool("dockerd").unwrap())
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Dockerd { child, sock, root: root.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !d.docker(&["version"]).status.success() {
            assert!(Instant::now() < deadline, "dockerd did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.sock.display()))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.docker(&["rm", "-f", "job"]);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let netns = self.root.join("exec/netns/default");
        if netns.exists() {
            let _ = Command::new("umount").arg(netns).stderr(std::process::Stdio::null()).status();
        }
    }
}

/// The issue's container case: storefs on the host under the fd-store supervisor, a Docker job
/// container (Debian's docker.io, its own dockerd, an image imported from a busybox rootfs)
/// with the store bind-mounted as OPERATIONS.md says (`/nix/store:ro,rslave`), hashing the
/// closure with busybox's sha256sum through a SIGKILL, a SIGTERM restart and `storefs upgrade`.
/// About 10 s; alone: `cargo test --features fuse_tests --test handover -- docker`.
#[test]
fn docker_job_reads_through_a_crash_a_restart_and_an_upgrade() {
    let test = "docker_job_reads_through_a_crash_a_restart_and_an_upgrade";
    let Some(fx) = setup(test) else { return };
    if common::require(&["dockerd", "docker"], test) {
        return;
    }
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    // Docker wants the bind source's mount shared or slave; this host's / is private.
    let shared = base.join("shared");
    std::fs::create_dir_all(shared.join("mnt")).unwrap();
    common::run(Command::new("mount").arg("--bind").arg(&shared).arg(&shared));
    common::run(Command::new("mount").arg("--make-shared").arg(&shared));
    let mnt = shared.join("mnt");
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &["--allow-other"]);
    let mut sup = Supervisor::start(base, &mnt, &args);
    let unique = unique_mount_id(&mnt).unwrap();

    // The image: busybox alone, its applets as links.
    let rootfs = base.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(&fx.busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sha256sum", "readlink", "cut", "cat", "echo", "test", "["] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let docker = Dockerd::start(&base.join("docker"));
    let tar = Command::new("tar").arg("-C").arg(&rootfs).args(["-c", "."]).output().unwrap();
    let mut import = Command::new("docker")
        .env("DOCKER_HOST", format!("unix://{}", docker.sock.display()))
        .args(["import", "-", "storefs-job:test"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    import.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
    assert!(import.wait().unwrap().success(), "docker import");

    // The job: every file and symlink of the closure, again and again, until told to stop.
    let out = base.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("expected.txt"), common::readers::expected_lines(&fx.closure)).unwrap();
    let script = r#"
        n=0; fails=0; tab=$(printf '\t')
        while [ ! -e /out/stop ]; do
            while IFS="$tab" read -r kind want rel; do
                if [ "$kind" = F ]; then got=$(sha256sum "/nix/store/$rel" | cut -d' ' -f1)
                else got=$(readlink "/nix/store/$rel"); fi
                if [ "$got" != "$want" ]; then fails=$((fails+1)); echo "$rel: $got" >>/out/failures; fi
                n=$((n+1))
            done </out/expected.txt
            echo "$n $fails" >/out/progress
        done
        echo "$n $fails" >/out/done"#;
    let store_bind = format!("{}:/nix/store:ro,rslave", mnt.display());
    let out_bind = format!("{}:/out", out.display());
    let run = docker.docker(&[
        "run",
        "-d",
        "--name",
        "job",
        "--network",
        "none",
        "-v",
        &store_bind,
        "-v",
        &out_bind,
        "storefs-job:test",
        "sh",
        "-c",
        script,
    ]);
    assert!(run.status.success(), "docker run: {}", String::from_utf8_lossy(&run.stderr));
    let rounds_done = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        let read = || -> usize {
            let p = std::fs::read_to_string(out.join("progress")).unwrap_or_default();
            p.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        let start = read();
        while read() < start + n {
            assert!(Instant::now() < deadline, "the job made no progress: stuck?");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let per_round = common::readers::expected_lines(&fx.closure).lines().count();
    rounds_done(per_round);
    sup.crash_and_restart();
    drop_dentries_and_pages();
    rounds_done(per_round);
    sup.restart();
    drop_dentries_and_pages();
    rounds_done(per_round);
    let upgrade = Command::new(storefs_bin())
        .args(["upgrade", "--control-socket"])
        .arg(sup.control())
        .output()
        .unwrap();
    assert!(upgrade.status.success(), "{}", String::from_utf8_lossy(&upgrade.stderr));
    drop_dentries_and_pages();
    rounds_done(per_round);
    std::fs::write(out.join("stop"), "").unwrap();
    let wait = docker.docker(&["wait", "job"]);
    assert!(wait.status.success());
    let done = std::fs::read_to_string(out.join("done")).unwrap();
    let failures = std::fs::read_to_string(out.join("failures")).unwrap_or_default();
    let (reads, failed) = done.trim().split_once(' ').unwrap_or(("?", "?"));
    eprintln!(
        "docker job: {reads} reads, {failed} failed, through a crash, a restart and an upgrade"
    );
    assert!(failures.is_empty(), "failed reads in the job:\n{failures}");
    assert!(done.trim().ends_with(" 0"), "{done}");
    assert_eq!(unique_mount_id(&mnt), Some(unique), "the same mount throughout");
    drop(docker);
    drop(sup);
    let _ = Command::new("umount").arg("-l").arg(&shared).status();
}

/// Drops the kernel's page cache, dentries and inodes: the job's next round asks the daemon.
fn drop_dentries_and_pages() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
}
