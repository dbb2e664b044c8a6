//! The end-to-end benchmark driver: starts a three-node cluster of real `understudy`
//! processes on loopback (`--fsync always`, default timing: 50 ms heartbeats, 500 ms
//! failover timeout) with an application on the client library beside each node, and
//! reports:
//!
//! 1. commit throughput and p50/p99/p999 commit latency (`propose` to its result) against
//!    the number of proposals in flight and the record size;
//! 2. replication lag: from the primary's commit of a record to a backup application's
//!    apply of it, percentiles over both backups;
//! 3. failover time over repeated `kill -9` of the primary: from the kill to the first
//!    commit on the new primary (min / median / max);
//! 4. recovery time after a restart against log size: from starting a killed backup's
//!    process to its admin port answering with the log opened and verified.
//!
//! ```text
//! cargo bench --bench e2e                      # everything, about 2 minutes after the build
//! cargo bench --bench e2e -- --quick           # shorter runs and fewer sizes
//! cargo bench --bench e2e -- --summary         # also `key value` lines for scripts
//! cargo bench --bench e2e -- --redis-master 127.0.0.1:PORT   # SET + WAIT 1 instead
//! ```
//!
//! With `--redis-master` it measures a Redis primary with replicas instead: each operation
//! is `SET` then `WAIT 1 0` on its own connection (acknowledged once one replica has it),
//! for the same in-flight counts and value sizes; `benches/redis_compare.sh` sets Redis up
//! and prints both side by side.
//!
//! Not a timed test: it measures, prints, and exits 0 unless the cluster fails.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;
use common::{measure, percentile};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use understudy::client::{BoxError, Driver, Role, StateMachine};
use understudy::Lsn;

/// When each LSN was applied here, shared with the measuring code.
type AppliedAt = Arc<Mutex<HashMap<u64, Instant>>>;

/// Applies nothing but notes when each LSN was applied (for the lag), when asked to.
struct Timed {
    applied_at: Option<AppliedAt>,
}

impl StateMachine for Timed {
    type Output = Lsn;
    fn apply(&mut self, lsn: Lsn, _command: &[u8]) -> Lsn {
        if let Some(applied_at) = &self.applied_at {
            let mut map = applied_at.lock().unwrap_or_else(|e| e.into_inner());
            map.insert(lsn.get(), Instant::now());
        }
        lsn
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _lsn: Lsn, _snapshot: &[u8]) -> Result<(), BoxError> {
        Ok(())
    }
}

struct Options {
    inflight: Vec<usize>,
    record_lens: Vec<usize>,
    seconds: f64,
    failovers: usize,
    /// Records (of 1 KiB) the recovery phase has written before each measurement, in total.
    recovery_records: Vec<usize>,
    summary: bool,
    redis_master: Option<SocketAddr>,
}

fn options() -> Options {
    let mut options = Options {
        inflight: vec![1, 16, 256],
        record_lens: vec![128, 1024, 16 * 1024],
        seconds: 3.0,
        failovers: 7,
        recovery_records: vec![10_000, 100_000, 300_000],
        summary: false,
        redis_master: None,
    };
    let list = |v: Option<String>| -> Vec<usize> {
        v.map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
            .unwrap_or_default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--inflight" => options.inflight = list(args.next()),
            "--record-len" => options.record_lens = list(args.next()),
            "--seconds" => {
                options.seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(3.0)
            }
            "--failovers" => {
                options.failovers = args.next().and_then(|v| v.parse().ok()).unwrap_or(7)
            }
            "--recovery-records" => options.recovery_records = list(args.next()),
            "--summary" => options.summary = true,
            "--quick" => {
                options.seconds = 1.0;
                options.record_lens = vec![128, 1024];
                options.failovers = 3;
                options.recovery_records = vec![10_000, 50_000];
            }
            "--redis-master" => options.redis_master = args.next().and_then(|v| v.parse().ok()),
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Prints a figure as a `key value` line when `--summary` is on.
fn summary(options: &Options, key: &str, value: f64) {
    if options.summary {
        println!("summary {key} {value:.3}");
    }
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match options.redis_master {
        Some(master) => runtime.block_on(redis_run(&options, master)),
        None => runtime.block_on(run(&options)),
    }
}

/// A cluster with a driver per node; drivers are `None` while their node is down.
struct Bench {
    cluster: support::Cluster,
    drivers: Vec<Option<Arc<Driver<Timed>>>>,
    applied_at: Vec<AppliedAt>,
}

impl Bench {
    async fn connect(&mut self, id: u16) {
        let index = usize::from(id) - 1;
        let socket = self.cluster.node(id).app_socket.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let machine = Timed {
                applied_at: Some(Arc::clone(&self.applied_at[index])),
            };
            match Driver::connect(&socket, machine).await {
                Ok(driver) => {
                    self.drivers[index] = Some(Arc::new(driver));
                    return;
                }
                Err(e) if Instant::now() > deadline => panic!("connect to node {id}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    async fn primary(&self) -> (u16, Arc<Driver<Timed>>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (index, driver) in self.drivers.iter().enumerate() {
                if let Some(driver) = driver {
                    if driver.role().role == Role::Primary {
                        return (index as u16 + 1, Arc::clone(driver));
                    }
                }
            }
            assert!(Instant::now() < deadline, "no primary");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill(&mut self, id: u16) {
        self.drivers[usize::from(id) - 1] = None;
        self.cluster.kill(id);
    }
}

async fn run(options: &Options) {
    let mut cluster = support::Cluster::new(3);
    cluster.args = vec!["--fsync".into(), "always".into()];
    for id in 1..=3 {
        cluster.start_node(id);
    }
    let mut bench = Bench {
        cluster,
        drivers: vec![None, None, None],
        applied_at: (0..3).map(|_| AppliedAt::default()).collect(),
    };
    for id in 1..=3 {
        bench.connect(id).await;
    }
    let (primary_id, primary) = bench.primary().await;
    println!("3 nodes on loopback, --fsync always, heartbeat 50 ms, failover timeout 500 ms; primary is node {primary_id}");

    println!("\ncommit throughput and latency (propose to result, through the client library)");
    println!(
        "{:>7}  {:>9}  {:>11}  {:>9}  {:>9}  {:>9}  {:>9}",
        "record", "in flight", "records/s", "MB/s", "p50", "p99", "p999"
    );
    for &record_len in &options.record_lens {
        let payload = Bytes::from(vec![b'x'; record_len]);
        for &inflight in &options.inflight {
            let _ = measure(&primary, &payload, inflight, 0.3).await;
            let run = measure(&primary, &payload, inflight, options.seconds).await;
            report_commit(options, record_len, inflight, run);
        }
    }

    lag(options, &bench, primary_id, &primary).await;
    drop(primary);
    failover(options, &mut bench).await;
    recovery(options, &mut bench).await;
    for id in 1..=3 {
        bench.kill(id);
    }
}

/// Replication lag: 16 proposers of 128-byte records for a few seconds; for every record
/// committed, the time from `propose` returning on the primary to each backup's apply.
async fn lag(options: &Options, bench: &Bench, primary_id: u16, primary: &Arc<Driver<Timed>>) {
    let payload = Bytes::from(vec![b'x'; 128]);
    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (driver, payload, stop) = (Arc::clone(primary), payload.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut committed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let lsn = driver.propose(payload.clone()).await.expect("committed");
                    committed.push((lsn.get(), Instant::now()));
                }
                committed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(options.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = Vec::new();
    for task in tasks {
        committed.extend(task.await.expect("a proposer"));
    }
    // Let the backups apply the last ones.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut lags = Vec::new();
    let mut missing = 0;
    for (index, applied_at) in bench.applied_at.iter().enumerate() {
        if index + 1 == usize::from(primary_id) {
            continue;
        }
        let applied_at = applied_at.lock().unwrap_or_else(|e| e.into_inner());
        for (lsn, at) in &committed {
            match applied_at.get(lsn) {
                // A backup can apply before propose returns on the primary: lag 0.
                Some(applied) => lags.push(applied.saturating_duration_since(*at)),
                None => missing += 1,
            }
        }
    }
    lags.sort_unstable();
    println!(
        "\nreplication lag, primary commit to backup apply (16 in flight, 128 B, {} samples over 2 backups{})",
        lags.len(),
        if missing > 0 { format!(", {missing} not applied within 500 ms") } else { String::new() }
    );
    let (p50, p99, p999, max) = (
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        percentile(&lags, 0.999),
        lags.last().copied().unwrap_or_default(),
    );
    println!(
        "p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms",
        ms(p50),
        ms(p99),
        ms(p999),
        ms(max)
    );
    summary(options, "lag_p50_ms", ms(p50));
    summary(options, "lag_p99_ms", ms(p99));
    summary(options, "lag_p999_ms", ms(p999));
}

/// Prints one row of the commit table (and its summary lines) from a run's commits, their
/// latencies and its duration.
fn report_commit(
    options: &Options,
    record_len: usize,
    inflight: usize,
    (count, mut latencies, elapsed): (usize, Vec<Duration>, Duration),
) {
    latencies.sort_unstable();
    let rate = count as f64 / elapsed.as_secs_f64();
    let (p50, p99, p999) = (
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
    );
    println!(
        "{record_len:>7}  {inflight:>9}  {rate:>11.0}  {:>9.1}  {:>7.2}ms  {:>7.2}ms  {:>7.2}ms",
        rate * record_len as f64 / 1e6,
        ms(p50),
        ms(p99),
        ms(p999)
    );
    let key = format!("commit_{record_len}_{inflight}");
    summary(options, &format!("{key}_per_s"), rate);
    summary(options, &format!("{key}_p50_ms"), ms(p50));
    summary(options, &format!("{key}_p99_ms"), ms(p99));
    summary(options, &format!("{key}_p999_ms"), ms(p999));
}

/// `kill -9` of the primary, `failovers` times: time to the first commit on a new primary.
async fn failover(options: &Options, bench: &mut Bench) {
    let payload = Bytes::from_static(b"failover probe");
    let mut times = Vec::new();
    for _ in 0..options.failovers {
        let (old, _) = bench.primary().await;
        // Keep writing up to the kill so the log is live.
        let killed_at = Instant::now();
        bench.kill(old);
        let deadline = killed_at + Duration::from_secs(30);
        'found: loop {
            for driver in bench.drivers.iter().flatten() {
                let probe = tokio::time::timeout(
                    Duration::from_millis(200),
                    driver.propose(payload.clone()),
                );
                if let Ok(Ok(_)) = probe.await {
                    break 'found;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no new primary committed within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(killed_at.elapsed());
        bench.cluster.start_node(old);
        bench.connect(old).await;
        // Let the restarted node catch up before the next kill.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    times.sort_unstable();
    let list: Vec<String> = times.iter().map(|t| format!("{:.0}", ms(*t))).collect();
    println!(
        "\nfailover, kill -9 of the primary to the first commit on the new primary ({} kills): min {:.0} ms  median {:.0} ms  max {:.0} ms  (all: {} ms)",
        times.len(),
        ms(times[0]),
        ms(percentile(&times, 0.5)),
        ms(times[times.len() - 1]),
        list.join(", ")
    );
    summary(options, "failover_min_ms", ms(times[0]));
    summary(options, "failover_median_ms", ms(percentile(&times, 0.5)));
    summary(options, "failover_max_ms", ms(times[times.len() - 1]));
}

/// Grows the log with 1 KiB records, then kills a backup and times its restart to the
/// admin port answering (the log has been opened and every record verified by then). The
/// log also holds what the earlier phases wrote; the table gives its real size.
async fn recovery(options: &Options, bench: &mut Bench) {
    println!("\nrecovery after kill -9 and restart of a backup, by log size (1 KiB records)");
    println!(
        "{:>14}  {:>9}  {:>13}",
        "records in log", "log MiB", "restart to up"
    );
    let payload = Bytes::from(vec![b'r'; 1024]);
    let mut written = 0usize;
    for &target in &options.recovery_records {
        let (primary_id, primary) = bench.primary().await;
        // 256 in flight, until the log holds `target` records.
        let stop = Arc::new(AtomicBool::new(false));
        let need = target.saturating_sub(written);
        let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..256)
            .map(|_| {
                let (driver, payload) = (Arc::clone(&primary), payload.clone());
                let (stop, counter) = (Arc::clone(&stop), Arc::clone(&counter));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if counter.fetch_add(1, Ordering::Relaxed) >= need {
                            break;
                        }
                        driver.propose(payload.clone()).await.expect("committed");
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("a proposer");
        }
        written = target;
        drop(primary);
        let backup = (1..=3).find(|id| *id != primary_id).expect("a backup");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let log_len = dir_len(&bench.cluster.node(backup).data_dir);
        let log_records = bench.drivers[usize::from(backup) - 1]
            .as_ref()
            .map_or(0, |driver| driver.applied_lsn().get());
        bench.kill(backup);
        let admin = bench.cluster.node(backup).admin_addr;
        let started = Instant::now();
        bench.cluster.start_node(backup);
        while !admin_answers(admin) {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "node {backup} did not come back"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let took = started.elapsed();
        println!(
            "{log_records:>14}  {:>9.1}  {:>10.0} ms",
            log_len as f64 / (1 << 20) as f64,
            ms(took)
        );
        summary(
            options,
            &format!("recovery_{}_mib_ms", log_len >> 20),
            ms(took),
        );
        bench.connect(backup).await;
    }
}

/// Bytes in the files under `dir`, recursively.
fn dir_len(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(meta) if meta.is_dir() => dir_len(&entry.path()),
            Ok(meta) => meta.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Whether the node's admin port answers `/status` with 200.
fn admin_answers(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"GET /status HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// `SET` + `WAIT 1 0` against a Redis primary, one connection per in-flight operation.
async fn redis_run(options: &Options, master: SocketAddr) {
    println!("Redis primary {master}: SET then WAIT 1 0 per operation, one connection each");
    println!(
        "{:>7}  {:>9}  {:>11}  {:>9}  {:>9}  {:>9}  {:>9}",
        "value", "in flight", "ops/s", "MB/s", "p50", "p99", "p999"
    );
    for &record_len in &options.record_lens {
        for &inflight in &options.inflight {
            let _ = redis_measure(master, record_len, inflight, 0.3).await;
            let run = redis_measure(master, record_len, inflight, options.seconds).await;
            report_commit(options, record_len, inflight, run);
        }
    }
}

async fn redis_measure(
    master: SocketAddr,
    record_len: usize,
    inflight: usize,
    seconds: f64,
) -> (usize, Vec<Duration>, Duration) {
    let client = redis::Client::open(format!("redis://{master}/")).expect("a redis URL");
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..inflight {
        // No response timeout: WAIT 1 0 waits as long as the replicas take, as `propose`
        // does for the backups.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(10)))
            .set_response_timeout(None);
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect to redis");
        let stop = Arc::clone(&stop);
        let value = vec![b'x'; record_len];
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 14);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let at = Instant::now();
                let set: redis::RedisResult<()> = redis::cmd("SET")
                    .arg(format!("bench:{task}:{seq}"))
                    .arg(&value)
                    .query_async(&mut con)
                    .await;
                let acked: redis::RedisResult<i64> = match set {
                    Ok(()) => redis::cmd("WAIT").arg(1).arg(0).query_async(&mut con).await,
                    Err(e) => Err(e),
                };
                match acked {
                    Ok(acked) if acked >= 1 => latencies.push(at.elapsed()),
                    Ok(acked) => return (latencies, Some(format!("WAIT 1 0 returned {acked}"))),
                    // This connection stops; the run reports it.
                    Err(e) => return (latencies, Some(e.to_string())),
                }
            }
            (latencies, None)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    let mut errors = Vec::new();
    for task in tasks {
        let (latencies, error) = task.await.expect("a redis client");
        all.extend(latencies);
        errors.extend(error);
    }
    if let Some(first) = errors.first() {
        eprintln!(
            "{} of {inflight} connections failed ({record_len} B); the first: {first}",
            errors.len()
        );
    }
    (all.len(), all, started.elapsed())
}
