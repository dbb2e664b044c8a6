//! Unit tests of the core: build a state, feed one input, assert the exact actions. States are
//! built by driving the core through its public inputs, so each test also exercises the path
//! that leads to its starting point. Election jitter is zero here, so deadlines are exact.

use std::time::Duration;

use wal::{Epoch, Lsn, NodeId};

use super::*;

const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);
/// What a voter with no application reports: it may stand.
const STANDS: Health = Health {
    can_vote: true,
    app_live: false,
    can_stand: true,
    priority: 0,
};

fn ms(ms: u64) -> Time {
    Time::from_millis(ms)
}

fn config(node: NodeId, members: &[u16]) -> Config {
    let mut config = Config::new(node, members.iter().copied().map(NodeId).collect());
    config.election_jitter = Duration::ZERO;
    config
}

fn new_core(config: Config, log: RecoveredLog, meta: PersistedMeta) -> Core {
    Core::new(config, meta, log, Start::VOTER, Time::ZERO, 7).expect("valid test setup")
}

/// A log of `(epoch, last lsn of that epoch)` runs, starting at LSN 1.
fn log_of(runs: &[(u64, u64)]) -> RecoveredLog {
    let mut starts = Vec::new();
    let mut next = 1;
    for &(epoch, last) in runs {
        starts.push((Epoch(epoch), Lsn(next)));
        next = last + 1;
    }
    RecoveredLog {
        configs: Vec::new(),
        snapshot_lsn: Lsn::ZERO,
        snapshot_epoch: Epoch::ZERO,
        last_lsn: Lsn(next - 1),
        epoch_starts: starts,
    }
}

/// Every node of {1, 2, 3} a voter: the seed of the three-node tests.
fn seed3() -> Members {
    Members::voters_of(&[N1, N2, N3]).expect("ids in 1..=64")
}

/// `log` whose records at the given LSNs are config records (after the seed at LSN 0).
fn with_configs(mut log: RecoveredLog, configs: &[(u64, Members)]) -> RecoveredLog {
    log.configs = configs
        .iter()
        .map(|&(lsn, members)| (Lsn(lsn), members))
        .collect();
    log
}

fn step(core: &mut Core, input: Input) -> Vec<Action> {
    let mut out = Vec::new();
    core.step(input, &mut out);
    core.validate();
    out
}

fn receive(core: &mut Core, now: u64, from: NodeId, message: Message) -> Vec<Action> {
    step(
        core,
        Input::Receive {
            now: ms(now),
            from,
            message,
        },
    )
}

/// `message`, an append, with its last record a config record of `members`.
fn with_config(message: Message, members: Members) -> Message {
    match message {
        Message::Append(append) => Message::Append(Append {
            config: Some(members),
            ..append
        }),
        other => panic!("not an append: {other:?}"),
    }
}

fn append(
    epoch: u64,
    prev: (u64, u64),
    last: u64,
    records_epoch: u64,
    commit: u64,
    sent_ms: u64,
) -> Message {
    Message::Append(Append {
        epoch: Epoch(epoch),
        prev_lsn: Lsn(prev.0),
        prev_epoch: Epoch(prev.1),
        first_lsn: Lsn(prev.0 + 1),
        last_lsn: Lsn(last),
        records_epoch: Epoch(records_epoch),
        commit_lsn: Lsn(commit),
        sent_at: Duration::from_millis(sent_ms),
        promote: 0,
        promote_through: Lsn::ZERO,
        paused: false,
        pause_stamp: 0,
        config: None,
        successor: None,
    })
}

/// Node 1 of {1, 2, 3} with `log` elected primary of epoch `epoch + 1` at 600 ms, with node 2's
/// vote. Returns the actions of the final step (the promotion).
fn elect(core: &mut Core) -> Vec<Action> {
    elect_with(core, &[N2])
}

/// The node elected primary of the epoch after its own at 600 ms (its vote requests leave then),
/// with the pre-votes and votes of `voters`, enough for a majority. Returns the actions of the
/// steps that counted the votes.
fn elect_with(core: &mut Core, voters: &[NodeId]) -> Vec<Action> {
    let epoch = core.epoch();
    step(core, Input::Tick { now: ms(600) });
    let next = epoch.next();
    for &from in voters {
        receive(
            core,
            600,
            from,
            Message::PreVoteResponse {
                epoch: next,
                granted: true,
                voter_epoch: epoch,
                health: STANDS,
                same_log: false,
            },
        );
    }
    step(
        core,
        Input::MetaPersisted {
            epoch: next,
            voted_for: Some(core.config().node_id),
            learner: false,
        },
    );
    let mut out = Vec::new();
    for &from in voters {
        out.extend(receive(
            core,
            601,
            from,
            Message::VoteResponse {
                epoch: next,
                granted: true,
                vote_wait: Duration::from_millis(500),
            },
        ));
    }
    assert_eq!(core.role(), Role::Primary);
    out
}

/// Node 1 of {1, 2, 3}, its log at epoch 1 through LSN 2, elected primary of epoch 2 at
/// 600 ms with node 2's vote, its epoch-start record (LSN 3) and the seed's config record
/// (LSN 4) durable.
fn elected_primary() -> Core {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 2)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    elect(&mut core);
    step(
        &mut core,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(4),
            epoch: Epoch(2),
        },
    );
    core
}

/// A backup that has not heard from a primary for the failover timeout asks for pre-votes;
/// nothing is persisted and the epoch does not move.
#[test]
fn backup_asks_for_pre_votes_after_failover_timeout() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    assert!(step(&mut core, Input::Tick { now: ms(499) }).is_empty());
    let out = step(&mut core, Input::Tick { now: ms(500) });
    let ask = Message::PreVoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(4),
        last_epoch: Epoch(1),
    };
    assert_eq!(
        out,
        vec![
            Action::Send {
                to: N2,
                message: ask
            },
            Action::Send {
                to: N3,
                message: ask
            }
        ]
    );
    assert_eq!(core.epoch(), Epoch(1));
}

/// With a majority of pre-votes the candidate raises its epoch and persists its own vote; the
/// vote requests leave only once that persist completes.
#[test]
fn vote_requests_wait_for_the_candidates_own_vote_to_persist() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    step(&mut core, Input::Tick { now: ms(500) });
    let out = receive(
        &mut core,
        501,
        N3,
        Message::PreVoteResponse {
            epoch: Epoch(2),
            granted: true,
            voter_epoch: Epoch(1),
            health: STANDS,
            same_log: false,
        },
    );
    assert_eq!(
        out,
        vec![
            Action::PersistMeta {
                epoch: Epoch(2),
                voted_for: Some(N1),
                learner: false,
            },
            Action::RoleChanged {
                role: Role::Candidate,
                epoch: Epoch(2),
                primary: None
            },
        ]
    );
    let out = step(
        &mut core,
        Input::MetaPersisted {
            epoch: Epoch(2),
            voted_for: Some(N1),
            learner: false,
        },
    );
    let ask = Message::VoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(4),
        last_epoch: Epoch(1),
        transfer: false,
    };
    assert_eq!(
        out,
        vec![
            Action::Send {
                to: N2,
                message: ask
            },
            Action::Send {
                to: N3,
                message: ask
            }
        ]
    );
}

/// A voter persists its vote (and the new epoch) before the reply leaves.
#[test]
fn vote_is_persisted_before_reply() {
    let mut core = new_core(
        config(N2, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    let ask = Message::VoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(4),
        last_epoch: Epoch(1),
        transfer: false,
    };
    let out = receive(&mut core, 600, N1, ask);
    assert_eq!(
        out,
        vec![
            Action::PersistMeta {
                epoch: Epoch(2),
                voted_for: None,
                learner: false,
            },
            Action::PersistMeta {
                epoch: Epoch(2),
                voted_for: Some(N1),
                learner: false,
            },
            Action::RoleChanged {
                role: Role::Backup,
                epoch: Epoch(2),
                primary: None
            },
        ]
    );
    assert!(step(
        &mut core,
        Input::MetaPersisted {
            epoch: Epoch(2),
            voted_for: None,
            learner: false,
        }
    )
    .is_empty());
    let out = step(
        &mut core,
        Input::MetaPersisted {
            epoch: Epoch(2),
            voted_for: Some(N1),
            learner: false,
        },
    );
    let reply = Message::VoteResponse {
        epoch: Epoch(2),
        granted: true,
        vote_wait: Duration::from_millis(500),
    };
    assert_eq!(
        out,
        vec![Action::Send {
            to: N1,
            message: reply
        }]
    );
    // One vote per epoch: node 3 asks in the same epoch and is refused at once.
    let other = Message::VoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(9),
        last_epoch: Epoch(1),
        transfer: false,
    };
    let out = receive(&mut core, 1200, N3, other);
    let no = Message::VoteResponse {
        epoch: Epoch(2),
        granted: false,
        vote_wait: Duration::from_millis(500),
    };
    assert_eq!(
        out,
        vec![Action::Send {
            to: N3,
            message: no
        }]
    );
}

/// A voter refuses a candidate whose log is behind its own (Raft's up-to-date rule): lower last
/// epoch, or same last epoch and shorter.
#[test]
fn vote_is_refused_to_a_candidate_with_a_stale_log() {
    for (last_lsn, last_epoch) in [(9, 1), (3, 2)] {
        let mut core = new_core(
            config(N2, &[1, 2, 3]),
            log_of(&[(1, 2), (2, 4)]),
            PersistedMeta {
                epoch: Epoch(2),
                voted_for: None,
                learner: false,
            },
        );
        let ask = Message::VoteRequest {
            epoch: Epoch(3),
            last_lsn: Lsn(last_lsn),
            last_epoch: Epoch(last_epoch),
            transfer: false,
        };
        let out = receive(&mut core, 600, N1, ask);
        assert_eq!(
            out,
            vec![
                Action::PersistMeta {
                    epoch: Epoch(3),
                    voted_for: None,
                    learner: false,
                },
                Action::Send {
                    to: N1,
                    message: Message::VoteResponse {
                        epoch: Epoch(3),
                        granted: false,
                        vote_wait: Duration::from_millis(500),
                    }
                },
                Action::RoleChanged {
                    role: Role::Backup,
                    epoch: Epoch(3),
                    primary: None
                },
            ],
            "candidate log ({last_lsn}, epoch {last_epoch})"
        );
    }
}

/// A node that heard from a live primary within the failover timeout refuses votes and
/// pre-votes without adopting the epoch, so a rejoining node cannot depose the primary; a
/// switchover's hand-over request is the one exception.
#[test]
fn vote_is_refused_while_the_primary_was_heard_recently() {
    let mut core = new_core(
        config(N2, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    receive(&mut core, 1000, N1, append(1, (4, 1), 4, 1, 4, 900));
    let pre = Message::PreVoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(9),
        last_epoch: Epoch(1),
    };
    let out = receive(&mut core, 1499, N3, pre);
    let no = Message::PreVoteResponse {
        epoch: Epoch(2),
        granted: false,
        voter_epoch: Epoch(1),
        health: STANDS,
        same_log: false,
    };
    assert_eq!(
        out,
        vec![Action::Send {
            to: N3,
            message: no
        }]
    );
    let ask = Message::VoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(9),
        last_epoch: Epoch(1),
        transfer: false,
    };
    let out = receive(&mut core, 1499, N3, ask);
    assert_eq!(
        out,
        vec![Action::Send {
            to: N3,
            message: Message::VoteResponse {
                epoch: Epoch(1),
                granted: false,
                vote_wait: Duration::from_millis(500),
            }
        }]
    );
    assert_eq!(core.epoch(), Epoch(1));
    let transfer = Message::VoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(9),
        last_epoch: Epoch(1),
        transfer: true,
    };
    let out = receive(&mut core, 1499, N3, transfer);
    assert_eq!(
        out,
        vec![
            Action::PersistMeta {
                epoch: Epoch(2),
                voted_for: None,
                learner: false,
            },
            Action::PersistMeta {
                epoch: Epoch(2),
                voted_for: Some(N3),
                learner: false,
            },
            Action::RoleChanged {
                role: Role::Backup,
                epoch: Epoch(2),
                primary: None
            },
        ]
    );
}

/// A restarted node refuses votes for a failover timeout after it starts: it may have
/// acknowledged a heartbeat just before it stopped.
#[test]
fn restarted_node_refuses_votes_for_a_failover_timeout() {
    let mut core = new_core(
        config(N2, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    let ask = Message::VoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(9),
        last_epoch: Epoch(1),
        transfer: false,
    };
    let out = receive(&mut core, 499, N3, ask);
    assert_eq!(
        out,
        vec![Action::Send {
            to: N3,
            message: Message::VoteResponse {
                epoch: Epoch(1),
                granted: false,
                vote_wait: Duration::from_millis(500),
            }
        }]
    );
}

/// A node with a fresh data dir neither pre-votes, votes nor stands until its quarantine
/// (`2 * (failover_timeout + jitter) + drift margin`, 1050 ms here) has passed, though a node
/// that recovered the same (empty) state would; afterwards it does all three.
#[test]
fn fresh_node_neither_votes_nor_stands_until_its_quarantine_ends() {
    let config = config(N2, &[1, 2, 3]);
    assert_eq!(config.fresh_quarantine(), Duration::from_millis(1050));
    let pre = Message::PreVoteRequest {
        epoch: Epoch(1),
        last_lsn: Lsn(0),
        last_epoch: Epoch(0),
    };
    let ask = Message::VoteRequest {
        epoch: Epoch(1),
        last_lsn: Lsn(0),
        last_epoch: Epoch(0),
        transfer: false,
    };
    let pre_granted = |out: &[Action]| {
        out.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    message: Message::PreVoteResponse { granted: true, .. },
                    ..
                }
            )
        })
    };
    let voted = |out: &[Action]| {
        out.contains(&Action::PersistMeta {
            epoch: Epoch(1),
            voted_for: Some(N3),
            learner: false,
        })
    };
    let stood = |out: &[Action]| {
        out.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    message: Message::PreVoteRequest { .. },
                    ..
                }
            )
        })
    };

    // The same state read from a kept data dir votes once the restart refusal is over.
    let mut kept = new_core(
        config.clone(),
        RecoveredLog::default(),
        PersistedMeta::default(),
    );
    assert!(pre_granted(&receive(&mut kept, 600, N3, pre)));
    assert!(voted(&receive(&mut kept, 600, N3, ask)));

    let mut fresh = Core::new(
        config,
        PersistedMeta::default(),
        RecoveredLog::default(),
        Start {
            learner: false,
            quarantine: true,
        },
        Time::ZERO,
        7,
    )
    .expect("valid test setup");
    assert!(!pre_granted(&receive(&mut fresh, 600, N3, pre)));
    let out = receive(&mut fresh, 600, N3, ask);
    assert!(!voted(&out), "{out:?}");
    assert_eq!(fresh.epoch(), Epoch(0));
    let out = step(&mut fresh, Input::Tick { now: ms(1049) });
    assert!(
        !stood(&out) && !out.contains(&Action::QuarantineEnded),
        "{out:?}"
    );
    assert!(!pre_granted(&receive(&mut fresh, 1049, N3, pre)));

    let out = step(&mut fresh, Input::Tick { now: ms(1050) });
    assert!(out.contains(&Action::QuarantineEnded), "{out:?}");
    assert!(stood(&out), "stands once the quarantine is over: {out:?}");
    assert!(pre_granted(&receive(&mut fresh, 1051, N3, pre)));
    assert!(voted(&receive(&mut fresh, 1051, N3, ask)));
}

/// On winning, the primary writes its epoch-start record, then (its log holding only the
/// seed) the seed's config record, and probes every backup once with both.
#[test]
fn elected_candidate_writes_epoch_start_and_probes_backups() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    let out = elect(&mut core);
    let probe = with_config(append(2, (4, 1), 6, 2, 0, 601), seed3());
    assert_eq!(
        out,
        vec![
            Action::WriteEpochStart {
                lsn: Lsn(5),
                epoch: Epoch(2)
            },
            Action::WriteConfig {
                lsn: Lsn(6),
                epoch: Epoch(2),
                members: seed3()
            },
            Action::MembersChanged {
                lsn: Lsn(6),
                members: seed3()
            },
            Action::Send {
                to: N2,
                message: probe
            },
            Action::Send {
                to: N3,
                message: probe
            },
            Action::RoleChanged {
                role: Role::Primary,
                epoch: Epoch(2),
                primary: Some(N1)
            },
        ]
    );
}

/// A backup whose record at `prev_lsn` has another epoch rejects with a hint just below its
/// whole run of that epoch, so the primary skips the epoch in one round trip.
#[test]
fn append_mismatch_answers_with_hint_below_the_conflicting_epoch() {
    let mut core = new_core(
        config(N2, &[1, 2, 3]),
        log_of(&[(1, 3), (2, 9)]),
        PersistedMeta {
            epoch: Epoch(2),
            voted_for: None,
            learner: false,
        },
    );
    let out = receive(&mut core, 1000, N1, append(3, (8, 3), 10, 3, 0, 900));
    let reply = AppendResponse {
        epoch: Epoch(3),
        accepted: false,
        matched_lsn: Lsn(3),
        matched_epoch: Epoch(1),
        durable_lsn: Lsn::ZERO,
        sent_at: Duration::from_millis(900),
        learner: 0,
        health: STANDS,
        vote_wait: Duration::from_millis(500),
    };
    assert_eq!(
        out,
        vec![
            Action::PersistMeta {
                epoch: Epoch(3),
                voted_for: None,
                learner: false,
            },
            Action::Send {
                to: N1,
                message: Message::AppendResponse(reply)
            },
            Action::RoleChanged {
                role: Role::Backup,
                epoch: Epoch(3),
                primary: Some(N1)
            },
        ]
    );
}

/// A matching append whose records conflict with an uncommitted suffix truncates exactly that
/// suffix and writes the new records; what already matches is left alone.
#[test]
fn append_truncates_only_the_conflicting_suffix() {
    let mut core = new_core(
        config(N2, &[1, 2, 3]),
        log_of(&[(1, 3), (2, 9)]),
        PersistedMeta {
            epoch: Epoch(2),
            voted_for: None,
            learner: false,
        },
    );
    let out = receive(&mut core, 1000, N1, append(3, (3, 1), 6, 3, 3, 900));
    let reply = AppendResponse {
        epoch: Epoch(3),
        accepted: true,
        matched_lsn: Lsn(6),
        matched_epoch: Epoch(3),
        durable_lsn: Lsn(3),
        sent_at: Duration::from_millis(900),
        learner: 0,
        health: STANDS,
        vote_wait: Duration::from_millis(500),
    };
    assert_eq!(
        out,
        vec![
            Action::PersistMeta {
                epoch: Epoch(3),
                voted_for: None,
                learner: false,
            },
            Action::TruncateSuffix {
                keep_through: Lsn(3)
            },
            Action::WriteReceived {
                first_lsn: Lsn(4),
                last_lsn: Lsn(6)
            },
            Action::Committed { lsn: Lsn(3) },
            Action::Send {
                to: N1,
                message: Message::AppendResponse(reply)
            },
            Action::RoleChanged {
                role: Role::Backup,
                epoch: Epoch(3),
                primary: Some(N1)
            },
        ]
    );
    // The same append again (a duplicate) writes and truncates nothing.
    let out = receive(&mut core, 1001, N1, append(3, (3, 1), 6, 3, 3, 900));
    assert_eq!(
        out,
        vec![Action::Send {
            to: N1,
            message: Message::AppendResponse(reply)
        }]
    );
    // A late, shorter append from the same primary does not cut what followed it.
    let out = receive(&mut core, 1002, N1, append(3, (3, 1), 4, 3, 3, 890));
    assert!(
        !out.iter()
            .any(|a| matches!(a, Action::TruncateSuffix { .. })),
        "{out:?}"
    );
    assert_eq!(core.last_lsn(), Lsn(6));
}

/// A backup asked to truncate a committed record is facing a broken protocol: it stops.
#[test]
#[should_panic(expected = "would drop committed records")]
fn append_never_truncates_committed_records() {
    let mut core = new_core(
        config(N2, &[1, 2, 3]),
        log_of(&[(1, 3), (2, 9)]),
        PersistedMeta {
            epoch: Epoch(2),
            voted_for: None,
            learner: false,
        },
    );
    receive(&mut core, 1000, N1, append(2, (9, 2), 9, 2, 8, 900));
    assert_eq!(core.commit_lsn(), Lsn(8));
    // A (buggy) primary of epoch 3 claims a different record at 6.
    receive(&mut core, 1001, N3, append(3, (5, 2), 6, 3, 0, 950));
}

/// Commit needs the record durable on the primary and on `sync_replicas` backups, and a record
/// of the current epoch among them: old-epoch records commit only with the epoch-start record.
#[test]
fn commit_needs_sync_replicas_and_a_current_epoch_record() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    elect(&mut core);
    let ack = |matched: u64, durable: u64| {
        Message::AppendResponse(AppendResponse {
            epoch: Epoch(2),
            accepted: true,
            matched_lsn: Lsn(matched),
            matched_epoch: Epoch(if matched >= 5 { 2 } else { 1 }),
            durable_lsn: Lsn(durable),
            sent_at: Duration::from_millis(601),
            learner: 0,
            health: STANDS,
            vote_wait: Duration::from_millis(500),
        })
    };
    // Node 2 holds the old records durably: not enough, none is of epoch 2.
    let out = receive(&mut core, 602, N2, ack(4, 4));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Committed { .. })),
        "{out:?}"
    );
    // The epoch-start record is durable on node 2 but not yet on the primary.
    let out = receive(&mut core, 603, N2, ack(5, 5));
    assert!(
        !out.iter().any(|a| matches!(a, Action::Committed { .. })),
        "{out:?}"
    );
    // Durable on the primary too: everything through the epoch start is committed.
    let out = step(
        &mut core,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(5),
            epoch: Epoch(2),
        },
    );
    assert_eq!(out, vec![Action::Committed { lsn: Lsn(5) }]);
}

/// `sync_replicas` below the safe minimum is refused in plain words unless explicitly allowed.
#[test]
fn config_refuses_sync_replicas_that_lose_acknowledged_writes() {
    let mut config = config(N1, &[1, 2, 3, 4, 5]);
    assert_eq!(config.sync_replicas_effective(), 2);
    config.sync_replicas = Some(1);
    let err = config.validate().expect_err("1 of 5 is unsafe");
    let text = err.to_string();
    assert!(text.contains("would lose acknowledged writes"), "{text}");
    assert!(text.contains("allow_unsafe_sync_replicas"), "{text}");
    config.allow_unsafe_sync_replicas = true;
    assert_eq!(config.validate(), Ok(()));
    config.sync_replicas = Some(5);
    assert!(
        config.validate().is_err(),
        "more backups than the cluster has"
    );
}

/// The lease arithmetic: defaults tolerate about 5 % clock-rate error.
#[test]
fn lease_is_failover_timeout_less_the_drift_margin() {
    let config = config(N1, &[1, 2, 3]);
    assert_eq!(config.lease(), Duration::from_millis(450));
    assert_eq!(config.tolerated_drift_ppm(), 52_631);
}

/// When no majority acknowledged within the lease, the primary steps down at once, and every
/// append it accepted above the commit point is reported as of unknown outcome.
#[test]
fn lease_expiry_steps_down_and_abandons_pending_appends() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    elect(&mut core);
    // Votes were requested at 600 ms (when the persist completed): the lease runs to 1050 ms.
    // The epoch start is at 5, the seed's config record at 6.
    let out = step(
        &mut core,
        Input::Propose {
            now: ms(700),
            count: 2,
            bytes: 100,
            runs: Vec::new(),
        },
    );
    assert_eq!(
        out[0],
        Action::WriteProposed {
            first_lsn: Lsn(7),
            last_lsn: Lsn(8),
            epoch: Epoch(2)
        }
    );
    assert_eq!(core.status().lease_until, Some(ms(1050)));
    assert_eq!(core.serving_until(), Some(ms(1050)));
    let out = step(
        &mut core,
        Input::Propose {
            now: ms(1050),
            count: 1,
            bytes: 10,
            runs: Vec::new(),
        },
    );
    assert_eq!(
        out,
        vec![
            // Counted from the vote requests, sent at 600 ms.
            Action::LeaseLapsed {
                lease: Duration::from_millis(450),
                acked_sent_ago: Some(Duration::from_millis(450)),
            },
            Action::AppendsAbandoned { after: Lsn::ZERO },
            Action::ProposeRejected {
                reason: Rejection::NotPrimary { primary: None }
            },
            Action::RoleChanged {
                role: Role::Backup,
                epoch: Epoch(2),
                primary: None
            },
        ]
    );
    assert_eq!(core.serving_until(), None, "a backup serves no reads");
}

/// A lease read on a new primary is answered with its epoch start until that commits (its
/// commit LSN may lag what the previous primary acknowledged), then with the commit LSN;
/// a backup refuses with the primary it knows; a primary whose lease lapsed steps down
/// and refuses. Nothing is written for a read.
#[test]
fn lease_read_index_is_the_commit_lsn_but_never_below_the_epoch_start() {
    let read = |core: &mut Core, now: u64| step(core, Input::Read { now: ms(now) });
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    elect(&mut core);
    // The epoch start is at 5, the seed's config record at 6; nothing committed here yet.
    assert_eq!(core.commit_lsn(), Lsn::ZERO);
    assert_eq!(
        read(&mut core, 650),
        vec![Action::ReadIndex {
            lsn: Lsn(5),
            epoch: Epoch(2)
        }]
    );
    step(
        &mut core,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(6),
            epoch: Epoch(2),
        },
    );
    receive(&mut core, 660, N2, ack(2, 6, 655, 0));
    assert_eq!(core.commit_lsn(), Lsn(6));
    assert_eq!(
        read(&mut core, 670),
        vec![Action::ReadIndex {
            lsn: Lsn(6),
            epoch: Epoch(2)
        }]
    );
    assert_eq!(core.last_lsn(), Lsn(6), "a read writes nothing");
    // The lease, counted from node 2's acknowledgement of the append sent at 655 ms, runs to
    // 1105 ms: a read then finds it lapsed.
    let out = read(&mut core, 1105);
    assert_eq!(core.role(), Role::Backup);
    assert!(
        out.contains(&Action::ReadRefused {
            reason: Rejection::NotPrimary { primary: None }
        }),
        "{out:?}"
    );
    assert!(!out.iter().any(|a| matches!(a, Action::ReadIndex { .. })));

    let mut backup = new_core(config(N2, &[1, 2, 3]), log_of(&[(1, 2)]), meta_epoch_1());
    receive(&mut backup, 100, N1, append(1, (2, 1), 2, 1, 2, 90));
    assert_eq!(
        read(&mut backup, 110),
        vec![Action::ReadRefused {
            reason: Rejection::NotPrimary { primary: Some(N1) }
        }]
    );
}

/// Switchover: appends stop at once; when the target holds everything and all is committed,
/// the primary sends `TimeoutNow` and steps down; the target stands without a pre-vote.
#[test]
fn switchover_hands_over_once_the_target_is_caught_up() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    elect(&mut core);
    step(
        &mut core,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(6),
            epoch: Epoch(2),
        },
    );
    assert_eq!(
        step(&mut core, Input::Switchover { to: Some(N3) }),
        vec![Action::SwitchoverStarted {
            to: N3,
            reason: SwitchoverReason::Asked
        }]
    );
    let out = step(
        &mut core,
        Input::Propose {
            now: ms(610),
            count: 1,
            bytes: 1,
            runs: Vec::new(),
        },
    );
    assert_eq!(
        out,
        vec![Action::ProposeRejected {
            reason: Rejection::SwitchoverInProgress
        }]
    );
    let caught_up_through = |lsn: u64| {
        Message::AppendResponse(AppendResponse {
            epoch: Epoch(2),
            accepted: true,
            matched_lsn: Lsn(lsn),
            matched_epoch: Epoch(2),
            durable_lsn: Lsn(lsn),
            sent_at: Duration::from_millis(601),
            learner: 0,
            health: STANDS,
            vote_wait: Duration::from_millis(500),
        })
    };
    // Node 3 holds the epoch start but not yet the seed's config record (6): it is shipped,
    // and the primary waits.
    let out = receive(&mut core, 620, N3, caught_up_through(5));
    assert_eq!(
        out,
        vec![
            Action::Committed { lsn: Lsn(5) },
            Action::Send {
                to: N3,
                message: with_config(append(2, (5, 2), 6, 2, 5, 620), seed3())
            },
        ]
    );
    let out = receive(&mut core, 620, N3, caught_up_through(6));
    assert_eq!(
        out,
        vec![
            Action::Committed { lsn: Lsn(6) },
            Action::Send {
                to: N3,
                message: Message::TimeoutNow { epoch: Epoch(2) }
            },
            Action::Switchover {
                to: Some(N3),
                outcome: SwitchoverOutcome::HandedOver
            },
            Action::RoleChanged {
                role: Role::Backup,
                epoch: Epoch(2),
                primary: None
            },
        ]
    );

    // A lost TimeoutNow is not the end of it: it goes again every heartbeat (50 ms) until
    // the target is heard of in a later epoch or the failover timeout has passed.
    assert!(step(&mut core, Input::Tick { now: ms(660) }).is_empty());
    assert_eq!(
        step(&mut core, Input::Tick { now: ms(671) }),
        vec![Action::Send {
            to: N3,
            message: Message::TimeoutNow { epoch: Epoch(2) }
        }]
    );
    for now in [1121, 1180] {
        let out = step(&mut core, Input::Tick { now: ms(now) });
        assert!(
            !out.iter().any(|a| matches!(
                a,
                Action::Send {
                    message: Message::TimeoutNow { .. },
                    ..
                }
            )),
            "TimeoutNow resent after the wait at {now} ms: {out:?}"
        );
    }

    // The target, a backup of node 1 in epoch 2, stands at once.
    let mut target = new_core(
        config(N3, &[1, 2, 3]),
        with_configs(log_of(&[(1, 4), (2, 6)]), &[(6, seed3())]),
        PersistedMeta {
            epoch: Epoch(2),
            voted_for: None,
            learner: false,
        },
    );
    receive(&mut target, 600, N1, append(2, (6, 2), 6, 2, 6, 600));
    let out = receive(
        &mut target,
        621,
        N1,
        Message::TimeoutNow { epoch: Epoch(2) },
    );
    assert_eq!(
        out,
        vec![
            Action::PersistMeta {
                epoch: Epoch(3),
                voted_for: Some(N3),
                learner: false,
            },
            Action::RoleChanged {
                role: Role::Candidate,
                epoch: Epoch(3),
                primary: None
            },
        ]
    );
    let out = step(
        &mut target,
        Input::MetaPersisted {
            epoch: Epoch(3),
            voted_for: Some(N3),
            learner: false,
        },
    );
    let ask = Message::VoteRequest {
        epoch: Epoch(3),
        last_lsn: Lsn(6),
        last_epoch: Epoch(2),
        transfer: true,
    };
    assert_eq!(
        out,
        vec![
            Action::Send {
                to: N1,
                message: ask
            },
            Action::Send {
                to: N2,
                message: ask
            }
        ]
    );
}

/// A backup that needs records below the primary's snapshot gets `SendSnapshot`; once the
/// snapshot is in, shipping resumes right after it (here with the seed's config record, 6).
#[test]
fn snapshot_is_sent_when_a_backup_needs_truncated_records() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    elect(&mut core);
    step(
        &mut core,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(5),
            epoch: Epoch(2),
        },
    );
    let ack = |matched: u64, durable: u64| {
        Message::AppendResponse(AppendResponse {
            epoch: Epoch(2),
            accepted: true,
            matched_lsn: Lsn(matched),
            matched_epoch: Epoch(2),
            durable_lsn: Lsn(durable),
            sent_at: Duration::from_millis(601),
            learner: 0,
            health: STANDS,
            vote_wait: Duration::from_millis(500),
        })
    };
    receive(&mut core, 602, N2, ack(5, 5));
    assert_eq!(core.commit_lsn(), Lsn(5));
    step(&mut core, Input::PrefixTruncated { through: Lsn(5) });
    // Node 3 turns out to have nothing.
    let empty = Message::AppendResponse(AppendResponse {
        epoch: Epoch(2),
        accepted: false,
        matched_lsn: Lsn::ZERO,
        matched_epoch: Epoch::ZERO,
        durable_lsn: Lsn::ZERO,
        sent_at: Duration::from_millis(601),
        learner: 0,
        health: STANDS,
        vote_wait: Duration::from_millis(500),
    });
    let out = receive(&mut core, 603, N3, empty);
    assert!(out.is_empty(), "{out:?}");
    let out = step(&mut core, Input::Tick { now: ms(660) });
    assert!(out.contains(&Action::SendSnapshot { to: N3 }), "{out:?}");
    let out = step(
        &mut core,
        Input::SnapshotSent {
            to: N3,
            lsn: Lsn(5),
            epoch: Epoch(2),
        },
    );
    assert_eq!(
        out,
        vec![Action::Send {
            to: N3,
            message: match with_config(append(2, (5, 2), 6, 2, 5, 660), seed3()) {
                // Node 2, heard from and able to stand, is the successor named.
                Message::Append(append) => Message::Append(Append {
                    successor: Some(N2),
                    ..append
                }),
                other => other,
            }
        }]
    );
}

/// A node cut off from everyone asks for pre-votes again and again but never raises its epoch,
/// so when it returns it cannot depose the primary with a higher epoch.
#[test]
fn isolated_node_never_raises_its_epoch() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    for round in 1..=10 {
        let out = step(
            &mut core,
            Input::Tick {
                now: ms(500 * round),
            },
        );
        assert!(
            out.iter().all(|a| matches!(
                a,
                Action::Send {
                    message: Message::PreVoteRequest { .. },
                    ..
                }
            )),
            "{out:?}"
        );
    }
    assert_eq!(core.epoch(), Epoch(1));
}

/// Votes that arrive after the lease they would grant has run out elect nobody: in the
/// meantime the voters may have voted in a later epoch. A vote from a granter with a
/// shorter failover timeout grants a shorter lease (`Config::lease_for`), and runs out
/// sooner.
#[test]
fn votes_arriving_after_the_lease_elect_nobody() {
    // Node 1 asks for votes at 600 ms; node 2's vote, refusing others for `vote_wait`,
    // arrives at `at`.
    let vote_at = |at: u64, vote_wait: u64| {
        let mut core = new_core(
            config(N1, &[1, 2, 3]),
            log_of(&[(1, 4)]),
            PersistedMeta {
                epoch: Epoch(1),
                voted_for: None,
                learner: false,
            },
        );
        step(&mut core, Input::Tick { now: ms(600) });
        receive(
            &mut core,
            600,
            N2,
            Message::PreVoteResponse {
                epoch: Epoch(2),
                granted: true,
                voter_epoch: Epoch(1),
                health: STANDS,
                same_log: false,
            },
        );
        step(
            &mut core,
            Input::MetaPersisted {
                epoch: Epoch(2),
                voted_for: Some(N1),
                learner: false,
            },
        );
        let out = receive(
            &mut core,
            at,
            N2,
            Message::VoteResponse {
                epoch: Epoch(2),
                granted: true,
                vote_wait: Duration::from_millis(vote_wait),
            },
        );
        (core, out)
    };
    // The lease of a vote from a node with this node's timeout (500 ms) is 450 ms.
    let (core, out) = vote_at(1050, 500);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(core.role(), Role::Candidate);
    let (core, _) = vote_at(1049, 500);
    assert_eq!(core.role(), Role::Primary);
    // From a node with a 250 ms timeout, 250 x 450 / 500 = 225 ms.
    let (core, out) = vote_at(825, 250);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(core.role(), Role::Candidate);
    let (core, _) = vote_at(824, 250);
    assert_eq!(core.role(), Role::Primary);
    assert_eq!(core.status().lease_until, Some(ms(825)));
}

/// The first `AppendResponse` sent to `to` among `out`.
fn response_to(out: &[Action], to: NodeId) -> AppendResponse {
    out.iter()
        .find_map(|action| match action {
            Action::Send {
                to: dest,
                message: Message::AppendResponse(response),
            } if *dest == to => Some(*response),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no append response to {to} in {out:?}"))
}

fn ack(epoch: u64, lsn: u64, sent_ms: u64, learner: u64) -> Message {
    Message::AppendResponse(AppendResponse {
        epoch: Epoch(epoch),
        accepted: true,
        matched_lsn: Lsn(lsn),
        matched_epoch: Epoch(epoch),
        durable_lsn: Lsn(lsn),
        sent_at: Duration::from_millis(sent_ms),
        learner,
        // A node that reports a learner nonce here is one that cannot vouch for its log (a
        // wiped node awaiting promotion): it can neither vote nor stand.
        health: if learner == 0 {
            STANDS
        } else {
            Health {
                can_stand: false,
                can_vote: false,
                ..STANDS
            }
        },
        vote_wait: Duration::from_millis(500),
    })
}

/// A backup echoes the send time of the very append it answers, never one another primary's
/// clock stamped (finding: the largest send time ever seen was echoed to every later primary,
/// whose `min(now)` then counted the acknowledgement from its arrival).
#[test]
fn backup_echoes_the_send_time_of_the_append_it_answers() {
    let mut core = new_core(
        config(N2, &[1, 2, 3]),
        log_of(&[(1, 2)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    // Node 1, up for minutes, was primary of epoch 1.
    let out = receive(&mut core, 1000, N1, append(1, (2, 1), 2, 1, 2, 300_000));
    assert_eq!(
        response_to(&out, N1).sent_at,
        Duration::from_millis(300_000)
    );
    // Node 3, restarted a moment ago, is primary of epoch 2: its clock reads 40 ms.
    let out = receive(&mut core, 1700, N3, append(2, (2, 1), 3, 2, 2, 40));
    assert_eq!(response_to(&out, N3).sent_at, Duration::from_millis(40));
    // An append of epoch 1 arriving late is refused, and its send time renews nothing.
    let out = receive(&mut core, 1701, N1, append(1, (2, 1), 2, 1, 2, 300_100));
    let refusal = response_to(&out, N1);
    assert!(!refusal.accepted);
    assert_eq!(refusal.sent_at, Duration::ZERO);
}

/// A primary ignores an echoed send time later than its own clock (it cannot be one of its
/// own) instead of clamping it to `now`, and a learner's acknowledgement renews nothing.
#[test]
fn primary_lease_ignores_future_send_times_and_learners() {
    let mut core = elected_primary();
    let lease = core
        .status()
        .lease_until
        .expect("a 3-node primary has a lease");
    assert_eq!(
        lease,
        ms(600) + core.config().lease(),
        "counted from the vote"
    );
    receive(&mut core, 700, N2, ack(2, 3, 900_000, 0));
    assert_eq!(
        core.status().lease_until,
        Some(lease),
        "a send time from the future"
    );
    receive(&mut core, 710, N3, ack(2, 3, 690, 77));
    assert_eq!(core.status().lease_until, Some(lease), "a learner's echo");
    receive(&mut core, 720, N2, ack(2, 3, 690, 0));
    assert_eq!(
        core.status().lease_until,
        Some(ms(690) + core.config().lease()),
        "a voter's echo of our own send time"
    );
}

/// A learner is counted neither for commit nor for the lease; once its durable log reaches
/// the commit LSN the primary's appends to it carry its nonce in `promote`.
#[test]
fn primary_commits_without_learners_and_promotes_them_once_caught_up() {
    let mut core = elected_primary();
    // Node 3 holds the lease: node 2's vote for this primary came from a run of it that a
    // learner's nonce says is over, and no longer counts.
    receive(&mut core, 605, N3, ack(2, 0, 600, 0));
    receive(&mut core, 610, N2, ack(2, 4, 600, 0xabc));
    assert_eq!(
        core.commit_lsn(),
        Lsn(0),
        "the learner's copy does not commit"
    );
    let out = receive(&mut core, 620, N3, ack(2, 4, 600, 0));
    assert_eq!(core.commit_lsn(), Lsn(4), "the voter's copy does");
    assert!(out.contains(&Action::Committed { lsn: Lsn(4) }), "{out:?}");
    let out = step(&mut core, Input::Tick { now: ms(660) });
    let promote = out.iter().find_map(|action| match action {
        Action::Send {
            to,
            message: Message::Append(append),
        } if *to == N2 => Some((append.promote, append.promote_through)),
        _ => None,
    });
    assert_eq!(promote, Some((0xabc, Lsn(4))), "{out:?}");
    let out = step(&mut core, Input::Switchover { to: Some(N2) });
    assert!(
        out.contains(&Action::Switchover {
            to: Some(N2),
            outcome: SwitchoverOutcome::Refused(SwitchoverRefusal::TargetIsLearner)
        }),
        "{out:?}"
    );
}

/// A switchover without a named target (and so an automatic hand-over) goes to a voter of
/// the primary's configuration, never to a learner of it, even one that answers as a node
/// able to stand (a removed node re-added with its data dir, whose own configuration still
/// makes it a voter) and has the only live application.
#[test]
fn a_switchover_without_target_passes_over_a_learner_of_the_configuration() {
    let mut core = committed_primary(config(N1, &[1, 2, 3]));
    let out = propose_members(&mut core, 620, MembersChange::AddLearner(N4));
    assert_eq!(config_written(&out).map(|(lsn, _)| lsn), Some(Lsn(5)));
    durable(&mut core, 5);
    receive(&mut core, 625, N2, ack(2, 5, 620, 0));
    receive(&mut core, 626, N3, ack(2, 5, 620, 0));
    assert_eq!(core.commit_lsn(), Lsn(5));
    let Message::AppendResponse(mut answer) = ack(2, 5, 620, 0) else {
        unreachable!()
    };
    answer.health.app_live = true;
    receive(&mut core, 627, N4, Message::AppendResponse(answer));
    let out = step(&mut core, Input::Switchover { to: None });
    let told: Vec<NodeId> = out
        .iter()
        .filter_map(|action| match action {
            Action::Send {
                to,
                message: Message::TimeoutNow { .. },
            } => Some(*to),
            _ => None,
        })
        .collect();
    assert_eq!(told, vec![N2], "{out:?}");
}

/// A learner neither votes, pre-votes nor stands; promoted by the primary of its epoch once
/// its log durably holds the commit LSN, it persists that and votes from then on.
#[test]
fn learner_votes_only_after_promotion() {
    let mut core = Core::new(
        config(N2, &[1, 2, 3]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: true,
        },
        log_of(&[(1, 2)]),
        Start::LEARNER,
        Time::ZERO,
        7,
    )
    .expect("valid test setup");
    assert!(!core.is_voter());
    // Past its election deadline it does not stand.
    let out = step(&mut core, Input::Tick { now: ms(2_000) });
    assert!(
        !out.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::PreVoteRequest { .. },
                ..
            }
        )),
        "{out:?}"
    );
    let refused = receive(
        &mut core,
        2_001,
        N3,
        Message::VoteRequest {
            epoch: Epoch(2),
            last_lsn: Lsn(9),
            last_epoch: Epoch(1),
            transfer: false,
        },
    );
    assert!(
        refused.contains(&Action::Send {
            to: N3,
            message: Message::VoteResponse {
                epoch: Epoch(1),
                granted: false,
                vote_wait: Duration::from_millis(500),
            }
        }),
        "{refused:?}"
    );
    // Node 1, primary of epoch 2, ships the epoch start at 3 and commits it.
    let out = receive(&mut core, 2_100, N1, append(2, (2, 1), 3, 2, 0, 100));
    let nonce = response_to(&out, N1).learner;
    assert_ne!(nonce, 0, "a learner says so");
    step(
        &mut core,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(3),
            epoch: Epoch(2),
        },
    );
    // A promotion for another run of this node (another nonce) is ignored.
    let promote = |core: &mut Core, now: u64, nonce: u64| {
        receive(
            core,
            now,
            N1,
            Message::Append(Append {
                epoch: Epoch(2),
                prev_lsn: Lsn(3),
                prev_epoch: Epoch(2),
                first_lsn: Lsn(4),
                last_lsn: Lsn(3),
                records_epoch: Epoch(2),
                commit_lsn: Lsn(3),
                sent_at: Duration::from_millis(150),
                promote: nonce,
                promote_through: Lsn(3),
                paused: false,
                pause_stamp: 0,
                config: None,
                successor: None,
            }),
        )
    };
    promote(&mut core, 2_150, nonce ^ 2);
    assert!(!core.is_voter());
    let out = promote(&mut core, 2_160, nonce);
    assert!(
        out.contains(&Action::Promoted { through: Lsn(3) }),
        "{out:?}"
    );
    assert!(
        out.contains(&Action::PersistMeta {
            epoch: Epoch(2),
            voted_for: None,
            learner: false
        }),
        "{out:?}"
    );
    // Not a voter until the promotion is durable: a crash before it lands brings the node
    // back a learner, so until then it must not be counted as a voter.
    assert!(!core.is_voter());
    assert_eq!(response_to(&out, N1).learner, nonce, "not durably promoted");
    // The epoch adopted from the append, then the promotion, reported durable in order.
    for learner in [true, false] {
        step(
            &mut core,
            Input::MetaPersisted {
                epoch: Epoch(2),
                voted_for: None,
                learner,
            },
        );
    }
    assert!(core.is_voter());
    let out = promote(&mut core, 2_170, nonce);
    assert_eq!(response_to(&out, N1).learner, 0, "a voter now");
}

/// A founding member still in its quarantine, at epoch 0 with nothing in its log, that hears
/// of a cluster that has a log turns learner: its empty data dir may be a wiped one.
#[test]
fn founding_member_turns_learner_on_hearing_of_an_existing_cluster() {
    let founding = || {
        Core::new(
            config(N2, &[1, 2, 3]),
            PersistedMeta::default(),
            RecoveredLog::default(),
            Start {
                learner: false,
                quarantine: true,
            },
            Time::ZERO,
            7,
        )
        .expect("valid test setup")
    };
    // The first election of a new cluster is no such news.
    let mut core = founding();
    let out = receive(
        &mut core,
        10,
        N1,
        Message::VoteRequest {
            epoch: Epoch(1),
            last_lsn: Lsn(0),
            last_epoch: Epoch(0),
            transfer: false,
        },
    );
    assert!(
        !out.contains(&Action::BecameLearner {
            reason: LearnerReason::HeardOfCluster
        }),
        "{out:?}"
    );
    // A primary's append is.
    let mut core = founding();
    let out = receive(&mut core, 10, N1, append(4, (0, 0), 0, 4, 0, 5));
    assert!(
        out.contains(&Action::BecameLearner {
            reason: LearnerReason::HeardOfCluster
        }),
        "{out:?}"
    );
    assert!(core.status().learner);
}

/// A founding member whose quarantine passed with nothing heard (its network came up late)
/// still holds nothing: a vote request from a candidate with a log turns it learner rather
/// than count its empty log as up to date. It may be a wiped node started with
/// `--initial-cluster-state new` by mistake, and its vote would elect a candidate that lacks
/// records it acknowledged before the wipe.
#[test]
fn a_founding_member_that_heard_nothing_in_its_quarantine_votes_for_no_candidate_with_a_log() {
    let founding = || {
        let mut core = Core::new(
            config(N3, &[1, 2, 3]),
            PersistedMeta::default(),
            RecoveredLog::default(),
            Start {
                learner: false,
                quarantine: true,
            },
            Time::ZERO,
            7,
        )
        .expect("valid test setup");
        step(&mut core, Input::Tick { now: ms(5_000) });
        assert!(!core.status().quarantined);
        core
    };
    let mut core = founding();
    let out = receive(
        &mut core,
        5_001,
        N2,
        Message::VoteRequest {
            epoch: Epoch(3),
            last_lsn: Lsn(9),
            last_epoch: Epoch(2),
            transfer: false,
        },
    );
    assert!(
        vote_persisted(&out).is_none(),
        "an empty data dir that cannot vouch for its log granted a vote: {out:?}"
    );
    assert!(out.contains(&Action::BecameLearner {
        reason: LearnerReason::HeardOfCluster
    }));
    assert!(core.status().learner);

    // The same through an append from a primary it never voted for: caught up from it, it
    // would count with part of a log it may have held whole before.
    let mut core = founding();
    let out = receive(&mut core, 5_001, N1, append(2, (8, 2), 9, 2, 9, 5_000));
    assert!(
        out.contains(&Action::BecameLearner {
            reason: LearnerReason::HeardOfCluster
        }),
        "{out:?}"
    );

    // A new cluster's first election after the quarantine is no such news: it votes for a
    // candidate with an empty log, and takes the appends of the primary it voted for.
    let mut core = founding();
    let out = receive(
        &mut core,
        5_001,
        N1,
        Message::VoteRequest {
            epoch: Epoch(1),
            last_lsn: Lsn(0),
            last_epoch: Epoch(0),
            transfer: false,
        },
    );
    assert!(vote_persisted(&out) == Some(N1), "{out:?}");
    let out = receive(&mut core, 5_010, N1, append(1, (0, 0), 2, 1, 0, 5_009));
    assert!(
        !out.contains(&Action::BecameLearner {
            reason: LearnerReason::HeardOfCluster
        }),
        "{out:?}"
    );
    assert!(!core.status().learner);
}

/// A candidate stands above every epoch its pre-vote granters report, never in one some
/// node may already have voted in.
#[test]
fn candidate_stands_above_the_epochs_its_granters_report() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    step(&mut core, Input::Tick { now: ms(600) });
    receive(
        &mut core,
        601,
        N2,
        Message::PreVoteResponse {
            epoch: Epoch(2),
            granted: true,
            voter_epoch: Epoch(2),
            health: STANDS,
            same_log: false,
        },
    );
    assert_eq!(core.epoch(), Epoch(3));
    assert_eq!(core.role(), Role::Candidate);
}

/// The first `Append` sent to `to` among `out`.
fn append_to(out: &[Action], to: NodeId) -> Option<Append> {
    appends_to(out, to).into_iter().next()
}

/// Every append in `out` to `to`, in order.
fn appends_to(out: &[Action], to: NodeId) -> Vec<Append> {
    out.iter()
        .filter_map(|action| match action {
            Action::Send {
                to: dest,
                message: Message::Append(append),
            } if *dest == to => Some(*append),
            _ => None,
        })
        .collect()
}

/// The node a vote persisted in `out` is for, if one is.
fn vote_persisted(out: &[Action]) -> Option<NodeId> {
    out.iter().find_map(|a| match a {
        Action::PersistMeta { voted_for, .. } => *voted_for,
        _ => None,
    })
}

fn pre_vote_sent(out: &[Action]) -> bool {
    out.iter().any(|a| {
        matches!(
            a,
            Action::Send {
                message: Message::PreVoteRequest { .. },
                ..
            }
        )
    })
}

/// A primary that finds a record of its log damaged steps down at once. The node keeps voting
/// (its log's LSNs and epochs are intact) but stands for nothing and takes no hand-over until
/// the record is repaired (before: it turned learner and the primary's next append, its log
/// pointers unchanged, promoted it back before any repair).
#[test]
fn damaged_log_makes_a_primary_step_down_and_stand_for_nothing_until_repaired() {
    let mut core = elected_primary();
    step(&mut core, Input::LogDamaged);
    assert_eq!(core.role(), Role::Backup);
    assert!(core.is_damaged());
    assert!(core.is_voter(), "it still votes");
    let out = step(&mut core, Input::Tick { now: ms(5_000) });
    assert!(!pre_vote_sent(&out), "{out:?}");
    let out = receive(
        &mut core,
        5_001,
        N2,
        Message::TimeoutNow { epoch: Epoch(2) },
    );
    assert_eq!(core.role(), Role::Backup, "{out:?}");
    step(&mut core, Input::LogRepaired);
    assert!(!core.is_damaged());
    let out = step(&mut core, Input::Tick { now: ms(10_000) });
    assert!(
        pre_vote_sent(&out),
        "it stands again once repaired: {out:?}"
    );
}

/// An acknowledgement that a node's earlier run sent as a voter, before a restart cut the
/// record it acknowledged, arrives after the new run was heard as a learner: the primary
/// promotes the new run only once it holds everything through the primary's last LSN as it
/// was then, so the node never votes without a record such an acknowledgement may commit
/// (before: promoted at the commit LSN, it voted for a node that lacked the record).
#[test]
fn a_late_acknowledgement_of_an_earlier_run_never_commits_what_the_promoted_run_lacks() {
    let mut p = elected_primary();
    receive(&mut p, 605, N2, ack(2, 4, 600, 0));
    receive(&mut p, 606, N3, ack(2, 4, 600, 0));
    assert_eq!(p.commit_lsn(), Lsn(4));
    step(
        &mut p,
        Input::Propose {
            now: ms(620),
            count: 1,
            bytes: 10,
            runs: Vec::new(),
        },
    );
    step(
        &mut p,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(5),
            epoch: Epoch(2),
        },
    );
    // Node 2's old run acknowledges lsn 5 durable; the answer is held up. It crashes, and
    // at restart its last record (5) fails its check and is cut: a learner with 1..=4.
    let stale_ack = ack(2, 5, 620, 0);
    let mut y = Core::new(
        config(N2, &[1, 2, 3]),
        PersistedMeta {
            epoch: Epoch(2),
            voted_for: Some(N1),
            learner: true,
        },
        with_configs(log_of(&[(1, 2), (2, 4)]), &[(4, seed3())]),
        Start::LEARNER,
        Time::ZERO,
        99,
    )
    .expect("valid test setup");
    let out = receive(&mut y, 10, N1, append(2, (4, 2), 4, 2, 4, 650));
    let answer = response_to(&out, N1);
    assert_ne!(answer.learner, 0);
    receive(&mut p, 660, N2, Message::AppendResponse(answer));
    let out = step(&mut p, Input::Tick { now: ms(700) });
    let to_y = append_to(&out, N2).expect("an append to node 2");
    assert_eq!(
        to_y.promote, 0,
        "node 2 lacks lsn 5, which existed when it was first heard"
    );
    // The stale answer arrives. It echoes an append older than the one the new run answered,
    // so it is older news of what node 2 is: still a learner, it does not count, and lsn 5
    // does not commit with the copy node 2 no longer holds.
    receive(&mut p, 720, N2, stale_ack);
    assert_eq!(p.commit_lsn(), Lsn(4));
    // The primary dies. Node 2, still a learner, does not vote for node 3, which lacks lsn 5.
    let out = receive(
        &mut y,
        800,
        N3,
        Message::VoteRequest {
            epoch: Epoch(3),
            last_lsn: Lsn(4),
            last_epoch: Epoch(2),
            transfer: false,
        },
    );
    assert!(!y.is_voter());
    assert!(
        !out.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::VoteResponse { granted: true, .. },
                ..
            }
        )),
        "{out:?}"
    );
}

/// With `sync_replicas` above the safe minimum (both backups of three), a primary elected
/// while one backup is a learner still promotes it once it has caught up (before: promotion
/// waited for a commit LSN that needed the learner itself, and nothing ever committed).
#[test]
fn a_learner_is_promoted_when_commit_needs_it() {
    let mut cfg = config(N1, &[1, 2, 3]);
    cfg.sync_replicas = Some(2);
    let mut p = Core::new(
        cfg,
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
        log_of(&[(1, 2)]),
        Start::VOTER,
        Time::ZERO,
        7,
    )
    .expect("valid test setup");
    elect(&mut p);
    // The epoch start (3) and the seed's config record (4).
    step(
        &mut p,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(4),
            epoch: Epoch(2),
        },
    );
    receive(&mut p, 610, N2, ack(2, 4, 605, 0));
    receive(&mut p, 611, N3, ack(2, 4, 605, 0x55));
    assert_eq!(p.commit_lsn(), Lsn(0), "the learner does not count");
    let out = step(&mut p, Input::Tick { now: ms(660) });
    let to_learner = append_to(&out, N3).expect("an append to node 3");
    assert_eq!(
        (to_learner.promote, to_learner.promote_through),
        (0x55, Lsn(4))
    );
    // Promoted, it counts: the epoch start and the config record commit.
    receive(&mut p, 670, N3, ack(2, 4, 660, 0));
    assert_eq!(p.commit_lsn(), Lsn(4));
}

/// A backup's acknowledgement of everything through `lsn` in epoch 2, reporting `health`.
fn ack_with(lsn: u64, sent_ms: u64, health: Health) -> Message {
    Message::AppendResponse(AppendResponse {
        epoch: Epoch(2),
        accepted: true,
        matched_lsn: Lsn(lsn),
        matched_epoch: Epoch(2),
        durable_lsn: Lsn(lsn),
        sent_at: Duration::from_millis(sent_ms),
        learner: 0,
        health,
        vote_wait: Duration::from_millis(500),
    })
}

const LIVE: Health = Health {
    can_vote: true,
    app_live: true,
    can_stand: true,
    priority: 0,
};

fn switchover_started(out: &[Action]) -> Option<(NodeId, SwitchoverReason)> {
    out.iter().find_map(|a| match a {
        Action::SwitchoverStarted { to, reason } => Some((*to, *reason)),
        _ => None,
    })
}

/// A primary whose expected application is gone hands over once `app_timeout` has passed,
/// to a caught-up backup whose application is live; not before, not to one whose
/// application is not, and not while paused. With no live backup it stays primary.
#[test]
fn primary_hands_over_when_its_application_is_gone() {
    let mut core = elected_primary();
    step(
        &mut core,
        Input::AppHealth {
            expected: true,
            live: true,
        },
    );
    // Node 2 caught up, application not live; node 3 caught up, live.
    receive(&mut core, 610, N2, ack_with(4, 600, STANDS));
    receive(&mut core, 610, N3, ack_with(4, 600, LIVE));
    step(
        &mut core,
        Input::AppHealth {
            expected: true,
            live: false,
        },
    );
    let out = step(&mut core, Input::Tick { now: ms(1000) });
    assert_eq!(
        switchover_started(&out),
        None,
        "before app_timeout: {out:?}"
    );
    // Paused: no hand-over, however long it has been.
    step(
        &mut core,
        Input::SetPaused {
            paused: true,
            stamp: 10,
        },
    );
    receive(&mut core, 1010, N3, ack_with(4, 1000, LIVE));
    receive(&mut core, 1010, N2, ack_with(4, 1000, STANDS));
    let out = step(&mut core, Input::Tick { now: ms(1120) });
    assert_eq!(switchover_started(&out), None, "paused: {out:?}");
    step(
        &mut core,
        Input::SetPaused {
            paused: false,
            stamp: 20,
        },
    );
    let out = step(&mut core, Input::Tick { now: ms(1130) });
    assert_eq!(
        switchover_started(&out),
        Some((N3, SwitchoverReason::AppGone)),
        "{out:?}"
    );
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Send {
                to: N3,
                message: Message::TimeoutNow { .. }
            }
        )),
        "node 3 holds everything: handed over at once: {out:?}"
    );
    assert_eq!(core.role(), Role::Backup);

    // The same without any live backup: it stays primary.
    let mut core = elected_primary();
    receive(&mut core, 610, N2, ack_with(4, 600, STANDS));
    receive(&mut core, 610, N3, ack_with(4, 600, STANDS));
    step(
        &mut core,
        Input::AppHealth {
            expected: true,
            live: false,
        },
    );
    step(&mut core, Input::Tick { now: ms(1000) });
    receive(&mut core, 1010, N2, ack_with(4, 1000, STANDS));
    receive(&mut core, 1010, N3, ack_with(4, 1000, STANDS));
    let out = step(&mut core, Input::Tick { now: ms(1210) });
    assert_eq!(switchover_started(&out), None, "{out:?}");
    assert_eq!(core.role(), Role::Primary);

    // Nor does a node where no application is expected.
    let mut core = elected_primary();
    receive(&mut core, 610, N3, ack_with(4, 600, LIVE));
    step(&mut core, Input::Tick { now: ms(1000) });
    receive(&mut core, 1010, N3, ack_with(4, 1000, LIVE));
    receive(&mut core, 1010, N2, ack_with(4, 1000, LIVE));
    let out = step(&mut core, Input::Tick { now: ms(1210) });
    assert_eq!(switchover_started(&out), None, "{out:?}");
}

/// A candidate whose application is not live lets a granter whose application is live stand
/// first, once per epoch; at its next timeout it stands itself.
#[test]
fn candidate_without_a_live_application_defers_once() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    step(&mut core, Input::Tick { now: ms(600) });
    let out = receive(
        &mut core,
        601,
        N2,
        Message::PreVoteResponse {
            epoch: Epoch(2),
            granted: true,
            voter_epoch: Epoch(1),
            health: LIVE,
            same_log: false,
        },
    );
    assert!(
        out.contains(&Action::ElectionDeferred { to: N2 }),
        "{out:?}"
    );
    assert_eq!(core.role(), Role::Backup);
    assert_eq!(core.epoch(), Epoch(1));
    // Nobody won meanwhile: at the next timeout it stands.
    let out = step(&mut core, Input::Tick { now: ms(1200) });
    assert!(pre_vote_sent(&out), "{out:?}");
    receive(
        &mut core,
        1201,
        N2,
        Message::PreVoteResponse {
            epoch: Epoch(2),
            granted: true,
            voter_epoch: Epoch(1),
            health: LIVE,
            same_log: false,
        },
    );
    assert_eq!(core.role(), Role::Candidate);
    assert_eq!(core.epoch(), Epoch(2));
}

/// Priority breaks a tie between equal logs only: a candidate defers to a granter of higher
/// priority with the same log, not to one with a shorter log.
#[test]
fn higher_priority_wins_a_tie_between_equal_logs() {
    let higher = Health {
        priority: 5,
        ..STANDS
    };
    for (same_log, defers) in [(true, true), (false, false)] {
        let mut core = new_core(
            config(N1, &[1, 2, 3]),
            log_of(&[(1, 4)]),
            PersistedMeta {
                epoch: Epoch(1),
                voted_for: None,
                learner: false,
            },
        );
        step(&mut core, Input::Tick { now: ms(600) });
        let out = receive(
            &mut core,
            601,
            N2,
            Message::PreVoteResponse {
                epoch: Epoch(2),
                granted: true,
                voter_epoch: Epoch(1),
                health: higher,
                same_log,
            },
        );
        assert_eq!(
            out.contains(&Action::ElectionDeferred { to: N2 }),
            defers,
            "same_log {same_log}: {out:?}"
        );
        assert_eq!(core.role() == Role::Candidate, !defers);
    }
}

/// `no_failover`: the node never stands and ignores `TimeoutNow`, but still votes; a paused
/// node neither stands nor grants pre-votes; a backup takes its primary's pause.
#[test]
fn no_failover_and_pause_keep_a_node_from_standing() {
    let mut cfg = config(N1, &[1, 2, 3]);
    cfg.no_failover = true;
    let meta = PersistedMeta {
        epoch: Epoch(1),
        voted_for: None,
        learner: false,
    };
    let mut core = new_core(cfg, log_of(&[(1, 4)]), meta);
    let out = step(&mut core, Input::Tick { now: ms(5000) });
    assert!(!pre_vote_sent(&out), "{out:?}");
    let out = receive(
        &mut core,
        5001,
        N2,
        Message::VoteRequest {
            epoch: Epoch(2),
            last_lsn: Lsn(4),
            last_epoch: Epoch(1),
            transfer: false,
        },
    );
    assert!(vote_persisted(&out) == Some(N2), "it still votes: {out:?}");

    let mut core = new_core(config(N1, &[1, 2, 3]), log_of(&[(1, 4)]), meta);
    let out = step(
        &mut core,
        Input::SetPaused {
            paused: true,
            stamp: 100,
        },
    );
    assert_eq!(
        out,
        vec![Action::PauseChanged {
            paused: true,
            stamp: 100,
            from_primary: false
        }]
    );
    let out = step(&mut core, Input::Tick { now: ms(5000) });
    assert!(!pre_vote_sent(&out), "paused: {out:?}");
    let out = receive(
        &mut core,
        5001,
        N2,
        Message::PreVoteRequest {
            epoch: Epoch(2),
            last_lsn: Lsn(4),
            last_epoch: Epoch(1),
        },
    );
    assert!(
        out.iter().any(|a| matches!(
            a,
            Action::Send {
                message: Message::PreVoteResponse { granted: false, .. },
                ..
            }
        )),
        "{out:?}"
    );
    // The primary of epoch 2 was resumed by a later command: its append resumes this backup.
    let heartbeat = Message::Append(Append {
        epoch: Epoch(2),
        prev_lsn: Lsn(4),
        prev_epoch: Epoch(1),
        first_lsn: Lsn(5),
        last_lsn: Lsn(4),
        records_epoch: Epoch(2),
        commit_lsn: Lsn(4),
        sent_at: Duration::from_millis(5000),
        promote: 0,
        promote_through: Lsn::ZERO,
        paused: false,
        pause_stamp: 200,
        config: None,
        successor: None,
    });
    let out = receive(&mut core, 5002, N2, heartbeat);
    assert!(
        out.contains(&Action::PauseChanged {
            paused: false,
            stamp: 200,
            from_primary: true
        }),
        "{out:?}"
    );
}

/// A backup takes its primary's pause only when the primary's stamp is newer than its own:
/// an operator who pauses a backup before its primary is not undone by an append the primary
/// sent before it was paused, and the newest command wins.
#[test]
fn a_backup_paused_before_its_primary_stays_paused() {
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        log_of(&[(1, 4)]),
        PersistedMeta {
            epoch: Epoch(1),
            voted_for: None,
            learner: false,
        },
    );
    let heartbeat = |sent_ms: u64, paused: bool, pause_stamp: u64| {
        Message::Append(Append {
            epoch: Epoch(2),
            prev_lsn: Lsn(4),
            prev_epoch: Epoch(1),
            first_lsn: Lsn(5),
            last_lsn: Lsn(4),
            records_epoch: Epoch(2),
            commit_lsn: Lsn(4),
            sent_at: Duration::from_millis(sent_ms),
            promote: 0,
            promote_through: Lsn::ZERO,
            paused,
            pause_stamp,
            config: None,
            successor: None,
        })
    };
    let paused_changes = |out: &[Action]| -> Vec<(bool, u64, bool)> {
        out.iter()
            .filter_map(|a| match a {
                Action::PauseChanged {
                    paused,
                    stamp,
                    from_primary,
                } => Some((*paused, *stamp, *from_primary)),
                _ => None,
            })
            .collect()
    };
    assert!(paused_changes(&receive(&mut core, 100, N2, heartbeat(100, false, 0))).is_empty());
    let out = step(
        &mut core,
        Input::SetPaused {
            paused: true,
            stamp: 1000,
        },
    );
    assert_eq!(paused_changes(&out), [(true, 1000, false)]);
    let out = receive(&mut core, 150, N2, heartbeat(140, false, 0));
    assert!(
        paused_changes(&out).is_empty(),
        "undone by a stale append: {out:?}"
    );
    // The primary is paused by the same command: nothing to change here.
    let out = receive(&mut core, 200, N2, heartbeat(200, true, 1000));
    assert!(paused_changes(&out).is_empty(), "{out:?}");
    // The primary is resumed by a later command: so is this backup.
    let out = receive(&mut core, 250, N2, heartbeat(250, false, 2000));
    assert_eq!(paused_changes(&out), [(false, 2000, true)]);
    // A command from a machine whose clock is behind still applies, above what it saw.
    let out = step(
        &mut core,
        Input::SetPaused {
            paused: true,
            stamp: 5,
        },
    );
    assert_eq!(paused_changes(&out), [(true, 2001, false)]);
}

// Membership (`members.rs`).

const N4: NodeId = NodeId(4);
const N5: NodeId = NodeId(5);

fn meta_epoch_1() -> PersistedMeta {
    PersistedMeta {
        epoch: Epoch(1),
        voted_for: None,
        learner: false,
    }
}

/// `members` with `id` added (or moved) as `role`.
fn plus(members: Members, id: NodeId, role: MemberRole) -> Members {
    members.with(id, role).expect("id in 1..=64")
}

/// Node 1 of `cfg`'s members (every one a voter in the seed), its log at epoch 1 through
/// LSN 2, elected primary of epoch 2 at 600 ms with every other member's vote. Its epoch start
/// (3) and the seed's config record (4) are durable and, at 610 ms, acknowledged durable by
/// every other member (echoing 601 ms: the lease runs to 1051 ms): both are committed.
fn committed_primary(cfg: Config) -> Core {
    let others: Vec<NodeId> = cfg.members.iter().copied().filter(|&id| id != N1).collect();
    let mut core = new_core(cfg, log_of(&[(1, 2)]), meta_epoch_1());
    elect_with(&mut core, &others);
    step(
        &mut core,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(4),
            epoch: Epoch(2),
        },
    );
    for &id in &others {
        receive(&mut core, 610, id, ack(2, 4, 601, 0));
    }
    assert_eq!(core.commit_lsn(), Lsn(4));
    core
}

fn propose_members(core: &mut Core, now: u64, change: MembersChange) -> Vec<Action> {
    step(
        core,
        Input::ProposeMembers {
            now: ms(now),
            change,
        },
    )
}

/// The config record written among `out`, if any.
fn config_written(out: &[Action]) -> Option<(Lsn, Members)> {
    out.iter().find_map(|a| match a {
        Action::WriteConfig {
            lsn,
            epoch,
            members,
        } => {
            assert_eq!(*epoch, Epoch(2), "config records here are of epoch 2");
            Some((*lsn, *members))
        }
        _ => None,
    })
}

/// The last `PeersDeparting` among `out`.
fn departing(out: &[Action]) -> Option<u64> {
    out.iter().rev().find_map(|a| match a {
        Action::PeersDeparting { ids } => Some(*ids),
        _ => None,
    })
}

/// The last LSN of the last append with records sent to `to` among `out`.
fn appended_through(out: &[Action], to: NodeId) -> Option<Lsn> {
    out.iter().rev().find_map(|a| match a {
        Action::Send {
            to: dest,
            message: Message::Append(append),
        } if *dest == to && append.last_lsn >= append.first_lsn => Some(append.last_lsn),
        _ => None,
    })
}

/// Every `MembersChanged` among `out`.
fn members_changed(out: &[Action]) -> Vec<(Lsn, Members)> {
    out.iter()
        .filter_map(|a| match a {
            Action::MembersChanged { lsn, members } => Some((*lsn, *members)),
            _ => None,
        })
        .collect()
}

fn committed(out: &[Action]) -> Option<Lsn> {
    out.iter().rev().find_map(|a| match a {
        Action::Committed { lsn } => Some(*lsn),
        _ => None,
    })
}

fn sent_to(out: &[Action], to: NodeId) -> bool {
    out.iter()
        .any(|a| matches!(a, Action::Send { to: dest, .. } if *dest == to))
}

fn durable(core: &mut Core, lsn: u64) -> Vec<Action> {
    step(
        core,
        Input::Durable {
            now: Time::ZERO,
            lsn: Lsn(lsn),
            epoch: Epoch(2),
        },
    )
}

fn propose(core: &mut Core, now: u64) -> Vec<Action> {
    step(
        core,
        Input::Propose {
            now: ms(now),
            count: 1,
            bytes: 10,
            runs: Vec::new(),
        },
    )
}

/// A local fsync that completes after the lease ended commits nothing: the report's own
/// clock reading is checked, not the last one an earlier input brought. (The application
/// answers reads that follow a write in its pipeline once the write commits; a commit after
/// the lease could answer them after another primary took writes.)
#[test]
fn a_durable_report_after_the_lease_ended_commits_nothing() {
    let mut core = elected_primary();
    propose(&mut core, 700);
    receive(&mut core, 710, N2, ack(2, 5, 700, 0));
    assert_eq!(core.commit_lsn(), Lsn(4), "not durable here yet");
    assert_eq!(core.status().lease_until, Some(ms(1150)));
    step(&mut core, Input::Tick { now: ms(1149) });
    assert_eq!(core.role(), Role::Primary);
    let out = step(
        &mut core,
        Input::Durable {
            now: ms(1160),
            lsn: Lsn(5),
            epoch: Epoch(2),
        },
    );
    assert!(
        !out.contains(&Action::Committed { lsn: Lsn(5) }),
        "committed lsn 5 at 1160 ms, after the lease ended at 1150 ms: {out:?}"
    );
    assert_eq!(core.role(), Role::Backup);
    assert_eq!(core.commit_lsn(), Lsn(4));
}

/// Each change the rules forbid is refused with its reason, and nothing is written; a backup
/// refuses every change.
#[test]
fn members_changes_are_refused_with_their_reason_and_write_nothing() {
    let mut core = committed_primary(config(N1, &[1, 2, 3]));
    let last = core.last_lsn();
    for (change, reason) in [
        (MembersChange::Remove(N1), MembersRefusal::RemovesPrimary),
        (MembersChange::Remove(N4), MembersRefusal::NotAMember(N4)),
        (MembersChange::Promote(N4), MembersRefusal::NotAMember(N4)),
        (
            MembersChange::AddLearner(N2),
            MembersRefusal::AlreadyAMember(N2),
        ),
        (
            MembersChange::Promote(N2),
            MembersRefusal::AlreadyAVoter(N2),
        ),
        (
            MembersChange::AddLearner(NodeId(65)),
            MembersRefusal::BadId(NodeId(65)),
        ),
        (
            MembersChange::AddLearner(NodeId(0)),
            MembersRefusal::BadId(NodeId(0)),
        ),
    ] {
        let out = propose_members(&mut core, 620, change);
        assert_eq!(out, vec![Action::MembersRefused { reason }], "{change:?}");
    }
    assert_eq!(core.last_lsn(), last);
    assert_eq!(core.members(), seed3());
    assert_eq!(core.role(), Role::Primary);

    let mut backup = new_core(config(N2, &[1, 2, 3]), log_of(&[(1, 2)]), meta_epoch_1());
    assert_eq!(
        propose_members(&mut backup, 100, MembersChange::AddLearner(N4)),
        vec![Action::MembersRefused {
            reason: MembersRefusal::NotPrimary
        }]
    );

    // Nor during a switchover: node 3 lacks the record proposed last, so it is not over.
    let mut core = committed_primary(config(N1, &[1, 2, 3]));
    propose(&mut core, 615);
    let out = step(&mut core, Input::Switchover { to: Some(N3) });
    assert!(switchover_started(&out).is_some(), "{out:?}");
    assert_eq!(
        propose_members(&mut core, 620, MembersChange::AddLearner(N4)),
        vec![Action::MembersRefused {
            reason: MembersRefusal::SwitchoverInProgress
        }]
    );
}

/// One change at a time: none until the new primary's epoch start and the seed's config
/// record after it are committed, and none while the previous change is uncommitted.
#[test]
fn a_change_waits_for_the_primarys_first_records_and_the_previous_change_to_commit() {
    let pending = vec![Action::MembersRefused {
        reason: MembersRefusal::ChangePending,
    }];
    let mut core = new_core(config(N1, &[1, 2, 3]), log_of(&[(1, 2)]), meta_epoch_1());
    elect(&mut core);
    assert_eq!(
        propose_members(&mut core, 602, MembersChange::AddLearner(N4)),
        pending,
        "nothing of epoch 2 is committed"
    );
    durable(&mut core, 4);
    receive(&mut core, 605, N2, ack(2, 3, 601, 0));
    assert_eq!(core.commit_lsn(), Lsn(3));
    assert_eq!(
        propose_members(&mut core, 606, MembersChange::AddLearner(N4)),
        pending,
        "the epoch start is committed, the seed's config record (4) is not"
    );
    receive(&mut core, 607, N2, ack(2, 4, 601, 0));
    assert_eq!(core.commit_lsn(), Lsn(4));
    let out = propose_members(&mut core, 608, MembersChange::AddLearner(N4));
    let learner = plus(seed3(), N4, MemberRole::Learner);
    assert_eq!(config_written(&out), Some((Lsn(5), learner)), "{out:?}");
    assert_eq!(
        propose_members(&mut core, 609, MembersChange::Remove(N3)),
        pending,
        "the learner's record (5) is not committed"
    );
    assert_eq!(
        propose_members(&mut core, 609, MembersChange::AddLearner(N5)),
        pending
    );
    durable(&mut core, 5);
    receive(&mut core, 612, N2, ack(2, 5, 608, 0));
    let out = propose_members(&mut core, 613, MembersChange::AddLearner(N5));
    assert_eq!(
        config_written(&out),
        Some((Lsn(6), plus(learner, N5, MemberRole::Learner))),
        "{out:?}"
    );
}

/// A new primary whose log already holds a configuration (here at the log's start, under a
/// snapshot through 4, so already committed) writes no seed record, and still changes
/// nothing until its epoch-start record is committed.
#[test]
fn a_new_primary_changes_nothing_until_its_epoch_start_is_committed() {
    let log = RecoveredLog {
        snapshot_lsn: Lsn(4),
        snapshot_epoch: Epoch(1),
        last_lsn: Lsn(4),
        epoch_starts: Vec::new(),
        configs: vec![(Lsn(2), seed3())],
    };
    let mut core = new_core(config(N1, &[1, 2, 3]), log, meta_epoch_1());
    let out = elect(&mut core);
    assert_eq!(config_written(&out), None, "{out:?}");
    assert_eq!(core.last_lsn(), Lsn(5), "the epoch start only");
    assert_eq!(core.members_lsn(), Lsn(2));
    assert!(core.commit_lsn() >= core.members_lsn());
    assert_eq!(
        propose_members(&mut core, 602, MembersChange::AddLearner(N4)),
        vec![Action::MembersRefused {
            reason: MembersRefusal::ChangePending
        }]
    );
    durable(&mut core, 5);
    receive(&mut core, 605, N2, ack(2, 5, 601, 0));
    assert_eq!(core.commit_lsn(), Lsn(5));
    let out = propose_members(&mut core, 606, MembersChange::AddLearner(N4));
    assert_eq!(
        config_written(&out),
        Some((Lsn(6), plus(seed3(), N4, MemberRole::Learner))),
        "{out:?}"
    );
}

/// A change is refused when the voters of the configuration it leads to that answered within
/// the failover timeout (the primary included) are fewer than its majority.
#[test]
fn a_change_that_leaves_too_few_reachable_voters_is_refused() {
    // Removing: node 3 has been silent since 610 ms, node 2 answers.
    let mut core = committed_primary(config(N1, &[1, 2, 3]));
    receive(&mut core, 1000, N2, ack(2, 4, 990, 0));
    assert_eq!(
        propose_members(&mut core, 1150, MembersChange::Remove(N2)),
        vec![Action::MembersRefused {
            reason: MembersRefusal::NoQuorum {
                reachable: 1,
                voters: 2,
                majority: 2
            }
        }]
    );
    let out = propose_members(&mut core, 1150, MembersChange::Remove(N3));
    assert_eq!(
        config_written(&out),
        Some((Lsn(5), Members::voters_of(&[N1, N2]).unwrap())),
        "{out:?}"
    );

    // Adding: a new primary of {1, 2, 3, 4} holds its lease on the votes of nodes 2 and 3,
    // but has its first records on node 2 only: not a majority of four, so they are not
    // committed and no change may be made yet. Once node 3 has them too, three of four
    // voters have answered and the change goes through. (A primary that commits has heard
    // from a majority, so an added learner, which leaves the voters as they are, never
    // finds too few reachable; the check guards promotions and removals.)
    let mut core = new_core(config(N1, &[1, 2, 3, 4]), log_of(&[(1, 2)]), meta_epoch_1());
    elect_with(&mut core, &[N2, N3]);
    durable(&mut core, 4);
    receive(&mut core, 610, N2, ack(2, 4, 601, 0));
    assert!(core.commit_lsn() < Lsn(3), "{:?}", core.commit_lsn());
    assert_eq!(
        propose_members(&mut core, 620, MembersChange::AddLearner(N5)),
        vec![Action::MembersRefused {
            reason: MembersRefusal::ChangePending
        }]
    );
    receive(&mut core, 630, N3, ack(2, 4, 601, 0));
    assert_eq!(core.commit_lsn(), Lsn(4));
    let out = propose_members(&mut core, 631, MembersChange::AddLearner(N5));
    assert!(config_written(&out).is_some(), "{out:?}");
}

/// `Promote` needs the learner heard from recently, able to vote (`Health::can_vote`), and
/// within one append (`append_records_max`) of the end of the primary's log.
#[test]
fn promote_needs_a_caught_up_learner_that_can_vote() {
    let mut cfg = config(N1, &[1, 2, 3]);
    cfg.append_records_max = 2;
    let mut core = committed_primary(cfg);
    let out = propose_members(&mut core, 620, MembersChange::AddLearner(N4));
    assert_eq!(config_written(&out).map(|(lsn, _)| lsn), Some(Lsn(5)));
    durable(&mut core, 5);
    receive(&mut core, 625, N2, ack(2, 5, 620, 0));
    assert_eq!(core.commit_lsn(), Lsn(5));
    let not_caught_up = |behind| {
        vec![Action::MembersRefused {
            reason: MembersRefusal::NotCaughtUp { id: N4, behind },
        }]
    };
    assert_eq!(
        propose_members(&mut core, 630, MembersChange::Promote(N4)),
        not_caught_up(u64::MAX),
        "never heard from"
    );
    // Its log is empty: it refuses the probe.
    let empty = Message::AppendResponse(AppendResponse {
        epoch: Epoch(2),
        accepted: false,
        matched_lsn: Lsn::ZERO,
        matched_epoch: Epoch::ZERO,
        durable_lsn: Lsn::ZERO,
        sent_at: Duration::from_millis(620),
        learner: 0x44,
        health: STANDS,
        vote_wait: Duration::from_millis(500),
    });
    receive(&mut core, 640, N4, empty);
    assert_eq!(
        propose_members(&mut core, 641, MembersChange::Promote(N4)),
        not_caught_up(5),
        "five records behind"
    );
    // Three records behind is more than one append of two.
    receive(&mut core, 650, N4, ack_with(2, 640, STANDS));
    assert_eq!(
        propose_members(&mut core, 651, MembersChange::Promote(N4)),
        not_caught_up(3)
    );
    // Two behind is close enough, but a wiped data dir's quarantine keeps it from voting.
    let cannot_vote = Health {
        can_vote: false,
        ..STANDS
    };
    receive(&mut core, 660, N4, ack_with(3, 650, cannot_vote));
    assert_eq!(
        propose_members(&mut core, 661, MembersChange::Promote(N4)),
        not_caught_up(u64::MAX),
        "cannot vote yet"
    );
    // An answer to an earlier append (from an earlier run of the node, delayed in the
    // network) that says it can vote is older news and changes nothing.
    receive(&mut core, 665, N4, ack_with(3, 645, STANDS));
    assert_eq!(
        propose_members(&mut core, 666, MembersChange::Promote(N4)),
        not_caught_up(u64::MAX),
        "an older answer does not overrule a newer one"
    );
    receive(&mut core, 670, N4, ack_with(3, 660, STANDS));
    let out = propose_members(&mut core, 671, MembersChange::Promote(N4));
    let four = Members::voters_of(&[N1, N2, N3, N4]).unwrap();
    assert_eq!(config_written(&out), Some((Lsn(6), four)), "{out:?}");
    assert_eq!(members_changed(&out), vec![(Lsn(6), four)]);
    assert_eq!(core.members(), four);
}

/// A learner is added with a config record, reported; it is shipped to, but counts neither
/// for commit nor for the lease (even when its answers say it would vote); once caught up and
/// able to vote it becomes a voter on the primary's tick, after the previous change committed.
#[test]
fn an_added_learner_is_shipped_to_counts_for_nothing_and_is_promoted_once_caught_up() {
    let mut core = committed_primary(config(N1, &[1, 2, 3]));
    let lease = core.status().lease_until;
    assert_eq!(lease, Some(ms(1051)));
    let learner = plus(seed3(), N4, MemberRole::Learner);
    let out = propose_members(&mut core, 620, MembersChange::AddLearner(N4));
    assert_eq!(
        out[..2],
        [
            Action::WriteConfig {
                lsn: Lsn(5),
                epoch: Epoch(2),
                members: learner
            },
            Action::MembersChanged {
                lsn: Lsn(5),
                members: learner
            }
        ],
        "{out:?}"
    );
    assert_eq!(members_changed(&out).len(), 1);
    // The new member is probed from the config record; the others get the record.
    let probe = append_to(&out, N4).expect("an append to node 4");
    assert_eq!(
        (probe.prev_lsn, probe.last_lsn, probe.config),
        (Lsn(4), Lsn(5), Some(learner))
    );
    for to in [N2, N3] {
        let shipped = append_to(&out, to).expect("the record shipped");
        assert_eq!((shipped.last_lsn, shipped.config), (Lsn(5), Some(learner)));
    }
    let peers: Vec<NodeId> = core.status().peers.iter().map(|p| p.node_id).collect();
    assert_eq!(peers, [N2, N3, N4]);

    durable(&mut core, 5);
    receive(&mut core, 630, N4, ack(2, 5, 620, 0));
    assert_eq!(
        core.commit_lsn(),
        Lsn(4),
        "a learner's copy commits nothing"
    );
    assert_eq!(core.status().lease_until, lease, "nor renews the lease");
    let out = step(&mut core, Input::Tick { now: ms(640) });
    assert_eq!(
        config_written(&out),
        None,
        "caught up, but its record is not committed: {out:?}"
    );
    receive(&mut core, 650, N2, ack(2, 5, 620, 0));
    assert_eq!(core.commit_lsn(), Lsn(5));
    assert_eq!(core.status().lease_until, Some(ms(1070)));
    // Still in a wiped data dir's quarantine: not yet.
    let cannot_vote = Health {
        can_vote: false,
        ..STANDS
    };
    receive(&mut core, 655, N4, ack_with(5, 640, cannot_vote));
    let out = step(&mut core, Input::Tick { now: ms(660) });
    assert_eq!(config_written(&out), None, "{out:?}");
    receive(&mut core, 665, N4, ack_with(5, 660, STANDS));
    let out = step(&mut core, Input::Tick { now: ms(670) });
    let four = Members::voters_of(&[N1, N2, N3, N4]).unwrap();
    assert_eq!(config_written(&out), Some((Lsn(6), four)), "{out:?}");
    assert_eq!(members_changed(&out), vec![(Lsn(6), four)]);
    assert!(core.members().is_voter(N4));
}

/// Removing a member: the primary ships to it until it durably holds the record that removed
/// it and has been sent an append saying that record is committed (`members.rs`, "Removed
/// nodes"), then lets it go; its answers count for nothing meanwhile, and commit counts a
/// majority of the smaller configuration (two of {2, 3, 4}: a majority of four voters is
/// three).
#[test]
fn a_removed_member_is_told_of_its_removal_then_let_go_and_commit_needs_fewer_copies() {
    let mut core = committed_primary(config(N1, &[1, 2, 3, 4, 5]));
    propose(&mut core, 615);
    durable(&mut core, 5);
    let out = receive(&mut core, 616, N2, ack(2, 5, 615, 0));
    assert_eq!(committed(&out), None, "two backups of five are needed");
    let out = receive(&mut core, 617, N3, ack(2, 5, 615, 0));
    assert_eq!(committed(&out), Some(Lsn(5)));
    receive(&mut core, 618, N5, ack(2, 5, 615, 0));

    let out = propose_members(&mut core, 620, MembersChange::Remove(N5));
    let four = Members::voters_of(&[N1, N2, N3, N4]).unwrap();
    assert_eq!(config_written(&out), Some((Lsn(6), four)), "{out:?}");
    assert_eq!(members_changed(&out), vec![(Lsn(6), four)]);
    let departing_n5 = Members::bit(N5).unwrap();
    assert_eq!(departing(&out), Some(departing_n5), "{out:?}");
    let departing_at = out
        .iter()
        .position(|a| matches!(a, Action::PeersDeparting { .. }));
    let changed_at = out
        .iter()
        .position(|a| matches!(a, Action::MembersChanged { .. }));
    assert!(
        departing_at < changed_at,
        "the shell hears of the departing node while it still has its address: {out:?}"
    );
    assert!(
        !sent_to(&out, N5),
        "nothing goes to it until its removal is committed: {out:?}"
    );
    durable(&mut core, 6);
    let out = receive(&mut core, 626, N2, ack(2, 6, 620, 0));
    assert_eq!(committed(&out), None, "one backup of four: {out:?}");
    let out = receive(&mut core, 627, N3, ack(2, 6, 620, 0));
    assert_eq!(committed(&out), Some(Lsn(6)));

    // Committed: the log through the removal goes to it, saying it is committed; once it
    // holds the record, the next tick lets it go.
    let out = step(&mut core, Input::Tick { now: ms(700) });
    assert_eq!(appended_through(&out, N5), Some(Lsn(6)), "{out:?}");
    assert_eq!(departing(&out), None);
    let out = propose(&mut core, 710);
    assert!(!sent_to(&out, N5), "records past its removal: {out:?}");
    let out = step(&mut core, Input::Tick { now: ms(760) });
    assert_eq!(
        departing(&out),
        None,
        "not let go before it holds it: {out:?}"
    );
    receive(&mut core, 765, N5, ack(2, 6, 700, 0));
    let out = step(&mut core, Input::Tick { now: ms(820) });
    assert_eq!(departing(&out), Some(0), "{out:?}");
    assert!(!sent_to(&out, N5), "{out:?}");
    for to in [N2, N3, N4] {
        assert!(sent_to(&out, to), "heartbeat to {to}: {out:?}");
    }
    let peers: Vec<NodeId> = core.status().peers.iter().map(|p| p.node_id).collect();
    assert_eq!(peers, [N2, N3, N4]);
    durable(&mut core, 7);
    let out = receive(&mut core, 825, N5, ack(2, 7, 820, 0));
    assert!(out.is_empty(), "a removed node's answer: {out:?}");
    let out = receive(&mut core, 826, N2, ack(2, 7, 820, 0));
    assert_eq!(
        committed(&out),
        None,
        "one backup of four is not a majority"
    );
    let out = receive(&mut core, 827, N4, ack(2, 7, 820, 0));
    assert_eq!(committed(&out), Some(Lsn(7)), "two backups of four are");
}

/// A primary elected with a removal as its latest configuration tells the removed node, as
/// the primary that wrote it would have: that one may have died before the node took the
/// record. Nothing goes to the node before the epoch-start record commits the removal, then
/// the log through the removal and no further; it is let go once it holds the record.
#[test]
fn a_new_primary_tells_the_node_its_latest_configuration_removed() {
    const N4: NodeId = NodeId(4);
    let three = Members::voters_of(&[N1, N2, N3]).unwrap();
    // The seed {1, 2, 3, 4}; the record at LSN 5, of epoch 1, removed node 4.
    let mut core = new_core(
        config(N1, &[1, 2, 3, 4]),
        with_configs(log_of(&[(1, 5)]), &[(5, three)]),
        meta_epoch_1(),
    );
    let out = elect_with(&mut core, &[N2]);
    assert_eq!(departing(&out), Some(Members::bit(N4).unwrap()), "{out:?}");
    assert!(
        !sent_to(&out, N4),
        "nothing before the removal is committed: {out:?}"
    );
    let peers: Vec<NodeId> = core.status().peers.iter().map(|p| p.node_id).collect();
    assert_eq!(peers, [N2, N3, N4]);
    let out = step(&mut core, Input::Tick { now: ms(620) });
    assert!(!sent_to(&out, N4), "{out:?}");
    // The epoch start (LSN 6) durable here and on node 2: the removal is committed.
    durable(&mut core, 6);
    let out = receive(&mut core, 625, N2, ack(2, 6, 601, 0));
    assert_eq!(committed(&out), Some(Lsn(6)));
    // Node 4 lacks the removal (the old primary never shipped it): its probe is refused, and
    // the record at LSN 5 goes to it, with the commit, but not the epoch start at 6.
    let out = step(&mut core, Input::Tick { now: ms(660) });
    for append in appends_to(&out, N4) {
        assert!(append.last_lsn <= Lsn(5), "past its removal: {append:?}");
    }
    let refusal = Message::AppendResponse(AppendResponse {
        epoch: Epoch(2),
        accepted: false,
        matched_lsn: Lsn(4),
        matched_epoch: Epoch(1),
        durable_lsn: Lsn(4),
        sent_at: Duration::from_millis(660),
        learner: 0,
        health: STANDS,
        vote_wait: Duration::from_millis(500),
    });
    let mut out = receive(&mut core, 665, N4, refusal);
    out.extend(step(&mut core, Input::Tick { now: ms(700) }));
    assert_eq!(appended_through(&out, N4), Some(Lsn(5)), "{out:?}");
    for append in appends_to(&out, N4) {
        assert!(append.last_lsn <= Lsn(5), "past its removal: {append:?}");
        assert!(append.commit_lsn >= Lsn(5), "{append:?}");
    }
    assert_eq!(departing(&out), None, "not let go before it holds it");
    receive(&mut core, 705, N4, ack(2, 5, 700, 0));
    let out = step(&mut core, Input::Tick { now: ms(760) });
    assert_eq!(departing(&out), Some(0), "{out:?}");
    let peers: Vec<NodeId> = core.status().peers.iter().map(|p| p.node_id).collect();
    assert_eq!(peers, [N2, N3]);

    // A primary whose latest configuration added a node, or is the seed, has no one to tell.
    let four = Members::voters_of(&[N1, N2, N3, N4]).unwrap();
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        with_configs(log_of(&[(1, 5)]), &[(5, four)]),
        meta_epoch_1(),
    );
    let out = elect_with(&mut core, &[N2, N3]);
    assert_eq!(departing(&out), None, "{out:?}");
    let mut core = new_core(config(N1, &[1, 2, 3]), log_of(&[(1, 2)]), meta_epoch_1());
    let out = elect_with(&mut core, &[N2]);
    assert_eq!(departing(&out), None, "{out:?}");
}

/// A removed node that never takes its removal (down, cut off) is shipped to for
/// `DEPARTING_TIMEOUTS` failover timeouts, then let go; one re-added before that is a member
/// again and stays.
#[test]
fn a_removed_member_that_never_answers_is_let_go_and_one_added_back_stays() {
    let mut core = committed_primary(config(N1, &[1, 2, 3, 4]));
    let out = propose_members(&mut core, 620, MembersChange::Remove(N4));
    assert_eq!(departing(&out), Some(Members::bit(N4).unwrap()), "{out:?}");
    for n in [N2, N3] {
        receive(&mut core, 625, n, ack(2, 5, 620, 0));
    }
    durable(&mut core, 5);
    assert_eq!(core.commit_lsn(), Lsn(5));
    // 20 failover timeouts of 500 ms from the removal, the others answering throughout.
    for at in (700..=10_600).step_by(100) {
        let out = step(&mut core, Input::Tick { now: ms(at) });
        assert!(sent_to(&out, N4), "still tried at {at} ms: {out:?}");
        for n in [N2, N3] {
            receive(&mut core, at + 1, n, ack(2, 5, at, 0));
        }
    }
    let out = step(&mut core, Input::Tick { now: ms(10_620) });
    assert_eq!(departing(&out), Some(0), "{out:?}");
    assert!(!sent_to(&out, N4), "{out:?}");

    // Removed, then added back as a learner before it was let go: a member, not departing,
    // and known afresh: what it said before its removal (here: that it holds LSN 4 and can
    // vote) may be of a run that has since lost its disk, and must not make it a voter.
    let mut core = committed_primary(config(N1, &[1, 2, 3, 4]));
    propose_members(&mut core, 620, MembersChange::Remove(N4));
    for n in [N2, N3] {
        receive(&mut core, 625, n, ack(2, 5, 620, 0));
    }
    durable(&mut core, 5);
    let out = propose_members(&mut core, 630, MembersChange::AddLearner(N4));
    assert!(config_written(&out).is_some(), "{out:?}");
    assert_eq!(departing(&out), Some(0), "{out:?}");
    assert!(sent_to(&out, N4), "{out:?}");
    let n4 = |core: &Core| {
        core.status()
            .peers
            .into_iter()
            .find(|p| p.node_id == N4)
            .expect("a peer")
    };
    assert_eq!(n4(&core).match_lsn, Lsn::ZERO);
    assert!(n4(&core).last_ack.is_none());
    for at in (700..=11_000).step_by(100) {
        let out = step(&mut core, Input::Tick { now: ms(at) });
        assert!(
            sent_to(&out, N4),
            "a member is never let go ({at} ms): {out:?}"
        );
        for n in [N2, N3] {
            receive(&mut core, at + 1, n, ack(2, 6, at, 0));
        }
    }
    assert_eq!(core.members().role(N4), Some(MemberRole::Learner));
}

/// A removal's record is committed only with a copy that an election in the old
/// configuration must find. In {1, 2} the primary alone would have done under the static
/// rule (`voters - majority` backups: every election needs both votes), but nodes 2 and 3,
/// still counting in {1, 2, 3} until they hold the record, could elect one of themselves
/// without it; so commit counts a majority of the latest configuration, both of {1, 2}.
#[test]
fn a_removal_commits_only_with_a_copy_the_old_configuration_would_find() {
    let mut core = committed_primary(config(N1, &[1, 2, 3]));
    let out = propose_members(&mut core, 620, MembersChange::Remove(N3));
    let two = Members::voters_of(&[N1, N2]).unwrap();
    assert_eq!(config_written(&out), Some((Lsn(5), two)), "{out:?}");
    let out = durable(&mut core, 5);
    assert_eq!(
        committed(&out),
        None,
        "durable on the primary alone: {out:?}"
    );
    propose(&mut core, 625);
    let out = durable(&mut core, 6);
    assert_eq!(committed(&out), None, "{out:?}");
    let out = receive(&mut core, 630, N2, ack(2, 6, 625, 0));
    assert_eq!(committed(&out), Some(Lsn(6)));
    // And so on: a majority of {1, 2} is both.
    propose(&mut core, 635);
    let out = durable(&mut core, 7);
    assert_eq!(committed(&out), None, "{out:?}");
    let out = receive(&mut core, 640, N2, ack(2, 7, 635, 0));
    assert_eq!(committed(&out), Some(Lsn(7)));
}

/// Likewise for a promotion from three voters to four: node 4's copy alone (one backup of
/// four, the static rule) would miss nodes 2 and 3, a majority of the old configuration; a
/// majority of four (two backups) always includes one of them.
#[test]
fn a_promotion_commits_only_with_a_copy_the_old_configuration_would_find() {
    let learner = plus(seed3(), N4, MemberRole::Learner);
    let mut core = new_core(
        config(N1, &[1, 2, 3]),
        with_configs(log_of(&[(1, 3)]), &[(3, learner)]),
        meta_epoch_1(),
    );
    let out = elect(&mut core);
    assert_eq!(config_written(&out), None);
    durable(&mut core, 4);
    for id in [N2, N3, N4] {
        receive(&mut core, 610, id, ack(2, 4, 601, 0));
    }
    assert_eq!(core.commit_lsn(), Lsn(4));
    let out = propose_members(&mut core, 620, MembersChange::Promote(N4));
    let four = Members::voters_of(&[N1, N2, N3, N4]).unwrap();
    assert_eq!(config_written(&out), Some((Lsn(5), four)), "{out:?}");
    durable(&mut core, 5);
    let out = receive(&mut core, 625, N4, ack(2, 5, 620, 0));
    assert_eq!(committed(&out), None, "node 4's copy alone: {out:?}");
    let out = receive(&mut core, 626, N3, ack(2, 5, 620, 0));
    assert_eq!(committed(&out), Some(Lsn(5)));
    // From now on node 4 counts like any voter: with node 2, a majority of four.
    propose(&mut core, 630);
    durable(&mut core, 6);
    let out = receive(&mut core, 635, N4, ack(2, 6, 630, 0));
    assert_eq!(committed(&out), None, "{out:?}");
    let out = receive(&mut core, 636, N2, ack(2, 6, 630, 0));
    assert_eq!(committed(&out), Some(Lsn(6)));
}

/// A new primary that was a learner in the configuration before its latest (its predecessor
/// promoted it and did not commit the change) is no voter there: until that change commits,
/// its own copy does not count towards the old configuration's commit set, which then needs
/// one backup more (two of {1, 2, 3}: nodes 1 and 3 are a majority of it).
#[test]
fn a_primary_promoted_by_an_uncommitted_change_needs_one_more_copy_in_the_old_configuration() {
    let learner = plus(seed3(), N4, MemberRole::Learner);
    let four = Members::voters_of(&[N1, N2, N3, N4]).unwrap();
    let mut core = new_core(
        config(N4, &[1, 2, 3, 4]),
        with_configs(log_of(&[(1, 4)]), &[(3, learner), (4, four)]),
        meta_epoch_1(),
    );
    assert!(core.is_voter());
    elect_with(&mut core, &[N2, N3]);
    durable(&mut core, 5);
    let out = receive(&mut core, 610, N2, ack(2, 5, 601, 0));
    assert_eq!(committed(&out), None, "one voter of {{1, 2, 3}}: {out:?}");
    let out = receive(&mut core, 611, N3, ack(2, 5, 601, 0));
    assert_eq!(committed(&out), Some(Lsn(5)));
}

/// A backup acts on a configuration from the moment it writes its record (`Append::config`),
/// and falls back to the one before when a new primary truncates that record; both are
/// reported. Removed, it does not stand (it still grants a vote: the candidate counts it in
/// its own configuration); restored, it stands again.
#[test]
fn a_backup_follows_config_records_as_written_and_truncated() {
    let mut core = new_core(config(N3, &[1, 2, 3]), log_of(&[(1, 2)]), meta_epoch_1());
    let two = Members::voters_of(&[N1, N2]).unwrap();
    let out = receive(
        &mut core,
        1000,
        N1,
        with_config(append(2, (2, 1), 4, 2, 0, 900), two),
    );
    assert!(
        out.contains(&Action::WriteReceived {
            first_lsn: Lsn(3),
            last_lsn: Lsn(4)
        }),
        "{out:?}"
    );
    assert_eq!(members_changed(&out), vec![(Lsn(4), two)]);
    assert_eq!((core.members_lsn(), core.members()), (Lsn(4), two));
    assert!(!core.is_voter());
    let out = step(&mut core, Input::Tick { now: ms(1600) });
    assert!(!pre_vote_sent(&out), "{out:?}");
    let out = receive(
        &mut core,
        1601,
        N2,
        Message::VoteRequest {
            epoch: Epoch(3),
            last_lsn: Lsn(4),
            last_epoch: Epoch(2),
            transfer: false,
        },
    );
    assert!(
        out.contains(&Action::PersistMeta {
            epoch: Epoch(3),
            voted_for: Some(N2),
            learner: false,
        }),
        "{out:?}"
    );

    // Node 2, primary of epoch 3 without the record, overwrites it.
    let out = receive(&mut core, 1700, N2, append(3, (3, 2), 4, 3, 3, 1650));
    let truncated = out
        .iter()
        .position(|a| {
            *a == Action::TruncateSuffix {
                keep_through: Lsn(3),
            }
        })
        .unwrap_or_else(|| panic!("no truncation: {out:?}"));
    let reported = out
        .iter()
        .position(|a| matches!(a, Action::MembersChanged { .. }))
        .unwrap_or_else(|| panic!("no report: {out:?}"));
    assert!(truncated < reported, "{out:?}");
    assert_eq!(members_changed(&out), vec![(Lsn::ZERO, seed3())]);
    assert_eq!((core.members_lsn(), core.members()), (Lsn::ZERO, seed3()));
    assert!(core.is_voter());
    let out = step(&mut core, Input::Tick { now: ms(2300) });
    assert!(pre_vote_sent(&out), "it stands again: {out:?}");
}

/// An installed snapshot brings the configuration in effect at its last record.
#[test]
fn an_installed_snapshot_sets_the_configuration() {
    let mut core = new_core(config(N2, &[1, 2, 3]), log_of(&[(1, 2)]), meta_epoch_1());
    let members = plus(
        Members::voters_of(&[N1, N3, N4]).unwrap(),
        N2,
        MemberRole::Learner,
    );
    let out = step(
        &mut core,
        Input::SnapshotInstalled {
            lsn: Lsn(10),
            epoch: Epoch(2),
            members_lsn: Lsn(7),
            members,
        },
    );
    assert_eq!(members_changed(&out), vec![(Lsn(7), members)]);
    assert_eq!(core.members(), members);
    assert_eq!(core.members_lsn(), Lsn(7));
    assert_eq!(core.members_at(Lsn(10)), (Lsn(7), members));
    assert_eq!(core.commit_lsn(), Lsn(10));
    assert!(
        !core.is_voter(),
        "a learner in the snapshot's configuration"
    );
}

/// A node that is not a voter in its own latest configuration grants (pre-)votes like any
/// node that can vouch for its log: the candidate counts them in its own configuration, and a
/// learner promoted by a record it has not received yet must be able to vote. It says it could
/// vote (`Health::can_vote`), so that a primary may promote it. A learner of the configuration
/// stands too (its own vote not counting: see the next test); a node that is no member at all
/// does not.
#[test]
fn a_node_that_is_not_a_voter_in_its_latest_configuration_votes_and_stands_only_as_a_member() {
    let two = Members::voters_of(&[N1, N2]).unwrap();
    for (members, voter, stands) in [
        (seed3(), true, true),
        (plus(two, N3, MemberRole::Learner), false, true),
        (two, false, false),
    ] {
        let node = || {
            new_core(
                config(N3, &[1, 2, 3]),
                with_configs(log_of(&[(1, 3)]), &[(3, members)]),
                meta_epoch_1(),
            )
        };
        let mut core = node();
        assert_eq!(core.is_voter(), voter, "{members}");
        let out = step(&mut core, Input::Tick { now: ms(600) });
        assert_eq!(pre_vote_sent(&out), stands, "{members}: {out:?}");

        let mut core = node();
        let out = receive(
            &mut core,
            600,
            N1,
            Message::PreVoteRequest {
                epoch: Epoch(2),
                last_lsn: Lsn(3),
                last_epoch: Epoch(1),
            },
        );
        let health = match out[..] {
            [Action::Send {
                message:
                    Message::PreVoteResponse {
                        granted, health, ..
                    },
                ..
            }] => {
                assert!(granted, "{members}");
                health
            }
            _ => panic!("{out:?}"),
        };
        assert_eq!(
            (health.can_vote, health.can_stand),
            (true, stands),
            "{members}"
        );
        let out = receive(
            &mut core,
            600,
            N1,
            Message::VoteRequest {
                epoch: Epoch(2),
                last_lsn: Lsn(3),
                last_epoch: Epoch(1),
                transfer: false,
            },
        );
        let voted = out.contains(&Action::PersistMeta {
            epoch: Epoch(2),
            voted_for: Some(N1),
            learner: false,
        });
        assert!(voted, "{members}: {out:?}");
    }
}

/// A learner of its own latest configuration (not one by its start) stands, and needs a
/// majority of the voters besides itself: its own vote, acknowledgement and copy count for
/// nothing. Elected, it commits and holds its lease only on that majority, and its first
/// change makes it a voter. (Found by the simulator: a primary's records reached only such a
/// learner, whose promotion the new primary's log lacked, before the primary's disk was lost;
/// the voter whose uncommitted change counted the learner as a voter could never get its vote,
/// and the learner never stood.)
#[test]
fn a_learner_of_its_configuration_stands_counting_only_the_voters() {
    let members = plus(
        Members::voters_of(&[N1, N2]).unwrap(),
        N3,
        MemberRole::Learner,
    );
    let mut core = new_core(
        config(N3, &[1, 2, 3]),
        with_configs(log_of(&[(1, 3)]), &[(3, members)]),
        meta_epoch_1(),
    );
    assert!(!core.is_voter());
    let out = step(&mut core, Input::Tick { now: ms(600) });
    assert!(sent_to(&out, N1) && sent_to(&out, N2), "{out:?}");
    let pre_vote = |core: &mut Core, from| {
        receive(
            core,
            600,
            from,
            Message::PreVoteResponse {
                epoch: Epoch(2),
                granted: true,
                voter_epoch: Epoch(1),
                health: STANDS,
                same_log: false,
            },
        )
    };
    // Its own pre-vote and one voter's are not a majority of {1, 2}.
    let out = pre_vote(&mut core, N1);
    assert_eq!(core.epoch(), Epoch(1), "{out:?}");
    let out = pre_vote(&mut core, N2);
    assert!(
        out.contains(&Action::PersistMeta {
            epoch: Epoch(2),
            voted_for: Some(N3),
            learner: false,
        }),
        "{out:?}"
    );
    step(
        &mut core,
        Input::MetaPersisted {
            epoch: Epoch(2),
            voted_for: Some(N3),
            learner: false,
        },
    );
    let vote = |core: &mut Core, from| {
        receive(
            core,
            601,
            from,
            Message::VoteResponse {
                epoch: Epoch(2),
                granted: true,
                vote_wait: Duration::from_millis(500),
            },
        )
    };
    vote(&mut core, N1);
    assert_eq!(core.role(), Role::Candidate);
    vote(&mut core, N2);
    assert_eq!(core.role(), Role::Primary);
    // The epoch-start record (4) commits only once both voters hold it.
    durable(&mut core, 4);
    receive(&mut core, 610, N1, ack(2, 4, 605, 0));
    assert!(core.commit_lsn() < Lsn(4));
    // The lease runs from the older of the two voters' latest: N2's vote (600 ms), not N1's
    // acknowledgement.
    let lease = core.config().lease();
    assert_eq!(
        core.status().lease_until,
        Some(ms(600) + lease),
        "its own acknowledgement does not count"
    );
    let out = receive(&mut core, 611, N2, ack(2, 4, 606, 0));
    assert_eq!(committed(&out), Some(Lsn(4)));
    assert_eq!(core.status().lease_until, Some(ms(605) + lease));
    // Its first change makes it a voter.
    let out = step(&mut core, Input::Tick { now: ms(620) });
    assert_eq!(
        config_written(&out),
        Some((Lsn(5), plus(members, N3, MemberRole::Voter)))
    );
    assert!(core.is_voter());
}

/// `unsafe_testing.skip_single_change` lets two voters in at once: a promotion makes every
/// learner a voter in one record (and a change need not wait for the previous one), so the
/// latest configuration is two voters away from the committed one, which the rules never
/// allow.
#[test]
fn skip_single_change_lets_two_voters_in_at_once() {
    let learners = plus(
        plus(seed3(), N4, MemberRole::Learner),
        N5,
        MemberRole::Learner,
    );
    for skip in [false, true] {
        let mut cfg = config(N1, &[1, 2, 3]);
        cfg.unsafe_testing.skip_single_change = skip;
        let mut core = new_core(
            cfg,
            with_configs(log_of(&[(1, 3)]), &[(3, learners)]),
            meta_epoch_1(),
        );
        elect(&mut core);
        durable(&mut core, 4);
        for id in [N2, N3, N4, N5] {
            receive(&mut core, 610, id, ack(2, 4, 601, 0));
        }
        assert_eq!(core.commit_lsn(), Lsn(4));
        let out = propose_members(&mut core, 620, MembersChange::Promote(N4));
        assert_eq!(config_written(&out).map(|(lsn, _)| lsn), Some(Lsn(5)));
        let (_, committed) = core.members_at(core.commit_lsn());
        if skip {
            assert_eq!(core.members().voter_count(), 5, "{}", core.members());
            assert!(!committed.single_change_to(&core.members()));
        } else {
            assert_eq!(core.members().voter_count(), 4, "{}", core.members());
            assert!(committed.single_change_to(&core.members()));
            assert_eq!(
                propose_members(&mut core, 620, MembersChange::Promote(N5)),
                vec![Action::MembersRefused {
                    reason: MembersRefusal::ChangePending
                }]
            );
        }
    }
}

/// A primary names in every append the backup a switchover would pick: a live application
/// first (node 3 here, though node 2 acknowledged more), else the most up to date.
#[test]
fn the_primary_names_its_successor_in_every_append() {
    let mut p = elected_primary();
    receive(&mut p, 605, N2, ack_with(4, 600, STANDS));
    receive(&mut p, 606, N3, ack_with(3, 600, LIVE));
    let out = step(&mut p, Input::Tick { now: ms(700) });
    for to in [N2, N3] {
        let append = append_to(&out, to).expect("a heartbeat");
        assert_eq!(append.successor, Some(N3), "to {to}");
    }
    // Node 3's application goes away: node 2, the more up to date, is named.
    receive(&mut p, 710, N3, ack_with(4, 700, STANDS));
    let out = step(&mut p, Input::Tick { now: ms(800) });
    assert_eq!(append_to(&out, N2).and_then(|a| a.successor), Some(N2));
}

/// The successor the primary named stands `failover_timeout` and a quarter of the jitter
/// after the primary's last append; any other backup waits at least half the jitter. A
/// failed candidacy retries with the whole random jitter.
#[test]
fn the_named_successor_stands_first() {
    let backup = |node: NodeId| {
        let mut cfg = config(node, &[1, 2, 3]);
        cfg.election_jitter = Duration::from_millis(200);
        new_core(
            cfg,
            log_of(&[(1, 2)]),
            PersistedMeta {
                epoch: Epoch(1),
                voted_for: None,
                learner: false,
            },
        )
    };
    let naming = |successor: NodeId| match append(1, (2, 1), 2, 1, 2, 1_000) {
        Message::Append(append) => Message::Append(Append {
            successor: Some(successor),
            ..append
        }),
        other => other,
    };
    let mut two = backup(N2);
    let mut three = backup(N3);
    receive(&mut two, 1_000, N1, naming(N2));
    receive(&mut three, 1_000, N1, naming(N2));
    let t = two.config().failover_timeout.as_millis() as u64;
    assert!(
        !pre_vote_sent(&step(
            &mut three,
            Input::Tick {
                now: ms(1_000 + t + 99)
            }
        )),
        "another backup stood within half the jitter"
    );
    assert!(!pre_vote_sent(&step(
        &mut two,
        Input::Tick {
            now: ms(1_000 + t + 49)
        }
    )));
    let out = step(
        &mut two,
        Input::Tick {
            now: ms(1_000 + t + 50),
        },
    );
    assert!(
        pre_vote_sent(&out),
        "the successor did not stand at T + J/4: {out:?}"
    );
    // The nomination is used up: should this candidacy fail, the retry waits a random
    // jitter like everyone's.
    assert_eq!(two.st.successor, None);
}

/// A start whose data dir last ran with a longer failover timeout refuses votes for that
/// long: its answers before the start promised as much, and a primary may count on them.
#[test]
fn a_start_after_a_longer_failover_timeout_refuses_votes_that_long() {
    let mut cfg = config(N2, &[1, 2, 3]);
    cfg.previous_vote_wait = Duration::from_millis(5000);
    let mut core = new_core(cfg, log_of(&[(1, 4)]), PersistedMeta::default());
    let request = Message::VoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(4),
        last_epoch: Epoch(1),
        transfer: false,
    };
    let out = receive(&mut core, 4_999, N3, request);
    assert_eq!(
        vote_persisted(&out),
        None,
        "voted 4.999 s after start: {out:?}"
    );
    let out = receive(&mut core, 5_000, N3, request);
    assert_eq!(vote_persisted(&out), Some(N3), "{out:?}");

    // Nor does it stand (a vote for itself) before then, though its own timeout is 500 ms.
    let mut cfg = config(N2, &[1, 2, 3]);
    cfg.previous_vote_wait = Duration::from_millis(5000);
    let mut core = new_core(cfg, log_of(&[(1, 4)]), PersistedMeta::default());
    for at in (100..5_000).step_by(100) {
        let out = step(&mut core, Input::Tick { now: ms(at) });
        assert!(!pre_vote_sent(&out), "stood {at} ms after start: {out:?}");
    }
    // The jitter is at most 200 ms.
    let out = step(&mut core, Input::Tick { now: ms(5_200) });
    assert!(pre_vote_sent(&out), "{out:?}");
}

/// The refusal a start promises for the longer failover timeout is not cut short by what
/// the node hears after the start: an append from the primary (the contact it restarts its
/// wait from is earlier than the start's), a step-down. Seed 7116964 of the simulator: a
/// backup restarted with 250 ms instead of 1 s heard the primary's appends, then voted for
/// a candidate 300 ms later while the paused primary still counted its earlier run's
/// answers towards its lease; the primary served again in the old epoch after the new one
/// was elected.
#[test]
fn an_append_after_a_start_does_not_shorten_its_longer_refusal() {
    let mut cfg = config(N2, &[1, 2, 3]);
    cfg.previous_vote_wait = Duration::from_millis(5000);
    let mut core = new_core(cfg, log_of(&[(1, 4)]), meta_epoch_1());
    // The primary of epoch 1 (node 1) is heard once, 10 ms after the start.
    receive(&mut core, 10, N1, append(1, (4, 1), 4, 1, 4, 9));
    let request = Message::VoteRequest {
        epoch: Epoch(2),
        last_lsn: Lsn(4),
        last_epoch: Epoch(1),
        transfer: false,
    };
    let out = receive(&mut core, 1_000, N3, request);
    assert_eq!(
        vote_persisted(&out),
        None,
        "voted 1 s after start, within the 5 s its previous run promised: {out:?}"
    );
    let out = receive(&mut core, 4_999, N3, request);
    assert_eq!(vote_persisted(&out), None, "{out:?}");
    let out = receive(&mut core, 5_000, N3, request);
    assert_eq!(vote_persisted(&out), Some(N3), "{out:?}");
}

/// Nodes that run with different failover timeouts (a rolling change of the setting): a
/// primary counts each answer towards its lease only for as long as its sender refuses
/// votes, so an old primary with a long timeout, cut off, answers no read once backups with
/// a short one may have elected another primary.
mod mixed_failover_timeouts {
    use super::*;

    /// A few cores wired by a message queue, each input's persists and writes completed at
    /// once; `cut[i]` drops everything to and from node `i`.
    struct Net {
        cores: Vec<Core>,
        queue: VecDeque<(NodeId, NodeId, Message)>,
        cut: Vec<bool>,
    }

    fn index(id: NodeId) -> usize {
        id.get() as usize - 1
    }

    impl Net {
        fn new(configs: Vec<Config>) -> Net {
            let n = configs.len();
            let cores = configs
                .into_iter()
                .enumerate()
                .map(|(i, c)| {
                    Core::new(
                        c,
                        PersistedMeta::default(),
                        RecoveredLog::default(),
                        Start::VOTER,
                        Time::ZERO,
                        i as u64 + 11,
                    )
                    .expect("valid")
                })
                .collect();
            Net {
                cores,
                queue: VecDeque::new(),
                cut: vec![false; n],
            }
        }

        fn run(&mut self, i: usize, input: Input) -> Vec<Action> {
            let me = self.cores[i].config().node_id;
            let mut inputs = VecDeque::from([input]);
            let mut all = Vec::new();
            while let Some(input) = inputs.pop_front() {
                let mut out = Vec::new();
                self.cores[i].step(input, &mut out);
                self.cores[i].validate();
                // No reading of its own: the last input's.
                let now = Time::ZERO;
                for a in &out {
                    match *a {
                        Action::Send { to, message } if !self.cut[i] && !self.cut[index(to)] => {
                            self.queue.push_back((me, to, message));
                        }
                        Action::PersistMeta {
                            epoch,
                            voted_for,
                            learner,
                        } => inputs.push_back(Input::MetaPersisted {
                            epoch,
                            voted_for,
                            learner,
                        }),
                        Action::WriteEpochStart { lsn, epoch }
                        | Action::WriteConfig { lsn, epoch, .. } => {
                            inputs.push_back(Input::Durable { now, lsn, epoch })
                        }
                        Action::WriteProposed {
                            last_lsn, epoch, ..
                        } => inputs.push_back(Input::Durable {
                            now,
                            lsn: last_lsn,
                            epoch,
                        }),
                        Action::WriteReceived { last_lsn, .. } => {
                            let epoch = self.cores[i].epoch_of(last_lsn).expect("written");
                            inputs.push_back(Input::Durable {
                                now,
                                lsn: last_lsn,
                                epoch,
                            })
                        }
                        _ => {}
                    }
                }
                all.extend(out);
            }
            all
        }

        fn deliver(&mut self, now: u64) {
            let mut budget = 10_000;
            while let Some((from, to, message)) = self.queue.pop_front() {
                budget -= 1;
                assert!(budget > 0, "message storm");
                if self.cut[index(from)] || self.cut[index(to)] {
                    continue;
                }
                self.run(
                    index(to),
                    Input::Receive {
                        now: ms(now),
                        from,
                        message,
                    },
                );
            }
        }

        fn tick(&mut self, nodes: &[usize], now: u64) {
            for &i in nodes {
                self.run(i, Input::Tick { now: ms(now) });
            }
            self.deliver(now);
        }

        fn primary_above(&self, epoch: Epoch) -> Option<usize> {
            (0..self.cores.len())
                .find(|&i| self.cores[i].role() == Role::Primary && self.cores[i].epoch() > epoch)
        }
    }

    /// Cuts node 1 (primary of epoch `first`) off from the others at `now`, runs until
    /// `until` ms, has the primary the other two elect commit a write, then asks node 1 for
    /// a lease read: it must not answer below that write.
    fn cut_node_1_and_read_from_it_after_a_commit_elsewhere(
        net: &mut Net,
        first: Epoch,
        mut now: u64,
        until: u64,
    ) {
        net.cut[0] = true;
        let mut new_primary = None;
        while now < until {
            now += 10;
            net.tick(&[0, 1, 2], now);
            if let Some(p) = net.primary_above(first) {
                if new_primary.is_none() {
                    new_primary = Some(p);
                    net.run(
                        p,
                        Input::Propose {
                            now: ms(now),
                            count: 1,
                            bytes: 10,
                            runs: Vec::new(),
                        },
                    );
                    net.deliver(now);
                }
            }
        }
        let p = new_primary.expect("2 and 3 elected one of themselves");
        let acked = net.cores[p].commit_lsn();
        assert!(
            acked > net.cores[0].last_lsn(),
            "the new primary committed a write"
        );
        let out = net.run(0, Input::Read { now: ms(now) });
        let stale = out
            .iter()
            .any(|a| matches!(a, Action::ReadIndex { lsn, .. } if *lsn < acked));
        assert!(
            !stale,
            "node 1 (epoch {first}) answered a lease read below lsn {acked}, committed by node {} in epoch {} at or before {now} ms; node 1 lease_until {:?}: {out:?}",
            p + 1,
            net.cores[p].epoch(),
            net.cores[0].status().lease_until,
        );
    }

    /// A node of three with a 5 s failover timeout (and a 500 ms drift margin).
    fn slow(id: NodeId) -> Config {
        let mut c = config(id, &[1, 2, 3]);
        c.failover_timeout = Duration::from_millis(5000);
        c.clock_drift_margin = Duration::from_millis(500);
        c
    }

    /// A node of three with the default 500 ms timeout and a 200 ms election jitter.
    fn fast(id: NodeId) -> Config {
        let mut c = config(id, &[1, 2, 3]);
        c.election_jitter = Duration::from_millis(200);
        c
    }

    /// Node 1 elected at 5 s and primary for a second, all three connected: its epoch, and
    /// the time reached (ms).
    fn node_1_primary_for_a_second(net: &mut Net) -> (Epoch, u64) {
        net.tick(&[0], 5000);
        assert_eq!(net.cores[0].role(), Role::Primary);
        let first = net.cores[0].epoch();
        let mut now = 5000;
        while now < 6000 {
            now += 50;
            net.tick(&[0, 1, 2], now);
        }
        (first, now)
    }

    #[test]
    fn an_old_primary_with_a_longer_timeout_answers_no_stale_read() {
        let mut net = Net::new(vec![slow(N1), fast(N2), fast(N3)]);
        let (first, now) = node_1_primary_for_a_second(&mut net);
        assert!(net.cores[0].commit_lsn() > Lsn::ZERO);
        // Each backup's answer counts for 500 ms x 4.5 / 5, not the primary's own 4.5 s.
        let lease_until = net.cores[0].status().lease_until.expect("a lease");
        assert!(
            lease_until <= ms(now + 450),
            "lease until {lease_until:?} at {now} ms"
        );
        cut_node_1_and_read_from_it_after_a_commit_elsewhere(&mut net, first, now, 8000);
        assert_ne!(net.cores[0].role(), Role::Primary);
    }

    /// A backup wiped and restarted with a shorter timeout (which the README says not to
    /// do) lost its earlier run's promise to refuse votes. Once the primary hears its new
    /// run, that promise no longer counts towards the lease: before, the primary still
    /// answered lease reads on it after the new run had voted for another primary, which
    /// committed a write.
    #[test]
    fn a_wiped_backup_heard_in_its_new_run_no_longer_holds_the_lease_with_its_old_promise() {
        let mut net = Net::new(vec![slow(N1), slow(N2), fast(N3)]);
        let (first, mut now) = node_1_primary_for_a_second(&mut net);
        // Node 2's data dir is wiped; it restarts at once with a 500 ms timeout, as a node
        // joining an existing cluster (a quarantined learner).
        net.cores[1] = Core::new(
            fast(N2),
            PersistedMeta::default(),
            RecoveredLog::default(),
            Start::WIPED,
            ms(now),
            99,
        )
        .expect("valid");
        // The primary catches it up and promotes it; its quarantine (1.45 s) ends.
        while now < 7600 {
            now += 50;
            net.tick(&[0, 1, 2], now);
        }
        assert!(
            net.cores[1].is_voter(),
            "node 2 promoted and out of quarantine"
        );
        assert_eq!(net.cores[0].role(), Role::Primary);
        // Node 1 is cut off from both.
        cut_node_1_and_read_from_it_after_a_commit_elsewhere(&mut net, first, now, 9500);
    }
}

/// The window goes out in appends of at most `append_bytes_max` bytes (a heartbeat waits
/// behind each on the link), and a record longer than that goes alone.
#[test]
fn appends_carry_at_most_append_bytes_max_and_a_longer_record_goes_alone() {
    let mut p = elected_primary();
    receive(&mut p, 605, N2, ack(2, 4, 600, 0));
    receive(&mut p, 606, N3, ack(2, 4, 600, 0));
    assert_eq!(p.commit_lsn(), Lsn(4));
    let limit = p.config.append_bytes_max;
    assert_eq!(limit, 1 << 20);
    // Ten records of 300 kB: three to an append.
    let out = step(
        &mut p,
        Input::Propose {
            now: ms(620),
            count: 10,
            bytes: 3_000_000,
            runs: Vec::new(),
        },
    );
    let appends = appends_to(&out, N2);
    assert!(!appends.is_empty(), "{out:?}");
    let mut next = Lsn(5);
    for append in &appends {
        assert_eq!(append.first_lsn, next, "{appends:?}");
        let count = append.last_lsn.get() + 1 - append.first_lsn.get();
        assert!((1..=3).contains(&count), "{count} records: {appends:?}");
        next = append.last_lsn.next();
    }
    // The window (2 MiB) holds six of them until node 2 answers.
    assert_eq!(next, Lsn(11), "{appends:?}");
    receive(&mut p, 630, N2, ack(2, 14, 620, 0));
    // One record of 1.5 MB, alone, once the window is empty.
    let out = step(
        &mut p,
        Input::Propose {
            now: ms(640),
            count: 1,
            bytes: 1_500_000,
            runs: Vec::new(),
        },
    );
    let long = append_to(&out, N2).expect("an append of the long record");
    assert_eq!((long.first_lsn, long.last_lsn), (Lsn(15), Lsn(15)));
}

/// A proposal of a few long records among many short ones (an application's bulk writes
/// queued with other clients' small ones, in one driver append) comes with a run per long
/// record (`Input::Propose`): no append carries two of the long ones, and the window holds.
#[test]
fn long_records_among_short_ones_in_one_proposal_go_one_to_an_append() {
    let mut p = elected_primary();
    receive(&mut p, 605, N2, ack(2, 4, 600, 0));
    receive(&mut p, 606, N3, ack(2, 4, 600, 0));
    assert_eq!(p.commit_lsn(), Lsn(4));
    // LSNs 5..=12 are 8 records of a KiB under 1 MiB (with their header), 13..=36 are 24
    // of 128 bytes.
    let long = (1u64 << 20) - 1024 + 28;
    let mut runs = vec![(1, long); 8];
    runs.push((24, 24 * 128));
    let out = step(
        &mut p,
        Input::Propose {
            now: ms(620),
            count: 32,
            bytes: 8 * long + 24 * 128,
            runs,
        },
    );
    let appends = appends_to(&out, N2);
    assert!(!appends.is_empty());
    let mut shipped = 0;
    for append in &appends {
        let longs = (append.first_lsn.get()..=append.last_lsn.get())
            .filter(|lsn| (5..=12).contains(lsn))
            .count() as u64;
        assert!(longs <= 1, "an append of {longs} long records: {appends:?}");
        shipped += longs * long;
    }
    assert!(
        shipped <= p.config.inflight_bytes_max,
        "{shipped} bytes shipped at once: {appends:?}"
    );
}
