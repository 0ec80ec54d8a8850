//! Prometheus metrics of the aggregator (`/metrics`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use runtime::ops::register;

/// Every metric the aggregator exports. Names are documented in docs/operations.md.
pub struct Metrics {
    pub(crate) registry: Registry,
    pub(crate) events: IntCounterVec,
    pub(crate) late_events: IntCounter,
    pub(crate) dead_letters: IntCounterVec,
    pub(crate) dedup_horizon_exceeded: IntCounter,
    pub(crate) flush_seconds: Histogram,
    pub(crate) flush_rows: IntCounterVec,
    pub(crate) flush_errors: IntCounter,
    pub(crate) consumer_lag: IntGaugeVec,
    pub(crate) open_windows: IntGauge,
    pub(crate) pending_rows: IntGauge,
    pub(crate) dedup_viewers: IntGauge,
    pub(crate) assigned_partitions: IntGauge,
    /// 1 once the member completed its first partition assignment (also of zero partitions).
    pub group_joined: IntGauge,
    /// 1 while the latest flush attempt failed (ClickHouse not writable).
    pub flush_failing: IntGauge,
    pub(crate) fenced: IntCounter,
    pub(crate) contested: IntCounter,
    pub(crate) claims: IntCounter,
    pub(crate) partitions_refused: IntGauge,
    pub(crate) offset_errors: IntCounter,
}

impl Metrics {
    /// Every metric, registered (`runtime::ops::register`), and the
    /// internal events' counter (`runtime::events`).
    pub fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        runtime::events::register(&registry)?;
        Ok(Metrics {
            events: register(
                &registry,
                IntCounterVec::new(Opts::new("aggregator_events_total", "Kafka messages processed, by outcome"), &["outcome"]),
            )?,
            late_events: register(
                &registry,
                IntCounter::new("aggregator_late_events_total", "Counted events whose window was already behind the partition watermark"),
            )?,
            dead_letters: register(
                &registry,
                IntCounterVec::new(
                    Opts::new("aggregator_dead_letters_total", "Records sent to usage_dead_letters, by reason"),
                    &["reason"],
                ),
            )?,
            dedup_horizon_exceeded: register(
                &registry,
                IntCounter::new(
                    "aggregator_dedup_horizon_exceeded_total",
                    "Events of viewers whose dedup state had passed the horizon (counted as new)",
                ),
            )?,
            flush_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new("aggregator_flush_seconds", "Time to write one flush batch to ClickHouse")
                        .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
                ),
            )?,
            flush_rows: register(
                &registry,
                IntCounterVec::new(Opts::new("aggregator_flush_rows_total", "Rows written to ClickHouse, by table"), &["table"]),
            )?,
            flush_errors: register(
                &registry,
                IntCounter::new("aggregator_flush_errors_total", "Failed flushes (the partitions are claimed again and re-read)"),
            )?,
            consumer_lag: register(
                &registry,
                IntGaugeVec::new(Opts::new("aggregator_consumer_lag", "High watermark minus position, by partition"), &["partition"]),
            )?,
            open_windows: register(&registry, IntGauge::new("aggregator_open_windows", "Distinct windows with unflushed rows"))?,
            pending_rows: register(&registry, IntGauge::new("aggregator_pending_rows", "Aggregate rows not yet written"))?,
            dedup_viewers: register(&registry, IntGauge::new("aggregator_dedup_viewers", "Viewers held in the dedup state"))?,
            assigned_partitions: register(
                &registry,
                IntGauge::new("aggregator_assigned_partitions", "Partitions assigned to this member"),
            )?,
            group_joined: register(&registry, IntGauge::new("aggregator_group_joined", "1 once the first partition assignment completed"))?,
            flush_failing: register(&registry, IntGauge::new("aggregator_flush_failing", "1 while the latest flush attempt failed"))?,
            fenced: register(
                &registry,
                IntCounter::new(
                    "aggregator_fenced_total",
                    "Partitions found claimed by another member before a flush (their batch was dropped)",
                ),
            )?,
            contested: register(
                &registry,
                IntCounter::new(
                    "aggregator_claims_contested_total",
                    "Partitions found claimed by another member at the same epoch before a flush (claimed again)",
                ),
            )?,
            claims: register(
                &registry,
                IntCounter::new("aggregator_claims_total", "Partition claims written (assignments and re-claims after a failed flush)"),
            )?,
            partitions_refused: register(
                &registry,
                IntGauge::new(
                    "aggregator_partitions_refused",
                    "Assigned partitions not consumed: checkpoint outside the Kafka log, or claimed by another member",
                ),
            )?,
            offset_errors: register(
                &registry,
                IntCounter::new(
                    "aggregator_offset_errors_total",
                    "Checkpoints found outside the Kafka log, and offset-out-of-range errors from the broker",
                ),
            )?,
            registry,
        })
    }

    /// [`Metrics::try_new`]; the definitions are fixed, so a failure is a
    /// bug (the unit tests make them).
    pub fn new() -> Self {
        Self::try_new().expect("the aggregator's metrics are well-formed and unique")
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        runtime::ops::render(&self.registry).expect("encode metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
