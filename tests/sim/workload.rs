//! The client workload and its oracle: proposals go to whichever node the client believes is
//! primary (sometimes to a random node), and every proposal ends in exactly one of: rejected,
//! committed (acknowledged to the client), or unknown (the node stepped down or crashed first).
//! An unknown outcome is not a loss: the record may or may not survive. A committed one must
//! (invariant 1).
//!
//! Reads are lease reads (`core::lease`, "Reads"): the core answers a read with an index,
//! the LSN its application must have applied before it answers; the read completes once the
//! node's commit LSN reaches the index, and returns the state at that commit LSN (the
//! application's state then: everything applied, at least the index). It completes so
//! whatever the node's role has become meanwhile: the driver gives a read up on a role
//! report of a later epoch or a step-down only if its state has not reached the index when
//! it looks, and records and a role report that arrive together are looked at in either
//! order, so a deposed primary may complete a read from records its new primary committed.
//! The model lets every such read complete (a superset of what the driver does); a read is
//! dropped only when its node crashes (the driver's connection ends). The reads are
//! linearizable when, at the moment the core answers, the index is at least the highest
//! LSN acknowledged to any client so far (the read sees every write that completed before
//! it) and at least the state returned by every read completed so far (reads in real-time
//! order never go back); a read sees only committed records, as it completes only at a
//! committed LSN.

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
    /// Lease reads answered (by the core), completed, and refused.
    pub reads: u64,
    pub reads_done: u64,
    pub reads_refused: u64,
    /// Per node: the read indexes answered and not yet completed, with their epoch.
    pub reads_pending: Vec<Vec<(Lsn, Epoch)>>,
    /// The highest state a completed read returned: (lsn, node, true time in ns).
    pub read_done_max: (Lsn, usize, u64),
    /// Reads completed after their node stopped being the primary of their epoch.
    pub reads_done_deposed: u64,
    /// Per node: the epoch it is primary of, if it is one.
    pub primary_of: Vec<Option<Epoch>>,
}

impl Workload {
    pub fn new(nodes: usize) -> Workload {
        Workload {
            next_payload: 1,
            pending: vec![Vec::new(); nodes],
            reads_pending: vec![Vec::new(); nodes],
            primary_of: vec![None; nodes],
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
        self.reads_crashed(node);
        for i in self.pending[node].drain(..) {
            self.ops[i].outcome = Outcome::Unknown;
        }
    }

    /// `node`'s core answered a read with index `lsn` in `epoch` at true time `now`, its
    /// commit LSN being `commit`: `Err` with what makes it not linearizable (module docs).
    pub fn read_answered(
        &mut self,
        node: usize,
        lsn: Lsn,
        epoch: Epoch,
        commit: Lsn,
        now: u64,
    ) -> Result<(), String> {
        self.reads += 1;
        if let Some((&acked, &(epoch, payload))) = self.acked.last_key_value() {
            if lsn < acked {
                return Err(format!(
                    "node {node} answered a read at lsn {lsn}, below lsn {acked} (epoch {epoch}, \
                     payload {payload}) acknowledged before it"
                ));
            }
        }
        let (max, max_node, max_at) = self.read_done_max;
        if lsn < max {
            return Err(format!(
                "node {node} answered a read at lsn {lsn} after a read on node {max_node} \
                 returned the state at lsn {max} (t={}ms)",
                max_at / 1_000_000
            ));
        }
        self.reads_pending[node].push((lsn, epoch));
        self.reads_committed(node, commit, now);
        Ok(())
    }

    /// `node`'s commit LSN is `commit`: its reads with an index at or below it complete,
    /// returning the state at `commit`.
    pub fn reads_committed(&mut self, node: usize, commit: Lsn, now: u64) {
        let done_max = &mut self.read_done_max;
        let done = &mut self.reads_done;
        let deposed = &mut self.reads_done_deposed;
        let primary_of = self.primary_of[node];
        self.reads_pending[node].retain(|&(lsn, epoch)| {
            if lsn > commit {
                return true;
            }
            *done += 1;
            if primary_of != Some(epoch) {
                *deposed += 1;
            }
            if commit > done_max.0 {
                *done_max = (commit, node, now);
            }
            false
        });
    }

    /// `node` reported its role: the primary of `primary_in`, or not a primary. Its pending
    /// reads stay (module docs).
    pub fn reads_role(&mut self, node: usize, primary_in: Option<Epoch>) {
        self.primary_of[node] = primary_in;
    }

    /// `node` crashed: its pending reads are dropped with the driver's connection.
    pub fn reads_crashed(&mut self, node: usize) {
        self.primary_of[node] = None;
        self.reads_pending[node].clear();
    }

    pub fn pending_count(&self) -> usize {
        self.pending.iter().map(Vec::len).sum()
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.ops.iter().filter(|op| op.outcome == outcome).count()
    }
}
