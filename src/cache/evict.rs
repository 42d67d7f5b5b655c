//! Eviction: keeping the cache within `--max-size` and `--min-free` by dropping whole paths in
//! least-recently-used order (pinned paths never), and the operator's `evict` of single paths.
//!
//! The order of work keeps reads of cached files from ever waiting on eviction's I/O:
//! 1. the room (`statvfs`) is read with no lock held;
//! 2. under the catalog's lock, one victim is taken out of the catalog (memory only);
//! 3. with the catalog's lock released, its directory is renamed into `trash/` while the `moves`
//!    lock is held (a publish of the same hash part waits for it, so it never meets the old
//!    directory still in place);
//! 4. `trash/` is emptied on the blocking pool, and each deleted entry's bytes stop counting as
//!    leaving.
//!
//! Every function here does blocking I/O: callers on the async runtime go through
//! `spawn_blocking` (`reserve`, `evict_for`, `evict`, `gc`), never run it on a worker.
//!
//! A reader's download evicts only when evicting can make it fit (`Catalog::could_fit`, checked
//! by the fetch before it reserves), and then only until it fits. Each batch of deletions also
//! trims `narinfo/`: the narinfos of evicted paths are kept (one version per path) up to
//! `kept_narinfo_limit`, then the oldest evicted go.

use std::path::PathBuf;

use tracing::{debug, warn};

use super::catalog::{Catalog, Room};
use super::layout::LayoutError;
use super::stats::CacheStats;
use super::{CacheError, Entry, NarCache};
use crate::sync::{Arc, lock};

/// An evicted (or discarded) entry waiting in `trash/`, and the bytes it still occupies.
pub(super) type Trashed = Vec<(PathBuf, u64)>;

/// Each narinfo file is counted as one filesystem block.
const NARINFO_BLOCK_BYTES: u64 = 4096;
/// At least this many narinfos of evicted paths are kept, whatever `--max-size`.
const MIN_KEPT_NARINFOS: usize = 1024;
/// Narinfos of evicted paths may take at most this share (1/64) of `--max-size` beyond it.
const KEPT_NARINFO_SHARE: u64 = 64;

/// How many narinfos of paths not cached `narinfo/` keeps for a cache of `max_bytes`: at least
/// 1024, else 1/64 of `--max-size` in 4 KiB blocks.
pub(super) fn kept_narinfo_limit(max_bytes: u64) -> usize {
    let share = max_bytes / KEPT_NARINFO_SHARE / NARINFO_BLOCK_BYTES;
    usize::try_from(share).unwrap_or(usize::MAX).max(MIN_KEPT_NARINFOS)
}

/// What an eviction run has moved to the trash so far.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Freed {
    /// Bytes of the entries moved.
    pub bytes: u64,
    /// Inodes they hold (directory and files).
    pub inodes: u64,
}

/// Which entry to evict next.
#[derive(Clone, Copy, Debug)]
pub(super) enum Victims<'a> {
    /// The least recently used unpinned entry.
    Oldest,
    /// The least recently used unpinned entry but the one named (a path just published).
    OldestBut(&'a str),
}

impl NarCache {
    /// Holds `bytes` of room for a download, evicting old entries to make it. Blocking.
    pub(super) fn reserve_blocking(self: &Arc<Self>, bytes: u64) -> Reservation {
        let trashed = self.evict_until(Victims::Oldest, |room, cat, _| cat.fits(room, bytes));
        lock(&self.catalog).reserve(bytes);
        self.purge(trashed);
        Reservation { cache: self.clone(), bytes }
    }

    /// `reserve_blocking`, on the blocking pool.
    pub(super) async fn reserve(self: &Arc<Self>, bytes: u64) -> Reservation {
        let this = self.clone();
        match tokio::task::spawn_blocking(move || this.reserve_blocking(bytes)).await {
            Ok(reservation) => reservation,
            // The task panicked (it cannot be cancelled): reserve without evicting, as the
            // next publish evicts anyway.
            Err(_) => {
                lock(&self.catalog).reserve(bytes);
                Reservation { cache: self.clone(), bytes }
            }
        }
    }

    /// Holds `bytes` of room if they fit under `--max-size` and above `--min-free` without
    /// evicting anything; None otherwise.
    pub(super) fn reserve_without_evicting(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let room = self.room();
        let mut cat = lock(&self.catalog);
        if !cat.fits(&room, bytes) {
            return None;
        }
        cat.reserve(bytes);
        Some(Reservation { cache: self.clone(), bytes })
    }

    /// After a publish: evicts until the cache is within its limits again, keeping `newest`
    /// even when it alone is over them. Blocking.
    pub(super) fn evict_after_publish(self: &Arc<Self>, newest: &str) {
        let trashed =
            self.evict_until(Victims::OldestBut(newest), |room, cat, _| cat.fits(room, 0));
        self.purge(trashed);
    }

    /// Evicts `victims` one at a time until `enough(room, catalog, freed so far)` holds
    /// (checked before each eviction) or nothing is left to evict; returns what went to trash.
    /// Nothing on a read-only cache. Blocking.
    pub(super) fn evict_until(
        &self,
        victims: Victims<'_>,
        enough: impl Fn(&Room, &Catalog, &Freed) -> bool,
    ) -> Trashed {
        let mut trashed: Trashed = Vec::new();
        if self.layout.read_only() {
            return trashed;
        }
        let room = self.room();
        let mut freed = Freed::default();
        loop {
            let moves = lock(&self.moves);
            if self.is_closed() {
                break;
            }
            let victim = {
                let mut cat = lock(&self.catalog);
                if enough(&room, &cat, &freed) {
                    break;
                }
                let keep = match victims {
                    Victims::Oldest => None,
                    Victims::OldestBut(hash) => Some(hash),
                };
                match cat.take_victim(keep) {
                    Some(victim) => victim,
                    None => break,
                }
            };
            // A victim that cannot be moved is cached again as the oldest: stop rather than pick
            // it again.
            let Ok(trash) = self.move_to_trash(victim) else { break };
            freed.bytes += trash.1;
            freed.inodes += self.layout.inodes_in(&trash.0);
            trashed.push(trash);
            drop(moves);
        }
        trashed
    }

    /// Moves `victim`, already taken out of the catalog, to `trash/`, with the `moves` lock
    /// held by the caller. If that fails it is cached again (its bytes are still on disk), and
    /// an `EROFS` turns the cache read-only.
    fn move_to_trash(&self, victim: Arc<Entry>) -> Result<(PathBuf, u64), LayoutError> {
        match self.layout.discard(&victim.dir) {
            Ok(trash) => {
                CacheStats::bump(&self.stats.evictions);
                debug!(store_path = %victim.store_path, bytes = victim.disk_bytes(),
                       "evicted");
                Ok((trash, victim.disk_bytes()))
            }
            Err(err) => {
                if err.is_read_only() {
                    self.layout.saw_read_only();
                }
                warn!(store_path = %victim.store_path, error = %err, "eviction failed");
                lock(&self.catalog).put_back(victim);
                Err(err)
            }
        }
    }

    /// Evicts the entry `hash` (pinned or not: callers check), if it is `expected` (or any
    /// entry when None). `Ok(None)` when it is not cached (or another entry is). Blocking.
    pub(super) fn evict_entry(
        &self,
        hash: &str,
        expected: Option<&Arc<Entry>>,
    ) -> Result<Option<(PathBuf, u64)>, LayoutError> {
        let _moves = lock(&self.moves);
        if self.is_closed() {
            return Err(LayoutError::Closed);
        }
        let victim = {
            let mut cat = lock(&self.catalog);
            let matches =
                cat.peek(hash).is_some_and(|e| expected.is_none_or(|x| Arc::ptr_eq(e, x)));
            if !matches {
                return Ok(None);
            }
            cat.take(hash).expect("peeked under the same lock")
        };
        self.move_to_trash(victim).map(Some)
    }

    /// The cache filesystem's free space now, and how much `--min-free` keeps.
    pub(super) fn room(&self) -> Room {
        match self.layout.space() {
            Ok(space) => Room {
                max_bytes: self.config.max_bytes,
                free_bytes: space.free_bytes,
                min_free_bytes: self.config.min_free.bytes_of(space.total_bytes),
            },
            Err(err) => {
                warn!(error = %err, "cannot read free space of the cache filesystem");
                Room { max_bytes: self.config.max_bytes, free_bytes: u64::MAX, min_free_bytes: 0 }
            }
        }
    }

    /// Evicts least-recently-used entries holding at least `bytes` and `inodes` (the disk was
    /// full, of space or of inodes) and deletes them before returning, on the blocking pool: the
    /// retry that follows needs the room. Returns what was freed.
    pub(super) async fn evict_for(self: &Arc<Self>, bytes: u64, inodes: u64) -> Freed {
        let this = self.clone();
        let evicted = tokio::task::spawn_blocking(move || {
            let enough = |_: &Room, _: &Catalog, freed: &Freed| {
                freed.bytes >= bytes && freed.inodes >= inodes
            };
            let trashed = this.evict_until(Victims::Oldest, enough);
            let freed = Freed {
                bytes: trashed.iter().map(|(_, b)| b).sum(),
                inodes: trashed.iter().map(|(p, _)| this.layout.inodes_in(p)).sum(),
            };
            this.delete_trashed(trashed);
            freed
        })
        .await;
        evicted.unwrap_or_else(|err| {
            warn!(error = %err, "eviction task failed");
            Freed::default()
        })
    }

    /// Deletes trashed entries in the background, then stops counting their bytes.
    pub(super) fn purge(self: &Arc<Self>, trashed: Trashed) {
        if trashed.is_empty() {
            return;
        }
        let this = self.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || this.delete_trashed(trashed))),
            Err(_) => this.delete_trashed(trashed),
        }
    }

    /// Deletes trashed entries now, then the narinfos of evicted paths beyond the limit.
    /// Blocking.
    fn delete_trashed(&self, trashed: Trashed) {
        for (path, bytes) in trashed {
            if let Err(err) = self.layout.remove_trashed(&path) {
                debug!(error = %err, "trash purge incomplete; the next start finishes it");
            }
            lock(&self.catalog).gone(bytes);
        }
        self.trim_narinfos();
    }

    /// Deletes the narinfos of the paths evicted longest ago, beyond `kept_narinfo_limit`.
    /// Blocking.
    pub(super) fn trim_narinfos(&self) {
        self.trim_narinfos_to(kept_narinfo_limit(self.config.max_bytes));
    }

    /// Deletes the narinfos of the paths evicted longest ago, beyond `limit`. Blocking.
    pub(super) fn trim_narinfos_to(&self, limit: usize) {
        if self.layout.read_only() {
            return;
        }
        let excess = lock(&self.catalog).excess_narinfos(limit);
        for hash in &excess {
            if let Err(err) = self.narinfos.remove(hash) {
                debug!(hash, error = %err, "cannot delete a kept narinfo");
            }
        }
        if !excess.is_empty() {
            debug!(deleted = excess.len(), "narinfos of evicted paths trimmed");
        }
    }

    /// Throws a failed staging directory away.
    pub(super) fn discard_in_background(self: &Arc<Self>, staging: PathBuf) {
        match self.layout.discard(&staging) {
            Ok(trash) => {
                let this = self.clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(err) = this.layout.remove_trashed(&trash) {
                        debug!(error = %err, "cannot delete discarded staging entry");
                    }
                });
            }
            Err(err) => {
                warn!(staging = %staging.display(), error = %err, "cannot discard staging entry");
            }
        }
    }

    /// Evicts the given paths (the operator's `evict`); pinned ones are refused. Blocking.
    pub(super) fn evict_paths_blocking(
        self: &Arc<Self>,
        paths: &[crate::nix::store_path::StorePath],
    ) -> Vec<Result<bool, CacheError>> {
        let mut trashed = Vec::new();
        let out = paths
            .iter()
            .map(|sp| {
                let hash = sp.hash_part();
                let entry = {
                    let cat = lock(&self.catalog);
                    if cat.pin_of(&hash) == Some(sp) {
                        return Err(CacheError::Pinned(sp.to_string()));
                    }
                    match cat.peek(&hash) {
                        Some(e) if e.store_path == *sp => e.clone(),
                        _ => return Ok(false),
                    }
                };
                match self.evict_entry(&hash, Some(&entry)) {
                    Ok(Some(trash)) => {
                        trashed.push(trash);
                        Ok(true)
                    }
                    Ok(None) => Ok(false),
                    Err(err) => Err(CacheError::local(sp, err)),
                }
            })
            .collect();
        self.purge(trashed);
        out
    }
}

/// Releases reserved room when a download ends, however it ends.
pub(super) struct Reservation {
    cache: Arc<NarCache>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.cache.catalog).release(self.bytes);
    }
}
