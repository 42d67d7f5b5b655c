//! `http://` and `https://` binary caches, over one shared `reqwest` client (rustls, pooled).

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use reqwest::{StatusCode, Url};
use tokio_util::io::StreamReader;

use super::{NarBody, Upstream, UpstreamError};
use crate::nix::cache_info::CacheInfo;
use crate::nix::narinfo::{MAX_NARINFO_SIZE, NarInfo};

/// Largest `nix-cache-info` we read.
const MAX_CACHE_INFO_SIZE: u64 = 64 * 1024;
/// Most redirects followed for one request (attic sends NARs to presigned storage URLs).
pub const MAX_REDIRECTS: usize = 10;

/// Timeouts for every HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct HttpTimeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// No byte received for this long: the transfer is dead (stalled body, silent server).
    pub stall: Duration,
}

/// Builds the one client every HTTP upstream shares (connection reuse across caches and paths).
pub fn build_client(timeouts: HttpTimeouts) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("storefs/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(timeouts.connect)
        .read_timeout(timeouts.stall)
        .redirect(redirect_policy())
        // Transport compression would only make the byte counts lie; NARs are compressed already.
        .no_gzip()
        .build()
}

/// Follow at most `MAX_REDIRECTS` hops, never to another scheme than http(s), never https → http.
fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.previous().iter().any(|u| u.scheme() == "https")
            && attempt.url().scheme() != "https";
        if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error("too many redirects")
        } else if !matches!(attempt.url().scheme(), "http" | "https") || downgrade {
            let refused = format!("refused redirect to {}", attempt.url());
            attempt.error(refused)
        } else {
            attempt.follow()
        }
    })
}

/// One HTTP binary cache.
#[derive(Debug)]
pub struct HttpUpstream {
    base: Url,
    display: String,
    client: reqwest::Client,
}

impl HttpUpstream {
    /// `base` is the substituter URL as configured (`https://cache.nixos.org`).
    pub fn new(base: &str, client: reqwest::Client) -> Result<Self, UpstreamError> {
        let bad = |reason: String| UpstreamError::BadBaseUrl { url: base.to_owned(), reason };
        let mut url = Url::parse(base).map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!("scheme {:?} is not http or https", url.scheme())));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("query strings and fragments are not supported".into()));
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        let display = base.trim_end_matches('/').to_owned();
        Ok(Self { base: url, display, client })
    }

    /// Resolves a cache-relative URL, refusing anything that leaves the cache base (NI-11).
    fn resolve(&self, relative: &str) -> Result<Url, UpstreamError> {
        let foreign = || UpstreamError::ForeignNarUrl {
            cache: self.display.clone(),
            nar_url: relative.to_owned(),
        };
        if relative.is_empty()
            || relative.contains("://")
            || relative.starts_with('/')
            || relative.contains('?')
            || relative.contains('#')
            || relative.contains('\\')
            || relative.split('/').any(|seg| seg == ".." || seg == "." || seg.is_empty())
        {
            return Err(foreign());
        }
        let url = self.base.join(relative).map_err(|_| foreign())?;
        let same_origin = url.origin() == self.base.origin();
        if !same_origin || !url.path().starts_with(self.base.path()) {
            return Err(foreign());
        }
        Ok(url)
    }

    /// GETs a small document; `Ok(None)` on 404/403.
    async fn get_small(&self, url: Url, limit: u64) -> Result<Option<Vec<u8>>, UpstreamError> {
        let transport = |source| UpstreamError::Transport { url: url.to_string(), source };
        let resp = self.client.get(url.clone()).send().await.map_err(transport)?;
        match resp.status() {
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN => return Ok(None),
            s if !s.is_success() => {
                return Err(UpstreamError::Status { url: url.to_string(), status: s.as_u16() });
            }
            _ => {}
        }
        let too_large = || UpstreamError::TooLarge { url: url.to_string(), limit };
        if resp.content_length().is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.try_next().await.map_err(transport)? {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Some(body))
    }

    fn join(&self, name: &str) -> Url {
        self.base.join(name).expect("a plain file name always joins onto a valid base URL")
    }
}

#[async_trait]
impl Upstream for HttpUpstream {
    fn url(&self) -> &str {
        &self.display
    }

    async fn cache_info(&self) -> Result<Option<CacheInfo>, UpstreamError> {
        let url = self.join("nix-cache-info");
        let Some(body) = self.get_small(url.clone(), MAX_CACHE_INFO_SIZE).await? else {
            return Ok(None);
        };
        CacheInfo::parse(&body)
            .map(Some)
            .map_err(|e| UpstreamError::CacheInfo { url: url.to_string(), reason: e.to_string() })
    }

    async fn narinfo(&self, hash_part: &str) -> Result<Option<NarInfo>, UpstreamError> {
        let url = self.join(&format!("{hash_part}.narinfo"));
        let Some(body) = self.get_small(url.clone(), MAX_NARINFO_SIZE as u64).await? else {
            return Ok(None);
        };
        NarInfo::parse(&body)
            .map(Some)
            .map_err(|source| UpstreamError::NarInfo { url: url.to_string(), source })
    }

    async fn nar(&self, nar_url: &str, max_bytes: u64) -> Result<NarBody, UpstreamError> {
        let url = self.resolve(nar_url)?;
        let transport = |source| UpstreamError::Transport { url: url.to_string(), source };
        let resp = self.client.get(url.clone()).send().await.map_err(transport)?;
        if !resp.status().is_success() {
            // A 404 here is not "absent": the narinfo said the NAR exists (NET-12).
            return Err(UpstreamError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        if resp.content_length().is_some_and(|len| len > max_bytes) {
            return Err(UpstreamError::TooLarge { url: url.to_string(), limit: max_bytes });
        }
        let stream = resp.bytes_stream().map_err(std::io::Error::other);
        Ok(Box::pin(StreamReader::new(stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(base: &str) -> HttpUpstream {
        HttpUpstream::new(base, reqwest::Client::new()).unwrap()
    }

    #[test]
    fn resolves_relative_nar_urls_inside_the_cache() {
        let up = upstream("http://127.0.0.1:8080/cache");
        let url = up.resolve("nar/abc.nar.xz").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/cache/nar/abc.nar.xz");
    }

    #[test]
    fn refuses_urls_that_leave_the_cache() {
        let up = upstream("https://cache.example.org/sub/");
        for bad in [
            "https://evil.example.org/nar/x.nar",
            "file:///etc/shadow",
            "/etc/shadow",
            "../other/nar/x.nar",
            "nar/../../x.nar",
            "//evil.example.org/x",
            "nar/x.nar?sig=1",
            "",
            "http://cache.example.org/sub/nar/x.nar",
        ] {
            assert!(
                matches!(up.resolve(bad), Err(UpstreamError::ForeignNarUrl { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn refuses_non_http_base_urls() {
        let err = HttpUpstream::new("ftp://x/", reqwest::Client::new()).unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
    }
}
