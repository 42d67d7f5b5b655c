//! Keeping the cache within its quota: `--max-size` and `--min-free`, by evicting whole paths in
//! least-recently-used order, renaming them to `trash/` first and deleting them in the background.
//! Pinned paths are skipped: they stay, and count, even when that leaves the cache over its limit.

use std::path::PathBuf;

use tracing::{debug, warn};

use super::layout::LayoutError;
use super::stats::CacheStats;
use super::{NarCache, State};
use crate::sync::{Arc, lock};

/// An evicted (or discarded) entry waiting in `trash/`, and the bytes it still occupies.
pub(super) type Trashed = Vec<(PathBuf, u64)>;

impl NarCache {
    /// Holds `bytes` of room for a download, evicting old entries to make it.
    pub(super) fn reserve(self: &Arc<Self>, bytes: u64) -> Reservation {
        let trashed = {
            let mut st = lock(&self.state);
            let trashed = self.evict_locked(&mut st, bytes);
            st.reserved_bytes += bytes;
            trashed
        };
        self.purge(trashed);
        Reservation { cache: self.clone(), bytes }
    }

    /// Evicts least-recently-used entries until `extra` more bytes fit under `--max-size` and
    /// leave `--min-free` free on the filesystem. After a publish (`extra == 0`) the newest entry
    /// is kept even when it alone is over the limit. Pinned entries are never chosen.
    pub(super) fn evict_locked(&self, st: &mut State, extra: u64) -> Trashed {
        let keep_newest = extra == 0;
        let room = self.room();
        let mut freed = 0u64;
        let mut trashed = Vec::new();
        while !room.fits(st, extra, freed) {
            let Some(trash) = self.evict_one(st, keep_newest) else { break };
            freed += trash.1;
            trashed.push(trash);
        }
        trashed
    }

    /// Holds `bytes` of room if they fit under `--max-size` and above `--min-free` without
    /// evicting anything; None otherwise.
    pub(super) fn reserve_without_evicting(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let room = self.room();
        let mut st = lock(&self.state);
        if !room.fits(&st, bytes, 0) {
            return None;
        }
        st.reserved_bytes += bytes;
        Some(Reservation { cache: self.clone(), bytes })
    }

    /// The cache filesystem's free space now, and how much `--min-free` keeps.
    fn room(&self) -> Room {
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

    /// Evicts least-recently-used entries worth at least `bytes` (the disk was full).
    pub(super) fn evict_for(self: &Arc<Self>, bytes: u64) {
        let trashed = {
            let mut st = lock(&self.state);
            let mut trashed = Vec::new();
            let mut freed = 0;
            while freed < bytes {
                let Some(trash) = self.evict_one(&mut st, false) else { break };
                freed += trash.1;
                trashed.push(trash);
            }
            trashed
        };
        // Delete now, not in the background: the retry needs the space.
        for (path, bytes) in trashed {
            if let Err(err) = self.layout.remove_trashed(&path) {
                warn!(error = %err, "cannot delete evicted entry");
            }
            lock(&self.state).trash_bytes -= bytes;
        }
    }

    /// Moves the least recently used unpinned entry (other than the newest, if `keep_newest`) to
    /// trash; None when there is none or it failed.
    pub(super) fn evict_one(&self, st: &mut State, keep_newest: bool) -> Option<(PathBuf, u64)> {
        let newest = if keep_newest { st.lru.iter().next().map(|(k, _)| k.clone()) } else { None };
        let hash = st
            .lru
            .iter()
            .rev()
            .map(|(k, _)| k)
            .find(|k| !st.pins.contains_key(*k) && Some(*k) != newest.as_ref())?
            .clone();
        self.evict_hash(st, &hash).ok().flatten()
    }

    /// Moves the entry `hash` to trash, whether pinned or not (callers check); `Ok(None)` when
    /// it is not cached.
    pub(super) fn evict_hash(
        &self,
        st: &mut State,
        hash: &str,
    ) -> Result<Option<(PathBuf, u64)>, LayoutError> {
        let Some(entry) = st.lru.pop(hash) else { return Ok(None) };
        st.generation += 1;
        let hash = hash.to_owned();
        match self.layout.discard(&entry.dir) {
            Ok(trash) => {
                let bytes = entry.manifest.disk_bytes;
                st.used_bytes -= bytes;
                st.trash_bytes += bytes;
                CacheStats::bump(&self.stats.evictions);
                debug!(store_path = %entry.store_path, bytes, "evicted");
                Ok(Some((trash, bytes)))
            }
            Err(err) => {
                warn!(store_path = %entry.store_path, error = %err, "eviction failed");
                // Keep accounting honest: the bytes are still on disk.
                st.lru.put(hash, entry);
                Err(err)
            }
        }
    }

    /// Deletes trashed entries in the background, then stops counting their bytes.
    pub(super) fn purge(self: &Arc<Self>, trashed: Trashed) {
        if trashed.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            for (path, bytes) in trashed {
                if let Err(err) = this.layout.remove_trashed(&path) {
                    debug!(error = %err, "trash purge incomplete; the next start finishes it");
                }
                lock(&this.state).trash_bytes -= bytes;
            }
        });
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
}

/// Releases reserved room when a download ends, however it ends.
pub(super) struct Reservation {
    cache: Arc<NarCache>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        lock(&self.cache.state).reserved_bytes -= self.bytes;
    }
}

/// The limits a download must stay within.
struct Room {
    max_bytes: u64,
    free_bytes: u64,
    min_free_bytes: u64,
}

impl Room {
    /// Whether `extra` more bytes fit, once `freed` bytes were evicted since `free_bytes` was read.
    fn fits(&self, st: &State, extra: u64, freed: u64) -> bool {
        let within_size = st.used_bytes + st.reserved_bytes + extra <= self.max_bytes;
        // Space already in trash/ is as good as free: it is being deleted.
        let free_soon = self.free_bytes.saturating_add(st.trash_bytes).saturating_add(freed);
        within_size && free_soon >= self.min_free_bytes.saturating_add(extra)
    }
}
