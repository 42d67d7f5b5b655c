//! The FUSE kernel ABI we use, transcribed from linux/fuse.h (protocol 7.4x): opcodes, flags,
//! and the request and reply structs, read from and written to byte slices with explicit bounds
//! checks (no pointer casts of kernel-supplied lengths). Native byte order, as the kernel uses.

use super::WireError;

/// The protocol major version we speak.
pub const KERNEL_VERSION: u32 = 7;
/// The highest minor version we speak (7.40: passthrough and FUSE_NOTIFY_RESEND).
pub const KERNEL_MINOR_VERSION: u32 = 40;
/// The kernel refuses a read buffer smaller than this.
pub const MIN_READ_BUFFER: usize = 8192;

/// Opcodes (`enum fuse_opcode`).
pub mod op {
    #![allow(missing_docs)]
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const DESTROY: u32 = 38;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const TMPFILE: u32 = 51;
}

/// INIT flags (`flags`, and `flags2` shifted into the high 32 bits).
pub mod init {
    #![allow(missing_docs)]
    pub const ASYNC_READ: u64 = 1 << 0;
    pub const BIG_WRITES: u64 = 1 << 5;
    pub const AUTO_INVAL_DATA: u64 = 1 << 12;
    pub const DO_READDIRPLUS: u64 = 1 << 13;
    pub const NO_OPEN_SUPPORT: u64 = 1 << 17;
    pub const PARALLEL_DIROPS: u64 = 1 << 18;
    pub const MAX_PAGES: u64 = 1 << 22;
    pub const CACHE_SYMLINKS: u64 = 1 << 23;
    pub const NO_OPENDIR_SUPPORT: u64 = 1 << 24;
    pub const INIT_EXT: u64 = 1 << 30;
    pub const PASSTHROUGH: u64 = 1 << 37;
    pub const HAS_RESEND: u64 = 1 << 39;
}

/// `fuse_open_out.open_flags`.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// Do not flush the data cache on close.
pub const FOPEN_NOFLUSH: u32 = 1 << 5;
/// Reads and writes go to the backing file.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// Bit 63 of `unique`: the kernel re-sent this request after `FUSE_NOTIFY_RESEND`.
pub const UNIQUE_RESEND: u64 = 1 << 63;
/// Notification code: re-send every request read but not answered (7.40).
pub const NOTIFY_RESEND: i32 = 7;

/// `_IOW(229, 1, struct fuse_backing_map)`: register a backing file, returns its id.
pub const DEV_IOC_BACKING_OPEN: libc::c_ulong = ioc_write(1, BACKING_MAP_SIZE);
/// `_IOW(229, 2, uint32_t)`: drop a backing id.
pub const DEV_IOC_BACKING_CLOSE: libc::c_ulong = ioc_write(2, 4);
/// `FUSE_DEV_IOC_MAGIC`.
const DEV_IOC_MAGIC: libc::c_ulong = 229;
/// `sizeof(struct fuse_backing_map)`: fd i32, flags u32, padding u64.
pub const BACKING_MAP_SIZE: usize = 16;

const fn ioc_write(nr: libc::c_ulong, size: usize) -> libc::c_ulong {
    (1 << 30) | ((size as libc::c_ulong) << 16) | (DEV_IOC_MAGIC << 8) | nr
}

/// `sizeof(struct fuse_in_header)`.
#[cfg(test)]
pub const IN_HEADER_SIZE: usize = 40;
/// `sizeof(struct fuse_out_header)`.
pub const OUT_HEADER_SIZE: usize = 16;
/// `sizeof(struct fuse_attr)`.
pub const ATTR_SIZE: usize = 88;
/// `sizeof(struct fuse_entry_out)`.
pub const ENTRY_OUT_SIZE: usize = 40 + ATTR_SIZE;
/// `sizeof(struct fuse_dirent)` without its name.
pub const DIRENT_SIZE: usize = 24;
/// `sizeof(struct fuse_init_out)`.
pub const INIT_OUT_SIZE: usize = 64;

/// Reads native-endian fields from a kernel buffer; running out is an error, never a panic.
#[derive(Debug)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Fields of `bytes`, from its start.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The next `n` bytes.
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(WireError::Short { want: n, got: self.rest.len() });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// The next u16.
    pub fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.bytes(2)?;
        Ok(u16::from_ne_bytes([b[0], b[1]]))
    }

    /// The next u32.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let mut a = [0; 4];
        a.copy_from_slice(self.bytes(4)?);
        Ok(u32::from_ne_bytes(a))
    }

    /// The next u64.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.bytes(8)?);
        Ok(u64::from_ne_bytes(a))
    }

    /// What is left.
    #[cfg(test)]
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }

    /// A NUL-terminated name: the bytes before the first NUL (all of them if there is none).
    pub fn name(&mut self) -> Result<&'a [u8], WireError> {
        let rest = self.rest;
        let end = rest.iter().position(|&b| b == 0).ok_or(WireError::Malformed("name"))?;
        self.rest = &rest[end + 1..];
        Ok(&rest[..end])
    }
}

/// `struct fuse_in_header`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InHeader {
    /// Length of the request including this header.
    pub len: u32,
    /// What is asked.
    pub opcode: u32,
    /// The request's id; its reply echoes it.
    pub unique: u64,
    /// The inode the request is about.
    pub nodeid: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
    /// Length of extensions after the arguments, in 8-byte units.
    pub total_extlen: u16,
}

impl InHeader {
    /// Parses the header at the start of `bytes`.
    pub fn parse(f: &mut Fields<'_>) -> Result<Self, WireError> {
        let h = InHeader {
            len: f.u32()?,
            opcode: f.u32()?,
            unique: f.u64()?,
            nodeid: f.u64()?,
            uid: f.u32()?,
            gid: f.u32()?,
            pid: f.u32()?,
            total_extlen: f.u16()?,
        };
        f.u16()?;
        Ok(h)
    }

    /// Writes it (tests build requests with this).
    #[cfg(test)]
    pub fn write(&self, out: &mut Vec<u8>) {
        put32(out, self.len);
        put32(out, self.opcode);
        put64(out, self.unique);
        put64(out, self.nodeid);
        put32(out, self.uid);
        put32(out, self.gid);
        put32(out, self.pid);
        out.extend_from_slice(&self.total_extlen.to_ne_bytes());
        out.extend_from_slice(&[0, 0]);
    }
}

/// `struct fuse_out_header` as bytes.
pub fn out_header(len: u32, error: i32, unique: u64) -> [u8; OUT_HEADER_SIZE] {
    let mut h = [0; OUT_HEADER_SIZE];
    h[0..4].copy_from_slice(&len.to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..16].copy_from_slice(&unique.to_ne_bytes());
    h
}

/// Appends a native-endian u16.
pub fn put16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Appends a native-endian u32.
pub fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// Appends a native-endian u64.
pub fn put64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_ne_bytes());
}

/// `struct fuse_init_in` (the fields we read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitIn {
    /// Kernel's major version.
    pub major: u32,
    /// Kernel's minor version.
    pub minor: u32,
    /// Kernel's readahead limit.
    pub max_readahead: u32,
    /// Offered flags, `flags2` in the high bits when `INIT_EXT` is offered.
    pub flags: u64,
}

impl InitIn {
    /// Parses INIT's argument; kernels before 7.36 send no `flags2`.
    pub fn parse(f: &mut Fields<'_>) -> Result<Self, WireError> {
        let (major, minor, max_readahead) = (f.u32()?, f.u32()?, f.u32()?);
        let mut flags = u64::from(f.u32()?);
        if flags & init::INIT_EXT != 0 {
            flags |= u64::from(f.u32().unwrap_or(0)) << 32;
        }
        Ok(InitIn { major, minor, max_readahead, flags })
    }
}

/// `struct fuse_init_out`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitOut {
    /// Our major version.
    pub major: u32,
    /// Our minor version.
    pub minor: u32,
    /// Readahead limit.
    pub max_readahead: u32,
    /// Granted flags (the high 32 bits go to `flags2`).
    pub flags: u64,
    /// Background requests in flight.
    pub max_background: u16,
    /// Congestion threshold (0: the kernel's default).
    pub congestion_threshold: u16,
    /// Largest WRITE.
    pub max_write: u32,
    /// Timestamp granularity in ns.
    pub time_gran: u32,
    /// Largest request in pages.
    pub max_pages: u16,
    /// Passthrough stacking depth.
    pub max_stack_depth: u32,
}

impl InitOut {
    /// Its bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(INIT_OUT_SIZE);
        put32(&mut out, self.major);
        put32(&mut out, self.minor);
        put32(&mut out, self.max_readahead);
        put32(&mut out, self.flags as u32);
        put16(&mut out, self.max_background);
        put16(&mut out, self.congestion_threshold);
        put32(&mut out, self.max_write);
        put32(&mut out, self.time_gran);
        put16(&mut out, self.max_pages);
        put16(&mut out, 0); // map_alignment
        put32(&mut out, (self.flags >> 32) as u32);
        put32(&mut out, self.max_stack_depth);
        out.resize(INIT_OUT_SIZE, 0);
        out
    }
}

/// `struct fuse_attr`, the attributes of one inode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileAttr {
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    /// Seconds and nanoseconds of atime, mtime and ctime (all the same here).
    pub time: (u64, u32),
    /// Type and permission bits (`S_IFDIR | 0o555`, ...).
    pub mode: u32,
    /// Hard links.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Preferred I/O size.
    pub blksize: u32,
}

impl FileAttr {
    /// Appends it.
    pub fn write(&self, out: &mut Vec<u8>) {
        let (secs, nsecs) = self.time;
        for v in [self.ino, self.size, self.blocks, secs, secs, secs] {
            put64(out, v);
        }
        for v in [nsecs, nsecs, nsecs, self.mode, self.nlink, self.uid, self.gid, 0] {
            put32(out, v);
        }
        put32(out, self.blksize);
        put32(out, 0); // flags
    }

    /// The `d_type` of a directory entry for this inode.
    pub fn dirent_type(&self) -> u32 {
        (self.mode & libc::S_IFMT) >> 12
    }
}

/// A validity as `fuse_*_out` carries it: seconds and nanoseconds.
pub fn valid(ttl: std::time::Duration) -> (u64, u32) {
    (ttl.as_secs(), ttl.subsec_nanos())
}

/// `struct fuse_entry_out` as bytes: a looked-up name.
pub fn entry_out(attr: &FileAttr, ttl: std::time::Duration, out: &mut Vec<u8>) {
    let (secs, nsecs) = valid(ttl);
    put64(out, attr.ino); // nodeid
    put64(out, 0); // generation
    put64(out, secs); // entry_valid
    put64(out, secs); // attr_valid
    put32(out, nsecs);
    put32(out, nsecs);
    attr.write(out);
}

/// `struct fuse_attr_out` as bytes.
pub fn attr_out(attr: &FileAttr, ttl: std::time::Duration) -> Vec<u8> {
    let (secs, nsecs) = valid(ttl);
    let mut out = Vec::with_capacity(16 + ATTR_SIZE);
    put64(&mut out, secs);
    put32(&mut out, nsecs);
    put32(&mut out, 0);
    attr.write(&mut out);
    out
}

/// `struct fuse_open_out` as bytes.
pub fn open_out(fh: u64, open_flags: u32, backing_id: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(16);
    put64(&mut out, fh);
    put32(&mut out, open_flags);
    out.extend_from_slice(&backing_id.to_ne_bytes());
    out
}

/// `struct fuse_kstatfs` (the whole `fuse_statfs_out`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Statfs {
    /// Total blocks.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to users.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
    /// Block size.
    pub bsize: u32,
    /// Longest name.
    pub namelen: u32,
    /// Fragment size.
    pub frsize: u32,
}

impl Statfs {
    /// Its bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        let mut out = Vec::with_capacity(80);
        for v in [self.blocks, self.bfree, self.bavail, self.files, self.ffree] {
            put64(&mut out, v);
        }
        for v in [self.bsize, self.namelen, self.frsize] {
            put32(&mut out, v);
        }
        out.resize(80, 0);
        out
    }
}

/// `struct fuse_dirent` with its name, padded to 8 bytes.
pub fn dirent(ino: u64, off: u64, typ: u32, name: &[u8], out: &mut Vec<u8>) {
    put64(out, ino);
    put64(out, off);
    put32(out, name.len() as u32);
    put32(out, typ);
    out.extend_from_slice(name);
    out.resize(out.len().next_multiple_of(8), 0);
}

/// Bytes a dirent of `name` takes, padding included.
pub fn dirent_size(name: &[u8]) -> usize {
    (DIRENT_SIZE + name.len()).next_multiple_of(8)
}

/// `struct fuse_backing_map` for `fd`.
pub fn backing_map(fd: i32) -> [u8; BACKING_MAP_SIZE] {
    let mut m = [0; BACKING_MAP_SIZE];
    m[0..4].copy_from_slice(&fd.to_ne_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi_header() {
        assert_eq!(DEV_IOC_BACKING_OPEN, 0x4010_e501);
        assert_eq!(DEV_IOC_BACKING_CLOSE, 0x4004_e502);
    }

    #[test]
    fn short_fields_are_errors_not_panics() {
        let mut f = Fields::new(&[1, 2, 3]);
        assert!(f.u32().is_err());
        assert_eq!(f.u16().unwrap(), u16::from_ne_bytes([1, 2]));
        assert!(f.u16().is_err());
        assert!(f.u64().is_err());
        let mut unterminated = Fields::new(b"abc");
        assert!(unterminated.name().is_err());
        let mut named = Fields::new(b"abc\0rest");
        assert_eq!(named.name().unwrap(), b"abc");
        assert_eq!(named.rest(), b"rest");
    }

    #[test]
    fn headers_round_trip() {
        let h = InHeader {
            len: 40,
            opcode: op::LOOKUP,
            unique: UNIQUE_RESEND | 8,
            nodeid: 1,
            uid: 1000,
            gid: 100,
            pid: 42,
            total_extlen: 0,
        };
        let mut bytes = Vec::new();
        h.write(&mut bytes);
        assert_eq!(bytes.len(), IN_HEADER_SIZE);
        assert_eq!(InHeader::parse(&mut Fields::new(&bytes)).unwrap(), h);
        for cut in 0..IN_HEADER_SIZE {
            assert!(InHeader::parse(&mut Fields::new(&bytes[..cut])).is_err(), "{cut}");
        }
    }

    #[test]
    fn init_out_puts_flags2_at_its_offset() {
        let out = InitOut { flags: init::PASSTHROUGH | init::ASYNC_READ, ..InitOut::default() };
        let bytes = out.to_bytes();
        assert_eq!(bytes.len(), INIT_OUT_SIZE);
        assert_eq!(&bytes[12..16], &1u32.to_ne_bytes());
        assert_eq!(&bytes[32..36], &(1u32 << 5).to_ne_bytes());
    }

    #[test]
    fn init_in_reads_flags2_only_with_init_ext() {
        let mut bytes = Vec::new();
        for v in [7, 44, 131072, (init::INIT_EXT | init::ASYNC_READ) as u32, 1 << 7] {
            put32(&mut bytes, v);
        }
        let got = InitIn::parse(&mut Fields::new(&bytes)).unwrap();
        assert_eq!(got.flags, init::INIT_EXT | init::ASYNC_READ | init::HAS_RESEND);
        bytes[12..16].copy_from_slice(&1u32.to_ne_bytes());
        let got = InitIn::parse(&mut Fields::new(&bytes)).unwrap();
        assert_eq!(got.flags, init::ASYNC_READ);
        assert!(InitIn::parse(&mut Fields::new(&bytes[..12])).is_err());
    }

    #[test]
    fn entries_and_dirents_have_the_kernel_sizes() {
        let attr = FileAttr { ino: 5, mode: libc::S_IFDIR | 0o555, ..FileAttr::default() };
        let mut out = Vec::new();
        entry_out(&attr, std::time::Duration::from_millis(1500), &mut out);
        assert_eq!(out.len(), ENTRY_OUT_SIZE);
        assert_eq!(&out[32..36], &500_000_000u32.to_ne_bytes());
        assert_eq!(attr_out(&attr, std::time::Duration::ZERO).len(), 16 + ATTR_SIZE);
        assert_eq!(attr.dirent_type(), u32::from(libc::DT_DIR));
        let mut d = Vec::new();
        dirent(5, 1, attr.dirent_type(), b"abc", &mut d);
        assert_eq!(d.len(), 32);
        assert_eq!(d.len(), dirent_size(b"abc"));
        assert_eq!(Statfs::default().to_bytes().len(), 80);
        assert_eq!(open_out(1, FOPEN_KEEP_CACHE, 3).len(), 16);
    }
}
