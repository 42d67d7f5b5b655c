//! Validated daemon configuration: flags first, then /etc/nix/nix.conf, then built-in defaults.

use std::path::{Path, PathBuf};
use std::time::Duration;

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
/// How long "no cache has this path" is believed (Nix: 3600 s; CI wants less).
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(60);
/// TCP/TLS connect timeout (CVMFS uses 5 s through a proxy, Nix 15 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A transfer that receives nothing for this long is dead.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Nix's default netrc file, used when it exists and nothing else names one.
pub const DEFAULT_NETRC_FILE: &str = "/etc/nix/netrc";
/// How long a cache whose retries are exhausted is skipped (Nix: 60 s).
pub const DEFAULT_UPSTREAM_BACKOFF: Duration = Duration::from_secs(60);

/// Free space the cache filesystem keeps by default: 5 % (as mountpoint-s3 does).
pub const DEFAULT_MIN_FREE: MinFree = MinFree::Percent(5);

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
                    "invalid --min-free {s:?}: a percentage must be 0% to 99%"
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
    /// Mount with allow_other + default_permissions.
    pub allow_other: bool,
    /// How long absent answers are cached.
    pub negative_ttl: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Stall timeout.
    pub stall_timeout: Duration,
    /// netrc file with HTTP Basic credentials, matched by host.
    pub netrc_file: Option<PathBuf>,
    /// (substituter URL, file holding its bearer token).
    pub bearer_token_files: Vec<(String, PathBuf)>,
    /// How long a failing cache is skipped before it is probed again.
    pub upstream_backoff: Duration,
}

/// Raw values before validation (what the CLI collected).
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    /// Mountpoint, or None for the default.
    pub mountpoint: Option<PathBuf>,
    /// `--substituter` values.
    pub substituters: Vec<String>,
    /// `--trusted-public-key` values.
    pub trusted_public_keys: Vec<String>,
    /// `--cache-dir`.
    pub cache_dir: Option<PathBuf>,
    /// `--max-size`.
    pub max_size: Option<String>,
    /// `--allow-other`.
    pub allow_other: bool,
    /// nix.conf to read; None = the default path if it exists.
    pub nix_conf: Option<PathBuf>,
    /// `--connect-timeout` seconds.
    pub connect_timeout_secs: Option<u64>,
    /// `--stall-timeout` seconds.
    pub stall_timeout_secs: Option<u64>,
    /// `--netrc-file`.
    pub netrc_file: Option<PathBuf>,
    /// `--bearer-token-file` values, `URL=FILE`.
    pub bearer_token_files: Vec<String>,
    /// `--upstream-backoff` seconds.
    pub upstream_backoff_secs: Option<u64>,
}

impl Config {
    /// Validates `raw`, filling gaps from nix.conf and the defaults.
    pub fn resolve(raw: &RawConfig) -> Result<Self, ConfigError> {
        let nix_conf = match &raw.nix_conf {
            Some(path) => NixConf::read(path)?,
            None if Path::new(DEFAULT_NIX_CONF).exists() => {
                NixConf::read(Path::new(DEFAULT_NIX_CONF))?
            }
            None => NixConf::default(),
        };
        let substituters = if raw.substituters.is_empty() {
            with_extras(&nix_conf.substituters, &nix_conf.extra_substituters, DEFAULT_SUBSTITUTER)
        } else {
            raw.substituters.clone()
        };
        let keys = if raw.trusted_public_keys.is_empty() {
            let (base, extra) =
                (&nix_conf.trusted_public_keys, &nix_conf.extra_trusted_public_keys);
            with_extras(base, extra, DEFAULT_TRUSTED_KEY)
        } else {
            raw.trusted_public_keys.clone()
        };
        let trusted_keys = TrustedKeys::parse_all(keys.iter().map(String::as_str))
            .map_err(|e| ConfigError::Key(e.to_string()))?;
        let mountpoint = raw.mountpoint.clone().unwrap_or_else(|| DEFAULT_MOUNTPOINT.into());
        let cache_dir = raw.cache_dir.clone().unwrap_or_else(|| DEFAULT_CACHE_DIR.into());
        let mountpoint = absolute(&mountpoint)?;
        let cache_dir = absolute(&cache_dir)?;
        if cache_dir.starts_with(&mountpoint) {
            return Err(ConfigError::CacheInsideMount { cache: cache_dir, mountpoint });
        }
        let max_size_bytes = match &raw.max_size {
            Some(s) => parse_size(s)?,
            None => DEFAULT_MAX_SIZE_BYTES,
        };
        let secs = |v: Option<u64>, default: Duration, flag: &str| match v {
            Some(0) => Err(ConfigError::Invalid(format!("{flag} must be at least 1 second"))),
            Some(s) => Ok(Duration::from_secs(s)),
            None => Ok(default),
        };
        // A netrc file named by nix.conf or the default is optional, as in Nix; one named by the
        // flag must be readable (checked when the daemon loads it).
        let netrc_file = raw.netrc_file.clone().or_else(|| {
            let optional = nix_conf.netrc_file.clone().unwrap_or_else(|| DEFAULT_NETRC_FILE.into());
            optional.exists().then_some(optional)
        });
        let bearer_token_files = raw
            .bearer_token_files
            .iter()
            .map(|s| parse_bearer_token_file(s))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            mountpoint,
            substituters,
            trusted_keys,
            cache_dir,
            max_size_bytes,
            allow_other: raw.allow_other,
            negative_ttl: DEFAULT_NEGATIVE_TTL,
            connect_timeout: secs(
                raw.connect_timeout_secs,
                DEFAULT_CONNECT_TIMEOUT,
                "--connect-timeout",
            )?,
            stall_timeout: secs(raw.stall_timeout_secs, DEFAULT_STALL_TIMEOUT, "--stall-timeout")?,
            netrc_file,
            bearer_token_files,
            upstream_backoff: secs(
                raw.upstream_backoff_secs,
                DEFAULT_UPSTREAM_BACKOFF,
                "--upstream-backoff",
            )?,
        })
    }
}

/// Parses `--bearer-token-file URL=FILE` (split at the first `=`: substituter URLs carry no query).
fn parse_bearer_token_file(s: &str) -> Result<(String, PathBuf), ConfigError> {
    match s.split_once('=') {
        Some((url, file)) if !url.trim().is_empty() && !file.trim().is_empty() => {
            Ok((url.trim().trim_end_matches('/').to_owned(), PathBuf::from(file.trim())))
        }
        _ => Err(ConfigError::Invalid(format!(
            "invalid --bearer-token-file {s:?}: expected URL=FILE"
        ))),
    }
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
mod tests {
    use super::*;

    #[test]
    fn parses_sizes() {
        for (input, want) in [
            ("1024", 1024),
            ("500M", 500 << 20),
            ("20G", 20 << 30),
            ("20g", 20 << 30),
            ("10GiB", 10 << 30),
            ("1T", 1 << 40),
            ("4K", 4096),
        ] {
            assert_eq!(parse_size(input).unwrap(), want, "{input}");
        }
        for bad in ["", "G", "-1G", "1.5G", "10X", "0", "99999999999T"] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn parses_min_free() {
        assert_eq!(MinFree::parse("5%").unwrap(), MinFree::Percent(5));
        assert_eq!(MinFree::parse("0").unwrap(), MinFree::Bytes(0));
        assert_eq!(MinFree::parse("2G").unwrap(), MinFree::Bytes(2 << 30));
        assert_eq!(MinFree::Percent(10).bytes_of(1000), 100);
        for bad in ["100%", "-1%", "x%", "lots"] {
            assert!(MinFree::parse(bad).unwrap_err().to_string().contains(bad), "{bad}");
        }
    }

    #[test]
    fn parses_nix_conf() {
        let conf = NixConf::parse(
            "# comment\nsubstituters = https://a https://b\nextra-substituters = https://c # x\n\
             trusted-public-keys = k1:AAAA\nnetrc-file = /etc/nix/netrc\nsandbox = true\n",
        );
        assert_eq!(conf.substituters.as_deref().unwrap(), ["https://a", "https://b"]);
        assert_eq!(conf.extra_substituters, ["https://c"]);
        assert_eq!(conf.trusted_public_keys.as_deref().unwrap(), ["k1:AAAA"]);
        assert_eq!(conf.netrc_file.as_deref(), Some(Path::new("/etc/nix/netrc")));
    }

    fn raw() -> RawConfig {
        let dir = std::env::temp_dir().join("storefs-no-nix-conf");
        RawConfig { nix_conf: Some(dir), ..RawConfig::default() }
    }

    #[test]
    fn defaults_to_cache_nixos_org() {
        let conf_dir = tempfile::tempdir().unwrap();
        let empty = conf_dir.path().join("nix.conf");
        std::fs::write(&empty, "").unwrap();
        let cfg = Config::resolve(&RawConfig { nix_conf: Some(empty), ..raw() }).unwrap();
        assert_eq!(cfg.substituters, [DEFAULT_SUBSTITUTER]);
        assert_eq!(cfg.mountpoint, Path::new(DEFAULT_MOUNTPOINT));
        assert_eq!(cfg.max_size_bytes, DEFAULT_MAX_SIZE_BYTES);
    }

    #[test]
    fn flags_win_over_nix_conf() {
        let conf_dir = tempfile::tempdir().unwrap();
        let path = conf_dir.path().join("nix.conf");
        std::fs::write(&path, "substituters = https://from-conf\n").unwrap();
        let cfg = Config::resolve(&RawConfig {
            nix_conf: Some(path.clone()),
            substituters: vec!["http://flag".into()],
            ..raw()
        })
        .unwrap();
        assert_eq!(cfg.substituters, ["http://flag"]);
        let cfg = Config::resolve(&RawConfig { nix_conf: Some(path), ..raw() }).unwrap();
        assert_eq!(cfg.substituters, ["https://from-conf"]);
    }

    #[test]
    fn extra_settings_add_to_the_defaults_like_nix() {
        let conf_dir = tempfile::tempdir().unwrap();
        let path = conf_dir.path().join("nix.conf");
        let extra_key = "extra-1:LUtwYW0cmXkhpblWnvuM560Cx9AVlznKr4edTPJXYHQ=";
        std::fs::write(
            &path,
            format!(
                "extra-substituters = https://extra\nextra-trusted-public-keys = {extra_key}\n"
            ),
        )
        .unwrap();
        let cfg = Config::resolve(&RawConfig { nix_conf: Some(path), ..raw() }).unwrap();
        assert_eq!(cfg.substituters, [DEFAULT_SUBSTITUTER, "https://extra"]);
        assert_eq!(cfg.trusted_keys.len(), 2);
    }

    #[test]
    fn refuses_a_cache_inside_the_mount() {
        let conf_dir = tempfile::tempdir().unwrap();
        let empty = conf_dir.path().join("nix.conf");
        std::fs::write(&empty, "").unwrap();
        let err = Config::resolve(&RawConfig {
            nix_conf: Some(empty),
            mountpoint: Some("/nix/store".into()),
            cache_dir: Some("/nix/store/cache".into()),
            ..raw()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::CacheInsideMount { .. }));
    }

    #[test]
    fn upstream_auth_and_backoff_settings() {
        let conf_dir = tempfile::tempdir().unwrap();
        let (conf, netrc) = (conf_dir.path().join("nix.conf"), conf_dir.path().join("netrc"));
        std::fs::write(&netrc, "machine h login l password p\n").unwrap();
        std::fs::write(&conf, format!("netrc-file = {}\n", netrc.display())).unwrap();
        let cfg = Config::resolve(&RawConfig {
            nix_conf: Some(conf.clone()),
            bearer_token_files: vec!["https://attic.example/ci/=/run/token=x".into()],
            upstream_backoff_secs: Some(2),
            ..raw()
        })
        .unwrap();
        assert_eq!(cfg.netrc_file.as_deref(), Some(netrc.as_path()));
        assert_eq!(
            cfg.bearer_token_files,
            [("https://attic.example/ci".to_owned(), PathBuf::from("/run/token=x"))]
        );
        assert_eq!(cfg.upstream_backoff, Duration::from_secs(2));
        // nix.conf naming a missing file means no netrc, as in Nix; the flag wins over nix.conf.
        std::fs::write(&conf, "netrc-file = /nonexistent/netrc\n").unwrap();
        let cfg = Config::resolve(&RawConfig { nix_conf: Some(conf.clone()), ..raw() }).unwrap();
        assert_eq!(cfg.netrc_file, None);
        assert_eq!(cfg.upstream_backoff, DEFAULT_UPSTREAM_BACKOFF);
        let flag = PathBuf::from("/flag/netrc");
        let cfg = Config::resolve(&RawConfig {
            nix_conf: Some(conf.clone()),
            netrc_file: Some(flag.clone()),
            ..raw()
        })
        .unwrap();
        assert_eq!(cfg.netrc_file, Some(flag));
        for bad in ["no-equals", "=file", "https://x="] {
            let err = Config::resolve(&RawConfig {
                nix_conf: Some(conf.clone()),
                bearer_token_files: vec![bad.into()],
                ..raw()
            })
            .unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        let err = Config::resolve(&RawConfig {
            nix_conf: Some(conf),
            upstream_backoff_secs: Some(0),
            ..raw()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--upstream-backoff"), "{err}");
    }

    #[test]
    fn names_a_bad_key() {
        let conf_dir = tempfile::tempdir().unwrap();
        let empty = conf_dir.path().join("nix.conf");
        std::fs::write(&empty, "").unwrap();
        let err = Config::resolve(&RawConfig {
            nix_conf: Some(empty),
            trusted_public_keys: vec!["nonsense".into()],
            ..raw()
        })
        .unwrap_err();
        assert!(matches!(err, ConfigError::Key(_)), "{err}");
    }
}
