//! The built-in defaults of every setting, and the limits the resolvers check values against.
//! These are the last layer: used when no flag, configuration file or nix.conf gives a value.

use std::time::Duration;

use crate::cache::MinFree;

/// Where storefs mounts when no mountpoint is given.
pub const DEFAULT_MOUNTPOINT: &str = "/nix/store";
/// Where the disk cache lives by default (systemd's CacheDirectory=storefs).
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/storefs";
/// Default cache size limit: 10 GiB.
pub const DEFAULT_MAX_SIZE_BYTES: u64 = 10 * 1024 * 1024 * 1024;
/// `--index-min-nar-size`: NAR files up to this size are fetched whole even when indexed.
pub const DEFAULT_INDEX_MIN_NAR_BYTES: u64 = 512 * 1024;
/// The substituter used when neither flags nor nix.conf name one.
pub const DEFAULT_SUBSTITUTER: &str = "https://cache.nixos.org";
/// cache.nixos.org's signing key.
pub const DEFAULT_TRUSTED_KEY: &str =
    "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
/// Nix's configuration file, read for substituters, keys and netrc-file.
pub const DEFAULT_NIX_CONF: &str = "/etc/nix/nix.conf";
/// storefs's configuration file, read when it exists and `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/storefs/storefs.toml";
/// Nix's default `netrc-file` (`$NIX_CONF_DIR/netrc`), used when it exists and nothing names one.
pub const DEFAULT_NETRC_FILE: &str = "/etc/nix/netrc";
/// Where the daemon's control socket listens by default.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/storefs/control.sock";
/// How long "no cache has this path" is believed (Nix: 3600 s; CI wants less).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// TCP/TLS connect timeout (CVMFS uses 5 s through a proxy, Nix 15 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A transfer that receives nothing for this long is dead.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a reader waits for a path that is not cached: long enough for a 1 GiB NAR at
/// 10 MiB/s, short enough that a stuck job notices within minutes (the issue saw 21).
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Upstream requests per second, all substituters together: well above a cold closure's need
/// (prefetch runs 4 fetches at once), well below what made a cache answer 429.
pub const DEFAULT_UPSTREAM_RATE: usize = 200;
/// Fetches per second one uid may start: a quarter of the upstream rate, so one tenant cannot
/// take it all.
pub const DEFAULT_UID_RATE: usize = 50;
/// Most requests per second either rate accepts.
pub const MAX_RATE: u64 = 1_000_000;
/// How long a failing substituter is skipped before it is probed again.
pub const DEFAULT_UPSTREAM_BACKOFF: Duration = Duration::from_secs(60);
/// The largest number of seconds any duration setting takes (one year): more is surely a typo,
/// and `Instant + Duration` must not overflow.
pub const MAX_SECONDS: u64 = 365 * 24 * 60 * 60;

/// Free space the cache filesystem keeps by default: 5 % (as mountpoint-s3 does).
pub const DEFAULT_MIN_FREE: MinFree = MinFree::Percent(5);
/// Default background downloads of referenced paths at once (`--prefetch-jobs`); the cache
/// owns the number because it is tuned to the prefetch queue.
pub const DEFAULT_PREFETCH_JOBS: usize = crate::cache::DEFAULT_PREFETCH_JOBS;
/// Most background downloads `--prefetch-jobs` accepts.
pub const MAX_PREFETCH_JOBS: u64 = 64;
