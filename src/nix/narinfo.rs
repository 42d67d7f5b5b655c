//! Parser and printer for `.narinfo` files, and their signed fingerprint. Pure: no I/O, no async.
//!
//! # Format
//!
//! A narinfo is UTF-8 text of `Key: value` lines. This parser is at least as strict as Nix's
//! (`NixOS/nix: src/libstore/nar-info.cc`) and stricter where parsers could disagree:
//!
//! - at most [`MAX_NARINFO_SIZE`] bytes, valid UTF-8, no `\r` and no NUL anywhere;
//! - every line, *including the last*, ends in `\n`: a missing final newline is rejected, as
//!   Nix does (it looks for the `\n` after each value). So are blank lines;
//! - a line is a key, `:`, a space and the value (the key ends at the first `:`);
//! - required: `StorePath` (an absolute path in [`STORE_DIR`](crate::nix::store_path::STORE_DIR)),
//!   `URL` (non-empty), `NarHash`, `NarSize` (plain decimal, greater than zero);
//! - optional: `Compression` (missing means bzip2, Nix's historical default), `FileHash`,
//!   `FileSize`, `References` (space-separated basenames, possibly none), `Deriver`
//!   (`unknown-deriver` means none), `CA`; repeatable: `Sig`;
//! - any second occurrence of a single-valued key is an error, because "first wins" and
//!   "last wins" parsers would see different narinfos; unknown keys are ignored.
//!
//! Only `StorePath`, `NarHash`, `NarSize` and `References` are covered by the signature (see
//! [`NarInfo::fingerprint`]); every other field is controlled by whoever serves the file.

use std::fmt;

use crate::nix::hash::{self, NarHash};
use crate::nix::snippet;
use crate::nix::store_path::{self, StorePath};

/// Largest narinfo accepted, in bytes. Real ones are well under 10 KiB.
pub const MAX_NARINFO_SIZE: usize = 1 << 20;

/// The `Deriver:` value that means "no deriver".
const UNKNOWN_DERIVER: &str = "unknown-deriver";
/// Version prefix of the signed fingerprint.
const FINGERPRINT_VERSION: &str = "1";

const KEY_STORE_PATH: &str = "StorePath";
const KEY_URL: &str = "URL";
const KEY_COMPRESSION: &str = "Compression";
const KEY_FILE_HASH: &str = "FileHash";
const KEY_FILE_SIZE: &str = "FileSize";
const KEY_NAR_HASH: &str = "NarHash";
const KEY_NAR_SIZE: &str = "NarSize";
const KEY_REFERENCES: &str = "References";
const KEY_DERIVER: &str = "Deriver";
const KEY_SIG: &str = "Sig";
const KEY_CA: &str = "CA";

/// Errors from parsing a narinfo.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The input exceeds [`MAX_NARINFO_SIZE`].
    #[error("narinfo too large: {size} bytes (max {MAX_NARINFO_SIZE})")]
    TooLarge {
        /// Input size in bytes.
        size: usize,
    },
    /// The input is not UTF-8.
    #[error("narinfo is not valid utf-8 (at byte {valid_up_to})")]
    NotUtf8 {
        /// Length of the valid prefix.
        valid_up_to: usize,
    },
    /// A carriage return or NUL byte.
    #[error("line {line} contains a forbidden {ch:?} character")]
    ForbiddenChar {
        /// 1-based line number.
        line: usize,
        /// `'\r'` or `'\0'`.
        ch: char,
    },
    /// The last line does not end in `\n`.
    #[error("line {line} does not end with a newline")]
    MissingFinalNewline {
        /// 1-based line number of the unterminated line.
        line: usize,
    },
    /// A line that is not `Key: value`.
    #[error("line {line} is not of the form \"Key: value\": {text:?}")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// The line (excerpt).
        text: String,
    },
    /// A single-valued key appears twice.
    #[error("duplicate {key} field on line {line}")]
    DuplicateField {
        /// The key.
        key: &'static str,
        /// 1-based line number of the second occurrence.
        line: usize,
    },
    /// A required key is absent.
    #[error("missing {0} field")]
    MissingField(&'static str),
    /// `StorePath` is not an absolute store path.
    #[error("invalid StorePath: {0}")]
    StorePath(#[source] store_path::Error),
    /// `URL` is empty.
    #[error("empty URL field")]
    EmptyUrl,
    /// `NarHash` does not parse.
    #[error("invalid NarHash: {0}")]
    NarHash(#[source] hash::Error),
    /// A size field is not a plain decimal `u64`.
    #[error("invalid {field}: {value:?} is not a decimal number that fits in 64 bits")]
    InvalidNumber {
        /// `NarSize` or `FileSize`.
        field: &'static str,
        /// The value (excerpt).
        value: String,
    },
    /// `NarSize: 0`.
    #[error("invalid NarSize: must be greater than 0")]
    ZeroNarSize,
    /// `Compression` names a method storefs does not know.
    #[error("unknown Compression: {0:?}")]
    UnknownCompression(String),
    /// A `References` entry is not a store path basename.
    #[error("reference #{index} is not a store path basename: {source}")]
    Reference {
        /// 0-based position in the `References` line.
        index: usize,
        /// Why it was rejected.
        source: store_path::Error,
    },
    /// `Deriver` is neither `unknown-deriver` nor a store path basename.
    #[error("invalid Deriver: {0}")]
    Deriver(#[source] store_path::Error),
}

/// How the file at `URL` is compressed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Compression {
    /// `none`: the file is the NAR itself.
    None,
    /// `xz`.
    Xz,
    /// `zstd`.
    Zstd,
    /// `bzip2`; also what a missing `Compression` line means.
    Bzip2,
    /// `br`.
    Brotli,
}

impl Compression {
    /// All variants, for tests and help texts.
    pub const ALL: [Self; 5] = [Self::None, Self::Xz, Self::Zstd, Self::Bzip2, Self::Brotli];

    /// Parses the value of a `Compression:` line (exact, lower-case names as Nix writes them).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownCompression`] naming the value.
    pub fn parse(s: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| Error::UnknownCompression(snippet(s.as_bytes())))
    }

    /// The name Nix uses.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Zstd => "zstd",
            Self::Bzip2 => "bzip2",
            Self::Brotli => "br",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed narinfo. Fields that are not signed are kept verbatim.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct NarInfo {
    /// `StorePath` (signed).
    pub store_path: StorePath,
    /// `URL`, relative to the cache base; unsigned, so resolve it with care.
    pub url: String,
    /// `Compression` of the file at `URL`; unsigned.
    pub compression: Compression,
    /// `NarHash` (signed).
    pub nar_hash: NarHash,
    /// `NarSize`, always greater than zero (signed).
    pub nar_size: u64,
    /// `FileHash`, verbatim; unsigned.
    pub file_hash: Option<String>,
    /// `FileSize`; unsigned, a hint only.
    pub file_size: Option<u64>,
    /// `References`, in file order (signed).
    pub references: Vec<StorePath>,
    /// `Deriver`; `None` when absent or `unknown-deriver`. Unsigned.
    pub deriver: Option<StorePath>,
    /// Raw `Sig` values in file order, kept even if malformed; checked at verify time.
    pub signatures: Vec<String>,
    /// `CA`, verbatim; unsigned.
    pub ca: Option<String>,
}

/// Single-valued fields seen so far while parsing.
#[derive(Default)]
struct Fields<'a> {
    store_path: Option<&'a str>,
    url: Option<&'a str>,
    compression: Option<&'a str>,
    nar_hash: Option<&'a str>,
    nar_size: Option<&'a str>,
    file_hash: Option<&'a str>,
    file_size: Option<&'a str>,
    references: Option<&'a str>,
    deriver: Option<&'a str>,
    ca: Option<&'a str>,
    signatures: Vec<&'a str>,
}

impl NarInfo {
    /// Parses a narinfo (see the module docs for the exact rules).
    ///
    /// # Errors
    ///
    /// Any deviation from the format; the error names the line or the field.
    pub fn parse(input: &[u8]) -> Result<Self, Error> {
        if input.len() > MAX_NARINFO_SIZE {
            return Err(Error::TooLarge { size: input.len() });
        }
        let text = std::str::from_utf8(input)
            .map_err(|e| Error::NotUtf8 { valid_up_to: e.valid_up_to() })?;
        let fields = split_fields(text)?;

        let store_path = fields.store_path.ok_or(Error::MissingField(KEY_STORE_PATH))?;
        let store_path =
            StorePath::from_absolute_path(store_path.as_bytes()).map_err(Error::StorePath)?;
        let url = fields.url.ok_or(Error::MissingField(KEY_URL))?;
        if url.is_empty() {
            return Err(Error::EmptyUrl);
        }
        let nar_hash = fields.nar_hash.ok_or(Error::MissingField(KEY_NAR_HASH))?;
        let nar_hash = NarHash::parse(nar_hash).map_err(Error::NarHash)?;
        let nar_size = fields.nar_size.ok_or(Error::MissingField(KEY_NAR_SIZE))?;
        let nar_size = parse_decimal(KEY_NAR_SIZE, nar_size)?;
        if nar_size == 0 {
            return Err(Error::ZeroNarSize);
        }
        let compression = fields.compression.map_or(Ok(Compression::Bzip2), Compression::parse)?;
        let file_size = fields.file_size.map(|v| parse_decimal(KEY_FILE_SIZE, v)).transpose()?;
        let references = fields.references.map_or(Ok(Vec::new()), parse_references)?;
        let deriver = match fields.deriver {
            None | Some(UNKNOWN_DERIVER) => None,
            Some(d) => Some(StorePath::from_basename(d.as_bytes()).map_err(Error::Deriver)?),
        };
        Ok(Self {
            store_path,
            url: url.to_owned(),
            compression,
            nar_hash,
            nar_size,
            file_hash: fields.file_hash.map(str::to_owned),
            file_size,
            references,
            deriver,
            signatures: fields.signatures.into_iter().map(str::to_owned).collect(),
            ca: fields.ca.map(str::to_owned),
        })
    }

    /// The string that `Sig` lines sign: `1;<store path>;sha256:<nixbase32>;<NarSize>;<refs>`,
    /// where `<refs>` are the references as full paths, sorted, comma-separated.
    ///
    /// References are de-duplicated, because Nix keeps them in a set.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let mut refs: Vec<String> =
            self.references.iter().map(StorePath::to_absolute_path).collect();
        refs.sort_unstable();
        refs.dedup();
        format!(
            "{FINGERPRINT_VERSION};{};{};{};{}",
            self.store_path.to_absolute_path(),
            self.nar_hash.to_nix_string(),
            self.nar_size,
            refs.join(",")
        )
    }
}

impl fmt::Display for NarInfo {
    /// Writes canonical narinfo text, in Nix's field order. Parsing the output of a parsed
    /// narinfo gives back an equal value; a hand-built value with, for example, a newline in
    /// `url` will not round-trip.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{KEY_STORE_PATH}: {}", self.store_path.to_absolute_path())?;
        writeln!(f, "{KEY_URL}: {}", self.url)?;
        writeln!(f, "{KEY_COMPRESSION}: {}", self.compression)?;
        if let Some(file_hash) = &self.file_hash {
            writeln!(f, "{KEY_FILE_HASH}: {file_hash}")?;
        }
        if let Some(file_size) = self.file_size {
            writeln!(f, "{KEY_FILE_SIZE}: {file_size}")?;
        }
        writeln!(f, "{KEY_NAR_HASH}: {}", self.nar_hash)?;
        writeln!(f, "{KEY_NAR_SIZE}: {}", self.nar_size)?;
        write!(f, "{KEY_REFERENCES}:")?;
        if self.references.is_empty() {
            // Nix writes "References: " with a trailing space; so do we.
            f.write_str(" ")?;
        }
        for reference in &self.references {
            write!(f, " {reference}")?;
        }
        writeln!(f)?;
        if let Some(deriver) = &self.deriver {
            writeln!(f, "{KEY_DERIVER}: {deriver}")?;
        }
        for sig in &self.signatures {
            writeln!(f, "{KEY_SIG}: {sig}")?;
        }
        if let Some(ca) = &self.ca {
            writeln!(f, "{KEY_CA}: {ca}")?;
        }
        Ok(())
    }
}

/// Splits the text into lines and collects the fields, enforcing line syntax and uniqueness.
fn split_fields(text: &str) -> Result<Fields<'_>, Error> {
    let mut fields = Fields::default();
    let mut rest = text;
    let mut line_no = 0;
    while !rest.is_empty() {
        line_no += 1;
        let Some((line, after)) = rest.split_once('\n') else {
            check_chars(rest, line_no)?;
            return Err(Error::MissingFinalNewline { line: line_no });
        };
        rest = after;
        check_chars(line, line_no)?;
        let (key, value) = line
            .split_once(':')
            .and_then(|(key, value)| Some((key, value.strip_prefix(' ')?)))
            .ok_or_else(|| Error::MalformedLine {
                line: line_no,
                text: snippet(line.as_bytes()),
            })?;
        let slot = match key {
            KEY_STORE_PATH => (&mut fields.store_path, KEY_STORE_PATH),
            KEY_URL => (&mut fields.url, KEY_URL),
            KEY_COMPRESSION => (&mut fields.compression, KEY_COMPRESSION),
            KEY_NAR_HASH => (&mut fields.nar_hash, KEY_NAR_HASH),
            KEY_NAR_SIZE => (&mut fields.nar_size, KEY_NAR_SIZE),
            KEY_FILE_HASH => (&mut fields.file_hash, KEY_FILE_HASH),
            KEY_FILE_SIZE => (&mut fields.file_size, KEY_FILE_SIZE),
            KEY_REFERENCES => (&mut fields.references, KEY_REFERENCES),
            KEY_DERIVER => (&mut fields.deriver, KEY_DERIVER),
            KEY_CA => (&mut fields.ca, KEY_CA),
            KEY_SIG => {
                fields.signatures.push(value);
                continue;
            }
            // Unknown keys are ignored, for forward compatibility (as Nix does).
            _ => continue,
        };
        match slot {
            (Some(_), key) => return Err(Error::DuplicateField { key, line: line_no }),
            (empty, _) => *empty = Some(value),
        }
    }
    Ok(fields)
}

/// Rejects `\r` and NUL in one line.
fn check_chars(line: &str, line_no: usize) -> Result<(), Error> {
    match line.chars().find(|&c| c == '\r' || c == '\0') {
        Some(ch) => Err(Error::ForbiddenChar { line: line_no, ch }),
        None => Ok(()),
    }
}

/// Parses a plain decimal `u64`: digits only, no sign, no spaces.
fn parse_decimal(field: &'static str, value: &str) -> Result<u64, Error> {
    let invalid = || Error::InvalidNumber { field, value: snippet(value.as_bytes()) };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    value.parse().map_err(|_| invalid())
}

/// Parses the space-separated `References` value. Like Nix, runs of spaces are one separator.
fn parse_references(value: &str) -> Result<Vec<StorePath>, Error> {
    value
        .split(' ')
        .filter(|token| !token.is_empty())
        .enumerate()
        .map(|(index, token)| {
            StorePath::from_basename(token.as_bytes())
                .map_err(|source| Error::Reference { index, source })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Written by `nix copy --to file://...?compression=xz` (Nix 2.8.0), signed by `test-1`.
    pub(crate) const NIX_WITH_REFS: &str = "\
StorePath: /nix/store/173hqv0jwmlqimly794mayygb24a0d5w-with-refs-1.0
URL: nar/1702jmxp1cxwld2n7wzzz4kivcizbns8kh0xl6c75bmkdczv755i.nar.xz
Compression: xz
FileHash: sha256:1702jmxp1cxwld2n7wzzz4kivcizbns8kh0xl6c75bmkdczv755i
FileSize: 220
NarHash: sha256:155inql19dqrifvw57f2kzgykwfcfp18by163kjl2hswf4gp3ns7
NarSize: 344
References: 3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt
Deriver: 00000000000000000000000000000000-foo.drv
Sig: test-1:7qA0Q+8RCZC2JNCVRk2uj0gZJLz6luMbGXvAmoTZMFI/4t4biM7kBoT3zFvsRDx8VXXvu3ePp3YsKI2h6JK2Cw==
";

    fn minimal() -> String {
        "StorePath: /nix/store/3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt\n\
         URL: nar/x.nar\n\
         NarHash: sha256:1hx9g0vnr044mhslkz8j78a8fgsjx710a20mfg01wcslcvxkndkq\n\
         NarSize: 128\n"
            .to_owned()
    }

    #[test]
    fn parses_nix_written_narinfo() {
        let info = NarInfo::parse(NIX_WITH_REFS.as_bytes()).unwrap();
        assert_eq!(info.store_path.name(), "with-refs-1.0");
        assert_eq!(info.compression, Compression::Xz);
        assert_eq!(info.nar_size, 344);
        assert_eq!(info.file_size, Some(220));
        assert_eq!(info.references.len(), 1);
        assert_eq!(info.deriver.as_ref().unwrap().name(), "foo.drv");
        assert_eq!(info.signatures.len(), 1);
        assert_eq!(info.ca, None);
        assert_eq!(info.to_string(), NIX_WITH_REFS, "Display reproduces Nix's own text");
        assert_eq!(
            info.fingerprint(),
            "1;/nix/store/173hqv0jwmlqimly794mayygb24a0d5w-with-refs-1.0;\
             sha256:155inql19dqrifvw57f2kzgykwfcfp18by163kjl2hswf4gp3ns7;344;\
             /nix/store/3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt"
        );
    }

    #[test]
    fn minimal_defaults() {
        let info = NarInfo::parse(minimal().as_bytes()).unwrap();
        assert_eq!(info.compression, Compression::Bzip2, "missing Compression means bzip2");
        assert!(info.references.is_empty());
        assert_eq!(info.deriver, None);
        assert!(info.signatures.is_empty());
        assert_eq!(info.file_hash, None);
        assert_eq!(info.file_size, None);
    }

    #[test]
    fn accepts() {
        let base = minimal();
        type Check = fn(&NarInfo) -> bool;
        let cases: Vec<(&str, String, Check)> = vec![
            ("unknown_key_ignored", format!("{base}Foo: bar\n"), |i| i.url == "nar/x.nar"),
            ("unknown_deriver", format!("{base}Deriver: unknown-deriver\n"), |i| {
                i.deriver.is_none()
            }),
            ("empty_references", format!("{base}References: \n"), |i| i.references.is_empty()),
            (
                "references_extra_spaces",
                format!(
                    "{base}References:  00000000000000000000000000000000-a  \
                     11111111111111111111111111111111-b \n"
                ),
                |i| i.references.len() == 2,
            ),
            ("many_sigs", format!("{base}Sig: a:b\nSig: c:d\nSig: garbage\n"), |i| {
                i.signatures == ["a:b", "c:d", "garbage"]
            }),
            ("zstd", format!("{base}Compression: zstd\n"), |i| i.compression == Compression::Zstd),
            ("none", format!("{base}Compression: none\n"), |i| i.compression == Compression::None),
            ("brotli", format!("{base}Compression: br\n"), |i| {
                i.compression == Compression::Brotli
            }),
            ("value_with_colon_space", format!("{base}CA: fixed:r:sha256: x\n"), |i| {
                i.ca.as_deref() == Some("fixed:r:sha256: x")
            }),
            (
                "nar_size_max",
                base.replace("NarSize: 128", &format!("NarSize: {}", u64::MAX)),
                |i| i.nar_size == u64::MAX,
            ),
            (
                "sri_nar_hash",
                base.replace(
                    "sha256:1hx9g0vnr044mhslkz8j78a8fgsjx710a20mfg01wcslcvxkndkq",
                    "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
                ),
                |i| {
                    i.nar_hash
                        .to_string()
                        .ends_with("1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s")
                },
            ),
        ];
        for (name, input, check) in cases {
            let info =
                NarInfo::parse(input.as_bytes()).unwrap_or_else(|e| panic!("case {name}: {e}"));
            assert!(check(&info), "case {name}: {info:?}");
            let again = NarInfo::parse(info.to_string().as_bytes()).unwrap();
            assert_eq!(again, info, "case {name}: Display round trip");
        }
    }

    #[test]
    fn rejects() {
        const H: &str = "3g040cf1izicfsr8qv0x7sk1n09nspj5";
        const SHA512: &str = "sha512:\
            2gs8k559z4rlahfx0y688s49m2vvszylcikrfinm30ly9rak69236nkam5ydvly1\
                              ai7xac99vxfc4ii84hawjbk876blyk1jfhkbbyx";
        let base = minimal();
        let without = |key: &str| -> String {
            base.lines().filter(|l| !l.starts_with(key)).map(|l| format!("{l}\n")).collect()
        };
        let with_value = |key: &str, value: &str| -> String {
            base.lines()
                .map(|l| {
                    if l.starts_with(key) { format!("{key}: {value}\n") } else { format!("{l}\n") }
                })
                .collect()
        };
        let bad_ref = format!("References: {H}-ok");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", b"".to_vec(), "missing StorePath field"),
            ("missing_store_path", without("StorePath").into(), "missing StorePath field"),
            ("missing_url", without("URL").into(), "missing URL field"),
            ("missing_nar_hash", without("NarHash").into(), "missing NarHash field"),
            ("missing_nar_size", without("NarSize").into(), "missing NarSize field"),
            ("empty_url", with_value("URL", "").into(), "empty URL field"),
            ("nar_size_zero", with_value("NarSize", "0").into(), "NarSize: must be greater than 0"),
            ("nar_size_negative", with_value("NarSize", "-1").into(), "invalid NarSize: \"-1\""),
            ("nar_size_plus", with_value("NarSize", "+1").into(), "invalid NarSize: \"+1\""),
            ("nar_size_space", with_value("NarSize", " 1").into(), "invalid NarSize: \" 1\""),
            ("nar_size_trailing", with_value("NarSize", "1 ").into(), "invalid NarSize"),
            ("nar_size_hex", with_value("NarSize", "0x10").into(), "invalid NarSize"),
            ("nar_size_empty", with_value("NarSize", "").into(), "invalid NarSize"),
            (
                "nar_size_overflow",
                with_value("NarSize", "18446744073709551616").into(),
                "invalid NarSize: \"18446744073709551616\"",
            ),
            ("file_size_bad", format!("{base}FileSize: 1e3\n").into(), "invalid FileSize"),
            (
                "nar_hash_md5",
                with_value("NarHash", "md5:3jgzhjhz9zjvbb0kyj7jc500ch").into(),
                "invalid NarHash: unsupported hash algorithm \"md5\"",
            ),
            (
                "nar_hash_sha512",
                with_value("NarHash", SHA512).into(),
                "invalid NarHash: unsupported hash algorithm \"sha512\"",
            ),
            ("nar_hash_short", with_value("NarHash", "sha256:1hx9g0").into(), "invalid NarHash"),
            (
                "other_store_dir",
                with_value("StorePath", &format!("/gnu/store/{H}-hello.txt")).into(),
                "invalid StorePath",
            ),
            (
                "store_path_basename_only",
                with_value("StorePath", &format!("{H}-hello.txt")).into(),
                "invalid StorePath",
            ),
            (
                "store_path_subpath",
                with_value("StorePath", &format!("/nix/store/{H}-hello.txt/x")).into(),
                "invalid StorePath",
            ),
            (
                "unknown_compression",
                format!("{base}Compression: lz4\n").into(),
                "unknown Compression: \"lz4\"",
            ),
            (
                "uppercase_compression",
                format!("{base}Compression: XZ\n").into(),
                "unknown Compression: \"XZ\"",
            ),
            (
                "reference_slash",
                format!("{bad_ref} {H}-a/b\n{base}").into(),
                "reference #1 is not a store path basename",
            ),
            ("reference_dotdot", format!("{bad_ref} {H}-..\n{base}").into(), "reference #1"),
            ("reference_dot_dash", format!("{bad_ref} {H}-.-x\n{base}").into(), "reference #1"),
            (
                "reference_letter_e",
                format!("References: eg040cf1izicfsr8qv0x7sk1n09nspj5-a\n{base}").into(),
                "reference #0",
            ),
            (
                "reference_capitals",
                format!("References: 3G040CF1IZICFSR8QV0X7SK1N09NSPJ5-a\n{base}").into(),
                "reference #0",
            ),
            (
                "reference_absolute",
                format!("References: /nix/store/{H}-a\n{base}").into(),
                "reference #0",
            ),
            (
                "reference_name_too_long",
                format!("References: {H}-{}\n{base}", "a".repeat(212)).into(),
                "reference #0",
            ),
            ("deriver_bad", format!("{base}Deriver: foo.drv\n").into(), "invalid Deriver"),
            ("crlf", base.replace('\n', "\r\n").into(), "line 1 contains a forbidden '\\r'"),
            (
                "cr_in_last_value",
                format!("{base}Sig: a:b\r\n").into(),
                "line 5 contains a forbidden '\\r'",
            ),
            ("nul", format!("{base}Foo: a\0b\n").into(), "line 5 contains a forbidden '\\0'"),
            (
                "no_final_newline",
                base.trim_end_matches('\n').into(),
                "line 4 does not end with a newline",
            ),
            ("blank_line", format!("{base}\n").into(), "line 5 is not of the form"),
            ("no_colon", format!("{base}garbage\n").into(), "line 5 is not of the form"),
            ("no_space_after_colon", format!("{base}Sig:x\n").into(), "line 5 is not of the form"),
            ("non_utf8", [base.as_bytes(), b"Foo: \xff\n"].concat(), "not valid utf-8"),
            ("too_large", vec![b'a'; MAX_NARINFO_SIZE + 1], "narinfo too large"),
        ];
        let mut cases = cases;
        for key in [
            "StorePath",
            "URL",
            "Compression",
            "NarHash",
            "NarSize",
            "FileHash",
            "FileSize",
            "References",
            "Deriver",
            "CA",
        ] {
            let line = match key {
                "StorePath" => "StorePath: /nix/store/3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt",
                "URL" => "URL: nar/x.nar",
                "Compression" => "Compression: xz",
                "NarHash" => "NarHash: sha256:1hx9g0vnr044mhslkz8j78a8fgsjx710a20mfg01wcslcvxkndkq",
                "NarSize" => "NarSize: 128",
                "FileHash" => "FileHash: sha256:x",
                "FileSize" => "FileSize: 1",
                "References" => "References: ",
                "Deriver" => "Deriver: unknown-deriver",
                _ => "CA: fixed:r:sha256:x",
            };
            let input = format!("{line}\n{base}{line}\n");
            let msg: &'static str = Box::leak(format!("duplicate {key} field").into_boxed_str());
            cases.push(("duplicate", input.into_bytes(), msg));
        }
        for (name, input, want) in cases {
            let err = NarInfo::parse(&input).expect_err(name).to_string();
            assert!(err.contains(want), "case {name}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn size_limit_is_inclusive() {
        let base = minimal();
        let pad = MAX_NARINFO_SIZE - base.len() - "X: \n".len();
        let input = format!("{base}X: {}\n", "a".repeat(pad));
        assert_eq!(input.len(), MAX_NARINFO_SIZE);
        NarInfo::parse(input.as_bytes()).unwrap();
    }

    #[test]
    fn fingerprint_sorts_and_dedups_references() {
        let input = format!(
            "{}References: zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b 00000000000000000000000000000000-a \
             zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b\n",
            minimal()
        );
        let info = NarInfo::parse(input.as_bytes()).unwrap();
        assert!(info.fingerprint().ends_with(
            ";128;/nix/store/00000000000000000000000000000000-a,\
             /nix/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b"
        ));
    }

    #[test]
    fn fingerprint_normalises_nar_hash() {
        let info = NarInfo::parse(
            minimal()
                .replace(
                    "sha256:1hx9g0vnr044mhslkz8j78a8fgsjx710a20mfg01wcslcvxkndkq",
                    "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                )
                .as_bytes(),
        )
        .unwrap();
        assert!(
            info.fingerprint()
                .contains(";sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s;")
        );
    }

    #[test]
    fn compression_names() {
        for c in Compression::ALL {
            assert_eq!(Compression::parse(c.as_str()).unwrap(), c);
        }
        assert!(Compression::parse("").is_err());
        assert!(Compression::parse("gzip").is_err());
    }

    fn arb_store_path() -> impl Strategy<Value = StorePath> {
        ("[0-9a-df-np-sv-z]{32}", "[0-9A-Za-z_+?=][0-9A-Za-z+\\-._?=]{0,30}").prop_map(
            |(hash, name)| StorePath::from_basename(format!("{hash}-{name}").as_bytes()).unwrap(),
        )
    }

    /// A value with no newline, CR or NUL (what a parsed narinfo can hold).
    fn arb_value() -> impl Strategy<Value = String> {
        "[^\r\n\0]{0,40}"
    }

    prop_compose! {
        fn arb_narinfo()(
            store_path in arb_store_path(),
            url in "[^\r\n\0]{1,40}",
            compression in proptest::sample::select(Compression::ALL.to_vec()),
            nar_hash in any::<[u8; 32]>(),
            nar_size in 1..=u64::MAX,
            file_hash in proptest::option::of(arb_value()),
            file_size in proptest::option::of(any::<u64>()),
            references in proptest::collection::vec(arb_store_path(), 0..5),
            deriver in proptest::option::of(arb_store_path()),
            signatures in proptest::collection::vec(arb_value(), 0..3),
            ca in proptest::option::of(arb_value()),
        ) -> NarInfo {
            NarInfo {
                store_path, url, compression, nar_hash: NarHash::from_digest(nar_hash), nar_size,
                file_hash, file_size, references, deriver, signatures, ca,
            }
        }
    }

    proptest! {
        #[test]
        fn display_round_trips(info in arb_narinfo()) {
            let text = info.to_string();
            prop_assert_eq!(NarInfo::parse(text.as_bytes()).unwrap(), info);
        }

        #[test]
        fn parse_never_panics_on_bytes(input in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = NarInfo::parse(&input);
        }

        #[test]
        fn parse_never_panics_on_text(input in "(\\PC|\n|\r|\0){0,400}") {
            let _ = NarInfo::parse(input.as_bytes());
        }

        #[test]
        fn parse_never_panics_on_mutated_narinfo(
            pos in 0..NIX_WITH_REFS.len(),
            len in 0..20usize,
            insert in "(\\PC|\n|\r|:| ){0,8}",
        ) {
            let mut bytes = NIX_WITH_REFS.as_bytes().to_vec();
            let end = (pos + len).min(bytes.len());
            bytes.splice(pos..end, insert.bytes());
            let _ = NarInfo::parse(&bytes);
        }
    }
}
