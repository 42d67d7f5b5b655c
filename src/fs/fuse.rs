//! The FUSE adapter: one kernel request in, one `StoreFs` call, one reply out. Nothing else.
//!
//! Files open without a round trip: the daemon answers the first OPEN with ENOSYS, so the kernel
//! sends no more (`FUSE_NO_OPEN_SUPPORT`), keeps each file's data in its page cache across opens,
//! and asks for a page only when it lacks it; a READ then names just the inode. `--passthrough`
//! instead answers each OPEN with the cache file as backing file, which the kernel then reads
//! directly.
//!
//! Requests that may touch the network (lookup of a store path, read or open of an evicted file)
//! run as tokio tasks, so the FUSE request loop never waits on a download. Everything else is answered
//! on the session thread from memory or the local disk: a hop to another thread would cost more
//! than the work.

use std::fs::File;
use std::time::{Duration, UNIX_EPOCH};

use tokio::runtime::Handle;
use tracing::{Level, debug, event, info, warn};

use super::attr::{Attr, BLKSIZE, IMMUTABLE_TTL, Kind};
use super::error::FsError;
use super::passthrough::Backing;
use super::state::ParkedHandle;
use super::{Answer, StoreFs};
use crate::logging::{Throttle, warn_throttled};
use crate::sync::{Arc, AtomicBool, Ordering};
use crate::wire::{
    BackingId, ConnParams, FOPEN_KEEP_CACHE, FOPEN_NOFLUSH, FileAttr, Handler, InitAnswer,
    KernelOffer, ReplyAttr, ReplyData, ReplyDir, ReplyDirPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr, RequestInfo, Statfs, init_flags as flag,
};

/// Largest read the kernel may send us at once.
const MAX_READAHEAD_BYTES: u32 = 1024 * 1024;

/// Adapts `StoreFs` to the FUSE transport's `Handler`.
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<StoreFs>,
    rt: Handle,
    backing: Arc<Backing<BackingId>>,
    /// The kernel needs an answer to OPENDIR (it lacks `FUSE_NO_OPENDIR_SUPPORT`).
    opendirs: AtomicBool,
}

impl FuseAdapter {
    /// Serves `fs`, running request handlers on the runtime behind `rt`; with `passthrough`, open
    /// files are read by the kernel directly where the kernel allows it.
    pub fn new(fs: Arc<StoreFs>, rt: Handle, passthrough: bool) -> Self {
        let backing = Arc::new(Backing::new(passthrough));
        Self { fs, rt, backing, opendirs: AtomicBool::new(false) }
    }

    /// The open passthrough handles, to hand over at a park or take over at a resume.
    pub fn open_handles(&self) -> OpenHandles {
        OpenHandles(self.backing.clone())
    }

    /// Replies with `answer` now, or from a task once its fetch is done.
    fn respond<T: Send + 'static>(
        &self,
        answer: Answer<T>,
        reply: impl FnOnce(Result<T, FsError>) + Send + 'static,
    ) {
        match answer {
            Answer::Now(result) => reply(result),
            Answer::AfterFetch(later) => drop(self.rt.spawn(async move { reply(later.await) })),
        }
    }

    /// What the kernel granted, at INIT or on resuming: the open policy and the listing mode.
    fn apply(&self, granted: u64) {
        let passthrough = granted & flag::PASSTHROUGH != 0;
        if passthrough {
            info!("FUSE passthrough on: each open asks the daemon, the kernel reads cache files");
        } else if self.backing.wanted() {
            warn!("FUSE passthrough unavailable (kernel < 6.9?); files open without it");
        }
        // A kernel without FUSE_NO_OPEN_SUPPORT (before 4.19) or FUSE_NO_OPENDIR_SUPPORT (before
        // 5.1) would fail an open answered ENOSYS: it gets the classic answers.
        self.backing.negotiated(passthrough, granted & flag::NO_OPEN_SUPPORT != 0);
        self.opendirs.store(granted & flag::NO_OPENDIR_SUPPORT == 0, Ordering::Relaxed);
        if !self.backing.answers_opens() {
            info!("files open without a round trip; the kernel page cache keeps their data");
        }
    }
}

/// The passthrough handles open through an adapter: their backing ids belong to the connection,
/// so a handover leaves them open and the successor shares them with later opens of the same
/// inodes (the kernel refuses a second backing file for an inode with open handles) and closes
/// them with the last release.
#[derive(Clone, Debug)]
pub struct OpenHandles(Arc<Backing<BackingId>>);

impl OpenHandles {
    /// Empties the table, leaving every id open in the connection (call once serving stopped).
    pub fn park(&self) -> Vec<ParkedHandle> {
        let parked = self.0.park(BackingId::leave_open);
        let handle = |(fh, ino, id): (u64, u64, i32)| {
            Some(ParkedHandle { fh, ino, backing: u32::try_from(id).ok()? })
        };
        parked.into_iter().filter_map(handle).collect()
    }

    /// Takes over the backing ids a crashed predecessor left open (see `Backing::keep_crashed`).
    pub fn keep_crashed(&self, ids: &[(u64, i32)]) {
        self.0.keep_crashed(ids);
    }

    /// Takes over the handles a predecessor parked.
    pub fn restore(&self, handles: &[ParkedHandle]) {
        let raw = |h: &ParkedHandle| Some((h.fh, h.ino, i32::try_from(h.backing).ok()?));
        self.0.restore(&handles.iter().filter_map(raw).collect::<Vec<_>>());
    }
}

fn to_file_attr(attr: &Attr) -> FileAttr {
    let since_epoch = attr.mtime().duration_since(UNIX_EPOCH).unwrap_or_default();
    let type_bits = match attr.kind {
        Kind::Directory => libc::S_IFDIR,
        Kind::File => libc::S_IFREG,
        Kind::Symlink => libc::S_IFLNK,
    };
    FileAttr {
        ino: attr.ino,
        size: attr.size,
        blocks: attr.blocks(),
        time: (since_epoch.as_secs(), since_epoch.subsec_nanos()),
        mode: type_bits | u32::from(attr.perm),
        nlink: attr.nlink,
        uid: 0,
        gid: 0,
        blksize: BLKSIZE,
    }
}

/// The `d_type` of a directory entry of `kind`.
fn dirent_type(kind: Kind) -> u32 {
    u32::from(match kind {
        Kind::Directory => libc::DT_DIR,
        Kind::File => libc::DT_REG,
        Kind::Symlink => libc::DT_LNK,
    })
}

/// Replies to an open of `ino` as handle `fh`: through kernel passthrough when the kernel allows
/// it, else with the page cache kept across opens.
///
/// Every file with a cache file of its own gets passthrough. Small files (at most
/// `PACK_MAX_FILE_BYTES`) are ranges of their entry's pack file, which cannot back a handle:
/// the daemon reads them.
fn reply_opened(fs: &StoreFs, backing: &Backing<BackingId>, ino: u64, fh: u64, reply: ReplyOpen) {
    if let Some(contents) = fs.file(fh) {
        let register = |file: &File| {
            let id = reply.open_backing(file)?;
            // Logged before the reply: after a crash the successor shares it (EBUSY otherwise).
            fs.log_backing(ino, id.raw());
            Ok(id)
        };
        let adopt = |id| reply.adopt_backing(id);
        match backing.acquire(ino, fh, contents.own_file(), register, adopt) {
            // No FOPEN_KEEP_CACHE here: the kernel (6.18) fails such an open with EIO;
            // passthrough reads use the cache file's own page cache anyway.
            Ok(Some(id)) => {
                return reply.opened_passthrough(fh, FOPEN_NOFLUSH, &id);
            }
            Ok(None) => {}
            Err(err) => {
                // E.g. cache files on a stacked filesystem: say so once.
                backing.refused();
                warn!(error = %err, "FUSE passthrough refused; reads go through the daemon");
            }
        }
    }
    // Immutable contents: let the kernel keep its page cache across opens. Nothing to flush on
    // close (see `flush`).
    reply.opened(fh, FOPEN_KEEP_CACHE | FOPEN_NOFLUSH);
}

/// Logs a failed request at the level its error deserves and returns the errno to reply with.
/// Failed requests logged at WARN, at most 20 lines per 10 s: a storm of failing names from a
/// job must not flood the journal.
static FAILED_REQUESTS: Throttle = Throttle::new(20, Duration::from_secs(10));

fn fail(op: &'static str, ino: u64, err: &FsError) -> i32 {
    match err.level() {
        Level::DEBUG => event!(Level::DEBUG, op, ino, error = %err, "request failed"),
        _ => warn_throttled!(FAILED_REQUESTS, op, ino, error = %err, "request failed"),
    }
    err.errno()
}

impl Handler for FuseAdapter {
    fn init(&self, kernel: &KernelOffer) -> InitAnswer {
        // Without PARALLEL_DIROPS the kernel serialises every lookup and readdir in a directory,
        // so one store path downloading would stall every other lookup in the mount root.
        // Symlinks are immutable, so the kernel may cache readlink answers too. AUTO_INVAL_DATA
        // makes the kernel re-read the root's attributes (TTL 0) when a listing of it starts,
        // and drop its kept copy of the listing when the root's mtime moved.
        let wanted = flag::PARALLEL_DIROPS | flag::CACHE_SYMLINKS | flag::AUTO_INVAL_DATA;
        if kernel.flags & wanted != wanted {
            let missing = wanted & !kernel.flags;
            warn!(
                missing = format!("{missing:#x}"),
                "kernel lacks FUSE capabilities; lookups may serialise"
            );
        }
        // READDIRPLUS: a listing carries each entry's attributes, so `find`, `ls -l` and the
        // opens that follow a listing find the names in the kernel's dentry cache instead of
        // sending one LOOKUP each.
        if kernel.flags & flag::DO_READDIRPLUS == 0 {
            warn!("kernel lacks READDIRPLUS; listed names are looked up one by one");
        }
        // Passthrough needs a stacking depth: 1 keeps the mount usable as an overlayfs lower
        // layer and requires cache files on a non-stacked filesystem (else opens fall back).
        let passthrough = if self.backing.wanted() { flag::PASSTHROUGH } else { 0 };
        // NO_OPEN_SUPPORT and NO_OPENDIR_SUPPORT only report what the kernel can do; asking
        // for them keeps them in the granted flags, which a resumed connection goes by.
        let flags = wanted
            | flag::DO_READDIRPLUS
            | passthrough
            | flag::NO_OPEN_SUPPORT
            | flag::NO_OPENDIR_SUPPORT;
        self.apply(kernel.flags & flags);
        debug!("fuse session initialised");
        InitAnswer { flags, max_readahead: MAX_READAHEAD_BYTES, max_stack_depth: 1 }
    }

    fn resumed(&self, params: &ConnParams) {
        self.apply(params.flags);
        debug!("fuse session resumed");
    }

    fn lookup(&self, req: &RequestInfo, parent: u64, name: &[u8], reply: ReplyEntry) {
        let answer = self.fs.lookup_as(parent, name, Some(req.uid));
        self.respond(answer, move |found| match found {
            Ok(l) => reply.entry(&to_file_attr(&l.attr), l.ttl),
            Err(err @ FsError::Absent(_)) => {
                debug!(parent, error = %err, "lookup: absent, for good");
                reply.absent(IMMUTABLE_TTL)
            }
            Err(err) => reply.error(fail("lookup", parent, &err)),
        });
    }

    fn forget(&self, ino: u64, nlookup: u64) {
        self.fs.forget(ino, nlookup);
    }

    fn getattr(&self, _req: &RequestInfo, ino: u64, reply: ReplyAttr) {
        let fs = self.fs.clone();
        self.respond(self.fs.reloaded(ino), move |ready| {
            match ready.and_then(|()| fs.getattr(ino)) {
                Ok(l) => reply.attr(&to_file_attr(&l.attr), l.ttl),
                Err(err) => reply.error(fail("getattr", ino, &err)),
            }
        });
    }

    fn readlink(&self, _req: &RequestInfo, ino: u64, reply: ReplyData) {
        let fs = self.fs.clone();
        self.respond(self.fs.reloaded(ino), move |ready| {
            match ready.and_then(|()| fs.readlink(ino)) {
                Ok(target) => reply.data(&target),
                Err(err) => reply.error(fail("readlink", ino, &err)),
            }
        });
    }

    fn open(&self, _req: &RequestInfo, ino: u64, flags: u32, reply: ReplyOpen) {
        if !self.backing.answers_opens() {
            // ENOSYS: the kernel opens this file and every later one by itself (`fc->no_open`),
            // keeping their page cache (FOPEN_KEEP_CACHE); the mount is read-only (MS_RDONLY),
            // so the VFS refuses any write access before it gets here.
            return reply.error(libc::ENOSYS);
        }
        let (fs, backing) = (self.fs.clone(), self.backing.clone());
        // open(2) flags are a C int; the kernel passes them as u32.
        let flags = flags as i32;
        self.respond(self.fs.open(ino, flags), move |opened| match opened {
            Ok(fh) => reply_opened(&fs, &backing, ino, fh, reply),
            Err(err) => reply.error(fail("open", ino, &err)),
        });
    }

    fn read(
        &self,
        _req: &RequestInfo,
        ino: u64,
        fh: u64,
        offset: u64,
        size: u32,
        reply: ReplyData,
    ) {
        // A pread of a local cache file: cheaper here than a hop to a blocking-pool thread.
        // Handle 0 (`NO_HANDLE`): no OPEN was sent (see `open`), the read names the inode alone.
        self.respond(self.fs.read(ino, fh, offset, size), move |data| match data {
            Ok(data) => reply.data(&data),
            Err(err) => reply.error(fail("read", ino, &err)),
        });
    }

    fn release(&self, _req: &RequestInfo, _ino: u64, fh: u64, reply: ReplyEmpty) {
        if let Some((ino, left_open)) = self.backing.release(fh) {
            if let Some(raw) = left_open {
                // A predecessor's id, not used since the handover: closed on drop.
                drop(reply.adopt_backing(raw));
            }
            self.fs.log_backing(ino, 0);
        }
        self.fs.release(fh);
        reply.ok();
    }

    fn flush(&self, _req: &RequestInfo, _ino: u64, _fh: u64, reply: ReplyEmpty) {
        // Nothing to flush in a read-only store. Passthrough opens set FOPEN_NOFLUSH; files
        // opened without OPEN do send one FLUSH at the first close, and ENOSYS makes the kernel
        // stop sending them (`fc->no_flush`) while close(2) still succeeds. After that a close
        // costs no round trip.
        reply.error(libc::ENOSYS);
    }

    fn opendir(&self, _req: &RequestInfo, _ino: u64, _flags: u32, reply: ReplyOpen) {
        // ENOSYS tells the kernel that directories need no OPENDIR (nor RELEASEDIR): it stops
        // sending them, one round trip saved per directory listed. It then keeps every listing
        // (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR): right for store paths, which never change; the
        // root's listing is re-read whenever the root's mtime moved (see `init`). A kernel
        // without FUSE_NO_OPENDIR_SUPPORT gets a plain handle, and keeps nothing.
        if self.opendirs.load(Ordering::Relaxed) {
            return reply.opened(0, 0);
        }
        reply.error(libc::ENOSYS);
    }

    fn readdir(&self, _req: &RequestInfo, ino: u64, _fh: u64, offset: u64, mut reply: ReplyDir) {
        let fs = self.fs.clone();
        self.respond(self.fs.reloaded(ino), move |ready| {
            match ready.and_then(|()| fs.readdir(ino, offset)) {
                Ok(entries) => {
                    for e in entries {
                        if reply.add(e.ino, e.next_offset, dirent_type(e.kind), &e.name) {
                            break;
                        }
                    }
                    reply.ok();
                }
                Err(err) => reply.error(fail("readdir", ino, &err)),
            }
        });
    }

    fn readdirplus(
        &self,
        _req: &RequestInfo,
        ino: u64,
        _fh: u64,
        offset: u64,
        mut reply: ReplyDirPlus,
    ) {
        let fs = self.fs.clone();
        self.respond(self.fs.reloaded(ino), move |ready| {
            let listed = ready.and_then(|()| {
                fs.readdirplus(ino, offset, |e, l| {
                    reply.add(e.next_offset, &e.name, &to_file_attr(&l.attr), l.ttl)
                })
            });
            match listed {
                Ok(()) => reply.ok(),
                Err(err) => reply.error(fail("readdirplus", ino, &err)),
            }
        });
    }

    fn statfs(&self, _req: &RequestInfo, _ino: u64, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        let block = u64::from(BLKSIZE);
        let (blocks, free) = (s.total_bytes.div_ceil(block), s.free_bytes / block);
        reply.statfs(&Statfs {
            blocks,
            bfree: free,
            bavail: free,
            files: s.paths,
            ffree: 0,
            bsize: BLKSIZE,
            namelen: 255,
            frsize: BLKSIZE,
        });
    }

    fn access(&self, _req: &RequestInfo, ino: u64, mask: u32, reply: ReplyEmpty) {
        if mask & libc::W_OK as u32 != 0 {
            reply.error(fail("access", ino, &FsError::ReadOnly));
        } else {
            reply.ok();
        }
    }

    fn getxattr(&self, _req: &RequestInfo, ino: u64, _name: &[u8], _size: u32, reply: ReplyXattr) {
        reply.error(fail("getxattr", ino, &FsError::NoAttribute));
    }

    fn listxattr(&self, _req: &RequestInfo, _ino: u64, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    // Every mutation is EROFS, also when the kernel lets one through despite the `ro` mount.
    fn mutation(&self, _req: &RequestInfo, op: &'static str, ino: u64, reply: ReplyEmpty) {
        reply.error(fail(op, ino, &FsError::ReadOnly));
    }
}
