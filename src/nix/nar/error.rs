//! The error type of the NAR reader: one variant per way an archive can be malformed.

use std::io;

use super::reader::{NodeId, VisitError};
use super::wire::{MAX_DEPTH, MAX_NAME_LEN, MAX_TAG_LEN, MAX_TARGET_LEN};

/// Why a NAR was rejected. Offsets are byte positions from the start of the NAR.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The underlying reader failed (other than by ending early).
    #[error("i/o error reading nar: {0}")]
    Io(#[source] io::Error),
    /// A visitor callback returned an error.
    #[error("nar visitor failed: {0}")]
    Visitor(#[source] VisitError),
    /// The archive does not start with `nix-archive-1`.
    #[error("not a nar: expected magic \"nix-archive-1\", found {found}")]
    BadMagic {
        /// What was found instead, escaped.
        found: String,
    },
    /// The input ended before the archive did.
    #[error("nar truncated at byte {offset}")]
    Truncated {
        /// Where the missing bytes should have been.
        offset: u64,
    },
    /// The archive needs more bytes than the caller's size limit.
    #[error("nar reads past its size limit of {limit} bytes at byte {offset}")]
    LimitExceeded {
        /// Where the read would have crossed the limit.
        offset: u64,
        /// The limit the caller passed.
        limit: u64,
    },
    /// A length prefix claims more bytes than remain under the caller's size limit.
    #[error(
        "length prefix {len} at byte {offset} exceeds the {remaining} bytes left under the nar size limit"
    )]
    LengthExceedsLimit {
        /// Where the length prefix starts.
        offset: u64,
        /// The claimed length.
        len: u64,
        /// Bytes left under the limit after the prefix.
        remaining: u64,
    },
    /// A string where a token is expected is longer than [`MAX_TAG_LEN`].
    #[error("token at byte {offset} is {len} bytes long, more than the {MAX_TAG_LEN} allowed")]
    TagTooLong {
        /// Where the length prefix starts.
        offset: u64,
        /// The claimed length.
        len: u64,
    },
    /// A token other than the grammar allows.
    #[error("expected {expected} at byte {offset}, found \"{}\"", .found.escape_ascii())]
    UnexpectedTag {
        /// Where the token starts.
        offset: u64,
        /// What the grammar allows here.
        expected: String,
        /// The token found.
        found: Vec<u8>,
    },
    /// A node type other than `regular`, `symlink` or `directory`.
    #[error("unknown node type \"{}\" at byte {offset}", .found.escape_ascii())]
    UnknownType {
        /// Where the type starts.
        offset: u64,
        /// The type found.
        found: Vec<u8>,
    },
    /// Padding after a string is not all zero.
    #[error("non-zero padding after the string at byte {offset}")]
    NonZeroPadding {
        /// Where the padded string starts.
        offset: u64,
    },
    /// Bytes follow the root node's closing `)`.
    #[error("trailing data after the end of the nar at byte {offset}")]
    TrailingData {
        /// Where the trailing data starts.
        offset: u64,
    },
    /// `executable` appears after `contents` in a regular file.
    #[error("\"executable\" after \"contents\" at byte {offset}")]
    ExecutableAfterContents {
        /// Where the misplaced token starts.
        offset: u64,
    },
    /// The value after `executable` is not the empty string.
    #[error("\"executable\" marker at byte {offset} has a {len}-byte value, expected an empty one")]
    NonEmptyExecutable {
        /// Where the value's length prefix starts.
        offset: u64,
        /// Its claimed length.
        len: u64,
    },
    /// A directory entry has `node` before `name`, or `name` after `node`.
    #[error("\"name\" after \"node\" in the directory entry at byte {offset}")]
    NameAfterNode {
        /// Where the misplaced token starts.
        offset: u64,
    },
    /// An entry name is the empty string.
    #[error("empty entry name at byte {offset}")]
    EmptyName {
        /// Where the name starts.
        offset: u64,
    },
    /// An entry name is `.`.
    #[error("entry name \".\" at byte {offset}")]
    NameIsDot {
        /// Where the name starts.
        offset: u64,
    },
    /// An entry name is `..`.
    #[error("entry name \"..\" at byte {offset}")]
    NameIsDotDot {
        /// Where the name starts.
        offset: u64,
    },
    /// An entry name contains `/`.
    #[error("entry name \"{}\" contains '/'", .name.escape_ascii())]
    NameContainsSlash {
        /// The name.
        name: Vec<u8>,
    },
    /// An entry name contains a NUL byte.
    #[error("entry name \"{}\" contains a nul byte", .name.escape_ascii())]
    NameContainsNul {
        /// The name.
        name: Vec<u8>,
    },
    /// An entry name is longer than [`MAX_NAME_LEN`].
    #[error(
        "entry name at byte {offset} is {len} bytes long, more than the {MAX_NAME_LEN} allowed"
    )]
    NameTooLong {
        /// Where the name's length prefix starts.
        offset: u64,
        /// Its claimed length.
        len: u64,
    },
    /// Two entries of one directory have the same name.
    #[error("duplicate entry name \"{}\"", .name.escape_ascii())]
    DuplicateName {
        /// The repeated name.
        name: Vec<u8>,
    },
    /// An entry name sorts before the previous one in its directory.
    #[error("entry name \"{}\" is not sorted after \"{}\"", .name.escape_ascii(), .prev.escape_ascii())]
    UnsortedName {
        /// The previous entry's name.
        prev: Vec<u8>,
        /// The out-of-order name.
        name: Vec<u8>,
    },
    /// A symlink target is the empty string.
    #[error("empty symlink target at byte {offset}")]
    EmptyTarget {
        /// Where the target starts.
        offset: u64,
    },
    /// A symlink target contains a NUL byte.
    #[error("symlink target \"{}\" contains a nul byte", .target.escape_ascii())]
    TargetContainsNul {
        /// The target.
        target: Vec<u8>,
    },
    /// A symlink target is longer than [`MAX_TARGET_LEN`].
    #[error(
        "symlink target at byte {offset} is {len} bytes long, more than the {MAX_TARGET_LEN} allowed"
    )]
    TargetTooLong {
        /// Where the target's length prefix starts.
        offset: u64,
        /// Its claimed length.
        len: u64,
    },
    /// Directories nest deeper than [`MAX_DEPTH`].
    #[error("node at byte {offset} is nested more than {MAX_DEPTH} directories deep")]
    TooDeep {
        /// Where the too-deep node starts.
        offset: u64,
    },
    /// More nodes than a [`NodeId`] can number.
    #[error("nar has more than {} nodes", NodeId::MAX)]
    TooManyNodes,
}
