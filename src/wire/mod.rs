//! storefs's own FUSE transport, from the kernel ABI (linux/fuse.h): reading requests from
//! `/dev/fuse`, negotiating INIT, dispatching to a `Handler`, writing replies. It exists because
//! it must answer FUSE_INTERRUPT (a reader killed while its lookup waits on a download must die
//! at once), resume a live connection without INIT (a successor daemon takes the descriptor
//! over), and ask the kernel to re-send what a previous daemon read but never answered
//! (`FUSE_NOTIFY_RESEND`). It knows nothing of storefs but the shared utilities.

mod abi;
mod channel;
mod params;
mod reply;
mod request;
mod session;

pub use abi::{
    FOPEN_KEEP_CACHE, FOPEN_NOFLUSH, FileAttr, Statfs, UNIQUE_RESEND, init as init_flags,
};
pub use params::ConnParams;
pub use reply::{
    BackingId, ReplyAttr, ReplyData, ReplyDir, ReplyDirPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr,
};
pub use request::RequestInfo;
pub use session::{Serving, serve};

/// How `serve` starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new connection: wait for INIT and negotiate.
    Fresh,
    /// A live connection negotiated before (by us or a predecessor): no INIT.
    Resume(ConnParams),
}

/// What the kernel offers at INIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffer {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version.
    pub minor: u32,
    /// The kernel's readahead limit.
    pub max_readahead: u32,
    /// Offered capability flags (`flags2` in the high 32 bits).
    pub flags: u64,
}

/// The handler's answer to INIT. The session adds what the transport itself needs
/// (`ASYNC_READ`, `BIG_WRITES`, `MAX_PAGES`, `INIT_EXT`, `HAS_RESEND`); the kernel is granted
/// only what it offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitAnswer {
    /// Wanted capability flags (`init_flags::*`).
    pub flags: u64,
    /// Readahead limit (capped by the kernel's).
    pub max_readahead: u32,
    /// Passthrough stacking depth (used when `PASSTHROUGH` is granted).
    pub max_stack_depth: u32,
}

/// Why the wire could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Fewer bytes than a field needs.
    #[error("short: {want} bytes wanted, {got} left")]
    Short {
        /// Bytes needed.
        want: usize,
        /// Bytes there.
        got: usize,
    },
    /// A field that cannot be right.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Saved connection parameters of another version.
    #[error("connection parameters of version {0}, this build reads {1}")]
    Version(u32, u32),
}

/// The filesystem behind the transport: one method per operation, each taking who asked and a
/// typed reply that must be answered (now, or later from another thread or task).
pub trait Handler: Send + Sync + 'static {
    /// INIT: what to ask the kernel for.
    fn init(&self, kernel: &KernelOffer) -> InitAnswer;
    /// A resumed connection: the same effect as `init`'s outcome, from the granted flags.
    fn resumed(&self, params: &ConnParams);
    /// LOOKUP of `name` in `parent`.
    fn lookup(&self, req: &RequestInfo, parent: u64, name: &[u8], reply: ReplyEntry);
    /// FORGET (and each item of BATCH_FORGET); no reply.
    fn forget(&self, ino: u64, nlookup: u64);
    /// GETATTR.
    fn getattr(&self, req: &RequestInfo, ino: u64, reply: ReplyAttr);
    /// READLINK.
    fn readlink(&self, req: &RequestInfo, ino: u64, reply: ReplyData);
    /// OPEN with open(2) `flags`.
    fn open(&self, req: &RequestInfo, ino: u64, flags: u32, reply: ReplyOpen);
    /// READ of `size` bytes at `offset` (handle `fh`).
    fn read(&self, req: &RequestInfo, ino: u64, fh: u64, offset: u64, size: u32, reply: ReplyData);
    /// RELEASE of handle `fh`.
    fn release(&self, req: &RequestInfo, ino: u64, fh: u64, reply: ReplyEmpty);
    /// FLUSH (a close(2)) of handle `fh`.
    fn flush(&self, req: &RequestInfo, ino: u64, fh: u64, reply: ReplyEmpty);
    /// OPENDIR.
    fn opendir(&self, req: &RequestInfo, ino: u64, flags: u32, reply: ReplyOpen);
    /// RELEASEDIR: nothing to release by default.
    fn releasedir(&self, _req: &RequestInfo, _ino: u64, _fh: u64, reply: ReplyEmpty) {
        reply.ok();
    }
    /// READDIR from `offset`.
    fn readdir(&self, req: &RequestInfo, ino: u64, fh: u64, offset: u64, reply: ReplyDir);
    /// READDIRPLUS from `offset`.
    fn readdirplus(&self, req: &RequestInfo, ino: u64, fh: u64, offset: u64, reply: ReplyDirPlus);
    /// STATFS.
    fn statfs(&self, req: &RequestInfo, ino: u64, reply: ReplyStatfs);
    /// ACCESS with `mask` (R_OK, W_OK, X_OK).
    fn access(&self, req: &RequestInfo, ino: u64, mask: u32, reply: ReplyEmpty);
    /// GETXATTR of `name`; `size` 0 asks for the size.
    fn getxattr(&self, req: &RequestInfo, ino: u64, name: &[u8], size: u32, reply: ReplyXattr);
    /// LISTXATTR; `size` 0 asks for the size.
    fn listxattr(&self, req: &RequestInfo, ino: u64, size: u32, reply: ReplyXattr);
    /// Any request that would change the filesystem (`op` names it: "mkdir", "write", ...).
    fn mutation(&self, req: &RequestInfo, op: &'static str, ino: u64, reply: ReplyEmpty);
}
