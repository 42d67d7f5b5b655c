//! Pure Nix formats: nixbase32, store paths, NAR hashes, `.narinfo`, signatures and
//! `nix-cache-info`. No I/O, no async, no global state; imports nothing else from storefs.
//!
//! Implemented: what a read-only binary-cache client needs: parsing (and printing, where a test or
//! a CLI needs it) of the files a cache serves, and ed25519 verification of narinfo signatures.
//!
//! Not implemented: store path *computation* (`makeStorePath`), derivations, content-address
//! (`CA:`) checking (the field is kept as an opaque string), realisations, and hash algorithms
//! other than SHA-256. The NAR reader lives in `nar` and is written separately.

pub mod cache_info;
pub mod file_index;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod nixbase32;
pub mod seekable;
pub mod signature;
pub mod store_path;

/// Longest excerpt of a hostile value that an error message quotes, in characters.
const MAX_SNIPPET_CHARS: usize = 80;

/// A short, printable excerpt of possibly hostile input, for error messages.
///
/// Invalid UTF-8 is replaced, and long values are cut (on a character boundary, so this never
/// panics) and marked with `...`.
pub(crate) fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out: String = text.chars().take(MAX_SNIPPET_CHARS).collect();
    if text.chars().nth(MAX_SNIPPET_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippet_cases() {
        let long = "é".repeat(MAX_SNIPPET_CHARS + 5);
        let cases: &[(&str, &[u8], String)] = &[
            ("empty", b"", String::new()),
            ("short", b"abc", "abc".to_owned()),
            ("invalid_utf8", b"a\xffb", "a\u{fffd}b".to_owned()),
            (
                "long_multibyte_cut_on_char_boundary",
                long.as_bytes(),
                format!("{}...", "é".repeat(MAX_SNIPPET_CHARS)),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(&snippet(input), want, "case {name}");
        }
    }
}
