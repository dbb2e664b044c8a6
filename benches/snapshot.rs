//! Catch-up and snapshot-transfer benchmark: three real `understudy` nodes on loopback.
//!
//! 1. **From the log.** A backup is stopped, the primary commits `--gib` GiB of 64 KiB
//!    records, the backup is restarted: time until its durable LSN reaches the primary's.
//! 2. **Restart.** That backup, holding the whole log, is killed and started again: time
//!    until `/status` answers with its log recovered.
//! 3. **From a snapshot.** A fresh cluster; a backup is stopped, the primary commits `--gib`
//!    GiB, its application takes a `--gib` GiB snapshot and the log is truncated behind it;
//!    the backup is restarted and is sent the snapshot: time until it has caught up, and the
//!    peak RSS (`VmHWM`) of the sending and the receiving sidecar during the transfer (the
//!    sender's peak is reset through `/proc/PID/clear_refs` just before).
//!
//! ```text
//! cargo bench --bench snapshot                # 1 GiB
//! cargo bench --bench snapshot -- --gib 0.25
//! ```
//!
//! Not a timed test: it measures, prints, and exits 0 unless the cluster fails. The data
//! dirs are under `$TMPDIR` (a real disk here, see README.md).

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use support::Cluster;
use understudy::client::{BoxError, Driver, Role, StateMachine};
use understudy::Lsn;

const RECORD_LEN: usize = 64 * 1024;
const INFLIGHT: usize = 16;

/// Counts what it applies; its snapshot is a synthetic body of `snapshot_len` bytes.
struct Synthetic {
    applied: u64,
    snapshot_len: usize,
}

impl StateMachine for Synthetic {
    type Output = ();
    fn apply(&mut self, _lsn: Lsn, _command: &[u8]) {
        self.applied += 1;
    }
    fn snapshot(&self) -> Vec<u8> {
        // Not constant bytes, in case anything on the way ever compresses.
        let mut body = vec![0u8; self.snapshot_len];
        let mut x = self.applied | 1;
        for chunk in body.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        body
    }
    fn restore(&mut self, _lsn: Lsn, _snapshot: &[u8]) -> Result<(), BoxError> {
        Ok(())
    }
}

/// A one-shot HTTP GET: the body, if the port answers 200.
fn get(addr: SocketAddr, path: &str) -> Option<String> {
    support::http_get(addr, path).and_then(|(code, body)| (code == 200).then_some(body))
}

fn status(cluster: &Cluster, id: u16) -> Option<serde_json::Value> {
    serde_json::from_str(&get(cluster.node(id).admin_addr, "/status")?).ok()
}

fn field(cluster: &Cluster, id: u16, path: &[&str]) -> u64 {
    let mut value = status(cluster, id).unwrap_or_default();
    for key in path {
        value = value[*key].clone();
    }
    value.as_u64().unwrap_or(0)
}

fn vm_hwm_kib(pid: u32) -> u64 {
    proc_status_kib(pid, "VmHWM:")
}

/// A `kB` field of `/proc/PID/status`.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn wait(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cluster(extra: &[&str]) -> Cluster {
    let mut cluster = Cluster::new(3);
    cluster.args = [
        "--heartbeat-interval",
        "50ms",
        "--failover-timeout",
        "1s",
        "--snapshot-interval",
        "1h",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect();
    for id in 1..=3 {
        cluster.start_node(id);
    }
    cluster
}

/// Connects an application to every node; returns the primary's id and its driver.
async fn primary(cluster: &Cluster, snapshot_len: usize) -> (u16, Arc<Driver<Synthetic>>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for id in 1..=3 {
            let socket = &cluster.node(id).app_socket;
            let machine = Synthetic {
                applied: 0,
                snapshot_len,
            };
            if let Ok(driver) = Driver::connect(socket, machine).await {
                if driver.role().role == Role::Primary {
                    return (id, Arc::new(driver));
                }
            }
        }
        assert!(Instant::now() < deadline, "no primary");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Commits `bytes` of 64 KiB records with [`INFLIGHT`] proposals in flight.
async fn fill(driver: &Arc<Driver<Synthetic>>, bytes: u64) -> f64 {
    let count = bytes / RECORD_LEN as u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..INFLIGHT as u64 {
        let driver = Arc::clone(driver);
        tasks.push(tokio::spawn(async move {
            let payload = Bytes::from(vec![task as u8; RECORD_LEN]);
            let mut i = task;
            while i < count {
                driver.propose(payload.clone()).await.expect("propose");
                i += INFLIGHT as u64;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    bytes as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// Restarts `id` and waits until its durable LSN reaches `target`; returns the time.
fn catch_up(cluster: &mut Cluster, id: u16, target: u64) -> Duration {
    let started = Instant::now();
    cluster.start_node(id);
    wait("catch-up", Duration::from_secs(600), || {
        field(cluster, id, &["durable_lsn"]) >= target
    });
    started.elapsed()
}

fn main() {
    let mut gib = 1.0f64;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--gib" {
            gib = args.next().and_then(|v| v.parse().ok()).unwrap_or(gib);
        }
    }
    let bytes = (gib * (1u64 << 30) as f64) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("snapshot bench: {gib} GiB, 64 KiB records, 3 nodes on loopback, fsync always");

    // 1 and 2: catch-up from the log, then restart with the whole log.
    {
        let mut cluster = cluster(&["--snapshot-after-bytes", "1000GiB"]);
        let (p, driver) = runtime.block_on(primary(&cluster, 0));
        let backup = if p == 1 { 2 } else { 1 };
        cluster.kill(backup);
        let write_mb_s = runtime.block_on(fill(&driver, bytes));
        let target = field(&cluster, p, &["last_lsn"]);
        let took = catch_up(&mut cluster, backup, target);
        println!(
            "from the log: primary committed {:.1} MB/s; backup {:.0} MB behind caught up in {:.2} s = {:.1} MB/s",
            write_mb_s,
            bytes as f64 / 1e6,
            took.as_secs_f64(),
            bytes as f64 / 1e6 / took.as_secs_f64()
        );
        cluster.kill(backup);
        let started = Instant::now();
        cluster.start_node(backup);
        wait("restart", Duration::from_secs(60), || {
            field(&cluster, backup, &["last_lsn"]) >= target
        });
        println!(
            "restart with a {:.0} MB log: /status answering with the log recovered after {:.3} s",
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );
        drop(driver);
    }

    // 3: catch-up from a snapshot.
    {
        let after = format!("{}", bytes * 9 / 10);
        let mut cluster = cluster(&[
            "--snapshot-after-bytes",
            &after,
            "--wal-retain-bytes",
            "0",
            "--snapshots-retain",
            "1",
        ]);
        let (p, driver) = runtime.block_on(primary(&cluster, bytes as usize));
        let backup = if p == 1 { 2 } else { 1 };
        let other = 6 - p - backup;
        cluster.kill(backup);
        runtime.block_on(fill(&driver, bytes));
        wait(
            "the snapshot and the truncation",
            Duration::from_secs(300),
            || {
                field(&cluster, p, &["snapshot", "snapshot_lsn"]) > 0
                    && field(&cluster, p, &["first_lsn"]) > 1
            },
        );
        let target = field(&cluster, p, &["last_lsn"]);
        let snapshot_len = bytes;
        let sender = cluster.node(p).pid().expect("primary pid");
        let before_kib = vm_hwm_kib(sender);
        let rss_kib = proc_status_kib(sender, "VmRSS:");
        // Reset the sender's peak RSS so that it measures the transfer alone.
        let _ = std::fs::write(format!("/proc/{sender}/clear_refs"), "5");
        let took = catch_up(&mut cluster, backup, target);
        let receiver = cluster.node(backup).pid().expect("backup pid");
        println!(
            "from a snapshot: backup sent a {:.0} MB snapshot and caught up in {:.2} s = {:.1} MB/s",
            snapshot_len as f64 / 1e6,
            took.as_secs_f64(),
            snapshot_len as f64 / 1e6 / took.as_secs_f64()
        );
        println!(
            "peak RSS during the transfer: sender (node {p}) {:.1} MiB (RSS when the transfer started {:.1} MiB; peak while writing the log {:.1} MiB), receiver (node {backup}) {:.1} MiB; third node {:.1} MiB",
            vm_hwm_kib(sender) as f64 / 1024.0,
            rss_kib as f64 / 1024.0,
            before_kib as f64 / 1024.0,
            vm_hwm_kib(receiver) as f64 / 1024.0,
            cluster.node(other).pid().map_or(0, vm_hwm_kib) as f64 / 1024.0,
        );
        drop(driver);
    }
}
