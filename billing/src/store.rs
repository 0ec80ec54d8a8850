//! ClickHouse side of billing: usage per tracking id (from the fenced views,
//! or from the log tables as of a [`Snapshot`]), the ledger
//! (`billing_ledger`, `billing_adjustments`) and the invoice tables the
//! console and analysts read (`billing_invoices`, `billing_invoice_lines`).

use crate::invoice::Invoice;
use crate::ledger::{AdjustmentKind, Billed, Ledger, LedgerRecord, ManualAdjustment};
use chrono::NaiveDate;
use runtime::ch::ClickHouseConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

/// Why a read or write of billing's side of ClickHouse failed.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A query failed, or ClickHouse could not be reached.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// Anything else that stops the store, in words: a database name or
    /// cluster layout that is not valid, ClickHouse not answering at
    /// connect, the issue lock, a seal that cannot be read, a usage sum
    /// that overflows `u64`.
    #[error("{0}")]
    Config(String),
    /// A ledger row (its invoice document included) or a manual adjustment
    /// that cannot be read back: holds which (the invoice number, or
    /// `adjustment <id>`) and why. Stop and repair it; do not guess.
    #[error("stored invoice {0} cannot be read: {1}")]
    Corrupt(String, String),
    /// The sealed rows this read's snapshot needs were consolidated while it
    /// ran (`aggregator::consolidate`); nothing was written. Run again.
    #[error("the sealed usage was consolidated after this run's snapshot (seal {0}); nothing was written, run it again")]
    SnapshotConsolidated(u64),
}

/// Billing's handle on ClickHouse.
#[derive(Clone)]
pub struct Store {
    client: clickhouse::Client,
    /// Not bound to the database: for the issue lock's DDL.
    server: clickhouse::Client,
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
    /// ` ON CLUSTER c` for DDL when the cluster's DDL is distributed.
    fn on(&self) -> &str {
        match self {
            LocalTables::Single => "",
            LocalTables::Cluster { on } => on,
        }
    }

    fn of(cfg: &ClickHouseConfig) -> Result<Self, StoreError> {
        let config = |e: runtime::ch::ChError| StoreError::Config(e.to_string());
        Ok(match cfg.layout().map_err(config)? {
            runtime::ch::Layout::Single => LocalTables::Single,
            runtime::ch::Layout::Cluster { .. } => LocalTables::Cluster { on: cfg.ddl_on().map_err(config)? },
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

/// One row of `billing_ledger`: one issued invoice and what it billed.
#[derive(Debug, Serialize, Deserialize, clickhouse::Row)]
struct LedgerRow {
    invoice_number: String,
    partner_id: String,
    period: String,
    issue_id: u64,
    issued_at: u32,
    currency: String,
    total: String,
    document: String,
    billed_periods: Vec<String>,
    billed_tracking_ids: Vec<String>,
    billed_bytes: Vec<i64>,
    settled: Vec<String>,
    snapshot: String,
}

/// One row of `billing_adjustments`.
#[derive(Debug, Serialize, Deserialize, clickhouse::Row)]
struct AdjustmentRow {
    adjustment_id: String,
    partner_id: String,
    period: String,
    kind: String,
    bytes: u64,
    amount: String,
    reason: String,
    author: String,
    created_at: u32,
}

/// The tables billing writes (their layouts are `warehouse::tables`'s), in
/// the order of the row structs that write them (`InvoiceRow`, `LineRow`,
/// `LedgerRow`, `AdjustmentRow`). A unit test binds each layout to its
/// struct, an end-to-end test
/// (`foundation::row_layouts_match_the_migrated_tables`) to the migrated
/// tables.
pub const TABLES: [warehouse::tables::TableLayout; 4] = [
    warehouse::tables::BILLING_INVOICES,
    warehouse::tables::BILLING_INVOICE_LINES,
    warehouse::tables::BILLING_LEDGER,
    warehouse::tables::BILLING_ADJUSTMENTS,
];

/// The fence of each claimed `((topic, partition), epoch)`.
pub type Fences = BTreeMap<((String, u32), u64), u64>;

/// How reconciliation counts a log table ([`crate::run::reconcile_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogCounting {
    /// The rows above the recorded count's seal, added to it; the count as
    /// of the latest seal is then recorded.
    #[default]
    Incremental,
    /// Every row again (recorded counts ignored); then recorded.
    Recount,
    /// As [`LogCounting::Incremental`], recording nothing: for a read-only
    /// user (the console's reconciliation).
    ReadOnly,
}

/// A period's bytes counted on a log table ([`Store::audited_log_total`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogCount {
    /// `bytes_out` per tracking id with rows.
    pub bytes: BTreeMap<String, u64>,
    /// The seal whose recorded count was taken (0: none, every row counted now).
    pub counted_before: u64,
    /// The seal up to which the count is now recorded (0: none).
    pub recorded: u64,
    /// Why a recorded count was not used, and every row was counted.
    pub recounted: Option<Recounted>,
}

/// Why reconciliation counted every log row although a count was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recounted {
    /// The fences below the recorded seal changed since (a late contested claim).
    FencesChanged { seal: u64 },
    /// The valid log rows below the recorded seal inserted since the hour of
    /// its time bound numbered `then` when counted and `now` now: rows
    /// written below a seal (by hand: no writer of this project does), or
    /// deleted.
    RowsChanged { seal: u64, then: u64, now: u64 },
}

/// [`Store::log_rows_split`]: the valid log rows of a period read above a
/// seal `sealed`, split at a seal `upper`.
#[derive(Debug, Default)]
struct Split {
    /// `bytes_out` per tracking id of the rows at or below `upper`.
    below: BTreeMap<String, u64>,
    /// ... and above it.
    above: BTreeMap<String, u64>,
    /// Rows at or below `sealed` inserted since the hour of its time bound
    /// (with `with_below`).
    stale_rows: u64,
    /// Rows at or below `upper` inserted since the hour of its time bound.
    recent_below: u64,
}

/// A count recorded by a reconciliation (migration 12).
#[derive(Debug, Default)]
struct Audit {
    /// The seal it counts up to.
    seq: u64,
    /// `bytes_out` per tracking id.
    bytes: BTreeMap<String, u64>,
    /// [`fences_below`] that seal when counted.
    fences: BTreeMap<String, u64>,
    /// The valid rows at or below that seal inserted since the hour of its
    /// time bound, when counted ([`Split::recent_below`]).
    recent_below: u64,
}

/// What decides which log rows at or below `sealed` count: per claimed
/// epoch of a sealed partition (`topic/partition/epoch`), its fence cut at
/// the partition's sealed offset.
fn fences_below(fences: &Fences, sealed: &runtime::ch::Sealed) -> BTreeMap<String, u64> {
    fences
        .iter()
        .filter_map(|(((t, p), e), fence)| sealed.sealed_to.get(&(t.clone(), *p)).map(|upto| (format!("{t}/{p}/{e}"), (*fence).min(*upto))))
        .collect()
}

/// Add `more` into `into`, refusing an overflow.
fn add_into(into: &mut BTreeMap<String, u64>, more: BTreeMap<String, u64>) -> Result<(), StoreError> {
    for (k, b) in more {
        let e = into.entry(k).or_insert(0);
        *e = e.checked_add(b).ok_or_else(|| StoreError::Config("usage overflows u64".into()))?;
    }
    Ok(())
}

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

/// The table whose existence is the issue lock.
const ISSUE_LOCK: &str = "billing_issue_lock";

/// After this long the issue lock's holder is taken to have crashed (the default).
pub const ISSUE_LOCK_STALE_SECS: u64 = 600;

/// What one billing run reads: per claimed `((topic, partition), epoch)`,
/// the last position whose rows count ([`Store::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub(crate) limits: Fences,
    /// The latest committed seal when the snapshot was taken: usage at or
    /// below its offsets is read from the sealed daily table (the seals up
    /// to its `seq`), the rest from the log under `limits`.
    pub sealed: runtime::ch::Sealed,
}

impl Snapshot {
    /// A short JSON naming the snapshot: how many claims, and a digest of
    /// every limit (FNV-1a 64 over the sorted limits; equal digests, equal
    /// snapshots in practice). Stored with each issued invoice and in the
    /// run report (so a re-run over unchanged usage is byte-identical).
    pub fn summary(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (((t, p), e), l) in &self.limits {
            for b in format!("{t}/{p}/{e}<={l}\n").bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{{\"claims\":{},\"seal\":{},\"digest\":\"{h:016x}\"}}", self.limits.len(), self.sealed.seq)
    }
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
        // the reconciliation groups a month of rows by every key through the rollup views
        Ok(Store { client: runtime::ch::spilling(cfg.client()), server: cfg.server_client(), db, local: LocalTables::of(cfg)? })
    }

    /// A store for `billing` itself, which writes: every insert is one
    /// synchronous part ([`ClickHouseConfig::writer_client`]).
    pub async fn connect(cfg: &ClickHouseConfig) -> Result<Self, StoreError> {
        let db = cfg.db().map_err(|e| StoreError::Config(e.to_string()))?.to_string();
        let client = cfg.writer_client().await.map_err(|e| StoreError::Config(format!("ClickHouse at {}: {e}", cfg.url)))?;
        Ok(Store { client: runtime::ch::spilling(client), server: cfg.server_client(), db, local: LocalTables::of(cfg)? })
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

    /// The latest committed seal (`runtime::ch::latest_seal`).
    pub async fn latest_seal(&self) -> Result<runtime::ch::Sealed, StoreError> {
        runtime::ch::latest_seal(&self.client, &self.db).await.map_err(|e| StoreError::Config(e.to_string()))
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
    /// views' join, of the rows above `sealed` (its offsets per partition,
    /// and its time bound; [`runtime::ch::Sealed::default`]: all).
    async fn log_rows_total(
        &self,
        log_table: &str,
        fences: &Fences,
        sealed: &runtime::ch::Sealed,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let split = self.log_rows_split(log_table, fences, sealed, &runtime::ch::Sealed::default(), from, to, false).await?;
        Ok(split.above)
    }

    /// [`Store::log_rows_total`] above `sealed`, in two parts: the rows at or
    /// below `upper`'s offsets, and those above them. `with_below`: also
    /// count the valid rows read at or below `sealed` ([`Split::recent_below`]).
    #[allow(clippy::too_many_arguments)]
    async fn log_rows_split(
        &self,
        log_table: &str,
        fences: &Fences,
        sealed: &runtime::ch::Sealed,
        upper: &runtime::ch::Sealed,
        from: NaiveDate,
        to: NaiveDate,
        with_below: bool,
    ) -> Result<Split, StoreError> {
        if fences.is_empty() {
            return Ok(Default::default());
        }
        let above = &sealed.sealed_to;
        let keys: Vec<String> = fences.keys().map(|((t, p), e)| format!("{t}/{p}/{e}")).collect();
        let limits: Vec<u64> = fences.values().copied().collect();
        // the log from the seal's time bound (its primary key); the legacy
        // table (migration 10), unless drained, read first (PREWHERE) on the
        // offset: a row of a partition in `above` at or below the smallest
        // bound is not read further (rows of partitions without a claim
        // never count; when every claimed partition is in `above`, the
        // offset alone decides, on one column)
        let unsealed: Vec<String> = fences
            .keys()
            .map(|((t, p), _)| (t.clone(), *p))
            .filter(|k| !above.contains_key(k))
            .map(|(t, p)| format!("({}, {p})", sql_string(&t)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let prewhere = match above.values().copied().min() {
            None => String::new(),
            Some(floor) if unsealed.is_empty() => format!("PREWHERE src_offset > {floor}"),
            Some(floor) => format!("PREWHERE src_offset > {floor} OR (src_topic, src_partition) IN ({})", unsealed.join(", ")),
        };
        let columns = "tracking_id, bytes_out, window_start, src_topic, src_partition, src_epoch, src_offset, inserted_at";
        let recent = sealed.recent_log(&self.db, log_table, columns);
        let source = if sealed.legacy_drained {
            format!("({recent})")
        } else {
            format!("({recent} UNION ALL SELECT {columns} FROM {}.{log_table}_legacy {prewhere})", self.db)
        };
        // (no bound at all when `above` is empty: 18.16's transform refuses empty arrays)
        // (signed: a partition not in `above` has bound -1, so its rows at
        // position 0 count)
        let bounds = |sealed: &BTreeMap<runtime::ch::PartitionKey, u64>| -> (Vec<String>, Vec<i64>) {
            if sealed.is_empty() {
                (vec![String::new()], vec![-1])
            } else {
                (
                    sealed.keys().map(|(t, p)| format!("{t}/{p}")).collect(),
                    sealed.values().map(|&v| v.min(i64::MAX as u64) as i64).collect(),
                )
            }
        };
        let (parts, lows) = bounds(above);
        let (upper_parts, upper_lows) = bounds(&upper.sealed_to);
        // `fresh`: above `sealed`; `below`: at or below `upper`; `recent`:
        // inserted since the hour of `upper`'s time bound (and
        // `recent_since_sealed`: of `sealed`'s)
        let sql = format!(
            "WITH concat(src_topic, '/', toString(src_partition), '/', toString(src_epoch)) AS claim, \
                  concat(src_topic, '/', toString(src_partition)) AS part, \
                  toInt64(src_offset) > transform(part, ?, ?, toInt64(-1)) AS fresh, \
                  toInt64(src_offset) <= transform(part, ?, ?, toInt64(-1)) AS below, \
                  toStartOfHour(inserted_at) >= toStartOfHour(toDateTime(?, 'UTC')) AS recent, \
                  toStartOfHour(inserted_at) >= toStartOfHour(toDateTime(?, 'UTC')) AS recent_since_sealed \
             SELECT tracking_id AS key, sumIf(bytes_out, fresh AND below) AS sealed, countIf(fresh AND below) AS sealed_rows, \
                    sumIf(bytes_out, fresh AND NOT below) AS bytes, countIf(fresh AND NOT below) AS rows, \
                    countIf(NOT fresh AND recent_since_sealed) AS stale_rows, countIf(below AND recent) AS recent_below_rows FROM {source} AS l \
             WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?) \
               AND has(?, claim) AND src_offset <= transform(claim, ?, ?, toUInt64(0)){} \
             GROUP BY tracking_id",
            if with_below { "" } else { " AND fresh" }
        );
        #[derive(Deserialize, clickhouse::Row)]
        struct Row {
            key: String,
            sealed: u64,
            sealed_rows: u64,
            bytes: u64,
            rows: u64,
            stale_rows: u64,
            recent_below_rows: u64,
        }
        let rows: Vec<Row> = self
            .client
            .query(&sql)
            .bind(&parts)
            .bind(&lows)
            .bind(&upper_parts)
            .bind(&upper_lows)
            .bind(upper.tail_since)
            .bind(sealed.tail_since)
            .bind(secs(from))
            .bind(secs(to))
            .bind(&keys)
            .bind(&keys)
            .bind(&limits)
            .fetch_all()
            .await?;
        let mut out = Split::default();
        for r in rows {
            out.stale_rows += r.stale_rows;
            out.recent_below += r.recent_below_rows;
            // a tracking id with rows is in the answer, also with 0 bytes (as in the views')
            if r.sealed_rows > 0 {
                out.below.insert(r.key.clone(), r.sealed);
            }
            if r.rows > 0 {
                out.above.insert(r.key, r.bytes);
            }
        }
        Ok(out)
    }

    /// [`Store::log_rows_total`] of `period` (`YYYY-MM`, from `from` to
    /// `to`) as reconciliation counts it: its independent count of what the
    /// views must show (migration 12): the count recorded by an
    /// earlier reconciliation, as of its seal, plus the rows above that
    /// seal; the count as of `latest` (read before `fences`, so that every
    /// epoch with rows below it is among them) is then recorded for the
    /// next one. A recorded count is used only while the fences it was
    /// counted under, cut at its seal, are unchanged (a late contested claim
    /// changes them).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn audited_log_total(
        &self,
        log_table: &str,
        fences: &Fences,
        latest: &runtime::ch::Sealed,
        period: &str,
        from: NaiveDate,
        to: NaiveDate,
        counting: LogCounting,
    ) -> Result<LogCount, StoreError> {
        let audit = if counting == LogCounting::Recount { None } else { self.log_audit(period, log_table).await? };
        // the audit's seal, for its offsets and time bound (one that is not
        // there any more, or not yet on this replica: count everything)
        let mut recounted = None;
        let mut base = None;
        if let Some(audit) = audit.filter(|a| a.seq <= latest.seq) {
            let config = |e: runtime::ch::ChError| StoreError::Config(e.to_string());
            if let Some(sealed) = runtime::ch::seal_at(&self.client, &self.db, audit.seq).await.map_err(config)? {
                if fences_below(fences, &sealed) != audit.fences {
                    recounted = Some(Recounted::FencesChanged { seal: audit.seq });
                } else if sealed.tail_since <= latest.tail_since {
                    // (else the rows the latest seal's count needs are not
                    // all among those read from the audit's bound: all)
                    base = Some((sealed, audit));
                }
            }
        }
        let mut counted = None;
        if let Some((sealed, audit)) = base {
            let split = self.log_rows_split(log_table, fences, &sealed, latest, from, to, true).await?;
            // rows below the audit's seal written (or gone) since it was
            // counted: a hand-made row, or a premise of the seal broken
            if split.stale_rows == audit.recent_below {
                counted = Some((sealed, audit.bytes, split));
            } else {
                recounted = Some(Recounted::RowsChanged { seal: audit.seq, then: audit.recent_below, now: split.stale_rows });
            }
        }
        let (lower, mut bytes, split) = match counted {
            Some(c) => c,
            None => {
                let everything = runtime::ch::Sealed::default();
                let split = self.log_rows_split(log_table, fences, &everything, latest, from, to, true).await?;
                (everything, BTreeMap::new(), split)
            }
        };
        add_into(&mut bytes, split.below)?;
        if latest.seq > lower.seq && counting != LogCounting::ReadOnly {
            self.record_log_audit(period, log_table, latest.seq, &bytes, &fences_below(fences, latest), split.recent_below).await?;
        }
        let recorded = if counting == LogCounting::ReadOnly { lower.seq } else { latest.seq.max(lower.seq) };
        let counted_before = lower.seq;
        add_into(&mut bytes, split.above)?;
        Ok(LogCount { bytes, counted_before, recorded, recounted })
    }

    /// The latest complete audit of `period` and `log_table` (of the latest
    /// seal, the last written).
    async fn log_audit(&self, period: &str, log_table: &str) -> Result<Option<Audit>, StoreError> {
        #[derive(Deserialize, clickhouse::Row)]
        struct Header {
            seal_seq: u64,
            audit_id: u64,
        }
        let found: Option<Header> = self
            .client
            .query(&format!(
                "SELECT seal_seq, audit_id FROM {}.billing_log_audits WHERE period = ? AND log_table = ? \
                 GROUP BY seal_seq, audit_id, keys HAVING count() = keys ORDER BY seal_seq DESC, audit_id DESC LIMIT 1",
                self.db
            ))
            .bind(period)
            .bind(log_table)
            .fetch_optional()
            .await?;
        let Some(h) = found else { return Ok(None) };
        #[derive(Deserialize, clickhouse::Row)]
        struct Row {
            header: u8,
            tracking_id: String,
            bytes_out: u64,
            fence_claims: Vec<String>,
            fence_limits: Vec<u64>,
            recent_below: u64,
        }
        let rows: Vec<Row> = self
            .client
            .query(&format!(
                "SELECT header, tracking_id, bytes_out, fence_claims, fence_limits, recent_below FROM {}.billing_log_audits \
                 WHERE period = ? AND log_table = ? AND seal_seq = ? AND audit_id = ?",
                self.db
            ))
            .bind(period)
            .bind(log_table)
            .bind(h.seal_seq)
            .bind(h.audit_id)
            .fetch_all()
            .await?;
        let mut audit = Audit { seq: h.seal_seq, ..Audit::default() };
        for r in rows {
            if r.header == 1 {
                audit.fences = r.fence_claims.into_iter().zip(r.fence_limits).collect();
                audit.recent_below = r.recent_below;
            } else {
                audit.bytes.insert(r.tracking_id, r.bytes_out);
            }
        }
        Ok(Some(audit))
    }

    /// Record `bytes` as the count of `period` in `log_table` up to seal
    /// `seq`, counted under `fences` ([`fences_below`] it), with
    /// [`Split::recent_below`]: one INSERT.
    async fn record_log_audit(
        &self,
        period: &str,
        log_table: &str,
        seq: u64,
        bytes: &BTreeMap<String, u64>,
        fences: &BTreeMap<String, u64>,
        recent_below: u64,
    ) -> Result<(), StoreError> {
        #[derive(Serialize, clickhouse::Row)]
        struct AuditRow<'a> {
            period: &'a str,
            log_table: &'a str,
            seal_seq: u64,
            audit_id: u64,
            keys: u64,
            header: u8,
            tracking_id: &'a str,
            bytes_out: u64,
            fence_claims: Vec<&'a str>,
            fence_limits: Vec<u64>,
            recent_below: u64,
            audited_at: u32,
        }
        // ordered by the time of writing (milliseconds, then 16 random bits):
        // of two counts up to one seal, the later one is taken (a recount's)
        let now = chrono::Utc::now();
        let audit_id = ((now.timestamp_millis() as u64) << 16) | u64::from(rand::random::<u16>());
        let (keys, now) = (bytes.len() as u64 + 1, now.timestamp() as u32);
        let mut ins = self.client.insert::<AuditRow<'_>>("billing_log_audits").await?;
        let row = |header, tracking_id, bytes_out| AuditRow {
            period,
            log_table,
            seal_seq: seq,
            audit_id,
            keys,
            header,
            tracking_id,
            bytes_out,
            fence_claims: vec![],
            fence_limits: vec![],
            recent_below: 0,
            audited_at: now,
        };
        ins.write(&AuditRow {
            fence_claims: fences.keys().map(String::as_str).collect(),
            fence_limits: fences.values().copied().collect(),
            recent_below,
            ..row(1, "", 0)
        })
        .await?;
        for (t, b) in bytes {
            ins.write(&row(0, t.as_str(), *b)).await?;
        }
        ins.end().await?;
        Ok(())
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
        self.save_invoice_rows(invoices).await?;
        self.save_line_rows(invoices).await
    }

    async fn save_invoice_rows(&self, invoices: &[Invoice]) -> Result<(), StoreError> {
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
        Ok(())
    }

    async fn save_line_rows(&self, invoices: &[Invoice]) -> Result<(), StoreError> {
        if invoices.iter().all(|i| i.lines.is_empty()) {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp() as u32;
        let mut ins = self.client.insert::<LineRow<'_>>("billing_invoice_lines").await?;
        for inv in invoices {
            for l in &inv.lines {
                ins.write(&LineRow {
                    invoice_number: &inv.invoice_number,
                    partner_id: &inv.partner_id,
                    period: &inv.period,
                    status: status_str(inv),
                    line_no: l.line_no,
                    kind: l.kind.as_str().to_string(),
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

    /// What the usage tables hold as of now, to read every usage of one run
    /// from ([`Store::usage_at`]): per claimed epoch, rows up to its fence and
    /// up to its latest checkpoint. A checkpoint is written after every table
    /// of its flush, so a flush in progress is left out whole; the
    /// checkpoints are read before the claims, so a claim newer than them
    /// only leaves its own epoch out. Reading the same snapshot again gives the
    /// same usage, whatever was written since.
    pub async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        #[derive(Deserialize, clickhouse::Row)]
        struct Cp {
            topic: String,
            partition: u32,
            epoch: u64,
            position: u64,
        }
        // the seal first: every checkpoint it sealed to is then among those read next
        let sealed = self.latest_seal().await?;
        let cps: Vec<Cp> = self
            .client
            .query(&format!(
                "SELECT topic, partition, epoch, max(position) FROM {}.aggregator_checkpoints GROUP BY topic, partition, epoch",
                self.db
            ))
            .fetch_all()
            .await?;
        let checkpoints: BTreeMap<((String, u32), u64), u64> =
            cps.into_iter().map(|c| (((c.topic, c.partition), c.epoch), c.position)).collect();
        let fences = self.claim_fences().await?;
        let limits = fences.into_iter().map(|(k, fence)| (k.clone(), fence.min(checkpoints.get(&k).copied().unwrap_or(0)))).collect();
        Ok(Snapshot { limits, sealed })
    }

    /// `bytes_out` per tracking id with `window_start` in `[from, to)` as of
    /// `snapshot`: the usage billing prices.
    /// The sealed part is one row per tracking id, day and seal (the daily
    /// sealed table, ordered by tracking id and day); the log is read only
    /// above the seal's offsets.
    pub async fn usage_at(&self, snapshot: &Snapshot, from: NaiveDate, to: NaiveDate) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut usage = self.log_rows_total("usage_by_tracking_log", &snapshot.limits, &snapshot.sealed, from, to).await?;
        if snapshot.sealed.seq == 0 {
            return Ok(usage);
        }
        let sql = format!(
            "SELECT tracking_id AS key, sum(bytes_out) AS bytes FROM {db}.usage_by_tracking_daily_sealed \
             WHERE day >= toDate(toDateTime(?)) AND day < toDate(toDateTime(?)) \
               AND seal_id GLOBAL IN (SELECT seal_id FROM {db}.usage_seals WHERE seq <= ?) \
             GROUP BY tracking_id",
            db = self.db
        );
        let rows: Vec<KeyBytes> = self.client.query(&sql).bind(secs(from)).bind(secs(to)).bind(snapshot.sealed.seq).fetch_all().await?;
        // a consolidation after the snapshot replaced rows of its seals with
        // rows of a later one: this answer may lack them
        let later: u64 = self
            .client
            .query(&format!("SELECT count() FROM {}.usage_seals WHERE consolidated = 1 AND seq > ?", self.db))
            .bind(snapshot.sealed.seq)
            .fetch_one()
            .await?;
        if later > 0 {
            return Err(StoreError::SnapshotConsolidated(snapshot.sealed.seq));
        }
        for r in rows {
            let e = usage.entry(r.key).or_insert(0);
            *e = e.checked_add(r.bytes).ok_or_else(|| StoreError::Config("usage overflows u64".into()))?;
        }
        Ok(usage)
    }

    /// The ledger: every issued invoice with what it billed ([`Ledger::from_rows`]).
    pub async fn ledger(&self) -> Result<Ledger, StoreError> {
        let rows: Vec<LedgerRow> = self
            .client
            .query(&format!(
                "SELECT invoice_number, partner_id, period, issue_id, toUInt32(issued_at), currency, total, document, \
                 billed_periods, billed_tracking_ids, billed_bytes, settled, snapshot FROM {}.billing_ledger",
                self.db
            ))
            .fetch_all()
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for r in rows {
            let invoice = Invoice::from_json(&r.document).map_err(|e| StoreError::Corrupt(r.invoice_number.clone(), e.to_string()))?;
            let n = r.billed_periods.len();
            if r.billed_tracking_ids.len() != n || r.billed_bytes.len() != n {
                return Err(StoreError::Corrupt(r.invoice_number, "billed arrays of different lengths".into()));
            }
            let billed = (r.billed_periods.into_iter().zip(r.billed_tracking_ids).zip(r.billed_bytes))
                .map(|((usage_period, tracking_id), bytes)| Billed { usage_period, tracking_id, bytes })
                .collect();
            records.push(LedgerRecord {
                invoice,
                issue_id: r.issue_id,
                issued_at: r.issued_at,
                billed,
                settled: r.settled,
                snapshot: r.snapshot,
            });
        }
        Ok(Ledger::from_rows(records))
    }

    /// Record issued invoices: one row each, in one INSERT. A row is the
    /// invoice with everything it billed, so either it counts whole or it is
    /// not there.
    pub async fn append_ledger(&self, records: &[LedgerRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut ins = self.client.insert::<LedgerRow>("billing_ledger").await?;
        for r in records {
            let inv = &r.invoice;
            ins.write(&LedgerRow {
                invoice_number: inv.invoice_number.clone(),
                partner_id: inv.partner_id.clone(),
                period: inv.period.clone(),
                issue_id: r.issue_id,
                issued_at: r.issued_at,
                currency: inv.currency.clone(),
                total: inv.total.to_string(),
                document: inv.to_json(),
                billed_periods: r.billed.iter().map(|b| b.usage_period.clone()).collect(),
                billed_tracking_ids: r.billed.iter().map(|b| b.tracking_id.clone()).collect(),
                billed_bytes: r.billed.iter().map(|b| b.bytes).collect(),
                settled: r.settled.clone(),
                snapshot: r.snapshot.clone(),
            })
            .await?;
        }
        ins.end().await?;
        Ok(())
    }

    /// The issued invoices of `ledger` that `table` has no issued row of.
    async fn missing(&self, ledger: &Ledger, table: &str) -> Result<Vec<Invoice>, StoreError> {
        let sql = format!("SELECT DISTINCT invoice_number FROM {}.{table} WHERE status = 'issued'", self.db);
        let have: BTreeSet<String> = self.client.query(&sql).fetch_all::<String>().await?.into_iter().collect();
        Ok(ledger.records.values().filter(|r| !have.contains(&r.invoice.invoice_number)).map(|r| r.invoice.clone()).collect())
    }

    /// Copy the ledger's issued invoices that `billing_invoices` lacks into
    /// it (for the console and analysts): completes what a crash after the
    /// ledger insert left out. Returns how many were copied.
    pub async fn complete_invoices(&self, ledger: &Ledger) -> Result<usize, StoreError> {
        let missing = self.missing(ledger, "billing_invoices").await?;
        self.save_invoice_rows(&missing).await?;
        Ok(missing.len())
    }

    /// The same for `billing_invoice_lines`.
    pub async fn complete_lines(&self, ledger: &Ledger) -> Result<usize, StoreError> {
        let missing = self.missing(ledger, "billing_invoice_lines").await?;
        self.save_line_rows(&missing).await?;
        Ok(missing.len())
    }

    /// Every manual adjustment, oldest first.
    pub async fn adjustments(&self) -> Result<Vec<ManualAdjustment>, StoreError> {
        let rows: Vec<AdjustmentRow> = self
            .client
            .query(&format!(
                "SELECT adjustment_id, partner_id, period, kind, bytes, amount, reason, author, toUInt32(created_at) \
                 FROM {}.billing_adjustments ORDER BY created_at, adjustment_id",
                self.db
            ))
            .fetch_all()
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let corrupt = |what: &str| StoreError::Corrupt(format!("adjustment {}", r.adjustment_id), what.to_string());
            let kind = AdjustmentKind::parse(&r.kind).ok_or_else(|| corrupt("kind"))?;
            let amount = if r.amount.is_empty() { None } else { Some(r.amount.parse().map_err(|_| corrupt("amount"))?) };
            out.push(ManualAdjustment {
                adjustment_id: r.adjustment_id,
                partner_id: r.partner_id,
                period: r.period,
                kind,
                bytes: r.bytes,
                amount,
                reason: r.reason,
                author: r.author,
                created_at: r.created_at,
            });
        }
        Ok(out)
    }

    /// Record a manual adjustment (never changed afterwards).
    pub async fn record_adjustment(&self, a: &ManualAdjustment) -> Result<(), StoreError> {
        let mut ins = self.client.insert::<AdjustmentRow>("billing_adjustments").await?;
        ins.write(&AdjustmentRow {
            adjustment_id: a.adjustment_id.clone(),
            partner_id: a.partner_id.clone(),
            period: a.period.clone(),
            kind: a.kind.as_str().to_string(),
            bytes: a.bytes,
            amount: a.amount.map(|d| d.to_string()).unwrap_or_default(),
            reason: a.reason.clone(),
            author: a.author.clone(),
            created_at: a.created_at,
        })
        .await?;
        ins.end().await?;
        Ok(())
    }

    /// Take the issue lock (waiting for a holder): one `billing issue` at a
    /// time per database, whatever the period, since issuing one period
    /// settles corrections of others. Held for seconds; one older than
    /// `stale_secs` (its holder crashed) is taken over.
    pub async fn lock_issue(&self, stale_secs: u64) -> Result<(), StoreError> {
        runtime::ch::ddl_lock(&self.server, &self.db, ISSUE_LOCK, self.local.on(), stale_secs, runtime::ch::LockWait::Wait)
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Config(format!("the issue lock: {e}")))
    }

    /// Release the issue lock.
    pub async fn unlock_issue(&self) {
        runtime::ch::ddl_unlock(&self.server, &self.db, ISSUE_LOCK, self.local.on()).await
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
        assert_eq!(names(TABLES[0].columns), <InvoiceRow<'_> as Row>::COLUMN_NAMES);
        assert_eq!(names(TABLES[1].columns), <LineRow<'_> as Row>::COLUMN_NAMES);
        assert_eq!(names(TABLES[2].columns), <LedgerRow as Row>::COLUMN_NAMES);
        assert_eq!(names(TABLES[3].columns), <AdjustmentRow as Row>::COLUMN_NAMES);
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

/// `s` as a ClickHouse string literal (quotes and backslashes escaped).
fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}
