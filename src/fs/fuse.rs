//! The fuser adapter: one kernel request in, one `StoreFs` call, one reply out. Nothing else.
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

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tokio::runtime::Handle;
use tracing::{Level, debug, event, info, warn};

use super::attr::{Attr, BLKSIZE, Kind};
use super::error::FsError;
use super::passthrough::Backing;
use super::{Answer, StoreFs};
use crate::logging::{Throttle, warn_throttled};
use crate::sync::Arc;

/// Largest read the kernel may send us at once.
const MAX_READAHEAD_BYTES: u32 = 1024 * 1024;

/// Adapts `StoreFs` to `fuser::Filesystem`.
#[derive(Debug)]
pub struct FuseAdapter {
    fs: Arc<StoreFs>,
    rt: Handle,
    backing: Arc<Backing<BackingId>>,
    /// The kernel needs an answer to OPENDIR (it lacks `FUSE_NO_OPENDIR_SUPPORT`).
    opendirs: bool,
}

impl FuseAdapter {
    /// Serves `fs`, running request handlers on the runtime behind `rt`; with `passthrough`, open
    /// files are read by the kernel directly where the kernel allows it.
    pub fn new(fs: Arc<StoreFs>, rt: Handle, passthrough: bool) -> Self {
        Self { fs, rt, backing: Arc::new(Backing::new(passthrough)), opendirs: false }
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
}

fn to_file_attr(attr: &Attr) -> FileAttr {
    let mtime = attr.mtime();
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.blocks(),
        atime: mtime,
        mtime,
        ctime: mtime,
        crtime: mtime,
        kind: match attr.kind {
            Kind::Directory => FileType::Directory,
            Kind::File => FileType::RegularFile,
            Kind::Symlink => FileType::Symlink,
        },
        perm: attr.perm,
        nlink: attr.nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLKSIZE,
        flags: 0,
    }
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Directory => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
    }
}

/// Replies to an open of `ino` as handle `fh`: through kernel passthrough when the kernel allows
/// it, else with the page cache kept across opens.
///
/// Every file with a cache file of its own gets passthrough. Small files (at most
/// `PACK_MAX_FILE_BYTES`) are ranges of their entry's pack file, which cannot back a handle:
/// the daemon reads them.
fn reply_opened(fs: &StoreFs, backing: &Backing<BackingId>, ino: u64, fh: u64, reply: ReplyOpen) {
    if let Some(contents) = fs.file(fh) {
        let register = |file: &File| reply.open_backing(file);
        match backing.acquire(ino, fh, contents.own_file(), register) {
            // No FOPEN_KEEP_CACHE here: the kernel (6.18) fails such an open with EIO;
            // passthrough reads use the cache file's own page cache anyway.
            Ok(Some(id)) => {
                return reply.opened_passthrough(FileHandle(fh), FopenFlags::FOPEN_NOFLUSH, &id);
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
    reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_NOFLUSH);
}

/// Logs a failed request at the level its error deserves and returns the errno to reply with.
/// Failed requests logged at WARN, at most 20 lines per 10 s: a storm of failing names from a
/// job must not flood the journal.
static FAILED_REQUESTS: Throttle = Throttle::new(20, Duration::from_secs(10));

fn fail(op: &'static str, ino: u64, err: &FsError) -> Errno {
    match err.level() {
        Level::DEBUG => event!(Level::DEBUG, op, ino, error = %err, "request failed"),
        _ => warn_throttled!(FAILED_REQUESTS, op, ino, error = %err, "request failed"),
    }
    Errno::from_i32(err.errno())
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(MAX_READAHEAD_BYTES);
        // Without PARALLEL_DIROPS the kernel serialises every lookup and readdir in a directory,
        // so one store path downloading would stall every other lookup in the mount root.
        // Symlinks are immutable, so the kernel may cache readlink answers too. AUTO_INVAL_DATA
        // makes the kernel re-read the root's attributes (TTL 0) when a listing of it starts,
        // and drop its kept copy of the listing when the root's mtime moved.
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_AUTO_INVAL_DATA;
        if let Err(missing) = config.add_capabilities(wanted) {
            warn!(?missing, "kernel lacks FUSE capabilities; lookups may serialise");
        }
        // READDIRPLUS: a listing carries each entry's attributes, so `find`, `ls -l` and the
        // opens that follow a listing find the names in the kernel's dentry cache instead of
        // sending one LOOKUP each.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS) {
            warn!(?missing, "kernel lacks READDIRPLUS; listed names are looked up one by one");
        }
        // Passthrough needs a stacking depth: 1 keeps the mount usable as an overlayfs lower
        // layer and requires cache files on a non-stacked filesystem (else opens fall back).
        let granted = self.backing.wanted()
            && config.capabilities().contains(InitFlags::FUSE_PASSTHROUGH)
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        if granted {
            info!("FUSE passthrough on: each open asks the daemon, the kernel reads cache files");
        } else if self.backing.wanted() {
            warn!("FUSE passthrough unavailable (kernel < 6.9?); files open without it");
        }
        // A kernel without FUSE_NO_OPEN_SUPPORT (before 4.19) or FUSE_NO_OPENDIR_SUPPORT (before
        // 5.1) would fail an open answered ENOSYS: it gets the classic answers.
        let caps = config.capabilities();
        self.backing.negotiated(granted, caps.contains(InitFlags::FUSE_NO_OPEN_SUPPORT));
        self.opendirs = !caps.contains(InitFlags::FUSE_NO_OPENDIR_SUPPORT);
        if !self.backing.answers_opens() {
            info!("files open without a round trip; the kernel page cache keeps their data");
        }
        debug!("fuse session initialised");
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let answer = self.fs.lookup_as(parent.0, name.as_bytes(), Some(req.uid()));
        self.respond(answer, move |found| match found {
            Ok(l) => reply.entry(&l.ttl, &to_file_attr(&l.attr), Generation(0)),
            Err(err) => reply.error(fail("lookup", parent.0, &err)),
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.fs.getattr(ino.0) {
            Ok(l) => reply.attr(&l.ttl, &to_file_attr(&l.attr)),
            Err(err) => reply.error(fail("getattr", ino.0, &err)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(err) => reply.error(fail("readlink", ino.0, &err)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if !self.backing.answers_opens() {
            // ENOSYS: the kernel opens this file and every later one by itself (`fc->no_open`),
            // keeping their page cache (FOPEN_KEEP_CACHE); the mount is read-only (MS_RDONLY),
            // so the VFS refuses any write access before it gets here.
            return reply.error(Errno::ENOSYS);
        }
        let (fs, backing) = (self.fs.clone(), self.backing.clone());
        self.respond(self.fs.open(ino.0, flags.0), move |opened| match opened {
            Ok(fh) => reply_opened(&fs, &backing, ino.0, fh, reply),
            Err(err) => reply.error(fail("open", ino.0, &err)),
        });
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // A pread of a local cache file: cheaper here than a hop to a blocking-pool thread.
        // Handle 0 (`NO_HANDLE`): no OPEN was sent (see `open`), the read names the inode alone.
        self.respond(self.fs.read(ino.0, fh.0, offset, size), move |data| match data {
            Ok(data) => reply.data(&data),
            Err(err) => reply.error(fail("read", ino.0, &err)),
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.backing.release(fh.0);
        self.fs.release(fh.0);
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to flush in a read-only store. Passthrough opens set FOPEN_NOFLUSH; files
        // opened without OPEN do send one FLUSH at the first close, and ENOSYS makes the kernel
        // stop sending them (`fc->no_flush`) while close(2) still succeeds. After that a close
        // costs no round trip.
        reply.error(Errno::ENOSYS);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS tells the kernel that directories need no OPENDIR (nor RELEASEDIR): it stops
        // sending them, one round trip saved per directory listed. It then keeps every listing
        // (FOPEN_KEEP_CACHE | FOPEN_CACHE_DIR): right for store paths, which never change; the
        // root's listing is re-read whenever the root's mtime moved (see `init`). A kernel
        // without FUSE_NO_OPENDIR_SUPPORT gets a plain handle, and keeps nothing.
        if self.opendirs {
            return reply.opened(FileHandle(0), FopenFlags::empty());
        }
        reply.error(Errno::ENOSYS);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        match self.fs.readdir(ino.0, offset) {
            Ok(entries) => {
                for e in entries {
                    let name = OsStr::from_bytes(&e.name);
                    if reply.add(INodeNo(e.ino), e.next_offset, file_type(e.kind), name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(err) => reply.error(fail("readdir", ino.0, &err)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listed = self.fs.readdirplus(ino.0, offset, |e, l| {
            let name = OsStr::from_bytes(&e.name);
            reply.add(
                INodeNo(e.ino),
                e.next_offset,
                name,
                &l.ttl,
                &to_file_attr(&l.attr),
                Generation(0),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(err) => reply.error(fail("readdirplus", ino.0, &err)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.fs.statfs();
        let block = u64::from(BLKSIZE);
        let (blocks, free) = (s.total_bytes.div_ceil(block), s.free_bytes / block);
        reply.statfs(blocks, free, free, s.paths, 0, BLKSIZE, 255, BLKSIZE);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        if mask.contains(AccessFlags::W_OK) {
            reply.error(fail("access", ino.0, &FsError::ReadOnly));
        } else {
            reply.ok();
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, _size: u32, reply: ReplyXattr) {
        reply.error(fail("getxattr", ino.0, &FsError::NoAttribute));
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        if size == 0 { reply.size(0) } else { reply.data(&[]) }
    }

    // Every mutation is EROFS, also when the kernel lets one through despite the `ro` mount.

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(fail("setattr", ino.0, &FsError::ReadOnly));
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(fail("mknod", parent.0, &FsError::ReadOnly));
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(fail("mkdir", parent.0, &FsError::ReadOnly));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(fail("unlink", parent.0, &FsError::ReadOnly));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(fail("rmdir", parent.0, &FsError::ReadOnly));
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(fail("symlink", parent.0, &FsError::ReadOnly));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(fail("rename", parent.0, &FsError::ReadOnly));
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(fail("link", ino.0, &FsError::ReadOnly));
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        reply.error(fail("write", ino.0, &FsError::ReadOnly));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(fail("create", parent.0, &FsError::ReadOnly));
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(fail("setxattr", ino.0, &FsError::ReadOnly));
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(fail("removexattr", ino.0, &FsError::ReadOnly));
    }
}
