//! Strict streaming NAR parser: validates the grammar of [`super::wire`] while calling a
//! [`Visitor`] for each node. It never recurses (directories live on an explicit stack), never
//! allocates from a length prefix, and streams file contents without buffering them.

use std::cmp::Ordering;
use std::io::{self, BufRead, BufReader, Read};

pub use super::error::ParseError;
pub use super::tree::{NullVisitor, parse_to_tree};
use super::wire::{
    MAX_DEPTH, MAX_NAME_LEN, MAX_TAG_LEN, MAX_TARGET_LEN, NAR_MAGIC, TOK_CLOSE, TOK_CONTENTS,
    TOK_DIRECTORY, TOK_ENTRY, TOK_EXECUTABLE, TOK_NAME, TOK_NODE, TOK_OPEN, TOK_REGULAR,
    TOK_SYMLINK, TOK_TARGET, TOK_TYPE, WORD_LEN, padded_len, padding_len,
};

/// Pre-order index of a node in the NAR: the root is 0, then 1, 2, ... in stream order.
pub type NodeId = u32;

/// Error a [`Visitor`] callback may return; it aborts the parse as [`ParseError::Visitor`].
pub type VisitError = Box<dyn std::error::Error + Send + Sync>;

/// Capacity of the read buffer [`parse`] puts in front of an unbuffered reader.
pub const READ_BUFFER_LEN: usize = 256 * 1024;

/// Buffer sizes for bounded strings: the limit rounded up to the padding, so a string and its
/// padding are read with one call.
const TAG_BUF_LEN: usize = MAX_TAG_LEN.next_multiple_of(WORD_LEN);
const NAME_BUF_LEN: usize = MAX_NAME_LEN.next_multiple_of(WORD_LEN);
const TARGET_BUF_LEN: usize = MAX_TARGET_LEN.next_multiple_of(WORD_LEN);

/// Receives the nodes of a NAR in stream order (pre-order, entries in name order).
///
/// `parent` is `None` for the root, else `Some((parent directory's NodeId, entry name))`. Every
/// callback happens only after the node's name passed validation and ordering checks.
pub trait Visitor {
    /// A directory; its entries follow as further callbacks naming it as their parent.
    fn directory(&mut self, id: NodeId, parent: Option<(NodeId, &[u8])>) -> Result<(), VisitError>;

    /// A regular file. `contents` yields exactly `size` bytes; if the visitor reads less, the
    /// parser drains the rest. An I/O error seen through `contents` is reported by [`parse`] as
    /// itself, even if the visitor returns a different error or swallows it.
    fn file(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), VisitError>;

    /// A symbolic link, with its target verbatim (never resolved).
    fn symlink(
        &mut self,
        id: NodeId,
        parent: Option<(NodeId, &[u8])>,
        target: &[u8],
    ) -> Result<(), VisitError>;
}

/// Parses a whole NAR from `reader`, calling `visitor` for each node in stream order.
///
/// `limit` is the signed NarSize: reading past it is an error, and a length prefix larger than
/// what remains of it is rejected at once. After the final `)` the reader must be at EOF.
/// Returns the number of bytes consumed; it is at most `limit` but need not equal it, which the
/// caller checks. `reader` is buffered internally; use [`parse_buf`] if it already is.
pub fn parse<R: Read>(reader: R, limit: u64, visitor: &mut dyn Visitor) -> Result<u64, ParseError> {
    parse_buf(BufReader::with_capacity(READ_BUFFER_LEN, reader), limit, visitor)
}

/// [`parse`] for a reader that is already buffered (such as `&[u8]`), avoiding a second copy.
pub fn parse_buf<R: BufRead>(
    reader: R,
    limit: u64,
    visitor: &mut dyn Visitor,
) -> Result<u64, ParseError> {
    let mut input = Input { inner: reader, pos: 0, limit };
    parse_input(&mut input, visitor)?;
    Ok(input.pos)
}

/// Checks that `reader` holds one valid NAR within `limit`, discarding its contents. Returns the
/// number of bytes consumed.
pub fn validate<R: Read>(reader: R, limit: u64) -> Result<u64, ParseError> {
    parse(reader, limit, &mut NullVisitor)
}

/// Checks an entry name: 1..=255 bytes, not `.` or `..`, no `/` or NUL. `offset` is only used
/// in errors.
pub fn validate_name(name: &[u8], offset: u64) -> Result<(), ParseError> {
    match name {
        [] => Err(ParseError::EmptyName { offset }),
        b"." => Err(ParseError::NameIsDot { offset }),
        b".." => Err(ParseError::NameIsDotDot { offset }),
        _ if name.len() > MAX_NAME_LEN => {
            Err(ParseError::NameTooLong { offset, len: name.len() as u64 })
        }
        _ if name.contains(&b'/') => Err(ParseError::NameContainsSlash { name: name.to_vec() }),
        _ if name.contains(&0) => Err(ParseError::NameContainsNul { name: name.to_vec() }),
        _ => Ok(()),
    }
}

/// Checks a symlink target: 1..=4095 bytes, no NUL. `offset` is only used in errors.
pub fn validate_target(target: &[u8], offset: u64) -> Result<(), ParseError> {
    if target.is_empty() {
        Err(ParseError::EmptyTarget { offset })
    } else if target.len() > MAX_TARGET_LEN {
        Err(ParseError::TargetTooLong { offset, len: target.len() as u64 })
    } else if target.contains(&0) {
        Err(ParseError::TargetContainsNul { target: target.to_vec() })
    } else {
        Ok(())
    }
}

/// One open directory on the explicit stack.
struct Frame {
    id: NodeId,
    /// Name of the previous entry; empty before the first (valid names are never empty, so every
    /// valid first name sorts after it).
    prev: Vec<u8>,
}

fn parse_input<R: BufRead>(
    input: &mut Input<R>,
    visitor: &mut dyn Visitor,
) -> Result<(), ParseError> {
    input.magic()?;
    let mut next_id: NodeId = 0;
    let mut stack: Vec<Frame> = Vec::new();
    if let Some(id) = node(input, &mut next_id, None, visitor)? {
        stack.push(Frame { id, prev: Vec::new() });
    }
    while let Some(frame) = stack.last_mut() {
        let offset = input.pos;
        let tag = input.tag()?;
        match tag.bytes() {
            TOK_CLOSE => {
                stack.pop();
                if !stack.is_empty() {
                    input.close_entry()?;
                }
            }
            TOK_ENTRY => {
                input.expect(TOK_OPEN)?;
                let offset = input.pos;
                match input.tag()?.bytes() {
                    TOK_NAME => {}
                    TOK_NODE => return Err(ParseError::NameAfterNode { offset }),
                    other => return Err(unexpected(offset, &[TOK_NAME], other)),
                }
                let offset = input.pos;
                let mut buf = [0; NAME_BUF_LEN];
                let name = input.bounded(&mut buf, MAX_NAME_LEN, |len| {
                    ParseError::NameTooLong { offset, len }
                })?;
                validate_name(name, offset)?;
                match name.cmp(&frame.prev) {
                    Ordering::Greater => {}
                    Ordering::Equal => {
                        return Err(ParseError::DuplicateName { name: name.to_vec() });
                    }
                    Ordering::Less => {
                        return Err(ParseError::UnsortedName {
                            prev: frame.prev.clone(),
                            name: name.to_vec(),
                        });
                    }
                }
                frame.prev.clear();
                frame.prev.extend_from_slice(name);
                let parent = frame.id;
                input.expect(TOK_NODE)?;
                // The child sits inside every directory on the stack.
                if stack.len() > MAX_DEPTH {
                    return Err(ParseError::TooDeep { offset: input.pos });
                }
                match node(input, &mut next_id, Some((parent, name)), visitor)? {
                    Some(id) => stack.push(Frame { id, prev: Vec::new() }),
                    None => input.close_entry()?,
                }
            }
            other => return Err(unexpected(offset, &[TOK_ENTRY, TOK_CLOSE], other)),
        }
    }
    input.expect_eof()
}

/// Parses one node up to its type. Leaves (files, symlinks) are parsed to their closing `)` and
/// give `None`; a directory gives `Some(id)` and its entries are left to the caller's loop.
fn node<R: BufRead>(
    input: &mut Input<R>,
    next_id: &mut NodeId,
    parent: Option<(NodeId, &[u8])>,
    visitor: &mut dyn Visitor,
) -> Result<Option<NodeId>, ParseError> {
    let id = *next_id;
    *next_id = id.checked_add(1).ok_or(ParseError::TooManyNodes)?;
    input.expect(TOK_OPEN)?;
    input.expect(TOK_TYPE)?;
    let offset = input.pos;
    match input.tag()?.bytes() {
        TOK_REGULAR => {
            file(input, id, parent, visitor)?;
            Ok(None)
        }
        TOK_SYMLINK => {
            input.expect(TOK_TARGET)?;
            let offset = input.pos;
            let mut buf = [0; TARGET_BUF_LEN];
            let target = input.bounded(&mut buf, MAX_TARGET_LEN, |len| {
                ParseError::TargetTooLong { offset, len }
            })?;
            validate_target(target, offset)?;
            visitor.symlink(id, parent, target).map_err(ParseError::Visitor)?;
            input.expect(TOK_CLOSE)?;
            Ok(None)
        }
        TOK_DIRECTORY => {
            visitor.directory(id, parent).map_err(ParseError::Visitor)?;
            Ok(Some(id))
        }
        other => Err(ParseError::UnknownType { offset, found: other.to_vec() }),
    }
}

/// Parses a regular file after its `"type" "regular"`, through its closing `)`.
fn file<R: BufRead>(
    input: &mut Input<R>,
    id: NodeId,
    parent: Option<(NodeId, &[u8])>,
    visitor: &mut dyn Visitor,
) -> Result<(), ParseError> {
    let mut offset = input.pos;
    let mut tag = input.tag()?;
    let executable = tag.bytes() == TOK_EXECUTABLE;
    if executable {
        let value_offset = input.pos;
        input.bounded(&mut [], 0, |len| ParseError::NonEmptyExecutable {
            offset: value_offset,
            len,
        })?;
        offset = input.pos;
        tag = input.tag()?;
    }
    if tag.bytes() != TOK_CONTENTS {
        return Err(unexpected(offset, &[TOK_CONTENTS], tag.bytes()));
    }
    let size = input.len_within_limit()?;
    let start = input.pos;
    let mut contents = Contents { input: &mut *input, remaining: size, failure: None };
    let visited = visitor.file(id, parent, executable, size, &mut contents);
    // An input failure wins over whatever the visitor made of it.
    if let Some(failure) = contents.failure.take() {
        return Err(failure);
    }
    visited.map_err(ParseError::Visitor)?;
    contents.drain()?;
    input.padding(size, start)?;
    let offset = input.pos;
    match input.tag()?.bytes() {
        TOK_CLOSE => Ok(()),
        TOK_EXECUTABLE => Err(ParseError::ExecutableAfterContents { offset }),
        other => Err(unexpected(offset, &[TOK_CLOSE], other)),
    }
}

fn unexpected(offset: u64, expected: &[&[u8]], found: &[u8]) -> ParseError {
    let expected = expected
        .iter()
        .map(|t| format!("\"{}\"", t.escape_ascii()))
        .collect::<Vec<_>>()
        .join(" or ");
    ParseError::UnexpectedTag { offset, expected, found: found.to_vec() }
}

/// A token read into a fixed buffer (tokens are at most [`MAX_TAG_LEN`] bytes).
struct Tag {
    buf: [u8; TAG_BUF_LEN],
    len: usize,
}

impl Tag {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// The byte source with its position and the caller's limit. Invariant: `pos <= limit`.
struct Input<R> {
    inner: R,
    pos: u64,
    limit: u64,
}

impl<R: BufRead> Input<R> {
    fn remaining(&self) -> u64 {
        self.limit - self.pos
    }

    /// Fills `buf` entirely, or fails without consuming past the limit.
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ParseError> {
        if buf.len() as u64 > self.remaining() {
            return Err(ParseError::LimitExceeded { offset: self.pos, limit: self.limit });
        }
        self.inner.read_exact(buf).map_err(|e| input_error(e, self.pos))?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, ParseError> {
        let mut word = [0; WORD_LEN];
        self.read_exact(&mut word)?;
        Ok(u64::from_le_bytes(word))
    }

    /// Reads a length prefix and checks that the string and its padding fit under the limit.
    fn len_within_limit(&mut self) -> Result<u64, ParseError> {
        let offset = self.pos;
        let len = self.u64()?;
        self.check_fits(offset, len)?;
        Ok(len)
    }

    fn check_fits(&self, offset: u64, len: u64) -> Result<(), ParseError> {
        let remaining = self.remaining();
        match padded_len(len) {
            Some(padded) if padded <= remaining => Ok(()),
            _ => Err(ParseError::LengthExceedsLimit { offset, len, remaining }),
        }
    }

    /// Reads a string of at most `max` bytes into `buf` (which must hold `max` rounded up to the
    /// padding) with its padding in one read; a longer length prefix fails with `too_long(len)`
    /// before anything is read.
    fn bounded<'b>(
        &mut self,
        buf: &'b mut [u8],
        max: usize,
        too_long: impl FnOnce(u64) -> ParseError,
    ) -> Result<&'b [u8], ParseError> {
        let offset = self.pos;
        let len = self.u64()?;
        if len > max as u64 {
            return Err(too_long(len));
        }
        self.check_fits(offset, len)?;
        // `len <= max`, so these fit in usize and in `buf`.
        let len = len as usize;
        let padded = len + padding_len(len as u64);
        let Some(raw) = buf.get_mut(..padded) else {
            return Err(too_long(len as u64));
        };
        self.read_exact(raw)?;
        if raw[len..].iter().any(|&b| b != 0) {
            return Err(ParseError::NonZeroPadding { offset });
        }
        Ok(&raw[..len])
    }

    fn tag(&mut self) -> Result<Tag, ParseError> {
        let offset = self.pos;
        let mut buf = [0; TAG_BUF_LEN];
        let len = self
            .bounded(&mut buf, MAX_TAG_LEN, |len| ParseError::TagTooLong { offset, len })?
            .len();
        Ok(Tag { buf, len })
    }

    fn expect(&mut self, want: &[u8]) -> Result<(), ParseError> {
        let offset = self.pos;
        let tag = self.tag()?;
        if tag.bytes() == want { Ok(()) } else { Err(unexpected(offset, &[want], tag.bytes())) }
    }

    fn magic(&mut self) -> Result<(), ParseError> {
        let mut buf = [0; TAG_BUF_LEN];
        let found = self.bounded(&mut buf, MAX_TAG_LEN, |len| ParseError::BadMagic {
            found: format!("a {len}-byte string"),
        })?;
        if found == NAR_MAGIC {
            Ok(())
        } else {
            Err(ParseError::BadMagic { found: format!("\"{}\"", found.escape_ascii()) })
        }
    }

    /// Reads the `)` that closes a directory entry.
    fn close_entry(&mut self) -> Result<(), ParseError> {
        let offset = self.pos;
        match self.tag()?.bytes() {
            TOK_CLOSE => Ok(()),
            TOK_NAME => Err(ParseError::NameAfterNode { offset }),
            other => Err(unexpected(offset, &[TOK_CLOSE], other)),
        }
    }

    /// Reads and checks the padding after file contents that started at `start`.
    fn padding(&mut self, len: u64, start: u64) -> Result<(), ParseError> {
        let mut pad = [0; WORD_LEN];
        let pad = &mut pad[..padding_len(len)];
        self.read_exact(pad)?;
        if pad.iter().any(|&b| b != 0) {
            return Err(ParseError::NonZeroPadding { offset: start });
        }
        Ok(())
    }

    fn expect_eof(&mut self) -> Result<(), ParseError> {
        loop {
            return match self.inner.fill_buf() {
                Ok([]) => Ok(()),
                Ok(_) => Err(ParseError::TrailingData { offset: self.pos }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(ParseError::Io(e)),
            };
        }
    }
}

/// Maps a failed read at `offset`: an early end is truncation, anything else is I/O.
fn input_error(e: io::Error, offset: u64) -> ParseError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        ParseError::Truncated { offset }
    } else {
        ParseError::Io(e)
    }
}

/// The `contents` reader handed to [`Visitor::file`]: yields exactly the file's bytes and
/// remembers the first input failure so [`parse`] can report it.
struct Contents<'a, R> {
    input: &'a mut Input<R>,
    remaining: u64,
    failure: Option<ParseError>,
}

impl<R: BufRead> Contents<'_, R> {
    fn fail(&mut self, failure: ParseError) -> io::Error {
        let e = match &failure {
            ParseError::Io(e) => io::Error::new(e.kind(), e.to_string()),
            other => io::Error::new(io::ErrorKind::UnexpectedEof, other.to_string()),
        };
        self.failure = Some(failure);
        e
    }

    /// Skips whatever the visitor did not read, straight out of the input's buffer.
    fn drain(&mut self) -> Result<(), ParseError> {
        while self.remaining > 0 {
            let available = match self.input.inner.fill_buf() {
                Ok([]) => {
                    return Err(ParseError::Truncated { offset: self.input.pos });
                }
                Ok(buf) => buf.len(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ParseError::Io(e)),
            };
            // Bounded by `available`, so it fits in usize.
            let n = self.remaining.min(available as u64) as usize;
            self.input.inner.consume(n);
            self.input.pos += n as u64;
            self.remaining -= n as u64;
        }
        Ok(())
    }
}

impl<R: BufRead> Read for Contents<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(failure) = &self.failure {
            return Err(io::Error::other(failure.to_string()));
        }
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        // Bounded by `buf.len()`, so it fits in usize.
        let want = self.remaining.min(buf.len() as u64) as usize;
        match self.input.inner.read(&mut buf[..want]) {
            Ok(0) => {
                let offset = self.input.pos;
                Err(self.fail(ParseError::Truncated { offset }))
            }
            Ok(n) => {
                self.input.pos += n as u64;
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let offset = self.input.pos;
                Err(self.fail(input_error(e, offset)))
            }
        }
    }
}
