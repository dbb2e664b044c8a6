//! Repair of damaged records from a peer (DESIGN, "A corrupt record").
//!
//! A committed record of the local log whose checksum fails where no crash explains it (a
//! latent sector error, a flipped bit in a sealed segment) is found by the scrub, which
//! verifies the committed part of the log every `--scrub-interval`, or by the core loop when
//! it cannot read a record it must ship. Then, in order:
//!
//! 1. The core is told (`Input::LogDamaged`): a primary steps down, and the node stands for
//!    nothing and takes no hand-over until the repair is done, since it could not ship the
//!    record. Its log's LSNs and epochs are intact, so it still votes (for a candidate at
//!    least as up to date, which then holds the record) and acknowledges. The damaged record
//!    is never served, shipped or applied (the reader verifies every record it hands out).
//! 2. The record is asked of each peer in turn on a connection of its own
//!    (`proto::peer`, "Repair"). A copy is used only if its CRC and LSN verify and its epoch is
//!    the epoch this node's own log gives that LSN: the same LSN and epoch is the same record,
//!    byte for byte (invariant 3).
//! 3. The copy is written over the damaged bytes in place and fsynced
//!    (`wal::repair::rewrite`), then read back and verified.
//! 4. Once the committed log verifies again, the core is told (`Input::LogRepaired`) and the
//!    node may stand again. If no peer holds the record intact, it says so in one line and
//!    keeps asking; it does not stand meanwhile.
//!
//! Only committed records are repaired: an uncommitted suffix may yet be cut by the primary,
//! and the in-place rewrite must never write where a truncation may have moved the end of a
//! segment. What this module does not do: damage found when the node starts (the data dir
//! module cuts the log there and the node starts as a learner, which catches up from the
//! primary), or damage of a snapshot (`snapshot`).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use wal::format::VerifiedRecords;
use wal::reader::Reader;

use super::metrics::Metrics;
use super::peer::{dial_handshake, PeerConfig};
use crate::proto::peer::{encode_head, Frame, PeerCodec};
use crate::{Lsn, NodeId};

/// Bytes of records one `RepairRecords` answer carries, at most.
const ANSWER_BYTES_MAX: usize = 4 << 20;
/// Connecting and answering each take at most this long.
const PEER_TIMEOUT: Duration = Duration::from_secs(3);
/// After a round in which no peer held a damaged record, ask again this much later.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Damaged LSNs reported by the core loop, queued at most.
pub const FOUND_QUEUE_MAX: usize = 64;

/// Why one request to one peer failed. Logged; the next peer is asked.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("connect: {0}")]
    Connect(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("bad frame: {0}")]
    Frame(String),
    #[error("its copy fails verification: {0}")]
    Verify(String),
}

/// The holder's side: answers one `RepairRequest` with the intact records it holds from
/// `first_lsn` on (at most through `last_lsn` and [`ANSWER_BYTES_MAX`]), then closes.
pub(super) async fn serve<W: AsyncWrite + Unpin>(
    reader: &Reader,
    first_lsn: Lsn,
    last_lsn: Lsn,
    mut out: BufWriter<W>,
) -> std::io::Result<()> {
    let records = serve_read(reader, first_lsn, last_lsn);
    let mut head = BytesMut::with_capacity(16);
    let tail = encode_head(&Frame::RepairRecords { records }, &mut head);
    out.write_all(&head).await?;
    out.write_all(&tail).await?;
    out.flush().await
}

/// The intact records `first..=last` this log holds, back to back; stops at the first one it
/// does not hold or that fails verification.
fn serve_read(reader: &Reader, first: Lsn, last: Lsn) -> Bytes {
    let Ok(mut records) = reader.iter_from(first) else {
        return Bytes::new();
    };
    let mut pieces = Vec::new();
    let mut len = 0;
    while records.next_lsn() <= last && len < ANSWER_BYTES_MAX {
        match records.next_batch(ANSWER_BYTES_MAX - len, last) {
            Ok(Some(batch)) => {
                len += batch.bytes.len();
                pieces.push(batch.bytes);
            }
            Ok(None) | Err(_) => break,
        }
    }
    match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.pop().unwrap_or_default(),
        _ => {
            let mut joined = BytesMut::with_capacity(len);
            for piece in pieces {
                joined.extend_from_slice(&piece);
            }
            joined.freeze()
        }
    }
}

/// The requester's side: asks `peer` for records `first..=last`. `Ok(None)` when it does not
/// hold `first` intact.
pub(super) async fn fetch(
    config: &PeerConfig,
    peer: NodeId,
    first: Lsn,
    last: Lsn,
) -> Result<Option<VerifiedRecords>, RepairError> {
    let Some(addr) = config.addr_of(peer) else {
        return Err(RepairError::Connect(format!("node {peer} has no address")));
    };
    let connect = async {
        let (stream, _) = crate::node::peer::connect(&addr).await?;
        dial_handshake(config, peer, stream)
            .await
            .map_err(|e| RepairError::Connect(e.to_string()))
    };
    let stream = tokio::time::timeout(PEER_TIMEOUT, connect)
        .await
        .map_err(|_| RepairError::Timeout(PEER_TIMEOUT))??;
    let (read, write) = tokio::io::split(stream.into_inner());
    let mut frames = FramedRead::new(read, PeerCodec::default());
    let mut out = BufWriter::new(write);
    let mut head = BytesMut::with_capacity(32);
    let tail = encode_head(
        &Frame::RepairRequest {
            first_lsn: first,
            last_lsn: last,
        },
        &mut head,
    );
    out.write_all(&head).await?;
    out.write_all(&tail).await?;
    out.flush().await?;
    let frame = tokio::time::timeout(PEER_TIMEOUT, frames.next())
        .await
        .map_err(|_| RepairError::Timeout(PEER_TIMEOUT))?;
    let records = match frame {
        Some(Ok(Frame::RepairRecords { records })) => records,
        Some(Ok(other)) => {
            return Err(RepairError::Frame(format!(
                "expected RepairRecords, got {other:?}"
            )))
        }
        Some(Err(e)) => return Err(RepairError::Frame(e.to_string())),
        None => return Err(RepairError::Frame("connection closed".into())),
    };
    if records.is_empty() {
        return Ok(None);
    }
    // Invariant 5: every record verified (CRC, LSN in sequence from `first`) before use.
    wal::format::verify_records(records, first)
        .map(Some)
        .map_err(|reason| RepairError::Verify(reason.to_string()))
}

/// What the repair task tells the core loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// A damaged committed record (`Input::LogDamaged`).
    Found(Lsn),
    /// The committed log verifies again (`Input::LogRepaired`).
    Repaired,
}

/// What the repair task needs.
pub(super) struct Repairer {
    pub peer_config: Arc<PeerConfig>,
    pub reader: Reader,
    pub commit: watch::Receiver<Lsn>,
    /// Tells the core loop.
    pub damaged: mpsc::Sender<Damage>,
    pub metrics: Arc<Metrics>,
    pub scrub_interval: Duration,
}

/// Scrubs the committed log every `scrub_interval` and repairs what it or the core loop
/// (`found`) finds damaged, until `shutdown`.
pub(super) async fn run(
    repairer: Repairer,
    mut found: mpsc::Receiver<Lsn>,
    shutdown: CancellationToken,
) {
    let mut scrub = tokio::time::interval(repairer.scrub_interval);
    scrub.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hint = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = scrub.tick() => None,
            lsn = found.recv() => match lsn {
                Some(lsn) => Some(lsn),
                None => return,
            },
        };
        // Repair everything damaged, from the first damaged record on, until the committed
        // log verifies or a record cannot be had from any peer.
        let mut from = hint.unwrap_or_else(|| repairer.reader.first_lsn());
        let mut repaired_any = false;
        loop {
            let through = *repairer.commit.borrow();
            let Some(lsn) = run_scrub(&repairer.reader, from, through).await else {
                if repaired_any {
                    let _ = repairer.damaged.send(Damage::Repaired).await;
                }
                break;
            };
            if !run_repair(&repairer, lsn, &shutdown).await {
                break;
            }
            repaired_any = true;
            // Scan the whole committed log again: `first_damaged` may find damage below
            // where it was asked to start.
            from = repairer.reader.first_lsn();
        }
    }
}

/// The first damaged committed record at or after `from`, if any.
async fn run_scrub(reader: &Reader, from: Lsn, through: Lsn) -> Option<Lsn> {
    let from = from.max(reader.first_lsn());
    if from > through {
        return None;
    }
    let reader = reader.clone();
    let scrubbed = tokio::task::spawn_blocking(move || reader.first_damaged(from, through)).await;
    match scrubbed {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => {
            warn!(error = %e, "scrub of the log failed");
            None
        }
        Err(e) => {
            warn!(error = %e, "scrub of the log did not finish");
            None
        }
    }
}

/// Repairs the damaged record `lsn` from the first peer that holds it intact. Returns
/// whether it was repaired.
async fn run_repair(repairer: &Repairer, lsn: Lsn, shutdown: &CancellationToken) -> bool {
    Metrics::add(&repairer.metrics.records_damaged, 1);
    let _ = repairer.damaged.send(Damage::Found(lsn)).await;
    let Some(epoch) = repairer.reader.epoch_at(lsn) else {
        warn!(lsn = %lsn, "a damaged record's epoch is unknown to the log index; cannot check a peer's copy");
        return false;
    };
    warn!(lsn = %lsn, epoch = %epoch, "damaged record in the log: fetching it from a peer");
    let own = repairer.peer_config.node_id;
    loop {
        let peers: Vec<NodeId> = repairer
            .peer_config
            .membership()
            .addrs
            .into_keys()
            .collect();
        for &peer in peers.iter().filter(|&&id| id != own) {
            let records = match fetch(&repairer.peer_config, peer, lsn, lsn).await {
                Ok(Some(records)) => records,
                Ok(None) => {
                    debug!(lsn = %lsn, peer = %peer, "peer does not hold the record intact");
                    continue;
                }
                Err(e) => {
                    debug!(lsn = %lsn, peer = %peer, error = %e, "cannot fetch the record from this peer");
                    continue;
                }
            };
            if records.first_lsn() != lsn || records.first_epoch() != epoch {
                debug!(lsn = %lsn, peer = %peer, their_epoch = %records.first_epoch(), "peer holds another record at this lsn");
                continue;
            }
            let reader = repairer.reader.clone();
            let rewritten =
                tokio::task::spawn_blocking(move || wal::repair::rewrite(&reader, &records)).await;
            match rewritten {
                Ok(Ok(_)) => {
                    Metrics::add(&repairer.metrics.records_repaired, 1);
                    info!(lsn = %lsn, epoch = %epoch, from_node = %peer, "repaired a damaged record from a peer's copy");
                    return true;
                }
                Ok(Err(e)) => {
                    warn!(lsn = %lsn, error = %e, "cannot rewrite the damaged record");
                    return false;
                }
                Err(e) => {
                    warn!(lsn = %lsn, error = %e, "rewrite of the damaged record did not finish");
                    return false;
                }
            }
        }
        warn!(lsn = %lsn, epoch = %epoch, "no peer holds the damaged record intact; this node does not stand for election, and asks again");
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(RETRY_AFTER) => {}
        }
    }
}
