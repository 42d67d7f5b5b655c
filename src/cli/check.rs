//! `storefs check`: a deploy-time and monitoring check of a running daemon, one line per check
//! (`ok`, `warn` or `FAIL`), exit 0 when nothing failed and 2 when something did.
//!
//! Here, in the client, as the host sees it: the daemon answers on its control socket and is
//! serving, and its mountpoint answers statfs within `--timeout` (a hung mount is reported, not
//! waited for). In the daemon, with its own upstreams and keys (`NarCache::check`): each
//! substituter's nix-cache-info, the trusted keys against one narinfo per substituter, the cache
//! directory and its free space.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

use super::mount_probe::{self, MountState};
use super::output::Output;
use super::{EXIT_RUNTIME, EXIT_USAGE};
use crate::config::{DEFAULT_CONTROL_SOCKET, DEFAULT_MOUNTPOINT};
use crate::control::client::{Client, ClientError};
use crate::control::protocol::{CheckRow, CheckStatus, DaemonState, StatsReply};
use crate::nix::store_path::StorePath;

/// How long the daemon may take beyond the substituters' own timeouts (each substituter is
/// asked twice, all at once; then the cache directory is looked at).
const DAEMON_SLACK: Duration = Duration::from_secs(10);

/// `storefs check`.
#[derive(Debug, Args)]
#[command(after_help = "Prints one line per check: `ok`, `warn` (could not check, or looks \
    off) or `FAIL`, then what was checked and what was found.\n\nExit status: 0 nothing failed \
    (warnings allowed), 2 a check failed, 1 bad usage.\n\nExamples:\n  storefs check\n  \
    storefs check --probe-path /nix/store/…-hello-2.12 --json")]
pub struct CheckArgs {
    /// A store path every substituter has: its narinfo tests the trusted keys. Without it, a
    /// path the daemon verified before (none on a fresh cache: then the keys are not checked).
    #[arg(long, value_name = "PATH")]
    probe_path: Option<String>,
    /// Seconds the mount, and each request to a substituter, may take to answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// The mount to check [default: the daemon's mountpoint; /nix/store when the daemon does
    /// not answer].
    #[arg(long, value_name = "PATH")]
    mountpoint: Option<PathBuf>,
    /// Print one JSON object (`ok` and the `checks`) instead of lines.
    #[arg(long)]
    json: bool,
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    control_socket: PathBuf,
}

/// What `--json` prints.
#[derive(Serialize)]
struct JsonReport<'a> {
    ok: bool,
    checks: &'a [CheckRow],
}

/// The rows so far, printed as they come unless the output is JSON.
struct Report {
    o: Output,
    json: bool,
    rows: Vec<CheckRow>,
}

impl Report {
    fn push(
        &mut self,
        status: CheckStatus,
        subject: String,
        detail: String,
    ) -> std::io::Result<()> {
        self.add(CheckRow { status, subject, detail })
    }

    fn add(&mut self, row: CheckRow) -> std::io::Result<()> {
        if !self.json {
            let label = match row.status {
                CheckStatus::Ok => "ok",
                CheckStatus::Warn => "warn",
                CheckStatus::Fail => "FAIL",
            };
            self.o.out(format_args!("{label:<6}{}: {}\n", row.subject, row.detail))?;
        }
        self.rows.push(row);
        Ok(())
    }

    fn failed(&self) -> bool {
        self.rows.iter().any(|r| r.status == CheckStatus::Fail)
    }
}

/// Runs `storefs check`.
pub fn run(args: &CheckArgs) -> ExitCode {
    let mut report = Report { o: Output::new(), json: args.json, rows: Vec::new() };
    if let Some(p) = &args.probe_path {
        if let Err(e) = StorePath::from_user_arg(p) {
            report.o.note(format_args!("storefs: --probe-path {p:?} is not a store path: {e}\n"));
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let done = checks(args, &mut report).and_then(|()| {
        if !report.json {
            return Ok(());
        }
        let json = JsonReport { ok: !report.failed(), checks: &report.rows };
        let text = serde_json::to_string(&json).map_err(std::io::Error::other)?;
        report.o.out(format_args!("{text}\n"))
    });
    match done {
        Ok(()) if report.failed() => ExitCode::from(EXIT_RUNTIME),
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            report.o.note(format_args!("storefs: cannot write: {err}\n"));
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Every check, in order: the daemon, its mount, then what the daemon checks itself.
fn checks(args: &CheckArgs, report: &mut Report) -> std::io::Result<()> {
    let timeout = Duration::from_secs(args.timeout);
    let socket = args.control_socket.display().to_string();
    let daemon = format!("daemon {socket}");
    let (client, mountpoint) = match ask_status(&args.control_socket, timeout) {
        Ok((client, stats)) => {
            let s = &stats.status;
            let facts = format!(
                "storefs {} (pid {}) {} for {:.0} s, cache {}",
                s.version, s.pid, s.state, s.uptime_seconds, s.cache_dir
            );
            let status =
                if s.state == DaemonState::Serving { CheckStatus::Ok } else { CheckStatus::Fail };
            report.push(status, daemon.clone(), facts)?;
            (Some(client), args.mountpoint.clone().unwrap_or_else(|| s.mountpoint.clone().into()))
        }
        Err(err) => {
            report.push(CheckStatus::Fail, daemon.clone(), err)?;
            let fallback = || PathBuf::from(DEFAULT_MOUNTPOINT);
            (None, args.mountpoint.clone().unwrap_or_else(fallback))
        }
    };
    report.add(mount_row(&mountpoint, timeout))?;
    let Some(client) = client else { return Ok(()) };
    let asked = client
        .with_timeout(Some(timeout * 2 + DAEMON_SLACK))
        .and_then(|mut c| c.check(args.probe_path.clone(), timeout));
    match asked {
        Ok(rows) => rows.into_iter().try_for_each(|row| report.add(row)),
        Err(err) => {
            let why = say(err, timeout * 2 + DAEMON_SLACK);
            report.push(CheckStatus::Fail, daemon, format!("check failed: {why}"))
        }
    }
}

/// Connects and asks for the status, waiting at most `timeout` for the answer.
fn ask_status(socket: &Path, timeout: Duration) -> Result<(Client, StatsReply), String> {
    let mut client = Client::connect(socket)
        .and_then(|c| c.with_timeout(Some(timeout)))
        .map_err(|e| say(e, timeout))?;
    let stats = client.stats().map_err(|e| say(e, timeout))?;
    Ok((client, stats))
}

/// The error's text; a read that timed out is said as such (not `Resource temporarily
/// unavailable`).
fn say(err: ClientError, waited: Duration) -> String {
    match err {
        ClientError::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            format!("no answer within {} s: the daemon hangs", waited.as_secs())
        }
        other => other.to_string(),
    }
}

/// `mount <path>`: whether the mount answers, as this host sees it.
fn mount_row(path: &Path, timeout: Duration) -> CheckRow {
    let subject = format!("mount {}", path.display());
    let (status, detail) = if path.as_os_str().is_empty() {
        (CheckStatus::Fail, "the daemon did not say where it is mounted; pass --mountpoint".into())
    } else {
        match mount_probe::probe(path, timeout) {
            MountState::Answers(took) => {
                (CheckStatus::Ok, format!("answers (statfs took {} ms)", took.as_millis()))
            }
            MountState::NotFuse { fs_type } => (
                CheckStatus::Fail,
                format!(
                    "not mounted as this host sees it: the filesystem there is not FUSE \
                     (type {fs_type:#x}); is storefs mounted in another mount namespace?"
                ),
            ),
            MountState::Dead => (
                CheckStatus::Fail,
                format!(
                    "the mount is dead (transport endpoint is not connected): its daemon is \
                     gone; restart storefs (it detaches its own dead mount), or umount -l {}",
                    path.display()
                ),
            ),
            MountState::Failed(err) => (CheckStatus::Fail, format!("statfs: {err}")),
            MountState::Hung => (
                CheckStatus::Fail,
                format!("no answer within {} s: the mount hangs", timeout.as_secs()),
            ),
        }
    };
    CheckRow { status, subject, detail }
}
