//! What the daemon reports about itself.
//!
//! - Every figure is declared once, as a row of [`METRICS`] (`table.rs`). That table drives
//!   `storefs stats` (its table and `--json`), the Prometheus text of `/metrics`
//!   (`exposition.rs`, served by `server.rs`) and the table in docs/METRICS.md (a test compares).
//! - The counters live with the part that counts: [`counters!`] structs such as the cache's
//!   `CacheStats`, the filesystem's `FsCounters` and each upstream's `UpstreamCounters`. Each part
//!   adds its figures to a [`Snapshot`] through [`Report`]; [`Reporters`] gathers them.
//!
//! Adding a counter touches two places: the part that counts (one line in its `counters!`
//! struct, and the bump where the work happens) and one row of [`METRICS`]. Then
//! `STOREFS_WRITE_DOCS=1 cargo test metrics_doc` rewrites the table in docs/METRICS.md.

mod exposition;
mod histogram;
mod server;
mod table;

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::sync::Arc;

pub use exposition::{CONTENT_TYPE, render};
pub use histogram::{Histogram, HistogramSnapshot, LATENCY_BUCKETS};
pub use server::{MetricsError, bind, serve};
pub use table::{Format, Kind, METRICS, Metric, Shown, Source, doc_table};

/// Declares a struct of monotonic counters (`AtomicU64`s starting at 0, bumped with
/// [`bump`]/[`add`]) whose `figures()` names each counter by its field, or by the key after
/// `=>`; that name is its key in [`METRICS`]. Fields that are not counters follow in `also {}`.
macro_rules! counters {
    (@key $field:ident) => { stringify!($field) };
    (@key $field:ident $key:literal) => { $key };
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$cmeta:meta])* $counter:ident $(=> $key:literal)? ),* $(,)?
        }
        $( also { $( $(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty ),* $(,)? } )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $( $(#[$cmeta])* pub $counter: $crate::sync::AtomicU64, )*
            $($( $(#[$fmeta])* $fvis $field: $ty, )*)?
        }

        impl $name {
            /// Every counter as (its key in `METRICS`, its value now).
            pub fn figures(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
                [$( ($crate::metrics::counters!(@key $counter $($key)?), &self.$counter) ),*]
                    .into_iter()
                    .map(|(key, c)| (key, $crate::metrics::get(c)))
            }
        }
    };
}
pub(crate) use counters;

/// Adds one to `counter`.
pub fn bump(counter: &crate::sync::AtomicU64) {
    add(counter, 1);
}

/// Adds `n` to `counter`.
pub fn add(counter: &crate::sync::AtomicU64, n: u64) {
    counter.fetch_add(n, crate::sync::Ordering::Relaxed);
}

/// Reads `counter`.
pub fn get(counter: &crate::sync::AtomicU64) -> u64 {
    counter.load(crate::sync::Ordering::Relaxed)
}

/// One figure's value, as `stats --json` writes it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// A count or a size.
    Count(u64),
    /// A ratio or a duration.
    Real(f64),
    /// A yes/no state (`true` is 1 in Prometheus).
    Flag(bool),
    /// Not known yet (`null`; no Prometheus sample).
    Absent,
}

impl Value {
    /// The value as a Prometheus sample, None when absent.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Count(n) => Some(n as f64),
            Value::Real(x) => Some(x),
            Value::Flag(b) => Some(f64::from(u8::from(b))),
            Value::Absent => None,
        }
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Count(n)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Real(x)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Flag(b)
    }
}

impl From<Option<f64>> for Value {
    fn from(x: Option<f64>) -> Self {
        x.map_or(Value::Absent, Value::Real)
    }
}

/// One substituter in a [`Snapshot`]: its URL and its figures (`online`, `requests`, ...).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamSnapshot {
    /// The substituter URL.
    pub url: String,
    /// Its figures by key (the `PerUpstream` rows of [`METRICS`]).
    #[serde(flatten)]
    pub figures: BTreeMap<String, Value>,
}

/// Everything the daemon reports at one moment; its JSON is what `stats --json` prints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Daemon-wide figures by key (the `Daemon` rows of [`METRICS`]).
    #[serde(flatten)]
    pub figures: BTreeMap<String, Value>,
    /// The substituters, in configured order.
    #[serde(default)]
    pub upstreams: Vec<UpstreamSnapshot>,
    /// Latency histograms by key (the `Latency` rows of [`METRICS`]); only for `/metrics`.
    #[serde(skip)]
    pub histograms: BTreeMap<String, HistogramSnapshot>,
}

impl Snapshot {
    /// Sets the figure `key`.
    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.figures.insert(key.to_owned(), value.into());
    }

    /// The figure `key` if it is a count (None when absent or of another kind).
    pub fn count(&self, key: &str) -> Option<u64> {
        match self.figures.get(key) {
            Some(Value::Count(n)) => Some(*n),
            _ => None,
        }
    }

    /// The figure `key` as a number (None when absent).
    pub fn number(&self, key: &str) -> Option<f64> {
        self.figures.get(key).and_then(Value::as_f64)
    }

    /// `hits / lookups`, 0 when there were none.
    pub fn rate(hits: u64, lookups: u64) -> f64 {
        if lookups == 0 { 0.0 } else { hits as f64 / lookups as f64 }
    }
}

/// A part of the daemon that counts something and adds its figures to a snapshot.
pub trait Report: Send + Sync {
    /// Adds this part's figures, read now, to `snap`.
    fn report(&self, snap: &mut Snapshot);
}

/// The parts of a daemon that report, read together into one [`Snapshot`]; it also reports
/// when the daemon started (`start_time_seconds`).
pub struct Reporters {
    started_secs: u64,
    parts: Vec<Arc<dyn Report>>,
}

impl std::fmt::Debug for Reporters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporters").field("parts", &self.parts.len()).finish_non_exhaustive()
    }
}

impl Reporters {
    /// Reports of `parts`; the daemon's start time is now.
    pub fn new(parts: Vec<Arc<dyn Report>>) -> Self {
        let since_epoch = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH);
        Self { started_secs: since_epoch.map_or(0, |d| d.as_secs()), parts }
    }

    /// Every part's figures, read now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        snap.set("start_time_seconds", self.started_secs);
        for part in &self.parts {
            part.report(&mut snap);
        }
        snap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    counters! {
        /// Two counters, one renamed.
        struct Example {
            /// Plain.
            plain,
            /// Renamed.
            inner => "outer",
        }
        also {
            /// Not a counter.
            latency: Histogram,
        }
    }

    #[test]
    fn counters_report_each_field_under_its_key() {
        let e = Example::default();
        bump(&e.plain);
        add(&e.inner, 5);
        e.latency.observe(std::time::Duration::from_millis(1));
        assert_eq!(e.figures().collect::<Vec<_>>(), [("plain", 1), ("outer", 5)]);
    }

    struct Part;
    impl Report for Part {
        fn report(&self, snap: &mut Snapshot) {
            snap.set("lookups", 2);
        }
    }

    #[test]
    fn the_json_keeps_keys_kinds_and_nulls() {
        let mut snap = Reporters::new(vec![Arc::new(Part)]).snapshot();
        snap.set("hit_rate", 0.0);
        let mut up = UpstreamSnapshot { url: "http://x".into(), ..Default::default() };
        up.figures.insert("online".into(), true.into());
        up.figures.insert("latency_ms_p50".into(), None.into());
        snap.upstreams.push(up);
        let json = serde_json::to_value(&snap).unwrap();
        assert_eq!(json["lookups"], 2);
        assert_eq!(json["hit_rate"].as_f64(), Some(0.0));
        assert!(json["start_time_seconds"].as_u64().is_some_and(|s| s > 1_700_000_000));
        assert_eq!(json["upstreams"][0]["online"], true);
        assert!(json["upstreams"][0]["latency_ms_p50"].is_null());
        let back: Snapshot = serde_json::from_value(json).unwrap();
        assert_eq!(back, snap);
    }
}
