//! The one place locks and atomics come from, so a model checker (shuttle) can swap them later.

pub use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
pub use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

/// Locks `m`, treating poisoning as unrecoverable: a panic while holding one of our locks is
/// already a bug, and serving from half-updated state would be worse than stopping.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("storefs lock poisoned by an earlier panic")
}
