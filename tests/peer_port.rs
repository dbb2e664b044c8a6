//! The peer port under hostile input: garbage, oversized frames, a handshake with the wrong
//! secret. The node drops the offender, logs it, and carries on electing and serving.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use support::{wait_until, Cluster};

/// A running node whose last role line says it is primary.
fn primary(cluster: &mut Cluster) -> Option<u16> {
    let mut found = None;
    for node in &mut cluster.nodes {
        if !node.is_running() {
            continue;
        }
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        let last_role = log.lines().rev().find(|l| l.contains("role changed"));
        if last_role.is_some_and(|l| l.contains("role=\"primary\"")) {
            found = Some(node.id);
        }
    }
    found
}

/// Whether every node's `/status` says it is a voter.
fn all_voters(cluster: &Cluster) -> bool {
    cluster.nodes.iter().all(|node| {
        support::http_get(node.admin_addr, "/status").is_some_and(|(code, body)| {
            code == 200
                && serde_json::from_str::<serde_json::Value>(&body)
                    .is_ok_and(|v| v["standing"] == "voter")
        })
    })
}

fn log_of(cluster: &Cluster, id: u16) -> String {
    std::fs::read_to_string(&cluster.node(id).log).unwrap_or_default()
}

/// Garbage and an oversized length on the peer port get the connection dropped; the cluster
/// still elects a primary and the node stays up.
#[test]
fn garbage_and_oversized_frames_on_the_peer_port_are_dropped() {
    let mut cluster = Cluster::start(3);
    assert!(
        wait_until(Duration::from_secs(10), || primary(&mut cluster).is_some()),
        "no primary"
    );
    let target = cluster.node(1).peer_addr;
    // Garbage.
    let mut stream = TcpStream::connect(target).unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 64];
    // The node closes the connection (read returns 0 or an error), it does not hang.
    let _ = stream.read(&mut buf);
    // An oversized length prefix: refused before anything is allocated.
    let mut stream = TcpStream::connect(target).unwrap();
    stream.write_all(&u32::MAX.to_le_bytes()).unwrap();
    stream.write_all(&[1u8; 16]).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.read(&mut buf);
    assert!(
        wait_until(Duration::from_secs(5), || log_of(&cluster, 1)
            .contains("exceeds the limit")),
        "the oversized frame was not reported"
    );
    assert!(cluster.node_mut(1).is_running(), "node 1 died");
    // The cluster still works: kill the primary, a new one is elected. First every node must
    // be a voter: a founding member whose quarantine was still running when the first
    // primary's append reached it is a learner until that primary promotes it, and a
    // primary killed before then leaves one voter of three.
    assert!(
        wait_until(Duration::from_secs(10), || all_voters(&cluster)),
        "not every node became a voter"
    );
    let old = primary(&mut cluster).unwrap();
    cluster.kill(old);
    assert!(
        wait_until(Duration::from_secs(10), || primary(&mut cluster)
            .is_some_and(|p| p != old)),
        "no new primary after the garbage"
    );
}

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

/// A started one-node cluster, its admin port answering.
fn one_node() -> Cluster {
    let cluster = Cluster::start(1);
    let admin = cluster.node(1).admin_addr;
    assert!(wait_until(Duration::from_secs(10), || {
        support::http_get(admin, "/health").is_some_and(|(code, _)| code == 200)
    }));
    cluster
}

/// Connections that never authenticate, each announcing a 64 MiB first frame and sending
/// 16 MiB of it: the node refuses a handshake frame that long at its first four bytes
/// (before, it buffered each until the handshake timeout: 480 MiB held for eight
/// connections of 60 MiB).
#[test]
fn unauthenticated_connections_cannot_make_the_node_buffer_a_large_frame() {
    let cluster = one_node();
    let pid = cluster.node(1).pid().unwrap();
    let peer = cluster.node(1).peer_addr;
    let before = proc_status_kb(pid, "VmHWM:");
    let senders: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(peer).unwrap();
                let mut head = (64u32 << 20).to_le_bytes().to_vec();
                head.push(1); // a Hello
                let _ = stream.write_all(&head);
                let chunk = vec![0u8; 1 << 20];
                for _ in 0..16 {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let grown_mib = proc_status_kb(pid, "VmHWM:").saturating_sub(before) / 1024;
    assert!(
        grown_mib < 24,
        "the node's peak RSS grew by {grown_mib} MiB from 4 connections that never said hello"
    );
}

/// Idle connections that never authenticate: at most 64 are kept in their handshake, the
/// others closed as they are accepted, so they cannot use up the node's descriptors.
#[test]
fn unauthenticated_connections_in_their_handshake_are_capped() {
    let cluster = one_node();
    let pid = cluster.node(1).pid().unwrap();
    let peer = cluster.node(1).peer_addr;
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let before = fds();
    let held: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(peer).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let during = fds();
    drop(held);
    assert!(
        during < before + 100,
        "300 idle unauthenticated connections hold {} descriptors in the node ({before} before)",
        during - before
    );
    assert!(
        wait_until(Duration::from_secs(5), || log_of(&cluster, 1)
            .contains("connections are in their handshake already")),
        "the refusal was not logged"
    );
}

/// A node with the wrong cluster secret is refused by its peers and never joins; the other
/// two elect a primary without it.
#[test]
fn wrong_cluster_secret_is_refused() {
    let mut cluster = Cluster::new(3);
    let wrong = support::secret_file(cluster.dir.path(), "wrong", "another-secret-entirely-42");
    cluster.node_mut(3).secret = Some(wrong);
    for id in 1..=3 {
        cluster.start_node(id);
    }
    assert!(
        wait_until(Duration::from_secs(10), || primary(&mut cluster)
            .is_some_and(|p| p != 3)),
        "nodes 1 and 2 elected no primary"
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            let logs = log_of(&cluster, 1) + &log_of(&cluster, 2);
            logs.contains("another cluster") || logs.contains("does not hold the cluster secret")
        }),
        "the wrong secret was not reported"
    );
    let third = log_of(&cluster, 3);
    assert!(
        !third.contains("role=\"primary\""),
        "node 3 became primary with a wrong secret"
    );
    assert!(
        !third.contains(" primary=1") && !third.contains(" primary=2"),
        "node 3 joined"
    );
}

/// A peer that speaks another protocol version (here the one before this build's, whose
/// `Hello` has the same layout) is refused by number, in a reason both ends can log.
#[test]
fn a_peer_of_another_protocol_version_is_refused_by_number() {
    use understudy::proto::peer::{self, Frame, Hello, PROTOCOL_VERSION};
    use understudy::NodeId;
    let mut cluster = Cluster::new(1);
    cluster.start_node(1);
    let target = cluster.node(1).peer_addr;
    let mut stream = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            stream = TcpStream::connect(target).ok();
            stream.is_some()
        }),
        "the peer port does not listen"
    );
    let mut stream = stream.unwrap();
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION - 1,
        cluster_id: 0x5eed,
        from: NodeId(2),
        to: NodeId(1),
        nonce: [7; peer::NONCE_LEN],
        members: vec![NodeId(1), NodeId(2)],
        config_lsn: 0,
        previous_cluster_id: 0,
        client_addr: None,
        admin_addr: None,
    });
    let mut bytes = bytes::BytesMut::new();
    let records = peer::encode_head(&hello, &mut bytes);
    assert!(records.is_empty());
    stream.write_all(&bytes).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let expected = format!(
        "protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
        PROTOCOL_VERSION - 1
    );
    match peer::decode(&answer) {
        Ok(Some((Frame::Refuse { reason }, _))) => assert_eq!(reason, expected),
        other => panic!("expected a refusal, got {other:?} from {answer:?}"),
    }
    assert!(
        wait_until(Duration::from_secs(5), || log_of(&cluster, 1)
            .contains(&expected)),
        "the refusal was not logged"
    );
}

/// Nodes with different failover timeouts (a rolling change of the setting) form one cluster
/// and fail over; a node restarted with a shorter timeout than it ran with says it waits out
/// the longer one, and `<data-dir>/vote-wait` keeps the longer until then.
#[test]
fn nodes_with_different_failover_timeouts_fail_over_and_a_shorter_restart_waits_the_longer() {
    let mut cluster = Cluster::new(3);
    cluster.args = vec!["--heartbeat-interval".into(), "20ms".into()];
    for (id, timeout) in [(1, "300ms"), (2, "600ms"), (3, "1s")] {
        cluster.node_mut(id).extra = vec!["--failover-timeout".into(), timeout.into()];
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    assert!(
        wait_until(Duration::from_secs(15), || primary(&mut cluster).is_some()),
        "no primary"
    );
    let vote_wait = |cluster: &Cluster, id: u16| {
        std::fs::read_to_string(cluster.node(id).data_dir.join("vote-wait")).unwrap_or_default()
    };
    assert_eq!(vote_wait(&cluster, 3), "1000000000\n");
    // Every node a voter first (a founding member that missed the first election is a
    // learner until the primary promotes it).
    assert!(
        wait_until(Duration::from_secs(10), || all_voters(&cluster)),
        "not every node became a voter: {}",
        cluster.logs_tail(20)
    );
    let old = primary(&mut cluster).expect("a primary");
    cluster.kill(old);
    assert!(
        wait_until(Duration::from_secs(15), || primary(&mut cluster)
            .is_some_and(|p| p != old)),
        "no new primary after node {old} was killed"
    );
    // Node 3 again, with a shorter timeout than it ran with.
    if old != 3 {
        cluster.kill(3);
    }
    cluster.node_mut(3).extra = vec!["--failover-timeout".into(), "300ms".into()];
    cluster.start_node(3);
    assert!(
        wait_until(Duration::from_secs(5), || log_of(&cluster, 3)
            .contains("last ran with a longer --failover-timeout")),
        "node 3 did not say it waits out its longer timeout"
    );
    assert_eq!(
        vote_wait(&cluster, 3),
        "1000000000\n",
        "kept until waited out"
    );
    assert!(
        wait_until(Duration::from_secs(5), || vote_wait(&cluster, 3)
            == "300000000\n"),
        "the shorter timeout was not recorded after the longer one passed"
    );
    if old != 3 {
        cluster.start_node(old);
    }
    assert!(
        wait_until(Duration::from_secs(15), || primary(&mut cluster).is_some()),
        "no primary at the end"
    );
}
