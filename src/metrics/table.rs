//! The one declaration of every figure storefs reports: [`METRICS`]. Each row says where the
//! value sits in a [`super::Snapshot`], how `storefs stats` prints it, and how Prometheus sees it;
//! the table in docs/METRICS.md is generated from it (see `doc_table`).

use Format::*;
use Kind::*;
use Shown::*;
use Source::*;

/// The Prometheus type of a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic; its name ends in `_total`.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, `_sum` and `_count` (buckets of `LATENCY_BUCKETS`).
    Histogram,
}

/// Where a metric's value sits in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    /// `figures[key]`: one daemon-wide value, printed by `stats --json` under `key`.
    Daemon(&'static str),
    /// `upstreams[].figures[key]` of each substituter (label `upstream`), times `scale` for
    /// Prometheus (whose units are seconds and bytes).
    PerUpstream(&'static str, f64),
    /// `figures["{key}_{value}"]` for each of `values`: one daemon-wide family with one
    /// sample per value of the label `label`, printed by `stats --json` under each such key.
    Labelled {
        /// The keys' common start.
        key: &'static str,
        /// The label's name.
        label: &'static str,
        /// The label's values, each a key's end.
        values: &'static [&'static str],
    },
    /// `histograms[key]`; only in `/metrics`.
    Latency(&'static str),
    /// Always 1, labelled `version` with the daemon's version; only in `/metrics`.
    Build,
}

/// How `storefs stats` prints a metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shown {
    /// Not in the human table (still in `--json` when it has a key).
    Hidden,
    /// A line `label value` of the daemon-wide part.
    Line(&'static str, Format),
    /// A column of the per-substituter part, under this header.
    Column(&'static str, Format),
}

/// How a value is printed in the human table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// An integer.
    Count,
    /// A ratio as a percentage.
    Percent,
    /// Bytes, in MiB and exactly.
    Bytes,
    /// Bytes in MiB, "of" the figure with this key (a limit).
    BytesOf(&'static str),
    /// Milliseconds, rounded; `-` when absent.
    Millis,
    /// `yes` or `NO`.
    YesNo,
}

/// One declared metric.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// The name in `/metrics` (a histogram's family name).
    pub name: &'static str,
    /// Its Prometheus type.
    pub kind: Kind,
    /// What one unit of it is, for docs/METRICS.md.
    pub unit: &'static str,
    /// Where its value sits in a snapshot.
    pub source: Source,
    /// How `storefs stats` prints it.
    pub shown: Shown,
    /// The Prometheus HELP text: one clause, no final period.
    pub help: &'static str,
}

/// Every metric, in the order `storefs stats` and `/metrics` show them. docs/METRICS.md lists
/// exactly these (a test compares); what each counts in detail is described there.
pub const METRICS: &[Metric] = &[
    Metric {
        name: "storefs_hit_rate",
        kind: Gauge,
        unit: "ratio 0–1",
        source: Daemon("hit_rate"),
        shown: Line("hit rate", Percent),
        help: "Lookups answered from the local cache / all lookups (0 before any)",
    },
    Metric {
        name: "storefs_lookups_total",
        kind: Counter,
        unit: "lookups",
        source: Daemon("lookups"),
        shown: Line("lookups", Count),
        help: "Lookups of valid store path names that reached the daemon",
    },
    Metric {
        name: "storefs_cache_hits_total",
        kind: Counter,
        unit: "lookups",
        source: Daemon("cache_hits"),
        shown: Line("cache hits", Count),
        help: "Lookups answered from the local cache",
    },
    Metric {
        name: "storefs_negative_hits_total",
        kind: Counter,
        unit: "lookups",
        source: Daemon("negative_hits"),
        shown: Line("negative hits", Count),
        help: "Lookups answered absent from the negative cache, with no request",
    },
    Metric {
        name: "storefs_narinfo_requests_total",
        kind: Counter,
        unit: "requests",
        source: Daemon("narinfo_requests"),
        shown: Line("narinfo requests", Count),
        help: "narinfo requests sent to substituters",
    },
    Metric {
        name: "storefs_nar_downloads_total",
        kind: Counter,
        unit: "downloads",
        source: Daemon("nar_downloads"),
        shown: Line("NAR downloads", Count),
        help: "NAR downloads started",
    },
    Metric {
        name: "storefs_bytes_downloaded_total",
        kind: Counter,
        unit: "bytes",
        source: Daemon("bytes_downloaded"),
        shown: Line("downloaded", Bytes),
        help: "Compressed NAR bytes received from substituters",
    },
    Metric {
        name: "storefs_bytes_served_total",
        kind: Counter,
        unit: "bytes",
        source: Daemon("bytes_served"),
        shown: Line("served", Bytes),
        help: "File bytes the daemon returned to readers",
    },
    Metric {
        name: "storefs_cache_bytes",
        kind: Gauge,
        unit: "bytes",
        source: Daemon("cache_bytes"),
        shown: Line("cache", BytesOf("cache_limit_bytes")),
        help: "Bytes the cache holds on disk",
    },
    Metric {
        name: "storefs_cache_limit_bytes",
        kind: Gauge,
        unit: "bytes",
        source: Daemon("cache_limit_bytes"),
        shown: Hidden,
        help: "The cache size limit (--max-size)",
    },
    Metric {
        name: "storefs_cache_writable",
        kind: Gauge,
        unit: "0 or 1",
        source: Daemon("cache_writable"),
        shown: Line("cache writable", YesNo),
        help: "1 while the cache directory can be written; 0 when it is read-only (cached paths served, nothing fetched)",
    },
    Metric {
        name: "storefs_cached_paths",
        kind: Gauge,
        unit: "paths",
        source: Daemon("cached_paths"),
        shown: Line("cached paths", Count),
        help: "Store paths in the cache",
    },
    Metric {
        name: "storefs_pinned_paths",
        kind: Gauge,
        unit: "paths",
        source: Daemon("pinned_paths"),
        shown: Line("pinned paths", Count),
        help: "Store paths pinned with storefs pin (never evicted)",
    },
    Metric {
        name: "storefs_evictions_total",
        kind: Counter,
        unit: "paths",
        source: Daemon("evictions"),
        shown: Line("evictions", Count),
        help: "Store paths evicted from the cache",
    },
    Metric {
        name: "storefs_in_flight",
        kind: Gauge,
        unit: "fetches",
        source: Daemon("in_flight"),
        shown: Line("in flight", Count),
        help: "Store path fetches running now",
    },
    Metric {
        name: "storefs_prefetched_paths_total",
        kind: Counter,
        unit: "paths",
        source: Daemon("prefetched_paths"),
        shown: Line("prefetched paths", Count),
        help: "Store paths fetched by closure prefetch",
    },
    Metric {
        name: "storefs_prefetch_skipped_total",
        kind: Counter,
        unit: "paths",
        source: Daemon("prefetch_skipped"),
        shown: Line("prefetch skipped", Count),
        help: "References not prefetched because they did not fit without evicting",
    },
    Metric {
        name: "storefs_no_room_refusals_total",
        kind: Counter,
        unit: "lookups",
        source: Daemon("no_room_refusals"),
        shown: Line("no-room refusals", Count),
        help: "Lookups refused because the path would not fit on the cache filesystem even after evicting every unpinned path",
    },
    Metric {
        name: "storefs_index_hits_total",
        kind: Counter,
        unit: "paths",
        source: Daemon("index_hits"),
        shown: Line("index hits", Count),
        help: "Paths published as partial entries from a verified file index, with no NAR download",
    },
    Metric {
        name: "storefs_index_refused_signature_total",
        kind: Counter,
        unit: "indexes",
        source: Daemon("index_refused_signature"),
        shown: Line("index refused (signature)", Count),
        help: "File indexes refused: unsigned, or no valid signature by a trusted index key",
    },
    Metric {
        name: "storefs_index_refused_mismatch_total",
        kind: Counter,
        unit: "indexes",
        source: Daemon("index_refused_mismatch"),
        shown: Line("index refused (mismatch)", Count),
        help: "File indexes refused: another store path, NarHash, NarSize or NAR file than the verified narinfo",
    },
    Metric {
        name: "storefs_index_refused_malformed_total",
        kind: Counter,
        unit: "indexes",
        source: Daemon("index_refused_malformed"),
        shown: Line("index refused (malformed)", Count),
        help: "File indexes refused: malformed, or the request for one failed",
    },
    Metric {
        name: "storefs_range_requests_total",
        kind: Counter,
        unit: "requests",
        source: Daemon("range_requests"),
        shown: Line("range requests", Count),
        help: "HTTP Range requests for frames of indexed NARs",
    },
    Metric {
        name: "storefs_range_bytes_total",
        kind: Counter,
        unit: "bytes",
        source: Daemon("range_bytes"),
        shown: Line("range bytes", Bytes),
        help: "Compressed bytes received by range requests",
    },
    Metric {
        name: "storefs_files_fetched_total",
        kind: Counter,
        unit: "files",
        source: Daemon("files_fetched"),
        shown: Line("files fetched", Count),
        help: "Files of partial entries fetched, verified against the index and stored",
    },
    Metric {
        name: "storefs_files_read_ahead_total",
        kind: Counter,
        unit: "files",
        source: Daemon("files_read_ahead"),
        shown: Line("files read ahead", Count),
        help: "Of the files fetched, those fetched before any reader asked for them",
    },
    Metric {
        name: "storefs_frame_failures_total",
        kind: Counter,
        unit: "frames",
        source: Daemon("frame_failures"),
        shown: Line("frame failures", Count),
        help: "Frames whose bytes did not match the index (their files got EIO from that cache)",
    },
    Metric {
        name: "storefs_fetch_failures_total",
        kind: Counter,
        unit: "fetches",
        source: Daemon("fetch_failures"),
        shown: Line("fetch failures", Count),
        help: "Fetches a reader waited for that got no verified copy",
    },
    Metric {
        name: "storefs_prefetch_failures_total",
        kind: Counter,
        unit: "fetches",
        source: Daemon("prefetch_failures"),
        shown: Line("prefetch failures", Count),
        help: "Closure prefetches that got no verified copy",
    },
    Metric {
        name: "storefs_lookup_failures_total",
        kind: Counter,
        unit: "lookups",
        source: Labelled {
            key: "lookup_failures",
            label: "reason",
            values: &["untrusted", "hash", "local", "network", "rate_limited", "timeout"],
        },
        // Not in the human table yet: its lines are one per daemon-wide key.
        shown: Hidden,
        help: "Lookups and reads a reader waited for that got EIO, by reason",
    },
    Metric {
        name: "storefs_verify_failures_total",
        kind: Counter,
        unit: "documents",
        source: Daemon("verify_failures"),
        shown: Line("verify failures", Count),
        help: "narinfos or NARs rejected by verification",
    },
    Metric {
        name: "storefs_corrupt_entries_total",
        kind: Counter,
        unit: "paths",
        source: Daemon("corrupt_entries"),
        shown: Line("corrupt entries", Count),
        help: "Cached paths found damaged on disk (by a read or by verify) and set aside",
    },
    Metric {
        name: "process_start_time_seconds",
        kind: Gauge,
        unit: "seconds since the epoch",
        source: Daemon("start_time_seconds"),
        shown: Hidden,
        help: "When the daemon started, in seconds since the Unix epoch",
    },
    Metric {
        name: "storefs_build_info",
        kind: Gauge,
        unit: "always 1",
        source: Build,
        shown: Hidden,
        help: "The running storefs version (label version); always 1",
    },
    Metric {
        name: "storefs_upstream_online",
        kind: Gauge,
        unit: "0 or 1",
        source: PerUpstream("online", 1.0),
        shown: Column("ONLINE", YesNo),
        help: "1 when the substituter is up, 0 while it is marked down",
    },
    Metric {
        name: "storefs_upstream_requests_total",
        kind: Counter,
        unit: "requests",
        source: PerUpstream("requests", 1.0),
        shown: Column("REQUESTS", Count),
        help: "Requests (nix-cache-info, narinfo, NAR) sent to the substituter",
    },
    Metric {
        name: "storefs_upstream_errors_total",
        kind: Counter,
        unit: "requests",
        source: PerUpstream("errors", 1.0),
        shown: Column("ERRORS", Count),
        help: "Failed requests to the substituter, and NAR bodies that broke or did not verify",
    },
    Metric {
        name: "storefs_upstream_bytes_total",
        kind: Counter,
        unit: "bytes",
        source: PerUpstream("bytes", 1.0),
        shown: Column("BYTES", Count),
        help: "Compressed NAR bytes received from the substituter",
    },
    Metric {
        name: "storefs_upstream_latency_p50_seconds",
        kind: Gauge,
        unit: "seconds",
        source: PerUpstream("latency_ms_p50", 0.001),
        shown: Column("P50(ms)", Millis),
        help: "Median time to an answer from the substituter (upper bound of its bucket)",
    },
    Metric {
        name: "storefs_narinfo_fetch_seconds",
        kind: Histogram,
        unit: "seconds",
        source: Latency("narinfo_fetch_seconds"),
        shown: Hidden,
        help: "Time of each narinfo request, all substituters",
    },
    Metric {
        name: "storefs_nar_fetch_seconds",
        kind: Histogram,
        unit: "seconds",
        source: Latency("nar_fetch_seconds"),
        shown: Hidden,
        help: "Time of each successful NAR fetch: download, verification and unpacking",
    },
];

impl Metric {
    /// Its key in `stats --json` as docs/METRICS.md writes it, if it has one.
    pub fn json_key(&self) -> Option<String> {
        match self.source {
            Daemon(key) => Some(key.to_owned()),
            PerUpstream(key, _) => Some(format!("upstreams[].{key}")),
            Labelled { key, label, .. } => Some(format!("{key}_<{label}>")),
            Latency(_) | Build => None,
        }
    }

    /// Every key it has in `stats --json` (a labelled metric has one per label value).
    pub fn json_keys(&self) -> Vec<String> {
        match self.source {
            Labelled { key, values, .. } => values.iter().map(|v| format!("{key}_{v}")).collect(),
            Daemon(key) | PerUpstream(key, _) => vec![key.to_owned()],
            Latency(_) | Build => vec![],
        }
    }

    /// Its labels, for docs/METRICS.md.
    fn labels(&self) -> &'static str {
        match self.source {
            PerUpstream(..) => "`upstream`",
            Build => "`version`",
            Labelled { label: "reason", .. } => "`reason`",
            Labelled { .. } => "see METRICS.md",
            Daemon(_) | Latency(_) => "—",
        }
    }
}

/// The Markdown table of [`METRICS`] that docs/METRICS.md carries between its
/// `<!-- metrics table -->` markers.
pub fn doc_table() -> String {
    let mut t = String::from(
        "| name | type | unit | labels | `stats --json` | meaning |\n|---|---|---|---|---|---|\n",
    );
    for m in METRICS {
        let key = m.json_key().map_or_else(|| "—".to_owned(), |k| format!("`{k}`"));
        let kind = format!("{:?}", m.kind).to_lowercase();
        t.push_str(&format!(
            "| `{}` | {kind} | {} | {} | {key} | {} |\n",
            m.name,
            m.unit,
            m.labels(),
            m.help
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The rules `promtool check metrics` lints by, and unique names and keys.
    #[test]
    fn every_metric_is_named_and_helped_as_prometheus_expects() {
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for m in METRICS {
            assert!(names.insert(m.name), "{} declared twice", m.name);
            if let Some(key) = m.json_key() {
                assert!(keys.insert(key.clone()), "key {key} declared twice");
            }
            let valid =
                m.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            assert!(valid, "{} is not snake_case", m.name);
            assert_eq!(m.kind == Counter, m.name.ends_with("_total"), "{}: _total", m.name);
            assert!(!m.help.is_empty() && !m.help.ends_with('.'), "{}: help {:?}", m.name, m.help);
            assert!(!m.help.contains(['\n', '\\']), "{}: help needs escaping", m.name);
            let columned = matches!(m.shown, Column(..));
            assert_eq!(columned, matches!(m.source, PerUpstream(..)), "{}: shown", m.name);
        }
    }

    /// docs/METRICS.md carries exactly `doc_table()`. To update it after changing METRICS:
    /// `STOREFS_WRITE_DOCS=1 cargo test metrics_doc`.
    #[test]
    fn metrics_doc_lists_exactly_the_declared_metrics() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/METRICS.md");
        let doc = std::fs::read_to_string(path).unwrap();
        let (start, end) = ("<!-- metrics table -->\n", "<!-- end of metrics table -->");
        let from = doc.find(start).expect("the start marker") + start.len();
        let to = doc.find(end).expect("the end marker");
        let want = doc_table();
        if doc[from..to] != want && std::env::var_os("STOREFS_WRITE_DOCS").is_some() {
            std::fs::write(path, format!("{}{want}{}", &doc[..from], &doc[to..])).unwrap();
            return;
        }
        assert_eq!(
            doc[from..to],
            want,
            "docs/METRICS.md and METRICS disagree; STOREFS_WRITE_DOCS=1 cargo test metrics_doc"
        );
    }
}
