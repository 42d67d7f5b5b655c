//! The control protocol: line-delimited JSON over a Unix socket, one request line and one
//! response line at a time, any number per connection.
//!
//! ```text
//! → {"version":1,"request":{"type":"stats"}}
//! ← {"version":1,"ok":true,"result":{...}}
//! ← {"version":1,"ok":false,"error":"..."}
//! ```
//!
//! `version` is [`PROTOCOL_VERSION`]; a daemon answers any other version with an error naming
//! both. New commands are new [`Request`] variants (additive: old clients keep working); a
//! change to an existing request or result shape bumps the version.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest request or response line accepted, in bytes (without the newline).
pub const MAX_LINE: usize = 1 << 20;

/// A command for the daemon. Add new commands here (and handle them in
/// [`super::ControlHandler`]); the tag is the `type` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is anyone there? Answers `{"pid": N, "version": "x.y.z"}`.
    Ping,
    /// The counters: a [`crate::metrics::Snapshot`].
    Stats,
    /// Fetch one store path into the cache if needed; answers `{"path", "references"}`, so a
    /// client can walk a closure itself and show progress.
    Fetch {
        /// A store path or basename.
        path: String,
    },
    /// The closure of `paths`, every path fetched on the way; answers `{"paths": [...]}`.
    Closure {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Pin `paths` (fetching them first): never evicted. Answers per-path `results`.
    Pin {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Unpin `paths`. Answers per-path `results`.
    Unpin {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Evict `paths` (pinned ones are refused). Answers per-path `results`.
    Evict {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Evict unpinned least-recently-used paths down to `to_bytes` (all unpinned when absent).
    Gc {
        /// Target size in bytes.
        #[serde(default)]
        to_bytes: Option<u64>,
    },
    /// Re-hash cached entries against NarHash, evicting corrupt ones; empty `paths` = all.
    Verify {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Registrations for `nix-store --load-db`; answers `{"text": "..."}`.
    ExportDb {
        /// Store paths or basenames.
        paths: Vec<String>,
        /// Include their closure.
        closure: bool,
    },
}

/// One request line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The command.
    pub request: Request,
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// [`PROTOCOL_VERSION`] of the daemon.
    pub version: u32,
    /// Whether `result` (true) or `error` (false) is set.
    pub ok: bool,
    /// The command's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Why the command failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Response {
    /// A success.
    pub fn ok(result: serde_json::Value) -> Self {
        Self { version: PROTOCOL_VERSION, ok: true, result: Some(result), error: None }
    }

    /// A failure.
    pub fn err(error: impl Into<String>) -> Self {
        Self { version: PROTOCOL_VERSION, ok: false, result: None, error: Some(error.into()) }
    }
}

/// Why a line is not a request this daemon can run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Not JSON, or not the envelope shape.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Another protocol version.
    #[error("unsupported protocol version {got}; this daemon speaks version {PROTOCOL_VERSION}")]
    Version {
        /// What the client sent.
        got: u64,
    },
    /// The envelope is fine but the command is not known (an older daemon).
    #[error("unknown request: {0}")]
    UnknownRequest(String),
}

/// Encodes a request line (with its newline).
pub fn encode_request(request: &Request) -> String {
    let envelope = RequestEnvelope { version: PROTOCOL_VERSION, request: request.clone() };
    // Serializing plain enums and integers cannot fail.
    let mut line = serde_json::to_string(&envelope).unwrap_or_default();
    line.push('\n');
    line
}

/// Decodes a request line: the version is checked before the command, so a newer client gets
/// "unsupported version", not "unknown request".
pub fn decode_request(line: &str) -> Result<Request, ProtocolError> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
    let version = value
        .get("version")
        .and_then(serde_json::Value::as_u64)
        .ok_or_else(|| ProtocolError::Malformed("no numeric \"version\"".into()))?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(ProtocolError::Version { got: version });
    }
    let request =
        value.get("request").ok_or_else(|| ProtocolError::Malformed("no \"request\"".into()))?;
    serde_json::from_value(request.clone())
        .map_err(|e| ProtocolError::UnknownRequest(format!("{request}: {e}")))
}

/// Encodes a response line (with its newline).
pub fn encode_response(response: &Response) -> String {
    let mut line = serde_json::to_string(response).unwrap_or_else(|e| {
        format!(r#"{{"version":{PROTOCOL_VERSION},"ok":false,"error":"cannot encode: {e}"}}"#)
    });
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        for request in [Request::Ping, Request::Stats] {
            let line = encode_request(&request);
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(decode_request(line.trim_end()).unwrap(), request);
        }
        assert_eq!(
            encode_request(&Request::Stats),
            "{\"version\":1,\"request\":{\"type\":\"stats\"}}\n"
        );
    }

    #[test]
    fn responses_round_trip() {
        for response in [Response::ok(serde_json::json!({"a": 1})), Response::err("nope")] {
            let line = encode_response(&response);
            let back: Response = serde_json::from_str(line.trim_end()).unwrap();
            assert_eq!(back, response);
        }
        assert_eq!(
            encode_response(&Response::err("x")),
            "{\"version\":1,\"ok\":false,\"error\":\"x\"}\n"
        );
    }

    #[test]
    fn bad_lines_are_named() {
        let cases = [
            ("other_version", r#"{"version":2,"request":{"type":"stats"}}"#, "version 2"),
            ("no_version", r#"{"request":{"type":"stats"}}"#, "version"),
            ("not_json", "stats", "malformed"),
            ("unknown", r#"{"version":1,"request":{"type":"defrag"}}"#, "unknown request"),
            ("no_request", r#"{"version":1}"#, "request"),
        ];
        for (name, line, needle) in cases {
            let err = decode_request(line).expect_err(name).to_string();
            assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        }
        assert_eq!(
            decode_request(r#"{"version":7,"request":{"type":"future_thing"}}"#),
            Err(ProtocolError::Version { got: 7 })
        );
    }
}
