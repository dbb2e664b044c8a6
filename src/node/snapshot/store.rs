//! The snapshot files of a data dir: finding the snapshot the node starts from
//! ([`recover`]), listing the files, reading one chunk by chunk, moving a damaged one aside
//! and removing old ones. The file format, its verification and its atomic install are
//! `wal::snapshot`'s; which snapshots are in use is [`Snapshots`](super::Snapshots)'s
//! business. This file does the file work for both, and keeps no state.
//!
//! ```text
//! <data-dir>/
//!   snapshots/            <lsn:020>.snap, the newest --snapshots-retain of them
//!   snapshots-corrupt/    snapshots found damaged (at start-up, or by a sender), moved aside
//!                         for inspection
//! ```

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;
use tracing::{error, info, warn};
use wal::snapshot::{SnapshotInfo, SnapshotReader};
use wal::{Lsn, Wal};

use crate::node::disk::DiskError;

/// The directory of a data dir that holds the snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// Where start-up moves snapshots that fail verification.
pub const CORRUPT_DIR: &str = "snapshots-corrupt";

/// Chunks queued between a blocking reader thread and the task that sends them.
pub(crate) const READ_AHEAD_CHUNKS: usize = 4;

/// Whether `error` says a snapshot file's bytes are damaged (as opposed to a failure to
/// read them at all, which may pass).
pub(super) fn is_damage(error: &wal::Error) -> bool {
    matches!(
        error,
        wal::Error::Corrupt { .. }
            | wal::Error::BadMagic { .. }
            | wal::Error::UnsupportedVersion { .. }
    )
}

// Start-up.

/// What [`recover`] found.
#[derive(Debug)]
pub struct Recovered {
    /// The snapshots to use, ascending; the last one the log continues from.
    pub installed: Vec<SnapshotInfo>,
    /// Snapshots found damaged and moved aside.
    pub corrupt: usize,
}

/// Picks the snapshot the node starts from and makes the log continue after it.
///
/// | case | finding | decision |
/// |---|---|---|
/// | newest verifies | every chunk and the trailer good | use it |
/// | newest damaged | a chunk, the header or the trailer fails | report, move it to `snapshots-corrupt/`, try the one before |
/// | no snapshot, log from 1 | | start from the log |
/// | no snapshot, log starts later | records were truncated | `DiskError::MissingSnapshot` |
/// | log starts after the snapshot + 1 | a gap | `DiskError::LogGap` |
/// | log holds the snapshot's LSN with its epoch, or starts right after it | | keep the log |
/// | log ends before the snapshot, or holds its LSN in another epoch | a snapshot from the primary was installed and the node stopped before resetting the log | reset the log to start after the snapshot |
///
/// Temp files (`*.snap.tmp`) are removed first.
pub fn recover(data_dir: &Path, wal: &mut Wal) -> Result<Recovered, DiskError> {
    let dir = data_dir.join(SNAPSHOTS_DIR);
    wal::fs::ensure_dir(&dir)?;
    let removed = wal::snapshot::remove_temps(&dir)?;
    if removed > 0 {
        info!(count = removed, "removed incomplete snapshot files");
    }
    let mut candidates = snapshot_files(&dir).map_err(|source| DiskError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut installed: Vec<SnapshotInfo> = Vec::new();
    let mut corrupt = 0;
    // The newest that verifies whole.
    while let Some(path) = candidates.pop() {
        match wal::snapshot::verify(&path) {
            Ok(info) => {
                installed.push(info);
                break;
            }
            Err(e) => {
                corrupt += 1;
                recover_quarantine(data_dir, &path, &e)?;
            }
        }
    }
    // Older ones: their headers (each is verified whole if it is ever used or sent).
    for path in candidates.into_iter().rev() {
        match SnapshotReader::open(&path) {
            Ok(reader) => installed.insert(0, reader.info()),
            Err(e) => {
                corrupt += 1;
                recover_quarantine(data_dir, &path, &e)?;
            }
        }
    }
    let Some(newest) = installed.last() else {
        if wal.first_lsn() > Lsn(1) {
            return Err(DiskError::MissingSnapshot {
                path: data_dir.to_owned(),
                first_lsn: wal.first_lsn(),
            });
        }
        return Ok(Recovered { installed, corrupt });
    };
    let (lsn, epoch) = (newest.lsn, newest.epoch);
    if wal.first_lsn() > lsn.next() {
        return Err(DiskError::LogGap {
            path: data_dir.to_owned(),
            first_lsn: wal.first_lsn(),
            snapshot_lsn: lsn,
        });
    }
    let continues = wal.first_lsn() == lsn.next()
        || (wal.last_lsn() >= lsn && wal.epoch_at(lsn) == Some(epoch));
    if !continues {
        warn!(snapshot_lsn = %lsn, log_last_lsn = %wal.last_lsn(), "the log does not continue the newest snapshot (installed from the primary just before a stop); resetting the log after it");
        wal.reset(lsn.next())?;
        // Older snapshots do not chain with the new log.
        installed.drain(..installed.len() - 1);
    }
    info!(snapshot_lsn = %lsn, log_first_lsn = %wal.first_lsn(), log_last_lsn = %wal.last_lsn(), "starting from a snapshot");
    Ok(Recovered { installed, corrupt })
}

/// The `<lsn>.snap` files of `dir`, ascending by LSN. Temp files and other files are left
/// alone (`wal::snapshot::list` refuses foreign files; start-up must not).
pub fn snapshot_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(lsn) = name.to_str().and_then(wal::snapshot::parse_file_name) {
            found.push((lsn, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, path)| path).collect())
}

fn recover_quarantine(data_dir: &Path, path: &Path, e: &wal::Error) -> Result<(), DiskError> {
    error!(path = %path.display(), error = %e, "snapshot is damaged; not using it (moved to snapshots-corrupt/)");
    quarantine_file(data_dir, path)
}

/// Moves a damaged snapshot file to `<data_dir>/snapshots-corrupt/` and fsyncs the
/// directory it left.
pub(super) fn quarantine_file(data_dir: &Path, path: &Path) -> Result<(), DiskError> {
    let aside = data_dir.join(CORRUPT_DIR);
    wal::fs::ensure_dir(&aside)?;
    let name = path.file_name().unwrap_or_default();
    let to = aside.join(name);
    std::fs::rename(path, &to).map_err(|source| DiskError::Io {
        path: path.to_owned(),
        source,
    })?;
    wal::fs::sync_dir(wal::fs::parent(path))?;
    Ok(())
}

// Reading and removing.

/// Reads the chunks of the snapshot at `path` from body `offset` into `chunks`, each
/// verified, until the end (`Ok(trailer body CRC)` when read from 0) or the receiver is
/// gone. Runs on a blocking thread.
pub(crate) fn read_chunks(
    path: &Path,
    offset: u64,
    chunks: mpsc::Sender<wal::snapshot::Chunk>,
) -> Result<(), wal::Error> {
    let mut reader = SnapshotReader::open(path)?;
    reader.seek_to_offset(offset)?;
    while let Some(chunk) = reader.next_chunk()? {
        if chunks.blocking_send(chunk).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// Removes snapshot files on a blocking thread (best effort: a file left behind is only
/// unused, and start-up or the next retention removes it) and fsyncs the directory once.
pub(super) fn snapshot_remove<'a>(dir: &Path, doomed: impl Iterator<Item = &'a SnapshotInfo>) {
    let doomed: Vec<SnapshotInfo> = doomed.cloned().collect();
    if doomed.is_empty() {
        return;
    }
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || snapshot_remove_now(&dir, &doomed));
}

fn snapshot_remove_now(dir: &Path, doomed: &[SnapshotInfo]) {
    let mut removed = false;
    for info in doomed {
        match std::fs::remove_file(&info.path) {
            Ok(()) => {
                removed = true;
                info!(lsn = %info.lsn, "removed an old snapshot");
            }
            Err(e) => {
                warn!(path = %info.path.display(), error = %e, "cannot remove an old snapshot")
            }
        }
    }
    if removed {
        if let Err(e) = wal::fs::sync_dir(dir) {
            warn!(error = %e, "cannot fsync the snapshot directory");
        }
    }
}
