//! The serving loop: INIT negotiation (or resuming without it), then N threads that each poll
//! the `/dev/fuse` descriptor and a wake-up eventfd, read one request, and dispatch it to the
//! `Handler`. INTERRUPT answers a request in flight EINTR at once; one not read yet gets EAGAIN,
//! and the kernel queues the interrupt again. `park` stops the threads at a request boundary and
//! hands the descriptor back, live, for a successor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, info, warn};

use super::abi::{self, InitOut, init, op};
use super::channel::{Channel, Received};
use super::reply::{
    Conn, ReplyAttr, ReplyData, ReplyDir, ReplyDirPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr,
};
use super::request::{Operation, Request};
use super::{ConnParams, Handler, KernelOffer, Start};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Mutex, Ordering, lock};

/// Largest WRITE we accept (the store is read-only; this sizes the read buffer).
const MAX_WRITE: u32 = 1024 * 1024;
/// Largest request in pages: 1 MiB reads.
const MAX_PAGES: u16 = 256;
/// Room for a request header and the largest WRITE.
const BUFFER_SIZE: usize = MAX_WRITE as usize + 4096;
const _: () = assert!(BUFFER_SIZE >= abi::MIN_READ_BUFFER);
/// Background requests (readahead) the kernel may have in flight.
const MAX_BACKGROUND: u16 = 16;
/// What the transport itself asks for, beside the handler's wishes.
const TRANSPORT_FLAGS: u64 =
    init::ASYNC_READ | init::BIG_WRITES | init::MAX_PAGES | init::INIT_EXT | init::HAS_RESEND;

/// A connection being served.
#[derive(Debug)]
pub struct Serving {
    conn: Arc<Conn>,
    params: ConnParams,
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
    ended: tokio::sync::oneshot::Receiver<io::Result<()>>,
}

/// Serves the connection `dev` with `threads` threads: `Fresh` waits for INIT and negotiates
/// before returning (an error if the first request is not INIT or the connection ends);
/// `Resume` skips INIT, tells the handler, and asks the kernel to re-send what a predecessor
/// read but never answered.
pub fn serve(
    dev: OwnedFd,
    handler: Arc<dyn Handler>,
    start: Start,
    threads: usize,
) -> io::Result<Serving> {
    let chan = Channel::new(dev);
    chan.set_nonblocking()?;
    let conn = Conn::new(chan);
    let params = match start {
        Start::Fresh => negotiate(&conn, handler.as_ref())?,
        Start::Resume(params) => {
            handler.resumed(&params);
            if params.has_resend() {
                conn.chan().notify(abi::NOTIFY_RESEND, &[])?;
                debug!("asked the kernel to re-send unanswered requests");
            }
            params
        }
    };
    let stop = Arc::new(Stop::new()?);
    let (tx, ended) = tokio::sync::oneshot::channel();
    let ender = Arc::new(Ender {
        left: AtomicUsize::new(threads.max(1)),
        result: Mutex::new(Ok(())),
        tx: Mutex::new(Some(tx)),
    });
    let mut handles = Vec::new();
    for n in 0..threads.max(1) {
        let (c, h, s, e) = (conn.clone(), handler.clone(), stop.clone(), ender.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("storefs-fuse-{n}"))
            .spawn(move || e.done(run(&c, h.as_ref(), &s)));
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(err) => {
                stop.trigger();
                return Err(err);
            }
        }
    }
    Ok(Serving { conn, params, stop, threads: handles, ended })
}

impl Serving {
    /// What INIT settled.
    pub fn params(&self) -> ConnParams {
        self.params
    }

    /// The `/dev/fuse` descriptor (for the fd store).
    pub fn dev(&self) -> BorrowedFd<'_> {
        self.conn.chan().fd()
    }

    /// Resolves when the connection ended (unmount, abort, DESTROY).
    pub async fn ended(&mut self) -> io::Result<()> {
        (&mut self.ended).await.unwrap_or(Ok(()))
    }

    /// Stops reading at a request boundary, waits up to `grace` for replies in flight, then
    /// returns the descriptor (a duplicate of the same file description), neither unmounted nor
    /// closed. Requests still unanswered stay in the kernel's processing queue: a successor
    /// resumes them with `FUSE_NOTIFY_RESEND`; replies that come later here are dropped.
    pub fn park(self, grace: Duration) -> io::Result<(OwnedFd, ConnParams)> {
        self.stop.trigger();
        for thread in self.threads {
            if thread.join().is_err() {
                warn!("a FUSE session thread panicked");
            }
        }
        let left = self.conn.park(grace);
        info!(unanswered = left, "FUSE connection parked");
        let fd = self.conn.chan().fd().try_clone_to_owned()?;
        Ok((fd, self.params))
    }
}

/// Reads until INIT, negotiates with the handler, replies.
fn negotiate(conn: &Conn, handler: &dyn Handler) -> io::Result<ConnParams> {
    let mut buf = vec![0; BUFFER_SIZE];
    loop {
        wait_readable(conn.chan().fd(), None)?;
        let n = match conn.chan().receive(&mut buf)? {
            Received::Request(n) => n,
            Received::Nothing => continue,
            Received::Ended => return Err(protocol("the connection ended before INIT")),
        };
        let bytes = buf.get(..n).unwrap_or_default();
        let (header, operation) = Request::parse(bytes).map_err(|e| protocol(&e.to_string()))?;
        let Ok(Operation::Init(offer)) = operation else {
            conn.write(header.unique, -libc::EIO, &[]);
            return Err(protocol(&format!("first request is opcode {}, not INIT", header.opcode)));
        };
        if offer.major < abi::KERNEL_VERSION {
            conn.write(header.unique, -libc::EPROTO, &[]);
            return Err(protocol(&format!("kernel speaks FUSE {}.{}", offer.major, offer.minor)));
        }
        let ours = InitOut {
            major: abi::KERNEL_VERSION,
            minor: abi::KERNEL_MINOR_VERSION,
            ..InitOut::default()
        };
        if offer.major > abi::KERNEL_VERSION {
            // The kernel sends INIT again with our major.
            conn.write(header.unique, 0, &[&ours.to_bytes()]);
            continue;
        }
        let kernel = KernelOffer {
            major: offer.major,
            minor: offer.minor,
            max_readahead: offer.max_readahead,
            flags: offer.flags,
        };
        let answer = handler.init(&kernel);
        let granted = (answer.flags | TRANSPORT_FLAGS) & offer.flags;
        let out = InitOut {
            minor: offer.minor.min(abi::KERNEL_MINOR_VERSION),
            max_readahead: answer.max_readahead.min(offer.max_readahead),
            flags: granted,
            max_background: MAX_BACKGROUND,
            congestion_threshold: MAX_BACKGROUND * 3 / 4,
            max_write: MAX_WRITE,
            time_gran: 1,
            max_pages: MAX_PAGES,
            max_stack_depth: if granted & init::PASSTHROUGH != 0 {
                answer.max_stack_depth
            } else {
                0
            },
            ..ours
        };
        conn.chan().reply(header.unique, 0, &[&out.to_bytes()])?;
        let params = ConnParams {
            major: out.major,
            minor: out.minor,
            flags: granted,
            max_write: out.max_write,
            max_readahead: out.max_readahead,
        };
        debug!(?params, "FUSE connection initialised");
        return Ok(params);
    }
}

fn protocol(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("FUSE handshake: {what}"))
}

/// One session thread: poll, read, dispatch, until stopped or the connection ends.
fn run(conn: &Arc<Conn>, handler: &dyn Handler, stop: &Stop) -> io::Result<()> {
    let mut buf = vec![0; BUFFER_SIZE];
    let result = loop {
        if stop.is_set() {
            break Ok(());
        }
        match wait_readable(conn.chan().fd(), Some(stop)) {
            Ok(true) => {}
            Ok(false) => break Ok(()),
            Err(err) => break Err(err),
        }
        match conn.chan().receive(&mut buf) {
            Ok(Received::Request(n)) => {
                if dispatch(conn, handler, buf.get(..n).unwrap_or_default()) == Flow::Stop {
                    break Ok(());
                }
            }
            Ok(Received::Nothing) => {}
            Ok(Received::Ended) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    // The others stop too: the connection is gone, or we are parking.
    stop.trigger();
    result
}

/// Waits until `fd` is readable (true) or `stop` was triggered (false).
fn wait_readable(fd: BorrowedFd<'_>, stop: Option<&Stop>) -> io::Result<bool> {
    let mut fds = [
        libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        libc::pollfd {
            fd: stop.map_or(-1, |s| s.fd.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfds for the call (a negative fd is ignored).
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc >= 0 {
            return Ok(fds[1].revents == 0);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Answers one request (or hands it to the handler, which answers).
fn dispatch(conn: &Arc<Conn>, handler: &dyn Handler, bytes: &[u8]) -> Flow {
    let (header, operation) = match Request::parse(bytes) {
        Ok(parsed) => parsed,
        Err(err) => {
            warn!(error = %err, len = bytes.len(), "unreadable FUSE request");
            return Flow::Continue;
        }
    };
    let unique = header.unique;
    let operation = match operation {
        Ok(operation) => operation,
        Err(err) => {
            warn!(opcode = header.opcode, error = %err, "malformed FUSE request");
            if !matches!(header.opcode, op::FORGET | op::BATCH_FORGET | op::INTERRUPT) {
                conn.write(unique, -libc::EIO, &[]);
            }
            return Flow::Continue;
        }
    };
    let req = Request { header, op: operation };
    let info = req.info();
    let ino = header.nodeid;
    match req.op {
        Operation::Forget(items) => {
            for (ino, nlookup) in items {
                handler.forget(ino, nlookup);
            }
        }
        Operation::Interrupt { unique: target } => interrupt(conn, unique, target),
        Operation::Destroy => {
            conn.write(unique, 0, &[]);
            return Flow::Stop;
        }
        Operation::Init(_) => conn.write(unique, -libc::EIO, &[]),
        other => {
            let reply = conn.admit(unique);
            match other {
                Operation::Lookup { name } => handler.lookup(&info, ino, &name, ReplyEntry(reply)),
                Operation::Getattr => handler.getattr(&info, ino, ReplyAttr(reply)),
                Operation::Readlink => handler.readlink(&info, ino, ReplyData(reply)),
                Operation::Open { flags } => handler.open(&info, ino, flags, ReplyOpen(reply)),
                Operation::Read { fh, offset, size } => {
                    handler.read(&info, ino, fh, offset, size, ReplyData(reply));
                }
                Operation::Release { fh } => handler.release(&info, ino, fh, ReplyEmpty(reply)),
                Operation::Flush { fh } => handler.flush(&info, ino, fh, ReplyEmpty(reply)),
                Operation::Opendir { flags } => {
                    handler.opendir(&info, ino, flags, ReplyOpen(reply));
                }
                Operation::Releasedir { fh } => {
                    handler.releasedir(&info, ino, fh, ReplyEmpty(reply));
                }
                Operation::Readdir { fh, offset, size } => {
                    handler.readdir(&info, ino, fh, offset, ReplyDir::new(reply, size));
                }
                Operation::Readdirplus { fh, offset, size } => {
                    handler.readdirplus(&info, ino, fh, offset, ReplyDirPlus::new(reply, size));
                }
                Operation::Statfs => handler.statfs(&info, ino, ReplyStatfs(reply)),
                Operation::Access { mask } => handler.access(&info, ino, mask, ReplyEmpty(reply)),
                Operation::Getxattr { name, size } => {
                    handler.getxattr(&info, ino, &name, size, ReplyXattr(reply));
                }
                Operation::Listxattr { size } => {
                    handler.listxattr(&info, ino, size, ReplyXattr(reply));
                }
                Operation::Mutation(name) => handler.mutation(&info, name, ino, ReplyEmpty(reply)),
                _ => reply.error(libc::ENOSYS),
            }
        }
    }
    Flow::Continue
}

/// INTERRUPT `unique` of request `target`: a request in flight is answered EINTR now; one not
/// read yet (or answered already) gets the interrupt answered EAGAIN, and the kernel queues the
/// interrupt again (for an answered one it finds nothing and drops it).
fn interrupt(conn: &Conn, unique: u64, target: u64) {
    if !conn.interrupt(target) {
        conn.write(unique, -libc::EAGAIN, &[]);
    }
}

/// The stop signal of the session threads: a flag and an eventfd that stays readable once
/// written, so every thread's poll wakes.
#[derive(Debug)]
struct Stop {
    set: AtomicBool,
    fd: OwnedFd,
}

impl Stop {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Self { set: AtomicBool::new(false), fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }

    fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    fn trigger(&self) {
        if !self.set.swap(true, Ordering::AcqRel) {
            let one = 1u64.to_ne_bytes();
            // SAFETY: writes 8 bytes from a live buffer to our eventfd.
            unsafe { libc::write(self.fd.as_fd().as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }
}

/// Tells `Serving::ended` once the last thread is done, with the first error any had.
#[derive(Debug)]
struct Ender {
    left: AtomicUsize,
    result: Mutex<io::Result<()>>,
    tx: Mutex<Option<tokio::sync::oneshot::Sender<io::Result<()>>>>,
}

impl Ender {
    fn done(&self, result: io::Result<()>) {
        if let Err(err) = result {
            warn!(error = %err, "FUSE session thread failed");
            let mut first = lock(&self.result);
            if first.is_ok() {
                *first = Err(err);
            }
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let result = std::mem::replace(&mut *lock(&self.result), Ok(()));
            if let Some(tx) = lock(&self.tx).take() {
                let _ = tx.send(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// (error, unique) of each reply written to `peer`.
    fn replies(peer: &UnixDatagram) -> Vec<(i32, u64)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Ok(n) = peer.recv(&mut buf) {
            assert!(n >= abi::OUT_HEADER_SIZE);
            let error = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
            out.push((error, u64::from_ne_bytes(buf[8..16].try_into().unwrap())));
        }
        out
    }

    #[test]
    fn interrupts_answer_the_request_in_flight_or_ask_the_kernel_to_retry() {
        let (a, peer) = UnixDatagram::pair().unwrap();
        peer.set_nonblocking(true).unwrap();
        let conn = Conn::new(Channel::new(OwnedFd::from(a)));
        let waiting = conn.admit(6);
        interrupt(&conn, 7, 6);
        interrupt(&conn, 9, 8);
        waiting.ok();
        assert_eq!(
            replies(&peer),
            [(-libc::EINTR, 6), (-libc::EAGAIN, 9)],
            "EINTR to the request in flight (its late reply swallowed), EAGAIN to the unknown"
        );
    }

    #[test]
    fn stop_wakes_a_waiting_thread() {
        let (a, _peer) = UnixDatagram::pair().unwrap();
        let stop = Arc::new(Stop::new().unwrap());
        let waiter = {
            let stop = stop.clone();
            std::thread::spawn(move || wait_readable(OwnedFd::from(a).as_fd(), Some(&stop)))
        };
        stop.trigger();
        assert!(!waiter.join().unwrap().unwrap(), "woken by the stop, not by the descriptor");
    }
}
