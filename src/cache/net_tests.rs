//! The cache over real HTTP faults from the scripted loopback server and a listener that drops
//! SYNs: what a reader gets, what is published, and that the next cache is tried.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::tests::{Fixture, key, publish, sp, tree};
use super::*;
use crate::upstream::Upstream;
use crate::upstream::http::{HttpOptions, HttpTimeouts, HttpUpstream, build_client};
use crate::upstream::retry::RetryPolicy;
use crate::upstream::testserver::{Reply, TestServer};

const MS: Duration = Duration::from_millis(1);

/// An HTTP upstream at `url` with a 300 ms connect timeout, a retry budget of as much, and a
/// minute of backoff once it is marked down.
fn http(url: &str) -> Arc<HttpUpstream> {
    let client = build_client(HttpTimeouts { connect: 300 * MS, stall: 5000 * MS }).unwrap();
    let retry = RetryPolicy::with_budget(300 * MS);
    let options = HttpOptions { retry, backoff: 60_000 * MS, ..Default::default() };
    Arc::new(HttpUpstream::new(url, client, options).unwrap())
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
    assert!(err.to_string().contains("connect"), "the error names the connect: {err}");
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
    let keys = TrustedKeys::new(vec![key().public()]).unwrap();
    let set = UpstreamSet::in_order(vec![http(&server.url()) as Arc<dyn Upstream>]);
    let cache = NarCache::open(alone.config.clone(), set, keys).unwrap();
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
