//! The admin HTTP API and the operator commands against three real `understudy run`
//! processes on loopback: health checks a load balancer would use, `/status` and `/metrics`,
//! `understudy status` tables, and a planned switchover with `understudy switchover`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{wait_until, Cluster};

/// A one-shot HTTP/1.1 exchange: `(status code, head, body)`, or `None` if the port does not
/// answer (not listening yet, or gone).
fn http(addr: SocketAddr, method: &str, target: &str) -> Option<(u16, String, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, head.to_string(), body.to_string()))
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    http(addr, "GET", path).map(|(code, _, body)| (code, body))
}

fn code(addr: SocketAddr, path: &str) -> Option<u16> {
    get(addr, path).map(|(code, _)| code)
}

fn status_json(addr: SocketAddr) -> serde_json::Value {
    let (code, body) = get(addr, "/status").expect("/status answers");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// The nodes answering 200 on `/primary` right now.
fn primaries(cluster: &Cluster) -> Vec<u16> {
    cluster
        .nodes
        .iter()
        .filter(|node| code(node.admin_addr, "/primary") == Some(200))
        .map(|node| node.id)
        .collect()
}

/// Waits until exactly one node answers 200 on `/primary`, and returns it.
fn one_primary(cluster: &Cluster) -> u16 {
    let mut found = Vec::new();
    let ok = wait_until(Duration::from_secs(10), || {
        found = primaries(cluster);
        found.len() == 1
    });
    assert!(ok, "want exactly one primary, have {found:?}");
    found[0]
}

/// Starts three nodes and waits until each answers on its admin port. The harness picks
/// ports by binding port 0 and releasing it, so now and then two picks coincide (or another
/// process takes one first) and a node stops with "cannot listen"; then the cluster starts
/// again on fresh ports.
fn start_cluster() -> Cluster {
    for _ in 0..5 {
        let mut cluster = Cluster::start(3);
        let mut exited = None;
        let up = wait_until(Duration::from_secs(10), || {
            exited = (1..=3).find(|&id| !cluster.node_mut(id).is_running());
            exited.is_none()
                && (1..=3).all(|id| code(cluster.node(id).admin_addr, "/health") == Some(200))
        });
        match exited {
            None if up => return cluster,
            None => panic!("the admin ports never answered /health"),
            Some(id) => {
                let log = std::fs::read_to_string(&cluster.node(id).log).unwrap_or_default();
                assert!(
                    log.contains("cannot listen"),
                    "node {id} stopped for another reason than a port collision"
                );
            }
        }
    }
    panic!("five clusters in a row hit a port collision");
}

/// Runs `understudy ARGS` to completion: `(exit code, stdout, stderr)`.
fn understudy(args: &[String]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run understudy");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// The load-balancer checks follow the roles; `/status` and `/metrics` describe the node and
/// its peers; unknown paths, wrong methods and bad switchover targets get 404, 405 and 400.
#[test]
fn admin_endpoints_report_roles_status_and_metrics() {
    let started = Instant::now();
    let cluster = start_cluster();
    let primary = one_primary(&cluster);
    let backups: Vec<u16> = (1..=3).filter(|&id| id != primary).collect();
    let admin = |id: u16| cluster.node(id).admin_addr;

    // Both backups hear the primary and pass /replica; the primary does not.
    assert!(
        wait_until(Duration::from_secs(5), || backups.iter().all(|&id| code(
            admin(id),
            "/replica"
        )
            == Some(200))),
        "backups never passed /replica"
    );
    assert_eq!(code(admin(primary), "/replica"), Some(503));
    for &id in &backups {
        assert_eq!(get(admin(id), "/primary"), Some((503, "backup\n".into())));
    }
    for id in 1..=3 {
        assert_eq!(get(admin(id), "/health"), Some((200, "ok\n".into())));
    }
    // No application is expected here (no --app-addr, none attached): each node is ready
    // for its role, the primary with its lease, the backups following it.
    assert_eq!(
        get(admin(primary), "/ready"),
        Some((200, "primary\n".into()))
    );
    for &id in &backups {
        assert!(
            wait_until(Duration::from_secs(5), || get(admin(id), "/ready")
                == Some((200, "backup\n".into()))),
            "backup {id} never became ready: {:?}",
            get(admin(id), "/ready")
        );
    }
    let (code_head, head, _) = http(admin(primary), "HEAD", "/primary").expect("HEAD answers");
    assert_eq!(code_head, 200, "{head}");

    // The primary's status: serving, with its epoch-start record committed once a backup
    // has it, and both peers listed.
    assert!(
        wait_until(Duration::from_secs(5), || {
            let status = status_json(admin(primary));
            status["commit_lsn"].as_u64() >= Some(1) && status["commit_lsn"] == status["last_lsn"]
        }),
        "the epoch-start record never committed"
    );
    let status = status_json(admin(primary));
    assert_eq!(status["node_id"], primary);
    assert_eq!(status["role"], "primary");
    assert_eq!(status["lease_held"], true);
    assert_eq!(status["primary"], primary);
    assert!(status["epoch"].as_u64() >= Some(1), "{status}");
    assert!(status["durable_lsn"].as_u64() >= Some(1), "{status}");
    assert!(status["failed"].is_null(), "{status}");
    let peers = status["peers"].as_array().expect("peers");
    let mut peer_ids: Vec<u64> = peers.iter().filter_map(|p| p["node_id"].as_u64()).collect();
    peer_ids.sort_unstable();
    assert_eq!(
        peer_ids,
        backups.iter().map(|&b| u64::from(b)).collect::<Vec<_>>()
    );
    for peer in peers {
        for field in ["connected", "durable_lsn", "lag_records", "lag_bytes"] {
            assert!(!peer[field].is_null(), "peer without {field}: {status}");
        }
    }
    // A backup's status names the primary and how long ago it heard it.
    let backup = status_json(admin(backups[0]));
    assert_eq!(backup["role"], "backup");
    assert_eq!(backup["primary"], primary);
    assert!(backup["heartbeat_age_ms"].is_u64(), "{backup}");

    // OpenMetrics text: the status as gauges, per-peer lag, then counters and histograms.
    let (code_metrics, metrics) = get(admin(primary), "/metrics").expect("/metrics answers");
    assert_eq!(code_metrics, 200);
    let expected = [
        "understudy_role{role=\"primary\"} 1\n".to_string(),
        "understudy_role{role=\"backup\"} 0\n".to_string(),
        "understudy_lease_held 1\n".to_string(),
        "# TYPE understudy_epoch gauge\n".to_string(),
        "understudy_commit_lsn ".to_string(),
        "understudy_durable_lsn ".to_string(),
        format!("understudy_peer_lag_records{{peer=\"{}\"}} ", backups[0]),
        format!("understudy_peer_lag_bytes{{peer=\"{}\"}} ", backups[1]),
        format!("understudy_peer_connected{{peer=\"{}\"}} 1\n", backups[0]),
        "# TYPE understudy_fsync_seconds histogram\n".to_string(),
        "understudy_fsync_seconds_bucket{le=\"+Inf\"} ".to_string(),
        "# TYPE understudy_appended_records counter\n".to_string(),
        "understudy_appended_records_total ".to_string(),
        "understudy_elections_total ".to_string(),
    ];
    for line in &expected {
        assert!(metrics.contains(line.as_str()), "no {line:?} in\n{metrics}");
    }
    assert!(metrics.ends_with("\n# EOF\n"), "{metrics}");

    // Mistakes.
    assert_eq!(code(admin(primary), "/nope"), Some(404));
    let (code_post, head, _) = http(admin(primary), "POST", "/status").expect("answers");
    assert_eq!(code_post, 405);
    assert!(
        head.to_ascii_lowercase().contains("allow: get, head"),
        "{head}"
    );
    assert_eq!(code(admin(primary), "/switchover?to=2"), Some(405));
    let (code_bad, _, body) = http(admin(primary), "POST", "/switchover?to=two").expect("answers");
    assert_eq!(code_bad, 400, "{body}");
    // Without `to`, the primary picks the backup itself (the most up to date).
    let (code_none, _, body) = http(admin(primary), "POST", "/switchover").expect("answers");
    assert_eq!(code_none, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(body.trim()).expect("JSON");
    let chosen = answer["to"].as_u64().expect("a chosen target");
    assert_ne!(chosen, u64::from(primary), "{body}");
    assert_eq!(answer["outcome"], "handed_over", "{body}");
    eprintln!("took {:?}", started.elapsed());
}

/// `understudy status` prints an aligned table with a row per node, each from the node's
/// own status, whether given one admin port (the others found through it) or all three;
/// `--json` is the merged view.
#[test]
fn status_command_prints_a_row_per_node() {
    let started = Instant::now();
    let mut cluster = start_cluster();
    let primary = one_primary(&cluster);
    let admin = |id: u16| cluster.node(id).admin_addr.to_string();

    // One admin port is enough: the others are found through the peers it announces (once
    // they have connected to it), and each row is then in its node's own words.
    let mut out = String::new();
    let found_all = support::wait_until(Duration::from_secs(5), || {
        let (code, text, err) = understudy(&args(&["status", "--admin", &admin(primary)]));
        assert_eq!(code, 0, "{err}");
        out = text;
        out.lines()
            .skip(1)
            .zip(1..=3u16)
            .all(|(row, id)| row.ends_with(&format!("node {id}")))
    });
    assert!(found_all, "rows not reported by their own nodes:\n{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "a header and 3 rows:\n{out}");
    assert!(lines[0].starts_with("NODE"), "{out}");
    for header in [
        "ROLE",
        "EPOCH",
        "DURABLE LSN",
        "COMMIT LSN",
        "LAG",
        "LAST HEARTBEAT",
    ] {
        assert!(lines[0].contains(header), "no {header} column:\n{out}");
    }
    let role_at = lines[0].find("ROLE").unwrap();
    for (row, id) in lines[1..].iter().zip(1..=3u16) {
        assert!(row.starts_with(&id.to_string()), "{out}");
        // Columns are aligned: every role starts under ROLE.
        assert!(
            row[role_at..].starts_with("primary") || row[role_at..].starts_with("backup"),
            "{out}"
        );
    }
    let primary_rows = lines[1..]
        .iter()
        .filter(|row| row[role_at..].starts_with("primary"))
        .count();
    assert_eq!(primary_rows, 1, "{out}");

    // All three asked: each row is reported by its own node.
    let (code, out, err) = understudy(&args(&[
        "status",
        "--admin",
        &admin(1),
        "--admin",
        &admin(2),
        "--admin",
        &admin(3),
    ]));
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (row, id) in lines[1..].iter().zip(1..=3u16) {
        assert!(row.starts_with(&id.to_string()), "{out}");
        assert!(row.ends_with(&format!("node {id}")), "{out}");
    }

    // --json from one admin port: every node's own status, and the primary.
    let (code, out, err) = understudy(&args(&["status", "--json", "--admin", &admin(primary)]));
    assert_eq!(code, 0, "{err}");
    let merged: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(merged["primary"], primary, "{out}");
    let ids: Vec<u64> = merged["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_u64())
        .collect();
    assert_eq!(ids, vec![1, 2, 3], "{out}");
    assert_eq!(
        merged["unreachable"].as_array().map(Vec::len),
        Some(0),
        "{out}"
    );

    // A backup that is down: its row comes from the primary's view, a note says its admin
    // port did not answer, and the command still succeeds (only an asked port fails it).
    let down = (1..=3u16).find(|&id| id != primary).unwrap();
    let (primary_admin, down_admin) = (admin(primary), admin(down));
    cluster.kill(down);
    let (code, out, err) = understudy(&args(&["status", "--admin", &primary_admin]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(
        err.contains("note: a peer's admin port did not answer"),
        "{err}"
    );
    let (code, _, err) = understudy(&args(&["status", "--admin", &down_admin]));
    assert_ne!(
        code, 0,
        "an asked port that does not answer must fail: {err}"
    );
    eprintln!("took {:?}", started.elapsed());
}

/// `understudy switchover` asked of the primary hands over to the target, which then answers
/// 200 on `/primary`; asked of a node that is no longer primary, it is refused in words and
/// exits 1.
#[test]
fn switchover_command_moves_the_primary_role_and_reports_the_pause() {
    let started = Instant::now();
    let cluster = start_cluster();
    let admin = |id: u16| cluster.node(id).admin_addr;

    // A loaded machine can stall a node past the failover timeout between finding the
    // primary and asking it, or the target behind it; then the ask is refused as "not the
    // primary" or times out, and we ask again.
    let mut attempts = 0;
    let (old, target) = loop {
        attempts += 1;
        let old = one_primary(&cluster);
        let target = (1..=3).find(|&id| id != old).unwrap();
        // As an operator would: switch only to a backup that follows the primary.
        wait_until(Duration::from_secs(5), || {
            code(admin(target), "/replica") == Some(200)
        });
        let (code, out, err) = understudy(&args(&[
            "switchover",
            "--admin",
            &admin(old).to_string(),
            "--to",
            &target.to_string(),
        ]));
        let retry = err.contains("is not the primary") || err.contains("timed out");
        if code != 0 && retry && attempts < 3 {
            continue;
        }
        assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
        let prefix = format!("switchover to node {target}: handed over; writes paused ");
        assert!(out.starts_with(&prefix) && out.ends_with(" ms\n"), "{out}");
        break (old, target);
    };
    assert!(
        wait_until(Duration::from_secs(5), || primaries(&cluster) == [target]),
        "node {target} never became the only primary; primaries now {:?}",
        primaries(&cluster)
    );

    // Asked through the old primary, a backup now, the command finds the new primary (by
    // the admin address it announced) and hands back: any node's admin port will do.
    let (code, out, err) = understudy(&args(&[
        "switchover",
        "--admin",
        &admin(old).to_string(),
        "--to",
        &old.to_string(),
    ]));
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(
        out.starts_with(&format!("switchover to node {old}: handed over")),
        "{out}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || primaries(&cluster) == [old]),
        "node {old} never became primary again; primaries now {:?}",
        primaries(&cluster)
    );
    // A node that is its own target is refused in words.
    let (code, out, err) = understudy(&args(&[
        "switchover",
        "--admin",
        &admin(target).to_string(),
        "--to",
        &old.to_string(),
    ]));
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(out.is_empty(), "{out}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "understudy: switchover to node {old}: refused: node {old} is already the primary"
        )),
        "{err}"
    );
    eprintln!("took {:?}", started.elapsed());
}

/// An admin port nobody listens on is one line naming the address, and exit 1.
#[test]
fn status_command_names_an_unreachable_admin_port() {
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let (code, out, err) = understudy(&args(&["status", "--admin", &addr]));
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err,
        format!("understudy: cannot reach the admin port {addr}: connection refused\n")
    );
}

/// `--admin-listen` on a port that is taken stops `understudy run` at once with one line
/// naming the flag and the address.
#[test]
fn run_refuses_an_admin_port_that_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let mut cluster = Cluster::new(3);
    cluster.node_mut(1).admin_addr = addr;
    let output = support::output_within(cluster.command(1), Duration::from_secs(10));
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let expected = format!("understudy: --admin-listen {addr}: cannot listen");
    assert!(err.lines().any(|line| line.starts_with(&expected)), "{err}");
}

/// `/metrics` of a primary and of a backup, read by the Prometheus project's own Python
/// OpenMetrics parser (Debian's python3-prometheus-client, which CI installs), the format
/// the Content-Type names: every line parses, `# EOF` ends it, no family is declared twice
/// (the parser refuses clashing names, a counter `x` and a gauge `x_total` included), and
/// every sample belongs to a declared family.
#[test]
fn metrics_parse_with_the_prometheus_client_parser() {
    const CHECK: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
names = []
for family in text_string_to_metric_families(sys.stdin.read()):
    names.append(family.name)
    # A sample under no declared family is taken as a family of its own, of type unknown.
    if family.type == "unknown":
        sys.exit(f"sample {family.name} belongs to no declared family")
    for sample in family.samples:
        suffix = sample.name[len(family.name):]
        if not sample.name.startswith(family.name) or suffix not in ("", "_total", "_created", "_bucket", "_count", "_sum", "_info"):
            sys.exit(f"sample {sample.name} is outside its family {family.name}")
# OpenMetrics names a counter's family without `_total`: `x` and `x_total` would be one.
twice = sorted({n for n in names if names.count(n) > 1 or n + "_total" in names})
if twice:
    sys.exit(f"families declared twice: {twice}")
for wanted in ("understudy_lag_seconds", "understudy_peer_lag_seconds", "understudy_build_info", "process_open_fds", "process_cpu_seconds", "understudy_elections", "understudy_snapshot_lsn", "understudy_data_dir_free_bytes", "understudy_fsync_seconds"):
    if wanted not in names:
        sys.exit(f"no family {wanted}")
print(len(names))
"#;
    let python = "/usr/bin/python3";
    let available = std::process::Command::new(python)
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        available,
        "{python} with prometheus_client is needed (Debian: apt-get install python3-prometheus-client; .ci/run installs it)"
    );
    let cluster = start_cluster();
    let primary = one_primary(&cluster);
    let backup = (1..=3).find(|&id| id != primary).unwrap();
    for id in [primary, backup] {
        let (code, head, body) =
            http(cluster.node(id).admin_addr, "GET", "/metrics").expect("/metrics");
        assert_eq!(code, 200);
        assert!(
            head.to_ascii_lowercase().contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{head}"
        );
        let mut child = std::process::Command::new(python)
            .args(["-c", CHECK])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run python3");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(body.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "node {id}'s /metrics: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A client holding admin connections open without finishing a request takes at most
/// `CONNECTIONS_PER_SOURCE_MAX` (16) of the 64 slots: a probe from another address is
/// still answered at once (before, 64 such connections starved `/health` for the 10 s
/// header timeout, and a client reconnecting kept it starved).
#[test]
fn one_source_holding_admin_connections_open_does_not_starve_another() {
    let cluster = Cluster::start(1);
    let admin = cluster.node(1).admin_addr;
    assert!(wait_until(Duration::from_secs(10), || code(
        admin, "/health"
    ) == Some(200)));
    let held: Vec<TcpStream> = (0..80)
        .filter_map(|_| {
            let mut stream = TcpStream::connect(admin).ok()?;
            stream.write_all(b"GET /health HTTP/1.1\r\n").ok()?;
            Some(stream)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // A probe from another address of the loopback network.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let answer = runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind("127.0.0.2:0".parse().unwrap()).ok()?;
        let mut stream = tokio::time::timeout(Duration::from_secs(2), socket.connect(admin))
            .await
            .ok()?
            .ok()?;
        stream
            .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut answer))
            .await
            .ok()?
            .ok()?;
        Some(String::from_utf8_lossy(&answer).into_owned())
    });
    drop(held);
    assert!(
        answer
            .as_deref()
            .is_some_and(|answer| answer.starts_with("HTTP/1.1 200")),
        "the probe got {answer:?} after {:?}",
        started.elapsed()
    );
}
