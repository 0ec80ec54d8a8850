//! The web console at `/` of `api serve`: sign-in with an API secret, tokens,
//! usage per tracking id, viewer records and invoices.
//!
//! - **Assets** (`api/src/console/assets/`) are embedded in the binary (`include_str!`):
//!   one HTML page, plain JavaScript and CSS; nothing is built at run time.
//!   The page calls the same JSON API as every client (`/api/...`), plus the
//!   console routes below.
//! - **Sign-in** (`POST /console/login {secret}`) with an admin or a
//!   partner-scoped secret (verify-only secrets are refused) opens a session:
//!   a random 256-bit id in a cookie that is `HttpOnly`, `SameSite=Strict`,
//!   `Path=/`, `Secure` when `console_secure_cookie`, and short-lived
//!   (`console_session_secs`, default 30 min, not extended). Sessions live in
//!   the token store (`console_sessions`, by the SHA-256 of the id): they
//!   survive a restart, every `api serve` sharing the store honours them and
//!   a sign-out on one ends them on all; at most [`MAX_SESSIONS`]. A session
//!   keeps the digest of the secret that opened it and takes that secret's
//!   role at every request, so a secret removed from the configuration ends
//!   its sessions.
//! - **CSRF**: every request that is not `GET`/`HEAD` and is authenticated
//!   by the cookie must carry `X-CSRF-Token` equal to the session's token
//!   (compared in constant time), which the page gets from the sign-in
//!   answer; a form posted from another site has neither the header nor,
//!   with `SameSite=Strict`, the cookie.
//! - **Scope**: a partner-scoped secret's session is that secret's scope: its
//!   tracking ids' usage and records, and the invoices of the rate-card
//!   partners whose tracking ids are all in its scope; no tokens.
//! - **Invoices** are read from where `billing` writes them: the
//!   `billing_invoices` table (the latest row of each invoice number; its
//!   `document` is the invoice JSON, rendered to HTML and CSV by `billing`'s
//!   own renderers). The reconciliation is `billing reconcile` run live
//!   against the rate card named by `billing_rates`.

use crate::app::{fail, success, AppState, Reply, Scope};
use crate::events;
pub mod session;

use self::session::{OpenRefused, Role, Session, COOKIE};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use runtime::events::InternalEvent;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

// ---- assets ----

fn asset(ctype: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::HeaderName::from_static("x-frame-options"), "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the console page.
pub(crate) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// `GET /console/app.js`
pub(crate) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// `GET /console/app.css`
pub(crate) async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}

// ---- sign-in ----

#[derive(Deserialize)]
struct Login {
    secret: String,
}

fn session_json(s: &Session) -> Value {
    let (role, ids) = match &s.role {
        Role::Admin => ("admin", Value::Null),
        Role::Scoped(ids) => ("partner", json!(ids.as_slice())),
        Role::Verify => ("verify", Value::Null),
    };
    json!({"role": role, "trackingIds": ids, "csrf": s.csrf, "expiresAt": crate::app::iso_time(s.expires)})
}

/// `POST /console/login {secret}`: open a session for an admin or scoped secret.
pub(crate) async fn login(State(s): State<Arc<AppState>>, req: axum::extract::Request) -> Response {
    let addr = s.client_address(req.headers(), req.extensions());
    if let Some(r) = s.throttled(addr) {
        events::ConsoleSignInThrottled.emit();
        return r;
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return fail(StatusCode::BAD_REQUEST, "secret: required");
    };
    let Ok(l) = serde_json::from_slice::<Login>(&body) else {
        return fail(StatusCode::BAD_REQUEST, "secret: required");
    };
    let role = s.role_of(&l.secret);
    s.authenticated(addr, if role.is_some() { crate::app::AuthOutcome::Ok } else { crate::app::AuthOutcome::Failed });
    let role = match role {
        Some(Role::Verify) => return fail(StatusCode::FORBIDDEN, "a verify-only secret cannot sign in to the console"),
        Some(r) => r,
        None => {
            events::ConsoleSignInRefused.emit();
            return fail(StatusCode::UNAUTHORIZED, "unknown API secret");
        }
    };
    let ttl = chrono::Duration::seconds(s.console.session_secs as i64);
    let (id, stored) = match s.sessions.open(runtime::auth::digest(&l.secret), ttl) {
        Ok(opened) => opened,
        Err(OpenRefused::Full) => return crate::app::error_body(StatusCode::SERVICE_UNAVAILABLE, "too many console sessions; retry later"),
        Err(OpenRefused::Store(e)) => {
            events::ConsoleSessionOpenFailed { error: &e }.emit();
            return crate::app::error_body(StatusCode::SERVICE_UNAVAILABLE, "the session store failed; retry later");
        }
    };
    let session = Session { role, csrf: stored.csrf, expires: stored.expires };
    let secure = if s.console.secure_cookie { "; Secure" } else { "" };
    let set = format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", s.console.session_secs);
    events::ConsoleSignedIn { admin: matches!(session.role, Role::Admin) }.emit();
    let mut r = success(session_json(&session));
    if let Ok(v) = HeaderValue::from_str(&set) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `GET /console/session`: the signed-in session, or `data: null` (not an
/// error: the page asks before anyone signed in).
pub(crate) async fn session(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    success(s.session_of(&headers).map(|sess| session_json(&sess)).unwrap_or(Value::Null))
}

/// `POST /console/logout`
pub(crate) async fn logout(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    s.sessions.close(&headers);
    let mut r = success(json!(true));
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("metering_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"));
    r
}

// ---- signing a test viewer token ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignBody {
    token_id: i64,
    stream_name: String,
    #[serde(default)]
    custom_viewer_data: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// `POST /console/sign`: a viewer token (HS256) self-signed with a master
/// token, as a partner would sign one (admin only).
pub(crate) async fn sign(State(s): State<Arc<AppState>>, Extension(scope): Extension<Scope>, body: Bytes) -> Result<Response, Reply> {
    if scope.0.is_some() {
        return Err(Reply::Forbidden("signing needs an admin secret".into()));
    }
    let b: SignBody = serde_json::from_slice(&body).map_err(|e| Reply::BadRequest(format!("invalid body: {e}")))?;
    let parent = s
        .store
        .get::<crate::tokens::model::SubscribeToken>(b.token_id)?
        .ok_or_else(|| Reply::NotFound(format!("Subscribe token {} not found", b.token_id)))?;
    let req = crate::tokens::sign::SignRequest {
        token_id: parent.common.id,
        stream_name: b.stream_name,
        custom_viewer_data: b.custom_viewer_data.filter(|d| !d.is_empty()),
        expires_in_secs: b.expires_in.unwrap_or(3600),
        ..Default::default()
    };
    let jwt = crate::tokens::sign::sign(&parent.common.token, &req, Utc::now())
        .map_err(|e| Reply::BadRequest(format!("customViewerData: {e}")))?;
    Ok(success(json!({ "token": jwt })))
}

// ---- invoices ----

#[derive(Debug, Deserialize, clickhouse::Row)]
struct InvoiceRow {
    invoice_number: String,
    partner_id: String,
    period: String,
    revision: u32,
    status: String,
    currency: String,
    total_bytes: u64,
    subtotal: String,
    total: String,
    created: u32,
}

/// The partners a scope may see: every one for an admin; for a scoped
/// secret, the rate-card partners whose tracking ids are all in its scope.
fn visible_partners(s: &AppState, scope: &Scope) -> Option<Vec<String>> {
    let ids = scope.0.as_ref()?;
    let card = s.console.rates.as_ref();
    Some(
        card.map(|c| {
            c.partners
                .iter()
                .filter(|p| !p.tracking_ids.is_empty() && p.tracking_ids.iter().all(|t| ids.contains(t)))
                .map(|p| p.id.clone())
                .collect()
        })
        .unwrap_or_default(),
    )
}

fn ch_error(e: clickhouse::error::Error) -> Reply {
    events::InvoiceQueryFailed { error: &e }.emit();
    Reply::Internal("invoice store unavailable".into())
}

/// `GET /console/invoices`: every invoice (latest state of each number),
/// newest period first.
pub(crate) async fn invoices(State(s): State<Arc<AppState>>, Extension(scope): Extension<Scope>) -> Result<Response, Reply> {
    let rows: Vec<InvoiceRow> =
        s.ch.query(
            "SELECT invoice_number, partner_id, period, revision, status, currency, total_bytes, subtotal, total, \
             toUInt32(created_at) AS created FROM billing_invoices ORDER BY created_at LIMIT 100000",
        )
        .fetch_all()
        .await
        .map_err(ch_error)?;
    let visible = visible_partners(&s, &scope);
    let mut latest: std::collections::BTreeMap<String, InvoiceRow> = Default::default();
    for r in rows {
        if visible.as_ref().is_none_or(|v| v.contains(&r.partner_id)) {
            latest.insert(r.invoice_number.clone(), r);
        }
    }
    let mut list: Vec<&InvoiceRow> = latest.values().collect();
    list.sort_by(|a, b| b.period.cmp(&a.period).then(a.partner_id.cmp(&b.partner_id)).then(b.revision.cmp(&a.revision)));
    let data: Vec<Value> = list
        .iter()
        .map(|r| {
            json!({
                "invoiceNumber": r.invoice_number, "partnerId": r.partner_id, "period": r.period, "revision": r.revision,
                "status": r.status, "currency": r.currency, "totalBytes": r.total_bytes.to_string(),
                "subtotal": r.subtotal, "total": r.total,
                "createdAt": DateTime::<Utc>::from_timestamp(i64::from(r.created), 0).map(crate::app::iso_time),
            })
        })
        .collect();
    Ok(success(Value::Array(data)))
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct DocRow {
    partner_id: String,
    document: String,
}

/// `GET /console/invoices/{number}.{html,json,csv,pdf}`: one invoice, rendered by billing.
pub(crate) async fn invoice_file(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    Path(file): Path<String>,
) -> Result<Response, Reply> {
    let (number, ext) =
        file.rsplit_once('.').ok_or_else(|| Reply::BadRequest("file: <invoice number>.html, .json, .csv or .pdf".into()))?;
    let row: Option<DocRow> =
        s.ch.query("SELECT partner_id, document FROM billing_invoices WHERE invoice_number = ? ORDER BY created_at DESC LIMIT 1")
            .bind(number)
            .fetch_optional()
            .await
            .map_err(ch_error)?;
    let row = row.filter(|r| visible_partners(&s, &scope).is_none_or(|v| v.contains(&r.partner_id)));
    let row = row.ok_or_else(|| Reply::BadRequest(format!("invoice: {number:?} not found")))?;
    let inv = billing::invoice::Invoice::from_json(&row.document).map_err(|e| {
        events::InvoiceDocumentUnreadable { error: &e, number }.emit();
        Reply::Internal("invoice document unreadable".into())
    })?;
    let (ctype, body) = match ext {
        "html" => ("text/html; charset=utf-8", billing::render::invoice_html(&inv).into_bytes()),
        "json" => ("application/json", inv.to_json().into_bytes()),
        "csv" => ("text/csv; charset=utf-8", billing::render::lines_csv(std::slice::from_ref(&inv)).into_bytes()),
        "pdf" => ("application/pdf", billing::pdf::invoice_pdf(&inv)),
        _ => return Err(Reply::BadRequest("file: <invoice number>.html, .json, .csv or .pdf".into())),
    };
    let disposition = format!("inline; filename=\"{}.{ext}\"", inv.invoice_number.replace(['"', '\\'], ""));
    Ok((
        [
            (header::CONTENT_TYPE, ctype.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'".to_string()),
        ],
        body,
    )
        .into_response())
}

/// `GET /console/reconciliation?period=YYYY-MM`: `billing reconcile`, live (admin only).
pub(crate) async fn reconciliation(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(q): RawQuery,
) -> Result<Response, Reply> {
    if scope.0.is_some() {
        return Err(Reply::Forbidden("the reconciliation needs an admin secret".into()));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q.as_deref().unwrap_or("")).unwrap_or_default();
    let period = pairs.into_iter().find(|(k, _)| k == "period").map(|(_, v)| v).unwrap_or_default();
    if billing::invoice::parse_period(&period).is_none() {
        return Err(Reply::BadRequest(format!("period: YYYY-MM (got {period:?})")));
    }
    let (Some(card), Some(store)) = (&s.console.rates, &s.console.billing) else {
        return Err(Reply::BadRequest("period: no rate card configured (set billing_rates) to reconcile".into()));
    };
    let checks =
        billing::reconcile::reconcile_with(store, card, &period, billing::store::log_count::LogCounting::ReadOnly).await.map_err(|e| {
            events::ReconciliationFailed { error: &e }.emit();
            Reply::Internal(format!("reconciliation failed: {e}"))
        })?;
    let ok = checks.iter().all(|c| c.ok);
    Ok(success(json!({"period": period, "ok": ok, "checks": checks})))
}
