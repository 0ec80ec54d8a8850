//! Console sessions and the roles of credentials: state shared by the
//! router's authentication (`app`) and the console's routes (`console`); a
//! leaf (it uses neither).

use crate::events;
use crate::store::StoredSession;
use axum::http::{header, HeaderMap, HeaderValue};
use chrono::{DateTime, Utc};
use runtime::events::InternalEvent;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Name of the session cookie.
pub const COOKIE: &str = "metering_session";
/// Most sessions at once (beyond: sign-in answers `503` until some expire).
pub const MAX_SESSIONS: usize = 10_000;

/// Who a session (or a bearer secret) is.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    Admin,
    Verify,
    Scoped(Arc<Vec<String>>),
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) role: Role,
    pub(crate) csrf: String,
    pub(crate) expires: DateTime<Utc>,
}

impl Session {
    /// Whether `given` is this session's CSRF token (constant time).
    pub(crate) fn csrf_ok(&self, given: Option<&HeaderValue>) -> bool {
        given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(self.csrf.as_bytes())))
    }
}

fn digest(id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes()).into()
}

/// The console's sessions, kept in the token store (`console_sessions`) so
/// that they survive a restart and every `api serve` process sharing the
/// store sees the same sessions and sign-outs. A session records the digest
/// of the secret that opened it; its role is that secret's role in the
/// current configuration (resolved by the caller), so removing a secret
/// ends its sessions.
#[derive(Debug)]
pub(crate) struct Sessions(pub(crate) Arc<crate::store::Store>);

/// Why a session could not be opened.
pub(crate) enum OpenRefused {
    /// [`MAX_SESSIONS`] are live.
    Full,
    /// The store failed.
    Store(crate::store::StoreError),
}

impl Sessions {
    /// Open a session for the secret of digest `key_digest`: its id (for
    /// the cookie) and what the store keeps.
    pub(crate) fn open(&self, key_digest: [u8; 32], ttl: chrono::Duration) -> Result<(String, StoredSession), OpenRefused> {
        let now = Utc::now();
        let id = crate::tokens::model::generate_token();
        let s = StoredSession { key_digest, csrf: crate::tokens::model::generate_token(), expires: now + ttl };
        match self.0.open_session(&digest(&id), &s, MAX_SESSIONS, now) {
            Ok(true) => Ok((id, s)),
            Ok(false) => Err(OpenRefused::Full),
            Err(e) => Err(OpenRefused::Store(e)),
        }
    }

    /// The live session of a request's cookie (a store failure is logged
    /// and reads as no session).
    pub(crate) fn of(&self, headers: &HeaderMap) -> Option<StoredSession> {
        let id = cookie(headers, COOKIE)?;
        match self.0.session(&digest(id), Utc::now()) {
            Ok(s) => s,
            Err(e) => {
                events::ConsoleSessionReadFailed { error: &e }.emit();
                None
            }
        }
    }

    pub(crate) fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            if let Err(e) = self.0.close_session(&digest(id)) {
                events::ConsoleSessionCloseFailed { error: &e }.emit();
            }
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Settings of the console.
#[derive(Clone)]
pub(crate) struct ConsoleSettings {
    pub(crate) session_secs: u64,
    pub(crate) secure_cookie: bool,
    /// The rate card (`billing_rates`): partners and their tracking ids.
    pub(crate) rates: Option<Arc<billing::rates::RateCard>>,
    /// Billing's view of ClickHouse, for the reconciliation.
    pub(crate) billing: Option<Arc<billing::store::Store>>,
}
