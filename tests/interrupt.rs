//! Real-kernel acceptance of FUSE_INTERRUPT (issue 12): a reader killed while its lookup waits on
//! a download exits at once, while another reader of the same path still gets its bytes, and a
//! `stat` interrupted by SIGINT returns promptly. Under fuser the first INTERRUPT was answered
//! ENOSYS, the kernel stopped sending them, and a killed reader lived until the download ended.

#![cfg(feature = "fuse_tests")]

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::big::hundred_mb_cache;
use common::daemon::Daemon;
use common::{Nginx, daemon_args, fuse_setup as setup};
use sha2::{Digest, Sha256};

/// How long a signalled reader may take to be reaped.
const PROMPT: Duration = Duration::from_secs(1);

/// Where `pid` sleeps in the kernel (`/proc/<pid>/wchan`), "0" when running.
fn wchan(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default()
}

/// Waits until `child` sleeps in a FUSE request or behind another lookup of the same name.
fn wait_blocked_in_lookup(child: &mut Child, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = wchan(child.id());
        if ["request_wait_answer", "fuse", "d_alloc_parallel", "lookup"]
            .iter()
            .any(|w| at.contains(w))
        {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "{what} ended before it blocked");
        assert!(Instant::now() < deadline, "{what} never blocked in a lookup (wchan {at:?})");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to `child` and returns how it ended and how long reaping it took.
fn signal_and_reap(child: &mut Child, signal: i32) -> (ExitStatus, Duration) {
    // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, signal) }, 0);
    let sent = Instant::now();
    let deadline = sent + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, sent.elapsed());
        }
        assert!(Instant::now() < deadline, "the signalled reader never ended");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Acceptance (issue 12): a waiter killed with SIGKILL exits within a second while another
/// waiter of the same path gets its bytes; a SIGINT-interrupted `stat` returns promptly.
#[test]
fn a_killed_waiter_exits_at_once_while_another_gets_its_bytes() {
    let Some(fx) = setup("a_killed_waiter_exits_at_once_while_another_gets_its_bytes") else {
        return;
    };
    let (slow_cache, big) = hundred_mb_cache(fx);
    let web = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(&slow_cache, web.path().join("slow")).unwrap();
    std::os::unix::fs::symlink(fx.cache_dir("zstd"), web.path().join("trickle")).unwrap();
    // 100 MB at 10 MB/s: about ten seconds of download. The fixture caches' narinfos trickle
    // at 20 bytes/s, so a lookup of one of their paths waits tens of seconds on its narinfo.
    let conf = "location /slow/nar/ { limit_rate 10m; }\n\
                location ~ ^/trickle/.*\\.narinfo$ { limit_rate 20; }";
    let nginx = Nginx::start(web.path(), conf);
    let tmp = tempfile::tempdir().unwrap();
    let subs = [nginx.url("slow"), nginx.url("trickle")];
    let d = Daemon::start(tmp.path(), &daemon_args(&subs, &fx.public_key, &["--max-size", "1G"]));

    let root = d.path(&big, "");
    let mut killed = Command::new("stat").arg(&root).stdout(Stdio::null()).spawn().unwrap();
    let staging = d.cache.join("staging");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    wait_blocked_in_lookup(&mut killed, "the reader to kill");
    let mut patient =
        Command::new("cat").arg(d.path(&big, "data.bin")).stdout(Stdio::piped()).spawn().unwrap();
    let mut out = patient.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        out.read_to_end(&mut bytes).unwrap();
        bytes
    });
    wait_blocked_in_lookup(&mut patient, "the patient reader");

    let (status, took) = signal_and_reap(&mut killed, libc::SIGKILL);
    eprintln!("SIGKILLed reader reaped after {took:?}");
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    assert!(took < PROMPT, "a reader killed during a download took {took:?} to die");
    assert!(patient.try_wait().unwrap().is_none(), "the download ended before the kill was seen");

    let trickled = fx.closure.iter().find(|p| **p != big).unwrap();
    let mut interrupted =
        Command::new("stat").arg(d.path(trickled, "")).stdout(Stdio::null()).spawn().unwrap();
    wait_blocked_in_lookup(&mut interrupted, "the stat to interrupt");
    let (status, took) = signal_and_reap(&mut interrupted, libc::SIGINT);
    eprintln!("SIGINTed stat returned after {took:?}");
    assert_eq!(status.signal(), Some(libc::SIGINT));
    assert!(took < PROMPT, "a stat interrupted by SIGINT took {took:?}");

    let status = patient.wait().unwrap();
    let bytes = reader.join().unwrap();
    assert!(status.success(), "the patient reader failed: {status}");
    let want = fs::read(Path::new(&big).join("data.bin")).unwrap();
    assert_eq!(bytes.len(), want.len());
    assert_eq!(sha256_hex(&bytes), sha256_hex(&want), "the patient reader got other bytes");
}
