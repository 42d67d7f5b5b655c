//! Nix's canonical metadata for everything under the mount: owner root, mtime 1, modes 0444/0555.
//! The mount root alone has an mtime that moves (by nanoseconds) as paths come and go.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::inode::Inode;
use crate::cache::manifest::Node;

/// Kernel cache lifetime of entries and attributes inside a store path: contents are immutable.
/// See docs/SEMANTICS.md.
pub const IMMUTABLE_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Attribute lifetime of the mount root: none. Its listing changes as paths come and go, and the
/// kernel keeps listings (no OPENDIR is sent; see fuse.rs), re-reading the root's attributes at
/// the start of each listing and dropping its copy when the mtime moved.
pub const ROOT_TTL: Duration = Duration::ZERO;
/// Block size reported by `stat`.
pub const BLKSIZE: u32 = 4096;

/// What a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Directory,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
}

/// Attributes of one inode, independent of the FUSE crate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// Kind.
    pub kind: Kind,
    /// Size in bytes (symlinks: target length).
    pub size: u64,
    /// Permission bits.
    pub perm: u16,
    /// Hard links (directories: 2 + subdirectories).
    pub nlink: u32,
    /// Nanoseconds after the canonical mtime: 0, except for the mount root (its generation).
    pub mtime_ns: u64,
}

impl Attr {
    /// The mtime every store file has: 1 second after the epoch (plus `mtime_ns`).
    pub fn mtime(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1) + Duration::from_nanos(self.mtime_ns)
    }

    /// 512-byte blocks, as `stat` reports them.
    pub fn blocks(&self) -> u64 {
        self.size.div_ceil(512)
    }
}

/// The mount root's attributes when the cache is at `generation` (`NarCache::generation`).
pub fn root_attr(generation: u64) -> Attr {
    let ino = Inode::Root.ino();
    Attr { ino, kind: Kind::Directory, size: 0, perm: 0o555, nlink: 2, mtime_ns: generation }
}

/// Attributes of a manifest node; `subdirs` counts child directories (for nlink).
pub fn node_attr(ino: u64, node: &Node, subdirs: u32) -> Attr {
    match node {
        Node::Directory { entries, .. } => Attr {
            ino,
            kind: Kind::Directory,
            size: entries.len() as u64,
            perm: 0o555,
            nlink: 2 + subdirs,
            mtime_ns: 0,
        },
        Node::File { executable, size, .. } => Attr {
            ino,
            kind: Kind::File,
            size: *size,
            perm: if *executable { 0o555 } else { 0o444 },
            nlink: 1,
            mtime_ns: 0,
        },
        Node::Symlink { target, .. } => Attr {
            ino,
            kind: Kind::Symlink,
            size: target.len() as u64,
            perm: 0o777,
            nlink: 1,
            mtime_ns: 0,
        },
    }
}
