//! The commit rule, on the primary: a record is committed once it is durable on the primary
//! and on `sync_replicas` backups, and a record of the current epoch is among those (so its
//! commit carries every earlier record, as in Raft §5.4.2: a record of an older epoch stored on
//! a majority may still be overwritten, one of the current epoch may not).
//!
//! With `sync_replicas = members - majority` the primary and its `sync_replicas` backups are
//! `members - majority + 1` nodes, which meets every majority: every later primary's voters
//! include one of them, whose log the winner's must be at least as up to date as. That is
//! invariant 1. Counted in a configuration that a membership change may have just replaced,
//! the set must also meet every majority of the configuration before, so it is never less
//! than a majority of the latest one (`Config::sync_replicas_for`): for an even voter count
//! that is one backup more than `members - majority`. Backups learn the commit LSN from the
//! primary's appends, bounded by the prefix they verified against that primary
//! (`replication.rs`).
//!
//! Shipping does not wait for the primary's own fsync. A proposal's records are sent to the
//! backups in the step that assigns their LSNs (`replication.rs`, `on_propose`; the shell
//! takes their bytes from its cache of recent records), while the group-commit writer
//! makes them durable locally; the primary's `durable_lsn` is then one more input of
//! `Core::commit_reach`, like a backup's acknowledgement. So a commit costs
//! max(local fsync, round trip + remote fsync), not their sum. Nothing above changes: a
//! record is committed only once the primary and `sync_replicas` voters hold it durably. A
//! backup holding a record the primary has not yet made durable holds an uncommitted
//! record, as any backup ahead of a commit does: no client was answered for it. If the
//! primary crashes before its fsync, its recovered log may lack records a backup has; the
//! next election goes to the more up-to-date log, and the suffix the loser must cut is
//! uncommitted by definition (`replication.rs`, "Log matching").

use wal::Lsn;

use super::{Action, Core, Members, Role, MEMBERS_MAX};

impl Core {
    pub(super) fn commit_advance_primary(&mut self, out: &mut Vec<Action>) {
        if self.st.role != Role::Primary {
            return;
        }
        // A majority of the latest configuration (`Config::sync_replicas_for`), which meets
        // every majority of the one before it too (`members.rs`): no second count is needed
        // while a change is uncommitted.
        let (_, latest) = self.st.log.configs.latest();
        let Some(candidate) = self.commit_reach(&latest, self.sync_replicas()) else {
            return;
        };
        // The current-epoch rule: our epoch's records are exactly epoch_start_lsn..=last_lsn.
        if candidate >= self.st.epoch_start_lsn && candidate > self.st.commit_lsn {
            self.set_commit(candidate, out);
            let lowest_acked = self
                .st
                .peers
                .iter()
                .map(|peer| peer.acked_lsn)
                .min()
                .unwrap_or(candidate);
            self.st.bytes.prune_through(lowest_acked.min(candidate));
        }
    }

    /// The last LSN durable here and on `sync_replicas` voters of `members` among the peers
    /// (one more if this node is not a voter of `members`, which a primary always is of its
    /// latest configuration), or `None` if too few of them are peers. Learners do not
    /// count (`election.rs`, "Learners"), nor members that are not voters of `members`
    /// (`members.rs`): their copies are not ones a later election is bound to find. A voter
    /// just promoted from the configuration's learners reports its nonce until it has the
    /// config record; it counts if it could vote (`Health::can_vote`): its log is one it can
    /// vouch for.
    fn commit_reach(&self, members: &Members, sync_replicas: usize) -> Option<Lsn> {
        let durable = self.st.log.durable_lsn;
        let needed = sync_replicas + usize::from(!members.is_voter(self.config.node_id));
        if needed == 0 {
            return Some(durable);
        }
        let mut matched = [Lsn::ZERO; MEMBERS_MAX];
        let mut count = 0;
        for peer in
            self.st.peers.iter().filter(|peer| {
                (peer.learner == 0 || peer.health.can_vote) && members.is_voter(peer.id)
            })
        {
            matched[count] = peer.match_lsn;
            count += 1;
        }
        if count < needed {
            return None;
        }
        let matched = &mut matched[..count];
        matched.sort_unstable_by(|a, b| b.cmp(a));
        Some(durable.min(matched[needed - 1]))
    }
}
