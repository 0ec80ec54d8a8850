//! The API's SQLite file (`rusqlite`, SQLite bundled): one file
//! (`store_path`) shared by the API replicas, its tables created (and
//! columns added) at open. It holds the tokens (read and written by
//! [`crate::tokens::store`]), the IP bindings of `bindIpsOnUsage` and the
//! console sessions. Every statement is parameterised.

use chrono::{DateTime, TimeZone, Utc};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use thiserror::Error;

/// Errors of the token store.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The SQLite file or its directory could not be created, or the file
    /// could not be made readable by its owner only.
    #[error("cannot create store directory {path}: {source}")]
    Dir {
        /// The directory, or the SQLite file itself when creating it or
        /// restricting it to its owner (mode `0600`) failed.
        path: PathBuf,
        /// What the file system answered.
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be decoded.
    #[error("corrupt row {table}/{id}: {message}")]
    Corrupt {
        /// The table of the row (`subscribe_tokens`, `publish_tokens`, `console_sessions`).
        table: &'static str,
        /// The row's id (`0` for a console session, which is keyed by a digest).
        id: i64,
        /// Why the row does not decode (a time out of range, bad JSON, a value of the wrong type).
        message: String,
    },
    /// A thread panicked while holding the connection.
    #[error("token store lock poisoned")]
    Poisoned,
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
CREATE TABLE IF NOT EXISTS allowance_notifications (
    id              TEXT PRIMARY KEY,
    partner         TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_ms INTEGER NOT NULL,
    lease_until_ms  INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_ms      INTEGER NOT NULL,
    delivered_ms    INTEGER
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
pub(crate) struct StoredSession {
    pub(crate) key_digest: [u8; 32],
    pub(crate) csrf: String,
    pub(crate) expires: DateTime<Utc>,
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
pub(crate) fn to_millis(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(t.timestamp_millis()).single().unwrap_or(t)
}

pub(crate) fn ms_to_time(table: &'static str, id: i64, ms: i64) -> Result<DateTime<Utc>, StoreError> {
    Utc.timestamp_millis_opt(ms).single().ok_or_else(|| StoreError::Corrupt { table, id, message: format!("bad time {ms}") })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(table: &'static str, id: i64, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { table, id, message: e.to_string() })
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing plain strings, numbers and bools cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
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

    pub(crate) fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    /// Record a console session unless `max` live ones exist; expired ones
    /// are removed first. `false`: too many.
    pub(crate) fn open_session(
        &self,
        id_digest: &[u8; 32],
        session: &StoredSession,
        max: usize,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
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
    pub(crate) fn session(&self, id_digest: &[u8; 32], now: DateTime<Utc>) -> Result<Option<StoredSession>, StoreError> {
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
    pub(crate) fn close_session(&self, id_digest: &[u8; 32]) -> Result<(), StoreError> {
        self.conn()?.execute("DELETE FROM console_sessions WHERE id_digest = ?1", params![&id_digest[..]])?;
        Ok(())
    }

    /// A cheap query that proves the store answers (health checks).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.conn()?.query_row("SELECT count(*) FROM subscribe_tokens WHERE 0", [], |_| Ok(()))?;
        Ok(())
    }
}

impl Store {
    /// Bind `ip` to the token usage `key` if fewer than `max` IPs are bound
    /// to it yet; whether `ip` is (now) bound (one immediate transaction:
    /// replicas sharing the file never bind more than `max`).
    pub fn bind_ip(&self, key: &str, ip: &str, max: u32) -> Result<bool, StoreError> {
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
