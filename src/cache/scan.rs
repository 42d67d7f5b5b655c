//! What is cached: the start-up scan of `entries/` (in the background, so a large cache never
//! delays the mount), loading a single entry on demand meanwhile, and the persisted LRU position
//! (each entry's manifest mtime, refreshed at most once per `TOUCH_INTERVAL` when it is used).
//! On a read-only cache it only reads: nothing is discarded, evicted, trimmed or touched.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
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

/// Which manifest file an entry was loaded from. An entry set aside and fetched again has a new
/// one: another inode, or the same inode number reused with another change time. (A `touch`
/// changes it too, but only of an entry already in the catalog, which is then used instead.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ManifestFile {
    ino: u64,
    ctime: (i64, i64),
}

impl ManifestFile {
    fn from(meta: &std::fs::Metadata) -> Self {
        Self { ino: meta.ino(), ctime: (meta.ctime(), meta.ctime_nsec()) }
    }

    /// The manifest file in the entry directory `dir` now; None when there is none.
    fn of(dir: &Path) -> Option<Self> {
        std::fs::metadata(dir.join(MANIFEST_FILE)).ok().map(|m| Self::from(&m))
    }
}

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
                Ok(loaded) => found.push(loaded),
                Err(reason) => {
                    // One unusable entry must not stop the scan of the others.
                    if let Err(err) = self.discard_bad(&dirent.path(), &reason) {
                        warn!(error = %err, "cannot move an unusable entry to trash");
                    }
                }
            }
        }
        found.sort_by_key(|(e, _)| e.touched_secs.load(Ordering::Relaxed));
        {
            // Under `moves`, no entry directory comes or goes between the check and the admission.
            let _moves = lock(&self.moves);
            // Set aside, or fetched again, since it was loaded: not this entry any more.
            found.retain(|(entry, file)| ManifestFile::of(&entry.dir) == Some(*file));
            let mut cat = lock(&self.catalog);
            // Entries used since start (loaded on demand) are the most recently used ones.
            let on_demand = cat.hashes();
            for (entry, _) in found {
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
        let (entry, file) = match self.load_entry(&dir, hash) {
            Ok((entry, file)) => (Arc::new(entry), file),
            Err(reason) => {
                let _ = self.discard_bad(&dir, &reason);
                return None;
            }
        };
        let _moves = lock(&self.moves);
        // Set aside, or fetched again (its publisher admits it), since it was loaded; or loaded
        // and touched by another reader meanwhile, and in the catalog.
        let unchanged = ManifestFile::of(&dir) == Some(file);
        let mut cat = lock(&self.catalog);
        if let Some(existing) = cat.get(hash) {
            return Some(existing);
        }
        if !unchanged {
            return None;
        }
        cat.admit(hash.to_owned(), entry.clone());
        Some(entry)
    }

    /// Reads and checks one published entry, and says which manifest file it was; the error
    /// says why it is unusable.
    fn load_entry(&self, dir: &Path, name: &str) -> Result<(Entry, ManifestFile), String> {
        let path = dir.join(MANIFEST_FILE);
        let mut opened =
            std::fs::File::open(&path).map_err(|e| format!("cannot read manifest: {e}"))?;
        let mut bytes = Vec::new();
        opened.read_to_end(&mut bytes).map_err(|e| format!("cannot read manifest: {e}"))?;
        let meta = opened.metadata().map_err(|e| format!("cannot stat manifest: {e}"))?;
        let mtime = meta.modified().map_err(|e| format!("cannot stat manifest: {e}"))?;
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
        let entry = Entry {
            store_path: narinfo.store_path.clone(),
            narinfo,
            manifest,
            dir: dir.into(),
            touched_secs: AtomicU64::new(touched),
            partial,
        };
        Ok((entry, ManifestFile::from(&meta)))
    }

    /// Moves the entry directory `dir`, found unusable for `reason`, to `trash/`. Checked again
    /// under `moves` first: since it was found bad, the entry may have been evicted (the
    /// directory is gone) or fetched again and published in its place (it loads now, and its
    /// publisher admits it), and neither may be discarded.
    fn discard_bad(&self, dir: &Path, reason: &str) -> Result<(), LayoutError> {
        if self.layout.read_only() {
            warn!(entry = %dir.display(), reason, "unusable cache entry not served (read-only)");
            return Ok(());
        }
        let _moves = lock(&self.moves);
        if self.is_closed() {
            return Err(LayoutError::Closed);
        }
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if std::fs::symlink_metadata(dir).is_err() || self.load_entry(dir, &name).is_ok() {
            debug!(entry = %dir.display(), reason, "unusable cache entry replaced meanwhile");
            return Ok(());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{Fixture, key, publish, sp, tree};
    use crate::nix::store_path::StorePath;

    /// A cache holding path `seed`-`name`, fetched after its start-up scan ended.
    async fn cached(
        fx: &Fixture,
        seed: char,
        name: &str,
    ) -> (StorePath, Arc<NarCache>, Arc<Entry>) {
        let path = sp(seed, name);
        publish(&fx.ups[0], &key(), &path, &tree(name, 10));
        let cache = fx.open();
        cache.wait_scanned().await;
        let entry = cache.get(&path).await.unwrap();
        (path, cache, entry)
    }

    /// The start-up scan finds an entry unusable (its directory vanished: the entry was set
    /// aside by a reader) and, before it discards it, the path is fetched again and published
    /// in its place: the new entry stays, and a directory gone meanwhile is no error.
    #[tokio::test]
    async fn an_entry_published_after_it_was_found_bad_is_not_discarded() {
        let fx = Fixture::new(1);
        let (path, cache, first) = cached(&fx, 'd', "damaged").await;
        let dir = first.dir.clone();
        let loaded_first = ManifestFile::of(&dir).unwrap();
        cache.set_aside(&first, "test").await;
        assert!(cache.discard_bad(&dir, "cannot read manifest").is_ok(), "gone: no error");
        let again = cache.get(&path).await.unwrap();
        assert_eq!(fx.ups[0].requests().1, 2, "fetched again");
        assert_ne!(ManifestFile::of(&dir), Some(loaded_first), "a new manifest file");
        cache.discard_bad(&dir, "cannot read manifest").unwrap();
        assert!(dir.join(MANIFEST_FILE).exists(), "the new entry was discarded");
        assert!(Arc::ptr_eq(&cache.get(&path).await.unwrap(), &again));
    }

    /// An entry loaded from disk but set aside before it was admitted is not admitted: its
    /// directory holds another manifest file, or none.
    #[tokio::test]
    async fn an_entry_set_aside_after_it_was_loaded_is_not_admitted() {
        let fx = Fixture::new(1);
        let (path, cache, first) = cached(&fx, 'f', "stale").await;
        let (_, file) = cache.load_entry(&first.dir, &path.hash_part()).unwrap();
        assert_eq!(ManifestFile::of(&first.dir), Some(file), "unchanged: admitted");
        cache.set_aside(&first, "test").await;
        assert_eq!(ManifestFile::of(&first.dir), None, "set aside");
        cache.get(&path).await.unwrap();
        assert_ne!(ManifestFile::of(&first.dir), Some(file), "fetched again: another file");
    }
}
