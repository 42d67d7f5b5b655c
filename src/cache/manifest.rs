//! The tree of one cached store path, and its on-disk encoding.
//!
//! A NAR's names never become local file names: the manifest keeps the tree (names, kinds, sizes,
//! symlink targets) and each regular file's bytes live either in a plain file named after its node
//! number (`f<id>`) or, for small files, at an offset of the entry's one `pack` file (one file
//! written sequentially instead of thousands created). The manifest also carries the verified
//! narinfo, so a cached entry is self-describing.
//!
//! Encoding (all integers little-endian), version `MANIFEST_VERSION`:
//! ```text
//! magic "storefs-manifest\n" | u32 version | u32 len + narinfo text | u64 disk_bytes
//! | u32 node count | nodes | 32-byte SHA-256 of everything before it
//! node = u8 kind | u32 parent | kind 0 dir: u32 n, n × (u16 len + name, u32 child)
//!                             | kind 1 file: u8 executable, u64 size, u64 pack offset
//!                             | kind 2 symlink: u16 len + target
//! ```
//! A pack offset of `u64::MAX` means the file is `f<id>`. Version 1 (still read) had no pack
//! offset: every file was `f<id>`. Changing this layout means bumping `MANIFEST_VERSION`; a golden
//! test pins it.

use sha2::{Digest, Sha256};

use crate::nix::nar::NodeId;

/// Magic at the start of every manifest file.
pub const MANIFEST_MAGIC: &[u8] = b"storefs-manifest\n";
/// Version of the manifest encoding.
pub const MANIFEST_VERSION: u32 = 2;
/// The previous version, still read: no pack offsets.
const MANIFEST_VERSION_UNPACKED: u32 = 1;
/// The pack offset written for a file that has a cache file of its own.
const OWN_FILE: u64 = u64::MAX;
/// The root node of every store path.
pub const ROOT_NODE: NodeId = 0;
const DIGEST_LEN: usize = 32;

/// One node of a store path's tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A directory; `entries` are sorted by name (the NAR guarantees it).
    Directory {
        /// The parent directory (the root is its own parent).
        parent: NodeId,
        /// Children, sorted by name.
        entries: Vec<(Vec<u8>, NodeId)>,
    },
    /// A regular file.
    File {
        /// The parent directory.
        parent: NodeId,
        /// Mode 0555 rather than 0444.
        executable: bool,
        /// Size in bytes.
        size: u64,
        /// Where its bytes start in the entry's pack file; None: in a file of its own, `f<id>`.
        packed: Option<u64>,
    },
    /// A symbolic link, target kept verbatim.
    Symlink {
        /// The parent directory.
        parent: NodeId,
        /// The target, never resolved by storefs.
        target: Vec<u8>,
    },
}

impl Node {
    /// The parent directory's node.
    pub fn parent(&self) -> NodeId {
        match self {
            Node::Directory { parent, .. }
            | Node::File { parent, .. }
            | Node::Symlink { parent, .. } => *parent,
        }
    }
}

/// A store path's tree plus what is needed to trust and account for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The verified narinfo text this entry was published under.
    pub narinfo: String,
    /// Bytes the entry occupies on disk (block-rounded), for quota accounting.
    pub disk_bytes: u64,
    /// Nodes indexed by `NodeId`, in NAR (pre-)order; node 0 is the root.
    pub nodes: Vec<Node>,
}

/// A manifest file that cannot be trusted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// Not a manifest at all.
    #[error("bad magic")]
    BadMagic,
    /// Written by another version of storefs.
    #[error("manifest version {found}, expected {MANIFEST_VERSION}")]
    Version {
        /// The version found.
        found: u32,
    },
    /// Ends before its declared contents.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// The trailing checksum does not match (corruption at rest).
    #[error("checksum mismatch")]
    Checksum,
    /// Structurally invalid (bad kind, child id out of range, non-UTF-8 narinfo).
    #[error("invalid: {0}")]
    Invalid(&'static str),
}

impl Manifest {
    /// The node `id`, if it exists.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    /// The child called `name` of directory `dir`.
    pub fn child(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        match self.node(dir)? {
            Node::Directory { entries, .. } => {
                entries.binary_search_by(|(n, _)| n.as_slice().cmp(name)).ok().map(|i| entries[i].1)
            }
            _ => None,
        }
    }

    /// Serialises the manifest (see the module doc for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.narinfo.len() + self.nodes.len() * 24);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&MANIFEST_VERSION.to_le_bytes());
        put_u32(&mut out, self.narinfo.len());
        out.extend_from_slice(self.narinfo.as_bytes());
        out.extend_from_slice(&self.disk_bytes.to_le_bytes());
        put_u32(&mut out, self.nodes.len());
        for node in &self.nodes {
            match node {
                Node::Directory { parent, entries } => {
                    out.push(0);
                    out.extend_from_slice(&parent.to_le_bytes());
                    put_u32(&mut out, entries.len());
                    for (name, child) in entries {
                        put_u16(&mut out, name.len());
                        out.extend_from_slice(name);
                        out.extend_from_slice(&child.to_le_bytes());
                    }
                }
                Node::File { parent, executable, size, packed } => {
                    out.push(1);
                    out.extend_from_slice(&parent.to_le_bytes());
                    out.push(u8::from(*executable));
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(&packed.unwrap_or(OWN_FILE).to_le_bytes());
                }
                Node::Symlink { parent, target } => {
                    out.push(2);
                    out.extend_from_slice(&parent.to_le_bytes());
                    put_u16(&mut out, target.len());
                    out.extend_from_slice(target);
                }
            }
        }
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// Parses and checks a manifest; never panics, never allocates beyond the input's size.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() < MANIFEST_MAGIC.len() || !bytes.starts_with(MANIFEST_MAGIC) {
            return Err(ManifestError::BadMagic);
        }
        let mut r = Cursor { bytes, pos: MANIFEST_MAGIC.len() };
        let version = r.u32()?;
        if version != MANIFEST_VERSION && version != MANIFEST_VERSION_UNPACKED {
            return Err(ManifestError::Version { found: version });
        }
        let body_len = bytes.len().checked_sub(DIGEST_LEN).ok_or(ManifestError::Truncated(0))?;
        if Sha256::digest(&bytes[..body_len]).as_slice() != &bytes[body_len..] {
            return Err(ManifestError::Checksum);
        }
        r.bytes = &bytes[..body_len];
        let narinfo_len = r.u32()? as usize;
        let narinfo = std::str::from_utf8(r.take(narinfo_len)?)
            .map_err(|_| ManifestError::Invalid("narinfo is not UTF-8"))?
            .to_owned();
        let disk_bytes = r.u64()?;
        let count = r.u32()? as usize;
        // Each node takes at least 6 bytes, which bounds the allocation by the input size.
        let mut nodes = Vec::with_capacity(count.min(r.remaining() / 6));
        for _ in 0..count {
            let kind = r.u8()?;
            let parent = r.u32()?;
            let node = match kind {
                0 => {
                    let n = r.u32()? as usize;
                    let mut entries = Vec::with_capacity(n.min(r.remaining() / 7));
                    for _ in 0..n {
                        let len = r.u16()? as usize;
                        let name = r.take(len)?.to_vec();
                        entries.push((name, r.u32()?));
                    }
                    Node::Directory { parent, entries }
                }
                1 => {
                    let (executable, size) = (r.u8()? != 0, r.u64()?);
                    let packed = match version {
                        MANIFEST_VERSION_UNPACKED => None,
                        _ => Some(r.u64()?).filter(|&offset| offset != OWN_FILE),
                    };
                    if packed.is_some_and(|offset| offset.checked_add(size).is_none()) {
                        return Err(ManifestError::Invalid("packed file beyond 2^64 bytes"));
                    }
                    Node::File { parent, executable, size, packed }
                }
                2 => {
                    let len = r.u16()? as usize;
                    Node::Symlink { parent, target: r.take(len)?.to_vec() }
                }
                _ => return Err(ManifestError::Invalid("unknown node kind")),
            };
            nodes.push(node);
        }
        if r.remaining() != 0 {
            return Err(ManifestError::Invalid("trailing bytes"));
        }
        let manifest = Self { narinfo, disk_bytes, nodes };
        manifest.check_links()?;
        Ok(manifest)
    }

    /// Every parent and child id points at a node that exists, and children are sorted.
    fn check_links(&self) -> Result<(), ManifestError> {
        if self.nodes.is_empty() {
            return Err(ManifestError::Invalid("no root node"));
        }
        let n = self.nodes.len();
        for node in &self.nodes {
            if node.parent() as usize >= n {
                return Err(ManifestError::Invalid("parent out of range"));
            }
            if let Node::Directory { entries, .. } = node {
                if entries.iter().any(|(_, c)| *c as usize >= n || *c == ROOT_NODE)
                    || entries.windows(2).any(|w| w[0].0 >= w[1].0)
                {
                    return Err(ManifestError::Invalid("bad directory entries"));
                }
            }
        }
        Ok(())
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    let n = u32::try_from(n).expect("manifest counts are bounded by the NAR limits");
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    let n = u16::try_from(n).expect("names ≤ 255 and targets ≤ 4095 bytes fit in u16");
    out.extend_from_slice(&n.to_le_bytes());
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ManifestError> {
        let end = self.pos.checked_add(n).filter(|end| *end <= self.bytes.len());
        let end = end.ok_or(ManifestError::Truncated(self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ManifestError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ManifestError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ManifestError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ManifestError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ManifestError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn sample() -> Manifest {
        Manifest {
            narinfo: "StorePath: /nix/store/x\n".into(),
            disk_bytes: 8192,
            nodes: vec![
                Node::Directory {
                    parent: 0,
                    entries: vec![
                        (b"bin".to_vec(), 1),
                        (b"link".to_vec(), 3),
                        (b"small".to_vec(), 4),
                    ],
                },
                Node::Directory { parent: 0, entries: vec![(b"hello".to_vec(), 2)] },
                Node::File { parent: 1, executable: true, size: 5, packed: None },
                Node::Symlink { parent: 0, target: b"bin/hello".to_vec() },
                Node::File { parent: 0, executable: false, size: 3, packed: Some(5) },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
        assert_eq!(m.child(0, b"bin"), Some(1));
        assert_eq!(m.child(1, b"hello"), Some(2));
        assert_eq!(m.child(0, b"nope"), None);
        assert_eq!(m.child(2, b"x"), None);
    }

    /// Pins the on-disk format: if this changes, bump MANIFEST_VERSION and docs/CACHE_FORMAT.md.
    #[test]
    fn golden_encoding() {
        let hex: String = sample().encode().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            &hex[..hex.len() - 64],
            "73746f726566732d6d616e69666573740a020000001800000053746f72655061\
             74683a202f6e69782f73746f72652f780a002000000000000005000000000000\
             000003000000030062696e0100000004006c696e6b030000000500736d616c6c\
             04000000000000000001000000050068656c6c6f020000000101000000010500\
             000000000000ffffffffffffffff0200000000090062696e2f68656c6c6f0100\
             0000000003000000000000000500000000000000"
        );
    }

    #[test]
    fn rejects_corruption() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(Manifest::decode(&bad).is_err(), "flip at {i} accepted");
        }
        for len in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..len]).is_err(), "truncation at {len} accepted");
        }
    }

    #[test]
    fn rejects_other_versions() {
        let mut bytes = sample().encode();
        bytes[MANIFEST_MAGIC.len()] = 3;
        assert_eq!(Manifest::decode(&bytes), Err(ManifestError::Version { found: 3 }));
    }

    /// Version 1, written before pack files, is still read: every file is a file of its own.
    #[test]
    fn reads_version_1_manifests() {
        let hex = "73746f726566732d6d616e69666573740a010000001800000053746f72655061\
                   74683a202f6e69782f73746f72652f780a002000000000000004000000000000\
                   000002000000030062696e0100000004006c696e6b0300000000000000000100\
                   0000050068656c6c6f0200000001010000000105000000000000000200000000\
                   090062696e2f68656c6c6f";
        let mut bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        bytes.extend_from_slice(&Sha256::digest(&bytes));
        let m = Manifest::decode(&bytes).unwrap();
        let file = Node::File { parent: 1, executable: true, size: 5, packed: None };
        assert_eq!(m.node(2), Some(&file));
        assert_eq!(m.nodes.len(), 4);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Manifest::decode(&bytes);
            let mut with_magic = MANIFEST_MAGIC.to_vec();
            with_magic.extend_from_slice(&1u32.to_le_bytes());
            with_magic.extend_from_slice(&bytes);
            let _ = Manifest::decode(&with_magic);
        }
    }
}
