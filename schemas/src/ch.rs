//! ClickHouse connection settings and the migration runner.
//!
//! Migrations are the versioned SQL files in `schemas/migrations/`, embedded at
//! build time. `{db}` in a file stands for the target database. Each file may
//! hold several statements separated by `;` at the end of a line. Applied
//! versions are recorded in `{db}.schema_migrations` with a checksum of the
//! file; an applied file that was edited afterwards is an error. Every
//! statement is written to be safe to re-run (`IF NOT EXISTS`), so two
//! processes migrating at once, or a run interrupted half-way, do no harm.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where and how to reach ClickHouse (HTTP interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// User name.
    pub user: String,
    /// Password (empty for none).
    pub password: String,
    /// Database that holds the metering tables.
    pub database: String,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            user: "default".into(),
            password: String::new(),
            database: "metering".into(),
        }
    }
}

/// Errors of the ClickHouse helpers.
#[derive(Debug, Error)]
pub enum ChError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("invalid database name {0:?}: use letters, digits and '_' only")]
    BadIdentifier(String),
    #[error("migration {version} ({name}) was applied with checksum {applied} but the file now has {current}; never edit an applied migration, add a new one")]
    ChecksumMismatch { version: u32, name: String, applied: String, current: String },
    #[error("migration {version} ({name}), statement {index}: {source}")]
    Statement { version: u32, name: String, index: usize, source: clickhouse::error::Error },
}

/// Check that `name` is a plain identifier, safe to put into SQL unquoted.
pub fn check_identifier(name: &str) -> Result<&str, ChError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(name)
    } else {
        Err(ChError::BadIdentifier(name.to_string()))
    }
}

impl ClickHouseConfig {
    /// A client bound to [`ClickHouseConfig::database`].
    ///
    /// Compression is off and row validation disabled: both are required by
    /// ClickHouse 18.16 (with LZ4 a SELECT silently returns no rows; the
    /// validation needs `RowBinaryWithNamesAndTypes`) and cost little on loopback.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    /// A client not bound to a database (for `CREATE DATABASE`).
    pub fn server_client(&self) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_compression(clickhouse::Compression::None)
            .with_validation(false);
        if !self.password.is_empty() {
            c = c.with_password(&self.password);
        }
        c
    }

    /// The database name, checked to be a plain identifier.
    pub fn db(&self) -> Result<&str, ChError> {
        check_identifier(&self.database)
    }
}

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// All migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "contract_tables",
        sql: include_str!("../migrations/0001_contract_tables.sql"),
    },
    Migration {
        version: 2,
        name: "aggregator_state",
        sql: include_str!("../migrations/0002_aggregator_state.sql"),
    },
    Migration {
        version: 3,
        name: "rollups",
        sql: include_str!("../migrations/0003_rollups.sql"),
    },
    Migration {
        version: 4,
        name: "billing",
        sql: include_str!("../migrations/0004_billing.sql"),
    },
];

impl Migration {
    /// The statements of this file with `{db}` replaced.
    pub fn statements(&self, db: &str) -> Vec<String> {
        let text: String = self
            .sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        text.split(";\n")
            .chain(std::iter::once(""))
            .map(|s| s.trim().trim_end_matches(';').trim().replace("{db}", db))
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// FNV-1a 64 of the file text: detects edits of an applied migration.
    pub fn checksum(&self) -> String {
        let mut h: u64 = 0xcbf29ce484222325;
        for b in self.sql.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        format!("{h:016x}")
    }
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct AppliedRow {
    version: u32,
    checksum: String,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub applied: Vec<u32>,
    pub already: Vec<u32>,
}

/// Apply every migration not yet recorded in `{db}.schema_migrations`.
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<MigrationReport, ChError> {
    let db = cfg.db()?;
    let server = cfg.server_client();
    server.query(&format!("CREATE DATABASE IF NOT EXISTS {db}")).execute().await?;
    server
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.schema_migrations \
             (version UInt32, name String, checksum String, applied_at DateTime) \
             ENGINE = MergeTree ORDER BY version"
        ))
        .execute()
        .await?;
    let applied: Vec<AppliedRow> = server
        .query(&format!("SELECT version, any(checksum) FROM {db}.schema_migrations GROUP BY version"))
        .fetch_all()
        .await?;
    let mut report = MigrationReport { applied: vec![], already: vec![] };
    for m in MIGRATIONS {
        if let Some(row) = applied.iter().find(|r| r.version == m.version) {
            if row.checksum != m.checksum() {
                return Err(ChError::ChecksumMismatch {
                    version: m.version,
                    name: m.name.into(),
                    applied: row.checksum.clone(),
                    current: m.checksum(),
                });
            }
            report.already.push(m.version);
            continue;
        }
        for (index, stmt) in m.statements(db).iter().enumerate() {
            server.query(stmt).execute().await.map_err(|source| ChError::Statement {
                version: m.version,
                name: m.name.into(),
                index: index + 1,
                source,
            })?;
        }
        server
            .query(&format!(
                "INSERT INTO {db}.schema_migrations (version, name, checksum, applied_at) \
                 VALUES (?, ?, ?, now())"
            ))
            .bind(m.version)
            .bind(m.name)
            .bind(m.checksum())
            .execute()
            .await?;
        tracing::info!(version = m.version, name = m.name, "MigrationApplied");
        report.applied.push(m.version);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("metering").is_ok());
        assert!(check_identifier("metering_test_12").is_ok());
        for bad in ["", "a-b", "a;DROP", "1abc", "a b", "`x`"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_migration_splits_into_statements_with_db_replaced() {
        for m in MIGRATIONS {
            let stmts = m.statements("mydb");
            assert!(!stmts.is_empty(), "migration {} has no statements", m.version);
            for s in &stmts {
                assert!(!s.contains("{db}"));
                assert!(!s.ends_with(';'));
            }
        }
        let versions: Vec<u32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(versions, sorted, "versions must be unique and ascending");
    }
}
