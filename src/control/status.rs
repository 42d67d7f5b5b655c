//! What the daemon is and does, beside its counters: version, pid, state, uptime, mountpoint
//! and cache directory, as `storefs stats` shows them ([`DaemonInfo::status`]).

use std::path::PathBuf;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::protocol::{DaemonState, DaemonStatus};
use crate::sync::{AtomicBool, Ordering};

/// The daemon's facts, built once by the composition root; only the state changes.
#[derive(Debug)]
pub struct DaemonInfo {
    mountpoint: PathBuf,
    cache_dir: PathBuf,
    started: Instant,
    stopping: AtomicBool,
}

impl DaemonInfo {
    /// A daemon serving `mountpoint` from `cache_dir`, mounted now (uptime counts from here).
    pub fn new(mountpoint: PathBuf, cache_dir: PathBuf) -> Self {
        Self { mountpoint, cache_dir, started: Instant::now(), stopping: AtomicBool::new(false) }
    }

    /// From now on the daemon is stopping: unmounting, then closing its sockets.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The status now.
    pub fn status(&self) -> DaemonStatus {
        let state = if self.stopping.load(Ordering::Relaxed) {
            DaemonState::Stopping
        } else {
            DaemonState::Serving
        };
        DaemonStatus {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            state,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            mountpoint: self.mountpoint.display().to_string(),
            cache_dir: self.cache_dir.display().to_string(),
            timestamp: rfc3339(SystemTime::now()),
        }
    }
}

/// `time` as RFC 3339 in UTC to the second, e.g. `2026-12-05T02:36:23Z` (the epoch for a clock
/// set before 1970).
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01: the calendar repeats every 400 years
/// (146,097 days), so count eras from 0000-03-01, where a year ends with the leap day.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_matches_known_dates() {
        let cases = [
            ("epoch", 0, "1970-01-01T00:00:00Z"),
            ("leap_day_2000", 951_782_400, "2000-02-29T00:00:00Z"),
            ("last_second_of_2099", 4_102_444_799, "2099-12-31T23:59:59Z"),
            ("a_december_afternoon", 1_796_438_183, "2026-12-05T02:36:23Z"),
        ];
        for (name, secs, want) in cases {
            assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(secs)), want, "{name}");
        }
        assert_eq!(rfc3339(UNIX_EPOCH - Duration::from_secs(1)), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn status_shows_the_facts_and_the_state() {
        let info = DaemonInfo::new("/nix/store".into(), "/var/cache/storefs".into());
        let s = info.status();
        assert_eq!(s.state, DaemonState::Serving);
        assert_eq!(
            (s.mountpoint.as_str(), s.cache_dir.as_str()),
            ("/nix/store", "/var/cache/storefs")
        );
        assert_eq!(s.pid, std::process::id());
        info.set_stopping();
        let later = info.status();
        assert_eq!(later.state, DaemonState::Stopping);
        assert!(later.uptime_seconds >= s.uptime_seconds);
    }
}
