//! Settings of `api serve`: a TOML file plus `API__...` environment
//! overrides (see [`runtime::config::load`]).

use runtime::config::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use runtime::auth::MIN_SECRET_CHARS;

/// Settings of `api serve` (file plus `API__...` environment overrides, e.g.
/// `API__API_SECRETS='["<64 hex characters>"]'`; secrets of at least
/// [`MIN_SECRET_CHARS`] characters).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address to listen on (default `127.0.0.1:8090`).
    pub listen: String,
    /// Admin secrets (`Authorization: Bearer <secret>`): token management
    /// and everything else. Each at least 32 characters and not a documented
    /// placeholder. Required: the service refuses to start without one.
    pub api_secrets: Vec<String>,
    /// Verify-only secrets: what media servers hold. They reach
    /// `POST /api/token/verify` and nothing else (`403`).
    pub verify_secrets: Vec<String>,
    /// SQLite file holding the tokens (default `.stack/api/tokens.db`); its
    /// parent directories are created at startup.
    pub store_path: PathBuf,
    /// Log as JSON lines.
    pub json_logs: bool,
    /// ClickHouse holding the usage tables (read by `/api/analytics/...` and
    /// `/api/records/...`).
    pub clickhouse: runtime::ch::ClickHouseConfig,
    /// Secrets limited to some tracking ids: they see only those ids in the
    /// analytics and records routes and are refused (`403`) on token routes.
    pub scoped_secrets: Vec<ScopedSecret>,
    /// Let a viewer token of an untracked master token carry its own
    /// `trackingId` (the platform's rule). Off: such tokens are refused with
    /// `tracking_not_allowed`, so usage is only ever attributed to a
    /// tracking id the content owner put on a master token (docs/security.md).
    pub untracked_parent_sets_tracking: bool,
    /// Longest accepted viewer-token lifetime, seconds (default 7 days).
    pub max_viewer_token_secs: u64,
    /// The rate card billing uses (`billing --rates`): the console maps
    /// partner-scoped secrets to their partners' invoices with it, and runs
    /// the reconciliation. Unset: invoices are shown to admins only and the
    /// reconciliation is unavailable.
    pub billing_rates: Option<PathBuf>,
    /// Partners' monthly allowances (the `entitlements` crate's file;
    /// needs `billing_rates`). Unset: no allowance is tracked or enforced.
    pub entitlements: Option<PathBuf>,
    /// How often the allowances' standing is read from ClickHouse, seconds
    /// (default 30): with the aggregator's flush, the lag of enforcement.
    pub entitlements_refresh_secs: u64,
    /// How old the standing may be before verification treats it as
    /// unknown, seconds (default 300).
    pub entitlements_max_staleness_secs: u64,
    /// What verification does when the standing is unknown (ClickHouse
    /// unreachable): `open` (the default: admit, and report
    /// `EntitlementsStale`) or `closed` (refuse with `allowance_unknown`).
    pub entitlements_fail: crate::entitlements::FailMode,
    /// Lifetime of a console session, seconds (default 1800; not extended).
    pub console_session_secs: u64,
    /// Mark the console cookie `Secure` (set it when serving over TLS).
    pub console_secure_cookie: bool,
    /// Behind a proxy: the header it puts the client's address in (its
    /// last entry is used, e.g. `X-Forwarded-For`); empty: the peer's
    /// address. Failed authentications are throttled per client address.
    pub client_address_header: String,
}

/// A secret that sees only its `tracking_ids`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedSecret {
    /// The bearer secret (at least [`MIN_SECRET_CHARS`] characters).
    pub secret: String,
    /// Tracking ids it may read (at least one).
    pub tracking_ids: Vec<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8090".into(),
            api_secrets: vec![],
            verify_secrets: vec![],
            store_path: PathBuf::from(".stack/api/tokens.db"),
            json_logs: false,
            clickhouse: runtime::ch::ClickHouseConfig::default(),
            scoped_secrets: vec![],
            untracked_parent_sets_tracking: false,
            max_viewer_token_secs: 7 * 86_400,
            billing_rates: None,
            entitlements: None,
            entitlements_refresh_secs: 30,
            entitlements_max_staleness_secs: 300,
            entitlements_fail: Default::default(),
            console_session_secs: 1800,
            console_secure_cookie: false,
            client_address_header: String::new(),
        }
    }
}

impl ApiConfig {
    /// Check the settings that have no safe default.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(ConfigError::Invalid)
    }

    fn check(&self) -> Result<(), String> {
        if self.api_secrets.is_empty() {
            return Err("api_secrets: at least one admin secret is required (API__API_SECRETS='[\"...\"]')".into());
        }
        for (i, k) in self.api_secrets.iter().enumerate() {
            runtime::auth::check_secret(&format!("api_secrets[{i}]"), k)?;
        }
        for (i, k) in self.verify_secrets.iter().enumerate() {
            runtime::auth::check_secret(&format!("verify_secrets[{i}]"), k)?;
            if self.api_secrets.contains(k) {
                return Err(format!("verify_secrets[{i}] is also an admin secret"));
            }
        }
        for (i, s) in self.scoped_secrets.iter().enumerate() {
            runtime::auth::check_secret(&format!("scoped_secrets[{i}].secret"), &s.secret)?;
            if self.verify_secrets.contains(&s.secret) {
                return Err(format!("scoped_secrets[{i}].secret is also a verify secret"));
            }
            if s.tracking_ids.is_empty() || s.tracking_ids.iter().any(|t| t.is_empty()) {
                return Err(format!("scoped_secrets[{i}].tracking_ids: at least one non-empty tracking id"));
            }
            if self.api_secrets.contains(&s.secret) {
                return Err(format!("scoped_secrets[{i}].secret is also an unscoped api secret"));
            }
        }
        self.clickhouse.db().map_err(|e| format!("clickhouse.database: {e}"))?;
        if self.max_viewer_token_secs == 0 || self.max_viewer_token_secs > i64::MAX as u64 {
            return Err("max_viewer_token_secs must be > 0".into());
        }
        if !(60..=12 * 3600).contains(&self.console_session_secs) {
            return Err("console_session_secs: 60 to 43200".into());
        }
        if self.entitlements.is_some() && self.billing_rates.is_none() {
            return Err("entitlements: needs billing_rates (the partners and their tracking ids)".into());
        }
        if self.entitlements_refresh_secs == 0 || self.entitlements_max_staleness_secs < self.entitlements_refresh_secs {
            return Err("need 0 < entitlements_refresh_secs <= entitlements_max_staleness_secs".into());
        }
        if self.store_path.as_os_str().is_empty() {
            return Err("store_path must not be empty".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_and_validation() {
        let c: ApiConfig = runtime::config::load_from(
            None,
            "API",
            vec![("API__API_SECRETS".to_string(), "[\"0123456789abcdef0123456789abcdef\"]".to_string())],
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:8090");
        assert!(c.validate().is_ok());
        let short = ApiConfig { api_secrets: vec!["short".into()], ..Default::default() };
        assert!(short.validate().is_err());
        assert!(ApiConfig::default().validate().is_err());
        let c: ApiConfig = runtime::config::load_from(
            None,
            "API",
            vec![
                ("API__API_SECRETS".to_string(), "[\"0123456789abcdef0123456789abcdef\"]".to_string()),
                ("API__CLICKHOUSE__DATABASE".to_string(), "metering_x".to_string()),
            ],
        )
        .unwrap();
        assert_eq!(c.clickhouse.database, "metering_x");
        assert!(c.validate().is_ok());
        let scoped = |secret: &str, ids: Vec<String>| ApiConfig {
            api_secrets: vec!["0123456789abcdef0123456789abcdef".into()],
            scoped_secrets: vec![ScopedSecret { secret: secret.into(), tracking_ids: ids }],
            ..Default::default()
        };
        assert!(scoped("scoped-0123456789-0123456789abcdef", vec!["acme".into()]).validate().is_ok());
        assert!(scoped("short", vec!["acme".into()]).validate().is_err());
        assert!(scoped("scoped-0123456789-0123456789abcdef", vec![]).validate().is_err());
        assert!(scoped("0123456789abcdef0123456789abcdef", vec!["acme".into()]).validate().is_err());
        // the shipped placeholder never starts a service
        let placeholder = ApiConfig { api_secrets: vec!["change-me-api-secret-0001-xxxxxxxxxxxx".into()], ..Default::default() };
        assert!(placeholder.validate().unwrap_err().to_string().contains("placeholder"));
        let verify = ApiConfig {
            api_secrets: vec!["0123456789abcdef0123456789abcdef".into()],
            verify_secrets: vec!["0123456789abcdef0123456789abcdef".into()],
            ..Default::default()
        };
        assert!(verify.validate().is_err(), "a verify secret cannot also be an admin secret");
        let bad_db = ApiConfig {
            api_secrets: vec!["0123456789abcdef0123456789abcdef".into()],
            clickhouse: runtime::ch::ClickHouseConfig { database: "a;b".into(), ..Default::default() },
            ..Default::default()
        };
        assert!(bad_db.validate().is_err());
        let err = runtime::config::load_from::<ApiConfig>(None, "API", vec![("API__NOPE".into(), "1".into())]);
        assert!(err.is_err());
    }
}
