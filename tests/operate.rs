//! Operating a real mount: `storefs stats --json` and `/metrics` report exactly what a scripted
//! workload did, `/metrics` and docs/alerts.yml pass `promtool check`, and systemd readiness
//! (`READY=1`) arrives only once the mount answers. Needs root, /dev/fuse, nix-bin and nginx
//! (like tests/fuse.rs), and promtool (Debian's prometheus); run with `--features fuse_tests`.
//!
//! The kernel caches lookups of store paths (their TTL is long), so the workload looks each
//! valid path up once; cache hits come from a restarted daemon, whose kernel cache is empty.

#![cfg(feature = "fuse_tests")]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, is_storefs_mount, statfs_ok, storefs_bin};
use common::hostile::fake_basename;
use common::{Fixtures, Nginx, daemon_args, fuse_setup as setup, hash_part, require};
use serde_json::Value;
use storefs::metrics::{METRICS, Source};

/// `storefs stats --json --control-socket <the daemon's>`, parsed.
fn stats(d: &Daemon) -> Value {
    let out = d.client(&["stats", "--json"]);
    assert!(out.status.success(), "stats failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing or not a count in {v}"))
}

/// A free loopback port (bound and released; good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body.to_owned()
}

/// Checks `text` line by line against the Prometheus text format and returns every sample as
/// `name{labels}` → value.
fn parse_prometheus(text: &str) -> BTreeMap<String, f64> {
    let is_name = |s: &str| {
        let mut c = s.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
    };
    let mut samples = BTreeMap::new();
    let mut typed = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() || line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad: {line}"));
            assert!(is_name(name), "bad metric name in {line:?}");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "bad type: {line:?}");
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ").or(line.strip_prefix("# UNIT ")) {
            assert!(is_name(rest.split(' ').next().unwrap()), "bad: {line:?}");
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment line {line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad: {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels.strip_suffix('}').unwrap_or_else(|| panic!("{line:?}"));
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                    assert!(is_name(k) && !v.contains('\n'), "bad label in {line:?}");
                }
                name
            }
            None => series,
        };
        assert!(is_name(name), "bad sample name in {line:?}");
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains_key(*f)))
            .unwrap_or(name);
        assert!(typed.contains_key(family), "sample {name} has no # TYPE line");
        samples.insert(series.to_owned(), value);
    }
    samples
}

fn mnt_path(d: &Daemon, full: &str) -> PathBuf {
    d.mnt.join(full.trim_start_matches("/nix/store/"))
}

/// The three paths the workload fetches, and one file read in each.
fn workload_paths(fx: &Fixtures) -> [(&str, String); 3] {
    [
        (fx.big.as_str(), fx.big_file.clone()),
        (fx.deep.as_str(), fx.deep_file.clone()),
        (fx.hello.as_str(), fx.exe.clone()),
    ]
}

#[test]
fn stats_and_metrics_report_exactly_what_the_workload_did() {
    let Some(fx) = setup("stats_and_metrics_report_exactly_what_the_workload_did") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let url = nginx.url("zstd");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // Reads through the daemon (no passthrough, the default), so bytes_served counts every byte
    // the test reads; no closure prefetch, so requests are exactly those of the workload's
    // lookups.
    let extra = ["--metrics-listen", listen.as_str(), "--prefetch-jobs", "0"];
    let args = daemon_args(std::slice::from_ref(&url), &fx.public_key, &extra);
    let mut d = Daemon::start(tmp.path(), &args);

    // Each valid path looked up once (a miss each), one file of each read in full.
    let mut served = 0u64;
    for (path, file) in workload_paths(fx) {
        assert!(std::fs::metadata(mnt_path(&d, path)).unwrap().is_dir());
        served += std::fs::read(mnt_path(&d, &file)).unwrap().len() as u64;
    }
    // An absent path twice: the second answer comes from the negative cache. (ENOENT replies
    // are not cached by the kernel, so both lookups reach the daemon.)
    let absent = d.mnt.join(fake_basename(3, "absent-path"));
    for _ in 0..2 {
        assert_eq!(std::fs::metadata(&absent).unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }
    // nginx writes a request's log line after sending its answer: wait for the last one (the
    // absent path's 404) before reading the log, then count exactly.
    nginx.wait_for_requests(".narinfo", 4, Duration::from_secs(5));
    let nar_bytes: u64 = nginx
        .entries()
        .iter()
        .filter(|e| e.path().contains("/nar/") && e.status == 200)
        .map(|e| e.body_bytes)
        .sum();
    let narinfo_sent = nginx.count_requests(".narinfo") as u64;
    assert_eq!(narinfo_sent, 4, "3 paths and one absent path, once each");
    assert_eq!(nginx.count_requests("/nix-cache-info"), 1, "asked at the first fetch");

    let s = stats(&d);
    let expect = [
        ("lookups", 5),
        ("cache_hits", 0),
        ("negative_hits", 1),
        ("narinfo_requests", 4),
        ("nar_downloads", 3),
        ("bytes_downloaded", nar_bytes),
        ("bytes_served", served),
        ("cached_paths", 3),
        ("pinned_paths", 0),
        ("evictions", 0),
        ("in_flight", 0),
        ("fetch_failures", 0),
        ("prefetch_failures", 0),
    ];
    for (key, want) in expect {
        assert_eq!(n(&s, key), want, "{key} in {s:#}");
    }
    assert_eq!(s["hit_rate"].as_f64(), Some(0.0));
    assert!(n(&s, "cache_bytes") > 4 << 20, "the 4 MiB file is cached: {s}");
    assert_eq!(n(&s, "cache_limit_bytes"), 10 << 30);
    let ups = s["upstreams"].as_array().unwrap();
    assert_eq!(ups.len(), 1);
    assert_eq!(ups[0]["url"], url.trim_end_matches('/'));
    assert_eq!(ups[0]["online"], true);
    assert_eq!(n(&ups[0], "requests"), 1 + 4 + 3, "nix-cache-info + narinfo + NAR requests");
    assert_eq!(n(&ups[0], "errors"), 0, "404 is an answer, not an error");
    assert_eq!(n(&ups[0], "bytes"), nar_bytes);
    assert!(ups[0]["latency_ms_p50"].as_f64().is_some_and(|ms| ms > 0.0), "{s}");

    // /metrics is Prometheus text and says the same.
    let m = parse_prometheus(&scrape(port));
    let same = [
        ("storefs_lookups_total", "lookups"),
        ("storefs_cache_hits_total", "cache_hits"),
        ("storefs_negative_hits_total", "negative_hits"),
        ("storefs_narinfo_requests_total", "narinfo_requests"),
        ("storefs_nar_downloads_total", "nar_downloads"),
        ("storefs_bytes_downloaded_total", "bytes_downloaded"),
        ("storefs_bytes_served_total", "bytes_served"),
        ("storefs_evictions_total", "evictions"),
        ("storefs_cache_bytes", "cache_bytes"),
        ("storefs_cache_limit_bytes", "cache_limit_bytes"),
        ("storefs_cached_paths", "cached_paths"),
        ("storefs_pinned_paths", "pinned_paths"),
        ("storefs_in_flight", "in_flight"),
    ];
    let s = stats(&d);
    for (metric, key) in same {
        assert_eq!(m.get(metric).copied(), Some(n(&s, key) as f64), "{metric} vs {key}");
    }
    let label = format!("{{upstream=\"{}\"}}", url.trim_end_matches('/'));
    assert_eq!(m[&format!("storefs_upstream_requests_total{label}")], 8.0);
    assert_eq!(m[&format!("storefs_upstream_bytes_total{label}")], nar_bytes as f64);
    assert_eq!(m[&format!("storefs_upstream_online{label}")], 1.0);
    assert_eq!(m["storefs_narinfo_fetch_seconds_count"], 4.0);
    assert_eq!(m["storefs_nar_fetch_seconds_count"], 3.0);
    assert_eq!(m["storefs_nar_fetch_seconds_bucket{le=\"+Inf\"}"], 3.0);
    let version = format!("storefs_build_info{{version=\"{}\"}}", env!("CARGO_PKG_VERSION"));
    assert_eq!(m[&version], 1.0);
    let started = m["process_start_time_seconds"];
    assert_eq!(started, n(&s, "start_time_seconds") as f64);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    assert!(started <= now.as_secs_f64() && started > now.as_secs_f64() - 600.0, "{started}");

    // `stats --json` has exactly the keys METRICS declares, daemon-wide and per substituter,
    // beside the daemon's status (the fields of `DaemonStatus`).
    let declared = |per_upstream: bool| -> std::collections::BTreeSet<String> {
        METRICS
            .iter()
            .flat_map(|m| match m.source {
                Source::Daemon(_) | Source::Labelled { .. } if !per_upstream => m.json_keys(),
                Source::PerUpstream(..) if per_upstream => m.json_keys(),
                _ => vec![],
            })
            .collect()
    };
    let keys = |v: &Value| -> std::collections::BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    };
    let mut top = keys(&s);
    assert!(top.remove("upstreams"));
    let status = serde_json::to_value(storefs::control::protocol::DaemonStatus::default()).unwrap();
    for key in keys(&status) {
        assert!(top.remove(&key), "stats --json lacks the status field {key}");
    }
    assert_eq!(top, declared(false), "stats --json vs METRICS");
    let mut per = keys(&s["upstreams"][0]);
    assert!(per.remove("url"));
    assert_eq!(per, declared(true), "stats --json upstreams[] vs METRICS");

    // The human table names the same figures.
    let out = d.client(&["stats"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("lookups            5"), "{table}");
    assert!(table.contains(url.trim_end_matches('/')), "{table}");

    // A restarted daemon has an empty kernel cache: lookups of cached paths are hits now.
    assert_eq!(d.stop(), Some(0));
    assert!(!d.control.exists(), "the control socket is removed on exit");
    nginx.clear_log();
    let d =
        Daemon::start(tmp.path(), &daemon_args(std::slice::from_ref(&url), &fx.public_key, &[]));
    for (path, _) in &workload_paths(fx)[..2] {
        assert!(std::fs::metadata(mnt_path(&d, path)).unwrap().is_dir());
    }
    let s = stats(&d);
    for (key, want) in [("lookups", 2), ("cache_hits", 2), ("narinfo_requests", 0)] {
        assert_eq!(n(&s, key), want, "{key} after restart in {s:#}");
    }
    assert_eq!(s["hit_rate"].as_f64(), Some(1.0));
    assert_eq!(nginx.count_requests(".narinfo"), 0);
}

/// `promtool check metrics` (lint included) has nothing to say about a real daemon's `/metrics`
/// after a workload, and `promtool check rules` accepts the shipped docs/alerts.yml.
#[test]
fn metrics_and_example_alerts_pass_promtool() {
    let test = "metrics_and_example_alerts_pass_promtool";
    let Some(fx) = setup(test) else { return };
    if require(&["promtool"], test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // A substituter that refuses connections too, so its series are there with errors.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let extra = ["--metrics-listen", listen.as_str(), "--prefetch-jobs", "0"];
    let args = daemon_args(&[nginx.url("zstd"), dead], &fx.public_key, &extra);
    let d = Daemon::start(tmp.path(), &args);
    assert!(std::fs::metadata(mnt_path(&d, &fx.hello)).unwrap().is_dir());
    std::fs::read(mnt_path(&d, &fx.exe)).unwrap();
    // Issue 13: a cache down from the start shows its failed nix-cache-info request.
    let s = stats(&d);
    let down = &s["upstreams"][1];
    assert_eq!(
        (down["online"].as_bool(), n(down, "requests"), n(down, "errors")),
        (Some(false), 1, 1),
        "{s:#}"
    );
    let text = scrape(port);
    for sample in ["storefs_nar_fetch_seconds_count 1", "storefs_build_info{"] {
        assert!(text.contains(sample), "{sample} missing:\n{text}");
    }
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    promtool.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool: {said}\n{text}");

    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/alerts.yml");
    let out = Command::new("promtool").args(["check", "rules", rules]).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("SUCCESS"),
        "promtool: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Every metric an example rule names exists.
    let yml = std::fs::read_to_string(rules).unwrap();
    for word in yml.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("storefs_") || word.starts_with("process_") {
            assert!(METRICS.iter().any(|m| m.name == word), "alerts.yml names unknown {word}");
        }
    }
}

#[test]
fn evictions_are_counted() {
    let Some(fx) = setup("evictions_are_counted") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&fx.caches_dir(), "");
    // Smaller than any path: each new path evicts the one before (the newest is kept).
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &["--max-size", "1K"]);
    let d = Daemon::start(tmp.path(), &args);
    for (path, _) in workload_paths(fx) {
        assert!(std::fs::metadata(mnt_path(&d, path)).unwrap().is_dir());
    }
    let s = stats(&d);
    for (key, want) in [("nar_downloads", 3), ("evictions", 2), ("cached_paths", 1)] {
        assert_eq!(n(&s, key), want, "{key} in {s:#}");
    }
    assert_eq!(n(&s, "cache_limit_bytes"), 1024);
}

/// Closure prefetch (on by default): looking up the top path alone brings its whole closure in
/// the background, each narinfo and NAR requested once; a job walking the closure afterwards
/// sends no request at all. With `--prefetch-jobs 0` only the path looked up is fetched.
#[test]
fn closure_prefetch_brings_the_closure_once() {
    let Some(fx) = setup("closure_prefetch_brings_the_closure_once") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]));
    assert!(std::fs::metadata(mnt_path(&d, &fx.top)).unwrap().is_dir());
    let others = fx.closure.len() as u64 - 1;
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = stats(&d);
        if n(&s, "prefetched_paths") == others && n(&s, "in_flight") == 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "prefetch did not finish: {s:#}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(n(&s, "cached_paths"), fx.closure.len() as u64, "{s:#}");
    assert_eq!(n(&s, "lookups"), 1, "prefetch is not a lookup: {s:#}");
    for sp in &fx.closure {
        let h = common::hash_part(sp);
        assert_eq!(nginx.count_requests(&format!("/zstd/{h}.narinfo")), 1, "{sp}");
    }
    assert_eq!(nginx.count_requests("/zstd/nar/"), fx.closure.len(), "{:?}", nginx.requests());
    let before = nginx.requests().len();
    for sp in &fx.closure {
        assert!(std::fs::symlink_metadata(mnt_path(&d, sp)).is_ok(), "{sp}");
    }
    assert_eq!(nginx.requests().len(), before, "walking the prefetched closure asked upstream");
    assert_eq!(n(&stats(&d), "cache_hits"), others);
    drop(d);

    let tmp = tempfile::tempdir().unwrap();
    let off = daemon_args(&[nginx.url("zstd")], &fx.public_key, &["--prefetch-jobs", "0"]);
    let d = Daemon::start(tmp.path(), &off);
    nginx.clear_log();
    assert!(std::fs::metadata(mnt_path(&d, &fx.top)).unwrap().is_dir());
    let s = stats(&d);
    assert_eq!((n(&s, "cached_paths"), n(&s, "prefetched_paths")), (1, 0), "{s:#}");
    assert_eq!(nginx.count_requests(".narinfo"), 1, "{:?}", nginx.requests());
}

#[test]
fn a_second_daemon_on_the_same_control_socket_is_refused() {
    let Some(fx) = setup("a_second_daemon_on_the_same_control_socket_is_refused") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]);
    let d = Daemon::start(tmp.path(), &args);
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("mnt")).unwrap();
    let out = Command::new(storefs_bin())
        .arg("mount")
        .arg(other.join("mnt"))
        .arg("--cache-dir")
        .arg(other.join("cache"))
        .args(["--nix-conf", "/dev/null", "--control-socket"])
        .arg(&d.control)
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already answers"));
    assert!(!is_storefs_mount(&other.join("mnt")), "refused before mounting");
    assert!(d.control.exists(), "the first daemon's socket is left alone");
    stats(&d);
}

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let len = sock.recv(&mut buf).expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..len]).into_owned()
}

#[test]
fn ready_is_sent_only_once_the_mount_answers() {
    let Some(fx) = setup("ready_is_sent_only_once_the_mount_answers") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let notify_path = tmp.path().join("notify.sock");
    let sock = UnixDatagram::bind(&notify_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mnt, cache) = (tmp.path().join("mnt"), tmp.path().join("cache"));
    std::fs::create_dir_all(&mnt).unwrap();
    let notify = notify_path.to_string_lossy().into_owned();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &[]);
    let log = tmp.path().join("storefs.log");
    let mut d = Daemon::spawn(&mnt, &cache, &log, &args, &[("NOTIFY_SOCKET", notify.as_str())]);
    // The /dev/fuse descriptor and the state file go to the fd store first (each datagram
    // carries its descriptor; a plain recv drops it).
    for name in ["fuse", "state"] {
        let stored = recv(&sock);
        assert_eq!(stored, format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0"), "{}", d.log_text());
    }
    let first = recv(&sock);
    // At the moment READY=1 arrives, the mount and the control socket answer.
    assert_eq!(first, "READY=1", "log:\n{}", d.log_text());
    assert!(is_storefs_mount(&mnt) && statfs_ok(&mnt), "READY before the mount");
    let hello = mnt.join(fx.hello.trim_start_matches("/nix/store/"));
    assert!(std::fs::metadata(&hello).unwrap().is_dir());
    assert!(d.control.exists());
    let status = recv(&sock);
    assert!(status.starts_with("STATUS=serving: "), "{status}");
    let t0 = Instant::now();
    assert_eq!(d.stop(), Some(0));
    let mut rest = Vec::new();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    while t0.elapsed() < Duration::from_secs(10) {
        let mut buf = [0u8; 4096];
        match sock.recv(&mut buf) {
            Ok(len) => rest.push(String::from_utf8_lossy(&buf[..len]).into_owned()),
            Err(_) => break,
        }
    }
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

/// With kernel passthrough (`--passthrough`, where the kernel has it), an opened file's reads are
/// served by the kernel from the cache file: correct bytes, and none of them through the daemon.
#[test]
fn passthrough_reads_bypass_the_daemon() {
    let Some(fx) = setup("passthrough_reads_bypass_the_daemon") else { return };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        tmp.path(),
        &daemon_args(&[nginx.url("zstd")], &fx.public_key, &["--passthrough"]),
    );
    let log = d.log_text();
    if !log.contains("FUSE passthrough on") {
        // Kernels before 6.9 have no passthrough; the fallback is what every other test covers.
        assert!(log.contains("passthrough unavailable"), "log:\n{log}");
        eprintln!("passthrough not offered by this kernel ({})", log.lines().count());
        return;
    }
    let want = std::fs::read(&fx.big_file).unwrap();
    let mounted = d.path(&fx.big_file, "");
    assert_eq!(std::fs::read(&mounted).unwrap(), want);
    // Offset reads and a second open of the same inode share the backing file.
    let f = std::fs::File::open(&mounted).unwrap();
    let mut g = std::fs::File::open(&mounted).unwrap();
    let mut buf = vec![0u8; 4096];
    use std::os::unix::fs::FileExt;
    f.read_exact_at(&mut buf, 1 << 20).unwrap();
    assert_eq!(buf, want[1 << 20..(1 << 20) + 4096]);
    let mut all = Vec::new();
    g.read_to_end(&mut all).unwrap();
    assert_eq!(all, want);
    drop((f, g));
    assert_eq!(n(&stats(&d), "bytes_served"), 0, "reads went through the daemon");
}

/// By default an open costs no round trip (the kernel sends no OPEN) and the kernel keeps a
/// file's pages across opens: reading a file again, even after its path was evicted, asks the
/// daemon for nothing. Pages the kernel drops come back through the daemon, which fetches the
/// evicted path again to serve them. (With `--passthrough`, each of those opens would reach the
/// daemon, and the first one after eviction would fetch the path.)
#[test]
fn opens_cost_no_round_trip_and_kept_pages_outlive_eviction() {
    let Some(fx) = setup("opens_cost_no_round_trip_and_kept_pages_outlive_eviction") else {
        return;
    };
    let nginx = Nginx::start(&fx.caches_dir(), "");
    let tmp = tempfile::tempdir().unwrap();
    let args = daemon_args(&[nginx.url("zstd")], &fx.public_key, &["--prefetch-jobs", "0"]);
    let d = Daemon::start(tmp.path(), &args);
    let want = std::fs::read(&fx.big_file).unwrap();
    let mounted = d.path(&fx.big_file, "");
    assert_eq!(std::fs::read(&mounted).unwrap(), want);
    let served = n(&stats(&d), "bytes_served");
    assert_eq!(served, want.len() as u64, "the first read goes through the daemon");
    let nars = || nginx.count_requests("/nar/");
    assert_eq!(nars(), 1);

    for _ in 0..5 {
        assert_eq!(std::fs::read(&mounted).unwrap(), want);
    }
    assert_eq!(n(&stats(&d), "bytes_served"), served, "reads again came from the page cache");

    let out = d.client(&["evict", &fx.big]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!d.cache.join("entries").join(hash_part(&fx.big)).exists(), "not evicted");
    assert_eq!(std::fs::read(&mounted).unwrap(), want, "kept pages after eviction");
    assert_eq!(nars(), 1, "an open or read after eviction fetched the path again");
    assert_eq!(n(&stats(&d), "bytes_served"), served);

    // Without its pages, the file is read through the daemon, which fetches the path again.
    let f = std::fs::File::open(&mounted).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: an advice call on a descriptor we own.
    assert_eq!(unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) }, 0);
    let mut again = Vec::new();
    (&f).read_to_end(&mut again).unwrap();
    assert!(again == want, "wrong bytes after the path was fetched again");
    assert_eq!(nars(), 2, "the dropped pages were served from a second fetch");
    assert_eq!(n(&stats(&d), "bytes_served"), 2 * served);
}
