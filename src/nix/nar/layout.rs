//! The NAR bytes around file contents, emitted node by node in stream order. The re-encoder
//! (`storefs index`) writes them between files, and the file index parser only counts them, to
//! place each file's contents in the NAR without storing an offset that could disagree.
//!
//! A NAR is canonical: its tree fixes every byte, so `magic`, the node headers, entry wrappers,
//! padding and closing parens follow from the sequence of [`Start`]s alone.

use super::reader::NodeId;
use super::wire::{
    NAR_MAGIC, TOK_CLOSE, TOK_CONTENTS, TOK_DIRECTORY, TOK_ENTRY, TOK_EXECUTABLE, TOK_NAME,
    TOK_NODE, TOK_OPEN, TOK_REGULAR, TOK_SYMLINK, TOK_TARGET, TOK_TYPE,
};
use super::writer::{write_padding, write_raw_len, write_str};

/// What a node is, as far as its NAR header needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start<'a> {
    /// A directory; its entries follow.
    Directory,
    /// A regular file of `size` bytes; the caller puts exactly `size` content bytes after the
    /// header.
    File {
        /// Whether the file is executable.
        executable: bool,
        /// Its size in bytes.
        size: u64,
    },
    /// A symbolic link.
    Symlink {
        /// Its target, verbatim.
        target: &'a [u8],
    },
}

/// A sequence of nodes that no NAR can have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A second node without a parent, or a first node with one.
    #[error("node {id} is not where the root must be (first, and only there)")]
    MisplacedRoot {
        /// The node.
        id: NodeId,
    },
    /// The parent is not a directory still open at this point of the stream.
    #[error("node {id} names parent {parent}, which is not an open directory")]
    NotAnOpenDirectory {
        /// The node.
        id: NodeId,
        /// The parent it names.
        parent: NodeId,
    },
    /// [`NarLayout::finish`] before any node.
    #[error("a nar needs a root node")]
    Empty,
    /// The stream would pass `u64::MAX` bytes.
    #[error("nar size overflows at node {id}")]
    Overflow {
        /// The node.
        id: NodeId,
    },
}

/// Emits the NAR bytes between file contents; see the module docs.
#[derive(Debug, Default)]
pub struct NarLayout {
    /// Directories still open, root first.
    open: Vec<NodeId>,
    /// Whether the root was seen.
    started: bool,
    /// A file or symlink whose closing tokens are still owed.
    leaf_open: bool,
    /// Bytes of the stream so far, contents of files included.
    pos: u64,
}

impl NarLayout {
    /// A layout before the first node.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends to `out` the bytes that precede node `id`'s contents (closing whatever the
    /// stream leaves here). Returns the stream offset after them: for a file, where its
    /// contents start. The file's `size` content bytes are counted as written.
    ///
    /// # Errors
    ///
    /// A root that is not first, or a parent that is not an open directory.
    pub fn start(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        node: Start<'_>,
        out: &mut Vec<u8>,
    ) -> Result<u64, LayoutError> {
        self.close_leaf(out);
        if let Some((parent, _)) = parent {
            if !self.open.contains(&parent) {
                return Err(LayoutError::NotAnOpenDirectory { id, parent });
            }
            while self.open.last() != Some(&parent) {
                self.close_directory(out);
            }
        }
        // Closing bytes are counted by the calls above; from here on, this node's header.
        let before = out.len();
        match parent {
            None if self.started => return Err(LayoutError::MisplacedRoot { id }),
            None => {
                self.started = true;
                write_str(out, NAR_MAGIC).expect("a Vec takes any write");
            }
            Some(_) if !self.started => return Err(LayoutError::MisplacedRoot { id }),
            Some((_, name)) => {
                for token in [TOK_ENTRY, TOK_OPEN, TOK_NAME, name, TOK_NODE] {
                    write_str(out, token).expect("a Vec takes any write");
                }
            }
        }
        for token in [TOK_OPEN, TOK_TYPE] {
            write_str(out, token).expect("a Vec takes any write");
        }
        let mut contents = 0;
        match node {
            Start::Directory => {
                write_str(out, TOK_DIRECTORY).expect("a Vec takes any write");
                self.open.push(id);
            }
            Start::File { executable, size } => {
                write_str(out, TOK_REGULAR).expect("a Vec takes any write");
                if executable {
                    write_str(out, TOK_EXECUTABLE).expect("a Vec takes any write");
                    write_str(out, b"").expect("a Vec takes any write");
                }
                write_str(out, TOK_CONTENTS).expect("a Vec takes any write");
                write_raw_len(out, size).expect("a Vec takes any write");
                self.leaf_open = true;
                contents = size;
            }
            Start::Symlink { target } => {
                for token in [TOK_SYMLINK, TOK_TARGET, target] {
                    write_str(out, token).expect("a Vec takes any write");
                }
                self.leaf_open = true;
            }
        }
        let header = (out.len() - before) as u64;
        let at = self.pos.checked_add(header).ok_or(LayoutError::Overflow { id })?;
        self.pos = at.checked_add(contents).ok_or(LayoutError::Overflow { id })?;
        // The padding after the contents (up to 7 bytes) is counted when it is written.
        if self.pos.checked_add(8).is_none() {
            return Err(LayoutError::Overflow { id });
        }
        Ok(at)
    }

    /// Appends the bytes that end the NAR. Returns its total size.
    ///
    /// # Errors
    ///
    /// No node was started.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<u64, LayoutError> {
        if !self.started {
            return Err(LayoutError::Empty);
        }
        // The closing bytes are at most 7 + 16 per open node; `start` keeps `pos` far enough
        // below `u64::MAX` only for the padding, so count them with a check.
        let closing = 7 + 16 * (self.open.len() as u64 + 1);
        if self.pos.checked_add(closing).is_none() {
            return Err(LayoutError::Overflow { id: 0 });
        }
        self.close_leaf(out);
        while !self.open.is_empty() {
            self.close_directory(out);
        }
        Ok(self.pos)
    }

    /// Bytes of the stream so far, contents included.
    #[must_use]
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Closes the file or symlink just emitted: a file's padding, `)`, and its entry's `)`.
    fn close_leaf(&mut self, out: &mut Vec<u8>) {
        if !self.leaf_open {
            return;
        }
        self.leaf_open = false;
        let before = out.len();
        // The padding depends only on the size's remainder mod 8, which `pos` (header ends
        // are 8-aligned) carries.
        write_padding(out, self.pos).expect("a Vec takes any write");
        self.close_node(out);
        self.pos += (out.len() - before) as u64;
    }

    /// Closes the innermost open directory and its entry.
    fn close_directory(&mut self, out: &mut Vec<u8>) {
        let before = out.len();
        self.open.pop();
        self.close_node(out);
        self.pos += (out.len() - before) as u64;
    }

    /// `)` for the node, and `)` for its entry unless it is the root (nothing left open).
    fn close_node(&self, out: &mut Vec<u8>) {
        write_str(out, TOK_CLOSE).expect("a Vec takes any write");
        if !self.open.is_empty() {
            write_str(out, TOK_CLOSE).expect("a Vec takes any write");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::nar::{Node, Visitor, parse_buf};

    /// Rebuilds a NAR through the layout from the parser's callbacks.
    struct Rebuild {
        layout: NarLayout,
        out: Vec<u8>,
        offsets: Vec<u64>,
    }

    impl Visitor for Rebuild {
        fn directory(
            &mut self,
            id: NodeId,
            parent: Option<(NodeId, &[u8])>,
        ) -> Result<(), crate::nix::nar::VisitError> {
            self.layout.start(id, parent, Start::Directory, &mut self.out)?;
            Ok(())
        }
        fn file(
            &mut self,
            id: NodeId,
            parent: Option<(NodeId, &[u8])>,
            executable: bool,
            size: u64,
            contents: &mut dyn std::io::Read,
        ) -> Result<(), crate::nix::nar::VisitError> {
            let at =
                self.layout.start(id, parent, Start::File { executable, size }, &mut self.out)?;
            assert_eq!(at, self.out.len() as u64);
            self.offsets.push(at);
            contents.read_to_end(&mut self.out)?;
            Ok(())
        }
        fn symlink(
            &mut self,
            id: NodeId,
            parent: Option<(NodeId, &[u8])>,
            target: &[u8],
        ) -> Result<(), crate::nix::nar::VisitError> {
            self.layout.start(id, parent, Start::Symlink { target }, &mut self.out)?;
            Ok(())
        }
    }

    fn file(contents: &[u8], executable: bool) -> Node {
        Node::File { executable, contents: contents.to_vec() }
    }

    fn rebuilt(nar: &[u8]) -> (Vec<u8>, u64) {
        let mut v = Rebuild { layout: NarLayout::new(), out: Vec::new(), offsets: Vec::new() };
        parse_buf(nar, nar.len() as u64, &mut v).unwrap();
        let size = v.layout.finish(&mut v.out).unwrap();
        (v.out, size)
    }

    #[test]
    fn rebuilds_every_kind_of_tree_byte_for_byte() {
        let nested = Node::Directory(vec![
            (b"a".to_vec(), file(b"hello", false)),
            (
                b"b".to_vec(),
                Node::Directory(vec![
                    (b"c".to_vec(), Node::Directory(vec![])),
                    (b"d".to_vec(), file(b"12345678", true)),
                ]),
            ),
            (b"e".to_vec(), Node::Symlink { target: b"../x".to_vec() }),
            (b"f".to_vec(), file(b"", false)),
        ]);
        let cases = [
            ("single_file", file(b"abc", false)),
            ("single_executable", file(b"#!/bin/sh\n", true)),
            ("symlink_root", Node::Symlink { target: b"/nix/store/x".to_vec() }),
            ("empty_directory", Node::Directory(vec![])),
            ("nested", nested),
        ];
        for (name, tree) in cases {
            let nar = tree.to_nar();
            let (out, size) = rebuilt(&nar);
            assert_eq!(out, nar, "case {name}");
            assert_eq!(size, nar.len() as u64, "case {name}");
        }
    }

    #[test]
    fn refuses_sequences_no_nar_has() {
        let mut out = Vec::new();
        let mut l = NarLayout::new();
        assert_eq!(l.finish(&mut out), Err(LayoutError::Empty));
        assert_eq!(
            l.start(1, Some((0, b"a")), Start::Directory, &mut out),
            Err(LayoutError::NotAnOpenDirectory { id: 1, parent: 0 })
        );
        l.start(0, None, Start::Directory, &mut out).unwrap();
        assert_eq!(
            l.start(1, None, Start::Directory, &mut out),
            Err(LayoutError::MisplacedRoot { id: 1 })
        );
        l.start(1, Some((0, b"a")), Start::File { executable: false, size: 1 }, &mut out).unwrap();
        assert_eq!(
            l.start(2, Some((1, b"b")), Start::Directory, &mut out),
            Err(LayoutError::NotAnOpenDirectory { id: 2, parent: 1 })
        );
        let huge = Start::File { executable: false, size: u64::MAX - 100 };
        assert!(matches!(
            l.start(3, Some((0, b"c")), huge, &mut out),
            Err(LayoutError::Overflow { id: 3 })
        ));
    }
}
