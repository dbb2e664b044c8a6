//! Snapshots in the running node: asking the local application for them, storing them,
//! truncating the log behind them, streaming them to backups that need records the log no
//! longer holds, installing one received from the primary, and handing the newest one to
//! the application when it (re)starts.
//!
//! ```text
//! <data-dir>/
//!   snapshots/            <lsn:020>.snap, the newest --snapshots-retain of them
//!   snapshots-corrupt/    snapshots found damaged (at start-up, or by a sender), moved aside
//!                         for inspection
//! ```
//!
//! The pieces, and who runs them:
//! - [`Snapshots`], shared by the core loop, the app API, the peer transport and the admin
//!   server: the snapshots installed, a broken-off receive kept for resuming, transfer
//!   progress, and the channels that ask subscribed applications for a snapshot and tell
//!   them to restore.
//! - [`recover`], at start-up (`disk::open`): picks the newest snapshot that verifies, moves
//!   damaged ones aside, and decides how the log continues after it.
//! - [`schedule`], a task: every `--snapshot-interval`, or after `--snapshot-after-bytes`
//!   of log, asks the application; if it does not answer, says so (log and metric) and the
//!   log is not truncated.
//! - [`upload`], in the app API: the application's snapshot, streamed into a snapshot file.
//!   One at a time; it holds the scheduler's request until it ends, however it ends (stored,
//!   refused, stalled for [`SnapshotConfig::answer_timeout`], or dropped with its
//!   connection), and then the scheduler asks again.
//! - `Shell::on_snapshot_event` (core loop): retention, truncation, installing a received
//!   snapshot, and the core's `SnapshotSent`/`SnapshotFailed`/`SnapshotInstalled` inputs.
//! - [`send`] (a task per backup) and [`receive`] (a peer connection): the transfer
//!   protocol of `proto::peer` ("Snapshot transfer"), windowed, resumable, every chunk
//!   verified. A sender that finds its snapshot damaged (the disk changed it after
//!   start-up verified it) moves it to `snapshots-corrupt/`, sends the one before it, and
//!   the application is asked for a new snapshot at once.
//! - [`restore_to_app`], in the app API: the newest snapshot as `RestoreBegin`,
//!   `RestoreChunk`s and `RestoreEnd`.
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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use wal::snapshot::{SnapshotInfo, SnapshotReader, SnapshotWriter};
use wal::{Epoch, Lsn, NodeId, Wal};

use super::disk::DiskError;
use super::handle::NodeHandle;
use super::metrics::Metrics;
use super::peer::{dial_handshake, PeerConfig};
use super::{NodeError, Shell, StepContext, TailCache};
use crate::core::Input;
use crate::proto::app::{self, FrameReader};
use crate::proto::peer::{encode_head, Frame, PeerCodec};

/// The directory of a data dir that holds the snapshots.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// Where start-up moves snapshots that fail verification.
pub const CORRUPT_DIR: &str = "snapshots-corrupt";

/// Body bytes a sender may have sent and not had acknowledged: the transfer's memory bound
/// on both ends (plus one chunk being read or written).
pub const TRANSFER_WINDOW_BYTES: u64 = 2 << 20;
/// Body bytes per `RestoreChunk`/`SnapshotChunk` the driver sends: one stored chunk.
pub const APP_CHUNK_LEN: usize = wal::snapshot::SNAPSHOT_CHUNK_LEN;
/// How many times a sender dials again after a transfer broke off, before it reports the
/// transfer failed (the core asks again with a later heartbeat, and the receiver still
/// resumes from what it has).
const SEND_ATTEMPTS_MAX: u32 = 5;
/// Progress is logged at most this often per transfer.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(2);
/// How long a new snapshot connection waits for a receive still running on an old one.
const RECEIVE_WAIT: Duration = Duration::from_secs(5);
/// Chunks queued between a blocking reader thread and the task that sends them.
const READ_AHEAD_CHUNKS: usize = 4;

// A window smaller than a chunk would stall with one chunk unacknowledged.
const _: () = assert!(TRANSFER_WINDOW_BYTES >= wal::snapshot::SNAPSHOT_CHUNK_LEN_MAX as u64);
// A driver chunk must fit in one app frame with its offset and type byte.
const _: () = assert!(APP_CHUNK_LEN + 64 <= app::FRAME_LEN_MAX);

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
}

impl Default for SnapshotConfig {
    fn default() -> SnapshotConfig {
        SnapshotConfig {
            interval: Duration::from_secs(600),
            after_bytes: 1 << 30,
            retain: 2,
            wal_retain_bytes: 64 << 20,
            wal_segment_bytes: wal::Options::default().segment_bytes_max,
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

/// What the core loop is told or asked (`Shell::on_snapshot_event`).
#[derive(Debug)]
pub enum Event {
    /// The local application's snapshot is installed.
    Taken(SnapshotInfo),
    /// A snapshot from the primary is installed on disk; put it in use if the core still
    /// wants it, and answer whether it did.
    Received {
        info: SnapshotInfo,
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
    /// The epoch of the committed record at `lsn`, if the log still knows it.
    EpochOf {
        lsn: Lsn,
        reply: oneshot::Sender<Option<Epoch>>,
    },
}

/// The scheduler's view of the current request to the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Request {
    /// Nothing asked; ask again no earlier than this.
    Idle { not_before: Instant },
    /// Asked at this time; no answer yet.
    Asked { at: Instant },
    /// The application is streaming its snapshot; the [`UploadGuard`] with this `id` owns
    /// the request until the upload ends.
    Uploading { id: u64 },
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
    /// Test knob: a pause before each chunk a sender sends (`UNDERSTUDY_TEST_SNAPSHOT_CHUNK_DELAY_MS`).
    chunk_delay: Option<Duration>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on a blocking thread (file I/O) and waits for it.
async fn on_blocking_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

impl Snapshots {
    /// The store for `data_dir`, holding the snapshots [`recover`] found.
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
        let chunk_delay = std::env::var("UNDERSTUDY_TEST_SNAPSHOT_CHUNK_DELAY_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        Snapshots {
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
                last_taken: now,
                warning: None,
            }),
            request_tx: watch::Sender::new(0),
            reset_tx: watch::Sender::new(Lsn::ZERO),
            events,
            log_bytes: AtomicU64::new(0),
            metrics,
            cancel,
            chunk_delay,
        }
    }

    /// A store with no directory behind it, for tests of the app API that stand in for the
    /// core loop: it never asks for snapshots and has none to restore.
    #[doc(hidden)]
    pub fn detached() -> Snapshots {
        let (events, _) = mpsc::channel(1);
        Snapshots::new(
            Path::new("/nonexistent"),
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

    /// Appends the snapshot counters in Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let m = &self.metrics;
        let counters: [(&str, &str, &AtomicU64); 10] = [
            ("understudy_snapshots_taken_total", "Snapshots of the local application stored.", &m.taken),
            ("understudy_snapshot_requests_unanswered_total", "Snapshot requests the application did not answer in time; the log is not truncated meanwhile.", &m.requests_unanswered),
            ("understudy_snapshot_requests_declined_total", "Snapshot requests the application declined.", &m.requests_declined),
            ("understudy_snapshot_uploads_abandoned_total", "Uploads of the application's snapshot that stalled or broke off before the end; the application is asked again.", &m.uploads_abandoned),
            ("understudy_snapshots_installed_from_primary_total", "Snapshots received from the primary and installed.", &m.installed_from_primary),
            ("understudy_snapshot_transfers_resumed_total", "Snapshot transfers resumed after a broken connection.", &m.transfers_resumed),
            ("understudy_snapshot_sent_bytes_total", "Snapshot body bytes sent to backups and acknowledged.", &m.bytes_sent),
            ("understudy_snapshot_received_bytes_total", "Snapshot body bytes received and verified.", &m.bytes_received),
            ("understudy_snapshots_corrupt_total", "Snapshots found damaged and not used.", &m.corrupt_found),
            ("understudy_log_segments_truncated_total", "Log segments deleted behind a snapshot.", &m.log_segments_truncated),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        let lsn = self.newest().map_or(0, |info| info.lsn.get());
        let _ = writeln!(
            out,
            "# HELP understudy_snapshot_lsn The LSN the newest snapshot covers."
        );
        let _ = writeln!(out, "# TYPE understudy_snapshot_lsn gauge");
        let _ = writeln!(out, "understudy_snapshot_lsn {lsn}");
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

    /// The scheduler's request ended: with a snapshot, or not (then ask again later).
    fn request_done(&self, taken: bool) {
        let now = Instant::now();
        let mut state = lock(&self.state);
        if taken {
            state.last_taken = now;
            state.warning = None;
            state.wanted_soon = false;
            self.log_bytes.store(0, Ordering::Relaxed);
            state.request = Request::Idle { not_before: now };
        } else {
            state.request = Request::Idle {
                not_before: now + self.config.answer_timeout(),
            };
        }
    }

    /// A snapshot in use failed verification after start-up (`error`): stop using it, move
    /// it to `snapshots-corrupt/` as start-up does, and ask the application for a new one
    /// at once. The snapshot before it, if one is kept, is the newest from now on (the log
    /// reaches back to the oldest kept: module docs). Logs one line. Nothing happens if
    /// another transfer already put it aside.
    async fn quarantine(&self, info: &SnapshotInfo, error: &wal::Error) {
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
            "snapshot found damaged while sending; moved to snapshots-corrupt/, using the one before it and asking the application for a new one"
        );
        let data_dir = wal::fs::parent(&self.dir).to_owned();
        let path = info.path.clone();
        if let Err(e) = on_blocking_thread(move || quarantine_file(&data_dir, &path)).await {
            warn!(path = %info.path.display(), error = %e, "cannot move the damaged snapshot aside; it is no longer used");
        }
    }
}

/// Whether `error` says a snapshot file's bytes are damaged (as opposed to a failure to
/// read them at all, which may pass).
fn is_damage(error: &wal::Error) -> bool {
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
fn quarantine_file(data_dir: &Path, path: &Path) -> Result<(), DiskError> {
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

// The scheduler.

/// Asks the application for a snapshot when one is due, until `cancel`; says so when it
/// does not answer. `commit` is the node's commit LSN: nothing is asked while no record was
/// committed since the newest snapshot.
pub async fn schedule(snapshots: Arc<Snapshots>, commit: watch::Receiver<Lsn>) {
    let config = snapshots.config;
    let tick = (config.interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = snapshots.cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let commit_lsn = *commit.borrow();
        let mut state = lock(&snapshots.state);
        match state.request {
            Request::Idle { not_before } => {
                let newest = state.installed.last().map_or(Lsn::ZERO, |info| info.lsn);
                let due = now.duration_since(state.last_taken) >= config.interval
                    || snapshots.log_bytes.load(Ordering::Relaxed) >= config.after_bytes
                    || state.wanted_soon;
                if now >= not_before && due && commit_lsn > newest {
                    state.request = Request::Asked { at: now };
                    drop(state);
                    debug!(%commit_lsn, "asking the application for a snapshot");
                    snapshots
                        .request_tx
                        .send_modify(|generation| *generation += 1);
                }
            }
            Request::Asked { at } if now.duration_since(at) >= config.answer_timeout() => {
                let subscribers = snapshots.request_tx.receiver_count();
                let message = format!(
                    "the application did not answer a snapshot request within {:?} ({subscribers} subscribed); the log is not truncated until it does",
                    config.answer_timeout()
                );
                warn!(
                    subscribers,
                    "application did not answer the snapshot request; the log is not truncated"
                );
                state.warning = Some(message);
                state.request = Request::Idle {
                    not_before: now + config.answer_timeout(),
                };
                SnapshotMetrics::add(&snapshots.metrics.requests_unanswered);
            }
            Request::Asked { .. } | Request::Uploading { .. } => {}
        }
    }
}

impl SnapshotMetrics {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

// The application's snapshot, uploaded over the app API.

/// The upload in progress: it owns `Request::Uploading { id }` from the moment the offer
/// is accepted until the upload ends, and gives the request back however that happens. An
/// upload's future is dropped, not finished, when its connection goes (the application
/// crashed, or a write to it failed: the app API's reader stops on `closing`); the drop
/// gives the request back too. Without that the scheduler would skip the request forever,
/// no snapshot would be asked for again, and the log would grow until the disk is full.
struct UploadGuard {
    snapshots: Arc<Snapshots>,
    id: u64,
    ended: bool,
}

impl UploadGuard {
    /// Takes the request for a new upload (`state` is locked by the caller).
    fn start(snapshots: &Arc<Snapshots>, state: &mut State) -> UploadGuard {
        assert!(
            !matches!(state.request, Request::Uploading { .. }),
            "an upload started while another holds the request"
        );
        state.uploads_started += 1;
        let id = state.uploads_started;
        state.request = Request::Uploading { id };
        UploadGuard {
            snapshots: Arc::clone(snapshots),
            id,
            ended: false,
        }
    }

    /// The upload ended with a snapshot stored, or was refused before any data (not the
    /// application's fault: nothing to warn of).
    fn finish(mut self, taken: bool) {
        self.ended = true;
        self.give_back(taken);
    }

    /// The upload broke off before the end: say so, count it, and let the scheduler ask
    /// again soon.
    fn abandon(mut self, reason: &str) {
        self.ended = true;
        self.abandon_now(reason);
    }

    fn abandon_now(&self, reason: &str) {
        warn!(upload = self.id, %reason, "application snapshot upload abandoned; asking again later");
        SnapshotMetrics::add(&self.snapshots.metrics.uploads_abandoned);
        lock(&self.snapshots.state).warning =
            Some(format!("the last snapshot upload was abandoned: {reason}"));
        self.give_back(false);
    }

    /// Back to idle, if the request is still this upload's.
    fn give_back(&self, taken: bool) {
        let owned = lock(&self.snapshots.state).request == Request::Uploading { id: self.id };
        if owned {
            self.snapshots.request_done(taken);
        }
    }
}

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if !self.ended {
            self.abandon_now("the connection closed or failed during the upload");
        }
    }
}

/// Why reading an upload ended early.
#[derive(Debug, thiserror::Error)]
enum UploadError {
    #[error("the application sent no snapshot data for {0:?} in the middle of an upload")]
    Stalled(Duration),
    #[error("{0}")]
    Protocol(String),
}

/// Serves an upload that starts with `SnapshotOffer { lsn, epoch }` on an app connection:
/// reads its `SnapshotChunk`s up to `SnapshotDone` from `frames`, writes them into a
/// snapshot file and, when complete, tells the core loop. Returns the message of an `Error`
/// frame if the application broke the protocol or stalled (nothing for
/// [`SnapshotConfig::answer_timeout`] between two frames).
///
/// An offer not needed (not newer than the newest snapshot, or another upload in progress)
/// is read to its end and dropped.
pub async fn upload<R: AsyncRead + Unpin>(
    node: &NodeHandle,
    lsn: Lsn,
    app_epoch: Epoch,
    frames: &mut FrameReader<R>,
) -> Result<(), String> {
    let snapshots = &node.snapshots;
    let (mut writer, guard) = match upload_begin(snapshots, lsn, app_epoch).await {
        Ok((writer, guard)) => (Some(writer), Some(guard)),
        Err(reason) => {
            debug!(%lsn, %reason, "application snapshot not needed; dropping it");
            (None, None)
        }
    };
    let result = upload_body(&mut writer, frames, snapshots.config.answer_timeout()).await;
    let Some(guard) = guard else {
        // Not stored: only whether the application kept to the protocol matters.
        return result.map(|_| ()).map_err(|e| e.to_string());
    };
    match result {
        Err(e) => {
            guard.abandon(&e.to_string());
            Err(e.to_string())
        }
        Ok(false) => {
            guard.abandon("the application ended the upload before SnapshotDone");
            Ok(())
        }
        Ok(true) => {
            let Some(writer) = writer else {
                unreachable!("upload_body puts the writer back after every chunk it writes");
            };
            match on_blocking_thread(move || writer.finish()).await {
                Ok(info) => {
                    info!(lsn = %info.lsn, body_len = info.body_len, "application snapshot stored");
                    SnapshotMetrics::add(&snapshots.metrics.taken);
                    guard.finish(true);
                    let _ = snapshots.events.send(Event::Taken(info)).await;
                }
                Err(e) => {
                    error!(error = %e, "cannot store the application's snapshot");
                    guard.finish(false);
                }
            }
            Ok(())
        }
    }
}

/// Decides whether to store an offered snapshot and creates its file. `Err` (a reason for
/// the log) when it is not wanted.
async fn upload_begin(
    snapshots: &Arc<Snapshots>,
    lsn: Lsn,
    app_epoch: Epoch,
) -> Result<(SnapshotWriter, UploadGuard), String> {
    if lsn == Lsn::ZERO {
        return Err("a snapshot at lsn 0 covers nothing".into());
    }
    let guard = {
        let mut state = lock(&snapshots.state);
        if let Some(newest) = state.installed.last() {
            if newest.lsn >= lsn {
                return Err(format!("a snapshot through lsn {} exists", newest.lsn));
            }
        }
        if matches!(state.request, Request::Uploading { .. }) {
            return Err("another upload is in progress".into());
        }
        if state.receiving == Some(lsn) {
            return Err("a snapshot of this lsn is being received".into());
        }
        // A broken-off receive of this LSN would share the temp file: drop it.
        if state.partial.as_ref().is_some_and(|p| p.lsn == lsn) {
            state.partial = None;
        }
        UploadGuard::start(snapshots, &mut state)
    };
    let (reply, answer) = oneshot::channel();
    let epoch = match snapshots.events.send(Event::EpochOf { lsn, reply }).await {
        Ok(()) => answer.await.ok().flatten(),
        Err(_) => None,
    };
    let result = match epoch {
        None => Err(format!(
            "lsn {lsn} is not committed or no longer in the log"
        )),
        Some(epoch) if app_epoch != Epoch::ZERO && app_epoch != epoch => Err(format!(
            "the application says lsn {lsn} has epoch {app_epoch}, the log says {epoch}"
        )),
        Some(epoch) => {
            let dir = snapshots.dir.clone();
            on_blocking_thread(move || SnapshotWriter::create(&dir, lsn, epoch))
                .await
                .map_err(|e| format!("cannot create the snapshot file: {e}"))
        }
    };
    match result {
        Ok(writer) => Ok((writer, guard)),
        Err(reason) => {
            guard.finish(false);
            Err(reason)
        }
    }
}

/// Reads chunks until `SnapshotDone` (true) or `SnapshotDecline`/end of connection (false);
/// gives up when no frame comes for `stall`.
async fn upload_body<R: AsyncRead + Unpin>(
    writer: &mut Option<SnapshotWriter>,
    frames: &mut FrameReader<R>,
    stall: Duration,
) -> Result<bool, UploadError> {
    loop {
        let frame = tokio::time::timeout(stall, frames.read_frame())
            .await
            .map_err(|_| UploadError::Stalled(stall))?
            .map_err(|e| UploadError::Protocol(format!("reading the snapshot: {e}")))?;
        match frame {
            None => return Ok(false),
            Some(app::Frame::SnapshotChunk { offset, data }) => {
                let Some(mut w) = writer.take() else {
                    continue;
                };
                if offset != w.body_len() {
                    return Err(UploadError::Protocol(format!(
                        "snapshot chunk at offset {offset}, expected {}",
                        w.body_len()
                    )));
                }
                let (w, result) = on_blocking_thread(move || {
                    let result = w.write(&data);
                    (w, result)
                })
                .await;
                result.map_err(|e| {
                    UploadError::Protocol(format!("cannot write the snapshot: {e}"))
                })?;
                *writer = Some(w);
            }
            Some(app::Frame::SnapshotDone) => return Ok(true),
            Some(frame) => {
                return Err(UploadError::Protocol(format!(
                    "{} in the middle of a snapshot",
                    frame.name()
                )));
            }
        }
    }
}

/// The application declined a snapshot request.
pub fn declined(snapshots: &Snapshots) {
    warn!("the application declined the snapshot request; the log is not truncated");
    SnapshotMetrics::add(&snapshots.metrics.requests_declined);
    let mut state = lock(&snapshots.state);
    state.warning = Some("the application declined the last snapshot request".into());
    // An upload in progress (another subscriber answered) keeps the request.
    let asked = matches!(state.request, Request::Asked { .. });
    drop(state);
    if asked {
        snapshots.request_done(false);
    }
}

// Restoring the application.

/// Whether a subscription from `from_lsn` starts with the newest snapshot: when the log no
/// longer holds `from_lsn`, or when the application starts from nothing and a snapshot
/// covers some of the log (restoring is faster than replaying).
pub fn restore_wanted(snapshots: &Snapshots, from_lsn: Lsn, log_first_lsn: Lsn) -> bool {
    match snapshots.newest() {
        Some(newest) => newest.lsn >= from_lsn && (from_lsn < log_first_lsn || from_lsn == Lsn(1)),
        None => false,
    }
}

/// Streams the newest snapshot (the one before it, if it fails to read) to the application
/// as `RestoreBegin`, `RestoreChunk`s and `RestoreEnd`. Returns the LSN it covers (the log
/// continues after it), `None` if there is none, or the message of an `Error` frame.
/// `Ok(None)` is also returned when the connection is gone.
pub async fn restore_to_app(
    snapshots: &Snapshots,
    outbox: &mpsc::Sender<app::Frame>,
) -> Result<Option<Lsn>, String> {
    let Some(info) = snapshots.newest() else {
        return Ok(None);
    };
    let (chunks, mut rx) = mpsc::channel(READ_AHEAD_CHUNKS);
    let path = info.path.clone();
    let reading = tokio::task::spawn_blocking(move || read_chunks(&path, 0, chunks));
    if outbox
        .send(app::Frame::RestoreBegin {
            lsn: info.lsn,
            epoch: info.epoch,
            body_len: info.body_len,
        })
        .await
        .is_err()
    {
        return Ok(None);
    }
    info!(lsn = %info.lsn, body_len = info.body_len, "restoring the application from a snapshot");
    while let Some(chunk) = rx.recv().await {
        let frame = app::Frame::RestoreChunk {
            offset: chunk.offset,
            data: chunk.data,
        };
        if outbox.send(frame).await.is_err() {
            return Ok(None);
        }
    }
    match reading.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            error!(path = %info.path.display(), error = %e, "snapshot failed to read while restoring the application");
            return Err(format!("snapshot at lsn {} failed to read: {e}", info.lsn));
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
    if outbox.send(app::Frame::RestoreEnd).await.is_err() {
        return Ok(None);
    }
    Ok(Some(info.lsn))
}

/// Reads the chunks of the snapshot at `path` from body `offset` into `chunks`, each
/// verified, until the end (`Ok(trailer body CRC)` when read from 0) or the receiver is
/// gone. Runs on a blocking thread.
fn read_chunks(
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

// The core loop's part.

impl Shell {
    /// Carries out an [`Event`].
    pub(super) fn on_snapshot_event(&mut self, event: Event) -> Result<(), NodeError> {
        match event {
            Event::EpochOf { lsn, reply } => {
                let epoch = if lsn <= self.core.commit_lsn() {
                    self.core.epoch_of(lsn)
                } else {
                    None
                };
                let _ = reply.send(epoch);
            }
            Event::Wanted { lsn, epoch, reply } => {
                let _ = reply.send(self.core.snapshot_wanted(lsn, epoch));
            }
            Event::Taken(info) => {
                {
                    let mut state = lock(&self.snapshots.state);
                    state.installed.push(info);
                    state.installed.sort_by_key(|info| info.lsn);
                }
                self.snapshot_retain_and_truncate()?;
            }
            Event::Received { info, reply } => {
                let installed = self.snapshot_install(&info)?;
                let _ = reply.send(installed);
            }
            Event::Sent { to, delivered } => {
                let input = match delivered {
                    Some((lsn, epoch)) => Input::SnapshotSent { to, lsn, epoch },
                    None => Input::SnapshotFailed { to },
                };
                self.step(input, StepContext::default())?;
            }
        }
        Ok(())
    }

    /// Starts streaming the newest snapshot to `to` (`Action::SendSnapshot`).
    pub(super) fn snapshot_send(&mut self, to: NodeId) {
        let Some(addr) = self.config.peers.get(&to).copied() else {
            self.followups.push_back(Input::SnapshotFailed { to });
            return;
        };
        if !self.net.is_connected(to) {
            // Unreachable: the core asks again with a later heartbeat.
            debug!(peer = %to, "a backup needs a snapshot but is not connected");
            self.followups.push_back(Input::SnapshotFailed { to });
            return;
        }
        let snapshots = Arc::clone(&self.snapshots);
        let peer_config = self.net.config();
        let epoch = self.core.epoch();
        let log = self.reader.clone();
        tokio::spawn(async move {
            let delivered = tokio::select! {
                _ = snapshots.cancel.cancelled() => return,
                delivered = send(&snapshots, &peer_config, to, addr, epoch, &log) => delivered,
            };
            let _ = snapshots.events.send(Event::Sent { to, delivered }).await;
        });
    }

    /// Puts a snapshot received from the primary in use: the log is replaced by it.
    ///
    /// This waits for the writer (a batch and its fsync, then the reset), unlike every other
    /// log change the loop makes: the core's log, the WAL, the subscriptions and the list of
    /// snapshots change over at one point of the loop. Queued instead, the core would go on
    /// with the old log while the WAL numbers the next record after the snapshot (a
    /// promotion in between would write its epoch-start record at an LSN the WAL refuses),
    /// and subscriptions could read the old log while it is being deleted. It happens only
    /// on a backup catching up, never on the primary.
    ///
    /// Crash argument: 1. the snapshot file is installed (fsynced, renamed, directory
    /// fsynced) before this runs; 2. the log is reset to start after it (segments deleted,
    /// directory fsynced, an empty segment installed). A crash between 1 and 2 leaves the
    /// old log beside a newer snapshot it does not continue; [`recover`] then resets the log
    /// itself. The older snapshots are removed last: until then they are merely unused.
    fn snapshot_install(&mut self, info: &SnapshotInfo) -> Result<bool, NodeError> {
        if !self.core.snapshot_wanted(info.lsn, info.epoch) {
            info!(lsn = %info.lsn, "snapshot from the primary no longer needed; removing it");
            let _ = std::fs::remove_file(&info.path);
            return Ok(false);
        }
        // Subscriptions stop reading the old log before it goes and the commit LSN jumps.
        self.snapshots.reset_tx.send_replace(info.lsn);
        let writer = &self.writer;
        super::blocking(|| writer.reset(info.lsn.next())).map_err(|e| self.disk_failed(e))?;
        self.cache = TailCache::default();
        // Everything queued before the reset is done, and it replaced what they did.
        self.prefix_cut = None;
        self.suffix_cut = None;
        self.step(
            Input::SnapshotInstalled {
                lsn: info.lsn,
                epoch: info.epoch,
            },
            StepContext::default(),
        )?;
        let older: Vec<SnapshotInfo> = {
            let mut state = lock(&self.snapshots.state);
            let older = std::mem::take(&mut state.installed);
            state.installed.push(info.clone());
            state.last_taken = Instant::now();
            state.wanted_soon = false;
            older
        };
        self.snapshots.log_bytes.store(0, Ordering::Relaxed);
        snapshot_remove(
            &self.snapshots.dir,
            older.iter().filter(|o| o.path != info.path),
        );
        SnapshotMetrics::add(&self.snapshots.metrics.installed_from_primary);
        info!(lsn = %info.lsn, epoch = %info.epoch, "installed a snapshot from the primary; the log continues after it");
        Ok(true)
    }

    /// Keeps the newest `--snapshots-retain` snapshots and deletes the log segments that no
    /// kept snapshot needs, keeping `--wal-retain-bytes` behind the newest (module docs).
    fn snapshot_retain_and_truncate(&mut self) -> Result<(), NodeError> {
        let retain = self.snapshots.config.retain.max(1);
        let (doomed, oldest, newest) = {
            let mut state = lock(&self.snapshots.state);
            let excess = state.installed.len().saturating_sub(retain);
            let doomed: Vec<SnapshotInfo> = state.installed.drain(..excess).collect();
            let (Some(oldest), Some(newest)) = (state.installed.first(), state.installed.last())
            else {
                return Ok(());
            };
            (doomed, oldest.lsn, newest.lsn)
        };
        snapshot_remove(&self.snapshots.dir, doomed.iter());
        let wal_dir = self.config.data_dir.join("wal");
        let segments = match wal_segments(&wal_dir) {
            Ok(segments) => segments,
            Err(e) => {
                warn!(error = %e, "cannot list the log segments; not truncating");
                return Ok(());
            }
        };
        let Some(cut) = truncation_point(
            &segments,
            oldest.next(),
            newest,
            self.snapshots.config.wal_retain_bytes,
        ) else {
            return Ok(());
        };
        let first = self.reader.first_lsn();
        if cut <= first || self.prefix_cut.is_some() {
            // Nothing to cut, or a cut still queued (the next snapshot cuts further).
            return Ok(());
        }
        // Queued, not waited for (the writer may be in a slow fsync): the loop hears that it
        // is done with the batch's durable progress, logs it then, and tells the core
        // (`Shell::prefix_catch_up`).
        let ticket = match self.writer.queue_truncate_prefix(cut) {
            Ok(ticket) => ticket,
            Err(e) => return Err(self.disk_failed(e)),
        };
        self.prefix_cut = Some(super::PrefixCut {
            ticket,
            first_lsn: cut,
            snapshot_lsn: newest,
            segments: segments.iter().filter(|(lsn, _)| *lsn < cut).count(),
        });
        Ok(())
    }
}

/// Removes snapshot files on a blocking thread (best effort: a file left behind is only
/// unused, and start-up or the next retention removes it) and fsyncs the directory once.
fn snapshot_remove<'a>(dir: &Path, doomed: impl Iterator<Item = &'a SnapshotInfo>) {
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

/// The segments of the log in `dir`: first LSN and file length, ascending.
fn wal_segments(dir: &Path) -> std::io::Result<Vec<(Lsn, u64)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(lsn) = entry
            .file_name()
            .to_str()
            .and_then(wal::segment::parse_file_name)
        else {
            continue;
        };
        segments.push((lsn, entry.metadata()?.len()));
    }
    segments.sort();
    Ok(segments)
}

/// The first LSN the log should keep: the start of the newest segment at or below `limit`
/// (no record above `limit - 1` is given up) such that the segments from it up to the one
/// holding `newest` total at least `retain_bytes`. `None` when no segment qualifies.
pub fn truncation_point(
    segments: &[(Lsn, u64)],
    limit: Lsn,
    newest: Lsn,
    retain_bytes: u64,
) -> Option<Lsn> {
    let mut kept_bytes = 0u64;
    for &(first, len) in segments.iter().rev() {
        if first > newest {
            continue;
        }
        kept_bytes = kept_bytes.saturating_add(len);
        if first <= limit && kept_bytes >= retain_bytes {
            return Some(first);
        }
    }
    None
}

// The transfer: sender.

/// Progress of one transfer: logged every [`PROGRESS_LOG_EVERY`] and shown in `/status`.
struct Meter {
    status: TransferStatus,
    started: Instant,
    logged: Instant,
}

impl Meter {
    fn new(peer: NodeId, direction: &'static str, lsn: Lsn, total: u64, from: u64) -> Meter {
        let now = Instant::now();
        Meter {
            status: TransferStatus {
                peer: peer.get(),
                direction,
                lsn: lsn.get(),
                bytes_done: from,
                bytes_total: total,
                resumed_at: from,
                rate_bytes_per_s: 0,
                eta_ms: None,
            },
            started: now,
            logged: now,
        }
    }

    fn update(&mut self, snapshots: &Snapshots, done: u64) {
        let status = &mut self.status;
        status.bytes_done = done;
        let secs = self.started.elapsed().as_secs_f64();
        if secs > 0.0 {
            status.rate_bytes_per_s = ((done - status.resumed_at) as f64 / secs) as u64;
        }
        status.eta_ms = (status.rate_bytes_per_s > 0).then(|| {
            (status.bytes_total.saturating_sub(done) as f64 * 1000.0
                / status.rate_bytes_per_s as f64) as u64
        });
        if self.logged.elapsed() >= PROGRESS_LOG_EVERY {
            self.logged = Instant::now();
            info!(
                peer = status.peer,
                direction = status.direction,
                lsn = status.lsn,
                bytes_done = done,
                bytes_total = status.bytes_total,
                rate_mb_per_s = format!("{:.1}", status.rate_bytes_per_s as f64 / 1e6),
                eta_s = status.eta_ms.map(|ms| ms / 1000),
                "snapshot transfer progress"
            );
        }
        snapshots.set_transfer(Some(status.clone()), (status.peer, status.direction));
    }

    fn done(&self, snapshots: &Snapshots) {
        snapshots.set_transfer(None, (self.status.peer, self.status.direction));
    }
}

/// Why one attempt of a transfer ended early.
#[derive(Debug, thiserror::Error)]
enum TransferError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot {0}")]
    Snapshot(#[from] wal::Error),
    #[error("connecting: {0}")]
    Connect(String),
    #[error("bad frame: {0}")]
    Decode(#[from] crate::proto::peer::DecodeError),
    #[error("the peer closed the connection")]
    Closed,
    #[error("no progress for {0:?}")]
    Stalled(Duration),
    #[error("{0}")]
    Protocol(String),
}

/// How long a sender waits for an answer before it gives up on the connection and dials
/// again (the receiver resumes). Acknowledgements follow every chunk written, so only a
/// stopped receiver or a dead link is this slow.
const STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams the newest snapshot to `to`; retries a broken-off transfer (the receiver
/// resumes) up to [`SEND_ATTEMPTS_MAX`] times. Returns what was delivered, for the core.
///
/// Every chunk is verified as it is read. A snapshot found damaged is put aside
/// ([`Snapshots::quarantine`]) and the one before it sent instead, if the log (`log`)
/// still continues it; each pass uses up one snapshot, so this ends.
pub async fn send(
    snapshots: &Arc<Snapshots>,
    config: &Arc<PeerConfig>,
    to: NodeId,
    addr: std::net::SocketAddr,
    epoch: Epoch,
    log: &wal::reader::Reader,
) -> Option<(Lsn, Epoch)> {
    loop {
        let Some(info) = snapshots.newest() else {
            warn!(peer = %to, "a backup needs a snapshot, but this node has none yet");
            return None;
        };
        let log_first_lsn = log.first_lsn();
        if info.lsn.next() < log_first_lsn {
            // The backup would need records between the snapshot and the log's start.
            warn!(peer = %to, lsn = %info.lsn, log_first_lsn = %log_first_lsn, "the newest usable snapshot ends before the log starts; waiting for a new snapshot");
            return None;
        }
        match send_snapshot(snapshots, config, to, addr, epoch, &info).await {
            Ok(delivered) => return delivered,
            Err(damage) => snapshots.quarantine(&info, &damage).await,
        }
    }
}

/// [`send`] of one snapshot: what was delivered (`None` if the transfer failed), or the
/// damage found in the file.
async fn send_snapshot(
    snapshots: &Arc<Snapshots>,
    config: &Arc<PeerConfig>,
    to: NodeId,
    addr: std::net::SocketAddr,
    epoch: Epoch,
    info: &SnapshotInfo,
) -> Result<Option<(Lsn, Epoch)>, wal::Error> {
    let path = info.path.clone();
    let trailer = match on_blocking_thread(move || wal::snapshot::read_trailer(&path)).await {
        Ok(trailer) => trailer,
        Err(e) if is_damage(&e) => return Err(e),
        Err(e) => {
            error!(error = %e, "cannot read the snapshot to send");
            return Ok(None);
        }
    };
    info!(peer = %to, lsn = %info.lsn, body_len = info.body_len, "sending a snapshot to a backup");
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=SEND_ATTEMPTS_MAX {
        match send_attempt(snapshots, config, to, addr, epoch, info, trailer.body_crc).await {
            Ok(installed) => {
                info!(peer = %to, lsn = %info.lsn, installed, "snapshot transfer done");
                return Ok(Some((info.lsn, info.epoch)));
            }
            Err(TransferError::Snapshot(e)) if is_damage(&e) => return Err(e),
            Err(e) => {
                warn!(peer = %to, attempt, error = %e, "snapshot transfer broke off; it resumes where it stopped");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    Ok(None)
}

async fn send_attempt(
    snapshots: &Arc<Snapshots>,
    config: &Arc<PeerConfig>,
    to: NodeId,
    addr: std::net::SocketAddr,
    epoch: Epoch,
    info: &SnapshotInfo,
    body_crc: u32,
) -> Result<bool, TransferError> {
    let stall = STALL_TIMEOUT;
    let connect = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        dial_handshake(config, to, stream)
            .await
            .map_err(|e| TransferError::Connect(e.to_string()))
    };
    let stream = tokio::time::timeout(stall * 2, connect)
        .await
        .map_err(|_| TransferError::Stalled(stall * 2))??;
    let (read, write) = tokio::io::split(stream.into_inner());
    let mut frames = FramedRead::new(read, PeerCodec);
    let mut out = BufWriter::new(write);
    let mut head = BytesMut::with_capacity(64);
    write_frame(
        &mut out,
        &mut head,
        &Frame::SnapshotBegin {
            epoch,
            lsn: info.lsn,
            snapshot_epoch: info.epoch,
            body_len: info.body_len,
        },
    )
    .await?;
    out.flush().await?;
    let start = match read_answer(&mut frames, stall).await? {
        Frame::SnapshotDone { installed } => return Ok(installed),
        Frame::SnapshotAck { offset } if offset <= info.body_len => offset,
        other => {
            return Err(TransferError::Protocol(format!(
                "expected an ack, got {other:?}"
            )))
        }
    };
    if start > 0 {
        info!(peer = %to, offset = start, body_len = info.body_len, "resuming the snapshot transfer");
        SnapshotMetrics::add(&snapshots.metrics.transfers_resumed);
    }
    let mut meter = Meter::new(to, "sending", info.lsn, info.body_len, start);
    let (chunks_tx, mut chunks) = mpsc::channel(READ_AHEAD_CHUNKS);
    let path = info.path.clone();
    let reading = tokio::task::spawn_blocking(move || read_chunks(&path, start, chunks_tx));
    let result = send_window(
        snapshots,
        &mut frames,
        &mut out,
        &mut head,
        &mut chunks,
        &mut meter,
        start,
        body_crc,
        stall,
    )
    .await;
    meter.done(snapshots);
    drop(chunks);
    match reading.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // Damage is reported once, by `send`, as it puts the snapshot aside.
            if !is_damage(&e) {
                error!(path = %info.path.display(), error = %e, "the snapshot being sent failed to read");
            }
            return Err(e.into());
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
    result
}

/// Sends chunks while fewer than [`TRANSFER_WINDOW_BYTES`] are unacknowledged, then the
/// end, until the receiver says it is done.
#[allow(clippy::too_many_arguments)]
async fn send_window<R, W>(
    snapshots: &Snapshots,
    frames: &mut FramedRead<R, PeerCodec>,
    out: &mut BufWriter<W>,
    head: &mut BytesMut,
    chunks: &mut mpsc::Receiver<wal::snapshot::Chunk>,
    meter: &mut Meter,
    start: u64,
    body_crc: u32,
    stall: Duration,
) -> Result<bool, TransferError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut sent = start;
    let mut acked = start;
    let mut ended = false;
    let mut progress_at = Instant::now();
    loop {
        let can_send = !ended && sent - acked < TRANSFER_WINDOW_BYTES;
        // An answer is due while anything is unacknowledged, or after the end.
        let waiting = ended || sent > acked;
        tokio::select! {
            biased;
            frame = frames.next(), if waiting => {
                let frame = match frame {
                    None => return Err(TransferError::Closed),
                    Some(frame) => frame?,
                };
                match frame {
                    Frame::SnapshotAck { offset } if offset >= acked && offset <= sent => {
                        Metrics::add(&snapshots.metrics.bytes_sent, offset - acked);
                        acked = offset;
                        progress_at = Instant::now();
                        meter.update(snapshots, acked);
                    }
                    Frame::SnapshotDone { installed } => return Ok(installed),
                    other => {
                        return Err(TransferError::Protocol(format!(
                            "unexpected {other:?} during the transfer"
                        )))
                    }
                }
            }
            _ = tokio::time::sleep_until((progress_at + stall).into()), if waiting => {
                return Err(TransferError::Stalled(stall));
            }
            chunk = chunks.recv(), if can_send => {
                if let Some(delay) = snapshots.chunk_delay {
                    tokio::time::sleep(delay).await;
                }
                match chunk {
                    Some(chunk) => {
                        assert_eq!(chunk.offset, sent, "snapshot chunks read out of order");
                        sent += chunk.data.len() as u64;
                        let frame = Frame::SnapshotChunk {
                            offset: chunk.offset,
                            raw: chunk.raw,
                        };
                        write_frame(out, head, &frame).await?;
                    }
                    None => {
                        // The reader ended: the body is all sent (or it failed to read, which
                        // the caller reports; the receiver then refuses the short body).
                        write_frame(out, head, &Frame::SnapshotEnd { body_crc }).await?;
                        ended = true;
                    }
                }
                out.flush().await?;
            }
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    out: &mut BufWriter<W>,
    head: &mut BytesMut,
    frame: &Frame,
) -> Result<(), TransferError> {
    head.clear();
    let tail: Bytes = encode_head(frame, head);
    out.write_all(head).await?;
    out.write_all(&tail).await?;
    Ok(())
}

async fn read_answer<R: AsyncRead + Unpin>(
    frames: &mut FramedRead<R, PeerCodec>,
    stall: Duration,
) -> Result<Frame, TransferError> {
    match tokio::time::timeout(stall, frames.next()).await {
        Err(_) => Err(TransferError::Stalled(stall)),
        Ok(None) => Err(TransferError::Closed),
        Ok(Some(frame)) => Ok(frame?),
    }
}

// The transfer: receiver.

/// Serves a snapshot connection from `from` that began with `begin` (a `SnapshotBegin`),
/// on the acceptor side of the peer port.
pub async fn receive<R, W>(
    snapshots: &Arc<Snapshots>,
    from: NodeId,
    begin: Frame,
    mut frames: FramedRead<R, PeerCodec>,
    mut out: BufWriter<W>,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Frame::SnapshotBegin {
        lsn,
        snapshot_epoch: epoch,
        body_len,
        ..
    } = begin
    else {
        unreachable!("receive is called with a SnapshotBegin");
    };
    if lsn == Lsn::ZERO || epoch == Epoch::ZERO {
        return Err(format!("snapshot begin with lsn {lsn}, epoch {epoch}"));
    }
    let mut head = BytesMut::with_capacity(64);
    let (reply, answer) = oneshot::channel();
    let wanted = snapshots
        .events
        .send(Event::Wanted { lsn, epoch, reply })
        .await
        .is_ok()
        && answer.await.unwrap_or(false);
    if !wanted {
        debug!(%lsn, "snapshot offered by the primary not needed");
        let done = Frame::SnapshotDone { installed: false };
        write_frame(&mut out, &mut head, &done)
            .await
            .map_err(|e| e.to_string())?;
        out.flush().await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    let writer = receive_writer(snapshots, from, lsn, epoch, body_len).await?;
    let start = writer.body_len();
    let mut meter = Meter::new(from, "receiving", lsn, body_len, start);
    let mut slot = Some(writer);
    let result = receive_body(
        snapshots,
        &mut slot,
        &mut frames,
        &mut out,
        &mut head,
        &mut meter,
        body_len,
    )
    .await;
    meter.done(snapshots);
    let mut state = lock(&snapshots.state);
    state.receiving = None;
    // Keep what arrived, to resume from, unless the transfer is over.
    if let Some(writer) = slot {
        info!(%lsn, offset = writer.body_len(), body_len, "snapshot receive broke off; keeping what arrived to resume");
        state.partial = Some(Partial {
            from,
            lsn,
            epoch,
            body_len,
            writer,
        });
    }
    result
}

/// The partial receive of this same snapshot, or a new file. A receive still running on an
/// older connection (its sender gave up on it and dialled again) is waited for, a bounded
/// time: it ends as soon as it sees the old connection closed, and leaves what it received.
async fn receive_writer(
    snapshots: &Snapshots,
    from: NodeId,
    lsn: Lsn,
    epoch: Epoch,
    body_len: u64,
) -> Result<SnapshotWriter, String> {
    let deadline = Instant::now() + RECEIVE_WAIT;
    let partial = loop {
        {
            let mut state = lock(&snapshots.state);
            if state.receiving.is_none() {
                state.receiving = Some(lsn);
                break state.partial.take();
            }
        }
        if Instant::now() >= deadline {
            return Err("another receive is still running".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    if let Some(partial) = partial {
        if partial.lsn == lsn && partial.epoch == epoch && partial.body_len == body_len {
            info!(peer = %from, %lsn, offset = partial.writer.body_len(), previous_sender = %partial.from, "resuming a snapshot receive");
            return Ok(partial.writer);
        }
        debug!(old_lsn = %partial.lsn, %lsn, "dropping a partial snapshot of another lsn");
        // Dropping the writer removes its temp file.
        on_blocking_thread(move || drop(partial)).await;
    }
    let dir = snapshots.dir.clone();
    let created = on_blocking_thread(move || SnapshotWriter::create(&dir, lsn, epoch)).await;
    created.map_err(|e| {
        lock(&snapshots.state).receiving = None;
        format!("cannot create the snapshot file: {e}")
    })
}

#[allow(clippy::too_many_arguments)]
async fn receive_body<R, W>(
    snapshots: &Arc<Snapshots>,
    slot: &mut Option<SnapshotWriter>,
    frames: &mut FramedRead<R, PeerCodec>,
    out: &mut BufWriter<W>,
    head: &mut BytesMut,
    meter: &mut Meter,
    body_len: u64,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(start) = slot.as_ref().map(SnapshotWriter::body_len) else {
        unreachable!("receive_body starts with a writer");
    };
    let ack = Frame::SnapshotAck { offset: start };
    write_frame(out, head, &ack)
        .await
        .map_err(|e| e.to_string())?;
    out.flush().await.map_err(|e| e.to_string())?;
    // The receiver waits longer than the sender, so that it is the sender that gives up
    // and dials again.
    let patience = Duration::from_secs(30);
    loop {
        let frame = match tokio::time::timeout(patience, frames.next()).await {
            Err(_) => return Err(format!("no snapshot data for {patience:?}")),
            Ok(None) => return Err("the sender closed the connection".into()),
            Ok(Some(Err(e))) => return Err(format!("bad frame: {e}")),
            Ok(Some(Ok(frame))) => frame,
        };
        match frame {
            Frame::SnapshotChunk { offset, raw } => {
                let Some(mut writer) = slot.take() else {
                    unreachable!("the writer is put back after every chunk");
                };
                if offset != writer.body_len() {
                    *slot = Some(writer);
                    return Err(format!(
                        "chunk at offset {offset} where the transfer is at another"
                    ));
                }
                let before = writer.body_len();
                let (writer, result) = on_blocking_thread(move || {
                    let result = writer.write_raw_chunk(&raw);
                    (writer, result)
                })
                .await;
                match result {
                    Ok(()) => {}
                    // A chunk that fails its CRC was not written: keep the rest.
                    Err(e @ wal::Error::BadRecord { .. }) => {
                        *slot = Some(writer);
                        return Err(format!("chunk at offset {offset} failed verification: {e}"));
                    }
                    Err(e) => return Err(format!("cannot write the snapshot: {e}")),
                }
                if writer.body_len() > body_len {
                    return Err("more snapshot data than announced".into());
                }
                let done = writer.body_len();
                Metrics::add(&snapshots.metrics.bytes_received, done - before);
                *slot = Some(writer);
                meter.update(snapshots, done);
                let ack = Frame::SnapshotAck { offset: done };
                write_frame(out, head, &ack)
                    .await
                    .map_err(|e| e.to_string())?;
                out.flush().await.map_err(|e| e.to_string())?;
            }
            Frame::SnapshotEnd { body_crc } => {
                let Some(writer) = slot.take() else {
                    unreachable!("the writer is put back after every chunk");
                };
                if writer.body_len() != body_len || writer.body_crc() != body_crc {
                    // Start over: something was lost or damaged that no chunk CRC caught.
                    return Err(format!(
                        "the body ({} bytes, crc {:08x}) does not match the sender's ({body_len} bytes, crc {body_crc:08x})",
                        writer.body_len(),
                        writer.body_crc()
                    ));
                }
                let info = on_blocking_thread(move || writer.finish())
                    .await
                    .map_err(|e| format!("cannot install the snapshot: {e}"))?;
                let (reply, answer) = oneshot::channel();
                let installed = snapshots
                    .events
                    .send(Event::Received { info, reply })
                    .await
                    .is_ok()
                    && answer.await.unwrap_or(false);
                let done = Frame::SnapshotDone { installed };
                write_frame(out, head, &done)
                    .await
                    .map_err(|e| e.to_string())?;
                out.flush().await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            other => return Err(format!("unexpected {other:?} during a snapshot transfer")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cut keeps the log back to the oldest kept snapshot and at least the retained
    /// bytes behind the newest, and deletes only whole segments.
    #[test]
    fn truncation_point_keeps_the_oldest_snapshot_and_the_retained_bytes() {
        let segments = [
            (Lsn(1), 100),
            (Lsn(101), 100),
            (Lsn(201), 100),
            (Lsn(301), 50),
        ];
        // Retain nothing: cut at the segment holding the oldest kept snapshot's next LSN.
        assert_eq!(
            truncation_point(&segments, Lsn(251), Lsn(320), 0),
            Some(Lsn(201))
        );
        // The oldest kept snapshot limits the cut.
        assert_eq!(
            truncation_point(&segments, Lsn(150), Lsn(320), 0),
            Some(Lsn(101))
        );
        // Retained bytes push the cut down.
        assert_eq!(
            truncation_point(&segments, Lsn(251), Lsn(320), 200),
            Some(Lsn(101))
        );
        assert_eq!(
            truncation_point(&segments, Lsn(251), Lsn(320), 10_000),
            None
        );
        // Segments after the newest snapshot do not count as behind it.
        assert_eq!(
            truncation_point(&segments, Lsn(251), Lsn(250), 150),
            Some(Lsn(101))
        );
    }
}
