//! How the daemon runs its successor in its own place (`storefs upgrade`): `execve` of a program
//! with the arguments this one got, `/dev/fuse` and the state file passed as `$LISTEN_FDS`, so
//! the pid, the mount and the connection stay. The program path is resolved at start: after a
//! package upgrade `/proc/self/exe` names the deleted old file, the path names the new one.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::notify::{listen, slots};

/// The program and arguments this daemon was started with.
#[derive(Clone, Debug)]
pub struct Relaunch {
    binary: PathBuf,
    args: Vec<OsString>,
}

impl Relaunch {
    /// What this process was started as (call at start).
    pub fn from_start() -> Self {
        let binary = std::env::current_exe().unwrap_or_else(|_| "/proc/self/exe".into());
        Self { binary, args: std::env::args_os().collect() }
    }

    /// The program run by default.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// `binary`, or the default, if it can be run: an absolute path to an executable file.
    pub fn program(&self, binary: Option<&Path>) -> Result<PathBuf, String> {
        let path = binary.unwrap_or(&self.binary);
        if !path.is_absolute() {
            return Err(format!("{} is not an absolute path", path.display()));
        }
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: `c` is NUL-terminated and outlives the call.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 || !path.is_file() {
            let err = io::Error::last_os_error();
            return Err(format!("{} cannot be run: {err}", path.display()));
        }
        Ok(path.to_path_buf())
    }

    /// Replaces this process with `program`, passing `fds` under their names. Returns only if
    /// that failed, with every descriptor where it was.
    pub fn exec(&self, program: &Path, fds: &[(&str, BorrowedFd<'_>)]) -> io::Error {
        let prepared = match self.prepare(program, fds) {
            Ok(p) => p,
            Err(err) => return err,
        };
        let only_fds: Vec<BorrowedFd<'_>> = fds.iter().map(|(_, fd)| *fd).collect();
        if let Err(err) = slots::pass_on(&only_fds) {
            let _ = slots::take_back();
            return err;
        }
        let argv = pointers(&prepared.args);
        let envp = pointers(&prepared.env);
        // SAFETY: every pointer array is NULL-terminated and points into CStrings that outlive
        // the call; on success the call does not return.
        unsafe { libc::execve(prepared.program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        let err = io::Error::last_os_error();
        if let Err(back) = slots::take_back() {
            tracing::warn!(error = %back, "cannot restore the descriptor placeholders");
        }
        err
    }

    /// Everything `execve` needs, allocated before any descriptor moves.
    fn prepare(&self, program: &Path, fds: &[(&str, BorrowedFd<'_>)]) -> io::Result<Prepared> {
        let c = |bytes: Vec<u8>| CString::new(bytes).map_err(io::Error::other);
        let program = c(program.as_os_str().as_bytes().to_vec())?;
        let args = self.args.iter().map(|a| c(a.clone().into_vec())).collect::<Result<_, _>>()?;
        let mut env: Vec<CString> = std::env::vars_os()
            .filter(|(k, _)| !listen::VARS.iter().any(|v| k.as_bytes() == v.as_bytes()))
            .map(|(k, v)| {
                let mut kv = k.into_vec();
                kv.push(b'=');
                kv.extend(v.into_vec());
                c(kv)
            })
            .collect::<Result<_, _>>()?;
        let names: Vec<&str> = fds.iter().map(|(n, _)| *n).collect();
        env.push(c(format!("LISTEN_PID={}", std::process::id()).into_bytes())?);
        env.push(c(format!("LISTEN_FDS={}", fds.len()).into_bytes())?);
        env.push(c(format!("LISTEN_FDNAMES={}", names.join(":")).into_bytes())?);
        Ok(Prepared { program, args, env })
    }
}

/// `execve`'s arguments as owned strings.
struct Prepared {
    program: CString,
    args: Vec<CString>,
    env: Vec<CString>,
}

fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings.iter().map(|s| s.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_executable_files_are_run() {
        let r = Relaunch { binary: "/bin/true".into(), args: vec![] };
        assert_eq!(r.program(None).unwrap(), Path::new("/bin/true"));
        assert!(r.program(Some(Path::new("true"))).unwrap_err().contains("absolute"));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "not a program").unwrap();
        assert!(r.program(Some(&plain)).unwrap_err().contains("cannot be run"), "no x bit");
        assert!(r.program(Some(Path::new("/nonexistent"))).is_err());
        assert!(r.program(Some(Path::new("/tmp"))).is_err(), "a directory");
    }

    #[test]
    fn the_successor_is_told_its_descriptors_and_nothing_stale() {
        let r =
            Relaunch { binary: "/bin/true".into(), args: vec!["storefs".into(), "mount".into()] };
        let file = tempfile::tempfile().unwrap();
        use std::os::fd::AsFd;
        let p =
            r.prepare(Path::new("/bin/true"), &[("fuse", file.as_fd()), ("state", file.as_fd())]);
        let p = p.unwrap();
        let env: Vec<String> = p.env.iter().map(|e| e.to_string_lossy().into_owned()).collect();
        assert!(env.contains(&format!("LISTEN_PID={}", std::process::id())));
        assert!(env.contains(&"LISTEN_FDS=2".to_owned()));
        assert!(env.contains(&"LISTEN_FDNAMES=fuse:state".to_owned()));
        assert_eq!(env.iter().filter(|e| e.starts_with("LISTEN_FDS=")).count(), 1);
        assert_eq!(p.args.len(), 2);
    }
}
