//! The sidecar's side of the app API ([`crate::proto::app`] is the protocol): accepts the
//! local application's connections on the `--app-socket` listener and serves each one.
//!
//! Per connection, three kinds of task share one bounded outbox of frames, drained by one
//! writer task:
//! - the reader (the connection task itself) decodes frames, answers `Status`, and hands
//!   each `Append` to its own task, up to [`APPENDS_INFLIGHT_MAX`] appends and
//!   [`APPENDS_INFLIGHT_BYTES_MAX`] payload bytes at once, so appends are not serialised on
//!   the round trip to the core, and memory stays bounded (DESIGN invariant 7);
//! - an append task calls [`NodeHandle::propose`] and queues `Appended`/`Rejected`. It does
//!   not stop when the application disconnects: the proposal goes through the core either
//!   way and only its answer is dropped, so a disconnect mid-append loses nothing;
//! - the subscription task follows the commit LSN and queues `Records` read straight from the
//!   WAL (never past the commit LSN), and `Role` on every change of role, epoch or primary.
//!
//! A bad frame (garbage, oversized, out of place) is answered with `Error`, logged at `warn`,
//! and closes that connection only. At most [`CONNECTIONS_MAX`] connections are served at
//! once; further ones wait in the listen backlog.
//!
//! Snapshots ([`snapshot`] serves their frames; [`super::snapshot`] keeps the snapshots): a
//! subscription passes the node's snapshot requests on as `SnapshotRequest`, and starts
//! with the newest snapshot (`RestoreBegin`… `RestoreEnd`) when the log no longer holds
//! where it starts, when it starts from nothing, or when the node replaced its log by a
//! snapshot from the primary. A `SnapshotOffer` starts an upload of the application's
//! snapshot; `SnapshotFetch` asks for the newest one.
//!
//! It does not bind or remove the socket file (the node's start-up does).

pub mod snapshot;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::core;
use crate::node::handle::{NodeHandle, NodeStatus, ProposeOutcome, ReadOutcome, Request};
use crate::proto::app::{
    CodecError, Frame, FrameReader, FrameWriter, RejectReason, Role, APPEND_COUNT_MAX,
    FRAME_LEN_MAX, PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use crate::{Epoch, Lsn, NodeId};

/// Application connections served at once.
pub const CONNECTIONS_MAX: usize = 64;

/// Appends one connection may have in flight; the connection is not read further until one
/// is answered.
pub const APPENDS_INFLIGHT_MAX: usize = 1024;

/// Payload bytes one connection may have in flight, likewise.
pub const APPENDS_INFLIGHT_BYTES_MAX: usize = 128 << 20;

// One largest append must fit, or it would wait for permits forever.
const _: () = assert!(FRAME_LEN_MAX <= APPENDS_INFLIGHT_BYTES_MAX);
const _: () = assert!(APPENDS_INFLIGHT_BYTES_MAX <= u32::MAX as usize);

/// Record bytes per `Records` frame (a single larger record goes alone).
pub const RECORDS_FRAME_BYTES_MAX: usize = 1 << 20;

/// Frames queued for one connection's writer.
const OUTBOX_FRAMES_MAX: usize = 64;

/// How long a new connection has to send `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection waits to get its `Error` frame out to an application that
/// is not reading.
const ERROR_LINGER: Duration = Duration::from_secs(1);

/// How long to wait before accepting again after `accept` failed (out of descriptors).
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Serves the app API on `listener` until `shutdown` is cancelled, then closes every
/// connection and returns once their tasks have ended. Append tasks still waiting for the
/// core are not waited for: they end when the core answers or stops.
pub async fn serve(listener: UnixListener, node: NodeHandle, shutdown: CancellationToken) {
    let connections = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let tracker = TaskTracker::new();
    let mut connection_id: u64 = 0;
    info!(node = %node.node_id(), "app api listening");
    loop {
        // Wait for a free slot before accepting, so that the backlog holds the excess.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = Arc::clone(&connections).acquire_owned() => permit,
        };
        let Ok(permit) = permit else {
            // The semaphore is never closed.
            break;
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                connection_id += 1;
                let span = tracing::info_span!("app", connection = connection_id);
                tracker.spawn(
                    connection(
                        stream,
                        connection_id,
                        node.clone(),
                        shutdown.child_token(),
                        permit,
                    )
                    .instrument(span),
                );
            }
            Err(error) => {
                warn!(%error, "app api accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_RETRY_DELAY) => {}
                }
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    info!("app api stopped");
}

/// How a connection's reading ended.
enum Ended {
    /// The application closed the connection.
    Eof,
    /// The connection is closing (server shutdown, or the writer sent a fatal `Error`).
    Closing,
    /// The application broke the protocol: send it this and close.
    Refused(String),
    /// Reading failed.
    Io(std::io::Error),
    /// The application sent `TakeClients` (version 4) as its first frame: the connection
    /// becomes one that receives client connections (`handoff`).
    TakeClients(FrameReader<OwnedReadHalf>),
}

impl From<CodecError> for Ended {
    fn from(error: CodecError) -> Ended {
        match error {
            CodecError::Decode(error) => Ended::Refused(error.to_string()),
            CodecError::Io(error) => Ended::Io(error),
        }
    }
}

/// Serves one connection. `closing` is cancelled when the server shuts down or the
/// connection must close; `_permit` is its connection slot.
async fn connection(
    stream: UnixStream,
    connection_id: u64,
    node: NodeHandle,
    closing: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    debug!("app connected");
    let (read, write) = stream.into_split();
    let (outbox, outbox_rx) = mpsc::channel(OUTBOX_FRAMES_MAX);
    let writer = tokio::spawn(connection_writer(write, outbox_rx, closing.clone()));
    // Cancelled when reading stops, to end the subscription.
    let reading = closing.child_token();
    let ended = connection_read(read, &node, &outbox, &closing, &reading).await;
    reading.cancel();
    match ended {
        Ended::TakeClients(frames) => {
            // The writer hands its half back once everything queued before (`Welcome`) is
            // written, and nothing else writes to this connection but `handoff`.
            let write = match outbox.send(Frame::TakeClients).await {
                Ok(()) => writer.await.ok().flatten(),
                Err(_) => None,
            };
            drop(outbox);
            let (Some(write), Ok(read)) = (write, frames.into_inner()) else {
                debug!("app connection closed while it began to take clients");
                return;
            };
            match read.reunite(write) {
                Ok(stream) => {
                    super::handoff::serve(stream, &node.takers, connection_id, &closing).await
                }
                Err(error) => warn!(%error, "cannot reunite the app connection's halves"),
            }
            return;
        }
        Ended::Eof => info!("app disconnected"),
        Ended::Closing => debug!("app connection closing"),
        Ended::Io(error) => info!(%error, "app connection failed"),
        Ended::Refused(message) => {
            warn!(reason = %message, "bad frame from app; closing the connection");
            // The writer closes the connection after the Error frame. An application that
            // does not read is not waited for long.
            let error = Frame::Error { message };
            let _ = tokio::time::timeout(ERROR_LINGER, outbox.send(error)).await;
            drop(outbox);
            let mut writer = writer;
            if tokio::time::timeout(ERROR_LINGER, &mut writer)
                .await
                .is_err()
            {
                closing.cancel();
                let _ = writer.await;
            }
            return;
        }
    }
    // The writer goes on delivering the answers of appends still in flight (the
    // application may only have closed its sending side), and ends when they are all
    // answered, when the socket fails, or at shutdown.
    drop(outbox);
    let _ = writer.await;
}

/// The connection's reading loop: handshake, then frames until the end.
async fn connection_read(
    read: OwnedReadHalf,
    node: &NodeHandle,
    outbox: &mpsc::Sender<Frame>,
    closing: &CancellationToken,
    reading: &CancellationToken,
) -> Ended {
    let mut frames = FrameReader::new(read);
    let hello = tokio::select! {
        _ = closing.cancelled() => return Ended::Closing,
        hello = tokio::time::timeout(HELLO_TIMEOUT, frames.read_frame()) => hello,
    };
    let version = match hello {
        Err(_) => return Ended::Refused("no Hello within 10 s".to_owned()),
        Ok(Err(error)) => return error.into(),
        Ok(Ok(None)) => return Ended::Eof,
        Ok(Ok(Some(Frame::Hello { version })))
            if (PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION).contains(&version) =>
        {
            version
        }
        Ok(Ok(Some(Frame::Hello { version }))) => {
            return Ended::Refused(format!(
            "app api version {version} is not supported (this sidecar speaks {PROTOCOL_VERSION_MIN} to {PROTOCOL_VERSION})"
        ))
        }
        Ok(Ok(Some(frame))) => {
            return Ended::Refused(format!("expected Hello, got {}", frame.name()))
        }
    };
    let welcome = Frame::Welcome {
        version,
        node_id: node.node_id(),
        frame_len_max: FRAME_LEN_MAX as u32,
        append_count_max: APPEND_COUNT_MAX as u32,
    };
    if outbox.send(welcome).await.is_err() {
        return Ended::Closing;
    }
    debug!("app handshake done");

    let inflight = Arc::new(Semaphore::new(APPENDS_INFLIGHT_MAX));
    let inflight_bytes = Arc::new(Semaphore::new(APPENDS_INFLIGHT_BYTES_MAX));
    let mut subscribed = false;
    let mut first = true;
    // While subscribed: this connection counts towards the application's liveness
    // (`app_health`), and is pinged if its session speaks version 2.
    let mut attached: Option<super::app_health::Attached> = None;
    let nonces = Arc::new(PingNonces::default());
    loop {
        let frame = tokio::select! {
            _ = closing.cancelled() => return Ended::Closing,
            frame = frames.read_frame() => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ended::Eof,
            Err(error) => return error.into(),
        };
        let was_first = std::mem::replace(&mut first, false);
        match frame {
            Frame::TakeClients if version >= 4 && was_first => {
                return Ended::TakeClients(frames);
            }
            Frame::TakeClients => {
                return Ended::Refused(format!(
                    "TakeClients needs app api version 4 and must be the first frame after Welcome (this session speaks {version})"
                ));
            }
            Frame::Append {
                request_id,
                payloads,
            } => {
                // At most FRAME_LEN_MAX, which fits both limits (asserted above).
                let len: usize = payloads.iter().map(Bytes::len).sum();
                let permits = tokio::select! {
                    _ = closing.cancelled() => return Ended::Closing,
                    permits = async {
                        let count = Arc::clone(&inflight).acquire_owned().await?;
                        let bytes = Arc::clone(&inflight_bytes).acquire_many_owned(len as u32).await?;
                        Ok::<_, tokio::sync::AcquireError>((count, bytes))
                    } => permits,
                };
                let Ok(permits) = permits else {
                    // The semaphores are never closed.
                    return Ended::Closing;
                };
                tokio::spawn(
                    append(node.clone(), request_id, payloads, outbox.clone(), permits)
                        .in_current_span(),
                );
            }
            Frame::Subscribe { from_lsn } => {
                if subscribed {
                    return Ended::Refused("already subscribed on this connection".to_owned());
                }
                subscribed = true;
                tokio::spawn(
                    subscription(
                        node.clone(),
                        from_lsn,
                        outbox.clone(),
                        reading.clone(),
                        Arc::clone(&nonces),
                    )
                    .in_current_span(),
                );
                let pinged = version >= 2;
                attached = Some(node.app_health.attach(pinged));
                if pinged {
                    tokio::spawn(
                        ping(
                            node.app_health.ping_every,
                            outbox.clone(),
                            reading.clone(),
                            Arc::clone(&nonces),
                        )
                        .in_current_span(),
                    );
                }
            }
            Frame::Read { request_id } if version >= 3 => {
                // Answered in line: the core answers a read in the step that takes it, so
                // this waits only for the request queue.
                let answer = tokio::select! {
                    _ = closing.cancelled() => return Ended::Closing,
                    answer = lease_read(node, request_id) => answer,
                };
                if outbox.send(answer).await.is_err() {
                    return Ended::Closing;
                }
            }
            Frame::Read { .. } => {
                return Ended::Refused(format!(
                    "Read needs app api version 3; this session speaks {version}"
                ));
            }
            Frame::Pong { nonce, applied_lsn } => {
                if let Some(attached) = &attached {
                    attached.answered(applied_lsn);
                }
                if nonces.answered_after_snapshot_request(nonce) {
                    node.app_health.snapshot_done();
                }
            }
            Frame::Status => {
                let reply = match serde_json::to_string(&*node.status()) {
                    Ok(json) => Frame::StatusReply { json },
                    Err(error) => Frame::Error {
                        message: format!("status could not be encoded: {error}"),
                    },
                };
                if outbox.send(reply).await.is_err() {
                    return Ended::Closing;
                }
            }
            Frame::Hello { .. } => {
                return Ended::Refused("Hello after the handshake".to_owned());
            }
            Frame::SnapshotOffer { lsn, epoch } => {
                node.app_health.snapshot_done();
                let upload = snapshot::upload(node, lsn, epoch, &mut frames);
                let result = tokio::select! {
                    _ = closing.cancelled() => return Ended::Closing,
                    result = upload => result,
                };
                if let Err(message) = result {
                    return Ended::Refused(message);
                }
            }
            Frame::SnapshotDecline => {
                node.app_health.snapshot_done();
                snapshot::declined(&node.snapshots);
            }
            Frame::SnapshotFetch => {
                match snapshot::restore_to_app(&node.snapshots, &node.reader(), outbox).await {
                    Ok(Some(_)) => {}
                    Ok(None) if outbox.is_closed() => return Ended::Closing,
                    Ok(None) => return Ended::Refused("this node has no snapshot".to_owned()),
                    Err(message) => return Ended::Refused(message),
                }
            }
            Frame::SnapshotChunk { .. } | Frame::SnapshotDone => {
                return Ended::Refused(format!("{} without a SnapshotOffer", frame.name()));
            }
            Frame::Welcome { .. }
            | Frame::Appended { .. }
            | Frame::Rejected { .. }
            | Frame::Records { .. }
            | Frame::Role { .. }
            | Frame::StatusReply { .. }
            | Frame::Error { .. }
            | Frame::SnapshotRequest
            | Frame::RestoreBegin { .. }
            | Frame::RestoreChunk { .. }
            | Frame::RestoreEnd
            | Frame::Ping { .. }
            | Frame::ReadIndex { .. }
            | Frame::ClientConnection
            | Frame::TakingClients => {
                return Ended::Refused(format!(
                    "{} is a sidecar-to-app frame; an app does not send it",
                    frame.name()
                ));
            }
        }
    }
}

/// The nonces of one connection's pings, shared by the task that sends them, the
/// subscription that asks for snapshots and the reader that takes the answers. The client
/// library takes a snapshot's capture in the task that reads the connection, so an answer
/// to a ping sent after a `SnapshotRequest` shows the application is past the capture: its
/// silence counts again from then (`app_health.rs`), even if it never offers the snapshot.
#[derive(Debug)]
struct PingNonces {
    /// The nonce of the last ping sent, or about to be: set before the ping is queued.
    sent: AtomicU64,
    /// While a snapshot request is outstanding: `sent` as read once the request was
    /// queued; [`PingNonces::NONE`] otherwise.
    snapshot_after: AtomicU64,
}

impl Default for PingNonces {
    fn default() -> PingNonces {
        PingNonces {
            sent: AtomicU64::new(0),
            snapshot_after: AtomicU64::new(PingNonces::NONE),
        }
    }
}

impl PingNonces {
    const NONE: u64 = u64::MAX;

    /// A `SnapshotRequest` is about to be queued: the mark of an earlier one goes, so that
    /// no answer coming meanwhile ends the wait for this one.
    fn snapshot_requesting(&self) {
        self.snapshot_after
            .store(PingNonces::NONE, Ordering::SeqCst);
    }

    /// A `SnapshotRequest` was just queued. `sent` is read after it was, and a ping sets
    /// `sent` before it is queued: every ping queued before the request has a nonce at most
    /// this, so only an answer to one queued after it ends the wait (one queued after it
    /// may also carry this nonce, which only makes the wait last a ping longer).
    fn snapshot_requested(&self) {
        self.snapshot_after
            .store(self.sent.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// A `Pong` with `nonce` came: true, once, if it answers a ping queued after the
    /// outstanding snapshot request.
    fn answered_after_snapshot_request(&self, nonce: u64) -> bool {
        let after = self.snapshot_after.load(Ordering::SeqCst);
        after != PingNonces::NONE
            && nonce > after
            && self
                .snapshot_after
                .compare_exchange(after, PingNonces::NONE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
    }
}

/// Sends `Ping` on a subscribed connection every `every`, with a nonce that grows, until the
/// connection's reading ends or its outbox closes. A ping that finds the outbox full waits:
/// an application that does not read its socket does not answer either.
async fn ping(
    every: Duration,
    outbox: mpsc::Sender<Frame>,
    reading: CancellationToken,
    nonces: Arc<PingNonces>,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut nonce = 0u64;
    loop {
        tokio::select! {
            _ = reading.cancelled() => return,
            _ = ticker.tick() => {}
        }
        nonce += 1;
        nonces.sent.store(nonce, Ordering::SeqCst);
        tokio::select! {
            _ = reading.cancelled() => return,
            sent = outbox.send(Frame::Ping { nonce }) => if sent.is_err() { return },
        }
    }
}

/// Drains the outbox to the socket, flushing whenever the outbox runs empty. Ends when every
/// sender is gone, after writing an `Error` frame (which closes the connection), when
/// `closing` is cancelled, or when the socket fails.
async fn connection_writer(
    write: OwnedWriteHalf,
    mut outbox: mpsc::Receiver<Frame>,
    closing: CancellationToken,
) -> Option<OwnedWriteHalf> {
    let mut out = FrameWriter::new(write);
    // Ok(true): hand the write half back (the connection takes clients now).
    let result = tokio::select! {
        _ = closing.cancelled() => Ok(false),
        result = async {
            while let Some(frame) = outbox.recv().await {
                if let Frame::TakeClients = frame {
                    // Not a frame to send: the reader's sign that this connection now takes
                    // clients. Give the write half back with everything before it written.
                    out.flush().await?;
                    return Ok(true);
                }
                let fatal = matches!(frame, Frame::Error { .. });
                out.write_frame(&frame).await?;
                if fatal {
                    out.shutdown().await?;
                    return Ok(false);
                }
                if outbox.is_empty() {
                    out.flush().await?;
                }
            }
            out.shutdown().await.map(|()| false)
        } => result,
    };
    match result {
        Ok(true) => return Some(out.into_inner()),
        Ok(false) => {}
        Err(error) => debug!(%error, "app connection write failed"),
    }
    // Whatever ended the writing ends the connection: stop reading and subscribing.
    closing.cancel();
    None
}

/// Proposes one append and queues its answer. Runs to the end even if the connection is
/// gone, so that a disconnect does not cancel a proposal the core has taken.
async fn append(
    node: NodeHandle,
    request_id: u64,
    payloads: Vec<Bytes>,
    outbox: mpsc::Sender<Frame>,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    let count = payloads.len();
    let answer = match node.propose(payloads).await {
        Ok(ProposeOutcome::Committed {
            first_lsn,
            last_lsn,
        }) => {
            debug!(request_id, count, %first_lsn, %last_lsn, "append committed");
            Frame::Appended {
                request_id,
                first_lsn,
                last_lsn,
            }
        }
        Ok(ProposeOutcome::NotPrimary {
            primary,
            client_addr,
        }) => not_primary(request_id, primary, client_addr),
        Ok(ProposeOutcome::Busy) => rejected(
            request_id,
            RejectReason::Busy,
            None,
            None,
            "the primary is handing over; retry on the new primary",
        ),
        Ok(ProposeOutcome::DiskBehind) => rejected(
            request_id,
            RejectReason::Busy,
            None,
            None,
            "the primary's disk is behind; nothing was written, retry shortly",
        ),
        Ok(ProposeOutcome::Unknown) => rejected(
            request_id,
            RejectReason::UnknownOutcome,
            None,
            None,
            "this node stopped being primary after taking the records; they may or may not be committed",
        ),
        Ok(ProposeOutcome::Failed(message)) => {
            rejected(request_id, RejectReason::Failed, None, None, &message)
        }
        Err(stopped) => rejected(
            request_id,
            RejectReason::UnknownOutcome,
            None,
            None,
            &stopped.to_string(),
        ),
    };
    if outbox.send(answer).await.is_err() {
        debug!(request_id, "app connection gone; append answer dropped");
    }
}

/// A `Rejected` frame; `client_addr` is the primary's client port, when known.
fn rejected(
    request_id: u64,
    reason: RejectReason,
    primary: Option<NodeId>,
    client_addr: Option<std::net::SocketAddr>,
    message: &str,
) -> Frame {
    Frame::Rejected {
        request_id,
        reason,
        primary,
        client_addr: client_addr.map(|addr| addr.to_string()).unwrap_or_default(),
        message: message.to_owned(),
    }
}

/// The `Rejected` frame of a request this node cannot serve: it is not the primary.
fn not_primary(
    request_id: u64,
    primary: Option<NodeId>,
    client_addr: Option<std::net::SocketAddr>,
) -> Frame {
    rejected(
        request_id,
        RejectReason::NotPrimary,
        primary,
        client_addr,
        "this node is not the primary",
    )
}

/// A lease read's answer: `ReadIndex`, or `Rejected` as an append would be.
async fn lease_read(node: &NodeHandle, request_id: u64) -> Frame {
    match node.read_index().await {
        Ok(ReadOutcome::Index { lsn, epoch }) => Frame::ReadIndex {
            request_id,
            lsn,
            epoch,
        },
        Ok(ReadOutcome::NotPrimary {
            primary,
            client_addr,
        }) => not_primary(request_id, primary, client_addr),
        Ok(ReadOutcome::Busy) => rejected(
            request_id,
            RejectReason::Busy,
            None,
            None,
            "this node serves no reads (a witness handing over); retry on the new primary",
        ),
        Err(stopped) => rejected(
            request_id,
            RejectReason::NotPrimary,
            None,
            None,
            &stopped.to_string(),
        ),
    }
}

/// The core's role as the app protocol spells it. Here, on the node's side, because the
/// core knows nothing of the wire and the protocol nothing of the core.
impl From<core::Role> for Role {
    fn from(role: core::Role) -> Role {
        match role {
            core::Role::Backup => Role::Backup,
            core::Role::Candidate => Role::Candidate,
            core::Role::Primary => Role::Primary,
        }
    }
}

/// The fields of a `Role` frame that make a change worth telling (not the commit LSN).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RoleView {
    role: Role,
    epoch: Epoch,
    primary: Option<NodeId>,
    primary_client_addr: String,
}

impl RoleView {
    fn of(status: &NodeStatus) -> RoleView {
        RoleView {
            role: status.role.into(),
            epoch: Epoch(status.epoch),
            primary: status.primary.map(NodeId),
            primary_client_addr: status
                .primary_client_addr
                .map(|addr| addr.to_string())
                .unwrap_or_default(),
        }
    }

    fn frame(&self, commit_lsn: Lsn) -> Frame {
        Frame::Role {
            role: self.role,
            epoch: self.epoch,
            primary: self.primary,
            primary_client_addr: self.primary_client_addr.clone(),
            commit_lsn,
        }
    }
}

/// Streams committed records from `from_lsn` and role changes until `stop` is cancelled, the
/// connection goes, or the node stops.
async fn subscription(
    node: NodeHandle,
    from_lsn: Lsn,
    outbox: mpsc::Sender<Frame>,
    stop: CancellationToken,
    nonces: Arc<PingNonces>,
) {
    tokio::select! {
        _ = stop.cancelled() => {}
        result = subscription_stream(&node, from_lsn, &outbox, &nonces) => {
            if let Err(message) = result {
                warn!(%from_lsn, reason = %message, "app subscription ended");
                let _ = outbox.send(Frame::Error { message }).await;
            }
        }
    }
}

/// The body of [`subscription`]: returns `Ok` when the connection or the node is gone, and
/// the message for an `Error` frame when the stream cannot go on.
async fn subscription_stream(
    node: &NodeHandle,
    from_lsn: Lsn,
    outbox: &mpsc::Sender<Frame>,
    nonces: &PingNonces,
) -> Result<(), String> {
    let mut commit = node.watch_commit();
    let mut status = node.watch_status();
    let mut requests = node.snapshots.watch_requests();
    let mut reset = node.snapshots.watch_reset();
    requests.borrow_and_update();
    reset.borrow_and_update();
    let reader = node.reader();
    let mut role = RoleView::of(&status.borrow_and_update());
    let commit_lsn = *commit.borrow();
    if outbox.send(role.frame(commit_lsn)).await.is_err() {
        return Ok(());
    }
    debug!(%from_lsn, %commit_lsn, "app subscribed");
    let mut next = from_lsn;
    if snapshot::restore_wanted(&node.snapshots, next, reader.first_lsn()) {
        match snapshot::restore_to_app(&node.snapshots, &reader, outbox).await? {
            Some(lsn) => next = lsn.next(),
            None => return Ok(()),
        }
    }
    // Opened once the commit LSN reaches `next`, so that the log holds `next` by then.
    let mut records: Option<wal::reader::Records> = None;
    loop {
        let commit_lsn = *commit.borrow_and_update();
        while next <= commit_lsn {
            if status.has_changed().unwrap_or(false)
                && !subscription_role(&mut status, &mut role, commit_lsn, outbox).await
            {
                return Ok(());
            }
            let batch = match records.as_mut() {
                Some(iter) => iter.next_batch(RECORDS_FRAME_BYTES_MAX, commit_lsn),
                None => reader
                    .iter_from(next)
                    .map(|iter| records.insert(iter))
                    .and_then(|iter| iter.next_batch(RECORDS_FRAME_BYTES_MAX, commit_lsn)),
            };
            // A snapshot from the primary replaced the log (published before the log went
            // and the commit LSN moved): what was just read may be the old log's, or the
            // read failed because the old log is gone. Either way, restore instead.
            if reset.has_changed().unwrap_or(false) && *reset.borrow_and_update() >= next {
                records = None;
                match snapshot::restore_to_app(&node.snapshots, &reader, outbox).await? {
                    Some(lsn) => next = lsn.next(),
                    None => return Ok(()),
                }
                continue;
            }
            let batch = batch.map_err(|error| {
                format!("cannot stream from lsn {next}: {error}; restore a snapshot first")
            })?;
            let Some(batch) = batch else {
                // Committed but not readable yet: look again on the next change.
                break;
            };
            assert!(
                batch.first_lsn == next && batch.last_lsn <= commit_lsn,
                "the reader returned lsns {}..={} for a read from {next} up to {commit_lsn}",
                batch.first_lsn,
                batch.last_lsn
            );
            // Checked by the crash scripts against each node's log at the end of a run
            // (`tests/scripts/lib.sh`, `check_deliveries`): what was handed out as committed
            // is what the log holds.
            debug!(
                target: "understudy::node::app_api::delivered",
                first = %batch.first_lsn,
                last = %batch.last_lsn,
                epoch = %batch.last_epoch,
                "records delivered"
            );
            next = batch.last_lsn.next();
            if outbox
                .send(Frame::Records { bytes: batch.bytes })
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        tokio::select! {
            changed = commit.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let commit_lsn = *commit.borrow();
                if !subscription_role(&mut status, &mut role, commit_lsn, outbox).await {
                    return Ok(());
                }
            }
            changed = requests.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                requests.borrow_and_update();
                // Its pings go unanswered while it takes the snapshot (app_health.rs).
                nonces.snapshot_requesting();
                node.app_health.snapshot_asked();
                if outbox.send(Frame::SnapshotRequest).await.is_err() {
                    return Ok(());
                }
                nonces.snapshot_requested();
            }
        }
    }
}

/// Sends a `Role` frame if the role, epoch or primary changed. False when the connection is
/// gone.
async fn subscription_role(
    status: &mut watch::Receiver<Arc<NodeStatus>>,
    role: &mut RoleView,
    commit_lsn: Lsn,
    outbox: &mpsc::Sender<Frame>,
) -> bool {
    let now = RoleView::of(&status.borrow_and_update());
    if now == *role {
        return true;
    }
    *role = now;
    debug!(role = ?role.role, epoch = %role.epoch, "role sent to app");
    outbox.send(role.frame(commit_lsn)).await.is_ok()
}

impl NodeHandle {
    /// A handle wired to channels the caller drives, so that a test can stand in for the
    /// core loop: it answers the `requests`, publishes `status` and `commit`, and writes the
    /// WAL that `reader` reads.
    #[doc(hidden)]
    pub fn for_tests(
        requests: mpsc::Sender<Request>,
        status: watch::Receiver<Arc<NodeStatus>>,
        commit: watch::Receiver<Lsn>,
        reader: wal::reader::Reader,
        node_id: NodeId,
    ) -> NodeHandle {
        NodeHandle {
            requests,
            status,
            commit,
            reader,
            node_id,
            metrics: Arc::new(crate::node::metrics::Metrics::default()),
            snapshots: Arc::new(crate::node::snapshot::Snapshots::detached()),
            app_health: Arc::new(crate::node::app_health::AppHealth::new(
                false,
                false,
                Duration::from_millis(50),
                Duration::from_secs(60),
                Arc::new(crate::node::metrics::Metrics::default()),
            )),
            takers: crate::node::handoff::Takers::default(),
            last_heard: Arc::default(),
            serving_until: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PingNonces;
    use std::sync::atomic::Ordering;

    /// Only an answer to a ping queued after the snapshot request ends the wait for it, and
    /// only once; with no request outstanding, no answer does.
    #[test]
    fn an_answer_to_a_ping_sent_after_a_snapshot_request_ends_the_wait_once() {
        let nonces = PingNonces::default();
        assert!(!nonces.answered_after_snapshot_request(1));
        nonces.sent.store(5, Ordering::SeqCst);
        nonces.snapshot_requested();
        assert!(!nonces.answered_after_snapshot_request(4));
        assert!(!nonces.answered_after_snapshot_request(5));
        assert!(nonces.answered_after_snapshot_request(6));
        assert!(!nonces.answered_after_snapshot_request(7));
        // A request before any ping was sent: the first ping's answer ends it.
        let nonces = PingNonces::default();
        nonces.snapshot_requested();
        assert!(nonces.answered_after_snapshot_request(1));
        // The mark of a request whose snapshot was offered (no answer consumed it) goes
        // when the next request is made: an answer in between ends nothing.
        nonces.sent.store(9, Ordering::SeqCst);
        nonces.snapshot_requested();
        nonces.snapshot_requesting();
        assert!(!nonces.answered_after_snapshot_request(10));
        nonces.snapshot_requested();
        assert!(!nonces.answered_after_snapshot_request(9));
        assert!(nonces.answered_after_snapshot_request(10));
    }
}
