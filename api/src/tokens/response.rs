//! What the token routes answer, in the platform's shapes.

use super::model::{PublishToken, StreamRule, SubscribeToken, TokenCommon};
use super::validate::PUBLISH_OPTIONS;
use crate::app::iso_time;
use crate::events;
use runtime::events::InternalEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// A publishing option's value: as stored, or the platform's default.
pub(crate) fn publish_option(options: &Map<String, Value>, name: &str) -> Value {
    options
        .get(name)
        .cloned()
        .unwrap_or_else(|| PUBLISH_OPTIONS.iter().find(|(n, ..)| *n == name).map_or(Value::Null, |(_, _, kind)| kind.default_value()))
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
pub struct TokenCommonData {
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

impl From<&TokenCommon> for TokenCommonData {
    fn from(t: &TokenCommon) -> Self {
        let rules = &t.rules;
        TokenCommonData {
            id: t.id,
            name: t.label.clone(),
            label: t.label.clone(),
            token: t.token.clone(),
            added_on: iso_time(t.added_on),
            expires_on: t.expires_on.map(iso_time),
            is_active: t.is_active,
            streams: t.streams.clone(),
            allowed_origins: rules.allowed_origins.clone(),
            allowed_ip_addresses: rules.allowed_ip_addresses.clone(),
            bind_ips_on_usage: rules.bind_ips_on_usage,
            allowed_countries: rules.allowed_countries.clone(),
            denied_countries: rules.denied_countries.clone(),
            origin_cluster: t.origin_cluster.clone(),
            effective_settings: EffectiveSettings {
                origin_cluster: t.origin_cluster.clone(),
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
    pub common: TokenCommonData,
    /// The distribution channel; `null`: untracked.
    pub tracking: Option<Tracking>,
}

impl From<&SubscribeToken> for SubscribeTokenData {
    fn from(t: &SubscribeToken) -> Self {
        SubscribeTokenData {
            common: TokenCommonData::from(&t.common),
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
    pub common: TokenCommonData,
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
            common: TokenCommonData::from(&t.common),
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

/// A token kind as the routes name and answer it.
pub trait Answer {
    /// `Subscribe` or `Publish`, in messages.
    const KIND: &'static str;
    /// Emit the event of the deletion of token `id` (`SubscribeTokenDeleted`, `PublishTokenDeleted`).
    fn emit_deleted(id: i64);
    /// The platform's JSON shape.
    fn to_json(&self) -> Value;
}

impl Answer for SubscribeToken {
    const KIND: &'static str = "Subscribe";
    fn emit_deleted(id: i64) {
        events::SubscribeTokenDeleted { id }.emit();
    }
    fn to_json(&self) -> Value {
        subscribe_json(self)
    }
}

impl Answer for PublishToken {
    const KIND: &'static str = "Publish";
    fn emit_deleted(id: i64) {
        events::PublishTokenDeleted { id }.emit();
    }
    fn to_json(&self) -> Value {
        publish_json(self)
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
