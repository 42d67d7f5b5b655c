//! The local disk cache of verified, unpacked store paths: lookup, single-flight fetch, LRU quota.
//!
//! Invariants:
//! - An entry is in `entries/` (and in memory) only after its narinfo carried a trusted signature
//!   and its NAR matched NarHash and NarSize; until then it lives in `staging/`, unseen.
//! - One fetch per store path at a time, whoever asks (single-flight); every waiter gets its result.
//! - "Absent everywhere" is remembered for `negative_ttl`; failures (network, bad data) never are.
//! - Bytes on disk stay under `max_bytes` plus at most the newest entry: eviction drops
//!   least-recently-used whole paths, before a download (room for its NarSize) and after a publish.
//!   A path larger than `max_bytes` is still served, alone. Readers holding a file open keep
//!   reading it after eviction (the file descriptor outlives the unlink).
//! - A pinned path is never evicted: not for the quota, not for a full disk, not by `evict` or
//!   `gc`. Only `verify` drops a pinned entry, when it is corrupt; the pin stays and the next use
//!   fetches it again.

mod ahead;
mod catalog;
mod check;
mod claims;
pub mod contents;
mod damage;
mod error;
mod evict;
mod export;
mod fetch;
mod flights;
mod foreground;
mod fs_kind;
mod index_entry;
pub mod layout;
pub mod manifest;
mod min_free;
mod narinfo_store;
mod no_room;
mod ops;
pub mod partial;
mod pins;
mod prefetch;
mod ranged;
mod reason;
pub mod renar;
mod scan;
pub mod stats;
mod streamed;
pub mod unpack;
mod warm_queue;

#[cfg(test)]
mod ahead_tests;
#[cfg(test)]
mod lazy_tests;
#[cfg(test)]
mod limit_tests;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
pub(crate) mod tests;

use self::contents::FileContents;
use self::manifest::Node;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;

use self::catalog::Catalog;
pub use self::check::{Finding, Verdict};
pub use self::error::{CacheError, Cause, Failure};
use self::layout::{Layout, LayoutError};
use self::manifest::Manifest;
pub use self::min_free::MinFree;
pub use self::ops::{GcReport, VerifyReport, WalkStep};
use self::partial::Partial;
pub use self::prefetch::DEFAULT_PREFETCH_JOBS;
use self::prefetch::Prefetcher;
pub use self::reason::FailureReason;
use self::reason::{FailureCounts, ReaderLimit};
use self::stats::CacheStats;
use crate::logging::Throttle;
use crate::metrics::{Report, Snapshot};
use crate::nix::nar::NodeId;
use crate::nix::narinfo::NarInfo;
use crate::nix::signature::TrustedKeys;
use crate::nix::store_path::StorePath;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, lock};
use crate::upstream::UpstreamSet;
use crate::upstream::low_speed::LowSpeedLimit;
use crate::upstream::rate::{KeyedPace, RateLimit};

/// Most "absent" answers remembered at once.
const NEGATIVE_CACHE_ENTRIES: usize = 65_536;
/// Per-path failure lines written per interval (`FAILURE_LOG_INTERVAL`); the rest are counted.
const FAILURE_LOG_LINES: u32 = 20;
/// The interval of `FAILURE_LOG_LINES`.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// What the cache needs to know from the configuration.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// The cache directory.
    pub dir: PathBuf,
    /// Most bytes the cache may hold on disk.
    pub max_bytes: u64,
    /// How long "no cache has this path" is believed.
    pub negative_ttl: Duration,
    /// Downloads slower than this are aborted (and the next cache is tried).
    pub low_speed: LowSpeedLimit,
    /// Free space to keep on the cache filesystem.
    pub min_free: MinFree,
    /// Background downloads of referenced paths at once; 0 turns closure prefetch off.
    pub prefetch_jobs: usize,
    /// Longest a reader waits for a path that is not cached (its turn under `uid_rate`
    /// included); then it gets an error while the fetch goes on for later readers. None: no
    /// bound.
    pub fetch_timeout: Option<Duration>,
    /// How fast one uid may start fetches (joining a running fetch is free).
    pub uid_rate: RateLimit,
    /// Keys whose signed file indexes are trusted; empty: every path is fetched whole.
    pub index_keys: TrustedKeys,
    /// NAR files (`FileSize`) up to this size are fetched whole even when indexed.
    pub index_min_nar_bytes: u64,
    /// Files of partial entries larger than this are checked and written as their frames
    /// arrive, never held whole in memory (`STREAMED_FILE_BYTES`; tests set less).
    pub stream_file_bytes: u64,
}

/// Files of partial entries larger than this are streamed (`CacheConfig::stream_file_bytes`):
/// smaller ones are checked whole in memory, with the files of their batch.
pub const STREAMED_FILE_BYTES: u64 = 64 << 20;

/// One verified store path in the cache.
#[derive(Debug)]
pub struct Entry {
    /// The store path.
    pub store_path: StorePath,
    /// Its verified narinfo.
    pub narinfo: NarInfo,
    /// Its tree.
    pub manifest: Manifest,
    dir: PathBuf,
    /// When the manifest's mtime (the persisted LRU position) was last set, in Unix seconds.
    touched_secs: AtomicU64,
    /// For a path served from a verified file index: the index and which files are present.
    partial: Option<Partial>,
}

impl Entry {
    /// Opens regular file `id` of this entry. Fails with `NotFound` once the entry was evicted.
    /// A file of a partial entry that is not present yet is an error that is not damage
    /// (`Entry::is_missing` tells it first): fetch it with `NarCache::fetch_file`.
    pub fn open_file(&self, id: NodeId) -> std::io::Result<FileContents> {
        match self.manifest.node(id) {
            Some(Node::File { size, packed, sums, .. }) => match &self.partial {
                None => FileContents::open(&self.dir, id, *size, *packed, sums.clone()),
                Some(partial) => match partial.stored(id) {
                    Some((packed, sums)) => {
                        FileContents::open(&self.dir, id, *size, packed, Some(sums))
                    }
                    None => Err(std::io::Error::other(format!("file {id} not fetched yet"))),
                },
            },
            _ => Err(std::io::Error::other(format!("node {id} is not a regular file"))),
        }
    }

    /// True for a regular file of a partial entry that is not present yet.
    pub fn is_missing(&self, id: NodeId) -> bool {
        self.partial.as_ref().is_some_and(|p| p.index.file(id).is_some() && !p.has(id))
    }

    /// The index and present files, for a path served from a verified file index.
    pub fn partial(&self) -> Option<&Partial> {
        self.partial.as_ref()
    }

    /// Bytes the entry occupies on disk: its manifest's count, plus the files a partial entry
    /// fetched since.
    pub fn disk_bytes(&self) -> u64 {
        self.manifest.disk_bytes + self.partial.as_ref().map_or(0, Partial::added_bytes)
    }
}

type SharedFetch = Shared<BoxFuture<'static, Result<Arc<Entry>, CacheError>>>;

/// A fetch running now, and whether a reader waits for it (else it is a prefetch).
struct InFlight {
    fetch: SharedFetch,
    wanted: Arc<AtomicBool>,
}

/// The cache. Cheap to share: wrap it in an `Arc`.
pub struct NarCache {
    layout: Layout,
    /// The substituters as configured.
    upstreams: UpstreamSet,
    /// The same, ordered by nix-cache-info Priority, asked for at the first fetch (like Nix):
    /// a restart that serves only cached paths sends no request at all.
    ordered: tokio::sync::OnceCell<Result<UpstreamSet, Cause>>,
    keys: TrustedKeys,
    config: CacheConfig,
    narinfos: narinfo_store::NarInfoStore,
    /// What is cached, in memory. Held only for in-memory work, never across I/O: every READ of
    /// a cached file takes it (to mark its path used).
    catalog: Mutex<Catalog>,
    /// Serialises moves of entry directories (publish into `entries/`, eviction out of it), so
    /// a path evicted and fetched again never finds its old directory still in place. Held
    /// across renames; readers never take it.
    moves: Mutex<()>,
    inflight: Mutex<HashMap<String, InFlight>>,
    negative: Mutex<LruCache<String, Instant>>,
    /// Paths refused for want of room, for the negative TTL.
    no_room: no_room::NoRoomMemory,
    prefetcher: Prefetcher,
    /// Each uid's turns to start a fetch.
    uid_pace: KeyedPace<u32>,
    /// Lines about one path's failure, rate limited: a storm of failing names writes a few.
    failure_log: Throttle,
    /// Failed lookups by reason.
    failures: FailureCounts,
    /// Set by `close`: nothing in the directory changes any more (checked under `moves`).
    closed: AtomicBool,
    /// Becomes true when the start-up scan of `entries/` has finished, well or not.
    scanned: tokio::sync::watch::Sender<bool>,
    /// True once a scan completed: every entry on disk is in memory.
    scan_complete: AtomicBool,
    /// Readers waiting for files of partial entries: a background fill yields to them.
    foreground: foreground::Foreground,
    /// The warm-list batches of the paths looked up, fetched lowest rank first across paths;
    /// an entry evicted while its batches wait is not kept in memory for them.
    warm: warm_queue::WarmQueue<(std::sync::Weak<Entry>, Vec<NodeId>)>,
    /// Woken when readers get further in the warm lists (more batches released).
    warm_progress: tokio::sync::Notify,
    /// What the cache did so far.
    pub stats: CacheStats,
}

impl std::fmt::Debug for NarCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NarCache").field("dir", &self.config.dir).finish_non_exhaustive()
    }
}

impl NarCache {
    /// Opens the cache directory (locking it) and loads the entries already there.
    pub fn open(
        config: CacheConfig,
        upstreams: UpstreamSet,
        keys: TrustedKeys,
    ) -> Result<Arc<Self>, LayoutError> {
        let layout = Layout::open(&config.dir)?;
        let pins = match pins::load(&layout.root().join(layout::PINS_DIR)) {
            // Nothing is evicted from a read-only cache, so pins do not matter there.
            Err(_) if layout.read_only() => HashMap::new(),
            pins => pins?,
        };
        let negative_cap = NonZeroUsize::new(NEGATIVE_CACHE_ENTRIES).expect("non-zero constant");
        let cache = Arc::new(Self {
            catalog: Mutex::new(Catalog::new(pins)),
            moves: Mutex::new(()),
            closed: AtomicBool::new(false),
            inflight: Mutex::new(HashMap::new()),
            negative: Mutex::new(LruCache::new(negative_cap)),
            no_room: no_room::NoRoomMemory::new(config.negative_ttl),
            prefetcher: Prefetcher::new(config.prefetch_jobs),
            uid_pace: KeyedPace::new(config.uid_rate),
            failure_log: Throttle::new(FAILURE_LOG_LINES, FAILURE_LOG_INTERVAL),
            failures: FailureCounts::default(),
            scanned: tokio::sync::watch::Sender::new(false),
            scan_complete: AtomicBool::new(false),
            foreground: foreground::Foreground::default(),
            warm: warm_queue::WarmQueue::new(ranged::WARM_WINDOW),
            warm_progress: tokio::sync::Notify::new(),
            stats: CacheStats::default(),
            layout,
            upstreams,
            ordered: tokio::sync::OnceCell::new(),
            narinfos: narinfo_store::NarInfoStore::new(config.dir.join(layout::NARINFO_DIR)),
            keys,
            config,
        });
        cache.start_scan();
        Ok(cache)
    }

    /// Stops the cache: background prefetches end, nothing is published, evicted or discarded
    /// any more, and the directory's lock is released, so the directory can be opened again at
    /// once (a restart, the next test) even while tasks still hold this cache. A fetch running
    /// now ends with an error instead of publishing. Idempotent.
    pub fn close(&self) {
        let _moves = lock(&self.moves);
        self.closed.store(true, Ordering::Release);
        self.prefetcher.close();
        self.layout.unlock();
        // Warm-list workers waiting for readers see the close and stop.
        self.warm_progress.notify_waiters();
    }

    /// Whether `close` was called; read with `moves` held before changing the directory.
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The entry for `sp` if it is cached now (no network), marking it recently used.
    pub fn cached(&self, sp: &StorePath) -> Option<Arc<Entry>> {
        let entry = lock(&self.catalog).get(&sp.hash_part()).filter(|e| e.store_path == *sp);
        if let Some(entry) = &entry {
            self.touch(entry);
        }
        entry
    }

    /// [`NarCache::cached`], or while the start-up scan runs, the entry read from disk on the
    /// calling thread (a successor daemon answering inodes its predecessor handed out).
    pub fn cached_or_loaded(&self, sp: &StorePath) -> Option<Arc<Entry>> {
        if let Some(entry) = self.cached(sp) {
            return Some(entry);
        }
        if self.scan_complete.load(Ordering::Acquire) {
            return None;
        }
        let entry = self.load_from_disk(&sp.hash_part()).filter(|e| e.store_path == *sp)?;
        self.touch(&entry);
        Some(entry)
    }

    /// Marks `sp` as used now (a read of one of its files), if it is cached: moves it to the
    /// front of the LRU, in memory and, at most once a minute, on disk. Takes the catalog's lock
    /// for an O(1) update only, so it never waits for an eviction's or a download's I/O. False
    /// when `sp` is not cached.
    pub fn mark_used(&self, sp: &StorePath) -> bool {
        self.cached(sp).is_some()
    }

    /// The entry for `sp`, fetched and verified from the substituters if needed, however long
    /// that takes (control commands: `storefs prefetch` of a large path must not give up).
    /// Readers use [`NarCache::get_as`].
    pub async fn get(self: &Arc<Self>, sp: &StorePath) -> Result<Arc<Entry>, CacheError> {
        self.lookup(sp, None).await
    }

    /// [`NarCache::get`] for a reader of the mount, with its `uid` when the kernel named one:
    /// starting a fetch takes one of the uid's turns under `uid_rate`, and whatever happens the
    /// answer comes within the fetch timeout (a fetch still running then goes on in the
    /// background, and a later lookup joins it). Each failure is counted by its reason.
    pub async fn get_as(
        self: &Arc<Self>,
        sp: &StorePath,
        uid: Option<u32>,
    ) -> Result<Arc<Entry>, CacheError> {
        let result = match self.config.fetch_timeout {
            Some(limit) => tokio::time::timeout(limit, self.lookup(sp, uid))
                .await
                .unwrap_or_else(|_| Err(reader_limit(sp, ReaderLimit::Deadline(limit)))),
            None => self.lookup(sp, uid).await,
        };
        if let Err(err) = &result {
            self.failures.count(err);
        }
        result
    }

    /// Takes `uid`'s turn to start a fetch of `sp`, or refuses at once when the uid has none
    /// left now: a storming uid is answered at once (`EAGAIN`), never queued, so its lookups
    /// neither pile up in the daemon nor hold its processes. Its burst (twice `--uid-rate`)
    /// absorbs a job's honest spikes. None is needed to join a running fetch.
    fn uid_turn(&self, sp: &StorePath, uid: u32) -> Result<(), CacheError> {
        if lock(&self.inflight).contains_key(&sp.hash_part()) {
            return Ok(());
        }
        match self.uid_pace.reserve(uid, Instant::now(), Duration::ZERO) {
            Ok(_) => Ok(()),
            Err(wait) => Err(reader_limit(sp, ReaderLimit::UidRate { uid, wait })),
        }
    }

    /// `get_as` before its deadline.
    async fn lookup(
        self: &Arc<Self>,
        sp: &StorePath,
        uid: Option<u32>,
    ) -> Result<Arc<Entry>, CacheError> {
        CacheStats::bump(&self.stats.lookups);
        let hash = sp.hash_part();
        let mut found = lock(&self.catalog).get(&hash);
        if found.is_none() && !self.scan_complete.load(Ordering::Acquire) {
            // Start-up scan still running: the entry may be on disk, not yet in memory.
            found = self.load_now(&hash).await;
        }
        if let Some(entry) = found {
            CacheStats::bump(&self.stats.hits);
            self.touch(&entry);
            return if entry.store_path == *sp {
                Ok(entry)
            } else {
                Err(CacheError::NotFound(sp.to_string()))
            };
        }
        if self.negative_hit(&hash) {
            CacheStats::bump(&self.stats.negative_hits);
            return Err(CacheError::NotFound(sp.to_string()));
        }
        if let Some(refused) = self.no_room.recall(&hash) {
            CacheStats::bump(&self.stats.no_room_refusals);
            return Err(refused);
        }
        // A prefetch this reader joined may have given up for want of room just before it was
        // told a reader waits; then the reader fetches the path itself.
        let mut tries = 0;
        let entry = loop {
            tries += 1;
            if let (Some(uid), 1) = (uid, tries) {
                // Starting a fetch takes a turn of the reader's uid (joining one does not).
                self.uid_turn(sp, uid)?;
            }
            match self.start_or_join(sp).await {
                Err(CacheError::NoRoomToPrefetch(_)) if tries < 3 => continue,
                result => break result?,
            }
        };
        // Another basename with the same hash part may have been asked for.
        if entry.store_path != *sp {
            return Err(CacheError::NotFound(sp.to_string()));
        }
        Ok(entry)
    }

    /// The fetch of `sp` running now (marked as waited for by a reader), or a new one.
    fn start_or_join(self: &Arc<Self>, sp: &StorePath) -> SharedFetch {
        let hash = sp.hash_part();
        let mut inflight = lock(&self.inflight);
        if let Some(running) = inflight.get(&hash) {
            running.wanted.store(true, Ordering::Release);
            return running.fetch.clone();
        }
        self.spawn_fetch(&mut inflight, sp, true)
    }

    /// A new fetch of `sp` that no reader waits for yet; None when `sp` is cached or being
    /// fetched already.
    fn start_prefetch(self: &Arc<Self>, sp: &StorePath) -> Option<SharedFetch> {
        let hash = sp.hash_part();
        let mut inflight = lock(&self.inflight);
        // A fetch publishes its entry before it leaves `inflight`: checked in this order, under
        // the inflight lock, a path just fetched is not fetched again.
        if inflight.contains_key(&hash) || lock(&self.catalog).contains(&hash) {
            return None;
        }
        Some(self.spawn_fetch(&mut inflight, sp, false))
    }

    /// Starts fetching `sp` in a task and registers it in `inflight`.
    fn spawn_fetch(
        self: &Arc<Self>,
        inflight: &mut HashMap<String, InFlight>,
        sp: &StorePath,
        wanted: bool,
    ) -> SharedFetch {
        let hash = sp.hash_part();
        let wanted = Arc::new(AtomicBool::new(wanted));
        let (this, sp2, key, wanted2) = (self.clone(), sp.clone(), hash.clone(), wanted.clone());
        // A task, not a plain future: the fetch finishes for the other waiters even when the
        // reader who started it is interrupted.
        let task = tokio::spawn(async move {
            let result = this.fetch(&sp2, &wanted2).await;
            lock(&this.inflight).remove(&key);
            result
        });
        let path = sp.to_string();
        let fetch = async move {
            task.await.unwrap_or_else(|e| Err(CacheError::Local { path, cause: Cause::new(e) }))
        }
        .boxed()
        .shared();
        inflight.insert(hash, InFlight { fetch: fetch.clone(), wanted });
        fetch
    }

    /// Entries cached now, most recently used first.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        lock(&self.catalog).entries()
    }

    /// How many store paths are cached.
    pub fn entry_count(&self) -> usize {
        lock(&self.catalog).len()
    }

    /// A number that changes whenever the set of cached paths changes (the mount root's mtime
    /// is derived from it, so the kernel drops its copy of the root's listing).
    pub fn generation(&self) -> u64 {
        lock(&self.catalog).generation()
    }

    /// Bytes the cache holds on disk now.
    pub fn used_bytes(&self) -> u64 {
        lock(&self.catalog).used_bytes()
    }

    /// Whether the cache directory is read-only (at start, or since): cached paths are served,
    /// nothing is fetched.
    pub fn read_only(&self) -> bool {
        self.layout.read_only()
    }

    /// The configured size limit.
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
    }

    /// Every figure `storefs stats` shows that the cache knows, read now.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        self.report(&mut snap);
        snap
    }

    fn negative_hit(&self, hash: &str) -> bool {
        let mut neg = lock(&self.negative);
        match neg.get(hash) {
            Some(at) if at.elapsed() < self.config.negative_ttl => true,
            Some(_) => {
                neg.pop(hash);
                false
            }
            None => false,
        }
    }
}

/// A reader's failure to get `sp` that is no substituter's fault.
fn reader_limit(sp: &StorePath, limit: ReaderLimit) -> CacheError {
    let failures = error::Failures(vec![Failure { upstream: None, cause: Cause::new(limit) }]);
    CacheError::Unavailable { path: sp.to_string(), failures }
}

impl Report for NarCache {
    fn report(&self, snap: &mut Snapshot) {
        let s = &self.stats;
        for (key, n) in s.figures().chain(self.failures.figures()) {
            snap.set(key, n);
        }
        let (lookups, hits) = (CacheStats::get(&s.lookups), CacheStats::get(&s.hits));
        snap.set("hit_rate", Snapshot::rate(hits, lookups));
        let (cache_bytes, cached_paths) = {
            let cat = lock(&self.catalog);
            (cat.used_bytes(), cat.len() as u64)
        };
        snap.set("cache_bytes", cache_bytes);
        snap.set("cache_limit_bytes", self.config.max_bytes);
        snap.set("cached_paths", cached_paths);
        snap.set("pinned_paths", self.pinned().len() as u64);
        snap.set("in_flight", lock(&self.inflight).len() as u64);
        snap.set("cache_writable", !self.layout.read_only());
        for (key, h) in [
            ("narinfo_fetch_seconds", &s.narinfo_fetch_seconds),
            ("nar_fetch_seconds", &s.nar_fetch_seconds),
        ] {
            snap.histograms.insert(key.to_owned(), h.snapshot());
        }
        snap.upstreams =
            self.upstreams.iter().map(|u| u.counters().snapshot(u.url(), u.online())).collect();
    }
}
