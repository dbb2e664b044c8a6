//! The commit rule, on the primary: a record is committed once it is durable on the primary
//! and on `sync_replicas` backups, and a record of the current epoch is among those (so its
//! commit carries every earlier record, as in Raft §5.4.2: a record of an older epoch stored on
//! a majority may still be overwritten, one of the current epoch may not).
//!
//! With `sync_replicas = members - majority` the primary and its `sync_replicas` backups are
//! `members - majority + 1` nodes, which meets every majority: every later primary's voters
//! include one of them, whose log the winner's must be at least as up to date as. That is
//! invariant 1. Backups learn the commit LSN from the primary's appends, bounded by the
//! prefix they verified against that primary (`replication.rs`).
//!
//! With an even number of voters that commit set is not a majority (the primary alone of 2,
//! 2 of 4), so it need not meet a majority of the configuration before or after a change
//! (`members.rs`): removing node 3 from {1, 2, 3} would commit on node 1 alone, while nodes 2
//! and 3, which lack the record, still count in {1, 2, 3} and may elect one of themselves.
//! So while the latest configuration's record is not committed, a record also needs the
//! commit set of the configuration before it (at most its safe minimum: a member removed
//! from it is no longer a peer; one backup more if this node was not a voter there), which
//! every election in that configuration meets. Once that record is committed, every later
//! primary holds it and counts in it (`members.rs`).

use wal::Lsn;

use super::{Action, Core, Members, Role, MEMBERS_MAX};

impl Core {
    pub(super) fn commit_advance_primary(&mut self, out: &mut Vec<Action>) {
        if self.st.role != Role::Primary {
            return;
        }
        let (latest_lsn, latest) = self.st.log.configs.latest();
        let Some(mut candidate) = self.commit_reach(&latest, self.sync_replicas()) else {
            return;
        };
        if latest_lsn > self.st.commit_lsn {
            let (_, previous) = self.st.log.configs.at(latest_lsn.prev());
            // At most its safe minimum: a member it has and the latest has not is no peer.
            let safe_min = previous.voter_count() - previous.majority();
            let sync_replicas = self.config.sync_replicas_for(&previous).min(safe_min);
            let Some(reach) = self.commit_reach(&previous, sync_replicas) else {
                return;
            };
            candidate = candidate.min(reach);
        }
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
    /// (one more if this node is not a voter of `members`: a new primary promoted by a change
    /// its predecessor did not commit), or `None` if too few of them are peers. Learners do not
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
