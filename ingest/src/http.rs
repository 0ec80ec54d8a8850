//! `ingest serve`: the HTTP gateway media servers send usage to.
//!
//! `POST /v1/usage` takes a JSON array (`application/json`) or NDJSON
//! (`application/x-ndjson`) of events. A request is **all-or-nothing for
//! validation**: if any event is invalid the reply is `400` with every
//! problem as `{index, field, reason}` and nothing is produced. A valid
//! request is produced in full and answered `200 {"accepted": n}` only after
//! Kafka acknowledged every event. If Kafka does not acknowledge them all
//! the reply is `503` with `Retry-After`: some events may have been written,
//! and re-sending the whole request is safe because events are identified by
//! `(viewer_id, seq)` and duplicates are dropped downstream.

use crate::budget::{BodyBudget, Reservation, Spent};
use crate::events;
use crate::json::{metric_reason, parse_body_limited, BodyLimits, EventError, Rejection};
use crate::producer::{ProducerOptions, SendAllError, UsageProducer};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts, Registry};
use runtime::events::InternalEvent;
use runtime::ops::{register, BoxFuture, Check, Ops, Readiness};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

pub use crate::config::IngestConfig;

struct Metrics {
    registry: Registry,
    accepted: prometheus::IntCounter,
    rejected: IntCounterVec,
    requests: IntCounterVec,
    produce_seconds: Histogram,
    inflight: IntGauge,
    budget_refused: IntCounterVec,
    bodies_held: IntGauge,
}

impl Metrics {
    /// Every metric, registered (`runtime::ops::register`), and the internal events' counter.
    fn try_new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let r = &registry;
        let accepted = register(r, prometheus::IntCounter::new("ingest_events_accepted_total", "Events acknowledged by Kafka"))?;
        let rejected = register(
            r,
            IntCounterVec::new(
                Opts::new("ingest_events_rejected_total", "Events rejected, by reason (field name or request-level reason)"),
                &["reason"],
            ),
        )?;
        let requests = register(r, IntCounterVec::new(Opts::new("ingest_requests_total", "Requests by HTTP status"), &["status"]))?;
        let produce_seconds = register(
            r,
            Histogram::with_opts(
                HistogramOpts::new("ingest_produce_seconds", "Time from produce to the last acknowledgement of a request")
                    .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            ),
        )?;
        let inflight =
            register(r, IntGauge::new("ingest_inflight_events", "Events produced and waiting for acknowledgement (queue depth)"))?;
        let budget_refused = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "ingest_body_budget_refused_total",
                    "Requests refused unread because the body budget was spent, by scope (total, key)",
                ),
                &["scope"],
            ),
        )?;
        let bodies_held =
            register(r, IntGauge::new("ingest_body_bytes_held", "Bytes of request bodies held now (max_bodies_bytes bounds it)"))?;
        runtime::events::register(r)?;
        Ok(Metrics { registry, accepted, rejected, requests, produce_seconds, inflight, budget_refused, bodies_held })
    }
}

struct AppState {
    cfg: IngestConfig,
    producer: UsageProducer,
    inflight: Semaphore,
    metrics: Metrics,
    /// Set after a produce failed for lack of a broker; cleared by a success.
    broker_down: AtomicBool,
    /// The last broker probe and when it was made: health and readiness
    /// answer from it for a second, so probes cost the broker at most one
    /// metadata request per second whatever the request rate (one at a time).
    broker_probe: runtime::health::Probe,
    /// `cfg.api_keys` as digests.
    keys: runtime::auth::KeySet,
    /// What the bodies being read and handled may hold.
    budget: Arc<BodyBudget>,
}

/// The index of the API key a request authenticated with (its budget share).
#[derive(Debug, Clone, Copy)]
struct KeyIndex(usize);

/// Build the gateway's router (also used by tests).
pub fn router(cfg: IngestConfig) -> Result<Router, crate::IngestError> {
    cfg.validate().map_err(|e| crate::IngestError::Config(e.into_message()))?;
    let producer = UsageProducer::new(
        &cfg.kafka,
        ProducerOptions {
            delivery_timeout: Duration::from_millis(cfg.delivery_timeout_ms),
            max_event_bytes: cfg.max_event_bytes,
            ..Default::default()
        },
    )?;
    let state = Arc::new(AppState {
        inflight: Semaphore::new(cfg.max_inflight_events),
        producer,
        metrics: Metrics::try_new().map_err(|e| crate::IngestError::Config(format!("metrics: {e}")))?,
        broker_down: AtomicBool::new(false),
        broker_probe: runtime::health::Probe::default(),
        keys: runtime::auth::KeySet::new(&cfg.api_keys),
        budget: BodyBudget::new(cfg.max_bodies_bytes, cfg.max_bodies_bytes_per_key, cfg.api_keys.len()),
        cfg,
    });
    let api = Router::new().route("/v1/usage", post(post_usage)).layer(middleware::from_fn_with_state(state.clone(), require_key));
    Ok(Router::new().merge(api).with_state(state.clone()).merge(runtime::ops::router(Arc::new(IngestOps(state)))))
}

/// Serve on `cfg.listen` until `shutdown` resolves.
pub async fn serve(cfg: IngestConfig, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let listen = cfg.listen.clone();
    let app = router(cfg)?;
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    events::IngestListening { listen: &listen }.emit();
    runtime::serve::serve(listener, app, runtime::serve::Timeouts::default(), shutdown).await?;
    Ok(())
}

fn error_reply(status: StatusCode, message: impl Into<String>, errors: Option<Vec<EventError>>) -> Response {
    let mut body = json!({"status": "error", "message": message.into()});
    if let Some(errors) = errors {
        body["errors"] = serde_json::to_value(errors).unwrap_or_default();
    }
    (status, Json(body)).into_response()
}

/// At most this many problems are listed in a 400 answer (all are counted).
pub const MAX_LISTED_ERRORS: usize = 100;

fn with_retry_after(mut r: Response, secs: u32) -> Response {
    r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    r
}

async fn require_key(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let key = runtime::auth::bearer(header).and_then(|given| s.keys.position(given));
    let Some(key) = key else {
        s.metrics.requests.with_label_values(&["401"]).inc();
        let mut r = error_reply(StatusCode::UNAUTHORIZED, "missing or invalid API key (Authorization: Bearer <key>)", None);
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    req.extensions_mut().insert(KeyIndex(key));
    next.run(req).await
}

async fn post_usage(
    State(s): State<Arc<AppState>>,
    axum::Extension(KeyIndex(key)): axum::Extension<KeyIndex>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let r = match read_body(body, &headers, s.cfg.max_body_bytes, &s.budget, key).await {
        Ok((body, held)) => {
            // held until the answer: the body and the events parsed from it
            let r = handle_usage(&s, &headers, body).await;
            drop(held);
            r
        }
        Err(Unread::Spent(spent)) => {
            let (status, scope, what) = match spent {
                Spent::Total => {
                    (StatusCode::SERVICE_UNAVAILABLE, "total", "the gateway holds its maximum of request bodies (max_bodies_bytes)")
                }
                Spent::Key => {
                    (StatusCode::TOO_MANY_REQUESTS, "key", "this API key holds its share of request bodies (max_bodies_bytes_per_key)")
                }
            };
            s.metrics.budget_refused.with_label_values(&[scope]).inc();
            events::BodyBudgetSpent { scope }.emit();
            with_retry_after(error_reply(status, format!("{what}; nothing was read, retry later"), None), 1)
        }
        Err(Unread::Reply(r)) => {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                s.metrics.rejected.with_label_values(&["body_too_large"]).inc();
            }
            r
        }
    };
    s.metrics.requests.with_label_values(&[r.status().as_str()]).inc();
    r
}

/// Why a body was not read.
enum Unread {
    /// The body budget is spent.
    Spent(Spent),
    /// Too large, or the client stopped sending.
    Reply(Response),
}

/// The request body in one buffer sized from `Content-Length` (no second
/// copy of a large body), refused with `413` as soon as it passes `max`.
/// The declared length is reserved from `budget` before a byte is read (a
/// body without one grows its reservation as it arrives).
async fn read_body(
    body: axum::body::Body,
    headers: &HeaderMap,
    max: usize,
    budget: &Arc<BodyBudget>,
    key: usize,
) -> Result<(Vec<u8>, Reservation), Unread> {
    use futures::StreamExt;
    let too_large = || Unread::Reply(error_reply(StatusCode::PAYLOAD_TOO_LARGE, format!("request body larger than {max} bytes"), None));
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut held = budget.reserve(key, declared.unwrap_or(0)).map_err(Unread::Spent)?;
    let mut buf = Vec::with_capacity(declared.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| Unread::Reply(error_reply(StatusCode::REQUEST_TIMEOUT, format!("reading the request body: {e}"), None)))?;
        if buf.len() + chunk.len() > max {
            return Err(too_large());
        }
        held.grow_to(buf.len() + chunk.len()).map_err(Unread::Spent)?;
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, held))
}

async fn handle_usage(s: &AppState, headers: &HeaderMap, body: Vec<u8>) -> Response {
    let ctype = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let ndjson = if ctype.starts_with("application/x-ndjson") {
        true
    } else if ctype.starts_with("application/json") {
        false
    } else {
        s.metrics.rejected.with_label_values(&["content_type"]).inc();
        return error_reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Type must be application/json or application/x-ndjson, got {ctype:?}"),
            None,
        );
    };
    let rules = schemas::Rules { now_ms: Some(chrono::Utc::now().timestamp_millis()), max_event_bytes: s.cfg.max_event_bytes };
    let limits = BodyLimits { max_events: s.cfg.max_events_per_request, max_errors: MAX_LISTED_ERRORS };
    let parsed = parse_body_limited(&body, ndjson, &rules, limits);
    // the events own their strings: the body is not needed while producing
    drop(body);
    let events = match parsed {
        Ok(evs) => evs,
        Err(Rejection::TooManyEvents { max, seen }) => {
            s.metrics.rejected.with_label_values(&["too_many_events"]).inc_by(seen as u64);
            return error_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("more than {max} events in one request (at most {max} allowed); split it"),
                None,
            );
        }
        Err(Rejection::Invalid { errors, total }) => {
            for e in &errors {
                s.metrics.rejected.with_label_values(&[metric_reason(e)]).inc();
            }
            let listed = errors.len();
            let body = json!({
                "status": "error",
                "message": if total > listed {
                    format!("invalid events: {total} problems, the first {listed} listed; nothing was produced")
                } else {
                    "invalid events; nothing was produced".to_string()
                },
                "errors": errors,
                "error_count": total,
            });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    if events.is_empty() {
        return (StatusCode::OK, Json(json!({"status": "success", "accepted": 0}))).into_response();
    }
    if s.broker_down.load(Ordering::Relaxed) {
        let p = s.producer.clone();
        let up = tokio::task::spawn_blocking(move || p.broker_reachable(Duration::from_millis(1000))).await.unwrap_or(false);
        if !up {
            s.metrics.rejected.with_label_values(&["kafka_unavailable"]).inc_by(events.len() as u64);
            return with_retry_after(error_reply(StatusCode::SERVICE_UNAVAILABLE, "Kafka is unreachable; nothing was accepted", None), 5);
        }
    }
    let Ok(_permit) = s.inflight.try_acquire_many(events.len() as u32) else {
        s.metrics.rejected.with_label_values(&["overloaded"]).inc_by(events.len() as u64);
        return with_retry_after(error_reply(StatusCode::TOO_MANY_REQUESTS, "too many events waiting for Kafka; retry later", None), 1);
    };
    s.metrics.inflight.add(events.len() as i64);
    let started = Instant::now();
    let result = s.producer.send_all(&events).await;
    s.metrics.inflight.sub(events.len() as i64);
    s.metrics.produce_seconds.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(n) => {
            s.broker_down.store(false, Ordering::Relaxed);
            // acknowledged by the broker: as good as a probe
            s.broker_probe.set(Ok(())).await;
            s.metrics.accepted.inc_by(n as u64);
            (StatusCode::OK, Json(json!({"status": "success", "accepted": n}))).into_response()
        }
        Err(SendAllError::Invalid(list)) => {
            let errors: Vec<EventError> = list
                .into_iter()
                .flat_map(|(i, errs)| {
                    errs.into_iter().map(move |e| EventError { index: Some(i), field: e.field.to_string(), reason: e.reason })
                })
                .collect();
            for e in &errors {
                s.metrics.rejected.with_label_values(&[metric_reason(e)]).inc();
            }
            error_reply(StatusCode::BAD_REQUEST, "invalid events; nothing was produced", Some(errors))
        }
        Err(SendAllError::Kafka(e)) if crate::producer::is_record_error(&e) => {
            // the broker is up and refused one of this request's records
            s.metrics.rejected.with_label_values(&["kafka_refused_record"]).inc_by(events.len() as u64);
            events::RecordRefused { error: &e, events: events.len() }.emit();
            error_reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("Kafka refused a record of this request ({e}); some events may have been written, none will be counted twice if the request is fixed and re-sent"),
                None,
            )
        }
        Err(SendAllError::Kafka(e)) => {
            s.broker_down.store(true, Ordering::Relaxed);
            s.metrics.rejected.with_label_values(&["kafka_unavailable"]).inc_by(events.len() as u64);
            events::ProduceFailed { error: &e, events: events.len() }.emit();
            with_retry_after(
                error_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("Kafka did not acknowledge every event ({e}); re-send the whole request, duplicates are dropped by (viewer_id, seq)"),
                    None,
                ),
                5,
            )
        }
    }
}

/// What the operations endpoints read (`runtime::ops`).
struct IngestOps(Arc<AppState>);

impl Ops for IngestOps {
    /// Live when the broker answers.
    fn health(&self) -> BoxFuture<'_, Vec<Check>> {
        Box::pin(async {
            let result = if broker_up(&self.0).await { Ok(()) } else { Err("unreachable".to_string()) };
            vec![Check { name: "kafka", result }]
        })
    }

    /// Ready when the broker answers and the in-flight queue has room, so a
    /// request sent now would be taken (a load balancer stops routing here
    /// otherwise).
    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async {
            let mut reasons = Vec::new();
            if !broker_up(&self.0).await {
                reasons.push("kafka unreachable".to_string());
            }
            if self.0.inflight.available_permits() == 0 {
                reasons.push("in-flight request queue is full".to_string());
            }
            Readiness { reasons, extra: Default::default() }
        })
    }

    fn registry(&self) -> &Registry {
        &self.0.metrics.registry
    }

    fn refresh(&self) {
        self.0.metrics.bodies_held.set(self.0.budget.held_bytes() as i64);
    }
}

/// The broker answered a metadata request within 2 s (off the async
/// threads), at most a second ago.
async fn broker_up(s: &AppState) -> bool {
    let probe = || async {
        let p = s.producer.clone();
        let up = tokio::task::spawn_blocking(move || p.broker_reachable(Duration::from_secs(2))).await.unwrap_or(false);
        if up {
            Ok(())
        } else {
            Err("kafka unreachable".to_string())
        }
    };
    s.broker_probe.check(probe).await.is_ok()
}
