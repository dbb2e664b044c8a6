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
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    if let (Command::Run(run), Some(("run", run_matches))) =
        (&mut cli.command, matches.subcommand())
    {
        if run.print_config {
            print!("{}", config_file::print(run_matches, &applied));
            // Then the checks `run` makes before it starts, so that a configuration it would
            // refuse is not taken for a good one. Said, not failed on: the files it names
            // (the secret, TLS) may be on the node and not where the configuration is looked
            // at.
            run.tls_ca.clone_from(&cli.tls_ca);
            if let Err(err) = run.config() {
                eprintln!("understudy: run would refuse this configuration here: {err:#}");
            }
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
