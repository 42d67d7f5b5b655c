//! `HttpUpstream` against the scripted loopback server: retries, backoff, `Retry-After`, marking
//! a cache down and probing it, silent and stalled servers, credentials and redirects.
//! Timing bounds are wide on purpose (shared, slow CI machines); counts are exact.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use super::auth::Credentials;
use super::http::{HttpOptions, HttpTimeouts, HttpUpstream, build_client};
use super::rate::{RateLimit, RequestLimiter};
use super::retry::RetryPolicy;
use super::testserver::{Reply, TestServer};
use super::{Upstream, UpstreamError};
use crate::sync::{Arc, AtomicBool, Ordering};

const MS: Duration = Duration::from_millis(1);
const CACHE_INFO: &[u8] = b"StoreDir: /nix/store\nPriority: 30\n";

fn upstream(url: &str, budget: Duration, backoff: Duration) -> HttpUpstream {
    upstream_with(url, budget, backoff, None, 2000 * MS)
}

fn upstream_with(
    url: &str,
    budget: Duration,
    backoff: Duration,
    credentials: Option<Credentials>,
    stall: Duration,
) -> HttpUpstream {
    let client = build_client(HttpTimeouts { connect: 1000 * MS, stall }).unwrap();
    let retry = RetryPolicy::with_budget(budget);
    let options = HttpOptions { retry, backoff, credentials, ..HttpOptions::default() };
    HttpUpstream::new(url, client, options).unwrap()
}

fn status_of(err: &UpstreamError) -> Option<u16> {
    match err {
        UpstreamError::Status { status, .. } => Some(*status),
        _ => None,
    }
}

#[tokio::test]
async fn retries_server_errors_with_growing_pauses_then_succeeds() {
    let server = TestServer::start(|_, n| match n {
        0 => Reply::status(500),
        1 => Reply::status(502),
        _ => Reply::ok(CACHE_INFO),
    });
    let up = upstream(&server.url(), 10_000 * MS, 60_000 * MS);
    let start = Instant::now();
    let info = up.cache_info().await.unwrap().unwrap();
    let took = start.elapsed();
    assert_eq!(info.priority, Some(30));
    assert_eq!(server.count(), 3, "two failures, one success");
    let at: Vec<Instant> = server.seen().iter().map(|s| s.at).collect();
    let (first_pause, second_pause) = (at[1] - at[0], at[2] - at[1]);
    // 100 ms then 200 ms, each up to half again longer with jitter.
    assert!(first_pause >= 90 * MS && first_pause < 1000 * MS, "{first_pause:?}");
    assert!(second_pause >= 190 * MS && second_pause < 1500 * MS, "{second_pause:?}");
    assert!(took < 3000 * MS, "{took:?}");
    assert!(up.is_up());
}

#[tokio::test]
async fn honours_retry_after() {
    let server = TestServer::start(|_, n| match n {
        0 => Reply::with_header(503, "Retry-After", "1"),
        _ => Reply::ok(CACHE_INFO),
    });
    let up = upstream(&server.url(), 10_000 * MS, 60_000 * MS);
    up.cache_info().await.unwrap().unwrap();
    let at: Vec<Instant> = server.seen().iter().map(|s| s.at).collect();
    assert_eq!(at.len(), 2);
    let pause = at[1] - at[0];
    assert!(pause >= 950 * MS && pause < 3000 * MS, "Retry-After: 1 gave a {pause:?} pause");
}

#[tokio::test]
async fn a_retry_after_beyond_the_cap_fails_at_once() {
    let server = TestServer::start(|_, _| Reply::with_header(429, "Retry-After", "3600"));
    let up = upstream(&server.url(), 10_000 * MS, 60_000 * MS);
    let start = Instant::now();
    let err = up.cache_info().await.unwrap_err();
    assert_eq!(status_of(&err), Some(429));
    assert_eq!(server.count(), 1);
    assert!(start.elapsed() < 1000 * MS);
    assert!(up.is_up(), "a cache asking to slow down is not down");
    // It is held back for the backoff (the cap on what a cache may ask): longer than a request
    // may wait for its turn, so the next one is refused at once, without a request.
    let err = up.narinfo("x").await.unwrap_err();
    assert!(matches!(err, UpstreamError::RateLimited { .. }), "{err:?}");
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn other_client_errors_are_final_and_absent_is_not_an_error() {
    let server = TestServer::start(|seen, _| {
        if seen.path.ends_with("gone.narinfo") {
            Reply::status(404)
        } else if seen.path.ends_with("secret.narinfo") {
            Reply::status(403)
        } else {
            Reply::status(401)
        }
    });
    let up = upstream(&server.url(), 10_000 * MS, 60_000 * MS);
    assert!(up.narinfo("gone").await.unwrap().is_none());
    assert!(up.narinfo("secret").await.unwrap().is_none());
    let err = up.narinfo("private").await.unwrap_err();
    assert_eq!(status_of(&err), Some(401));
    assert!(err.to_string().contains("401") && err.to_string().contains(&server.url()), "{err}");
    assert_eq!(server.count(), 3, "nothing was retried");
    assert!(up.is_up(), "a cache that answers is up, whatever it answers");
}

#[tokio::test]
async fn a_failing_cache_is_skipped_without_requests_then_probed_once_then_back() {
    let healthy = Arc::new(AtomicBool::new(false));
    let flag = healthy.clone();
    let server = TestServer::start(move |_, _| {
        if flag.load(Ordering::SeqCst) { Reply::ok(CACHE_INFO) } else { Reply::status(500) }
    });
    let backoff = 700 * MS;
    let up = upstream(&server.url(), 10_000 * MS, backoff);
    let err = up.cache_info().await.unwrap_err();
    assert_eq!(status_of(&err), Some(500));
    assert_eq!(server.count(), 5, "five tries, as Nix");
    let down_at = Instant::now();
    // While down: no request at all, and an immediate, distinct error.
    for _ in 0..20 {
        let start = Instant::now();
        let err = up.narinfo("x").await.unwrap_err();
        assert!(matches!(err, UpstreamError::Down { .. }), "{err}");
        assert!(start.elapsed() < 50 * MS);
    }
    assert!(err_mentions_down(&up).await);
    assert_eq!(server.count(), 5, "requests while down");
    // After the backoff, one probe (a single try) that fails: down again.
    sleep_until(down_at + backoff + 50 * MS).await;
    let err = up.cache_info().await.unwrap_err();
    assert_eq!(status_of(&err), Some(500));
    assert_eq!(server.count(), 6, "the probe is one request, not a retry loop");
    assert!(matches!(up.cache_info().await, Err(UpstreamError::Down { .. })));
    // The cache recovers; after the next backoff the probe succeeds and it is up again.
    healthy.store(true, Ordering::SeqCst);
    sleep_until(Instant::now() + backoff + 50 * MS).await;
    assert!(up.cache_info().await.unwrap().is_some());
    assert!(up.is_up());
    assert_eq!(server.count(), 7);
}

async fn err_mentions_down(up: &HttpUpstream) -> bool {
    let err = up.narinfo("y").await.unwrap_err();
    err.to_string().contains("marked down") && err.to_string().contains(up.url())
}

async fn sleep_until(t: Instant) {
    tokio::time::sleep(t.saturating_duration_since(Instant::now())).await;
}

#[tokio::test]
async fn a_refused_connection_fails_within_the_budget_and_marks_the_cache_down() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let up = upstream(&format!("http://127.0.0.1:{port}/cache"), 1000 * MS, 60_000 * MS);
    let start = Instant::now();
    let err = up.narinfo("x").await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, UpstreamError::Transport { .. }), "{err}");
    // Tries at about 0, 100, 300 and 700 ms; the next would start after the 1 s budget.
    assert!(took >= 250 * MS && took < 2000 * MS, "{took:?}");
    assert!(!up.is_up());
    let start = Instant::now();
    assert!(matches!(up.narinfo("x").await, Err(UpstreamError::Down { .. })));
    assert!(start.elapsed() < 50 * MS);
}

#[tokio::test]
async fn a_silent_server_costs_one_stall_timeout_not_five() {
    let server = TestServer::start(|_, _| Reply::Silent);
    let up = upstream_with(&server.url(), 300 * MS, 60_000 * MS, None, 500 * MS);
    let start = Instant::now();
    let err = up.narinfo("x").await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, UpstreamError::Transport { .. }), "{err}");
    assert!(took >= 400 * MS && took < 2500 * MS, "{took:?}");
    assert_eq!(server.count(), 1, "the budget was spent by the first try");
    assert!(!up.is_up());
}

#[tokio::test]
async fn a_nar_body_that_stalls_before_its_first_byte_is_retried() {
    let nar = vec![42u8; 100_000];
    let body = nar.clone();
    let server = TestServer::start(move |_, n| match n {
        0 => Reply::StallAfterHeaders { announced: body.len() },
        _ => Reply::ok(&body),
    });
    let up = upstream_with(&server.url(), 5000 * MS, 60_000 * MS, None, 400 * MS);
    let mut got = Vec::new();
    up.nar("nar/x.nar", 1 << 20).await.unwrap().read_to_end(&mut got).await.unwrap();
    assert!(got == nar, "body differs");
    assert_eq!(server.count(), 2);
    assert!(up.is_up());
}

#[tokio::test]
async fn a_nar_body_cut_short_after_bytes_were_used_fails_and_marks_down() {
    let server = TestServer::start(|_, _| Reply::CloseMidBody {
        announced: 100_000,
        sent: vec![1u8; 10_000],
    });
    let up = upstream(&server.url(), 5000 * MS, 60_000 * MS);
    let mut body = up.nar("nar/x.nar", 1 << 20).await.unwrap();
    let mut got = Vec::new();
    let err = body.read_to_end(&mut got).await.unwrap_err();
    assert!(got.len() < 100_000, "{err}");
    assert_eq!(server.count(), 1, "bytes were handed out: no silent retry");
    assert!(!up.is_up());
}

#[tokio::test]
async fn a_nar_404_is_an_error_not_absent_and_not_retried() {
    let server = TestServer::start(|_, _| Reply::status(404));
    let up = upstream(&server.url(), 5000 * MS, 60_000 * MS);
    let err = up.nar("nar/x.nar", 1 << 20).await.err().unwrap();
    assert_eq!(status_of(&err), Some(404));
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn credentials_are_sent_to_the_cache_only() {
    let storage = TestServer::start(|_, _| Reply::ok(b"nar bytes"));
    let target = format!("http://{}/presigned/x.nar?sig=1", storage.addr());
    let cache = TestServer::start(move |seen, _| {
        match (seen.header("Authorization"), seen.path.ends_with(".narinfo")) {
            (Some("Bearer s3cret"), false) => Reply::with_header(302, "Location", &target),
            (Some("Bearer s3cret"), true) => Reply::status(404),
            _ => Reply::status(401),
        }
    });
    let bearer = Some(Credentials::Bearer("s3cret".into()));
    let up = upstream_with(&cache.url(), 5000 * MS, 60_000 * MS, bearer, 2000 * MS);
    assert!(up.narinfo("x").await.unwrap().is_none(), "the token was accepted");
    let mut got = Vec::new();
    up.nar("nar/x.nar", 1 << 20).await.unwrap().read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"nar bytes");
    let at_storage = storage.seen();
    assert_eq!(at_storage.len(), 1);
    assert_eq!(at_storage[0].header("Authorization"), None, "credentials leaked to another host");

    let basic = Some(Credentials::Basic { login: "alice".into(), password: "pw".into() });
    let up = upstream_with(&cache.url(), 5000 * MS, 60_000 * MS, basic, 2000 * MS);
    assert_eq!(status_of(&up.narinfo("x").await.unwrap_err()), Some(401));
    let last = cache.seen().pop().unwrap();
    // base64("alice:pw")
    assert_eq!(last.header("Authorization"), Some("Basic YWxpY2U6cHc="));
}

#[tokio::test]
async fn a_redirect_to_a_local_file_is_refused_and_not_retried() {
    let server =
        TestServer::start(|_, _| Reply::with_header(302, "Location", "file:///etc/passwd"));
    let up = upstream(&server.url(), 5000 * MS, 60_000 * MS);
    let err = up.nar("nar/x.nar", 1 << 20).await.err().unwrap();
    // reqwest hands a non-http(s) Location back as the 3xx itself; our policy would refuse it
    // too (see http.rs). Either way nothing local is read.
    let refused = status_of(&err) == Some(302) || format!("{err:?}").contains("refused redirect");
    assert!(refused, "{err:?}");
    assert_eq!(server.count(), 1);
    assert!(up.is_up(), "a refused redirect says nothing about the cache's health");
}

/// Env var telling a re-executed test binary which half of [`honours_http_proxy_and_no_proxy`]
/// it runs: the proxy settings are process-wide, so they are tested in a child process.
const PROXY_CHILD: &str = "STOREFS_TEST_PROXY_CHILD_TARGET";

/// HTTP_PROXY is honoured, and NO_PROXY exempts a host (reqwest reads them when the client is
/// built, i.e. before mounting).
#[tokio::test]
async fn honours_http_proxy_and_no_proxy() {
    if let Ok(target) = std::env::var(PROXY_CHILD) {
        let up = upstream(&target, 1000 * MS, 60_000 * MS);
        let info = up.cache_info().await;
        assert!(matches!(info, Ok(Some(_))), "{info:?}");
        return;
    }
    let proxy = TestServer::start(|_, _| Reply::ok(CACHE_INFO));
    let origin = TestServer::start(|_, _| Reply::ok(CACHE_INFO));
    let child = |no_proxy: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "upstream::tests::honours_http_proxy_and_no_proxy", "--quiet"])
            .env(PROXY_CHILD, origin.url())
            .env("HTTP_PROXY", format!("http://{}", proxy.addr()))
            .env("NO_PROXY", no_proxy)
            .env_remove("http_proxy")
            .env_remove("no_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .output()
            .unwrap();
        assert!(out.status.success(), "child: {}", String::from_utf8_lossy(&out.stdout));
    };
    child("");
    let via_proxy = proxy.seen();
    assert_eq!(via_proxy.len(), 1);
    // A forward proxy gets the absolute URL.
    assert_eq!(via_proxy[0].path, format!("{}/nix-cache-info", origin.url()));
    assert_eq!(origin.count(), 0);
    child("127.0.0.1");
    assert_eq!(proxy.count(), 1, "NO_PROXY was not honoured");
    assert_eq!(origin.seen()[0].path, "/cache/nix-cache-info");
}

/// The upstream counts its own requests: nix-cache-info too, a retried request once, an absent
/// document as an answer, a failed one as an error, the NAR's bytes, and nothing while down.
#[tokio::test]
async fn counts_its_own_requests_errors_and_bytes() {
    let server = TestServer::start(|seen, n| {
        if seen.path.ends_with("nix-cache-info") {
            Reply::ok(CACHE_INFO)
        } else if seen.path.ends_with("gone.narinfo") {
            Reply::status(404)
        } else if seen.path.ends_with("flaky.narinfo") && n < 3 {
            Reply::status(503)
        } else if seen.path.ends_with("flaky.narinfo") {
            Reply::status(404)
        } else if seen.path.ends_with("x.nar") {
            Reply::ok(&[1u8; 5000])
        } else {
            Reply::status(500)
        }
    });
    let up = upstream(&server.url(), 10_000 * MS, 60_000 * MS);
    let counts = |up: &HttpUpstream| {
        let c = up.counters();
        [&c.requests, &c.errors, &c.bytes].map(crate::metrics::get)
    };
    up.cache_info().await.unwrap().unwrap();
    assert!(up.narinfo("gone").await.unwrap().is_none());
    assert!(up.narinfo("flaky").await.unwrap().is_none(), "retried, then absent");
    assert_eq!(counts(&up), [3, 0, 0], "one request each, retries included");
    let mut body = up.nar("x.nar", 10_000).await.unwrap();
    let mut bytes = Vec::new();
    body.read_to_end(&mut bytes).await.unwrap();
    assert_eq!(counts(&up), [4, 0, 5000]);
    assert!(up.counters().latency.p50_ms().is_some());
    up.narinfo("broken").await.unwrap_err();
    assert_eq!(counts(&up), [5, 1, 5000], "all tries failed: one request, one error");
    assert!(!up.is_up());
    let before = server.count();
    assert!(matches!(up.narinfo("x").await, Err(UpstreamError::Down { .. })));
    assert_eq!(server.count(), before);
    assert_eq!(counts(&up), [5, 1, 5000], "a cache skipped while down is not asked");
}

/// A 429 is "slow down", not "down": the request is retried after its Retry-After, later
/// requests wait for the end of the hold, and the cache stays up throughout.
#[tokio::test]
async fn too_many_requests_slows_the_cache_down_without_marking_it_down() {
    let server = TestServer::start(|_, n| match n {
        0 | 1 => Reply::with_header(429, "Retry-After", "1"),
        _ => Reply::status(404),
    });
    let up = upstream(&server.url(), 10_000 * MS, 60_000 * MS);
    let start = Instant::now();
    assert!(up.narinfo("a").await.unwrap().is_none(), "retried after the 429s");
    assert!(up.is_up());
    let at: Vec<Instant> = server.seen().iter().map(|s| s.at).collect();
    assert_eq!(at.len(), 3);
    assert!(at[1] - at[0] >= 950 * MS && at[2] - at[1] >= 950 * MS, "{at:?}");
    assert!(start.elapsed() < 5000 * MS);
    // A 429 that outlasts the retry budget fails this request only.
    let server = TestServer::start(|_, _| Reply::with_header(429, "Retry-After", "1"));
    let up = upstream(&server.url(), 500 * MS, 60_000 * MS);
    let err = up.narinfo("b").await.unwrap_err();
    assert_eq!(status_of(&err), Some(429));
    assert!(up.is_up(), "never marked down for a 429");
    let asked = Instant::now();
    let _ = up.narinfo("c").await;
    let held = server.seen().last().unwrap().at.saturating_duration_since(asked);
    assert!(held >= 500 * MS, "the next request waited for the hold, {held:?}");
}

/// The daemon-wide limit spaces requests: 20 requests at 10/s with a burst of 2 take about
/// 1.8 s, and a request that would wait past the limiter's bound is not sent.
#[tokio::test]
async fn the_request_limiter_spaces_requests_and_refuses_long_waits() {
    let server = TestServer::start(|_, _| Reply::status(404));
    let limiter = Arc::new(RequestLimiter::new(RateLimit { per_second: 10, burst: 2 }, 5000 * MS));
    let client = build_client(HttpTimeouts { connect: 1000 * MS, stall: 2000 * MS }).unwrap();
    let options = HttpOptions { limiter: limiter.clone(), ..HttpOptions::default() };
    let up = Arc::new(HttpUpstream::new(&server.url(), client.clone(), options).unwrap());
    let start = Instant::now();
    let asks = (0..20).map(|i| {
        let up = up.clone();
        tokio::spawn(async move { up.narinfo(&format!("p{i}")).await })
    });
    for ask in asks.collect::<Vec<_>>() {
        assert!(ask.await.unwrap().unwrap().is_none());
    }
    let took = start.elapsed();
    assert!(took >= 1700 * MS && took < 6000 * MS, "{took:?}");
    let seen: Vec<Instant> = server.seen().iter().map(|s| s.at).collect();
    for (i, window) in seen.windows(12).enumerate() {
        // Any 12 consecutive requests span at least (12 - burst) intervals.
        assert!(window[11] - window[0] >= 900 * MS, "requests {i}..{} too close", i + 11);
    }
    // Only 100 ms of waiting allowed: the burst is spent, so the next request is refused.
    let tight = Arc::new(RequestLimiter::new(RateLimit { per_second: 1, burst: 1 }, 100 * MS));
    let options = HttpOptions { limiter: tight, ..HttpOptions::default() };
    let up = HttpUpstream::new(&server.url(), client, options).unwrap();
    let before = server.count();
    assert!(up.narinfo("first").await.unwrap().is_none());
    let err = up.narinfo("second").await.unwrap_err();
    assert!(matches!(err, UpstreamError::RateLimited { .. }), "{err:?}");
    assert_eq!(server.count(), before + 1, "the refused request was not sent");
    assert!(up.is_up());
}

/// A narinfo trickled one byte at a time never stalls, so only the whole-request bound
/// (`--fetch-timeout`) ends it.
#[tokio::test]
async fn a_trickled_narinfo_ends_at_the_document_timeout() {
    let server =
        TestServer::start(|_, _| Reply::Trickle { body: vec![b'x'; 1000], every: 200 * MS });
    let client = build_client(HttpTimeouts { connect: 1000 * MS, stall: 2000 * MS }).unwrap();
    let retry = RetryPolicy::with_budget(100 * MS);
    let options =
        HttpOptions { retry, document_timeout: Some(1500 * MS), ..HttpOptions::default() };
    let up = HttpUpstream::new(&server.url(), client, options).unwrap();
    let start = Instant::now();
    let err = up.narinfo("slow").await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(err, UpstreamError::Transport { .. }), "{err:?}");
    assert!(took >= 1400 * MS && took < 4000 * MS, "{took:?}");
}

/// Redirects to link-local (cloud metadata) and other special addresses are refused from a
/// cache elsewhere, and followed when the cache itself is at such an address (loopback here).
#[tokio::test]
async fn redirects_to_special_addresses_are_refused() {
    for target in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/x",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://[::ffff:169.254.169.254]/x",
    ] {
        let server = TestServer::start(move |_, _| Reply::with_header(302, "Location", target));
        let up = upstream(&server.url(), 5000 * MS, 60_000 * MS);
        let start = Instant::now();
        let err = up.nar("nar/x.nar", 1 << 20).await.err().unwrap();
        assert!(format!("{err:?}").contains("refused redirect"), "{target}: {err:?}");
        assert!(start.elapsed() < 2000 * MS, "{target}: no connection was tried");
        assert_eq!(server.count(), 1, "{target}: not retried");
        assert!(up.is_up());
    }
    let storage = TestServer::start(|_, _| Reply::ok(b"nar bytes"));
    let target = format!("http://{}/nar/x.nar", storage.addr());
    let cache = TestServer::start(move |_, _| Reply::with_header(302, "Location", &target));
    let up = upstream(&cache.url(), 5000 * MS, 60_000 * MS);
    let mut got = Vec::new();
    up.nar("nar/x.nar", 1 << 20).await.unwrap().read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"nar bytes", "loopback to loopback is followed");
}
