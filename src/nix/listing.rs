//! Parser for `.ls` NAR listings (JSON, written by caches with `write-nar-listing=1`).
//!
//! `{"version":1,"root":NODE}` where NODE is `{"type":"directory","entries":{NAME:NODE,...}}`,
//! `{"type":"regular","size":N,"executable":true?,"narOffset":N?}` or
//! `{"type":"symlink","target":"..."}`. Unknown object keys are ignored.
//!
//! A listing is **not signed**: treat it as a hint for metadata and offsets, never as a source of
//! truth for file contents. It is still validated as strictly as a NAR would be: entry names must
//! not be empty, `.`, `..`, or contain `/` or NUL, or exceed [`MAX_NAME_LEN`] bytes; names in one
//! directory must be unique; symlink targets must be non-empty, NUL-free and at most
//! [`MAX_TARGET_LEN`] bytes; nesting is limited to [`MAX_DEPTH`]. The caller caps the input size.
//!
//! Depth quirk: serde_json refuses JSON nested more than 128 levels, and each directory costs two
//! levels (node and `entries`), so a listing that nests more than [`MAX_JSON_DIR_DEPTH`]
//! directories (the root included) fails as invalid JSON before [`MAX_DEPTH`] is reached. Such a
//! listing is only a missing hint: the caller falls back to reading the NAR.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

use crate::nix::snippet;

/// The only listing format version.
pub const LISTING_VERSION: u64 = 1;
/// Longest entry name, in bytes (as in NARs).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target, in bytes (as in NARs).
pub const MAX_TARGET_LEN: usize = 4095;
/// Deepest nesting of directories below the root (as in NARs).
pub const MAX_DEPTH: usize = 64;
/// Most nested directories, the root included, that serde_json's recursion limit lets through.
pub const MAX_JSON_DIR_DEPTH: usize = 62;

/// Errors from parsing or querying a listing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not JSON, or not the expected shape.
    #[error("invalid listing json: {0}")]
    Json(#[from] serde_json::Error),
    /// A `version` other than 1.
    #[error("unsupported listing version {0}")]
    UnsupportedVersion(u64),
    /// A bad entry name.
    #[error("invalid entry name {name:?} in directory {dir:?}")]
    InvalidName {
        /// The directory holding the entry, `/`-separated from the root (excerpt).
        dir: String,
        /// The name (excerpt).
        name: String,
    },
    /// A bad symlink target.
    #[error("invalid symlink target at {path:?}")]
    InvalidTarget {
        /// The symlink's path (excerpt).
        path: String,
    },
    /// Directories nested deeper than [`MAX_DEPTH`].
    #[error("listing nests deeper than {MAX_DEPTH} directories at {path:?}")]
    TooDeep {
        /// Path where the limit was hit (excerpt).
        path: String,
    },
    /// [`Listing::locate`] was given a path with a `..` component.
    #[error("path {0:?} has a '..' component")]
    DotDot(String),
}

/// One node of the tree.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum ListingNode {
    /// A directory and its entries, sorted by name.
    Directory {
        /// Entries by name.
        entries: BTreeMap<String, ListingNode>,
    },
    /// A regular file.
    Regular {
        /// Length of the contents, in bytes.
        size: u64,
        /// Whether the file is executable.
        executable: bool,
        /// Offset of the contents within the uncompressed NAR, when the cache wrote one.
        nar_offset: Option<u64>,
    },
    /// A symbolic link.
    Symlink {
        /// The link target, verbatim.
        target: String,
    },
}

/// A parsed `.ls` listing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Listing {
    /// The store path's root node.
    pub root: ListingNode,
}

/// The outer object, read once for `version` alone (so that a future format is reported as
/// such, not as a shape error), then again for `root`. `root` is not kept as a
/// `serde_json::Value`, because that would silently merge duplicate entry names.
#[derive(Deserialize)]
struct RawVersion {
    version: u64,
}

#[derive(Deserialize)]
struct RawListing {
    root: RawNode,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum RawNode {
    Directory {
        #[serde(default)]
        entries: RawEntries,
    },
    Regular {
        size: u64,
        #[serde(default)]
        executable: bool,
        #[serde(rename = "narOffset", default)]
        nar_offset: Option<u64>,
    },
    Symlink {
        target: String,
    },
}

/// Directory entries; unlike a plain map, a repeated name is an error, not "last one wins".
#[derive(Default)]
struct RawEntries(BTreeMap<String, RawNode>);

impl<'de> Deserialize<'de> for RawEntries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = RawEntries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of entry names to nodes")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntries, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((name, node)) = map.next_entry::<String, RawNode>()? {
                    if out.contains_key(&name) {
                        let name = snippet(name.as_bytes());
                        return Err(de::Error::custom(format!("duplicate entry name {name:?}")));
                    }
                    out.insert(name, node);
                }
                Ok(RawEntries(out))
            }
        }
        deserializer.deserialize_map(EntriesVisitor)
    }
}

impl Listing {
    /// Parses and validates a listing (see the module docs).
    ///
    /// # Errors
    ///
    /// Bad JSON or shape, a version other than 1, or an invalid name, target or depth.
    pub fn parse(json: &[u8]) -> Result<Self, Error> {
        // serde_json limits nesting (128 levels) while parsing, so hostile input cannot
        // overflow the stack here or in `convert`.
        let RawVersion { version } = serde_json::from_slice(json)?;
        if version != LISTING_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let RawListing { root } = serde_json::from_slice(json)?;
        let root = convert(root, &mut Vec::new())?;
        Ok(Self { root })
    }

    /// Finds the node at `path` (`/`-separated, relative to the store path root; leading,
    /// trailing and repeated slashes and `.` components are ignored, so `""` is the root).
    /// Symlinks are not followed. `Ok(None)` when nothing is there, including when a
    /// component is not a directory.
    ///
    /// # Errors
    ///
    /// [`Error::DotDot`] when a component is `..`, which is never resolved.
    pub fn locate(&self, path: &str) -> Result<Option<&ListingNode>, Error> {
        let components: Vec<&str> =
            path.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        if components.contains(&"..") {
            return Err(Error::DotDot(snippet(path.as_bytes())));
        }
        let mut node = &self.root;
        for component in components {
            node = match node {
                ListingNode::Directory { entries } => match entries.get(component) {
                    Some(child) => child,
                    None => return Ok(None),
                },
                ListingNode::Regular { .. } | ListingNode::Symlink { .. } => return Ok(None),
            };
        }
        Ok(Some(node))
    }
}

/// Validates a raw node; `path` holds the names from the root to `raw`.
fn convert(raw: RawNode, path: &mut Vec<String>) -> Result<ListingNode, Error> {
    let here = |path: &[String]| snippet(format!("/{}", path.join("/")).as_bytes());
    Ok(match raw {
        RawNode::Regular { size, executable, nar_offset } => {
            ListingNode::Regular { size, executable, nar_offset }
        }
        RawNode::Symlink { target } => {
            let valid =
                !target.is_empty() && target.len() <= MAX_TARGET_LEN && !target.contains('\0');
            if !valid {
                return Err(Error::InvalidTarget { path: here(path) });
            }
            ListingNode::Symlink { target }
        }
        RawNode::Directory { entries } => {
            if path.len() > MAX_DEPTH {
                return Err(Error::TooDeep { path: here(path) });
            }
            let mut out = BTreeMap::new();
            for (name, child) in entries.0 {
                if !is_valid_name(&name) {
                    return Err(Error::InvalidName {
                        dir: here(path),
                        name: snippet(name.as_bytes()),
                    });
                }
                path.push(name);
                let child = convert(child, path)?;
                let name = path.pop().expect("pushed just above");
                out.insert(name, child);
            }
            ListingNode::Directory { entries: out }
        }
    })
}

fn is_valid_name(name: &str) -> bool {
    !matches!(name, "" | "." | "..")
        && name.len() <= MAX_NAME_LEN
        && !name.contains('/')
        && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Written by `nix copy --to 'file://...?write-nar-listing=1'` (Nix 2.8.0).
    const NIX_LISTING: &str = r#"{"version":1,"root":{"type":"directory","entries":{"f":{"type":"regular","size":2,"narOffset":232},"link":{"type":"symlink","target":"/nix/store/3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt"}}}}"#;

    fn regular(size: u64, executable: bool, nar_offset: Option<u64>) -> ListingNode {
        ListingNode::Regular { size, executable, nar_offset }
    }

    #[test]
    fn parses_nix_listing() {
        let listing = Listing::parse(NIX_LISTING.as_bytes()).unwrap();
        assert_eq!(listing.locate("f").unwrap(), Some(&regular(2, false, Some(232))));
        assert_eq!(
            listing.locate("/link").unwrap(),
            Some(&ListingNode::Symlink {
                target: "/nix/store/3g040cf1izicfsr8qv0x7sk1n09nspj5-hello.txt".to_owned()
            })
        );
        assert!(matches!(listing.locate("").unwrap(), Some(ListingNode::Directory { .. })));
    }

    #[test]
    fn accepts() {
        let cases: &[(&str, &str, ListingNode)] = &[
            (
                "single_file",
                r#"{"version":1,"root":{"type":"regular","size":5}}"#,
                regular(5, false, None),
            ),
            (
                "executable",
                r#"{"version":1,"root":{"type":"regular","size":0,"executable":true,"narOffset":96}}"#,
                regular(0, true, Some(96)),
            ),
            (
                "unknown_keys_ignored",
                r#"{"version":1,"extra":[1],"root":{"type":"regular","size":1,"x":null}}"#,
                regular(1, false, None),
            ),
            (
                "empty_dir_without_entries",
                r#"{"version":1,"root":{"type":"directory"}}"#,
                ListingNode::Directory { entries: BTreeMap::new() },
            ),
            (
                "unicode_name",
                r#"{"version":1,"root":{"type":"directory","entries":{"é ü":{"type":"regular","size":1}}}}"#,
                ListingNode::Directory {
                    entries: [("é ü".to_owned(), regular(1, false, None))].into(),
                },
            ),
        ];
        for (name, input, want) in cases {
            let got = Listing::parse(input.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&got.root, want, "case {name}");
        }
    }

    fn dir_with(name: &str) -> String {
        format!(
            r#"{{"version":1,"root":{{"type":"directory","entries":{{{}:{{"type":"regular","size":1}}}}}}}}"#,
            serde_json::to_string(name).unwrap()
        )
    }

    fn nested(dirs: usize) -> String {
        format!(
            r#"{{"version":1,"root":{}{{"type":"regular","size":1}}{}}}"#,
            r#"{"type":"directory","entries":{"d":"#.repeat(dirs),
            "}}".repeat(dirs)
        )
    }

    #[test]
    fn depth_limits() {
        let listing = Listing::parse(nested(MAX_JSON_DIR_DEPTH).as_bytes()).unwrap();
        let path = vec!["d"; MAX_JSON_DIR_DEPTH].join("/");
        assert_eq!(listing.locate(&path).unwrap(), Some(&regular(1, false, None)));
        let err = Listing::parse(nested(MAX_JSON_DIR_DEPTH + 1).as_bytes()).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");

        // MAX_DEPTH guards `convert` in case the JSON limit is ever lifted.
        let build = |dirs: usize| {
            (0..dirs).fold(RawNode::Symlink { target: "x".to_owned() }, |child, _| {
                RawNode::Directory { entries: RawEntries([("d".to_owned(), child)].into()) }
            })
        };
        assert!(convert(build(MAX_DEPTH + 1), &mut Vec::new()).is_ok());
        let err = convert(build(MAX_DEPTH + 2), &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("nests deeper than 64"), "{err}");
    }

    #[test]
    fn rejects() {
        let deep = nested(MAX_DEPTH + 1);
        let root = |node: &str| format!(r#"{{"version":1,"root":{node}}}"#);
        let bomb = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let cases: Vec<(&str, String, &str)> = vec![
            (
                "version_2",
                r#"{"version":2,"root":{"type":"regular","size":1}}"#.into(),
                "unsupported listing version 2",
            ),
            (
                "version_missing",
                r#"{"root":{"type":"regular","size":1}}"#.into(),
                "invalid listing json",
            ),
            ("root_missing", r#"{"version":1}"#.into(), "invalid listing json"),
            ("not_json", "nope".into(), "invalid listing json"),
            ("empty", String::new(), "invalid listing json"),
            ("unknown_type", root(r#"{"type":"fifo"}"#), "invalid listing json"),
            ("size_missing", root(r#"{"type":"regular"}"#), "invalid listing json"),
            ("size_negative", root(r#"{"type":"regular","size":-1}"#), "invalid listing json"),
            ("size_string", root(r#"{"type":"regular","size":"1"}"#), "invalid listing json"),
            ("symlink_no_target", root(r#"{"type":"symlink"}"#), "invalid listing json"),
            ("symlink_empty", root(r#"{"type":"symlink","target":""}"#), "invalid symlink target"),
            (
                "symlink_nul",
                root(r#"{"type":"symlink","target":"a\u0000"}"#),
                "invalid symlink target",
            ),
            (
                "symlink_too_long",
                root(&format!(
                    r#"{{"type":"symlink","target":"{}"}}"#,
                    "a".repeat(MAX_TARGET_LEN + 1)
                )),
                "invalid symlink target",
            ),
            ("name_empty", dir_with(""), "invalid entry name \"\""),
            ("name_dot", dir_with("."), "invalid entry name \".\""),
            ("name_dotdot", dir_with(".."), "invalid entry name \"..\""),
            ("name_slash", dir_with("a/b"), "invalid entry name \"a/b\""),
            ("name_nul", dir_with("a\0"), "invalid entry name"),
            ("name_too_long", dir_with(&"a".repeat(MAX_NAME_LEN + 1)), "invalid entry name"),
            (
                "duplicate_name",
                root(concat!(
                    r#"{"type":"directory","entries":{"#,
                    r#""a":{"type":"regular","size":1},"a":{"type":"regular","size":2}}}"#
                )),
                "duplicate entry name \"a\"",
            ),
            ("too_deep", deep, "invalid listing json"),
            ("json_nesting_bomb", bomb, "invalid listing json"),
        ];
        for (name, input, want) in cases {
            let err = Listing::parse(input.as_bytes()).expect_err(name).to_string();
            assert!(err.contains(want), "case {name}: {err:?} lacks {want:?}");
        }
        assert!(Listing::parse(dir_with(&"a".repeat(MAX_NAME_LEN)).as_bytes()).is_ok());
    }

    #[test]
    fn locate_cases() {
        let listing = Listing::parse(
            br#"{"version":1,"root":{"type":"directory","entries":{
                "bin":{"type":"directory","entries":{"hello":{"type":"regular","size":9,"executable":true}}},
                "lib":{"type":"symlink","target":"bin"},
                "README":{"type":"regular","size":3}}}}"#,
        )
        .unwrap();
        let hello = regular(9, true, None);
        type Want<'a> = Result<Option<&'a ListingNode>, &'static str>;
        let cases: &[(&str, &str, Want<'_>)] = &[
            ("file", "bin/hello", Ok(Some(&hello))),
            ("leading_slash", "/bin/hello", Ok(Some(&hello))),
            ("double_slash_and_dot", "bin//./hello", Ok(Some(&hello))),
            ("missing", "bin/nope", Ok(None)),
            ("through_file", "README/x", Ok(None)),
            ("through_symlink_not_followed", "lib/hello", Ok(None)),
            ("dotdot", "bin/../README", Err("'..' component")),
            ("dotdot_at_root", "..", Err("'..' component")),
            ("dotdot_after_missing", "nope/..", Err("'..' component")),
        ];
        for (name, path, want) in cases {
            match (listing.locate(path), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, *want, "case {name}"),
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "case {name}: {e}"),
                (got, _) => panic!("case {name}: unexpected {got:?}"),
            }
        }
        assert_eq!(listing.locate("").unwrap(), Some(&listing.root));
        assert_eq!(listing.locate("/").unwrap(), Some(&listing.root));
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Listing::parse(&input);
        }

        #[test]
        fn parse_never_panics_on_mutated_listing(
            pos in 0..NIX_LISTING.len(),
            len in 0..10usize,
            insert in "(\\PC|[{}\\[\\]\":,]){0,8}",
        ) {
            let mut bytes = NIX_LISTING.as_bytes().to_vec();
            let end = (pos + len).min(bytes.len());
            bytes.splice(pos..end, insert.bytes());
            if let Ok(listing) = Listing::parse(&bytes) {
                let _ = listing.locate("f");
            }
        }

        #[test]
        fn locate_never_panics(path in "\\PC{0,40}") {
            let listing = Listing::parse(NIX_LISTING.as_bytes()).unwrap();
            let _ = listing.locate(&path);
        }
    }
}
