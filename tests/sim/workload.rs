//! The client workload and its oracle: proposals go to whichever node the client believes is
//! primary (sometimes to a random node), and every proposal ends in exactly one of: rejected,
//! committed (acknowledged to the client), or unknown (the node stepped down or crashed first).
//! An unknown outcome is not a loss: the record may or may not survive. A committed one must
//! (invariant 1).

use std::collections::BTreeMap;

use understudy::{Epoch, Lsn};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Committed,
    Unknown,
}

#[derive(Clone, Copy, Debug)]
pub struct Op {
    pub node: usize,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
    pub epoch: Epoch,
    /// Payload ids `first_payload..first_payload + count`.
    pub first_payload: u64,
    pub outcome: Outcome,
}

#[derive(Debug, Default)]
pub struct Workload {
    pub ops: Vec<Op>,
    pub next_payload: u64,
    pub rejected: u64,
    /// Per node: indexes of its pending ops, in LSN order.
    pub pending: Vec<Vec<usize>>,
    /// Every acknowledged record: LSN -> (epoch, payload id).
    pub acked: BTreeMap<Lsn, (Epoch, u64)>,
    pub believed_primary: Option<usize>,
}

impl Workload {
    pub fn new(nodes: usize) -> Workload {
        Workload {
            next_payload: 1,
            pending: vec![Vec::new(); nodes],
            ..Workload::default()
        }
    }

    /// A proposal was accepted at `node`: returns the first payload id of its records.
    pub fn accepted(&mut self, node: usize, first_lsn: Lsn, last_lsn: Lsn, epoch: Epoch) -> u64 {
        let first_payload = self.next_payload;
        self.next_payload += Lsn::count_between(first_lsn, last_lsn);
        self.pending[node].push(self.ops.len());
        self.ops.push(Op {
            node,
            first_lsn,
            last_lsn,
            epoch,
            first_payload,
            outcome: Outcome::Pending,
        });
        first_payload
    }

    /// Ops at `node` with every record at or below `lsn` become committed; returns them.
    pub fn committed(&mut self, node: usize, lsn: Lsn, done: &mut Vec<usize>) {
        done.clear();
        let pending = &mut self.pending[node];
        let split = pending
            .iter()
            .take_while(|&&i| self.ops[i].last_lsn <= lsn)
            .count();
        done.extend(pending.drain(..split));
        for &i in done.iter() {
            self.ops[i].outcome = Outcome::Committed;
        }
    }

    /// Ops at `node` with records above `after` have an unknown outcome.
    pub fn abandoned(&mut self, node: usize, after: Lsn) {
        let ops = &mut self.ops;
        self.pending[node].retain(|&i| {
            if ops[i].last_lsn > after {
                ops[i].outcome = Outcome::Unknown;
                false
            } else {
                true
            }
        });
    }

    /// The node crashed: its clients' connections dropped, outcomes unknown.
    pub fn crashed(&mut self, node: usize) {
        for i in self.pending[node].drain(..) {
            self.ops[i].outcome = Outcome::Unknown;
        }
    }

    pub fn pending_count(&self) -> usize {
        self.pending.iter().map(Vec::len).sum()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.ops.iter().filter(|op| op.outcome == outcome).count()
    }
}
