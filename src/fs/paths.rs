//! The one table of store paths the filesystem knows: which slot each path owns (its inode
//! numbers, kept for the daemon's life so they never change), and for each path the kernel holds
//! inodes of, its entry and the kernel's reference count (lookups not yet forgotten). At zero the
//! entry is dropped, which bounds memory by what the kernel holds, not by what was ever looked up.
//! With a state file attached, every slot assigned is logged to it before the kernel can see it,
//! so a successor daemon keeps the numbers (`state/`).

use std::collections::HashMap;

use tracing::warn;

use super::inode::SlotTable;
use super::state::{Recovered, StateFile};
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
    /// Lookup counts a predecessor handed over, for slots whose entry is not loaded yet.
    pending: HashMap<u64, u64>,
    /// Where slot assignments are logged for a successor.
    log: Option<StateFile>,
}

impl PathTable {
    /// The slot of `sp`, assigned on first sight (and then logged).
    pub fn slot_of(&mut self, sp: &StorePath) -> u64 {
        let (slot, new) = self.slots.assign(sp);
        if new && let Some(log) = &mut self.log {
            if let Err(err) = log.append_slot(slot, sp) {
                warn!(error = %err, store_path = %sp,
                      "cannot log a slot; a successor daemon would answer ESTALE for it");
            }
        }
        slot
    }

    /// The store path in `slot`, if any.
    pub fn path_of(&self, slot: u64) -> Option<&StorePath> {
        self.slots.path_of(slot)
    }

    /// Logs slot assignments to `state` from now on, after taking over what a predecessor left
    /// in it: its slots, and its lookup counts if it stopped cleanly. Returns how many slots were
    /// restored.
    pub fn attach(&mut self, state: StateFile, recovered: &Recovered) -> usize {
        let mut restored = 0;
        for (slot, sp) in &recovered.slots {
            restored += usize::from(self.slots.restore(*slot, sp));
        }
        if let Some(parked) = &recovered.parked {
            self.pending.extend(parked.lookups.iter().copied().filter(|(_, n)| *n > 0));
        }
        self.log = Some(state);
        restored
    }

    /// The attached state file.
    pub fn state(&mut self) -> Option<&mut StateFile> {
        self.log.as_mut()
    }

    /// The kernel's lookup count of every path it holds (for a clean handover).
    pub fn lookups(&self) -> Vec<(u64, u64)> {
        let held = self.held.iter().map(|(slot, h)| (*slot, h.lookups));
        held.chain(self.pending.iter().map(|(s, n)| (*s, *n))).filter(|(_, n)| *n > 0).collect()
    }

    /// `entry`, the entry of a known slot, was loaded after a handover: it is kept from now on
    /// if the predecessor's kernel references are pending for it.
    pub fn resolved(&mut self, entry: &Arc<Entry>) {
        let slot = self.slot_of(&entry.store_path);
        if let Some(lookups) = self.pending.remove(&slot) {
            self.held.insert(slot, Held { entry: entry.clone(), lookups });
        }
    }

    /// The entry kept for `slot`, while the kernel holds it.
    pub fn entry(&self, slot: u64) -> Option<&Arc<Entry>> {
        self.held.get(&slot).map(|h| &h.entry)
    }

    /// Counts `n` kernel references to inodes of `entry`'s path and returns its slot. With
    /// `fresh`, `entry` replaces the one kept (a new lookup of the root name); otherwise the kept
    /// one stays (it is the same path's entry, maybe evicted since).
    pub fn hold(&mut self, entry: &Arc<Entry>, n: u64, fresh: bool) -> u64 {
        let slot = self.slot_of(&entry.store_path);
        let pending = self.pending.remove(&slot).unwrap_or(0);
        let held = self
            .held
            .entry(slot)
            .or_insert_with(|| Held { entry: entry.clone(), lookups: pending });
        held.lookups += n;
        if fresh {
            held.entry = entry.clone();
        }
        slot
    }

    /// `entry` was fetched again (its path had been evicted): kept from now on for its slot, if
    /// the kernel still holds the path.
    pub fn refresh(&mut self, entry: &Arc<Entry>) {
        let slot = self.slot_of(&entry.store_path);
        if let Some(held) = self.held.get_mut(&slot) {
            held.entry = entry.clone();
        }
    }

    /// The kernel dropped `n` references to `slot`; returns the entry released when that was
    /// the last one. A slot nobody counted (a predecessor crashed) is ignored.
    pub fn forget(&mut self, slot: u64, n: u64) -> Option<Arc<Entry>> {
        if let Some(pending) = self.pending.get_mut(&slot) {
            *pending = pending.saturating_sub(n);
            if *pending == 0 {
                self.pending.remove(&slot);
            }
            return None;
        }
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

    #[test]
    fn a_successor_keeps_slots_and_counts_and_logs_new_slots() {
        use crate::fs::state::{Parked, StateFile};
        let (a, b) = (entry_for_tests(&sp('a', "a"), 1), entry_for_tests(&sp('b', "b"), 1));
        let mut first = PathTable::default();
        let state = StateFile::create().unwrap();
        let fd = state.fd().try_clone_to_owned().unwrap();
        first.attach(state, &Recovered::default());
        let slot_a = first.hold(&a, 3, true);
        first.forget(slot_a, 1);
        let lookups = first.lookups();
        assert_eq!(lookups, vec![(slot_a, 2)]);
        first.state().unwrap().park(&Parked { lookups, handles: vec![] }).unwrap();
        let (state, found, _) = StateFile::adopt(fd).unwrap();
        let mut next = PathTable::default();
        assert_eq!(next.attach(state, &found), 1);
        assert_eq!(next.path_of(slot_a), Some(&a.store_path));
        assert!(next.entry(slot_a).is_none(), "entries load lazily");
        assert_eq!(next.lookups(), vec![(slot_a, 2)], "counts survive while pending");
        next.resolved(&a);
        assert!(next.forget(slot_a, 1).is_none());
        assert!(next.forget(slot_a, 1).is_some(), "the predecessor's last reference released");
        let slot_b = next.hold(&b, 1, true);
        assert!(next.forget(12345, 7).is_none(), "an unknown slot's forget is harmless");
        let fd = next.state().unwrap().fd().try_clone_to_owned().unwrap();
        let (_, found, _) = StateFile::adopt(fd).unwrap();
        let slots = found.slots;
        assert!(slots.contains(&(slot_b, b.store_path.clone())), "new slots are logged");
    }
}
