//! The client side of the control socket, for CLI commands: blocking, one request at a time.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::protocol::{MAX_LINE, PROTOCOL_VERSION, Request, Response, encode_request};

/// How long a request may take before the client gives up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// It answered something that is not a response.
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

    /// Sends `request` and returns its result.
    pub fn request(&mut self, request: &Request) -> Result<serde_json::Value, ClientError> {
        self.writer.write_all(encode_request(request).as_bytes())?;
        let mut line = String::new();
        let n = (&mut self.reader).take(MAX_LINE as u64 + 1).read_line(&mut line)?;
        if n == 0 {
            return Err(ClientError::BadResponse("connection closed".into()));
        }
        let response: Response = serde_json::from_str(line.trim_end())
            .map_err(|e| ClientError::BadResponse(e.to_string()))?;
        match response {
            Response { ok: true, result: Some(result), .. } => Ok(result),
            Response { error: Some(error), .. } => Err(ClientError::Daemon(error)),
            Response { version, .. } if version != PROTOCOL_VERSION => {
                Err(ClientError::BadResponse(format!(
                    "protocol version {version}, expected {PROTOCOL_VERSION}"
                )))
            }
            _ => Err(ClientError::BadResponse(line.trim_end().to_owned())),
        }
    }
}
