//! Real-kernel test of resuming a live FUSE connection at the wire level: serve Fresh, park,
//! serve `Resume` on the same descriptor in the same process. A reader blocked in a lookup across
//! the switch gets its answer from the successor (the kernel re-sends the request on
//! FUSE_NOTIFY_RESEND), and the kernel's inode numbers keep working. The cross-process handover
//! belongs to the daemon; this checks only the transport, with a toy filesystem.

#![cfg(feature = "fuse_tests")]

mod common;

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use storefs::wire::{
    self, ConnParams, FileAttr, Handler, InitAnswer, KernelOffer, ReplyAttr, ReplyData, ReplyDir,
    ReplyDirPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, RequestInfo, Start,
    UNIQUE_RESEND, init_flags,
};

/// The inode the successor gives `slow`.
const SLOW_INO: u64 = 42;

/// A toy filesystem: `/f<N>` is a file with inode 100 + N; `/slow` is answered only by a
/// server that is not `holding` (the first one keeps it unanswered, in flight).
#[derive(Debug, Default)]
struct Toy {
    holding: bool,
    held: Mutex<Vec<ReplyEntry>>,
    /// Uniques of the `slow` lookups this server answered.
    answered_slow: Mutex<Vec<u64>>,
    getattrs: Mutex<Vec<u64>>,
}

fn attr(ino: u64) -> FileAttr {
    let mode = if ino == 1 { libc::S_IFDIR | 0o555 } else { libc::S_IFREG | 0o444 };
    FileAttr { ino, mode, nlink: 1, blksize: 4096, ..FileAttr::default() }
}

impl Handler for Toy {
    fn init(&self, _kernel: &KernelOffer) -> InitAnswer {
        InitAnswer {
            flags: init_flags::PARALLEL_DIROPS,
            max_readahead: 1 << 20,
            max_stack_depth: 0,
        }
    }
    fn resumed(&self, _params: &ConnParams) {}
    fn lookup(&self, req: &RequestInfo, _parent: u64, name: &[u8], reply: ReplyEntry) {
        let ino = match name {
            b"slow" if self.holding => return self.held.lock().unwrap().push(reply),
            b"slow" => {
                self.answered_slow.lock().unwrap().push(req.unique);
                SLOW_INO
            }
            _ => match std::str::from_utf8(name).ok().and_then(|n| n.strip_prefix('f')) {
                Some(n) => 100 + n.parse::<u64>().unwrap_or(0),
                None => return reply.error(libc::ENOENT),
            },
        };
        // Attributes valid for 0 s: every stat asks the server again.
        reply.entry(&attr(ino), Duration::ZERO);
    }
    fn forget(&self, _ino: u64, _nlookup: u64) {}
    fn getattr(&self, _req: &RequestInfo, ino: u64, reply: ReplyAttr) {
        self.getattrs.lock().unwrap().push(ino);
        reply.attr(&attr(ino), Duration::ZERO);
    }
    fn readlink(&self, _req: &RequestInfo, _ino: u64, reply: ReplyData) {
        reply.error(libc::EINVAL);
    }
    fn open(&self, _req: &RequestInfo, _ino: u64, _flags: u32, reply: ReplyOpen) {
        reply.error(libc::ENOSYS);
    }
    fn read(&self, _: &RequestInfo, _: u64, _: u64, _: u64, _: u32, reply: ReplyData) {
        reply.data(&[]);
    }
    fn release(&self, _req: &RequestInfo, _ino: u64, _fh: u64, reply: ReplyEmpty) {
        reply.ok();
    }
    fn flush(&self, _req: &RequestInfo, _ino: u64, _fh: u64, reply: ReplyEmpty) {
        reply.error(libc::ENOSYS);
    }
    fn opendir(&self, _req: &RequestInfo, _ino: u64, _flags: u32, reply: ReplyOpen) {
        reply.error(libc::ENOSYS);
    }
    fn readdir(&self, _: &RequestInfo, _: u64, _: u64, _: u64, reply: ReplyDir) {
        reply.ok();
    }
    fn readdirplus(&self, _: &RequestInfo, _: u64, _: u64, _: u64, reply: ReplyDirPlus) {
        reply.ok();
    }
    fn statfs(&self, _req: &RequestInfo, _ino: u64, reply: ReplyStatfs) {
        reply.statfs(&wire::Statfs::default());
    }
    fn access(&self, _req: &RequestInfo, _ino: u64, _mask: u32, reply: ReplyEmpty) {
        reply.ok();
    }
    fn getxattr(&self, _: &RequestInfo, _: u64, _: &[u8], _: u32, reply: ReplyXattr) {
        reply.error(libc::ENODATA);
    }
    fn listxattr(&self, _req: &RequestInfo, _ino: u64, _size: u32, reply: ReplyXattr) {
        reply.size(0);
    }
    fn mutation(&self, _req: &RequestInfo, _op: &'static str, _ino: u64, reply: ReplyEmpty) {
        reply.error(libc::EROFS);
    }
}

/// Mounts a fresh FUSE connection read-only at `mnt` and returns its descriptor.
fn mount(mnt: &Path) -> OwnedFd {
    let dev = std::fs::OpenOptions::new().read(true).write(true).open("/dev/fuse").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&dev);
    let data = CString::new(format!("fd={fd},rootmode=40000,user_id=0,group_id=0")).unwrap();
    let target = CString::new(mnt.as_os_str().as_bytes()).unwrap();
    let (source, fstype) = (c"wire-test", c"fuse.wire-test");
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    assert_eq!(rc, 0, "mount: {}", std::io::Error::last_os_error());
    OwnedFd::from(dev)
}

fn detach(mnt: &Path) {
    let target = CString::new(mnt.as_os_str().as_bytes()).unwrap();
    // SAFETY: `target` is a NUL-terminated path that outlives the call.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_parked_connection_resumes_and_a_blocked_lookup_is_answered_by_the_successor() {
    let test = "a_parked_connection_resumes_and_a_blocked_lookup_is_answered_by_the_successor";
    if common::require(&["root", "/dev/fuse", "stat"], test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let dev = mount(&mnt);
    let first = Arc::new(Toy { holding: true, ..Toy::default() });
    let serving = wire::serve(dev, first.clone(), Start::Fresh, 2).unwrap();
    let params = serving.params();
    assert!(params.has_resend(), "this kernel (>= 6.10 expected) lacks FUSE_HAS_RESEND");
    assert_eq!(ConnParams::from_bytes(&params.to_bytes()).unwrap(), params);
    assert_eq!(std::fs::metadata(mnt.join("f1")).unwrap().ino(), 101);

    let mut reader = Command::new("stat")
        .args(["-c", "%i"])
        .arg(mnt.join("slow"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the lookup to reach the first server", || !first.held.lock().unwrap().is_empty());

    let (dev, parked) = serving.park(Duration::from_millis(100)).unwrap();
    assert_eq!(parked, params);
    // The first server's late answer is swallowed: the request belongs to the successor now.
    first.held.lock().unwrap().clear();
    assert!(reader.try_wait().unwrap().is_none(), "the lookup was answered before the switch");

    let second = Arc::new(Toy::default());
    let mut serving = wire::serve(dev, second.clone(), Start::Resume(parked), 2).unwrap();
    let out = reader.wait_with_output().unwrap();
    assert!(out.status.success(), "the blocked reader failed: {}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), SLOW_INO.to_string());
    let uniques = second.answered_slow.lock().unwrap().clone();
    assert_eq!(uniques.len(), 1, "one lookup of slow reached the successor: {uniques:?}");
    assert_ne!(uniques[0] & UNIQUE_RESEND, 0, "it was the re-sent request");

    // The kernel's inodes from before the switch keep working: GETATTR of 101 goes to the
    // successor, and new names get their numbers from it.
    assert_eq!(std::fs::metadata(mnt.join("f1")).unwrap().ino(), 101);
    assert!(second.getattrs.lock().unwrap().contains(&101), "the successor was asked");
    assert_eq!(std::fs::metadata(mnt.join("f2")).unwrap().ino(), 102);

    detach(&mnt);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), serving.ended()).await.unwrap().unwrap()
    });
}
