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
//!   unknown-version.<secs>/  a cache of an unknown VERSION, moved aside at start (never read)
//! ```
//! A cache directory on a read-only filesystem is opened read-only: nothing is written, its
//! entries are served and nothing new is fetched (`read_only`).
//! An entry appears in `entries/` only by `rename(2)` of a complete staging directory after
//! verification and `syncfs`, so after a crash every entry there is whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{error, warn};

use crate::sync::{AtomicBool, AtomicU64, Mutex, Ordering, lock};

/// Version of the directory layout; a cache of another version is moved aside, never misread.
pub const CACHE_VERSION: u32 = 1;
/// The file naming the layout version, `storefs-cache <CACHE_VERSION>`.
pub const VERSION_FILE: &str = "VERSION";
const LOCK_FILE: &str = "lock";
/// Where verified narinfos are kept, one file per hash part.
pub const NARINFO_DIR: &str = "narinfo";
/// Where pins are kept, one empty file per pinned store path, named by its basename.
pub const PINS_DIR: &str = "pins";
/// Prefix of the directory a cache of an unknown version is moved into (then `.<unix seconds>`).
pub const UNKNOWN_VERSION_PREFIX: &str = "unknown-version.";
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
    /// The cache was written by an incompatible storefs and cannot be moved aside (read-only).
    #[error(
        "cache directory {path} has format {found:?}, this storefs uses {CACHE_VERSION}, and it \
             is read-only so it cannot be moved aside; move it away or delete it"
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
    /// True when the cache filesystem is read-only.
    pub fn is_read_only(&self) -> bool {
        matches!(self, LayoutError::Io { source, .. } if source.raw_os_error() == Some(libc::EROFS))
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
    /// Whether the filesystem is mounted read-only.
    pub read_only: bool,
}

/// An opened, locked cache directory.
#[derive(Debug)]
pub struct Layout {
    root: PathBuf,
    /// The flock()ed lock file; None once released by `unlock`.
    lock: Mutex<Option<File>>,
    next_id: AtomicU64,
    /// Nothing may be written: the filesystem was read-only at start, or turned read-only since.
    read_only: AtomicBool,
}

impl Layout {
    /// Creates or opens the cache at `root`, takes its lock, checks its version (moving a cache
    /// of another version aside) and empties `staging/` and `trash/`. On a read-only filesystem
    /// it opens the cache read-only instead (see `read_only`), and says so loudly.
    pub fn open(root: &Path) -> Result<Self, LayoutError> {
        match fs::DirBuilder::new().recursive(true).mode(0o700).create(root) {
            Err(e) if e.raw_os_error() != Some(libc::EROFS) => {
                return Err(io_err("cannot create", root)(e));
            }
            _ => {}
        }
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
        if let Ok(Some(kind)) = super::fs_kind::remote_kind_of(root) {
            warn!(cache = %root.display(), filesystem = kind,
                  "the cache directory is on a network filesystem: locking, syncfs and the page \
                   cache are not dependable there; put it on a local disk");
        }
        let read_only = space_of(root).is_ok_and(|s| s.read_only);
        let (lock, read_only) = match read_only {
            false => match take_lock(root) {
                Err(e) if e.is_read_only() => (take_read_only_lock(root)?, true),
                other => (other?, false),
            },
            true => (take_read_only_lock(root)?, true),
        };
        if read_only {
            check_version_read_only(root)?;
            error!(cache = %root.display(),
                   "cache filesystem is read-only: serving the entries cached there, \
                    EIO for every other path, until it is writable and storefs restarts");
        } else {
            check_version(root)?;
            for sub in ["staging", "entries", "trash", NARINFO_DIR, PINS_DIR] {
                let dir = root.join(sub);
                fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&dir)
                    .or_else(|e| match e.kind() {
                        io::ErrorKind::AlreadyExists => Ok(()),
                        _ => Err(e),
                    })
                    .map_err(io_err("cannot create", &dir))?;
                own_subdir(&dir, meta.uid())?;
            }
        }
        let layout = Self {
            root: root.to_owned(),
            lock: Mutex::new(Some(lock)),
            next_id: AtomicU64::new(0),
            read_only: AtomicBool::new(read_only),
        };
        if !read_only {
            layout.empty_dir(&layout.staging_root())?;
            layout.empty_dir(&layout.trash_root())?;
        }
        Ok(layout)
    }

    /// Whether nothing may be written: the cache filesystem was read-only at start, or a write
    /// found it read-only since (`saw_read_only`).
    pub fn read_only(&self) -> bool {
        self.read_only.load(Ordering::Acquire)
    }

    /// A write failed with EROFS: from now on the cache is read-only. Says so once, loudly.
    pub fn saw_read_only(&self) {
        if !self.read_only.swap(true, Ordering::AcqRel) {
            error!(cache = %self.root.display(),
                   "cache filesystem turned read-only: serving the entries cached there, \
                    EIO for every other path, until it is writable and storefs restarts");
        }
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
        let created = fs::DirBuilder::new().mode(0o700).create(&dir);
        created.map_err(io_err("cannot create", &dir))?;
        Ok(dir)
    }

    /// How many inodes the tree at `dir` holds (itself and its children: entries are flat).
    /// Best effort: 1 when it cannot be listed.
    pub fn inodes_in(&self, dir: &Path) -> u64 {
        1 + fs::read_dir(dir).map_or(0, |d| d.count() as u64)
    }

    /// Makes a staged entry durable and visible: syncfs, rename into `entries/`, fsync `entries/`.
    pub fn publish(&self, staging: &Path, hash_part: &str) -> Result<PathBuf, LayoutError> {
        let dir = File::open(staging).map_err(io_err("cannot open", staging))?;
        // One syncfs flushes every file of the entry; far cheaper than an fsync per file.
        let synced = crate::failpoint::io("publish::sync").and_then(|()| {
            // SAFETY: `dir` is an open descriptor for the whole call.
            match unsafe { libc::syncfs(dir.as_raw_fd()) } {
                0 => Ok(()),
                _ => Err(io::Error::last_os_error()),
            }
        });
        // Never retried (an fsync that failed may have dropped the dirty pages it could not
        // write): the staged entry is lost, and the caller discards it.
        synced.map_err(io_err("cannot sync", staging))?;
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
        space_of(&self.root)
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

/// Checks a directory of the cache found in place (reliability case DSK-9): something else in
/// its place (a symlink, which would lead anywhere; a file; a FIFO) or another owner than the
/// root's refuses the start, naming it; a mode letting others in is tightened to 0700, loudly.
fn own_subdir(dir: &Path, owner: u32) -> Result<(), LayoutError> {
    let meta = fs::symlink_metadata(dir).map_err(io_err("cannot stat", dir))?;
    let unsafe_dir = |reason| Err(LayoutError::Unsafe { path: dir.into(), reason });
    if !meta.is_dir() {
        return unsafe_dir(
            "not a directory (a symlink or another file in its place; move it away)",
        );
    }
    if meta.uid() != owner {
        return unsafe_dir("owned by another user than the cache directory");
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("cannot chmod", dir))?;
        warn!(dir = %dir.display(), mode = format!("{:04o}", meta.mode() & 0o7777),
              "a cache directory let others in; made it 0700");
    }
    Ok(())
}

/// Size, free space and read-only flag of the filesystem holding `path`, from statvfs.
fn space_of(path: &Path) -> io::Result<Space> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer for the call.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Space {
        total_bytes: st.f_blocks * st.f_frsize,
        free_bytes: st.f_bavail * st.f_frsize,
        read_only: st.f_flag & libc::ST_RDONLY != 0,
    })
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

/// Takes the lock file's flock and writes our pid into it. The flock is held on a read-only
/// descriptor, so the daemon holds no file open for writing while idle and the filesystem can
/// still be remounted read-only under it (the cache then turns read-only, see `saw_read_only`).
fn take_lock(root: &Path) -> Result<File, LayoutError> {
    let path = root.join(LOCK_FILE);
    let open = |write: bool| {
        let mut options = OpenOptions::new();
        options.read(true).custom_flags(libc::O_NOFOLLOW);
        if write {
            options.write(true).create(true).truncate(false).mode(0o600);
        }
        options.open(&path).map_err(io_err("cannot open", &path))
    };
    let mut writer = open(true)?;
    let lock = open(false)?;
    // SAFETY: `lock` is an open descriptor for the whole call.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = writer.read_to_string(&mut holder);
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
    write_pid(&mut writer).map_err(io_err("cannot write", &path))?;
    Ok(lock)
}

/// What `VERSION` holds for this storefs (without the newline).
pub fn version_text() -> String {
    format!("storefs-cache {CACHE_VERSION}")
}

/// The lock of a cache on a read-only filesystem, where the lock file cannot be written: an
/// exclusive flock of the cache root itself (a directory opened read-only can be flocked).
fn take_read_only_lock(root: &Path) -> Result<File, LayoutError> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(root)
        .map_err(io_err("cannot open", root))?;
    // SAFETY: `dir` is an open descriptor for the whole call.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = fs::read_to_string(root.join(LOCK_FILE)).unwrap_or_default();
        let holder = holder.trim();
        return Err(LayoutError::Locked {
            path: root.to_owned(),
            holder: if holder.is_empty() { "unknown".into() } else { holder.to_owned() },
        });
    }
    Ok(dir)
}

/// What VERSION says, if anything (None: missing).
fn read_version(root: &Path) -> Result<Option<String>, LayoutError> {
    let path = root.join(VERSION_FILE);
    match fs::read_to_string(&path) {
        Ok(found) => Ok(Some(found.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("cannot read", &path)(e)),
    }
}

/// Checks VERSION, writing it when missing. A cache of another version is moved aside, whole,
/// into `unknown-version.<unix seconds>/` inside the cache directory (the root may be a mount
/// point, which cannot be renamed), and the cache starts empty.
fn check_version(root: &Path) -> Result<(), LayoutError> {
    let want = version_text();
    match read_version(root)? {
        Some(found) if found == want => return Ok(()),
        Some(found) => move_aside(root, &found)?,
        None => {}
    }
    let path = root.join(VERSION_FILE);
    let tmp = root.join("VERSION.tmp");
    fs::write(&tmp, format!("{want}\n"))
        .and_then(|()| fs::rename(&tmp, &path))
        .map_err(io_err("cannot write", &path))
}

/// On a read-only filesystem nothing can be moved aside: a cache of another version is refused.
/// A missing VERSION is accepted (entries that do not check out are not served).
fn check_version_read_only(root: &Path) -> Result<(), LayoutError> {
    match read_version(root)? {
        Some(found) if found != version_text() => {
            Err(LayoutError::Version { path: root.into(), found })
        }
        _ => Ok(()),
    }
}

/// Moves everything in `root` but the lock file (and caches moved aside before) into a fresh
/// `unknown-version.<unix seconds>/`.
fn move_aside(root: &Path, found: &str) -> Result<(), LayoutError> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut aside = root.join(format!("{UNKNOWN_VERSION_PREFIX}{secs}"));
    let mut n = 0;
    while aside.exists() {
        n += 1;
        aside = root.join(format!("{UNKNOWN_VERSION_PREFIX}{secs}.{n}"));
    }
    fs::DirBuilder::new().mode(0o700).create(&aside).map_err(io_err("cannot create", &aside))?;
    for child in fs::read_dir(root).map_err(io_err("cannot list", root))? {
        let child = child.map_err(io_err("cannot list", root))?;
        let name = child.file_name();
        let name = name.to_string_lossy();
        if name == LOCK_FILE || name.starts_with(UNKNOWN_VERSION_PREFIX) {
            continue;
        }
        let from = child.path();
        fs::rename(&from, aside.join(&*name)).map_err(io_err("cannot move aside", &from))?;
    }
    error!(cache = %root.display(), found, expected = %version_text(),
           moved_to = %aside.display(),
           "cache directory has an unknown format: moved it aside and starting empty \
            (delete the moved directory once it is not needed)");
    Ok(())
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
    fn moves_unknown_versions_aside_and_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        let layout = Layout::open(&root).unwrap();
        fs::create_dir(layout.entry_dir("x")).unwrap();
        layout.unlock();
        drop(layout);
        fs::write(root.join(VERSION_FILE), "storefs-cache 999\n").unwrap();
        let layout = Layout::open(&root).unwrap();
        assert!(!layout.read_only());
        assert_eq!(fs::read_dir(layout.entries_root()).unwrap().count(), 0, "starts empty");
        let aside: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name().unwrap().to_string_lossy().starts_with(UNKNOWN_VERSION_PREFIX)
            })
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(fs::read_to_string(aside[0].join(VERSION_FILE)).unwrap(), "storefs-cache 999\n");
        assert!(aside[0].join("entries/x").is_dir(), "the old cache is kept whole");
        assert_eq!(read_version(&root).unwrap(), Some(version_text()));
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

    /// DSK-9 inside the root: a directory of the cache open to others is made 0700 again; one
    /// replaced by a symlink (to anywhere) refuses the start, and nothing is written through it.
    #[test]
    fn foreign_objects_in_place_of_its_directories_are_refused_or_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cache");
        drop(Layout::open(&root).unwrap());
        let entries = root.join("entries");
        fs::set_permissions(&entries, fs::Permissions::from_mode(0o777)).unwrap();
        drop(Layout::open(&root).unwrap());
        assert_eq!(fs::metadata(&entries).unwrap().mode() & 0o777, 0o700, "tightened");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        let trash = root.join("trash");
        fs::remove_dir(&trash).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &trash).unwrap();
        let err = Layout::open(&root).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("trash") && err.to_string().contains("symlink"), "{err}");
        assert!(fs::read_dir(&elsewhere).unwrap().next().is_none(), "nothing written through it");
    }

    /// A symlink as the cache root is refused, not followed (someone could point it anywhere).
    #[test]
    fn refuses_a_symlinked_root() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        fs::set_permissions(&real, fs::Permissions::from_mode(0o700)).unwrap();
        let root = dir.path().join("cache");
        std::os::unix::fs::symlink(&real, &root).unwrap();
        let err = Layout::open(&root).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        assert!(fs::read_dir(&real).unwrap().next().is_none(), "nothing written through it");
    }
}
