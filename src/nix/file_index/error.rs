//! Why an index was refused: malformed, inconsistent, or not vouched for.

use crate::nix::hash::NarHash;
use crate::nix::nar::{ParseError, layout::LayoutError};
use crate::nix::signature::VerifyError;
use crate::nix::store_path;

/// Why an index was refused. Offsets are byte positions in the index file.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The file is larger than [`super::MAX_INDEX_BYTES`].
    #[error("index is {size} bytes, more than the {} allowed", super::MAX_INDEX_BYTES)]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// The file does not start with the magic.
    #[error("not a storefs index (bad magic)")]
    BadMagic,
    /// The file is zstd-compressed and does not decompress to at most
    /// [`super::MAX_INDEX_BYTES`].
    #[error("compressed index does not decompress: {0}")]
    Compressed(String),
    /// The file ended inside a field.
    #[error("index truncated in {what} at byte {offset}")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where.
        offset: usize,
    },
    /// A number is longer than 10 bytes, overflows `u64`, or has a superfluous zero byte.
    #[error("bad varint in {what} at byte {offset}")]
    Varint {
        /// The field being read.
        what: &'static str,
        /// Where.
        offset: usize,
    },
    /// A count or length larger than the rest of the file (or the format) can hold.
    #[error("{what} {count} at byte {offset} is more than the index can hold")]
    TooMany {
        /// What was counted.
        what: &'static str,
        /// The claimed count.
        count: u64,
        /// Where.
        offset: usize,
    },
    /// The store path is malformed.
    #[error("bad store path: {0}")]
    StorePath(#[source] store_path::Error),
    /// NarSize is zero.
    #[error("NarSize is zero")]
    ZeroNarSize,
    /// An unknown NAR file encoding.
    #[error("unknown nar file encoding {0}")]
    UnknownEncoding(u8),
    /// A frame is empty, or does not start where the previous one ended (a gap or an overlap).
    #[error(
        "frame {frame}: {what} offset {found}, expected {expected} (frames must be contiguous)"
    )]
    FrameNotContiguous {
        /// The frame.
        frame: usize,
        /// `file` or `nar`.
        what: &'static str,
        /// Its offset.
        found: u64,
        /// Where the previous frame ended.
        expected: u64,
    },
    /// A frame with no bytes, or more than a reader may decode at once.
    #[error("frame {frame}: {what} length {len} is out of range")]
    FrameLength {
        /// The frame.
        frame: usize,
        /// `file` or `nar`.
        what: &'static str,
        /// The length.
        len: u64,
    },
    /// The frames end elsewhere than the NAR, or past the NAR file.
    #[error("frames end at {what} byte {end}, but the {what} has {size} bytes")]
    FramesOutOfRange {
        /// `nar` or `nar file`.
        what: &'static str,
        /// Where the last frame ends.
        end: u64,
        /// The size they must fit.
        size: u64,
    },
    /// An unknown node tag.
    #[error("node {node}: unknown tag {tag} at byte {offset}")]
    BadTag {
        /// The node.
        node: usize,
        /// The tag.
        tag: u8,
        /// Where.
        offset: usize,
    },
    /// An entry name that is empty, `.`, `..`, too long, or holds `/` or NUL.
    #[error("node {node}: bad name: {source}")]
    BadName {
        /// The node.
        node: usize,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// Entry names not in strictly increasing byte order (unsorted, or a duplicate).
    #[error("node {node}: name {name:?} is not after its predecessor")]
    UnsortedName {
        /// The node.
        node: usize,
        /// The name, escaped.
        name: String,
    },
    /// A symlink target that is empty, too long, or holds NUL.
    #[error("node {node}: bad symlink target: {source}")]
    BadTarget {
        /// The node.
        node: usize,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// Nesting deeper than a NAR allows.
    #[error("node {node} is nested deeper than {} directories", crate::nix::nar::wire::MAX_DEPTH)]
    TooDeep {
        /// The node.
        node: usize,
    },
    /// The tree cannot be a NAR.
    #[error("tree: {0}")]
    Layout(#[from] LayoutError),
    /// The tree serialises to another size than NarSize.
    #[error("tree makes a nar of {computed} bytes, NarSize is {nar_size}")]
    TreeSize {
        /// What the tree gives.
        computed: u64,
        /// What the index claims.
        nar_size: u64,
    },
    /// Bytes after the signature section.
    #[error("{count} trailing bytes at byte {offset}")]
    Trailing {
        /// How many.
        count: usize,
        /// Where.
        offset: usize,
    },
    /// A section after the tree whose tag is 0 or not above the one before it.
    #[error("section tag {tag} at byte {offset} is out of order (tags increase from 1)")]
    SectionOrder {
        /// The tag.
        tag: u8,
        /// Where.
        offset: usize,
    },
    /// An entry of the warm list that names no regular file, or one named before.
    #[error("warm list entry {entry}: node {node}: {why}")]
    BadWarm {
        /// Its position in the list.
        entry: usize,
        /// The node it names.
        node: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// An entry of the warm paths that is no store path, the index's own, or one named before.
    #[error("warm path {entry}: {why}")]
    BadWarmPath {
        /// Its position in the list.
        entry: usize,
        /// What is wrong.
        why: String,
    },
    /// A signature that is too long or not UTF-8.
    #[error("signature {number} is malformed")]
    BadSignatureText {
        /// Its position, from 0.
        number: usize,
    },
    /// The index carries no signature.
    #[error("index is not signed")]
    Unsigned,
    /// No signature by a trusted key verifies.
    #[error("index signature: {0}")]
    Signature(#[source] VerifyError),
    /// The index is for another store path than the narinfo.
    #[error("index is for {index}, the narinfo for {narinfo}")]
    StorePathDiffers {
        /// The index's.
        index: String,
        /// The narinfo's.
        narinfo: String,
    },
    /// The index's NarHash differs from the narinfo's.
    #[error("index NarHash {index} differs from the narinfo's {narinfo}")]
    NarHashDiffers {
        /// The index's.
        index: NarHash,
        /// The narinfo's.
        narinfo: NarHash,
    },
    /// The index's NarSize differs from the narinfo's.
    #[error("index NarSize {index} differs from the narinfo's {narinfo}")]
    NarSizeDiffers {
        /// The index's.
        index: u64,
        /// The narinfo's.
        narinfo: u64,
    },
    /// The index describes another NAR file than the narinfo's `FileHash`/`FileSize`/
    /// `Compression`.
    #[error("index describes another nar file than the narinfo: {field} {index} vs {narinfo}")]
    NarFileDiffers {
        /// The narinfo field.
        field: &'static str,
        /// The index's value.
        index: String,
        /// The narinfo's value (`-` when absent).
        narinfo: String,
    },
}
