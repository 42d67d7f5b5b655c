//! Whether a mountpoint answers, as this process (the host) sees it: `statfs(2)` in a child
//! process, given up on after a timeout, so a hung FUSE mount is reported instead of hanging the
//! caller. `statfs` always reaches the FUSE daemon (the kernel caches no answer for it), so a
//! dead daemon shows as `ENOTCONN`, and a mountpoint where storefs is not mounted (as this host
//! sees it) shows the type of the filesystem beneath.
//!
//! Why a process and not a thread: a FUSE request the daemon has read but never answers cannot
//! be interrupted, not even by SIGKILL, and a process does not finish exiting while one of its
//! threads waits for such a request, so `storefs check` would print its lines and then hang,
//! with its stdout still open, in the monitoring script that runs it. A forked child with no
//! stdin, stdout or stderr can be left behind instead: the check exits, and the child is reaped
//! by init whenever the daemon answers.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
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
    /// statfs failed otherwise (no such directory, permission), or the probe could not run.
    Failed(std::io::Error),
    /// No answer within the timeout: the mount hangs (the child asking is left behind).
    Hung,
}

/// statfs of `path`, waiting at most `timeout`.
pub fn probe(path: &Path, timeout: Duration) -> MountState {
    let started = Instant::now();
    match statfs_in_child(path, timeout) {
        Err(err) => MountState::Failed(err),
        Ok(None) => MountState::Hung,
        Ok(Some(Ok(fs_type))) if fs_type == FUSE_SUPER_MAGIC => {
            MountState::Answers(started.elapsed())
        }
        Ok(Some(Ok(fs_type))) => MountState::NotFuse { fs_type },
        Ok(Some(Err(errno))) if errno == libc::ENOTCONN => MountState::Dead,
        Ok(Some(Err(errno))) => MountState::Failed(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Size of the child's answer: a tag byte (0: `f_type` follows, 1: errno follows) and 8 bytes.
const ANSWER: usize = 9;

/// Runs statfs(`path`) in a forked child; `Ok(None)` when it did not answer within `timeout`
/// (it is then killed and left for init to reap), else its `f_type` or errno.
fn statfs_in_child(path: &Path, timeout: Duration) -> std::io::Result<Option<Result<i64, i32>>> {
    let c_path = CString::new(path.as_os_str().as_bytes())?;
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;
    // SAFETY: the child calls only async-signal-safe functions (close, statfs, write, _exit) on
    // memory prepared before the fork, so forking a process that may have threads is sound.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above; `c_path` and the descriptors are valid in the child.
        unsafe { child(&c_path, read_end, write_end) }
    }
    // SAFETY: the parent's copy of the write end is not used again.
    unsafe { libc::close(write_end) };
    if pid < 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: the read end is not used again.
        unsafe { libc::close(read_end) };
        return Err(err);
    }
    let answer = read_answer(read_end, timeout);
    // SAFETY: the read end is not used again.
    unsafe { libc::close(read_end) };
    let answer = match answer {
        Ok(Some(answer)) => answer,
        other => {
            // SAFETY: signalling our own child; it is not waited for (a killed child stuck in
            // a FUSE request exits only when the daemon answers), init reaps it after we exit.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return other.map(|_| None);
        }
    };
    // SAFETY: our own child, which has written its answer and is exiting.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    let mut value = [0; 8];
    value.copy_from_slice(&answer[1..]);
    let value = i64::from_ne_bytes(value);
    Ok(Some(if answer[0] == 0 {
        Ok(value)
    } else {
        Err(i32::try_from(value).unwrap_or(libc::EIO))
    }))
}

/// The child: no stdio (so a child left behind holds no pipe of our caller open), statfs, one
/// answer on `write_end`, exit.
///
/// # Safety
///
/// Only between fork and exit in the child.
unsafe fn child(path: &CString, read_end: i32, write_end: i32) -> ! {
    // SAFETY: closing descriptors this child owns (copies of the parent's).
    unsafe {
        for fd in [0, 1, 2, read_end] {
            libc::close(fd);
        }
    }
    // SAFETY: statfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let mut answer = [0u8; ANSWER];
    // SAFETY: `path` is NUL-terminated and `st` is a valid out-pointer for the call.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 {
        #[allow(clippy::unnecessary_cast, reason = "f_type is i64 on some targets, i32 on others")]
        let fs_type = st.f_type as i64;
        answer[1..].copy_from_slice(&fs_type.to_ne_bytes());
    } else {
        answer[0] = 1;
        // SAFETY: reading this thread's errno right after the failed call.
        let errno = i64::from(unsafe { *libc::__errno_location() });
        answer[1..].copy_from_slice(&errno.to_ne_bytes());
    }
    // SAFETY: `answer` is valid for ANSWER bytes; _exit ends the child without running the
    // parent's atexit handlers or destructors.
    unsafe {
        libc::write(write_end, answer.as_ptr().cast(), ANSWER);
        libc::_exit(0)
    }
}

/// The child's answer, or None when none came within `timeout`.
fn read_answer(fd: i32, timeout: Duration) -> std::io::Result<Option<[u8; ANSWER]>> {
    let deadline = Instant::now() + timeout;
    let mut answer = [0u8; ANSWER];
    let mut got = 0;
    while got < ANSWER {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is one valid pollfd for the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if ready == 0 {
            return Ok(None);
        }
        // SAFETY: `answer[got..]` is valid for ANSWER - got bytes.
        let n = unsafe { libc::read(fd, answer[got..].as_mut_ptr().cast(), ANSWER - got) };
        match n {
            n if n > 0 => got += n as usize,
            0 => return Err(std::io::Error::other("the statfs probe died without answering")),
            _ => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
    Ok(Some(answer))
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
