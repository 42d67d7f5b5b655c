//! `storefs mount [MOUNTPOINT]`: resolve the configuration, then run the daemon in the foreground.

use std::process::ExitCode;

use clap::Args;
use tracing::error;

use super::{EXIT_RUNTIME, EXIT_USAGE};
use crate::config::{Config, Settings};
use crate::daemon::handover::Launch;
use crate::daemon::relaunch::Relaunch;
use crate::daemon::{DaemonError, Stop};
use crate::notify::{listen, slots};

/// Arguments of `storefs mount`: the [`Settings`] as typed, every option `None` when not given,
/// so that the configuration file can fill it; `[default: …]` in the help is the built-in
/// default (see `help_states_the_built_in_defaults`).
#[derive(Debug, Args)]
#[command(
    after_help = "Precedence: flags, then the --config file, then nix.conf (substituters, keys, \
    netrc-file), then the defaults shown. See docs/CONFIGURATION.md.\n\n\
    Examples:\n  \
    storefs mount                 # /nix/store, caches from nix.conf, else cache.nixos.org\n  \
    storefs mount --config /etc/storefs/storefs.toml\n  \
    storefs mount /nix/store --max-size 20G --min-free 10% --allow-other\n  \
    storefs mount /tmp/store --cache-dir /tmp/cache \\\n    \
    --substituter http://127.0.0.1:8080/cache --trusted-public-key mykey-1:BASE64"
)]
pub struct MountArgs {
    /// Every setting, one field each.
    #[command(flatten)]
    pub settings: Settings,
}

/// How long tasks may go on after the daemon stopped before the process exits anyway.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs `storefs mount`.
pub fn run(args: &MountArgs) -> ExitCode {
    let config = match Config::resolve(&args.settings) {
        Ok(c) => c,
        Err(err) => {
            eprintln!("storefs: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Before any thread exists: this reads and unsets $LISTEN_*, and claims descriptors 3.. for
    // passing the mount on later.
    let relaunch = Relaunch::from_start();
    let inherited = match listen::take_from_env() {
        Ok(inherited) => inherited,
        Err(err) => {
            eprintln!("storefs: descriptors passed at start: {err}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(err) = slots::claim() {
        eprintln!("storefs: cannot reserve descriptors for a handover: {err}");
        return ExitCode::from(EXIT_RUNTIME);
    }
    let launch = Launch { inherited, relaunch };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("storefs: cannot start the async runtime: {err}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let result = runtime.block_on(crate::daemon::run(config, launch, shutdown_signal()));
    // A download still running holds a blocking thread until its body ends (minutes for a
    // large NAR): the daemon has unmounted and closed the cache, so it does not wait for it
    // (its staging directory is emptied at the next start).
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let (DaemonError::Setup(cause) | DaemonError::Runtime(cause)) = &err;
            super::print_error(cause);
            ExitCode::from(err.exit_code())
        }
    }
}

/// Resolves on SIGINT or SIGTERM, saying which.
async fn shutdown_signal() -> Stop {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        error!("cannot install signal handlers; stop with umount");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM: stopping");
            Stop::Terminate
        }
        _ = int.recv() => {
            tracing::info!("SIGINT: unmounting");
            Stop::Interrupt
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use crate::cli::{Cli, Command};
    use crate::config::*;

    /// The settings `storefs mount ARGS...` gives.
    fn flags(args: &[&str]) -> Result<Settings, clap::Error> {
        let cli = Cli::try_parse_from(["storefs", "mount"].iter().chain(args))?;
        let Command::Mount(mount) = cli.command else { panic!("not mount: {cli:?}") };
        Ok(mount.settings)
    }

    /// A flag not given is `None`, so the file can fill it; a switch given is `Some(true)`.
    #[test]
    fn flags_not_given_are_none() {
        assert_eq!(flags(&[]).unwrap(), Settings::default());
        let given = flags(&[
            "/mnt",
            "--allow-other",
            "--substituter=https://a",
            "--substituter=https://b",
            "--bearer-token-file=https://a=/t",
            "--max-size=1G",
        ])
        .unwrap();
        assert_eq!(given.mountpoint, Some("/mnt".into()));
        assert_eq!(given.allow_other, Some(true));
        assert_eq!(given.passthrough, None);
        assert_eq!(given.substituters, Some(vec!["https://a".into(), "https://b".into()]));
        assert_eq!(given.bearer_token_files, Some(vec![TokenFile::Typed("https://a=/t".into())]));
        assert_eq!(given.max_size.as_deref(), Some("1G"));
        assert!(flags(&["--allow-other=false"]).is_err(), "a switch takes no value");
    }

    /// The `[default: …]` texts are written by hand (clap's own would hide whether a flag was
    /// given); this keeps them equal to the constants.
    #[test]
    fn help_states_the_built_in_defaults() {
        let secs = |d: std::time::Duration| format!("[default: {}]", d.as_secs());
        let crate::cache::MinFree::Percent(min_free) = DEFAULT_MIN_FREE else {
            panic!("default is a percent")
        };
        let cases = [
            ("mountpoint", format!("[default: {DEFAULT_MOUNTPOINT}]")),
            ("config_file", format!("[default: {DEFAULT_CONFIG_FILE}, if it exists]")),
            ("substituters", DEFAULT_SUBSTITUTER.to_owned()),
            ("nix_conf", format!("[default: {DEFAULT_NIX_CONF}, if it exists]")),
            ("netrc_file", format!("else {DEFAULT_NETRC_FILE}, if it exists]")),
            ("connect_timeout", secs(DEFAULT_CONNECT_TIMEOUT)),
            ("stall_timeout", secs(DEFAULT_STALL_TIMEOUT)),
            ("upstream_backoff", secs(DEFAULT_UPSTREAM_BACKOFF)),
            ("negative_ttl", secs(DEFAULT_NEGATIVE_TTL)),
            ("prefetch_jobs", format!("[default: {DEFAULT_PREFETCH_JOBS}]")),
            ("cache_dir", format!("[default: {DEFAULT_CACHE_DIR}]")),
            ("max_size", format!("[default: {}G]", DEFAULT_MAX_SIZE_BYTES >> 30)),
            ("index_min_nar_size", format!("[default: {}K]", DEFAULT_INDEX_MIN_NAR_BYTES >> 10)),
            ("min_free", format!("[default: {min_free}%]")),
            ("control_socket", format!("[default: {DEFAULT_CONTROL_SOCKET}]")),
        ];
        let cli = crate::cli::Cli::command();
        let mount = cli.find_subcommand("mount").expect("mount subcommand");
        for arg in mount.get_arguments() {
            let id = arg.get_id().as_str();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            assert!(help.contains("[default: "), "--{id} does not state its default: {help}");
            if let Some((_, want)) = cases.iter().find(|(case, _)| *case == id) {
                assert!(help.contains(want.as_str()), "--{id}: {help:?} lacks {want:?}");
            }
        }
    }
}
