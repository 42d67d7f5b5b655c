//! The signed per-path file index (`<hash>.index` beside `<hash>.narinfo`): the tree of one
//! store path, a SHA-256 of each regular file, and the frames of the seekable zstd NAR, so a
//! reader can fetch and verify single files with HTTP Range requests. Pure: no I/O.
//!
//! The format is specified in docs/INDEX_FORMAT.md. In short: a magic, `name:base64` ed25519
//! signatures over `storefs-index-1;<store path>;<NarHash>;<sha256 of the body>` (see
//! [`fingerprint`]), then the binary body (store path, NarHash, NarSize, the NAR file's size
//! and SHA-256, the frame table, the tree in NAR order). Signatures come first so that a reader
//! checks them against the narinfo before it parses the body ([`SignedIndex::open`]).
//!
//! - [`build`]: turns a NAR into seekable zstd frames and the index describing them.
//! - [`decode`]: the strict parser for hostile input ([`decode::Envelope`], [`SignedIndex::parse`]).
//! - [`verify`]: [`SignedIndex::open`], the signature and narinfo checks, and frame and file
//!   checks for readers.
//!
//! What is stored and what is derived: a file's offset in the NAR and the frames it lies in are
//! not stored; the parser computes them from the tree (a NAR is canonical) and the frame table,
//! so they cannot disagree with the tree.

pub mod build;
pub mod decode;
mod encode;
mod error;
pub mod verify;

use std::ops::Range;

pub use build::{BuildOutput, FrameCutter, IndexBuilder, NarSink, TreeBuilder, tree_of_nar};
pub use encode::encode_body;
pub use error::IndexError;
pub use verify::FileCheckError;

use crate::nix::hash::{NarHash, SHA256_SIZE};
use crate::nix::nar::NodeId;
use crate::nix::nixbase32;
use crate::nix::store_path::StorePath;

/// First bytes of every index body.
pub const MAGIC: &[u8; 16] = b"storefs-index-1\n";
/// First field of the signed fingerprint; a new format version gets a new one.
pub const FINGERPRINT_VERSION: &str = "storefs-index-1";
/// Largest index file accepted, in bytes.
pub const MAX_INDEX_BYTES: usize = 64 << 20;
/// Most nodes a tree may have (as many as the mount can number).
pub const MAX_NODES: usize = 1 << 24;
/// Most frames a NAR may have.
pub const MAX_FRAMES: usize = 1 << 24;
/// Largest decompressed frame accepted, so a reader's buffer for one frame stays bounded.
pub const MAX_FRAME_BYTES: u64 = 64 << 20;
/// Tag of the warm-list section after the tree (docs/INDEX_FORMAT.md, "Sections").
pub const SECTION_WARM: u8 = 1;
/// Tag of the section listing the other store paths of the learned run.
pub const SECTION_WARM_PATHS: u8 = 2;
/// Most store paths the warm-paths section may list.
pub const MAX_WARM_PATHS: usize = 4096;
/// Most signatures an index may carry.
pub const MAX_SIGNATURES: usize = 16;
/// Longest signature value (`name:base64`), in bytes.
pub const MAX_SIGNATURE_LEN: usize = 1024;

/// How the NAR file the frames index is encoded. Only seekable zstd for now; plain NARs (frames
/// as byte ranges, indexed in place) would be another value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NarEncoding {
    /// Seekable zstd: each frame an independent zstd frame, then the seek table.
    SeekableZstd,
}

impl NarEncoding {
    /// Its byte in the body.
    pub(crate) fn code(self) -> u8 {
        match self {
            NarEncoding::SeekableZstd => 1,
        }
    }

    /// The encoding a byte names.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        (code == 1).then_some(NarEncoding::SeekableZstd)
    }
}

/// The NAR file (at the narinfo's `URL`) that the frames are ranges of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarFile {
    /// How it is encoded.
    pub encoding: NarEncoding,
    /// Its size in bytes (`FileSize`).
    pub size: u64,
    /// Its SHA-256 (`FileHash`).
    pub hash: NarHash,
}

/// One frame: a byte range of the NAR file that decodes, alone, to a byte range of the NAR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Where the frame starts in the NAR file.
    pub file_offset: u64,
    /// Its bytes in the NAR file.
    pub file_len: u64,
    /// Where its decoded bytes start in the NAR.
    pub nar_offset: u64,
    /// How many bytes it decodes to.
    pub nar_len: u64,
    /// SHA-256 of its bytes in the NAR file (checked before decoding).
    pub digest: [u8; SHA256_SIZE],
}

impl Frame {
    /// The NAR file's byte range: what an HTTP Range request asks for.
    #[must_use]
    pub fn file_range(&self) -> Range<u64> {
        self.file_offset..self.file_offset.saturating_add(self.file_len)
    }

    /// The NAR's byte range it decodes to.
    #[must_use]
    pub fn nar_range(&self) -> Range<u64> {
        self.nar_offset..self.nar_offset.saturating_add(self.nar_len)
    }
}

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory; its entries are the nodes naming it as parent, in name order.
    Directory,
    /// A regular file.
    File(FileNode),
    /// A symbolic link with its target, verbatim.
    Symlink {
        /// The target.
        target: Vec<u8>,
    },
}

/// A regular file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileNode {
    /// Mode 0555 rather than 0444.
    pub executable: bool,
    /// Its size in bytes.
    pub size: u64,
    /// SHA-256 of its contents.
    pub digest: [u8; SHA256_SIZE],
    /// Where its contents start in the NAR (derived from the tree, never stored).
    pub nar_offset: u64,
}

/// One node of the tree, in NAR order (pre-order, entries by name); node 0 is the store path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexNode {
    /// The directory it is an entry of, and its name there; `None` for node 0.
    pub parent: Option<(NodeId, Vec<u8>)>,
    /// What it is.
    pub kind: NodeKind,
}

/// The contents of an index: everything but the signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileIndex {
    /// The store path it describes.
    pub store_path: StorePath,
    /// The signed NarHash of the path.
    pub nar_hash: NarHash,
    /// The signed NarSize.
    pub nar_size: u64,
    /// The NAR file the frames are ranges of.
    pub nar_file: NarFile,
    /// The frames, contiguous in both the file and the NAR, covering the whole NAR.
    pub frames: Vec<Frame>,
    /// The tree.
    pub nodes: Vec<IndexNode>,
    /// The warm list: regular files readers of the path opened in a learned run (`storefs
    /// index --warm-list`), each once, in the order they were opened. A mount fetches them in
    /// the background from the path's first lookup, paced by its readers. Empty when none was
    /// learned.
    pub warm: Vec<WarmFile>,
    /// The other store paths the learned run opened files in, in the order it first did: a
    /// mount looks them up in the background when this path is published, so their narinfos,
    /// indexes and warm lists come at once rather than one lookup after another. Empty when
    /// none was learned.
    pub warm_paths: Vec<StorePath>,
}

/// One file of a warm list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarmFile {
    /// Its node (a regular file).
    pub node: NodeId,
    /// Its position in the learned run's whole log, over every path: a mount fetches the warm
    /// files of all the paths it looked up lowest rank first, the order the run needed them.
    /// Strictly increasing along a list.
    pub rank: u64,
}

impl FileIndex {
    /// The frames holding bytes of `file` (none for an empty file).
    #[must_use]
    pub fn frames_of(&self, file: &FileNode) -> Range<usize> {
        if file.size == 0 {
            return 0..0;
        }
        let end = file.nar_offset.saturating_add(file.size);
        let first = self.frames.partition_point(|f| f.nar_range().end <= file.nar_offset);
        let last = self.frames.partition_point(|f| f.nar_offset < end);
        first..last.max(first)
    }

    /// The regular file at node `id`, if it is one.
    #[must_use]
    pub fn file(&self, id: NodeId) -> Option<&FileNode> {
        match &self.nodes.get(id as usize)?.kind {
            NodeKind::File(f) => Some(f),
            _ => None,
        }
    }
}

/// A parsed index with its signatures, not yet trusted; [`SignedIndex::verify`] trusts it.
/// Readers use [`SignedIndex::open`] instead, which checks the signature before parsing.
#[derive(Clone, Debug)]
pub struct SignedIndex {
    /// The contents.
    pub index: FileIndex,
    /// SHA-256 of the body, the digest the signatures cover.
    pub body_digest: [u8; SHA256_SIZE],
    /// The raw `name:base64` signatures.
    pub signatures: Vec<String>,
}

/// The message an index signature signs:
/// `storefs-index-1;<store path>;sha256:<NarHash>;sha256:<body digest>`, hashes in nixbase32.
#[must_use]
pub fn fingerprint(
    store_path: &StorePath,
    nar_hash: &NarHash,
    body_digest: &[u8; SHA256_SIZE],
) -> String {
    format!(
        "{FINGERPRINT_VERSION};{};{};sha256:{}",
        store_path.to_absolute_path(),
        nar_hash.to_nix_string(),
        nixbase32::encode(body_digest)
    )
}

#[cfg(test)]
mod tests;
