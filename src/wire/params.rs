//! `ConnParams`: what INIT settled for a connection, and its fixed-size byte form, so a successor
//! daemon can resume the connection without an INIT (the kernel sends INIT once).

use super::WireError;
use super::abi::init;

/// Negotiated connection parameters, needed to resume a connection without INIT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnParams {
    /// Protocol major version.
    pub major: u32,
    /// Protocol minor version (the lower of the kernel's and ours).
    pub minor: u32,
    /// Granted INIT flags, `flags2` in the high 32 bits.
    pub flags: u64,
    /// Largest WRITE.
    pub max_write: u32,
    /// Readahead limit.
    pub max_readahead: u32,
}

/// Magic of the byte form.
const MAGIC: [u8; 4] = *b"SFCP";
/// Version of the byte form; bump it when the layout changes.
const VERSION: u32 = 1;
/// Size of the byte form: magic, version, major, minor, flags, max_write, max_readahead.
const SIZE: usize = 4 + 4 + 4 + 4 + 8 + 4 + 4;

impl ConnParams {
    /// The versioned, little-endian, fixed-size byte form.
    #[allow(clippy::wrong_self_convention)] // `&self`: the handover is coded against it
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SIZE);
        out.extend_from_slice(&MAGIC);
        for v in [VERSION, self.major, self.minor] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.flags.to_le_bytes());
        for v in [self.max_write, self.max_readahead] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Reads `to_bytes`'s form; refuses another size, magic or version.
    pub fn from_bytes(b: &[u8]) -> Result<Self, WireError> {
        if b.len() != SIZE {
            return Err(WireError::Short { want: SIZE, got: b.len() });
        }
        let u32_at = |at: usize| {
            let mut a = [0; 4];
            a.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(a)
        };
        if b[..4] != MAGIC {
            return Err(WireError::Malformed("connection parameters magic"));
        }
        if u32_at(4) != VERSION {
            return Err(WireError::Version(u32_at(4), VERSION));
        }
        let mut flags = [0; 8];
        flags.copy_from_slice(&b[16..24]);
        Ok(ConnParams {
            major: u32_at(8),
            minor: u32_at(12),
            flags: u64::from_le_bytes(flags),
            max_write: u32_at(24),
            max_readahead: u32_at(28),
        })
    }

    /// Whether the kernel re-sends unanswered requests on `FUSE_NOTIFY_RESEND`.
    pub fn has_resend(&self) -> bool {
        self.flags & init::HAS_RESEND != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> ConnParams {
        ConnParams {
            major: 7,
            minor: 40,
            flags: init::HAS_RESEND | init::PARALLEL_DIROPS,
            max_write: 1 << 20,
            max_readahead: 1 << 20,
        }
    }

    #[test]
    fn round_trips_and_is_little_endian() {
        let bytes = params().to_bytes();
        assert_eq!(bytes.len(), SIZE);
        assert_eq!(&bytes[8..12], &[7, 0, 0, 0]);
        assert_eq!(ConnParams::from_bytes(&bytes).unwrap(), params());
        assert!(params().has_resend());
        assert!(!ConnParams { flags: 0, ..params() }.has_resend());
    }

    #[test]
    fn refuses_other_sizes_magics_and_versions() {
        let bytes = params().to_bytes();
        assert!(ConnParams::from_bytes(&bytes[..SIZE - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ConnParams::from_bytes(&longer).is_err());
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(ConnParams::from_bytes(&magic).is_err());
        let mut version = bytes;
        version[4] = 2;
        assert_eq!(ConnParams::from_bytes(&version), Err(WireError::Version(2, 1)));
    }
}
