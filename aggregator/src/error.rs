//! The aggregator's one error type. Variants say how to recover.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum AggError {
    /// Bad configuration: fix it and restart.
    #[error("configuration: {0}")]
    Config(String),
    /// ClickHouse failed or is unreachable: retry with backoff; offsets stay unadvanced.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// Kafka failed: librdkafka reconnects by itself; fatal only at start-up.
    #[error("Kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Stored state cannot be read back: stop, do not guess.
    #[error("corrupt aggregator state: {0}")]
    CorruptState(String),
    /// Partitions were revoked while a batch was still unwritten: the batch is
    /// dropped and the new owner re-reads from the stored positions.
    #[error("rebalance interrupted a flush of partitions {0:?}")]
    RebalanceInterrupt(Vec<i32>),
    /// A failed insert landed for some of the batch's partitions and not for
    /// others (a sharded cluster, where each shard takes its part of an insert
    /// separately): in-memory state no longer matches ClickHouse. Drop it and
    /// reload every partition from ClickHouse, whose per-partition thresholds
    /// then decide exactly what is still missing.
    #[error("insert into {table} landed for {landed} of {total} partitions: reloading state from ClickHouse")]
    ConflictingOffsets { table: &'static str, landed: usize, total: usize },
    /// The task writing a batch died (a panic) and took the batch with it:
    /// like [`AggError::ConflictingOffsets`], reload every partition.
    #[error("the flush task failed ({0}): reloading state from ClickHouse")]
    FlushLost(String),
}

impl AggError {
    /// Worth retrying (the same operation may succeed later).
    pub fn is_transient(&self) -> bool {
        matches!(self, AggError::ClickHouse(_) | AggError::Kafka(_))
    }

    /// In-memory state no longer matches ClickHouse: drop it and reload.
    pub fn needs_reload(&self) -> bool {
        matches!(self, AggError::ConflictingOffsets { .. } | AggError::FlushLost(_))
    }
}
