//! Self-signed viewer tokens: HS256 JWTs keyed with the parent (master)
//! Subscribe token string.
//!
//! Claims: `{"streaming": {tokenId, tokenType: "Subscribe", streamName,
//! originCluster?, allowedOrigins?, allowedIpAddresses?, tracking?:
//! {trackingId}, customViewerData?}, iat, exp}`.

use crate::{MAX_CUSTOM_VIEWER_DATA_CHARS, MAX_TRACKING_ID_CHARS};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The only `tokenType` a viewer token may carry.
pub const SUBSCRIBE_TOKEN_TYPE: &str = "Subscribe";

/// `tracking` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrackingClaim {
    /// The distribution channel.
    pub tracking_id: String,
}

/// The `streaming` claim of a viewer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamingClaims {
    /// Id of the parent Subscribe token (whose token string is the key).
    pub token_id: i64,
    /// Always `Subscribe`.
    pub token_type: String,
    /// The stream the viewer may watch (empty: any the parent grants).
    #[serde(default)]
    pub stream_name: String,
    /// Cluster, if narrowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_cluster: Option<String>,
    /// Allowed web origins, if narrowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_origins: Option<Vec<String>>,
    /// Allowed viewer IPs, if narrowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ip_addresses: Option<Vec<String>>,
    /// Tracking; absent inherits the parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<TrackingClaim>,
    /// Opaque per-viewer data reported with the viewer's usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_viewer_data: Option<String>,
}

/// All claims of a viewer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewerClaims {
    /// The grant.
    pub streaming: StreamingClaims,
    /// Issued at, epoch seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Expiry, epoch seconds (required by verification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Not before, epoch seconds (honoured when present).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
}

/// What a viewer token says, besides its parent and expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignRequest {
    /// Id of the parent Subscribe token.
    pub token_id: i64,
    /// Stream granted.
    pub stream_name: String,
    /// Tracking id (must equal the parent's if the parent has one).
    pub tracking_id: Option<String>,
    /// Opaque viewer data, at most 1024 characters.
    pub custom_viewer_data: Option<String>,
    /// Origin cluster (must equal the parent's unless the parent is `auto`).
    pub origin_cluster: Option<String>,
    /// Allowed origins (none: not narrowed).
    pub allowed_origins: Vec<String>,
    /// Allowed IP addresses (none: not narrowed).
    pub allowed_ip_addresses: Vec<String>,
    /// Lifetime from `now`, seconds (> 0).
    pub expires_in_secs: u64,
}

/// Errors of [`sign`].
#[derive(Debug, Error)]
pub enum SignError {
    /// A field exceeds its limit.
    #[error("{field} is longer than {max} characters")]
    FieldTooLong {
        /// The claim's name: `trackingId` or `customViewerData`.
        field: &'static str,
        /// Its limit, characters.
        max: usize,
    },
    /// A field has a value that can never verify.
    #[error("{0}")]
    Invalid(String),
    /// The JWT library failed.
    #[error("jwt: {0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
}

/// Sign a viewer token with the parent token string as HMAC key, HS256.
pub fn sign(parent_token: &str, req: &SignRequest, now: DateTime<Utc>) -> Result<String, SignError> {
    sign_with(parent_token, req, now, Algorithm::HS256)
}

/// [`sign`] with another HMAC algorithm (HS384, HS512).
pub fn sign_with(parent_token: &str, req: &SignRequest, now: DateTime<Utc>, alg: Algorithm) -> Result<String, SignError> {
    if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(SignError::Invalid(format!("algorithm {alg:?} not allowed: HS256, HS384 or HS512")));
    }
    if parent_token.is_empty() {
        return Err(SignError::Invalid("parent token is empty".into()));
    }
    if req.expires_in_secs == 0 || req.expires_in_secs > i64::MAX as u64 / 2 {
        return Err(SignError::Invalid("expires-in must be a positive number of seconds".into()));
    }
    if let Some(t) = &req.tracking_id {
        if t.is_empty() {
            return Err(SignError::Invalid("trackingId must not be empty".into()));
        }
        if t.chars().count() > MAX_TRACKING_ID_CHARS {
            return Err(SignError::FieldTooLong { field: "trackingId", max: MAX_TRACKING_ID_CHARS });
        }
    }
    if req.custom_viewer_data.as_ref().is_some_and(|d| d.chars().count() > MAX_CUSTOM_VIEWER_DATA_CHARS) {
        return Err(SignError::FieldTooLong { field: "customViewerData", max: MAX_CUSTOM_VIEWER_DATA_CHARS });
    }
    let iat = now.timestamp();
    let claims = ViewerClaims {
        streaming: StreamingClaims {
            token_id: req.token_id,
            token_type: SUBSCRIBE_TOKEN_TYPE.into(),
            stream_name: req.stream_name.clone(),
            origin_cluster: req.origin_cluster.clone(),
            allowed_origins: (!req.allowed_origins.is_empty()).then(|| req.allowed_origins.clone()),
            allowed_ip_addresses: (!req.allowed_ip_addresses.is_empty()).then(|| req.allowed_ip_addresses.clone()),
            tracking: req.tracking_id.clone().map(|tracking_id| TrackingClaim { tracking_id }),
            custom_viewer_data: req.custom_viewer_data.clone(),
        },
        iat: Some(iat),
        exp: Some(iat.saturating_add(req.expires_in_secs as i64)),
        nbf: None,
    };
    Ok(jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(parent_token.as_bytes()))?)
}
