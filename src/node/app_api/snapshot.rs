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
use crate::node::snapshot::store::{is_damage, read_chunks, READ_AHEAD_CHUNKS};
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
    let result = upload_body(
        snapshots,
        &mut writer,
        frames,
        snapshots.config().answer_timeout(),
    )
    .await;
    let Some(guard) = guard else {
        // Not stored: only whether the application kept to the protocol matters.
        return result.map(|_| ()).map_err(|e| e.to_string());
    };
    match result {
        Err(e) => {
            guard.abandon(&e.to_string());
            Err(e.to_string())
        }
        Ok(Body::Cut) => {
            guard.abandon("the application ended the upload before SnapshotDone");
            Ok(())
        }
        // The node's fault, not the application's: its connection stays.
        Ok(Body::NotStored(reason)) => {
            guard.abandon(&reason);
            Ok(())
        }
        Ok(Body::Done) => {
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

/// How an upload's frames ended.
#[derive(Debug)]
enum Body {
    /// `SnapshotDone`, every chunk written.
    Done,
    /// The connection ended before `SnapshotDone`.
    Cut,
    /// The node could not store it: a write failed, or the disk had no room for the next
    /// chunk and a log segment ([`Snapshots::room_for`]). The file is gone; the rest of the
    /// application's frames were read and dropped.
    NotStored(String),
}

/// Reads chunks until `SnapshotDone` or the end of the connection; gives up when no frame
/// comes for `stall`. With no writer (an offer not wanted), the chunks are read and dropped.
async fn upload_body<R: AsyncRead + Unpin>(
    snapshots: &Arc<Snapshots>,
    writer: &mut Option<SnapshotWriter>,
    frames: &mut FrameReader<R>,
    stall: Duration,
) -> Result<Body, UploadError> {
    let mut failed = None;
    loop {
        let frame = tokio::time::timeout(stall, frames.read_frame())
            .await
            .map_err(|_| UploadError::Stalled(stall))?
            .map_err(|e| UploadError::Protocol(format!("reading the snapshot: {e}")))?;
        match frame {
            None => return Ok(failed.map_or(Body::Cut, Body::NotStored)),
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
                let store = Arc::clone(snapshots);
                let (w, result) = on_blocking_thread(move || {
                    let result = store.room_for(data.len() as u64).and_then(|()| {
                        w.write(&data)
                            .map_err(|e| format!("cannot write the snapshot: {e}"))
                    });
                    (w, result)
                })
                .await;
                match result {
                    Ok(()) => *writer = Some(w),
                    Err(reason) => {
                        // Dropping the writer removes its file, and gives the room back
                        // before anything else of the node's needs it.
                        on_blocking_thread(move || drop(w)).await;
                        failed = Some(reason);
                    }
                }
            }
            Some(app::Frame::SnapshotDone) => return Ok(failed.map_or(Body::Done, Body::NotStored)),
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

/// Streams the newest snapshot to the application as `RestoreBegin`, `RestoreChunk`s and
/// `RestoreEnd`. Returns the LSN it covers (the log continues after it), `None` if there is
/// none, or the message of an `Error` frame. `Ok(None)` is also returned when the
/// connection is gone.
///
/// The snapshot is read through and verified before `RestoreBegin` (a restore is rare, and
/// the second read comes from the page cache): one found damaged is put aside
/// ([`Snapshots::quarantine`], which also asks the application for a new one) and the one
/// before it is streamed instead, if `log` still continues it. Damage that appears between
/// the check and the read (it is read again chunk by chunk, each verified) also puts it
/// aside, and ends the restore with an `Error` frame: the application, which applies a
/// restore only at `RestoreEnd`, connects again and is restored from the one before it.
pub async fn restore_to_app(
    snapshots: &Snapshots,
    log: &wal::reader::Reader,
    outbox: &mpsc::Sender<app::Frame>,
) -> Result<Option<Lsn>, String> {
    let info = loop {
        let Some(info) = snapshots.newest() else {
            return Ok(None);
        };
        // As `transfer::send` checks: one before a damaged newest may end before the log
        // starts (the newest never does).
        if info.lsn.next() < log.first_lsn() {
            return Err(format!(
                "the newest usable snapshot (lsn {}) ends before the log starts (lsn {}); waiting for a new snapshot",
                info.lsn,
                log.first_lsn()
            ));
        }
        let path = info.path.clone();
        match tokio::task::spawn_blocking(move || wal::snapshot::verify(&path)).await {
            Ok(Ok(_)) => break info,
            Ok(Err(e)) if is_damage(&e) => snapshots.quarantine(&info, &e).await,
            Ok(Err(e)) => {
                error!(path = %info.path.display(), error = %e, "cannot read the snapshot to restore the application from");
                return Err(format!("snapshot at lsn {} failed to read: {e}", info.lsn));
            }
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
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
            if is_damage(&e) {
                snapshots.quarantine(&info, &e).await;
            }
            return Err(format!("snapshot at lsn {} failed to read: {e}", info.lsn));
        }
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
    if outbox.send(app::Frame::RestoreEnd).await.is_err() {
        return Ok(None);
    }
    Ok(Some(info.lsn))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::snapshot::store::{Recovered, SNAPSHOTS_DIR};
    use crate::node::snapshot::SnapshotConfig;
    use tokio_util::sync::CancellationToken;
    use wal::snapshot::SnapshotInfo;

    fn write_snapshot(dir: &std::path::Path, lsn: u64, body: &[u8]) -> SnapshotInfo {
        let mut writer = SnapshotWriter::create(dir, Lsn(lsn), Epoch(1)).unwrap();
        writer.write(body).unwrap();
        writer.finish().unwrap()
    }

    /// An upload the disk has no room for (with a log segment left) stops writing at the
    /// chunk that would not fit, removes its file, reads the application's frames to their
    /// end and says why; one with room is written whole.
    #[tokio::test]
    async fn an_upload_without_room_for_the_log_after_it_is_not_stored() {
        let frames_of = |chunks: &[&[u8]]| {
            let mut bytes = bytes::BytesMut::new();
            let mut offset = 0;
            for data in chunks {
                app::Frame::SnapshotChunk {
                    offset,
                    data: bytes::Bytes::copy_from_slice(data),
                }
                .encode(&mut bytes);
                offset += data.len() as u64;
            }
            app::Frame::SnapshotDone.encode(&mut bytes);
            bytes.freeze()
        };
        let chunks: [&[u8]; 2] = [b"first", b"second"];
        for (segment, room) in [(u64::MAX / 4, false), (4096, true)] {
            let data = tempfile::tempdir().unwrap();
            let dir = data.path().join(SNAPSHOTS_DIR);
            std::fs::create_dir_all(&dir).unwrap();
            let (events, _events_rx) = mpsc::channel(8);
            let snapshots = Arc::new(Snapshots::new(
                data.path(),
                SnapshotConfig {
                    wal_segment_bytes: segment,
                    ..SnapshotConfig::default()
                },
                Recovered {
                    installed: Vec::new(),
                    corrupt: 0,
                },
                events,
                CancellationToken::new(),
            ));
            let mut writer = Some(SnapshotWriter::create(&dir, Lsn(30), Epoch(1)).unwrap());
            let stream = frames_of(&chunks);
            let mut frames = FrameReader::new(&stream[..]);
            let body = upload_body(&snapshots, &mut writer, &mut frames, Duration::from_secs(5))
                .await
                .unwrap();
            assert!(
                frames.read_frame().await.unwrap().is_none(),
                "frames left unread"
            );
            let files = std::fs::read_dir(&dir).unwrap().count();
            if room {
                assert!(matches!(body, Body::Done), "{body:?}");
                assert_eq!(writer.map(|w| w.body_len()), Some(11));
                assert_eq!(files, 1);
            } else {
                let Body::NotStored(reason) = body else {
                    panic!("stored without room: {body:?}");
                };
                assert!(reason.contains("not enough free space"), "{reason}");
                assert!(writer.is_none());
                assert_eq!(files, 0, "the snapshot's file is left behind");
            }
        }
    }

    /// A newest snapshot damaged after start-up is put aside at the first restore, and the
    /// application is restored from the one before it, now and at every later restore (it
    /// was restored from nothing, with `RestoreBegin` and no `RestoreEnd`, every time).
    #[tokio::test]
    async fn a_restore_falls_back_to_the_snapshot_before_a_damaged_newest() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join(SNAPSHOTS_DIR);
        std::fs::create_dir_all(&dir).unwrap();
        let old = write_snapshot(&dir, 10, b"state at 10");
        let new = write_snapshot(&dir, 20, b"state at 20, a longer body");
        // One body byte flipped (header 48 bytes, chunk header 8).
        let mut bytes = std::fs::read(&new.path).unwrap();
        bytes[48 + 8 + 3] ^= 0xff;
        std::fs::write(&new.path, bytes).unwrap();
        let (events, _events_rx) = mpsc::channel(8);
        let snapshots = Snapshots::new(
            data.path(),
            SnapshotConfig::default(),
            Recovered {
                installed: vec![old.clone(), new.clone()],
                corrupt: 0,
            },
            events,
            CancellationToken::new(),
        );
        let (wal, _) = wal::Wal::open(data.path().join("wal"), wal::Options::default()).unwrap();
        let log = wal.reader();
        for attempt in 0..2 {
            let (outbox, mut frames) = mpsc::channel(64);
            let restored = restore_to_app(&snapshots, &log, &outbox).await;
            drop(outbox);
            let mut names = Vec::new();
            while let Some(frame) = frames.recv().await {
                names.push(frame.name());
            }
            assert_eq!(
                restored,
                Ok(Some(old.lsn)),
                "attempt {attempt}: frames sent {names:?}"
            );
            assert_eq!(names.first(), Some(&"RestoreBegin"));
            assert_eq!(names.last(), Some(&"RestoreEnd"));
        }
        assert_eq!(snapshots.newest().map(|info| info.lsn), Some(old.lsn));
        assert!(
            !new.path.exists(),
            "the damaged snapshot was not moved aside"
        );
    }
}
