//! Invariant 3: two logs that hold a record with the same LSN and epoch are identical up to
//! that LSN. Every record written anywhere is checked, as it is written, against every record
//! ever written with the same LSN and epoch: same payload and same prefix hash (a hash chained
//! over the record and all records before it in that node's log).

use std::collections::HashMap;

use understudy::{Epoch, Lsn};

use super::{violation, Violation};
use crate::disk::Rec;

const NAME: &str = "3 (log matching)";

#[derive(Debug, Default)]
pub struct LogMatching {
    seen: HashMap<(Lsn, Epoch), (u64, u64, usize)>,
}

impl LogMatching {
    pub fn on_write(&mut self, node: usize, rec: &Rec) -> Result<(), Violation> {
        let entry =
            self.seen
                .entry((rec.lsn, rec.epoch))
                .or_insert((rec.payload, rec.prefix_hash, node));
        if entry.0 != rec.payload {
            return Err(violation(
                NAME,
                format!(
                    "lsn {} epoch {} holds payload {} on node {} but {} on node {node}",
                    rec.lsn, rec.epoch, entry.0, entry.2, rec.payload
                ),
            ));
        }
        if entry.1 != rec.prefix_hash {
            return Err(violation(
                NAME,
                format!(
                    "lsn {} epoch {}: node {node}'s log differs from node {}'s before it",
                    rec.lsn, rec.epoch, entry.2
                ),
            ));
        }
        Ok(())
    }
}
