//! Log set-up: tracing to stderr, plain (journald-friendly) when stderr is not a terminal; and
//! [`Throttle`], the rate limit on log lines that may repeat once per request.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::sync::{Mutex, lock};

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber with `filter` (RUST_LOG syntax). Safe to call twice.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|err| {
        eprintln!("storefs: invalid log filter {filter:?} ({err}); using \"info\"");
        EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// A limit on repeated log lines: at most `max` per `interval`. Lines past it are counted, not
/// written; the next line written after them says how many were left out (`suppressed`), so a
/// storm of 100,000 failed lookups costs a few lines per interval, not 100,000.
#[derive(Debug)]
pub struct Throttle {
    max: u32,
    interval: Duration,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl Throttle {
    /// At most `max` lines per `interval` (usable in a `static`).
    pub const fn new(max: u32, interval: Duration) -> Self {
        Self {
            max,
            interval,
            window: Mutex::new(Window { started: None, written: 0, suppressed: 0 }),
        }
    }

    /// Whether a line may be written now: `Some(k)` when it may, `k` being how many lines were
    /// left out since the last one written; None when this one is to be left out.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    /// [`Throttle::admit`] at `now`.
    pub fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut w = lock(&self.window);
        if w.started.is_none_or(|s| now.saturating_duration_since(s) >= self.interval) {
            w.started = Some(now);
            w.written = 0;
        }
        if w.written >= self.max {
            w.suppressed += 1;
            return None;
        }
        w.written += 1;
        Some(std::mem::take(&mut w.suppressed))
    }
}

/// `tracing::warn!` through a [`Throttle`]: written only when the throttle admits it, preceded
/// by a line saying how many similar lines were left out before it.
macro_rules! warn_throttled {
    ($throttle:expr, $($arg:tt)+) => {
        if let Some(suppressed) = $throttle.admit() {
            if suppressed > 0 {
                tracing::warn!(suppressed, "similar lines suppressed by the log rate limit");
            }
            tracing::warn!($($arg)+);
        }
    };
}
pub(crate) use warn_throttled;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_writes_max_lines_per_interval_then_counts_the_rest() {
        let t = Throttle::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let written: Vec<_> = (0..100_000).filter_map(|_| t.admit_at(t0)).collect();
        assert_eq!(written, [0, 0, 0], "three lines, nothing left out before them");
        // The next interval: the first line carries the count of those left out.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(t.admit_at(later), Some(100_000 - 3));
        assert_eq!(t.admit_at(later), Some(0));
    }
}
