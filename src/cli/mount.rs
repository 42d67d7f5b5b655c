//! `storefs mount [MOUNTPOINT]`: resolve the configuration, then run the daemon in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tracing::error;

use super::{CACHE_OPTIONS, EXIT_RUNTIME, EXIT_USAGE, MOUNT_OPTIONS, UPSTREAM_OPTIONS};
use crate::config::{Config, RawConfig};

/// Arguments of `storefs mount`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    storefs mount                                   # /nix/store from nix.conf's caches, else cache.nixos.org\n  \
    storefs mount /nix/store --max-size 20G --allow-other\n  \
    storefs mount /tmp/store --cache-dir /tmp/cache \\\n    \
    --substituter http://127.0.0.1:8080/cache --trusted-public-key mykey-1:BASE64")]
pub struct MountArgs {
    /// Where to mount the store.
    #[arg(default_value = crate::config::DEFAULT_MOUNTPOINT)]
    pub mountpoint: PathBuf,

    /// Binary cache URL (http://, https://, file://); repeatable. Caches are asked in order of
    /// their nix-cache-info Priority (lower first), ties in the order given. Default:
    /// `substituters` (+ `extra-substituters`) from nix.conf, else https://cache.nixos.org.
    #[arg(long = "substituter", value_name = "URL", help_heading = UPSTREAM_OPTIONS)]
    pub substituters: Vec<String>,

    /// Trusted signing key NAME:BASE64; repeatable. Default: `trusted-public-keys` from
    /// nix.conf, else cache.nixos.org's key. Paths need a signature by one of these.
    #[arg(long = "trusted-public-key", value_name = "NAME:BASE64", help_heading = UPSTREAM_OPTIONS)]
    pub trusted_public_keys: Vec<String>,

    /// Nix configuration to read substituters and keys from when no flag gives them
    /// [default: /etc/nix/nix.conf, if it exists].
    #[arg(long, value_name = "FILE", help_heading = UPSTREAM_OPTIONS)]
    pub nix_conf: Option<PathBuf>,

    /// Seconds to wait for a TCP/TLS connection to a cache; also the time after which a failing
    /// request is not tried again [default: 5].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub connect_timeout: Option<u64>,

    /// Seconds without a received byte after which a transfer counts as dead; also the window
    /// over which a download must average at least 1 KiB/s [default: 30].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub stall_timeout: Option<u64>,

    /// netrc file with HTTP Basic credentials for private caches, matched by host name (Cachix
    /// and attic take a token as the password) [default: nix.conf's `netrc-file`, else
    /// /etc/nix/netrc, if it exists].
    #[arg(long, value_name = "FILE", help_heading = UPSTREAM_OPTIONS)]
    pub netrc_file: Option<PathBuf>,

    /// Send `Authorization: Bearer <token>` to the substituter URL, the token read from FILE
    /// (e.g. attic); repeatable. Wins over a netrc entry for the same cache.
    #[arg(long = "bearer-token-file", value_name = "URL=FILE", help_heading = UPSTREAM_OPTIONS)]
    pub bearer_token_files: Vec<String>,

    /// Seconds a cache is skipped, without any request, after its retries are exhausted; the
    /// next request after that probes it [default: 60].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub upstream_backoff: Option<u64>,

    /// Local disk cache directory (created 0700; locked while in use).
    #[arg(long, value_name = "DIR", help_heading = CACHE_OPTIONS,
          default_value = crate::config::DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,

    /// Most disk space the cache may use, e.g. 20G or 500M (binary units); least recently
    /// used paths are evicted beyond it.
    #[arg(long, value_name = "SIZE", default_value = "10G", help_heading = CACHE_OPTIONS)]
    pub max_size: String,

    /// Let every user (e.g. job containers) use the mount: adds allow_other and
    /// default_permissions.
    #[arg(long, help_heading = MOUNT_OPTIONS)]
    pub allow_other: bool,
}

impl From<&MountArgs> for RawConfig {
    fn from(a: &MountArgs) -> Self {
        RawConfig {
            mountpoint: Some(a.mountpoint.clone()),
            substituters: a.substituters.clone(),
            trusted_public_keys: a.trusted_public_keys.clone(),
            cache_dir: Some(a.cache_dir.clone()),
            max_size: Some(a.max_size.clone()),
            allow_other: a.allow_other,
            nix_conf: a.nix_conf.clone(),
            connect_timeout_secs: a.connect_timeout,
            stall_timeout_secs: a.stall_timeout,
            netrc_file: a.netrc_file.clone(),
            bearer_token_files: a.bearer_token_files.clone(),
            upstream_backoff_secs: a.upstream_backoff,
        }
    }
}

/// Runs `storefs mount`.
pub fn run(args: &MountArgs) -> ExitCode {
    let config = match Config::resolve(&RawConfig::from(args)) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("storefs: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("storefs: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(crate::daemon::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            eprintln!("storefs: {err:#}");
            ExitCode::from(err.exit_code())
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        error!("cannot install signal handlers; stop with umount");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: unmounting"),
        _ = int.recv() => tracing::info!("SIGINT: unmounting"),
    }
}
