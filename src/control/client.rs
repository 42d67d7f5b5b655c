//! The client side of the control socket, for CLI commands: blocking, one request at a time,
//! with one typed method per command.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{
    Body, CheckRow, GcReply, MAX_LINE, PathResult, Pong, Progress, Reply, Request, ResponseError,
    StatsReply, VerifyReply, decode_response, encode_request,
};

/// How long a request may take before the client gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What a connection closed before its answer reports.
const CONNECTION_CLOSED: &str = "connection closed";

/// Why a request to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon listens on the socket.
    #[error(
        "cannot connect to the storefs daemon at {path} (is `storefs mount` running, and \
             are you root?): {source}"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Talking to it failed.
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    /// It answered a line that is not a response of this protocol version.
    #[error(transparent)]
    Response(#[from] ResponseError),
    /// It answered something else than the command's reply.
    #[error("bad answer from the daemon: {0}")]
    BadResponse(String),
    /// It answered with an error.
    #[error("the daemon says: {0}")]
    Daemon(String),
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let connect = |source| ClientError::Connect { path: path.to_path_buf(), source };
        let stream = UnixStream::connect(path).map_err(connect)?;
        stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        let writer = stream.try_clone()?;
        Ok(Self { reader: BufReader::new(stream), writer })
    }

    /// Waits up to `timeout` for each answer (None: as long as it takes). Fetching, verifying
    /// or exporting a large closure can take much longer than [`REQUEST_TIMEOUT`]; the daemon
    /// bounds the network work itself.
    pub fn with_timeout(self, timeout: Option<Duration>) -> Result<Self, ClientError> {
        self.reader.get_ref().set_read_timeout(timeout)?;
        Ok(self)
    }

    /// Sends `request` and returns its reply.
    pub fn request(&mut self, request: &Request) -> Result<Reply, ClientError> {
        self.request_with_progress(request, |_| {})
    }

    /// Sends `request`, calls `on_progress` for each progress line, and returns its reply.
    pub fn request_with_progress(
        &mut self,
        request: &Request,
        mut on_progress: impl FnMut(Progress),
    ) -> Result<Reply, ClientError> {
        self.writer.write_all(encode_request(request).as_bytes())?;
        loop {
            let mut line = String::new();
            let n = (&mut self.reader).take(MAX_LINE as u64 + 1).read_line(&mut line)?;
            if n == 0 {
                return Err(ClientError::BadResponse(CONNECTION_CLOSED.into()));
            }
            match decode_response(line.trim_end())?.body {
                Body::Result(reply) => return Ok(reply),
                Body::Error(error) => return Err(ClientError::Daemon(error)),
                Body::Progress(step) => on_progress(step),
            }
        }
    }

    /// Asks the daemon to hand its mount over to `binary` (None: its own program). Ok when the
    /// connection closed without an answer, which is what an `execve` does; the caller then
    /// checks that the new program answers.
    pub fn upgrade(&mut self, binary: Option<String>) -> Result<(), ClientError> {
        match self.request(&Request::Upgrade { binary }) {
            Err(ClientError::BadResponse(closed)) if closed == CONNECTION_CLOSED => Ok(()),
            Err(err) => Err(err),
            Ok(other) => Err(unexpected("no answer", &other)),
        }
    }

    /// The daemon's pid and version.
    pub fn ping(&mut self) -> Result<Pong, ClientError> {
        match self.request(&Request::Ping)? {
            Reply::Pong(pong) => Ok(pong),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// The daemon's status and counters.
    pub fn stats(&mut self) -> Result<StatsReply, ClientError> {
        match self.request(&Request::Stats)? {
            Reply::Stats(stats) => Ok(*stats),
            other => Err(unexpected("stats", &other)),
        }
    }

    /// The pinned paths, sorted.
    pub fn pins(&mut self) -> Result<Vec<String>, ClientError> {
        match self.request(&Request::Pins)? {
            Reply::Pins(pins) => Ok(pins.paths),
            other => Err(unexpected("pins", &other)),
        }
    }

    /// Fetches `paths` (with `closure`, their closure), `jobs` at a time, calling `on_progress`
    /// as each path finishes; one outcome per path.
    pub fn prefetch(
        &mut self,
        paths: Vec<String>,
        closure: bool,
        jobs: usize,
        on_progress: impl FnMut(Progress),
    ) -> Result<Vec<PathResult>, ClientError> {
        let request = Request::Prefetch { paths, closure, jobs };
        results(self.request_with_progress(&request, on_progress)?)
    }

    /// The closure of `paths`, every path fetched on the way.
    pub fn closure(&mut self, paths: Vec<String>) -> Result<Vec<String>, ClientError> {
        match self.request(&Request::Closure { paths })? {
            Reply::Closure(closure) => Ok(closure.paths),
            other => Err(unexpected("closure", &other)),
        }
    }

    /// Pins `paths`; one outcome per path.
    pub fn pin(&mut self, paths: Vec<String>) -> Result<Vec<PathResult>, ClientError> {
        results(self.request(&Request::Pin { paths })?)
    }

    /// Unpins `paths`; one outcome per path.
    pub fn unpin(&mut self, paths: Vec<String>) -> Result<Vec<PathResult>, ClientError> {
        results(self.request(&Request::Unpin { paths })?)
    }

    /// Evicts `paths`; one outcome per path.
    pub fn evict(&mut self, paths: Vec<String>) -> Result<Vec<PathResult>, ClientError> {
        results(self.request(&Request::Evict { paths })?)
    }

    /// Evicts unpinned paths down to `to_bytes` (all unpinned ones without it).
    pub fn gc(&mut self, to_bytes: Option<u64>) -> Result<GcReply, ClientError> {
        match self.request(&Request::Gc { to_bytes })? {
            Reply::Gc(report) => Ok(report),
            other => Err(unexpected("gc", &other)),
        }
    }

    /// Re-hashes the cached entries of `paths` (all when empty).
    pub fn verify(&mut self, paths: Vec<String>) -> Result<VerifyReply, ClientError> {
        match self.request(&Request::Verify { paths })? {
            Reply::Verify(report) => Ok(report),
            other => Err(unexpected("verify", &other)),
        }
    }

    /// Registrations of `paths` (with `closure`, of their closure) for `nix-store --load-db`.
    pub fn export_db(&mut self, paths: Vec<String>, closure: bool) -> Result<String, ClientError> {
        match self.request(&Request::ExportDb { paths, closure })? {
            Reply::ExportDb(export) => Ok(export.text),
            other => Err(unexpected("export_db", &other)),
        }
    }

    /// Has the daemon check its substituters (each request within `timeout`), its keys (with
    /// the narinfo of `probe_path`, else of a path it verified) and its cache directory.
    pub fn check(
        &mut self,
        probe_path: Option<String>,
        timeout: Duration,
    ) -> Result<Vec<CheckRow>, ClientError> {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX).max(1);
        match self.request(&Request::Check { probe_path, timeout_ms })? {
            Reply::Check(report) => Ok(report.checks),
            other => Err(unexpected("check", &other)),
        }
    }
}

/// The per-path rows of a `results` reply.
fn results(reply: Reply) -> Result<Vec<PathResult>, ClientError> {
    match reply {
        Reply::Results(rows) => Ok(rows.results),
        other => Err(unexpected("results", &other)),
    }
}

fn unexpected(want: &str, got: &Reply) -> ClientError {
    ClientError::BadResponse(format!("expected a {want} reply, got {}", got.kind()))
}
