//! Filesystem semantics of the mount, independent of the FUSE crate.
//!
//! `StoreFs` answers lookups, attributes, directory listings, links and reads with plain structs;
//! `fuse.rs` turns them into kernel replies. The root directory holds store paths: a name that is
//! not a valid store path basename is ENOENT without any network request, a valid one is fetched
//! through the cache. Everything inside a store path comes from its manifest and cached files.

pub mod attr;
mod dir;
pub mod error;
pub mod fuse;
pub mod inode;
pub mod session;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use tracing::debug;

use self::attr::{Attr, IMMUTABLE_TTL, Kind, ROOT_TTL, node_attr, root_attr};
use self::dir::RootListing;
use self::error::FsError;
use self::inode::{Inode, SlotTable};
use crate::cache::contents::FileContents;
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

/// Filesystem totals for `statfs`: the cache quota, as CVMFS reports it, so `df` and disk-full
/// alerts see how full the cache is rather than a read-only filesystem with no room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FsStats {
    /// The size: `--max-size`, or the bytes cached when pinned paths hold more.
    pub total_bytes: u64,
    /// What may still be fetched before least recently used paths are evicted.
    pub free_bytes: u64,
    /// Cached store paths.
    pub paths: u64,
}

impl FsStats {
    /// The totals of a cache holding `used_bytes` of at most `max_bytes`.
    pub fn of_quota(used_bytes: u64, max_bytes: u64, paths: u64) -> Self {
        let total_bytes = max_bytes.max(used_bytes);
        FsStats { total_bytes, free_bytes: total_bytes - used_bytes, paths }
    }
}

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
    /// Open files.
    files: Mutex<HashMap<u64, Arc<FileContents>>>,
    /// The mount root's listing and the cache generation it was taken at.
    root_listing: Mutex<Option<(u64, RootListing)>>,
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
            root_listing: Mutex::new(None),
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
                let slot = self.hold(&entry, 1, true);
                let ino = Inode::Node { slot, node: ROOT_NODE }.ino();
                Ok(Lookup { attr: attr_of(&entry.manifest, ino, ROOT_NODE)?, ttl: IMMUTABLE_TTL })
            }
            Inode::Node { slot, node } => self.lookup_in_path(parent, slot, node, name),
        }
    }

    /// `lookup`, when it needs no fetch: inside a store path, whose manifest is in memory. None
    /// in the mount root, where a name may have to be fetched first.
    pub fn lookup_local(&self, parent: u64, name: &[u8]) -> Option<Result<Lookup, FsError>> {
        match self.inode(parent) {
            Ok(Inode::Root) => None,
            Ok(Inode::Node { slot, node }) => Some(self.lookup_in_path(parent, slot, node, name)),
            Err(err) => Some(Err(err)),
        }
    }

    fn lookup_in_path(
        &self,
        parent: u64,
        slot: u64,
        node: NodeId,
        name: &[u8],
    ) -> Result<Lookup, FsError> {
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
        self.hold(&entry, 1, false);
        Ok(Lookup { attr, ttl: IMMUTABLE_TTL })
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
            let mut paths = self.paths.write().expect("paths lock poisoned by an earlier panic");
            if let Some(entry) = paths.remove(&slot) {
                debug!(store_path = %entry.store_path, "kernel forgot the path; manifest released");
            }
        }
    }

    /// Attributes of `ino`.
    pub fn getattr(&self, ino: u64) -> Result<Lookup, FsError> {
        match self.inode(ino)? {
            Inode::Root => Ok(Lookup { attr: root_attr(self.cache.generation()), ttl: ROOT_TTL }),
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

    /// Opens regular file `ino` for reading if its path is still cached, without waiting:
    /// `Ok(None)` means it was evicted and `open` must fetch it again. Write access is EROFS.
    pub fn open_cached(&self, ino: u64, flags: i32) -> Result<Option<u64>, FsError> {
        read_only(flags)?;
        Ok(self.contents_cached(ino)?.map(|contents| self.add_handle(contents)))
    }

    /// Opens regular file `ino` for reading, fetching its path again if it was evicted since it
    /// was looked up (same NarHash, same tree); any write access is EROFS.
    pub async fn open(&self, ino: u64, flags: i32) -> Result<u64, FsError> {
        read_only(flags)?;
        Ok(self.add_handle(self.contents(ino).await?))
    }

    /// Regular file `ino`, opened, if its path is still cached (None: evicted). Opening a file
    /// counts as use of its path: the kernel caches lookups for a year, so without this a path
    /// in constant use could look least recently used.
    fn contents_cached(&self, ino: u64) -> Result<Option<FileContents>, FsError> {
        let (entry, node) = self.regular_file(ino)?;
        self.cache.cached(&entry.store_path);
        match entry.open_file(node) {
            Ok(contents) => Ok(Some(contents)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// `contents_cached`, fetching the path again if it was evicted since it was looked up.
    async fn contents(&self, ino: u64) -> Result<FileContents, FsError> {
        if let Some(contents) = self.contents_cached(ino)? {
            return Ok(contents);
        }
        let (entry, node) = self.regular_file(ino)?;
        let fresh = self.cache.get(&entry.store_path).await?;
        self.remember(fresh.clone());
        Ok(fresh.open_file(node)?)
    }

    /// The entry and node of regular file `ino`.
    fn regular_file(&self, ino: u64) -> Result<(Arc<Entry>, NodeId), FsError> {
        let (entry, node) = self.node_entry(ino)?;
        match entry.manifest.node(node) {
            Some(Node::File { .. }) => Ok((entry, node)),
            Some(Node::Directory { .. }) => Err(FsError::IsADirectory),
            Some(Node::Symlink { .. }) | None => Err(FsError::UnknownInode(ino)),
        }
    }

    /// A new handle for `contents`.
    fn add_handle(&self, contents: FileContents) -> u64 {
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        lock(&self.files).insert(fh, Arc::new(contents));
        fh
    }

    /// The cached file behind open file `fh` (for kernel passthrough).
    pub fn file(&self, fh: u64) -> Option<Arc<FileContents>> {
        lock(&self.files).get(&fh).cloned()
    }

    /// Reads up to `size` bytes at `offset` from open file `fh`: a `pread` of the cache file,
    /// which is quick (local disk or page cache), so callers may run it on a FUSE thread.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let contents = self.file(fh).ok_or(FsError::BadHandle(fh))?;
        self.read_contents(&contents, offset, size)
    }

    /// Reads up to `size` bytes at `offset` of regular file `ino` without an open handle (the
    /// kernel sends no OPEN, see `fuse.rs`), if its path is still cached. Quick, like `read`.
    /// `Ok(None)`: the path was evicted and `read_ino` must fetch it again.
    ///
    /// The cache file is opened for each read and closed after it: an open costs a path walk in
    /// the dentry cache, small beside the round trip that brought the READ (at most 1 MiB each),
    /// and a descriptor kept past the read would keep an evicted file's blocks allocated.
    pub fn read_ino_cached(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> Result<Option<Vec<u8>>, FsError> {
        let contents = self.contents_cached(ino)?;
        contents.map(|contents| self.read_contents(&contents, offset, size)).transpose()
    }

    /// `read_ino_cached`, fetching the path again if it was evicted since it was looked up (same
    /// NarHash, same tree).
    pub async fn read_ino(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        self.read_contents(&self.contents(ino).await?, offset, size)
    }

    /// Up to `size` bytes at `offset` of `contents`, counted as served.
    fn read_contents(
        &self,
        contents: &FileContents,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FsError> {
        let data = contents.read_at(offset, u64::from(size))?;
        CacheStats::add(&self.cache.stats.bytes_served, data.len() as u64);
        Ok(data)
    }

    /// Closes open file `fh`.
    pub fn release(&self, fh: u64) {
        lock(&self.files).remove(&fh);
    }

    /// Totals for `statfs`: the cache's quota, its use and its room.
    pub fn statfs(&self) -> FsStats {
        let paths = self.cache.entry_count() as u64;
        FsStats::of_quota(self.cache.used_bytes(), self.cache.max_bytes(), paths)
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

    /// Counts `n` kernel references (lookups) to inodes of `entry`'s store path and keeps its
    /// manifest while any is held; `fresh` replaces the entry already kept, else it is kept only
    /// if none is. Both happen under the `lookups` lock (taken before `paths`, as in `forget`), so
    /// a concurrent forget cannot drop the manifest between them. Returns the slot.
    fn hold(&self, entry: &Arc<Entry>, n: u64, fresh: bool) -> u64 {
        let slot = lock(&self.slots).slot_of(&entry.store_path);
        let mut lookups = lock(&self.lookups);
        *lookups.entry(slot).or_default() += n;
        let mut paths = self.paths.write().expect("paths lock poisoned by an earlier panic");
        if fresh {
            paths.insert(slot, entry.clone());
        } else {
            paths.entry(slot).or_insert_with(|| entry.clone());
        }
        slot
    }

    /// Records `entry` under its slot, returning the slot.
    fn remember(&self, entry: Arc<Entry>) -> u64 {
        let slot = lock(&self.slots).slot_of(&entry.store_path);
        let mut paths = self.paths.write().expect("paths lock poisoned by an earlier panic");
        paths.insert(slot, entry);
        slot
    }
}

/// EROFS unless `flags` open a file read-only (no write access, no `O_TRUNC`).
fn read_only(flags: i32) -> Result<(), FsError> {
    if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
        return Err(FsError::ReadOnly);
    }
    Ok(())
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
