//! [`Action`]: everything the core asks of the shell. The other half of its interface.
//!
//! # Correctness (what the shell must guarantee)
//! - Disk actions (`PersistMeta`, `WriteEpochStart`, `WriteProposed`, `TruncateSuffix`,
//!   `WriteReceived`) are executed in the order emitted, across steps.
//! - `Send` may be executed at once: every message that depends on persisted state (a vote, a
//!   vote request) is held back by the core until `Input::MetaPersisted` says so.
//! - Durability is reported later with `Input::Durable`; a crash may lose any write not yet
//!   reported durable, and nothing else.
//! - A client's append is answered by `Committed` (its LSN is at or below), or failed by
//!   `AppendsAbandoned` (its LSN is above `after`: outcome unknown, the client must check or
//!   retry) or by the process ending. No other outcome exists, so no client waits forever.

use std::time::Duration;

use wal::{Epoch, Lsn, NodeId};

use super::{Members, MembersRefusal, Message};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `message` to peer `to`. An `Append` names records the shell must attach.
    Send { to: NodeId, message: Message },
    /// Persist the epoch and vote (atomically: tmp, fsync, rename, fsync dir), then report
    /// `Input::MetaPersisted` with the same values.
    PersistMeta {
        epoch: Epoch,
        voted_for: Option<NodeId>,
        learner: bool,
    },
    /// Append the epoch-start record (no payload) at `lsn`, in `epoch`. Written once on promotion.
    WriteEpochStart { lsn: Lsn, epoch: Epoch },
    /// The proposal was accepted: write its records at `first_lsn..=last_lsn` in `epoch`.
    WriteProposed {
        first_lsn: Lsn,
        last_lsn: Lsn,
        epoch: Epoch,
    },
    /// Append a config record at `lsn`, in `epoch`: the configuration `members`, in effect
    /// from now on (`members.rs`). The shell fills in each member's address. Emitted for an
    /// `Input::ProposeMembers`, for the seed's record after a new cluster's first election,
    /// and for a learner the primary promotes once it has caught up.
    WriteConfig {
        lsn: Lsn,
        epoch: Epoch,
        members: Members,
    },
    /// The membership change asked for was refused; nothing was written.
    MembersRefused { reason: MembersRefusal },
    /// The configuration this node acts on changed (a config record written or received, or
    /// one removed with a truncated suffix, or a snapshot installed): `members`, from the
    /// config record at `lsn` (0: the seed).
    MembersChanged { lsn: Lsn, members: Members },
    /// On a primary: the nodes outside the latest configuration that it still ships to until
    /// each durably holds the config record that removed it (`members.rs`, "Removed nodes"),
    /// as a bit set (`Members::bit`). The shell keeps a link to them besides the members'.
    /// Emitted whenever the set changes, and with an empty set when the node steps down.
    PeersDeparting { ids: u64 },
    /// Drop every record after `keep_through` (an uncommitted, conflicting suffix).
    TruncateSuffix { keep_through: Lsn },
    /// Append records `first_lsn..=last_lsn` of the `Append` message being processed in this step.
    WriteReceived { first_lsn: Lsn, last_lsn: Lsn },
    /// Stream a snapshot to `to`, then report `Input::SnapshotSent` or `Input::SnapshotFailed`.
    SendSnapshot { to: NodeId },
    /// Every record at or below `lsn` is committed: the application may apply them.
    Committed { lsn: Lsn },
    /// This node's role, epoch or known primary changed.
    RoleChanged {
        role: Role,
        epoch: Epoch,
        primary: Option<NodeId>,
    },
    /// This primary's lease lapsed and it steps down (the `RoleChanged` follows): no
    /// majority acknowledged an append sent within the lease, `lease` long. `acked_sent_ago`:
    /// how long before now the append was sent whose acknowledgement a majority last held
    /// (`None`: a majority never acknowledged one in this epoch). For the operator's log.
    LeaseLapsed {
        lease: Duration,
        acked_sent_ago: Option<Duration>,
    },
    /// This node stopped being primary: every append it accepted above `after` has an unknown
    /// outcome (it may yet be committed by the next primary, or be truncated).
    AppendsAbandoned { after: Lsn },
    /// The proposal was refused; nothing was written.
    ProposeRejected { reason: Rejection },
    /// The answer to `Input::Read`: this node holds its lease, and a read of the state after
    /// every record through `lsn` is applied is linearizable (`lease.rs`, "Reads"). `epoch`
    /// is this primary's: the application gives up waiting if the role changes from it.
    ReadIndex { lsn: Lsn, epoch: Epoch },
    /// `Input::Read` refused: this node is not a primary that may serve reads.
    ReadRefused { reason: Rejection },
    /// A node started with `Start::Fresh` has waited out its quarantine and votes from now on.
    /// The shell records it durably, so that a restart after this is `Start::Recovered`, and a
    /// restart before it is `Start::Fresh` again.
    QuarantineEnded,
    /// This node stopped being a learner: the primary of its epoch found that it durably holds
    /// every record through `through`, which covers every record committed so far. It votes
    /// from now on (once any quarantine is over). `PersistMeta` records it.
    Promoted { through: Lsn },
    /// This node became a learner while running: it was a member of no cluster yet (epoch 0,
    /// empty log) and heard of one that exists, so its empty data dir may be a wiped one.
    /// `PersistMeta` records it.
    BecameLearner { reason: LearnerReason },
    /// A switchover began: the primary stopped taking appends and waits for `to` to catch up.
    SwitchoverStarted {
        to: NodeId,
        reason: SwitchoverReason,
    },
    /// What became of a switchover (asked for by `Input::Switchover`, or started by the
    /// primary itself). `to` is `None` only for a refusal before a target was chosen.
    Switchover {
        to: Option<NodeId>,
        outcome: SwitchoverOutcome,
    },
    /// The pause changed (`Input::SetPaused`, or a backup adopting its primary's): the shell
    /// stores it, so that a restart keeps it.
    PauseChanged {
        paused: bool,
        stamp: u64,
        from_primary: bool,
    },
    /// This node's pre-vote succeeded but it did not stand, once, so that `to`, a granter
    /// better fit to serve (a live app where its own is not, or a higher priority with the
    /// same log), stands instead (`health.rs`).
    ElectionDeferred { to: NodeId },
}

/// Why a switchover began.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchoverReason {
    /// `Input::Switchover` (the operator, or a shutdown).
    Asked,
    /// The primary's application was gone for `app_timeout`.
    AppGone,
    /// The primary is a witness: it serves nobody and hands over to a data node.
    Witness,
}

/// Why a running node became a learner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LearnerReason {
    /// A founding member with no log heard of a cluster that has one.
    HeardOfCluster,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Backup,
    /// Asked for votes in its epoch and is waiting for them.
    Candidate,
    /// Elected in its epoch and holding the lease (a primary whose lease lapses becomes a
    /// backup at once).
    Primary,
}

/// Why a proposal was refused. The shell redirects on `NotPrimary`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// This node is not the primary; `primary` is the one it knows of, if any.
    NotPrimary { primary: Option<NodeId> },
    /// The primary is handing over; retry on the new primary shortly.
    SwitchoverInProgress,
    /// A proposal of zero records.
    Empty,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchoverOutcome {
    /// The target had every record; it was told to stand and this node stepped down.
    HandedOver,
    /// The target did not catch up within `failover_timeout`; this node serves again.
    TimedOut,
    /// Refused at once.
    Refused(SwitchoverRefusal),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SwitchoverRefusal {
    NotPrimary,
    UnknownTarget,
    TargetIsSelf,
    AlreadyInProgress,
    /// The target is a learner: it may not stand.
    TargetIsLearner,
    /// The target may not stand: `no_failover`, or a damaged record awaiting repair.
    TargetCannotStand,
    /// No target was named and no backup is fit: none is a voter that may stand and was
    /// heard from within the failover timeout.
    NoTarget,
}
