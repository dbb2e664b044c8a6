//! TLS on the peer links and the admin port, on a throwaway CA made here (rcgen): a TLS
//! cluster fails over and catches up under writes with nothing acknowledged lost; a plain
//! TCP connection to a TLS peer port gets no handshake; a certificate from another CA, or
//! one that names another node, is refused in one clear line; the operator commands speak
//! HTTPS to the admin port; SIGHUP re-reads the files without dropping links.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use support::journal::*;
use support::tls::{make_ca, make_node_cert, tls_flags, Ca};
use support::{binary, output_within, wait_until, Cluster};

/// A three-node cluster, not started, each node with its own certificate from one CA.
fn tls_cluster() -> (Cluster, Ca) {
    let mut cluster = Cluster::new(3);
    let ca = support::tls::secure(&mut cluster);
    (cluster, ca)
}

/// `understudy status --admin https://... --tls-ca ... --json` against node `id`.
fn status_json(cluster: &Cluster, id: u16, ca: &Path) -> std::process::Output {
    let mut command = std::process::Command::new(binary());
    command
        .arg("status")
        .arg("--admin")
        .arg(format!("https://{}", cluster.node(id).admin_addr))
        .arg("--tls-ca")
        .arg(ca)
        .arg("--json");
    output_within(command, Duration::from_secs(10))
}

/// Every node connected to every other, as the nodes' own `/status` over HTTPS says.
fn fully_connected(cluster: &Cluster, ca: &Path) -> bool {
    let out = status_json(cluster, 1, ca);
    let Ok(view) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return false;
    };
    let Some(nodes) = view["nodes"].as_array() else {
        return false;
    };
    nodes.len() == 3
        && nodes.iter().all(|node| {
            node["peers"].as_array().is_some_and(|peers| {
                peers.len() == 2 && peers.iter().all(|p| p["connected"] == true)
            })
        })
}

fn log_of(cluster: &Cluster, id: u16) -> String {
    std::fs::read_to_string(&cluster.node(id).log).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_fails_over_and_catches_up_and_speaks_https() {
    let (mut cluster, ca) = tls_cluster();
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let drivers = connect_all(&cluster).await;
    let primary = wait_primary(&drivers, None).await;
    let (stop, oracle, writers) = start_writers(&drivers, 2).await;
    assert!(
        wait_until(Duration::from_secs(10), || fully_connected(
            &cluster,
            &ca.pem_path
        )),
        "the TLS cluster is not fully connected: {}",
        cluster.logs_tail(20)
    );

    // The admin port speaks HTTPS only; the commands need the CA for it.
    let plain = support::http_get(cluster.node(1).admin_addr, "/status");
    assert!(
        plain.is_none_or(|(code, _)| code != 200),
        "plain HTTP got a status from an HTTPS admin port"
    );
    let mut command = std::process::Command::new(binary());
    command
        .args(["status", "--admin"])
        .arg(format!("https://{}", cluster.node(1).admin_addr))
        .env_remove("UNDERSTUDY_TLS_CA");
    let out = output_within(command, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("needs --tls-ca"), "{stderr}");

    // A plain TCP connection to a TLS peer port gets no peer handshake: the bytes of a
    // hello are answered with a TLS alert at most, and the connection is closed.
    let mut plain = TcpStream::connect(cluster.node(2).peer_addr).expect("connect");
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    plain
        .write_all(b"\x00\x00\x00\x20understudy hello in plain text...")
        .expect("write");
    let mut answer = Vec::new();
    let read = plain.read_to_end(&mut answer);
    assert!(
        read.is_ok(),
        "the TLS peer port kept a plain connection open"
    );
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "a plain connection got something other than a TLS alert: {answer:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || log_of(&cluster, 2)
            .contains("does not speak TLS")),
        "node 2 did not log the plain connection"
    );

    // Kill the primary: a new one is elected over TLS and the writes go on.
    let before = oracle.lock().unwrap().acked.len();
    cluster.kill(primary);
    set_driver(&drivers, primary, None);
    let new_primary = wait_primary(&drivers, Some(primary)).await;
    assert_ne!(new_primary, primary);
    assert!(
        acked_beyond(&oracle, before + 200, Duration::from_secs(15)),
        "writes did not resume after the failover"
    );
    // The old primary comes back and catches up.
    cluster.start_node(primary);
    set_driver(
        &drivers,
        primary,
        Some(connect(&cluster.node(primary).app_socket).await),
    );

    // SIGHUP with a new certificate for node 1 (same CA): re-read, links kept, and new
    // connections (the admin port's, here) work with it.
    let (cert, key) = make_node_cert(cluster.dir.path(), &ca, 1, "b");
    std::fs::copy(&cert, cluster.dir.path().join("node1-a.pem")).expect("replace the cert");
    std::fs::copy(&key, cluster.dir.path().join("node1-a.key")).expect("replace the key");
    let pid = cluster.node(1).pid().expect("node 1 runs");
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    assert!(
        wait_until(Duration::from_secs(5), || log_of(&cluster, 1)
            .contains("TLS certificate, key and CA re-read")),
        "node 1 did not re-read its TLS files: {}",
        cluster.logs_tail(10)
    );
    assert!(
        wait_until(Duration::from_secs(15), || fully_connected(
            &cluster,
            &ca.pem_path
        )),
        "not fully connected after the failover, the restart and the reload: {}",
        cluster.logs_tail(20)
    );
    let before = oracle.lock().unwrap().acked.len();
    assert!(
        acked_beyond(&oracle, before + 100, Duration::from_secs(10)),
        "writes stopped after the reload"
    );
    let acked = stop_and_check(&drivers, &stop, &oracle, writers, &[1, 2, 3]).await;
    assert!(acked > 0);
    // `status --json` over HTTPS parses and names the primary.
    let out = status_json(&cluster, 2, &ca.pem_path);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert!(view["primary"].is_u64(), "{view}");
}

#[test]
fn a_certificate_from_another_ca_or_for_another_node_is_refused_in_one_line() {
    let (mut cluster, ca) = tls_cluster();
    // Node 3 holds a certificate from another CA.
    let rogue = make_ca(cluster.dir.path(), "rogue");
    let (cert, key) = make_node_cert(cluster.dir.path(), &rogue, 3, "rogue");
    cluster.node_mut(3).extra = tls_flags(&cert, &key, &ca.pem_path);
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let refused = "not signed by this node's --tls-ca";
    assert!(
        wait_until(Duration::from_secs(10), || {
            log_of(&cluster, 1).contains(refused) && log_of(&cluster, 2).contains(refused)
        }),
        "nodes 1 and 2 did not refuse node 3's certificate: {}",
        cluster.logs_tail(20)
    );
    // Node 3 dials every 20 ms..1 s and is dialled as often; the refusal is logged once
    // for each direction, not once per attempt.
    std::thread::sleep(Duration::from_secs(2));
    for id in [1, 2] {
        for dir in ["dir=\"in\"", "dir=\"out\""] {
            let lines = log_of(&cluster, id)
                .lines()
                .filter(|l| l.contains(refused) && l.contains("WARN") && l.contains(dir))
                .count();
            assert_eq!(
                lines, 1,
                "node {id} logged the refusal ({dir}) {lines} times"
            );
        }
    }
    // Node 3 says, once, that its certificate was refused.
    let log3 = log_of(&cluster, 3);
    assert!(
        log3.contains("refused this node's certificate")
            || log3.contains("not signed by this node's --tls-ca"),
        "{log3}"
    );
    // Nodes 1 and 2 elect a primary between them; node 3 never joins.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let out = status_json(&cluster, 1, &ca.pem_path);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|v| v["primary"].is_u64())
        }),
        "nodes 1 and 2 elected no primary"
    );
    let status = support::http_get(cluster.node(3).admin_addr, "/status");
    assert!(status.is_none(), "node 3's admin port answered plain HTTP");

    // Node 3 again, now with a certificate of the right CA that names node 2.
    cluster.kill(3);
    let (cert, key) = make_node_cert(cluster.dir.path(), &ca, 2, "for-3");
    cluster.node_mut(3).extra = tls_flags(&cert, &key, &ca.pem_path);
    cluster.start_node(3);
    let named = "says it is node 3 but its TLS certificate names node 2";
    assert!(
        wait_until(Duration::from_secs(10), || log_of(&cluster, 1)
            .contains(named)),
        "node 1 did not refuse node 3 holding node 2's certificate: {}",
        cluster.logs_tail(20)
    );
}

#[test]
fn tls_flags_are_checked_at_start() {
    let (mut cluster, ca) = tls_cluster();
    let dir = cluster.dir.path().to_owned();
    let full = cluster.node(1).extra.clone();
    let refused = |cluster: &Cluster| {
        let out = output_within(cluster.command(1), Duration::from_secs(10));
        assert!(!out.status.success(), "node 1 started");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        stderr
    };
    // A part missing.
    let cert = dir.join("node1-a.pem");
    cluster.node_mut(1).extra = vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-ca".into(),
        ca.pem_path.display().to_string(),
    ];
    let stderr = refused(&cluster);
    assert!(stderr.contains("--tls-key missing"), "{stderr}");
    // A key others can read.
    cluster.node_mut(1).extra = full.clone();
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join("node1-a.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let stderr = refused(&cluster);
    assert!(stderr.contains("--tls-key"), "{stderr}");
    assert!(stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // A CA file that holds no certificate.
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    let ca_text = ca.pem_path.display().to_string();
    cluster.node_mut(1).extra = full
        .iter()
        .map(|a| {
            if *a == ca_text {
                empty.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let stderr = refused(&cluster);
    assert!(stderr.contains("--tls-ca"), "{stderr}");
    assert!(stderr.contains("no certificate"), "{stderr}");
}

/// A node's own `/status` as the operator command reads it over HTTPS.
fn own_status(cluster: &Cluster, id: u16, ca: &Path) -> serde_json::Value {
    let out = status_json(cluster, id, ca);
    let view: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    view["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node_id"] == id))
        .cloned()
        .unwrap_or_default()
}

/// A backup stopped while the primary snapshots and cuts its log past it rejoins by a
/// snapshot sent over the TLS peer link, under writes, losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_crosses_a_tls_link() {
    let (mut cluster, ca) = tls_cluster();
    cluster.args.extend(
        [
            "--wal-segment-bytes",
            "65536",
            "--wal-retain-bytes",
            "0",
            "--snapshot-interval",
            "300ms",
            "--snapshots-retain",
            "1",
        ]
        .map(String::from),
    );
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let drivers = connect_all(&cluster).await;
    let primary = wait_primary(&drivers, None).await;
    let backup = if primary == 1 { 2 } else { 1 };
    let (stop, oracle, writers) = start_writers(&drivers, 2).await;
    cluster.kill(backup);
    set_driver(&drivers, backup, None);
    let stopped_at = oracle.lock().unwrap().acked.len() as u64;
    // The primary's log is cut past everything the backup could have had.
    assert!(
        wait_until(Duration::from_secs(30), || {
            own_status(&cluster, primary, &ca.pem_path)["first_lsn"]
                .as_u64()
                .is_some_and(|first| first > stopped_at + 400)
        }),
        "the primary's log was not cut past the stopped backup: {}",
        cluster.logs_tail(10)
    );
    cluster.start_node(backup);
    set_driver(
        &drivers,
        backup,
        Some(connect(&cluster.node(backup).app_socket).await),
    );
    assert!(
        wait_until(Duration::from_secs(20), || log_of(&cluster, backup)
            .contains("installed a snapshot from the primary")),
        "the backup did not rejoin by a snapshot: {}",
        cluster.logs_tail(10)
    );
    stop_and_check(&drivers, &stop, &oracle, writers, &[1, 2, 3]).await;
}
