//! Which binary caches to ask and which signing keys to trust: the two settings that fall
//! through to nix.conf (with its `extra-` additions) before the built-in default.

use super::defaults::{DEFAULT_SUBSTITUTER, DEFAULT_TRUSTED_KEY};
use super::layers::{Layers, Origin};
use super::{ConfigError, NixConf};
use crate::nix::signature::TrustedKeys;

/// `--substituter`, else the file's `substituters`, else nix.conf's (+ `extra-substituters`),
/// else cache.nixos.org.
pub fn substituters(layers: &Layers<'_>, nix_conf: &NixConf) -> Result<Vec<String>, ConfigError> {
    Ok(match layers.list("substituters", |s| &s.substituters)? {
        Some((list, _)) => list.to_vec(),
        None => nix_conf.substituters_or(DEFAULT_SUBSTITUTER),
    })
}

/// `--trusted-public-key`, else the file's `trusted-public-keys`, else nix.conf's (+ extras),
/// else cache.nixos.org's key; parsed. A bad key is named, and so is the file it came from.
pub fn trusted_keys(layers: &Layers<'_>, nix_conf: &NixConf) -> Result<TrustedKeys, ConfigError> {
    const KEY: &str = "trusted-public-keys";
    let (keys, origin) = match layers.list(KEY, |s| &s.trusted_public_keys)? {
        Some((list, origin)) => (list.to_vec(), Some(origin)),
        None => (nix_conf.trusted_public_keys_or(DEFAULT_TRUSTED_KEY), None),
    };
    parse_keys(KEY, &keys, origin)
}

/// `--trusted-index-key`, else the file's `trusted-index-keys`, else none; parsed. A bad key
/// is named, and so is the file it came from.
pub fn trusted_index_keys(layers: &Layers<'_>) -> Result<TrustedKeys, ConfigError> {
    const KEY: &str = "trusted-index-keys";
    let Some((keys, origin)) = layers.list(KEY, |s| &s.trusted_index_keys)? else {
        return Ok(TrustedKeys::default());
    };
    parse_keys(KEY, keys, Some(origin))
}

/// `keys` parsed; a bad one is named, and so is the file (`origin`) it came from under `key`.
fn parse_keys(
    key: &str,
    keys: &[String],
    origin: Option<Origin<'_>>,
) -> Result<TrustedKeys, ConfigError> {
    TrustedKeys::parse_all(keys.iter().map(String::as_str)).map_err(|e| {
        let err = ConfigError::Key(e.to_string());
        match origin {
            Some(file @ Origin::File(_)) => file.err(key, err),
            // A flag's message names the key itself; nix.conf's keys are Nix's own business.
            Some(Origin::Flag) | None => err,
        }
    })
}
