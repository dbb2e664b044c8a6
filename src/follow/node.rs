//! Follow mode in the node (`--follow-dir`): one task that decides what this node does with
//! the followed directory, from its role.
//!
//! - **Standby** (any role but a serving primary). The application is not running (the
//!   supervisor's gate is closed). Every committed record is applied to the directory
//!   ([`Replay`]), so it holds every acknowledged write; the node counts as live for the
//!   core's hand-over and deferral rules while that succeeds (`AppHealth::set_standby`).
//! - **Promotion.** Once this node is primary and its epoch's first record is committed
//!   (so every record committed in an earlier epoch is committed here too, and nothing
//!   else is proposed yet): the directory is brought to the commit LSN, marked dirty (from
//!   now on the application writes it), the capture and shipper start (the capture takes
//!   the directory as it is, which is the committed log's), the gate opens and the
//!   application starts, and once it accepts a connection at `--app-addr` the client port
//!   is given the shipper and serves. The time from the commit of the epoch start to then
//!   is logged and kept in the status (`last_start_ms`).
//! - **Serving.** Every reply from the application waits at the client port for
//!   [`Shipper::reply_barrier`]. An application that exits is started again in place by the
//!   supervisor (the directory holds every committed change, and more).
//! - **Demotion** (another role or epoch, or shutdown). The client port loses the shipper,
//!   the gate closes and the application is killed (and waited for, group and all), the
//!   shipper stops (a proposal under way gets its outcome first), and the directory, marked
//!   dirty, is rebuilt from the committed log before it is followed again: what the
//!   application wrote and was never committed is gone with it.
//! - **Capture failure while serving** (a file rewritten in place or cut back, the
//!   directory removed):
//!   logged with the file's name, then the same as a demotion, and, still primary, a new
//!   promotion after [`RESTART_PAUSE`]. Meanwhile the application is gone, so a primary that
//!   keeps failing hands over after `--app-timeout` (the app-health rules).
//!
//! - **Snapshots.** On standby the copy of the directory is exactly the committed log's
//!   state at the LSN it holds, so the node's snapshot requests are answered with a snapshot
//!   of it (`snapshot.rs`), and the log is truncated behind it as usual; a serving primary
//!   declines (its directory is the application's, at no LSN). A rebuild starts from the
//!   newest snapshot, and a snapshot received from the primary (the log replaced) is
//!   restored into the copy.

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use wal::snapshot::SnapshotWriter;

use super::capture::Capture;
use super::change::is_staged;
use super::materialize::read_dir_names;
use super::materialize::MaterializeError;
use super::replay::{AppliedLsn, Replay, ReplayError};
use super::ship::{ShipError, Shipper};
use super::snapshot::DirSnapshotError;
use crate::core::Role;
use crate::node::app_health::AppHealth;
use crate::node::snapshot::schedule::UploadGuard;
use crate::node::{NodeHandle, NodeStatus};
use crate::Lsn;

/// The pause before a primary whose capture failed starts its application again.
pub const RESTART_PAUSE: Duration = Duration::from_secs(1);
/// On standby, the directory is brought up to the commit LSN at most this often: each
/// catch-up fsyncs the files it wrote and stores the LSN reached (a file installed by
/// rename), which under a steady write load costs a backup more CPU than the log itself
/// when done for every commit. A promotion catches up on whatever is left first, so this
/// only bounds how far a copy lags (and a snapshot of it) while nothing happens.
const STANDBY_APPLY_EVERY: Duration = Duration::from_millis(25);
/// The pause before a failed catch-up of the directory is tried again.
const REPLAY_RETRY: Duration = Duration::from_secs(1);
/// How often a backup with nothing to apply checks its copy's names and lengths.
const STANDBY_CHECK_EVERY: Duration = Duration::from_secs(1);
/// How often a starting application is tried at `--app-addr`.
const APP_CONNECT_EVERY: Duration = Duration::from_millis(2);
/// How long one run of `--app-ready-cmd` may take.
const READY_CMD_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the client port's holders of the shipper get to let go of it at demotion.
const RELEASE_WAIT: Duration = Duration::from_secs(2);

/// What follow mode needs from the node's configuration.
#[derive(Debug, Clone)]
pub struct FollowConfig {
    /// The followed directory.
    pub dir: PathBuf,
    /// Where the LSN materialized in it is recorded (`<data-dir>/follow-state`).
    pub state_path: PathBuf,
    /// Where the application serves clients.
    pub app_addr: SocketAddr,
    /// `--app-ready-cmd`: run (`sh -c`) after the application accepts a connection, until it
    /// exits 0, before the client port serves (an application that accepts connections
    /// before it has loaded its data, as Redis does, answering `-LOADING`).
    pub ready_cmd: Option<String>,
}

/// The followed directory's state, in `/status` (`follow`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FollowStatus {
    pub dir: String,
    /// `standby` (materializing the committed log), `starting` (promoted, application
    /// starting), `serving`, or `failed` (the last catch-up or capture failed; retried).
    pub state: &'static str,
    /// On standby: the last LSN whose change is durable in the directory.
    pub applied_lsn: u64,
    /// While serving: changes captured and committed since the application started.
    pub committed_changes: u64,
    /// The last error, if the directory could not be followed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The last promotion: from the commit of the epoch start to serving, in ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_start_ms: Option<u64>,
    /// When the state last changed, in milliseconds since the Unix epoch.
    pub since_ms: u64,
}

/// The shipper while this node serves, for the client port.
pub type Serving = watch::Receiver<Option<Arc<Shipper>>>;

/// What the follow task drives.
pub struct Follow {
    pub config: FollowConfig,
    pub node: NodeHandle,
    pub health: Arc<AppHealth>,
    /// The supervisor's gate: open while the application may run.
    pub gate: watch::Sender<bool>,
    /// The supervisor's view: a run of the application may be under way.
    pub app_running: watch::Receiver<bool>,
    pub serving: watch::Sender<Option<Arc<Shipper>>>,
    pub status: watch::Sender<FollowStatus>,
}

/// The follow task's status channel, in its first state.
pub fn status_channel(
    config: &FollowConfig,
) -> (watch::Sender<FollowStatus>, watch::Receiver<FollowStatus>) {
    watch::channel(FollowStatus {
        dir: config.dir.display().to_string(),
        state: "standby",
        applied_lsn: 0,
        committed_changes: 0,
        error: None,
        last_start_ms: None,
        since_ms: unix_ms(),
    })
}

/// How a serving term ended.
enum Ended {
    /// No longer primary in that epoch.
    Demoted,
    /// The capture or the shipping failed while still primary.
    Failed(ShipError),
    Shutdown,
}

impl Follow {
    /// Runs until `cancel`; opening the directory fails only for an unreadable state file
    /// or directory (the error is returned, and the node stops).
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ReplayError> {
        let replay = {
            let config = self.config.clone();
            blocking(move || Replay::open(&config.dir, &config.state_path)).await?
        };
        if let Some(aside) = replay.moved_aside() {
            warn!(
                dir = %self.config.dir.display(),
                moved_to = %aside.display(),
                "the followed directory held files this node never materialized (a new node, or its data dir was wiped); moved them aside, nothing deleted"
            );
        }
        // The runtime reads how far the copy is without the lock; only blocking threads take it.
        let applied = replay.applied_lsn();
        let replay = Arc::new(Mutex::new(replay));
        // Set while a promotion waits for the replay: a snapshot of the copy in progress
        // gives up (and its lock) rather than hold up the failover.
        let promoting = Arc::new(AtomicBool::new(false));
        tokio::spawn(answer_snapshot_requests(
            self.node.clone(),
            Arc::clone(&replay),
            Arc::clone(&promoting),
            self.status.subscribe(),
            cancel.clone(),
        ));
        self.health.set_standby(Some(false));
        loop {
            let Some(epoch) = self.standby(&replay, &applied, &cancel).await else {
                return Ok(());
            };
            let ready_at = Instant::now();
            promoting.store(true, Ordering::Release);
            let promoted = self.promote(&replay, epoch, &cancel).await;
            promoting.store(false, Ordering::Release);
            let Some(shipper) = promoted else {
                // Demoted or stopped while starting.
                self.demote(&replay, None).await;
                if cancel.is_cancelled() {
                    return Ok(());
                }
                continue;
            };
            let took = ready_at.elapsed();
            let last_start_ms = Some(took.as_millis() as u64);
            info!(
                epoch,
                start_ms = took.as_millis() as u64,
                "follow mode: serving (directory materialized, application started and accepting connections)"
            );
            self.status.send_modify(|s| s.last_start_ms = last_start_ms);
            self.set_state("serving", None);
            let ended = self.serve(&shipper, epoch, &cancel).await;
            self.demote(&replay, Some(shipper)).await;
            match ended {
                Ended::Shutdown => return Ok(()),
                Ended::Demoted => {}
                Ended::Failed(error) => {
                    error!(error = %error, dir = %self.config.dir.display(), "follow mode: the followed directory cannot be replicated; the application was stopped and the directory rewound to the committed log");
                    self.set_state("failed", Some(error.to_string()));
                    tokio::select! {
                        () = tokio::time::sleep(RESTART_PAUSE) => {}
                        () = cancel.cancelled() => return Ok(()),
                    }
                }
            }
        }
    }

    /// Keeps the directory up with the commit LSN until this node is a primary whose epoch
    /// start is committed; returns that epoch (`None` on shutdown).
    async fn standby(
        &self,
        replay: &Arc<Mutex<Replay>>,
        applied_lsn: &AppliedLsn,
        cancel: &CancellationToken,
    ) -> Option<u64> {
        let mut status = self.node.watch_status();
        let mut commit = self.node.watch_commit();
        let mut reset = self.node.snapshots.watch_reset();
        let mut failing = false;
        let mut applied_at: Option<tokio::time::Instant> = None;
        // The status changes with every heartbeat: the idle check keeps its own deadline.
        let mut next_check = tokio::time::Instant::now() + STANDBY_CHECK_EVERY;
        loop {
            let commit_lsn = *commit.borrow_and_update();
            let now = status.borrow_and_update().clone();
            if let Some(epoch) = ready_primary(&now, commit_lsn) {
                return Some(epoch);
            }
            let applied = applied_lsn.get();
            let log_moved_on = applied.next() < self.node.reader().first_lsn();
            let due = applied_at.map(|at| at + STANDBY_APPLY_EVERY);
            if commit_lsn > applied && !failing && !log_moved_on {
                if let Some(due) = due.filter(|due| *due > tokio::time::Instant::now()) {
                    // Too soon after the last catch-up: later, unless the role changes.
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        changed = status.changed() => if changed.is_err() { return None },
                        changed = reset.changed() => if changed.is_err() { return None },
                        () = cancel.cancelled() => return None,
                    }
                    continue;
                }
            }
            if commit_lsn > applied || failing || log_moved_on {
                applied_at = Some(tokio::time::Instant::now());
                let replay_for = Arc::clone(replay);
                let reader = self.node.reader();
                let base = newest_snapshot(&self.node);
                let caught = blocking(move || {
                    let mut replay = lock(&replay_for);
                    replay.set_base(base);
                    replay.catch_up(&reader, commit_lsn)
                })
                .await;
                match caught {
                    Ok(applied) => {
                        if failing {
                            info!(applied_lsn = %applied, "follow mode: the directory is current again");
                        }
                        failing = false;
                        self.health.set_standby(Some(true));
                        self.status.send_modify(|s| {
                            if s.state != "standby" || s.error.is_some() {
                                s.since_ms = unix_ms();
                            }
                            s.state = "standby";
                            s.applied_lsn = applied.get();
                            s.committed_changes = 0;
                            s.error = None;
                        });
                    }
                    Err(e) => {
                        if !failing {
                            error!(error = %e, dir = %self.config.dir.display(), "follow mode: cannot apply the committed log to the followed directory; not standing for election until it can");
                        }
                        failing = true;
                        self.health.set_standby(Some(false));
                        self.set_state("failed", Some(e.to_string()));
                        tokio::select! {
                            () = tokio::time::sleep(REPLAY_RETRY) => {}
                            () = cancel.cancelled() => return None,
                        }
                        continue;
                    }
                }
                continue;
            } else if !failing {
                self.health.set_standby(Some(true));
                // Current without a catch-up (a restart with nothing new committed).
                self.status.send_if_modified(|s| {
                    let changed = s.state != "standby" || s.applied_lsn != applied.get();
                    if s.state != "standby" {
                        s.since_ms = unix_ms();
                    }
                    s.state = "standby";
                    s.applied_lsn = applied.get();
                    changed
                });
            }
            tokio::select! {
                changed = commit.changed() => if changed.is_err() { return None },
                changed = status.changed() => if changed.is_err() { return None },
                changed = reset.changed() => if changed.is_err() { return None },
                () = cancel.cancelled() => return None,
                // Nothing committed for a while: the copy's names and lengths are checked
                // anyway, so a file removed or cut in a quiet cluster is rebuilt now, not at
                // the next write or promotion. A copy marked for a rebuild meanwhile (a
                // snapshot refused) counts as holding nothing, and the loop catches it up.
                () = tokio::time::sleep_until(next_check), if !failing => {
                    next_check = tokio::time::Instant::now() + STANDBY_CHECK_EVERY;
                    let replay_for = Arc::clone(replay);
                    match blocking(move || lock(&replay_for).check_lengths()).await {
                        Ok(Some(differs)) => warn!(error = %differs, "follow mode: the copy of the followed directory is not what the log made of it; rebuilding it from the log"),
                        Ok(None) => {}
                        Err(e) => warn!(error = %e, "follow mode: cannot check the copy of the followed directory"),
                    }
                }
            }
        }
    }

    /// Brings the directory to the commit LSN, starts capture, shipper and application,
    /// and waits until the application accepts connections. `None` if this node stopped
    /// being primary in `epoch` meanwhile, or on shutdown, or if the directory or capture
    /// failed (logged; the caller demotes).
    async fn promote(
        &self,
        replay: &Arc<Mutex<Replay>>,
        epoch: u64,
        cancel: &CancellationToken,
    ) -> Option<Arc<Shipper>> {
        self.set_state("starting", None);
        let commit_lsn = *self.node.watch_commit().borrow();
        let base = newest_snapshot(&self.node);
        let replay_for = Arc::clone(replay);
        let reader = self.node.reader();
        let dir = self.config.dir.clone();
        let started = blocking(move || -> Result<(Lsn, Capture, _, Duration), String> {
            let mut replay = lock(&replay_for);
            replay.set_base(base);
            // The application must start on exactly what the log made of the directory.
            let checking = Instant::now();
            if let Some(differs) = replay.check().map_err(|e| e.to_string())? {
                warn!(error = %differs, "follow mode: the copy of the followed directory is not what the log made of it; rebuilding it from the log before the application starts");
            }
            let checked = checking.elapsed();
            let applied = replay
                .catch_up(&reader, commit_lsn)
                .map_err(|e| e.to_string())?;
            replay.mark_dirty().map_err(|e| e.to_string())?;
            let (tx, rx) = mpsc::channel();
            let capture = Capture::start(&dir, tx).map_err(|e| e.to_string())?;
            // Files left half-built by a log that ended inside a long install or a rescan
            // (`change::is_staged`): removed under the capture, so that every copy removes
            // them too, before the application sees the directory.
            for name in read_dir_names(&dir).map_err(|e| format!("{}: {e}", dir.display()))? {
                if is_staged(&name) {
                    let path = dir.join(std::ffi::OsStr::from_bytes(&name));
                    std::fs::remove_file(&path)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                }
            }
            Ok((applied, capture, rx, checked))
        })
        .await;
        let (applied, capture, rx, checked) = match started {
            Ok(started) => started,
            Err(e) => {
                error!(error = %e, "follow mode: cannot start serving the followed directory");
                self.set_state("failed", Some(e));
                return None;
            }
        };
        let shipper = match Shipper::start(
            capture,
            rx,
            self.node.clone(),
            tokio::runtime::Handle::current(),
        ) {
            Ok(shipper) => Arc::new(shipper),
            Err(e) => {
                error!(error = %e, "follow mode: cannot start shipping the followed directory");
                return None;
            }
        };
        info!(applied_lsn = %applied, check_ms = checked.as_millis() as u64, "follow mode: promoted; directory checked and at the commit LSN, starting the application");
        // From here the application's health counts: if it does not come up within
        // --app-timeout, the primary hands over.
        self.health.set_standby(None);
        self.gate.send_replace(true);
        let mut status = self.node.watch_status();
        loop {
            if !still_primary(&status.borrow_and_update(), epoch) || cancel.is_cancelled() {
                self.park(shipper).await;
                return None;
            }
            if tokio::net::TcpStream::connect(self.config.app_addr)
                .await
                .is_ok()
                && self.ready().await
            {
                self.health.reached(true);
                // It serves now: a cut of one of its files is no longer its own start-up.
                shipper.refuse_cuts();
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(APP_CONNECT_EVERY) => {}
                () = cancel.cancelled() => {}
                _ = status.changed() => {}
            }
        }
        self.serving.send_replace(Some(Arc::clone(&shipper)));
        Some(shipper)
    }

    /// Whether `--app-ready-cmd` (if any) says the application is ready: it exited 0 within
    /// [`READY_CMD_TIMEOUT`].
    async fn ready(&self) -> bool {
        let Some(command) = &self.config.ready_cmd else {
            return true;
        };
        let mut child = tokio::process::Command::new("sh");
        child
            .arg("-c")
            .arg(command)
            .env("UNDERSTUDY_APP_ADDR", self.config.app_addr.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        match child.spawn() {
            Ok(mut child) => matches!(
                tokio::time::timeout(READY_CMD_TIMEOUT, child.wait()).await,
                Ok(Ok(status)) if status.success()
            ),
            Err(e) => {
                warn!(error = %e, "cannot run --app-ready-cmd");
                false
            }
        }
    }

    /// Serves until demotion, shutdown or a shipping failure.
    async fn serve(&self, shipper: &Arc<Shipper>, epoch: u64, cancel: &CancellationToken) -> Ended {
        let mut status = self.node.watch_status();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            if !still_primary(&status.borrow_and_update(), epoch) {
                return Ended::Demoted;
            }
            tokio::select! {
                changed = status.changed() => if changed.is_err() { return Ended::Shutdown },
                () = cancel.cancelled() => return Ended::Shutdown,
                error = shipper.ended() => {
                    if !still_primary(&self.node.status(), epoch) {
                        return Ended::Demoted;
                    }
                    return Ended::Failed(error);
                }
                _ = tick.tick() => {
                    let committed = shipper.committed();
                    self.status.send_if_modified(|s| {
                        let changed = s.committed_changes != committed;
                        s.committed_changes = committed;
                        changed
                    });
                }
            }
        }
    }

    /// Stops serving: the client port lets go, the application is killed and waited for,
    /// shipping stops, and the directory is left to be rebuilt (it is marked dirty).
    async fn demote(&self, replay: &Arc<Mutex<Replay>>, shipper: Option<Arc<Shipper>>) {
        self.serving.send_replace(None);
        self.gate.send_replace(false);
        let mut running = self.app_running.clone();
        let _ = running.wait_for(|running| !*running).await;
        if let Some(shipper) = shipper {
            self.park(shipper).await;
        }
        self.health.set_standby(Some(false));
        // The directory was marked dirty before the application started; the next catch-up
        // rebuilds it. A node that never got that far left it as it was.
        let _ = replay;
        self.set_state("standby", None);
    }

    /// Stops the shipper and drops it off the runtime (its drop joins two threads) once the
    /// client port has let go of it.
    async fn park(&self, shipper: Arc<Shipper>) {
        let ended = shipper.stop().await;
        info!(reason = %ended, "follow mode: shipping stopped");
        let deadline = Instant::now() + RELEASE_WAIT;
        while Arc::strong_count(&shipper) > 1 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = tokio::task::spawn_blocking(move || drop(shipper)).await;
    }

    fn set_state(&self, state: &'static str, error: Option<String>) {
        self.status.send_modify(|s| {
            if s.state != state {
                s.since_ms = unix_ms();
            }
            s.state = state;
            s.error = error;
        });
    }
}

/// The node's newest snapshot, as a rebuild's starting point.
fn newest_snapshot(node: &NodeHandle) -> Option<(Lsn, PathBuf)> {
    node.snapshots.newest().map(|info| (info.lsn, info.path))
}

/// Answers the node's snapshot requests until `cancel`: on standby, with a snapshot of the
/// copy of the directory at the LSN it holds (read under the replay's lock, so nothing is
/// applied meanwhile, then written without it); otherwise (serving: the directory is the application's, at no LSN)
/// by declining, and the node asks again later.
async fn answer_snapshot_requests(
    node: NodeHandle,
    replay: Arc<Mutex<Replay>>,
    promoting: Arc<AtomicBool>,
    status: watch::Receiver<FollowStatus>,
    cancel: CancellationToken,
) {
    let snapshots = Arc::clone(&node.snapshots);
    let mut requests = snapshots.watch_requests();
    loop {
        tokio::select! {
            changed = requests.changed() => if changed.is_err() { return },
            () = cancel.cancelled() => return,
        }
        if status.borrow().state != "standby" {
            debug!("follow mode: not on standby; no snapshot of the directory now");
            snapshots.request_declined();
            continue;
        }
        let (replay, for_snapshots) = (Arc::clone(&replay), Arc::clone(&snapshots));
        let promoting = Arc::clone(&promoting);
        let runtime = tokio::runtime::Handle::current();
        let taken = blocking(move || -> Result<_, String> {
            // The copy is read under the replay's lock (nothing is applied meanwhile, and a
            // promotion waits: `promoting` makes the read give up) and written into the
            // snapshot piece by piece as read: the bytes read and checked are the snapshot,
            // whatever happens to the directory after, and a directory larger than memory
            // is never held in it.
            let (guard, lsn, committed, files, writer) = {
                let mut replay = lock(&replay);
                if promoting.load(Ordering::Acquire) {
                    return Err(DirSnapshotError::Stopped.to_string());
                }
                let lsn = replay.applied();
                if lsn == Lsn::ZERO {
                    return Err("nothing applied yet".into());
                }
                let guard = UploadGuard::claim(&for_snapshots, lsn)?;
                let Some(committed) = runtime.block_on(for_snapshots.committed_at(lsn)) else {
                    let e = format!("lsn {lsn} is not committed or no longer in the log");
                    guard.abandon(&e);
                    return Err(e);
                };
                // A snapshot that took the disk's last room would stop the node at its next
                // append (`Snapshots::room_for`). The copy does not change while it is read.
                if let Ok(bytes) = super::materialize::dir_bytes(replay.dir()) {
                    if let Err(e) = for_snapshots.room_for(bytes) {
                        guard.abandon(&e);
                        return Err(e);
                    }
                }
                let mut writer = match SnapshotWriter::create(
                    for_snapshots.dir(),
                    lsn,
                    committed.epoch,
                ) {
                    Ok(writer) => writer,
                    Err(e) => {
                        let e = format!("cannot create the snapshot file: {e}");
                        guard.abandon(&e);
                        return Err(e);
                    }
                };
                // A snapshot stands for the log before it: never one of a damaged copy
                // (dropped unfinished, the writer removes its file).
                match replay.write_snapshot(&mut writer, &promoting) {
                    Ok(files) => (guard, lsn, committed, files, writer),
                    Err(DirSnapshotError::Materialize(
                        differs @ MaterializeError::Differs { .. },
                    )) => {
                        warn!(error = %differs, "follow mode: the copy of the followed directory is not what the log made of it; no snapshot of it, and it is rebuilt at the next catch-up");
                        let e = match replay.differs_found() {
                            Ok(()) => differs.to_string(),
                            Err(e) => e.to_string(),
                        };
                        guard.abandon(&e);
                        return Err(e);
                    }
                    // Given way to a promotion: not the application's fault, nothing to warn of.
                    Err(stopped @ DirSnapshotError::Stopped) => {
                        guard.finish(false);
                        return Err(stopped.to_string());
                    }
                    Err(e) => {
                        guard.abandon(&e.to_string());
                        return Err(e.to_string());
                    }
                }
            };
            // The copy checked whole: its configuration stored, then the file finished
            // (a refused copy leaves no configuration stored for it).
            let finished = for_snapshots
                .store_members_at(lsn, &committed)
                .and_then(|()| writer.finish().map_err(|e| e.to_string()));
            match finished {
                Ok(info) => Ok((guard, files, info)),
                Err(e) => {
                    guard.abandon(&e);
                    Err(e)
                }
            }
        })
        .await;
        match taken {
            Ok((guard, files, info)) => {
                info!(lsn = %info.lsn, files, body_len = info.body_len, "follow mode: snapshot of the directory stored");
                guard.stored(info).await;
            }
            Err(reason) => {
                debug!(%reason, "follow mode: no snapshot of the directory now");
                snapshots.request_declined();
            }
        }
    }
}

/// This node's epoch if it is primary and its epoch's first record is committed.
fn ready_primary(status: &NodeStatus, commit_lsn: Lsn) -> Option<u64> {
    (status.role == Role::Primary
        && status
            .epoch_start_lsn
            .is_some_and(|start| commit_lsn.get() >= start))
    .then_some(status.epoch)
}

fn still_primary(status: &NodeStatus, epoch: u64) -> bool {
    status.role == Role::Primary && status.epoch == epoch
}

/// Takes the replay's lock: on a blocking thread only (`blocking`), never on the node's
/// runtime, whose one thread also runs the core loop. A snapshot holds the lock while it
/// reads the whole directory and asks the core loop for the configuration at its LSN: a
/// runtime waiting for the lock would stop heartbeats for that long, and never answer.
fn lock(replay: &Mutex<Replay>) -> std::sync::MutexGuard<'_, Replay> {
    debug_assert!(
        !crate::node::on_runtime_thread(),
        "the replay's lock taken on the node's runtime thread"
    );
    // A panic aborts the process (`panic = "abort"`), so a poisoned lock cannot be seen.
    replay
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
