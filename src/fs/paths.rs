//! The one table of store paths the filesystem knows: which slot each path owns (its inode
//! numbers, kept for the daemon's life so they never change), and for each path the kernel holds
//! inodes of, its entry and the kernel's reference count (lookups not yet forgotten). At zero the
//! entry is dropped, which bounds memory by what the kernel holds, not by what was ever looked up.

use std::collections::HashMap;

use super::inode::SlotTable;
use crate::cache::Entry;
use crate::nix::store_path::StorePath;
use crate::sync::Arc;

/// A path the kernel holds: its entry (kept after eviction, so metadata stays answerable) and
/// how many references the kernel has.
#[derive(Debug)]
struct Held {
    entry: Arc<Entry>,
    lookups: u64,
}

/// Slots and held paths.
#[derive(Debug, Default)]
pub(super) struct PathTable {
    slots: SlotTable,
    held: HashMap<u64, Held>,
}

impl PathTable {
    /// The slot of `sp`, assigned on first sight.
    pub fn slot_of(&mut self, sp: &StorePath) -> u64 {
        self.slots.slot_of(sp)
    }

    /// The entry kept for `slot`, while the kernel holds it.
    pub fn entry(&self, slot: u64) -> Option<&Arc<Entry>> {
        self.held.get(&slot).map(|h| &h.entry)
    }

    /// Counts `n` kernel references to inodes of `entry`'s path and returns its slot. With
    /// `fresh`, `entry` replaces the one kept (a new lookup of the root name); otherwise the kept
    /// one stays (it is the same path's entry, maybe evicted since).
    pub fn hold(&mut self, entry: &Arc<Entry>, n: u64, fresh: bool) -> u64 {
        let slot = self.slots.slot_of(&entry.store_path);
        let held =
            self.held.entry(slot).or_insert_with(|| Held { entry: entry.clone(), lookups: 0 });
        held.lookups += n;
        if fresh {
            held.entry = entry.clone();
        }
        slot
    }

    /// `entry` was fetched again (its path had been evicted): kept from now on for its slot, if
    /// the kernel still holds the path.
    pub fn refresh(&mut self, entry: &Arc<Entry>) {
        let slot = self.slots.slot_of(&entry.store_path);
        if let Some(held) = self.held.get_mut(&slot) {
            held.entry = entry.clone();
        }
    }

    /// The kernel dropped `n` references to `slot`; returns the entry released when that was
    /// the last one.
    pub fn forget(&mut self, slot: u64, n: u64) -> Option<Arc<Entry>> {
        let held = self.held.get_mut(&slot)?;
        held.lookups = held.lookups.saturating_sub(n);
        if held.lookups > 0 {
            return None;
        }
        self.held.remove(&slot).map(|h| h.entry)
    }

    /// How many paths the kernel holds.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{entry_for_tests, sp};

    #[test]
    fn an_entry_is_kept_while_the_kernel_holds_any_reference() {
        let mut table = PathTable::default();
        let a = entry_for_tests(&sp('a', "a"), 1);
        let slot = table.hold(&a, 1, true);
        assert_eq!(table.hold(&a, 3, false), slot, "same path, same slot");
        assert!(table.forget(slot, 2).is_none());
        assert!(table.entry(slot).is_some());
        let released = table.forget(slot, 2).expect("the last reference");
        assert_eq!(released.store_path, a.store_path);
        assert!(table.entry(slot).is_none());
        assert_eq!(table.held(), 0);
        assert_eq!(table.slot_of(&a.store_path), slot, "the slot outlives the entry");
        assert!(table.forget(slot, 1).is_none(), "a forget of an unknown slot is ignored");
    }

    #[test]
    fn fresh_lookups_and_refetches_replace_the_kept_entry_only_while_held() {
        let mut table = PathTable::default();
        let (old, new) = (entry_for_tests(&sp('a', "a"), 1), entry_for_tests(&sp('a', "a"), 2));
        let slot = table.hold(&old, 1, false);
        table.hold(&new, 1, false);
        assert!(Arc::ptr_eq(table.entry(slot).unwrap(), &old), "not fresh: the kept one stays");
        table.refresh(&new);
        assert!(Arc::ptr_eq(table.entry(slot).unwrap(), &new));
        table.forget(slot, 2);
        table.refresh(&old);
        assert!(table.entry(slot).is_none(), "a path the kernel forgot is not kept again");
    }
}
