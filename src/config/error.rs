//! `ConfigError`: why a configuration cannot be used. Every message names the bad value, and
//! [`ConfigError::Setting`] adds where it came from (`--flag` or `key in FILE`).

use std::path::PathBuf;

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
    /// The cache directory exists but may be read or changed by others.
    #[error("cache directory {}: {reason}", dir.display())]
    UnsafeCacheDir {
        /// The cache directory.
        dir: PathBuf,
        /// What is wrong, and the fix.
        reason: String,
    },
    /// A path the daemon uses lies under the mountpoint (the daemon would wait on itself).
    #[error(
        "{setting} {} resolves to {}, inside the mountpoint {}: storefs would wait on itself; \
         use a path outside it",
        path.display(), resolved.display(), mountpoint.display()
    )]
    InsideMount {
        /// The setting naming it (`--cache-dir`, `SSL_CERT_FILE`, ...).
        setting: String,
        /// The path as given.
        path: PathBuf,
        /// Where it leads, symlinks followed.
        resolved: PathBuf,
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Some other value is out of range.
    #[error("{0}")]
    Invalid(String),
}
