//! The command line: clap definitions and one file per subcommand. `main.rs` parses, sets up
//! logging, calls [`run()`], and prints one line if it fails.

use clap::{Parser, Subcommand};

mod admin_client;
pub mod config_file;
pub mod demo;
pub mod docs;
pub mod members;
pub mod pause;
pub mod run;
pub mod snapshot;
pub mod status;
pub mod switchover;
pub mod wal;

/// understudy: a primary-backup replication sidecar.
#[derive(Debug, Parser)]
#[command(name = "understudy", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// How log lines (on standard error) are written: `text` for people, `json` for a log
    /// pipeline (one object per line: timestamp, level, target, fields, spans).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value_t = LogFormat::Text,
        env = "UNDERSTUDY_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Which log lines are written: error, warn, info, debug or trace, or a filter such as
    /// `info,understudy::node::peer=debug`. RUST_LOG, when set, takes precedence.
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "UNDERSTUDY_LOG_LEVEL"
    )]
    pub log_level: String,
    /// The cluster's CA certificate (PEM). For `run`, with --tls-cert and --tls-key: peers'
    /// certificates must be signed by it. For the commands that reach admin ports: an
    /// `https://` admin address's certificate must be signed by it.
    #[arg(long, global = true, value_name = "FILE", env = "UNDERSTUDY_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// Sets up logging as the flags say; the error names the flag.
    pub fn init_logging(&self) -> anyhow::Result<()> {
        use tracing_subscriber::EnvFilter;
        let filter = match std::env::var("RUST_LOG") {
            Ok(spec) if !spec.trim().is_empty() => {
                EnvFilter::try_new(&spec).map_err(|e| anyhow::anyhow!("RUST_LOG {spec:?}: {e}"))?
            }
            _ => EnvFilter::try_new(&self.log_level)
                .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", self.log_level))?,
        };
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init(),
            LogFormat::Json => builder.json().with_current_span(false).init(),
        }
        Ok(())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar beside a copy of the application.
    Run(Box<run::RunArgs>),
    /// Print the cluster as a table, from the nodes' admin ports.
    Status(status::StatusArgs),
    /// Hand the primary role to another node (a planned switchover) and report the pause.
    Switchover(switchover::SwitchoverArgs),
    /// The cluster's members: list them, add, remove or promote one (a change is a record in
    /// the replicated log, sent to the primary, done once committed).
    #[command(subcommand)]
    Members(members::MembersCommand),
    /// Maintenance: stop automatic failover on every node (stored; a restart keeps it).
    Pause(pause::PauseArgs),
    /// End maintenance: automatic failover again on every node.
    Resume(pause::PauseArgs),
    /// Show a three-node cluster on loopback: a failover under writes (or, with --act
    /// app-kill, the primary's application killed and a hand-over), a rejoin, no
    /// acknowledged write lost.
    Demo(demo::DemoArgs),
    /// The demo's key-value server (run by `understudy demo` beside each sidecar).
    #[command(hide = true)]
    DemoKv(demo::KvArgs),
    /// Inspect a write-ahead log offline: check every checksum, print records.
    #[command(subcommand)]
    Wal(wal::WalCommand),
    /// Inspect a node's snapshots offline: list them, verify every checksum.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(docs::CompletionsArgs),
    /// Print the manual page (roff), or write one page per command into a directory.
    Man(docs::ManArgs),
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    admin_client::set_tls_ca(cli.tls_ca.clone());
    match cli.command {
        Command::Run(mut args) => {
            args.tls_ca = cli.tls_ca;
            run::run(*args)
        }
        Command::Status(args) => status::run(args),
        Command::Switchover(args) => switchover::run(args),
        Command::Members(command) => members::run(command),
        Command::Pause(args) => pause::run(args, true),
        Command::Resume(args) => pause::run(args, false),
        Command::Wal(command) => wal::run(command),
        Command::Snapshot(command) => snapshot::run(command),
        Command::Demo(args) => demo::run(args),
        Command::DemoKv(args) => demo::run_kv(args),
        Command::Completions(args) => docs::completions(args),
        Command::Man(args) => docs::man(args),
    }
}
