//! [`Message`]: what the cores of two nodes say to each other, as plain data.
//!
//! No payloads: an [`Append`] names an LSN range and the shell attaches the records' bytes
//! from its cache or its WAL. All fields are integers, ids, LSNs, epochs, bools and durations,
//! so the wire codec (elsewhere, later) is a straight field-by-field encoding. The sender is not
//! part of the message; the transport knows it and passes it as `Input::Receive { from }`.

use std::time::Duration;

use wal::{Epoch, Lsn, NodeId};

use super::Members;

/// A message between two cores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message {
    /// "Would you vote for me in `epoch`?", sent before standing so that a node that cannot
    /// win (cut off, or behind) never raises the epoch and never disturbs a healthy primary.
    /// The sender's own epoch is unchanged; nobody persists anything.
    PreVoteRequest {
        epoch: Epoch,
        last_lsn: Lsn,
        last_epoch: Epoch,
    },
    PreVoteResponse {
        /// The epoch asked about.
        epoch: Epoch,
        granted: bool,
        /// The voter's current epoch; a candidate behind it adopts it.
        voter_epoch: Epoch,
        /// Whether the voter could serve as primary (`health.rs`): a candidate whose app is
        /// not live, or of lower priority, lets a better granter stand instead, once.
        health: Health,
        /// The voter's log is exactly as up to date as the asker's (same last epoch and LSN).
        same_log: bool,
    },
    /// "Vote for me in `epoch`." `transfer` is set only when the primary handed over
    /// (`TimeoutNow`): voters then vote even though they heard from that primary recently.
    VoteRequest {
        epoch: Epoch,
        last_lsn: Lsn,
        last_epoch: Epoch,
        transfer: bool,
    },
    /// Sent only after the vote is persisted. `epoch` is the voter's current epoch.
    /// `vote_wait`: how long, by its own clock, the voter refuses other candidates after
    /// granting (its failover timeout), which bounds how long the vote may renew the
    /// candidate's lease (`lease.rs`).
    VoteResponse {
        epoch: Epoch,
        granted: bool,
        vote_wait: Duration,
    },
    Append(Append),
    AppendResponse(AppendResponse),
    /// From the primary of `epoch` during a switchover: "stand for election now".
    TimeoutNow {
        epoch: Epoch,
    },
}

/// Records `first_lsn..=last_lsn`, all written in `records_epoch`, following `prev_lsn` (of
/// `prev_epoch`). Empty (`last_lsn == prev_lsn`) when it is only a heartbeat. It never spans an
/// epoch boundary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Append {
    /// The sender's epoch (it is the primary of that epoch).
    pub epoch: Epoch,
    pub prev_lsn: Lsn,
    pub prev_epoch: Epoch,
    /// Always `prev_lsn + 1`.
    pub first_lsn: Lsn,
    /// `prev_lsn` for a heartbeat.
    pub last_lsn: Lsn,
    pub records_epoch: Epoch,
    /// The primary's commit LSN; a backup commits up to it within the prefix it verified.
    pub commit_lsn: Lsn,
    /// The primary's clock when it sent this; echoed back, it renews the primary's lease.
    pub sent_at: Duration,
    /// Non-zero: the learner whose nonce this is (`AppendResponse::learner`) holds, durably and
    /// matching this primary's log, every record through `promote_through`; it may vote from
    /// now on (`election.rs`, "Learners").
    pub promote: u64,
    /// With `promote`: this primary's last LSN when it first heard of the learner's nonce.
    /// Every record the node acknowledged in an earlier run (an acknowledgement that may still
    /// be on its way) is at or below it. Zero without `promote`.
    pub promote_through: Lsn,
    /// The primary is paused (`understudy pause`): no automatic failover. Backups adopt it,
    /// with its stamp, when the stamp is newer than their own (`health.rs`).
    pub paused: bool,
    pub pause_stamp: u64,
    /// The record at `last_lsn` is a config record holding this configuration
    /// (`members.rs`). An append carries at most one, always as its last record.
    pub config: Option<Members>,
    /// The backup this primary would hand over to now (`Core::switchover_target`): should
    /// the primary go quiet, it stands first, the others a little later (`election.rs`,
    /// "Who stands first"). A hint for timing only; it grants nothing.
    pub successor: Option<NodeId>,
}

/// A backup's answer to an [`Append`], also sent unasked when its durable LSN advances.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendResponse {
    /// The backup's epoch; higher than the primary's means "you are deposed".
    pub epoch: Epoch,
    /// Whether `prev_lsn`/`prev_epoch` matched.
    pub accepted: bool,
    /// Accepted: the backup's log equals the primary's through this LSN (written, maybe not yet
    /// durable). Rejected: a hint, the last LSN below the conflict that might match.
    pub matched_lsn: Lsn,
    /// The epoch of the backup's record at `matched_lsn`.
    pub matched_epoch: Epoch,
    /// Durable on the backup and known to equal the primary's log through this LSN.
    pub durable_lsn: Lsn,
    /// `sent_at` of the append being answered, or (unasked) of the latest append received from
    /// this primary in this epoch; zero when answering an append of an older epoch. Renews the
    /// primary's lease only when the responder is a voter.
    pub sent_at: Duration,
    /// Zero when the responder is a voter; otherwise it is a learner (it neither votes nor
    /// counts towards commit or the lease) and this is its nonce, fresh on every start, which
    /// the primary echoes in `Append::promote` once the learner has caught up.
    pub learner: u64,
    /// Whether the backup could serve as primary: the primary hands over only to a backup
    /// whose app is live (`health.rs`).
    pub health: Health,
    /// How long, by its own clock, the backup refuses votes after it received the append it
    /// answers (its failover timeout): bounds how long the answer may count towards the
    /// primary's lease (`lease.rs`).
    pub vote_wait: Duration,
}

/// What a node says about its fitness to be primary, in pre-vote and append responses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// Its application is attached and answering (`Input::AppHealth`).
    pub app_live: bool,
    /// It may stand for election: a voter, not `no_failover`, no damaged record.
    pub can_stand: bool,
    /// `--priority`: the higher wins a tie between equally up-to-date candidates.
    pub priority: u8,
    /// It neither waits to be promoted after a wipe nor out a quarantine: it votes as soon
    /// as the configuration makes it a voter (`members.rs`).
    pub can_vote: bool,
}
