//! One simulated run: N nodes running the real core against a fake network, disks and clocks,
//! driven by an event queue in true (simulated) time. Everything random comes from one seed.
//!
//! A run has three phases:
//! 1. **Faults** (`FAULT_MS`): client load, and every few tens of milliseconds a fault: crash and
//!    later restart (losing what was not synced), pause (a stalled process whose clock jumps
//!    when it resumes), symmetric or asymmetric partitions, loss/duplication/delay changes,
//!    switchover requests, and now and then a wiped data dir (log and metadata lost; the node
//!    restarts fresh). Snapshots truncate logs all along. In most runs an operator also changes
//!    the membership (see below).
//! 2. **Heal**: faults removed, crashed members restarted. Within `HEAL_BOUND_MS` a primary must
//!    commit, every client proposal must be resolved, and every member of its configuration
//!    must catch up and vote.
//! 3. **Clean failover**: the primary is killed on a quiet network; the time to the next commit
//!    by a new primary is the failover time, bounded by `FAILOVER_BOUND_MS`.
//!
//! # Membership
//! A run's node ids are its seed configuration (3 or 5 voters) and up to two spare ids that
//! start outside it, not running. Every so often during the faults the operator asks the node
//! it believes primary (sometimes another) for a change: a spare (or a removed node) added as
//! a learner, which then starts as a new member joining with an empty data dir (or, removed
//! and stopped earlier with its data kept, from that), a learner promoted (the primary also
//! promotes caught-up learners on its own), a member removed, or the primary itself removed
//! by first asking it to hand over and then asking the new primary. A newly added learner is
//! now and then crashed while it catches up. A node whose removal is committed is stopped
//! (its data dir kept or wiped) or left running, where it must not disrupt the cluster. The
//! faults go on meanwhile, so changes race failovers, partitions and crashes. Voters are kept
//! at three or more, so that the clean failover has a majority left.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use understudy::core::{
    Action, Config, Core, Input, MemberRole, Members, MembersChange, MembersRefusal, Message,
    PersistedMeta, Role, SplitMix64, Start, TestKnobs,
};
use understudy::{Epoch, Lsn, NodeId};

use crate::clock::Clock;
use crate::disk::{Disk, Rec};
use crate::invariants::committed_survive::{self, CommittedLog};
use crate::invariants::{
    lease::Lease, log_matching::LogMatching, members::MembersCheck, one_primary::OnePrimary,
};
use crate::invariants::{violation, Violation};
use crate::network::{Network, MS};
use crate::workload::Workload;

pub const FAULT_MS: u64 = 3_000;
/// The fault phase with `SIM_BREAK=members`: long enough for two new members to be added,
/// wait out their quarantine and be made voters at once, and for the split that follows.
pub const FAULT_MS_BREAK_MEMBERS: u64 = 5_000;
/// Fewest voters the operator leaves (a removal below is not asked for).
const VOTERS_MIN: usize = 3;
pub const CLIENT_MS_AFTER_HEAL: u64 = 500;
pub const HEAL_BOUND_MS: u64 = 10_000;
pub const FAILOVER_BOUND_MS: u64 = 5_000;
const TICK_MS: u64 = 10;
/// Clock rates stay within this, below what the lease tolerates (`tolerated_drift_ppm`,
/// 52 631 ppm with the simulated timing).
const DRIFT_PPM_MAX: u64 = 45_000;
/// Clocks start (and restart) anywhere in their first ten minutes: the lease must not depend
/// on two nodes' clocks being close.
const CLOCK_OFFSET_MAX_MS: u64 = 600_000;
/// Trace entries kept for the failure message; `SIM_TRACE_LEN` raises it for a replay.
const TRACE_LEN: usize = 40;

#[derive(Clone, Copy, Debug, Default)]
pub struct RunOptions {
    pub knobs: TestKnobs,
    /// No random faults and a perfect network: a scenario drives the run (`run_until`).
    pub scripted: bool,
}

#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: usize,
    pub steps: u64,
    pub sim_ns: u64,
    /// Primary crashed during the fault phase -> next commit by a newer primary.
    pub failovers_under_faults_ns: Vec<u64>,
    /// Primary killed on a quiet network -> next commit by a newer primary.
    pub clean_failover_ns: u64,
    /// Heal -> first commit by a primary.
    pub heal_to_commit_ns: u64,
    pub committed: usize,
    pub unknown: usize,
    pub rejected: u64,
    /// Lease reads answered and refused.
    pub reads: u64,
    pub reads_refused: u64,
    /// Lease reads completed after their node stopped being the primary of their epoch.
    pub reads_deposed: u64,
    pub snapshots_installed: u64,
    pub elections: u64,
    /// Voters of the seed configuration (`nodes` counts the spare ids too).
    pub seed_voters: usize,
    /// Membership changes written by a primary (asked for, or a learner promoted on its
    /// own), not counting the seed's record.
    pub members_changes: u64,
    /// Refusals by reason: not primary, change pending, not caught up, no quorum, other.
    pub members_refused: [u64; 5],
    /// Config records committed, the first primary's record of the seed included.
    pub members_committed: u64,
    /// Voters of the configuration the run ended with.
    pub final_voters: usize,
}

#[derive(Clone, Debug)]
enum Event {
    Tick {
        node: usize,
        inc: u32,
    },
    Deliver {
        from: usize,
        to: usize,
        message: Message,
        records: Option<Vec<Rec>>,
    },
    DiskSync {
        node: usize,
        inc: u32,
    },
    MetaDone {
        node: usize,
        inc: u32,
    },
    Client,
    ClientRead {
        node: usize,
    },
    ClientRequest {
        node: usize,
        count: u64,
        bytes: u64,
    },
    Fault,
    Restart {
        node: usize,
    },
    TakeSnapshot {
        node: usize,
        inc: u32,
    },
    SnapshotDone {
        from: usize,
        from_inc: u32,
        to: usize,
    },
    /// The shell of a running node has repaired its damaged records (`Input::LogRepaired`).
    Repaired {
        node: usize,
        inc: u32,
    },
    Heal,
    StopClients,
    /// The operator asks for a membership change.
    Members,
    /// A learner is crashed while it catches up (if it still runs as incarnation `inc`).
    CrashLearner {
        node: usize,
        inc: u32,
    },
    /// The split made after a two-voter change (`SIM_BREAK=members`) ends.
    SplitOver,
}

#[derive(Debug)]
struct Scheduled {
    at: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        // Earliest first from a max-heap.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Node {
    id: NodeId,
    core: Option<Core>,
    inc: u32,
    disk: Disk,
    clock: Clock,
    rate_ppm: i64,
    paused_until: u64,
    /// Whether its application is live (`Input::AppHealth`); every node expects one.
    app_live: bool,
    /// `Config::priority`.
    priority: u8,
    /// The data dir's quarantine marker: set when it is wiped, cleared on
    /// `Action::QuarantineEnded`. The first start of the cluster is not fresh, so runs elect
    /// their first primary without waiting out a quarantine.
    fresh: bool,
    /// Kept out of the cluster by the operator (a spare never added, or a member removed and
    /// stopped): not running, and not restarted until it is added again.
    out: bool,
    /// It has run at some point (a spare that never ran has an empty data dir that never voted).
    started: bool,
    /// Its removal from the configuration was seen, and whether to stop it decided.
    removal_seen: bool,
    /// The configuration its core last reported (`Action::MembersChanged`, or at start).
    reported: (Lsn, Members),
    /// The epoch-start record this incarnation last wrote (as primary).
    epoch_start: Lsn,
    /// The last epoch and vote this incarnation asked to persist.
    vote_asked: (Epoch, Option<NodeId>),
    /// Its commit LSN before the step being carried out.
    commit_before: Lsn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Faults,
    Heal,
    Drain,
    CleanFailover,
    Done,
}

#[derive(Clone, Debug)]
enum TraceWhat {
    Input(Input),
    Fault(&'static str, u64),
    Action(Action),
}

#[derive(Clone, Debug)]
struct TraceEntry {
    step: u64,
    at: u64,
    node: usize,
    what: TraceWhat,
}

pub struct Sim {
    seed: u64,
    options: RunOptions,
    rng: SplitMix64,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    nodes: Vec<Node>,
    /// Every node id of the run, index `i` is id `i + 1`: the seed's voters, then the spares.
    ids: Vec<NodeId>,
    /// The seed configuration (`Config::members` of every node, plus its own id for a spare).
    seed_members: Vec<NodeId>,
    config: Config,
    net: Network,
    work: Workload,
    one_primary: OnePrimary,
    log_matching: LogMatching,
    lease: Lease,
    committed_log: CommittedLog,
    members_check: MembersCheck,
    /// The operator changes the membership in this run.
    /// Each start draws its node's failover timeout (250, 500 or 1000 ms).
    mixed_timeouts: bool,
    members_ops: bool,
    /// `SIM_BREAK=members`: two voters made at once, and a split that exploits it.
    break_members: bool,
    /// A former primary to remove once another node is primary, and until when to try.
    evict: Option<(usize, u64)>,
    /// The config record the step being carried out wrote, if any.
    written_config: Option<(Lsn, Members)>,
    /// No network fault changes the partition before this (true) time: the split made for
    /// `SIM_BREAK=members` holds.
    hold_net_until: u64,
    /// How long the fault phase lasts (`FAULT_MS`, longer with `SIM_BREAK=members`).
    fault_ms: u64,
    trace: VecDeque<TraceEntry>,
    trace_len: usize,
    steps: u64,
    out: Vec<Action>,
    delays: Vec<u64>,
    done: Vec<usize>,
    phase: Phase,
    heal_at: u64,
    heal_committed_at: Option<u64>,
    failover_open: Option<(u64, Epoch)>,
    /// A node that lost data (a wiped data dir, a corrupt record cut at recovery, a failed
    /// fsync) and is not yet a voter again: no second loss of data strikes until it is (two
    /// disks lost at once can lose any record), though every other fault does.
    /// data dir is a failure of its own, and one on top of it could lose acknowledged records.
    data_loss: Option<usize>,
    report: RunReport,
}

impl Sim {
    pub fn new(seed: u64, options: RunOptions) -> Sim {
        let mut rng = SplitMix64::new(seed);
        let break_members = options.knobs.skip_single_change;
        let size = if seed.is_multiple_of(2) || break_members {
            3
        } else {
            5
        };
        // Spare ids outside the seed configuration: up to two with 3 voters, one with 5.
        let spares = if options.scripted {
            0
        } else if break_members {
            2
        } else {
            rng.below(if size == 3 { 3 } else { 2 }) as usize
        };
        let members: Vec<NodeId> = (1..=size as u16).map(NodeId).collect();
        let ids: Vec<NodeId> = (1..=(size + spares) as u16).map(NodeId).collect();
        let members_ops = !options.scripted && (break_members || rng.below(4) != 0);
        let mixed_timeouts = !options.scripted && rng.below(3) == 0;
        let fault_ms = if break_members {
            FAULT_MS_BREAK_MEMBERS
        } else {
            FAULT_MS
        };
        let mut config = Config::new(members[0], members.clone());
        // Small windows, so that pipelining, windows and probing are exercised.
        config.inflight_records_max = 4 + rng.below(60);
        config.append_records_max = 1 + rng.below(16);
        config.inflight_bytes_max = 1_000 + rng.below(30_000);
        // Now and then more synchronous backups than the safe minimum (up to all of them):
        // learners must still be promoted when commit needs them.
        if rng.below(4) == 0 {
            let safe_min = config.sync_replicas_safe_min() as u64;
            config.sync_replicas =
                Some((safe_min + 1 + rng.below(size as u64 - 1 - safe_min)) as usize);
        }
        config.unsafe_testing = options.knobs;
        let mut net = Network::new(ids.len());
        net.loss_ppm = rng.below(30_000);
        net.duplicate_ppm = rng.below(20_000);
        net.delay_max = MS + rng.below(10 * MS);
        net.long_delay_ppm = rng.below(20_000);
        net.long_delay_max = 400 * MS;
        net.retransmit_ppm = rng.below(150_000);
        let mut sim = Sim {
            seed,
            options,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            ids: ids.clone(),
            seed_members: members.clone(),
            config,
            net,
            work: Workload::new(ids.len()),
            one_primary: OnePrimary::new(ids.len()),
            log_matching: LogMatching::default(),
            lease: Lease::default(),
            committed_log: CommittedLog::default(),
            members_check: MembersCheck::new(
                Members::voters_of(&members).expect("ids within 1..=64"),
                !break_members,
            ),
            members_ops,
            mixed_timeouts,
            break_members,
            evict: None,
            written_config: None,
            hold_net_until: 0,
            fault_ms,
            trace: VecDeque::new(),
            trace_len: std::env::var("SIM_TRACE_LEN")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(TRACE_LEN),
            steps: 0,
            out: Vec::new(),
            delays: Vec::new(),
            done: Vec::new(),
            phase: Phase::Faults,
            heal_at: fault_ms * MS,
            heal_committed_at: None,
            failover_open: None,
            data_loss: None,
            report: RunReport {
                seed,
                nodes: ids.len(),
                seed_voters: size,
                ..RunReport::default()
            },
        };
        for (i, &id) in ids.iter().enumerate() {
            let rate_ppm = sim.rng.below(2 * DRIFT_PPM_MAX + 1) as i64 - DRIFT_PPM_MAX as i64;
            // Uptimes differ by minutes: each clock starts at its own reading.
            let clock = Clock::new(0, sim.rng.below(CLOCK_OFFSET_MAX_MS) * MS, rate_ppm);
            sim.nodes.push(Node {
                id,
                core: None,
                inc: 0,
                disk: Disk::default(),
                clock,
                rate_ppm,
                paused_until: 0,
                app_live: true,
                priority: sim.rng.below(3) as u8,
                fresh: false,
                out: i >= size,
                started: false,
                removal_seen: false,
                reported: (Lsn::ZERO, Members::default()),
                epoch_start: Lsn::ZERO,
                vote_asked: (Epoch::ZERO, None),
                commit_before: Lsn::ZERO,
            });
            if i < size {
                sim.start_node(i)
                    .unwrap_or_else(|v| panic!("starting node {i}: {}", v.detail));
            }
        }
        let first_client = sim.rng.below(20) * MS;
        sim.schedule(first_client, Event::Client);
        let first_fault = 50 * MS + sim.rng.below(300) * MS;
        if options.scripted {
            sim.net.calm();
        } else {
            sim.schedule(first_fault, Event::Fault);
            sim.schedule(sim.heal_at, Event::Heal);
        }
        if sim.members_ops {
            let first = if break_members {
                20 * MS
            } else {
                100 * MS + sim.rng.below(1_000) * MS
            };
            sim.schedule(first, Event::Members);
        }
        sim
    }

    fn schedule(&mut self, after: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at: self.now + after,
            seq: self.seq,
            event,
        });
    }

    fn schedule_at(&mut self, at: u64, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    fn alive(&self, node: usize) -> bool {
        self.nodes[node].core.is_some()
    }

    fn local(&self, node: usize) -> understudy::core::Time {
        self.nodes[node].clock.read(self.now)
    }

    fn disk_latency(&mut self) -> u64 {
        if self.rng.below(50) == 0 {
            5 * MS + self.rng.below(30 * MS)
        } else {
            MS / 5 + self.rng.below(3 * MS)
        }
    }

    fn note(&mut self, node: usize, what: &'static str, value: u64) {
        self.trace_push(node, TraceWhat::Fault(what, value));
    }

    fn trace_push(&mut self, node: usize, what: TraceWhat) {
        if self.trace.len() >= self.trace_len {
            self.trace.pop_front();
        }
        self.trace.push_back(TraceEntry {
            step: self.steps,
            at: self.now,
            node,
            what,
        });
    }

    /// Starts (or restarts) node `node` from its disk.
    fn start_node(&mut self, node: usize) -> Result<(), Violation> {
        let seed = self.rng.next_u64();
        let n = &mut self.nodes[node];
        assert!(n.core.is_none(), "starting a running node");
        n.inc += 1;
        if n.inc > 1 {
            // A new process: a new clock, possibly starting at zero, or (a restarted machine
            // of a cluster up for a while) anywhere in the first minutes.
            let reading = if seed.is_multiple_of(2) {
                0
            } else {
                seed % (CLOCK_OFFSET_MAX_MS * MS)
            };
            n.clock = Clock::new(self.now, reading, n.rate_ppm);
        }
        let mut config = self.config.clone();
        config.node_id = n.id;
        config.priority = n.priority;
        if self.mixed_timeouts {
            // Nodes (and runs of one node) with different failover timeouts: a rolling change
            // of the setting. Each answer counts towards a lease only for as long as its
            // sender refuses votes, and a restart waits out the longest timeout its disk ran
            // with.
            let timeout = Duration::from_millis([250, 500, 1000][(seed % 3) as usize]);
            config.failover_timeout = timeout;
            config.clock_drift_margin = timeout / 10;
            config.app_timeout = timeout;
            config.previous_vote_wait = n.disk.vote_wait;
            n.disk.vote_wait = n.disk.vote_wait.max(timeout);
        }
        // The seed configuration; a spare's includes itself (its `--peers` names it), which
        // it acts on only until its log holds the cluster's configuration, as a learner.
        config.members.clone_from(&self.seed_members);
        if !config.members.contains(&n.id) {
            config.members.push(n.id);
        }
        let now = n.clock.read(self.now);
        let start = Start {
            learner: n.disk.meta.learner,
            quarantine: n.fresh,
        };
        let recovered = n.disk.recover();
        let core = Core::new(config, n.disk.meta, recovered, start, now, seed)
            .map_err(|err| violation("start", format!("node {node} cannot start: {err}")))?;
        self.one_primary.on_epoch(node, core.epoch())?;
        n.reported = (core.members_lsn(), core.members());
        n.epoch_start = Lsn::ZERO;
        n.vote_asked = (n.disk.meta.epoch, n.disk.meta.voted_for);
        n.started = true;
        n.core = Some(core);
        n.paused_until = 0;
        let inc = n.inc;
        self.note(node, "start", inc as u64);
        self.tell_app_health(node)?;
        let first_tick = self.rng.below(TICK_MS) * MS;
        self.schedule(first_tick, Event::Tick { node, inc });
        let snapshot_after = 200 * MS + self.rng.below(600) * MS;
        self.schedule(snapshot_after, Event::TakeSnapshot { node, inc });
        Ok(())
    }

    /// Tells `node`'s core whether its application is live (every node expects one).
    fn tell_app_health(&mut self, node: usize) -> Result<(), Violation> {
        let live = self.nodes[node].app_live;
        self.step_node(
            node,
            Input::AppHealth {
                expected: true,
                live,
            },
            None,
        )
    }

    fn crash(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        if n.core.is_none() {
            return;
        }
        // Measure a failover only when the newest primary dies (not a deposed one that has not
        // noticed yet).
        let epoch = n.core.as_ref().map_or(Epoch::ZERO, Core::epoch);
        let newest = n
            .core
            .as_ref()
            .is_some_and(|core| core.role() == Role::Primary)
            && epoch == self.lease.highest_elected();
        if newest && self.failover_open.is_none() {
            self.failover_open = Some((self.now, epoch));
        }
        n.core = None;
        n.disk.crash();
        self.work.crashed(node);
        self.note(node, "crash", 0);
    }

    /// Runs to the end; `Err` is the full failure message.
    pub fn run(mut self) -> Result<RunReport, String> {
        match self.run_inner() {
            Ok(()) => {
                self.report.steps = self.steps;
                self.report.sim_ns = self.now;
                self.report.committed = self.work.count(crate::workload::Outcome::Committed);
                self.report.unknown = self.work.count(crate::workload::Outcome::Unknown);
                self.report.rejected = self.work.rejected;
                self.report.reads = self.work.reads_done;
                self.report.reads_refused = self.work.reads_refused;
                self.report.reads_deposed = self.work.reads_done_deposed;
                Ok(self.report)
            }
            Err(v) => Err(self.failure_message(&v)),
        }
    }

    fn failure_message(&self, v: &Violation) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "simulation found a violation of invariant {}",
            v.invariant
        );
        let _ = writeln!(
            s,
            "  seed {}, {} nodes, step {}, t={:.3}ms, phase {:?}",
            self.seed,
            self.nodes.len(),
            self.steps,
            self.now as f64 / MS as f64,
            self.phase
        );
        let _ = writeln!(s, "  {}", v.detail);
        let _ = writeln!(s, "  last events (step, true time, node index, what):");
        for e in &self.trace {
            let what = match &e.what {
                TraceWhat::Input(input) => format!("<- {}", compact(&format!("{input:?}"))),
                TraceWhat::Action(action) => format!("   -> {}", compact(&format!("{action:?}"))),
                &TraceWhat::Fault(what, value) => format!("** {what} {value}"),
            };
            let _ = writeln!(
                s,
                "    #{} t={:.3}ms n{} {what}",
                e.step,
                e.at as f64 / MS as f64,
                e.node
            );
        }
        let knobs = self.options.knobs;
        let mut env = String::new();
        if knobs.skip_vote_log_check {
            env.push_str("SIM_BREAK=vote_log_check ");
        }
        if knobs.skip_lease {
            env.push_str("SIM_BREAK=lease ");
        }
        if knobs.skip_fresh_quarantine {
            env.push_str("SIM_BREAK=fresh_votes ");
        }
        if knobs.skip_learner {
            env.push_str("SIM_BREAK=learner ");
        }
        if knobs.old_lease_echo {
            env.push_str("SIM_BREAK=lease_echo ");
        }
        if knobs.skip_read_epoch_start {
            env.push_str("SIM_BREAK=read_index ");
        }
        if knobs.skip_single_change {
            env.push_str("SIM_BREAK=members ");
        }
        let _ = write!(
            s,
            "replay: {env}SIM_SEED={} cargo test --test sim",
            self.seed
        );
        s
    }

    fn run_inner(&mut self) -> Result<(), Violation> {
        while self.phase != Phase::Done {
            self.step_once()?;
        }
        Ok(())
    }

    fn step_once(&mut self) -> Result<(), Violation> {
        let Some(next) = self.queue.pop() else {
            return Err(violation("liveness", "the event queue ran dry".to_string()));
        };
        self.now = next.at;
        self.steps += 1;
        self.handle(next.event)?;
        self.check_phase()
    }

    /// Scenarios: runs every event up to true time `until` (nanoseconds).
    fn run_until(&mut self, until: u64) -> Result<(), String> {
        while self.queue.peek().is_some_and(|next| next.at <= until) {
            if let Err(v) = self.step_once() {
                return Err(self.failure_message(&v));
            }
        }
        self.now = until;
        Ok(())
    }

    fn check_phase(&mut self) -> Result<(), Violation> {
        match self.phase {
            Phase::Faults | Phase::Heal => {}
            Phase::Drain => {
                let converged = self.work.pending_count() == 0 && self.converged();
                if converged {
                    self.report.heal_to_commit_ns =
                        self.heal_committed_at.unwrap_or(self.now) - self.heal_at;
                    let primary = self.primary_node().expect("converged implies a primary");
                    let members = self.nodes[primary]
                        .core
                        .as_ref()
                        .expect("primary is alive")
                        .members();
                    self.report.final_voters = members.voter_count();
                    let voters = members.voter_count();
                    if voters < VOTERS_MIN || self.config.sync_replicas_for(&members) > voters - 2 {
                        // Every backup must hold a record before it commits: with one node
                        // killed nothing can commit, so there is no failover to time.
                        self.phase = Phase::Done;
                        return Ok(());
                    }
                    // Clean failover: kill the primary on a quiet network.
                    self.failover_open = None;
                    self.crash(primary);
                    self.phase = Phase::CleanFailover;
                    self.heal_at = self.now;
                    return Ok(());
                }
            }
            Phase::CleanFailover => {}
            Phase::Done => {}
        }
        if matches!(self.phase, Phase::Heal | Phase::Drain) && self.steps.is_multiple_of(64) {
            self.rejoin_out_members()?;
        }
        let limit = match self.phase {
            Phase::Faults => u64::MAX,
            Phase::Heal | Phase::Drain => self.fault_ms * MS + HEAL_BOUND_MS * MS,
            Phase::CleanFailover => self.heal_at + FAILOVER_BOUND_MS * MS,
            Phase::Done => u64::MAX,
        };
        if self.now > limit {
            let detail = match self.phase {
                Phase::CleanFailover => format!("no new primary committed within {FAILOVER_BOUND_MS}ms of killing the primary"),
                _ => format!(
                    "{HEAL_BOUND_MS}ms after the faults healed: primary committed at {:?}, {} proposals pending, \
                     nodes (role, epoch, commit, last): {}",
                    self.heal_committed_at.map(|t| (t - self.heal_at) / MS),
                    self.work.pending_count(),
                    self.describe_nodes()
                ),
            };
            return Err(violation("liveness after heal", detail));
        }
        Ok(())
    }

    fn describe_nodes(&self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.core {
                Some(core) => {
                    let _ = write!(
                        s,
                        "[n{i} {:?}{} e{} c{} l{} members {}@{}] ",
                        core.role(),
                        if core.is_voter() { "" } else { " (learner)" },
                        core.epoch(),
                        core.commit_lsn(),
                        core.last_lsn(),
                        core.members(),
                        core.members_lsn()
                    );
                }
                None if n.out => {
                    let _ = write!(s, "[n{i} out] ");
                }
                None => {
                    let _ = write!(s, "[n{i} down] ");
                }
            }
        }
        s
    }

    /// The primary of the highest epoch, if any node is primary (a deposed one may not know
    /// yet).
    fn primary_node(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&i| {
                self.nodes[i]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.role() == Role::Primary)
            })
            .max_by_key(|&i| self.nodes[i].core.as_ref().map(Core::epoch))
    }

    /// The node index of `id`.
    fn index_of(&self, id: NodeId) -> usize {
        let i = id.get() as usize - 1;
        assert!(i < self.nodes.len(), "node id {id} outside the run");
        i
    }

    /// No node paused, a primary whose whole log is committed, and every member of its
    /// configuration holding all of it. Nodes outside the configuration (removed, still
    /// running) are not waited for.
    fn converged(&self) -> bool {
        if self.nodes.iter().any(|n| n.paused_until > self.now) {
            return false; // A paused primary has stopped heartbeating: not a clean start.
        }
        let Some(p) = self.primary_node() else {
            return false;
        };
        let core = self.nodes[p].core.as_ref().expect("primary is alive");
        let last = core.last_lsn();
        if core.commit_lsn() != last {
            return false;
        }
        // Every member a voter, too: a learner or a quarantined node left over would make the
        // clean failover wait for it, which is right, but not what is measured.
        core.members().ids_owned().all(|id| {
            self.nodes[self.index_of(id)]
                .core
                .as_ref()
                .is_some_and(|c| {
                    c.commit_lsn() == last
                        && c.last_lsn() == last
                        && c.is_voter()
                        && !c.is_damaged()
                })
        })
    }

    fn handle(&mut self, event: Event) -> Result<(), Violation> {
        match event {
            Event::Tick { node, inc } => {
                if !self.alive(node) || self.nodes[node].inc != inc {
                    return Ok(());
                }
                if self.nodes[node].paused_until > self.now {
                    let at = self.nodes[node].paused_until;
                    self.schedule_at(at, Event::Tick { node, inc });
                    return Ok(());
                }
                let now = self.local(node);
                self.step_node(node, Input::Tick { now }, None)?;
                // A primary after a tick holds its lease (it stepped down otherwise) and would
                // answer `/primary` with 200: it is serving.
                if let Some(core) = self.nodes[node].core.as_ref() {
                    if core.role() == Role::Primary {
                        let epoch = core.epoch();
                        self.lease.on_serve(node, epoch, self.now)?;
                    }
                }
                let after = (TICK_MS - 2) * MS + self.rng.below(4 * MS);
                self.schedule(after, Event::Tick { node, inc });
            }
            Event::Deliver {
                from,
                to,
                message,
                records,
            } => {
                if !self.alive(to) || self.net.blocked(from, to) {
                    return Ok(());
                }
                if self.nodes[to].paused_until > self.now {
                    let at = self.nodes[to].paused_until;
                    self.schedule_at(
                        at,
                        Event::Deliver {
                            from,
                            to,
                            message,
                            records,
                        },
                    );
                    return Ok(());
                }
                let now = self.local(to);
                let input = Input::Receive {
                    now,
                    from: self.nodes[from].id,
                    message,
                };
                self.step_node(to, input, records.as_deref())?;
            }
            Event::DiskSync { node, inc } => {
                if !self.alive(node) || self.nodes[node].inc != inc {
                    return Ok(());
                }
                if self.nodes[node].paused_until > self.now {
                    let at = self.nodes[node].paused_until;
                    self.schedule_at(at, Event::DiskSync { node, inc });
                    return Ok(());
                }
                self.nodes[node].disk.sync_scheduled = false;
                if let Some(rec) = self.nodes[node].disk.sync() {
                    self.step_node(
                        node,
                        Input::Durable {
                            now: self.local(node),
                            lsn: rec.lsn,
                            epoch: rec.epoch,
                        },
                        None,
                    )?;
                }
            }
            Event::MetaDone { node, inc } => {
                if !self.alive(node) || self.nodes[node].inc != inc {
                    return Ok(());
                }
                if self.nodes[node].paused_until > self.now {
                    let at = self.nodes[node].paused_until;
                    self.schedule_at(at, Event::MetaDone { node, inc });
                    return Ok(());
                }
                let disk = &mut self.nodes[node].disk;
                let Some(new) = disk.meta_queue.pop_front() else {
                    return Ok(());
                };
                let old = disk.meta;
                disk.meta = new;
                let more = !disk.meta_queue.is_empty();
                self.one_primary.on_meta_durable(node, old, new)?;
                self.step_node(
                    node,
                    Input::MetaPersisted {
                        epoch: new.epoch,
                        voted_for: new.voted_for,
                        learner: new.learner,
                    },
                    None,
                )?;
                if more && self.alive(node) && self.nodes[node].inc == inc {
                    let after = self.disk_latency();
                    self.schedule(after, Event::MetaDone { node, inc });
                }
            }
            Event::Client => {
                let clients_on = matches!(self.phase, Phase::Faults | Phase::Heal);
                if !clients_on {
                    return Ok(());
                }
                let node = match self.work.believed_primary {
                    Some(p) if self.rng.below(100) < 85 => p,
                    _ => self.rng.below(self.nodes.len() as u64) as usize,
                };
                if self.rng.below(100) < 30 {
                    self.handle(Event::ClientRead { node })?;
                } else {
                    let count = 1 + self.rng.below(4);
                    let bytes = count * (10 + self.rng.below(1_000));
                    self.handle(Event::ClientRequest { node, count, bytes })?;
                }
                let after = 2 * MS + self.rng.below(18 * MS);
                self.schedule(after, Event::Client);
            }
            Event::ClientRead { node } => {
                if !self.alive(node) {
                    return Ok(());
                }
                if self.nodes[node].paused_until > self.now {
                    let at = self.nodes[node].paused_until;
                    self.schedule_at(at, Event::ClientRead { node });
                    return Ok(());
                }
                let now = self.local(node);
                self.step_node(node, Input::Read { now }, None)?;
            }
            Event::ClientRequest { node, count, bytes } => {
                if !self.alive(node) {
                    return Ok(()); // Connection refused: the client tries elsewhere next time.
                }
                if self.nodes[node].paused_until > self.now {
                    let at = self.nodes[node].paused_until;
                    self.schedule_at(at, Event::ClientRequest { node, count, bytes });
                    return Ok(());
                }
                let now = self.local(node);
                // Some requests come in runs, a long record first (without a draw, so that
                // a seed replays as before).
                let runs = if count >= 3 && count % 2 == 1 {
                    vec![(1, bytes / 2), (count - 1, bytes - bytes / 2)]
                } else {
                    Vec::new()
                };
                self.step_node(
                    node,
                    Input::Propose {
                        now,
                        count,
                        bytes,
                        runs,
                    },
                    None,
                )?;
            }
            Event::Fault => {
                if self.phase == Phase::Faults {
                    self.inject_fault()?;
                    let after = 20 * MS + self.rng.below(280 * MS);
                    self.schedule(after, Event::Fault);
                }
            }
            Event::Restart { node } => {
                if !self.alive(node) && !self.nodes[node].out && self.phase == Phase::Faults {
                    self.start_node(node)?;
                }
            }
            Event::TakeSnapshot { node, inc } => {
                if !self.alive(node) || self.nodes[node].inc != inc {
                    return Ok(());
                }
                if self.nodes[node].paused_until <= self.now {
                    let core = self.nodes[node].core.as_ref().expect("alive");
                    let disk = &self.nodes[node].disk;
                    let through = core.commit_lsn().min(disk.durable_lsn());
                    if through > disk.snapshot_lsn {
                        // The configuration at the cut is stored before the records go (the
                        // shell's `members.json`); the records (kept here) must agree.
                        let at = core.members_at(through);
                        let by_records = disk.config_record_at(through);
                        if by_records.map_or(at.0 != Lsn::ZERO, |rec| rec != at) {
                            return Err(violation(
                                "shell contract",
                                format!(
                                    "node {node} cuts its log through {through}: its core has \
                                     configuration {at:?} there, its records {by_records:?}"
                                ),
                            ));
                        }
                        self.nodes[node].disk.truncate_prefix(through, at);
                        self.step_node(node, Input::PrefixTruncated { through }, None)?;
                    }
                }
                let after = 200 * MS + self.rng.below(600 * MS);
                self.schedule(after, Event::TakeSnapshot { node, inc });
            }
            Event::SnapshotDone { from, from_inc, to } => self.snapshot_done(from, from_inc, to)?,
            Event::Repaired { node, inc } => {
                if !self.alive(node) || self.nodes[node].inc != inc {
                    return Ok(()); // A restart finds no damage: the record is intact on disk.
                }
                if self.nodes[node].paused_until > self.now {
                    let at = self.nodes[node].paused_until;
                    self.schedule_at(at, Event::Repaired { node, inc });
                    return Ok(());
                }
                self.note(node, "damage repaired", 0);
                self.step_node(node, Input::LogRepaired, None)?;
            }
            Event::Heal => {
                self.phase = Phase::Heal;
                self.net.calm();
                self.note(0, "heal", 0);
                for node in 0..self.nodes.len() {
                    self.nodes[node].app_live = true;
                    if self.nodes[node].out {
                        continue;
                    }
                    if !self.alive(node) {
                        self.start_node(node)?;
                    } else {
                        self.tell_app_health(node)?;
                    }
                }
                self.rejoin_out_members()?;
                self.schedule(CLIENT_MS_AFTER_HEAL * MS, Event::StopClients);
            }
            Event::StopClients => {
                self.phase = Phase::Drain;
            }
            Event::Members => {
                if self.phase == Phase::Faults {
                    self.members_op()?;
                    let after = if self.break_members {
                        20 * MS + self.rng.below(40 * MS)
                    } else {
                        30 * MS + self.rng.below(270 * MS)
                    };
                    self.schedule(after, Event::Members);
                }
            }
            Event::SplitOver => {
                self.net.heal();
                if self.phase != Phase::Faults {
                    self.net.calm();
                }
                self.note(0, "split over", 0);
            }
            Event::CrashLearner { node, inc } => {
                let n = &self.nodes[node];
                if self.phase == Phase::Faults && n.inc == inc && self.alive(node) {
                    self.crash(node);
                    self.note(node, "learner crashed", 0);
                    let down = 20 * MS + self.rng.below(800 * MS);
                    self.schedule(down, Event::Restart { node });
                }
            }
        }
        Ok(())
    }

    fn snapshot_done(&mut self, from: usize, from_inc: u32, to: usize) -> Result<(), Violation> {
        if !self.alive(from) || self.nodes[from].inc != from_inc {
            return Ok(()); // The sender is gone; its successor starts afresh.
        }
        if self.nodes[to].paused_until > self.now || self.nodes[from].paused_until > self.now {
            let at = self.nodes[to]
                .paused_until
                .max(self.nodes[from].paused_until);
            self.schedule_at(at, Event::SnapshotDone { from, from_inc, to });
            return Ok(());
        }
        let to_id = self.nodes[to].id;
        let reachable =
            self.alive(to) && !self.net.blocked(from, to) && !self.net.blocked(to, from);
        let receiver_ok = self.nodes[to]
            .core
            .as_ref()
            .is_some_and(|c| c.role() != Role::Primary);
        if !reachable || !receiver_ok {
            return self.step_node(from, Input::SnapshotFailed { to: to_id }, None);
        }
        let lsn = self.nodes[from].disk.snapshot_lsn;
        let epoch = self.nodes[from]
            .disk
            .record(lsn)
            .map_or(Epoch::ZERO, |rec| rec.epoch);
        let wanted = self.nodes[to]
            .core
            .as_ref()
            .is_some_and(|core| core.snapshot_wanted(lsn, epoch));
        if wanted {
            // The configuration in effect at the snapshot, as the sender's core knows it; the
            // sender's records (kept here) must agree.
            let (members_lsn, members) = self.nodes[from]
                .core
                .as_ref()
                .expect("alive")
                .members_at(lsn);
            let by_records = self.nodes[from].disk.config_record_at(lsn);
            if by_records.map_or(members_lsn != Lsn::ZERO, |rec| {
                rec != (members_lsn, members)
            }) {
                return Err(violation(
                    "shell contract",
                    format!(
                        "node {from} sends a snapshot through {lsn} in configuration {members} of \
                         lsn {members_lsn}, but its records say {by_records:?}"
                    ),
                ));
            }
            let records: Vec<Rec> = self.nodes[from].disk.live[..lsn.get() as usize].to_vec();
            for rec in &records {
                self.log_matching.on_write(to, rec)?;
            }
            self.nodes[to]
                .disk
                .install_snapshot(&records, (members_lsn, members));
            self.report.snapshots_installed += 1;
            self.note(to, "snapshot installed", lsn.get());
            self.step_node(
                to,
                Input::SnapshotInstalled {
                    lsn,
                    epoch,
                    members_lsn,
                    members,
                },
                None,
            )?;
        }
        if self.alive(from) && self.nodes[from].inc == from_inc {
            self.step_node(
                from,
                Input::SnapshotSent {
                    to: to_id,
                    lsn,
                    epoch,
                },
                None,
            )?;
        }
        Ok(())
    }

    fn inject_fault(&mut self) -> Result<(), Violation> {
        let n = self.nodes.len();
        // Crashes mostly leave a majority of the voters running.
        let voters = self.latest_members();
        let alive = voters
            .voter_ids()
            .filter(|&id| self.alive(self.index_of(id)))
            .count();
        let majority = voters.majority();
        if let Some(node) = self.data_loss {
            // A voter again, and durably so: a promotion whose metadata write has not landed
            // yet is undone by a crash, and the node is a learner once more.
            let n = &self.nodes[node];
            if n.core
                .as_ref()
                .is_some_and(|core| core.is_voter() && !core.is_damaged())
                && !n.disk.meta.learner
                && !n.fresh
            {
                self.data_loss = None;
            }
            // ... or out of the cluster for good (its removal committed, the node stopped).
            if n.out {
                self.data_loss = None;
            }
        }
        let pick_target = |sim: &mut Sim| -> usize {
            match sim.primary_node() {
                Some(p) if sim.rng.below(100) < 50 => p,
                _ => sim.rng.below(n as u64) as usize,
            }
        };
        let mut roll = self.rng.below(100);
        if self.now < self.hold_net_until && (40..=87).contains(&roll) {
            roll = 100; // The split made for `SIM_BREAK=members` holds.
        }
        match roll {
            0..=24 => {
                let node = pick_target(self);
                if self.alive(node) && (alive > majority || self.rng.below(10) == 0) {
                    self.crash(node);
                    let down = 50 * MS + self.rng.below(2_000 * MS);
                    self.schedule(down, Event::Restart { node });
                }
            }
            25..=39 => {
                let node = pick_target(self);
                let pause = 10 * MS + self.rng.below(1_500 * MS);
                self.nodes[node].paused_until = self.nodes[node].paused_until.max(self.now + pause);
                self.note(node, "pause ms", pause / MS);
            }
            40..=54 => {
                let mask = 1 + self.rng.below((1u64 << n) - 2);
                self.net.heal();
                self.net.split(mask);
                self.note(0, "partition", mask);
            }
            55..=59 => {
                // The primary is no longer heard, while what others send still reaches it
                // (one direction of its links down): its lease must run out on the
                // acknowledgements already on their way to it, not on when they arrive.
                if let Some(p) = self.primary_node() {
                    for other in (0..n).filter(|&other| other != p) {
                        self.net.block(p, other);
                    }
                    self.note(p, "primary unheard", 0);
                }
            }
            60..=64 => {
                let links = 1 + self.rng.below(n as u64);
                for _ in 0..links {
                    let a = self.rng.below(n as u64) as usize;
                    let b = self.rng.below(n as u64) as usize;
                    if a != b {
                        self.net.block(a, b);
                        self.note(a, "block link to", b as u64);
                    }
                }
            }
            65..=79 => {
                self.net.heal();
                self.note(0, "network healed", 0);
            }
            80..=87 => {
                self.net.loss_ppm = self.rng.below(100_000);
                self.net.duplicate_ppm = self.rng.below(50_000);
                self.net.delay_max = self.net.delay_min + self.rng.below(20 * MS);
                self.net.long_delay_ppm = self.rng.below(50_000);
                self.net.retransmit_ppm = self.rng.below(300_000);
                self.note(0, "loss ppm", self.net.loss_ppm);
            }
            88..=92 => {
                if let Some(p) = self.primary_node() {
                    if self.nodes[p].paused_until <= self.now {
                        let to = if roll <= 90 {
                            let to = (p + 1 + self.rng.below(n as u64 - 1) as usize) % n;
                            self.note(p, "switchover to", to as u64);
                            Some(self.nodes[to].id)
                        } else {
                            self.note(p, "switchover to the best backup", 0);
                            None
                        };
                        self.step_node(p, Input::Switchover { to }, None)?;
                    }
                }
            }
            99 => {
                // An application dies or comes back: a primary whose application is gone
                // hands over, a backup whose application is gone defers its candidacy.
                let node = self.rng.below(n as u64) as usize;
                let live = !self.nodes[node].app_live;
                self.nodes[node].app_live = live;
                self.note(node, "app live", u64::from(live));
                if self.alive(node) && self.nodes[node].paused_until <= self.now {
                    self.tell_app_health(node)?;
                }
            }
            93..=98 if self.data_loss.is_none() => {
                let node = pick_target(self);
                if self.alive(node) {
                    match roll {
                        93..=95 => self.wipe(node),
                        96 => self.corrupt(node),
                        97 => self.fsync_failure(node),
                        _ => self.damaged_while_running(node)?,
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `Action::Committed { lsn }` of `node`: its log agrees with the committed prefix, and
    /// config records committed for the first time are checked; on a primary, the commit is
    /// backed by enough voters of its latest configuration (unless a config record written
    /// later in the step, in `rest`, changed the configuration since).
    fn on_committed(&mut self, node: usize, lsn: Lsn, rest: &[Action]) -> Result<(), Violation> {
        let disk = &self.nodes[node].disk;
        let known = self.committed_log.on_committed(node, lsn, disk)?;
        for (at, members) in disk.config_records_in(known.next(), lsn) {
            self.members_check.on_committed_config(at, members)?;
            self.report.members_committed += 1;
        }
        let core = self.nodes[node].core.as_ref().expect("alive");
        let config_later = rest
            .iter()
            .any(|action| matches!(action, Action::WriteConfig { .. }));
        if core.role() == Role::Primary && !config_later {
            let members = core.members();
            self.members_check.on_primary_commit(
                node,
                lsn,
                &core.status(),
                members,
                self.config.sync_replicas,
            )?;
        }
        Ok(())
    }

    /// `Action::WriteConfig` of `node`, primary of `epoch`.
    fn write_config(
        &mut self,
        node: usize,
        lsn: Lsn,
        epoch: Epoch,
        members: Members,
    ) -> Result<(), Violation> {
        let n = &self.nodes[node];
        let core = n.core.as_ref().expect("alive");
        let (previous_lsn, previous) = core.members_at(lsn.prev());
        self.members_check.on_written(
            node,
            epoch,
            lsn,
            members,
            (previous_lsn, previous),
            n.commit_before,
            n.epoch_start,
        )?;
        // Writing a record is serving: the lease must hold.
        self.lease.on_serve(node, epoch, self.now)?;
        self.write(node, lsn, epoch, 0, Some(members))?;
        self.schedule_sync(node);
        if members != previous {
            self.report.members_changes += 1;
        }
        self.written_config = Some((lsn, members));
        if self.break_members && !previous.single_change_to(&members) {
            // The fault that a two-voter change cannot survive: the primary and the new voters
            // (a majority of the new configuration) apart from the other old voters (a
            // majority of the old one), each side free to elect.
            let added = members.voter_bits() & !previous.voter_bits();
            let side = (1u64 << node) | added; // bit i is node index i, id i + 1
            self.net.heal();
            self.net.split(side);
            let hold = 2_000 * MS;
            self.hold_net_until = self.now + hold;
            self.schedule(hold, Event::SplitOver);
            self.note(node, "split after a two-voter change, side", side);
        }
        Ok(())
    }

    /// The configuration the cluster acts on, as well as the simulator can tell: the primary's
    /// latest, else that of the running node with the most advanced log, else the seed.
    fn latest_members(&self) -> Members {
        if let Some(p) = self.primary_node() {
            return self.nodes[p].core.as_ref().expect("alive").members();
        }
        self.nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .max_by_key(|core| (core.epoch_of(core.last_lsn()), core.last_lsn()))
            .map_or_else(
                || Members::voters_of(&self.seed_members).expect("ids within 1..=64"),
                Core::members,
            )
    }

    /// The operator asks for a membership change (module docs).
    fn members_op(&mut self) -> Result<(), Violation> {
        self.retire_removed();
        self.rejoin_out_members()?;
        let target = match self.work.believed_primary {
            Some(p) if self.rng.below(100) < 85 => p,
            _ => self.rng.below(self.nodes.len() as u64) as usize,
        };
        let up =
            |sim: &Sim, node: usize| sim.alive(node) && sim.nodes[node].paused_until <= sim.now;
        if !up(self, target) {
            return Ok(());
        }
        // A node that knows of another primary redirects the operator's command there (the
        // change is chosen against the configuration of the node that is asked in the end).
        let known = self.nodes[target].core.as_ref().and_then(Core::primary);
        let target = match known.map(|id| self.index_of(id)) {
            Some(primary) if primary != target && up(self, primary) => primary,
            _ => target,
        };
        let core = self.nodes[target].core.as_ref().expect("alive");
        let members = core.members();
        let is_primary = core.role() == Role::Primary;
        let me = self.ids[target];
        let outside: Vec<NodeId> = self
            .ids
            .iter()
            .copied()
            .filter(|&id| !members.contains(id))
            .collect();
        let learners: Vec<NodeId> = members
            .ids_owned()
            .filter(|&id| members.role(id) == Some(MemberRole::Learner))
            .collect();
        let voters = members.voter_count();
        let removable: Vec<NodeId> = members
            .ids_owned()
            .filter(|&id| id != me && (!members.is_voter(id) || voters > VOTERS_MIN))
            .collect();
        let pick = |sim: &mut Sim, ids: &[NodeId]| ids[sim.rng.below(ids.len() as u64) as usize];
        let change = if let Some((old, until)) = self.evict {
            // A former primary asked to hand over: removed on the next primary.
            if self.now > until || !members.contains(self.ids[old]) && is_primary {
                self.evict = None;
                return Ok(());
            }
            if target == old {
                return Ok(());
            }
            // The configuration may have changed since the hand-over was asked for: never
            // below the fewest voters the runs keep.
            if members.is_voter(self.ids[old]) && voters <= VOTERS_MIN {
                self.evict = None;
                return Ok(());
            }
            MembersChange::Remove(self.ids[old])
        } else if self.break_members {
            // Two new members as learners, made voters together (`skip_single_change`).
            if let Some(&id) = outside.first() {
                MembersChange::AddLearner(id)
            } else if let Some(&id) = learners.first() {
                MembersChange::Promote(id)
            } else {
                return Ok(());
            }
        } else {
            match self.rng.below(100) {
                0..=39 if !outside.is_empty() => MembersChange::AddLearner(pick(self, &outside)),
                40..=54 if !learners.is_empty() => MembersChange::Promote(pick(self, &learners)),
                55..=84 if !removable.is_empty() => MembersChange::Remove(pick(self, &removable)),
                85..=99 if is_primary && voters > VOTERS_MIN => {
                    // The primary is to leave: it hands over first.
                    self.note(target, "primary to be removed: switchover", 0);
                    self.evict = Some((target, self.now + 1_500 * MS));
                    return self.step_node(target, Input::Switchover { to: None }, None);
                }
                _ => return Ok(()),
            }
        };
        let (what, id) = match change {
            MembersChange::AddLearner(id) => ("ask: add learner", id),
            MembersChange::Promote(id) => ("ask: promote", id),
            MembersChange::Remove(id) => ("ask: remove", id),
            MembersChange::SetAddr(id) => ("ask: set address", id),
        };
        self.note(target, what, u64::from(id.get()));
        self.written_config = None;
        let now = self.local(target);
        self.step_node(target, Input::ProposeMembers { now, change }, None)?;
        if self.written_config.take().is_none() {
            return Ok(());
        }
        match change {
            MembersChange::AddLearner(id) => {
                let node = self.index_of(id);
                self.join(node)?;
                if self.rng.below(4) == 0 {
                    // It crashes while it catches up.
                    let inc = self.nodes[node].inc;
                    let after = 5 * MS + self.rng.below(400 * MS);
                    self.schedule(after, Event::CrashLearner { node, inc });
                }
            }
            MembersChange::Remove(id) if self.evict.is_some_and(|(old, _)| self.ids[old] == id) => {
                self.evict = None;
            }
            _ => {}
        }
        Ok(())
    }

    /// Node `node` is a member (again): it runs. A node kept out starts, on an empty data dir
    /// if it never ran (a new machine: a learner, quarantined or not, as it cannot have voted
    /// before) or on what its data dir holds (wiped or kept when it was stopped).
    fn join(&mut self, node: usize) -> Result<(), Violation> {
        let n = &mut self.nodes[node];
        n.removal_seen = false;
        if !n.out {
            return Ok(()); // Running, or down and about to restart.
        }
        n.out = false;
        if !n.started {
            n.disk = Disk::default();
            n.disk.meta.learner = true;
            n.fresh = self.break_members || self.rng.below(2) == 0;
        }
        self.note(node, "joins", u64::from(self.nodes[node].fresh));
        self.start_node(node)
    }

    /// Nodes out of the primary's configuration, committed and latest alike (a removal
    /// committed, or an addition that never was), are stopped, their data dir kept or wiped,
    /// or left running: each decided once. Only the newest elected primary's word counts, once
    /// it has committed a record of its epoch: no configuration it lacks can come back then
    /// (a stale primary, paused or cut off, may not know of a newer configuration).
    fn retire_removed(&mut self) {
        let Some(p) = self.primary_node() else {
            return;
        };
        let core = self.nodes[p].core.as_ref().expect("alive");
        if core.epoch() != self.lease.highest_elected()
            || core.commit_lsn() < self.nodes[p].epoch_start
            || self.nodes[p].epoch_start == Lsn::ZERO
        {
            return;
        }
        let (latest, committed) = (core.members(), core.members_at(core.commit_lsn()).1);
        for node in 0..self.nodes.len() {
            let id = self.ids[node];
            let n = &self.nodes[node];
            if n.out || n.removal_seen || latest.contains(id) || committed.contains(id) {
                continue;
            }
            self.nodes[node].removal_seen = true;
            match self.rng.below(4) {
                0 | 1 => self.note(node, "removed, left running", 0),
                roll => {
                    let wipe = roll == 3;
                    self.crash(node);
                    let n = &mut self.nodes[node];
                    n.out = true;
                    if wipe {
                        n.disk = Disk::default();
                        n.disk.meta.learner = true;
                        n.fresh = true;
                        self.one_primary.on_wiped(node);
                    }
                    if self.data_loss == Some(node) {
                        self.data_loss = None;
                    }
                    self.note(node, "removed, stopped; data dir wiped", u64::from(wipe));
                }
            }
        }
    }

    /// A node kept out that the primary's configuration holds after all (an addition the
    /// simulator did not ask for cannot happen, but a removal may not be the last word) runs
    /// again. Once the faults are over and no node is primary, so does one that any running
    /// node's configuration holds: a cluster waiting for it would wait for ever.
    fn rejoin_out_members(&mut self) -> Result<(), Violation> {
        let members = match self.primary_node() {
            Some(p) => self.nodes[p].core.as_ref().expect("alive").members(),
            None if self.phase != Phase::Faults => {
                let (voters, learners) = self
                    .nodes
                    .iter()
                    .filter_map(|n| n.core.as_ref().map(Core::members))
                    .fold((0, 0), |(v, l), m| {
                        (v | m.voter_bits(), l | m.learner_bits())
                    });
                Members::from_bits(voters, learners & !voters).expect("disjoint")
            }
            None => return Ok(()),
        };
        for id in members.ids_owned() {
            let node = self.index_of(id);
            if self.nodes[node].out {
                self.join(node)?;
            }
        }
        Ok(())
    }

    /// The data dir of `node` is lost (log and metadata) and the node restarts on an empty one
    /// shortly after, as a node joining an existing cluster (`--initial-cluster-state
    /// existing`, the README's procedure): a quarantined learner. Nothing else is held back:
    /// the primary may crash while it catches up, and then the cluster must wait for it.
    fn wipe(&mut self, node: usize) {
        self.crash(node);
        self.nodes[node].disk = Disk::default();
        self.nodes[node].disk.meta.learner = true;
        self.nodes[node].fresh = true;
        self.one_primary.on_wiped(node);
        self.data_loss = Some(node);
        self.note(node, "wipe", 0);
        let down = self.rng.below(300 * MS);
        self.schedule(down, Event::Restart { node });
    }

    /// A record that `node` had made durable (its last one, or one further back, as in a
    /// sealed segment) is found corrupt at its next start: recovery cuts the log there and the
    /// node starts as a learner (what the shell does when it cannot repair the record from a
    /// peer). Its metadata survives.
    fn corrupt(&mut self, node: usize) {
        self.crash(node);
        let disk = &mut self.nodes[node].disk;
        let (low, high) = (disk.snapshot_lsn.next(), disk.durable_lsn());
        if low > high {
            self.note(node, "crash (nothing to corrupt)", 0);
        } else {
            let lsn = if self.rng.below(2) == 0 {
                high
            } else {
                low.plus(self.rng.below(high.get() - low.get() + 1))
            };
            let disk = &mut self.nodes[node].disk;
            disk.lose_from(lsn);
            disk.meta.learner = true;
            self.data_loss = Some(node);
            self.note(node, "corrupt record, cut at", lsn.get());
        }
        let down = 20 * MS + self.rng.below(300 * MS);
        self.schedule(down, Event::Restart { node });
    }

    /// The scrub of a running `node` finds a committed record damaged: the shell tells the
    /// core (a primary steps down; the node stands for nothing) and repairs the record in
    /// place from a peer some time later (the simulated disk holds every record intact, so
    /// only the time passes), then tells the core it is done.
    fn damaged_while_running(&mut self, node: usize) -> Result<(), Violation> {
        if self.nodes[node].paused_until > self.now {
            return Ok(());
        }
        self.data_loss = Some(node);
        self.note(node, "damaged record found", 0);
        let inc = self.nodes[node].inc;
        let repair = 5 * MS + self.rng.below(500 * MS);
        self.schedule(repair, Event::Repaired { node, inc });
        self.step_node(node, Input::LogDamaged, None)
    }

    /// A write or fsync of `node`'s log fails: it stops at once, loses what was not durable,
    /// and starts as a learner (the shell's `fsync-failed` marker).
    fn fsync_failure(&mut self, node: usize) {
        self.crash(node);
        self.nodes[node].disk.meta.learner = true;
        self.data_loss = Some(node);
        self.note(node, "fsync failed", 0);
        let down = 20 * MS + self.rng.below(300 * MS);
        self.schedule(down, Event::Restart { node });
    }

    /// Feeds `input` to `node`'s core, checks it, and carries out its actions.
    fn step_node(
        &mut self,
        node: usize,
        input: Input,
        records: Option<&[Rec]>,
    ) -> Result<(), Violation> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        self.trace_push(node, TraceWhat::Input(input.clone()));
        let n = &mut self.nodes[node];
        n.commit_before = n.core.as_ref().map_or(Lsn::ZERO, Core::commit_lsn);
        let core = n.core.as_mut().expect("stepping a running node");
        let stepped = catch_unwind(AssertUnwindSafe(|| {
            core.step(input.clone(), &mut out);
            core.validate();
        }));
        if let Err(panic) = stepped {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(violation(
                "core assertion",
                format!("node {node}: {message}"),
            ));
        }
        let epoch = core.epoch();
        self.one_primary.on_epoch(node, epoch)?;
        let mut result = Ok(());
        for (i, &action) in out.iter().enumerate() {
            self.trace_push(node, TraceWhat::Action(action));
            result = self.apply(node, action, &input, records, &out[i + 1..]);
            if result.is_err() {
                break;
            }
        }
        self.out = out;
        result?;
        self.check_members_known(node)
    }

    /// After a step of `node`: the configuration its core acts on is the one it last reported
    /// (`Action::MembersChanged`), and the one its disk would recover.
    fn check_members_known(&self, node: usize) -> Result<(), Violation> {
        let n = &self.nodes[node];
        let Some(core) = n.core.as_ref() else {
            return Ok(());
        };
        let latest = (core.members_lsn(), core.members());
        if n.reported != latest {
            return Err(violation(
                "shell contract",
                format!(
                    "node {node} acts on configuration {latest:?} but last reported {:?}",
                    n.reported
                ),
            ));
        }
        let on_disk = n.disk.latest_config();
        let agrees = match on_disk {
            Some(found) => found == latest,
            // No configuration on disk: the node's own seed.
            None => latest.0 == Lsn::ZERO,
        };
        if !agrees {
            return Err(violation(
                "shell contract",
                format!(
                    "node {node} acts on configuration {latest:?}; its disk would recover {on_disk:?}"
                ),
            ));
        }
        Ok(())
    }

    fn schedule_sync(&mut self, node: usize) {
        if !self.nodes[node].disk.sync_scheduled {
            self.nodes[node].disk.sync_scheduled = true;
            let inc = self.nodes[node].inc;
            let after = self.disk_latency();
            self.schedule(after, Event::DiskSync { node, inc });
        }
    }

    fn write(
        &mut self,
        node: usize,
        lsn: Lsn,
        epoch: Epoch,
        payload: u64,
        config: Option<Members>,
    ) -> Result<(), Violation> {
        let rec = self.nodes[node].disk.append(lsn, epoch, payload, config);
        self.log_matching.on_write(node, &rec)
    }

    /// Carries out `action` of `node`'s step on `input`; `rest` are the step's actions after it.
    fn apply(
        &mut self,
        node: usize,
        action: Action,
        input: &Input,
        records: Option<&[Rec]>,
        rest: &[Action],
    ) -> Result<(), Violation> {
        match action {
            Action::Send { to, message } => {
                let to = self.index_of(to);
                let mut attached = None;
                if let Message::Append(append) = message {
                    if append.last_lsn >= append.first_lsn {
                        let mut recs = Vec::with_capacity(Lsn::count_between(
                            append.first_lsn,
                            append.last_lsn,
                        ) as usize);
                        let mut lsn = append.first_lsn;
                        while lsn <= append.last_lsn {
                            match self.nodes[node].disk.record(lsn) {
                                Some(rec) if rec.epoch == append.records_epoch => recs.push(*rec),
                                found => {
                                    return Err(violation(
                                        "shell contract",
                                        format!("node {node} ships lsn {lsn} of epoch {} but its disk has {found:?}", append.records_epoch),
                                    ))
                                }
                            }
                            lsn = lsn.next();
                        }
                        // A config record is carried as an append's last record, and only there
                        // (`Append::config`, which a real shell derives from the record's kind).
                        let last = recs.len() - 1;
                        let misplaced = recs[..last].iter().find(|rec| rec.config.is_some());
                        if misplaced.is_some() || recs[last].config != append.config {
                            return Err(violation(
                                "shell contract",
                                format!(
                                    "node {node} ships lsns {}..={} with config {:?}, but the config \
                                     records of that range are at {:?}",
                                    append.first_lsn,
                                    append.last_lsn,
                                    append.config,
                                    recs.iter()
                                        .filter(|rec| rec.config.is_some())
                                        .map(|rec| rec.lsn)
                                        .collect::<Vec<_>>()
                                ),
                            ));
                        }
                        attached = Some(recs);
                    }
                }
                let mut delays = std::mem::take(&mut self.delays);
                let acknowledgement = matches!(message, Message::AppendResponse(_));
                self.net
                    .plan(&mut self.rng, node, to, acknowledgement, &mut delays);
                for &delay in &delays {
                    self.schedule(
                        delay,
                        Event::Deliver {
                            from: node,
                            to,
                            message,
                            records: attached.clone(),
                        },
                    );
                }
                self.delays = delays;
            }
            Action::PersistMeta {
                epoch,
                voted_for,
                learner,
            } => {
                if self.nodes[node].vote_asked != (epoch, voted_for) {
                    self.nodes[node].vote_asked = (epoch, voted_for);
                    if let Some(candidate) = voted_for {
                        let core = self.nodes[node].core.as_ref().expect("alive");
                        self.members_check.on_vote(
                            node,
                            self.ids[node],
                            candidate,
                            &core.status(),
                            core.members(),
                        )?;
                    }
                }
                let disk = &mut self.nodes[node].disk;
                disk.meta_queue.push_back(PersistedMeta {
                    epoch,
                    voted_for,
                    learner,
                });
                if disk.meta_queue.len() == 1 {
                    let inc = self.nodes[node].inc;
                    let after = self.disk_latency();
                    self.schedule(after, Event::MetaDone { node, inc });
                }
            }
            Action::WriteEpochStart { lsn, epoch } => {
                self.write(node, lsn, epoch, 0, None)?;
                self.nodes[node].epoch_start = lsn;
                self.schedule_sync(node);
            }
            Action::WriteConfig {
                lsn,
                epoch,
                members,
            } => self.write_config(node, lsn, epoch, members)?,
            Action::MembersRefused { reason } => {
                let i = match reason {
                    MembersRefusal::NotPrimary => 0,
                    MembersRefusal::ChangePending => 1,
                    MembersRefusal::NotCaughtUp { .. } => 2,
                    MembersRefusal::NoQuorum { .. } => 3,
                    _ => 4,
                };
                self.report.members_refused[i] += 1;
            }
            Action::MembersChanged { lsn, members } => {
                self.nodes[node].reported = (lsn, members);
            }
            // The simulated network reaches every node: nothing to dial.
            Action::PeersDeparting { .. } => {}
            Action::WriteProposed {
                first_lsn,
                last_lsn,
                epoch,
            } => {
                self.lease.on_serve(node, epoch, self.now)?;
                let first_payload = self.work.accepted(node, first_lsn, last_lsn, epoch);
                let mut lsn = first_lsn;
                let mut payload = first_payload;
                while lsn <= last_lsn {
                    self.write(node, lsn, epoch, payload, None)?;
                    lsn = lsn.next();
                    payload += 1;
                }
                self.schedule_sync(node);
            }
            Action::TruncateSuffix { keep_through } => {
                self.nodes[node].disk.truncate_suffix(keep_through);
            }
            Action::WriteReceived {
                first_lsn,
                last_lsn,
            } => {
                let (
                    Input::Receive {
                        message: Message::Append(append),
                        ..
                    },
                    Some(recs),
                ) = (input, records)
                else {
                    return Err(violation(
                        "shell contract",
                        "WriteReceived outside an append with records".to_string(),
                    ));
                };
                assert!(
                    first_lsn >= append.first_lsn && last_lsn <= append.last_lsn,
                    "WriteReceived outside the append"
                );
                let mut lsn = first_lsn;
                while lsn <= last_lsn {
                    let rec = recs[(lsn.get() - append.first_lsn.get()) as usize];
                    self.write(node, lsn, rec.epoch, rec.payload, rec.config)?;
                    lsn = lsn.next();
                }
                self.schedule_sync(node);
            }
            Action::SendSnapshot { to } => {
                let to = self.index_of(to);
                let from_inc = self.nodes[node].inc;
                let after = 5 * MS + self.rng.below(30 * MS);
                self.schedule(
                    after,
                    Event::SnapshotDone {
                        from: node,
                        from_inc,
                        to,
                    },
                );
            }
            Action::Committed { lsn } => {
                self.work.reads_committed(node, lsn, self.now);
                let mut done = std::mem::take(&mut self.done);
                self.work.committed(node, lsn, &mut done);
                let mut result = Ok(());
                for &i in &done {
                    let op = self.work.ops[i];
                    assert_eq!(op.node, node, "a node resolved another node's proposal");
                    let mut at = op.first_lsn;
                    let mut payload = op.first_payload;
                    while at <= op.last_lsn {
                        let on_disk = self.nodes[node].disk.record(at).copied();
                        if on_disk.is_none_or(|rec| rec.payload != payload || rec.epoch != op.epoch)
                        {
                            result = Err(violation(
                                "1 (acknowledged records survive failover)",
                                format!("node {node} acknowledged lsn {at} (payload {payload}) but holds {on_disk:?}"),
                            ));
                            break;
                        }
                        result = committed_survive::on_acknowledged(
                            &mut self.work.acked,
                            at,
                            op.epoch,
                            payload,
                        );
                        if result.is_err() {
                            break;
                        }
                        at = at.next();
                        payload += 1;
                    }
                    if result.is_err() {
                        break;
                    }
                }
                self.done = done;
                result?;
                self.on_committed(node, lsn, rest)?;
                let core = self.nodes[node].core.as_ref().expect("alive");
                if core.role() == Role::Primary {
                    if let Some((killed_at, epoch)) = self.failover_open {
                        if core.epoch() > epoch {
                            let took = self.now - killed_at;
                            match self.phase {
                                Phase::CleanFailover => {
                                    self.report.clean_failover_ns = took;
                                    let acked = &self.work.acked;
                                    committed_survive::on_primary(
                                        acked,
                                        node,
                                        core.epoch(),
                                        &self.nodes[node].disk,
                                    )?;
                                    self.phase = Phase::Done;
                                }
                                _ => self.report.failovers_under_faults_ns.push(took),
                            }
                            self.failover_open = None;
                        }
                    }
                    if matches!(self.phase, Phase::Heal | Phase::Drain)
                        && self.heal_committed_at.is_none()
                    {
                        self.heal_committed_at = Some(self.now);
                    }
                }
            }
            Action::RoleChanged {
                role,
                epoch,
                primary,
            } => {
                self.work
                    .reads_role(node, (role == Role::Primary).then_some(epoch));
                if role == Role::Primary {
                    self.report.elections += 1;
                    self.one_primary.on_promoted(node, epoch)?;
                    self.lease.on_promoted(node, epoch, self.now);
                    let disk = &self.nodes[node].disk;
                    committed_survive::on_primary(&self.work.acked, node, epoch, disk)?;
                    self.committed_log.on_primary(node, epoch, disk)?;
                    // Its votes, counted in its latest configuration (a config record written
                    // on promotion is the seed's, which changes nothing).
                    let counted = self.nodes[node].core.as_ref().expect("alive").members();
                    let one_primary = &self.one_primary;
                    self.members_check.on_promoted(
                        node,
                        self.ids[node],
                        epoch,
                        counted,
                        |voter| one_primary.vote_of(voter, epoch),
                    )?;
                }
                if let Some(p) = primary {
                    self.work.believed_primary = Some(self.index_of(p));
                }
            }
            Action::AppendsAbandoned { after } => self.work.abandoned(node, after),
            Action::ProposeRejected { .. } => self.work.rejected += 1,
            Action::ReadIndex { lsn, epoch } => {
                self.lease.on_serve(node, epoch, self.now)?;
                let commit = self.nodes[node]
                    .core
                    .as_ref()
                    .map_or(Lsn::ZERO, Core::commit_lsn);
                self.work
                    .read_answered(node, lsn, epoch, commit, self.now)
                    .map_err(|detail| violation("6 (reads are linearizable)", detail))?;
            }
            Action::ReadRefused { .. } => self.work.reads_refused += 1,
            Action::Switchover { .. }
            | Action::SwitchoverStarted { .. }
            | Action::PauseChanged { .. }
            | Action::ElectionDeferred { .. }
            | Action::LeaseLapsed { .. } => {}
            Action::QuarantineEnded => self.nodes[node].fresh = false,
            Action::Promoted { .. } | Action::BecameLearner { .. } => {}
        }
        Ok(())
    }
}

/// Scenario: a backup is cut off from everyone for eight failover timeouts, then the partition
/// heals. It keeps asking for pre-votes and nobody grants them (they hear from the primary), so
/// it never raises its epoch, and on rejoining it cannot depose the healthy primary: the same
/// node stays primary in the same epoch and the backup catches up.
pub fn rejoin_after_partition(seed: u64) -> Result<(), String> {
    let mut sim = Sim::new(
        seed,
        RunOptions {
            scripted: true,
            ..RunOptions::default()
        },
    );
    sim.run_until(1_500 * MS)?;
    let primary = sim
        .primary_node()
        .ok_or("no primary after 1.5 s on a perfect network")?;
    let epoch = sim.nodes[primary]
        .core
        .as_ref()
        .map_or(Epoch::ZERO, Core::epoch);
    let cut_off = (primary + 1) % sim.nodes.len();
    for other in 0..sim.nodes.len() {
        if other != cut_off {
            sim.net.block(cut_off, other);
            sim.net.block(other, cut_off);
        }
    }
    sim.run_until(5_500 * MS)?;
    let standing = sim.nodes[cut_off]
        .core
        .as_ref()
        .map_or(Epoch::ZERO, Core::epoch);
    if standing != epoch {
        return Err(format!(
            "seed {seed}: the cut-off node {cut_off} raised its epoch to {standing} (primary's {epoch})"
        ));
    }
    sim.net.heal();
    sim.run_until(7_500 * MS)?;
    let now_primary = sim.primary_node();
    let now_epoch = now_primary
        .and_then(|p| sim.nodes[p].core.as_ref())
        .map(Core::epoch);
    if now_primary != Some(primary) || now_epoch != Some(epoch) {
        return Err(format!(
            "seed {seed}: node {primary} was primary of epoch {epoch}; after node {cut_off} rejoined: \
             {now_primary:?} of epoch {now_epoch:?}"
        ));
    }
    let commit = |node: usize| {
        sim.nodes[node]
            .core
            .as_ref()
            .map_or(Lsn::ZERO, Core::commit_lsn)
    };
    if commit(cut_off).plus(50) < commit(primary) {
        return Err(format!(
            "seed {seed}: node {cut_off} did not catch up: {}",
            sim.describe_nodes()
        ));
    }
    Ok(())
}

/// Runs one seed.
pub fn run_seed(seed: u64, options: RunOptions) -> Result<RunReport, String> {
    Sim::new(seed, options).run()
}

/// Debug output without the newtype noise: `Lsn(12)` -> `12`, `NodeId(2)` -> `#2`.
fn compact(debug: &str) -> String {
    debug
        .replace("NodeId(", "#(")
        .replace("Lsn(", "(")
        .replace("Epoch(", "e(")
        .replace("AppendResponse(AppendResponse", "AppendResponse(")
        .replace("Append(Append", "Append(")
}

pub fn ms(ns: u64) -> f64 {
    Duration::from_nanos(ns).as_secs_f64() * 1_000.0
}
