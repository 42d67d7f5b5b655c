//! Descriptors over a Unix socket (`SCM_RIGHTS`): one datagram carrying a payload and file
//! descriptors, sent as sd_notify(3) does for `FDSTORE=1`, and received as systemd does.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The most descriptors one datagram may carry here (systemd accepts up to 768).
pub const MAX_FDS: usize = 16;

/// Sends `payload` with `fds` attached on connected socket `sock`, as one datagram.
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "too many descriptors"));
    }
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let data_len = std::mem::size_of_val(raw.as_slice());
    let mut control = ControlBuffer::new();
    let mut iov =
        libc::iovec { iov_base: payload.as_ptr().cast_mut().cast(), iov_len: payload.len() };
    // SAFETY: msghdr is plain old data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !raw.is_empty() {
        msg.msg_control = control.bytes.as_mut_ptr().cast();
        // SAFETY: CMSG_SPACE is arithmetic on its argument.
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(data_len as u32) } as usize;
        // SAFETY: the control buffer is aligned and at least CMSG_SPACE(MAX_FDS fds) long, so the
        // first header and its data fit inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as usize;
            std::ptr::copy_nonoverlapping(raw.as_ptr(), libc::CMSG_DATA(cmsg).cast(), raw.len());
        }
    }
    // SAFETY: every pointer in `msg` points into buffers alive for the call.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    if sent as usize != payload.len() {
        return Err(io::Error::new(io::ErrorKind::WriteZero, "datagram sent short"));
    }
    Ok(())
}

/// Receives one datagram of at most `max` bytes on `sock` with the descriptors attached to it
/// (close-on-exec), as the service manager does. Descriptors beyond [`MAX_FDS`] are closed
/// by the kernel (`MSG_CTRUNC`) and reported as an error.
pub fn recv_with_fds(sock: BorrowedFd<'_>, max: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut payload = vec![0u8; max];
    let mut control = ControlBuffer::new();
    let mut iov = libc::iovec { iov_base: payload.as_mut_ptr().cast(), iov_len: payload.len() };
    // SAFETY: msghdr is plain old data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.bytes.as_mut_ptr().cast();
    msg.msg_controllen = control.bytes.len();
    // SAFETY: every pointer in `msg` points into buffers alive for the call.
    let got = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg.msg_control` with well-formed headers up to
    // `msg_controllen`; the CMSG_* walkers never leave it. Each SCM_RIGHTS descriptor is new
    // and ours to own.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header) / 4;
                let data: *const RawFd = libc::CMSG_DATA(cmsg).cast();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("descriptors were cut off (MSG_CTRUNC)"));
    }
    payload.truncate(got as usize);
    Ok((payload, fds))
}

/// Room for one `SCM_RIGHTS` header with [`MAX_FDS`] descriptors, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct ControlBuffer {
    bytes: [u8; 128],
}

// CMSG_SPACE(16 * 4) on 64-bit Linux is 16 + 64 = 80 bytes.
const _: () = assert!(MAX_FDS * 4 + 16 <= 128);

impl ControlBuffer {
    fn new() -> Self {
        Self { bytes: [0; 128] }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, Write};
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn descriptors_arrive_as_new_descriptors_of_the_same_files() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"handed over").unwrap();
        let other = tempfile::tempfile().unwrap();
        send_with_fds(a.as_fd(), b"FDSTORE=1\nFDNAME=x", &[file.as_fd(), other.as_fd()]).unwrap();
        let (payload, fds) = recv_with_fds(b.as_fd(), 4096).unwrap();
        assert_eq!(payload, b"FDSTORE=1\nFDNAME=x");
        assert_eq!(fds.len(), 2);
        let mut got = std::fs::File::from(fds.into_iter().next().unwrap());
        got.rewind().unwrap();
        let mut text = String::new();
        got.read_to_string(&mut text).unwrap();
        assert_eq!(text, "handed over");
    }

    #[test]
    fn a_datagram_without_descriptors_is_plain() {
        let (a, b) = UnixDatagram::pair().unwrap();
        send_with_fds(a.as_fd(), b"READY=1", &[]).unwrap();
        let (payload, fds) = recv_with_fds(b.as_fd(), 64).unwrap();
        assert_eq!((payload.as_slice(), fds.len()), (&b"READY=1"[..], 0));
    }

    #[test]
    fn too_many_descriptors_are_refused_before_sending() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let many = vec![a.as_fd(); MAX_FDS + 1];
        assert!(send_with_fds(a.as_fd(), b"x", &many).is_err());
    }
}
