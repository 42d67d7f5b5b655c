//! Seekable zstd (facebook/zstd `contrib/seekable_format`): independent zstd frames followed by
//! a seek table in a skippable frame, which every zstd decoder skips, so the file is still one
//! ordinary zstd stream to Nix and `zstd -d`. Pure: frames are compressed and decoded in memory.
//!
//! The seek table, all integers little-endian:
//!
//! ```text
//! skippable frame header: magic 0x184D2A5E (u32), content size (u32)
//! one entry per frame:    compressed size (u32), decompressed size (u32)
//! footer (9 bytes):       frame count (u32), descriptor (u8), seekable magic 0x8F92EAB1 (u32)
//! ```
//!
//! storefs writes no per-frame checksum (descriptor bit 7 clear): the signed file index holds a
//! SHA-256 of every frame, which is stronger. A table with the checksum flag is still parsed.

/// Magic of the skippable frame that holds the seek table.
pub const SKIPPABLE_MAGIC: u32 = 0x184D_2A5E;
/// Magic at the very end of a seekable file.
pub const SEEKABLE_MAGIC: u32 = 0x8F92_EAB1;
/// Bytes of the footer: frame count, descriptor, magic.
pub const FOOTER_LEN: usize = 9;
/// Bytes of the skippable frame header.
const SKIPPABLE_HEADER_LEN: usize = 8;
/// Descriptor bit 7: each entry carries a 4-byte checksum.
const CHECKSUM_FLAG: u8 = 0x80;
/// Descriptor bits 2..=6, which must be zero.
const RESERVED_BITS: u8 = 0x7C;
/// Largest frame (either size) the format can describe.
pub const MAX_FRAME_LEN: u64 = u32::MAX as u64;

/// The sizes of one frame, as the seek table records them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameSizes {
    /// Bytes of the zstd frame.
    pub compressed: u32,
    /// Bytes it decodes to.
    pub decompressed: u32,
}

/// Why a seek table, or a frame, was refused.
#[derive(Debug, thiserror::Error)]
pub enum SeekableError {
    /// The input is shorter than the table it claims.
    #[error("seek table truncated: {len} bytes, need {need}")]
    Truncated {
        /// Bytes given.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A magic number is wrong.
    #[error("bad {which} magic {found:#010x}")]
    BadMagic {
        /// `seekable` or `skippable`.
        which: &'static str,
        /// What was found.
        found: u32,
    },
    /// Reserved descriptor bits are set.
    #[error("seek table descriptor {0:#04x} sets reserved bits")]
    ReservedBits(u8),
    /// The skippable frame's size disagrees with the entries and footer.
    #[error("seek table frame size {found} does not match {expected} for {frames} frames")]
    SizeMismatch {
        /// Size in the skippable frame header.
        found: u32,
        /// Size the frame count implies.
        expected: u64,
        /// The frame count.
        frames: u32,
    },
    /// A frame is larger than the format can describe.
    #[error("frame of {0} bytes is larger than a seek table entry can hold")]
    FrameTooLarge(u64),
    /// zstd failed to compress or decode a frame.
    #[error("zstd: {0}")]
    Zstd(#[source] std::io::Error),
    /// A frame decoded to another size than recorded.
    #[error("frame decoded to {found} bytes, expected {expected}")]
    DecodedSize {
        /// Bytes it decoded to (at most `expected + 1` are looked at).
        found: usize,
        /// The recorded size.
        expected: u64,
    },
}

/// Compresses `data` as one independent zstd frame with the content size in its header.
///
/// # Errors
///
/// zstd refused (an invalid level), or `data` is larger than a frame may be.
pub fn compress_frame(data: &[u8], level: i32) -> Result<Vec<u8>, SeekableError> {
    if data.len() as u64 > MAX_FRAME_LEN {
        return Err(SeekableError::FrameTooLarge(data.len() as u64));
    }
    zstd::bulk::compress(data, level).map_err(SeekableError::Zstd)
}

/// Decodes one frame that must give exactly `expected` bytes. The output buffer is capped at
/// `expected`, so a hostile frame cannot make it allocate more.
///
/// # Errors
///
/// Not one valid zstd frame, or another size than `expected`.
pub fn decompress_frame(frame: &[u8], expected: u64) -> Result<Vec<u8>, SeekableError> {
    let cap = usize::try_from(expected).map_err(|_| SeekableError::FrameTooLarge(expected))?;
    if expected > MAX_FRAME_LEN {
        return Err(SeekableError::FrameTooLarge(expected));
    }
    let out = zstd::bulk::decompress(frame, cap).map_err(SeekableError::Zstd)?;
    if out.len() != cap {
        return Err(SeekableError::DecodedSize { found: out.len(), expected });
    }
    Ok(out)
}

/// The skippable frame holding the seek table for `frames`, in order.
#[must_use]
pub fn seek_table(frames: &[FrameSizes]) -> Vec<u8> {
    let content = frames.len() * 8 + FOOTER_LEN;
    let mut out = Vec::with_capacity(SKIPPABLE_HEADER_LEN + content);
    out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    // The caller keeps frame counts far below 2^29, so the content size fits.
    out.extend_from_slice(&u32::try_from(content).unwrap_or(u32::MAX).to_le_bytes());
    for f in frames {
        out.extend_from_slice(&f.compressed.to_le_bytes());
        out.extend_from_slice(&f.decompressed.to_le_bytes());
    }
    out.extend_from_slice(&u32::try_from(frames.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.push(0);
    out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    out
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

/// Parses the seek table at the end of `tail` (the last bytes of a seekable file; all of the
/// table must be in it). Returns the frames in order.
///
/// # Errors
///
/// A missing or malformed table.
pub fn parse_seek_table(tail: &[u8]) -> Result<Vec<FrameSizes>, SeekableError> {
    let truncated = |need| SeekableError::Truncated { len: tail.len(), need };
    if tail.len() < FOOTER_LEN + SKIPPABLE_HEADER_LEN {
        return Err(truncated(FOOTER_LEN + SKIPPABLE_HEADER_LEN));
    }
    let footer = tail.len() - FOOTER_LEN;
    let magic = le32(tail, footer + 5);
    if magic != SEEKABLE_MAGIC {
        return Err(SeekableError::BadMagic { which: "seekable", found: magic });
    }
    let descriptor = tail[footer + 4];
    if descriptor & RESERVED_BITS != 0 {
        return Err(SeekableError::ReservedBits(descriptor));
    }
    let entry_len: u64 = if descriptor & CHECKSUM_FLAG != 0 { 12 } else { 8 };
    let count = le32(tail, footer);
    let content = u64::from(count) * entry_len + FOOTER_LEN as u64;
    let need = content + SKIPPABLE_HEADER_LEN as u64;
    if need > tail.len() as u64 {
        return Err(truncated(usize::try_from(need).unwrap_or(usize::MAX)));
    }
    let start = tail.len() - need as usize;
    let skippable = le32(tail, start);
    if skippable != SKIPPABLE_MAGIC {
        return Err(SeekableError::BadMagic { which: "skippable", found: skippable });
    }
    let size = le32(tail, start + 4);
    if u64::from(size) != content {
        return Err(SeekableError::SizeMismatch { found: size, expected: content, frames: count });
    }
    let entries = start + SKIPPABLE_HEADER_LEN;
    Ok((0..count as usize)
        .map(|i| {
            let at = entries + i * entry_len as usize;
            FrameSizes { compressed: le32(tail, at), decompressed: le32(tail, at + 4) }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn sample() -> (Vec<u8>, Vec<FrameSizes>, Vec<u8>) {
        let parts: [&[u8]; 3] = [b"hello ", &[7u8; 5000], b"world"];
        let mut file = Vec::new();
        let mut sizes = Vec::new();
        for p in parts {
            let frame = compress_frame(p, 3).unwrap();
            sizes.push(FrameSizes { compressed: frame.len() as u32, decompressed: p.len() as u32 });
            file.extend(frame);
        }
        file.extend(seek_table(&sizes));
        (file, sizes, parts.concat())
    }

    #[test]
    fn a_plain_zstd_decoder_reads_the_whole_file() {
        let (file, _, plain) = sample();
        let mut out = Vec::new();
        zstd::stream::read::Decoder::new(&file[..]).unwrap().read_to_end(&mut out).unwrap();
        assert_eq!(out, plain);
    }

    #[test]
    fn the_seek_table_round_trips_and_locates_each_frame() {
        let (file, sizes, plain) = sample();
        assert_eq!(parse_seek_table(&file).unwrap(), sizes);
        let (mut c, mut d) = (0usize, 0usize);
        for s in &sizes {
            let frame = &file[c..c + s.compressed as usize];
            let out = decompress_frame(frame, u64::from(s.decompressed)).unwrap();
            assert_eq!(out, plain[d..d + s.decompressed as usize]);
            c += s.compressed as usize;
            d += s.decompressed as usize;
        }
    }

    #[test]
    fn a_frame_of_another_size_is_refused() {
        let frame = compress_frame(&[1u8; 100], 3).unwrap();
        assert!(matches!(decompress_frame(&frame, 99), Err(SeekableError::Zstd(_))));
        assert!(matches!(
            decompress_frame(&frame, 101),
            Err(SeekableError::DecodedSize { found: 100, expected: 101 })
        ));
        assert!(decompress_frame(b"not zstd at all", 10).is_err());
    }

    #[test]
    fn malformed_tables_are_refused() {
        let (file, _, _) = sample();
        let table_start = file.len() - seek_table(&[FrameSizes::default_for_test(); 3]).len();
        let mut bad_magic = file.clone();
        *bad_magic.last_mut().unwrap() ^= 1;
        let mut reserved = file.clone();
        let len = reserved.len();
        reserved[len - 5] = 0x04;
        let mut huge_count = file.clone();
        huge_count[len - 9..len - 5].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut bad_skippable = file.clone();
        bad_skippable[table_start] ^= 1;
        let mut bad_size = file.clone();
        bad_size[table_start + 4] ^= 1;
        let cases: [(&str, &[u8]); 6] = [
            ("empty", b""),
            ("bad_seekable_magic", &bad_magic),
            ("reserved_bits", &reserved),
            ("count_past_the_input", &huge_count),
            ("bad_skippable_magic", &bad_skippable),
            ("size_mismatch", &bad_size),
        ];
        for (name, input) in cases {
            assert!(parse_seek_table(input).is_err(), "case {name}");
        }
    }

    impl FrameSizes {
        fn default_for_test() -> Self {
            Self { compressed: 0, decompressed: 0 }
        }
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_tail_never_panics(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_seek_table(&tail);
        }
    }
}
