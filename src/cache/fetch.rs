//! Fetching one store path: ask each substituter in turn (or the one that served it before),
//! verify the narinfo, then download, verify and unpack the NAR and publish the entry.
//!
//! The local disk going wrong: a read-only cache fetches nothing (EIO at once); a path that
//! cannot fit even after evicting every unpinned path is refused before anything is evicted or
//! downloaded, and the refusal is remembered (`no_room.rs`); ENOSPC or EDQUOT anywhere in a
//! download (staging directory, files, manifest, publish; out of bytes or of inodes) evicts
//! what the failed try used and retries once.

use std::path::Path;
use std::time::Instant;

use tokio_util::io::SyncIoBridge;
use tracing::{debug, info, warn};

use crate::logging::warn_throttled;

use super::error::Failures;
use super::evict::Reservation;
use super::index_entry::IndexAnswer;
use super::layout::LayoutError;
use super::scan;
use super::stats::CacheStats;
use super::{CacheError, Cause, Entry, Failure, NarCache, unpack};
use crate::nix::hash::NarHash;
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StorePath;
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering, lock};
use crate::upstream::low_speed::LowSpeedReader;
use crate::upstream::{Upstream, UpstreamError, UpstreamSet};

impl NarCache {
    /// Asks each substituter in turn until one yields a verified copy. Until `wanted` (a reader
    /// waits for it), the fetch is a prefetch: it downloads only into room free now.
    pub(super) async fn fetch(
        self: &Arc<Self>,
        sp: &StorePath,
        wanted: &AtomicBool,
    ) -> Result<Arc<Entry>, CacheError> {
        let result = self.fetch_from_substituters(sp, wanted).await;
        if let Err(CacheError::Unavailable { .. }) = &result {
            // Counted apart, so that an alert on reader failures stays quiet when only
            // prefetches of a failing substituter fail. A reader that joined counts.
            let failures = match wanted.load(Ordering::Acquire) {
                true => &self.stats.fetch_failures,
                false => &self.stats.prefetch_failures,
            };
            CacheStats::bump(failures);
        }
        result
    }

    /// `fetch`, before counting a failure.
    async fn fetch_from_substituters(
        self: &Arc<Self>,
        sp: &StorePath,
        wanted: &AtomicBool,
    ) -> Result<Arc<Entry>, CacheError> {
        let hash = sp.hash_part();
        if self.layout.read_only() {
            let dir = self.config.dir.display();
            let why =
                format!("cache directory {dir} is read-only: only paths cached there are served");
            return Err(CacheError::Local { path: sp.to_string(), cause: Cause::msg(why) });
        }
        let mut failures: Vec<Failure> = Vec::new();
        let upstreams = self.ordered_upstreams(sp).await?;
        // A path served before: same substituter, same narinfo, no narinfo request (if it still
        // carries a trusted signature). Whatever happens, only that NarHash is acceptable now.
        let served_before = self
            .narinfos
            .get(&hash)
            .filter(|(_, info)| info.store_path == *sp && self.keys.verify(info).is_ok());
        let pinned = served_before.as_ref().map(|(_, info)| info.nar_hash);
        if let Some((from, info)) = served_before {
            let up = upstreams.iter().find(|u| u.url() == from).map(|u| u.as_ref());
            if let Some(entry) = self.fetch_verified(up, &info, wanted, None, &mut failures).await?
            {
                return Ok(entry);
            }
        }
        for up in upstreams.iter() {
            // The file index, if the mount trusts any, is asked for beside the narinfo: one
            // round trip for both. It is used only once the narinfo verified.
            let (info, index) = tokio::join!(
                self.verified_narinfo(up.as_ref(), sp, pinned, &mut failures),
                self.index_answer(up.as_ref(), sp)
            );
            let Some(info) = info else { continue };
            let up = Some(up.as_ref());
            if let Some(entry) =
                self.fetch_verified(up, &info, wanted, index, &mut failures).await?
            {
                return Ok(entry);
            }
        }
        Err(self.not_served(sp, failures))
    }

    /// With `info` verified: refuses a path that can never fit, queues its references for
    /// prefetch, then serves it from its file index (`index`: the answer already in hand, if
    /// any) or downloads it from `up` (when that substituter is configured). `Ok(None)`
    /// when there was nothing to download from or the download failed (its reason then added to
    /// `failures`), so the next substituter may be tried.
    async fn fetch_verified(
        self: &Arc<Self>,
        up: Option<&dyn Upstream>,
        info: &NarInfo,
        wanted: &AtomicBool,
        index: Option<IndexAnswer>,
        failures: &mut Vec<Failure>,
    ) -> Result<Option<Arc<Entry>>, CacheError> {
        if let Some(err) = self.cannot_fit(info) {
            return Err(err);
        }
        self.prefetch_references(info);
        let Some(up) = up else { return Ok(None) };
        if let Some(entry) = self.partial_from_index(up, info, index).await {
            return Ok(Some(entry));
        }
        let room = self.room_for(info, wanted)?;
        let prefetch = room.is_some();
        if !prefetch {
            self.refuse_if_no_room(info)?;
        }
        match self.download_retrying(up, info, room).await {
            Ok(entry) => Ok(Some(entry)),
            Err(DownloadError::NoSpace { .. }) if prefetch => {
                // A prefetch never evicts; a reader that joined since fetches it again (`get`).
                CacheStats::bump(&self.stats.prefetch_skipped);
                Err(CacheError::NoRoomToPrefetch(info.store_path.to_string()))
            }
            Err(err @ DownloadError::NoSpace { .. }) => {
                warn!(store_path = %info.store_path, upstream = up.url(), error = %err,
                      "cache filesystem still full after evicting");
                let free = self.room_after_evicting();
                Err(self.refuse(info, free, "still full after evicting and retrying"))
            }
            Err(err) => {
                warn_throttled!(self.failure_log, store_path = %info.store_path,
                                upstream = up.url(), error = %err, "NAR rejected");
                failures.push(Failure::of(up.url(), err));
                Ok(None)
            }
        }
    }

    /// The substituters in priority order, asked for their nix-cache-info at the first fetch.
    pub(super) async fn ordered_upstreams(
        &self,
        sp: &StorePath,
    ) -> Result<&UpstreamSet, CacheError> {
        let ordered = self
            .ordered
            .get_or_init(|| async {
                UpstreamSet::discover(self.upstreams.iter().cloned().collect())
                    .await
                    .map_err(Cause::new)
            })
            .await;
        ordered.as_ref().map_err(|cause| CacheError::Unavailable {
            path: sp.to_string(),
            failures: Failures(vec![Failure { upstream: None, cause: cause.clone() }]),
        })
    }

    /// Asks `up` for the narinfo of `sp` and checks it: it names `sp`, carries a trusted
    /// signature and (when `pinned`) the NarHash served before. None, with the reason added to
    /// `failures` when it is one, if `up` gave no such narinfo.
    async fn verified_narinfo(
        &self,
        up: &dyn Upstream,
        sp: &StorePath,
        pinned: Option<NarHash>,
        failures: &mut Vec<Failure>,
    ) -> Option<NarInfo> {
        CacheStats::bump(&self.stats.narinfo_requests);
        let asked = Instant::now();
        let answer = up.narinfo(&sp.hash_part()).await;
        if !matches!(answer, Err(UpstreamError::Down { .. })) {
            self.stats.narinfo_fetch_seconds.observe(asked.elapsed());
        }
        let info = match answer {
            Ok(Some(info)) => info,
            Ok(None) => {
                debug!(store_path = %sp, upstream = up.url(), "not in this cache");
                return None;
            }
            Err(err @ UpstreamError::Down { .. }) => {
                // Said once, when the cache went down; not again for every lookup.
                debug!(store_path = %sp, upstream = up.url(), error = %err, "cache skipped");
                failures.push(Failure { upstream: None, cause: Cause::new(err) });
                return None;
            }
            Err(err) => {
                warn_throttled!(self.failure_log, store_path = %sp, upstream = up.url(),
                                error = %err, "narinfo failed");
                failures.push(Failure { upstream: None, cause: Cause::new(err) });
                return None;
            }
        };
        if info.store_path != *sp {
            // NI-3: a narinfo for another path under this hash; that is "not here".
            warn_throttled!(self.failure_log, store_path = %sp, upstream = up.url(),
                            claimed = %info.store_path, "narinfo names another store path; ignored");
            return None;
        }
        if let Err(err) = self.keys.verify(&info) {
            CacheStats::bump(&self.stats.verify_failures);
            warn_throttled!(self.failure_log, store_path = %sp, upstream = up.url(),
                            error = %err, "untrusted narinfo");
            failures.push(Failure::of(up.url(), Rejected::Untrusted(err)));
            return None;
        }
        if let Some(pinned) = pinned.filter(|p| *p != info.nar_hash) {
            warn!(store_path = %sp, upstream = up.url(), served_before = %pinned,
                  offered = %info.nar_hash, "another version of a path served before; refused");
            let offered = info.nar_hash;
            failures.push(Failure::of(up.url(), Rejected::OtherNarHash { offered, pinned }));
            return None;
        }
        Some(info)
    }

    /// The error for a path no substituter served: absent (and remembered so) when none failed.
    fn not_served(&self, sp: &StorePath, failures: Vec<Failure>) -> CacheError {
        if failures.is_empty() {
            lock(&self.negative).put(sp.hash_part(), Instant::now());
            CacheError::NotFound(sp.to_string())
        } else {
            CacheError::Unavailable { path: sp.to_string(), failures: Failures(failures) }
        }
    }

    /// Room for downloading `info`: for a reader, None (the download makes room, evicting);
    /// for a prefetch no reader waits for, room free now, or `NoRoomToPrefetch`.
    fn room_for(
        self: &Arc<Self>,
        info: &NarInfo,
        wanted: &AtomicBool,
    ) -> Result<Option<Reservation>, CacheError> {
        if wanted.load(Ordering::Acquire) {
            return Ok(None);
        }
        match self.reserve_without_evicting(info.nar_size) {
            Some(room) => Ok(Some(room)),
            // A reader may have joined since.
            None if wanted.load(Ordering::Acquire) => Ok(None),
            None => {
                CacheStats::bump(&self.stats.prefetch_skipped);
                debug!(store_path = %info.store_path, nar_size = info.nar_size,
                       "not prefetched: no room without evicting");
                Err(CacheError::NoRoomToPrefetch(info.store_path.to_string()))
            }
        }
    }

    /// Refuses `info` at once, evicting nothing, when it would not fit on the cache filesystem
    /// even if every unpinned path were evicted (DSK-11: someone else's files fill the disk).
    fn refuse_if_no_room(&self, info: &NarInfo) -> Result<(), CacheError> {
        let room = self.room();
        let free = {
            let cat = lock(&self.catalog);
            if cat.could_fit(&room, info.nar_size) {
                return Ok(());
            }
            cat.room_after_evicting(&room)
        };
        Err(self.refuse(info, free, "no room even after evicting every unpinned path"))
    }

    /// Free bytes above `--min-free` if every unpinned path were evicted, now.
    fn room_after_evicting(&self) -> u64 {
        let room = self.room();
        lock(&self.catalog).room_after_evicting(&room)
    }

    /// The refusal of `info` for want of room (`free` bytes at best, `why`), counted and
    /// remembered for the negative TTL, so that later lookups are answered without a download.
    fn refuse(&self, info: &NarInfo, free: u64, why: &str) -> CacheError {
        CacheStats::bump(&self.stats.no_room_refusals);
        warn!(store_path = %info.store_path, nar_size = info.nar_size, free,
              "cache filesystem: {why}; path refused for the negative TTL");
        let err =
            CacheError::NoRoom { path: info.store_path.to_string(), needed: info.nar_size, free };
        self.no_room.remember(info.store_path.hash_part(), err.clone());
        err
    }

    /// A path larger than --max-size is still served (alone, evicting everything else): failing
    /// a job is worse than overshooting the quota by one path. A path larger than the whole cache
    /// filesystem can never fit; it is refused before downloading, whichever cache offers it.
    fn cannot_fit(&self, info: &NarInfo) -> Option<CacheError> {
        let room = self.layout.space().map_or(u64::MAX, |s| s.total_bytes);
        (info.nar_size > room).then(|| CacheError::TooLarge {
            path: info.store_path.to_string(),
            needed: info.nar_size,
            limit: room,
        })
    }

    /// `download`, retried once after evicting when the disk was full of bytes or of inodes
    /// (DSK-1, DSK-3): NarSize worth of paths, holding at least the inodes the failed try had
    /// used. `room`: room already reserved for the first try, by a prefetch, which never evicts
    /// (nor retries).
    async fn download_retrying(
        self: &Arc<Self>,
        up: &dyn Upstream,
        info: &NarInfo,
        room: Option<Reservation>,
    ) -> Result<Arc<Entry>, DownloadError> {
        let prefetch = room.is_some();
        let result = self.download(up, info, room).await;
        let Err(DownloadError::NoSpace { inodes, .. }) = &result else { return result };
        if prefetch {
            return result;
        }
        warn!(store_path = %info.store_path, inodes,
              "cache filesystem full; evicting and retrying once");
        let freed = self.evict_for(info.nar_size, *inodes).await;
        debug!(store_path = %info.store_path, bytes = freed.bytes, inodes = freed.inodes,
               "evicted for the retry");
        self.download(up, info, None).await
    }

    /// A local failure of a download, full (evicting may help) or not; EROFS makes the cache
    /// read-only. `staging`: the staging directory, to count the inodes it used.
    fn local_failure(
        &self,
        err: impl std::error::Error + Send + Sync + 'static,
        staging: Option<&Path>,
    ) -> DownloadError {
        let cause = Cause::new(err);
        if cause.is_no_space() {
            return DownloadError::no_space(cause, staging.map_or(0, |d| self.layout.inodes_in(d)));
        }
        if cause.io_error().and_then(std::io::Error::raw_os_error) == Some(libc::EROFS) {
            self.layout.saw_read_only();
        }
        DownloadError::Local(cause)
    }

    /// Downloads, verifies, unpacks and publishes one NAR from `up`, timing it, in `room` if
    /// given (else room is made for it).
    async fn download(
        self: &Arc<Self>,
        up: &dyn Upstream,
        info: &NarInfo,
        room: Option<Reservation>,
    ) -> Result<Arc<Entry>, DownloadError> {
        let started = Instant::now();
        let result = self.download_untimed(up, info, room).await;
        if result.is_ok() {
            self.stats.nar_fetch_seconds.observe(started.elapsed());
        }
        result
    }

    async fn download_untimed(
        self: &Arc<Self>,
        up: &dyn Upstream,
        info: &NarInfo,
        room: Option<Reservation>,
    ) -> Result<Arc<Entry>, DownloadError> {
        let sp = &info.store_path;
        let hash = sp.hash_part();
        let reservation = match room {
            Some(room) => room,
            None => self.reserve(info.nar_size).await,
        };
        // Compression can only shrink real NARs much, but may grow incompressible ones a little.
        let max_compressed = info.nar_size + info.nar_size / 16 + (1 << 20);
        CacheStats::bump(&self.stats.nar_downloads);
        let body = up.nar(&info.url, max_compressed).await;
        let body = body.map_err(DownloadError::remote)?;
        let staging = self.layout.new_staging(&hash).map_err(|e| self.local_failure(e, None))?;
        let wire = LowSpeedReader::new(SyncIoBridge::new(body), self.config.low_speed);
        let reader = CountingReader { inner: wire, counter: self.clone() };
        let (info2, staging2) = (info.clone(), staging.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            unpack::unpack(reader, &info2, max_compressed, &staging2)
        })
        .await
        .map_err(DownloadError::local)?;
        let manifest = match unpacked {
            Ok(m) => m,
            Err(err) => {
                // A full disk (ENOSPC or EDQUOT anywhere in the chain) counts the staging
                // directory's inodes before it goes: the retry needs as many.
                let failure = if err.is_local() {
                    self.local_failure(err, Some(&staging))
                } else {
                    // The body broke, stalled or did not verify: only its reader knows.
                    up.counters().failed();
                    if !err.is_transport() {
                        CacheStats::bump(&self.stats.verify_failures);
                    }
                    DownloadError::remote(err)
                };
                self.discard_in_background(staging);
                return Err(failure);
            }
        };
        let layout_publish = {
            let this = self.clone();
            let (staging, hash) = (staging.clone(), hash.clone());
            tokio::task::spawn_blocking(move || {
                let _moves = lock(&this.moves);
                if this.is_closed() {
                    return Err(LayoutError::Closed);
                }
                this.layout.publish(&staging, &hash)
            })
        };
        let dir = match layout_publish.await.map_err(DownloadError::local)? {
            Ok(dir) => dir,
            Err(err) => {
                let failure = self.local_failure(err, Some(&staging));
                self.discard_in_background(staging);
                return Err(failure);
            }
        };
        let entry = Arc::new(Entry {
            store_path: sp.clone(),
            narinfo: info.clone(),
            manifest,
            dir,
            touched_secs: AtomicU64::new(scan::unix_now()),
            partial: None,
        });
        if let Err(err) = self.narinfos.put(up.url(), info) {
            warn!(store_path = %sp, error = %err, "cannot remember the narinfo");
        }
        info!(store_path = %sp, nar_size = info.nar_size, disk_bytes = entry.manifest.disk_bytes,
              upstream = up.url(), "published");
        // The reservation ends before the entry is counted, so it is not counted twice.
        drop(reservation);
        lock(&self.catalog).admit(hash.clone(), entry.clone());
        let this = self.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || this.evict_after_publish(&hash)).await
        {
            warn!(error = %err, "eviction after publish failed");
        }
        Ok(entry)
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
        CacheStats::add(&self.counter.stats.bytes_downloaded, n as u64);
        Ok(n)
    }
}

/// Why one download from one substituter failed; each keeps its cause's source chain.
#[derive(Debug, thiserror::Error)]
pub(super) enum DownloadError {
    /// The substituter or its bytes: the next substituter may do better.
    #[error("{0}")]
    Remote(#[source] Cause),
    /// The cache filesystem is full, of bytes or of inodes: evicting may help.
    #[error("local disk full: {cause}")]
    NoSpace {
        /// The ENOSPC or EDQUOT.
        #[source]
        cause: Cause,
        /// Inodes the failed try had used, plus the one it could not create and the manifest.
        inodes: u64,
    },
    /// The cache filesystem failed otherwise.
    #[error("local disk: {0}")]
    Local(#[source] Cause),
}

impl DownloadError {
    fn remote(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        DownloadError::Remote(Cause::new(err))
    }

    fn local(err: impl std::error::Error + Send + Sync + 'static) -> Self {
        DownloadError::Local(Cause::new(err))
    }

    /// Out of room, after a try that had used `inodes_used` inodes.
    fn no_space(cause: Cause, inodes_used: u64) -> Self {
        DownloadError::NoSpace { cause, inodes: inodes_used + 2 }
    }
}

/// Why a narinfo that was served is not used.
#[derive(Debug, thiserror::Error)]
pub(super) enum Rejected {
    #[error("untrusted narinfo: {0}")]
    Untrusted(#[source] crate::nix::signature::VerifyError),
    #[error("NarHash {offered} differs from {pinned} served before")]
    OtherNarHash { offered: NarHash, pinned: NarHash },
}
