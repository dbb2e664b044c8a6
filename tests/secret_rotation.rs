//! Rotating the cluster secret without rebuilding any node: restart each node with the new
//! secret and `--previous-cluster-secret-file` holding the old one, then each again with the
//! new one alone. Writes go on throughout and nothing acknowledged is lost; at the end a node
//! given only the old secret is refused.

mod support;

use std::time::Duration;

use support::journal::*;
use support::{output_within, secret_file, wait_until, Cluster};

/// Every node connected to every other (`/status` peers all `connected`).
fn fully_connected(cluster: &Cluster) -> bool {
    cluster.nodes.iter().all(|node| {
        support::http_get(node.admin_addr, "/status").is_some_and(|(code, body)| {
            code == 200
                && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| {
                    v["peers"].as_array().is_some_and(|peers| {
                        peers.len() == cluster.nodes.len() - 1
                            && peers.iter().all(|p| p["connected"] == true)
                    })
                })
        })
    })
}

/// Restarts node `id` (SIGTERM: a primary hands over) with `secret` and, if given, the
/// previous secret; reconnects its driver.
async fn restart_with(
    cluster: &mut Cluster,
    drivers: &Drivers,
    id: u16,
    secret: &std::path::Path,
    previous: Option<&std::path::Path>,
) {
    set_driver(drivers, id, None);
    cluster.terminate(id, Duration::from_secs(10));
    let node = cluster.node_mut(id);
    node.secret = Some(secret.to_owned());
    node.extra.clear();
    if let Some(previous) = previous {
        node.extra = vec![
            "--previous-cluster-secret-file".into(),
            previous.display().to_string(),
        ];
    }
    cluster.start_node(id);
    set_driver(
        drivers,
        id,
        Some(connect(&cluster.node(id).app_socket).await),
    );
    assert!(
        wait_until(Duration::from_secs(15), || fully_connected(cluster)),
        "node {id} is not connected to every peer after its restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_rotated_by_two_rolling_restarts_under_writes() {
    let mut cluster = Cluster::start(3);
    let old = cluster.secret.clone();
    let new = secret_file(
        cluster.dir.path(),
        "secret-new",
        "a new secret, rotated in 2026\n",
    );
    let drivers = connect_all(&cluster).await;
    wait_primary(&drivers, None).await;
    let (stop, oracle, writers) = start_writers(&drivers, 2).await;
    // 1. Every node learns the new secret and keeps accepting the old one.
    for id in 1..=3 {
        restart_with(&mut cluster, &drivers, id, &new, Some(&old)).await;
    }
    for node in &cluster.nodes {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        assert!(
            log.contains("data dir moved from the previous cluster secret"),
            "node {}'s data dir was not moved to the new secret",
            node.id
        );
    }
    // 2. Every node drops the old secret.
    for id in 1..=3 {
        restart_with(&mut cluster, &drivers, id, &new, None).await;
    }
    let before = oracle.lock().unwrap().acked.len();
    assert!(
        acked_beyond(&oracle, before + 100, Duration::from_secs(10)),
        "writes stopped after the rotation"
    );
    stop_and_check(&drivers, &stop, &oracle, writers, &[1, 2, 3]).await;
    // The data dirs belong to the new secret now: the old one alone is refused at once.
    cluster.kill(1);
    cluster.node_mut(1).secret = Some(old);
    let output = output_within(cluster.command(1), Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "a node started with the old secret ran"
    );
    assert!(stderr.contains("belongs to another cluster"), "{stderr}");
}
