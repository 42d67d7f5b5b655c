//! `file://` binary caches: a directory laid out like an HTTP cache (what `nix copy --to file://` writes).

use std::io::{ErrorKind, Read};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;

use super::counters::{CountedBody, UpstreamCounters};
use super::{NarBody, Upstream, UpstreamError};
use crate::nix::cache_info::CacheInfo;
use crate::nix::narinfo::{MAX_NARINFO_SIZE, NarInfo};
use crate::sync::Arc;

/// One local-directory binary cache.
#[derive(Debug)]
pub struct FileUpstream {
    root: PathBuf,
    display: String,
    counters: Arc<UpstreamCounters>,
}

impl FileUpstream {
    /// `url` is `file:///absolute/dir`.
    pub fn new(url: &str) -> Result<Self, UpstreamError> {
        let bad = |reason: &str| UpstreamError::BadBaseUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let path = url.strip_prefix("file://").ok_or_else(|| bad("not a file:// URL"))?;
        let path = path.split('?').next().unwrap_or_default();
        if !path.starts_with('/') {
            return Err(bad("file:// URLs need an absolute path"));
        }
        let root = PathBuf::from(path);
        if !root.is_dir() {
            return Err(bad("not a directory"));
        }
        let display = url.trim_end_matches('/').to_owned();
        Ok(Self { root, display, counters: Arc::default() })
    }

    /// Reads a small file; `Ok(None)` when it does not exist.
    async fn read_small(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>, UpstreamError> {
        let path = self.root.join(name);
        tokio::task::spawn_blocking(move || {
            let err = |source| UpstreamError::File { path: path.display().to_string(), source };
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(err(e)),
            };
            let mut body = Vec::new();
            file.take(limit + 1).read_to_end(&mut body).map_err(err)?;
            if body.len() as u64 > limit {
                return Err(UpstreamError::TooLarge { url: path.display().to_string(), limit });
            }
            Ok(Some(body))
        })
        .await
        .expect("read_small's blocking task does not panic")
    }

    /// Resolves the narinfo's `URL:` strictly below the cache root: plain components only.
    fn resolve(&self, nar_url: &str) -> Result<PathBuf, UpstreamError> {
        let rel = Path::new(nar_url);
        let plain = !nar_url.is_empty()
            && !nar_url.contains("://")
            && rel.components().all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(UpstreamError::ForeignNarUrl {
                cache: self.display.clone(),
                nar_url: nar_url.to_owned(),
            });
        }
        Ok(self.root.join(rel))
    }
}

#[async_trait]
impl Upstream for FileUpstream {
    fn url(&self) -> &str {
        &self.display
    }

    fn counters(&self) -> &UpstreamCounters {
        &self.counters
    }

    async fn cache_info(&self) -> Result<Option<CacheInfo>, UpstreamError> {
        self.counters.count(self.read_cache_info()).await
    }

    async fn narinfo(&self, hash_part: &str) -> Result<Option<NarInfo>, UpstreamError> {
        self.counters.count(self.read_narinfo(hash_part)).await
    }

    async fn nar(&self, nar_url: &str, max_bytes: u64) -> Result<NarBody, UpstreamError> {
        let body = self.counters.count(self.open_nar(nar_url, max_bytes)).await?;
        Ok(CountedBody::wrap(body, self.counters.clone()))
    }

    async fn index(&self, hash_part: &str, limit: u64) -> Result<Option<Vec<u8>>, UpstreamError> {
        self.counters.count(self.read_small(&format!("{hash_part}.index"), limit)).await
    }

    async fn range(&self, nar_url: &str, range: Range<u64>) -> Result<Vec<u8>, UpstreamError> {
        let bytes = self.counters.count(self.read_range(nar_url, range)).await?;
        self.counters.received(bytes.len() as u64);
        Ok(bytes)
    }
}

/// The requests, uncounted.
impl FileUpstream {
    async fn read_cache_info(&self) -> Result<Option<CacheInfo>, UpstreamError> {
        let Some(body) = self.read_small("nix-cache-info", 64 * 1024).await? else {
            return Ok(None);
        };
        CacheInfo::parse(&body).map(Some).map_err(|e| UpstreamError::CacheInfo {
            url: format!("{}/nix-cache-info", self.display),
            reason: e.to_string(),
        })
    }

    async fn read_narinfo(&self, hash_part: &str) -> Result<Option<NarInfo>, UpstreamError> {
        let name = format!("{hash_part}.narinfo");
        let Some(body) = self.read_small(&name, MAX_NARINFO_SIZE as u64).await? else {
            return Ok(None);
        };
        NarInfo::parse(&body).map(Some).map_err(|source| UpstreamError::NarInfo {
            url: format!("{}/{name}", self.display),
            source,
        })
    }

    async fn read_range(&self, nar_url: &str, range: Range<u64>) -> Result<Vec<u8>, UpstreamError> {
        let path = self.resolve(nar_url)?;
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let shown = path.display().to_string();
            let err = |source| UpstreamError::File { path: shown.clone(), source };
            let file = std::fs::File::open(&path).map_err(err)?;
            let want = range.end.saturating_sub(range.start);
            let len = file.metadata().map_err(err)?.len();
            if range.end > len {
                let got = len.saturating_sub(range.start);
                let (start, end) = (range.start, range.end);
                return Err(UpstreamError::BadRange { url: shown, start, end, got, status: 0 });
            }
            let mut buf =
                vec![0; usize::try_from(want).map_err(|e| err(std::io::Error::other(e)))?];
            file.read_exact_at(&mut buf, range.start).map_err(err)?;
            Ok(buf)
        })
        .await
        .map_err(|e| UpstreamError::File {
            path: nar_url.to_owned(),
            source: std::io::Error::other(e),
        })?
    }

    async fn open_nar(&self, nar_url: &str, max_bytes: u64) -> Result<NarBody, UpstreamError> {
        let path = self.resolve(nar_url)?;
        let err = |source| UpstreamError::File { path: path.display().to_string(), source };
        let file = tokio::fs::File::open(&path).await.map_err(err)?;
        let len = file.metadata().await.map_err(err)?.len();
        if len > max_bytes {
            return Err(UpstreamError::TooLarge {
                url: path.display().to_string(),
                limit: max_bytes,
            });
        }
        Ok(Box::pin(file))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nar_urls_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let up = FileUpstream::new(&format!("file://{}", dir.path().display())).unwrap();
        for bad in ["../x", "/etc/shadow", "nar/../../x", "file:///etc/shadow", "", "./nar/x"] {
            assert!(up.resolve(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(up.resolve("nar/x.nar").unwrap(), dir.path().join("nar/x.nar"));
    }

    #[test]
    fn refuses_relative_and_missing_roots() {
        assert!(FileUpstream::new("file://relative/dir").is_err());
        assert!(FileUpstream::new("file:///does/not/exist/storefs").is_err());
    }
}
