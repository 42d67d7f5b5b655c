//! One kernel request, parsed: the header (unique, opcode, nodeid, uid, gid, pid) and the typed
//! operation. Names are copied out, so the read buffer can take the next request at once.

use super::WireError;
use super::abi::{Fields, InHeader, InitIn, op};

/// Who asked, and the request's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// The request's id as received (with `UNIQUE_RESEND` if the kernel re-sent it).
    pub unique: u64,
    /// Caller's uid.
    pub uid: u32,
    /// Caller's gid.
    pub gid: u32,
    /// Caller's pid.
    pub pid: u32,
}

/// What the kernel asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Start of the connection.
    Init(InitIn),
    /// End of the connection.
    Destroy,
    /// Look up `name` in the directory.
    Lookup {
        /// The name.
        name: Vec<u8>,
    },
    /// The kernel drops `nlookup` references to `(nodeid, nlookup)` pairs (FORGET and
    /// BATCH_FORGET). No reply.
    Forget(Vec<(u64, u64)>),
    /// Attributes.
    Getattr,
    /// A symlink's target.
    Readlink,
    /// Open a file.
    Open {
        /// open(2) flags.
        flags: u32,
    },
    /// Read file data.
    Read {
        /// Handle from OPEN (0 without one).
        fh: u64,
        /// Offset.
        offset: u64,
        /// Bytes wanted.
        size: u32,
    },
    /// Last close of a handle.
    Release {
        /// The handle.
        fh: u64,
    },
    /// A close(2).
    Flush {
        /// The handle.
        fh: u64,
    },
    /// Open a directory.
    Opendir {
        /// open(2) flags.
        flags: u32,
    },
    /// List a directory.
    Readdir {
        /// The handle.
        fh: u64,
        /// Where to continue.
        offset: u64,
        /// Reply buffer size.
        size: u32,
    },
    /// List a directory with attributes.
    Readdirplus {
        /// The handle.
        fh: u64,
        /// Where to continue.
        offset: u64,
        /// Reply buffer size.
        size: u32,
    },
    /// Close a directory handle.
    Releasedir {
        /// The handle.
        fh: u64,
    },
    /// Filesystem totals.
    Statfs,
    /// access(2).
    Access {
        /// R_OK, W_OK, X_OK bits.
        mask: u32,
    },
    /// Read an extended attribute.
    Getxattr {
        /// Its name.
        name: Vec<u8>,
        /// Buffer size (0: the size is asked).
        size: u32,
    },
    /// List extended attributes.
    Listxattr {
        /// Buffer size (0: the size is asked).
        size: u32,
    },
    /// Interrupt the request with this unique.
    Interrupt {
        /// The request to interrupt.
        unique: u64,
    },
    /// Anything that changes the store (named for the log).
    Mutation(&'static str),
    /// An opcode we do not implement.
    Unsupported,
}

/// A parsed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The header.
    pub header: InHeader,
    /// The operation.
    pub op: Operation,
}

impl Request {
    /// Who asked.
    pub fn info(&self) -> RequestInfo {
        let h = &self.header;
        RequestInfo { unique: h.unique, uid: h.uid, gid: h.gid, pid: h.pid }
    }

    /// Parses one request read from /dev/fuse. A header that does not fit is `Err` (the request
    /// cannot be answered); a length that disagrees with the bytes read, or a body that is short
    /// or malformed, gives `Ok` with the header and `Err` inside, so it can be answered EIO.
    pub fn parse(bytes: &[u8]) -> Result<(InHeader, Result<Operation, WireError>), WireError> {
        let mut f = Fields::new(bytes);
        let header = InHeader::parse(&mut f)?;
        if header.len as usize != bytes.len() {
            return Ok((header, Err(WireError::Malformed("request length"))));
        }
        Ok((header, operation(&header, &mut f)))
    }
}

fn operation(header: &InHeader, f: &mut Fields<'_>) -> Result<Operation, WireError> {
    let opcode = header.opcode;
    Ok(match opcode {
        op::INIT => Operation::Init(InitIn::parse(f)?),
        op::DESTROY => Operation::Destroy,
        op::LOOKUP => Operation::Lookup { name: f.name()?.to_vec() },
        op::FORGET => Operation::Forget(vec![(header.nodeid, f.u64()?)]),
        op::BATCH_FORGET => {
            let count = f.u32()?;
            f.u32()?;
            let mut items = Vec::new();
            for _ in 0..count {
                items.push((f.u64()?, f.u64()?));
            }
            Operation::Forget(items)
        }
        op::GETATTR => Operation::Getattr,
        op::READLINK => Operation::Readlink,
        op::OPEN => Operation::Open { flags: f.u32()? },
        op::OPENDIR => Operation::Opendir { flags: f.u32()? },
        op::READ | op::READDIR | op::READDIRPLUS => {
            let (fh, offset, size) = (f.u64()?, f.u64()?, f.u32()?);
            match opcode {
                op::READ => Operation::Read { fh, offset, size },
                op::READDIR => Operation::Readdir { fh, offset, size },
                _ => Operation::Readdirplus { fh, offset, size },
            }
        }
        op::RELEASE => Operation::Release { fh: f.u64()? },
        op::RELEASEDIR => Operation::Releasedir { fh: f.u64()? },
        op::FLUSH => Operation::Flush { fh: f.u64()? },
        op::STATFS => Operation::Statfs,
        op::ACCESS => Operation::Access { mask: f.u32()? },
        op::GETXATTR => {
            let size = f.u32()?;
            f.u32()?;
            Operation::Getxattr { size, name: f.name()?.to_vec() }
        }
        op::LISTXATTR => Operation::Listxattr { size: f.u32()? },
        op::INTERRUPT => Operation::Interrupt { unique: f.u64()? },
        other => match mutation_name(other) {
            Some(name) => Operation::Mutation(name),
            None => Operation::Unsupported,
        },
    })
}

/// The name of a request that would change the store.
fn mutation_name(opcode: u32) -> Option<&'static str> {
    Some(match opcode {
        op::SETATTR => "setattr",
        op::SYMLINK => "symlink",
        op::MKNOD => "mknod",
        op::MKDIR => "mkdir",
        op::UNLINK => "unlink",
        op::RMDIR => "rmdir",
        op::RENAME | op::RENAME2 => "rename",
        op::LINK => "link",
        op::WRITE => "write",
        op::SETXATTR => "setxattr",
        op::REMOVEXATTR => "removexattr",
        op::CREATE => "create",
        op::FALLOCATE => "fallocate",
        op::TMPFILE => "tmpfile",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::abi::{IN_HEADER_SIZE, put32, put64};

    fn request(opcode: u32, body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        let header = InHeader {
            len: (IN_HEADER_SIZE + body.len()) as u32,
            opcode,
            unique: 10,
            nodeid: 1,
            uid: 1000,
            gid: 100,
            pid: 7,
            total_extlen: 0,
        };
        header.write(&mut bytes);
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn parses_the_operations_we_serve() {
        let (h, got) = Request::parse(&request(op::LOOKUP, b"hello\0")).unwrap();
        assert_eq!((h.unique, h.uid, h.pid), (10, 1000, 7));
        assert_eq!(got.unwrap(), Operation::Lookup { name: b"hello".to_vec() });
        let mut read = Vec::new();
        for v in [3u64, 4096] {
            put64(&mut read, v);
        }
        put32(&mut read, 65536);
        read.resize(40, 0);
        let (_, got) = Request::parse(&request(op::READ, &read)).unwrap();
        assert_eq!(got.unwrap(), Operation::Read { fh: 3, offset: 4096, size: 65536 });
        let mut batch = Vec::new();
        put32(&mut batch, 2);
        put32(&mut batch, 0);
        for v in [5u64, 1, 6, 2] {
            put64(&mut batch, v);
        }
        let (_, got) = Request::parse(&request(op::BATCH_FORGET, &batch)).unwrap();
        assert_eq!(got.unwrap(), Operation::Forget(vec![(5, 1), (6, 2)]));
        let (_, got) = Request::parse(&request(op::MKDIR, b"")).unwrap();
        assert_eq!(got.unwrap(), Operation::Mutation("mkdir"));
        let (_, got) = Request::parse(&request(9999, b"")).unwrap();
        assert_eq!(got.unwrap(), Operation::Unsupported);
    }

    #[test]
    fn short_or_malformed_requests_are_errors_never_panics() {
        for opcode in 0..60 {
            let full = request(opcode, &[0xff; 64]);
            for cut in 0..full.len() {
                let mut bytes = full[..cut].to_vec();
                if bytes.len() >= 4 {
                    bytes[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
                }
                let _ = Request::parse(&bytes);
            }
        }
        let (_, unterminated) = Request::parse(&request(op::LOOKUP, b"abc")).unwrap();
        assert!(unterminated.is_err());
        let (_, short) =
            Request::parse(&request(op::BATCH_FORGET, &[1, 0, 0, 0, 0, 0, 0, 0])).unwrap();
        assert!(short.is_err(), "a count larger than the body");
        let mut lying = request(op::GETATTR, b"");
        lying[0..4].copy_from_slice(&100u32.to_ne_bytes());
        let (h, got) = Request::parse(&lying).unwrap();
        assert!(got.is_err() && h.unique == 10, "a length disagreeing with the read is EIO");
        assert!(Request::parse(&lying[..39]).is_err(), "no header: nothing to answer");
    }
}
