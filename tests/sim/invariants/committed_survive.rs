//! Invariant 1: a record acknowledged as committed is in the log of every later primary, at the
//! same LSN. Checked when a node becomes primary (its whole log against every acknowledgement so
//! far) and at the end of a run; acknowledgements are checked against each other as they come.
//!
//! The same holds for every committed record, epoch-start and config records included
//! ([`CommittedLog`]): every node that reports a commit through an LSN holds the same log
//! through it (the prefix hash of its record there), and every new primary holds the whole
//! committed prefix.

use std::collections::BTreeMap;

use understudy::{Epoch, Lsn};

use super::{violation, Violation};
use crate::disk::{Disk, Rec};

const NAME: &str = "1 (acknowledged records survive failover)";

/// A client was told `lsn` (of `epoch`, payload `payload`) is committed.
pub fn on_acknowledged(
    acked: &mut BTreeMap<Lsn, (Epoch, u64)>,
    lsn: Lsn,
    epoch: Epoch,
    payload: u64,
) -> Result<(), Violation> {
    match acked.insert(lsn, (epoch, payload)) {
        Some(earlier) if earlier != (epoch, payload) => Err(violation(
            NAME,
            format!(
                "lsn {lsn} acknowledged as {:?} and later as {:?}",
                earlier,
                (epoch, payload)
            ),
        )),
        _ => Ok(()),
    }
}

/// `disk` belongs to node `node`, primary of `epoch` from now on.
pub fn on_primary(
    acked: &BTreeMap<Lsn, (Epoch, u64)>,
    node: usize,
    epoch: Epoch,
    disk: &Disk,
) -> Result<(), Violation> {
    for (&lsn, &(ack_epoch, payload)) in acked {
        match disk.record(lsn) {
            Some(rec) if rec.epoch == ack_epoch && rec.payload == payload => {}
            found => {
                return Err(violation(
                    NAME,
                    format!(
                        "node {node} is primary of epoch {epoch} but lacks acknowledged lsn {lsn} \
                         (epoch {ack_epoch}, payload {payload}); it has {found:?}"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// The committed prefix of the log, as the nodes report it with `Action::Committed`: the
/// prefix hash of the record at every committed LSN.
#[derive(Debug, Default)]
pub struct CommittedLog {
    /// `hashes[i]`: the prefix hash of the committed record at LSN `i + 1`.
    hashes: Vec<u64>,
}

impl CommittedLog {
    pub fn len(&self) -> Lsn {
        Lsn(self.hashes.len() as u64)
    }

    /// Node `node` reports every record through `lsn` committed; its log is `disk`. Returns
    /// the committed length before the call: the records after it through `lsn` (on `disk`)
    /// are committed for the first time.
    pub fn on_committed(&mut self, node: usize, lsn: Lsn, disk: &Disk) -> Result<Lsn, Violation> {
        let known = self.len();
        // Through min(lsn, known) the node's log must equal the committed one: one hash says
        // so for the whole prefix.
        let check = lsn.min(known);
        if check > Lsn::ZERO {
            self.check_holds(node, check, disk, "reports a commit through")?;
        }
        let mut at = known.next();
        while at <= lsn {
            match disk.record(at) {
                Some(rec) => self.hashes.push(rec.prefix_hash),
                None => {
                    return Err(violation(
                        NAME,
                        format!("node {node} reports lsn {at} committed but does not hold it"),
                    ))
                }
            }
            at = at.next();
        }
        Ok(known)
    }

    /// `disk` (of node `node`, primary of `epoch` from now on) holds every committed record.
    pub fn on_primary(&self, node: usize, epoch: Epoch, disk: &Disk) -> Result<(), Violation> {
        let known = self.len();
        if known == Lsn::ZERO {
            return Ok(());
        }
        let what = format!("is primary of epoch {epoch} with");
        self.check_holds(node, known, disk, &what)
    }

    fn check_holds(&self, node: usize, lsn: Lsn, disk: &Disk, what: &str) -> Result<(), Violation> {
        let expected = self.hashes[lsn.get() as usize - 1];
        let found: Option<&Rec> = disk.record(lsn);
        if found.is_some_and(|rec| rec.prefix_hash == expected) {
            return Ok(());
        }
        Err(violation(
            NAME,
            format!(
                "node {node} {what} a log that differs from the committed one at or before lsn {lsn} \
                 (a committed record lost or changed); its record there: {found:?}"
            ),
        ))
    }
}
