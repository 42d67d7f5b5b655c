//! The `storefs` binary: parse the command line, run it, exit with its code.

use std::process::ExitCode;

use clap::Parser;
use storefs::cli::{Cli, EXIT_USAGE};

fn main() -> ExitCode {
    match Cli::try_parse() {
        Ok(cli) => storefs::cli::run(cli),
        // --help and --version print and succeed; every other parse error is a usage error (1).
        Err(err) => {
            let _ = err.print();
            if err.use_stderr() { ExitCode::from(EXIT_USAGE) } else { ExitCode::SUCCESS }
        }
    }
}
