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
//!
//! The state file also holds what the directory held at `L`: each file's name, length and
//! CRC-32 (the materializer's [`Contents`]). A directory is checked against it when the
//! node starts, before it is promoted (before the application is started on it) and before
//! a snapshot is taken of it ([`Replay::check`]); one that differs (a file removed, cut,
//! grown or changed behind the sidecar's back, or the changes of a crash after `L`) is
//! rebuilt, never served or snapshotted. The format:
//!
//! ```text
//! <L>                                 (or "dirty": rebuild before anything is applied)
//! files <N>
//! <len> <crc32, 8 hex digits> <name in hex>     (N lines, one per file)
//! ```
//!
//! A state file without the `files` line (written before the contents were kept) names no
//! contents to check against, and its directory is rebuilt once.
//! A rebuild starts from the newest snapshot of the directory when there is one
//! ([`Replay::set_base`]), and must when the log no longer reaches back to what the
//! directory holds (a snapshot from the primary replaced it).

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use wal::format::RecordKind;
use wal::reader::Reader;

use super::change::{Change, ChangeError};
use super::materialize::{Contents, Depth, FileSum, MaterializeError, Materializer};
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
    #[error("{path} is damaged: {what} (remove it, and the directory it describes is rebuilt from the log)")]
    BadState { path: PathBuf, what: String },
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

/// [`Replay::applied`], shared: see [`Replay::applied_lsn`].
#[derive(Debug, Clone)]
pub struct AppliedLsn(Arc<AtomicU64>);

impl AppliedLsn {
    pub fn get(&self) -> Lsn {
        Lsn(self.0.load(Ordering::Acquire))
    }
}

/// The directory and how far it is materialized.
#[derive(Debug)]
pub struct Replay {
    materializer: Materializer,
    state_path: PathBuf,
    applied: Lsn,
    /// [`Replay::applied`], readable without the replay's lock ([`Replay::applied_lsn`]).
    shared: AppliedLsn,
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
    /// beside it, `<dir>.understudy-old-<unix seconds>` (with `-<n>` added when that name is
    /// taken; nothing is deleted), and
    /// [`Replay::moved_aside`] says where.
    ///
    /// A directory with a state file is checked against the contents it records
    /// ([`Replay::check`]); if it differs it is rebuilt on the first catch-up.
    pub fn open(dir: &Path, state_path: &Path) -> Result<Replay, ReplayError> {
        let materializer = Materializer::open(dir)?;
        let state = match std::fs::read_to_string(state_path) {
            Ok(text) => Some(parse_state(&text).map_err(|what| ReplayError::BadState {
                path: state_path.to_path_buf(),
                what,
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ReplayError::State {
                    path: state_path.to_path_buf(),
                    source,
                })
            }
        };
        let known = state.is_some();
        let (applied, contents) = state.unwrap_or((None, None));
        let start = applied.unwrap_or(Lsn::ZERO);
        let mut replay = Replay {
            materializer,
            state_path: state_path.to_path_buf(),
            applied: start,
            shared: AppliedLsn(Arc::new(AtomicU64::new(start.get()))),
            dirty: known && (applied.is_none() || contents.is_none()),
            moved_aside: None,
            base: None,
        };
        if !known {
            replay.move_aside()?;
            replay.store(Lsn::ZERO)?;
        } else if let Some(contents) = contents.filter(|_| !replay.dirty) {
            replay.materializer.set_contents(contents);
            if let Some(differs) = replay.check()? {
                tracing::warn!(error = %differs, "the copy of the followed directory is not what the log made of it; rebuilding it from the log");
            }
        } else if applied.is_some() {
            tracing::info!(dir = %dir.display(), "the followed directory's state file records no contents to check it against (an earlier version wrote it); rebuilding the directory from the log");
            replay.set_applied(Lsn::ZERO);
        }
        Ok(replay)
    }

    /// Checks the directory against what the log made of it (every file read: see
    /// [`Materializer::verify`]). One that differs is marked for a rebuild, durably (the
    /// state file says dirty), and its first difference returned; it counts as holding
    /// nothing ([`Replay::applied`] is 0) until rebuilt. A directory already marked is not
    /// read.
    pub fn check(&mut self) -> Result<Option<MaterializeError>, ReplayError> {
        self.check_to(Depth::Content)
    }

    /// [`Replay::check`] of names and lengths only (no file read).
    pub fn check_lengths(&mut self) -> Result<Option<MaterializeError>, ReplayError> {
        self.check_to(Depth::Lengths)
    }

    fn check_to(&mut self, depth: Depth) -> Result<Option<MaterializeError>, ReplayError> {
        if self.dirty {
            return Ok(None);
        }
        match self.materializer.verify(depth) {
            Ok(()) => Ok(None),
            Err(differs) => {
                self.differs_found()?;
                Ok(Some(differs))
            }
        }
    }

    /// The copy was found not to be what the log made of it (a check, or a snapshot's
    /// read): it holds nothing now, and the next catch-up rebuilds it.
    pub fn differs_found(&mut self) -> Result<(), ReplayError> {
        self.mark_dirty()
    }

    /// Writes the copy into `writer` as it is read and checked against what the log made of
    /// it ([`super::snapshot::write_dir`]): a snapshot of the copy at [`Replay::applied`].
    pub fn write_snapshot(
        &self,
        writer: &mut wal::snapshot::SnapshotWriter,
        stop: &std::sync::atomic::AtomicBool,
    ) -> Result<usize, super::snapshot::DirSnapshotError> {
        super::snapshot::write_dir(&self.materializer, writer, stop)
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
    /// next (a crash included), it is rebuilt before it is followed again. Until then it
    /// holds no state of the log: [`Replay::applied`] is 0, as a reopen of the state file
    /// says too, so that a standby (a demoted primary) rebuilds it at its first catch-up
    /// and nothing takes it for the log's state at the LSN it was caught up to.
    pub fn mark_dirty(&mut self) -> Result<(), ReplayError> {
        self.write_state(DIRTY)?;
        self.dirty = true;
        self.set_applied(Lsn::ZERO);
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
        let state = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReplayError::State { path, source }
        };
        // A directory of its own, never one an earlier move made (the same second, or a
        // clock set back): a rename into it would replace a file kept there.
        let mut tries = 0u32;
        let aside = loop {
            let mut aside = dir.clone().into_os_string();
            aside.push(format!(".understudy-old-{seconds}"));
            if tries > 0 {
                aside.push(format!("-{tries}"));
            }
            let aside = PathBuf::from(aside);
            match std::fs::create_dir(&aside) {
                Ok(()) => break aside,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 10_000 => {
                    tries += 1;
                }
                Err(e) => return Err(state(&aside)(e)),
            }
        };
        for name in &files {
            let name = std::ffi::OsStr::from_bytes(name);
            std::fs::rename(dir.join(name), aside.join(name)).map_err(state(&dir.join(name)))?;
        }
        // Both directories, and the new one's own name, durable before the state file says
        // the directory is empty: the files moved aside are kept, not deleted.
        let parent = wal::fs::parent(&aside).to_path_buf();
        for synced in [&aside, &dir, &parent] {
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

    /// [`Replay::applied`] as it changes, read without the replay's lock: the node's
    /// runtime never waits for the lock, which a snapshot or a rebuild holds for as long
    /// as it reads or writes the whole directory.
    pub fn applied_lsn(&self) -> AppliedLsn {
        self.shared.clone()
    }

    fn set_applied(&mut self, lsn: Lsn) {
        self.applied = lsn;
        self.shared.0.store(lsn.get(), Ordering::Release);
    }

    /// Applies every record after [`Replay::applied`] through `commit`, syncs, records the
    /// LSN reached. A directory that is not the log's is rebuilt (from the newest snapshot, or else LSN 1: the log must
    /// still hold it). Returns the LSN reached.
    ///
    /// Every catch-up first checks the names and lengths of the directory's files (no file
    /// read), so a copy that lost or cut a file while this node runs is rebuilt at the next
    /// commit, not only when it is next promoted, snapshotted or started.
    pub fn catch_up(&mut self, reader: &Reader, commit: Lsn) -> Result<Lsn, ReplayError> {
        if let Some(differs) = self.check_lengths()? {
            tracing::warn!(error = %differs, "the copy of the followed directory is not what the log made of it; rebuilding it from the log");
        }
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
        self.materializer.clear()?;
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
        use std::fmt::Write as _;
        let contents = self.materializer.contents();
        let mut text = format!("{}\nfiles {}\n", lsn.get(), contents.len());
        for (name, sum) in contents {
            let _ = write!(text, "{} {:08x} ", sum.len, sum.crc);
            for byte in name.iter() {
                let _ = write!(text, "{byte:02x}");
            }
            text.push('\n');
        }
        self.write_state(&text)?;
        self.set_applied(lsn);
        Ok(())
    }

    fn write_state(&self, text: &str) -> Result<(), ReplayError> {
        wal::fs::write_atomic(&self.state_path, text.as_bytes()).map_err(|e| ReplayError::State {
            path: self.state_path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

/// A state file's text: the LSN (`None` for "dirty") and the contents (`None` when the
/// file records none), or what is wrong with it.
fn parse_state(text: &str) -> Result<(Option<Lsn>, Option<Contents>), String> {
    let mut lines = text.lines();
    let first = lines.next().unwrap_or("").trim();
    if first == DIRTY {
        return Ok((None, None));
    }
    let lsn = first
        .parse::<u64>()
        .map_err(|_| format!("its first line {first:?} is neither an LSN nor {DIRTY:?}"))?;
    let Some(files) = lines.next() else {
        return Ok((Some(Lsn(lsn)), None));
    };
    let count = files
        .strip_prefix("files ")
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| format!("its second line {files:?} is not \"files <count>\""))?;
    let mut contents = Contents::new();
    for _ in 0..count {
        let line = lines
            .next()
            .ok_or_else(|| format!("it names fewer than the {count} files it announces"))?;
        let bad = || format!("the line {line:?} is not \"<len> <crc32> <name in hex>\"");
        let mut fields = line.split(' ');
        let (Some(len), Some(crc), Some(name), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let len = len.parse::<u64>().map_err(|_| bad())?;
        let crc = u32::from_str_radix(crc, 16).map_err(|_| bad())?;
        if name.is_empty() || name.len() % 2 != 0 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let name = (0..name.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&name[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| bad())?;
        contents.insert(bytes::Bytes::from(name), FileSum { len, crc });
    }
    if lines.next().is_some() {
        return Err(format!("it names more than the {count} files it announces"));
    }
    Ok((Some(Lsn(lsn)), Some(contents)))
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

    /// Files the node never materialized are moved aside, never over files an earlier move
    /// kept: two moves in the same second (or with the clock set back) get two directories.
    #[test]
    fn files_moved_aside_twice_in_a_second_are_all_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("appendonlydir");
        let state = root.path().join("follow-state");
        let mut asides = Vec::new();
        for content in [&b"first"[..], b"second", b"third"] {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("a.aof"), content).unwrap();
            let _ = std::fs::remove_file(&state);
            let replay = Replay::open(&dir, &state).unwrap();
            let aside = replay.moved_aside().unwrap().to_path_buf();
            assert!(!asides.contains(&aside), "{} used twice", aside.display());
            asides.push(aside);
            assert!(read_dir_contents(&dir).unwrap().is_empty());
        }
        for (aside, content) in asides.iter().zip([&b"first"[..], b"second", b"third"]) {
            assert_eq!(std::fs::read(aside.join("a.aof")).unwrap(), content);
        }
    }

    /// A directory handed to the application (a promotion) holds no state of the log from
    /// then on, in memory as on disk: applied is 0 at once, and the next catch-up (a
    /// demoted node's first) rebuilds it, whatever the application wrote, even with no
    /// new commit to apply.
    #[test]
    fn a_directory_marked_dirty_holds_nothing_until_rebuilt() {
        let root = tempfile::tempdir().unwrap();
        let (_wal, reader, dir, state, mut replay) = opened(root.path());
        assert_eq!(replay.catch_up(&reader, Lsn(4)).unwrap(), Lsn(4));
        let shared = replay.applied_lsn();
        replay.mark_dirty().unwrap();
        assert_eq!(replay.applied(), Lsn::ZERO);
        assert_eq!(shared.get(), Lsn::ZERO);
        assert_eq!(
            Replay::open(&dir, &state).unwrap().applied(),
            replay.applied(),
            "memory and the state file disagree"
        );
        // The application writes; the node is demoted with nothing new committed.
        std::fs::write(dir.join("aof"), b"SET a 1\nSET x uncommitted\n").unwrap();
        assert_eq!(replay.catch_up(&reader, Lsn(4)).unwrap(), Lsn(4));
        assert_eq!(
            read_dir_contents(&dir).unwrap()[&b"aof".to_vec()],
            b"SET a 1\nSET b 2\n"
        );
        assert_eq!(first_line(&state), "4");
    }

    /// Committed records reach the directory and the state file; records above the commit
    /// LSN do not; a directory that got ahead of its state file (a crash between the sync
    /// and the record) is rebuilt and ends up right.
    #[test]
    fn committed_changes_are_materialized_and_a_directory_ahead_is_rebuilt() {
        let root = tempfile::tempdir().unwrap();
        let (_wal, reader, dir, state, mut replay) = opened(root.path());
        assert_eq!(replay.catch_up(&reader, Lsn(4)).unwrap(), Lsn(4));
        let files = read_dir_contents(&dir).unwrap();
        assert_eq!(files[&b"aof".to_vec()], b"SET a 1\nSET b 2\n");
        assert_eq!(files[&b"man\xffifest".to_vec()], b"aof\n");
        assert_eq!(first_line(&state), "4");
        drop(replay);
        // Reopened as it is: it checks out.
        let mut replay = Replay::open(&dir, &state).unwrap();
        assert_eq!(replay.applied(), Lsn(4));
        assert!(replay.check().unwrap().is_none());
        drop(replay);

        // A crash after applying record 5 but before recording it: the directory is ahead,
        // which the check at open finds (the aof is longer than recorded).
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("aof"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"SET c 3\n"))
            .unwrap();
        let mut replay = Replay::open(&dir, &state).unwrap();
        assert_eq!(replay.applied(), Lsn::ZERO);
        assert_eq!(std::fs::read_to_string(&state).unwrap(), DIRTY);
        assert_eq!(replay.catch_up(&reader, Lsn(5)).unwrap(), Lsn(5));
        let files = read_dir_contents(&dir).unwrap();
        assert_eq!(files[&b"aof".to_vec()], b"SET a 1\nSET b 2\nSET c 3\n");
        assert_eq!(first_line(&state), "5");
    }

    fn first_line(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().next().unwrap_or("").to_string()
    }

    /// A log of three appends and an installed file, synced, and its reader.
    fn small_log(root: &Path) -> (Wal, Reader) {
        let (mut wal, _) = Wal::open(root.join("wal"), Options::default()).unwrap();
        let payloads = [
            append("aof", 0, b"SET a 1\n"),
            append("aof", 8, b"SET b 2\n"),
            Change::Install {
                name: Bytes::from_static(b"man\xffifest"),
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
        (wal, reader)
    }

    /// [`small_log`] under `root`, and a replay of a directory beside it.
    fn opened(root: &Path) -> (Wal, Reader, PathBuf, PathBuf, Replay) {
        let (wal, reader) = small_log(root);
        let dir = root.join("data");
        let state = root.join("materialized");
        let replay = Replay::open(&dir, &state).unwrap();
        (wal, reader, dir, state, replay)
    }

    /// Each way a copy can be damaged behind the sidecar's back while its state file
    /// survives: found by the check at open, or by a later check of a running replay, and
    /// rebuilt to exactly the log's directory.
    #[test]
    fn a_copy_damaged_behind_the_sidecars_back_is_found_and_rebuilt() {
        for (what, damage) in crate::follow::tests::copy_damages() {
            for running in [false, true] {
                let root = tempfile::tempdir().unwrap();
                let (_wal, reader, dir, state, mut replay) = opened(root.path());
                assert_eq!(replay.catch_up(&reader, Lsn(5)).unwrap(), Lsn(5));
                let want = read_dir_contents(&dir).unwrap();
                let mut replay = if running {
                    damage(&dir);
                    let differs = replay.check().unwrap();
                    assert!(differs.is_some(), "{what}, running: not found");
                    replay
                } else {
                    drop(replay);
                    damage(&dir);
                    Replay::open(&dir, &state).unwrap()
                };
                assert_eq!(replay.applied(), Lsn::ZERO, "{what}, running {running}");
                assert_eq!(std::fs::read_to_string(&state).unwrap(), DIRTY);
                assert_eq!(replay.catch_up(&reader, Lsn(5)).unwrap(), Lsn(5));
                assert_eq!(
                    read_dir_contents(&dir).unwrap(),
                    want,
                    "{what}, running {running}"
                );
                assert!(
                    replay.check().unwrap().is_none(),
                    "{what}: rebuilt, still differs"
                );
            }
        }
    }

    /// A state file from before the contents were recorded (the LSN alone) has its
    /// directory rebuilt once; a damaged one is refused with an error, never a panic.
    #[test]
    fn an_old_state_file_is_rebuilt_and_a_damaged_one_refused() {
        let root = tempfile::tempdir().unwrap();
        let (_wal, reader, dir, state, mut replay) = opened(root.path());
        assert_eq!(replay.catch_up(&reader, Lsn(5)).unwrap(), Lsn(5));
        drop(replay);
        std::fs::write(&state, "5").unwrap();
        let mut replay = Replay::open(&dir, &state).unwrap();
        assert_eq!(replay.applied(), Lsn::ZERO);
        assert_eq!(replay.catch_up(&reader, Lsn(5)).unwrap(), Lsn(5));
        assert!(replay.check().unwrap().is_none());
        drop(replay);
        let good = std::fs::read_to_string(&state).unwrap();
        assert!(good.starts_with("5\nfiles 2\n"), "{good:?}");
        for bad in [
            "five",
            "5\nfiles two\n",
            "5\nfiles 2\n24 00000000 616f66\n",
            "5\nfiles 1\n24 zz 616f66\n",
            "5\nfiles 1\n24 00000000 6\u{e9}\n",
            "5\nfiles 1\n24 00000000 616f66 extra\n",
            "5\nfiles 0\n24 00000000 616f66\n",
        ] {
            std::fs::write(&state, bad).unwrap();
            match Replay::open(&dir, &state) {
                Err(ReplayError::BadState { .. }) => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
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
