//! The cache directory on disk: layout, version, exclusive lock, and start-up clean-up.
//!
//! ```text
//! <cache-dir>/            mode 0700, owned by the daemon
//!   VERSION               "storefs-cache <CACHE_VERSION>"
//!   lock                  flock()ed by the running daemon; holds its pid
//!   staging/<id>/         entries being downloaded (never read; wiped at start)
//!   entries/<hash-part>/  published, verified entries: `manifest` + `f<node id>` files
//!   trash/<name>/         evicted entries awaiting deletion (wiped at start)
//!   narinfo/<hash-part>   verified narinfos, kept after eviction (see narinfo_store.rs)
//!   pins/<basename>       one empty file per pinned store path (see pins.rs)
//! ```
//! An entry appears in `entries/` only by `rename(2)` of a complete staging directory after
//! verification and `syncfs`, so after a crash every entry there is whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sync::{AtomicU64, Mutex, Ordering, lock};

/// Version of the directory layout; a cache of another version is refused, never misread.
pub const CACHE_VERSION: u32 = 1;
/// The file naming the layout version, `storefs-cache <CACHE_VERSION>`.
pub const VERSION_FILE: &str = "VERSION";
const LOCK_FILE: &str = "lock";
/// Where verified narinfos are kept, one file per hash part.
pub const NARINFO_DIR: &str = "narinfo";
/// Where pins are kept, one empty file per pinned store path, named by its basename.
pub const PINS_DIR: &str = "pins";
/// Name of the manifest inside an entry directory.
pub const MANIFEST_FILE: &str = "manifest";
/// An entry's small files, one after another (see `manifest.rs`).
pub const PACK_FILE: &str = "pack";

/// Why the cache directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A filesystem call failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was attempted.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another daemon holds the cache.
    #[error("cache directory {path} is in use by another storefs (pid {holder})")]
    Locked {
        /// The cache directory.
        path: PathBuf,
        /// Pid written by the holder, or "unknown".
        holder: String,
    },
    /// The cache was written by an incompatible storefs.
    #[error(
        "cache directory {path} has format {found:?}, this storefs uses {CACHE_VERSION}; \
             move it away or delete it"
    )]
    Version {
        /// The cache directory.
        path: PathBuf,
        /// What VERSION says.
        found: String,
    },
    /// The cache root is unsafe to use (symlink, writable by others).
    #[error("cache directory {path} is unsafe: {reason}")]
    Unsafe {
        /// The cache directory.
        path: PathBuf,
        /// Why.
        reason: &'static str,
    },
    /// The cache was closed: nothing in its directory may change any more.
    #[error("the cache was closed")]
    Closed,
}

impl LayoutError {
    /// True when the disk ran out of space or inodes.
    pub fn is_no_space(&self) -> bool {
        matches!(self, LayoutError::Io { source, .. }
            if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)))
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LayoutError + 'a {
    move |source| LayoutError::Io { action, path: path.to_owned(), source }
}

/// Size of the cache filesystem, from statvfs.
#[derive(Clone, Copy, Debug)]
pub struct Space {
    /// Total bytes.
    pub total_bytes: u64,
    /// Bytes available to us.
    pub free_bytes: u64,
}

/// An opened, locked cache directory.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    /// The flock()ed lock file; None once released by `unlock`.
    lock: Mutex<Option<File>>,
    next_id: AtomicU64,
}

impl Layout {
    /// Creates or opens the cache at `root`, takes its lock, checks its version and empties
    /// `staging/` and `trash/`.
    pub fn open(root: &Path) -> Result<Self, LayoutError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(io_err("cannot create", root))?;
        let meta = fs::symlink_metadata(root).map_err(io_err("cannot stat", root))?;
        if !meta.is_dir() {
            return Err(LayoutError::Unsafe { path: root.into(), reason: "not a directory" });
        }
        if meta.mode() & 0o022 != 0 {
            return Err(LayoutError::Unsafe {
                path: root.into(),
                reason: "writable by group or others (chmod 0700 it)",
            });
        }
        let lock = take_lock(root)?;
        check_version(root)?;
        for sub in ["staging", "entries", "trash", NARINFO_DIR, PINS_DIR] {
            let dir = root.join(sub);
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })
                .map_err(io_err("cannot create", &dir))?;
        }
        let layout = Self {
            root: root.to_owned(),
            lock: Mutex::new(Some(lock)),
            next_id: AtomicU64::new(0),
        };
        layout.empty_dir(&layout.staging_root())?;
        layout.empty_dir(&layout.trash_root())?;
        Ok(layout)
    }

    /// Lets go of the directory: another process (or another `Layout`) may open it from now on.
    /// The caller must not change anything in it afterwards.
    pub fn unlock(&self) {
        // Closing the descriptor releases the flock.
        drop(lock(&self.lock).take());
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn staging_root(&self) -> PathBuf {
        self.root.join("staging")
    }

    fn trash_root(&self) -> PathBuf {
        self.root.join("trash")
    }

    /// Where published entries live.
    pub fn entries_root(&self) -> PathBuf {
        self.root.join("entries")
    }

    /// The published directory of the entry with this hash part.
    pub fn entry_dir(&self, hash_part: &str) -> PathBuf {
        self.entries_root().join(hash_part)
    }

    /// Creates a fresh, empty staging directory.
    pub fn new_staging(&self, hash_part: &str) -> Result<PathBuf, LayoutError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let dir = self.staging_root().join(format!("{hash_part}.{}.{id}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io_err("cannot create", &dir))?;
        Ok(dir)
    }

    /// Makes a staged entry durable and visible: syncfs, rename into `entries/`, fsync `entries/`.
    pub fn publish(&self, staging: &Path, hash_part: &str) -> Result<PathBuf, LayoutError> {
        let dir = File::open(staging).map_err(io_err("cannot open", staging))?;
        // One syncfs flushes every file of the entry; far cheaper than an fsync per file.
        // SAFETY: `dir` is an open descriptor for the whole call.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(io_err("cannot sync", staging)(io::Error::last_os_error()));
        }
        let target = self.entry_dir(hash_part);
        crate::failpoint::hit("publish::before_rename");
        fs::rename(staging, &target).map_err(io_err("cannot publish", &target))?;
        crate::failpoint::hit("publish::after_rename");
        let entries = self.entries_root();
        File::open(&entries).and_then(|d| d.sync_all()).map_err(io_err("cannot sync", &entries))?;
        Ok(target)
    }

    /// Moves an entry (published or staged) to `trash/` and returns its new path, for
    /// `remove_trashed` (or the next start) to delete.
    pub fn discard(&self, dir: &Path) -> Result<PathBuf, LayoutError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let target = self.trash_root().join(format!("{name}.{id}"));
        fs::rename(dir, &target).map_err(io_err("cannot move to trash", dir))?;
        crate::failpoint::hit("evict::after_trash_rename");
        Ok(target)
    }

    /// Deletes one entry from `trash/`.
    pub fn remove_trashed(&self, path: &Path) -> Result<(), LayoutError> {
        remove_tree(path).map_err(io_err("cannot remove", path))
    }

    /// Size and free space of the filesystem holding the cache.
    pub fn space(&self) -> io::Result<Space> {
        let path = std::ffi::CString::new(self.root.as_os_str().as_encoded_bytes())?;
        // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer for the call.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Space { total_bytes: st.f_blocks * st.f_frsize, free_bytes: st.f_bavail * st.f_frsize })
    }

    /// Deletes everything in `trash/`.
    pub fn purge_trash(&self) -> Result<(), LayoutError> {
        self.empty_dir(&self.trash_root())
    }

    fn empty_dir(&self, dir: &Path) -> Result<(), LayoutError> {
        for child in fs::read_dir(dir).map_err(io_err("cannot list", dir))? {
            let path = child.map_err(io_err("cannot list", dir))?.path();
            remove_tree(&path).map_err(io_err("cannot remove", &path))?;
        }
        Ok(())
    }
}

/// Removes a file or a directory tree without following symlinks. Entries are made read-only
/// (0444/0555 files) and root can delete them regardless; others need the dir writable first.
fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

fn take_lock(root: &Path) -> Result<File, LayoutError> {
    let path = root.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(io_err("cannot open", &path))?;
    // SAFETY: `file` is an open descriptor for the whole call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(LayoutError::Locked {
            path: root.to_owned(),
            holder: if holder.is_empty() { "unknown".into() } else { holder.to_owned() },
        });
    }
    let write_pid = |f: &mut File| -> io::Result<()> {
        f.set_len(0)?;
        f.rewind()?;
        writeln!(f, "{}", std::process::id())
    };
    write_pid(&mut file).map_err(io_err("cannot write", &path))?;
    Ok(file)
}

/// What `VERSION` holds for this storefs (without the newline).
pub fn version_text() -> String {
    format!("storefs-cache {CACHE_VERSION}")
}

fn check_version(root: &Path) -> Result<(), LayoutError> {
    let path = root.join(VERSION_FILE);
    let want = version_text();
    match fs::read_to_string(&path) {
        Ok(found) if found.trim() == want => Ok(()),
        Ok(found) => Err(LayoutError::Version { path: root.into(), found: found.trim().into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tmp = root.join("VERSION.tmp");
            fs::write(&tmp, format!("{want}\n"))
                .and_then(|()| fs::rename(&tmp, &path))
                .map_err(io_err("cannot write", &path))
        }
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_names_the_lock_holder() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let _first = Layout::open(&root).unwrap();
        let err = Layout::open(&root).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
    }

    #[test]
    fn refuses_unknown_versions() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        drop(Layout::open(&root).unwrap());
        fs::write(root.join(VERSION_FILE), "storefs-cache 999\n").unwrap();
        assert!(matches!(Layout::open(&root), Err(LayoutError::Version { .. })));
    }

    #[test]
    fn start_up_empties_staging_and_trash() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let layout = Layout::open(&root).unwrap();
        let staged = layout.new_staging("abc").unwrap();
        fs::write(staged.join("f1"), "partial").unwrap();
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o500)).unwrap();
        drop(layout);
        let _layout = Layout::open(&root).unwrap();
        assert_eq!(fs::read_dir(root.join("staging")).unwrap().count(), 0);
    }

    #[test]
    fn refuses_world_writable_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        fs::create_dir(&root).unwrap();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(Layout::open(&root), Err(LayoutError::Unsafe { .. })));
    }
}
