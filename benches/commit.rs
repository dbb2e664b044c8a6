//! End-to-end commit benchmark: three real `understudy` nodes on loopback with
//! `--fsync always`, an application built on the client library, and N proposals in flight.
//! Prints committed records per second and the commit latency seen by `propose` (p50, p99,
//! p999) for each N.
//!
//! ```text
//! cargo bench --bench commit                       # 1, 16 and 256 in flight, 128-byte records
//! cargo bench --bench commit -- --inflight 256 --seconds 10 --record-len 1024
//! cargo bench --bench commit -- --tls both         # plain, then mutual TLS, and the ratio
//! cargo bench --bench commit -- --half-peak        # then open loop at half the peak rate
//! cargo bench --bench commit -- --runtime multi    # the application on a multi-thread runtime
//! ```
//!
//! `--half-peak`: after the in-flight runs, proposals arrive on a schedule (open loop) at
//! half the highest rate those runs reached, each a future of its own, however many are in
//! flight; a commit's latency counts from its scheduled time, so a stall delays every
//! proposal due during it instead of hiding them (no coordinated omission).
//!
//! `--runtime current` (the default) runs the application, that is the proposers and the
//! three drivers, on one thread, as the key-value example and the sidecar run;
//! `--runtime multi` on tokio's multi-thread runtime, where the driver's tasks and the
//! proposers wake each other across threads (measured in `benches/README.md`).
//!
//! The open loop's schedule is kept by a thread of its own that wakes every
//! [`PACE_STEP`] and releases the proposals that have come due, so that a proposal waits for
//! its schedule no longer than that (tokio's timer ticks in milliseconds).
//!
//! `--rate R` runs the open loop at R records per second instead of half the peak, so that
//! runs on a machine whose peak varies compare (`--inflight 1` keeps the closed-loop run
//! before it cheap).
//!
//! `--apps apart` runs each backup's driver on a thread and current-thread runtime of its
//! own, as a deployment with one application process per node would; by default
//! (`--apps shared`) the three drivers share the proposers' runtime, so that thread also
//! receives, verifies and applies every record twice more.
//!
//! `--tls on` runs the cluster with mutual TLS on its peer links (a throwaway CA made by
//! the benchmark); `--tls both` runs plain and TLS clusters one after the other and prints
//! TLS records/s over plain records/s for each N.
//!
//! Not a timed test: it measures, prints, and always exits 0 unless the cluster fails.

#[path = "../tests/support/mod.rs"]
mod support;

mod common;
use common::{measure, percentile};
use support::app_thread::AppThread;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use understudy::client::{BoxError, Driver, Role, StateMachine};
use understudy::Lsn;

/// Applies nothing but counts: the benchmark measures replication, not the application.
#[derive(Default)]
struct Sink(u64);

impl StateMachine for Sink {
    type Output = ();
    fn apply(&mut self, _lsn: Lsn, _command: &[u8]) {
        self.0 += 1;
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.to_le_bytes().to_vec()
    }
    fn restore(&mut self, _lsn: Lsn, _snapshot: &[u8]) -> Result<(), BoxError> {
        Ok(())
    }
}

struct Options {
    inflight: Vec<usize>,
    seconds: f64,
    record_len: usize,
    /// Which clusters to run: plain TCP, mutual TLS, or both.
    tls: Vec<bool>,
    /// Also run open loop at half the peak rate.
    half_peak: bool,
    /// The open loop's rate instead of half the peak (records per second).
    rate: Option<f64>,
    /// The application on a multi-thread runtime instead of one thread.
    multi_thread: bool,
    /// Each backup's application (its driver) on a thread and runtime of its own, as in a
    /// deployment where each node's application is a process of its own.
    apps_apart: bool,
}

fn options() -> Options {
    let mut options = Options {
        inflight: vec![1, 16, 256],
        seconds: 3.0,
        record_len: 128,
        tls: vec![false],
        half_peak: false,
        rate: None,
        multi_thread: false,
        apps_apart: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--inflight" => {
                options.inflight = args
                    .next()
                    .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
                    .unwrap_or_default()
            }
            "--seconds" => {
                options.seconds = args.next().and_then(|v| v.parse().ok()).unwrap_or(3.0)
            }
            "--record-len" => {
                options.record_len = args.next().and_then(|v| v.parse().ok()).unwrap_or(128)
            }
            "--tls" => {
                options.tls = match args.next().as_deref() {
                    Some("on") => vec![true],
                    Some("both") => vec![false, true],
                    _ => vec![false],
                }
            }
            "--half-peak" => options.half_peak = true,
            "--rate" => {
                options.half_peak = true;
                options.rate = args.next().and_then(|v| v.parse().ok());
            }
            "--apps" => {
                options.apps_apart = match args.next().as_deref() {
                    Some("shared") => false,
                    Some("apart") => true,
                    other => panic!("--apps shared|apart, not {other:?}"),
                }
            }
            "--runtime" => {
                options.multi_thread = match args.next().as_deref() {
                    Some("current") => false,
                    Some("multi") => true,
                    other => panic!("--runtime current|multi, not {other:?}"),
                }
            }
            _ => {} // cargo bench passes --bench
        }
    }
    options
}

fn main() {
    let options = options();
    let runtime = if options.multi_thread {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    }
    .enable_all()
    .build()
    .expect("a runtime");
    let mut rates = Vec::new();
    for &tls in &options.tls {
        rates.push(runtime.block_on(run(&options, tls)));
    }
    if let [plain, tls] = &rates[..] {
        println!("TLS against plain, records/s:");
        for ((inflight, plain), (_, tls)) in plain.iter().zip(tls) {
            println!("{inflight:>9}  {:>6.2}x", tls / plain);
        }
    }
}

/// Runs every in-flight count on a fresh cluster; returns (in flight, records/s) pairs.
async fn run(options: &Options, tls: bool) -> Vec<(usize, f64)> {
    let mut cluster = support::Cluster::new(3);
    cluster.args = vec![
        "--heartbeat-interval".into(),
        "50ms".into(),
        "--failover-timeout".into(),
        "500ms".into(),
        "--fsync".into(),
        "always".into(),
    ];
    if tls {
        support::tls::secure(&mut cluster);
    }
    for node in &mut cluster.nodes {
        // As in production: the tests' debug lines (one per append on the primary) are
        // work this benchmark does not measure.
        node.env.push(("RUST_LOG".into(), "info".into()));
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    // With --apps apart, the primary is found from the nodes' /metrics first, so that only
    // its driver shares this runtime with the proposers.
    let apart_primary = options.apps_apart.then(|| find_primary(&cluster));
    let mut drivers = Vec::new();
    let mut apart = Vec::new();
    for node in &cluster.nodes {
        if apart_primary.is_some_and(|primary| primary != node.id) {
            apart.push(AppThread::<Sink>::start(node.app_socket.clone()));
        } else {
            drivers.push(connect(&node.app_socket).await);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let primary = loop {
        if let Some(d) = drivers.iter().find(|d| d.role().role == Role::Primary) {
            break Arc::clone(d);
        }
        assert!(Instant::now() < deadline, "no primary");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "3 nodes, --fsync always, {}, {}-byte records, {} s per run, {} runtime{}; primary is node {}",
        if tls { "mutual TLS" } else { "plain TCP" },
        options.record_len,
        options.seconds,
        if options.multi_thread { "multi-thread" } else { "current-thread" },
        if options.apps_apart { ", each backup's application on a thread of its own" } else { "" },
        primary.node_id()
    );
    println!(
        "{:>9}  {:>12}  {:>9}  {:>9}  {:>9}",
        "in flight", "records/s", "p50", "p99", "p999"
    );
    let payload = Bytes::from(vec![b'x'; options.record_len]);
    let mut rates = Vec::new();
    for &inflight in &options.inflight {
        // Warm up briefly, then measure.
        let _ = measure(&primary, &payload, inflight, 0.3).await;
        let (count, mut latencies, elapsed) =
            measure(&primary, &payload, inflight, options.seconds).await;
        latencies.sort_unstable();
        let rate = count as f64 / elapsed.as_secs_f64();
        rates.push((inflight, rate));
        println!(
            "{inflight:>9}  {:>12.0}  {:>7.2}ms  {:>7.2}ms  {:>7.2}ms",
            rate,
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            percentile(&latencies, 0.999).as_secs_f64() * 1e3,
        );
    }
    if options.half_peak {
        let peak = rates.iter().map(|&(_, rate)| rate).fold(0.0, f64::max);
        let rate = options.rate.unwrap_or(peak / 2.0);
        let primary_id = primary.node_id().0;
        let before = commit_buckets(&cluster, primary_id);
        let (count, mut latencies, mut lags, elapsed) =
            open_loop(&primary, &payload, rate, options.seconds).await;
        lags.sort_unstable();
        let after = commit_buckets(&cluster, primary_id);
        latencies.sort_unstable();
        println!(
            "open loop at {} ({rate:.0}/s asked): {:.0} records/s, p50 {:.2}ms, p99 {:.2}ms, p999 {:.2}ms, max {:.2}ms",
            if options.rate.is_some() { "a fixed rate" } else { "half the peak" },
            count as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            percentile(&latencies, 0.999).as_secs_f64() * 1e3,
            latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
        // Where the tail is: the primary's own commit latency (its /metrics, one sample per
        // append, from the append's arrival to its commit) against what the application saw.
        if let (Some(before), Some(after)) = (before, after) {
            let appends = after[COMMIT_BOUNDS.len()] - before[COMMIT_BOUNDS.len()];
            let shares: Vec<String> = COMMIT_BOUNDS
                .iter()
                .enumerate()
                .map(|(i, bound)| {
                    let within = after[i] - before[i];
                    format!(
                        "{:.2} % within {bound} s",
                        100.0 * within / appends.max(1.0)
                    )
                })
                .collect();
            println!(
                "  the primary's appends in the open loop: {appends:.0}; {}",
                shares.join(", ")
            );
            println!(
                "  of each latency, the wait to be proposed (pacing and this task): p50 {:.2}ms, p99 {:.2}ms, max {:.2}ms",
                percentile(&lags, 0.50).as_secs_f64() * 1e3,
                percentile(&lags, 0.99).as_secs_f64() * 1e3,
                lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
            );
        }
    }
    drop(drivers);
    drop(apart);
    for id in 1..=3 {
        cluster.kill(id);
    }
    rates
}

/// Connects a driver to a node's app socket, retrying while the node starts.
async fn connect(app_socket: &std::path::Path) -> Arc<Driver<Sink>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Driver::connect(app_socket, Sink::default()).await {
            Ok(driver) => return Arc::new(driver),
            Err(e) if Instant::now() > deadline => panic!("connect: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The node that reports itself primary on `/metrics`, once one does.
fn find_primary(cluster: &support::Cluster) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for node in &cluster.nodes {
            if cluster.metric(node.id, "understudy_role{role=\"primary\"}") == Some(1.0) {
                return node.id;
            }
        }
        assert!(Instant::now() < deadline, "no primary");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The bounds of the primary's commit histogram reported after the open loop.
const COMMIT_BOUNDS: [&str; 4] = ["0.001", "0.0025", "0.005", "0.01"];

/// The primary's cumulative commit histogram at [`COMMIT_BOUNDS`], then its count.
fn commit_buckets(cluster: &support::Cluster, id: u16) -> Option<Vec<f64>> {
    let page = cluster.metrics(id)?;
    let mut buckets = COMMIT_BOUNDS
        .iter()
        .map(|bound| {
            support::metric_in(
                &page,
                &format!("understudy_commit_seconds_bucket{{le=\"{bound}\"}}"),
            )
        })
        .collect::<Option<Vec<f64>>>()?;
    buckets.push(support::metric_in(
        &page,
        "understudy_commit_seconds_count",
    )?);
    Some(buckets)
}

/// How often the open loop's pacing thread releases the proposals that have come due.
const PACE_STEP: Duration = Duration::from_micros(100);

/// Proposes `rate` records per second on a fixed schedule for `seconds`, each a future of
/// its own, however many are in flight; returns the commits, their latencies from their
/// scheduled times, how late after its scheduled time each was proposed, and the time from
/// the first scheduled proposal to the last commit. A
/// pacing thread sends the due times of the proposals that have come due, every
/// [`PACE_STEP`], to this task, which starts them and polls them all.
async fn open_loop(
    driver: &Arc<Driver<Sink>>,
    payload: &Bytes,
    rate: f64,
    seconds: f64,
) -> (usize, Vec<Duration>, Vec<Duration>, Duration) {
    let total = (rate * seconds) as u64;
    let started = Instant::now();
    let (due_tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Instant>>();
    let pacer = std::thread::spawn(move || {
        let mut next = 0;
        while next < total {
            let now = Instant::now();
            let mut due = Vec::new();
            while next < total {
                let at = started + Duration::from_secs_f64(next as f64 / rate);
                if at > now {
                    break;
                }
                due.push(at);
                next += 1;
            }
            if !due.is_empty() && due_tx.send(due).is_err() {
                return;
            }
            std::thread::sleep(PACE_STEP);
        }
    });
    // Each proposal is a future of its own, polled from this one task: a task spawned per
    // proposal cost this thread more than the commits did (at about 200,000 proposals a
    // second it reached 150,000, with this thread the busiest on the machine).
    let mut in_flight = FuturesUnordered::new();
    let mut latencies = Vec::with_capacity(total as usize);
    let mut lags = Vec::with_capacity(total as usize);
    let mut pacing = true;
    loop {
        tokio::select! {
            due = due_rx.recv(), if pacing => match due {
                Some(due) => {
                    for due in due {
                        let (driver, payload) = (Arc::clone(driver), payload.clone());
                        in_flight.push(async move {
                            let lag = due.elapsed();
                            driver.propose(payload).await.expect("committed");
                            (due.elapsed(), lag)
                        });
                    }
                }
                None => pacing = false,
            },
            Some((latency, lag)) = in_flight.next(), if !in_flight.is_empty() => {
                latencies.push(latency);
                lags.push(lag);
            }
            else => break,
        }
    }
    pacer.join().expect("the pacing thread");
    (latencies.len(), latencies, lags, started.elapsed())
}
