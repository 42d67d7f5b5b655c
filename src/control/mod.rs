//! The control socket: how `storefs stats` and the cache commands talk to a running daemon.
//!
//! A Unix stream socket (default [`DEFAULT_SOCKET`], mode 0600: root only) speaking the
//! line-delimited JSON of [`protocol`]; connections from users other than the daemon's own (or
//! root) are dropped. [`bind`] refuses to start when a live daemon answers on
//! the path and removes a stale socket left by a dead one; [`serve`] runs one task per
//! connection until its injected shutdown future resolves. Commands are answered by a
//! [`ControlHandler`]: the daemon's is [`DaemonHandler`]; tests inject their own.

pub mod client;
pub mod handler;
pub mod protocol;

pub use handler::DaemonHandler;

use std::future::Future;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use self::protocol::{MAX_LINE, Request, Response, decode_request, encode_response};
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
    /// Runs `request`; the `Err` text goes back to the client as `error`.
    async fn handle(&self, request: Request) -> Result<serde_json::Value, String>;
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
                Ok(request) => match handler.handle(request).await {
                    Ok(result) => Response::ok(result),
                    Err(err) => Response::err(err),
                },
            },
        };
        write.write_all(encode_response(&response).as_bytes()).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::client::{Client, ClientError};
    use super::protocol::Request;
    use super::*;

    struct Fake;

    #[async_trait]
    impl ControlHandler for Fake {
        async fn handle(&self, request: Request) -> Result<serde_json::Value, String> {
            match request {
                Request::Ping => Ok(serde_json::json!({"pong": true})),
                Request::Stats => Err("no stats here".into()),
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
        assert_eq!(pong.unwrap(), serde_json::json!({"pong": true}));
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
        assert!(!lines[0].ok && lines[0].error.as_deref().unwrap().contains("version 9"));
        assert!(lines[1].error.as_deref().unwrap().contains("longer than"));
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
