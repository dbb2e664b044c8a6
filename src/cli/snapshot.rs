//! `understudy snapshot list DIR` and `understudy snapshot verify DIR`: offline looks at a
//! node's snapshots. Both only read. `DIR` is a data directory (its `snapshots/` is used),
//! a snapshot directory, or one snapshot file.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Subcommand;
use wal::snapshot::{SnapshotInfo, SnapshotReader};

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// List the snapshots, oldest first: LSN, epoch, body size (headers checked only).
    List {
        /// A data directory, its `snapshots/`, or a `.snap` file.
        dir: PathBuf,
    },
    /// Read every snapshot whole, checking every chunk's checksum and the trailer; exit 1
    /// naming the file and offset of the first damage.
    Verify {
        /// A data directory, its `snapshots/`, or a `.snap` file.
        dir: PathBuf,
    },
}

pub fn run(command: SnapshotCommand) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match command {
        SnapshotCommand::List { dir } => {
            let paths = snapshot_paths(&dir)?;
            if paths.is_empty() {
                writeln!(out, "no snapshots in {}", dir.display())?;
            }
            for path in paths {
                let info = SnapshotReader::open(&path)?.info();
                print_info(&mut out, &info, "")?;
            }
        }
        SnapshotCommand::Verify { dir } => {
            let paths = snapshot_paths(&dir)?;
            if paths.is_empty() {
                writeln!(out, "no snapshots in {}", dir.display())?;
            }
            for path in paths {
                // The error names the file, the offset and what is wrong.
                let info = wal::snapshot::verify(&path)?;
                print_info(&mut out, &info, "  ok")?;
            }
        }
    }
    Ok(())
}

fn print_info(out: &mut impl Write, info: &SnapshotInfo, suffix: &str) -> std::io::Result<()> {
    writeln!(
        out,
        "{}  lsn {}  epoch {}  {} bytes{suffix}",
        info.path.display(),
        info.lsn,
        info.epoch,
        info.body_len
    )
}

/// The `.snap` files `dir` names, ascending by LSN. Temp files (incomplete installs) and
/// other files are skipped.
fn snapshot_paths(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if dir.is_file() {
        return Ok(vec![dir.to_owned()]);
    }
    if !dir.is_dir() {
        bail!("{}: not a directory or a snapshot file", dir.display());
    }
    let nested = dir.join(crate::node::snapshot::store::SNAPSHOTS_DIR);
    let dir = if nested.is_dir() {
        nested
    } else {
        dir.to_owned()
    };
    crate::node::snapshot::store::snapshot_files(&dir)
        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))
}
