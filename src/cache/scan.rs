//! What is cached: the start-up scan of `entries/` (in the background, so a large cache never
//! delays the mount), loading a single entry on demand meanwhile, and the persisted LRU position
//! (each entry's manifest mtime, refreshed at most once per `TOUCH_INTERVAL` when it is used).
//! On a read-only cache it only reads: nothing is discarded, evicted, trimmed or touched.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, info, warn};

use super::evict::Victims;
use super::layout::{LayoutError, MANIFEST_FILE};
use super::manifest::Manifest;
use super::{Entry, NarCache};
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::is_valid_hash_part;
use crate::sync::{Arc, AtomicU64, Ordering, lock};

/// How stale an entry's persisted LRU position may get before it is refreshed.
const TOUCH_INTERVAL: Duration = Duration::from_secs(60);

/// Seconds since the epoch, now.
pub(super) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl NarCache {
    /// Scans `entries/` on the blocking pool when a runtime is running, inline otherwise.
    pub(super) fn start_scan(self: &Arc<Self>) {
        let this = self.clone();
        let scan = move || {
            match this.scan() {
                // Only a complete scan ends on-demand loading: after a failed one, entries not
                // yet in memory are still found on disk when asked for.
                Ok(()) => this.scan_complete.store(true, Ordering::Release),
                Err(err) => warn!(error = %err, "cache scan failed; entries load on demand"),
            }
            this.scanned.send_replace(true);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(scan)),
            Err(_) => scan(),
        }
    }

    /// Resolves once the start-up scan has finished.
    pub async fn wait_scanned(&self) {
        let mut rx = self.scanned.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }

    /// Loads every published entry not yet in memory, oldest first, and discards any that does not
    /// check out; then restores the quota and empties `trash/`.
    fn scan(self: &Arc<Self>) -> Result<(), LayoutError> {
        let root = self.layout.entries_root();
        let list = std::fs::read_dir(&root).map_err(|source| LayoutError::Io {
            action: "cannot list",
            path: root.clone(),
            source,
        })?;
        let mut found = Vec::new();
        for dirent in list.flatten() {
            let name = dirent.file_name().to_string_lossy().into_owned();
            if lock(&self.catalog).contains(&name) {
                continue; // loaded on demand already
            }
            match self.load_entry(&dirent.path(), &name) {
                Ok(entry) => found.push(entry),
                Err(reason) => {
                    // One unusable entry must not stop the scan of the others.
                    if let Err(err) = self.discard_bad(&dirent.path(), &reason) {
                        warn!(error = %err, "cannot move an unusable entry to trash");
                    }
                }
            }
        }
        found.sort_by_key(|e| e.touched_secs.load(Ordering::Relaxed));
        {
            let mut cat = lock(&self.catalog);
            // Entries used since start (loaded on demand) are the most recently used ones.
            let on_demand = cat.hashes();
            for entry in found {
                let hash = entry.store_path.hash_part();
                if !cat.contains(&hash) {
                    cat.admit(hash, Arc::new(entry));
                }
            }
            for hash in on_demand.iter().rev() {
                cat.promote(hash);
            }
            // Narinfos of paths not cached, oldest first: the first to go when too many are kept.
            for hash in self.narinfos.hashes_oldest_first() {
                cat.keep_narinfo(hash);
            }
            info!(entries = cat.len(), bytes = cat.used_bytes(), "cache loaded");
        }
        if self.layout.read_only() {
            return Ok(());
        }
        self.layout.purge_trash()?;
        let trashed = self.evict_until(Victims::Oldest, |room, cat, _| cat.fits(room, 0));
        self.purge(trashed);
        self.trim_narinfos();
        Ok(())
    }

    /// Loads the entry `hash` from disk if it is there (used while the scan runs).
    pub(super) async fn load_now(self: &Arc<Self>, hash: &str) -> Option<Arc<Entry>> {
        let this = self.clone();
        let hash = hash.to_owned();
        tokio::task::spawn_blocking(move || this.load_from_disk(&hash)).await.ok().flatten()
    }

    /// [`NarCache::load_now`] on the calling thread (a manifest read from local disk).
    pub(super) fn load_from_disk(&self, hash: &str) -> Option<Arc<Entry>> {
        if !is_valid_hash_part(hash.as_bytes()) {
            return None;
        }
        let dir = self.layout.entry_dir(hash);
        if !dir.join(MANIFEST_FILE).exists() {
            return None;
        }
        let entry = match self.load_entry(&dir, hash) {
            Ok(e) => Arc::new(e),
            Err(reason) => {
                let _ = self.discard_bad(&dir, &reason);
                return None;
            }
        };
        let mut cat = lock(&self.catalog);
        if let Some(existing) = cat.get(hash) {
            return Some(existing);
        }
        cat.admit(hash.to_owned(), entry.clone());
        Some(entry)
    }

    /// Reads and checks one published entry; the error says why it is unusable.
    fn load_entry(&self, dir: &Path, name: &str) -> Result<Entry, String> {
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
        // A key removed from the configuration must stop vouching for cached paths too.
        self.keys.verify(&narinfo).map_err(|e| format!("no longer trusted: {e}"))?;
        let touched = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let partial = self.load_partial(dir, &narinfo)?;
        Ok(Entry {
            store_path: narinfo.store_path.clone(),
            narinfo,
            manifest,
            dir: dir.into(),
            touched_secs: AtomicU64::new(touched),
            partial,
        })
    }

    fn discard_bad(&self, dir: &Path, reason: &str) -> Result<(), LayoutError> {
        if self.layout.read_only() {
            warn!(entry = %dir.display(), reason, "unusable cache entry not served (read-only)");
            return Ok(());
        }
        let _moves = lock(&self.moves);
        if self.is_closed() {
            return Err(LayoutError::Closed);
        }
        warn!(entry = %dir.display(), reason, "discarding unusable cache entry");
        self.layout.discard(dir).map(drop)
    }

    /// Records that `entry` was used, on disk, at most once per `TOUCH_INTERVAL`.
    pub(super) fn touch(&self, entry: &Arc<Entry>) {
        if self.layout.read_only() {
            return;
        }
        let now = unix_now();
        let last = entry.touched_secs.load(Ordering::Relaxed);
        if now.saturating_sub(last) < TOUCH_INTERVAL.as_secs()
            || entry
                .touched_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let manifest = entry.dir.join(MANIFEST_FILE);
        let touch = move || {
            let set =
                std::fs::File::open(&manifest).and_then(|f| f.set_modified(SystemTime::now()));
            if let Err(err) = set {
                debug!(manifest = %manifest.display(), error = %err, "cannot record use");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(touch)),
            Err(_) => touch(),
        }
    }
}
