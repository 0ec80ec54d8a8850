//! The ClickHouse schema of the pipeline, in one place: every table's DDL
//! as versioned migrations (`warehouse/migrations/`, embedded at build
//! time), their rendering for a sharded and replicated cluster
//! ([`cluster`]), and [`migrate`], which applies them with `runtime`'s
//! migration runner.
//!
//! The row layout of every table a service writes row by row is here too
//! ([`tables`]), used by its writer: the aggregator (`aggregator::tables`:
//! the log tables, dead letters, dedup snapshots and checkpoints) and
//! billing (`billing::store`: invoices, lines, the ledger and adjustments),
//! each layout tested against the migrated table
//! (`tests/tests/it/foundation.rs`). The sealed tables are written by
//! `INSERT ... SELECT` from the logs (`aggregator::seal`). Which table holds
//! what, its grain and retention, and which question it answers fastest:
//! `docs/clickhouse.md`. The Avro event contract is elsewhere:
//! `schemas/`.

#![warn(missing_docs)]

pub mod cluster;
pub mod tables;

pub use runtime::ch::ChError;
use runtime::ch::ClickHouseConfig;
use runtime::migrate::Schema;
pub use runtime::migrate::{Migration, MigrationReport};

/// All migrations, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "contract_tables", sql: include_str!("../migrations/0001_contract_tables.sql"), former_checksums: &[] },
    Migration { version: 2, name: "aggregator_state", sql: include_str!("../migrations/0002_aggregator_state.sql"), former_checksums: &[] },
    Migration { version: 3, name: "rollups", sql: include_str!("../migrations/0003_rollups.sql"), former_checksums: &[] },
    Migration { version: 4, name: "billing", sql: include_str!("../migrations/0004_billing.sql"), former_checksums: &[] },
    // its first text created the fenced views with `ANY INNER JOIN` (refused by
    // current versions, and of another meaning since 19.14); migration 6 replaces them
    Migration {
        version: 5,
        name: "epoch_fencing",
        sql: include_str!("../migrations/0005_epoch_fencing.sql"),
        former_checksums: &["5eb5a22c80c8d994"],
    },
    Migration { version: 6, name: "fence_views", sql: include_str!("../migrations/0006_fence_views.sql"), former_checksums: &[] },
    Migration { version: 7, name: "contested_claims", sql: include_str!("../migrations/0007_contested_claims.sql"), former_checksums: &[] },
    Migration { version: 8, name: "billing_ledger", sql: include_str!("../migrations/0008_billing_ledger.sql"), former_checksums: &[] },
    Migration {
        version: 9,
        name: "sealed_aggregates",
        sql: include_str!("../migrations/0009_sealed_aggregates.sql"),
        former_checksums: &[],
    },
    Migration {
        version: 10,
        name: "log_by_insertion",
        sql: include_str!("../migrations/0010_log_by_insertion.sql"),
        former_checksums: &[],
    },
    Migration { version: 11, name: "latest_seal", sql: include_str!("../migrations/0011_latest_seal.sql"), former_checksums: &[] },
    Migration {
        version: 12,
        name: "reconcile_audits",
        sql: include_str!("../migrations/0012_reconcile_audits.sql"),
        former_checksums: &[],
    },
    Migration { version: 13, name: "seal_bound", sql: include_str!("../migrations/0013_seal_bound.sql"), former_checksums: &[] },
    Migration { version: 14, name: "flat_rollups", sql: include_str!("../migrations/0014_flat_rollups.sql"), former_checksums: &[] },
    Migration {
        version: 15,
        name: "one_seal_per_read",
        sql: include_str!("../migrations/0015_one_seal_per_read.sql"),
        former_checksums: &[],
    },
    Migration { version: 16, name: "seal_heads", sql: include_str!("../migrations/0016_seal_heads.sql"), former_checksums: &[] },
    Migration { version: 17, name: "seal_head", sql: include_str!("../migrations/0017_seal_head.sql"), former_checksums: &[] },
    Migration { version: 18, name: "short_seal_list", sql: include_str!("../migrations/0018_short_seal_list.sql"), former_checksums: &[] },
];

/// The schema the runner applies: [`MIGRATIONS`], rendered by [`cluster::render`].
pub const SCHEMA: Schema = Schema { migrations: MIGRATIONS, render: cluster::render };

/// Apply every migration not yet recorded in `{db}.schema_migrations`
/// (`runtime::migrate::migrate`: recorded after its last statement; a run that
/// failed at any statement is finished by running it again).
pub async fn migrate(cfg: &ClickHouseConfig) -> Result<MigrationReport, ChError> {
    runtime::migrate::migrate(cfg, &SCHEMA).await
}

/// [`migrate`], stopping with `ChError::Interrupted` just before statement
/// `statement` (1-based) of migration `version`, as a crash there would:
/// for tests of re-running an interrupted migration.
pub async fn migrate_interrupted(cfg: &ClickHouseConfig, version: u32, statement: usize) -> Result<MigrationReport, ChError> {
    runtime::migrate::migrate_interrupted(cfg, &SCHEMA, version, statement).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::render;
    use runtime::ch::Layout;

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
        assert!(!versions.is_empty());
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(versions, sorted, "versions must be unique and ascending");
    }

    #[test]
    fn cluster_layout_renders_local_replicated_tables_distributed_tables_and_local_views() {
        let layout = Layout::Cluster { cluster: "metering".into(), replicated: true, on_cluster: true };
        let all: Vec<String> = MIGRATIONS.iter().flat_map(|m| render(m, "db", &layout)).collect();
        let single: Vec<String> = MIGRATIONS.iter().flat_map(|m| m.statements("db")).collect();
        let kind = |p: &str| single.iter().filter(|s| s.starts_with(p)).count();
        let (tables, mvs, views) = (kind("CREATE TABLE"), kind("CREATE MATERIALIZED VIEW"), kind("CREATE VIEW"));
        let (drops, renames, alters) = (kind("DROP TABLE"), kind("RENAME TABLE"), kind("ALTER TABLE"));
        let others = single.len() - tables - mvs - views - drops - renames - alters;
        // a table: local + Distributed; a drop: both; a rename: local rename, drop and new Distributed;
        // an alter: of the local table, then the Distributed table dropped and made anew
        assert_eq!(all.len(), 2 * tables + mvs + views + 2 * drops + 3 * renames + 3 * alters + others);
        let find = |prefix: &str| all.iter().find(|s| s.starts_with(prefix)).unwrap_or_else(|| panic!("{prefix}: {all:#?}"));
        let local = find("CREATE TABLE IF NOT EXISTS db.usage_by_tracking_local ON CLUSTER metering (");
        assert!(local.contains("ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db/usage_by_tracking_local', '{replica}')\nORDER BY (tracking_id,"), "{local}");
        assert!(local.contains("src_offset    UInt64"), "columns kept: {local}");
        assert_eq!(
            find("CREATE TABLE IF NOT EXISTS db.usage_by_tracking ON"),
            "CREATE TABLE IF NOT EXISTS db.usage_by_tracking ON CLUSTER metering AS db.usage_by_tracking_local \
             ENGINE = Distributed(metering, db, usage_by_tracking_local, src_partition)"
        );
        let rollup = find("CREATE TABLE IF NOT EXISTS db.usage_by_tracking_hourly_local");
        assert!(rollup.contains("ReplicatedSummingMergeTree('/clickhouse/tables/{shard}/db/usage_by_tracking_hourly_local', '{replica}', (bytes_out, bytes_in, events))"), "{rollup}");
        let mv = find("CREATE MATERIALIZED VIEW IF NOT EXISTS db.usage_by_tracking_hourly_mv");
        assert!(mv.contains(" ON CLUSTER metering\nTO db.usage_by_tracking_hourly_local AS"), "{mv}");
        assert!(mv.contains("FROM db.usage_by_tracking_local"), "{mv}");
        assert!(find("CREATE TABLE IF NOT EXISTS db.aggregator_dedup ON").ends_with(", partition)"));
        // the fencing migration: renamed local tables under a new Distributed table, columns on both
        find("RENAME TABLE db.usage_by_tracking_local TO db.usage_by_tracking_log_local ON CLUSTER metering");
        find("DROP TABLE IF EXISTS db.usage_by_tracking ON CLUSTER metering");
        assert_eq!(
            find("CREATE TABLE IF NOT EXISTS db.usage_by_tracking_log ON"),
            "CREATE TABLE IF NOT EXISTS db.usage_by_tracking_log ON CLUSTER metering AS db.usage_by_tracking_log_local \
             ENGINE = Distributed(metering, db, usage_by_tracking_log_local, src_partition)"
        );
        find("ALTER TABLE db.usage_by_tracking_log_local ON CLUSTER metering ADD COLUMN src_epoch UInt64");
        assert!(!all.iter().any(|s| s.starts_with("ALTER TABLE db.usage_by_tracking_log ")), "no ALTER of a Distributed table");
        assert!(find("CREATE VIEW IF NOT EXISTS db.usage_by_tracking ON CLUSTER metering AS").contains("FROM db.usage_by_tracking_log\n"));
        find("DROP TABLE IF EXISTS db.usage_by_tracking_hourly_mv ON CLUSTER metering");
        find("DROP TABLE IF EXISTS db.usage_by_tracking_hourly_local ON CLUSTER metering");
        // without replication and distributed DDL: plain engines, no ON CLUSTER
        let plain = Layout::Cluster { cluster: "c".into(), replicated: false, on_cluster: false };
        let all: Vec<String> = MIGRATIONS.iter().flat_map(|m| render(m, "db", &plain)).collect();
        assert!(all.iter().all(|s| !s.contains("ON CLUSTER") && !s.contains("Replicated")));
        assert!(all.iter().any(|s| s.contains("ENGINE = SummingMergeTree((bytes_out, bytes_in, events))")));
    }
}
