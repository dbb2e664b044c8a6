//! The application is part of the node: a node whose application is gone does not stay
//! primary and does not stand for election while another node could serve; and the
//! operator's controls over who serves (`priority`, `no_failover`, the pause).
//!
//! 6. **A witness** (`Config::witness`) votes, keeps the log and counts towards commit and
//!    the lease like any voter, but runs no application and never serves: it reports that it
//!    cannot stand, so nobody defers or hands over to it. Two data nodes and a witness
//!    tolerate the loss of either data node: if the survivor's log is as up to date as the
//!    witness's, it wins as usual; if not (the witness acknowledged records the survivor
//!    lacks), the witness refuses it, and stands itself, but only after an extra failover
//!    timeout (so a data node always stands first). Elected, it takes no writes (a client
//!    hears "busy", as during a switchover) and at once hands over (`switchover.rs`) to the
//!    best data node once that node holds every record; until one does it keeps trying.
//!
//! None of this touches safety. Every rule here only decides *whether* a node stands or a
//! primary hands over; standing, voting and handing over go through the paths argued in
//! `election.rs`, `lease.rs` and `switchover.rs`, unchanged. A wrong view of some node's
//! health (late, lost, a lie) costs at most a slower or a needless failover.
//!
//! # What a node knows
//!
//! - **Its own application** (`Input::AppHealth`): the shell says whether an application
//!   is expected here and whether it is attached and answering. The core notes since when an
//!   expected one is not. A node where none is expected is never live and never hands over
//!   for its application's sake.
//! - **Its peers'**: every append response and pre-vote response carries the sender's
//!   [`Health`]: whether its app is live, whether it may stand (a voter, not `no_failover`, no
//!   damaged record), and its priority.
//!
//! # The rules
//!
//! 1. **A primary without a live app hands over.** Once its app has been gone for
//!    `app_timeout`, a primary that is not paused starts a switchover (`switchover.rs`) to the
//!    backup it would pick for `understudy switchover` without a target, among those whose
//!    app is live: heard from within the failover timeout, a voter that may stand, the most
//!    up to date, then the highest priority. With no such backup it stays primary: a cluster
//!    where no node has a live app keeps its primary rather than flapping. A switchover that
//!    times out is tried again on the next tick while the app is still gone.
//! 2. **A candidate without a live app lets a live one stand.** A backup stands as before
//!    (its failover timeout, a pre-vote), but when its pre-vote succeeds and some granter may
//!    stand and has a live app where its own is not, it does not stand: it waits another
//!    timeout, and that granter, which has not heard from a primary either (or it would not
//!    have granted), stands meanwhile. It defers at most once per epoch: if the better node
//!    cannot win (its log is behind, so this node and others refuse it), this node stands at
//!    its next timeout, and once primary, rule 1 hands over to the live node when it has
//!    caught up. So a failover is never prevented, only delayed by at most one timeout.
//! 3. **Priority breaks ties.** Likewise, a candidate defers once to a granter with the same
//!    log (same last epoch and LSN), the same app liveness, and a higher priority.
//! 4. **`no_failover`**: the node never stands and takes no hand-over; it votes and
//!    replicates, and reports that it cannot stand, so nobody defers or hands over to it.
//! 5. **The pause** (`Input::SetPaused`, stored by the shell): a paused node does not stand
//!    on a timeout and grants no pre-vote, so no automatic failover happens while a majority
//!    is paused; a paused primary does not hand over when its app is gone. An operator's
//!    switchover still works (its `TimeoutNow` skips the pre-vote). The primary's pause
//!    travels in every append and its backups adopt it, so a node that was down when the
//!    operator paused learns it. Each pause or resume carries the stamp of the operator's
//!    command (its wall-clock milliseconds), and a backup adopts the primary's only when its
//!    stamp is newer than its own, so the newest command wins everywhere, whatever order the
//!    nodes were asked in, and an append sent before the primary was asked never undoes what
//!    the operator has just set on a backup. A backup can be resumed on its own when the
//!    primary is gone.

use wal::NodeId;

use super::state::Switchover;
use super::{Action, Core, Health, Role, SwitchoverOutcome, SwitchoverReason};

impl Core {
    /// This node's health, as its responses report it.
    pub(super) fn health(&self) -> Health {
        Health {
            app_live: self.st.app_live,
            can_stand: self.can_stand() && !self.config.witness,
            priority: self.config.priority,
            can_vote: self.may_vote(),
        }
    }

    /// May stand for election, or take a hand-over, at all (the pause aside).
    pub(super) fn can_stand(&self) -> bool {
        self.may_stand() && !self.st.damaged && !self.config.no_failover
    }

    pub(super) fn on_app_health(&mut self, expected: bool, live: bool) {
        self.st.app_live = live;
        self.st.app_gone_since = if live || !expected {
            None
        } else {
            Some(self.st.app_gone_since.unwrap_or(self.st.now))
        };
    }

    pub(super) fn on_set_paused(&mut self, paused: bool, stamp: u64, out: &mut Vec<Action>) {
        // The operator's command applies here whatever its stamp; a stamp at or below this
        // node's (a command from a machine whose clock is behind) is raised above it, so
        // that a pause adopted from the primary never overrides it.
        let stamp = stamp.max(self.st.pause_stamp.saturating_add(1));
        self.st.paused = paused;
        self.st.pause_stamp = stamp;
        out.push(Action::PauseChanged {
            paused,
            stamp,
            from_primary: false,
        });
    }

    /// A backup takes its primary's pause (`Append::paused`) when its stamp is newer than
    /// this node's: the newest operator command wins, and an append the primary sent before
    /// the operator reached it never undoes what the operator has just set here.
    pub(super) fn adopt_pause(&mut self, paused: bool, stamp: u64, out: &mut Vec<Action>) {
        if stamp <= self.st.pause_stamp {
            return;
        }
        self.st.paused = paused;
        self.st.pause_stamp = stamp;
        out.push(Action::PauseChanged {
            paused,
            stamp,
            from_primary: true,
        });
    }

    /// Rule 1: on a primary's tick.
    /// A witness that was elected hands over as soon as there is a data node to hand to
    /// (rule 6).
    pub(super) fn witness_check(&mut self, out: &mut Vec<Action>) {
        if !self.config.witness || self.st.role != Role::Primary || self.st.switchover.is_some() {
            return;
        }
        if let Some(to) = self.switchover_target(false) {
            self.switchover_begin(to, SwitchoverReason::Witness, out);
        }
    }

    pub(super) fn app_gone_check(&mut self, out: &mut Vec<Action>) {
        if self.st.role != Role::Primary || self.st.paused || self.st.switchover.is_some() {
            return;
        }
        let Some(since) = self.st.app_gone_since else {
            return;
        };
        if self.st.app_live || self.st.now < since + self.config.app_timeout {
            return;
        }
        if let Some(to) = self.switchover_target(true) {
            self.switchover_begin(to, SwitchoverReason::AppGone, out);
        }
    }

    /// The backup a switchover without a named target goes to: among the voters that may
    /// stand and were heard from within the failover timeout, one whose app is live (only
    /// those if `live_only`), then the most up to date, then the highest priority, then the
    /// lowest id.
    pub(super) fn switchover_target(&self, live_only: bool) -> Option<NodeId> {
        let now = self.st.now;
        self.st
            .peers
            .iter()
            .filter(|p| {
                p.learner == 0
                    && self.members().is_voter(p.id)
                    && p.health.can_stand
                    && (p.health.app_live || !live_only)
                    && p.last_ack
                        .is_some_and(|at| now < at + self.config.failover_timeout)
            })
            .max_by_key(|p| {
                (
                    p.health.app_live,
                    p.match_lsn,
                    p.health.priority,
                    std::cmp::Reverse(p.id),
                )
            })
            .map(|p| p.id)
    }

    /// Starts a switchover to `to` (checked by the caller).
    pub(super) fn switchover_begin(
        &mut self,
        to: NodeId,
        reason: SwitchoverReason,
        out: &mut Vec<Action>,
    ) {
        let deadline = self.st.now + self.config.failover_timeout;
        self.st.switchover = Some(Switchover { to, deadline });
        out.push(Action::SwitchoverStarted { to, reason });
        self.switchover_check(out);
        if let Some(i) = self.peer_index(to) {
            if self.st.role == Role::Primary {
                self.replicate_to(i, false, out);
            }
        }
    }

    /// Rules 2 and 3: whether a granter reporting `health` is a better primary than this
    /// node, so that this node lets it stand instead.
    pub(super) fn better_fit(&self, health: Health, same_log: bool) -> bool {
        if !health.can_stand {
            return false;
        }
        let own = self.st.app_live;
        (health.app_live && !own)
            || (same_log && health.app_live == own && health.priority > self.config.priority)
    }

    /// Rules 2-3: a pre-vote that succeeded with a better granter known ends in a deferral,
    /// once per epoch. Returns whether it deferred.
    pub(super) fn election_defer(&mut self, to: Option<NodeId>, out: &mut Vec<Action>) -> bool {
        let Some(to) = to else {
            return false;
        };
        if self.st.deferred_in == Some(self.st.epoch) {
            return false;
        }
        self.st.deferred_in = Some(self.st.epoch);
        self.st.election = None;
        let now = self.st.now;
        self.reset_election_deadline(now);
        out.push(Action::ElectionDeferred { to });
        true
    }

    /// Refusal of a named switchover target that said, in its latest response, that it may
    /// not stand (one not heard from yet is tried: the switchover times out if it never
    /// answers).
    pub(super) fn target_cannot_stand(&self, to: NodeId) -> bool {
        self.peer_index(to).is_some_and(|i| {
            let peer = &self.st.peers[i];
            peer.last_ack.is_some() && !peer.health.can_stand
        })
    }

    /// A refused switchover, reported.
    pub(super) fn switchover_refused(
        to: Option<NodeId>,
        refusal: super::SwitchoverRefusal,
        out: &mut Vec<Action>,
    ) {
        out.push(Action::Switchover {
            to,
            outcome: SwitchoverOutcome::Refused(refusal),
        });
    }
}
