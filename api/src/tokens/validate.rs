//! Request bodies of the token routes and their validation: what a body
//! may hold (unknown fields are ignored, as the platform does; a known
//! field with a wrong type or value is a `400` naming it), and what it
//! becomes ([`NewTokenCommon`], [`CommonChange`]).

use super::model::{generate_token, AccessRules, NewTokenCommon, StreamRule, TokenCommon};
use super::response::Tracking;
use super::{MAX_BIND_IPS, MAX_EXPIRES_SECS, MAX_LABEL_CHARS, MAX_LIST_ITEMS, MAX_STREAMS, MAX_STREAM_CHARS};
use crate::app::Reply;
use crate::{is_auto_cluster, AUTO_CLUSTER, MAX_TRACKING_ID_CHARS};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

/// The JSON type of a publishing option, and its value when never set.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OptionKind {
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
    pub(crate) fn default_value(self) -> Value {
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
pub(crate) const PUBLISH_OPTIONS: &[(&str, Option<&str>, OptionKind)] = &[
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

// ---- request bodies and validation ----

pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| Reply::BadRequest(format!("invalid body: {e}")))
}

/// `Some(None)` for an explicit `null`, `None` when absent.
fn double_option<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The fields a create body shares between both token kinds.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateCommon {
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
pub(crate) struct CreateSubscribeBody {
    #[serde(flatten)]
    pub(crate) common: CreateCommon,
    #[serde(default)]
    pub(crate) tracking: Option<Tracking>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreatePublishBody {
    #[serde(flatten)]
    pub(crate) common: CreateCommon,
    #[serde(default)]
    pub(crate) subscribe_requires_auth: Option<bool>,
}

impl UpdateCommon {
    pub(crate) fn is_empty(&self) -> bool {
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
pub(crate) struct UpdateCommon {
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    pub(crate) refresh_token: Option<bool>,
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
pub(crate) struct UpdateSubscribeBody {
    #[serde(flatten)]
    pub(crate) common: UpdateCommon,
    /// Accepted only when equal to the current tracking (it is immutable).
    #[serde(default, deserialize_with = "double_option")]
    pub(crate) tracking: Option<Option<Tracking>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdatePublishBody {
    #[serde(flatten)]
    pub(crate) common: UpdateCommon,
    #[serde(default)]
    pub(crate) subscribe_requires_auth: Option<bool>,
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

pub(crate) fn check_tracking_id(t: &str) -> Result<(), Reply> {
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
        if super::verify::IpRange::parse(ip).is_none() {
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

impl CreateCommon {
    /// Check the fields both kinds share and make them what the store
    /// creates a token from.
    pub(crate) fn validate(mut self, now: DateTime<Utc>) -> Result<NewTokenCommon, Reply> {
        let label = self.label.take().unwrap_or_default();
        check_label(&label)?;
        check_streams(&self.streams)?;
        let origin_cluster = origin_cluster("originCluster", self.origin_cluster.take())?;
        let expires_on = expiry(&self, now)?;
        let rules = rules(&mut self)?;
        Ok(NewTokenCommon { label, streams: self.streams, origin_cluster, expires_on, rules })
    }
}

/// What an update body does to the fields both token kinds share.
pub(crate) struct CommonChange {
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
    pub(crate) fn validate(b: UpdateCommon, now: DateTime<Utc>) -> Result<CommonChange, Reply> {
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

    /// Apply to a token's shared fields; the stream list must stay non-empty.
    pub(crate) fn apply(self, t: &mut TokenCommon) -> Result<(), Reply> {
        if self.refresh_token {
            t.token = generate_token();
        }
        if let Some(v) = self.label {
            t.label = v;
        }
        if let Some(v) = self.is_active {
            t.is_active = v;
        }
        if let Some(v) = self.streams {
            t.streams = v;
        }
        t.streams.retain(|s| !self.remove.iter().any(|r| r.removes(s)));
        for s in self.add {
            if !t.streams.contains(&s) {
                t.streams.push(s);
            }
        }
        if t.streams.is_empty() {
            return Err(Reply::BadRequest("removeTokenStreams: a token keeps at least one stream".into()));
        }
        if t.streams.len() > MAX_STREAMS {
            return Err(Reply::BadRequest(format!("addTokenStreams: a token has at most {MAX_STREAMS} streams")));
        }
        if let Some(v) = self.origin_cluster {
            t.origin_cluster = v;
        }
        if let Some(v) = self.expires_on {
            t.expires_on = v;
        }
        if let Some(v) = self.origins {
            t.rules.allowed_origins = v;
        }
        if let Some(v) = self.ips {
            t.rules.allowed_ip_addresses = v;
        }
        if let Some(v) = self.bind {
            t.rules.bind_ips_on_usage = v;
        }
        if let Some(v) = self.allowed_countries {
            t.rules.allowed_countries = v;
        }
        if let Some(v) = self.denied_countries {
            t.rules.denied_countries = v;
        }
        Ok(())
    }
}

/// The publishing options named in a create (`update == false`) or update
/// body, as given.
pub(crate) fn publish_options(body: &[u8], update: bool) -> Result<Map<String, Value>, Reply> {
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
