//! The `/dev/fuse` descriptor: read one request, write one reply or notification (writev), and
//! the backing-file ioctls of passthrough. Every session thread uses the same file description
//! (never `FUSE_DEV_IOC_CLONE`: the kernel aborts the requests a closed clone had read, while
//! requests read through the shared description stay in its processing queue for a successor to
//! have re-sent with `FUSE_NOTIFY_RESEND`).

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::abi::{self, OUT_HEADER_SIZE};

/// What one read of the device gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// A request of this many bytes at the start of the buffer.
    Request(usize),
    /// Nothing to read now (EAGAIN on a non-blocking descriptor, EINTR, or ENOENT: the request
    /// was interrupted before we read it). Poll and read again.
    Nothing,
    /// The connection ended (ENODEV: unmounted or aborted).
    Ended,
}

/// The `/dev/fuse` descriptor of one connection.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl Channel {
    /// Wraps the connection's descriptor.
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
    }

    /// The descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Makes reads return EAGAIN instead of blocking (for the whole file description).
    pub fn set_nonblocking(&self) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own, with integer arguments.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one request into `buf` (the kernel hands over whole requests only).
    pub fn receive(&self, buf: &mut [u8]) -> io::Result<Received> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match usize::try_from(n) {
            // The device never reads 0 bytes while the connection lives.
            Ok(0) => return Ok(Received::Ended),
            Ok(n) => return Ok(Received::Request(n)),
            Err(_) => {}
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR | libc::EAGAIN | libc::ENOENT) => Ok(Received::Nothing),
            Some(libc::ENODEV) => Ok(Received::Ended),
            _ => Err(err),
        }
    }

    /// Writes a reply to request `unique`: `error` (0 or a negative errno) and `payload`.
    pub fn reply(&self, unique: u64, error: i32, payload: &[&[u8]]) -> io::Result<()> {
        let len = OUT_HEADER_SIZE + payload.iter().map(|p| p.len()).sum::<usize>();
        let len = u32::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?;
        let header = abi::out_header(len, error, unique);
        let mut iov = Vec::with_capacity(1 + payload.len());
        iov.push(libc::iovec { iov_base: header.as_ptr() as *mut _, iov_len: header.len() });
        for p in payload.iter().filter(|p| !p.is_empty()) {
            iov.push(libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() });
        }
        // SAFETY: every iovec points into a slice that outlives the call; the kernel only
        // reads through them.
        let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
        if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Sends notification `code` with `payload` (unique 0).
    pub fn notify(&self, code: i32, payload: &[&[u8]]) -> io::Result<()> {
        self.reply(0, code, payload)
    }

    /// Registers `file` as a passthrough backing file; the id goes into an OPEN reply.
    pub fn backing_open(&self, file: BorrowedFd<'_>) -> io::Result<i32> {
        let map = abi::backing_map(file.as_raw_fd());
        // SAFETY: the ioctl reads a `fuse_backing_map`, which `map` holds, during the call.
        let id = unsafe {
            libc::ioctl(self.fd.as_raw_fd(), abi::DEV_IOC_BACKING_OPEN as _, map.as_ptr())
        };
        if id < 0 { Err(io::Error::last_os_error()) } else { Ok(id) }
    }

    /// Drops backing id `id`.
    pub fn backing_close(&self, id: i32) -> io::Result<()> {
        let id = id.to_ne_bytes();
        // SAFETY: the ioctl reads a u32, which `id` holds, during the call.
        let rc = unsafe {
            libc::ioctl(self.fd.as_raw_fd(), abi::DEV_IOC_BACKING_CLOSE as _, id.as_ptr())
        };
        if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn replies_are_one_write_with_the_header_first() {
        let (a, b) = UnixStream::pair().unwrap();
        let chan = Channel::new(OwnedFd::from(a));
        chan.reply(42, -libc::ENOENT, &[b"ab", b"", b"cde"]).unwrap();
        let mut buf = [0u8; 64];
        let n = io::Read::read(&mut &b, &mut buf).unwrap();
        assert_eq!(n, OUT_HEADER_SIZE + 5);
        assert_eq!(&buf[..16], &abi::out_header(21, -libc::ENOENT, 42));
        assert_eq!(&buf[16..21], b"abcde");
    }

    #[test]
    fn reads_report_would_block_as_nothing() {
        let (a, _b) = UnixStream::pair().unwrap();
        let chan = Channel::new(OwnedFd::from(a));
        chan.set_nonblocking().unwrap();
        assert_eq!(chan.receive(&mut [0; 16]).unwrap(), Received::Nothing);
    }
}
