//! Membership changes on real processes, under writes: grow 3 -> 5 and shrink back, replace
//! a killed node with a new one (new id, data dir and port), remove the primary. Every
//! change goes through `understudy members`, and every acknowledged write must be in every
//! remaining node's application at the end.

mod support;

use std::time::{Duration, Instant};

use support::journal::*;
use support::{binary, http_get, output_within, wait_until, Cluster};

/// `understudy members ARGS --admin <node id's admin port>`: (success, stdout + stderr).
fn members(cluster: &Cluster, via: u16, args: &[&str]) -> (bool, String) {
    let mut command = std::process::Command::new(binary());
    command
        .arg("members")
        .args(args)
        .arg("--admin")
        .arg(cluster.node(via).admin_addr.to_string());
    let output = output_within(command, Duration::from_secs(40));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `/members` of node `id`: (voters, learners, config committed).
fn config_of(cluster: &Cluster, id: u16) -> Option<(Vec<u64>, Vec<u64>, bool)> {
    let (code, body) = http_get(cluster.node(id).admin_addr, "/members")?;
    if code != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let ids = |key: &str| -> Vec<u64> {
        json["members"][key]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default()
    };
    Some((
        ids("voters"),
        ids("learners"),
        json["members"]["committed"].as_bool() == Some(true),
    ))
}

/// Waits until node `id` reports exactly these voters and no learners, committed.
fn wait_voters(cluster: &Cluster, id: u16, voters: &[u64], timeout: Duration) {
    let ok = wait_until(timeout, || {
        config_of(cluster, id)
            .is_some_and(|(v, l, committed)| v == voters && l.is_empty() && committed)
    });
    assert!(
        ok,
        "node {id} did not reach voters {voters:?}: it has {:?}",
        config_of(cluster, id)
    );
}

/// The seed `--peers` of the first `count` nodes.
fn seed(cluster: &Cluster, count: u16) -> String {
    (1..=count)
        .map(|id| format!("{id}={}", cluster.node(id).peer_addr))
        .collect::<Vec<_>>()
        .join(",")
}

/// A cluster of `total` node slots of which the first `initial` are the founding members;
/// the others join an existing cluster (their `--peers` name everyone, themselves included).
fn cluster_of(initial: u16, total: u16) -> Cluster {
    let mut cluster = Cluster::new(total);
    let founders = seed(&cluster, initial);
    let everyone = cluster.peers.clone();
    for id in 1..=total {
        let node = cluster.node_mut(id);
        if id <= initial {
            node.peers = Some(founders.clone());
        } else {
            node.peers = Some(everyone.clone());
            node.extra = vec!["--initial-cluster-state".into(), "existing".into()];
        }
    }
    for id in 1..=initial {
        cluster.start_node(id);
    }
    cluster
}

/// Adds node `id` through the CLI (asked on node `via`), starts it, connects its driver and
/// waits until it is a voter of `voters`.
async fn add_and_start(
    cluster: &mut Cluster,
    drivers: &Drivers,
    via: u16,
    id: u16,
    voters: &[u64],
) {
    let member = format!("{id}={}", cluster.node(id).peer_addr);
    let (ok, text) = members(cluster, via, &["add", &member]);
    assert!(ok, "members add {member}: {text}");
    cluster.start_node(id);
    set_driver(
        drivers,
        id,
        Some(connect(&cluster.node(id).app_socket).await),
    );
    // A learner until it has caught up and its quarantine is over, then a voter by itself.
    wait_voters(cluster, via, voters, Duration::from_secs(20));
}

async fn finish(
    drivers: &Drivers,
    writers: (
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::sync::Arc<std::sync::Mutex<Oracle>>,
        Writers,
    ),
    remaining: &[u16],
) {
    let (stop, oracle, tasks) = writers;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in tasks {
        task.await.expect("writer");
    }
    wait_converged(drivers, remaining).await;
    let oracle = oracle.lock().unwrap();
    assert!(
        oracle.acked.len() > 200,
        "too few writes: {}",
        oracle.acked.len()
    );
    for &id in remaining {
        let driver = driver(drivers, id).expect("a driver");
        assert_all_acked_present(&oracle, &driver);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_three_to_five_under_writes_and_shrink_back() {
    let mut cluster = cluster_of(3, 5);
    let drivers = connect_some(&cluster, &[1, 2, 3]).await;
    let primary = wait_primary(&drivers, None).await;
    let writers = start_writers(&drivers, 2).await;
    add_and_start(&mut cluster, &drivers, primary, 4, &[1, 2, 3, 4]).await;
    add_and_start(&mut cluster, &drivers, primary, 5, &[1, 2, 3, 4, 5]).await;
    // Five voters: two may be down and writes still commit.
    let before = writers.1.lock().unwrap().acked.len();
    let downs: Vec<u16> = (1..=5).filter(|&id| id != primary).take(2).collect();
    for &id in &downs {
        cluster.kill(id);
        set_driver(&drivers, id, None);
    }
    assert!(
        acked_beyond(&writers.1, before + 200, Duration::from_secs(10)),
        "writes stopped with 3 of 5 voters up"
    );
    for &id in &downs {
        cluster.start_node(id);
        set_driver(
            &drivers,
            id,
            Some(connect(&cluster.node(id).app_socket).await),
        );
    }
    // Shrink back: 5 and 4 leave (whichever is primary now).
    for (id, voters) in [(5u16, &[1u64, 2, 3, 4][..]), (4, &[1, 2, 3][..])] {
        // The two restarted nodes may not have reached the primary yet: until they have, the
        // primary refuses (too few reachable voters), and the operator asks again. And a
        // primary that steps down after writing the change (removing the primary hands over
        // first; elections while the restarted nodes rejoin) cannot say whether it commits:
        // as the command's answer says, the operator looks and asks again, and "not a
        // member" then means that it did.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let via = wait_primary(&drivers, None).await;
            let (ok, text) = members(&cluster, via, &["remove", &id.to_string()]);
            if ok || text.contains(&format!("node {id} is not a member")) {
                break;
            }
            assert!(
                (text.contains("reachable voters")
                    || text.contains("stepped down before the change was committed"))
                    && std::time::Instant::now() < deadline,
                "members remove {id}: {text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let primary = wait_primary(&drivers, None).await;
        wait_voters(&cluster, primary, voters, Duration::from_secs(10));
        set_driver(&drivers, id, None);
        cluster.kill(id);
    }
    let (ok, text) = members(&cluster, 2, &["list"]);
    assert!(ok && text.contains("voter"), "members list: {text}");
    finish(&drivers, writers, &[1, 2, 3]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_replaced_by_a_new_one_on_a_new_port_under_writes() {
    let mut cluster = cluster_of(3, 4);
    let drivers = connect_some(&cluster, &[1, 2, 3]).await;
    let primary = wait_primary(&drivers, None).await;
    let writers = start_writers(&drivers, 2).await;
    // A backup's machine dies for good.
    let dead = (1..=3).find(|&id| id != primary).unwrap();
    cluster.kill(dead);
    set_driver(&drivers, dead, None);
    let survivors: Vec<u64> = (1..=3u64).filter(|&id| id != u64::from(dead)).collect();
    // The replace procedure: add the new node, wait until it votes, remove the dead one.
    let mut with_new = survivors.clone();
    with_new.push(u64::from(dead));
    with_new.push(4);
    with_new.sort_unstable();
    add_and_start(&mut cluster, &drivers, primary, 4, &with_new).await;
    let (ok, text) = members(&cluster, 4, &["remove", &dead.to_string()]);
    assert!(ok, "members remove {dead}: {text}");
    let mut after = survivors.clone();
    after.push(4);
    for id in after.iter().map(|&id| id as u16) {
        wait_voters(&cluster, id, &after, Duration::from_secs(10));
    }
    // The new configuration survives the loss of its primary.
    let primary = wait_primary(&drivers, None).await;
    cluster.kill(primary);
    set_driver(&drivers, primary, None);
    let new_primary = wait_primary(&drivers, Some(primary)).await;
    assert_ne!(new_primary, dead);
    cluster.start_node(primary);
    set_driver(
        &drivers,
        primary,
        Some(connect(&cluster.node(primary).app_socket).await),
    );
    let remaining: Vec<u16> = after.iter().map(|&id| id as u16).collect();
    finish(&drivers, writers, &remaining).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_primary_hands_over_first() {
    let cluster = cluster_of(3, 3);
    let drivers = connect_some(&cluster, &[1, 2, 3]).await;
    let primary = wait_primary(&drivers, None).await;
    let writers = start_writers(&drivers, 2).await;
    let started = Instant::now();
    let (ok, text) = members(&cluster, primary, &["remove", &primary.to_string()]);
    assert!(ok, "members remove {primary}: {text}");
    assert!(text.contains("handing over"), "{text}");
    let new_primary = wait_primary(&drivers, Some(primary)).await;
    let others: Vec<u64> = (1..=3u64).filter(|&id| id != u64::from(primary)).collect();
    wait_voters(&cluster, new_primary, &others, Duration::from_secs(10));
    eprintln!("removed the primary in {:?}", started.elapsed());
    // The removed node is told: the primary ships it the committed record that removed it,
    // so its own latest configuration no longer holds it, and it stands for nothing.
    wait_voters(&cluster, primary, &others, Duration::from_secs(10));
    // The two others keep the primary role between them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_ne!(wait_primary(&drivers, None).await, primary);
    let remaining: Vec<u16> = others.iter().map(|&id| id as u16).collect();
    finish(&drivers, writers, &remaining).await;
}

/// Two data nodes and a witness: either data node may die, writes go on, nothing
/// acknowledged is lost (the witness holds what the survivor may lack, and hands over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_cluster_survives_the_death_of_either_data_node() {
    let mut cluster = Cluster::new(3);
    cluster.node_mut(3).extra = vec!["--witness".into()];
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let drivers = connect_some(&cluster, &[1, 2]).await;
    let writers = start_writers(&drivers, 2).await;
    for round in 0..2 {
        let primary = wait_primary(&drivers, None).await;
        assert_ne!(primary, 3, "the witness serves");
        let before = writers.1.lock().unwrap().acked.len();
        cluster.kill(primary);
        set_driver(&drivers, primary, None);
        let survivor = wait_primary(&drivers, Some(primary)).await;
        assert_ne!(survivor, 3);
        assert!(
            acked_beyond(&writers.1, before + 200, Duration::from_secs(15)),
            "round {round}: writes did not resume on node {survivor}"
        );
        cluster.start_node(primary);
        set_driver(
            &drivers,
            primary,
            Some(connect(&cluster.node(primary).app_socket).await),
        );
        wait_converged(&drivers, &[1, 2]).await;
    }
    // The hard case: the surviving data node lacks records only the witness holds. Kill it,
    // write (committed on the primary and the witness), kill the primary, restart it: the
    // witness refuses it until it has caught up from the witness, which hands over. (A
    // SIGSTOP instead of the kill does not make the case: the records sent to the stopped
    // node wait in its socket's receive buffer, and it reads them all once woken.)
    let primary = wait_primary(&drivers, None).await;
    let other = 3 - primary;
    cluster.kill(other);
    set_driver(&drivers, other, None);
    let before = writers.1.lock().unwrap().acked.len();
    assert!(
        acked_beyond(&writers.1, before + 200, Duration::from_secs(10)),
        "writes did not commit on the primary and the witness"
    );
    cluster.kill(primary);
    set_driver(&drivers, primary, None);
    cluster.start_node(other);
    set_driver(
        &drivers,
        other,
        Some(connect(&cluster.node(other).app_socket).await),
    );
    assert_eq!(wait_primary(&drivers, Some(primary)).await, other);
    let before = writers.1.lock().unwrap().acked.len();
    assert!(
        acked_beyond(&writers.1, before + 200, Duration::from_secs(15)),
        "writes did not resume on node {other}"
    );
    let log = std::fs::read_to_string(&cluster.node(3).log).unwrap_or_default();
    assert!(
        log.contains("this witness was elected"),
        "the witness did not step in"
    );
    cluster.start_node(primary);
    set_driver(
        &drivers,
        primary,
        Some(connect(&cluster.node(primary).app_socket).await),
    );
    // The witness never took a write as primary; whatever it did, it handed over.
    let (code, body) = http_get(cluster.node(3).admin_addr, "/status").expect("witness status");
    assert_eq!(code, 200);
    assert!(body.contains("\"witness\": true"), "{body}");
    finish(&drivers, writers, &[1, 2]).await;
}

/// A change racing a failover: the primary is killed the moment it is asked to add a member.
/// Whether or not the config record survived, the nodes left agree on one configuration,
/// a later change goes through, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_racing_the_primarys_death_leaves_one_configuration() {
    let mut cluster = cluster_of(3, 4);
    let drivers = connect_some(&cluster, &[1, 2, 3]).await;
    let primary = wait_primary(&drivers, None).await;
    let writers = start_writers(&drivers, 2).await;
    let member = format!("4={}", cluster.node(4).peer_addr);
    let mut command = std::process::Command::new(binary());
    command
        .args(["members", "add", &member, "--admin"])
        .arg(cluster.node(primary).admin_addr.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut asked = command.spawn().expect("understudy members add");
    std::thread::sleep(Duration::from_millis(5));
    cluster.kill(primary);
    set_driver(&drivers, primary, None);
    let _ = asked.wait();
    let survivor = wait_primary(&drivers, Some(primary)).await;
    let others: Vec<u16> = (1..=3).filter(|&id| id != primary).collect();
    // The survivors agree, committed, on one of the two configurations.
    let agreed = wait_until(Duration::from_secs(10), || {
        let configs: Vec<_> = others.iter().map(|&id| config_of(&cluster, id)).collect();
        configs
            .iter()
            .all(|c| c.as_ref().is_some_and(|(_, _, committed)| *committed))
            && configs.windows(2).all(|pair| pair[0] == pair[1])
    });
    assert!(
        agreed,
        "the survivors disagree: {:?}",
        others
            .iter()
            .map(|&id| config_of(&cluster, id))
            .collect::<Vec<_>>()
    );
    let (voters, learners, _) = config_of(&cluster, survivor).unwrap();
    assert_eq!(voters, vec![1, 2, 3]);
    assert!(learners.is_empty() || learners == vec![4], "{learners:?}");
    // The old primary comes back; the cluster takes the next change (adding 4, or promoting
    // it once it runs).
    cluster.start_node(primary);
    set_driver(
        &drivers,
        primary,
        Some(connect(&cluster.node(primary).app_socket).await),
    );
    if learners.is_empty() {
        let via = wait_primary(&drivers, None).await;
        let (ok, text) = members(&cluster, via, &["add", &member]);
        assert!(ok, "members add after the race: {text}");
    }
    cluster.start_node(4);
    set_driver(
        &drivers,
        4,
        Some(connect(&cluster.node(4).app_socket).await),
    );
    let via = wait_primary(&drivers, None).await;
    wait_voters(&cluster, via, &[1, 2, 3, 4], Duration::from_secs(20));
    finish(&drivers, writers, &[1, 2, 3, 4]).await;
}

/// A voter that was down while the cluster changed around it: it comes back knowing an old
/// configuration that lacks the node that must now be elected, and must still answer it.
///
/// Voter V is down while node 4 is added and another founder removed, so the configuration
/// is {primary, V, 4}. Then the primary dies and V comes back: only V and 4 are left, 4
/// alone has the whole log, and 4 needs V's vote. V's log names 4 nowhere, so its answers
/// reach 4 only because the transport dials back the address 4 announced in its handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_behind_on_the_configuration_answers_a_candidate_it_does_not_know() {
    let mut cluster = cluster_of(3, 4);
    let drivers = connect_some(&cluster, &[1, 2, 3]).await;
    let primary = wait_primary(&drivers, None).await;
    let writers = start_writers(&drivers, 2).await;
    let backups: Vec<u16> = (1..=3).filter(|&id| id != primary).collect();
    let (behind, removed) = (backups[0], backups[1]);
    cluster.kill(behind);
    set_driver(&drivers, behind, None);
    let mut four = vec![1u64, 2, 3, 4];
    add_and_start(&mut cluster, &drivers, primary, 4, &four).await;
    let (ok, text) = members(&cluster, primary, &["remove", &removed.to_string()]);
    assert!(ok, "members remove {removed}: {text}");
    four.retain(|&id| id != u64::from(removed));
    wait_voters(&cluster, primary, &four, Duration::from_secs(10));
    wait_voters(&cluster, 4, &four, Duration::from_secs(10));
    cluster.kill(removed);
    set_driver(&drivers, removed, None);
    let before = writers.1.lock().unwrap().acked.len();
    cluster.kill(primary);
    set_driver(&drivers, primary, None);
    cluster.start_node(behind);
    set_driver(
        &drivers,
        behind,
        Some(connect(&cluster.node(behind).app_socket).await),
    );
    assert_eq!(wait_primary(&drivers, Some(primary)).await, 4);
    assert!(
        acked_beyond(&writers.1, before + 200, Duration::from_secs(10)),
        "writes did not resume under node 4"
    );
    // The node that was behind learns the configuration from its new primary.
    wait_voters(&cluster, behind, &four, Duration::from_secs(10));
    cluster.start_node(primary);
    set_driver(
        &drivers,
        primary,
        Some(connect(&cluster.node(primary).app_socket).await),
    );
    finish(&drivers, writers, &[primary, behind, 4]).await;
}

/// A removed node that missed its removal (down when it was written) is told of it by the
/// next primary, even though the primary that wrote it died before the node came back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_primary_tells_a_node_removed_while_it_was_down() {
    let mut cluster = cluster_of(4, 4);
    let drivers = connect_some(&cluster, &[1, 2, 3, 4]).await;
    let primary = wait_primary(&drivers, None).await;
    let writers = start_writers(&drivers, 2).await;
    let removed = (1..=4).find(|&id| id != primary).unwrap();
    cluster.kill(removed);
    set_driver(&drivers, removed, None);
    let (ok, text) = members(&cluster, primary, &["remove", &removed.to_string()]);
    assert!(ok, "members remove {removed}: {text}");
    let three: Vec<u64> = (1..=4u64).filter(|&id| id != u64::from(removed)).collect();
    wait_voters(&cluster, primary, &three, Duration::from_secs(10));
    cluster.kill(primary);
    set_driver(&drivers, primary, None);
    let next = wait_primary(&drivers, Some(primary)).await;
    cluster.start_node(removed);
    // Its log still makes it a voter of four; the new primary ships it the removal.
    wait_voters(&cluster, removed, &three, Duration::from_secs(10));
    cluster.start_node(primary);
    set_driver(
        &drivers,
        primary,
        Some(connect(&cluster.node(primary).app_socket).await),
    );
    let remaining: Vec<u16> = three.iter().map(|&id| id as u16).collect();
    assert!(remaining.contains(&next));
    finish(&drivers, writers, &remaining).await;
}
