//! The daemon's side of the control protocol: each request answered from the cache.

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};

use super::protocol::{
    CheckReply, CheckRow, CheckStatus, ClosureReply, CorruptEntry, ExportDbReply, GcReply,
    PathResult, PathResults, PinsReply, Pong, Progress, Reply, Request, StatsReply, VerifyReply,
};
use super::{ControlHandler, DaemonInfo, ProgressSink};
use crate::cache::{CacheError, Finding, NarCache, Verdict};
use crate::metrics::Reporters;
use crate::nix::store_path::StorePath;
use crate::sync::Arc;

/// Answers control requests from the cache, `stats` from every part that reports and the
/// daemon's [`DaemonInfo`].
#[derive(Debug)]
pub struct DaemonHandler {
    cache: Arc<NarCache>,
    reporters: Arc<Reporters>,
    info: Arc<DaemonInfo>,
    upgrades: Option<mpsc::Sender<UpgradeOrder>>,
}

/// `storefs upgrade`, passed to the daemon's main loop: run `binary` (None: the program it was
/// started from). The loop answers `failed` only if the upgrade did not happen.
#[derive(Debug)]
pub struct UpgradeOrder {
    /// The program to run.
    pub binary: Option<std::path::PathBuf>,
    /// Why it did not happen.
    pub failed: oneshot::Sender<String>,
}

impl DaemonHandler {
    /// A handler over `cache`, answering `stats` from `reporters`, for the daemon `info` describes.
    pub fn new(cache: Arc<NarCache>, reporters: Arc<Reporters>, info: Arc<DaemonInfo>) -> Self {
        Self { cache, reporters, info, upgrades: None }
    }

    /// Passes `storefs upgrade` orders to `upgrades` (without, the command is refused).
    pub fn with_upgrades(mut self, upgrades: mpsc::Sender<UpgradeOrder>) -> Self {
        self.upgrades = Some(upgrades);
        self
    }

    async fn upgrade(&self, binary: Option<String>) -> Result<Reply, String> {
        let Some(upgrades) = &self.upgrades else {
            return Err("this daemon cannot hand its mount over".into());
        };
        let (failed, why) = oneshot::channel();
        let order = UpgradeOrder { binary: binary.map(Into::into), failed };
        upgrades.send(order).await.map_err(|_| "the daemon is stopping".to_owned())?;
        // Only a failure answers: on success this process is replaced before it could.
        Err(why.await.unwrap_or_else(|_| "the daemon stopped instead".into()))
    }
}

/// Parses every path argument, naming the first one that is not a store path.
fn parse_paths(paths: &[String]) -> Result<Vec<StorePath>, String> {
    paths
        .iter()
        .map(|p| StorePath::from_user_arg(p).map_err(|e| format!("{p:?} is not a store path: {e}")))
        .collect()
}

/// Per-path outcomes as rows; `changed` says what a success did.
fn results<T>(
    outcomes: Vec<(StorePath, Result<T, CacheError>)>,
    changed: impl Fn(&T) -> bool,
) -> Reply {
    let results = outcomes
        .into_iter()
        .map(|(sp, r)| {
            let path = sp.to_absolute_path();
            match r {
                Ok(v) => PathResult { path, changed: changed(&v), error: None },
                Err(e) => PathResult { path, changed: false, error: Some(e.to_string()) },
            }
        })
        .collect();
    Reply::Results(PathResults { results })
}

/// The cache's findings as protocol rows.
fn check_rows(findings: Vec<Finding>) -> Reply {
    let checks = findings
        .into_iter()
        .map(|f| CheckRow {
            status: match f.verdict {
                Verdict::Ok => CheckStatus::Ok,
                Verdict::Warn => CheckStatus::Warn,
                Verdict::Fail => CheckStatus::Fail,
            },
            subject: f.subject,
            detail: f.detail,
        })
        .collect();
    Reply::Check(CheckReply { checks })
}

fn abs(paths: &[StorePath]) -> Vec<String> {
    paths.iter().map(StorePath::to_absolute_path).collect()
}

#[async_trait]
impl ControlHandler for DaemonHandler {
    async fn handle(&self, request: Request, progress: ProgressSink) -> Result<Reply, String> {
        let cache = &self.cache;
        match request {
            Request::Ping => Ok(Reply::Pong(Pong {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
            Request::Stats => Ok(Reply::Stats(Box::new(StatsReply {
                status: self.info.status(),
                counters: self.reporters.snapshot(),
            }))),
            Request::Pins => Ok(Reply::Pins(PinsReply { paths: abs(&cache.pinned()) })),
            Request::Prefetch { paths, closure, jobs } => {
                if jobs == 0 {
                    return Err("prefetch needs at least 1 job, got 0".into());
                }
                let roots = parse_paths(&paths)?;
                let outcomes = cache
                    .prefetch(&roots, closure, jobs, |step| {
                        progress.send(Progress {
                            done: step.done,
                            total: step.total,
                            path: step.path.to_absolute_path(),
                            error: step.error.map(ToString::to_string),
                        });
                    })
                    .await;
                Ok(results(outcomes, |()| true))
            }
            Request::Closure { paths } => {
                let roots = parse_paths(&paths)?;
                let closure = cache.closure(&roots).await.map_err(|e| e.to_string())?;
                Ok(Reply::Closure(ClosureReply { paths: abs(&closure) }))
            }
            Request::Pin { paths } => Ok(results(cache.pin(&parse_paths(&paths)?).await, |_| true)),
            Request::Unpin { paths } => Ok(results(cache.unpin(&parse_paths(&paths)?), |was| *was)),
            Request::Evict { paths } => {
                Ok(results(cache.evict(&parse_paths(&paths)?).await, |was| *was))
            }
            Request::Gc { to_bytes } => {
                let report = cache.gc(to_bytes).await;
                Ok(Reply::Gc(GcReply {
                    evicted: report.evicted,
                    freed_bytes: report.freed_bytes,
                    used_bytes: report.used_bytes,
                    pinned_kept: report.pinned_kept,
                }))
            }
            Request::Verify { paths } => {
                let paths = parse_paths(&paths)?;
                let report = cache.verify((!paths.is_empty()).then_some(&paths[..])).await;
                let corrupt = report
                    .corrupt
                    .iter()
                    .map(|(sp, why)| CorruptEntry {
                        path: sp.to_absolute_path(),
                        reason: why.clone(),
                    })
                    .collect();
                Ok(Reply::Verify(VerifyReply {
                    ok: abs(&report.ok),
                    corrupt,
                    missing: abs(&report.missing),
                }))
            }
            Request::ExportDb { paths, closure } => {
                let text = cache
                    .export_db(&parse_paths(&paths)?, closure)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Reply::ExportDb(ExportDbReply { text }))
            }
            Request::Check { probe_path, timeout_ms } => {
                if timeout_ms == 0 {
                    return Err("check needs a timeout of at least 1 ms, got 0".into());
                }
                let probe = parse_paths(probe_path.as_slice())?;
                let timeout = std::time::Duration::from_millis(timeout_ms);
                Ok(check_rows(cache.check(probe.first(), timeout).await))
            }
            Request::Upgrade { binary } => self.upgrade(binary).await,
        }
    }
}
