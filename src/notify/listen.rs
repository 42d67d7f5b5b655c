//! Descriptors handed to us at start (`sd_listen_fds_with_names(3)`): `$LISTEN_PID` names this
//! process, `$LISTEN_FDS` counts descriptors from 3 on, `$LISTEN_FDNAMES` names them
//! (colon-separated). systemd passes the fd store this way; `storefs upgrade` passes its own
//! descriptors the same way across `execve`.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;
/// The most descriptors taken; more means the variables are not meant for us.
const MAX_FDS: usize = 64;

/// The variables of the protocol, unset once read.
pub const VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Why the variables could not be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ListenError {
    /// A variable is not a number.
    #[error("${0} is {1:?}, not a number")]
    NotANumber(&'static str, String),
    /// Too many descriptors.
    #[error("$LISTEN_FDS is {0}, more than storefs takes ({MAX_FDS})")]
    TooMany(usize),
    /// A passed descriptor is not open.
    #[error("descriptor {0} from $LISTEN_FDS is not open")]
    NotOpen(RawFd),
}

/// Named descriptors passed at start; each taken at most once.
#[derive(Debug, Default)]
pub struct Inherited {
    fds: Vec<(String, OwnedFd)>,
}

impl Inherited {
    /// The descriptor named `name` (the first, if several), taken out.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        let i = self.fds.iter().position(|(n, _)| n == name)?;
        Some(self.fds.remove(i).1)
    }

    /// The names of the descriptors not taken yet.
    pub fn names(&self) -> Vec<&str> {
        self.fds.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Whether no descriptor is left.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

/// Takes the descriptors passed to this process (moving them above `slots::SLOTS`) and unsets
/// the variables, so children do not see them. Must run before any other thread exists (it
/// changes the environment).
pub fn take_from_env() -> Result<Inherited, ListenError> {
    let var = |name| std::env::var(name).ok();
    let parsed = parse(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    for name in VARS {
        // SAFETY: called at start, before the runtime or any other thread exists.
        unsafe { std::env::remove_var(name) };
    }
    let mut fds = Vec::new();
    for (i, name) in parsed?.into_iter().enumerate() {
        let fd = FIRST_FD + i as RawFd;
        // Moved above the slots kept for passing descriptors on (`slots`), close-on-exec.
        let moved = super::slots::above_slots(fd).map_err(|_| ListenError::NotOpen(fd))?;
        // SAFETY: the protocol hands descriptors 3.. to this process, and nothing else in it
        // owns them: this runs once, at start. The old number is closed.
        unsafe { libc::close(fd) };
        // SAFETY: `moved` is a new descriptor nothing else owns.
        fds.push((name, unsafe { OwnedFd::from_raw_fd(moved) }));
    }
    Ok(Inherited { fds })
}

/// The names of the descriptors passed to process `our_pid`, one per descriptor from 3 on
/// (`unknown` where `$LISTEN_FDNAMES` gives none); empty when the variables are unset or meant
/// for another process.
fn parse(
    pid: Option<&str>,
    count: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Vec<String>, ListenError> {
    let (Some(pid), Some(count)) = (pid, count) else { return Ok(Vec::new()) };
    let pid: u32 =
        pid.parse().map_err(|_| ListenError::NotANumber("LISTEN_PID", pid.to_owned()))?;
    if pid != our_pid {
        return Ok(Vec::new());
    }
    let count: usize =
        count.parse().map_err(|_| ListenError::NotANumber("LISTEN_FDS", count.to_owned()))?;
    if count > MAX_FDS {
        return Err(ListenError::TooMany(count));
    }
    let mut given = names.map(|n| n.split(':').collect::<Vec<_>>()).unwrap_or_default();
    given.resize(count, "unknown");
    Ok(given.into_iter().take(count).map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_belong_to_descriptors_in_order() {
        let got = parse(Some("42"), Some("2"), Some("fuse:state"), 42).unwrap();
        assert_eq!(got, ["fuse", "state"]);
        let short = parse(Some("42"), Some("3"), Some("fuse"), 42).unwrap();
        assert_eq!(short, ["fuse", "unknown", "unknown"]);
        let long = parse(Some("42"), Some("1"), Some("fuse:state"), 42).unwrap();
        assert_eq!(long, ["fuse"]);
    }

    #[test]
    fn variables_for_another_process_or_unset_give_nothing() {
        assert!(parse(Some("41"), Some("2"), Some("fuse:state"), 42).unwrap().is_empty());
        assert!(parse(None, Some("2"), None, 42).unwrap().is_empty());
        assert!(parse(Some("42"), None, None, 42).unwrap().is_empty());
    }

    #[test]
    fn garbage_is_refused_by_name() {
        let err = parse(Some("x"), Some("1"), None, 42).unwrap_err();
        assert_eq!(err, ListenError::NotANumber("LISTEN_PID", "x".into()));
        assert!(parse(Some("42"), Some("-1"), None, 42).is_err());
        assert_eq!(parse(Some("42"), Some("100"), None, 42), Err(ListenError::TooMany(100)));
    }

    #[test]
    fn inherited_descriptors_are_taken_once_by_name() {
        let file = |_| OwnedFd::from(tempfile::tempfile().unwrap());
        let mut inherited = Inherited {
            fds: ["fuse", "state"].iter().map(|n| (n.to_string(), file(()))).collect(),
        };
        assert!(inherited.take("fuse").is_some());
        assert!(inherited.take("fuse").is_none());
        assert_eq!(inherited.names(), ["state"]);
        assert!(inherited.take("state").is_some() && inherited.is_empty());
    }
}
