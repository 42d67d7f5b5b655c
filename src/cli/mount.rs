//! `storefs mount [MOUNTPOINT]`: resolve the configuration, then run the daemon in the foreground.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use tracing::error;

use super::{
    CACHE_OPTIONS, EXIT_RUNTIME, EXIT_USAGE, MOUNT_OPTIONS, OPERATION_OPTIONS, UPSTREAM_OPTIONS,
};
use crate::config::{Config, RawConfig};
use crate::daemon::DaemonError;

/// Arguments of `storefs mount`, as typed: every option is `None` or empty when not given, so
/// that the configuration file can fill it; `[default: …]` in the help is the built-in default
/// (see `help_states_the_built_in_defaults`).
#[derive(Debug, Args)]
#[command(
    after_help = "Precedence: flags, then the --config file, then nix.conf (substituters, keys, \
    netrc-file), then the defaults shown. See docs/CONFIGURATION.md.\n\n\
    Examples:\n  \
    storefs mount                 # /nix/store, caches from nix.conf, else cache.nixos.org\n  \
    storefs mount --config /etc/storefs/storefs.toml\n  \
    storefs mount /nix/store --max-size 20G --min-free 10% --allow-other\n  \
    storefs mount /tmp/store --cache-dir /tmp/cache \\\n    \
    --substituter http://127.0.0.1:8080/cache --trusted-public-key mykey-1:BASE64"
)]
pub struct MountArgs {
    /// Where to mount the store [default: /nix/store].
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,

    /// TOML configuration file with one key per flag (e.g. `max-size = "20G"`); flags override
    /// its keys, and relative paths in it are taken against its directory [default:
    /// /etc/storefs/storefs.toml, if it exists].
    #[arg(long = "config", value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Binary cache URL (http://, https://, file://); repeatable. Caches are asked in order of
    /// their nix-cache-info Priority (lower first), ties in the order given. [default:
    /// `substituters` (+ `extra-substituters`) from nix.conf, else https://cache.nixos.org]
    #[arg(long = "substituter", value_name = "URL", help_heading = UPSTREAM_OPTIONS)]
    pub substituters: Vec<String>,

    /// Trusted signing key NAME:BASE64; repeatable. Paths need a signature by one of these.
    /// [default: `trusted-public-keys` from nix.conf, else cache.nixos.org's key]
    #[arg(long = "trusted-public-key", value_name = "NAME:BASE64", help_heading = UPSTREAM_OPTIONS)]
    pub trusted_public_keys: Vec<String>,

    /// Nix configuration to read substituters, keys and netrc-file from when nothing else gives
    /// them [default: /etc/nix/nix.conf, if it exists].
    #[arg(long, value_name = "FILE", help_heading = UPSTREAM_OPTIONS)]
    pub nix_conf: Option<PathBuf>,

    /// netrc file with HTTP Basic credentials for the caches, as Nix uses it; must exist
    /// [default: `netrc-file` from nix.conf, else /etc/nix/netrc, if it exists].
    #[arg(long, value_name = "FILE", help_heading = UPSTREAM_OPTIONS)]
    pub netrc_file: Option<PathBuf>,

    /// Send the token in FILE as `Authorization: Bearer` to the substituter URL (which must be
    /// one of the substituters); repeatable, one per substituter [default: none].
    #[arg(long = "bearer-token-file", value_name = "URL=FILE", help_heading = UPSTREAM_OPTIONS)]
    pub bearer_token_files: Vec<String>,

    /// Seconds to wait for a TCP/TLS connection to a cache [default: 5].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub connect_timeout: Option<u64>,

    /// Seconds without a received byte after which a transfer counts as dead; also the window
    /// over which a download must average at least 1 KiB/s [default: 30].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub stall_timeout: Option<u64>,

    /// Seconds a failing cache is skipped before it is probed again; at least 1 [default: 60].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub upstream_backoff: Option<u64>,

    /// Seconds an "absent from every cache" answer is remembered; 0 turns this negative
    /// caching off [default: 60].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub negative_ttl: Option<u64>,

    /// Referenced paths fetched in the background at once, once a path's narinfo is known, so
    /// a job walking its closure finds it cached; never evicts to make room; 0 turns closure
    /// prefetch off, at most 64 [default: 4].
    #[arg(long, value_name = "N", help_heading = UPSTREAM_OPTIONS)]
    pub prefetch_jobs: Option<u64>,

    /// Local disk cache directory (created 0700; locked while in use) [default:
    /// /var/cache/storefs].
    #[arg(long, value_name = "DIR", help_heading = CACHE_OPTIONS)]
    pub cache_dir: Option<PathBuf>,

    /// Most disk space the cache may use, e.g. 20G or 500M (binary units); least recently
    /// used paths are evicted beyond it [default: 10G].
    #[arg(long, value_name = "SIZE", help_heading = CACHE_OPTIONS)]
    pub max_size: Option<String>,

    /// Free space to keep on the cache's filesystem, as a size (2G) or a percentage of the
    /// filesystem (5%); paths are evicted when less is free. 0 turns this off [default: 5%].
    #[arg(long, value_name = "SIZE|PCT", help_heading = CACHE_OPTIONS)]
    pub min_free: Option<String>,

    /// Let every user (e.g. job containers) use the mount: adds allow_other and
    /// default_permissions [default: off].
    #[arg(long, help_heading = MOUNT_OPTIONS)]
    pub allow_other: bool,

    /// Open files through kernel FUSE passthrough (Linux >= 6.9, as root): each open(2) asks
    /// the daemon, then the kernel reads a file larger than 64 KiB from its cache file directly,
    /// and open files stay readable after eviction with no network. Without it an open costs no
    /// round trip and the kernel keeps file data in its own page cache, asking the daemon only
    /// for pages it lacks: faster for many small files and for files read again [default: off].
    #[arg(long, help_heading = MOUNT_OPTIONS)]
    pub passthrough: bool,

    /// Unix socket for `storefs stats` and other commands (mode 0600; its directory is created
    /// 0755 if missing) [default: /run/storefs/control.sock].
    #[arg(long, value_name = "PATH", help_heading = OPERATION_OPTIONS)]
    pub control_socket: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9101 [default: off].
    #[arg(long, value_name = "ADDR:PORT", help_heading = OPERATION_OPTIONS)]
    pub metrics_listen: Option<String>,
}

impl From<&MountArgs> for RawConfig {
    fn from(a: &MountArgs) -> Self {
        RawConfig {
            mountpoint: a.mountpoint.clone(),
            substituters: a.substituters.clone(),
            trusted_public_keys: a.trusted_public_keys.clone(),
            cache_dir: a.cache_dir.clone(),
            max_size: a.max_size.clone(),
            min_free: a.min_free.clone(),
            allow_other: a.allow_other,
            passthrough: a.passthrough,
            nix_conf: a.nix_conf.clone(),
            connect_timeout_secs: a.connect_timeout,
            stall_timeout_secs: a.stall_timeout,
            negative_ttl_secs: a.negative_ttl,
            upstream_backoff_secs: a.upstream_backoff,
            prefetch_jobs: a.prefetch_jobs,
            netrc_file: a.netrc_file.clone(),
            bearer_token_files: a.bearer_token_files.clone(),
            config_file: a.config_file.clone(),
            control_socket: a.control_socket.clone(),
            metrics_listen: a.metrics_listen.clone(),
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
            let (DaemonError::Setup(cause) | DaemonError::Runtime(cause)) = &err;
            super::print_error(cause);
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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use crate::config::*;

    /// The `[default: …]` texts are written by hand (clap's own would hide whether a flag was
    /// given); this keeps them equal to the constants.
    #[test]
    fn help_states_the_built_in_defaults() {
        let secs = |d: std::time::Duration| format!("[default: {}]", d.as_secs());
        let MinFree::Percent(min_free) = DEFAULT_MIN_FREE else { panic!("default is a percent") };
        let cases = [
            ("mountpoint", format!("[default: {DEFAULT_MOUNTPOINT}]")),
            ("config_file", format!("[default: {DEFAULT_CONFIG_FILE}, if it exists]")),
            ("substituters", DEFAULT_SUBSTITUTER.to_owned()),
            ("nix_conf", format!("[default: {DEFAULT_NIX_CONF}, if it exists]")),
            ("netrc_file", format!("else {DEFAULT_NETRC_FILE}, if it exists]")),
            ("connect_timeout", secs(DEFAULT_CONNECT_TIMEOUT)),
            ("stall_timeout", secs(DEFAULT_STALL_TIMEOUT)),
            ("upstream_backoff", secs(DEFAULT_UPSTREAM_BACKOFF)),
            ("negative_ttl", secs(DEFAULT_NEGATIVE_TTL)),
            ("prefetch_jobs", format!("[default: {DEFAULT_PREFETCH_JOBS}]")),
            ("cache_dir", format!("[default: {DEFAULT_CACHE_DIR}]")),
            ("max_size", format!("[default: {}G]", DEFAULT_MAX_SIZE_BYTES >> 30)),
            ("min_free", format!("[default: {min_free}%]")),
            ("control_socket", format!("[default: {DEFAULT_CONTROL_SOCKET}]")),
        ];
        let cli = crate::cli::Cli::command();
        let mount = cli.find_subcommand("mount").expect("mount subcommand");
        for arg in mount.get_arguments() {
            let id = arg.get_id().as_str();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.contains("[default: "), "--{id} does not state its default: {help}");
            if let Some((_, want)) = cases.iter().find(|(case, _)| *case == id) {
                assert!(help.contains(want.as_str()), "--{id}: {help:?} lacks {want:?}");
            }
        }
    }
}
