//! What the daemon reports about itself: metric names (declared once, here), the cheap counters
//! the data path bumps, the [`Snapshot`] that `storefs stats` prints, its Prometheus rendering
//! (through `prometheus-client`), and a minimal HTTP server for `GET /metrics`.
//!
//! docs/METRICS.md lists every metric in [`METRICS`]; a test keeps the two in step.

use std::future::Future;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, warn};

use crate::sync::{AtomicU64, Ordering};

/// Lookups of valid store path names that reached the daemon.
pub const LOOKUPS: &str = "storefs_lookups";
/// Lookups answered from the local cache.
pub const CACHE_HITS: &str = "storefs_cache_hits";
/// Lookups answered "absent" from the negative cache.
pub const NEGATIVE_HITS: &str = "storefs_negative_hits";
/// narinfo requests sent upstream.
pub const NARINFO_REQUESTS: &str = "storefs_narinfo_requests";
/// NAR downloads started.
pub const NAR_DOWNLOADS: &str = "storefs_nar_downloads";
/// Compressed NAR bytes received.
pub const BYTES_DOWNLOADED: &str = "storefs_bytes_downloaded";
/// File bytes returned to readers.
pub const BYTES_SERVED: &str = "storefs_bytes_served";
/// Paths evicted.
pub const EVICTIONS: &str = "storefs_evictions";
/// Paths fetched by closure prefetch.
pub const PREFETCHED_PATHS: &str = "storefs_prefetched_paths";
/// References not prefetched for want of room.
pub const PREFETCH_SKIPPED: &str = "storefs_prefetch_skipped";
/// Fetches a reader waited for that ended with no verified copy.
pub const FETCH_FAILURES: &str = "storefs_fetch_failures";
/// Prefetches that ended with no verified copy.
pub const PREFETCH_FAILURES: &str = "storefs_prefetch_failures";
/// narinfos or NARs rejected by verification.
pub const VERIFY_FAILURES: &str = "storefs_verify_failures";
/// Share of lookups answered from the cache.
pub const HIT_RATE: &str = "storefs_hit_rate";
/// Bytes on disk in the cache.
pub const CACHE_BYTES: &str = "storefs_cache_bytes";
/// The cache size limit.
pub const CACHE_LIMIT_BYTES: &str = "storefs_cache_limit_bytes";
/// Store paths in the cache.
pub const CACHED_PATHS: &str = "storefs_cached_paths";
/// Pinned store paths.
pub const PINNED_PATHS: &str = "storefs_pinned_paths";
/// Fetches running now.
pub const IN_FLIGHT: &str = "storefs_in_flight";
/// Requests sent to one upstream.
pub const UPSTREAM_REQUESTS: &str = "storefs_upstream_requests";
/// Failed requests to one upstream.
pub const UPSTREAM_ERRORS: &str = "storefs_upstream_errors";
/// Compressed bytes received from one upstream.
pub const UPSTREAM_BYTES: &str = "storefs_upstream_bytes";
/// 1 when an upstream is up, 0 while it is marked down.
pub const UPSTREAM_ONLINE: &str = "storefs_upstream_online";
/// Median request latency of one upstream.
pub const UPSTREAM_LATENCY_P50: &str = "storefs_upstream_latency_p50_seconds";
/// narinfo fetch latency.
pub const NARINFO_FETCH_SECONDS: &str = "storefs_narinfo_fetch_seconds";
/// NAR fetch latency (download, verify, unpack).
pub const NAR_FETCH_SECONDS: &str = "storefs_nar_fetch_seconds";

/// The Prometheus type of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; exposed with a `_total` suffix.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, `_sum` and `_count`.
    Histogram,
}

/// One declared metric.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    /// Name as registered.
    pub name: &'static str,
    /// Type.
    pub kind: Kind,
    /// Whether it carries the `upstream` label.
    pub per_upstream: bool,
    /// HELP text.
    pub help: &'static str,
}

impl MetricDef {
    /// The name as it appears in the exposition (counters get `_total`).
    pub fn exposed_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge | Kind::Histogram => self.name.to_owned(),
        }
    }
}

const fn def(name: &'static str, kind: Kind, help: &'static str) -> MetricDef {
    MetricDef { name, kind, per_upstream: false, help }
}

const fn up(name: &'static str, kind: Kind, help: &'static str) -> MetricDef {
    MetricDef { name, kind, per_upstream: true, help }
}

/// Every metric `/metrics` serves.
pub const METRICS: &[MetricDef] = &[
    def(LOOKUPS, Kind::Counter, "Lookups of valid store path names that reached the daemon."),
    def(CACHE_HITS, Kind::Counter, "Lookups answered from the local cache."),
    def(NEGATIVE_HITS, Kind::Counter, "Lookups answered absent from the negative cache."),
    def(NARINFO_REQUESTS, Kind::Counter, "narinfo requests sent to substituters."),
    def(NAR_DOWNLOADS, Kind::Counter, "NAR downloads started."),
    def(BYTES_DOWNLOADED, Kind::Counter, "Compressed NAR bytes received, in bytes."),
    def(BYTES_SERVED, Kind::Counter, "File bytes returned to readers, in bytes."),
    def(EVICTIONS, Kind::Counter, "Store paths evicted from the cache."),
    def(PREFETCHED_PATHS, Kind::Counter, "Store paths fetched by closure prefetch."),
    def(PREFETCH_SKIPPED, Kind::Counter, "References not prefetched: no room without evicting."),
    def(FETCH_FAILURES, Kind::Counter, "Fetches a reader waited for that got no verified copy."),
    def(PREFETCH_FAILURES, Kind::Counter, "Closure prefetches that got no verified copy."),
    def(VERIFY_FAILURES, Kind::Counter, "narinfos or NARs rejected by verification."),
    def(HIT_RATE, Kind::Gauge, "Lookups answered from the cache / all lookups (0 before any)."),
    def(CACHE_BYTES, Kind::Gauge, "Bytes the cache holds on disk."),
    def(CACHE_LIMIT_BYTES, Kind::Gauge, "The cache size limit (--max-size), in bytes."),
    def(CACHED_PATHS, Kind::Gauge, "Store paths in the cache."),
    def(PINNED_PATHS, Kind::Gauge, "Pinned store paths (always 0: pinning does not exist yet)."),
    def(IN_FLIGHT, Kind::Gauge, "Store path fetches running now."),
    up(UPSTREAM_REQUESTS, Kind::Counter, "Requests (narinfo and NAR) sent to the substituter."),
    up(UPSTREAM_ERRORS, Kind::Counter, "Failed requests to the substituter."),
    up(UPSTREAM_BYTES, Kind::Counter, "Compressed NAR bytes received from the substituter."),
    up(UPSTREAM_ONLINE, Kind::Gauge, "1 when the substituter is up, 0 while marked down."),
    up(UPSTREAM_LATENCY_P50, Kind::Gauge, "Median request latency (bucket upper bound), seconds."),
    def(NARINFO_FETCH_SECONDS, Kind::Histogram, "narinfo request latency, in seconds."),
    def(NAR_FETCH_SECONDS, Kind::Histogram, "NAR download+verify+unpack time, in seconds."),
];

/// Upper bounds (seconds) of the latency buckets, for histograms and the p50 estimate.
pub const LATENCY_BUCKETS: [f64; 12] =
    [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A fixed-bucket latency histogram of atomics: cheap to record, good enough for a median.
#[derive(Debug, Default)]
pub struct LatencyBuckets {
    /// Counts per bucket of [`LATENCY_BUCKETS`], plus one for everything slower.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
}

impl LatencyBuckets {
    /// Records one latency.
    pub fn record(&self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding the median, in milliseconds; None before any
    /// record. Latencies above the last bucket report the last bound.
    pub fn p50_ms(&self) -> Option<f64> {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let half = total.div_ceil(2);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= half {
                let bound = LATENCY_BUCKETS.get(i).or(LATENCY_BUCKETS.last()).copied();
                return bound.map(|s| s * 1000.0);
            }
        }
        None
    }
}

/// Counters of one substituter, bumped by the cache's fetch path.
#[derive(Debug, Default)]
pub struct UpstreamCounters {
    /// Requests sent (narinfo and NAR; not those skipped while the cache is down).
    pub requests: AtomicU64,
    /// Requests that failed (transport, status, bad body).
    pub errors: AtomicU64,
    /// Compressed NAR bytes received.
    pub bytes: AtomicU64,
    /// Time to an answer (narinfo: the parsed document; NAR: the response headers).
    pub latency: LatencyBuckets,
}

/// The latency histograms `/metrics` exposes; cheap to clone (shared inside).
#[derive(Clone, Debug)]
pub struct FetchHistograms {
    /// narinfo request latency.
    pub narinfo: Histogram,
    /// NAR download + verify + unpack time.
    pub nar: Histogram,
}

impl Default for FetchHistograms {
    fn default() -> Self {
        Self {
            narinfo: Histogram::new(LATENCY_BUCKETS.iter().copied()),
            nar: Histogram::new(LATENCY_BUCKETS.iter().copied()),
        }
    }
}

/// One substituter in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSnapshot {
    /// The substituter URL.
    pub url: String,
    /// False while the cache is marked down after repeated failures.
    pub online: bool,
    /// Requests sent.
    pub requests: u64,
    /// Requests failed.
    pub errors: u64,
    /// Compressed bytes received.
    pub bytes: u64,
    /// Median latency in ms (bucket upper bound); null before any request.
    pub latency_ms_p50: Option<f64>,
}

/// Everything `storefs stats` shows: the JSON of `stats --json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// `cache_hits / lookups`; 0 before any lookup.
    pub hit_rate: f64,
    /// Lookups of valid store path names that reached the daemon.
    pub lookups: u64,
    /// Of those, answered from the local cache.
    pub cache_hits: u64,
    /// narinfo requests sent upstream.
    pub narinfo_requests: u64,
    /// Lookups answered "absent" from the negative cache.
    pub negative_hits: u64,
    /// NAR downloads started.
    pub nar_downloads: u64,
    /// Compressed NAR bytes received.
    pub bytes_downloaded: u64,
    /// File bytes returned to readers.
    pub bytes_served: u64,
    /// Bytes on disk.
    pub cache_bytes: u64,
    /// The size limit.
    pub cache_limit_bytes: u64,
    /// Store paths in the cache.
    pub cached_paths: u64,
    /// Pinned store paths (always 0 until pinning exists).
    pub pinned_paths: u64,
    /// Paths evicted.
    pub evictions: u64,
    /// Fetches running now.
    pub in_flight: u64,
    /// Paths fetched by closure prefetch (absent from older daemons' answers).
    #[serde(default)]
    pub prefetched_paths: u64,
    /// References not prefetched because they did not fit without evicting.
    #[serde(default)]
    pub prefetch_skipped: u64,
    /// Fetches a reader waited for that ended with no verified copy.
    pub fetch_failures: u64,
    /// Prefetches that ended with no verified copy (absent from older daemons' answers).
    #[serde(default)]
    pub prefetch_failures: u64,
    /// narinfos or NARs rejected by verification.
    pub verify_failures: u64,
    /// The substituters, in configured order.
    pub upstreams: Vec<UpstreamSnapshot>,
}

impl Snapshot {
    /// `hits / lookups`, 0 when there were none.
    pub fn rate(hits: u64, lookups: u64) -> f64 {
        if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 }
    }
}

/// Why metrics could not be rendered or served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The encoder failed (it writes to a String, so only on a bug).
    #[error("cannot encode metrics: {0}")]
    Encode(#[from] std::fmt::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

type Labels = Vec<(String, String)>;

/// Renders `snap` and `hist` in the Prometheus text format.
pub fn render(snap: &Snapshot, hist: &FetchHistograms) -> Result<String, MetricsError> {
    let mut reg = Registry::default();
    let help = |name: &str| METRICS.iter().find(|m| m.name == name).map_or("", |m| m.help);
    let counters = [
        (LOOKUPS, snap.lookups),
        (CACHE_HITS, snap.cache_hits),
        (NEGATIVE_HITS, snap.negative_hits),
        (NARINFO_REQUESTS, snap.narinfo_requests),
        (NAR_DOWNLOADS, snap.nar_downloads),
        (BYTES_DOWNLOADED, snap.bytes_downloaded),
        (BYTES_SERVED, snap.bytes_served),
        (EVICTIONS, snap.evictions),
        (PREFETCHED_PATHS, snap.prefetched_paths),
        (PREFETCH_SKIPPED, snap.prefetch_skipped),
        (FETCH_FAILURES, snap.fetch_failures),
        (PREFETCH_FAILURES, snap.prefetch_failures),
        (VERIFY_FAILURES, snap.verify_failures),
    ];
    for (name, value) in counters {
        let c: Counter = Counter::default();
        c.inc_by(value);
        reg.register(name, help(name), c);
    }
    let rate: Gauge<f64, std::sync::atomic::AtomicU64> = Gauge::default();
    rate.set(snap.hit_rate);
    reg.register(HIT_RATE, help(HIT_RATE), rate);
    let gauges = [
        (CACHE_BYTES, snap.cache_bytes),
        (CACHE_LIMIT_BYTES, snap.cache_limit_bytes),
        (CACHED_PATHS, snap.cached_paths),
        (PINNED_PATHS, snap.pinned_paths),
        (IN_FLIGHT, snap.in_flight),
    ];
    for (name, value) in gauges {
        let g: Gauge = Gauge::default();
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        reg.register(name, help(name), g);
    }
    let requests = Family::<Labels, Counter>::default();
    let errors = Family::<Labels, Counter>::default();
    let bytes = Family::<Labels, Counter>::default();
    let online = Family::<Labels, Gauge>::default();
    let p50 = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for u in &snap.upstreams {
        let labels = vec![("upstream".to_owned(), u.url.clone())];
        requests.get_or_create(&labels).inc_by(u.requests);
        errors.get_or_create(&labels).inc_by(u.errors);
        bytes.get_or_create(&labels).inc_by(u.bytes);
        online.get_or_create(&labels).set(i64::from(u.online));
        if let Some(ms) = u.latency_ms_p50 {
            p50.get_or_create(&labels).set(ms / 1000.0);
        }
    }
    reg.register(UPSTREAM_REQUESTS, help(UPSTREAM_REQUESTS), requests);
    reg.register(UPSTREAM_ERRORS, help(UPSTREAM_ERRORS), errors);
    reg.register(UPSTREAM_BYTES, help(UPSTREAM_BYTES), bytes);
    reg.register(UPSTREAM_ONLINE, help(UPSTREAM_ONLINE), online);
    reg.register(UPSTREAM_LATENCY_P50, help(UPSTREAM_LATENCY_P50), p50);
    reg.register(NARINFO_FETCH_SECONDS, help(NARINFO_FETCH_SECONDS), hist.narinfo.clone());
    reg.register(NAR_FETCH_SECONDS, help(NAR_FETCH_SECONDS), hist.nar.clone());
    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

/// Largest HTTP request head read from a scraper.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the `/metrics` listener.
pub async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr: addr.to_string(), source })
}

/// Serves `GET /metrics` (HTTP/1.x, one request per connection) until `shutdown` resolves;
/// `render` produces the body for each scrape.
pub async fn serve<R>(
    listener: tokio::net::TcpListener,
    render: R,
    shutdown: impl Future<Output = ()>,
) where
    R: Fn() -> Result<String, MetricsError> + Send + Sync + 'static,
{
    let render = std::sync::Arc::new(render);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    warn!(error = %err, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let render = render.clone();
        tokio::spawn(async move {
            if let Err(err) = answer(stream, render.as_ref()).await {
                debug!(%peer, error = %err, "metrics connection failed");
            }
        });
    }
}

/// Reads one request head and answers it.
async fn answer<R>(mut stream: tokio::net::TcpStream, render: &R) -> std::io::Result<()>
where
    R: Fn() -> Result<String, MetricsError>,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_REQUEST_HEAD {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(true)
    };
    let complete = tokio::time::timeout(REQUEST_TIMEOUT, read_head).await.unwrap_or(Ok(false))?;
    let line = String::from_utf8_lossy(head.split(|b| *b == b'\n').next().unwrap_or_default());
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next(), parts.next());
    let path = target.map(|t| t.split('?').next().unwrap_or(t));
    let (status, ctype, body) = if !complete {
        ("400 Bad Request", "text/plain", "bad request\n".to_owned())
    } else if method != Some("GET") && method != Some("HEAD") {
        ("405 Method Not Allowed", "text/plain", "only GET\n".to_owned())
    } else if path != Some("/metrics") {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    } else {
        match render() {
            Ok(text) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", text),
            Err(err) => ("500 Internal Server Error", "text/plain", format!("{err}\n")),
        }
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != Some("HEAD") {
        response.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&response).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/METRICS.md names exactly the metrics declared here, with their types.
    #[test]
    fn metrics_doc_lists_every_declared_metric() {
        let doc = include_str!("../docs/METRICS.md");
        let mut documented = std::collections::BTreeSet::new();
        for line in doc.lines().filter(|l| l.starts_with("| `storefs_")) {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            documented.insert((cells[1].trim_matches('`').to_owned(), cells[2].to_owned()));
        }
        let declared: std::collections::BTreeSet<_> = METRICS
            .iter()
            .map(|m| (m.exposed_name(), format!("{:?}", m.kind).to_lowercase()))
            .collect();
        assert_eq!(documented, declared, "docs/METRICS.md and src/metrics.rs disagree");
    }

    #[test]
    fn render_exposes_every_declared_metric() {
        let snap = Snapshot {
            lookups: 3,
            upstreams: vec![UpstreamSnapshot {
                url: "http://x".into(),
                online: true,
                requests: 2,
                errors: 0,
                bytes: 10,
                latency_ms_p50: Some(5.0),
            }],
            ..Snapshot::default()
        };
        let hist = FetchHistograms::default();
        hist.nar.observe(0.2);
        let text = render(&snap, &hist).unwrap();
        for m in METRICS {
            let name = m.exposed_name();
            let sample = if m.kind == Kind::Histogram { format!("{name}_count") } else { name };
            assert!(text.lines().any(|l| l.starts_with(&sample)), "{sample} missing:\n{text}");
        }
        assert!(text.contains("storefs_lookups_total 3"), "{text}");
        assert!(text.contains("storefs_upstream_bytes_total{upstream=\"http://x\"} 10"), "{text}");
    }

    #[test]
    fn p50_is_the_bucket_bound_of_the_median() {
        let b = LatencyBuckets::default();
        assert_eq!(b.p50_ms(), None);
        for ms in [2, 3, 4, 400, 3000] {
            b.record(Duration::from_millis(ms));
        }
        assert_eq!(b.p50_ms(), Some(5.0));
        b.record(Duration::from_secs(60));
        b.record(Duration::from_secs(60));
        b.record(Duration::from_secs(60));
        assert_eq!(b.p50_ms(), Some(500.0));
    }

    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, || Ok("m 1\n".to_owned()), async {
            let _ = rx.await;
        }));
        for (request, want) in [
            ("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "200 OK"),
            ("GET /other HTTP/1.1\r\n\r\n", "404"),
            ("POST /metrics HTTP/1.1\r\n\r\n", "405"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(request.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with(&format!("HTTP/1.1 {want}")), "{request:?}: {out}");
            if want == "200 OK" {
                assert!(out.ends_with("\r\n\r\nm 1\n"), "{out}");
            }
        }
        let _ = tx.send(());
        server.await.unwrap();
    }
}
