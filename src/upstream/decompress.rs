//! Streaming decompression of NAR bodies: none, xz, zstd, bzip2 (multi-frame / multi-stream included).
//!
//! Decoders are memory-bounded (xz memlimit, zstd window limit) so a hostile body cannot make the
//! daemon allocate without limit; the caller separately stops reading once output passes NarSize.

use std::io::{self, BufReader, Read};

use crate::nix::narinfo::Compression;

/// xz decoder memory limit. Nix writes xz with preset 6 (8 MiB dictionary); 256 MiB is generous.
const XZ_MEMLIMIT_BYTES: u64 = 256 * 1024 * 1024;
/// zstd window limit as log2: 2^27 = 128 MiB, the reference decoder's default cap.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// Why a body cannot be decoded at all.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// Compression we do not implement.
    #[error("unsupported NAR compression {0:?}")]
    Unsupported(&'static str),
    /// Decoder set-up failed.
    #[error("cannot start {compression} decoder: {source}")]
    Init {
        /// Which compression.
        compression: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Wraps `compressed` in the decoder for `compression`.
pub fn decoder<'a>(
    compression: Compression,
    compressed: impl Read + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>, DecompressError> {
    let init = |source| DecompressError::Init { compression: compression.as_str(), source };
    Ok(match compression {
        Compression::None => Box::new(compressed),
        Compression::Xz => {
            let stream = xz2::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT_BYTES,
                xz2::stream::CONCATENATED,
            )
            .map_err(|e| init(io::Error::other(e)))?;
            Box::new(xz2::read::XzDecoder::new_stream(BufReader::new(compressed), stream))
        }
        Compression::Zstd => {
            let mut dec = zstd::stream::read::Decoder::new(compressed).map_err(init)?;
            dec.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(init)?;
            Box::new(dec)
        }
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(compressed)),
        Compression::Brotli => return Err(DecompressError::Unsupported("br")),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn decode_all(c: Compression, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decoder(c, data).unwrap().read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn zstd_multi_frame_is_one_stream() {
        let mut body = zstd::encode_all(&b"hello "[..], 3).unwrap();
        body.extend(zstd::encode_all(&b"world"[..], 3).unwrap());
        assert_eq!(decode_all(Compression::Zstd, &body).unwrap(), b"hello world");
    }

    #[test]
    fn xz_multi_stream_is_one_stream() {
        let mut body = Vec::new();
        for part in [&b"hello "[..], b"world"] {
            let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
            enc.write_all(part).unwrap();
            body.extend(enc.finish().unwrap());
        }
        assert_eq!(decode_all(Compression::Xz, &body).unwrap(), b"hello world");
    }

    #[test]
    fn bzip2_multi_stream_is_one_stream() {
        let mut body = Vec::new();
        for part in [&b"hello "[..], b"world"] {
            let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
            enc.write_all(part).unwrap();
            body.extend(enc.finish().unwrap());
        }
        assert_eq!(decode_all(Compression::Bzip2, &body).unwrap(), b"hello world");
    }

    #[test]
    fn junk_after_a_valid_stream_is_an_error() {
        let mut zst = zstd::encode_all(&b"hello"[..], 3).unwrap();
        zst.extend_from_slice(b"garbage!");
        assert!(decode_all(Compression::Zstd, &zst).is_err());
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 6);
        enc.write_all(b"hello").unwrap();
        let mut xz = enc.finish().unwrap();
        xz.extend_from_slice(b"garbage!");
        assert!(decode_all(Compression::Xz, &xz).is_err());
    }

    #[test]
    fn wrong_compression_is_an_error() {
        let zst = zstd::encode_all(&b"hello"[..], 3).unwrap();
        assert!(decode_all(Compression::Xz, &zst).is_err());
        assert!(decode_all(Compression::Bzip2, &zst).is_err());
    }

    /// A zstd frame that needs a 1 GiB window (2^30) is refused before anything is allocated
    /// for it; the same data with a 128 MiB window (the cap) decodes.
    #[test]
    fn a_zstd_window_above_the_cap_is_refused() {
        let frame = |window_log: u32| {
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(window_log)).unwrap();
            enc.include_contentsize(false).unwrap();
            enc.write_all(b"hello").unwrap();
            enc.finish().unwrap()
        };
        let err = decode_all(Compression::Zstd, &frame(30)).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("memory"), "{err}");
        assert_eq!(decode_all(Compression::Zstd, &frame(ZSTD_WINDOW_LOG_MAX)).unwrap(), b"hello");
    }

    /// An xz stream whose LZMA2 dictionary is 1.5 GiB (more than the 256 MiB memory limit) is
    /// refused; the same stream with its own small dictionary decodes. The big one is made by
    /// editing the dictionary size in the block header (and its CRC32), not by encoding with
    /// that much memory.
    #[test]
    fn an_xz_dictionary_above_the_memory_limit_is_refused() {
        let mut enc = xz2::write::XzEncoder::new(Vec::new(), 0);
        enc.write_all(b"hello").unwrap();
        let small = enc.finish().unwrap();
        assert_eq!(decode_all(Compression::Xz, &small).unwrap(), b"hello");
        // Stream header (12 bytes), then the block header: its size byte, flags, and (with no
        // sizes given) the LZMA2 filter: id 0x21, properties size 1, the dictionary byte.
        let header_len = (usize::from(small[12]) + 1) * 4;
        assert_eq!(&small[14..16], &[0x21, 0x01], "an LZMA2 filter with one property byte");
        let mut big = small.clone();
        big[16] = 39; // 2^(39/2 + 12) * 1.5: 1.5 GiB
        let crc = crate::upstream::testserver::crc32(&big[12..12 + header_len - 4]);
        big[12 + header_len - 4..12 + header_len].copy_from_slice(&crc.to_le_bytes());
        let err = decode_all(Compression::Xz, &big).unwrap_err();
        assert!(err.to_string().to_lowercase().contains("memory"), "{err}");
    }

    #[test]
    fn brotli_is_refused_by_name() {
        let err = decoder(Compression::Brotli, &b""[..]).err().unwrap();
        assert!(err.to_string().contains("br"));
    }
}
