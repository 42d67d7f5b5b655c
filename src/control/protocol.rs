//! The control protocol: line-delimited JSON over a Unix socket. A client sends one request
//! line and reads response lines until a result or an error; any number of requests may follow
//! on the same connection.
//!
//! ```text
//! → {"version":2,"request":{"type":"stats"}}
//! ← {"version":2,"result":{"type":"stats",...}}
//! ← {"version":2,"error":"..."}
//! ← {"version":2,"progress":{"done":1,"total":3,"path":"/nix/store/..."}}   (prefetch only)
//! ```
//!
//! Both sides use the types below, so a renamed field is a compile error, not a silent `null`.
//! `version` is [`PROTOCOL_VERSION`]; a daemon answers any other version with an error naming
//! both, and the client checks the version of every line before reading anything else, so an
//! old/new mismatch is reported as such in either direction. New commands are new [`Request`]
//! and [`Reply`] variants; any change to an existing request or reply shape bumps the version.
//!
//! History: 1, untyped results (`{"ok":true,"result":{...}}`) and a `fetch` request; 2, typed
//! results tagged by `type`, `prefetch` with streamed `progress` lines, no `fetch`; `stats`
//! carries the daemon's status; `pins`; `check`.

use serde::{Deserialize, Serialize};

use crate::metrics::Snapshot;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 2;
/// Longest request or response line accepted, in bytes (without the newline).
pub const MAX_LINE: usize = 1 << 20;

/// A command for the daemon. Add new commands here, with their [`Reply`] variant, and handle
/// them in [`super::DaemonHandler`]; the tag is the `type` field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Is anyone there? Answers [`Reply::Pong`].
    Ping,
    /// The daemon's status and counters; answers [`Reply::Stats`].
    Stats,
    /// The pinned paths; answers [`Reply::Pins`].
    Pins,
    /// Fetch `paths` (with `closure`, everything they reference, transitively), `jobs` at a
    /// time. Each finished path is reported as a `progress` line; answers [`Reply::Results`].
    Prefetch {
        /// Store paths or basenames.
        paths: Vec<String>,
        /// Follow References.
        closure: bool,
        /// Paths fetched at once (at least 1).
        jobs: usize,
    },
    /// The closure of `paths`, every path fetched on the way; answers [`Reply::Closure`].
    Closure {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Pin `paths` (fetching them first): never evicted. Answers [`Reply::Results`].
    Pin {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Unpin `paths`. Answers [`Reply::Results`].
    Unpin {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Evict `paths` (pinned ones are refused). Answers [`Reply::Results`].
    Evict {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Evict unpinned least-recently-used paths down to `to_bytes` (all unpinned when absent).
    /// Answers [`Reply::Gc`].
    Gc {
        /// Target size in bytes.
        #[serde(default)]
        to_bytes: Option<u64>,
    },
    /// Re-hash cached entries against NarHash, evicting corrupt ones; empty `paths` = all.
    /// Answers [`Reply::Verify`].
    Verify {
        /// Store paths or basenames.
        paths: Vec<String>,
    },
    /// Registrations for `nix-store --load-db`; answers [`Reply::ExportDb`].
    ExportDb {
        /// Store paths or basenames.
        paths: Vec<String>,
        /// Include their closure.
        closure: bool,
    },
    /// Checks what the daemon uses: each substituter's nix-cache-info, the trusted keys against
    /// one narinfo per substituter, the cache directory. Answers [`Reply::Check`].
    Check {
        /// The store path whose narinfo tests the keys; when absent, one the daemon verified.
        #[serde(default)]
        probe_path: Option<String>,
        /// How long each substituter may take to answer, in milliseconds (at least 1).
        timeout_ms: u64,
    },
    /// Hands the live mount over to a new program: the daemon stops at a request boundary and
    /// `execve`s `binary` (the one it was started from when absent) with its own arguments,
    /// passing the `/dev/fuse` descriptor and its state on. Success has no reply: the connection
    /// closes with the old program, and the new one answers `stats` with the same pid. A
    /// failure (nothing to run, exec refused) is an error, and the old program serves on.
    Upgrade {
        /// The program to run.
        #[serde(default)]
        binary: Option<String>,
    },
}

/// What a command answers, tagged by `type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    /// To [`Request::Ping`].
    Pong(Pong),
    /// To [`Request::Stats`].
    Stats(Box<StatsReply>),
    /// To [`Request::Pins`].
    Pins(PinsReply),
    /// To [`Request::Closure`].
    Closure(ClosureReply),
    /// Per-path outcomes, to [`Request::Prefetch`], [`Request::Pin`], [`Request::Unpin`] and
    /// [`Request::Evict`].
    Results(PathResults),
    /// To [`Request::Gc`].
    Gc(GcReply),
    /// To [`Request::Verify`].
    Verify(VerifyReply),
    /// To [`Request::ExportDb`].
    ExportDb(ExportDbReply),
    /// To [`Request::Check`].
    Check(CheckReply),
}

impl Reply {
    /// The `type` tag, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Pong(_) => "pong",
            Self::Stats(_) => "stats",
            Self::Pins(_) => "pins",
            Self::Closure(_) => "closure",
            Self::Results(_) => "results",
            Self::Gc(_) => "gc",
            Self::Verify(_) => "verify",
            Self::ExportDb(_) => "export_db",
            Self::Check(_) => "check",
        }
    }
}

/// The daemon's identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Its process id.
    pub pid: u32,
    /// Its storefs version (`CARGO_PKG_VERSION`).
    pub version: String,
}

/// What `storefs stats` prints: the daemon's status and its counters, as one flat object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Version, state, uptime, where it serves from.
    #[serde(flatten)]
    pub status: DaemonStatus,
    /// The counters ([`crate::metrics`]).
    #[serde(flatten)]
    pub counters: Snapshot,
}

/// The daemon itself, beside its counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Its storefs version.
    pub version: String,
    /// Its process id.
    pub pid: u32,
    /// Serving, or stopping.
    pub state: DaemonState,
    /// Seconds since it started (monotonic, so rates over an interval are exact).
    pub uptime_seconds: f64,
    /// Where the store is mounted.
    pub mountpoint: String,
    /// The cache directory.
    pub cache_dir: String,
    /// When this answer was made: RFC 3339, UTC, to the second.
    pub timestamp: String,
}

/// What the daemon is doing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DaemonState {
    /// Mounted and answering.
    #[default]
    Serving,
    /// SIGINT or SIGTERM (or the mount went away): unmounting, then closing its sockets.
    Stopping,
}

impl std::fmt::Display for DaemonState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Serving => "serving",
            Self::Stopping => "stopping",
        })
    }
}

/// The pinned paths.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinsReply {
    /// Absolute store paths, sorted.
    pub paths: Vec<String>,
}

/// A closure, breadth-first from the roots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClosureReply {
    /// Absolute store paths, each once.
    pub paths: Vec<String>,
}

/// One outcome per path, in the order the daemon handled them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathResults {
    /// The rows.
    pub results: Vec<PathResult>,
}

/// What a command did to one path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathResult {
    /// The absolute store path.
    pub path: String,
    /// On success, whether anything changed (pinned, unpinned, evicted; fetched is always true).
    #[serde(default)]
    pub changed: bool,
    /// Why it failed; absent on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `gc` did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReply {
    /// Entries evicted.
    pub evicted: usize,
    /// Disk bytes they occupied.
    pub freed_bytes: u64,
    /// Disk bytes the cache holds afterwards (pinned entries included).
    pub used_bytes: u64,
    /// Pinned entries kept regardless of the target.
    pub pinned_kept: usize,
}

/// What `verify` found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReply {
    /// Entries that matched their NarHash and NarSize.
    pub ok: Vec<String>,
    /// Entries that did not, each evicted.
    pub corrupt: Vec<CorruptEntry>,
    /// Paths asked for that were not cached.
    pub missing: Vec<String>,
}

/// One corrupt entry found by `verify`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorruptEntry {
    /// The absolute store path.
    pub path: String,
    /// What did not match.
    pub reason: String,
}

/// Registrations for `nix-store --load-db`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportDbReply {
    /// In `nix-store --dump-db` format.
    pub text: String,
}

/// What `check` found, one row per check, in the order they were made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReply {
    /// The rows.
    pub checks: Vec<CheckRow>,
}

/// One check: what was checked, how it went, and the facts or the problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRow {
    /// Passed, passed with a caveat, or failed.
    pub status: CheckStatus,
    /// What was checked: `substituter <url>`, `keys <url>`, `cache directory <dir>`, ...
    pub subject: String,
    /// What was found: the facts on success, the problem on failure.
    pub detail: String,
}

/// How one check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    /// Passed.
    Ok,
    /// Passed, but something could not be checked or looks off (does not fail the check).
    Warn,
    /// Failed: the daemon cannot serve as configured.
    Fail,
}

/// One path of a `prefetch` finished: sent as a `progress` line before the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Paths finished so far, this one included.
    pub done: usize,
    /// Paths known so far (with `closure` it grows as references are found).
    pub total: usize,
    /// The absolute store path.
    pub path: String,
    /// Why it failed; absent when it was fetched (or already cached).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One request line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The command.
    pub request: Request,
}

/// One response line: the daemon's [`PROTOCOL_VERSION`] and one [`Body`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// [`PROTOCOL_VERSION`] of the daemon.
    pub version: u32,
    /// What the line carries.
    #[serde(flatten)]
    pub body: Body,
}

/// What a response line carries: the key next to `version`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// The command finished; the last line for this request.
    Result(Reply),
    /// The command failed; the last line for this request.
    Error(String),
    /// A step of a long command; more lines follow.
    Progress(Progress),
}

impl Response {
    /// A success.
    pub fn ok(reply: Reply) -> Self {
        Self { version: PROTOCOL_VERSION, body: Body::Result(reply) }
    }

    /// A failure.
    pub fn err(error: impl Into<String>) -> Self {
        Self { version: PROTOCOL_VERSION, body: Body::Error(error.into()) }
    }

    /// A progress step.
    pub fn progress(progress: Progress) -> Self {
        Self { version: PROTOCOL_VERSION, body: Body::Progress(progress) }
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
    // Serializing these plain structs cannot fail; should it ever, the client gets an error line.
    let mut line = serde_json::to_string(response)
        .or_else(|e| {
            serde_json::to_string(&Response::err(format!("cannot encode the answer: {e}")))
        })
        .unwrap_or_default();
    line.push('\n');
    line
}

/// Why a response line cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    /// Not JSON, or not a response of this version's shape.
    #[error("bad answer from the daemon: {0}")]
    Malformed(String),
    /// The daemon speaks another protocol version.
    #[error(
        "the daemon speaks control protocol version {daemon}, this storefs speaks version \
         {PROTOCOL_VERSION}: use the storefs binary that matches the running daemon, or restart \
         the daemon with this one"
    )]
    Version {
        /// What the daemon sent.
        daemon: u64,
    },
}

/// Only the version of a line, read before anything else of it.
#[derive(Deserialize)]
struct VersionOnly {
    version: u64,
}

/// Decodes a response line: the version is checked first, so a daemon of another version is
/// named as such whatever the rest of its line looks like.
pub fn decode_response(line: &str) -> Result<Response, ResponseError> {
    let malformed = |e: serde_json::Error| ResponseError::Malformed(format!("{e}: {line}"));
    let VersionOnly { version } = serde_json::from_str(line).map_err(malformed)?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(ResponseError::Version { daemon: version });
    }
    serde_json::from_str(line).map_err(malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{UpstreamSnapshot, Value};

    const PATH: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x";

    fn every_request() -> Vec<Request> {
        let paths = vec![PATH.to_owned()];
        vec![
            Request::Ping,
            Request::Stats,
            Request::Pins,
            Request::Prefetch { paths: paths.clone(), closure: true, jobs: 3 },
            Request::Closure { paths: paths.clone() },
            Request::Pin { paths: paths.clone() },
            Request::Unpin { paths: paths.clone() },
            Request::Evict { paths: paths.clone() },
            Request::Gc { to_bytes: Some(5) },
            Request::Gc { to_bytes: None },
            Request::Verify { paths: vec![] },
            Request::ExportDb { paths, closure: false },
            Request::Check { probe_path: Some(PATH.into()), timeout_ms: 5000 },
            Request::Check { probe_path: None, timeout_ms: 1 },
            Request::Upgrade { binary: None },
            Request::Upgrade { binary: Some("/usr/local/bin/storefs".into()) },
        ]
    }

    fn every_reply() -> Vec<Reply> {
        let p = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x".to_owned();
        let mut snapshot = Snapshot::default();
        snapshot.set("hit_rate", 0.25);
        snapshot.set("lookups", 4);
        let mut up = UpstreamSnapshot { url: "https://cache.example".into(), ..Default::default() };
        for (key, value) in [
            ("online", Value::Flag(true)),
            ("requests", Value::Count(2)),
            ("errors", Value::Count(0)),
            ("bytes", Value::Count(9)),
            ("latency_ms_p50", Value::Absent),
        ] {
            up.figures.insert(key.into(), value);
        }
        snapshot.upstreams.push(up);
        vec![
            Reply::Pong(Pong { pid: 7, version: "1.2.3".into() }),
            Reply::Stats(Box::new(StatsReply {
                status: DaemonStatus {
                    version: "1.2.3".into(),
                    pid: 7,
                    state: DaemonState::Stopping,
                    uptime_seconds: 1.5,
                    mountpoint: "/nix/store".into(),
                    cache_dir: "/var/cache/storefs".into(),
                    timestamp: "2026-12-05T02:36:23Z".into(),
                },
                counters: snapshot,
            })),
            Reply::Pins(PinsReply { paths: vec![p.clone()] }),
            Reply::Closure(ClosureReply { paths: vec![p.clone()] }),
            Reply::Results(PathResults {
                results: vec![
                    PathResult { path: p.clone(), changed: true, error: None },
                    PathResult { path: p.clone(), changed: false, error: Some("gone".into()) },
                ],
            }),
            Reply::Gc(GcReply { evicted: 1, freed_bytes: 2, used_bytes: 3, pinned_kept: 4 }),
            Reply::Verify(VerifyReply {
                ok: vec![p.clone()],
                corrupt: vec![CorruptEntry { path: p.clone(), reason: "NarHash".into() }],
                missing: vec![],
            }),
            Reply::ExportDb(ExportDbReply { text: format!("{p}\n") }),
            Reply::Check(CheckReply {
                checks: [CheckStatus::Ok, CheckStatus::Warn, CheckStatus::Fail]
                    .into_iter()
                    .map(|status| CheckRow {
                        status,
                        subject: "substituter https://cache.example".into(),
                        detail: "nix-cache-info answers".into(),
                    })
                    .collect(),
            }),
        ]
    }

    #[test]
    fn requests_round_trip() {
        for request in every_request() {
            let line = encode_request(&request);
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(decode_request(line.trim_end()).unwrap(), request);
        }
        assert_eq!(
            encode_request(&Request::Stats),
            "{\"version\":2,\"request\":{\"type\":\"stats\"}}\n"
        );
    }

    #[test]
    fn responses_round_trip() {
        let progress = Progress { done: 1, total: 2, path: "/nix/store/x".into(), error: None };
        let mut responses: Vec<Response> = every_reply().into_iter().map(Response::ok).collect();
        responses.push(Response::err("nope"));
        responses.push(Response::progress(progress.clone()));
        responses.push(Response::progress(Progress { error: Some("absent".into()), ..progress }));
        for response in responses {
            let line = encode_response(&response);
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'), "{line}");
            assert_eq!(decode_response(line.trim_end()).unwrap(), response, "{line}");
        }
    }

    /// The wire shape, byte for byte: what a script speaking the protocol sees.
    #[test]
    fn responses_have_the_documented_shape() {
        let cases = [
            (Response::err("x"), r#"{"version":2,"error":"x"}"#),
            (
                Response::ok(Reply::Pong(Pong { pid: 7, version: "1.2.3".into() })),
                r#"{"version":2,"result":{"type":"pong","pid":7,"version":"1.2.3"}}"#,
            ),
            (
                Response::ok(Reply::Results(PathResults {
                    results: vec![PathResult { path: "/p".into(), changed: true, error: None }],
                })),
                r#"{"version":2,"result":{"type":"results","results":[{"path":"/p","changed":true}]}}"#,
            ),
            (
                Response::progress(Progress {
                    done: 1,
                    total: 3,
                    path: "/p".into(),
                    error: Some("e".into()),
                }),
                r#"{"version":2,"progress":{"done":1,"total":3,"path":"/p","error":"e"}}"#,
            ),
        ];
        for (response, want) in cases {
            assert_eq!(encode_response(&response), format!("{want}\n"));
        }
    }

    /// `stats --json` prints the status and the counters side by side, as one object.
    #[test]
    fn stats_are_one_flat_object() {
        let stats = every_reply().into_iter().find_map(|r| match r {
            Reply::Stats(s) => Some(s),
            _ => None,
        });
        let value = serde_json::to_value(stats.unwrap()).unwrap();
        for key in ["version", "state", "uptime_seconds", "mountpoint", "timestamp", "lookups"] {
            assert!(value.get(key).is_some(), "no {key:?} in {value}");
        }
        assert_eq!(value["state"], "stopping");
    }

    #[test]
    fn another_daemon_version_is_named_before_its_shape_is_read() {
        // What a version 1 daemon answers a version 2 request.
        let old = r#"{"version":1,"ok":false,"error":"unsupported protocol version 2; this daemon speaks version 1"}"#;
        let err = decode_response(old).unwrap_err();
        assert_eq!(err, ResponseError::Version { daemon: 1 });
        let text = err.to_string();
        assert!(text.contains("version 1") && text.contains("version 2"), "{text}");
        // A future daemon, whatever its line holds.
        let new = r#"{"version":3,"whatever":{"nested":true}}"#;
        assert_eq!(decode_response(new), Err(ResponseError::Version { daemon: 3 }));
    }

    #[test]
    fn bad_response_lines_are_named() {
        let cases = [
            ("not_json", "pong", "pong"),
            ("no_version", r#"{"result":{"type":"pong","pid":1,"version":"x"}}"#, "version"),
            ("no_body", r#"{"version":2}"#, "{\"version\":2}"),
            ("unknown_reply", r#"{"version":2,"result":{"type":"defrag"}}"#, "defrag"),
            // A field missing (say, renamed by a daemon built from other sources) is an error,
            // not a default.
            ("missing_field", r#"{"version":2,"result":{"type":"gc","evicted":1}}"#, "freed_bytes"),
        ];
        for (name, line, needle) in cases {
            let err = decode_response(line).expect_err(name);
            assert!(matches!(err, ResponseError::Malformed(_)), "{name}: {err:?}");
            assert!(err.to_string().contains(needle), "{name}: {err} lacks {needle:?}");
        }
    }

    #[test]
    fn bad_lines_are_named() {
        let current = format!(r#"{{"version":{PROTOCOL_VERSION},"#);
        let cases = [
            (
                "other_version",
                r#"{"version":9,"request":{"type":"stats"}}"#.to_owned(),
                "version 9",
            ),
            ("no_version", r#"{"request":{"type":"stats"}}"#.to_owned(), "version"),
            ("not_json", "stats".to_owned(), "malformed"),
            ("unknown", format!(r#"{current}"request":{{"type":"defrag"}}}}"#), "unknown request"),
            (
                "removed_fetch",
                format!(r#"{current}"request":{{"type":"fetch","path":"x"}}}}"#),
                "fetch",
            ),
            ("no_request", format!(r#"{current}"x":1}}"#), "request"),
        ];
        for (name, line, needle) in cases {
            let err = decode_request(&line).expect_err(name).to_string();
            assert!(err.contains(needle), "{name}: {err:?} lacks {needle:?}");
        }
        assert_eq!(
            decode_request(r#"{"version":7,"request":{"type":"future_thing"}}"#),
            Err(ProtocolError::Version { got: 7 })
        );
    }
}
