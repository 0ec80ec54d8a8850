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

/// A Subscribe token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeToken {
    /// Numeric id (the `token_id` of usage events, `tokenId` of JWTs).
    pub id: i64,
    /// The secret token string: 64 hex characters (replaced by a rotation).
    pub token: String,
    /// Free text.
    pub label: String,
    /// Streams the token grants (at least one).
    pub streams: Vec<StreamRule>,
    /// Distribution channel its viewers' usage is attributed to; immutable.
    pub tracking_id: Option<String>,
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
    pub rules: AccessRules,
}

/// A Publish token as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishToken {
    pub id: i64,
    /// The secret token string: 64 hex characters (replaced by a rotation).
    pub token: String,
    pub label: String,
    pub streams: Vec<StreamRule>,
    /// Cluster id, or `Auto`.
    pub origin_cluster: String,
    pub expires_on: Option<DateTime<Utc>>,
    /// Whether viewers of these streams need a Subscribe token.
    pub subscribe_requires_auth: bool,
    pub is_active: bool,
    pub rules: AccessRules,
    /// The platform's publishing options this service keeps and returns
    /// but does not act on (`record`, `multisource`, `geoCascade`, ...).
    pub options: serde_json::Map<String, serde_json::Value>,
    pub added_on: DateTime<Utc>,
}

impl PublishToken {
    /// Whether the token is in force at `now` (active, not expired).
    pub fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.is_active && self.expires_on.is_none_or(|e| e > now)
    }
}

/// What creating a Publish token needs (already validated).
#[derive(Debug, Clone, PartialEq)]
pub struct NewPublishToken {
    pub label: String,
    pub streams: Vec<StreamRule>,
    pub origin_cluster: String,
    pub expires_on: Option<DateTime<Utc>>,
    pub subscribe_requires_auth: bool,
    pub rules: AccessRules,
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// Order of a token list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortBy {
    /// Creation order (ties by id).
    #[default]
    AddedOn,
    /// By label.
    Name,
}

/// One page of a token list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: u32,
    /// Tokens per page.
    pub items_on_page: u32,
    pub sort_by: SortBy,
    pub descending: bool,
}

impl Default for Page {
    fn default() -> Self {
        Page { page: 1, items_on_page: u32::MAX, sort_by: SortBy::AddedOn, descending: false }
    }
}

impl Page {
    fn sql(&self) -> String {
        let col = match self.sort_by {
            SortBy::AddedOn => "added_on_ms",
            SortBy::Name => "label",
        };
        let dir = if self.descending { "DESC" } else { "ASC" };
        let offset = u64::from(self.page.max(1) - 1) * u64::from(self.items_on_page);
        format!(" ORDER BY {col} {dir}, id {dir} LIMIT {} OFFSET {offset}", self.items_on_page)
    }
}

/// Read access to tokens and the IP bindings, what verification needs.
pub trait TokenLookup {
    /// The Subscribe token with this id.
    fn subscribe_by_id(&self, id: i64) -> Result<Option<SubscribeToken>, StoreError>;
    /// The Subscribe token with this token string.
    fn subscribe_by_token(&self, token: &str) -> Result<Option<SubscribeToken>, StoreError>;
    /// Every Publish token (the `subscribeRequiresAuth` of a stream).
    fn publish_tokens(&self) -> Result<Vec<PublishToken>, StoreError>;
    /// Bind `ip` to the token usage `key` if fewer than `max` IPs are bound
    /// to it yet; whether `ip` is (now) bound.
    fn bind_ip(&self, key: &str, ip: &str, max: u32) -> Result<bool, StoreError>;
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
CREATE TABLE IF NOT EXISTS bound_ips (
    token_key TEXT NOT NULL,
    ip        TEXT NOT NULL,
    PRIMARY KEY (token_key, ip)
);
CREATE TABLE IF NOT EXISTS console_sessions (
    id_digest  BLOB PRIMARY KEY,
    key_digest BLOB NOT NULL,
    csrf       TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
";

/// A console session as the store keeps it (`console_sessions`): by the
/// SHA-256 of its id (the id itself is only in the cookie), with the
/// SHA-256 of the secret that opened it, so that its role is read from the
/// current configuration at every request (a secret removed from the
/// configuration ends its sessions).
#[derive(Debug, Clone)]
pub struct StoredSession {
    pub key_digest: [u8; 32],
    pub csrf: String,
    pub expires: DateTime<Utc>,
}

/// Columns added after the first release: `(table, column, definition)`,
/// added at open when missing (stores created earlier keep their data).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("subscribe_tokens", "bind_ips_on_usage", "INTEGER NOT NULL DEFAULT 0"),
    ("subscribe_tokens", "allowed_countries", "TEXT NOT NULL DEFAULT '[]'"),
    ("subscribe_tokens", "denied_countries", "TEXT NOT NULL DEFAULT '[]'"),
    ("publish_tokens", "origin_cluster", "TEXT NOT NULL DEFAULT 'Auto'"),
    ("publish_tokens", "expires_on_ms", "INTEGER"),
    ("publish_tokens", "allowed_origins", "TEXT NOT NULL DEFAULT '[]'"),
    ("publish_tokens", "allowed_ip_addresses", "TEXT NOT NULL DEFAULT '[]'"),
    ("publish_tokens", "bind_ips_on_usage", "INTEGER NOT NULL DEFAULT 0"),
    ("publish_tokens", "allowed_countries", "TEXT NOT NULL DEFAULT '[]'"),
    ("publish_tokens", "denied_countries", "TEXT NOT NULL DEFAULT '[]'"),
    ("publish_tokens", "options", "TEXT NOT NULL DEFAULT '{}'"),
];

const SUB_COLS: &str = "id, token, label, streams, tracking_id, origin_cluster, expires_on_ms, is_active, allowed_origins, \
     allowed_ip_addresses, bind_ips_on_usage, allowed_countries, denied_countries, added_on_ms";
const PUB_COLS: &str = "id, token, label, streams, origin_cluster, expires_on_ms, subscribe_requires_auth, is_active, \
     allowed_origins, allowed_ip_addresses, bind_ips_on_usage, allowed_countries, denied_countries, options, added_on_ms";

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

/// `t` rounded down to the milliseconds the store keeps.
fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis()).single().unwrap_or(t)
}

fn ms_to_time(table: &'static str, id: i64, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms).single().ok_or_else(|| StoreError::Corrupt { table, id, message: format!("bad time {ms}") })
}

fn from_json<T: serde::de::DeserializeOwned>(table: &'static str, id: i64, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { table, id, message: e.to_string() })
}

fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing plain strings, numbers and bools cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

/// The columns shared by both token tables, as read.
struct CommonRow {
    id: i64,
    token: String,
    label: String,
    streams: String,
    origin_cluster: String,
    expires_on_ms: Option<i64>,
    is_active: bool,
    allowed_origins: String,
    allowed_ip_addresses: String,
    bind_ips_on_usage: i64,
    allowed_countries: String,
    denied_countries: String,
    added_on_ms: i64,
}

impl CommonRow {
    fn rules(&self, t: &'static str) -> Result<AccessRules, StoreError> {
        let id = self.id;
        Ok(AccessRules {
            allowed_origins: from_json(t, id, &self.allowed_origins)?,
            allowed_ip_addresses: from_json(t, id, &self.allowed_ip_addresses)?,
            bind_ips_on_usage: u32::try_from(self.bind_ips_on_usage).map_err(|_| StoreError::Corrupt {
                table: t,
                id,
                message: "bind_ips_on_usage".into(),
            })?,
            allowed_countries: from_json(t, id, &self.allowed_countries)?,
            denied_countries: from_json(t, id, &self.denied_countries)?,
        })
    }
}

const SUB: &str = "subscribe_tokens";
const PUB: &str = "publish_tokens";

fn read_sub(r: &Row<'_>) -> rusqlite::Result<(CommonRow, Option<String>)> {
    Ok((
        CommonRow {
            id: r.get(0)?,
            token: r.get(1)?,
            label: r.get(2)?,
            streams: r.get(3)?,
            origin_cluster: r.get(5)?,
            expires_on_ms: r.get(6)?,
            is_active: r.get(7)?,
            allowed_origins: r.get(8)?,
            allowed_ip_addresses: r.get(9)?,
            bind_ips_on_usage: r.get(10)?,
            allowed_countries: r.get(11)?,
            denied_countries: r.get(12)?,
            added_on_ms: r.get(13)?,
        },
        r.get(4)?,
    ))
}

fn decode_sub((c, tracking_id): (CommonRow, Option<String>)) -> Result<SubscribeToken, StoreError> {
    let rules = c.rules(SUB)?;
    Ok(SubscribeToken {
        id: c.id,
        streams: from_json(SUB, c.id, &c.streams)?,
        expires_on: c.expires_on_ms.map(|ms| ms_to_time(SUB, c.id, ms)).transpose()?,
        added_on: ms_to_time(SUB, c.id, c.added_on_ms)?,
        token: c.token,
        label: c.label,
        tracking_id,
        origin_cluster: c.origin_cluster,
        is_active: c.is_active,
        rules,
    })
}

fn read_pub(r: &Row<'_>) -> rusqlite::Result<(CommonRow, bool, String)> {
    Ok((
        CommonRow {
            id: r.get(0)?,
            token: r.get(1)?,
            label: r.get(2)?,
            streams: r.get(3)?,
            origin_cluster: r.get(4)?,
            expires_on_ms: r.get(5)?,
            is_active: r.get(7)?,
            allowed_origins: r.get(8)?,
            allowed_ip_addresses: r.get(9)?,
            bind_ips_on_usage: r.get(10)?,
            allowed_countries: r.get(11)?,
            denied_countries: r.get(12)?,
            added_on_ms: r.get(14)?,
        },
        r.get(6)?,
        r.get(13)?,
    ))
}

fn decode_pub((c, subscribe_requires_auth, options): (CommonRow, bool, String)) -> Result<PublishToken, StoreError> {
    let rules = c.rules(PUB)?;
    Ok(PublishToken {
        id: c.id,
        streams: from_json(PUB, c.id, &c.streams)?,
        expires_on: c.expires_on_ms.map(|ms| ms_to_time(PUB, c.id, ms)).transpose()?,
        added_on: ms_to_time(PUB, c.id, c.added_on_ms)?,
        options: from_json(PUB, c.id, &options)?,
        token: c.token,
        label: c.label,
        origin_cluster: c.origin_cluster,
        is_active: c.is_active,
        subscribe_requires_auth,
        rules,
    })
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
        // Two processes opening a new file at once (API replicas starting
        // together) can deadlock on its locks, switching it to WAL at the
        // same time: SQLite then answers one of them SQLITE_BUSY at once,
        // without the busy timeout. Such an open is retried for up to 10 s.
        let started = std::time::Instant::now();
        loop {
            match Self::open_once(path) {
                Err(StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)))
                    if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                        && started.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20 + rand::random::<u64>() % 80));
                }
                other => return other,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Store, StoreError> {
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

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        // one process at a time (the write lock, waited for up to the busy
        // timeout): `api serve` replicas starting together on a new store
        // would otherwise both add the same column, and one would fail
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        for (table, column, def) in ADDED_COLUMNS {
            let have = {
                let mut stmt = tx.prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?;
                let names = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
                names
            };
            if !have.iter().any(|c| c == column) {
                tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {def}"))?;
            }
        }
        tx.commit()?;
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Record a console session unless `max` live ones exist; expired ones
    /// are removed first. `false`: too many.
    pub fn open_session(&self, id_digest: &[u8; 32], session: &StoredSession, max: usize, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM console_sessions WHERE expires_ms <= ?1", params![now.timestamp_millis()])?;
        let live: i64 = tx.query_row("SELECT count(*) FROM console_sessions", [], |r| r.get(0))?;
        if live >= max as i64 {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO console_sessions (id_digest, key_digest, csrf, expires_ms) VALUES (?1, ?2, ?3, ?4)",
            params![&id_digest[..], &session.key_digest[..], session.csrf, session.expires.timestamp_millis()],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// The live console session of `id_digest`.
    pub fn session(&self, id_digest: &[u8; 32], now: DateTime<Utc>) -> Result<Option<StoredSession>, StoreError> {
        let row: Option<(Vec<u8>, String, i64)> = self
            .conn()?
            .query_row(
                "SELECT key_digest, csrf, expires_ms FROM console_sessions WHERE id_digest = ?1 AND expires_ms > ?2",
                params![&id_digest[..], now.timestamp_millis()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((key, csrf, expires_ms)) = row else { return Ok(None) };
        let corrupt = |message: &str| StoreError::Corrupt { table: "console_sessions", id: 0, message: message.into() };
        let key_digest: [u8; 32] = key.try_into().map_err(|_| corrupt("key digest is not 32 bytes"))?;
        let expires = Utc.timestamp_millis_opt(expires_ms).single().ok_or_else(|| corrupt("expiry out of range"))?;
        Ok(Some(StoredSession { key_digest, csrf, expires }))
    }

    /// End a console session (sign-out); every API process sharing the store sees it ended.
    pub fn close_session(&self, id_digest: &[u8; 32]) -> Result<(), StoreError> {
        self.conn()?.execute("DELETE FROM console_sessions WHERE id_digest = ?1", params![&id_digest[..]])?;
        Ok(())
    }

    /// A cheap query that proves the store answers (health checks).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn()?.query_row("SELECT count(*) FROM subscribe_tokens WHERE 0", [], |_| Ok(()))?;
        Ok(())
    }

    /// Create an active Subscribe token with a fresh token string.
    pub fn create_subscribe(&self, new: NewSubscribeToken, now: DateTime<Utc>) -> Result<SubscribeToken, StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO subscribe_tokens (token, label, streams, tracking_id, origin_cluster, expires_on_ms, is_active, allowed_origins,
             allowed_ip_addresses, bind_ips_on_usage, allowed_countries, denied_countries, added_on_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                generate_token(),
                new.label,
                to_json(&new.streams),
                new.tracking_id,
                new.origin_cluster,
                new.expires_on.map(|t| t.timestamp_millis()),
                to_json(&new.rules.allowed_origins),
                to_json(&new.rules.allowed_ip_addresses),
                new.rules.bind_ips_on_usage,
                to_json(&new.rules.allowed_countries),
                to_json(&new.rules.denied_countries),
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
        let row = conn.query_row(&format!("SELECT {SUB_COLS} FROM subscribe_tokens WHERE id = ?1"), params![id], read_sub).optional()?;
        row.map(decode_sub).transpose()
    }

    /// The Subscribe token with this token string.
    pub fn get_subscribe_by_token(&self, token: &str) -> Result<Option<SubscribeToken>, StoreError> {
        let conn = self.conn()?;
        let row =
            conn.query_row(&format!("SELECT {SUB_COLS} FROM subscribe_tokens WHERE token = ?1"), params![token], read_sub).optional()?;
        row.map(decode_sub).transpose()
    }

    /// One page of the Subscribe tokens.
    pub fn list_subscribe(&self, page: Page) -> Result<Vec<SubscribeToken>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("SELECT {SUB_COLS} FROM subscribe_tokens{}", page.sql()))?;
        let rows = stmt.query_map([], read_sub)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(decode_sub).collect()
    }

    /// Change a Subscribe token with `change` (which may refuse); `None`
    /// when there is no such token. The id, tracking id and creation time
    /// are kept whatever `change` does. See [`Store::update_row`].
    pub fn update_subscribe<E: From<StoreError>>(
        &self,
        id: i64,
        change: impl FnOnce(&mut SubscribeToken) -> Result<(), E>,
    ) -> Result<Option<SubscribeToken>, E> {
        let select = format!("SELECT {SUB_COLS} FROM subscribe_tokens WHERE id = ?1");
        let change = |t: &mut SubscribeToken| {
            let keep = (t.id, t.tracking_id.clone(), t.added_on);
            change(t)?;
            (t.id, t.tracking_id, t.added_on) = keep;
            t.expires_on = t.expires_on.map(to_millis);
            Ok(())
        };
        self.update_row(&select, id, read_sub, decode_sub, change, |tx, t| {
            tx.execute(
                "UPDATE subscribe_tokens SET token = ?2, label = ?3, streams = ?4, origin_cluster = ?5, expires_on_ms = ?6, is_active = ?7,
                 allowed_origins = ?8, allowed_ip_addresses = ?9, bind_ips_on_usage = ?10, allowed_countries = ?11, denied_countries = ?12
                 WHERE id = ?1",
                params![
                    id,
                    t.token,
                    t.label,
                    to_json(&t.streams),
                    t.origin_cluster,
                    t.expires_on.map(|e| e.timestamp_millis()),
                    t.is_active,
                    to_json(&t.rules.allowed_origins),
                    to_json(&t.rules.allowed_ip_addresses),
                    t.rules.bind_ips_on_usage,
                    to_json(&t.rules.allowed_countries),
                    to_json(&t.rules.denied_countries),
                ],
            )
        })
    }

    /// Read the row `id` with `select` (`... WHERE id = ?1`), apply
    /// `change`, and `write` it back, in one immediate transaction under the
    /// connection's lock: a concurrent update (a revocation, say) is never
    /// overwritten by a stale copy. Answers the token as written (no second
    /// read: the callers keep the columns `write` leaves alone and round
    /// times to the stored milliseconds).
    fn update_row<R, T, E: From<StoreError>>(
        &self,
        select: &str,
        id: i64,
        read: fn(&Row<'_>) -> rusqlite::Result<R>,
        decode: fn(R) -> Result<T, StoreError>,
        change: impl FnOnce(&mut T) -> Result<(), E>,
        write: impl FnOnce(&rusqlite::Transaction<'_>, &T) -> rusqlite::Result<usize>,
    ) -> Result<Option<T>, E> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(StoreError::from)?;
        let row = tx.query_row(select, params![id], read).optional().map_err(StoreError::from)?;
        let Some(mut t) = row.map(decode).transpose()? else { return Ok(None) };
        change(&mut t)?;
        write(&tx, &t).map_err(StoreError::from)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(Some(t))
    }

    /// Delete a Subscribe token; whether it existed. Viewer JWTs signed with
    /// it stop verifying at once.
    pub fn delete_subscribe(&self, id: i64) -> Result<bool, StoreError> {
        Ok(self.conn()?.execute("DELETE FROM subscribe_tokens WHERE id = ?1", params![id])? == 1)
    }

    /// Create an active Publish token with a fresh token string.
    pub fn create_publish(&self, new: NewPublishToken, now: DateTime<Utc>) -> Result<PublishToken, StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO publish_tokens (token, label, streams, origin_cluster, expires_on_ms, subscribe_requires_auth, is_active,
             allowed_origins, allowed_ip_addresses, bind_ips_on_usage, allowed_countries, denied_countries, options, added_on_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                generate_token(),
                new.label,
                to_json(&new.streams),
                new.origin_cluster,
                new.expires_on.map(|t| t.timestamp_millis()),
                new.subscribe_requires_auth,
                to_json(&new.rules.allowed_origins),
                to_json(&new.rules.allowed_ip_addresses),
                new.rules.bind_ips_on_usage,
                to_json(&new.rules.allowed_countries),
                to_json(&new.rules.denied_countries),
                to_json(&new.options),
                now.timestamp_millis(),
            ],
        )?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.get_publish(id)?.ok_or(StoreError::Sqlite(rusqlite::Error::QueryReturnedNoRows))
    }

    /// The Publish token with this id.
    pub fn get_publish(&self, id: i64) -> Result<Option<PublishToken>, StoreError> {
        let conn = self.conn()?;
        let row = conn.query_row(&format!("SELECT {PUB_COLS} FROM publish_tokens WHERE id = ?1"), params![id], read_pub).optional()?;
        row.map(decode_pub).transpose()
    }

    /// One page of the Publish tokens.
    pub fn list_publish(&self, page: Page) -> Result<Vec<PublishToken>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!("SELECT {PUB_COLS} FROM publish_tokens{}", page.sql()))?;
        let rows = stmt.query_map([], read_pub)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(decode_pub).collect()
    }

    /// Change a Publish token, as [`Store::update_subscribe`] does (the id
    /// and creation time are kept).
    pub fn update_publish<E: From<StoreError>>(
        &self,
        id: i64,
        change: impl FnOnce(&mut PublishToken) -> Result<(), E>,
    ) -> Result<Option<PublishToken>, E> {
        let select = format!("SELECT {PUB_COLS} FROM publish_tokens WHERE id = ?1");
        let change = |t: &mut PublishToken| {
            let keep = (t.id, t.added_on);
            change(t)?;
            (t.id, t.added_on) = keep;
            t.expires_on = t.expires_on.map(to_millis);
            Ok(())
        };
        self.update_row(&select, id, read_pub, decode_pub, change, |tx, t| {
            tx.execute(
                "UPDATE publish_tokens SET token = ?2, label = ?3, streams = ?4, origin_cluster = ?5, expires_on_ms = ?6,
                 subscribe_requires_auth = ?7, is_active = ?8, allowed_origins = ?9, allowed_ip_addresses = ?10, bind_ips_on_usage = ?11,
                 allowed_countries = ?12, denied_countries = ?13, options = ?14 WHERE id = ?1",
                params![
                    id,
                    t.token,
                    t.label,
                    to_json(&t.streams),
                    t.origin_cluster,
                    t.expires_on.map(|e| e.timestamp_millis()),
                    t.subscribe_requires_auth,
                    t.is_active,
                    to_json(&t.rules.allowed_origins),
                    to_json(&t.rules.allowed_ip_addresses),
                    t.rules.bind_ips_on_usage,
                    to_json(&t.rules.allowed_countries),
                    to_json(&t.rules.denied_countries),
                    to_json(&t.options),
                ],
            )
        })
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
    fn publish_tokens(&self) -> Result<Vec<PublishToken>, StoreError> {
        self.list_publish(Page::default())
    }
    fn bind_ip(&self, key: &str, ip: &str, max: u32) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let bound: bool =
            tx.query_row("SELECT count(*) > 0 FROM bound_ips WHERE token_key = ?1 AND ip = ?2", params![key, ip], |r| r.get(0))?;
        if bound {
            return Ok(true);
        }
        let n: u32 = tx.query_row("SELECT count(*) FROM bound_ips WHERE token_key = ?1", params![key], |r| r.get(0))?;
        if n >= max {
            return Ok(false);
        }
        tx.execute("INSERT INTO bound_ips (token_key, ip) VALUES (?1, ?2)", params![key, ip])?;
        tx.commit()?;
        Ok(true)
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
            rules: AccessRules { allowed_ip_addresses: vec!["10.0.0.0/8".into()], ..Default::default() },
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
        assert_eq!(s.list_subscribe(Page::default()).unwrap().len(), 2);
        let u = s
            .update_subscribe(t.id, |t| {
                t.is_active = false;
                t.label = "x".into();
                t.tracking_id = Some("changed".into()); // ignored: immutable
                Ok::<_, StoreError>(())
            })
            .unwrap()
            .unwrap();
        assert!(!u.is_active);
        assert_eq!(u.tracking_id.as_deref(), Some("acme"));
        assert_eq!(s.get_subscribe(t.id).unwrap().unwrap(), u);
        assert!(s.delete_subscribe(t.id).unwrap());
        assert!(!s.delete_subscribe(t.id).unwrap());
        assert!(s.get_subscribe(t.id).unwrap().is_none());
        assert!(s.update_subscribe(t.id, |_| Ok::<_, StoreError>(())).unwrap().is_none());
    }

    #[test]
    fn pages_sort_and_split_the_list() {
        let s = Store::open_in_memory().unwrap();
        let t0 = Utc.timestamp_millis_opt(1_760_000_000_000).unwrap();
        for (i, label) in ["c", "a", "b"].iter().enumerate() {
            s.create_subscribe(NewSubscribeToken { label: (*label).into(), ..new_sub(None) }, t0 + chrono::Duration::seconds(i as i64))
                .unwrap();
        }
        let labels = |p: Page| s.list_subscribe(p).unwrap().into_iter().map(|t| t.label).collect::<Vec<_>>();
        let page = |page, n, sort_by, descending| Page { page, items_on_page: n, sort_by, descending };
        assert_eq!(labels(page(1, 10, SortBy::Name, false)), ["a", "b", "c"]);
        assert_eq!(labels(page(1, 2, SortBy::Name, true)), ["c", "b"]);
        assert_eq!(labels(page(2, 2, SortBy::Name, true)), ["a"]);
        assert_eq!(labels(page(3, 2, SortBy::Name, true)), Vec::<String>::new());
        assert_eq!(labels(page(1, 10, SortBy::AddedOn, false)), ["c", "a", "b"]);
    }

    #[test]
    fn a_store_of_the_first_release_opens_with_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE subscribe_tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, token TEXT NOT NULL UNIQUE, label TEXT NOT NULL,
               streams TEXT NOT NULL, tracking_id TEXT, origin_cluster TEXT NOT NULL, expires_on_ms INTEGER, is_active INTEGER NOT NULL,
               allowed_origins TEXT NOT NULL, allowed_ip_addresses TEXT NOT NULL, added_on_ms INTEGER NOT NULL);
             CREATE TABLE publish_tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, token TEXT NOT NULL UNIQUE, label TEXT NOT NULL,
               streams TEXT NOT NULL, subscribe_requires_auth INTEGER NOT NULL, is_active INTEGER NOT NULL, added_on_ms INTEGER NOT NULL);
             INSERT INTO subscribe_tokens VALUES (7, 'aa', 'old', '[{\"streamName\":\"live\",\"isRegex\":false}]', 'acme', 'auto',
               NULL, 1, '[\"https://a.tv\"]', '[]', 1760000000000);
             INSERT INTO publish_tokens VALUES (3, 'bb', 'pub', '[{\"streamName\":\"live\",\"isRegex\":false}]', 1, 1, 1760000000000);",
        )
        .unwrap();
        drop(conn);
        let s = Store::open(&path).unwrap();
        let t = s.get_subscribe(7).unwrap().unwrap();
        assert_eq!((t.tracking_id.as_deref(), t.rules.allowed_origins.as_slice()), (Some("acme"), &["https://a.tv".to_string()][..]));
        assert_eq!(t.rules.bind_ips_on_usage, 0);
        let p = s.get_publish(3).unwrap().unwrap();
        assert!(p.subscribe_requires_auth && p.options.is_empty() && p.origin_cluster == "Auto");
        drop(s);
        assert!(Store::open(&path).is_ok(), "opening twice adds nothing twice");
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
