//! What the end-to-end benchmark programs share: N proposers in flight against a driver,
//! and percentiles of the latencies they saw.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use understudy::client::{Driver, StateMachine};

/// Runs `inflight` proposers of `payload` for `seconds`; returns the commits, their
/// latencies (propose to committed and applied) and the time taken.
pub async fn measure<S: StateMachine>(
    driver: &Arc<Driver<S>>,
    payload: &Bytes,
    inflight: usize,
    seconds: f64,
) -> (usize, Vec<Duration>, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..inflight)
        .map(|_| {
            let (driver, payload, stop) = (Arc::clone(driver), payload.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 14);
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    driver.propose(payload.clone()).await.expect("committed");
                    latencies.push(at.elapsed());
                }
                latencies
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a proposer"));
    }
    (all.len(), all, started.elapsed())
}

/// The `p` quantile (0..=1) of `sorted`, zero when it is empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[at]
}
