//! Turns a NAR byte stream into a staged cache entry, verifying it on the way.
//!
//! One pass: compressed body → decoder → `HashingReader` (SHA-256 + NarSize bound) → NAR parser →
//! `Unpacker`, which writes each regular file to `f<node id>` in a fresh staging directory (files of
//! at most `PACK_MAX_FILE_BYTES` are appended to the entry's one `pack` file instead), checksums
//! each file's blocks on the way (`manifest::block_sum`, checked on every later read from disk),
//! and builds the manifest. Nothing here is visible to readers: the caller publishes the staging directory by
//! rename only after `unpack` returned Ok, i.e. after NarHash and NarSize matched.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::layout::{MANIFEST_FILE, PACK_FILE};
use super::manifest::{BlockSums, CHECK_BLOCK_BYTES, Manifest, Node, block_sum};
use crate::nix::hash::NarHash;
use crate::nix::nar::{self, NodeId, ParseError, VisitError, Visitor};
use crate::nix::narinfo::NarInfo;
use crate::upstream::decompress::{self, DecompressError};

/// Most nodes one store path may have (node ids share an inode number with a path slot).
pub const MAX_NODES: u64 = 1 << 24;
/// Filesystem block size assumed for quota accounting.
pub const BLOCK_BYTES: u64 = 4096;
const COPY_BUF_BYTES: usize = 256 * 1024;
/// Files up to this size go to the entry's pack file rather than a file of their own. Creating a
/// file costs 10 to 100 µs on a real disk (docs/PERFORMANCE.md), as long as writing 10 to 100 KiB,
/// and a store path often has thousands of small files; larger files keep their own cache file,
/// which kernel passthrough (`--passthrough`) can hand to the kernel.
pub const PACK_MAX_FILE_BYTES: u64 = 64 * 1024;
const PACK_BUF_BYTES: usize = 1024 * 1024;

/// Why a NAR was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The compression cannot be decoded.
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    /// The NAR stream is malformed, hostile, truncated, or failed to decode.
    #[error("invalid NAR: {0}")]
    Nar(#[source] ParseError),
    /// The NAR is shorter than NarSize.
    #[error("NAR is {actual} bytes, narinfo says NarSize {expected}")]
    SizeMismatch {
        /// Signed NarSize.
        expected: u64,
        /// Bytes actually received.
        actual: u64,
    },
    /// The NAR does not hash to NarHash.
    #[error("NAR hash is {actual}, narinfo says {expected}")]
    HashMismatch {
        /// Signed NarHash.
        expected: NarHash,
        /// What the bytes hashed to.
        actual: NarHash,
    },
    /// Writing the staged entry failed (disk full, I/O error).
    #[error("cannot write staging entry {path}: {source}")]
    Local {
        /// The staging path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// True when the bytes stopped coming (reset, stall, too slow), rather than being wrong.
    pub fn is_transport(&self) -> bool {
        matches!(self, UnpackError::Nar(ParseError::Io(_)))
    }

    /// True when the failure is the local disk's, not the upstream's.
    pub fn is_local(&self) -> bool {
        match self {
            UnpackError::Local { .. } => true,
            UnpackError::Nar(ParseError::Visitor(e)) => e.is::<LocalWriteError>(),
            _ => false,
        }
    }
}

/// A local write failure raised from inside the visitor.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
struct LocalWriteError {
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// Unpacks `compressed` (a NAR compressed as `info.compression`) into `staging`, which must be a
/// fresh, empty directory, and, once the NAR checked out against `info`, writes the manifest there
/// and returns it. `max_compressed` bounds the bytes read from the wire.
pub fn unpack(
    compressed: impl Read + Send,
    info: &NarInfo,
    max_compressed: u64,
    staging: &Path,
) -> Result<Manifest, UnpackError> {
    let limited = LimitedReader { inner: compressed, remaining: max_compressed };
    let decoded = decompress::decoder(info.compression, limited)?;
    let mut hashing = HashingReader { inner: decoded, hasher: Sha256::new(), count: 0 };
    let mut unpacker = Unpacker::new(staging);
    // The parser itself refuses to read past NarSize and requires EOF after the last token.
    nar::parse(&mut hashing, info.nar_size, &mut unpacker).map_err(UnpackError::Nar)?;
    unpacker.finish_pack()?;
    if hashing.count != info.nar_size {
        return Err(UnpackError::SizeMismatch { expected: info.nar_size, actual: hashing.count });
    }
    let actual = NarHash::from_digest(hashing.hasher.finalize().into());
    if actual != info.nar_hash {
        return Err(UnpackError::HashMismatch { expected: info.nar_hash, actual });
    }
    let local = |path: PathBuf| move |source| UnpackError::Local { path, source };
    let dir_bytes = std::fs::metadata(staging).map_err(local(staging.into()))?.blocks() * 512;
    let mut manifest = Manifest { narinfo: info.to_string(), disk_bytes: 0, nodes: unpacker.nodes };
    // The manifest's own size does not depend on the value of disk_bytes (a fixed-width field).
    let manifest_bytes = block_rounded(manifest.encode().len() as u64);
    manifest.disk_bytes = unpacker.disk_bytes + dir_bytes + manifest_bytes;
    let path = staging.join(MANIFEST_FILE);
    crate::failpoint::io("unpack::manifest")
        .and_then(|()| std::fs::write(&path, manifest.encode()))
        .map_err(local(path.clone()))?;
    Ok(manifest)
}

/// File name of regular file `id` inside an entry directory. Never a name from the NAR.
pub fn file_name(id: NodeId) -> String {
    format!("f{id}")
}

/// Rounds `bytes` up to whole blocks, as a filesystem allocates them.
pub fn block_rounded(bytes: u64) -> u64 {
    bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

struct LimitedReader<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.remaining = self.remaining.checked_sub(n as u64).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, "compressed NAR is larger than allowed")
        })?;
        Ok(n)
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// The block checksums of one file, computed as its bytes stream past in pieces of any size.
#[derive(Default)]
struct BlockSummer {
    /// The block begun and not yet complete.
    partial: xxhash_rust::xxh3::Xxh3,
    /// Bytes of the block begun.
    in_block: u64,
    sums: Vec<u64>,
}

impl BlockSummer {
    fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = usize::try_from(CHECK_BLOCK_BYTES - self.in_block).unwrap_or(usize::MAX);
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            if self.in_block == 0 && now.len() as u64 == CHECK_BLOCK_BYTES {
                // A whole block at once: one call, no copy into the streaming state.
                self.sums.push(block_sum(now));
            } else {
                self.partial.update(now);
                self.in_block += now.len() as u64;
                if self.in_block == CHECK_BLOCK_BYTES {
                    self.end_block();
                }
            }
            bytes = rest;
        }
    }

    /// All of a file's bytes at once: one call per block, no streaming state (most files arrive
    /// in one read, and the streaming state costs more than the hash for a small file).
    fn whole(&mut self, bytes: &[u8]) {
        debug_assert!(self.in_block == 0, "a file begins at a block boundary");
        let block = usize::try_from(CHECK_BLOCK_BYTES).unwrap_or(usize::MAX);
        self.sums.extend(bytes.chunks(block).map(block_sum));
    }

    fn end_block(&mut self) {
        self.sums.push(self.partial.digest());
        self.partial.reset();
        self.in_block = 0;
    }

    /// The checksums of the file's bytes so far, leaving the summer ready for the next file.
    fn finish(&mut self) -> BlockSums {
        if self.in_block > 0 {
            self.end_block();
        }
        let sums = BlockSums::from(self.sums.as_slice());
        self.sums.clear();
        sums
    }
}

/// Builds the manifest and writes file contents under their node numbers, or into the pack.
struct Unpacker<'a> {
    dir: &'a Path,
    nodes: Vec<Node>,
    disk_bytes: u64,
    buf: Vec<u8>,
    summer: BlockSummer,
    wrote_a_file: bool,
    /// The pack file, once a small file was seen, and how many bytes it holds.
    pack: Option<(BufWriter<std::fs::File>, u64)>,
}

impl<'a> Unpacker<'a> {
    fn new(dir: &'a Path) -> Self {
        Self {
            dir,
            nodes: Vec::new(),
            disk_bytes: 0,
            buf: Vec::new(),
            summer: BlockSummer::default(),
            wrote_a_file: false,
            pack: None,
        }
    }

    /// Appends node `id`, linking it into its parent directory.
    fn push(&mut self, id: NodeId, parent: Option<(NodeId, &[u8])>, node: Node) -> VisitResult {
        if id as usize != self.nodes.len() || u64::from(id) >= MAX_NODES {
            return Err(format!("node {id} out of order or beyond {MAX_NODES} nodes").into());
        }
        if let Some((parent, name)) = parent {
            match self.nodes.get_mut(parent as usize) {
                Some(Node::Directory { entries, .. }) => entries.push((name.to_vec(), id)),
                _ => return Err(format!("parent {parent} of node {id} is not a directory").into()),
            }
        }
        self.nodes.push(node);
        Ok(())
    }

    /// Flushes the pack file, if any, and counts its blocks.
    fn finish_pack(&mut self) -> Result<(), UnpackError> {
        let Some((pack, _)) = self.pack.take() else { return Ok(()) };
        let path = self.dir.join(PACK_FILE);
        let local = |source| UnpackError::Local { path: path.clone(), source };
        let file = pack.into_inner().map_err(|e| local(e.into_error()))?;
        self.disk_bytes += file.metadata().map_err(local)?.blocks() * 512;
        Ok(())
    }
}

type VisitResult = Result<(), VisitError>;

impl Unpacker<'_> {
    /// True exactly once: after the first regular file was written.
    fn first_file_done(&mut self) -> bool {
        !std::mem::replace(&mut self.wrote_a_file, true)
    }

    /// Copies exactly `size` bytes of `contents` to `out`, checksumming them into `summer`.
    fn copy(
        buf: &mut Vec<u8>,
        summer: &mut BlockSummer,
        contents: &mut dyn Read,
        size: u64,
        id: NodeId,
        out: &mut dyn Write,
        local: &dyn Fn(io::Error) -> VisitError,
    ) -> VisitResult {
        if buf.is_empty() {
            *buf = vec![0; COPY_BUF_BYTES];
        }
        let mut written = 0u64;
        loop {
            let n = contents.read(buf)?;
            if n == 0 {
                break;
            }
            if written == 0 && n as u64 == size {
                summer.whole(&buf[..n]);
            } else {
                summer.update(&buf[..n]);
            }
            out.write_all(&buf[..n]).map_err(local)?;
            written += n as u64;
        }
        if written != size {
            return Err(format!("file node {id}: {written} of {size} bytes").into());
        }
        Ok(())
    }

    /// Appends a small file to the pack, returning where it starts.
    fn write_packed(
        &mut self,
        id: NodeId,
        size: u64,
        contents: &mut dyn Read,
    ) -> Result<u64, VisitError> {
        // The path is built only for an error: this runs for every small file.
        let dir = self.dir;
        let local = |source| local_write_error(dir.join(PACK_FILE), source);
        if self.pack.is_none() {
            let file = create_cache_file(&self.dir.join(PACK_FILE), 0o444).map_err(local)?;
            self.pack = Some((BufWriter::with_capacity(PACK_BUF_BYTES, file), 0));
        }
        let (pack, len) = self.pack.as_mut().expect("created above");
        let start = *len;
        Self::copy(&mut self.buf, &mut self.summer, contents, size, id, pack, &local)?;
        *len += size;
        Ok(start)
    }

    /// Writes a file to `f<id>` of its own.
    fn write_own(
        &mut self,
        id: NodeId,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> VisitResult {
        let path = self.dir.join(file_name(id));
        let local = |source| local_write_error(path.clone(), source);
        let mode = if executable { 0o555 } else { 0o444 };
        let mut file = create_cache_file(&path, mode).map_err(local)?;
        Self::copy(&mut self.buf, &mut self.summer, contents, size, id, &mut file, &local)?;
        // What the filesystem really allocated (ext4 counts delayed allocations too), so the
        // accounting matches `du`.
        self.disk_bytes += file.metadata().map_err(local)?.blocks() * 512;
        Ok(())
    }
}

/// A failed write of cache file `path`, for the NAR parser to pass back.
fn local_write_error(path: PathBuf, source: io::Error) -> VisitError {
    Box::new(LocalWriteError { path, source })
}

/// Creates cache file `path` for writing, with its final `mode`. create_new + O_NOFOLLOW: the
/// name is ours, and nothing may already sit there. The mode applies to later opens only, so
/// this descriptor can still write.
fn create_cache_file(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

fn parent_id(parent: Option<(NodeId, &[u8])>) -> NodeId {
    parent.map_or(0, |(p, _)| p)
}

impl Visitor for Unpacker<'_> {
    fn directory(&mut self, id: NodeId, parent: Option<(NodeId, &[u8])>) -> VisitResult {
        let node = Node::Directory { parent: parent_id(parent), entries: Vec::new() };
        self.push(id, parent, node)
    }

    fn file(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> VisitResult {
        let packed = if size <= PACK_MAX_FILE_BYTES {
            Some(self.write_packed(id, size, contents)?)
        } else {
            self.write_own(id, executable, size, contents)?;
            None
        };
        let sums = Some(self.summer.finish());
        let node = Node::File { parent: parent_id(parent), executable, size, packed, sums };
        self.push(id, parent, node)?;
        if id > 0 && self.first_file_done() {
            crate::failpoint::hit("unpack::after_first_file");
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        target: &[u8],
    ) -> VisitResult {
        let node = Node::Symlink { parent: parent_id(parent), target: target.to_vec() };
        self.push(id, parent, node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full disk is found through the error's source chain, wherever the write failed: in
    /// the staging directory itself or inside the NAR visitor (the download's evict-and-retry
    /// relies on this).
    #[test]
    fn full_disks_are_found_through_the_source_chain() {
        let full = || io::Error::from_raw_os_error(libc::ENOSPC);
        let direct = UnpackError::Local { path: "staging".into(), source: full() };
        let inside = LocalWriteError { path: "staging/f1".into(), source: full() };
        let visited = UnpackError::Nar(ParseError::Visitor(Box::new(inside)));
        let other = UnpackError::Local { path: "x".into(), source: io::Error::other("eio") };
        for (err, full) in [(direct, true), (visited, true), (other, false)] {
            assert!(err.is_local());
            assert_eq!(crate::cache::Cause::new(err).is_no_space(), full);
        }
    }

    /// NAR-3's second layer: with the parser's sort check out of the way (the unpacker driven
    /// directly), a symlink `x` to a directory outside followed by a directory `x` holding
    /// files writes nothing outside the staging directory: files are written under names of
    /// their own (`f<id>`, `pack`), never through a path built from the NAR's names.
    #[test]
    fn a_symlink_then_a_directory_of_one_name_writes_nothing_through_the_link() {
        let tmp = tempfile::tempdir().unwrap();
        let (staging, canary) = (tmp.path().join("staging"), tmp.path().join("canary"));
        std::fs::create_dir(&staging).unwrap();
        std::fs::create_dir(&canary).unwrap();
        let mut u = Unpacker::new(&staging);
        u.directory(0, None).unwrap();
        u.symlink(1, Some((0, b"x")), canary.as_os_str().as_encoded_bytes()).unwrap();
        u.directory(2, Some((0, b"x"))).unwrap();
        let big = vec![1u8; 100_000];
        u.file(3, Some((2, b"evil")), false, big.len() as u64, &mut &big[..]).unwrap();
        u.file(4, Some((2, b"small")), false, 5, &mut &b"small"[..]).unwrap();
        u.finish_pack().unwrap();
        assert!(std::fs::read_dir(&canary).unwrap().next().is_none(), "the canary is untouched");
        let mut written: Vec<String> = std::fs::read_dir(&staging)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        written.sort();
        assert_eq!(written, ["f3", "pack"], "only names of storefs' own");
        let mut top: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        top.sort();
        assert_eq!(top, ["canary", "staging"]);
    }

    /// However the bytes arrive, the checksums are those of whole blocks (the last one short).
    #[test]
    fn block_sums_do_not_depend_on_how_the_bytes_arrive() {
        let block = CHECK_BLOCK_BYTES as usize;
        let bytes: Vec<u8> = (0..2 * block + 100).map(|i| (i % 251) as u8).collect();
        let expected: Vec<u64> = bytes.chunks(block).map(block_sum).collect();
        for piece in [1, 7, 4096, block - 1, block, block + 1, bytes.len()] {
            let mut summer = BlockSummer::default();
            bytes.chunks(piece).for_each(|p| summer.update(p));
            assert_eq!(&*summer.finish(), expected.as_slice(), "pieces of {piece} bytes");
            summer.update(b"next");
            assert_eq!(&*summer.finish(), &[block_sum(b"next")], "ready for the next file");
        }
        let mut summer = BlockSummer::default();
        summer.whole(&bytes);
        assert_eq!(&*summer.finish(), expected.as_slice(), "all at once");
        assert!(BlockSummer::default().finish().is_empty(), "an empty file has no block");
    }
}
