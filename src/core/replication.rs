//! Log shipping: the primary's appends (pipelined within a per-backup window), the backup's
//! log-matching check with a conflict hint, truncation of a conflicting suffix, and the
//! snapshot hand-off when a backup needs records the primary no longer has.
//!
//! # Log matching
//! Every append names the record before it (`prev_lsn`, `prev_epoch`). A backup accepts it only
//! if its own log holds that record with that epoch; then, by induction, its log equals the
//! primary's through `prev_lsn` (two logs with the same record at the same LSN and epoch are
//! equal up to it, because a primary writes each LSN once per epoch and only after checking
//! the same way). Records the backup already has with the right epoch are left alone, so a
//! duplicate or late append never truncates anything. The first record that differs starts a
//! conflicting suffix, which is truncated; it is never committed (asserted): a committed record
//! is in every later primary's log at the same LSN, so no later primary sends a different one.
//!
//! # Conflict hints
//! A rejection carries the last LSN that might match: the backup's last record if it is short,
//! otherwise the record just before the whole conflicting epoch. The primary moves to the end
//! of that epoch in its own log (or below its first record of a later epoch). Each round trip
//! skips at least one epoch, so catching up costs round trips per epoch, not per record.
//!
//! # The in-flight window
//! Per backup, records shipped but not acknowledged as written are bounded by
//! `inflight_records_max` and `inflight_bytes_max`. The core never sees payloads, so bytes are
//! estimated: the primary keeps an index of the batches it accepted in its epoch (last LSN,
//! running byte total), interpolates within a batch, and uses the average record size seen for
//! records outside the index (earlier epochs, or pruned). A proposal is one batch, or one per
//! run when it comes in runs (`Input::Propose`): the shell gives each large record a run of
//! its own, so that a proposal of a few 1 MiB records among many small ones is not taken for
//! records of the average size, several to an append. The index holds at most
//! `inflight_records_max` batches.

use std::collections::VecDeque;

use wal::{Epoch, Lsn, NodeId};

use super::{Action, Append, AppendResponse, Core, Message, Rejection, Role};

/// Running byte totals of the batches proposed in this epoch (see the module docs).
#[derive(Clone, Debug, Default)]
pub(crate) struct ByteIndex {
    /// The LSN just before the first batch in the index, and the running total there.
    base_lsn: Lsn,
    base_bytes: u64,
    /// `(last LSN of the batch, running total through it)`.
    batches: VecDeque<(Lsn, u64)>,
    /// Every proposal seen by this core, for the average.
    records_seen: u64,
    bytes_seen: u64,
}

impl ByteIndex {
    pub fn clear(&mut self) {
        self.batches.clear();
    }

    /// Starts an empty index whose first batch will follow `lsn`.
    pub fn restart_after(&mut self, lsn: Lsn) {
        self.batches.clear();
        self.base_lsn = lsn;
        self.base_bytes = 0;
    }

    /// Indexes a batch of `count` records of `bytes` in all, ending at `last_lsn`, with one
    /// entry per run of `runs` (`Input::Propose`; empty: one run).
    pub fn push(
        &mut self,
        last_lsn: Lsn,
        count: u64,
        bytes: u64,
        runs: &[(u64, u64)],
        batches_max: u64,
    ) {
        let mut total = self
            .batches
            .back()
            .map_or(self.base_bytes, |&(_, total)| total);
        let one = [(count, bytes)];
        let runs = if runs.is_empty() { &one[..] } else { runs };
        assert!(
            runs.iter().all(|&(records, _)| records > 0)
                && runs.iter().map(|&(records, _)| records).sum::<u64>() == count
                && runs.iter().map(|&(_, run_bytes)| run_bytes).sum::<u64>() == bytes,
            "a proposal's runs are not empty and add up to it"
        );
        let mut run_last = Lsn(last_lsn.get() - count);
        for &(records, run_bytes) in runs {
            run_last = run_last.plus(records);
            total += run_bytes;
            self.batches.push_back((run_last, total));
        }
        self.records_seen += count;
        self.bytes_seen += bytes;
        while self.batches.len() as u64 > batches_max {
            self.pop_front();
        }
    }

    /// Forgets batches that end at or before `lsn`.
    pub fn prune_through(&mut self, lsn: Lsn) {
        while matches!(self.batches.front(), Some(&(last, _)) if last <= lsn) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((last, total)) = self.batches.pop_front() {
            self.base_lsn = last;
            self.base_bytes = total;
        }
    }

    fn average(&self) -> u64 {
        // One byte per record until the first proposal says otherwise.
        self.bytes_seen
            .checked_div(self.records_seen)
            .unwrap_or(1)
            .max(1)
    }

    /// The running total at `lsn`, extended outside the index with the average record size.
    fn total_at(&self, lsn: Lsn) -> i128 {
        let average = self.average() as i128;
        let base = self.base_lsn.get() as i128;
        let at = lsn.get() as i128;
        if at <= base || self.batches.is_empty() {
            return self.base_bytes as i128 - (base - at) * average;
        }
        let i = self.batches.partition_point(|&(last, _)| last < lsn);
        if i == self.batches.len() {
            let &(last, total) = self.batches.back().expect("not empty, checked above");
            return total as i128 + (at - last.get() as i128) * average;
        }
        let (prev_last, prev_total) = if i == 0 {
            (base, self.base_bytes as i128)
        } else {
            let (l, t) = self.batches[i - 1];
            (l.get() as i128, t as i128)
        };
        let (last, total) = self.batches[i];
        let span = last.get() as i128 - prev_last;
        prev_total + (total as i128 - prev_total) * (at - prev_last) / span
    }

    /// Estimated bytes of records `first..=last`.
    pub fn estimate(&self, first: Lsn, last: Lsn) -> u64 {
        if last < first {
            return 0;
        }
        (self.total_at(last) - self.total_at(first.prev())).max(0) as u64
    }
}

impl Core {
    pub(super) fn on_propose(
        &mut self,
        count: u64,
        bytes: u64,
        runs: &[(u64, u64)],
        out: &mut Vec<Action>,
    ) {
        if count == 0 {
            out.push(Action::ProposeRejected {
                reason: Rejection::Empty,
            });
            return;
        }
        match self.st.role {
            Role::Primary => {}
            Role::Backup | Role::Candidate => {
                out.push(Action::ProposeRejected {
                    reason: Rejection::NotPrimary {
                        primary: self.st.primary,
                    },
                });
                return;
            }
        }
        if self.st.switchover.is_some() || self.config.witness {
            // A witness serves nobody: it hands over as soon as it can (`health.rs`).
            out.push(Action::ProposeRejected {
                reason: Rejection::SwitchoverInProgress,
            });
            return;
        }
        // `lease_check` ran first in this step: a primary here holds its lease.
        assert!(self.lease_valid(), "serving a proposal without a lease");
        let first_lsn = self.st.log.last_lsn.next();
        let last_lsn = first_lsn.plus(count - 1);
        let epoch = self.st.epoch;
        self.st.log.append(first_lsn, last_lsn, epoch);
        self.st.bytes.push(
            last_lsn,
            count,
            bytes,
            runs,
            self.config.inflight_records_max,
        );
        out.push(Action::WriteProposed {
            first_lsn,
            last_lsn,
            epoch,
        });
        for i in 0..self.st.peers.len() {
            self.replicate_to(i, false, out);
        }
    }

    /// Resending a stalled stream waits this long without progress.
    fn resend_after(&self) -> std::time::Duration {
        self.config.heartbeat_interval * 2
    }

    pub(super) fn primary_on_tick(&mut self, out: &mut Vec<Action>) {
        self.departing_check(out);
        // Named in every append from now on: the backup that stands first if this primary
        // goes quiet (a live application preferred, then as a switchover picks).
        self.st.successor = self
            .switchover_target(true)
            .or_else(|| self.switchover_target(false));
        let now = self.st.now;
        let resend_after = self.resend_after();
        let heartbeat = self.config.heartbeat_interval;
        for i in 0..self.st.peers.len() {
            let peer = &mut self.st.peers[i];
            if peer.probing
                && peer
                    .probe_sent_at
                    .is_some_and(|at| now >= at + resend_after)
            {
                // The probe or its answer was lost: send it again.
                peer.probe_sent_at = None;
            } else if !peer.probing
                && !peer.snapshot_pending
                && peer.match_lsn.next() < peer.next_lsn
                && now >= peer.last_progress + resend_after
            {
                // Shipped records are not becoming durable there: lost appends or answers, or
                // the backup restarted and lost what it had not made durable. Ship again from
                // what it holds durably.
                peer.next_lsn = peer.match_lsn.next();
                peer.acked_lsn = peer.match_lsn;
                peer.probing = true;
                peer.probe_sent_at = None;
                peer.last_progress = now;
            }
            let heartbeat_due = peer.last_sent.is_none_or(|at| now >= at + heartbeat);
            self.replicate_to(i, heartbeat_due, out);
        }
    }

    /// Ships what the window allows to peer `i`; if nothing was shipped and `heartbeat_due`,
    /// sends an empty append so the backup hears from us and renews our lease.
    pub(super) fn replicate_to(&mut self, i: usize, heartbeat_due: bool, out: &mut Vec<Action>) {
        let now = self.st.now;
        let records_max = self.config.inflight_records_max;
        let bytes_max = self.config.inflight_bytes_max;
        let append_bytes_max = self.config.append_bytes_max;
        let mut shipped = false;
        let to = self.st.peers[i].id;
        let (promote, promote_through) = self.replicate_promote(i);
        // A removed node is sent nothing until its removal is committed, then the log through
        // that record and no further (`members.rs`, "Removed nodes").
        let ship_through = match self.st.peers[i].departing {
            Some((lsn, _)) if self.st.commit_lsn < lsn => return,
            Some((lsn, _)) => lsn.min(self.st.log.last_lsn),
            None => self.st.log.last_lsn,
        };
        if self.st.peers[i].snapshot_pending {
            // Only heartbeats until the snapshot transfer answers.
        } else if self.st.peers[i].next_lsn <= self.st.log.snapshot_lsn {
            if let Some((lsn, _)) = self.st.peers[i].departing {
                // A removed node that would need a snapshot to reach its removal is not sent
                // one: it is let go at the next tick (`members.rs`, "Removed nodes").
                self.st.peers[i].departing = Some((lsn, now));
            } else if heartbeat_due {
                // It needs records our snapshot replaced: the shell streams the snapshot.
                self.st.peers[i].snapshot_pending = true;
                out.push(Action::SendSnapshot { to });
            }
        } else {
            loop {
                let log = &self.st.log;
                let peer = &self.st.peers[i];
                let next = peer.next_lsn;
                let probing = peer.probing;
                if probing && peer.probe_sent_at.is_some() {
                    break; // One probe at a time.
                }
                if !probing && next > ship_through {
                    break; // Nothing more to ship.
                }
                // A probe ignores the window: it is one append, and the window counts from
                // `acked_lsn`, which a rejection has made uncertain.
                let (inflight_records, inflight_bytes) = if probing {
                    (0, 0)
                } else {
                    (
                        next.get() - 1 - peer.acked_lsn.get(),
                        self.st.bytes.estimate(peer.acked_lsn.next(), next.prev()),
                    )
                };
                if inflight_records >= records_max {
                    break;
                }
                // A probe past the end of our log is empty: it only checks the match at
                // `next - 1`.
                let (records_epoch, count) = match log.epoch_of(next) {
                    Some(epoch) if next <= ship_through => {
                        let (_, epoch_last) = log
                            .range_of_epoch(epoch)
                            .expect("epoch of a record in the log");
                        let epoch_last = epoch_last.min(ship_through);
                        // A config record ends its append (`Append::config`).
                        let end = match log.configs.record_in(next, epoch_last) {
                            Some((at, _)) => at,
                            None => epoch_last,
                        };
                        let mut count = self
                            .config
                            .append_records_max
                            .min(records_max - inflight_records)
                            .min(Lsn::count_between(next, end));
                        while count > 1 && {
                            let bytes = self.st.bytes.estimate(next, next.plus(count - 1));
                            inflight_bytes + bytes > bytes_max || bytes > append_bytes_max
                        } {
                            count /= 2;
                        }
                        (epoch, count)
                    }
                    _ => (self.st.epoch, 0),
                };
                if inflight_records > 0
                    && inflight_bytes + self.st.bytes.estimate(next, next) > bytes_max
                {
                    break;
                }
                let prev_lsn = next.prev();
                let prev_epoch = log
                    .epoch_of(prev_lsn)
                    .expect("next_lsn - 1 is at or above the snapshot");
                let last_lsn = prev_lsn.plus(count);
                let config = match log.configs.record_in(last_lsn, last_lsn) {
                    Some((_, members)) if count > 0 => Some(members),
                    _ => None,
                };
                let append = Append {
                    epoch: self.st.epoch,
                    prev_lsn,
                    prev_epoch,
                    first_lsn: next,
                    last_lsn,
                    records_epoch,
                    commit_lsn: self.st.commit_lsn,
                    sent_at: now.as_duration(),
                    promote,
                    promote_through,
                    paused: self.st.paused,
                    pause_stamp: self.st.pause_stamp,
                    config,
                    successor: self.st.successor,
                };
                out.push(Action::Send {
                    to,
                    message: Message::Append(append),
                });
                shipped = true;
                let peer = &mut self.st.peers[i];
                peer.last_sent = Some(now);
                peer.departing_told |= Core::departing_told_by(peer.departing, &append);
                if probing {
                    peer.probe_sent_at = Some(now);
                    break;
                }
                peer.next_lsn = last_lsn.next();
            }
        }
        if !shipped && heartbeat_due {
            let peer = &self.st.peers[i];
            // From the last record we know it holds durably; if our snapshot replaced that
            // record, from the start of the log (LSN 0 matches everywhere).
            let (prev_lsn, prev_epoch) = match self.st.log.epoch_of(peer.match_lsn) {
                Some(epoch) => (peer.match_lsn, epoch),
                None => (Lsn::ZERO, Epoch::ZERO),
            };
            let append = Append {
                epoch: self.st.epoch,
                prev_lsn,
                prev_epoch,
                first_lsn: prev_lsn.next(),
                last_lsn: prev_lsn,
                records_epoch: self.st.epoch,
                commit_lsn: self.st.commit_lsn,
                sent_at: now.as_duration(),
                promote,
                promote_through,
                paused: self.st.paused,
                pause_stamp: self.st.pause_stamp,
                config: None,
                successor: self.st.successor,
            };
            out.push(Action::Send {
                to,
                message: Message::Append(append),
            });
            let peer = &mut self.st.peers[i];
            peer.last_sent = Some(now);
            peer.departing_told |= Core::departing_told_by(peer.departing, &append);
        }
    }

    /// Whether `append`, sent to a removed node, tells it that the record removing it is
    /// committed: it reaches that record and carries a commit LSN at or past it.
    fn departing_told_by(departing: Option<(Lsn, super::Time)>, append: &Append) -> bool {
        departing.is_some_and(|(lsn, _)| append.last_lsn >= lsn && append.commit_lsn >= lsn)
    }

    /// `Append::promote` and `promote_through` for peer `i`: its learner nonce once it durably
    /// holds everything through our last LSN as it was when we first heard that nonce
    /// (`election.rs`, "Learners"); zero otherwise. Only a primary sends appends, and only
    /// while its lease holds.
    fn replicate_promote(&self, i: usize) -> (u64, Lsn) {
        let peer = &self.st.peers[i];
        if peer.departing.is_none()
            && peer.learner != 0
            && peer.learner == peer.learner_seen
            && peer.match_lsn >= peer.promote_through
        {
            (peer.learner, peer.promote_through)
        } else {
            (0, Lsn::ZERO)
        }
    }

    pub(super) fn on_append(&mut self, from: NodeId, append: Append, out: &mut Vec<Action>) {
        if append.first_lsn != append.prev_lsn.next()
            || append.last_lsn < append.prev_lsn
            || append.config.is_some_and(|members| {
                append.last_lsn == append.prev_lsn || members.voter_count() == 0
            })
        {
            return; // Malformed: not something a primary sends. Drop it.
        }
        if append.epoch < self.st.epoch {
            // A deposed primary: tell it our epoch so it steps down.
            let (lsn, epoch) = (self.st.log.last_lsn, self.st.log.last_epoch());
            let response = AppendResponse {
                epoch: self.st.epoch,
                accepted: false,
                matched_lsn: lsn,
                matched_epoch: epoch,
                durable_lsn: Lsn::ZERO,
                // We did not take it as from our primary: it renews nothing.
                sent_at: if self.config.unsafe_testing.old_lease_echo {
                    append.sent_at
                } else {
                    std::time::Duration::ZERO
                },
                learner: self.learner_report(),
                health: self.health(),
                vote_wait: self.config.failover_timeout,
            };
            out.push(Action::Send {
                to: from,
                message: Message::AppendResponse(response),
            });
            return;
        }
        if append.epoch > self.st.epoch {
            self.adopt_epoch(append.epoch, out);
        }
        match self.st.role {
            Role::Primary => panic!(
                "two primaries in epoch {}: node {} and node {from}",
                self.st.epoch, self.config.node_id
            ),
            Role::Candidate | Role::Backup => {
                self.st.role = Role::Backup;
                self.st.election = None;
            }
        }
        if let Some(known) = self.st.primary {
            assert_eq!(known, from, "two primaries in epoch {}", self.st.epoch);
        }
        let sent_at = if self.config.unsafe_testing.old_lease_echo {
            self.st.primary_sent_at = self.st.primary_sent_at.max(append.sent_at);
            self.st.primary_sent_at
        } else {
            if self.st.primary != Some(from) {
                self.st.primary_sent_at = std::time::Duration::ZERO;
            }
            // One primary, one epoch, one run of it: its clock only moves forward.
            self.st.primary_sent_at = self.st.primary_sent_at.max(append.sent_at);
            append.sent_at
        };
        self.st.primary = Some(from);
        // Before the deadline is set from it (`Core::reset_election_deadline`).
        self.st.successor = append.successor;
        let now = self.st.now;
        self.st.last_primary_contact = Some(now);
        self.reset_election_deadline(now);
        self.adopt_pause(append.paused, append.pause_stamp, out);

        let log = &self.st.log;
        if append.prev_lsn > log.last_lsn {
            let (lsn, epoch) = (log.last_lsn, log.last_epoch());
            self.backup_respond(from, false, lsn, epoch, sent_at, out);
            return;
        }
        if append.prev_lsn >= log.snapshot_lsn
            && log.epoch_of(append.prev_lsn) != Some(append.prev_epoch)
        {
            let (lsn, epoch) = self.on_append_hint(append.prev_lsn);
            self.backup_respond(from, false, lsn, epoch, sent_at, out);
            return;
        }
        // Below our snapshot everything is committed, hence the same as the primary's.
        let low = append.first_lsn.max(log.snapshot_lsn.next());
        let high = append.last_lsn;
        if low <= high {
            let differs_at = if low > log.last_lsn {
                low
            } else {
                match log.range_of_epoch(append.records_epoch) {
                    Some((first, last)) if first <= low && low <= last => last.min(high).next(),
                    _ => low,
                }
            };
            if differs_at <= high {
                if differs_at <= self.st.log.last_lsn {
                    let keep_through = differs_at.prev();
                    assert!(
                        keep_through >= self.st.commit_lsn,
                        "truncating after {keep_through} would drop committed records (commit_lsn {})",
                        self.st.commit_lsn
                    );
                    assert!(
                        self.st.verified_lsn <= keep_through,
                        "truncating after {keep_through} would drop records verified in this epoch (through {})",
                        self.st.verified_lsn
                    );
                    self.st.log.truncate_suffix(keep_through);
                    self.st.acked_durable_lsn = self.st.acked_durable_lsn.min(keep_through);
                    out.push(Action::TruncateSuffix { keep_through });
                }
                self.st.log.append(differs_at, high, append.records_epoch);
                if let Some(members) = append.config {
                    // The record at `last_lsn` (== `high`) is a config record: in effect now.
                    self.st.log.configs.push(high, members);
                }
                out.push(Action::WriteReceived {
                    first_lsn: differs_at,
                    last_lsn: high,
                });
            }
        }
        self.st.verified_lsn = self.st.verified_lsn.max(append.last_lsn);
        let commit = append.commit_lsn.min(self.st.verified_lsn);
        self.set_commit(commit, out);
        self.learner_promote(append.promote, append.promote_through, out);
        let verified = self.st.verified_lsn;
        let verified_epoch = self.st.log.epoch_of(verified).unwrap_or(Epoch::ZERO);
        self.backup_respond(from, true, verified, verified_epoch, sent_at, out);
    }

    /// The last LSN below the conflict at `prev_lsn` that might match: just before the
    /// backup's whole run of the conflicting epoch.
    fn on_append_hint(&self, prev_lsn: Lsn) -> (Lsn, Epoch) {
        let log = &self.st.log;
        let conflicting = log.epoch_of(prev_lsn).expect("prev_lsn is inside the log");
        match log.range_of_epoch(conflicting) {
            Some((first, _)) if first > log.snapshot_lsn.next() => {
                let lsn = first.prev();
                (lsn, log.epoch_of(lsn).expect("inside the log"))
            }
            _ => (log.snapshot_lsn, log.snapshot_epoch),
        }
    }

    fn backup_respond(
        &mut self,
        to: NodeId,
        accepted: bool,
        lsn: Lsn,
        epoch: Epoch,
        sent_at: std::time::Duration,
        out: &mut Vec<Action>,
    ) {
        let durable_lsn = self.st.log.durable_lsn.min(self.st.verified_lsn);
        self.st.acked_durable_lsn = self.st.acked_durable_lsn.max(durable_lsn);
        let response = AppendResponse {
            epoch: self.st.epoch,
            accepted,
            matched_lsn: lsn,
            matched_epoch: epoch,
            durable_lsn,
            sent_at,
            learner: self.learner_report(),
            health: self.health(),
            vote_wait: self.config.failover_timeout,
        };
        out.push(Action::Send {
            to,
            message: Message::AppendResponse(response),
        });
    }

    /// A backup whose durable LSN advanced tells the primary (the commit may depend on it).
    pub(super) fn backup_ack_durable(&mut self, out: &mut Vec<Action>) {
        let Some(primary) = self.st.primary else {
            return;
        };
        if self.st.role != Role::Backup {
            return;
        }
        let durable = self.st.log.durable_lsn.min(self.st.verified_lsn);
        if durable > self.st.acked_durable_lsn {
            let verified = self.st.verified_lsn;
            let epoch = self.st.log.epoch_of(verified).unwrap_or(Epoch::ZERO);
            let sent_at = self.st.primary_sent_at;
            self.backup_respond(primary, true, verified, epoch, sent_at, out);
        }
    }

    pub(super) fn on_append_response(
        &mut self,
        from: NodeId,
        response: AppendResponse,
        out: &mut Vec<Action>,
    ) {
        if response.epoch > self.st.epoch {
            self.adopt_epoch(response.epoch, out);
            return;
        }
        if self.st.role != Role::Primary || response.epoch < self.st.epoch {
            return; // For an epoch that is over.
        }
        let Some(i) = self.peer_index(from) else {
            return;
        };
        let now = self.st.now;
        let last_lsn = self.st.log.last_lsn;
        if response.matched_lsn > last_lsn && response.accepted {
            return; // Not an answer to anything we sent in this epoch.
        }
        let old_lease_echo = self.config.unsafe_testing.old_lease_echo;
        let sent_at = super::Time::from_duration(response.sent_at);
        let peer = &mut self.st.peers[i];
        peer.last_ack = Some(now);
        // A backup echoes the send time of the latest append it received, so within one run
        // of it the echoes never go back, and a new run echoes appends sent after it started.
        // (The old lease echo, a test knob, echoes other clocks: every answer is news then.)
        let news = old_lease_echo || (sent_at >= peer.info_sent_at && sent_at <= now);
        if news {
            peer.info_sent_at = sent_at;
            peer.learner = response.learner;
            peer.health = response.health;
            if response.learner != 0 && response.learner != peer.learner_seen {
                // A run of this node we have not heard from before. Whatever an earlier run of
                // it acknowledged (an answer that may still be on its way, and would count) is
                // at or below our last LSN now: promote it only once it holds all of that
                // again.
                peer.learner_seen = response.learner;
                peer.promote_through = last_lsn;
                // Nor does an earlier run's promise to refuse votes hold any more: a new run
                // is a wiped data dir (a learner nonce), which lost that promise with its
                // `vote-wait` file and waits out only its own quarantine, which a shorter
                // `--failover-timeout` than the earlier run's makes shorter than the promise.
                // Counted on, it could outlast the run's first vote for another primary.
                // Forgotten, the lease rests on this run's answers from now on (shortening a
                // lease is always safe). A run that votes before this primary hears of it is
                // what the README's "do not shorten the setting and wipe a node in one
                // restart" is for.
                peer.lease_sent_at = None;
                peer.lease_end = None;
            }
        }
        let counted = if old_lease_echo {
            Some(sent_at.min(now))
        } else if news
            && (response.learner == 0 || response.health.can_vote)
            && sent_at > super::Time::ZERO
            && sent_at <= now
        {
            // The echo of an append we sent in this epoch (backups forget other primaries'
            // send times), from a voter, which refuses votes for `failover_timeout` after it
            // received it (`lease.rs`). A member that is a learner of the configuration but
            // could vote (`Health::can_vote`: not a wiped node awaiting promotion, nor
            // quarantined) refuses the same way once the configuration makes it a voter, so
            // its echo counts from the moment it does (`lease_until` counts voters only). A send time after `now` is not one of ours: ignored,
            // never clamped, for clamping would count the acknowledgement from its arrival.
            // An echo older than the latest one heard (`news`) is not counted either: it may
            // be an earlier run's, whose promise a new run's forgot (above).
            Some(sent_at)
        } else {
            None
        };
        if let Some(sent_at) = counted {
            // It counts for as long as its sender keeps refusing votes (`Config::lease_for`).
            let end = sent_at + self.config.lease_for(response.vote_wait);
            peer.lease_sent_at = Some(peer.lease_sent_at.map_or(sent_at, |at| at.max(sent_at)));
            peer.lease_end = Some(peer.lease_end.map_or(end, |at| at.max(end)));
        }
        if response.accepted {
            if response.matched_lsn > peer.acked_lsn {
                peer.acked_lsn = response.matched_lsn;
                peer.last_progress = now;
            }
            let durable = response.durable_lsn.min(response.matched_lsn);
            if durable > peer.match_lsn {
                peer.match_lsn = durable;
                peer.acked_lsn = peer.acked_lsn.max(durable);
                peer.last_progress = now;
            }
            if peer.next_lsn <= peer.acked_lsn
                || peer.probing && peer.acked_lsn.next() >= peer.next_lsn
            {
                peer.next_lsn = peer.acked_lsn.next();
            }
            if peer.probing && peer.acked_lsn.next() >= peer.next_lsn {
                // The probe (or anything after it) was accepted: pipeline from here.
                peer.probing = false;
                peer.probe_sent_at = None;
            }
            self.commit_advance_primary(out);
            self.switchover_check(out);
        } else {
            let peer = &mut self.st.peers[i];
            if response.durable_lsn < peer.match_lsn && response.matched_lsn < peer.match_lsn {
                // The backup no longer holds records it reported durable: it was started on
                // an empty data dir (a replaced machine). Matching starts over from nothing.
                // Lowering `match_lsn` is always safe: the commit LSN never goes back, and
                // a lower match only counts this backup for fewer records until it has them.
                peer.match_lsn = Lsn::ZERO;
                peer.acked_lsn = Lsn::ZERO;
                peer.probing = true;
            }
            let next = self.on_append_response_next(response.matched_lsn, response.matched_epoch);
            let peer = &mut self.st.peers[i];
            let next = next.max(peer.match_lsn.next());
            if next <= peer.acked_lsn && !peer.probing {
                // A late rejection of an append sent before a later one was accepted.
            } else {
                peer.next_lsn = next;
                peer.acked_lsn = peer.acked_lsn.min(next.prev()).max(peer.match_lsn);
                peer.probing = true;
                peer.probe_sent_at = None;
            }
        }
        if self.st.role == Role::Primary {
            self.replicate_to(i, false, out);
        }
    }

    /// Where to ship from after a rejection hinting `hint_lsn` (of `hint_epoch` there).
    fn on_append_response_next(&self, hint_lsn: Lsn, hint_epoch: Epoch) -> Lsn {
        let log = &self.st.log;
        let lsn = hint_lsn.min(log.last_lsn);
        if lsn < log.snapshot_lsn {
            return lsn.next(); // Below our snapshot: it will get the snapshot.
        }
        let ours = log.epoch_of(lsn).expect("between snapshot and last_lsn");
        if lsn == hint_lsn && ours == hint_epoch {
            lsn.next() // Same LSN and epoch: the logs match through it.
        } else if ours > hint_epoch {
            // Our records of later epochs cannot be there; try below the first of them.
            lsn.next().min(log.first_lsn_after_epoch(hint_epoch))
        } else {
            lsn.next()
        }
    }

    pub(super) fn on_prefix_truncated(&mut self, through: Lsn) {
        if through <= self.st.log.snapshot_lsn {
            return;
        }
        assert!(
            through <= self.st.commit_lsn,
            "prefix truncated through {through}, above commit_lsn {}",
            self.st.commit_lsn
        );
        assert!(
            through <= self.st.log.durable_lsn,
            "prefix truncated through {through}, above durable_lsn {}",
            self.st.log.durable_lsn
        );
        self.st.log.truncate_prefix(through);
        self.st.bytes.prune_through(through);
    }

    pub(super) fn on_snapshot_sent(
        &mut self,
        to: NodeId,
        lsn: Lsn,
        epoch: Epoch,
        out: &mut Vec<Action>,
    ) {
        let _ = epoch;
        if self.st.role != Role::Primary {
            return;
        }
        let Some(i) = self.peer_index(to) else { return };
        let now = self.st.now;
        let peer = &mut self.st.peers[i];
        peer.snapshot_pending = false;
        if lsn.next() > peer.next_lsn {
            peer.next_lsn = lsn.next().min(self.st.log.last_lsn.next());
        }
        peer.probing = true;
        peer.probe_sent_at = None;
        peer.last_progress = now;
        self.replicate_to(i, false, out);
    }

    pub(super) fn on_snapshot_failed(&mut self, to: NodeId) {
        if self.st.role != Role::Primary {
            return;
        }
        let Some(i) = self.peer_index(to) else { return };
        let now = self.st.now;
        let peer = &mut self.st.peers[i];
        peer.snapshot_pending = false;
        // Ask again with the next heartbeat, not in a tight loop.
        peer.last_sent = Some(now);
    }

    pub(super) fn on_snapshot_installed(
        &mut self,
        lsn: Lsn,
        epoch: Epoch,
        members_lsn: Lsn,
        members: super::Members,
        out: &mut Vec<Action>,
    ) {
        assert!(
            self.st.role != Role::Primary,
            "a primary installed a snapshot"
        );
        assert!(
            lsn >= self.st.commit_lsn,
            "snapshot through {lsn} installed below commit_lsn {}",
            self.st.commit_lsn
        );
        if epoch > self.st.epoch {
            self.adopt_epoch(epoch, out);
        }
        assert!(
            members_lsn <= lsn && members.voter_count() > 0,
            "snapshot through {lsn} with configuration {members} of {members_lsn}"
        );
        self.st
            .log
            .reset_to_snapshot(lsn, epoch, members_lsn, members);
        // A snapshot holds only committed records, which every later primary has: the log
        // matches the current primary's through it.
        self.st.verified_lsn = lsn;
        self.st.acked_durable_lsn = self.st.acked_durable_lsn.min(lsn);
        self.set_commit(lsn, out);
        self.backup_ack_durable(out);
    }
}
