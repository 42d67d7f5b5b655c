//! Single flight for the files of one partial entry: a missing file is fetched by one batch at a
//! time, and a reader of a file some batch is fetching waits for that batch rather than asking
//! again. The lock guards only this bookkeeping, never a network wait, so several batches of one
//! entry are in flight at once.

use std::collections::HashSet;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::nix::nar::NodeId;
use crate::sync::{Arc, Mutex, lock};

/// The files of one entry that a batch is fetching now.
#[derive(Debug, Default)]
pub struct Claims {
    taken: Mutex<HashSet<NodeId>>,
    released: Notify,
}

/// What a reader of one file does next.
pub enum Turn<'a> {
    /// The file is present.
    Present,
    /// Another batch is fetching it: wait for that batch to end, then look again.
    Wait(Notified<'a>),
    /// This reader fetches these files (the one asked for first).
    Fetch(Claim),
}

/// Files claimed by one batch; released (and their waiters woken) when dropped, whether the
/// batch stored them, failed or was cancelled. It owns a handle on its `Claims`, so a task of
/// its own may finish the batch.
pub struct Claim {
    claims: Arc<Claims>,
    /// The files this batch fetches.
    pub ids: Vec<NodeId>,
}

impl Claims {
    /// The turn of a reader of file `id`: `present` says whether a file is stored (checked under
    /// the lock, so a batch that just stored the file and let go is never repeated), `batch`
    /// gives the files to fetch with it (those already present or claimed are left out).
    pub fn turn(
        self: &Arc<Self>,
        id: NodeId,
        present: impl Fn(NodeId) -> bool,
        batch: impl FnOnce() -> Vec<NodeId>,
    ) -> Turn<'_> {
        let mut taken = lock(&self.taken);
        if taken.contains(&id) {
            // Created under the lock: the batch's release, which takes the lock, wakes it.
            return Turn::Wait(self.released.notified());
        }
        if present(id) {
            return Turn::Present;
        }
        let mut ids = vec![id];
        for other in batch() {
            if other != id && !taken.contains(&other) && !present(other) {
                ids.push(other);
            }
        }
        taken.extend(ids.iter().copied());
        Turn::Fetch(Claim { claims: self.clone(), ids })
    }

    /// Claims those of `ids` nobody has claimed and that are not `present`; and, if some are
    /// claimed by other batches, a wake-up for when any batch ends.
    pub fn claim_free(
        self: &Arc<Self>,
        ids: &[NodeId],
        present: impl Fn(NodeId) -> bool,
    ) -> (Claim, Option<Notified<'_>>) {
        let mut taken = lock(&self.taken);
        let busy = ids.iter().any(|id| taken.contains(id));
        let free: Vec<NodeId> =
            ids.iter().copied().filter(|id| !taken.contains(id) && !present(*id)).collect();
        taken.extend(free.iter().copied());
        let wait = busy.then(|| self.released.notified());
        (Claim { claims: self.clone(), ids: free }, wait)
    }

    /// Whether any of `ids` is claimed, and if so a wake-up for when any batch ends.
    pub fn wait_for_any(&self, ids: &[NodeId]) -> Option<Notified<'_>> {
        let taken = lock(&self.taken);
        ids.iter().any(|id| taken.contains(id)).then(|| self.released.notified())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let mut taken = lock(&self.claims.taken);
        for id in &self.ids {
            taken.remove(id);
        }
        drop(taken);
        self.claims.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claimed_file_makes_its_readers_wait_until_the_batch_ends() {
        let claims = Arc::new(Claims::default());
        let Turn::Fetch(claim) = claims.turn(1, |_| false, || vec![2, 3]) else {
            panic!("the first reader fetches")
        };
        assert_eq!(claim.ids, vec![1, 2, 3]);
        let Turn::Wait(woken) = claims.turn(3, |_| false, Vec::new) else {
            panic!("a file in flight is waited for")
        };
        let Turn::Fetch(other) = claims.turn(4, |_| false, || vec![2, 5]) else {
            panic!("another file is fetched at the same time")
        };
        assert_eq!(other.ids, vec![4, 5], "files claimed by the first batch are left out");
        drop(claim);
        let mut woken = Box::pin(woken);
        assert!(woken.as_mut().enable(), "the end of the batch wakes its waiters");
        assert!(matches!(claims.turn(3, |id| id == 3, Vec::new), Turn::Present));
        let (free, wait) = claims.claim_free(&[4, 6, 7], |id| id == 7);
        assert_eq!(free.ids, vec![6]);
        assert!(wait.is_some(), "file 4 is still in flight");
        drop(other);
        assert!(claims.wait_for_any(&[4]).is_none());
    }
}
