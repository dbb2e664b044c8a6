//! The I/O shell around the replication core: [`run`] takes a configuration, bound
//! listeners and a shutdown future (as mini-redis's `server::run` does, so tests bind port 0
//! and choose their own shutdown).
//!
//! One task, the *core loop*, owns the [`Core`] and is the only thing that touches it: it
//! turns peer messages, app requests, disk progress and clock ticks into `Input`s and carries
//! out the `Action`s that come back, in order. Everything slow happens elsewhere: WAL writes
//! and fsyncs on the writer thread ([`disk`]), network I/O in per-connection tasks
//! ([`peer`]), app connections in [`app_api`]. The loop never waits on a peer or a client.
//!
//! Nor on the disk: a slow fsync must not stop heartbeats, or a healthy primary is deposed.
//! Records are queued to the writer without waiting for queue space, and log truncations
//! are queued and heard back through the durable watch (`Writer::control_done`). The
//! writer's queue stays bounded because the loop checks for room *before* it lets the core
//! take on records, never halfway through carrying out a step (refusing there would leave
//! the core and the WAL disagreeing on the next LSN): a proposal that does not fit is
//! refused (`ProposeOutcome::DiskBehind`, the application retries), and an append from the
//! primary that does not fit reaches the core as a heartbeat (its records dropped; the
//! primary resends them after its resend interval), so the backup still hears its
//! primary and still renews the primary's lease. The loop is the writer's only appender,
//! so a check holds until the loop queues something itself; each step queues at most one
//! proposal's or one append's records beyond it, plus an epoch-start record. One thing
//! still waits for the writer: installing a snapshot from the primary, which replaces the
//! whole log (a backup catching up; `Shell::snapshot_install` says why). The node
//! metadata's fsync (`DataDir::persist`, once per vote) is not the writer's and stays
//! synchronous. `understudy_heartbeat_gap_max_seconds` in `/metrics` is what a backup's
//! loop saw: the longest time between two appends it took in from its primary.
//!
//! - [`handle`]: what service tasks share with the core loop (requests in, status out).
//! - [`clock`]: the clock every reading handed to the core comes from (`CLOCK_BOOTTIME`,
//!   which keeps running through suspend).
//! - [`disk`]: the data directory: lock, identity, metadata, WAL writer.
//! - [`peer`]: the authenticated peer transport.
//! - [`metrics`]: counters and histograms for `/metrics`.
//! - [`proxy`]: the client port, a TCP proxy to whichever node is primary.
//! - [`handoff`]: the client port's connections handed to the application itself.
//! - [`app_api`]: the local application's socket: append, subscribe, role events, and
//!   snapshots uploaded and restored ([`app_api::snapshot`]).
//! - [`admin`]: the admin HTTP server (`--admin-listen`): status, health checks, metrics.
//! - [`snapshot`]: snapshots: asking the application, storing, truncating the log, the
//!   transfer to backups that need one, restoring the application (one file per job).
//! - [`repair`]: the scrub of the committed log, and the repair of a damaged record from a
//!   peer's copy.
//! - [`supervise`]: the application run by the sidecar (`--app-cmd`): start, output to the
//!   log, restart with backoff, stop after the node's hand-over.

pub mod admin;
pub mod app_api;
pub mod app_health;
pub mod clock;
pub mod disk;
pub mod handle;
pub mod handoff;
pub mod members;
pub mod metrics;
pub mod notify;
pub mod peer;
pub mod proxy;
pub mod repair;
pub mod snapshot;
pub mod supervise;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use wal::format::{RecordKind, VerifiedRecords};

use crate::config::{ClusterSecret, FsyncMode};
use crate::core::{self, Action, Core, Input, Message, Rejection, Role, SwitchoverOutcome, Time};
use crate::{Epoch, Lsn, NodeId};
use clock::BootInstant;
use metrics::Metrics;

thread_local! {
    /// Set on the thread that runs the node's runtime (`understudy run`). That runtime has
    /// one thread, which also runs the core loop: whatever waits on it (a lock a blocking
    /// thread holds while it reads a whole directory, a synchronous wait for the core loop's
    /// answer) stops heartbeats and acknowledgements for as long, or for ever.
    static RUNTIME_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the calling thread as the one that runs the node's runtime (see
/// [`on_runtime_thread`]); called by `understudy run` before it enters the runtime.
pub fn mark_runtime_thread() {
    RUNTIME_THREAD.with(|marked| marked.set(true));
}

/// Whether the calling thread runs the node's runtime, where nothing may block for long.
/// Checked by `debug_assert!` where a wait belongs on a blocking thread, so that the process
/// tests (debug builds) fail on a wait moved back onto the runtime; a release build goes on.
pub fn on_runtime_thread() -> bool {
    RUNTIME_THREAD.with(std::cell::Cell::get)
}

pub use handle::{
    AppStatus, MembersReply, NodeHandle, NodeStatus, PeerStatus, Placement, ProposeOutcome,
    ReadOutcome, Request, SwitchoverReply,
};

/// Requests queued from service tasks to the core loop, at most.
const REQUESTS_MAX: usize = 1024;
/// Peer messages queued to the core loop, at most.
const INBOUND_MAX: usize = 4096;
/// Bytes of recently written records kept in memory for shipping to backups; older records
/// are read back from the WAL.
const TAIL_CACHE_BYTES_MAX: usize = 8 << 20;
/// Bytes of one piece of records read from the WAL for an append to a lagging backup, at
/// most (an append may take several pieces; the core's in-flight window bounds its size).
const CATCH_UP_PIECE_BYTES_MAX: usize = 4 << 20;

/// Everything `run` needs, validated.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    /// Every member's peer address, this node's included.
    pub peers: BTreeMap<NodeId, crate::config::PeerAddr>,
    pub secret: ClusterSecret,
    /// The secret being rotated out (`--previous-cluster-secret-file`): still accepted from
    /// peers and for the data dir, never offered first.
    pub previous_secret: Option<ClusterSecret>,
    /// The admin API's token (`--admin-token-file`): required by the requests that change
    /// state.
    pub admin_token: Option<crate::config::AdminToken>,
    /// TLS for the peer links and the admin port (`--tls-cert`, `--tls-key`, `--tls-ca`).
    pub tls: Option<Arc<crate::tls::Tls>>,
    pub core: core::Config,
    pub fsync: FsyncMode,
    /// Where this node's client port is, told to peers for redirects.
    pub client_addr: Option<SocketAddr>,
    /// Where the local application serves clients.
    pub app_addr: Option<SocketAddr>,
    /// Shell commands run when this node becomes primary or stops being primary.
    pub on_promote: Option<String>,
    pub on_demote: Option<String>,
    /// Limits of the client port.
    pub proxy: proxy::ProxyLimits,
    /// When to take snapshots and how much to keep.
    pub snapshot: snapshot::SnapshotConfig,
    /// What an empty data dir is: a founding member of a new cluster, or a node joining one.
    pub initial_cluster_state: disk::InitialClusterState,
    /// How often the committed log is verified end to end (`repair`).
    pub scrub_interval: Duration,
    /// The application the sidecar runs itself (`--app-cmd`), if any.
    pub app_cmd: Option<supervise::AppCommand>,
    /// How long the application may leave pings unanswered while it takes a snapshot the
    /// sidecar asked for (`--app-snapshot-timeout`, `app_health.rs`).
    pub app_snapshot_timeout: Duration,
    /// This node's admin address (`--admin-listen`), told to peers.
    pub admin_addr: Option<SocketAddr>,
    /// `/ready` on a backup: at most this many committed records not yet durable here.
    pub ready_lag_max: u64,
    /// Follow mode (`--follow-dir`): the application's own files are replicated.
    pub follow: Option<crate::follow::node::FollowConfig>,
}

/// The node's listeners, bound by the caller.
pub struct Listeners {
    pub peer: TcpListener,
    pub app: UnixListener,
    /// The admin HTTP server's listener (`--admin-listen`), if any.
    pub admin: Option<TcpListener>,
    /// The client port (`--client-listen`), if any.
    pub client: Option<TcpListener>,
}

/// Why the node stopped other than by a clean shutdown.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error("cannot start the replication core: {0}")]
    Start(#[from] core::StartError),
    #[error("the disk failed, so this node stopped acknowledging writes: {0}")]
    DiskFailed(String),
    #[error("follow mode: {0}")]
    Follow(String),
}

/// Records recently written, by LSN, for shipping without reading them back.
#[derive(Default)]
struct TailCache {
    runs: VecDeque<VerifiedRecords>,
    bytes: usize,
}

impl TailCache {
    fn push(&mut self, records: VerifiedRecords) {
        if let Some(last) = self.runs.back() {
            if last.last_lsn().next() != records.first_lsn() {
                // Not contiguous (a truncation or a reset came between): start again.
                self.runs.clear();
                self.bytes = 0;
            }
        }
        self.bytes += records.bytes().len();
        self.runs.push_back(records);
        while self.bytes > TAIL_CACHE_BYTES_MAX && self.runs.len() > 1 {
            if let Some(old) = self.runs.pop_front() {
                self.bytes -= old.bytes().len();
            }
        }
    }

    fn truncate_after(&mut self, keep_through: Lsn) {
        while let Some(last) = self.runs.back() {
            if last.first_lsn() > keep_through {
                self.bytes -= last.bytes().len();
                self.runs.pop_back();
            } else if last.last_lsn() > keep_through {
                let kept = last.slice(last.first_lsn(), keep_through);
                self.bytes -= last.bytes().len() - kept.bytes().len();
                if let Some(back) = self.runs.back_mut() {
                    *back = kept;
                }
                break;
            } else {
                break;
            }
        }
    }

    /// The bytes of records `first..=last` if the cache holds all of them.
    fn get(&self, first: Lsn, last: Lsn) -> Option<Vec<Bytes>> {
        let start = self.runs.front()?.first_lsn();
        if first < start || last > self.runs.back()?.last_lsn() {
            return None;
        }
        let at = self.runs.partition_point(|run| run.last_lsn() < first);
        let mut pieces = Vec::new();
        for run in self.runs.range(at..) {
            if run.first_lsn() > last {
                break;
            }
            let lo = first.max(run.first_lsn());
            let hi = last.min(run.last_lsn());
            pieces.push(run.slice(lo, hi).bytes().clone());
        }
        Some(pieces)
    }
}

/// A local append waiting for its outcome.
struct Pending {
    last_lsn: Lsn,
    first_lsn: Lsn,
    proposed_at: Instant,
    reply: oneshot::Sender<ProposeOutcome>,
}

/// The context of one step: what came with the input that the action may need.
#[derive(Default)]
struct StepContext {
    payloads: Option<Vec<Bytes>>,
    reply: Option<oneshot::Sender<ProposeOutcome>>,
    /// Told when the proposal's records have their LSNs.
    placed: Option<oneshot::Sender<()>>,
    records: Option<VerifiedRecords>,
    /// A lease read's answer (`Request::Read`).
    read_reply: Option<oneshot::Sender<ReadOutcome>>,
    /// A membership change's answer (`Request::Members`).
    members_reply: Option<oneshot::Sender<MembersReply>>,
    /// The config record an append carries as its last record, decoded (`Append::config`).
    config_record: Option<(Lsn, members::ConfigRecord)>,
}

/// The core loop's state.
struct Shell {
    config: NodeConfig,
    core: Core,
    dir: disk::DataDir,
    writer: wal::writer::Writer,
    reader: wal::reader::Reader,
    net: peer::PeerNet,
    cache: TailCache,
    pending: VecDeque<Pending>,
    switchover: Option<(Option<NodeId>, oneshot::Sender<SwitchoverReply>, Instant)>,
    /// Time zero of the core's clock (see [`clock`]).
    started: BootInstant,
    actions: Vec<Action>,
    followups: VecDeque<Input>,
    role: Role,
    epoch: Epoch,
    primary: Option<NodeId>,
    commit_lsn: Lsn,
    commit_tx: watch::Sender<Lsn>,
    status_tx: watch::Sender<Arc<NodeStatus>>,
    last_heard: BTreeMap<NodeId, BootInstant>,
    /// The latest of `last_heard`, shared with the client port through the node's handle.
    last_heard_any: Arc<clock::LastHeard>,
    /// Until when this node may serve reads, shared with the client port; stored after
    /// every step.
    serving_until: Arc<clock::ServingUntil>,
    /// Average encoded record length, for lag in bytes.
    record_len_avg: u64,
    failed: Option<String>,
    metrics: Arc<Metrics>,
    snapshots: Arc<snapshot::Snapshots>,
    /// Damaged records the core loop ran into, for the repair task.
    damaged_found: mpsc::Sender<Lsn>,
    /// The core has been told the log holds nothing at or below this
    /// (`Input::PrefixTruncated`, or a snapshot installed): see [`Shell::prefix_catch_up`].
    prefix_told: Lsn,
    /// A prefix truncation queued to the writer and not yet done (one at a time).
    prefix_cut: Option<PrefixCut>,
    /// A divergent suffix cut queued to the writer and not yet done: its ticket and the
    /// lowest `keep_through` queued. Until it is done the WAL may still hold the old records
    /// after that LSN, so they are not read back for shipping, nor told to the log's readers
    /// as committed (`publish_commit`).
    suffix_cut: Option<(u64, Lsn)>,
    /// The primary and epoch of the last append taken in, and when: for the heartbeat gap.
    last_append: Option<(NodeId, Epoch, BootInstant)>,
    /// The `--app-cmd` application's status, copied into the node's.
    app_status: Option<watch::Receiver<AppStatus>>,
    /// The application's liveness, evaluated on every tick.
    app_health: Arc<app_health::AppHealth>,
    app_view: app_health::AppHealthStatus,
    /// `(expected, live)` as last told to the core.
    app_told: Option<(bool, bool)>,
    /// The last epoch-start record this node wrote: its epoch and LSN.
    epoch_start: Option<(Epoch, Lsn)>,
    /// Follow mode's state, copied into the node's.
    follow_status: Option<watch::Receiver<crate::follow::node::FollowStatus>>,
    /// Every configuration of the log, with addresses (`members`).
    book: members::Book,
    /// The latest configuration as the core last reported it.
    members_now: (Lsn, core::Members),
    /// Removed nodes the core still ships to until they hold their removal
    /// (`Action::PeersDeparting`), with the addresses they were dialled at.
    departing: BTreeMap<NodeId, crate::config::PeerAddr>,
    /// A membership change written and not yet committed: its LSN and who waits for it.
    members_pending: Option<(Lsn, oneshot::Sender<MembersReply>)>,
    /// The address of the member an add is about to write (`Request::Members`).
    members_adding: Option<(NodeId, crate::config::PeerAddr)>,
    /// The LSN of the configuration stored in `members.json`.
    members_stored: Option<Lsn>,
    /// When each peer (on the primary), and this node (`None`, on a backup), was last seen
    /// holding everything: the replication lag in seconds (`lag_clock`).
    caught_up_at: std::cell::RefCell<BTreeMap<Option<NodeId>, BootInstant>>,
}

/// A prefix truncation the writer has queued (`Writer::queue_truncate_prefix`).
struct PrefixCut {
    ticket: u64,
    /// The new first LSN of the log.
    first_lsn: Lsn,
    /// The newest snapshot, which the cut is behind.
    snapshot_lsn: Lsn,
    /// Segments the cut deletes.
    segments: usize,
}

impl Shell {
    /// The core's clock: `CLOCK_BOOTTIME` since start, so that time spent suspended counts
    /// against leases and timeouts ([`clock`]).
    fn now(&self) -> Time {
        Time::from_duration(self.started.elapsed())
    }

    /// Feeds one input to the core and carries out every action, then any follow-up inputs
    /// (metadata persisted) the actions produced.
    fn step(&mut self, input: Input, mut context: StepContext) -> Result<(), NodeError> {
        let mut input = Some(input);
        while let Some(next) = input.take().or_else(|| self.followups.pop_front()) {
            let mut actions = std::mem::take(&mut self.actions);
            self.core.step(next, &mut actions);
            // Before any action is carried out: a step that ends the lease (a step down, the
            // hand-over of a switchover) is known to the client port before any message
            // that lets another node stand leaves, and an action that fails cannot skip it.
            self.publish_serving_until();
            let result = actions
                .drain(..)
                .try_for_each(|action| self.act(action, &mut context));
            self.actions = actions;
            result?;
            // Follow-ups are independent of the original context.
            context.payloads = None;
            context.records = None;
            context.config_record = None;
        }
        // A proposal the core neither accepted nor refused cannot happen; answer anyway.
        if let Some(reply) = context.reply.take() {
            let _ = reply.send(ProposeOutcome::Failed(
                "the proposal was not handled".into(),
            ));
        }
        if let Some(reply) = context.members_reply.take() {
            let _ = reply.send(MembersReply::Refused("the change was not handled".into()));
        }
        Ok(())
    }

    /// Stores until when this node may serve reads (`clock::ServingUntil`).
    fn publish_serving_until(&self) {
        let until = self.core.serving_until().map(|until| {
            (
                self.core.epoch().get(),
                (until != Time::MAX).then(|| self.started + until.as_duration()),
            )
        });
        self.serving_until.set(until);
    }

    fn act(&mut self, action: Action, context: &mut StepContext) -> Result<(), NodeError> {
        match action {
            Action::Send { to, message } => {
                let records = match message {
                    Message::Append(append) if append.last_lsn > append.prev_lsn => {
                        match self.records_for(append.first_lsn, append.last_lsn) {
                            Some(records) => records,
                            // Not readable yet (still queued for the disk): the core sends
                            // again after its resend interval.
                            None => return Ok(()),
                        }
                    }
                    _ => Vec::new(),
                };
                self.net.send(to, peer::Outbound { message, records });
            }
            Action::PersistMeta {
                epoch,
                voted_for,
                learner,
            } => {
                let dir = &mut self.dir;
                blocking(|| dir.persist(epoch, voted_for, learner))?;
                self.followups.push_back(Input::MetaPersisted {
                    epoch,
                    voted_for,
                    learner,
                });
            }
            Action::WriteEpochStart { lsn, epoch } => {
                self.epoch_start = Some((epoch, lsn));
                let records =
                    VerifiedRecords::encode(lsn, epoch, RecordKind::EpochStart, [&[][..]], 64)
                        .unwrap_or_else(|| unreachable!("one record was given"));
                self.write(records)?;
                // Follow mode waits for this LSN's commit before it serves.
                self.publish_status();
            }
            Action::WriteProposed {
                first_lsn,
                last_lsn,
                epoch,
            } => {
                let payloads = context
                    .payloads
                    .take()
                    .unwrap_or_else(|| unreachable!("WriteProposed answers a Propose"));
                let capacity: usize = payloads
                    .iter()
                    .map(|p| wal::format::record_len(p.len()))
                    .sum();
                let records = VerifiedRecords::encode(
                    first_lsn,
                    epoch,
                    RecordKind::App,
                    payloads.iter().map(|p| &p[..]),
                    capacity,
                )
                .unwrap_or_else(|| unreachable!("the core refuses empty proposals"));
                assert_eq!(
                    records.last_lsn(),
                    last_lsn,
                    "the core assigned {first_lsn}..={last_lsn} to {} records",
                    payloads.len()
                );
                self.record_len_avg =
                    (self.record_len_avg * 7 + (capacity / payloads.len()) as u64) / 8;
                self.write(records)?;
                Metrics::add(&self.metrics.appended_records, payloads.len() as u64);
                Metrics::add(
                    &self.metrics.appended_bytes,
                    payloads.iter().map(|p| p.len() as u64).sum(),
                );
                if let Some(reply) = context.reply.take() {
                    self.pending.push_back(Pending {
                        first_lsn,
                        last_lsn,
                        proposed_at: Instant::now(),
                        reply,
                    });
                }
                if let Some(placed) = context.placed.take() {
                    let _ = placed.send(());
                }
            }
            Action::WriteConfig {
                lsn,
                epoch,
                members,
            } => self.members_write(lsn, epoch, members, context)?,
            Action::MembersRefused { reason } => {
                if let Some(reply) = context.members_reply.take() {
                    let answer = match reason {
                        core::MembersRefusal::NotPrimary => MembersReply::NotPrimary {
                            primary: self.primary,
                        },
                        other => MembersReply::Refused(other.to_string()),
                    };
                    let _ = reply.send(answer);
                }
            }
            Action::MembersChanged { lsn, members } => self.members_changed(lsn, members),
            Action::PeersDeparting { ids } => self.peers_departing(ids),
            Action::TruncateSuffix { keep_through } => {
                assert!(
                    keep_through >= self.commit_lsn,
                    "truncating after {keep_through} would drop committed records (commit_lsn {})",
                    self.commit_lsn
                );
                info!(keep_through = %keep_through, "truncating a divergent log suffix");
                // Queued, not waited for: the records received next are queued after it.
                let ticket = match self.writer.queue_truncate_suffix(keep_through) {
                    Ok(ticket) => ticket,
                    Err(e) => return Err(self.disk_failed(e)),
                };
                let lowest = self
                    .suffix_cut
                    .map_or(keep_through, |(_, queued)| queued.min(keep_through));
                self.suffix_cut = Some((ticket, lowest));
                self.cache.truncate_after(keep_through);
                self.book.truncate_suffix(keep_through);
            }
            Action::WriteReceived {
                first_lsn,
                last_lsn,
            } => {
                let records = context
                    .records
                    .as_ref()
                    .unwrap_or_else(|| unreachable!("WriteReceived answers an Append with records"))
                    .slice(first_lsn, last_lsn);
                self.write(records)?;
                if let Some((lsn, record)) = context.config_record.take() {
                    if (first_lsn..=last_lsn).contains(&lsn) {
                        self.book.entries.insert(lsn, record);
                    }
                }
            }
            Action::SendSnapshot { to } => self.snapshot_send(to),
            Action::Committed { lsn } => {
                self.commit_lsn = lsn;
                self.publish_commit();
                if self
                    .members_pending
                    .as_ref()
                    .is_some_and(|(at, _)| *at <= lsn)
                {
                    if let Some((at, reply)) = self.members_pending.take() {
                        info!(lsn = %at, members = %self.members_now.1, "membership change committed");
                        let _ = reply.send(MembersReply::Done { lsn: at });
                    }
                }
                while let Some(pending) = self.pending.front() {
                    if pending.last_lsn > lsn {
                        break;
                    }
                    if let Some(pending) = self.pending.pop_front() {
                        Metrics::add(
                            &self.metrics.committed_records,
                            Lsn::count_between(pending.first_lsn, pending.last_lsn),
                        );
                        self.metrics
                            .commit_latency
                            .observe(pending.proposed_at.elapsed());
                        let _ = pending.reply.send(ProposeOutcome::Committed {
                            first_lsn: pending.first_lsn,
                            last_lsn: pending.last_lsn,
                        });
                    }
                }
            }
            Action::RoleChanged {
                role,
                epoch,
                primary,
            } => self.role_changed(role, epoch, primary),
            Action::LeaseLapsed {
                lease,
                acked_sent_ago,
            } => {
                let lease_ms = lease.as_millis() as u64;
                match acked_sent_ago {
                    Some(ago) => warn!(
                        lease_ms,
                        acked_sent_ms_ago = ago.as_millis() as u64,
                        "stepping down: the lease lapsed (no majority acknowledged an append sent within the lease; the latest a majority acknowledged was sent acked_sent_ms_ago before now): the backups are unreachable, paused, or too slow to answer"
                    ),
                    None => warn!(
                        lease_ms,
                        "stepping down: the lease lapsed (no majority acknowledged any append in this epoch)"
                    ),
                }
            }
            Action::AppendsAbandoned { after } => {
                let abandoned = self.pending.iter().filter(|p| p.last_lsn > after).count();
                if abandoned > 0 {
                    warn!(after = %after, count = abandoned, "appends abandoned with an unknown outcome");
                }
                while let Some(pending) = self.pending.back() {
                    if pending.last_lsn <= after {
                        break;
                    }
                    if let Some(pending) = self.pending.pop_back() {
                        let _ = pending.reply.send(ProposeOutcome::Unknown);
                    }
                }
                if self
                    .members_pending
                    .as_ref()
                    .is_some_and(|(at, _)| *at > after)
                {
                    if let Some((_, reply)) = self.members_pending.take() {
                        let _ = reply.send(MembersReply::Unknown);
                    }
                }
            }
            Action::ProposeRejected { reason } => {
                let outcome = match reason {
                    Rejection::NotPrimary { primary } => ProposeOutcome::NotPrimary {
                        primary,
                        client_addr: primary.and_then(|p| self.client_addr_of(p)),
                    },
                    Rejection::SwitchoverInProgress => ProposeOutcome::Busy,
                    Rejection::Empty => ProposeOutcome::Committed {
                        first_lsn: self.commit_lsn.next(),
                        last_lsn: self.commit_lsn,
                    },
                };
                if let Some(reply) = context.reply.take() {
                    let _ = reply.send(outcome);
                }
            }
            Action::ReadIndex { lsn, epoch } => {
                if let Some(reply) = context.read_reply.take() {
                    let _ = reply.send(ReadOutcome::Index { lsn, epoch });
                }
            }
            Action::ReadRefused { reason } => {
                let outcome = match reason {
                    Rejection::NotPrimary { primary } => ReadOutcome::NotPrimary {
                        primary,
                        client_addr: primary.and_then(|p| self.client_addr_of(p)),
                    },
                    Rejection::SwitchoverInProgress | Rejection::Empty => ReadOutcome::Busy,
                };
                if let Some(reply) = context.read_reply.take() {
                    let _ = reply.send(outcome);
                }
            }
            Action::Promoted { through } => {
                info!(through = %through, "learner promoted: this node holds every committed record and votes from now on");
                self.publish_status();
            }
            Action::BecameLearner { reason } => {
                match reason {
                    core::LearnerReason::HeardOfCluster => warn!("this node had no log and heard of a cluster that has one: learner until it has caught up (its empty data dir may be a wiped one)"),
                }
                self.publish_status();
            }
            Action::QuarantineEnded => {
                let dir = &mut self.dir;
                blocking(|| dir.quarantine_ended())?;
                info!("fresh data dir: quarantine over, voting from now on");
            }
            Action::SwitchoverStarted { to, reason } => match reason {
                core::SwitchoverReason::Asked => {
                    info!(target_node = %to, "switchover: handing over once it has every record")
                }
                core::SwitchoverReason::Witness => info!(
                    target_node = %to,
                    "this witness was elected (no data node's log was as up to date): handing over to a data node once it has every record"
                ),
                core::SwitchoverReason::AppGone => warn!(
                    target_node = %to,
                    app_timeout_ms = self.config.core.app_timeout.as_millis() as u64,
                    "the application has been gone for --app-timeout: handing over to a backup whose application is live"
                ),
            },
            Action::Switchover { to, outcome } => {
                info!(
                    target_node = to.map(NodeId::get),
                    ?outcome,
                    "switchover ended"
                );
                if let Some((_, reply, started)) = self.switchover.take() {
                    let _ = reply.send(SwitchoverReply {
                        to,
                        outcome,
                        paused: started.elapsed(),
                    });
                }
            }
            Action::PauseChanged {
                paused,
                stamp,
                from_primary,
            } => {
                let dir = &self.dir;
                blocking(|| dir.store_paused(paused, stamp))?;
                let by = if from_primary {
                    "the primary"
                } else {
                    "the operator"
                };
                if paused {
                    warn!(by, "automatic failover paused");
                } else {
                    info!(by, "automatic failover resumed");
                }
                self.publish_status();
            }
            Action::ElectionDeferred { to } => {
                info!(better_node = %to, "not standing for election this time: a node whose application is live (or of higher priority, with the same log) stands first");
            }
        }
        Ok(())
    }

    fn client_addr_of(&self, node: NodeId) -> Option<SocketAddr> {
        if node == self.config.node_id {
            self.config.client_addr
        } else {
            self.net.client_addr(node)
        }
    }

    fn disk_failed(&mut self, error: wal::Error) -> NodeError {
        let message = self.writer.failure().unwrap_or_else(|| error.to_string());
        error!(error = %message, "disk failed; stopping");
        self.record_fsync_failure();
        self.failed = Some(message.clone());
        NodeError::DiskFailed(message)
    }

    /// Queues records to the writer without waiting for queue space: the loop checked for
    /// room before the core took them on (module docs).
    fn write(&mut self, records: VerifiedRecords) -> Result<(), NodeError> {
        let first = records.first_lsn();
        match self.writer.queue_encoded(records.clone()) {
            Ok((lo, _)) => assert_eq!(lo, first, "the WAL and the core disagree on the next lsn"),
            Err(e) => return Err(self.disk_failed(e)),
        }
        self.snapshots.note_log_bytes(records.bytes().len() as u64);
        self.cache.push(records);
        Ok(())
    }

    /// Tells the core the writer's durable progress, then anything that progress lets it
    /// be told about the log's prefix.
    fn on_durable(&mut self, progress: wal::writer::Progress) -> Result<(), NodeError> {
        self.controls_catch_up();
        self.step(
            Input::Durable {
                now: self.now(),
                lsn: progress.durable_lsn,
                epoch: progress.durable_epoch,
            },
            StepContext::default(),
        )?;
        // A suffix cut done, or records written that were committed before they were (a
        // backup learns of a commit with the records): the readers look again.
        self.publish_commit();
        self.prefix_catch_up()
    }

    /// Tells the log's readers (`commit_tx`: the application's record stream, follow mode's
    /// replay, the scrubber, the snapshot schedule) how far the log is committed.
    ///
    /// # Correctness
    /// A backup that takes in an append conflicting with its log queues the cut of its
    /// divergent suffix and learns, in the same step, a commit LSN above the cut: the new
    /// primary's records there are committed. Until the writer has done the cut, the WAL
    /// still holds the old records at those LSNs, with right CRCs and LSNs, and a reader
    /// told of the commit would hand them out as committed: the application would apply a
    /// record that was never committed, in place of one that was, and a read of their bytes
    /// after the file shrank faults (SIGBUS). So the readers are told at most the cut's
    /// `keep_through` until the cut is done (never less than before: a cut is never below
    /// the commit LSN). Sent on every writer report, changed or not, so that a reader that
    /// found a committed record not yet written looks again once the writer has been.
    fn publish_commit(&self) {
        let visible = match self.suffix_cut {
            Some((_, keep_through)) => self.commit_lsn.min(keep_through),
            None => self.commit_lsn,
        };
        assert!(
            visible >= *self.commit_tx.borrow(),
            "the commit LSN told to readers went back from {} to {visible}",
            *self.commit_tx.borrow()
        );
        self.commit_tx.send_replace(visible);
    }

    /// Tells the core how far the WAL's prefix is gone (`Input::PrefixTruncated`), but never
    /// through an LSN the core has not been told is durable, nor past its commit LSN: the
    /// core asserts both. The cut itself is safe (the records are in a snapshot); but on a
    /// backup the application applies, and snapshots, committed records before they are
    /// durable here, and the core learns of durability only from the durable watch, whose
    /// latest value may be newer than the cut the reader shows, or older. So this runs
    /// after every `Input::Durable` (the writer reports a batch after the cut in it is
    /// done), and what the clamp holds back is told after a later one.
    fn prefix_catch_up(&mut self) -> Result<(), NodeError> {
        let cut_through = self.reader.first_lsn().prev();
        if cut_through <= self.prefix_told {
            return Ok(());
        }
        let status = self.core.status();
        self.prefix_told = self.prefix_told.max(status.snapshot_lsn);
        let through = cut_through.min(status.durable_lsn).min(status.commit_lsn);
        if through <= self.prefix_told {
            return Ok(());
        }
        self.prefix_told = through;
        self.step(Input::PrefixTruncated { through }, StepContext::default())
    }

    /// Notes the writer's queued truncations that are done.
    fn controls_catch_up(&mut self) {
        if let Some((ticket, _)) = self.suffix_cut {
            if self.writer.control_done(ticket) {
                self.suffix_cut = None;
            }
        }
        if let Some(cut) = &self.prefix_cut {
            if self.writer.control_done(cut.ticket) {
                Metrics::add(
                    &self.snapshots.metrics.log_segments_truncated,
                    cut.segments as u64,
                );
                info!(snapshot_lsn = %cut.snapshot_lsn, first_lsn = %cut.first_lsn, segments = cut.segments, "log truncated behind a snapshot");
                self.prefix_cut = None;
            }
        }
    }

    /// Takes in a message from a peer. An append whose records do not fit in the writer's
    /// queue is taken in as a heartbeat (module docs).
    fn on_inbound(&mut self, inbound: peer::Inbound) -> Result<(), NodeError> {
        let now = self.now();
        let heard_at = BootInstant::now();
        self.last_heard.insert(inbound.from, heard_at);
        self.last_heard_any.note(heard_at);
        let peer::Inbound {
            from,
            mut message,
            mut records,
        } = inbound;
        let mut config_record = None;
        if let Message::Append(append) = &mut message {
            self.note_append(from, append.epoch);
            if let Some(verified) = &records {
                match Shell::members_in_append(verified) {
                    Ok(found) => {
                        append.config = found.as_ref().map(|(_, record)| record.members);
                        config_record = found;
                    }
                    Err(reason) => {
                        warn!(peer = %from, %reason, "dropping an append with a bad config record");
                        return Ok(());
                    }
                }
            }
            if let Some(verified) = &records {
                if !self.writer.has_room(verified.bytes().len()) {
                    debug!(peer = %from, first_lsn = %append.first_lsn, last_lsn = %append.last_lsn, "the disk is behind; taking an append in as a heartbeat");
                    Metrics::add(&self.metrics.appends_deferred, 1);
                    append.last_lsn = append.prev_lsn;
                    append.config = None;
                    records = None;
                    config_record = None;
                }
            }
        }
        self.step(
            Input::Receive { now, from, message },
            StepContext {
                records,
                config_record,
                ..StepContext::default()
            },
        )
    }

    /// The heartbeat gap: time since the last append from the same primary in the same
    /// epoch, as this loop takes them in (so it includes any time the loop itself was held
    /// up). The largest goes to `/metrics` (`understudy_heartbeat_gap_max_seconds`).
    fn note_append(&mut self, from: NodeId, epoch: Epoch) {
        let now = BootInstant::now();
        if let Some((last_from, last_epoch, at)) = self.last_append {
            if last_from == from && last_epoch == epoch {
                self.metrics.observe_heartbeat_gap(now.duration_since(at));
            }
        }
        self.last_append = Some((from, epoch, now));
    }

    /// Hands a proposal to the core, unless this node is the primary and the writer's queue
    /// has no room for it: then it is refused at once (module docs).
    fn on_propose(
        &mut self,
        payloads: Vec<Bytes>,
        reply: oneshot::Sender<ProposeOutcome>,
        placed: Option<oneshot::Sender<()>>,
    ) -> Result<(), NodeError> {
        let now = self.now();
        let count = payloads.len() as u64;
        let bytes: u64 = payloads
            .iter()
            .map(|p| wal::format::record_len(p.len()) as u64)
            .sum();
        if count == 0 {
            let _ = reply.send(ProposeOutcome::Committed {
                first_lsn: self.commit_lsn.next(),
                last_lsn: self.commit_lsn,
            });
            return Ok(());
        }
        if self.role == Role::Primary
            && !self
                .writer
                .has_room(usize::try_from(bytes).unwrap_or(usize::MAX))
        {
            Metrics::add(&self.metrics.proposals_refused_disk_behind, 1);
            let _ = reply.send(ProposeOutcome::DiskBehind);
            return Ok(());
        }
        self.step(
            Input::Propose {
                now,
                count,
                bytes,
                runs: runs_of(&payloads),
            },
            StepContext {
                payloads: Some(payloads),
                reply: Some(reply),
                placed,
                ..StepContext::default()
            },
        )
    }

    /// The bytes of records `first..=last`: from the tail cache, else from the WAL.
    fn records_for(&mut self, first: Lsn, last: Lsn) -> Option<Vec<Bytes>> {
        if let Some(pieces) = self.cache.get(first, last) {
            return Some(pieces);
        }
        if self
            .suffix_cut
            .is_some_and(|(_, keep_through)| last > keep_through)
        {
            // The WAL may still hold the records cut off there: not readable yet.
            return None;
        }
        let mut records = self.reader.iter_from(first).ok()?;
        let mut pieces = Vec::new();
        // The whole range the core named (its window bounds it), in pieces of bounded size.
        while records.next_lsn() <= last {
            match records.next_batch(CATCH_UP_PIECE_BYTES_MAX, last) {
                Ok(Some(batch)) => pieces.push(batch.bytes),
                Ok(None) => return None,
                Err(e) => {
                    error!(error = %e, "cannot read records to ship");
                    if let wal::Error::Corrupt { lsn, .. } = e {
                        // Never shipped; the repair task fetches a verified copy.
                        let _ = self.damaged_found.try_send(lsn);
                    }
                    return None;
                }
            }
        }
        Some(pieces)
    }

    /// Leaves the marker that makes the next start cut the log back to what was durable
    /// before the failure and start as a learner (`disk`, module docs).
    fn record_fsync_failure(&self) {
        let durable = self.writer.durable_lsn();
        match self.dir.record_fsync_failure(durable) {
            Ok(wal::mark::Installed::Durably) => {}
            Ok(wal::mark::Installed::NotDurably(e)) => {
                error!(error = %e, durable_lsn = %durable, "the disk failure is recorded, but not durably: a restart before the machine reboots sees it; after a reboot, empty this node's data dir before restarting it (or restart it with --initial-cluster-state existing on an empty one)");
            }
            Err(e) => {
                error!(error = %e, durable_lsn = %durable, "cannot record the disk failure; before restarting this node, empty its data dir or restart it with --initial-cluster-state existing on an empty one");
            }
        }
    }

    fn role_changed(&mut self, role: Role, epoch: Epoch, primary: Option<NodeId>) {
        let was_primary = self.role == Role::Primary;
        match role {
            Role::Candidate if self.role != Role::Candidate => {
                Metrics::add(&self.metrics.elections, 1)
            }
            Role::Primary if !was_primary => Metrics::add(&self.metrics.promotions, 1),
            Role::Backup | Role::Candidate | Role::Primary => {}
        }
        info!(role = handle::role_name(role), epoch = %epoch, primary = primary.map(|p| p.get()), "role changed");
        self.role = role;
        self.epoch = epoch;
        self.primary = primary;
        let hook = match (was_primary, role == Role::Primary) {
            (false, true) => self.config.on_promote.clone(),
            (true, false) => self.config.on_demote.clone(),
            _ => None,
        };
        if let Some(command) = hook {
            let primary_addr = primary.and_then(|p| self.client_addr_of(p));
            run_hook(command, role, epoch, primary, primary_addr);
        }
        self.publish_status();
    }

    /// Milliseconds since `who` (a peer, or this node for `None`) was last seen caught up; 0
    /// while it is. Measured at every status publication (at least every 100 ms).
    fn lag_clock(&self, who: Option<NodeId>, caught_up: bool, now: BootInstant) -> u64 {
        let mut seen = self.caught_up_at.borrow_mut();
        if caught_up {
            seen.insert(who, now);
            return 0;
        }
        let since = *seen.entry(who).or_insert(self.started);
        u64::try_from(now.duration_since(since).as_millis()).unwrap_or(u64::MAX)
    }

    fn publish_status(&self) {
        let status = self.core.status();
        let now = BootInstant::now();
        let lease_held = status.role == Role::Primary
            && status.lease_until.is_some_and(|until| until > self.now());
        let (members_lsn, members) = self.members_now;
        let addrs = self.net.config().membership().addrs;
        let backup_lag = if status.role == Role::Primary {
            0
        } else {
            status
                .commit_lsn
                .get()
                .saturating_sub(status.durable_lsn.get())
        };
        let peers = members
            .ids()
            .filter(|&id| id != self.config.node_id)
            .map(|id| {
                let health = status
                    .peers
                    .iter()
                    .find(|p| p.node_id == id)
                    .map(|p| p.health)
                    .unwrap_or_default();
                let core_peer = status.peers.iter().find(|p| p.node_id == id);
                let matched = core_peer.map_or(Lsn::ZERO, |p| p.match_lsn);
                let lag = if status.role == Role::Primary {
                    status.last_lsn.get().saturating_sub(matched.get())
                } else {
                    0
                };
                PeerStatus {
                    node_id: id.get(),
                    addr: addrs.get(&id).map(|a| a.to_string()).unwrap_or_default(),
                    connected: self.net.is_connected(id),
                    matched_lsn: matched.get(),
                    durable_lsn: matched.get(),
                    lag_records: lag,
                    lag_bytes: lag * self.record_len_avg,
                    lag_ms: self.lag_clock(Some(id), lag == 0, now),
                    last_heard_ms: self
                        .last_heard
                        .get(&id)
                        .map(|at| now.duration_since(*at).as_millis() as u64),
                    learner: core_peer.is_some_and(|p| p.learner),
                    app_live: health.app_live,
                    can_stand: health.can_stand,
                    admin_addr: self.net.admin_addr(id),
                    member: handle::member_name(members.role(id)),
                }
            })
            .collect();
        let heartbeat_age_ms = match (status.role, status.primary) {
            (Role::Primary, _) => None,
            (_, Some(primary)) => self
                .last_heard
                .get(&primary)
                .map(|at| now.duration_since(*at).as_millis() as u64),
            (_, None) => None,
        };
        self.status_tx.send_replace(Arc::new(NodeStatus {
            node_id: self.config.node_id.get(),
            role: status.role,
            epoch: status.epoch.get(),
            primary: status.primary.map(|p| p.get()),
            primary_client_addr: status.primary.and_then(|p| self.client_addr_of(p)),
            primary_app_addr: status
                .primary
                .filter(|&p| p != self.config.node_id)
                .and_then(|p| self.net.app_addr(p)),
            lease_held,
            standing: handle::standing_name(status.learner, status.quarantined, status.damaged),
            first_lsn: status.snapshot_lsn.next().get(),
            last_lsn: status.last_lsn.get(),
            durable_lsn: status.durable_lsn.get(),
            commit_lsn: status.commit_lsn.get(),
            lag_records: backup_lag,
            lag_ms: self.lag_clock(None, backup_lag == 0, now),
            heartbeat_age_ms,
            peers,
            failed: self.failed.clone(),
            app: self.app_status.as_ref().map(|app| app.borrow().clone()),
            app_health: self.app_view.clone(),
            paused: status.paused,
            priority: self.config.core.priority,
            no_failover: self.config.core.no_failover,
            witness: self.config.core.witness,
            admin_addr: self.config.admin_addr,
            ready_lag_max: self.config.ready_lag_max,
            epoch_start_lsn: self
                .epoch_start
                .filter(|&(epoch, _)| status.role == Role::Primary && epoch == status.epoch)
                .map(|(_, lsn)| lsn.get()),
            follow: self.follow_status.as_ref().map(|f| f.borrow().clone()),
            member: handle::member_name(members.role(self.config.node_id)),
            members: handle::MembersStatus {
                config_lsn: members_lsn.get(),
                committed: members_lsn <= status.commit_lsn,
                voters: members.voter_ids().map(NodeId::get).collect(),
                learners: members
                    .ids()
                    .filter(|&id| !members.is_voter(id))
                    .map(NodeId::get)
                    .collect(),
            },
        }));
    }

    /// Evaluates the application's liveness and tells the core when it changed.
    fn app_health_check(&mut self) -> Result<(), NodeError> {
        let view = self.app_health.evaluate();
        let told = (view.expected, view.live);
        let changed = view != self.app_view;
        self.app_view = view;
        if self.app_told != Some(told) {
            self.app_told = Some(told);
            self.step(
                Input::AppHealth {
                    expected: told.0,
                    live: told.1,
                },
                StepContext::default(),
            )?;
        }
        if changed {
            self.publish_status();
        }
        Ok(())
    }
}

/// Records at least this long (with their header) get a run of their own in
/// `Input::Propose`, so that the core sizes appends and the window by them, not by the
/// proposal's average record.
const RUN_RECORD_LEN_MIN: usize = 64 << 10;

/// The runs of a proposal for `Input::Propose`: each record of [`RUN_RECORD_LEN_MIN`] or
/// more alone, the shorter ones between them together. Empty (no allocation) when no record
/// is that long: one run.
fn runs_of(payloads: &[Bytes]) -> Vec<(u64, u64)> {
    let len = |p: &Bytes| wal::format::record_len(p.len());
    if payloads.iter().all(|p| len(p) < RUN_RECORD_LEN_MIN) {
        return Vec::new();
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut short_run = false;
    for payload in payloads {
        let len = len(payload);
        let short = len < RUN_RECORD_LEN_MIN;
        match runs.last_mut() {
            Some(run) if short && short_run => *run = (run.0 + 1, run.1 + len as u64),
            _ => runs.push((1, len as u64)),
        }
        short_run = short;
    }
    runs
}

/// Runs the client port on a thread and runtime of its own: client traffic is bulk copying
/// that would otherwise share the core loop's one thread (heartbeats, commits) and leave
/// the machine's other cores idle. It stops when `shutdown` is cancelled.
fn spawn_proxy(
    listener: TcpListener,
    node: NodeHandle,
    app_addr: Option<SocketAddr>,
    limits: proxy::ProxyLimits,
    follow: Option<crate::follow::node::Serving>,
    shutdown: CancellationToken,
) {
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(e) => {
            error!(error = %e, "cannot hand the client port to its thread; client port closed");
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("client-port".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    error!(error = %e, "cannot start the client port's runtime; client port closed");
                    return;
                }
            };
            runtime.block_on(async move {
                match TcpListener::from_std(listener) {
                    Ok(listener) => {
                        proxy::serve(listener, node, app_addr, limits, follow, shutdown).await
                    }
                    Err(e) => error!(error = %e, "cannot listen on the client port"),
                }
            });
        });
    if let Err(e) = spawned {
        error!(error = %e, "cannot start the client port's thread; client port closed");
    }
}

/// Runs a short blocking disk operation from the core loop: under `block_in_place` on a
/// multi-threaded runtime (other tasks move to another worker meanwhile), directly on a
/// current-thread runtime, whose only thread it then holds for the duration.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs an `--on-promote`/`--on-demote` command without waiting for it; its outcome is
/// logged. The environment says what happened.
fn run_hook(
    command: String,
    role: Role,
    epoch: Epoch,
    primary: Option<NodeId>,
    primary_addr: Option<SocketAddr>,
) {
    // The hook is started at once (not on a task that a stopping runtime might never
    // poll), and is not killed when the sidecar exits: a demote hook run during a SIGTERM
    // hand-over must be able to finish after we are gone.
    let spawned = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .env("UNDERSTUDY_ROLE", handle::role_name(role))
        .env("UNDERSTUDY_EPOCH", epoch.to_string())
        .env(
            "UNDERSTUDY_PRIMARY",
            primary.map(|p| p.to_string()).unwrap_or_default(),
        )
        .env(
            "UNDERSTUDY_PRIMARY_ADDR",
            primary_addr.map(|a| a.to_string()).unwrap_or_default(),
        )
        .stdin(std::process::Stdio::null())
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => {
            warn!(%command, error = %e, "hook could not start");
            return;
        }
    };
    tokio::spawn(async move {
        match tokio::time::timeout(Duration::from_secs(60), child.wait()).await {
            Ok(Ok(status)) if status.success() => info!(%command, "hook finished"),
            Ok(Ok(status)) => warn!(%command, %status, "hook failed"),
            Ok(Err(e)) => warn!(%command, error = %e, "hook could not be waited for"),
            Err(_) => {
                warn!(%command, "hook still running after 60 s; killing it");
                let _ = child.start_kill();
            }
        }
    });
}

/// Runs the node until `shutdown` completes (then hands over if primary and stops cleanly)
/// or the disk fails; either way it stops the `--app-cmd` application before it returns.
///
/// # Durability
/// Every append it acknowledges is durable on this node and on `sync_replicas` backups
/// before the acknowledgement leaves (the core's commit rule over `Input::Durable`).
pub async fn run(
    config: NodeConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let cluster_id = config.secret.cluster_id();
    let data_dir = config.data_dir.clone();
    let node_id = config.node_id;
    let fsync = config.fsync;
    let segment_bytes = config.snapshot.wal_segment_bytes;
    let initial_cluster_state = config.initial_cluster_state;
    let metrics = Arc::new(Metrics::default());
    let disk_metrics = Arc::clone(&metrics);
    let previous_cluster_id = config
        .previous_secret
        .as_ref()
        .map(ClusterSecret::cluster_id);
    let opened = tokio::task::spawn_blocking(move || {
        disk::open_rotating(
            &data_dir,
            node_id,
            (cluster_id, previous_cluster_id),
            fsync,
            disk_metrics,
            segment_bytes,
            initial_cluster_state,
        )
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    if let Some(torn) = &opened.recovery.torn {
        warn!(path = %torn.path.display(), offset = torn.offset, cut_len = torn.cut_len, last_lsn = %torn.last_lsn, "cut a torn tail off the log");
    }
    info!(
        node = %config.node_id,
        last_lsn = %opened.recovered.last_lsn,
        epoch = %opened.persisted.epoch,
        "log recovered; joining as backup"
    );
    // Recorded before the core sends anything (`disk::vote_wait_at_start`).
    let failover_timeout = config.core.failover_timeout;
    let vote_wait_dir = config.data_dir.clone();
    let previous_vote_wait = tokio::task::spawn_blocking(move || {
        disk::vote_wait_at_start(&vote_wait_dir, failover_timeout)
    })
    .await
    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
    if !previous_vote_wait.is_zero() {
        info!(
            previous_ms = previous_vote_wait.as_millis() as u64,
            failover_timeout_ms = failover_timeout.as_millis() as u64,
            "the data dir last ran with a longer --failover-timeout: not voting until that long after start (its answers before this start promised as much)"
        );
        let dir = config.data_dir.clone();
        tokio::spawn(async move {
            tokio::time::sleep(previous_vote_wait).await;
            let recorded =
                tokio::task::spawn_blocking(move || disk::record_vote_wait(&dir, failover_timeout))
                    .await;
            if let Ok(Err(e)) = recorded {
                warn!(error = %e, "cannot record the failover timeout in the data dir; the next start waits the longer one again");
            }
        });
    }
    let started = BootInstant::now();
    // The learner nonce comes from this seed: `RandomState` keys are drawn from the
    // operating system's random source, so two runs never share it by accident.
    let seed = u64::from(config.node_id.get())
        ^ started.since_boot().as_nanos() as u64
        ^ std::process::id() as u64
        ^ {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        };
    if let Some(reason) = &opened.learner_reason {
        warn!(%reason, "starting as a learner: replicating, but neither voting nor counting towards commit until the primary finds it caught up");
    }
    if opened.start.quarantine {
        let quarantine = config.core.fresh_quarantine();
        info!(
            quarantine_ms = quarantine.as_millis() as u64,
            "fresh data dir: not voting until {} ms after start (this node may have voted before its data dir was lost)",
            quarantine.as_millis()
        );
    }
    let core = Core::new(
        core::Config {
            previous_vote_wait,
            ..config.core.clone()
        },
        opened.persisted,
        opened.recovered.clone(),
        opened.start,
        Time::ZERO,
        seed,
    )?;

    // The configurations of the log, with addresses; the seed's, while the log has none.
    let mut book = opened.members.clone();
    let seed_members = core::Members::voters_of(&config.core.members)
        .unwrap_or_else(|| unreachable!("Core::new checked the ids"));
    if core.members_at(Lsn::ZERO).0 == Lsn::ZERO {
        book.entries.insert(
            Lsn::ZERO,
            members::ConfigRecord {
                members: seed_members,
                addrs: config.peers.clone(),
                given: Default::default(),
            },
        );
    } else if core.members() != seed_members {
        warn!(
            peers = %seed_members,
            log = %core.members(),
            config_lsn = %core.members_lsn(),
            "--peers disagrees with the configuration in the log; following the log (--peers only seeds a new cluster)"
        );
    }

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (snapshot_tx, mut snapshot_rx) = mpsc::channel(REQUESTS_MAX);
    let snapshots = Arc::new(snapshot::Snapshots::new(
        &config.data_dir,
        config.snapshot,
        opened.snapshots,
        snapshot_tx,
        cancel.clone(),
    ));
    let (inbound_tx, mut inbound_rx) = mpsc::channel(INBOUND_MAX);
    let reader = opened.writer.reader();
    let peer_config = Arc::new(peer::PeerConfig {
        started,
        node_id: config.node_id,
        cluster_id,
        secret: config.secret.clone(),
        previous: config
            .previous_secret
            .as_ref()
            .map(|secret| (secret.cluster_id(), secret.clone())),
        membership: Arc::new(std::sync::Mutex::new(peer::Membership {
            lsn: core.members_lsn().get(),
            ids: core.members().ids().collect(),
            addrs: members::addrs_for(
                &book,
                core.members_lsn(),
                core.members(),
                config.node_id,
                &config.peers,
            ),
        })),
        client_addr: config.client_addr,
        admin_addr: config.admin_addr,
        peer_addr: config.peers.get(&config.node_id).cloned(),
        // In follow mode a reply must pass this node's client port, which holds it until
        // the application's changes are committed (the reply barrier): the application is
        // not announced, so backups forward to the client port instead.
        app_addr: config.app_addr.filter(|_| config.follow.is_none()),
        metrics: Arc::clone(&metrics),
        snapshots: Arc::clone(&snapshots),
        reader: reader.clone(),
        tls: config.tls.clone(),
    });
    let net = peer::PeerNet::start(
        Arc::clone(&peer_config),
        listeners.peer,
        inbound_tx,
        &tracker,
        cancel.clone(),
    );
    let (requests_tx, mut requests_rx) = mpsc::channel(REQUESTS_MAX);
    let (commit_tx, commit_rx) = watch::channel(Lsn::ZERO);
    let app_health = Arc::new(app_health::AppHealth::new(
        config.app_cmd.is_some() || config.app_addr.is_some(),
        config.app_addr.is_some(),
        config.core.heartbeat_interval,
        config.app_snapshot_timeout,
        Arc::clone(&metrics),
    ));
    let app_view = app_health.evaluate();
    if let Some(addr) = config.app_addr {
        tracker.spawn(app_health::probe(
            Arc::clone(&app_health),
            addr,
            cancel.clone(),
        ));
    }
    let (status_tx, status_rx) = watch::channel(Arc::new(NodeStatus {
        node_id: config.node_id.get(),
        role: Role::Backup,
        epoch: opened.persisted.epoch.get(),
        primary: None,
        primary_client_addr: None,
        primary_app_addr: None,
        lease_held: false,
        standing: handle::standing_name(opened.start.learner, opened.start.quarantine, false),
        first_lsn: 1,
        last_lsn: opened.recovered.last_lsn.get(),
        durable_lsn: opened.recovered.last_lsn.get(),
        commit_lsn: 0,
        lag_records: 0,
        lag_ms: 0,
        heartbeat_age_ms: None,
        peers: Vec::new(),
        failed: None,
        app: None,
        app_health: app_view.clone(),
        paused: opened.dir.paused().is_some(),
        priority: config.core.priority,
        no_failover: config.core.no_failover,
        witness: config.core.witness,
        admin_addr: config.admin_addr,
        ready_lag_max: config.ready_lag_max,
        epoch_start_lsn: None,
        follow: None,
        member: "voter",
        members: handle::MembersStatus::default(),
    }));
    let last_heard_any = Arc::new(clock::LastHeard::default());
    let serving_until = Arc::new(clock::ServingUntil::default());
    let handle = NodeHandle {
        requests: requests_tx,
        status: status_rx,
        commit: commit_rx,
        reader: reader.clone(),
        node_id: config.node_id,
        metrics: Arc::clone(&metrics),
        snapshots: Arc::clone(&snapshots),
        app_health: Arc::clone(&app_health),
        takers: handoff::Takers::default(),
        last_heard: Arc::clone(&last_heard_any),
        serving_until: Arc::clone(&serving_until),
    };
    // Follow mode: the channels between the follow task, the supervisor and the client port.
    let follow = config.follow.clone().map(|follow_config| {
        let (gate_tx, gate_rx) = watch::channel(false);
        let (running_tx, running_rx) = watch::channel(false);
        let (serving_tx, serving_rx) = watch::channel(None);
        let (status_tx, status_rx) = crate::follow::node::status_channel(&follow_config);
        (
            crate::follow::node::Follow {
                config: follow_config,
                node: handle.clone(),
                health: Arc::clone(&app_health),
                gate: gate_tx,
                app_running: running_rx,
                serving: serving_tx,
                status: status_tx,
            },
            supervise::Gate {
                allowed: gate_rx,
                running: running_tx,
            },
            serving_rx,
            status_rx,
        )
    });
    // Requests for snapshots go to the application, or in follow mode to the follow task.
    tracker.spawn(snapshot::schedule::schedule(
        Arc::clone(&snapshots),
        handle.watch_commit(),
    ));
    tracker.spawn(app_api::serve(
        listeners.app,
        handle.clone(),
        cancel.clone(),
    ));
    if let Some(client) = listeners.client {
        spawn_proxy(
            client,
            handle.clone(),
            config.app_addr,
            config.proxy,
            follow.as_ref().map(|(_, _, serving, _)| serving.clone()),
            cancel.clone(),
        );
    }
    tracker.spawn(notify::run(handle.watch_status(), cancel.clone()));
    tracker.spawn(disk::keep_floor(Arc::clone(&opened.floor), cancel.clone()));
    if let Some(admin) = listeners.admin {
        tracker.spawn(admin::serve(
            admin,
            handle.clone(),
            config.admin_token.clone(),
            config.tls.clone(),
            cancel.clone(),
        ));
    }
    let (damaged_found, damaged_found_rx) = mpsc::channel(repair::FOUND_QUEUE_MAX);
    let (damaged_tx, mut damaged_rx) = mpsc::channel(repair::FOUND_QUEUE_MAX);
    tracker.spawn(repair::run(
        repair::Repairer {
            peer_config,
            reader: reader.clone(),
            commit: handle.watch_commit(),
            damaged: damaged_tx,
            metrics: Arc::clone(&metrics),
            scrub_interval: config.scrub_interval.max(Duration::from_millis(1)),
        },
        damaged_found_rx,
        cancel.clone(),
    ));
    // The application last: the node's listeners are served by now.
    let (follow_task, gate, follow_status) = match follow {
        Some((task, gate, _, status)) => (Some(task), Some(gate), Some(status)),
        None => (None, None, None),
    };
    let app = config.app_cmd.as_ref().map(|app| {
        supervise::start(
            app,
            &config,
            handle.watch_status(),
            Arc::clone(&handle.app_health),
            Arc::clone(&metrics),
            cancel.clone(),
            gate,
        )
    });
    let (follow_failed_tx, mut follow_failed) = mpsc::channel::<String>(1);
    if let Some(task) = follow_task {
        let follow_cancel = cancel.clone();
        tracker.spawn(async move {
            if let Err(e) = task.run(follow_cancel).await {
                let _ = follow_failed_tx.send(e.to_string()).await;
            }
        });
    }

    let mut durable_rx = opened.durable;
    let prefix_told = opened.recovered.snapshot_lsn;
    let members_now = (core.members_lsn(), core.members());
    let mut shell = Shell {
        epoch: opened.persisted.epoch,
        core,
        dir: opened.dir,
        writer: opened.writer,
        reader,
        net,
        cache: TailCache::default(),
        pending: VecDeque::new(),
        switchover: None,
        started,
        actions: Vec::new(),
        followups: VecDeque::new(),
        role: Role::Backup,
        primary: None,
        commit_lsn: Lsn::ZERO,
        commit_tx,
        status_tx,
        last_heard: BTreeMap::new(),
        last_heard_any,
        serving_until,
        record_len_avg: 64,
        failed: None,
        metrics,
        snapshots,
        prefix_told,
        prefix_cut: None,
        suffix_cut: None,
        last_append: None,
        damaged_found,
        app_status: app.as_ref().map(supervise::Supervisor::watch_status),
        app_health,
        app_view,
        app_told: None,
        epoch_start: None,
        follow_status,
        book,
        members_now,
        departing: BTreeMap::new(),
        members_pending: None,
        members_adding: None,
        members_stored: None,
        caught_up_at: Default::default(),
        config,
    };
    if let Some(stamp) = shell.dir.paused() {
        warn!("automatic failover is paused (understudy resume ends it)");
        shell.step(
            Input::SetPaused {
                paused: true,
                stamp,
            },
            StepContext::default(),
        )?;
    }
    shell.app_health_check()?;
    shell.publish_status();

    let tick_every = (shell.config.core.heartbeat_interval / 5).max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval(tick_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut status_every = tokio::time::interval(Duration::from_millis(100));
    status_every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    // Shutting down: since when, and in which epoch. A primary hands over and then waits,
    // up to `drain_for`, until a primary of a later epoch is heard: leaving at once would
    // cancel the peer links with `TimeoutNow` (resent every heartbeat) perhaps not yet sent,
    // turning a planned hand-over into a full failover timeout.
    let mut draining: Option<(BootInstant, Epoch)> = None;
    let drain_for = shell.config.core.failover_timeout * 2;

    let result: Result<(), NodeError> = loop {
        let step = tokio::select! {
            biased;
            _ = &mut shutdown, if draining.is_none() => {
                // Hand over before leaving, if this node is the primary.
                draining = Some((BootInstant::now(), shell.epoch));
                if shell.role != Role::Primary {
                    break Ok(());
                }
                info!("shutting down: handing over first");
                if let Err(e) = shell.step(Input::Switchover { to: None }, StepContext::default()) {
                    break Err(e);
                }
                if shell.role == Role::Primary && !shell.core.switchover_in_progress() {
                    // No backup to hand over to (or one was already under way and ended).
                    break Ok(());
                }
                Ok(())
            }
            // Ticks come before messages and requests: under a flood of either, the
            // primary must still send heartbeats and check its lease on time.
            _ = ticker.tick() => {
                let now = shell.now();
                shell.step(Input::Tick { now }, StepContext::default()).and_then(|()| shell.app_health_check())
            }
            _ = status_every.tick() => {
                shell.publish_status();
                shell.net.close_idle_replies();
                Ok(())
            }
            changed = durable_rx.changed() => {
                if changed.is_err() {
                    break Err(NodeError::DiskFailed("the WAL writer stopped".into()));
                }
                let progress = *durable_rx.borrow_and_update();
                if progress.failed {
                    let message = shell.writer.failure().unwrap_or_else(|| "write failed".into());
                    error!(error = %message, "disk failed; stopping");
                    shell.record_fsync_failure();
                    shell.failed = Some(message.clone());
                    shell.publish_status();
                    break Err(NodeError::DiskFailed(message));
                }
                shell.on_durable(progress)
            }
            Some(message) = follow_failed.recv() => {
                error!(error = %message, "follow mode: cannot follow the directory; stopping");
                break Err(NodeError::Follow(message));
            }
            Some(event) = snapshot_rx.recv() => shell.on_snapshot_event(event),
            Some(event) = damaged_rx.recv() => match event {
                repair::Damage::Found(lsn) => {
                    error!(lsn = %lsn, "a committed record of the log is damaged: not standing for election, and stepping down if primary, until it is repaired");
                    shell.step(Input::LogDamaged, StepContext::default())
                }
                repair::Damage::Repaired => {
                    info!("every damaged record repaired: standing for election again");
                    shell.step(Input::LogRepaired, StepContext::default())
                }
            },
            Some(inbound) = inbound_rx.recv() => shell.on_inbound(inbound),
            Some(request) = requests_rx.recv() => match request {
                Request::Propose { payloads, reply, placed } => shell.on_propose(payloads, reply, placed),
                Request::Read { reply } => {
                    Metrics::add(&shell.metrics.lease_reads, 1);
                    let now = shell.now();
                    shell.step(
                        Input::Read { now },
                        StepContext {
                            read_reply: Some(reply),
                            ..StepContext::default()
                        },
                    )
                }
                Request::SetPaused { paused, stamp, reply } => {
                    let result = shell.step(Input::SetPaused { paused, stamp }, StepContext::default());
                    let _ = reply.send(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(e.to_string()),
                    });
                    result
                }
                Request::Members {
                    change,
                    addr,
                    reply,
                } => {
                    if shell.members_pending.is_some() {
                        let _ = reply.send(MembersReply::Refused(
                            core::MembersRefusal::ChangePending.to_string(),
                        ));
                        Ok(())
                    } else {
                        shell.members_adding = addr.map(|addr| (change.node(), addr));
                        let now = shell.now();
                        let result = shell.step(
                            Input::ProposeMembers { now, change },
                            StepContext {
                                members_reply: Some(reply),
                                ..StepContext::default()
                            },
                        );
                        shell.members_adding = None;
                        result
                    }
                }
                Request::Switchover { to, reply } => {
                    if shell.switchover.is_some() {
                        let _ = reply.send(SwitchoverReply {
                            to,
                            outcome: SwitchoverOutcome::Refused(core::SwitchoverRefusal::AlreadyInProgress),
                            paused: Duration::ZERO,
                        });
                        Ok(())
                    } else {
                        shell.switchover = Some((to, reply, Instant::now()));
                        shell.step(Input::Switchover { to }, StepContext::default())
                    }
                }
            },
        };
        if let Err(e) = step {
            break Err(e);
        }
        if let Some((since, epoch)) = draining {
            let taken_over = shell.role != Role::Primary
                && shell.epoch > epoch
                && shell.primary.is_some_and(|p| p != shell.config.node_id);
            if taken_over || since.elapsed() > drain_for {
                debug!(taken_over, "hand-over done or timed out; stopping");
                break Ok(());
            }
        }
    };

    // A node that stops while still primary (no backup took over in time, or none was
    // there) stops being primary all the same: its demote hook runs, as on a step-down.
    if shell.role == Role::Primary {
        if let Some(command) = shell.config.on_demote.clone() {
            info!("stopping while primary: running the demote hook");
            run_hook(command, Role::Backup, shell.epoch, None, None);
        }
    }
    // Stop: serve no reads from here on (the client port checks this before it releases
    // a reply), tell service tasks, answer anyone still waiting, then let the writer finish
    // (dropping it writes and syncs everything queued).
    shell.serving_until.set(None);
    cancel.cancel();
    for pending in shell.pending.drain(..) {
        let _ = pending.reply.send(ProposeOutcome::Unknown);
    }
    tracker.close();
    // The application is stopped meanwhile (SIGTERM, SIGKILL after `--app-stop-timeout`).
    let app_stopped = async {
        if let Some(app) = app {
            app.stopped().await;
        }
    };
    let _ = tokio::join!(
        tokio::time::timeout(Duration::from_secs(2), tracker.wait()),
        app_stopped
    );
    let Shell { writer, .. } = shell;
    tokio::task::spawn_blocking(move || drop(writer))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
    if result.is_ok() {
        info!("stopped");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_long_record_is_a_run_and_the_short_ones_between_share_one() {
        let short = Bytes::from_static(b"short");
        let long = Bytes::from(vec![0u8; RUN_RECORD_LEN_MIN]);
        assert!(runs_of(&[short.clone(), short.clone()]).is_empty());
        let payloads = [
            short.clone(),
            short.clone(),
            long.clone(),
            long.clone(),
            short.clone(),
        ];
        let len = |p: &Bytes| wal::format::record_len(p.len()) as u64;
        assert_eq!(
            runs_of(&payloads),
            [
                (2, 2 * len(&short)),
                (1, len(&long)),
                (1, len(&long)),
                (1, len(&short)),
            ]
        );
    }
}
