//! Log set-up: tracing to stderr, plain (journald-friendly) when stderr is not a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber with `filter` (RUST_LOG syntax). Safe to call twice.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|err| {
        eprintln!("storefs: invalid log filter {filter:?} ({err}); using \"info\"");
        EnvFilter::new("info")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
