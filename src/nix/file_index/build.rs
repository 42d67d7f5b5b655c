//! From a NAR to seekable zstd frames and the tree that indexes them, in one streaming pass.
//!
//! Frames are cut at file boundaries: a file that does not fit in what is left of the current
//! frame starts a new one (so small files share frames and a file no larger than the target
//! lies in exactly one frame), and a larger file is split into frames of the target size.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::{FileNode, Frame, IndexNode, MAX_FRAME_BYTES, NodeKind};
use crate::nix::hash::NarHash;
use crate::nix::nar::layout::{LayoutError, NarLayout, Start};
use crate::nix::nar::{NodeId, ParseError, VisitError, Visitor, parse};
use crate::nix::seekable::{self, FrameSizes};

/// Where the compressed frames go (a file being written); any `Write` is one.
pub trait FrameWriter: Write {}
impl<W: Write> FrameWriter for W {}

/// The nodes of a NAR in stream order with their NAR offsets, as an index records them.
#[derive(Debug, Default)]
struct TreeCollector {
    nodes: Vec<IndexNode>,
    layout: NarLayout,
    /// The NAR bytes of the last header.
    header: Vec<u8>,
}

impl TreeCollector {
    /// Records a node and leaves its NAR header in `self.header`. A file's digest is filled in
    /// by [`Self::set_digest`] once its contents are read.
    fn start(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        start: Start<'_>,
    ) -> Result<(), LayoutError> {
        self.header.clear();
        let at = self.layout.start(id, parent, start, &mut self.header)?;
        let kind = match start {
            Start::Directory => NodeKind::Directory,
            Start::File { executable, size } => {
                NodeKind::File(FileNode { executable, size, digest: [0; 32], nar_offset: at })
            }
            Start::Symlink { target } => NodeKind::Symlink { target: target.to_vec() },
        };
        self.nodes.push(IndexNode { parent: parent.map(|(p, n)| (p, n.to_vec())), kind });
        Ok(())
    }

    fn set_digest(&mut self, digest: [u8; 32]) {
        if let Some(IndexNode { kind: NodeKind::File(f), .. }) = self.nodes.last_mut() {
            f.digest = digest;
        }
    }
}

/// Bytes read from a file's contents at a time.
const PIECE_BYTES: usize = 64 << 10;

/// Reads `contents` to its end through `buf` (reused across files, [`PIECE_BYTES`] long),
/// handing each piece to `each`.
fn read_pieces(
    contents: &mut dyn Read,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    buf.resize(PIECE_BYTES, 0);
    loop {
        match contents.read(buf) {
            Ok(0) => return Ok(()),
            Ok(n) => each(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The tree of a NAR and its hash, with no frames: what an index's tree must equal.
///
/// # Errors
///
/// The NAR is malformed or longer than `nar_size`.
pub fn tree_of_nar(nar: impl Read, nar_size: u64) -> Result<(Vec<IndexNode>, NarHash), ParseError> {
    /// Hashes the NAR as the layout re-emits it.
    struct Hashing {
        tree: TreeCollector,
        nar: Sha256,
        piece: Vec<u8>,
    }
    impl Visitor for Hashing {
        fn directory(
            &mut self,
            id: NodeId,
            parent: Option<(NodeId, &[u8])>,
        ) -> Result<(), VisitError> {
            self.tree.start(id, parent, Start::Directory)?;
            self.nar.update(&self.tree.header);
            Ok(())
        }
        fn file(
            &mut self,
            id: NodeId,
            parent: Option<(NodeId, &[u8])>,
            executable: bool,
            size: u64,
            contents: &mut dyn Read,
        ) -> Result<(), VisitError> {
            self.tree.start(id, parent, Start::File { executable, size })?;
            self.nar.update(&self.tree.header);
            let mut file = Sha256::new();
            read_pieces(contents, &mut self.piece, |piece| {
                file.update(piece);
                self.nar.update(piece);
                Ok(())
            })?;
            self.tree.set_digest(file.finalize().into());
            Ok(())
        }
        fn symlink(
            &mut self,
            id: NodeId,
            parent: Option<(NodeId, &[u8])>,
            target: &[u8],
        ) -> Result<(), VisitError> {
            self.tree.start(id, parent, Start::Symlink { target })?;
            self.nar.update(&self.tree.header);
            Ok(())
        }
    }
    let mut v = Hashing { tree: TreeCollector::default(), nar: Sha256::new(), piece: Vec::new() };
    parse(nar, nar_size, &mut v)?;
    v.tree.header.clear();
    v.tree.layout.finish(&mut v.tree.header).map_err(|e| ParseError::Visitor(e.into()))?;
    v.nar.update(&v.tree.header);
    Ok((v.tree.nodes, NarHash::from_digest(v.nar.finalize().into())))
}

/// What [`IndexBuilder::finish`] produced.
#[derive(Debug)]
pub struct BuildOutput {
    /// The tree, files with their digests and NAR offsets.
    pub nodes: Vec<IndexNode>,
    /// The frames written.
    pub frames: Vec<Frame>,
    /// SHA-256 of the NAR as re-emitted: equal to NarHash exactly when the output is that NAR.
    pub nar_hash: NarHash,
    /// Bytes of the NAR.
    pub nar_size: u64,
    /// SHA-256 of everything written (frames and seek table): the new `FileHash`.
    pub file_hash: NarHash,
    /// Bytes written: the new `FileSize`.
    pub file_size: u64,
}

/// A NAR [`Visitor`] that writes the NAR again as seekable zstd, frames cut at file boundaries,
/// and records the tree; see the module docs. Use it with [`crate::nix::nar::parse`], then
/// [`IndexBuilder::finish`].
pub struct IndexBuilder<'w> {
    out: &'w mut dyn FrameWriter,
    target: usize,
    level: i32,
    tree: TreeCollector,
    /// NAR bytes of the frame being filled.
    buf: Vec<u8>,
    frames: Vec<Frame>,
    nar_hash: Sha256,
    file_hash: Sha256,
    nar_pos: u64,
    file_pos: u64,
    /// Read buffer for file contents, reused.
    piece: Vec<u8>,
}

impl std::fmt::Debug for IndexBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexBuilder")
            .field("target", &self.target)
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

impl<'w> IndexBuilder<'w> {
    /// A builder writing frames of about `frame_target` NAR bytes (at most
    /// [`MAX_FRAME_BYTES`]; at least 1) at zstd `level` to `out`.
    pub fn new(out: &'w mut dyn FrameWriter, frame_target: u64, level: i32) -> Self {
        let target = frame_target.clamp(1, MAX_FRAME_BYTES) as usize;
        Self {
            out,
            target,
            level,
            tree: TreeCollector::default(),
            buf: Vec::with_capacity(target),
            frames: Vec::new(),
            nar_hash: Sha256::new(),
            file_hash: Sha256::new(),
            nar_pos: 0,
            file_pos: 0,
            piece: Vec::new(),
        }
    }

    /// Compresses and writes the frame being filled, if any.
    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let frame = seekable::compress_frame(&self.buf, self.level).map_err(io::Error::other)?;
        self.out.write_all(&frame)?;
        self.nar_hash.update(&self.buf);
        self.file_hash.update(&frame);
        self.frames.push(Frame {
            file_offset: self.file_pos,
            file_len: frame.len() as u64,
            nar_offset: self.nar_pos,
            nar_len: self.buf.len() as u64,
            digest: Sha256::digest(&frame).into(),
        });
        self.file_pos += frame.len() as u64;
        self.nar_pos += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }

    /// Appends NAR bytes, cutting a frame whenever one is full.
    fn push(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = self.target - self.buf.len();
            let (now, rest) = bytes.split_at(room.min(bytes.len()));
            self.buf.extend_from_slice(now);
            bytes = rest;
            if self.buf.len() == self.target {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn push_header(&mut self) -> io::Result<()> {
        let header = std::mem::take(&mut self.tree.header);
        let result = self.push(&header);
        self.tree.header = header;
        result
    }

    /// Writes the last frame and the seek table.
    ///
    /// # Errors
    ///
    /// Writing failed, or no NAR was parsed.
    pub fn finish(mut self) -> Result<BuildOutput, VisitError> {
        self.tree.header.clear();
        self.tree.layout.finish(&mut self.tree.header)?;
        self.push_header()?;
        self.flush()?;
        let sizes: Vec<FrameSizes> = self
            .frames
            .iter()
            .map(|f| FrameSizes {
                // Both fit: frames are at most MAX_FRAME_BYTES, far below 4 GiB, and zstd's
                // bound for that is too.
                compressed: u32::try_from(f.file_len).unwrap_or(u32::MAX),
                decompressed: u32::try_from(f.nar_len).unwrap_or(u32::MAX),
            })
            .collect();
        let table = seekable::seek_table(&sizes);
        self.out.write_all(&table)?;
        self.file_hash.update(&table);
        Ok(BuildOutput {
            nodes: self.tree.nodes,
            frames: self.frames,
            nar_hash: NarHash::from_digest(self.nar_hash.finalize().into()),
            nar_size: self.nar_pos,
            file_hash: NarHash::from_digest(self.file_hash.finalize().into()),
            file_size: self.file_pos + table.len() as u64,
        })
    }
}

impl Visitor for IndexBuilder<'_> {
    fn directory(&mut self, id: NodeId, parent: Option<(NodeId, &[u8])>) -> Result<(), VisitError> {
        self.tree.start(id, parent, Start::Directory)?;
        Ok(self.push_header()?)
    }

    fn file(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), VisitError> {
        self.tree.start(id, parent, Start::File { executable, size })?;
        self.push_header()?;
        // A file that does not fit in the rest of this frame starts the next one.
        if (self.buf.len() as u64).saturating_add(size) > self.target as u64 {
            self.flush()?;
        }
        let mut digest = Sha256::new();
        let mut buf = std::mem::take(&mut self.piece);
        let read = read_pieces(contents, &mut buf, |piece| {
            digest.update(piece);
            self.push(piece)
        });
        self.piece = buf;
        read?;
        self.tree.set_digest(digest.finalize().into());
        Ok(())
    }

    fn symlink(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        target: &[u8],
    ) -> Result<(), VisitError> {
        self.tree.start(id, parent, Start::Symlink { target })?;
        Ok(self.push_header()?)
    }
}
