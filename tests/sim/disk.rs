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
//!
//! Config records (`members.rs` in the core) are records like the others, carrying their
//! configuration. Recovery reads them only from the log after the snapshot, as a real shell
//! must (it has replaced the records before): the configuration in effect at the snapshot is
//! kept beside it (`snapshot_config`, the shell's `members.json`), written when a prefix is
//! cut and when a snapshot is installed, durable at once like the snapshot itself.

use std::collections::VecDeque;

use understudy::core::{Members, PersistedMeta, RecoveredLog};
use understudy::{Epoch, Lsn};

/// A record as the simulator sees it: the payload is a unique id given by the workload (0 for
/// epoch-start and config records); `config` is the configuration of a config record;
/// `prefix_hash` covers this record and every one before it, so equal hashes mean equal
/// prefixes (invariant 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rec {
    pub lsn: Lsn,
    pub epoch: Epoch,
    pub payload: u64,
    pub config: Option<Members>,
    pub prefix_hash: u64,
}

pub fn prefix_hash(
    previous: u64,
    lsn: Lsn,
    epoch: Epoch,
    payload: u64,
    config: Option<Members>,
) -> u64 {
    let mut h = previous ^ 0x9E37_79B9_7F4A_7C15;
    for x in [lsn.get(), epoch.get(), payload] {
        h = (h ^ x).wrapping_mul(0x100_0000_01B3).rotate_left(29);
    }
    if let Some(members) = config {
        for x in [members.voter_bits(), members.learner_bits(), u64::MAX] {
            h = (h ^ x).wrapping_mul(0x100_0000_01B3).rotate_left(29);
        }
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
    /// The configuration in effect at `snapshot_lsn` and the LSN of its record (0: a seed),
    /// stored when the prefix is cut or a snapshot installed; `None` while there is no
    /// snapshot.
    pub snapshot_config: Option<(Lsn, Members)>,
    /// The LSNs of the config records in `live`, in order.
    config_lsns: Vec<Lsn>,
    pub sync_scheduled: bool,
    pub meta: PersistedMeta,
    pub meta_queue: VecDeque<PersistedMeta>,
    /// The longest failover timeout a run on this disk used (the data dir's `vote-wait`,
    /// never lowered here: the node lowers it only once it has waited the longer one out).
    pub vote_wait: std::time::Duration,
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
    pub fn append(&mut self, lsn: Lsn, epoch: Epoch, payload: u64, config: Option<Members>) -> Rec {
        assert_eq!(
            lsn,
            self.last_lsn().next(),
            "disk write must follow the last record"
        );
        let rec = Rec {
            lsn,
            epoch,
            payload,
            config,
            prefix_hash: prefix_hash(self.hash_before(lsn), lsn, epoch, payload, config),
        };
        self.live.push(rec);
        if config.is_some() {
            self.config_lsns.push(lsn);
        }
        rec
    }

    fn index_configs(&mut self) {
        self.config_lsns.clear();
        self.config_lsns.extend(
            self.live
                .iter()
                .filter(|rec| rec.config.is_some())
                .map(|rec| rec.lsn),
        );
    }

    /// The config record in effect at `lsn` as the records say (the latest at or below it),
    /// if any is left in `live`.
    pub fn config_record_at(&self, lsn: Lsn) -> Option<(Lsn, Members)> {
        let i = self.config_lsns.partition_point(|&at| at <= lsn);
        let at = *self.config_lsns.get(i.checked_sub(1)?)?;
        let members = self.record(at)?.config?;
        Some((at, members))
    }

    /// The config records of `live` in `first..=last`.
    pub fn config_records_in(
        &self,
        first: Lsn,
        last: Lsn,
    ) -> impl Iterator<Item = (Lsn, Members)> + '_ {
        let from = self.config_lsns.partition_point(|&at| at < first);
        self.config_lsns[from..]
            .iter()
            .take_while(move |&&at| at <= last)
            .filter_map(|&at| Some((at, self.record(at)?.config?)))
    }

    /// The latest configuration of the log as a restarted node would find it: the last config
    /// record after the snapshot, else the one stored with the snapshot (`None`: the seed).
    pub fn latest_config(&self) -> Option<(Lsn, Members)> {
        match self.config_lsns.last() {
            Some(&at) if at > self.snapshot_lsn => self.config_record_at(at),
            _ => self.snapshot_config,
        }
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
        while self.config_lsns.last().is_some_and(|&at| at > keep_through) {
            self.config_lsns.pop();
        }
    }

    /// The prefix through `through` is covered by a snapshot from now on, taken in
    /// configuration `config` (the core's `members_at(through)`), which is stored with it.
    pub fn truncate_prefix(&mut self, through: Lsn, config: (Lsn, Members)) {
        assert!(through > self.snapshot_lsn && through <= self.durable_lsn());
        self.snapshot_lsn = through;
        self.snapshot_config = Some(config);
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

    /// Replaces the whole log by a snapshot through `records.last()`, durably, with the
    /// configuration in effect there.
    pub fn install_snapshot(&mut self, records: &[Rec], config: (Lsn, Members)) {
        self.live = records.to_vec();
        self.durable = records.to_vec();
        self.synced = records.len();
        self.snapshot_lsn = Lsn(records.len() as u64);
        self.snapshot_config = Some(config);
        self.index_configs();
    }

    /// The machine stopped: what survives.
    pub fn crash(&mut self) {
        self.live = self.durable.clone();
        self.synced = self.live.len();
        self.sync_scheduled = false;
        self.meta_queue.clear();
        self.index_configs();
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
        self.index_configs();
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
        // The configuration kept with the snapshot, then every config record after it.
        let first = self
            .config_lsns
            .partition_point(|&at| at <= self.snapshot_lsn);
        let configs = self
            .snapshot_config
            .into_iter()
            .chain(self.config_lsns[first..].iter().map(|&at| {
                let members = self.record(at).and_then(|rec| rec.config);
                (at, members.expect("indexed config record"))
            }))
            .collect();
        RecoveredLog {
            snapshot_lsn: self.snapshot_lsn,
            snapshot_epoch,
            last_lsn: self.last_lsn(),
            epoch_starts,
            configs,
        }
    }
}
