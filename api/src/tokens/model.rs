//! The token model: what both token kinds share ([`TokenCommon`]), each
//! kind as the store keeps it, and the stream rules and access rules a
//! token carries. No I/O here: [`super::store`] reads and writes these,
//! `tokens::validate` builds them from request bodies, `tokens::response`
//! answers them in the platform's shapes.

use crate::events;
use chrono::{DateTime, Utc};
use rand::RngCore;
use runtime::events::InternalEvent;
use serde::{Deserialize, Serialize};

/// One stream a token grants: an exact name, or a regular expression
/// matched against the whole name when `is_regex`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamRule {
    /// Stream name, or pattern when `is_regex`.
    pub stream_name: String,
    /// Whether `stream_name` is a regular expression (implicitly anchored).
    #[serde(default)]
    pub is_regex: bool,
}

/// Largest compiled size of a stream-rule regex (the `regex` crate's
/// `size_limit`): rules are short name patterns, not programs.
pub const MAX_REGEX_COMPILED_BYTES: usize = 64 * 1024;

impl StreamRule {
    /// Compile the pattern of a regex rule, anchored as a whole. The pattern
    /// must be a regex on its own first, so that it cannot close the
    /// anchoring group and escape it (`live)|(.*` is refused, not read as
    /// `^(?:live)|(.*)$`), and its compiled size is bounded.
    pub fn anchored_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
        regex::RegexBuilder::new(pattern).size_limit(MAX_REGEX_COMPILED_BYTES).build()?;
        regex::RegexBuilder::new(&format!("^(?:{pattern})$")).size_limit(MAX_REGEX_COMPILED_BYTES).build()
    }

    /// The compiled rule, compiled once per pattern and process (at create
    /// or update, or at the first verification after a restart).
    fn compiled(pattern: &str) -> Option<std::sync::Arc<regex::Regex>> {
        use std::collections::HashMap;
        use std::sync::{Arc, Mutex, OnceLock};
        static CACHE: OnceLock<Mutex<HashMap<String, Option<Arc<regex::Regex>>>>> = OnceLock::new();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(hit) = cache.lock().expect("regex cache").get(pattern) {
            return hit.clone();
        }
        let compiled = match Self::anchored_regex(pattern) {
            Ok(re) => Some(Arc::new(re)),
            Err(e) => {
                events::StoredRegexInvalid { pattern, error: &e }.emit();
                None
            }
        };
        let mut c = cache.lock().expect("regex cache");
        if c.len() >= 10_000 {
            c.clear();
        }
        c.insert(pattern.to_string(), compiled.clone());
        compiled
    }

    /// Check (and compile into the cache) a rule before it is stored.
    pub fn validate(&self) -> Result<(), regex::Error> {
        if self.is_regex {
            Self::anchored_regex(&self.stream_name)?;
            Self::compiled(&self.stream_name);
        }
        Ok(())
    }

    /// Whether `stream` is granted by this rule. A regex that does not
    /// compile (the API refuses those) matches nothing.
    pub fn matches(&self, stream: &str) -> bool {
        if !self.is_regex {
            return self.stream_name == stream;
        }
        Self::compiled(&self.stream_name).is_some_and(|re| re.is_match(stream))
    }
}

/// Who may use a token beyond its streams: the platform's access rules,
/// shared by Subscribe and Publish tokens (a viewer JWT may narrow them).
/// Empty lists and `0` mean "no restriction".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AccessRules {
    /// Allowed web origins (`https://a.example`, `*.example.com`).
    pub allowed_origins: Vec<String>,
    /// Allowed viewer IP addresses or CIDR ranges.
    pub allowed_ip_addresses: Vec<String>,
    /// The first this many distinct viewer IPs to use the token are bound
    /// to it; other IPs are refused afterwards.
    pub bind_ips_on_usage: u32,
    /// ISO 3166-1 alpha-2 countries viewers must be in.
    pub allowed_countries: Vec<String>,
    /// ISO 3166-1 alpha-2 countries viewers must not be in.
    pub denied_countries: Vec<String>,
}

/// The fields both token kinds have, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCommon {
    /// Numeric id (for a Subscribe token, the `token_id` of usage events and
    /// the `tokenId` of viewer JWTs).
    pub id: i64,
    /// The secret token string: 64 hex characters (replaced by a rotation).
    pub token: String,
    /// Free text.
    pub label: String,
    /// Streams the token grants (at least one).
    pub streams: Vec<StreamRule>,
    /// Cluster id, or `Auto` (any case) for any.
    pub origin_cluster: String,
    /// Expiry, if any.
    pub expires_on: Option<DateTime<Utc>>,
    /// Inactive tokens admit nobody.
    pub is_active: bool,
    /// Origins, addresses and countries allowed.
    pub rules: AccessRules,
    /// Creation time.
    pub added_on: DateTime<Utc>,
}

impl TokenCommon {
    /// Whether the token has expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_on.is_some_and(|e| e <= now)
    }

    /// Whether the token is in force at `now` (active, not expired).
    pub fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.is_active && !self.is_expired(now)
    }

    /// Whether any of the token's stream rules grants `stream`.
    pub fn grants_stream(&self, stream: &str) -> bool {
        self.streams.iter().any(|r| r.matches(stream))
    }
}

/// What creating a token of either kind needs in common (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTokenCommon {
    /// Free text, at most 256 characters; empty when the request gives none.
    pub label: String,
    /// Streams the token grants: 1 to 100 rules.
    pub streams: Vec<StreamRule>,
    /// Cluster id, or `Auto` (the default) for any cluster.
    pub origin_cluster: String,
    /// Expiry: in the future, at most [`super::MAX_EXPIRES_SECS`] ahead; `None`: never.
    pub expires_on: Option<DateTime<Utc>>,
    /// Origins, addresses and countries allowed (none: no restriction).
    pub rules: AccessRules,
}

/// A Subscribe token (a partner's master token) as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeToken {
    /// The fields both token kinds have (id, token string, streams, state, access rules).
    pub common: TokenCommon,
    /// Distribution channel its viewers' usage is attributed to; immutable.
    pub tracking_id: Option<String>,
}

/// What creating a Subscribe token needs (validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscribeToken {
    /// The fields both token kinds need.
    pub common: NewTokenCommon,
    /// Distribution channel, 1 to 128 characters; `None`: untracked. Fixed at creation.
    pub tracking_id: Option<String>,
}

/// A Publish token as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishToken {
    /// The fields both token kinds have (id, token string, streams, state, access rules).
    pub common: TokenCommon,
    /// Whether viewers of these streams need a Subscribe token.
    pub subscribe_requires_auth: bool,
    /// The platform's publishing options this service keeps and returns
    /// but does not act on (`record`, `multisource`, `geoCascade`, ...).
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// What creating a Publish token needs (validated).
#[derive(Debug, Clone, PartialEq)]
pub struct NewPublishToken {
    /// The fields both token kinds need.
    pub common: NewTokenCommon,
    /// Whether viewers of these streams need a Subscribe token (`false` unless the request says so).
    pub subscribe_requires_auth: bool,
    /// The publishing options the request named, as given (the rest read as the platform's defaults).
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// A new token string: 32 bytes from the OS CSPRNG, as 64 lowercase hex characters.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_rules_cannot_escape_their_anchors() {
        // `^(?:live)|(.*)$` would match everything: refused, and matches nothing if stored anyway
        for evil in ["live)|(.*", "a)|(?:.*", ")|("] {
            assert!(StreamRule::anchored_regex(evil).is_err(), "{evil}");
            let r = StreamRule { stream_name: evil.into(), is_regex: true };
            assert!(r.validate().is_err());
            assert!(!r.matches("anything"), "{evil}");
        }
        // and a pattern that compiles to a huge program is refused
        assert!(StreamRule::anchored_regex("(\\w{1000}){1000}").is_err());
        let ok = StreamRule { stream_name: "live|backup".into(), is_regex: true };
        assert!(ok.validate().is_ok());
        assert!(ok.matches("backup") && !ok.matches("live|backup") && !ok.matches("livebackup"));
    }

    #[test]
    fn regex_rules_are_anchored() {
        let r = StreamRule { stream_name: "live-[0-9]+".into(), is_regex: true };
        assert!(r.matches("live-12"));
        assert!(!r.matches("xlive-12"));
        assert!(!r.matches("live-12x"));
        let alt = StreamRule { stream_name: "a|b".into(), is_regex: true };
        assert!(alt.matches("a") && !alt.matches("ab") && !alt.matches("xb"));
        let exact = StreamRule { stream_name: "live.1".into(), is_regex: false };
        assert!(exact.matches("live.1") && !exact.matches("liveX1"));
    }
}
