//! The command line: clap definitions and one file per subcommand. `main.rs` parses, sets up
//! logging, calls [`run`], and prints one line if it fails.

use clap::{Parser, Subcommand};

pub mod run;
pub mod wal;

/// understudy: a primary-backup replication sidecar.
#[derive(Debug, Parser)]
#[command(name = "understudy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar beside a copy of the application.
    Run(Box<run::RunArgs>),
    /// Inspect a write-ahead log offline: check every checksum, print records.
    #[command(subcommand)]
    Wal(wal::WalCommand),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Wal(command) => wal::run(command),
    }
}
