//! The node's data directory: its lock, its identity check, the node metadata (epoch and
//! vote), and the WAL behind its group-commit writer thread.
//!
//! ```text
//! <data-dir>/
//!   lock        held (flock) while a node runs here: a second node on the same dir is refused
//!   meta        node id, cluster id, epoch, vote (wal/FORMAT.md, "Node metadata")
//!   fresh       present while a node that started without `meta` (a new or wiped data dir)
//!               has not finished its vote quarantine (`core::Start::Fresh`); empty
//!   wal/        the log segments
//!   snapshots/  the newest snapshots (`super::snapshot`)
//! ```
//!
//! Disk work never runs on the async worker threads: WAL writes and fsyncs happen on the
//! writer's own thread (which batches everything queued while its last fsync ran), and
//! durability comes back through a watch channel. Metadata is persisted synchronously by the
//! core loop under `block_in_place`: it happens once per election, and the core holds back
//! every message that depends on it until it is done.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wal::meta::Meta;
use wal::writer::{Progress, Writer, WriterOptions};
use wal::{Epoch, Lsn, NodeId, SyncPolicy, Wal};

use crate::config::FsyncMode;
use crate::core::{PersistedMeta, RecoveredLog, Start};

/// The marker of an unfinished vote quarantine (see [`Opened::start`]).
const FRESH_FILE_NAME: &str = "fresh";

/// Why the data directory cannot be used. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("data dir {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("data dir {} is in use by another understudy process (its lock is held)", .path.display())]
    Locked { path: PathBuf },
    #[error("data dir {} belongs to node {found}, not node {expected}; use that node's id or another data dir", .path.display())]
    OtherNode {
        path: PathBuf,
        found: NodeId,
        expected: NodeId,
    },
    #[error("data dir {} belongs to another cluster (cluster id {found:016x}, this cluster's secret gives {expected:016x}); use the right --cluster-secret-file or another data dir", .path.display())]
    OtherCluster {
        path: PathBuf,
        found: u64,
        expected: u64,
    },
    #[error("data dir {}: the log starts at lsn {first_lsn} but no snapshot covers the records before it; refusing to start with records missing (restore the snapshots, or empty the data dir to rejoin from the primary)", .path.display())]
    MissingSnapshot { path: PathBuf, first_lsn: Lsn },
    #[error("data dir {}: the log starts at lsn {first_lsn} but the newest usable snapshot covers only through lsn {snapshot_lsn}; refusing to start with records missing (restore the snapshots, or empty the data dir to rejoin from the primary)", .path.display())]
    LogGap {
        path: PathBuf,
        first_lsn: Lsn,
        snapshot_lsn: Lsn,
    },
    #[error(transparent)]
    Wal(#[from] wal::Error),
}

/// An open data directory.
pub struct DataDir {
    path: PathBuf,
    meta_path: PathBuf,
    meta: Meta,
    fresh_path: PathBuf,
    /// Held for the life of the node; dropping it releases the flock.
    _lock: File,
}

/// Everything the node needs from its disk at start-up.
pub struct Opened {
    pub dir: DataDir,
    pub writer: Writer,
    pub durable: watch::Receiver<Progress>,
    pub recovered: RecoveredLog,
    pub recovery: wal::log::Recovery,
    pub persisted: PersistedMeta,
    /// `Fresh` when this start created the node's `meta` from nothing (a new or wiped data
    /// dir), or an earlier such start did not finish its quarantine.
    pub start: Start,
    /// The snapshots in use (the log continues after the last one), and how many were
    /// found damaged.
    pub snapshots: super::snapshot::Recovered,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |source| DiskError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DataDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Persists the epoch and vote (atomic install; see `wal::meta::Meta::store`).
    ///
    /// # Durability
    /// Returns only once the new file and its directory entry are fsynced.
    pub fn persist(&mut self, epoch: Epoch, voted_for: Option<NodeId>) -> Result<(), DiskError> {
        assert!(
            epoch >= self.meta.epoch,
            "the persisted epoch would go back from {} to {epoch}",
            self.meta.epoch
        );
        let meta = Meta {
            epoch,
            voted_for,
            ..self.meta
        };
        meta.store(&self.meta_path)?;
        self.meta = meta;
        Ok(())
    }

    /// The quarantine of a fresh start is over (`Action::QuarantineEnded`): the next start is
    /// `Start::Recovered`. Removing the marker is synced; should that fail to reach the disk,
    /// the next start waits once more, which is safe.
    pub fn quarantine_ended(&mut self) -> Result<(), DiskError> {
        match std::fs::remove_file(&self.fresh_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&self.fresh_path)(e)),
        }
        wal::fs::sync_dir(&self.path)?;
        Ok(())
    }
}

/// Opens (creating if needed) the data directory for `node_id` of cluster `cluster_id`:
/// takes its lock, checks or writes its identity, recovers the WAL and starts the writer.
pub fn open(
    path: &Path,
    node_id: NodeId,
    cluster_id: u64,
    fsync: FsyncMode,
    metrics: Arc<super::metrics::Metrics>,
) -> Result<Opened, DiskError> {
    open_with(
        path,
        node_id,
        cluster_id,
        fsync,
        metrics,
        wal::Options::default().segment_bytes_max,
    )
}

/// [`open`], with log segments rolled at `segment_bytes_max` (`--wal-segment-bytes`).
pub fn open_with(
    path: &Path,
    node_id: NodeId,
    cluster_id: u64,
    fsync: FsyncMode,
    metrics: Arc<super::metrics::Metrics>,
    segment_bytes_max: u64,
) -> Result<Opened, DiskError> {
    wal::fs::ensure_dir(path)?;
    let lock_path = path.join("lock");
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io(&lock_path))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(DiskError::Locked {
                path: path.to_owned(),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
    }

    let meta_path = path.join(wal::meta::META_FILE_NAME);
    let fresh_path = path.join(FRESH_FILE_NAME);
    let meta = match Meta::load(&meta_path)? {
        Some(meta) => {
            if meta.node_id != node_id {
                return Err(DiskError::OtherNode {
                    path: path.to_owned(),
                    found: meta.node_id,
                    expected: node_id,
                });
            }
            if meta.cluster_id != cluster_id {
                return Err(DiskError::OtherCluster {
                    path: path.to_owned(),
                    found: meta.cluster_id,
                    expected: cluster_id,
                });
            }
            meta
        }
        None => {
            // A new node, or one whose data dir was lost: it may have voted before and cannot
            // know. Mark the quarantine before `meta` exists, so that a crash between the two
            // still starts fresh next time.
            wal::fs::write_atomic(&fresh_path, &[])?;
            // Record whose data dir this is before anything else goes in it.
            let meta = Meta {
                node_id,
                cluster_id,
                epoch: Epoch::ZERO,
                voted_for: None,
                learner: false,
            };
            meta.store(&meta_path)?;
            meta
        }
    };

    let start = if fresh_path.exists() {
        Start::Fresh
    } else {
        Start::Recovered
    };

    let options = wal::Options {
        segment_bytes_max,
        ..wal::Options::default()
    };
    let (mut wal, recovery) = Wal::open(path.join("wal"), options)?;
    let snapshots = super::snapshot::recover(path, &mut wal)?;
    let recovered = open_recovered_log(&wal, snapshots.installed.last());
    let (durable_tx, durable) = watch::channel(Progress {
        written_lsn: wal.last_lsn(),
        durable_lsn: wal.durable_lsn(),
        durable_epoch: wal.last_epoch(),
        failed: false,
        sync_duration: None,
    });
    let durable_tx = Arc::new(durable_tx);
    let options = WriterOptions {
        sync: match fsync {
            FsyncMode::Always => SyncPolicy::Always,
            FsyncMode::Batch => SyncPolicy::Batch,
        },
        sync_interval: Duration::from_millis(10),
        ..WriterOptions::default()
    };
    let writer = Writer::spawn(
        wal,
        options,
        Some(Box::new(move |progress: Progress| {
            if let Some(took) = progress.sync_duration {
                metrics.fsync_latency.observe(took);
            }
            durable_tx.send_replace(progress);
        })),
    )?;
    Ok(Opened {
        persisted: PersistedMeta {
            epoch: meta.epoch,
            voted_for: meta.voted_for,
        },
        start,
        dir: DataDir {
            path: path.to_owned(),
            meta_path,
            meta,
            fresh_path,
            _lock: lock,
        },
        writer,
        durable,
        recovered,
        recovery,
        snapshots,
    })
}

/// The log as the core sees it: after the snapshot, if there is one (`snapshot::recover`
/// made the log continue it). Records the WAL still holds at or below the snapshot's LSN
/// are kept for backups and applications that read them, but the core starts after them.
fn open_recovered_log(wal: &Wal, snapshot: Option<&wal::snapshot::SnapshotInfo>) -> RecoveredLog {
    let (snapshot_lsn, snapshot_epoch) =
        snapshot.map_or((Lsn::ZERO, Epoch::ZERO), |s| (s.lsn, s.epoch));
    assert!(
        wal.first_lsn() <= snapshot_lsn.next(),
        "the log starts at {} after the snapshot at {snapshot_lsn}",
        wal.first_lsn()
    );
    assert!(
        wal.last_lsn() >= snapshot_lsn,
        "the log ends at {} before the snapshot at {snapshot_lsn}",
        wal.last_lsn()
    );
    let mut epoch_starts = Vec::new();
    let first = snapshot_lsn.next();
    if wal.last_lsn() >= first {
        // The log holds `first` (it starts at or before it and ends at or after it).
        let Some(epoch) = wal.epoch_at(first) else {
            unreachable!("the log holds lsn {first} but knows no epoch for it");
        };
        epoch_starts.push((epoch, first));
        epoch_starts.extend(
            wal.epoch_starts()
                .iter()
                .filter(|start| start.first_lsn > first)
                .map(|start| (start.epoch, start.first_lsn)),
        );
    }
    RecoveredLog {
        snapshot_lsn,
        snapshot_epoch,
        last_lsn: wal.last_lsn(),
        epoch_starts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second node cannot open a data dir that a running node holds, and a data dir keeps
    /// its identity: another node id or another cluster is refused by name.
    #[test]
    fn data_dir_is_locked_and_keeps_its_identity() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(
            dir.path(),
            NodeId(1),
            7,
            FsyncMode::Always,
            Default::default(),
        )
        .unwrap();
        let err = open(
            dir.path(),
            NodeId(1),
            7,
            FsyncMode::Always,
            Default::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, DiskError::Locked { .. }), "{err}");
        drop(first);
        let err = open(
            dir.path(),
            NodeId(2),
            7,
            FsyncMode::Always,
            Default::default(),
        )
        .err()
        .unwrap();
        assert!(matches!(err, DiskError::OtherNode { .. }), "{err}");
        let err = open(
            dir.path(),
            NodeId(1),
            8,
            FsyncMode::Always,
            Default::default(),
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("belongs to another cluster"),
            "{err}"
        );
        let mut again = open(
            dir.path(),
            NodeId(1),
            7,
            FsyncMode::Always,
            Default::default(),
        )
        .unwrap();
        again.dir.persist(Epoch(3), Some(NodeId(2))).unwrap();
        drop(again);
        let reopened = open(
            dir.path(),
            NodeId(1),
            7,
            FsyncMode::Always,
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            reopened.persisted,
            PersistedMeta {
                epoch: Epoch(3),
                voted_for: Some(NodeId(2))
            }
        );
    }

    /// A start that creates `meta` is fresh, and so is every start until the quarantine is
    /// recorded as over; a wiped data dir is fresh again.
    #[test]
    fn a_start_without_meta_is_fresh_until_the_quarantine_ends() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node");
        let open_node = || open(&node, NodeId(1), 7, FsyncMode::Always, Default::default());
        let first = open_node().unwrap();
        assert_eq!(first.start, Start::Fresh);
        drop(first);
        let mut again = open_node().unwrap();
        assert_eq!(
            again.start,
            Start::Fresh,
            "restarted before the quarantine ended"
        );
        again.dir.quarantine_ended().unwrap();
        drop(again);
        assert_eq!(open_node().unwrap().start, Start::Recovered);
        std::fs::remove_dir_all(&node).unwrap();
        assert_eq!(open_node().unwrap().start, Start::Fresh, "wiped");
    }
}
