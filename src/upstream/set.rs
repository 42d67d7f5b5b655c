//! The ordered list of substituters: nix-cache-info `Priority` first (lower wins), then the order given.

use std::time::Duration;

use tracing::{info, warn};

use super::auth::AuthSources;
use super::file::FileUpstream;
use super::health::DEFAULT_BACKOFF;
use super::http::{HttpOptions, HttpUpstream};
use super::rate::RequestLimiter;
use super::retry::RetryPolicy;
use super::{Upstream, UpstreamError};
use crate::nix::store_path::STORE_DIR;
use crate::sync::Arc;

/// Priority of a cache whose nix-cache-info is missing or unreachable (Nix's default is 50).
pub const DEFAULT_PRIORITY: u64 = 50;
/// How long start-up waits for one cache's nix-cache-info.
const CACHE_INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// How every HTTP substituter is asked: one retry policy and backoff, credentials per cache.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// Retries of one request.
    pub retry: RetryPolicy,
    /// How long a cache whose retries are exhausted is skipped.
    pub backoff: Duration,
    /// netrc entries and bearer tokens.
    pub auth: AuthSources,
    /// The daemon-wide rate limit on requests, shared by every HTTP cache.
    pub limiter: Arc<RequestLimiter>,
    /// Longest a whole narinfo or nix-cache-info request may take; None for no bound.
    pub document_timeout: Option<Duration>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        Self {
            retry: HttpOptions::default().retry,
            backoff: DEFAULT_BACKOFF,
            auth: AuthSources::default(),
            limiter: Arc::default(),
            document_timeout: None,
        }
    }
}

/// Builds one upstream from a substituter URL.
pub fn upstream_for_url(
    url: &str,
    client: &reqwest::Client,
    options: &UpstreamOptions,
) -> Result<Arc<dyn Upstream>, UpstreamError> {
    if url.starts_with("file://") {
        Ok(Arc::new(FileUpstream::new(url)?))
    } else if url.starts_with("http://") || url.starts_with("https://") {
        let credentials = options.auth.credentials_for(url);
        if let Some(c) = &credentials {
            info!(upstream = url, auth = c.scheme(), "substituter credentials");
        }
        let http = HttpOptions {
            retry: options.retry,
            backoff: options.backoff,
            credentials,
            limiter: options.limiter.clone(),
            document_timeout: options.document_timeout,
        };
        Ok(Arc::new(HttpUpstream::new(url, client.clone(), http)?))
    } else {
        Err(UpstreamError::BadBaseUrl {
            url: url.to_owned(),
            reason: "only http://, https:// and file:// substituters are supported".into(),
        })
    }
}

/// Substituters in the order they are asked.
#[derive(Clone, Debug, Default)]
pub struct UpstreamSet {
    upstreams: Vec<Arc<dyn Upstream>>,
}

impl UpstreamSet {
    /// Keeps the given order, without asking the caches anything (tests, or when order is known).
    pub fn in_order(upstreams: Vec<Arc<dyn Upstream>>) -> Self {
        Self { upstreams }
    }

    /// Asks every cache for nix-cache-info, drops caches for another store directory, and orders
    /// the rest by priority. A cache that cannot be reached now is kept with the default priority:
    /// it may come back, and the fetch path copes with failures.
    pub async fn discover(upstreams: Vec<Arc<dyn Upstream>>) -> Result<Self, UpstreamError> {
        let infos = futures::future::join_all(upstreams.iter().map(|u| async move {
            tokio::time::timeout(CACHE_INFO_TIMEOUT, u.cache_info()).await
        }))
        .await;
        let mut ranked = Vec::new();
        let mut refused = None;
        for (index, (upstream, info)) in upstreams.into_iter().zip(infos).enumerate() {
            let priority = match info {
                Ok(Ok(Some(info))) if info.store_dir != STORE_DIR => {
                    let err = UpstreamError::BadBaseUrl {
                        url: upstream.url().to_owned(),
                        reason: format!(
                            "its StoreDir is {:?}, not {STORE_DIR:?}; cache disabled",
                            info.store_dir
                        ),
                    };
                    warn!(error = %err, "refusing substituter");
                    refused = Some(err);
                    continue;
                }
                Ok(Ok(Some(info))) => info.priority.unwrap_or(DEFAULT_PRIORITY),
                Ok(Ok(None)) => DEFAULT_PRIORITY,
                Ok(Err(err)) => {
                    warn!(upstream = upstream.url(), error = %err, "cannot read nix-cache-info");
                    DEFAULT_PRIORITY
                }
                Err(_) => {
                    warn!(upstream = upstream.url(), "nix-cache-info timed out");
                    DEFAULT_PRIORITY
                }
            };
            ranked.push((priority, index, upstream));
        }
        if ranked.is_empty() {
            if let Some(err) = refused {
                return Err(err);
            }
        }
        ranked.sort_by_key(|(priority, index, _)| (*priority, *index));
        for (priority, _, u) in &ranked {
            info!(upstream = u.url(), priority, "substituter");
        }
        Ok(Self { upstreams: ranked.into_iter().map(|(_, _, u)| u).collect() })
    }

    /// The caches, best first.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Upstream>> {
        self.upstreams.iter()
    }

    /// How many caches are configured.
    pub fn len(&self) -> usize {
        self.upstreams.len()
    }

    /// True when no cache is configured.
    pub fn is_empty(&self) -> bool {
        self.upstreams.is_empty()
    }
}
