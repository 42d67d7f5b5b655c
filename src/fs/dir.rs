//! Directory listings: `readdir` and `readdirplus` of `StoreFs`. There is no opendir: the kernel
//! is told it is not needed (fuse.rs), which saves a round trip per directory listed.
//!
//! The mount root lists the store paths cached now (never a fetch), ordered by inode slot; an
//! entry's offset cookie is its slot (+ 3, after "." and ".."), so a listing continued after
//! paths came or went neither repeats nor skips a path that stayed. A directory inside a store
//! path lists its manifest node, by index. `readdirplus` also hands out each
//! entry's attributes, and every entry it hands out except "." and ".." is a kernel lookup: the
//! kernel counts it and will FORGET it, so it is counted here exactly like `lookup` counts.

use super::attr::{IMMUTABLE_TTL, Kind, root_attr};
use super::error::FsError;
use super::inode::Inode;
use super::{DirEntry, Lookup, StoreFs, attr_of, kind_of};
use crate::cache::Entry;
use crate::cache::manifest::{Manifest, Node, ROOT_NODE};
use crate::nix::nar::NodeId;
use crate::sync::{Arc, lock};

/// The mount root's entries at one cache generation, by slot. It holds the entries themselves, so
/// attributes of a path evicted since are still at hand (as they are for a looked-up path).
pub(super) type RootListing = Arc<Vec<(u64, Arc<Entry>)>>;

/// Offset cookies of "." and ".."; a root entry's cookie is its slot plus this.
const FIRST_COOKIE: u64 = 3;

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
    /// The mount root's listing now: computed once per cache generation, so a listing read in
    /// many replies does not sort the cache for each.
    fn root_listing(&self) -> RootListing {
        let generation = self.cache.generation();
        let mut cached = lock(&self.root_listing);
        if let Some((_, listing)) = cached.as_ref().filter(|(at, _)| *at == generation) {
            return listing.clone();
        }
        let entries = self.cache.entries();
        let mut listing: Vec<(u64, Arc<Entry>)> = {
            let mut paths = self.write_paths();
            entries.into_iter().map(|e| (paths.slot_of(&e.store_path), e)).collect()
        };
        listing.sort_by_key(|(slot, _)| *slot);
        let listing = Arc::new(listing);
        *cached = Some((generation, listing.clone()));
        listing
    }

    /// Entries of directory `ino` from `offset` on (0 = start), including "." and "..".
    pub fn readdir(&self, ino: u64, offset: u64) -> Result<Vec<DirEntry>, FsError> {
        let mut out = Vec::new();
        self.walk(ino, offset, |entry, _| {
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
        offset: u64,
        mut add: impl FnMut(&DirEntry, &Lookup) -> bool,
    ) -> Result<(), FsError> {
        // What the entries taken refer to, counted once the listing is complete.
        let mut paths: Vec<Arc<Entry>> = Vec::new();
        let mut nodes: Option<(Arc<Entry>, u64)> = None;
        let mut taken = 0;
        let mut failed = None;
        let generation = self.cache.generation();
        self.walk(ino, offset, |entry, target| {
            let attr = match &target {
                Target::Dot(DotAttr::Root) => Ok(root_attr(generation)),
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

    /// Calls `f` with each entry of directory `ino` from `offset` on and what it refers to,
    /// until `f` returns true.
    fn walk(
        &self,
        ino: u64,
        offset: u64,
        mut f: impl FnMut(DirEntry, Target<'_>) -> bool,
    ) -> Result<(), FsError> {
        // An entry's cookie is the offset the kernel passes back to continue after it.
        let mut emit = |cookie: u64, ino: u64, kind: Kind, name: &[u8], target: Target<'_>| {
            cookie > offset
                && f(DirEntry { ino, next_offset: cookie, kind, name: name.to_vec() }, target)
        };
        match self.inode(ino)? {
            Inode::Root => {
                let dot = || Target::Dot(DotAttr::Root);
                if emit(1, ino, Kind::Directory, b".", dot())
                    || emit(2, ino, Kind::Directory, b"..", dot())
                {
                    return Ok(());
                }
                let listing = self.root_listing();
                let start = listing.partition_point(|(slot, _)| slot + FIRST_COOKIE <= offset);
                for (slot, path) in &listing[start..] {
                    let child = Inode::Node { slot: *slot, node: ROOT_NODE }.ino();
                    let name = path.store_path.to_string();
                    let kind = kind_of(&path.manifest, ROOT_NODE);
                    if emit(slot + FIRST_COOKIE, child, kind, name.as_bytes(), Target::Path(path)) {
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
                if emit(1, ino, Kind::Directory, b".", this)
                    || emit(2, parent_ino, Kind::Directory, b"..", Target::Dot(parent_attr))
                {
                    return Ok(());
                }
                for (i, (name, child)) in
                    entries.iter().enumerate().skip((offset as usize).saturating_sub(2))
                {
                    let kind = kind_of(manifest, *child);
                    let child_ino = Inode::Node { slot, node: *child }.ino();
                    if emit(
                        i as u64 + FIRST_COOKIE,
                        child_ino,
                        kind,
                        name,
                        Target::Node(&entry, *child),
                    ) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}
