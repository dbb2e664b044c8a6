//! Planned switchover: the primary stops taking appends, waits until the target holds every
//! record durably and everything is committed, then sends `TimeoutNow` and steps down. The
//! target stands at once, skipping the pre-vote, and voters grant it even though they heard
//! from the primary recently, which is sound because that primary stopped serving before it
//! asked (see `lease.rs`).
//!
//! If the target does not catch up within `failover_timeout`, the switchover is abandoned and
//! the primary serves again (it never stopped holding its lease). Once `TimeoutNow` has left,
//! there is no way back: the old primary is a backup in its epoch. If the target never stands
//! (the message was lost, it crashed), the cluster fails over the ordinary way after
//! `failover_timeout`, and any node with an up-to-date log, the old primary included, may win.

use wal::NodeId;

use super::state::HandedOver;
use super::{Action, Core, Message, Role, SwitchoverOutcome, SwitchoverReason, SwitchoverRefusal};

impl Core {
    pub(super) fn on_switchover(&mut self, to: Option<NodeId>, out: &mut Vec<Action>) {
        if self.st.role != Role::Primary {
            return Core::switchover_refused(to, SwitchoverRefusal::NotPrimary, out);
        }
        if self.st.switchover.is_some() {
            return Core::switchover_refused(to, SwitchoverRefusal::AlreadyInProgress, out);
        }
        let to = match to {
            Some(to) => to,
            None => match self.switchover_target(false) {
                Some(to) => to,
                None => return Core::switchover_refused(None, SwitchoverRefusal::NoTarget, out),
            },
        };
        let refusal = if to == self.config.node_id {
            Some(SwitchoverRefusal::TargetIsSelf)
        } else if !self.members().contains(to) {
            Some(SwitchoverRefusal::UnknownTarget)
        } else if !self.members().is_voter(to)
            || self
                .peer_index(to)
                .is_some_and(|i| self.st.peers[i].learner != 0)
        {
            Some(SwitchoverRefusal::TargetIsLearner)
        } else if self.target_cannot_stand(to) {
            Some(SwitchoverRefusal::TargetCannotStand)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            return Core::switchover_refused(Some(to), refusal, out);
        }
        self.switchover_begin(to, SwitchoverReason::Asked, out);
    }

    /// Hands over if the target is ready; abandons the switchover past its deadline.
    pub(super) fn switchover_check(&mut self, out: &mut Vec<Action>) {
        let Some(switchover) = self.st.switchover else {
            return;
        };
        if self.st.role != Role::Primary {
            return;
        }
        let Some(i) = self.peer_index(switchover.to) else {
            return;
        };
        let last = self.st.log.last_lsn;
        let ready = self.st.peers[i].match_lsn == last
            && self.st.log.durable_lsn == last
            && self.st.commit_lsn == last;
        if ready {
            out.push(Action::Send {
                to: switchover.to,
                message: Message::TimeoutNow {
                    epoch: self.st.epoch,
                },
            });
            out.push(Action::Switchover {
                to: Some(switchover.to),
                outcome: SwitchoverOutcome::HandedOver,
            });
            let epoch = self.st.epoch;
            self.step_down(out);
            self.st.handed_over = Some(HandedOver {
                to: switchover.to,
                epoch,
                until: self.st.now + self.config.failover_timeout,
                next_send: self.st.now + self.config.heartbeat_interval,
            });
        } else if self.st.now >= switchover.deadline {
            self.st.switchover = None;
            out.push(Action::Switchover {
                to: Some(switchover.to),
                outcome: SwitchoverOutcome::TimedOut,
            });
        }
    }

    /// Resends `TimeoutNow` after a hand-over (see [`HandedOver`]) until the target stands
    /// (our epoch moves on) or the wait is over. Safe to repeat: the target acts on it only
    /// in the epoch it names, once.
    pub(super) fn switchover_resend(&mut self, out: &mut Vec<Action>) {
        let Some(handed) = self.st.handed_over else {
            return;
        };
        if self.st.epoch != handed.epoch || self.st.now >= handed.until {
            self.st.handed_over = None;
            return;
        }
        if self.st.now >= handed.next_send {
            out.push(Action::Send {
                to: handed.to,
                message: Message::TimeoutNow {
                    epoch: handed.epoch,
                },
            });
            self.st.handed_over = Some(HandedOver {
                next_send: self.st.now + self.config.heartbeat_interval,
                ..handed
            });
        }
    }
}
