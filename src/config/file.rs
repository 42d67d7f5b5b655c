//! The TOML configuration file (`--config`): one key per `storefs mount` flag, plus `mountpoint`,
//! read into the same [`Settings`] the flags fill.
//!
//! Only the shape is checked here: unknown keys and wrong types are refused, naming the key and
//! the file. Values (sizes, seconds, keys) are checked by the resolvers, which name the key and
//! the file again, and take relative paths against the file's own directory, so a file means the
//! same thing whatever directory storefs is started from.

use std::path::Path;

use serde::Deserialize;

use super::{ConfigError, Settings};

/// Reads and checks the file at `path` (which should be absolute).
pub fn read(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::ReadFile { path: path.into(), source })?;
    parse(&text, path)
}

/// Parses TOML `text`; `path` only names the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
    let bad = |message: String| ConfigError::File { path: path.into(), message };
    // Syntax first: toml's message carries the line and column.
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| bad(e.to_string()))?;
    match Settings::deserialize(table.clone()) {
        Ok(settings) => Ok(settings),
        // serde's message says what was wrong, not where: try each key alone to find it.
        Err(whole) => Err(bad(table
            .into_iter()
            .find_map(|(key, value)| {
                let one = toml::Table::from_iter([(key.clone(), value)]);
                Settings::deserialize(one).err().map(|e| format!("key `{key}`: {}", e.message()))
            })
            .unwrap_or_else(|| whole.message().to_owned()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenFile;

    fn parse(text: &str) -> Result<Settings, String> {
        super::parse(text, Path::new("/etc/storefs/storefs.toml")).map_err(|e| e.to_string())
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
            conf.bearer_token_files.unwrap(),
            [TokenFile::Entry("https://a".into(), "/etc/storefs/a.token".into())]
        );
        assert_eq!(parse("").unwrap(), Settings::default());
    }

    /// Each bad file is refused with a message naming the file and these words.
    #[test]
    fn names_the_file_and_the_key() {
        for (name, text, needles) in [
            ("unknown_key", "max-size = \"1G\"\ncolour = \"blue\"\n", &["`colour`"][..]),
            ("snake_case_key", "cache_dir = \"/x\"\n", &["`cache_dir`"]),
            ("flag_only_key", "config = \"/x.toml\"\n", &["`config`"]),
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
    fn a_missing_file_is_named() {
        let err = read(Path::new("/nonexistent/storefs.toml")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/storefs.toml"), "{err}");
    }
}
