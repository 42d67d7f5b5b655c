//! Partial cache entries: a store path whose tree came from a verified file index, and whose
//! regular files arrive one by one, each checked against the index's SHA-256 before it is kept.
//!
//! On disk, an entry directory of a partial entry holds (docs/CACHE_FORMAT.md):
//! - `manifest`: the tree from the index (files without block checksums: none is present yet);
//! - `index`: the signed index as fetched, verified again when the entry is loaded;
//! - `present`: an append-only log, one record per file that is present (below);
//! - `pack`: the present files of at most `PACK_MAX_FILE_BYTES`, each batch's written at offsets
//!   reserved for it (one file created per entry, not one per small file);
//! - `f<id>`: each present larger regular file.
//!
//! A record is `u32 node | u32 n | [u64 offset in pack] | n × u64 block checksum | u64 XXH3-64
//! of the record before it`, little-endian; the offset is there when the top bit of `n` is set
//! (a packed file). A large file is written under a temporary name, renamed to `f<id>` and
//! served; a small one is written into `pack` and served; in the background the filesystem is
//! synced (`syncfs`), and only then are their records appended and synced: a crash leaves only
//! verified, durable files recorded (bytes of `pack` past them are never read). A torn or
//! damaged record ends the log when it is loaded (what follows is ignored, those files are
//! fetched again). Something other than a plain file in `pack`'s place is removed at load.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::claims::Claims;
use super::flights::Flights;
use super::layout::PACK_FILE;
use super::manifest::{BlockSums, CHECK_BLOCK_BYTES, Manifest, Node, block_sum};
use super::unpack::{PACK_MAX_FILE_BYTES, block_rounded, file_name};
use crate::nix::file_index::{FileIndex, NodeKind};
use crate::nix::nar::NodeId;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, lock};

/// The signed index kept in a partial entry's directory.
pub const INDEX_FILE: &str = "index";
/// The log of the files present in a partial entry.
pub const PRESENT_FILE: &str = "present";
/// Most block checksums one record may hold (a file of at most 2^40 bytes).
const MAX_RECORD_SUMS: u32 = 1 << 24;
/// Set in a record's count for a file in `pack` (its offset follows the count).
const PACKED: u32 = 1 << 31;

/// What a partial entry knows beyond its manifest: the index and which files are present.
#[derive(Debug)]
pub struct Partial {
    /// The verified index.
    pub index: FileIndex,
    /// Where each present file is (its offset in `pack`, or a file of its own) and its block
    /// checksums.
    present: Mutex<HashMap<NodeId, (Option<u64>, BlockSums)>>,
    /// The bytes of `pack` reserved by batches so far, and its disk bytes counted so far.
    pack: Mutex<PackSpace>,
    /// Bytes the present files occupy on disk, beyond the manifest's `disk_bytes`.
    added_bytes: AtomicU64,
    /// The files batches are fetching now (single flight per file, batches in parallel).
    pub(super) claims: Arc<Claims>,
    /// The frames batches are fetching now, one fetch each.
    pub(super) flights: Flights,
    /// Sum of the sizes of the present files.
    present_file_bytes: AtomicU64,
    /// Sum of the sizes of all its regular files.
    file_bytes: u64,
    /// One append to the `present` log at a time.
    log: Mutex<()>,
    /// Whether a background fill of the missing files is running or ran to its end.
    filling: AtomicBool,
    /// The boundary frames of recent batches, decoded and verified, newest last: a file that
    /// starts or ends in one is often fetched next, and needs it again.
    spare_frames: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
    /// The rank of each file of the index's warm list.
    warm_ranks: HashMap<NodeId, u64>,
}

/// A partial entry of which this share of the file bytes is present (one in 4) gets the rest
/// in the background: a reader who read that much of a path reads on.
const FILL_FROM_SHARE: u64 = 4;

/// Decoded boundary frames kept per entry (each at most a frame's decoded size, 256 KiB as
/// `storefs index` cuts them).
const SPARE_FRAMES: usize = 8;

/// How much of a partial entry's `pack` is taken.
#[derive(Debug, Default)]
struct PackSpace {
    /// Its length once every batch that reserved space wrote it (new bytes go after).
    reserved: u64,
    /// Its allocated bytes as last counted in the entry's disk bytes.
    counted: u64,
}

/// A regular file fetched and verified, ready to be stored.
#[derive(Debug)]
pub struct VerifiedFile {
    /// Its node.
    pub id: NodeId,
    /// Its contents, which hashed to the index's digest.
    pub bytes: Vec<u8>,
    /// Mode 0555 rather than 0444.
    pub executable: bool,
}

impl Partial {
    /// A partial entry with no file present yet.
    pub fn new(index: FileIndex) -> Self {
        let file_bytes = index
            .nodes
            .iter()
            .map(|n| match &n.kind {
                NodeKind::File(f) => f.size,
                _ => 0,
            })
            .sum();
        let warm_ranks = index.warm.iter().map(|w| (w.node, w.rank)).collect();
        Self {
            file_bytes,
            warm_ranks,
            index,
            present: Mutex::new(HashMap::new()),
            pack: Mutex::new(PackSpace::default()),
            added_bytes: AtomicU64::new(0),
            claims: Arc::default(),
            flights: Flights::default(),
            present_file_bytes: AtomicU64::new(0),
            log: Mutex::new(()),
            filling: AtomicBool::new(false),
            spare_frames: Mutex::new(VecDeque::new()),
        }
    }

    /// The rank of file `id` in the index's warm list, if it is in it.
    pub fn warm_rank(&self, id: NodeId) -> Option<u64> {
        self.warm_ranks.get(&id).copied()
    }

    /// Reloads the files recorded present in `dir` (the log up to its first bad record, each
    /// with its cache file there at its size).
    pub fn load(index: FileIndex, dir: &Path) -> io::Result<Self> {
        let partial = Self::new(index);
        let log = match std::fs::read(dir.join(PRESENT_FILE)) {
            Ok(log) => log,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let (mut added, mut file_bytes) = (0, 0);
        // New bytes go after whatever the pack holds, recorded or not.
        let pack = dir.join(PACK_FILE);
        let pack_len = match std::fs::symlink_metadata(&pack) {
            Ok(meta) if meta.is_file() => {
                added += meta.blocks() * 512;
                *lock(&partial.pack) =
                    PackSpace { reserved: meta.len(), counted: meta.blocks() * 512 };
                meta.len()
            }
            // Damage (a symlink, directory or FIFO put there): never followed, and gone, so
            // that small files can be stored again; the files recorded in it are fetched again.
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&pack).map(|()| 0)?,
            Ok(_) => std::fs::remove_file(&pack).map(|()| 0)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut present = lock(&partial.present);
        for (id, packed, sums) in records(&log) {
            let Some(file) = partial.index.file(id) else { break };
            if sums.len() as u64 != file.size.div_ceil(CHECK_BLOCK_BYTES) {
                break;
            }
            let on_disk = match packed {
                Some(at) => {
                    at.checked_add(file.size).is_some_and(|end| end <= pack_len).then_some(0)
                }
                None => match std::fs::symlink_metadata(dir.join(file_name(id))) {
                    Ok(meta) if meta.is_file() && meta.len() == file.size => {
                        Some(meta.blocks() * 512)
                    }
                    _ => None,
                },
            };
            let Some(blocks) = on_disk else { continue };
            if present.insert(id, (packed, sums)).is_none() {
                added += blocks;
                file_bytes += file.size;
            }
        }
        drop(present);
        partial.added_bytes.store(added, Ordering::Relaxed);
        partial.present_file_bytes.store(file_bytes, Ordering::Relaxed);
        Ok(partial)
    }

    /// Where file `id` is, if it is present (its offset in `pack`, or None for a file of its
    /// own), and its block checksums.
    pub fn stored(&self, id: NodeId) -> Option<(Option<u64>, BlockSums)> {
        lock(&self.present).get(&id).cloned()
    }

    /// Whether file `id` is present.
    pub fn has(&self, id: NodeId) -> bool {
        lock(&self.present).contains_key(&id)
    }

    /// How many regular files the index has, and how many of them are present.
    pub fn progress(&self) -> (usize, usize) {
        let files = self.index.nodes.iter().filter(|n| matches!(n.kind, NodeKind::File(_))).count();
        (files, lock(&self.present).len())
    }

    /// Sum of the sizes of the present files.
    pub fn present_file_bytes(&self) -> u64 {
        self.present_file_bytes.load(Ordering::Relaxed)
    }

    /// Whether at least `1 / FILL_FROM_SHARE` of its file bytes are present: then the rest
    /// is worth fetching in the background.
    pub fn fill_due(&self) -> bool {
        self.present_file_bytes().saturating_mul(FILL_FROM_SHARE) >= self.file_bytes
    }

    /// Frame `frame` decoded, if a recent batch kept it.
    pub(super) fn spare_frame(&self, frame: usize) -> Option<Arc<Vec<u8>>> {
        lock(&self.spare_frames).iter().find(|(i, _)| *i == frame).map(|(_, bytes)| bytes.clone())
    }

    /// Keeps decoded (and verified) frame `frame` for a later batch, dropping the oldest beyond
    /// `SPARE_FRAMES`.
    pub(super) fn keep_spare(&self, frame: usize, bytes: Arc<Vec<u8>>) {
        let mut spare = lock(&self.spare_frames);
        spare.retain(|(i, _)| *i != frame);
        spare.push_back((frame, bytes));
        while spare.len() > SPARE_FRAMES {
            spare.pop_front();
        }
    }

    /// True for the first caller only: that one starts the entry's background fill.
    pub(super) fn start_filling(&self) -> bool {
        !self.filling.swap(true, Ordering::Relaxed)
    }

    /// The fill stopped short (a local error): the next read past the threshold starts another.
    pub(super) fn stop_filling(&self) {
        self.filling.store(false, Ordering::Relaxed);
    }

    /// Bytes on disk of the present files.
    pub fn added_bytes(&self) -> u64 {
        self.added_bytes.load(Ordering::Relaxed)
    }

    /// Counts `bytes` more on disk; only under the catalog's lock, while the entry is in it, so
    /// the catalog's sum and the entry's own figure never disagree.
    pub(super) fn count_added(&self, bytes: u64) {
        self.added_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Writes `files` into `dir`: the small ones into `pack`, at offsets reserved for this
    /// batch alone, the others under temporary names. The first half of storing them, done
    /// without any lock held across I/O. Not synced: nothing records them before `persist`
    /// has synced them. Blocking.
    pub fn stage(&self, dir: &Path, files: Vec<VerifiedFile>) -> io::Result<Staged> {
        let mut staged = Staged { files: Vec::with_capacity(files.len()), bytes: 0 };
        let (small, large): (Vec<_>, Vec<_>) =
            files.into_iter().partition(|f| f.bytes.len() as u64 <= PACK_MAX_FILE_BYTES);
        if !small.is_empty() {
            self.stage_packed(dir, small, &mut staged)?;
        }
        for file in large {
            let mut out = create_temporary(dir, file.id, file.executable)?;
            out.write_all(&file.bytes)?;
            staged.bytes += out.metadata()?.blocks() * 512;
            staged.files.push((file.id, None, block_sums(&file.bytes)));
        }
        Ok(staged)
    }

    /// Writes the small `files` back to back into `pack`, at a range reserved for them.
    fn stage_packed(
        &self,
        dir: &Path,
        files: Vec<VerifiedFile>,
        staged: &mut Staged,
    ) -> io::Result<()> {
        let total: u64 = files.iter().map(|f| f.bytes.len() as u64).sum();
        let start = {
            let mut space = lock(&self.pack);
            let start = space.reserved;
            space.reserved += total;
            start
        };
        let mut bytes = Vec::with_capacity(total as usize);
        for file in &files {
            staged.files.push((file.id, Some(start + bytes.len() as u64), block_sums(&file.bytes)));
            bytes.extend_from_slice(&file.bytes);
        }
        let pack = OpenOptions::new()
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(PACK_FILE))?;
        pack.write_all_at(&bytes, start)?;
        let allocated = pack.metadata()?.blocks() * 512;
        let mut space = lock(&self.pack);
        if allocated > space.counted {
            staged.bytes += allocated - space.counted;
            space.counted = allocated;
        }
        Ok(())
    }

    /// The second half: renames the staged files into place and marks them present in memory
    /// (readers may read them now). The caller holds the cache's `moves` lock and has checked
    /// that `dir` is still this entry's. Returns the bytes they occupy on disk, for the caller to
    /// count (`count_added`) under the catalog's lock, and their log records, for `persist`.
    /// Blocking.
    pub fn commit(&self, dir: &Path, staged: Staged) -> io::Result<(u64, Vec<u8>)> {
        for (id, _, _) in staged.files.iter().filter(|(_, packed, _)| packed.is_none()) {
            std::fs::rename(dir.join(format!("{}.tmp", file_name(*id))), dir.join(file_name(*id)))?;
        }
        let mut log = Vec::new();
        let mut present = lock(&self.present);
        for (id, packed, sums) in staged.files {
            log.extend_from_slice(&record(id, packed, &sums));
            if present.insert(id, (packed, sums)).is_none() {
                let size = self.index.file(id).map_or(0, |f| f.size);
                self.present_file_bytes.fetch_add(size, Ordering::Relaxed);
            }
        }
        Ok((staged.bytes, log))
    }

    /// Makes committed files present across a crash: one `syncfs` of the cache filesystem
    /// (their bytes and names), then their `records` appended to the log and synced. Until
    /// then a crash leaves them unrecorded, so they are fetched again. Run in the background,
    /// after the reader got its bytes. Blocking.
    pub fn persist(&self, dir: &Path, records: &[u8]) -> io::Result<()> {
        let dir_file = File::open(dir)?;
        // SAFETY: `dir_file` is an open descriptor for the whole call.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir_file)) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _log = lock(&self.log);
        let mut out = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dir.join(PRESENT_FILE))?;
        out.write_all(records)?;
        out.sync_data()
    }
}

/// Creates the temporary file that file `id` is written to before it is renamed to `f<id>`.
fn create_temporary(dir: &Path, id: NodeId, executable: bool) -> io::Result<File> {
    let tmp = dir.join(format!("{}.tmp", file_name(id)));
    let mode = if executable { 0o555 } else { 0o444 };
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
    };
    // A leftover of a batch a crash cut short is removed only when met: an unlink beforehand
    // would take the directory's lock for every file, against every reader.
    match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(&tmp)?;
            create()
        }
        created => created,
    }
}

/// A large file written under its temporary name as its checked pieces arrive, with its block
/// checksums computed on the way; [`FileWriter::finish`] stages it for `commit`. The caller
/// commits it only once the whole file matched its digest.
#[derive(Debug)]
pub struct FileWriter {
    id: NodeId,
    out: File,
    sums: Vec<u64>,
    /// The bytes of the current, unfinished block.
    carry: Vec<u8>,
}

impl FileWriter {
    /// Starts file `id` (mode 0555 if `executable`) in the entry directory `dir`. Blocking.
    pub fn start(dir: &Path, id: NodeId, executable: bool) -> io::Result<Self> {
        let out = create_temporary(dir, id, executable)?;
        Ok(Self { id, out, sums: Vec::new(), carry: Vec::with_capacity(CHECK_BLOCK_BYTES as _) })
    }

    /// Appends `piece`. Blocking.
    pub fn write(&mut self, mut piece: &[u8]) -> io::Result<()> {
        self.out.write_all(piece)?;
        let block = CHECK_BLOCK_BYTES as usize;
        if !self.carry.is_empty() {
            let take = (block - self.carry.len()).min(piece.len());
            self.carry.extend_from_slice(&piece[..take]);
            piece = &piece[take..];
            if self.carry.len() == block {
                self.sums.push(block_sum(&self.carry));
                self.carry.clear();
            }
        }
        while piece.len() >= block {
            self.sums.push(block_sum(&piece[..block]));
            piece = &piece[block..];
        }
        self.carry.extend_from_slice(piece);
        Ok(())
    }

    /// The file, staged (its last block summed). Blocking.
    pub fn finish(mut self) -> io::Result<Staged> {
        if !self.carry.is_empty() {
            self.sums.push(block_sum(&self.carry));
        }
        let bytes = self.out.metadata()?.blocks() * 512;
        Ok(Staged { files: vec![(self.id, None, self.sums.into())], bytes })
    }
}

/// Files written (into `pack` or under temporary names), not yet present: each with its offset
/// in `pack` (None: a file of its own) and its block checksums.
#[derive(Debug)]
pub struct Staged {
    files: Vec<(NodeId, Option<u64>, BlockSums)>,
    bytes: u64,
}

/// The block checksums of a file's `bytes`.
fn block_sums(bytes: &[u8]) -> BlockSums {
    if bytes.is_empty() {
        return Vec::new().into();
    }
    bytes.chunks(CHECK_BLOCK_BYTES as usize).map(block_sum).collect()
}

/// The manifest of a partial entry: the index's tree, no file present, and the bytes the entry
/// directory, its manifest and its index take (`index_len`).
pub fn manifest_of(index: &FileIndex, narinfo: String, index_len: u64) -> Manifest {
    let mut nodes: Vec<Node> = index
        .nodes
        .iter()
        .map(|n| {
            let parent = n.parent.as_ref().map_or(0, |(p, _)| *p);
            match &n.kind {
                NodeKind::Directory => Node::Directory { parent, entries: Vec::new() },
                NodeKind::File(f) => Node::File {
                    parent,
                    executable: f.executable,
                    size: f.size,
                    packed: None,
                    sums: None,
                },
                NodeKind::Symlink { target } => Node::Symlink { parent, target: target.clone() },
            }
        })
        .collect();
    // NAR order is pre-order with entries sorted by name, so entries come out sorted.
    for (id, n) in index.nodes.iter().enumerate() {
        if let Some((parent, name)) = &n.parent
            && let Some(Node::Directory { entries, .. }) = nodes.get_mut(*parent as usize)
        {
            entries.push((name.clone(), id as NodeId));
        }
    }
    let mut manifest = Manifest { narinfo, disk_bytes: 0, nodes };
    let own = block_rounded(manifest.encode().len() as u64) + block_rounded(index_len);
    manifest.disk_bytes = own + super::unpack::BLOCK_BYTES;
    manifest
}

/// One log record for file `id` with `sums`.
fn record(id: NodeId, packed: Option<u64>, sums: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + sums.len() * 8);
    out.extend_from_slice(&id.to_le_bytes());
    let flag = if packed.is_some() { PACKED } else { 0 };
    out.extend_from_slice(&(sums.len() as u32 | flag).to_le_bytes());
    if let Some(at) = packed {
        out.extend_from_slice(&at.to_le_bytes());
    }
    for sum in sums {
        out.extend_from_slice(&sum.to_le_bytes());
    }
    let check = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&check.to_le_bytes());
    out
}

/// The records of a log, up to the first one that is torn or does not match its checksum.
fn records(mut log: &[u8]) -> Vec<(NodeId, Option<u64>, BlockSums)> {
    let mut out = Vec::new();
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    while !log.is_empty() {
        let (Some(id), Some(count)) = (u32_at(log, 0), u32_at(log, 4)) else { break };
        let n = count & !PACKED;
        if n > MAX_RECORD_SUMS {
            break;
        }
        let sums_at = if count & PACKED != 0 { 16 } else { 8 };
        let body = sums_at + n as usize * 8;
        let Some(check) = u64_at(log, body) else { break };
        let Some(head) = log.get(..body) else { break };
        if xxhash_rust::xxh3::xxh3_64(head) != check {
            break;
        }
        let packed = if count & PACKED != 0 { u64_at(log, 8) } else { None };
        let sums: BlockSums =
            (0..n as usize).filter_map(|i| u64_at(log, sums_at + i * 8)).collect();
        out.push((id, packed, sums));
        log = &log[body + 8..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let mut log = record(3, None, &[1, 2, 3]);
        log.extend_from_slice(&record(7, Some(4096), &[]));
        let whole = records(&log);
        assert_eq!(whole.len(), 2);
        assert_eq!((whole[0].0, whole[0].1, &whole[0].2[..]), (3, None, &[1u64, 2, 3][..]));
        assert_eq!((whole[1].0, whole[1].1, whole[1].2.len()), (7, Some(4096), 0));
        for cut in 0..log.len() {
            let n = records(&log[..cut]).len();
            assert!(n <= 1, "a torn second record must not load (cut at {cut})");
        }
        let mut flipped = log.clone();
        flipped[5] ^= 1;
        assert!(records(&flipped).is_empty(), "a damaged first record ends the log");
    }
}
