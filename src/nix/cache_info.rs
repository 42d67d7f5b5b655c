//! Parser for a binary cache's `nix-cache-info` file (`StoreDir`, `WantMassQuery`, `Priority`).
//!
//! The file is `Key: value` lines. Following Nix (`BinaryCacheStore::init`), keys and values are
//! trimmed, lines without a colon and unknown keys are ignored, and a missing `StoreDir` means
//! the default store dir, `/nix/store`. Stricter than Nix: the input must be UTF-8 of at most
//! [`MAX_CACHE_INFO_SIZE`] bytes, a known key may appear only once, `WantMassQuery` must be `0`
//! or `1`, and `Priority` must be a plain decimal number.

use crate::nix::snippet;
use crate::nix::store_path::STORE_DIR;

/// Largest `nix-cache-info` accepted, in bytes. Real ones are under 100 bytes.
pub const MAX_CACHE_INFO_SIZE: usize = 64 * 1024;

const KEY_STORE_DIR: &str = "StoreDir";
const KEY_WANT_MASS_QUERY: &str = "WantMassQuery";
const KEY_PRIORITY: &str = "Priority";

/// Errors from parsing `nix-cache-info`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input exceeds [`MAX_CACHE_INFO_SIZE`].
    #[error("nix-cache-info too large: {size} bytes (max {MAX_CACHE_INFO_SIZE})")]
    TooLarge {
        /// Input size in bytes.
        size: usize,
    },
    /// The input is not UTF-8.
    #[error("nix-cache-info is not valid utf-8")]
    NotUtf8,
    /// A known key appears twice.
    #[error("duplicate {0} field in nix-cache-info")]
    DuplicateField(&'static str),
    /// `WantMassQuery` is not `0` or `1`.
    #[error("invalid WantMassQuery: {0:?} (expected 0 or 1)")]
    InvalidWantMassQuery(String),
    /// `Priority` is not a plain decimal `u64`.
    #[error("invalid Priority: {0:?} is not a decimal number")]
    InvalidPriority(String),
    /// `StoreDir` is not ours (see [`CacheInfo::check_store_dir`]).
    #[error("cache StoreDir is {0:?}, but storefs serves {STORE_DIR}")]
    WrongStoreDir(String),
}

/// A parsed `nix-cache-info`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct CacheInfo {
    /// `StoreDir`; `/nix/store` when absent.
    pub store_dir: String,
    /// `WantMassQuery: 1`; false when absent.
    pub want_mass_query: bool,
    /// `Priority` (lower is preferred); `None` when absent.
    pub priority: Option<u64>,
}

impl CacheInfo {
    /// Parses `nix-cache-info` (see the module docs). Does not check `StoreDir`.
    ///
    /// # Errors
    ///
    /// Oversized or non-UTF-8 input, a duplicate key, or a bad `WantMassQuery`/`Priority`.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        if input.len() > MAX_CACHE_INFO_SIZE {
            return Err(Error::TooLarge { size: input.len() });
        }
        let text = std::str::from_utf8(input).map_err(|_| Error::NotUtf8)?;
        let (mut store_dir, mut want_mass_query, mut priority) = (None, None, None);
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let (key, value) = (key.trim(), value.trim());
            let (slot, key) = match key {
                KEY_STORE_DIR => (&mut store_dir, KEY_STORE_DIR),
                KEY_WANT_MASS_QUERY => (&mut want_mass_query, KEY_WANT_MASS_QUERY),
                KEY_PRIORITY => (&mut priority, KEY_PRIORITY),
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(Error::DuplicateField(key));
            }
        }
        let want_mass_query = match want_mass_query {
            None | Some("0") => false,
            Some("1") => true,
            Some(other) => return Err(Error::InvalidWantMassQuery(snippet(other.as_bytes()))),
        };
        let priority = priority
            .map(|p| {
                let invalid = || Error::InvalidPriority(snippet(p.as_bytes()));
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(invalid());
                }
                p.parse::<u64>().map_err(|_| invalid())
            })
            .transpose()?;
        Ok(Self { store_dir: store_dir.unwrap_or(STORE_DIR).to_owned(), want_mass_query, priority })
    }

    /// Refuses a cache whose `StoreDir` is not `/nix/store` (its paths would be useless to us,
    /// and their signatures would not verify).
    ///
    /// # Errors
    ///
    /// [`Error::WrongStoreDir`] naming the cache's store dir.
    pub fn check_store_dir(&self) -> Result<(), Error> {
        if self.store_dir == STORE_DIR {
            Ok(())
        } else {
            Err(Error::WrongStoreDir(snippet(self.store_dir.as_bytes())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn info(store_dir: &str, want_mass_query: bool, priority: Option<u64>) -> CacheInfo {
        CacheInfo { store_dir: store_dir.to_owned(), want_mass_query, priority }
    }

    #[test]
    fn accepts() {
        let cases: &[(&str, &str, CacheInfo)] = &[
            (
                "cache_nixos_org",
                "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n",
                info("/nix/store", true, Some(40)),
            ),
            ("written_by_nix_copy", "StoreDir: /nix/store\n", info("/nix/store", false, None)),
            ("empty_means_defaults", "", info("/nix/store", false, None)),
            ("no_final_newline", "Priority: 30", info("/nix/store", false, Some(30))),
            (
                "crlf",
                "StoreDir: /nix/store\r\nPriority: 41\r\n",
                info("/nix/store", false, Some(41)),
            ),
            ("extra_spaces", "  Priority :  7  \n", info("/nix/store", false, Some(7))),
            ("no_space", "WantMassQuery:1\n", info("/nix/store", true, None)),
            ("explicit_false", "WantMassQuery: 0\n", info("/nix/store", false, None)),
            ("unknown_and_junk_lines", "Foo: bar\njunk\n\n", info("/nix/store", false, None)),
            ("other_store_dir", "StoreDir: /gnu/store\n", info("/gnu/store", false, None)),
        ];
        for (name, input, want) in cases {
            let got = CacheInfo::parse(input.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&got, want, "case {name}");
        }
    }

    #[test]
    fn rejects() {
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("duplicate_store_dir", b"StoreDir: /a\nStoreDir: /b\n".to_vec(), "duplicate StoreDir"),
            ("duplicate_priority", b"Priority: 1\nPriority: 1\n".to_vec(), "duplicate Priority"),
            ("mass_query_yes", b"WantMassQuery: yes\n".to_vec(), "invalid WantMassQuery: \"yes\""),
            ("priority_negative", b"Priority: -1\n".to_vec(), "invalid Priority: \"-1\""),
            ("priority_empty", b"Priority:\n".to_vec(), "invalid Priority: \"\""),
            ("priority_overflow", b"Priority: 99999999999999999999\n".to_vec(), "invalid Priority"),
            ("non_utf8", b"StoreDir: /nix/\xff\n".to_vec(), "not valid utf-8"),
            ("too_large", vec![b'\n'; MAX_CACHE_INFO_SIZE + 1], "too large"),
        ];
        for (name, input, want) in cases {
            let err = CacheInfo::parse(&input).expect_err(name).to_string();
            assert!(err.contains(want), "case {name}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn store_dir_check() {
        assert!(info("/nix/store", false, None).check_store_dir().is_ok());
        for bad in ["/gnu/store", "/nix/store/", "", "/nix/store2"] {
            let err = info(bad, false, None).check_store_dir().unwrap_err();
            assert_eq!(err, Error::WrongStoreDir(bad.to_owned()), "case {bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = CacheInfo::parse(&input);
        }

        #[test]
        fn parse_never_panics_on_text(
            input in "((StoreDir|Priority|WantMassQuery)?[: ]?\\PC{0,8}\n?){0,6}",
        ) {
            let _ = CacheInfo::parse(input.as_bytes());
        }
    }
}
