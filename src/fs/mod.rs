//! Filesystem semantics of the mount, independent of the FUSE crate.
//!
//! `StoreFs` answers lookups, attributes, directory listings, links and reads with plain structs;
//! `fuse.rs` turns them into kernel replies. The root directory holds store paths: a name that is
//! not a valid store path basename is ENOENT without any network request, a valid one is fetched
//! through the cache. Everything inside a store path comes from its manifest and cached files.

pub mod attr;
pub mod error;
pub mod fuse;
pub mod inode;
pub mod session;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use self::attr::{Attr, IMMUTABLE_TTL, Kind, ROOT_TTL, node_attr, root_attr};
use self::error::FsError;
use self::inode::{Inode, SlotTable};
use crate::cache::manifest::{Manifest, Node, ROOT_NODE};
use crate::cache::stats::CacheStats;
use crate::cache::{Entry, NarCache};
use crate::nix::nar::NodeId;
use crate::nix::store_path::StorePath;
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, RwLock, lock};

/// A looked-up name: its attributes and how long the kernel may keep them.
#[derive(Clone, Copy, Debug)]
pub struct Lookup {
    /// The attributes.
    pub attr: Attr,
    /// Entry and attribute lifetime in the kernel.
    pub ttl: std::time::Duration,
}

/// One directory entry as `readdir` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// Its inode number.
    pub ino: u64,
    /// The offset of the entry after it (what the kernel passes back to continue).
    pub next_offset: u64,
    /// Its kind.
    pub kind: Kind,
    /// Its name.
    pub name: Vec<u8>,
}

/// Filesystem totals for `statfs`.
#[derive(Clone, Copy, Debug)]
pub struct FsStats {
    /// Bytes in the cache.
    pub used_bytes: u64,
    /// Cached store paths.
    pub paths: u64,
}

/// A snapshot of the mount root's entries, taken at opendir so offsets stay stable.
type RootListing = Arc<Vec<(StorePath, Kind)>>;

/// The read-only store filesystem.
#[derive(Debug)]
pub struct StoreFs {
    cache: Arc<NarCache>,
    slots: Mutex<SlotTable>,
    /// Manifests of the paths the kernel knows inodes of; kept after eviction so metadata stays
    /// answerable (it is immutable) while data reopens trigger a re-fetch.
    paths: RwLock<HashMap<u64, Arc<Entry>>>,
    /// Kernel references (lookups not yet forgotten) per slot; at zero the manifest is dropped,
    /// which bounds memory by what the kernel holds, not by what was ever looked up.
    lookups: Mutex<HashMap<u64, u64>>,
    files: Mutex<HashMap<u64, Arc<File>>>,
    root_listings: Mutex<HashMap<u64, RootListing>>,
    next_handle: AtomicU64,
}

impl StoreFs {
    /// A filesystem serving from `cache`.
    pub fn new(cache: Arc<NarCache>) -> Self {
        Self {
            cache,
            slots: Mutex::new(SlotTable::default()),
            paths: RwLock::new(HashMap::new()),
            lookups: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            root_listings: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
        }
    }

    /// The cache behind the filesystem.
    pub fn cache(&self) -> &Arc<NarCache> {
        &self.cache
    }

    /// Looks up `name` in directory `parent`.
    pub async fn lookup(&self, parent: u64, name: &[u8]) -> Result<Lookup, FsError> {
        match self.inode(parent)? {
            Inode::Root => {
                // Not a store path name: no network request, ever.
                let sp = StorePath::from_basename(name)
                    .map_err(|_| FsError::NotFound(String::from_utf8_lossy(name).into_owned()))?;
                let entry = self.cache.get(&sp).await?;
                let slot = self.remember(entry.clone());
                *lock(&self.lookups).entry(slot).or_default() += 1;
                let ino = Inode::Node { slot, node: ROOT_NODE }.ino();
                Ok(Lookup { attr: attr_of(&entry.manifest, ino, ROOT_NODE)?, ttl: IMMUTABLE_TTL })
            }
            Inode::Node { slot, node } => {
                let entry = self.entry(slot)?;
                match entry.manifest.node(node) {
                    Some(Node::Directory { .. }) => {}
                    Some(_) => return Err(FsError::NotADirectory),
                    None => return Err(FsError::UnknownInode(parent)),
                }
                let child = entry
                    .manifest
                    .child(node, name)
                    .ok_or_else(|| FsError::NotFound(String::from_utf8_lossy(name).into_owned()))?;
                let ino = Inode::Node { slot, node: child }.ino();
                let attr = attr_of(&entry.manifest, ino, child)?;
                *lock(&self.lookups).entry(slot).or_default() += 1;
                Ok(Lookup { attr, ttl: IMMUTABLE_TTL })
            }
        }
    }

    /// The kernel dropped `nlookup` references to `ino`. When no inode of a store path is
    /// referenced any more, its manifest is released (it is reloaded on the next lookup).
    pub fn forget(&self, ino: u64, nlookup: u64) {
        let Some(Inode::Node { slot, .. }) = Inode::from_ino(ino) else { return };
        let mut lookups = lock(&self.lookups);
        let Some(count) = lookups.get_mut(&slot) else { return };
        *count = count.saturating_sub(nlookup);
        if *count == 0 {
            lookups.remove(&slot);
            self.paths.write().expect("paths lock poisoned by an earlier panic").remove(&slot);
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Lookup, FsError> {
        match self.inode(ino)? {
            Inode::Root => Ok(Lookup { attr: root_attr(), ttl: ROOT_TTL }),
            Inode::Node { slot, node } => {
                let entry = self.entry(slot)?;
                Ok(Lookup { attr: attr_of(&entry.manifest, ino, node)?, ttl: IMMUTABLE_TTL })
            }
        }
    }

    /// Target of symlink `ino`, verbatim.
    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>, FsError> {
        let (entry, node) = self.node_entry(ino)?;
        match entry.manifest.node(node) {
            Some(Node::Symlink { target, .. }) => Ok(target.clone()),
            Some(_) => Err(FsError::NotASymlink),
            None => Err(FsError::UnknownInode(ino)),
        }
    }

    /// Opens regular file `ino` for reading; any write access is EROFS.
    pub async fn open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(FsError::ReadOnly);
        }
        let (entry, node) = self.node_entry(ino)?;
        match entry.manifest.node(node) {
            Some(Node::File { .. }) => {}
            Some(Node::Directory { .. }) => return Err(FsError::IsADirectory),
            Some(Node::Symlink { .. }) | None => return Err(FsError::UnknownInode(ino)),
        }
        // Reads count as use: the kernel caches lookups for a year, so without this a path in
        // constant use could look least recently used.
        self.cache.cached(&entry.store_path);
        let file = match entry.open_file(node) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Evicted since it was looked up: fetch it again (same NarHash, same tree).
                let fresh = self.cache.get(&entry.store_path).await?;
                self.remember(fresh.clone());
                fresh.open_file(node)?
            }
            Err(e) => return Err(e.into()),
        };
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, Arc::new(file));
        Ok(fh)
    }

    /// The cache file behind open file `fh` (for kernel passthrough).
    pub fn file(&self, fh: u64) -> Option<Arc<File>> {
        lock(&self.files).get(&fh).cloned()
    }

    /// Reads up to `size` bytes at `offset` from open file `fh`.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let file = lock(&self.files).get(&fh).cloned().ok_or(FsError::BadHandle(fh))?;
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
        }
        buf.truncate(filled);
        CacheStats::add(&self.cache.stats.bytes_served, filled as u64);
        Ok(buf)
    }

    /// Closes open file `fh`.
    pub fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    /// Opens directory `ino`; the root's listing is snapshotted so offsets stay stable.
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        match self.inode(ino)? {
            Inode::Root => {
                let mut listing: Vec<_> = (self.cache.entries().iter())
                    .map(|e| (e.store_path.clone(), root_kind(&e.manifest)))
                    .collect();
                listing.sort_by(|a, b| a.0.cmp(&b.0));
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
        let mut push = |index: usize, ino: u64, kind: Kind, name: &[u8]| {
            if index as u64 >= offset {
                out.push(DirEntry {
                    ino,
                    next_offset: index as u64 + 1,
                    kind,
                    name: name.to_vec(),
                });
            }
        };
        match self.inode(ino)? {
            Inode::Root => {
                let listing = lock(&self.root_listings).get(&fh).cloned().unwrap_or_default();
                push(0, ino, Kind::Directory, b".");
                push(1, ino, Kind::Directory, b"..");
                let mut slots = lock(&self.slots);
                for (i, (sp, kind)) in listing.iter().enumerate() {
                    let child = Inode::Node { slot: slots.slot_of(sp), node: ROOT_NODE }.ino();
                    push(i + 2, child, *kind, sp.to_string().as_bytes());
                }
            }
            Inode::Node { slot, node } => {
                let entry = self.entry(slot)?;
                let Some(Node::Directory { parent, entries }) = entry.manifest.node(node) else {
                    return Err(FsError::NotADirectory);
                };
                let parent_ino = if node == ROOT_NODE {
                    Inode::Root.ino()
                } else {
                    Inode::Node { slot, node: *parent }.ino()
                };
                push(0, ino, Kind::Directory, b".");
                push(1, parent_ino, Kind::Directory, b"..");
                for (i, (name, child)) in entries.iter().enumerate() {
                    let kind = kind_of(&entry.manifest, *child);
                    push(i + 2, Inode::Node { slot, node: *child }.ino(), kind, name);
                }
            }
        }
        Ok(out)
    }

    /// Closes directory handle `fh`.
    pub fn releasedir(&self, fh: u64) {
        lock(&self.root_listings).remove(&fh);
    }

    /// Totals for `statfs`.
    pub fn statfs(&self) -> FsStats {
        FsStats { used_bytes: self.cache.used_bytes(), paths: self.cache.entries().len() as u64 }
    }

    fn inode(&self, ino: u64) -> Result<Inode, FsError> {
        Inode::from_ino(ino).ok_or(FsError::UnknownInode(ino))
    }

    fn entry(&self, slot: u64) -> Result<Arc<Entry>, FsError> {
        let paths = self.paths.read().expect("paths lock poisoned by an earlier panic");
        paths.get(&slot).cloned().ok_or(FsError::UnknownInode(slot << inode::NODE_BITS))
    }

    fn node_entry(&self, ino: u64) -> Result<(Arc<Entry>, NodeId), FsError> {
        match self.inode(ino)? {
            Inode::Root => Err(FsError::IsADirectory),
            Inode::Node { slot, node } => Ok((self.entry(slot)?, node)),
        }
    }

    /// Records `entry` under its slot, returning the slot.
    fn remember(&self, entry: Arc<Entry>) -> u64 {
        let slot = lock(&self.slots).slot_of(&entry.store_path);
        let mut paths = self.paths.write().expect("paths lock poisoned by an earlier panic");
        paths.insert(slot, entry);
        slot
    }
}

/// Attributes of node `id` of `manifest`.
fn attr_of(manifest: &Manifest, ino: u64, id: NodeId) -> Result<Attr, FsError> {
    let node = manifest.node(id).ok_or(FsError::UnknownInode(ino))?;
    let subdirs = match node {
        Node::Directory { entries, .. } => entries
            .iter()
            .filter(|(_, c)| matches!(manifest.node(*c), Some(Node::Directory { .. })))
            .count() as u32,
        _ => 0,
    };
    Ok(node_attr(ino, node, subdirs))
}

fn kind_of(manifest: &Manifest, id: NodeId) -> Kind {
    match manifest.node(id) {
        Some(Node::Directory { .. }) => Kind::Directory,
        Some(Node::File { .. }) => Kind::File,
        Some(Node::Symlink { .. }) | None => Kind::Symlink,
    }
}

fn root_kind(manifest: &Manifest) -> Kind {
    kind_of(manifest, ROOT_NODE)
}
