//! The composition root: upstreams → cache → filesystem → mount → control socket, metrics and
//! systemd readiness, then wait for shutdown.

pub mod handover;
pub mod relaunch;

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};

use tracing::{info, warn};

use crate::cache::NarCache;
use crate::config::{Config, MountConfig};
use crate::control::handler::UpgradeOrder;
use crate::control::{self, DaemonHandler, DaemonInfo};
use crate::fs::StoreFs;
use crate::fs::fuse::{FuseAdapter, OpenHandles};
use crate::fs::read_log::ReadLog;
use crate::fs::session::{self, Mounted};
use crate::metrics::{self, Report, Reporters, Snapshot};
use crate::notify::Notifier;
use crate::sync::Arc;
use crate::upstream::UpstreamSet;
use crate::upstream::auth::AuthSources;
use crate::upstream::http::build_client;
use crate::upstream::rate::{DEFAULT_MAX_WAIT, RequestLimiter};
use crate::upstream::set::{UpstreamOptions, upstream_for_url};
use handover::Launch;
use relaunch::Relaunch;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: bad usage or configuration.
pub const EXIT_USAGE: u8 = 1;
/// Exit code: failure at run time.
pub const EXIT_RUNTIME: u8 = 2;

/// A daemon failure, with the exit code it deserves.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration cannot work (bad substituter URL, unusable cache directory).
    #[error("{0:#}")]
    Setup(anyhow::Error),
    /// Something failed while running.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

impl DaemonError {
    /// Process exit code: 1 for set-up problems the user must fix, 2 for runtime failures.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Setup(_) => EXIT_USAGE,
            DaemonError::Runtime(_) => EXIT_RUNTIME,
        }
    }
}

/// How the daemon was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: with the descriptor in the fd store, park for the next start; else unmount.
    Terminate,
    /// SIGINT (Ctrl-C): unmount.
    Interrupt,
}

/// Runs the daemon until `shutdown` resolves or the mount goes away; `launch` carries what was
/// handed to the process for taking a live mount over, and how to run a successor in its place.
pub async fn run(
    config: Config,
    launch: Launch,
    shutdown: impl Future<Output = Stop>,
) -> Result<(), DaemonError> {
    use anyhow::Context as _;
    let setup = DaemonError::Setup;
    // Everything the daemon needs is loaded before mounting: touching our own mount would deadlock.
    let upstream = &config.upstream;
    let client =
        build_client(upstream.timeouts).context("cannot build the HTTP client").map_err(setup)?;
    let auth = AuthSources::load(upstream.netrc_file.as_deref(), &upstream.bearer_token_files)
        .context("cannot load substituter credentials")
        .map_err(setup)?;
    if let Some(url) = auth
        .bearer_urls()
        .find(|u| !upstream.substituters.iter().any(|s| s.trim_end_matches('/') == *u))
    {
        return Err(setup(anyhow::anyhow!(
            "--bearer-token-file names {url}, which is not a substituter"
        )));
    }
    let max_wait = upstream.fetch_timeout.unwrap_or(DEFAULT_MAX_WAIT);
    let options = UpstreamOptions {
        retry: upstream.retry,
        backoff: upstream.backoff,
        auth,
        limiter: Arc::new(RequestLimiter::new(upstream.rate, max_wait)),
        document_timeout: upstream.fetch_timeout,
    };
    let upstreams = upstream
        .substituters
        .iter()
        .map(|url| upstream_for_url(url, &client, &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(e.into()))?;
    // Ordered by nix-cache-info Priority lazily, at the first fetch.
    let upstreams = UpstreamSet::in_order(upstreams);
    let cache_dir = config.cache.dir.clone();
    let max_bytes = config.cache.max_bytes;
    let cache = NarCache::open(config.cache, upstreams, config.trusted_keys)
        .with_context(|| format!("cannot open cache directory {}", cache_dir.display()))
        .map_err(setup)?;
    // Both sockets are bound before mounting: a second daemon fails here, not after mounting.
    let control = control::bind(&config.control_socket)
        .context("cannot open the control socket")
        .map_err(setup)?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await.map_err(|e| setup(e.into()))?),
        None => None,
    };
    let mut fs = StoreFs::new(cache.clone());
    if let Some(path) = &config.record_reads {
        let log = ReadLog::create(path)
            .with_context(|| format!("cannot open --record-reads file {}", path.display()))
            .map_err(setup)?;
        fs = fs.with_read_log(log);
    }
    let fs = Arc::new(fs);
    let parts: Vec<Arc<dyn Report>> = vec![cache.clone() as Arc<dyn Report>, fs.clone()];
    let reporters = Arc::new(Reporters::new(parts));
    let MountConfig { mountpoint, options: mount_options, passthrough } = config.mount;
    let rt = tokio::runtime::Handle::current();
    let adapter = || FuseAdapter::new(fs.clone(), rt.clone(), passthrough);
    let notifier = Notifier::from_env();
    let Launch { mut inherited, relaunch } = launch;
    let live =
        handover::start(&fs, adapter, &mountpoint, &mount_options, &mut inherited, &notifier)
            .await
            .with_context(|| format!("cannot mount {}", mountpoint.display()))
            .map_err(setup)?;
    info!(mountpoint = %mountpoint.display(), cache = %cache_dir.display(),
          max_bytes, fd_store = live.stored, "serving");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    info!(socket = %control.path().display(), "control socket");
    let daemon_info = Arc::new(DaemonInfo::new(mountpoint.clone(), cache_dir.clone()));
    let (upgrade_tx, upgrades) = tokio::sync::mpsc::channel(1);
    let handler = Arc::new(
        DaemonHandler::new(cache.clone(), reporters.clone(), daemon_info.clone())
            .with_upgrades(upgrade_tx),
    );
    let control_task = tokio::spawn(control::serve(control, handler, stopped()));
    let metrics_task = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving /metrics");
        }
        let r = reporters.clone();
        let render = move || metrics::render(&r.snapshot());
        tokio::spawn(metrics::serve(listener, render, stopped()))
    });
    notify(&notifier, "READY=1");
    let status_task = notifier.enabled().then(|| {
        let (n, r, stop) = (notifier.clone(), reporters.clone(), stopped());
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                notify(&n, &status_line(&r.snapshot()));
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(STATUS_INTERVAL) => {}
                }
            }
        })
    });
    let served = Served { fs: &fs, adapter: &adapter, relaunch: &relaunch, state: &live.state };
    let result =
        served.until_stopped(live.mounted, live.handles, live.stored, shutdown, upgrades).await;
    daemon_info.set_stopping();
    notify(&notifier, "STOPPING=1");
    let _ = stop_tx.send(true);
    // The control task owns the socket: waiting for it removes the socket file.
    let _ = control_task.await;
    for task in metrics_task.into_iter().chain(status_task) {
        let _ = task.await;
    }
    // Prefetches and downloads still running end without publishing; the lock is released now,
    // not when the last task lets go of the cache.
    cache.close();
    result
}

/// What serving needs beyond the mount: the filesystem, a way to make a new adapter (a
/// resumed session after a failed upgrade), the program to relaunch and the state file.
struct Served<'a, A: Fn() -> FuseAdapter> {
    fs: &'a Arc<StoreFs>,
    adapter: &'a A,
    relaunch: &'a Relaunch,
    state: &'a OwnedFd,
}

impl<A: Fn() -> FuseAdapter> Served<'_, A> {
    /// Serves `mounted` until a stop: a signal (SIGTERM parks when `stored`, else unmounts), the
    /// mount going away, or an upgrade that happened (then this never returns).
    async fn until_stopped(
        &self,
        mut mounted: Mounted,
        mut handles: OpenHandles,
        stored: bool,
        shutdown: impl Future<Output = Stop>,
        mut upgrades: tokio::sync::mpsc::Receiver<UpgradeOrder>,
    ) -> Result<(), DaemonError> {
        use anyhow::Context as _;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                stop = &mut shutdown => {
                    if stop == Stop::Terminate && stored {
                        handover::park(self.fs, mounted, &handles).await
                            .context("cannot park the connection")
                            .map_err(DaemonError::Runtime)?;
                        info!("parked for the next start; the mount stays");
                        return Ok(());
                    }
                    return mounted.unmount().await.context("unmount failed")
                        .map_err(DaemonError::Runtime);
                }
                ended = mounted.ended() => {
                    info!("mount went away; exiting");
                    return ended.context("FUSE session failed").map_err(DaemonError::Runtime);
                }
                Some(order) = upgrades.recv() => {
                    (mounted, handles) = self.upgrade(mounted, handles, order).await?;
                }
            }
        }
    }

    /// Hands the mount over to the ordered program by `execve`; if that fails, serves on and
    /// tells the caller why.
    async fn upgrade(
        &self,
        mounted: Mounted,
        handles: OpenHandles,
        order: UpgradeOrder,
    ) -> Result<(Mounted, OpenHandles), DaemonError> {
        use anyhow::Context as _;
        let program = match self.relaunch.program(order.binary.as_deref()) {
            Ok(p) => p,
            Err(why) => {
                let _ = order.failed.send(why);
                return Ok((mounted, handles));
            }
        };
        let mountpoint = mounted.mountpoint().to_path_buf();
        info!(program = %program.display(), "upgrade: parking the connection");
        let parked = handover::park(self.fs, mounted, &handles)
            .await
            .context("cannot park the connection for an upgrade")
            .map_err(DaemonError::Runtime)?;
        let handover::Parked { dev, params, handles: open } = parked;
        let fds = [(handover::FUSE_FD, dev.as_fd()), (handover::STATE_FD, self.state.as_fd())];
        let err = self.relaunch.exec(&program, &fds);
        warn!(program = %program.display(), error = %err, "upgrade failed; serving on");
        self.fs.unpark();
        let adapter = (self.adapter)();
        let handles = adapter.open_handles();
        handles.restore(&open);
        let resumed =
            tokio::task::spawn_blocking(move || session::resume(adapter, &mountpoint, dev, params))
                .await
                .map_err(|e| DaemonError::Runtime(e.into()))?
                .context("cannot resume after a failed upgrade")
                .map_err(DaemonError::Runtime)?;
        let _ = order
            .failed
            .send(format!("cannot run {}: {err}; the old daemon serves on", program.display()));
        Ok((resumed, handles))
    }
}

/// How often systemd's STATUS= line is refreshed.
const STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// `STATUS=` for systemctl status: the figures an operator glances at.
fn status_line(s: &Snapshot) -> String {
    format!(
        "STATUS=serving: {} paths, {} MiB cached, hit rate {:.0}%, {} fetches in flight",
        s.count("cached_paths").unwrap_or(0),
        s.count("cache_bytes").unwrap_or(0) >> 20,
        s.number("hit_rate").unwrap_or(0.0) * 100.0,
        s.count("in_flight").unwrap_or(0)
    )
}

fn notify(notifier: &Notifier, state: &str) {
    if let Err(err) = notifier.notify(state) {
        warn!(error = %err, "sd_notify failed");
    }
}
