//! The bytes of the handover state file (docs/ARCHITECTURE.md, "Handover state"): a header, an
//! append-only log of slot records, and after a clean stop a park record. Pure: encoding and
//! strict decoding, no I/O. Everything decoded is untrusted input and checked.
//!
//! ```text
//! 0     magic "storefsH"            8 bytes
//! 8     version                     u32 LE
//! 12    params length P (<= 1024)   u32 LE
//! 16    log length L                u64 LE   committed bytes of the slot log
//! 24    park length K               u64 LE   0: no park record
//! 32    epoch                       u64 LE   daemons that served this connection so far
//! 40    connection parameters       P bytes (the FUSE transport's own encoding)
//! 4096  log: L bytes of records       slot u64 LE, n u8, n bytes of store path basename; or
//!                                     slot 0, n = 12, inode u64, backing id i32 (0: closed)
//! 4096+L park record: K bytes         "park", held n u32, n × (slot u64, lookups u64),
//!                                     handles m u32, m × (fh u64, ino u64, backing id u32)
//! ```

use std::collections::HashSet;

use crate::fs::inode::SLOT_BITS;
use crate::nix::store_path::StorePath;

/// Identifies a state file.
pub const MAGIC: [u8; 8] = *b"storefsH";
/// The layout version written; other versions are refused.
pub const VERSION: u32 = 1;
/// Where the slot log starts (the header's room).
pub const LOG_START: u64 = 4096;
/// The most bytes of connection parameters kept.
pub const MAX_PARAMS: usize = 1024;
/// Bytes of the header before the connection parameters.
pub const FIXED_HEADER: usize = 40;
const PARK_MAGIC: [u8; 4] = *b"park";

/// The header's fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The negotiated FUSE connection parameters, as the transport encodes them.
    pub params: Vec<u8>,
    /// Committed bytes of the slot log.
    pub log_len: u64,
    /// Bytes of the park record after the log, 0 when there is none.
    pub park_len: u64,
    /// How many daemons served the connection so far (file handles of each are distinct).
    pub epoch: u64,
}

/// A handle open across a clean handover: the kernel may still read it or release it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkedHandle {
    /// The file handle the kernel knows.
    pub fh: u64,
    /// Its inode.
    pub ino: u64,
    /// Its passthrough backing id (the connection owns it; the last release closes it).
    pub backing: u32,
}

/// What a clean stop writes beyond the slot log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parked {
    /// The kernel's lookup count for each held slot.
    pub lookups: Vec<(u64, u64)>,
    /// Passthrough handles still open.
    pub handles: Vec<ParkedHandle>,
}

/// Why a state file was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Not a state file.
    #[error("not a storefs state file (bad magic)")]
    BadMagic,
    /// Written by another layout.
    #[error("state file version {0}, this storefs reads version {VERSION}")]
    Version(u32),
    /// A length points outside the file or beyond a limit.
    #[error("{0} is out of bounds")]
    Bounds(&'static str),
    /// A slot record is malformed.
    #[error("slot record at byte {0} is malformed: {1}")]
    Record(u64, &'static str),
    /// The park record is malformed.
    #[error("park record is malformed: {0}")]
    Park(&'static str),
}

/// The header's bytes (at most `LOG_START`).
pub fn encode_header(h: &Header) -> Vec<u8> {
    let params = &h.params[..h.params.len().min(MAX_PARAMS)];
    let mut out = Vec::with_capacity(FIXED_HEADER + params.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(params.len() as u32).to_le_bytes());
    out.extend_from_slice(&h.log_len.to_le_bytes());
    out.extend_from_slice(&h.park_len.to_le_bytes());
    out.extend_from_slice(&h.epoch.to_le_bytes());
    out.extend_from_slice(params);
    out
}

/// The header, checked against a file of `file_len` bytes.
pub fn decode_header(bytes: &[u8], file_len: u64) -> Result<Header, StateError> {
    let mut r = Reader::new(bytes);
    let magic = r.take(8).ok_or(StateError::BadMagic)?;
    if magic != MAGIC {
        return Err(StateError::BadMagic);
    }
    let version = r.u32().ok_or(StateError::Bounds("header"))?;
    if version != VERSION {
        return Err(StateError::Version(version));
    }
    let params_len = r.u32().ok_or(StateError::Bounds("header"))? as usize;
    let log_len = r.u64().ok_or(StateError::Bounds("header"))?;
    let park_len = r.u64().ok_or(StateError::Bounds("header"))?;
    let epoch = r.u64().ok_or(StateError::Bounds("header"))?;
    if params_len > MAX_PARAMS {
        return Err(StateError::Bounds("parameter length"));
    }
    let params = r.take(params_len).ok_or(StateError::Bounds("parameter length"))?.to_vec();
    let end = LOG_START
        .checked_add(log_len)
        .and_then(|e| e.checked_add(park_len))
        .ok_or(StateError::Bounds("log length"))?;
    if end > file_len {
        return Err(StateError::Bounds("log and park length"));
    }
    Ok(Header { params, log_len, park_len, epoch })
}

/// One slot record.
pub fn encode_slot(slot: u64, sp: &StorePath) -> Vec<u8> {
    let name = sp.to_string();
    let mut out = Vec::with_capacity(9 + name.len());
    out.extend_from_slice(&slot.to_le_bytes());
    // A basename is at most 244 bytes (`MAX_BASENAME_LEN`).
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out
}

/// A backing record: passthrough backing id `id` now backs inode `ino` (`id` 0: its id was
/// closed). Slot 0 marks it in the log; its length is always 12.
pub fn encode_backing(ino: u64, id: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(21);
    out.extend_from_slice(&0u64.to_le_bytes());
    out.push(BACKING_RECORD_LEN);
    out.extend_from_slice(&ino.to_le_bytes());
    out.extend_from_slice(&id.to_le_bytes());
    out
}

/// The payload length of a backing record.
const BACKING_RECORD_LEN: u8 = 12;

/// What a log says: every slot, and the passthrough backing ids still open (inode, id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Log {
    /// Every slot assigned, in order.
    pub slots: Vec<(u64, StorePath)>,
    /// Backing ids registered and not closed, by inode.
    pub backing: Vec<(u64, i32)>,
}

/// Every record of a log, checked: each slot a valid slot number, each name a valid store path
/// basename, no slot and no path twice; backing records well-formed, replayed in order.
pub fn decode_log(bytes: &[u8]) -> Result<Log, StateError> {
    let mut r = Reader::new(bytes);
    let (mut slots, mut paths, mut out) = (HashSet::new(), HashSet::new(), Vec::new());
    let mut backing = std::collections::BTreeMap::new();
    while !r.is_empty() {
        let at = r.pos as u64;
        let bad = |why| StateError::Record(at, why);
        let slot = r.u64().ok_or(bad("cut short"))?;
        let len = r.u8().ok_or(bad("cut short"))?;
        let body = r.take(usize::from(len)).ok_or(bad("cut short"))?;
        if slot == 0 {
            let mut b = Reader::new(body);
            let (Some(ino), Some(id), true) = (b.u64(), b.u32(), len == BACKING_RECORD_LEN) else {
                return Err(bad("malformed backing record"));
            };
            match id as i32 {
                0 => backing.remove(&ino),
                id if id > 0 => backing.insert(ino, id),
                _ => return Err(bad("negative backing id")),
            };
            continue;
        }
        if slot >> SLOT_BITS != 0 {
            return Err(bad("slot number out of range"));
        }
        let sp = StorePath::from_basename(body).map_err(|_| bad("not a store path basename"))?;
        if !slots.insert(slot) || !paths.insert(sp.clone()) {
            return Err(bad("slot or path given twice"));
        }
        out.push((slot, sp));
    }
    Ok(Log { slots: out, backing: backing.into_iter().collect() })
}

/// The park record's bytes.
pub fn encode_park(p: &Parked) -> Vec<u8> {
    let mut out = PARK_MAGIC.to_vec();
    out.extend_from_slice(&(p.lookups.len() as u32).to_le_bytes());
    for (slot, n) in &p.lookups {
        out.extend_from_slice(&slot.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&(p.handles.len() as u32).to_le_bytes());
    for h in &p.handles {
        out.extend_from_slice(&h.fh.to_le_bytes());
        out.extend_from_slice(&h.ino.to_le_bytes());
        out.extend_from_slice(&h.backing.to_le_bytes());
    }
    out
}

/// The park record, checked: exact length, counts that fit.
pub fn decode_park(bytes: &[u8]) -> Result<Parked, StateError> {
    let mut r = Reader::new(bytes);
    let short = StateError::Park("cut short");
    if r.take(4) != Some(&PARK_MAGIC[..]) {
        return Err(StateError::Park("bad magic"));
    }
    let n = r.u32().ok_or(short.clone())? as usize;
    if n > r.remaining() / 16 {
        return Err(StateError::Park("held count larger than the record"));
    }
    let mut lookups = Vec::with_capacity(n);
    for _ in 0..n {
        lookups.push((r.u64().ok_or(short.clone())?, r.u64().ok_or(short.clone())?));
    }
    let m = r.u32().ok_or(short.clone())? as usize;
    if m > r.remaining() / 20 {
        return Err(StateError::Park("handle count larger than the record"));
    }
    let mut handles = Vec::with_capacity(m);
    for _ in 0..m {
        let fh = r.u64().ok_or(short.clone())?;
        let ino = r.u64().ok_or(short.clone())?;
        let backing = r.u32().ok_or(short.clone())?;
        handles.push(ParkedHandle { fh, ino, backing });
    }
    if !r.is_empty() {
        return Err(StateError::Park("trailing bytes"));
    }
    Ok(Parked { lookups, handles })
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes)
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A store path from its basename.
    pub fn sp(s: &str) -> StorePath {
        StorePath::from_basename(s.as_bytes()).unwrap()
    }

    /// Two store path basenames.
    pub const A: &str = "00bgd045z0d4icpbc2yyz4gx48ak44la-hello-2.12";
    pub const B: &str = "11bgd045z0d4icpbc2yyz4gx48ak44la-bash-5.2";

    #[test]
    fn header_round_trips_and_is_checked_against_the_file() {
        let h = Header { params: b"params".to_vec(), log_len: 100, park_len: 30, epoch: 3 };
        let bytes = encode_header(&h);
        assert_eq!(decode_header(&bytes, LOG_START + 130), Ok(h.clone()));
        assert_eq!(
            decode_header(&bytes, LOG_START + 129),
            Err(StateError::Bounds("log and park length"))
        );
        let mut other = bytes.clone();
        other[8] = 9;
        assert_eq!(decode_header(&other, u64::MAX), Err(StateError::Version(9)));
        assert_eq!(decode_header(b"garbage!", u64::MAX), Err(StateError::BadMagic));
        let mut huge = bytes;
        huge[12..16].copy_from_slice(&2000u32.to_le_bytes());
        assert_eq!(decode_header(&huge, u64::MAX), Err(StateError::Bounds("parameter length")));
    }

    #[test]
    fn slot_log_round_trips() {
        let mut log = encode_slot(5, &sp(A));
        log.extend(encode_slot(1 << 39, &sp(B)));
        assert_eq!(decode_log(&log).unwrap().slots, vec![(5, sp(A)), (1 << 39, sp(B))]);
    }

    #[test]
    fn bad_slot_logs_are_refused() {
        let one = encode_slot(5, &sp(A));
        let cut = &one[..one.len() - 1];
        assert!(matches!(decode_log(cut), Err(StateError::Record(0, "cut short"))));
        let mut twice = one.clone();
        twice.extend(encode_slot(6, &sp(A)));
        assert!(matches!(
            decode_log(&twice),
            Err(StateError::Record(_, "slot or path given twice"))
        ));
        let mut zero = one.clone();
        zero[..8].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode_log(&zero).is_err(), "slot 0 marks a backing record of 12 bytes");
        let mut wide = one.clone();
        wide[..8].copy_from_slice(&(1u64 << SLOT_BITS).to_le_bytes());
        assert!(decode_log(&wide).is_err());
        let mut name = one;
        name[9] = b'/';
        assert!(matches!(
            decode_log(&name),
            Err(StateError::Record(0, "not a store path basename"))
        ));
    }

    #[test]
    fn backing_records_replay_to_the_ids_still_open() {
        let mut log = encode_backing(7 << 24 | 3, 2);
        log.extend(encode_slot(5, &sp(A)));
        log.extend(encode_backing(9 << 24 | 1, 4));
        log.extend(encode_backing(7 << 24 | 3, 0));
        log.extend(encode_backing(7 << 24 | 3, 6));
        let got = decode_log(&log).unwrap();
        assert_eq!(got.slots, vec![(5, sp(A))]);
        assert_eq!(got.backing, vec![(7 << 24 | 3, 6), (9 << 24 | 1, 4)]);
        let mut negative = encode_backing(1, 1);
        negative[17..21].copy_from_slice(&(-1i32).to_le_bytes());
        assert!(decode_log(&negative).is_err());
        let mut short = encode_backing(1, 1);
        short[8] = 11;
        short.pop();
        assert!(decode_log(&short).is_err());
    }

    #[test]
    fn park_record_round_trips_and_refuses_lies() {
        let p = Parked {
            lookups: vec![(5, 3), (9, 1)],
            handles: vec![ParkedHandle { fh: 1 << 32 | 4, ino: 5 << 24 | 2, backing: 1 }],
        };
        let bytes = encode_park(&p);
        assert_eq!(decode_park(&bytes), Ok(p));
        let mut lie = bytes.clone();
        lie[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_park(&lie).is_err());
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode_park(&trailing), Err(StateError::Park("trailing bytes")));
        assert!(decode_park(&bytes[..bytes.len() - 1]).is_err());
    }

    proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_header(&bytes, u64::MAX);
            let _ = decode_log(&bytes);
            let _ = decode_park(&bytes);
        }
    }
}
