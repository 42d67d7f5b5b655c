//! Inode numbers: stable across lookups, evictions and restarts, derived from the store path.
//!
//! `ino = slot << NODE_BITS | node id`, where the slot comes from the store path's digest and the
//! node id is the node's pre-order index in the NAR. Both are facts of the store path, so the same
//! file has the same inode on every host and after every restart (the base for handing the
//! /dev/fuse fd to a successor daemon). Two paths whose digests give the same slot are separated by
//! probing to the next free slot; only then does the number depend on which was seen first.

use std::collections::HashMap;

use crate::nix::nar::NodeId;
use crate::nix::store_path::StorePath;

/// Inode number of the mount's root directory.
pub const ROOT_INO: u64 = 1;
/// Bits of an inode number that hold the node id within its store path.
pub const NODE_BITS: u32 = 24;
// Every node id the cache admits must fit in an inode number.
const _: () = assert!(crate::cache::unpack::MAX_NODES <= 1 << NODE_BITS);

/// Bits that hold the store path's slot.
pub const SLOT_BITS: u32 = 40;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const NODE_MASK: u64 = (1 << NODE_BITS) - 1;

/// An inode number split into its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inode {
    /// The mount root.
    Root,
    /// Node `node` of the store path in `slot`.
    Node {
        /// The store path's slot.
        slot: u64,
        /// The node within it.
        node: NodeId,
    },
}

impl Inode {
    /// Splits a kernel inode number. Zero and numbers below the first slot are invalid.
    pub fn from_ino(ino: u64) -> Option<Self> {
        if ino == ROOT_INO {
            return Some(Inode::Root);
        }
        let slot = ino >> NODE_BITS;
        if slot == 0 {
            return None;
        }
        let node = NodeId::try_from(ino & NODE_MASK).expect("masked to 24 bits");
        Some(Inode::Node { slot, node })
    }

    /// The kernel inode number.
    pub fn ino(self) -> u64 {
        match self {
            Inode::Root => ROOT_INO,
            Inode::Node { slot, node } => slot << NODE_BITS | u64::from(node),
        }
    }
}

/// The preferred slot of a store path: 40 bits of its digest, never 0.
pub fn preferred_slot(sp: &StorePath) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&sp.digest()[..8]);
    (u64::from_le_bytes(first) & SLOT_MASK).max(1)
}

/// Which store path owns which slot.
#[derive(Debug, Default)]
pub struct SlotTable {
    by_slot: HashMap<u64, StorePath>,
    by_path: HashMap<StorePath, u64>,
}

impl SlotTable {
    /// The slot of `sp`, assigning one on first sight.
    pub fn slot_of(&mut self, sp: &StorePath) -> u64 {
        self.assign(sp).0
    }

    /// The slot of `sp` and whether it was assigned just now.
    pub fn assign(&mut self, sp: &StorePath) -> (u64, bool) {
        if let Some(slot) = self.by_path.get(sp) {
            return (*slot, false);
        }
        let mut slot = preferred_slot(sp);
        while self.by_slot.contains_key(&slot) {
            slot = (slot % SLOT_MASK) + 1;
        }
        self.by_slot.insert(slot, sp.clone());
        self.by_path.insert(sp.clone(), slot);
        (slot, true)
    }

    /// Gives `sp` the slot a predecessor daemon gave it; false (and nothing changed) when the
    /// slot or the path is taken already.
    pub fn restore(&mut self, slot: u64, sp: &StorePath) -> bool {
        if slot == 0 || slot > SLOT_MASK {
            return false;
        }
        if self.by_slot.contains_key(&slot) || self.by_path.contains_key(sp) {
            return false;
        }
        self.by_slot.insert(slot, sp.clone());
        self.by_path.insert(sp.clone(), slot);
        true
    }

    /// The store path in `slot`, if any.
    pub fn path_of(&self, slot: u64) -> Option<&StorePath> {
        self.by_slot.get(&slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(s: &str) -> StorePath {
        StorePath::from_basename(s.as_bytes()).unwrap()
    }

    #[test]
    fn inode_numbers_round_trip() {
        for inode in [
            Inode::Root,
            Inode::Node { slot: 1, node: 0 },
            Inode::Node { slot: SLOT_MASK, node: (1 << NODE_BITS) - 1 },
        ] {
            assert_eq!(Inode::from_ino(inode.ino()), Some(inode));
        }
        assert_eq!(Inode::from_ino(0), None);
        assert_eq!(Inode::from_ino(5), None);
    }

    #[test]
    fn slots_are_stable_and_distinct() {
        let a = sp("00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12");
        let b = sp("11bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12");
        let mut t1 = SlotTable::default();
        let mut t2 = SlotTable::default();
        let (a1, b1) = (t1.slot_of(&a), t1.slot_of(&b));
        assert_ne!(a1, b1);
        assert_eq!(t2.slot_of(&a), a1, "same path, same slot in a fresh table");
        assert_eq!(t1.slot_of(&a), a1);
        assert_eq!(t1.path_of(a1), Some(&a));
    }

    /// Two paths of one digest: they want the same slot.
    fn colliding() -> (StorePath, StorePath) {
        (sp("00bgd045z0d4icpbc2yyz4gx48ak44la-a"), sp("00bgd045z0d4icpbc2yyz4gx48ak44la-b"))
    }

    #[test]
    fn colliding_slots_probe_to_the_next_free_one() {
        let (a, b) = colliding();
        let mut t = SlotTable::default();
        let (sa, sb) = (t.slot_of(&a), t.slot_of(&b));
        assert_eq!(preferred_slot(&a), preferred_slot(&b));
        assert_ne!(sa, sb);
    }

    #[test]
    fn restored_probed_slots_keep_their_numbers_whatever_comes_first() {
        let (a, b) = colliding();
        let mut first = SlotTable::default();
        let (sa, sb) = (first.slot_of(&a), first.slot_of(&b));
        let mut next = SlotTable::default();
        assert!(next.restore(sb, &b) && next.restore(sa, &a));
        assert!(!next.restore(sa, &b), "a taken slot is refused");
        assert_eq!((next.slot_of(&b), next.slot_of(&a)), (sb, sa));
        assert_eq!(next.assign(&a), (sa, false));
    }
}
