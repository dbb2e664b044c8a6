//! The primary's side of follow mode after the capture: captured changes proposed to the
//! node as records, in order, and the reply barrier's second half.
//!
//! A thread of its own takes the capture's changes ([`Capture`]), gathers what is waiting
//! into one proposal (at most [`BATCH_CHANGES_MAX`] changes and [`BATCH_BYTES_MAX`] bytes)
//! and proposes it; a task awaits the outcomes and publishes how many changes are
//! committed. A proposal goes once the one before has its place in the log (its LSNs), not
//! its commit: several commit at once, in the order they were captured.
//! [`Shipper::reply_barrier`] asks the capture how many changes cover every write made so
//! far and waits until that many are committed: the client port holds a reply from the
//! application until then, and an acknowledged write is in the committed log.
//!
//! Anything but a commit (this node is no longer primary, the outcome is unknown, the disk
//! failed) or a capture error ends the shipping: the barrier then never releases, and the
//! node rewinds the directory when it follows again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::capture::{Backlog, Capture, CaptureError};
use super::change::Change;
use crate::node::{NodeHandle, Placement, ProposeOutcome};

/// Changes in one proposal, at most.
pub const BATCH_CHANGES_MAX: usize = 1024;
/// Payload bytes in one proposal, at most (one change may be larger: it goes alone).
pub const BATCH_BYTES_MAX: usize = 4 << 20;

/// Proposals placed in the log and waiting for their outcome, beyond the one being awaited
/// and the one being placed. Small on purpose: on 2 cores, where the application, the
/// client port and three nodes share the CPU, 1 gave 227-240k SET/s (redis-benchmark -P 16
/// -c 50, four runs) against 201-247k for 2, 4 or 8: a deeper pipeline makes smaller
/// proposals, and each costs every node a few wake-ups and an fsync.
pub const IN_FLIGHT_MAX: usize = 1;
/// How often the shipping thread, waiting for changes, checks whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(50);

/// The first pause before a refused proposal is made again; it doubles up to
/// [`RETRY_PAUSE_MAX`].
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(1);
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(50);

/// Why shipping stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShipError {
    #[error("the capture stopped: {0}")]
    Capture(String),
    #[error("a proposal of captured changes was not committed: {0}")]
    NotCommitted(String),
    #[error("the node stopped")]
    NodeStopped,
    #[error("shipping was stopped")]
    Stopped,
}

/// The running shipper.
pub struct Shipper {
    /// `None` only while dropping.
    capture: Option<Capture>,
    committed: watch::Receiver<u64>,
    ended: watch::Receiver<Option<ShipError>>,
    thread: Option<std::thread::JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

impl Shipper {
    /// Ships what `capture` sends on `changes` to `node`, proposing through `runtime`.
    pub fn start(
        capture: Capture,
        changes: mpsc::Receiver<Result<Change, CaptureError>>,
        node: NodeHandle,
        runtime: tokio::runtime::Handle,
    ) -> std::io::Result<Shipper> {
        let (committed_tx, committed) = watch::channel(0u64);
        let (ended_tx, ended) = watch::channel(None);
        let stopping = Arc::new(AtomicBool::new(false));
        let first_error = Arc::new(Mutex::new(None));
        let (flight_tx, flight_rx) = tokio::sync::mpsc::channel(IN_FLIGHT_MAX);
        let committer = runtime.spawn(count_commits(
            flight_rx,
            committed_tx,
            Arc::clone(&first_error),
            Arc::clone(&stopping),
        ));
        let thread_stopping = Arc::clone(&stopping);
        let backlog = capture.backlog();
        let thread = std::thread::Builder::new()
            .name("follow-ship".into())
            .spawn(move || {
                // The capture must not wait for room that nobody will make: the backlog is
                // closed when this thread stops, a panic included.
                let closing = ClosesBacklog(&backlog);
                let error = ship(
                    &changes,
                    &backlog,
                    &node,
                    &runtime,
                    &flight_tx,
                    &thread_stopping,
                );
                drop(closing);
                note_first(&first_error, error);
                // Every placed proposal has its outcome before shipping counts as ended.
                drop(flight_tx);
                let _ = runtime.block_on(committer);
                let error = lock(&first_error).take().unwrap_or(ShipError::NodeStopped);
                ended_tx.send_replace(Some(error));
            })?;
        Ok(Shipper {
            capture: Some(capture),
            committed,
            ended,
            thread: Some(thread),
            stopping,
        })
    }

    /// Cuts of followed files stop capture from now on ([`Capture::refuse_cuts`]).
    pub fn refuse_cuts(&self) {
        if let Some(capture) = &self.capture {
            capture.refuse_cuts();
        }
    }

    /// Returns once shipping has ended, with why.
    pub async fn ended(&self) -> ShipError {
        let mut ended = self.ended.clone();
        let error = match ended.wait_for(Option::is_some).await {
            Ok(error) => error.clone().unwrap_or(ShipError::NodeStopped),
            Err(_) => ShipError::NodeStopped,
        };
        error
    }

    /// Stops capturing and proposing, and returns once nothing more will be proposed: a
    /// proposal under way has its outcome by then. Whoever else holds the shipper (a reply
    /// barrier) gets an error from now on.
    pub async fn stop(&self) -> ShipError {
        self.stopping.store(true, Ordering::Relaxed);
        if let Some(capture) = &self.capture {
            capture.request_stop();
        }
        self.ended().await
    }

    /// How many captured changes are committed.
    pub fn committed(&self) -> u64 {
        *self.committed.borrow()
    }

    /// Returns once every write made to the directory before the call is in a committed
    /// change; the error that ended shipping if it cannot be.
    pub async fn reply_barrier(&self) -> Result<(), ShipError> {
        let barrier = match &self.capture {
            Some(capture) => capture.barrier().await,
            None => None,
        };
        let Some(needed) = barrier else {
            return Err(self.ended_error());
        };
        let mut committed = self.committed.clone();
        let mut ended = self.ended.clone();
        loop {
            if *committed.borrow_and_update() >= needed {
                return Ok(());
            }
            if let Some(error) = ended.borrow_and_update().clone() {
                return Err(error);
            }
            tokio::select! {
                changed = committed.changed() => if changed.is_err() { return Err(self.ended_error()) },
                changed = ended.changed() => if changed.is_err() { return Err(self.ended_error()) },
            }
        }
    }

    fn ended_error(&self) -> ShipError {
        self.ended
            .borrow()
            .clone()
            .unwrap_or(ShipError::NodeStopped)
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        // The capture stops first (its sender closes), which ends the shipping thread.
        drop(self.capture.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Closes the capture's backlog when dropped, however the shipping thread ends.
struct ClosesBacklog<'a>(&'a Backlog);

impl Drop for ClosesBacklog<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The first of the errors that end shipping is the one reported.
fn note_first(slot: &Mutex<Option<ShipError>>, error: ShipError) {
    lock(slot).get_or_insert(error);
}

fn lock(slot: &Mutex<Option<ShipError>>) -> std::sync::MutexGuard<'_, Option<ShipError>> {
    // A panic while holding it leaves an `Option` that is still whole.
    slot.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A placed proposal: how many changes it ends, and its outcome to come (`None`: already
/// committed).
type InFlight = (u64, Option<tokio::sync::oneshot::Receiver<ProposeOutcome>>);

/// Awaits the outcomes of placed proposals in the order they were placed (the log commits
/// them in that order) and publishes how many changes are committed. The first outcome that
/// is not a commit ends shipping; the rest are still awaited, so that once the channel
/// closes every placed proposal has its outcome.
async fn count_commits(
    mut flight: tokio::sync::mpsc::Receiver<InFlight>,
    committed: watch::Sender<u64>,
    first_error: Arc<Mutex<Option<ShipError>>>,
    stopping: Arc<AtomicBool>,
) {
    let mut count = 0u64;
    let mut failed = false;
    while let Some((ends, outcome)) = flight.recv().await {
        let outcome = match outcome {
            None => Ok(()),
            Some(outcome) => match outcome.await {
                Ok(ProposeOutcome::Committed { .. }) => Ok(()),
                Ok(other) => Err(ShipError::NotCommitted(format!("{other:?}"))),
                Err(_) => Err(ShipError::NodeStopped),
            },
        };
        match outcome {
            Ok(()) if !failed => {
                count += ends;
                committed.send_replace(count);
            }
            Ok(()) => {}
            Err(error) => {
                failed = true;
                note_first(&first_error, error);
                stopping.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Places batches in the log until something ends it; returns why.
///
/// Each captured change is cut into pieces ([`Change::into_pieces`]); a batch holds whole
/// pieces, and a change counts as committed once its last piece is. A batch is proposed
/// once the one before it is placed (`NodeHandle::propose_placed`), so up to
/// [`IN_FLIGHT_MAX`] batches commit at once and still in the order captured: a refused
/// batch wrote nothing and is proposed again before any later one.
fn ship(
    changes: &mpsc::Receiver<Result<Change, CaptureError>>,
    backlog: &Backlog,
    node: &NodeHandle,
    runtime: &tokio::runtime::Handle,
    flight: &tokio::sync::mpsc::Sender<InFlight>,
    stopping: &AtomicBool,
) -> ShipError {
    // Pieces not yet proposed, each with whether it is the last of its change and the data
    // bytes it holds of the capture's backlog (given back once it is in a proposal).
    let mut queue: std::collections::VecDeque<(Bytes, bool, u64)> =
        std::collections::VecDeque::new();
    let mut failed = None;
    let take = |change: Change, queue: &mut std::collections::VecDeque<(Bytes, bool, u64)>| {
        let pieces = change.into_pieces();
        let last = pieces.len() - 1;
        queue.extend(pieces.into_iter().enumerate().map(|(i, piece)| {
            let held = piece.data_len() as u64;
            (piece.encode(), i == last, held)
        }));
    };
    loop {
        if queue.is_empty() {
            if let Some(error) = failed.take() {
                return error;
            }
            loop {
                if stopping.load(Ordering::Relaxed) {
                    return ShipError::Stopped;
                }
                match changes.recv_timeout(STOP_POLL) {
                    Ok(Ok(change)) => {
                        take(change, &mut queue);
                        break;
                    }
                    Ok(Err(error)) => return ShipError::Capture(error.to_string()),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return ShipError::Capture("the capture ended".into())
                    }
                }
            }
        }
        // Whatever else is waiting, up to the batch limits.
        while failed.is_none() && queue.len() < BATCH_CHANGES_MAX {
            match changes.try_recv() {
                Ok(Ok(change)) => take(change, &mut queue),
                Ok(Err(error)) => failed = Some(ShipError::Capture(error.to_string())),
                Err(_) => break,
            }
        }
        let mut payloads = Vec::new();
        let mut bytes = 0;
        let mut ends = 0u64;
        let mut held = 0u64;
        while let Some((payload, _, _)) = queue.front() {
            if !payloads.is_empty()
                && (payloads.len() >= BATCH_CHANGES_MAX || bytes + payload.len() > BATCH_BYTES_MAX)
            {
                break;
            }
            let Some((payload, last, piece_held)) = queue.pop_front() else {
                break;
            };
            bytes += payload.len();
            ends += u64::from(last);
            held += piece_held;
            payloads.push(payload);
        }
        // In a proposal now: the capture may read on.
        backlog.take(held);
        // A refusal that wrote nothing (the disk is behind, a hand-over is starting) is
        // retried with the same batch, so the order holds; anything else ends shipping.
        let mut pause = RETRY_PAUSE_MIN;
        loop {
            if stopping.load(Ordering::Relaxed) {
                return ShipError::Stopped;
            }
            let placed = match runtime.block_on(node.propose_placed(payloads.clone())) {
                Ok(Placement::Placed(outcome)) => Some(outcome),
                Ok(Placement::Refused(ProposeOutcome::Committed { .. })) => None,
                Ok(Placement::Refused(ProposeOutcome::DiskBehind | ProposeOutcome::Busy)) => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_PAUSE_MAX);
                    continue;
                }
                Ok(Placement::Refused(other)) => {
                    return ShipError::NotCommitted(format!("{other:?}"))
                }
                Err(_) => return ShipError::NodeStopped,
            };
            // Waits while IN_FLIGHT_MAX proposals are waiting for their outcome.
            if flight.blocking_send((ends, placed)).is_err() {
                return ShipError::NodeStopped;
            }
            break;
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc as tokio_mpsc;

    use super::*;
    use crate::core::Role;
    use crate::node::{NodeStatus, Request};
    use crate::Lsn;

    /// A stand-in for the core loop: refuses every third proposal, places the others at
    /// once and commits each `delay` later, in order, keeping the committed payloads.
    pub(crate) fn fake_node(
        delay: Duration,
    ) -> (
        NodeHandle,
        Arc<std::sync::Mutex<Vec<Bytes>>>,
        tempfile::TempDir,
    ) {
        let (requests, mut rx) = tokio_mpsc::channel(16);
        let (_status_tx, status) = watch::channel(Arc::new(NodeStatus::for_tests(Role::Primary)));
        let (_commit_tx, commit) = watch::channel(Lsn::ZERO);
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = wal::Wal::open(dir.path(), wal::Options::default()).unwrap();
        let node = NodeHandle::for_tests(requests, status, commit, wal.reader(), wal::NodeId(1));
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = Arc::clone(&log);
        tokio::spawn(async move {
            let _wal = wal;
            let _status_tx = _status_tx;
            let _commit_tx = _commit_tx;
            let mut next = 1u64;
            let mut proposals = 0u64;
            let mut last_commit: Option<tokio::task::JoinHandle<()>> = None;
            while let Some(request) = rx.recv().await {
                if let Request::Propose {
                    payloads,
                    reply,
                    placed,
                } = request
                {
                    // Every third proposal is refused unplaced, as a full disk queue does.
                    proposals += 1;
                    if proposals.is_multiple_of(3) {
                        let _ = reply.send(ProposeOutcome::DiskBehind);
                        continue;
                    }
                    let count = payloads.len() as u64;
                    let first_lsn = Lsn(next);
                    next += count;
                    if let Some(placed) = placed {
                        let _ = placed.send(());
                    }
                    // Committed `delay` after being placed, after the proposal before it.
                    let due = tokio::time::Instant::now() + delay;
                    let before = last_commit.take();
                    let kept = Arc::clone(&kept);
                    last_commit = Some(tokio::spawn(async move {
                        if let Some(before) = before {
                            let _ = before.await;
                        }
                        tokio::time::sleep_until(due).await;
                        kept.lock().unwrap().extend(payloads);
                        let _ = reply.send(ProposeOutcome::Committed {
                            first_lsn,
                            last_lsn: Lsn(first_lsn.0 + count - 1),
                        });
                    }));
                }
            }
        });
        (node, log, dir)
    }

    /// A reply barrier returns only once every write made before it is in a committed
    /// change; changes are proposed in the order captured.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reply_barrier_waits_for_the_commit_of_every_earlier_write() {
        let (node, log, _wal_dir) = fake_node(Duration::from_millis(5));
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = mpsc::channel();
        let capture = Capture::start(dir.path(), tx).unwrap();
        let shipper = Shipper::start(capture, rx, node, tokio::runtime::Handle::current()).unwrap();
        let mut written = Vec::new();
        for round in 0..40u32 {
            written.extend_from_slice(&crate::follow::tests::append_set(dir.path(), round));
            shipper.reply_barrier().await.unwrap();
            let committed: Vec<u8> = log
                .lock()
                .unwrap()
                .iter()
                .flat_map(|payload| match Change::decode(payload.clone()) {
                    Ok(Change::Append { data, .. }) => data.to_vec(),
                    _ => Vec::new(),
                })
                .collect();
            assert_eq!(
                committed, written,
                "round {round}: released before the commit"
            );
        }
        assert!(shipper.committed() >= 40);
    }
}
