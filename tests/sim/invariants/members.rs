//! Invariant 5: membership changes are single-server changes, and every quorum is counted in
//! the counting node's latest configuration (the core's `members.rs`).
//!
//! - Each committed config record differs from the committed configuration before it (the
//!   seed, at first) by at most one voter, so any two configurations in use one after the
//!   other have intersecting majorities.
//! - A primary writes a change only while the latest configuration in its log is committed
//!   and a record of its own epoch is committed (rule 1), and a change adds or removes at most
//!   one voter (rule 2).
//! - The configuration a node counts a quorum in (its latest, elected or committing) is the
//!   last committed configuration known anywhere or one voter from it: the checker holds the
//!   committed configurations itself rather than trusting the counting node's log, so that a
//!   node counting in a stale configuration (one that missed a committed change), or in one
//!   two changes ahead, is caught even when its majority of that configuration looks whole.
//! - A node elected primary holds persisted votes of a majority of the voters of its latest
//!   configuration, its own included; a node votes only while it is neither a learner by its
//!   start nor quarantined, and for itself only as a member (voter or learner) of its own
//!   latest configuration, its own vote counting only as a voter; a primary's commit is backed
//!   by voters of its latest configuration (what its core knows of them) that make a majority
//!   of it with the primary (the primary counting only as a voter of it).
//!
//! `SIM_BREAK=members` switches rule 2 off in the core; the checks of rule 2 here are off with
//! it, so that the test shows what the other invariants make of two-voter changes.

use understudy::core::{Members, Status};
use understudy::{Epoch, Lsn, NodeId};

use super::{violation, Violation};

const NAME: &str = "5 (membership: single-server changes, quorums in the latest configuration)";

#[derive(Debug)]
pub struct MembersCheck {
    /// Rule 2 is checked (not switched off on purpose).
    single_change: bool,
    /// The committed configurations: the seed at LSN 0, then every committed config record.
    committed: Vec<(Lsn, Members)>,
}

impl MembersCheck {
    pub fn new(seed: Members, single_change: bool) -> MembersCheck {
        MembersCheck {
            single_change,
            committed: vec![(Lsn::ZERO, seed)],
        }
    }

    /// The record at `lsn`, a config record of `members`, is committed (reported once, in LSN
    /// order).
    pub fn on_committed_config(&mut self, lsn: Lsn, members: Members) -> Result<(), Violation> {
        let &(before_lsn, before) = self.committed.last().expect("the seed is first");
        assert!(lsn > before_lsn, "committed configurations out of order");
        if self.single_change && !before.single_change_to(&members) {
            return Err(violation(
                NAME,
                format!(
                    "committed configuration {members} (lsn {lsn}) differs by more than one voter \
                     from the committed one before it, {before} (lsn {before_lsn})"
                ),
            ));
        }
        self.committed.push((lsn, members));
        Ok(())
    }

    /// Node `node`, primary of `epoch`, wrote a config record of `next` at `lsn`; the latest
    /// configuration in its log before was `previous` (of the record at `previous_lsn`), its
    /// commit LSN `commit_before` and its epoch-start record at `epoch_start`.
    #[allow(clippy::too_many_arguments)]
    pub fn on_written(
        &self,
        node: usize,
        epoch: Epoch,
        lsn: Lsn,
        next: Members,
        (previous_lsn, previous): (Lsn, Members),
        commit_before: Lsn,
        epoch_start: Lsn,
    ) -> Result<(), Violation> {
        if next == previous {
            // The seed's record after a new cluster's first election: no change.
            return Ok(());
        }
        if commit_before < previous_lsn || commit_before < epoch_start {
            return Err(violation(
                NAME,
                format!(
                    "node {node}, primary of epoch {epoch}, wrote configuration {next} at lsn {lsn} \
                     while its commit LSN {commit_before} was below its latest configuration's \
                     record ({previous}, lsn {previous_lsn}) or its epoch start (lsn {epoch_start})"
                ),
            ));
        }
        if self.single_change && !previous.single_change_to(&next) {
            return Err(violation(
                NAME,
                format!(
                    "node {node}, primary of epoch {epoch}, changed the configuration from {previous} \
                     to {next} (lsn {lsn}): more than one voter at once"
                ),
            ));
        }
        Ok(())
    }

    /// Node `node` (id `id`) became primary of `epoch` counting in `members`; `vote_of(i)` is
    /// the vote node index `i` persisted in `epoch`.
    pub fn on_promoted(
        &self,
        node: usize,
        id: NodeId,
        epoch: Epoch,
        members: Members,
        vote_of: impl Fn(usize) -> Option<NodeId>,
    ) -> Result<(), Violation> {
        self.counted_in_use(node, "became primary", epoch, members)?;
        let granted: Vec<NodeId> = members
            .voter_ids()
            .filter(|v| vote_of(v.get() as usize - 1) == Some(id))
            .collect();
        // A learner of its configuration may stand; its own vote is not among the voters'.
        if !members.contains(id) || granted.len() < members.majority() {
            return Err(violation(
                NAME,
                format!(
                    "node {node} became primary of epoch {epoch} in configuration {members} with \
                     persisted votes from only {granted:?}"
                ),
            ));
        }
        Ok(())
    }

    /// Node `node`, about to be checked for a quorum of `members` (`what` it did in `epoch`):
    /// `members` is the last committed configuration or one voter from it (module docs).
    /// Off with rule 2, whose breaking is meant to show in the other invariants.
    fn counted_in_use(
        &self,
        node: usize,
        what: &str,
        epoch: Epoch,
        members: Members,
    ) -> Result<(), Violation> {
        let &(committed_lsn, committed) = self.committed.last().expect("the seed is first");
        if self.single_change && !committed.single_change_to(&members) {
            return Err(violation(
                NAME,
                format!(
                    "node {node} {what} in epoch {epoch} counting in configuration {members}, \
                     which is neither the last committed one, {committed} (lsn {committed_lsn}), \
                     nor one voter from it"
                ),
            ));
        }
        Ok(())
    }

    /// Node `node` (id `id`) asked to persist a vote for `candidate`; `status` is its core's
    /// view. Another's candidacy gets its vote only if it is neither a learner by its start
    /// nor quarantined; its own only if it is a member of its own latest configuration too
    /// (`members`; it stands, a learner of it as well, counting its own vote only as a voter).
    pub fn on_vote(
        &self,
        node: usize,
        id: NodeId,
        candidate: NodeId,
        status: &Status,
        members: Members,
    ) -> Result<(), Violation> {
        let may_vote = !status.learner && !status.quarantined;
        if !may_vote || (candidate == id && !members.contains(id)) {
            return Err(violation(
                NAME,
                format!(
                    "node {node} voted for {candidate} while it may not (a learner: {}, \
                     quarantined: {}, its configuration {members})",
                    status.learner, status.quarantined
                ),
            ));
        }
        Ok(())
    }

    /// Node `node`, primary, reported every record through `lsn` committed; `status` is its
    /// core's view after the step, `members` its latest configuration and `sync_replicas` the
    /// configured number of synchronous backups. The primary and the voters of `members` (not
    /// learners by their start: those report that they cannot vote) it knows hold the record
    /// durably must be a majority of `members` (so that
    /// they meet every majority of the configuration before as well), and the configured
    /// number at least (as far as `members` has backups).
    pub fn on_primary_commit(
        &self,
        node: usize,
        lsn: Lsn,
        status: &Status,
        members: Members,
        sync_replicas: Option<usize>,
    ) -> Result<(), Violation> {
        self.counted_in_use(node, "committed", status.epoch, members)?;
        let backups = status
            .peers
            .iter()
            .filter(|peer| {
                // A learner by its start (a wiped node awaiting promotion) reports that it
                // cannot vote; a member just promoted from the configuration's learners
                // reports its nonce until it has the record, but can vote, and its copy
                // counts (`commit.rs`).
                let by_start = peer.learner && !peer.health.can_vote;
                !by_start && members.is_voter(peer.node_id) && peer.match_lsn >= lsn
            })
            .count();
        // A primary that is a learner of its configuration (it may stand: `members.rs`)
        // counts for nothing itself: one backup more.
        let own = usize::from(!members.is_voter(status.node_id));
        let sync_replicas = (members.majority() - 1)
            .max(sync_replicas.unwrap_or(0))
            .min(members.voter_count() - 1)
            + own;
        if status.durable_lsn < lsn || backups < sync_replicas {
            return Err(violation(
                NAME,
                format!(
                    "node {node} committed through {lsn} with {backups} voters of {members} holding it \
                     ({sync_replicas} needed) and its own log durable through {}",
                    status.durable_lsn
                ),
            ));
        }
        Ok(())
    }
}
