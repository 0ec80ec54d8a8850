//! ClickHouse side of billing: usage per tracking id from the rollups, and the
//! invoice tables (`billing_invoices`, `billing_invoice_lines`,
//! `billing_billed_usage`).

use crate::invoice::Invoice;
use chrono::NaiveDate;
use runtime::ch::ClickHouseConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("{0}")]
    Config(String),
    #[error("stored invoice {0} cannot be read: {1}")]
    Corrupt(String, String),
}

/// Billing's handle on ClickHouse.
#[derive(Clone)]
pub struct Store {
    client: clickhouse::Client,
    db: String,
    /// On a cluster: the table that a mutation must name (`T_local`, with
    /// `ON CLUSTER` when the DDL is distributed); one server: `T`.
    local: LocalTables,
}

#[derive(Clone)]
enum LocalTables {
    Single,
    Cluster { on: String },
}

impl LocalTables {
    fn of(cfg: &ClickHouseConfig) -> Result<Self, StoreError> {
        Ok(match cfg.layout().map_err(|e| StoreError::Config(e.to_string()))? {
            runtime::ch::Layout::Single => LocalTables::Single,
            runtime::ch::Layout::Cluster { cluster, on_cluster, .. } => {
                LocalTables::Cluster { on: if on_cluster { format!(" ON CLUSTER {cluster}") } else { String::new() } }
            }
        })
    }

    /// `db.table` as an `ALTER` names it: `Distributed` tables take no mutations.
    fn alter(&self, db: &str, table: &str) -> String {
        match self {
            LocalTables::Single => format!("{db}.{table}"),
            LocalTables::Cluster { on } => format!("{db}.{table}_local{on}"),
        }
    }
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct KeyBytes {
    key: String,
    bytes: u64,
}

#[derive(Debug, Serialize, clickhouse::Row)]
struct InvoiceRow<'a> {
    invoice_number: &'a str,
    partner_id: &'a str,
    period: &'a str,
    revision: u32,
    status: &'a str,
    currency: &'a str,
    total_bytes: u64,
    subtotal: String,
    total: String,
    document: String,
    created_at: u32,
}

#[derive(Debug, Serialize, clickhouse::Row)]
struct LineRow<'a> {
    invoice_number: &'a str,
    partner_id: &'a str,
    period: &'a str,
    status: &'a str,
    line_no: u32,
    kind: String,
    description: &'a str,
    bytes: u64,
    quantity: String,
    unit: &'a str,
    unit_price: String,
    amount: String,
    currency: &'a str,
    created_at: u32,
}

/// One row of `billing_billed_usage`.
#[derive(Debug, Clone, Serialize, clickhouse::Row)]
pub struct BilledRow {
    pub invoice_number: String,
    pub partner_id: String,
    pub billed_in_period: String,
    pub usage_period: String,
    pub tracking_id: String,
    pub bytes: u64,
    pub issued_at: u32,
}

/// The tables billing writes: their columns with ClickHouse types, in the
/// order of the row structs that write them (`InvoiceRow`, `LineRow`,
/// [`BilledRow`]). A unit test binds each list to its struct, an end-to-end
/// test (`foundation::billing_row_layouts_match_the_migrated_tables`) to the
/// migrated tables.
pub const TABLES: [(&str, &[(&str, &str)]); 3] = [
    (
        "billing_invoices",
        &[
            ("invoice_number", "String"),
            ("partner_id", "String"),
            ("period", "String"),
            ("revision", "UInt32"),
            ("status", "String"),
            ("currency", "String"),
            ("total_bytes", "UInt64"),
            ("subtotal", "String"),
            ("total", "String"),
            ("document", "String"),
            ("created_at", "DateTime('UTC')"),
        ],
    ),
    (
        "billing_invoice_lines",
        &[
            ("invoice_number", "String"),
            ("partner_id", "String"),
            ("period", "String"),
            ("status", "String"),
            ("line_no", "UInt32"),
            ("kind", "String"),
            ("description", "String"),
            ("bytes", "UInt64"),
            ("quantity", "String"),
            ("unit", "String"),
            ("unit_price", "String"),
            ("amount", "String"),
            ("currency", "String"),
            ("created_at", "DateTime('UTC')"),
        ],
    ),
    (
        "billing_billed_usage",
        &[
            ("invoice_number", "String"),
            ("partner_id", "String"),
            ("billed_in_period", "String"),
            ("usage_period", "String"),
            ("tracking_id", "String"),
            ("bytes", "UInt64"),
            ("issued_at", "DateTime('UTC')"),
        ],
    ),
];

/// The fence of each claimed `((topic, partition), epoch)`.
pub type Fences = BTreeMap<((String, u32), u64), u64>;

/// Per claimed `((topic, partition), epoch)` from the claims `(partition,
/// epoch, start, claim_id)`: the first offset it no longer owns, the
/// smallest start of a later epoch of its partition (`u64::MAX` while it is
/// the latest), or 0 when claims of more than one `claim_id` hold the epoch
/// (a contested epoch: nothing of it counts); a claim recorded twice counts
/// once. The definition of `aggregator_fences` (migration 7), kept here
/// apart from it.
pub fn fences(claims: impl IntoIterator<Item = ((String, u32), u64, u64, u64)>) -> Fences {
    /// Per epoch: the smallest start and the claim ids.
    type Epochs = BTreeMap<u64, (u64, BTreeSet<u64>)>;
    let mut by_partition: BTreeMap<(String, u32), Epochs> = BTreeMap::new();
    for (partition, epoch, start, id) in claims {
        let e = by_partition.entry(partition).or_default().entry(epoch).or_insert((start, BTreeSet::new()));
        e.0 = e.0.min(start);
        e.1.insert(id);
    }
    let mut out = BTreeMap::new();
    for (partition, epochs) in by_partition {
        for (&epoch, (_, ids)) in &epochs {
            let fence = if ids.len() > 1 { 0 } else { epochs.range(epoch + 1..).map(|(_, (s, _))| *s).min().unwrap_or(u64::MAX) };
            out.insert((partition.clone(), epoch), fence);
        }
    }
    out
}

fn secs(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp()
}

fn status_str(inv: &Invoice) -> &'static str {
    match inv.status {
        crate::invoice::InvoiceStatus::Draft => "draft",
        crate::invoice::InvoiceStatus::Issued => "issued",
    }
}

impl Store {
    /// A store for reading (the API's console).
    pub fn new(cfg: &ClickHouseConfig) -> Result<Self, StoreError> {
        let db = cfg.db().map_err(|e| StoreError::Config(e.to_string()))?.to_string();
        Ok(Store { client: cfg.client(), db, local: LocalTables::of(cfg)? })
    }

    /// A store for `billing` itself, which writes: every insert is one
    /// synchronous part ([`ClickHouseConfig::writer_client`]).
    pub async fn connect(cfg: &ClickHouseConfig) -> Result<Self, StoreError> {
        let db = cfg.db().map_err(|e| StoreError::Config(e.to_string()))?.to_string();
        let client = cfg.writer_client().await.map_err(|e| StoreError::Config(format!("ClickHouse at {}: {e}", cfg.url)))?;
        Ok(Store { client, db, local: LocalTables::of(cfg)? })
    }

    async fn by_key(&self, sql: &str, from: NaiveDate, to: NaiveDate) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<KeyBytes> = self.client.query(sql).bind(secs(from)).bind(secs(to)).fetch_all().await?;
        Ok(rows.into_iter().map(|r| (r.key, r.bytes)).collect())
    }

    /// `bytes_out` per tracking id with `window_start` in `[from, to)`, from
    /// the fenced `usage_by_tracking` view. (The hourly rollup is a view over
    /// it that groups by every key first: reading the base view directly is
    /// the same sum with one aggregation less.)
    pub async fn usage_by_tracking(&self, from: NaiveDate, to: NaiveDate) -> Result<BTreeMap<String, u64>, StoreError> {
        let sql = format!(
            "SELECT tracking_id AS key, sum(bytes_out) AS bytes FROM {}.usage_by_tracking \
             WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?) GROUP BY tracking_id",
            self.db
        );
        self.by_key(&sql, from, to).await
    }

    /// Total `bytes_out` in `[from, to)` of one table (for reconciliation).
    pub async fn total(&self, table: &str, time_col: &str, from: NaiveDate, to: NaiveDate) -> Result<BTreeMap<String, u64>, StoreError> {
        if time_col == "day" {
            let sql = format!(
                "SELECT tracking_id AS key, sum(bytes_out) AS bytes FROM {}.{table} \
                 WHERE day >= toDate(?) AND day < toDate(?) GROUP BY tracking_id",
                self.db
            );
            let rows: Vec<KeyBytes> = self.client.query(&sql).bind(from.to_string()).bind(to.to_string()).fetch_all().await?;
            return Ok(rows.into_iter().map(|r| (r.key, r.bytes)).collect());
        }
        let sql = format!(
            "SELECT tracking_id AS key, sum(bytes_out) AS bytes FROM {}.{table} \
             WHERE {time_col} >= toDateTime(?) AND {time_col} < toDateTime(?) GROUP BY tracking_id",
            self.db
        );
        self.by_key(&sql, from, to).await
    }

    /// The fences of every claimed epoch, computed here ([`fences`]) from the
    /// claims table, not read from the `aggregator_fences` view.
    pub async fn claim_fences(&self) -> Result<Fences, StoreError> {
        #[derive(Deserialize, clickhouse::Row)]
        struct Claim {
            topic: String,
            partition: u32,
            epoch: u64,
            start_offset: u64,
            claim_id: u64,
        }
        let claims: Vec<Claim> = self
            .client
            .query(&format!("SELECT topic, partition, epoch, start_offset, claim_id FROM {}.aggregator_claims", self.db))
            .fetch_all()
            .await?;
        Ok(fences(claims.into_iter().map(|c| ((c.topic, c.partition), c.epoch, c.start_offset, c.claim_id))))
    }

    /// `bytes_out` per tracking id with `window_start` in `[from, to)` read
    /// from a log table (`usage_by_tracking_log` or `usage_by_viewer_log`)
    /// under `fences` ([`Store::claim_fences`]), not through the fenced
    /// views' join: reconciliation's independent count of what those views
    /// must show.
    pub async fn log_total(
        &self,
        log_table: &str,
        fences: &Fences,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        if fences.is_empty() {
            return Ok(BTreeMap::new());
        }
        let keys: Vec<String> = fences.keys().map(|((t, p), e)| format!("{t}/{p}/{e}")).collect();
        let limits: Vec<u64> = fences.values().copied().collect();
        let sql = format!(
            "WITH concat(src_topic, '/', toString(src_partition), '/', toString(src_epoch)) AS claim \
             SELECT tracking_id AS key, sum(bytes_out) AS bytes FROM {}.{log_table} \
             WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?) \
               AND has(?, claim) AND src_offset <= transform(claim, ?, ?, toUInt64(0)) \
             GROUP BY tracking_id",
            self.db
        );
        let rows: Vec<KeyBytes> =
            self.client.query(&sql).bind(secs(from)).bind(secs(to)).bind(&keys).bind(&keys).bind(&limits).fetch_all().await?;
        Ok(rows.into_iter().map(|r| (r.key, r.bytes)).collect())
    }

    /// The issued invoice of every partner for `period` (one query for all partners).
    pub async fn issued_invoices(&self, period: &str) -> Result<BTreeMap<String, Invoice>, StoreError> {
        #[derive(Deserialize, clickhouse::Row)]
        struct R {
            partner_id: String,
            document: String,
        }
        let rows: Vec<R> = self
            .client
            .query(&format!(
                "SELECT partner_id, document FROM {}.billing_invoices WHERE period = ? AND status = 'issued' \
                 ORDER BY partner_id, created_at",
                self.db
            ))
            .bind(period)
            .fetch_all()
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            if out.contains_key(&r.partner_id) {
                continue; // the first issue wins; later rows would be a concurrent re-issue
            }
            let inv =
                Invoice::from_json(&r.document).map_err(|e| StoreError::Corrupt(format!("{}/{period}", r.partner_id), e.to_string()))?;
            out.insert(r.partner_id, inv);
        }
        Ok(out)
    }

    /// Bytes billed so far, per partner, then per usage period and tracking id (one query).
    pub async fn billed(&self) -> Result<BTreeMap<String, BTreeMap<(String, String), u64>>, StoreError> {
        #[derive(Deserialize, clickhouse::Row)]
        struct R {
            partner_id: String,
            usage_period: String,
            tracking_id: String,
            bytes: u64,
        }
        let rows: Vec<R> = self
            .client
            .query(&format!(
                "SELECT partner_id, usage_period, tracking_id, sum(bytes) FROM {}.billing_billed_usage \
                 GROUP BY partner_id, usage_period, tracking_id",
                self.db
            ))
            .fetch_all()
            .await?;
        let mut out: BTreeMap<String, BTreeMap<(String, String), u64>> = BTreeMap::new();
        for r in rows {
            out.entry(r.partner_id).or_default().insert((r.usage_period, r.tracking_id), r.bytes);
        }
        Ok(out)
    }

    /// Bytes billed for `usage_period`, per tracking id, across all invoices.
    pub async fn billed_for_period(&self, usage_period: &str) -> Result<BTreeMap<String, u64>, StoreError> {
        let rows: Vec<KeyBytes> = self
            .client
            .query(&format!(
                "SELECT tracking_id AS key, sum(bytes) AS bytes FROM {}.billing_billed_usage WHERE usage_period = ? GROUP BY tracking_id",
                self.db
            ))
            .bind(usage_period)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(|r| (r.key, r.bytes)).collect())
    }

    /// Replace the stored drafts of `period` with `invoices`.
    pub async fn save_drafts(&self, period: &str, invoices: &[Invoice]) -> Result<(), StoreError> {
        for table in ["billing_invoices", "billing_invoice_lines"] {
            self.client
                .query(&format!("ALTER TABLE {} DELETE WHERE period = ? AND status = 'draft'", self.local.alter(&self.db, table)))
                .bind(period)
                .execute()
                .await?;
        }
        self.save(invoices).await
    }

    /// Append invoices and their lines.
    pub async fn save(&self, invoices: &[Invoice]) -> Result<(), StoreError> {
        if invoices.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp() as u32;
        let mut ins = self.client.insert::<InvoiceRow<'_>>("billing_invoices").await?;
        for inv in invoices {
            ins.write(&InvoiceRow {
                invoice_number: &inv.invoice_number,
                partner_id: &inv.partner_id,
                period: &inv.period,
                revision: inv.revision,
                status: status_str(inv),
                currency: &inv.currency,
                total_bytes: inv.total_bytes,
                subtotal: inv.subtotal.to_string(),
                total: inv.total.to_string(),
                document: inv.to_json(),
                created_at: now,
            })
            .await?;
        }
        ins.end().await?;
        let mut ins = self.client.insert::<LineRow<'_>>("billing_invoice_lines").await?;
        for inv in invoices {
            for l in &inv.lines {
                ins.write(&LineRow {
                    invoice_number: &inv.invoice_number,
                    partner_id: &inv.partner_id,
                    period: &inv.period,
                    status: status_str(inv),
                    line_no: l.line_no,
                    kind: serde_json::to_value(l.kind).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                    description: &l.description,
                    bytes: l.bytes,
                    quantity: l.quantity.to_string(),
                    unit: &l.unit,
                    unit_price: l.unit_price.to_string(),
                    amount: l.amount.to_string(),
                    currency: &inv.currency,
                    created_at: now,
                })
                .await?;
            }
        }
        ins.end().await?;
        Ok(())
    }

    /// Record what issued invoices billed.
    pub async fn save_billed(&self, rows: &[BilledRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut ins = self.client.insert::<BilledRow>("billing_billed_usage").await?;
        for r in rows {
            ins.write(r).await?;
        }
        ins.end().await?;
        Ok(())
    }

    /// Daily bytes per tracking id of `tracking_ids` in `[from, to)` (statements).
    pub async fn daily(
        &self,
        tracking_ids: &[String],
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(String, String, u64, u64)>, StoreError> {
        #[derive(Deserialize, clickhouse::Row)]
        struct R {
            tracking_id: String,
            day: String,
            bytes_out: u64,
            bytes_in: u64,
        }
        let rows: Vec<R> = self
            .client
            .query(&format!(
                "SELECT tracking_id, toString(day) AS d, sum(bytes_out), sum(bytes_in) FROM {}.usage_by_tracking_daily \
                 WHERE has(?, tracking_id) AND day >= toDate(?) AND day < toDate(?) \
                 GROUP BY tracking_id, d ORDER BY tracking_id, d",
                self.db
            ))
            .bind(tracking_ids)
            .bind(from.to_string())
            .bind(to.to_string())
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(|r| (r.tracking_id, r.day, r.bytes_out, r.bytes_in)).collect())
    }

    /// Bytes per tracking id and custom viewer data in `[from, to)` (statements).
    pub async fn by_viewer_data(
        &self,
        tracking_ids: &[String],
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(String, String, u64, u64, u64)>, StoreError> {
        #[derive(Deserialize, clickhouse::Row)]
        struct R {
            tracking_id: String,
            cvd: String,
            viewers: u64,
            bytes_out: u64,
            bytes_in: u64,
        }
        let rows: Vec<R> = self
            .client
            .query(&format!(
                "SELECT tracking_id, custom_viewer_data, uniqExact(viewer_id), sum(bytes_out), sum(bytes_in) \
                 FROM {}.usage_by_viewer_daily \
                 WHERE has(?, tracking_id) AND day >= toDate(?) AND day < toDate(?) \
                 GROUP BY tracking_id, custom_viewer_data ORDER BY tracking_id, custom_viewer_data",
                self.db
            ))
            .bind(tracking_ids)
            .bind(from.to_string())
            .bind(to.to_string())
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(|r| (r.tracking_id, r.cvd, r.viewers, r.bytes_out, r.bytes_in)).collect())
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use clickhouse::Row;

    #[test]
    fn table_layouts_are_the_row_structs() {
        fn names(cols: &[(&'static str, &'static str)]) -> Vec<&'static str> {
            cols.iter().map(|c| c.0).collect()
        }
        assert_eq!(names(TABLES[0].1), <InvoiceRow<'_> as Row>::COLUMN_NAMES);
        assert_eq!(names(TABLES[1].1), <LineRow<'_> as Row>::COLUMN_NAMES);
        assert_eq!(names(TABLES[2].1), <BilledRow as Row>::COLUMN_NAMES);
    }
}

#[cfg(test)]
mod tests {
    use super::fences;

    #[test]
    fn a_fence_is_the_smallest_start_of_a_later_claim_and_duplicates_count_once() {
        let p = |n: u32| ("t".to_string(), n);
        let claims = vec![
            (p(0), 1, 0, 11),
            (p(0), 1, 0, 11), // written twice
            (p(0), 3, 150, 13),
            (p(0), 2, 100, 12),
            (p(0), 4, 120, 14), // a later claim that resumed from an earlier checkpoint
            (p(1), 7, 40, 17),
            (p(1), 8, 60, 18), // two claims of epoch 8 at once: contested
            (p(1), 8, 50, 19),
            (p(1), 9, 50, 20),
        ];
        let f = fences(claims);
        assert_eq!(f.len(), 7);
        assert_eq!(f[&(p(0), 1)], 100);
        assert_eq!(f[&(p(0), 2)], 120);
        assert_eq!(f[&(p(0), 3)], 120);
        assert_eq!(f[&(p(0), 4)], u64::MAX);
        assert_eq!(f[&(p(1), 7)], 50, "the contested epoch's smallest start still fences earlier ones");
        assert_eq!(f[&(p(1), 8)], 0, "nothing of a contested epoch counts");
        assert_eq!(f[&(p(1), 9)], u64::MAX);
    }
}
