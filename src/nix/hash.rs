//! The SHA-256 NAR hash of a narinfo (`NarHash:`), in every encoding Nix accepts.
//!
//! Accepted: `sha256:<52 nixbase32>`, `sha256:<64 hex>` (either case), `sha256:<44 base64>` and
//! SRI `sha256-<44 base64>`. Base64 must be canonical (padded, no stray bits). Other algorithms
//! (`md5`, `sha1`, `sha512`) and bare, prefix-less hashes are rejected. The canonical form, which
//! the signed fingerprint uses, is `sha256:<nixbase32>`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::nix::{nixbase32, snippet};

/// Bytes in a SHA-256 digest.
pub const SHA256_SIZE: usize = 32;
/// Characters of a SHA-256 digest in nixbase32.
pub const SHA256_NIX32_LEN: usize = nixbase32::encode_len(SHA256_SIZE);
/// Characters of a SHA-256 digest in hex.
pub const SHA256_HEX_LEN: usize = SHA256_SIZE * 2;
/// Characters of a SHA-256 digest in padded base64.
pub const SHA256_BASE64_LEN: usize = SHA256_SIZE.div_ceil(3) * 4;

/// The only algorithm storefs accepts for NAR hashes.
const ALGO: &str = "sha256";
/// Algorithms Nix knows and storefs refuses, for a clearer message.
const OTHER_KNOWN_ALGOS: &[&str] = &["md5", "sha1", "sha512", "blake3"];

/// Errors from [`NarHash::parse`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A known algorithm other than SHA-256.
    #[error("unsupported hash algorithm {0:?} (only sha256 is accepted)")]
    UnsupportedAlgorithm(String),
    /// No `algo:` or `algo-` prefix, or an unknown algorithm.
    #[error("hash {0:?} does not start with \"sha256:\" or \"sha256-\"")]
    MissingPrefix(String),
    /// The digest has a length that matches no encoding.
    #[error("sha256 hash has wrong length: {len} characters in {hash:?}")]
    WrongLength {
        /// Characters after the prefix.
        len: usize,
        /// The whole hash (excerpt).
        hash: String,
    },
    /// The nixbase32 digest does not decode.
    #[error("invalid nixbase32 in hash {hash:?}: {source}")]
    Nix32 {
        /// The whole hash (excerpt).
        hash: String,
        /// The decoder's complaint.
        source: nixbase32::Error,
    },
    /// The hex digest has a non-hex character.
    #[error("invalid hex in hash {0:?}")]
    Hex(String),
    /// The base64 digest does not decode to 32 bytes.
    #[error("invalid base64 in hash {0:?}")]
    Base64(String),
}

/// A SHA-256 digest of a NAR.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct NarHash([u8; SHA256_SIZE]);

impl NarHash {
    /// Wraps a raw digest.
    #[must_use]
    pub fn from_digest(d: [u8; SHA256_SIZE]) -> Self {
        Self(d)
    }

    /// Parses any accepted encoding (see the module docs).
    ///
    /// # Errors
    ///
    /// Fails on another algorithm, a missing prefix, a wrong length or a bad digit.
    pub fn parse(s: &str) -> Result<Self, Error> {
        if let Some(digest) = s.strip_prefix("sha256-") {
            // SRI is always base64.
            return decode_base64(digest, s).map(Self);
        }
        let Some((algo, digest)) = s.split_once(':').or_else(|| s.split_once('-')) else {
            return Err(Error::MissingPrefix(snippet(s.as_bytes())));
        };
        if algo != ALGO {
            return Err(if OTHER_KNOWN_ALGOS.contains(&algo) {
                Error::UnsupportedAlgorithm(algo.to_owned())
            } else {
                Error::MissingPrefix(snippet(s.as_bytes()))
            });
        }
        match digest.len() {
            SHA256_NIX32_LEN => nixbase32::decode_fixed(digest.as_bytes())
                .map(Self)
                .map_err(|source| Error::Nix32 { hash: snippet(s.as_bytes()), source }),
            SHA256_HEX_LEN => {
                decode_hex(digest).map(Self).ok_or_else(|| Error::Hex(snippet(s.as_bytes())))
            }
            SHA256_BASE64_LEN => decode_base64(digest, s).map(Self),
            len => Err(Error::WrongLength { len, hash: snippet(s.as_bytes()) }),
        }
    }

    /// The raw digest.
    #[must_use]
    pub fn digest(&self) -> &[u8; SHA256_SIZE] {
        &self.0
    }

    /// `sha256:<nixbase32>`, the form used in narinfo fingerprints.
    #[must_use]
    pub fn to_nix_string(&self) -> String {
        format!("{ALGO}:{}", nixbase32::encode(&self.0))
    }

    /// `sha256-<base64>` (Subresource Integrity form).
    #[must_use]
    pub fn to_sri(&self) -> String {
        format!("{ALGO}-{}", BASE64.encode(self.0))
    }

    /// Lower-case hex digest, without a prefix.
    #[must_use]
    pub fn to_hex(&self) -> String {
        use fmt::Write as _;
        self.0.iter().fold(String::with_capacity(SHA256_HEX_LEN), |mut out, b| {
            // Writing to a String cannot fail.
            let _ = write!(out, "{b:02x}");
            out
        })
    }
}

impl fmt::Display for NarHash {
    /// Writes `sha256:<nixbase32>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nix_string())
    }
}

fn decode_base64(digest: &str, whole: &str) -> Result<[u8; SHA256_SIZE], Error> {
    if digest.len() != SHA256_BASE64_LEN {
        return Err(Error::WrongLength { len: digest.len(), hash: snippet(whole.as_bytes()) });
    }
    let mut out = [0u8; SHA256_SIZE];
    match BASE64.decode_slice(digest, &mut out) {
        Ok(SHA256_SIZE) => Ok(out),
        _ => Err(Error::Base64(snippet(whole.as_bytes()))),
    }
}

fn decode_hex(digest: &str) -> Option<[u8; SHA256_SIZE]> {
    let mut out = [0u8; SHA256_SIZE];
    let bytes = digest.as_bytes();
    if bytes.len() != SHA256_HEX_LEN {
        return None;
    }
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16)?;
        let lo = char::from(pair[1]).to_digit(16)?;
        // Both digits are < 16, so the value fits in a byte.
        *slot = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// sha256("abc") in each encoding; nix32 from `nix-hash --type sha256 --to-base32`.
    const HEX: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    const NIX32: &str = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
    const B64: &str = "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=";

    fn abc() -> NarHash {
        NarHash::parse(&format!("sha256:{NIX32}")).unwrap()
    }

    #[test]
    fn accepts_every_encoding() {
        let cases = [
            ("nix32", format!("sha256:{NIX32}")),
            ("hex", format!("sha256:{HEX}")),
            ("hex_upper", format!("sha256:{}", HEX.to_uppercase())),
            ("base64_prefixed", format!("sha256:{B64}")),
            ("sri", format!("sha256-{B64}")),
        ];
        for (name, input) in cases {
            let h = NarHash::parse(&input).unwrap_or_else(|e| panic!("case {name}: {e}"));
            assert_eq!(h, abc(), "case {name}");
        }
    }

    #[test]
    fn renders() {
        let h = abc();
        assert_eq!(h.to_nix_string(), format!("sha256:{NIX32}"));
        assert_eq!(h.to_string(), format!("sha256:{NIX32}"));
        assert_eq!(h.to_sri(), format!("sha256-{B64}"));
        assert_eq!(h.to_hex(), HEX);
        assert_eq!(NarHash::from_digest(*h.digest()), h);
    }

    #[test]
    fn rejects() {
        let cases = [
            ("md5", "md5:3jgzhjhz9zjvbb0kyj7jc500ch".to_owned(), "unsupported"),
            ("sha1", "sha1:kpcd173cq987hw957sx6m0868wv3x6d9".to_owned(), "unsupported"),
            ("sha512_sri", "sha512-AAAA".to_owned(), "unsupported"),
            ("bare_nix32", NIX32.to_owned(), "does not start"),
            ("bare_hex", HEX.to_owned(), "does not start"),
            ("uppercase_algo", format!("SHA256:{NIX32}"), "does not start"),
            ("empty", String::new(), "does not start"),
            ("prefix_only", "sha256:".to_owned(), "wrong length"),
            ("nix32_short", format!("sha256:{}", &NIX32[1..]), "wrong length"),
            ("nix32_long", format!("sha256:{NIX32}0"), "wrong length"),
            ("nix32_bad_char", format!("sha256:e{}", &NIX32[1..]), "nixbase32"),
            ("nix32_padding", format!("sha256:2{}", &NIX32[1..]), "nixbase32"),
            ("hex_bad_char", format!("sha256:g{}", &HEX[1..]), "hex"),
            ("hex_multibyte", format!("sha256:é{}", &HEX[2..]), "hex"),
            ("sri_unpadded", format!("sha256-{}", B64.trim_end_matches('=')), "wrong length"),
            ("sri_hex", format!("sha256-{HEX}"), "wrong length"),
            ("sri_bad_char", format!("sha256-!{}", &B64[1..]), "base64"),
            ("sri_trailing_bits", format!("sha256-{}1=", &B64[..42]), "base64"),
            ("space", format!("sha256: {NIX32}"), "wrong length"),
        ];
        for (name, input, want) in cases {
            let err = NarHash::parse(&input).expect_err(name).to_string();
            assert!(err.contains(want), "case {name}: {err:?} lacks {want:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = NarHash::parse(&s);
        }

        #[test]
        fn parse_never_panics_near_valid(digest in "[0-9a-zA-Z+/=é]{40,70}", sep in "[:-]") {
            let _ = NarHash::parse(&format!("sha256{sep}{digest}"));
        }

        #[test]
        fn encodings_round_trip(bytes in any::<[u8; 32]>()) {
            let h = NarHash::from_digest(bytes);
            prop_assert_eq!(NarHash::parse(&h.to_nix_string()).unwrap(), h);
            prop_assert_eq!(NarHash::parse(&h.to_sri()).unwrap(), h);
            prop_assert_eq!(NarHash::parse(&format!("sha256:{}", h.to_hex())).unwrap(), h);
        }
    }
}
