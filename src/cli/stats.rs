//! `storefs stats`: ask the running daemon for its status and counters and print them as a
//! table (like `cvmfs_config stat`) or as JSON, once or every few seconds. With `--watch`, each
//! table after the first also shows the rate of each counter over the interval (from the
//! daemon's monotonic uptime), and on a terminal it replaces the previous one.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::output::Output;
use super::{EXIT_RUNTIME, EXIT_USAGE};
use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::control::client::{Client, ClientError};
use crate::control::protocol::StatsReply;

/// Arguments of `storefs stats`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  storefs stats\n  storefs stats --json | jq .hit_rate\n  \
    storefs stats --watch 5\n\nThe figures are described in docs/METRICS.md; the status fields \
    (version, pid, state, uptime_seconds, mountpoint, cache_dir, timestamp) in \
    docs/CONFIGURATION.md.")]
pub struct StatsArgs {
    /// Print JSON (one object per line with --watch) instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Print again every SECONDS until interrupted.
    #[arg(long, value_name = "SECONDS")]
    pub watch: Option<u64>,

    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

/// Why `stats` failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The daemon could not be asked.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The snapshot cannot be printed as JSON.
    #[error("cannot encode the stats: {0}")]
    Encode(#[from] serde_json::Error),
    /// Writing to stdout failed (not a closed pipe: that ends `stats` quietly).
    #[error("cannot write: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `storefs stats`.
pub fn run(args: &StatsArgs) -> ExitCode {
    let mut o = Output::new();
    if args.watch == Some(0) {
        o.note(format_args!("storefs: --watch needs at least 1 second, got 0\n"));
        return ExitCode::from(EXIT_USAGE);
    }
    match print(args, &mut o) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            o.note(format_args!("storefs: {err}\n"));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Prints once, or with `--watch` until the reader of stdout goes away.
fn print(args: &StatsArgs, o: &mut Output) -> Result<(), StatsError> {
    let mut client = Client::connect(&args.control_socket)?;
    // A table that replaces the last one on a terminal; appended (a blank line between) else.
    let redraw = args.watch.is_some() && !args.json && std::io::stdout().is_terminal();
    let mut previous: Option<StatsReply> = None;
    loop {
        let now = client.stats()?;
        if args.json {
            o.out(format_args!("{}\n", serde_json::to_string(&now)?))?;
        } else {
            if redraw {
                o.out(format_args!("\x1b[H\x1b[2J"))?;
            }
            o.out(format_args!("{}", table(&now, previous.as_ref())))?;
        }
        match args.watch {
            Some(secs) if !o.closed() => {
                std::thread::sleep(Duration::from_secs(secs));
                if !args.json && !redraw {
                    o.out(format_args!("\n"))?;
                }
            }
            _ => return Ok(()),
        }
        previous = Some(now);
    }
}

/// The interval between two answers of the same daemon, in seconds; `None` for the first
/// table, or when the daemon changed.
fn interval<'a>(now: &StatsReply, before: Option<&'a StatsReply>) -> Option<(f64, &'a StatsReply)> {
    let before = before?;
    let dt = now.status.uptime_seconds - before.status.uptime_seconds;
    (before.status.pid == now.status.pid && dt > 0.0).then_some((dt, before))
}

/// `1d 02h 03m 04s`, leading zero units left out.
fn human_duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m {s:02}s"),
        _ => format!("{d}d {h:02}h {m:02}m {s:02}s"),
    }
}

/// The human table: the daemon's status, one figure per line (with its rate over the interval
/// since `before`, if given), then one line per upstream.
pub fn table(now: &StatsReply, before: Option<&StatsReply>) -> String {
    let (st, s) = (&now.status, &now.counters);
    let span = interval(now, before);
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    // A counter's value, and its rate over the interval when there is one.
    let count = |value: u64, pick: fn(&StatsReply) -> u64| match span {
        Some((dt, b)) if value >= pick(b) => {
            format!("{value}  +{:.1}/s", (value - pick(b)) as f64 / dt)
        }
        _ => value.to_string(),
    };
    let bytes = |value: u64, pick: fn(&StatsReply) -> u64| {
        let total = format!("{} ({value} bytes)", mib(value));
        match span {
            Some((dt, b)) if value >= pick(b) => {
                format!("{total}  {:.1} MiB/s", (value - pick(b)) as f64 / dt / (1024.0 * 1024.0))
            }
            _ => total,
        }
    };
    let hit_rate = match span {
        Some((_, b)) if s.lookups > b.counters.lookups => format!(
            "{:.1}%  {:.1}% this interval",
            s.hit_rate * 100.0,
            (s.cache_hits.saturating_sub(b.counters.cache_hits)) as f64 * 100.0
                / (s.lookups - b.counters.lookups) as f64
        ),
        _ => format!("{:.1}%", s.hit_rate * 100.0),
    };
    let rows = [
        ("storefs", format!("{}, pid {}, {}", st.version, st.pid, st.state)),
        ("uptime", human_duration(st.uptime_seconds)),
        ("time", st.timestamp.clone()),
        ("mountpoint", st.mountpoint.clone()),
        ("cache directory", st.cache_dir.clone()),
        ("hit rate", hit_rate),
        ("lookups", count(s.lookups, |r| r.counters.lookups)),
        ("cache hits", count(s.cache_hits, |r| r.counters.cache_hits)),
        ("negative hits", count(s.negative_hits, |r| r.counters.negative_hits)),
        ("narinfo requests", count(s.narinfo_requests, |r| r.counters.narinfo_requests)),
        ("NAR downloads", count(s.nar_downloads, |r| r.counters.nar_downloads)),
        ("downloaded", bytes(s.bytes_downloaded, |r| r.counters.bytes_downloaded)),
        ("served", bytes(s.bytes_served, |r| r.counters.bytes_served)),
        ("cache", format!("{} of {}", mib(s.cache_bytes), mib(s.cache_limit_bytes))),
        ("cached paths", s.cached_paths.to_string()),
        ("pinned paths", s.pinned_paths.to_string()),
        ("evictions", count(s.evictions, |r| r.counters.evictions)),
        ("in flight", s.in_flight.to_string()),
        ("prefetched paths", count(s.prefetched_paths, |r| r.counters.prefetched_paths)),
        ("prefetch skipped", count(s.prefetch_skipped, |r| r.counters.prefetch_skipped)),
        ("fetch failures", count(s.fetch_failures, |r| r.counters.fetch_failures)),
        ("prefetch failures", count(s.prefetch_failures, |r| r.counters.prefetch_failures)),
        ("verify failures", count(s.verify_failures, |r| r.counters.verify_failures)),
    ];
    let mut t = String::new();
    for (name, value) in rows {
        t.push_str(&format!("{name:<18} {value}\n"));
    }
    t.push_str(&format!(
        "\n{:<8} {:>9} {:>7} {:>12} {:>9}  {}\n",
        "ONLINE", "REQUESTS", "ERRORS", "BYTES", "P50(ms)", "UPSTREAM"
    ));
    for u in &s.upstreams {
        let p50 = u.latency_ms_p50.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.0}"));
        let online = if u.online { "yes" } else { "NO" };
        t.push_str(&format!(
            "{online:<8} {:>9} {:>7} {:>12} {p50:>9}  {}\n",
            u.requests, u.errors, u.bytes, u.url
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{DaemonState, DaemonStatus};
    use crate::metrics::{Snapshot, UpstreamSnapshot};

    fn reply(uptime_seconds: f64, counters: Snapshot) -> StatsReply {
        StatsReply {
            status: DaemonStatus {
                version: "9.9.9".into(),
                pid: 42,
                state: DaemonState::Stopping,
                uptime_seconds,
                mountpoint: "/nix/store".into(),
                cache_dir: "/var/cache/storefs".into(),
                timestamp: "2026-12-05T02:36:23Z".into(),
            },
            counters,
        }
    }

    #[test]
    fn table_shows_the_status_every_figure_and_upstream() {
        let snap = Snapshot {
            hit_rate: 0.5,
            lookups: 4,
            cache_hits: 2,
            bytes_downloaded: 3 * 1024 * 1024,
            upstreams: vec![UpstreamSnapshot {
                url: "https://cache.example".into(),
                online: false,
                requests: 7,
                errors: 1,
                bytes: 99,
                latency_ms_p50: Some(25.0),
            }],
            ..Snapshot::default()
        };
        let t = table(&reply(3723.0, snap), None);
        for needle in [
            "9.9.9, pid 42, stopping",
            "uptime             1h 02m 03s",
            "2026-12-05T02:36:23Z",
            "mountpoint         /nix/store",
            "cache directory    /var/cache/storefs",
            "50.0%",
            "lookups            4\n",
            "3.0 MiB",
            "NO",
            "https://cache.example",
        ] {
            assert!(t.contains(needle), "{needle:?} missing:\n{t}");
        }
        assert!(!t.contains("/s\n"), "no rates without an interval:\n{t}");
    }

    #[test]
    fn watch_shows_rates_over_the_interval() {
        let before = reply(10.0, Snapshot { lookups: 4, cache_hits: 2, ..Snapshot::default() });
        let now = reply(
            12.0,
            Snapshot {
                hit_rate: 0.6,
                lookups: 10,
                cache_hits: 6,
                bytes_downloaded: 4 * 1024 * 1024,
                ..Snapshot::default()
            },
        );
        let t = table(&now, Some(&before));
        for needle in ["lookups            10  +3.0/s", "2.0 MiB/s", "60.0%  66.7% this interval"] {
            assert!(t.contains(needle), "{needle:?} missing:\n{t}");
        }
        // Another daemon (a restart between two answers) gets no rates.
        let other = StatsReply { status: DaemonStatus { pid: 43, ..now.status.clone() }, ..now };
        assert!(!table(&other, Some(&before)).contains("/s\n"));
    }

    #[test]
    fn durations_read_like_clocks() {
        let cases = [(0.4, "0s"), (59.0, "59s"), (61.0, "1m 01s"), (90_061.0, "1d 01h 01m 01s")];
        for (secs, want) in cases {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }
}
