//! Request rate limits: how many upstream requests may start per second, for the whole daemon
//! (`RequestLimiter`, taken by every HTTP try) and per key (`KeyedPace`, the cache's per-uid
//! limit on new fetches).
//!
//! Each limit is a token bucket kept as one instant (GCRA, the "generic cell rate algorithm"):
//! the theoretical arrival time of the next request. A request may start `burst - 1` intervals
//! before it; later ones wait their turn. A request whose turn is further away than the caller
//! may wait is refused at once and takes no turn, so a storm of refused requests does not push
//! everyone else's turns back. Pure bookkeeping under one short lock: callers pass the instant.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::sync::{Mutex, lock};

/// Longest wait for a turn when nothing else is configured.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(30);
/// Keys remembered by a [`KeyedPace`] before idle ones are forgotten.
const KEYS_BEFORE_PRUNING: usize = 4096;

/// A rate: `per_second` requests per second on average, up to `burst` at once. A
/// `per_second` of 0 means no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per second, on average; 0 turns the limit off.
    pub per_second: u32,
    /// Requests that may start at once after a quiet period (at least 1).
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const OFF: Self = Self { per_second: 0, burst: 1 };

    /// `per_second` with a burst of twice as many (at least 1); 0 is no limit.
    pub fn per_second(per_second: u32) -> Self {
        Self { per_second, burst: per_second.saturating_mul(2).max(1) }
    }

    /// Time between two requests at the average rate; None when unlimited.
    fn interval(&self) -> Option<Duration> {
        (self.per_second > 0).then(|| Duration::from_secs(1) / self.per_second)
    }

    /// How far ahead of its theoretical arrival a request may start (the burst).
    fn tolerance(&self, interval: Duration) -> Duration {
        interval.saturating_mul(self.burst.max(1) - 1)
    }

    /// Takes the next turn after theoretical arrival time `tat`: the wait before the request
    /// may start, or `Err(wait)` (and `tat` unchanged) when that wait exceeds `max_wait`.
    fn take_turn(
        &self,
        tat: &mut Option<Instant>,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Duration, Duration> {
        let Some(interval) = self.interval() else { return Ok(Duration::ZERO) };
        let arrival = tat.map_or(now, |t| t.max(now));
        let start = arrival.checked_sub(self.tolerance(interval)).map_or(now, |s| s.max(now));
        let wait = start - now;
        if wait > max_wait {
            return Err(wait);
        }
        *tat = Some(arrival + interval);
        Ok(wait)
    }
}

/// One rate limit over time; see the module doc.
#[derive(Debug)]
pub struct Pace {
    limit: RateLimit,
    tat: Mutex<Option<Instant>>,
}

impl Pace {
    /// A pace at `limit`.
    pub fn new(limit: RateLimit) -> Self {
        Self { limit, tat: Mutex::new(None) }
    }

    /// The wait before a request may start at `now`, its turn taken; `Err(wait)` without a
    /// turn when it would have to wait longer than `max_wait`.
    pub fn reserve(&self, now: Instant, max_wait: Duration) -> Result<Duration, Duration> {
        self.limit.take_turn(&mut lock(&self.tat), now, max_wait)
    }
}

/// A rate limit per key (a uid): each key has its own bucket. Keys idle long enough to be
/// back at a full burst are forgotten once many are remembered, so memory stays bounded.
#[derive(Debug)]
pub struct KeyedPace<K> {
    limit: RateLimit,
    tats: Mutex<HashMap<K, Instant>>,
}

impl<K: Eq + Hash + Copy> KeyedPace<K> {
    /// A pace at `limit` for every key.
    pub fn new(limit: RateLimit) -> Self {
        Self { limit, tats: Mutex::new(HashMap::new()) }
    }

    /// Like [`Pace::reserve`], for `key`'s bucket.
    pub fn reserve(&self, key: K, now: Instant, max_wait: Duration) -> Result<Duration, Duration> {
        if self.limit.interval().is_none() {
            return Ok(Duration::ZERO);
        }
        let mut tats = lock(&self.tats);
        if tats.len() >= KEYS_BEFORE_PRUNING {
            // A key whose next arrival is past is as good as new.
            tats.retain(|_, tat| *tat > now);
        }
        let mut tat = tats.get(&key).copied();
        let verdict = self.limit.take_turn(&mut tat, now, max_wait);
        if let Some(tat) = tat {
            tats.insert(key, tat);
        }
        verdict
    }
}

/// The daemon-wide limit on upstream requests, shared by every HTTP substituter: each try of
/// each request takes a turn. A request that would wait longer than `max_wait` for its turn is
/// not sent.
#[derive(Debug)]
pub struct RequestLimiter {
    pace: Pace,
    max_wait: Duration,
}

impl Default for RequestLimiter {
    fn default() -> Self {
        Self::new(RateLimit::OFF, DEFAULT_MAX_WAIT)
    }
}

impl RequestLimiter {
    /// At most `limit`, waiting at most `max_wait` for a turn.
    pub fn new(limit: RateLimit, max_wait: Duration) -> Self {
        Self { pace: Pace::new(limit), max_wait }
    }

    /// The longest a request waits for its turn.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Waits for the next turn; `Err(wait)` at once when it is further away than `max_wait`.
    pub async fn turn(&self) -> Result<(), Duration> {
        let wait = self.pace.reserve(Instant::now(), self.max_wait)?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_starts_at_once_then_requests_wait_their_turn() {
        let pace = Pace::new(RateLimit { per_second: 10, burst: 3 });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(pace.reserve(t0, SEC), Ok(Duration::ZERO));
        }
        assert_eq!(pace.reserve(t0, SEC), Ok(100 * MS));
        assert_eq!(pace.reserve(t0, SEC), Ok(200 * MS));
        // A quiet second refills the burst.
        let t1 = t0 + 2 * SEC;
        for _ in 0..3 {
            assert_eq!(pace.reserve(t1, SEC), Ok(Duration::ZERO));
        }
    }

    #[test]
    fn a_request_that_would_wait_too_long_is_refused_and_takes_no_turn() {
        let pace = Pace::new(RateLimit { per_second: 10, burst: 1 });
        let t0 = Instant::now();
        assert_eq!(pace.reserve(t0, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(pace.reserve(t0, 50 * MS), Err(100 * MS));
        assert_eq!(pace.reserve(t0, 50 * MS), Err(100 * MS), "the refusal took no turn");
        assert_eq!(pace.reserve(t0, 100 * MS), Ok(100 * MS));
    }

    #[test]
    fn the_average_rate_holds_over_a_long_storm() {
        let limit = RateLimit::per_second(50);
        let pace = Pace::new(limit);
        let t0 = Instant::now();
        // 10,000 requests offered at once, each willing to wait 10 s.
        let started = (0..10_000).filter(|_| pace.reserve(t0, 10 * SEC).is_ok()).count();
        // Within 10 s: the burst, then 50 a second.
        assert_eq!(started, 100 + 500, "burst 100, then 50/s over 10 s");
        // Later requests are not held back by the refused ones.
        assert_eq!(pace.reserve(t0 + 11 * SEC, SEC), Ok(Duration::ZERO));
    }

    #[test]
    fn off_never_waits() {
        let pace = Pace::new(RateLimit::OFF);
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(pace.reserve(t0, Duration::ZERO), Ok(Duration::ZERO));
        }
        assert_eq!(RateLimit::per_second(0), RateLimit { per_second: 0, burst: 1 });
    }

    #[test]
    fn each_key_has_its_own_bucket() {
        let pace = KeyedPace::new(RateLimit { per_second: 1, burst: 1 });
        let t0 = Instant::now();
        assert_eq!(pace.reserve(1000u32, t0, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(pace.reserve(1000, t0, Duration::ZERO), Err(SEC));
        assert_eq!(pace.reserve(0, t0, Duration::ZERO), Ok(Duration::ZERO), "another uid");
    }

    #[test]
    fn idle_keys_are_forgotten_when_many_are_remembered() {
        let pace = KeyedPace::new(RateLimit { per_second: 1, burst: 1 });
        let t0 = Instant::now();
        for uid in 0..KEYS_BEFORE_PRUNING as u32 {
            pace.reserve(uid, t0, Duration::ZERO).unwrap();
        }
        pace.reserve(u32::MAX, t0 + 2 * SEC, Duration::ZERO).unwrap();
        assert_eq!(lock(&pace.tats).len(), 1, "only the newest key is remembered");
    }
}
