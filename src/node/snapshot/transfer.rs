//! Snapshot transfer between peers: [`send`] (a task per backup, started by the core loop
//! for `Action::SendSnapshot`) and [`receive`] (a snapshot connection the peer transport
//! accepted and handed over). The protocol is `proto::peer`'s ("Snapshot transfer"):
//! windowed (at most [`TRANSFER_WINDOW_BYTES`] unacknowledged), resumable (a receive that
//! broke off is kept and continued from where it stopped), every chunk verified. A sender
//! that finds its snapshot damaged (the disk changed it after start-up verified it) moves
//! it to `snapshots-corrupt/`, sends the one before it, and the application is asked for a
//! new snapshot at once.
//!
//! It does not install what it receives: the core loop does, and says whether the core
//! still wanted it ([`core_loop`](super::core_loop)).

use crate::config::PeerAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tracing::{debug, error, info, warn};
use wal::snapshot::{SnapshotInfo, SnapshotWriter};
use wal::{Epoch, Lsn, NodeId};

use super::store::{
    install_received, is_damage, read_chunks, snapshot_remove_now, READ_AHEAD_CHUNKS,
};
use super::{
    lock, on_blocking_thread, Event, Partial, Request, SnapshotMetrics, Snapshots, TransferStatus,
};
use crate::node::metrics::Metrics;
use crate::node::peer::{dial_handshake, PeerConfig};
use crate::proto::peer::{encode_head, Frame, PeerCodec};

/// Body bytes a sender may have sent and not had acknowledged: the transfer's memory bound
/// on both ends (plus one chunk being read or written).
pub const TRANSFER_WINDOW_BYTES: u64 = 2 << 20;
/// How many times a sender dials again after a transfer broke off, before it reports the
/// transfer failed (the core asks again with a later heartbeat, and the receiver still
/// resumes from what it has).
const SEND_ATTEMPTS_MAX: u32 = 5;
/// Progress is logged at most this often per transfer.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(2);
/// How long a new snapshot connection waits for a receive still running on an old one.
const RECEIVE_WAIT: Duration = Duration::from_secs(5);

// A window smaller than a chunk would stall with one chunk unacknowledged.
const _: () = assert!(TRANSFER_WINDOW_BYTES >= wal::snapshot::SNAPSHOT_CHUNK_LEN_MAX as u64);

// The sender.

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
    addr: &PeerAddr,
    epoch: Epoch,
    log: &wal::reader::Reader,
    book: &crate::node::members::Book,
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
        let Some((config_lsn, record)) = book.at(info.lsn) else {
            warn!(peer = %to, lsn = %info.lsn, "no configuration known at the snapshot; not sending it");
            return None;
        };
        let member_config = (config_lsn, Bytes::from(record.encode()));
        match send_snapshot(snapshots, config, to, addr, epoch, &info, &member_config).await {
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
    addr: &PeerAddr,
    epoch: Epoch,
    info: &SnapshotInfo,
    member_config: &(Lsn, Bytes),
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
    if crate::node::peer::first_in_a_while(&snapshots.warned, &format!("send {to} {}", info.lsn)) {
        info!(peer = %to, lsn = %info.lsn, body_len = info.body_len, "sending a snapshot to a backup");
    } else {
        debug!(peer = %to, lsn = %info.lsn, body_len = info.body_len, "sending a snapshot to a backup again");
    }
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=SEND_ATTEMPTS_MAX {
        let sent = send_attempt(
            snapshots,
            config,
            to,
            addr,
            epoch,
            info,
            trailer.body_crc,
            member_config,
        );
        match sent.await {
            Ok(installed) => {
                info!(peer = %to, lsn = %info.lsn, installed, "snapshot transfer done");
                return Ok(Some((info.lsn, info.epoch)));
            }
            Err(TransferError::Snapshot(e)) if is_damage(&e) => return Err(e),
            Err(e) => {
                // A receiver that fails the same way every time (its disk too small for the
                // snapshot, say) would be logged several times a second.
                let reason = format!("send to {to}: {e}");
                if crate::node::peer::first_in_a_while(&snapshots.warned, &reason) {
                    warn!(peer = %to, attempt, error = %e, "snapshot transfer broke off; it resumes where it stopped (logged again for this error after a minute)");
                } else {
                    debug!(peer = %to, attempt, error = %e, "snapshot transfer broke off; it resumes where it stopped");
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
    Ok(None)
}

#[allow(clippy::too_many_arguments)]
async fn send_attempt(
    snapshots: &Arc<Snapshots>,
    config: &Arc<PeerConfig>,
    to: NodeId,
    addr: &PeerAddr,
    epoch: Epoch,
    info: &SnapshotInfo,
    body_crc: u32,
    member_config: &(Lsn, Bytes),
) -> Result<bool, TransferError> {
    let stall = STALL_TIMEOUT;
    let connect = async {
        let (stream, _) = crate::node::peer::connect(addr).await?;
        dial_handshake(config, to, stream)
            .await
            .map_err(|e| TransferError::Connect(e.to_string()))
    };
    let stream = tokio::time::timeout(stall * 2, connect)
        .await
        .map_err(|_| TransferError::Stalled(stall * 2))??;
    let (read, write) = tokio::io::split(stream.into_inner());
    let mut frames = FramedRead::new(read, PeerCodec::default());
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
            config_lsn: member_config.0,
            config: member_config.1.clone(),
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

// The receiver.

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
        config_lsn,
        config,
        ..
    } = begin
    else {
        unreachable!("receive is called with a SnapshotBegin");
    };
    if lsn == Lsn::ZERO || epoch == Epoch::ZERO || config_lsn > lsn {
        return Err(format!(
            "snapshot begin with lsn {lsn}, epoch {epoch}, configuration of lsn {config_lsn}"
        ));
    }
    let config = crate::node::members::ConfigRecord::decode(&config)
        .map_err(|e| format!("the snapshot's configuration: {e}"))?;
    let member_config = (config_lsn, config);
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
        member_config,
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
    snapshots: &Arc<Snapshots>,
    from: NodeId,
    lsn: Lsn,
    epoch: Epoch,
    body_len: u64,
) -> Result<SnapshotWriter, String> {
    let deadline = Instant::now() + RECEIVE_WAIT;
    let partial = loop {
        {
            let mut state = lock(&snapshots.state);
            // The primary asked whether the snapshot is wanted before this; since then an
            // upload of the application's snapshot may have claimed (or stored) this LSN:
            // its file has the same name. Checked under the lock `UploadGuard::claim` and
            // `UploadGuard::stored` take, so the two never write one `<lsn>.snap`.
            if let Some(newest) = state.installed.last().filter(|newest| newest.lsn >= lsn) {
                return Err(format!("a snapshot through lsn {} is here now", newest.lsn));
            }
            if matches!(state.request, Request::Uploading { lsn: uploading, .. } if uploading == lsn)
            {
                return Err(format!(
                    "the application is uploading its snapshot of lsn {lsn}"
                ));
            }
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
            let rest = body_len.saturating_sub(partial.writer.body_len());
            if let Err(refused) = room_for(snapshots, from, lsn, rest).await {
                // Kept, to resume from once there is room.
                let mut state = lock(&snapshots.state);
                state.receiving = None;
                state.partial = Some(partial);
                return Err(refused);
            }
            info!(peer = %from, %lsn, offset = partial.writer.body_len(), previous_sender = %partial.from, "resuming a snapshot receive");
            return Ok(partial.writer);
        }
        debug!(old_lsn = %partial.lsn, %lsn, "dropping a partial snapshot of another lsn");
        // Dropping the writer removes its temp file.
        on_blocking_thread(move || drop(partial)).await;
    }
    if let Err(refused) = room_for(snapshots, from, lsn, body_len).await {
        lock(&snapshots.state).receiving = None;
        return Err(refused);
    }
    let dir = snapshots.dir.clone();
    let created = on_blocking_thread(move || SnapshotWriter::create(&dir, lsn, epoch)).await;
    created.map_err(|e| {
        lock(&snapshots.state).receiving = None;
        format!("cannot create the snapshot file: {e}")
    })
}

/// Refuses a receive that has `bytes` left to write when the disk holding the snapshots has
/// not that much room and a log segment's more ([`Snapshots::room_for`]). Without it, a
/// backup whose disk was too small for the application's state wrote until the disk was
/// full, dropped the file, and did it again at every attempt of the primary's (several a
/// second), the disk full each time for everything else the node writes, and the cause
/// only in a write error.
async fn room_for(
    snapshots: &Arc<Snapshots>,
    from: NodeId,
    lsn: Lsn,
    bytes: u64,
) -> Result<(), String> {
    let store = Arc::clone(snapshots);
    let Err(reason) = on_blocking_thread(move || store.room_for(bytes)).await else {
        return Ok(());
    };
    if crate::node::peer::first_in_a_while(&snapshots.warned, "receive: no room") {
        warn!(
            peer = %from,
            %lsn,
            "cannot receive the snapshot this backup needs, {reason}: it stays behind until there is room (logged again after a minute)"
        );
    }
    Err(format!(
        "not enough free space for the snapshot of lsn {lsn} ({bytes} bytes to write)"
    ))
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
    member_config: (Lsn, crate::node::members::ConfigRecord),
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
                // The configuration at the snapshot is durable before the snapshot's name
                // is: the core loop may never get to store it (`install_received`).
                let data_dir = snapshots.data_dir.clone();
                let config = member_config.clone();
                let info = on_blocking_thread(move || install_received(&data_dir, writer, &config))
                    .await
                    .map_err(|e| format!("cannot install the snapshot: {e}"))?;
                let (reply, answer) = oneshot::channel();
                let received = info.clone();
                let sent = snapshots.events.send(Event::Received {
                    info,
                    config: member_config.clone(),
                    reply,
                });
                let installed = match sent.await.map(|()| answer) {
                    Ok(answer) => match answer.await {
                        Ok(true) => true,
                        Ok(false) => {
                            remove_unwanted(snapshots, received).await;
                            false
                        }
                        // The core loop failed while putting it in use: the file stays for
                        // the next start (`store::recover`).
                        Err(_) => false,
                    },
                    // The core loop is gone (the node stops): the next start decides.
                    Err(_) => false,
                };
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

/// Removes a received snapshot the core loop no longer wanted, with the directory fsynced
/// after (as every snapshot is removed: one that came back after a crash would be taken for
/// the newest at the next start), on a blocking thread, and returns once it is gone.
///
/// The receive calls this before it lets go of its LSN (`receiving`): until then no upload
/// of the same LSN can start, and so nothing but this receive's file can be at the path. A
/// removal that ran after could delete such an upload's `<lsn>.snap`, listed as in use.
async fn remove_unwanted(snapshots: &Snapshots, received: SnapshotInfo) {
    debug_assert_eq!(lock(&snapshots.state).receiving, Some(received.lsn));
    let dir = snapshots.dir.clone();
    on_blocking_thread(move || snapshot_remove_now(&dir, std::slice::from_ref(&received))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::snapshot::schedule::UploadGuard;
    use crate::node::snapshot::store::SNAPSHOTS_DIR;

    /// An empty store in a new data dir, and the core loop's end of its events.
    fn store() -> (tempfile::TempDir, Arc<Snapshots>, mpsc::Receiver<Event>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(SNAPSHOTS_DIR)).unwrap();
        let (events, events_rx) = mpsc::channel(8);
        let snapshots = Arc::new(Snapshots::empty(dir.path(), events));
        (dir, snapshots, events_rx)
    }

    /// A receive and an upload of the application's snapshot never write the same
    /// `<lsn>.snap`: a receive does not start while an upload of its LSN holds the request
    /// or once that upload's snapshot is listed, and an upload is not claimed while the
    /// receive holds the LSN. (Either writing the other's file would install a torn
    /// snapshot, or remove one the node uses.)
    #[tokio::test]
    async fn a_receive_and_an_upload_of_one_lsn_exclude_each_other() {
        let (_dir, snapshots, _events) = store();
        let (from, lsn, epoch) = (NodeId(1), Lsn(40), Epoch(2));

        // An upload holds lsn 40: the receive is refused, and takes nothing.
        let guard = UploadGuard::claim(&snapshots, lsn).unwrap();
        let refused = receive_writer(&snapshots, from, lsn, epoch, 10)
            .await
            .unwrap_err();
        assert!(refused.contains("uploading"), "{refused}");
        assert_eq!(lock(&snapshots.state).receiving, None);
        // A receive of another LSN is not in its way.
        let other = receive_writer(&snapshots, from, Lsn(41), epoch, 10)
            .await
            .unwrap();
        drop(other);
        lock(&snapshots.state).receiving = None;

        // The upload stores its snapshot: listed at once, so the receive is still refused.
        let mut writer = SnapshotWriter::create(snapshots.dir(), lsn, epoch).unwrap();
        writer.write(b"state at 40").unwrap();
        let info = writer.finish().unwrap();
        guard.stored(info.clone()).await;
        assert_eq!(lock(&snapshots.state).installed, vec![info.clone()]);
        let refused = receive_writer(&snapshots, from, lsn, epoch, 10)
            .await
            .unwrap_err();
        assert!(refused.contains("through lsn 40"), "{refused}");
        assert!(
            info.path.exists(),
            "a refused receive touched the stored snapshot"
        );

        // The other way: a receive holds lsn 50, and an upload of it is not claimed.
        let receiving = receive_writer(&snapshots, from, Lsn(50), epoch, 10)
            .await
            .unwrap();
        let refused = UploadGuard::claim(&snapshots, Lsn(50)).err().unwrap();
        assert!(refused.contains("being received"), "{refused}");
        drop(receiving);
    }

    /// A receive the disk has no room for is refused before it writes anything, and a
    /// partial receive is kept to resume from, not dropped.
    #[tokio::test]
    async fn a_receive_without_room_on_the_disk_is_refused_before_it_writes() {
        let (_dir, snapshots, _events) = store();
        let (from, lsn, epoch) = (NodeId(1), Lsn(40), Epoch(2));
        let huge = u64::MAX / 2;
        let refused = receive_writer(&snapshots, from, lsn, epoch, huge)
            .await
            .unwrap_err();
        assert!(refused.contains("not enough free space"), "{refused}");
        assert_eq!(lock(&snapshots.state).receiving, None);
        let files = std::fs::read_dir(snapshots.dir()).unwrap().count();
        assert_eq!(files, 0, "a refused receive created a file");

        // A partial receive of a snapshot that has room left is resumed...
        let mut writer = receive_writer(&snapshots, from, lsn, epoch, 100)
            .await
            .unwrap();
        writer.write(b"0123456789").unwrap();
        let offset = writer.body_len();
        {
            let mut state = lock(&snapshots.state);
            state.receiving = None;
            state.partial = Some(Partial {
                from,
                lsn,
                epoch,
                body_len: huge,
                writer,
            });
        }
        // ...but one whose rest has no room is refused, and kept to resume from.
        let refused = receive_writer(&snapshots, from, lsn, epoch, huge)
            .await
            .unwrap_err();
        assert!(refused.contains("not enough free space"), "{refused}");
        let state = lock(&snapshots.state);
        assert_eq!(state.receiving, None);
        let kept = state.partial.as_ref().expect("the partial receive is kept");
        assert_eq!((kept.lsn, kept.writer.body_len()), (lsn, offset));
    }

    /// An upload that ends after a newer snapshot from the primary was put in use (the log
    /// now starts after that one) is not listed but removed: kept, it would be what the
    /// node falls back to, with no log continuing it.
    #[tokio::test]
    async fn an_upload_overtaken_by_a_snapshot_from_the_primary_is_removed() {
        let (_dir, snapshots, _events) = store();
        let guard = UploadGuard::claim(&snapshots, Lsn(40)).unwrap();
        // Meanwhile the primary's snapshot through 50 is installed (`snapshot_install`).
        let mut newer = SnapshotWriter::create(snapshots.dir(), Lsn(50), Epoch(2)).unwrap();
        newer.write(b"state at 50").unwrap();
        let newer = newer.finish().unwrap();
        lock(&snapshots.state).installed = vec![newer.clone()];

        let mut writer = SnapshotWriter::create(snapshots.dir(), Lsn(40), Epoch(2)).unwrap();
        writer.write(b"state at 40").unwrap();
        let info = writer.finish().unwrap();
        guard.stored(info.clone()).await;
        assert_eq!(lock(&snapshots.state).installed, vec![newer.clone()]);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while info.path.exists() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!info.path.exists(), "the overtaken snapshot is still there");
        assert!(newer.path.exists());
        // The request is free again.
        assert!(UploadGuard::claim(&snapshots, Lsn(60)).is_ok());
    }
}
