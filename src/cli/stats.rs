//! `storefs stats`: ask the running daemon for its counters and print them as a table (like
//! `cvmfs_config stat`) or as JSON, once or every few seconds.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::{EXIT_RUNTIME, EXIT_USAGE};
use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::control::client::{Client, ClientError};
use crate::control::protocol::Request;
use crate::metrics::{Format, METRICS, Shown, Snapshot, Source, Value};

/// Arguments of `storefs stats`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  storefs stats\n  storefs stats --json | jq .hit_rate\n  \
    storefs stats --watch 5\n\nThe figures are described in docs/METRICS.md.")]
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
    /// Its answer is not a snapshot.
    #[error("unexpected stats from the daemon: {0}")]
    Shape(#[from] serde_json::Error),
    /// Writing to stdout failed.
    #[error("cannot write: {0}")]
    Output(#[from] std::io::Error),
}

/// Runs `storefs stats`.
pub fn run(args: &StatsArgs) -> ExitCode {
    if args.watch == Some(0) {
        eprintln!("storefs: --watch needs at least 1 second");
        return ExitCode::from(EXIT_USAGE);
    }
    match print(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("storefs: {err}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn print(args: &StatsArgs) -> Result<(), StatsError> {
    let mut client = Client::connect(&args.control_socket)?;
    let mut out = std::io::stdout().lock();
    loop {
        let value = client.request(&Request::Stats)?;
        if args.json {
            writeln!(out, "{value}")?;
        } else {
            let snap: Snapshot = serde_json::from_value(value)?;
            write!(out, "{}", table(&snap))?;
        }
        out.flush()?;
        match args.watch {
            Some(secs) => {
                std::thread::sleep(Duration::from_secs(secs));
                if !args.json {
                    writeln!(out)?;
                }
            }
            None => return Ok(()),
        }
    }
}

/// The human table, as `METRICS` lays it out: one line per daemon-wide figure, then one row per
/// substituter. A figure the daemon did not send (an older daemon) shows as `-`.
pub fn table(s: &Snapshot) -> String {
    let mut t = String::new();
    for m in METRICS {
        if let (Source::Daemon(key), Shown::Line(label, format)) = (m.source, m.shown) {
            let value = cell(format, s.figures.get(key), s);
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
    use crate::metrics::UpstreamSnapshot;

    #[test]
    fn table_shows_every_figure_and_upstream() {
        let mut snap = Snapshot::default();
        snap.set("hit_rate", 0.5);
        snap.set("lookups", 4);
        snap.set("cache_hits", 2);
        snap.set("bytes_downloaded", 3 * 1024 * 1024);
        snap.set("cache_bytes", 1024 * 1024);
        snap.set("cache_limit_bytes", 10 * 1024 * 1024);
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
        let t = table(&snap);
        for needle in [
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
    }
}
