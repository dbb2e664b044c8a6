//! Planned restarts: SIGTERM on the primary hands over to the backup it names, which is
//! elected at once (not after a failover timeout), and SIGHUP does not stop a sidecar.

mod support;

use std::time::{Duration, Instant};

use support::{http_get, wait_until, Cluster};

/// A node's role, epoch and known primary from its `/status`.
fn status(cluster: &Cluster, id: u16) -> Option<(String, u64, Option<u64>)> {
    let (code, body) = http_get(cluster.node(id).admin_addr, "/status")?;
    if code != 200 {
        return None;
    }
    let status: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some((
        status["role"].as_str()?.to_string(),
        status["epoch"].as_u64()?,
        status["primary"].as_u64(),
    ))
}

fn primary_of(cluster: &Cluster) -> Option<(u16, u64)> {
    (1..=3u16).find_map(|id| match status(cluster, id) {
        Some((role, epoch, _)) if role == "primary" => Some((id, epoch)),
        _ => None,
    })
}

fn signal(cluster: &Cluster, id: u16, signal: i32) {
    let pid = cluster.node(id).pid().expect("the node runs");
    // SAFETY: kill(2) on a child this test started and has not reaped.
    let sent = unsafe { libc::kill(pid as i32, signal) };
    assert_eq!(sent, 0, "kill({pid}, {signal})");
}

/// The target a stopping primary named in its log, after byte `from` of the log.
fn named_target(cluster: &Cluster, id: u16, from: usize) -> Option<u16> {
    let log = std::fs::read_to_string(&cluster.node(id).log).ok()?;
    let line = log
        .get(from..)?
        .lines()
        .find(|line| line.contains("switchover: handing over"))?;
    let at = line.find("target_node=")? + "target_node=".len();
    line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .ok()
}

/// SIGTERM on the primary of an idle 3-node cluster, `HANDOVER_TRIALS` times (default 8):
/// every time the backup it names is elected in the very next epoch, sooner than a failover
/// timeout could have run out, and the old primary exits cleanly once it has.
#[test]
fn sigterm_hands_over_to_the_named_target_every_time() {
    let trials = support::trials_from_env("HANDOVER_TRIALS", 8);
    let failover_timeout = Duration::from_millis(300);
    let mut cluster = Cluster::start(3);
    assert!(
        wait_until(Duration::from_secs(15), || primary_of(&cluster).is_some()),
        "no primary:\n{}",
        cluster.logs_tail(20)
    );
    let mut pauses = Vec::new();
    for trial in 0..trials {
        let (old, epoch) = primary_of(&cluster).expect("a primary");
        // Every backup follows the primary, so that the hand-over has a ready target.
        assert!(wait_until(Duration::from_secs(10), || (1..=3u16)
            .filter(|&id| id != old)
            .all(|id| status(&cluster, id).is_some_and(|(_, e, p)| e
                == epoch
                && p == Some(u64::from(old))))));
        let log_from = std::fs::metadata(&cluster.node(old).log).map_or(0, |m| m.len() as usize);
        let sent = Instant::now();
        signal(&cluster, old, libc::SIGTERM);
        let mut new = None;
        let elected = wait_until(Duration::from_secs(5), || {
            new = (1..=3u16)
                .filter(|&id| id != old)
                .find_map(|id| match status(&cluster, id) {
                    Some((role, e, _)) if role == "primary" && e > epoch => Some((id, e)),
                    _ => None,
                });
            new.is_some()
        });
        let took = sent.elapsed();
        assert!(
            elected,
            "trial {trial}: nobody took over:\n{}",
            cluster.logs_tail(20)
        );
        let (new, new_epoch) = new.expect("elected");
        assert!(
            wait_until(Duration::from_secs(5), || !cluster
                .node_mut(old)
                .is_running()),
            "trial {trial}: node {old} did not exit after handing over"
        );
        let target = named_target(&cluster, old, log_from);
        assert_eq!(
            target,
            Some(new),
            "trial {trial}: node {old} handed over to {target:?} but node {new} was elected:\n{}",
            cluster.logs_tail(20)
        );
        assert_eq!(new_epoch, epoch + 1, "trial {trial}: an extra election ran");
        assert!(
            took < failover_timeout,
            "trial {trial}: took {took:?}, as long as a failover timeout"
        );
        pauses.push(took);
        cluster.start_node(old);
    }
    pauses.sort();
    eprintln!(
        "SIGTERM hand-over, {trials} trials: min {:?}, median {:?}, max {:?}",
        pauses[0],
        pauses[pauses.len() / 2],
        pauses[pauses.len() - 1]
    );
}

/// SIGHUP (a closed terminal, a reload by a service manager) leaves the sidecar running and
/// says so in one line.
#[test]
fn sighup_does_not_stop_the_sidecar() {
    let mut cluster = Cluster::start(3);
    assert!(wait_until(Duration::from_secs(15), || primary_of(&cluster).is_some()));
    signal(&cluster, 2, libc::SIGHUP);
    let log = cluster.node(2).log.clone();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let logged = wait_until(Duration::from_secs(5), || read().contains("SIGHUP"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        cluster.node_mut(2).is_running(),
        "SIGHUP stopped the sidecar"
    );
    assert!(status(&cluster, 2).is_some());
    assert!(logged, "{}", read());
}
