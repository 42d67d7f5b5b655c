//! The settings storefs takes from Nix's own configuration (nix.conf): substituters, trusted
//! keys and netrc-file, the layer below the configuration file.

use std::path::{Path, PathBuf};

use super::ConfigError;

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

    /// `substituters` (else `default`) followed by `extra-substituters`, as Nix reads them.
    pub fn substituters_or(&self, default: &str) -> Vec<String> {
        with_extras(&self.substituters, &self.extra_substituters, default)
    }

    /// `trusted-public-keys` (else `default`) followed by `extra-trusted-public-keys`.
    pub fn trusted_public_keys_or(&self, default: &str) -> Vec<String> {
        with_extras(&self.trusted_public_keys, &self.extra_trusted_public_keys, default)
    }
}

/// Nix's rule for a list setting: its value (or `default` when unset) followed by its `extra-`
/// values that are not already in it.
fn with_extras(base: &Option<Vec<String>>, extra: &[String], default: &str) -> Vec<String> {
    let mut out = base.clone().unwrap_or_else(|| vec![default.to_owned()]);
    out.extend(extra.iter().filter(|e| !out.contains(e)).cloned().collect::<Vec<_>>());
    out
}
