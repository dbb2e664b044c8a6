//! Counters and histograms the node keeps for `/metrics`. Plain atomics: the core loop, the
//! WAL writer thread and service tasks update them without locks; the admin server reads
//! them and renders the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A fixed-bucket latency histogram (Prometheus `histogram` semantics: cumulative buckets
/// rendered from per-bucket counts).
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending.
    bounds: &'static [f64],
    /// One count per bound, plus one for +Inf.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

/// Bounds for fsync and commit latencies: 50 µs to 5 s.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = self.bounds.partition_point(|&bound| bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(
            u64::try_from(value.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Appends the histogram in Prometheus text format.
    pub fn render(&self, name: &str, help: &str, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Everything `/metrics` reports that is not in [`super::NodeStatus`].
#[derive(Debug)]
pub struct Metrics {
    /// Records proposed by the local application and accepted by the core.
    pub appended_records: AtomicU64,
    pub appended_bytes: AtomicU64,
    /// Local appends answered as committed.
    pub committed_records: AtomicU64,
    /// Elections this node stood in.
    pub elections: AtomicU64,
    /// Times this node became primary.
    pub promotions: AtomicU64,
    /// Peer frames refused (bad handshake, malformed, bad CRC).
    pub peer_frames_refused: AtomicU64,
    /// Client-port connections accepted, refused over the limit, closed because the primary
    /// changed, and open now.
    pub proxy_accepted: AtomicU64,
    pub proxy_refused: AtomicU64,
    pub proxy_closed_on_role_change: AtomicU64,
    pub proxy_active: AtomicU64,
    /// Proposals refused because the WAL writer's queue was full (the disk is behind).
    pub proposals_refused_disk_behind: AtomicU64,
    /// Appends from the primary taken in as heartbeats, their records dropped, because the
    /// WAL writer's queue was full.
    pub appends_deferred: AtomicU64,
    /// On a backup: the longest time, in nanoseconds, between two appends (heartbeats
    /// included) the core loop took in from the same primary in the same epoch.
    pub heartbeat_gap_max_nanos: AtomicU64,
    /// Damaged committed records found in the local log, and repaired from a peer's copy.
    pub records_damaged: AtomicU64,
    pub records_repaired: AtomicU64,
    /// Times the application run by the sidecar was started again after it exited
    /// (rendered only when there is one: see `admin::render_metrics`).
    pub app_restarts: AtomicU64,
    /// Connections to `--app-addr` that failed (the client port's and the liveness probe's).
    pub app_upstream_failures: AtomicU64,
    /// Times the application's last subscribed app API connection went away.
    pub app_detachments: AtomicU64,
    /// Times the application was found gone (detached, not answering, or unreachable).
    pub app_gone: AtomicU64,
    /// 1 while the application is live (`app_health`), else 0.
    pub app_live: AtomicU64,
    pub fsync_latency: Histogram,
    /// Proposal to commit, on the primary.
    pub commit_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            appended_records: AtomicU64::new(0),
            appended_bytes: AtomicU64::new(0),
            committed_records: AtomicU64::new(0),
            elections: AtomicU64::new(0),
            promotions: AtomicU64::new(0),
            peer_frames_refused: AtomicU64::new(0),
            proxy_accepted: AtomicU64::new(0),
            proxy_refused: AtomicU64::new(0),
            proxy_closed_on_role_change: AtomicU64::new(0),
            proxy_active: AtomicU64::new(0),
            proposals_refused_disk_behind: AtomicU64::new(0),
            appends_deferred: AtomicU64::new(0),
            heartbeat_gap_max_nanos: AtomicU64::new(0),
            records_damaged: AtomicU64::new(0),
            records_repaired: AtomicU64::new(0),
            app_restarts: AtomicU64::new(0),
            app_upstream_failures: AtomicU64::new(0),
            app_detachments: AtomicU64::new(0),
            app_gone: AtomicU64::new(0),
            app_live: AtomicU64::new(0),
            fsync_latency: Histogram::new(LATENCY_BOUNDS),
            commit_latency: Histogram::new(LATENCY_BOUNDS),
        }
    }
}

impl Metrics {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    /// Counts a gap between two appends from the primary towards the largest seen.
    pub fn observe_heartbeat_gap(&self, gap: Duration) {
        let nanos = u64::try_from(gap.as_nanos()).unwrap_or(u64::MAX);
        self.heartbeat_gap_max_nanos
            .fetch_max(nanos, Ordering::Relaxed);
    }

    /// Appends the counters and histograms in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let counters: [(&str, &str, &AtomicU64); 16] = [
            (
                "understudy_appended_records_total",
                "Records accepted from the local application.",
                &self.appended_records,
            ),
            (
                "understudy_appended_bytes_total",
                "Payload bytes accepted from the local application.",
                &self.appended_bytes,
            ),
            (
                "understudy_committed_records_total",
                "Local appends acknowledged as committed.",
                &self.committed_records,
            ),
            (
                "understudy_elections_total",
                "Elections this node stood in.",
                &self.elections,
            ),
            (
                "understudy_promotions_total",
                "Times this node became primary.",
                &self.promotions,
            ),
            (
                "understudy_peer_frames_refused_total",
                "Peer connections dropped for a bad handshake or frame.",
                &self.peer_frames_refused,
            ),
            (
                "understudy_client_connections_total",
                "Client-port connections accepted.",
                &self.proxy_accepted,
            ),
            (
                "understudy_client_connections_refused_total",
                "Client-port connections refused over the limit.",
                &self.proxy_refused,
            ),
            (
                "understudy_client_connections_cut_total",
                "Client-port connections closed because the primary changed.",
                &self.proxy_closed_on_role_change,
            ),
            (
                "understudy_proposals_refused_disk_behind_total",
                "Proposals refused because the WAL writer's queue was full.",
                &self.proposals_refused_disk_behind,
            ),
            (
                "understudy_appends_deferred_total",
                "Appends from the primary taken in as heartbeats, records dropped for the primary to resend, because the WAL writer's queue was full.",
                &self.appends_deferred,
            ),
            (
                "understudy_records_damaged_total",
                "Damaged committed records found in the local log (checksum failures no crash explains).",
                &self.records_damaged,
            ),
            (
                "understudy_records_repaired_total",
                "Damaged records rewritten from a peer's verified copy.",
                &self.records_repaired,
            ),
            (
                "understudy_app_upstream_failures_total",
                "Connections to the application's --app-addr that failed (client port and liveness probe).",
                &self.app_upstream_failures,
            ),
            (
                "understudy_app_detachments_total",
                "Times the application's last subscribed app API connection closed.",
                &self.app_detachments,
            ),
            (
                "understudy_app_gone_total",
                "Times the application was found gone: detached, not answering pings, or unreachable at --app-addr.",
                &self.app_gone,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP understudy_client_connections_open Client-port connections open now."
        );
        // Not `understudy_client_connections`: that is the family of the counter
        // `understudy_client_connections_total`, and a strict parser refuses a family
        // declared twice.
        let _ = writeln!(out, "# TYPE understudy_client_connections_open gauge");
        let _ = writeln!(
            out,
            "understudy_client_connections_open {}",
            self.proxy_active.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP understudy_app_live 1 while the application is attached, answering and reachable."
        );
        let _ = writeln!(out, "# TYPE understudy_app_live gauge");
        let _ = writeln!(
            out,
            "understudy_app_live {}",
            self.app_live.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP understudy_heartbeat_gap_max_seconds On a backup: the longest time between two appends (heartbeats included) the core loop took in from the same primary in the same epoch, since start."
        );
        let _ = writeln!(out, "# TYPE understudy_heartbeat_gap_max_seconds gauge");
        let _ = writeln!(
            out,
            "understudy_heartbeat_gap_max_seconds {}",
            self.heartbeat_gap_max_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        self.fsync_latency.render(
            "understudy_fsync_seconds",
            "WAL fdatasync latency per group-commit batch.",
            out,
        );
        self.commit_latency.render(
            "understudy_commit_seconds",
            "Time from a local append to its commit, on the primary.",
            out,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let histogram = Histogram::new(&[0.001, 0.01]);
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_millis(50));
        let mut out = String::new();
        histogram.render("x", "help", &mut out);
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
    }

    /// The heartbeat gap gauge keeps the largest gap observed, in seconds.
    #[test]
    fn heartbeat_gap_gauge_keeps_the_largest_gap() {
        let metrics = Metrics::default();
        metrics.observe_heartbeat_gap(Duration::from_millis(40));
        metrics.observe_heartbeat_gap(Duration::from_millis(250));
        metrics.observe_heartbeat_gap(Duration::from_millis(60));
        let mut out = String::new();
        metrics.render(&mut out);
        assert!(
            out.contains("\nunderstudy_heartbeat_gap_max_seconds 0.25\n"),
            "{out}"
        );
    }
}
