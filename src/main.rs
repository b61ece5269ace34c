//! The `workspaced` binary: parses the command line and hands over to `cli::run`.
//!
//! The only place that uses `anyhow`, to print an error with its causes on one line.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = workspaced::cli::Cli::parse();
    match workspaced::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let code = error.exit_code();
            eprintln!("workspaced: error: {:#}", anyhow::Error::new(error));
            ExitCode::from(code)
        }
    }
}
