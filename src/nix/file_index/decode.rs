//! The strict index parser: every count is checked against the bytes left before anything is
//! allocated for it, names and targets follow the NAR reader's rules, frames must tile the NAR
//! exactly, and the tree must serialise to exactly NarSize bytes. It never recurses.

use sha2::{Digest, Sha256};

use super::encode::{TAG_DIRECTORY, TAG_EXECUTABLE, TAG_FILE, TAG_SYMLINK, put_signatures};
use super::{
    FileIndex, FileNode, Frame, IndexError, IndexNode, MAGIC, MAX_FRAME_BYTES, MAX_FRAMES,
    MAX_INDEX_BYTES, MAX_NODES, MAX_SIGNATURE_LEN, MAX_SIGNATURES, MAX_WARM_PATHS, NarEncoding,
    NarFile, NodeKind, SECTION_WARM, SECTION_WARM_PATHS, SignedIndex, WarmFile,
};
use crate::nix::hash::{NarHash, SHA256_SIZE};
use crate::nix::nar::NodeId;
use crate::nix::nar::layout::{NarLayout, Start};
use crate::nix::nar::reader::{validate_name, validate_target};
use crate::nix::nar::wire::{MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};
use crate::nix::seekable;
use crate::nix::store_path::{MAX_BASENAME_LEN, StorePath};

/// The first bytes of a zstd frame (little-endian 0xFD2FB528). `storefs index` writes each index
/// file as one zstd frame; an index file that starts with the magic instead is read as it is.
pub const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// The index file's bytes, decompressed when they are zstd, to at most `MAX_INDEX_BYTES`;
/// borrowed when they are not compressed. The signatures cover the decompressed body, so what
/// is decompressed is not trusted yet: only bounded.
///
/// # Errors
///
/// Too large either way, or not a valid zstd frame.
pub fn uncompressed(bytes: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, IndexError> {
    if !bytes.starts_with(&ZSTD_MAGIC) {
        return Ok(std::borrow::Cow::Borrowed(bytes));
    }
    if bytes.len() > MAX_INDEX_BYTES {
        return Err(IndexError::TooLarge { size: bytes.len() });
    }
    // The frame header says how large it claims to be: allocate that, never more than allowed.
    let claimed = zstd::zstd_safe::get_frame_content_size(bytes)
        .map_err(|_| IndexError::Compressed("bad zstd frame header".to_owned()))?;
    let capacity = match claimed {
        Some(size) if size > MAX_INDEX_BYTES as u64 => {
            return Err(IndexError::TooLarge { size: usize::try_from(size).unwrap_or(usize::MAX) });
        }
        Some(size) => size as usize,
        None => MAX_INDEX_BYTES,
    };
    let out = zstd::bulk::decompress(bytes, capacity)
        .map_err(|e| IndexError::Compressed(e.to_string()))?;
    Ok(std::borrow::Cow::Owned(out))
}

/// Fewest body bytes one frame record takes (four 1-byte varints and the digest).
const MIN_FRAME_RECORD: u64 = 4 + SHA256_SIZE as u64;
/// Fewest body bytes one directory entry takes (tag, name length, a 1-byte name, one field).
const MIN_ENTRY_RECORD: u64 = 4;

/// Reads fields off the front of the index, naming the field and offset on failure.
#[derive(Debug)]
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], IndexError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(IndexError::Truncated { what, offset: self.pos })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn byte(&mut self, what: &'static str) -> Result<u8, IndexError> {
        Ok(self.take(1, what)?[0])
    }

    fn digest(&mut self, what: &'static str) -> Result<[u8; SHA256_SIZE], IndexError> {
        Ok(self.take(SHA256_SIZE, what)?.try_into().expect("took SHA256_SIZE bytes"))
    }

    fn varint(&mut self, what: &'static str) -> Result<u64, IndexError> {
        let start = self.pos;
        let bad = IndexError::Varint { what, offset: start };
        let mut value: u64 = 0;
        for i in 0..10 {
            let b = self.byte(what)?;
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(bad);
            }
            value |= bits << (7 * i);
            if b & 0x80 == 0 {
                // A last byte of 0 after others is a superfluous, non-canonical encoding.
                if b == 0 && i > 0 {
                    return Err(bad);
                }
                return Ok(value);
            }
        }
        Err(bad)
    }

    /// A length-prefixed string of at most `max` bytes.
    fn bytes(&mut self, what: &'static str, max: usize) -> Result<&'a [u8], IndexError> {
        let offset = self.pos;
        let len = self.varint(what)?;
        if len > max as u64 || len > self.left() {
            return Err(IndexError::TooMany { what, count: len, offset });
        }
        self.take(len as usize, what)
    }

    /// A count whose records take at least `min_record` bytes each, at most `max` of them.
    fn count(
        &mut self,
        what: &'static str,
        min_record: u64,
        max: usize,
    ) -> Result<u64, IndexError> {
        let offset = self.pos;
        let count = self.varint(what)?;
        if count > max as u64 || count.saturating_mul(min_record) > self.left() {
            return Err(IndexError::TooMany { what, count, offset });
        }
        Ok(count)
    }

    fn left(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }
}

/// An index file split into its parts, nothing of the body parsed yet.
#[derive(Debug)]
pub struct Envelope<'a> {
    /// The raw `name:base64` signatures.
    pub signatures: Vec<String>,
    /// SHA-256 of the body, the digest the signatures cover.
    pub body_digest: [u8; SHA256_SIZE],
    body: Cursor<'a>,
}

impl<'a> Envelope<'a> {
    /// Splits an index file: magic, signatures, body (the rest of the file). Bounded work: the
    /// body is only hashed, so a signature can be checked before the body is parsed.
    ///
    /// # Errors
    ///
    /// Too large, a bad magic, or a malformed signature section.
    pub fn split(bytes: &'a [u8]) -> Result<Self, IndexError> {
        if bytes.len() > MAX_INDEX_BYTES {
            return Err(IndexError::TooLarge { size: bytes.len() });
        }
        let mut c = Cursor { bytes, pos: 0 };
        if c.take(MAGIC.len(), "magic").ok() != Some(&MAGIC[..]) {
            return Err(IndexError::BadMagic);
        }
        let signatures = parse_signatures(&mut c)?;
        let body_digest: [u8; SHA256_SIZE] = Sha256::digest(&bytes[c.pos..]).into();
        Ok(Self { signatures, body_digest, body: c })
    }

    /// The store path and NarHash the body claims (its first fields), parsing nothing else.
    ///
    /// # Errors
    ///
    /// The body is too short for them, or the store path is malformed.
    pub fn claims(&self) -> Result<(StorePath, NarHash), IndexError> {
        let mut c = Cursor { bytes: self.body.bytes, pos: self.body.pos };
        let path = c.bytes("store path", "/nix/store/".len() + MAX_BASENAME_LEN)?;
        let store_path = StorePath::from_absolute_path(path).map_err(IndexError::StorePath)?;
        Ok((store_path, NarHash::from_digest(c.digest("NarHash")?)))
    }

    /// Parses the body (see the module docs for what is checked).
    ///
    /// # Errors
    ///
    /// Anything malformed or inconsistent, naming the field, node or frame.
    pub fn parse_body(self) -> Result<SignedIndex, IndexError> {
        let Envelope { signatures, body_digest, body: mut c } = self;
        let index = parse_body(&mut c)?;
        Ok(SignedIndex { index, body_digest, signatures })
    }
}

impl SignedIndex {
    /// Parses a whole index file, body included, trusting nothing: for tools and tests. A
    /// reader uses [`SignedIndex::open`], which checks the signature before parsing the body.
    ///
    /// # Errors
    ///
    /// Anything malformed or inconsistent, naming the field, node or frame.
    pub fn parse(bytes: &[u8]) -> Result<Self, IndexError> {
        Envelope::split(&uncompressed(bytes)?)?.parse_body()
    }

    /// The index file: magic, signatures, body.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        put_signatures(&mut out, &self.signatures);
        out.extend_from_slice(&super::encode_body(&self.index));
        out
    }

    /// [`SignedIndex::to_bytes`] as one zstd frame (level 3), as `storefs index` writes it:
    /// names and the tree compress, so a reader's first lookup waits for about a third fewer
    /// bytes (2.13 MB to 1.38 MB for the bench's 35,000-file path).
    #[must_use]
    pub fn to_compressed_bytes(&self) -> Vec<u8> {
        let plain = self.to_bytes();
        // Compressing a buffer in memory fails only on allocation failure.
        zstd::bulk::compress(&plain, 3).unwrap_or(plain)
    }
}

fn parse_body(c: &mut Cursor<'_>) -> Result<FileIndex, IndexError> {
    let path = c.bytes("store path", "/nix/store/".len() + MAX_BASENAME_LEN)?;
    let store_path = StorePath::from_absolute_path(path).map_err(IndexError::StorePath)?;
    let nar_hash = NarHash::from_digest(c.digest("NarHash")?);
    let nar_size = c.varint("NarSize")?;
    if nar_size == 0 {
        return Err(IndexError::ZeroNarSize);
    }
    let code = c.byte("nar file encoding")?;
    let encoding = NarEncoding::from_code(code).ok_or(IndexError::UnknownEncoding(code))?;
    let file_size = c.varint("nar file size")?;
    let file_hash = NarHash::from_digest(c.digest("nar file hash")?);
    let nar_file = NarFile { encoding, size: file_size, hash: file_hash };
    let frames = parse_frames(c, nar_size, file_size)?;
    let nodes = parse_tree(c, nar_size)?;
    let (warm, warm_paths) = parse_sections(c, &nodes, &store_path)?;
    Ok(FileIndex { store_path, nar_hash, nar_size, nar_file, frames, nodes, warm, warm_paths })
}

/// The sections after the tree, to the end of the body: each a tag byte (strictly increasing,
/// from 1) and a length-prefixed payload. Returns the warm list and the warm paths (each empty
/// without its section); a section of a tag this version does not know is skipped, as its
/// length says.
fn parse_sections(
    c: &mut Cursor<'_>,
    nodes: &[IndexNode],
    own: &StorePath,
) -> Result<(Vec<WarmFile>, Vec<StorePath>), IndexError> {
    let mut warm = Vec::new();
    let mut warm_paths = Vec::new();
    let mut last = 0u8;
    while c.left() > 0 {
        let offset = c.pos;
        let tag = c.byte("section tag")?;
        if tag <= last {
            return Err(IndexError::SectionOrder { tag, offset });
        }
        last = tag;
        let payload = c.bytes("section", MAX_INDEX_BYTES)?;
        let begin = c.pos - payload.len();
        let mut section = Cursor { bytes: &c.bytes[..c.pos], pos: begin };
        match tag {
            SECTION_WARM => warm = parse_warm(&mut section, nodes)?,
            SECTION_WARM_PATHS => warm_paths = parse_warm_paths(&mut section, own)?,
            _ => continue,
        }
        if section.left() > 0 {
            let count = section.left() as usize;
            return Err(IndexError::Trailing { count, offset: section.pos });
        }
    }
    Ok((warm, warm_paths))
}

/// The warm paths' payload: a count, then that many store paths (absolute), each named once
/// and none the index's own.
fn parse_warm_paths(c: &mut Cursor<'_>, own: &StorePath) -> Result<Vec<StorePath>, IndexError> {
    let max_len = "/nix/store/".len() + MAX_BASENAME_LEN;
    let count = c.count("warm paths", 2, MAX_WARM_PATHS)?;
    let mut paths: Vec<StorePath> = Vec::with_capacity(count as usize);
    let mut seen = std::collections::HashSet::new();
    for entry in 0..count as usize {
        let raw = c.bytes("warm path", max_len)?;
        let bad = |why: String| IndexError::BadWarmPath { entry, why };
        let path = StorePath::from_absolute_path(raw).map_err(|e| bad(e.to_string()))?;
        if path == *own {
            return Err(bad("the index's own path".to_owned()));
        }
        if !seen.insert(path.hash_part()) {
            return Err(bad(format!("{} listed twice", path.to_absolute_path())));
        }
        paths.push(path);
    }
    Ok(paths)
}

/// The warm list's payload: a count, then that many files, each a node id (a regular file,
/// named once) and its rank as the step from the rank before (from 0; at least 1 after the
/// first entry, so ranks strictly increase).
fn parse_warm(c: &mut Cursor<'_>, nodes: &[IndexNode]) -> Result<Vec<WarmFile>, IndexError> {
    let count = c.count("warm list", 2, nodes.len())?;
    let mut rank = 0u64;
    let mut seen = vec![0u64; nodes.len().div_ceil(64)];
    let mut warm = Vec::with_capacity(count as usize);
    for entry in 0..count as usize {
        let node = c.varint("warm list node")?;
        let step = c.varint("warm list rank")?;
        let bad = |why| IndexError::BadWarm { entry, node, why };
        rank = match rank.checked_add(step) {
            Some(next) if step > 0 || entry == 0 => next,
            _ => return Err(bad("rank not above the one before")),
        };
        let Some(found) = nodes.get(usize::try_from(node).unwrap_or(usize::MAX)) else {
            return Err(bad("no such node"));
        };
        if !matches!(found.kind, NodeKind::File(_)) {
            return Err(bad("not a regular file"));
        }
        let (word, bit) = (node as usize / 64, 1u64 << (node % 64));
        if seen[word] & bit != 0 {
            return Err(bad("listed twice"));
        }
        seen[word] |= bit;
        warm.push(WarmFile { node: node as NodeId, rank });
    }
    Ok(warm)
}

fn parse_frames(
    c: &mut Cursor<'_>,
    nar_size: u64,
    file_size: u64,
) -> Result<Vec<Frame>, IndexError> {
    let count = c.count("frame count", MIN_FRAME_RECORD, MAX_FRAMES)?;
    let mut frames = Vec::with_capacity(count as usize);
    let (mut file_end, mut nar_end) = (0u64, 0u64);
    for i in 0..count as usize {
        let file_offset = c.varint("frame file offset")?;
        let file_len = c.varint("frame file length")?;
        let nar_offset = c.varint("frame nar offset")?;
        let nar_len = c.varint("frame nar length")?;
        let digest = c.digest("frame digest")?;
        for (what, found, expected) in
            [("file", file_offset, file_end), ("nar", nar_offset, nar_end)]
        {
            if found != expected {
                return Err(IndexError::FrameNotContiguous { frame: i, what, found, expected });
            }
        }
        for (what, len, max) in
            [("file", file_len, seekable::MAX_FRAME_LEN), ("nar", nar_len, MAX_FRAME_BYTES)]
        {
            if len == 0 || len > max {
                return Err(IndexError::FrameLength { frame: i, what, len });
            }
        }
        file_end = file_offset.saturating_add(file_len);
        nar_end = nar_offset.saturating_add(nar_len);
        if nar_end > nar_size {
            return Err(IndexError::FramesOutOfRange { what: "nar", end: nar_end, size: nar_size });
        }
        if file_end > file_size {
            let what = "nar file";
            return Err(IndexError::FramesOutOfRange { what, end: file_end, size: file_size });
        }
        frames.push(Frame { file_offset, file_len, nar_offset, nar_len, digest });
    }
    if nar_end != nar_size {
        return Err(IndexError::FramesOutOfRange { what: "nar", end: nar_end, size: nar_size });
    }
    Ok(frames)
}

/// One directory whose entries are still being read.
struct OpenDir {
    id: NodeId,
    left: u64,
    prev: Vec<u8>,
}

fn parse_tree(c: &mut Cursor<'_>, nar_size: u64) -> Result<Vec<IndexNode>, IndexError> {
    let mut nodes: Vec<IndexNode> = Vec::new();
    let mut open: Vec<OpenDir> = Vec::new();
    let mut layout = NarLayout::new();
    let mut scratch = Vec::new();
    loop {
        let node = nodes.len();
        if node >= MAX_NODES {
            return Err(IndexError::TooMany { what: "nodes", count: node as u64, offset: c.pos });
        }
        let parent = if node == 0 {
            None
        } else {
            while open.last().is_some_and(|d| d.left == 0) {
                open.pop();
            }
            let Some(dir) = open.last_mut() else { break };
            dir.left -= 1;
            let offset = c.pos as u64;
            let name = c.bytes("entry name", MAX_NAME_LEN)?;
            validate_name(name, offset).map_err(|source| IndexError::BadName { node, source })?;
            if name <= dir.prev.as_slice() {
                let name = name.escape_ascii().to_string();
                return Err(IndexError::UnsortedName { node, name });
            }
            dir.prev = name.to_vec();
            Some((dir.id, name.to_vec()))
        };
        if open.len() > MAX_DEPTH {
            return Err(IndexError::TooDeep { node });
        }
        let tag_at = c.pos;
        let id = node as NodeId;
        let named = parent.as_ref().map(|(p, n)| (*p, n.as_slice()));
        scratch.clear();
        let kind = match c.byte("node tag")? {
            TAG_DIRECTORY => {
                let left = c.count("directory entries", MIN_ENTRY_RECORD, MAX_NODES)?;
                layout.start(id, named, Start::Directory, &mut scratch)?;
                open.push(OpenDir { id, left, prev: Vec::new() });
                NodeKind::Directory
            }
            tag @ (TAG_FILE | TAG_EXECUTABLE) => {
                let executable = tag == TAG_EXECUTABLE;
                let size = c.varint("file size")?;
                let digest = c.digest("file digest")?;
                let start = Start::File { executable, size };
                let nar_offset = layout.start(id, named, start, &mut scratch)?;
                NodeKind::File(FileNode { executable, size, digest, nar_offset })
            }
            TAG_SYMLINK => {
                let offset = c.pos as u64;
                let target = c.bytes("symlink target", MAX_TARGET_LEN)?;
                validate_target(target, offset)
                    .map_err(|source| IndexError::BadTarget { node, source })?;
                layout.start(id, named, Start::Symlink { target }, &mut scratch)?;
                NodeKind::Symlink { target: target.to_vec() }
            }
            tag => return Err(IndexError::BadTag { node, tag, offset: tag_at }),
        };
        if layout.position() > nar_size {
            let computed = layout.position();
            return Err(IndexError::TreeSize { computed, nar_size });
        }
        nodes.push(IndexNode { parent, kind });
        if node == 0 && open.is_empty() {
            break;
        }
    }
    scratch.clear();
    let computed = layout.finish(&mut scratch)?;
    if computed != nar_size {
        return Err(IndexError::TreeSize { computed, nar_size });
    }
    Ok(nodes)
}

fn parse_signatures(c: &mut Cursor<'_>) -> Result<Vec<String>, IndexError> {
    let offset = c.pos;
    let count = c.byte("signature count")?;
    if usize::from(count) > MAX_SIGNATURES {
        return Err(IndexError::TooMany { what: "signatures", count: count.into(), offset });
    }
    (0..usize::from(count))
        .map(|number| {
            let raw = c.bytes("signature", MAX_SIGNATURE_LEN)?;
            let text = std::str::from_utf8(raw);
            text.map(str::to_owned).map_err(|_| IndexError::BadSignatureText { number })
        })
        .collect()
}
