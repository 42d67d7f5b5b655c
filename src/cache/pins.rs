//! Pinned store paths: never evicted, persisted as one empty file per path in `pins/<basename>`
//! (created and removed with a single syscall each, so a crash leaves each pin whole or absent).

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use tracing::{info, warn};

use super::layout::{LayoutError, PINS_DIR};
use super::{CacheError, NarCache};
use crate::nix::store_path::StorePath;
use crate::sync::{Arc, lock};

/// Reads the pins kept in `dir`, by hash part. A file whose name is not a store path basename
/// is ignored with a warning (a pin is never invented from a stray file).
pub(super) fn load(dir: &Path) -> Result<HashMap<String, StorePath>, LayoutError> {
    let list = fs::read_dir(dir).map_err(|source| LayoutError::Io {
        action: "cannot list",
        path: dir.to_owned(),
        source,
    })?;
    let mut pins = HashMap::new();
    for dirent in list.flatten() {
        let name = dirent.file_name();
        match StorePath::from_basename(name.as_encoded_bytes()) {
            Ok(sp) => {
                pins.insert(sp.hash_part(), sp);
            }
            Err(err) => warn!(file = %dirent.path().display(), error = %err, "ignoring stray pin"),
        }
    }
    Ok(pins)
}

impl NarCache {
    fn pin_file(&self, sp: &StorePath) -> PathBuf {
        self.layout.root().join(PINS_DIR).join(format!("{}-{}", sp.hash_part(), sp.name()))
    }

    fn local_err(sp: &StorePath, action: &str, err: io::Error) -> CacheError {
        CacheError::local(sp, io::Error::new(err.kind(), format!("{action}: {err}")))
    }

    /// Pins each path: it is fetched if it is not cached yet, and is never evicted after that.
    /// The pin is recorded before the fetch (so the fresh entry cannot be evicted under it) and
    /// dropped again when the fetch fails. Pinning a pinned path is a no-op that succeeds.
    pub async fn pin(
        self: &Arc<Self>,
        paths: &[StorePath],
    ) -> Vec<(StorePath, Result<(), CacheError>)> {
        let mut out = Vec::with_capacity(paths.len());
        for sp in paths {
            out.push((sp.clone(), self.pin_one(sp).await));
        }
        out
    }

    async fn pin_one(self: &Arc<Self>, sp: &StorePath) -> Result<(), CacheError> {
        let hash = sp.hash_part();
        let was_pinned = {
            let cat = lock(&self.catalog);
            match cat.pin_of(&hash) {
                Some(other) if other != sp => {
                    return Err(CacheError::NotFound(sp.to_string()));
                }
                found => found.is_some(),
            }
        };
        if !was_pinned {
            fs::File::create(self.pin_file(sp))
                .map_err(|e| Self::local_err(sp, "cannot record pin", e))?;
            lock(&self.catalog).pin(sp.clone());
        }
        match self.get(sp).await {
            Ok(_) => {
                info!(store_path = %sp, "pinned");
                Ok(())
            }
            Err(err) => {
                if !was_pinned {
                    self.unpin_one(sp)?;
                }
                Err(err)
            }
        }
    }

    /// Unpins each path; `Ok(true)` when it was pinned. The entry stays cached, now evictable.
    pub fn unpin(&self, paths: &[StorePath]) -> Vec<(StorePath, Result<bool, CacheError>)> {
        paths.iter().map(|sp| (sp.clone(), self.unpin_one(sp))).collect()
    }

    fn unpin_one(&self, sp: &StorePath) -> Result<bool, CacheError> {
        let hash = sp.hash_part();
        if lock(&self.catalog).pin_of(&hash) != Some(sp) {
            return Ok(false);
        }
        match fs::remove_file(self.pin_file(sp)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Self::local_err(sp, "cannot remove pin", e)),
        }
        lock(&self.catalog).unpin(&hash);
        Ok(true)
    }

    /// The pinned paths, sorted.
    pub fn pinned(&self) -> Vec<StorePath> {
        let mut out: Vec<StorePath> = lock(&self.catalog).pins().cloned().collect();
        out.sort_by_key(|sp| sp.to_absolute_path());
        out
    }

    /// Whether `sp` is pinned.
    pub fn is_pinned(&self, sp: &StorePath) -> bool {
        lock(&self.catalog).pin_of(&sp.hash_part()) == Some(sp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{Fixture, key, publish, sp, tree};

    #[tokio::test]
    async fn pins_fetch_persist_across_restarts_and_unpin() {
        let fx = Fixture::new(1);
        let (a, b) = (sp('a', "a"), sp('b', "b"));
        publish(&fx.ups[0], &key(), &a, &tree("a", 1));
        publish(&fx.ups[0], &key(), &b, &tree("b", 1));
        let cache = fx.open();
        let out = cache.pin(&[b.clone(), a.clone(), a.clone()]).await;
        assert!(out.iter().all(|(_, r)| r.is_ok()));
        assert!(cache.cached(&a).is_some(), "pinning fetches");
        assert_eq!(cache.pinned(), vec![a.clone(), b.clone()]);
        drop(cache);

        let cache = fx.open();
        assert_eq!(cache.pinned(), vec![a.clone(), b.clone()], "pins survive a restart");
        let out = cache.unpin(&[a.clone(), sp('c', "never")]);
        assert!(matches!(out[0].1, Ok(true)) && matches!(out[1].1, Ok(false)));
        drop(cache);
        let cache = fx.open();
        assert_eq!(cache.pinned(), vec![b]);
    }

    #[tokio::test]
    async fn pinning_a_path_nobody_has_fails_and_leaves_no_pin() {
        let fx = Fixture::new(1);
        let cache = fx.open();
        let gone = sp('g', "gone");
        let out = cache.pin(std::slice::from_ref(&gone)).await;
        assert!(matches!(out[0].1, Err(CacheError::NotFound(_))));
        assert!(cache.pinned().is_empty());
        assert_eq!(std::fs::read_dir(fx.config.dir.join(PINS_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn stray_files_in_pins_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("not a store path"), b"").unwrap();
        let good = sp('a', "good");
        std::fs::write(dir.path().join(good.to_string()), b"").unwrap();
        let pins = load(dir.path()).unwrap();
        assert_eq!(pins.into_values().collect::<Vec<_>>(), vec![good]);
    }
}
