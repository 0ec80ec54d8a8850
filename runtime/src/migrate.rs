//! The ClickHouse migration runner.
//!
//! The runner applies a [`Schema`]: versioned SQL files (the `warehouse`
//! crate owns the project's, in `warehouse/migrations/`), where `{db}`
//! stands for the target database and statements are separated by `;` at
//! the end of a line. Applied versions are recorded in
//! `{db}.schema_migrations` with a checksum of the file; an applied file
//! that was edited afterwards is an error. Every statement is written to be
//! safe to re-run (`IF NOT EXISTS`), so two processes migrating at once, or a
//! run interrupted half-way, do no harm. The schema renders each statement
//! for the [`Layout`] (one server, or a sharded and replicated cluster:
//! `warehouse::cluster`).

use crate::ch::{ddl_lock, ddl_unlock, leading_identifier, ChError, ClickHouseConfig, Layout, LockWait};
use crate::events::{self, InternalEvent};
use serde::Deserialize;

/// What the migration runner applies: the schema's migrations in order,
/// and how a statement is rendered for a layout (the `warehouse` crate
/// owns both: `warehouse::SCHEMA`).
#[derive(Debug, Clone, Copy)]
pub struct Schema {
    /// Every migration, in ascending version order.
    pub migrations: &'static [Migration],
    /// The statements of a migration for a layout, `{db}` replaced.
    pub render: fn(&Migration, &str, &Layout) -> Vec<String>,
}

/// One migration file.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number: unique, ascending, recorded in `{db}.schema_migrations` once applied.
    pub version: u32,
    /// Short name: its file's name after the number (e.g. `contract_tables`).
    pub name: &'static str,
    /// The file's text: statements ended by `;` at the end of a line, `{db}` for the database.
    pub sql: &'static str,
    /// Checksums of earlier texts of this file that are accepted as applied.
    /// Only for a file whose first text could not run on every supported
    /// ClickHouse version, and only when a later migration replaces whatever
    /// that text created differently.
    pub former_checksums: &'static [&'static str],
}

impl Migration {
    /// The statements of this file with `{db}` replaced.
    pub fn statements(&self, db: &str) -> Vec<String> {
        let text: String = self.sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
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

/// Whether a statement that cannot be written to be re-run safely
/// (`RENAME TABLE`, `ALTER TABLE ... ADD COLUMN`) already took effect: a
/// migration interrupted half-way then goes on where it stopped.
async fn already_done(server: &clickhouse::Client, db: &str, stmt: &str) -> Result<bool, ChError> {
    if let Some(rest) = stmt.strip_prefix(&format!("RENAME TABLE {db}.")) {
        // done once its target exists (a later statement may have made a
        // new table under the source's name) or its source is gone
        let from = leading_identifier(rest);
        let to = rest[from.len()..].trim_start().strip_prefix("TO ").and_then(|r| r.trim_start().strip_prefix(&format!("{db}.")));
        let exists = |name: String| async move {
            server.query("SELECT count() FROM system.tables WHERE database = ? AND name = ?").bind(db).bind(name).fetch_one::<u64>().await
        };
        if let Some(to) = to {
            if exists(leading_identifier(to).to_string()).await? > 0 {
                return Ok(true);
            }
        }
        return Ok(exists(from.to_string()).await? == 0);
    }
    if let Some(rest) = stmt.strip_prefix(&format!("ALTER TABLE {db}.")) {
        let table = leading_identifier(rest);
        if let Some(at) = rest.find(" ADD COLUMN ") {
            let column = leading_identifier(&rest[at + " ADD COLUMN ".len()..]);
            let n: u64 = server
                .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
                .bind(db)
                .bind(table)
                .bind(column)
                .fetch_one()
                .await?;
            return Ok(n > 0);
        }
    }
    Ok(false)
}

#[derive(Debug, clickhouse::Row, Deserialize)]
struct AppliedRow {
    version: u32,
    checksum: String,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions this run applied, in order.
    pub applied: Vec<u32>,
    /// Versions found already recorded (their checksums checked), in order.
    pub already: Vec<u32>,
}

/// Apply every migration not yet recorded in `{db}.schema_migrations`.
///
/// A migration is recorded after its last statement. Every statement can be
/// run again after a failure at any point (`IF NOT EXISTS`, drop before
/// create, inserts that skip what exists, and `already_done` for renames
/// and added columns), so a failed run is finished by running `migrate` again.
pub async fn migrate(cfg: &ClickHouseConfig, schema: &Schema) -> Result<MigrationReport, ChError> {
    migrate_until(cfg, schema, None).await
}

/// Like [`migrate`], but stops with [`ChError::Interrupted`] just before
/// statement `statement` (1-based) of migration `version` (one past its last:
/// after every statement, before it is recorded), as a crash there would:
/// for tests of re-running an interrupted migration.
pub async fn migrate_interrupted(
    cfg: &ClickHouseConfig,
    schema: &Schema,
    version: u32,
    statement: usize,
) -> Result<MigrationReport, ChError> {
    migrate_until(cfg, schema, Some((version, statement))).await
}

async fn migrate_until(cfg: &ClickHouseConfig, schema: &Schema, stop: Option<(u32, usize)>) -> Result<MigrationReport, ChError> {
    let db = cfg.db()?;
    let layout = cfg.layout()?;
    let server = cfg.server_client();
    let on = cfg.ddl_on()?;
    server.query(&format!("CREATE DATABASE IF NOT EXISTS {db}{on}")).execute().await?;
    // on a replicated cluster one record for all servers (a replica of it on
    // each), so that a member reaching another server finds what was applied
    let engine = match &layout {
        Layout::Cluster { replicated: true, on_cluster: true, .. } => {
            format!("{on} (version UInt32, name String, checksum String, applied_at DateTime) ENGINE = ReplicatedMergeTree('/clickhouse/tables/all/{db}/schema_migrations', '{{replica}}')")
        }
        _ => " (version UInt32, name String, checksum String, applied_at DateTime) ENGINE = MergeTree".to_string(),
    };
    server.query(&format!("CREATE TABLE IF NOT EXISTS {db}.schema_migrations{engine} ORDER BY version")).execute().await?;
    let applied_sql = format!("SELECT version, any(checksum) FROM {db}.schema_migrations GROUP BY version");
    let applied: Vec<AppliedRow> = server.query(&applied_sql).fetch_all().await?;
    if schema.migrations.iter().all(|m| applied.iter().any(|r| r.version == m.version)) {
        return apply(&server, db, &layout, schema, &applied, stop).await; // checks the checksums, applies nothing
    }
    // one migrating process at a time (several members start together); then
    // read again what the one before it applied
    lock(&server, db, &on).await?;
    let result = async {
        let applied: Vec<AppliedRow> = server.query(&applied_sql).fetch_all().await?;
        apply(&server, db, &layout, schema, &applied, stop).await
    }
    .await;
    unlock(&server, db, &on).await;
    result
}

/// How long a migration lock may be held before another process takes it
/// over (its holder crashed).
const LOCK_STALE_SECS: u64 = 900;

async fn lock(server: &clickhouse::Client, db: &str, on: &str) -> Result<(), ChError> {
    ddl_lock(server, db, "schema_migrations_lock", on, LOCK_STALE_SECS, LockWait::Wait).await.map(|_| ())
}

async fn unlock(server: &clickhouse::Client, db: &str, on: &str) {
    ddl_unlock(server, db, "schema_migrations_lock", on).await
}

/// Apply the migrations not in `applied`.
async fn apply(
    server: &clickhouse::Client,
    db: &str,
    layout: &Layout,
    schema: &Schema,
    applied: &[AppliedRow],
    stop: Option<(u32, usize)>,
) -> Result<MigrationReport, ChError> {
    let mut report = MigrationReport { applied: vec![], already: vec![] };
    for m in schema.migrations {
        if let Some(row) = applied.iter().find(|r| r.version == m.version) {
            if row.checksum != m.checksum() && !m.former_checksums.contains(&row.checksum.as_str()) {
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
        let statements = (schema.render)(m, db, layout);
        for (index, stmt) in statements.iter().enumerate() {
            if stop == Some((m.version, index + 1)) {
                return Err(ChError::Interrupted { version: m.version, index: index + 1 });
            }
            if already_done(server, db, stmt).await? {
                events::MigrationStatementAlreadyApplied { version: m.version, statement: index + 1 }.emit();
                continue;
            }
            if let Err(source) = server.query(stmt).execute().await {
                // ClickHouse 18.16's DDL worker can apply an `ALTER ... ON
                // CLUSTER` of a replicated table on every server and still
                // leave one host's task unfinished (its replica applied the
                // change first, and the worker fails to record its own
                // answer); the initiator then times out (code 159) although
                // the change is there, and the queue finishes in the
                // background. Such a statement counts as done once it shows.
                let timed_out = matches!(layout, Layout::Cluster { .. }) && source.to_string().contains("Code: 159");
                if timed_out && already_done(server, db, stmt).await? {
                    events::MigrationStatementTimedOutButApplied { version: m.version, statement: index + 1, error: &source }.emit();
                    continue;
                }
                return Err(ChError::Statement { version: m.version, name: m.name.into(), index: index + 1, source });
            }
        }
        if stop == Some((m.version, statements.len() + 1)) {
            // every statement ran, the migration is not recorded yet
            return Err(ChError::Interrupted { version: m.version, index: statements.len() + 1 });
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
        events::MigrationApplied { version: m.version, name: m.name }.emit();
        report.applied.push(m.version);
    }
    Ok(report)
}
