//! Admission of a viewer: is this token valid for this stream on this
//! cluster now, and to which distribution channel are its bytes attributed?
//!
//! A token is either a **master token** (the 64-hex Subscribe token string
//! itself) or a **self-signed JWT** keyed with its parent's token string
//! (see [`crate::tokens::sign`]). Rules for a JWT, in order:
//!
//! 1. three base64url parts; the header's `alg` is HS256, HS384 or HS512
//!    (checked before anything else; `none` and every other alg rejected);
//! 2. the parent named by `streaming.tokenId` exists;
//! 3. the signature verifies with the parent's token string;
//! 4. `exp` is present and in the future;
//! 5. the parent is active and unexpired; the viewer's admission ends at
//!    the earlier of `exp` and the parent's expiry (`expiresAt` of the
//!    answer: the platform caps a viewer token at its parent's expiry);
//! 6. `tokenType` is `Subscribe`; `trackingId` ≤ 128, `customViewerData` ≤
//!    1024 characters;
//! 7. the stream is granted by the parent (exact, or anchored regex) and,
//!    if the JWT names a stream, is that stream;
//! 8. the JWT's `originCluster` equals the parent's unless the parent is
//!    `auto`; the cluster asked for equals the effective origin cluster
//!    unless that is `auto`;
//! 9. tracking: a tracked parent's `trackingId` is inherited, and a JWT
//!    carrying a different one is rejected (a partner cannot bill another
//!    partner's channel). A JWT of an *untracked* parent carrying a
//!    `trackingId` is rejected too (`tracking_not_allowed`): whoever holds an
//!    untracked master token could otherwise attribute usage to any
//!    partner, who would be billed for it. The platform's looser rule (the
//!    JWT sets its own) is an opt-in: [`Policy::untracked_parent_sets_tracking`];
//! 10. lifetime: `exp` at most [`Policy::max_viewer_token_secs`] (7 days) after
//!     `iat` and after now; `nbf`, when present, has passed; `iat` is not
//!     in the future beyond [`Policy::clock_skew_secs`].
//!
//! 11. the viewer ([`Viewer`]: origin, IP address, country, as the media
//!     server saw them) passes the parent's access rules and, for a JWT,
//!     its own `allowedOrigins` / `allowedIpAddresses` (added to the
//!     parent's, never replacing them): see [`check_viewer`].
//!
//! A master token is checked for 11 and its own state, stream and cluster.
//! A viewer **without a token** ([`admit`] with `None`) is refused
//! (`token_required`) when a Publish token in force for the stream has
//! `subscribeRequiresAuth`, and admitted untracked otherwise.

use crate::events;
use crate::tokens::model::{AccessRules, SubscribeToken};
use crate::tokens::sign::{StreamingClaims, ViewerClaims, SUBSCRIBE_TOKEN_TYPE};
use crate::tokens::store::TokenLookup;
use crate::{is_auto_cluster, MAX_CUSTOM_VIEWER_DATA_CHARS, MAX_TRACKING_ID_CHARS};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use runtime::events::InternalEvent;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use thiserror::Error;

/// Who a verified viewer's usage is attributed to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attribution {
    /// Id of the Subscribe token (the parent, for a JWT); `None` for a
    /// viewer admitted without a token.
    pub token_id: Option<i64>,
    /// Distribution channel, if any.
    pub tracking_id: Option<String>,
    /// Opaque viewer data from a JWT.
    pub custom_viewer_data: Option<String>,
    /// When the admission ends: the JWT's `exp` capped at the parent's
    /// expiry, or the master token's expiry (`None`: never).
    pub expires_at: Option<DateTime<Utc>>,
}

/// What the media server saw of the viewer (`None`: not known).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Viewer<'a> {
    /// The page's web origin (`Origin` header), e.g. `https://www.example.com`.
    pub origin: Option<&'a str>,
    /// The viewer's IP address.
    pub ip: Option<IpAddr>,
    /// ISO 3166-1 alpha-2 country of the viewer.
    pub country: Option<&'a str>,
}

/// An IP address or CIDR range of `allowedIpAddresses`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// `10.0.0.1`, `10.0.0.0/8`, `2001:db8::/32`; `None` when invalid.
    pub fn parse(s: &str) -> Option<IpRange> {
        let (ip, prefix) = match s.split_once('/') {
            None => {
                let ip: IpAddr = s.parse().ok()?;
                (ip, if ip.is_ipv4() { 32 } else { 128 })
            }
            Some((ip, p)) => {
                let ip: IpAddr = ip.parse().ok()?;
                let p: u8 = p.parse().ok()?;
                if p > if ip.is_ipv4() { 32 } else { 128 } {
                    return None;
                }
                (ip, p)
            }
        };
        Some(IpRange { net: ip, prefix })
    }

    /// Whether `ip` is in the range (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Whether `origin` (`scheme://host[:port]`) matches an `allowedOrigins`
/// entry: `*` (any), a whole origin (`https://a.example.com`, scheme and
/// port must agree), a host name (`a.example.com`, any scheme and port) or
/// a wildcard (`*.example.com`: any subdomain). Case-insensitive.
pub fn origin_matches(rule: &str, origin: &str) -> bool {
    let rule = rule.trim().to_ascii_lowercase();
    let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    if rule == "*" {
        return true;
    }
    let host_port = origin.split_once("://").map_or(origin.as_str(), |(_, h)| h);
    let host = host_port.rsplit_once(':').filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit())).map_or(host_port, |(h, _)| h);
    if rule.contains("://") {
        return rule.trim_end_matches('/') == origin;
    }
    match rule.strip_prefix("*.") {
        Some(domain) => host.len() > domain.len() + 1 && host.ends_with(domain) && host[..host.len() - domain.len()].ends_with('.'),
        None => host == rule,
    }
}

/// Check the viewer against a token's access rules and a JWT's own
/// `allowedOrigins` / `allowedIpAddresses` (each list that is not empty
/// must admit the viewer). `bind_key` names the token usage the viewer's IP
/// is bound to under `bindIpsOnUsage`.
pub fn check_viewer(
    lookup: &impl TokenLookup,
    rules: &AccessRules,
    jwt: Option<&StreamingClaims>,
    viewer: &Viewer<'_>,
    bind_key: &str,
) -> Result<(), VerifyError> {
    let jwt_origins = jwt.and_then(|j| j.allowed_origins.as_deref()).unwrap_or(&[]);
    for list in [rules.allowed_origins.as_slice(), jwt_origins] {
        if !list.is_empty() && !viewer.origin.is_some_and(|o| list.iter().any(|r| origin_matches(r, o))) {
            return Err(VerifyError::OriginNotAllowed(viewer.origin.unwrap_or("").chars().take(256).collect()));
        }
    }
    let jwt_ips = jwt.and_then(|j| j.allowed_ip_addresses.as_deref()).unwrap_or(&[]);
    for list in [rules.allowed_ip_addresses.as_slice(), jwt_ips] {
        let admitted = viewer.ip.is_some_and(|ip| list.iter().filter_map(|r| IpRange::parse(r)).any(|r| r.contains(ip)));
        if !list.is_empty() && !admitted {
            return Err(VerifyError::IpNotAllowed(viewer.ip.map(|i| i.to_string()).unwrap_or_default()));
        }
    }
    let country = viewer.country.map(str::to_ascii_uppercase);
    if !rules.allowed_countries.is_empty() && !country.as_ref().is_some_and(|c| rules.allowed_countries.contains(c)) {
        return Err(VerifyError::CountryNotAllowed(country.unwrap_or_default().chars().take(8).collect()));
    }
    if let Some(c) = country.filter(|c| rules.denied_countries.contains(c)) {
        return Err(VerifyError::CountryDenied(c));
    }
    if rules.bind_ips_on_usage > 0 {
        let ip = viewer.ip.ok_or_else(|| VerifyError::IpNotBound(String::new()))?;
        let ip = ip.to_canonical().to_string();
        if !lookup.bind_ip(bind_key, &ip, rules.bind_ips_on_usage).map_err(store_err)? {
            return Err(VerifyError::IpNotBound(ip));
        }
    }
    Ok(())
}

/// Verification rules that are the operator's to choose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Let a viewer token of an untracked parent carry its own `trackingId`
    /// (the platform's rule). Off by default: attribution then always comes
    /// from a master token the content owner created.
    pub untracked_parent_sets_tracking: bool,
    /// Longest accepted viewer-token lifetime, seconds (default 7 days).
    pub max_viewer_token_secs: i64,
    /// Clock skew tolerated for `iat` and `nbf`, seconds (default 60).
    pub clock_skew_secs: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy { untracked_parent_sets_tracking: false, max_viewer_token_secs: 7 * 86_400, clock_skew_secs: 60 }
    }
}

/// Why a token was refused. [`VerifyError::code`] is a stable machine string.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// Not a 64-hex master token nor a well-formed JWT with the expected claims.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The JWT header's `alg` is not HS256, HS384 or HS512.
    #[error("algorithm {0:?} not allowed (HS256, HS384, HS512 only)")]
    AlgNotAllowed(String),
    /// The JWT signature does not verify with the parent token.
    #[error("signature does not verify with the parent token")]
    BadSignature,
    /// The JWT has no `exp` claim.
    #[error("token has no exp claim")]
    ExpMissing,
    /// The JWT's `exp` has passed.
    #[error("token expired at {exp} (epoch seconds)")]
    Expired {
        /// The JWT's `exp`, epoch seconds: now or earlier.
        exp: i64,
    },
    /// No Subscribe token with the JWT's `tokenId` (never created, or deleted).
    #[error("parent token {0} not found")]
    ParentNotFound(i64),
    /// The parent Subscribe token is disabled.
    #[error("parent token {0} is inactive")]
    ParentInactive(i64),
    /// The parent Subscribe token has expired.
    #[error("parent token {0} has expired")]
    ParentExpired(i64),
    /// No Subscribe token with this token string.
    #[error("unknown token")]
    UnknownToken,
    /// The master token is disabled.
    #[error("token {0} is inactive")]
    TokenInactive(i64),
    /// The master token has expired.
    #[error("token {0} has expired")]
    TokenExpired(i64),
    /// The stream is not granted.
    #[error("stream {0:?} is not allowed by this token")]
    StreamMismatch(String),
    /// The cluster does not match the token's origin cluster.
    #[error("cluster {cluster:?} does not match the token's origin cluster {expected:?}")]
    ClusterMismatch {
        /// The cluster the media server asked for, or a JWT's `originCluster`
        /// that differs from its parent's.
        cluster: String,
        /// The origin cluster it had to equal (any case): the token's, a JWT's
        /// own narrowing of it, or the parent's.
        expected: String,
    },
    /// The JWT names a trackingId other than its parent's.
    #[error("trackingId {given:?} differs from the parent token's {parent:?}")]
    TrackingOverride {
        /// The JWT's `trackingId`.
        given: String,
        /// The parent token's tracking id, the only one its viewer tokens may carry.
        parent: String,
    },
    /// The JWT names a trackingId and its parent is untracked (see [`Policy`]).
    #[error("trackingId {given:?} set by a viewer token of an untracked parent token")]
    TrackingNotAllowed {
        /// The JWT's `trackingId`.
        given: String,
    },
    /// The JWT is valid for longer than [`Policy::max_viewer_token_secs`].
    #[error("token lifetime is longer than {max_secs} s")]
    LifetimeTooLong {
        /// The longest accepted lifetime, seconds ([`Policy::max_viewer_token_secs`]).
        max_secs: i64,
    },
    /// The JWT's `nbf` has not come yet.
    #[error("token not valid before {nbf} (epoch seconds)")]
    NotYetValid {
        /// The JWT's `nbf`, epoch seconds: later than now plus [`Policy::clock_skew_secs`].
        nbf: i64,
    },
    /// The JWT's `iat` is in the future.
    #[error("token issued in the future ({iat}, epoch seconds)")]
    IssuedInFuture {
        /// The JWT's `iat`, epoch seconds: later than now plus [`Policy::clock_skew_secs`].
        iat: i64,
    },
    /// The viewer's origin is not in an `allowedOrigins` list.
    #[error("origin {0:?} is not allowed by this token")]
    OriginNotAllowed(String),
    /// The viewer's IP address is not in an `allowedIpAddresses` list.
    #[error("IP address {0:?} is not allowed by this token")]
    IpNotAllowed(String),
    /// The viewer's country is not in `allowedCountries`.
    #[error("country {0:?} is not allowed by this token")]
    CountryNotAllowed(String),
    /// The viewer's country is in `deniedCountries`.
    #[error("country {0:?} is denied by this token")]
    CountryDenied(String),
    /// The token is bound (`bindIpsOnUsage`) to other IP addresses.
    #[error("the token is bound to other IP addresses than {0:?} (bindIpsOnUsage)")]
    IpNotBound(String),
    /// The stream needs a Subscribe token (`subscribeRequiresAuth`) and none was given.
    #[error("stream {0:?} requires a subscribe token")]
    TokenRequired(String),
    /// A claim exceeds its limit.
    #[error("{field} is longer than {max} characters")]
    FieldTooLong {
        /// The claim's name: `trackingId` or `customViewerData`.
        field: &'static str,
        /// Its limit, characters.
        max: usize,
    },
    /// The token store failed (not the token's fault).
    #[error("token store unavailable: {0}")]
    Store(String),
}

impl VerifyError {
    /// Stable machine-readable reason.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Malformed(_) => "malformed",
            VerifyError::AlgNotAllowed(_) => "alg_not_allowed",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::ExpMissing => "exp_missing",
            VerifyError::Expired { .. } => "expired",
            VerifyError::ParentNotFound(_) => "parent_not_found",
            VerifyError::ParentInactive(_) => "parent_inactive",
            VerifyError::ParentExpired(_) => "parent_expired",
            VerifyError::UnknownToken => "unknown_token",
            VerifyError::TokenInactive(_) => "token_inactive",
            VerifyError::TokenExpired(_) => "token_expired",
            VerifyError::StreamMismatch(_) => "stream_mismatch",
            VerifyError::ClusterMismatch { .. } => "cluster_mismatch",
            VerifyError::TrackingOverride { .. } => "tracking_override",
            VerifyError::TrackingNotAllowed { .. } => "tracking_not_allowed",
            VerifyError::LifetimeTooLong { .. } => "lifetime_too_long",
            VerifyError::NotYetValid { .. } => "not_yet_valid",
            VerifyError::IssuedInFuture { .. } => "issued_in_future",
            VerifyError::OriginNotAllowed(_) => "origin_not_allowed",
            VerifyError::IpNotAllowed(_) => "ip_not_allowed",
            VerifyError::CountryNotAllowed(_) => "country_not_allowed",
            VerifyError::CountryDenied(_) => "country_denied",
            VerifyError::IpNotBound(_) => "ip_not_bound",
            VerifyError::TokenRequired(_) => "token_required",
            VerifyError::FieldTooLong { .. } => "field_too_long",
            VerifyError::Store(_) => "store_error",
        }
    }
}

/// base64url, padding optional.
const B64: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::URL_SAFE, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));

/// Whether `token` has the shape of a master token (64 hex characters).
pub fn is_master_token(token: &str) -> bool {
    token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Verify `token` for `stream` on `cluster` at `now` under the default
/// [`Policy`], for a viewer the media server knows nothing of; see the
/// module docs.
pub fn verify(lookup: &impl TokenLookup, token: &str, stream: &str, cluster: &str, now: DateTime<Utc>) -> Result<Attribution, VerifyError> {
    verify_with(lookup, token, stream, cluster, now, &Policy::default())
}

/// [`verify`] under `policy`.
pub fn verify_with(
    lookup: &impl TokenLookup,
    token: &str,
    stream: &str,
    cluster: &str,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<Attribution, VerifyError> {
    verify_viewer(lookup, token, stream, cluster, &Viewer::default(), now, policy)
}

/// Verify `token` for `viewer` watching `stream` on `cluster`.
pub fn verify_viewer(
    lookup: &impl TokenLookup,
    token: &str,
    stream: &str,
    cluster: &str,
    viewer: &Viewer<'_>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<Attribution, VerifyError> {
    let token = token.trim();
    if is_master_token(token) {
        return verify_master(lookup, token, stream, cluster, viewer, now);
    }
    if token.split('.').count() != 3 {
        return Err(VerifyError::Malformed("neither a 64-hex token nor a JWT (header.payload.signature)".into()));
    }
    verify_jwt(lookup, token, stream, cluster, viewer, now, policy)
}

/// Admit a viewer with `token`, or without one (`None`): `Ok(None)` is an
/// untracked admission (no Publish token in force for `stream` has
/// `subscribeRequiresAuth`).
pub fn admit(
    lookup: &impl TokenLookup,
    token: Option<&str>,
    stream: &str,
    cluster: &str,
    viewer: &Viewer<'_>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<Option<Attribution>, VerifyError> {
    match token {
        Some(t) => verify_viewer(lookup, t, stream, cluster, viewer, now, policy).map(Some),
        // a viewer without a token is untracked (`Attribution::default()`)
        None => {
            let publish = lookup.publish_tokens().map_err(store_err)?;
            if publish.iter().any(|p| p.subscribe_requires_auth && p.common.in_force(now) && p.common.grants_stream(stream)) {
                return Err(VerifyError::TokenRequired(stream.to_string()));
            }
            Ok(None)
        }
    }
}

fn store_err(e: crate::store::StoreError) -> VerifyError {
    events::TokenStoreFailed { error: &e }.emit();
    VerifyError::Store(e.to_string())
}

fn check_stream_and_cluster(parent: &SubscribeToken, stream: &str, cluster: &str, effective_cluster: &str) -> Result<(), VerifyError> {
    if !parent.common.grants_stream(stream) {
        return Err(VerifyError::StreamMismatch(stream.to_string()));
    }
    if !is_auto_cluster(effective_cluster) && !effective_cluster.eq_ignore_ascii_case(cluster) {
        return Err(VerifyError::ClusterMismatch { cluster: cluster.to_string(), expected: effective_cluster.to_string() });
    }
    Ok(())
}

fn verify_master(
    lookup: &impl TokenLookup,
    token: &str,
    stream: &str,
    cluster: &str,
    viewer: &Viewer<'_>,
    now: DateTime<Utc>,
) -> Result<Attribution, VerifyError> {
    let t = lookup.subscribe_by_token(token).map_err(store_err)?.ok_or(VerifyError::UnknownToken)?;
    if !t.common.is_active {
        return Err(VerifyError::TokenInactive(t.common.id));
    }
    if t.common.is_expired(now) {
        return Err(VerifyError::TokenExpired(t.common.id));
    }
    check_stream_and_cluster(&t, stream, cluster, &t.common.origin_cluster)?;
    check_viewer(lookup, &t.common.rules, None, viewer, &format!("subscribe:{}", t.common.id))?;
    Ok(Attribution { token_id: Some(t.common.id), tracking_id: t.tracking_id, custom_viewer_data: None, expires_at: t.common.expires_on })
}

fn decode_part(part: &str, what: &str) -> Result<serde_json::Value, VerifyError> {
    let bytes = B64.decode(part).map_err(|e| VerifyError::Malformed(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| VerifyError::Malformed(format!("{what} is not JSON: {e}")))
}

fn verify_jwt(
    lookup: &impl TokenLookup,
    token: &str,
    stream: &str,
    cluster: &str,
    viewer: &Viewer<'_>,
    now: DateTime<Utc>,
    policy: &Policy,
) -> Result<Attribution, VerifyError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64)) = (parts.next(), parts.next()) else {
        return Err(VerifyError::Malformed("not a JWT".into()));
    };
    // 1. The algorithm, from the raw header, before any verification.
    let header = decode_part(header_b64, "header")?;
    let alg_name = header.get("alg").and_then(|a| a.as_str()).ok_or_else(|| VerifyError::Malformed("header has no alg".into()))?;
    let alg = match alg_name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        other => return Err(VerifyError::AlgNotAllowed(other.to_string())),
    };
    // 2. The parent named by the (not yet trusted) payload.
    let payload = decode_part(payload_b64, "payload")?;
    let token_id = payload
        .get("streaming")
        .and_then(|s| s.get("tokenId"))
        .and_then(|id| id.as_i64())
        .ok_or_else(|| VerifyError::Malformed("claim streaming.tokenId (integer) missing".into()))?;
    let parent = lookup.subscribe_by_id(token_id).map_err(store_err)?.ok_or(VerifyError::ParentNotFound(token_id))?;
    // 3. The signature, with the parent's token string. Expiry is checked
    // below against `now`, not the system clock.
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<ViewerClaims>(token, &DecodingKey::from_secret(parent.common.token.as_bytes()), &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => VerifyError::BadSignature,
            ErrorKind::InvalidAlgorithm => VerifyError::AlgNotAllowed(alg_name.to_string()),
            _ => VerifyError::Malformed(e.to_string()),
        })?;
    let claims = data.claims;
    // 4. Expiry of the JWT.
    let exp = claims.exp.ok_or(VerifyError::ExpMissing)?;
    let t = now.timestamp();
    if t >= exp {
        return Err(VerifyError::Expired { exp });
    }
    if let Some(nbf) = claims.nbf {
        if t.saturating_add(policy.clock_skew_secs) < nbf {
            return Err(VerifyError::NotYetValid { nbf });
        }
    }
    if let Some(iat) = claims.iat {
        if iat > t.saturating_add(policy.clock_skew_secs) {
            return Err(VerifyError::IssuedInFuture { iat });
        }
    }
    let from = claims.iat.unwrap_or(t).min(t);
    if exp.saturating_sub(from) > policy.max_viewer_token_secs {
        return Err(VerifyError::LifetimeTooLong { max_secs: policy.max_viewer_token_secs });
    }
    // 5. The parent's state and expiry.
    if !parent.common.is_active {
        return Err(VerifyError::ParentInactive(parent.common.id));
    }
    if parent.common.is_expired(now) {
        return Err(VerifyError::ParentExpired(parent.common.id));
    }
    let exp_at = DateTime::<Utc>::from_timestamp(exp, 0).ok_or_else(|| VerifyError::Malformed(format!("exp {exp} out of range")))?;
    let expires_at = Some(parent.common.expires_on.map_or(exp_at, |pe| pe.min(exp_at)));
    // 6. Type and sizes.
    let s = claims.streaming;
    if s.token_type != SUBSCRIBE_TOKEN_TYPE {
        return Err(VerifyError::Malformed(format!("tokenType must be {SUBSCRIBE_TOKEN_TYPE}, got {:?}", s.token_type)));
    }
    let jwt_tracking = s.tracking.as_ref().map(|t| t.tracking_id.clone());
    if let Some(t) = &jwt_tracking {
        if t.chars().count() > MAX_TRACKING_ID_CHARS {
            return Err(VerifyError::FieldTooLong { field: "trackingId", max: MAX_TRACKING_ID_CHARS });
        }
        if t.is_empty() {
            return Err(VerifyError::Malformed("trackingId is empty".into()));
        }
    }
    if s.custom_viewer_data.as_ref().is_some_and(|d| d.chars().count() > MAX_CUSTOM_VIEWER_DATA_CHARS) {
        return Err(VerifyError::FieldTooLong { field: "customViewerData", max: MAX_CUSTOM_VIEWER_DATA_CHARS });
    }
    // 7-8. Stream and cluster.
    if !s.stream_name.is_empty() && s.stream_name != stream {
        return Err(VerifyError::StreamMismatch(stream.to_string()));
    }
    let effective_cluster = match s.origin_cluster.as_deref() {
        None => parent.common.origin_cluster.as_str(),
        Some(c) if is_auto_cluster(&parent.common.origin_cluster) || c.eq_ignore_ascii_case(&parent.common.origin_cluster) => c,
        Some(c) => return Err(VerifyError::ClusterMismatch { cluster: c.to_string(), expected: parent.common.origin_cluster.clone() }),
    };
    check_stream_and_cluster(&parent, stream, cluster, effective_cluster)?;
    // 9. Tracking.
    let tracking_id = match (&parent.tracking_id, jwt_tracking) {
        (Some(p), None) => Some(p.clone()),
        (Some(p), Some(t)) if *p == t => Some(t),
        (Some(p), Some(t)) => return Err(VerifyError::TrackingOverride { given: t, parent: p.clone() }),
        (None, Some(t)) if !policy.untracked_parent_sets_tracking => return Err(VerifyError::TrackingNotAllowed { given: t }),
        (None, t) => t,
    };
    // 11. The viewer; a JWT's IPs are bound per JWT (its signature's digest).
    let bind_key = format!("jwt:{}", hex::encode(Sha256::digest(token.rsplit('.').next().unwrap_or("").as_bytes())));
    check_viewer(lookup, &parent.common.rules, Some(&s), viewer, &bind_key)?;
    Ok(Attribution { token_id: Some(parent.common.id), tracking_id, custom_viewer_data: s.custom_viewer_data, expires_at })
}

#[cfg(test)]
mod tests;
