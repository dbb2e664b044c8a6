//! The core's state: what is persisted (epoch, vote), what describes the local log (LSN
//! pointers and epoch boundaries), and the volatile per-role bookkeeping; plus `validate()`,
//! which asserts the relations between them and runs after every step in the simulator.
//!
//! # The LSN chain
//! ```text
//! snapshot_lsn <= commit_lsn <= last_lsn            on every node
//! durable_lsn <= last_lsn                           on every node
//! commit_lsn <= durable_lsn                         on a primary only
//! ```
//! `snapshot_lsn` is the last record covered by the snapshot that replaced the log's prefix;
//! records `snapshot_lsn + 1 ..= last_lsn` are in the log. On a primary, commit needs the
//! record durable locally, so `commit_lsn <= durable_lsn`. A backup learns `commit_lsn` from the
//! primary and may learn it before its own copy is durable, so there `commit_lsn` may exceed
//! `durable_lsn` (the records are durable on a quorum elsewhere; the application may apply them
//! from the written log).
//!
//! The state does not hold records or payloads, only their LSNs and the epoch boundaries: the
//! epoch of any record follows from the first LSN of each epoch in the log.

use std::collections::VecDeque;

use wal::{Epoch, Lsn, NodeId};

use super::{Role, Time};

/// The shape of the local log: which LSNs it holds and the epoch of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Log {
    /// The last LSN covered by a snapshot (0 when none): the log starts after it.
    pub snapshot_lsn: Lsn,
    /// The epoch of the record at `snapshot_lsn` (`ZERO` when `snapshot_lsn` is 0).
    pub snapshot_epoch: Epoch,
    pub last_lsn: Lsn,
    pub durable_lsn: Lsn,
    /// `(epoch, first LSN of that epoch in the log)`, both strictly increasing. Empty exactly
    /// when the log holds no records; otherwise the first entry starts at `snapshot_lsn + 1`.
    pub epoch_starts: Vec<(Epoch, Lsn)>,
    /// The configuration at the log's start and of every config record in it (`members.rs`).
    pub configs: super::members::Configs,
}

impl Log {
    /// The epoch of the record at `lsn`: known for `snapshot_lsn..=last_lsn` (and 0, "before the
    /// first record", whose epoch is `ZERO`). `None` below the snapshot or past the end.
    pub fn epoch_of(&self, lsn: Lsn) -> Option<Epoch> {
        if lsn == Lsn::ZERO {
            return Some(Epoch::ZERO);
        }
        if lsn == self.snapshot_lsn {
            return Some(self.snapshot_epoch);
        }
        if lsn < self.snapshot_lsn || lsn > self.last_lsn {
            return None;
        }
        let after = self
            .epoch_starts
            .partition_point(|&(_, start)| start <= lsn);
        assert!(
            after > 0,
            "lsn {lsn} above snapshot {} has no epoch start",
            self.snapshot_lsn
        );
        Some(self.epoch_starts[after - 1].0)
    }

    pub fn last_epoch(&self) -> Epoch {
        match self.epoch_starts.last() {
            Some(&(epoch, _)) => epoch,
            None => self.snapshot_epoch,
        }
    }

    /// The first and last LSN of `epoch`'s records in the log, if it holds any.
    pub fn range_of_epoch(&self, epoch: Epoch) -> Option<(Lsn, Lsn)> {
        let i = self.epoch_starts.iter().position(|&(e, _)| e == epoch)?;
        let first = self.epoch_starts[i].1;
        let last = match self.epoch_starts.get(i + 1) {
            Some(&(_, next_start)) => next_start.prev(),
            None => self.last_lsn,
        };
        Some((first, last))
    }

    /// The first LSN in the log whose epoch is above `epoch`, or `last_lsn + 1`.
    pub fn first_lsn_after_epoch(&self, epoch: Epoch) -> Lsn {
        match self.epoch_starts.iter().find(|&&(e, _)| e > epoch) {
            Some(&(_, start)) => start,
            None => self.last_lsn.next(),
        }
    }

    pub fn append(&mut self, first_lsn: Lsn, last_lsn: Lsn, epoch: Epoch) {
        assert_eq!(
            first_lsn,
            self.last_lsn.next(),
            "append must follow last_lsn"
        );
        assert!(
            last_lsn >= first_lsn,
            "append of no records ({first_lsn}..={last_lsn})"
        );
        let last_epoch = self.last_epoch();
        assert!(
            epoch >= last_epoch,
            "record epoch {epoch} below last epoch {last_epoch}"
        );
        if self.epoch_starts.is_empty() || epoch != last_epoch {
            self.epoch_starts.push((epoch, first_lsn));
        }
        self.last_lsn = last_lsn;
    }

    /// Drops every record after `keep_through`.
    pub fn truncate_suffix(&mut self, keep_through: Lsn) {
        assert!(
            keep_through >= self.snapshot_lsn,
            "suffix truncation into the snapshot"
        );
        assert!(
            keep_through < self.last_lsn,
            "suffix truncation that drops nothing"
        );
        self.last_lsn = keep_through;
        self.durable_lsn = self.durable_lsn.min(keep_through);
        self.epoch_starts
            .retain(|&(_, start)| start <= keep_through);
        self.configs.truncate_suffix(keep_through);
    }

    /// Drops every record at or below `through` (now covered by a snapshot).
    pub fn truncate_prefix(&mut self, through: Lsn) {
        assert!(
            through > self.snapshot_lsn,
            "prefix truncation that drops nothing"
        );
        assert!(
            through <= self.last_lsn,
            "prefix truncation past the end of the log"
        );
        let epoch = self
            .epoch_of(through)
            .expect("epoch of an LSN inside the log is known");
        let first = through.next();
        // The epoch of the new first record, if any, starts there now.
        let keep_from = self
            .epoch_starts
            .partition_point(|&(_, start)| start <= first);
        let first_epoch = self.epoch_of(first);
        self.epoch_starts.drain(..keep_from);
        if let Some(first_epoch) = first_epoch {
            self.epoch_starts.insert(0, (first_epoch, first));
        }
        self.snapshot_lsn = through;
        self.snapshot_epoch = epoch;
        self.configs.truncate_prefix(through);
    }

    /// Replaces the whole log by a snapshot through `lsn` (of `epoch`), taken in
    /// configuration `members` (in effect since `members_lsn`).
    pub fn reset_to_snapshot(
        &mut self,
        lsn: Lsn,
        epoch: Epoch,
        members_lsn: Lsn,
        members: super::Members,
    ) {
        self.configs.reset(members_lsn.min(lsn), members);
        self.snapshot_lsn = lsn;
        self.snapshot_epoch = epoch;
        self.last_lsn = lsn;
        self.durable_lsn = lsn;
        self.epoch_starts.clear();
    }

    fn validate(&self) {
        self.configs.validate(self.snapshot_lsn, self.last_lsn);
        assert!(
            self.durable_lsn <= self.last_lsn,
            "durable_lsn {} above last_lsn {}",
            self.durable_lsn,
            self.last_lsn
        );
        assert!(
            self.snapshot_lsn <= self.last_lsn,
            "snapshot_lsn {} above last_lsn {}",
            self.snapshot_lsn,
            self.last_lsn
        );
        if self.snapshot_lsn == Lsn::ZERO {
            assert_eq!(
                self.snapshot_epoch,
                Epoch::ZERO,
                "no snapshot but a snapshot epoch"
            );
        }
        match self.epoch_starts.first() {
            None => assert_eq!(
                self.last_lsn, self.snapshot_lsn,
                "records without epoch starts"
            ),
            Some(&(epoch, start)) => {
                assert_eq!(
                    start,
                    self.snapshot_lsn.next(),
                    "first epoch start is not the log start"
                );
                assert!(
                    epoch >= self.snapshot_epoch,
                    "first epoch {epoch} below snapshot epoch"
                );
            }
        }
        for pair in self.epoch_starts.windows(2) {
            assert!(
                pair[0].0 < pair[1].0,
                "epoch starts not increasing in epoch: {pair:?}"
            );
            assert!(
                pair[0].1 < pair[1].1,
                "epoch starts not increasing in lsn: {pair:?}"
            );
        }
        if let Some(&(_, start)) = self.epoch_starts.last() {
            assert!(
                start <= self.last_lsn,
                "epoch start {start} past last_lsn {}",
                self.last_lsn
            );
        }
    }
}

/// The primary's view of one backup.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub id: NodeId,
    /// The next LSN to ship.
    pub next_lsn: Lsn,
    /// The backup's log equals ours through this LSN (written there, maybe not durable).
    pub acked_lsn: Lsn,
    /// ... and durable there. Only this counts for commit.
    pub match_lsn: Lsn,
    /// After a rejection: one append at a time until one is accepted.
    pub probing: bool,
    /// While probing: when the probe (an append from `next_lsn`, which stays put until the
    /// probe is accepted) left; `None` when no probe is out.
    pub probe_sent_at: Option<Time>,
    /// A `SendSnapshot` is out and not yet answered.
    pub snapshot_pending: bool,
    pub last_sent: Option<Time>,
    /// When `acked_lsn` or `match_lsn` last advanced (or shipping last restarted).
    pub last_progress: Time,
    /// When any response from it last arrived in this epoch.
    pub last_ack: Option<Time>,
    /// The latest send time (our clock) of an append or vote request it answered in this epoch
    /// while a voter. A learner's acknowledgements renew nothing (`lease.rs`).
    pub lease_sent_at: Option<Time>,
    /// Until when (our clock) its answers hold the lease: the latest of each counted answer's
    /// send time plus [`Config::lease_for`](super::Config::lease_for) its `vote_wait`.
    pub lease_end: Option<Time>,
    /// Its latest response said it is a learner (`AppendResponse::learner`, non-zero): it does
    /// not count towards commit or the lease, and is told to vote once it has caught up.
    pub learner: u64,
    /// The learner nonce this primary last saw first, and its last LSN at that moment: the
    /// learner is promoted once it durably holds everything through it (`election.rs`).
    pub learner_seen: u64,
    pub promote_through: Lsn,
    /// What its latest response said of its fitness to serve (`health.rs`).
    pub health: super::Health,
    /// The send time echoed by the response `learner` and `health` were taken from. A
    /// response echoing an earlier one is older news (delayed in the network, or from an
    /// earlier run of the node) and does not overwrite them: an earlier run's "I can vote"
    /// must not make a voter of a wiped successor that cannot.
    pub info_sent_at: Time,
    /// A node the latest configuration no longer holds, shipped to until it durably holds
    /// the config record that removed it (`members.rs`, "Removed nodes"): that record's LSN,
    /// and when this primary stops trying.
    pub departing: Option<(Lsn, Time)>,
    /// While departing: an append carrying a commit LSN at or past the removal, and records
    /// through it, has been sent (the node can then learn that its removal is committed).
    pub departing_told: bool,
}

impl Peer {
    pub fn new(id: NodeId, next_lsn: Lsn, now: Time) -> Peer {
        Peer {
            id,
            next_lsn,
            acked_lsn: Lsn::ZERO,
            match_lsn: Lsn::ZERO,
            probing: true,
            probe_sent_at: None,
            snapshot_pending: false,
            last_sent: None,
            last_progress: now,
            last_ack: None,
            lease_sent_at: None,
            lease_end: None,
            learner: 0,
            learner_seen: 0,
            promote_through: Lsn::ZERO,
            health: super::Health::default(),
            info_sent_at: Time::ZERO,
            departing: None,
            departing_told: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Asking whether peers would vote; epoch unchanged.
    PreVote,
    /// Epoch raised and own vote cast; asking for votes.
    Vote,
}

/// A candidacy in progress.
#[derive(Clone, Debug)]
pub(crate) struct Election {
    pub phase: Phase,
    /// The epoch stood for.
    pub epoch: Epoch,
    /// Member indexes that granted (own included), as a bit set.
    pub granted: u64,
    /// `Phase::Vote`: the persist that must complete before the own vote counts.
    pub persist_seq: u64,
    /// `Phase::Vote`: our clock when the vote requests left (after the persist).
    pub requested_at: Option<Time>,
    /// `Phase::PreVote`: the highest epoch a granter reported; the vote is for an epoch above it.
    pub voter_epoch_max: Epoch,
    /// `Phase::PreVote`: a granter better fit to serve than this node (`health.rs`).
    pub defer_to: Option<NodeId>,
    /// `Phase::Vote`: the shortest `vote_wait` of the votes granted so far, which bounds how
    /// long they renew the lease once won (`Duration::MAX` while none is).
    pub vote_wait_min: std::time::Duration,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct Switchover {
    pub to: NodeId,
    pub deadline: Time,
}

/// After a hand-over: `TimeoutNow` is sent again every heartbeat until the target is heard
/// of in a later epoch or `until` passes, so one lost message does not turn a planned
/// switchover into a full failover timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HandedOver {
    pub to: NodeId,
    /// The epoch the hand-over happened in; a later epoch means the target stood.
    pub epoch: super::Epoch,
    pub until: Time,
    pub next_send: Time,
}

/// Everything the core knows. Fields are grouped by who needs them.
#[derive(Clone, Debug)]
pub(crate) struct State {
    // Persisted (`PersistMeta`).
    pub epoch: Epoch,
    pub voted_for: Option<NodeId>,
    /// A learner neither votes, stands, nor counts towards commit or the lease (`election.rs`).
    pub learner: bool,
    /// `learner` as last persisted (`Input::MetaPersisted`). A promotion takes effect only
    /// once it is durable: a node that reported itself a voter and then lost the promotion in
    /// a crash would come back a learner, and a configuration made with its vote counted
    /// would have one voter fewer than the primary believed (the learner flag is read as
    /// `learner || learner_on_disk`, [`Core::learner`]).
    pub learner_on_disk: bool,
    /// A committed record of the local log is damaged and not yet repaired
    /// (`Input::LogDamaged`): the node neither stands nor takes a hand-over, since it could not
    /// ship that record; it still votes and acknowledges, its log's LSNs and epochs being
    /// intact. Not persisted: at a restart, recovery finds the damage and cuts the log there.
    pub damaged: bool,
    /// The application is attached and answering (`Input::AppHealth`; `health.rs`).
    pub app_live: bool,
    /// Since when an expected application is not; `None` while it is, or none is expected.
    pub app_gone_since: Option<Time>,
    /// No automatic failover (`Input::SetPaused`; stored by the shell, not in `meta`).
    pub paused: bool,
    /// The stamp of the command that set `paused` (`Input::SetPaused`), or of the primary's
    /// pause this node adopted; 0 if none.
    pub pause_stamp: u64,
    /// On a primary, the backup it names as its successor in every append; on a backup, the
    /// one its primary named (`election.rs`, "Who stands first"). Cleared when an election
    /// starts or the epoch changes.
    pub successor: Option<NodeId>,
    /// The epoch in which this node last deferred standing to a better granter: it defers
    /// once per epoch (`health.rs`).
    pub deferred_in: Option<Epoch>,

    /// Fresh on every start, never zero; tells the primary which learner it may promote, so
    /// that a promotion meant for an earlier run of this node (delayed in the network) is
    /// never taken by this one.
    pub learner_nonce: u64,

    pub log: Log,
    pub commit_lsn: Lsn,

    pub role: Role,
    /// The primary of `epoch`, when known.
    pub primary: Option<NodeId>,
    /// The latest clock reading seen.
    pub now: Time,

    // Elections.
    /// When this node last heard from a live primary (an append of the current epoch), granted a
    /// vote, or started. It refuses votes until `failover_timeout` after it.
    pub last_primary_contact: Option<Time>,
    /// The start's refusal, as a contact: the start, or later if the data dir last ran with
    /// a longer failover timeout (`Config::previous_vote_wait`). Kept apart from
    /// `last_primary_contact`, which a contact after the start moves to that contact's time:
    /// the refusal its earlier run promised must not end sooner for it (`lease.rs`).
    pub start_contact: Time,
    /// A node started with a fresh data dir votes, pre-votes and stands only from this time
    /// on (`None` once it has passed, or when the data dir was recovered).
    pub quarantine_until: Option<Time>,
    /// A founding member (its data dir created empty for a new cluster, a voter) that holds
    /// nothing yet: it turns learner on hearing of a cluster that has a log
    /// (`Core::founding_check`). Cleared once its log holds a record.
    pub founding: bool,
    pub election_deadline: Time,
    pub election: Option<Election>,

    // Primary.
    pub peers: Vec<Peer>,
    pub epoch_start_lsn: Lsn,
    pub switchover: Option<Switchover>,
    pub handed_over: Option<HandedOver>,
    pub bytes: super::replication::ByteIndex,

    // Backup.
    /// This backup's log equals the current primary's through this LSN.
    pub verified_lsn: Lsn,
    /// `sent_at` of the latest append from the current primary in the current epoch, echoed in
    /// unasked responses. Zero when the epoch or the primary changes: a send time of another
    /// primary's clock means nothing to this one (`lease.rs`).
    pub primary_sent_at: std::time::Duration,
    pub acked_durable_lsn: Lsn,

    // Meta persistence: messages held until a persist completes.
    pub persists_requested: u64,
    pub persists_done: u64,
    pub persists_pending: VecDeque<super::PersistedMeta>,
    pub held: Vec<(u64, NodeId, super::Message)>,

    pub reported: (Role, Epoch, Option<NodeId>),
    /// The latest configuration last reported with `Action::MembersChanged`.
    pub members_reported: Option<(Lsn, super::Members)>,
    /// The departing peers last reported with `Action::PeersDeparting` (bit `id - 1`).
    pub departing_reported: u64,
}

impl State {
    /// Asserts the relations between the fields (see the module docs). Cheap: O(epochs + peers).
    pub fn validate(&self, node_id: NodeId) {
        self.log.validate();
        let log = &self.log;
        assert!(
            self.commit_lsn <= log.last_lsn,
            "commit_lsn {} above last_lsn {}",
            self.commit_lsn,
            log.last_lsn
        );
        assert!(
            log.snapshot_lsn <= self.commit_lsn,
            "snapshot_lsn {} above commit_lsn {}",
            log.snapshot_lsn,
            self.commit_lsn
        );
        assert!(
            log.last_epoch() <= self.epoch,
            "last record's epoch {} above current epoch {}",
            log.last_epoch(),
            self.epoch
        );
        assert!(
            self.verified_lsn <= log.last_lsn,
            "verified_lsn above last_lsn"
        );
        assert_eq!(
            self.persists_requested - self.persists_done,
            self.persists_pending.len() as u64,
            "persist bookkeeping"
        );
        match self.role {
            Role::Primary => {
                assert!(!self.learner, "a learner is primary");
                assert!(!self.damaged, "a node with a damaged log is primary");
                assert!(
                    self.commit_lsn <= log.durable_lsn,
                    "primary commit_lsn {} above durable_lsn {}",
                    self.commit_lsn,
                    log.durable_lsn
                );
                assert_eq!(self.primary, Some(node_id), "primary does not know itself");
                assert_eq!(
                    self.voted_for,
                    Some(node_id),
                    "primary did not vote for itself"
                );
                assert!(self.election.is_none(), "primary with an election");
                assert!(
                    self.epoch_start_lsn <= log.last_lsn,
                    "epoch start past last_lsn"
                );
                assert_eq!(
                    log.last_epoch(),
                    self.epoch,
                    "primary's last record is not of its epoch"
                );
                if self.epoch_start_lsn >= log.snapshot_lsn {
                    assert_eq!(
                        log.epoch_of(self.epoch_start_lsn),
                        Some(self.epoch),
                        "epoch start record"
                    );
                }
                let (latest_lsn, latest) = log.configs.latest();
                let mut departing = 0u64;
                for peer in &self.peers {
                    // A peer is a member of the latest configuration, or a removed node being
                    // told of its removal (`members.rs`, "Removed nodes"), never both.
                    match peer.departing {
                        None => assert!(latest.contains(peer.id), "peer {} not a member", peer.id),
                        Some((lsn, _)) => {
                            assert!(
                                !latest.contains(peer.id) && lsn <= latest_lsn,
                                "departing peer {} a member, or removed past the latest configuration",
                                peer.id
                            );
                            departing |= super::Members::bit(peer.id).unwrap_or(0);
                        }
                    }
                    assert!(
                        peer.match_lsn <= peer.acked_lsn,
                        "peer {} match above acked",
                        peer.id
                    );
                    assert!(
                        peer.acked_lsn < peer.next_lsn,
                        "peer {} acked not below next",
                        peer.id
                    );
                    assert!(
                        peer.next_lsn <= log.last_lsn.next(),
                        "peer {} next_lsn {} past last_lsn {}",
                        peer.id,
                        peer.next_lsn,
                        log.last_lsn
                    );
                }
                assert_eq!(
                    departing, self.departing_reported,
                    "departing peers not as reported"
                );
            }
            Role::Candidate => {
                assert!(!self.learner, "a learner stands for election");
                assert_eq!(
                    self.voted_for,
                    Some(node_id),
                    "candidate did not vote for itself"
                );
                assert!(self.primary.is_none(), "candidate knows a primary");
                let election = self.election.as_ref().expect("a candidate has an election");
                assert_eq!(election.phase, Phase::Vote, "candidate in pre-vote");
                assert_eq!(election.epoch, self.epoch, "candidate's election epoch");
                assert!(self.switchover.is_none(), "candidate with a switchover");
            }
            Role::Backup => {
                assert_eq!(
                    self.departing_reported, 0,
                    "a backup reports departing peers"
                );
                assert!(self.primary != Some(node_id), "backup thinks it is primary");
                assert!(self.switchover.is_none(), "backup with a switchover");
                if let Some(election) = &self.election {
                    assert_eq!(election.phase, Phase::PreVote, "backup in a vote phase");
                }
            }
        }
    }
}
