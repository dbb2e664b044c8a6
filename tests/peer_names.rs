//! Peer addresses and member lists, against real `understudy run` processes:
//! - peers named by DNS name (`localhost`) elect and replicate;
//! - a peer whose name moves to another address while it is down is reached at the new
//!   one when it comes back (each node sees a private `/etc/hosts` that the test rewrites);
//! - nodes started with different member lists refuse each other, with one log line that
//!   names both lists, and so never elect a primary between them.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{free_port, http_get, wait_until, Cluster};

fn status(addr: std::net::SocketAddr) -> Option<serde_json::Value> {
    let (code, body) = http_get(addr, "/status")?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// The one primary among `ids` whose every peer in `ids` is connected and has matched its
/// last LSN, if there is one.
fn replicating_primary(cluster: &Cluster, ids: &[u16]) -> Option<u16> {
    ids.iter().copied().find(|&id| {
        let Some(view) = status(cluster.node(id).admin_addr) else {
            return false;
        };
        if view["role"] != "primary" {
            return false;
        }
        let last = view["last_lsn"].as_u64().unwrap_or(0);
        ids.iter().filter(|&&other| other != id).all(|&other| {
            view["peers"].as_array().is_some_and(|peers| {
                peers.iter().any(|p| {
                    p["node_id"] == other
                        && p["connected"] == true
                        && p["matched_lsn"].as_u64() == Some(last)
                })
            })
        })
    })
}

fn log_of(cluster: &Cluster, id: u16) -> String {
    std::fs::read_to_string(&cluster.node(id).log).unwrap_or_default()
}

#[test]
fn peers_named_localhost_elect_and_replicate() {
    let mut cluster = Cluster::new(3);
    cluster.peers = cluster
        .nodes
        .iter()
        .map(|n| format!("{}=localhost:{}", n.id, n.peer_addr.port()))
        .collect::<Vec<_>>()
        .join(",");
    for id in 1..=3 {
        cluster.start_node(id);
    }
    assert!(
        wait_until(Duration::from_secs(15), || replicating_primary(
            &cluster,
            &[1, 2, 3]
        )
        .is_some()),
        "no primary replicating to both backups with peers named localhost:\n{}",
        cluster.logs_tail(30)
    );
}

#[test]
fn nodes_with_different_member_lists_refuse_each_other() {
    let mut cluster = Cluster::new(3);
    let three = cluster.peers.clone();
    // Node 2 is told of a fourth member: it counts a majority as 3, nodes 1 and 3 as 2.
    let four = format!("{three},4=127.0.0.1:{}", free_port());
    cluster.start_node(1);
    cluster.peers = four;
    cluster.start_node(2);
    cluster.peers = three;
    let refused = "node 2 was started with members 1,2,3,4 and node 1 with members 1,2,3";
    assert!(
        wait_until(Duration::from_secs(10), || log_of(&cluster, 1)
            .contains(refused)),
        "node 1 did not refuse node 2's member list:\n{}",
        cluster.logs_tail(30)
    );
    assert!(
        wait_until(Duration::from_secs(5), || log_of(&cluster, 2)
            .contains(refused)),
        "node 2 was not told why it was refused:\n{}",
        cluster.logs_tail(30)
    );
    // Nodes 1 and 2 alone would make a majority of node 1's three; they do not talk, so
    // neither is elected, however long they wait.
    std::thread::sleep(Duration::from_millis(1500));
    for id in [1, 2] {
        let view = status(cluster.node(id).admin_addr).expect("the node answers");
        assert_ne!(
            view["role"],
            "primary",
            "node {id} was elected across disagreeing member lists:\n{}",
            cluster.logs_tail(30)
        );
    }
    // A node that agrees with node 1 makes a cluster with it.
    cluster.start_node(3);
    assert!(
        wait_until(Duration::from_secs(15), || replicating_primary(
            &cluster,
            &[1, 3]
        )
        .is_some()),
        "nodes 1 and 3, which agree, elected no primary:\n{}",
        cluster.logs_tail(30)
    );
    let view = status(cluster.node(2).admin_addr).expect("node 2 answers");
    assert_ne!(view["role"], "primary", "node 2 is primary too");
}

/// Whether this test process may give its nodes a private `/etc/hosts` (a mount namespace
/// of their own, which needs root, and `unshare` from util-linux).
fn private_hosts_possible() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Command::new("unshare")
        .args(["--mount", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

/// `command` run in a mount namespace of its own where `hosts` is `/etc/hosts`. Rewriting
/// `hosts` in place (same inode) changes what the node resolves from then on.
fn with_hosts(command: &Command, hosts: &Path) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped
        .args(["--mount", "--", "sh", "-c"])
        .arg("mount --bind \"$0\" /etc/hosts && exec \"$@\"")
        .arg(hosts)
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            wrapped.env(key, value);
        }
    }
    wrapped.stdin(Stdio::null());
    wrapped
}

/// Kills the nodes it holds when dropped.
struct Children(Vec<Option<Child>>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in self.0.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn spawn(cluster: &Cluster, id: u16, hosts: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cluster.node(id).log)
        .expect("open the node's log");
    let log_err = log.try_clone().expect("clone the log handle");
    with_hosts(&cluster.command(id), hosts)
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .expect("start understudy under unshare")
}

fn hosts_file(node3_ip: &str) -> String {
    format!(
        "127.0.0.1 localhost\n127.0.0.1 n1.understudy.test\n127.0.0.1 n2.understudy.test\n{node3_ip} n3.understudy.test\n{node3_ip} n3b.understudy.test\n"
    )
}

/// Three nodes that know each other as `nN.understudy.test` (node 3 at 127.0.0.3), each
/// with the private `/etc/hosts` the test rewrites; returns once one of them replicates
/// to both others.
fn start_named() -> Option<(Cluster, Children, std::path::PathBuf, Vec<u16>)> {
    if !private_hosts_possible() {
        eprintln!("skipped: a private /etc/hosts needs root and unshare(1)");
        return None;
    }
    let mut cluster = Cluster::new(3);
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.peer_addr.port()).collect();
    cluster.peers = (1..=3)
        .map(|id| format!("{id}=n{id}.understudy.test:{}", ports[id - 1]))
        .collect::<Vec<_>>()
        .join(",");
    // Node 3 listens on 127.0.0.3 first, then on 127.0.0.4 (its name moved with it).
    cluster.node_mut(3).peer_addr = format!("127.0.0.3:{}", ports[2]).parse().unwrap();
    let hosts = cluster.dir.path().join("hosts");
    std::fs::write(&hosts, hosts_file("127.0.0.3")).unwrap();
    let children = Children(
        (1..=3)
            .map(|id| Some(spawn(&cluster, id, &hosts)))
            .collect(),
    );
    assert!(
        wait_until(Duration::from_secs(15), || replicating_primary(
            &cluster,
            &[1, 2, 3]
        )
        .is_some()),
        "no primary replicating to both backups with peers named in /etc/hosts:\n{}",
        cluster.logs_tail(30)
    );
    Some((cluster, children, hosts, ports))
}

/// Kills node 3 and waits until nodes 1 and 2 have a primary between them.
fn node3_down(cluster: &Cluster, children: &mut Children) {
    if let Some(mut child) = children.0[2].take() {
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(
        wait_until(Duration::from_secs(15), || replicating_primary(
            cluster,
            &[1, 2]
        )
        .is_some()),
        "no primary among nodes 1 and 2 after node 3 went down:\n{}",
        cluster.logs_tail(30)
    );
}

#[test]
fn a_peer_whose_name_moves_is_reached_at_its_new_address() {
    let Some((mut cluster, mut children, hosts, ports)) = start_named() else {
        return;
    };
    // Node 3 goes down; if it was primary, another takes over.
    node3_down(&cluster, &mut children);
    // It comes back at another address, and its name is changed to it (in place: the
    // nodes' private /etc/hosts is this file).
    std::fs::write(&hosts, hosts_file("127.0.0.4")).unwrap();
    cluster.node_mut(3).peer_addr = format!("127.0.0.4:{}", ports[2]).parse().unwrap();
    children.0[2] = Some(spawn(&cluster, 3, &hosts));
    // The others log the address they reach a peer at when it changes; then node 3 must be
    // replicated to again (a status read before the move could still show it connected).
    let moved = format!("resolved=127.0.0.4:{}", ports[2]);
    assert!(
        wait_until(Duration::from_secs(15), || {
            log_of(&cluster, 1).contains(&moved) && log_of(&cluster, 2).contains(&moved)
        }),
        "nodes 1 and 2 did not reach node 3 at its new address:\n{}",
        cluster.logs_tail(30)
    );
    assert!(
        wait_until(Duration::from_secs(15), || replicating_primary(
            &cluster,
            &[1, 2, 3]
        )
        .is_some()),
        "node 3 is not replicated to at its new address:\n{}",
        cluster.logs_tail(30)
    );
}

/// A peer that comes back at a new port, under a new name: `understudy members set-addr`
/// puts its new address in the log, and every node dials it there (their `--peers` still
/// name the old one).
#[test]
fn a_peer_back_at_a_new_port_under_a_new_name_is_reached_after_set_addr() {
    let Some((mut cluster, mut children, hosts, ports)) = start_named() else {
        return;
    };
    node3_down(&cluster, &mut children);
    let port = free_port();
    cluster.node_mut(3).peer_addr = format!("127.0.0.4:{port}").parse().unwrap();
    // Node 3 is started with its new address; the others keep their --peers.
    cluster.node_mut(3).peers = Some(cluster.peers.replace(
        &format!("3=n3.understudy.test:{}", ports[2]),
        &format!("3=n3b.understudy.test:{port}"),
    ));
    std::fs::write(&hosts, hosts_file("127.0.0.4")).unwrap();
    children.0[2] = Some(spawn(&cluster, 3, &hosts));
    let mut primary = None;
    wait_until(Duration::from_secs(10), || {
        primary = [1u16, 2].into_iter().find(|&id| {
            status(cluster.node(id).admin_addr).is_some_and(|v| v["role"] == "primary")
        });
        primary.is_some()
    });
    let primary = primary.expect("a primary among nodes 1 and 2");
    let mut command = Command::new(support::binary());
    command
        .args(["members", "set-addr"])
        .arg(format!("3=n3b.understudy.test:{port}"))
        .arg("--admin")
        .arg(cluster.node(primary).admin_addr.to_string());
    let output = support::output_within(command, Duration::from_secs(20));
    assert!(
        output.status.success(),
        "members set-addr: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        wait_until(Duration::from_secs(15), || replicating_primary(
            &cluster,
            &[1, 2, 3]
        )
        .is_some()),
        "node 3 is not replicated to at its new port:\n{}",
        cluster.logs_tail(30)
    );
}
