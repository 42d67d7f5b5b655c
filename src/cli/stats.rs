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
use crate::metrics::{Format, Kind, METRICS, Shown, Snapshot, Source, Value};

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

/// The human table: the daemon's status, then every daemon-wide figure as `METRICS` lays it out
/// (a counter with its rate over the interval since `before`, if given), then one row per
/// substituter. A figure the daemon did not send (an older daemon) shows as `-`.
pub fn table(now: &StatsReply, before: Option<&StatsReply>) -> String {
    let (st, s) = (&now.status, &now.counters);
    let span = interval(now, before);
    let mut t = String::new();
    let status = [
        ("storefs", format!("{}, pid {}, {}", st.version, st.pid, st.state)),
        ("uptime", human_duration(st.uptime_seconds)),
        ("time", st.timestamp.clone()),
        ("mountpoint", st.mountpoint.clone()),
        ("cache directory", st.cache_dir.clone()),
    ];
    for (label, value) in status {
        t.push_str(&format!("{label:<18} {value}\n"));
    }
    for m in METRICS {
        if let (Source::Daemon(key), Shown::Line(label, format)) = (m.source, m.shown) {
            let mut value = cell(format, s.figures.get(key), s);
            if let Some((dt, b)) = span {
                value.push_str(&rate(m.kind, key, format, s, &b.counters, dt));
            }
            t.push_str(&format!("{label:<18} {value}\n"));
        }
    }
    let columns: Vec<(&str, Format, &str)> = METRICS
        .iter()
        .filter_map(|m| match (m.source, m.shown) {
            (Source::PerUpstream(key, _), Shown::Column(header, format)) => {
                Some((header, format, key))
            }
            _ => None,
        })
        .collect();
    let rows: Vec<Vec<String>> = s
        .upstreams
        .iter()
        .map(|u| columns.iter().map(|(_, f, key)| cell(*f, u.figures.get(*key), s)).collect())
        .collect();
    let width = |i: usize, header: &str| {
        rows.iter().map(|r| r[i].len()).chain([header.len()]).max().unwrap_or(0)
    };
    t.push('\n');
    for (i, (header, _, _)) in columns.iter().enumerate() {
        t.push_str(&format!("{header:>w$}  ", w = width(i, header)));
    }
    t.push_str("UPSTREAM\n");
    for (u, row) in s.upstreams.iter().zip(&rows) {
        for (i, value) in row.iter().enumerate() {
            t.push_str(&format!("{value:>w$}  ", w = width(i, columns[i].0)));
        }
        t.push_str(&u.url);
        t.push('\n');
    }
    t
}

/// What figure `key` did over the last `dt` seconds, to print after its value: `  +N/s` for a
/// counter, `  N MiB/s` for a byte counter, the interval's own hit rate for the hit rate; empty
/// for gauges and for a counter that went backwards (another daemon).
fn rate(
    kind: Kind,
    key: &str,
    format: Format,
    now: &Snapshot,
    before: &Snapshot,
    dt: f64,
) -> String {
    if key == "hit_rate" {
        let (lookups, hits) = ("lookups", "cache_hits");
        let delta = |k| now.count(k).zip(before.count(k)).map(|(n, b)| n.saturating_sub(b));
        return match (delta(lookups), delta(hits)) {
            (Some(l), Some(h)) if l > 0 => {
                format!("  {:.1}% this interval", h as f64 * 100.0 / l as f64)
            }
            _ => String::new(),
        };
    }
    let (Kind::Counter, Some(n), Some(b)) = (kind, now.count(key), before.count(key)) else {
        return String::new();
    };
    if n < b {
        return String::new();
    }
    let per_second = (n - b) as f64 / dt;
    match format {
        Format::Bytes => format!("  {:.1} MiB/s", per_second / (1024.0 * 1024.0)),
        _ => format!("  +{per_second:.1}/s"),
    }
}

/// One value as `format` prints it; `-` when absent.
fn cell(format: Format, value: Option<&Value>, s: &Snapshot) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    match (format, value) {
        (_, None | Some(Value::Absent)) => "-".to_owned(),
        (Format::Percent, Some(v)) => format!("{:.1}%", v.as_f64().unwrap_or(0.0) * 100.0),
        (Format::Millis, Some(v)) => format!("{:.0}", v.as_f64().unwrap_or(0.0)),
        (Format::YesNo, Some(Value::Flag(up))) => (if *up { "yes" } else { "NO" }).to_owned(),
        (Format::Bytes, Some(Value::Count(b))) => format!("{} ({b} bytes)", mib(*b)),
        (Format::BytesOf(limit), Some(Value::Count(b))) => {
            let of = s.count(limit).map_or_else(|| "-".to_owned(), mib);
            format!("{} of {of}", mib(*b))
        }
        (_, Some(Value::Count(n))) => n.to_string(),
        (_, Some(Value::Real(x))) => x.to_string(),
        (_, Some(Value::Flag(b))) => b.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::{DaemonState, DaemonStatus};
    use crate::metrics::UpstreamSnapshot;

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

    fn snapshot(figures: &[(&str, Value)]) -> Snapshot {
        let mut snap = Snapshot::default();
        for (key, value) in figures {
            snap.set(key, *value);
        }
        snap
    }

    #[test]
    fn table_shows_the_status_every_figure_and_upstream() {
        let mut snap = snapshot(&[
            ("hit_rate", Value::Real(0.5)),
            ("lookups", Value::Count(4)),
            ("cache_hits", Value::Count(2)),
            ("bytes_downloaded", Value::Count(3 * 1024 * 1024)),
            ("cache_bytes", Value::Count(1024 * 1024)),
            ("cache_limit_bytes", Value::Count(10 * 1024 * 1024)),
        ]);
        let mut up = UpstreamSnapshot { url: "https://cache.example".into(), ..Default::default() };
        for (key, value) in [
            ("online", Value::Flag(false)),
            ("requests", Value::Count(7)),
            ("errors", Value::Count(1)),
            ("bytes", Value::Count(99)),
            ("latency_ms_p50", Value::Real(25.0)),
        ] {
            up.figures.insert(key.into(), value);
        }
        snap.upstreams.push(up);
        let t = table(&reply(3723.0, snap), None);
        for needle in [
            "9.9.9, pid 42, stopping",
            "uptime             1h 02m 03s",
            "2026-12-05T02:36:23Z",
            "mountpoint         /nix/store",
            "cache directory    /var/cache/storefs",
            "hit rate           50.0%\n",
            "lookups            4\n",
            "downloaded         3.0 MiB (3145728 bytes)\n",
            "cache              1.0 MiB of 10.0 MiB\n",
            "evictions          -\n",
            "ONLINE  REQUESTS  ERRORS  BYTES  P50(ms)  UPSTREAM\n",
            "    NO         7       1     99       25  https://cache.example\n",
        ] {
            assert!(t.contains(needle), "{needle:?} missing:\n{t}");
        }
        assert!(!t.contains("/s\n"), "no rates without an interval:\n{t}");
    }

    #[test]
    fn watch_shows_rates_over_the_interval() {
        let before = reply(
            10.0,
            snapshot(&[
                ("lookups", Value::Count(4)),
                ("cache_hits", Value::Count(2)),
                ("bytes_downloaded", Value::Count(0)),
                ("cached_paths", Value::Count(1)),
            ]),
        );
        let now = reply(
            12.0,
            snapshot(&[
                ("hit_rate", Value::Real(0.6)),
                ("lookups", Value::Count(10)),
                ("cache_hits", Value::Count(6)),
                ("bytes_downloaded", Value::Count(4 * 1024 * 1024)),
                ("cached_paths", Value::Count(5)),
            ]),
        );
        let t = table(&now, Some(&before));
        for needle in [
            "lookups            10  +3.0/s",
            "2.0 MiB/s",
            "60.0%  66.7% this interval",
            "cached paths       5\n",
        ] {
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
