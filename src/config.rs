//! Validated daemon configuration. Each setting comes from the first source that gives it:
//! flags, then the TOML configuration file ([`file`]), then /etc/nix/nix.conf (substituters, keys,
//! netrc-file only), then the built-in defaults below. docs/CONFIGURATION.md is the contract.

mod file;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use file::FileConfig;

use crate::nix::signature::TrustedKeys;

/// Where storefs mounts when no mountpoint is given.
pub const DEFAULT_MOUNTPOINT: &str = "/nix/store";
/// Where the disk cache lives by default (systemd's CacheDirectory=storefs).
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/storefs";
/// Default cache size limit: 10 GiB.
pub const DEFAULT_MAX_SIZE_BYTES: u64 = 10 * 1024 * 1024 * 1024;
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
/// How long a failing substituter is skipped before it is probed again.
pub const DEFAULT_UPSTREAM_BACKOFF: Duration = Duration::from_secs(60);
/// The largest number of seconds any duration setting takes (one year): more is surely a typo,
/// and `Instant + Duration` must not overflow.
pub const MAX_SECONDS: u64 = 365 * 24 * 60 * 60;

/// Free space the cache filesystem keeps by default: 5 % (as mountpoint-s3 does).
pub const DEFAULT_MIN_FREE: MinFree = MinFree::Percent(5);
/// Default background downloads of referenced paths at once (`--prefetch-jobs`).
pub const DEFAULT_PREFETCH_JOBS: usize = crate::cache::DEFAULT_PREFETCH_JOBS;
/// Most background downloads `--prefetch-jobs` accepts.
pub const MAX_PREFETCH_JOBS: u64 = 64;

/// Free space to leave on the cache's filesystem; eviction runs when less is free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MinFree {
    /// An absolute number of bytes.
    Bytes(u64),
    /// A percentage (0..=99) of the filesystem's size.
    Percent(u8),
}

impl MinFree {
    /// Parses `5%`, `2G`, `500M`, `0`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let t = s.trim();
        if let Some(pct) = t.strip_suffix('%') {
            return match pct.trim().parse::<u8>() {
                Ok(p) if p < 100 => Ok(MinFree::Percent(p)),
                _ => Err(ConfigError::Invalid(format!(
                    "invalid percentage {s:?}: expected 0% to 99%"
                ))),
            };
        }
        if t == "0" {
            return Ok(MinFree::Bytes(0));
        }
        parse_size(t).map(MinFree::Bytes)
    }

    /// The bytes to keep free on a filesystem of `fs_bytes`.
    pub fn bytes_of(self, fs_bytes: u64) -> u64 {
        match self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => fs_bytes / 100 * u64::from(p),
        }
    }
}

/// A configuration problem, naming the bad value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A size that does not parse.
    #[error(
        "invalid size {0:?}: expected a number with an optional K, M, G or T suffix (e.g. 20G)"
    )]
    Size(String),
    /// A trusted key that does not parse, or two keys with one name.
    #[error("invalid trusted public key: {0}")]
    Key(String),
    /// nix.conf exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    NixConf {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML, has an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A setting's value is bad; `setting` is `--flag` or `key in FILE`.
    #[error("{setting}: {source}")]
    Setting {
        /// Where the value came from.
        setting: String,
        /// What is wrong with it, naming the value.
        #[source]
        source: Box<ConfigError>,
    },
    /// The cache directory lies under the mountpoint (the daemon would deadlock on itself).
    #[error("cache directory {cache} is inside the mountpoint {mountpoint}")]
    CacheInsideMount {
        /// The cache directory.
        cache: PathBuf,
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Some other value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Everything the daemon needs, checked.
#[derive(Debug)]
pub struct Config {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Binary cache URLs, in the order given.
    pub substituters: Vec<String>,
    /// Keys whose signatures are trusted.
    pub trusted_keys: TrustedKeys,
    /// The disk cache directory.
    pub cache_dir: PathBuf,
    /// Most bytes the disk cache may hold.
    pub max_size_bytes: u64,
    /// Free space to keep on the cache's filesystem.
    pub min_free: MinFree,
    /// Mount with allow_other + default_permissions.
    pub allow_other: bool,
    /// Open files through kernel FUSE passthrough (one round trip per open) instead of no OPEN
    /// at all and reads through the kernel page cache.
    pub passthrough: bool,
    /// How long absent answers are cached (zero: not cached).
    pub negative_ttl: Duration,
    /// Background downloads of referenced paths at once (zero: closure prefetch off).
    pub prefetch_jobs: usize,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Stall timeout.
    pub stall_timeout: Duration,
    /// netrc file for HTTP Basic credentials (an existing file), if any.
    pub netrc_file: Option<PathBuf>,
    /// `(substituter URL, token file)`: the URL is spelled exactly as in `substituters`, the file
    /// is absolute and existed at start.
    pub bearer_token_files: Vec<(String, PathBuf)>,
    /// How long a failing substituter is skipped before it is probed again.
    pub upstream_backoff: Duration,
    /// The control socket path (absolute).
    pub control_socket: PathBuf,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Raw values before validation (what the command line collected). `None` and empty lists mean
/// "not given": the configuration file, nix.conf or the default fills them.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    /// Mountpoint.
    pub mountpoint: Option<PathBuf>,
    /// `--substituter` values.
    pub substituters: Vec<String>,
    /// `--trusted-public-key` values.
    pub trusted_public_keys: Vec<String>,
    /// `--cache-dir`.
    pub cache_dir: Option<PathBuf>,
    /// `--max-size`.
    pub max_size: Option<String>,
    /// `--min-free`.
    pub min_free: Option<String>,
    /// `--allow-other` (a flag can only turn it on; false = not given).
    pub allow_other: bool,
    /// `--passthrough` (likewise, only turns it on).
    pub passthrough: bool,
    /// `--nix-conf`.
    pub nix_conf: Option<PathBuf>,
    /// `--connect-timeout` seconds.
    pub connect_timeout_secs: Option<u64>,
    /// `--stall-timeout` seconds.
    pub stall_timeout_secs: Option<u64>,
    /// `--negative-ttl` seconds.
    pub negative_ttl_secs: Option<u64>,
    /// `--upstream-backoff` seconds.
    pub upstream_backoff_secs: Option<u64>,
    /// `--prefetch-jobs`.
    pub prefetch_jobs: Option<u64>,
    /// `--netrc-file`.
    pub netrc_file: Option<PathBuf>,
    /// `--bearer-token-file` values, `URL=FILE` as typed.
    pub bearer_token_files: Vec<String>,
    /// `--config`.
    pub config_file: Option<PathBuf>,
    /// `--control-socket`.
    pub control_socket: Option<PathBuf>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<String>,
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
}

impl Default for SystemPaths {
    fn default() -> Self {
        Self {
            config_file: DEFAULT_CONFIG_FILE.into(),
            nix_conf: DEFAULT_NIX_CONF.into(),
            netrc_file: DEFAULT_NETRC_FILE.into(),
        }
    }
}

/// Where a value came from, to name it in errors.
#[derive(Clone, Copy, Debug)]
enum Origin<'a> {
    /// A command-line flag.
    Flag,
    /// A key of this configuration file.
    File(&'a Path),
}

impl Origin<'_> {
    /// `--key` or `key in FILE`.
    fn setting(self, key: &str) -> String {
        match self {
            Origin::Flag => format!("--{key}"),
            Origin::File(path) => format!("{key} in {}", path.display()),
        }
    }

    /// Wraps `err` so it names the setting as well as the value.
    fn err(self, key: &str, err: ConfigError) -> ConfigError {
        ConfigError::Setting { setting: self.setting(key), source: Box::new(err) }
    }
}

/// The flag's value if given, else the file's, with where it came from.
fn pick<'a, T>(flag: Option<T>, file: Option<T>, path: &'a Path) -> Option<(T, Origin<'a>)> {
    flag.map(|v| (v, Origin::Flag)).or_else(|| file.map(|v| (v, Origin::File(path))))
}

/// A list flag counts as given when it was given at least once.
fn non_empty<T: Clone>(flag: &[T]) -> Option<Vec<T>> {
    (!flag.is_empty()).then(|| flag.to_vec())
}

/// Seconds in `min..=MAX_SECONDS`, as a duration.
fn seconds(value: u64, min: u64, key: &str, origin: Origin<'_>) -> Result<Duration, ConfigError> {
    if (min..=MAX_SECONDS).contains(&value) {
        Ok(Duration::from_secs(value))
    } else {
        let why = format!("{value} is out of range: expected {min} to {MAX_SECONDS} seconds");
        Err(origin.err(key, ConfigError::Invalid(why)))
    }
}

impl Config {
    /// Validates `raw`, filling gaps from the configuration file, nix.conf and the defaults.
    pub fn resolve(raw: &RawConfig) -> Result<Self, ConfigError> {
        Self::resolve_with(raw, &SystemPaths::default())
    }

    /// [`Config::resolve`], with the files read when nothing names them given by `system`.
    pub fn resolve_with(raw: &RawConfig, system: &SystemPaths) -> Result<Self, ConfigError> {
        let (file_path, file) = match &raw.config_file {
            Some(path) => {
                let path = absolute(path)?;
                let file = FileConfig::read(&path)?;
                (path, file)
            }
            None if system.config_file.exists() => {
                (system.config_file.clone(), FileConfig::read(&system.config_file)?)
            }
            None => (PathBuf::new(), FileConfig::default()),
        };
        let file_origin = Origin::File(&file_path);
        let nix_conf = match pick(raw.nix_conf.clone(), file.nix_conf.clone(), &file_path) {
            Some((path, _)) => NixConf::read(&path)?,
            None if system.nix_conf.exists() => NixConf::read(&system.nix_conf)?,
            None => NixConf::default(),
        };

        let from_file_list = |key: &str, list: &Option<Vec<String>>| match list {
            Some(l) if l.is_empty() => Err(file_origin.err(
                key,
                ConfigError::Invalid("empty list: name at least one, or remove the key".into()),
            )),
            l => Ok(l.clone()),
        };
        let substituters = match non_empty(&raw.substituters)
            .or(from_file_list("substituters", &file.substituters)?)
        {
            Some(list) => list,
            None => with_extras(
                &nix_conf.substituters,
                &nix_conf.extra_substituters,
                DEFAULT_SUBSTITUTER,
            ),
        };
        let file_keys = from_file_list("trusted-public-keys", &file.trusted_public_keys)?;
        let in_file = raw.trusted_public_keys.is_empty() && file_keys.is_some();
        let keys = match non_empty(&raw.trusted_public_keys).or(file_keys) {
            Some(list) => list,
            None => with_extras(
                &nix_conf.trusted_public_keys,
                &nix_conf.extra_trusted_public_keys,
                DEFAULT_TRUSTED_KEY,
            ),
        };
        let trusted_keys =
            TrustedKeys::parse_all(keys.iter().map(String::as_str)).map_err(|e| {
                let err = ConfigError::Key(e.to_string());
                if in_file { file_origin.err("trusted-public-keys", err) } else { err }
            })?;

        let mountpoint = pick(raw.mountpoint.clone(), file.mountpoint.clone(), &file_path)
            .map_or_else(|| DEFAULT_MOUNTPOINT.into(), |(p, _)| p);
        let cache_dir = pick(raw.cache_dir.clone(), file.cache_dir.clone(), &file_path)
            .map_or_else(|| DEFAULT_CACHE_DIR.into(), |(p, _)| p);
        let mountpoint = absolute(&mountpoint)?;
        let cache_dir = absolute(&cache_dir)?;
        let control_socket =
            pick(raw.control_socket.clone(), file.control_socket.clone(), &file_path)
                .map_or_else(|| DEFAULT_CONTROL_SOCKET.into(), |(p, _)| p);
        let control_socket = absolute(&control_socket)?;
        let metrics_listen =
            match pick(raw.metrics_listen.as_ref(), file.metrics_listen.as_ref(), &file_path) {
                Some((addr, origin)) => Some(addr.parse().map_err(|_| {
                    let why = format!("{addr:?} is not ADDR:PORT (e.g. 127.0.0.1:9101)");
                    origin.err("metrics-listen", ConfigError::Invalid(why))
                })?),
                None => None,
            };
        if cache_dir.starts_with(&mountpoint) {
            return Err(ConfigError::CacheInsideMount { cache: cache_dir, mountpoint });
        }
        let max_size_bytes = match pick(raw.max_size.as_ref(), file.max_size.as_ref(), &file_path) {
            Some((s, origin)) => parse_size(s).map_err(|e| origin.err("max-size", e))?,
            None => DEFAULT_MAX_SIZE_BYTES,
        };
        let min_free = match pick(raw.min_free.as_ref(), file.min_free.as_ref(), &file_path) {
            Some((s, origin)) => MinFree::parse(s).map_err(|e| origin.err("min-free", e))?,
            None => DEFAULT_MIN_FREE,
        };
        let secs =
            |flag: Option<u64>, in_file: Option<u64>, key: &str, min: u64, default| match pick(
                flag, in_file, &file_path,
            ) {
                Some((v, origin)) => seconds(v, min, key, origin),
                None => Ok(default),
            };
        let connect_timeout = secs(
            raw.connect_timeout_secs,
            file.connect_timeout,
            "connect-timeout",
            1,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let stall_timeout = secs(
            raw.stall_timeout_secs,
            file.stall_timeout,
            "stall-timeout",
            1,
            DEFAULT_STALL_TIMEOUT,
        )?;
        let negative_ttl = secs(
            raw.negative_ttl_secs,
            file.negative_ttl,
            "negative-ttl",
            0,
            DEFAULT_NEGATIVE_TTL,
        )?;
        let upstream_backoff = secs(
            raw.upstream_backoff_secs,
            file.upstream_backoff,
            "upstream-backoff",
            1,
            DEFAULT_UPSTREAM_BACKOFF,
        )?;
        let prefetch_jobs = match pick(raw.prefetch_jobs, file.prefetch_jobs, &file_path) {
            Some((n, _)) if n <= MAX_PREFETCH_JOBS => n as usize,
            Some((n, origin)) => {
                let why = format!("{n} is out of range: expected 0 (off) to {MAX_PREFETCH_JOBS}");
                return Err(origin.err("prefetch-jobs", ConfigError::Invalid(why)));
            }
            None => DEFAULT_PREFETCH_JOBS,
        };

        let netrc_file = match pick(raw.netrc_file.clone(), file.netrc_file.clone(), &file_path) {
            Some((path, origin)) => Some(existing_file(&path, "netrc-file", origin)?),
            // Nix's rule: nix.conf's setting replaces the default, and a missing file means no
            // credentials rather than an error.
            None => match &nix_conf.netrc_file {
                Some(path) => Some(path.clone()).filter(|p| p.is_file()),
                None => Some(system.netrc_file.clone()).filter(|p| p.is_file()),
            },
        };
        let bearer_token_files = match non_empty(&raw.bearer_token_files) {
            Some(flags) => flags
                .iter()
                .map(|v| split_bearer_flag(v, &substituters))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .map(|(url, path)| (url, path, Origin::Flag))
                .collect(),
            None => file
                .bearer_token_files
                .iter()
                .flatten()
                .map(|(url, path)| (url.clone(), path.clone(), file_origin))
                .collect::<Vec<_>>(),
        };
        let bearer_token_files = check_bearer_tokens(bearer_token_files, &substituters)?;

        Ok(Self {
            mountpoint,
            substituters,
            trusted_keys,
            cache_dir,
            max_size_bytes,
            min_free,
            allow_other: raw.allow_other || file.allow_other.unwrap_or(false),
            passthrough: raw.passthrough || file.passthrough.unwrap_or(false),
            negative_ttl,
            prefetch_jobs,
            connect_timeout,
            stall_timeout,
            netrc_file,
            bearer_token_files,
            upstream_backoff,
            control_socket,
            metrics_listen,
        })
    }
}

/// `path`, made absolute, if it is an existing file (or a link to one); an error otherwise.
fn existing_file(path: &Path, key: &str, origin: Origin<'_>) -> Result<PathBuf, ConfigError> {
    let path = absolute(path)?;
    if path.is_file() {
        Ok(path)
    } else {
        let why = format!("{} does not exist or is not a file", path.display());
        Err(origin.err(key, ConfigError::Invalid(why)))
    }
}

/// The substituter `url` names, compared without a trailing `/`, spelled as configured.
fn find_substituter<'a>(url: &str, substituters: &'a [String]) -> Option<&'a String> {
    substituters.iter().find(|s| s.trim_end_matches('/') == url.trim_end_matches('/'))
}

/// Splits a `--bearer-token-file URL=FILE` value. A substituter URL may itself contain `=`, so a
/// configured substituter followed by `=` is looked for first.
fn split_bearer_flag(
    value: &str,
    substituters: &[String],
) -> Result<(String, PathBuf), ConfigError> {
    let known = substituters.iter().find_map(|s| {
        let rest = value.strip_prefix(s.trim_end_matches('/'))?;
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        Some((s.trim_end_matches('/'), rest.strip_prefix('=')?))
    });
    let (url, file) = known.or_else(|| value.split_once('=')).ok_or_else(|| {
        Origin::Flag.err(
            "bearer-token-file",
            ConfigError::Invalid(format!("invalid value {value:?}: expected URL=FILE")),
        )
    })?;
    Ok((url.to_owned(), PathBuf::from(file)))
}

/// Checks `(url, file)` pairs: each URL is a substituter, named once; each file exists.
fn check_bearer_tokens(
    pairs: Vec<(String, PathBuf, Origin<'_>)>,
    substituters: &[String],
) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    const KEY: &str = "bearer-token-file";
    let mut out: Vec<(String, PathBuf)> = Vec::with_capacity(pairs.len());
    for (url, path, origin) in pairs {
        let key = match origin {
            Origin::Flag => KEY,
            Origin::File(_) => "bearer-token-files",
        };
        let Some(sub) = find_substituter(&url, substituters) else {
            let why =
                format!("{url:?} is not one of the substituters ({})", substituters.join(", "));
            return Err(origin.err(key, ConfigError::Invalid(why)));
        };
        if out.iter().any(|(u, _)| u == sub) {
            let why = format!("{url:?} has more than one token file");
            return Err(origin.err(key, ConfigError::Invalid(why)));
        }
        if path.as_os_str().is_empty() {
            let why = format!("no token file given for {url:?}");
            return Err(origin.err(key, ConfigError::Invalid(why)));
        }
        out.push((sub.clone(), existing_file(&path, key, origin)?));
    }
    Ok(out)
}

/// Nix's rule: a setting's value (or its default when unset) followed by its `extra-` values.
fn with_extras(base: &Option<Vec<String>>, extra: &[String], default: &str) -> Vec<String> {
    let mut out = base.clone().unwrap_or_else(|| vec![default.to_owned()]);
    out.extend(extra.iter().filter(|e| !out.contains(e)).cloned().collect::<Vec<_>>());
    out
}

/// Makes `path` absolute against the current directory, without touching the filesystem
/// (the mountpoint may not be reachable yet, and must never be resolved through the mount).
fn absolute(path: &Path) -> Result<PathBuf, ConfigError> {
    std::path::absolute(path)
        .map_err(|e| ConfigError::Invalid(format!("cannot make {} absolute: {e}", path.display())))
}

/// Parses `20G`, `500M`, `1.5G`? (no: integers only), `1024`, `10GiB`: binary units.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::Size(s.to_owned());
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    let n: u64 = num.parse().map_err(|_| bad())?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(1u64 << shift).ok_or_else(bad)?;
    if bytes == 0 {
        return Err(bad());
    }
    Ok(bytes)
}

/// The settings storefs takes from Nix's own configuration.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NixConf {
    /// `substituters`, when set.
    pub substituters: Option<Vec<String>>,
    /// `extra-substituters`, appended to `substituters` (or to its default).
    pub extra_substituters: Vec<String>,
    /// `trusted-public-keys`, when set.
    pub trusted_public_keys: Option<Vec<String>>,
    /// `extra-trusted-public-keys`, appended likewise.
    pub extra_trusted_public_keys: Vec<String>,
    /// `netrc-file`.
    pub netrc_file: Option<PathBuf>,
}

impl NixConf {
    /// Reads and parses a nix.conf file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::NixConf { path: path.into(), source })?;
        Ok(Self::parse(&text))
    }

    /// Parses nix.conf text: `name = value` lines, `#` comments; unknown settings are ignored.
    pub fn parse(text: &str) -> Self {
        let mut conf = Self::default();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let Some((key, value)) = line.split_once('=') else { continue };
            let words = || value.split_whitespace().map(str::to_owned);
            match key.trim() {
                "substituters" => conf.substituters = Some(words().collect()),
                "extra-substituters" => conf.extra_substituters.extend(words()),
                "trusted-public-keys" => conf.trusted_public_keys = Some(words().collect()),
                "extra-trusted-public-keys" => conf.extra_trusted_public_keys.extend(words()),
                "netrc-file" => conf.netrc_file = Some(PathBuf::from(value.trim())),
                _ => {}
            }
        }
        conf
    }
}

#[cfg(test)]
mod tests;
