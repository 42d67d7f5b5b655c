//! Directory listings: `opendir`, `readdir`, `readdirplus` and `releasedir` of `StoreFs`.
//!
//! The mount root lists the store paths cached now (a snapshot taken at opendir, never a fetch);
//! a directory inside a store path lists its manifest node. `readdirplus` also hands out each
//! entry's attributes, and every entry it hands out except "." and ".." is a kernel lookup: the
//! kernel counts it and will FORGET it, so it is counted here exactly like `lookup` counts.

use super::attr::{IMMUTABLE_TTL, Kind, root_attr};
use super::error::FsError;
use super::inode::Inode;
use super::{DirEntry, Lookup, StoreFs, attr_of, kind_of};
use crate::cache::Entry;
use crate::cache::manifest::{Manifest, Node, ROOT_NODE};
use crate::nix::nar::NodeId;
use crate::sync::{Arc, Ordering, lock};

/// A snapshot of the mount root's entries, taken at opendir so offsets stay stable. It holds the
/// entries themselves, so attributes of a path evicted since are still at hand (as they are for a
/// looked-up path) while the directory is open.
pub(super) type RootListing = Arc<Vec<Arc<Entry>>>;

/// What a listed name refers to, so its attributes are computed only when asked for.
enum Target<'a> {
    /// "." or "..": never a kernel lookup.
    Dot(DotAttr<'a>),
    /// A store path in the root listing.
    Path(&'a Arc<Entry>),
    /// Node `node` of the listed directory's store path.
    Node(&'a Arc<Entry>, NodeId),
}

/// Where the attributes of "." or ".." come from.
enum DotAttr<'a> {
    /// The mount root.
    Root,
    /// A directory node of a store path.
    Node(&'a Manifest, u64, NodeId),
}

impl StoreFs {
    /// Opens directory `ino`; the root's listing is snapshotted so offsets stay stable.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        match self.inode(ino)? {
            Inode::Root => {
                let mut listing = self.cache.entries();
                listing.sort_by(|a, b| a.store_path.cmp(&b.store_path));
                let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
                lock(&self.root_listings).insert(fh, Arc::new(listing));
                Ok(fh)
            }
            Inode::Node { slot, node } => match self.entry(slot)?.manifest.node(node) {
                Some(Node::Directory { .. }) => Ok(0),
                Some(_) => Err(FsError::NotADirectory),
                None => Err(FsError::UnknownInode(ino)),
            },
        }
    }

    /// Entries of directory `ino` from `offset` on (0 = start), including "." and "..".
    pub fn readdir(&self, ino: u64, fh: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let mut out = Vec::new();
        self.walk(ino, fh, offset, |entry, _| {
            out.push(entry);
            false
        })?;
        Ok(out)
    }

    /// Like `readdir`, with the attributes and TTL `lookup` would give each entry, handed to
    /// `add` until it returns true (the reply is full; that entry was not taken). Every entry
    /// taken except "." and ".." counts as one kernel lookup, before the reply can reach the
    /// kernel, so the FORGET that eventually follows finds it counted. Nothing is fetched: the
    /// root lists only cached paths, with attributes from their manifests.
    pub fn readdirplus(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, &Lookup) -> bool,
    ) -> Result<(), FsError> {
        // What the entries taken refer to, counted once the listing is complete.
        let mut paths: Vec<Arc<Entry>> = Vec::new();
        let mut nodes: Option<(Arc<Entry>, u64)> = None;
        let mut taken = 0;
        let mut failed = None;
        self.walk(ino, fh, offset, |entry, target| {
            let attr = match &target {
                Target::Dot(DotAttr::Root) => Ok(root_attr()),
                Target::Dot(DotAttr::Node(manifest, ino, node)) => attr_of(manifest, *ino, *node),
                Target::Path(path) => attr_of(&path.manifest, entry.ino, ROOT_NODE),
                Target::Node(path, node) => attr_of(&path.manifest, entry.ino, *node),
            };
            let attr = match attr {
                Ok(attr) => attr,
                Err(e) => {
                    failed = Some(e);
                    return true;
                }
            };
            if add(&entry, &Lookup { attr, ttl: IMMUTABLE_TTL }) {
                return true;
            }
            taken += 1;
            match target {
                Target::Dot(_) => {}
                Target::Path(path) => paths.push(path.clone()),
                Target::Node(path, _) => nodes.get_or_insert_with(|| (path.clone(), 0)).1 += 1,
            }
            false
        })?;
        // A failure after some entries ends this reply early; the kernel asks again from there.
        if let Some(err) = failed.filter(|_| taken == 0) {
            return Err(err);
        }
        for path in &paths {
            self.hold(path, 1, false);
        }
        if let Some((path, n)) = nodes {
            self.hold(&path, n, false);
        }
        Ok(())
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.root_listings).remove(&fh);
    }

    /// Calls `f` with each entry of directory `ino` from `offset` on and what it refers to,
    /// until `f` returns true.
    fn walk(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut f: impl FnMut(DirEntry, Target<'_>) -> bool,
    ) -> Result<(), FsError> {
        let mut emit = |index: usize, ino: u64, kind: Kind, name: &[u8], target: Target<'_>| {
            let next_offset = index as u64 + 1;
            index as u64 >= offset
                && f(DirEntry { ino, next_offset, kind, name: name.to_vec() }, target)
        };
        match self.inode(ino)? {
            Inode::Root => {
                let listing = lock(&self.root_listings).get(&fh).cloned().unwrap_or_default();
                let dot = || Target::Dot(DotAttr::Root);
                if emit(0, ino, Kind::Directory, b".", dot())
                    || emit(1, ino, Kind::Directory, b"..", dot())
                {
                    return Ok(());
                }
                for (i, path) in
                    listing.iter().enumerate().skip((offset as usize).saturating_sub(2))
                {
                    let slot = lock(&self.slots).slot_of(&path.store_path);
                    let child = Inode::Node { slot, node: ROOT_NODE }.ino();
                    let name = path.store_path.to_string();
                    let kind = kind_of(&path.manifest, ROOT_NODE);
                    if emit(i + 2, child, kind, name.as_bytes(), Target::Path(path)) {
                        break;
                    }
                }
            }
            Inode::Node { slot, node } => {
                let entry = self.entry(slot)?;
                let manifest = &entry.manifest;
                let Some(Node::Directory { parent, entries }) = manifest.node(node) else {
                    return Err(FsError::NotADirectory);
                };
                let (parent_ino, parent_attr) = if node == ROOT_NODE {
                    (Inode::Root.ino(), DotAttr::Root)
                } else {
                    let parent_ino = Inode::Node { slot, node: *parent }.ino();
                    (parent_ino, DotAttr::Node(manifest, parent_ino, *parent))
                };
                let this = Target::Dot(DotAttr::Node(manifest, ino, node));
                if emit(0, ino, Kind::Directory, b".", this)
                    || emit(1, parent_ino, Kind::Directory, b"..", Target::Dot(parent_attr))
                {
                    return Ok(());
                }
                for (i, (name, child)) in
                    entries.iter().enumerate().skip((offset as usize).saturating_sub(2))
                {
                    let kind = kind_of(manifest, *child);
                    let child_ino = Inode::Node { slot, node: *child }.ino();
                    if emit(i + 2, child_ino, kind, name, Target::Node(&entry, *child)) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}
