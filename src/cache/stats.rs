//! Counters of what the cache did: the figures `storefs stats` and Prometheus will show.

use crate::metrics::FetchHistograms;
use crate::sync::{AtomicU64, Ordering};

/// Cache and upstream counters. All monotonic except `cache_bytes` and `cached_paths`.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Lookups of valid store path names.
    pub lookups: AtomicU64,
    /// Lookups answered from the local cache.
    pub hits: AtomicU64,
    /// Lookups answered "absent" from the negative cache, with no upstream request.
    pub negative_hits: AtomicU64,
    /// narinfo requests sent upstream.
    pub narinfo_requests: AtomicU64,
    /// NAR downloads started.
    pub nar_downloads: AtomicU64,
    /// Compressed bytes received from upstreams.
    pub bytes_downloaded: AtomicU64,
    /// Paths published into the cache.
    pub published: AtomicU64,
    /// Paths evicted.
    pub evictions: AtomicU64,
    /// Fetches a reader waited for that ended with no verified copy.
    pub fetch_failures: AtomicU64,
    /// Prefetches no reader waited for that ended with no verified copy.
    pub prefetch_failures: AtomicU64,
    /// narinfos or NARs rejected by verification (signature, hash, size, grammar).
    pub verify_failures: AtomicU64,
    /// Paths fetched by closure prefetch (not asked for by a reader at the time).
    pub prefetched: AtomicU64,
    /// References not prefetched because they did not fit without evicting.
    pub prefetch_skipped: AtomicU64,
    /// File bytes returned to readers (bumped by the filesystem's read path).
    pub bytes_served: AtomicU64,
    /// narinfo and NAR fetch latency histograms, for `/metrics`.
    pub histograms: FetchHistograms,
}

impl CacheStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
