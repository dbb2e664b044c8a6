//! The primary's lease: it serves (accepts appends, calls itself primary) only while a
//! majority, itself included, acknowledged an append or granted it a vote recently enough that
//! no other node can have been elected since. When the lease lapses it steps down at once.
//!
//! # Why no new primary can be elected while the lease holds
//!
//! Let every node's clock run at a rate within `1 ± rho` of true time, and write `T` for
//! `failover_timeout`, `m` for `clock_drift_margin`, `L = T - m` for the lease.
//!
//! 1. The primary P stamps each append with its clock reading `s` when it leaves (true time
//!    `S`): the core when it makes it, and the peer link again just before writing it
//!    (`node::peer::send_loop`), later but still before any backup can receive it. A
//!    backup B that answers it (in P's epoch) received it at true time `R >= S`, and
//!    echoes `s` itself: the send time of the very append it answers (unasked, after a later
//!    fsync, that of the latest append it received from P in this epoch). B forgets P's send
//!    times when the epoch or the primary changes, and echoes zero when it refuses an append
//!    of an older epoch, so an echo is always a reading of P's own clock in this run of P.
//!    P ignores (never clamps) an echo later than its clock: clamping would count an
//!    acknowledgement from when it arrived, which a retransmission can make hundreds of
//!    milliseconds after B's receipt. P counts only echoes from voters: a learner (wiped, or
//!    quarantined) may have voted before it forgot, so its refusal proves nothing.
//! 2. From that receipt B refuses every vote and pre-vote, and does not stand, until its own
//!    clock has advanced `T` (`heard_from_primary_recently`). That is true time at least
//!    `R + T / (1 + rho)`. A vote granted earlier than that is impossible; a vote B granted
//!    before `R` was for a higher epoch, and then B would have answered P's append with that
//!    higher epoch, which P does not count.
//! 3. P counts the acknowledgement until its own clock reads `s + L`: true time at most
//!    `S + L / (1 - rho)`.
//! 4. `L / (1 - rho) <= T / (1 + rho)` holds when `rho <= m / (2T - m)`
//!    ([`Config::tolerated_drift_ppm`](super::Config::tolerated_drift_ppm)); then P's use of
//!    B's acknowledgement ends before B can vote for anyone else. Nodes may run with
//!    different failover timeouts: B's `T` is its own, which it sends with every answer
//!    (`vote_wait`), and P counts the answer for `L_B = min(L, T_B * L / T_P)`
//!    ([`Config::lease_for`](super::Config::lease_for)), for which the same inequality
//!    holds at P's tolerated `rho`. A node restarted with a shorter `T` refuses votes for
//!    the longer one it last ran with first (`Config::previous_vote_wait`), since its
//!    earlier answers promised it.
//! 5. A new primary needs votes from a majority; P's lease needs acknowledgements from a
//!    majority (its own counting only if P is a voter of its configuration: a learner of it
//!    may be primary, `members.rs` rule 3); the two majorities share a node B. By 2-4, B cannot have voted while P's
//!    lease, as counted from B's acknowledgement, holds. So at any instant P believes its
//!    lease holds, no primary of a higher epoch has been elected.
//!
//! A restarted node does not remember its last receipt, so it refuses votes for `T` after it
//! starts (`Core::new`), which is later than any receipt before its crash. A paused node is the
//! same as a slow one: its clock keeps running, and the core compares against the reading the
//! shell passes with the input, never a stale one. Votes renew the lease the same way (a voter
//! restarts its wait on granting), which lets a new primary serve from its first moment. A
//! switchover hand-over (`switchover.rs`) bypasses step 2, which is sound only because the
//! old primary stops serving before it asks.
//!
//! The one input without a clock reading (`MetaPersisted`) runs at the last reading seen,
//! which is earlier than the true time: a send time stamped from it is early, so the lease
//! counted from it ends early. Errors only ever shorten the lease. Every input that can
//! commit carries its own reading and checks the lease first (`Durable` too: a local fsync
//! that completes after the lease ended commits nothing, since the application answers the
//! reads that follow a write once the write commits).
//!
//! # Reads
//!
//! A lease read (`Input::Read`, the app API's `Read`) writes nothing. A primary holding its
//! lease answers `ReadIndex { lsn }` with `lsn = max(commit_lsn, epoch_start_lsn)`; the
//! application answers the read from its state once it has applied every record through
//! `lsn`. That answer is linearizable (it reflects every write acknowledged before the read
//! arrived, and only committed writes):
//!
//! 1. When the core answers (true time `t`, which lies between the read's arrival and the
//!    application's answer), this node holds its lease, so no primary of a higher epoch
//!    exists (above, 5). A write acknowledged before `t` was committed either in this epoch,
//!    by this node, at or below `commit_lsn`, or in an earlier epoch: then its record is in
//!    this primary's log (it was elected with every committed record, invariant 1), below
//!    the epoch start. Either way it is at or below `lsn`.
//! 2. The application applies only committed records, in LSN order, so the state it answers
//!    from holds every record through `lsn` of the one committed history, and nothing that
//!    was not committed before it answered.
//! 3. Reads in real-time order see non-decreasing LSNs: a later read on this primary gets a
//!    commit LSN at least as high; on a later primary, at least its epoch start, which is
//!    above every record in any earlier primary's log that could have been committed.
//!
//! Until its epoch-start record commits, a new primary's `commit_lsn` may lag what the
//! previous primary acknowledged (a backup learns the commit LSN a heartbeat late): hence
//! `max` with the epoch start, not `commit_lsn` alone (`TestKnobs::skip_read_epoch_start`
//! takes it away, and the simulator's read check catches it). If the epoch start never
//! commits (this node loses its role first) the application waits for an LSN that may hold
//! another primary's record; point 2 still holds, and the driver gives up once the role
//! report says the epoch changed. A switchover's target may stand without waiting out the
//! lease, but only after `TimeoutNow`, and the old primary steps down in the same step that
//! sends it: it answers no read after that.

use super::{Action, Core, Rejection, Role, Time};

impl Core {
    /// Until when (local clock) the lease holds: the majority-th latest acknowledged send time
    /// (counting our own if we are a voter) plus the lease. `None` when this node alone is a
    /// majority (the lease never lapses).
    pub(super) fn lease_until(&self) -> Option<Time> {
        self.majority_latest(|peer| peer.lease_end)
    }

    /// The majority-th latest of `at` over the voters (counting this node, if a voter, as
    /// the latest of all); [`Time::ZERO`] if too few voters have one, `None` when this node
    /// alone is a majority.
    fn majority_latest(&self, at: impl Fn(&super::state::Peer) -> Option<Time>) -> Option<Time> {
        let members = self.members();
        // Acknowledgements needed besides our own, which counts only if we are a voter (a
        // learner of the configuration may be primary: `election.rs`, `Core::may_stand`).
        let own = usize::from(members.is_voter(self.config.node_id));
        let needed = members.majority() - own;
        if needed == 0 {
            return None;
        }
        // At most 63 peers (MEMBERS_MAX): a fixed buffer, no allocation per step.
        let mut sent = [Time::ZERO; super::MEMBERS_MAX];
        let mut count = 0;
        for peer in self
            .st
            .peers
            .iter()
            .filter(|peer| members.is_voter(peer.id))
        {
            if let Some(at) = at(peer) {
                sent[count] = at;
                count += 1;
            }
        }
        if count < needed {
            return Some(Time::ZERO);
        }
        let acks = &mut sent[..count];
        acks.sort_unstable_by(|a, b| b.cmp(a));
        Some(acks[needed - 1])
    }

    /// Until when (local clock) this node may answer reads as primary: a reply produced by
    /// the application before that moment reflects every acknowledged write and no other
    /// primary's (module docs, "Reads"), which the client port checks before it releases a
    /// reply in follow mode. `None` when it may not serve at all (not primary, or a
    /// witness); [`Time::MAX`] when no lease is needed (this node alone is a majority, or
    /// the unsafe test knob that skips the lease). The shell publishes it after every step.
    pub fn serving_until(&self) -> Option<Time> {
        if self.st.role != Role::Primary || self.config.witness {
            return None;
        }
        let end = self.lease_end();
        (self.st.now < end).then_some(end)
    }

    /// Until when the lease holds (local clock): [`Time::MAX`] when none is needed (this
    /// node alone is a majority, or the unsafe test knob that skips the lease).
    fn lease_end(&self) -> Time {
        if self.config.unsafe_testing.skip_lease {
            return Time::MAX;
        }
        self.lease_until().unwrap_or(Time::MAX)
    }

    pub(super) fn lease_valid(&self) -> bool {
        self.st.now < self.lease_end()
    }

    /// `Input::Read` (module docs, "Reads"). `lease_check` ran first in this step.
    pub(super) fn on_read(&mut self, out: &mut Vec<Action>) {
        if self.st.role != Role::Primary {
            out.push(Action::ReadRefused {
                reason: Rejection::NotPrimary {
                    primary: self.st.primary,
                },
            });
            return;
        }
        if self.config.witness {
            // A witness serves nobody: it hands over as soon as it can (`health.rs`).
            out.push(Action::ReadRefused {
                reason: Rejection::SwitchoverInProgress,
            });
            return;
        }
        assert!(self.lease_valid(), "serving a read without a lease");
        let lsn = if self.config.unsafe_testing.skip_read_epoch_start {
            self.st.commit_lsn
        } else {
            self.st.commit_lsn.max(self.st.epoch_start_lsn)
        };
        out.push(Action::ReadIndex {
            lsn,
            epoch: self.st.epoch,
        });
    }

    /// Steps a primary whose lease lapsed down to backup. Runs before every input that carries
    /// a clock reading, so nothing that needs the lease (a proposal served, a commit, a read
    /// answered) is done on an expired one. The two inputs without a reading
    /// (`MetaPersisted`, `SnapshotSent`) may still send appends: records of this epoch, a
    /// commit LSN already reached and a learner's promotion bound (which rests on
    /// `promote_through`, not on the lease), all of which a backup of a later epoch refuses.
    pub(super) fn lease_check(&mut self, out: &mut Vec<Action>) {
        match self.st.role {
            Role::Primary => {
                if !self.lease_valid() {
                    let acked_sent_ago = self
                        .majority_latest(|peer| peer.lease_sent_at)
                        .filter(|&sent| sent != Time::ZERO)
                        .map(|sent| self.st.now.saturating_since(sent));
                    out.push(Action::LeaseLapsed {
                        lease: self.lease,
                        acked_sent_ago,
                    });
                    self.step_down(out);
                }
            }
            Role::Backup | Role::Candidate => {}
        }
    }
}
