//! From a NAR to seekable zstd frames and the tree that indexes them, in one streaming pass.
//!
//! One NAR [`Visitor`], [`TreeBuilder`], records the tree (with each file's SHA-256 and NAR
//! offset) and hands the NAR bytes, re-emitted by [`NarLayout`], to a [`NarSink`]: the
//! [`FrameCutter`] that writes seekable zstd ([`IndexBuilder`]), or a hasher ([`tree_of_nar`]).
//!
//! Frames are cut at file boundaries: a file that does not fit in what is left of the current
//! frame starts a new one (so small files share frames and a file no larger than the target
//! lies in exactly one frame), and a larger file is split into frames of the target size.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::NodeKind;
use super::{FileIndex, FileNode, Frame, IndexNode, MAX_FRAME_BYTES, NarEncoding, NarFile};
use crate::nix::hash::NarHash;
use crate::nix::nar::layout::{NarLayout, Start};
use crate::nix::nar::{NodeId, ParseError, VisitError, Visitor, parse};
use crate::nix::seekable::{self, FrameSizes};
use crate::nix::store_path::StorePath;

/// Bytes read from a file's contents at a time.
const PIECE_BYTES: usize = 64 << 10;

/// Receives the NAR's bytes in order, as [`TreeBuilder`] re-emits them.
pub trait NarSink {
    /// Bytes around file contents: headers, names, targets, padding, closing tokens.
    fn framing(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// A file of `size` bytes starts; its contents follow.
    fn file_start(&mut self, size: u64) -> io::Result<()>;
    /// A piece of a file's contents.
    fn contents(&mut self, piece: &[u8]) -> io::Result<()>;
}

/// A NAR [`Visitor`] that records the tree as an index holds it and passes the NAR bytes to a
/// [`NarSink`]; [`TreeBuilder::finish_nar`] ends the stream.
#[derive(Debug)]
pub struct TreeBuilder<S> {
    nodes: Vec<IndexNode>,
    layout: NarLayout,
    /// The framing bytes emitted last.
    framing: Vec<u8>,
    /// Read buffer for file contents, reused across files.
    piece: Vec<u8>,
    sink: S,
}

impl<S: NarSink> TreeBuilder<S> {
    fn with_sink(sink: S) -> Self {
        Self {
            nodes: Vec::new(),
            layout: NarLayout::new(),
            framing: Vec::new(),
            piece: vec![0; PIECE_BYTES],
            sink,
        }
    }

    /// Records a node and passes its framing to the sink. A file's digest is filled in once
    /// its contents are read.
    fn start(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        start: Start<'_>,
    ) -> Result<(), VisitError> {
        self.framing.clear();
        let at = self.layout.start(id, parent, start, &mut self.framing)?;
        let kind = match start {
            Start::Directory => NodeKind::Directory,
            Start::File { executable, size } => {
                NodeKind::File(FileNode { executable, size, digest: [0; 32], nar_offset: at })
            }
            Start::Symlink { target } => NodeKind::Symlink { target: target.to_vec() },
        };
        self.nodes.push(IndexNode { parent: parent.map(|(p, n)| (p, n.to_vec())), kind });
        Ok(self.sink.framing(&self.framing)?)
    }

    /// Emits the NAR's last bytes; the tree is then complete.
    fn finish_nar(&mut self) -> Result<(), VisitError> {
        self.framing.clear();
        self.layout.finish(&mut self.framing)?;
        Ok(self.sink.framing(&self.framing)?)
    }
}

impl<S: NarSink> Visitor for TreeBuilder<S> {
    fn directory(&mut self, id: NodeId, parent: Option<(NodeId, &[u8])>) -> Result<(), VisitError> {
        self.start(id, parent, Start::Directory)
    }

    fn file(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), VisitError> {
        self.start(id, parent, Start::File { executable, size })?;
        self.sink.file_start(size)?;
        let mut digest = Sha256::new();
        loop {
            match contents.read(&mut self.piece) {
                Ok(0) => break,
                Ok(n) => {
                    digest.update(&self.piece[..n]);
                    self.sink.contents(&self.piece[..n])?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(IndexNode { kind: NodeKind::File(f), .. }) = self.nodes.last_mut() {
            f.digest = digest.finalize().into();
        }
        Ok(())
    }

    fn symlink(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        target: &[u8],
    ) -> Result<(), VisitError> {
        self.start(id, parent, Start::Symlink { target })
    }
}

/// Hashes the NAR as it is re-emitted.
struct NarHasher(Sha256);

impl NarSink for NarHasher {
    fn framing(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.0.update(bytes);
        Ok(())
    }
    fn file_start(&mut self, _size: u64) -> io::Result<()> {
        Ok(())
    }
    fn contents(&mut self, piece: &[u8]) -> io::Result<()> {
        self.0.update(piece);
        Ok(())
    }
}

/// The tree of a NAR and its hash, with no frames: what an index's tree must equal.
///
/// # Errors
///
/// The NAR is malformed or longer than `nar_size`.
pub fn tree_of_nar(nar: impl Read, nar_size: u64) -> Result<(Vec<IndexNode>, NarHash), ParseError> {
    let mut v = TreeBuilder::with_sink(NarHasher(Sha256::new()));
    parse(nar, nar_size, &mut v)?;
    v.finish_nar().map_err(ParseError::Visitor)?;
    Ok((v.nodes, NarHash::from_digest(v.sink.0.finalize().into())))
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

impl BuildOutput {
    /// The index of `store_path` describing what was written (NarHash and NarSize as hashed and
    /// counted; the caller checks them against the narinfo first).
    #[must_use]
    pub fn into_index(self, store_path: StorePath) -> FileIndex {
        FileIndex {
            store_path,
            nar_hash: self.nar_hash,
            nar_size: self.nar_size,
            nar_file: NarFile {
                encoding: NarEncoding::SeekableZstd,
                size: self.file_size,
                hash: self.file_hash,
            },
            frames: self.frames,
            nodes: self.nodes,
            warm: Vec::new(),
            warm_paths: Vec::new(),
        }
    }
}

/// Cuts the NAR into seekable zstd frames at file boundaries (see the module docs) and writes
/// them to `out`.
pub struct FrameCutter<'w> {
    out: &'w mut dyn Write,
    target: usize,
    level: i32,
    /// NAR bytes of the frame being filled.
    buf: Vec<u8>,
    frames: Vec<Frame>,
    nar_hash: Sha256,
    file_hash: Sha256,
    nar_pos: u64,
    file_pos: u64,
}

impl std::fmt::Debug for FrameCutter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCutter")
            .field("target", &self.target)
            .field("frames", &self.frames.len())
            .finish_non_exhaustive()
    }
}

impl FrameCutter<'_> {
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
}

impl NarSink for FrameCutter<'_> {
    /// Appends NAR bytes, cutting a frame whenever one is full.
    fn framing(&mut self, mut bytes: &[u8]) -> io::Result<()> {
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

    /// A file that does not fit in the rest of this frame starts the next one.
    fn file_start(&mut self, size: u64) -> io::Result<()> {
        if (self.buf.len() as u64).saturating_add(size) > self.target as u64 {
            self.flush()?;
        }
        Ok(())
    }

    fn contents(&mut self, piece: &[u8]) -> io::Result<()> {
        self.framing(piece)
    }
}

/// A NAR [`Visitor`] that writes the NAR again as seekable zstd, frames cut at file boundaries,
/// and records the tree; see the module docs. Use it with [`crate::nix::nar::parse`], then
/// [`IndexBuilder::finish`].
pub type IndexBuilder<'w> = TreeBuilder<FrameCutter<'w>>;

impl<'w> TreeBuilder<FrameCutter<'w>> {
    /// A builder writing frames of about `frame_target` NAR bytes (at most
    /// [`MAX_FRAME_BYTES`]; at least 1) at zstd `level` to `out`.
    pub fn new(out: &'w mut dyn Write, frame_target: u64, level: i32) -> Self {
        let target = frame_target.clamp(1, MAX_FRAME_BYTES) as usize;
        Self::with_sink(FrameCutter {
            out,
            target,
            level,
            buf: Vec::with_capacity(target),
            frames: Vec::new(),
            nar_hash: Sha256::new(),
            file_hash: Sha256::new(),
            nar_pos: 0,
            file_pos: 0,
        })
    }

    /// Writes the last frame and the seek table.
    ///
    /// # Errors
    ///
    /// Writing failed, or no NAR was parsed.
    pub fn finish(mut self) -> Result<BuildOutput, VisitError> {
        self.finish_nar()?;
        let mut cut = self.sink;
        cut.flush()?;
        let sizes: Vec<FrameSizes> = cut
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
        cut.out.write_all(&table)?;
        cut.file_hash.update(&table);
        Ok(BuildOutput {
            nodes: self.nodes,
            frames: cut.frames,
            nar_hash: NarHash::from_digest(cut.nar_hash.finalize().into()),
            nar_size: cut.nar_pos,
            file_hash: NarHash::from_digest(cut.file_hash.finalize().into()),
            file_size: cut.file_pos + table.len() as u64,
        })
    }
}
