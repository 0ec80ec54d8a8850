//! The aggregator's internal events: each logs one line and counts in
//! `metering_internal_events_total` ([`runtime::events`]). Grouped by what
//! emits them: the member's life, partitions and their offsets, the consume
//! loop's flushes, and the maintenance jobs (seal, consolidation, retention).

use runtime::event;
use std::fmt::{Debug, Display};
use tracing::{debug, error, info, warn};

// ---- the member ----

/// The consume loop started (after migrations and the rights check).
pub(crate) struct AggregatorStarted<'a> {
    pub topic: &'a str,
    pub group: &'a str,
}
event!(AggregatorStarted<'a>, |s, name| info!(topic = %s.topic, group = %s.group, "{name}"));

/// Shutdown was asked for: the final flush follows.
pub(crate) struct AggregatorStopping;
event!(AggregatorStopping, |_s, name| info!("{name}: flushing what is held"));

/// The final flush failed: the next start resumes from the last checkpoint.
pub(crate) struct FinalFlushFailed<'a> {
    pub error: &'a dyn Display,
}
event!(FinalFlushFailed<'a>, |s, name| warn!(
    error = %s.error,
    "{name}: stopping without the final flush; the next start resumes from the last checkpoint"
));

/// The consume loop ended.
pub(crate) struct AggregatorStopped;
event!(AggregatorStopped, |_s, name| info!("{name}"));

/// A Kafka property the aggregator sets itself was configured: ignored.
pub(crate) struct KafkaPropertyIgnored<'a> {
    pub property: &'a str,
    pub value: &'a dyn Display,
}
event!(KafkaPropertyIgnored<'a>, |s, name| warn!(
    property = s.property,
    value = %s.value,
    "{name}: ignoring a kafka property the aggregator sets itself (exactly-once needs it)"
));

/// The operations endpoint (`/metrics`, `/healthz`, `/readyz`) stopped serving.
pub struct MetricsEndpointFailed<'a> {
    /// Why serving stopped (binding the address, or the server failing).
    pub error: &'a dyn Display,
    /// The address it was to listen on (`metrics_listen`).
    pub listen: &'a str,
}
event!(MetricsEndpointFailed<'a>, |s, name| error!(error = %s.error, listen = s.listen, "{name}: metrics endpoint failed"));

// ---- partitions: assignment, claims, start offsets ----

/// A claimed partition has no checkpoint: it starts where `start_from` says.
pub(crate) struct PartitionStartsWithoutCheckpoint<'a> {
    pub partition: i32,
    pub offset: &'a dyn Debug,
}
event!(PartitionStartsWithoutCheckpoint<'a>, |s, name| info!(partition = s.partition, offset = ?s.offset, "{name}"));

/// A partition was claimed: its state restored from its checkpoint.
pub(crate) struct PartitionClaimed<'a> {
    pub partition: i32,
    pub epoch: u64,
    pub position: &'a dyn Debug,
    pub viewers: usize,
}
event!(PartitionClaimed<'a>, |s, name| info!(
    partition = s.partition,
    epoch = s.epoch,
    position = ?s.position,
    viewers = s.viewers,
    "{name}"
));

/// Loading the claimed partitions' state failed.
pub(crate) struct PartitionLoadFailed<'a> {
    pub error: &'a dyn Display,
    /// Whether this was the last attempt (the member stops).
    pub giving_up: bool,
}
event!(PartitionLoadFailed<'a>, |s, name| if s.giving_up {
    error!(error = %s.error, "{name}: giving up")
} else {
    warn!(error = %s.error, "{name}: retrying")
});

/// A partition's checkpoint is behind the log start and the partition is
/// in `accept_gap_partitions`: it resumes at the log start.
pub(crate) struct OffsetGapAccepted {
    pub partition: i32,
    pub checkpoint: i64,
    pub log_start: i64,
    pub lost: i64,
}
event!(OffsetGapAccepted, |s, name| warn!(
    partition = s.partition,
    checkpoint = s.checkpoint,
    log_start = s.log_start,
    lost = s.lost,
    "{name}: resuming at the log start"
));

/// The broker did not say where a partition's log starts: it resumes at its checkpoint.
pub(crate) struct LogBoundsUnread<'a> {
    pub partition: i32,
    pub error: &'a dyn Debug,
}
event!(LogBoundsUnread<'a>, |s, name| warn!(
    partition = s.partition,
    error = ?s.error,
    "{name}: could not read the log bounds; resuming at the checkpoint"
));

/// A partition is not consumed: its position left the log (`AggError::OffsetOutOfRange`).
pub(crate) struct PartitionRefused<'a> {
    pub error: &'a dyn Display,
    pub partition: i32,
}
event!(PartitionRefused<'a>, |s, name| error!(error = %s.error, partition = s.partition, "{name}"));

/// A partition's start offset could not be set.
pub(crate) struct StartOffsetFailed<'a> {
    pub partition: i32,
    pub error: &'a dyn Display,
}
event!(StartOffsetFailed<'a>, |s, name| error!(partition = s.partition, error = %s.error, "{name}: cannot set start offset"));

/// The assignment could not be applied.
pub(crate) struct AssignFailed<'a> {
    pub error: &'a dyn Display,
}
event!(AssignFailed<'a>, |s, name| error!(error = %s.error, "{name}: assign failed"));

/// Kafka reported a rebalance error.
pub(crate) struct RebalanceFailed<'a> {
    pub error: &'a dyn Debug,
}
event!(RebalanceFailed<'a>, |s, name| error!(error = ?s.error, "{name}: rebalance error"));

/// Partitions are being revoked (with what the member holds).
pub(crate) struct PartitionsRevoking<'a> {
    pub partitions: &'a dyn Debug,
    pub pending: usize,
    pub flushing: bool,
}
event!(PartitionsRevoking<'a>, |s, name| debug!(
    partitions = ?s.partitions,
    pending = s.pending,
    flushing = s.flushing,
    "{name}"
));

/// A partition was revoked and its state dropped.
pub(crate) struct PartitionRevoked {
    pub partition: i32,
}
event!(PartitionRevoked, |s, name| info!(partition = s.partition, "{name}"));

/// A partition dropped after a failed flush was claimed again.
pub(crate) struct PartitionReloaded<'a> {
    pub partition: i32,
    pub offset: &'a dyn Debug,
}
event!(PartitionReloaded<'a>, |s, name| info!(partition = s.partition, offset = ?s.offset, "{name}"));

/// Claiming the dropped partitions again failed: retried after a backoff.
pub(crate) struct PartitionReloadFailed<'a> {
    pub error: &'a dyn Display,
    pub retry_in_ms: u64,
}
event!(PartitionReloadFailed<'a>, |s, name| warn!(error = %s.error, retry_in_ms = s.retry_in_ms, "{name}"));

/// Another member claimed these partitions: not consumed until Kafka assigns them again.
pub(crate) struct PartitionFenced<'a> {
    pub partitions: &'a [i32],
}
event!(PartitionFenced<'a>, |s, name| error!(
    partitions = ?s.partitions,
    "{name}: another member claimed these partitions; not consuming them until Kafka assigns them again"
));

/// Pausing or resuming partitions failed.
pub(crate) struct PauseFailed<'a> {
    pub error: &'a dyn Display,
    pub partitions: &'a [i32],
    pub pause: bool,
}
event!(PauseFailed<'a>, |s, name| warn!(error = %s.error, partitions = ?s.partitions, pause = s.pause, "{name}: pause/resume failed"));

/// The informative commit of Kafka offsets failed (positions live in ClickHouse).
pub(crate) struct OffsetCommitFailed<'a> {
    pub error: &'a dyn Display,
}
event!(OffsetCommitFailed<'a>, |s, name| warn!(error = %s.error, "{name}: informative Kafka offset commit failed"));

// ---- the consume loop ----

/// A partition's position left the log: it is not consumed.
pub(crate) struct OffsetOutOfRange;
event!(OffsetOutOfRange, |_s, name| error!(
    "{name}: a partition's position left the log; it is not consumed (see the broker log for which)"
));

/// Kafka reported an error while polling.
pub(crate) struct KafkaErrorReceived<'a> {
    pub error: &'a dyn Display,
}
event!(KafkaErrorReceived<'a>, |s, name| warn!(error = %s.error, "{name}"));

/// Too many rows wait for ClickHouse: consumption paused.
pub(crate) struct ConsumptionPaused {
    pub pending: usize,
}
event!(ConsumptionPaused, |s, name| warn!(pending = s.pending, "{name}: too many rows wait for ClickHouse"));

/// Consumption resumed after a pause.
pub(crate) struct ConsumptionResumed;
event!(ConsumptionResumed, |_s, name| info!("{name}"));

/// A batch was written.
pub(crate) struct BatchFlushed {
    pub batch: u64,
    pub rows: usize,
    pub ms: u64,
}
event!(BatchFlushed, |s, name| debug!(batch = s.batch, rows = s.rows, ms = s.ms, "{name}"));

/// A flush failed: the in-memory state is dropped and the partitions claimed again.
pub(crate) struct FlushFailed<'a> {
    pub error: &'a dyn Display,
}
event!(FlushFailed<'a>, |s, name| warn!(
    error = %s.error,
    "{name}: dropping the in-memory state; claiming the partitions again from their last checkpoint"
));

/// A partition was revoked before its batch was written.
pub(crate) struct FlushAbandoned<'a> {
    pub error: &'a dyn Display,
}
event!(FlushAbandoned<'a>, |s, name| warn!(
    error = %s.error,
    "{name}: revoked before the batch was written; the next owner resumes from the last checkpoint"
));

// ---- maintenance: seal, consolidation, dedup and retention ----

/// A seal committed.
pub(crate) struct SealCommitted<'a> {
    pub seal_id: u64,
    pub seq: u64,
    pub partitions: usize,
    pub tables: &'a dyn Debug,
    pub millis: u64,
    pub tail_since: u32,
    pub legacy_drained: bool,
}
event!(SealCommitted<'a>, |s, name| info!(
    seal_id = s.seal_id,
    seq = s.seq,
    partitions = s.partitions,
    tables = ?s.tables,
    millis = s.millis,
    tail_since = s.tail_since,
    legacy_drained = s.legacy_drained,
    "{name}"
));

/// A seal committed, but its head (`usage_seal_head`) could not be written:
/// readers read the previous seal's longer tail, with the same answers,
/// until the next seal or consolidation writes it.
pub(crate) struct SealHeadDeferred<'a> {
    pub seal_id: u64,
    pub error: &'a dyn Display,
}
event!(SealHeadDeferred<'a>, |s, name| warn!(seal_id = s.seal_id, error = %s.error, "{name}: the next seal writes it"));

/// A seal was not committed; `why` says what the rows do meanwhile.
pub(crate) struct SealAbandoned {
    pub seal_id: u64,
    pub why: &'static str,
}
event!(SealAbandoned, |s, name| warn!(seal_id = s.seal_id, "{name}: {}", s.why));

/// Consolidation rewrote months of sealed rows.
pub(crate) struct SealsConsolidated<'a> {
    pub seal_id: u64,
    pub seq: u64,
    pub months: &'a dyn Debug,
}
event!(SealsConsolidated<'a>, |s, name| info!(seal_id = s.seal_id, seq = s.seq, months = ?s.months, "{name}"));

/// A consolidation stopped; `why` says what stays.
pub(crate) struct ConsolidationAbandoned {
    pub seal_id: u64,
    pub why: &'static str,
}
event!(ConsolidationAbandoned, |s, name| warn!(seal_id = s.seal_id, "{name}: {}", s.why));

/// A staging table left by an earlier consolidation was dropped.
pub(crate) struct ConsolidationStagingDropped<'a> {
    pub table: &'a dyn Display,
}
event!(ConsolidationStagingDropped<'a>, |s, name| warn!(
    table = %s.table,
    "{name}: left by a run that crashed or lost its lock"
));

/// A server of `clickhouse.replica_urls` did not answer a consolidation
/// (or a seal dropping staging tables): another replica of its shard serves.
pub(crate) struct ConsolidationReplicaUnreachable<'a> {
    pub url: &'a dyn Display,
    pub error: &'a dyn Display,
}
event!(ConsolidationReplicaUnreachable<'a>, |s, name| warn!(url = %s.url, error = %s.error, "{name}"));

/// A consolidation on a cluster could not reach every shard; `why` says
/// what to configure or bring back.
pub(crate) struct ConsolidationImpossible<'a> {
    pub why: &'a dyn Display,
}
event!(ConsolidationImpossible<'a>, |s, name| warn!("{name}: {}; the sealed rows stay one per seal", s.why));

/// A consolidation raised the floor of the consolidated views' list of
/// seals (migration 18): no plain seal under it has rows left.
pub(crate) struct SealListFloorRaised {
    pub floor: u64,
}
event!(SealListFloorRaised, |s, name| info!(floor = s.floor, "{name}"));

/// The floor of the consolidated views' list of seals was not measured;
/// it stays where it was (their list longer, every answer the same).
pub(crate) struct SealListFloorHeld<'a> {
    pub why: &'a dyn Display,
}
event!(SealListFloorHeld<'a>, |s, name| warn!("{name}: {}", s.why));

/// A month swapped in by a run killed before it marked the quorum (see
/// `consolidate::mark_quorum`) was marked by the next run.
pub(crate) struct ConsolidationSwapMarked {
    pub table: &'static str,
    pub month: u32,
    pub shard: u32,
}
event!(ConsolidationSwapMarked, |s, name| warn!(
    table = s.table,
    month = s.month,
    shard = s.shard,
    "{name}: swapped by a run that was killed before it marked the quorum; sequentially consistent reads of it work again"
));

/// Dedup day partitions no claim can need were dropped.
pub(crate) struct DedupPartitionsDropped<'a> {
    pub dropped: &'a dyn Debug,
    pub needed_since: &'a dyn Debug,
}
event!(DedupPartitionsDropped<'a>, |s, name| info!(dropped = ?s.dropped, needed_since = ?s.needed_since, "{name}"));

/// Sealed months past their grain's retention were dropped.
pub(crate) struct SealedMonthsDropped<'a> {
    pub dropped: &'a dyn Debug,
}
event!(SealedMonthsDropped<'a>, |s, name| info!(dropped = ?s.dropped, "{name}"));

/// Months past retention are kept until billing issues them.
pub(crate) struct RetentionWaitsForIssue<'a> {
    pub waiting: &'a dyn Debug,
}
event!(RetentionWaitsForIssue<'a>, |s, name| info!(
    waiting = ?s.waiting,
    "{name}: months past retention kept until billing issues them"
));

/// A maintenance step failed transiently: retried at the next interval.
macro_rules! maintenance_failed {
    ($($ty:ident: $doc:literal),* $(,)?) => {$(
        #[doc = $doc]
        pub struct $ty<'a> {
            /// The error; transient ([`crate::AggError::is_transient`]).
            pub error: &'a dyn Display,
        }
        event!($ty<'a>, |s, name| warn!(error = %s.error, "{name}: retrying at the next interval"));
    )*};
}
maintenance_failed!(
    SealFailed: "A seal failed transiently: retried at the next interval.",
    DedupDropFailed: "Dropping stale dedup partitions failed transiently: retried at the next interval.",
    RetentionFailed: "Applying retention failed transiently: retried at the next interval.",
    ConsolidationFailed: "A consolidation failed transiently: retried at the next interval.",
);
