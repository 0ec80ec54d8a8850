//! ClickHouse I/O of the aggregator: loading a partition's state on
//! assignment, and writing flush batches.

use crate::dedup::{Dedup, SeqSet};
use crate::error::AggError;
use crate::state::Thresholds;
use crate::tables::Table;
use schemas::ch::ClickHouseConfig;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// What ClickHouse holds about one partition.
#[derive(Debug)]
pub struct LoadedPartition {
    /// Position of the last complete checkpoint (`None`: start from the beginning).
    pub position: Option<i64>,
    pub watermark_ms: i64,
    pub thresholds: Thresholds,
    pub dedup: Dedup,
    pub viewers_restored: usize,
}

/// The ClickHouse side of the aggregator.
#[derive(Clone)]
pub struct Sink {
    client: clickhouse::Client,
    db: String,
    topic: String,
    insert_timeout: Duration,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct CheckpointRow {
    partition: u32,
    position: u64,
    watermark_ms: i64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct MaxRow {
    partition: u32,
    max_offset: u64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct DedupRow {
    viewer_id: String,
    seq_ranges: Vec<i64>,
    last_seen_ms: i64,
}

impl Sink {
    pub fn new(cfg: &ClickHouseConfig, topic: &str) -> Result<Self, AggError> {
        let db = cfg.db().map_err(|e| AggError::Config(e.to_string()))?.to_string();
        Ok(Sink { client: cfg.client(), db, topic: topic.to_string(), insert_timeout: Duration::from_secs(60) })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Load checkpoint, table thresholds and dedup state of `partitions`.
    pub async fn load(&self, partitions: &[i32], horizon_ms: i64) -> Result<HashMap<i32, LoadedPartition>, AggError> {
        if partitions.is_empty() {
            return Ok(HashMap::new());
        }
        let db = &self.db;
        let list: Vec<u32> = partitions.iter().map(|&p| p as u32).collect();
        let checkpoints: Vec<CheckpointRow> = self
            .client
            .query(&format!(
                "SELECT partition, max(position) AS pos, argMax(watermark_ms, position) AS wm \
                 FROM {db}.aggregator_checkpoints WHERE topic = ? AND has(?, partition) GROUP BY partition"
            ))
            .bind(&self.topic)
            .bind(&list)
            .fetch_all()
            .await?;
        let mut thresholds: HashMap<(Table, u32), i64> = HashMap::new();
        for (table, col_topic) in [
            (Table::Viewer, "src_topic"),
            (Table::Tracking, "src_topic"),
            (Table::DeadLetters, "src_topic"),
        ] {
            let rows: Vec<MaxRow> = self
                .client
                .query(&format!(
                    "SELECT src_partition AS partition, max(src_offset) AS max_offset FROM {db}.{} \
                     WHERE {col_topic} = ? AND has(?, src_partition) GROUP BY src_partition",
                    table.name()
                ))
                .bind(&self.topic)
                .bind(&list)
                .fetch_all()
                .await?;
            for r in rows {
                thresholds.insert((table, r.partition), r.max_offset as i64);
            }
        }
        let mut out = HashMap::new();
        for &p in partitions {
            let cp = checkpoints.iter().find(|c| c.partition == p as u32);
            let position = cp.map(|c| c.position as i64);
            let watermark_ms = cp.map(|c| c.watermark_ms).unwrap_or(i64::MIN);
            let floor = position.unwrap_or(0);
            let thr = |t: Table| thresholds.get(&(t, p as u32)).copied().unwrap_or(0).max(floor);
            let mut dedup = Dedup::new(horizon_ms);
            let mut restored = 0;
            if let Some(pos) = position {
                let cutoff = watermark_ms.saturating_sub(horizon_ms);
                let mut cursor = self
                    .client
                    .query(&format!(
                        "SELECT viewer_id, argMax(seq_ranges, position) AS ranges, max(last_seen_ms) AS seen \
                         FROM {db}.aggregator_dedup \
                         WHERE topic = ? AND partition = ? AND position <= ? AND last_seen_ms >= ? \
                         GROUP BY viewer_id"
                    ))
                    .bind(&self.topic)
                    .bind(p as u32)
                    .bind(pos as u64)
                    .bind(cutoff)
                    .fetch::<DedupRow>()?;
                while let Some(row) = cursor.next().await? {
                    let seqs = SeqSet::from_flat(&row.seq_ranges).ok_or_else(|| {
                        AggError::CorruptState(format!("aggregator_dedup: bad seq_ranges for viewer {:?}", row.viewer_id))
                    })?;
                    dedup.restore(&row.viewer_id, seqs, row.last_seen_ms);
                    restored += 1;
                }
            }
            out.insert(
                p,
                LoadedPartition {
                    position,
                    watermark_ms,
                    thresholds: Thresholds {
                        viewer: thr(Table::Viewer),
                        tracking: thr(Table::Tracking),
                        dead: thr(Table::DeadLetters),
                    },
                    dedup,
                    viewers_restored: restored,
                },
            );
        }
        Ok(out)
    }

    /// Write one table's rows of a batch in a single `INSERT` (one part, atomic).
    pub async fn insert_with_id(&self, table: Table, data: &[u8], query_id: &str) -> Result<(), AggError> {
        let mut insert = self
            .client
            .insert_formatted_with(table.insert_sql(&self.db))
            .with_option("max_insert_block_size", "100000000")
            .with_option("query_id", query_id)
            .with_timeouts(Some(self.insert_timeout), Some(self.insert_timeout));
        insert.send(bytes::Bytes::copy_from_slice(data)).await?;
        insert.end().await?;
        Ok(())
    }

    /// How many of a batch's `(partition, position)` tags `table` holds: did
    /// an earlier attempt of this insert land? On one server an insert is one
    /// part, so the answer is all or none; on a sharded cluster each shard
    /// takes its partitions' rows separately and it can be some.
    pub async fn landed(&self, table: Table, tags: &[(i32, i64)]) -> Result<usize, AggError> {
        if tags.is_empty() {
            return Ok(0);
        }
        // integers only: formatted into the query, nothing to escape
        let list: Vec<String> = tags.iter().map(|&(p, pos)| format!("({p}, {pos})")).collect();
        let n: u64 = self
            .client
            .query(&format!(
                "SELECT uniqExact(src_partition, src_offset) FROM {}.{} \
                 WHERE src_topic = ? AND (src_partition, src_offset) IN ({})",
                self.db,
                table.name(),
                list.join(", ")
            ))
            .bind(&self.topic)
            .fetch_one()
            .await?;
        Ok(n as usize)
    }

    /// Cheap reachability check.
    pub async fn ping(&self) -> Result<(), AggError> {
        let _: u8 = self.client.query("SELECT 1").fetch_one().await?;
        Ok(())
    }
}
