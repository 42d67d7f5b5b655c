//! Fetching files of a partial entry: the frames a file lies in, asked for with HTTP Range
//! requests (neighbouring frames coalesced into one range, several ranges in flight), each
//! frame checked against its SHA-256 in the index and decoded, each file cut out and checked
//! against its own SHA-256, and only then stored and served. A reader waits for its own small
//! batch only; the rest of its package or directory comes alongside, and what follows in the
//! NAR after it (`ahead` plans which); once a quarter of an entry is present, the rest is
//! filled in the background in small batches, started only while no reader waits
//! (`foreground`). Batches of one entry run at once; `claims` keeps each file to one fetch and
//! `flights` each frame. The other missing files wholly in a batch's frames are checked and
//! kept too (the bycatch), in a task of their own. A frame whose bytes do not match gives an
//! error for the files in it, never a wrong byte, and the next cache is asked.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::Path;

use futures::StreamExt;
use tracing::{debug, warn};

use super::ahead;
use super::claims::{self, Claim};
use super::error::Failures;
use super::partial::{Partial, Staged, VerifiedFile};
use super::stats::CacheStats;
use super::streamed::Streamed;
use super::warm_queue::Turn;
use super::{CacheError, Cause, Entry, Failure, NarCache};
use crate::logging::warn_throttled;
use crate::nix::file_index::FileIndex;
use crate::nix::nar::NodeId;
use crate::sync::{Arc, lock};
use crate::upstream::Upstream;

/// Range requests of one batch in flight at once.
pub(super) const RANGES_IN_FLIGHT: usize = 4;
/// Largest range asked for at once (several frames coalesced), in bytes of the NAR file.
const MAX_RANGE_BYTES: u64 = 8 << 20;
/// Most bytes of frames one batch of `complete` fetches.
const COMPLETE_BATCH_BYTES: u64 = 32 << 20;
/// Background batches of one entry in flight at once.
const BACKGROUND_BATCHES_IN_FLIGHT: usize = 2;
/// Warm-list batches in flight at once, over all entries.
const WARM_BATCHES_IN_FLIGHT: usize = 3;
/// How far in the learned run's log (in files) warm-list batches are fetched beyond the
/// furthest file a reader opened.
pub(super) const WARM_WINDOW: u64 = 150;

/// What an entry fetches in the background, batch by batch, each batch claimed just before it
/// is fetched (a file present or claimed by then is left out).
enum Background {
    /// These batches, read ahead for a reader.
    Ahead(Vec<Vec<NodeId>>),
    /// Every missing file, in NAR order from this file on, started only while no reader waits.
    Fill { from: NodeId },
}

/// The missing files that lay wholly in the frames a batch fetched, verified, and the claim on
/// them, held until they are stored.
struct Bycatch {
    files: Vec<VerifiedFile>,
    claim: Claim,
}

impl NarCache {
    /// Makes file `id` of `entry`'s path present, fetched, verified and stored with the small
    /// files of its directory when cheap and its namesakes (`ahead::reader_batch`), and
    /// returns the entry that holds it: `entry`, or the path's entry now if `entry` was
    /// evicted meanwhile (fetched again, same NarHash). An error (EIO to the reader) when no
    /// cache gave bytes that verify.
    pub async fn fetch_file(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        id: NodeId,
    ) -> Result<Arc<Entry>, CacheError> {
        let mut entry = entry.clone();
        let mut evictions = 0;
        loop {
            if !self.is_current(&entry) {
                entry = self.get_as(&entry.store_path, None).await?;
            }
            let Some(partial) = entry.partial() else { return Ok(entry) };
            if partial.index.file(id).is_none() {
                return Ok(entry.clone());
            }
            let claim = match partial.claims.turn(
                id,
                |f| partial.has(f),
                || ahead::reader_batch(partial, id),
            ) {
                claims::Turn::Present => return Ok(entry.clone()),
                claims::Turn::Wait(woken) => {
                    let _waiting = self.foreground.enter();
                    woken.await;
                    continue;
                }
                claims::Turn::Fetch(claim) => claim,
            };
            // The rest of its package (or directory) comes alongside, in batches of its own:
            // the reader waits for its own batch only, and a reader of a sibling for that
            // sibling's.
            let siblings = ahead::alongside(partial, id, &claim.ids);
            self.in_background(&entry, Background::Ahead(siblings));
            let waiting = self.foreground.enter();
            let current = self.fetch_batch(&entry, partial, claim.ids.clone()).await?;
            drop(waiting);
            let batch = claim.ids.clone();
            drop(claim);
            self.count_read_ahead(partial, &batch[1..]);
            // Only now what follows in the NAR or the fill, which then asks again for none of
            // the batch's boundary frames (kept spare).
            if current && partial.fill_due() {
                self.in_background(&entry, Background::Fill { from: id });
            } else if current {
                let after = ahead::neighbours(partial, id, &batch);
                self.in_background(&entry, Background::Ahead(vec![after]));
            }
            if current {
                if partial.has(id) {
                    return Ok(entry.clone());
                }
                return Err(self.file_failed(&entry, id, Vec::new()));
            }
            evictions += 1;
            if evictions == 2 {
                let why = "evicted twice while its file was fetched";
                let failure = Failure { upstream: None, cause: Cause::msg(why) };
                return Err(self.file_failed(&entry, id, vec![failure]));
            }
        }
    }

    /// Fetches `work` of `entry` in the background, `BACKGROUND_BATCHES_IN_FLIGHT` batches at
    /// a time. A later reader of a file in a batch in flight waits for that batch rather than
    /// asking again; the reader who started it does not wait at all.
    fn in_background(self: &Arc<Self>, entry: &Arc<Entry>, work: Background) {
        if matches!(&work, Background::Ahead(batches) if batches.iter().all(Vec::is_empty)) {
            return;
        }
        let Some(partial) = entry.partial() else { return };
        let fill = matches!(work, Background::Fill { .. });
        if fill && !partial.start_filling() {
            return;
        }
        let (this, entry) = (self.clone(), entry.clone());
        drop(tokio::spawn(async move {
            let Some(partial) = entry.partial() else { return };
            let batches: Box<dyn Iterator<Item = Vec<NodeId>> + Send + '_> = match work {
                Background::Ahead(batches) => Box::new(batches.into_iter()),
                Background::Fill { from } => {
                    let mut order = ahead::FillOrder::new(partial, from);
                    Box::new(std::iter::from_fn(move || order.next_batch()))
                }
            };
            let batches = futures::stream::iter(batches)
                .map(|ids| {
                    let (this, entry) = (&this, &entry);
                    async move {
                        if fill {
                            this.foreground.idle().await;
                        }
                        this.fetch_ahead(entry, partial, &ids).await
                    }
                })
                .buffer_unordered(BACKGROUND_BATCHES_IN_FLIGHT);
            futures::pin_mut!(batches);
            while let Some(stored) = batches.next().await {
                match stored {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(err) => {
                        debug!(store_path = %entry.store_path, error = %err, fill,
                               "background fetch stopped");
                        if fill {
                            // A later read may start it again.
                            partial.stop_filling();
                        }
                        return;
                    }
                }
            }
        }));
    }

    /// Queues the warm list of `entry` (a partial entry just published): the files readers
    /// opened in a learned run, so that a reader finds them present or on their way. The
    /// batches of every entry are fetched lowest rank first (`warm_queue`), at most
    /// `WARM_BATCHES_IN_FLIGHT` at once.
    pub(super) fn fetch_warm(self: &Arc<Self>, entry: &Arc<Entry>) {
        let Some(partial) = entry.partial() else { return };
        let batches = ahead::warm_batches(partial);
        if batches.is_empty() {
            return;
        }
        debug!(store_path = %entry.store_path, batches = batches.len(), "queueing the warm list");
        let batches = batches.into_iter().map(|(rank, ids)| (rank, (Arc::downgrade(entry), ids)));
        for _ in 0..self.warm.push(batches, WARM_BATCHES_IN_FLIGHT) {
            let this = self.clone();
            drop(tokio::spawn(async move { this.warm_worker().await }));
        }
        // Workers waiting for readers look again: these batches may be released already.
        self.warm_progress.notify_waiters();
    }

    /// Notes that a reader opened file `id` of `entry`: when it is in the warm list, the
    /// batches within the window of its rank are released.
    pub fn opened(&self, entry: &Entry, id: NodeId) {
        let Some(rank) = entry.partial().and_then(|p| p.warm_rank(id)) else { return };
        if self.warm.read(rank) {
            self.warm_progress.notify_waiters();
        }
    }

    /// Fetches queued warm-list batches until none is left, each once readers come within the
    /// window of it, or until the cache is closed. A batch of an entry evicted meanwhile, or
    /// whose fetch failed, is dropped: its files come when read.
    async fn warm_worker(self: Arc<Self>) {
        loop {
            if self.is_closed() {
                return;
            }
            let progressed = self.warm_progress.notified();
            futures::pin_mut!(progressed);
            progressed.as_mut().enable();
            let (entry, ids) = match self.warm.next() {
                Turn::Fetch(batch) => batch,
                Turn::Wait => {
                    progressed.await;
                    continue;
                }
                Turn::Stop => return,
            };
            let Some(entry) = entry.upgrade() else { continue };
            let entry = &entry;
            let Some(partial) = entry.partial() else { continue };
            if !self.is_current(entry) {
                continue;
            }
            if let Err(err) = self.fetch_ahead(entry, partial, &ids).await {
                debug!(store_path = %entry.store_path, error = %err, "warm-list batch not fetched");
            }
        }
    }

    /// Asks `up` for the NAR-file bytes of frames `run` of `entry`, counted: the run, the offset
    /// in the NAR file its bytes start at, and the bytes, or the failure (logged, throttled).
    pub(super) async fn fetch_run(
        &self,
        up: &dyn Upstream,
        entry: &Entry,
        index: &FileIndex,
        run: Range<usize>,
    ) -> (Range<usize>, u64, Result<Vec<u8>, Failure>) {
        let first = index.frames.get(run.start).map_or(0, |f| f.file_offset);
        let last = index.frames.get(run.end - 1).map_or(0, |f| f.file_range().end);
        CacheStats::bump(&self.stats.range_requests);
        match up.range(entry.narinfo.url.as_str(), first..last).await {
            Ok(bytes) => {
                CacheStats::add(&self.stats.range_bytes, bytes.len() as u64);
                CacheStats::add(&self.stats.bytes_downloaded, bytes.len() as u64);
                (run, first, Ok(bytes))
            }
            Err(err) => {
                warn_throttled!(self.failure_log, store_path = %entry.store_path,
                                upstream = up.url(), error = %err, "range request failed");
                (run, first, Err(Failure::of(up.url(), err)))
            }
        }
    }

    /// Counts a frame from `up` whose bytes do not match the index.
    pub(super) fn frame_mismatch(&self, up: &dyn Upstream) {
        CacheStats::bump(&self.stats.frame_failures);
        CacheStats::bump(&self.stats.verify_failures);
        up.counters().failed();
    }

    /// Fetches the files of `ids` that are missing and claimed by no other batch, ahead of any
    /// reader, and counts those stored: one background batch. False when the entry was evicted
    /// meanwhile.
    async fn fetch_ahead(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        partial: &Partial,
        ids: &[NodeId],
    ) -> Result<bool, CacheError> {
        let (claim, _) = partial.claims.claim_free(ids, |f| partial.has(f));
        let stored = self.fetch_batch(entry, partial, claim.ids.clone()).await;
        self.count_read_ahead(partial, &claim.ids);
        stored
    }

    /// Counts those of `ids`, fetched ahead of any reader, that are present now.
    fn count_read_ahead(&self, partial: &Partial, ids: &[NodeId]) {
        let stored = ids.iter().filter(|id| partial.has(**id)).count();
        CacheStats::add(&self.stats.files_read_ahead, stored as u64);
    }

    /// Whether `entry` is the one cached for its path now.
    fn is_current(&self, entry: &Arc<Entry>) -> bool {
        let hash = entry.store_path.hash_part();
        lock(&self.catalog).peek(&hash).is_some_and(|e| Arc::ptr_eq(e, entry))
    }

    /// Fetches every file of partial entry `entry` that is not present (`storefs prefetch`).
    pub async fn complete(self: &Arc<Self>, entry: &Arc<Entry>) -> Result<(), CacheError> {
        let Some(partial) = entry.partial() else { return Ok(()) };
        let missing: Vec<NodeId> = (0..partial.index.nodes.len() as NodeId)
            .filter(|id| partial.index.file(*id).is_some() && !partial.has(*id))
            .collect();
        let (claim, mut wait) = partial.claims.claim_free(&missing, |id| partial.has(id));
        let mut batch = Vec::new();
        let mut bytes = 0;
        let mut current = true;
        for &id in &claim.ids {
            bytes += ahead::frame_bytes(&partial.index, &[id]);
            batch.push(id);
            if bytes >= COMPLETE_BATCH_BYTES {
                current =
                    current && self.fetch_batch(entry, partial, std::mem::take(&mut batch)).await?;
                bytes = 0;
            }
        }
        current = current && self.fetch_batch(entry, partial, batch).await?;
        drop(claim);
        // Files other readers were fetching: their batches end, stored or not.
        while let Some(woken) = wait {
            woken.await;
            wait = partial.claims.wait_for_any(&missing);
        }
        match partial.progress() {
            (files, present) if current && files == present => Ok(()),
            (files, present) => {
                let why = format!("{present} of {files} files verified and stored");
                let failure = Failure { upstream: None, cause: Cause::msg(why) };
                Err(self.file_failed(entry, 0, vec![failure]))
            }
        }
    }

    /// Fetches and stores the files `wanted` (of one entry), asking the cache that served the
    /// entry first and then the others, for whatever is still missing. Files whose frames do not
    /// verify anywhere stay missing; only a local failure is an error here. False when the
    /// entry was evicted meanwhile (nothing more is stored into it).
    async fn fetch_batch(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        partial: &Partial,
        wanted: Vec<NodeId>,
    ) -> Result<bool, CacheError> {
        if wanted.is_empty() {
            return Ok(true);
        }
        if self.layout.read_only() {
            let why = "cache directory is read-only: files of partial entries are not fetched";
            return Err(self.file_failed(
                entry,
                wanted[0],
                vec![Failure { upstream: None, cause: Cause::msg(why) }],
            ));
        }
        let index = &partial.index;
        let streamed =
            |id: &NodeId| index.file(*id).is_some_and(|f| f.size > self.config.stream_file_bytes);
        let (large, mut missing): (Vec<NodeId>, Vec<NodeId>) =
            wanted.into_iter().partition(streamed);
        let mut failures = Vec::new();
        for id in large {
            for up in self.upstreams_for(entry).await {
                match self.stream_file(up.as_ref(), entry, partial, id).await? {
                    Streamed::Stored(true) => break,
                    Streamed::Stored(false) => return Ok(false),
                    Streamed::Failed(failure) => failures.push(failure),
                }
            }
        }
        for up in self.upstreams_for(entry).await {
            if missing.is_empty() {
                break;
            }
            let (verified, failed, bycatch) =
                self.fetch_from(up.as_ref(), entry, partial, &missing).await;
            if let Some(failure) = failed {
                failures.push(failure);
            }
            self.store_bycatch(entry, bycatch);
            if !verified.is_empty() {
                missing.retain(|id| !verified.iter().any(|f| f.id == *id));
                if !self.store_files(entry, verified).await? {
                    return Ok(false);
                }
            }
            if missing.is_empty() {
                break;
            }
        }
        if !missing.is_empty() {
            debug!(store_path = %entry.store_path, missing = missing.len(), failures = %Failures(failures),
                   "files not fetched");
        }
        Ok(true)
    }

    /// Stores a batch's bycatch in a task of its own, so that the batch's reader does not wait
    /// for it; its claim is let go once they are stored.
    fn store_bycatch(self: &Arc<Self>, entry: &Arc<Entry>, bycatch: Bycatch) {
        let Bycatch { files, claim } = bycatch;
        if files.is_empty() {
            return;
        }
        let (this, entry) = (self.clone(), entry.clone());
        drop(tokio::spawn(async move {
            match this.store_files(&entry, files).await {
                Ok(_) => {
                    if let Some(partial) = entry.partial() {
                        this.count_read_ahead(partial, &claim.ids);
                    }
                }
                Err(err) => debug!(store_path = %entry.store_path, error = %err,
                                   "files fetched with a batch not stored"),
            }
            drop(claim);
        }));
    }

    /// The substituters to ask for an entry's frames: the one that served it first, then the
    /// others (every frame is checked against the index, whoever sends it).
    async fn upstreams_for(&self, entry: &Entry) -> Vec<Arc<dyn Upstream>> {
        let Ok(ordered) = self.ordered_upstreams(&entry.store_path).await else {
            return self.upstreams.iter().cloned().collect();
        };
        let first = self.narinfos.get(&entry.store_path.hash_part()).map(|(from, _)| from);
        let mut list: Vec<_> = ordered.iter().cloned().collect();
        list.sort_by_key(|u| Some(u.url()) != first.as_deref());
        list
    }

    /// The files of `ids` whose bytes `up` sent and that verified; the batch's bycatch (the
    /// missing files that lay wholly in the same frames, `ahead::bycatch`, verified and
    /// claimed); and the failure if any.
    async fn fetch_from(
        &self,
        up: &dyn Upstream,
        entry: &Entry,
        partial: &Partial,
        ids: &[NodeId],
    ) -> (Vec<VerifiedFile>, Option<Failure>, Bycatch) {
        let index = &partial.index;
        let mut decoded: HashMap<usize, Arc<Vec<u8>>> = HashMap::new();
        // Frames another batch is fetching come from it; of the others, those a recent batch
        // kept spare are at hand (looked for once taken: a flight keeps its spares before it
        // ends), and the rest are asked for now and handed on to any batch that comes to need
        // them meanwhile.
        let (mine, theirs) = partial.flights.take(ahead::frames_of_files(index, ids));
        let mut wanted = BTreeSet::new();
        for flight in &mine {
            match partial.spare_frame(flight.frame()) {
                Some(bytes) => {
                    flight.land(bytes.clone());
                    decoded.insert(flight.frame(), bytes);
                }
                None => drop(wanted.insert(flight.frame())),
            }
        }
        let (got, mut failure) = self.fetch_frames(up, entry, partial, &wanted).await;
        for flight in &mine {
            if let Some(bytes) = got.get(&flight.frame()) {
                flight.land(bytes.clone());
            }
        }
        drop(mine);
        decoded.extend(got);
        let mut missed = BTreeSet::new();
        for awaited in theirs {
            let frame = awaited.frame;
            match awaited.landed().await {
                Some(bytes) => drop(decoded.insert(frame, bytes)),
                None => drop(missed.insert(frame)),
            }
        }
        if !missed.is_empty() {
            let (got, failed) = self.fetch_frames(up, entry, partial, &missed).await;
            decoded.extend(got);
            failure = failed.or(failure);
        }
        let caught = ahead::bycatch(partial, ids, |i| decoded.contains_key(&i));
        let (claim, _) = partial.claims.claim_free(&caught, |f| partial.has(f));
        let mut check = |ids: &[NodeId]| {
            let mut verified = Vec::new();
            for id in ids {
                let Some(file) = index.file(*id) else { continue };
                let parts: Option<Vec<&[u8]>> =
                    index.frames_of(file).map(|i| decoded.get(&i).map(|d| d.as_slice())).collect();
                let Some(parts) = parts else { continue };
                match index.file_contents(file, &parts) {
                    Ok(bytes) => {
                        verified.push(VerifiedFile { id: *id, bytes, executable: file.executable })
                    }
                    Err(err) => {
                        warn!(store_path = %entry.store_path, upstream = up.url(), error = %err,
                              "file does not match the index");
                        failure = Some(Failure::of(up.url(), err));
                    }
                }
            }
            verified
        };
        let verified = check(ids);
        let bycatch = Bycatch { files: check(&claim.ids), claim };
        (verified, failure, bycatch)
    }

    /// Asks `up` for `frames` of `entry`, neighbours coalesced into ranges, several in flight,
    /// and returns those whose bytes match the index, decoded (the first and last of each range
    /// kept spare for a later batch), and the failure if any.
    async fn fetch_frames(
        &self,
        up: &dyn Upstream,
        entry: &Entry,
        partial: &Partial,
        frames: &BTreeSet<usize>,
    ) -> (HashMap<usize, Arc<Vec<u8>>>, Option<Failure>) {
        let index = &partial.index;
        let fetched: Vec<_> = futures::stream::iter(coalesce(index, frames))
            .map(|run| self.fetch_run(up, entry, index, run))
            .buffer_unordered(RANGES_IN_FLIGHT)
            .collect()
            .await;
        let mut decoded = HashMap::new();
        let mut failure = None;
        for (run, first, bytes) in fetched {
            let bytes = match bytes {
                Ok(bytes) => bytes,
                Err(failed) => {
                    failure = Some(failed);
                    continue;
                }
            };
            let boundaries = [run.start, run.end - 1];
            for i in run {
                match frame_in(index, i, first, &bytes).map(|p| index.decode_frame(i, p)) {
                    Some(Ok(nar)) => {
                        let nar = Arc::new(nar);
                        if boundaries.contains(&i) {
                            partial.keep_spare(i, nar.clone());
                        }
                        decoded.insert(i, nar);
                    }
                    Some(Err(err)) => {
                        self.frame_mismatch(up);
                        warn!(store_path = %entry.store_path, upstream = up.url(), error = %err,
                              "frame does not match the index; its files are not served from here");
                        failure = Some(Failure::of(up.url(), err));
                    }
                    None => {}
                }
            }
        }
        (decoded, failure)
    }

    /// Stores verified files in the entry's directory and counts their bytes; false when the
    /// entry was evicted meanwhile (then nothing is recorded in it).
    async fn store_files(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        files: Vec<VerifiedFile>,
    ) -> Result<bool, CacheError> {
        let n = files.len() as u64;
        let first = files.first().map_or(0, |f| f.id);
        self.store_staged(entry, n, first, move |partial, dir| partial.stage(dir, files)).await
    }

    /// Stores in `entry` the `n` files (the first `first`) that `stage` writes into its
    /// directory (blocking, on the blocking pool), counts them, and makes them present and,
    /// in the background, durable; false when the entry was evicted meanwhile.
    pub(super) async fn store_staged(
        self: &Arc<Self>,
        entry: &Arc<Entry>,
        n: u64,
        first: NodeId,
        stage: impl FnOnce(&Partial, &Path) -> std::io::Result<Staged> + Send + 'static,
    ) -> Result<bool, CacheError> {
        let (this, held) = (self.clone(), entry.clone());
        let stored = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let Some(partial) = held.partial() else { return Ok(false) };
            let staged = match stage(partial, &held.dir) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                staged => staged?,
            };
            // Under `moves`, the entry's directory is where it was checked to be: nothing
            // renames it into the trash while its files are renamed into it and recorded.
            let _moves = lock(&this.moves);
            if this.is_closed() || !this.is_current(&held) {
                return Ok(false);
            }
            let (bytes, records) = partial.commit(&held.dir, staged)?;
            lock(&this.catalog).grow(&held, bytes);
            drop(_moves);
            // Durable in the background: the reader does not wait for the sync.
            let persist = move || {
                if let Some(partial) = held.partial()
                    && let Err(err) = partial.persist(&held.dir, &records)
                {
                    debug!(store_path = %held.store_path, error = %err,
                           "files not recorded present (fetched again after a restart)");
                }
            };
            drop(tokio::runtime::Handle::current().spawn_blocking(persist));
            Ok(true)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        match stored {
            Ok(current) => {
                if current {
                    CacheStats::add(&self.stats.files_fetched, n);
                    // The entry grew: evict others if the quota or free space says so.
                    let (this, hash) = (self.clone(), entry.store_path.hash_part());
                    drop(tokio::task::spawn_blocking(move || this.evict_after_publish(&hash)));
                }
                Ok(current)
            }
            Err(err) => {
                if err.raw_os_error() == Some(libc::EROFS) {
                    self.layout.saw_read_only();
                }
                let failure = Failure { upstream: None, cause: Cause::new(err) };
                Err(self.file_failed(entry, first, vec![failure]))
            }
        }
    }

    /// The reader's error for file `id` of `entry`.
    pub(super) fn file_failed(
        &self,
        entry: &Entry,
        id: NodeId,
        mut failures: Vec<Failure>,
    ) -> CacheError {
        if failures.is_empty() {
            let why = format!("file {id}: no cache sent bytes that match the index");
            failures.push(Failure { upstream: None, cause: Cause::msg(why) });
        }
        CacheError::Unavailable { path: entry.store_path.to_string(), failures: Failures(failures) }
    }
}

/// The bytes of frame `i` within `bytes`, the NAR file's bytes from offset `first` on; None
/// when they are not all there.
pub(super) fn frame_in<'a>(
    index: &FileIndex,
    i: usize,
    first: u64,
    bytes: &'a [u8],
) -> Option<&'a [u8]> {
    let frame = index.frames.get(i)?;
    let from = usize::try_from(frame.file_offset.checked_sub(first)?).ok()?;
    bytes.get(from..from.checked_add(usize::try_from(frame.file_len).ok()?)?)
}

/// `frames` as runs of neighbouring frames, each at most `MAX_RANGE_BYTES` (or one frame).
pub(super) fn coalesce(index: &FileIndex, frames: &BTreeSet<usize>) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    let mut bytes = 0;
    for &i in frames {
        let len = index.frames.get(i).map_or(0, |f| f.file_len);
        match runs.last_mut() {
            Some(run) if run.end == i && bytes + len <= MAX_RANGE_BYTES => {
                run.end = i + 1;
                bytes += len;
            }
            _ => {
                runs.push(i..i + 1);
                bytes = len;
            }
        }
    }
    runs
}
