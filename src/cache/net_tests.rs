//! The cache over real HTTP faults from the scripted loopback server and a listener that drops
//! SYNs: what a reader gets, what is published, and that the next cache is tried. Each test
//! names the reliability cases (docs/RELIABILITY.md) it provokes.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::tests::{Fixture, key, publish, sp, tree};
use super::*;
use crate::upstream::Upstream;
use crate::upstream::http::{HttpOptions, HttpTimeouts, HttpUpstream, build_client};
use crate::upstream::retry::RetryPolicy;
use crate::upstream::testserver::{Reply, TestServer, gzip_stored};

const MS: Duration = Duration::from_millis(1);

/// An HTTP upstream at `url` with a 300 ms connect timeout, a retry budget of as much, and a
/// minute of backoff once it is marked down.
fn http(url: &str) -> Arc<HttpUpstream> {
    http_with_backoff(url, 60_000 * MS)
}

/// [`http`] with another backoff.
fn http_with_backoff(url: &str, backoff: Duration) -> Arc<HttpUpstream> {
    let client = build_client(HttpTimeouts { connect: 300 * MS, stall: 5000 * MS }).unwrap();
    let retry = RetryPolicy::with_budget(300 * MS);
    let options = HttpOptions { retry, backoff, ..Default::default() };
    Arc::new(HttpUpstream::new(url, client, options).unwrap())
}

/// A cache in `config`'s directory over `up` alone.
fn cache_of(config: &CacheConfig, up: Arc<HttpUpstream>) -> Arc<NarCache> {
    let keys = TrustedKeys::new(vec![key().public()]).unwrap();
    let set = UpstreamSet::in_order(vec![up as Arc<dyn Upstream>]);
    NarCache::open(config.clone(), set, keys).unwrap()
}

/// A cache over `first`, then the fixture's mock upstreams.
fn cache_over(fx: &Fixture, first: Arc<HttpUpstream>) -> Arc<NarCache> {
    let mut all: Vec<Arc<dyn Upstream>> = vec![first];
    all.extend(fx.ups.iter().map(|u| u.clone() as Arc<dyn Upstream>));
    let keys = TrustedKeys::new(vec![key().public()]).unwrap();
    NarCache::open(fx.config.clone(), UpstreamSet::in_order(all), keys).unwrap()
}

/// A loopback listener whose accept queue is full: it never accepts, its backlog is 0 and
/// connections fill it until one times out, so the kernel drops every later SYN.
fn accept_queue_full() -> (TcpListener, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: a listening socket this function owns; listen(2) again only sets the backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    while let Ok(conn) = TcpStream::connect_timeout(&addr, 200 * MS) {
        fillers.push(conn);
        assert!(fillers.len() < 64, "the accept queue never filled");
    }
    (listener, fillers)
}

/// NET-1: a cache whose SYNs are dropped costs one connect timeout, names it, is marked down,
/// and the next cache serves the path; later lookups skip the dead one without a connect.
#[tokio::test]
async fn a_connect_timeout_fails_over_to_the_next_cache_within_the_bound() {
    let (listener, _fillers) = accept_queue_full();
    let url = format!("http://{}/cache", listener.local_addr().unwrap());
    let fx = Fixture::new(1);
    let path = sp('a', "served");
    publish(&fx.ups[0], &key(), &path, &tree("a", 10));
    // Absent from the next cache too: a lookup that costs no download (nor its syncfs), so
    // its time is the dead cache's alone. Not `ENOENT` but an error: one cache could not say.
    let absent = |seed| sp(seed, "absent");
    let cache = cache_over(&fx, http(&url));
    let start = Instant::now();
    let first = cache.get(&absent('b')).await;
    let took = start.elapsed();
    assert!(matches!(first, Err(CacheError::Unavailable { .. })), "{first:?}");
    // The connect timeout (300 ms) is the try's; the retry budget (300 ms) allows no second.
    assert!(took >= 250 * MS && took < 2000 * MS, "one connect timeout: {took:?}");
    let entry = cache.get(&path).await.expect("the next cache serves it");
    assert_eq!(entry.store_path, path);
    let start = Instant::now();
    let again = cache.get(&absent('c')).await;
    assert!(matches!(again, Err(CacheError::Unavailable { .. })), "{again:?}");
    assert!(start.elapsed() < 200 * MS, "skipped without a connect: {:?}", start.elapsed());
    cache.close();
    let dead = http(&url);
    let err = dead.narinfo(&path.hash_part()).await.unwrap_err();
    // "tcp connect error: …" or, when the connect timeout fires first, "(Connect): …".
    let text = err.to_string().to_lowercase();
    assert!(text.contains("connect"), "the error names the connect: {err}");
    assert!(!dead.is_up(), "marked down");
}

/// NET-8: a NAR whose `Content-Length` is shorter than the body sent. The bytes past it are
/// never taken as NAR bytes: the short NAR fails its checks with a clear error, nothing is
/// published, and the next cache's copy is served.
#[tokio::test]
async fn a_content_length_shorter_than_the_body_publishes_nothing() {
    let fx = Fixture::new(1);
    let path = sp('c', "longer");
    let nar = publish(&fx.ups[0], &key(), &path, &tree("c", 5000));
    let narinfo = fx.ups[0].narinfo(&path.hash_part()).await.unwrap().unwrap().to_string();
    let server = TestServer::start(move |seen, _| {
        if seen.path.ends_with(".narinfo") {
            Reply::ok(narinfo.as_bytes())
        } else if seen.path.ends_with(".nar") {
            Reply::LongerThanAnnounced { announced: nar.len() - 100, body: nar.clone() }
        } else {
            Reply::status(404)
        }
    });
    let alone = Fixture::new(0);
    let cache = cache_of(&alone.config, http(&server.url()));
    let err = cache.get(&path).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CacheError::Unavailable { .. }), "{text}");
    assert!(text.contains(&server.url()) && text.contains("NAR"), "a clear error: {text}");
    assert!(cache.entries().is_empty(), "nothing published");
    let entries = alone.config.dir.join("entries");
    assert_eq!(std::fs::read_dir(entries).unwrap().count(), 0, "nothing on disk");
    cache.close();
    let both = cache_over(&fx, http(&server.url()));
    let entry = both.get(&path).await.expect("the next cache's copy");
    // Node 3 is `data`: 5000 bytes of 7, nothing after them.
    let data = entry.open_file(3).unwrap().read_at(0, 10_000).unwrap();
    assert_eq!(data, vec![7u8; 5000]);
}

/// The signed narinfo text and NAR of `path` (a small tree), as the fixture's first mock holds
/// them (the mock keeps serving the good copy).
async fn signed(fx: &Fixture, path: &StorePath) -> (String, Vec<u8>) {
    let nar = publish(&fx.ups[0], &key(), path, &tree("n", 3000));
    let text = fx.ups[0].narinfo(&path.hash_part()).await.unwrap().unwrap().to_string();
    (text, nar)
}

/// A server answering every narinfo with `narinfo` and the `k`-th NAR request with `nar(k)`;
/// anything else (`nix-cache-info`) is 404.
fn serving(narinfo: Vec<u8>, nar: impl Fn(usize) -> Reply + Send + Sync + 'static) -> TestServer {
    let nars = Arc::new(crate::sync::AtomicUsize::new(0));
    TestServer::start(move |seen, _| {
        if seen.path.ends_with(".narinfo") {
            Reply::ok(&narinfo)
        } else if seen.path.contains("/nar/") {
            nar(nars.fetch_add(1, crate::sync::Ordering::SeqCst))
        } else {
            Reply::status(404)
        }
    })
}

/// What a reader gets from `server` alone (an error, never `NotFound`, nothing published,
/// not remembered as absent), and that with the fixture's good cache after it the path is
/// served, byte for byte. Returns the error text.
async fn fails_alone_then_the_next_cache_serves(server: &TestServer, path: &StorePath) -> String {
    fails_over(server, path, http, |_| {}).await
}

/// [`fails_alone_then_the_next_cache_serves`] with the upstream made by `up` and the cache's
/// configuration changed by `tweak`.
async fn fails_over(
    server: &TestServer,
    path: &StorePath,
    up: impl Fn(&str) -> Arc<HttpUpstream>,
    tweak: impl Fn(&mut CacheConfig),
) -> String {
    let mut alone = Fixture::new(0);
    tweak(&mut alone.config);
    let cache = cache_of(&alone.config, up(&server.url()));
    let err = cache.get(path).await.unwrap_err();
    assert!(matches!(err, CacheError::Unavailable { .. }), "{err}");
    assert!(cache.entries().is_empty(), "nothing published");
    let again = cache.get(path).await;
    assert!(matches!(again, Err(CacheError::Unavailable { .. })), "not absent: {again:?}");
    cache.close();
    let mut good = Fixture::new(1);
    tweak(&mut good.config);
    signed(&good, path).await;
    let both = cache_over(&good, up(&server.url()));
    let entry = both.get(path).await.expect("the next cache's copy");
    let data = entry.open_file(3).unwrap().read_at(0, 10_000).unwrap();
    assert_eq!(data, vec![7u8; 3000], "the good copy, byte for byte");
    err.to_string()
}

/// NI-1 and NET-15: a narinfo missing a required field, with `NarSize: 0`, or an HTML page
/// served with 200: an error naming the cache (`EIO`, not `ENOENT`), no NAR asked, and the
/// next cache serves the path.
#[tokio::test]
async fn a_malformed_narinfo_or_an_html_page_fails_over_to_the_next_cache() {
    let fx = Fixture::new(1);
    let path = sp('m', "malformed");
    let (good, _) = signed(&fx, &path).await;
    let without_hash: String =
        good.lines().filter(|l| !l.starts_with("NarHash:")).map(|l| format!("{l}\n")).collect();
    let size_zero: String =
        good.lines()
            .map(|l| {
                if l.starts_with("NarSize:") { "NarSize: 0\n".to_owned() } else { format!("{l}\n") }
            })
            .collect();
    let html = "<!DOCTYPE html>\n<html><body>Welcome to our CDN</body></html>\n".to_owned();
    for (case, text) in [("no NarHash", without_hash), ("NarSize 0", size_zero), ("HTML", html)] {
        let server = serving(text.into_bytes(), |_| Reply::status(500));
        let err = fails_alone_then_the_next_cache_serves(&server, &path).await;
        assert!(err.contains(&server.url()), "{case}: the error names the cache: {err}");
        let nars = server.seen().iter().filter(|s| s.path.contains("/nar/")).count();
        assert_eq!(nars, 0, "{case}: no NAR asked for");
    }
}

/// NI-7: a narinfo body larger than the 1 MiB cap is refused without reading it all, and the
/// next cache serves the path.
#[tokio::test]
async fn a_huge_narinfo_is_refused_and_the_next_cache_serves() {
    let path = sp('h', "huge");
    let mut huge = b"StorePath: /nix/store/x\n".to_vec();
    huge.resize(3 << 20, b'A');
    let server = serving(huge, |_| Reply::status(500));
    let err = fails_alone_then_the_next_cache_serves(&server, &path).await;
    assert!(err.contains(&server.url()), "{err}");
}

/// NI-10, NI-12, NI-13 and SG-1, over the NAR or the narinfo's unsigned and missing fields:
/// a wrong `Compression` (`xz` over a plain NAR) fails and the next cache serves; a lying
/// `FileHash`/`FileSize` changes nothing (NarHash is the authority); no `Sig`, with or without
/// a `CA` line, is untrusted and no NAR is asked for.
#[tokio::test]
async fn unsigned_fields_never_stand_in_for_the_signature_or_the_nar_hash() {
    let fx = Fixture::new(1);
    let path = sp('v', "unsigned");
    let (good, nar) = signed(&fx, &path).await;
    let edit = |f: &dyn Fn(&str) -> Option<String>| -> Vec<u8> {
        good.lines().filter_map(f).map(|l| format!("{l}\n")).collect::<String>().into_bytes()
    };
    // Wrong compression: fails over.
    let xz = edit(&|l| {
        Some(if l.starts_with("Compression:") { "Compression: xz".into() } else { l.into() })
    });
    let body = nar.clone();
    let server = serving(xz, move |_| Reply::ok(&body));
    let err = fails_alone_then_the_next_cache_serves(&server, &path).await;
    assert!(err.contains(&server.url()), "{err}");
    // Lying FileHash and FileSize: served all the same, from this cache.
    let lying = edit(&|l| {
        Some(match l.starts_with("Compression:") {
            true => format!("{l}\nFileHash: sha256:{}\nFileSize: 1", "0".repeat(52)),
            false => l.to_owned(),
        })
    });
    let body = nar.clone();
    let server = serving(lying, move |_| Reply::ok(&body));
    let alone = Fixture::new(0);
    let cache = cache_of(&alone.config, http(&server.url()));
    let entry = cache.get(&path).await.expect("FileHash and FileSize are hints only");
    assert_eq!(entry.open_file(3).unwrap().read_at(0, 10_000).unwrap(), vec![7u8; 3000]);
    cache.close();
    // No signature, with and without a CA line.
    let unsigned = edit(&|l| (!l.starts_with("Sig:")).then(|| l.to_owned()));
    let mut with_ca = unsigned.clone();
    with_ca.extend_from_slice(format!("CA: fixed:r:sha256:{}\n", "1".repeat(52)).as_bytes());
    for (case, text) in [("no Sig", unsigned), ("CA, no Sig", with_ca)] {
        let body = nar.clone();
        let server = serving(text, move |_| Reply::ok(&body));
        let err = fails_alone_then_the_next_cache_serves(&server, &path).await;
        assert!(err.contains("signature") || err.contains("trusted"), "{case}: {err}");
        let nars = server.seen().iter().filter(|s| s.path.contains("/nar/")).count();
        assert_eq!(nars, 0, "{case}: no NAR downloaded");
    }
}

/// NET-12 and NET-14: a NAR answering 404 after its narinfo's 200, and a NAR a proxy sent
/// gzip-encoded (`Content-Encoding: gzip`, which storefs never asked for): errors, nothing
/// published, and the next cache serves.
#[tokio::test]
async fn a_missing_or_re_encoded_nar_fails_over_to_the_next_cache() {
    let fx = Fixture::new(1);
    let path = sp('n', "missing");
    let (good, nar) = signed(&fx, &path).await;
    let server = serving(good.clone().into_bytes(), |_| Reply::status(404));
    let err = fails_alone_then_the_next_cache_serves(&server, &path).await;
    assert!(err.contains("404"), "{err}");
    let gz = gzip_stored(&nar);
    let server = serving(good.into_bytes(), move |_| Reply::Status {
        code: 200,
        headers: vec![("Content-Encoding".into(), "gzip".into())],
        body: gz.clone(),
    });
    let err = fails_alone_then_the_next_cache_serves(&server, &path).await;
    assert!(err.contains(&server.url()), "{err}");
}

/// NET-18: a shared download that fails fails every waiter of it (one narinfo and one NAR
/// request for all), is not remembered, and the next access downloads it again and serves it.
#[tokio::test]
async fn a_failed_shared_download_fails_every_waiter_and_the_next_access_retries() {
    let fx = Fixture::new(1);
    let path = sp('s', "shared");
    let (good, nar) = signed(&fx, &path).await;
    // The first NAR body is cut short (not retried once bytes were used); later ones are whole.
    let server = serving(good.into_bytes(), move |k| match k {
        0 => Reply::CloseMidBody { announced: nar.len(), sent: nar[..1000].to_vec() },
        _ => Reply::ok(&nar),
    });
    let alone = Fixture::new(0);
    let cache = cache_of(&alone.config, http_with_backoff(&server.url(), 200 * MS));
    let waiters = futures::future::join_all((0..5).map(|_| cache.get(&path))).await;
    assert!(
        waiters.iter().all(|w| matches!(w, Err(CacheError::Unavailable { .. }))),
        "{waiters:?}"
    );
    let nars = |s: &TestServer| s.seen().iter().filter(|r| r.path.contains("/nar/")).count();
    assert_eq!(nars(&server), 1, "one download for the five waiters");
    // The cut-short body marked the cache down for its backoff (200 ms); then it is asked
    // again, and serves.
    let deadline = Instant::now() + 5000 * MS;
    let entry = loop {
        match cache.get(&path).await {
            Ok(entry) => break entry,
            Err(err) => assert!(Instant::now() < deadline, "never served again: {err}"),
        }
        tokio::time::sleep(50 * MS).await; // polling the end of the backoff, not a sync
    };
    assert_eq!(entry.open_file(3).unwrap().read_at(0, 10_000).unwrap(), vec![7u8; 3000]);
    assert_eq!(nars(&server), 2);
}

/// How a server answers its `k`-th NAR request.
type NarReply = Box<dyn Fn(usize) -> Reply + Send + Sync>;

/// NET-4, NET-5, NET-6 and NET-7: a NAR body trickled below 1 KiB/s, one that stalls after
/// bytes were used, one reset (RST) mid-body, and a chunked one closed without its final chunk:
/// each ends within its bound with an error naming the cache, nothing is published, and the
/// next cache serves the path.
#[tokio::test]
async fn nar_bodies_that_trickle_stall_reset_or_stop_short_fail_over_to_the_next_cache() {
    let fx = Fixture::new(1);
    let path = sp('b', "bodies");
    let (good, nar) = signed(&fx, &path).await;
    let part = nar[..1000].to_vec();
    let (n, p) = (nar.len(), part.clone());
    let cases: Vec<(&str, NarReply)> = vec![
        (
            "trickle",
            Box::new({
                let nar = nar.clone();
                move |_| Reply::Trickle { body: nar.clone(), every: 50 * MS }
            }),
        ),
        ("stall", Box::new(move |_| Reply::StallMidBody { announced: n, sent: p.clone() })),
        (
            "reset",
            Box::new({
                let part = part.clone();
                move |_| Reply::ResetMidBody { announced: n, sent: part.clone() }
            }),
        ),
        ("chunked", Box::new(move |_| Reply::ChunkedWithoutEnd { sent: part.clone() })),
    ];
    // The stall timeout (500 ms) ends a stall; the low-speed floor (1 KiB/s over 1 s) a trickle.
    let up = |url: &str| {
        let client = build_client(HttpTimeouts { connect: 300 * MS, stall: 500 * MS }).unwrap();
        let retry = RetryPolicy::with_budget(300 * MS);
        let options = HttpOptions { retry, backoff: 60_000 * MS, ..Default::default() };
        Arc::new(HttpUpstream::new(url, client, options).unwrap())
    };
    let floor = |c: &mut CacheConfig| {
        c.low_speed = crate::upstream::low_speed::LowSpeedLimit {
            min_bytes_per_sec: 1024,
            window: 1000 * MS,
        };
    };
    for (case, reply) in cases {
        let server = serving(good.clone().into_bytes(), reply);
        let start = Instant::now();
        let err = fails_over(&server, &path, up, floor).await;
        assert!(err.contains(&server.url()), "{case}: {err}");
        assert!(start.elapsed() < 10_000 * MS, "{case}: {:?}", start.elapsed());
    }
}

/// NET-16: a cache whose host name does not resolve fails at once with an error naming it,
/// and the next cache serves the path.
#[tokio::test]
async fn a_name_that_does_not_resolve_fails_over_to_the_next_cache() {
    let fx = Fixture::new(1);
    let path = sp('d', "dns");
    signed(&fx, &path).await;
    // `.invalid` never resolves (RFC 2606).
    let dead = http("http://storefs-test.invalid/cache");
    let cache = cache_over(&fx, dead.clone());
    let start = Instant::now();
    let entry = cache.get(&path).await.expect("the next cache serves it");
    assert_eq!(entry.open_file(3).unwrap().read_at(0, 10).unwrap(), vec![7u8; 10]);
    assert!(start.elapsed() < 5000 * MS, "{:?}", start.elapsed());
    assert!(!dead.is_up(), "marked down");
    cache.close();
    let err = http("http://storefs-test.invalid/cache").narinfo("x").await.unwrap_err();
    assert!(err.to_string().contains("storefs-test.invalid"), "names the host: {err}");
}

/// NI-3 and NI-4: a cache answering with a validly signed narinfo of another path (another
/// hash part), and one whose `nix-cache-info` names another store directory: neither is
/// served from, no NAR is asked of them, and the next cache serves the path.
#[tokio::test]
async fn a_narinfo_for_another_path_or_another_store_dir_is_never_served() {
    let fx = Fixture::new(1);
    let (wanted, other) = (sp('w', "wanted"), sp('x', "other"));
    let (other_info, _) = signed(&fx, &other).await;
    signed(&fx, &wanted).await;
    let liar = serving(other_info.into_bytes(), |_| Reply::status(500));
    let gnu = TestServer::start(|seen, _| match seen.path.as_str() {
        p if p.ends_with("nix-cache-info") => Reply::ok(b"StoreDir: /gnu/store\n"),
        _ => Reply::status(404),
    });
    for server in [&liar, &gnu] {
        let cache = cache_over(&fx, http(&server.url()));
        let entry = cache.get(&wanted).await.expect("the next cache serves it");
        assert_eq!(entry.store_path, wanted);
        let nars = server.seen().iter().filter(|s| s.path.contains("/nar/")).count();
        assert_eq!(nars, 0, "{}: no NAR asked", server.url());
        cache.close();
        std::fs::remove_dir_all(fx.config.dir.join("entries").join(wanted.hash_part())).unwrap();
    }
    let narinfos = gnu.seen().iter().filter(|s| s.path.ends_with(".narinfo")).count();
    assert_eq!(narinfos, 0, "a cache of another store directory is never asked");
}

/// NAR-11: a NAR announced with more compressed bytes than the cap (NarSize + NarSize/16 +
/// 1 MiB) is refused on its `Content-Length`, before its body is read (the server sends none:
/// a read would wait for the 5 s stall timeout), and the next cache serves.
#[tokio::test]
async fn a_nar_announced_past_the_compressed_cap_is_refused_up_front() {
    let fx = Fixture::new(1);
    let path = sp('k', "capped");
    let (good, nar) = signed(&fx, &path).await;
    let cap = nar.len() + nar.len() / 16 + (1 << 20);
    let server =
        serving(good.into_bytes(), move |_| Reply::StallAfterHeaders { announced: cap + 1 });
    let start = Instant::now();
    let err = fails_alone_then_the_next_cache_serves(&server, &path).await;
    assert!(start.elapsed() < 4000 * MS, "refused up front: {:?}", start.elapsed());
    assert!(err.contains(&server.url()), "{err}");
}

/// An `openssl s_server` on loopback with a fresh self-signed certificate (no one trusts it);
/// killed when dropped. None without `openssl`.
struct SelfSignedServer {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl SelfSignedServer {
    fn start() -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-subj", "/CN=127.0.0.1", "-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        assert!(made.success(), "openssl req");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept", &format!("127.0.0.1:{port}")])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let server = Self { child, port, _dir: dir };
        let deadline = Instant::now() + 5000 * MS;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "openssl s_server never listened");
            std::thread::sleep(20 * MS); // polling for the listener
        }
        Some(server)
    }
}

impl Drop for SelfSignedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// NET-17: a cache whose TLS certificate no trusted root signed (self-signed) fails the
/// handshake with an error naming the certificate, is marked down, and the next cache serves;
/// no byte from it is used.
#[tokio::test]
async fn a_self_signed_certificate_fails_over_to_the_next_cache() {
    let Some(tls) = SelfSignedServer::start() else {
        let ci = matches!(std::env::var("CI").as_deref(), Ok("true" | "1"));
        assert!(!ci, "openssl is missing (CI=true, so a skip is a failure)");
        eprintln!("SKIPPING a_self_signed_certificate_fails_over_to_the_next_cache: no openssl");
        return;
    };
    let url = format!("https://127.0.0.1:{}/cache", tls.port);
    let err = http(&url).narinfo("x").await.unwrap_err();
    let text = format!("{err} {:?}", std::error::Error::source(&err));
    assert!(text.to_lowercase().contains("certificate"), "names the certificate: {text}");
    let fx = Fixture::new(1);
    let path = sp('g', "tls");
    signed(&fx, &path).await;
    let dead = http(&url);
    let cache = cache_over(&fx, dead.clone());
    let entry = cache.get(&path).await.expect("the next cache serves it");
    assert_eq!(entry.open_file(3).unwrap().read_at(0, 10).unwrap(), vec![7u8; 10]);
    assert!(!dead.is_up(), "marked down");
}

/// SG-10: two trusted caches serve different valid versions (different NarHash) of one path.
/// The one with the lower `Priority` in its `nix-cache-info` wins, whatever the configured
/// order, and the other is never asked for a NAR (a later fetch requires the same NarHash:
/// `another_version_of_a_path_served_before_is_refused`).
#[tokio::test]
async fn of_two_valid_versions_the_cache_of_better_priority_wins() {
    let path = sp('p', "versions");
    let version = |marker: &str| {
        let fx = Fixture::new(1);
        let nar = publish(&fx.ups[0], &key(), &path, &tree(marker, 100));
        (fx, nar)
    };
    let (one, nar_one) = version("one");
    let (two, nar_two) = version("two");
    assert_ne!(nar_one, nar_two);
    let server = |fx: Fixture, nar: Vec<u8>, priority: u32| {
        let path = path.clone();
        let info = futures::executor::block_on(fx.ups[0].narinfo(&path.hash_part()));
        let narinfo = info.unwrap().unwrap().to_string();
        TestServer::start(move |seen, _| match seen.path.as_str() {
            p if p.ends_with("nix-cache-info") => {
                Reply::ok(format!("StoreDir: /nix/store\nPriority: {priority}\n").as_bytes())
            }
            p if p.ends_with(".narinfo") => Reply::ok(narinfo.as_bytes()),
            p if p.contains("/nar/") => Reply::ok(&nar),
            _ => Reply::status(404),
        })
    };
    let (worse, better) = (server(one, nar_one, 40), server(two, nar_two, 10));
    let fx = Fixture::new(0);
    let keys = TrustedKeys::new(vec![key().public()]).unwrap();
    // Configured worse first: the priorities decide.
    let set = UpstreamSet::in_order(vec![
        http(&worse.url()) as Arc<dyn Upstream>,
        http(&better.url()) as Arc<dyn Upstream>,
    ]);
    let cache = NarCache::open(fx.config.clone(), set, keys).unwrap();
    let entry = cache.get(&path).await.unwrap();
    // Node 2 is `bin/tool`, holding the marker.
    assert_eq!(entry.open_file(2).unwrap().read_at(0, 100).unwrap(), b"two");
    let nars = worse.seen().iter().filter(|s| s.path.contains("/nar/")).count();
    assert_eq!(nars, 0, "the worse cache's version was never downloaded");
}
