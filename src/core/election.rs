//! Elections: pre-vote, vote, candidacy and promotion.
//!
//! 1. A backup that has not heard from a primary for `failover_timeout` + jitter asks every
//!    peer "would you vote for me in epoch + 1?" (pre-vote). Nothing changes or is persisted.
//!    A peer says yes only if it too has not heard from a live primary within
//!    `failover_timeout` and the asker's log is at least as up to date as its own. So a node
//!    that is cut off, or rejoins after a partition, never raises the epoch and never deposes
//!    a healthy primary: the primary's backups hear from it and say no.
//! 2. With a majority of yeses (its own included) it raises its epoch, votes for itself,
//!    persists both, and only then asks for votes.
//! 3. A voter grants at most one vote per epoch, only to a candidate whose log (last epoch,
//!    last LSN) is at least as up to date as its own, only if it has not heard from a live
//!    primary within `failover_timeout` (except for a switchover's hand-over, see
//!    `switchover.rs`), and replies only after the vote is persisted. Granting restarts the
//!    voter's wait, as hearing from a primary does: the new primary's lease counts on it.
//! 4. With a majority of persisted votes the candidate is primary: it appends the
//!    epoch-start record and starts shipping. Votes count only until the candidacy's election
//!    deadline (`failover_timeout` + jitter after it started): a candidacy ends then, won or not.
//!
//! # Who stands first
//!
//! Two backups that stand at once split the votes and both wait again: that is most of a
//! failover's tail. So a primary names in every append the backup it would hand over to now
//! (`Append::successor`: heard from within the failover timeout, may stand, a live
//! application first, then the most up to date, the highest priority, the lowest id). Should
//! the primary go quiet, that backup stands after `T + J/4`, and every other one after
//! `T + J/2` plus a random part of the remaining `J/2`: the successor's pre-vote and vote
//! round trips are over before anyone else stands, unless it died with the primary. Its
//! `J/4` is for the granters: each refuses a pre-vote until `T` has passed on its own clock
//! since the primary's last append reached it, and those appends arrive at slightly
//! different times and clocks run at slightly different rates; standing at `T` exactly, the
//! successor was often refused and waited a whole `T` more. In the simulator (`SIM_REPORT=1`,
//! 3,000 seeds each of 3 and 5 voters, `T` = 500 ms, `J` = 200 ms) a clean failover's median
//! went from 614 / 589 ms to 582 / 576 ms and its p99 from 1,148 / 1,121 ms to 741 / 718 ms.
//! The nomination is used once: a pre-vote that starts clears it, so a failed candidacy
//! retries with the full random jitter. Every deadline stays within `T + J` of the last
//! contact, which the quarantine below relies on; safety does not depend on who stands.
//!
//! # A fresh data dir
//!
//! A node whose data dir was lost (a replaced machine, a wiped disk) starts with no epoch and
//! no vote. It may have voted for candidate A in epoch E just before; if it now voted for B in
//! E, A and B could both be elected in E. So a node that starts fresh (`Start::Fresh`) neither
//! votes nor pre-votes, nor stands, nor accepts a hand-over, until its clock has advanced the
//! quarantine `Q = 2 * (T + J) + m` ([`Config::fresh_quarantine`](super::Config::fresh_quarantine);
//! `T` the failover timeout, `J` the election jitter, `m` the drift margin) since it started.
//! It replicates as usual meanwhile: only its votes are held back.
//!
//! Why `Q` is long enough, with clock rates within `1 ± rho` of true time as in `lease.rs`:
//!
//! 1. The node voted for A in E before it lost its disk, so before it restarted (true time `R`).
//! 2. Another candidate B of E counts votes only until its own clock has advanced `T + J` from
//!    when it stood (step 4 above): at most `(T + J) / (1 - rho)` of true time. A candidacy of
//!    E under way at `R` therefore ends by `R + (T + J) / (1 - rho)`.
//! 3. The fresh node grants nothing until its clock has advanced `Q` from `R`: true time at
//!    least `R + Q / (1 + rho)`.
//! 4. `Q / (1 + rho) >= (T + J) / (1 - rho)` holds for any `rho` the lease tolerates
//!    (`rho <= m / (2T - m)`, so `(1 + rho) / (1 - rho) <= T / (T - m) < 2`): the factor 2
//!    covers it with room to spare, and `m` adds to it. So no candidacy that was under way when
//!    the node lost its disk can still count a vote from it.
//! 5. A candidacy of E that starts after `R` needs a candidate still at epoch E - 1. Once A is
//!    primary, its appends carry E to every node it reaches, and those stand for E + 1 or
//!    later. The quarantine does not cover a candidate cut off from A (and from every node
//!    that learned E) until the fresh node's quarantine is over: losing a disk is a failure,
//!    and that case adds a second one. Nor does it make the lost copy of the log come back:
//!    a fresh node's empty log lets it vote for any candidate once its quarantine is over, so a
//!    committed record that had only one other copy is safe only while that copy's node
//!    takes part in the next election (README, "A new or wiped data directory").
//!
//! The shell keeps the quarantine across restarts: a node that restarts before it ended starts
//! fresh again, so the wait is always measured from a start at or after the loss. The founding
//! members of a new cluster (`--initial-cluster-state new`) wait it out as well: an empty
//! data dir cannot tell a founding start from a wiped one.
//!
//! # Learners
//!
//! The quarantine says nothing about the log. A committed record may have had only one copy
//! besides the primary's; if that copy's disk is lost and the node votes again with an empty
//! or shortened log, it can elect a candidate that lacks the record. So a node that cannot
//! vouch for its log (a new or wiped data dir joining an existing cluster, a recovery that cut
//! more than a provably torn tail, a restart after an fsync failure) is a **learner**:
//!
//! 1. A learner replicates and acknowledges like any backup, but grants no vote or pre-vote,
//!    never stands, and takes no hand-over. Its responses carry its nonce
//!    (`AppendResponse::learner`), and the primary counts them neither towards commit nor
//!    towards its lease. The flag is persisted, so a learner that restarts is one again.
//! 2. When the primary first hears a learner's nonce it notes its own last LSN, `F`. Holding
//!    its lease, it tells the learner to vote (`Append::promote`, echoing the nonce, with
//!    `promote_through = F`) once the learner's durable, matching log reaches `F`. The learner
//!    checks the same of its own log (durable, and verified against this primary, through
//!    `F`) and only then stops being a learner.
//!
//! Why every record acknowledged to a client stays in every later primary's log (invariant 1)
//! with learners about. Write `S` for a record's commit set (the primary and the
//! `sync_replicas` voters whose durable acknowledgement committed it) and `M` for the voters
//! that elect a later primary; `|S| + |M| > n`, so they share a node `Y`.
//!
//! - `Y` held the record durably when it acknowledged it. If it lost it since (a wipe, a cut
//!   tail, an fsync failure), it restarted as a learner, and a learner's vote is never
//!   granted; so as a voter in `M`, `Y` either still holds it or was promoted after the loss.
//! - A promotion came from a primary `P` holding its lease when it sent it, so no primary of a
//!   later epoch had been elected then, and `P`'s log held every record acknowledged so far
//!   (earlier primaries' by induction, and its own). Those acknowledged before `P` first heard
//!   the nonce (true time `h`) are at or below `F`, and the learner holds them all durably.
//!   Those committed after `h` did not count this run of the node: it was a learner, and
//!   reported so, from its start until the promotion arrived (a late or duplicated promotion
//!   changes nothing). One exception is not a hole: an acknowledgement from an *earlier* run
//!   of the node, sent as a voter before it lost its disk and delivered late, may count after
//!   `h`. It acknowledges a record that run held then, which `P` had sent it, so one at or
//!   below `F`: the promoted run holds it again. (Checking against `P`'s commit LSN instead of
//!   `F` would promote a run that lacks it, and a later election could lose it.) The nonce
//!   ties a promotion to one run of the node, so one meant for a run that has since lost its
//!   disk is ignored.
//! - So `Y` holds the record, and by the up-to-date rule so does the candidate `M` elected.
//!
//! A node whose votes were lost may also have voted, before the loss, in an epoch above the
//! one its promoter is in, for a candidacy still under way. The quarantine above still covers
//! that: a quarantined node reports itself a learner, so neither its votes nor its
//! acknowledgements (which would renew a lease that its forgotten vote contradicts) count
//! until every candidacy that could hold its old vote is over.
//!
//! A learner that is never promoted (no primary can be elected without it) keeps the cluster
//! waiting rather than risk a committed record: that is the point. A founding member (its data
//! dir created empty, for a new cluster) that holds nothing yet turns learner the moment it
//! hears of a cluster that has a log (`Core::founding_check`: during its quarantine any append
//! or append response; at any time a vote request from a node with a log, or an append from
//! a primary it did not vote for): its empty data dir may be a wiped one started with
//! `--initial-cluster-state new` by mistake.

use wal::{Epoch, Lsn, NodeId};

use super::state::{Election, Peer, Phase};
use super::{Action, Core, Health, Message, Role, Time};

impl Core {
    /// Whether this node heard from a live primary (or is one) within `failover_timeout`.
    /// Such a node refuses to vote, which is what keeps the primary's lease sound.
    pub(super) fn heard_from_primary_recently(&self) -> bool {
        match self.st.role {
            Role::Primary => true,
            Role::Backup | Role::Candidate => {
                self.st.now < self.refusal_contact() + self.config.failover_timeout
            }
        }
    }

    /// The contact a backup's refusal runs from: its last contact with a primary, or its
    /// start's refusal if that runs longer. A contact after a restart must not shorten the
    /// refusal the node's earlier run promised: with a failover timeout shortened at the
    /// restart, a primary still counts that run's answers towards its lease for the longer
    /// one.
    pub(super) fn refusal_contact(&self) -> Time {
        self.st
            .last_primary_contact
            .map_or(self.st.start_contact, |contact| {
                contact.max(self.st.start_contact)
            })
    }

    /// Whether this node started with a fresh data dir and has not yet waited out its
    /// quarantine: it then neither votes, pre-votes nor stands (see the module docs).
    pub(super) fn quarantined(&self) -> bool {
        self.st.quarantine_until.is_some()
    }

    /// Whether this node counts towards commit and the lease and may stand: neither a
    /// learner nor quarantined (module docs), and a voter of its own latest configuration.
    /// Granting a vote asks less ([`Core::may_vote`]).
    pub(super) fn voter(&self) -> bool {
        !self.learner() && !self.quarantined() && self.members().is_voter(self.config.node_id)
    }

    /// Whether this node may stand for election: it may vote ([`Core::may_vote`]) and is a
    /// member of its own latest configuration, a voter or a learner of it. A learner of the
    /// configuration (not a learner by its start) holds a log it can vouch for, and may be the
    /// only node whose log a majority of the voters would elect: records of a primary whose
    /// configuration's change promoting this node was then lost, say. Its own vote counts only
    /// if it is a voter (the candidate counts voters of its latest configuration alone), so it
    /// needs a majority of the voters besides itself (members.rs, rule 3). A node outside its
    /// latest configuration (removed) does not stand.
    pub(super) fn may_stand(&self) -> bool {
        self.may_vote() && self.members().contains(self.config.node_id)
    }

    /// Whether this node may grant a (pre-)vote: neither a learner nor quarantined. Its own
    /// configuration is not consulted: the candidate counts the vote in the candidate's latest
    /// configuration (`members.rs`, rule 3), and a learner made a voter by a config record
    /// that has not reached it yet must be able to vote for a candidate that holds the record,
    /// or a cluster whose other voters cannot make a majority without it waits for ever (Raft
    /// servers answer requests without consulting their configurations, Ongaro's thesis §4.1).
    pub(super) fn may_vote(&self) -> bool {
        !self.learner() && !self.quarantined()
    }

    /// A learner by its start (module docs), or promoted but not yet durably so.
    pub(super) fn learner(&self) -> bool {
        self.st.learner || self.st.learner_on_disk
    }

    /// What this node puts in `AppendResponse::learner`: zero for a voter, else its nonce.
    pub(super) fn learner_report(&self) -> u64 {
        if self.voter() {
            0
        } else {
            self.st.learner_nonce
        }
    }

    /// A founding member (its data dir created empty for a new cluster, a voter, nothing in
    /// its log yet) that hears of a cluster that already has a log turns learner: its empty
    /// data dir may be a wiped one (module docs, "Learners").
    ///
    /// While its quarantine runs, any append or append response is such news (no founding
    /// member has voted yet, so no primary of a new cluster exists), and so is a vote or
    /// pre-vote request from a candidate with a log. After it, until its log holds a record:
    ///
    /// - a vote or pre-vote request from a candidate with a log. An empty log passes the
    ///   up-to-date check against any candidate, and a wiped node's vote would elect one
    ///   that lacks records it acknowledged before the wipe.
    /// - an append from a primary it did not vote for in that primary's epoch. Caught up
    ///   from it, the node would count towards commit and votes with part of a log it may
    ///   have held whole before the wipe. A founding member that voted for the first primary
    ///   was part of the majority that elected it, which stays a majority of voters; one
    ///   that did not is promoted like any learner once it holds what the primary committed.
    pub(super) fn founding_check(
        &mut self,
        from: NodeId,
        message: &Message,
        out: &mut Vec<Action>,
    ) {
        if !self.st.founding {
            return;
        }
        if self.st.learner
            || self.st.log.last_lsn > Lsn::ZERO
            || self.st.log.snapshot_lsn > Lsn::ZERO
        {
            self.st.founding = false;
            return;
        }
        if self.config.unsafe_testing.skip_learner {
            return;
        }
        let quarantined = self.quarantined();
        let cluster_exists = match *message {
            Message::Append(ref append) => {
                quarantined || !(self.st.epoch == append.epoch && self.st.voted_for == Some(from))
            }
            Message::AppendResponse(_) => quarantined,
            Message::PreVoteRequest {
                last_lsn,
                last_epoch,
                ..
            }
            | Message::VoteRequest {
                last_lsn,
                last_epoch,
                ..
            } => last_lsn > Lsn::ZERO || last_epoch > Epoch::ZERO,
            Message::PreVoteResponse { .. }
            | Message::VoteResponse { .. }
            | Message::TimeoutNow { .. } => false,
        };
        if cluster_exists {
            self.st.founding = false;
            self.st.learner = true;
            self.persist_meta(out);
            out.push(Action::BecameLearner {
                reason: super::LearnerReason::HeardOfCluster,
            });
        }
    }

    /// A learner's promotion (module docs, step 2), checked against its own log: it holds,
    /// durably and verified against this primary, everything through `through`.
    pub(super) fn learner_promote(&mut self, promote: u64, through: Lsn, out: &mut Vec<Action>) {
        if promote == 0 || promote != self.st.learner_nonce || !self.st.learner {
            return;
        }
        let holds = self.st.verified_lsn >= through && self.st.log.durable_lsn >= through;
        if !holds {
            return;
        }
        self.st.learner = false;
        self.persist_meta(out);
        out.push(Action::Promoted { through });
    }

    /// Ends the quarantine once the clock has reached its end.
    pub(super) fn quarantine_check(&mut self, out: &mut Vec<Action>) {
        if let Some(until) = self.st.quarantine_until {
            if self.st.now >= until {
                self.st.quarantine_until = None;
                out.push(Action::QuarantineEnded);
            }
        }
    }

    /// A quarantined node's election deadline: the end of the quarantine plus a fresh jitter,
    /// so that the nodes of a new cluster, all fresh, do not all stand at the same moment.
    pub(super) fn quarantine_defer_deadline(&mut self) {
        if let Some(until) = self.st.quarantine_until {
            let jitter_ns = self.config.election_jitter.as_nanos().min(u64::MAX as u128) as u64;
            let jitter = std::time::Duration::from_nanos(self.rng.below(jitter_ns));
            self.st.election_deadline = self.st.election_deadline.max(until + jitter);
        }
    }

    /// Raft's up-to-date rule: a higher last epoch wins; with equal epochs, the longer log.
    fn election_log_ok(&self, last_lsn: Lsn, last_epoch: Epoch) -> bool {
        if self.config.unsafe_testing.skip_vote_log_check {
            return true;
        }
        (last_epoch, last_lsn) >= (self.st.log.last_epoch(), self.st.log.last_lsn)
    }

    pub(super) fn election_start_pre_vote(&mut self, out: &mut Vec<Action>) {
        let now = self.st.now;
        // The primary's nomination is used up: a retry waits a full random jitter, so that
        // a successor whose candidacy failed does not collide with it again.
        self.st.successor = None;
        self.reset_election_deadline(now);
        self.st.role = Role::Backup;
        self.st.primary = None;
        let own = Core::member_bit(self.config.node_id);
        let epoch = self.st.epoch.next();
        self.st.election = Some(Election {
            phase: Phase::PreVote,
            epoch,
            granted: own,
            persist_seq: 0,
            requested_at: None,
            voter_epoch_max: Epoch::ZERO,
            defer_to: None,
            vote_wait_min: std::time::Duration::MAX,
        });
        let members = self.members();
        if members.count_voters(own) >= members.majority() {
            self.election_start_vote(false, out);
            return;
        }
        let message = Message::PreVoteRequest {
            epoch,
            last_lsn: self.st.log.last_lsn,
            last_epoch: self.st.log.last_epoch(),
        };
        for to in self.other_voters() {
            out.push(Action::Send { to, message });
        }
    }

    /// Raises the epoch, votes for itself, and asks for votes once that is persisted.
    pub(super) fn election_start_vote(&mut self, transfer: bool, out: &mut Vec<Action>) {
        assert!(
            self.may_stand(),
            "a node that may not stand stands for election"
        );
        let now = self.st.now;
        self.reset_election_deadline(now);
        let reported = self
            .st
            .election
            .as_ref()
            .map_or(Epoch::ZERO, |election| election.voter_epoch_max);
        self.st.epoch = self.st.epoch.max(reported).next();
        self.st.voted_for = Some(self.config.node_id);
        self.st.role = Role::Candidate;
        self.st.primary = None;
        self.st.verified_lsn = Lsn::ZERO;
        self.st.acked_durable_lsn = Lsn::ZERO;
        if !self.config.unsafe_testing.old_lease_echo {
            self.st.primary_sent_at = std::time::Duration::ZERO;
        }
        let seq = self.persist_meta(out);
        self.st.election = Some(Election {
            phase: Phase::Vote,
            epoch: self.st.epoch,
            granted: Core::member_bit(self.config.node_id),
            persist_seq: seq,
            requested_at: None,
            voter_epoch_max: Epoch::ZERO,
            defer_to: None,
            vote_wait_min: std::time::Duration::MAX,
        });
        let message = Message::VoteRequest {
            epoch: self.st.epoch,
            last_lsn: self.st.log.last_lsn,
            last_epoch: self.st.log.last_epoch(),
            transfer,
        };
        let voters: Vec<NodeId> = self.other_voters().collect();
        for to in voters {
            self.send_after_persist(seq, to, message, out);
        }
        // With a single member the own vote is the majority; it counts once persisted.
        self.election_on_persisted(out);
    }

    pub(super) fn on_pre_vote_request(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        last_lsn: Lsn,
        last_epoch: Epoch,
        out: &mut Vec<Action>,
    ) {
        let would_vote = epoch > self.st.epoch
            || (epoch == self.st.epoch
                && self.st.voted_for.is_none()
                && self.st.role == Role::Backup);
        // A paused node grants no pre-vote: no automatic failover while paused (`health.rs`).
        let granted = would_vote
            && self.may_vote()
            && !self.st.paused
            && !self.heard_from_primary_recently()
            && self.election_log_ok(last_lsn, last_epoch);
        let same_log = (last_epoch, last_lsn) == (self.st.log.last_epoch(), self.st.log.last_lsn);
        out.push(Action::Send {
            to: from,
            message: Message::PreVoteResponse {
                epoch,
                granted,
                voter_epoch: self.st.epoch,
                health: self.health(),
                same_log,
            },
        });
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_pre_vote_response(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        granted: bool,
        voter_epoch: Epoch,
        health: Health,
        same_log: bool,
        out: &mut Vec<Action>,
    ) {
        if voter_epoch > self.st.epoch && !granted {
            // We are behind: our candidacy cannot succeed in an epoch that is already past.
            self.adopt_epoch(voter_epoch, out);
            return;
        }
        let bit = Core::member_bit(from);
        let members = self.members();
        let better = self.better_fit(health, same_log);
        let Some(election) = self.st.election.as_mut() else {
            return;
        };
        if election.phase != Phase::PreVote || election.epoch != epoch || !granted {
            return;
        }
        election.granted |= bit;
        // A granter already in the epoch asked about has not voted in it, but some node may
        // have: stand above every epoch a granter reports, never in one already in use.
        election.voter_epoch_max = election.voter_epoch_max.max(voter_epoch);
        if better && election.defer_to.is_none() {
            election.defer_to = Some(from);
        }
        if members.count_voters(election.granted) >= members.majority() {
            let defer_to = election.defer_to;
            if !self.election_defer(defer_to, out) {
                self.election_start_vote(false, out);
            }
        }
    }

    pub(super) fn on_vote_request(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        last_lsn: Lsn,
        last_epoch: Epoch,
        transfer: bool,
        out: &mut Vec<Action>,
    ) {
        let refuse = |core: &Core, out: &mut Vec<Action>| {
            out.push(Action::Send {
                to: from,
                message: Message::VoteResponse {
                    epoch: core.st.epoch,
                    granted: false,
                    vote_wait: core.config.failover_timeout,
                },
            });
        };
        if epoch < self.st.epoch {
            refuse(self, out);
            return;
        }
        if !self.may_vote() {
            // A learner may lack committed records; a fresh data dir may have voted in
            // `epoch` and forgotten it.
            refuse(self, out);
            return;
        }
        // A hand-over vote skips the refusal only on a node that is not itself primary: the
        // primary that sent `TimeoutNow` stepped down before sending it.
        let lease_exempt = transfer && self.st.role != Role::Primary;
        if self.heard_from_primary_recently() && !lease_exempt {
            // Neither adopt the epoch nor vote: a live primary's lease depends on it.
            refuse(self, out);
            return;
        }
        if epoch > self.st.epoch {
            self.adopt_epoch(epoch, out);
        }
        let free = match self.st.voted_for {
            None => true,
            Some(id) => id == from,
        };
        if !free || !self.election_log_ok(last_lsn, last_epoch) {
            refuse(self, out);
            return;
        }
        let already = self.st.voted_for == Some(from);
        self.st.voted_for = Some(from);
        let now = self.st.now;
        self.st.last_primary_contact = Some(now);
        self.reset_election_deadline(now);
        // Persist the vote before the reply leaves. A repeated request (duplicate or retry)
        // waits for the same persist as the first one.
        let seq = if already {
            self.st.persists_requested
        } else {
            self.persist_meta(out)
        };
        let reply = Message::VoteResponse {
            epoch,
            granted: true,
            vote_wait: self.config.failover_timeout,
        };
        self.send_after_persist(seq, from, reply, out);
    }

    pub(super) fn on_vote_response(
        &mut self,
        from: NodeId,
        epoch: Epoch,
        granted: bool,
        vote_wait: std::time::Duration,
        out: &mut Vec<Action>,
    ) {
        if epoch > self.st.epoch {
            self.adopt_epoch(epoch, out);
            return;
        }
        if !granted || epoch != self.st.epoch || self.st.role != Role::Candidate {
            return;
        }
        let bit = Core::member_bit(from);
        if let Some(election) = self.st.election.as_mut() {
            election.granted |= bit;
            election.vote_wait_min = election.vote_wait_min.min(vote_wait);
        }
        self.election_check_won(out);
    }

    /// A switchover's hand-over: the primary of `epoch` stepped down and asks us to stand.
    pub(super) fn on_timeout_now(&mut self, from: NodeId, epoch: Epoch, out: &mut Vec<Action>) {
        if epoch != self.st.epoch
            || self.st.role != Role::Backup
            || self.st.primary != Some(from)
            || !self.can_stand()
            || self.config.witness
        {
            return;
        }
        self.election_start_vote(true, out);
    }

    /// After a persist: note when our vote requests left, and see if we have won.
    pub(super) fn election_on_persisted(&mut self, out: &mut Vec<Action>) {
        let done = self.st.persists_done;
        let now = self.st.now;
        if let Some(election) = self.st.election.as_mut() {
            if election.phase == Phase::Vote
                && election.persist_seq <= done
                && election.requested_at.is_none()
            {
                // The requests left in this step, at the latest clock reading we have, which is
                // at or before the true send time: the lease counted from it is conservative.
                election.requested_at = Some(now);
            }
        }
        self.election_check_won(out);
    }

    fn election_check_won(&mut self, out: &mut Vec<Action>) {
        if self.st.role != Role::Candidate {
            return;
        }
        let Some(election) = self.st.election.as_ref() else {
            return;
        };
        let Some(requested_at) = election.requested_at else {
            return;
        };
        let members = self.members();
        if members.count_voters(election.granted) < members.majority() {
            return;
        }
        // The candidacy is over at its deadline: the fresh-data-dir quarantine (module docs)
        // counts on no vote being counted later.
        if self.st.now >= self.st.election_deadline {
            return;
        }
        // The votes are our first lease (see `election_become_primary`). Votes that arrive
        // after that lease ran out (long network delays) elect nobody: other nodes may have
        // voted in a later epoch since, and a primary without a lease must not even call
        // itself primary. The candidacy times out and starts over.
        if self.st.now >= self.votes_lease_end(election, requested_at)
            && !self.config.unsafe_testing.skip_lease
        {
            return;
        }
        self.election_become_primary(out);
    }

    /// Until when the votes of `election`, requested at `requested_at`, hold the lease: every
    /// vote for as long as the granter that waits least keeps refusing (`Config::lease_for`).
    fn votes_lease_end(&self, election: &Election, requested_at: super::Time) -> super::Time {
        requested_at + self.config.lease_for(election.vote_wait_min)
    }

    fn election_become_primary(&mut self, out: &mut Vec<Action>) {
        let election = self
            .st
            .election
            .take()
            .expect("a candidate has an election");
        assert_eq!(
            election.epoch, self.st.epoch,
            "winning an election of another epoch"
        );
        let requested_at = election
            .requested_at
            .expect("won only after the requests left");
        self.st.role = Role::Primary;
        self.st.primary = Some(self.config.node_id);
        self.st.last_primary_contact = None;
        // 1. The epoch-start record: commits every earlier record once it is committed itself
        //    (the current-epoch rule), even if no client writes.
        let lsn = self.st.log.last_lsn.next();
        self.st.log.append(lsn, lsn, self.st.epoch);
        self.st.epoch_start_lsn = lsn;
        self.st.bytes.restart_after(lsn);
        out.push(Action::WriteEpochStart {
            lsn,
            epoch: self.st.epoch,
        });
        // 2. Peers, every member of the latest configuration but this node: probe from the
        //    epoch-start record. Each voter refuses other candidates for `failover_timeout`
        //    after granting, so its vote renews our lease like an acknowledged heartbeat sent
        //    when the vote requests left.
        let now = self.st.now;
        self.st.peers.clear();
        let members = self.members();
        let vote_end = self.votes_lease_end(&election, requested_at);
        for id in members.ids_owned() {
            if id == self.config.node_id {
                continue;
            }
            let mut peer = Peer::new(id, lsn, now);
            if election.granted & Core::member_bit(id) != 0 {
                peer.lease_sent_at = Some(requested_at);
                peer.lease_end = Some(vote_end);
            }
            self.st.peers.push(peer);
        }
        //    And a node that the latest configuration removed: told of its removal as the
        //    primary that wrote it would have, had it lived to (`members.rs`, "Removed
        //    nodes"); nothing goes to it before the epoch-start record commits the removal.
        if let Some((removal, removed)) = self.st.log.configs.removed_by_latest() {
            let give_up = now + self.config.failover_timeout * super::members::DEPARTING_TIMEOUTS;
            for id in removed.ids_owned() {
                if id != self.config.node_id {
                    let mut peer = Peer::new(id, lsn, now);
                    peer.departing = Some((removal, give_up));
                    self.st.peers.push(peer);
                }
            }
        }
        self.departing_report(out);
        self.st.members_reported = Some(self.st.log.configs.latest());
        // 3. A cluster still on its seed writes the seed's record, so that the log holds the
        //    configuration from now on (`members.rs`). No change: safe at any time.
        if self.st.log.configs.latest().0 == Lsn::ZERO {
            self.members_write(members, out);
        }
        // Every peer is new, probing with no probe out: this ships its probe, unless writing
        // the seed's record above already did (a heartbeat besides it would be redundant).
        for i in 0..self.st.peers.len() {
            self.replicate_to(i, false, out);
        }
        self.commit_advance_primary(out);
    }

    pub(super) fn member_bit(id: NodeId) -> u64 {
        super::Members::bit(id).unwrap_or(0)
    }
}
