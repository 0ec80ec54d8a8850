//! Console sessions and the roles of credentials: state shared by the
//! router's authentication (`app`) and the console's routes (`console`); a
//! leaf (it uses neither).

use axum::http::{header, HeaderMap, HeaderValue};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
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

/// The console's sessions, by the SHA-256 of their id (the id itself is
/// only in the cookie).
#[derive(Debug, Default)]
pub struct Sessions(Mutex<HashMap<[u8; 32], Session>>);

fn digest(id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub(crate) fn open(&self, role: Role, ttl: chrono::Duration) -> Option<(String, Session)> {
        let mut m = self.0.lock().ok()?;
        let now = Utc::now();
        m.retain(|_, s| s.expires > now);
        if m.len() >= MAX_SESSIONS {
            return None;
        }
        let id = crate::store::generate_token();
        let s = Session { role, csrf: crate::store::generate_token(), expires: now + ttl };
        m.insert(digest(&id), s.clone());
        Some((id, s))
    }

    /// The live session of a request's cookie.
    pub(crate) fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let m = self.0.lock().ok()?;
        m.get(&digest(id)).filter(|s| s.expires > Utc::now()).cloned()
    }

    pub(crate) fn close(&self, headers: &HeaderMap) {
        if let (Some(id), Ok(mut m)) = (cookie(headers, COOKIE), self.0.lock()) {
            m.remove(&digest(id));
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
