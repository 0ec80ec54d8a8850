//! The token routes of `api serve`, shaped like the platform's REST API
//! (request bodies, response fields, paging, envelopes): Subscribe and
//! Publish tokens (create, read, update incl. `refreshToken` rotation,
//! list, delete) and viewer-token verification.
//!
//! Unknown body fields are ignored, as the platform does; fields of a known
//! name with a wrong type or value are a `400`.

use crate::app::{fail_body, iso_time, success, AppState, Fail, Reply, ServerError, Success, TokenErrors};
use crate::store::{
    generate_token, AccessRules, NewPublishToken, NewSubscribeToken, Page, PublishToken, SortBy, StreamRule, SubscribeToken,
};
use crate::verify::{VerifyError, Viewer};
use crate::{is_auto_cluster, AUTO_CLUSTER, MAX_TRACKING_ID_CHARS};
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;

/// Longest accepted token lifetime, seconds (10 years).
pub const MAX_EXPIRES_SECS: i64 = 10 * 365 * 86_400;
const MAX_LABEL_CHARS: usize = 256;
const MAX_STREAM_CHARS: usize = 256;
const MAX_STREAMS: usize = 100;
const MAX_LIST_ITEMS: usize = 100;
/// Largest `bindIpsOnUsage`.
pub const MAX_BIND_IPS: u32 = 1000;
/// Largest `itemsOnPage` of the platform's `/list` routes.
pub const MAX_PLATFORM_ITEMS_ON_PAGE: u32 = 100;
/// Most tokens `GET /api/subscribe_token` (without `/list`) answers with.
pub const MAX_ITEMS_ON_PAGE: u32 = 1000;
/// Largest accepted request body of the token routes, bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// The JSON type of a publishing option, and its value when never set.
#[derive(Debug, Clone, Copy)]
enum OptionKind {
    /// A boolean, with its default.
    Bool(bool),
    /// A boolean or `null` (`null`: the account's setting).
    NullableBool,
    Integer,
    Text,
    /// `geoCascade`: `{isEnabled, clusters}`.
    GeoCascade,
    /// `restream`: a list of targets.
    List,
}

impl OptionKind {
    fn default_value(self) -> Value {
        match self {
            OptionKind::Bool(b) => json!(b),
            OptionKind::GeoCascade => json!({"isEnabled": false, "clusters": []}),
            OptionKind::List => json!([]),
            OptionKind::NullableBool | OptionKind::Integer | OptionKind::Text => Value::Null,
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            OptionKind::Bool(_) | OptionKind::NullableBool => v.is_boolean(),
            OptionKind::Integer => v.is_i64(),
            OptionKind::Text => v.is_string(),
            OptionKind::GeoCascade => v.is_object(),
            OptionKind::List => v.is_array(),
        }
    }
}

/// The publishing options of a Publish token, kept and returned as given
/// (the platform acts on them; this service only meters): name, the update
/// body's name when it differs, and kind with the platform's default.
const PUBLISH_OPTIONS: &[(&str, Option<&str>, OptionKind)] = &[
    ("record", None, OptionKind::Bool(false)),
    ("clip", None, OptionKind::Bool(false)),
    ("multisource", None, OptionKind::Bool(true)),
    ("lowLatencyRtmp", None, OptionKind::Bool(true)),
    ("enableThumbnails", None, OptionKind::Bool(false)),
    ("displaySrtPassphrase", None, OptionKind::Bool(false)),
    ("drm", None, OptionKind::Bool(false)),
    ("enableUTCInsertion", None, OptionKind::NullableBool),
    ("priority", None, OptionKind::Integer),
    ("encoderProfileId", None, OptionKind::Text),
    ("geoCascade", Some("updateGeoCascade"), OptionKind::GeoCascade),
    ("restream", Some("updateRestream"), OptionKind::List),
];

/// A publishing option's value: as stored, or the platform's default.
fn publish_option(options: &Map<String, Value>, name: &str) -> Value {
    options
        .get(name)
        .cloned()
        .unwrap_or_else(|| PUBLISH_OPTIONS.iter().find(|(n, ..)| *n == name).map_or(Value::Null, |(_, _, kind)| kind.default_value()))
}

// ---- request bodies and validation ----

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| Reply::BadRequest(format!("invalid body: {e}")))
}

/// `Some(None)` for an explicit `null`, `None` when absent.
fn double_option<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The fields a create body shares between both token kinds.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreateCommon {
    #[serde(default)]
    label: Option<String>,
    streams: Vec<StreamRule>,
    #[serde(default)]
    origin_cluster: Option<String>,
    /// ISO 8601 date-time (the platform's field).
    #[serde(default)]
    expires_on: Option<String>,
    /// Seconds from now (this service's shorthand).
    #[serde(default)]
    expires: Option<i64>,
    #[serde(default)]
    allowed_origins: Option<Vec<String>>,
    #[serde(default)]
    allowed_ip_addresses: Option<Vec<String>>,
    #[serde(default)]
    bind_ips_on_usage: Option<u32>,
    #[serde(default)]
    allowed_countries: Option<Vec<String>>,
    #[serde(default)]
    denied_countries: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreateSubscribeBody {
    #[serde(flatten)]
    common: CreateCommon,
    #[serde(default)]
    tracking: Option<Tracking>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct CreatePublishBody {
    #[serde(flatten)]
    common: CreateCommon,
    #[serde(default)]
    subscribe_requires_auth: Option<bool>,
}

impl UpdateCommon {
    fn is_empty(&self) -> bool {
        self.label.is_none()
            && self.refresh_token.is_none()
            && self.is_active.is_none()
            && self.add_token_streams.is_none()
            && self.remove_token_streams.is_none()
            && self.update_allowed_origins.is_none()
            && self.update_allowed_ip_addresses.is_none()
            && self.update_bind_ips_on_usage.is_none()
            && self.update_allowed_countries.is_none()
            && self.update_denied_countries.is_none()
            && self.update_origin_cluster.is_none()
            && self.expires_on.is_none()
            && self.streams.is_none()
    }
}

/// A stream to remove: its name (every rule of that name), or one rule.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum StreamRef {
    Name(String),
    Rule(StreamRule),
}

impl StreamRef {
    fn removes(&self, r: &StreamRule) -> bool {
        match self {
            StreamRef::Name(n) => r.stream_name == *n,
            StreamRef::Rule(rule) => rule == r,
        }
    }
}

/// The update body both token kinds share: the platform's v1 `update*`
/// fields, or (`PUT /api/v2/...`, also accepted on v1 as the platform's own
/// guide does) the same without the prefix.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UpdateCommon {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    refresh_token: Option<bool>,
    #[serde(default)]
    is_active: Option<bool>,
    #[serde(default)]
    add_token_streams: Option<Vec<StreamRule>>,
    /// Stream names (the platform's reference) or `{streamName, isRegex}`
    /// objects (what its client libraries send).
    #[serde(default)]
    remove_token_streams: Option<Vec<StreamRef>>,
    #[serde(default, alias = "allowedOrigins")]
    update_allowed_origins: Option<Vec<String>>,
    #[serde(default, alias = "allowedIpAddresses")]
    update_allowed_ip_addresses: Option<Vec<String>>,
    #[serde(default, alias = "bindIpsOnUsage")]
    update_bind_ips_on_usage: Option<u32>,
    #[serde(default, alias = "allowedCountries")]
    update_allowed_countries: Option<Vec<String>>,
    #[serde(default, alias = "deniedCountries")]
    update_denied_countries: Option<Vec<String>>,
    #[serde(default, alias = "originCluster")]
    update_origin_cluster: Option<String>,
    /// This service's extension: a new expiry (ISO 8601), `null` removes it.
    #[serde(default, deserialize_with = "double_option")]
    expires_on: Option<Option<String>>,
    /// This service's extension: replace every stream rule.
    #[serde(default)]
    streams: Option<Vec<StreamRule>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UpdateSubscribeBody {
    #[serde(flatten)]
    common: UpdateCommon,
    /// Accepted only when equal to the current tracking (it is immutable).
    #[serde(default, deserialize_with = "double_option")]
    tracking: Option<Option<Tracking>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct UpdatePublishBody {
    #[serde(flatten)]
    common: UpdateCommon,
    #[serde(default)]
    subscribe_requires_auth: Option<bool>,
}

fn check_label(label: &str) -> Result<(), Reply> {
    if label.chars().count() > MAX_LABEL_CHARS {
        return Err(Reply::BadRequest(format!("label: at most {MAX_LABEL_CHARS} characters")));
    }
    Ok(())
}

fn check_stream_rules(field: &str, streams: &[StreamRule]) -> Result<(), Reply> {
    if streams.len() > MAX_STREAMS {
        return Err(Reply::BadRequest(format!("{field}: at most {MAX_STREAMS} entries")));
    }
    for (i, s) in streams.iter().enumerate() {
        if s.stream_name.is_empty() || s.stream_name.chars().count() > MAX_STREAM_CHARS {
            return Err(Reply::BadRequest(format!("{field}[{i}].streamName: 1 to {MAX_STREAM_CHARS} characters")));
        }
        s.validate().map_err(|e| Reply::BadRequest(format!("{field}[{i}].streamName: invalid regex: {e}")))?;
    }
    Ok(())
}

fn check_streams(streams: &[StreamRule]) -> Result<(), Reply> {
    if streams.is_empty() {
        return Err(Reply::BadRequest(format!("streams: between 1 and {MAX_STREAMS} entries required")));
    }
    check_stream_rules("streams", streams)
}

fn check_tracking_id(t: &str) -> Result<(), Reply> {
    if t.is_empty() || t.chars().count() > MAX_TRACKING_ID_CHARS {
        return Err(Reply::BadRequest(format!("tracking.trackingId: 1 to {MAX_TRACKING_ID_CHARS} characters")));
    }
    Ok(())
}

/// `Auto` in any case becomes `Auto`; a cluster id is kept as given.
fn origin_cluster(field: &str, c: Option<String>) -> Result<String, Reply> {
    let Some(c) = c else { return Ok(AUTO_CLUSTER.to_string()) };
    if is_auto_cluster(&c) {
        return Ok(AUTO_CLUSTER.to_string());
    }
    let ok = !c.is_empty() && c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !ok {
        return Err(Reply::BadRequest(format!("{field}: `Auto` or a cluster id ([A-Za-z0-9._-], at most 64)")));
    }
    Ok(c)
}

/// An ISO 8601 date-time (or a date: midnight UTC) in the future, at most
/// [`MAX_EXPIRES_SECS`] ahead.
fn parse_expires_on(field: &str, v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, Reply> {
    let t = crate::stats::parse_time(v).ok_or_else(|| Reply::BadRequest(format!("{field}: {v:?} is not an ISO 8601 date-time")))?;
    check_expiry(field, t, now)
}

fn check_expiry(field: &str, t: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>, Reply> {
    if t <= now || t > now + chrono::Duration::seconds(MAX_EXPIRES_SECS) {
        return Err(Reply::BadRequest(format!("{field}: must be in the future and at most {MAX_EXPIRES_SECS} seconds ahead")));
    }
    Ok(t)
}

fn expiry(c: &CreateCommon, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, Reply> {
    match (&c.expires_on, c.expires) {
        (Some(_), Some(_)) => Err(Reply::BadRequest("expiresOn and expires: give one of them".into())),
        (Some(v), None) => parse_expires_on("expiresOn", v, now).map(Some),
        (None, Some(secs)) => {
            if !(1..=MAX_EXPIRES_SECS).contains(&secs) {
                return Err(Reply::BadRequest(format!("expires: 1 to {MAX_EXPIRES_SECS} seconds")));
            }
            Ok(Some(now + chrono::Duration::seconds(secs)))
        }
        (None, None) => Ok(None),
    }
}

fn check_origins(field: &str, origins: &[String]) -> Result<(), Reply> {
    if origins.len() > MAX_LIST_ITEMS {
        return Err(Reply::BadRequest(format!("{field}: at most {MAX_LIST_ITEMS} entries")));
    }
    for (i, o) in origins.iter().enumerate() {
        if o.is_empty() || o.len() > 256 || o.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Reply::BadRequest(format!("{field}[{i}]: 1 to 256 characters, no spaces")));
        }
    }
    Ok(())
}

fn check_ips(field: &str, ips: &[String]) -> Result<(), Reply> {
    if ips.len() > MAX_LIST_ITEMS {
        return Err(Reply::BadRequest(format!("{field}: at most {MAX_LIST_ITEMS} entries")));
    }
    for (i, ip) in ips.iter().enumerate() {
        if crate::verify::IpRange::parse(ip).is_none() {
            return Err(Reply::BadRequest(format!("{field}[{i}]: {ip:?} is not an IP address or CIDR range")));
        }
    }
    Ok(())
}

/// ISO 3166-1 alpha-2 codes, kept upper case.
fn countries(field: &str, list: Vec<String>) -> Result<Vec<String>, Reply> {
    if list.len() > 300 {
        return Err(Reply::BadRequest(format!("{field}: at most 300 entries")));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, c)| {
            if c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()) {
                Ok(c.to_ascii_uppercase())
            } else {
                Err(Reply::BadRequest(format!("{field}[{i}]: {c:?} is not an ISO 3166-1 alpha-2 country code")))
            }
        })
        .collect()
}

fn check_bind(field: &str, n: u32) -> Result<u32, Reply> {
    if n > MAX_BIND_IPS {
        return Err(Reply::BadRequest(format!("{field}: 0 to {MAX_BIND_IPS}")));
    }
    Ok(n)
}

fn rules(c: &mut CreateCommon) -> Result<AccessRules, Reply> {
    let allowed_origins = c.allowed_origins.take().unwrap_or_default();
    check_origins("allowedOrigins", &allowed_origins)?;
    let allowed_ip_addresses = c.allowed_ip_addresses.take().unwrap_or_default();
    check_ips("allowedIpAddresses", &allowed_ip_addresses)?;
    Ok(AccessRules {
        allowed_origins,
        allowed_ip_addresses,
        bind_ips_on_usage: check_bind("bindIpsOnUsage", c.bind_ips_on_usage.unwrap_or(0))?,
        allowed_countries: countries("allowedCountries", c.allowed_countries.take().unwrap_or_default())?,
        denied_countries: countries("deniedCountries", c.denied_countries.take().unwrap_or_default())?,
    })
}

/// What an update body does to the fields both token kinds share.
struct CommonChange {
    label: Option<String>,
    refresh_token: bool,
    is_active: Option<bool>,
    streams: Option<Vec<StreamRule>>,
    add: Vec<StreamRule>,
    remove: Vec<StreamRef>,
    origins: Option<Vec<String>>,
    ips: Option<Vec<String>>,
    bind: Option<u32>,
    allowed_countries: Option<Vec<String>>,
    denied_countries: Option<Vec<String>>,
    origin_cluster: Option<String>,
    expires_on: Option<Option<DateTime<Utc>>>,
}

impl CommonChange {
    /// Validate an update body (before the token is read).
    fn validate(b: UpdateCommon, now: DateTime<Utc>) -> Result<CommonChange, Reply> {
        if let Some(l) = &b.label {
            check_label(l)?;
        }
        if let Some(s) = &b.streams {
            check_streams(s)?;
        }
        let add = b.add_token_streams.unwrap_or_default();
        check_stream_rules("addTokenStreams", &add)?;
        let remove = b.remove_token_streams.unwrap_or_default();
        if let Some(o) = &b.update_allowed_origins {
            check_origins("updateAllowedOrigins", o)?;
        }
        if let Some(ips) = &b.update_allowed_ip_addresses {
            check_ips("updateAllowedIpAddresses", ips)?;
        }
        Ok(CommonChange {
            label: b.label,
            refresh_token: b.refresh_token.unwrap_or(false),
            is_active: b.is_active,
            streams: b.streams,
            add,
            remove,
            origins: b.update_allowed_origins,
            ips: b.update_allowed_ip_addresses,
            bind: b.update_bind_ips_on_usage.map(|n| check_bind("updateBindIpsOnUsage", n)).transpose()?,
            allowed_countries: b.update_allowed_countries.map(|c| countries("updateAllowedCountries", c)).transpose()?,
            denied_countries: b.update_denied_countries.map(|c| countries("updateDeniedCountries", c)).transpose()?,
            origin_cluster: b.update_origin_cluster.map(|c| origin_cluster("updateOriginCluster", Some(c))).transpose()?,
            expires_on: match b.expires_on {
                None => None,
                Some(None) => Some(None),
                Some(Some(v)) => Some(Some(parse_expires_on("expiresOn", &v, now)?)),
            },
        })
    }

    /// Apply to a token's fields; the stream list must stay non-empty.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        self,
        token: &mut String,
        label: &mut String,
        streams: &mut Vec<StreamRule>,
        cluster: &mut String,
        expires_on: &mut Option<DateTime<Utc>>,
        is_active: &mut bool,
        rules: &mut AccessRules,
    ) -> Result<(), Reply> {
        if self.refresh_token {
            *token = generate_token();
        }
        if let Some(v) = self.label {
            *label = v;
        }
        if let Some(v) = self.is_active {
            *is_active = v;
        }
        if let Some(v) = self.streams {
            *streams = v;
        }
        streams.retain(|s| !self.remove.iter().any(|r| r.removes(s)));
        for s in self.add {
            if !streams.contains(&s) {
                streams.push(s);
            }
        }
        if streams.is_empty() {
            return Err(Reply::BadRequest("removeTokenStreams: a token keeps at least one stream".into()));
        }
        if streams.len() > MAX_STREAMS {
            return Err(Reply::BadRequest(format!("addTokenStreams: a token has at most {MAX_STREAMS} streams")));
        }
        if let Some(v) = self.origin_cluster {
            *cluster = v;
        }
        if let Some(v) = self.expires_on {
            *expires_on = v;
        }
        if let Some(v) = self.origins {
            rules.allowed_origins = v;
        }
        if let Some(v) = self.ips {
            rules.allowed_ip_addresses = v;
        }
        if let Some(v) = self.bind {
            rules.bind_ips_on_usage = v;
        }
        if let Some(v) = self.allowed_countries {
            rules.allowed_countries = v;
        }
        if let Some(v) = self.denied_countries {
            rules.denied_countries = v;
        }
        Ok(())
    }
}

/// `tracking` of a Subscribe token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tracking {
    /// The distribution channel (at most 128 characters).
    pub tracking_id: String,
}

/// The settings in force (the platform's `effectiveSettings`).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveSettings {
    origin_cluster: String,
    allowed_countries: Vec<String>,
    denied_countries: Vec<String>,
}

/// The fields both token kinds answer with.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenCommon {
    pub id: i64,
    /// The label again (the platform's deprecated `name`).
    pub name: String,
    pub label: String,
    /// The secret token string (64 hex characters).
    pub token: String,
    /// Creation time, ISO 8601 UTC.
    pub added_on: String,
    /// Expiry, ISO 8601 UTC; `null`: never.
    pub expires_on: Option<String>,
    pub is_active: bool,
    pub streams: Vec<StreamRule>,
    pub allowed_origins: Vec<String>,
    pub allowed_ip_addresses: Vec<String>,
    pub bind_ips_on_usage: u32,
    pub allowed_countries: Vec<String>,
    pub denied_countries: Vec<String>,
    /// A cluster id, or `Auto`.
    pub origin_cluster: String,
    pub effective_settings: EffectiveSettings,
}

impl TokenCommon {
    #[allow(clippy::too_many_arguments)]
    fn new(
        id: i64,
        token: &str,
        label: &str,
        streams: &[StreamRule],
        cluster: &str,
        expires_on: Option<DateTime<Utc>>,
        is_active: bool,
        rules: &AccessRules,
        added_on: DateTime<Utc>,
    ) -> Self {
        TokenCommon {
            id,
            name: label.into(),
            label: label.into(),
            token: token.into(),
            added_on: iso_time(added_on),
            expires_on: expires_on.map(iso_time),
            is_active,
            streams: streams.to_vec(),
            allowed_origins: rules.allowed_origins.clone(),
            allowed_ip_addresses: rules.allowed_ip_addresses.clone(),
            bind_ips_on_usage: rules.bind_ips_on_usage,
            allowed_countries: rules.allowed_countries.clone(),
            denied_countries: rules.denied_countries.clone(),
            origin_cluster: cluster.into(),
            effective_settings: EffectiveSettings {
                origin_cluster: cluster.into(),
                allowed_countries: rules.allowed_countries.clone(),
                denied_countries: rules.denied_countries.clone(),
            },
        }
    }
}

/// A Subscribe token as the API answers it (the platform's fields).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscribeTokenData {
    #[serde(flatten)]
    pub common: TokenCommon,
    /// The distribution channel; `null`: untracked.
    pub tracking: Option<Tracking>,
}

impl From<&SubscribeToken> for SubscribeTokenData {
    fn from(t: &SubscribeToken) -> Self {
        SubscribeTokenData {
            common: TokenCommon::new(
                t.id,
                &t.token,
                &t.label,
                &t.streams,
                &t.origin_cluster,
                t.expires_on,
                t.is_active,
                &t.rules,
                t.added_on,
            ),
            tracking: t.tracking_id.clone().map(|tracking_id| Tracking { tracking_id }),
        }
    }
}

/// A Publish token as the API answers it (the platform's fields; the
/// publishing options are kept and returned, not acted on).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PublishTokenData {
    #[serde(flatten)]
    pub common: TokenCommon,
    /// Viewers of these streams need a Subscribe token.
    pub subscribe_requires_auth: bool,
    pub record: Value,
    pub clip: Value,
    pub multisource: Value,
    pub low_latency_rtmp: Value,
    pub enable_thumbnails: Value,
    pub display_srt_passphrase: Value,
    pub drm: Value,
    #[serde(rename = "enableUTCInsertion")]
    pub enable_utc_insertion: Value,
    pub priority: Value,
    pub encoder_profile_id: Value,
    pub geo_cascade: Value,
    pub restream: Value,
}

impl From<&PublishToken> for PublishTokenData {
    fn from(t: &PublishToken) -> Self {
        let o = |name: &str| publish_option(&t.options, name);
        PublishTokenData {
            common: TokenCommon::new(
                t.id,
                &t.token,
                &t.label,
                &t.streams,
                &t.origin_cluster,
                t.expires_on,
                t.is_active,
                &t.rules,
                t.added_on,
            ),
            subscribe_requires_auth: t.subscribe_requires_auth,
            record: o("record"),
            clip: o("clip"),
            multisource: o("multisource"),
            low_latency_rtmp: o("lowLatencyRtmp"),
            enable_thumbnails: o("enableThumbnails"),
            display_srt_passphrase: o("displaySrtPassphrase"),
            drm: o("drm"),
            enable_utc_insertion: o("enableUTCInsertion"),
            priority: o("priority"),
            encoder_profile_id: o("encoderProfileId"),
            geo_cascade: o("geoCascade"),
            restream: o("restream"),
        }
    }
}

/// The API's JSON shape of a Subscribe token.
pub fn subscribe_json(t: &SubscribeToken) -> Value {
    serde_json::to_value(SubscribeTokenData::from(t)).unwrap_or(Value::Null)
}

/// The API's JSON shape of a Publish token.
pub fn publish_json(t: &PublishToken) -> Value {
    serde_json::to_value(PublishTokenData::from(t)).unwrap_or(Value::Null)
}

fn parse_id(kind: &str, id: &str) -> Result<i64, Reply> {
    id.parse::<i64>().map_err(|_| not_found(kind, id))
}

fn not_found(kind: &str, id: impl std::fmt::Display) -> Reply {
    Reply::NotFound(format!("{kind} token {id} not found"))
}

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

/// What verification answers: who the viewer's usage is attributed to.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyData {
    /// The Subscribe token (the parent of a viewer token); `null`: admitted without a token.
    pub token_id: Option<i64>,
    /// The distribution channel; `null`: untracked.
    pub tracking_id: Option<String>,
    /// The viewer token's `customViewerData`.
    pub custom_viewer_data: Option<String>,
    /// When the admission ends (the viewer token's `exp`, capped at its parent's expiry); `null`: never.
    pub expires_at: Option<String>,
}

/// The platform's list parameters: `page` (from 1) and `itemsOnPage` (1 to
/// [`MAX_PLATFORM_ITEMS_ON_PAGE`]), both required on `/list` as on the platform,
/// `sortBy` (`Name`, the default, or `AddedOn`), `isDescending`. Without
/// `required` (this service's plain `GET /api/..._token`), every token up to
/// [`MAX_ITEMS_ON_PAGE`], in creation order.
fn parse_page(raw: Option<String>, required: bool) -> Result<Page, Reply> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).map_err(|e| Reply::BadRequest(format!("invalid query string: {e}")))?;
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

// ---- Subscribe tokens ----

#[utoipa::path(post, path = "/api/subscribe_token", tag = "Subscribe tokens", summary = "Create a Subscribe token", request_body = CreateSubscribeBody,
    responses((status = 200, body = Success<SubscribeTokenData>), TokenErrors))]
pub(crate) async fn create_subscribe(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
    let mut b: CreateSubscribeBody = parse(&body)?;
    let now = Utc::now();
    let label = b.common.label.take().unwrap_or_default();
    check_label(&label)?;
    check_streams(&b.common.streams)?;
    let tracking_id = b.tracking.map(|t| t.tracking_id);
    if let Some(t) = &tracking_id {
        check_tracking_id(t)?;
    }
    let origin_cluster = origin_cluster("originCluster", b.common.origin_cluster.take())?;
    let expires_on = expiry(&b.common, now)?;
    let rules = rules(&mut b.common)?;
    let t = s
        .store
        .create_subscribe(NewSubscribeToken { label, streams: b.common.streams, tracking_id, origin_cluster, expires_on, rules }, now)?;
    tracing::info!(id = t.id, tracking_id = ?t.tracking_id, origin_cluster = %t.origin_cluster, "SubscribeTokenCreated");
    Ok(success(subscribe_json(&t)))
}

#[utoipa::path(get, path = "/api/subscribe_token/list", tag = "Subscribe tokens", summary = "A page of the Subscribe tokens", params(ListParams),
    responses((status = 200, body = Success<Vec<SubscribeTokenData>>), TokenErrors))]
pub(crate) async fn list_subscribe(State(s): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Result<Response, Reply> {
    let all = s.store.list_subscribe(parse_page(q, true)?)?;
    Ok(success(Value::Array(all.iter().map(subscribe_json).collect())))
}

#[utoipa::path(get, path = "/api/subscribe_token", tag = "Subscribe tokens", summary = "Every Subscribe token (up to 1000), in creation order",
    responses((status = 200, body = Success<Vec<SubscribeTokenData>>), TokenErrors))]
pub(crate) async fn all_subscribe(State(s): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Result<Response, Reply> {
    let all = s.store.list_subscribe(parse_page(q, false)?)?;
    Ok(success(Value::Array(all.iter().map(subscribe_json).collect())))
}

#[utoipa::path(get, path = "/api/subscribe_token/{id}", tag = "Subscribe tokens", summary = "Read a Subscribe token", params(("id" = i64, Path)),
    responses((status = 200, body = Success<SubscribeTokenData>), TokenErrors))]
pub(crate) async fn get_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("Subscribe", &id)?;
    let t = s.store.get_subscribe(id)?.ok_or_else(|| not_found("Subscribe", id))?;
    Ok(success(subscribe_json(&t)))
}

#[utoipa::path(put, path = "/api/subscribe_token/{id}", tag = "Subscribe tokens", summary = "Update a Subscribe token (`refreshToken` rotates it; the tracking id is immutable); also `PUT /api/v2/subscribe_token/{id}`",
    params(("id" = i64, Path)), request_body = UpdateSubscribeBody, responses((status = 200, body = Success<SubscribeTokenData>), TokenErrors))]
pub(crate) async fn update_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Reply> {
    let id = parse_id("Subscribe", &id)?;
    let b: UpdateSubscribeBody = parse(&body)?;
    if b.common.is_empty() && b.tracking.is_none() {
        return Err(Reply::NothingToUpdate);
    }
    let rotate = b.common.refresh_token == Some(true);
    let change = CommonChange::validate(b.common, Utc::now())?;
    let tracking = b.tracking;
    let t = s
        .store
        .update_subscribe(id, |t| {
            if let Some(tracking) = tracking {
                if tracking.map(|t| t.tracking_id) != t.tracking_id {
                    return Err(Reply::BadRequest("tracking cannot be changed after creation".into()));
                }
            }
            change.apply(
                &mut t.token,
                &mut t.label,
                &mut t.streams,
                &mut t.origin_cluster,
                &mut t.expires_on,
                &mut t.is_active,
                &mut t.rules,
            )
        })?
        .ok_or_else(|| not_found("Subscribe", id))?;
    tracing::info!(id, is_active = t.is_active, rotated = rotate, "SubscribeTokenUpdated");
    Ok(success(subscribe_json(&t)))
}

#[utoipa::path(delete, path = "/api/subscribe_token/{id}", tag = "Subscribe tokens", summary = "Delete a Subscribe token", params(("id" = i64, Path)),
    responses((status = 200, body = Success<bool>), TokenErrors))]
pub(crate) async fn delete_subscribe(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("Subscribe", &id)?;
    if !s.store.delete_subscribe(id)? {
        return Err(not_found("Subscribe", id));
    }
    tracing::info!(id, "SubscribeTokenDeleted");
    Ok(success(json!(true)))
}

// ---- Publish tokens ----

/// The publishing options named in a create (`update == false`) or update
/// body, as given.
fn publish_options(body: &[u8], update: bool) -> Result<Map<String, Value>, Reply> {
    let Value::Object(all) = parse::<Value>(body)? else { return Err(Reply::BadRequest("invalid body: not a JSON object".into())) };
    let mut out = Map::new();
    for (name, update_name, kind) in PUBLISH_OPTIONS {
        let key = if update { update_name.unwrap_or(name) } else { name };
        if let Some(v) = all.get(key).filter(|v| !v.is_null()) {
            // the Python client sends one restream target as an object, not a list
            let v = match (*name, v) {
                ("restream", Value::Object(_)) => Value::Array(vec![v.clone()]),
                _ => v.clone(),
            };
            if !kind.accepts(&v) {
                return Err(Reply::BadRequest(format!("{key}: wrong type")));
            }
            out.insert((*name).into(), v);
        }
    }
    Ok(out)
}

#[utoipa::path(post, path = "/api/publish_token", tag = "Publish tokens", summary = "Create a Publish token", request_body = CreatePublishBody,
    responses((status = 200, body = Success<PublishTokenData>), TokenErrors))]
pub(crate) async fn create_publish(State(s): State<Arc<AppState>>, body: Bytes) -> Result<Response, Reply> {
    let mut b: CreatePublishBody = parse(&body)?;
    let options = publish_options(&body, false)?;
    let now = Utc::now();
    let label = b.common.label.take().unwrap_or_default();
    check_label(&label)?;
    check_streams(&b.common.streams)?;
    let origin_cluster = origin_cluster("originCluster", b.common.origin_cluster.take())?;
    let expires_on = expiry(&b.common, now)?;
    let rules = rules(&mut b.common)?;
    let t = s.store.create_publish(
        NewPublishToken {
            label,
            streams: b.common.streams,
            origin_cluster,
            expires_on,
            subscribe_requires_auth: b.subscribe_requires_auth.unwrap_or(false),
            rules,
            options,
        },
        now,
    )?;
    tracing::info!(id = t.id, subscribe_requires_auth = t.subscribe_requires_auth, "PublishTokenCreated");
    Ok(success(publish_json(&t)))
}

#[utoipa::path(get, path = "/api/publish_token/list", tag = "Publish tokens", summary = "A page of the Publish tokens", params(ListParams),
    responses((status = 200, body = Success<Vec<PublishTokenData>>), TokenErrors))]
pub(crate) async fn list_publish(State(s): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Result<Response, Reply> {
    let all = s.store.list_publish(parse_page(q, true)?)?;
    Ok(success(Value::Array(all.iter().map(publish_json).collect())))
}

#[utoipa::path(get, path = "/api/publish_token", tag = "Publish tokens", summary = "Every Publish token (up to 1000), in creation order",
    responses((status = 200, body = Success<Vec<PublishTokenData>>), TokenErrors))]
pub(crate) async fn all_publish(State(s): State<Arc<AppState>>, RawQuery(q): RawQuery) -> Result<Response, Reply> {
    let all = s.store.list_publish(parse_page(q, false)?)?;
    Ok(success(Value::Array(all.iter().map(publish_json).collect())))
}

#[utoipa::path(get, path = "/api/publish_token/{id}", tag = "Publish tokens", summary = "Read a Publish token", params(("id" = i64, Path)),
    responses((status = 200, body = Success<PublishTokenData>), TokenErrors))]
pub(crate) async fn get_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("Publish", &id)?;
    let t = s.store.get_publish(id)?.ok_or_else(|| not_found("Publish", id))?;
    Ok(success(publish_json(&t)))
}

#[utoipa::path(put, path = "/api/publish_token/{id}", tag = "Publish tokens", summary = "Update a Publish token (`refreshToken` rotates it); also `PUT /api/v2/publish_token/{id}`",
    params(("id" = i64, Path)), request_body = UpdatePublishBody, responses((status = 200, body = Success<PublishTokenData>), TokenErrors))]
pub(crate) async fn update_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>, body: Bytes) -> Result<Response, Reply> {
    let id = parse_id("Publish", &id)?;
    let b: UpdatePublishBody = parse(&body)?;
    let options = publish_options(&body, true)?;
    if b.common.is_empty() && b.subscribe_requires_auth.is_none() && options.is_empty() {
        return Err(Reply::NothingToUpdate);
    }
    let change = CommonChange::validate(b.common, Utc::now())?;
    let requires_auth = b.subscribe_requires_auth;
    let t = s
        .store
        .update_publish(id, |t| {
            if let Some(v) = requires_auth {
                t.subscribe_requires_auth = v;
            }
            t.options.extend(options);
            change.apply(
                &mut t.token,
                &mut t.label,
                &mut t.streams,
                &mut t.origin_cluster,
                &mut t.expires_on,
                &mut t.is_active,
                &mut t.rules,
            )
        })?
        .ok_or_else(|| not_found("Publish", id))?;
    tracing::info!(id, is_active = t.is_active, subscribe_requires_auth = t.subscribe_requires_auth, "PublishTokenUpdated");
    Ok(success(publish_json(&t)))
}

#[utoipa::path(delete, path = "/api/publish_token/{id}", tag = "Publish tokens", summary = "Delete a Publish token", params(("id" = i64, Path)),
    responses((status = 200, body = Success<bool>), TokenErrors))]
pub(crate) async fn delete_publish(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Result<Response, Reply> {
    let id = parse_id("Publish", &id)?;
    if !s.store.delete_publish(id)? {
        return Err(not_found("Publish", id));
    }
    tracing::info!(id, "PublishTokenDeleted");
    Ok(success(json!(true)))
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
    match crate::verify::admit(s.store.as_ref(), token, &b.stream_name, &b.cluster, &viewer, Utc::now(), &s.policy) {
        Ok(a) => {
            s.metrics.verify.with_label_values(&[if a.is_some() { "ok" } else { "ok_untracked" }]).inc();
            let a = a.unwrap_or_default();
            tracing::debug!(token_id = ?a.token_id, tracking_id = ?a.tracking_id, stream = %b.stream_name, "TokenVerified");
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
            tracing::info!(code = e.code(), reason = %e, stream = %b.stream_name, cluster = %b.cluster, "TokenRefused");
            if let VerifyError::Store(_) = e {
                return Ok(crate::app::error_body(verify_status(&e), &e.to_string()));
            }
            Ok(fail_body(verify_status(&e), json!({"code": e.code(), "message": e.to_string()})))
        }
    }
}
