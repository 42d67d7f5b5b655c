//! The composition root: upstreams → cache → filesystem → mount → control socket, metrics and
//! systemd readiness, then wait for shutdown.

use std::future::Future;

use tracing::{info, warn};

use crate::cache::{CacheConfig, NarCache};
use crate::config::Config;
use crate::control::{self, DaemonHandler, DaemonInfo};
use crate::fs::StoreFs;
use crate::fs::fuse::FuseAdapter;
use crate::fs::session::{self, MountOptions};
use crate::metrics::{self, Snapshot};
use crate::notify::Notifier;
use crate::sync::Arc;
use crate::upstream::UpstreamSet;
use crate::upstream::auth::AuthSources;
use crate::upstream::http::{HttpTimeouts, build_client};
use crate::upstream::low_speed::{DEFAULT_MIN_BYTES_PER_SEC, LowSpeedLimit};
use crate::upstream::retry::RetryPolicy;
use crate::upstream::set::{UpstreamOptions, upstream_for_url};

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

/// Runs the daemon until `shutdown` resolves or the mount goes away.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), DaemonError> {
    use anyhow::Context as _;
    let setup = DaemonError::Setup;
    // Everything the daemon needs is loaded before mounting: touching our own mount would deadlock.
    let client =
        build_client(HttpTimeouts { connect: config.connect_timeout, stall: config.stall_timeout })
            .context("cannot build the HTTP client")
            .map_err(setup)?;
    let auth = AuthSources::load(config.netrc_file.as_deref(), &config.bearer_token_files)
        .context("cannot load substituter credentials")
        .map_err(setup)?;
    if let Some(url) = auth
        .bearer_urls()
        .find(|u| !config.substituters.iter().any(|s| s.trim_end_matches('/') == *u))
    {
        return Err(setup(anyhow::anyhow!(
            "--bearer-token-file names {url}, which is not a substituter"
        )));
    }
    let options = UpstreamOptions {
        // A cache gets about one connect timeout of retries, so a dead network fails a lookup
        // within that, not after several timeouts.
        retry: RetryPolicy::with_budget(config.connect_timeout),
        backoff: config.upstream_backoff,
        auth,
    };
    let upstreams = config
        .substituters
        .iter()
        .map(|url| upstream_for_url(url, &client, &options))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| setup(e.into()))?;
    // Ordered by nix-cache-info Priority lazily, at the first fetch.
    let upstreams = UpstreamSet::in_order(upstreams);
    let cache_config = CacheConfig {
        dir: config.cache_dir.clone(),
        max_bytes: config.max_size_bytes,
        negative_ttl: config.negative_ttl,
        min_free: config.min_free,
        prefetch_jobs: config.prefetch_jobs,
        low_speed: LowSpeedLimit {
            min_bytes_per_sec: DEFAULT_MIN_BYTES_PER_SEC,
            window: config.stall_timeout,
        },
    };
    let cache = NarCache::open(cache_config, upstreams, config.trusted_keys.clone())
        .with_context(|| format!("cannot open cache directory {}", config.cache_dir.display()))
        .map_err(setup)?;
    // Both sockets are bound before mounting: a second daemon fails here, not after mounting.
    let control = control::bind(&config.control_socket)
        .context("cannot open the control socket")
        .map_err(setup)?;
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await.map_err(|e| setup(e.into()))?),
        None => None,
    };
    let fs = Arc::new(StoreFs::new(cache.clone()));
    let adapter = FuseAdapter::new(fs, tokio::runtime::Handle::current(), config.passthrough);
    let options = MountOptions { allow_other: config.allow_other };
    let mountpoint = config.mountpoint.clone();
    let mut mounted =
        tokio::task::spawn_blocking(move || session::mount(adapter, &mountpoint, &options))
            .await
            .map_err(|e| DaemonError::Runtime(e.into()))?
            .with_context(|| format!("cannot mount {}", config.mountpoint.display()))
            .map_err(setup)?;
    info!(mountpoint = %config.mountpoint.display(), cache = %config.cache_dir.display(),
          max_bytes = config.max_size_bytes, "serving");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    info!(socket = %control.path().display(), "control socket");
    let daemon_info =
        Arc::new(DaemonInfo::new(config.mountpoint.clone(), config.cache_dir.clone()));
    let handler = Arc::new(DaemonHandler::new(cache.clone(), daemon_info.clone()));
    let control_task = tokio::spawn(control::serve(control, handler, stopped()));
    let metrics_task = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving /metrics");
        }
        let c = cache.clone();
        let render = move || metrics::render(&c.snapshot(), &c.stats.histograms);
        tokio::spawn(metrics::serve(listener, render, stopped()))
    });
    let notifier = Notifier::from_env();
    notify(&notifier, "READY=1");
    let status_task = notifier.enabled().then(|| {
        let (n, c, stop) = (notifier.clone(), cache.clone(), stopped());
        tokio::spawn(async move {
            tokio::pin!(stop);
            loop {
                notify(&n, &status_line(&c.snapshot()));
                tokio::select! {
                    () = &mut stop => return,
                    () = tokio::time::sleep(STATUS_INTERVAL) => {}
                }
            }
        })
    });
    let result = tokio::select! {
        () = shutdown => {
            daemon_info.set_stopping();
            notify(&notifier, "STOPPING=1");
            mounted.unmount().await.context("unmount failed").map_err(DaemonError::Runtime)
        }
        ended = mounted.ended() => {
            info!("mount went away; exiting");
            daemon_info.set_stopping();
            notify(&notifier, "STOPPING=1");
            ended.context("FUSE session failed").map_err(DaemonError::Runtime)
        }
    };
    let _ = stop_tx.send(true);
    // The control task owns the socket: waiting for it removes the socket file.
    let _ = control_task.await;
    for task in metrics_task.into_iter().chain(status_task) {
        let _ = task.await;
    }
    result
}

/// How often systemd's STATUS= line is refreshed.
const STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// `STATUS=` for systemctl status: the figures an operator glances at.
fn status_line(s: &Snapshot) -> String {
    format!(
        "STATUS=serving: {} paths, {} MiB cached, hit rate {:.0}%, {} fetches in flight",
        s.cached_paths,
        s.cache_bytes >> 20,
        s.hit_rate * 100.0,
        s.in_flight
    )
}

fn notify(notifier: &Notifier, state: &str) {
    if let Err(err) = notifier.notify(state) {
        warn!(error = %err, "sd_notify failed");
    }
}
