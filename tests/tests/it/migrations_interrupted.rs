//! Re-running a migration after a failure at any statement leaves the same
//! schema and no duplicated rows (on both engines: `scripts/test`).
//!
//! Each run starts a fresh database, applies migrations 1 to 4, writes the
//! rows a deployment of that time had (checkpoints of two partitions and
//! usage), then stops migration 5 or 6 just before one of its statements (or
//! after its last one, before it is recorded), as a crash there would, and
//! migrates again. The result must equal a straight migration of the same
//! rows: the tables, their columns and engines, the views' definitions, one
//! claim per partition, and the usage visible through the fenced views.

use e2e::*;
use runtime::ch::{ChError, ClickHouseConfig};
use serde::Deserialize;
use warehouse::MIGRATIONS;

#[derive(Debug, PartialEq, Deserialize, clickhouse::Row)]
struct Column {
    table: String,
    name: String,
    ty: String,
}

#[derive(Debug, PartialEq, Deserialize, clickhouse::Row)]
struct TableDef {
    name: String,
    engine: String,
    create: String,
}

#[derive(Debug, PartialEq)]
struct Snapshot {
    tables: Vec<TableDef>,
    columns: Vec<Column>,
    claims: Vec<(u32, u64, u64)>,
    visible_bytes: u64,
    visible_rows: u64,
}

async fn snapshot(db: &ClickHouseConfig) -> Snapshot {
    let c = db.server_client();
    let d = &db.database;
    let mut tables: Vec<TableDef> = c
        .query(
            "SELECT name, engine, create_table_query FROM system.tables \
             WHERE database = ? AND name != 'schema_migrations' ORDER BY name",
        )
        .bind(d)
        .fetch_all()
        .await
        .unwrap();
    for t in &mut tables {
        t.create = t.create.replace(d.as_str(), "DB");
    }
    // in each table's order (18.16 has no `position` column to sort by)
    let mut columns: Vec<Column> = c
        .query("SELECT table, name, type FROM system.columns WHERE database = ? AND table != 'schema_migrations'")
        .bind(d)
        .fetch_all()
        .await
        .unwrap();
    columns.sort_by(|a, b| a.table.cmp(&b.table));
    #[derive(Deserialize, clickhouse::Row)]
    struct ClaimRow {
        partition: u32,
        epoch: u64,
        start_offset: u64,
    }
    let claims: Vec<ClaimRow> = c
        .query(&format!("SELECT partition, epoch, start_offset FROM {d}.aggregator_claims ORDER BY partition, epoch, start_offset"))
        .fetch_all()
        .await
        .unwrap();
    #[derive(Deserialize, clickhouse::Row)]
    struct Visible {
        bytes: u64,
        rows: u64,
    }
    let v: Visible =
        c.query(&format!("SELECT sum(bytes_out), count() FROM {d}.usage_by_tracking")).fetch_one().await.expect("the fenced view answers");
    Snapshot {
        tables,
        columns,
        claims: claims.into_iter().map(|r| (r.partition, r.epoch, r.start_offset)).collect(),
        visible_bytes: v.bytes,
        visible_rows: v.rows,
    }
}

/// A fresh database at migration 4 with the rows of a deployment of that time.
async fn at_migration_4() -> ClickHouseConfig {
    let db = ClickHouseConfig { url: clickhouse_url(), database: unique("mig"), ..Default::default() };
    let err = warehouse::migrate_interrupted(&db, 5, 1).await.unwrap_err();
    assert!(matches!(err, ChError::Interrupted { version: 5, index: 1 }), "{err}");
    let d = &db.database;
    let c = db.client();
    c.query(&format!(
        "INSERT INTO {d}.aggregator_checkpoints (topic, partition, position, watermark_ms, member, created_at) \
         VALUES ('t', 0, 40, 1, 'm', now()), ('t', 0, 90, 2, 'm', now()), ('t', 1, 7, 3, 'm', now())"
    ))
    .execute()
    .await
    .unwrap();
    c.query(&format!(
        "INSERT INTO {d}.usage_by_tracking (window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, \
         events, src_topic, src_partition, src_offset, inserted_at) \
         VALUES (toDateTime('2026-10-01 10:00:00', 'UTC'), 'alpha', 'a', 's', 'c', 'WHEP', 1000, 1, 1, 't', 0, 40, now()), \
                (toDateTime('2026-10-01 10:01:00', 'UTC'), 'beta', 'a', 's', 'c', 'WHEP', 2000, 1, 1, 't', 1, 7, now())"
    ))
    .execute()
    .await
    .unwrap();
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_interrupted_at_any_statement_finishes_the_same_when_run_again() {
    let _stack = e2e::turns::shared().await;
    let reference_db = at_migration_4().await;
    warehouse::migrate(&reference_db).await.unwrap();
    let reference = snapshot(&reference_db).await;
    assert_eq!(reference.claims, vec![(0, 0, 0), (1, 0, 0)], "one epoch-0 claim per partition with a checkpoint");
    assert_eq!((reference.visible_bytes, reference.visible_rows), (3000, 2), "the usage written before migration 5 stays visible");

    let mut runs = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version >= 5) {
        let n = m.statements(&reference_db.database).len();
        // before each statement, and after the last one (not yet recorded)
        for index in 1..=n + 1 {
            runs.push((m.version, index));
        }
    }
    let mut failures = Vec::new();
    for chunk in runs.chunks(4) {
        let results = futures::future::join_all(chunk.iter().map(|&(version, index)| async move {
            let db = at_migration_4().await;
            if (version, index) != (5, 1) {
                let err = warehouse::migrate_interrupted(&db, version, index).await.unwrap_err();
                assert!(matches!(err, ChError::Interrupted { .. }), "{err}");
            }
            let report = warehouse::migrate(&db).await.unwrap_or_else(|e| panic!("after a stop at {version}.{index}: {e}"));
            assert!(report.applied.contains(&version), "{version} applied on the second run: {report:?}");
            let again = warehouse::migrate(&db).await.unwrap();
            assert!(again.applied.is_empty(), "nothing left to apply: {again:?}");
            let got = snapshot(&db).await;
            drop_db(&db).await;
            ((version, index), got)
        }))
        .await;
        for (at, got) in results {
            if got != reference {
                failures.push(format!("stopped before {}.{}: {got:#?}", at.0, at.1));
            }
        }
    }
    drop_db(&reference_db).await;
    assert!(failures.is_empty(), "expected {reference:#?}\n{}", failures.join("\n"));
}

/// A database that applied migration 5's first text (views with `ANY INNER
/// JOIN`, as every deployment on 18.16 did) is taken as migrated to 5 and
/// gets the corrected views from migration 6; current versions refuse that
/// text outright (so no database of theirs can hold it).
#[tokio::test]
async fn a_database_with_migration_5s_first_text_upgrades_to_the_same_schema() {
    let _stack = e2e::turns::shared().await;
    let first_text = warehouse::Migration {
        version: 5,
        name: "epoch_fencing",
        sql: include_str!("../../fixtures/0005_epoch_fencing.v1.sql"),
        former_checksums: &[],
    };
    let current = MIGRATIONS.iter().find(|m| m.version == 5).unwrap();
    assert!(current.former_checksums.contains(&first_text.checksum().as_str()), "the first text's checksum is accepted");

    let db = at_migration_4().await;
    let c = db.server_client();
    let mut refused = None;
    for (i, stmt) in first_text.statements(&db.database).iter().enumerate() {
        if let Err(e) = c.query(stmt).execute().await {
            refused = Some((i + 1, e.to_string()));
            break;
        }
    }
    let version = runtime::ch::server_version(&c).await.unwrap();
    if version.major >= 20 {
        let (at, error) = refused.expect("a current ClickHouse refuses the first text");
        assert!(error.contains("ALIAS_REQUIRED") || error.contains("alias"), "statement {at}: {error}");
        drop_db(&db).await;
        return;
    }
    assert_eq!(refused, None, "18.16 ran the first text");
    c.query(&format!(
        "INSERT INTO {}.schema_migrations (version, name, checksum, applied_at) VALUES (5, 'epoch_fencing', ?, now())",
        db.database
    ))
    .bind(first_text.checksum())
    .execute()
    .await
    .unwrap();
    let report = warehouse::migrate(&db).await.unwrap();
    let after_5: Vec<u32> = warehouse::MIGRATIONS.iter().map(|m| m.version).filter(|&v| v > 5).collect();
    assert_eq!(report.applied, after_5, "every migration after 5 applied");

    let reference_db = at_migration_4().await;
    warehouse::migrate(&reference_db).await.unwrap();
    assert_eq!(snapshot(&db).await, snapshot(&reference_db).await);
    drop_db(&db).await;
    drop_db(&reference_db).await;
}

/// Invoices issued before the ledger (migration 8) become ledger records:
/// one per invoice number, with what they billed taken once, also where a
/// concurrent issue stored the invoice and its billed rows twice.
#[tokio::test]
async fn invoices_issued_before_the_ledger_become_one_record_each() {
    let _stack = e2e::turns::shared().await;
    let db = at_migration_4().await;
    let d = &db.database;
    let card = billing::rates::parse_rate_card(
        "[[partner]]\nid = \"alpha\"\nname = \"Alpha\"\ntracking_ids = [\"a-web\", \"a-app\"]\ncurrency = \"EUR\"\nunit = \"GB\"\n\
         pricing = \"flat\"\ntiers = [ { unit_price = \"0.05\" } ]\n",
        "rates.toml",
    )
    .unwrap();
    let mut inv = billing::invoice::build_invoice(&card.partners[0], (2026, 9), 7_000, &[], 1).unwrap();
    inv.issue(chrono::Utc::now()).unwrap();
    let c = db.client();
    for _ in 0..2 {
        // the old `billing issue`, run twice at once: the invoice and its billed rows, twice
        c.query(&format!(
            "INSERT INTO {d}.billing_invoices (invoice_number, partner_id, period, revision, status, currency, total_bytes, subtotal, total, document, created_at) \
             VALUES (?, 'alpha', '2026-09', 1, 'issued', 'EUR', 7000, '0.00', '0.00', ?, now())"
        ))
        .bind(&inv.invoice_number)
        .bind(inv.to_json())
        .execute()
        .await
        .unwrap();
        c.query(&format!(
            "INSERT INTO {d}.billing_billed_usage (invoice_number, partner_id, billed_in_period, usage_period, tracking_id, bytes, issued_at) \
             VALUES (?, 'alpha', '2026-09', '2026-09', 'a-web', 3000, now()), (?, 'alpha', '2026-09', '2026-09', 'a-app', 4000, now())"
        ))
        .bind(&inv.invoice_number)
        .bind(&inv.invoice_number)
        .execute()
        .await
        .unwrap();
    }
    warehouse::migrate(&db).await.unwrap();
    let ledger = billing::store::Store::new(&db).unwrap().ledger().await.unwrap();
    assert_eq!(ledger.records.len(), 1);
    assert!(ledger.ignored.is_empty(), "{:?}", ledger.ignored);
    let rec = &ledger.records[&inv.invoice_number];
    assert_eq!(rec.invoice, inv);
    let billed: std::collections::BTreeMap<String, i128> = [("a-app".to_string(), 4000), ("a-web".to_string(), 3000)].into();
    assert_eq!(ledger.billed("alpha", "2026-09"), billed, "billed once");
    drop_db(&db).await;
}
