//! Invariant 3: two logs that hold a record with the same LSN and epoch are identical up to
//! that LSN. Every record written anywhere is checked, as it is written, against every record
//! ever written with the same LSN and epoch: same payload, same configuration (config
//! records) and same prefix hash (a hash chained over the record and all records before it in
//! that node's log).

use std::collections::HashMap;

use understudy::core::Members;
use understudy::{Epoch, Lsn};

use super::{violation, Violation};
use crate::disk::Rec;

const NAME: &str = "3 (log matching)";

/// The first record written with a given LSN and epoch.
#[derive(Debug)]
struct Seen {
    payload: u64,
    config: Option<Members>,
    prefix_hash: u64,
    node: usize,
}

#[derive(Debug, Default)]
pub struct LogMatching {
    seen: HashMap<(Lsn, Epoch), Seen>,
}

impl LogMatching {
    pub fn on_write(&mut self, node: usize, rec: &Rec) -> Result<(), Violation> {
        let first = self.seen.entry((rec.lsn, rec.epoch)).or_insert(Seen {
            payload: rec.payload,
            config: rec.config,
            prefix_hash: rec.prefix_hash,
            node,
        });
        if first.payload != rec.payload || first.config != rec.config {
            return Err(violation(
                NAME,
                format!(
                    "lsn {} epoch {} holds payload {} (config {:?}) on node {} but {} (config {:?}) on node {node}",
                    rec.lsn, rec.epoch, first.payload, first.config, first.node, rec.payload, rec.config
                ),
            ));
        }
        if first.prefix_hash != rec.prefix_hash {
            return Err(violation(
                NAME,
                format!(
                    "lsn {} epoch {}: node {node}'s log differs from node {}'s before it",
                    rec.lsn, rec.epoch, first.node
                ),
            ));
        }
        Ok(())
    }
}
