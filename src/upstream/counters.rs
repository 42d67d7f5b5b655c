//! What one substituter was asked and what it sent, counted by the upstream itself in its
//! request path: requests, failures, compressed bytes and the time to an answer.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, ReadBuf};

use super::{NarBody, UpstreamError};
use crate::metrics::{self, Histogram, UpstreamSnapshot, Value};
use crate::sync::Arc;

metrics::counters! {
    /// The counters of one substituter, shared by all its requests.
    pub struct UpstreamCounters {
        /// Requests sent (nix-cache-info, narinfo, NAR; not those skipped while it is down).
        requests,
        /// Of those, failed ones; and NAR bodies that broke, stalled or did not verify.
        errors,
        /// Compressed NAR bytes received.
        bytes,
    }
    also {
        /// Time to an answer (a document: its whole body; a NAR: its first bytes).
        pub latency: Histogram,
    }
}

impl UpstreamCounters {
    /// Runs `request` as one counted request: counted as it starts, then timed and judged by
    /// its result.
    pub async fn count<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        let pending = self.start();
        let result = request.await;
        pending.finish(&result);
        result
    }

    /// Counts a request as sent now; `Pending::finish` records its outcome.
    pub fn start(&self) -> Pending<'_> {
        metrics::bump(&self.requests);
        Pending { counters: self, asked: Instant::now(), finished: false }
    }

    /// Counts a failure found after the request answered: a document that does not parse, a
    /// NAR body that broke, stalled or did not verify (reported by whoever read it).
    pub fn failed(&self) {
        metrics::bump(&self.errors);
    }

    /// Counts `n` bytes received outside a NAR body (byte ranges of a NAR file).
    pub fn received(&self, n: u64) {
        metrics::add(&self.bytes, n);
    }

    /// This substituter in a snapshot.
    pub fn snapshot(&self, url: &str, online: bool) -> UpstreamSnapshot {
        let mut figures: std::collections::BTreeMap<String, Value> =
            self.figures().map(|(key, n)| (key.to_owned(), Value::Count(n))).collect();
        figures.insert("online".into(), online.into());
        figures.insert("latency_ms_p50".into(), self.latency.p50_ms().into());
        UpstreamSnapshot { url: url.to_owned(), figures }
    }
}

/// A request counted as sent. Finish it with its outcome; one dropped unfinished (its caller
/// gave up waiting) counts as failed.
#[derive(Debug)]
pub struct Pending<'a> {
    counters: &'a UpstreamCounters,
    asked: Instant,
    finished: bool,
}

impl Pending<'_> {
    /// Records the time to `result` and whether it failed.
    pub fn finish<T>(mut self, result: &Result<T, UpstreamError>) {
        self.finished = true;
        self.counters.latency.observe(self.asked.elapsed());
        if result.is_err() {
            self.counters.failed();
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.counters.failed();
        }
    }
}

/// A NAR body that adds every byte it yields to its upstream's `bytes`.
pub struct CountedBody {
    inner: NarBody,
    counters: Arc<UpstreamCounters>,
}

impl std::fmt::Debug for CountedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CountedBody").finish_non_exhaustive()
    }
}

impl CountedBody {
    /// Counts what `inner` yields into `counters`.
    pub fn wrap(inner: NarBody, counters: Arc<UpstreamCounters>) -> NarBody {
        Box::pin(Self { inner, counters })
    }
}

impl AsyncRead for CountedBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.inner.as_mut().poll_read(cx, buf);
        let n = buf.filled().len() - before;
        metrics::add(&self.counters.bytes, n as u64);
        polled
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn status() -> Result<(), UpstreamError> {
        Err(UpstreamError::Status { url: "u".into(), status: 500 })
    }

    #[test]
    fn requests_count_once_and_failures_once() {
        let c = UpstreamCounters::default();
        c.start().finish(&Ok::<(), UpstreamError>(()));
        c.start().finish(&status());
        drop(c.start());
        let s = c.snapshot("http://x", true);
        let n = |k: &str| s.figures[k];
        assert_eq!((n("requests"), n("errors")), (Value::Count(3), Value::Count(2)));
        assert_eq!(n("online"), Value::Flag(true));
        assert!(matches!(n("latency_ms_p50"), Value::Real(ms) if ms > 0.0), "two answers timed");
    }

    #[tokio::test]
    async fn a_counted_body_counts_every_byte_it_yields() {
        let c = Arc::new(UpstreamCounters::default());
        let inner: NarBody = Box::pin(std::io::Cursor::new(vec![7u8; 100_000]));
        let mut body = CountedBody::wrap(inner, c.clone());
        let mut out = Vec::new();
        body.read_to_end(&mut out).await.unwrap();
        assert_eq!(metrics::get(&c.bytes), 100_000);
    }
}
