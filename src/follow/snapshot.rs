//! Snapshots of the followed directory, in the node's snapshot format (`wal::snapshot`):
//! the body is the directory's files as changes that, applied in order to an empty
//! directory, rebuild it.
//!
//! ```text
//! body := frame*
//! frame := len u32 (little-endian) | one encoded Change (change.rs), len bytes
//! ```
//!
//! Each file is one `Install`, in name order; a long one is an install of its first piece
//! under its own name and appends of the rest (pieces of at most
//! [`PIECE_LEN_MAX`](super::change::PIECE_LEN_MAX); this build writes 4 MiB, the pieces it
//! reads the copy in, so that a snapshot never holds more than one in memory). Not the log's way
//! ([`Change::into_pieces`] builds a long file under `PART_NAME` and renames it): a
//! directory whose log stopped halfway through a long install holds a `PART_NAME` file of
//! its own, which restoring another long file through that name would overwrite. Nobody
//! reads the directory while it is restored, so a file need not appear whole at once.
//! Snapshots written the other way restore as they are. The snapshot file's own chunk
//! checksums and trailer cover the body; frames add none.
//!
//! A backup writes one of its copy of the directory at the LSN it has materialized (the
//! copy is exactly the committed log's state there); a primary, whose directory is the
//! application's, writes none. A node restores from one when its log no longer reaches
//! back to what its copy holds (a snapshot received from the primary replaced the log), and
//! whenever it rebuilds its copy (after serving, or a copy found not the log's): restoring
//! the newest snapshot and replaying the log after it is faster than replaying it all.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use bytes::{Buf, BytesMut};
use wal::snapshot::{SnapshotReader, SnapshotWriter};

use super::change::{Change, ChangeError};
use super::materialize::{MaterializeError, Materializer};

/// Why a snapshot of the directory could not be written or restored.
#[derive(Debug, thiserror::Error)]
pub enum DirSnapshotError {
    #[error("the snapshot file: {0}")]
    File(#[from] wal::Error),
    #[error("the snapshot's frame at body offset {offset} is not a change: {source}")]
    NotAChange {
        offset: u64,
        #[source]
        source: ChangeError,
    },
    #[error("the snapshot's body ends inside a frame")]
    Truncated,
    #[error(transparent)]
    Materialize(#[from] MaterializeError),
    #[error("stopped: this node is being promoted, and its promotion needs the directory")]
    Stopped,
}

/// Writes the materializer's copy of the directory into `writer` as frames, each piece as
/// it is read and checked ([`Materializer::read_checked`]: a file is an install of its first
/// piece and appends of the rest); returns how many files. Holds one piece in memory, never
/// the directory. On an error the writer holds a body that must not be finished: the caller
/// drops it (which removes its file).
///
/// Gives up with [`DirSnapshotError::Stopped`] once `stop` is set (checked before every
/// piece): a promotion waits for the directory, and a snapshot of a large one would hold up
/// the failover for as long as it takes to write.
pub fn write_dir(
    materializer: &Materializer,
    writer: &mut SnapshotWriter,
    stop: &AtomicBool,
) -> Result<usize, DirSnapshotError> {
    let written = materializer.read_checked(stop, |name, offset, data| {
        let piece = if offset == 0 {
            Change::Install {
                name: name.clone(),
                data,
            }
        } else {
            Change::Append {
                name: name.clone(),
                offset,
                data,
            }
        };
        let encoded = piece.encode();
        let len = u32::try_from(encoded.len())
            .unwrap_or_else(|_| unreachable!("a piece is at most PIECE_LEN_MAX bytes"));
        writer.write(&len.to_le_bytes())?;
        writer.write(&encoded)?;
        Ok(())
    });
    match written {
        Err(DirSnapshotError::Materialize(MaterializeError::Stopped)) => {
            Err(DirSnapshotError::Stopped)
        }
        other => other,
    }
}

/// Removes every followed file of the materializer's directory and applies the snapshot at
/// `path` to it (not synced: the caller syncs before it records the LSN).
pub fn restore_dir(path: &Path, materializer: &mut Materializer) -> Result<(), DirSnapshotError> {
    materializer.clear()?;
    let mut reader = SnapshotReader::open(path)?;
    let mut pending = BytesMut::new();
    // The body offset of `pending`'s first byte.
    let mut offset = 0u64;
    while let Some(chunk) = reader.next_chunk()? {
        pending.extend_from_slice(&chunk.data);
        loop {
            if pending.len() < 4 {
                break;
            }
            let len = u32::from_le_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
            if pending.len() < 4 + len {
                break;
            }
            pending.advance(4);
            let frame = pending.split_to(len).freeze();
            let change = Change::decode(frame)
                .map_err(|source| DirSnapshotError::NotAChange { offset, source })?;
            materializer.apply(&change)?;
            offset += 4 + len as u64;
        }
    }
    if !pending.is_empty() {
        return Err(DirSnapshotError::Truncated);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::follow::change::{PART_NAME, PIECE_LEN_MAX};
    use crate::follow::materialize::{contents_of, read_dir_contents};
    use wal::{Epoch, Lsn};

    /// A directory written into a snapshot and restored into another (which held other
    /// files) is equal to it, a file longer than a piece included.
    #[test]
    fn a_directory_round_trips_through_a_snapshot() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("manifest"), b"file base\n").unwrap();
        std::fs::write(dir.join("empty"), b"").unwrap();
        let big: Vec<u8> = (0..PIECE_LEN_MAX + 4321).map(|i| (i % 253) as u8).collect();
        std::fs::write(dir.join("base"), &big).unwrap();
        // Left by a log that stopped inside a long install: a file like any other here,
        // which restoring `base` must not overwrite.
        std::fs::write(dir.join(PART_NAME), &big[..PIECE_LEN_MAX + 10]).unwrap();
        let snapshots = root.path().join("snapshots");
        std::fs::create_dir(&snapshots).unwrap();
        let mut writer = SnapshotWriter::create(&snapshots, Lsn(42), Epoch(3)).unwrap();
        let mut source = Materializer::open(&dir).unwrap();
        source.set_contents(contents_of(&dir));
        assert_eq!(
            write_dir(&source, &mut writer, &AtomicBool::new(false)).unwrap(),
            4
        );
        let info = writer.finish().unwrap();

        let copy = root.path().join("copy");
        let mut materializer = Materializer::open(&copy).unwrap();
        std::fs::write(copy.join("stale"), b"not in the snapshot").unwrap();
        restore_dir(&info.path, &mut materializer).unwrap();
        materializer.sync().unwrap();
        assert_eq!(
            read_dir_contents(&copy).unwrap(),
            read_dir_contents(&dir).unwrap()
        );
    }

    /// A snapshot asked to stop (a promotion waits) gives up before its next piece and
    /// leaves no snapshot behind.
    #[test]
    fn a_snapshot_stops_when_asked_and_leaves_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("dir");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("appendonly.aof"), vec![7u8; 3 * PIECE_LEN_MAX]).unwrap();
        let snapshots = root.path().join("snapshots");
        std::fs::create_dir(&snapshots).unwrap();
        let mut writer = SnapshotWriter::create(&snapshots, Lsn(9), Epoch(1)).unwrap();
        let mut source = Materializer::open(&dir).unwrap();
        source.set_contents(contents_of(&dir));
        let stopped = write_dir(&source, &mut writer, &AtomicBool::new(true));
        assert!(
            matches!(stopped, Err(DirSnapshotError::Stopped)),
            "{stopped:?}"
        );
        drop(writer);
        assert_eq!(std::fs::read_dir(&snapshots).unwrap().count(), 0);
    }
}
