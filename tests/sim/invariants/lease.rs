//! Invariant 4: no node serves a write while it does not hold a valid lease. Checked against true
//! simulated time: a node serves when it accepts a proposal, and at every tick it ends as
//! primary (it would answer `/primary` with 200 then). When a node serves in epoch `e`, no
//! node may have been elected primary in an epoch above `e` at any earlier true time: the
//! serving intervals of two primaries never overlap.

use understudy::Epoch;

use super::{violation, Violation};

const NAME: &str = "4 (no write served without a lease)";

#[derive(Debug, Default)]
pub struct Lease {
    highest_elected: Epoch,
    elected_node: usize,
    elected_at: u64,
}

impl Lease {
    pub fn on_promoted(&mut self, node: usize, epoch: Epoch, now: u64) {
        if epoch > self.highest_elected {
            self.highest_elected = epoch;
            self.elected_node = node;
            self.elected_at = now;
        }
    }

    pub fn highest_elected(&self) -> Epoch {
        self.highest_elected
    }

    pub fn on_serve(&self, node: usize, epoch: Epoch, now: u64) -> Result<(), Violation> {
        if epoch < self.highest_elected {
            return Err(violation(
                NAME,
                format!(
                    "node {node} accepted a write in epoch {epoch} at t={}ms, after node {} was elected \
                     in epoch {} at t={}ms",
                    now / 1_000_000,
                    self.elected_node,
                    self.highest_elected,
                    self.elected_at / 1_000_000
                ),
            ));
        }
        Ok(())
    }
}
