//! Re-serialising a cached entry as the NAR it was unpacked from (manifest + `f<id>` and pack files),
//! streamed into any writer, so `verify` can hash it against NarHash without holding a file in
//! memory. The wire format is the one `nix::nar::writer` writes.

use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::contents::FileContents;
use super::layout::PACK_FILE;
use super::manifest::{Manifest, Node, ROOT_NODE};
use crate::nix::nar::NodeId;
use crate::nix::nar::wire::{
    NAR_MAGIC, TOK_CLOSE, TOK_CONTENTS, TOK_DIRECTORY, TOK_ENTRY, TOK_EXECUTABLE, TOK_NAME,
    TOK_NODE, TOK_OPEN, TOK_REGULAR, TOK_SYMLINK, TOK_TARGET, TOK_TYPE,
};
use crate::nix::nar::writer::{write_padding, write_raw_len, write_str};

/// How much of a file is read at once.
const COPY_CHUNK_BYTES: u64 = 64 * 1024;

/// Why an entry could not be re-serialised.
#[derive(Debug, thiserror::Error)]
pub enum RenarError {
    /// A file of the entry could not be read (missing, unreadable).
    #[error("cannot read file {id} of the entry: {source}")]
    Read {
        /// The node.
        id: NodeId,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A file on disk is not the size the manifest says.
    #[error("file {id} has {found} bytes, the manifest says {expected}")]
    Size {
        /// The node.
        id: NodeId,
        /// Size in the manifest.
        expected: u64,
        /// Size on disk.
        found: u64,
    },
    /// The manifest refers to a node it does not have.
    #[error("manifest has no node {0}")]
    BadNode(NodeId),
    /// The pack file is not as long as the small files the manifest puts in it.
    #[error("the pack file has {found} bytes, the manifest's small files {expected}")]
    PackSize {
        /// The sum of the packed files' sizes.
        expected: u64,
        /// Its length on disk.
        found: u64,
    },
    /// The output failed.
    #[error("cannot write: {0}")]
    Write(#[source] io::Error),
}

/// Writes the NAR of the entry in `dir` described by `manifest` to `out`.
pub fn write_entry_nar(
    manifest: &Manifest,
    dir: &Path,
    out: &mut impl Write,
) -> Result<(), RenarError> {
    write_str(out, NAR_MAGIC).map_err(RenarError::Write)?;
    write_node(manifest, dir, ROOT_NODE, out)?;
    check_pack_len(manifest, dir)
}

/// A pack holds exactly its files, one after another: reading each file's range catches a pack
/// cut short, this catches one that grew.
fn check_pack_len(manifest: &Manifest, dir: &Path) -> Result<(), RenarError> {
    let packed = manifest.nodes.iter().filter_map(|node| match node {
        Node::File { size, packed: Some(start), .. } => Some(start.saturating_add(*size)),
        _ => None,
    });
    let Some(expected) = packed.max() else { return Ok(()) };
    // lstat: a symlink planted as the pack reports its own length, never its target's.
    let pack = std::fs::symlink_metadata(dir.join(PACK_FILE));
    let found = pack.map_err(|source| RenarError::Read { id: ROOT_NODE, source })?.len();
    if found != expected {
        return Err(RenarError::PackSize { expected, found });
    }
    Ok(())
}

/// The SHA-256 and length of the entry's NAR.
pub fn hash_entry(manifest: &Manifest, dir: &Path) -> Result<([u8; 32], u64), RenarError> {
    let mut sink = HashingSink { hasher: Sha256::new(), len: 0 };
    write_entry_nar(manifest, dir, &mut sink)?;
    Ok((sink.hasher.finalize().into(), sink.len))
}

fn write_node(
    manifest: &Manifest,
    dir: &Path,
    id: NodeId,
    out: &mut impl Write,
) -> Result<(), RenarError> {
    let w = RenarError::Write;
    let node = manifest.node(id).ok_or(RenarError::BadNode(id))?;
    for tok in [TOK_OPEN, TOK_TYPE] {
        write_str(out, tok).map_err(w)?;
    }
    match node {
        Node::File { executable, size, packed, .. } => {
            write_str(out, TOK_REGULAR).map_err(w)?;
            if *executable {
                write_str(out, TOK_EXECUTABLE).map_err(w)?;
                write_str(out, b"").map_err(w)?;
            }
            write_str(out, TOK_CONTENTS).map_err(w)?;
            write_raw_len(out, *size).map_err(w)?;
            copy_file(dir, id, *size, *packed, out)?;
            write_padding(out, *size).map_err(w)?;
        }
        Node::Symlink { target, .. } => {
            for tok in [TOK_SYMLINK, TOK_TARGET, target.as_slice()] {
                write_str(out, tok).map_err(w)?;
            }
        }
        Node::Directory { entries, .. } => {
            write_str(out, TOK_DIRECTORY).map_err(w)?;
            for (name, child) in entries {
                for tok in [TOK_ENTRY, TOK_OPEN, TOK_NAME, name.as_slice(), TOK_NODE] {
                    write_str(out, tok).map_err(w)?;
                }
                write_node(manifest, dir, *child, out)?;
                write_str(out, TOK_CLOSE).map_err(w)?;
            }
        }
    }
    write_str(out, TOK_CLOSE).map_err(w)
}

/// Copies exactly `size` bytes of file `id` (a file of its own, or at `packed` in the pack) to
/// `out`, failing when its own file is shorter or longer, or the pack ends before it does.
fn copy_file(
    dir: &Path,
    id: NodeId,
    size: u64,
    packed: Option<u64>,
    out: &mut impl Write,
) -> Result<(), RenarError> {
    let read = |source| RenarError::Read { id, source };
    // Unchecked reads: the whole NAR is hashed against NarHash, which catches any damage.
    let contents = FileContents::open(dir, id, size, packed, None).map_err(read)?;
    if let Some(file) = contents.own_file() {
        let found = file.metadata().map_err(read)?.len();
        if found != size {
            return Err(RenarError::Size { id, expected: size, found });
        }
    }
    let mut buf = vec![0u8; COPY_CHUNK_BYTES.min(size) as usize];
    let mut copied = 0u64;
    while copied < size {
        let n = buf.len().min(usize::try_from(size - copied).unwrap_or(usize::MAX));
        contents.read_exact_at(copied, &mut buf[..n]).map_err(read)?;
        out.write_all(&buf[..n]).map_err(RenarError::Write)?;
        copied += n as u64;
    }
    Ok(())
}

/// A writer that only hashes and counts.
struct HashingSink {
    hasher: Sha256,
    len: u64,
}

impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::tests::{Fixture, key, publish, sp, tree};
    use crate::nix::nar::Node as NarNode;

    #[tokio::test]
    async fn reserialises_the_exact_nar() {
        let fx = Fixture::new(1);
        let weird = NarNode::Directory(vec![
            (b"a".to_vec(), NarNode::File { executable: false, contents: vec![] }),
            (b"b".to_vec(), NarNode::Directory(vec![])),
            (b"c".to_vec(), NarNode::File { executable: true, contents: b"12345678x".to_vec() }),
        ]);
        let cases = [
            ("tree", tree("t", 100_000)),
            ("single-file", NarNode::File { executable: false, contents: b"abc".to_vec() }),
            ("symlink", NarNode::Symlink { target: b"/nowhere".to_vec() }),
            ("weird", weird),
        ];
        let cache = fx.open();
        for (i, (name, node)) in cases.iter().enumerate() {
            let path = sp(char::from(b'a' + i as u8), name);
            let nar = publish(&fx.ups[0], &key(), &path, node);
            let entry = cache.get(&path).await.unwrap();
            let mut out = Vec::new();
            write_entry_nar(&entry.manifest, &entry.dir, &mut out).unwrap();
            assert_eq!(out, nar, "{name}");
            let (digest, len) = hash_entry(&entry.manifest, &entry.dir).unwrap();
            assert_eq!(len, nar.len() as u64, "{name}");
            assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&nar)), "{name}");
        }
    }
}
