//! The request to the application for a snapshot. [`schedule`], a task, asks when one is
//! due (every `--snapshot-interval`, or after `--snapshot-after-bytes` of log) and says so
//! when the application does not answer (log and metric; the log is not truncated
//! meanwhile). The request ends with a snapshot stored, a decline, or no answer in time; an
//! upload of the application's snapshot holds it until the upload ends (`UploadGuard`).
//!
//! This file keeps the request's state only: reading the application's frames and writing
//! its snapshot file are the app API's (`app_api::snapshot`), and putting a stored snapshot
//! in use is the core loop's ([`core_loop`](super::core_loop)).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};
use wal::snapshot::SnapshotInfo;
use wal::Lsn;

use super::{lock, Event, Request, SnapshotMetrics, Snapshots, State};

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
                let since = now.duration_since(state.last_taken);
                let due = since >= config.interval
                    || snapshots.log_bytes.load(Ordering::Relaxed) >= config.after_bytes
                    || state.wanted_soon;
                if due && commit_lsn <= newest {
                    // Nothing to snapshot (nothing committed since the newest one): skip the
                    // cycles gone by, keeping the node's place in the cycle (`stagger_phase`).
                    // Asking at the first commit instead would line up every node that
                    // waited, as a whole cluster started together does.
                    let cycles = since.as_nanos() / config.interval.as_nanos().max(1);
                    let skipped = u32::try_from(cycles).unwrap_or(u32::MAX);
                    state.last_taken = state
                        .last_taken
                        .checked_add(config.interval.saturating_mul(skipped))
                        .map_or(now, |t| t.min(now));
                } else if now >= not_before && due {
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

impl Snapshots {
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

    /// The application declined the request: it ends without a snapshot (asked again
    /// later), unless an upload holds it (another subscriber answered).
    pub(crate) fn request_declined(&self) {
        let mut state = lock(&self.state);
        state.warning = Some("the application declined the last snapshot request".into());
        // An upload in progress (another subscriber answered) keeps the request.
        let asked = matches!(state.request, Request::Asked { .. });
        drop(state);
        if asked {
            self.request_done(false);
        }
    }
}

// The hold of an upload of the application's snapshot (`app_api::snapshot::upload`).

/// The upload in progress: it owns `Request::Uploading { id }` from the moment the offer
/// is accepted until the upload ends, and gives the request back however that happens. An
/// upload's future is dropped, not finished, when its connection goes (the application
/// crashed, or a write to it failed: the app API's reader stops on `closing`); the drop
/// gives the request back too. Without that the scheduler would skip the request forever,
/// no snapshot would be asked for again, and the log would grow until the disk is full.
pub(crate) struct UploadGuard {
    snapshots: Arc<Snapshots>,
    id: u64,
    ended: bool,
}

impl UploadGuard {
    /// Takes the request for an upload of a snapshot through `lsn`, if that snapshot is
    /// wanted; `Err` (a reason for the log) when it is not.
    pub(crate) fn claim(snapshots: &Arc<Snapshots>, lsn: Lsn) -> Result<UploadGuard, String> {
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
        Ok(UploadGuard::start(snapshots, &mut state, lsn))
    }

    /// Takes the request for a new upload (`state` is locked by the caller).
    fn start(snapshots: &Arc<Snapshots>, state: &mut State, lsn: Lsn) -> UploadGuard {
        assert!(
            !matches!(state.request, Request::Uploading { .. }),
            "an upload started while another holds the request"
        );
        state.uploads_started += 1;
        let id = state.uploads_started;
        state.request = Request::Uploading { id, lsn };
        UploadGuard {
            snapshots: Arc::clone(snapshots),
            id,
            ended: false,
        }
    }

    /// The upload stored its snapshot (`info`): count it, list it among the installed ones,
    /// give the request back, and tell the core loop (which applies the retention).
    ///
    /// Listed before the request is given back, under the same lock as the checks of
    /// [`UploadGuard::claim`] and of a receive's start: from the upload's claim on, there is
    /// no moment at which a receive of this LSN could begin (and write, then install or
    /// remove, the same `<lsn>.snap`) while this snapshot is not in the list.
    ///
    /// Not listed, but removed, if a newer snapshot from the primary was put in use while
    /// the upload ran: the log now starts after that one, so this older snapshot is
    /// continued by no log (kept, it would be what the node falls back to if the newer one
    /// were found damaged, with the records between the two missing).
    pub(crate) async fn stored(self, info: SnapshotInfo) {
        let snapshots = Arc::clone(&self.snapshots);
        let overtaken = {
            let mut state = lock(&snapshots.state);
            assert!(
                state.request
                    == Request::Uploading {
                        id: self.id,
                        lsn: info.lsn
                    },
                "an upload stored a snapshot it did not claim"
            );
            let newer = state.installed.last().map(|newest| newest.lsn);
            match newer.filter(|newer| *newer >= info.lsn) {
                Some(newer) => Some((newer, info)),
                None => {
                    state.installed.push(info);
                    None
                }
            }
        };
        if let Some((newer, info)) = overtaken {
            info!(lsn = %info.lsn, newer = %newer, "a snapshot from the primary was put in use while the application's was stored; removing the application's");
            // No writer of this LSN can start now (`claim` and a receive see the newer
            // one), so the file removed is this upload's.
            super::store::snapshot_remove(&snapshots.dir, std::iter::once(&info));
            self.finish(false);
            return;
        }
        SnapshotMetrics::add(&snapshots.metrics.taken);
        self.finish(true);
        let _ = snapshots.events.send(Event::Taken).await;
    }

    /// The upload ended with a snapshot stored, or was refused before any data (not the
    /// application's fault: nothing to warn of).
    pub(crate) fn finish(mut self, taken: bool) {
        self.ended = true;
        self.give_back(taken);
    }

    /// The upload broke off before the end: say so, count it, and let the scheduler ask
    /// again soon.
    pub(crate) fn abandon(mut self, reason: &str) {
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
        let owned = matches!(
            lock(&self.snapshots.state).request,
            Request::Uploading { id, .. } if id == self.id
        );
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
