//! The control socket: how `storefs stats` and the cache commands talk to a running daemon.
//!
//! A Unix stream socket (default [`DEFAULT_SOCKET`], mode 0600: root only) speaking the
//! line-delimited JSON of [`protocol`]; connections from users other than the daemon's own (or
//! root) are dropped. [`bind`] refuses to start when a live daemon answers on
//! the path and removes a stale socket left by a dead one; [`serve`] runs one task per
//! connection until its injected shutdown future resolves. Commands are answered by a
//! [`ControlHandler`]: the daemon's is [`DaemonHandler`]; tests inject their own. A handler
//! reports the steps of a long command through its [`ProgressSink`]; each becomes a `progress`
//! line, written before the command's result.

pub mod client;
pub mod handler;
pub mod protocol;
pub mod status;

pub use handler::DaemonHandler;
pub use status::DaemonInfo;

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::mpsc;

use self::protocol::{
    MAX_LINE, Progress, Reply, Request, Response, decode_request, encode_response,
};
use crate::sync::Arc;

/// Where the daemon listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = crate::config::DEFAULT_CONTROL_SOCKET;

/// Why the control socket cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Another daemon answers on the socket.
    #[error("a storefs daemon already answers on {0}; stop it or pass another --control-socket")]
    InUse(PathBuf),
    /// Creating, removing or binding the socket failed.
    #[error("control socket {path}: {action}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Answers control requests. One implementation per daemon; new commands are new match arms.
#[async_trait]
pub trait ControlHandler: Send + Sync + 'static {
    /// Runs `request`, reporting its steps (if it has any) to `progress`; the `Err` text goes
    /// back to the client as `error`.
    async fn handle(&self, request: Request, progress: ProgressSink) -> Result<Reply, String>;
}

/// Where a handler reports the steps of a long command; each is sent to the client as a
/// `progress` line before the result. Sending never blocks, and a step sent after the client
/// went away is dropped.
#[derive(Clone, Debug)]
pub struct ProgressSink(Option<mpsc::UnboundedSender<Progress>>);

impl ProgressSink {
    /// A sink that drops every step (for callers with nobody to tell).
    pub fn none() -> Self {
        Self(None)
    }

    /// Reports one step.
    pub fn send(&self, progress: Progress) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(progress);
        }
    }
}

/// A bound control socket; the socket file is removed when this is dropped.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlSocket {
    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Binds the control socket at `path`: creates its parent (0755) if missing, refuses when a
/// live daemon answers there, removes a stale socket, and leaves the new one mode 0600.
pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
    let io = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| ControlError::Io { path, action, source }
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty() && !p.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io("cannot create its directory"))?;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        debug!(path = %path.display(), "removing stale control socket");
        std::fs::remove_file(path).map_err(io("cannot remove the stale socket"))?;
    }
    let listener = UnixListener::bind(path).map_err(io("cannot bind"))?;
    // Bound under the process umask first; nobody can connect before the daemon serves anyway,
    // and the mode is fixed before `serve` accepts anything.
    let socket = ControlSocket { listener, path: path.to_path_buf() };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("cannot set mode 0600"))?;
    Ok(socket)
}

/// Serves connections on `socket` until `shutdown` resolves, one task per connection; the
/// socket file is removed on return.
pub async fn serve(
    socket: ControlSocket,
    handler: Arc<dyn ControlHandler>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => return,
            accepted = socket.listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    warn!(error = %err, "control socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Mode 0600 already keeps others out; the peer check also covers the moment between
        // bind and chmod, and a socket directory with looser permissions.
        // SAFETY: geteuid has no arguments and cannot fail.
        let me = unsafe { libc::geteuid() };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me || cred.uid() == 0 => {}
            Ok(cred) => {
                warn!(uid = cred.uid(), "control connection from another user refused");
                continue;
            }
            Err(err) => {
                warn!(error = %err, "cannot read control peer credentials; refused");
                continue;
            }
        }
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(err) = connection(stream, handler.as_ref()).await {
                debug!(error = %err, "control connection ended");
            }
        });
    }
}

/// Answers request lines until the client closes, or sends a line longer than [`MAX_LINE`].
async fn connection(stream: UnixStream, handler: &dyn ControlHandler) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = Vec::new();
        let limit = MAX_LINE as u64 + 1;
        let n = (&mut reader).take(limit).read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() > MAX_LINE {
            let response = Response::err(format!("request longer than {MAX_LINE} bytes"));
            write.write_all(encode_response(&response).as_bytes()).await?;
            return Ok(());
        }
        let response = match std::str::from_utf8(&line) {
            Err(_) => Response::err("malformed request: not UTF-8"),
            Ok(text) => match decode_request(text) {
                Err(err) => Response::err(err.to_string()),
                Ok(request) => match run(handler, request, &mut write).await? {
                    Ok(reply) => Response::ok(reply),
                    Err(err) => Response::err(err),
                },
            },
        };
        write.write_all(encode_response(&response).as_bytes()).await?;
    }
}

/// Runs one request, writing its progress lines as they come; the result is left to the caller.
/// If the client goes away, the write fails and the command is dropped (cancelled) with it.
async fn run(
    handler: &dyn ControlHandler,
    request: Request,
    write: &mut OwnedWriteHalf,
) -> std::io::Result<Result<Reply, String>> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let work = handler.handle(request, ProgressSink(Some(tx)));
    tokio::pin!(work);
    loop {
        tokio::select! {
            // Steps first: every step sent before the result is written before it.
            biased;
            Some(step) = rx.recv() => {
                write.write_all(encode_response(&Response::progress(step)).as_bytes()).await?;
            }
            result = &mut work => {
                while let Ok(step) = rx.try_recv() {
                    write.write_all(encode_response(&Response::progress(step)).as_bytes()).await?;
                }
                return Ok(result);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::client::{Client, ClientError};
    use super::protocol::{PathResult, PathResults, Pong, Request};
    use super::*;

    struct Fake;

    #[async_trait]
    impl ControlHandler for Fake {
        async fn handle(&self, request: Request, progress: ProgressSink) -> Result<Reply, String> {
            match request {
                Request::Ping => Ok(Reply::Pong(Pong { pid: 1, version: "fake".into() })),
                Request::Stats => Err("no stats here".into()),
                // Every path "fetched" but the one named `bad`, each reported as it finishes.
                Request::Prefetch { paths, .. } => {
                    let total = paths.len();
                    let mut results = Vec::new();
                    for (i, path) in paths.into_iter().enumerate() {
                        let error = (path == "bad").then(|| "absent".to_owned());
                        progress.send(Progress {
                            done: i + 1,
                            total,
                            path: path.clone(),
                            error: error.clone(),
                        });
                        results.push(PathResult { path, changed: error.is_none(), error });
                    }
                    Ok(Reply::Results(PathResults { results }))
                }
                other => Err(format!("fake handler: {other:?} not supported")),
            }
        }
    }

    async fn started(
        dir: &Path,
    ) -> (PathBuf, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        let path = dir.join("sub").join("control.sock");
        let socket = bind(&path).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(socket, Arc::new(Fake), async {
            let _ = rx.await;
        }));
        (path, tx, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn serves_a_fake_handler_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tx, task) = started(dir.path()).await;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let p = path.clone();
        let (pong, stats) = tokio::task::spawn_blocking(move || {
            let mut client = Client::connect(&p).unwrap();
            (client.request(&Request::Ping), client.request(&Request::Stats))
        })
        .await
        .unwrap();
        assert_eq!(pong.unwrap(), Reply::Pong(Pong { pid: 1, version: "fake".into() }));
        match stats {
            Err(ClientError::Daemon(e)) => assert_eq!(e, "no stats here"),
            other => panic!("{other:?}"),
        }
        // A second daemon on the same path is refused while the first answers.
        assert!(matches!(bind(&path), Err(ControlError::InUse(_))));
        tx.send(()).unwrap();
        task.await.unwrap();
        assert!(!path.exists(), "socket removed on shutdown");
    }

    /// Progress lines arrive in order, before the result, and the typed call returns the rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn progress_lines_come_before_the_result() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tx, task) = started(dir.path()).await;
        let (steps, rows, pong) = tokio::task::spawn_blocking(move || {
            let mut client = Client::connect(&path).unwrap();
            let mut steps = Vec::new();
            let paths = ["a", "bad", "c"].map(String::from).to_vec();
            let rows = client.prefetch(paths, true, 2, |s| steps.push(s)).unwrap();
            // The connection is still usable, with nothing left over from the prefetch.
            (steps, rows, client.ping().unwrap())
        })
        .await
        .unwrap();
        let done: Vec<_> = steps.iter().map(|s| (s.done, s.total, s.path.as_str())).collect();
        assert_eq!(done, vec![(1, 3, "a"), (2, 3, "bad"), (3, 3, "c")]);
        assert_eq!(steps[1].error.as_deref(), Some("absent"));
        let failed: Vec<_> = rows.iter().filter(|r| r.error.is_some()).map(|r| &r.path).collect();
        assert_eq!(failed, vec!["bad"]);
        assert_eq!(pong.version, "fake");
        tx.send(()).unwrap();
        task.await.unwrap();
    }

    /// A typed call that gets another reply than its own says so instead of guessing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reply_of_the_wrong_kind_is_named() {
        struct Confused;
        #[async_trait]
        impl ControlHandler for Confused {
            async fn handle(&self, _: Request, _: ProgressSink) -> Result<Reply, String> {
                Ok(Reply::Pong(Pong { pid: 1, version: "x".into() }))
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let socket = bind(&path).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(socket, Arc::new(Confused), async {
            let _ = rx.await;
        }));
        let err = tokio::task::spawn_blocking(move || Client::connect(&path).unwrap().gc(None))
            .await
            .unwrap()
            .unwrap_err();
        assert!(err.to_string().contains("expected a gc reply, got pong"), "{err}");
        tx.send(()).unwrap();
        task.await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_mismatch_and_long_lines_get_errors() {
        let dir = tempfile::tempdir().unwrap();
        let (path, tx, task) = started(dir.path()).await;
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(b"{\"version\":9,\"request\":{\"type\":\"ping\"}}\n").await.unwrap();
        let mut long = vec![b'x'; MAX_LINE + 10];
        long.push(b'\n');
        s.write_all(&long).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let lines: Vec<Response> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2, "{out}");
        let error = |r: &Response| match &r.body {
            protocol::Body::Error(e) => e.clone(),
            other => panic!("not an error: {other:?}"),
        };
        assert!(error(&lines[0]).contains("version 9"), "{out}");
        assert!(error(&lines[1]).contains("longer than"), "{out}");
        tx.send(()).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let socket = bind(&path).expect("stale socket replaced");
        drop(socket);
        assert!(!path.exists());
    }
}
