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

use std::path::PathBuf;

use tracing::{debug, warn};

use super::catalog::{Catalog, Room};
use super::layout::LayoutError;
use super::stats::CacheStats;
use super::{CacheError, Entry, NarCache};
use crate::sync::{Arc, lock};

/// An evicted (or discarded) entry waiting in `trash/`, and the bytes it still occupies.
pub(super) type Trashed = Vec<(PathBuf, u64)>;

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

    /// Evicts `victims` one at a time until `enough(room, catalog, bytes freed so far)` holds
    /// (checked before each eviction) or nothing is left to evict; returns what went to trash.
    /// Blocking.
    pub(super) fn evict_until(
        &self,
        victims: Victims<'_>,
        enough: impl Fn(&Room, &Catalog, u64) -> bool,
    ) -> Trashed {
        let room = self.room();
        let mut trashed: Trashed = Vec::new();
        let mut freed = 0;
        loop {
            let moves = lock(&self.moves);
            if self.is_closed() {
                break;
            }
            let victim = {
                let mut cat = lock(&self.catalog);
                if enough(&room, &cat, freed) {
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
            let Some(trash) = self.move_to_trash(&victim) else { break };
            freed += trash.1;
            trashed.push(trash);
            drop(moves);
        }
        trashed
    }

    /// Moves `victim`, already taken out of the catalog, to `trash/`, with the `moves` lock
    /// held by the caller. If that fails it is cached again (its bytes are still on disk).
    fn move_to_trash(&self, victim: &Arc<Entry>) -> Option<(PathBuf, u64)> {
        match self.layout.discard(&victim.dir) {
            Ok(trash) => {
                CacheStats::bump(&self.stats.evictions);
                debug!(store_path = %victim.store_path, bytes = victim.manifest.disk_bytes,
                       "evicted");
                Some((trash, victim.manifest.disk_bytes))
            }
            Err(err) => {
                warn!(store_path = %victim.store_path, error = %err, "eviction failed");
                lock(&self.catalog).put_back(victim.clone());
                None
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
        match self.layout.discard(&victim.dir) {
            Ok(trash) => {
                CacheStats::bump(&self.stats.evictions);
                debug!(store_path = %victim.store_path, "evicted");
                Ok(Some((trash, victim.manifest.disk_bytes)))
            }
            Err(err) => {
                warn!(store_path = %victim.store_path, error = %err, "eviction failed");
                lock(&self.catalog).put_back(victim);
                Err(err)
            }
        }
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

    /// Evicts least-recently-used entries worth at least `bytes` (the disk was full) and deletes
    /// them before returning, on the blocking pool: the retry that follows needs the space.
    pub(super) async fn evict_for(self: &Arc<Self>, bytes: u64) {
        let this = self.clone();
        let evicted = tokio::task::spawn_blocking(move || {
            let trashed = this.evict_until(Victims::Oldest, |_, _, freed| freed >= bytes);
            this.delete_trashed(trashed);
        })
        .await;
        if let Err(err) = evicted {
            warn!(error = %err, "eviction task failed");
        }
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

    /// Deletes trashed entries now. Blocking.
    fn delete_trashed(&self, trashed: Trashed) {
        for (path, bytes) in trashed {
            if let Err(err) = self.layout.remove_trashed(&path) {
                debug!(error = %err, "trash purge incomplete; the next start finishes it");
            }
            lock(&self.catalog).gone(bytes);
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
