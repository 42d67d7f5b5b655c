//! The handover state file: a memfd the service manager keeps beside the `/dev/fuse` descriptor
//! (`FDNAME=state`), holding what a successor daemon needs to answer the kernel with the same
//! inode numbers: the connection parameters, every slot assignment (appended as it happens, so it
//! survives a SIGKILL) and, after a clean stop, the kernel's lookup counts and open passthrough
//! handles. The layout is in `format.rs`.

pub mod format;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use self::format::{Header, LOG_START};
pub use self::format::{Parked, ParkedHandle, StateError};
use crate::nix::store_path::StorePath;

/// What a successor found in a state file.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The negotiated connection parameters (empty if none were written).
    pub params: Vec<u8>,
    /// Every slot assigned so far.
    pub slots: Vec<(u64, StorePath)>,
    /// Passthrough backing ids registered and not closed, by inode (what a crash left open).
    pub backing: Vec<(u64, i32)>,
    /// The clean stop's record; None after a crash.
    pub parked: Option<Parked>,
}

/// The open state file.
#[derive(Debug)]
pub struct StateFile {
    file: File,
    header: Header,
}

impl StateFile {
    /// A new, empty state file (a memfd; close-on-exec).
    pub fn create() -> io::Result<Self> {
        // SAFETY: the name is a NUL-terminated literal.
        let fd = unsafe { libc::memfd_create(c"storefs-state".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let file = File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        let mut state = Self { file, header: Header { epoch: 1, ..Header::default() } };
        state.reset()?;
        Ok(state)
    }

    /// Opens a state file handed over by a predecessor and starts a new epoch in it. A file that
    /// does not check out is emptied, keeping the connection parameters if its header was sound
    /// (the connection is still live, so the successor serves it with an empty slot table), and
    /// the error says why.
    pub fn adopt(fd: OwnedFd) -> io::Result<(Self, Recovered, Option<StateError>)> {
        let file = File::from(fd);
        let mut state = Self { file, header: Header::default() };
        let found = state.read();
        let epoch = state.header.epoch.max(1) + 1;
        match found {
            Ok(recovered) => {
                // The park record was used once; a crash later must not reuse its counts.
                state.header.park_len = 0;
                state.header.epoch = epoch;
                state.write_header()?;
                Ok((state, recovered, None))
            }
            Err(problem) => {
                // The header is only kept when it decoded (`read` sets it then).
                let params = std::mem::take(&mut state.header.params);
                state.header = Header { epoch, params: params.clone(), ..Header::default() };
                state.reset()?;
                Ok((state, Recovered { params, ..Recovered::default() }, Some(problem)))
            }
        }
    }

    /// The descriptor to store or pass on.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The daemons that served this connection so far, this one included (at least 1).
    pub fn epoch(&self) -> u64 {
        self.header.epoch
    }

    /// Records the connection parameters.
    pub fn set_params(&mut self, params: &[u8]) -> io::Result<()> {
        self.header.params = params.to_vec();
        self.write_header()
    }

    /// Appends one slot assignment: the record first, then the header's committed length, so a
    /// crash between the two loses only a record whose inode the kernel never saw.
    pub fn append_slot(&mut self, slot: u64, sp: &StorePath) -> io::Result<()> {
        self.append(&format::encode_slot(slot, sp))
    }

    fn append(&mut self, record: &[u8]) -> io::Result<()> {
        self.file.write_all_at(record, LOG_START + self.header.log_len)?;
        self.header.log_len += record.len() as u64;
        self.header.park_len = 0;
        self.write_header()
    }

    /// Appends a backing record: id `id` backs inode `ino` (0: its id was closed).
    pub fn append_backing(&mut self, ino: u64, id: i32) -> io::Result<()> {
        self.append(&format::encode_backing(ino, id))
    }

    /// Writes the park record after the log (a clean stop).
    pub fn park(&mut self, parked: &Parked) -> io::Result<()> {
        let record = format::encode_park(parked);
        self.file.write_all_at(&record, LOG_START + self.header.log_len)?;
        self.header.park_len = record.len() as u64;
        self.write_header()
    }

    /// Drops the park record (serving goes on in this process after all).
    pub fn clear_park(&mut self) -> io::Result<()> {
        self.header.park_len = 0;
        self.write_header()
    }

    fn read(&mut self) -> Result<Recovered, StateError> {
        let len = self.file.metadata().map_err(|_| StateError::Bounds("file"))?.len();
        let mut head = vec![0u8; LOG_START.min(len) as usize];
        self.file.read_exact_at(&mut head, 0).map_err(|_| StateError::Bounds("header"))?;
        self.header = format::decode_header(&head, len)?;
        let mut body = vec![0u8; (self.header.log_len + self.header.park_len) as usize];
        self.file.read_exact_at(&mut body, LOG_START).map_err(|_| StateError::Bounds("log"))?;
        let (log, park) = body.split_at(self.header.log_len as usize);
        let format::Log { slots, backing } = format::decode_log(log)?;
        let parked = match park {
            [] => None,
            bytes => Some(format::decode_park(bytes)?),
        };
        Ok(Recovered { params: self.header.params.clone(), slots, backing, parked })
    }

    fn reset(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.set_len(LOG_START)?;
        self.write_header()
    }

    fn write_header(&mut self) -> io::Result<()> {
        self.file.write_all_at(&format::encode_header(&self.header), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::format::tests::{A, B, sp};
    use super::*;

    fn handed_over(state: &StateFile) -> OwnedFd {
        state.fd().try_clone_to_owned().unwrap()
    }

    #[test]
    fn a_successor_finds_every_slot_and_the_parameters_without_a_park() {
        let mut state = StateFile::create().unwrap();
        state.set_params(b"conn").unwrap();
        state.append_slot(7, &sp(A)).unwrap();
        state.append_slot(8, &sp(B)).unwrap();
        // A SIGKILL here: nothing more is written.
        let (next, found, problem) = StateFile::adopt(handed_over(&state)).unwrap();
        assert_eq!(problem, None);
        assert_eq!(found.params, b"conn");
        assert_eq!(found.slots, vec![(7, sp(A)), (8, sp(B))]);
        assert!(found.parked.is_none(), "a crash leaves no counts");
        assert_eq!((state.epoch(), next.epoch()), (1, 2));
    }

    #[test]
    fn a_park_record_is_read_once_and_the_log_goes_on_after_it() {
        let mut state = StateFile::create().unwrap();
        state.append_slot(7, &sp(A)).unwrap();
        let parked = Parked {
            lookups: vec![(7, 4)],
            handles: vec![ParkedHandle { fh: 3, ino: 7 << 24 | 1, backing: 2 }],
        };
        state.park(&parked).unwrap();
        let (mut next, found, _) = StateFile::adopt(handed_over(&state)).unwrap();
        assert_eq!(found.parked, Some(parked));
        next.append_slot(8, &sp(B)).unwrap();
        let (third, found, _) = StateFile::adopt(handed_over(&next)).unwrap();
        assert!(found.parked.is_none(), "the counts were used by the second daemon");
        assert_eq!(found.slots, vec![(7, sp(A)), (8, sp(B))]);
        assert_eq!(third.epoch(), 3);
    }

    #[test]
    fn a_damaged_file_is_refused_and_emptied_but_still_usable() {
        let mut state = StateFile::create().unwrap();
        state.set_params(b"conn").unwrap();
        state.append_slot(7, &sp(A)).unwrap();
        state.file.write_all_at(b"X", LOG_START + 9).unwrap();
        let (mut next, found, problem) = StateFile::adopt(handed_over(&state)).unwrap();
        assert!(matches!(problem, Some(StateError::Record(0, _))), "{problem:?}");
        assert!(found.slots.is_empty());
        assert_eq!(found.params, b"conn", "a sound header keeps the connection usable");
        next.append_slot(8, &sp(B)).unwrap();
        next.append_backing(8 << 24 | 2, 3).unwrap();
        let (_, found, problem) = StateFile::adopt(handed_over(&next)).unwrap();
        assert_eq!(found.backing, vec![(8 << 24 | 2, 3)]);
        assert_eq!(
            (found.slots, found.params, problem),
            (vec![(8, sp(B))], b"conn".to_vec(), None)
        );
        let garbage = File::from(OwnedFd::from(tempfile::tempfile().unwrap()));
        garbage.write_all_at(b"not a state file", 0).unwrap();
        let (_, found, problem) = StateFile::adopt(garbage.into()).unwrap();
        assert_eq!(problem, Some(StateError::BadMagic));
        assert!(found.params.is_empty(), "nothing is taken from a bad header");
    }
}
