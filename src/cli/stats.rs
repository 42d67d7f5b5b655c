//! `storefs stats`: ask the running daemon for its counters and print them as a table (like
//! `cvmfs_config stat`) or as JSON, once or every few seconds.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::output::Output;
use super::{EXIT_RUNTIME, EXIT_USAGE};
use crate::config::DEFAULT_CONTROL_SOCKET;
use crate::control::client::{Client, ClientError};
use crate::metrics::Snapshot;

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
    loop {
        let snap = client.stats()?;
        if args.json {
            o.out(format_args!("{}\n", serde_json::to_string(&snap)?))?;
        } else {
            o.out(format_args!("{}", table(&snap)))?;
        }
        match args.watch {
            Some(secs) if !o.closed() => {
                std::thread::sleep(Duration::from_secs(secs));
                if !args.json {
                    o.out(format_args!("\n"))?;
                }
            }
            _ => return Ok(()),
        }
    }
}

/// The human table: one figure per line, then one line per upstream.
pub fn table(s: &Snapshot) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    let rows = [
        ("hit rate", format!("{:.1}%", s.hit_rate * 100.0)),
        ("lookups", s.lookups.to_string()),
        ("cache hits", s.cache_hits.to_string()),
        ("negative hits", s.negative_hits.to_string()),
        ("narinfo requests", s.narinfo_requests.to_string()),
        ("NAR downloads", s.nar_downloads.to_string()),
        ("downloaded", format!("{} ({} bytes)", mib(s.bytes_downloaded), s.bytes_downloaded)),
        ("served", format!("{} ({} bytes)", mib(s.bytes_served), s.bytes_served)),
        ("cache", format!("{} of {}", mib(s.cache_bytes), mib(s.cache_limit_bytes))),
        ("cached paths", s.cached_paths.to_string()),
        ("pinned paths", s.pinned_paths.to_string()),
        ("evictions", s.evictions.to_string()),
        ("in flight", s.in_flight.to_string()),
        ("prefetched paths", s.prefetched_paths.to_string()),
        ("prefetch skipped", s.prefetch_skipped.to_string()),
        ("fetch failures", s.fetch_failures.to_string()),
        ("prefetch failures", s.prefetch_failures.to_string()),
        ("verify failures", s.verify_failures.to_string()),
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
    use crate::metrics::UpstreamSnapshot;

    #[test]
    fn table_shows_every_figure_and_upstream() {
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
        let t = table(&snap);
        for needle in ["50.0%", "lookups            4", "3.0 MiB", "NO", "https://cache.example"] {
            assert!(t.contains(needle), "{needle:?} missing:\n{t}");
        }
    }
}
