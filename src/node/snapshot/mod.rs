//! Snapshots in the running node: asking the local application for them, storing them,
//! truncating the log behind them, streaming them to backups that need records the log no
//! longer holds, installing one received from the primary, and handing the newest one to
//! the application when it (re)starts.
//!
//! The pieces, one job to a file, and who runs them:
//! - [`Snapshots`] (this file), shared by the core loop, the app API, the peer transport and
//!   the admin server: the snapshots installed, a broken-off receive kept for resuming,
//!   transfer progress, and the channels that ask subscribed applications for a snapshot
//!   and tell them to restore.
//! - [`store`]: the files. [`store::recover`], at start-up (`disk::open`): picks the newest
//!   snapshot that verifies, moves damaged ones aside, and decides how the log continues
//!   after it.
//! - [`schedule`], a task: every `--snapshot-interval`, or after `--snapshot-after-bytes`
//!   of log, asks the application; if it does not answer, says so (log and metric) and the
//!   log is not truncated. It keeps the request, which an upload holds until it ends.
//! - [`app_api::snapshot`](super::app_api::snapshot), in the app API: the application's
//!   snapshot uploaded into a snapshot file, and the newest snapshot streamed to the
//!   application as `RestoreBegin`, `RestoreChunk`s and `RestoreEnd`.
//! - [`core_loop`]: `Shell::on_snapshot_event` (core loop): retention, truncation,
//!   installing a received snapshot, and the core's `SnapshotSent`/`SnapshotFailed`/
//!   `SnapshotInstalled` inputs.
//! - [`transfer`]: [`transfer::send`] (a task per backup) and [`transfer::receive`] (a peer
//!   connection): the transfer protocol of `proto::peer` ("Snapshot transfer"), windowed,
//!   resumable, every chunk verified.
//!
//! What they use of each other and of the rest of the node: [`store`] needs nothing of the
//! node but `disk::DiskError` and the configuration files of `members`, and `disk` needs
//! nothing here but [`store`]; [`schedule`] works on [`Snapshots`] alone; [`core_loop`] is
//! the core loop's side, and starts transfers; [`transfer`] dials through the peer
//! transport and is handed the snapshot connections it accepts (as `repair` is); the app
//! API's part uses [`Snapshots`], [`schedule`] and [`store`]. Nothing here uses the app API
//! or the node's handle.
//!
//! # Which records the log keeps
//!
//! The log always reaches back to the oldest snapshot kept, so that any kept snapshot plus
//! the log is the whole committed history: if the newest turns out damaged at start-up, the
//! one before it is used. Beyond that it keeps `--wal-retain-bytes` of log behind the newest
//! snapshot, so that a briefly lagging backup catches up from the log rather than by a
//! snapshot. Only whole segments are deleted. In the chain of LSNs:
//!
//! ```text
//! log first_lsn - 1  <=  oldest kept snapshot lsn  <=  newest snapshot lsn  <=  applied  <=  commit_lsn
//! ```
//!
//! Nothing here blocks the core loop for long: files are written and read on blocking
//! threads, one chunk at a time, so memory does not grow with a snapshot's size.

pub mod core_loop;
pub mod schedule;
pub mod store;
pub mod transfer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};
use wal::snapshot::{SnapshotInfo, SnapshotWriter};
use wal::{Epoch, Lsn, NodeId};

use store::{quarantine_file, Recovered, SNAPSHOTS_DIR};

/// The snapshot flags of `understudy run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotConfig {
    /// Ask the application for a snapshot this often (`--snapshot-interval`).
    pub interval: Duration,
    /// ...or once this many bytes of log were written since the last one
    /// (`--snapshot-after-bytes`).
    pub after_bytes: u64,
    /// Snapshots kept (`--snapshots-retain`, at least 1).
    pub retain: usize,
    /// Bytes of log kept behind the newest snapshot (`--wal-retain-bytes`).
    pub wal_retain_bytes: u64,
    /// Log segments are rolled at this size (`--wal-segment-bytes`); truncation deletes
    /// whole segments.
    pub wal_segment_bytes: u64,
    /// How far into its first cycle the node starts, in thousandths of `interval` and of
    /// `after_bytes` ([`stagger_phase`] of the node's id): its first snapshot comes that
    /// much sooner than a whole cycle after start, and the ones after it a cycle apart, so
    /// that the nodes of a cluster, started together and writing the same log, take theirs
    /// at different moments. 0: the first one a whole cycle in.
    pub phase_per_mille: u32,
}

/// The place of node `id` in the snapshot cycle, in thousandths (for
/// [`SnapshotConfig::phase_per_mille`]): the fractional part of `id` times the golden ratio,
/// which spreads any run of consecutive ids over the cycle with no two of them close
/// (1, 2, 3 get 618, 236 and 854).
///
/// Why stagger: a snapshot costs its node CPU (the encoding) and disk (writing and syncing
/// the whole state), and a commit waits for the primary and the fastest `--sync-replicas`
/// backups. When every node snapshots at the same log size, the primary and all its
/// backups are slowed at once and a commit has no fast backup to take; staggered, at most
/// one of them is.
pub fn stagger_phase(id: u16) -> u32 {
    // Fibonacci hashing: 2^64 / golden ratio, times the id, wraps to the fraction.
    let fraction = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((u128::from(fraction) * 1000) >> 64) as u32
}

impl Default for SnapshotConfig {
    fn default() -> SnapshotConfig {
        SnapshotConfig {
            interval: Duration::from_secs(600),
            after_bytes: 1 << 30,
            retain: 2,
            wal_retain_bytes: 64 << 20,
            wal_segment_bytes: wal::Options::default().segment_bytes_max,
            phase_per_mille: 0,
        }
    }
}

impl SnapshotConfig {
    /// How long the application has to start answering a snapshot request, and, during an
    /// upload, to send the next piece of it.
    pub fn answer_timeout(&self) -> Duration {
        self.interval
            .clamp(Duration::from_secs(1), Duration::from_secs(10))
    }
}

/// A transfer in progress, as `/status` shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TransferStatus {
    pub peer: u16,
    /// `sending` (this node is the primary) or `receiving`.
    pub direction: &'static str,
    pub lsn: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Where this attempt started (non-zero when it resumed a broken-off transfer).
    pub resumed_at: u64,
    pub rate_bytes_per_s: u64,
    pub eta_ms: Option<u64>,
}

/// The snapshot part of `/status`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SnapshotStatus {
    /// The newest snapshot's LSN (0 when none).
    pub snapshot_lsn: u64,
    pub snapshot_count: usize,
    /// Why the log is not being truncated, when the application does not answer.
    pub warning: Option<String>,
    /// The request to the application: `idle`, `asked` or `uploading`.
    pub request: &'static str,
    pub transfers: Vec<TransferStatus>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct SnapshotMetrics {
    pub taken: AtomicU64,
    pub requests_unanswered: AtomicU64,
    pub requests_declined: AtomicU64,
    /// Uploads of the application's snapshot that stalled or broke off before the end.
    pub uploads_abandoned: AtomicU64,
    pub installed_from_primary: AtomicU64,
    pub transfers_resumed: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub corrupt_found: AtomicU64,
    pub log_segments_truncated: AtomicU64,
}

impl SnapshotMetrics {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the core loop is told or asked (`Shell::on_snapshot_event`).
#[derive(Debug)]
pub enum Event {
    /// The local application's snapshot is installed and listed: apply the retention.
    Taken,
    /// A snapshot from the primary is installed on disk; put it in use if the core still
    /// wants it, and answer whether it did.
    Received {
        info: SnapshotInfo,
        /// The configuration in effect at the snapshot, and the LSN of its record.
        config: (Lsn, crate::node::members::ConfigRecord),
        reply: oneshot::Sender<bool>,
    },
    /// Whether the core wants the snapshot the primary offers.
    Wanted {
        lsn: Lsn,
        epoch: Epoch,
        reply: oneshot::Sender<bool>,
    },
    /// The transfer to `to` ended: delivered (installed or not wanted) through `lsn`, or failed.
    Sent {
        to: NodeId,
        delivered: Option<(Lsn, Epoch)>,
    },
    /// The epoch of the committed record at `lsn` and the configuration in effect at it,
    /// if the log still knows them.
    CommittedAt {
        lsn: Lsn,
        reply: oneshot::Sender<Option<Committed>>,
    },
}

/// A committed LSN as the core loop knows it ([`Event::CommittedAt`]).
#[derive(Debug)]
pub struct Committed {
    pub epoch: Epoch,
    /// The configuration in effect at the LSN: the LSN of its record, and the record
    /// (`None` before the cluster's first configuration record).
    pub config: Option<(Lsn, crate::node::members::ConfigRecord)>,
}

/// The scheduler's view of the current request to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// Nothing asked; ask again no earlier than this.
    Idle { not_before: Instant },
    /// Asked at this time; no answer yet.
    Asked { at: Instant },
    /// The application is streaming its snapshot through `lsn`; the
    /// [`schedule::UploadGuard`] with this `id` owns the request until the upload ends.
    Uploading { id: u64, lsn: Lsn },
}

impl Request {
    fn name(&self) -> &'static str {
        match self {
            Request::Idle { .. } => "idle",
            Request::Asked { .. } => "asked",
            Request::Uploading { .. } => "uploading",
        }
    }
}

/// A receive that broke off, kept to resume from (its temp file holds `body_len` bytes).
struct Partial {
    from: NodeId,
    lsn: Lsn,
    epoch: Epoch,
    body_len: u64,
    writer: SnapshotWriter,
}

struct State {
    /// Installed snapshots in use, ascending by LSN. The newest was verified whole (at
    /// start-up, or as it was written); the others' headers were checked.
    installed: Vec<SnapshotInfo>,
    partial: Option<Partial>,
    /// The LSN of a receive in progress.
    receiving: Option<Lsn>,
    transfers: BTreeMap<(u16, &'static str), TransferStatus>,
    request: Request,
    /// Uploads started, for the next upload's id.
    uploads_started: u64,
    /// A snapshot in use was found damaged: ask for a new one without waiting for the
    /// interval.
    wanted_soon: bool,
    last_taken: Instant,
    warning: Option<String>,
}

/// The node's snapshots; see the module docs. Shared through an `Arc`.
pub struct Snapshots {
    /// The data dir: every snapshot stores its configuration there
    /// ([`crate::node::members::store_at_snapshot`]).
    data_dir: PathBuf,
    dir: PathBuf,
    config: SnapshotConfig,
    state: Mutex<State>,
    /// Bumped to ask subscribed applications for a snapshot.
    request_tx: watch::Sender<u64>,
    /// The LSN of the last snapshot installed from the primary. Published before the log is
    /// reset after it, so that app subscriptions stop reading the old log (see
    /// [`Snapshots::watch_reset`]).
    reset_tx: watch::Sender<Lsn>,
    events: mpsc::Sender<Event>,
    /// Bytes of log written since the last snapshot.
    log_bytes: AtomicU64,
    pub metrics: SnapshotMetrics,
    cancel: CancellationToken,
    /// Warnings of a transfer that fails again and again, by reason: each is logged once a
    /// minute ([`crate::node::peer::first_in_a_while`]).
    warned: Mutex<BTreeMap<String, tokio::time::Instant>>,
    /// Test knob: a pause before each chunk a sender sends (`UNDERSTUDY_TEST_SNAPSHOT_CHUNK_DELAY_MS`,
    /// honoured by builds with debug assertions only).
    chunk_delay: Option<Duration>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on a blocking thread (file I/O) and waits for it.
pub(crate) async fn on_blocking_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl Snapshots {
    /// The store for `data_dir`, holding the snapshots [`store::recover`] found.
    pub fn new(
        data_dir: &Path,
        config: SnapshotConfig,
        recovered: Recovered,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Snapshots {
        let metrics = SnapshotMetrics::default();
        metrics
            .corrupt_found
            .store(recovered.corrupt as u64, Ordering::Relaxed);
        let installed = recovered.installed;
        let now = Instant::now();
        assert!(
            config.phase_per_mille < 1000,
            "a phase is a fraction of a cycle"
        );
        let phase = f64::from(config.phase_per_mille) / 1000.0;
        // The node's place in the cycle (see `stagger_phase`): as if its last snapshot had
        // been taken that far back, in time and in log bytes. A clock too close to its start
        // to go back that far (a machine just booted) starts at a whole cycle.
        let last_taken = now
            .checked_sub(config.interval.mul_f64(phase))
            .unwrap_or(now);
        let log_bytes = (config.after_bytes as f64 * phase) as u64;
        // A test knob, read only by builds with debug assertions (the test builds): a
        // release binary ignores it whatever its environment says.
        let chunk_delay = if cfg!(debug_assertions) {
            std::env::var("UNDERSTUDY_TEST_SNAPSHOT_CHUNK_DELAY_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis)
        } else {
            None
        };
        Snapshots {
            data_dir: data_dir.to_owned(),
            dir: data_dir.join(SNAPSHOTS_DIR),
            config,
            state: Mutex::new(State {
                installed,
                partial: None,
                receiving: None,
                transfers: BTreeMap::new(),
                request: Request::Idle { not_before: now },
                uploads_started: 0,
                wanted_soon: false,
                last_taken,
                warning: None,
            }),
            request_tx: watch::Sender::new(0),
            reset_tx: watch::Sender::new(Lsn::ZERO),
            events,
            log_bytes: AtomicU64::new(log_bytes),
            metrics,
            cancel,
            warned: Mutex::new(BTreeMap::new()),
            chunk_delay,
        }
    }

    /// A store with no directory behind it, for tests of the app API that stand in for the
    /// core loop: it never asks for snapshots and has none to restore.
    #[doc(hidden)]
    pub fn detached() -> Snapshots {
        let (events, _) = mpsc::channel(1);
        Snapshots::empty(Path::new("/nonexistent"), events)
    }

    /// A store for `data_dir` with no snapshots in it and the default configuration.
    fn empty(data_dir: &Path, events: mpsc::Sender<Event>) -> Snapshots {
        Snapshots::new(
            data_dir,
            SnapshotConfig::default(),
            Recovered {
                installed: Vec::new(),
                corrupt: 0,
            },
            events,
            CancellationToken::new(),
        )
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data dir the snapshots directory is in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The snapshot flags this node runs with.
    pub fn config(&self) -> &SnapshotConfig {
        &self.config
    }

    /// Whether the disk holding the snapshots has room for `bytes` more of a snapshot with
    /// one log segment (`--wal-segment-bytes`) still free after them; `Err` says why not.
    /// Blocking (`statvfs`).
    ///
    /// The log writes into its active segment and, when that is full, a new one, on the same
    /// disk: a snapshot that took the last of the room would stop the node at its next
    /// append (a write that fails is a disk failure, and the node stops), and every node
    /// takes its snapshots at about the same size and time. With a segment's room left the
    /// log can go on past one roll, and the snapshot, once stored, lets it delete segments.
    /// A disk that cannot be asked is taken to have room: the writes will say.
    pub(crate) fn room_for(&self, bytes: u64) -> Result<(), String> {
        let Ok(free) = wal::fs::free_bytes(&self.dir) else {
            return Ok(());
        };
        let reserve = self.config.wal_segment_bytes;
        if free >= bytes.saturating_add(reserve) {
            return Ok(());
        }
        Err(format!(
            "not enough free space: {free} bytes free on the disk holding {}, {bytes} to write and {reserve} to leave for the log (a segment)",
            self.dir.display()
        ))
    }

    /// The epoch of the committed record at `lsn` and the configuration in effect at it,
    /// asked of the core loop: `None` when `lsn` is not committed, the log no longer holds
    /// it, or the loop is gone.
    pub(crate) async fn committed_at(&self, lsn: Lsn) -> Option<Committed> {
        let (reply, answer) = oneshot::channel();
        match self.events.send(Event::CommittedAt { lsn, reply }).await {
            Ok(()) => answer.await.ok().flatten(),
            Err(_) => None,
        }
    }

    /// Stores the configuration at a snapshot of the application's state through `lsn`
    /// (`committed`: [`Snapshots::committed_at`]) before the snapshot is created
    /// ([`crate::node::members`], "The configuration at a snapshot"): on a backup it may
    /// cover records not yet durable in the log, and a start after a failed fsync then cuts
    /// the log below it and resets the log after it. Blocking (an fsynced install).
    pub(crate) fn store_members_at(&self, lsn: Lsn, committed: &Committed) -> Result<(), String> {
        let Some((config_lsn, record)) = &committed.config else {
            // Before the cluster's first config record: nothing to store (and no snapshot
            // of it can be sent either, `transfer::send`).
            return Ok(());
        };
        crate::node::members::store_at_snapshot(
            &self.data_dir,
            (lsn, committed.epoch),
            *config_lsn,
            record,
        )
        .map_err(|e| format!("cannot store the configuration at the snapshot: {e}"))
    }

    /// The newest snapshot in use.
    pub fn newest(&self) -> Option<SnapshotInfo> {
        lock(&self.state).installed.last().cloned()
    }

    /// Counts log bytes written, towards `--snapshot-after-bytes`.
    pub fn note_log_bytes(&self, len: u64) {
        self.log_bytes.fetch_add(len, Ordering::Relaxed);
    }

    /// Wakes on every request for a snapshot (app subscriptions watch it).
    pub fn watch_requests(&self) -> watch::Receiver<u64> {
        self.request_tx.subscribe()
    }

    /// Wakes when a snapshot from the primary replaced the log: the LSN it covers.
    pub fn watch_reset(&self) -> watch::Receiver<Lsn> {
        self.reset_tx.subscribe()
    }

    pub fn status(&self) -> SnapshotStatus {
        let state = lock(&self.state);
        SnapshotStatus {
            snapshot_lsn: state.installed.last().map_or(0, |info| info.lsn.get()),
            snapshot_count: state.installed.len(),
            warning: state.warning.clone(),
            request: state.request.name(),
            transfers: state.transfers.values().cloned().collect(),
        }
    }

    /// Encodes the snapshot counters and the newest snapshot's LSN for `/metrics`
    /// (counter families without `_total`, which the encoder adds).
    pub fn encode_metrics(
        &self,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use crate::node::metrics::{encode_counter, encode_gauge};
        let m = &self.metrics;
        let counters: [(&str, &str, &AtomicU64); 10] = [
            ("understudy_snapshots_taken", "Snapshots of the local application stored.", &m.taken),
            ("understudy_snapshot_requests_unanswered", "Snapshot requests the application did not answer in time; the log is not truncated meanwhile.", &m.requests_unanswered),
            ("understudy_snapshot_requests_declined", "Snapshot requests the application declined.", &m.requests_declined),
            ("understudy_snapshot_uploads_abandoned", "Uploads of the application's snapshot that stalled or broke off before the end; the application is asked again.", &m.uploads_abandoned),
            ("understudy_snapshots_installed_from_primary", "Snapshots received from the primary and installed.", &m.installed_from_primary),
            ("understudy_snapshot_transfers_resumed", "Snapshot transfers resumed after a broken connection.", &m.transfers_resumed),
            ("understudy_snapshot_sent_bytes", "Snapshot body bytes sent to backups and acknowledged.", &m.bytes_sent),
            ("understudy_snapshot_received_bytes", "Snapshot body bytes received and verified.", &m.bytes_received),
            ("understudy_snapshots_corrupt", "Snapshots found damaged and not used.", &m.corrupt_found),
            ("understudy_log_segments_truncated", "Log segments deleted behind a snapshot.", &m.log_segments_truncated),
        ];
        for (name, help, counter) in counters {
            encode_counter(encoder, name, help, counter.load(Ordering::Relaxed))?;
        }
        let lsn = self.newest().map_or(0, |info| info.lsn.get());
        encode_gauge(
            encoder,
            "understudy_snapshot_lsn",
            "The LSN the newest snapshot covers.",
            lsn,
        )?;
        // Read at each scrape (statvfs); left out when the file system cannot be asked.
        if let Ok(free) = wal::fs::free_bytes(&self.dir) {
            encode_gauge(
                encoder,
                "understudy_data_dir_free_bytes",
                "Bytes free on the disk holding the data dir. A snapshot is written only while it leaves one log segment free; the log stops the node when it cannot write.",
                free,
            )?;
        }
        Ok(())
    }

    fn set_transfer(&self, status: Option<TransferStatus>, key: (u16, &'static str)) {
        let mut state = lock(&self.state);
        match status {
            Some(status) => {
                state.transfers.insert(key, status);
            }
            None => {
                state.transfers.remove(&key);
            }
        }
    }

    /// A snapshot in use failed verification after start-up (`error`): stop using it, move
    /// it to `snapshots-corrupt/` as start-up does, and ask the application for a new one
    /// at once. The snapshot before it, if one is kept, is the newest from now on (the log
    /// reaches back to the oldest kept: module docs). Logs one line. Nothing happens if
    /// another transfer already put it aside.
    pub(crate) async fn quarantine(&self, info: &SnapshotInfo, error: &wal::Error) {
        let fallback = {
            let mut state = lock(&self.state);
            let Some(at) = state.installed.iter().position(|i| i.path == info.path) else {
                return;
            };
            state.installed.remove(at);
            state.wanted_soon = true;
            if let Request::Idle { not_before } = &mut state.request {
                *not_before = Instant::now();
            }
            state.installed.last().map(|i| i.lsn)
        };
        SnapshotMetrics::add(&self.metrics.corrupt_found);
        error!(
            path = %info.path.display(),
            lsn = %info.lsn,
            %error,
            fallback_lsn = fallback.map(|lsn| lsn.get()),
            "snapshot found damaged while reading it; moved to snapshots-corrupt/, using the one before it and asking the application for a new one"
        );
        let data_dir = wal::fs::parent(&self.dir).to_owned();
        let path = info.path.clone();
        if let Err(e) = on_blocking_thread(move || quarantine_file(&data_dir, &path)).await {
            warn!(path = %info.path.display(), error = %e, "cannot move the damaged snapshot aside; it is no longer used");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Consecutive ids get places in the cycle that are spread out: for every cluster of
    /// ids 1..=n, no two are closer than a third of an even spread.
    #[test]
    fn stagger_phases_of_consecutive_ids_are_spread() {
        assert_eq!(
            [1, 2, 3].map(stagger_phase),
            [618, 236, 854],
            "the golden ratio's fractions"
        );
        for n in 2..=9u16 {
            let mut phases: Vec<u32> = (1..=n).map(stagger_phase).collect();
            phases.sort_unstable();
            let wrap = 1000 - phases[phases.len() - 1] + phases[0];
            let closest = phases.windows(2).map(|w| w[1] - w[0]).fold(wrap, u32::min);
            assert!(
                closest * 3 * u32::from(n) >= 1000,
                "{n} nodes: phases {phases:?}, two only {closest}/1000 apart"
            );
        }
        assert!((1..=u16::MAX).all(|id| stagger_phase(id) < 1000));
    }

    fn store_with(config: SnapshotConfig) -> Arc<Snapshots> {
        let (events, _) = mpsc::channel(1);
        Arc::new(Snapshots::new(
            Path::new("/nonexistent"),
            config,
            Recovered {
                installed: Vec::new(),
                corrupt: 0,
            },
            events,
            CancellationToken::new(),
        ))
    }

    /// A node late in its cycle asks for its first snapshot that much sooner than a whole
    /// interval after start; one at phase 0 waits the whole interval. By bytes, its count
    /// starts part-way.
    #[tokio::test]
    async fn a_staggered_node_asks_for_its_first_snapshot_sooner() {
        let config = |phase_per_mille| SnapshotConfig {
            interval: Duration::from_millis(1600),
            phase_per_mille,
            ..SnapshotConfig::default()
        };
        let late = store_with(config(900));
        let whole = store_with(config(0));
        assert_eq!(
            late.log_bytes.load(Ordering::Relaxed),
            (1u64 << 30) * 9 / 10
        );
        assert_eq!(whole.log_bytes.load(Ordering::Relaxed), 0);
        let (_commit_tx, commit) = watch::channel(Lsn(5));
        let mut requests = [late.watch_requests(), whole.watch_requests()];
        let started = Instant::now();
        for snapshots in [&late, &whole] {
            tokio::spawn(schedule::schedule(Arc::clone(snapshots), commit.clone()));
        }
        // Due 160 ms in; the scheduler looks every 400 ms. The node at phase 0 is due only
        // 1,600 ms in.
        tokio::time::timeout(Duration::from_millis(1400), requests[0].changed())
            .await
            .expect("the node at 900/1000 asked within 1.4 s")
            .unwrap();
        assert!(
            !requests[1].has_changed().unwrap(),
            "the node at phase 0 asked {:?} after start, before its interval",
            started.elapsed()
        );
        late.cancel.cancel();
        whole.cancel.cancel();
    }

    /// A node whose turn comes while nothing is committed skips that turn and keeps its
    /// place in the cycle: it does not ask at the first commit, as every node of a cluster
    /// started together would, all at once.
    #[tokio::test]
    async fn a_turn_with_nothing_to_snapshot_is_skipped_and_the_place_kept() {
        let snapshots = store_with(SnapshotConfig {
            interval: Duration::from_millis(1600),
            after_bytes: u64::MAX,
            phase_per_mille: 900,
            ..SnapshotConfig::default()
        });
        let (commit_tx, commit) = watch::channel(Lsn::ZERO);
        let mut requests = snapshots.watch_requests();
        let started = Instant::now();
        tokio::spawn(schedule::schedule(Arc::clone(&snapshots), commit));
        // Due 160 ms in, with nothing committed: skipped (the scheduler looks every 400 ms).
        tokio::time::sleep(Duration::from_millis(600)).await;
        commit_tx.send_replace(Lsn(5));
        // The next turn is a whole interval after the skipped one: 1,760 ms in.
        let asked = tokio::time::timeout(Duration::from_millis(2400), requests.changed()).await;
        let at = started.elapsed();
        assert!(asked.is_ok(), "no request within 3 s");
        assert!(
            at >= Duration::from_millis(1700),
            "asked {at:?} after start, at the first commit rather than at its turn"
        );
        snapshots.cancel.cancel();
    }
}
