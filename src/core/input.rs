//! [`Input`]: everything that can happen to the core. Half of its whole interface; the other
//! half is [`Action`](super::Action).
//!
//! Inputs that depend on "when" carry the local clock reading; the others happen at the last
//! time the core saw, which only ever makes the lease more conservative (see `lease.rs`).

use wal::{Epoch, Lsn, NodeId};

use super::{Members, MembersChange, Message, Time};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The clock moved. The shell ticks at least every few milliseconds (a tenth of the
    /// heartbeat interval is plenty): heartbeats, elections and lease expiry happen on ticks.
    Tick { now: Time },
    /// A message from peer `from` arrived at `now`.
    Receive {
        now: Time,
        from: NodeId,
        message: Message,
    },
    /// The local application asks to append `count` records totalling `bytes` bytes. The core
    /// answers `WriteProposed` (with the LSNs) or `ProposeRejected`.
    ///
    /// `runs` splits the records, in order, into runs of `(records, bytes)` that add up to
    /// `count` and `bytes`; empty means one run. The core only knows sizes per run, and
    /// spreads a run's bytes evenly over its records when it sizes appends and the window
    /// (`replication.rs`): a large record among small ones needs a run of its own.
    Propose {
        now: Time,
        count: u64,
        bytes: u64,
        runs: Vec<(u64, u64)>,
    },
    /// The local application asks for a lease read (`lease.rs`, "Reads"). The core answers
    /// `ReadIndex` (the LSN the application must have applied before it answers) or
    /// `ReadRefused`, in this step.
    Read { now: Time },
    /// Every record at or below `lsn` is durable, and the record at `lsn` has `epoch`. The epoch
    /// lets the core ignore a report about records it has since truncated: two records with
    /// the same LSN and epoch are the same record (log matching), whatever happened between.
    /// `now` is read when the report is taken in: a primary commits (and the application
    /// answers, reads that follow the write included) only while its lease holds then, not
    /// at the last reading of an earlier input.
    Durable { now: Time, lsn: Lsn, epoch: Epoch },
    /// The `PersistMeta` with these values is durable. One report per `PersistMeta`, in order.
    MetaPersisted {
        epoch: Epoch,
        voted_for: Option<NodeId>,
        learner: bool,
    },
    /// The operator asks the primary to hand over to `to`, or (`None`) to the best backup:
    /// one whose app is live if any, then the most up to date, then the highest priority.
    Switchover { to: Option<NodeId> },
    /// The local application (`health.rs`): whether one is `expected` here (only then does
    /// its absence count against the node) and whether it is attached and answering. Sent
    /// when either changes; a core starts with neither.
    AppHealth { expected: bool, live: bool },
    /// `understudy pause` / `resume`: no automatic failover while paused (`health.rs`).
    /// `stamp` orders the operator's commands (the command's wall-clock milliseconds): the
    /// newest wins, on this node and when the primary passes its own on.
    SetPaused { paused: bool, stamp: u64 },
    /// The shell took a snapshot and dropped every record at or below `through` from the log.
    /// `through` is at most `commit_lsn` and at most `durable_lsn`.
    PrefixTruncated { through: Lsn },
    /// Primary side: the snapshot asked for by `SendSnapshot { to }` reached `to`, which
    /// installed it; it covers the log through `lsn` (of `epoch`).
    SnapshotSent { to: NodeId, lsn: Lsn, epoch: Epoch },
    /// Primary side: the snapshot transfer to `to` failed; the core will ask again.
    SnapshotFailed { to: NodeId },
    /// The shell found a committed record of the local log damaged (a checksum that fails
    /// where no crash explains it). The log's LSNs and epochs are intact, so the node still
    /// votes and acknowledges, but it could not ship that record: a primary steps down, and
    /// the node stands for nothing until `LogRepaired`.
    LogDamaged,
    /// Every damaged record was rewritten from a peer's verified copy.
    LogRepaired,
    /// Backup side: the shell installed (durably) a snapshot covering the log through `lsn`
    /// (of `epoch`) and dropped its whole log. Never below `commit_lsn`. `members` is the
    /// configuration in effect at `lsn`, from the config record at `members_lsn` (the
    /// primary sends it with the snapshot).
    SnapshotInstalled {
        lsn: Lsn,
        epoch: Epoch,
        members_lsn: Lsn,
        members: Members,
    },
    /// The operator asks the primary to change the membership (`members.rs`). The core
    /// answers `WriteConfig` (the change is in the log; it is done once committed) or
    /// `MembersRefused`.
    ProposeMembers { now: Time, change: MembersChange },
}
