//! Paths refused for want of room on the cache filesystem, remembered for a while (the negative
//! TTL), so that a path that cannot fit is not downloaded again on every access.

use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use lru::LruCache;

use super::CacheError;
use crate::sync::{Mutex, lock};

/// Most refusals remembered at once.
const ENTRIES: usize = 4096;

/// Refusals by hash part, each with the error to answer and when it was made.
#[derive(Debug)]
pub(super) struct NoRoomMemory {
    ttl: Duration,
    refused: Mutex<LruCache<String, (Instant, CacheError)>>,
}

impl NoRoomMemory {
    /// Remembers refusals for `ttl`.
    pub(super) fn new(ttl: Duration) -> Self {
        let cap = NonZeroUsize::new(ENTRIES).expect("non-zero constant");
        Self { ttl, refused: Mutex::new(LruCache::new(cap)) }
    }

    /// Remembers that `hash` was refused with `err`.
    pub(super) fn remember(&self, hash: String, err: CacheError) {
        lock(&self.refused).put(hash, (Instant::now(), err));
    }

    /// The refusal of `hash`, if it was made less than the TTL ago.
    pub(super) fn recall(&self, hash: &str) -> Option<CacheError> {
        let mut refused = lock(&self.refused);
        match refused.get(hash) {
            Some((at, err)) if at.elapsed() < self.ttl => Some(err.clone()),
            Some(_) => {
                refused.pop(hash);
                None
            }
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_remembered_for_the_ttl_only() {
        let memory = NoRoomMemory::new(Duration::from_secs(3600));
        let err = CacheError::NoRoom { path: "p".into(), needed: 10, free: 5 };
        memory.remember("h".into(), err);
        assert!(matches!(memory.recall("h"), Some(CacheError::NoRoom { needed: 10, .. })));
        assert!(memory.recall("other").is_none());
        let expired = NoRoomMemory::new(Duration::ZERO);
        expired.remember("h".into(), CacheError::NoRoom { path: "p".into(), needed: 1, free: 0 });
        assert!(expired.recall("h").is_none(), "a zero TTL remembers nothing");
    }
}
