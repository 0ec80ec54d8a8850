//! Subscribe and Publish tokens in SQLite (`rusqlite`, SQLite bundled).
//!
//! One file (`store_path`), tables created at open. Lists (streams, allowed
//! origins and IPs) are stored as JSON text; times as epoch milliseconds.
//! Every statement is parameterised.

use chrono::{DateTime, TimeZone, Utc};
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;

/// Errors of the token store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The directory of the SQLite file could not be created.
    #[error("cannot create store directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be decoded.
    #[error("corrupt row {table}/{id}: {message}")]
    Corrupt { table: &'static str, id: i64, message: String },
    /// A thread panicked while holding the connection.
    #[error("token store lock poisoned")]
    Poisoned,
}

/// One stream a token grants: an exact name, or a regular expression
/// matched against the whole name when `is_regex`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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
                tracing::warn!(pattern = %pattern, error = %e, "StoredRegexInvalid");
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

/// A Subscribe token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeToken {
    /// Numeric id (the `token_id` of usage events, `tokenId` of JWTs).
    pub id: i64,
    /// The secret token string: 64 hex characters.
    pub token: String,
    /// Free text.
    pub label: String,
    /// Streams the token grants (at least one).
    pub streams: Vec<StreamRule>,
    /// Distribution channel its viewers' usage is attributed to; immutable.
    pub tracking_id: Option<String>,
    /// Cluster id, or `auto` for any.
    pub origin_cluster: String,
    /// Expiry, if any.
    pub expires_on: Option<DateTime<Utc>>,
    /// Inactive tokens admit nobody.
    pub is_active: bool,
    /// Allowed web origins (empty: any).
    pub allowed_origins: Vec<String>,
    /// Allowed viewer IP addresses or CIDR ranges (empty: any).
    pub allowed_ip_addresses: Vec<String>,
    /// Creation time.
    pub added_on: DateTime<Utc>,
}

impl SubscribeToken {
    /// Whether the token has expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_on.is_some_and(|e| e <= now)
    }

    /// Whether any of the token's stream rules grants `stream`.
    pub fn grants_stream(&self, stream: &str) -> bool {
        self.streams.iter().any(|r| r.matches(stream))
    }
}

/// What creating a Subscribe token needs (already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSubscribeToken {
    pub label: String,
    pub streams: Vec<StreamRule>,
    pub tracking_id: Option<String>,
    pub origin_cluster: String,
    pub expires_on: Option<DateTime<Utc>>,
    pub allowed_origins: Vec<String>,
    pub allowed_ip_addresses: Vec<String>,
}

/// Changes to a Subscribe token; `None` keeps the value. The tracking id
/// cannot be changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubscribeTokenUpdate {
    pub label: Option<String>,
    pub streams: Option<Vec<StreamRule>>,
    pub is_active: Option<bool>,
    pub allowed_origins: Option<Vec<String>>,
    pub allowed_ip_addresses: Option<Vec<String>>,
    /// `Some(None)` removes the expiry.
    pub expires_on: Option<Option<DateTime<Utc>>>,
}

/// A Publish token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishToken {
    pub id: i64,
    /// The secret token string: 64 hex characters.
    pub token: String,
    pub label: String,
    pub streams: Vec<StreamRule>,
    /// Whether viewers of these streams need a Subscribe token.
    pub subscribe_requires_auth: bool,
    pub is_active: bool,
    pub added_on: DateTime<Utc>,
}

/// What creating a Publish token needs (already validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPublishToken {
    pub label: String,
    pub streams: Vec<StreamRule>,
    pub subscribe_requires_auth: bool,
}

/// Read access to Subscribe tokens, what verification needs.
pub trait TokenLookup {
    /// The Subscribe token with this id.
    fn subscribe_by_id(&self, id: i64) -> Result<Option<SubscribeToken>, StoreError>;
    /// The Subscribe token with this token string.
    fn subscribe_by_token(&self, token: &str) -> Result<Option<SubscribeToken>, StoreError>;
}

/// A new token string: 32 bytes from the OS CSPRNG, as 64 lowercase hex characters.
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS subscribe_tokens (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    token                TEXT NOT NULL UNIQUE,
    label                TEXT NOT NULL,
    streams              TEXT NOT NULL,
    tracking_id          TEXT,
    origin_cluster       TEXT NOT NULL,
    expires_on_ms        INTEGER,
    is_active            INTEGER NOT NULL,
    allowed_origins      TEXT NOT NULL,
    allowed_ip_addresses TEXT NOT NULL,
    added_on_ms          INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS publish_tokens (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    token                   TEXT NOT NULL UNIQUE,
    label                   TEXT NOT NULL,
    streams                 TEXT NOT NULL,
    subscribe_requires_auth INTEGER NOT NULL,
    is_active               INTEGER NOT NULL,
    added_on_ms             INTEGER NOT NULL
);
";

const SUB_COLS: &str =
    "id, token, label, streams, tracking_id, origin_cluster, expires_on_ms, is_active, allowed_origins, allowed_ip_addresses, added_on_ms";
const PUB_COLS: &str = "id, token, label, streams, subscribe_requires_auth, is_active, added_on_ms";

/// The token store: one SQLite connection behind a mutex (statements are
/// short; callers on an async runtime may call it directly).
pub struct Store {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

fn ms_to_time(table: &'static str, id: i64, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms).single().ok_or_else(|| StoreError::Corrupt { table, id, message: format!("bad time {ms}") })
}

fn from_json<T: serde::de::DeserializeOwned>(table: &'static str, id: i64, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { table, id, message: e.to_string() })
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing plain strings and bools cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

struct SubRow {
    id: i64,
    token: String,
    label: String,
    streams: String,
    tracking_id: Option<String>,
    origin_cluster: String,
    expires_on_ms: Option<i64>,
    is_active: bool,
    allowed_origins: String,
    allowed_ip_addresses: String,
    added_on_ms: i64,
}

impl SubRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<SubRow> {
        Ok(SubRow {
            id: r.get(0)?,
            token: r.get(1)?,
            label: r.get(2)?,
            streams: r.get(3)?,
            tracking_id: r.get(4)?,
            origin_cluster: r.get(5)?,
            expires_on_ms: r.get(6)?,
            is_active: r.get(7)?,
            allowed_origins: r.get(8)?,
            allowed_ip_addresses: r.get(9)?,
            added_on_ms: r.get(10)?,
        })
    }

    fn decode(self) -> Result<SubscribeToken, StoreError> {
        const T: &str = "subscribe_tokens";
        let id = self.id;
        Ok(SubscribeToken {
            id,
            token: self.token,
            label: self.label,
            streams: from_json(T, id, &self.streams)?,
            tracking_id: self.tracking_id,
            origin_cluster: self.origin_cluster,
            expires_on: self.expires_on_ms.map(|ms| ms_to_time(T, id, ms)).transpose()?,
            is_active: self.is_active,
            allowed_origins: from_json(T, id, &self.allowed_origins)?,
            allowed_ip_addresses: from_json(T, id, &self.allowed_ip_addresses)?,
            added_on: ms_to_time(T, id, self.added_on_ms)?,
        })
    }
}

struct PubRow {
    id: i64,
    token: String,
    label: String,
    streams: String,
    subscribe_requires_auth: bool,
    is_active: bool,
    added_on_ms: i64,
}

impl PubRow {
    fn read(r: &Row<'_>) -> rusqlite::Result<PubRow> {
        Ok(PubRow {
            id: r.get(0)?,
            token: r.get(1)?,
            label: r.get(2)?,
            streams: r.get(3)?,
            subscribe_requires_auth: r.get(4)?,
            is_active: r.get(5)?,
            added_on_ms: r.get(6)?,
        })
    }

    fn decode(self) -> Result<PublishToken, StoreError> {
        const T: &str = "publish_tokens";
        Ok(PublishToken {
            id: self.id,
            token: self.token,
            label: self.label,
            streams: from_json(T, self.id, &self.streams)?,
            subscribe_requires_auth: self.subscribe_requires_auth,
            is_active: self.is_active,
            added_on: ms_to_time(T, self.id, self.added_on_ms)?,
        })
    }
}

impl Store {
    /// Open (or create) the SQLite file at `path`, creating its parent
    /// directories and the tables.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir { path: dir.to_path_buf(), source })?;
        }
        // the file holds every master token: readable by this user only
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| StoreError::Dir { path: path.to_path_buf(), source })?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| StoreError::Dir { path: path.to_path_buf(), source })?;
        }
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Self::init(conn)
    }

    /// A store in memory (tests).
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// A cheap query that proves the store answers (health checks).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn()?.query_row("SELECT count(*) FROM subscribe_tokens WHERE 0", [], |_| Ok(()))?;
        Ok(())
    }

    /// Create an active Subscribe token with a fresh token string.
    pub fn create_subscribe(&self, new: NewSubscribeToken, now: DateTime<Utc>) -> Result<SubscribeToken, StoreError> {
        let token = generate_token();
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO subscribe_tokens (token, label, streams, tracking_id, origin_cluster, expires_on_ms, is_active, allowed_origins, allowed_ip_addresses, added_on_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9)",
            params![
                token,
                new.label,
                to_json(&new.streams),
                new.tracking_id,
                new.origin_cluster,
                new.expires_on.map(|t| t.timestamp_millis()),
                to_json(&new.allowed_origins),
                to_json(&new.allowed_ip_addresses),
                now.timestamp_millis(),
            ],
        )?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.get_subscribe(id)?.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The Subscribe token with this id.
    pub fn get_subscribe(&self, id: i64) -> Result<Option<SubscribeToken>, StoreError> {
        let conn = self.conn()?;
        let row =
            conn.query_row(&format!("SELECT {SUB_COLS} FROM subscribe_tokens WHERE id = ?1"), params![id], SubRow::read).optional()?;
        row.map(SubRow::decode).transpose()
    }

    /// The Subscribe token with this token string.
    pub fn get_subscribe_by_token(&self, token: &str) -> Result<Option<SubscribeToken>, StoreError> {
        let conn = self.conn()?;
        let row = conn
            .query_row(&format!("SELECT {SUB_COLS} FROM subscribe_tokens WHERE token = ?1"), params![token], SubRow::read)
            .optional()?;
        row.map(SubRow::decode).transpose()
    }

    /// Every Subscribe token, by id.
    pub fn list_subscribe(&self) -> Result<Vec<SubscribeToken>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("SELECT {SUB_COLS} FROM subscribe_tokens ORDER BY id"))?;
        let rows = stmt.query_map([], SubRow::read)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(SubRow::decode).collect()
    }

    /// Apply `upd`; `None` when there is no such token. Read, change and
    /// write happen in one transaction under one lock: a concurrent update
    /// (a revocation, say) is never overwritten by a stale copy.
    pub fn update_subscribe(&self, id: i64, upd: SubscribeTokenUpdate) -> Result<Option<SubscribeToken>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = tx.query_row(&format!("SELECT {SUB_COLS} FROM subscribe_tokens WHERE id = ?1"), params![id], SubRow::read).optional()?;
        let Some(mut t) = row.map(SubRow::decode).transpose()? else { return Ok(None) };
        if let Some(v) = upd.label {
            t.label = v;
        }
        if let Some(v) = upd.streams {
            t.streams = v;
        }
        if let Some(v) = upd.is_active {
            t.is_active = v;
        }
        if let Some(v) = upd.allowed_origins {
            t.allowed_origins = v;
        }
        if let Some(v) = upd.allowed_ip_addresses {
            t.allowed_ip_addresses = v;
        }
        if let Some(v) = upd.expires_on {
            t.expires_on = v;
        }
        let n = tx.execute(
            "UPDATE subscribe_tokens SET label = ?2, streams = ?3, is_active = ?4, allowed_origins = ?5,
             allowed_ip_addresses = ?6, expires_on_ms = ?7 WHERE id = ?1",
            params![
                id,
                t.label,
                to_json(&t.streams),
                t.is_active,
                to_json(&t.allowed_origins),
                to_json(&t.allowed_ip_addresses),
                t.expires_on.map(|e| e.timestamp_millis()),
            ],
        )?;
        tx.commit()?;
        Ok((n == 1).then_some(t))
    }

    /// Delete a Subscribe token; whether it existed. Viewer JWTs signed with
    /// it stop verifying at once.
    pub fn delete_subscribe(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.conn()?.execute("DELETE FROM subscribe_tokens WHERE id = ?1", params![id])? == 1)
    }

    /// Create an active Publish token with a fresh token string.
    pub fn create_publish(&self, new: NewPublishToken, now: DateTime<Utc>) -> Result<PublishToken, StoreError> {
        let token = generate_token();
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO publish_tokens (token, label, streams, subscribe_requires_auth, is_active, added_on_ms)
             VALUES (?1, ?2, ?3, ?4, 1, ?5)",
            params![token, new.label, to_json(&new.streams), new.subscribe_requires_auth, now.timestamp_millis()],
        )?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.get_publish(id)?.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The Publish token with this id.
    pub fn get_publish(&self, id: i64) -> Result<Option<PublishToken>, StoreError> {
        let conn = self.conn()?;
        let row = conn.query_row(&format!("SELECT {PUB_COLS} FROM publish_tokens WHERE id = ?1"), params![id], PubRow::read).optional()?;
        row.map(PubRow::decode).transpose()
    }

    /// Every Publish token, by id.
    pub fn list_publish(&self) -> Result<Vec<PublishToken>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("SELECT {PUB_COLS} FROM publish_tokens ORDER BY id"))?;
        let rows = stmt.query_map([], PubRow::read)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(PubRow::decode).collect()
    }

    /// Delete a Publish token; whether it existed.
    pub fn delete_publish(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.conn()?.execute("DELETE FROM publish_tokens WHERE id = ?1", params![id])? == 1)
    }
}

impl TokenLookup for Store {
    fn subscribe_by_id(&self, id: i64) -> Result<Option<SubscribeToken>, StoreError> {
        self.get_subscribe(id)
    }
    fn subscribe_by_token(&self, token: &str) -> Result<Option<SubscribeToken>, StoreError> {
        self.get_subscribe_by_token(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_sub(tracking: Option<&str>) -> NewSubscribeToken {
        NewSubscribeToken {
            label: "p".into(),
            streams: vec![StreamRule { stream_name: "live".into(), is_regex: false }],
            tracking_id: tracking.map(String::from),
            origin_cluster: "auto".into(),
            expires_on: None,
            allowed_origins: vec![],
            allowed_ip_addresses: vec!["10.0.0.0/8".into()],
        }
    }

    #[test]
    fn crud_round_trip() {
        let s = Store::open_in_memory().unwrap();
        let now = Utc.timestamp_millis_opt(1_760_000_000_123).unwrap();
        let t = s.create_subscribe(new_sub(Some("acme")), now).unwrap();
        assert_eq!(t.token.len(), 64);
        assert!(t.token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(t.added_on, now);
        assert_eq!(s.get_subscribe_by_token(&t.token).unwrap().unwrap(), t);
        let t2 = s.create_subscribe(new_sub(None), now).unwrap();
        assert_ne!(t.token, t2.token);
        assert_eq!(s.list_subscribe().unwrap().len(), 2);
        let u = s
            .update_subscribe(t.id, SubscribeTokenUpdate { is_active: Some(false), label: Some("x".into()), ..Default::default() })
            .unwrap()
            .unwrap();
        assert!(!u.is_active);
        assert_eq!(u.tracking_id.as_deref(), Some("acme"));
        assert_eq!(s.get_subscribe(t.id).unwrap().unwrap(), u);
        assert!(s.delete_subscribe(t.id).unwrap());
        assert!(!s.delete_subscribe(t.id).unwrap());
        assert!(s.get_subscribe(t.id).unwrap().is_none());
        assert!(s.update_subscribe(t.id, Default::default()).unwrap().is_none());
    }

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
