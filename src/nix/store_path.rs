//! Store paths: `/nix/store/<32 nixbase32 chars>-<name>`, parsed and validated, never resolved.
//!
//! A valid basename is the 20-byte digest in nixbase32 (32 characters), a `-`, and a name of
//! 1..=[`MAX_NAME_LEN`] characters from `[0-9A-Za-z+-._?=]` that is not `.` or `..` and does not
//! start with `.-` or `..-` (Nix's `checkName`). Because `/` and NUL are not allowed, a valid
//! store path can never escape its directory or name a subpath.

use std::fmt;

use crate::nix::{nixbase32, snippet};

/// The only store directory storefs serves.
pub const STORE_DIR: &str = "/nix/store";
/// Bytes in a store path digest (a truncated, folded SHA-256).
pub const DIGEST_SIZE: usize = 20;
/// Characters in the hash part of a basename.
pub const ENCODED_DIGEST_SIZE: usize = nixbase32::encode_len(DIGEST_SIZE);
/// Longest allowed name after the hash part and the dash.
pub const MAX_NAME_LEN: usize = 211;
/// Longest valid basename: hash part, dash, name.
pub const MAX_BASENAME_LEN: usize = ENCODED_DIGEST_SIZE + 1 + MAX_NAME_LEN;

/// Errors from parsing a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The basename is too short to hold a hash part, a dash and a name.
    #[error("store path basename too short: {0:?}")]
    TooShort(String),
    /// The hash part is not 32 nixbase32 characters.
    #[error("invalid store path hash part {hash:?}: {source}")]
    InvalidHashPart {
        /// The hash part as given.
        hash: String,
        /// Why it did not decode.
        source: nixbase32::Error,
    },
    /// No `-` after the hash part.
    #[error("missing '-' after the store path hash part in {0:?}")]
    MissingDash(String),
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("store path name too long: {len} bytes (max {MAX_NAME_LEN})")]
    NameTooLong {
        /// Length of the name in bytes.
        len: usize,
    },
    /// The name contains a byte outside `[0-9A-Za-z+-._?=]`.
    #[error("invalid character {ch:?} in store path name {name:?}")]
    InvalidNameChar {
        /// The offending byte, shown as a (Latin-1) character.
        ch: char,
        /// The name (excerpt).
        name: String,
    },
    /// The name is `.`/`..` or starts with `.-`/`..-`.
    #[error("forbidden store path name {0:?}")]
    ForbiddenName(String),
    /// An absolute path outside [`STORE_DIR`].
    #[error("path {0:?} is not directly inside {STORE_DIR}")]
    NotInStore(String),
}

/// A syntactically valid store path (digest plus name). Holds no reference to any file.
///
/// Ordering and equality follow the basename text, like Nix's `StorePath`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct StorePath {
    // Field order matters for the derived `Ord`: textual hash part first, then name.
    hash_part: [u8; ENCODED_DIGEST_SIZE],
    name: String,
    digest: [u8; DIGEST_SIZE],
}

impl StorePath {
    /// Parses a basename, `<hash part>-<name>`.
    ///
    /// # Errors
    ///
    /// Fails when the hash part or the name is invalid (see the module docs).
    pub fn from_basename(s: &[u8]) -> Result<Self, Error> {
        if s.len() < ENCODED_DIGEST_SIZE + 2 {
            return Err(Error::TooShort(snippet(s)));
        }
        let (hash, rest) = s.split_at(ENCODED_DIGEST_SIZE);
        let digest = nixbase32::decode_fixed::<DIGEST_SIZE>(hash)
            .map_err(|source| Error::InvalidHashPart { hash: snippet(hash), source })?;
        let name = match rest.split_first() {
            Some((b'-', name)) => name,
            _ => return Err(Error::MissingDash(snippet(s))),
        };
        let name = validate_name(name)?;
        let mut hash_part = [0u8; ENCODED_DIGEST_SIZE];
        hash_part.copy_from_slice(hash);
        Ok(Self { hash_part, name: name.to_owned(), digest })
    }

    /// Parses `/nix/store/<basename>`: no trailing slash, no subpath, no other store dir.
    ///
    /// # Errors
    ///
    /// [`Error::NotInStore`] when the prefix is wrong, else as [`StorePath::from_basename`].
    pub fn from_absolute_path(s: &[u8]) -> Result<Self, Error> {
        let basename = s
            .strip_prefix(STORE_DIR.as_bytes())
            .and_then(|rest| rest.strip_prefix(b"/"))
            .ok_or_else(|| Error::NotInStore(snippet(s)))?;
        Self::from_basename(basename)
    }

    /// A store path as a user names it on a command line: `/nix/store/<basename>` (anything
    /// below it, like `/nix/store/<basename>/bin/sh`, names the same store path) or a bare
    /// `<basename>`.
    pub fn from_user_arg(s: &str) -> Result<Self, Error> {
        match s.strip_prefix(STORE_DIR).and_then(|rest| rest.strip_prefix('/')) {
            Some(rest) => {
                Self::from_basename(rest.split('/').next().unwrap_or_default().as_bytes())
            }
            None => Self::from_basename(s.as_bytes()),
        }
    }

    /// The 20-byte digest.
    #[must_use]
    pub fn digest(&self) -> &[u8; DIGEST_SIZE] {
        &self.digest
    }

    /// The 32-character hash part (what `<hash>.narinfo` is named after).
    #[must_use]
    pub fn hash_part(&self) -> String {
        self.hash_part_str().to_owned()
    }

    /// The hash part, borrowed.
    #[must_use]
    pub fn hash_part_str(&self) -> &str {
        // Only bytes from the nixbase32 alphabet are ever stored here.
        std::str::from_utf8(&self.hash_part).expect("hash part is ASCII nixbase32")
    }

    /// The name after the dash.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/nix/store/<basename>`.
    #[must_use]
    pub fn to_absolute_path(&self) -> String {
        format!("{STORE_DIR}/{self}")
    }
}

impl fmt::Display for StorePath {
    /// Writes the basename, `<hash part>-<name>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_part_str(), self.name)
    }
}

/// Whether `s` is a well-formed 32-character hash part.
#[must_use]
pub fn is_valid_hash_part(s: &[u8]) -> bool {
    nixbase32::decode_fixed::<DIGEST_SIZE>(s).is_ok()
}

/// Checks a store path name and returns it as `&str`.
fn validate_name(name: &[u8]) -> Result<&str, Error> {
    if name.len() > MAX_NAME_LEN {
        return Err(Error::NameTooLong { len: name.len() });
    }
    if let Some(&bad) = name.iter().find(|&&b| !is_name_byte(b)) {
        return Err(Error::InvalidNameChar { ch: char::from(bad), name: snippet(name) });
    }
    let forbidden =
        matches!(name, b"" | b"." | b"..") || name.starts_with(b".-") || name.starts_with(b"..-");
    if forbidden {
        return Err(Error::ForbiddenName(snippet(name)));
    }
    // Every byte was checked to be ASCII above.
    Ok(std::str::from_utf8(name).expect("store path name is ASCII"))
}

/// `[0-9A-Za-z+-._?=]`.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_' | b'?' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HASH: &str = "3g040cf1izicfsr8qv0x7sk1n09nspj5";

    #[test]
    fn constants() {
        assert_eq!(ENCODED_DIGEST_SIZE, 32);
        assert_eq!(MAX_BASENAME_LEN, 244);
    }

    #[test]
    fn accepts() {
        let long_name = "a".repeat(MAX_NAME_LEN);
        let cases: Vec<(&str, String, &str)> = vec![
            ("simple", format!("{HASH}-hello.txt"), "hello.txt"),
            ("version", format!("{HASH}-hello-2.12.1"), "hello-2.12.1"),
            ("one_char", format!("{HASH}-a"), "a"),
            ("all_special", format!("{HASH}-+-._?="), "+-._?="),
            ("dot_prefixed", format!("{HASH}-.foo"), ".foo"),
            ("three_dots", format!("{HASH}-..."), "..."),
            ("dotdot_word", format!("{HASH}-..a"), "..a"),
            ("max_len", format!("{HASH}-{long_name}"), &long_name),
        ];
        for (case, input, name) in cases {
            let sp = StorePath::from_basename(input.as_bytes())
                .unwrap_or_else(|e| panic!("case {case}: {e}"));
            assert_eq!(sp.name(), name, "case {case}");
            assert_eq!(sp.hash_part(), HASH, "case {case}");
            assert_eq!(sp.to_string(), input, "case {case}");
            assert_eq!(sp.to_absolute_path(), format!("/nix/store/{input}"), "case {case}");
            let again = StorePath::from_absolute_path(sp.to_absolute_path().as_bytes()).unwrap();
            assert_eq!(again, sp, "case {case}");
        }
    }

    #[test]
    fn rejects_basenames() {
        let too_long = format!("{HASH}-{}", "a".repeat(MAX_NAME_LEN + 1));
        let cases: Vec<(&str, String)> = vec![
            ("empty", String::new()),
            ("hash_only", HASH.to_owned()),
            ("hash_dash", format!("{HASH}-")),
            ("no_dash", format!("{HASH}xhello")),
            ("short_hash", "3g040cf1izicfsr8qv0x7sk1n09nspj-hello".to_owned()),
            ("letter_e_in_hash", "eg040cf1izicfsr8qv0x7sk1n09nspj5-hello".to_owned()),
            ("letter_o_in_hash", "og040cf1izicfsr8qv0x7sk1n09nspj5-hello".to_owned()),
            ("letter_u_in_hash", "ug040cf1izicfsr8qv0x7sk1n09nspj5-hello".to_owned()),
            ("letter_t_in_hash", "tg040cf1izicfsr8qv0x7sk1n09nspj5-hello".to_owned()),
            ("uppercase_hash", "3G040CF1IZICFSR8QV0X7SK1N09NSPJ5-hello".to_owned()),
            ("dot", format!("{HASH}-.")),
            ("dotdot", format!("{HASH}-..")),
            ("dot_dash", format!("{HASH}-.-foo")),
            ("dotdot_dash", format!("{HASH}-..-foo")),
            ("slash", format!("{HASH}-a/b")),
            ("subpath", format!("{HASH}-hello/bin")),
            ("space", format!("{HASH}-a b")),
            ("nul", format!("{HASH}-a\0b")),
            ("unicode", format!("{HASH}-héllo")),
            ("name_too_long", too_long),
            ("multibyte_at_hash_boundary", format!("{}é-hello", &HASH[..31])),
        ];
        for (case, input) in cases {
            assert!(
                StorePath::from_basename(input.as_bytes()).is_err(),
                "case {case} should be rejected"
            );
        }
    }

    #[test]
    fn rejects_absolute_paths() {
        let cases: Vec<(&str, String)> = vec![
            ("basename_only", format!("{HASH}-hello")),
            ("other_store", format!("/gnu/store/{HASH}-hello")),
            ("trailing_slash", format!("/nix/store/{HASH}-hello/")),
            ("subpath", format!("/nix/store/{HASH}-hello/bin/hello")),
            ("double_slash", format!("/nix/store//{HASH}-hello")),
            ("store_dir_itself", "/nix/store".to_owned()),
            ("relative", format!("nix/store/{HASH}-hello")),
            ("prefix_lookalike", format!("/nix/storex/{HASH}-hello")),
        ];
        for (case, input) in cases {
            assert!(
                StorePath::from_absolute_path(input.as_bytes()).is_err(),
                "case {case} should be rejected"
            );
        }
    }

    #[test]
    fn error_messages_name_the_value() {
        let err = StorePath::from_basename(format!("{HASH}-a b").as_bytes()).unwrap_err();
        assert_eq!(err.to_string(), "invalid character ' ' in store path name \"a b\"");
        let err = StorePath::from_absolute_path(b"/gnu/store/x").unwrap_err();
        assert_eq!(err.to_string(), "path \"/gnu/store/x\" is not directly inside /nix/store");
    }

    #[test]
    fn hash_part_validity() {
        assert!(is_valid_hash_part(HASH.as_bytes()));
        assert!(!is_valid_hash_part(b"3g040cf1izicfsr8qv0x7sk1n09nspj"));
        assert!(!is_valid_hash_part(b"3g040cf1izicfsr8qv0x7sk1n09nspje"));
        assert!(!is_valid_hash_part(b""));
    }

    #[test]
    fn ordering_follows_basename_text() {
        let a = StorePath::from_basename(b"0000000000000000000000000000000z-b").unwrap();
        let b = StorePath::from_basename(b"10000000000000000000000000000000-a").unwrap();
        let c = StorePath::from_basename(b"10000000000000000000000000000000-b").unwrap();
        assert!(a < b && b < c);
        assert!(a.to_string() < b.to_string() && b.to_string() < c.to_string());
    }

    #[test]
    fn digest_matches_hash_part() {
        let sp = StorePath::from_basename(format!("{HASH}-x").as_bytes()).unwrap();
        assert_eq!(nixbase32::encode(sp.digest()), HASH);
    }

    proptest! {
        #[test]
        fn from_basename_never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(sp) = StorePath::from_basename(&input) {
                let again = sp.to_string();
                prop_assert_eq!(again.as_bytes(), &input[..]);
            }
        }

        #[test]
        fn from_basename_never_panics_on_strings(input in "\\PC{0,260}") {
            let _ = StorePath::from_basename(input.as_bytes());
            let _ = StorePath::from_absolute_path(input.as_bytes());
        }

        #[test]
        fn valid_basenames_round_trip(
            hash in "[0-9a-df-np-sv-z]{32}",
            name in "[0-9A-Za-z+_?=][0-9A-Za-z+\\-._?=]{0,210}",
        ) {
            let input = format!("{hash}-{name}");
            let sp = StorePath::from_basename(input.as_bytes()).unwrap();
            prop_assert_eq!(sp.to_string(), input);
        }
    }
}
