//! The `storefs` binary: parse the command line, run it, exit with its code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    storefs::cli::run(storefs::cli::Cli::parse())
}
