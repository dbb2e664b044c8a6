//! What the node's service tasks (the app API, the admin server, the client proxy) share
//! with the core loop: a bounded request channel into it, and watch channels out of it.
//!
//! The core loop owns the replication core; nothing else touches it. A service task that
//! needs the core to act sends a [`Request`] with a oneshot for the answer; a task that needs
//! to follow the node's state watches [`NodeHandle::status`] (role, epoch, LSN pointers,
//! peers) or [`NodeHandle::watch_commit`] (the commit LSN alone, for subscribers), and reads
//! committed records with [`NodeHandle::reader`] straight from the WAL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{Role, SwitchoverOutcome};
use crate::{Epoch, Lsn, NodeId};

/// A request from a service task to the core loop.
#[derive(Debug)]
pub enum Request {
    /// Append these records (one per payload) and answer once they are committed, or once
    /// their outcome is known not to be "committed here".
    Propose {
        payloads: Vec<Bytes>,
        reply: oneshot::Sender<ProposeOutcome>,
        /// Told once the records have their LSNs (queued to the log, after every proposal
        /// placed before): a proposal refused before that (`reply` says why) drops it.
        placed: Option<oneshot::Sender<()>>,
    },
    /// A lease read: answered at once with the LSN the application must have applied before
    /// it answers the read (`core::lease`, "Reads"), or why this node cannot serve one.
    Read { reply: oneshot::Sender<ReadOutcome> },
    /// Hand the primary role to `to`, or to the best backup (operator switchover).
    Switchover {
        to: Option<NodeId>,
        reply: oneshot::Sender<SwitchoverReply>,
    },
    /// Pause or resume automatic failover; answered once the change is stored. `stamp`
    /// orders operator commands (`core::Input::SetPaused`).
    SetPaused {
        paused: bool,
        stamp: u64,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Change the membership (`core::members`); `addr` is the new member's peer address for
    /// an add. Answered once the config record is committed, or refused.
    Members {
        change: crate::core::MembersChange,
        addr: Option<crate::config::PeerAddr>,
        reply: oneshot::Sender<MembersReply>,
    },
}

/// How a membership change ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembersReply {
    /// The config record at `lsn` is committed: the change is done.
    Done { lsn: Lsn },
    /// This node is not the primary; `primary` is the one it knows of.
    NotPrimary { primary: Option<NodeId> },
    /// Refused; nothing was written. One line for the operator.
    Refused(String),
    /// The primary stopped being primary before the record was committed: it may or may not
    /// be; `members list` tells.
    Unknown,
}

/// How a proposal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeOutcome {
    /// Committed at these LSNs; the application may apply them (and will see them in its
    /// subscription).
    Committed { first_lsn: Lsn, last_lsn: Lsn },
    /// This node is not the primary. `primary` is the one it knows of, with the address of
    /// that node's client port, so the caller can redirect.
    NotPrimary {
        primary: Option<NodeId>,
        client_addr: Option<SocketAddr>,
    },
    /// The primary is handing over; retry on the new primary shortly.
    Busy,
    /// The primary's disk is behind (its WAL writer's queue is full); nothing was written.
    /// Retry shortly.
    DiskBehind,
    /// This node stopped being primary after accepting the records: they may or may not end
    /// up committed. The caller must check (read them back) before retrying.
    Unknown,
    /// The node cannot write (a failed disk); it will not acknowledge anything again.
    Failed(String),
}

/// How a lease read was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This node is primary in `epoch` and holds its lease: the read may be answered from the
    /// state once every record through `lsn` is applied.
    Index { lsn: Lsn, epoch: Epoch },
    /// This node is not the primary (as `ProposeOutcome::NotPrimary`).
    NotPrimary {
        primary: Option<NodeId>,
        client_addr: Option<SocketAddr>,
    },
    /// This node is primary but serves nobody (a witness handing over); retry shortly.
    Busy,
}

/// Where a proposal stands once [`NodeHandle::propose_placed`] returns.
#[derive(Debug)]
pub enum Placement {
    /// Its records have their LSNs; the outcome comes on this channel (a closed channel: the
    /// node stopped, the outcome unknown).
    Placed(oneshot::Receiver<ProposeOutcome>),
    /// Answered without being placed: refused (nothing written), or nothing to write.
    Refused(ProposeOutcome),
}

/// How a switchover ended, with the time writes were paused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchoverReply {
    /// The target (chosen by the primary when none was named), if one was.
    pub to: Option<NodeId>,
    pub outcome: SwitchoverOutcome,
    pub paused: Duration,
}

/// One peer as this node sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PeerStatus {
    pub node_id: u16,
    pub addr: String,
    pub connected: bool,
    /// On the primary: the LSN through which the peer's log is known to match ours.
    pub matched_lsn: u64,
    /// On the primary: durable on the peer and matching.
    pub durable_lsn: u64,
    /// On the primary: records the peer is behind our last LSN.
    pub lag_records: u64,
    /// On the primary: bytes of log the peer is behind, estimated.
    pub lag_bytes: u64,
    /// On the primary: milliseconds since the peer last held every record this node had (0
    /// while it does): an upper bound on the age of the oldest record it lacks.
    pub lag_ms: u64,
    /// Milliseconds since this node last heard from the peer, if ever.
    pub last_heard_ms: Option<u64>,
    /// On the primary: the peer said it is a learner (it does not count towards commit).
    pub learner: bool,
    /// On the primary: the peer's application is live, by its latest response.
    pub app_live: bool,
    /// On the primary: the peer may stand for election (a voter, not `--no-failover`).
    pub can_stand: bool,
    /// The peer's admin address, as it told this node when it connected.
    pub admin_addr: Option<SocketAddr>,
    /// Its place in the latest configuration: `voter` or `learner` (`core::members`).
    pub member: &'static str,
}

/// A member's place in a configuration, as `/status` names it.
pub fn member_name(role: Option<crate::core::MemberRole>) -> &'static str {
    match role {
        Some(crate::core::MemberRole::Voter) => "voter",
        Some(crate::core::MemberRole::Learner) => "learner",
        None => "removed",
    }
}

/// The configuration this node acts on (the latest in its log).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct MembersStatus {
    /// The LSN of its config record; 0 while the cluster runs on the seed of `--peers`.
    pub config_lsn: u64,
    /// Whether that record is committed (a change in progress is not).
    pub committed: bool,
    pub voters: Vec<u16>,
    pub learners: Vec<u16>,
}

/// The node's state, published by the core loop whenever it changes (at most every few
/// milliseconds under load).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeStatus {
    pub node_id: u16,
    #[serde(serialize_with = "serialize_role")]
    pub role: Role,
    pub epoch: u64,
    pub primary: Option<u16>,
    /// The primary's client port, when known (for redirects).
    pub primary_client_addr: Option<SocketAddr>,
    /// Another node's primary application, when it announced where it serves clients and
    /// this node can reach it there: a backup's client port forwards to it directly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_app_addr: Option<SocketAddr>,
    /// The primary is serving: it holds its lease.
    pub lease_held: bool,
    /// `voter`, or `learner` while this node cannot vouch for its log and votes (it neither
    /// votes, stands, nor counts towards commit until a primary promotes it), or
    /// `quarantined` while a node with a fresh data dir waits before it votes, or `damaged`
    /// while a damaged record awaits repair (it votes but does not stand).
    pub standing: &'static str,
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub durable_lsn: u64,
    pub commit_lsn: u64,
    /// On a backup: committed records (as the primary last said) not yet durable here.
    pub lag_records: u64,
    /// On a backup: milliseconds since it last held durably every record its primary had
    /// committed (0 while it does; measured from its start if never).
    pub lag_ms: u64,
    /// Milliseconds since the last heartbeat from the primary (on a backup), if any.
    pub heartbeat_age_ms: Option<u64>,
    pub peers: Vec<PeerStatus>,
    /// Set when the node's disk failed: it no longer acknowledges anything.
    pub failed: Option<String>,
    /// The application the sidecar runs (`--app-cmd`); absent without the flag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<AppStatus>,
    /// Whether the application is attached, answering and reachable (`app_health`).
    pub app_health: super::app_health::AppHealthStatus,
    /// Automatic failover is paused (`understudy pause`).
    pub paused: bool,
    /// `--priority`.
    pub priority: u8,
    /// `--no-failover`: this node never becomes primary.
    pub no_failover: bool,
    /// `--witness`: this node votes and keeps the log, and serves nobody.
    pub witness: bool,
    /// This node's admin address (`--admin-listen`), if any.
    pub admin_addr: Option<SocketAddr>,
    /// `--ready-max-lag`, for `/ready` on a backup.
    #[serde(skip)]
    pub ready_lag_max: u64,
    /// On a primary: the LSN of its epoch's first record. Once the commit LSN reaches it,
    /// every record committed in any earlier epoch is committed here too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch_start_lsn: Option<u64>,
    /// Follow mode (`--follow-dir`): the followed directory's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub follow: Option<crate::follow::node::FollowStatus>,
    /// This node's place in the latest configuration: `voter`, `learner`, or `removed`.
    pub member: &'static str,
    /// The configuration this node acts on.
    pub members: MembersStatus,
}

/// The application the sidecar runs with `--app-cmd`, as the supervisor last saw it
/// ([`super::supervise`]).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AppStatus {
    /// The process id of the running application (of its `sh -c`, which may have exec'd
    /// the command), absent while it is not running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Times it was started again after it exited (or could not be started).
    pub restarts: u64,
    /// While it runs: when it was started, in milliseconds since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub running_since_ms: Option<u64>,
    /// How its last run ended (`exit status: 1`, `signal: 9 (SIGKILL)`), once one has.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_exit: Option<String>,
}

impl NodeStatus {
    /// A plain status for unit tests: a voter in epoch 0 with an empty log, no peers, and an
    /// application expected and live.
    #[doc(hidden)]
    pub fn for_tests(role: Role) -> NodeStatus {
        NodeStatus {
            node_id: 1,
            role,
            epoch: 0,
            primary: None,
            primary_client_addr: None,
            primary_app_addr: None,
            lease_held: false,
            standing: "voter",
            first_lsn: 1,
            last_lsn: 0,
            durable_lsn: 0,
            commit_lsn: 0,
            lag_records: 0,
            lag_ms: 0,
            heartbeat_age_ms: None,
            peers: Vec::new(),
            failed: None,
            app: None,
            app_health: super::app_health::AppHealthStatus {
                expected: true,
                live: true,
                attached: true,
                answering: true,
                reachable: None,
                applied_lsn: 0,
                since_ms: 0,
                gone: None,
                taking_snapshot: false,
            },
            paused: false,
            priority: 0,
            no_failover: false,
            witness: false,
            admin_addr: None,
            ready_lag_max: 100,
            epoch_start_lsn: None,
            follow: None,
            member: "voter",
            members: MembersStatus::default(),
        }
    }
}

fn serialize_role<S: serde::Serializer>(role: &Role, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(role_name(*role))
}

/// The node's standing in elections as operators read it (`NodeStatus::standing`).
pub fn standing_name(learner: bool, quarantined: bool, damaged: bool) -> &'static str {
    if learner {
        "learner"
    } else if quarantined {
        "quarantined"
    } else if damaged {
        "damaged"
    } else {
        "voter"
    }
}

/// The role as operators read it.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Backup => "backup",
        Role::Candidate => "candidate",
        Role::Primary => "primary",
    }
}

/// The handle service tasks hold. Cheap to clone.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) status: watch::Receiver<Arc<NodeStatus>>,
    pub(crate) commit: watch::Receiver<Lsn>,
    pub(crate) reader: wal::reader::Reader,
    pub(crate) node_id: NodeId,
    pub(crate) metrics: Arc<super::metrics::Metrics>,
    pub(crate) snapshots: Arc<super::snapshot::Snapshots>,
    pub(crate) app_health: Arc<super::app_health::AppHealth>,
    /// The application connection that takes client connections, if any (`handoff`).
    pub(crate) takers: super::handoff::Takers,
    /// When a peer was last heard from, kept by the core loop.
    pub(crate) last_heard: Arc<super::clock::LastHeard>,
    /// Until when this node may serve reads as primary, kept by the core loop.
    pub(crate) serving_until: Arc<super::clock::ServingUntil>,
}

/// The core loop has stopped (the node is shutting down or failed).
#[derive(Debug, Clone, Copy, thiserror::Error, PartialEq, Eq)]
#[error("the node is shutting down")]
pub struct NodeStopped;

impl NodeHandle {
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Where the application connection that takes client connections registers, and the
    /// client port hands them over (`handoff`).
    pub fn takers(&self) -> &super::handoff::Takers {
        &self.takers
    }

    /// Until when this node may serve reads as primary (`Core::serving_until`).
    pub fn serving_until(&self) -> Arc<super::clock::ServingUntil> {
        Arc::clone(&self.serving_until)
    }

    /// How long this node has heard from none of its peers; `None` before it heard from one.
    pub fn peer_silence(&self) -> Option<Duration> {
        self.last_heard.silence()
    }

    /// Proposes records and waits for the outcome.
    pub async fn propose(&self, payloads: Vec<Bytes>) -> Result<ProposeOutcome, NodeStopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Propose {
                payloads,
                reply,
                placed: None,
            })
            .await
            .map_err(|_| NodeStopped)?;
        answer.await.map_err(|_| NodeStopped)
    }

    /// Proposes records and returns once they have their place in the log (their outcome
    /// to come), or their refusal. A proposal made after this returned `Placed` comes after
    /// these records in the log, or is refused: so one caller can keep several proposals in
    /// flight and still have them committed in its order.
    pub async fn propose_placed(&self, payloads: Vec<Bytes>) -> Result<Placement, NodeStopped> {
        let (reply, answer) = oneshot::channel();
        let (placed, placed_rx) = oneshot::channel();
        self.requests
            .send(Request::Propose {
                payloads,
                reply,
                placed: Some(placed),
            })
            .await
            .map_err(|_| NodeStopped)?;
        match placed_rx.await {
            Ok(()) => Ok(Placement::Placed(answer)),
            // Dropped unsent: refused (or answered at once), the reply says how.
            Err(_) => answer
                .await
                .map(Placement::Refused)
                .map_err(|_| NodeStopped),
        }
    }

    /// Asks the core for a lease read's index (`Request::Read`).
    pub async fn read_index(&self) -> Result<ReadOutcome, NodeStopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Read { reply })
            .await
            .map_err(|_| NodeStopped)?;
        answer.await.map_err(|_| NodeStopped)
    }

    /// Asks for a switchover to `to` (or the best backup) and waits for the outcome.
    pub async fn switchover(&self, to: Option<NodeId>) -> Result<SwitchoverReply, NodeStopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Switchover { to, reply })
            .await
            .map_err(|_| NodeStopped)?;
        answer.await.map_err(|_| NodeStopped)
    }

    /// Asks for a membership change and waits until it is committed or refused.
    pub async fn members_change(
        &self,
        change: crate::core::MembersChange,
        addr: Option<crate::config::PeerAddr>,
    ) -> Result<MembersReply, NodeStopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Members {
                change,
                addr,
                reply,
            })
            .await
            .map_err(|_| NodeStopped)?;
        answer.await.map_err(|_| NodeStopped)
    }

    /// Pauses or resumes automatic failover; returns once the change is stored.
    pub async fn set_paused(
        &self,
        paused: bool,
        stamp: u64,
    ) -> Result<Result<(), String>, NodeStopped> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::SetPaused {
                paused,
                stamp,
                reply,
            })
            .await
            .map_err(|_| NodeStopped)?;
        answer.await.map_err(|_| NodeStopped)
    }

    /// The application's liveness record.
    pub fn app_health(&self) -> &super::app_health::AppHealth {
        &self.app_health
    }

    /// The latest status.
    pub fn status(&self) -> Arc<NodeStatus> {
        Arc::clone(&self.status.borrow())
    }

    /// A receiver that wakes whenever the status changes.
    pub fn watch_status(&self) -> watch::Receiver<Arc<NodeStatus>> {
        self.status.clone()
    }

    /// A receiver of the commit LSN.
    pub fn watch_commit(&self) -> watch::Receiver<Lsn> {
        self.commit.clone()
    }

    /// Reads committed records from the WAL. Only read at or below the commit LSN: records
    /// above it may be truncated under a reader on a backup.
    pub fn reader(&self) -> wal::reader::Reader {
        self.reader.clone()
    }

    /// The node's counters and histograms.
    pub fn metrics(&self) -> &super::metrics::Metrics {
        &self.metrics
    }

    pub fn metrics_arc(&self) -> Arc<super::metrics::Metrics> {
        Arc::clone(&self.metrics)
    }

    /// The node's snapshots.
    pub fn snapshots(&self) -> &super::snapshot::Snapshots {
        &self.snapshots
    }

    pub fn epoch(&self) -> Epoch {
        Epoch(self.status.borrow().epoch)
    }
}
