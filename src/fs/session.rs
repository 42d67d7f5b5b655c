//! Mounting: `/dev/fuse`, `mount(2)` as `fuse.storefs`, the session threads, and unmounting.
//!
//! We call `mount(2)` ourselves so the mount is typed `fuse.storefs` in /proc/mounts and so the
//! daemon owns the `/dev/fuse` descriptor: `park` hands it back live, and a successor `resume`s
//! it without a new mount (and without INIT, which the kernel sends once per connection).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tracing::{info, warn};

use super::fuse::FuseAdapter;
use crate::sync::Arc;
use crate::wire::{self, ConnParams, Serving, Start};

/// Filesystem type shown in /proc/mounts.
pub const FS_TYPE: &str = "fuse.storefs";
/// Threads reading kernel requests. Handlers that may wait on the network run on the tokio
/// runtime; the rest (memory, local disk) are quick, so few threads are needed.
const SESSION_THREADS: usize = 2;

/// How to mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// Let other users (containers' users) in: adds `allow_other,default_permissions`.
    pub allow_other: bool,
}

/// Why mounting failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mountpoint is unusable.
    #[error("mountpoint {path}: {reason}")]
    Mountpoint {
        /// The mountpoint.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A system call failed. The cause is the error's source, not repeated in its message.
    #[error("{action}")]
    Sys {
        /// What was attempted.
        action: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A live mount; `unmount` ends it, `ended` tells when it ended by itself (external umount),
/// `park` hands its live connection over.
#[derive(Debug)]
pub struct Mounted {
    mountpoint: PathBuf,
    serving: Serving,
}

/// Mounts `adapter` read-only at `mountpoint` and starts serving.
pub fn mount(
    adapter: FuseAdapter,
    mountpoint: &Path,
    options: &MountOptions,
) -> Result<Mounted, MountError> {
    let bad = |reason: String| MountError::Mountpoint { path: mountpoint.into(), reason };
    clear_dead_mount(mountpoint);
    let mountpoint = mountpoint.canonicalize().map_err(|e| bad(e.to_string()))?;
    if !mountpoint.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let mounted =
        mount_type(&mountpoint).map_err(|e| bad(format!("cannot read mountinfo: {e}")))?;
    if let Some(fstype) = mounted {
        return Err(bad(already_mounted_reason(&fstype)));
    }
    let sys = |action: &str| {
        let action = action.to_owned();
        move |source| MountError::Sys { action, source }
    };
    // SAFETY: plain getters with no arguments.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let dev: File = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")
        .map_err(|e| MountError::Sys {
            action: open_fuse_failure(e.raw_os_error(), uid),
            source: e,
        })?;
    let mut data = format!("fd={},rootmode=40000,user_id={uid},group_id={gid}", dev.as_raw_fd());
    if options.allow_other {
        data.push_str(",allow_other,default_permissions");
    }
    let cstr = |s: &[u8]| CString::new(s).map_err(|e| bad(e.to_string()));
    let (source, target) = (cstr(b"storefs")?, cstr(mountpoint.as_os_str().as_bytes())?);
    let (fstype, data) = (cstr(FS_TYPE.as_bytes())?, cstr(data.as_bytes())?);
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: every pointer is a NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast())
    };
    if rc != 0 {
        let err = io::Error::last_os_error();
        let action = mount_failure(err.raw_os_error(), uid, effective_capabilities());
        return Err(MountError::Sys { action, source: err });
    }
    // Without `allow_other` the kernel itself lets only the mounting user in.
    match wire::serve(OwnedFd::from(dev), Arc::new(adapter), Start::Fresh, SESSION_THREADS) {
        Ok(serving) => {
            info!(mountpoint = %mountpoint.display(), "mounted");
            Ok(Mounted { mountpoint, serving })
        }
        Err(e) => {
            detach(&mountpoint);
            Err(sys("FUSE handshake failed")(e))
        }
    }
}

/// Serves a live connection again: `dev` is the `/dev/fuse` descriptor of the mount at
/// `mountpoint`, negotiated before with `params` (by a parked session, ours or a predecessor's).
/// No mount(2), no INIT; requests the previous server read but never answered are re-sent by
/// the kernel when it supports `FUSE_NOTIFY_RESEND`.
pub fn resume(
    adapter: FuseAdapter,
    mountpoint: &Path,
    dev: OwnedFd,
    params: ConnParams,
) -> Result<Mounted, MountError> {
    let serving =
        wire::serve(dev, Arc::new(adapter), Start::Resume(params), SESSION_THREADS).map_err(
            |source| MountError::Sys { action: "cannot resume the FUSE connection".into(), source },
        )?;
    info!(mountpoint = %mountpoint.display(), resend = params.has_resend(), "resumed");
    Ok(Mounted { mountpoint: mountpoint.into(), serving })
}

impl Mounted {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Resolves when the session ended without `unmount` (someone unmounted it, or the kernel
    /// aborted the connection).
    pub async fn ended(&mut self) -> io::Result<()> {
        self.serving.ended().await
    }

    /// What INIT settled for this connection (to resume it later).
    pub fn params(&self) -> ConnParams {
        self.serving.params()
    }

    /// The `/dev/fuse` descriptor (for the fd store).
    pub fn dev_fd(&self) -> BorrowedFd<'_> {
        self.serving.dev()
    }

    /// Stops serving without unmounting: waits up to `grace` for replies in flight and returns
    /// the live descriptor and its parameters, for `resume` (here or in a successor).
    pub fn park(self, grace: Duration) -> io::Result<(OwnedFd, ConnParams)> {
        let (dev, params) = self.serving.park(grace)?;
        info!(mountpoint = %self.mountpoint.display(), "parked");
        Ok((dev, params))
    }

    /// Unmounts (lazily if busy) and waits for the session threads to finish.
    pub async fn unmount(self) -> io::Result<()> {
        let target = CString::new(self.mountpoint.as_os_str().as_bytes())?;
        // SAFETY: `target` is a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(target.as_ptr(), 0) } != 0 {
            let err = io::Error::last_os_error();
            warn!(mountpoint = %self.mountpoint.display(), error = %err,
                  "unmount failed, detaching lazily");
            detach(&self.mountpoint);
        }
        let mut serving = self.serving;
        let result = serving.ended().await;
        info!(mountpoint = %self.mountpoint.display(), "unmounted");
        result
    }
}

/// Detaches the mount at `mountpoint` (`MNT_DETACH`): users of it keep what they hold, new
/// path walks no longer reach it.
pub fn detach(mountpoint: &Path) {
    if let Ok(target) = CString::new(mountpoint.as_os_str().as_bytes()) {
        // SAFETY: `target` is a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Why a mountpoint that is already a mount point is refused, and what to do. A live storefs
/// must not be unmounted by hand (`umount -l` would take the store from running jobs), so it gets
/// its own answer.
fn already_mounted_reason(fstype: &str) -> String {
    if fstype == FS_TYPE {
        "a running storefs is mounted here; stop that daemon first (unmounting it by hand takes \
         the store away from the jobs using it)"
            .into()
    } else {
        format!(
            "already a mount point ({fstype}); storefs mounts only on a plain directory: unmount \
             it, or in a container bind the parent directory (/nix) instead of the mountpoint"
        )
    }
}

/// What failed when `/dev/fuse` cannot be opened by user `euid`, with the likely fix for its
/// errno: only a missing device is the module's fault.
fn open_fuse_failure(errno: Option<i32>, euid: u32) -> String {
    let hint = match (errno, euid) {
        (Some(libc::ENOENT), _) => {
            "no such device: load the fuse module (modprobe fuse); in a container, pass \
             --device /dev/fuse"
        }
        (Some(libc::ENODEV | libc::ENXIO), _) => "the fuse module is not loaded (modprobe fuse)",
        (Some(libc::EACCES | libc::EPERM), 0) => {
            "permission denied to root: in a container, pass --device /dev/fuse (the device \
             rules refuse it otherwise); a /dev mounted nodev refuses every device"
        }
        (Some(libc::EACCES | libc::EPERM), _) => "permission denied: storefs must run as root",
        _ => return "cannot open /dev/fuse".into(),
    };
    format!("cannot open /dev/fuse ({hint})")
}

/// `CAP_SYS_ADMIN`, the capability `mount(2)` needs (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;

/// What failed when `mount(2)` refused, with the likely fix: not root, root without
/// `CAP_SYS_ADMIN` (a container without `--cap-add SYS_ADMIN`), or a security module (AppArmor's
/// default Docker profile denies `mount` even with the capability). `cap_eff` is the effective
/// capability set, if known.
fn mount_failure(errno: Option<i32>, euid: u32, cap_eff: Option<u64>) -> String {
    let has_sys_admin = cap_eff.map(|caps| caps & (1 << CAP_SYS_ADMIN) != 0);
    let hint = match (errno, euid, has_sys_admin) {
        (Some(libc::EPERM | libc::EACCES), 0, Some(false)) => {
            "root without CAP_SYS_ADMIN: grant it (in Docker: --cap-add SYS_ADMIN)"
        }
        (Some(libc::EPERM | libc::EACCES), 0, Some(true)) => {
            "refused despite CAP_SYS_ADMIN, so a security module denies it: in Docker on an \
             AppArmor host, add --security-opt apparmor=unconfined; see the kernel log"
        }
        (Some(libc::EPERM | libc::EACCES), 0, None) => {
            "root needs CAP_SYS_ADMIN, and a security module (AppArmor) must allow mount"
        }
        (Some(libc::EPERM | libc::EACCES), _, _) => "storefs must run as root",
        _ => return "mount(2) failed".into(),
    };
    format!("mount(2) failed ({hint})")
}

/// This process's effective capabilities (`CapEff` in /proc/self/status), if readable.
fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// A daemon that died leaves its mount behind, answering ENOTCONN; a supervisor restarting us
/// must be able to take the mountpoint back. Only a dead `fuse.storefs` mount is detached.
fn clear_dead_mount(mountpoint: &Path) {
    // statfs, not stat: the kernel may answer stat from cached attributes of a dead mount, while
    // statfs always asks the daemon.
    let dead = statfs_errno(mountpoint) == Some(libc::ENOTCONN);
    if dead && mount_type(mountpoint).ok().flatten().as_deref() == Some(FS_TYPE) {
        warn!(mountpoint = %mountpoint.display(),
              "detaching a dead storefs mount left by a previous daemon");
        detach(mountpoint);
    }
}

/// The errno of `statfs(path)`, None when it succeeds.
fn statfs_errno(path: &Path) -> Option<i32> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statfs is plain old data; zeroed is a valid value for it.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer for the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 {
        None
    } else {
        io::Error::last_os_error().raw_os_error()
    }
}

/// The filesystem type mounted at `path` (absolute), if it is a mount point in this namespace.
pub fn mount_type(path: &Path) -> io::Result<Option<String>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = path.as_os_str().as_bytes();
    // Fields: id parent major:minor root mountpoint options [optional...] - fstype source super.
    Ok(info.lines().rev().find_map(|line| {
        let point = line.split(' ').nth(4)?;
        if unescape_mountinfo(point) != want {
            return None;
        }
        let (_, after) = line.split_once(" - ")?;
        after.split(' ').next().map(str::to_owned)
    }))
}

/// Undoes mountinfo's octal escapes (`\040` for space and so on).
fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b"), b"/tmp/a b");
        assert_eq!(unescape_mountinfo(r"/x\134y"), b"/x\\y");
        assert_eq!(unescape_mountinfo(r"/trailing\04"), b"/trailing\\04");
    }

    #[test]
    fn mount_refusals_name_their_likely_cause() {
        let all_caps = Some(u64::MAX);
        let no_sys_admin = Some(!(1 << CAP_SYS_ADMIN));
        let cases = [
            ("user", Some(libc::EPERM), 1000, all_caps, "must run as root"),
            ("root without the capability", Some(libc::EPERM), 0, no_sys_admin, "--cap-add"),
            ("root with it, AppArmor", Some(libc::EACCES), 0, all_caps, "apparmor=unconfined"),
            ("root, capabilities unknown", Some(libc::EPERM), 0, None, "CAP_SYS_ADMIN"),
            ("another errno", Some(libc::EINVAL), 0, all_caps, "mount(2) failed"),
        ];
        for (case, errno, euid, caps, want) in cases {
            let got = mount_failure(errno, euid, caps);
            assert!(got.contains(want), "{case}: {got:?} lacks {want:?}");
            if euid == 0 {
                assert!(!got.contains("must run as root"), "{case}: root told to be root: {got}");
            }
        }
    }

    #[test]
    fn dev_fuse_failures_name_their_likely_cause() {
        assert!(open_fuse_failure(Some(libc::ENOENT), 0).contains("modprobe fuse"));
        let root_denied = open_fuse_failure(Some(libc::EPERM), 0);
        assert!(root_denied.contains("--device /dev/fuse"), "{root_denied}");
        let user_denied = open_fuse_failure(Some(libc::EACCES), 1000);
        assert!(user_denied.contains("must run as root"), "{user_denied}");
        for denied in [root_denied, user_denied] {
            assert!(!denied.contains("module"), "blamed on the module: {denied}");
        }
        assert_eq!(open_fuse_failure(Some(libc::EIO), 0), "cannot open /dev/fuse");
    }

    #[test]
    fn a_live_storefs_is_never_to_be_unmounted_by_hand() {
        let live = already_mounted_reason(FS_TYPE);
        assert!(live.contains("stop that daemon") && !live.contains("umount"), "{live}");
        let bind = already_mounted_reason("ext4");
        assert!(bind.contains("(ext4)") && bind.contains("/nix"), "{bind}");
    }

    #[test]
    fn root_is_a_mountpoint() {
        assert!(mount_type(Path::new("/")).unwrap().is_some());
        assert_eq!(mount_type(Path::new("/proc")).unwrap().as_deref(), Some("proc"));
    }
}
