//! The operations endpoints, the same for every service: `/healthz`
//! (liveness), `/readyz` (readiness, with its reasons) and `/metrics`
//! (Prometheus text), from one [`router`] over what the service reports
//! through [`Ops`]; and the one way a service registers its metrics
//! ([`register`]). Served on the service's port with `serve`'s slow-client
//! limits, as its other routes are.
//!
//! - `/healthz`: 200 `{"status": "ok", "<dependency>": "reachable", ...}`,
//!   or 503 with `"status": "error"` and the failing dependency's reason;
//! - `/readyz`: 200 or 503 `{"ready": bool, "reasons": [...], ...}` (the
//!   compose health checks use it);
//! - `/metrics`: the registry in the text exposition format.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};
use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A future an [`Ops`] method returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a probe found of one dependency (`name`: `kafka`, `clickhouse`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The dependency: its key in the `/healthz` body.
    pub name: &'static str,
    /// `Ok` when reachable; else why not (the key's value, and `/healthz` answers 503).
    pub result: Result<(), String>,
}

/// Why a service should not be sent work now (empty: ready), and what its
/// `/readyz` body adds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Readiness {
    /// Why not ready, one sentence each; empty: ready (`/readyz` answers 200).
    pub reasons: Vec<String>,
    /// Further keys of the `/readyz` body (e.g. the aggregator's `assignedPartitions`).
    pub extra: Map<String, Value>,
}

/// What the operations endpoints ask of a service.
pub trait Ops: Send + Sync + 'static {
    /// Liveness: the dependencies without which it does nothing.
    fn health(&self) -> BoxFuture<'_, Vec<Check>>;
    /// Readiness.
    fn readiness(&self) -> BoxFuture<'_, Readiness>;
    /// Its metrics.
    fn registry(&self) -> &Registry;
    /// Update what is read at scrape time (gauges of held state), before `/metrics` renders.
    fn refresh(&self) {}
}

/// Register `metric` (as its constructor returned it) in `registry` and
/// return it: every service's metrics are made this way, and a duplicate
/// or malformed metric is an error of the service's start.
pub fn register<M: Collector + Clone + 'static>(registry: &Registry, metric: prometheus::Result<M>) -> prometheus::Result<M> {
    let m = metric?;
    registry.register(Box::new(m.clone()))?;
    Ok(m)
}

/// `registry` in the Prometheus text exposition format.
pub fn render(registry: &Registry) -> Result<String, String> {
    let mut buf = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut buf).map_err(|e| e.to_string())?;
    String::from_utf8(buf).map_err(|e| e.to_string())
}

/// `/healthz`, `/readyz` and `/metrics` over `ops`; merge it into the
/// service's router.
pub fn router(ops: Arc<dyn Ops>) -> Router {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics)).with_state(ops)
}

async fn healthz(State(ops): State<Arc<dyn Ops>>) -> Response {
    let checks = ops.health().await;
    let ok = checks.iter().all(|c| c.result.is_ok());
    let mut body = Map::new();
    body.insert("status".into(), Value::from(if ok { "ok" } else { "error" }));
    for c in checks {
        body.insert(c.name.into(), Value::from(c.result.err().unwrap_or_else(|| "reachable".into())));
    }
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(Value::Object(body))).into_response()
}

async fn readyz(State(ops): State<Arc<dyn Ops>>) -> Response {
    let r = ops.readiness().await;
    let ready = r.reasons.is_empty();
    let mut body = Map::new();
    body.insert("ready".into(), Value::from(ready));
    body.insert("reasons".into(), Value::from(r.reasons));
    body.extend(r.extra);
    (if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(Value::Object(body))).into_response()
}

async fn metrics(State(ops): State<Arc<dyn Ops>>) -> Response {
    ops.refresh();
    match render(ops.registry()) {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        registry: Registry,
        kafka: Result<(), String>,
    }

    impl Ops for Fake {
        fn health(&self) -> BoxFuture<'_, Vec<Check>> {
            Box::pin(async { vec![Check { name: "kafka", result: self.kafka.clone() }] })
        }
        fn readiness(&self) -> BoxFuture<'_, Readiness> {
            let reasons = self.kafka.clone().err().into_iter().collect();
            Box::pin(async move { Readiness { reasons, extra: Map::new() } })
        }
        fn registry(&self) -> &Registry {
            &self.registry
        }
    }

    #[test]
    fn a_metric_registered_twice_is_an_error() {
        let r = Registry::new();
        let c = register(&r, prometheus::IntCounter::new("x_total", "x")).unwrap();
        c.inc();
        assert!(register(&r, prometheus::IntCounter::new("x_total", "x")).is_err());
        assert!(register(&r, prometheus::IntCounter::new("bad name", "x")).is_err());
        assert!(render(&r).unwrap().contains("x_total 1"));
    }

    #[tokio::test]
    async fn the_endpoints_answer_what_the_service_reports() {
        use tower::ServiceExt;
        let call = |ops: Arc<dyn Ops>, path: &'static str| async move {
            let r = router(ops).oneshot(axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap()).await.unwrap();
            let status = r.status().as_u16();
            let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
            (status, String::from_utf8(body.to_vec()).unwrap())
        };
        let up: Arc<dyn Ops> = Arc::new(Fake { registry: Registry::new(), kafka: Ok(()) });
        assert_eq!(call(up.clone(), "/healthz").await, (200, r#"{"kafka":"reachable","status":"ok"}"#.to_string()));
        assert_eq!(call(up.clone(), "/readyz").await, (200, r#"{"ready":true,"reasons":[]}"#.to_string()));
        let down: Arc<dyn Ops> = Arc::new(Fake { registry: Registry::new(), kafka: Err("kafka unreachable".into()) });
        assert_eq!(call(down.clone(), "/healthz").await, (503, r#"{"kafka":"kafka unreachable","status":"error"}"#.to_string()));
        assert_eq!(call(down, "/readyz").await, (503, r#"{"ready":false,"reasons":["kafka unreachable"]}"#.to_string()));
        assert_eq!(call(up, "/metrics").await.0, 200);
    }
}
