//! The NAR wire format: tokens, limits and padding arithmetic. No I/O lives here.
//!
//! A NAR ("Nix ARchive") is a sequence of *strings*. Every string is encoded as
//!
//! ```text
//! str(s) = u64_le(len(s)) ++ s ++ zero bytes up to the next multiple of 8
//! ```
//!
//! so the stream is always 8-byte aligned. The archive is a tree of nodes:
//!
//! ```text
//! nar       = str("nix-archive-1") node
//! node      = str("(") str("type") body str(")")
//! body      = str("regular") [ str("executable") str("") ] str("contents") str(CONTENTS)
//!           | str("symlink") str("target") str(TARGET)
//!           | str("directory") { entry }
//! entry     = str("entry") str("(") str("name") str(NAME) str("node") node str(")")
//! ```
//!
//! Side conditions, all enforced by [`super::reader`] (Nix enforces the same ones since 2.24):
//!
//! - `NAME` is 1..=[`MAX_NAME_LEN`] bytes, is not `.` or `..`, and contains neither `/` nor NUL.
//! - Entry names inside one directory are strictly increasing in byte order (so no duplicates).
//! - `TARGET` is 1..=[`MAX_TARGET_LEN`] bytes and contains no NUL. Absolute and climbing targets
//!   (`/etc/shadow`, `../..`) are legitimate data.
//! - Every string where a token is expected is at most [`MAX_TAG_LEN`] bytes.
//! - Padding bytes are zero, and nothing follows the root node's `)`.
//! - Nesting is at most [`MAX_DEPTH`] directories deep (see its doc for how depth is counted).
//!
//! `CONTENTS` is the only unbounded string; readers stream it and never buffer it.

/// The magic string that opens every NAR.
pub const NAR_MAGIC: &[u8] = b"nix-archive-1";
/// Opens a node or a directory entry.
pub const TOK_OPEN: &[u8] = b"(";
/// Closes a node or a directory entry.
pub const TOK_CLOSE: &[u8] = b")";
/// Precedes the node type.
pub const TOK_TYPE: &[u8] = b"type";
/// Node type of a regular file.
pub const TOK_REGULAR: &[u8] = b"regular";
/// Marks a regular file as executable; always followed by an empty string.
pub const TOK_EXECUTABLE: &[u8] = b"executable";
/// Precedes the contents of a regular file.
pub const TOK_CONTENTS: &[u8] = b"contents";
/// Node type of a symbolic link.
pub const TOK_SYMLINK: &[u8] = b"symlink";
/// Precedes the target of a symbolic link.
pub const TOK_TARGET: &[u8] = b"target";
/// Node type of a directory.
pub const TOK_DIRECTORY: &[u8] = b"directory";
/// Opens one directory entry.
pub const TOK_ENTRY: &[u8] = b"entry";
/// Precedes the name of a directory entry.
pub const TOK_NAME: &[u8] = b"name";
/// Precedes the node of a directory entry.
pub const TOK_NODE: &[u8] = b"node";

/// Size of a length prefix, and the alignment of every string.
pub const WORD_LEN: usize = 8;
/// Longest string accepted where a token (or the magic) is expected.
pub const MAX_TAG_LEN: usize = 32;
/// Longest directory entry name (`NAME_MAX` on Linux).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target (`PATH_MAX - 1` on Linux).
pub const MAX_TARGET_LEN: usize = 4095;
/// Deepest allowed nesting. The root node has depth 0 and each entry is one deeper than its
/// directory, so a node at depth 64 (inside 64 directories) is accepted and one at 65 is not.
pub const MAX_DEPTH: usize = 64;

/// Number of zero bytes that follow a string of `len` bytes.
pub const fn padding_len(len: u64) -> usize {
    // The cast is lossless: the value is below 8.
    ((WORD_LEN as u64 - len % WORD_LEN as u64) % WORD_LEN as u64) as usize
}

/// Bytes a string of `len` bytes occupies after its length prefix (contents plus padding), or
/// `None` if that overflows `u64`.
pub const fn padded_len(len: u64) -> Option<u64> {
    len.checked_add(padding_len(len) as u64)
}

/// Bytes `str(s)` occupies on the wire for a string of `len` bytes, or `None` on overflow.
pub const fn encoded_len(len: u64) -> Option<u64> {
    match padded_len(len) {
        Some(n) => n.checked_add(WORD_LEN as u64),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_rounds_up_to_eight() {
        let cases = [(0, 0), (1, 7), (7, 1), (8, 0), (9, 7), (13, 3), (16, 0)];
        for (len, want) in cases {
            assert_eq!(padding_len(len), want, "len {len}");
        }
    }

    #[test]
    fn padded_len_detects_overflow() {
        assert_eq!(padded_len(u64::MAX), None);
        assert_eq!(padded_len(u64::MAX - 7), Some(u64::MAX - 7));
        assert_eq!(padded_len(5), Some(8));
        assert_eq!(encoded_len(13), Some(24));
        assert_eq!(encoded_len(u64::MAX - 7), None);
    }

    #[test]
    fn tokens_fit_the_tag_limit() {
        for tok in [
            NAR_MAGIC,
            TOK_OPEN,
            TOK_CLOSE,
            TOK_TYPE,
            TOK_REGULAR,
            TOK_EXECUTABLE,
            TOK_CONTENTS,
            TOK_SYMLINK,
            TOK_TARGET,
            TOK_DIRECTORY,
            TOK_ENTRY,
            TOK_NAME,
            TOK_NODE,
        ] {
            assert!(tok.len() <= MAX_TAG_LEN);
        }
    }
}
