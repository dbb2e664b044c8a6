//! The `understudy` binary: parse the command line, set up logging, run, and turn any error
//! into one line for the operator.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use understudy::cli::{self, config_file, Cli, Command};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Before parsing: a config file's settings become the environment variables the flags
    // read (config_file.rs).
    let applied = match config_file::apply(&args) {
        Ok(applied) => applied,
        Err(err) => {
            eprintln!("understudy: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let matches = Cli::command().get_matches_from(&args);
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    if let (Command::Run(run), Some(("run", run_matches))) = (&cli.command, matches.subcommand()) {
        if run.print_config {
            print!("{}", config_file::print(run_matches, &applied));
            return ExitCode::SUCCESS;
        }
    }
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
