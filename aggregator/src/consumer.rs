//! The consume loop: one thread, one sequential loop over a librdkafka
//! `BaseConsumer`, with the rebalance callback loading and dropping
//! partition state. All ClickHouse I/O runs on the tokio runtime through
//! `Handle::block_on`, so the loop stays strictly sequential.

use crate::config::{AggregatorConfig, StartFrom};
use crate::core::{Core, FlushReport};
use crate::error::AggError;
use crate::events;
use crate::sink::Sink;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use runtime::events::InternalEvent;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// How long the rebalance callback keeps retrying to load state from ClickHouse
/// (below `max.poll.interval.ms`, or the member is dropped from the group).
const ASSIGN_RETRY_FOR: Duration = Duration::from_secs(45);
/// How long a graceful shutdown keeps trying to write what it holds.
const SHUTDOWN_FLUSH_FOR: Duration = Duration::from_secs(60);

/// librdkafka context: owns the aggregator core so that rebalances can reach it.
pub struct AggContext {
    core: Mutex<Core<Sink>>,
    rt: Handle,
    topic: String,
    /// Partitions whose state was dropped and must be claimed again, seeked
    /// and resumed (paused meanwhile).
    reload: Mutex<Vec<i32>>,
    /// Assigned partitions this member does not consume: checkpoint outside
    /// the log, or claimed by another member (until the next assignment).
    refused: Mutex<BTreeSet<i32>>,
    /// Partitions whose checkpoint may lie before the log start.
    accept_gap: Vec<i32>,
    /// Set when the callback could not load state: the loop stops with this error.
    fatal: Mutex<Option<AggError>>,
    /// Where partitions without a checkpoint start.
    start_from: StartFrom,
}

impl ClientContext for AggContext {}

impl AggContext {
    /// Where each partition starts: its checkpoint, or `start_from` when
    /// ClickHouse has none for it. A checkpoint outside the partition's log
    /// is refused (second list), never reset silently.
    #[allow(clippy::type_complexity)]
    fn start_offsets(
        &self,
        consumer: &BaseConsumer<Self>,
        positions: &[(i32, Option<i64>)],
    ) -> Result<(Vec<(i32, Offset)>, Vec<AggError>), AggError> {
        let mut out = Vec::new();
        let mut refused = Vec::new();
        let mut by_time = TopicPartitionList::new();
        for &(p, pos) in positions {
            let offset = match (pos, &self.start_from) {
                (Some(pos), _) => match self.check_checkpoint(consumer, p, pos) {
                    Ok(o) => o,
                    Err(e) => {
                        refused.push(e);
                        continue;
                    }
                },
                (None, StartFrom::Earliest) => Offset::Beginning,
                (None, StartFrom::Latest) => Offset::End,
                (None, StartFrom::Offsets(list)) => {
                    list.iter().find(|&&(q, _)| q == p).map(|&(_, o)| Offset::Offset(o)).unwrap_or(Offset::Beginning)
                }
                (None, StartFrom::Time(ms)) => {
                    by_time.add_partition_offset(&self.topic, p, Offset::Offset(*ms))?;
                    continue;
                }
            };
            if pos.is_none() {
                events::PartitionStartsWithoutCheckpoint { partition: p, offset: &offset }.emit();
            }
            out.push((p, offset));
        }
        if by_time.count() > 0 {
            let found = consumer
                .offsets_for_times(by_time, Duration::from_secs(30))
                .map_err(|e| AggError::Config(format!("start_from by time: offsets for times failed ({e}); use partition:offset pairs")))?;
            for e in found.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    // no message at or after the time yet
                    Offset::End => Offset::End,
                    other => {
                        return Err(AggError::Config(format!(
                            "start_from by time: the broker answered {other:?} for partition {}; use partition:offset pairs",
                            e.partition()
                        )))
                    }
                };
                events::PartitionStartsWithoutCheckpoint { partition: e.partition(), offset: &offset }.emit();
                out.push((e.partition(), offset));
            }
        }
        Ok((out, refused))
    }

    /// Compare a checkpoint with the partition's log: inside `[start, end]`
    /// it is where to resume; before the start only with the operator's
    /// consent (`accept_gap_partitions`); past the end never.
    fn check_checkpoint(&self, consumer: &BaseConsumer<Self>, p: i32, pos: i64) -> Result<Offset, AggError> {
        let mut last_err = None;
        for _ in 0..3 {
            match consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(5)) {
                Ok((low, high)) if pos > high => {
                    return Err(AggError::OffsetOutOfRange {
                        partition: p,
                        checkpoint: pos,
                        log_start: low,
                        log_end: high,
                        hint: "the log ends before the checkpoint (topic deleted and recreated?); \
                               consume it under a new topic name or into a fresh database",
                    })
                }
                Ok((low, high)) if pos < low && !self.accept_gap.contains(&p) => {
                    return Err(AggError::OffsetOutOfRange {
                        partition: p,
                        checkpoint: pos,
                        log_start: low,
                        log_end: high,
                        hint: "retention deleted records that were never aggregated; \
                               to accept the loss and resume at the log start, add the partition to accept_gap_partitions",
                    })
                }
                Ok((low, _)) if pos < low => {
                    events::OffsetGapAccepted { partition: p, checkpoint: pos, log_start: low, lost: low - pos }.emit();
                    return Ok(Offset::Offset(low));
                }
                Ok(_) => return Ok(Offset::Offset(pos)),
                Err(e) => last_err = Some(e),
            }
        }
        // The broker did not answer: resume at the checkpoint. The consumer
        // runs with auto.offset.reset=error, so an offset outside the log
        // still stops the partition with an error instead of a silent reset.
        events::LogBoundsUnread { partition: p, error: &last_err }.emit();
        Ok(Offset::Offset(pos))
    }

    fn refuse(&self, consumer: &BaseConsumer<Self>, core: &mut Core<Sink>, errors: &[AggError]) -> Vec<i32> {
        let mut parts = Vec::new();
        for e in errors {
            if let AggError::OffsetOutOfRange { partition, .. } = e {
                events::PartitionRefused { error: e, partition: *partition }.emit();
                core.metrics.offset_errors.inc();
                parts.push(*partition);
            }
        }
        core.forget(&parts);
        let mut refused = self.refused.lock().expect("lock");
        refused.extend(parts.iter().copied());
        core.metrics.partitions_refused.set(refused.len() as i64);
        drop(refused);
        set_paused(consumer, &self.topic, &parts, true);
        parts
    }
}

impl ConsumerContext for AggContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let parts: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let mut core = self.core.lock().expect("core lock");
                let started = Instant::now();
                let mut backoff = Duration::from_millis(200);
                let positions = loop {
                    match self.rt.block_on(core.assign(&parts)) {
                        Ok(p) => break Some(p),
                        Err(e) if e.is_transient() && started.elapsed() < ASSIGN_RETRY_FOR => {
                            events::PartitionLoadFailed { error: &e, giving_up: false }.emit();
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        Err(e) => {
                            events::PartitionLoadFailed { error: &e, giving_up: true }.emit();
                            *self.fatal.lock().expect("lock") = Some(e);
                            break None;
                        }
                    }
                };
                let Some(positions) = positions else {
                    let _ = consumer.assign(&TopicPartitionList::new());
                    return;
                };
                let (starts, refused) = match self.start_offsets(consumer, &positions) {
                    Ok(s) => s,
                    Err(e) => {
                        events::PartitionLoadFailed { error: &e, giving_up: true }.emit();
                        *self.fatal.lock().expect("lock") = Some(e);
                        let _ = consumer.assign(&TopicPartitionList::new());
                        return;
                    }
                };
                core.metrics.claims.inc_by(positions.len() as u64);
                {
                    let mut r = self.refused.lock().expect("lock");
                    r.clear();
                    core.metrics.partitions_refused.set(0);
                }
                // assign what is consumed; refused partitions stay with this
                // member in the group but are not fetched
                let mut assign = TopicPartitionList::new();
                for (p, offset) in &starts {
                    if let Err(e) = assign.add_partition_offset(&self.topic, *p, *offset) {
                        events::StartOffsetFailed { partition: *p, error: &e }.emit();
                    }
                }
                if let Err(e) = consumer.assign(&assign) {
                    events::AssignFailed { error: &e }.emit();
                }
                // a partition paused before a rebalance stays paused otherwise
                let consumed: Vec<i32> = starts.iter().map(|s| s.0).collect();
                set_paused(consumer, &self.topic, &consumed, false);
                self.refuse(consumer, &mut core, &refused);
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut core = self.core.lock().expect("core lock");
                if let Err(AggError::RebalanceInterrupt(kept)) = self.rt.block_on(core.revoke(&parts)) {
                    self.reload.lock().expect("lock").extend(kept);
                }
                let mut refused = self.refused.lock().expect("lock");
                refused.retain(|p| !parts.contains(p));
                core.metrics.partitions_refused.set(refused.len() as i64);
                let _ = consumer.unassign();
            }
            other => {
                events::RebalanceFailed { error: &other }.emit();
                let _ = consumer.unassign();
            }
        }
    }
}

/// Consumer properties that user settings may not override: each would
/// break the exactly-once design (offsets come from ClickHouse, and an
/// offset outside the log must stop the partition, not reset it).
const PROTECTED: &[&str] = &["auto.offset.reset", "enable.auto.commit", "enable.auto.offset.store", "group.id"];

/// Build the consumer. Offsets come from ClickHouse; Kafka commits are only
/// informative (for lag tools), never read back.
pub fn create_consumer(cfg: &AggregatorConfig, core: Core<Sink>, rt: Handle) -> KafkaResult<BaseConsumer<AggContext>> {
    let ctx = AggContext {
        core: Mutex::new(core),
        rt,
        topic: cfg.kafka.topic.clone(),
        reload: Mutex::new(Vec::new()),
        refused: Mutex::new(BTreeSet::new()),
        accept_gap: cfg.accept_gap_partitions.clone(),
        fatal: Mutex::new(None),
        start_from: cfg.start_from.clone(),
    };
    let mut c = cfg.kafka.client_config();
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // never reset silently: an offset outside the log is an error
        .set("auto.offset.reset", "error")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // also the rebalance timeout: how long a rebalance waits for members
        // that vanished (killed) before going on without them
        .set("max.poll.interval.ms", "60000")
        // eager protocol: a revoke always covers every partition
        .set("partition.assignment.strategy", "range,roundrobin");
    let mut kafka = cfg.kafka.clone();
    for key in PROTECTED {
        if let Some(v) = kafka.properties.remove(*key) {
            events::KafkaPropertyIgnored { property: key, value: &v }.emit();
        }
    }
    kafka.finish(c).create_with_context(ctx)
}

/// Run until `shutdown` is set, then flush what is held: `ConsumeLoop`'s
/// steps, in order, until then.
pub fn run(cfg: &AggregatorConfig, consumer: BaseConsumer<AggContext>, shutdown: Arc<AtomicBool>) -> Result<(), AggError> {
    consumer.subscribe(&[&cfg.kafka.topic])?;
    events::AggregatorStarted { topic: &cfg.kafka.topic, group: &cfg.group_id }.emit();
    let mut l = ConsumeLoop::new(cfg, &consumer)?;
    while !shutdown.load(Ordering::Relaxed) {
        l.stop_if_fatal()?;
        l.reload_if_due();
        l.poll();
        let ctx = consumer.context();
        let mut core = ctx.core.lock().expect("core lock");
        match core.poll_flush(&ctx.rt) {
            Some(Ok(report)) => l.flush_written(&mut core, &report),
            Some(Err(e)) => l.flush_failed(&mut core, e),
            None => {}
        }
        l.maybe_flush(&mut core);
        l.report(&core);
    }
    l.finish();
    Ok(())
}

/// The consume loop's state between its steps: when the next flush, gauge
/// update, lag report and reload are due, the reload backoff, and whether
/// consumption is paused for back-pressure. One thread runs the steps in
/// order; ClickHouse I/O runs on the tokio runtime (`Handle::block_on`, or
/// the background flush), so the loop stays strictly sequential.
struct ConsumeLoop<'a> {
    cfg: &'a AggregatorConfig,
    consumer: &'a BaseConsumer<AggContext>,
    ctx: &'a AggContext,
    interval: Duration,
    next_flush: Instant,
    next_lag: Instant,
    next_gauges: Instant,
    next_reload: Instant,
    backoff: Duration,
    /// Paused by [`ConsumeLoop::maybe_flush`] for back-pressure (not the
    /// partitions paused for a reload or a refusal).
    paused: bool,
    topic_c: std::ffi::CString,
}

/// The backoff of reloads after a successful flush.
const RELOAD_BACKOFF: Duration = Duration::from_millis(250);

impl<'a> ConsumeLoop<'a> {
    fn new(cfg: &'a AggregatorConfig, consumer: &'a BaseConsumer<AggContext>) -> Result<Self, AggError> {
        let now = Instant::now();
        let interval = Duration::from_millis(cfg.flush_interval_ms);
        Ok(ConsumeLoop {
            cfg,
            consumer,
            ctx: consumer.context(),
            interval,
            next_flush: now + interval,
            next_lag: now,
            next_gauges: now,
            next_reload: now,
            backoff: RELOAD_BACKOFF,
            paused: false,
            topic_c: std::ffi::CString::new(cfg.kafka.topic.as_str()).map_err(|_| AggError::Config("kafka.topic contains NUL".into()))?,
        })
    }

    /// Stop with the error the rebalance callback could not recover from.
    fn stop_if_fatal(&self) -> Result<(), AggError> {
        match self.ctx.fatal.lock().expect("lock").take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Claim again, when due, the partitions a failed flush or an interrupted
    /// rebalance dropped; on failure retry later with a growing backoff.
    fn reload_if_due(&mut self) {
        if Instant::now() < self.next_reload {
            return;
        }
        if let Err(e) = reload_dropped(self.consumer, self.ctx) {
            events::PartitionReloadFailed { error: &e, retry_in_ms: self.backoff.as_millis() as u64 }.emit();
            self.next_reload = Instant::now() + self.backoff;
            self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Wait for records (until the next flush is due, 5 to 100 ms: while a
    /// batch is written in the background a due flush waits for it, and the
    /// loop must not spin meanwhile), then fold up to 2,048 of them into the
    /// partitions' state.
    fn poll(&self) {
        let wait = self.next_flush.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(5), Duration::from_millis(100));
        let Some(first) = self.consumer.poll(wait) else { return };
        let mut core = self.ctx.core.lock().expect("core lock");
        let mut next = Some(first);
        let mut n = 0;
        while let Some(m) = next.take() {
            match m {
                Ok(m) => {
                    core.process(m.partition(), m.offset(), m.timestamp().to_millis(), m.payload().unwrap_or(&[]));
                }
                Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                    // an offset outside the log (retention passed a lagging
                    // member, or a truncated topic): the partition stops
                    events::OffsetOutOfRange.emit();
                    core.metrics.offset_errors.inc();
                    core.metrics.partitions_refused.set(core.metrics.partitions_refused.get().max(1));
                }
                Err(e) => events::KafkaErrorReceived { error: &e }.emit(),
            }
            n += 1;
            if n < 2048 {
                // the rebalance callback takes the core lock inside poll
                drop(core);
                next = self.consumer.poll(Duration::ZERO);
                core = self.ctx.core.lock().expect("core lock");
            }
        }
    }

    /// A batch written in the background landed: resume consumption paused
    /// for back-pressure once the backlog fits, and tell Kafka the positions
    /// (informative only: offsets are read back from ClickHouse).
    fn flush_written(&mut self, core: &mut Core<Sink>, report: &FlushReport) {
        self.backoff = RELOAD_BACKOFF;
        if self.paused && core.pending_rows() < self.cfg.max_pending_rows {
            set_paused(self.consumer, &self.cfg.kafka.topic, &core.assigned(), false);
            self.paused = false;
            events::ConsumptionResumed.emit();
        }
        commit_positions(self.consumer, &self.cfg.kafka.topic, &report.checkpointed);
    }

    /// A batch failed ([`AggError`] says which way): drop every partition's
    /// in-memory state; partitions another member claimed wait for Kafka to
    /// assign them again, the others are claimed again from their last
    /// checkpoint after a jittered backoff.
    fn flush_failed(&mut self, core: &mut Core<Sink>, e: AggError) {
        let fenced = if let AggError::Fenced(f) = &e { f.clone() } else { vec![] };
        events::FlushFailed { error: &e }.emit();
        let parts = core.drop_all_state();
        let (lost, reclaim): (Vec<i32>, Vec<i32>) = parts.into_iter().partition(|p| fenced.contains(p));
        let topic = &self.cfg.kafka.topic;
        set_paused(self.consumer, topic, &lost, true);
        set_paused(self.consumer, topic, &reclaim, true);
        if !lost.is_empty() {
            events::PartitionFenced { partitions: &lost }.emit();
            let mut refused = self.ctx.refused.lock().expect("lock");
            refused.extend(lost.iter().copied());
            core.metrics.partitions_refused.set(refused.len() as i64);
        }
        self.ctx.reload.lock().expect("lock").extend(reclaim);
        self.paused = false;
        // jittered, so that two members whose claims collided do not collide again
        self.next_reload = Instant::now() + self.backoff.mul_f64(1.0 + rand::random::<f64>());
        self.backoff = (self.backoff * 2).min(Duration::from_secs(10));
    }

    /// Cut a batch when the interval passed or enough rows wait, unless one
    /// is still being written, and write it in the background; pause
    /// consumption while too many rows wait for ClickHouse.
    fn maybe_flush(&mut self, core: &mut Core<Sink>) {
        let due = Instant::now() >= self.next_flush || core.pending_rows() >= self.cfg.flush_max_rows;
        if !due || core.is_flushing() {
            return;
        }
        core.start_flush(&self.ctx.rt);
        self.next_flush = Instant::now() + self.interval;
        if !self.paused && core.pending_rows() >= self.cfg.max_pending_rows {
            set_paused(self.consumer, &self.cfg.kafka.topic, &core.assigned(), true);
            self.paused = true;
            events::ConsumptionPaused { pending: core.pending_rows() }.emit();
        }
        self.next_gauges = Instant::now();
    }

    /// At each cut and once a second, the gauges of held state (cheap sums
    /// over the partitions); every 10 s, each partition's lag from the
    /// cached high watermark.
    fn report(&mut self, core: &Core<Sink>) {
        let now = Instant::now();
        if now >= self.next_gauges {
            self.next_gauges = now + Duration::from_secs(1);
            core.update_gauges();
        }
        if now >= self.next_lag {
            self.next_lag = now + Duration::from_secs(10);
            for p in core.assigned() {
                if let (Some(high), Some(pos)) = (cached_high_watermark(self.consumer, &self.topic_c, p), core.position(p)) {
                    core.metrics.consumer_lag.with_label_values(&[&p.to_string()]).set((high - pos).max(0));
                }
            }
        }
    }

    /// On shutdown: write what is held (for at most a minute), then leave
    /// the group. Without the final flush the next start resumes from the
    /// last checkpoint, which loses nothing.
    fn finish(self) {
        events::AggregatorStopping.emit();
        let mut core = self.ctx.core.lock().expect("core lock");
        let started = Instant::now();
        loop {
            match self.ctx.rt.block_on(core.flush(true)) {
                Ok(report) => {
                    commit_positions(self.consumer, &self.cfg.kafka.topic, &report.checkpointed);
                    if !core.is_flushing() && core.pending_rows() == 0 {
                        break;
                    }
                }
                Err(e) => {
                    events::FinalFlushFailed { error: &e }.emit();
                    break;
                }
            }
            if started.elapsed() > SHUTDOWN_FLUSH_FOR {
                break;
            }
        }
        drop(core);
        self.consumer.unsubscribe();
        events::AggregatorStopped.emit();
    }
}

/// Pause or resume `partitions` of `topic`.
fn set_paused(consumer: &BaseConsumer<AggContext>, topic: &str, partitions: &[i32], pause: bool) {
    if partitions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    let r = if pause { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
    if let Err(e) = r {
        events::PauseFailed { error: &e, partitions, pause }.emit();
    }
}

/// The partition's high watermark as of the last fetch response, without a
/// request to the broker. (`fetch_watermarks` sends a ListOffsets request;
/// with a short timeout librdkafka times it out behind the fetches queued on
/// the same connection, and repeated timeouts make it drop the connection,
/// fetches included: a stall of seconds every time the lag was measured.)
fn cached_high_watermark(consumer: &BaseConsumer<AggContext>, topic: &std::ffi::CStr, partition: i32) -> Option<i64> {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: a live client handle, a NUL-terminated topic and two out-pointers
    // to locals; librdkafka only reads its cached values under its own lock.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(consumer.client().native_ptr(), topic.as_ptr(), partition, &mut low, &mut high)
    };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

fn commit_positions(consumer: &BaseConsumer<AggContext>, topic: &str, positions: &[(i32, u64, i64)]) {
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, _, pos) in positions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(pos));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        events::OffsetCommitFailed { error: &e }.emit();
    }
}

/// After a failed flush or an interrupted rebalance, claim the dropped
/// partitions again and seek them back to their last checkpoint. On error
/// they stay in the list (paused) for the next attempt.
fn reload_dropped(consumer: &BaseConsumer<AggContext>, ctx: &AggContext) -> Result<(), AggError> {
    let parts: Vec<i32> = std::mem::take(&mut *ctx.reload.lock().expect("lock"));
    if parts.is_empty() {
        return Ok(());
    }
    // only what Kafka still assigns to this member
    let assigned: Vec<i32> = match consumer.assignment() {
        Ok(a) => a.elements().iter().map(|e| e.partition()).collect(),
        Err(e) => {
            ctx.reload.lock().expect("lock").extend(parts);
            return Err(e.into());
        }
    };
    let parts: Vec<i32> = parts.into_iter().filter(|p| assigned.contains(p)).collect();
    let mut core = ctx.core.lock().expect("core lock");
    let positions = match ctx.rt.block_on(core.assign(&parts)) {
        Ok(p) => p,
        Err(e) => {
            ctx.reload.lock().expect("lock").extend(parts);
            return Err(e);
        }
    };
    core.metrics.claims.inc_by(positions.len() as u64);
    let (starts, refused) = ctx.start_offsets(consumer, &positions)?;
    for (p, offset) in starts {
        consumer.seek(&ctx.topic, p, offset, Duration::from_secs(10))?;
        set_paused(consumer, &ctx.topic, &[p], false);
        events::PartitionReloaded { partition: p, offset: &offset }.emit();
    }
    ctx.refuse(consumer, &mut core, &refused);
    Ok(())
}
