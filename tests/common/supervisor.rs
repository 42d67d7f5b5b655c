//! A test service manager that speaks systemd's fd-store protocol as systemd does: a datagram
//! socket named by `$NOTIFY_SOCKET`; `FDSTORE=1` datagrams with `FDNAME=` and descriptors as
//! `SCM_RIGHTS` are kept (a descriptor of a file already stored is not kept twice),
//! `FDSTOREREMOVE=1` drops a name; each start passes the store as `$LISTEN_FDS` from descriptor 3
//! with `$LISTEN_PID` (the started process's pid) and `$LISTEN_FDNAMES`, and waits for
//! `READY=1`. `stop` closes the store, as `systemctl stop` does.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use storefs::notify::scm::recv_with_fds;

use super::daemon::storefs_bin;

/// How long a start may take to send READY=1.
const READY_DEADLINE: Duration = Duration::from_secs(30);
/// Where stored descriptors wait in the child before the shell moves them to 3.. (far above
/// what `Command` itself opens).
const PARKING: RawFd = 50;

/// A supervised `storefs mount`.
#[derive(Debug)]
pub struct Supervisor {
    notify: UnixDatagram,
    notify_path: PathBuf,
    /// The fd store: (name, descriptor), in the order stored.
    store: Vec<(String, OwnedFd)>,
    child: Option<Child>,
    args: Vec<String>,
    /// The daemon's log (every start appends).
    pub log: PathBuf,
    /// The mountpoint.
    pub mnt: PathBuf,
    /// Starts so far.
    pub starts: u32,
}

impl Supervisor {
    /// Starts `storefs mount <mnt> --cache-dir <dir>/cache ARGS` under supervision and waits for
    /// READY=1.
    pub fn start(dir: &Path, mnt: &Path, args: &[String]) -> Self {
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_nonblocking(true).unwrap();
        let mut args = args.to_vec();
        args.extend(["--cache-dir".into(), dir.join("cache").display().to_string()]);
        args.extend(["--control-socket".into(), dir.join("control.sock").display().to_string()]);
        args.extend(["--nix-conf".into(), "/dev/null".into()]);
        let mut s = Supervisor {
            notify,
            notify_path,
            store: Vec::new(),
            child: None,
            args,
            log: dir.join("storefs.log"),
            mnt: mnt.to_path_buf(),
            starts: 0,
        };
        s.spawn();
        s
    }

    /// The names in the fd store.
    pub fn stored(&self) -> Vec<String> {
        self.store.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The control socket.
    pub fn control(&self) -> PathBuf {
        self.notify_path.with_file_name("control.sock")
    }

    /// The daemon's log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `systemctl kill -s KILL` then the restart `Restart=on-failure` makes.
    pub fn crash_and_restart(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        self.spawn();
    }

    /// `systemctl restart`: SIGTERM, the old daemon must exit 0, then a start.
    pub fn restart(&mut self) {
        let status = self.terminate();
        assert_eq!(status, Some(0), "SIGTERM exit; log:\n{}", self.log_text());
        self.spawn();
    }

    /// `systemctl stop`: SIGTERM, wait, and close the fd store. Returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let code = self.terminate();
        self.collect(false, Instant::now());
        self.store.clear();
        code
    }

    fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        status.code()
    }

    /// Starts the daemon with the fd store passed as systemd passes it; waits for READY=1.
    fn spawn(&mut self) {
        self.collect(false, Instant::now());
        let raw: Vec<RawFd> = self.store.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
        let names: Vec<&str> = self.store.iter().map(|(n, _)| n.as_str()).collect();
        // The shell moves the descriptors from PARKING.. to 3.. and sets LISTEN_PID to its own
        // pid, which `exec` keeps (systemd sets it between its fork and exec).
        let mut moves = String::new();
        for i in 0..raw.len() as RawFd {
            moves.push_str(&format!(" {}<&{} {}<&-", 3 + i, PARKING + i, PARKING + i));
        }
        let script = if raw.is_empty() {
            "exec \"$@\"".to_owned()
        } else {
            format!(
                "exec{moves}; export LISTEN_PID=$$ LISTEN_FDS={} LISTEN_FDNAMES={}; exec \"$@\"",
                raw.len(),
                names.join(":")
            )
        };
        let logfile =
            std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg("-c")
            .arg(script)
            .arg("bash")
            .arg(storefs_bin())
            .arg("mount")
            .arg(&self.mnt)
            .args(&self.args)
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env("STOREFS_LOG", "storefs=debug,info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile);
        // SAFETY: dup2 is async-signal-safe; the descriptors stay open in the parent.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, PARKING + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("spawn storefs"));
        self.starts += 1;
        self.collect(true, Instant::now() + READY_DEADLINE);
    }

    /// Reads notifications, keeping stored descriptors, until READY=1 (with `until_ready`) or
    /// until none is waiting.
    fn collect(&mut self, until_ready: bool, deadline: Instant) {
        loop {
            match recv_with_fds(self.notify.as_fd(), 4096) {
                Ok((payload, fds)) => {
                    let text = String::from_utf8_lossy(&payload).into_owned();
                    let ready = self.handle(&text, fds);
                    if ready && until_ready {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !until_ready {
                        return;
                    }
                    if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                        panic!("storefs exited with {status} before READY=1:\n{}", self.log_text());
                    }
                    assert!(Instant::now() < deadline, "no READY=1; log:\n{}", self.log_text());
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }

    /// One notification; true when it says READY=1.
    fn handle(&mut self, text: &str, fds: Vec<OwnedFd>) -> bool {
        let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::to_owned);
        let name = field("FDNAME=").unwrap_or_else(|| "stored".into());
        if field("FDSTOREREMOVE=").as_deref() == Some("1") {
            self.store.retain(|(n, _)| *n != name);
        }
        if field("FDSTORE=").as_deref() == Some("1") {
            for fd in fds {
                // systemd keeps one descriptor per open file.
                if !self.store.iter().any(|(_, kept)| same_file(kept, &fd)) {
                    self.store.push((name.clone(), fd));
                }
            }
        }
        text.lines().any(|l| l == "READY=1")
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
        }
        self.store.clear();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// Whether two descriptors share one open file description (`kcmp`, as systemd's `same_fd`).
fn same_file(a: &OwnedFd, b: &OwnedFd) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    let pid = libc::c_long::from(std::process::id() as i32);
    // SAFETY: kcmp compares two descriptors of this process; no memory is passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid,
            pid,
            KCMP_FILE,
            libc::c_long::from(a.as_raw_fd()),
            libc::c_long::from(b.as_raw_fd()),
        )
    };
    rc == 0
}

/// The mount id of `mnt` in this namespace (`/proc/self/mountinfo`, first field).
pub fn mount_id(mnt: &Path) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mnt.to_string_lossy().replace(' ', "\\040");
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        (f.get(4) == Some(&want.as_str())).then(|| f[0].parse().ok()).flatten()
    })
}

/// The unique id of the mount at `mnt` (`statx` `STATX_MNT_ID_UNIQUE`, Linux >= 6.8): never
/// reused, unlike mountinfo's ids, so an equal id is the same mount.
pub fn unique_mount_id(mnt: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mnt.as_os_str().as_bytes()).ok()?;
    // SAFETY: a zeroed plain-old-data out-struct.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path, valid out-pointer.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            libc::STATX_MNT_ID_UNIQUE,
            &mut stx,
        )
    };
    (rc == 0 && stx.stx_mask & libc::STATX_MNT_ID_UNIQUE != 0).then_some(stx.stx_mnt_id)
}
