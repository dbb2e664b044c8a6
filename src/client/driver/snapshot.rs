//! The driver's part of snapshots (the protocol is in [`crate::proto::app`]):
//!
//! - `SnapshotRequest` from the sidecar: the reader task takes `capture()` of the state
//!   between two applies, so it covers exactly the applied LSN; a task runs the capture's
//!   job on a blocking thread and uploads its bytes on a connection of its own
//!   (`SnapshotOffer`, `SnapshotChunk`s, `SnapshotDone`), so that the log keeps being
//!   applied meanwhile. With nothing applied yet it answers `SnapshotDecline`, and so it
//!   does if the job panics (the sidecar then asks again at its next turn).
//! - `RestoreBegin`, `RestoreChunk`s, `RestoreEnd`: the body is gathered and handed to
//!   `restore` before any record after the snapshot's LSN is applied (the sidecar sends
//!   those only after `RestoreEnd`, on the same connection, in order).
//!
//! `StateMachine::snapshot` and `restore` work on whole byte slices, so the application's
//! side holds one snapshot in memory; the sidecar never does.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::{lock, Shared};
use crate::client::{ClientError, ProposeError, StateMachine};
use crate::proto::app::{Frame, APP_CHUNK_LEN, PROTOCOL_VERSION};
use crate::{Epoch, Lsn};

/// How long an upload waits for the sidecar to take the snapshot in.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// A restore being received.
pub(super) struct Restoring {
    lsn: Lsn,
    epoch: Epoch,
    body_len: u64,
    body: Vec<u8>,
}

impl<S: StateMachine> Shared<S> {
    /// Captures the state at the applied LSN, and uploads the capture's bytes (or declines)
    /// on a new connection once its job has run on a blocking thread.
    pub(super) fn on_snapshot_request(&self) {
        let started = Instant::now();
        let captured = {
            let state = lock(&self.state);
            let restoring = lock(&self.restoring).is_some();
            (state.applied_lsn > Lsn::ZERO && !restoring).then(|| {
                (
                    state.applied_lsn,
                    state.last_epoch,
                    state.state_machine.capture(),
                )
            })
        };
        let capture_took = started.elapsed();
        let path = self.socket_path.clone();
        tokio::spawn(async move {
            let lsn = captured.as_ref().map(|(lsn, _, _)| *lsn);
            let offer = match captured {
                None => None,
                Some((lsn, epoch, job)) => match tokio::task::spawn_blocking(job).await {
                    Ok(body) => {
                        debug!(
                            %lsn,
                            capture_ms = capture_took.as_secs_f64() * 1e3,
                            encode_ms = (started.elapsed() - capture_took).as_secs_f64() * 1e3,
                            body_len = body.len(),
                            "snapshot captured and encoded"
                        );
                        Some((lsn, epoch, body))
                    }
                    Err(error) => {
                        warn!(%lsn, %error, "the snapshot's encoding failed; declining it");
                        None
                    }
                },
            };
            match tokio::time::timeout(UPLOAD_TIMEOUT, upload(path, offer)).await {
                Ok(Ok(())) => debug!(?lsn, "snapshot uploaded"),
                Ok(Err(error)) => warn!(%error, "snapshot upload failed"),
                Err(_) => warn!("snapshot upload timed out"),
            }
        });
    }

    pub(super) fn on_restore_begin(
        &self,
        lsn: Lsn,
        epoch: Epoch,
        body_len: u64,
    ) -> Result<(), ClientError> {
        let applied_lsn = lock(&self.state).applied_lsn;
        if lsn < applied_lsn {
            return Err(ClientError::RestoreBehind { lsn, applied_lsn });
        }
        // The body is gathered whole for `restore`; reserve modestly, it grows as it comes.
        let reserve = body_len.min(64 << 20) as usize;
        *lock(&self.restoring) = Some(Restoring {
            lsn,
            epoch,
            body_len,
            body: Vec::with_capacity(reserve),
        });
        Ok(())
    }

    pub(super) fn on_restore_chunk(&self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        let mut restoring = lock(&self.restoring);
        let Some(restoring) = restoring.as_mut() else {
            return Err(ClientError::Unexpected {
                frame: "RestoreChunk",
                during: "without a RestoreBegin",
            });
        };
        let at = restoring.body.len() as u64;
        if offset != at || at + data.len() as u64 > restoring.body_len {
            return Err(ClientError::RestoreOffset {
                expected: at,
                found: offset,
                len: data.len() as u64,
                body_len: restoring.body_len,
            });
        }
        restoring.body.extend_from_slice(data);
        Ok(())
    }

    /// Restores the state machine; the log continues after the snapshot's LSN.
    pub(super) fn on_restore_end(&self) -> Result<(), ClientError> {
        let Some(restoring) = lock(&self.restoring).take() else {
            return Err(ClientError::Unexpected {
                frame: "RestoreEnd",
                during: "without a RestoreBegin",
            });
        };
        let got = restoring.body.len() as u64;
        if got != restoring.body_len {
            return Err(ClientError::RestoreOffset {
                expected: restoring.body_len,
                found: got,
                len: 0,
                body_len: restoring.body_len,
            });
        }
        let lsn = restoring.lsn;
        {
            let mut state = lock(&self.state);
            state
                .state_machine
                .restore(lsn, &restoring.body)
                .map_err(|source| ClientError::Restore { lsn, source })?;
            state.applied_lsn = lsn;
            state.last_epoch = restoring.epoch;
            self.applied.send_replace(lsn);
        }
        info!(%lsn, body_len = got, "state restored from a snapshot");
        // Outputs of records the snapshot covers will not be computed here.
        let mut pending = lock(&self.pending);
        let covered: Vec<Lsn> = pending.waiting.range(..=lsn).map(|(l, _)| *l).collect();
        for lsn in covered {
            if let Some(reply) = pending.waiting.remove(&lsn) {
                let _ = reply.send(Err(ProposeError::Unknown));
            }
        }
        pending.prune();
        Ok(())
    }
}

/// Opens a connection and sends the snapshot (or a decline), then waits for the sidecar to
/// close it: it does once the snapshot is stored, or with an `Error` frame.
async fn upload(path: PathBuf, offer: Option<(Lsn, Epoch, Vec<u8>)>) -> Result<(), ClientError> {
    let (mut frames, mut sink) = super::open(&path).await?;
    sink.write_frame(&Frame::Hello {
        version: PROTOCOL_VERSION,
    })
    .await
    .map_err(ClientError::Io)?;
    sink.flush().await.map_err(ClientError::Io)?;
    match frames.read_frame().await? {
        Some(Frame::Welcome { .. }) => {}
        Some(Frame::Error { message }) => return Err(ClientError::Refused { message }),
        Some(frame) => {
            return Err(ClientError::Unexpected {
                frame: frame.name(),
                during: "instead of Welcome",
            })
        }
        None => return Err(ClientError::Closed),
    }
    match offer {
        None => {
            sink.write_frame(&Frame::SnapshotDecline)
                .await
                .map_err(ClientError::Io)?;
        }
        Some((lsn, epoch, body)) => {
            sink.write_frame(&Frame::SnapshotOffer { lsn, epoch })
                .await
                .map_err(ClientError::Io)?;
            let body = Bytes::from(body);
            let mut offset = 0;
            while offset < body.len() {
                let end = (offset + APP_CHUNK_LEN).min(body.len());
                let chunk = Frame::SnapshotChunk {
                    offset: offset as u64,
                    data: body.slice(offset..end),
                };
                sink.write_frame(&chunk).await.map_err(ClientError::Io)?;
                offset = end;
            }
            sink.write_frame(&Frame::SnapshotDone)
                .await
                .map_err(ClientError::Io)?;
        }
    }
    sink.shutdown().await.map_err(ClientError::Io)?;
    loop {
        match frames.read_frame().await? {
            None => return Ok(()),
            Some(Frame::Error { message }) => return Err(ClientError::Refused { message }),
            Some(_) => {}
        }
    }
}
