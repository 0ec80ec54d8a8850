//! `/metrics` (Prometheus text) and `/healthz` over HTTP.

use crate::metrics::Metrics;
use axum::{extract::State, http::StatusCode, routing::get, Router};
use std::sync::Arc;

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    ch: clickhouse::Client,
}

/// Serve until the process ends. `/healthz` answers 200 when ClickHouse answers.
pub async fn serve(listen: &str, metrics: Arc<Metrics>, ch: clickhouse::Client) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(|State(s): State<AppState>| async move { s.metrics.render() }))
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move {
                match s.ch.query("SELECT 1").fetch_one::<u8>().await {
                    Ok(_) => (StatusCode::OK, "ok".to_string()),
                    Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("clickhouse: {e}")),
                }
            }),
        )
        .with_state(AppState { metrics, ch });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await
}
