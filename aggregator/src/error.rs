//! The aggregator's one error type. Variants say how to recover.

use thiserror::Error;

/// Why an aggregator operation failed; each variant says what the caller does next.
#[derive(Debug, Error)]
pub enum AggError {
    /// Bad configuration: fix it and restart.
    #[error("configuration: {0}")]
    Config(String),
    /// ClickHouse failed or is unreachable: drop the in-memory state, claim
    /// the partitions again (with backoff) and re-read from the last
    /// checkpoint. Whatever part of the failed batch landed is superseded by
    /// the new claim.
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
    /// Another member claimed these partitions after this member did: its
    /// writes to them no longer count. Drop their state and wait for Kafka to
    /// assign them again (never claim them back on our own).
    #[error("partitions {0:?} were claimed by another member: this member's writes to them no longer count")]
    Fenced(Vec<i32>),
    /// Another member claimed these partitions with the same epoch at the
    /// same time as this member: neither claim's rows count. Drop their state
    /// and claim them again (with backoff); the new claim supersedes both.
    #[error("partitions {0:?} were claimed by another member at the same epoch: claiming them again")]
    ClaimContested(Vec<i32>),
    /// A partition's checkpoint lies outside the Kafka log: the partition is
    /// refused rather than silently skipped or re-read.
    #[error("partition {partition}: checkpoint at offset {checkpoint} is outside the log [{log_start}, {log_end}]: {hint}")]
    OffsetOutOfRange {
        /// The Kafka partition refused.
        partition: i32,
        /// Position of the partition's last valid checkpoint (the next offset to read).
        checkpoint: i64,
        /// First offset still in the partition's log.
        log_start: i64,
        /// The partition's high watermark: the offset the next record will get.
        log_end: i64,
        /// What the operator can do about it.
        hint: &'static str,
    },
    /// The task writing a batch died (a panic) and took the batch with it:
    /// reload every partition.
    #[error("the flush task failed ({0}): reloading state from ClickHouse")]
    FlushLost(String),
    /// A fault injected by a test.
    #[error("injected fault: {0}")]
    Injected(String),
}

impl AggError {
    /// Worth retrying (the same operation may succeed later).
    pub fn is_transient(&self) -> bool {
        matches!(self, AggError::ClickHouse(_) | AggError::Kafka(_) | AggError::Injected(_))
    }
}
