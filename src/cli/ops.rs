//! Cache commands that talk to the running daemon: prefetch, pin, unpin, pins, evict, gc, verify
//! and export-db. Each sends requests over the control socket and prints what happened; a command
//! that failed for some path exits non-zero and names each such path. Output goes through
//! [`Output`], so a closed pipe ends a command quietly.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::output::Output;
use super::{EXIT_RUNTIME, EXIT_USAGE};
use crate::config::{DEFAULT_CONTROL_SOCKET, parse_size};
use crate::control::client::{Client, ClientError};
use crate::control::protocol::{PathResult, Progress};
use crate::nix::store_path::StorePath;

/// Exit code of `storefs verify` when corrupt entries were found (and evicted).
pub const EXIT_CORRUPT: u8 = 3;

/// Where the daemon listens.
#[derive(Debug, Args)]
pub struct SocketArg {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONTROL_SOCKET)]
    pub control_socket: PathBuf,
}

/// Store paths, as `/nix/store/<hash>-<name>` (or a file below it) or `<hash>-<name>`.
#[derive(Debug, Args)]
pub struct PathsArg {
    /// Store paths or basenames.
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<String>,
}

/// `storefs prefetch`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  storefs prefetch /nix/store/…-python3-3.12 --closure\n  \
    storefs prefetch $(cat paths.txt) --jobs 16")]
pub struct PrefetchArgs {
    #[command(flatten)]
    paths: PathsArg,
    /// Also everything the paths reference, recursively.
    #[arg(long)]
    closure: bool,
    /// Paths fetched at once.
    #[arg(long, value_name = "N", default_value_t = 8)]
    jobs: usize,
    #[command(flatten)]
    socket: SocketArg,
}

/// `storefs pin` / `storefs unpin`.
#[derive(Debug, Args)]
pub struct PinArgs {
    #[command(flatten)]
    paths: PathsArg,
    /// Also everything the paths reference, recursively.
    #[arg(long)]
    closure: bool,
    #[command(flatten)]
    socket: SocketArg,
}

/// `storefs pins`.
#[derive(Debug, Args)]
#[command(after_help = "Prints every pinned store path, sorted, one per line (pinned paths that \
    `verify` evicted included: they are fetched again on their next use).\n\nExample:\n  \
    storefs pins | xargs -r storefs unpin")]
pub struct PinsArgs {
    #[command(flatten)]
    socket: SocketArg,
}

/// `storefs evict`.
#[derive(Debug, Args)]
pub struct EvictArgs {
    #[command(flatten)]
    paths: PathsArg,
    #[command(flatten)]
    socket: SocketArg,
}

/// `storefs gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Evict least recently used unpinned paths until the cache holds at most SIZE (e.g. 5G);
    /// without it, every unpinned path is evicted.
    #[arg(long, value_name = "SIZE")]
    to: Option<String>,
    #[command(flatten)]
    socket: SocketArg,
}

/// `storefs verify`.
#[derive(Debug, Args)]
#[command(after_help = "Exit status: 0 every entry checked out, 3 corrupt entries were found \
    (and evicted; the next read fetches them again), 2 the daemon could not be asked.")]
pub struct VerifyArgs {
    /// Store paths to check; every cached path when none is given.
    #[arg(value_name = "PATH")]
    paths: Vec<String>,
    #[command(flatten)]
    socket: SocketArg,
}

/// `storefs export-db`.
#[derive(Debug, Args)]
#[command(after_help = "Example, in a job container whose own Nix should see the mounted paths \
    as valid:\n  storefs export-db --closure /nix/store/…-hello | nix-store --load-db")]
pub struct ExportDbArgs {
    #[command(flatten)]
    paths: PathsArg,
    /// Also everything the paths reference, recursively (nix-store --load-db needs a closed set).
    #[arg(long)]
    closure: bool,
    #[command(flatten)]
    socket: SocketArg,
}

/// Why a command could not finish.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The daemon could not be asked, or answered an error.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// stdout failed for another reason than a closed pipe.
    #[error("cannot write: {0}")]
    Output(#[from] std::io::Error),
}

/// The exit code of a command's outcome; a failure is named on stderr (exit 2).
fn finish(o: &Output, outcome: Result<ExitCode, Failure>) -> ExitCode {
    outcome.unwrap_or_else(|err| {
        o.note(format_args!("storefs: {err}\n"));
        ExitCode::from(EXIT_RUNTIME)
    })
}

/// Checks path syntax here, so a typo is a usage error (exit 1) naming it, not a daemon error.
fn check_paths(o: &Output, paths: &[String]) -> Result<(), ExitCode> {
    for p in paths {
        if let Err(e) = StorePath::from_user_arg(p) {
            o.note(format_args!("storefs: {p:?} is not a store path: {e}\n"));
            return Err(ExitCode::from(EXIT_USAGE));
        }
    }
    Ok(())
}

/// A connection for work that may take long (downloads, re-hashing): no answer timeout.
fn connect(socket: &SocketArg) -> Result<Client, ClientError> {
    Client::connect(&socket.control_socket)?.with_timeout(None)
}

/// Prints per-path rows: `<verb> <path>` (or `<unchanged> <path>`) on stdout for a success,
/// `storefs: <path>: <error>` on stderr for a failure; returns how many failed.
fn print_results(
    o: &mut Output,
    verb: &str,
    unchanged: &str,
    rows: &[PathResult],
) -> std::io::Result<usize> {
    let mut failures = 0;
    for row in rows {
        match &row.error {
            None => {
                let what = if row.changed { verb } else { unchanged };
                o.out(format_args!("{what} {}\n", row.path))?;
            }
            Some(error) => {
                failures += 1;
                o.note(format_args!("storefs: {}: {error}\n", row.path));
            }
        }
    }
    Ok(failures)
}

/// 0 when nothing failed, else 2.
fn code(failures: usize) -> ExitCode {
    if failures == 0 { ExitCode::SUCCESS } else { ExitCode::from(EXIT_RUNTIME) }
}

/// `storefs prefetch`: one request; the daemon walks the closure (`NarCache::prefetch`),
/// `--jobs` at a time, and reports each path as it finishes: a bar on a terminal, one line per
/// path otherwise.
pub fn prefetch(args: &PrefetchArgs) -> ExitCode {
    let mut o = Output::new();
    if let Err(code) = check_paths(&o, &args.paths.paths) {
        return code;
    }
    if args.jobs == 0 {
        o.note(format_args!("storefs: --jobs must be at least 1, got 0\n"));
        return ExitCode::from(EXIT_USAGE);
    }
    let outcome = run_prefetch(args, &mut o);
    finish(&o, outcome)
}

fn run_prefetch(args: &PrefetchArgs, o: &mut Output) -> Result<ExitCode, Failure> {
    let tty = std::io::stderr().is_terminal();
    let mut write_error = None;
    let rows = connect(&args.socket)?.prefetch(
        args.paths.paths.clone(),
        args.closure,
        args.jobs,
        |step| {
            if let Err(err) = show_step(o, tty, &step) {
                write_error.get_or_insert(err);
            }
        },
    );
    if tty {
        o.note(format_args!("\n"));
    }
    let rows = rows?;
    if let Some(err) = write_error {
        return Err(err.into());
    }
    let failed: Vec<&str> =
        rows.iter().filter(|r| r.error.is_some()).map(|r| r.path.as_str()).collect();
    if !failed.is_empty() {
        o.note(format_args!(
            "storefs: {} of {} paths failed: {}\n",
            failed.len(),
            rows.len(),
            failed.join(" ")
        ));
    }
    Ok(code(failed.len()))
}

/// One finished path of a prefetch: a failure on stderr; on a terminal the bar is redrawn,
/// otherwise a `fetched <path>` line.
fn show_step(o: &mut Output, tty: bool, step: &Progress) -> std::io::Result<()> {
    if let Some(err) = &step.error {
        if tty {
            o.note(format_args!("\r\x1b[K"));
        }
        o.note(format_args!("storefs: {}: {err}\n", step.path));
    } else if !tty {
        o.out(format_args!("fetched {}\n", step.path))?;
    }
    if tty {
        let width: usize = 30;
        // Counts from the daemon: bounded here, whatever they are.
        let filled = (width.saturating_mul(step.done) / step.total.max(1)).min(width);
        let name = step.path.rsplit('/').next().unwrap_or(&step.path);
        o.note(format_args!(
            "\r\x1b[K[{}{}] {}/{} {name}",
            "=".repeat(filled),
            " ".repeat(width - filled),
            step.done,
            step.total
        ));
    }
    Ok(())
}

/// `storefs pin` (or `unpin` with `pin == false`).
pub fn pin(args: &PinArgs, pin: bool) -> ExitCode {
    let mut o = Output::new();
    if let Err(code) = check_paths(&o, &args.paths.paths) {
        return code;
    }
    let outcome = (|| -> Result<ExitCode, Failure> {
        let mut client = connect(&args.socket)?;
        let mut paths = args.paths.paths.clone();
        if args.closure {
            paths = client.closure(paths)?;
        }
        let failures = if pin {
            print_results(&mut o, "pinned", "pinned", &client.pin(paths)?)?
        } else {
            print_results(&mut o, "unpinned", "not pinned:", &client.unpin(paths)?)?
        };
        Ok(code(failures))
    })();
    finish(&o, outcome)
}

/// `storefs pins`.
pub fn pins(args: &PinsArgs) -> ExitCode {
    let mut o = Output::new();
    let outcome = (|| -> Result<ExitCode, Failure> {
        for path in connect(&args.socket)?.pins()? {
            o.out(format_args!("{path}\n"))?;
        }
        Ok(ExitCode::SUCCESS)
    })();
    finish(&o, outcome)
}

/// `storefs evict`.
pub fn evict(args: &EvictArgs) -> ExitCode {
    let mut o = Output::new();
    if let Err(code) = check_paths(&o, &args.paths.paths) {
        return code;
    }
    let outcome = (|| -> Result<ExitCode, Failure> {
        let rows = connect(&args.socket)?.evict(args.paths.paths.clone())?;
        Ok(code(print_results(&mut o, "evicted", "not cached:", &rows)?))
    })();
    finish(&o, outcome)
}

/// `storefs gc`.
pub fn gc(args: &GcArgs) -> ExitCode {
    let mut o = Output::new();
    let to_bytes = match args.to.as_deref().map(parse_size).transpose() {
        Ok(t) => t,
        Err(err) => {
            o.note(format_args!("storefs: --to: {err}\n"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let outcome = (|| -> Result<ExitCode, Failure> {
        let r = connect(&args.socket)?.gc(to_bytes)?;
        o.out(format_args!(
            "evicted {} paths ({} bytes); the cache holds {} bytes; {} pinned paths kept\n",
            r.evicted, r.freed_bytes, r.used_bytes, r.pinned_kept
        ))?;
        Ok(ExitCode::SUCCESS)
    })();
    finish(&o, outcome)
}

/// `storefs verify`: exit 3 when corrupt entries were found.
pub fn verify(args: &VerifyArgs) -> ExitCode {
    let mut o = Output::new();
    if let Err(code) = check_paths(&o, &args.paths) {
        return code;
    }
    let outcome = (|| -> Result<ExitCode, Failure> {
        let r = connect(&args.socket)?.verify(args.paths.clone())?;
        for p in &r.missing {
            o.out(format_args!("not cached {p}\n"))?;
        }
        for c in &r.corrupt {
            o.note(format_args!("storefs: corrupt, evicted: {}: {}\n", c.path, c.reason));
        }
        o.out(format_args!(
            "{} ok, {} corrupt, {} not cached\n",
            r.ok.len(),
            r.corrupt.len(),
            r.missing.len()
        ))?;
        Ok(if r.corrupt.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_CORRUPT) })
    })();
    finish(&o, outcome)
}

/// `storefs export-db`.
pub fn export_db(args: &ExportDbArgs) -> ExitCode {
    let mut o = Output::new();
    if let Err(code) = check_paths(&o, &args.paths.paths) {
        return code;
    }
    let outcome = (|| -> Result<ExitCode, Failure> {
        let text = connect(&args.socket)?.export_db(args.paths.paths.clone(), args.closure)?;
        o.out(format_args!("{text}"))?;
        Ok(ExitCode::SUCCESS)
    })();
    finish(&o, outcome)
}
