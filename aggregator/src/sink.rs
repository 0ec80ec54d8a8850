//! The ClickHouse implementation of [`Store`]: claims, loading a partition's
//! state on assignment, and writing flush batches.

use crate::dedup::{Dedup, Horizon, SeqSet};
use crate::error::AggError;
use crate::rowbinary::RowBinary;
use crate::store::{new_claim_id, Latest, LoadedPartition, Store};
use crate::tables::Table;
use runtime::ch::ClickHouseConfig;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// The ClickHouse side of the aggregator.
#[derive(Clone)]
pub struct Sink {
    client: clickhouse::Client,
    db: String,
    topic: String,
    insert_timeout: Duration,
    claim_barrier: Option<std::sync::Arc<tokio::sync::Barrier>>,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct CheckpointRow {
    partition: u32,
    position: u64,
    watermark_ms: i64,
    arrival_ms: i64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct EpochRow {
    partition: u32,
    epoch: u64,
    claims: u64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct DedupRow {
    viewer_id: String,
    seq_ranges: Vec<i64>,
    last_seen_ms: i64,
    /// The checkpoint position of the viewer's latest row: an upper bound of its last offset.
    position: u64,
}

/// The claim fences joined to a table with `topic, partition, epoch` columns:
/// `aggregator_fences` has one row per key by construction, and `ALL` means
/// the same on every supported version (see migration 6).
fn join_fences(db: &str) -> String {
    format!("ALL INNER JOIN (SELECT topic, partition, epoch, fence FROM {db}.aggregator_fences) AS f USING (topic, partition, epoch)")
}

impl Sink {
    /// Connect to the database of `cfg` for `topic`. Every insert is one
    /// synchronous part ([`ClickHouseConfig::writer_client`]).
    pub async fn connect(cfg: &ClickHouseConfig, topic: &str) -> Result<Self, AggError> {
        let db = cfg.db().map_err(|e| AggError::Config(e.to_string()))?.to_string();
        let client = cfg.writer_client().await.map_err(|e| AggError::Config(format!("ClickHouse at {}: {e}", cfg.url)))?;
        Ok(Sink { client, db, topic: topic.to_string(), insert_timeout: Duration::from_secs(60), claim_barrier: None })
    }

    /// For tests of concurrent claims: every [`Store::claim`] of this sink
    /// (and its clones) waits at `barrier` between reading the partitions'
    /// state and writing its claim, so that claimers all read before any
    /// writes (at most 10 s: a claimer that failed before the barrier does
    /// not hold the others for ever).
    pub fn with_claim_barrier(mut self, barrier: std::sync::Arc<tokio::sync::Barrier>) -> Self {
        self.claim_barrier = Some(barrier);
        self
    }

    async fn insert_raw(&self, sql: String, data: &[u8], query_id: &str) -> Result<(), AggError> {
        let mut insert = self
            .client
            .insert_formatted_with(sql)
            .with_option("max_insert_block_size", "100000000")
            .with_option("query_id", query_id)
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        insert.send(bytes::Bytes::copy_from_slice(data)).await?;
        insert.end().await?;
        Ok(())
    }
}

impl Store for Sink {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn latest_epochs(&self, partitions: &[i32]) -> Result<HashMap<i32, Latest>, AggError> {
        let list: Vec<u32> = partitions.iter().map(|&p| p as u32).collect();
        // per partition: the largest epoch and how many distinct claims hold it
        let rows: Vec<EpochRow> = self
            .client
            .query(&format!(
                "SELECT partition, epoch, toUInt64(uniqExact(claim_id)) FROM {}.aggregator_claims \
                 WHERE topic = ? AND has(?, partition) GROUP BY partition, epoch \
                 ORDER BY partition, epoch DESC LIMIT 1 BY partition",
                self.db
            ))
            .bind(&self.topic)
            .bind(&list)
            .fetch_all()
            .await?;
        Ok(rows.into_iter().map(|r| (r.partition as i32, Latest { epoch: r.epoch, contested: r.claims > 1 })).collect())
    }

    async fn claim(&self, partitions: &[i32], member: &str, horizon: Horizon) -> Result<HashMap<i32, LoadedPartition>, AggError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let db = &self.db;
        let list: Vec<u32> = partitions.iter().map(|&p| p as u32).collect();
        let epochs = self.latest_epochs(partitions).await?;
        // A sealed checkpoint counts whatever claims land later (a late
        // contested claim makes its epoch's fence 0): the sealed rows hold
        // the log up to it, so a claim must never resume below it.
        let sealed = crate::seal::latest(&self.client, db).await?;
        let (sealed_parts, sealed_to): (Vec<u32>, Vec<u64>) =
            sealed.sealed_to.iter().filter(|((t, p), _)| *t == self.topic && list.contains(p)).map(|((_, p), &to)| (*p, to)).unzip();
        let (counts, from_seal) = if sealed_parts.is_empty() {
            ("position <= fence".to_string(), String::new())
        } else {
            // 18.16's transform() refuses empty arrays: only with a seal
            let sealed = format!("transform(partition, {sealed_parts:?}, {sealed_to:?}, toUInt64(0))");
            // nothing below the seal can be resumed from: the read starts
            // there (the table's key), whatever the partition's age
            (format!("(position <= fence OR position <= {sealed})"), format!(" AND position >= {sealed}"))
        };
        // the last checkpoint of each partition that no later claim superseded
        let checkpoints: Vec<CheckpointRow> = self
            .client
            .query(&format!(
                "SELECT partition, max(position) AS pos, argMax(watermark_ms, position), argMax(arrival_ms, position) \
                 FROM {db}.aggregator_checkpoints {} \
                 WHERE topic = ? AND has(?, partition) AND {counts}{from_seal} GROUP BY partition",
                join_fences(db)
            ))
            .bind(&self.topic)
            .bind(&list)
            .fetch_all()
            .await?;
        if let Some(b) = &self.claim_barrier {
            let _ = tokio::time::timeout(Duration::from_secs(10), b.wait()).await;
        }
        let now = chrono::Utc::now().timestamp().clamp(0, u32::MAX as i64) as u32;
        let mut claims = RowBinary::default();
        let mut out = HashMap::new();
        for &p in partitions {
            let cp = checkpoints.iter().find(|c| c.partition == p as u32);
            let epoch = epochs.get(&p).map_or(1, |l| l.epoch + 1);
            let start = cp.map_or(0, |c| c.position);
            claims.string(&self.topic).u32(p as u32).u64(epoch).u64(start).string(member).u64(new_claim_id()).datetime(now);
            claims.end_row();
            out.insert(
                p,
                LoadedPartition {
                    epoch,
                    position: cp.map(|c| c.position as i64),
                    watermark_ms: cp.map_or(i64::MIN, |c| c.watermark_ms),
                    arrival_ms: cp.map_or(i64::MIN, |c| c.arrival_ms),
                    dedup: Dedup::new(horizon),
                    viewers_restored: 0,
                },
            );
        }
        // the claim lands before any row of the new epoch is written
        let query_id = format!("claim-{member}-{}-{}", chrono::Utc::now().timestamp_micros(), list.len());
        self.insert_raw(
            format!(
                "INSERT INTO {db}.aggregator_claims (topic, partition, epoch, start_offset, member, claim_id, claimed_at) FORMAT RowBinary"
            ),
            &claims.buf,
            &query_id,
        )
        .await?;
        for (&p, l) in out.iter_mut() {
            let Some(pos) = l.position else { continue };
            // viewers within either horizon of the checkpoint, from the days
            // that can hold them (crate::compact)
            let (cutoff_ms, cutoff_offset) = crate::compact::cutoffs(horizon, pos, l.arrival_ms);
            let since =
                crate::compact::restore_since(&self.client, db, &self.topic, p as u32, pos as u64, cutoff_ms, cutoff_offset).await?;
            let mut cursor = self
                .client
                .query(&format!(
                    "SELECT viewer_id, argMax(seq_ranges, position) AS ranges, max(last_seen_ms) AS seen, max(position) AS pos \
                     FROM {db}.aggregator_dedup {} \
                     WHERE topic = ? AND partition = ? AND position <= ? AND {counts} AND created_at >= toDateTime(?) \
                     GROUP BY viewer_id HAVING seen >= ? OR pos >= ?",
                    join_fences(db)
                ))
                .bind(&self.topic)
                .bind(p as u32)
                .bind(pos as u64)
                .bind(since)
                .bind(cutoff_ms)
                .bind(cutoff_offset)
                .fetch::<DedupRow>()?;
            while let Some(row) = cursor.next().await? {
                let seqs = SeqSet::from_flat(&row.seq_ranges)
                    .ok_or_else(|| AggError::CorruptState(format!("aggregator_dedup: bad seq_ranges for viewer {:?}", row.viewer_id)))?;
                l.dedup.restore(&row.viewer_id, seqs, row.last_seen_ms, row.position as i64);
                l.viewers_restored += 1;
            }
        }
        Ok(out)
    }

    async fn insert(&self, table: Table, rows: &RowBinary, query_id: &str) -> Result<(), AggError> {
        self.insert_raw(table.insert_sql(&self.db), &rows.buf, query_id).await
    }
}
