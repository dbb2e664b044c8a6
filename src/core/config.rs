//! [`Config`]: the core's settings, and [`ConfigError`], what is wrong with them.
//!
//! Validation happens once, in `Core::new`; every error names the setting and the value so
//! the shell can print it as is. The timing settings are related by the lease argument in
//! `lease.rs`: the lease is `failover_timeout - clock_drift_margin`, and the margin must cover
//! the clock-rate difference between any two nodes (see [`Config::tolerated_drift_ppm`]).

use std::time::Duration;

use wal::NodeId;

/// Most members a cluster may have, and the largest node id: configurations are `u64` bit
/// sets of ids (`members.rs`).
pub const MEMBERS_MAX: usize = 64;

/// The replication core's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This node's id; must be one of `members`.
    pub node_id: NodeId,
    /// The seed configuration: every voter of a new cluster, this one included, used until
    /// the log holds a configuration of its own (`members.rs`). Ids are 1..=64.
    pub members: Vec<NodeId>,
    /// How often the primary sends an append (empty if there is nothing to ship) to each backup.
    pub heartbeat_interval: Duration,
    /// How long a backup waits without hearing from the primary before it stands for election,
    /// and for how long after hearing from a primary a node refuses to vote for anyone else.
    pub failover_timeout: Duration,
    /// The failover timeout this node's data dir last ran with, if longer than
    /// `failover_timeout` (zero otherwise): its answers before this start promised to refuse
    /// votes for that long, and primaries may count them so, so a start refuses votes for it.
    pub previous_vote_wait: Duration,
    /// A backup waits `failover_timeout` plus a random extra in `0..election_jitter`, so that two
    /// backups rarely stand at the same moment.
    pub election_jitter: Duration,
    /// The lease is `failover_timeout - clock_drift_margin`. See `lease.rs` for the argument and
    /// [`Config::tolerated_drift_ppm`] for the clock-rate error it covers.
    pub clock_drift_margin: Duration,
    /// How many backups must hold a record durably (besides the primary) before it is committed.
    /// `None` means the safe minimum for the cluster size, `members - majority` (1 of 3, 2 of 5).
    pub sync_replicas: Option<usize>,
    /// Accept a `sync_replicas` below the safe minimum. A failover may then lose writes that
    /// were acknowledged to clients.
    pub allow_unsafe_sync_replicas: bool,
    /// Records shipped to one backup and not yet acknowledged as written, at most.
    pub inflight_records_max: u64,
    /// Bytes shipped to one backup and not yet acknowledged as written, at most (estimated from
    /// the byte counts of `Input::Propose`; see `replication.rs`).
    pub inflight_bytes_max: u64,
    /// Records in one `Append` message, at most.
    pub append_records_max: u64,
    /// Bytes (estimated, as for `inflight_bytes_max`) in one `Append` message, at most; a
    /// single longer record goes alone. Whatever the shell sends a backup after an append
    /// (a heartbeat) waits behind it on the link, so the window goes out in appends of this
    /// size rather than in one.
    pub append_bytes_max: u64,
    /// How long the primary's application may be gone (`Input::AppHealth`) before the primary
    /// hands over to a backup whose application is live (`health.rs`).
    pub app_timeout: Duration,
    /// A higher priority wins a tie between equally up-to-date candidates, and a switchover
    /// without a named target.
    pub priority: u8,
    /// Never become primary (never stand, take no hand-over); still vote and replicate.
    pub no_failover: bool,
    /// A witness (`health.rs`, "Witness"): votes and keeps the log, runs no application,
    /// never serves. It stands only after a data node had its chance, and only to bring a
    /// data node up to date and hand over to it.
    pub witness: bool,
    /// Rules switched off on purpose, so the simulator can show that its checker finds the
    /// resulting violations. Never set outside tests.
    #[doc(hidden)]
    pub unsafe_testing: TestKnobs,
}

/// Safety rules that the simulator's "checker can fail" tests switch off. All `false` in any
/// real configuration.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestKnobs {
    /// Grant (pre-)votes without comparing logs: a stale candidate can win and lose committed
    /// records (invariant 1).
    pub skip_vote_log_check: bool,
    /// Serve appends without a lease and never step down when it lapses: a partitioned old
    /// primary keeps serving after a new one is elected (invariant 4).
    pub skip_lease: bool,
    /// Let a node that started with a fresh data dir vote and stand at once: after a wipe it
    /// can vote a second time in an epoch it already voted in (invariant 2).
    pub skip_fresh_quarantine: bool,
    /// Start every node as a voter, whatever its data dir lost: a wiped node that held the
    /// only other copy of a committed record votes for a candidate that lacks it (invariant 1).
    pub skip_learner: bool,
    /// The lease as it once was: backups echo the largest send time ever seen, from any
    /// primary, and the primary clamps a send time from the future to its own clock, so it
    /// counts an acknowledgement from when it arrived, not from when it was sent (invariant 4).
    pub old_lease_echo: bool,
    /// Let a membership change add or remove more than one voter at once: a promotion (asked
    /// for or automatic) makes every learner a voter in one config record, and a change may
    /// follow the previous one before that is committed; the old and the new configuration
    /// may then each have a majority that shares no node (`members.rs`).
    pub skip_single_change: bool,
    /// Answer a lease read with the commit LSN alone, not at least this primary's epoch
    /// start: a new primary that has not committed its epoch start yet answers reads from
    /// before writes the previous primary acknowledged (reads stop being linearizable).
    pub skip_read_epoch_start: bool,
}

impl Config {
    /// A configuration with the documented defaults: heartbeat 50 ms, failover timeout 500 ms,
    /// jitter 200 ms, drift margin 50 ms (lease 450 ms), safe `sync_replicas`, windows of 4096
    /// records and 2 MiB per backup, 256 records and 1 MiB per append, app timeout 500 ms (the failover
    /// timeout), priority 0, failover allowed.
    pub fn new(node_id: NodeId, members: Vec<NodeId>) -> Config {
        Config {
            node_id,
            members,
            heartbeat_interval: Duration::from_millis(50),
            failover_timeout: Duration::from_millis(500),
            previous_vote_wait: Duration::ZERO,
            election_jitter: Duration::from_millis(200),
            clock_drift_margin: Duration::from_millis(50),
            sync_replicas: None,
            allow_unsafe_sync_replicas: false,
            inflight_records_max: 4096,
            // What the window holds can all be queued on the link ahead of a heartbeat. On a
            // 2-core machine kept busy by a follow-mode bulk load (redis-cli --pipe of 400 MB
            // of 64 KiB SETs), links drained at 30-45 MB/s, and an 8 MiB window held
            // heartbeats up long enough that a primary at a 100 ms failover timeout lost its
            // lease in 8 runs of 8; at 2 MiB, in 2 of 6, with the load as fast.
            inflight_bytes_max: 2 << 20,
            append_records_max: 256,
            append_bytes_max: 1 << 20,
            app_timeout: Duration::from_millis(500),
            priority: 0,
            no_failover: false,
            witness: false,
            unsafe_testing: TestKnobs::default(),
        }
    }

    /// Votes needed to win an election, and acknowledgements (the primary's own included)
    /// needed to hold the lease.
    pub fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    /// The smallest `sync_replicas` with which every commit quorum (primary + `sync_replicas`
    /// backups) is a majority, so that it meets every election quorum of this configuration
    /// and of the one before or after a membership change (`members.rs`): `majority - 1`.
    /// For an odd member count that equals `n - majority`, the least that meets every majority
    /// of a configuration that never changes; for an even one it is one more.
    pub fn sync_replicas_safe_min(&self) -> usize {
        self.majority() - 1
    }

    /// `sync_replicas` as configured, or the safe minimum.
    pub fn sync_replicas_effective(&self) -> usize {
        self.sync_replicas
            .unwrap_or_else(|| self.sync_replicas_safe_min())
    }

    /// `sync_replicas` for a configuration whose voters may differ from the seed's: the safe
    /// minimum for its voter count, or the configured value if higher (or lower, with
    /// `allow_unsafe_sync_replicas`), never more than its backups.
    ///
    /// The safe minimum is `majority - 1`, so that the primary and its backups are a majority
    /// of the configuration: `voters - majority` (the static rule) equals it for an odd voter
    /// count, but for an even one it is a half, which meets every majority of its own
    /// configuration and not every majority of the one before it. With 4 voters after 3 (or
    /// after 5), a record on 2 of `{1,2,3,4}` can be missed by an election that `{2,3}` win
    /// under `{1,2,3}` (or `{3,4,5}` under `{1,...,5}`) while the new configuration is not
    /// yet known to them (`members.rs`).
    pub fn sync_replicas_for(&self, members: &super::Members) -> usize {
        let voters = members.voter_count();
        let safe_min = members.majority() - 1;
        let wanted = match self.sync_replicas {
            None => safe_min,
            Some(configured) if self.allow_unsafe_sync_replicas => configured,
            Some(configured) => configured.max(safe_min),
        };
        wanted.min(voters.saturating_sub(1))
    }

    /// How long the primary may serve after the send time of the last heartbeat a majority
    /// acknowledged.
    pub fn lease(&self) -> Duration {
        self.failover_timeout
            .saturating_sub(self.clock_drift_margin)
    }

    /// How long after its send time an answer may count towards this node's lease when its
    /// sender refuses votes for `vote_wait` (by its clock) after receipt: the lease itself
    /// when `vote_wait` is at least this node's failover timeout, else `vote_wait` scaled
    /// the same way (`vote_wait * lease / failover_timeout`). Step 4 of the argument in
    /// `lease.rs` then holds with the voter's wait for `T`: nodes may run with different
    /// failover timeouts (a rolling change of the setting), and a primary never counts an
    /// answer longer than its sender keeps its promise.
    pub fn lease_for(&self, vote_wait: Duration) -> Duration {
        let lease = self.lease();
        if vote_wait >= self.failover_timeout {
            return lease;
        }
        let timeout = self.failover_timeout.as_nanos();
        if timeout == 0 {
            return Duration::ZERO;
        }
        let scaled = vote_wait.as_nanos() * lease.as_nanos() / timeout;
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
    }

    /// The clock-rate error (in parts per million, either direction, any node) the lease
    /// tolerates: the largest `rho` with `lease * (1 + rho) <= failover_timeout * (1 - rho)`,
    /// i.e. `rho = margin / (2 * failover_timeout - margin)`. With the defaults (500 ms, 50 ms)
    /// that is 52 631 ppm, about 5 %: far beyond the drift of real oscillators (tens of ppm) and
    /// of NTP slewing (500 ppm), so the margin also absorbs scheduling delay.
    pub fn tolerated_drift_ppm(&self) -> u64 {
        let margin = self.clock_drift_margin.as_nanos();
        let denominator =
            2 * self.failover_timeout.as_nanos() - margin.min(self.failover_timeout.as_nanos());
        if denominator == 0 {
            return 0;
        }
        (margin * 1_000_000 / denominator) as u64
    }

    /// How long a node that started with a fresh data dir (no persisted epoch or vote) neither
    /// votes nor stands: `2 * (failover_timeout + election_jitter) + clock_drift_margin`.
    /// 1450 ms with the defaults. See `election.rs` for why this is long enough.
    pub fn fresh_quarantine(&self) -> Duration {
        2 * (self.failover_timeout + self.election_jitter) + self.clock_drift_margin
    }

    /// Checks every setting; the error names the setting and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == NodeId::ZERO {
            return Err(ConfigError::NodeIdZero);
        }
        if self.node_id.get() as usize > MEMBERS_MAX {
            return Err(ConfigError::NodeIdTooLarge);
        }
        if self.members.len() > MEMBERS_MAX {
            return Err(ConfigError::TooManyMembers {
                count: self.members.len(),
                max: MEMBERS_MAX,
            });
        }
        for (i, id) in self.members.iter().enumerate() {
            if *id == NodeId::ZERO {
                return Err(ConfigError::NodeIdZero);
            }
            if id.get() as usize > MEMBERS_MAX {
                return Err(ConfigError::NodeIdTooLarge);
            }
            if self.members[..i].contains(id) {
                return Err(ConfigError::DuplicateMember { id: *id });
            }
        }
        if !self.members.contains(&self.node_id) {
            return Err(ConfigError::NotAMember {
                node_id: self.node_id,
            });
        }
        if self.clock_drift_margin.is_zero() || self.clock_drift_margin >= self.failover_timeout {
            return Err(ConfigError::DriftMargin {
                margin: self.clock_drift_margin,
                failover_timeout: self.failover_timeout,
            });
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.lease() {
            return Err(ConfigError::HeartbeatTooSlow {
                heartbeat_interval: self.heartbeat_interval,
                lease: self.lease(),
            });
        }
        let backups = self.members.len() - 1;
        if let Some(configured) = self.sync_replicas {
            if configured > backups {
                return Err(ConfigError::SyncReplicasAboveBackups {
                    configured,
                    backups,
                });
            }
            let safe_min = self.sync_replicas_safe_min();
            if configured < safe_min && !self.allow_unsafe_sync_replicas {
                return Err(ConfigError::SyncReplicasUnsafe {
                    configured,
                    safe_min,
                    members: self.members.len(),
                });
            }
        }
        if self.app_timeout.is_zero() {
            return Err(ConfigError::ZeroLimit {
                field: "app_timeout",
            });
        }
        for (field, value) in [
            ("inflight_records_max", self.inflight_records_max),
            ("inflight_bytes_max", self.inflight_bytes_max),
            ("append_records_max", self.append_records_max),
            ("append_bytes_max", self.append_bytes_max),
        ] {
            if value == 0 {
                return Err(ConfigError::ZeroLimit { field });
            }
        }
        Ok(())
    }
}

/// What is wrong with a [`Config`]. Each message names the setting and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("node id 0 is not valid: node ids start at 1")]
    NodeIdZero,
    #[error("node ids are 1 to 64")]
    NodeIdTooLarge,
    #[error("node id {node_id} is not in the member list")]
    NotAMember { node_id: NodeId },
    #[error("node id {id} appears twice in the member list")]
    DuplicateMember { id: NodeId },
    #[error("{count} members is more than the {max} a cluster may have")]
    TooManyMembers { count: usize, max: usize },
    #[error(
        "clock drift margin {margin:?} must be more than zero and less than the failover timeout {failover_timeout:?}"
    )]
    DriftMargin {
        margin: Duration,
        failover_timeout: Duration,
    },
    #[error(
        "heartbeat interval {heartbeat_interval:?} is too long for the lease {lease:?}: \
         at least two heartbeats must fit in one lease (lease = failover timeout - drift margin)"
    )]
    HeartbeatTooSlow {
        heartbeat_interval: Duration,
        lease: Duration,
    },
    #[error(
        "sync_replicas = {configured} can never be met: the cluster has only {backups} backups"
    )]
    SyncReplicasAboveBackups { configured: usize, backups: usize },
    #[error(
        "sync_replicas = {configured} is below {safe_min}, the smallest safe value for a \
         {members}-node cluster: with it, a failover would lose acknowledged writes. \
         Set allow_unsafe_sync_replicas to accept losing acknowledged writes on failover"
    )]
    SyncReplicasUnsafe {
        configured: usize,
        safe_min: usize,
        members: usize,
    },
    #[error("{field} must be at least 1")]
    ZeroLimit { field: &'static str },
}
