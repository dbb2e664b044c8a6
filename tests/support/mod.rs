//! The process-test harness: a cluster of real `understudy` processes on loopback, each with
//! its own temporary data dir and log file, killed by PID (SIGKILL) and again when the
//! harness is dropped. `UNDERSTUDY_KEEP_TEMP=1` keeps the files of a run for a post-mortem;
//! a panicking test prints the tail of every node's log.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod app_thread;
pub mod journal;
pub mod tls;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Picks a free loopback port below the kernel's ephemeral range, never the same port
/// twice in one test process.
///
/// Why below: a port found by binding port 0 is itself ephemeral, and once released the
/// kernel may use it as the local port of any outgoing connection (a node dialling a peer)
/// before the node under test binds it; the node then fails at start with "address in
/// use". Ports below the range are never handed out implicitly. Each process starts at an
/// offset derived from its PID so that two test processes rarely probe the same ports, and
/// every candidate is checked by binding it; a collision that still slips through fails
/// loudly at bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let (low, high) = port_window();
    let span = u32::from(high - low);
    let start = std::process::id().wrapping_mul(7919) % span;
    let _ = NEXT.compare_exchange(u32::MAX, start, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let offset = NEXT.fetch_add(1, Ordering::SeqCst) % span;
        let port = low + u16::try_from(offset).expect("offset below the window size");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {low}..{high}");
}

/// A listener on a free loopback port from the same window as [`free_port`], bound once
/// and kept: for a server the test itself runs, so that nothing can take the port between
/// a check and the bind that counts. A port that turns out taken is skipped for the next.
pub fn bound_listener() -> TcpListener {
    let mut last = None;
    for _ in 0..64 {
        let port = free_port();
        match TcpListener::bind(("127.0.0.1", port)) {
            Ok(listener) => return listener,
            Err(e) => last = Some(e),
        }
    }
    panic!("no loopback port could be bound: {last:?}");
}

/// The window `free_port` draws from: from 10000 up to the start of the ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`, 32768 by default on Linux).
fn port_window() -> (u16, u16) {
    const LOW: u16 = 10_000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_start > LOW + 1_000,
        "the ephemeral port range starts at {ephemeral_start}; tests need ports 10000-11000 free of it"
    );
    (LOW, ephemeral_start)
}

/// The `understudy` executable under test: `UNDERSTUDY_BIN` if set (to compare two builds
/// with the same benchmark), else the one Cargo built with this test.
pub fn binary() -> std::ffi::OsString {
    std::env::var_os("UNDERSTUDY_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_understudy").into())
}

/// A one-shot HTTP GET (`Connection: close`): the status code and the body, or `None` if
/// the port does not answer in time or the answer is not HTTP.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    Some((head.split(' ').nth(1)?.parse().ok()?, body.to_string()))
}

/// A trial count from the environment variable `var`, or `default`.
pub fn trials_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct Node {
    pub id: u16,
    pub peer_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub client_addr: SocketAddr,
    pub data_dir: PathBuf,
    pub app_socket: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// Extra flags for this node only.
    pub extra: Vec<String>,
    /// Extra environment variables for this node only.
    pub env: Vec<(String, String)>,
    /// A secret file other than the cluster's, for this node only.
    pub secret: Option<PathBuf>,
    /// `--peers` other than the cluster's, for this node only.
    pub peers: Option<String>,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub secret: PathBuf,
    pub peers: String,
    pub nodes: Vec<Node>,
    /// Flags every node gets.
    pub args: Vec<String>,
}

/// Heartbeat and failover timeout for tests: fast, but with room for a loaded 2-core CI box.
pub const TEST_TIMING: [&str; 4] = [
    "--heartbeat-interval",
    "20ms",
    "--failover-timeout",
    "300ms",
];

pub fn secret_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write the secret file");
    // Readable by its owner only, or the node refuses it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("make the secret file private");
    path
}

impl Cluster {
    /// Creates (but does not start) a cluster of `count` nodes.
    pub fn new(count: u16) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("understudy-test-")
            .tempdir()
            .expect("a temp dir");
        let secret = secret_file(dir.path(), "secret", "test-secret-0123456789abcdef\n");
        let nodes: Vec<Node> = (1..=count)
            .map(|id| Node {
                id,
                peer_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                admin_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                client_addr: SocketAddr::from(([127, 0, 0, 1], free_port())),
                data_dir: dir.path().join(format!("node{id}")),
                app_socket: dir.path().join(format!("node{id}.sock")),
                log: dir.path().join(format!("node{id}.log")),
                child: None,
                extra: Vec::new(),
                env: Vec::new(),
                secret: None,
                peers: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer_addr))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            dir,
            secret,
            peers,
            nodes,
            args: TEST_TIMING.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Creates and starts a cluster.
    pub fn start(count: u16) -> Cluster {
        let mut cluster = Cluster::new(count);
        for id in 1..=count {
            cluster.start_node(id);
        }
        cluster
    }

    pub fn node(&self, id: u16) -> &Node {
        &self.nodes[usize::from(id) - 1]
    }

    pub fn node_mut(&mut self, id: u16) -> &mut Node {
        &mut self.nodes[usize::from(id) - 1]
    }

    /// The command line a node runs with.
    pub fn command(&self, id: u16) -> Command {
        let node = self.node(id);
        let mut command = Command::new(binary());
        command
            .arg("run")
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--peer-listen")
            .arg(node.peer_addr.to_string())
            .arg("--peers")
            .arg(node.peers.as_ref().unwrap_or(&self.peers))
            .arg("--app-socket")
            .arg(&node.app_socket)
            .arg("--cluster-secret-file")
            .arg(node.secret.as_ref().unwrap_or(&self.secret))
            .arg("--admin-listen")
            .arg(node.admin_addr.to_string())
            .arg("--client-listen")
            .arg(node.client_addr.to_string())
            .args(&self.args)
            .args(&node.extra)
            .env("RUST_LOG", "info,understudy=debug")
            .envs(node.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    /// Starts (or restarts) node `id`, appending to its log file.
    pub fn start_node(&mut self, id: u16) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.node(id).log)
            .expect("open the node's log");
        let log_err = log.try_clone().expect("clone the log handle");
        let child = self
            .command(id)
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("start understudy");
        self.node_mut(id).child = Some(child);
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self, id: u16) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; returns the exit code.
    pub fn terminate(&mut self, id: u16, timeout: Duration) -> Option<i32> {
        let mut child = self.node_mut(id).child.take()?;
        // SAFETY: kill(2) with a PID we spawned and have not reaped.
        unsafe {
            libc_kill(child.id() as i32, 15);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGSTOP / SIGCONT a node (a stalled process).
    pub fn pause(&self, id: u16, stop: bool) {
        if let Some(pid) = self.node(id).pid() {
            // SAFETY: signalling a child we spawned and have not reaped.
            unsafe {
                libc_kill(pid as i32, if stop { 19 } else { 18 });
            }
        }
    }

    /// The last lines of every node's log, for a failed test's message.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "---- node {} ({}) ----\n",
                node.id,
                node.log.display()
            ));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Runs `understudy wal dump` on a node's data dir and returns its stdout.
    pub fn wal_dump(&self, id: u16) -> String {
        let output = Command::new(binary())
            .args(["wal", "dump"])
            .arg(&self.node(id).data_dir)
            .output()
            .expect("run understudy wal dump");
        assert!(
            output.status.success(),
            "wal dump failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// A sample of a `/metrics` page: the value of the line `name value`.
pub fn metric_in(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

impl Cluster {
    /// A counter or gauge from node `id`'s `/metrics` (the line `name value`), if it
    /// answers and reports it.
    pub fn metric(&self, id: u16, name: &str) -> Option<f64> {
        metric_in(&self.metrics(id)?, name)
    }

    /// Node `id`'s whole `/metrics` page, if it answers.
    pub fn metrics(&self, id: u16) -> Option<String> {
        let (code, body) = http_get(self.node(id).admin_addr, "/metrics")?;
        (code == 200).then_some(body)
    }

    /// Asks node `from`, the primary, to hand over to node `to` (`understudy switchover`);
    /// true if it says it did.
    pub fn switchover(&self, from: u16, to: u16) -> bool {
        let mut command = Command::new(binary());
        command
            .arg("switchover")
            .arg("--admin")
            .arg(self.node(from).admin_addr.to_string())
            .arg("--to")
            .arg(to.to_string());
        let output = output_within(command, Duration::from_secs(20));
        if !output.status.success() {
            eprintln!(
                "understudy switchover from {from} to {to}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        output.status.success()
    }
}

/// Runs a command to completion, killing it after `timeout` (a command that should have
/// refused to start but did not must not hang the test).
pub fn output_within(mut command: Command, timeout: Duration) -> std::process::Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(timeout).is_err() {
        // SAFETY: signalling a child we spawned and have not reaped.
        unsafe {
            libc_kill(pid, 9);
        }
    }
    waiter
        .join()
        .expect("the waiter thread")
        .expect("the command's output")
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs_tail(40));
        }
        if std::env::var_os("UNDERSTUDY_KEEP_TEMP").is_some() {
            let path = self.dir.path().to_owned();
            eprintln!("keeping {}", path.display());
            // Leak the TempDir so it is not removed.
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("a temp dir"));
            std::mem::forget(dir);
        }
    }
}
