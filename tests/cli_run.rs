//! `understudy run` refuses a bad configuration with one clear line that names the flag and
//! the value, and exits non-zero before touching anything.

mod support;

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_understudy"))
        .arg("run")
        .args(args)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

struct Setup {
    dir: tempfile::TempDir,
    secret: String,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let secret = support::secret_file(dir.path(), "secret", "0123456789abcdef0123456789")
        .display()
        .to_string();
    Setup { dir, secret }
}

fn base<'a>(setup: &'a Setup, data: &'a str, peers: &'a str, listen: &'a str) -> Vec<&'a str> {
    vec![
        "--node-id",
        "1",
        "--data-dir",
        data,
        "--peer-listen",
        listen,
        "--peers",
        peers,
        "--cluster-secret-file",
        &setup.secret,
    ]
}

fn assert_one_line(code: i32, err: &str, needle: &str) {
    assert_ne!(code, 0, "accepted: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line expected: {err}");
    assert!(lines[0].starts_with("understudy: "), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in {err}");
}

#[test]
fn node_missing_from_peers_is_refused() {
    let s = setup();
    let data = s.dir.path().join("d").display().to_string();
    let args = base(
        &s,
        &data,
        "2=127.0.0.1:7002,3=127.0.0.1:7003",
        "127.0.0.1:7001",
    );
    let (code, err) = run(&args);
    assert_one_line(code, &err, "--node-id 1 is not in --peers");
    assert!(!s.dir.path().join("d").exists(), "the data dir was created");
}

#[test]
fn duplicate_ids_and_addresses_are_refused() {
    let s = setup();
    let data = s.dir.path().join("d").display().to_string();
    let (code, err) = run(&base(
        &s,
        &data,
        "1=127.0.0.1:7001,1=127.0.0.1:7002",
        "127.0.0.1:7001",
    ));
    assert_one_line(code, &err, "node id 1 appears twice");
    let (code, err) = run(&base(
        &s,
        &data,
        "1=127.0.0.1:7001,2=127.0.0.1:7001",
        "127.0.0.1:7001",
    ));
    assert_one_line(code, &err, "address 127.0.0.1:7001 appears twice");
}

#[test]
fn unsafe_sync_replicas_is_refused_in_plain_words() {
    let s = setup();
    let data = s.dir.path().join("d").display().to_string();
    let mut args = base(
        &s,
        &data,
        "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
        "127.0.0.1:7001",
    );
    args.extend(["--sync-replicas", "0"]);
    let (code, err) = run(&args);
    assert_one_line(code, &err, "would lose acknowledged writes on failover");
}

#[test]
fn bad_durations_and_timing_are_refused() {
    let s = setup();
    let data = s.dir.path().join("d").display().to_string();
    let peers = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";
    let mut args = base(&s, &data, peers, "127.0.0.1:7001");
    args.extend([
        "--heartbeat-interval",
        "200ms",
        "--failover-timeout",
        "300ms",
    ]);
    let (code, err) = run(&args);
    assert_one_line(code, &err, "must be at most a third of --failover-timeout");
    let mut args = base(&s, &data, peers, "127.0.0.1:7001");
    args.extend(["--failover-timeout", "soon"]);
    let (code, err) = run(&args);
    assert_ne!(code, 0);
    assert!(err.contains("--failover-timeout"), "{err}");
}

#[test]
fn port_in_use_is_refused_by_flag_and_address() {
    let s = setup();
    let data = s.dir.path().join("d").display().to_string();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let peers = format!("1={addr},2=127.0.0.1:7002,3=127.0.0.1:7003");
    let (code, err) = run(&base(&s, &data, &peers, &addr));
    assert_one_line(code, &err, &format!("--peer-listen {addr}: cannot listen"));
}

#[test]
fn short_or_missing_secret_is_refused() {
    let s = setup();
    let data = s.dir.path().join("d").display().to_string();
    let short = support::secret_file(s.dir.path(), "short", "tiny")
        .display()
        .to_string();
    let peers = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";
    let mut args = base(&s, &data, peers, "127.0.0.1:7001");
    let at = args
        .iter()
        .position(|a| *a == "--cluster-secret-file")
        .unwrap();
    args[at + 1] = &short;
    let (code, err) = run(&args);
    assert_one_line(code, &err, "use at least 16");
    args[at + 1] = "/nonexistent/secret";
    let (code, err) = run(&args);
    assert_one_line(code, &err, "--cluster-secret-file /nonexistent/secret");
}

/// A data dir made by another node, or under another cluster secret, is refused by name.
#[test]
fn data_dir_of_another_node_or_cluster_is_refused() {
    let mut cluster = support::Cluster::new(3);
    cluster.start_node(1);
    let data = cluster.node(1).data_dir.clone();
    assert!(support::wait_until(
        std::time::Duration::from_secs(10),
        || data.join("meta").exists()
    ));
    cluster.kill(1);
    // Node 2 pointed at node 1's data dir.
    cluster.node_mut(2).data_dir = data.clone();
    let output = support::output_within(cluster.command(2), std::time::Duration::from_secs(10));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("belongs to node 1, not node 2"), "{err}");
    // Node 1 with another cluster's secret.
    let other = support::secret_file(cluster.dir.path(), "other", "a-different-cluster-secret");
    cluster.node_mut(1).secret = Some(other);
    let output = support::output_within(cluster.command(1), std::time::Duration::from_secs(10));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(err.contains("belongs to another cluster"), "{err}");
}

#[test]
fn a_data_dir_is_made_private_and_an_open_one_is_warned_of() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let mut cluster = support::Cluster::new(3);
    // Two levels missing, and the app socket in the data dir (the default place).
    let data = cluster.dir.path().join("state").join("node1");
    cluster.node_mut(1).data_dir = data.clone();
    cluster.node_mut(1).app_socket = data.join("app.sock");
    cluster.start_node(1);
    let started = support::wait_until(std::time::Duration::from_secs(10), || {
        data.join("meta").exists()
    });
    assert!(started, "{}", cluster.logs_tail(20));
    cluster.kill(1);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(data.parent().unwrap()), 0o700);
    let warning = "the data dir is open to other users of this machine (mode 755)";
    assert!(!std::fs::read_to_string(&cluster.node(1).log)
        .unwrap()
        .contains(warning));

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    cluster.start_node(1);
    let warned = support::wait_until(std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(&cluster.node(1).log)
            .unwrap_or_default()
            .contains(warning)
    });
    cluster.kill(1);
    assert!(warned, "{}", cluster.logs_tail(20));
    // Warned of, not changed: the operator may mean it.
    assert_eq!(mode(&data), 0o755);
}
