//! A slow disk under a running cluster: every fsync of one node's WAL writer takes 300 ms
//! (`UNDERSTUDY_TEST_FSYNC_DELAY_MS`, a test-only knob of debug builds), while
//! applications on every node answer snapshot requests every 200 ms and the log is cut
//! behind each snapshot (small segments, nothing retained). The cluster runs with a 50 ms
//! heartbeat and a 500 ms failover timeout under a steady write load.
//!
//! The application is a small state machine on the client library: a count and a running
//! digest of every command applied, so that two nodes agree only if they applied the same
//! commands in the same order.
//!
//! What is measured: `understudy_heartbeat_gap_max_seconds` of each backup, the longest
//! time between two appends (heartbeats included) its core loop took in from the primary.
//! It covers both ends: a primary whose loop stops sending, and a backup whose loop stops
//! taking in. A healthy pair keeps it near the heartbeat interval; a loop that waits for
//! an fsync shows the fsync.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::Cluster;
use understudy::client::{BoxError, Driver, Role, StateMachine};
use understudy::Lsn;

/// The fsync delay of the slow node.
const FSYNC_DELAY_MS: u64 = 300;

/// The heartbeat interval of these clusters.
const HEARTBEAT: Duration = Duration::from_millis(50);

/// How late a heartbeat may be on top of the interval: the primary's ticker runs every
/// fifth of an interval, and three sidecars, their applications and the test share two
/// cores (with other builds, on a CI box). Well under the fsync delay, so a loop that waits
/// for one fsync exceeds it.
const GAP_SLACK: Duration = Duration::from_millis(100);

/// The application: how many commands, and an FNV-1a digest over them in order.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
struct Tally {
    count: u64,
    digest: u64,
}

impl StateMachine for Tally {
    type Output = u64;
    fn apply(&mut self, _lsn: Lsn, command: &[u8]) -> u64 {
        self.count += 1;
        let mut digest = self.digest ^ 0xcbf2_9ce4_8422_2325;
        for byte in command {
            digest = (digest ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
        self.digest = digest;
        self.count
    }
    fn snapshot(&self) -> Vec<u8> {
        let mut out = self.count.to_le_bytes().to_vec();
        out.extend_from_slice(&self.digest.to_le_bytes());
        out
    }
    fn restore(&mut self, _lsn: Lsn, snapshot: &[u8]) -> Result<(), BoxError> {
        if snapshot.len() != 16 {
            return Err("a snapshot is 16 bytes".into());
        }
        self.count = u64::from_le_bytes(snapshot[0..8].try_into()?);
        self.digest = u64::from_le_bytes(snapshot[8..16].try_into()?);
        Ok(())
    }
}

type App = Arc<Driver<Tally>>;

/// Three nodes, node `slow` with the fsync delay; snapshots every 200 ms, the log cut right
/// behind each.
fn slow_cluster(slow: u16) -> Cluster {
    let mut cluster = Cluster::new(3);
    cluster.args = [
        "--heartbeat-interval",
        "50ms",
        "--failover-timeout",
        "500ms",
        "--snapshot-interval",
        "200ms",
        "--wal-segment-bytes",
        "65536",
        "--wal-retain-bytes",
        "0",
        "--snapshots-retain",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cluster.node_mut(slow).env.push((
        "UNDERSTUDY_TEST_FSYNC_DELAY_MS".into(),
        FSYNC_DELAY_MS.to_string(),
    ));
    cluster
}

async fn connect(socket: &Path) -> App {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match Driver::connect(socket, Tally::default()).await {
            Ok(driver) => return Arc::new(driver),
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "cannot connect to {}: {e}",
                    socket.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The one node whose application is told it is primary.
async fn wait_primary(apps: &[App], other_than: Option<u16>) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let primaries: Vec<u16> = apps
            .iter()
            .filter(|a| a.is_connected() && a.role().role == Role::Primary)
            .map(|a| a.node_id().get())
            .collect();
        if primaries.len() == 1 && Some(primaries[0]) != other_than {
            return primaries[0];
        }
        assert!(Instant::now() < deadline, "no primary elected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts the cluster, connects an application to every node, and makes `wanted` the
/// primary (by a switchover if the election chose another). Returns the applications.
async fn start(cluster: &mut Cluster, wanted: u16) -> Vec<App> {
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let mut apps = Vec::new();
    for id in 1..=3 {
        apps.push(connect(&cluster.node(id).app_socket).await);
    }
    // A switchover times out when the target has not caught up within the failover
    // timeout, which a 300 ms fsync on a loaded machine can cause right after the election
    // (the node then serves again): ask again, a few times.
    for attempt in 1..=5 {
        let primary = wait_primary(&apps, None).await;
        if primary == wanted {
            return apps;
        }
        if cluster.switchover(primary, wanted) {
            let now = wait_primary(&apps, Some(primary)).await;
            assert_eq!(now, wanted);
            return apps;
        }
        eprintln!("switchover from {primary} to {wanted} failed (attempt {attempt}); asking again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no switchover to {wanted} in five attempts");
}

/// `writers` tasks propose commands of `len` bytes on `app` (the primary) for `period`.
/// Returns how many were committed and how many were refused or failed.
async fn load(app: &App, writers: usize, len: usize, period: Duration) -> (u64, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (app, stop) = (Arc::clone(app), Arc::clone(&stop));
            let (committed, failed) = (Arc::clone(&committed), Arc::clone(&failed));
            tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut command = format!("writer-{w}-command-{i}-").into_bytes();
                    command.resize(len, b'.');
                    match app.propose(command).await {
                        Ok(_) => committed.fetch_add(1, Ordering::Relaxed),
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    i += 1;
                }
            })
        })
        .collect();
    tokio::time::sleep(period).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    (
        committed.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    )
}

/// Waits until `app` has applied everything `primary` has, with the same state.
async fn wait_converged(primary: &App, app: &App) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let target = primary.applied_lsn();
        if app.applied_lsn() == target {
            let (a, b) = (primary.read(|s| *s), app.read(|s| *s));
            if primary.applied_lsn() == target && app.applied_lsn() == target {
                assert_eq!(a, b, "same applied lsn {target}, different states");
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "node {} did not converge: applied {} of {target}",
            app.node_id(),
            app.applied_lsn()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Node `id`'s epoch, from `/status`.
fn epoch_of(cluster: &Cluster, id: u16) -> u64 {
    let (code, body) = support::http_get(cluster.node(id).admin_addr, "/status")
        .unwrap_or_else(|| panic!("node {id} does not answer /status"));
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("/status is JSON");
    status["epoch"].as_u64().expect("/status has the epoch")
}

/// Node `slow` has the slow disk and node `primary` is the primary; under a write load of
/// `writers` writers of `len`-byte commands nobody stands for election (the epoch stays)
/// and no backup sees a heartbeat gap longer than the interval plus [`GAP_SLACK`].
async fn slow_disk_deposes_nobody(slow: u16, primary: u16, writers: usize, len: usize) {
    let mut cluster = slow_cluster(slow);
    let apps = start(&mut cluster, primary).await;
    let epoch = epoch_of(&cluster, primary);
    let (committed, refused) = load(
        &apps[usize::from(primary) - 1],
        writers,
        len,
        Duration::from_secs(8),
    )
    .await;
    let backups: Vec<u16> = (1..=3).filter(|&id| id != primary).collect();
    let gaps: Vec<(u16, Option<f64>)> = backups
        .iter()
        .map(|&id| {
            (
                id,
                cluster.metric(id, "understudy_heartbeat_gap_max_seconds"),
            )
        })
        .collect();
    let fsyncs = cluster
        .metric(slow, "understudy_fsync_seconds_count")
        .unwrap_or(0.0);
    let fsync_seconds = cluster
        .metric(slow, "understudy_fsync_seconds_sum")
        .unwrap_or(0.0);
    eprintln!(
        "slow node {slow} (primary {primary}): {committed} commands of {len} bytes committed, {refused} refused in 8 s; {fsyncs} fsyncs averaging {:.0} ms; max heartbeat gap on the backups: {}",
        fsync_seconds * 1000.0 / fsyncs.max(1.0),
        gaps.iter()
            .map(|(id, gap)| match gap {
                Some(gap) => format!("node {id} {:.1} ms", gap * 1000.0),
                None => format!("node {id} not reported"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        cluster
            .metric(slow, "understudy_log_segments_truncated_total")
            .unwrap_or(0.0)
            > 0.0,
        "the slow node never truncated its log: the test did not exercise it"
    );
    for id in 1..=3 {
        assert!(
            cluster.node_mut(id).is_running(),
            "node {id} stopped:\n{}",
            cluster.logs_tail(20)
        );
        assert_eq!(
            epoch_of(&cluster, id),
            epoch,
            "node {id} is in another epoch: an election happened"
        );
    }
    let limit = (HEARTBEAT + GAP_SLACK).as_secs_f64();
    for (id, gap) in gaps {
        let gap = gap.unwrap_or_else(|| panic!("node {id} reports no heartbeat gap"));
        assert!(
            gap <= limit,
            "node {id} saw {:.0} ms between two appends from the primary (limit {:.0} ms)",
            gap * 1000.0,
            limit * 1000.0
        );
    }
    for app in &apps {
        wait_converged(&apps[usize::from(primary) - 1], app).await;
    }
}

/// The primary's every fsync takes 300 ms (six heartbeat intervals, more than half the
/// failover timeout) while it takes writes (each commit waits for one of its fsyncs, so
/// many writers of larger commands), snapshots and cuts its log: it keeps heartbeating on
/// time and stays primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_with_a_slow_disk_keeps_heartbeating_and_stays_primary() {
    slow_disk_deposes_nobody(1, 1, 64, 4096).await;
}

/// A backup's every fsync takes 300 ms: its loop keeps taking in the primary's heartbeats
/// on time (it would otherwise stand for election, and count time in a way that makes a
/// healthy primary look gone) and nobody is deposed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_with_a_slow_disk_keeps_up_with_heartbeats_and_nobody_is_deposed() {
    slow_disk_deposes_nobody(3, 1, 8, 1024).await;
}

fn log_of(cluster: &Cluster, id: u16) -> String {
    std::fs::read_to_string(&cluster.node(id).log).unwrap_or_default()
}

/// A backup whose every fsync takes 300 ms, under a heavy write load that the other
/// backup commits at full speed, applies committed records before they are durable on its
/// own disk, snapshots them and cuts its log behind the snapshots. Reporting such a cut to
/// the core before the core has heard that the records are durable trips the core's
/// assertion (`through <= durable_lsn`) and kills the node; the backup must instead keep
/// running, truncate, and converge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_with_a_slow_disk_truncates_behind_snapshots_without_aborting() {
    let slow = 3;
    let mut cluster = slow_cluster(slow);
    let apps = start(&mut cluster, 1).await;
    let (committed, _) = load(&apps[0], 8, 1024, Duration::from_secs(8)).await;
    eprintln!("committed {committed} commands of 1 KiB in 8 s");
    assert!(
        cluster.node_mut(slow).is_running(),
        "the slow backup stopped:\n{}",
        cluster.logs_tail(20)
    );
    let log = log_of(&cluster, slow);
    assert!(
        !log.contains("above durable_lsn"),
        "the slow backup aborted"
    );
    assert!(
        cluster
            .metric(slow, "understudy_log_segments_truncated_total")
            .unwrap_or(0.0)
            > 0.0,
        "the slow backup never truncated its log"
    );
    wait_converged(&apps[0], &apps[usize::from(slow) - 1]).await;
}
