//! The simulated disk of one node: the log as written (`live`) and as it would survive a crash
//! (`durable`), and the metadata file (epoch, vote).
//!
//! Writes land in `live` at once. A sync, some time later, makes all of `live` durable. A crash
//! replaces `live` by `durable`: everything not yet synced is lost, including a truncation
//! (the old suffix comes back, as it would from a real file whose truncation was not synced).
//! The metadata file is replaced atomically (tmp, fsync, rename, fsync dir), so it is either the
//! old or the new content; each persist completes after a delay, in order.
//!
//! The log keeps every record, those covered by a snapshot included: a simulated snapshot is
//! the record list up to its LSN. `snapshot_lsn` marks where the core's log starts; the
//! snapshot is durable when taken (taken only through durable records) or installed.

use std::collections::VecDeque;

use understudy::core::{PersistedMeta, RecoveredLog};
use understudy::{Epoch, Lsn};

/// A record as the simulator sees it: the payload is a unique id given by the workload (0 for
/// epoch-start records); `prefix_hash` covers this record and every one before it, so equal
/// hashes mean equal prefixes (invariant 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec {
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub payload: u64,
    pub prefix_hash: u64,
}

pub fn prefix_hash(previous: u64, lsn: Lsn, epoch: Epoch, payload: u64) -> u64 {
    let mut h = previous ^ 0x9E37_79B9_7F4A_7C15;
    for x in [lsn.get(), epoch.get(), payload] {
        h = (h ^ x).wrapping_mul(0x100_0000_01B3).rotate_left(29);
    }
    h
}

#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub live: Vec<Rec>,
    durable: Vec<Rec>,
    /// `live[..synced] == durable[..synced]`.
    synced: usize,
    pub snapshot_lsn: Lsn,
    pub sync_scheduled: bool,
    pub meta: PersistedMeta,
    pub meta_queue: VecDeque<PersistedMeta>,
}

impl Disk {
    pub fn last_lsn(&self) -> Lsn {
        Lsn(self.live.len() as u64)
    }

    pub fn record(&self, lsn: Lsn) -> Option<&Rec> {
        if lsn == Lsn::ZERO {
            return None;
        }
        self.live.get(lsn.get() as usize - 1)
    }

    fn hash_before(&self, lsn: Lsn) -> u64 {
        self.record(lsn.prev()).map_or(0, |rec| rec.prefix_hash)
    }

    /// Appends one record at the end; returns it with its prefix hash.
    pub fn append(&mut self, lsn: Lsn, epoch: Epoch, payload: u64) -> Rec {
        assert_eq!(
            lsn,
            self.last_lsn().next(),
            "disk write must follow the last record"
        );
        let rec = Rec {
            lsn,
            epoch,
            payload,
            prefix_hash: prefix_hash(self.hash_before(lsn), lsn, epoch, payload),
        };
        self.live.push(rec);
        rec
    }

    pub fn truncate_suffix(&mut self, keep_through: Lsn) {
        assert!(
            keep_through < self.last_lsn(),
            "truncation that drops nothing"
        );
        assert!(
            keep_through >= self.snapshot_lsn,
            "truncation into the snapshot"
        );
        self.live.truncate(keep_through.get() as usize);
        self.synced = self.synced.min(self.live.len());
    }

    /// The sync completes: all of `live` is durable. Returns the last record.
    pub fn sync(&mut self) -> Option<Rec> {
        self.durable.truncate(self.synced);
        self.durable.extend_from_slice(&self.live[self.synced..]);
        self.synced = self.live.len();
        self.live.last().copied()
    }

    pub fn durable_lsn(&self) -> Lsn {
        Lsn(self.synced as u64)
    }

    /// Replaces the whole log by a snapshot through `records.last()`, durably.
    pub fn install_snapshot(&mut self, records: &[Rec]) {
        self.live = records.to_vec();
        self.durable = records.to_vec();
        self.synced = records.len();
        self.snapshot_lsn = Lsn(records.len() as u64);
    }

    /// The machine stopped: what survives.
    pub fn crash(&mut self) {
        self.live = self.durable.clone();
        self.synced = self.live.len();
        self.sync_scheduled = false;
        self.meta_queue.clear();
        assert!(
            self.snapshot_lsn <= self.last_lsn(),
            "snapshot beyond the durable log"
        );
    }

    /// After a crash: every record from `lsn` on is lost (recovery cut a corrupt record).
    pub fn lose_from(&mut self, lsn: Lsn) {
        assert!(
            lsn > self.snapshot_lsn,
            "losing records covered by the snapshot"
        );
        let keep = lsn.get() as usize - 1;
        self.live.truncate(keep);
        self.durable.truncate(keep);
        self.synced = self.synced.min(keep);
    }

    /// The log description a restarted node gives its core.
    pub fn recover(&self) -> RecoveredLog {
        let snapshot_epoch = self
            .record(self.snapshot_lsn)
            .map_or(Epoch::ZERO, |rec| rec.epoch);
        let mut epoch_starts: Vec<(Epoch, Lsn)> = Vec::new();
        for rec in &self.live[self.snapshot_lsn.get() as usize..] {
            if epoch_starts
                .last()
                .is_none_or(|&(epoch, _)| epoch != rec.epoch)
            {
                epoch_starts.push((rec.epoch, rec.lsn));
            }
        }
        RecoveredLog {
            snapshot_lsn: self.snapshot_lsn,
            snapshot_epoch,
            last_lsn: self.last_lsn(),
            epoch_starts,
        }
    }
}
