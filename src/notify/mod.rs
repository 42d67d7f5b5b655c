//! systemd's readiness protocol (`sd_notify`), without libsystemd: one datagram of
//! newline-separated `KEY=VALUE` lines to the socket named by `$NOTIFY_SOCKET`. A name starting
//! with `@` is a Linux abstract socket. Without `$NOTIFY_SOCKET` every call does nothing.
//! `FDSTORE=1` datagrams carry descriptors (`scm`); `listen` takes the ones handed back at start.

pub mod listen;
pub mod scm;
pub mod slots;

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The socket name is unusable.
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an @abstract name")]
    BadAddress(String),
    /// Sending failed.
    #[error("cannot notify {socket}: {source}")]
    Send {
        /// The socket.
        socket: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A notifier bound to one socket (taken from the environment once, at start).
#[derive(Debug, Clone)]
pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    /// The notifier `$NOTIFY_SOCKET` asks for (a no-op when it is unset or empty).
    pub fn from_env() -> Self {
        Self::new(std::env::var("NOTIFY_SOCKET").ok().filter(|s| !s.is_empty()))
    }

    /// A notifier for `socket` (None: no-op).
    pub fn new(socket: Option<String>) -> Self {
        Self { socket }
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// Sends `state` (e.g. `"READY=1"`, `"STATUS=serving"`), one datagram.
    pub fn notify(&self, state: &str) -> Result<(), NotifyError> {
        self.notify_with_fds(state, &[])
    }

    /// Sends `state` with `fds` attached (`SCM_RIGHTS`), one datagram: with
    /// `FDSTORE=1\nFDNAME=<name>` the service manager keeps them for our successor.
    pub fn notify_with_fds(&self, state: &str, fds: &[BorrowedFd<'_>]) -> Result<(), NotifyError> {
        let Some(socket) = &self.socket else { return Ok(()) };
        let addr = address(socket)?;
        let send = |source| NotifyError::Send { socket: socket.clone(), source };
        let sock = UnixDatagram::unbound().map_err(send)?;
        sock.connect_addr(&addr).map_err(send)?;
        scm::send_with_fds(sock.as_fd(), state.as_bytes(), fds).map_err(send)
    }
}

fn address(socket: &str) -> Result<SocketAddr, NotifyError> {
    let bad = || NotifyError::BadAddress(socket.to_owned());
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())
    } else if socket.starts_with('/') {
        SocketAddr::from_pathname(Path::new(socket)).map_err(|_| bad())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(Some(path.to_string_lossy().into_owned()));
        n.notify("READY=1").unwrap();
        n.notify("STATUS=3 paths").unwrap();
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(recv(&sock), "STATUS=3 paths");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("storefs-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(Some(format!("@{name}"))).notify("STOPPING=1").unwrap();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn stored_descriptors_travel_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        let file = tempfile::tempfile().unwrap();
        let n = Notifier::new(Some(path.to_string_lossy().into_owned()));
        n.notify_with_fds("FDSTORE=1\nFDNAME=fuse\nFDPOLL=0", &[file.as_fd()]).unwrap();
        let (payload, fds) = scm::recv_with_fds(sock.as_fd(), 512).unwrap();
        assert_eq!(payload, b"FDSTORE=1\nFDNAME=fuse\nFDPOLL=0");
        assert_eq!(fds.len(), 1);
    }

    #[test]
    fn unset_is_a_no_op_and_bad_names_are_refused() {
        assert!(!Notifier::new(None).enabled());
        Notifier::new(None).notify("READY=1").unwrap();
        let err = Notifier::new(Some("relative".into())).notify("READY=1").unwrap_err();
        assert!(matches!(err, NotifyError::BadAddress(_)), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none").to_string_lossy().into_owned();
        assert!(Notifier::new(Some(missing)).notify("READY=1").is_err());
    }
}
