//! A cached regular file's bytes: a cache file of its own (`f<id>`), or a range of the entry's
//! `pack` file, where unpacking put the small files one after another.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::layout::PACK_FILE;
use super::unpack::file_name;
use crate::nix::nar::NodeId;

/// An open cached file: where its bytes are and how many there are.
#[derive(Debug)]
pub struct FileContents {
    file: File,
    /// Where the bytes start in `file`: 0 for a file of its own.
    start: u64,
    len: u64,
    own: bool,
}

impl FileContents {
    /// Opens regular file `id` of the entry in `dir`, `len` bytes long, at `packed` in the pack
    /// or else in a file of its own; never follows a symlink. `NotFound` once the entry is gone.
    pub fn open(dir: &Path, id: NodeId, len: u64, packed: Option<u64>) -> io::Result<Self> {
        let name = match packed {
            Some(_) => PACK_FILE.to_owned(),
            None => file_name(id),
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(dir.join(name))?;
        Ok(Self { file, start: packed.unwrap_or(0), len, own: packed.is_none() })
    }

    /// The cache file holding exactly these bytes, for kernel passthrough; None when they are
    /// a range of the pack.
    pub fn own_file(&self) -> Option<&File> {
        self.own.then_some(&self.file)
    }

    /// Reads up to `size` bytes at `offset` (less only at the end of the file); a cache file
    /// shorter than the manifest says is an error, never a short answer.
    pub fn read_at(&self, offset: u64, size: u64) -> io::Result<Vec<u8>> {
        let want = self.len.saturating_sub(offset).min(size);
        let mut buf = vec![0u8; usize::try_from(want).map_err(io::Error::other)?];
        self.read_exact_at(offset, &mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` from `offset`, which with `buf` must lie within the file; a cache file that
    /// ends early is an error.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read beyond the file's end"));
        }
        let mut filled = 0;
        while filled < buf.len() {
            match self.file.read_at(&mut buf[filled..], self.start + offset + filled as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("cache file ends {} bytes early", buf.len() - filled),
                    ));
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_an_own_file_and_a_range_of_the_pack() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f3"), b"hello").unwrap();
        std::fs::write(dir.path().join(PACK_FILE), b"aaabbbbcc").unwrap();
        let own = FileContents::open(dir.path(), 3, 5, None).unwrap();
        assert!(own.own_file().is_some());
        assert_eq!(own.read_at(1, 100).unwrap(), b"ello");
        let packed = FileContents::open(dir.path(), 4, 4, Some(3)).unwrap();
        assert!(packed.own_file().is_none(), "no passthrough for a range");
        assert_eq!(packed.read_at(0, 100).unwrap(), b"bbbb", "stops at its own end");
        assert_eq!(packed.read_at(2, 1).unwrap(), b"b");
        assert_eq!(packed.read_at(4, 10).unwrap(), b"");
        let mut past_its_end = [0u8; 2];
        let err = packed.read_exact_at(3, &mut past_its_end).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "never into the next packed file");
        let truncated = FileContents::open(dir.path(), 5, 4, Some(7)).unwrap();
        assert_eq!(truncated.read_at(0, 4).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let gone = FileContents::open(dir.path(), 9, 1, None).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
    }
}
