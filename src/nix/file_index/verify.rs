//! Trusting an index and the bytes it describes: signing, the signature and narinfo checks, a
//! frame's digest and decoding, a file's hash, and comparing the tree with a NAR.

use std::io::Read;

use sha2::{Digest, Sha256};

use super::decode::Envelope;
use super::{
    FileIndex, FileNode, IndexError, NarEncoding, SignedIndex, encode_body, fingerprint,
    tree_of_nar,
};
use crate::nix::hash::NarHash;
use crate::nix::nar::ParseError;
use crate::nix::narinfo::{Compression, NarInfo};
use crate::nix::seekable::{self, SeekableError};
use crate::nix::signature::{SigningKey, TrustedKeys};
use crate::nix::store_path::StorePath;

/// Why bytes fetched for a frame or a file were refused.
#[derive(Debug, thiserror::Error)]
pub enum FileCheckError {
    /// No such frame.
    #[error("no frame {0}")]
    NoSuchFrame(usize),
    /// The frame's bytes have another length or digest than the index records.
    #[error("frame {frame}: bytes do not match the index")]
    FrameDigest {
        /// The frame.
        frame: usize,
    },
    /// The frame does not decode to its recorded size.
    #[error("frame {frame}: {source}")]
    Decode {
        /// The frame.
        frame: usize,
        /// Why.
        #[source]
        source: SeekableError,
    },
    /// The frames given are not the ones the file lies in.
    #[error("file at nar offset {nar_offset}: needs frames {want:?} in order, got {got}")]
    WrongFrames {
        /// The file's NAR offset.
        nar_offset: u64,
        /// The frames it lies in.
        want: std::ops::Range<usize>,
        /// How many decoded frames were given, or the frame given out of order.
        got: usize,
    },
    /// The file's bytes do not hash to its recorded digest.
    #[error("file at nar offset {nar_offset}: contents do not match the index")]
    FileDigest {
        /// The file's NAR offset.
        nar_offset: u64,
    },
    /// The NAR the tree was compared with is malformed.
    #[error("nar: {0}")]
    Nar(#[source] ParseError),
    /// The NAR is another than the index's (NarHash).
    #[error("nar hash {found} is not the index's {expected}")]
    NarHash {
        /// What the NAR hashes to.
        found: NarHash,
        /// The index's NarHash.
        expected: NarHash,
    },
    /// The NAR's tree differs from the index's, first at this node.
    #[error("tree differs from the nar at node {node}")]
    TreeDiffers {
        /// The first differing node (or the shorter tree's length).
        node: usize,
    },
}

impl SignedIndex {
    /// Signs `index` with `key`: the body digest, and one signature over [`fingerprint`].
    #[must_use]
    pub fn sign(index: FileIndex, key: &SigningKey) -> Self {
        let body_digest: [u8; 32] = Sha256::digest(encode_body(&index)).into();
        let message = fingerprint(&index.store_path, &index.nar_hash, &body_digest);
        let signatures = vec![key.sign_message(message.as_bytes())];
        Self { index, body_digest, signatures }
    }

    /// Reads an index file for the path `info` describes, trusting nothing before its
    /// signature: the file is split and only the body's first fields (store path, NarHash) are
    /// read; they must be the narinfo's; a signature by one of `keys` over the fingerprint of
    /// the narinfo's store path and NarHash and the body's digest must verify; only then is the
    /// body parsed, and its NarSize and NAR file (`Compression`, `FileHash`, `FileSize`) must be
    /// the narinfo's. `info` must itself be verified already. Returns the index and the name of
    /// the key that vouched for it.
    ///
    /// # Errors
    ///
    /// A malformed file, no trusted signature, or any field that differs from the narinfo.
    pub fn open(
        bytes: &[u8],
        keys: &TrustedKeys,
        info: &NarInfo,
    ) -> Result<(FileIndex, String), IndexError> {
        let bytes = super::decode::uncompressed(bytes)?;
        let envelope = Envelope::split(&bytes)?;
        let (store_path, nar_hash) = envelope.claims()?;
        check_claims(&store_path, &nar_hash, info)?;
        let key = check_signature(&envelope.signatures, &envelope.body_digest, keys, info)?;
        let index = envelope.parse_body()?.index;
        check_nar(&index, info)?;
        Ok((index, key))
    }

    /// [`SignedIndex::open`]'s checks for an index parsed already (by [`SignedIndex::parse`]).
    ///
    /// # Errors
    ///
    /// No trusted signature, or any field that differs from the narinfo.
    pub fn verify(
        self,
        keys: &TrustedKeys,
        info: &NarInfo,
    ) -> Result<(FileIndex, String), IndexError> {
        check_claims(&self.index.store_path, &self.index.nar_hash, info)?;
        let key = check_signature(&self.signatures, &self.body_digest, keys, info)?;
        check_nar(&self.index, info)?;
        Ok((self.index, key))
    }
}

/// The index is for the narinfo's store path and NarHash.
fn check_claims(
    store_path: &StorePath,
    nar_hash: &NarHash,
    info: &NarInfo,
) -> Result<(), IndexError> {
    if *store_path != info.store_path {
        return Err(IndexError::StorePathDiffers {
            index: store_path.to_string(),
            narinfo: info.store_path.to_string(),
        });
    }
    if *nar_hash != info.nar_hash {
        return Err(IndexError::NarHashDiffers { index: *nar_hash, narinfo: info.nar_hash });
    }
    Ok(())
}

/// A signature by a trusted key over the fingerprint of the narinfo's store path and NarHash
/// and `body_digest`; returns the key's name.
fn check_signature(
    signatures: &[String],
    body_digest: &[u8; 32],
    keys: &TrustedKeys,
    info: &NarInfo,
) -> Result<String, IndexError> {
    if signatures.is_empty() {
        return Err(IndexError::Unsigned);
    }
    let message = fingerprint(&info.store_path, &info.nar_hash, body_digest);
    keys.verify_message(message.as_bytes(), signatures).map_err(IndexError::Signature)
}

/// The parsed index's NarSize and NAR file are the narinfo's.
fn check_nar(ix: &FileIndex, info: &NarInfo) -> Result<(), IndexError> {
    if ix.nar_size != info.nar_size {
        return Err(IndexError::NarSizeDiffers { index: ix.nar_size, narinfo: info.nar_size });
    }
    check_nar_file(ix, info)
}

/// The narinfo's `Compression`, `FileHash` and `FileSize` name the file the index describes.
fn check_nar_file(ix: &FileIndex, info: &NarInfo) -> Result<(), IndexError> {
    let differs = |field, index: String, narinfo: Option<String>| IndexError::NarFileDiffers {
        field,
        index,
        narinfo: narinfo.unwrap_or_else(|| "-".to_owned()),
    };
    let NarEncoding::SeekableZstd = ix.nar_file.encoding;
    if info.compression != Compression::Zstd {
        let narinfo = Some(info.compression.to_string());
        return Err(differs("Compression", "zstd".to_owned(), narinfo));
    }
    let file_hash = info.file_hash.as_deref().and_then(|h| NarHash::parse(h).ok());
    if file_hash != Some(ix.nar_file.hash) {
        let index = ix.nar_file.hash.to_string();
        return Err(differs("FileHash", index, info.file_hash.clone()));
    }
    if info.file_size.is_some_and(|s| s != ix.nar_file.size) {
        let narinfo = info.file_size.map(|s| s.to_string());
        return Err(differs("FileSize", ix.nar_file.size.to_string(), narinfo));
    }
    Ok(())
}

impl FileIndex {
    /// Checks the bytes fetched for frame `frame` (its exact range of the NAR file) against
    /// their digest, then decodes them to exactly the frame's NAR length.
    ///
    /// # Errors
    ///
    /// Another length or digest, or a frame that does not decode to its size.
    pub fn decode_frame(&self, frame: usize, bytes: &[u8]) -> Result<Vec<u8>, FileCheckError> {
        let f = self.frames.get(frame).ok_or(FileCheckError::NoSuchFrame(frame))?;
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if bytes.len() as u64 != f.file_len || digest != f.digest {
            return Err(FileCheckError::FrameDigest { frame });
        }
        seekable::decompress_frame(bytes, f.nar_len)
            .map_err(|source| FileCheckError::Decode { frame, source })
    }

    /// The contents of `file`, cut from `decoded` (the decoded frames [`Self::frames_of`] gives
    /// for it, in order) and checked against the file's digest.
    ///
    /// # Errors
    ///
    /// The wrong frames, or contents that do not hash to the digest.
    pub fn file_contents(
        &self,
        file: &FileNode,
        decoded: &[impl AsRef<[u8]>],
    ) -> Result<Vec<u8>, FileCheckError> {
        let mut stream = self.file_stream(file);
        if decoded.len() != stream.frames.len() {
            return Err(stream.wrong(decoded.len()));
        }
        let mut out = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0));
        for (frame, bytes) in stream.frames.clone().zip(decoded) {
            out.extend_from_slice(stream.piece(frame, bytes.as_ref())?);
        }
        stream.finish()?;
        Ok(out)
    }

    /// A check of `file`'s contents fed one decoded frame at a time, in order: the file's bytes
    /// never need to be in memory at once.
    #[must_use]
    pub fn file_stream<'a>(&'a self, file: &'a FileNode) -> FileStream<'a> {
        let frames = self.frames_of(file);
        FileStream { index: self, file, next: frames.start, frames, hasher: Sha256::new(), len: 0 }
    }

    /// Checks that `nar` is the index's NAR (NarHash) and that its tree, file digests included,
    /// is the index's.
    ///
    /// # Errors
    ///
    /// A malformed NAR, another NarHash, or the first node that differs.
    pub fn check_tree(&self, nar: impl Read) -> Result<(), FileCheckError> {
        let (nodes, found) = tree_of_nar(nar, self.nar_size).map_err(FileCheckError::Nar)?;
        if found != self.nar_hash {
            return Err(FileCheckError::NarHash { found, expected: self.nar_hash });
        }
        match nodes.iter().zip(&self.nodes).position(|(a, b)| a != b) {
            Some(node) => Err(FileCheckError::TreeDiffers { node }),
            None if nodes.len() != self.nodes.len() => {
                Err(FileCheckError::TreeDiffers { node: nodes.len().min(self.nodes.len()) })
            }
            None => Ok(()),
        }
    }
}

/// A file's contents checked frame by frame ([`FileIndex::file_stream`]): each decoded frame,
/// in order, gives the file's bytes in it ([`FileStream::piece`]); [`FileStream::finish`]
/// compares the digest. Nothing is vouched for before `finish` returns Ok.
#[derive(Debug)]
pub struct FileStream<'a> {
    index: &'a FileIndex,
    file: &'a FileNode,
    /// The frames the file lies in.
    frames: std::ops::Range<usize>,
    /// The frame expected next.
    next: usize,
    hasher: Sha256,
    len: u64,
}

impl FileStream<'_> {
    /// The frames the file lies in, in the order they must be fed.
    #[must_use]
    pub fn frames(&self) -> std::ops::Range<usize> {
        self.frames.clone()
    }

    /// The file's bytes within `decoded`, the decoded bytes of frame `frame`, which must be the
    /// next of its frames; hashed on the way.
    ///
    /// # Errors
    ///
    /// Another frame than the next, or decoded bytes of another length than the frame's.
    pub fn piece<'b>(
        &mut self,
        frame: usize,
        decoded: &'b [u8],
    ) -> Result<&'b [u8], FileCheckError> {
        let f =
            self.index.frames.get(frame).filter(|_| frame == self.next && frame < self.frames.end);
        let Some(f) = f else { return Err(self.wrong(frame)) };
        // Where the file's bytes lie in this frame; a hand-built index whose frames do not
        // cover the file gets an error here, never a panic.
        let end = self.file.nar_offset.saturating_add(self.file.size);
        let from = self.file.nar_offset.max(f.nar_offset) - f.nar_offset;
        let to = end.min(f.nar_range().end).saturating_sub(f.nar_offset);
        let piece = usize::try_from(from)
            .ok()
            .zip(usize::try_from(to).ok())
            .and_then(|(from, to)| decoded.get(from..to))
            .filter(|_| decoded.len() as u64 == f.nar_len);
        let Some(piece) = piece else { return Err(self.wrong(frame)) };
        self.hasher.update(piece);
        self.len += piece.len() as u64;
        self.next += 1;
        Ok(piece)
    }

    /// Ok when every frame was fed and the bytes hash to the file's digest.
    ///
    /// # Errors
    ///
    /// Frames missing, or contents that do not hash to the digest.
    pub fn finish(self) -> Result<(), FileCheckError> {
        if self.next != self.frames.end {
            return Err(self.wrong(self.next));
        }
        let digest: [u8; 32] = self.hasher.finalize().into();
        if self.len != self.file.size || digest != self.file.digest {
            return Err(FileCheckError::FileDigest { nar_offset: self.file.nar_offset });
        }
        Ok(())
    }

    /// The error for frames that are not the file's, in order.
    fn wrong(&self, got: usize) -> FileCheckError {
        FileCheckError::WrongFrames { nar_offset: self.file.nar_offset, want: self.frames(), got }
    }
}
