//! The daemon's side of the control protocol: each request answered from the cache.

use async_trait::async_trait;
use serde_json::{Value, json};

use super::ControlHandler;
use super::protocol::Request;
use crate::cache::{CacheError, NarCache};
use crate::metrics::Reporters;
use crate::nix::store_path::StorePath;
use crate::sync::Arc;

/// Answers control requests from the cache (`stats` from every part that reports).
#[derive(Debug)]
pub struct DaemonHandler {
    cache: Arc<NarCache>,
    reporters: Arc<Reporters>,
}

impl DaemonHandler {
    /// A handler over `cache`, answering `stats` from `reporters`.
    pub fn new(cache: Arc<NarCache>, reporters: Arc<Reporters>) -> Self {
        Self { cache, reporters }
    }
}

/// Parses every path argument, naming the first one that is not a store path.
fn parse_paths(paths: &[String]) -> Result<Vec<StorePath>, String> {
    paths
        .iter()
        .map(|p| StorePath::from_user_arg(p).map_err(|e| format!("{p:?} is not a store path: {e}")))
        .collect()
}

/// Per-path outcomes as `{"results": [{"path", "ok", "changed"?, "error"?}]}`.
fn results<T>(
    outcomes: Vec<(StorePath, Result<T, CacheError>)>,
    changed: impl Fn(&T) -> bool,
) -> Value {
    let rows: Vec<Value> = outcomes
        .into_iter()
        .map(|(sp, r)| match r {
            Ok(v) => json!({ "path": sp.to_absolute_path(), "ok": true, "changed": changed(&v) }),
            Err(e) => json!({ "path": sp.to_absolute_path(), "ok": false, "error": e.to_string() }),
        })
        .collect();
    json!({ "results": rows })
}

fn abs(paths: &[StorePath]) -> Vec<String> {
    paths.iter().map(StorePath::to_absolute_path).collect()
}

#[async_trait]
impl ControlHandler for DaemonHandler {
    async fn handle(&self, request: Request) -> Result<Value, String> {
        let cache = &self.cache;
        match request {
            Request::Ping => Ok(json!({
                "pid": std::process::id(),
                "version": env!("CARGO_PKG_VERSION"),
            })),
            Request::Stats => {
                serde_json::to_value(self.reporters.snapshot()).map_err(|e| e.to_string())
            }
            Request::Fetch { path } => {
                let sp = parse_paths(&[path])?.remove(0);
                let entry = cache.get(&sp).await.map_err(|e| e.to_string())?;
                Ok(json!({
                    "path": sp.to_absolute_path(),
                    "references": abs(&entry.narinfo.references),
                }))
            }
            Request::Closure { paths } => {
                let roots = parse_paths(&paths)?;
                let closure = cache.closure(&roots).await.map_err(|e| e.to_string())?;
                Ok(json!({ "paths": abs(&closure) }))
            }
            Request::Pin { paths } => Ok(results(cache.pin(&parse_paths(&paths)?).await, |_| true)),
            Request::Unpin { paths } => Ok(results(cache.unpin(&parse_paths(&paths)?), |was| *was)),
            Request::Evict { paths } => {
                Ok(results(cache.evict(&parse_paths(&paths)?).await, |was| *was))
            }
            Request::Gc { to_bytes } => {
                let report = cache.gc(to_bytes).await;
                Ok(json!({
                    "evicted": report.evicted,
                    "freed_bytes": report.freed_bytes,
                    "used_bytes": report.used_bytes,
                    "pinned_kept": report.pinned_kept,
                }))
            }
            Request::Verify { paths } => {
                let paths = parse_paths(&paths)?;
                let report = cache.verify((!paths.is_empty()).then_some(&paths[..])).await;
                let corrupt: Vec<Value> = report
                    .corrupt
                    .iter()
                    .map(|(sp, why)| json!({ "path": sp.to_absolute_path(), "reason": why }))
                    .collect();
                Ok(json!({
                    "ok": abs(&report.ok),
                    "corrupt": corrupt,
                    "missing": abs(&report.missing),
                }))
            }
            Request::ExportDb { paths, closure } => {
                let text = cache
                    .export_db(&parse_paths(&paths)?, closure)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(json!({ "text": text }))
            }
        }
    }
}
