//! `storefs check` against a running daemon, the real kernel and caches served by real nginx: a
//! healthy host passes (exit 0), and a wrong key, a dead cache, a hung mount and a dead mount each
//! fail (exit 2) with a `FAIL` line naming the problem.

#![cfg(feature = "fuse_tests")]

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::daemon::{Daemon, storefs_bin};
use common::{Nginx, daemon_args, fuse_setup as setup};
use storefs::nix::signature::SigningKey;

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// The line for `subject` (`mount /x`, `keys http://…`), asserting its status (`ok`, `warn`,
/// `FAIL`); returns what follows the subject.
fn line(out: &Output, status: &str, subject: &str) -> String {
    let all = text(out);
    let prefix = format!("{subject}: ");
    let found = all.lines().find_map(|l| {
        let (label, rest) = l.split_at_checked(6)?;
        rest.strip_prefix(&prefix).map(|detail| (label.trim_end().to_owned(), detail.to_owned()))
    });
    let Some((label, detail)) = found else { panic!("no line for {subject:?}:\n{all}") };
    assert_eq!(label, status, "{subject}:\n{all}");
    detail
}

/// The daemons here keep 1 MiB free rather than the default 5 % of the filesystem: a
/// healthy host is one whose free space meets its setting, and the test machine's disk is
/// shared with others (its free space is not this test's to judge). The free-space failure
/// itself is tested in `cache::check`'s unit tests.
const ROOMY: &[&str] = &["--min-free", "1M"];

/// A public key named like `key` whose bytes are another key's.
fn same_name_other_key(key: &str) -> String {
    let name = key.split(':').next().unwrap();
    SigningKey::generate(name, [9; 32]).to_public_string()
}

/// Acceptance: on a healthy host `check` exits 0, one `ok` line per check. On a fresh cache the
/// keys cannot be checked yet (a warning, still exit 0); once a path was fetched it is the probe,
/// and `--probe-path` picks one.
#[test]
fn a_healthy_host_passes() {
    let Some(fx) = setup("a_healthy_host_passes") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let url = nginx.url("zstd");
    let d =
        Daemon::start(tmp.path(), &daemon_args(std::slice::from_ref(&url), &fx.public_key, ROOMY));
    let keys = format!("keys {url}");

    let out = d.client(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    line(&out, "ok", &format!("daemon {}", d.control.display()));
    assert!(line(&out, "ok", &format!("mount {}", d.mnt.display())).starts_with("answers"));
    assert!(line(&out, "ok", &format!("substituter {url}")).contains("nix-cache-info answers"));
    assert!(line(&out, "warn", &keys).contains("no known path to probe"));
    assert!(line(&out, "ok", &format!("cache directory {}", d.cache.display())).contains("0700"));
    line(&out, "ok", &format!("cache free space {}", d.cache.display()));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 6, "{}", text(&out));

    let fetched = d.client(&["prefetch", &fx.hello]);
    assert!(fetched.status.success(), "{}", text(&fetched));
    let out = d.client(&["check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // hello, or a path it references, which the daemon prefetched with it.
    let signed = line(&out, "ok", &keys);
    let (probe, how) = signed.split_once(' ').unwrap();
    let kept = d.cache.join("narinfo").join(common::hash_part(probe));
    assert!(kept.exists(), "the probe is not a path the daemon verified: {signed}");
    assert!(how.starts_with("(verified from this cache before) is signed by"), "{signed}");

    let out = d.client(&["check", "--json", "--probe-path", &fx.top]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 6, "{report}");
    assert!(checks.iter().all(|c| c["status"] == "ok"), "{report}");
    assert!(checks[3]["detail"].as_str().unwrap().contains(&format!("{} (given)", fx.top)));
}

/// Acceptance: a trusted key that is not the one the cache signs with fails the keys line,
/// naming the key the cache signs with and the trusted ones, whether the name differs or only
/// the key bytes do.
#[test]
fn a_wrong_key_fails_naming_the_keys() {
    let Some(fx) = setup("a_wrong_key_fails_naming_the_keys") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let url = nginx.url("zstd");
    let signer = fx.public_key.split(':').next().unwrap();
    let other_name = SigningKey::generate("someone-else-1", [9; 32]).to_public_string();
    for (case, key) in
        [("other_name", other_name), ("other_bytes", same_name_other_key(&fx.public_key))]
    {
        let tmp = tempfile::tempdir().unwrap();
        let d = Daemon::start(tmp.path(), &daemon_args(std::slice::from_ref(&url), &key, ROOMY));
        let out = d.client(&["check", "--probe-path", &fx.hello]);
        assert_eq!(out.status.code(), Some(2), "{case}: {}", text(&out));
        line(&out, "ok", &format!("substituter {url}"));
        let why = line(&out, "FAIL", &format!("keys {url}"));
        let trusted = key.split(':').next().unwrap();
        let want = format!("keys do not match: the cache signs with {signer}");
        assert!(why.starts_with(&want), "{case}: {why}");
        assert!(why.ends_with(&format!(", trusted are {trusted}")), "{case}: {why}");
    }
}

/// Acceptance: a cache nobody answers for, and a URL that is no binary cache, each fail their
/// substituter line; the working cache beside them passes.
#[test]
fn a_dead_cache_fails_naming_it() {
    let Some(fx) = setup("a_dead_cache_fails_naming_it") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}/zstd", listener.local_addr().unwrap().port())
    };
    let (alive, not_a_cache) = (nginx.url("zstd"), nginx.url("no-such-cache"));
    let tmp = tempfile::tempdir().unwrap();
    let subs = [alive.clone(), dead.clone(), not_a_cache.clone()];
    let d = Daemon::start(tmp.path(), &daemon_args(&subs, &fx.public_key, ROOMY));
    let out = d.client(&["check", "--probe-path", &fx.hello]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    line(&out, "ok", &format!("substituter {alive}"));
    line(&out, "ok", &format!("keys {alive}"));
    let refused = line(&out, "FAIL", &format!("substituter {dead}"));
    assert!(refused.contains("Connection refused"), "{refused}");
    line(&out, "warn", &format!("keys {dead}"));
    let missing = line(&out, "FAIL", &format!("substituter {not_a_cache}"));
    assert!(missing.contains("no nix-cache-info"), "{missing}");
}

/// Acceptance: a hung daemon (stopped) and its hung mount are reported within `--timeout`, and
/// once it runs again `check` passes; a dead mount (the daemon killed) fails, said as such.
#[test]
fn a_hung_or_dead_mount_fails() {
    let Some(fx) = setup("a_hung_or_dead_mount_fails") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let mut d =
        Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, ROOMY));
    let mnt = d.mnt.to_str().unwrap().to_owned();
    let args = ["check", "--timeout", "1", "--mountpoint", &mnt];

    stop_all_threads(d.pid());
    let out = client_or_resume(&d, &args);
    resume(d.pid());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let daemon = line(&out, "FAIL", &format!("daemon {}", d.control.display()));
    assert!(daemon.contains("no answer within 1 s"), "{daemon}");
    assert!(line(&out, "FAIL", &format!("mount {mnt}")).contains("the mount hangs"));
    let out = d.client(&args);
    assert_eq!(out.status.code(), Some(0), "running again:\n{}", text(&out));

    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(d.pid() as i32, libc::SIGKILL) };
    assert!(d.wait_exit(Duration::from_secs(10)).is_some(), "the daemon did not die");
    let out = d.client(&args);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    line(&out, "FAIL", &format!("daemon {}", d.control.display()));
    assert!(line(&out, "FAIL", &format!("mount {mnt}")).contains("the mount is dead"));
}

/// SIGSTOPs `pid` and waits until every one of its threads is stopped, so no FUSE request sent
/// after this returns is read by the daemon (it would then be answered only after SIGCONT).
fn stop_all_threads(pid: u32) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().all(|task| {
            let stat = std::fs::read_to_string(task.unwrap().path().join("stat")).unwrap();
            // The state follows the parenthesised command name.
            stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
        })
    };
    while !stopped() {
        assert!(Instant::now() < deadline, "the daemon's threads did not all stop");
        std::thread::yield_now();
    }
}

fn resume(pid: u32) {
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

/// Runs the client like `Daemon::client`; should it not end within 30 s (a bug: it must give up
/// on a hung daemon by itself), the daemon is resumed so the test fails instead of hanging.
fn client_or_resume(d: &Daemon, args: &[&str]) -> Output {
    let mut child = Command::new(storefs_bin())
        .args(args)
        .arg("--control-socket")
        .arg(&d.control)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            resume(d.pid());
            let out = child.wait_with_output().unwrap();
            panic!("check did not give up on a hung daemon:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}
