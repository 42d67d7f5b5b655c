//! The warm lists of every path a mount looked up, fetched in one order across paths: lowest
//! rank first (the position of a file in the learned run's log), a few batches in flight in
//! all. A job reads its paths interleaved (an interpreter's library, then a package, then the
//! library again), so the files it needed first come first, whichever path holds them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::sync::{Mutex, lock};

/// One batch of a warm list (`T`: the entry and its files), waiting for its turn.
struct Pending<T> {
    /// The rank of its first file.
    rank: u64,
    /// Queued before any other of the same rank with a lower number.
    seq: u64,
    batch: T,
}

impl<T> PartialEq for Pending<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.rank, self.seq) == (other.rank, other.seq)
    }
}

impl<T> Eq for Pending<T> {}

impl<T> PartialOrd for Pending<T> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Pending<T> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.rank, self.seq).cmp(&(other.rank, other.seq))
    }
}

/// The batches waiting, and how many workers fetch them.
pub(super) struct WarmQueue<T> {
    inner: Mutex<Queue<T>>,
}

struct Queue<T> {
    waiting: BinaryHeap<Reverse<Pending<T>>>,
    workers: usize,
    seq: u64,
}

impl<T> Default for WarmQueue<T> {
    fn default() -> Self {
        let queue = Queue { waiting: BinaryHeap::new(), workers: 0, seq: 0 };
        Self { inner: Mutex::new(queue) }
    }
}

impl<T> WarmQueue<T> {
    /// Queues `batches` (each with its rank); returns how many workers to start, so that at
    /// most `limit` run.
    pub(super) fn push(&self, batches: impl IntoIterator<Item = (u64, T)>, limit: usize) -> usize {
        let mut q = lock(&self.inner);
        for (rank, batch) in batches {
            q.seq += 1;
            let seq = q.seq;
            q.waiting.push(Reverse(Pending { rank, seq, batch }));
        }
        let start = limit.saturating_sub(q.workers).min(q.waiting.len());
        q.workers += start;
        start
    }

    /// The lowest-ranked batch for a worker; None tells the worker to stop (counted stopped
    /// under the same lock, so a batch queued after this starts a worker of its own).
    pub(super) fn next(&self) -> Option<T> {
        let mut q = lock(&self.inner);
        let next = q.waiting.pop().map(|Reverse(p)| p.batch);
        if next.is_none() {
            q.workers = q.workers.saturating_sub(1);
        }
        next
    }
}

impl<T> std::fmt::Debug for WarmQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = lock(&self.inner);
        f.debug_struct("WarmQueue")
            .field("waiting", &q.waiting.len())
            .field("workers", &q.workers)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_come_lowest_rank_first_across_pushes_and_workers_stop_when_none_is_left() {
        let q = WarmQueue::default();
        // A library's list, then a package's, pushed later, whose files were read in between.
        assert_eq!(q.push([(0, "lib 0"), (5, "lib 5"), (9, "lib 9")], 2), 2);
        assert_eq!(q.push([(3, "pkg 3"), (7, "pkg 7")], 2), 0, "two workers run already");
        assert_eq!(q.next(), Some("lib 0"));
        assert_eq!(q.next(), Some("pkg 3"));
        assert_eq!(q.push([(3, "pkg2 3")], 2), 0);
        let rest: Vec<_> = std::iter::from_fn(|| q.next()).collect();
        assert_eq!(rest, ["pkg2 3", "lib 5", "pkg 7", "lib 9"]);
        // The first worker stopped at that None; the second stops now.
        assert_eq!(q.next(), None);
        assert_eq!(q.push([(1, "late")], 2), 1, "one worker to start: none runs");
    }
}
