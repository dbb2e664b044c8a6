//! Invariant 2: at most one node is primary in an epoch, and an epoch once voted never goes
//! backwards on any node (the persisted epoch never decreases, and a restarted node starts at
//! or above the last epoch it voted in). A node votes at most once in an epoch, across restarts
//! and wipes of its data dir alike: every persisted vote is remembered here.
//!
//! One exception, which cannot make two primaries: a node's vote for itself, cast before its
//! data dir was wiped, in an epoch it never became primary of. That vote counted only for
//! its own candidacy, which ended with the wipe (a candidacy lives in memory), so whom it
//! votes for in that epoch afterwards elects at most one primary there. It happens when a
//! node stood in an epoch that no other node took up (its vote requests refused unread, as
//! the primary's backups do), lost its disk, and an ordinary election later reached the
//! same epoch. A vote for another candidate before a wipe stays binding (`core::election`,
//! "A fresh data dir", has what the quarantine covers and what it does not).

use std::collections::{HashMap, HashSet};

use understudy::core::PersistedMeta;
use understudy::{Epoch, NodeId};

use super::{violation, Violation};

const NAME: &str = "2 (one primary per epoch; epochs never go back)";

#[derive(Debug, Default)]
pub struct OnePrimary {
    primary_of: HashMap<Epoch, usize>,
    voted_epoch: Vec<Epoch>,
    /// Every vote ever persisted: `(node, epoch) -> candidate`.
    votes: HashMap<(usize, Epoch), NodeId>,
    /// Votes cast before a wipe of the voter's data dir.
    before_wipe: HashSet<(usize, Epoch)>,
}

impl OnePrimary {
    pub fn new(nodes: usize) -> OnePrimary {
        OnePrimary {
            primary_of: HashMap::new(),
            voted_epoch: vec![Epoch::ZERO; nodes],
            votes: HashMap::new(),
            before_wipe: HashSet::new(),
        }
    }

    pub fn on_promoted(&mut self, node: usize, epoch: Epoch) -> Result<(), Violation> {
        match self.primary_of.insert(epoch, node) {
            Some(other) if other != node => Err(violation(
                NAME,
                format!("nodes {other} and {node} both primary in epoch {epoch}"),
            )),
            _ => Ok(()),
        }
    }

    /// A metadata persist of `node` completed, replacing `old` by `new`.
    pub fn on_meta_durable(
        &mut self,
        node: usize,
        old: PersistedMeta,
        new: PersistedMeta,
    ) -> Result<(), Violation> {
        if new.epoch < old.epoch {
            return Err(violation(
                NAME,
                format!(
                    "node {node} persisted epoch {} over {}",
                    new.epoch, old.epoch
                ),
            ));
        }
        if new.epoch == old.epoch && old.voted_for.is_some() && new.voted_for != old.voted_for {
            return Err(violation(
                NAME,
                format!(
                    "node {node} changed its vote in epoch {} from {:?} to {:?}",
                    new.epoch, old.voted_for, new.voted_for
                ),
            ));
        }
        if let Some(candidate) = new.voted_for {
            self.voted_epoch[node] = self.voted_epoch[node].max(new.epoch);
            match self.votes.insert((node, new.epoch), candidate) {
                Some(earlier)
                    if earlier != candidate && !self.lost_self_vote(node, new.epoch, earlier) =>
                {
                    return Err(violation(
                        NAME,
                        format!(
                            "node {node} voted for {earlier} and for {candidate} in epoch {}",
                            new.epoch
                        ),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whether `node`'s vote for `candidate` in `epoch` is the exception of the module docs:
    /// for itself, cast before a wipe, in an epoch it never became primary of.
    fn lost_self_vote(&self, node: usize, epoch: Epoch, candidate: NodeId) -> bool {
        usize::from(candidate.get()) == node + 1 // ids are indexes + 1 (`Cluster::index_of`)
            && self.before_wipe.contains(&(node, epoch))
            && self.primary_of.get(&epoch) != Some(&node)
    }

    /// The vote `node` persisted in `epoch`, if any (kept across wipes of its data dir).
    pub fn vote_of(&self, node: usize, epoch: Epoch) -> Option<NodeId> {
        self.votes.get(&(node, epoch)).copied()
    }

    /// `node`'s data dir was wiped: its epoch legitimately starts again from zero, but the votes
    /// it cast stay cast.
    pub fn on_wiped(&mut self, node: usize) {
        self.voted_epoch[node] = Epoch::ZERO;
        self.before_wipe.extend(
            self.votes
                .keys()
                .filter(|&&(voter, _)| voter == node)
                .copied()
                .collect::<Vec<_>>(),
        );
    }

    /// `node`'s core reports `epoch` (after any step, restarts included).
    pub fn on_epoch(&self, node: usize, epoch: Epoch) -> Result<(), Violation> {
        if epoch < self.voted_epoch[node] {
            return Err(violation(
                NAME,
                format!(
                    "node {node} is at epoch {epoch}, below epoch {} it voted in",
                    self.voted_epoch[node]
                ),
            ));
        }
        Ok(())
    }
}
