//! # aggregator
//!
//! Consumes `media.metering.v1.ViewerUsage` events (Avro single-object
//! encoding) from Kafka and writes exact usage into ClickHouse: tumbling
//! windows (default 60 s) per tracking id and per viewer, poison records as
//! dead letters. Analysts read `usage_by_tracking`, `usage_by_viewer`,
//! `usage_dead_letters` and the rollups, all views (`docs/clickhouse.md`).
//!
//! ## Shape
//! One sequential consume loop ([`consumer::run`]) over a librdkafka
//! `BaseConsumer`. Each Kafka partition has a [`state::PartitionState`]:
//! claim epoch, position, watermark, arrival clock, dedup state and the
//! pending aggregates. Every `flush_interval_ms` (and when `flush_max_rows`
//! rows are pending) the pending aggregates of all partitions are cut into
//! one batch and written on the tokio runtime while the loop keeps
//! consuming; at most one batch is in flight ([`core::Core::start_flush`]).
//! Storage is behind the [`store::Store`] trait: [`sink::Sink`] is
//! ClickHouse; the tests' fake injects faults at any insert.
//!
//! Modules without cycles: [`rows`] (row values, a leaf) ← [`dedup`],
//! [`tables`] ← [`state`] ← [`core`] ← [`consumer`]; [`store`] and [`sink`]
//! beside them.
//!
//! ## Exactly once: epoch fencing at read time
//! ClickHouse has no multi-table transactions, no compare-and-set, and on
//! 18.16 no insert deduplication tokens; materialized views are written
//! after the base part, not with it. A writer therefore cannot be stopped
//! from writing: a member paused past its session timeout (GC, SIGSTOP, a
//! VM pause) resumes and writes; an insert whose body was sent before a
//! crash commits after the successor started; a batch stops half-way. The
//! design makes such writes *not count*, and makes every reader apply that:
//!
//! 1. **Claims.** A member that is assigned a partition (or must re-read it
//!    after a failed flush) writes a claim `(partition, epoch, start)` to
//!    `aggregator_claims`: `epoch` is one more than the partition's latest,
//!    `start` is the partition's last *valid* checkpoint `R`. The claim is
//!    written before any row of the new epoch, with a random `claim_id`.
//! 2. **Every row says who wrote it and where.** Rows carry
//!    `(src_topic, src_partition, src_epoch, src_offset)`: the writer's
//!    claim and the partition position after its flush. Aggregates are kept
//!    per partition so that every row has one source partition.
//! 3. **The fence rule.** A row of epoch `e` at position `p` is valid iff
//!    `p <= fence(e)`, where `fence(e)` is the smallest `start` of any later
//!    claim of the partition (∞ while `e` is the latest), and 0 if `e` is
//!    *contested*: held by claims of more than one `claim_id` (see 8). A superseded
//!    writer's rows past the successor's start are invalid whenever they
//!    land; its rows up to that start are exactly what the successor
//!    resumed from. The views `aggregator_fences`, `usage_by_tracking`,
//!    `usage_by_viewer`, `usage_dead_letters` apply the rule; the rollups
//!    (`usage_by_tracking_hourly`, `..._daily`, `usage_by_stream_daily`,
//!    `usage_by_viewer_daily`) are views over the same sealed rows (see
//!    [`seal`]) and fenced tail, so they can never disagree with them; billing and
//!    the statistics API read the views. The aggregator applies the rule
//!    to its own state: the valid checkpoint with the largest position is
//!    where a claim resumes, and the dedup state is restored from valid
//!    rows at or before it.
//! 4. **The sink owns the offsets.** A flush writes, in order, dead letters,
//!    viewer rows, tracking rows, the dedup state of touched viewers, and last
//!    a checkpoint row per partition `(epoch, position, watermark, arrival)`.
//!    A valid checkpoint therefore implies that its epoch's rows up to it are
//!    all there. Kafka offset commits are made after each checkpoint for lag
//!    tools only; they are never read back.
//! 5. **No retry of an uncertain write.** A batch is never re-sent. Any
//!    failed insert (an error, a timeout after the body was sent, a dead
//!    flush task) drops the in-memory state; the partitions are claimed again
//!    with backoff (paused meanwhile) and re-read from their last valid
//!    checkpoint. The new claim supersedes whatever part of the failed batch
//!    landed, now or later: there is no "did it land?" check to race.
//! 6. **Replays decide the same way.** Dedup, lateness, window assignment,
//!    the `in_future` check and dead letters' `received_at` depend only on
//!    the partition's messages (payloads, offsets, Kafka timestamps) and the
//!    state restored from the checkpoint, never on the wall clock or on flush
//!    timing. So a replay by any member rewrites exactly what the superseded
//!    rows held.
//! 7. **Stale members notice.** Before each batch the writer reads the
//!    latest epoch of its partitions; if another member claimed one since,
//!    the batch is dropped, the partition is paused and reported (readiness
//!    false, `aggregator_fenced_total`) until Kafka assigns it again. A
//!    fenced member never claims a partition back on its own. The check is an
//!    optimisation (the fence rule alone keeps the totals exact).
//! 8. **Claims that collide count nothing.** Without compare-and-set two
//!    members can both read the latest epoch `e` before either writes `e+1`
//!    (a stale member reloading after a failed insert while Kafka gave the
//!    partition to another; a read that does not see a claim yet). Both
//!    claims then hold `e+1`, and rows of equal epochs do not fence each
//!    other, so both members' rows would count. Instead a contested epoch
//!    counts nothing: its fence is 0 (a row carries events only at a
//!    position past its claim's start, so at least 1), while its smallest
//!    start still fences the earlier epochs. Why this stays exact: every
//!    contested claim's start `R_i` was a valid checkpoint when it was read,
//!    so the earlier epochs' rows up to `min R_i` are all there and count;
//!    their rows past it and all of `e+1` do not; the next claim `e+2` reads
//!    every claim written before it, so its start is the last valid
//!    checkpoint under them, at most `min R_i`, and it restores the dedup
//!    state from the rows that still count. Nothing in between is counted
//!    twice or lost. Liveness: the check of 7 also reads whether the own
//!    epoch is contested; a member that finds it so drops the partition's
//!    state and claims again after a jittered backoff (`ClaimContested`,
//!    `aggregator_claims_contested_total`), so two members cannot keep
//!    colliding in step. A claim row written twice (same `claim_id`) is one
//!    claim. Claims from before migration 7 carry `claim_id` 0 and keep their
//!    meaning. Tested with a barrier between the claim's read and write
//!    (`Sink::with_claim_barrier`) on the real server, and with the fake.
//! 9. **A sealed checkpoint counts.** A seal (`seal`) folds the rows up to a
//!    partition's latest valid checkpoint into the sealed tables, and readers
//!    read the log only above it. A contested claim that lands after the
//!    seal makes that checkpoint's epoch count nothing in the log, but the
//!    sealed rows keep it; so a claim resumes at the latest seal's offset at
//!    least, restoring the dedup state as of it, and counts only past it.
//! 10. **The tail by insertion time.** Readers find the log rows above the
//!     latest seal by the hour they were inserted: the server stamps
//!     `inserted_at` at each insert, and a seal records a time before which
//!     no row of its tail was inserted (`seal`, "The tail's time bound"). A
//!     row that counts above a seal was acknowledged after that seal's reads
//!     began, within the 60 s insert timeout of its start; the seal's margin
//!     (600 s) covers that and the clocks of the servers. Which rows count is
//!     still decided by 1 to 9 alone. A consolidation (`consolidate`) swaps a
//!     month of sealed rows for one row per key, committed as a seal.
//!
//! Why not idempotent segments (deterministic cut points, replayed segments
//! byte-identical and deduplicated by the server)? They need insert
//! deduplication tokens, which 18.16 lacks, and rewriting the growing last
//! segment at every flush; fencing keeps append-only inserts, one query per
//! flush more, and a join with a table of claims (a few rows per partition
//! and rebalance) at read time.
//!
//! **Limits.** Claims are read and written through ClickHouse without
//! compare-and-set; colliding claims are made harmless by 8, not prevented.
//! A fenced member waits for Kafka to
//! assign the partition again; if the member that fenced it was itself a
//! stale one that has since left (a paused member whose flush failed on
//! resuming, so that it claimed again before learning it was expelled), the
//! partition stays unconsumed until the next rebalance: readiness is false
//! and `aggregator_partitions_refused` > 0 until then, and restarting the
//! member resolves it. Exactness holds throughout. On a replicated cluster, claims and
//! checkpoints must be read from an up-to-date replica
//! (`docs/operations.md`).
//!
//! ## Offsets
//! A checkpoint past the end of the partition's log (topic recreated) or
//! before its start (retention deleted records never aggregated) is refused:
//! the partition is not consumed, readiness is false, `aggregator_offset_errors_total`
//! and `aggregator_partitions_refused` say so, and the log names the
//! partition and the offsets. `accept_gap_partitions` accepts a retention
//! gap for listed partitions. The consumer runs with
//! `auto.offset.reset=error`; user properties that would change it are
//! ignored with a warning.
//!
//! ## Duplicates, lateness, bounds
//! See [`dedup`] for the `(viewer_id, seq)` horizon: 24 h of *arrival* (the
//! partition's largest Kafka timestamp) and two million records of the
//! partition, so neither a stream spanning days of event time nor records
//! stamped with event time forget an active viewer. Events older than the partition watermark
//! minus `max_lateness_secs` (default 35 days) are dead-lettered as
//! `too_late`; later events within it are added as further partial rows of
//! their (already written) window. Events over `max_event_bytes` are
//! dead-lettered as `too_large`; sums are checked, and a row that would
//! overflow is continued in another partial row.
//!
//! ## Memory
//! Bounded by active viewers (dedup state, one range per well-behaved viewer)
//! plus pending rows; above `max_pending_rows` (ClickHouse slow or down)
//! consumption pauses until the backlog is written.

#![warn(missing_docs)]

pub mod compact;
pub mod config;
pub mod consolidate;
pub mod consumer;
pub mod core;
pub mod dead_letters;
pub mod dedup;
pub mod error;
pub mod events;
pub mod metrics;
pub mod rowbinary;
pub mod rows;
pub mod seal;
pub mod server;
pub mod sink;
pub mod state;
pub mod store;
pub mod tables;

pub use config::AggregatorConfig;
pub use error::AggError;
