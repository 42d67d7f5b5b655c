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
//!                             | kind 1 file: u8 executable, u64 size, u64 pack offset,
//!                                            u32 n, n × u64 block checksum
//!                             | kind 2 symlink: u16 len + target
//! ```
//! A pack offset of `u64::MAX` means the file is `f<id>`. A file's bytes are checked in blocks of
//! `CHECK_BLOCK_BYTES` (the last one shorter): `n` is its number of blocks, and each checksum is
//! the XXH3-64 of one block, computed while unpacking the NAR whose SHA-256 matched NarHash, so
//! every read from disk can be checked (`contents.rs`). `n` = 0 for a non-empty file means "not
//! recorded" (nothing writes that today). Version 2 (still read) had no checksums: its files are
//! served unchecked (`storefs verify` checks them). Version 1 (still read) had no pack offset
//! either: every file was `f<id>`. Changing this layout, or `CHECK_BLOCK_BYTES`, means bumping
//! `MANIFEST_VERSION`; a golden test pins it.

use sha2::{Digest, Sha256};

use crate::nix::nar::NodeId;
use crate::sync::Arc;

/// Magic at the start of every manifest file.
pub const MANIFEST_MAGIC: &[u8] = b"storefs-manifest\n";
/// Version of the manifest encoding.
pub const MANIFEST_VERSION: u32 = 3;
/// An older version, still read: pack offsets, no block checksums.
const MANIFEST_VERSION_UNCHECKED: u32 = 2;
/// The oldest version, still read: no pack offsets, no block checksums.
const MANIFEST_VERSION_UNPACKED: u32 = 1;
/// A file's bytes are checked in blocks of this size: a read that touches part of a block reads
/// and checks all of it. As large as the largest packed file, so a packed file is one block, and
/// half the kernel's usual 128 KiB read (docs/PERFORMANCE.md, "Checking cached bytes").
pub const CHECK_BLOCK_BYTES: u64 = 64 * 1024;
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
        /// The checksum of each `CHECK_BLOCK_BYTES` block of its bytes (`block_sum`); None when
        /// the manifest's version recorded none.
        sums: Option<BlockSums>,
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

/// The block checksums of one file, shared by every reader of it without a copy.
pub type BlockSums = Arc<[u64]>;

/// The checksum of one block of a file's bytes, as recorded in the manifest.
pub fn block_sum(block: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(block)
}

/// How many `CHECK_BLOCK_BYTES` blocks a file of `size` bytes has.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(CHECK_BLOCK_BYTES)
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
                Node::File { parent, executable, size, packed, sums } => {
                    out.push(1);
                    out.extend_from_slice(&parent.to_le_bytes());
                    out.push(u8::from(*executable));
                    out.extend_from_slice(&size.to_le_bytes());
                    out.extend_from_slice(&packed.unwrap_or(OWN_FILE).to_le_bytes());
                    let sums = sums.as_deref().unwrap_or_default();
                    put_u32(&mut out, sums.len());
                    for sum in sums {
                        out.extend_from_slice(&sum.to_le_bytes());
                    }
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
        if ![MANIFEST_VERSION, MANIFEST_VERSION_UNCHECKED, MANIFEST_VERSION_UNPACKED]
            .contains(&version)
        {
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
                    let sums = match version {
                        MANIFEST_VERSION => r.block_sums(size)?,
                        _ => None,
                    };
                    Node::File { parent, executable, size, packed, sums }
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
    /// The block checksums of a file of `size` bytes: one per block, or none recorded.
    fn block_sums(&mut self, size: u64) -> Result<Option<BlockSums>, ManifestError> {
        let n = self.u32()?;
        if n == 0 && size > 0 {
            return Ok(None);
        }
        if u64::from(n) != block_count(size) {
            return Err(ManifestError::Invalid("block checksums do not match the file size"));
        }
        // Taken before allocating: the count is bounded by the input's size.
        let len = (n as usize).checked_mul(8).ok_or(ManifestError::Truncated(self.pos))?;
        let raw = self.take(len)?;
        let sums =
            raw.chunks_exact(8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
        Ok(Some(sums.collect()))
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
                Node::File {
                    parent: 1,
                    executable: true,
                    size: 5,
                    packed: None,
                    sums: Some(Arc::from([0x0807_0605_0403_0201])),
                },
                Node::Symlink { parent: 0, target: b"bin/hello".to_vec() },
                Node::File {
                    parent: 0,
                    executable: false,
                    size: 3,
                    packed: Some(5),
                    sums: Some(Arc::from([block_sum(b"abc")])),
                },
            ],
        }
    }

    fn from_hex(hex: &str) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        bytes.extend_from_slice(&Sha256::digest(&bytes));
        bytes
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
            "73746f726566732d6d616e69666573740a030000001800000053746f72655061\
             74683a202f6e69782f73746f72652f780a002000000000000005000000000000\
             000003000000030062696e0100000004006c696e6b030000000500736d616c6c\
             04000000000000000001000000050068656c6c6f020000000101000000010500\
             000000000000ffffffffffffffff010000000102030405060708020000000009\
             0062696e2f68656c6c6f01000000000003000000000000000500000000000000\
             0100000050392f89945faf78"
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
        bytes[MANIFEST_MAGIC.len()] = 4;
        assert_eq!(Manifest::decode(&bytes), Err(ManifestError::Version { found: 4 }));
    }

    /// The block checksum is XXH3-64 (pinned: a change of function is a new manifest version).
    #[test]
    fn block_sum_is_xxh3_64() {
        assert_eq!(block_sum(b""), 0x2d06_8005_38d3_94c2);
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(1), 1);
        assert_eq!(block_count(CHECK_BLOCK_BYTES), 1);
        assert_eq!(block_count(CHECK_BLOCK_BYTES + 1), 2);
    }

    /// A file's checksum count must be its block count (or 0: not recorded).
    #[test]
    fn rejects_a_checksum_count_that_is_not_the_block_count() {
        let mut m = sample();
        if let Node::File { sums, .. } = &mut m.nodes[2] {
            *sums = Some(Arc::from([1, 2]));
        }
        let err = Manifest::decode(&m.encode()).unwrap_err();
        assert_eq!(err, ManifestError::Invalid("block checksums do not match the file size"));
        if let Node::File { sums, .. } = &mut m.nodes[2] {
            *sums = None;
        }
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m, "not recorded stays not recorded");
    }

    /// Version 2, written before block checksums, is still read: its files are unchecked.
    #[test]
    fn reads_version_2_manifests() {
        let bytes = from_hex(
            "73746f726566732d6d616e69666573740a020000001800000053746f72655061\
             74683a202f6e69782f73746f72652f780a002000000000000005000000000000\
             000003000000030062696e0100000004006c696e6b030000000500736d616c6c\
             04000000000000000001000000050068656c6c6f020000000101000000010500\
             000000000000ffffffffffffffff0200000000090062696e2f68656c6c6f0100\
             0000000003000000000000000500000000000000",
        );
        let m = Manifest::decode(&bytes).unwrap();
        let own = Node::File { parent: 1, executable: true, size: 5, packed: None, sums: None };
        let packed =
            Node::File { parent: 0, executable: false, size: 3, packed: Some(5), sums: None };
        assert_eq!(m.node(2), Some(&own));
        assert_eq!(m.node(4), Some(&packed));
    }

    /// Version 1, written before pack files, is still read: every file is a file of its own.
    #[test]
    fn reads_version_1_manifests() {
        let bytes = from_hex(
            "73746f726566732d6d616e69666573740a010000001800000053746f72655061\
             74683a202f6e69782f73746f72652f780a002000000000000004000000000000\
             000002000000030062696e0100000004006c696e6b0300000000000000000100\
             0000050068656c6c6f0200000001010000000105000000000000000200000000\
             090062696e2f68656c6c6f",
        );
        let m = Manifest::decode(&bytes).unwrap();
        let file = Node::File { parent: 1, executable: true, size: 5, packed: None, sums: None };
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
