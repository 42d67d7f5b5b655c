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
mod passthrough;
mod paths;
pub mod read_log;
pub mod session;
pub mod state;

#[cfg(test)]
mod nar_data_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use futures::FutureExt;
use futures::future::BoxFuture;
use tracing::{debug, warn};

use self::attr::{Attr, IMMUTABLE_TTL, Kind, ROOT_TTL, node_attr, root_attr};
use self::dir::RootListing;
use self::error::FsError;
use self::inode::Inode;
use self::paths::PathTable;
use self::state::{Parked, ParkedHandle, Recovered, StateFile};
use crate::cache::contents::{FileContents, is_damage};
use crate::cache::manifest::{Manifest, Node, ROOT_NODE};
use crate::cache::{Entry, NarCache};
use crate::metrics::{self, Report, Snapshot};
use crate::nix::nar::NodeId;
use crate::nix::store_path::StorePath;
use crate::sync::{Arc, AtomicU64, Mutex, Ordering, RwLock, lock};

/// The file handle of a READ sent without an OPEN (see `fuse.rs`): the read names the inode.
pub const NO_HANDLE: u64 = 0;

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

/// The answer to a request that may need a fetch: ready now (from memory or the local disk, cheap
/// enough for a FUSE session thread), or only once a fetch finished (a future for the runtime).
#[must_use]
pub enum Answer<T> {
    /// Answered.
    Now(Result<T, FsError>),
    /// Answered when this future resolves; it fetches first.
    AfterFetch(BoxFuture<'static, Result<T, FsError>>),
}

impl<T: Send + 'static> Answer<T> {
    /// The result, waiting for the fetch if there is one.
    pub async fn wait(self) -> Result<T, FsError> {
        match self {
            Answer::Now(result) => result,
            Answer::AfterFetch(later) => later.await,
        }
    }

    /// Applies `f` to the value, now or after the fetch.
    fn and_then<U: Send + 'static>(
        self,
        f: impl FnOnce(T) -> Result<U, FsError> + Send + 'static,
    ) -> Answer<U> {
        match self {
            Answer::Now(result) => Answer::Now(result.and_then(f)),
            Answer::AfterFetch(later) => Answer::AfterFetch(later.map(|r| r.and_then(f)).boxed()),
        }
    }

    /// True when the answer is ready without a fetch.
    pub fn is_now(&self) -> bool {
        matches!(self, Answer::Now(_))
    }
}

impl<T> std::fmt::Debug for Answer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if matches!(self, Answer::Now(_)) {
            "Answer::Now"
        } else {
            "Answer::AfterFetch"
        })
    }
}

metrics::counters! {
    /// What the filesystem counts itself (reported under its keys in `metrics::METRICS`).
    pub struct FsCounters {
        /// File bytes returned to readers by `read` through the daemon.
        bytes_served,
    }
}

impl FsStats {
    /// The totals of a cache holding `used_bytes` of at most `max_bytes`.
    pub fn of_quota(used_bytes: u64, max_bytes: u64, paths: u64) -> Self {
        let total_bytes = max_bytes.max(used_bytes);
        FsStats { total_bytes, free_bytes: total_bytes - used_bytes, paths }
    }
}

/// The read-only store filesystem.
///
/// One method per kernel operation. Those that may have to fetch (`lookup`, `open`, `read`)
/// return an `Answer`: the FUSE adapter replies at once to `Answer::Now` and runs
/// `Answer::AfterFetch` on the async runtime. The others always answer from memory.
#[derive(Debug)]
pub struct StoreFs {
    cache: Arc<NarCache>,
    /// Slots, and the paths the kernel holds inodes of.
    paths: RwLock<PathTable>,
    /// Open files.
    files: Mutex<HashMap<u64, Arc<FileContents>>>,
    /// The mount root's listing and the cache generation it was taken at.
    root_listing: Mutex<Option<(u64, RootListing)>>,
    next_handle: AtomicU64,
    /// Where the files readers open are logged (`--record-reads`), if anywhere.
    read_log: Option<read_log::ReadLog>,
    /// What the filesystem did so far.
    pub counters: FsCounters,
}

impl StoreFs {
    /// A filesystem serving from `cache`.
    pub fn new(cache: Arc<NarCache>) -> Self {
        Self {
            cache,
            paths: RwLock::new(PathTable::default()),
            files: Mutex::new(HashMap::new()),
            root_listing: Mutex::new(None),
            next_handle: AtomicU64::new(1),
            read_log: None,
            counters: FsCounters::default(),
        }
    }

    /// The same filesystem, logging the files readers open to `log` (`--record-reads`).
    #[must_use]
    pub fn with_read_log(self, log: read_log::ReadLog) -> Self {
        Self { read_log: Some(log), ..self }
    }

    /// The cache behind the filesystem.
    pub fn cache(&self) -> &Arc<NarCache> {
        &self.cache
    }

    /// Looks up `name` in directory `parent`. Inside a store path the answer is in memory; a
    /// name in the mount root may have to be fetched first.
    pub fn lookup(self: &Arc<Self>, parent: u64, name: &[u8]) -> Answer<Lookup> {
        self.lookup_as(parent, name, None)
    }

    /// [`StoreFs::lookup`] by a reader with `uid`: a fetch it starts counts against the uid's
    /// rate (`--uid-rate`).
    pub fn lookup_as(
        self: &Arc<Self>,
        parent: u64,
        name: &[u8],
        uid: Option<u32>,
    ) -> Answer<Lookup> {
        match self.inode(parent) {
            Err(err) => Answer::Now(Err(err)),
            Ok(Inode::Node { slot, node }) => {
                let (this, name) = (self.clone(), name.to_vec());
                self.entry_answer(slot)
                    .and_then(move |entry| this.lookup_in_path(&entry, parent, slot, node, &name))
            }
            Ok(Inode::Root) => {
                // Not a store path name: no network request, ever.
                let sp = match StorePath::from_basename(name) {
                    Ok(sp) => sp,
                    Err(_) => {
                        let name = String::from_utf8_lossy(name).into_owned();
                        return Answer::Now(Err(FsError::NotFound(name)));
                    }
                };
                let this = self.clone();
                Answer::AfterFetch(Box::pin(async move {
                    let entry = this.cache.get_as(&sp, uid).await?;
                    let slot = this.hold(&entry, 1, true);
                    let ino = Inode::Node { slot, node: ROOT_NODE }.ino();
                    let attr = attr_of(&entry.manifest, ino, ROOT_NODE)?;
                    Ok(Lookup { attr, ttl: IMMUTABLE_TTL })
                }))
            }
        }
    }

    fn lookup_in_path(
        &self,
        entry: &Arc<Entry>,
        parent: u64,
        slot: u64,
        node: NodeId,
        name: &[u8],
    ) -> Result<Lookup, FsError> {
        match entry.manifest.node(node) {
            Some(Node::Directory { .. }) => {}
            Some(_) => return Err(FsError::NotADirectory),
            None => return Err(FsError::UnknownInode(parent)),
        }
        let child = entry
            .manifest
            .child(node, name)
            .ok_or_else(|| FsError::Absent(String::from_utf8_lossy(name).into_owned()))?;
        let ino = Inode::Node { slot, node: child }.ino();
        let attr = attr_of(&entry.manifest, ino, child)?;
        self.hold(entry, 1, false);
        Ok(Lookup { attr, ttl: IMMUTABLE_TTL })
    }

    /// The kernel dropped `nlookup` references to `ino`. When no inode of a store path is
    /// referenced any more, its manifest is released (it is reloaded on the next lookup).
    pub fn forget(&self, ino: u64, nlookup: u64) {
        let Some(Inode::Node { slot, .. }) = Inode::from_ino(ino) else { return };
        if let Some(entry) = self.write_paths().forget(slot, nlookup) {
            debug!(store_path = %entry.store_path, "kernel forgot the path; manifest released");
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

    /// Opens regular file `ino` for reading, returning a handle; any write access is EROFS.
    /// Fetches its path again if it was evicted since it was looked up (same NarHash, same tree),
    /// or found damaged.
    ///
    /// A file with a cache file of its own may be handed to the kernel whole (`--passthrough`),
    /// whose reads then never reach the daemon: so such a file is read and checked against its
    /// block checksums here, on the blocking pool, before the handle exists (docs/SEMANTICS.md).
    pub fn open(self: &Arc<Self>, ino: u64, flags: i32) -> Answer<u64> {
        if let Err(err) = read_only(flags) {
            return Answer::Now(Err(err));
        }
        let this = self.clone();
        let opened = match self.contents(ino) {
            Answer::Now(Ok(contents)) if contents.own_file().is_some() && contents.is_checked() => {
                let this = self.clone();
                Answer::AfterFetch(Box::pin(async move { this.checked_whole(ino, contents).await }))
            }
            other => other,
        };
        opened.and_then(move |contents| Ok(this.add_handle(contents)))
    }

    /// `contents` of regular file `ino` once every block was read and checked; if any is
    /// damaged, the file of a fresh copy of its path, checked too.
    async fn checked_whole(
        self: Arc<Self>,
        ino: u64,
        contents: FileContents,
    ) -> Result<FileContents, FsError> {
        let check = |contents: FileContents| async move {
            let checked = tokio::task::spawn_blocking(move || {
                let result = contents.check_all();
                (contents, result)
            });
            checked.await.map_err(|join| FsError::Io(std::io::Error::other(join)))
        };
        match check(contents).await? {
            (contents, Ok(())) => Ok(contents),
            (_, Err(problem)) if is_damage(&problem) => {
                let (entry, node) = self.regular_file(ino)?;
                let fresh = self.refetched(entry, node, problem).await?;
                let (fresh, result) = check(fresh).await?;
                result.map(|()| fresh).map_err(FsError::Io)
            }
            (_, Err(err)) => Err(FsError::Io(err)),
        }
    }

    /// Reads up to `size` bytes at `offset` of regular file `ino`, through open handle `fh`, or
    /// with `NO_HANDLE` (the kernel sent no OPEN, see `fuse.rs`) from the cache file itself.
    /// Reading a cached file is a `pread` of local disk or page cache, checked against the
    /// file's block checksums, quick enough for a FUSE thread; only a file whose path was
    /// evicted since its lookup, or whose cached copy is damaged (`is_damage`), waits for a
    /// fetch of its path, and the reader gets the fresh copy's bytes, never the damaged ones.
    ///
    /// Without a handle the cache file is opened for each read and closed after it: an open
    /// costs a path walk in the dentry cache, small beside the round trip that brought the READ
    /// (at most 1 MiB each), and a descriptor kept past the read would keep an evicted file's
    /// blocks allocated.
    pub fn read(self: &Arc<Self>, ino: u64, fh: u64, offset: u64, size: u32) -> Answer<Vec<u8>> {
        let this = self.clone();
        let serve = move |contents: &FileContents| this.serve(contents, offset, size);
        if fh != NO_HANDLE {
            let Some(contents) = self.file(fh) else {
                // A handle opened by a predecessor daemon (it crashed, so none was handed
                // over): the inode names the file just as well.
                debug!(fh, ino, "read through an unknown handle; reading the inode");
                return self.read(ino, NO_HANDLE, offset, size);
            };
            return match self.serve(&contents, offset, size) {
                Err(problem) if is_damage(&problem) => {
                    let this = self.clone();
                    self.after_damage(ino, problem).and_then(move |fresh| {
                        let fresh = this.replace_handle(fh, fresh);
                        Ok(serve(&fresh)?)
                    })
                }
                other => Answer::Now(other.map_err(FsError::Io)),
            };
        }
        match self.contents(ino) {
            Answer::Now(Ok(contents)) => match self.serve(&contents, offset, size) {
                Err(problem) if is_damage(&problem) => {
                    self.after_damage(ino, problem).and_then(move |fresh| Ok(serve(&fresh)?))
                }
                other => Answer::Now(other.map_err(FsError::Io)),
            },
            later => later.and_then(move |contents| Ok(serve(&contents)?)),
        }
    }

    /// Regular file `ino`, opened: at once if its path is cached, else after fetching it again.
    /// Either way it counts as use of its path (the kernel caches lookups for a year, so without
    /// this a path in constant use could look least recently used).
    fn contents(self: &Arc<Self>, ino: u64) -> Answer<FileContents> {
        let slot = match self.inode(ino) {
            Ok(Inode::Node { slot, .. }) => slot,
            Ok(Inode::Root) => return Answer::Now(Err(FsError::IsADirectory)),
            Err(err) => return Answer::Now(Err(err)),
        };
        match self.entry_answer(slot) {
            Answer::Now(Ok(_)) => self.contents_now(ino),
            Answer::Now(Err(err)) => Answer::Now(Err(err)),
            Answer::AfterFetch(later) => {
                let this = self.clone();
                Answer::AfterFetch(Box::pin(async move {
                    later.await?;
                    this.contents_now(ino).wait().await
                }))
            }
        }
    }

    /// [`StoreFs::contents`] once the entry of `ino`'s path is known.
    fn contents_now(self: &Arc<Self>, ino: u64) -> Answer<FileContents> {
        let (entry, node) = match self.regular_file(ino) {
            Ok(found) => found,
            Err(err) => return Answer::Now(Err(err)),
        };
        self.cache.mark_used(&entry.store_path);
        if let Some(log) = &self.read_log {
            log.opened(&entry, node);
        }
        self.cache.opened(&entry, node);
        if entry.is_missing(node) {
            // A path served from its file index: this file's bytes come now, verified.
            let this = self.clone();
            return Answer::AfterFetch(Box::pin(async move {
                let holder = this.cache.fetch_file(&entry, node).await?;
                if !Arc::ptr_eq(&holder, &entry) {
                    this.write_paths().refresh(&holder);
                }
                Ok(holder.open_file(node)?)
            }));
        }
        match entry.open_file(node) {
            Ok(contents) => Answer::Now(Ok(contents)),
            // Evicted since its lookup (`NotFound`), or its cache file damaged: the same path
            // again, from the kept narinfo.
            Err(problem) if is_damage(&problem) => {
                let this = self.clone();
                Answer::AfterFetch(Box::pin(
                    async move { this.refetched(entry, node, problem).await },
                ))
            }
            Err(e) => Answer::Now(Err(e.into())),
        }
    }

    /// Regular file `ino` from a fresh copy of its path: its cached copy was found damaged.
    fn after_damage(self: &Arc<Self>, ino: u64, problem: std::io::Error) -> Answer<FileContents> {
        let (entry, node) = match self.regular_file(ino) {
            Ok(found) => found,
            Err(err) => return Answer::Now(Err(err)),
        };
        let this = self.clone();
        Answer::AfterFetch(Box::pin(async move { this.refetched(entry, node, problem).await }))
    }

    /// File `node` of a fresh copy of `entry`'s path: `entry` had `problem` (`is_damage`), so it
    /// is set aside first unless it is already gone (evicted: then nothing is counted), and the
    /// path is fetched again with the same NarHash. A fresh copy that is damaged too is an error,
    /// never a loop.
    async fn refetched(
        &self,
        entry: Arc<Entry>,
        node: NodeId,
        problem: std::io::Error,
    ) -> Result<FileContents, FsError> {
        self.cache.set_aside(&entry, &problem.to_string()).await;
        // A read's fetch: bounded by --fetch-timeout like a lookup's (no uid: the path was
        // looked up already, so its turn was taken then).
        let mut fresh = self.cache.get_as(&entry.store_path, None).await?;
        if fresh.is_missing(node) {
            // Served from its file index again: this file is fetched anew.
            fresh = self.cache.fetch_file(&fresh, node).await?;
        }
        self.write_paths().refresh(&fresh);
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

    /// Up to `size` bytes at `offset` of `contents`, checked, and counted as served.
    fn serve(&self, contents: &FileContents, offset: u64, size: u32) -> std::io::Result<Vec<u8>> {
        let data = contents.read_at(offset, u64::from(size))?;
        metrics::add(&self.counters.bytes_served, data.len() as u64);
        Ok(data)
    }

    /// Points open handle `fh`, if still open, at `fresh` (its old cache file was damaged).
    fn replace_handle(&self, fh: u64, fresh: FileContents) -> Arc<FileContents> {
        let fresh = Arc::new(fresh);
        if let Some(held) = lock(&self.files).get_mut(&fh) {
            *held = fresh.clone();
        }
        fresh
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

    /// How many store paths the kernel holds (their entries are kept).
    #[cfg(test)]
    pub fn held_paths(&self) -> usize {
        self.paths.read().expect("paths lock poisoned by an earlier panic").held()
    }

    fn inode(&self, ino: u64) -> Result<Inode, FsError> {
        Inode::from_ino(ino).ok_or(FsError::UnknownInode(ino))
    }

    /// The entry of the path in `slot`: the one kept while the kernel holds it, else (a slot a
    /// predecessor daemon assigned, or one the kernel forgot) the cached one. A known path that
    /// is not cached is an error here; [`StoreFs::entry_answer`] fetches it.
    fn entry(&self, slot: u64) -> Result<Arc<Entry>, FsError> {
        match self.known_entry(slot)? {
            Ok(entry) => Ok(entry),
            Err(sp) => Err(FsError::Io(std::io::Error::other(format!(
                "{sp} was evicted while another daemon served it; it is fetched at its next \
                 lookup or read"
            )))),
        }
    }

    /// Ready when `ino`'s path can be answered from memory or the local disk; after a fetch when
    /// its slot is known but its path not cached (it was evicted while a predecessor daemon
    /// served the inode). Operations without an `Answer` of their own (`getattr`, `readlink`,
    /// listings) run after it.
    pub fn reloaded(self: &Arc<Self>, ino: u64) -> Answer<()> {
        match Inode::from_ino(ino) {
            Some(Inode::Node { slot, .. }) => match self.entry_answer(slot) {
                Answer::AfterFetch(later) => {
                    Answer::AfterFetch(Box::pin(async move { later.await.map(drop) }))
                }
                // Errors (ESTALE) are the operation's own to report.
                Answer::Now(_) => Answer::Now(Ok(())),
            },
            _ => Answer::Now(Ok(())),
        }
    }

    /// Like [`StoreFs::entry`], fetching a known path that is not cached.
    fn entry_answer(self: &Arc<Self>, slot: u64) -> Answer<Arc<Entry>> {
        match self.known_entry(slot) {
            Err(err) => Answer::Now(Err(err)),
            Ok(Ok(entry)) => Answer::Now(Ok(entry)),
            Ok(Err(sp)) => {
                let this = self.clone();
                Answer::AfterFetch(Box::pin(async move {
                    let entry = this.cache.get_as(&sp, None).await?;
                    this.write_paths().resolved(&entry);
                    Ok(entry)
                }))
            }
        }
    }

    /// The entry of `slot` if held or cached, else the path to fetch; unknown slots are ESTALE.
    fn known_entry(&self, slot: u64) -> Result<Result<Arc<Entry>, StorePath>, FsError> {
        let sp = {
            let paths = self.paths.read().expect("paths lock poisoned by an earlier panic");
            if let Some(entry) = paths.entry(slot) {
                return Ok(Ok(entry.clone()));
            }
            let sp = paths.path_of(slot).ok_or(FsError::UnknownInode(slot << inode::NODE_BITS));
            sp?.clone()
        };
        match self.cache.cached_or_loaded(&sp) {
            Some(entry) => {
                self.write_paths().resolved(&entry);
                Ok(Ok(entry))
            }
            None => Ok(Err(sp)),
        }
    }

    fn node_entry(&self, ino: u64) -> Result<(Arc<Entry>, NodeId), FsError> {
        match self.inode(ino)? {
            Inode::Root => Err(FsError::IsADirectory),
            Inode::Node { slot, node } => Ok((self.entry(slot)?, node)),
        }
    }

    fn write_paths(&self) -> std::sync::RwLockWriteGuard<'_, PathTable> {
        self.paths.write().expect("paths lock poisoned by an earlier panic")
    }

    /// Keeps the handover state in `state` from now on, taking over what a predecessor left in
    /// it (`recovered`): its slots, its lookup counts after a clean stop, and file handles of a
    /// new range. Returns the passthrough handles it left open.
    pub fn attach_state(&self, state: StateFile, recovered: &Recovered) -> Vec<ParkedHandle> {
        let epoch = state.epoch();
        let restored = self.write_paths().attach(state, recovered);
        // Handles of each daemon are distinct: a stale one from a predecessor is never reused.
        self.next_handle.store(epoch << 32 | 1, Ordering::Relaxed);
        if restored > 0 {
            debug!(restored, epoch, clean = recovered.parked.is_some(), "slots taken over");
        }
        recovered.parked.as_ref().map(|p| p.handles.clone()).unwrap_or_default()
    }

    /// Logs that passthrough backing id `id` backs inode `ino` (0: its id was closed), so a
    /// successor after a crash shares it with new opens.
    pub fn log_backing(&self, ino: u64, id: i32) {
        if let Some(Err(err)) = self.write_paths().state().map(|s| s.append_backing(ino, id)) {
            warn!(error = %err, ino, "cannot log a backing id");
        }
    }

    /// Records the connection parameters in the state file, if one is attached.
    pub fn set_connection_params(&self, params: &[u8]) -> std::io::Result<()> {
        match self.write_paths().state() {
            Some(state) => state.set_params(params),
            None => Ok(()),
        }
    }

    /// Writes what a successor needs beyond the slot log: the kernel's lookup counts and the
    /// passthrough `handles` still open. Called once serving stopped.
    pub fn park(&self, handles: Vec<ParkedHandle>) -> std::io::Result<()> {
        let mut paths = self.write_paths();
        let lookups = paths.lookups();
        match paths.state() {
            Some(state) => state.park(&Parked { lookups, handles }),
            None => Ok(()),
        }
    }

    /// Serving goes on here after a park (a failed upgrade): the park record is void.
    pub fn unpark(&self) {
        if let Some(Err(err)) = self.write_paths().state().map(StateFile::clear_park) {
            warn!(error = %err, "cannot clear the park record");
        }
    }

    /// Counts `n` kernel references (lookups) to inodes of `entry`'s store path and keeps its
    /// entry while any is held (`fresh`: replacing the one kept). Returns the slot.
    fn hold(&self, entry: &Arc<Entry>, n: u64, fresh: bool) -> u64 {
        self.write_paths().hold(entry, n, fresh)
    }
}

impl Report for StoreFs {
    fn report(&self, snap: &mut Snapshot) {
        for (key, n) in self.counters.figures() {
            snap.set(key, n);
        }
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
