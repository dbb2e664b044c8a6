//! systemd's notifications (`Type=notify`), as systemd would receive them: a datagram
//! socket at `NOTIFY_SOCKET`, `WATCHDOG_USEC` set, a real `understudy run` in a
//! three-node cluster.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use support::Cluster;

/// Every message that arrives within `within`, in order.
fn receive(socket: &UnixDatagram, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut messages = Vec::new();
    let mut buffer = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match socket.recv(&mut buffer) {
            Ok(n) => messages.push(String::from_utf8_lossy(&buffer[..n]).into_owned()),
            Err(_) => break,
        }
    }
    messages
}

#[test]
fn ready_once_joined_status_on_changes_watchdog_while_alive_stopping_at_the_end() {
    let mut cluster = Cluster::new(3);
    let path = cluster.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    cluster.node_mut(1).env = vec![
        ("NOTIFY_SOCKET".into(), path.display().to_string()),
        ("WATCHDOG_USEC".into(), "200000".into()),
    ];
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let messages = receive(&socket, Duration::from_secs(5));
    let all = messages.join(" | ");
    let ready = messages
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1: {all}\n{}", cluster.logs_tail(20)));
    assert!(
        messages[ready]
            .lines()
            .any(|l| l.starts_with("STATUS=") && l.contains("epoch")),
        "READY=1 without a STATUS line: {all}"
    );
    // Pinged at half of the 200 ms watchdog: about 10 in the 4 s or more after READY=1.
    let pings = messages[ready..]
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(pings >= 8, "{pings} watchdog pings: {all}");

    // SIGTERM: the node says it is stopping.
    cluster.terminate(1, Duration::from_secs(5));
    let messages = receive(&socket, Duration::from_millis(500));
    assert!(
        messages
            .iter()
            .any(|m| m.lines().any(|l| l == "STOPPING=1")),
        "no STOPPING=1 after SIGTERM: {}",
        messages.join(" | ")
    );
}
