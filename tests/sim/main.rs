//! Deterministic simulation of the replication core (DESIGN.md, testing layer 2).
//!
//! Each run is one `u64` seed: cluster size (even seeds 3 voters, odd seeds 5, and up to two
//! spare ids outside the configuration), windows, network quality, clock rates, every fault and
//! every membership change follow from it. The real `understudy::core::Core` runs
//! against a simulated network (`network.rs`), disks that lose unsynced writes on a crash
//! (`disk.rs`), drifting clocks (`clock.rs`) and a client workload with an oracle
//! (`workload.rs`); `cluster.rs` drives them and checks the invariants in `invariants/` as it
//! goes, and `Core::validate()` after every step.
//!
//! ```text
//! cargo test --test sim                          # the default seeds (3- and 5-node runs)
//! SIM_SEEDS=20000 cargo test --release --test sim   # more seeds
//! SIM_FIRST_SEED=5000000 SIM_SEEDS=20000 cargo test --release --test sim   # other seeds
//! SIM_SEED=1234 cargo test --test sim            # replay one seed (printed on failure)
//! SIM_BREAK=lease SIM_SEED=7 cargo test --test sim   # replay with a rule switched off
//! SIM_REPORT=1 cargo test --test sim -- --nocapture  # seeds/s and failover times
//! ```
//!
//! `SIM_BREAK` switches off one safety rule in the core: `vote_log_check` (the up-to-date
//! check on votes), `lease`, `fresh_votes` (the vote quarantine of a node whose data dir was
//! wiped), `learner` (every node a voter whatever its data dir lost) or `lease_echo` (the
//! lease counted from a send time echoed across primaries and clamped to the receiver's
//! clock) or `members` (membership changes of more than one voter at once: two learners made
//! voters together, and the partition that such a change cannot survive) or `read_index` (a
//! lease read answered with the commit LSN alone, not at least the epoch start). The
//! `checker_finds_*` tests do so and must find a violation, which shows the checker can fail.

mod clock;
mod cluster;
mod disk;
mod invariants;
mod network;
mod workload;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use cluster::{ms, run_seed, RunOptions, RunReport};
use understudy::core::TestKnobs;

/// Seeds in the default run: sized to stay well under a minute on two cores in the dev profile.
const DEFAULT_SEEDS: u64 = 6_000;
/// Seeds outside the default range that once failed, run with it every time: each found a
/// bug that the default seeds missed (7116964: a restart with a shorter failover timeout
/// whose longer vote refusal an append cut short, two primaries serving).
const FOUND_SEEDS: &[u64] = &[7_116_964];
/// How many seeds a rule-breaking test may try before declaring the checker blind.
const BREAK_SEEDS_MAX: u64 = 400;
/// ... and the one for the old lease echo, whose violation needs several faults to line up.
const LEASE_ECHO_SEEDS_MAX: u64 = 60_000;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

fn knobs_from_env() -> TestKnobs {
    let mut knobs = TestKnobs::default();
    if let Ok(rules) = std::env::var("SIM_BREAK") {
        for rule in rules.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            match rule {
                "vote_log_check" => knobs.skip_vote_log_check = true,
                "lease" => knobs.skip_lease = true,
                "fresh_votes" => knobs.skip_fresh_quarantine = true,
                "learner" => knobs.skip_learner = true,
                "lease_echo" => knobs.old_lease_echo = true,
                "members" => knobs.skip_single_change = true,
                "read_index" => knobs.skip_read_epoch_start = true,
                other => panic!(
                    "SIM_BREAK={other:?}: known rules are vote_log_check, lease, fresh_votes, learner, lease_echo, members and read_index"
                ),
            }
        }
    }
    knobs
}

/// Runs `seeds` on all cores; stops at the first failure if `stop_on_failure`. Returns the
/// reports and the failures (seed, message), lowest seed first.
fn run_seeds(
    seeds: impl Iterator<Item = u64> + Send,
    options: RunOptions,
    stop_on_failure: bool,
) -> (Vec<RunReport>, Vec<(u64, String)>) {
    let seeds: Vec<u64> = seeds.collect();
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let reports = Mutex::new(Vec::new());
    let failures = Mutex::new(Vec::new());
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(seeds.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { return };
                match run_seed(seed, options) {
                    Ok(report) => reports.lock().expect("no panics while held").push(report),
                    Err(message) => {
                        failures
                            .lock()
                            .expect("no panics while held")
                            .push((seed, message));
                        if stop_on_failure {
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().expect("threads joined");
    failures.sort_by_key(|(seed, _)| *seed);
    (reports.into_inner().expect("threads joined"), failures)
}

fn percentiles(mut values: Vec<u64>) -> String {
    if values.is_empty() {
        return "none".to_string();
    }
    values.sort_unstable();
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} min {:.0}ms, median {:.0}ms, p90 {:.0}ms, p99 {:.0}ms, max {:.0}ms",
        values.len(),
        ms(values[0]),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(values[values.len() - 1])
    )
}

fn print_report(reports: &[RunReport], elapsed: std::time::Duration) {
    let seeds = reports.len() as f64;
    let steps: u64 = reports.iter().map(|r| r.steps).sum();
    println!(
        "sim: {} seeds in {:.1}s = {:.1} seeds/s ({:.0} steps/seed, {:.0} simulated ms/seed)",
        reports.len(),
        elapsed.as_secs_f64(),
        seeds / elapsed.as_secs_f64(),
        steps as f64 / seeds,
        reports.iter().map(|r| ms(r.sim_ns)).sum::<f64>() / seeds
    );
    for nodes in [3, 5] {
        let of_size: Vec<&RunReport> = reports.iter().filter(|r| r.seed_voters == nodes).collect();
        if of_size.is_empty() {
            continue;
        }
        println!("  {nodes} voters in the seed, {} seeds:", of_size.len());
        println!(
            "    clean failover (primary killed -> next commit): {}",
            percentiles(
                of_size
                    .iter()
                    .map(|r| r.clean_failover_ns)
                    .filter(|&ns| ns > 0)
                    .collect()
            )
        );
        println!(
            "    failover under faults:                          {}",
            percentiles(
                of_size
                    .iter()
                    .flat_map(|r| r.failovers_under_faults_ns.iter().copied())
                    .collect()
            )
        );
        println!(
            "    heal -> first commit:                           {}",
            percentiles(of_size.iter().map(|r| r.heal_to_commit_ns).collect())
        );
        let fastest = of_size
            .iter()
            .min_by_key(|r| r.clean_failover_ns)
            .map(|r| r.seed);
        let slowest = of_size
            .iter()
            .max_by_key(|r| r.clean_failover_ns)
            .map(|r| r.seed);
        println!("    clean failover extremes: fastest seed {fastest:?}, slowest seed {slowest:?}");
        let committed: usize = of_size.iter().map(|r| r.committed).sum();
        let unknown: usize = of_size.iter().map(|r| r.unknown).sum();
        let rejected: u64 = of_size.iter().map(|r| r.rejected).sum();
        let reads: u64 = of_size.iter().map(|r| r.reads).sum();
        let reads_refused: u64 = of_size.iter().map(|r| r.reads_refused).sum();
        let snapshots: u64 = of_size.iter().map(|r| r.snapshots_installed).sum();
        let elections: u64 = of_size.iter().map(|r| r.elections).sum();
        println!(
            "    proposals: {committed} committed, {unknown} unknown, {rejected} rejected; {elections} promotions, {snapshots} snapshots installed"
        );
        let deposed: u64 = of_size.iter().map(|r| r.reads_deposed).sum();
        println!(
            "    lease reads: {reads} completed ({deposed} of them after their node stopped being primary of their epoch), {reads_refused} refused"
        );
        let with_spares = of_size.iter().filter(|r| r.nodes > r.seed_voters).count();
        let changes: u64 = of_size.iter().map(|r| r.members_changes).sum();
        let committed: u64 = of_size.iter().map(|r| r.members_committed).sum();
        let mut refused = [0u64; 5];
        for r in &of_size {
            for (total, n) in refused.iter_mut().zip(r.members_refused) {
                *total += n;
            }
        }
        let mut final_voters = [0usize; 8];
        for r in &of_size {
            final_voters[r.final_voters.min(7)] += 1;
        }
        println!(
            "    membership: {with_spares} runs with spare ids; {changes} changes written, {committed} config records committed; refused (not primary, change pending, not caught up, no quorum, other): {refused:?}; runs ending with 3/4/5/6/7 voters: {:?}",
            &final_voters[3..]
        );
    }
}

/// Every invariant holds on every default seed (or `SIM_SEEDS` from `SIM_FIRST_SEED`, or
/// the one `SIM_SEED`), and on every [`FOUND_SEEDS`] seed.
#[test]
fn simulated_clusters_keep_invariants() {
    let options = RunOptions {
        knobs: knobs_from_env(),
        scripted: false,
    };
    let started = Instant::now();
    let (reports, failures) = match env_u64("SIM_SEED") {
        Some(seed) => run_seeds(std::iter::once(seed), options, true),
        None => {
            let first = env_u64("SIM_FIRST_SEED").unwrap_or(0);
            let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
            let range = first..first.saturating_add(count);
            let found = FOUND_SEEDS
                .iter()
                .copied()
                .filter(|seed| !range.contains(seed))
                .collect::<Vec<_>>();
            run_seeds(range.chain(found), options, false)
        }
    };
    if std::env::var_os("SIM_REPORT").is_some() || env_u64("SIM_SEED").is_some() {
        print_report(&reports, started.elapsed());
    }
    if let Some((_, message)) = failures.first() {
        let others: Vec<u64> = failures
            .iter()
            .skip(1)
            .map(|(seed, _)| *seed)
            .take(20)
            .collect();
        panic!(
            "{message}\n({} failing seeds; others: {others:?})",
            failures.len()
        );
    }
}

/// A backup cut off for several failover timeouts rejoins without deposing the healthy primary
/// (pre-vote and the refusal to vote while a primary is heard), on 3- and 5-node clusters.
#[test]
fn partitioned_backup_rejoins_without_deposing_the_primary() {
    for seed in 0..20 {
        if let Err(message) = cluster::rejoin_after_partition(seed) {
            panic!("{message}");
        }
    }
}

/// Finds the first seed on which the checker reports a violation with `knobs` set.
fn checker_finds(knobs: TestKnobs, expect: &str) {
    checker_finds_within(knobs, &[expect], BREAK_SEEDS_MAX);
}

/// [`checker_finds`], trying up to `seeds_max` seeds; the failure must name one of `expect`.
fn checker_finds_within(knobs: TestKnobs, expect: &[&str], seeds_max: u64) {
    checker_finds_beyond(knobs, expect, &[], seeds_max);
}

/// [`checker_finds_within`], passing over seeds whose failure names one of `skip` (a direct
/// check of the rule switched off, when the test means to show what breaking it leads to).
fn checker_finds_beyond(knobs: TestKnobs, expect: &[&str], skip: &[&str], seeds_max: u64) {
    if env_u64("SIM_SEED").is_some() {
        return; // A replay runs only the seed asked for.
    }
    let options = RunOptions {
        knobs,
        scripted: false,
    };
    // Batches keep the search short when a violation is found early.
    let batch_len = 50.max(seeds_max / 100);
    for batch in 0..seeds_max.div_ceil(batch_len) {
        let stop_on_failure = skip.is_empty();
        let (_, failures) = run_seeds(
            batch * batch_len..(batch + 1) * batch_len,
            options,
            stop_on_failure,
        );
        let found = failures
            .iter()
            .find(|(_, message)| !skip.iter().any(|skip| message.contains(skip)));
        if let Some((seed, message)) = found {
            println!("with the rule switched off, seed {seed} fails as it should:\n{message}");
            assert!(
                expect.iter().any(|expect| message.contains(expect)),
                "seed {seed} failed, but not on any of {expect:?}:\n{message}"
            );
            return;
        }
    }
    panic!("no violation in {seeds_max} seeds with {knobs:?}: the checker cannot see this rule");
}

/// Without the up-to-date check on votes, a stale node wins and acknowledged records vanish.
#[test]
fn checker_finds_lost_writes_without_vote_log_check() {
    checker_finds(
        TestKnobs {
            skip_vote_log_check: true,
            ..TestKnobs::default()
        },
        "invariant",
    );
}

/// Without the epoch start in a lease read's index, a new primary answers reads from before
/// writes its predecessor acknowledged (its commit LSN lags until its epoch start commits).
#[test]
fn checker_finds_stale_reads_without_epoch_start_in_read_index() {
    checker_finds(
        TestKnobs {
            skip_read_epoch_start: true,
            ..TestKnobs::default()
        },
        "invariant 6",
    );
}

/// Without the lease, a cut-off primary keeps serving after another node is elected.
#[test]
fn checker_finds_stale_primary_without_lease() {
    checker_finds(
        TestKnobs {
            skip_lease: true,
            ..TestKnobs::default()
        },
        "invariant 4",
    );
}

/// Without the learner state, a node that lost its disk votes with the log it has left and
/// elects a candidate that lacks a record acknowledged before the loss.
#[test]
fn checker_finds_lost_writes_without_learners() {
    checker_finds(
        TestKnobs {
            skip_learner: true,
            ..TestKnobs::default()
        },
        "invariant",
    );
}

/// With the lease counted from an echoed send time of another primary's clock (clamped to the
/// receiver's), a new primary cut off from its backups keeps serving after the next is elected.
/// It takes a new primary whose clock is behind an earlier one's, an acknowledgement held up
/// by a retransmission and the primary cut off just then: rare, so many seeds (tens of
/// seconds).
#[test]
fn checker_finds_overlapping_primaries_with_the_old_lease_echo() {
    checker_finds_within(
        TestKnobs {
            old_lease_echo: true,
            ..TestKnobs::default()
        },
        &["invariant 4"],
        LEASE_ECHO_SEEDS_MAX,
    );
}

/// With changes of two voters at once (3 voters made 5 by promoting two learners together),
/// and the network split just then between the old voters but the primary (a majority of the
/// old configuration) and the primary with the new voters (a majority of the new one), each
/// side elects or keeps a primary: two primaries in one epoch, diverging logs or lost
/// committed records, on most seeds. Only a safety invariant counts, not liveness.
#[test]
fn checker_finds_split_brain_with_two_voter_changes() {
    // Invariant 5 checks the rule itself and may fire first on a seed; past those, a seed
    // must show what the broken rule leads to.
    checker_finds_beyond(
        TestKnobs {
            skip_single_change: true,
            ..TestKnobs::default()
        },
        &[
            "invariant 1 ",
            "invariant 2 ",
            "invariant 3 ",
            "invariant 4 ",
            "invariant core assertion",
        ],
        &["invariant 5 "],
        BREAK_SEEDS_MAX,
    );
}

/// Without the quarantine or the learner state, a node whose data dir was wiped votes at once:
/// again in an epoch it voted in before, or with the log it lost.
#[test]
fn checker_finds_violations_when_a_wiped_node_votes_at_once() {
    checker_finds(
        TestKnobs {
            skip_fresh_quarantine: true,
            skip_learner: true,
            ..TestKnobs::default()
        },
        "invariant",
    );
}
