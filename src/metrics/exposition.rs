//! The Prometheus text exposition format, version 0.0.4 (what `promtool check metrics` reads),
//! rendered from a [`Snapshot`] by walking [`METRICS`]: `# HELP` and `# TYPE` name the metric
//! exactly as its samples do, and there is no OpenMetrics `# EOF`.

use std::fmt::Write as _;

use super::histogram::{HistogramSnapshot, LATENCY_BUCKETS};
use super::table::{Kind, METRICS, Metric, Source};
use super::{Snapshot, Value};

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders every metric of `snap` in the Prometheus text format.
pub fn render(snap: &Snapshot) -> String {
    let mut out = String::new();
    for m in METRICS {
        let kind = match m.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "# HELP {} {}", m.name, m.help);
        let _ = writeln!(out, "# TYPE {} {kind}", m.name);
        samples(&mut out, m, snap);
    }
    out
}

/// The sample lines of `m`.
fn samples(out: &mut String, m: &Metric, snap: &Snapshot) {
    match m.source {
        Source::Daemon(key) => {
            if let Some(v) = snap.figures.get(key).and_then(Value::as_f64) {
                let _ = writeln!(out, "{} {}", m.name, number(v));
            }
        }
        Source::PerUpstream(key, scale) => {
            for u in &snap.upstreams {
                if let Some(v) = u.figures.get(key).and_then(Value::as_f64) {
                    let label = escape_label(&u.url);
                    let _ =
                        writeln!(out, "{}{{upstream=\"{label}\"}} {}", m.name, number(v * scale));
                }
            }
        }
        Source::Labelled { key, label, values } => {
            for value in values {
                if let Some(v) = snap.figures.get(&format!("{key}_{value}")).and_then(Value::as_f64)
                {
                    let value = escape_label(value);
                    let _ = writeln!(out, "{}{{{label}=\"{value}\"}} {}", m.name, number(v));
                }
            }
        }
        Source::Latency(key) => {
            if let Some(h) = snap.histograms.get(key) {
                histogram(out, m.name, h);
            }
        }
        Source::Build => {
            let version = escape_label(env!("CARGO_PKG_VERSION"));
            let _ = writeln!(out, "{}{{version=\"{version}\"}} 1", m.name);
        }
    }
}

/// `_bucket` lines (cumulative, `le` inclusive, ending with `+Inf`), `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, h: &HistogramSnapshot) {
    let mut cumulative = 0;
    for (i, count) in h.counts.iter().enumerate() {
        cumulative += count;
        let le = LATENCY_BUCKETS.get(i).map_or_else(|| "+Inf".to_owned(), |b| number(*b));
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_sum {}", number(h.sum_seconds));
    let _ = writeln!(out, "{name}_count {}", h.count());
}

/// A sample value as Go's `strconv.ParseFloat` reads it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::super::{Histogram, UpstreamSnapshot};
    use super::*;

    fn example() -> Snapshot {
        let mut snap = Snapshot::default();
        snap.set("lookups", 3);
        snap.set("hit_rate", 0.5);
        snap.set("lookup_failures_timeout", 2);
        let mut up = UpstreamSnapshot { url: "http://x/\"q\"".into(), ..Default::default() };
        up.figures.insert("bytes".into(), Value::Count(10));
        up.figures.insert("online".into(), Value::Flag(false));
        up.figures.insert("latency_ms_p50".into(), Value::Real(250.0));
        snap.upstreams.push(up);
        let h = Histogram::default();
        h.observe(std::time::Duration::from_millis(200));
        snap.histograms.insert("nar_fetch_seconds".into(), h.snapshot());
        snap
    }

    #[test]
    fn help_and_type_name_the_samples_and_there_is_no_eof() {
        let text = render(&example());
        for m in METRICS {
            assert!(text.contains(&format!("# HELP {} {}\n", m.name, m.help)), "{}", m.name);
            assert!(text.contains(&format!("\n# TYPE {} ", m.name)), "{}", m.name);
        }
        assert!(!text.contains("# EOF") && !text.contains(".."), "{text}");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s).filter(|f| text.contains(&format!("TYPE {f} histogram")))
                })
                .unwrap_or(name);
            assert!(text.contains(&format!("# TYPE {family} ")), "{line} has no TYPE");
        }
    }

    #[test]
    fn samples_carry_values_labels_and_units() {
        let text = render(&example());
        for want in [
            "storefs_lookups_total 3\n",
            "storefs_hit_rate 0.5\n",
            "storefs_lookup_failures_total{reason=\"timeout\"} 2\n",
            "storefs_upstream_bytes_total{upstream=\"http://x/\\\"q\\\"\"} 10\n",
            "storefs_upstream_online{upstream=\"http://x/\\\"q\\\"\"} 0\n",
            "storefs_upstream_latency_p50_seconds{upstream=\"http://x/\\\"q\\\"\"} 0.25\n",
            "storefs_nar_fetch_seconds_bucket{le=\"0.1\"} 0\n",
            "storefs_nar_fetch_seconds_bucket{le=\"0.25\"} 1\n",
            "storefs_nar_fetch_seconds_bucket{le=\"+Inf\"} 1\n",
            "storefs_nar_fetch_seconds_sum 0.2\n",
            "storefs_nar_fetch_seconds_count 1\n",
            concat!("storefs_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1\n"),
        ] {
            assert!(text.contains(want), "{want:?} missing:\n{text}");
        }
        assert!(!text.contains("\nstorefs_cache_hits_total "), "absent figures have no sample");
    }
}
