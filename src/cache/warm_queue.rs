//! The warm lists of every path a mount looked up, fetched in one order across paths and paced
//! by the readers: lowest rank first (the position of a file in the learned run's log), a few
//! batches in flight in all, and only batches whose rank is within `window` of the highest rank
//! a reader has opened so far. A job reads its paths interleaved (an interpreter's library,
//! then a package, then the library again): so the files it needs next come first, whichever
//! path holds them, and files it needs much later do not crowd the link before it gets there.

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

/// What a worker is to do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Turn<T> {
    /// Fetch this batch.
    Fetch(T),
    /// Wait until readers get further (`WarmQueue::read`), then ask again.
    Wait,
    /// Stop: nothing is queued (counted stopped under the lock, so a batch queued after this
    /// starts a worker of its own).
    Stop,
}

/// The batches waiting, how many workers fetch them, and how far readers got.
pub(super) struct WarmQueue<T> {
    inner: Mutex<Queue<T>>,
    /// Ranks released beyond the highest one read.
    window: u64,
}

struct Queue<T> {
    waiting: BinaryHeap<Reverse<Pending<T>>>,
    workers: usize,
    seq: u64,
    /// One more than the highest rank a reader opened (0 before any).
    read_to: u64,
}

impl<T> WarmQueue<T> {
    /// An empty queue releasing ranks up to `window` beyond the highest one read.
    pub(super) fn new(window: u64) -> Self {
        let queue = Queue { waiting: BinaryHeap::new(), workers: 0, seq: 0, read_to: 0 };
        Self { inner: Mutex::new(queue), window }
    }

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

    /// A worker's next turn: the lowest-ranked batch if it is released.
    pub(super) fn next(&self) -> Turn<T> {
        let mut q = lock(&self.inner);
        let released = q.read_to.saturating_add(self.window);
        match q.waiting.peek() {
            None => {
                q.workers = q.workers.saturating_sub(1);
                Turn::Stop
            }
            // Saturated: every rank is released, u64::MAX too.
            Some(Reverse(head)) if released < u64::MAX && head.rank >= released => Turn::Wait,
            Some(_) => Turn::Fetch(q.waiting.pop().expect("peeked").0.batch),
        }
    }

    /// A reader opened the file of rank `rank`; true when that released more batches.
    pub(super) fn read(&self, rank: u64) -> bool {
        let mut q = lock(&self.inner);
        if rank < q.read_to {
            return false;
        }
        // A rank is network input: u64::MAX must not overflow.
        q.read_to = rank.saturating_add(1);
        true
    }
}

impl<T> std::fmt::Debug for WarmQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = lock(&self.inner);
        f.debug_struct("WarmQueue")
            .field("waiting", &q.waiting.len())
            .field("workers", &q.workers)
            .field("read_to", &q.read_to)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain<T>(q: &WarmQueue<T>) -> Vec<T> {
        let mut out = Vec::new();
        while let Turn::Fetch(b) = q.next() {
            out.push(b);
        }
        out
    }

    #[test]
    fn batches_come_lowest_rank_first_across_pushes_and_workers_stop_when_none_is_left() {
        let q = WarmQueue::new(u64::MAX);
        // A library's list, then a package's, pushed later, whose files were read in between.
        assert_eq!(q.push([(0, "lib 0"), (5, "lib 5"), (9, "lib 9")], 2), 2);
        assert_eq!(q.push([(3, "pkg 3"), (7, "pkg 7")], 2), 0, "two workers run already");
        assert_eq!(q.next(), Turn::Fetch("lib 0"));
        assert_eq!(q.next(), Turn::Fetch("pkg 3"));
        assert_eq!(q.push([(3, "pkg2 3")], 2), 0);
        assert_eq!(drain(&q), ["pkg2 3", "lib 5", "pkg 7", "lib 9"]);
        // The first worker stopped at that Stop; the second stops now.
        assert_eq!(q.next(), Turn::Stop);
        assert_eq!(q.push([(1, "late")], 2), 1, "one worker to start: none runs");
    }

    #[test]
    fn a_batch_waits_until_readers_come_within_the_window_of_it() {
        let q = WarmQueue::new(10);
        q.push([(0, "a"), (9, "b"), (10, "c"), (25, "d")], 1);
        assert_eq!(drain(&q), ["a", "b"], "ranks 0 to 9 released before any read");
        assert_eq!(q.next(), Turn::Wait);
        assert!(q.read(4), "rank 4 read: up to 14 released");
        assert_eq!(drain(&q), ["c"]);
        assert!(!q.read(3), "an earlier rank releases nothing");
        assert!(q.read(15));
        assert_eq!(drain(&q), ["d"]);
        assert_eq!(q.next(), Turn::Stop);
        assert!(q.read(u64::MAX), "the highest rank a signed index may give releases all");
        q.push([(u64::MAX, "last")], 1);
        assert_eq!(drain(&q), ["last"]);
    }
}
