//! Counters of what the cache did, reported into `storefs stats` and `/metrics` by
//! `NarCache::report`; each is declared in `metrics::METRICS` under its key.

use crate::metrics::{self, Histogram};
use crate::sync::AtomicU64;

metrics::counters! {
    /// Cache counters, all monotonic.
    pub struct CacheStats {
        /// Lookups of valid store path names.
        lookups,
        /// Lookups answered from the local cache.
        hits => "cache_hits",
        /// Lookups answered "absent" from the negative cache, with no upstream request.
        negative_hits,
        /// narinfo requests sent upstream.
        narinfo_requests,
        /// NAR downloads started.
        nar_downloads,
        /// Compressed bytes received from upstreams.
        bytes_downloaded,
        /// Paths evicted.
        evictions,
        /// Fetches a reader waited for that ended with no verified copy.
        fetch_failures,
        /// Prefetches no reader waited for that ended with no verified copy.
        prefetch_failures,
        /// narinfos or NARs rejected by verification (signature, hash, size, grammar).
        verify_failures,
        /// Cached paths found damaged on disk (by a read or by `verify`) and set aside.
        corrupt_entries,
        /// Paths fetched by closure prefetch (not asked for by a reader at the time).
        prefetched => "prefetched_paths",
        /// References not prefetched because they did not fit without evicting.
        prefetch_skipped,
        /// Reader fetches refused because the path would not fit on the cache filesystem even
        /// after evicting every unpinned path (and lookups answered from that refusal).
        no_room_refusals,
        /// Paths published as partial entries from a verified file index (no NAR download).
        index_hits,
        /// Indexes refused: unsigned, no signature by a trusted index key, or one that does
        /// not verify.
        index_refused_signature,
        /// Indexes refused: signed, but for another store path, NarHash, NarSize or NAR file
        /// than the verified narinfo.
        index_refused_mismatch,
        /// Indexes refused: malformed (the strict parser), or the request for one failed.
        index_refused_malformed,
        /// HTTP Range requests for frames of indexed NARs.
        range_requests,
        /// Bytes received by range requests (compressed frame bytes).
        range_bytes,
        /// Files of partial entries fetched, verified against the index and stored.
        files_fetched,
        /// Of those, files fetched before any reader asked for them: small files of a read
        /// file's directory, files read ahead after it in NAR order, and the background fill.
        files_read_ahead,
        /// Frames whose bytes did not match the index (their files got EIO from that cache).
        frame_failures,
    }
    also {
        /// Time of each narinfo request (not those skipped while a cache is down).
        pub narinfo_fetch_seconds: Histogram,
        /// Time of each successful NAR fetch: download, verification and unpacking.
        pub nar_fetch_seconds: Histogram,
    }
}

impl CacheStats {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        metrics::bump(counter);
    }

    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        metrics::add(counter, n);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        metrics::get(counter)
    }
}
