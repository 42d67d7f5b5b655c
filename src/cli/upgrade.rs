//! `storefs upgrade [--binary PATH]`: the running daemon hands its live mount over to a new
//! program (the same pid, no unmount, no second INIT), and this command waits until the new
//! program answers. For daemons without systemd's fd store: by hand, or as PID 1 of a container.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;

use super::EXIT_RUNTIME;
use super::ops::SocketArg;
use crate::control::client::{Client, ClientError};

/// How long the new program may take to answer.
const ANSWER_DEADLINE: Duration = Duration::from_secs(60);
/// Pause between two questions to the new program.
const POLL: Duration = Duration::from_millis(20);

/// `storefs upgrade`.
#[derive(Debug, Args)]
#[command(after_help = "The daemon stops at a request boundary, keeps its mount, and execve()s \
    the program with its original arguments, passing the /dev/fuse descriptor and its state on. \
    Readers see no error. If the program cannot be run, the old daemon serves on and this \
    command fails (exit 2).")]
pub struct UpgradeArgs {
    /// The program to run [default: the path the daemon was started from, which a package
    /// upgrade replaced with the new version].
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,
    #[command(flatten)]
    socket: SocketArg,
}

/// Runs `storefs upgrade`.
pub fn run(args: &UpgradeArgs) -> ExitCode {
    match upgrade(args) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("storefs: upgrade: {err}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn upgrade(args: &UpgradeArgs) -> Result<String, ClientError> {
    let path = &args.socket.control_socket;
    let old = Client::connect(path)?.stats()?.status;
    // The daemon's working directory may differ from ours.
    let binary = match &args.binary {
        Some(b) => Some(std::path::absolute(b)?.to_string_lossy().into_owned()),
        None => None,
    };
    let asked = Instant::now();
    Client::connect(path)?.with_timeout(None)?.upgrade(binary)?;
    // The same pid with an uptime shorter than the wait is the new program.
    let deadline = asked + ANSWER_DEADLINE;
    loop {
        let answer = Client::connect(path).and_then(|mut c| c.stats());
        match answer {
            Ok(s)
                if s.status.pid == old.pid
                    && s.status.uptime_seconds < asked.elapsed().as_secs_f64() =>
            {
                return Ok(format!(
                    "upgraded: pid {} now runs storefs {} (was {}), answering {} ms after the \
                     request",
                    s.status.pid,
                    s.status.version,
                    old.version,
                    asked.elapsed().as_millis()
                ));
            }
            Ok(s) if s.status.pid != old.pid => {
                return Err(ClientError::BadResponse(format!(
                    "another daemon (pid {}) answers; pid {} is gone",
                    s.status.pid, old.pid
                )));
            }
            _ if Instant::now() > deadline => {
                return Err(ClientError::BadResponse(format!(
                    "the new program did not answer within {} s; see the daemon's log",
                    ANSWER_DEADLINE.as_secs()
                )));
            }
            _ => std::thread::sleep(POLL),
        }
    }
}
