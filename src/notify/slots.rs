//! Descriptors 3.. kept free for passing on: `storefs upgrade` hands its `/dev/fuse` descriptor
//! and state file to a new binary by `execve` with `$LISTEN_FDS`, which wants them at 3, 4, ...
//! In a running process those numbers belong to whoever opened first (the async runtime's
//! epoll, a socket), so they are claimed at start with placeholders (an empty memfd,
//! close-on-exec) that nothing uses; just before `execve` the descriptors to pass are put in
//! their place.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use super::listen::FIRST_FD;

/// How many descriptors can be passed on.
pub const SLOTS: usize = 3;

/// Claims descriptors 3..3+[`SLOTS`] with placeholders. Call at start, before the runtime or any
/// descriptor that must survive exists: a descriptor open there is replaced. The descriptors
/// `listen::take_from_env` adopted were moved above them first.
pub fn claim() -> io::Result<()> {
    claim_at(FIRST_FD)
}

/// Puts `fds` at 3, 4, ... without close-on-exec, so `execve` passes them on.
pub fn pass_on(fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    pass_on_at(FIRST_FD, fds)
}

/// After a failed `execve`: the placeholders again.
pub fn take_back() -> io::Result<()> {
    claim_at(FIRST_FD)
}

fn claim_at(base: RawFd) -> io::Result<()> {
    // An empty memfd: needs no /dev (a container's may lack /dev/null).
    // SAFETY: the name is a NUL-terminated literal.
    let fd = unsafe { libc::memfd_create(c"storefs-slot".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let first = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // The memfd may itself have got a slot's number (the lowest free one): copied above the
    // slots first, or closing it would free that slot for the next open.
    // SAFETY: fcntl duplicates our own descriptor; the result is owned below.
    let above =
        unsafe { libc::fcntl(first.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base + SLOTS as RawFd) };
    if above < 0 {
        return Err(io::Error::last_os_error());
    }
    // Closed before the slots are filled: it may be one of them.
    drop(first);
    // SAFETY: a new descriptor nothing else owns.
    let placeholder =
        unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(above) };
    for i in 0..SLOTS {
        place(placeholder.as_raw_fd(), base + i as RawFd, libc::O_CLOEXEC)?;
    }
    Ok(())
}

fn pass_on_at(base: RawFd, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > SLOTS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors to pass"));
    }
    for (i, fd) in fds.iter().enumerate() {
        place(fd.as_raw_fd(), base + i as RawFd, 0)?;
    }
    Ok(())
}

/// A descriptor at or above the claimed ones, close-on-exec, for the same file as `fd`.
pub fn above_slots(fd: RawFd) -> io::Result<RawFd> {
    // SAFETY: fcntl duplicates a descriptor we were handed; the caller owns the result.
    let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST_FD + SLOTS as RawFd) };
    if moved < 0 { Err(io::Error::last_os_error()) } else { Ok(moved) }
}

fn place(from: RawFd, to: RawFd, flags: i32) -> io::Result<()> {
    if from == to {
        // dup3 refuses equal numbers; only the flag changes.
        // SAFETY: fcntl on our own descriptor.
        let rc = unsafe {
            libc::fcntl(to, libc::F_SETFD, if flags == 0 { 0 } else { libc::FD_CLOEXEC })
        };
        return if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
    }
    // SAFETY: dup3 onto a number this module owns (claimed at start).
    if unsafe { libc::dup3(from, to, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether descriptor `fd` is close-on-exec.
    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: F_GETFD on any number is harmless.
        unsafe { libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
    }

    fn same_file(a: RawFd, b: RawFd) -> bool {
        let stat = |fd| {
            // SAFETY: a zeroed plain-old-data struct.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: `st` is a valid out-pointer for the call.
            assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
            (st.st_dev, st.st_ino)
        };
        stat(a) == stat(b)
    }

    // Tests run as threads of one process whose low descriptors belong to other tests: these use
    // slots far above them.
    const BASE: RawFd = 900;

    #[test]
    fn slots_hold_placeholders_then_the_passed_descriptors_then_placeholders() {
        use std::os::fd::AsFd;
        claim_at(BASE).unwrap();
        let file = tempfile::tempfile().unwrap();
        for i in 0..SLOTS as RawFd {
            assert!(cloexec(BASE + i) && same_file(BASE + i, BASE));
            assert!(!same_file(BASE + i, file.as_raw_fd()));
        }
        pass_on_at(BASE, &[file.as_fd()]).unwrap();
        assert!(!cloexec(BASE) && same_file(BASE, file.as_raw_fd()));
        assert!(cloexec(BASE + 1));
        claim_at(BASE).unwrap();
        assert!(cloexec(BASE) && same_file(BASE, BASE + 1), "a placeholder again");
        assert!(pass_on_at(BASE, &[file.as_fd(); SLOTS + 1]).is_err());
        let moved = above_slots(file.as_raw_fd()).unwrap();
        assert!(moved >= FIRST_FD + SLOTS as RawFd && cloexec(moved));
        for fd in (BASE..BASE + SLOTS as RawFd).chain([moved]) {
            // SAFETY: descriptors this test made.
            unsafe { libc::close(fd) };
        }
    }
}
