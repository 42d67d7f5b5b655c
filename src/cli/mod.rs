//! The command line: clap definitions and dispatch. Below `cli/`, only `config::Settings` knows
//! clap (it derives the `mount` flags); nothing else sees clap types.

pub mod check;
pub mod index;
pub mod mount;
pub mod mount_probe;
pub mod ops;
pub mod output;
pub mod stats;
pub mod upgrade;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use crate::daemon::{EXIT_OK, EXIT_RUNTIME, EXIT_USAGE};

/// storefs: a lazy, verified, read-only /nix/store that fills itself from Nix binary caches.
///
/// A path under the mount is fetched from the substituters the first time anyone touches it:
/// narinfo, signature check, NAR download, hash check, unpack into the local disk cache. Nothing
/// unverified is ever visible. Exit codes: 0 ok, 1 bad usage or configuration, 2 runtime failure,
/// 3 `storefs verify` found corrupt entries (and evicted them). `storefs check` exits 2 when a
/// check failed.
#[derive(Debug, Parser)]
#[command(name = "storefs", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter, e.g. `info`, `debug`, `storefs=debug` (RUST_LOG syntax).
    #[arg(long, global = true, env = "STOREFS_LOG", default_value = "info")]
    pub log: String,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Mount the store and serve it in the foreground until SIGINT or SIGTERM.
    Mount(Box<mount::MountArgs>),
    /// Show the running daemon (version, state, uptime) and what it did: lookups, hit rate,
    /// downloads, cache use, upstreams.
    Stats(stats::StatsArgs),
    /// Fetch store paths (optionally their closures) into the cache ahead of use.
    Prefetch(ops::PrefetchArgs),
    /// Keep store paths (optionally their closures) in the cache: pinned paths are never evicted.
    Pin(ops::PinArgs),
    /// Let pinned store paths be evicted again.
    Unpin(ops::PinArgs),
    /// List the pinned store paths, one per line.
    Pins(ops::PinsArgs),
    /// Remove store paths from the cache now (a later access fetches them again).
    Evict(ops::EvictArgs),
    /// Evict least recently used unpinned paths, down to a size or entirely.
    Gc(ops::GcArgs),
    /// Re-hash cached paths against their signed NarHash; evict any that do not match.
    Verify(ops::VerifyArgs),
    /// Print registrations of cached paths for `nix-store --load-db` (Nix in job containers).
    ExportDb(ops::ExportDbArgs),
    /// Check the running daemon: its mount answers, each substituter answers, the trusted keys
    /// verify what the caches sign, the cache directory is sane. One line per check.
    Check(check::CheckArgs),
    /// Hand the live mount over to a new storefs program without unmounting (after a package
    /// upgrade, or without systemd): readers see no error.
    Upgrade(upgrade::UpgradeArgs),
    /// Prepare a binary cache directory for file-level laziness: re-encode each NAR as
    /// seekable zstd and write a signed per-path index beside its narinfo.
    Index(index::IndexArgs),
}

/// Prints a failure on stderr once, as `storefs: <what failed>: <cause>: <its cause>...`. A cause
/// whose text is already in the message (an error that prints its source and also returns it
/// as its source) is left out, so nothing is said twice.
pub fn print_error(err: &anyhow::Error) {
    eprintln!("storefs: {}", error_chain(err));
}

/// `err` and its causes joined with `: `, each text at most once.
pub fn error_chain(err: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in err.chain().map(ToString::to_string) {
        if text.is_empty() {
            text = cause;
        } else if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Runs the parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    crate::logging::init(&cli.log);
    match cli.command {
        Command::Mount(args) => mount::run(&args),
        Command::Stats(args) => stats::run(&args),
        Command::Prefetch(args) => ops::prefetch(&args),
        Command::Pin(args) => ops::pin(&args, true),
        Command::Unpin(args) => ops::pin(&args, false),
        Command::Pins(args) => ops::pins(&args),
        Command::Evict(args) => ops::evict(&args),
        Command::Gc(args) => ops::gc(&args),
        Command::Verify(args) => ops::verify(&args),
        Command::ExportDb(args) => ops::export_db(&args),
        Command::Check(args) => check::run(&args),
        Command::Upgrade(args) => upgrade::run(&args),
        Command::Index(args) => index::run(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[test]
    fn each_cause_is_printed_once() {
        let os = || std::io::Error::from_raw_os_error(libc::EPERM);
        let repeated = anyhow::Error::new(os()).context(format!("mount(2) failed: {}", os()));
        let text = error_chain(&repeated.context("cannot mount /nix/store"));
        assert_eq!(text.matches("(os error 1)").count(), 1, "{text}");
        assert!(text.starts_with("cannot mount /nix/store: mount(2) failed: "), "{text}");
        let plain = anyhow::Error::new(os()).context("cannot open the control socket");
        assert!(error_chain(&plain).ends_with("socket: Operation not permitted (os error 1)"));
    }
}
