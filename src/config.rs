//! The daemon's configuration. Every `storefs mount` setting is one field of [`Settings`]; each
//! comes from the first source that gives it: flags, then the TOML configuration file
//! (`file.rs`), then /etc/nix/nix.conf (substituters, keys, netrc-file only), then the built-in
//! defaults (`defaults.rs`). `Config::build` resolves each setting with one small resolver
//! (`layers.rs`) straight into the config of the layer that uses it, all in one place.
//! docs/CONFIGURATION.md is the contract.
//!
//! `config` sits above `nix`, `upstream`, `cache` and `fs`, whose config types it fills in
//! (`CacheConfig`, `HttpTimeouts`, `RetryPolicy`, `MountOptions`); none of them imports `config`.
//! Only [`Settings`] knows clap and serde; the daemon gets plain, checked values.

mod credentials;
mod defaults;
mod error;
mod file;
mod layers;
mod nix_conf;
mod outside_mount;
mod settings;
mod substituters;
mod values;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use self::defaults::*;
pub use self::error::ConfigError;
pub use self::nix_conf::NixConf;
pub use self::settings::{
    CACHE_OPTIONS, MOUNT_OPTIONS, OPERATION_OPTIONS, Settings, TokenFile, UPSTREAM_OPTIONS,
};
pub use self::values::{parse_listen_addr, parse_min_free, parse_size};

use self::credentials::{bearer_token_files, netrc_file};
use self::layers::Layers;
use self::substituters::{substituters, trusted_index_keys, trusted_keys};
use crate::cache::CacheConfig;
use crate::fs::session::MountOptions;
use crate::nix::signature::TrustedKeys;
use crate::upstream::http::HttpTimeouts;
use crate::upstream::low_speed::{DEFAULT_MIN_BYTES_PER_SEC, LowSpeedLimit};
use crate::upstream::rate::RateLimit;
use crate::upstream::retry::RetryPolicy;

/// Everything the daemon needs, checked, grouped by the layer that takes it.
#[derive(Debug)]
pub struct Config {
    /// Where and how to mount (`fs`).
    pub mount: MountConfig,
    /// Which caches to ask and how (`upstream`).
    pub upstream: UpstreamConfig,
    /// Keys whose signatures are trusted (the cache decides trust).
    pub trusted_keys: TrustedKeys,
    /// The disk cache (`cache`).
    pub cache: CacheConfig,
    /// The control socket path (absolute).
    pub control_socket: PathBuf,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the files readers open are logged (`--record-reads`, absolute), if anywhere.
    pub record_reads: Option<PathBuf>,
}

/// What the mount takes.
#[derive(Debug)]
pub struct MountConfig {
    /// Where to mount (absolute).
    pub mountpoint: PathBuf,
    /// The mount options.
    pub options: MountOptions,
    /// Open files through kernel FUSE passthrough (one round trip per open) instead of no OPEN
    /// at all and reads through the kernel page cache.
    pub passthrough: bool,
}

/// What the upstreams take.
#[derive(Debug)]
pub struct UpstreamConfig {
    /// Binary cache URLs, in the order given.
    pub substituters: Vec<String>,
    /// Connect and stall timeouts of every request.
    pub timeouts: HttpTimeouts,
    /// How one request is retried.
    pub retry: RetryPolicy,
    /// How long a failing substituter is skipped before it is probed again.
    pub backoff: Duration,
    /// Requests per second to all substituters together.
    pub rate: RateLimit,
    /// Longest a whole narinfo request may take, and a request its turn under `rate`
    /// (`--fetch-timeout`); None: no bound.
    pub fetch_timeout: Option<Duration>,
    /// netrc file for HTTP Basic credentials (an existing file), if any.
    pub netrc_file: Option<PathBuf>,
    /// `(substituter URL, token file)`: the URL is spelled exactly as in `substituters`, the file
    /// is absolute and existed at start.
    pub bearer_token_files: Vec<(String, PathBuf)>,
}

/// The files read when nothing names them. Tests point these into a temporary directory so the
/// host's own files cannot leak in.
#[derive(Debug, Clone)]
pub struct SystemPaths {
    /// The storefs configuration file ([`DEFAULT_CONFIG_FILE`]), read if it exists.
    pub config_file: PathBuf,
    /// nix.conf ([`DEFAULT_NIX_CONF`]), read if it exists.
    pub nix_conf: PathBuf,
    /// The netrc file ([`DEFAULT_NETRC_FILE`]), used if it exists.
    pub netrc_file: PathBuf,
    /// Where the TLS roots come from when the environment names them (`SSL_CERT_FILE`,
    /// `SSL_CERT_DIR`), with the variable's name.
    pub tls_roots: Vec<(String, PathBuf)>,
}

impl Default for SystemPaths {
    fn default() -> Self {
        Self {
            config_file: DEFAULT_CONFIG_FILE.into(),
            nix_conf: DEFAULT_NIX_CONF.into(),
            netrc_file: DEFAULT_NETRC_FILE.into(),
            tls_roots: ["SSL_CERT_FILE", "SSL_CERT_DIR"]
                .into_iter()
                .filter_map(|var| Some((var.to_owned(), std::env::var_os(var)?.into())))
                .collect(),
        }
    }
}

impl Config {
    /// Checks `flags`, filling gaps from the configuration file, nix.conf and the defaults.
    pub fn resolve(flags: &Settings) -> Result<Self, ConfigError> {
        Self::resolve_with(flags, &SystemPaths::default())
    }

    /// [`Config::resolve`], with the files read when nothing names them given by `system`.
    pub fn resolve_with(flags: &Settings, system: &SystemPaths) -> Result<Self, ConfigError> {
        let (file_path, file) = read_config_file(flags, system)?;
        let layers = Layers::new(flags, &file, &file_path);
        let nix_conf = read_nix_conf(&layers, system)?;
        let config = Self::build(&layers, &nix_conf, system)?;
        outside_mount::check(&config.mount.mountpoint, &config.dependencies(&file_path, system))?;
        Ok(config)
    }

    /// Every file and directory the daemon reads or writes by name, with the setting naming
    /// it: none may lie under the mountpoint (`outside_mount`).
    fn dependencies(&self, file_path: &Path, system: &SystemPaths) -> Vec<(String, PathBuf)> {
        let mut paths = vec![
            ("--cache-dir".to_owned(), self.cache.dir.clone()),
            ("--control-socket".to_owned(), self.control_socket.clone()),
        ];
        if !file_path.as_os_str().is_empty() {
            paths.push(("the configuration file".to_owned(), file_path.to_owned()));
        }
        if let Some(netrc) = &self.upstream.netrc_file {
            paths.push(("the netrc file".to_owned(), netrc.clone()));
        }
        for (url, file) in &self.upstream.bearer_token_files {
            paths.push((format!("the token file of {url}"), file.clone()));
        }
        for url in &self.upstream.substituters {
            if let Some(dir) = url.strip_prefix("file://") {
                let dir = dir.split(['?', '#']).next().unwrap_or(dir);
                paths.push((format!("substituter {url}"), PathBuf::from(dir)));
            }
        }
        for (var, path) in &system.tls_roots {
            paths.push((var.clone(), path.clone()));
        }
        paths
    }

    /// The one place each setting is resolved (one resolver call each, on the line of the
    /// field that takes it) into the config of the layer that uses it.
    fn build(
        layers: &Layers<'_>,
        nix: &NixConf,
        system: &SystemPaths,
    ) -> Result<Self, ConfigError> {
        let mount = MountConfig {
            mountpoint: layers.absolute_path(|s| &s.mountpoint, DEFAULT_MOUNTPOINT)?,
            options: MountOptions { allow_other: layers.switch(|s| &s.allow_other) },
            passthrough: layers.switch(|s| &s.passthrough),
        };
        // Each timeout is taken by two layers.
        let connect = layers.seconds(
            "connect-timeout",
            |s| &s.connect_timeout,
            1,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let stall =
            layers.seconds("stall-timeout", |s| &s.stall_timeout, 1, DEFAULT_STALL_TIMEOUT)?;
        let fetch_timeout = Some(layers.seconds(
            "fetch-timeout",
            |s| &s.fetch_timeout,
            0,
            DEFAULT_FETCH_TIMEOUT,
        )?)
        .filter(|t| !t.is_zero());
        check_cache_dir(&layers.absolute_path(|s| &s.cache_dir, DEFAULT_CACHE_DIR)?)?;
        let cache = CacheConfig {
            dir: layers.absolute_path(|s| &s.cache_dir, DEFAULT_CACHE_DIR)?,
            max_bytes: layers
                .parsed("max-size", |s| &s.max_size, parse_size)?
                .unwrap_or(DEFAULT_MAX_SIZE_BYTES),
            min_free: layers
                .parsed("min-free", |s| &s.min_free, parse_min_free)?
                .unwrap_or(DEFAULT_MIN_FREE),
            negative_ttl: layers.seconds(
                "negative-ttl",
                |s| &s.negative_ttl,
                0,
                DEFAULT_NEGATIVE_TTL,
            )?,
            prefetch_jobs: layers.count(
                "prefetch-jobs",
                |s| &s.prefetch_jobs,
                MAX_PREFETCH_JOBS,
                DEFAULT_PREFETCH_JOBS,
            )?,
            low_speed: LowSpeedLimit {
                min_bytes_per_sec: DEFAULT_MIN_BYTES_PER_SEC,
                window: stall,
            },
            fetch_timeout,
            uid_rate: rate(layers.count(
                "uid-rate",
                |s| &s.uid_rate,
                MAX_RATE,
                DEFAULT_UID_RATE,
            )?),
            index_keys: trusted_index_keys(layers)?,
            index_min_nar_bytes: layers
                .parsed("index-min-nar-size", |s| &s.index_min_nar_size, parse_size_or_zero)?
                .unwrap_or(DEFAULT_INDEX_MIN_NAR_BYTES),
            stream_file_bytes: crate::cache::STREAMED_FILE_BYTES,
        };
        let substituters = substituters(layers, nix)?;
        let upstream = UpstreamConfig {
            timeouts: HttpTimeouts { connect, stall },
            // A cache gets about one connect timeout of retries, so a dead network fails a
            // lookup within that, not after several timeouts.
            retry: RetryPolicy::with_budget(connect),
            backoff: layers.seconds(
                "upstream-backoff",
                |s| &s.upstream_backoff,
                1,
                DEFAULT_UPSTREAM_BACKOFF,
            )?,
            rate: rate(layers.count(
                "upstream-rate",
                |s| &s.upstream_rate,
                MAX_RATE,
                DEFAULT_UPSTREAM_RATE,
            )?),
            fetch_timeout,
            netrc_file: netrc_file(layers, nix, &system.netrc_file)?,
            bearer_token_files: bearer_token_files(layers, &substituters)?,
            substituters,
        };
        Ok(Self {
            mount,
            upstream,
            trusted_keys: trusted_keys(layers, nix)?,
            cache,
            control_socket: layers.absolute_path(|s| &s.control_socket, DEFAULT_CONTROL_SOCKET)?,
            metrics_listen: layers.parsed(
                "metrics-listen",
                |s| &s.metrics_listen,
                parse_listen_addr,
            )?,
            record_reads: layers.optional_path(|s| &s.record_reads)?,
        })
    }
}

/// A size, or `0`.
fn parse_size_or_zero(text: &str) -> Result<u64, ConfigError> {
    if text.trim() == "0" { Ok(0) } else { parse_size(text) }
}

/// `n` requests per second (bursts of twice as many); 0 is no limit.
fn rate(n: usize) -> RateLimit {
    RateLimit::per_second(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Refuses an existing cache directory that another user owns or that its group or others may
/// read: it holds the narinfos and files of every path this host used. (A missing one is
/// created 0700 by the cache.)
fn check_cache_dir(dir: &std::path::Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else { return Ok(()) };
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let fix = if meta.uid() != euid {
        format!("owned by uid {}, not by this daemon's uid {euid} (chown {euid} it)", meta.uid())
    } else if meta.mode() & 0o077 != 0 {
        format!("mode {:04o} lets its group or others in (chmod 0700 it)", meta.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(ConfigError::UnsafeCacheDir { dir: dir.to_owned(), reason: fix })
}

/// The configuration file `--config` names (which must exist), else the system's if it exists,
/// else none (an empty layer), with its absolute path.
fn read_config_file(
    flags: &Settings,
    system: &SystemPaths,
) -> Result<(PathBuf, Settings), ConfigError> {
    match &flags.config_file {
        Some(path) => {
            let path = values::absolute(path)?;
            let settings = file::read(&path)?;
            Ok((path, settings))
        }
        None if system.config_file.exists() => {
            Ok((system.config_file.clone(), file::read(&system.config_file)?))
        }
        None => Ok((PathBuf::new(), Settings::default())),
    }
}

/// The nix.conf the flags or the file name (which must be readable), else the system's if it
/// exists, else none.
fn read_nix_conf(layers: &Layers<'_>, system: &SystemPaths) -> Result<NixConf, ConfigError> {
    match layers.pick(|s| &s.nix_conf) {
        Some((path, origin)) => NixConf::read(&origin.path(path)),
        None if system.nix_conf.exists() => NixConf::read(&system.nix_conf),
        None => Ok(NixConf::default()),
    }
}

#[cfg(test)]
mod tests;
