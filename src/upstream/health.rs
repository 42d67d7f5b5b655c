//! Per-cache health: a cache that keeps failing is marked down for a backoff period and skipped
//! without any network request; after the period the next request is a single probe, and its
//! outcome marks the cache up or down again.
//!
//! Nix disables a failing binary cache for 60 s (`http-binary-cache-store.cc`); CVMFS does the
//! same per host. Without it, every lookup while a cache is dead would wait for its timeouts.

use std::time::{Duration, Instant};

use crate::sync::{Mutex, lock};

/// How long a failing cache is skipped by default (Nix: 60 s).
pub const DEFAULT_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Up,
    /// Skipped until the instant; the first request after it becomes the probe.
    Down {
        until: Instant,
    },
    /// One request is finding out whether the cache is back; the others keep skipping it.
    Probing {
        since: Instant,
    },
}

/// What a request may do now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead, with retries.
    Normal,
    /// Go ahead with a single try: this request is the probe of a cache that was down.
    Probe,
    /// Do not touch the network; the cache is down until the given instant (or, while another
    /// request probes it, until that probe ends).
    Skip {
        /// When the cache will be tried again.
        until: Instant,
    },
}

/// The health of one cache. Cheap to consult: one short lock, no I/O.
#[derive(Debug)]
pub struct HostHealth {
    backoff: Duration,
    state: Mutex<State>,
}

impl HostHealth {
    /// A healthy cache that, once it fails, is skipped for `backoff`.
    pub fn new(backoff: Duration) -> Self {
        Self { backoff, state: Mutex::new(State::Up) }
    }

    /// The backoff period.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// Decides whether a request may go out now. A `Probe` must be followed by
    /// [`HostHealth::succeeded`] or [`HostHealth::failed`]; a probe that ends without either
    /// (dropped) is undone by [`HostHealth::probe_abandoned`].
    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = lock(&self.state);
        match *state {
            State::Up => Admission::Normal,
            State::Down { until } if now < until => Admission::Skip { until },
            State::Down { .. } => {
                *state = State::Probing { since: now };
                Admission::Probe
            }
            State::Probing { since } => Admission::Skip { until: since + self.backoff },
        }
    }

    /// The cache answered (any HTTP answer that is not a server failure). Returns true when this
    /// brought it back up.
    pub fn succeeded(&self) -> bool {
        let mut state = lock(&self.state);
        let was_down = *state != State::Up;
        *state = State::Up;
        was_down
    }

    /// The cache failed after its retries: skip it until `now + backoff`. Returns that instant and
    /// whether the cache was up before (so the transition is logged once).
    pub fn failed(&self, now: Instant) -> (Instant, bool) {
        let mut state = lock(&self.state);
        let was_up = *state == State::Up;
        let until = now + self.backoff;
        *state = State::Down { until };
        (until, was_up)
    }

    /// A probe ended without a verdict (its request was cancelled): let the next request probe.
    pub fn probe_abandoned(&self, now: Instant) {
        let mut state = lock(&self.state);
        if matches!(*state, State::Probing { .. }) {
            *state = State::Down { until: now };
        }
    }

    /// Whether the cache is up now (for tests and status output).
    pub fn is_up(&self) -> bool {
        *lock(&self.state) == State::Up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_failed_cache_is_skipped_for_the_backoff_then_probed_once() {
        let h = HostHealth::new(10 * SEC);
        let t0 = Instant::now();
        assert_eq!(h.admit(t0), Admission::Normal);
        let (until, was_up) = h.failed(t0);
        assert!(was_up);
        assert_eq!(until, t0 + 10 * SEC);
        assert_eq!(h.admit(t0 + 9 * SEC), Admission::Skip { until });
        assert_eq!(h.admit(t0 + 10 * SEC), Admission::Probe);
        // While the probe runs, others keep skipping.
        assert!(matches!(h.admit(t0 + 10 * SEC), Admission::Skip { .. }));
        assert!(h.succeeded(), "the probe brought it back");
        assert_eq!(h.admit(t0 + 11 * SEC), Admission::Normal);
        assert!(!h.succeeded(), "already up");
    }

    #[test]
    fn a_failed_probe_starts_a_new_backoff() {
        let h = HostHealth::new(10 * SEC);
        let t0 = Instant::now();
        h.failed(t0);
        assert_eq!(h.admit(t0 + 10 * SEC), Admission::Probe);
        let (until, was_up) = h.failed(t0 + 11 * SEC);
        assert!(!was_up);
        assert_eq!(until, t0 + 21 * SEC);
        assert_eq!(h.admit(t0 + 20 * SEC), Admission::Skip { until });
        assert!(!h.is_up());
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_request_probe() {
        let h = HostHealth::new(10 * SEC);
        let t0 = Instant::now();
        h.failed(t0);
        assert_eq!(h.admit(t0 + 10 * SEC), Admission::Probe);
        h.probe_abandoned(t0 + 10 * SEC);
        assert_eq!(h.admit(t0 + 10 * SEC), Admission::Probe);
    }
}
