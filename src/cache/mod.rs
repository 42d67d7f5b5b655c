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

pub mod layout;
pub mod manifest;
pub mod stats;
pub mod unpack;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use lru::LruCache;
use tokio_util::io::SyncIoBridge;
use tracing::{debug, info, warn};

use self::layout::{Layout, LayoutError, MANIFEST_FILE};
use self::manifest::Manifest;
use self::stats::CacheStats;
use self::unpack::UnpackError;
use crate::nix::nar::NodeId;
use crate::nix::narinfo::NarInfo;
use crate::nix::signature::TrustedKeys;
use crate::nix::store_path::StorePath;
use crate::sync::{Arc, Mutex, Ordering, lock};
use crate::upstream::low_speed::{LowSpeedLimit, LowSpeedReader};
use crate::upstream::{Upstream, UpstreamError, UpstreamSet};

/// Most "absent" answers remembered at once.
const NEGATIVE_CACHE_ENTRIES: usize = 65_536;

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
}

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
}

impl Entry {
    /// Opens regular file `id` of this entry. Fails with `NotFound` once the entry was evicted.
    pub fn open_file(&self, id: NodeId) -> std::io::Result<File> {
        unpack::open_file(&self.dir, id)
    }
}

/// Why a store path cannot be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CacheError {
    /// Every cache answered that it does not have the path.
    #[error("{0} is not in any configured binary cache")]
    NotFound(String),
    /// No cache gave a trusted, verified copy.
    #[error("no verified copy of {path}: {reasons}")]
    Unavailable {
        /// The store path.
        path: String,
        /// Each cache's failure, `; `-separated.
        reasons: String,
    },
    /// The path cannot fit in the cache at all.
    #[error("{path} needs {needed} bytes, more than the cache filesystem's {limit} bytes")]
    TooLarge {
        /// The store path.
        path: String,
        /// Its NarSize.
        needed: u64,
        /// Size of the cache filesystem.
        limit: u64,
    },
    /// The local disk failed us.
    #[error("local cache failure for {path}: {reason}")]
    Local {
        /// The store path.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

type SharedFetch = Shared<BoxFuture<'static, Result<Arc<Entry>, CacheError>>>;

struct State {
    lru: LruCache<String, Arc<Entry>>,
    used_bytes: u64,
    reserved_bytes: u64,
}

/// The cache. Cheap to share: wrap it in an `Arc`.
pub struct NarCache {
    layout: Layout,
    upstreams: UpstreamSet,
    keys: TrustedKeys,
    config: CacheConfig,
    state: Mutex<State>,
    inflight: Mutex<HashMap<String, SharedFetch>>,
    negative: Mutex<LruCache<String, Instant>>,
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
        let negative_cap = NonZeroUsize::new(NEGATIVE_CACHE_ENTRIES).expect("non-zero constant");
        let cache = Arc::new(Self {
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                used_bytes: 0,
                reserved_bytes: 0,
            }),
            inflight: Mutex::new(HashMap::new()),
            negative: Mutex::new(LruCache::new(negative_cap)),
            stats: CacheStats::default(),
            layout,
            upstreams,
            keys,
            config,
        });
        cache.load_entries()?;
        Ok(cache)
    }

    /// Reads every published entry's manifest, oldest first; discards any that does not check out.
    fn load_entries(&self) -> Result<(), LayoutError> {
        let root = self.layout.entries_root();
        let list = std::fs::read_dir(&root).map_err(|source| LayoutError::Io {
            action: "cannot list",
            path: root.clone(),
            source,
        })?;
        let mut found = Vec::new();
        for dirent in list.flatten() {
            let dir = dirent.path();
            let name = dirent.file_name().to_string_lossy().into_owned();
            // A key removed from the configuration must stop vouching for cached paths too.
            let loaded = load_entry(&dir, &name).and_then(|(entry, mtime)| {
                match self.keys.verify(&entry.narinfo) {
                    Ok(_) => Ok((entry, mtime)),
                    Err(e) => Err(format!("no longer trusted: {e}")),
                }
            });
            match loaded {
                Ok((entry, mtime)) => found.push((mtime, name, entry)),
                Err(reason) => {
                    warn!(entry = %dir.display(), reason, "discarding unusable cache entry");
                    self.layout.discard(&dir)?;
                }
            }
        }
        found.sort_by_key(|(mtime, _, _)| *mtime);
        let mut st = lock(&self.state);
        for (_, name, entry) in found {
            st.used_bytes += entry.manifest.disk_bytes;
            st.lru.put(name, Arc::new(entry));
        }
        info!(entries = st.lru.len(), bytes = st.used_bytes, "cache loaded");
        drop(st);
        self.layout.purge_trash()
    }

    /// The entry for `sp` if it is cached now (no network), marking it recently used.
    pub fn cached(&self, sp: &StorePath) -> Option<Arc<Entry>> {
        let mut st = lock(&self.state);
        st.lru.get(&sp.hash_part()).filter(|e| e.store_path == *sp).cloned()
    }

    /// The entry for `sp`, fetched and verified from the substituters if needed.
    pub async fn get(self: &Arc<Self>, sp: &StorePath) -> Result<Arc<Entry>, CacheError> {
        CacheStats::bump(&self.stats.lookups);
        let hash = sp.hash_part();
        {
            let mut st = lock(&self.state);
            if let Some(entry) = st.lru.get(&hash) {
                CacheStats::bump(&self.stats.hits);
                return if entry.store_path == *sp {
                    Ok(entry.clone())
                } else {
                    Err(CacheError::NotFound(sp.to_string()))
                };
            }
        }
        if self.negative_hit(&hash) {
            CacheStats::bump(&self.stats.negative_hits);
            return Err(CacheError::NotFound(sp.to_string()));
        }
        let fetch = {
            let mut inflight = lock(&self.inflight);
            match inflight.get(&hash) {
                Some(fetch) => fetch.clone(),
                None => {
                    let (this, sp2, key) = (self.clone(), sp.clone(), hash.clone());
                    // A task, not a plain future: the fetch finishes for the other waiters even
                    // when the reader who started it is interrupted.
                    let task = tokio::spawn(async move {
                        let result = this.fetch(&sp2).await;
                        lock(&this.inflight).remove(&key);
                        result
                    });
                    let path = sp.to_string();
                    let fetch = async move {
                        task.await.unwrap_or_else(|e| {
                            Err(CacheError::Local { path, reason: format!("fetch task: {e}") })
                        })
                    }
                    .boxed()
                    .shared();
                    inflight.insert(hash, fetch.clone());
                    fetch
                }
            }
        };
        let entry = fetch.await?;
        // Another basename with the same hash part may have been asked for.
        if entry.store_path != *sp {
            return Err(CacheError::NotFound(sp.to_string()));
        }
        Ok(entry)
    }

    /// Entries cached now, most recently used first.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        lock(&self.state).lru.iter().map(|(_, e)| e.clone()).collect()
    }

    /// Bytes the cache holds on disk now.
    pub fn used_bytes(&self) -> u64 {
        lock(&self.state).used_bytes
    }

    /// The configured size limit.
    pub fn max_bytes(&self) -> u64 {
        self.config.max_bytes
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

    /// Asks each substituter in turn until one yields a verified copy.
    async fn fetch(self: &Arc<Self>, sp: &StorePath) -> Result<Arc<Entry>, CacheError> {
        let hash = sp.hash_part();
        let mut failures = Vec::new();
        for up in self.upstreams.iter() {
            CacheStats::bump(&self.stats.narinfo_requests);
            let info = match up.narinfo(&hash).await {
                Ok(Some(info)) => info,
                Ok(None) => {
                    debug!(store_path = %sp, upstream = up.url(), "not in this cache");
                    continue;
                }
                Err(err @ UpstreamError::Down { .. }) => {
                    // Said once, when the cache went down; not again for every lookup.
                    debug!(store_path = %sp, upstream = up.url(), error = %err, "cache skipped");
                    failures.push(err.to_string());
                    continue;
                }
                Err(err) => {
                    warn!(store_path = %sp, upstream = up.url(), error = %err, "narinfo failed");
                    failures.push(err.to_string());
                    continue;
                }
            };
            if info.store_path != *sp {
                // NI-3: a narinfo for another path under this hash; that is "not here".
                warn!(store_path = %sp, upstream = up.url(), claimed = %info.store_path,
                      "narinfo names another store path; ignored");
                continue;
            }
            if let Err(err) = self.keys.verify(&info) {
                CacheStats::bump(&self.stats.verify_failures);
                warn!(store_path = %sp, upstream = up.url(), error = %err, "untrusted narinfo");
                failures.push(format!("{}: untrusted narinfo: {err}", up.url()));
                continue;
            }
            // A path larger than --max-size is still served (alone, evicting everything else):
            // failing a job is worse than overshooting the quota by one path. A path larger than
            // the whole cache filesystem can never fit, so it is refused before downloading.
            let room = self.layout.filesystem_bytes().unwrap_or(u64::MAX);
            if info.nar_size > room {
                return Err(CacheError::TooLarge {
                    path: sp.to_string(),
                    needed: info.nar_size,
                    limit: room,
                });
            }
            match self.download(up.as_ref(), &info).await {
                Ok(entry) => return Ok(entry),
                Err(err) => {
                    warn!(store_path = %sp, upstream = up.url(), error = %err, "NAR rejected");
                    failures.push(format!("{}: {err}", up.url()));
                }
            }
        }
        if failures.is_empty() {
            lock(&self.negative).put(hash, Instant::now());
            Err(CacheError::NotFound(sp.to_string()))
        } else {
            CacheStats::bump(&self.stats.fetch_failures);
            Err(CacheError::Unavailable { path: sp.to_string(), reasons: failures.join("; ") })
        }
    }

    /// Downloads, verifies, unpacks and publishes one NAR from `up`.
    async fn download(
        self: &Arc<Self>,
        up: &dyn Upstream,
        info: &NarInfo,
    ) -> Result<Arc<Entry>, DownloadError> {
        let sp = &info.store_path;
        let hash = sp.hash_part();
        let reservation = self.reserve(info.nar_size);
        // Compression can only shrink real NARs much, but may grow incompressible ones a little.
        let max_compressed = info.nar_size + info.nar_size / 16 + (1 << 20);
        CacheStats::bump(&self.stats.nar_downloads);
        let body = up
            .nar(&info.url, max_compressed)
            .await
            .map_err(|e| DownloadError::Remote(e.to_string()))?;
        let staging = self.layout.new_staging(&hash).map_err(DownloadError::local)?;
        let wire = LowSpeedReader::new(SyncIoBridge::new(body), self.config.low_speed);
        let reader = CountingReader { inner: wire, counter: self.clone() };
        let (info2, staging2) = (info.clone(), staging.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            let manifest = unpack::unpack(reader, &info2, max_compressed, &staging2)?;
            let path = staging2.join(MANIFEST_FILE);
            std::fs::write(&path, manifest.encode())
                .map_err(|source| UnpackError::Local { path, source })?;
            Ok::<_, UnpackError>(manifest)
        })
        .await
        .map_err(|e| DownloadError::Local(format!("unpack task: {e}")))?;
        let manifest = match unpacked {
            Ok(m) => m,
            Err(err) => {
                self.discard_in_background(staging);
                if err.is_local() {
                    return Err(DownloadError::Local(err.to_string()));
                }
                if !err.is_transport() {
                    CacheStats::bump(&self.stats.verify_failures);
                }
                return Err(DownloadError::Remote(err.to_string()));
            }
        };
        let layout_publish = {
            let this = self.clone();
            let (staging, hash) = (staging.clone(), hash.clone());
            tokio::task::spawn_blocking(move || this.layout.publish(&staging, &hash))
        };
        let dir = match layout_publish.await.map_err(|e| DownloadError::Local(e.to_string()))? {
            Ok(dir) => dir,
            Err(err) => {
                self.discard_in_background(staging);
                return Err(DownloadError::local(err));
            }
        };
        let entry =
            Arc::new(Entry { store_path: sp.clone(), narinfo: info.clone(), manifest, dir });
        CacheStats::bump(&self.stats.published);
        info!(store_path = %sp, nar_size = info.nar_size, disk_bytes = entry.manifest.disk_bytes,
              upstream = up.url(), "published");
        // The reservation ends before the entry is counted, so it is not counted twice.
        drop(reservation);
        let evicted = {
            let mut st = lock(&self.state);
            st.used_bytes += entry.manifest.disk_bytes;
            st.lru.put(hash, entry.clone());
            self.evict_locked(&mut st, 0)
        };
        if evicted > 0 {
            self.purge_in_background();
        }
        Ok(entry)
    }

    /// Holds `bytes` of room for a download, evicting old entries to make it.
    fn reserve(self: &Arc<Self>, bytes: u64) -> Reservation {
        let evicted = {
            let mut st = lock(&self.state);
            let evicted = self.evict_locked(&mut st, bytes);
            st.reserved_bytes += bytes;
            evicted
        };
        if evicted > 0 {
            self.purge_in_background();
        }
        Reservation { cache: self.clone(), bytes }
    }

    /// Evicts least-recently-used entries until `extra` more bytes fit. After a publish
    /// (`extra == 0`) the newest entry is kept even when it alone is over the limit.
    fn evict_locked(&self, st: &mut State, extra: u64) -> usize {
        let keep = usize::from(extra == 0);
        let mut evicted = 0;
        while st.used_bytes + st.reserved_bytes + extra > self.config.max_bytes
            && st.lru.len() > keep
        {
            let Some((hash, entry)) = st.lru.pop_lru() else { break };
            if let Err(err) = self.layout.discard(&entry.dir) {
                warn!(store_path = %entry.store_path, error = %err, "eviction failed");
                // Keep accounting honest: the bytes are still on disk.
                st.lru.put(hash, entry);
                break;
            }
            st.used_bytes -= entry.manifest.disk_bytes;
            CacheStats::bump(&self.stats.evictions);
            debug!(store_path = %entry.store_path, "evicted");
            evicted += 1;
        }
        evicted
    }

    fn purge_in_background(self: &Arc<Self>) {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = this.layout.purge_trash() {
                debug!(error = %err, "trash purge incomplete");
            }
        });
    }

    fn discard_in_background(self: &Arc<Self>, staging: PathBuf) {
        if let Err(err) = self.layout.discard(&staging) {
            warn!(staging = %staging.display(), error = %err, "cannot discard staging entry");
        }
        self.purge_in_background();
    }
}

/// Releases reserved room when a download ends, however it ends.
struct Reservation {
    cache: Arc<NarCache>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.cache.state).reserved_bytes -= self.bytes;
    }
}

/// Counts compressed bytes as they arrive.
struct CountingReader<R> {
    inner: R,
    counter: Arc<NarCache>,
}

impl<R: std::io::Read> std::io::Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.stats.bytes_downloaded.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[derive(Debug, thiserror::Error)]
enum DownloadError {
    #[error("{0}")]
    Remote(String),
    #[error("local disk: {0}")]
    Local(String),
}

impl DownloadError {
    fn local(err: LayoutError) -> Self {
        DownloadError::Local(err.to_string())
    }
}

/// Loads one published entry; the error says why it is unusable.
fn load_entry(dir: &std::path::Path, name: &str) -> Result<(Entry, std::time::SystemTime), String> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("cannot read manifest: {e}"))?;
    let mtime = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .map_err(|e| format!("cannot stat manifest: {e}"))?;
    let manifest = Manifest::decode(&bytes).map_err(|e| format!("bad manifest: {e}"))?;
    let narinfo = NarInfo::parse(manifest.narinfo.as_bytes())
        .map_err(|e| format!("bad narinfo in manifest: {e}"))?;
    if narinfo.store_path.hash_part() != name {
        return Err(format!("manifest is for {}", narinfo.store_path));
    }
    let entry =
        Entry { store_path: narinfo.store_path.clone(), narinfo, manifest, dir: dir.into() };
    Ok((entry, mtime))
}
