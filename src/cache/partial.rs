//! Partial cache entries: a store path whose tree came from a verified file index, and whose
//! regular files arrive one by one, each checked against the index's SHA-256 before it is kept.
//!
//! On disk, an entry directory of a partial entry holds (docs/CACHE_FORMAT.md):
//! - `manifest`: the tree from the index (files without block checksums: none is present yet);
//! - `index`: the signed index as fetched, verified again when the entry is loaded;
//! - `present`: an append-only log, one record per file that is present (below);
//! - `f<id>`: each present regular file, whatever its size (no `pack`).
//!
//! A record is `u32 node | u32 n | n × u64 block checksum | u64 XXH3-64 of the record before
//! it`, little-endian. A file is written under a temporary name, renamed to `f<id>` and served;
//! in the background the filesystem is synced (`syncfs`), and only then is its record appended
//! and synced: a crash leaves only verified, durable files recorded. A torn or damaged record ends the log when it is loaded (what follows is ignored,
//! those files are fetched again).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::claims::Claims;
use super::manifest::{BlockSums, CHECK_BLOCK_BYTES, Manifest, Node, block_sum};
use super::unpack::{block_rounded, file_name};
use crate::nix::file_index::{FileIndex, NodeKind};
use crate::nix::nar::NodeId;
use crate::sync::{Arc, AtomicBool, AtomicU64, Mutex, Ordering, lock};

/// The signed index kept in a partial entry's directory.
pub const INDEX_FILE: &str = "index";
/// The log of the files present in a partial entry.
pub const PRESENT_FILE: &str = "present";
/// Most block checksums one record may hold (a file of at most 2^40 bytes).
const MAX_RECORD_SUMS: u32 = 1 << 24;

/// What a partial entry knows beyond its manifest: the index and which files are present.
#[derive(Debug)]
pub struct Partial {
    /// The verified index.
    pub index: FileIndex,
    /// The block checksums of each present file.
    present: Mutex<HashMap<NodeId, BlockSums>>,
    /// Bytes the present files occupy on disk, beyond the manifest's `disk_bytes`.
    added_bytes: AtomicU64,
    /// The files batches are fetching now (single flight per file, batches in parallel).
    pub(super) claims: Claims,
    /// Sum of the sizes of the present files.
    present_file_bytes: AtomicU64,
    /// Sum of the sizes of all its regular files.
    file_bytes: u64,
    /// One append to the `present` log at a time.
    log: Mutex<()>,
    /// Whether a background fill of the missing files was started (once per entry).
    filling: AtomicBool,
    /// The boundary frames of recent batches, decoded and verified, newest last: a file that
    /// starts or ends in one is often fetched next, and needs it again.
    spare_frames: Mutex<VecDeque<(usize, Arc<Vec<u8>>)>>,
}

/// A partial entry of which this share of the file bytes is present (one in 4) gets the rest
/// in the background: a reader who read that much of a path reads on.
const FILL_FROM_SHARE: u64 = 4;

/// Decoded boundary frames kept per entry (each at most a frame's decoded size, 256 KiB as
/// `storefs index` cuts them).
const SPARE_FRAMES: usize = 8;

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
        Self {
            file_bytes,
            index,
            present: Mutex::new(HashMap::new()),
            added_bytes: AtomicU64::new(0),
            claims: Claims::default(),
            present_file_bytes: AtomicU64::new(0),
            log: Mutex::new(()),
            filling: AtomicBool::new(false),
            spare_frames: Mutex::new(VecDeque::new()),
        }
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
        let mut present = lock(&partial.present);
        for (id, sums) in records(&log) {
            let Some(file) = partial.index.file(id) else { break };
            if sums.len() as u64 != file.size.div_ceil(CHECK_BLOCK_BYTES) {
                break;
            }
            match std::fs::symlink_metadata(dir.join(file_name(id))) {
                Ok(meta) if meta.is_file() && meta.len() == file.size => {
                    if present.insert(id, sums).is_none() {
                        added += meta.blocks() * 512;
                        file_bytes += file.size;
                    }
                }
                _ => continue,
            }
        }
        drop(present);
        partial.added_bytes.store(added, Ordering::Relaxed);
        partial.present_file_bytes.store(file_bytes, Ordering::Relaxed);
        Ok(partial)
    }

    /// The block checksums of file `id` if it is present.
    pub fn sums_of(&self, id: NodeId) -> Option<BlockSums> {
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

    /// Bytes on disk of the present files.
    pub fn added_bytes(&self) -> u64 {
        self.added_bytes.load(Ordering::Relaxed)
    }

    /// Counts `bytes` more on disk; only under the catalog's lock, while the entry is in it, so
    /// the catalog's sum and the entry's own figure never disagree.
    pub(super) fn count_added(&self, bytes: u64) {
        self.added_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Writes `files` into `dir` under temporary names: the first half of storing them, done
    /// without any lock. Not synced: nothing records them before `persist` has synced them.
    /// Blocking.
    pub fn stage(dir: &Path, files: Vec<VerifiedFile>) -> io::Result<Staged> {
        let mut staged = Staged { files: Vec::with_capacity(files.len()), bytes: 0 };
        for file in files {
            let tmp = dir.join(format!("{}.tmp", file_name(file.id)));
            let _ = std::fs::remove_file(&tmp);
            let mode = if file.executable { 0o555 } else { 0o444 };
            let mut out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&tmp)?;
            out.write_all(&file.bytes)?;
            staged.bytes += out.metadata()?.blocks() * 512;
            let sums: BlockSums = if file.bytes.is_empty() {
                Vec::new().into()
            } else {
                file.bytes.chunks(CHECK_BLOCK_BYTES as usize).map(block_sum).collect()
            };
            staged.files.push((file.id, sums));
        }
        Ok(staged)
    }

    /// The second half: renames the staged files into place and marks them present in memory
    /// (readers may read them now). The caller holds the cache's `moves` lock and has checked
    /// that `dir` is still this entry's. Returns the bytes they occupy on disk, for the caller to
    /// count (`count_added`) under the catalog's lock, and their log records, for `persist`.
    /// Blocking.
    pub fn commit(&self, dir: &Path, staged: Staged) -> io::Result<(u64, Vec<u8>)> {
        for (id, _) in &staged.files {
            std::fs::rename(dir.join(format!("{}.tmp", file_name(*id))), dir.join(file_name(*id)))?;
        }
        let mut log = Vec::new();
        let mut present = lock(&self.present);
        for (id, sums) in staged.files {
            log.extend_from_slice(&record(id, &sums));
            if present.insert(id, sums).is_none() {
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

/// Files written and synced under temporary names, not yet present.
#[derive(Debug)]
pub struct Staged {
    files: Vec<(NodeId, BlockSums)>,
    bytes: u64,
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
fn record(id: NodeId, sums: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + sums.len() * 8);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(sums.len() as u32).to_le_bytes());
    for sum in sums {
        out.extend_from_slice(&sum.to_le_bytes());
    }
    let check = xxhash_rust::xxh3::xxh3_64(&out);
    out.extend_from_slice(&check.to_le_bytes());
    out
}

/// The records of a log, up to the first one that is torn or does not match its checksum.
fn records(mut log: &[u8]) -> Vec<(NodeId, BlockSums)> {
    let mut out = Vec::new();
    let u32_at = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    while !log.is_empty() {
        let (Some(id), Some(n)) = (u32_at(log, 0), u32_at(log, 4)) else { break };
        if n > MAX_RECORD_SUMS {
            break;
        }
        let body = 8 + n as usize * 8;
        let Some(check) = u64_at(log, body) else { break };
        let Some(head) = log.get(..body) else { break };
        if xxhash_rust::xxh3::xxh3_64(head) != check {
            break;
        }
        let sums: BlockSums = (0..n as usize).filter_map(|i| u64_at(log, 8 + i * 8)).collect();
        out.push((id, sums));
        log = &log[body + 8..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_ignored() {
        let mut log = record(3, &[1, 2, 3]);
        log.extend_from_slice(&record(7, &[]));
        let whole = records(&log);
        assert_eq!(whole.len(), 2);
        assert_eq!((whole[0].0, &whole[0].1[..]), (3, &[1u64, 2, 3][..]));
        assert_eq!((whole[1].0, whole[1].1.len()), (7, 0));
        for cut in 0..log.len() {
            let n = records(&log[..cut]).len();
            assert!(n <= 1, "a torn second record must not load (cut at {cut})");
        }
        let mut flipped = log.clone();
        flipped[5] ^= 1;
        assert!(records(&flipped).is_empty(), "a damaged first record ends the log");
    }
}
