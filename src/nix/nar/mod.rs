//! NAR (Nix ARchive): a strict streaming parser and a writer. Pure: no network, no async, no
//! global state, and no imports from the rest of storefs.
//!
//! The format in one breath (full grammar and limits in [`wire`]): every string is a `u64`
//! little-endian length, the bytes, and zero padding to a multiple of 8; the archive is
//! `"nix-archive-1"` followed by one node, and a node is
//!
//! ```text
//! "(" "type" ( "regular" ["executable" ""] "contents" BYTES
//!            | "symlink" "target" TARGET
//!            | "directory" { "entry" "(" "name" NAME "node" node ")" } ) ")"
//! ```
//!
//! - [`reader`]: [`parse`] validates the whole grammar while streaming, calling a [`Visitor`]
//!   per node; it rejects everything Nix rejects (bad names, unsorted or duplicate entries,
//!   over-long tokens, targets and names, deep nesting, bad padding, trailing data, lengths past
//!   the caller's NarSize limit) and never recurses or allocates from a length prefix.
//! - [`writer`]: [`write_nar`] serialises a [`Node`] tree exactly as given, and raw helpers
//!   ([`writer::write_str`], [`writer::write_raw_len`]) build hostile streams for tests.

mod error;
pub mod layout;
pub mod reader;
mod tree;
pub mod wire;
pub mod writer;

pub use reader::{
    NodeId, ParseError, VisitError, Visitor, parse, parse_buf, parse_to_tree, validate,
};
pub use writer::{Node, write_nar};

#[cfg(test)]
mod tests;
