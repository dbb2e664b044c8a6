//! Runs the short version of every crash-and-restart script in `tests/scripts/` against the
//! binaries this build made, one script at a time (each starts its own 3-node cluster and
//! its timing must not compete with another's). A script's output is printed when it fails.
//!
//! The long versions are run by hand, e.g. `tests/scripts/kill_random.sh --cycles 200`
//! (tests/scripts/README.md). `UNDERSTUDY_KEEP_TEMP=1` keeps a run's directory.

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// One script at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The exit status a script uses to say it cannot run here (it prints why).
const SKIP: i32 = 77;

/// The key-value example's binary: `cargo test` builds the examples beside the test
/// binaries (`target/<profile>/examples/`); built here if it is missing.
fn kv_example() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    let kv = profile_dir.join("examples").join("kv");
    if !kv.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "kv"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build --example kv");
        assert!(status.success(), "cargo build --example kv failed");
    }
    kv
}

fn run_script(name: &str, args: &[&str]) {
    run_script_with(name, args, &[]);
}

/// `run_script` with variables set in the script's environment.
fn run_script_with(name: &str, args: &[&str], vars: &[(&str, &str)]) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name);
    let mut command = Command::new("bash");
    command
        .arg(&script)
        .args(args)
        .env("UNDERSTUDY_BIN", env!("CARGO_BIN_EXE_understudy"))
        .env("CHAOS_BIN", env!("CARGO_BIN_EXE_understudy-chaos"))
        .env("KV_BIN", kv_example())
        .envs(vars.iter().copied());
    let started = std::time::Instant::now();
    let output = support::output_within(command, Duration::from_secs(240));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.code() == Some(SKIP) {
        eprintln!("skipped {name}: {}", stdout.trim());
        return;
    }
    assert!(
        output.status.success(),
        "{name} {args:?} failed ({:?}) after {:?}\n--- stdout ---\n{stdout}\n--- stderr (tail) ---\n{}",
        output.status,
        started.elapsed(),
        tail(&stderr, 60)
    );
    eprintln!("{name} passed in {:?}:\n{stdout}", started.elapsed());
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn kill_primary_loses_no_acknowledged_write() {
    run_script("kill_primary.sh", &["--cycles", "1"]);
}

/// Pipelines of 8 writes of 300 KB: the key-value server queues each as several records
/// of up to a MiB at once, the primary ships them to the backups in appends of a MiB, and
/// a kill can fall between them.
#[test]
fn kill_primary_under_pipelined_large_writes_loses_no_acknowledged_write() {
    run_script(
        "kill_primary.sh",
        &["--cycles", "1", "--pipeline", "8", "--value-len", "300000"],
    );
}

#[test]
fn kill_random_node_repeatedly_loses_no_acknowledged_write() {
    run_script("kill_random.sh", &["--cycles", "3"]);
}

/// Every process in a time namespace of its own, its monotonic and boot-time clocks set
/// back to 30 s after boot or ahead by up to a year, drawn again at each restart
/// (`CLOCK_SKEW` in `lib.sh`).
#[test]
fn kill_random_node_with_skewed_clocks_loses_no_acknowledged_write() {
    run_script_with("kill_random.sh", &["--cycles", "3"], &[("CLOCK_SKEW", "1")]);
}

/// Cut nodes and links, delays, resets, kills, stops and SIGTERMs, overlapping, with skewed
/// clocks.
#[test]
fn overlapping_faults_lose_no_acknowledged_write() {
    run_script_with("nemesis.sh", &["--steps", "12"], &[("CLOCK_SKEW", "1")]);
}

#[test]
fn paused_primary_does_not_serve_when_it_wakes() {
    run_script("pause_primary.sh", &["--cycles", "1"]);
}

#[test]
fn partitioned_primary_stops_serving_and_majority_elects() {
    run_script("partition_primary.sh", &["--cycles", "1"]);
}

#[test]
fn flapping_link_causes_no_split_brain_and_few_elections() {
    run_script("flapping_link.sh", &["--flaps", "6"]);
}

/// Needs root to mount a tmpfs; the script exits 77 (skipped, with the reason) without it.
#[test]
fn full_disk_stops_acknowledging_without_corruption_and_recovers() {
    run_script("disk_full.sh", &[]);
}

#[test]
fn flipped_byte_in_a_sealed_segment_is_detected_and_never_served() {
    run_script("flip_bytes.sh", &[]);
}

#[test]
fn wiped_backup_catches_up_from_the_primary() {
    run_script("wipe_backup.sh", &[]);
}

/// A log that lost records while `meta` survived: the node is a learner (its log floor),
/// so the cluster waits for the primary rather than elect the node that lacks the writes.
#[test]
fn wiped_log_with_meta_kept_makes_a_learner_and_loses_nothing() {
    run_script("lose_log.sh", &["--mode", "wipe"]);
}

#[test]
fn truncated_log_with_meta_kept_makes_a_learner_and_loses_nothing() {
    run_script("lose_log.sh", &["--mode", "truncate"]);
}

#[test]
fn deleted_segment_with_meta_kept_makes_a_learner_and_loses_nothing() {
    run_script("lose_log.sh", &["--mode", "segment"]);
}

/// The log and its floor deleted together, `meta` kept: `meta` records that a floor is kept,
/// so the node is a learner all the same.
#[test]
fn log_and_floor_deleted_with_meta_kept_makes_a_learner_and_loses_nothing() {
    run_script("lose_log.sh", &["--mode", "floor"]);
}

/// The last 8 KiB of the log lost, the node killed under writes: the records it
/// acknowledged last are below its floor too.
#[test]
fn log_tail_lost_right_after_acknowledging_makes_a_learner_and_loses_nothing() {
    run_script("lose_log.sh", &["--mode", "tail"]);
}

#[test]
fn kill_during_a_snapshot_and_a_snapshot_transfer_loses_nothing() {
    run_script("kill_snapshot.sh", &["--cycles", "2"]);
}

/// A member removed (a backup, then the primary, then a backup) while it keeps running must
/// learn of its removal; then it is wiped, added back, becomes a voter again and takes over.
/// The third node wiped catches up from a primary absent from some of the log's
/// configurations.
#[test]
fn removed_members_learn_of_it_and_come_back_wiped_losing_nothing() {
    run_script("membership_churn.sh", &["--cycles", "3"]);
}

/// Five nodes: a member removed while another is down, and the primary killed the moment the
/// removal commits; the removed node must learn of it from whichever primary follows.
#[test]
fn a_removal_outlives_its_primary_and_reaches_the_removed_node() {
    run_script("membership_kill.sh", &["--cycles", "2"]);
}

#[test]
fn rolling_restart_with_sigterm_loses_nothing() {
    run_script("rolling_restart.sh", &["--rounds", "1"]);
}

#[test]
fn killed_application_on_the_primary_hands_over_and_loses_nothing() {
    run_script("app_kill.sh", &["--mode", "kill", "--trials", "1"]);
}

#[test]
fn hung_application_on_the_primary_hands_over_and_loses_nothing() {
    run_script("app_kill.sh", &["--mode", "stop", "--trials", "1"]);
}

#[test]
fn supervised_application_is_restarted_in_place_without_a_failover() {
    run_script("app_kill.sh", &["--mode", "supervised", "--trials", "1"]);
}

#[test]
fn hung_supervised_application_is_killed_and_restarted_in_place() {
    run_script(
        "app_kill.sh",
        &["--mode", "supervised-stop", "--trials", "1"],
    );
}

/// Follow mode with the system's redis-server (Debian's redis-server and redis-tools;
/// `.ci/run` installs them): a kill -9 of the primary node, then of a backup, under
/// redis-benchmark and a checking writer.
#[test]
fn follow_redis_kill_random_node_loses_no_acknowledged_set() {
    run_script("follow_redis.sh", &["--cycles", "2"]);
}

/// Follow mode: both backups' copies of Redis's directory wiped, cut, changed or missing a
/// file behind their sidecars' backs (while they run), then the primary killed: the backup
/// promoted must find its copy is not the log's and rebuild it before Redis starts.
#[test]
fn follow_redis_damaged_copies_are_rebuilt_before_they_serve() {
    for mode in ["wipe", "truncate", "flip", "drop"] {
        run_script("follow_damage.sh", &["--mode", mode, "--keys", "1000"]);
    }
    // A changed byte keeps the file's length: found when the schedule asks for a snapshot
    // of the copy, which is refused.
    run_script(
        "follow_damage.sh",
        &["--mode", "flip", "--keys", "1000", "--snapshot"],
    );
}

/// The same, the backups restarted on their damaged copies before the primary is killed.
#[test]
fn follow_redis_damaged_copies_are_found_at_start() {
    for mode in ["wipe", "truncate", "flip", "drop"] {
        run_script(
            "follow_damage.sh",
            &["--mode", mode, "--keys", "1000", "--restart"],
        );
    }
}

/// The primary's own incremental AOF cut while Redis serves: the primary must not ship the
/// cut (every copy would lose acknowledged keys, and no Redis could load the file), but
/// rebuild its directory from the log and serve again; nothing is lost.
#[test]
fn follow_redis_primary_refuses_to_ship_a_cut_of_its_own_aof() {
    run_script(
        "follow_damage.sh",
        &["--mode", "truncate", "--keys", "1000", "--on-primary"],
    );
}

/// Follow mode again, the primary then a backup then a random node cut off by the fault
/// proxy, frozen with SIGSTOP (sidecar and Redis together) or sent SIGTERM, with skewed
/// clocks.
#[test]
fn follow_redis_partitioned_stopped_or_terminated_node_loses_no_acknowledged_set() {
    run_script_with(
        "follow_redis.sh",
        &["--cycles", "4", "--faults", "partition,stop,term"],
        &[("CLOCK_SKEW", "1")],
    );
}

/// Follow mode: the primary's Redis killed alone (its sidecar left running), so the
/// sidecar starts it again in place on its directory; nothing acknowledged is lost.
#[test]
fn follow_redis_primarys_redis_killed_alone_is_started_again_and_loses_nothing() {
    run_script("follow_redis.sh", &["--cycles", "3", "--faults", "appkill"]);
}

/// Follow mode: the primary killed 0-400 ms after Redis began an append-only file rewrite,
/// so some kills land while its new base file (10 MB and more, several of the capture's
/// pieces) is renamed into the directory, shipped or committed; nothing acknowledged is
/// lost, and the copies load.
#[test]
fn follow_redis_primary_killed_during_an_aof_rewrite_loses_no_acknowledged_set() {
    run_script("follow_redis.sh", &["--cycles", "4", "--faults", "rewrite"]);
}
