//! The snapshot files of a data dir: finding the snapshot the node starts from
//! ([`recover`]), installing one received from the primary together with the configuration
//! in effect at it (`install_received`), listing the files, reading one chunk by chunk,
//! moving a damaged one aside and removing old ones. The file format, its verification and
//! its atomic install are `wal::snapshot`'s; which snapshots are in use is
//! [`Snapshots`](super::Snapshots)'s business. This file does the file work for both, and
//! keeps no state.
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
use wal::snapshot::{SnapshotInfo, SnapshotReader, SnapshotWriter};
use wal::{Lsn, Wal};

use crate::node::disk::DiskError;
use crate::node::members;

/// The directory of a data dir that holds the snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// Where start-up moves snapshots that fail verification.
pub const CORRUPT_DIR: &str = "snapshots-corrupt";

/// Chunks queued between a blocking reader thread and the task that sends them.
pub(crate) const READ_AHEAD_CHUNKS: usize = 4;

/// Whether `error` says a snapshot file's bytes are damaged (as opposed to a failure to
/// read them at all, which may pass).
pub(crate) fn is_damage(error: &wal::Error) -> bool {
    matches!(
        error,
        wal::Error::Corrupt { .. }
            | wal::Error::BadMagic { .. }
            | wal::Error::UnsupportedVersion { .. }
    )
}

/// Whether `error` from reading a snapshot at start-up means the file itself is bad: damage
/// ([`is_damage`]) or `EIO`, which is how a bad sector shows. Either moves the file aside.
fn unreadable(error: &wal::Error) -> bool {
    is_damage(error)
        || matches!(error, wal::Error::Io { source, .. } if source.raw_os_error() == Some(libc::EIO))
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
/// | log ends before the snapshot, or holds its LSN in another epoch | a snapshot from the primary was installed and the node stopped before resetting the log; or a backup's log was cut back after a failed fsync, below the snapshot its application took of records not yet durable here | store the configuration at the snapshot in `members.json`, then reset the log to start after the snapshot |
/// | ditto, and `snapshot-members.json` has no entry for the snapshot | the configuration at the snapshot is unknown | `DiskError::SnapshotWithoutMembers` |
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
            // An I/O error other than EIO (EACCES, EMFILE, ...) says nothing about the file's
            // bytes: start-up stops with it, and nothing is moved aside.
            Err(e) if !unreadable(&e) => return Err(e.into()),
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
            Err(e) if !unreadable(&e) => return Err(e.into()),
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
        warn!(snapshot_lsn = %lsn, log_last_lsn = %wal.last_lsn(), "the log does not continue the newest snapshot (one received from the primary just before a stop, or the log was cut back after a failed fsync); resetting the log after it");
        recover_members(data_dir, newest)?;
        lower_floor(data_dir, lsn)?;
        wal.reset(lsn.next())?;
        // Older snapshots do not chain with the new log.
        installed.drain(..installed.len() - 1);
    }
    info!(snapshot_lsn = %lsn, log_first_lsn = %wal.first_lsn(), log_last_lsn = %wal.last_lsn(), "starting from a snapshot");
    Ok(Recovered { installed, corrupt })
}

/// Before [`recover`] resets the log after a snapshot at `lsn`: lowers the log floor
/// (`disk.rs`, "The log floor") to `lsn` if it is higher, fsynced, as the WAL writer does
/// before a reset (`wal::writer`, `Op::Reset`). The records the reset removes are a suffix
/// the primary's snapshot replaced; left above the new log's end, the floor would make the
/// node take its own reset for lost records and start as a learner.
///
/// Crash argument, with [`recover_members`]: 1. `members.json`; 2. the floor; 3. the reset.
/// A crash before 3 finds the same snapshot and old log and does it again; the floor can
/// then only be lower than the log's end, never above it. A floor file that is missing or
/// damaged is left as it is: start-up reads it next, as it would have.
fn lower_floor(data_dir: &Path, lsn: Lsn) -> Result<(), DiskError> {
    let path = data_dir.join(crate::node::disk::LOG_FLOOR_FILE_NAME);
    if let wal::mark::MarkFile::At(floor) = wal::mark::read(&path)? {
        if floor > lsn {
            wal::mark::DurableMark::open(&path, lsn)?;
        }
    }
    Ok(())
}

/// Before [`recover`] resets the log after `snapshot`: stores the configuration in effect at
/// the snapshot (which [`install_received`], or the upload of the application's snapshot,
/// stored beside it) in `members.json`, where
/// start-up looks for the configuration at the log's start.
///
/// Crash argument: 1. `members.json` is installed (tmp, fsync, rename, fsync the directory);
/// 2. the log is reset. A crash before 2 finds the same snapshot and old log, and does both
/// again; after 2 the log continues the snapshot and `members.json` already holds the
/// configuration at it, as after the core loop's install. Done the other way round, a crash
/// between the two would leave a log that continues the snapshot beside a `members.json`
/// from an earlier prefix cut, which nothing afterwards could tell from a right one.
///
/// A snapshot without its configuration (a data dir of a version that did not store it, the
/// file deleted) is refused: the old `members.json` or `--peers` may name another voter set
/// than the one in effect at the snapshot, and a voter that acts on a stale set can elect a
/// second primary in an epoch or count a commit with the wrong majority.
fn recover_members(data_dir: &Path, snapshot: &SnapshotInfo) -> Result<(), DiskError> {
    let found =
        members::load_at_snapshot(data_dir, (snapshot.lsn, snapshot.epoch)).map_err(|reason| {
            DiskError::Members {
                path: data_dir.to_owned(),
                reason,
            }
        })?;
    let Some((config_lsn, record)) = found else {
        return Err(DiskError::SnapshotWithoutMembers {
            path: data_dir.to_owned(),
            snapshot_lsn: snapshot.lsn,
        });
    };
    members::store_start(data_dir, config_lsn, &record)?;
    info!(snapshot_lsn = %snapshot.lsn, config_lsn = %config_lsn, members = %record.members, "stored the configuration at the snapshot");
    Ok(())
}

/// Installs a snapshot received from the primary, whose body `writer` holds whole, with the
/// configuration in effect at it (`config`: the LSN of its record, and the record). Runs on
/// a blocking thread.
///
/// # Durability
/// Crash argument: 1. the configuration is stored in `snapshot-members.json` with the
/// snapshot's LSN and epoch (tmp, fsync, rename, fsync the directory); 2. `writer.finish()`
/// installs `snapshots/<lsn>.snap` (fsync, rename, fsync the directory). A crash before 2
/// leaves the old snapshots and log, and a `snapshot-members.json` for a snapshot that does
/// not exist, which nothing reads (`members.json` is untouched, so the old log's start
/// keeps its configuration). From 2 on the configuration at the snapshot is on disk beside
/// it: should the node stop before the core loop stores it in `members.json` and resets the
/// log (a crash, or a clean stop that closed the core loop first), [`recover`] finds it and
/// stores it before resetting the log itself. So no crash leaves the snapshot's name
/// without its configuration.
pub(crate) fn install_received(
    data_dir: &Path,
    writer: SnapshotWriter,
    config: &(Lsn, members::ConfigRecord),
) -> Result<SnapshotInfo, DiskError> {
    let snapshot = (writer.lsn(), writer.epoch());
    members::store_at_snapshot(data_dir, snapshot, config.0, &config.1)?;
    Ok(writer.finish()?)
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
    // Both ends of the move: the file is evidence, kept, not deleted.
    wal::fs::sync_dir(&aside)?;
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

/// Removes snapshot files now, on the calling thread, and fsyncs the directory once if any
/// went (best effort, as [`snapshot_remove`]).
pub(super) fn snapshot_remove_now(dir: &Path, doomed: &[SnapshotInfo]) {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use wal::format::RecordKind;
    use wal::Epoch;

    use super::*;
    use crate::config::{FsyncMode, PeerAddr};
    use crate::core::{Members, Start};
    use crate::node::disk::{open_with, InitialClusterState, Opened};
    use crate::node::members::ConfigRecord;
    use crate::NodeId;

    /// Opens `dir` as a founding member (a voter once its quarantine is over).
    fn open_node(dir: &Path) -> Result<Opened, DiskError> {
        open_with(
            dir,
            NodeId(1),
            7,
            FsyncMode::Always,
            Default::default(),
            wal::Options::default().segment_bytes_max,
            InitialClusterState::New,
        )
    }

    fn voters(ids: &[u16]) -> ConfigRecord {
        let ids: Vec<NodeId> = ids.iter().map(|&id| NodeId(id)).collect();
        let members = Members::voters_of(&ids).unwrap();
        let addrs: BTreeMap<NodeId, PeerAddr> = ids
            .iter()
            .map(|&id| {
                let addr = PeerAddr::parse(&format!("127.0.0.1:{}", 7100 + id.get())).unwrap();
                (id, addr)
            })
            .collect();
        ConfigRecord {
            members,
            addrs,
            given: Default::default(),
        }
    }

    /// A backup's data dir in the state a snapshot from the primary finds it in: a voter
    /// whose log holds lsn 1..=5 of epoch 1 (the config record of voters {1,2,3} at lsn 1),
    /// with `members.json` from an earlier prefix cut saying the same. Returns that record.
    fn backup_behind(dir: &Path) -> ConfigRecord {
        let old = voters(&[1, 2, 3]);
        let mut opened = open_node(dir).unwrap();
        opened.dir.quarantine_ended().unwrap();
        let payload = old.encode();
        opened
            .writer
            .append(Epoch(1), RecordKind::Config, [&payload[..]])
            .unwrap();
        for _ in 0..4 {
            opened
                .writer
                .append(Epoch(1), RecordKind::App, [&b"record"[..]])
                .unwrap();
        }
        opened.writer.sync().unwrap();
        members::store_start(dir, Lsn(1), &old).unwrap();
        old
    }

    /// A snapshot the primary sent, at lsn 20 of epoch 2, whole in its writer (not yet
    /// installed).
    fn received(dir: &Path) -> SnapshotWriter {
        let mut writer =
            SnapshotWriter::create(&dir.join(SNAPSHOTS_DIR), Lsn(20), Epoch(2)).unwrap();
        writer.write(b"the application's state at lsn 20").unwrap();
        writer
    }

    /// The same crash point with a snapshot below the log's end: the primary's snapshot at
    /// lsn 3 replaces this voter's records 1..=5 of epoch 1, which its log floor says were
    /// durable. Start-up resets the log after the snapshot and lowers the floor first, as the
    /// core loop's reset does: the node stays a voter (before, the floor at 5 above the new
    /// log's end made it a learner that had lost records).
    #[test]
    fn a_snapshot_below_the_floor_installed_at_start_up_keeps_a_voter() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path();
        let config = backup_behind(dir);
        assert_eq!(
            crate::node::disk::log_floor(dir).unwrap(),
            wal::mark::MarkFile::At(Lsn(5))
        );
        let mut writer =
            SnapshotWriter::create(&dir.join(SNAPSHOTS_DIR), Lsn(3), Epoch(2)).unwrap();
        writer.write(b"the primary's state at lsn 3").unwrap();
        install_received(dir, writer, &(Lsn(1), config)).unwrap();
        let opened = open_node(dir).unwrap();
        assert_eq!(opened.recovered.snapshot_lsn, Lsn(3));
        assert_eq!(opened.recovered.last_lsn, Lsn(3));
        assert_eq!(opened.start, Start::VOTER, "the node lost its vote");
        drop(opened);
        assert_eq!(
            crate::node::disk::log_floor(dir).unwrap(),
            wal::mark::MarkFile::At(Lsn(3))
        );
    }

    /// The crash point between a received snapshot's install and the core loop's: the
    /// membership changed (voters {1,2,3} to {1,2,4} at lsn 12) between the backup's log and
    /// the snapshot at lsn 20. The receiver installs the snapshot and the node stops before
    /// the core loop stores the configuration or resets the log. Start-up must reset the log
    /// after the snapshot with the configuration in effect at it, not the one of the old
    /// `members.json` (before the fix it started as a voter of {1,2,3}: the config record at
    /// lsn 12 was nowhere on disk). A crash before the snapshot's name exists leaves the old
    /// state whole.
    #[test]
    fn a_snapshot_from_the_primary_left_uninstalled_starts_with_its_configuration() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path();
        let old = backup_behind(dir);
        let new = voters(&[1, 2, 4]);

        // A crash after the configuration is stored and before the snapshot's name exists
        // (the temp file it leaves is removed at start-up, as dropping the writer does).
        members::store_at_snapshot(dir, (Lsn(20), Epoch(2)), Lsn(12), &new).unwrap();
        drop(received(dir));
        let opened = open_node(dir).unwrap();
        assert_eq!(opened.recovered.snapshot_lsn, Lsn::ZERO);
        assert_eq!(opened.recovered.last_lsn, Lsn(5), "the old log is kept");
        assert_eq!(opened.recovered.configs, vec![(Lsn(1), old.members)]);
        assert_eq!(
            members::load_start(dir).unwrap(),
            Some((Lsn(1), old.clone())),
            "members.json still describes the old log's start"
        );
        drop(opened);

        // The receive path's install, then a stop before the core loop's.
        let info = install_received(dir, received(dir), &(Lsn(12), new.clone())).unwrap();
        assert_eq!((info.lsn, info.epoch), (Lsn(20), Epoch(2)));
        for restart in ["the start that resets the log", "the next start"] {
            let opened = open_node(dir).unwrap();
            assert_eq!(opened.start, Start::VOTER, "{restart}");
            assert_eq!(opened.recovered.snapshot_lsn, Lsn(20), "{restart}");
            assert_eq!(opened.recovered.last_lsn, Lsn(20), "{restart}");
            assert_eq!(
                opened.recovered.configs,
                vec![(Lsn(12), new.members)],
                "{restart}: the configuration at the snapshot"
            );
            assert_eq!(
                opened.members.at(Lsn(20)),
                Some((Lsn(12), &new)),
                "{restart}"
            );
            assert_eq!(
                members::load_start(dir).unwrap(),
                Some((Lsn(12), new.clone())),
                "{restart}: stored before the log was reset"
            );
        }
    }

    /// A snapshot the log does not continue, whose configuration was not stored with it (a
    /// data dir of a version that did not store it) or was stored for another snapshot: the
    /// node refuses to start rather than reset its log and vote with the old `members.json`,
    /// and leaves the log as it was.
    #[test]
    fn a_snapshot_from_the_primary_without_its_configuration_is_refused() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path();
        let old = backup_behind(dir);
        received(dir).finish().unwrap();
        let refused = |why: &str| match open_node(dir) {
            Err(DiskError::SnapshotWithoutMembers { snapshot_lsn, .. }) => {
                assert_eq!(snapshot_lsn, Lsn(20), "{why}")
            }
            Err(e) => panic!("{why}: {e}"),
            Ok(_) => panic!("{why}: started"),
        };
        refused("no snapshot-members.json");
        members::store_at_snapshot(dir, (Lsn(15), Epoch(2)), Lsn(12), &voters(&[1, 2, 4])).unwrap();
        refused("snapshot-members.json of another lsn");
        members::store_at_snapshot(dir, (Lsn(20), Epoch(3)), Lsn(12), &voters(&[1, 2, 4])).unwrap();
        refused("snapshot-members.json of another epoch");
        assert_eq!(members::load_start(dir).unwrap(), Some((Lsn(1), old)));
        // The log is untouched: with the snapshot gone, the node starts on it as before.
        std::fs::remove_file(
            dir.join(SNAPSHOTS_DIR)
                .join(wal::snapshot::file_name(Lsn(20))),
        )
        .unwrap();
        let opened = open_node(dir).unwrap();
        assert_eq!(opened.recovered.last_lsn, Lsn(5));
        assert_eq!(opened.start, Start::VOTER);
    }

    /// A backup's application applies, and snapshots, committed records before they are
    /// durable in the backup's log; a write or fsync of the log that then fails makes the
    /// next start cut the log back to what was durable, below the snapshot, and the config
    /// record between the two goes with the cut. The upload stored the configuration at the
    /// snapshot before the snapshot (as `upload_begin` does), so the start resets the log
    /// after the snapshot with the configuration in effect at it and the node is a learner;
    /// without that entry it refused to start, on every start after (a damaged marker, read
    /// as "nothing durable", took the same path).
    #[test]
    fn a_log_cut_below_the_applications_snapshot_after_a_failed_fsync_resets_after_it() {
        for marker in [Some(Lsn(2)), None] {
            let data = tempfile::tempdir().unwrap();
            let dir = data.path();
            let old = voters(&[1, 2, 3]);
            let new = voters(&[1, 2, 4]);
            let mut opened = open_node(dir).unwrap();
            opened.dir.quarantine_ended().unwrap();
            let (old_payload, new_payload) = (old.encode(), new.encode());
            let appends: [(RecordKind, &[u8]); 6] = [
                (RecordKind::Config, &old_payload),
                (RecordKind::App, b"record"),
                (RecordKind::Config, &new_payload),
                (RecordKind::App, b"record"),
                (RecordKind::App, b"record"),
                (RecordKind::App, b"record"),
            ];
            for (kind, payload) in appends {
                opened.writer.append(Epoch(1), kind, [payload]).unwrap();
            }
            opened.writer.sync().unwrap();
            drop(opened);
            // The application's snapshot at lsn 5, its configuration stored first.
            members::store_at_snapshot(dir, (Lsn(5), Epoch(1)), Lsn(3), &new).unwrap();
            let mut writer =
                SnapshotWriter::create(&dir.join(SNAPSHOTS_DIR), Lsn(5), Epoch(1)).unwrap();
            writer.write(b"the application's state at lsn 5").unwrap();
            writer.finish().unwrap();
            // The log was durable through lsn 2 when a write or fsync failed.
            let text = match marker {
                Some(lsn) => wal::mark::encode(lsn),
                None => "damaged".to_owned(),
            };
            std::fs::write(dir.join(crate::node::disk::FSYNC_FAILED_FILE_NAME), text).unwrap();
            for restart in ["the start after the failure", "the next start"] {
                let opened = open_node(dir).unwrap_or_else(|e| panic!("{marker:?} {restart}: {e}"));
                assert_eq!(opened.start, Start::LEARNER, "{marker:?} {restart}");
                assert_eq!(
                    opened.recovered.snapshot_lsn,
                    Lsn(5),
                    "{marker:?} {restart}"
                );
                assert_eq!(opened.recovered.last_lsn, Lsn(5), "{marker:?} {restart}");
                assert_eq!(
                    opened.recovered.configs,
                    vec![(Lsn(3), new.members)],
                    "{marker:?} {restart}: the configuration at the snapshot, not members.json's"
                );
            }
        }
    }

    /// Uploads that stored their configuration and then broke off (no snapshot file) do not
    /// push out the entry of the snapshot on disk: a start that must reset the log after it
    /// (here a damaged fsync-failed marker: nothing after the log's start is trusted) finds
    /// its configuration.
    #[test]
    fn abandoned_uploads_do_not_evict_the_configuration_of_the_snapshot_on_disk() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path();
        let config = backup_behind(dir);
        // The application's snapshot at lsn 5, its configuration stored first (upload_begin).
        members::store_at_snapshot(dir, (Lsn(5), Epoch(1)), Lsn(1), &config).unwrap();
        let mut writer =
            SnapshotWriter::create(&dir.join(SNAPSHOTS_DIR), Lsn(5), Epoch(1)).unwrap();
        writer.write(b"the application's state at lsn 5").unwrap();
        writer.finish().unwrap();
        for lsn in 10..10 + 2 * members::SNAPSHOT_MEMBERS_KEPT as u64 {
            members::store_at_snapshot(dir, (Lsn(lsn), Epoch(1)), Lsn(1), &config).unwrap();
        }
        std::fs::write(
            dir.join(crate::node::disk::FSYNC_FAILED_FILE_NAME),
            "damaged",
        )
        .unwrap();
        let opened = open_node(dir);
        assert!(
            opened.is_ok(),
            "the node refuses to start: {}",
            opened.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
}
