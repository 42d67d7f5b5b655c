//! `http://` and `https://` binary caches, over one shared `reqwest` client (rustls, pooled):
//! URL confinement, credentials, retries with backoff, and skipping a cache that is down.
//!
//! Every request goes through [`HttpUpstream::run`]: the cache's [`HostHealth`] decides whether
//! it may touch the network at all, the [`RetryPolicy`] whether a failed try is tried again, and
//! the outcome feeds back into the health. A NAR is retried only until its first body bytes
//! arrive; after that a failure is the caller's (the cache layer tries the next substituter).
//!
//! Every try also waits for its turn under the daemon-wide [`RequestLimiter`], and for the end
//! of a cache's own request to slow down: a 429 holds back this cache's requests until its
//! `Retry-After` (1 s when it names none) and never marks the cache down.

use std::future::Future;
use std::net::IpAddr;
use std::ops::Range;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use reqwest::{StatusCode, Url};
use tokio_util::io::StreamReader;
use tracing::{debug, info, warn};

use super::auth::Credentials;
use super::counters::{CountedBody, UpstreamCounters};
use super::health::{Admission, DEFAULT_BACKOFF, HostHealth};
use super::rate::RequestLimiter;
use super::retry::{RetryPolicy, is_transient, parse_retry_after};
use super::{NarBody, Upstream, UpstreamError};
use crate::nix::cache_info::CacheInfo;
use crate::nix::narinfo::{MAX_NARINFO_SIZE, NarInfo};
use crate::sync::{Arc, Mutex, lock};

/// Largest `nix-cache-info` we read.
const MAX_CACHE_INFO_SIZE: u64 = 64 * 1024;
/// Most redirects followed for one request (attic sends NARs to presigned storage URLs).
pub const MAX_REDIRECTS: usize = 10;
/// How long a 429 without a `Retry-After` holds back the cache's requests.
const DEFAULT_SLOW_DOWN: Duration = Duration::from_secs(1);

/// Timeouts for every HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct HttpTimeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// No byte received for this long: the transfer is dead (stalled body, silent server).
    pub stall: Duration,
}

/// Builds the one client every HTTP upstream shares (connection reuse across caches and paths).
pub fn build_client(timeouts: HttpTimeouts) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("storefs/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(timeouts.connect)
        .read_timeout(timeouts.stall)
        .redirect(redirect_policy())
        // Transport compression would only make the byte counts lie; NARs are compressed already.
        .no_gzip()
        .build()
}

/// Follow at most `MAX_REDIRECTS` hops, never to another scheme than http(s), never https → http,
/// never to a special address (see [`special_host`]) unless the request started at one of the
/// same kind. (The client itself drops `Authorization` when a hop changes host, port or scheme.)
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        match redirect_verdict(attempt.previous(), attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(reason) => attempt.error(reason),
        }
    })
}

/// Whether a redirect to `next` may be followed after visiting `previous` (oldest first).
fn redirect_verdict(previous: &[Url], next: &Url) -> Result<(), String> {
    let downgrade = previous.iter().any(|u| u.scheme() == "https") && next.scheme() != "https";
    if previous.len() > MAX_REDIRECTS {
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    } else if !matches!(next.scheme(), "http" | "https") || downgrade {
        Err(format!("refused redirect to {next}"))
    } else if let Some(kind) = special_host(next) {
        // The first URL is the substituter's own: a cache on loopback may redirect to loopback.
        let origin = previous.first().and_then(special_host);
        if origin == Some(kind) {
            Ok(())
        } else {
            Err(format!("refused redirect to {next}: {kind} address"))
        }
    } else {
        Ok(())
    }
}

/// The kind of special address `url`'s host is, if it is one a binary cache has no business
/// sending a client to: link-local (169.254/16, fe80::/10, where cloud metadata services
/// live), loopback, unspecified, multicast or broadcast, a known metadata name or address
/// (`metadata.google.internal`, AWS's fd00:ec2::254, Alibaba's 100.100.100.200). IPv4 mapped
/// into IPv6 counts as IPv4. A host NAME that resolves to such an address is not recognised
/// here (the redirect policy sees URLs, not resolved addresses).
fn special_host(url: &Url) -> Option<&'static str> {
    let host = url.host_str()?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    let ip = match bare.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        Ok(v4) => v4,
        Err(_) => {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            let metadata = ["metadata.google.internal", "metadata", "instance-data"];
            return metadata.contains(&name.as_str()).then_some("cloud metadata");
        }
    };
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
        IpAddr::V4(v4) if v4.octets() == [100, 100, 100, 200] => Some("cloud metadata"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => Some("link-local"),
        IpAddr::V6(v6) if v6.segments() == [0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254] => {
            Some("cloud metadata")
        }
        ip if ip.is_loopback() => Some("loopback"),
        ip if ip.is_unspecified() => Some("unspecified"),
        ip if ip.is_multicast() => Some("multicast"),
        _ => None,
    }
}

/// How one HTTP cache is asked: retries, backoff when down, credentials.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Retries of one request.
    pub retry: RetryPolicy,
    /// How long the cache is skipped once its retries are exhausted.
    pub backoff: Duration,
    /// What every request to the cache carries, if anything.
    pub credentials: Option<Credentials>,
    /// The daemon-wide rate limit every try waits for (shared by all HTTP caches).
    pub limiter: Arc<RequestLimiter>,
    /// Longest a whole narinfo or nix-cache-info request may take, body included (so a
    /// document trickled a byte at a time ends); None for no bound.
    pub document_timeout: Option<Duration>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::with_budget(Duration::from_secs(5)),
            backoff: DEFAULT_BACKOFF,
            credentials: None,
            limiter: Arc::default(),
            document_timeout: None,
        }
    }
}

/// One HTTP binary cache.
#[derive(Debug)]
pub struct HttpUpstream {
    base: Url,
    display: String,
    client: reqwest::Client,
    retry: RetryPolicy,
    credentials: Option<Credentials>,
    health: Arc<HostHealth>,
    counters: Arc<UpstreamCounters>,
    limiter: Arc<RequestLimiter>,
    document_timeout: Option<Duration>,
    /// Until when the cache asked us (HTTP 429) to send nothing.
    slow_until: Mutex<Option<Instant>>,
}

/// One failed try, with what the server asked for.
struct Failure {
    error: UpstreamError,
    retry_after: Option<Duration>,
}

impl From<UpstreamError> for Failure {
    fn from(error: UpstreamError) -> Self {
        Self { error, retry_after: None }
    }
}

/// Undoes a probe whose request was dropped before it reached a verdict.
struct ProbeGuard<'a> {
    health: &'a HostHealth,
    armed: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.health.probe_abandoned(Instant::now());
        }
    }
}

impl HttpUpstream {
    /// `base` is the substituter URL as configured (`https://cache.nixos.org`).
    pub fn new(
        base: &str,
        client: reqwest::Client,
        options: HttpOptions,
    ) -> Result<Self, UpstreamError> {
        let bad = |reason: String| UpstreamError::BadBaseUrl { url: base.to_owned(), reason };
        let mut url = Url::parse(base).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!("scheme {:?} is not http or https", url.scheme())));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("query strings and fragments are not supported".into()));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let display = base.trim_end_matches('/').to_owned();
        Ok(Self {
            base: url,
            display,
            client,
            retry: options.retry,
            credentials: options.credentials,
            health: Arc::new(HostHealth::new(options.backoff)),
            counters: Arc::default(),
            limiter: options.limiter,
            document_timeout: options.document_timeout,
            slow_until: Mutex::new(None),
        })
    }

    /// Whether the cache is up (not marked down), for tests and status output.
    pub fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// Resolves a cache-relative URL, refusing anything that leaves the cache base (NI-11).
    fn resolve(&self, relative: &str) -> Result<Url, UpstreamError> {
        let foreign = || UpstreamError::ForeignNarUrl {
            cache: self.display.clone(),
            nar_url: relative.to_owned(),
        };
        if relative.is_empty()
            || relative.contains("://")
            || relative.starts_with('/')
            || relative.contains('?')
            || relative.contains('#')
            || relative.contains('\\')
            || relative.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty())
        {
            return Err(foreign());
        }
        let url = self.base.join(relative).map_err(|_| foreign())?;
        let same_origin = url.origin() == self.base.origin();
        if !same_origin || !url.path().starts_with(self.base.path()) {
            return Err(foreign());
        }
        Ok(url)
    }

    /// Sends one GET, with the cache's credentials, bounded as a whole by `timeout` if given,
    /// asking only for `range` if given.
    async fn send(
        &self,
        url: &Url,
        timeout: Option<Duration>,
        range: Option<&Range<u64>>,
    ) -> Result<reqwest::Response, Failure> {
        let mut req = self.client.get(url.clone());
        if let Some(r) = range {
            let last = r.end.saturating_sub(1);
            req = req.header(reqwest::header::RANGE, format!("bytes={}-{last}", r.start));
        }
        if let Some(credentials) = &self.credentials {
            req = credentials.apply(req);
        }
        if let Some(timeout) = timeout {
            req = req.timeout(timeout);
        }
        req.send().await.map_err(|source| transport(url, source).into())
    }

    /// Waits until this cache's request to slow down is over and the daemon-wide limit gives
    /// a turn; `RateLimited` at once when that would take longer than the limiter allows.
    async fn turn(&self, url: &Url) -> Result<(), UpstreamError> {
        let limited = |wait| UpstreamError::RateLimited { url: url.to_string(), wait };
        let slow_until = *lock(&self.slow_until);
        if let Some(wait) = slow_until.map(|t| t.saturating_duration_since(Instant::now())) {
            if wait > self.limiter.max_wait() {
                return Err(limited(wait));
            }
            tokio::time::sleep(wait).await;
        }
        self.limiter.turn().await.map_err(limited)
    }

    /// The cache answered 429: hold back its requests for what it asked (capped by the
    /// backoff), without marking it down.
    fn slow_down(&self, retry_after: Option<Duration>) {
        let asked = retry_after.unwrap_or(DEFAULT_SLOW_DOWN).min(self.health.backoff());
        let until = Instant::now() + asked;
        let mut slow = lock(&self.slow_until);
        if slow.is_none_or(|t| t < until) {
            *slow = Some(until);
        }
        debug!(upstream = %self.display, hold_ms = asked.as_millis() as u64,
               "cache asks to slow down (HTTP 429)");
    }

    /// Runs `attempt` as the cache's health and the retry policy allow, feeding the outcome back
    /// into the health: a cache that answers is up; one whose tries all failed transiently is down.
    /// A request the health lets through is counted once, however many tries it takes.
    async fn run<T, F, Fut>(&self, url: &Url, attempt: F) -> Result<T, UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let (policy, probe) = match self.health.admit(Instant::now()) {
            Admission::Skip { until } => {
                return Err(UpstreamError::Down { url: self.display.clone(), until });
            }
            // A cache that was down gets one try: if it is still dead, the reader should not
            // wait for a whole retry loop again.
            Admission::Probe => {
                (RetryPolicy::once(), ProbeGuard { health: &self.health, armed: true })
            }
            Admission::Normal => (self.retry, ProbeGuard { health: &self.health, armed: false }),
        };
        // Not sent, so not counted; a probe refused here is undone by its guard.
        self.turn(url).await?;
        self.counters.count(self.retrying(url, policy, probe, attempt)).await
    }

    /// `run` once admitted: tries `attempt` until it succeeds, fails for good, or `policy` says
    /// stop.
    async fn retrying<T, F, Fut>(
        &self,
        url: &Url,
        policy: RetryPolicy,
        mut probe: ProbeGuard<'_>,
        mut attempt: F,
    ) -> Result<T, UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let start = Instant::now();
        let mut tries = 0;
        loop {
            tries += 1;
            let failure = match attempt().await {
                Ok(value) => {
                    probe.armed = false;
                    self.answered();
                    return Ok(value);
                }
                Err(failure) => failure,
            };
            let too_many = matches!(failure.error, UpstreamError::Status { status: 429, .. });
            if too_many {
                self.slow_down(failure.retry_after);
            }
            if !is_transient(&failure.error) {
                // The cache answered, just not with what we wanted: it is up.
                probe.armed = false;
                self.answered();
                return Err(failure.error);
            }
            let elapsed = start.elapsed();
            match policy.next_delay_jittered(tries, elapsed, failure.retry_after) {
                Some(delay) => {
                    debug!(upstream = %self.display, url = %url, attempt = tries,
                           delay_ms = delay.as_millis() as u64, error = %failure.error,
                           "request failed; retrying");
                    tokio::time::sleep(delay).await;
                    if self.turn(url).await.is_err() {
                        // No turn for the retry: give up with what the cache said.
                        return Err(failure.error);
                    }
                }
                None if too_many => {
                    // "Slow down" is an answer: the cache is up, this request just failed.
                    probe.armed = false;
                    self.answered();
                    return Err(failure.error);
                }
                None => {
                    probe.armed = false;
                    self.failed(tries, elapsed, &failure.error);
                    return Err(failure.error);
                }
            }
        }
    }

    fn answered(&self) {
        if self.health.succeeded() {
            info!(upstream = %self.display, "cache answers again; marked up");
        }
    }

    fn failed(&self, tries: u32, elapsed: Duration, err: &UpstreamError) {
        mark_down(&self.health, &self.display, err, tries, elapsed);
    }

    /// GETs a small document; `Ok(None)` on 404/403.
    async fn get_small(&self, url: Url, limit: u64) -> Result<Option<Vec<u8>>, UpstreamError> {
        self.run(&url, || self.get_small_once(&url, limit)).await
    }

    async fn get_small_once(&self, url: &Url, limit: u64) -> Result<Option<Vec<u8>>, Failure> {
        let resp = self.send(url, self.document_timeout, None).await?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => return Ok(None),
            s if !s.is_success() => return Err(status_failure(url, &resp)),
            _ => {}
        }
        let too_large = || UpstreamError::TooLarge { url: url.to_string(), limit };
        if resp.content_length().is_some_and(|len| len > limit) {
            return Err(too_large().into());
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.try_next().await.map_err(|e| transport(url, e))? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large().into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    /// One try at a NAR: the response and its first bytes (so a body that stalls before it
    /// starts is retried like a failed request).
    async fn nar_once(&self, url: &Url, max_bytes: u64) -> Result<NarStart, Failure> {
        let resp = self.send(url, None, None).await?;
        if !resp.status().is_success() {
            // A 404 here is not "absent": the narinfo said the NAR exists (NET-12).
            return Err(status_failure(url, &resp));
        }
        if resp.content_length().is_some_and(|len| len > max_bytes) {
            return Err(UpstreamError::TooLarge { url: url.to_string(), limit: max_bytes }.into());
        }
        let mut rest = resp.bytes_stream().boxed();
        let first = rest.try_next().await.map_err(|e| transport(url, e))?;
        Ok(NarStart { first, rest })
    }

    /// One try at a byte range: HTTP 206 with exactly the bytes asked for. A 200 (the server
    /// ignores ranges) is refused after its headers, before the whole file comes.
    async fn range_once(&self, url: &Url, range: &Range<u64>) -> Result<Vec<u8>, Failure> {
        let want = range.end.saturating_sub(range.start);
        let resp = self.send(url, self.document_timeout, Some(range)).await?;
        let status = resp.status();
        if !status.is_success() {
            return Err(status_failure(url, &resp));
        }
        let bad = |got: u64| UpstreamError::BadRange {
            url: url.to_string(),
            start: range.start,
            end: range.end,
            got,
            status: status.as_u16(),
        };
        if status != StatusCode::PARTIAL_CONTENT {
            return Err(bad(resp.content_length().unwrap_or(0)).into());
        }
        if let Some(len) = resp.content_length().filter(|len| *len != want) {
            return Err(bad(len).into());
        }
        let mut body = Vec::with_capacity(usize::try_from(want).unwrap_or(0).min(64 << 20));
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.try_next().await.map_err(|e| transport(url, e))? {
            if (body.len() + chunk.len()) as u64 > want {
                return Err(bad(body.len() as u64 + chunk.len() as u64).into());
            }
            body.extend_from_slice(&chunk);
        }
        if body.len() as u64 != want {
            return Err(bad(body.len() as u64).into());
        }
        self.counters.received(want);
        Ok(body)
    }

    fn join(&self, name: &str) -> Url {
        self.base.join(name).expect("a plain file name always joins onto a valid base URL")
    }
}

/// A NAR response whose first chunk has arrived.
struct NarStart {
    first: Option<Bytes>,
    rest: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
}

fn transport(url: &Url, source: reqwest::Error) -> UpstreamError {
    UpstreamError::Transport { url: url.to_string(), source }
}

/// What a transport failure was, for its message: reqwest's own text ("error sending request
/// for url (…)") is the same for a DNS failure, a refused connection, a TLS error and a timeout,
/// so its causes follow it (`dns error: …`, `Connection refused`, `invalid peer certificate:
/// …`, `operation timed out`), each once. The URL is left out: the message names it already.
pub(crate) fn transport_cause(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        let part = c.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

fn status_failure(url: &Url, resp: &reqwest::Response) -> Failure {
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let error = UpstreamError::Status { url: url.to_string(), status: resp.status().as_u16() };
    Failure { error, retry_after }
}

fn mark_down(
    health: &HostHealth,
    upstream: &str,
    err: &UpstreamError,
    tries: u32,
    elapsed: Duration,
) {
    let (_, was_up) = health.failed(Instant::now());
    let backoff_secs = health.backoff().as_secs_f64();
    if was_up {
        warn!(upstream, tries, elapsed_ms = elapsed.as_millis() as u64, backoff_secs,
              error = %err, "cache failing; marked down, skipped for the backoff period");
    } else {
        info!(upstream, backoff_secs, error = %err, "cache still failing; marked down again");
    }
}

#[async_trait]
impl Upstream for HttpUpstream {
    fn online(&self) -> bool {
        self.health.is_up()
    }

    fn url(&self) -> &str {
        &self.display
    }

    fn counters(&self) -> &UpstreamCounters {
        &self.counters
    }

    async fn cache_info(&self) -> Result<Option<CacheInfo>, UpstreamError> {
        let url = self.join("nix-cache-info");
        let Some(body) = self.get_small(url.clone(), MAX_CACHE_INFO_SIZE).await? else {
            return Ok(None);
        };
        CacheInfo::parse(&body).map(Some).map_err(|e| {
            self.counters.failed();
            UpstreamError::CacheInfo { url: url.to_string(), reason: e.to_string() }
        })
    }

    async fn narinfo(&self, hash_part: &str) -> Result<Option<NarInfo>, UpstreamError> {
        let url = self.join(&format!("{hash_part}.narinfo"));
        let Some(body) = self.get_small(url.clone(), MAX_NARINFO_SIZE as u64).await? else {
            return Ok(None);
        };
        NarInfo::parse(&body).map(Some).map_err(|source| {
            self.counters.failed();
            UpstreamError::NarInfo { url: url.to_string(), source }
        })
    }

    async fn index(&self, hash_part: &str, limit: u64) -> Result<Option<Vec<u8>>, UpstreamError> {
        self.get_small(self.join(&format!("{hash_part}.index")), limit).await
    }

    async fn range(&self, nar_url: &str, range: Range<u64>) -> Result<Vec<u8>, UpstreamError> {
        let url = self.resolve(nar_url)?;
        self.run(&url, || self.range_once(&url, &range)).await
    }

    async fn nar(&self, nar_url: &str, max_bytes: u64) -> Result<NarBody, UpstreamError> {
        let url = self.resolve(nar_url)?;
        let NarStart { first, rest } = self.run(&url, || self.nar_once(&url, max_bytes)).await?;
        // A body that breaks after it started cannot be retried here (its bytes were handed
        // out); it still counts against the cache's health.
        let (health, upstream, at) = (self.health.clone(), self.display.clone(), url.clone());
        let rest = rest.map_err(move |source| {
            let err = transport(&at, source);
            mark_down(&health, &upstream, &err, 1, Duration::ZERO);
            std::io::Error::other(err)
        });
        let stream = futures::stream::iter(first.map(Ok)).chain(rest);
        Ok(CountedBody::wrap(Box::pin(StreamReader::new(stream)), self.counters.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str) -> HttpUpstream {
        HttpUpstream::new(base, reqwest::Client::new(), HttpOptions::default()).unwrap()
    }

    #[test]
    fn resolves_relative_nar_urls_inside_the_cache() {
        let up = upstream("http://127.0.0.1:8080/cache");
        let url = up.resolve("nar/abc.nar.xz").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/cache/nar/abc.nar.xz");
    }

    #[test]
    fn refuses_urls_that_leave_the_cache() {
        let up = upstream("https://cache.example.org/sub/");
        for bad in [
            "https://evil.example.org/nar/x.nar",
            "file:///etc/shadow",
            "/etc/shadow",
            "../other/nar/x.nar",
            "nar/../../x.nar",
            "//evil.example.org/x",
            "nar/x.nar?sig=1",
            "",
            "http://cache.example.org/sub/nar/x.nar",
        ] {
            assert!(
                matches!(up.resolve(bad), Err(UpstreamError::ForeignNarUrl { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn redirects_never_leave_http_nor_downgrade_nor_loop() {
        let url = |s: &str| Url::parse(s).unwrap();
        let http = url("http://a.example/x");
        let https = url("https://a.example/x");
        let follows = |prev: &[Url], next: &str| redirect_verdict(prev, &url(next)).is_ok();
        assert!(follows(std::slice::from_ref(&http), "https://b.example/presigned"));
        assert!(follows(std::slice::from_ref(&http), "http://b.example/y"));
        assert!(follows(std::slice::from_ref(&https), "https://s3.example/y?X-Amz=1"));
        assert!(!follows(std::slice::from_ref(&https), "http://s3.example/y"), "downgrade");
        assert!(!follows(&[https.clone(), http.clone()], "http://c.example/"), "later downgrade");
        assert!(!follows(std::slice::from_ref(&http), "file:///etc/shadow"));
        assert!(!follows(std::slice::from_ref(&http), "ftp://a.example/x"));
        let many = vec![http.clone(); MAX_REDIRECTS + 1];
        assert!(!follows(&many, "http://a.example/y"), "too many hops");
        assert!(follows(&many[..MAX_REDIRECTS], "http://a.example/y"));
    }

    /// The message of a request to `url` that failed in transport.
    async fn transport_message(url: &str) -> String {
        let url = Url::parse(url).unwrap();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let err = client.get(url.clone()).send().await.unwrap_err();
        transport(&url, err).to_string()
    }

    /// A DNS failure, a refused connection and a TLS failure each name their cause, and the URL
    /// once (reqwest's own text is the same for all three).
    #[tokio::test]
    async fn transport_errors_name_their_cause() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let plain_http = crate::upstream::testserver::TestServer::start(|_, _| {
            crate::upstream::testserver::Reply::ok(b"not TLS")
        });
        let cases = [
            ("refused", format!("http://127.0.0.1:{port}/nix-cache-info"), "refused"),
            ("dns", "http://storefs-test.invalid/nix-cache-info".to_owned(), "dns error"),
            ("tls", plain_http.url().replace("http://", "https://"), "tls"),
        ];
        for (case, url, want) in cases {
            let text = transport_message(&url).await;
            let lower = text.to_lowercase();
            assert!(lower.contains(want), "{case}: {text:?} lacks {want:?}");
            assert_eq!(text.matches(url.as_str()).count(), 1, "{case}: URL not once: {text}");
            assert_eq!(text.matches("error sending request").count(), 1, "{case}: {text}");
        }
    }

    #[test]
    fn redirects_to_special_addresses_only_from_the_same_kind() {
        let url = |s: &str| Url::parse(s).unwrap();
        let follows = |from: &str, next: &str| redirect_verdict(&[url(from)], &url(next)).is_ok();
        let public = "https://cache.example.org/x.narinfo";
        for special in [
            "http://169.254.169.254/latest/meta-data/",
            "http://169.254.0.1/",
            "http://[fe80::1]/",
            "http://[febf::1]/",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://0.0.0.0/",
            "http://[::ffff:127.0.0.1]/",
            "http://224.0.0.1/",
            "http://255.255.255.255/",
            "http://100.100.100.200/",
            "http://[fd00:ec2::254]/",
            "http://metadata.google.internal./",
        ] {
            assert!(!follows(public, special), "{special} followed from {public}");
        }
        for ordinary in ["https://s3.example/y", "https://10.0.0.5/", "https://[fec0::1]/"] {
            assert!(follows(public, ordinary), "{ordinary} refused");
        }
        assert!(follows("http://127.0.0.1:5000/c/x", "http://127.0.0.1:9000/nar"), "loopback");
        assert!(follows("http://[fe80::2]/c/x", "http://169.254.1.1/nar"), "link-local");
        assert!(!follows("http://127.0.0.1/c/x", "http://169.254.169.254/"), "another kind");
    }

    #[test]
    fn refuses_non_http_base_urls() {
        let err = HttpUpstream::new("ftp://x/", reqwest::Client::new(), HttpOptions::default())
            .unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
    }
}
