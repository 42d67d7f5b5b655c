//! Runs the real `storefs` binary as a daemon against a mountpoint and cache in a temp dir.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a mount may take to appear.
const MOUNT_DEADLINE: Duration = Duration::from_secs(20);

/// A running `storefs mount`; dropping it stops the daemon and unmounts.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    /// The mountpoint.
    pub mnt: PathBuf,
    /// The cache directory.
    pub cache: PathBuf,
    /// File receiving the daemon's stderr.
    pub log: PathBuf,
    /// The control socket: `--control-socket` from the arguments, else the log path with the
    /// extension `.sock` (never the system-wide default, so tests can run side by side).
    pub control: PathBuf,
}

/// Path of the storefs binary under test.
pub fn storefs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_storefs")
}

impl Daemon {
    /// Runs the client command `storefs ARGS --control-socket <this daemon's>` (stats, prefetch,
    /// evict, ...) with no input, and returns its output.
    pub fn client(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(storefs_bin())
            .args(args)
            .arg("--control-socket")
            .arg(&self.control)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    /// Starts `storefs mount <dir>/mnt --cache-dir <dir>/cache` with `args` appended
    /// (substituters, keys, limits) and waits until the mount is live.
    pub fn start(dir: &Path, args: &[String]) -> Daemon {
        let mnt = dir.join("mnt");
        let cache = dir.join("cache");
        std::fs::create_dir_all(&mnt).unwrap();
        Self::start_at(&mnt, &cache, &dir.join("storefs.log"), args)
    }

    /// Like `start` with explicit paths.
    pub fn start_at(mnt: &Path, cache: &Path, log: &Path, args: &[String]) -> Daemon {
        Self::start_env(mnt, cache, log, args, &[])
    }

    /// Like `start_at`, with extra environment variables (e.g. STOREFS_FAILPOINTS).
    pub fn start_env(
        mnt: &Path,
        cache: &Path,
        log: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::spawn(mnt, cache, log, args, env).wait_mounted_ok()
    }

    /// Starts the daemon like `start_env` without waiting for the mount (readiness tests).
    pub fn spawn(
        mnt: &Path,
        cache: &Path,
        log: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Daemon {
        Self::spawn_in(mnt, cache, log, args, env, None)
    }

    /// Like `start`, with the daemon in the network namespace `netns` (a `/run/netns/<name>`
    /// file): it is then its own host on the network, while its mount is in this mount namespace.
    pub fn start_in_netns(dir: &Path, args: &[String], netns: &Path) -> Daemon {
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let (cache, log) = (dir.join("cache"), dir.join("storefs.log"));
        Self::spawn_in(&mnt, &cache, &log, args, &[], Some(netns)).wait_mounted_ok()
    }

    fn spawn_in(
        mnt: &Path,
        cache: &Path,
        log: &Path,
        args: &[String],
        env: &[(&str, &str)],
        netns: Option<&Path>,
    ) -> Daemon {
        let logfile = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let mut args = args.to_vec();
        let control = match args.iter().position(|a| a == "--control-socket") {
            Some(i) => PathBuf::from(&args[i + 1]),
            None => {
                let control = log.with_extension("sock");
                args.extend(["--control-socket".to_owned(), control.display().to_string()]);
                control
            }
        };
        let mut cmd = Command::new(storefs_bin());
        if let Some(netns) = netns {
            enter_netns_on_exec(&mut cmd, netns);
        }
        let child = cmd
            .arg("mount")
            .arg(mnt)
            .arg("--cache-dir")
            .arg(cache)
            .arg("--nix-conf")
            .arg("/dev/null")
            .args(&args)
            .env("STOREFS_LOG", "storefs=debug,info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("spawn storefs");
        Daemon {
            child: Some(child),
            mnt: mnt.into(),
            cache: cache.into(),
            log: log.into(),
            control,
        }
    }

    fn wait_mounted_ok(mut self) -> Daemon {
        self.wait_mounted();
        self
    }

    fn wait_mounted(&mut self) {
        let deadline = Instant::now() + MOUNT_DEADLINE;
        // A dead mount from a killed daemon is also listed, and the kernel may answer stat from
        // its cache; only a live daemon answers statfs.
        while !(is_storefs_mount(&self.mnt) && statfs_ok(&self.mnt)) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("storefs exited with {status} before mounting; log:\n{}", self.log_text());
            }
            assert!(Instant::now() < deadline, "mount did not appear; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `mnt/<basename of store_path>` plus `rest`.
    pub fn path(&self, store_path: &str, rest: &str) -> PathBuf {
        let base = store_path.trim_start_matches("/nix/store/");
        let p = self.mnt.join(base);
        if rest.is_empty() { p } else { p.join(rest) }
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        if is_storefs_mount(&self.mnt) {
            force_unmount(&self.mnt);
        }
        status.code()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits (up to `timeout`) for the daemon to exit by itself; returns how it ended.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until the log contains `needle`, returning the log.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_text();
            if log.contains(needle) {
                return log;
            }
            assert!(Instant::now() < deadline, "log never showed {needle:?}:\n{log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if is_storefs_mount(&self.mnt) {
            force_unmount(&self.mnt);
        }
    }
}

/// Makes `cmd` join the network namespace `netns` between fork and exec (only the network
/// namespace: `ip netns exec` would also give it a mount namespace of its own, hiding its mount).
fn enter_netns_on_exec(cmd: &mut Command, netns: &Path) {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let file = std::fs::File::open(netns)
        .unwrap_or_else(|e| panic!("network namespace {}: {e}", netns.display()));
    let fd = OwnedFd::from(file);
    // SAFETY: setns is async-signal-safe; the closure owns the descriptor, so it stays open
    // until the command is dropped (it is close-on-exec, so the daemon does not inherit it).
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// True when statfs(path) succeeds (it always reaches the FUSE daemon).
pub fn statfs_ok(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 }
}

/// True when `mnt` is a `fuse.storefs` mount in this namespace.
pub fn is_storefs_mount(mnt: &Path) -> bool {
    let mnt = mnt.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mounts").unwrap_or_default().lines().any(|l| {
        let mut f = l.split(' ');
        let (_, point, fstype) = (f.next(), f.next(), f.next());
        point == Some(mnt.as_str()) && fstype == Some("fuse.storefs")
    })
}

fn force_unmount(mnt: &Path) {
    let _ = Command::new("umount").arg("-l").arg(mnt).status();
}

/// `storefs stats --json` of `d`, parsed.
pub fn stats(d: &Daemon) -> serde_json::Value {
    let out = d.client(&["stats", "--json"]);
    assert!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The count `key` of a `stats` answer.
pub fn stat(v: &serde_json::Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} missing or not a count in {v}"))
}
