//! Nix's base32 encoding ("nix32"), as used in store path hash parts and `sha256:` hashes.
//!
//! Nix base32 differs from RFC 4648 in two ways: the alphabet omits `e`, `o`, `u` and `t`
//! (`0123456789abcdfghijklmnpqrsvwxyz`), and the bit order is reversed. Output character `k`
//! (counting from the *end* of the string) holds bits `5k .. 5k+5` of the input read as one
//! little-endian number. So the first character holds the most significant (possibly partial)
//! group, and there is no padding. A string of `n` characters decodes to `n * 5 / 8` bytes; a
//! length that no byte count encodes to is rejected, and so are non-zero bits above the last byte.

/// The 32 digits, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Bits carried by one base32 character.
const BITS_PER_CHAR: usize = 5;

/// Marks a byte that is not in [`ALPHABET`] in [`DECODE_TABLE`].
const INVALID: u8 = 0xff;

/// Maps an ASCII byte to its digit value, or [`INVALID`].
const DECODE_TABLE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Errors from [`decode`] and [`decode_fixed`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// No byte count encodes to this many characters.
    #[error("invalid nixbase32 length: {0} characters")]
    InvalidLength(usize),
    /// A character outside the nixbase32 alphabet.
    #[error("invalid nixbase32 character {ch:?} at position {position}")]
    InvalidChar {
        /// The offending byte, shown as a (Latin-1) character.
        ch: char,
        /// Its byte index in the input.
        position: usize,
    },
    /// The first character carries bits beyond the decoded length.
    #[error("non-zero padding bits in nixbase32 string")]
    NonZeroPadding,
    /// [`decode_fixed`] got a string of the wrong length.
    #[error("wrong nixbase32 length: expected {expected} characters, got {got}")]
    WrongLength {
        /// Characters needed for the requested byte count.
        expected: usize,
        /// Characters given.
        got: usize,
    },
}

/// Number of characters that encode `n` bytes.
#[must_use]
pub const fn encode_len(n: usize) -> usize {
    // ceil(n * 8 / 5), written so that it does not overflow for any realistic n.
    (n / BITS_PER_CHAR) * 8 + ((n % BITS_PER_CHAR) * 8).div_ceil(BITS_PER_CHAR)
}

/// Number of bytes that `n` characters decode to (rounding down, as Nix does).
#[must_use]
pub const fn decode_len(n: usize) -> usize {
    (n / 8) * BITS_PER_CHAR + (n % 8) * BITS_PER_CHAR / 8
}

/// Encodes `input` as Nix base32.
#[must_use]
pub fn encode(input: &[u8]) -> String {
    let len = encode_len(input.len());
    let mut out = String::with_capacity(len);
    for k in (0..len).rev() {
        let bit = k * BITS_PER_CHAR;
        let (byte, shift) = (bit / 8, bit % 8);
        let low = input.get(byte).map_or(0, |b| b >> shift);
        let high = match input.get(byte + 1) {
            // `shift` is at most 7, so `8 - shift` is in 1..=8; u16 keeps the shift in range.
            Some(&b) if shift > 3 => ((u16::from(b) << (8 - shift)) & 0xff) as u8,
            _ => 0,
        };
        let digit = (low | high) & 0x1f;
        out.push(char::from(ALPHABET[usize::from(digit)]));
    }
    out
}

/// Decodes a Nix base32 string.
///
/// # Errors
///
/// Fails on a character outside the alphabet, on a length that no byte count encodes to, and on
/// non-zero bits beyond the decoded length (so every byte string has exactly one encoding).
pub fn decode(input: &[u8]) -> Result<Vec<u8>, Error> {
    let out_len = decode_len(input.len());
    if encode_len(out_len) != input.len() {
        return Err(Error::InvalidLength(input.len()));
    }
    let mut out = vec![0u8; out_len];
    for (position, &c) in input.iter().enumerate() {
        let digit = DECODE_TABLE[usize::from(c)];
        if digit == INVALID {
            return Err(Error::InvalidChar { ch: char::from(c), position });
        }
        let k = input.len() - position - 1;
        let bit = k * BITS_PER_CHAR;
        let (byte, shift) = (bit / 8, bit % 8);
        let wide = u16::from(digit) << shift;
        let [low, high] = [(wide & 0xff) as u8, (wide >> 8) as u8];
        match out.get_mut(byte) {
            Some(slot) => *slot |= low,
            None if low != 0 => return Err(Error::NonZeroPadding),
            None => {}
        }
        match out.get_mut(byte + 1) {
            Some(slot) => *slot |= high,
            None if high != 0 => return Err(Error::NonZeroPadding),
            None => {}
        }
    }
    Ok(out)
}

/// Decodes a Nix base32 string that must encode exactly `N` bytes.
///
/// # Errors
///
/// As [`decode`], plus [`Error::WrongLength`] when the input is not `encode_len(N)` characters.
pub fn decode_fixed<const N: usize>(input: &[u8]) -> Result<[u8; N], Error> {
    let expected = encode_len(N);
    if input.len() != expected {
        return Err(Error::WrongLength { expected, got: input.len() });
    }
    let bytes = decode(input)?;
    bytes.try_into().map_err(|v: Vec<u8>| Error::WrongLength { expected, got: encode_len(v.len()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// Vectors from `nix-hash --type <algo> --to-base32 <hex>` (Nix 2.8.0).
    const VECTORS: &[(&str, &str, &str)] = &[
        ("empty", "", ""),
        (
            "sha256_empty_string",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
        ),
        (
            "sha256_abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
            "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s",
        ),
        (
            "sha256_hello_world",
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
            "1sfdxziarxw8j3p80lvswgpq9i7smdyxmmsj5sjhhgjdjfwjfkdr",
        ),
        (
            "sha256_low_bit",
            "0000000000000000000000000000000000000000000000000000000000000001",
            "0080000000000000000000000000000000000000000000000000",
        ),
        (
            "sha256_high_byte",
            "ff00000000000000000000000000000000000000000000000000000000000000",
            "000000000000000000000000000000000000000000000000007z",
        ),
        (
            "sha256_all_ones",
            "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "1zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ),
        (
            "sha1_counting",
            "0102030405060708090a0b0c0d0e0f1011121314",
            "2h9i448h1w70s30b184hh1q60l2060h1",
        ),
        (
            "sha1_abc",
            "a9993e364706816aba3e25717850c26c9cd0d89d",
            "kpcd173cq987hw957sx6m0868wv3x6d9",
        ),
        ("md5_abc", "900150983cd24fb0d6963f7d28e17f72", "3jgzhjhz9zjvbb0kyj7jc500ch"),
        (
            "sha512_abc",
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            "2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1\
             ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx",
        ),
    ];

    #[test]
    fn known_vectors() {
        for (name, hex_in, want) in VECTORS {
            let bytes = hex(hex_in);
            assert_eq!(encode(&bytes), *want, "encode {name}");
            assert_eq!(decode(want.as_bytes()).unwrap(), bytes, "decode {name}");
        }
    }

    #[test]
    fn lengths() {
        let cases = [
            ("zero", 0, 0),
            ("one_byte", 1, 2),
            ("md5", 16, 26),
            ("store_path_digest", 20, 32),
            ("sha256", 32, 52),
            ("sha512", 64, 103),
        ];
        for (name, bytes, chars) in cases {
            assert_eq!(encode_len(bytes), chars, "encode_len {name}");
            assert_eq!(decode_len(chars), bytes, "decode_len {name}");
        }
    }

    #[test]
    fn rejects() {
        let cases: &[(&str, &[u8], Error)] = &[
            ("length_one", b"0", Error::InvalidLength(1)),
            ("length_three", b"000", Error::InvalidLength(3)),
            ("length_51", &[b'0'; 51], Error::InvalidLength(51)),
            ("letter_e", b"0e", Error::InvalidChar { ch: 'e', position: 1 }),
            ("uppercase", b"A0", Error::InvalidChar { ch: 'A', position: 0 }),
            ("non_ascii", b"0\xc3", Error::InvalidChar { ch: '\u{c3}', position: 1 }),
            ("padding_one_byte", b"80", Error::NonZeroPadding),
            (
                "padding_sha256",
                b"2zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
                Error::NonZeroPadding,
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(decode(input).unwrap_err(), *want, "case {name}");
        }
    }

    #[test]
    fn decode_fixed_checks_length() {
        let ok: [u8; 20] = decode_fixed(b"2h9i448h1w70s30b184hh1q60l2060h1").unwrap();
        assert_eq!(ok.to_vec(), hex("0102030405060708090a0b0c0d0e0f1011121314"));
        let err = decode_fixed::<32>(b"2h9i448h1w70s30b184hh1q60l2060h1").unwrap_err();
        assert_eq!(err, Error::WrongLength { expected: 52, got: 32 });
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let enc = encode(&bytes);
            prop_assert_eq!(enc.len(), encode_len(bytes.len()));
            prop_assert_eq!(decode(enc.as_bytes()).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics(input in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(bytes) = decode(&input) {
                let again = encode(&bytes);
                prop_assert_eq!(again.as_bytes(), &input[..]);
            }
        }

        #[test]
        fn decode_alphabet_strings_is_canonical(s in "[0-9a-df-np-sv-z]{0,60}") {
            if let Ok(bytes) = decode(s.as_bytes()) {
                prop_assert_eq!(encode(&bytes), s);
            }
        }
    }
}
