//! The replication core: a deterministic state machine that decides roles, epochs, votes,
//! heartbeats, log shipping, commit and the lease. [`Input`]s in, [`Action`]s out.
//!
//! It does no I/O, reads no clock, logs nothing and owns no randomness but the seeded
//! generator it is given, so the simulator (`tests/sim`) runs it exactly as the shell does.
//! It never sees a payload: it deals in LSNs and epochs, and the shell attaches record bytes
//! to the LSN ranges the core names.
//!
//! | file | concern |
//! |---|---|
//! | `input.rs`, `action.rs`, `message.rs` | the interface: what happens, what to do, what peers say |
//! | `election.rs` | pre-vote, vote, candidacy, promotion |
//! | `replication.rs` | shipping appends, log matching, conflict hints, snapshots hand-off |
//! | `commit.rs` | the commit rule |
//! | `lease.rs` | the lease and the timing argument for it |
//! | `switchover.rs` | planned hand-over to a chosen backup |
//! | `health.rs` | the application's liveness, priority, `no_failover` and the pause: who should serve |
//! | `state.rs` | the state and `validate()` |
//!
//! A node that cannot vouch for its earlier votes and log (a wiped or new data dir joining an
//! existing cluster, a recovery that cut more than a provably torn tail, a restart after an
//! fsync failure) starts as a **learner**: it replicates and acknowledges, but neither votes,
//! stands, nor counts towards commit or the lease, until the primary of its epoch tells it that
//! it durably holds every committed record. One whose votes were lost with its data dir also
//! waits out [`Config::fresh_quarantine`] after it starts. The argument is in `election.rs`.
//!
//! A step runs to completion without waiting for anything, so every assertion holds from check
//! to use. Work that must wait (a vote reply until the vote is persisted) is held in the state
//! and released by a later input.

mod action;
mod commit;
mod config;
mod election;
mod health;
mod input;
mod lease;
mod members;
mod message;
mod replication;
mod rng;
mod state;
mod switchover;
mod time;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

pub use action::{
    Action, LearnerReason, Rejection, Role, SwitchoverOutcome, SwitchoverReason, SwitchoverRefusal,
};
pub use config::{Config, ConfigError, TestKnobs, MEMBERS_MAX};
pub use input::Input;
pub use members::{MemberRole, Members, MembersChange, MembersRefusal};
pub use message::{Append, AppendResponse, Health, Message};
pub use rng::SplitMix64;
pub use time::Time;

use state::{Log, State};
use wal::{Epoch, Lsn, NodeId};

/// The persisted vote and standing: the last `PersistMeta` that completed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistedMeta {
    pub epoch: Epoch,
    pub voted_for: Option<NodeId>,
    /// The node is a learner (module docs): it may not vote until a primary promotes it.
    pub learner: bool,
}

/// The log as recovered from disk at start-up: every record in it is durable.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveredLog {
    /// The last LSN covered by the snapshot the log starts after (0 when none).
    pub snapshot_lsn: Lsn,
    /// The epoch of the record at `snapshot_lsn` (`ZERO` when `snapshot_lsn` is 0).
    pub snapshot_epoch: Epoch,
    pub last_lsn: Lsn,
    /// `(epoch, first LSN of that epoch)` for the records `snapshot_lsn + 1 ..= last_lsn`.
    pub epoch_starts: Vec<(Epoch, Lsn)>,
    /// The configuration in effect at the log's start (at or below `snapshot_lsn`), then
    /// that of every config record in the log, by LSN (`members.rs`). Empty: the seed,
    /// `Config::members` as voters, at LSN 0.
    pub configs: Vec<(Lsn, Members)>,
}

/// How the node may take part in elections when it starts, as the shell found its data dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// The node cannot vouch for its log or its votes: it starts as a learner (neither votes,
    /// stands, nor counts towards commit or the lease) until a primary of its epoch promotes it.
    pub learner: bool,
    /// The data directory was created from nothing (a wiped or replaced disk) and this node
    /// may have voted before and forgotten it, or such a start has not finished its
    /// quarantine: it waits [`Config::fresh_quarantine`] before it votes, pre-votes, stands or
    /// counts towards the lease, even once promoted (see `election.rs`).
    pub quarantine: bool,
}

impl Start {
    /// Epoch, vote and log read from a data dir this node can vouch for (or a founding member
    /// of a new cluster, which has neither voted nor written anything).
    pub const VOTER: Start = Start {
        learner: false,
        quarantine: false,
    };
    /// The metadata survived but the log cannot be vouched for (a suspect tail was cut, an
    /// fsync failed, or the node was a learner when it stopped).
    pub const LEARNER: Start = Start {
        learner: true,
        quarantine: false,
    };
    /// A new or wiped data dir joining an existing cluster.
    pub const WIPED: Start = Start {
        learner: true,
        quarantine: true,
    };
}

/// Why the core cannot start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("recovered log is inconsistent: {reason}")]
    RecoveredLog { reason: &'static str },
}

/// What `Core::status()` reports, for the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub node_id: NodeId,
    pub role: Role,
    pub epoch: Epoch,
    pub primary: Option<NodeId>,
    pub voted_for: Option<NodeId>,
    /// A learner: neither votes nor counts towards commit until promoted.
    pub learner: bool,
    /// Still waiting out the quarantine of a fresh data dir.
    pub quarantined: bool,
    /// A damaged record awaits repair: the node does not stand.
    pub damaged: bool,
    /// Automatic failover is paused (`Input::SetPaused`).
    pub paused: bool,
    pub snapshot_lsn: Lsn,
    pub last_lsn: Lsn,
    pub last_epoch: Epoch,
    pub durable_lsn: Lsn,
    pub commit_lsn: Lsn,
    /// On a primary: until when (local clock) it may serve without another acknowledgement.
    pub lease_until: Option<Time>,
    /// On a primary: one entry per backup.
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    pub node_id: NodeId,
    /// Durable on the backup and matching this log.
    pub match_lsn: Lsn,
    pub next_lsn: Lsn,
    pub last_ack: Option<Time>,
    /// It reported itself a learner (or still quarantined) in its latest response.
    pub learner: bool,
    /// What its latest response said of its fitness to serve.
    pub health: Health,
}

/// The replication state machine of one node.
pub struct Core {
    config: Config,
    lease: Duration,
    rng: SplitMix64,
    st: State,
}

impl Core {
    /// A core starting as a backup from what the disk holds.
    ///
    /// `now` is the local clock. A restarted node treats its start as contact with a primary:
    /// it refuses votes for `failover_timeout`, because it may have acknowledged a heartbeat
    /// just before it stopped, and the lease argument (`lease.rs`) counts on that refusal.
    ///
    /// `start` says whether the node starts as a learner and whether its data directory is
    /// fresh; a fresh node waits out a quarantine before it takes part in elections
    /// (`election.rs`), and reports its end with [`Action::QuarantineEnded`].
    ///
    /// `rng_seed` seeds the election jitter.
    pub fn new(
        config: Config,
        meta: PersistedMeta,
        log: RecoveredLog,
        start: Start,
        now: Time,
        rng_seed: u64,
    ) -> Result<Core, StartError> {
        config.validate()?;
        let seed = Members::voters_of(&config.members)
            .ok_or(StartError::Config(ConfigError::NodeIdTooLarge))?;
        let log = Core::new_check_log(log, seed)?;
        let lease = config.lease();
        // A log may hold records of an epoch this node adopted but never persisted (adoption
        // from an append is not waited for); the epoch is at least that of its last record.
        let epoch = meta.epoch.max(log.last_epoch());
        let voted_for = if epoch == meta.epoch {
            meta.voted_for
        } else {
            None
        };
        let commit_lsn = log.snapshot_lsn;
        // A start refuses votes for the failover timeout (`lease.rs`), or for the one the data
        // dir last ran with if that was longer: its earlier answers may still count towards a
        // primary's lease for that long.
        let start_contact = now
            + config
                .previous_vote_wait
                .saturating_sub(config.failover_timeout);
        let quarantine_until = if start.quarantine && !config.unsafe_testing.skip_fresh_quarantine {
            Some(now + config.fresh_quarantine())
        } else {
            None
        };
        let learner = (start.learner || meta.learner) && !config.unsafe_testing.skip_learner;
        let founding = quarantine_until.is_some()
            && !learner
            && epoch == Epoch::ZERO
            && log.last_lsn == Lsn::ZERO
            && log.snapshot_lsn == Lsn::ZERO;
        let mut rng = SplitMix64::new(rng_seed);
        // Never zero: zero in `AppendResponse::learner` means "a voter".
        let learner_nonce = rng.next_u64() | 1;
        let mut core = Core {
            lease,
            rng,
            st: State {
                epoch,
                voted_for,
                learner,
                learner_on_disk: learner,
                damaged: false,
                app_live: false,
                app_gone_since: None,
                paused: false,
                pause_stamp: 0,
                successor: None,
                deferred_in: None,
                learner_nonce,
                log,
                commit_lsn,
                role: Role::Backup,
                primary: None,
                now,
                last_primary_contact: Some(start_contact),
                start_contact,
                quarantine_until,
                founding,
                election_deadline: now,
                election: None,
                peers: Vec::new(),
                epoch_start_lsn: Lsn::ZERO,
                switchover: None,
                handed_over: None,
                bytes: replication::ByteIndex::default(),
                verified_lsn: Lsn::ZERO,
                primary_sent_at: Duration::ZERO,
                acked_durable_lsn: Lsn::ZERO,
                persists_requested: 0,
                persists_done: 0,
                persists_pending: VecDeque::new(),
                held: Vec::new(),
                reported: (Role::Backup, epoch, None),
                members_reported: None,
                departing_reported: 0,
            },
            config,
        };
        // The shell reads the configuration it starts with from `members()`; changes are
        // reported from here on.
        core.st.members_reported = Some(core.st.log.configs.latest());
        // Counted from the end of the start's refusal, as after hearing from a primary:
        // standing is voting for itself, which the refusal forbids too.
        let refusing_from = core.st.last_primary_contact.unwrap_or(now);
        core.reset_election_deadline(refusing_from);
        core.quarantine_defer_deadline();
        Ok(core)
    }

    fn new_check_log(recovered: RecoveredLog, seed: Members) -> Result<Log, StartError> {
        let fail = |reason| Err(StartError::RecoveredLog { reason });
        let mut configs = members::Configs {
            entries: vec![(Lsn::ZERO, seed)],
        };
        if !recovered.configs.is_empty() {
            configs.entries.clone_from(&recovered.configs);
            if configs.entries[0].0 > recovered.snapshot_lsn {
                // No configuration at the log's start was kept: the seed is.
                configs.entries.insert(0, (Lsn::ZERO, seed));
            }
        }
        for pair in configs.entries.windows(2) {
            if pair[0].0 >= pair[1].0 || pair[1].0 <= recovered.snapshot_lsn {
                return fail("configurations are not strictly increasing after the snapshot");
            }
        }
        if configs.latest().0 > recovered.last_lsn.max(configs.entries[0].0) {
            return fail("a config record past the end of the log");
        }
        if configs
            .entries
            .iter()
            .any(|(_, members)| members.voter_count() == 0)
        {
            return fail("a configuration without voters");
        }
        if recovered.last_lsn < recovered.snapshot_lsn {
            return fail("last_lsn is below snapshot_lsn");
        }
        if (recovered.snapshot_lsn == Lsn::ZERO) != (recovered.snapshot_epoch == Epoch::ZERO) {
            return fail(
                "snapshot_lsn and snapshot_epoch disagree about whether there is a snapshot",
            );
        }
        match recovered.epoch_starts.first() {
            None if recovered.last_lsn != recovered.snapshot_lsn => {
                return fail("the log holds records but no epoch starts");
            }
            None => {}
            Some(&(epoch, start)) => {
                if start != recovered.snapshot_lsn.next() {
                    return fail(
                        "the first epoch start is not the first record after the snapshot",
                    );
                }
                if epoch < recovered.snapshot_epoch {
                    return fail("the first epoch is below the snapshot's epoch");
                }
            }
        }
        for pair in recovered.epoch_starts.windows(2) {
            if pair[0].0 >= pair[1].0 || pair[0].1 >= pair[1].1 {
                return fail("epoch starts are not strictly increasing");
            }
        }
        if let Some(&(_, start)) = recovered.epoch_starts.last() {
            if start > recovered.last_lsn {
                return fail("an epoch starts after the last record");
            }
        }
        Ok(Log {
            snapshot_lsn: recovered.snapshot_lsn,
            snapshot_epoch: recovered.snapshot_epoch,
            last_lsn: recovered.last_lsn,
            durable_lsn: recovered.last_lsn,
            epoch_starts: recovered.epoch_starts,
            configs,
        })
    }

    /// Feeds one input; appends the resulting actions to `out` (which the caller reuses).
    pub fn step(&mut self, input: Input, out: &mut Vec<Action>) {
        match input {
            Input::Tick { now } => {
                self.observe_time(now);
                self.lease_check(out);
                self.quarantine_check(out);
                self.on_tick(out);
            }
            Input::Receive { now, from, message } => {
                self.observe_time(now);
                self.lease_check(out);
                // A message from ourselves, or from an id no configuration can hold, is a
                // misrouted frame and carries no authority. Messages from nodes outside our
                // latest configuration are taken: a node being added knows the cluster
                // before its log says it is a member, and a removed node's requests are
                // refused on their merits (`members.rs`).
                if from != self.config.node_id && Members::bit(from).is_some() {
                    self.founding_check(from, &message, out);
                    self.on_message(from, message, out);
                }
            }
            Input::Propose {
                now,
                count,
                bytes,
                runs,
            } => {
                self.observe_time(now);
                self.lease_check(out);
                self.on_propose(count, bytes, &runs, out);
            }
            Input::Read { now } => {
                self.observe_time(now);
                self.lease_check(out);
                self.on_read(out);
            }
            Input::Durable { now, lsn, epoch } => {
                self.observe_time(now);
                self.lease_check(out);
                self.on_durable(lsn, epoch, out);
            }
            Input::MetaPersisted {
                epoch,
                voted_for,
                learner,
            } => self.on_meta_persisted(
                PersistedMeta {
                    epoch,
                    voted_for,
                    learner,
                },
                out,
            ),
            Input::Switchover { to } => self.on_switchover(to, out),
            Input::PrefixTruncated { through } => self.on_prefix_truncated(through),
            Input::SnapshotSent { to, lsn, epoch } => self.on_snapshot_sent(to, lsn, epoch, out),
            Input::SnapshotFailed { to } => self.on_snapshot_failed(to),
            Input::SnapshotInstalled {
                lsn,
                epoch,
                members_lsn,
                members,
            } => self.on_snapshot_installed(lsn, epoch, members_lsn, members, out),
            Input::ProposeMembers { now, change } => {
                self.observe_time(now);
                self.lease_check(out);
                self.on_propose_members(change, out);
            }
            Input::LogDamaged => self.on_log_damaged(out),
            Input::LogRepaired => self.st.damaged = false,
            Input::AppHealth { expected, live } => self.on_app_health(expected, live),
            Input::SetPaused { paused, stamp } => self.on_set_paused(paused, stamp, out),
        }
        self.members_report(out);
        self.report_role(out);
    }

    fn on_tick(&mut self, out: &mut Vec<Action>) {
        match self.st.role {
            Role::Primary => {
                self.switchover_check(out);
                self.witness_check(out);
                self.app_gone_check(out);
                if self.st.role == Role::Primary {
                    self.members_auto_promote(out);
                    self.primary_on_tick(out);
                }
            }
            Role::Backup | Role::Candidate => {
                self.switchover_resend(out);
                if self.st.now >= self.st.election_deadline && self.quarantined() {
                    self.quarantine_defer_deadline();
                } else if self.st.now >= self.st.election_deadline
                    && (!self.can_stand() || self.st.paused)
                {
                    // A learner never stands (it waits to be promoted), nor does a node that
                    // could not ship a damaged record (it waits for the repair), one with
                    // `no_failover`, or a paused one (`health.rs`).
                    let now = self.st.now;
                    self.reset_election_deadline(now);
                } else if self.st.now >= self.st.election_deadline
                    && self.heard_from_primary_recently()
                {
                    // Still bound by an answer it gave (or by a start's refusal): it may not
                    // vote for anyone, itself included, until the wait is over (`lease.rs`).
                    let from = self.refusal_contact();
                    self.reset_election_deadline(from);
                } else if self.st.now >= self.st.election_deadline {
                    self.election_start_pre_vote(out);
                }
            }
        }
    }

    fn on_message(&mut self, from: NodeId, message: Message, out: &mut Vec<Action>) {
        match message {
            Message::PreVoteRequest {
                epoch,
                last_lsn,
                last_epoch,
            } => self.on_pre_vote_request(from, epoch, last_lsn, last_epoch, out),
            Message::PreVoteResponse {
                epoch,
                granted,
                voter_epoch,
                health,
                same_log,
            } => {
                self.on_pre_vote_response(from, epoch, granted, voter_epoch, health, same_log, out)
            }
            Message::VoteRequest {
                epoch,
                last_lsn,
                last_epoch,
                transfer,
            } => self.on_vote_request(from, epoch, last_lsn, last_epoch, transfer, out),
            Message::VoteResponse {
                epoch,
                granted,
                vote_wait,
            } => self.on_vote_response(from, epoch, granted, vote_wait, out),
            Message::Append(append) => self.on_append(from, append, out),
            Message::AppendResponse(response) => self.on_append_response(from, response, out),
            Message::TimeoutNow { epoch } => self.on_timeout_now(from, epoch, out),
        }
    }

    fn on_durable(&mut self, lsn: Lsn, epoch: Epoch, out: &mut Vec<Action>) {
        // A report about records since truncated (their LSN now holds another epoch, or is
        // gone) says nothing about the records there now.
        if lsn <= self.st.log.durable_lsn || self.st.log.epoch_of(lsn) != Some(epoch) {
            return;
        }
        self.st.log.durable_lsn = lsn;
        match self.st.role {
            Role::Primary => {
                self.commit_advance_primary(out);
                self.switchover_check(out);
            }
            Role::Backup | Role::Candidate => self.backup_ack_durable(out),
        }
    }

    fn on_meta_persisted(&mut self, persisted: PersistedMeta, out: &mut Vec<Action>) {
        let expected = self.st.persists_pending.pop_front();
        assert_eq!(
            expected,
            Some(persisted),
            "MetaPersisted out of order: the shell must report each PersistMeta once, in order"
        );
        self.st.persists_done += 1;
        self.st.learner_on_disk = persisted.learner;
        let done = self.st.persists_done;
        self.st.held.retain(|&(seq, to, message)| {
            if seq <= done {
                out.push(Action::Send { to, message });
                false
            } else {
                true
            }
        });
        self.election_on_persisted(out);
    }

    /// The core's own view, for the admin API.
    pub fn status(&self) -> Status {
        let st = &self.st;
        let primary = st.role == Role::Primary;
        Status {
            node_id: self.config.node_id,
            role: st.role,
            epoch: st.epoch,
            primary: st.primary,
            voted_for: st.voted_for,
            learner: self.learner(),
            quarantined: st.quarantine_until.is_some(),
            damaged: st.damaged,
            paused: st.paused,
            snapshot_lsn: st.log.snapshot_lsn,
            last_lsn: st.log.last_lsn,
            last_epoch: st.log.last_epoch(),
            durable_lsn: st.log.durable_lsn,
            commit_lsn: st.commit_lsn,
            lease_until: if primary { self.lease_until() } else { None },
            peers: if primary {
                st.peers
                    .iter()
                    .map(|peer| PeerStatus {
                        node_id: peer.id,
                        match_lsn: peer.match_lsn,
                        next_lsn: peer.next_lsn,
                        last_ack: peer.last_ack,
                        learner: peer.learner != 0,
                        health: peer.health,
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The epoch of the record at `lsn` in the local log, if the log (or its snapshot boundary)
    /// holds it.
    pub fn epoch_of(&self, lsn: Lsn) -> Option<Epoch> {
        self.st.log.epoch_of(lsn)
    }

    /// Whether a switchover (asked for, or for a gone application) is under way.
    pub fn switchover_in_progress(&self) -> bool {
        self.st.switchover.is_some()
    }

    /// Whether this node takes part in elections and counts towards commit and the lease:
    /// neither a learner nor waiting out a fresh data dir's quarantine.
    pub fn is_voter(&self) -> bool {
        self.voter()
    }

    /// Whether a damaged record of the local log awaits repair (`Input::LogDamaged`).
    pub fn is_damaged(&self) -> bool {
        self.st.damaged
    }

    pub fn role(&self) -> Role {
        self.st.role
    }

    pub fn epoch(&self) -> Epoch {
        self.st.epoch
    }

    pub fn primary(&self) -> Option<NodeId> {
        self.st.primary
    }

    pub fn commit_lsn(&self) -> Lsn {
        self.st.commit_lsn
    }

    pub fn last_lsn(&self) -> Lsn {
        self.st.log.last_lsn
    }

    /// Whether a snapshot through `lsn` (of `epoch`), streamed by the primary, should be
    /// installed. The shell asks before installing, and discards it when not (reporting the
    /// transfer as done all the same): a log that already holds that record holds everything
    /// the snapshot covers (log matching), and installing would throw away records after it
    /// that this node may already have acknowledged as durable.
    pub fn snapshot_wanted(&self, lsn: Lsn, epoch: Epoch) -> bool {
        self.st.role != Role::Primary
            && lsn > self.st.commit_lsn
            && self.st.log.epoch_of(lsn) != Some(epoch)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Asserts every relation between the state's fields (`state.rs`). The simulator calls it
    /// after every step; it is cheap enough for production use too.
    pub fn validate(&self) {
        self.st.validate(self.config.node_id);
    }

    // Helpers shared by the protocol files.

    fn observe_time(&mut self, now: Time) {
        // The clock is monotonic per run; taking the maximum keeps a misbehaving clock from
        // moving the core's time backwards.
        self.st.now = self.st.now.max(now);
    }

    /// The latest configuration in the log: the one this node acts on (`members.rs`).
    pub fn members(&self) -> Members {
        self.st.log.configs.latest().1
    }

    /// The LSN of the config record of [`Core::members`] (0 for the seed).
    pub fn members_lsn(&self) -> Lsn {
        self.st.log.configs.latest().0
    }

    /// The configuration in effect at `lsn`, and the LSN of its record, if the log still
    /// knows (at or above the configuration at its start).
    pub fn members_at(&self, lsn: Lsn) -> (Lsn, Members) {
        self.st.log.configs.at(lsn)
    }

    /// Backups whose durable acknowledgement commits a record, in the latest configuration:
    /// `Config::sync_replicas_for`.
    fn sync_replicas(&self) -> usize {
        self.config.sync_replicas_for(&self.members())
    }

    /// The voters of the latest configuration other than this node.
    fn other_voters(&self) -> impl Iterator<Item = NodeId> + '_ {
        let me = self.config.node_id;
        self.members().voter_ids_owned().filter(move |&id| id != me)
    }

    fn peer_index(&self, id: NodeId) -> Option<usize> {
        self.st.peers.iter().position(|peer| peer.id == id)
    }

    /// Emits `PersistMeta` for the current epoch and vote; returns the number that
    /// `persists_done` must reach before anything depending on it may leave.
    fn persist_meta(&mut self, out: &mut Vec<Action>) -> u64 {
        let meta = PersistedMeta {
            epoch: self.st.epoch,
            voted_for: self.st.voted_for,
            learner: self.st.learner,
        };
        out.push(Action::PersistMeta {
            epoch: meta.epoch,
            voted_for: meta.voted_for,
            learner: meta.learner,
        });
        self.st.persists_pending.push_back(meta);
        self.st.persists_requested += 1;
        self.st.persists_requested
    }

    /// Sends `message` once persist number `seq` is done (at once if it already is).
    fn send_after_persist(
        &mut self,
        seq: u64,
        to: NodeId,
        message: Message,
        out: &mut Vec<Action>,
    ) {
        if seq <= self.st.persists_done {
            out.push(Action::Send { to, message });
        } else {
            self.st.held.push((seq, to, message));
        }
    }

    /// Moves to a higher epoch learned from a peer: as a backup, no vote cast, primary unknown.
    /// The epoch is persisted but nothing waits for it: adopting an epoch grants nothing.
    fn adopt_epoch(&mut self, epoch: Epoch, out: &mut Vec<Action>) {
        assert!(
            epoch > self.st.epoch,
            "adopt_epoch({epoch}) not above {}",
            self.st.epoch
        );
        match self.st.role {
            Role::Primary => self.step_down(out),
            Role::Candidate | Role::Backup => {}
        }
        self.st.epoch = epoch;
        self.st.voted_for = None;
        self.st.role = Role::Backup;
        self.st.primary = None;
        self.st.election = None;
        self.st.successor = None;
        self.st.verified_lsn = Lsn::ZERO;
        self.st.acked_durable_lsn = Lsn::ZERO;
        if !self.config.unsafe_testing.old_lease_echo {
            self.st.primary_sent_at = Duration::ZERO;
        }
        self.persist_meta(out);
    }

    /// A damaged record in the local log (`Input::LogDamaged`): step down if primary, give up
    /// a candidacy (its vote requests not yet sent are dropped), and stand for nothing until
    /// `Input::LogRepaired`.
    fn on_log_damaged(&mut self, out: &mut Vec<Action>) {
        match self.st.role {
            Role::Primary => self.step_down(out),
            Role::Candidate => {
                self.st.role = Role::Backup;
                self.st.election = None;
                self.st
                    .held
                    .retain(|&(_, _, message)| !matches!(message, Message::VoteRequest { .. }));
            }
            Role::Backup => self.st.election = None,
        }
        self.st.damaged = true;
        let now = self.st.now;
        self.reset_election_deadline(now);
    }

    /// Primary to backup in the same epoch: lease lapsed, higher epoch seen, or handed over.
    fn step_down(&mut self, out: &mut Vec<Action>) {
        assert_eq!(self.st.role, Role::Primary, "step_down of a non-primary");
        if self.st.log.last_lsn > self.st.commit_lsn {
            out.push(Action::AppendsAbandoned {
                after: self.st.commit_lsn,
            });
        }
        self.st.role = Role::Backup;
        self.st.primary = None;
        self.st.switchover = None;
        self.st.peers.clear();
        self.departing_report(out);
        self.st.bytes.clear();
        // We heard from no other primary: nothing for our refusal to protect.
        self.st.last_primary_contact = None;
        self.st.verified_lsn = Lsn::ZERO;
        self.st.acked_durable_lsn = Lsn::ZERO;
        if !self.config.unsafe_testing.old_lease_echo {
            self.st.primary_sent_at = Duration::ZERO;
        }
        let now = self.st.now;
        self.reset_election_deadline(now);
    }

    /// A fresh wait before standing: `failover_timeout` plus jitter from `from`. The
    /// successor the primary named waits a quarter of the jitter, the others at least half
    /// of it (`election.rs`, "Who stands first").
    fn reset_election_deadline(&mut self, from: Time) {
        let jitter_max = self.config.election_jitter;
        let jitter_ns = |d: Duration| d.as_nanos().min(u64::MAX as u128) as u64;
        let jitter = match self.st.successor {
            None => Duration::from_nanos(self.rng.below(jitter_ns(jitter_max))),
            Some(id) if id == self.config.node_id => jitter_max / 4,
            Some(_) => {
                jitter_max / 2 + Duration::from_nanos(self.rng.below(jitter_ns(jitter_max / 2)))
            }
        };
        // A witness waits a whole failover timeout longer: a data node stands first
        // (`health.rs`, rule 6).
        let extra = if self.config.witness {
            self.config.failover_timeout + self.config.election_jitter
        } else {
            Duration::ZERO
        };
        self.st.election_deadline = from + self.config.failover_timeout + jitter + extra;
    }

    fn set_commit(&mut self, lsn: Lsn, out: &mut Vec<Action>) {
        if lsn > self.st.commit_lsn {
            self.st.commit_lsn = lsn;
            out.push(Action::Committed { lsn });
        }
    }

    fn report_role(&mut self, out: &mut Vec<Action>) {
        let now = (self.st.role, self.st.epoch, self.st.primary);
        if now != self.st.reported {
            self.st.reported = now;
            out.push(Action::RoleChanged {
                role: now.0,
                epoch: now.1,
                primary: now.2,
            });
        }
    }
}
