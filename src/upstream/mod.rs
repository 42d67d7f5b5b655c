//! Binary caches as data sources: the `Upstream` trait, its HTTP and `file://` implementations,
//! and the ordered list of substituters the daemon asks in turn.
//!
//! An upstream only transports bytes. It never decides trust: signatures, NarHash and NarSize are
//! checked by `cache::fetch`, so a hostile upstream can waste time but never publish bytes.

pub mod auth;
pub mod counters;
pub mod decompress;
pub mod file;
pub mod health;
pub mod http;
pub mod low_speed;
#[cfg(test)]
pub mod mock;
pub mod rate;
pub mod retry;
pub mod set;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testserver;

use std::fmt::Debug;
use std::ops::Range;
use std::pin::Pin;
use std::time::Instant;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::nix::cache_info::CacheInfo;
use crate::nix::narinfo::{self, NarInfo};

pub use counters::UpstreamCounters;
pub use set::UpstreamSet;

/// A NAR body as it comes off the wire, still compressed.
pub type NarBody = Pin<Box<dyn AsyncRead + Send>>;

/// One binary cache.
#[async_trait]
pub trait Upstream: Send + Sync + Debug {
    /// The cache's base URL, for logs and metrics.
    fn url(&self) -> &str;

    /// False while the cache is marked down after repeated failures (for status output).
    fn online(&self) -> bool {
        true
    }

    /// What the cache was asked and sent. The upstream counts each request itself; a reader
    /// that rejects a NAR body reports it with `failed`.
    fn counters(&self) -> &UpstreamCounters;

    /// `nix-cache-info`; `Ok(None)` when the cache has none (HTTP 404/403, missing file).
    async fn cache_info(&self) -> Result<Option<CacheInfo>, UpstreamError>;

    /// `<hash_part>.narinfo`, parsed but NOT verified. `Ok(None)` means the cache does not have
    /// the path (HTTP 404 or 403); every other failure is an error, never "absent".
    async fn narinfo(&self, hash_part: &str) -> Result<Option<NarInfo>, UpstreamError>;

    /// The (compressed) NAR at `nar_url`, relative to the cache base. Implementations refuse URLs
    /// that leave the cache's origin. `max_bytes` bounds what the caller will read; bodies that
    /// announce more are refused up front.
    async fn nar(&self, nar_url: &str, max_bytes: u64) -> Result<NarBody, UpstreamError>;

    /// `<hash_part>.index`, the signed file index `storefs index` writes, NOT verified, at most
    /// `limit` bytes. `Ok(None)` when the cache has none (HTTP 404 or 403, missing file, or an
    /// upstream that cannot serve single files).
    async fn index(&self, _hash_part: &str, _limit: u64) -> Result<Option<Vec<u8>>, UpstreamError> {
        Ok(None)
    }

    /// Exactly the bytes `range` of the NAR file at `nar_url` (an HTTP Range request), NOT
    /// verified. An answer of another length is an error, never a short or long read.
    async fn range(&self, nar_url: &str, range: Range<u64>) -> Result<Vec<u8>, UpstreamError> {
        let _ = range;
        Err(UpstreamError::NoRanges { url: format!("{}/{nar_url}", self.url()) })
    }
}

/// Why a request to one binary cache failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Transport failure: DNS, connect, TLS, timeout, reset. The message names the cause.
    #[error("request to {url} failed: {}", http::transport_cause(source))]
    Transport {
        /// The URL asked for.
        url: String,
        /// The cause.
        #[source]
        source: reqwest::Error,
    },
    /// The server answered with a status that is neither success nor "absent".
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL asked for.
        url: String,
        /// The HTTP status code.
        status: u16,
    },
    /// A small document (narinfo, nix-cache-info) was larger than its cap.
    #[error("{url} is larger than {limit} bytes")]
    TooLarge {
        /// The URL asked for.
        url: String,
        /// The cap, in bytes.
        limit: u64,
    },
    /// The narinfo could not be parsed.
    #[error("{url} is not a valid narinfo: {source}")]
    NarInfo {
        /// The URL asked for.
        url: String,
        /// The parse error.
        #[source]
        source: narinfo::Error,
    },
    /// `nix-cache-info` could not be parsed.
    #[error("{url} is not a valid nix-cache-info: {reason}")]
    CacheInfo {
        /// The URL asked for.
        url: String,
        /// The parse error, rendered.
        reason: String,
    },
    /// The narinfo's `URL:` points outside the cache (another origin, another scheme, `..`).
    #[error("NAR URL {nar_url:?} from {cache} leaves the cache; refused")]
    ForeignNarUrl {
        /// The cache's base URL.
        cache: String,
        /// The offending (unsigned) URL field.
        nar_url: String,
    },
    /// A local file of a `file://` cache could not be read.
    #[error("cannot read {path}: {source}")]
    File {
        /// The local path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The cache failed repeatedly and is skipped, without a request, until `until`.
    #[error("{url} is marked down after repeated failures; next try in {} ms",
            until.saturating_duration_since(Instant::now()).as_millis())]
    Down {
        /// The cache's base URL.
        url: String,
        /// When the cache will be probed again.
        until: Instant,
    },
    /// The request was not sent: the daemon's upstream rate limit (`--upstream-rate`), or the
    /// cache's own request to slow down (HTTP 429), would have made it wait too long.
    #[error("request to {url} not sent: rate limited for another {} ms", wait.as_millis())]
    RateLimited {
        /// The URL that would have been asked.
        url: String,
        /// How long it would have had to wait.
        wait: std::time::Duration,
    },
    /// This upstream cannot serve byte ranges.
    #[error("{url}: byte ranges are not supported here")]
    NoRanges {
        /// The URL asked for.
        url: String,
    },
    /// A byte range came back with another length than asked for, or as a whole file.
    #[error("{url}: asked for bytes {start}..{end}, got {got} (HTTP {status})")]
    BadRange {
        /// The URL asked for.
        url: String,
        /// First byte asked for.
        start: u64,
        /// End (exclusive) asked for.
        end: u64,
        /// Bytes received (or announced).
        got: u64,
        /// The HTTP status (0 for a file).
        status: u16,
    },
    /// The substituter URL itself is unusable.
    #[error("substituter {url:?}: {reason}")]
    BadBaseUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}
