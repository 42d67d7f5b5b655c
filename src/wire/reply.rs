//! Replies. Each request gets one reply object; it is `Send`, may be completed later from a
//! tokio task, and writes exactly once: dropping it unanswered replies EIO, so no request is left
//! hanging by us. The in-flight table (`Conn`) decides who answers: the handler's reply, or an
//! INTERRUPT that answered EINTR first (the handler's later reply is then swallowed).

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use tracing::debug;

use super::abi::{self, FileAttr, Statfs};
use super::channel::Channel;
use crate::sync::{Arc, AtomicBool, Condvar, Mutex, Ordering, lock};

/// The connection as replies see it: the channel and the requests in flight.
#[derive(Debug)]
pub(super) struct Conn {
    chan: Channel,
    inflight: Mutex<HashSet<u64>>,
    drained: Condvar,
    /// Parked: replies are no longer ours to write (a successor may answer the requests).
    parked: AtomicBool,
}

impl Conn {
    pub(super) fn new(chan: Channel) -> Arc<Self> {
        Arc::new(Self {
            chan,
            inflight: Mutex::default(),
            drained: Condvar::new(),
            parked: AtomicBool::new(false),
        })
    }

    pub(super) fn chan(&self) -> &Channel {
        &self.chan
    }

    /// Registers request `unique` as in flight and returns its reply.
    pub(super) fn admit(self: &Arc<Self>, unique: u64) -> Reply {
        lock(&self.inflight).insert(unique);
        Reply { unique, conn: Some(self.clone()) }
    }

    /// Answers `unique` unless someone else did, or the connection is parked.
    fn finish(&self, unique: u64, error: i32, payload: &[&[u8]]) {
        {
            let mut inflight = lock(&self.inflight);
            if !inflight.remove(&unique) {
                return;
            }
            if self.parked.load(Ordering::Acquire) {
                // Left in the kernel's processing queue for a successor.
                return;
            }
            // Written under the lock, so `park` never returns while a reply is being written.
            self.write(unique, error, payload);
            if inflight.is_empty() {
                self.drained.notify_all();
            }
        }
    }

    /// Writes a reply; a request the kernel no longer waits for (interrupted, aborted) is fine.
    pub(super) fn write(&self, unique: u64, error: i32, payload: &[&[u8]]) {
        if let Err(err) = self.chan.reply(unique, error, payload) {
            debug!(unique, error = %err, "reply not delivered");
        }
    }

    /// INTERRUPT of `unique`: answers it EINTR if it is in flight (true), else false.
    pub(super) fn interrupt(&self, unique: u64) -> bool {
        let known = lock(&self.inflight).contains(&unique);
        if known {
            self.finish(unique, -libc::EINTR, &[]);
        }
        known
    }

    /// Waits up to `grace` for every request in flight to be answered, then stops replying.
    /// Returns the number still unanswered.
    pub(super) fn park(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut inflight = lock(&self.inflight);
        while !inflight.is_empty() {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else { break };
            inflight = match self.drained.wait_timeout(inflight, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        self.parked.store(true, Ordering::Release);
        inflight.len()
    }
}

/// The reply to one request. Exactly one answer reaches the kernel; dropped unanswered, it
/// answers EIO.
#[derive(Debug)]
pub struct Reply {
    unique: u64,
    conn: Option<Arc<Conn>>,
}

impl Reply {
    fn send(mut self, error: i32, payload: &[&[u8]]) {
        if let Some(conn) = self.conn.take() {
            conn.finish(self.unique, error, payload);
        }
    }

    /// Fails the request with `errno` (positive, e.g. `libc::ENOENT`).
    pub fn error(self, errno: i32) {
        self.send(-errno, &[]);
    }

    /// Answers success with no payload.
    pub fn ok(self) {
        self.send(0, &[]);
    }

    /// Answers success with `payload`.
    pub fn payload(self, payload: &[&[u8]]) {
        self.send(0, payload);
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.finish(self.unique, -libc::EIO, &[]);
        }
    }
}

/// Defines a typed reply: a wrapper of `Reply` that can fail with an errno.
macro_rules! typed_reply {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub(super) Reply);

        impl $name {
            /// Fails the request with `errno` (positive, e.g. `libc::ENOENT`).
            pub fn error(self, errno: i32) {
                self.0.error(errno)
            }
        }
    };
}

typed_reply!(
    /// Reply to LOOKUP: an entry.
    ReplyEntry
);
typed_reply!(
    /// Reply to GETATTR: attributes.
    ReplyAttr
);
typed_reply!(
    /// Reply to READ or READLINK: bytes.
    ReplyData
);
typed_reply!(
    /// Reply to OPEN or OPENDIR: a handle.
    ReplyOpen
);
typed_reply!(
    /// Reply to STATFS.
    ReplyStatfs
);
typed_reply!(
    /// A reply with no payload (RELEASE, FLUSH, ACCESS, mutations).
    ReplyEmpty
);
typed_reply!(
    /// Reply to GETXATTR or LISTXATTR: a size or the bytes.
    ReplyXattr
);

impl ReplyEntry {
    /// The name exists: `attr`, valid for `ttl` (entry and attributes).
    pub fn entry(self, attr: &FileAttr, ttl: Duration) {
        let mut out = Vec::with_capacity(abi::ENTRY_OUT_SIZE);
        abi::entry_out(attr, ttl, &mut out);
        self.0.payload(&[&out]);
    }

    /// The name does not exist, and the kernel may remember that for `ttl` (node id 0: a
    /// negative entry; the lookup fails with ENOENT without asking again).
    pub fn absent(self, ttl: Duration) {
        self.entry(&FileAttr::default(), ttl);
    }
}

impl ReplyAttr {
    /// `attr`, valid for `ttl`.
    pub fn attr(self, attr: &FileAttr, ttl: Duration) {
        self.0.payload(&[&abi::attr_out(attr, ttl)]);
    }
}

impl ReplyData {
    /// The bytes.
    pub fn data(self, data: &[u8]) {
        self.0.payload(&[data]);
    }
}

impl ReplyEmpty {
    /// Takes over backing id `id` a predecessor left open (see `Reply::adopt_backing`), e.g.
    /// to close it at the release of its last handle.
    pub fn adopt_backing(&self, id: i32) -> io::Result<BackingId> {
        self.0.adopt_backing(id)
    }

    /// Success.
    pub fn ok(self) {
        self.0.ok();
    }
}

impl ReplyStatfs {
    /// The totals.
    pub fn statfs(self, s: &Statfs) {
        self.0.payload(&[&s.to_bytes()]);
    }
}

impl ReplyXattr {
    /// The size a buffer needs.
    pub fn size(self, size: u32) {
        let mut out = Vec::with_capacity(8);
        abi::put32(&mut out, size);
        abi::put32(&mut out, 0);
        self.0.payload(&[&out]);
    }

    /// The attribute's bytes.
    pub fn data(self, data: &[u8]) {
        self.0.payload(&[data]);
    }
}

/// A passthrough backing id, closed when dropped.
#[derive(Debug)]
pub struct BackingId {
    id: i32,
    conn: Arc<Conn>,
}

impl Drop for BackingId {
    fn drop(&mut self) {
        if let Err(err) = self.conn.chan.backing_close(self.id) {
            debug!(id = self.id, error = %err, "closing a backing id failed");
        }
    }
}

impl BackingId {
    /// The id's number in the connection.
    pub fn raw(&self) -> i32 {
        self.id
    }

    /// Leaves the id registered with the connection (not closed on drop) and returns its
    /// number: a successor daemon takes it over (`ReplyOpen::adopt_backing`).
    pub fn leave_open(self) -> i32 {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so its `conn` is moved out exactly once.
        drop(unsafe { std::ptr::read(&this.conn) });
        this.id
    }
}

impl Reply {
    /// Takes over backing id `id`, registered on this connection by a predecessor daemon and
    /// left open (`BackingId::leave_open`): closed when the result is dropped.
    fn adopt_backing(&self, id: i32) -> io::Result<BackingId> {
        let conn = self.conn.clone().ok_or_else(|| io::Error::other("reply already sent"))?;
        Ok(BackingId { id, conn })
    }
}

impl ReplyOpen {
    /// Takes over backing id `id` a predecessor left open (see `Reply::adopt_backing`).
    pub fn adopt_backing(&self, id: i32) -> io::Result<BackingId> {
        self.0.adopt_backing(id)
    }

    /// Opened as handle `fh` with `FOPEN_*` flags.
    pub fn opened(self, fh: u64, flags: u32) {
        self.0.payload(&[&abi::open_out(fh, flags, 0)]);
    }

    /// Registers `file` as a backing file for passthrough.
    pub fn open_backing(&self, file: &File) -> io::Result<BackingId> {
        let conn = self.0.conn.clone().ok_or_else(|| io::Error::other("reply already sent"))?;
        let id = conn.chan.backing_open(file.as_fd())?;
        Ok(BackingId { id, conn })
    }

    /// Opened as handle `fh`, read by the kernel from backing file `id`.
    pub fn opened_passthrough(self, fh: u64, flags: u32, id: &BackingId) {
        let flags = flags | abi::FOPEN_PASSTHROUGH;
        self.0.payload(&[&abi::open_out(fh, flags, id.id)]);
    }
}

/// Reply to READDIR: a buffer of dirents, at most the kernel's size.
#[derive(Debug)]
pub struct ReplyDir {
    reply: Reply,
    limit: usize,
    buf: Vec<u8>,
}

impl ReplyDir {
    pub(super) fn new(reply: Reply, size: u32) -> Self {
        Self { reply, limit: size as usize, buf: Vec::new() }
    }

    /// Adds an entry; true when it does not fit (the reply is full; the entry was not taken).
    pub fn add(&mut self, ino: u64, next_offset: u64, dirent_type: u32, name: &[u8]) -> bool {
        if self.buf.len() + abi::dirent_size(name) > self.limit {
            return true;
        }
        abi::dirent(ino, next_offset, dirent_type, name, &mut self.buf);
        false
    }

    /// Sends the entries added.
    pub fn ok(self) {
        self.reply.payload(&[&self.buf]);
    }

    /// Fails the request with `errno`.
    pub fn error(self, errno: i32) {
        self.reply.error(errno)
    }
}

/// Reply to READDIRPLUS: a buffer of dirents with entries, at most the kernel's size.
#[derive(Debug)]
pub struct ReplyDirPlus {
    reply: Reply,
    limit: usize,
    buf: Vec<u8>,
}

impl ReplyDirPlus {
    pub(super) fn new(reply: Reply, size: u32) -> Self {
        Self { reply, limit: size as usize, buf: Vec::new() }
    }

    /// Adds an entry with its attributes, valid for `ttl`; true when it does not fit (the
    /// reply is full; the entry was not taken).
    pub fn add(&mut self, next_offset: u64, name: &[u8], attr: &FileAttr, ttl: Duration) -> bool {
        if self.buf.len() + abi::ENTRY_OUT_SIZE + abi::dirent_size(name) > self.limit {
            return true;
        }
        abi::entry_out(attr, ttl, &mut self.buf);
        abi::dirent(attr.ino, next_offset, attr.dirent_type(), name, &mut self.buf);
        false
    }

    /// Sends the entries added.
    pub fn ok(self) {
        self.reply.payload(&[&self.buf]);
    }

    /// Fails the request with `errno`.
    pub fn error(self, errno: i32) {
        self.reply.error(errno)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixDatagram;

    fn conn() -> (Arc<Conn>, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        (Conn::new(Channel::new(OwnedFd::from(a))), b)
    }

    fn replies(peer: &UnixDatagram) -> Vec<(i32, u64, usize)> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = peer.recv(&mut buf) {
            let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
            assert_eq!(len, n, "one write per reply");
            let error = i32::from_ne_bytes(buf[4..8].try_into().unwrap());
            let unique = u64::from_ne_bytes(buf[8..16].try_into().unwrap());
            out.push((error, unique, n - 16));
        }
        out
    }

    #[test]
    fn a_reply_writes_once_and_a_dropped_one_answers_eio() {
        let (conn, peer) = conn();
        let answered = conn.admit(1);
        let dropped = conn.admit(2);
        let moved = conn.admit(3);
        answered.ok();
        drop(dropped);
        std::thread::spawn(move || moved.error(libc::ENOENT)).join().unwrap();
        assert_eq!(replies(&peer), [(0, 1, 0), (-libc::EIO, 2, 0), (-libc::ENOENT, 3, 0)]);
    }

    #[test]
    fn an_interrupt_answers_eintr_and_swallows_the_late_reply() {
        let (conn, peer) = conn();
        let slow = conn.admit(8);
        assert!(conn.interrupt(8));
        assert!(!conn.interrupt(8), "answered already");
        assert!(!conn.interrupt(10), "never read");
        slow.ok();
        assert_eq!(replies(&peer), [(-libc::EINTR, 8, 0)]);
    }

    #[test]
    fn park_waits_for_replies_in_flight_then_leaves_the_rest_to_a_successor() {
        let (conn, peer) = conn();
        let quick = conn.admit(1);
        let answering = std::thread::spawn(move || quick.ok());
        let started = Instant::now();
        assert_eq!(conn.park(Duration::from_secs(30)), 0, "the reply in flight was waited for");
        assert!(started.elapsed() < Duration::from_secs(30), "returned once drained");
        answering.join().unwrap();
        let (conn2, peer2) = self::conn();
        let stuck = conn2.admit(2);
        assert_eq!(conn2.park(Duration::from_millis(50)), 1, "the stuck one is left");
        drop(stuck);
        assert_eq!(replies(&peer), [(0, 1, 0)]);
        assert_eq!(replies(&peer2), [], "nothing written after parking");
    }

    #[test]
    fn directory_buffers_honour_the_size_and_alignment() {
        let (conn, peer) = conn();
        let mut dir = ReplyDir::new(conn.admit(1), 64);
        assert!(!dir.add(1, 1, 4, b"."));
        assert!(!dir.add(1, 2, 4, b".."));
        assert!(dir.add(2, 3, 8, b"a-longer-name"), "a third does not fit in 64 bytes");
        dir.ok();
        let attr = FileAttr { ino: 9, mode: libc::S_IFREG | 0o444, ..FileAttr::default() };
        let mut plus = ReplyDirPlus::new(conn.admit(2), 200);
        assert!(!plus.add(1, b"x", &attr, Duration::ZERO));
        assert!(plus.add(2, b"y", &attr, Duration::ZERO), "a second does not fit in 200");
        plus.ok();
        assert_eq!(replies(&peer), [(0, 1, 64), (0, 2, abi::ENTRY_OUT_SIZE + 32)]);
    }
}
