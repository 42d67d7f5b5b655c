//! Cache commands that talk to the running daemon: prefetch, pin, unpin, evict, gc, verify and
//! export-db. Each sends requests over the control socket and prints what happened; a command
//! that failed for some path exits non-zero and names each such path.

use std::collections::{HashSet, VecDeque};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;

use clap::Args;
use serde_json::Value;

use super::{EXIT_RUNTIME, EXIT_USAGE};
use crate::config::{DEFAULT_CONTROL_SOCKET, parse_size};
use crate::control::client::{Client, ClientError};
use crate::control::protocol::Request;
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

/// Checks path syntax here, so a typo is a usage error (exit 1) naming it, not a daemon error.
fn check_paths(paths: &[String]) -> Result<(), ExitCode> {
    for p in paths {
        if let Err(e) = StorePath::from_user_arg(p) {
            eprintln!("storefs: {p:?} is not a store path: {e}");
            return Err(ExitCode::from(EXIT_USAGE));
        }
    }
    Ok(())
}

/// A connection for work that may take long (downloads, re-hashing): no answer timeout.
fn connect(socket: &std::path::Path) -> Result<Client, ClientError> {
    Client::connect(socket)?.with_timeout(None)
}

fn ask(socket: &SocketArg, request: &Request) -> Result<Value, ClientError> {
    connect(&socket.control_socket)?.request(request)
}

fn failed(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("storefs: {err}");
    ExitCode::from(EXIT_RUNTIME)
}

/// Prints per-path `results` rows; returns how many failed.
fn print_results(verb: &str, unchanged: &str, value: &Value) -> usize {
    let mut failures = 0;
    for row in value["results"].as_array().into_iter().flatten() {
        let path = row["path"].as_str().unwrap_or("?");
        if row["ok"].as_bool() == Some(true) {
            let what = if row["changed"].as_bool() == Some(true) { verb } else { unchanged };
            println!("{what} {path}");
        } else {
            failures += 1;
            eprintln!("storefs: {path}: {}", row["error"].as_str().unwrap_or("failed"));
        }
    }
    failures
}

/// Expands `paths` to their closure through the daemon when asked to.
fn expand(socket: &SocketArg, paths: &[String], closure: bool) -> Result<Vec<String>, ClientError> {
    if !closure {
        return Ok(paths.to_vec());
    }
    let value = ask(socket, &Request::Closure { paths: paths.to_vec() })?;
    Ok(value["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .map(String::from)
        .collect())
}

/// `storefs prefetch`: fetches through the daemon, `--jobs` at a time, walking references itself
/// so it can show progress; a bar on a terminal, one line per path otherwise.
pub fn prefetch(args: &PrefetchArgs) -> ExitCode {
    if let Err(code) = check_paths(&args.paths.paths) {
        return code;
    }
    if args.jobs == 0 {
        eprintln!("storefs: --jobs must be at least 1");
        return ExitCode::from(EXIT_USAGE);
    }
    let tty = std::io::stderr().is_terminal();
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<String> =
        args.paths.paths.iter().filter(|p| seen.insert((*p).clone())).cloned().collect();
    let (tx, rx) = mpsc::channel::<(String, Result<Value, ClientError>)>();
    let (mut running, mut done, mut failures) = (0usize, 0usize, Vec::new());
    loop {
        while running < args.jobs {
            let Some(path) = queue.pop_front() else { break };
            let (tx, socket) = (tx.clone(), args.socket.control_socket.clone());
            std::thread::spawn(move || {
                let result = connect(&socket)
                    .and_then(|mut c| c.request(&Request::Fetch { path: path.clone() }));
                let _ = tx.send((path, result));
            });
            running += 1;
        }
        if running == 0 {
            break;
        }
        let Ok((path, result)) = rx.recv() else { break };
        running -= 1;
        done += 1;
        match result {
            Ok(value) => {
                if args.closure {
                    for r in value["references"].as_array().into_iter().flatten() {
                        if let Some(r) = r.as_str().filter(|r| seen.insert((*r).to_owned())) {
                            queue.push_back(r.to_owned());
                        }
                    }
                }
                if !tty {
                    println!("fetched {path}");
                }
            }
            Err(err) => {
                if tty {
                    eprint!("\r\x1b[K");
                }
                eprintln!("storefs: {path}: {err}");
                failures.push(path.clone());
            }
        }
        if tty {
            let total = done + running + queue.len();
            let width = 30;
            let filled = width * done / total.max(1);
            let name = path.rsplit('/').next().unwrap_or(&path);
            eprint!(
                "\r\x1b[K[{}{}] {done}/{total} {name}",
                "=".repeat(filled),
                " ".repeat(width - filled)
            );
            let _ = std::io::stderr().flush();
        }
    }
    if tty {
        eprintln!();
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        eprintln!("storefs: {} of {done} paths failed: {}", failures.len(), failures.join(" "));
        ExitCode::from(EXIT_RUNTIME)
    }
}

/// `storefs pin` (or `unpin` with `pin == false`).
pub fn pin(args: &PinArgs, pin: bool) -> ExitCode {
    if let Err(code) = check_paths(&args.paths.paths) {
        return code;
    }
    let run = || -> Result<usize, ClientError> {
        let paths = expand(&args.socket, &args.paths.paths, args.closure)?;
        let value = if pin {
            ask(&args.socket, &Request::Pin { paths })?
        } else {
            ask(&args.socket, &Request::Unpin { paths })?
        };
        let (verb, unchanged) =
            if pin { ("pinned", "pinned") } else { ("unpinned", "not pinned:") };
        Ok(print_results(verb, unchanged, &value))
    };
    match run() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_RUNTIME),
        Err(err) => failed(err),
    }
}

/// `storefs evict`.
pub fn evict(args: &EvictArgs) -> ExitCode {
    if let Err(code) = check_paths(&args.paths.paths) {
        return code;
    }
    match ask(&args.socket, &Request::Evict { paths: args.paths.paths.clone() }) {
        Ok(value) if print_results("evicted", "not cached:", &value) == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(EXIT_RUNTIME),
        Err(err) => failed(err),
    }
}

/// `storefs gc`.
pub fn gc(args: &GcArgs) -> ExitCode {
    let to_bytes = match args.to.as_deref().map(parse_size).transpose() {
        Ok(t) => t,
        Err(err) => {
            eprintln!("storefs: --to: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match ask(&args.socket, &Request::Gc { to_bytes }) {
        Ok(v) => {
            println!(
                "evicted {} paths ({} bytes); the cache holds {} bytes; {} pinned paths kept",
                v["evicted"], v["freed_bytes"], v["used_bytes"], v["pinned_kept"]
            );
            ExitCode::SUCCESS
        }
        Err(err) => failed(err),
    }
}

/// `storefs verify`.
pub fn verify(args: &VerifyArgs) -> ExitCode {
    if let Err(code) = check_paths(&args.paths) {
        return code;
    }
    match ask(&args.socket, &Request::Verify { paths: args.paths.clone() }) {
        Ok(v) => {
            let list = |k: &str| v[k].as_array().cloned().unwrap_or_default();
            for p in list("missing") {
                println!("not cached {}", p.as_str().unwrap_or("?"));
            }
            let corrupt = list("corrupt");
            for c in &corrupt {
                let (p, why) =
                    (c["path"].as_str().unwrap_or("?"), c["reason"].as_str().unwrap_or(""));
                eprintln!("storefs: corrupt, evicted: {p}: {why}");
            }
            println!(
                "{} ok, {} corrupt, {} not cached",
                list("ok").len(),
                corrupt.len(),
                list("missing").len()
            );
            if corrupt.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EXIT_CORRUPT) }
        }
        Err(err) => failed(err),
    }
}

/// `storefs export-db`.
pub fn export_db(args: &ExportDbArgs) -> ExitCode {
    if let Err(code) = check_paths(&args.paths.paths) {
        return code;
    }
    let request = Request::ExportDb { paths: args.paths.paths.clone(), closure: args.closure };
    match ask(&args.socket, &request) {
        Ok(v) => {
            print!("{}", v["text"].as_str().unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(err) => failed(err),
    }
}
