//! Which kind of filesystem holds the cache directory (reliability case DSK-10). storefs wants a
//! local one: its lock (`flock`), the `syncfs` that makes an entry durable before its rename, and
//! the kernel's page cache over cached files are not dependable over NFS, SMB and the like, so a
//! cache there is warned about at start. Case folding needs no check: no name from a NAR ever
//! becomes a name on the cache filesystem (see `fs/nar_data_tests.rs`).

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The name of a network or remote filesystem whose `statfs` magic is `magic`; None for the
/// others (local, or unknown).
pub fn remote_kind(magic: i64) -> Option<&'static str> {
    Some(match magic {
        0x6969 => "nfs",
        0x517B => "smb",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x0102_1997 => "9p",
        0x00C3_6400 => "ceph",
        0x5346_414F => "afs",
        0x7375_7245 => "coda",
        0x0BD0_0BD0 => "lustre",
        0x0116_1970 => "gfs2",
        0x7461_636F => "ocfs2",
        // sshfs, s3fs, gcsfuse: remote more often than not.
        0x6573_5546 => "fuse",
        _ => return None,
    })
}

/// The remote kind of the filesystem holding `path` (`remote_kind`), read by `statfs`.
pub fn remote_kind_of(path: &Path) -> io::Result<Option<&'static str>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: statfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a statfs to fill.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast, reason = "f_type is i64 on some targets, u32 on others")]
    Ok(remote_kind(st.f_type as i64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_filesystems_are_named_and_local_ones_are_not() {
        assert_eq!(remote_kind(0x6969), Some("nfs"));
        assert_eq!(remote_kind(0xFF53_4D42), Some("cifs"));
        assert_eq!(remote_kind(0x6573_5546), Some("fuse"));
        for local in [0xEF53, 0x0102_1994, 0x5846_5342, 0x9123_683E] {
            assert_eq!(remote_kind(local), None, "ext4, tmpfs, xfs, btrfs: {local:#x}");
        }
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(remote_kind_of(dir.path()).unwrap(), None, "the test's own temp dir");
        assert!(remote_kind_of(&dir.path().join("missing")).is_err());
    }
}
