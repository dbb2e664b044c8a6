//! The [`Driver`]: one connection to the sidecar, three tasks, and the state machine.
//!
//! - The **reader task** reads every frame the sidecar sends. `Records`: each record is
//!   decoded and its CRC verified, its LSN must be the next one, and then it is applied
//!   (epoch-start records only advance the applied LSN). `Appended`/`Rejected`: the
//!   proposers of that request are answered. `Role`: the role is published. `Ping`: its
//!   nonce is handed to the ponger.
//! - The **ponger task** answers the latest `Ping` with `Pong` and the applied LSN. The
//!   reader notes a ping only after it handled every frame before it, so a state machine
//!   whose `apply` hangs stops the answers, and the sidecar finds the application hung.
//! - The **writer task** takes proposals from a bounded queue and sends whatever is waiting
//!   as one `Append`, registering its proposers under the request id first. At most
//!   [`APPENDS_INFLIGHT_MAX`] (one) append is unanswered at once: while it is, new proposals
//!   wait in the queue and go out together in the next `Append`. Batching is thus clocked by
//!   the commit round trip, as group commit is: the busier the application, the larger the
//!   batches, and a lone proposal is sent at once.
//!
//! - The **read task** asks the sidecar for lease reads (`Read`), one at a time: the reads
//!   that arrive while one is out wait and share the next, so a busy application asks once
//!   per round trip to its sidecar. An index is only ever used by reads that were asked for
//!   before it was requested, which is what makes sharing it sound.
//!
//! A proposer gets `apply`'s output for its record, which needs the record's LSN (from
//! `Appended`) and the record applied (from `Records`). The two arrive in either order, on
//! the one reader task:
//! - `Appended` first: the proposer waits in `waiting` under its LSN until the record is
//!   applied.
//! - the record first: its output waits in `unclaimed` until `Appended` names its LSN. Only
//!   outputs that an unanswered request could still claim are kept: a request sent when
//!   `applied_lsn` was `floor` gets LSNs above `floor` (the sidecar's log holds everything
//!   at or below our applied LSN before it stamps new records), so outputs at or below the
//!   lowest floor of the requests in flight are dropped, and all of them when none is in
//!   flight. Memory is bounded by the records committed while the oldest request is in
//!   flight.

mod gather;
mod snapshot;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use wal::format::{decode_record, RecordKind, RECORD_PAYLOAD_LEN_MAX};

use self::gather::{Gather, ShortTimer, Wait};
use super::{ClientError, ProposeError, ReadError, StateMachine};
use crate::proto::app::{
    append_frame_len, Frame, FrameReader, FrameWriter, RejectReason, Role, APPEND_COUNT_MAX,
    FRAME_LEN_MAX, PROTOCOL_VERSION,
};
use crate::{Epoch, Lsn, NodeId};

/// Proposals queued for the writer task; `propose` waits for room beyond this.
const PROPOSALS_QUEUED_MAX: usize = 4096;

/// Appends sent and not yet answered, per driver: one. A batch gathers while the one before
/// it is committed, and goes out as soon as that one is answered. A second append in flight
/// would not make the disks go faster: the sidecar's WAL writer syncs it after the first
/// one's fsync anyway, as do the backups'. It would split the waiting proposals into two
/// batches, and every batch costs the same system calls and wake-ups on every node (the
/// frames in and out, a WAL write and fsync, a message to each backup and its answers),
/// whatever its size. Measured against two in flight: larger batches, less CPU per record,
/// and more records per second (`benches/README.md`, "Commit latency, unpipelined").
pub const APPENDS_INFLIGHT_MAX: usize = 1;

/// Lease reads waiting for the read task; `read_linearizable` waits for room beyond this.
const READS_QUEUED_MAX: usize = 4096;

/// Read request ids have this bit set, so that a `Rejected` tells a read from an append.
const READ_REQUEST_ID_BIT: u64 = 1 << 63;

/// How long the sidecar has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The node's role as the sidecar last reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleInfo {
    pub role: Role,
    pub epoch: Epoch,
    /// The primary this node knows of.
    pub primary: Option<NodeId>,
    /// The primary's client port, for redirecting clients.
    pub primary_client_addr: Option<SocketAddr>,
    /// The sidecar's commit LSN when it sent this (it is not updated on every commit).
    pub commit_lsn: Lsn,
}

/// A replicated state machine, connected to its sidecar. Share it through an `Arc` to
/// propose from many tasks. Dropping it closes the connection.
pub struct Driver<S: StateMachine> {
    shared: Arc<Shared<S>>,
    proposals: mpsc::Sender<Proposal<S::Output>>,
    reads: mpsc::Sender<ReadReply>,
    node_id: NodeId,
    /// Stops both tasks when the driver is dropped.
    stop: CancellationToken,
}

type Reply<O> = oneshot::Sender<Result<O, ProposeError>>;

/// A lease read's index (`ReadIndex`: the LSN to have applied, and the primary's epoch).
type ReadReply = oneshot::Sender<Result<(Lsn, Epoch), ReadError>>;

struct Proposal<O> {
    command: Bytes,
    reply: Reply<O>,
}

/// The outcome of a command queued by [`Driver::submit`]: what `apply` returned for it
/// once it is committed and applied here, or why not. Dropping it withdraws the command if
/// the driver has not sent it to the sidecar yet; once sent, it commits or not whether or
/// not anyone waits, and its outcome is unknown to the caller.
#[must_use = "a command whose outcome is dropped may be withdrawn, or commit unseen"]
pub struct Submitted<O> {
    answer: oneshot::Receiver<Result<O, ProposeError>>,
}

impl<O> std::future::Future for Submitted<O> {
    type Output = Result<O, ProposeError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        // Every proposal the writer takes is answered; a reply dropped unanswered can only
        // mean the tasks ended abnormally after it may have been sent.
        std::pin::Pin::new(&mut self.answer)
            .poll(cx)
            .map(|answer| answer.unwrap_or(Err(ProposeError::Unknown)))
    }
}

impl<O> std::fmt::Debug for Submitted<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Submitted")
    }
}

/// The limits the writer batches within: the lower of ours and the sidecar's.
#[derive(Debug, Clone, Copy)]
struct Limits {
    frame_len_max: usize,
    append_count_max: usize,
}

impl<S: StateMachine> Driver<S> {
    /// Connects to the sidecar's app socket with a fresh state machine (nothing applied) and
    /// starts replaying the committed log from LSN 1. `propose` may be called at once;
    /// [`Driver::wait_applied`] waits for the replay.
    pub async fn connect(
        socket_path: impl AsRef<Path>,
        state_machine: S,
    ) -> Result<Driver<S>, ClientError> {
        Driver::connect_at(socket_path.as_ref(), state_machine, Lsn::ZERO).await
    }

    /// Restores `state_machine` from a snapshot of the state at `snapshot_lsn` (taken with
    /// [`Driver::snapshot`] and kept by the application), then connects and follows the log
    /// from the record after it.
    pub async fn connect_restored(
        socket_path: impl AsRef<Path>,
        mut state_machine: S,
        snapshot_lsn: Lsn,
        snapshot: &[u8],
    ) -> Result<Driver<S>, ClientError> {
        state_machine
            .restore(snapshot_lsn, snapshot)
            .map_err(|source| ClientError::Restore {
                lsn: snapshot_lsn,
                source,
            })?;
        Driver::connect_at(socket_path.as_ref(), state_machine, snapshot_lsn).await
    }

    async fn connect_at(
        path: &Path,
        state_machine: S,
        applied_lsn: Lsn,
    ) -> Result<Driver<S>, ClientError> {
        let (mut frames, mut sink) = open(path).await?;
        let handshake = connect_handshake(&mut frames, &mut sink, applied_lsn.next());
        let (node_id, limits, role) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| ClientError::Timeout(HANDSHAKE_TIMEOUT))??;
        debug!(node = %node_id, %applied_lsn, "connected to the sidecar");
        let mut shared = Shared::new(state_machine, applied_lsn, role);
        shared.socket_path = path.to_owned();
        let shared = Arc::new(shared);
        let (proposals, proposals_rx) = mpsc::channel(PROPOSALS_QUEUED_MAX);
        let (reads, reads_rx) = mpsc::channel(READS_QUEUED_MAX);
        let stop = CancellationToken::new();
        tokio::spawn(run_reader(frames, Arc::clone(&shared), stop.clone()));
        let sink = Arc::new(tokio::sync::Mutex::new(sink));
        tokio::spawn(run_ponger(
            Arc::clone(&sink),
            Arc::clone(&shared),
            stop.clone(),
        ));
        tokio::spawn(run_reads(
            Arc::clone(&sink),
            reads_rx,
            Arc::clone(&shared),
            stop.clone(),
        ));
        tokio::spawn(run_writer(
            sink,
            proposals_rx,
            Arc::clone(&shared),
            limits,
            stop.clone(),
        ));
        Ok(Driver {
            shared,
            proposals,
            reads,
            node_id,
            stop,
        })
    }

    /// Appends `command` to the replicated log and returns what `apply` returned for it,
    /// once it is committed and applied here.
    ///
    /// # Correctness
    /// `Ok` means the command is committed: no failover can take it back. Every error but
    /// [`ProposeError::Unknown`] means it was not written. Dropping the returned future
    /// before it finishes does not withdraw a command already sent; its outcome is then
    /// unknown to the caller.
    pub async fn propose(&self, command: impl Into<Bytes>) -> Result<S::Output, ProposeError> {
        self.submit(command).await?.await
    }

    /// Queues `command` for the log and returns once it is queued, with its outcome to
    /// wait for ([`Submitted`]; dropping it withdraws the command if it is not sent yet):
    /// [`Driver::propose`] in two steps, so that one task can have several commands in
    /// flight. Commands queued one after another by one task are written to
    /// the log in that order; each still commits or fails on its own (a later one can
    /// commit after an earlier one was refused, if the node was primary again between).
    ///
    /// # Errors
    /// [`ProposeError::TooLarge`] and [`ProposeError::Disconnected`] here, before anything
    /// is queued; the outcome's errors are [`Driver::propose`]'s.
    pub async fn submit(
        &self,
        command: impl Into<Bytes>,
    ) -> Result<Submitted<S::Output>, ProposeError> {
        let command = command.into();
        if command.len() > RECORD_PAYLOAD_LEN_MAX {
            return Err(ProposeError::TooLarge {
                len: command.len(),
                max: RECORD_PAYLOAD_LEN_MAX,
            });
        }
        let (reply, answer) = oneshot::channel();
        // Counted before it is queued, so that the writer counts it once it has it.
        self.shared.proposed.fetch_add(1, Ordering::Relaxed);
        self.proposals
            .send(Proposal { command, reply })
            .await
            .map_err(|_| ProposeError::Disconnected)?;
        Ok(Submitted { answer })
    }

    /// A linearizable read: runs `f` on the state once it reflects every write acknowledged
    /// (by any node) before this call, and nothing uncommitted. Writes nothing to the log:
    /// the sidecar answers from its lease with the LSN to wait for (`proto::app`, "Read"),
    /// reads asked for at once share one request, and `f` runs as soon as that LSN is
    /// applied here, usually at once on a primary.
    ///
    /// # Errors
    /// Nothing is read on an error, and each may be retried: [`ReadError::NotPrimary`] on a
    /// backup (read on the primary), [`ReadError::RoleChanged`] when this node stopped being
    /// the primary of the read's epoch before its state got there.
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&S) -> R) -> Result<R, ReadError> {
        let (reply, answer) = oneshot::channel();
        self.reads
            .send(reply)
            .await
            .map_err(|_| ReadError::Disconnected)?;
        let (lsn, epoch) = answer.await.unwrap_or(Err(ReadError::Disconnected))?;
        let mut applied = self.shared.applied.subscribe();
        let mut role = self.shared.role.subscribe();
        loop {
            if *applied.borrow_and_update() >= lsn {
                break;
            }
            {
                // The `Role` frame of the read's epoch may still be on its way (the answer
                // can overtake it): only a later epoch, or a step down in this one, ends it.
                let role = role.borrow_and_update();
                if role.epoch > epoch || (role.epoch == epoch && role.role != Role::Primary) {
                    return Err(ReadError::RoleChanged);
                }
            }
            tokio::select! {
                _ = self.shared.closed.cancelled() => return Err(ReadError::Disconnected),
                changed = applied.changed() => if changed.is_err() { return Err(ReadError::Disconnected) },
                changed = role.changed() => if changed.is_err() { return Err(ReadError::Disconnected) },
            }
        }
        Ok(self.read(f))
    }

    /// The role, epoch and primary as the sidecar last reported them.
    pub fn role(&self) -> RoleInfo {
        self.shared.role.borrow().clone()
    }

    /// A receiver that wakes on every role report.
    pub fn watch_role(&self) -> watch::Receiver<RoleInfo> {
        self.shared.role.subscribe()
    }

    /// The LSN of the last record applied (or restored).
    pub fn applied_lsn(&self) -> Lsn {
        *self.shared.applied.borrow()
    }

    /// Waits until every record up to `lsn` is applied, e.g. `driver.role().commit_lsn`
    /// after connecting, to finish the replay.
    pub async fn wait_applied(&self, lsn: Lsn) -> Result<(), Arc<ClientError>> {
        let mut applied = self.shared.applied.subscribe();
        loop {
            if *applied.borrow_and_update() >= lsn {
                return Ok(());
            }
            tokio::select! {
                _ = self.shared.closed.cancelled() => return Err(self.closed_error()),
                changed = applied.changed() => {
                    if changed.is_err() {
                        return Err(self.closed_error());
                    }
                }
            }
        }
    }

    /// Runs `f` on the state, locked: records are not applied meanwhile, so keep it short.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&lock(&self.shared.state).state_machine)
    }

    /// A snapshot of the state, with the LSN it was taken at: what
    /// [`Driver::connect_restored`] takes.
    pub fn snapshot(&self) -> (Lsn, Vec<u8>) {
        let state = lock(&self.shared.state);
        (state.applied_lsn, state.state_machine.snapshot())
    }

    /// The id of the node whose sidecar this is.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Whether the connection to the sidecar is still up.
    pub fn is_connected(&self) -> bool {
        !self.shared.closed.is_cancelled()
    }

    /// Why the connection ended, once it has.
    pub fn failure(&self) -> Option<Arc<ClientError>> {
        lock(&self.shared.failure).clone()
    }

    fn closed_error(&self) -> Arc<ClientError> {
        self.failure()
            .unwrap_or_else(|| Arc::new(ClientError::Closed))
    }
}

impl<S: StateMachine> Drop for Driver<S> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Hello, Welcome, Subscribe, and the first Role frame.
/// Connects to the sidecar's app socket, framed both ways.
pub(super) async fn open(
    path: &Path,
) -> Result<(FrameReader<OwnedReadHalf>, FrameWriter<OwnedWriteHalf>), ClientError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let (read, write) = stream.into_split();
    Ok((FrameReader::new(read), FrameWriter::new(write)))
}

async fn connect_handshake(
    frames: &mut FrameReader<OwnedReadHalf>,
    sink: &mut FrameWriter<OwnedWriteHalf>,
    from_lsn: Lsn,
) -> Result<(NodeId, Limits, RoleInfo), ClientError> {
    sink.write_frame(&Frame::Hello {
        version: PROTOCOL_VERSION,
    })
    .await
    .map_err(ClientError::Io)?;
    sink.flush().await.map_err(ClientError::Io)?;
    let (node_id, limits) = match frames.read_frame().await? {
        Some(Frame::Welcome {
            version,
            node_id,
            frame_len_max,
            append_count_max,
        }) => {
            if version != PROTOCOL_VERSION {
                return Err(ClientError::UnsupportedVersion {
                    found: version,
                    supported: PROTOCOL_VERSION,
                });
            }
            let limits = Limits {
                frame_len_max: (frame_len_max as usize).min(FRAME_LEN_MAX),
                append_count_max: (append_count_max as usize).clamp(1, APPEND_COUNT_MAX),
            };
            (node_id, limits)
        }
        Some(Frame::Error { message }) => return Err(ClientError::Refused { message }),
        Some(frame) => {
            return Err(ClientError::Unexpected {
                frame: frame.name(),
                during: "instead of Welcome",
            })
        }
        None => return Err(ClientError::Closed),
    };
    sink.write_frame(&Frame::Subscribe { from_lsn })
        .await
        .map_err(ClientError::Io)?;
    sink.flush().await.map_err(ClientError::Io)?;
    let role = match frames.read_frame().await? {
        Some(Frame::Role {
            role,
            epoch,
            primary,
            primary_client_addr,
            commit_lsn,
        }) => RoleInfo {
            role,
            epoch,
            primary,
            primary_client_addr: primary_client_addr.parse().ok(),
            commit_lsn,
        },
        Some(Frame::Error { message }) => return Err(ClientError::Refused { message }),
        Some(frame) => {
            return Err(ClientError::Unexpected {
                frame: frame.name(),
                during: "instead of the first Role",
            })
        }
        None => return Err(ClientError::Closed),
    };
    Ok((node_id, limits, role))
}

/// Reads and handles frames until the connection ends, then fails whatever is pending.
async fn run_reader<S: StateMachine>(
    mut frames: FrameReader<OwnedReadHalf>,
    shared: Arc<Shared<S>>,
    stop: CancellationToken,
) {
    let error = loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break ClientError::Dropped,
            _ = shared.closed.cancelled() => break ClientError::Closed,
            frame = frames.read_frame() => frame,
        };
        match frame {
            Ok(Some(frame)) => {
                if let Err(error) = shared.on_frame(frame) {
                    break error;
                }
            }
            Ok(None) => break ClientError::Closed,
            Err(error) => break error.into(),
        }
    };
    shared.fail(error);
}

/// Answers the sidecar's liveness pings (`Ping`, noted by the reader after it handled every
/// frame before it) with `Pong` and the applied LSN, until the driver is dropped or the
/// connection ends. Only the latest ping is answered: the sidecar needs one answer, not all.
async fn run_ponger<S: StateMachine>(
    sink: Arc<tokio::sync::Mutex<FrameWriter<OwnedWriteHalf>>>,
    shared: Arc<Shared<S>>,
    stop: CancellationToken,
) {
    let mut pings = shared.ping.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.closed.cancelled() => return,
            changed = pings.changed() => if changed.is_err() { return },
        }
        let nonce = *pings.borrow_and_update();
        let pong = Frame::Pong {
            nonce,
            applied_lsn: *shared.applied.borrow(),
        };
        let mut sink = sink.lock().await;
        let written = async {
            sink.write_frame(&pong).await?;
            sink.flush().await
        };
        if let Err(error) = written.await {
            shared.fail(ClientError::Io(error));
            return;
        }
    }
}

/// Asks for lease reads one `Read` at a time: every read queued when a request goes out
/// shares its answer. Ends when the driver is dropped or the connection ends; reads not
/// answered then get `Disconnected` (their senders dropped).
async fn run_reads<S: StateMachine>(
    sink: Arc<tokio::sync::Mutex<FrameWriter<OwnedWriteHalf>>>,
    mut reads: mpsc::Receiver<ReadReply>,
    shared: Arc<Shared<S>>,
    stop: CancellationToken,
) {
    let mut batch: Vec<ReadReply> = Vec::new();
    let mut next_request_id: u64 = 1;
    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => None,
            _ = shared.closed.cancelled() => None,
            first = reads.recv() => first,
        };
        let Some(first) = first else { break };
        batch.clear();
        batch.push(first);
        while let Ok(more) = reads.try_recv() {
            batch.push(more);
        }
        let request_id = READ_REQUEST_ID_BIT | next_request_id;
        next_request_id += 1;
        let (reply, answer) = oneshot::channel();
        *lock(&shared.read_inflight) = Some((request_id, reply));
        let written = tokio::select! {
            _ = stop.cancelled() => break,
            written = async {
                let mut sink = sink.lock().await;
                sink.write_frame(&Frame::Read { request_id }).await?;
                sink.flush().await
            } => written,
        };
        if let Err(error) = written {
            shared.fail(ClientError::Io(error));
            break;
        }
        let answer = tokio::select! {
            _ = stop.cancelled() => break,
            _ = shared.closed.cancelled() => break,
            answer = answer => answer.unwrap_or(Err(ReadError::Disconnected)),
        };
        for reply in batch.drain(..) {
            let _ = reply.send(answer.clone());
        }
    }
    lock(&shared.read_inflight).take();
}

/// Sends waiting proposals as one `Append` at a time, until the driver is dropped or the
/// connection ends; then answers every proposal it did not send with `Disconnected`.
async fn run_writer<S: StateMachine>(
    sink: Arc<tokio::sync::Mutex<FrameWriter<OwnedWriteHalf>>>,
    mut proposals: mpsc::Receiver<Proposal<S::Output>>,
    shared: Arc<Shared<S>>,
    limits: Limits,
    stop: CancellationToken,
) {
    let window = Arc::new(Semaphore::new(APPENDS_INFLIGHT_MAX));
    // Proposals taken off the queue and not sent yet, oldest first.
    let mut pending: VecDeque<Proposal<S::Output>> = VecDeque::new();
    let mut next_request_id: u64 = 1;
    let mut gather = Gather::new();
    let timer = if gather::enabled_by_env() {
        match ShortTimer::new() {
            Ok(timer) => Some(timer),
            Err(error) => {
                debug!(%error, "no short timer: batches go out without gathering");
                None
            }
        }
    } else {
        None
    };
    loop {
        if pending.is_empty() {
            let proposal = tokio::select! {
                _ = stop.cancelled() => None,
                _ = shared.closed.cancelled() => None,
                proposal = proposals.recv() => proposal,
            };
            let Some(proposal) = proposal else { break };
            pending.push_back(proposal);
        }
        // Wait for room in the window; whatever arrives meanwhile joins this batch.
        let permit = tokio::select! {
            _ = stop.cancelled() => None,
            _ = shared.closed.cancelled() => None,
            permit = Arc::clone(&window).acquire_owned() => permit.ok(),
        };
        let Some(permit) = permit else { break };
        if let Some(timer) = &timer {
            let waiting = pending.len() + proposals.len();
            let answered = *lock(&shared.answered_at);
            let plan = gather.plan(Instant::now(), answered, waiting, limits.append_count_max);
            if let Some(wait) = plan {
                let came_back =
                    gather_proposals(&mut proposals, &mut pending, wait, &shared, limits, timer)
                        .await;
                gather.waited(wait, came_back);
            }
        }
        let (payloads, replies) = run_writer_batch(&mut pending, &mut proposals, limits);
        if payloads.is_empty() {
            continue;
        }
        let request_id = next_request_id;
        next_request_id += 1;
        if !shared.register(request_id, replies, permit) {
            break;
        }
        let count = payloads.len();
        let append = Frame::Append {
            request_id,
            payloads,
        };
        let written = tokio::select! {
            _ = stop.cancelled() => break,
            written = async {
                let mut sink = sink.lock().await;
                sink.write_frame(&append).await?;
                sink.flush().await
            } => written,
        };
        if let Err(error) = written {
            shared.fail(ClientError::Io(error));
            break;
        }
        gather.sent(Instant::now(), count);
        debug!(request_id, count, "append sent");
    }
    proposals.close();
    let unsent = pending
        .into_iter()
        .chain(std::iter::from_fn(|| proposals.try_recv().ok()));
    for proposal in unsent {
        let _ = proposal.reply.send(Err(ProposeError::Disconnected));
    }
}

/// Takes proposals off the queue into `pending` until `wait.expected` have been made since
/// the last append was answered, a whole batch is waiting, or `wait.timeout` has passed
/// (gather.rs); how many were made since the answer. A timer that fails ends the wait.
async fn gather_proposals<S: StateMachine>(
    proposals: &mut mpsc::Receiver<Proposal<S::Output>>,
    pending: &mut VecDeque<Proposal<S::Output>>,
    wait: Wait,
    shared: &Shared<S>,
    limits: Limits,
    timer: &ShortTimer,
) -> usize {
    let came_back = || {
        let since = shared.proposed.load(Ordering::Relaxed);
        let at_answer = shared.proposed_at_answer.load(Ordering::Relaxed);
        usize::try_from(since.saturating_sub(at_answer)).unwrap_or(usize::MAX)
    };
    let done = |pending: &VecDeque<_>, proposals: &mpsc::Receiver<_>| {
        came_back() >= wait.expected || pending.len() + proposals.len() >= limits.append_count_max
    };
    if done(pending, proposals) || timer.set(wait.timeout).is_err() {
        return came_back();
    }
    loop {
        tokio::select! {
            biased;
            proposal = proposals.recv() => match proposal {
                Some(proposal) => pending.push_back(proposal),
                None => break,
            },
            _ = timer.expired() => return came_back(),
        }
        if done(pending, proposals) {
            break;
        }
    }
    // Disarmed, so that a stale expiry does not wake the reactor for nothing.
    let _ = timer.set(Duration::ZERO);
    came_back()
}

/// Gathers the `pending` proposals and whatever else is queued into one batch within
/// `limits`, oldest first; what does not fit stays in `pending` for the next batch.
/// Proposals nobody waits for any more are dropped unsent.
#[allow(clippy::type_complexity)]
fn run_writer_batch<O>(
    pending: &mut VecDeque<Proposal<O>>,
    proposals: &mut mpsc::Receiver<Proposal<O>>,
    limits: Limits,
) -> (Vec<Bytes>, Vec<Reply<O>>) {
    let mut payloads = Vec::new();
    let mut replies = Vec::new();
    let mut frame_len = append_frame_len(0, 0);
    while let Some(proposal) = pending.pop_front().or_else(|| proposals.try_recv().ok()) {
        if proposal.reply.is_closed() {
            continue;
        }
        let added = append_frame_len(1, proposal.command.len()) - append_frame_len(0, 0);
        if payloads.len() == limits.append_count_max || frame_len + added > limits.frame_len_max {
            if payloads.is_empty() {
                // Too large for this sidecar even alone.
                let max = limits.frame_len_max.saturating_sub(append_frame_len(1, 0));
                let len = proposal.command.len();
                let _ = proposal
                    .reply
                    .send(Err(ProposeError::TooLarge { len, max }));
                continue;
            }
            pending.push_front(proposal);
            break;
        }
        frame_len += added;
        payloads.push(proposal.command);
        replies.push(proposal.reply);
    }
    (payloads, replies)
}

/// What the two tasks and the driver share.
struct Shared<S: StateMachine> {
    state: Mutex<Applied<S>>,
    /// The applied LSN, published after each `Records` frame.
    applied: watch::Sender<Lsn>,
    role: watch::Sender<RoleInfo>,
    pending: Mutex<Pending<S::Output>>,
    failure: Mutex<Option<Arc<ClientError>>>,
    /// Cancelled once the connection is gone.
    closed: CancellationToken,
    /// Where the sidecar listens, for snapshot uploads on connections of their own.
    socket_path: PathBuf,
    /// A restore being received (`snapshot.rs`).
    restoring: Mutex<Option<snapshot::Restoring>>,
    /// The nonce of the latest `Ping`, for the ponger.
    ping: watch::Sender<u64>,
    /// The lease read the read task is waiting for, by request id.
    read_inflight: Mutex<Option<(u64, ReadReply)>>,
    /// Proposals ever queued for the writer, and their number when the last append was
    /// answered: what came since is who came back (gather.rs).
    proposed: AtomicU64,
    proposed_at_answer: AtomicU64,
    /// When the last append was answered (gather.rs).
    answered_at: Mutex<Instant>,
}

struct Applied<S> {
    state_machine: S,
    applied_lsn: Lsn,
    /// The epoch of the last record applied (zero after a restore).
    last_epoch: Epoch,
}

/// Proposers waiting for answers; see the module docs.
struct Pending<O> {
    /// Sent, not answered yet.
    requests: HashMap<u64, InFlight<O>>,
    /// Committed at this LSN, not applied yet.
    waiting: BTreeMap<Lsn, Reply<O>>,
    /// Applied, its request not answered yet.
    unclaimed: BTreeMap<Lsn, O>,
    /// The connection is gone: register nothing more.
    closed: bool,
}

struct InFlight<O> {
    replies: Vec<Reply<O>>,
    /// The applied LSN when the request was sent: its records are above it.
    floor: Lsn,
    /// Its place in the writer's window, given back when the request is answered.
    _permit: OwnedSemaphorePermit,
}

impl<O> Pending<O> {
    fn floor_min(&self) -> Option<Lsn> {
        self.requests.values().map(|request| request.floor).min()
    }

    /// Drops outputs no request in flight can claim.
    fn prune(&mut self) {
        match self.floor_min() {
            None => self.unclaimed.clear(),
            Some(floor) => self.unclaimed = self.unclaimed.split_off(&floor.next()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means `apply` panicked, which aborts the process outside tests.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: StateMachine> Shared<S> {
    fn new(state_machine: S, applied_lsn: Lsn, role: RoleInfo) -> Shared<S> {
        Shared {
            state: Mutex::new(Applied {
                state_machine,
                applied_lsn,
                last_epoch: Epoch::ZERO,
            }),
            applied: watch::Sender::new(applied_lsn),
            role: watch::Sender::new(role),
            pending: Mutex::new(Pending {
                requests: HashMap::new(),
                waiting: BTreeMap::new(),
                unclaimed: BTreeMap::new(),
                closed: false,
            }),
            failure: Mutex::new(None),
            closed: CancellationToken::new(),
            proposed: AtomicU64::new(0),
            proposed_at_answer: AtomicU64::new(0),
            answered_at: Mutex::new(Instant::now()),
            socket_path: PathBuf::new(),
            restoring: Mutex::new(None),
            ping: watch::Sender::new(0),
            read_inflight: Mutex::new(None),
        }
    }

    /// Records a request about to be sent. False (and its proposers told `Disconnected`)
    /// when the connection is already gone.
    fn register(
        &self,
        request_id: u64,
        replies: Vec<Reply<S::Output>>,
        permit: OwnedSemaphorePermit,
    ) -> bool {
        // Read before the request is sent; reading it early only lowers the floor.
        let floor = *self.applied.borrow();
        let mut pending = lock(&self.pending);
        if pending.closed {
            for reply in replies {
                let _ = reply.send(Err(ProposeError::Disconnected));
            }
            return false;
        }
        let request = InFlight {
            replies,
            floor,
            _permit: permit,
        };
        pending.requests.insert(request_id, request);
        true
    }

    fn on_frame(&self, frame: Frame) -> Result<(), ClientError> {
        match frame {
            Frame::Records { bytes } => self.on_records(&bytes),
            Frame::Appended {
                request_id,
                first_lsn,
                last_lsn,
            } => self.on_appended(request_id, first_lsn, last_lsn),
            Frame::ReadIndex {
                request_id,
                lsn,
                epoch,
            } => self.on_read_answer(request_id, Ok((lsn, epoch))),
            Frame::Rejected {
                request_id,
                reason,
                primary,
                client_addr,
                ..
            } if request_id & READ_REQUEST_ID_BIT != 0 => {
                let error = match reason {
                    RejectReason::NotPrimary => ReadError::NotPrimary {
                        primary,
                        client_addr: client_addr.parse().ok(),
                    },
                    RejectReason::Busy | RejectReason::UnknownOutcome | RejectReason::Failed => {
                        ReadError::Busy
                    }
                };
                self.on_read_answer(request_id, Err(error))
            }
            Frame::Rejected {
                request_id,
                reason,
                primary,
                client_addr,
                message,
            } => {
                let error = match reason {
                    RejectReason::NotPrimary => ProposeError::NotPrimary {
                        primary,
                        client_addr: client_addr.parse().ok(),
                    },
                    RejectReason::Busy => ProposeError::Busy,
                    RejectReason::UnknownOutcome => ProposeError::Unknown,
                    RejectReason::Failed => ProposeError::Failed(message),
                };
                let mut pending = lock(&self.pending);
                let request = pending
                    .requests
                    .remove(&request_id)
                    .ok_or(ClientError::UnknownRequest { request_id })?;
                for reply in request.replies {
                    let _ = reply.send(Err(error.clone()));
                }
                pending.prune();
                Ok(())
            }
            Frame::Role {
                role,
                epoch,
                primary,
                primary_client_addr,
                commit_lsn,
            } => {
                debug!(?role, %epoch, "role reported");
                self.role.send_replace(RoleInfo {
                    role,
                    epoch,
                    primary,
                    primary_client_addr: primary_client_addr.parse().ok(),
                    commit_lsn,
                });
                Ok(())
            }
            Frame::Error { message } => Err(ClientError::Refused { message }),
            Frame::SnapshotRequest => {
                self.on_snapshot_request();
                Ok(())
            }
            Frame::RestoreBegin {
                lsn,
                epoch,
                body_len,
            } => self.on_restore_begin(lsn, epoch, body_len),
            Frame::RestoreChunk { offset, data } => self.on_restore_chunk(offset, &data),
            Frame::RestoreEnd => self.on_restore_end(),
            Frame::Ping { nonce } => {
                self.ping.send_replace(nonce);
                Ok(())
            }
            frame => Err(ClientError::Unexpected {
                frame: frame.name(),
                during: "while following the log",
            }),
        }
    }

    /// Hands a `ReadIndex` or a read's `Rejected` to the read task.
    fn on_read_answer(
        &self,
        request_id: u64,
        answer: Result<(Lsn, Epoch), ReadError>,
    ) -> Result<(), ClientError> {
        let mut inflight = lock(&self.read_inflight);
        match inflight.take() {
            Some((id, reply)) if id == request_id => {
                let _ = reply.send(answer);
                Ok(())
            }
            other => {
                *inflight = other;
                Err(ClientError::UnknownRequest { request_id })
            }
        }
    }

    /// Verifies and applies a run of records, then hands out the outputs.
    fn on_records(&self, bytes: &[u8]) -> Result<(), ClientError> {
        let mut outputs = Vec::new();
        let result = {
            let mut state = lock(&self.state);
            let result = apply_records(&mut state, bytes, &mut outputs);
            self.applied.send_replace(state.applied_lsn);
            result
        };
        let mut pending = lock(&self.pending);
        let floor = pending.floor_min();
        for (lsn, output) in outputs {
            if let Some(reply) = pending.waiting.remove(&lsn) {
                let _ = reply.send(Ok(output));
            } else if floor.is_some_and(|floor| lsn > floor) {
                pending.unclaimed.insert(lsn, output);
            }
        }
        result
    }

    fn on_appended(
        &self,
        request_id: u64,
        first_lsn: Lsn,
        last_lsn: Lsn,
    ) -> Result<(), ClientError> {
        // Only this task applies records, so the applied LSN cannot move meanwhile.
        let applied_lsn = *self.applied.borrow();
        let mut pending = lock(&self.pending);
        self.proposed_at_answer
            .store(self.proposed.load(Ordering::Relaxed), Ordering::Relaxed);
        *lock(&self.answered_at) = Instant::now();
        let request = pending
            .requests
            .remove(&request_id)
            .ok_or(ClientError::UnknownRequest { request_id })?;
        let got = Lsn::count_between(first_lsn, last_lsn);
        if got != request.replies.len() as u64 {
            return Err(ClientError::AppendedMismatch {
                request_id,
                expected: request.replies.len(),
                got,
            });
        }
        let mut lsn = first_lsn;
        for reply in request.replies {
            if lsn <= applied_lsn {
                // Applied while the request was in flight, so above its floor: kept.
                let answer = pending.unclaimed.remove(&lsn).ok_or(ProposeError::Unknown);
                let _ = reply.send(answer);
            } else {
                pending.waiting.insert(lsn, reply);
            }
            lsn = lsn.next();
        }
        pending.prune();
        Ok(())
    }

    /// The connection is gone: remember why, and answer everyone still waiting.
    fn fail(&self, error: ClientError) {
        match &error {
            ClientError::Dropped => debug!("driver dropped"),
            error => warn!(%error, "sidecar connection lost"),
        }
        lock(&self.failure).get_or_insert_with(|| Arc::new(error));
        self.closed.cancel();
        let mut pending = lock(&self.pending);
        pending.closed = true;
        // Sent, or committed but not applied here: the output will not come.
        for (_, request) in pending.requests.drain() {
            for reply in request.replies {
                let _ = reply.send(Err(ProposeError::Unknown));
            }
        }
        for (_, reply) in std::mem::take(&mut pending.waiting) {
            let _ = reply.send(Err(ProposeError::Unknown));
        }
        pending.unclaimed.clear();
    }
}

/// Applies the records in `bytes` in order, each verified first (DESIGN invariant 5), and
/// collects the outputs. Stops at the first record that fails a check; those before it
/// stay applied.
fn apply_records<S: StateMachine>(
    state: &mut Applied<S>,
    bytes: &[u8],
    outputs: &mut Vec<(Lsn, S::Output)>,
) -> Result<(), ClientError> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let expected = state.applied_lsn.next();
        let (record, len) = match decode_record(rest) {
            Ok(Some(decoded)) => decoded,
            Ok(None) => {
                return Err(ClientError::Corrupt {
                    lsn: expected,
                    reason: wal::Corruption::Truncated,
                })
            }
            Err(reason) => {
                return Err(ClientError::Corrupt {
                    lsn: expected,
                    reason,
                })
            }
        };
        if record.lsn != expected {
            return Err(ClientError::OutOfOrder {
                expected,
                found: record.lsn,
            });
        }
        if record.epoch < state.last_epoch {
            return Err(ClientError::Corrupt {
                lsn: expected,
                reason: wal::Corruption::EpochOrder {
                    previous: state.last_epoch.get(),
                    found: record.epoch.get(),
                },
            });
        }
        match record.kind {
            RecordKind::App => {
                let output = state.state_machine.apply(record.lsn, record.payload);
                outputs.push((record.lsn, output));
            }
            RecordKind::EpochStart | RecordKind::Config => {}
        }
        state.last_epoch = record.epoch;
        state.applied_lsn = record.lsn;
        rest = &rest[len..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::BoxError;
    use wal::format::encode_record;

    /// Remembers what it applied; outputs the count of commands so far.
    #[derive(Default)]
    struct Log(Vec<(Lsn, Vec<u8>)>);

    impl StateMachine for Log {
        type Output = usize;
        fn apply(&mut self, lsn: Lsn, command: &[u8]) -> usize {
            self.0.push((lsn, command.to_vec()));
            self.0.len()
        }
        fn snapshot(&self) -> Vec<u8> {
            Vec::new()
        }
        fn restore(&mut self, _lsn: Lsn, _snapshot: &[u8]) -> Result<(), BoxError> {
            Ok(())
        }
    }

    fn shared() -> Shared<Log> {
        Shared::new(
            Log::default(),
            Lsn::ZERO,
            RoleInfo {
                role: Role::Primary,
                epoch: Epoch(1),
                primary: Some(NodeId(1)),
                primary_client_addr: None,
                commit_lsn: Lsn::ZERO,
            },
        )
    }

    fn records(first: u64, kinds: &[RecordKind]) -> Bytes {
        let mut buf = Vec::new();
        for (i, kind) in kinds.iter().enumerate() {
            let payload: &[u8] = match kind {
                RecordKind::App => b"cmd",
                RecordKind::EpochStart => b"",
                RecordKind::Config => b"{}",
            };
            encode_record(&mut buf, Lsn(first + i as u64), Epoch(1), *kind, payload);
        }
        Bytes::from(buf)
    }

    fn request(
        shared: &Shared<Log>,
        request_id: u64,
        count: usize,
    ) -> Vec<oneshot::Receiver<Result<usize, ProposeError>>> {
        let (replies, answers): (Vec<_>, Vec<_>) = (0..count).map(|_| oneshot::channel()).unzip();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        assert!(shared.register(request_id, replies, permit));
        answers
    }

    /// A record applied before its `Appended` arrives still hands its output to the proposer.
    #[test]
    fn output_of_a_record_applied_before_its_answer_reaches_the_proposer() {
        let shared = shared();
        let mut answers = request(&shared, 1, 2);
        shared
            .on_frame(Frame::Records {
                bytes: records(1, &[RecordKind::App, RecordKind::App]),
            })
            .unwrap();
        shared
            .on_frame(Frame::Appended {
                request_id: 1,
                first_lsn: Lsn(1),
                last_lsn: Lsn(2),
            })
            .unwrap();
        assert_eq!(answers[0].try_recv().unwrap(), Ok(1));
        assert_eq!(answers[1].try_recv().unwrap(), Ok(2));
        assert!(lock(&shared.pending).unclaimed.is_empty());
    }

    /// An `Appended` before its records: the proposer waits until the record is applied.
    #[test]
    fn answer_before_the_record_waits_for_apply() {
        let shared = shared();
        let mut answers = request(&shared, 1, 1);
        shared
            .on_frame(Frame::Appended {
                request_id: 1,
                first_lsn: Lsn(2),
                last_lsn: Lsn(2),
            })
            .unwrap();
        assert!(answers[0].try_recv().is_err());
        shared
            .on_frame(Frame::Records {
                bytes: records(1, &[RecordKind::EpochStart, RecordKind::App]),
            })
            .unwrap();
        assert_eq!(answers[0].try_recv().unwrap(), Ok(1));
    }

    /// With no request in flight, outputs are not kept.
    #[test]
    fn outputs_nobody_can_claim_are_not_kept() {
        let shared = shared();
        shared
            .on_frame(Frame::Records {
                bytes: records(1, &[RecordKind::App; 5]),
            })
            .unwrap();
        assert!(lock(&shared.pending).unclaimed.is_empty());
        assert_eq!(*shared.applied.borrow(), Lsn(5));
    }

    /// Epoch-start records advance the applied LSN without reaching `apply`.
    #[test]
    fn epoch_start_records_are_not_applied() {
        let shared = shared();
        shared
            .on_frame(Frame::Records {
                bytes: records(
                    1,
                    &[
                        RecordKind::EpochStart,
                        RecordKind::App,
                        RecordKind::EpochStart,
                    ],
                ),
            })
            .unwrap();
        let applied = lock(&shared.state).state_machine.0.clone();
        assert_eq!(applied, vec![(Lsn(2), b"cmd".to_vec())]);
        assert_eq!(*shared.applied.borrow(), Lsn(3));
    }

    /// A record with a flipped bit is refused and not applied; the ones before it are.
    #[test]
    fn corrupt_record_is_not_applied() {
        let shared = shared();
        let mut bytes = records(1, &[RecordKind::App, RecordKind::App]).to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let result = shared.on_frame(Frame::Records {
            bytes: Bytes::from(bytes),
        });
        assert!(
            matches!(result, Err(ClientError::Corrupt { lsn: Lsn(2), .. })),
            "{result:?}"
        );
        assert_eq!(lock(&shared.state).state_machine.0.len(), 1);
        assert_eq!(*shared.applied.borrow(), Lsn(1));
    }

    /// A gap in the LSNs is refused.
    #[test]
    fn record_out_of_order_is_refused() {
        let shared = shared();
        let result = shared.on_frame(Frame::Records {
            bytes: records(2, &[RecordKind::App]),
        });
        assert!(matches!(
            result,
            Err(ClientError::OutOfOrder {
                expected: Lsn(1),
                found: Lsn(2)
            })
        ));
        assert!(lock(&shared.state).state_machine.0.is_empty());
    }

    /// Losing the connection answers everyone: sent requests as unknown.
    #[test]
    fn failure_answers_every_waiting_proposer() {
        let shared = shared();
        let mut answers = request(&shared, 1, 1);
        shared.fail(ClientError::Closed);
        assert_eq!(answers[0].try_recv().unwrap(), Err(ProposeError::Unknown));
        let (reply, mut answer) = oneshot::channel();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        assert!(!shared.register(2, vec![reply], permit));
        assert_eq!(answer.try_recv().unwrap(), Err(ProposeError::Disconnected));
    }
}
