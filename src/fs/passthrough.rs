//! The open policy: whether OPENs are answered at all, and which open files the kernel reads
//! directly through FUSE passthrough (Linux >= 6.9, `--passthrough`).
//!
//! By default OPEN is answered ENOSYS and the kernel opens files by itself (`FUSE_NO_OPEN_SUPPORT`);
//! OPENs are answered when passthrough is on, or when the kernel cannot skip them. The kernel wants
//! one backing id per inode for all of its open handles, so ids are shared and counted; the last
//! release closes the id. Generic over the id type so the rules are tested without a kernel.

use std::collections::HashMap;
use std::fs::File;

use crate::sync::{Arc, AtomicBool, Mutex, Ordering, lock};

/// Passthrough state of one mount.
#[derive(Debug)]
pub(super) struct Backing<Id> {
    /// Wanted by the configuration (`--passthrough`).
    wanted: bool,
    /// Granted by the kernel at init, and not found unusable since.
    enabled: AtomicBool,
    /// OPENs are answered: passthrough is on, or the kernel lacks `FUSE_NO_OPEN_SUPPORT`.
    opens: AtomicBool,
    /// The kernel accepts ENOSYS for OPEN (`FUSE_NO_OPEN_SUPPORT`).
    can_skip_opens: AtomicBool,
    /// Backing id and open handles per inode.
    by_ino: Mutex<HashMap<u64, (Shared<Id>, usize)>>,
    /// The inode of each passthrough handle.
    by_fh: Mutex<HashMap<u64, u64>>,
}

/// The backing id an inode's handles share: registered by this daemon, or left open by a
/// predecessor (its number; adopted at the next open, or closed at the last release).
#[derive(Debug)]
enum Shared<Id> {
    Own(Arc<Id>),
    Inherited(i32),
}

impl<Id> Backing<Id> {
    /// The policy before init: passthrough `wanted` or not.
    pub fn new(wanted: bool) -> Self {
        Self {
            wanted,
            enabled: AtomicBool::new(false),
            opens: AtomicBool::new(false),
            can_skip_opens: AtomicBool::new(false),
            by_ino: Mutex::default(),
            by_fh: Mutex::default(),
        }
    }

    /// Whether the configuration asks for passthrough.
    pub fn wanted(&self) -> bool {
        self.wanted
    }

    /// What init settled: passthrough `granted` by the kernel, and whether it `can_skip_opens`.
    pub fn negotiated(&self, granted: bool, can_skip_opens: bool) {
        let granted = granted && self.wanted;
        self.enabled.store(granted, Ordering::Relaxed);
        self.can_skip_opens.store(can_skip_opens, Ordering::Relaxed);
        self.opens.store(granted || !can_skip_opens, Ordering::Relaxed);
    }

    /// Whether an OPEN gets a handle (else ENOSYS, and the kernel sends no more).
    pub fn answers_opens(&self) -> bool {
        self.opens.load(Ordering::Relaxed)
    }

    /// The backing id for handle `fh` of `ino`: the one its open handles share, else (when
    /// passthrough is still enabled and the file has a cache file of its own) a new one from
    /// `register`. None: open without passthrough. An inode with passthrough handles must get
    /// passthrough for every further open too (the kernel fails a mixed open with EIO), even
    /// after passthrough was switched off, or when its path was fetched again with the file now
    /// in a pack: the shared backing file holds the same bytes.
    ///
    /// An id a predecessor left open for the inode is taken over with `adopt`: the kernel
    /// refuses a second backing file for an inode with open passthrough handles (EBUSY).
    pub fn acquire(
        &self,
        ino: u64,
        fh: u64,
        file: Option<&File>,
        register: impl FnOnce(&File) -> std::io::Result<Id>,
        adopt: impl FnOnce(i32) -> std::io::Result<Id>,
    ) -> std::io::Result<Option<Arc<Id>>> {
        let mut by_ino = lock(&self.by_ino);
        let id = match (by_ino.get_mut(&ino), file) {
            (Some((shared, opens)), _) => {
                let id = match shared {
                    Shared::Own(id) => id.clone(),
                    Shared::Inherited(raw) => {
                        let id = Arc::new(adopt(*raw)?);
                        *shared = Shared::Own(id.clone());
                        id
                    }
                };
                *opens += 1;
                id
            }
            (None, Some(file)) if self.enabled.load(Ordering::Relaxed) => {
                let id = Arc::new(register(file)?);
                by_ino.insert(ino, (Shared::Own(id.clone()), 1));
                id
            }
            (None, _) => return Ok(None),
        };
        lock(&self.by_fh).insert(fh, ino);
        Ok(Some(id))
    }

    /// The kernel refused a backing file (e.g. cache files on a stacked filesystem): no more
    /// passthrough, and files open without a round trip again where the kernel allows it, but
    /// not while passthrough handles are open, whose inodes must not get a plain open.
    pub fn refused(&self) {
        self.enabled.store(false, Ordering::Relaxed);
        if self.can_skip_opens.load(Ordering::Relaxed) && lock(&self.by_ino).is_empty() {
            self.opens.store(false, Ordering::Relaxed);
        }
    }

    /// Forgets handle `fh`; the inode's backing id closes with its last handle. Returns the
    /// inode whose id this release closed, with the id if a predecessor left it open and this
    /// daemon never used it: the caller closes that one.
    pub fn release(&self, fh: u64) -> Option<(u64, Option<i32>)> {
        let ino = lock(&self.by_fh).remove(&fh)?;
        let mut by_ino = lock(&self.by_ino);
        let (_, opens) = by_ino.get_mut(&ino)?;
        *opens -= 1;
        if *opens > 0 {
            return None;
        }
        match by_ino.remove(&ino) {
            Some((Shared::Inherited(raw), _)) => Some((ino, Some(raw))),
            _ => Some((ino, None)),
        }
    }

    /// Takes over ids a crashed predecessor left open (from the state file's log): they are
    /// shared by later opens of their inodes and never closed (the handles of the dead daemon
    /// that still use them are unknown).
    pub fn keep_crashed(&self, ids: &[(u64, i32)]) {
        let mut by_ino = lock(&self.by_ino);
        for &(ino, raw) in ids {
            // One open that is never released: the unknown holders.
            by_ino.entry(ino).or_insert((Shared::Inherited(raw), 1));
        }
    }

    /// Hands every open passthrough handle over (a park): the table is emptied, and each
    /// inode's id is left open in the connection by `leave` (or, if still in use, closed when
    /// its last user drops it). Returns (fh, ino, backing id) of each handle.
    pub fn park(&self, leave: impl Fn(Id) -> i32) -> Vec<(u64, u64, i32)> {
        let by_fh: Vec<(u64, u64)> = lock(&self.by_fh).drain().collect();
        let ids: HashMap<u64, i32> = lock(&self.by_ino)
            .drain()
            .filter_map(|(ino, (shared, _))| match shared {
                Shared::Inherited(raw) => Some((ino, raw)),
                Shared::Own(id) => Arc::try_unwrap(id).ok().map(|id| (ino, leave(id))),
            })
            .collect();
        by_fh.into_iter().filter_map(|(fh, ino)| Some((fh, ino, *ids.get(&ino)?))).collect()
    }

    /// Takes over the handles a predecessor handed over (`park`): their ids are shared by
    /// later opens of the same inodes and closed with the last release.
    pub fn restore(&self, handles: &[(u64, u64, i32)]) {
        let (mut by_fh, mut by_ino) = (lock(&self.by_fh), lock(&self.by_ino));
        for &(fh, ino, raw) in handles {
            by_fh.insert(fh, ino);
            by_ino.entry(ino).or_insert((Shared::Inherited(raw), 0)).1 += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake backing id: which registration it was.
    type FakeId = u32;

    fn file() -> File {
        tempfile::tempfile().unwrap()
    }

    fn register(n: FakeId) -> impl FnOnce(&File) -> std::io::Result<FakeId> {
        move |_| Ok(n)
    }

    fn no_adopt(raw: i32) -> std::io::Result<FakeId> {
        panic!("nothing to adopt, asked for {raw}")
    }

    #[test]
    fn handles_handed_over_keep_their_id_for_new_opens_and_close_it_last() {
        let old = Backing::<FakeId>::new(true);
        old.negotiated(true, true);
        let f = file();
        old.acquire(7, 1, Some(&f), register(5), no_adopt).unwrap();
        old.acquire(7, 2, Some(&f), register(6), no_adopt).unwrap();
        old.acquire(8, 3, Some(&f), register(9), no_adopt).unwrap();
        let mut parked = old.park(|id| id as i32 + 100);
        parked.sort();
        assert_eq!(parked, vec![(1, 7, 105), (2, 7, 105), (3, 8, 109)], "ids left open");
        assert_eq!(old.release(1), None, "the old table is empty");
        let new = Backing::<FakeId>::new(true);
        new.negotiated(true, true);
        new.restore(&parked);
        let adopted = new.acquire(7, 10, Some(&f), register(1), |raw| Ok(raw as FakeId)).unwrap();
        assert_eq!(*adopted.unwrap(), 105, "a new open shares the inherited id (else EBUSY)");
        for fh in [1, 2] {
            assert_eq!(new.release(fh), None);
        }
        assert_eq!(new.release(10), Some((7, None)), "adopted: closed when its Arc goes");
        assert_eq!(new.release(3), Some((8, Some(109))), "never reopened: the caller closes it");
        assert_eq!(new.release(99), None, "an unknown handle (a crashed predecessor's)");
    }

    #[test]
    fn ids_a_crash_left_open_are_shared_and_never_closed() {
        let b = Backing::<FakeId>::new(true);
        b.negotiated(true, true);
        b.keep_crashed(&[(7, 5)]);
        let f = file();
        let id = b.acquire(7, 1, Some(&f), register(1), |raw| Ok(raw as FakeId)).unwrap();
        assert_eq!(*id.unwrap(), 5, "the crashed daemon's id, not a new one (EBUSY)");
        assert_eq!(b.release(1), None, "its unknown holders keep it");
        assert_eq!(b.release(1), None);
        let again = b.acquire(7, 2, Some(&f), register(2), no_adopt).unwrap();
        assert_eq!(*again.unwrap(), 5);
    }

    #[test]
    fn opens_are_answered_only_for_passthrough_or_old_kernels() {
        let cases = [
            // (wanted, granted, can_skip_opens) -> answers opens
            ((false, false, true), false),
            ((true, true, true), true),
            ((true, false, true), false),
            ((false, true, true), false),
            ((false, false, false), true),
            ((true, false, false), true),
        ];
        for ((wanted, granted, can_skip), answers) in cases {
            let b = Backing::<FakeId>::new(wanted);
            b.negotiated(granted, can_skip);
            assert_eq!(b.answers_opens(), answers, "{wanted} {granted} {can_skip}");
        }
    }

    #[test]
    fn handles_of_an_inode_share_one_id_closed_with_the_last() {
        let b = Backing::<FakeId>::new(true);
        b.negotiated(true, true);
        let f = file();
        let first = b.acquire(7, 1, Some(&f), register(1), no_adopt).unwrap().unwrap();
        let second = b.acquire(7, 2, Some(&f), register(2), no_adopt).unwrap().unwrap();
        assert!(Arc::ptr_eq(&first, &second), "one id per inode");
        b.release(1);
        let third = b.acquire(7, 3, None, register(3), no_adopt).unwrap().unwrap();
        assert_eq!(*third, 1, "still shared while a handle is open, even with no own file");
        b.release(2);
        b.release(3);
        let fresh = b.acquire(7, 4, Some(&f), register(4), no_adopt).unwrap().unwrap();
        assert_eq!(*fresh, 4, "the last release closed the old id");
    }

    #[test]
    fn small_files_in_a_pack_are_read_by_the_daemon() {
        let b = Backing::<FakeId>::new(true);
        b.negotiated(true, true);
        assert!(b.acquire(9, 1, None, register(1), no_adopt).unwrap().is_none());
    }

    #[test]
    fn a_refusal_switches_passthrough_off_but_keeps_open_inodes_consistent() {
        let b = Backing::<FakeId>::new(true);
        b.negotiated(true, true);
        let f = file();
        b.acquire(7, 1, Some(&f), register(1), no_adopt).unwrap();
        let err = b.acquire(8, 2, Some(&f), |_| Err(std::io::Error::other("stacked fs")), no_adopt);
        assert!(err.is_err());
        b.refused();
        assert!(b.answers_opens(), "a passthrough handle is open: opens still answered");
        assert!(b.acquire(8, 3, Some(&f), register(3), no_adopt).unwrap().is_none(), "no new ids");
        assert!(
            b.acquire(7, 4, Some(&f), register(4), no_adopt).unwrap().is_some(),
            "same inode keeps it"
        );
        b.release(1);
        b.release(4);
        b.refused();
        assert!(!b.answers_opens(), "with none open, files open without a round trip again");
    }
}
