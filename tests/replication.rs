//! Three real `understudy` processes on loopback replicate an application's log and fail
//! over. The application is a journal built on the client library, one driver per node, in
//! this test process. A write oracle records every command acknowledged as committed (and
//! every outcome-unknown one); after faults, every acknowledged command must be in the new
//! primary's state, and the logs must agree.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::journal::*;
use support::{http_get, wait_until, Cluster};
use understudy::client::{Driver, ProposeError, Role};
use understudy::Lsn;

/// Writes commit on the primary and reach every node's application in the same order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_commit_and_every_application_applies_them_in_order() {
    let cluster = Cluster::start(3);
    let drivers = connect_all(&cluster).await;
    let primary = wait_primary(&drivers, None).await;
    let leader = driver(&drivers, primary).unwrap();
    let mut tasks = Vec::new();
    for task in 0..16 {
        let leader = Arc::clone(&leader);
        tasks.push(tokio::spawn(async move {
            let mut lsns = Vec::new();
            for i in 0..25 {
                lsns.push(
                    leader
                        .propose(format!("w{task}-{i}"))
                        .await
                        .expect("committed"),
                );
            }
            lsns
        }));
    }
    let mut lsns = Vec::new();
    for task in tasks {
        lsns.extend(task.await.unwrap());
    }
    assert_eq!(lsns.len(), 400);
    let distinct: BTreeSet<Lsn> = lsns.iter().copied().collect();
    assert_eq!(distinct.len(), 400, "two commands got the same lsn");
    wait_converged(&drivers, &[1, 2, 3]).await;
    let journals: Vec<Vec<(Lsn, Vec<u8>)>> = (1..=3)
        .map(|id| driver(&drivers, id).unwrap().read(|j| j.entries.clone()))
        .collect();
    assert_eq!(journals[0].len(), 400);
    assert_eq!(journals[0], journals[1]);
    assert_eq!(journals[0], journals[2]);
    // A backup refuses with the primary's id.
    let backup = (1..=3).find(|&id| id != primary).unwrap();
    match driver(&drivers, backup).unwrap().propose("x").await {
        Err(ProposeError::NotPrimary {
            primary: Some(p), ..
        }) => assert_eq!(p.get(), primary),
        other => panic!("expected NotPrimary, got {other:?}"),
    }
}

/// `kill -9` of the primary under load: a new primary is elected, every acknowledged write
/// is in its log, and the old primary, restarted, rejoins as a backup with an identical log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_primary_loses_no_acknowledged_write_and_rejoins_with_an_identical_log() {
    let mut cluster = Cluster::start(3);
    let drivers = connect_all(&cluster).await;
    let old = wait_primary(&drivers, None).await;
    let (stop, oracle, writers) = start_writers(&drivers, 4).await;
    let killed_at = Instant::now();
    cluster.kill(old);
    drivers.lock().unwrap()[usize::from(old) - 1] = None;
    let acked_before = oracle.lock().unwrap().acked.len();
    let new = wait_primary(&drivers, Some(old)).await;
    // Writes resume on the new primary.
    assert!(
        wait_until(Duration::from_secs(10), || oracle
            .lock()
            .unwrap()
            .acked
            .len()
            >= acked_before + 200),
        "writes did not resume after the failover"
    );
    eprintln!(
        "failover: writes resumed {:?} after the kill",
        killed_at.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    // Every acknowledged write is in the new primary's state.
    let survivors: Vec<u16> = (1..=3).filter(|&id| id != old).collect();
    wait_converged(&drivers, &survivors).await;
    assert_all_acked_present(&oracle.lock().unwrap(), &driver(&drivers, new).unwrap());

    // The old primary rejoins and catches up.
    cluster.start_node(old);
    let rejoined = connect(&cluster.node(old).app_socket).await;
    drivers.lock().unwrap()[usize::from(old) - 1] = Some(Arc::clone(&rejoined));
    // One more write so every node's commit point covers the whole log.
    let leader = driver(&drivers, new).unwrap();
    leader
        .propose("after-rejoin")
        .await
        .expect("committed after the rejoin");
    wait_converged(&drivers, &[1, 2, 3]).await;
    assert_eq!(rejoined.role().role, Role::Backup);
    assert_all_acked_present(&oracle.lock().unwrap(), &rejoined);
    // The logs on disk are identical (wal dump reads the files of running nodes).
    let new_log = cluster.wal_dump(new);
    assert!(
        wait_until(Duration::from_secs(10), || cluster.wal_dump(old)
            == cluster.wal_dump(new)),
        "logs differ:\n--- old primary\n{}\n--- new primary\n{}",
        cluster.wal_dump(old),
        new_log
    );
}

/// A planned switchover moves the primary with no acknowledged write lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_moves_the_primary_and_loses_nothing() {
    let cluster = Cluster::start(3);
    let drivers = connect_all(&cluster).await;
    let old = wait_primary(&drivers, None).await;
    let target = (1..=3).find(|&id| id != old).unwrap();
    let (stop, oracle, writers) = start_writers_until(&drivers, 4, 100).await;
    let admin = cluster.node(old).admin_addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_understudy"))
            .args(["switchover", "--admin", &admin, "--to", &target.to_string()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "switchover failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
    let new = wait_primary(&drivers, Some(old)).await;
    assert_eq!(new, target);
    let acked_before = oracle.lock().unwrap().acked.len();
    assert!(wait_until(Duration::from_secs(10), || oracle
        .lock()
        .unwrap()
        .acked
        .len()
        >= acked_before + 100));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    wait_converged(&drivers, &[1, 2, 3]).await;
    let oracle = oracle.lock().unwrap();
    assert!(
        oracle.unknown.is_empty(),
        "a switchover left outcomes unknown: {}",
        oracle.unknown.len()
    );
    for id in 1..=3 {
        assert_all_acked_present(&oracle, &driver(&drivers, id).unwrap());
    }
}

/// A node's `standing` (`voter`, `learner`, `quarantined`) and role from its `/status`.
fn standing(cluster: &Cluster, id: u16) -> Option<(String, String)> {
    let (code, body) = http_get(cluster.node(id).admin_addr, "/status")?;
    if code != 200 {
        return None;
    }
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((
        status["standing"].as_str()?.to_string(),
        status["role"].as_str()?.to_string(),
    ))
}

/// Kills node `id`, empties its data dir (a lost disk) and starts it again as the README's
/// procedure says: `--initial-cluster-state existing`.
fn wipe_and_restart(cluster: &mut Cluster, drivers: &Drivers, id: u16) {
    cluster.kill(id);
    drivers.lock().unwrap()[usize::from(id) - 1] = None;
    std::fs::remove_dir_all(&cluster.node(id).data_dir).expect("wipe the data dir");
    cluster.node_mut(id).extra = vec!["--initial-cluster-state".into(), "existing".into()];
    cluster.start_node(id);
}

/// Proposes `count` commands on `leader`, recording each acknowledged one.
async fn propose_many(leader: &Driver<Journal>, oracle: &Mutex<Oracle>, tag: &str, count: u64) {
    for i in 0..count {
        let command = format!("{tag}-{i}").into_bytes();
        let lsn = leader
            .propose(command.clone())
            .await
            .unwrap_or_else(|e| panic!("proposal {tag}-{i}: {e}"));
        oracle.lock().unwrap().acked.push((lsn, command));
    }
}

/// A backup whose data dir is lost and that restarts empty under writes is a learner (it
/// replicates, but neither votes nor counts towards commit) until it has caught up; a kill -9
/// during that phase leaves it a learner; once promoted it votes, and the cluster fails over
/// with its vote, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_backup_is_a_learner_until_caught_up_and_then_votes() {
    let mut cluster = Cluster::start(3);
    let drivers = connect_all(&cluster).await;
    let primary_id = wait_primary(&drivers, None).await;
    let wiped = primary_id % 3 + 1;
    let (stop, oracle, writers) = start_writers(&drivers, 2).await;

    // The first answer of a node that is catching up: not a voter (a learner, or promoted
    // already but still waiting out the quarantine of its empty data dir).
    let first_standing = |cluster: &Cluster| {
        let mut seen = None;
        wait_until(Duration::from_secs(10), || {
            seen = standing(cluster, wiped).map(|(s, _)| s);
            seen.is_some()
        });
        seen
    };
    wipe_and_restart(&mut cluster, &drivers, wiped);
    let seen = first_standing(&cluster);
    assert!(
        matches!(seen.as_deref(), Some("learner" | "quarantined")),
        "the wiped node answered {seen:?}:\n{}",
        cluster.logs_tail(20)
    );
    // kill -9 in that phase: it comes back as no voter either.
    cluster.kill(wiped);
    cluster.start_node(wiped);
    let seen = first_standing(&cluster);
    assert!(
        matches!(seen.as_deref(), Some("learner" | "quarantined")),
        "restarted during its learner phase, the node answered {seen:?}:\n{}",
        cluster.logs_tail(20)
    );
    let log = std::fs::read_to_string(&cluster.node(wiped).log).unwrap_or_default();
    assert!(log.contains("starting as a learner"), "{log}");
    assert!(
        wait_until(Duration::from_secs(15), || standing(&cluster, wiped)
            .is_some_and(|(s, _)| s == "voter")),
        "the wiped node never became a voter:\n{}",
        cluster.logs_tail(30)
    );
    let log = std::fs::read_to_string(&cluster.node(wiped).log).unwrap_or_default();
    assert!(log.contains("learner promoted"), "{log}");
    let rejoined = connect(&cluster.node(wiped).app_socket).await;
    drivers.lock().unwrap()[usize::from(wiped) - 1] = Some(rejoined);

    // It votes: with the primary gone, the two others elect one of them.
    let acked_before = oracle.lock().unwrap().acked.len();
    cluster.kill(primary_id);
    drivers.lock().unwrap()[usize::from(primary_id) - 1] = None;
    let new = wait_primary(&drivers, Some(primary_id)).await;
    assert!(
        wait_until(Duration::from_secs(10), || oracle
            .lock()
            .unwrap()
            .acked
            .len()
            >= acked_before + 100),
        "writes did not resume after the failover"
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let survivors: Vec<u16> = (1..=3).filter(|&id| id != primary_id).collect();
    wait_converged(&drivers, &survivors).await;
    for id in survivors {
        assert_all_acked_present(&oracle.lock().unwrap(), &driver(&drivers, id).unwrap());
    }
    let _ = new;
}

/// With `--sync-replicas 1` of 3, records acknowledged while one backup was stalled are on the
/// primary and the other backup only. That backup loses its disk and restarts empty; the
/// primary dies while it catches up. The cluster waits (the learner does not vote for the
/// stalled backup, which lacks the records) until the old primary is back, and then loses
/// nothing. Before learners, the wiped node voted once its quarantine was over and the
/// stalled backup was elected without the records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_while_a_wiped_backup_catches_up_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3);
    let drivers = connect_all(&cluster).await;
    let primary_id = wait_primary(&drivers, None).await;
    let holder = primary_id % 3 + 1;
    let stalled = holder % 3 + 1;
    let oracle = Mutex::new(Oracle::default());
    let leader = driver(&drivers, primary_id).unwrap();
    propose_many(&leader, &oracle, "all-three", 20).await;
    // The stalled backup misses these: they commit on the primary and `holder` alone.
    cluster.pause(stalled, true);
    propose_many(&leader, &oracle, "two-copies", 50).await;
    wipe_and_restart(&mut cluster, &drivers, holder);
    cluster.kill(primary_id);
    drivers.lock().unwrap()[usize::from(primary_id) - 1] = None;
    cluster.pause(stalled, false);

    // Nobody may be elected: the stalled backup lacks acknowledged records and the wiped one
    // is a learner. Wait well past its quarantine.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for id in [holder, stalled] {
            if let Some((_, role)) = standing(&cluster, id) {
                assert_ne!(
                    role,
                    "primary",
                    "node {id} was elected while the only full copies were on a dead node and a wiped one:\n{}",
                    cluster.logs_tail(30)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        standing(&cluster, holder).map(|(s, _)| s),
        Some("learner".to_string())
    );

    // The old primary comes back: it holds everything, is elected, and promotes the learner.
    cluster.start_node(primary_id);
    for id in 1..=3u16 {
        if driver(&drivers, id).is_none() {
            let connected = connect(&cluster.node(id).app_socket).await;
            drivers.lock().unwrap()[usize::from(id) - 1] = Some(connected);
        }
    }
    let new = wait_primary(&drivers, None).await;
    let leader = driver(&drivers, new).unwrap();
    propose_many(&leader, &oracle, "after", 5).await;
    wait_converged(&drivers, &[1, 2, 3]).await;
    for id in 1..=3u16 {
        assert_all_acked_present(&oracle.lock().unwrap(), &driver(&drivers, id).unwrap());
    }
    assert!(
        wait_until(Duration::from_secs(10), || standing(&cluster, holder)
            .is_some_and(|(s, _)| s == "voter")),
        "the wiped node was never promoted:\n{}",
        cluster.logs_tail(20)
    );
}

/// Flips one byte in the middle of the oldest sealed segment of node `id`'s log.
fn flip_byte_in_a_sealed_segment(cluster: &Cluster, id: u16) -> std::path::PathBuf {
    let wal_dir = cluster.node(id).data_dir.join("wal");
    let mut segments: Vec<std::path::PathBuf> = std::fs::read_dir(&wal_dir)
        .expect("list the log")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "no sealed segment in {segments:?}");
    let sealed = segments[0].clone();
    let mut bytes = std::fs::read(&sealed).expect("read the segment");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    // Written in place (same inode), as a latent sector error would show up.
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&sealed)
        .expect("open the segment");
    file.seek(SeekFrom::Start(at as u64)).expect("seek");
    file.write_all(&bytes[at..at + 1]).expect("flip the byte");
    sealed
}

/// Whether `understudy wal verify` finds every checksum of node `id`'s log intact.
fn wal_verifies(cluster: &Cluster, id: u16) -> bool {
    std::process::Command::new(support::binary())
        .args(["wal", "verify"])
        .arg(&cluster.node(id).data_dir)
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A flipped byte in a sealed segment, on a backup and then on the primary, is found by the
/// scrub and repaired from a peer's copy while the nodes run: the primary steps down first,
/// the damaged node is a learner until repaired and caught up, and nothing acknowledged is
/// lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_a_sealed_segment_is_repaired_from_a_peer_without_a_restart() {
    let mut cluster = Cluster::new(3);
    cluster.args.extend(
        ["--scrub-interval", "200ms", "--wal-segment-bytes", "65536"]
            .iter()
            .map(|s| s.to_string()),
    );
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let drivers = connect_all(&cluster).await;
    let primary_id = wait_primary(&drivers, None).await;
    let oracle = Mutex::new(Oracle::default());
    let leader = driver(&drivers, primary_id).unwrap();
    // About 300 KB of log: several sealed 64 KiB segments on every node.
    for batch in 0..30 {
        let commands: Vec<Vec<u8>> = (0..100)
            .map(|i| format!("{batch:04}-{i:04}-{}", "x".repeat(80)).into_bytes())
            .collect();
        for command in commands {
            let lsn = leader.propose(command.clone()).await.expect("committed");
            oracle.lock().unwrap().acked.push((lsn, command));
        }
    }
    wait_converged(&drivers, &[1, 2, 3]).await;

    // A backup.
    let backup = primary_id % 3 + 1;
    let repaired = |id: u16| {
        std::fs::read_to_string(&cluster.node(id).log)
            .unwrap_or_default()
            .contains("repaired a damaged record from a peer's copy")
    };
    let damaged = flip_byte_in_a_sealed_segment(&cluster, backup);
    // The scrub runs every 200 ms and may have repaired it already.
    assert!(
        !wal_verifies(&cluster, backup) || repaired(backup),
        "the flip went unnoticed"
    );
    assert!(
        wait_until(Duration::from_secs(10), || repaired(backup)),
        "{} was not repaired:\n{}",
        damaged.display(),
        cluster.logs_tail(30)
    );
    assert!(
        wal_verifies(&cluster, backup),
        "the log still fails verification"
    );
    assert!(
        wait_until(Duration::from_secs(10), || standing(&cluster, backup)
            .is_some_and(|(s, _)| s == "voter")),
        "the repaired backup was not promoted again:\n{}",
        cluster.logs_tail(20)
    );

    // The primary: it steps down before anything else.
    let damaged = flip_byte_in_a_sealed_segment(&cluster, primary_id);
    assert!(
        wait_until(Duration::from_secs(10), || repaired(primary_id)),
        "{} was not repaired:\n{}",
        damaged.display(),
        cluster.logs_tail(30)
    );
    let log = std::fs::read_to_string(&cluster.node(primary_id).log).unwrap_or_default();
    assert!(
        log.contains("a committed record of the log is damaged"),
        "{log}"
    );
    assert!(wal_verifies(&cluster, primary_id));
    let new = wait_primary(&drivers, None).await;
    let leader = driver(&drivers, new).unwrap();
    let lsn = leader.propose("after-repair").await.expect("committed");
    oracle
        .lock()
        .unwrap()
        .acked
        .push((lsn, b"after-repair".to_vec()));
    wait_converged(&drivers, &[1, 2, 3]).await;
    for id in 1..=3u16 {
        assert_all_acked_present(&oracle.lock().unwrap(), &driver(&drivers, id).unwrap());
    }
    assert!(
        wait_until(Duration::from_secs(10), || {
            (1..=3).all(|id| standing(&cluster, id).is_some_and(|(s, _)| s == "voter"))
        }),
        "not every node is a voter again:\n{}",
        cluster.logs_tail(20)
    );
    assert!(
        wait_until(Duration::from_secs(10), || cluster.wal_dump(1)
            == cluster.wal_dump(2)
            && cluster.wal_dump(2) == cluster.wal_dump(3)),
        "the logs differ after the repairs"
    );
}
