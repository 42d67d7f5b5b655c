//! Setting aside an entry a reader found damaged on disk (a block that does not match its
//! checksum, a cache file missing, short or replaced by a symlink), so the next `get` fetches the
//! path again instead of serving the damage for ever.

use tokio::task::spawn_blocking;
use tracing::warn;

use super::stats::CacheStats;
use super::{Entry, NarCache};
use crate::sync::Arc;

impl NarCache {
    /// Evicts `entry`, found damaged (`problem` says how), if it is still the cached copy of its
    /// path, pinned or not (a pin stays, so the path comes back at the next `get`). The first
    /// reader to find it counts it (`corrupt_entries`) and logs it; readers finding the same
    /// damage at the same time, or after, find it gone and stay quiet. Returns at once when the
    /// entry is no longer cached.
    pub async fn set_aside(self: &Arc<Self>, entry: &Arc<Entry>, problem: &str) {
        let hash = entry.store_path.hash_part();
        let evicted = {
            let (this, entry) = (self.clone(), entry.clone());
            spawn_blocking(move || this.evict_entry(&hash, Some(&entry))).await
        };
        match evicted {
            Ok(Ok(Some(trashed))) => {
                CacheStats::bump(&self.stats.corrupt_entries);
                warn!(store_path = %entry.store_path, problem,
                      "damaged cache entry set aside; fetching it again");
                self.purge(vec![trashed]);
            }
            Ok(Ok(None)) => {}
            Ok(Err(err)) => {
                warn!(store_path = %entry.store_path, problem, error = %err,
                      "cannot set aside damaged cache entry");
            }
            Err(join) => warn!(store_path = %entry.store_path, error = %join, "set-aside task"),
        }
    }
}
