//! `api serve`: the token REST API.
//!
//! Every `/api/...` route needs `Authorization: Bearer <secret>`; without a
//! known one: `401`. Three roles (held as digests, compared in constant
//! time; `docs/security.md`): `api_secrets` (admin: everything),
//! `verify_secrets` (media servers: `POST /api/token/verify` only) and
//! `scoped_secrets` (a partner's statistics only). Replies are
//! `{"status":"success","data":...}` or `{"status":"error","message":...}`
//! (`400` invalid request, `401`, `404` unknown id; verification refusals
//! add `"code"`, see [`crate::verify::VerifyError::code`]).
//!
//! | route | |
//! | --- | --- |
//! | `POST /api/subscribe_token` | create (`label`, `streams`, `tracking`, `originCluster`, `expires`, `allowedOrigins`, `allowedIpAddresses`) |
//! | `GET /api/subscribe_token`, `GET /api/subscribe_token/list` | list |
//! | `GET /api/subscribe_token/{id}` | get |
//! | `PUT /api/subscribe_token/{id}` | update (`label`, `streams`, `isActive`, `allowedOrigins`, `allowedIpAddresses`, `expires`; `tracking` is immutable) |
//! | `DELETE /api/subscribe_token/{id}` | delete |
//! | `POST /api/publish_token`, `GET /api/publish_token[/list]`, `GET`/`DELETE /api/publish_token/{id}` | publish tokens (`label`, `streams`, `subscribeRequiresAuth`) |
//! | `POST /api/token/verify` | `{token, streamName, cluster}` → `{tokenId, trackingId, customViewerData}` |
//! | `GET /api/analytics/...`, `POST /api/records/viewers` | usage statistics from ClickHouse, see [`crate::stats`] |
//! | `GET /api/openapi.json` | OpenAPI 3 description of every route |
//!
//! Secrets in `scoped_secrets` reach only the statistics routes and
//! `openapi.json` (elsewhere `403`), and only for their tracking ids.
//!
//! `GET /healthz`, `GET /readyz` (token store and ClickHouse answer) and
//! `GET /metrics` (Prometheus: `api_requests_total{status}`,
//! `api_verify_total{result}`) need no secret.

use crate::config::ApiConfig;
use crate::store::{NewPublishToken, NewSubscribeToken, PublishToken, Store, StoreError, StreamRule, SubscribeToken, SubscribeTokenUpdate};
use crate::verify::VerifyError;
use crate::{AUTO_CLUSTER, MAX_TRACKING_ID_CHARS};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use thiserror::Error;

/// Longest accepted `expires`, seconds (10 years).
pub const MAX_EXPIRES_SECS: i64 = 10 * 365 * 86_400;
const MAX_LABEL_CHARS: usize = 256;
const MAX_STREAM_CHARS: usize = 256;
const MAX_STREAMS: usize = 100;
const MAX_LIST_ITEMS: usize = 100;
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Errors of the service.
#[derive(Debug, Error)]
pub enum ApiError {
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// The store could not be opened or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Binding or serving failed.
    #[error("serve: {0}")]
    Io(#[from] std::io::Error),
}

/// An error reply.
#[derive(Debug)]
pub(crate) enum Reply {
    BadRequest(String),
    Forbidden(String),
    NotFound(String),
    Internal(String),
}

impl From<StoreError> for Reply {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "TokenStoreFailed");
        Reply::Internal("token store unavailable".into())
    }
}

pub(crate) fn error_body(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"status": "error", "message": message}))).into_response()
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::BadRequest(m) => error_body(StatusCode::BAD_REQUEST, &m),
            Reply::Forbidden(m) => error_body(StatusCode::FORBIDDEN, &m),
            Reply::NotFound(m) => error_body(StatusCode::NOT_FOUND, &m),
            Reply::Internal(m) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &m),
        }
    }
}

pub(crate) fn success(data: Value) -> Response {
    (StatusCode::OK, Json(json!({"status": "success", "data": data}))).into_response()
}

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    verify: IntCounterVec,
}

impl Metrics {
    fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("api_requests_total", "Requests by HTTP status"), &["status"])?;
        let verify =
            IntCounterVec::new(Opts::new("api_verify_total", "Token verifications by result (ok or the refusal code)"), &["result"])?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(verify.clone()))?;
        Ok(Metrics { registry, requests, verify })
    }
}

pub(crate) struct AppState {
    store: Arc<Store>,
    /// Admin secrets, as digests.
    secrets: runtime::auth::KeySet,
    /// Verify-only secrets (media servers), as digests.
    verify_secrets: runtime::auth::KeySet,
    /// Partner-scoped secrets as digests, and the tracking ids each may see.
    scoped_keys: runtime::auth::KeySet,
    scoped_ids: Vec<Arc<Vec<String>>>,
    metrics: Metrics,
    /// Client of the ClickHouse holding the usage tables.
    pub(crate) ch: clickhouse::Client,
    /// The operator's verification rules.
    policy: crate::verify::Policy,
    /// Slots of statistics queries running at once.
    stats_slots: Arc<tokio::sync::Semaphore>,
    /// ClickHouse probed at most once a second by `/readyz`.
    ch_probe: runtime::health::Probe,
}

/// Most statistics queries running at once (beyond: `503` with `Retry-After`).
pub const MAX_CONCURRENT_STATS: usize = 8;

/// A statistics request's concurrency slot; a streamed answer takes it
/// along until its last row is sent.
#[derive(Clone)]
pub(crate) struct StatsSlot(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl StatsSlot {
    pub(crate) fn take(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.0.lock().ok().and_then(|mut p| p.take())
    }
}

/// What the caller's secret may see: `None` everything, `Some(ids)` only
/// those tracking ids (a scoped secret).
#[derive(Debug, Clone)]
pub(crate) struct Scope(pub(crate) Option<Arc<Vec<String>>>);

/// The service's router on an open store (also used by tests).
pub fn router(cfg: &ApiConfig, store: Arc<Store>) -> Result<Router, ApiError> {
    cfg.validate().map_err(ApiError::Config)?;
    let metrics = Metrics::new().map_err(|e| ApiError::Config(format!("metrics: {e}")))?;
    let state = Arc::new(AppState {
        store,
        secrets: runtime::auth::KeySet::new(&cfg.api_secrets),
        verify_secrets: runtime::auth::KeySet::new(&cfg.verify_secrets),
        scoped_keys: runtime::auth::KeySet::new(&cfg.scoped_secrets.iter().map(|s| s.secret.as_str()).collect::<Vec<_>>()),
        scoped_ids: cfg.scoped_secrets.iter().map(|s| Arc::new(s.tracking_ids.clone())).collect(),
        metrics,
        // statistics only read, within limits, whatever user the config names
        ch: cfg
            .clickhouse
            .client()
            .with_option("readonly", "2")
            .with_option("max_execution_time", "30")
            .with_option("max_memory_usage", "2000000000")
            .with_option("max_result_rows", "2000000")
            .with_option("result_overflow_mode", "throw"),
        stats_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_STATS)),
        ch_probe: runtime::health::Probe::default(),
        policy: crate::verify::Policy {
            untracked_parent_sets_tracking: cfg.untracked_parent_sets_tracking,
            max_viewer_token_secs: cfg.max_viewer_token_secs as i64,
            ..Default::default()
        },
    });
    let api = Router::new()
        .route("/api/subscribe_token", post(create_subscribe).get(list_subscribe))
        .route("/api/subscribe_token/list", get(list_subscribe))
        .route("/api/subscribe_token/{id}", get(get_subscribe).put(update_subscribe).delete(delete_subscribe))
        .route("/api/publish_token", post(create_publish).get(list_publish))
        .route("/api/publish_token/list", get(list_publish))
        .route("/api/publish_token/{id}", get(get_publish).delete(delete_publish))
        .route("/api/token/verify", post(verify_token))
        .merge(
            Router::new()
                .route("/api/analytics/tracking/total", get(crate::stats::tracking_total))
                .route("/api/analytics/tracking/series", get(crate::stats::tracking_series))
                .route("/api/analytics/tracking/streams/total", get(crate::stats::streams_total))
                .route("/api/analytics/tracking/streams/series", get(crate::stats::streams_series))
                .route("/api/records/viewers", post(crate::stats::viewer_records))
                .layer(middleware::from_fn_with_state(state.clone(), limit_stats)),
        )
        .route("/api/openapi.json", get(crate::stats::openapi))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), require_secret));
    Ok(Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state))
}

/// Open the store at `cfg.store_path` and serve on `cfg.listen` until
/// `shutdown` resolves.
pub async fn serve(cfg: ApiConfig, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), ApiError> {
    cfg.validate().map_err(ApiError::Config)?;
    let store = Arc::new(Store::open(&cfg.store_path)?);
    let app = router(&cfg, store)?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    tracing::info!(listen = %cfg.listen, store = %cfg.store_path.display(), "ApiListening");
    runtime::serve::serve(listener, app, runtime::serve::Timeouts::default(), shutdown).await?;
    Ok(())
}

async fn count_requests(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    s.metrics.requests.with_label_values(&[r.status().as_str()]).inc();
    r
}

/// Check the bearer secret: every secret (unscoped and scoped) is compared,
/// each in constant time. Puts the caller's [`Scope`] into the request.
async fn require_secret(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let given = runtime::auth::bearer(header);
    // every key set is consulted whatever matched first (constant time each)
    let admin = given.is_some_and(|g| s.secrets.contains(g));
    let verifier = given.is_some_and(|g| s.verify_secrets.contains(g));
    let scoped = given.and_then(|g| s.scoped_keys.position(g)).map(|i| s.scoped_ids[i].clone());
    let path = req.uri().path();
    if admin {
        req.extensions_mut().insert(Scope(None));
        return next.run(req).await;
    }
    if verifier {
        if path != "/api/token/verify" {
            return error_body(StatusCode::FORBIDDEN, "this API secret may only verify viewer tokens (POST /api/token/verify)");
        }
        req.extensions_mut().insert(Scope(Some(Arc::new(vec![]))));
        return next.run(req).await;
    }
    if let Some(ids) = scoped {
        let allowed = path.starts_with("/api/analytics/") || path.starts_with("/api/records/") || path == "/api/openapi.json";
        if !allowed {
            return error_body(StatusCode::FORBIDDEN, "this API secret is limited to the statistics routes");
        }
        req.extensions_mut().insert(Scope(Some(ids)));
        return next.run(req).await;
    }
    let mut r = error_body(StatusCode::UNAUTHORIZED, "missing or invalid API secret (Authorization: Bearer <secret>)");
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// At most [`MAX_CONCURRENT_STATS`] statistics queries at once.
async fn limit_stats(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let Ok(permit) = s.stats_slots.clone().try_acquire_owned() else {
        let mut r = error_body(StatusCode::SERVICE_UNAVAILABLE, "too many statistics queries at once; retry shortly");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    req.extensions_mut().insert(StatsSlot(Arc::new(std::sync::Mutex::new(Some(permit)))));
    next.run(req).await
}

async fn healthz(State(s): State<Arc<AppState>>) -> Response {
    match store_up(&s) {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e).into_response(),
    }
}

/// The token store answers; the error is the reason to show.
fn store_up(s: &AppState) -> Result<(), &'static str> {
    s.store.ping().map_err(|e| {
        tracing::error!(error = %e, "HealthCheckFailed");
        "token store unavailable"
    })
}

/// Readiness: the token store and ClickHouse (statistics) both answer.
async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let mut reasons = Vec::new();
    if let Err(e) = store_up(&s) {
        reasons.push(e.to_string());
    }
    if let Err(e) = s.ch_probe.check(|| runtime::health::clickhouse_ping(&s.ch)).await {
        reasons.push(e);
    }
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(serde_json::json!({"ready": reasons.is_empty(), "reasons": reasons}))).into_response()
}

async fn metrics_handler(State(s): State<Arc<AppState>>) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&s.metrics.registry.gather(), &mut buf) {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], buf).into_response()
}

// ---- request bodies and validation ----

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| Reply::BadRequest(format!("invalid body: {e}")))
}

/// `Some(None)` for an explicit `null`, `None` when absent.
fn double_option<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TrackingBody {
    tracking_id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateSubscribeBody {
    #[serde(default)]
    label: String,
    streams: Vec<StreamRule>,
    #[serde(default)]
    tracking: Option<TrackingBody>,
    #[serde(default)]
    origin_cluster: Option<String>,
    #[serde(default)]
    expires: Option<i64>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    allowed_ip_addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UpdateSubscribeBody {
    label: Option<String>,
    streams: Option<Vec<StreamRule>>,
    is_active: Option<bool>,
    allowed_origins: Option<Vec<String>>,
    allowed_ip_addresses: Option<Vec<String>>,
    /// Seconds from now; `null` removes the expiry.
    #[serde(default, deserialize_with = "double_option")]
    expires: Option<Option<i64>>,
    /// Accepted only when equal to the current tracking.
    #[serde(default, deserialize_with = "double_option")]
    tracking: Option<Option<TrackingBody>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreatePublishBody {
    #[serde(default)]
    label: String,
    streams: Vec<StreamRule>,
    #[serde(default)]
    subscribe_requires_auth: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VerifyBody {
    token: String,
    stream_name: String,
    cluster: String,
}

fn check_label(label: &str) -> Result<(), Reply> {
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(Reply::BadRequest(format!("label: at most {MAX_LABEL_CHARS} characters")));
    }
    Ok(())
}

fn check_streams(streams: &[StreamRule]) -> Result<(), Reply> {
    if streams.is_empty() || streams.len() > MAX_STREAMS {
        return Err(Reply::BadRequest(format!("streams: between 1 and {MAX_STREAMS} entries required")));
    }
    for (i, s) in streams.iter().enumerate() {
        if s.stream_name.is_empty() || s.stream_name.chars().count() > MAX_STREAM_CHARS {
            return Err(Reply::BadRequest(format!("streams[{i}].streamName: 1 to {MAX_STREAM_CHARS} characters")));
        }
        s.validate().map_err(|e| Reply::BadRequest(format!("streams[{i}].streamName: invalid regex: {e}")))?;
    }
    Ok(())
}

fn check_tracking_id(t: &str) -> Result<(), Reply> {
    if t.is_empty() || t.chars().count() > MAX_TRACKING_ID_CHARS {
        return Err(Reply::BadRequest(format!("tracking.trackingId: 1 to {MAX_TRACKING_ID_CHARS} characters")));
    }
    Ok(())
}

fn check_cluster(c: &str) -> Result<(), Reply> {
    let ok = c == AUTO_CLUSTER || (!c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)));
    if !ok {
        return Err(Reply::BadRequest("originCluster: `auto` or a cluster id ([A-Za-z0-9._-], at most 64)".into()));
    }
    Ok(())
}

fn expires_on(expires: i64, now: DateTime<Utc>) -> Result<DateTime<Utc>, Reply> {
    if !(1..=MAX_EXPIRES_SECS).contains(&expires) {
        return Err(Reply::BadRequest(format!("expires: 1 to {MAX_EXPIRES_SECS} seconds")));
    }
    Ok(now + chrono::Duration::seconds(expires))
}

fn check_origins(origins: &[String]) -> Result<(), Reply> {
    if origins.len() > MAX_LIST_ITEMS {
        return Err(Reply::BadRequest(format!("allowedOrigins: at most {MAX_LIST_ITEMS} entries")));
    }
    for (i, o) in origins.iter().enumerate() {
        if o.is_empty() || o.len() > 256 || o.chars().any(char::is_whitespace) {
            return Err(Reply::BadRequest(format!("allowedOrigins[{i}]: 1 to 256 characters, no spaces")));
        }
    }
    Ok(())
}

fn valid_ip_or_cidr(s: &str) -> bool {
    match s.split_once('/') {
        None => s.parse::<std::net::IpAddr>().is_ok(),
        Some((ip, prefix)) => match (ip.parse::<std::net::IpAddr>(), prefix.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(p)) => p <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(p)) => p <= 128,
            _ => false,
        },
    }
}

fn check_ips(ips: &[String]) -> Result<(), Reply> {
    if ips.len() > MAX_LIST_ITEMS {
        return Err(Reply::BadRequest(format!("allowedIpAddresses: at most {MAX_LIST_ITEMS} entries")));
    }
    for (i, ip) in ips.iter().enumerate() {
        if !valid_ip_or_cidr(ip) {
            return Err(Reply::BadRequest(format!("allowedIpAddresses[{i}]: {ip:?} is not an IP address or CIDR range")));
        }
    }
    Ok(())
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The API's JSON shape of a Subscribe token.
pub fn subscribe_json(t: &SubscribeToken) -> Value {
    json!({
        "id": t.id,
        "token": t.token,
        "label": t.label,
        "streams": t.streams,
        "tracking": t.tracking_id.as_ref().map(|id| json!({"trackingId": id})),
        "originCluster": t.origin_cluster,
        "expiresOn": t.expires_on.map(time),
        "isActive": t.is_active,
        "allowedOrigins": t.allowed_origins,
        "allowedIpAddresses": t.allowed_ip_addresses,
        "addedOn": time(t.added_on),
    })
}

/// The API's JSON shape of a Publish token.
pub fn publish_json(t: &PublishToken) -> Value {
    json!({
        "id": t.id,
        "token": t.token,
        "label": t.label,
        "streams": t.streams,
        "subscribeRequiresAuth": t.subscribe_requires_auth,
        "isActive": t.is_active,
        "addedOn": time(t.added_on),
    })
}

fn parse_id(kind: &str, id: &str) -> Result<i64, Reply> {
    id.parse::<i64>().map_err(|_| Reply::NotFound(format!("no {kind} token with id {id:?}")))
}

// ---- Subscribe tokens ----

async fn create_subscribe(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
    let b: CreateSubscribeBody = parse(&body)?;
    let now = Utc::now();
    check_label(&b.label)?;
    check_streams(&b.streams)?;
    let tracking_id = b.tracking.map(|t| t.tracking_id);
    if let Some(t) = &tracking_id {
        check_tracking_id(t)?;
    }
    let origin_cluster = b.origin_cluster.unwrap_or_else(|| AUTO_CLUSTER.to_string());
    check_cluster(&origin_cluster)?;
    let expires_on = b.expires.map(|e| expires_on(e, now)).transpose()?;
    check_origins(&b.allowed_origins)?;
    check_ips(&b.allowed_ip_addresses)?;
    let t = s.store.create_subscribe(
        NewSubscribeToken {
            label: b.label,
            streams: b.streams,
            tracking_id,
            origin_cluster,
            expires_on,
            allowed_origins: b.allowed_origins,
            allowed_ip_addresses: b.allowed_ip_addresses,
        },
        now,
    )?;
    tracing::info!(id = t.id, tracking_id = ?t.tracking_id, origin_cluster = %t.origin_cluster, "SubscribeTokenCreated");
    Ok(success(subscribe_json(&t)))
}

async fn list_subscribe(State(s): State<Arc<AppState>>) -> Result<Response, Reply> {
    let all = s.store.list_subscribe()?;
    Ok(success(Value::Array(all.iter().map(subscribe_json).collect())))
}

async fn get_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("subscribe", &id)?;
    let t = s.store.get_subscribe(id)?.ok_or_else(|| Reply::NotFound(format!("no subscribe token with id {id}")))?;
    Ok(success(subscribe_json(&t)))
}

async fn update_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Reply> {
    let id = parse_id("subscribe", &id)?;
    let b: UpdateSubscribeBody = parse(&body)?;
    let current = s.store.get_subscribe(id)?.ok_or_else(|| Reply::NotFound(format!("no subscribe token with id {id}")))?;
    if let Some(tracking) = b.tracking {
        if tracking.map(|t| t.tracking_id) != current.tracking_id {
            return Err(Reply::BadRequest("tracking cannot be changed after creation".into()));
        }
    }
    if let Some(l) = &b.label {
        check_label(l)?;
    }
    if let Some(st) = &b.streams {
        check_streams(st)?;
    }
    if let Some(o) = &b.allowed_origins {
        check_origins(o)?;
    }
    if let Some(ips) = &b.allowed_ip_addresses {
        check_ips(ips)?;
    }
    let now = Utc::now();
    let expires_on = match b.expires {
        None => None,
        Some(None) => Some(None),
        Some(Some(e)) => Some(Some(expires_on(e, now)?)),
    };
    let upd = SubscribeTokenUpdate {
        label: b.label,
        streams: b.streams,
        is_active: b.is_active,
        allowed_origins: b.allowed_origins,
        allowed_ip_addresses: b.allowed_ip_addresses,
        expires_on,
    };
    let t = s.store.update_subscribe(id, upd)?.ok_or_else(|| Reply::NotFound(format!("no subscribe token with id {id}")))?;
    tracing::info!(id, is_active = t.is_active, "SubscribeTokenUpdated");
    Ok(success(subscribe_json(&t)))
}

async fn delete_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("subscribe", &id)?;
    if !s.store.delete_subscribe(id)? {
        return Err(Reply::NotFound(format!("no subscribe token with id {id}")));
    }
    tracing::info!(id, "SubscribeTokenDeleted");
    Ok(success(json!({"id": id, "deleted": true})))
}

// ---- Publish tokens ----

async fn create_publish(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
    let b: CreatePublishBody = parse(&body)?;
    check_label(&b.label)?;
    check_streams(&b.streams)?;
    let t = s.store.create_publish(
        NewPublishToken { label: b.label, streams: b.streams, subscribe_requires_auth: b.subscribe_requires_auth },
        Utc::now(),
    )?;
    tracing::info!(id = t.id, subscribe_requires_auth = t.subscribe_requires_auth, "PublishTokenCreated");
    Ok(success(publish_json(&t)))
}

async fn list_publish(State(s): State<Arc<AppState>>) -> Result<Response, Reply> {
    let all = s.store.list_publish()?;
    Ok(success(Value::Array(all.iter().map(publish_json).collect())))
}

async fn get_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("publish", &id)?;
    let t = s.store.get_publish(id)?.ok_or_else(|| Reply::NotFound(format!("no publish token with id {id}")))?;
    Ok(success(publish_json(&t)))
}

async fn delete_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("publish", &id)?;
    if !s.store.delete_publish(id)? {
        return Err(Reply::NotFound(format!("no publish token with id {id}")));
    }
    tracing::info!(id, "PublishTokenDeleted");
    Ok(success(json!({"id": id, "deleted": true})))
}

// ---- verification ----

fn verify_status(e: &VerifyError) -> StatusCode {
    match e {
        VerifyError::Malformed(_) | VerifyError::FieldTooLong { .. } => StatusCode::BAD_REQUEST,
        VerifyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    }
}

async fn verify_token(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
    let b: VerifyBody = parse(&body)?;
    match crate::verify::verify_with(s.store.as_ref(), &b.token, &b.stream_name, &b.cluster, Utc::now(), &s.policy) {
        Ok(a) => {
            s.metrics.verify.with_label_values(&["ok"]).inc();
            tracing::debug!(token_id = a.token_id, tracking_id = ?a.tracking_id, stream = %b.stream_name, "TokenVerified");
            Ok(success(json!({"tokenId": a.token_id, "trackingId": a.tracking_id, "customViewerData": a.custom_viewer_data})))
        }
        Err(e) => {
            s.metrics.verify.with_label_values(&[e.code()]).inc();
            tracing::info!(code = e.code(), reason = %e, stream = %b.stream_name, cluster = %b.cluster, "TokenRefused");
            let body = json!({"status": "error", "code": e.code(), "message": e.to_string()});
            Ok((verify_status(&e), Json(body)).into_response())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_validation() {
        for ok in ["10.0.0.1", "10.0.0.0/8", "::1", "2001:db8::/32"] {
            assert!(valid_ip_or_cidr(ok), "{ok}");
        }
        for bad in ["10.0.0", "10.0.0.0/33", "::1/129", "host", "1.2.3.4/x", ""] {
            assert!(!valid_ip_or_cidr(bad), "{bad}");
        }
    }
}
