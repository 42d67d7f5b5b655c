//! Filesystem errors and their one mapping to errno.

use tracing::Level;

use crate::cache::CacheError;

/// Why a filesystem request failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such name (invalid store path basename, or absent from every cache).
    #[error("not found: {0}")]
    NotFound(String),
    /// No such name in a store path's directory: a store path never changes, so the kernel may
    /// remember the absence for good (a negative entry).
    #[error("not in the store path: {0}")]
    Absent(String),
    /// The inode number is not one we handed out (or belongs to a forgotten path).
    #[error("unknown inode {0}")]
    UnknownInode(u64),
    /// A directory operation on something else.
    #[error("not a directory")]
    NotADirectory,
    /// A file operation on a directory.
    #[error("is a directory")]
    IsADirectory,
    /// readlink on something that is not a symlink.
    #[error("not a symlink")]
    NotASymlink,
    /// Any attempt to change the store.
    #[error("read-only file system")]
    ReadOnly,
    /// The file handle is not open.
    #[error("bad file handle {0}")]
    BadHandle(u64),
    /// An extended attribute we do not have.
    #[error("no such attribute")]
    NoAttribute,
    /// The cache could not produce a verified copy, or the local disk failed.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// Reading a cached file failed.
    #[error("reading cached file: {0}")]
    Io(#[from] std::io::Error),
}

impl FsError {
    /// The errno the kernel passes on to the reader. Exhaustive on purpose: no `_` arm.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound(_) | FsError::Absent(_) => libc::ENOENT,
            FsError::UnknownInode(_) => libc::ESTALE,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::NotASymlink => libc::EINVAL,
            FsError::ReadOnly => libc::EROFS,
            FsError::BadHandle(_) => libc::EBADF,
            FsError::NoAttribute => libc::ENODATA,
            FsError::Cache(CacheError::NotFound(_)) => libc::ENOENT,
            // Its uid had no turn left: nothing was asked, a later try may succeed.
            FsError::Cache(err) if err.is_uid_refusal() => libc::EAGAIN,
            FsError::Cache(
                CacheError::Unavailable { .. }
                | CacheError::TooLarge { .. }
                | CacheError::NoRoom { .. }
                | CacheError::Pinned(_)
                | CacheError::NoRoomToPrefetch(_)
                | CacheError::Local { .. },
            ) => libc::EIO,
            FsError::Io(_) => libc::EIO,
        }
    }

    /// How loudly to log it: expected outcomes at DEBUG, failures a user should see at WARN.
    pub fn level(&self) -> Level {
        match self {
            FsError::NotFound(_)
            | FsError::Absent(_)
            | FsError::NotADirectory
            | FsError::IsADirectory
            | FsError::NotASymlink
            | FsError::ReadOnly
            | FsError::NoAttribute
            | FsError::Cache(CacheError::NotFound(_)) => Level::DEBUG,
            FsError::UnknownInode(_)
            | FsError::BadHandle(_)
            | FsError::Cache(_)
            | FsError::Io(_) => Level::WARN,
        }
    }
}
