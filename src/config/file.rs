//! The TOML configuration file (`--config`): one key per `storefs mount` flag, plus `mountpoint`.
//!
//! Only the shape is checked here: unknown keys and wrong types are refused, naming the key and
//! the file. Values (sizes, seconds, keys) are checked by [`super::Config::resolve`], which names
//! the key and the file again. Relative paths in the file are taken against the file's own
//! directory, so a file means the same thing whatever directory storefs is started from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;

/// The keys of a configuration file, as written (after relative paths are resolved).
///
/// Every field is optional: a missing key falls through to nix.conf or the built-in default.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `mountpoint = "/nix/store"`.
    pub mountpoint: Option<PathBuf>,
    /// `substituters = ["https://cache.nixos.org"]`.
    pub substituters: Option<Vec<String>>,
    /// `trusted-public-keys = ["name:base64", ...]`.
    pub trusted_public_keys: Option<Vec<String>>,
    /// `nix-conf = "/etc/nix/nix.conf"`.
    pub nix_conf: Option<PathBuf>,
    /// `connect-timeout = 5` (seconds).
    pub connect_timeout: Option<u64>,
    /// `stall-timeout = 30` (seconds).
    pub stall_timeout: Option<u64>,
    /// `upstream-backoff = 60` (seconds).
    pub upstream_backoff: Option<u64>,
    /// `negative-ttl = 60` (seconds).
    pub negative_ttl: Option<u64>,
    /// `prefetch-jobs = 8`.
    pub prefetch_jobs: Option<u64>,
    /// `netrc-file = "/etc/nix/netrc"`.
    pub netrc_file: Option<PathBuf>,
    /// `bearer-token-files = { "https://cache.example.org" = "/etc/storefs/example.token" }`.
    pub bearer_token_files: Option<BTreeMap<String, PathBuf>>,
    /// `cache-dir = "/var/cache/storefs"`.
    pub cache_dir: Option<PathBuf>,
    /// `max-size = "10G"`.
    pub max_size: Option<String>,
    /// `min-free = "5%"`.
    pub min_free: Option<String>,
    /// `allow-other = false`.
    pub allow_other: Option<bool>,
    /// `passthrough = false`.
    pub passthrough: Option<bool>,
    /// `control-socket = "/run/storefs/control.sock"`.
    pub control_socket: Option<PathBuf>,
    /// `metrics-listen = "127.0.0.1:9101"`.
    pub metrics_listen: Option<String>,
}

impl FileConfig {
    /// Reads and checks the file at `path` (which should be absolute).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::ReadFile { path: path.into(), source })?;
        let mut conf = Self::parse(&text, path)?;
        if let Some(dir) = path.parent() {
            conf.resolve_relative_paths(dir);
        }
        Ok(conf)
    }

    /// Parses TOML `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let bad = |message: String| ConfigError::File { path: path.into(), message };
        // Syntax first: toml's message carries the line and column.
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| bad(e.to_string()))?;
        match Self::deserialize(table.clone()) {
            Ok(conf) => Ok(conf),
            // serde's message says what was wrong, not where: try each key alone to find it.
            Err(whole) => Err(bad(table
                .into_iter()
                .find_map(|(key, value)| {
                    let one = toml::Table::from_iter([(key.clone(), value)]);
                    Self::deserialize(one).err().map(|e| format!("key `{key}`: {}", e.message()))
                })
                .unwrap_or_else(|| whole.message().to_owned()))),
        }
    }

    /// Makes every relative path absolute against `dir`, the configuration file's directory.
    fn resolve_relative_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        let singles = [
            &mut self.mountpoint,
            &mut self.nix_conf,
            &mut self.netrc_file,
            &mut self.cache_dir,
            &mut self.control_socket,
        ];
        singles.into_iter().flatten().for_each(fix);
        self.bearer_token_files.iter_mut().flat_map(BTreeMap::values_mut).for_each(fix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, String> {
        FileConfig::parse(text, Path::new("/etc/storefs/storefs.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_every_key() {
        let conf = parse(
            r#"
            mountpoint = "/nix/store"
            substituters = ["https://a", "https://b"]
            trusted-public-keys = ["k-1:AAAA"]
            nix-conf = "/etc/nix/nix.conf"
            connect-timeout = 5
            stall-timeout = 30
            upstream-backoff = 60
            negative-ttl = 0
            netrc-file = "/etc/nix/netrc"
            bearer-token-files = { "https://a" = "/etc/storefs/a.token" }
            cache-dir = "/var/cache/storefs"
            max-size = "20G"
            min-free = "5%"
            allow-other = true
            control-socket = "/run/storefs/control.sock"
            metrics-listen = "127.0.0.1:9101"
            "#,
        )
        .unwrap();
        assert_eq!(conf.substituters.unwrap(), ["https://a", "https://b"]);
        assert_eq!(conf.negative_ttl, Some(0));
        assert_eq!(conf.allow_other, Some(true));
        assert_eq!(conf.metrics_listen.as_deref(), Some("127.0.0.1:9101"));
        assert_eq!(
            conf.bearer_token_files.unwrap()["https://a"],
            Path::new("/etc/storefs/a.token")
        );
        assert_eq!(parse("").unwrap(), FileConfig::default());
    }

    /// Each bad file is refused with a message naming the file and these words.
    #[test]
    fn names_the_file_and_the_key() {
        for (name, text, needles) in [
            ("unknown_key", "max-size = \"1G\"\ncolour = \"blue\"\n", &["`colour`"][..]),
            ("snake_case_key", "cache_dir = \"/x\"\n", &["`cache_dir`"]),
            ("string_for_seconds", "connect-timeout = \"5\"\n", &["`connect-timeout`", "string"]),
            ("negative_seconds", "negative-ttl = -1\n", &["`negative-ttl`"]),
            ("integer_for_size", "max-size = 20\n", &["`max-size`", "integer"]),
            ("string_for_list", "substituters = \"https://a\"\n", &["`substituters`"]),
            ("bad_list_item", "substituters = [\n  \"https://a\",\n  3,\n]\n", &["`substituters`"]),
            ("string_for_bool", "allow-other = \"yes\"\n", &["`allow-other`"]),
            ("list_for_tokens", "bearer-token-files = [\"x\"]\n", &["`bearer-token-files`"]),
            ("syntax", "max-size = \n", &["line 1"]),
        ] {
            let err = parse(text).expect_err(name);
            for needle in needles.iter().chain(&["/etc/storefs/storefs.toml"]) {
                assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn relative_paths_are_taken_against_the_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storefs.toml");
        std::fs::write(
            &path,
            "cache-dir = \"cache\"\nnetrc-file = \"../netrc\"\nmountpoint = \"/abs\"\n\
             bearer-token-files = { \"https://a\" = \"tokens/a\" }\n",
        )
        .unwrap();
        let conf = FileConfig::read(&path).unwrap();
        assert_eq!(conf.cache_dir.unwrap(), dir.path().join("cache"));
        assert_eq!(conf.netrc_file.unwrap(), dir.path().join("../netrc"));
        assert_eq!(conf.mountpoint.unwrap(), Path::new("/abs"));
        assert_eq!(conf.bearer_token_files.unwrap()["https://a"], dir.path().join("tokens/a"));
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = FileConfig::read(Path::new("/nonexistent/storefs.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/storefs.toml"), "{err}");
    }
}
