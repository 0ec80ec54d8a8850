//! The token routes of `api serve`: Subscribe and Publish tokens (create,
//! list, get, update, delete) and viewer-token verification.

use crate::app::{success, AppState, Reply};
use crate::store::{NewPublishToken, NewSubscribeToken, PublishToken, StreamRule, SubscribeToken, SubscribeTokenUpdate};
use crate::verify::VerifyError;
use crate::{AUTO_CLUSTER, MAX_TRACKING_ID_CHARS};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;

/// Longest accepted `expires`, seconds (10 years).
pub const MAX_EXPIRES_SECS: i64 = 10 * 365 * 86_400;
const MAX_LABEL_CHARS: usize = 256;
const MAX_STREAM_CHARS: usize = 256;
const MAX_STREAMS: usize = 100;
const MAX_LIST_ITEMS: usize = 100;
/// Largest accepted request body of the token routes, bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

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

pub(crate) async fn create_subscribe(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
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

pub(crate) async fn list_subscribe(State(s): State<Arc<AppState>>) -> Result<Response, Reply> {
    let all = s.store.list_subscribe()?;
    Ok(success(Value::Array(all.iter().map(subscribe_json).collect())))
}

pub(crate) async fn get_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("subscribe", &id)?;
    let t = s.store.get_subscribe(id)?.ok_or_else(|| Reply::NotFound(format!("no subscribe token with id {id}")))?;
    Ok(success(subscribe_json(&t)))
}

pub(crate) async fn update_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Reply> {
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

pub(crate) async fn delete_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("subscribe", &id)?;
    if !s.store.delete_subscribe(id)? {
        return Err(Reply::NotFound(format!("no subscribe token with id {id}")));
    }
    tracing::info!(id, "SubscribeTokenDeleted");
    Ok(success(json!({"id": id, "deleted": true})))
}

// ---- Publish tokens ----

pub(crate) async fn create_publish(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
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

pub(crate) async fn list_publish(State(s): State<Arc<AppState>>) -> Result<Response, Reply> {
    let all = s.store.list_publish()?;
    Ok(success(Value::Array(all.iter().map(publish_json).collect())))
}

pub(crate) async fn get_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("publish", &id)?;
    let t = s.store.get_publish(id)?.ok_or_else(|| Reply::NotFound(format!("no publish token with id {id}")))?;
    Ok(success(publish_json(&t)))
}

pub(crate) async fn delete_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
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

pub(crate) async fn verify_token(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
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
