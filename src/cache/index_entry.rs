//! A path served from its signed file index: with a verified narinfo in hand, ask the same
//! cache for `<hash>.index`, trust it only under a configured index key and only for that
//! narinfo's store path, NarHash, NarSize and NAR file, and publish a partial entry (the tree,
//! no file yet) without downloading the NAR. Anything short of that falls back to the whole
//! NAR, verified by NarHash, as for a cache with no index.

use std::path::Path;

use tracing::{debug, info, warn};

use super::layout::{LayoutError, MANIFEST_FILE};
use super::partial::{INDEX_FILE, Partial, manifest_of};
use super::stats::CacheStats;
use super::{Entry, NarCache, scan};
use crate::logging::warn_throttled;
use crate::nix::file_index::{FileIndex, IndexError, MAX_INDEX_BYTES, SignedIndex};
use crate::nix::narinfo::NarInfo;
use crate::nix::store_path::StorePath;
use crate::sync::{Arc, AtomicU64, lock};
use crate::upstream::{Upstream, UpstreamError};

/// An upstream's answer to the request for a path's file index.
pub(super) type IndexAnswer = Result<Option<Vec<u8>>, UpstreamError>;

impl NarCache {
    /// `up`'s answer for the file index of `sp`, or None (no request) when the mount trusts no
    /// index key or the cache is read-only.
    pub(super) async fn index_answer(
        &self,
        up: &dyn Upstream,
        sp: &StorePath,
    ) -> Option<IndexAnswer> {
        if self.config.index_keys.is_empty() || self.layout.read_only() {
            return None;
        }
        Some(up.index(&sp.hash_part(), MAX_INDEX_BYTES as u64).await)
    }

    /// The partial entry for `info` (verified) from `up`'s index (`answer`, or asked for now),
    /// published; None when index keys are off, the NAR is small enough to fetch whole, the
    /// cache has no index for the path, or the index is refused (counted by reason and logged):
    /// the caller then downloads the NAR.
    pub(super) async fn partial_from_index(
        self: &Arc<Self>,
        up: &dyn Upstream,
        info: &NarInfo,
        answer: Option<IndexAnswer>,
    ) -> Option<Arc<Entry>> {
        // A small NAR costs one request whole, less than a round trip per file read.
        if info.file_size.is_some_and(|size| size <= self.config.index_min_nar_bytes) {
            return None;
        }
        let sp = &info.store_path;
        let answer = match answer {
            Some(answer) => answer,
            None => self.index_answer(up, sp).await?,
        };
        let raw = match answer {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                debug!(store_path = %sp, upstream = up.url(), "no file index");
                return None;
            }
            Err(err) => {
                CacheStats::bump(&self.stats.index_refused_malformed);
                warn_throttled!(self.failure_log, store_path = %sp, upstream = up.url(),
                                error = %err, "file index request failed; fetching the NAR");
                return None;
            }
        };
        let index = match self.verify_index(&raw, info) {
            Ok(index) => index,
            Err(err) => {
                let counter = match &err {
                    IndexError::Unsigned | IndexError::Signature(_) => {
                        &self.stats.index_refused_signature
                    }
                    IndexError::StorePathDiffers { .. }
                    | IndexError::NarHashDiffers { .. }
                    | IndexError::NarSizeDiffers { .. }
                    | IndexError::NarFileDiffers { .. } => &self.stats.index_refused_mismatch,
                    _ => &self.stats.index_refused_malformed,
                };
                CacheStats::bump(counter);
                warn_throttled!(self.failure_log, store_path = %sp, upstream = up.url(),
                                error = %err, "file index refused; fetching the NAR");
                return None;
            }
        };
        match self.publish_partial(up, info, index, raw).await {
            Ok(entry) => {
                CacheStats::bump(&self.stats.index_hits);
                Some(entry)
            }
            Err(err) => {
                warn!(store_path = %sp, error = %err, "cannot store the file index; fetching the NAR");
                None
            }
        }
    }

    /// Trusts `raw` under the index keys for `info`: its signature is checked before its body
    /// is parsed (`SignedIndex::open`).
    pub(super) fn verify_index(&self, raw: &[u8], info: &NarInfo) -> Result<FileIndex, IndexError> {
        SignedIndex::open(raw, &self.config.index_keys, info).map(|(index, _key)| index)
    }

    /// Writes the partial entry (manifest and index) into staging, publishes it like any entry
    /// and admits it.
    async fn publish_partial(
        self: &Arc<Self>,
        up: &dyn Upstream,
        info: &NarInfo,
        index: FileIndex,
        raw: Vec<u8>,
    ) -> Result<Arc<Entry>, LayoutError> {
        let hash = info.store_path.hash_part();
        let manifest = manifest_of(&index, info.to_string(), raw.len() as u64);
        let this = self.clone();
        let (hash2, encoded) = (hash.clone(), manifest.encode());
        let published = tokio::task::spawn_blocking(move || {
            let staging = this.layout.new_staging(&hash2)?;
            let write = |name: &str, bytes: &[u8]| {
                let path = staging.join(name);
                std::fs::write(&path, bytes).map_err(|source| LayoutError::Io {
                    action: "cannot write",
                    path,
                    source,
                })
            };
            let staged = write(MANIFEST_FILE, &encoded).and_then(|()| write(INDEX_FILE, &raw));
            let published = staged.and_then(|()| {
                let _moves = lock(&this.moves);
                if this.is_closed() {
                    return Err(LayoutError::Closed);
                }
                this.layout.publish(&staging, &hash2)
            });
            if published.is_err() {
                this.discard_in_background(staging);
            }
            published
        })
        .await
        .map_err(|e| LayoutError::Io {
            action: "cannot publish",
            path: Path::new(&hash).into(),
            source: std::io::Error::other(e),
        })??;
        let entry = Arc::new(Entry {
            store_path: info.store_path.clone(),
            narinfo: info.clone(),
            manifest,
            dir: published,
            touched_secs: AtomicU64::new(scan::unix_now()),
            partial: Some(Partial::new(index)),
        });
        if let Err(err) = self.narinfos.put(up.url(), info) {
            warn!(store_path = %info.store_path, error = %err, "cannot remember the narinfo");
        }
        info!(store_path = %info.store_path, nar_size = info.nar_size, upstream = up.url(),
              "published from its file index (files fetched on first read)");
        lock(&self.catalog).admit(hash.clone(), entry.clone());
        self.fetch_warm(&entry);
        if let Some(partial) = entry.partial() {
            self.prefetch_learned(&partial.index.warm_paths);
        }
        let this = self.clone();
        if let Err(err) = tokio::task::spawn_blocking(move || this.evict_after_publish(&hash)).await
        {
            warn!(error = %err, "eviction after publish failed");
        }
        Ok(entry)
    }

    /// The partial state of an entry found on disk with an `index` file: the index verified
    /// again under today's index keys (a key removed stops vouching), and the files recorded
    /// present. Err: why the entry is unusable.
    pub(super) fn load_partial(
        &self,
        dir: &Path,
        info: &NarInfo,
    ) -> Result<Option<Partial>, String> {
        let raw = match std::fs::read(dir.join(INDEX_FILE)) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read index: {e}")),
        };
        let index =
            self.verify_index(&raw, info).map_err(|e| format!("index no longer trusted: {e}"))?;
        Partial::load(index, dir).map(Some).map_err(|e| format!("cannot read present files: {e}"))
    }
}
