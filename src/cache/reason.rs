//! Why a reader got no path, in a few words a metric can carry as a label: the reason of each
//! failed lookup, counted by [`FailureCounts`], and the two failures a reader meets without any
//! substituter's fault ([`ReaderLimit`]: the fetch timeout, the per-uid rate).

use std::time::Duration;

use super::fetch::{DownloadError, Rejected};
use super::unpack::UnpackError;
use super::{CacheError, Cause};
use crate::metrics;
use crate::upstream::UpstreamError;

/// A limit a reader ran into.
#[derive(Debug, thiserror::Error)]
pub enum ReaderLimit {
    /// No answer within `--fetch-timeout`.
    #[error("no answer within the fetch timeout of {} s (--fetch-timeout)", .0.as_secs())]
    Deadline(Duration),
    /// The reader's uid starts fetches faster than `--uid-rate`.
    #[error("uid {uid} starts fetches faster than --uid-rate allows (next turn in {} ms)",
            wait.as_millis())]
    UidRate {
        /// The reader's uid.
        uid: u32,
        /// How long it would have had to wait for its turn.
        wait: Duration,
    },
}

impl CacheError {
    /// Whether the reader was refused only because its uid had no turn left under
    /// `--uid-rate`: nothing was asked upstream, and trying again later may succeed.
    pub fn is_uid_refusal(&self) -> bool {
        let CacheError::Unavailable { failures, .. } = self else { return false };
        let refusal = |f: &super::Failure| {
            matches!(f.cause.find::<ReaderLimit>(), Some(ReaderLimit::UidRate { .. }))
        };
        !failures.0.is_empty() && failures.0.iter().all(refusal)
    }
}

/// The reason a lookup failed, as the `reason` label of `storefs_lookup_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// A narinfo without a trusted signature.
    Untrusted,
    /// Bytes that did not verify: NarHash, NarSize, NAR grammar, another NarHash than before.
    Hash,
    /// The local disk (full, failing) or a path too large for it.
    Local,
    /// Transport, HTTP status, a cache marked down, a document that does not parse.
    Network,
    /// The upstream rate limit, a cache's 429, or `--uid-rate`.
    RateLimited,
    /// `--fetch-timeout`.
    Timeout,
}

impl FailureReason {
    /// Every reason, in the order a failure with several is named by the first that applies.
    pub const ALL: [FailureReason; 6] = [
        FailureReason::Untrusted,
        FailureReason::Hash,
        FailureReason::Local,
        FailureReason::Timeout,
        FailureReason::RateLimited,
        FailureReason::Network,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            FailureReason::Untrusted => "untrusted",
            FailureReason::Hash => "hash",
            FailureReason::Local => "local",
            FailureReason::Network => "network",
            FailureReason::RateLimited => "rate_limited",
            FailureReason::Timeout => "timeout",
        }
    }

    /// Why `err` failed a reader; None when it is no failure (absent, a prefetch giving up).
    pub fn of(err: &CacheError) -> Option<Self> {
        match err {
            CacheError::NotFound(_) | CacheError::NoRoomToPrefetch(_) => None,
            CacheError::Unavailable { failures, .. } => {
                let each: Vec<_> = failures.0.iter().map(|f| Self::of_cause(&f.cause)).collect();
                Some(Self::ALL.into_iter().find(|r| each.contains(r)).unwrap_or(Self::Network))
            }
            // Every other error is about this host's disk: a path too large for it, no room
            // left, a pinned path, a local failure.
            _ => Some(FailureReason::Local),
        }
    }

    /// The reason of one substituter's failure.
    fn of_cause(cause: &Cause) -> Self {
        if let Some(limit) = cause.find::<ReaderLimit>() {
            return match limit {
                ReaderLimit::Deadline(_) => FailureReason::Timeout,
                ReaderLimit::UidRate { .. } => FailureReason::RateLimited,
            };
        }
        if let Some(rejected) = cause.find::<Rejected>() {
            return match rejected {
                Rejected::Untrusted(_) => FailureReason::Untrusted,
                Rejected::OtherNarHash { .. } => FailureReason::Hash,
            };
        }
        if let Some(DownloadError::Local { .. } | DownloadError::NoSpace { .. }) = cause.find() {
            return FailureReason::Local;
        }
        if let Some(unpack) = cause.find::<UnpackError>() {
            return match (unpack.is_transport(), unpack.is_local()) {
                (_, true) => FailureReason::Local,
                (true, _) => FailureReason::Network,
                _ => FailureReason::Hash,
            };
        }
        match cause.find::<UpstreamError>() {
            Some(UpstreamError::RateLimited { .. }) => FailureReason::RateLimited,
            Some(UpstreamError::Status { status: 429, .. }) => FailureReason::RateLimited,
            _ => FailureReason::Network,
        }
    }
}

metrics::counters! {
    /// Lookups and reads that got no path, by reason (`storefs_lookup_failures_total`).
    pub struct FailureCounts {
        /// A narinfo without a trusted signature.
        untrusted => "lookup_failures_untrusted",
        /// Bytes that did not verify.
        hash => "lookup_failures_hash",
        /// The local disk.
        local => "lookup_failures_local",
        /// Transport, status, a cache marked down.
        network => "lookup_failures_network",
        /// A rate limit.
        rate_limited => "lookup_failures_rate_limited",
        /// The fetch timeout.
        timeout => "lookup_failures_timeout",
    }
}

impl FailureCounts {
    /// Counts one failed lookup that ended with `err` (nothing when it is no failure).
    pub fn count(&self, err: &CacheError) {
        let Some(reason) = FailureReason::of(err) else { return };
        let counter = match reason {
            FailureReason::Untrusted => &self.untrusted,
            FailureReason::Hash => &self.hash,
            FailureReason::Local => &self.local,
            FailureReason::Network => &self.network,
            FailureReason::RateLimited => &self.rate_limited,
            FailureReason::Timeout => &self.timeout,
        };
        metrics::bump(counter);
    }
}

#[cfg(test)]
mod tests {
    use super::super::Failure;
    use super::super::error::Failures;
    use super::*;

    fn unavailable(causes: Vec<Cause>) -> CacheError {
        let failures = causes.into_iter().map(|cause| Failure { upstream: None, cause });
        CacheError::Unavailable { path: "p".into(), failures: Failures(failures.collect()) }
    }

    #[test]
    fn each_cause_has_its_reason_and_the_gravest_names_a_mixed_failure() {
        let status = |status| Cause::new(UpstreamError::Status { url: "u".into(), status });
        let deadline = Cause::new(ReaderLimit::Deadline(Duration::from_secs(1)));
        let uid = Cause::new(ReaderLimit::UidRate { uid: 7, wait: Duration::ZERO });
        let disk = Cause::new(DownloadError::Local(Cause::msg("EIO")));
        let other = Cause::new(Rejected::OtherNarHash {
            offered: crate::nix::hash::NarHash::from_digest([1; 32]),
            pinned: crate::nix::hash::NarHash::from_digest([2; 32]),
        });
        for (causes, want) in [
            (vec![status(503)], FailureReason::Network),
            (vec![status(429)], FailureReason::RateLimited),
            (vec![deadline], FailureReason::Timeout),
            (vec![uid], FailureReason::RateLimited),
            (vec![disk.clone(), status(500)], FailureReason::Local),
            (vec![status(500), other, disk], FailureReason::Hash),
        ] {
            assert_eq!(FailureReason::of(&unavailable(causes)), Some(want));
        }
        assert_eq!(FailureReason::of(&CacheError::NotFound("p".into())), None);
    }

    #[test]
    fn only_a_refusal_by_the_uid_rate_alone_is_a_uid_refusal() {
        let uid = || Cause::new(ReaderLimit::UidRate { uid: 7, wait: Duration::ZERO });
        let status = Cause::new(UpstreamError::Status { url: "u".into(), status: 429 });
        assert!(unavailable(vec![uid()]).is_uid_refusal());
        assert!(!unavailable(vec![uid(), status.clone()]).is_uid_refusal(), "upstream was asked");
        assert!(!unavailable(vec![status]).is_uid_refusal(), "a cache's 429 is no uid refusal");
        assert!(!unavailable(vec![]).is_uid_refusal());
        assert!(!CacheError::NotFound("p".into()).is_uid_refusal());
    }

    #[test]
    fn counts_go_under_their_reason() {
        let counts = FailureCounts::default();
        counts.count(&unavailable(vec![Cause::new(ReaderLimit::Deadline(Duration::ZERO))]));
        counts.count(&CacheError::NotFound("p".into()));
        let figures: Vec<_> = counts.figures().filter(|(_, n)| *n > 0).collect();
        assert_eq!(figures, [("lookup_failures_timeout", 1)]);
    }
}
