//! NAR writer: serialises an in-memory [`Node`] tree exactly as given, plus raw helpers for
//! hand-made (including hostile) streams. It never validates or sorts; see [`Node::sorted`].

use std::io::{self, Write};

use super::wire::{
    NAR_MAGIC, TOK_CLOSE, TOK_CONTENTS, TOK_DIRECTORY, TOK_ENTRY, TOK_EXECUTABLE, TOK_NAME,
    TOK_NODE, TOK_OPEN, TOK_REGULAR, TOK_SYMLINK, TOK_TARGET, TOK_TYPE, padding_len,
};

/// An in-memory file system object, the tree a NAR serialises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A regular file.
    File {
        /// Whether the file is executable (mode 0555 rather than 0444 in the store).
        executable: bool,
        /// The file's bytes.
        contents: Vec<u8>,
    },
    /// A symbolic link; the target is stored verbatim and never resolved.
    Symlink {
        /// The link target.
        target: Vec<u8>,
    },
    /// A directory: `(name, node)` entries, written in the order given.
    Directory(Vec<(Vec<u8>, Node)>),
}

impl Node {
    /// Serialises this tree as a NAR (see [`write_nar`]).
    pub fn to_nar(&self) -> Vec<u8> {
        let mut out = Vec::new();
        write_nar(self, &mut out).expect("writing to a Vec cannot fail");
        out
    }

    /// Returns the tree with every directory's entries in canonical (byte-wise) order, the order
    /// Nix writes and the reader demands.
    pub fn sorted(self) -> Self {
        match self {
            Node::Directory(entries) => {
                let mut entries: Vec<_> =
                    entries.into_iter().map(|(name, node)| (name, node.sorted())).collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Node::Directory(entries)
            }
            leaf => leaf,
        }
    }
}

/// Writes `node` as a NAR: the magic, then the node. Entries are written in the order given
/// (not sorted) and names and targets are not validated, so tests can build hostile archives.
pub fn write_nar(node: &Node, out: &mut impl Write) -> io::Result<()> {
    write_str(out, NAR_MAGIC)?;
    write_node(node, out)
}

/// Writes one node (`"(" "type" ... ")"`) without the magic.
pub fn write_node(node: &Node, out: &mut impl Write) -> io::Result<()> {
    write_str(out, TOK_OPEN)?;
    write_str(out, TOK_TYPE)?;
    match node {
        Node::File { executable, contents } => {
            write_str(out, TOK_REGULAR)?;
            if *executable {
                write_str(out, TOK_EXECUTABLE)?;
                write_str(out, b"")?;
            }
            write_str(out, TOK_CONTENTS)?;
            write_str(out, contents)?;
        }
        Node::Symlink { target } => {
            write_str(out, TOK_SYMLINK)?;
            write_str(out, TOK_TARGET)?;
            write_str(out, target)?;
        }
        Node::Directory(entries) => {
            write_str(out, TOK_DIRECTORY)?;
            for (name, child) in entries {
                write_str(out, TOK_ENTRY)?;
                write_str(out, TOK_OPEN)?;
                write_str(out, TOK_NAME)?;
                write_str(out, name)?;
                write_str(out, TOK_NODE)?;
                write_node(child, out)?;
                write_str(out, TOK_CLOSE)?;
            }
        }
    }
    write_str(out, TOK_CLOSE)
}

/// Writes `bytes` as a NAR string: length prefix, bytes, zero padding to a multiple of 8.
pub fn write_str(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    write_raw_len(out, bytes.len() as u64)?;
    out.write_all(bytes)?;
    write_padding(out, bytes.len() as u64)
}

/// Writes each of `tokens` with [`write_str`].
pub fn write_strs(out: &mut impl Write, tokens: &[&[u8]]) -> io::Result<()> {
    tokens.iter().try_for_each(|t| write_str(out, t))
}

/// Writes only a length prefix (any value, e.g. 2^63), for hand-made hostile streams.
pub fn write_raw_len(out: &mut impl Write, len: u64) -> io::Result<()> {
    out.write_all(&len.to_le_bytes())
}

/// Writes the zero padding that follows a string of `len` bytes.
pub fn write_padding(out: &mut impl Write, len: u64) -> io::Result<()> {
    const ZEROS: [u8; 8] = [0; 8];
    out.write_all(&ZEROS[..padding_len(len)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_str_pads_to_eight() {
        let mut out = Vec::new();
        write_str(&mut out, b"abc").unwrap();
        assert_eq!(out, [3, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]);
        out.clear();
        write_str(&mut out, b"").unwrap();
        assert_eq!(out, [0; 8]);
        out.clear();
        write_str(&mut out, b"12345678").unwrap();
        assert_eq!(out.len(), 16);
    }

    /// Golden bytes for the smallest archive: an empty regular file.
    #[test]
    fn empty_file_golden() {
        let mut want = Vec::new();
        for tok in [&b"nix-archive-1"[..], b"(", b"type", b"regular", b"contents", b"", b")"] {
            want.extend_from_slice(&(tok.len() as u64).to_le_bytes());
            want.extend_from_slice(tok);
            want.resize(want.len().next_multiple_of(8), 0);
        }
        let node = Node::File { executable: false, contents: vec![] };
        assert_eq!(node.to_nar(), want);
        assert_eq!(want.len(), 112);
    }

    #[test]
    fn sorted_orders_recursively_by_bytes() {
        let file = || Node::File { executable: false, contents: vec![] };
        let tree = Node::Directory(vec![
            (
                b"b".to_vec(),
                Node::Directory(vec![(b"z".to_vec(), file()), (b"Z".to_vec(), file())]),
            ),
            ("é".as_bytes().to_vec(), file()),
            (b"a".to_vec(), file()),
        ]);
        let want = Node::Directory(vec![
            (b"a".to_vec(), file()),
            (
                b"b".to_vec(),
                Node::Directory(vec![(b"Z".to_vec(), file()), (b"z".to_vec(), file())]),
            ),
            ("é".as_bytes().to_vec(), file()),
        ]);
        assert_eq!(tree.sorted(), want);
    }

    #[test]
    fn writer_keeps_given_order() {
        let file = Node::File { executable: false, contents: vec![] };
        let a = Node::Directory(vec![(b"b".to_vec(), file.clone()), (b"a".to_vec(), file)]);
        let sorted = a.clone().sorted();
        assert_ne!(a.to_nar(), sorted.to_nar());
        assert_eq!(a.to_nar().len(), sorted.to_nar().len());
    }
}
