//! The aggregator's state across partitions and the flush protocol.
//!
//! A flush cuts the pending aggregates of every partition into one batch,
//! encoded once, then writes it table by table in [`Table::ORDER`]; a table
//! that failed is retried (same bytes, same `query_id`) until it lands, and
//! nothing after it is written before. The batch stays in flight while new
//! events keep accumulating for the next one.
//!
//! The consume loop writes a batch on the tokio runtime
//! ([`Core::start_flush`], [`Core::poll_flush`]) and keeps consuming while
//! ClickHouse works; at most one batch is in flight, so batches land in
//! order. Rebalances and shutdown wait for it ([`Core::flush`]).

use crate::config::AggregatorConfig;
use crate::error::AggError;
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::state::{Limits, Outcome, PartitionState};
use crate::tables::{BatchRows, Table};
use schemas::Codec;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tracing::{info, warn};

struct Inflight {
    seq: u64,
    rows: BatchRows,
    done: [bool; 5],
    /// Tables whose insert failed at least once: check whether it landed before re-sending.
    uncertain: [bool; 5],
}

/// The batch in flight, if any.
enum Flight {
    Idle,
    /// Cut and not being written: not started yet, or its last attempt failed.
    Ready(Box<Inflight>),
    /// Being written by a task on the runtime.
    Running { task: JoinHandle<(Box<Inflight>, Result<(), AggError>)>, rows: usize },
}

/// What a completed flush wrote.
#[derive(Debug, Default, Clone)]
pub struct FlushReport {
    pub rows: usize,
    /// `(partition, position)` checkpointed by this flush.
    pub checkpointed: Vec<(i32, i64)>,
}

/// All partitions of this member, and the batch in flight.
pub struct Core {
    pub limits: Limits,
    pub codec: Codec,
    pub sink: Sink,
    pub metrics: Arc<Metrics>,
    member: String,
    checkpoint_every: u32,
    parts: BTreeMap<i32, PartitionState>,
    flight: Flight,
    batches: u64,
    flushes_since_checkpoint: u32,
    started_ms: i64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Core {
    pub fn new(cfg: &AggregatorConfig, sink: Sink, metrics: Arc<Metrics>) -> Self {
        Core {
            limits: Limits::from_config(cfg),
            codec: Codec::new(),
            sink,
            metrics,
            member: cfg.member(),
            checkpoint_every: cfg.checkpoint_every,
            parts: BTreeMap::new(),
            flight: Flight::Idle,
            batches: 0,
            flushes_since_checkpoint: 0,
            started_ms: now_ms(),
        }
    }

    pub fn assigned(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }

    pub fn position(&self, partition: i32) -> Option<i64> {
        self.parts.get(&partition).map(|p| p.position)
    }

    /// Load `partitions` from ClickHouse; returns the offset to start each at
    /// (`None`: the beginning of the partition).
    pub async fn assign(&mut self, partitions: &[i32]) -> Result<Vec<(i32, Option<i64>)>, AggError> {
        let loaded = self.sink.load(partitions, self.limits.dedup_horizon_ms).await?;
        let mut out = Vec::new();
        for (p, l) in loaded {
            info!(
                partition = p,
                position = ?l.position,
                thresholds = ?l.thresholds,
                viewers = l.viewers_restored,
                "PartitionAssigned"
            );
            let mut st = PartitionState::new(p, l.position.unwrap_or(0), l.watermark_ms, l.thresholds, l.dedup);
            st.checkpointed = l.position.map(|pos| (pos, l.watermark_ms));
            self.parts.insert(p, st);
            out.push((p, l.position));
        }
        self.metrics.assigned_partitions.set(self.parts.len() as i64);
        self.metrics.group_joined.set(1);
        Ok(out)
    }

    /// Give up `partitions`: flush what can be flushed (one attempt), then
    /// drop their state. If the batch in flight could not be written it is
    /// dropped too; the next owner re-reads from the stored positions.
    pub async fn revoke(&mut self, partitions: &[i32]) -> Result<(), AggError> {
        // first the batch in flight (if any), then what accumulated since
        let mut flushed = self.flush(true).await;
        if flushed.is_ok() && self.pending_rows() > 0 {
            flushed = self.flush(true).await;
        }
        for p in partitions {
            self.parts.remove(p);
            info!(partition = p, "PartitionRevoked");
        }
        self.metrics.assigned_partitions.set(self.parts.len() as i64);
        if let Err(e) = flushed {
            warn!(error = %e, "FlushAbandoned: revoked before the batch was written; the next owner resumes from the last checkpoint");
            self.flight = Flight::Idle;
            // Partitions we keep may have had rows in the dropped batch: their
            // in-memory state is now ahead of ClickHouse. Drop it as well; the
            // caller reloads and seeks them.
            let kept = self.assigned();
            self.parts.clear();
            if !kept.is_empty() {
                return Err(AggError::RebalanceInterrupt(kept));
            }
        }
        Ok(())
    }

    /// The hot path: one message.
    pub fn process(&mut self, partition: i32, offset: i64, payload: &[u8], now_ms: i64) -> Option<Outcome> {
        let st = self.parts.get_mut(&partition)?;
        let outcome = st.process(offset, payload, &self.codec, &self.limits, now_ms);
        let m = &self.metrics;
        match outcome {
            Outcome::Counted { late, beyond_horizon } => {
                m.events.with_label_values(&["counted"]).inc();
                if late {
                    m.late_events.inc();
                }
                if beyond_horizon {
                    m.dedup_horizon_exceeded.inc();
                }
            }
            Outcome::Duplicate => m.events.with_label_values(&["duplicate"]).inc(),
            Outcome::DeadLettered(reason) => {
                m.events.with_label_values(&["dead_letter"]).inc();
                m.dead_letters.with_label_values(&[reason]).inc();
            }
            Outcome::Stale => m.events.with_label_values(&["stale"]).inc(),
        }
        Some(outcome)
    }

    pub fn pending_rows(&self) -> usize {
        self.parts.values().map(|p| p.pending_rows()).sum::<usize>()
            + match &self.flight {
                Flight::Idle => 0,
                Flight::Ready(b) => b.rows.total_rows(),
                Flight::Running { rows, .. } => *rows,
            }
    }

    /// A batch is cut and not yet written.
    pub fn has_inflight(&self) -> bool {
        !matches!(self.flight, Flight::Idle)
    }

    /// A batch is being written right now.
    pub fn is_flushing(&self) -> bool {
        matches!(self.flight, Flight::Running { .. })
    }

    /// Refresh the gauges that describe held state.
    pub fn update_gauges(&self) {
        let m = &self.metrics;
        m.pending_rows.set(self.pending_rows() as i64);
        m.open_windows.set(self.parts.values().map(|p| p.open_windows()).sum::<usize>() as i64);
        m.dedup_viewers.set(self.parts.values().map(|p| p.dedup.len()).sum::<usize>() as i64);
    }

    fn cut(&mut self, force_checkpoint: bool) {
        let now = now_ms();
        let now_secs = (now / 1000) as u32;
        let topic = self.sink.topic().to_string();
        let mut rows = BatchRows::default();
        self.flushes_since_checkpoint += 1;
        let checkpoint = force_checkpoint || self.flushes_since_checkpoint >= self.checkpoint_every;
        for st in self.parts.values_mut() {
            st.cut(&topic, now_secs, &mut rows);
            let moved = st.checkpointed.map(|(pos, _)| pos) != Some(st.position) && st.position > 0;
            if checkpoint && moved {
                st.checkpoint(&topic, &self.member, now_secs, &mut rows);
                st.dedup.evict(st.watermark_ms);
            }
        }
        if checkpoint {
            self.flushes_since_checkpoint = 0;
        }
        if rows.total_rows() > 0 {
            self.batches += 1;
            self.flight = Flight::Ready(Box::new(Inflight {
                seq: self.batches,
                rows,
                done: [false; 5],
                uncertain: [false; 5],
            }));
        }
    }

    /// Write the batch in flight, cutting a new one first when none is, and
    /// wait until it is written. A batch being written in the background is
    /// waited for first (and then that is the flush).
    /// `force_checkpoint` checkpoints regardless of `checkpoint_every`.
    pub async fn flush(&mut self, force_checkpoint: bool) -> Result<FlushReport, AggError> {
        let (batch, result) = match std::mem::replace(&mut self.flight, Flight::Idle) {
            Flight::Running { task, .. } => task.await.map_err(|e| AggError::FlushLost(e.to_string()))?,
            other => {
                self.flight = other;
                if !self.has_inflight() {
                    self.cut(force_checkpoint);
                }
                let Flight::Ready(batch) = std::mem::replace(&mut self.flight, Flight::Idle) else {
                    return Ok(FlushReport::default());
                };
                write_batch(self.sink.clone(), self.metrics.clone(), self.query_prefix(), batch).await
            }
        };
        self.finish(batch, result)
    }

    /// Start writing a batch on `rt` (cutting one first when none is) and
    /// return at once; [`Core::poll_flush`] collects the result. No-op while
    /// a batch is being written.
    pub fn start_flush(&mut self, rt: &Handle) {
        if self.is_flushing() {
            return;
        }
        if !self.has_inflight() {
            self.cut(false);
        }
        if let Flight::Ready(batch) = std::mem::replace(&mut self.flight, Flight::Idle) {
            let rows = batch.rows.total_rows();
            let task = rt.spawn(write_batch(self.sink.clone(), self.metrics.clone(), self.query_prefix(), batch));
            self.flight = Flight::Running { task, rows };
        }
    }

    /// The result of the background flush once it is done (`None` while it
    /// runs or when none was started).
    pub fn poll_flush(&mut self, rt: &Handle) -> Option<Result<FlushReport, AggError>> {
        let done = matches!(&self.flight, Flight::Running { task, .. } if task.is_finished());
        if !done {
            return None;
        }
        let Flight::Running { task, .. } = std::mem::replace(&mut self.flight, Flight::Idle) else { unreachable!() };
        Some(match rt.block_on(task) {
            Ok((batch, result)) => self.finish(batch, result),
            Err(e) => Err(AggError::FlushLost(e.to_string())),
        })
    }

    /// Drop all partition state and the batch in flight (after
    /// [`AggError::ConflictingOffsets`]); returns the partitions to reload.
    pub fn drop_all_state(&mut self) -> Vec<i32> {
        let parts = self.assigned();
        self.parts.clear();
        self.flight = Flight::Idle;
        parts
    }

    fn query_prefix(&self) -> String {
        format!("agg-{}-{}", self.member, self.started_ms)
    }

    /// Take a written batch's checkpoints into the partitions' state, or keep
    /// a failed batch for the next attempt.
    fn finish(&mut self, batch: Box<Inflight>, result: Result<(), AggError>) -> Result<FlushReport, AggError> {
        if let Err(e) = result {
            self.flight = Flight::Ready(batch);
            return Err(e);
        }
        let mut report = FlushReport { rows: batch.rows.total_rows(), checkpointed: vec![] };
        for &(p, pos, wm) in &batch.rows.positions {
            if let Some(st) = self.parts.get_mut(&p) {
                st.checkpointed = Some((pos, wm));
            }
            report.checkpointed.push((p, pos));
        }
        Ok(report)
    }
}

/// Write `batch` table by table in [`Table::ORDER`], skipping tables already
/// written; the batch comes back with its progress for a retry.
async fn write_batch(
    sink: Sink,
    metrics: Arc<Metrics>,
    query_prefix: String,
    mut batch: Box<Inflight>,
) -> (Box<Inflight>, Result<(), AggError>) {
    let started = Instant::now();
    for (i, table) in Table::ORDER.iter().copied().enumerate() {
        if batch.done[i] {
            continue;
        }
        let rows = batch.rows.rows(table);
        if rows.rows == 0 {
            batch.done[i] = true;
            continue;
        }
        if batch.uncertain[i] && table.is_data() {
            let total = batch.rows.tags(table).len();
            match sink.landed(table, batch.rows.tags(table)).await {
                Ok(n) if n == total => {
                    info!(table = table.name(), batch = batch.seq, "InsertFoundLanded");
                    batch.done[i] = true;
                    continue;
                }
                Ok(0) => {}
                Ok(landed) => {
                    metrics.flush_errors.inc();
                    return (batch, Err(AggError::ConflictingOffsets { table: table.name(), landed, total }));
                }
                Err(e) => {
                    metrics.flush_errors.inc();
                    metrics.flush_failing.set(1);
                    return (batch, Err(e));
                }
            }
        }
        // The same id on every attempt: ClickHouse refuses to start a query
        // whose id is still running, so a retry can never race an earlier
        // attempt that is still being processed.
        let query_id = format!("{query_prefix}-{}-{}", batch.seq, table.name());
        match sink.insert_with_id(table, &rows.buf, &query_id).await {
            Ok(()) => {
                batch.done[i] = true;
                metrics.flush_rows.with_label_values(&[table.name()]).inc_by(rows.rows as u64);
            }
            Err(e) => {
                batch.uncertain[i] = true;
                metrics.flush_errors.inc();
                metrics.flush_failing.set(1);
                return (batch, Err(e));
            }
        }
    }
    metrics.flush_failing.set(0);
    metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
    tracing::debug!(batch = batch.seq, rows = batch.rows.total_rows(), ms = started.elapsed().as_millis() as u64, "BatchFlushed");
    (batch, Ok(()))
}

/// Current wall clock, epoch ms (the only clock the hot path sees, for `in_future`).
pub fn clock_ms() -> i64 {
    now_ms()
}
