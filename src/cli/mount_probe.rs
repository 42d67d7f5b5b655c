//! Whether a mountpoint answers, as this process (the host) sees it: `statfs(2)` in a thread,
//! given up on after a timeout, so a hung FUSE mount is reported instead of hanging the caller.
//! `statfs` always reaches the FUSE daemon (the kernel caches no answer for it), so a dead
//! daemon shows as `ENOTCONN`, and a mountpoint where storefs is not mounted (as this host sees
//! it) shows the type of the filesystem beneath.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `f_type` of every FUSE filesystem (`FUSE_SUPER_MAGIC` in linux/magic.h).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// What the mountpoint did.
#[derive(Debug)]
pub enum MountState {
    /// A FUSE filesystem answered statfs, after this long.
    Answers(Duration),
    /// statfs answered for another filesystem: nothing FUSE is mounted there.
    NotFuse {
        /// Its `f_type`.
        fs_type: i64,
    },
    /// `ENOTCONN`: the FUSE daemon behind the mount is gone.
    Dead,
    /// statfs failed otherwise (no such directory, permission).
    Failed(std::io::Error),
    /// No answer within the timeout: the mount hangs (the thread asking is left behind).
    Hung,
}

/// statfs of `path`, waiting at most `timeout`.
pub fn probe(path: &Path, timeout: Duration) -> MountState {
    let (tx, rx) = mpsc::channel();
    let asked: PathBuf = path.to_owned();
    let started = Instant::now();
    let spawned = std::thread::Builder::new().name("mount-probe".into()).spawn(move || {
        let _ = tx.send(statfs(&asked));
    });
    if let Err(err) = spawned {
        return MountState::Failed(err);
    }
    match rx.recv_timeout(timeout) {
        Err(_) => MountState::Hung,
        Ok(Ok(fs_type)) if fs_type == FUSE_SUPER_MAGIC => MountState::Answers(started.elapsed()),
        Ok(Ok(fs_type)) => MountState::NotFuse { fs_type },
        Ok(Err(err)) if err.raw_os_error() == Some(libc::ENOTCONN) => MountState::Dead,
        Ok(Err(err)) => MountState::Failed(err),
    }
}

/// The `f_type` of the filesystem holding `path`.
fn statfs(path: &Path) -> std::io::Result<i64> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: statfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast, reason = "f_type is i64 on some targets, i32 on others")]
    let fs_type = st.f_type as i64;
    Ok(fs_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_a_fuse_mount() {
        let dir = tempfile::tempdir().unwrap();
        let state = probe(dir.path(), Duration::from_secs(5));
        assert!(matches!(state, MountState::NotFuse { .. }), "{state:?}");
    }

    #[test]
    fn a_missing_directory_fails_naming_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        match probe(&dir.path().join("nowhere"), Duration::from_secs(5)) {
            MountState::Failed(err) => assert_eq!(err.kind(), std::io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}
