//! The token routes' handlers: Subscribe and Publish tokens (create, read,
//! update incl. `refreshToken` rotation, list, delete), written once for
//! both kinds where they agree, and viewer-token verification.

use super::model::{NewPublishToken, NewSubscribeToken, PublishToken, SubscribeToken};
use super::response::{publish_json, subscribe_json, Answer, PublishTokenData, SubscribeTokenData, VerifyData};
use super::store::{Page, SortBy, TokenKind};
use super::validate::{
    check_tracking_id, parse, publish_options, CommonChange, CreatePublishBody, CreateSubscribeBody, UpdatePublishBody, UpdateSubscribeBody,
};
use super::verify::{VerifyError, Viewer};
use super::{MAX_ITEMS_ON_PAGE, MAX_PLATFORM_ITEMS_ON_PAGE};
use crate::app::{fail_body, iso_time, success, AppState, Fail, Reply, ServerError, Success, TokenErrors};
use crate::entitlements::Decision;
use crate::events;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use entitlements::Check;
use runtime::events::InternalEvent;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use utoipa::ToSchema;

/// The query of the platform's `/list` routes (documentation of [`parse_page`]).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct ListParams {
    /// Page, from 1 (required).
    page: u32,
    /// Tokens per page, 1 to 100 (required).
    items_on_page: u32,
    /// `Name` (default) or `AddedOn`.
    sort_by: Option<String>,
    /// `true` or `false` (default).
    is_descending: Option<bool>,
}

/// The platform's list parameters: `page` (from 1) and `itemsOnPage` (1 to
/// [`MAX_PLATFORM_ITEMS_ON_PAGE`]), both required on `/list` as on the platform,
/// `sortBy` (`Name`, the default, or `AddedOn`), `isDescending`. Without
/// `required` (this service's plain `GET /api/..._token`), every token up to
/// [`MAX_ITEMS_ON_PAGE`], in creation order.
fn parse_page(raw: Option<String>, required: bool) -> Result<Page, Reply> {
    let pairs = crate::app::query_pairs(raw.as_deref())?;
    let mut page = if required {
        Page { page: 0, items_on_page: 0, sort_by: SortBy::Name, descending: false }
    } else {
        Page { items_on_page: MAX_ITEMS_ON_PAGE, ..Page::default() }
    };
    let max_items = if required { MAX_PLATFORM_ITEMS_ON_PAGE } else { MAX_ITEMS_ON_PAGE };
    for (k, v) in pairs {
        match k.as_str() {
            "page" => match v.parse::<u32>() {
                Ok(p) if p >= 1 && p <= i32::MAX as u32 => page.page = p,
                _ => return Err(Reply::BadRequest(format!("page: The field Page must be between 1 and 2147483647 (got {v:?})."))),
            },
            "itemsOnPage" => match v.parse::<u32>() {
                Ok(n) if (1..=max_items).contains(&n) => page.items_on_page = n,
                _ => {
                    return Err(Reply::BadRequest(format!(
                        "itemsOnPage: The field ItemsOnPage must be between 1 and {max_items} (got {v:?})."
                    )))
                }
            },
            "sortBy" => {
                page.sort_by = match v.to_ascii_lowercase().as_str() {
                    "addedon" => SortBy::AddedOn,
                    "name" => SortBy::Name,
                    _ => return Err(Reply::BadRequest(format!("sortBy: The value {v:?} is not valid for SortBy (Name, AddedOn)."))),
                }
            }
            "isDescending" => {
                page.descending = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(Reply::BadRequest(format!("isDescending: The value {v:?} is not valid (true or false)."))),
                }
            }
            // other parameters are ignored, as the platform does
            _ => {}
        }
    }
    for (name, missing) in [("page", page.page == 0), ("itemsOnPage", page.items_on_page == 0)] {
        if missing {
            return Err(Reply::BadRequest(format!("{name}: A value for the '{name}' parameter or property was not provided.")));
        }
    }
    Ok(page)
}

/// The id in a route's path; one that is not a number is not found.
fn parse_id<K: Answer>(id: &str) -> Result<i64, Reply> {
    id.parse::<i64>().map_err(|_| not_found::<K>(id))
}

fn not_found<K: Answer>(id: impl std::fmt::Display) -> Reply {
    Reply::NotFound(format!("{} token {id} not found", K::KIND))
}

/// `GET .../list` (`required`: the platform's paging) or the plain `GET`.
fn list<K: TokenKind + Answer>(s: &AppState, q: Option<String>, required: bool) -> Result<Response, Reply> {
    let all = s.store.list::<K>(parse_page(q, required)?)?;
    Ok(success(Value::Array(all.iter().map(Answer::to_json).collect())))
}

fn get<K: TokenKind + Answer>(s: &AppState, id: &str) -> Result<Response, Reply> {
    let id = parse_id::<K>(id)?;
    let t = s.store.get::<K>(id)?.ok_or_else(|| not_found::<K>(id))?;
    Ok(success(t.to_json()))
}

fn delete<K: TokenKind + Answer>(s: &AppState, id: &str) -> Result<Response, Reply> {
    let id = parse_id::<K>(id)?;
    if !s.store.delete::<K>(id)? {
        return Err(not_found::<K>(id));
    }
    K::emit_deleted(id);
    Ok(success(json!(true)))
}

// ---- Subscribe tokens ----

#[utoipa::path(post, path = "/api/subscribe_token", tag = "Subscribe tokens", summary = "Create a Subscribe token", request_body = CreateSubscribeBody,
    responses((status = 200, body = Success<SubscribeTokenData>), TokenErrors))]
pub(crate) async fn create_subscribe(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
    let b: CreateSubscribeBody = parse(&body)?;
    let now = Utc::now();
    let tracking_id = b.tracking.map(|t| t.tracking_id);
    if let Some(t) = &tracking_id {
        check_tracking_id(t)?;
    }
    let common = b.common.validate(now)?;
    let t: SubscribeToken = s.store.create(NewSubscribeToken { common, tracking_id }, now)?;
    events::SubscribeTokenCreated { id: t.common.id, tracking_id: t.tracking_id.as_deref(), origin_cluster: &t.common.origin_cluster }
        .emit();
    Ok(success(subscribe_json(&t)))
}

#[utoipa::path(get, path = "/api/subscribe_token/list", tag = "Subscribe tokens", summary = "A page of the Subscribe tokens", params(ListParams),
    responses((status = 200, body = Success<Vec<SubscribeTokenData>>), TokenErrors))]
pub(crate) async fn list_subscribe(State(s): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Result<Response, Reply> {
    list::<SubscribeToken>(&s, q, true)
}

#[utoipa::path(get, path = "/api/subscribe_token", tag = "Subscribe tokens", summary = "Every Subscribe token (up to 1000), in creation order",
    responses((status = 200, body = Success<Vec<SubscribeTokenData>>), TokenErrors))]
pub(crate) async fn all_subscribe(State(s): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Result<Response, Reply> {
    list::<SubscribeToken>(&s, q, false)
}

#[utoipa::path(get, path = "/api/subscribe_token/{id}", tag = "Subscribe tokens", summary = "Read a Subscribe token", params(("id" = i64, Path)),
    responses((status = 200, body = Success<SubscribeTokenData>), TokenErrors))]
pub(crate) async fn get_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    get::<SubscribeToken>(&s, &id)
}

#[utoipa::path(put, path = "/api/subscribe_token/{id}", tag = "Subscribe tokens", summary = "Update a Subscribe token (`refreshToken` rotates it; the tracking id is immutable); also `PUT /api/v2/subscribe_token/{id}`",
    params(("id" = i64, Path)), request_body = UpdateSubscribeBody, responses((status = 200, body = Success<SubscribeTokenData>), TokenErrors))]
pub(crate) async fn update_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Reply> {
    let id = parse_id::<SubscribeToken>(&id)?;
    let b: UpdateSubscribeBody = parse(&body)?;
    if b.common.is_empty() && b.tracking.is_none() {
        return Err(Reply::NothingToUpdate);
    }
    let rotate = b.common.refresh_token == Some(true);
    let change = CommonChange::validate(b.common, Utc::now())?;
    let tracking = b.tracking;
    let t = s
        .store
        .update(id, |t: &mut SubscribeToken| {
            if let Some(tracking) = tracking {
                if tracking.map(|t| t.tracking_id) != t.tracking_id {
                    return Err(Reply::BadRequest("tracking cannot be changed after creation".into()));
                }
            }
            change.apply(&mut t.common)
        })?
        .ok_or_else(|| not_found::<SubscribeToken>(id))?;
    events::SubscribeTokenUpdated { id, is_active: t.common.is_active, rotated: rotate }.emit();
    Ok(success(subscribe_json(&t)))
}

#[utoipa::path(delete, path = "/api/subscribe_token/{id}", tag = "Subscribe tokens", summary = "Delete a Subscribe token", params(("id" = i64, Path)),
    responses((status = 200, body = Success<bool>), TokenErrors))]
pub(crate) async fn delete_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    delete::<SubscribeToken>(&s, &id)
}

// ---- Publish tokens ----

#[utoipa::path(post, path = "/api/publish_token", tag = "Publish tokens", summary = "Create a Publish token", request_body = CreatePublishBody,
    responses((status = 200, body = Success<PublishTokenData>), TokenErrors))]
pub(crate) async fn create_publish(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
    let b: CreatePublishBody = parse(&body)?;
    let options = publish_options(&body, false)?;
    let now = Utc::now();
    let common = b.common.validate(now)?;
    let new = NewPublishToken { common, subscribe_requires_auth: b.subscribe_requires_auth.unwrap_or(false), options };
    let t: PublishToken = s.store.create(new, now)?;
    events::PublishTokenCreated { id: t.common.id, subscribe_requires_auth: t.subscribe_requires_auth }.emit();
    Ok(success(publish_json(&t)))
}

#[utoipa::path(get, path = "/api/publish_token/list", tag = "Publish tokens", summary = "A page of the Publish tokens", params(ListParams),
    responses((status = 200, body = Success<Vec<PublishTokenData>>), TokenErrors))]
pub(crate) async fn list_publish(State(s): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Result<Response, Reply> {
    list::<PublishToken>(&s, q, true)
}

#[utoipa::path(get, path = "/api/publish_token", tag = "Publish tokens", summary = "Every Publish token (up to 1000), in creation order",
    responses((status = 200, body = Success<Vec<PublishTokenData>>), TokenErrors))]
pub(crate) async fn all_publish(State(s): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Result<Response, Reply> {
    list::<PublishToken>(&s, q, false)
}

#[utoipa::path(get, path = "/api/publish_token/{id}", tag = "Publish tokens", summary = "Read a Publish token", params(("id" = i64, Path)),
    responses((status = 200, body = Success<PublishTokenData>), TokenErrors))]
pub(crate) async fn get_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    get::<PublishToken>(&s, &id)
}

#[utoipa::path(put, path = "/api/publish_token/{id}", tag = "Publish tokens", summary = "Update a Publish token (`refreshToken` rotates it); also `PUT /api/v2/publish_token/{id}`",
    params(("id" = i64, Path)), request_body = UpdatePublishBody, responses((status = 200, body = Success<PublishTokenData>), TokenErrors))]
pub(crate) async fn update_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Reply> {
    let id = parse_id::<PublishToken>(&id)?;
    let b: UpdatePublishBody = parse(&body)?;
    let options = publish_options(&body, true)?;
    if b.common.is_empty() && b.subscribe_requires_auth.is_none() && options.is_empty() {
        return Err(Reply::NothingToUpdate);
    }
    let change = CommonChange::validate(b.common, Utc::now())?;
    let requires_auth = b.subscribe_requires_auth;
    let t = s
        .store
        .update(id, |t: &mut PublishToken| {
            if let Some(v) = requires_auth {
                t.subscribe_requires_auth = v;
            }
            t.options.extend(options);
            change.apply(&mut t.common)
        })?
        .ok_or_else(|| not_found::<PublishToken>(id))?;
    events::PublishTokenUpdated { id, is_active: t.common.is_active, subscribe_requires_auth: t.subscribe_requires_auth }.emit();
    Ok(success(publish_json(&t)))
}

#[utoipa::path(delete, path = "/api/publish_token/{id}", tag = "Publish tokens", summary = "Delete a Publish token", params(("id" = i64, Path)),
    responses((status = 200, body = Success<bool>), TokenErrors))]
pub(crate) async fn delete_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    delete::<PublishToken>(&s, &id)
}

// ---- verification ----

/// Body of `POST /api/token/verify` (what a media server sends).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct VerifyBody {
    /// The viewer's token; absent or empty for a viewer without one.
    #[serde(default)]
    token: Option<String>,
    stream_name: String,
    cluster: String,
    /// The viewer's web origin (`Origin` header), if any.
    #[serde(default, alias = "viewerOrigin")]
    origin: Option<String>,
    /// The viewer's IP address (also accepted as `ip`, `viewerIp`, `clientIp`).
    #[serde(default, alias = "ip", alias = "viewerIp", alias = "clientIp")]
    ip_address: Option<String>,
    /// The viewer's country (ISO 3166-1 alpha-2, from the media server's
    /// geo-IP; also accepted as `countryCode`, `viewerCountry`).
    #[serde(default, alias = "countryCode", alias = "viewerCountry")]
    country: Option<String>,
    /// The media server re-verifies a viewer already watching (a `hard`
    /// allowance refuses it once used up; a `soft` one does not).
    #[serde(default)]
    reverification: bool,
}

fn verify_status(e: &VerifyError) -> StatusCode {
    match e {
        VerifyError::Malformed(_) | VerifyError::FieldTooLong { .. } => StatusCode::BAD_REQUEST,
        VerifyError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    }
}

#[utoipa::path(post, path = "/api/token/verify", tag = "Verification", summary = "Admit a viewer (what media servers call); refusals are `fail` with `data.code`", request_body = VerifyBody,
    responses((status = 200, body = Success<VerifyData>), TokenErrors, (status = 403, description = "refused (or the secret may not verify): `data.code` says why", body = Fail), (status = 503, description = "token store unavailable", body = ServerError)))]
pub(crate) async fn verify_token(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
    let b: VerifyBody = parse(&body)?;
    let ip = match b.ip_address.as_deref() {
        None | Some("") => None,
        Some(v) => Some(v.parse::<std::net::IpAddr>().map_err(|_| Reply::BadRequest(format!("ipAddress: {v:?} is not an IP address")))?),
    };
    let viewer =
        Viewer { origin: b.origin.as_deref().filter(|o| !o.is_empty()), ip, country: b.country.as_deref().filter(|c| !c.is_empty()) };
    let token = b.token.as_deref().map(str::trim).filter(|t| !t.is_empty());
    match super::verify::admit(s.store.as_ref(), token, &b.stream_name, &b.cluster, &viewer, Utc::now(), &s.policy) {
        Ok(a) => {
            // the partner's allowance, once the token itself is valid
            let check = if b.reverification { Check::Reverification } else { Check::Admission };
            let tracking = a.as_ref().and_then(|a| a.tracking_id.as_deref());
            if let (Some(tracker), Some(t)) = (&s.entitlements, tracking) {
                let token_id = a.as_ref().and_then(|a| a.token_id);
                if let Decision::Refuse { code, message } = tracker.decide(t, token_id, check, Utc::now()) {
                    s.metrics.verify.with_label_values(&[code]).inc();
                    events::TokenRefused { code, reason: &message, stream: &b.stream_name, cluster: &b.cluster }.emit();
                    return Ok(fail_body(StatusCode::FORBIDDEN, json!({"code": code, "message": message, "trackingId": t})));
                }
            }
            s.metrics.verify.with_label_values(&[if a.is_some() { "ok" } else { "ok_untracked" }]).inc();
            let a = a.unwrap_or_default();
            events::TokenVerified { token_id: a.token_id, tracking_id: a.tracking_id.as_deref(), stream: &b.stream_name }.emit();
            let data = VerifyData {
                token_id: a.token_id,
                tracking_id: a.tracking_id,
                custom_viewer_data: a.custom_viewer_data,
                expires_at: a.expires_at.map(iso_time),
            };
            Ok(success(serde_json::to_value(data).unwrap_or(Value::Null)))
        }
        Err(e) => {
            s.metrics.verify.with_label_values(&[e.code()]).inc();
            events::TokenRefused { code: e.code(), reason: &e, stream: &b.stream_name, cluster: &b.cluster }.emit();
            if let VerifyError::Store(_) = e {
                return Ok(crate::app::error_body(verify_status(&e), &e.to_string()));
            }
            Ok(fail_body(verify_status(&e), json!({"code": e.code(), "message": e.to_string()})))
        }
    }
}
