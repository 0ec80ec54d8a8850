//! `/metrics` (Prometheus text), `/healthz` (liveness: ClickHouse answers)
//! and `/readyz` (readiness: also joined the consumer group and the latest
//! flush succeeded) over HTTP.

use crate::metrics::Metrics;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ch: clickhouse::Client,
    /// ClickHouse probed at most once a second, however often asked.
    probe: Arc<runtime::health::Probe>,
}

impl AppState {
    async fn clickhouse_up(&self) -> Result<(), String> {
        self.probe.check(|| runtime::health::clickhouse_ping(&self.ch)).await
    }
}

/// Serve until the process ends. `/healthz` answers 200 when ClickHouse answers.
pub async fn serve(listen: &str, metrics: Arc<Metrics>, ch: clickhouse::Client) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|State(s): State<AppState>| async move { s.metrics.render() }))
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move {
                match s.clickhouse_up().await {
                    Ok(()) => (StatusCode::OK, "ok".to_string()),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e),
                }
            }),
        )
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, ch, probe: Arc::new(runtime::health::Probe::default()) });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    // the slow-client limits every service's HTTP has (runtime::serve)
    runtime::serve::serve(listener, app, runtime::serve::Timeouts::default(), std::future::pending()).await
}

/// 200 with `{"ready": true, ...}` when this member can do its job: ClickHouse
/// answers, it has joined the consumer group, and its latest flush was written;
/// otherwise 503 with the reasons.
async fn readyz(State(s): State<AppState>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let mut reasons = Vec::new();
    if let Err(e) = s.clickhouse_up().await {
        reasons.push(e);
    }
    if s.metrics.group_joined.get() == 0 {
        reasons.push("not yet assigned partitions by the consumer group".to_string());
    }
    if s.metrics.flush_failing.get() != 0 {
        reasons.push("the latest flush to ClickHouse failed (re-reading from the last checkpoint)".to_string());
    }
    let refused = s.metrics.partitions_refused.get();
    if refused > 0 {
        reasons.push(format!(
            "{refused} assigned partition(s) refused: checkpoint outside the Kafka log or claimed by another member (see the logs)"
        ));
    }
    let body = serde_json::json!({
        "ready": reasons.is_empty(),
        "reasons": reasons,
        "assignedPartitions": s.metrics.assigned_partitions.get(),
    });
    (if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, axum::Json(body))
}
