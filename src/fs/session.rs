//! Mounting: `/dev/fuse`, `mount(2)` as `fuse.storefs`, the session threads, and unmounting.
//!
//! We call `mount(2)` ourselves rather than through fuser so the mount is typed `fuse.storefs` in
//! /proc/mounts and so the daemon owns the `/dev/fuse` descriptor (a successor can take it over).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fuser::{BackgroundSession, Session, SessionACL};
use tracing::{info, warn};

use super::fuse::FuseAdapter;

/// Filesystem type shown in /proc/mounts.
pub const FS_TYPE: &str = "fuse.storefs";
/// Threads reading kernel requests. Handlers that may wait on the network run on the tokio
/// runtime; the rest (memory, local disk) are quick, so few threads are needed.
const SESSION_THREADS: usize = 2;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let other users (containers' users) in: adds `allow_other,default_permissions`.
    pub allow_other: bool,
}

/// Why mounting failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mountpoint is unusable.
    #[error("mountpoint {path}: {reason}")]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A system call failed.
    #[error("{action}: {source}")]
    Sys {
        /// What was attempted.
        action: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A live mount; `unmount` ends it, `ended` tells when it ended by itself (external umount).
#[derive(Debug)]
pub struct Mounted {
    mountpoint: PathBuf,
    ended: tokio::sync::oneshot::Receiver<io::Result<()>>,
}

/// Mounts `adapter` read-only at `mountpoint` and starts serving.
pub fn mount(
    adapter: FuseAdapter,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<Mounted, MountError> {
    let bad = |reason: String| MountError::Mountpoint { path: mountpoint.into(), reason };
    clear_dead_mount(mountpoint);
    let mountpoint = mountpoint.canonicalize().map_err(|e| bad(e.to_string()))?;
    if !mountpoint.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let mounted =
        mount_type(&mountpoint).map_err(|e| bad(format!("cannot read mountinfo: {e}")))?;
    if mounted.is_some() {
        return Err(bad("already a mount point; unmount it first (umount -l)".into()));
    }
    let sys = |action: &str| {
        let action = action.to_owned();
        move |source| MountError::Sys { action, source }
    };
    let dev: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(sys("cannot open /dev/fuse (is the fuse module loaded?)"))?;
    // SAFETY: plain getters with no arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut data = format!("fd={},rootmode=40000,user_id={uid},group_id={gid}", dev.as_raw_fd());
    if options.allow_other {
        data.push_str(",allow_other,default_permissions");
    }
    let cstr = |s: &[u8]| CString::new(s).map_err(|e| bad(e.to_string()));
    let (source, target) = (cstr(b"storefs")?, cstr(mountpoint.as_os_str().as_bytes())?);
    let (fstype, data) = (cstr(FS_TYPE.as_bytes())?, cstr(data.as_bytes())?);
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast())
    };
    if rc != 0 {
        return Err(sys("mount(2) failed (storefs must run as root)")(io::Error::last_os_error()));
    }
    let mut config = fuser::Config::default();
    config.n_threads = Some(SESSION_THREADS);
    config.acl = if options.allow_other { SessionACL::All } else { SessionACL::Owner };
    let acl = config.acl;
    let started =
        Session::from_fd(adapter, OwnedFd::from(dev), acl, config).and_then(Session::spawn);
    match started {
        Ok(session) => {
            info!(mountpoint = %mountpoint.display(), "mounted");
            let (tx, ended) = tokio::sync::oneshot::channel();
            std::thread::Builder::new()
                .name("storefs-session-wait".into())
                .spawn(move || {
                    let _ = tx.send(join(session));
                })
                .map_err(sys("cannot start session waiter"))?;
            Ok(Mounted { mountpoint, ended })
        }
        Err(e) => {
            detach(&mountpoint);
            Err(sys("FUSE handshake failed")(e))
        }
    }
}

impl Mounted {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Resolves when the session ended without `unmount` (someone unmounted it, or the kernel
    /// aborted the connection).
    pub async fn ended(&mut self) -> io::Result<()> {
        (&mut self.ended).await.unwrap_or(Ok(()))
    }

    /// Unmounts (lazily if busy) and waits for the session threads to finish.
    pub async fn unmount(self) -> io::Result<()> {
        let target = CString::new(self.mountpoint.as_os_str().as_bytes())?;
        // SAFETY: `target` is a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            let err = io::Error::last_os_error();
            warn!(mountpoint = %self.mountpoint.display(), error = %err,
                  "unmount failed, detaching lazily");
            detach(&self.mountpoint);
        }
        let result = self.ended.await.unwrap_or(Ok(()));
        info!(mountpoint = %self.mountpoint.display(), "unmounted");
        result
    }
}

fn join(session: BackgroundSession) -> io::Result<()> {
    session.join()
}

fn detach(mountpoint: &Path) {
    if let Ok(target) = CString::new(mountpoint.as_os_str().as_bytes()) {
        // SAFETY: `target` is a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A daemon that died leaves its mount behind, answering ENOTCONN; a supervisor restarting us
/// must be able to take the mountpoint back. Only a dead `fuse.storefs` mount is detached.
fn clear_dead_mount(mountpoint: &Path) {
    // statfs, not stat: the kernel may answer stat from cached attributes of a dead mount, while
    // statfs always asks the daemon.
    let dead = statfs_errno(mountpoint) == Some(libc::ENOTCONN);
    if dead && mount_type(mountpoint).ok().flatten().as_deref() == Some(FS_TYPE) {
        warn!(mountpoint = %mountpoint.display(),
              "detaching a dead storefs mount left by a previous daemon");
        detach(mountpoint);
    }
}

/// The errno of `statfs(path)`, None when it succeeds.
fn statfs_errno(path: &Path) -> Option<i32> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 {
        None
    } else {
        io::Error::last_os_error().raw_os_error()
    }
}

/// The filesystem type mounted at `path` (absolute), if it is a mount point in this namespace.
pub fn mount_type(path: &Path) -> io::Result<Option<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = path.as_os_str().as_bytes();
    // Fields: id parent major:minor root mountpoint options [optional...] - fstype source super.
    Ok(info.lines().rev().find_map(|line| {
        let point = line.split(' ').nth(4)?;
        if unescape_mountinfo(point) != want {
            return None;
        }
        let (_, after) = line.split_once(" - ")?;
        after.split(' ').next().map(str::to_owned)
    }))
}

/// Undoes mountinfo's octal escapes (`\040` for space and so on).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), b"/x\\y");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), b"/trailing\\04");
    }

    #[test]
    fn root_is_a_mountpoint() {
        assert!(mount_type(Path::new("/")).unwrap().is_some());
        assert_eq!(mount_type(Path::new("/proc")).unwrap().as_deref(), Some("proc"));
    }
}
