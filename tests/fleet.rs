//! A fleet behind a caching proxy tier (docs/FLEET.md): storefs daemons, each in its own network
//! namespace as its own host, read a closure at once through the shipped nginx and squid
//! configurations (contrib/fleet/, the very files), and the origin sees each URL at most once,
//! also after every daemon's cache is wiped; a proxy killed mid-run is failed over with no failed
//! read. Needs root, /dev/fuse, nix-bin, nginx, squid and iproute2; skips loudly without them
//! (and fails under CI=true). Run with `cargo test --features fuse_tests --test fleet`.
//!
//! The benchmark behind docs/PERFORMANCE.md's fleet table is the ignored test `fleet_bench`
//! (scripts/fleet-bench.sh runs it).

#![cfg(feature = "fuse_tests")]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::daemon::Daemon;
use common::fleet::{Lan, Proxy, ProxyKind, placeholders};
use common::{Fixtures, Nginx, daemon_args, fuse_setup, require};

/// The origin's cache: one of the fixture caches, served at the server root.
const ORIGIN_CACHE: &str = "zstd";
/// How many hosts the CI tests run.
const HOSTS: usize = 4;
/// Daemon flags: a dead proxy is given up quickly (its retries stop after 2 s).
const DAEMON_FLAGS: &[&str] = &["--connect-timeout", "2"];

/// For a fleet test: the fixture, or None (after a loud skip) when something is missing.
fn setup(test: &str, proxies: &[ProxyKind]) -> Option<&'static Fixtures> {
    let mut needs = vec!["ip"];
    needs.extend(proxies.iter().map(|k| k.program()));
    if require(&needs, test) {
        return None;
    }
    fuse_setup(test)
}

/// The origin: a plain nginx serving the fixture cache at its root, on loopback and on the
/// LAN's gateway address (so hosts can reach it directly as a last resort).
struct Origin {
    nginx: Nginx,
    url: String,
}

impl Origin {
    fn start(fx: &Fixtures, lan: &Lan, extra_conf: &str) -> Origin {
        let port = lan.free_port();
        let conf = format!("{}\n{extra_conf}", lan.listen_directive(port));
        let nginx = Nginx::start(&fx.cache_dir(ORIGIN_CACHE), &conf);
        Origin { nginx, url: format!("http://{}:{port}/", lan.gateway()) }
    }

    /// How often each path was requested, and the body bytes sent in all.
    fn tally(&self) -> (BTreeMap<String, usize>, u64) {
        let mut counts = BTreeMap::new();
        let mut bytes = 0;
        for e in self.nginx.entries() {
            *counts.entry(e.path().to_owned()).or_insert(0) += 1;
            bytes += e.body_bytes;
        }
        (counts, bytes)
    }
}

/// One daemon per host of `lan`, each with `substituters`, in fresh temp dirs.
fn start_daemons(
    fx: &Fixtures,
    lan: &Lan,
    substituters: &[String],
) -> (Vec<Daemon>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let args = daemon_args(substituters, &fx.public_key, DAEMON_FLAGS);
    let daemons = (0..lan.len())
        .map(|i| {
            let dir = tmp.path().join(format!("host{i}"));
            Daemon::start_in_netns(&dir, &args, &lan.netns(i))
        })
        .collect();
    (daemons, tmp)
}

/// Every daemon reads every file of the closure at once (one thread each, released together)
/// and compares it with the local store. Returns the failed reads, if any (empty is success).
fn read_closure_everywhere(fx: &Fixtures, daemons: &[Daemon], done: &AtomicUsize) -> Vec<String> {
    let barrier = Barrier::new(daemons.len());
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for d in daemons {
            let (barrier, failures) = (&barrier, &failures);
            s.spawn(move || {
                barrier.wait();
                for sp in &fx.closure {
                    if let Err(e) = same_tree(Path::new(sp), &d.path(sp, "")) {
                        failures.lock().unwrap().push(e);
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    failures.into_inner().unwrap()
}

/// Whether `mounted` holds exactly what `original` holds (types, bytes, link targets, modes).
fn same_tree(original: &Path, mounted: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let fail = |what: String| format!("{}: {what}", mounted.display());
    let want =
        fs::symlink_metadata(original).map_err(|e| format!("{}: {e}", original.display()))?;
    let got = fs::symlink_metadata(mounted).map_err(|e| fail(e.to_string()))?;
    if want.file_type() != got.file_type() {
        return Err(fail(format!("type {:?}, want {:?}", got.file_type(), want.file_type())));
    }
    if want.is_symlink() {
        let (w, g) = (fs::read_link(original), fs::read_link(mounted));
        return match (w, g) {
            (Ok(w), Ok(g)) if w == g => Ok(()),
            (w, g) => Err(fail(format!("link {g:?}, want {w:?}"))),
        };
    }
    if want.permissions().mode() & 0o111 != got.permissions().mode() & 0o111 {
        return Err(fail("executable bit differs".into()));
    }
    if want.is_file() {
        let g = fs::read(mounted).map_err(|e| fail(e.to_string()))?;
        let w = fs::read(original).map_err(|e| format!("{}: {e}", original.display()))?;
        return if g == w { Ok(()) } else { Err(fail("contents differ".into())) };
    }
    let mut names: Vec<_> = fs::read_dir(original)
        .map_err(|e| format!("{}: {e}", original.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", original.display()))?;
    names.sort();
    let mut mounted_names: Vec<_> = fs::read_dir(mounted)
        .map_err(|e| fail(e.to_string()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(|e| fail(e.to_string()))?;
    mounted_names.sort();
    if names != mounted_names {
        return Err(fail(format!("entries {mounted_names:?}, want {names:?}")));
    }
    names.iter().try_for_each(|n| same_tree(&original.join(n), &mounted.join(n)))
}

/// Every URL the origin served more than `limit` times.
fn over(counts: &BTreeMap<String, usize>, limit: usize) -> Vec<(&String, &usize)> {
    counts.iter().filter(|(_, n)| **n > limit).collect()
}

/// Acceptance (issue 15): HOSTS daemons behind `kind` read the closure at once, then again from
/// wiped caches: the origin serves every narinfo and NAR of the closure exactly once in all.
fn fleet_fetches_each_url_once(kind: ProxyKind, test: &str) {
    let Some(fx) = setup(test, &[kind]) else { return };
    let lan = Lan::new(HOSTS);
    let origin = Origin::start(fx, &lan, "");
    let proxy = Proxy::start(kind, &lan, &origin.url);
    let done = AtomicUsize::new(0);
    let mut proxy_requests = Vec::new();
    for round in ["cold", "wiped"] {
        let start = Instant::now();
        let (daemons, _tmp) = start_daemons(fx, &lan, &[proxy.url()]);
        let failures = read_closure_everywhere(fx, &daemons, &done);
        assert!(failures.is_empty(), "{kind:?}, {round}: failed reads: {failures:#?}");
        drop(daemons);
        proxy_requests.push(proxy.requests());
        eprintln!(
            "{kind:?} {round}: {} hosts read the closure in {:?}",
            lan.len(),
            start.elapsed()
        );
    }
    let (counts, bytes) = origin.tally();
    assert_eq!(over(&counts, 1), Vec::new(), "{kind:?}: URLs the origin served twice");
    let narinfos = counts.keys().filter(|p| p.ends_with(".narinfo")).count();
    let nars = counts.keys().filter(|p| p.starts_with("/nar/")).count();
    assert_eq!(narinfos, fx.closure.len(), "{kind:?}: narinfos at the origin: {counts:?}");
    assert_eq!(nars, fx.closure.len(), "{kind:?}: NARs at the origin: {counts:?}");
    // Each host asked the proxy for every narinfo and NAR, in both rounds.
    let per_round = lan.len() * 2 * fx.closure.len();
    assert!(proxy_requests[0] >= per_round, "{kind:?}: proxy saw {proxy_requests:?}");
    assert!(proxy_requests[1] - proxy_requests[0] >= per_round, "{kind:?}: {proxy_requests:?}");
    eprintln!(
        "{kind:?}: {} hosts x 2 rounds, {} closure paths: proxy {} requests, origin {} requests \
         ({} bytes), each URL at most once",
        lan.len(),
        fx.closure.len(),
        proxy_requests[1],
        counts.values().sum::<usize>(),
        bytes
    );
}

#[test]
fn a_fleet_behind_nginx_costs_the_origin_one_fetch_per_url() {
    fleet_fetches_each_url_once(
        ProxyKind::Nginx,
        "a_fleet_behind_nginx_costs_the_origin_one_fetch_per_url",
    );
}

#[test]
fn a_fleet_behind_squid_costs_the_origin_one_fetch_per_url() {
    fleet_fetches_each_url_once(
        ProxyKind::Squid,
        "a_fleet_behind_squid_costs_the_origin_one_fetch_per_url",
    );
}

/// Acceptance (issue 15): two proxies and the origin as three substituters; the first proxy is
/// killed while the hosts are reading (the origin sends NARs at 1 MB/s, so the 4 MiB one takes
/// seconds): every read succeeds, the second proxy took over, and the origin served each narinfo
/// and NAR at most once per proxy.
#[test]
fn a_proxy_that_dies_mid_run_is_failed_over_with_no_failed_read() {
    let test = "a_proxy_that_dies_mid_run_is_failed_over_with_no_failed_read";
    let Some(fx) = setup(test, &[ProxyKind::Nginx]) else { return };
    let lan = Lan::new(HOSTS);
    let origin = Origin::start(fx, &lan, "location /nar/ { limit_rate 1m; }");
    let mut first = Proxy::start(ProxyKind::Nginx, &lan, &origin.url);
    let second = Proxy::start(ProxyKind::Nginx, &lan, &origin.url);
    let substituters = [first.url(), second.url(), origin.url.trim_end_matches('/').to_owned()];
    let (daemons, _tmp) = start_daemons(fx, &lan, &substituters);
    let done = AtomicUsize::new(0);
    let (failures, readers_done_at_kill) = std::thread::scope(|s| {
        let readers = s.spawn(|| read_closure_everywhere(fx, &daemons, &done));
        // Kill the first proxy once the origin has sent it some NARs, while the rest come.
        let deadline = Instant::now() + Duration::from_secs(30);
        while origin.nginx.count_requests("/nar/") < 3 {
            assert!(Instant::now() < deadline, "the origin never served 3 NARs");
            std::thread::sleep(Duration::from_millis(5));
        }
        let readers_done_at_kill = done.load(Ordering::SeqCst);
        first.kill();
        (readers.join().unwrap(), readers_done_at_kill)
    });
    assert_eq!(readers_done_at_kill, 0, "a host had read the whole closure before the kill");
    assert!(failures.is_empty(), "failed reads after the proxy died: {failures:#?}");
    assert!(second.requests() > 0, "the second proxy served nothing");
    let (counts, _) = origin.tally();
    let objects: BTreeMap<String, usize> =
        counts.into_iter().filter(|(p, _)| p != "/nix-cache-info").collect();
    assert_eq!(over(&objects, 2), Vec::new(), "URLs served more than once per proxy");
    eprintln!(
        "failover: {} hosts read the closure; first proxy killed after {} origin NARs; second \
         proxy {} requests; origin {} requests",
        lan.len(),
        3,
        second.requests(),
        objects.values().sum::<usize>()
    );
}

/// What a daemon sends lets a shared cache store and share it: the plain URL (no query string),
/// no Cache-Control or Pragma, no Accept-Encoding, no Authorization or Cookie when no
/// credentials are configured.
#[test]
fn requests_carry_nothing_that_defeats_a_shared_cache() {
    let test = "requests_carry_nothing_that_defeats_a_shared_cache";
    let Some(fx) = fuse_setup(test) else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let recorded = heads.clone();
    // Answers every request 404, recording its head (the daemon keeps the connection alive).
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let recorded = recorded.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    recorded.lock().unwrap().push(head);
                    let reply = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                    if writer.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path(), &daemon_args(&[url], &fx.public_key, &[]));
    let err = fs::metadata(d.path(&fx.hello, "")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "a path every cache lacks");
    let heads = heads.lock().unwrap().clone();
    let narinfo = format!("GET /{}.narinfo HTTP/1.1\r\n", common::hash_part(&fx.hello));
    assert!(heads.iter().any(|h| h.starts_with(&narinfo)), "no narinfo request: {heads:#?}");
    for head in &heads {
        let request_line = head.lines().next().unwrap_or_default();
        assert!(!request_line.contains('?'), "a query string: {request_line}");
        for line in head.lines().skip(1) {
            let name = line.split(':').next().unwrap_or_default().to_ascii_lowercase();
            assert!(
                !["cache-control", "pragma", "authorization", "cookie", "accept-encoding"]
                    .contains(&name.as_str()),
                "{request_line}: sends {line:?}"
            );
        }
        assert!(
            head.to_ascii_lowercase().contains("\r\nuser-agent: storefs/"),
            "no storefs User-Agent: {head}"
        );
    }
}

/// docs/FLEET.md names both shipped configurations, and documents every placeholder they have.
#[test]
fn fleet_docs_point_at_the_tested_configs_and_their_placeholders() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = fs::read_to_string(root.join("docs/FLEET.md")).unwrap();
    for kind in [ProxyKind::Nginx, ProxyKind::Squid] {
        let file = kind.config_file();
        let relative = file.strip_prefix(root).unwrap().display().to_string();
        assert!(doc.contains(&relative), "docs/FLEET.md does not link {relative}");
        let conf = fs::read_to_string(&file).unwrap();
        for placeholder in placeholders(&conf) {
            assert!(doc.contains(&placeholder), "docs/FLEET.md lacks {placeholder} of {relative}");
        }
    }
}

/// The benchmark of docs/PERFORMANCE.md ("Fleets"): for 1, 4 and 16 hosts, directly and behind
/// each proxy, the origin's requests and bytes while every host reads the closure at once.
/// Prints one Markdown table row per run. `scripts/fleet-bench.sh` runs it.
#[test]
#[ignore = "benchmark: scripts/fleet-bench.sh"]
fn fleet_bench() {
    let Some(fx) = setup("fleet_bench", &[ProxyKind::Nginx, ProxyKind::Squid]) else { return };
    println!();
    println!("| hosts | tier | origin requests | origin MB | proxy requests | seconds |");
    println!("|---:|---|---:|---:|---:|---:|");
    for hosts in [1, 4, 16] {
        for tier in [None, Some(ProxyKind::Nginx), Some(ProxyKind::Squid)] {
            let lan = Lan::new(hosts);
            let origin = Origin::start(fx, &lan, "");
            let proxy = tier.map(|kind| Proxy::start(kind, &lan, &origin.url));
            let substituter = match &proxy {
                Some(p) => p.url(),
                None => origin.url.trim_end_matches('/').to_owned(),
            };
            let (daemons, _tmp) = start_daemons(fx, &lan, &[substituter]);
            let start = Instant::now();
            let failures = read_closure_everywhere(fx, &daemons, &AtomicUsize::new(0));
            let secs = start.elapsed().as_secs_f64();
            assert!(failures.is_empty(), "failed reads: {failures:#?}");
            drop(daemons);
            let (counts, bytes) = origin.tally();
            let name = tier.map_or("direct".to_owned(), |k| format!("{k:?} proxy").to_lowercase());
            let proxied = proxy.as_ref().map_or("-".to_owned(), |p| p.requests().to_string());
            println!(
                "| {hosts} | {name} | {} | {:.1} | {proxied} | {secs:.2} |",
                counts.values().sum::<usize>(),
                bytes as f64 / 1e6
            );
        }
    }
}
