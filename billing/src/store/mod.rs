//! ClickHouse side of billing: usage per tracking id (from the fenced views,
//! or from the log tables as of a [`Snapshot`]), the ledger
//! (`billing_ledger`, `billing_adjustments`) and the invoice tables the
//! console and analysts read (`billing_invoices`, `billing_invoice_lines`).

use chrono::NaiveDate;
use runtime::ch::ClickHouseConfig;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use thiserror::Error;

pub mod ledger;
pub mod log_count;

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

/// Billing's client: the filters of its period reach the sealed tables and
/// the log under the views ([`runtime::ch::predicates_pushed`]); a
/// `--recount`, which groups a month of minute rows, spills to disk
/// ([`runtime::ch::spilling`]).
fn reader(client: clickhouse::Client) -> clickhouse::Client {
    runtime::ch::spilling(runtime::ch::predicates_pushed(client))
}

fn secs(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp()
}

impl Store {
    /// A store for reading (the API's console).
    pub fn new(cfg: &ClickHouseConfig) -> Result<Self, StoreError> {
        let db = cfg.db().map_err(|e| StoreError::Config(e.to_string()))?.to_string();
        Ok(Store { client: reader(cfg.client()), server: cfg.server_client(), db, local: LocalTables::of(cfg)? })
    }

    /// A store for `billing` itself, which writes: every insert is one
    /// synchronous part ([`ClickHouseConfig::writer_client`]).
    pub async fn connect(cfg: &ClickHouseConfig) -> Result<Self, StoreError> {
        let db = cfg.db().map_err(|e| StoreError::Config(e.to_string()))?.to_string();
        let client = cfg.writer_client().await.map_err(|e| StoreError::Config(format!("ClickHouse at {}: {e}", cfg.url)))?;
        Ok(Store { client: reader(client), server: cfg.server_client(), db, local: LocalTables::of(cfg)? })
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

    /// `bytes_out` per tracking id with `window_start` in `[from, to)` of the
    /// rows of a minute view (`usage_by_tracking`, `usage_by_viewer`) that
    /// come from its tail, the fenced log rows above the latest seal (a
    /// sealed row has no source topic): for reconciliation, which counts the
    /// same rows on the log directly. (The tail's rows of the period are
    /// read; the sealed rows are left out by the filter on the topic.)
    pub async fn tail_total(&self, view: &str, from: NaiveDate, to: NaiveDate) -> Result<BTreeMap<String, u64>, StoreError> {
        let sql = format!(
            "SELECT tracking_id AS key, sum(bytes_out) AS bytes FROM {}.{view} \
             WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?) AND src_topic != '' GROUP BY tracking_id",
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

/// `s` as a ClickHouse string literal (quotes and backslashes escaped).
fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
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
