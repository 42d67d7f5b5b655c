//! Closure prefetch: once a path's narinfo is known, the paths it references are fetched in the
//! background, a bounded number at a time, so a job walking its closure finds them cached instead
//! of paying a narinfo and a NAR round trip per path, one after the other.
//!
//! Rules:
//! - Speculation never evicts: a reference is downloaded only while its NarSize fits under
//!   `--max-size` and above `--min-free` as things stand; otherwise it is left for a reader.
//! - Readers come first: their fetches never wait for a prefetch permit, and a reader asking for
//!   a path being prefetched joins that fetch (single-flight) rather than starting another.
//! - Each reference is queued once; a prefetched path's own references are queued in turn, so
//!   the whole closure arrives, breadth first (the permits are handed out in FIFO order).
//! - The paths an index's warm paths name (the store paths a learned run used) go first: they
//!   have permits of their own, so they do not queue behind references the job may never read.

use std::collections::HashSet;

use tokio::sync::Semaphore;
use tracing::debug;

use super::NarCache;
use super::stats::CacheStats;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StorePath;
use crate::sync::{Arc, Mutex, Ordering, lock};

/// Default number of background downloads at once: on the 2-core bench machine 4 beat 8 both for
/// a cold job (less competition with its own fetches) and for a full read (docs/PERFORMANCE.md).
pub const DEFAULT_PREFETCH_JOBS: usize = 4;

/// The prefetch queue.
#[derive(Debug)]
pub(super) struct Prefetcher {
    /// Downloads at once; 0 turns prefetch off.
    jobs: usize,
    permits: Semaphore,
    /// Hash parts queued or being prefetched, so each is queued once.
    queued: Mutex<HashSet<String>>,
    /// Downloads of learned paths (an index's warm paths) at once, apart from the references.
    learned_permits: Semaphore,
    /// Learned paths queued or being prefetched, so each is queued once.
    learned: Mutex<HashSet<String>>,
}

impl Prefetcher {
    /// A queue running at most `jobs` prefetches at once (none when 0).
    pub(super) fn new(jobs: usize) -> Self {
        Self {
            jobs,
            permits: Semaphore::new(jobs),
            queued: Mutex::default(),
            learned_permits: Semaphore::new(jobs),
            learned: Mutex::default(),
        }
    }

    /// Ends every prefetch waiting for a permit and refuses new ones.
    pub(super) fn close(&self) {
        self.permits.close();
        self.learned_permits.close();
    }
}

impl NarCache {
    /// Queues for prefetch the references of `info` other than itself that are not cached,
    /// being fetched, known absent or queued already.
    pub(super) fn prefetch_references(self: &Arc<Self>, info: &NarInfo) {
        if self.prefetcher.jobs == 0 || self.prefetcher.permits.is_closed() {
            return;
        }
        for reference in info.references.iter().filter(|r| **r != info.store_path) {
            let hash = reference.hash_part();
            if !self.worth_prefetching(&hash) || !lock(&self.prefetcher.queued).insert(hash) {
                continue;
            }
            let (this, sp) = (self.clone(), reference.clone());
            tokio::spawn(async move {
                this.prefetch_one(&sp).await;
                lock(&this.prefetcher.queued).remove(&sp.hash_part());
            });
        }
    }

    /// Queues for prefetch, ahead of any reference, the learned paths `paths` (an index's warm
    /// paths, in the order the learned run first used them) that are not cached, being
    /// fetched, known absent or queued already.
    pub(super) fn prefetch_learned(self: &Arc<Self>, paths: &[StorePath]) {
        if self.prefetcher.jobs == 0 || self.prefetcher.learned_permits.is_closed() {
            return;
        }
        for path in paths {
            let hash = path.hash_part();
            if !self.worth_prefetching(&hash) || !lock(&self.prefetcher.learned).insert(hash) {
                continue;
            }
            let (this, sp) = (self.clone(), path.clone());
            tokio::spawn(async move {
                let permits = &this.prefetcher.learned_permits;
                if let Ok(_permit) = permits.acquire().await {
                    this.prefetch_now(&sp).await;
                }
                lock(&this.prefetcher.learned).remove(&sp.hash_part());
            });
        }
    }

    /// Whether `hash` is neither cached (as far as memory knows), being fetched nor known absent.
    fn worth_prefetching(&self, hash: &str) -> bool {
        !lock(&self.catalog).contains(hash)
            && !lock(&self.inflight).contains_key(hash)
            && !self.negative_hit(hash)
    }

    /// Waits for a permit, then fetches `sp` if it is still missing and fits without evicting.
    async fn prefetch_one(self: &Arc<Self>, sp: &StorePath) {
        let Ok(_permit) = self.prefetcher.permits.acquire().await else { return };
        self.prefetch_now(sp).await;
    }

    /// Fetches `sp`, holding a permit, if it is still missing and fits without evicting.
    async fn prefetch_now(self: &Arc<Self>, sp: &StorePath) {
        let hash = sp.hash_part();
        if !self.scan_complete.load(Ordering::Acquire) && self.load_now(&hash).await.is_some() {
            return;
        }
        if self.negative_hit(&hash) {
            return;
        }
        let Some(fetch) = self.start_prefetch(sp) else { return };
        match fetch.await {
            Ok(_) => CacheStats::bump(&self.stats.prefetched),
            Err(err) => debug!(store_path = %sp, error = %err, "prefetch failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::cache::tests::{Fixture, key, publish_refs, sp, tree};
    use crate::nix::signature::SigningKey;
    use crate::upstream::mock::MockUpstream;

    /// Waits (up to 10 s) until `cond` holds; fails the test otherwise.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// `top` referencing `n` leaves (and itself), each of `bytes` bytes of data.
    fn star(up: &MockUpstream, n: usize, bytes: usize) -> (StorePath, Vec<StorePath>) {
        let leaves: Vec<_> =
            (0..n).map(|i| sp(b"abcdfghij"[i] as char, &format!("leaf{i}"))).collect();
        for leaf in &leaves {
            publish_refs(up, &key(), leaf, &tree("leaf", bytes), &[leaf]);
        }
        let top = sp('z', "top");
        let mut refs: Vec<&StorePath> = leaves.iter().collect();
        refs.push(&top);
        publish_refs(up, &key(), &top, &tree("top", bytes), &refs);
        (top, leaves)
    }

    fn fixture(jobs: usize) -> Fixture {
        let mut fx = Fixture::new(1);
        fx.config.prefetch_jobs = jobs;
        fx
    }

    #[tokio::test]
    async fn references_are_fetched_transitively_once_each() {
        let fx = fixture(2);
        let (up, k) = (&fx.ups[0], key());
        let (c, b, a) = (sp('c', "c"), sp('b', "b"), sp('a', "a"));
        publish_refs(up, &k, &c, &tree("c", 10), &[]);
        publish_refs(up, &k, &b, &tree("b", 10), &[&c]);
        publish_refs(up, &k, &a, &tree("a", 10), &[&a, &b]);
        let cache = fx.open();
        cache.get(&a).await.unwrap();
        // A prefetch is counted when its fetch returns, a moment after the path is cached.
        let done = || CacheStats::get(&cache.stats.prefetched) == 2;
        until("b and c prefetched", || {
            cache.cached(&b).is_some() && cache.cached(&c).is_some() && done()
        })
        .await;
        assert_eq!(up.requests(), (3, 3), "one narinfo and one NAR per path");
        assert_eq!(CacheStats::get(&cache.stats.prefetched), 2);
        cache.get(&c).await.unwrap();
        assert_eq!(up.requests(), (3, 3), "a prefetched path is a hit");
    }

    #[tokio::test]
    async fn zero_jobs_fetches_only_what_is_asked_for() {
        let fx = fixture(0);
        let (top, leaves) = star(&fx.ups[0], 3, 10);
        let cache = fx.open();
        cache.get(&top).await.unwrap();
        assert_eq!(fx.ups[0].requests(), (1, 1));
        assert!(leaves.iter().all(|l| cache.cached(l).is_none()));
    }

    #[tokio::test]
    async fn at_most_jobs_downloads_run_at_once() {
        let fx = fixture(2);
        let up = &fx.ups[0];
        let (top, leaves) = star(up, 5, 10);
        let gate = up.close_gate();
        let cache = fx.open();
        let reader = tokio::spawn({
            let (cache, top) = (cache.clone(), top.clone());
            async move { cache.get(&top).await.map(|_| ()) }
        });
        // The reader's NAR and two prefetches wait at the gate; the other three leaves wait
        // for a permit and have not even asked for their narinfo.
        until("three NARs waiting", || up.nars_waiting.load(Ordering::SeqCst) == 3).await;
        assert_eq!(up.requests(), (3, 3));
        gate.add_permits(100);
        reader.await.unwrap().unwrap();
        until("every leaf cached", || leaves.iter().all(|l| cache.cached(l).is_some())).await;
        assert_eq!(up.requests(), (6, 6));
        assert_eq!(up.most_nars_waiting.load(Ordering::SeqCst), 3, "reader + 2 jobs");
    }

    #[tokio::test]
    async fn a_reader_joins_a_prefetch_in_flight() {
        let fx = fixture(1);
        let up = &fx.ups[0];
        let (top, leaves) = star(up, 1, 10);
        let gate = up.close_gate();
        let cache = fx.open();
        let first = tokio::spawn({
            let (cache, top) = (cache.clone(), top.clone());
            async move { cache.get(&top).await.map(|_| ()) }
        });
        until("both NARs waiting", || up.nars_waiting.load(Ordering::SeqCst) == 2).await;
        let second = tokio::spawn({
            let (cache, leaf) = (cache.clone(), leaves[0].clone());
            async move { cache.get(&leaf).await.map(|_| ()) }
        });
        until("the reader waits on the prefetch", || CacheStats::get(&cache.stats.lookups) == 2)
            .await;
        gate.add_permits(100);
        first.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(up.requests(), (2, 2), "the reader asked for nothing itself");
    }

    #[tokio::test]
    async fn prefetch_never_evicts() {
        let mut fx = fixture(4);
        let (top, leaves) = star(&fx.ups[0], 2, 60_000);
        // Room for the top path and one leaf, not two.
        fx.config.max_bytes = 150_000;
        let cache = fx.open();
        cache.get(&top).await.unwrap();
        until("both leaves decided", || {
            let s = &cache.stats;
            CacheStats::get(&s.prefetched) + CacheStats::get(&s.prefetch_skipped) == 2
        })
        .await;
        assert_eq!(CacheStats::get(&cache.stats.prefetched), 1);
        assert_eq!(CacheStats::get(&cache.stats.evictions), 0);
        assert!(cache.cached(&top).is_some(), "what a reader asked for stays");
        let skipped: Vec<_> = leaves.iter().filter(|l| cache.cached(l).is_none()).collect();
        assert_eq!(skipped.len(), 1);
        // A reader gets the skipped path all the same, evicting for it.
        cache.get(skipped[0]).await.unwrap();
        assert!(CacheStats::get(&cache.stats.evictions) >= 1);
    }

    /// A prefetch that finds no verified copy counts in `prefetch_failures`, not in
    /// `fetch_failures`, which counts what readers saw.
    #[tokio::test]
    async fn failed_prefetches_are_counted_apart_from_readers_failures() {
        let fx = fixture(2);
        let (top, bad) = (sp('p', "top"), sp('q', "untrusted"));
        publish_refs(
            &fx.ups[0],
            &SigningKey::generate("test-1", [2; 32]),
            &bad,
            &tree("u", 10),
            &[],
        );
        publish_refs(&fx.ups[0], &key(), &top, &tree("t", 10), &[&bad]);
        let cache = fx.open();
        cache.get(&top).await.unwrap();
        until("the prefetch failed", || CacheStats::get(&cache.stats.prefetch_failures) == 1).await;
        assert_eq!(CacheStats::get(&cache.stats.fetch_failures), 0);
        assert!(cache.get(&bad).await.is_err(), "a reader asks for it too");
        assert_eq!(CacheStats::get(&cache.stats.fetch_failures), 1);
        assert_eq!(CacheStats::get(&cache.stats.prefetch_failures), 1);
    }

    #[tokio::test]
    async fn absent_references_are_remembered_as_absent() {
        let fx = fixture(2);
        let (top, missing) = (sp('p', "top"), sp('m', "missing"));
        publish_refs(&fx.ups[0], &key(), &top, &tree("t", 10), &[&missing]);
        let cache = fx.open();
        cache.get(&top).await.unwrap();
        until("the reference asked for", || fx.ups[0].requests().0 == 2).await;
        until("queue empty", || lock(&cache.prefetcher.queued).is_empty()).await;
        assert!(cache.get(&missing).await.is_err());
        assert_eq!(fx.ups[0].requests(), (2, 1), "the absent answer was remembered");
        assert_eq!(CacheStats::get(&cache.stats.negative_hits), 1);
    }
}
