//! The app API's snapshot frames, the sidecar's side (the protocol is
//! [`crate::proto::app`]'s: "Snapshots, asked for" and "Restore"):
//! - [`upload`]: the application's snapshot (`SnapshotOffer`, `SnapshotChunk`s,
//!   `SnapshotDone`), streamed into a snapshot file. One at a time; it holds the
//!   scheduler's request until it ends, however it ends (stored, refused, stalled for
//!   [`SnapshotConfig::answer_timeout`], or dropped with its connection), and then the
//!   scheduler asks again.
//! - [`declined`]: `SnapshotDecline`, the application's "not now".
//! - [`restore_to_app`]: the newest snapshot as `RestoreBegin`, `RestoreChunk`s and
//!   `RestoreEnd`: at the start of a subscription when [`restore_wanted`] says so, when the
//!   node replaced its log by a snapshot from the primary, and on `SnapshotFetch`.
//!
//! It keeps no state of its own: the snapshots, the request to the application and the
//! files are [`crate::node::snapshot`]'s.
//!
//! [`SnapshotConfig::answer_timeout`]: crate::node::snapshot::SnapshotConfig::answer_timeout

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};
use wal::snapshot::SnapshotWriter;
use wal::{Epoch, Lsn};

use crate::node::handle::NodeHandle;
use crate::node::snapshot::schedule::UploadGuard;
use crate::node::snapshot::store::{read_chunks, READ_AHEAD_CHUNKS};
use crate::node::snapshot::{on_blocking_thread, Committed, SnapshotMetrics, Snapshots};
use crate::proto::app::{self, FrameReader};

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
///
/// [`SnapshotConfig::answer_timeout`]: crate::node::snapshot::SnapshotConfig::answer_timeout
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
    let result = upload_body(&mut writer, frames, snapshots.config().answer_timeout()).await;
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
                    guard.stored(info).await;
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
    let guard = UploadGuard::claim(snapshots, lsn)?;
    let result = match snapshots.committed_at(lsn).await {
        None => Err(format!(
            "lsn {lsn} is not committed or no longer in the log"
        )),
        Some(Committed { epoch, .. }) if app_epoch != Epoch::ZERO && app_epoch != epoch => Err(
            format!("the application says lsn {lsn} has epoch {app_epoch}, the log says {epoch}"),
        ),
        Some(committed) => {
            let snapshots = Arc::clone(snapshots);
            on_blocking_thread(move || {
                snapshots.store_members_at(lsn, &committed)?;
                SnapshotWriter::create(snapshots.dir(), lsn, committed.epoch)
                    .map_err(|e| format!("cannot create the snapshot file: {e}"))
            })
            .await
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
    snapshots.request_declined();
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
