//! When and how long to wait before asking a failing cache again: which failures are transient,
//! exponential backoff with jitter, `Retry-After`, and a bound on the whole retry loop.
//! Pure policy: no I/O, no clock reads beyond what the caller passes in.
//!
//! Numbers follow Nix (`filetransfer.cc`): five tries, the first pause about 100 ms, doubling,
//! with jitter so that many clients do not retry in lock-step; 408, 429 and 5xx are retried,
//! every other 4xx is final.

use std::time::Duration;

use rand::Rng;

use super::UpstreamError;

/// Most tries of one request, the first included (Nix: 5).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Pause before the second try; each later pause doubles.
pub const DEFAULT_INITIAL_DELAY: Duration = Duration::from_millis(100);
/// Longest single pause, `Retry-After` included: a cache asking for more is treated as down.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(5);

/// How one request is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most tries, the first included; 1 means no retry.
    pub max_attempts: u32,
    /// Pause before the second try (before jitter).
    pub initial_delay: Duration,
    /// Longest single pause, also the cap on an honoured `Retry-After`.
    pub max_delay: Duration,
    /// No new try starts once this much time has passed since the first one started, so a dead
    /// cache costs about one budget (plus one try), not `max_attempts` timeouts.
    pub budget: Duration,
}

impl RetryPolicy {
    /// Nix's numbers, with `budget` for the whole loop (the daemon uses the connect timeout).
    pub fn with_budget(budget: Duration) -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_delay: DEFAULT_INITIAL_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            budget,
        }
    }

    /// One try only (probing a cache that was down).
    pub fn once() -> Self {
        Self { max_attempts: 1, ..Self::with_budget(Duration::ZERO) }
    }

    /// The pause after failed try number `attempt` (1-based), or `None` to give up now.
    ///
    /// `elapsed` is the time since the first try started; `retry_after` is the server's
    /// `Retry-After`, if it sent one; `jitter` is a number in `[0, 1)`.
    pub fn next_delay(
        &self,
        attempt: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let doubled = self.initial_delay.saturating_mul(1 << attempt.saturating_sub(1).min(16));
        // Up to half again as long, at random.
        let backoff = doubled.mul_f64(1.0 + jitter.clamp(0.0, 1.0) / 2.0);
        let delay = match retry_after {
            Some(asked) if asked > self.max_delay => return None,
            Some(asked) => backoff.max(asked),
            None => backoff,
        }
        .min(self.max_delay);
        (elapsed + delay < self.budget).then_some(delay)
    }

    /// Like [`RetryPolicy::next_delay`] with fresh random jitter.
    pub fn next_delay_jittered(
        &self,
        attempt: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
    ) -> Option<Duration> {
        let jitter = rand::thread_rng().r#gen::<f64>();
        self.next_delay(attempt, elapsed, retry_after, jitter)
    }
}

/// Whether an HTTP status is worth asking again: 408, 429 and every 5xx.
pub fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Whether `err` is transient: worth a retry, and a sign the cache itself is failing.
///
/// Transport failures (refused, reset, timeouts, a body cut short) and retryable statuses are;
/// a refused redirect, a bad document, an unwanted status (401, 404 of a NAR) are not: asking
/// again would get the same answer.
pub fn is_transient(err: &UpstreamError) -> bool {
    match err {
        UpstreamError::Transport { source, .. } => !source.is_redirect() && !source.is_builder(),
        UpstreamError::Status { status, .. } => is_retryable_status(*status),
        UpstreamError::Down { .. }
        | UpstreamError::RateLimited { .. }
        | UpstreamError::TooLarge { .. }
        | UpstreamError::NarInfo { .. }
        | UpstreamError::CacheInfo { .. }
        | UpstreamError::ForeignNarUrl { .. }
        | UpstreamError::NoRanges { .. }
        | UpstreamError::BadRange { .. }
        | UpstreamError::File { .. }
        | UpstreamError::BadBaseUrl { .. } => false,
    }
}

/// Parses a `Retry-After` value in delta-seconds (`120`). The HTTP-date form is not understood
/// and yields `None`, so the computed backoff applies.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> RetryPolicy {
        RetryPolicy::with_budget(Duration::from_secs(10))
    }

    #[test]
    fn backoff_doubles_from_100ms_with_up_to_half_again_of_jitter() {
        let p = policy();
        for (attempt, base_ms) in [(1, 100), (2, 200), (3, 400), (4, 800)] {
            assert_eq!(p.next_delay(attempt, Duration::ZERO, None, 0.0), Some(base_ms * MS));
            let most = p.next_delay(attempt, Duration::ZERO, None, 0.999).unwrap();
            assert!(most > base_ms * MS && most < base_ms * 3 / 2 * MS, "{attempt}: {most:?}");
        }
    }

    #[test]
    fn gives_up_after_the_last_attempt() {
        assert_eq!(policy().next_delay(DEFAULT_MAX_ATTEMPTS, Duration::ZERO, None, 0.0), None);
        assert_eq!(RetryPolicy::once().next_delay(1, Duration::ZERO, None, 0.0), None);
    }

    #[test]
    fn gives_up_when_the_pause_would_end_past_the_budget() {
        let p = RetryPolicy::with_budget(Duration::from_secs(1));
        assert_eq!(p.next_delay(1, 800 * MS, None, 0.0), Some(100 * MS));
        assert_eq!(p.next_delay(1, 950 * MS, None, 0.0), None);
        assert_eq!(p.next_delay(1, Duration::from_secs(3), None, 0.0), None);
    }

    #[test]
    fn honours_retry_after_up_to_the_cap() {
        let p = policy();
        let asked = Duration::from_secs(2);
        assert_eq!(p.next_delay(1, Duration::ZERO, Some(asked), 0.0), Some(asked));
        // A shorter Retry-After does not shorten the backoff.
        assert_eq!(p.next_delay(3, Duration::ZERO, Some(MS), 0.0), Some(400 * MS));
        // Asking for longer than the cap: give up now rather than hang the reader.
        assert_eq!(p.next_delay(1, Duration::ZERO, Some(Duration::from_secs(60)), 0.0), None);
    }

    #[test]
    fn classifies_statuses() {
        for (status, retry) in [
            (408, true),
            (429, true),
            (500, true),
            (502, true),
            (503, true),
            (599, true),
            (400, false),
            (401, false),
            (403, false),
            (404, false),
            (410, false),
        ] {
            assert_eq!(is_retryable_status(status), retry, "{status}");
            let err = UpstreamError::Status { url: "u".into(), status };
            assert_eq!(is_transient(&err), retry, "{status}");
        }
    }

    #[test]
    fn parses_retry_after_seconds_only() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("0"), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}
