//! The mount's life across daemons: at start, resume the `/dev/fuse` connection handed over
//! (`$LISTEN_FDS` from systemd's fd store or from `storefs upgrade`) or mount anew; after
//! mounting, put the descriptor and the state file in the fd store (`FDSTORE=1`); at a stop,
//! park the connection at a request boundary instead of unmounting when a successor will get it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use tracing::{info, warn};

use super::relaunch::Relaunch;
use crate::fs::StoreFs;
use crate::fs::fuse::{FuseAdapter, OpenHandles};
use crate::fs::session::{self, MountError, MountOptions, Mounted};
use crate::fs::state::{ParkedHandle, Recovered, StateFile};
use crate::notify::Notifier;
use crate::notify::listen::Inherited;
use crate::sync::Arc;
use crate::wire::ConnParams;

/// The fd store names.
pub const FUSE_FD: &str = "fuse";
/// The state file's name in the fd store.
pub const STATE_FD: &str = "state";
/// How long a park waits for replies in flight; requests still unanswered then are re-sent by
/// the kernel to the successor (`FUSE_NOTIFY_RESEND`).
pub const PARK_GRACE: Duration = Duration::from_secs(2);

/// What the process got at start for the handover: descriptors passed to it, and how to run
/// its successor in its place.
#[derive(Debug)]
pub struct Launch {
    /// Descriptors from `$LISTEN_FDS`.
    pub inherited: Inherited,
    /// The program and arguments this process was started with.
    pub relaunch: Relaunch,
}

/// A serving mount and what a handover of it needs.
#[derive(Debug)]
pub struct Live {
    /// The mount.
    pub mounted: Mounted,
    /// The state file (the filesystem writes it; this is a second descriptor of it).
    pub state: OwnedFd,
    /// Whether the service manager keeps both descriptors: then a stop parks instead of
    /// unmounting, and the next start resumes.
    pub stored: bool,
    /// The open passthrough handles of the serving adapter.
    pub handles: OpenHandles,
}

/// Resumes the connection in `inherited`, or mounts `mountpoint` anew (detaching a dead mount a
/// daemon without fd store left), with `fs` logging its slots to a state file from the start.
pub async fn start(
    fs: &Arc<StoreFs>,
    adapter: impl Fn() -> FuseAdapter,
    mountpoint: &Path,
    options: &MountOptions,
    inherited: &mut Inherited,
    notifier: &Notifier,
) -> Result<Live, MountError> {
    let sys = |action: &str| {
        let action = action.to_owned();
        move |source| MountError::Sys { action, source }
    };
    let dev = inherited.take(FUSE_FD);
    let state_fd = inherited.take(STATE_FD);
    if !inherited.is_empty() {
        warn!(names = ?inherited.names(), "ignoring descriptors passed with unknown names");
    }
    if let Some(dev) = dev {
        match adopt_state(state_fd) {
            Ok((state, recovered, params)) => {
                let state_dup = state.fd().try_clone_to_owned().map_err(sys("cannot dup"))?;
                let slots = recovered.slots.len();
                let parked = fs.attach_state(state, &recovered);
                let (adapter, at) = (adapter(), mountpoint.to_path_buf());
                let handles = adapter.open_handles();
                handles.restore(&parked);
                if recovered.parked.is_none() {
                    handles.keep_crashed(&recovered.backing);
                }
                let mounted = blocking(move || session::resume(adapter, &at, dev, params))
                    .await
                    .map_err(sys("session thread"))??;
                info!(slots, clean = recovered.parked.is_some(), "took the live mount over");
                // The store still holds both descriptors: a restart takes nothing out of it.
                let stored = stores_fds(notifier);
                return Ok(Live { mounted, state: state_dup, stored, handles });
            }
            Err(why) => {
                // A live connection without its parameters cannot be served: let it go (its
                // readers see ENOTCONN, never a hang) and mount anew.
                warn!(%why, "cannot resume the handed-over connection; mounting anew");
                drop(dev);
                forget_stored(notifier);
                session::detach(mountpoint);
            }
        }
    }
    let state = StateFile::create().map_err(sys("cannot create the state file"))?;
    let state_dup = state.fd().try_clone_to_owned().map_err(sys("cannot dup"))?;
    // Attached before mounting: every slot the kernel can see is logged.
    fs.attach_state(state, &Recovered::default());
    let (adapter, at, options) = (adapter(), mountpoint.to_path_buf(), options.clone());
    let handles = adapter.open_handles();
    let mounted = blocking(move || session::mount(adapter, &at, &options))
        .await
        .map_err(sys("session thread"))??;
    fs.set_connection_params(&mounted.params().to_bytes())
        .map_err(sys("cannot write the state file"))?;
    let stored = store(notifier, &mounted, &state_dup);
    Ok(Live { mounted, state: state_dup, stored, handles })
}

/// The state file handed over, its contents and the connection parameters in it. A state file
/// that does not check out is emptied and used on (the connection is live, and an empty slot
/// table only costs fresh lookups); only missing parameters make the connection unusable.
fn adopt_state(fd: Option<OwnedFd>) -> Result<(StateFile, Recovered, ConnParams), String> {
    let fd = fd.ok_or("no state file was handed over with the /dev/fuse descriptor")?;
    let (state, recovered, problem) =
        StateFile::adopt(fd).map_err(|e| format!("state file: {e}"))?;
    if let Some(why) = problem {
        warn!(%why, "state file refused; serving on with an empty slot table (inodes the kernel \
               holds answer ESTALE until looked up again)");
    }
    let params = ConnParams::from_bytes(&recovered.params)
        .map_err(|e| format!("no usable connection parameters in the state file: {e}"))?;
    Ok((state, recovered, params))
}

/// Puts the `/dev/fuse` descriptor and the state file in the service manager's fd store.
/// True when both were sent and the manager keeps an fd store (`$FDSTORE`, systemd >= 254, is
/// not 0).
fn store(notifier: &Notifier, mounted: &Mounted, state: &OwnedFd) -> bool {
    if !stores_fds(notifier) {
        return false;
    }
    let sent =
        [(FUSE_FD, mounted.dev_fd()), (STATE_FD, state.as_fd())].into_iter().all(|(n, fd)| {
            let message = format!("FDSTORE=1\nFDNAME={n}\nFDPOLL=0");
            match notifier.notify_with_fds(&message, &[fd]) {
                Ok(()) => true,
                Err(err) => {
                    warn!(error = %err, name = n, "cannot store a descriptor; a stop will unmount");
                    false
                }
            }
        });
    if sent {
        info!("the /dev/fuse descriptor and the state file are in the fd store");
    }
    sent
}

/// Whether a service manager may keep descriptors for us.
fn stores_fds(notifier: &Notifier) -> bool {
    notifier.enabled() && std::env::var("FDSTORE").map_or(true, |max| max != "0")
}

/// Asks the service manager to drop stored descriptors that cannot be resumed.
fn forget_stored(notifier: &Notifier) {
    for name in [FUSE_FD, STATE_FD] {
        let _ = notifier.notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
    }
}

/// A parked connection: its descriptor, its parameters and the passthrough handles open on it.
#[derive(Debug)]
pub struct Parked {
    /// The live `/dev/fuse` descriptor.
    pub dev: OwnedFd,
    /// What INIT settled.
    pub params: ConnParams,
    /// Passthrough handles open across the park, their backing ids left open.
    pub handles: Vec<ParkedHandle>,
}

/// Stops serving at a request boundary without unmounting, and writes what a successor needs.
pub async fn park(
    fs: &Arc<StoreFs>,
    mounted: Mounted,
    handles: &OpenHandles,
) -> std::io::Result<Parked> {
    let (dev, params) = blocking(move || mounted.park(PARK_GRACE)).await??;
    let handles = handles.park();
    fs.set_connection_params(&params.to_bytes())?;
    fs.park(handles.clone())?;
    Ok(Parked { dev, params, handles })
}

/// Runs `f` on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(std::io::Error::other)
}
