//! State shared by every route of `api serve`, the replies, and the
//! credential checks (roles: admin, verify-only, partner-scoped; see
//! `docs/security.md`). Below the crate's route modules: `tokens`, `stats`
//! and `console` use it, and `http` wires them; it uses only the leaves
//! `store`, `session` and `events`.

use crate::console::session::{Role, Session};
use crate::events;
use crate::store::{Store, StoreError};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use prometheus::{IntCounterVec, Opts, Registry};
use runtime::events::InternalEvent;
use runtime::ops::register;
use serde_json::{json, Value};
use std::sync::Arc;
use thiserror::Error;

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

/// An error reply, in the platform's envelopes: client errors are
/// `{"status":"fail","data":{"message":...}}` (an unknown id is a `400` too,
/// as on the platform), server errors `{"status":"error","message":...}`.
#[derive(Debug)]
pub(crate) enum Reply {
    /// `400`: the request is invalid.
    BadRequest(String),
    /// `400` `{"tokenId": message}`: no such token (the platform answers an
    /// unknown id with `400`).
    NotFound(String),
    /// `400` `{"token": ...}`: an update that names nothing to change.
    NothingToUpdate,
    /// `403`: the secret may not do this.
    Forbidden(String),
    /// `500`: not the caller's fault.
    Internal(String),
}

impl From<StoreError> for Reply {
    fn from(e: StoreError) -> Self {
        events::TokenStoreFailed { error: &e }.emit();
        Reply::Internal("token store unavailable".into())
    }
}

/// A client error (`4xx`): `{"status":"fail","data":data}`.
pub(crate) fn fail_body(status: StatusCode, data: Value) -> Response {
    (status, Json(json!({"status": "fail", "data": data}))).into_response()
}

/// A client error with a message only.
pub(crate) fn fail(status: StatusCode, message: &str) -> Response {
    fail_body(status, json!({ "message": message }))
}

/// A server error (`5xx`): `{"status":"error","message":...}`.
pub(crate) fn error_body(status: StatusCode, message: &str) -> Response {
    (status, Json(ServerError { status: "error", message: message.to_string() })).into_response()
}

/// The platform's `400` data: `{"errors":{"<field>":["<message>"]},"message":...}`
/// when the message names its field (`field: reason`), else `{"message":...}`.
pub(crate) fn bad_request_data(message: &str) -> Value {
    let field = message
        .split_once(": ")
        .map(|(f, _)| f)
        .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.[]".contains(&b)));
    match field {
        Some(f) => json!({"errors": {f: [message]}, "message": message}),
        None => json!({ "message": message }),
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Reply::BadRequest(m) => fail_body(StatusCode::BAD_REQUEST, bad_request_data(&m)),
            Reply::NotFound(m) => fail_body(StatusCode::BAD_REQUEST, json!({"tokenId": m, "message": m})),
            Reply::NothingToUpdate => {
                let m = "No properties specified to update.";
                fail_body(StatusCode::BAD_REQUEST, json!({"token": m, "message": m}))
            }
            Reply::Forbidden(m) => fail(StatusCode::FORBIDDEN, &m),
            Reply::Internal(m) => error_body(StatusCode::INTERNAL_SERVER_ERROR, &m),
        }
    }
}

/// `{"status":"success","data":...}`: every successful JSON answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Success<T> {
    /// `success`
    pub status: &'static str,
    pub data: T,
}

/// `{"status":"fail","data":{...}}`: a client error (`4xx`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Fail {
    /// `fail`
    pub status: &'static str,
    pub data: FailData,
}

/// What a client error says: always `message`; `errors` per field for an
/// invalid field, `tokenId` for an unknown id, `token` for an empty update,
/// `code` for a refused viewer (see `VerifyError::code`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct FailData {
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<std::collections::BTreeMap<String, Vec<String>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The client errors every token route may answer (OpenAPI).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum TokenErrors {
    /// invalid request or unknown id
    #[response(status = 400)]
    BadRequest(Fail),
    /// no valid API secret
    #[response(status = 401)]
    Unauthorized(Fail),
    /// the secret may not do this
    #[response(status = 403)]
    Forbidden(Fail),
}

/// The errors every statistics route may answer (OpenAPI).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum StatsErrors {
    /// invalid parameters
    #[response(status = 400)]
    BadRequest(Fail),
    /// no valid API secret
    #[response(status = 401)]
    Unauthorized(Fail),
    /// a tracking id outside a scoped secret
    #[response(status = 403)]
    Forbidden(Fail),
    /// usage store unavailable
    #[response(status = 500)]
    Internal(ServerError),
}

/// `{"status":"error","message":...}`: a server error (`5xx`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ServerError {
    /// `error`
    pub status: &'static str,
    pub message: String,
}

/// A time as every answer writes it: ISO 8601 UTC with milliseconds
/// (`2026-10-31T20:00:00.000Z`, the platform's format).
pub(crate) fn iso_time(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The `key=value` pairs of a query string in order (repeated keys kept),
/// or 400 naming why it cannot be read.
pub(crate) fn query_pairs(raw: Option<&str>) -> Result<Vec<(String, String)>, Reply> {
    serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| Reply::BadRequest(format!("invalid query string: {e}")))
}

pub(crate) fn success(data: Value) -> Response {
    (StatusCode::OK, Json(Success { status: "success", data })).into_response()
}

pub(crate) struct Metrics {
    pub(crate) registry: Registry,
    /// Failed authentications, throttled attempts and lockouts (`api_auth_total{result}`).
    pub(crate) auth: IntCounterVec,
    pub(crate) requests: IntCounterVec,
    pub(crate) verify: IntCounterVec,
}

impl Metrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(Opts::new("api_requests_total", "Requests by HTTP status"), &["status"]);
        let verify =
            IntCounterVec::new(Opts::new("api_verify_total", "Token verifications by result (ok or the refusal code)"), &["result"]);
        let auth = IntCounterVec::new(
            Opts::new(
                "api_auth_failures_total",
                "Failed authentications by result: failed, lockout (an address must start waiting), throttled (refused unread)",
            ),
            &["result"],
        );
        let (requests, verify, auth) = (register(&registry, requests)?, register(&registry, verify)?, register(&registry, auth)?);
        runtime::events::register(&registry)?;
        Ok(Metrics { registry, auth, requests, verify })
    }
}

pub(crate) struct AppState {
    pub(crate) store: Arc<Store>,
    /// Admin secrets, as digests.
    pub(crate) secrets: runtime::auth::KeySet,
    /// Verify-only secrets (media servers), as digests.
    pub(crate) verify_secrets: runtime::auth::KeySet,
    /// Partner-scoped secrets as digests, and the tracking ids each may see.
    pub(crate) scoped_keys: runtime::auth::KeySet,
    pub(crate) scoped_ids: Vec<Arc<Vec<String>>>,
    pub(crate) metrics: Metrics,
    /// Client of the ClickHouse holding the usage tables.
    pub(crate) ch: clickhouse::Client,
    /// The operator's verification rules.
    pub(crate) policy: crate::tokens::verify::Policy,
    /// Slots of statistics queries running at once.
    pub(crate) stats_slots: Arc<tokio::sync::Semaphore>,
    /// ClickHouse probed at most once a second by `/readyz`.
    pub(crate) ch_probe: runtime::health::Probe,
    /// Signed-in console sessions.
    pub(crate) sessions: crate::console::session::Sessions,
    /// The console's settings.
    pub(crate) console: crate::console::session::ConsoleSettings,
    /// Failed authentications per client address.
    pub(crate) throttle: crate::throttle::AuthThrottle,
    /// The header a trusted proxy puts the client's address in (empty: the peer's address).
    pub(crate) client_address_header: Option<axum::http::HeaderName>,
    /// Partners' allowances, when `entitlements` is configured.
    pub(crate) entitlements: Option<Arc<crate::entitlements::Tracker>>,
    /// Its refresh task, stopped with the router.
    pub(crate) _tracker_task: Option<crate::entitlements::TrackerTask>,
}

/// The outcome of an authentication, for the throttle.
pub(crate) enum AuthOutcome {
    Ok,
    Failed,
}

impl AppState {
    /// The client's address: the trusted proxy's header (its last entry)
    /// when configured, else the peer's; `None` when neither is known.
    pub(crate) fn client_address(&self, headers: &axum::http::HeaderMap, ext: &axum::http::Extensions) -> Option<std::net::IpAddr> {
        if let Some(h) = &self.client_address_header {
            let v = headers.get(h)?.to_str().ok()?;
            return v.rsplit(',').next()?.trim().parse().ok();
        }
        ext.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|c| c.0.ip())
    }

    /// The `429` answer when `addr` must wait before authenticating again.
    pub(crate) fn throttled(&self, addr: Option<std::net::IpAddr>) -> Option<Response> {
        let wait = self.throttle.check(addr?, std::time::Instant::now())?;
        self.metrics.auth.with_label_values(&["throttled"]).inc();
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let mut r = fail(StatusCode::TOO_MANY_REQUESTS, &format!("too many failed authentications from this address; retry in {secs} s"));
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        Some(r)
    }

    /// Count an authentication of `addr` (a failure, or a success that clears it).
    pub(crate) fn authenticated(&self, addr: Option<std::net::IpAddr>, outcome: AuthOutcome) {
        let Some(addr) = addr else {
            if matches!(outcome, AuthOutcome::Failed) {
                self.metrics.auth.with_label_values(&["failed"]).inc();
            }
            return;
        };
        match outcome {
            AuthOutcome::Ok => self.throttle.succeeded(addr),
            AuthOutcome::Failed => {
                self.metrics.auth.with_label_values(&["failed"]).inc();
                if let crate::throttle::Failed::Waits { wait, first: true } = self.throttle.failed(addr, std::time::Instant::now()) {
                    self.metrics.auth.with_label_values(&["lockout"]).inc();
                    events::AuthLockout { address: addr, wait_secs: wait.as_secs() }.emit();
                }
            }
        }
    }
}

impl AppState {
    /// The role of a bearer secret; every key set is consulted whatever
    /// matched first (constant time each).
    pub(crate) fn role_of(&self, given: &str) -> Option<Role> {
        self.role_of_digest(&runtime::auth::digest(given))
    }

    /// The role of the secret of digest `d` (see [`AppState::role_of`]).
    pub(crate) fn role_of_digest(&self, d: &[u8; 32]) -> Option<Role> {
        let admin = self.secrets.contains_digest(d);
        let verifier = self.verify_secrets.contains_digest(d);
        let scoped = self.scoped_keys.position_digest(d).map(|i| self.scoped_ids[i].clone());
        if admin {
            Some(Role::Admin)
        } else if verifier {
            Some(Role::Verify)
        } else {
            scoped.map(Role::Scoped)
        }
    }

    /// The console session of a request's cookie, with the role its secret
    /// has now (none when the secret is no longer configured, or is
    /// verify-only).
    pub(crate) fn session_of(&self, headers: &axum::http::HeaderMap) -> Option<Session> {
        let stored = self.sessions.of(headers)?;
        match self.role_of_digest(&stored.key_digest)? {
            Role::Verify => None,
            role => Some(Session { role, csrf: stored.csrf, expires: stored.expires }),
        }
    }
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

/// Authenticate a request: a bearer secret, or else a console session
/// cookie (then a request that is not `GET`/`HEAD` must carry the session's
/// `X-CSRF-Token`). Puts the caller's [`Scope`] into the request and holds
/// each role to its routes.
pub(crate) async fn require_secret(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let header = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let role = match runtime::auth::bearer(header) {
        Some(given) => {
            let addr = s.client_address(req.headers(), req.extensions());
            if let Some(r) = s.throttled(addr) {
                return r;
            }
            let role = s.role_of(given);
            s.authenticated(addr, if role.is_some() { AuthOutcome::Ok } else { AuthOutcome::Failed });
            role
        }
        None if header.is_none() => match s.session_of(req.headers()) {
            Some(session) => {
                let safe = matches!(*req.method(), axum::http::Method::GET | axum::http::Method::HEAD);
                if !safe && !session.csrf_ok(req.headers().get("x-csrf-token")) {
                    return fail(StatusCode::FORBIDDEN, "missing or wrong X-CSRF-Token: reload the console");
                }
                Some(session.role)
            }
            None => None,
        },
        None => None,
    };
    let path = req.uri().path();
    match role {
        Some(Role::Admin) => {
            req.extensions_mut().insert(Scope(None));
            next.run(req).await
        }
        Some(Role::Verify) => {
            if path != "/api/token/verify" {
                return fail(StatusCode::FORBIDDEN, "this API secret may only verify viewer tokens (POST /api/token/verify)");
            }
            req.extensions_mut().insert(Scope(Some(Arc::new(vec![]))));
            next.run(req).await
        }
        Some(Role::Scoped(ids)) => {
            let allowed = path.starts_with("/api/analytics/")
                || path.starts_with("/api/records/")
                || path == "/api/entitlements"
                || path == "/api/entitlements/notifications"
                || path == "/api/openapi.json"
                || path.starts_with("/console/invoices");
            if !allowed {
                return fail(StatusCode::FORBIDDEN, "this API secret is limited to the statistics routes");
            }
            req.extensions_mut().insert(Scope(Some(ids)));
            next.run(req).await
        }
        None => {
            let mut r = fail(StatusCode::UNAUTHORIZED, "missing or invalid API secret (Authorization: Bearer <secret>)");
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        }
    }
}

/// At most [`MAX_CONCURRENT_STATS`] statistics queries at once.
pub(crate) async fn limit_stats(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let Ok(permit) = s.stats_slots.clone().try_acquire_owned() else {
        let mut r = error_body(StatusCode::SERVICE_UNAVAILABLE, "too many statistics queries at once; retry shortly");
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    // held here until the answer is made (the request's own copy is gone once
    // the handler has extracted what it needs); a streamed answer takes the
    // permit along until its last row
    let slot = StatsSlot(Arc::new(std::sync::Mutex::new(Some(permit))));
    req.extensions_mut().insert(slot.clone());
    let answer = next.run(req).await;
    drop(slot);
    answer
}
