//! The core loop's part of snapshots, as methods of its `Shell`: `on_snapshot_event`
//! carries out what the other snapshot tasks tell or ask the loop ([`Event`]). It keeps the
//! newest `--snapshots-retain` snapshots and truncates the log behind them ([`super`],
//! "Which records the log keeps"), installs a snapshot received from the primary, answers
//! whether the core wants one and which epoch a committed LSN has, and gives the core its
//! `SnapshotSent`/`SnapshotFailed`/`SnapshotInstalled` inputs. It also starts a transfer
//! when the core asks for one (`Action::SendSnapshot`).
//!
//! The only snapshot code that touches the core, the WAL writer or the tail cache.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tracing::{debug, info, warn};
use wal::snapshot::SnapshotInfo;
use wal::{Lsn, NodeId};

use super::store::snapshot_remove;
use super::transfer::send;
use super::{lock, Committed, Event, SnapshotMetrics};
use crate::core::Input;
use crate::node::{NodeError, PrefixCut, Shell, StepContext, TailCache};

impl Shell {
    /// Carries out an [`Event`].
    pub(crate) fn on_snapshot_event(&mut self, event: Event) -> Result<(), NodeError> {
        match event {
            Event::CommittedAt { lsn, reply } => {
                let committed = if lsn <= self.core.commit_lsn() {
                    self.core.epoch_of(lsn).map(|epoch| Committed {
                        epoch,
                        config: self
                            .book
                            .at(lsn)
                            .map(|(config_lsn, record)| (config_lsn, record.clone())),
                    })
                } else {
                    None
                };
                let _ = reply.send(committed);
            }
            Event::Wanted { lsn, epoch, reply } => {
                let _ = reply.send(self.core.snapshot_wanted(lsn, epoch));
            }
            Event::Taken => {
                // Already listed (`UploadGuard::stored`); what is left is the retention.
                self.snapshot_retain_and_truncate()?;
            }
            Event::Received {
                info,
                config,
                reply,
            } => {
                let installed = self.snapshot_install(&info, config)?;
                let _ = reply.send(installed);
            }
            Event::Sent { to, delivered } => {
                let input = match delivered {
                    Some((lsn, epoch)) => Input::SnapshotSent { to, lsn, epoch },
                    None => Input::SnapshotFailed { to },
                };
                self.step(input, StepContext::default())?;
            }
        }
        Ok(())
    }

    /// Starts streaming the newest snapshot to `to` (`Action::SendSnapshot`).
    pub(crate) fn snapshot_send(&mut self, to: NodeId) {
        let Some(addr) = self.net.config().addr_of(to) else {
            self.followups.push_back(Input::SnapshotFailed { to });
            return;
        };
        if !self.net.is_connected(to) {
            // Unreachable: the core asks again with a later heartbeat.
            debug!(peer = %to, "a backup needs a snapshot but is not connected");
            self.followups.push_back(Input::SnapshotFailed { to });
            return;
        }
        let snapshots = Arc::clone(&self.snapshots);
        let peer_config = self.net.config();
        let epoch = self.core.epoch();
        let log = self.reader.clone();
        let book = self.book.clone();
        tokio::spawn(async move {
            let delivered = tokio::select! {
                _ = snapshots.cancel.cancelled() => return,
                delivered = send(&snapshots, &peer_config, to, &addr, epoch, &log, &book) => delivered,
            };
            let _ = snapshots.events.send(Event::Sent { to, delivered }).await;
        });
    }

    /// Puts a snapshot received from the primary in use: the log is replaced by it.
    ///
    /// This waits for the writer (a batch and its fsync, then the reset), unlike every other
    /// log change the loop makes: the core's log, the WAL, the subscriptions and the list of
    /// snapshots change over at one point of the loop. Queued instead, the core would go on
    /// with the old log while the WAL numbers the next record after the snapshot (a
    /// promotion in between would write its epoch-start record at an LSN the WAL refuses),
    /// and subscriptions could read the old log while it is being deleted. It happens only
    /// on a backup catching up, never on the primary.
    ///
    /// Crash argument: 1. before this runs, the configuration at the snapshot is stored in
    /// `snapshot-members.json`, and then the snapshot file is installed (each fsynced,
    /// renamed, directory fsynced; [`install_received`]); 2. the configuration goes to
    /// `members.json` (atomic install); 3. the log is reset to start after the snapshot
    /// (segments deleted, directory fsynced, an empty segment installed). A crash after 1
    /// and before 3 (or a stop that never got here) leaves the old log beside a newer
    /// snapshot it does not continue; [`recover`] then stores the configuration of 1 in
    /// `members.json` and resets the log itself. After 3 `members.json` holds the
    /// configuration at the snapshot. The older snapshots are removed last: until then they
    /// are merely unused.
    ///
    /// [`recover`]: super::store::recover
    /// [`install_received`]: super::store::install_received
    fn snapshot_install(
        &mut self,
        info: &SnapshotInfo,
        config: (Lsn, crate::node::members::ConfigRecord),
    ) -> Result<bool, NodeError> {
        if !self.core.snapshot_wanted(info.lsn, info.epoch) {
            // The receive removes it (`transfer::remove_unwanted`) before it lets go of the
            // LSN, off this loop.
            info!(lsn = %info.lsn, "snapshot from the primary no longer needed; removing it");
            return Ok(false);
        }
        // The configuration at the snapshot goes to `members.json` before the log that
        // holds the configurations is reset (`node::members`, crash argument).
        let (config_lsn, record) = config;
        let members = record.members;
        let dir = self.config.data_dir.clone();
        crate::node::blocking(|| crate::node::members::store_start(&dir, config_lsn, &record))
            .map_err(|e| self.disk_failed(e))?;
        self.members_stored = Some(config_lsn);
        self.book.entries.clear();
        self.book.entries.insert(config_lsn, record);
        // Subscriptions stop reading the old log before it goes and the commit LSN jumps.
        self.snapshots.reset_tx.send_replace(info.lsn);
        let writer = &self.writer;
        crate::node::blocking(|| writer.reset(info.lsn.next())).map_err(|e| self.disk_failed(e))?;
        self.cache = TailCache::default();
        // Everything queued before the reset is done, and it replaced what they did.
        self.prefix_cut = None;
        self.suffix_cut = None;
        self.step(
            Input::SnapshotInstalled {
                lsn: info.lsn,
                epoch: info.epoch,
                members_lsn: config_lsn,
                members,
            },
            StepContext::default(),
        )?;
        let older: Vec<SnapshotInfo> = {
            let mut state = lock(&self.snapshots.state);
            let older = std::mem::take(&mut state.installed);
            state.installed.push(info.clone());
            state.last_taken = Instant::now();
            state.wanted_soon = false;
            older
        };
        self.snapshots.log_bytes.store(0, Ordering::Relaxed);
        snapshot_remove(
            &self.snapshots.dir,
            older.iter().filter(|o| o.path != info.path),
        );
        SnapshotMetrics::add(&self.snapshots.metrics.installed_from_primary);
        info!(lsn = %info.lsn, epoch = %info.epoch, "installed a snapshot from the primary; the log continues after it");
        Ok(true)
    }

    /// Keeps the newest `--snapshots-retain` snapshots and deletes the log segments that no
    /// kept snapshot needs, keeping `--wal-retain-bytes` behind the newest (module docs).
    fn snapshot_retain_and_truncate(&mut self) -> Result<(), NodeError> {
        let retain = self.snapshots.config.retain.max(1);
        let (doomed, oldest, newest) = {
            let mut state = lock(&self.snapshots.state);
            let excess = state.installed.len().saturating_sub(retain);
            let doomed: Vec<SnapshotInfo> = state.installed.drain(..excess).collect();
            let (Some(oldest), Some(newest)) = (state.installed.first(), state.installed.last())
            else {
                return Ok(());
            };
            (doomed, oldest.lsn, newest.lsn)
        };
        snapshot_remove(&self.snapshots.dir, doomed.iter());
        let wal_dir = self.config.data_dir.join("wal");
        let segments = match wal_segments(&wal_dir) {
            Ok(segments) => segments,
            Err(e) => {
                warn!(error = %e, "cannot list the log segments; not truncating");
                return Ok(());
            }
        };
        let Some(cut) = truncation_point(
            &segments,
            oldest.next(),
            newest,
            self.snapshots.config.wal_retain_bytes,
        ) else {
            return Ok(());
        };
        let first = self.reader.first_lsn();
        if cut <= first || self.prefix_cut.is_some() {
            // Nothing to cut, or a cut still queued (the next snapshot cuts further).
            return Ok(());
        }
        // The configuration in effect at the cut must outlive its record (`node::members`).
        self.members_store_start(cut.prev())?;
        // Queued, not waited for (the writer may be in a slow fsync): the loop hears that it
        // is done with the batch's durable progress, logs it then, and tells the core
        // (`Shell::prefix_catch_up`).
        let ticket = match self.writer.queue_truncate_prefix(cut) {
            Ok(ticket) => ticket,
            Err(e) => return Err(self.disk_failed(e)),
        };
        self.prefix_cut = Some(PrefixCut {
            ticket,
            first_lsn: cut,
            snapshot_lsn: newest,
            segments: segments.iter().filter(|(lsn, _)| *lsn < cut).count(),
        });
        Ok(())
    }
}

/// The segments of the log in `dir`: first LSN and file length, ascending.
fn wal_segments(dir: &Path) -> std::io::Result<Vec<(Lsn, u64)>> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(lsn) = entry
            .file_name()
            .to_str()
            .and_then(wal::segment::parse_file_name)
        else {
            continue;
        };
        segments.push((lsn, entry.metadata()?.len()));
    }
    segments.sort();
    Ok(segments)
}

/// The first LSN the log should keep: the start of the newest segment at or below `limit`
/// (no record above `limit - 1` is given up) such that the segments from it up to the one
/// holding `newest` total at least `retain_bytes`. `None` when no segment qualifies.
pub fn truncation_point(
    segments: &[(Lsn, u64)],
    limit: Lsn,
    newest: Lsn,
    retain_bytes: u64,
) -> Option<Lsn> {
    let mut kept_bytes = 0u64;
    for &(first, len) in segments.iter().rev() {
        if first > newest {
            continue;
        }
        kept_bytes = kept_bytes.saturating_add(len);
        if first <= limit && kept_bytes >= retain_bytes {
            return Some(first);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cut keeps the log back to the oldest kept snapshot and at least the retained
    /// bytes behind the newest, and deletes only whole segments.
    #[test]
    fn truncation_point_keeps_the_oldest_snapshot_and_the_retained_bytes() {
        let segments = [
            (Lsn(1), 100),
            (Lsn(101), 100),
            (Lsn(201), 100),
            (Lsn(301), 50),
        ];
        // Retain nothing: cut at the segment holding the oldest kept snapshot's next LSN.
        assert_eq!(
            truncation_point(&segments, Lsn(251), Lsn(320), 0),
            Some(Lsn(201))
        );
        // The oldest kept snapshot limits the cut.
        assert_eq!(
            truncation_point(&segments, Lsn(150), Lsn(320), 0),
            Some(Lsn(101))
        );
        // Retained bytes push the cut down.
        assert_eq!(
            truncation_point(&segments, Lsn(251), Lsn(320), 200),
            Some(Lsn(101))
        );
        assert_eq!(
            truncation_point(&segments, Lsn(251), Lsn(320), 10_000),
            None
        );
        // Segments after the newest snapshot do not count as behind it.
        assert_eq!(
            truncation_point(&segments, Lsn(251), Lsn(250), 150),
            Some(Lsn(101))
        );
    }
}
