//! Invariant 2: at most one node is primary in an epoch, and an epoch once voted never goes
//! backwards on any node (the persisted epoch never decreases, and a restarted node starts at
//! or above the last epoch it voted in).

use std::collections::HashMap;

use understudy::core::PersistedMeta;
use understudy::Epoch;

use super::{violation, Violation};

const NAME: &str = "2 (one primary per epoch; epochs never go back)";

#[derive(Debug, Default)]
pub struct OnePrimary {
    primary_of: HashMap<Epoch, usize>,
    voted_epoch: Vec<Epoch>,
}

impl OnePrimary {
    pub fn new(nodes: usize) -> OnePrimary {
        OnePrimary {
            primary_of: HashMap::new(),
            voted_epoch: vec![Epoch::ZERO; nodes],
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
        if new.voted_for.is_some() {
            self.voted_epoch[node] = self.voted_epoch[node].max(new.epoch);
        }
        Ok(())
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
