//! `understudy completions` and `understudy man`: shell completions (clap_complete) and
//! manual pages (clap_mangen), both generated from the same command definitions as `--help`,
//! so they never disagree with the flags.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, CommandFactory};

use super::Cli;

/// Flags of `understudy completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for. Install, e.g. for bash:
    /// `understudy completions bash > /etc/bash_completion.d/understudy`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Flags of `understudy man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `understudy.1` and one page per command (`understudy-run.1`, ...) into this
    /// directory instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(args.shell, &mut command, "understudy", &mut out);
    out.flush().context("writing the completion script")?;
    Ok(())
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let command = Cli::command();
    match args.out_dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(command)
                .render(&mut out)
                .context("writing the manual page")?;
            out.flush().context("writing the manual page")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("--out-dir {}", dir.display()))?;
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
        }
    }
    Ok(())
}
