//! Counters and histograms the node keeps for `/metrics`, and the helpers that render them
//! with prometheus-client. Plain atomics: the core loop, the WAL writer thread and service
//! tasks update them without locks (prometheus-client's own histogram takes a lock per
//! observation); at each scrape the admin server reads them into a registry of its own and
//! prometheus-client writes the OpenMetrics text.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
    NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// A fixed-bucket latency histogram (Prometheus `histogram` semantics: cumulative buckets
/// encoded from per-bucket counts).
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

    /// Encodes the histogram as the family `name` (`_bucket`, `_sum`, `_count`).
    pub fn encode(&self, encoder: &mut DescriptorEncoder, name: &str, help: &str) -> fmt::Result {
        // Per-bucket counts, upper bound first; the encoder makes them cumulative.
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain([f64::INFINITY])
            .zip(&self.counts)
            .map(|(bound, count)| (bound, count.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|&(_, count)| count).sum();
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
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
    /// On a backup: client-port connections forwarded straight to the primary's
    /// application, and those that could not reach it there and went through the
    /// primary's client port instead.
    pub proxy_direct: AtomicU64,
    pub proxy_direct_failed: AtomicU64,
    /// On a primary: client-port connections handed to the application itself (app API
    /// `TakeClients`) instead of forwarded.
    pub proxy_handed: AtomicU64,
    /// Proposals refused because the WAL writer's queue was full (the disk is behind).
    pub proposals_refused_disk_behind: AtomicU64,
    /// Lease reads asked of the core (the app API's `Read`), answered or refused.
    pub lease_reads: AtomicU64,
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
            proxy_direct: AtomicU64::new(0),
            proxy_direct_failed: AtomicU64::new(0),
            proxy_handed: AtomicU64::new(0),
            proposals_refused_disk_behind: AtomicU64::new(0),
            lease_reads: AtomicU64::new(0),
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

    /// Encodes the counters, gauges and histograms. Counter families are named without
    /// `_total`: the encoder adds it to the sample (`understudy_elections` is exposed as
    /// `understudy_elections_total`).
    pub fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result {
        let counters: [(&str, &str, &AtomicU64); 20] = [
            (
                "understudy_appended_records",
                "Records accepted from the local application.",
                &self.appended_records,
            ),
            (
                "understudy_appended_bytes",
                "Payload bytes accepted from the local application.",
                &self.appended_bytes,
            ),
            (
                "understudy_committed_records",
                "Local appends acknowledged as committed.",
                &self.committed_records,
            ),
            (
                "understudy_elections",
                "Elections this node stood in.",
                &self.elections,
            ),
            (
                "understudy_promotions",
                "Times this node became primary.",
                &self.promotions,
            ),
            (
                "understudy_peer_frames_refused",
                "Peer connections dropped for a bad handshake or frame.",
                &self.peer_frames_refused,
            ),
            (
                "understudy_client_connections",
                "Client-port connections accepted.",
                &self.proxy_accepted,
            ),
            (
                "understudy_client_connections_refused",
                "Client-port connections refused over the limit.",
                &self.proxy_refused,
            ),
            (
                "understudy_client_connections_cut",
                "Client-port connections closed because the primary changed.",
                &self.proxy_closed_on_role_change,
            ),
            (
                "understudy_client_connections_direct",
                "Client-port connections a backup forwarded straight to the primary's application.",
                &self.proxy_direct,
            ),
            (
                "understudy_client_connections_direct_failed",
                "Client-port connections that could not reach the primary's application and went through the primary's client port instead.",
                &self.proxy_direct_failed,
            ),
            (
                "understudy_client_connections_handed",
                "Client-port connections the primary handed to its application, which took them itself.",
                &self.proxy_handed,
            ),
            (
                "understudy_proposals_refused_disk_behind",
                "Proposals refused because the WAL writer's queue was full.",
                &self.proposals_refused_disk_behind,
            ),
            (
                "understudy_lease_reads",
                "Lease reads asked of this node by its application (answered with a read index, or refused when not primary).",
                &self.lease_reads,
            ),
            (
                "understudy_appends_deferred",
                "Appends from the primary taken in as heartbeats, records dropped for the primary to resend, because the WAL writer's queue was full.",
                &self.appends_deferred,
            ),
            (
                "understudy_records_damaged",
                "Damaged committed records found in the local log (checksum failures no crash explains).",
                &self.records_damaged,
            ),
            (
                "understudy_records_repaired",
                "Damaged records rewritten from a peer's verified copy.",
                &self.records_repaired,
            ),
            (
                "understudy_app_upstream_failures",
                "Connections to the application's --app-addr that failed (client port and liveness probe).",
                &self.app_upstream_failures,
            ),
            (
                "understudy_app_detachments",
                "Times the application's last subscribed app API connection closed.",
                &self.app_detachments,
            ),
            (
                "understudy_app_gone",
                "Times the application was found gone: detached, not answering pings, or unreachable at --app-addr.",
                &self.app_gone,
            ),
        ];
        for (name, help, counter) in counters {
            encode_counter(encoder, name, help, counter.load(Ordering::Relaxed))?;
        }
        // Not `understudy_client_connections`: that is the family of the counter
        // `understudy_client_connections_total`, and a family is declared once.
        encode_gauge(
            encoder,
            "understudy_client_connections_open",
            "Client-port connections open now.",
            self.proxy_active.load(Ordering::Relaxed),
        )?;
        encode_gauge(
            encoder,
            "understudy_app_live",
            "1 while the application is attached, answering and reachable.",
            self.app_live.load(Ordering::Relaxed),
        )?;
        encode_gauge(
            encoder,
            "understudy_heartbeat_gap_max_seconds",
            "On a backup: the longest time between two appends (heartbeats included) the core loop took in from the same primary in the same epoch, since start.",
            self.heartbeat_gap_max_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        )?;
        self.fsync_latency.encode(
            encoder,
            "understudy_fsync_seconds",
            "WAL fdatasync latency per group-commit batch.",
        )?;
        self.commit_latency.encode(
            encoder,
            "understudy_commit_seconds",
            "Time from a local append to its commit, on the primary.",
        )
    }
}

/// A counter family of one sample. `name` is the family's, without `_total`: the encoder
/// names the sample `{name}_total`.
pub fn encode_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeCounterValue,
) -> fmt::Result {
    debug_assert!(!name.ends_with("_total"), "{name}: the encoder adds _total");
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, counter.metric_type())?)
}

/// A gauge family of one sample without labels.
pub fn encode_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: impl EncodeGaugeValue,
) -> fmt::Result {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)
}

/// A gauge family with one sample per label set.
pub fn encode_gauges<L: EncodeLabelSet, V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The OpenMetrics text, `# EOF` included, of the families `encode` writes, rendered by
/// prometheus-client: `encode` is the one collector of a registry made for this call, so
/// it reads the atomics and the status as they are now.
pub fn render(
    encode: impl Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(encode)));
    let mut out = String::with_capacity(8 << 10);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The Content-Type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A closure as a prometheus-client [`Collector`].
struct Families<F>(F);

impl<F> fmt::Debug for Families<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Families")
    }
}

impl<F> Collector for Families<F>
where
    F: Fn(&mut DescriptorEncoder) -> fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        (self.0)(&mut encoder)
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
        let out = render(move |encoder| histogram.encode(encoder, "x", "help")).unwrap();
        assert!(
            out.starts_with("# HELP x help\n# TYPE x histogram\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_count 3\n"), "{out}");
        assert!(out.contains("x_sum 0.0555\n"), "{out}");
        assert!(out.ends_with("\n# EOF\n"), "{out}");
    }

    /// The heartbeat gap gauge keeps the largest gap observed, in seconds.
    #[test]
    fn heartbeat_gap_gauge_keeps_the_largest_gap() {
        let metrics = Metrics::default();
        metrics.observe_heartbeat_gap(Duration::from_millis(40));
        metrics.observe_heartbeat_gap(Duration::from_millis(250));
        metrics.observe_heartbeat_gap(Duration::from_millis(60));
        let out = render(move |encoder| metrics.encode(encoder)).unwrap();
        assert!(
            out.contains("\nunderstudy_heartbeat_gap_max_seconds 0.25\n"),
            "{out}"
        );
    }

    /// Counters are exposed with `_total`, which the encoder adds to the family's name.
    #[test]
    fn counters_are_exposed_with_total() {
        let metrics = Metrics::default();
        Metrics::add(&metrics.elections, 2);
        let out = render(move |encoder| metrics.encode(encoder)).unwrap();
        assert!(
            out.contains("# TYPE understudy_elections counter\nunderstudy_elections_total 2\n"),
            "{out}"
        );
        assert!(!out.contains("_total_total"), "{out}");
    }
}
