//! Membership that changes while the cluster runs: the configuration is a record in the log.
//!
//! [`Members`] is a configuration: which node ids are members, and which of them vote. The
//! core keeps the configuration of every config record in its log (`Log::configs`), plus the
//! one in effect at the log's start (the snapshot's, or the seed from `--peers` before the
//! first config record). A node acts on the **latest configuration in its log**, committed or
//! not, from the moment the record is written, and falls back to the one before if a
//! truncation removes it: Raft's single-server changes (Ongaro's thesis, §4.1), chosen over
//! joint consensus because one change at a time needs no second kind of quorum anywhere in
//! the election, commit and lease rules.
//!
//! # The rules
//! 1. The primary of an epoch writes a config record only after a record of its own epoch is
//!    committed (its epoch-start record) and only while the latest configuration in its log
//!    is committed: at most one uncommitted change exists, and never one left over from an
//!    earlier primary that this one has not yet committed (the thesis's fix to the original
//!    single-server algorithm).
//! 2. A change adds or removes at most one voter (learners come and go freely: they count
//!    for nothing). The primary never removes itself; it hands over first.
//! 3. Every quorum is counted in the counting node's latest configuration: a candidate's
//!    votes, a primary's commit set (`sync_replicas` backups, recomputed for the voter count,
//!    and always a majority of it: `Config::sync_replicas_for`) and its lease. A node counts
//!    itself in these only as a voter of its own latest configuration. It votes unless a
//!    learner by its start or quarantined, whatever its configuration says: the candidate
//!    decides whether the vote counts, and a learner just made a voter by a record it has not
//!    received must be able to vote. A learner of its own latest configuration (not one by
//!    its start) may also stand, its own vote not counting (Ongaro's thesis, §4.2.2: a server
//!    outside its latest configuration may still be needed as leader): its log may hold
//!    records that the voters must not elect a node without (a primary's records that reached
//!    only it, the primary's disk then lost, while the change that made it a voter was cut
//!    from its log), and then no voter could be elected. Its quorums, a majority of the
//!    voters without itself, meet every other quorum as a voter's do. As primary it counts
//!    itself towards neither commit nor lease, and its first change makes it a voter (below).
//!    A node outside its latest configuration (removed) does not stand.
//!
//! # Why two primaries still cannot serve in one epoch, and committed records survive
//!
//! Write `C` for a configuration and `C'` for the next. Rule 2 makes every majority of the
//! voters of `C` meet every majority of the voters of `C'`: with `n` voters in `C` and `n + 1`
//! in `C'` (an add), `floor(n/2) + 1 + floor((n+1)/2) + 1 > n + 1`; a removal is the same pair
//! the other way round. Rule 1 makes the configurations in use at any moment at most two
//! consecutive ones: a primary writes `C''` only once `C'` is committed, so a majority of
//! `C'` holds `C'`, and by the up-to-date rule (`election.rs`) every later primary's log
//! holds it too, so no later candidate can still be counting in `C`. Among two consecutive
//! configurations every pair of quorums meets (each quorum is a majority of its
//! configuration, the commit set included: with an even voter count the static rule's
//! `voters - majority` backups would make it only a half, which meets every majority of its
//! own configuration but not of the one before), so the arguments of `election.rs` (one vote
//! per node per epoch), `commit.rs` (commit set meets every election quorum) and `lease.rs`
//! (the lease's majority meets every election's) go through unchanged: each needs only that
//! two quorums counted by two nodes share a voter. A new primary whose predecessor's last
//! change is still uncommitted commits it (with its epoch-start record) before writing its
//! own, which is rule 1's second half: without it, two primaries in turn could each add a
//! different voter to the same committed configuration, and their two configurations would
//! differ by two voters.
//!
//! # Removed nodes
//! The primary that writes a removal keeps the removed node among its peers
//! (`Peer::departing`). Once the removal is committed it ships the node the log through that
//! config record, and no further, with the commit LSN; once the node holds the record
//! durably, the primary lets it go. Acting on its latest configuration, the node then no
//! longer stands, and says so, instead of asking for pre-votes that every member refuses.
//!
//! Why only once committed: a removed node that holds its removal does not stand, so it must
//! never be needed to. Given the record before it is committed, its log could be more up to
//! date than the voters' that still count in the old configuration, where it is a voter: with
//! {1, 2, 4, 5} removing 5, record on 4 and 5 only, 4 losing it in a crash, 1 and 2 need 5's
//! vote and 5 refuses them for its longer log, but will not stand itself, and no one is
//! elected (the simulator found this). Committed, the record is on a majority of the new
//! configuration, whose voters elect among themselves without the removed node, and a voter
//! still counting in the old configuration lacks a committed record and cannot be elected
//! anyway. Nothing past the record is shipped, so the removed node's log never runs ahead of
//! that majority's.
//!
//! A removed node counts for nothing meanwhile (commit, lease, switchover and successor all
//! count the latest configuration's voters only), is never told to vote (`Append::promote`)
//! nor sent a snapshot (one that would need it is let go at once), and one that has not taken
//! its removal `DEPARTING_TIMEOUTS` failover timeouts after it was written (down, cut off) is
//! let go too. A primary elected with a removal as its latest configuration does the same
//! (`election_become_primary`): the primary that wrote it may have failed before the removed
//! node took the record, or before the record was committed, and the new one commits it with
//! its epoch-start record. It may tell a node that was told already (it is let go on its first
//! answer) or one long stopped (let go after the timeouts). Removals older than the latest
//! configuration are not told again: a removed node that missed every primary of its removal
//! learns nothing and keeps asking for pre-votes, refused.
//!
//! The simulator's `SIM_BREAK=members` switches rule 2 off (`skip_single_change`: a
//! promotion makes every learner a voter at once, and a change may follow the previous one
//! before it is committed) and its checker finds the resulting two primaries of one epoch or
//! the lost commit.

use wal::{Lsn, NodeId};

use super::MEMBERS_MAX;

/// How a member takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MemberRole {
    /// Votes, counts towards commit and the lease, and may stand.
    Voter,
    /// Replicates and acknowledges, counts for nothing, never stands: a node catching up
    /// before it becomes a voter.
    Learner,
}

/// A cluster configuration: node ids 1..=64 as bit sets, so that it is `Copy` and fits in a
/// message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Members {
    voters: u64,
    learners: u64,
}

impl Members {
    /// The bit of node `id`, or `None` outside 1..=64.
    pub fn bit(id: NodeId) -> Option<u64> {
        let n = id.get() as usize;
        (1..=MEMBERS_MAX).contains(&n).then(|| 1u64 << (n - 1))
    }

    /// Every id a voter.
    pub fn voters_of(ids: &[NodeId]) -> Option<Members> {
        let mut members = Members::default();
        for &id in ids {
            members = members.with(id, MemberRole::Voter)?;
        }
        Some(members)
    }

    /// The configuration from its two bit sets (as a config record's binary form holds them),
    /// or `None` if they overlap.
    pub fn from_bits(voters: u64, learners: u64) -> Option<Members> {
        (voters & learners == 0).then_some(Members { voters, learners })
    }

    pub fn voter_bits(&self) -> u64 {
        self.voters
    }

    pub fn learner_bits(&self) -> u64 {
        self.learners
    }

    /// `id` added with `role` (or moved to it); `None` for an id outside 1..=64.
    pub fn with(self, id: NodeId, role: MemberRole) -> Option<Members> {
        let bit = Members::bit(id)?;
        let (voters, learners) = (self.voters & !bit, self.learners & !bit);
        Some(match role {
            MemberRole::Voter => Members {
                voters: voters | bit,
                learners,
            },
            MemberRole::Learner => Members {
                voters,
                learners: learners | bit,
            },
        })
    }

    /// `id` removed (unchanged if it was not a member).
    pub fn without(self, id: NodeId) -> Members {
        let bit = Members::bit(id).unwrap_or(0);
        Members {
            voters: self.voters & !bit,
            learners: self.learners & !bit,
        }
    }

    pub fn role(&self, id: NodeId) -> Option<MemberRole> {
        let bit = Members::bit(id)?;
        if self.voters & bit != 0 {
            Some(MemberRole::Voter)
        } else if self.learners & bit != 0 {
            Some(MemberRole::Learner)
        } else {
            None
        }
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.role(id) == Some(MemberRole::Voter)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.role(id).is_some()
    }

    pub fn voter_count(&self) -> usize {
        self.voters.count_ones() as usize
    }

    pub fn len(&self) -> usize {
        (self.voters | self.learners).count_ones() as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Votes needed to win an election, and acknowledgements (the primary's own included)
    /// needed to hold the lease.
    pub fn majority(&self) -> usize {
        self.voter_count() / 2 + 1
    }

    /// How many voters among the set bits of `granted`.
    pub fn count_voters(&self, granted: u64) -> usize {
        (granted & self.voters).count_ones() as usize
    }

    /// Every member, voters and learners, in id order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        let all = self.voters | self.learners;
        (0..MEMBERS_MAX as u16)
            .filter(move |i| all & (1u64 << i) != 0)
            .map(|i| NodeId(i + 1))
    }

    /// The voters, in id order.
    pub fn voter_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.ids().filter(|&id| self.is_voter(id))
    }

    /// The voters, in id order, by value.
    pub fn voter_ids_owned(self) -> impl Iterator<Item = NodeId> {
        let voters = self.voters;
        (0..MEMBERS_MAX as u16)
            .filter(move |i| voters & (1u64 << i) != 0)
            .map(|i| NodeId(i + 1))
    }

    /// Every member, by value.
    pub fn ids_owned(self) -> impl Iterator<Item = NodeId> {
        let all = self.voters | self.learners;
        (0..MEMBERS_MAX as u16)
            .filter(move |i| all & (1u64 << i) != 0)
            .map(|i| NodeId(i + 1))
    }

    /// Whether going from `self` to `next` adds or removes at most one voter (rule 2).
    pub fn single_change_to(&self, next: &Members) -> bool {
        (self.voters ^ next.voters).count_ones() <= 1
    }
}

impl std::fmt::Display for Members {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for id in self.ids() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            match self.role(id) {
                Some(MemberRole::Learner) => write!(f, "{id}(learner)")?,
                _ => write!(f, "{id}")?,
            }
        }
        Ok(())
    }
}

/// Why a membership change was refused. Each is one clear line for the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembersRefusal {
    #[error("this node is not the primary")]
    NotPrimary,
    #[error("a switchover is in progress")]
    SwitchoverInProgress,
    #[error(
        "the previous membership change (or the new primary's first record) is not committed yet: one change at a time"
    )]
    ChangePending,
    #[error("a change may add or remove one voter at a time")]
    MoreThanOneVoter,
    #[error("the primary cannot remove or demote itself: hand over first")]
    RemovesPrimary,
    #[error("node {0} is not a member")]
    NotAMember(NodeId),
    #[error("node {0} is already a member")]
    AlreadyAMember(NodeId),
    #[error("node {0} is already a voter")]
    AlreadyAVoter(NodeId),
    #[error("node id {0} is outside 1..=64")]
    BadId(NodeId),
    #[error(
        "node {id} is not ready to vote: behind by {behind} records, not heard from recently, or still in its quarantine"
    )]
    NotCaughtUp { id: NodeId, behind: u64 },
    #[error(
        "the change would leave {reachable} reachable voters of {voters}, fewer than the majority of {majority}"
    )]
    NoQuorum {
        reachable: usize,
        voters: usize,
        majority: usize,
    },
}

/// What the operator asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MembersChange {
    /// A new member, as a learner; it becomes a voter on its own once caught up.
    AddLearner(NodeId),
    /// A learner becomes a voter now (it must be caught up).
    Promote(NodeId),
    /// A member leaves.
    Remove(NodeId),
    /// A member's peer address changes (the shell writes it; the voters stay as they are).
    SetAddr(NodeId),
}

impl MembersChange {
    pub fn node(&self) -> NodeId {
        match *self {
            MembersChange::AddLearner(id)
            | MembersChange::Promote(id)
            | MembersChange::Remove(id)
            | MembersChange::SetAddr(id) => id,
        }
    }
}

/// The configurations of the log: the one in effect at its start, then one per config record.
/// `entries[0]` is at or below `snapshot_lsn` (LSN 0: the seed from `--peers`); the others are
/// config records of the log, strictly increasing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Configs {
    pub entries: Vec<(Lsn, Members)>,
}

impl Configs {
    pub fn latest(&self) -> (Lsn, Members) {
        *self
            .entries
            .last()
            .expect("there is always a configuration")
    }

    /// The configuration in effect at `lsn` (the latest at or below it).
    pub fn at(&self, lsn: Lsn) -> (Lsn, Members) {
        let i = self.entries.partition_point(|&(at, _)| at <= lsn);
        self.entries[i.max(1) - 1]
    }

    /// The latest config record's LSN and the members it removed (none, or one: changes are
    /// single), if the log holds the configuration before it.
    pub fn removed_by_latest(&self) -> Option<(Lsn, Members)> {
        let [.., (_, before), (at, latest)] = self.entries[..] else {
            return None;
        };
        let removed = Members::from_bits(
            0,
            (before.voter_bits() | before.learner_bits())
                & !(latest.voter_bits() | latest.learner_bits()),
        )?;
        (!removed.is_empty()).then_some((at, removed))
    }

    /// The first config record in `first..=last`, if any.
    pub fn record_in(&self, first: Lsn, last: Lsn) -> Option<(Lsn, Members)> {
        let i = self.entries.partition_point(|&(at, _)| at < first);
        self.entries.get(i).copied().filter(|&(at, _)| at <= last)
    }

    pub fn push(&mut self, lsn: Lsn, members: Members) {
        assert!(
            lsn > self.latest().0,
            "config record {lsn} not after the last"
        );
        self.entries.push((lsn, members));
    }

    /// Drops the configurations of records after `keep_through`. Returns whether the latest
    /// changed.
    pub fn truncate_suffix(&mut self, keep_through: Lsn) -> bool {
        let before = self.entries.len();
        while self.entries.len() > 1 && self.latest().0 > keep_through {
            self.entries.pop();
        }
        self.entries.len() != before
    }

    /// The log now starts after `through`: the configuration in effect there becomes the
    /// first entry.
    pub fn truncate_prefix(&mut self, through: Lsn) {
        let keep = self.entries.partition_point(|&(at, _)| at <= through);
        if keep > 1 {
            self.entries.drain(..keep - 1);
        }
    }

    pub fn reset(&mut self, lsn: Lsn, members: Members) {
        self.entries.clear();
        self.entries.push((lsn, members));
    }

    pub fn validate(&self, snapshot_lsn: Lsn, last_lsn: Lsn) {
        assert!(!self.entries.is_empty(), "no configuration");
        assert!(
            self.entries[0].0 <= snapshot_lsn,
            "the first configuration ({}) is after the snapshot ({snapshot_lsn})",
            self.entries[0].0
        );
        for pair in self.entries.windows(2) {
            assert!(pair[0].0 < pair[1].0, "configurations not increasing");
            assert!(
                pair[1].0 > snapshot_lsn,
                "a config record inside the snapshot"
            );
        }
        assert!(
            self.latest().0 <= last_lsn.max(self.entries[0].0),
            "a configuration past the end of the log"
        );
        for &(_, members) in &self.entries {
            assert!(members.voter_count() >= 1, "a configuration without voters");
        }
    }
}

// The core's side: proposing a change, keeping the primary's peers in step with the
// configuration, and promoting a caught-up learner.

use super::state::Peer;
use super::{Action, Core, Role};

/// How many failover timeouts a primary keeps shipping to a removed node that has not taken
/// the record removing it ("Removed nodes"): one that is down or cut off is let go then.
pub(super) const DEPARTING_TIMEOUTS: u32 = 20;

impl Core {
    /// `Input::ProposeMembers`: the operator's change, checked against the rules.
    pub(super) fn on_propose_members(&mut self, change: MembersChange, out: &mut Vec<Action>) {
        match self.members_check_change(change) {
            Ok(next) => self.members_write(next, out),
            Err(reason) => out.push(Action::MembersRefused { reason }),
        }
    }

    /// The configuration `change` leads to, or why it may not be made now.
    fn members_check_change(&self, change: MembersChange) -> Result<Members, MembersRefusal> {
        if self.st.role != Role::Primary {
            return Err(MembersRefusal::NotPrimary);
        }
        if self.st.switchover.is_some() {
            return Err(MembersRefusal::SwitchoverInProgress);
        }
        let id = change.node();
        if Members::bit(id).is_none() {
            return Err(MembersRefusal::BadId(id));
        }
        let current = self.members();
        let next = match change {
            MembersChange::AddLearner(id) => {
                if current.contains(id) {
                    return Err(MembersRefusal::AlreadyAMember(id));
                }
                current.with(id, MemberRole::Learner)
            }
            MembersChange::Promote(id) => match current.role(id) {
                None => return Err(MembersRefusal::NotAMember(id)),
                Some(MemberRole::Voter) => return Err(MembersRefusal::AlreadyAVoter(id)),
                Some(MemberRole::Learner) if id == self.config.node_id => {
                    self.members_promotion(current, id)
                }
                Some(MemberRole::Learner) => {
                    let behind = self.members_behind(id);
                    if behind.is_none_or(|behind| behind > self.config.append_records_max) {
                        return Err(MembersRefusal::NotCaughtUp {
                            id,
                            behind: behind.unwrap_or(u64::MAX),
                        });
                    }
                    self.members_promotion(current, id)
                }
            },
            MembersChange::SetAddr(id) => {
                if !current.contains(id) {
                    return Err(MembersRefusal::NotAMember(id));
                }
                Some(current)
            }
            MembersChange::Remove(id) => {
                if !current.contains(id) {
                    return Err(MembersRefusal::NotAMember(id));
                }
                if id == self.config.node_id {
                    return Err(MembersRefusal::RemovesPrimary);
                }
                Some(current.without(id))
            }
        };
        let next = next.ok_or(MembersRefusal::BadId(id))?;
        self.members_may_change(&current, &next)?;
        Ok(next)
    }

    /// `current` with learner `id` a voter. With `TestKnobs::skip_single_change`, every
    /// learner becomes a voter at once: the only way a change can add more than one voter,
    /// which is what the knob lets the simulator show the danger of.
    fn members_promotion(&self, current: Members, id: NodeId) -> Option<Members> {
        if self.config.unsafe_testing.skip_single_change {
            return Members::from_bits(current.voter_bits() | current.learner_bits(), 0);
        }
        current.with(id, MemberRole::Voter)
    }

    /// Rules 1 and 2 (module docs), and that the new configuration's voters that answer
    /// are a majority of it.
    fn members_may_change(&self, current: &Members, next: &Members) -> Result<(), MembersRefusal> {
        let (latest_lsn, _) = self.st.log.configs.latest();
        // Every change names one node, so `current` and `next` never differ by more than one
        // voter: the knob breaks rule 2 by letting a change follow the previous one before
        // that is committed (the latest configuration is then two voters away from the
        // committed one).
        let skip_single_change = self.config.unsafe_testing.skip_single_change;
        let previous_pending = self.st.commit_lsn < latest_lsn && !skip_single_change;
        if self.st.commit_lsn < self.st.epoch_start_lsn || previous_pending {
            return Err(MembersRefusal::ChangePending);
        }
        if !current.single_change_to(next) && !skip_single_change {
            return Err(MembersRefusal::MoreThanOneVoter);
        }
        if !next.is_voter(self.config.node_id) {
            return Err(MembersRefusal::RemovesPrimary);
        }
        let reachable = next
            .voter_ids()
            .filter(|&id| id == self.config.node_id || self.members_reachable(id))
            .count();
        if reachable < next.majority() {
            return Err(MembersRefusal::NoQuorum {
                reachable,
                voters: next.voter_count(),
                majority: next.majority(),
            });
        }
        Ok(())
    }

    /// Whether peer `id` answered within the failover timeout, as a voter would count.
    fn members_reachable(&self, id: NodeId) -> bool {
        let now = self.st.now;
        self.peer_index(id).is_some_and(|i| {
            self.st.peers[i]
                .last_ack
                .is_some_and(|at| now < at + self.config.failover_timeout)
        })
    }

    /// How many records learner `id` lacks durably, if it answered recently and would vote
    /// as soon as the configuration let it (not waiting to be promoted after a wipe, nor out a
    /// quarantine: a voter that cannot vote yet only makes the majority harder to reach).
    fn members_behind(&self, id: NodeId) -> Option<u64> {
        if !self.members_reachable(id) {
            return None;
        }
        let peer = &self.st.peers[self.peer_index(id)?];
        if !peer.health.can_vote {
            return None;
        }
        Some(self.st.log.last_lsn.get() - peer.match_lsn.get().min(self.st.log.last_lsn.get()))
    }

    /// Appends a config record of `next` and acts on it at once.
    pub(super) fn members_write(&mut self, next: Members, out: &mut Vec<Action>) {
        assert_eq!(
            self.st.role,
            Role::Primary,
            "a config record from a non-primary"
        );
        let lsn = self.st.log.last_lsn.next();
        let epoch = self.st.epoch;
        self.st.log.append(lsn, lsn, epoch);
        self.st.log.configs.push(lsn, next);
        // No byte estimate: the record is small and the window has room for it.
        self.st
            .bytes
            .push(lsn, 1, 64, &[], self.config.inflight_records_max);
        out.push(Action::WriteConfig {
            lsn,
            epoch,
            members: next,
        });
        self.members_report(out);
        for i in 0..self.st.peers.len() {
            self.replicate_to(i, false, out);
        }
        // A configuration with fewer voters may commit on what is durable already.
        self.commit_advance_primary(out);
    }

    /// Reports a change of the latest configuration, and on a primary brings its peers in
    /// line with it: one per member but itself, new ones probing from the end of the log.
    pub(super) fn members_report(&mut self, out: &mut Vec<Action>) {
        let latest = self.st.log.configs.latest();
        if self.st.members_reported == Some(latest) {
            return;
        }
        self.st.members_reported = Some(latest);
        // Peers first, so that the shell learns of a removed node still being shipped to
        // (`Action::PeersDeparting`) while it still knows the node's address.
        if self.st.role == Role::Primary {
            let me = self.config.node_id;
            let now = self.st.now;
            let give_up = now + self.config.failover_timeout * DEPARTING_TIMEOUTS;
            let next = self.st.log.last_lsn;
            self.st.peers.retain_mut(|peer| {
                if peer.id == me {
                    return false;
                }
                if latest.1.contains(peer.id) {
                    if peer.departing.is_some() {
                        // Added back before it was let go: known afresh, as any new member.
                        // What it said before (its match, its fitness to vote) may be of a
                        // run that has since lost its disk.
                        *peer = Peer::new(peer.id, next, now);
                    }
                } else {
                    // Removed: shipped to until it holds this record ("Removed nodes").
                    let until = peer.departing.map_or(give_up, |(_, until)| until);
                    peer.departing = Some((latest.0, until));
                    peer.departing_told = false;
                }
                true
            });
            for id in latest.1.ids_owned() {
                if id != me && self.peer_index(id).is_none() {
                    self.st.peers.push(Peer::new(id, next, now));
                }
            }
            self.departing_report(out);
        }
        out.push(Action::MembersChanged {
            lsn: latest.0,
            members: latest.1,
        });
    }

    /// On the primary's tick: lets go of the removed nodes that hold their removal (and were
    /// sent its commit), and of those that did not take it in time.
    pub(super) fn departing_check(&mut self, out: &mut Vec<Action>) {
        let now = self.st.now;
        let before = self.st.peers.len();
        self.st.peers.retain(|peer| match peer.departing {
            None => true,
            Some((lsn, until)) => now < until && !(peer.departing_told && peer.match_lsn >= lsn),
        });
        if self.st.peers.len() != before {
            self.departing_report(out);
        }
    }

    /// Reports the departing peers to the shell if they changed (`Action::PeersDeparting`).
    pub(super) fn departing_report(&mut self, out: &mut Vec<Action>) {
        let ids = self
            .st
            .peers
            .iter()
            .filter(|peer| peer.departing.is_some())
            .fold(0u64, |ids, peer| ids | Core::member_bit(peer.id));
        if ids != self.st.departing_reported {
            self.st.departing_reported = ids;
            out.push(Action::PeersDeparting { ids });
        }
    }

    /// On the primary's tick: a learner that has caught up (within one append of the end,
    /// heard from within the failover timeout) becomes a voter, when the rules allow a change.
    /// A primary that is itself a learner of its configuration (module docs, rule 3) comes
    /// first: it holds the whole log, and no other change may be made before (the primary is a
    /// voter of every configuration it writes).
    pub(super) fn members_auto_promote(&mut self, out: &mut Vec<Action>) {
        if self.st.switchover.is_some() {
            return;
        }
        let current = self.members();
        let me = self.config.node_id;
        let ready = if current.role(me) == Some(MemberRole::Learner) {
            Some(me)
        } else {
            current.ids_owned().find(|&id| {
                current.role(id) == Some(MemberRole::Learner)
                    && self
                        .members_behind(id)
                        .is_some_and(|behind| behind <= self.config.append_records_max)
            })
        };
        let Some(id) = ready else { return };
        let Some(next) = self.members_promotion(current, id) else {
            return;
        };
        if self.members_may_change(&current, &next).is_ok() {
            self.members_write(next, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_majority_of_a_single_change_meets_every_majority_of_the_old() {
        // Exhaustive over small voter sets: for C and C' one voter apart, every majority of
        // C meets every majority of C'.
        for voters in 1u64..(1 << 6) {
            let c = Members::from_bits(voters, 0).unwrap();
            for flip in 0..6 {
                let next = Members::from_bits(voters ^ (1 << flip), 0).unwrap();
                if next.voter_count() == 0 {
                    continue;
                }
                assert!(c.single_change_to(&next));
                for q1 in 0u64..(1 << 6) {
                    if c.count_voters(q1) < c.majority() || q1 & !voters != 0 {
                        continue;
                    }
                    for q2 in 0u64..(1 << 6) {
                        if next.count_voters(q2) < next.majority() || q2 & !next.voters != 0 {
                            continue;
                        }
                        assert_ne!(q1 & q2, 0, "{c} and {next}: {q1:b} and {q2:b} disjoint");
                    }
                }
            }
        }
    }

    #[test]
    fn two_voters_at_once_can_split() {
        let c = Members::voters_of(&[NodeId(1), NodeId(2), NodeId(3)]).unwrap();
        let next = c
            .with(NodeId(4), MemberRole::Voter)
            .and_then(|m| m.with(NodeId(5), MemberRole::Voter))
            .unwrap();
        assert!(!c.single_change_to(&next));
        // {1, 2} is a majority of C, {3, 4, 5} one of C': disjoint.
        assert!(c.count_voters(0b00011) >= c.majority());
        assert!(next.count_voters(0b11100) >= next.majority());
    }

    #[test]
    fn configs_follow_truncation() {
        let a = Members::voters_of(&[NodeId(1)]).unwrap();
        let b = a.with(NodeId(2), MemberRole::Learner).unwrap();
        let c = b.with(NodeId(2), MemberRole::Voter).unwrap();
        let mut configs = Configs {
            entries: vec![(Lsn::ZERO, a)],
        };
        configs.push(Lsn(3), b);
        configs.push(Lsn(7), c);
        assert_eq!(configs.at(Lsn(5)), (Lsn(3), b));
        assert!(configs.truncate_suffix(Lsn(6)));
        assert_eq!(configs.latest(), (Lsn(3), b));
        configs.push(Lsn(8), c);
        configs.truncate_prefix(Lsn(7));
        assert_eq!(configs.entries, vec![(Lsn(3), b), (Lsn(8), c)]);
        configs.truncate_prefix(Lsn(8));
        assert_eq!(configs.entries, vec![(Lsn(8), c)]);
        assert_eq!(b.to_string(), "1,2(learner)");
    }
}
