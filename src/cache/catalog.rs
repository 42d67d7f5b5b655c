//! The in-memory catalog of what is cached: the paths in least-recently-used order, the bytes they
//! hold, the bytes reserved for downloads and leaving through eviction, the pins, and the
//! generation. Pure bookkeeping: no I/O, no clock, no locking of its own. `NarCache` keeps it
//! behind one mutex that is held only for these calls, never across a syscall, so a READ that marks
//! its path as used never waits for a rename, a `statvfs` or a delete.
//!
//! Accounting: `used` counts the entries in the catalog, `reserved` the room promised to downloads
//! in flight, `leaving` the entries taken out for eviction whose files are not deleted yet (their
//! space is as good as free: it is being freed).
//!
//! It also knows whose narinfos are kept in `narinfo/` although their entry is not cached
//! (`kept`, oldest-evicted last), so that `narinfo/` stays bounded (see `excess_narinfos`).

use std::collections::HashMap;

use lru::LruCache;

use super::Entry;
use crate::nix::store_path::StorePath;
use crate::sync::Arc;

/// The limits a download must stay within, read from the configuration and the cache
/// filesystem (before the catalog's lock is taken).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Room {
    /// `--max-size`.
    pub max_bytes: u64,
    /// Free bytes on the cache filesystem when read.
    pub free_bytes: u64,
    /// Free bytes `--min-free` keeps.
    pub min_free_bytes: u64,
}

/// What is cached, in memory.
#[derive(Debug)]
pub(super) struct Catalog {
    lru: LruCache<String, Arc<Entry>>,
    used_bytes: u64,
    reserved_bytes: u64,
    leaving_bytes: u64,
    /// Pinned store paths by hash part: never chosen for eviction.
    pins: HashMap<String, StorePath>,
    /// Bumped whenever a path joins or leaves the catalog: the mount root's listing changed.
    generation: u64,
    /// Hash parts with a narinfo in `narinfo/` but no cached entry, most recently evicted first.
    kept: LruCache<String, ()>,
}

impl Catalog {
    /// An empty catalog with `pins`.
    pub fn new(pins: HashMap<String, StorePath>) -> Self {
        Self {
            lru: LruCache::unbounded(),
            used_bytes: 0,
            reserved_bytes: 0,
            leaving_bytes: 0,
            pins,
            generation: 0,
            kept: LruCache::unbounded(),
        }
    }

    /// The entry `hash`, marked most recently used.
    pub fn get(&mut self, hash: &str) -> Option<Arc<Entry>> {
        self.lru.get(hash).cloned()
    }

    /// The entry `hash`, its position unchanged.
    pub fn peek(&self, hash: &str) -> Option<&Arc<Entry>> {
        self.lru.peek(hash)
    }

    /// Whether `hash` is cached.
    pub fn contains(&self, hash: &str) -> bool {
        self.lru.contains(hash)
    }

    /// Adds `entry` as the most recently used path, counting its bytes. An entry already there
    /// under `hash` is replaced (its bytes no longer counted).
    pub fn admit(&mut self, hash: String, entry: Arc<Entry>) {
        self.kept.pop(&hash);
        self.used_bytes += entry.disk_bytes();
        if let Some(old) = self.lru.put(hash, entry) {
            self.used_bytes -= old.disk_bytes();
        }
        self.generation += 1;
    }

    /// `bytes` more are on disk for `entry` (files of a partial entry): counted, for it and for
    /// the cache, when it is cached; not when it is leaving or gone (its directory goes whole).
    pub fn grow(&mut self, entry: &Arc<Entry>, bytes: u64) {
        let hash = entry.store_path.hash_part();
        let (Some(cached), Some(partial)) = (self.lru.peek(&hash), entry.partial()) else {
            return;
        };
        if Arc::ptr_eq(cached, entry) {
            partial.count_added(bytes);
            self.used_bytes += bytes;
        }
    }

    /// Marks `hash` most recently used (a path known to be in use, e.g. found on disk after a
    /// restart); no effect when it is not cached.
    pub fn promote(&mut self, hash: &str) {
        self.lru.promote(hash);
    }

    /// Every cached entry, most recently used first.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.lru.iter().map(|(_, e)| e.clone()).collect()
    }

    /// The hash parts of every cached entry, most recently used first.
    pub fn hashes(&self) -> Vec<String> {
        self.lru.iter().map(|(k, _)| k.clone()).collect()
    }

    /// How many paths are cached.
    pub fn len(&self) -> usize {
        self.lru.len()
    }

    /// Bytes the cached entries hold on disk.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Changes whenever the set of cached paths changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `extra` more bytes fit in `room` as things stand (entries leaving count as free).
    pub fn fits(&self, room: &Room, extra: u64) -> bool {
        let within_size = self.used_bytes + self.reserved_bytes + extra <= room.max_bytes;
        let free_soon = room.free_bytes.saturating_add(self.leaving_bytes);
        within_size && free_soon >= room.min_free_bytes.saturating_add(extra)
    }

    /// Whether `extra` more bytes could fit on the cache filesystem, above `--min-free`, if every
    /// entry that may be evicted (not pinned) were: false means evicting cannot help, so nothing
    /// should be. `--max-size` is not asked: a path larger than it is still served, alone.
    pub fn could_fit(&self, room: &Room, extra: u64) -> bool {
        self.fits(room, extra) || self.room_after_evicting(room) >= extra
    }

    /// Free bytes above `--min-free` on the cache filesystem if every unpinned entry were
    /// evicted. O(cached paths); asked only when a download does not fit as things stand.
    pub fn room_after_evicting(&self, room: &Room) -> u64 {
        let evictable: u64 = self
            .lru
            .iter()
            .filter(|(k, _)| !self.pins.contains_key(*k))
            .map(|(_, e)| e.disk_bytes())
            .sum();
        let free_after =
            room.free_bytes.saturating_add(self.leaving_bytes).saturating_add(evictable);
        free_after.saturating_sub(room.min_free_bytes)
    }

    /// Holds `bytes` of room for a download.
    pub fn reserve(&mut self, bytes: u64) {
        self.reserved_bytes += bytes;
    }

    /// Gives back room held by `reserve`.
    pub fn release(&mut self, bytes: u64) {
        self.reserved_bytes -= bytes;
    }

    /// Takes the least recently used entry that is not pinned (nor `keep`) out of the catalog;
    /// its bytes count as leaving until `gone`. None when every entry is pinned or kept.
    pub fn take_victim(&mut self, keep: Option<&str>) -> Option<Arc<Entry>> {
        let hash = self
            .lru
            .iter()
            .rev()
            .map(|(k, _)| k)
            .find(|k| !self.pins.contains_key(*k) && Some(k.as_str()) != keep)?
            .clone();
        self.take(&hash)
    }

    /// Takes entry `hash` out of the catalog, pinned or not (callers decide); its bytes count as
    /// leaving until `gone`.
    pub fn take(&mut self, hash: &str) -> Option<Arc<Entry>> {
        let entry = self.lru.pop(hash)?;
        self.kept.put(hash.to_owned(), ());
        let bytes = entry.disk_bytes();
        self.used_bytes -= bytes;
        self.leaving_bytes += bytes;
        self.generation += 1;
        Some(entry)
    }

    /// An entry taken out could not be moved away: it is still on disk, so it is cached again,
    /// as the least recently used path.
    pub fn put_back(&mut self, entry: Arc<Entry>) {
        let hash = entry.store_path.hash_part();
        self.leaving_bytes -= entry.disk_bytes();
        self.admit(hash.clone(), entry);
        self.lru.demote(&hash);
    }

    /// `bytes` of an entry taken out were deleted: they are free space now, counted by the
    /// filesystem rather than here.
    pub fn gone(&mut self, bytes: u64) {
        self.leaving_bytes -= bytes;
    }

    /// Records that `hash` has a narinfo in `narinfo/` but no cached entry (found at start-up,
    /// oldest first); no effect when it is cached.
    pub fn keep_narinfo(&mut self, hash: String) {
        if !self.lru.contains(&hash) {
            self.kept.put(hash, ());
        }
    }

    /// The hash parts whose narinfos should go so that at most `limit` are kept for paths not
    /// cached, oldest evicted first; they are no longer counted as kept.
    pub fn excess_narinfos(&mut self, limit: usize) -> Vec<String> {
        let excess = self.kept.len().saturating_sub(limit);
        (0..excess).filter_map(|_| self.kept.pop_lru().map(|(hash, ())| hash)).collect()
    }

    /// The pin recorded under `sp`'s hash part, if any (it may name another path).
    pub fn pin_of(&self, hash: &str) -> Option<&StorePath> {
        self.pins.get(hash)
    }

    /// Records a pin of `sp`.
    pub fn pin(&mut self, sp: StorePath) {
        self.pins.insert(sp.hash_part(), sp);
    }

    /// Drops the pin of `hash`.
    pub fn unpin(&mut self, hash: &str) {
        self.pins.remove(hash);
    }

    /// Every pinned path, in no particular order.
    pub fn pins(&self) -> impl Iterator<Item = &StorePath> {
        self.pins.values()
    }

    /// How many cached entries are pinned.
    pub fn pinned_cached(&self) -> usize {
        self.lru.iter().filter(|(k, _)| self.pins.contains_key(*k)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{entry_for_tests, sp};

    fn catalog_of(paths: &[(char, u64)]) -> Catalog {
        let mut cat = Catalog::new(HashMap::new());
        for (c, bytes) in paths {
            let e = entry_for_tests(&sp(*c, "p"), *bytes);
            cat.admit(e.store_path.hash_part(), e);
        }
        cat
    }

    fn room(max_bytes: u64, free_bytes: u64, min_free_bytes: u64) -> Room {
        Room { max_bytes, free_bytes, min_free_bytes }
    }

    #[test]
    fn admit_counts_bytes_and_bumps_the_generation_once_per_change() {
        let mut cat = catalog_of(&[('a', 10), ('b', 20)]);
        assert_eq!((cat.len(), cat.used_bytes(), cat.generation()), (2, 30, 2));
        let again = entry_for_tests(&sp('a', "p"), 5);
        cat.admit(again.store_path.hash_part(), again);
        assert_eq!((cat.len(), cat.used_bytes(), cat.generation()), (2, 25, 3), "replaced");
    }

    #[test]
    fn victims_are_least_recently_used_first_and_never_pinned_or_kept() {
        let mut cat = catalog_of(&[('a', 1), ('b', 1), ('c', 1), ('d', 1)]);
        let hash = |c| sp(c, "p").hash_part();
        cat.get(&hash('a')); // a is now the most recently used
        cat.pin(sp('b', "p"));
        let order: Vec<_> = std::iter::from_fn(|| cat.take_victim(Some(&hash('a'))))
            .map(|e| e.store_path.hash_part())
            .collect();
        assert_eq!(order, vec![hash('c'), hash('d')], "b is pinned, a is kept");
        assert_eq!(cat.len(), 2);
        assert_eq!(cat.pinned_cached(), 1);
    }

    #[test]
    fn leaving_bytes_count_as_free_until_gone() {
        let mut cat = catalog_of(&[('a', 100), ('b', 100)]);
        let r = room(1000, 50, 100);
        assert!(!cat.fits(&r, 60), "50 free, 100 to keep free");
        let victim = cat.take_victim(None).unwrap();
        assert_eq!(cat.used_bytes(), 100);
        assert!(cat.fits(&r, 50), "50 free plus 100 leaving covers 100 kept + 50");
        assert!(!cat.fits(&r, 51));
        cat.gone(victim.disk_bytes());
        assert!(!cat.fits(&r, 50), "once deleted, the filesystem's figure must show it");
    }

    #[test]
    fn reservations_and_the_size_limit() {
        let mut cat = catalog_of(&[('a', 100)]);
        let r = room(300, u64::MAX, 0);
        assert!(cat.fits(&r, 200));
        cat.reserve(150);
        assert!(!cat.fits(&r, 100));
        assert!(cat.fits(&r, 50));
        cat.release(150);
        assert!(cat.fits(&r, 200));
    }

    #[test]
    fn could_fit_counts_every_unpinned_entry_as_freed_but_not_pinned_ones() {
        let mut cat = catalog_of(&[('a', 100), ('b', 200)]);
        cat.pin(sp('b', "p"));
        let r = room(1 << 30, 50, 10);
        assert!(!cat.fits(&r, 100));
        assert!(cat.could_fit(&r, 140), "50 free + 100 evictable covers 10 kept + 140");
        assert!(!cat.could_fit(&r, 141), "b is pinned: evicting cannot make room");
        assert!(cat.could_fit(&room(10, u64::MAX, 0), 1000), "over --max-size still fits alone");
    }

    #[test]
    fn narinfos_of_evicted_paths_are_bounded_oldest_first() {
        let mut cat = catalog_of(&[('a', 1), ('b', 1), ('c', 1)]);
        let hash = |c| sp(c, "p").hash_part();
        cat.keep_narinfo(hash('a'));
        assert!(cat.excess_narinfos(0).is_empty(), "a cached path's narinfo is not kept apart");
        cat.keep_narinfo(hash('d'));
        for _ in 0..3 {
            cat.take_victim(None);
        }
        assert_eq!(cat.excess_narinfos(2), vec![hash('d'), hash('a')], "oldest evicted first");
        let again = entry_for_tests(&sp('c', "p"), 1);
        cat.admit(hash('c'), again);
        assert!(cat.excess_narinfos(0) == vec![hash('b')], "a cached path is no longer kept");
    }

    #[test]
    fn a_victim_put_back_is_cached_again_as_least_recently_used() {
        let mut cat = catalog_of(&[('a', 10), ('b', 20)]);
        let victim = cat.take_victim(None).unwrap();
        assert_eq!(victim.store_path, sp('a', "p"));
        let generation = cat.generation();
        cat.put_back(victim);
        assert_eq!((cat.len(), cat.used_bytes()), (2, 30));
        assert!(cat.generation() > generation);
        assert_eq!(cat.take_victim(None).unwrap().store_path, sp('a', "p"), "still the oldest");
        assert_eq!(cat.hashes()[0], sp('b', "p").hash_part(), "b is the newest");
    }
}
