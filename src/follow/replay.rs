//! A backup's copy of the followed directory, kept up with the committed log: every
//! committed record from the last one applied on is decoded ([`Change`]), its checksum
//! having been verified by the log's reader, applied ([`Materializer`]), and once a run of
//! them is synced, the LSN reached is recorded in a state file, atomically.
//!
//! The crash argument: the state file says `L` only after every change through `L` is
//! durable in the directory (the sync comes first). After a crash the directory may hold
//! changes after `L` too; applying them again would be refused (an append that does not
//! land at the file's length), so a replay that finds the directory is not the log's
//! rebuilds it: every followed file is removed and the whole committed log applied again.
//! A rebuild starts from the newest snapshot of the directory when there is one
//! ([`Replay::set_base`]), and must when the log no longer reaches back to what the
//! directory holds (a snapshot from the primary replaced it).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use wal::format::RecordKind;
use wal::reader::Reader;

use super::change::{Change, ChangeError};
use super::materialize::{MaterializeError, Materializer};
use crate::Lsn;

/// Why the directory could not be brought up to the commit LSN.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    #[error("record {lsn} of the log is not a change of the followed directory: {source}")]
    NotAChange {
        lsn: Lsn,
        #[source]
        source: ChangeError,
    },
    #[error("the log: {0}")]
    Log(#[from] wal::Error),
    #[error("{path}: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds {text:?}, not an LSN")]
    BadState { path: PathBuf, text: String },
    #[error("restoring the snapshot at lsn {lsn}: {source}")]
    Snapshot {
        lsn: Lsn,
        #[source]
        source: super::snapshot::DirSnapshotError,
    },
    #[error("the log begins at lsn {first}, the directory holds lsn {applied}, and no snapshot covers the gap")]
    NoBase { first: Lsn, applied: Lsn },
}

/// What the state file holds while the application may be writing the directory (this
/// node serves): the directory is not the log's at any LSN, and is rebuilt before it is
/// followed again.
const DIRTY: &str = "dirty";

/// The directory and how far it is materialized.
#[derive(Debug)]
pub struct Replay {
    materializer: Materializer,
    state_path: PathBuf,
    applied: Lsn,
    /// The directory must be rebuilt before anything is applied.
    dirty: bool,
    /// Where files found in a directory never materialized here were moved (see
    /// [`Replay::open`]).
    moved_aside: Option<PathBuf>,
    /// The newest snapshot of the directory, a rebuild's starting point: its LSN and file.
    base: Option<(Lsn, PathBuf)>,
}

impl Replay {
    /// Opens the directory and reads how far it was materialized (0 without a state file).
    ///
    /// A directory that holds files although this node never materialized it (no state
    /// file: a data dir that was wiped, or files that were there before the node first
    /// ran) cannot be trusted to be the log's; its files are moved into a new directory
    /// beside it, `<dir>.understudy-old-<unix seconds>` (nothing is deleted), and
    /// [`Replay::moved_aside`] says where.
    pub fn open(dir: &Path, state_path: &Path) -> Result<Replay, ReplayError> {
        let materializer = Materializer::open(dir)?;
        let (applied, dirty, known) = match std::fs::read_to_string(state_path) {
            Ok(text) if text.trim() == DIRTY => (Lsn::ZERO, true, true),
            Ok(text) => (
                Lsn(text
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| ReplayError::BadState {
                        path: state_path.to_path_buf(),
                        text: text.clone(),
                    })?),
                false,
                true,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Lsn::ZERO, false, false),
            Err(source) => {
                return Err(ReplayError::State {
                    path: state_path.to_path_buf(),
                    source,
                })
            }
        };
        let mut replay = Replay {
            materializer,
            state_path: state_path.to_path_buf(),
            applied,
            dirty,
            moved_aside: None,
            base: None,
        };
        if !known {
            replay.move_aside()?;
            replay.store(Lsn::ZERO)?;
        }
        Ok(replay)
    }

    /// The snapshot a rebuild starts from (the node's newest), if any.
    pub fn set_base(&mut self, base: Option<(Lsn, PathBuf)>) {
        self.base = base;
    }

    /// The directory, to write a snapshot of (exactly the log's state at
    /// [`Replay::applied`] while nothing is applied).
    pub fn dir(&self) -> &Path {
        self.materializer.dir()
    }

    /// Where files found in a directory never materialized here were moved, if any were.
    pub fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    /// Records that the application may write the directory from now on: whatever happens
    /// next (a crash included), it is rebuilt before it is followed again.
    pub fn mark_dirty(&mut self) -> Result<(), ReplayError> {
        self.write_state(DIRTY)?;
        self.dirty = true;
        Ok(())
    }

    fn move_aside(&mut self) -> Result<(), ReplayError> {
        let dir = self.materializer.dir().to_path_buf();
        let files =
            super::materialize::read_dir_names(&dir).map_err(|source| ReplayError::State {
                path: dir.clone(),
                source,
            })?;
        if files.is_empty() {
            return Ok(());
        }
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut aside = dir.clone().into_os_string();
        aside.push(format!(".understudy-old-{seconds}"));
        let aside = PathBuf::from(aside);
        let state = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReplayError::State { path, source }
        };
        std::fs::create_dir_all(&aside).map_err(state(&aside))?;
        for name in &files {
            let name = std::ffi::OsStr::from_bytes(name);
            std::fs::rename(dir.join(name), aside.join(name)).map_err(state(&dir.join(name)))?;
        }
        // Both directories durable before the state file says the directory is empty.
        for synced in [&aside, &dir] {
            wal::fs::sync_dir(synced).map_err(|e| ReplayError::State {
                path: synced.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        self.moved_aside = Some(aside);
        Ok(())
    }

    /// The last LSN whose change is durable in the directory.
    pub fn applied(&self) -> Lsn {
        self.applied
    }

    /// Applies every record after [`Replay::applied`] through `commit`, syncs, records the
    /// LSN reached. A directory that is not the log's is rebuilt (from the newest snapshot, or else LSN 1: the log must
    /// still hold it). Returns the LSN reached.
    pub fn catch_up(&mut self, reader: &Reader, commit: Lsn) -> Result<Lsn, ReplayError> {
        // A log that no longer reaches back to what the directory holds (a snapshot from the
        // primary replaced it) needs the snapshot.
        let behind_log = self.applied.next() < reader.first_lsn();
        if self.dirty || behind_log {
            self.rebuild()?;
            if self.applied.next() < reader.first_lsn() {
                return Err(ReplayError::NoBase {
                    first: reader.first_lsn(),
                    applied: self.applied,
                });
            }
        }
        match self.apply_through(reader, commit) {
            Err(ReplayError::Materialize(
                MaterializeError::Gap { .. }
                | MaterializeError::Missing { .. }
                | MaterializeError::Grow { .. },
            )) => {
                self.rebuild()?;
                self.apply_through(reader, commit)
            }
            other => other,
        }
    }

    fn apply_through(&mut self, reader: &Reader, commit: Lsn) -> Result<Lsn, ReplayError> {
        if commit <= self.applied {
            return Ok(self.applied);
        }
        let mut reached = self.applied;
        for record in reader.iter_from(self.applied.next())? {
            let record = record?;
            if record.lsn > commit {
                break;
            }
            if record.kind == RecordKind::App {
                let change =
                    Change::decode(record.payload()).map_err(|source| ReplayError::NotAChange {
                        lsn: record.lsn,
                        source,
                    })?;
                self.materializer.apply(&change)?;
            }
            reached = record.lsn;
        }
        if reached > self.applied {
            // Durable first, then recorded.
            self.materializer.sync()?;
            self.store(reached)?;
        }
        Ok(reached)
    }

    /// Removes every followed file, then restores the newest snapshot if there is one
    /// ([`Replay::set_base`]); the directory is then at its LSN (else empty, at 0).
    pub fn rebuild(&mut self) -> Result<(), ReplayError> {
        let dir = self.materializer.dir().to_path_buf();
        super::materialize::remove_followed(&dir).map_err(|source| ReplayError::State {
            path: dir.clone(),
            source,
        })?;
        // The removals are durable before the state says so.
        wal::fs::sync_dir(&dir).map_err(|e| ReplayError::State {
            path: dir.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.store(Lsn::ZERO)?;
        self.dirty = false;
        match &self.base {
            Some((lsn, path)) => {
                tracing::info!(dir = %dir.display(), snapshot_lsn = %lsn, snapshot = %path.display(), "rebuilding the followed directory from a snapshot and the log after it")
            }
            None => {
                tracing::info!(dir = %dir.display(), "rebuilding the followed directory from the whole log")
            }
        }
        if let Some((lsn, path)) = self.base.clone() {
            // Restored and durable before the state says `lsn`; a crash in between leaves
            // state 0 and a directory that is not the log's, which the next catch-up rebuilds.
            super::snapshot::restore_dir(&path, &mut self.materializer)
                .map_err(|source| ReplayError::Snapshot { lsn, source })?;
            self.materializer.sync()?;
            self.store(lsn)?;
        }
        Ok(())
    }

    fn store(&mut self, lsn: Lsn) -> Result<(), ReplayError> {
        self.write_state(&lsn.get().to_string())?;
        self.applied = lsn;
        Ok(())
    }

    fn write_state(&self, text: &str) -> Result<(), ReplayError> {
        wal::fs::write_atomic(&self.state_path, text.as_bytes()).map_err(|e| ReplayError::State {
            path: self.state_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::materialize::read_dir_contents;
    use bytes::Bytes;
    use wal::{Epoch, Options, Wal};

    fn append(name: &str, offset: u64, data: &'static [u8]) -> Vec<u8> {
        Change::Append {
            name: Bytes::copy_from_slice(name.as_bytes()),
            offset,
            data: Bytes::from_static(data),
        }
        .encode()
        .to_vec()
    }

    /// Committed records reach the directory and the state file; records above the commit
    /// LSN do not; a directory that got ahead of its state file (a crash between the sync
    /// and the record) is rebuilt and ends up right.
    #[test]
    fn committed_changes_are_materialized_and_a_directory_ahead_is_rebuilt() {
        let root = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(root.path().join("wal"), Options::default()).unwrap();
        let payloads = [
            append("aof", 0, b"SET a 1\n"),
            append("aof", 8, b"SET b 2\n"),
            Change::Install {
                name: Bytes::from_static(b"manifest"),
                data: Bytes::from_static(b"aof\n"),
            }
            .encode()
            .to_vec(),
            append("aof", 16, b"SET c 3\n"),
        ];
        wal.append(Epoch(1), RecordKind::EpochStart, [&[][..]])
            .unwrap();
        wal.append(Epoch(1), RecordKind::App, payloads.iter().map(|p| &p[..]))
            .unwrap();
        wal.sync().unwrap();
        let reader = wal.reader();
        let dir = root.path().join("data");
        let state = root.path().join("materialized");
        let mut replay = Replay::open(&dir, &state).unwrap();
        assert_eq!(replay.catch_up(&reader, Lsn(4)).unwrap(), Lsn(4));
        let files = read_dir_contents(&dir).unwrap();
        assert_eq!(files[&b"aof".to_vec()], b"SET a 1\nSET b 2\n");
        assert_eq!(files[&b"manifest".to_vec()], b"aof\n");
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "4");

        // A crash after applying record 5 but before recording it: the directory is ahead.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("aof"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"SET c 3\n"))
            .unwrap();
        let mut replay = Replay::open(&dir, &state).unwrap();
        assert_eq!(replay.applied(), Lsn(4));
        assert_eq!(replay.catch_up(&reader, Lsn(5)).unwrap(), Lsn(5));
        let files = read_dir_contents(&dir).unwrap();
        assert_eq!(files[&b"aof".to_vec()], b"SET a 1\nSET b 2\nSET c 3\n");
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "5");
    }

    /// A record damaged on disk (one byte of its payload flipped) is detected by its
    /// checksum and never applied: the changes before it are, it and those after it are not.
    #[test]
    fn a_damaged_record_is_detected_and_not_materialized() {
        let root = tempfile::tempdir().unwrap();
        let wal_dir = root.path().join("wal");
        let (mut wal, _) = Wal::open(&wal_dir, Options::default()).unwrap();
        wal.append(Epoch(1), RecordKind::EpochStart, [&[][..]])
            .unwrap();
        for (offset, data) in [
            (0, &b"SET a 1\n"[..]),
            (8, b"SET b 2\n"),
            (16, b"SET c 3\n"),
        ] {
            let payload = Change::Append {
                name: Bytes::from_static(b"aof"),
                offset,
                data: Bytes::copy_from_slice(data),
            }
            .encode();
            wal.append(Epoch(1), RecordKind::App, [&payload[..]])
                .unwrap();
        }
        wal.sync().unwrap();
        // Flip one byte of the second change's data ("SET b 2" becomes "SET c 2").
        let segment = std::fs::read_dir(&wal_dir)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| std::fs::read(p).is_ok_and(|bytes| find(&bytes, b"SET b 2").is_some()))
            .expect("the segment holding the record");
        let mut bytes = std::fs::read(&segment).unwrap();
        let at = find(&bytes, b"SET b 2").unwrap() + 4;
        bytes[at] ^= 0x01;
        std::fs::write(&segment, &bytes).unwrap();

        let dir = root.path().join("data");
        let mut replay = Replay::open(&dir, &root.path().join("state")).unwrap();
        let error = replay.catch_up(&wal.reader(), Lsn(4)).unwrap_err();
        assert!(matches!(error, ReplayError::Log(_)), "{error}");
        let files = read_dir_contents(&dir).unwrap();
        let aof = files.get(b"aof".as_slice()).cloned().unwrap_or_default();
        assert!(
            aof.is_empty() || aof == b"SET a 1\n",
            "the damaged record or one after it reached the directory: {:?}",
            String::from_utf8_lossy(&aof)
        );
        assert!(replay.applied() < Lsn(3));
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// A record that is not a change is refused with its LSN, never applied.
    #[test]
    fn a_record_that_is_not_a_change_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(root.path().join("wal"), Options::default()).unwrap();
        wal.append(Epoch(1), RecordKind::App, [&b"not a change"[..]])
            .unwrap();
        wal.sync().unwrap();
        let mut replay =
            Replay::open(&root.path().join("data"), &root.path().join("state")).unwrap();
        let error = replay.catch_up(&wal.reader(), Lsn(1)).unwrap_err();
        assert!(
            matches!(error, ReplayError::NotAChange { lsn: Lsn(1), .. }),
            "{error}"
        );
        assert!(read_dir_contents(&root.path().join("data"))
            .unwrap()
            .is_empty());
    }
}
