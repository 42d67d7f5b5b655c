//! One large file of a partial entry (more than `CacheConfig::stream_file_bytes`) fetched
//! without holding it in memory: its frames come by HTTP Range in order, each checked against
//! its SHA-256 and decoded, the file's bytes in it hashed and written under the file's
//! temporary name as they arrive. Only when the whole file matched its digest is it committed
//! (renamed, present, served); a frame or file that does not match leaves nothing present, and
//! the next cache is asked. Memory stays at a few ranges in flight, whatever the file's size.

use std::collections::BTreeSet;

use futures::StreamExt;
use tracing::warn;

use super::partial::{FileWriter, Partial};
use super::ranged::{RANGES_IN_FLIGHT, coalesce, frame_in};
use super::stats::CacheStats;
use super::{CacheError, Cause, Entry, Failure, NarCache};
use crate::nix::nar::NodeId;
use crate::sync::Arc;
use crate::upstream::Upstream;

/// How one cache did with a streamed file.
pub(super) enum Streamed {
    /// Stored (true), or the entry was evicted meanwhile (false: nothing more goes into it).
    Stored(bool),
    /// This cache sent bytes that do not match, or none: ask the next.
    Failed(Failure),
}

impl NarCache {
    /// Fetches file `id` of `entry` from `up` frame by frame, checking and writing as it goes,
    /// and stores it once its digest matched. Err only for a local failure (the disk).
    pub(super) async fn stream_file(
        self: &Arc<Self>,
        up: &dyn Upstream,
        entry: &Arc<Entry>,
        partial: &Partial,
        id: NodeId,
    ) -> Result<Streamed, CacheError> {
        let index = &partial.index;
        let Some(file) = index.file(id) else { return Ok(Streamed::Stored(true)) };
        let mut check = index.file_stream(file);
        let frames: BTreeSet<usize> = check.frames().collect();
        let local = |err: std::io::Error| {
            self.file_failed(entry, id, vec![Failure { upstream: None, cause: Cause::new(err) }])
        };
        let (dir, executable) = (entry.dir.clone(), file.executable);
        let started = tokio::task::spawn_blocking(move || FileWriter::start(&dir, id, executable));
        let mut writer = match started.await.map_err(std::io::Error::other).and_then(|r| r) {
            Ok(writer) => writer,
            // The entry's directory is gone: it was evicted.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Streamed::Stored(false));
            }
            Err(e) => return Err(local(e)),
        };
        let mut ranges = futures::stream::iter(coalesce(index, &frames))
            .map(|run| self.fetch_run(up, entry, index, run))
            .buffered(RANGES_IN_FLIGHT);
        let failed = |err: &dyn std::fmt::Display| {
            warn!(store_path = %entry.store_path, upstream = up.url(), error = %err,
                  "file does not match the index; not stored from here");
        };
        while let Some((run, first, bytes)) = ranges.next().await {
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(failed) => return Ok(Streamed::Failed(failed)),
            };
            let mut pieces = Vec::new();
            for i in run {
                let decoded = frame_in(index, i, first, &bytes).map(|p| index.decode_frame(i, p));
                let decoded = match decoded {
                    Some(Ok(decoded)) => decoded,
                    Some(Err(err)) => {
                        self.frame_mismatch(up);
                        failed(&err);
                        return Ok(Streamed::Failed(Failure::of(up.url(), err)));
                    }
                    None => {
                        let why = format!("range for frame {i} came short");
                        failed(&why);
                        return Ok(Streamed::Failed(Failure::of(up.url(), Cause::msg(why))));
                    }
                };
                match check.piece(i, &decoded) {
                    Ok(piece) => pieces.extend_from_slice(piece),
                    Err(err) => {
                        failed(&err);
                        return Ok(Streamed::Failed(Failure::of(up.url(), err)));
                    }
                }
            }
            let write = move || writer.write(&pieces).map(|()| writer);
            writer = tokio::task::spawn_blocking(write)
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r)
                .map_err(local)?;
        }
        if let Err(err) = check.finish() {
            CacheStats::bump(&self.stats.verify_failures);
            failed(&err);
            return Ok(Streamed::Failed(Failure::of(up.url(), err)));
        }
        let current = self.store_staged(entry, 1, id, move |_, _| writer.finish()).await?;
        Ok(Streamed::Stored(current))
    }
}
