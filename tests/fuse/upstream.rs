//! Real-kernel acceptance tests of the upstream layer: failover from a cache that answers 500,
//! never answers, or refuses connections; skipping it for its backoff period and coming back to
//! it; offline operation; netrc and bearer-token authentication. Part of the `fuse` test binary.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::common::daemon::Daemon;
use super::common::{Fixtures, Nginx, hash_part};
use super::{daemon_args, errno_of, setup};

/// Backoff used by these tests: long enough to do a batch of lookups inside it, short enough
/// to wait for.
const BACKOFF: Duration = Duration::from_secs(4);
/// Fast failure detection for tests: 1 s connect timeout (and so a 1 s retry budget), 2 s stall.
/// Short timeouts, and no closure prefetch: these tests count the requests each lookup makes,
/// which background fetches of references would blur.
const FAST: &[&str] = &[
    "--connect-timeout",
    "1",
    "--stall-timeout",
    "2",
    "--upstream-backoff",
    "4",
    "--prefetch-jobs",
    "0",
];

/// A TCP port that accepts connections and never answers a byte (a silent server), counting
/// accepted connections. Dropping it closes the port (later connections are refused).
struct Silent {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Silent {
    fn start(port: u16) -> Silent {
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, flag) = (accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                count.fetch_add(1, Ordering::SeqCst);
                held.extend(conn.ok());
            }
        });
        Silent { addr, accepted, stop }
    }

    fn url(&self) -> String {
        format!("http://{}/silent", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// A loopback port nobody listens on (connections are refused).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn log_count(d: &Daemon, needle: &str) -> usize {
    d.log_text().lines().filter(|l| l.contains(needle)).count()
}

/// Waits (bounded) until the daemon's log has `at_least` lines containing every needle.
fn wait_for_log(d: &Daemon, needles: &[&str], at_least: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let n = d.log_text().lines().filter(|l| needles.iter().all(|n| l.contains(n))).count();
        if n >= at_least || Instant::now() >= deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// narinfo requests under `prefix` in nginx's access log.
fn narinfo_requests(nginx: &Nginx, prefix: &str) -> usize {
    nginx.requests().iter().filter(|r| r.contains(prefix) && r.contains(".narinfo")).count()
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

/// Looks up `paths` (each fetched and verified as a whole), all of which must succeed.
fn look_up_all(d: &Daemon, paths: &[String]) {
    for sp in paths {
        let meta = fs::metadata(d.path(sp, ""));
        assert!(meta.is_ok(), "{sp}: {meta:?}; log:\n{}", d.log_text());
    }
}

/// Closure paths `range` (sorted, so stable between runs).
fn paths(fx: &Fixtures, range: std::ops::Range<usize>) -> Vec<String> {
    assert!(fx.closure.len() >= range.end, "fixture closure has {} paths", fx.closure.len());
    fx.closure[range].to_vec()
}

/// Acceptance (failover, 500): a first cache answering 500 is retried, marked down, skipped with
/// no request for its backoff period while the second serves, and after the period and its
/// recovery it serves again.
#[test]
fn failover_from_a_cache_answering_500_and_back_after_its_backoff() {
    let Some(fx) = setup("failover_from_a_cache_answering_500_and_back_after_its_backoff") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let broken_flag = tmp.path().join("broken");
    let zstd = fx.cache_dir("zstd");
    // /flaky/ is the zstd cache, answering 500 to everything while the flag file exists.
    let conf = format!(
        "location /flaky/ {{ if (-f \"{flag}\") {{ return 500; }} alias \"{dir}/\"; }}",
        flag = broken_flag.display(),
        dir = zstd.display()
    );
    let nginx = Nginx::start(&fx.caches_dir(), &conf);
    let flaky = nginx.url("flaky");
    let d = Daemon::start(
        tmp.path(),
        &daemon_args(&[flaky.clone(), nginx.url("zstd")], &fx.public_key, FAST),
    );
    fs::write(&broken_flag, "").unwrap();
    nginx.clear_log();
    let batch = paths(fx, 0..12);

    // The first lookup meets the 500s: retried (about 0, 100, 300, 700 ms), then the cache is
    // marked down and the second cache serves.
    let first_start = Instant::now();
    look_up_all(&d, &batch[..1]);
    let first_end = Instant::now();
    eprintln!("first lookup, through the 500s: {:?}", first_end - first_start);
    let tries = nginx.count_requests("/flaky/");
    assert!((2..=5).contains(&tries), "500s were tried {tries} times: {:?}", nginx.requests());
    assert_eq!(nginx.count_requests(&format!("/zstd/{}.narinfo", hash_part(&batch[0]))), 1);
    // "cache failing" is the one line written when a cache goes down.
    assert_eq!(wait_for_log(&d, &["cache failing", &flaky], 1, Duration::from_secs(5)), 1);

    // Within the backoff period: eleven more cold paths, all from the second cache, and not a
    // single request to the first.
    look_up_all(&d, &batch[1..]);
    assert!(
        first_start.elapsed() < BACKOFF,
        "the lookups took {:?}, longer than the backoff period; cannot judge skipping",
        first_start.elapsed()
    );
    assert_eq!(nginx.count_requests("/flaky/"), tries, "requests to a cache marked down");
    assert_eq!(narinfo_requests(&nginx, "/zstd/"), 12, "{:?}", nginx.requests());
    assert!(log_count(&d, "cache skipped") >= 11, "log:\n{}", d.log_text());

    // The cache recovers; after the period a new cold path comes from it again.
    fs::remove_file(&broken_flag).unwrap();
    sleep_until(first_end + BACKOFF + Duration::from_millis(300));
    let fresh = &fx.closure[12];
    look_up_all(&d, std::slice::from_ref(fresh));
    let narinfo = format!("/flaky/{}.narinfo", hash_part(fresh));
    let entries = nginx.entries();
    let probe = entries.iter().find(|e| e.path() == narinfo).expect("no probe of the first cache");
    assert_eq!(probe.status, 200);
    assert!(
        entries.iter().any(|e| e.path().starts_with("/flaky/nar/") && e.status == 200),
        "the NAR did not come from the recovered cache: {:?}",
        nginx.requests()
    );
    assert_eq!(nginx.count_requests(&format!("/zstd/{}.narinfo", hash_part(fresh))), 0);
    assert!(wait_for_log(&d, &["marked up", &flaky], 1, Duration::from_secs(5)) >= 1);
}

/// Acceptance (failover, silent socket): a first cache that accepts and never answers costs one
/// stall timeout, is then skipped (no new connection) for its backoff period, and is probed
/// with exactly one connection after it.
#[test]
fn failover_from_a_silent_cache_skips_it_then_probes_once() {
    let Some(fx) = setup("failover_from_a_silent_cache_skips_it_then_probes_once") else {
        return;
    };
    let silent = Silent::start(0);
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let subs = [silent.url(), nginx.url("zstd")];
    // The first fetch asks the silent cache for nix-cache-info (caches are ordered lazily, as
    // Nix does): one stall timeout, then marked down, and the second cache serves.
    let started = Instant::now();
    let d = Daemon::start(tmp.path(), &daemon_args(&subs, &fx.public_key, FAST));
    look_up_all(&d, &paths(fx, 0..1));
    assert_eq!(wait_for_log(&d, &["cache failing", &silent.url()], 1, Duration::from_secs(10)), 1);
    let marked = Instant::now();
    let connections = silent.accepted();
    assert!(connections >= 1, "the first fetch never reached the silent cache");
    look_up_all(&d, &paths(fx, 0..10));
    // Marked down no earlier than `started`: the period has not ended while we looked.
    assert!(started.elapsed() < BACKOFF, "too slow to judge skipping: {:?}", started.elapsed());
    assert_eq!(silent.accepted(), connections, "connections to a cache marked down");
    assert_eq!(narinfo_requests(&nginx, "/zstd/"), 10);

    // After the period: one probe connection, one stall timeout, then the second cache serves.
    sleep_until(marked + BACKOFF + Duration::from_millis(300));
    let probe = Instant::now();
    look_up_all(&d, &fx.closure[10..11]);
    let probe_took = probe.elapsed();
    eprintln!("lookup with the probe of the silent cache: {probe_took:?}");
    assert_eq!(silent.accepted(), connections + 1, "the probe is one connection");
    assert!(probe_took >= Duration::from_millis(1500), "the probe did not wait: {probe_took:?}");
    assert!(probe_took < Duration::from_secs(8), "{probe_took:?}");
    assert!(
        wait_for_log(&d, &["marked down again", &silent.url()], 1, Duration::from_secs(5)) >= 1
    );
}

/// Acceptance (failover, refused): a first cache on a closed port is retried for about one
/// connect timeout, then skipped (no new try: no retry lines, no delay) for its backoff period,
/// and tried again, once, after it.
#[test]
fn failover_from_a_refusing_cache_skips_it_then_tries_again() {
    let Some(fx) = setup("failover_from_a_refusing_cache_skips_it_then_tries_again") else {
        return;
    };
    let port = closed_port();
    let refusing = format!("http://127.0.0.1:{port}/cache");
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let d = Daemon::start(
        tmp.path(),
        &daemon_args(&[refusing.clone(), nginx.url("zstd")], &fx.public_key, FAST),
    );
    look_up_all(&d, &paths(fx, 0..1));
    assert_eq!(wait_for_log(&d, &["cache failing", &refusing], 1, Duration::from_secs(10)), 1);
    let marked = Instant::now();
    let retries = log_count(&d, "retrying");
    assert!(retries >= 1, "a refused connection was not retried; log:\n{}", d.log_text());
    look_up_all(&d, &paths(fx, 0..10));
    assert!(started.elapsed() < BACKOFF, "too slow to judge skipping: {:?}", started.elapsed());
    // Refused connections leave no access log; the daemon's own account of its tries does.
    assert_eq!(log_count(&d, "retrying"), retries, "the cache was retried while marked down");
    assert!(log_count(&d, "cache skipped") >= 10, "log:\n{}", d.log_text());
    assert_eq!(narinfo_requests(&nginx, "/zstd/"), 10);

    // After the period: the next lookup probes the port once (now accepting, so we can count).
    let listener = Silent::start(port);
    sleep_until(marked + BACKOFF + Duration::from_millis(300));
    look_up_all(&d, &fx.closure[10..11]);
    assert_eq!(listener.accepted(), 1, "the cache was not tried again after its backoff");
}

/// Acceptance (offline): with the only cache gone, cached paths read correctly and fast with zero
/// connection attempts; a cold path fails with EIO within the connect timeout, then at once
/// while the cache is marked down; when the cache returns, lookups succeed after the period.
#[test]
fn offline_serves_cached_paths_fails_fast_and_recovers() {
    let Some(fx) = setup("offline_serves_cached_paths_fails_fast_and_recovers") else { return };
    let mut nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, FAST));
    let warm = [&fx.deep_file, &fx.big_file, &fx.exe, &fx.busybox];
    let want: Vec<Vec<u8>> = warm.iter().map(|p| fs::read(p).unwrap()).collect();
    for (p, bytes) in warm.iter().zip(&want) {
        assert_eq!(&fs::read(d.path(p, "")).unwrap_or_default(), bytes, "{p}");
    }

    // Offline. A listener on the cache's port counts connection attempts while cached paths
    // are read.
    nginx.stop();
    let watcher = Silent::start(nginx.port);
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        for (p, bytes) in warm.iter().zip(&want) {
            let t = Instant::now();
            assert_eq!(&fs::read(d.path(p, "")).unwrap(), bytes, "{p}");
            worst = worst.max(t.elapsed());
        }
    }
    assert_eq!(watcher.accepted(), 0, "cached reads contacted the cache");
    eprintln!("offline: slowest cached read {worst:?}");
    assert!(worst < Duration::from_millis(500), "a cached read took {worst:?} offline");
    drop(watcher);

    // Cold paths: EIO within the connect timeout (1 s; wide bound), then at once.
    let cold = &fx.weird;
    let cold_start = Instant::now();
    assert_eq!(errno_of(fs::metadata(d.path(cold, ""))), libc::EIO);
    let first_eio = cold_start.elapsed();
    let marked_by = Instant::now();
    eprintln!("offline: first EIO after {first_eio:?}");
    assert!(first_eio < Duration::from_secs(3), "first EIO after {first_eio:?}");
    for seed in 0..20 {
        let absent = super::common::hostile::fake_basename(700 + seed, "offline");
        let t = Instant::now();
        assert_eq!(errno_of(fs::metadata(d.mnt.join(&absent))), libc::EIO, "{absent}");
        assert!(t.elapsed() < Duration::from_millis(300), "EIO while down took {:?}", t.elapsed());
    }
    let log = d.log_text();
    assert!(log.contains("marked down") && log.contains(&nginx.url("zstd")), "log:\n{log}");

    // The network returns. Within the period the cache is still skipped (no request)...
    nginx.restart();
    nginx.clear_log();
    // The cache was marked down no earlier than `cold_start`.
    if cold_start.elapsed() + Duration::from_millis(500) < BACKOFF {
        assert_eq!(errno_of(fs::metadata(d.path(cold, ""))), libc::EIO);
        assert_eq!(nginx.requests().len(), 0, "a request inside the backoff period");
    } else {
        eprintln!("offline test: the machine was slow; skipped the in-period check");
    }
    // ...and after it the lookup succeeds without any intervention.
    sleep_until(marked_by + BACKOFF + Duration::from_millis(300));
    let meta = fs::metadata(d.path(cold, ""));
    assert!(meta.is_ok(), "{meta:?}; log:\n{}", d.log_text());
    assert_eq!(nginx.count_requests(&format!("{}.narinfo", hash_part(cold))), 1);
    assert!(d.log_text().contains("marked up"));
}

/// Acceptance (auth): a cache behind nginx basic auth works with a netrc file; without it,
/// EIO and a log line naming the 401 and the cache. A bearer-token cache works with its token.
#[test]
fn basic_auth_with_netrc_and_bearer_tokens() {
    let Some(fx) = setup("basic_auth_with_netrc_and_bearer_tokens") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let htpasswd = tmp.path().join("htpasswd");
    fs::write(&htpasswd, "storefs:{PLAIN}n3tRc-pass\n").unwrap();
    let zstd = fx.cache_dir("zstd");
    let conf = format!(
        "location /auth/ {{ auth_basic \"storefs\"; auth_basic_user_file \"{pw}\"; alias \"{dir}/\"; }}\n\
         location /bearer/ {{ if ($http_authorization != \"Bearer t0ken-xyz\") {{ return 401; }} alias \"{dir}/\"; }}",
        pw = htpasswd.display(),
        dir = zstd.display()
    );
    let nginx = Nginx::start(&fx.caches_dir(), &conf);
    let (auth, bearer) = (nginx.url("auth"), nginx.url("bearer"));
    let netrc = tmp.path().join("netrc");
    fs::write(&netrc, "machine 127.0.0.1\n  login storefs\n  password n3tRc-pass\n").unwrap();
    let token = tmp.path().join("token");
    fs::write(&token, "t0ken-xyz\n").unwrap();
    let target = &fx.deep_file;
    let want = fs::read(target).unwrap();

    // No credentials: EIO, and a log line with the path, the cache and the 401.
    let run = |name: &str, subs: &[String], extra: &[&str]| {
        let dir = tmp.path().join(format!("daemon-{name}"));
        fs::create_dir(&dir).unwrap();
        let mut args: Vec<&str> = FAST.to_vec();
        args.extend(extra);
        Daemon::start(&dir, &daemon_args(subs, &fx.public_key, &args))
    };
    let d = run("none", &[auth.clone(), bearer.clone()], &[]);
    assert_eq!(errno_of(fs::metadata(d.path(target, ""))), libc::EIO);
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("401") && l.contains(&auth) && l.contains(hash_part(target)))
        .unwrap_or_else(|| panic!("no log line names the 401, {auth} and the path:\n{log}"));
    assert!(line.contains("narinfo failed"), "{line}");
    assert!(log.lines().any(|l| l.contains("401") && l.contains(&bearer)), "log:\n{log}");
    // A 401 is an answer, not an outage: the cache is not marked down, so asking again asks it.
    let before = nginx.count_requests("/auth/");
    assert_eq!(errno_of(fs::metadata(d.path(target, ""))), libc::EIO);
    nginx.wait_for_requests("/auth/", before + 1, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(nginx.count_requests("/auth/"), before + 1, "a 401 was retried or skipped");
    drop(d);

    // netrc: basic auth to /auth/.
    let netrc_arg = netrc.to_str().unwrap();
    let d = run("netrc", std::slice::from_ref(&auth), &["--netrc-file", netrc_arg]);
    assert_eq!(fs::read(d.path(target, "")).unwrap(), want);
    let ok =
        nginx.entries().into_iter().filter(|e| e.path().starts_with("/auth/") && e.status == 200);
    assert!(ok.count() >= 2, "narinfo and NAR through basic auth: {:?}", nginx.requests());
    drop(d);

    // Bearer token to /bearer/ (the netrc entry for the same host is not what it accepts).
    let token_arg = format!("{bearer}={}", token.display());
    let d = run(
        "bearer",
        std::slice::from_ref(&bearer),
        &["--netrc-file", netrc_arg, "--bearer-token-file", &token_arg],
    );
    assert_eq!(fs::read(d.path(target, "")).unwrap(), want);
    assert!(d.log_text().contains("auth=\"bearer\"") || d.log_text().contains("auth=bearer"));
}
