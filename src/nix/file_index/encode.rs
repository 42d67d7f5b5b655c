//! Writes an index body and its signature section (the layout is in docs/INDEX_FORMAT.md).

use super::{FileIndex, NodeKind, SECTION_WARM, SECTION_WARM_PATHS};

/// Node tags in the body.
pub(super) const TAG_DIRECTORY: u8 = 1;
pub(super) const TAG_FILE: u8 = 2;
pub(super) const TAG_EXECUTABLE: u8 = 3;
pub(super) const TAG_SYMLINK: u8 = 4;

/// Appends `v` as an unsigned LEB128 varint (7 bits a byte, low first).
pub(super) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-prefixed byte string.
pub(super) fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// The body of `index`: everything its signatures cover (the file is the magic, the signature
/// section, then this).
#[must_use]
pub fn encode_body(index: &FileIndex) -> Vec<u8> {
    let mut out = Vec::new();
    put_bytes(&mut out, index.store_path.to_absolute_path().as_bytes());
    out.extend_from_slice(index.nar_hash.digest());
    put_varint(&mut out, index.nar_size);
    out.push(index.nar_file.encoding.code());
    put_varint(&mut out, index.nar_file.size);
    out.extend_from_slice(index.nar_file.hash.digest());
    put_varint(&mut out, index.frames.len() as u64);
    for f in &index.frames {
        for v in [f.file_offset, f.file_len, f.nar_offset, f.nar_len] {
            put_varint(&mut out, v);
        }
        out.extend_from_slice(&f.digest);
    }
    let mut entries = vec![0u64; index.nodes.len()];
    for node in &index.nodes {
        if let Some((parent, _)) = &node.parent {
            if let Some(count) = entries.get_mut(*parent as usize) {
                *count += 1;
            }
        }
    }
    for (node, entries) in index.nodes.iter().zip(entries) {
        let tag = match &node.kind {
            NodeKind::Directory => TAG_DIRECTORY,
            NodeKind::File(f) if f.executable => TAG_EXECUTABLE,
            NodeKind::File(_) => TAG_FILE,
            NodeKind::Symlink { .. } => TAG_SYMLINK,
        };
        if let Some((_, name)) = &node.parent {
            put_bytes(&mut out, name);
        }
        out.push(tag);
        match &node.kind {
            NodeKind::Directory => put_varint(&mut out, entries),
            NodeKind::File(f) => {
                put_varint(&mut out, f.size);
                out.extend_from_slice(&f.digest);
            }
            NodeKind::Symlink { target } => put_bytes(&mut out, target),
        }
    }
    if !index.warm.is_empty() {
        let mut warm = Vec::new();
        put_varint(&mut warm, index.warm.len() as u64);
        let mut rank = 0;
        for file in &index.warm {
            put_varint(&mut warm, u64::from(file.node));
            put_varint(&mut warm, file.rank.saturating_sub(rank));
            rank = file.rank;
        }
        out.push(SECTION_WARM);
        put_bytes(&mut out, &warm);
    }
    if !index.warm_paths.is_empty() {
        let mut paths = Vec::new();
        put_varint(&mut paths, index.warm_paths.len() as u64);
        for path in &index.warm_paths {
            put_bytes(&mut paths, path.to_absolute_path().as_bytes());
        }
        out.push(SECTION_WARM_PATHS);
        put_bytes(&mut out, &paths);
    }
    out
}

/// Appends the signature section: a count byte, then each `name:base64` value.
pub(super) fn put_signatures(out: &mut Vec<u8>, signatures: &[String]) {
    out.push(u8::try_from(signatures.len()).unwrap_or(u8::MAX));
    for sig in signatures.iter().take(usize::from(u8::MAX)) {
        put_bytes(out, sig.as_bytes());
    }
}
