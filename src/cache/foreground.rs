//! Readers first on the link: counts the readers waiting for files of partial entries, so that
//! a background fill starts its next batch only when none is waiting. A batch already in flight
//! runs to its end; what a reader waits behind is at most the fill's batches in flight.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The readers waiting for a fetch now.
#[derive(Debug, Default)]
pub struct Foreground {
    waiting: AtomicUsize,
    idle: Notify,
}

/// One waiting reader; counted until dropped.
pub struct Waiting<'a>(&'a Foreground);

impl Foreground {
    /// Counts a reader as waiting until the guard is dropped.
    pub fn enter(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting(self)
    }

    /// Returns once no reader is waiting.
    pub async fn idle(&self) {
        loop {
            let woken = self.idle.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.waiting.load(Ordering::SeqCst) == 0 {
                return;
            }
            woken.await;
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.0.waiting.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_waits_for_the_last_reader() {
        let gate = Foreground::default();
        gate.idle().await;
        let (first, second) = (gate.enter(), gate.enter());
        let idle = gate.idle();
        tokio::pin!(idle);
        assert!(futures::poll!(idle.as_mut()).is_pending(), "two readers wait");
        drop(first);
        assert!(futures::poll!(idle.as_mut()).is_pending(), "one reader still waits");
        drop(second);
        assert!(futures::poll!(idle.as_mut()).is_ready(), "no reader waits");
    }
}
