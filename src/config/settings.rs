//! [`Settings`]: every `storefs mount` setting, once. The same struct is filled by each layer
//! that can give a value: clap fills it from the command line, serde from the configuration file
//! (one kebab-case key per field). A field's doc comment is its `--help` text, so a new flag is
//! one field here, one resolver line in `Config::build` (src/config.rs), and its documentation.
//!
//! Every field is `None` when the layer does not give it; the resolvers then fall through to the
//! next layer, nix.conf, or the built-in default named in `[default: …]` (written by hand: clap's
//! own default would hide whether a flag was given; `help_states_the_built_in_defaults` keeps
//! the text equal to the constants).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

/// Help heading for upstream options.
pub const UPSTREAM_OPTIONS: &str = "Upstream options";
/// Help heading for cache options.
pub const CACHE_OPTIONS: &str = "Cache options";
/// Help heading for mount options.
pub const MOUNT_OPTIONS: &str = "Mount options";
/// Help heading for operation options (control socket, metrics).
pub const OPERATION_OPTIONS: &str = "Operation options";

/// The settings one layer (flags or the configuration file) gives; see the module doc.
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Where to mount the store [default: /nix/store].
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: Option<PathBuf>,

    /// TOML configuration file with one key per flag (e.g. `max-size = "20G"`); flags override
    /// its keys, and relative paths in it are taken against its directory [default:
    /// /etc/storefs/storefs.toml, if it exists].
    #[arg(long = "config", value_name = "FILE")]
    #[serde(skip)] // a flag only: the file cannot name another file
    pub config_file: Option<PathBuf>,

    /// Binary cache URL (http://, https://, file://); repeatable. Caches are asked in order of
    /// their nix-cache-info Priority (lower first), ties in the order given. [default:
    /// `substituters` (+ `extra-substituters`) from nix.conf, else https://cache.nixos.org]
    #[arg(long = "substituter", value_name = "URL", help_heading = UPSTREAM_OPTIONS)]
    pub substituters: Option<Vec<String>>,

    /// Trusted signing key NAME:BASE64; repeatable. Paths need a signature by one of these.
    /// [default: `trusted-public-keys` from nix.conf, else cache.nixos.org's key]
    #[arg(long = "trusted-public-key", value_name = "NAME:BASE64", help_heading = UPSTREAM_OPTIONS)]
    pub trusted_public_keys: Option<Vec<String>>,

    /// Trusted index key NAME:BASE64; repeatable. A path whose signed file index
    /// (`<hash>.index`, written by `storefs index`) verifies under one of these is served file by
    /// file: metadata from the index, each file fetched by HTTP Range on first read and checked
    /// against the index's SHA-256 [default: none: every path is fetched whole].
    #[arg(long = "trusted-index-key", value_name = "NAME:BASE64", help_heading = UPSTREAM_OPTIONS)]
    pub trusted_index_keys: Option<Vec<String>>,

    /// With `--trusted-index-key`: a path whose NAR file (the narinfo's FileSize) is at most
    /// this large is fetched whole even when indexed, one request instead of one per file read;
    /// 0 uses every index [default: 512K].
    #[arg(long, value_name = "SIZE", help_heading = UPSTREAM_OPTIONS)]
    pub index_min_nar_size: Option<String>,

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
    #[arg(
        long = "bearer-token-file",
        value_name = "URL=FILE",
        value_parser = TokenFile::typed,
        help_heading = UPSTREAM_OPTIONS
    )]
    #[serde(default, deserialize_with = "token_table")]
    pub bearer_token_files: Option<Vec<TokenFile>>,

    /// Seconds to wait for a TCP/TLS connection to a cache [default: 5].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub connect_timeout: Option<u64>,

    /// Seconds without a received byte after which a transfer counts as dead; also the window
    /// over which a download must average at least 1 KiB/s [default: 30].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub stall_timeout: Option<u64>,

    /// Seconds a reader waits for a path that is not cached (narinfo and NAR) before it gets
    /// EIO; the fetch goes on in the background for later
    /// readers. Also bounds each whole narinfo request. 0: no bound [default: 120].
    #[arg(long, value_name = "SECONDS", help_heading = UPSTREAM_OPTIONS)]
    pub fetch_timeout: Option<u64>,

    /// Most requests per second to all substituters together (bursts of twice as many); a
    /// request that would wait longer than --fetch-timeout for its turn is not sent. 0: no
    /// limit [default: 200].
    #[arg(long, value_name = "N", help_heading = UPSTREAM_OPTIONS)]
    pub upstream_rate: Option<u64>,

    /// Most fetches per second one uid may start by looking up paths that are not cached
    /// (bursts of twice as many; joining a running fetch is free), so one tenant's storm of
    /// names cannot use up --upstream-rate; past its turns a lookup gets EAGAIN at once. 0: no
    /// limit [default: 50].
    #[arg(long, value_name = "N", help_heading = UPSTREAM_OPTIONS)]
    pub uid_rate: Option<u64>,

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
    #[arg(long, num_args = 0, default_missing_value = "true", help_heading = MOUNT_OPTIONS)]
    pub allow_other: Option<bool>,

    /// Open files through kernel FUSE passthrough (Linux >= 6.9, as root): each open(2) asks
    /// the daemon, then the kernel reads a file larger than 64 KiB from its cache file directly,
    /// and open files stay readable after eviction with no network. Without it an open costs no
    /// round trip and the kernel keeps file data in its own page cache, asking the daemon only
    /// for pages it lacks: faster for many small files and for files read again [default: off].
    #[arg(long, num_args = 0, default_missing_value = "true", help_heading = MOUNT_OPTIONS)]
    pub passthrough: Option<bool>,

    /// Unix socket for `storefs stats` and other commands (mode 0600; its directory is created
    /// 0755 if missing) [default: /run/storefs/control.sock].
    #[arg(long, value_name = "PATH", help_heading = OPERATION_OPTIONS)]
    pub control_socket: Option<PathBuf>,

    /// Append the path of each file readers open through the mount to FILE, once per file, in
    /// the order first opened: the log `storefs index` makes into the warm lists of an indexed
    /// cache (docs/OPERATIONS.md, "Warm lists") [default: off].
    #[arg(long, value_name = "FILE", help_heading = OPERATION_OPTIONS)]
    pub record_reads: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics, e.g. 127.0.0.1:9101 [default: off].
    #[arg(long, value_name = "ADDR:PORT", help_heading = OPERATION_OPTIONS)]
    pub metrics_listen: Option<String>,
}

/// One bearer token file, as a layer gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFile {
    /// `URL=FILE` as typed after `--bearer-token-file`: where it splits depends on the
    /// substituters in effect, so it is split when they are known.
    Typed(String),
    /// One `URL = FILE` entry of the file's `bearer-token-files` table.
    Entry(String, PathBuf),
}

impl TokenFile {
    /// clap's parser for `--bearer-token-file`: keeps the value as typed.
    fn typed(value: &str) -> Result<Self, std::convert::Infallible> {
        Ok(Self::Typed(value.to_owned()))
    }
}

/// serde's reader for `bearer-token-files = { URL = FILE, ... }` (entries in URL order).
fn token_table<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<TokenFile>>, D::Error> {
    let table = BTreeMap::<String, PathBuf>::deserialize(d)?;
    Ok(Some(table.into_iter().map(|(url, file)| TokenFile::Entry(url, file)).collect()))
}
