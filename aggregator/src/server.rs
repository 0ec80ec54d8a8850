//! `/metrics` (Prometheus text), `/healthz` (liveness: ClickHouse answers)
//! and `/readyz` (readiness: also joined the consumer group and the latest
//! flush succeeded) over HTTP.

use crate::metrics::Metrics;
use runtime::ops::{BoxFuture, Check, Ops, Readiness};
use std::sync::Arc;

/// What the operations endpoints read (`runtime::ops`).
struct AggOps {
    metrics: Arc<Metrics>,
    ch: clickhouse::Client,
    /// ClickHouse probed at most once a second, however often asked.
    probe: runtime::health::Probe,
}

impl AggOps {
    async fn clickhouse_up(&self) -> Result<(), String> {
        self.probe.check(|| runtime::health::clickhouse_ping(&self.ch)).await
    }
}

impl Ops for AggOps {
    /// Live when ClickHouse answers.
    fn health(&self) -> BoxFuture<'_, Vec<Check>> {
        Box::pin(async { vec![Check { name: "clickhouse", result: self.clickhouse_up().await }] })
    }

    /// Ready when this member can do its job: ClickHouse answers, it has
    /// joined the consumer group, its latest flush was written and no
    /// assigned partition is refused; with `assignedPartitions`.
    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async {
            let m = &self.metrics;
            let mut reasons = Vec::new();
            if let Err(e) = self.clickhouse_up().await {
                reasons.push(e);
            }
            if m.group_joined.get() == 0 {
                reasons.push("not yet assigned partitions by the consumer group".to_string());
            }
            if m.flush_failing.get() != 0 {
                reasons.push("the latest flush to ClickHouse failed (re-reading from the last checkpoint)".to_string());
            }
            let refused = m.partitions_refused.get();
            if refused > 0 {
                reasons.push(format!(
                    "{refused} assigned partition(s) refused: checkpoint outside the Kafka log or claimed by another member (see the logs)"
                ));
            }
            let mut extra = serde_json::Map::new();
            extra.insert("assignedPartitions".into(), m.assigned_partitions.get().into());
            Readiness { reasons, extra }
        })
    }

    fn registry(&self) -> &prometheus::Registry {
        &self.metrics.registry
    }
}

/// Serve `/healthz`, `/readyz` and `/metrics` (`runtime::ops`) until the
/// process ends, with the slow-client limits every service's HTTP has.
pub async fn serve(listen: &str, metrics: Arc<Metrics>, ch: clickhouse::Client) -> std::io::Result<()> {
    let app = runtime::ops::router(Arc::new(AggOps { metrics, ch, probe: runtime::health::Probe::default() }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    runtime::serve::serve(listener, app, runtime::serve::Timeouts::default(), std::future::pending()).await
}
