//! Invariant 1: a record acknowledged as committed is in the log of every later primary, at the
//! same LSN. Checked when a node becomes primary (its whole log against every acknowledgement so
//! far) and at the end of a run; acknowledgements are checked against each other as they come.

use std::collections::BTreeMap;

use understudy::{Epoch, Lsn};

use super::{violation, Violation};
use crate::disk::Disk;

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
