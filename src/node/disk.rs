//! The node's data directory: its lock, its identity check, the node metadata (epoch and
//! vote), and the WAL behind its group-commit writer thread.
//!
//! ```text
//! <data-dir>/
//!   lock        held (flock) while a node runs here: a second node on the same dir is refused
//!   meta        node id, cluster id, epoch, vote, learner and floor flags (wal/FORMAT.md,
//!               "Node metadata")
//!   fresh       present while a node that started without `meta` (a new or wiped data dir
//!               joining an existing cluster) has not finished its vote quarantine
//!               (`core::Start::quarantine`); empty
//!   fsync-failed  present after a write or fsync of the log failed: the LSN through which
//!               the log was durable before it (as `log-floor` holds one). The next start cuts the log there
//!               and starts as a learner (the page cache may hold records the disk lost).
//!               Written without fsync if its durable install fails (`wal::mark::install_marker`)
//!   log-floor   the highest LSN this log has reported durable (decimal, zero-padded, and
//!               its CRC-32): the log's durable mark (`wal::mark`), kept by the WAL writer
//!   vote-wait   the failover timeout the node last ran with, in nanoseconds (decimal and a
//!               newline), installed whole: its answers promised to refuse votes that long
//!               after receipt, so a start with a shorter one waits out the longer first
//!               ([`vote_wait_at_start`])
//!   members.json  the configuration in effect at the log's start, once the log no longer
//!               holds its record (`super::members`)
//!   snapshot-members.json  the configuration in effect at each of the newest snapshots,
//!               stored before the snapshot (`super::members`)
//!   wal/        the log segments
//!   snapshots/  the newest snapshots (`super::snapshot::store`)
//! ```
//!
//! # The log floor
//!
//! `meta` alone cannot tell a log that lost records from one that never had them: a `wal/`
//! directory wiped while `meta` survived, a segment deleted, a file truncated on a record's
//! boundary (which recovery cannot tell from the end of a log) all leave a shorter log that
//! looks whole, and a node that voted with it could elect a candidate that lacks a record
//! this node acknowledged. So the node keeps `log-floor`, the log's durable mark
//! ([`wal::mark`]): the WAL writer writes the durable LSN into it after every fsync, before
//! the core hears of it (so before any acknowledgement of those records leaves), and lowers
//! it, fsynced, before it cuts the log's end back (a divergent suffix, a reset to a
//! snapshot). A start whose log (after the newest snapshot, which the log continues) ends
//! below the floor, or whose floor file is damaged, or missing while `meta` records that it
//! is kept (`Meta::floor_kept`, stored once the floor is durable), starts as a learner, so
//! it votes again only once a primary has found it holding every committed record.
//!
//! Why a log in good order never ends below its floor: the floor is written only after the
//! records through it were fsynced, and comes down before any cut of the log; a snapshot
//! from the primary is installed only past the end of this node's log, and the log is then
//! reset to continue it (a start that finds the snapshot and the old log sees its end at
//! the snapshot's LSN at least). The ways left to end below it are the ones it is there to
//! catch. Between fsyncs of the floor file itself ([`keep_floor`], every
//! [`LOG_FLOOR_EVERY`] while it moves), a power loss can leave it older than the log (never
//! newer: the log's fsync comes first), so that only a process that died, not a machine,
//! has its latest value; what it cannot catch: a machine that lost its power and then the
//! log records of its last [`LOG_FLOOR_EVERY`], and a data dir of an earlier version that
//! lost the floor file before its first start on this one (its `meta` has no flag yet).
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
use wal::mark::{DurableMark, Installed};
use wal::meta::Meta;
use wal::writer::{Progress, Writer, WriterOptions};
use wal::{Epoch, Lsn, NodeId, SyncPolicy, Wal};

use crate::config::FsyncMode;
use crate::core::{PersistedMeta, RecoveredLog, Start};

/// The marker of an unfinished vote quarantine (see [`Opened::start`]).
const FRESH_FILE_NAME: &str = "fresh";
/// The failover timeout the node last ran with ([`vote_wait_at_start`]).
pub const VOTE_WAIT_FILE_NAME: &str = "vote-wait";
/// The marker of a paused node (`understudy pause`): no automatic failover.
pub const PAUSED_FILE_NAME: &str = "paused";
/// The marker of a failed log write or fsync (module docs).
pub(crate) const FSYNC_FAILED_FILE_NAME: &str = "fsync-failed";
/// The log floor (module docs, "The log floor").
pub const LOG_FLOOR_FILE_NAME: &str = "log-floor";
/// How often the log floor's file is fsynced while it moves (module docs): the WAL writer
/// writes it after every fsync of the log, without syncing it.
pub const LOG_FLOOR_EVERY: Duration = Duration::from_millis(200);

/// What an empty data directory is, as `--initial-cluster-state` says (etcd's flag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum InitialClusterState {
    /// A founding member of a new cluster: it holds nothing, so it is a voter from its first
    /// start (after the vote quarantine every empty data dir waits out, in case it is a wiped
    /// one). A data dir that already holds state ignores this, and a
    /// founding member that hears of a cluster that already has a log turns learner at once
    /// (`core::election`, "Learners"), so a wiped node restarted with `new` by mistake does
    /// not vote with a log it lost.
    #[default]
    New,
    /// Joining (or rejoining, after its disk was lost) a cluster that exists: the node may
    /// have voted and held records before, so it starts as a learner and waits out the vote
    /// quarantine.
    Existing,
}

/// Why the data directory cannot be used. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{}: unreadable ({found:?}), so this node cannot know how long its answers before this start promised to refuse votes; if every node ran with the same --failover-timeout, remove the file and start again", .path.display())]
    VoteWaitDamaged { path: PathBuf, found: String },
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
    #[error("data dir {}: the log starts at lsn {first_lsn} but no snapshot covers the records before it; refusing to start with records missing (restore the snapshots, or empty the data dir and start it with --initial-cluster-state existing to rejoin from the primary)", .path.display())]
    MissingSnapshot { path: PathBuf, first_lsn: Lsn },
    #[error("data dir {}: the log starts at lsn {first_lsn} but the newest usable snapshot covers only through lsn {snapshot_lsn}; refusing to start with records missing (restore the snapshots, or empty the data dir and start it with --initial-cluster-state existing to rejoin from the primary)", .path.display())]
    LogGap {
        path: PathBuf,
        first_lsn: Lsn,
        snapshot_lsn: Lsn,
    },
    #[error("{}: the node's epoch and vote are unreadable ({detail}); it must not vote from a guess. Move the file aside and start the node again: it keeps its log, starts as a learner and waits out the vote quarantine before it votes", .path.display())]
    MetaDamaged { path: PathBuf, detail: String },
    #[error("data dir {}: {reason}", .path.display())]
    Members { path: PathBuf, reason: String },
    #[error("data dir {}: the log does not continue the newest snapshot (lsn {snapshot_lsn}: one received from the primary just before a stop, a log cut back after a failed fsync, or the log was deleted), and the configuration in effect at that snapshot was not stored with it ({} is missing or has no entry for that snapshot); refusing to start with a member set that may be stale (empty the data dir and start it with --initial-cluster-state existing to rejoin from the primary)", .path.display(), super::members::SNAPSHOT_MEMBERS_FILE)]
    SnapshotWithoutMembers { path: PathBuf, snapshot_lsn: Lsn },
    #[error(transparent)]
    Wal(#[from] wal::Error),
}

/// An open data directory.
pub struct DataDir {
    path: PathBuf,
    meta_path: PathBuf,
    meta: Meta,
    fresh_path: PathBuf,
    fsync_failed_path: PathBuf,
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
    /// How the node takes part in elections: a learner when it cannot vouch for its log or
    /// votes, quarantined when its `meta` was created from nothing for an existing cluster
    /// (or an earlier such start did not finish its quarantine).
    pub start: Start,
    /// Why the node starts as a learner, for the log; `None` for a voter.
    pub learner_reason: Option<String>,
    /// The snapshots in use (the log continues after the last one), and how many were
    /// found damaged.
    pub snapshots: super::snapshot::store::Recovered,
    /// The configurations of the log with their addresses: the one at its start (from
    /// `members.json`, when the log no longer holds its record) and every config record.
    pub members: super::members::Book,
    /// The log floor (module docs), kept by the writer; [`keep_floor`] fsyncs it.
    pub floor: Arc<DurableMark>,
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

    /// Where the log floor is kept (module docs, "The log floor").
    pub fn floor_path(&self) -> PathBuf {
        self.path.join(LOG_FLOOR_FILE_NAME)
    }

    /// Persists the epoch and vote (atomic install; see `wal::meta::Meta::store`).
    ///
    /// # Durability
    /// Returns only once the new file and its directory entry are fsynced.
    pub fn persist(
        &mut self,
        epoch: Epoch,
        voted_for: Option<NodeId>,
        learner: bool,
    ) -> Result<(), DiskError> {
        assert!(
            epoch >= self.meta.epoch,
            "the persisted epoch would go back from {} to {epoch}",
            self.meta.epoch
        );
        let meta = Meta {
            epoch,
            voted_for,
            learner,
            ..self.meta
        };
        meta.store(&self.meta_path)?;
        self.meta = meta;
        Ok(())
    }

    /// A write or fsync of the log failed: record through which LSN the log was durable
    /// before it, so that the next start cuts what came after (the page cache may still hold
    /// those records while the disk lost them, and a later fsync would not say so) and starts
    /// as a learner. Called on the way out; the node stops acknowledging either way. A
    /// marker that cannot be installed durably is written without fsync
    /// ([`wal::mark::install_marker`]): a restart before a reboot still sees it.
    pub fn record_fsync_failure(&self, durable_lsn: Lsn) -> Result<Installed, DiskError> {
        Ok(wal::mark::install_marker(
            &self.fsync_failed_path,
            durable_lsn,
        )?)
    }

    /// The stamp of the pause stored here (`understudy pause`; the marker file
    /// [`PAUSED_FILE_NAME`] holds it), if automatic failover is paused. A marker whose
    /// content cannot be read as a stamp still means paused, with stamp 1.
    pub fn paused(&self) -> Option<u64> {
        let marker = self.path.join(PAUSED_FILE_NAME);
        if !marker.exists() {
            return None;
        }
        let stamp = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .unwrap_or(1);
        Some(stamp.max(1))
    }

    /// Stores the pause: the marker (holding the stamp) is installed atomically, or removed
    /// and the directory synced, so that a restart finds what the operator last asked for.
    pub fn store_paused(&self, paused: bool, stamp: u64) -> Result<(), DiskError> {
        let marker = self.path.join(PAUSED_FILE_NAME);
        if paused {
            wal::fs::write_atomic(&marker, format!("{stamp}\n").as_bytes())?;
            return Ok(());
        }
        match std::fs::remove_file(&marker) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(&marker)(e)),
        }
        wal::fs::sync_dir(&self.path)?;
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

/// How long this start must refuse votes beyond `failover_timeout`'s own wait: the failover
/// timeout the data dir last ran with, if it was longer (else zero), read from
/// [`VOTE_WAIT_FILE_NAME`].
///
/// Every answer a node sends says how long it refuses votes after receipt (its failover
/// timeout), and a primary counts the answer towards its lease for that long (`core::lease`).
/// A restart with a shorter timeout must still keep the longer promise of its earlier run,
/// which a primary may count on until then: so the file keeps the longer value until this
/// start has waited it out ([`record_vote_wait`], called by the caller after the returned
/// wait), and a crash before that finds it again. A longer or equal timeout is recorded at
/// once. Recorded before the node sends anything, with an atomic install (temp file, fsync,
/// rename, directory fsync).
pub fn vote_wait_at_start(dir: &Path, failover_timeout: Duration) -> Result<Duration, DiskError> {
    let path = dir.join(VOTE_WAIT_FILE_NAME);
    let previous = match std::fs::read_to_string(&path) {
        Ok(text) => match text.strip_suffix('\n').and_then(|t| t.parse::<u64>().ok()) {
            Some(ns) => Duration::from_nanos(ns),
            None => {
                return Err(DiskError::VoteWaitDamaged {
                    path,
                    found: text.chars().take(40).collect(),
                })
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Duration::ZERO,
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(DiskError::VoteWaitDamaged {
                path,
                found: "not UTF-8".into(),
            })
        }
        Err(e) => return Err(io(&path)(e)),
    };
    if previous > failover_timeout {
        return Ok(previous);
    }
    if previous != failover_timeout {
        record_vote_wait(dir, failover_timeout)?;
    }
    Ok(Duration::ZERO)
}

/// Records `failover_timeout` as the one this node runs with ([`vote_wait_at_start`]).
pub fn record_vote_wait(dir: &Path, failover_timeout: Duration) -> Result<(), DiskError> {
    let ns = u64::try_from(failover_timeout.as_nanos()).unwrap_or(u64::MAX);
    wal::fs::write_atomic(&dir.join(VOTE_WAIT_FILE_NAME), format!("{ns}\n").as_bytes())?;
    Ok(())
}

/// Opens (creating if needed, as a node joining an existing cluster) the data directory for
/// `node_id` of cluster `cluster_id`: takes its lock, checks or writes its identity, recovers
/// the WAL and starts the writer.
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
        InitialClusterState::Existing,
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
    initial: InitialClusterState,
) -> Result<Opened, DiskError> {
    open_rotating(
        path,
        node_id,
        (cluster_id, None),
        fsync,
        metrics,
        segment_bytes_max,
        initial,
    )
}

/// A data dir that other users of the machine may enter holds the application's data in
/// its log and snapshots for them to read: said at every start, as etcd does. Not refused:
/// the operator may mean it (an application of another user reading its socket there).
fn warn_if_not_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                data_dir = %path.display(),
                "the data dir is open to other users of this machine (mode {mode:o}); its log and snapshots hold the application's data: chmod 700 it (a data dir understudy creates is 700)"
            );
        }
    }
}

/// [`open_with`] during a secret rotation: `cluster_ids` is the current secret's cluster id
/// and the previous one's (`--previous-cluster-secret-file`); a data dir made under the
/// previous secret is taken, and moved to the current one.
pub fn open_rotating(
    path: &Path,
    node_id: NodeId,
    cluster_ids: (u64, Option<u64>),
    fsync: FsyncMode,
    metrics: Arc<super::metrics::Metrics>,
    segment_bytes_max: u64,
    initial: InitialClusterState,
) -> Result<Opened, DiskError> {
    let (cluster_id, previous) = cluster_ids;
    // Never equal to a stored id when there is no previous secret (ids of real secrets are
    // HMAC outputs; the stored one is checked for equality with `cluster_id` first).
    let previous_cluster_id = || previous.unwrap_or(cluster_id);
    wal::fs::ensure_dir(path)?;
    warn_if_not_private(path);
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

    // A predecessor killed between a rename (or a deletion) and the fsync of its directory
    // left a name only the page cache holds: this start would act on it (a vote stored in
    // `meta`, a segment cut away), and a power loss later could bring the old name back
    // under votes and acknowledgements already given. Make every name durable first. A
    // data dir without `meta` is new (nothing to make durable) or starts as a learner in
    // its vote quarantine (below), trusting nothing it holds.
    let meta_path = path.join(wal::meta::META_FILE_NAME);
    if meta_path.exists() {
        for dir in [
            path.to_owned(),
            path.join("wal"),
            path.join(super::snapshot::store::SNAPSHOTS_DIR),
        ] {
            if dir.is_dir() {
                wal::fs::sync_dir(&dir)?;
            }
        }
    }
    let fresh_path = path.join(FRESH_FILE_NAME);
    let fsync_failed_path = path.join(FSYNC_FAILED_FILE_NAME);
    let floor_path = path.join(LOG_FLOOR_FILE_NAME);
    let mut learner_reason = None;
    let loaded = match Meta::load(&meta_path) {
        Err(wal::Error::Corrupt { reason, .. }) => {
            return Err(DiskError::MetaDamaged {
                path: meta_path,
                detail: reason.to_string(),
            })
        }
        Err(wal::Error::BadMagic { found, .. }) => {
            return Err(DiskError::MetaDamaged {
                path: meta_path,
                detail: format!("not a metadata file: it starts {found:02x?}"),
            })
        }
        other => other?,
    };
    let mut meta = match loaded {
        Some(meta) => {
            if meta.node_id != node_id {
                return Err(DiskError::OtherNode {
                    path: path.to_owned(),
                    found: meta.node_id,
                    expected: node_id,
                });
            }
            if meta.cluster_id == cluster_id {
                meta
            } else if meta.cluster_id == previous_cluster_id() {
                // A secret rotation: the data dir was made under the previous secret. It
                // belongs to the new one from now on (stored atomically), so that the
                // previous secret can be dropped once every node has been restarted.
                let meta = Meta { cluster_id, ..meta };
                meta.store(&meta_path)?;
                tracing::info!(
                    "data dir moved from the previous cluster secret to the current one"
                );
                meta
            } else {
                return Err(DiskError::OtherCluster {
                    path: path.to_owned(),
                    found: meta.cluster_id,
                    expected: cluster_id,
                });
            }
        }
        None => {
            // Whatever the flag says, an empty data dir may be one that was wiped, whose
            // node voted before and cannot know: mark the vote quarantine before `meta`
            // exists, so that a crash between the two still starts fresh next time. A node
            // joining an existing cluster may also have held records: a learner.
            //
            // So is one whose data dir holds a log or snapshots without `meta`: `meta` is
            // stored before anything goes into `wal/` or `snapshots/`, so they were put
            // there by hand (`meta` deleted after damage, a log copied from another node).
            // Such a log may lack records this node acknowledged, and `--initial-cluster-state
            // new` means nothing to a data dir that holds state.
            let holds_state = holds_entries(&path.join("wal"))?
                || holds_entries(&path.join(super::snapshot::store::SNAPSHOTS_DIR))?;
            wal::fs::write_atomic(&fresh_path, &[])?;
            let joining = initial == InitialClusterState::Existing;
            if holds_state {
                learner_reason = Some(format!(
                    "its data dir holds a log or snapshots but no {} (deleted, or the log \
                     copied in): it cannot vouch for its log or its votes",
                    wal::meta::META_FILE_NAME
                ));
            } else if joining {
                learner_reason = Some("a new or wiped data dir joining an existing cluster".into());
            }
            // Record whose data dir this is before anything else goes in it.
            let meta = Meta {
                node_id,
                cluster_id,
                epoch: Epoch::ZERO,
                voted_for: None,
                learner: joining || holds_state,
                // Set once the floor is there (below).
                floor_kept: false,
            };
            meta.store(&meta_path)?;
            meta
        }
    };
    if meta.learner && learner_reason.is_none() {
        learner_reason = Some("it was a learner when it stopped".into());
    }

    // Recovery cuts a provably torn tail by itself. Anything else (a complete last record
    // that fails its check, a damaged record further back) may be a record this node
    // acknowledged: 1. open refusing it, nothing cut; 2. persist `meta` as a learner;
    // 3. open again, cutting the log just before the damage. A crash between 2 and 3 finds
    // the damage again and the learner flag already set; after 3 the node is a learner with
    // a shorter log, which it catches up from the primary.
    let options = wal::Options {
        segment_bytes_max,
        damage: wal::Damage::CutTornOnly,
        ..wal::Options::default()
    };
    let (mut wal, recovery) = match Wal::open(path.join("wal"), options.clone()) {
        Ok(opened) => opened,
        Err(damage @ (wal::Error::SuspectTail { .. } | wal::Error::Corrupt { .. })) => {
            learner_reason = Some(format!(
                "{damage}; the log is cut just before it, and the node catches up from the primary"
            ));
            store_learner(&mut meta, &meta_path)?;
            let options = wal::Options {
                damage: wal::Damage::CutAll,
                ..options
            };
            Wal::open(path.join("wal"), options)?
        }
        Err(e) => return Err(e.into()),
    };
    // After a failed write or fsync: 1. cut the log back to what was durable before it
    // (the cut is fsynced by `truncate_suffix`); 2. persist `meta` as a learner; 3. remove
    // the marker and fsync the directory. A crash before 3 repeats the whole sequence, which
    // is idempotent.
    if let Some(durable_lsn) = open_fsync_marker(&fsync_failed_path)? {
        let keep_through = durable_lsn.max(wal.first_lsn().prev());
        if keep_through < wal.last_lsn() {
            wal.truncate_suffix(keep_through)?;
        }
        learner_reason = Some(format!(
            "a write or fsync of its log failed before it stopped; records after lsn {durable_lsn} were cut"
        ));
    }
    if learner_reason.is_some() {
        store_learner(&mut meta, &meta_path)?;
    }
    if fsync_failed_path.exists() {
        std::fs::remove_file(&fsync_failed_path).map_err(io(&fsync_failed_path))?;
        wal::fs::sync_dir(path)?;
    }
    let snapshots = super::snapshot::store::recover(path, &mut wal)?;
    // The log floor (module docs): a log that ends below it lost records this node may
    // have acknowledged. The learner flag is stored before the node acts on anything; a
    // crash before that finds the same short log and the same floor again.
    match read_lsn_file(&floor_path)? {
        LsnFile::Absent if meta.floor_kept => add_reason(
            &mut learner_reason,
            format!(
                "{} is missing although its {} records that it keeps one, so the node \
                 cannot tell whether its log lost records",
                floor_path.display(),
                wal::meta::META_FILE_NAME
            ),
            ": deleted, with whatever of the log it guarded; the node catches up from the \
             primary",
        ),
        // A data dir that never kept one: a new one, or one of an earlier version.
        LsnFile::Absent => {}
        LsnFile::At(floor) => {
            if wal.last_lsn() < floor {
                let below = format!(
                    "its log ends at lsn {}, below lsn {floor}, through which it had reported \
                     its log durable ({})",
                    wal.last_lsn(),
                    floor_path.display()
                );
                // A cut made above (damage, a failed fsync) already says why the log is short.
                add_reason(
                    &mut learner_reason,
                    below,
                    ": segments deleted, truncated or wiped since; the node catches up from the \
                     primary",
                );
            }
        }
        LsnFile::Damaged => add_reason(
            &mut learner_reason,
            format!(
                "{} is damaged, so the node cannot tell whether its log lost records",
                floor_path.display()
            ),
            "",
        ),
    }
    if learner_reason.is_some() {
        store_learner(&mut meta, &meta_path)?;
    }
    // From here the floor is the log's: every record of it is durable (opening fsynced
    // them). A learner's flag is stored above, so a floor brought down to a short log's
    // end does not let it vote again.
    let floor = Arc::new(DurableMark::open(&floor_path, wal.durable_lsn())?);
    // The floor is durable (opened or installed, fsynced): from now on `meta` says it is
    // kept, so that a start that finds it missing knows it was lost. A crash before this
    // store finds the floor and stores it then.
    if !meta.floor_kept {
        meta = Meta {
            floor_kept: true,
            ..meta
        };
        meta.store(&meta_path)?;
    }
    let start = Start {
        learner: meta.learner,
        quarantine: fresh_path.exists(),
    };
    let (recovered, members) = open_recovered_log(path, &wal, snapshots.installed.last())?;
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
        mark: Some(Arc::clone(&floor)),
        failure_marker: Some(fsync_failed_path.clone()),
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
            learner: meta.learner,
        },
        start,
        learner_reason,
        dir: DataDir {
            path: path.to_owned(),
            meta_path,
            meta,
            fresh_path,
            fsync_failed_path,
            _lock: lock,
        },
        writer,
        durable,
        recovered,
        recovery,
        snapshots,
        members,
        floor,
    })
}

/// Adds `reason` to the learner reason: after the one already there, in parentheses, or
/// alone with `alone_tail` after it.
fn add_reason(learner_reason: &mut Option<String>, reason: String, alone_tail: &str) {
    *learner_reason = Some(match learner_reason.take() {
        Some(first) => format!("{first} ({reason})"),
        None => format!("{reason}{alone_tail}"),
    });
}

/// What a file holding one decimal LSN (the `fsync-failed` marker, the log floor) holds.
pub use wal::mark::MarkFile as LsnFile;

/// The log floor of the data directory `data_dir` (module docs, "The log floor").
pub fn log_floor(data_dir: &Path) -> Result<LsnFile, DiskError> {
    read_lsn_file(&data_dir.join(LOG_FLOOR_FILE_NAME))
}

fn read_lsn_file(path: &Path) -> Result<LsnFile, DiskError> {
    Ok(wal::mark::read(path)?)
}

/// Fsyncs the log floor (module docs) every [`LOG_FLOOR_EVERY`] while it moves, on a
/// blocking thread, and once more at `shutdown`. A sync that fails is logged and tried
/// again at the next tick, the value written again first (`DurableMark::sync`: the failed
/// sync may have dropped the page): the node goes on (the floor's latest value is in the page cache,
/// and only a power loss would lose it).
pub async fn keep_floor(floor: Arc<DurableMark>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(LOG_FLOOR_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        let last = tokio::select! {
            () = shutdown.cancelled() => true,
            _ = tick.tick() => false,
        };
        if floor.is_synced() {
            if last {
                return;
            }
            continue;
        }
        let syncing = Arc::clone(&floor);
        match tokio::task::spawn_blocking(move || syncing.sync()).await {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!(floor = %floor.value(), "log floor synced again");
                    failing = false;
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot sync the log floor; trying again");
                    failing = true;
                }
            }
            Err(e) => tracing::warn!(error = %e, "the log floor's sync did not finish"),
        }
        if last {
            return;
        }
    }
}

/// The durable LSN recorded by [`DataDir::record_fsync_failure`], if the marker is there.
fn open_fsync_marker(path: &Path) -> Result<Option<Lsn>, DiskError> {
    Ok(match wal::mark::read_installed(path)? {
        LsnFile::Absent => None,
        LsnFile::At(lsn) => Some(lsn),
        // Damaged: trust nothing after the start of the log.
        LsnFile::Damaged => Some(Lsn::ZERO),
    })
}

/// Whether directory `dir` exists and has anything in it.
fn holds_entries(dir: &Path) -> Result<bool, DiskError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Stores the learner flag in `meta` (atomic install) unless it is already set.
fn store_learner(meta: &mut Meta, meta_path: &Path) -> Result<(), DiskError> {
    if !meta.learner {
        *meta = Meta {
            learner: true,
            ..*meta
        };
        meta.store(meta_path)?;
    }
    Ok(())
}

/// The log as the core sees it: after the snapshot, if there is one (`snapshot::store::recover`
/// made the log continue it). Records the WAL still holds at or below the snapshot's LSN
/// are kept for backups and applications that read them, but the core starts after them.
///
/// The configurations: `members.json` (the one in effect at the log's start, once a cut
/// dropped its record) and every config record the WAL holds, decoded; the core is given
/// the one in effect at the snapshot and those after it.
fn open_recovered_log(
    path: &Path,
    wal: &Wal,
    snapshot: Option<&wal::snapshot::SnapshotInfo>,
) -> Result<(RecoveredLog, super::members::Book), DiskError> {
    let members_error = |reason: String| DiskError::Members {
        path: path.to_owned(),
        reason,
    };
    let mut book = super::members::Book::default();
    if let Some((lsn, record)) = super::members::load_start(path).map_err(members_error)? {
        book.entries.insert(lsn, record);
    }
    let mut records = wal.reader().iter_from(wal.first_lsn())?;
    for record in &mut records {
        let record = record?;
        if record.kind == wal::format::RecordKind::Config {
            let decoded = super::members::ConfigRecord::decode(&record.payload())
                .map_err(|e| members_error(format!("config record {}: {e}", record.lsn)))?;
            book.entries.insert(record.lsn, decoded);
        }
    }
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
    // The configuration at the snapshot, then the records after it; none known: the seed.
    let mut configs = Vec::new();
    if let Some((lsn, record)) = book.at(snapshot_lsn) {
        configs.push((lsn, record.members));
    }
    configs.extend(
        book.entries
            .range(snapshot_lsn.next()..)
            .map(|(&lsn, record)| (lsn, record.members)),
    );
    let recovered = RecoveredLog {
        snapshot_lsn,
        snapshot_epoch,
        last_lsn: wal.last_lsn(),
        epoch_starts,
        configs,
    };
    Ok((recovered, book))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens `dir` as a founding member would, with segments of `segment_bytes`.
    fn open_founding(dir: &Path, segment_bytes: u64) -> Result<Opened, DiskError> {
        open_with(
            dir,
            NodeId(1),
            7,
            FsyncMode::Always,
            Default::default(),
            segment_bytes,
            InitialClusterState::New,
        )
    }

    /// Appends `count` records of `payload` in epoch 1 and makes them durable.
    fn append_durable(opened: &Opened, count: usize, payload: &[u8]) {
        for _ in 0..count {
            opened
                .writer
                .append(Epoch(1), wal::format::RecordKind::App, [payload])
                .unwrap();
        }
        opened.writer.sync().unwrap();
    }

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
        again.dir.persist(Epoch(3), Some(NodeId(2)), false).unwrap();
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
                voted_for: Some(NodeId(2)),
                learner: false,
            }
        );
    }

    /// A start that creates `meta` for a node joining an existing cluster is a quarantined
    /// learner, and stays quarantined until the quarantine is recorded as over and a learner
    /// until the core is promoted; a wiped data dir starts over.
    #[test]
    fn a_wiped_data_dir_joining_a_cluster_is_a_quarantined_learner() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("node");
        let open_node = || open(&node, NodeId(1), 7, FsyncMode::Always, Default::default());
        let first = open_node().unwrap();
        assert_eq!(first.start, Start::WIPED);
        assert!(first.persisted.learner);
        drop(first);
        let mut again = open_node().unwrap();
        assert_eq!(
            again.start,
            Start::WIPED,
            "restarted before the quarantine ended"
        );
        again.dir.quarantine_ended().unwrap();
        drop(again);
        let mut third = open_node().unwrap();
        assert_eq!(third.start, Start::LEARNER, "not yet promoted");
        third.dir.persist(Epoch(2), None, false).unwrap();
        drop(third);
        assert_eq!(open_node().unwrap().start, Start::VOTER, "promoted");
        std::fs::remove_dir_all(&node).unwrap();
        assert_eq!(open_node().unwrap().start, Start::WIPED, "wiped");
    }

    /// The failover timeout a data dir last ran with: a longer one is kept (and returned, to
    /// be waited out) until recorded anew; a shorter or equal one is replaced at once; a
    /// damaged file is refused, never read as none.
    #[test]
    fn a_start_keeps_the_longer_vote_wait_of_the_run_before() {
        let dir = tempfile::tempdir().unwrap();
        let ms = Duration::from_millis;
        let recorded = || std::fs::read_to_string(dir.path().join(VOTE_WAIT_FILE_NAME)).unwrap();
        assert_eq!(
            vote_wait_at_start(dir.path(), ms(5000)).unwrap(),
            Duration::ZERO
        );
        assert_eq!(recorded(), "5000000000\n");
        // Restarted with a shorter timeout: its answers before promised 5 s.
        assert_eq!(vote_wait_at_start(dir.path(), ms(500)).unwrap(), ms(5000));
        assert_eq!(recorded(), "5000000000\n", "kept until waited out");
        // A crash before that: the next start waits it out again.
        assert_eq!(vote_wait_at_start(dir.path(), ms(500)).unwrap(), ms(5000));
        record_vote_wait(dir.path(), ms(500)).unwrap();
        assert_eq!(
            vote_wait_at_start(dir.path(), ms(500)).unwrap(),
            Duration::ZERO
        );
        assert_eq!(
            vote_wait_at_start(dir.path(), ms(800)).unwrap(),
            Duration::ZERO
        );
        assert_eq!(recorded(), "800000000\n");
        for damage in ["80000000", "5x0\n", "", "-1\n"] {
            std::fs::write(dir.path().join(VOTE_WAIT_FILE_NAME), damage).unwrap();
            let damaged = vote_wait_at_start(dir.path(), ms(500)).unwrap_err();
            assert!(
                matches!(damaged, DiskError::VoteWaitDamaged { .. }),
                "{damage:?}: {damaged}"
            );
        }
    }

    /// A founding member of a new cluster is a voter once the vote quarantine every empty
    /// data dir waits out is over; the flag means nothing to a data dir that holds state.
    #[test]
    fn a_founding_member_is_a_quarantined_voter_and_the_flag_is_ignored_later() {
        let dir = tempfile::tempdir().unwrap();
        let open_as = |initial| {
            open_with(
                dir.path(),
                NodeId(1),
                7,
                FsyncMode::Always,
                Default::default(),
                wal::Options::default().segment_bytes_max,
                initial,
            )
        };
        let mut first = open_as(InitialClusterState::New).unwrap();
        assert_eq!(
            first.start,
            Start {
                learner: false,
                quarantine: true
            }
        );
        first.dir.quarantine_ended().unwrap();
        drop(first);
        assert_eq!(
            open_as(InitialClusterState::Existing).unwrap().start,
            Start::VOTER,
            "the data dir holds state: the flag is ignored"
        );
    }

    /// A damaged `meta` is refused, and the way out it names is sound: a data dir whose
    /// `meta` is gone but whose log is not starts as a learner whatever
    /// `--initial-cluster-state` says: its log may lack records it acknowledged, and the
    /// epoch it voted in is taken from the log (the vote quarantine covers the rest).
    #[test]
    fn a_log_without_meta_is_a_quarantined_learner_even_for_a_new_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let mut first =
            open_founding(dir.path(), wal::Options::default().segment_bytes_max).unwrap();
        first.dir.quarantine_ended().unwrap();
        append_durable(&first, 3, b"x");
        drop(first);
        // A damaged `meta` is refused with what to do: move it aside.
        let meta = dir.path().join(wal::meta::META_FILE_NAME);
        std::fs::write(&meta, b"damaged").unwrap();
        let error = open_founding(dir.path(), wal::Options::default().segment_bytes_max)
            .err()
            .unwrap();
        assert!(matches!(error, DiskError::MetaDamaged { .. }), "{error}");
        assert!(error.to_string().contains("Move the file aside"), "{error}");
        std::fs::remove_file(&meta).unwrap();
        let again = open_founding(dir.path(), wal::Options::default().segment_bytes_max).unwrap();
        assert_eq!(again.start, Start::WIPED);
        assert!(again.persisted.learner);
        let reason = again.learner_reason.clone().unwrap();
        assert!(
            reason.contains("holds a log or snapshots but no meta"),
            "{reason}"
        );
        assert_eq!(again.recovered.last_lsn, Lsn(3), "the log is kept");
        drop(again);
        // The flag is stored: still a learner after a restart.
        let third = open_founding(dir.path(), wal::Options::default().segment_bytes_max).unwrap();
        assert!(third.start.learner);
    }

    /// After a failed fsync the next start cuts the log back to what was durable before the
    /// failure (the page cache may hold records the disk lost) and starts as a learner, once.
    #[test]
    fn a_start_after_an_fsync_failure_cuts_to_the_durable_lsn_and_is_a_learner() {
        let dir = tempfile::tempdir().unwrap();
        let open_node = || open_founding(dir.path(), wal::Options::default().segment_bytes_max);
        let mut first = open_node().unwrap();
        first.dir.quarantine_ended().unwrap();
        append_durable(&first, 5, b"x");
        first.dir.record_fsync_failure(Lsn(3)).unwrap();
        drop(first);
        let second = open_node().unwrap();
        assert_eq!(second.start, Start::LEARNER);
        assert_eq!(
            second.recovered.last_lsn,
            Lsn(3),
            "records after the durable LSN cut"
        );
        assert!(second.learner_reason.is_some());
        assert!(!dir.path().join(FSYNC_FAILED_FILE_NAME).exists());
        drop(second);
        let third = open_node().unwrap();
        assert_eq!(
            third.start,
            Start::LEARNER,
            "still a learner until promoted"
        );
        assert_eq!(third.recovered.last_lsn, Lsn(3), "cut once");
    }

    /// The only segment file of `dir`'s log.
    fn only_segment(dir: &Path) -> PathBuf {
        let mut segments: Vec<PathBuf> = std::fs::read_dir(dir.join("wal"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
            .collect();
        assert_eq!(segments.len(), 1, "one segment: {segments:?}");
        segments.remove(0)
    }

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    /// A log that lost records below its floor looks whole to recovery when it was cut on a
    /// record's boundary or wiped: the floor makes the node a learner all the same, and it
    /// stays one across a restart. A log that reaches its floor starts as it was.
    #[test]
    fn a_log_that_ends_below_its_floor_is_a_learner() {
        let dir = tempfile::tempdir().unwrap();
        let open_node = || open_founding(dir.path(), wal::Options::default().segment_bytes_max);
        let mut first = open_node().unwrap();
        first.dir.quarantine_ended().unwrap();
        assert_eq!(first.floor.value(), Lsn::ZERO, "no floor yet");
        append_durable(&first, 1, b"record");
        let segment = only_segment(dir.path());
        let one = file_len(&segment);
        append_durable(&first, 9, b"record");
        let record_len = (file_len(&segment) - one) / 9;
        // The writer raised the floor with every fsync.
        assert_eq!(log_floor(dir.path()).unwrap(), LsnFile::At(Lsn(10)));
        drop(first);

        let second = open_node().unwrap();
        assert_eq!(second.start, Start::VOTER, "the log reaches its floor");
        assert_eq!(second.floor.value(), Lsn(10));
        assert_eq!(second.learner_reason, None);
        drop(second);

        // Three records cut off on a record's boundary: recovery sees a whole log.
        let cut_to = file_len(&segment) - 3 * record_len;
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .set_len(cut_to)
            .unwrap();
        let third = open_node().unwrap();
        assert!(third.recovery.torn.is_none(), "nothing torn to see");
        assert_eq!(third.recovered.last_lsn, Lsn(7));
        assert_eq!(third.start, Start::LEARNER);
        let reason = third.learner_reason.clone().unwrap();
        assert!(
            reason.contains("ends at lsn 7, below lsn 10"),
            "the reason names both: {reason}"
        );
        drop(third);
        let fourth = open_node().unwrap();
        assert_eq!(fourth.start, Start::LEARNER, "stored before acting on it");
        drop(fourth);

        // The log directory and `meta` gone, the floor kept: a wiped data dir that says it
        // held records is a learner even as a founding member.
        std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
        std::fs::remove_file(dir.path().join(wal::meta::META_FILE_NAME)).unwrap();
        let mut fifth = open_node().unwrap();
        assert!(
            fifth.start.learner,
            "no meta and a floor above an empty log"
        );
        fifth.dir.quarantine_ended().unwrap();
        drop(fifth);
        let mut sixth = open_node().unwrap();
        sixth.dir.quarantine_ended().unwrap();
        assert_eq!(sixth.recovered.last_lsn, Lsn::ZERO);
        assert_eq!(sixth.start, Start::LEARNER);
    }

    /// A wiped `wal/` beside a surviving `meta` of a voter: a learner. A damaged floor file
    /// cannot vouch for the log either.
    #[test]
    fn a_wiped_log_or_a_damaged_floor_makes_a_learner() {
        let dir = tempfile::tempdir().unwrap();
        let open_node = || open_founding(dir.path(), wal::Options::default().segment_bytes_max);
        let mut first = open_node().unwrap();
        first.dir.quarantine_ended().unwrap();
        append_durable(&first, 4, b"record");
        let floor_path = first.dir.floor_path();
        drop(first);
        std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
        let second = open_node().unwrap();
        assert_eq!(second.recovered.last_lsn, Lsn::ZERO);
        assert_eq!(second.start, Start::LEARNER);
        drop(second);

        let dir = tempfile::tempdir().unwrap();
        let open_node = || open_founding(dir.path(), wal::Options::default().segment_bytes_max);
        let mut first = open_node().unwrap();
        first.dir.quarantine_ended().unwrap();
        append_durable(&first, 4, b"record");
        drop(first);
        std::fs::write(dir.path().join(floor_path.file_name().unwrap()), b"4x\n").unwrap();
        let second = open_node().unwrap();
        assert_eq!(second.start, Start::LEARNER);
        assert_eq!(
            second.floor.value(),
            Lsn(4),
            "a damaged floor is stored anew, at the log's end"
        );
        assert!(second.learner_reason.unwrap().contains("damaged"));
    }

    /// `meta` records that the data dir keeps a floor: the log and the floor deleted together
    /// (`meta` kept) make a learner, where a missing floor alone once passed unseen. A data
    /// dir whose `meta` does not say so (an earlier version's) starts as it was and is given
    /// the flag.
    #[test]
    fn a_floor_deleted_with_the_log_makes_a_learner() {
        let dir = tempfile::tempdir().unwrap();
        let open_node = || open_founding(dir.path(), wal::Options::default().segment_bytes_max);
        let meta_path = dir.path().join(wal::meta::META_FILE_NAME);
        let mut first = open_node().unwrap();
        first.dir.quarantine_ended().unwrap();
        assert!(Meta::load(&meta_path).unwrap().unwrap().floor_kept);
        append_durable(&first, 4, b"record");
        let floor_path = first.dir.floor_path();
        drop(first);

        // An earlier version's `meta` (no flag) and no floor: as it was.
        let old = Meta {
            floor_kept: false,
            ..Meta::load(&meta_path).unwrap().unwrap()
        };
        old.store(&meta_path).unwrap();
        std::fs::remove_file(&floor_path).unwrap();
        let second = open_node().unwrap();
        assert_eq!(second.start, Start::VOTER, "{:?}", second.learner_reason);
        assert!(Meta::load(&meta_path).unwrap().unwrap().floor_kept);
        assert_eq!(second.floor.value(), Lsn(4));
        drop(second);

        // The log and the floor deleted, `meta` kept.
        std::fs::remove_dir_all(dir.path().join("wal")).unwrap();
        std::fs::remove_file(&floor_path).unwrap();
        let third = open_node().unwrap();
        assert_eq!(third.recovered.last_lsn, Lsn::ZERO);
        assert_eq!(third.start, Start::LEARNER);
        let reason = third.learner_reason.clone().unwrap();
        assert!(reason.contains("is missing"), "{reason}");
        drop(third);
        let fourth = open_node().unwrap();
        assert_eq!(fourth.start, Start::LEARNER, "stored before acting on it");
    }

    /// The writer brings the floor down before it cuts a divergent suffix, so a log cut on
    /// purpose starts as a voter; records written after the cut raise it again.
    #[test]
    fn a_suffix_cut_lowers_the_floor_first() {
        let dir = tempfile::tempdir().unwrap();
        let open_node = || open_founding(dir.path(), wal::Options::default().segment_bytes_max);
        let mut first = open_node().unwrap();
        first.dir.quarantine_ended().unwrap();
        append_durable(&first, 10, b"record");
        assert_eq!(log_floor(dir.path()).unwrap(), LsnFile::At(Lsn(10)));
        let ticket = first.writer.queue_truncate_suffix(Lsn(6)).unwrap();
        first.writer.sync().unwrap();
        assert!(first.writer.control_done(ticket));
        assert_eq!(log_floor(dir.path()).unwrap(), LsnFile::At(Lsn(6)));
        drop(first);
        let second = open_node().unwrap();
        assert_eq!(second.recovered.last_lsn, Lsn(6));
        assert_eq!(second.start, Start::VOTER, "a cut on purpose is no loss");
        append_durable(&second, 3, b"again");
        assert_eq!(log_floor(dir.path()).unwrap(), LsnFile::At(Lsn(9)));
    }

    /// A complete last record that fails its check may be one this node acknowledged long ago
    /// (a latent sector error), not a torn write: the node cuts it and starts as a learner,
    /// and stays one across a restart (before: the record was cut as a torn tail and the node
    /// voted as if nothing had happened).
    #[test]
    fn a_start_that_cuts_a_suspect_tail_is_a_learner() {
        let dir = tempfile::tempdir().unwrap();
        let open_node = || open_founding(dir.path(), wal::Options::default().segment_bytes_max);
        let mut first = open_node().unwrap();
        first.dir.quarantine_ended().unwrap();
        append_durable(&first, 5, b"payload");
        drop(first);
        // Flip a byte inside the last record's payload: the record stays complete.
        let segment = std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "wal"))
            .unwrap();
        let mut bytes = std::fs::read(&segment).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 0x01;
        std::fs::write(&segment, &bytes).unwrap();
        let second = open_node().unwrap();
        assert_eq!(second.start, Start::LEARNER);
        assert_eq!(
            second.recovered.last_lsn,
            Lsn(4),
            "the suspect record is cut"
        );
        assert!(second.learner_reason.is_some());
        drop(second);
        assert_eq!(
            open_node().unwrap().start,
            Start::LEARNER,
            "and it stays a learner"
        );
    }

    /// A damaged record in the middle of the log (a sealed segment, say) no longer stops the
    /// node from starting: it cuts its log just before the damage and starts as a learner,
    /// which catches up from the primary.
    #[test]
    fn a_start_on_a_log_damaged_midway_cuts_it_there_and_is_a_learner() {
        let dir = tempfile::tempdir().unwrap();
        let open_node = || open_founding(dir.path(), 4096);
        let mut first = open_node().unwrap();
        first.dir.quarantine_ended().unwrap();
        append_durable(&first, 60, &[7u8; 300]);
        drop(first);
        let mut segments: Vec<_> = std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segments.sort();
        assert!(segments.len() >= 3, "{segments:?}");
        let mut bytes = std::fs::read(&segments[1]).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(&segments[1], &bytes).unwrap();
        let second = open_node().unwrap();
        assert_eq!(second.start, Start::LEARNER);
        assert!(second.recovered.last_lsn < Lsn(60));
        assert!(
            second.recovered.last_lsn > Lsn(5),
            "the records before the damage stay"
        );
        assert!(second
            .learner_reason
            .as_deref()
            .is_some_and(|r| r.contains("corrupt")));
    }
}
