//! A cached regular file's bytes: a cache file of its own (`f<id>`), or a range of the entry's
//! `pack` file, where unpacking put the small files one after another.
//!
//! Bytes read from disk are checked before anyone sees them: a read covering any part of a
//! `CHECK_BLOCK_BYTES` block reads the whole block and compares its checksum with the manifest's
//! (entries of manifest version 3 on; older ones have none and are read unchecked). A block that
//! does not match, a cache file that ends early, is missing or was replaced by a symlink, a
//! directory or a FIFO, or that the disk cannot read back (`EIO`) is *damage* (`is_damage`): the reader's caller sets the entry aside and fetches the
//! path again, never serving the bytes found.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::layout::PACK_FILE;
use super::manifest::{BlockSums, CHECK_BLOCK_BYTES, block_sum};
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
    /// The checksum of each block, when the manifest recorded them.
    sums: Option<BlockSums>,
}

/// How many blocks `check_all` reads at once.
const CHECK_ALL_BLOCKS: u64 = 16;

/// True when `err`, from opening or reading a cached file, means the cache's copy is damaged
/// (set it aside and fetch the path again) rather than that the system failed (out of
/// descriptors or memory): missing (`NotFound`), a symlink in its place (`ELOOP`, opened with
/// `O_NOFOLLOW`), a directory, FIFO or socket in its place (`EISDIR`, `ESPIPE`: opened
/// non-blocking, so a FIFO never holds the reader), shorter than the manifest says (`UnexpectedEof`), a
/// block that does not match its checksum (`InvalidData`), or a disk that cannot read it back
/// (`EIO`: the fresh copy goes to other blocks; if it fails too, the reader gets `EIO`).
pub fn is_damage(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
    ) || matches!(err.raw_os_error(), Some(libc::ELOOP | libc::EISDIR | libc::ESPIPE | libc::EIO))
}

impl FileContents {
    /// Opens regular file `id` of the entry in `dir`, `len` bytes long, at `packed` in the pack
    /// or else in a file of its own; never follows a symlink. `NotFound` once the entry is gone.
    /// With `sums` (one per block), every read is checked against them.
    pub fn open(
        dir: &Path,
        id: NodeId,
        len: u64,
        packed: Option<u64>,
        sums: Option<BlockSums>,
    ) -> io::Result<Self> {
        let name = match packed {
            Some(_) => PACK_FILE.to_owned(),
            None => file_name(id),
        };
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
            .open(dir.join(name))?;
        Ok(Self { file, start: packed.unwrap_or(0), len, own: packed.is_none(), sums })
    }

    /// True when reads are checked against block checksums.
    pub fn is_checked(&self) -> bool {
        self.sums.is_some()
    }

    /// The cache file holding exactly these bytes, for kernel passthrough; None when they are
    /// a range of the pack.
    pub fn own_file(&self) -> Option<&File> {
        self.own.then_some(&self.file)
    }

    /// Reads up to `size` bytes at `offset` (less only at the end of the file), checked against
    /// the block checksums if there are any; a cache file shorter than the manifest says is an
    /// error, never a short answer, and so is a block that does not match (`is_damage`).
    pub fn read_at(&self, offset: u64, size: u64) -> io::Result<Vec<u8>> {
        let want = self.len.saturating_sub(offset).min(size);
        if self.sums.is_none() || want == 0 {
            let mut buf = vec![0u8; usize::try_from(want).map_err(io::Error::other)?];
            self.read_exact_at(offset, &mut buf)?;
            return Ok(buf);
        }
        // Whole blocks: from the start of the first one touched to the end of the last one.
        let first = offset / CHECK_BLOCK_BYTES;
        let last = (offset + want - 1) / CHECK_BLOCK_BYTES;
        let mut buf = self.read_blocks(first, last + 1 - first)?;
        let skip = usize::try_from(offset - first * CHECK_BLOCK_BYTES).map_err(io::Error::other)?;
        if skip > 0 {
            buf.drain(..skip);
        }
        buf.truncate(usize::try_from(want).map_err(io::Error::other)?);
        Ok(buf)
    }

    /// Reads and checks every block of the file (for a file handed to the kernel whole).
    pub fn check_all(&self) -> io::Result<()> {
        let blocks = self.len.div_ceil(CHECK_BLOCK_BYTES);
        let mut first = 0;
        while first < blocks {
            let n = CHECK_ALL_BLOCKS.min(blocks - first);
            self.read_blocks(first, n)?;
            first += n;
        }
        Ok(())
    }

    /// Reads `n` blocks from block `first` (the last one of the file may be short) and checks
    /// each against its checksum, if there are any.
    fn read_blocks(&self, first: u64, n: u64) -> io::Result<Vec<u8>> {
        let start = first.saturating_mul(CHECK_BLOCK_BYTES).min(self.len);
        let end = first.saturating_add(n).saturating_mul(CHECK_BLOCK_BYTES).min(self.len);
        let mut buf = vec![0u8; usize::try_from(end - start).map_err(io::Error::other)?];
        self.read_exact_at(start, &mut buf)?;
        let Some(sums) = &self.sums else { return Ok(buf) };
        for (i, block) in (first..).zip(buf.chunks(CHECK_BLOCK_BYTES as usize)) {
            let expected = usize::try_from(i).ok().and_then(|i| sums.get(i));
            if expected != Some(&block_sum(block)) {
                let at = i * CHECK_BLOCK_BYTES;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "block {i} (bytes {at}..{}) does not match its checksum",
                        at + block.len() as u64
                    ),
                ));
            }
        }
        Ok(buf)
    }

    /// Fills `buf` from `offset`, which with `buf` must lie within the file; a cache file that
    /// ends early is an error. Unchecked against the block checksums: for `verify`, which hashes
    /// the whole NAR instead (readers use `read_at`).
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        if offset.saturating_add(buf.len() as u64) > self.len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "read beyond the file's end"));
        }
        crate::failpoint::io("contents::read")?;
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
        let own = FileContents::open(dir.path(), 3, 5, None, None).unwrap();
        assert!(own.own_file().is_some());
        assert_eq!(own.read_at(1, 100).unwrap(), b"ello");
        let packed = FileContents::open(dir.path(), 4, 4, Some(3), None).unwrap();
        assert!(packed.own_file().is_none(), "no passthrough for a range");
        assert_eq!(packed.read_at(0, 100).unwrap(), b"bbbb", "stops at its own end");
        assert_eq!(packed.read_at(2, 1).unwrap(), b"b");
        assert_eq!(packed.read_at(4, 10).unwrap(), b"");
        let mut past_its_end = [0u8; 2];
        let err = packed.read_exact_at(3, &mut past_its_end).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "never into the next packed file");
        let truncated = FileContents::open(dir.path(), 5, 4, Some(7), None).unwrap();
        assert_eq!(truncated.read_at(0, 4).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        let gone = FileContents::open(dir.path(), 9, 1, None, None).unwrap_err();
        assert_eq!(gone.kind(), io::ErrorKind::NotFound);
        assert!(is_damage(&gone));
    }

    const BLOCK: usize = CHECK_BLOCK_BYTES as usize;

    /// A file of two and a half blocks, written as `f1`, and its checksums.
    fn checked_file(dir: &Path) -> (Vec<u8>, BlockSums) {
        let bytes: Vec<u8> = (0..BLOCK * 5 / 2).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.join("f1"), &bytes).unwrap();
        (bytes.clone(), bytes.chunks(BLOCK).map(block_sum).collect())
    }

    #[test]
    fn checked_reads_return_exactly_the_bytes_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, sums) = checked_file(dir.path());
        let len = bytes.len() as u64;
        let file = FileContents::open(dir.path(), 1, len, None, Some(sums)).unwrap();
        assert!(file.is_checked());
        let b = BLOCK as u64;
        for (offset, size) in
            [(0, len), (0, 1), (1, 10), (b - 1, 2), (b, b), (b + 5, b), (len - 1, 9)]
        {
            let end = (offset + size).min(len) as usize;
            let got = file.read_at(offset, size).unwrap();
            assert_eq!(got, &bytes[offset as usize..end], "read of {size} at {offset}");
        }
        assert!(file.read_at(len, 10).unwrap().is_empty());
        file.check_all().unwrap();
    }

    /// One flipped byte fails every read touching its block, and only those.
    #[test]
    fn a_flipped_byte_fails_the_reads_of_its_block() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, sums) = checked_file(dir.path());
        bytes[BLOCK + 10] ^= 1;
        std::fs::write(dir.path().join("f1"), &bytes).unwrap();
        let file = FileContents::open(dir.path(), 1, bytes.len() as u64, None, Some(sums)).unwrap();
        let err = file.read_at(BLOCK as u64 + 4000, 1).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("block 1 "), "{err}");
        assert!(is_damage(&err));
        assert!(file.read_at(0, 100).is_ok(), "block 0 is intact");
        assert!(file.read_at(2 * BLOCK as u64, 100).is_ok(), "block 2 is intact");
        assert!(file.read_at(BLOCK as u64 - 1, 2).is_err(), "a read spanning into block 1");
        assert!(is_damage(&file.check_all().unwrap_err()));
    }

    /// A same-length zero fill, a truncation and a symlink in the file's place are all damage.
    #[test]
    fn zero_fill_truncation_and_symlinks_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, sums) = checked_file(dir.path());
        let len = bytes.len() as u64;
        let path = dir.path().join("f1");
        std::fs::write(&path, vec![0u8; bytes.len()]).unwrap();
        let file = FileContents::open(dir.path(), 1, len, None, Some(sums.clone())).unwrap();
        assert!(is_damage(&file.read_at(0, 1).unwrap_err()), "zero fill");
        std::fs::write(&path, &bytes[..BLOCK]).unwrap();
        let file = FileContents::open(dir.path(), 1, len, None, Some(sums.clone())).unwrap();
        assert!(file.read_at(0, 1).is_ok(), "the intact first block still reads");
        let short = file.read_at(len - 1, 1).unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        assert!(is_damage(&short));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(dir.path().join("elsewhere"), &bytes).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &path).unwrap();
        let swapped = FileContents::open(dir.path(), 1, len, None, Some(sums.clone())).unwrap_err();
        assert!(is_damage(&swapped), "symlink: {swapped}");
        assert!(is_damage(&io::Error::from_raw_os_error(libc::EIO)), "the disk lost the copy");
        // A directory or a FIFO in the file's place: damage, and the FIFO never blocks.
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        let dir_err = FileContents::open(dir.path(), 1, len, None, Some(sums.clone()))
            .and_then(|f| f.read_at(0, 1).map(|_| ()))
            .unwrap_err();
        assert!(is_damage(&dir_err), "a directory: {dir_err}");
        std::fs::remove_dir(&path).unwrap();
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let fifo_err = FileContents::open(dir.path(), 1, len, None, Some(sums.clone()))
            .and_then(|f| f.read_at(0, 1).map(|_| ()))
            .unwrap_err();
        assert!(is_damage(&fifo_err), "a FIFO: {fifo_err}");
        let busy = io::Error::from_raw_os_error(libc::EMFILE);
        assert!(!is_damage(&busy), "out of descriptors is not the cache's fault");
    }
}
