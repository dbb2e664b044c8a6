//! The `understudy` binary: parse the command line, set up logging, run, and turn any error
//! into one line for the operator.

use std::process::ExitCode;

use clap::Parser;
use understudy::cli::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(err) = cli.init_logging() {
        eprintln!("understudy: {err:#}");
        return ExitCode::FAILURE;
    }
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // Broken pipe (e.g. `understudy wal dump | head`) is not worth a complaint.
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            eprintln!("understudy: {err:#}");
            ExitCode::FAILURE
        }
    }
}
