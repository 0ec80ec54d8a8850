//! # aggregator
//!
//! Consumes `media.metering.v1.ViewerUsage` events (Avro single-object
//! encoding) from Kafka and writes exact usage into ClickHouse: tumbling
//! windows (default 60 s) per tracking id into `usage_by_tracking`, per viewer
//! into `usage_by_viewer`, poison records into `usage_dead_letters`.
//!
//! ## Shape
//! One sequential consume loop ([`consumer::run`]) over a librdkafka
//! `BaseConsumer`. Each Kafka partition has a [`state::PartitionState`]:
//! position, watermark, dedup state and the pending aggregates. Every
//! `flush_interval_ms` (and when `flush_max_rows` rows are pending) the
//! pending aggregates of all partitions are cut into one batch and written
//! on the tokio runtime while the loop keeps consuming; at most one batch
//! is in flight, so batches land in order ([`core::Core::start_flush`];
//! rebalances and shutdown wait for it, [`core::Core::flush`]).
//!
//! ## Exactly once, without Kafka transactions
//! ClickHouse has no multi-table transactions, but one `INSERT` into a
//! `MergeTree` table without `PARTITION BY` writes one part, atomically. The
//! design rests on that and on determinism:
//!
//! 1. **Every row says where it came from.** Rows written by a flush carry
//!    `(src_topic, src_partition, src_offset)`, where `src_offset` is the
//!    partition's position (next offset to read) at that flush. Aggregates are
//!    kept per partition so that every row has one source partition.
//! 2. **The sink owns the offsets.** A flush writes, in order, dead letters,
//!    viewer rows, tracking rows, the dedup state of touched viewers, and last
//!    a checkpoint row per partition `(position, watermark)`. A checkpoint
//!    therefore implies that everything before it is in every table.
//! 3. **On assignment, the consumer seeks to what ClickHouse holds.** The
//!    rebalance callback reads, per partition, the last checkpoint `R`, and per
//!    data table `T` the threshold `thr(T) = max(R, max(src_offset) in T)`. It
//!    assigns the partition at offset `R`. While replaying, an event at offset
//!    `o` is added to table `T` only if `o >= thr(T)`: a table that already
//!    received a flush the crash cut short (inserts are atomic, so it holds all
//!    of it or nothing) is not written twice.
//! 4. **Replays decide the same way.** Dedup, lateness and window assignment
//!    depend only on the partition's message sequence and event time (the
//!    partition watermark), never on the wall clock or on flush timing. The
//!    dedup state is restored as of `R` (`aggregator_dedup`, rows with
//!    `position <= R`), so replaying `[R, ...)` repeats exactly the decisions
//!    of the first run. (One exception: `in_future`, checked against the clock
//!    with a one-hour tolerance; the ingest gateway rejects such events first.)
//! 5. **Retries never double-write.** A failed insert is retried with the same
//!    bytes and the same `query_id` (ClickHouse refuses a second query with the
//!    id of one still running), and before re-sending, the sink checks whether
//!    the earlier attempt landed after all (a row with the batch's tag).
//! 6. **Rebalances.** The eager protocol revokes every partition; the revoke
//!    callback tries one flush and drops the state. If the flush failed, the
//!    batch is dropped too: the next owner starts from the checkpoint, and
//!    thresholds protect whatever part of the batch did land. The loop keeps
//!    polling while a batch is written, so a slow insert does not push the
//!    member past `max.poll.interval.ms`. The remaining window is a member
//!    cut off from Kafka (not from ClickHouse) for longer than the session
//!    timeout, whose insert lands after the next owner read its thresholds
//!    (a zombie write); inserts time out after 60 s, which bounds it, and
//!    Kafka alone cannot fence it without transactions.
//!
//! Kafka offset commits are made after each checkpoint for lag tools only;
//! they are never read back.
//!
//! ## Duplicates, lateness
//! See [`dedup`] for the `(viewer_id, seq)` horizon (default 24 h of event
//! time). Events older than the partition watermark minus `max_lateness_secs`
//! (default 35 days) are dead-lettered as `too_late`; later events within it
//! are added as further partial rows of their (already written) window.
//!
//! ## Memory
//! Bounded by active viewers (dedup state, one range per well-behaved viewer)
//! plus pending rows; above `max_pending_rows` (ClickHouse slow or down)
//! consumption pauses until the backlog is written.

pub mod config;
pub mod consumer;
pub mod core;
pub mod dead_letters;
pub mod dedup;
pub mod error;
pub mod metrics;
pub mod rowbinary;
pub mod rows;
pub mod server;
pub mod sink;
pub mod state;
pub mod store;
pub mod tables;

pub use config::AggregatorConfig;
pub use error::AggError;
