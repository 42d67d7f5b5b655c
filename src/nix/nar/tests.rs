//! Tests for the NAR reader and writer: named rejection cases (our own equivalents of Nix's
//! invalid-NAR corpus), positive cases, a differential test against the real `nix-store --dump`,
//! and property tests.

use std::io::{self, Read};

use proptest::prelude::*;

use super::reader::{NullVisitor, parse_buf};
use super::wire::{MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};
use super::writer::{write_raw_len, write_str, write_strs};
use super::*;

// ---------------------------------------------------------------------------------------------
// Builders

fn file(contents: &[u8]) -> Node {
    Node::File { executable: false, contents: contents.to_vec() }
}

fn exe(contents: &[u8]) -> Node {
    Node::File { executable: true, contents: contents.to_vec() }
}

fn link(target: &[u8]) -> Node {
    Node::Symlink { target: target.to_vec() }
}

fn dir<const N: usize>(entries: [(&[u8], Node); N]) -> Node {
    Node::Directory(entries.into_iter().map(|(n, c)| (n.to_vec(), c)).collect())
}

/// One piece of a hand-made stream.
enum Part<'a> {
    /// A well-formed string.
    S(&'a [u8]),
    /// A bare length prefix.
    Len(u64),
    /// Raw bytes, no prefix or padding.
    Raw(&'a [u8]),
}
use Part::{Len, Raw, S};

fn stream(parts: &[Part<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        match part {
            S(s) => write_str(&mut out, s).unwrap(),
            Len(n) => write_raw_len(&mut out, *n).unwrap(),
            Raw(r) => out.extend_from_slice(r),
        }
    }
    out
}

/// `"nix-archive-1"` followed by `tokens` as well-formed strings.
fn nar(tokens: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    write_str(&mut out, b"nix-archive-1").unwrap();
    write_strs(&mut out, tokens).unwrap();
    out
}

/// Parses with no size limit, so truncation shows up as `Truncated` rather than a limit error.
fn parse_unlimited(bytes: &[u8]) -> Result<u64, ParseError> {
    parse(bytes, u64::MAX, &mut NullVisitor)
}

fn reject(bytes: &[u8]) -> ParseError {
    // Both entry points must agree that the stream is bad.
    let tree = parse_to_tree(bytes);
    assert!(tree.is_err(), "parse_to_tree accepted: {tree:?}");
    match parse_unlimited(bytes) {
        Ok(n) => panic!("accepted {n} bytes"),
        Err(e) => e,
    }
}

fn roundtrip(node: Node) {
    let bytes = node.to_nar();
    assert_eq!(parse_to_tree(&bytes).unwrap(), node);
    assert_eq!(parse_unlimited(&bytes).unwrap(), bytes.len() as u64);
    assert_eq!(
        parse(&bytes[..], bytes.len() as u64, &mut NullVisitor).unwrap(),
        bytes.len() as u64
    );
}

/// Records every callback, reading file contents fully.
#[derive(Default)]
struct Recorder {
    events: Vec<Event>,
}

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Dir(NodeId, Option<(NodeId, Vec<u8>)>),
    File(NodeId, Option<(NodeId, Vec<u8>)>, bool, Vec<u8>),
    Link(NodeId, Option<(NodeId, Vec<u8>)>, Vec<u8>),
}

fn owned(parent: Option<(NodeId, &[u8])>) -> Option<(NodeId, Vec<u8>)> {
    parent.map(|(p, n)| (p, n.to_vec()))
}

impl Visitor for Recorder {
    fn directory(&mut self, id: NodeId, parent: Option<(NodeId, &[u8])>) -> Result<(), VisitError> {
        self.events.push(Event::Dir(id, owned(parent)));
        Ok(())
    }

    fn file(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), VisitError> {
        let mut bytes = Vec::new();
        contents.read_to_end(&mut bytes)?;
        assert_eq!(bytes.len() as u64, size);
        self.events.push(Event::File(id, owned(parent), executable, bytes));
        Ok(())
    }

    fn symlink(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        target: &[u8],
    ) -> Result<(), VisitError> {
        self.events.push(Event::Link(id, owned(parent), target.to_vec()));
        Ok(())
    }
}

/// `depth` directories nested inside the root, each with one entry `d`, ending in a file: the
/// file sits at depth `depth + 1`... built as raw tokens so no recursion is needed.
fn nested_dirs_bytes(dirs: usize) -> Vec<u8> {
    let mut out = nar(&[]);
    for _ in 0..dirs {
        write_strs(
            &mut out,
            &[b"(", b"type", b"directory", b"entry", b"(", b"name", b"d", b"node"],
        )
        .unwrap();
    }
    write_strs(&mut out, &[b"(", b"type", b"regular", b"contents", b"", b")"]).unwrap();
    for _ in 0..dirs {
        write_strs(&mut out, &[b")", b")"]).unwrap();
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Rejections, one named test each.

macro_rules! reject_cases {
    ($($name:ident: $bytes:expr => $pat:pat,)*) => {$(
        #[test]
        fn $name() {
            let err = reject(&$bytes);
            assert!(matches!(err, $pat), "got {err:?}: {err}");
            // Every message names something and is lower-case.
            let msg = err.to_string();
            assert!(!msg.is_empty() && !msg.starts_with(char::is_uppercase), "{msg}");
        }
    )*};
}

reject_cases! {
    wrong_magic: stream(&[S(b"nix-archive-2"), S(b"(")]) => ParseError::BadMagic { .. },
    wrong_magic_short: stream(&[S(b"nix"), S(b"(")]) => ParseError::BadMagic { .. },
    magic_huge_length: stream(&[Len(1 << 63)]) => ParseError::BadMagic { .. },
    empty_input: [] => ParseError::Truncated { offset: 0 },
    magic_only: nar(&[]) => ParseError::Truncated { offset: 24 },

    name_empty: dir([(b"", file(b""))]).to_nar() => ParseError::EmptyName { .. },
    name_dot: dir([(b".", file(b""))]).to_nar() => ParseError::NameIsDot { .. },
    name_dotdot: dir([(b"..", file(b""))]).to_nar() => ParseError::NameIsDotDot { .. },
    name_slash: dir([(b"a/b", file(b""))]).to_nar() => ParseError::NameContainsSlash { .. },
    name_only_slash: dir([(b"/", file(b""))]).to_nar() => ParseError::NameContainsSlash { .. },
    name_nul_character: dir([(b"a\0b", file(b""))]).to_nar() => ParseError::NameContainsNul { .. },
    name_256_bytes: dir([(&[b'x'; MAX_NAME_LEN + 1], file(b""))]).to_nar()
        => ParseError::NameTooLong { len: 256, .. },
    name_huge_length: nar(&[b"(", b"type", b"directory", b"entry", b"(", b"name"])
        .into_iter().chain(stream(&[Len(1 << 63)])).collect::<Vec<_>>()
        => ParseError::NameTooLong { len: 0x8000_0000_0000_0000, .. },

    entries_unsorted: dir([(b"b", file(b"")), (b"a", file(b""))]).to_nar()
        => ParseError::UnsortedName { .. },
    entries_unsorted_by_bytes_not_case: dir([(b"a", file(b"")), (b"B", file(b""))]).to_nar()
        => ParseError::UnsortedName { .. },
    entries_unsorted_prefix: dir([(b"ab", file(b"")), (b"a", file(b""))]).to_nar()
        => ParseError::UnsortedName { .. },
    entries_duplicate: dir([(b"a", file(b"")), (b"a", file(b""))]).to_nar()
        => ParseError::DuplicateName { .. },
    // CVE-2024-45593: a directory whose children would be written through an earlier symlink.
    symlink_then_directory_same_name: dir([
        (b"x", link(b"/etc")),
        (b"x", dir([(b"passwd", file(b"pwned"))])),
    ]).to_nar() => ParseError::DuplicateName { .. },
    duplicate_in_nested_directory: dir([
        (b"a", dir([(b"x", file(b"")), (b"y", file(b"")), (b"y", file(b""))])),
    ]).to_nar() => ParseError::DuplicateName { .. },

    tag_33_bytes: nar(&[b"(", &[b't'; 33]]) => ParseError::TagTooLong { len: 33, .. },
    tag_huge_length: nar(&[b"("]).into_iter().chain(stream(&[Len(1 << 63)])).collect::<Vec<_>>()
        => ParseError::TagTooLong { .. },
    type_huge_length: nar(&[b"(", b"type"]).into_iter().chain(stream(&[Len(u64::MAX)]))
        .collect::<Vec<_>>() => ParseError::TagTooLong { .. },

    target_empty: link(b"").to_nar() => ParseError::EmptyTarget { .. },
    target_nul: link(b"/bin\0sh").to_nar() => ParseError::TargetContainsNul { .. },
    target_4096_bytes: link(&[b'a'; MAX_TARGET_LEN + 1]).to_nar()
        => ParseError::TargetTooLong { len: 4096, .. },
    target_huge_length: nar(&[b"(", b"type", b"symlink", b"target"]).into_iter()
        .chain(stream(&[Len(1 << 63)])).collect::<Vec<_>>() => ParseError::TargetTooLong { .. },

    depth_65: nested_dirs_bytes(MAX_DEPTH + 1) => ParseError::TooDeep { .. },
    depth_100_000: nested_dirs_bytes(100_000) => ParseError::TooDeep { .. },

    padding_nonzero_in_token: stream(&[S(b"nix-archive-1"), Len(1), Raw(b"(\0\0\0\0\0\0\x01")])
        => ParseError::NonZeroPadding { offset: 24 },
    padding_nonzero_in_magic: stream(&[Len(13), Raw(b"nix-archive-1\0\0\x01")])
        => ParseError::NonZeroPadding { offset: 0 },
    padding_nonzero_in_contents: {
        let mut b = file(b"abc").to_nar();
        let at = b.len() - 16 - 1; // last padding byte of "abc", before str(")")
        b[at] = 1;
        b
    } => ParseError::NonZeroPadding { .. },
    padding_nonzero_in_name: {
        let mut b = dir([(b"abc", file(b""))]).to_nar();
        let at = b.windows(3).position(|w| w == b"abc").unwrap() + 4;
        b[at] = 0xff;
        b
    } => ParseError::NonZeroPadding { .. },
    padding_nonzero_in_target: {
        let mut b = link(b"t").to_nar();
        let at = b.iter().rposition(|&c| c == b't').unwrap() + 1;
        b[at] = b'/';
        b
    } => ParseError::NonZeroPadding { .. },
    padding_truncated_after_contents: {
        let b = file(b"abc").to_nar();
        b[..b.len() - 16 - 2].to_vec()
    } => ParseError::Truncated { .. },

    truncated_contents: {
        let b = file(b"0123456789abcdef").to_nar();
        b[..b.len() - 16 - 4].to_vec()
    } => ParseError::Truncated { .. },
    truncated_before_root_close: {
        let b = file(b"").to_nar();
        b[..b.len() - 16].to_vec()
    } => ParseError::Truncated { .. },
    truncated_in_length_prefix: file(b"").to_nar()[..28] => ParseError::Truncated { .. },
    truncated_directory: nar(&[b"(", b"type", b"directory"]) => ParseError::Truncated { .. },

    unknown_type_fifo: nar(&[b"(", b"type", b"fifo", b")"]) => ParseError::UnknownType { .. },
    unknown_type_device: nar(&[b"(", b"type", b"device", b")"]) => ParseError::UnknownType { .. },
    unknown_type_empty: nar(&[b"(", b"type", b"", b")"]) => ParseError::UnknownType { .. },
    missing_open: nar(&[b"type", b"regular"]) => ParseError::UnexpectedTag { .. },
    missing_type: nar(&[b"(", b"regular"]) => ParseError::UnexpectedTag { .. },
    unknown_directory_field: nar(&[b"(", b"type", b"directory", b"entries", b")"])
        => ParseError::UnexpectedTag { .. },
    entry_without_open: nar(&[b"(", b"type", b"directory", b"entry", b"name", b"a"])
        => ParseError::UnexpectedTag { .. },
    symlink_without_target_tag: nar(&[b"(", b"type", b"symlink", b"contents", b"x", b")"])
        => ParseError::UnexpectedTag { .. },
    regular_without_contents: nar(&[b"(", b"type", b"regular", b")"])
        => ParseError::UnexpectedTag { .. },
    entry_missing_close: nar(&[
        b"(", b"type", b"directory", b"entry", b"(", b"name", b"a", b"node",
        b"(", b"type", b"regular", b"contents", b"", b")", b")",
    ]) => ParseError::Truncated { .. },
    entry_with_two_nodes: nar(&[
        b"(", b"type", b"directory", b"entry", b"(", b"name", b"a", b"node",
        b"(", b"type", b"regular", b"contents", b"", b")",
        b"node", b"(", b"type", b"regular", b"contents", b"", b")", b")", b")",
    ]) => ParseError::UnexpectedTag { .. },

    executable_after_contents: nar(&[
        b"(", b"type", b"regular", b"contents", b"x", b"executable", b"", b")",
    ]) => ParseError::ExecutableAfterContents { .. },
    executable_non_empty_value: nar(&[
        b"(", b"type", b"regular", b"executable", b"1", b"contents", b"", b")",
    ]) => ParseError::NonEmptyExecutable { len: 1, .. },
    executable_huge_value: nar(&[b"(", b"type", b"regular", b"executable"]).into_iter()
        .chain(stream(&[Len(1 << 63)])).collect::<Vec<_>>()
        => ParseError::NonEmptyExecutable { .. },
    executable_twice: nar(&[
        b"(", b"type", b"regular", b"executable", b"", b"executable", b"", b"contents", b"",
        b")",
    ]) => ParseError::UnexpectedTag { .. },
    executable_on_symlink: nar(&[
        b"(", b"type", b"symlink", b"executable", b"", b"target", b"x", b")",
    ]) => ParseError::UnexpectedTag { .. },
    node_before_name: nar(&[
        b"(", b"type", b"directory", b"entry", b"(", b"node",
        b"(", b"type", b"regular", b"contents", b"", b")", b"name", b"a", b")", b")",
    ]) => ParseError::NameAfterNode { .. },
    name_after_node: nar(&[
        b"(", b"type", b"directory", b"entry", b"(", b"name", b"a", b"node",
        b"(", b"type", b"regular", b"contents", b"", b")", b"name", b"b", b")", b")",
    ]) => ParseError::NameAfterNode { .. },

    trailing_word: file(b"").to_nar().into_iter().chain([0; 8]).collect::<Vec<_>>()
        => ParseError::TrailingData { offset: 112 },
    trailing_byte: file(b"").to_nar().into_iter().chain([b'x']).collect::<Vec<_>>()
        => ParseError::TrailingData { offset: 112 },
    trailing_second_nar: [file(b"").to_nar(), file(b"").to_nar()].concat()
        => ParseError::TrailingData { .. },
    trailing_after_directory: {
        let mut b = dir([(b"a", file(b""))]).to_nar();
        write_str(&mut b, b")").unwrap();
        b
    } => ParseError::TrailingData { .. },
}

#[test]
fn contents_length_2_pow_63_is_rejected_against_limit() {
    let bytes = [nar(&[b"(", b"type", b"regular", b"contents"]), stream(&[Len(1 << 63)])].concat();
    let err = parse(&bytes[..], 1 << 20, &mut NullVisitor).unwrap_err();
    assert!(
        matches!(err, ParseError::LengthExceedsLimit { len: 0x8000_0000_0000_0000, .. }),
        "{err:?}"
    );
    // Even with an unlimited budget a u64::MAX length cannot fit (padding overflows).
    let bytes = [nar(&[b"(", b"type", b"regular", b"contents"]), stream(&[Len(u64::MAX)])].concat();
    let err = parse_unlimited(&bytes).unwrap_err();
    assert!(matches!(err, ParseError::LengthExceedsLimit { .. }), "{err:?}");
}

#[test]
fn contents_length_past_remaining_limit_is_rejected_before_reading() {
    // The prefix claims 1 MiB but the caller's NarSize leaves far less: rejected at the prefix,
    // and the visitor is never called.
    let mut bytes = nar(&[b"(", b"type", b"regular", b"contents"]);
    write_raw_len(&mut bytes, 1 << 20).unwrap();
    let offset = bytes.len() as u64 - 8;
    let mut rec = Recorder::default();
    let err = parse(&bytes[..], offset + 8 + 4096, &mut rec).unwrap_err();
    assert!(
        matches!(err, ParseError::LengthExceedsLimit { offset: o, len: 1048576, remaining: 4096 } if o == offset),
        "{err:?}"
    );
    assert!(rec.events.is_empty());
}

#[test]
fn limit_is_honoured_for_every_shorter_limit() {
    let bytes = dir([
        (b"a", exe(b"#!/bin/sh\n")),
        (b"b", link(b"a")),
        (b"c", dir([(b"d", file(&[7; 100]))])),
    ])
    .to_nar();
    let len = bytes.len() as u64;
    assert_eq!(parse(&bytes[..], len, &mut NullVisitor).unwrap(), len);
    assert_eq!(parse(&bytes[..], len + 1000, &mut NullVisitor).unwrap(), len);
    for limit in 0..len {
        let err = parse(&bytes[..], limit, &mut NullVisitor).unwrap_err();
        assert!(
            matches!(err, ParseError::LimitExceeded { .. } | ParseError::LengthExceedsLimit { .. }),
            "limit {limit}: {err:?}"
        );
    }
}

#[test]
fn every_truncation_is_rejected() {
    let bytes = dir([
        (b"a", exe(b"#!/bin/sh\n")),
        (b"b", link(b"a")),
        (b"c", dir([(b"d", file(&[7; 100])), (b"e", dir([]))])),
    ])
    .to_nar();
    for cut in 0..bytes.len() {
        let err = parse_unlimited(&bytes[..cut]).unwrap_err();
        assert!(matches!(err, ParseError::Truncated { .. }), "cut {cut}: {err:?}");
        assert!(parse_to_tree(&bytes[..cut]).is_err(), "cut {cut}");
    }
}

#[test]
fn depth_64_is_accepted() {
    // Root directory plus 63 more directories: the file sits at depth 64.
    let bytes = nested_dirs_bytes(MAX_DEPTH);
    assert_eq!(parse_unlimited(&bytes).unwrap(), bytes.len() as u64);
    let mut node = file(b"");
    for _ in 0..MAX_DEPTH {
        node = dir([(b"d", node)]);
    }
    assert_eq!(node.to_nar(), bytes);
    assert_eq!(parse_to_tree(&bytes).unwrap(), node);
}

#[test]
fn no_callback_for_the_rejected_entry() {
    // The CVE shape: the symlink is reported, the directory of the same name never is.
    let bytes = dir([(b"x", link(b"/etc")), (b"x", dir([(b"passwd", file(b"pwned"))]))]).to_nar();
    let mut rec = Recorder::default();
    let err = parse(&bytes[..], bytes.len() as u64, &mut rec).unwrap_err();
    assert!(matches!(err, ParseError::DuplicateName { ref name } if name == b"x"));
    assert_eq!(
        rec.events,
        [Event::Dir(0, None), Event::Link(1, Some((0, b"x".to_vec())), b"/etc".to_vec())]
    );
    // Same for a bad name: nothing is reported for it.
    let bytes = dir([(b"a", file(b"")), (b"..", file(b""))]).to_nar();
    let mut rec = Recorder::default();
    parse(&bytes[..], bytes.len() as u64, &mut rec).unwrap_err();
    assert_eq!(rec.events.len(), 2);
}

#[test]
fn visitor_error_aborts_the_parse() {
    struct Refuse;
    impl Visitor for Refuse {
        fn directory(&mut self, _: NodeId, _: Option<(NodeId, &[u8])>) -> Result<(), VisitError> {
            Ok(())
        }
        fn file(
            &mut self,
            _: NodeId,
            _: Option<(NodeId, &[u8])>,
            _: bool,
            _: u64,
            _: &mut dyn Read,
        ) -> Result<(), VisitError> {
            Err("disk full".into())
        }
        fn symlink(
            &mut self,
            _: NodeId,
            _: Option<(NodeId, &[u8])>,
            _: &[u8],
        ) -> Result<(), VisitError> {
            Ok(())
        }
    }
    let bytes = dir([(b"a", file(b"x"))]).to_nar();
    let err = parse(&bytes[..], bytes.len() as u64, &mut Refuse).unwrap_err();
    assert!(matches!(err, ParseError::Visitor(ref e) if e.to_string() == "disk full"));
    assert_eq!(err.to_string(), "nar visitor failed: disk full");
}

/// A reader that fails with `ConnectionReset` after `ok` bytes.
struct Failing<'a> {
    data: &'a [u8],
    ok: usize,
}

impl Read for Failing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::new(io::ErrorKind::ConnectionReset, "peer went away"));
        }
        let n = buf.len().min(self.ok).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.ok -= n;
        Ok(n)
    }
}

#[test]
fn io_error_is_reported_as_io_even_inside_contents() {
    let bytes = file(&[1; 10_000]).to_nar();
    for ok in [0, 20, 100, 5_000] {
        // The Recorder turns the contents error into its own VisitError; parse still says Io.
        let mut rec = Recorder::default();
        let err = parse(Failing { data: &bytes, ok }, u64::MAX, &mut rec).unwrap_err();
        assert!(
            matches!(err, ParseError::Io(ref e) if e.kind() == io::ErrorKind::ConnectionReset),
            "ok {ok}: {err:?}"
        );
    }
}

#[test]
fn truncation_inside_contents_is_reported_even_if_visitor_swallows_it() {
    struct Swallow;
    impl Visitor for Swallow {
        fn directory(&mut self, _: NodeId, _: Option<(NodeId, &[u8])>) -> Result<(), VisitError> {
            Ok(())
        }
        fn file(
            &mut self,
            _: NodeId,
            _: Option<(NodeId, &[u8])>,
            _: bool,
            _: u64,
            contents: &mut dyn Read,
        ) -> Result<(), VisitError> {
            let _ = contents.read_to_end(&mut Vec::new());
            Ok(())
        }
        fn symlink(
            &mut self,
            _: NodeId,
            _: Option<(NodeId, &[u8])>,
            _: &[u8],
        ) -> Result<(), VisitError> {
            Ok(())
        }
    }
    let bytes = file(&[1; 1000]).to_nar();
    let err = parse(&bytes[..500], u64::MAX, &mut Swallow).unwrap_err();
    assert!(matches!(err, ParseError::Truncated { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------------------------
// Accepted archives

#[test]
fn single_file_root() {
    roundtrip(file(b"hello\n"));
}

#[test]
fn executable_file_root() {
    roundtrip(exe(b"#!/bin/sh\necho hi\n"));
}

#[test]
fn empty_file() {
    roundtrip(file(b""));
    roundtrip(exe(b""));
}

#[test]
fn contents_of_every_padding_length() {
    for len in 0..=17 {
        roundtrip(file(&vec![0xa5; len]));
    }
}

#[test]
fn empty_directory() {
    roundtrip(dir([]));
    roundtrip(dir([(b"e", dir([]))]));
}

#[test]
fn symlink_root() {
    roundtrip(link(b"target"));
}

#[test]
fn nested_directories() {
    roundtrip(dir([
        (b"bin", dir([(b"sh", exe(b"\x7fELF")), (b"shell", link(b"sh"))])),
        (b"share", dir([(b"doc", dir([(b"README", file(b"read me"))])), (b"empty", dir([]))])),
    ]));
}

#[test]
fn name_of_255_bytes() {
    roundtrip(dir([(&[b'n'; MAX_NAME_LEN], file(b"long"))]));
}

#[test]
fn unicode_and_odd_names() {
    roundtrip(
        dir([
            ("\u{e9}".as_bytes(), file(b"nfc")),
            ("e\u{301}".as_bytes(), file(b"nfd")),
            ("Ünïcödé 🎉".as_bytes(), file(b"")),
            (b"with space", file(b"")),
            (b"new\nline", file(b"")),
            (b"\xff\xfe not utf-8", file(b"")),
            (b"...", file(b"")),
            (b".hidden", file(b"")),
            (b"-", file(b"")),
            (b"\\", file(b"")),
        ])
        .sorted(),
    );
}

#[test]
fn symlink_targets_are_verbatim() {
    for target in [
        &b"/etc/shadow"[..],
        b"../../../..",
        b"dangling/nowhere",
        b"/",
        b".",
        b"..",
        b"a//b/",
        "ünï".as_bytes(),
        b"\xff",
        &[b'a'; MAX_TARGET_LEN],
    ] {
        roundtrip(link(target));
        roundtrip(dir([(b"l", link(target))]));
    }
}

#[test]
fn callbacks_are_preorder_with_parents() {
    let bytes = dir([
        (b"a", dir([(b"x", file(b"1")), (b"y", link(b"x"))])),
        (b"b", exe(b"2")),
        (b"c", dir([])),
    ])
    .to_nar();
    let mut rec = Recorder::default();
    let consumed = parse(&bytes[..], bytes.len() as u64, &mut rec).unwrap();
    assert_eq!(consumed, bytes.len() as u64);
    let p = |id, name: &[u8]| Some((id, name.to_vec()));
    assert_eq!(
        rec.events,
        [
            Event::Dir(0, None),
            Event::Dir(1, p(0, b"a")),
            Event::File(2, p(1, b"x"), false, b"1".to_vec()),
            Event::Link(3, p(1, b"y"), b"x".to_vec()),
            Event::File(4, p(0, b"b"), true, b"2".to_vec()),
            Event::Dir(5, p(0, b"c")),
        ]
    );
}

#[test]
fn unread_contents_are_drained() {
    struct ReadTwo(Vec<Vec<u8>>);
    impl Visitor for ReadTwo {
        fn directory(&mut self, _: NodeId, _: Option<(NodeId, &[u8])>) -> Result<(), VisitError> {
            Ok(())
        }
        fn file(
            &mut self,
            _: NodeId,
            _: Option<(NodeId, &[u8])>,
            _: bool,
            _: u64,
            contents: &mut dyn Read,
        ) -> Result<(), VisitError> {
            let mut two = [0; 2];
            let n = contents.read(&mut two)?;
            self.0.push(two[..n].to_vec());
            Ok(())
        }
        fn symlink(
            &mut self,
            _: NodeId,
            _: Option<(NodeId, &[u8])>,
            _: &[u8],
        ) -> Result<(), VisitError> {
            Ok(())
        }
    }
    let big: Vec<u8> = (0..1_000_003u32).map(|i| i as u8).collect();
    let bytes = dir([(b"a", file(&big)), (b"b", file(b"xyz")), (b"c", file(b""))]).to_nar();
    let mut v = ReadTwo(Vec::new());
    // Through an unbuffered reader with a small buffer too.
    let consumed = parse(&bytes[..], bytes.len() as u64, &mut v).unwrap();
    assert_eq!(consumed, bytes.len() as u64);
    assert_eq!(v.0, [vec![0, 1], b"xy".to_vec(), vec![]]);
    let mut v = ReadTwo(Vec::new());
    let reader = io::BufReader::with_capacity(7, &bytes[..]);
    assert_eq!(parse_buf(reader, u64::MAX, &mut v).unwrap(), bytes.len() as u64);
}

#[test]
fn large_file_streams_through_unbuffered_reader() {
    /// Hands out at most 3 bytes per read, to exercise short reads everywhere.
    struct Dribble<'a>(&'a [u8]);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(3).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }
    let node = dir([(b"big", file(&vec![0x5a; 300_001])), (b"l", link(b"big"))]);
    let bytes = node.to_nar();
    let mut rec = Recorder::default();
    assert_eq!(parse(Dribble(&bytes), u64::MAX, &mut rec).unwrap(), bytes.len() as u64);
    assert_eq!(rec.events.len(), 3);
}

#[test]
fn validate_accepts_and_rejects() {
    let good = dir([(b"a", file(b"x"))]).to_nar();
    assert_eq!(validate(&good[..], good.len() as u64).unwrap(), good.len() as u64);
    let bad = dir([(b"a", file(b"x")), (b"a", file(b"x"))]).to_nar();
    assert!(validate(&bad[..], bad.len() as u64).is_err());
}

#[test]
fn validate_name_table() {
    let cases: [(&str, &[u8], bool); 9] = [
        ("plain", b"a", true),
        ("three_dots", b"...", true),
        ("dot_prefix", b".a", true),
        ("max_len", &[b'x'; MAX_NAME_LEN], true),
        ("empty", b"", false),
        ("dot", b".", false),
        ("dotdot", b"..", false),
        ("slash", b"a/", false),
        ("too_long", &[b'x'; MAX_NAME_LEN + 1], false),
    ];
    for (case, name, ok) in cases {
        assert_eq!(reader::validate_name(name, 0).is_ok(), ok, "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// Differential test against the real Nix

mod real_nix {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::Path;
    use std::process::Command;

    use sha2::{Digest, Sha256};

    use super::*;

    fn nix_available() -> bool {
        let found = Command::new("nix-store").arg("--version").output().is_ok();
        if !found {
            eprintln!("SKIPPING real-nix differential test: `nix-store` is not on PATH");
        }
        found
    }

    fn nix_dump(path: &Path) -> Vec<u8> {
        let out = Command::new("nix-store").arg("--dump").arg(path).output().unwrap();
        assert!(out.status.success(), "nix-store --dump failed: {out:?}");
        out.stdout
    }

    fn nix_hash_hex(path: &Path) -> String {
        let out = Command::new("nix-hash").args(["--type", "sha256"]).arg(path).output().unwrap();
        assert!(out.status.success(), "nix-hash failed: {out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// Reads a file system tree into a (sorted) Node, the way Nix sees it.
    fn from_disk(path: &Path) -> Node {
        let meta = std::fs::symlink_metadata(path).unwrap();
        if meta.file_type().is_symlink() {
            link(std::fs::read_link(path).unwrap().as_os_str().as_bytes())
        } else if meta.is_dir() {
            let entries = std::fs::read_dir(path)
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.file_name().as_bytes().to_vec(), from_disk(&e.path()))
                })
                .collect();
            Node::Directory(entries).sorted()
        } else {
            Node::File {
                executable: meta.permissions().mode() & 0o100 != 0,
                contents: std::fs::read(path).unwrap(),
            }
        }
    }

    fn write(path: &Path, contents: &[u8], mode: u32) {
        std::fs::write(path, contents).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn check(path: &Path) {
        let theirs = nix_dump(path);
        let tree = from_disk(path);
        let ours = tree.to_nar();
        assert!(ours == theirs, "our NAR differs from nix-store --dump for {path:?}");
        assert_eq!(parse_to_tree(&theirs).unwrap(), tree);
        assert_eq!(parse_unlimited(&theirs).unwrap(), theirs.len() as u64);
        let ours_hex: String = Sha256::digest(&ours).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(ours_hex, nix_hash_hex(path));
    }

    #[test]
    fn writer_and_parser_match_nix_store_dump() {
        if !nix_available() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir(&root).unwrap();
        write(&root.join("hello"), b"hello, world\n", 0o644);
        write(&root.join("run.sh"), b"#!/bin/sh\necho hi\n", 0o755);
        write(&root.join("only-user-x"), b"x", 0o700);
        write(&root.join("empty"), b"", 0o644);
        write(&root.join("empty-exe"), b"", 0o555);
        let big: Vec<u8> = (0..1_048_579u32).map(|i| (i * 7 + i / 251) as u8).collect();
        write(&root.join("big.bin"), &big, 0o444);
        symlink("/etc/shadow", root.join("abs-link")).unwrap();
        symlink("../../../..", root.join("climb-link")).unwrap();
        symlink("does/not/exist", root.join("dangling")).unwrap();
        symlink("hello", root.join("rel-link")).unwrap();
        std::fs::create_dir_all(root.join("a/b/c/d/e")).unwrap();
        write(&root.join("a/b/c/d/e/deep"), b"deep", 0o644);
        std::fs::create_dir(root.join("empty-dir")).unwrap();
        let odd = root.join("odd");
        std::fs::create_dir(&odd).unwrap();
        let names: [&[u8]; 14] = [
            "\u{e9}".as_bytes(),
            "e\u{301}".as_bytes(),
            "Ünïcödé 🎉".as_bytes(),
            b"with space",
            b"new\nline",
            b"\xff\xfe-not-utf8",
            b"...",
            b".hidden",
            b"B",
            b"a",
            b"a-b",
            b"a.b",
            b"ab",
            &[b'L'; MAX_NAME_LEN],
        ];
        for (i, name) in names.iter().enumerate() {
            write(&odd.join(OsStr::from_bytes(name)), format!("{i}").as_bytes(), 0o644);
        }
        check(&root);
        // Roots that are a single file, an executable, or a symlink (NAR-14).
        check(&root.join("hello"));
        check(&root.join("run.sh"));
        check(&root.join("abs-link"));
        check(&root.join("empty-dir"));
    }
}

// ---------------------------------------------------------------------------------------------
// Property tests

fn arb_name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>().prop_filter("no / or nul", |b| *b != b'/' && *b != 0), 1..12),
        1 => Just(vec![b'x'; MAX_NAME_LEN]),
        1 => Just(b"...".to_vec()),
    ]
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn arb_tree() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(executable, contents)| Node::File { executable, contents }),
        proptest::collection::vec(any::<u8>().prop_filter("no nul", |b| *b != 0), 1..32)
            .prop_map(|target| Node::Symlink { target }),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        proptest::collection::btree_map(arb_name(), inner, 0..6)
            .prop_map(|entries| Node::Directory(entries.into_iter().collect()))
    })
}

proptest! {
    #[test]
    fn prop_write_parse_roundtrip(tree in arb_tree()) {
        let tree = tree.sorted();
        let bytes = tree.to_nar();
        prop_assert_eq!(parse_to_tree(&bytes).unwrap(), tree);
        prop_assert_eq!(parse_unlimited(&bytes).unwrap(), bytes.len() as u64);
    }

    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_to_tree(&bytes);
        let _ = parse_unlimited(&bytes);
        let with_magic = [nar(&[]), bytes].concat();
        let _ = parse_to_tree(&with_magic);
        let _ = parse_unlimited(&with_magic);
    }

    /// Any mutation either is rejected or yields an archive that re-serialises to the same
    /// bytes: the accepted encoding of a tree is unique.
    #[test]
    fn prop_mutations_rejected_or_canonical(
        tree in arb_tree(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let mut bytes = tree.sorted().to_nar();
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if let Ok(parsed) = parse_to_tree(&bytes) {
            prop_assert_eq!(parsed.to_nar(), bytes);
        }
    }

    #[test]
    fn prop_truncation_and_short_limit_rejected(tree in arb_tree(), at in any::<prop::sample::Index>()) {
        let bytes = tree.sorted().to_nar();
        let cut = at.index(bytes.len());
        prop_assert!(parse_to_tree(&bytes[..cut]).is_err());
        let truncated = parse_unlimited(&bytes[..cut]);
        prop_assert!(matches!(truncated, Err(ParseError::Truncated { .. })), "{:?}", truncated);
        prop_assert!(parse(&bytes[..], cut as u64, &mut NullVisitor).is_err());
    }

    #[test]
    fn prop_insert_or_delete_words_never_panic(
        tree in arb_tree(),
        at in any::<prop::sample::Index>(),
        word in any::<u64>(),
        delete in any::<bool>(),
    ) {
        let mut bytes = tree.sorted().to_nar();
        let i = at.index(bytes.len() / 8) * 8;
        if delete {
            bytes.drain(i..i + 8);
        } else {
            bytes.splice(i..i, word.to_le_bytes());
        }
        if let Ok(parsed) = parse_to_tree(&bytes) {
            prop_assert_eq!(parsed.to_nar(), bytes);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Throughput (run with `cargo test --release -- --ignored throughput --nocapture`)

#[test]
#[ignore = "throughput measurement, not a correctness test"]
fn throughput() {
    struct Sink(u64);
    impl Visitor for Sink {
        fn directory(&mut self, _: NodeId, _: Option<(NodeId, &[u8])>) -> Result<(), VisitError> {
            Ok(())
        }
        fn file(
            &mut self,
            _: NodeId,
            _: Option<(NodeId, &[u8])>,
            _: bool,
            _: u64,
            contents: &mut dyn Read,
        ) -> Result<(), VisitError> {
            self.0 += io::copy(contents, &mut io::sink())?;
            Ok(())
        }
        fn symlink(
            &mut self,
            _: NodeId,
            _: Option<(NodeId, &[u8])>,
            _: &[u8],
        ) -> Result<(), VisitError> {
            Ok(())
        }
    }
    let big = Node::Directory(
        (0..64u32)
            .map(|i| (format!("f{i:03}").into_bytes(), file(&vec![i as u8; 4 << 20])))
            .collect(),
    );
    let small = Node::Directory(
        (0..100_000u32)
            .map(|i| (format!("file-{i:06}").into_bytes(), file(&vec![1; (i % 2000) as usize])))
            .collect(),
    );
    for (label, node) in [("64 x 4 MiB files", big), ("100k small files", small)] {
        let bytes = node.to_nar();
        let start = std::time::Instant::now();
        let rounds = 5;
        for _ in 0..rounds {
            let mut sink = Sink(0);
            parse(&bytes[..], bytes.len() as u64, &mut sink).unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        let mb = (bytes.len() * rounds) as f64 / 1e6;
        eprintln!("{label}: {:.0} MB/s via parse (BufReader)", mb / secs);
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            let mut sink = Sink(0);
            parse_buf(&bytes[..], bytes.len() as u64, &mut sink).unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!("{label}: {:.0} MB/s via parse_buf(&[u8])", mb / secs);
    }
}
