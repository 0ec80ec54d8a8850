//! The consume loop: one thread, one sequential loop over a librdkafka
//! `BaseConsumer`, with the rebalance callback loading and dropping
//! partition state. All ClickHouse I/O runs on the tokio runtime through
//! `Handle::block_on`, so the loop stays strictly sequential.

use crate::config::{AggregatorConfig, StartFrom};
use crate::core::{clock_ms, Core};
use crate::error::AggError;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tracing::{error, info, warn};

/// How long the rebalance callback keeps retrying to load state from ClickHouse
/// (below `max.poll.interval.ms`, or the member is dropped from the group).
const ASSIGN_RETRY_FOR: Duration = Duration::from_secs(45);
/// How long a graceful shutdown keeps trying to write what it holds.
const SHUTDOWN_FLUSH_FOR: Duration = Duration::from_secs(60);

/// librdkafka context: owns the aggregator core so that rebalances can reach it.
pub struct AggContext {
    pub core: Mutex<Core>,
    rt: Handle,
    topic: String,
    /// Partitions whose state was dropped and must be reloaded and seeked.
    reload: Mutex<Vec<i32>>,
    /// Set when the callback could not load state: the loop stops with this error.
    fatal: Mutex<Option<String>>,
    /// Where partitions without a checkpoint start.
    start_from: StartFrom,
}

impl ClientContext for AggContext {}

impl AggContext {
    /// Where each partition starts: its checkpoint, or `start_from` when
    /// ClickHouse has none for it.
    fn start_offsets(&self, consumer: &BaseConsumer<Self>, positions: &[(i32, Option<i64>)]) -> Result<Vec<(i32, Offset)>, String> {
        let mut out = Vec::new();
        let mut by_time = TopicPartitionList::new();
        for &(p, pos) in positions {
            let offset = match (pos, &self.start_from) {
                (Some(pos), _) => Offset::Offset(pos),
                (None, StartFrom::Earliest) => Offset::Beginning,
                (None, StartFrom::Latest) => Offset::End,
                (None, StartFrom::Offsets(list)) => {
                    list.iter().find(|&&(q, _)| q == p).map(|&(_, o)| Offset::Offset(o)).unwrap_or(Offset::Beginning)
                }
                (None, StartFrom::Time(ms)) => {
                    by_time.add_partition_offset(&self.topic, p, Offset::Offset(*ms)).map_err(|e| e.to_string())?;
                    continue;
                }
            };
            if pos.is_none() {
                info!(partition = p, ?offset, "PartitionStartsWithoutCheckpoint");
            }
            out.push((p, offset));
        }
        if by_time.count() > 0 {
            let found = consumer
                .offsets_for_times(by_time, Duration::from_secs(30))
                .map_err(|e| format!("start_from by time: offsets for times failed ({e}); use partition:offset pairs"))?;
            for e in found.elements() {
                let offset = match e.offset() {
                    Offset::Offset(o) => Offset::Offset(o),
                    // no message at or after the time yet
                    Offset::End => Offset::End,
                    other => return Err(format!("start_from by time: the broker answered {other:?} for partition {}; use partition:offset pairs", e.partition())),
                };
                info!(partition = e.partition(), ?offset, "PartitionStartsWithoutCheckpoint");
                out.push((e.partition(), offset));
            }
        }
        Ok(out)
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
                            warn!(error = %e, "PartitionLoadFailed: retrying");
                            std::thread::sleep(backoff);
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                        }
                        Err(e) => {
                            error!(error = %e, "PartitionLoadFailed: giving up");
                            *self.fatal.lock().expect("lock") = Some(e.to_string());
                            break None;
                        }
                    }
                };
                let Some(positions) = positions else {
                    let _ = consumer.assign(&TopicPartitionList::new());
                    return;
                };
                let starts = match self.start_offsets(consumer, &positions) {
                    Ok(s) => s,
                    Err(e) => {
                        error!(error = %e, "PartitionLoadFailed: giving up");
                        *self.fatal.lock().expect("lock") = Some(e);
                        let _ = consumer.assign(&TopicPartitionList::new());
                        return;
                    }
                };
                for (p, offset) in starts {
                    if let Err(e) = tpl.set_partition_offset(&self.topic, p, offset) {
                        error!(partition = p, error = %e, "cannot set start offset");
                    }
                }
                if let Err(e) = consumer.assign(tpl) {
                    error!(error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let mut core = self.core.lock().expect("core lock");
                if let Err(AggError::RebalanceInterrupt(kept)) = self.rt.block_on(core.revoke(&parts)) {
                    self.reload.lock().expect("lock").extend(kept);
                }
                let _ = consumer.unassign();
            }
            other => {
                error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Build the consumer. Offsets come from ClickHouse; Kafka commits are only
/// informative (for lag tools), never read back.
pub fn create_consumer(cfg: &AggregatorConfig, core: Core, rt: Handle) -> KafkaResult<BaseConsumer<AggContext>> {
    let ctx = AggContext {
        core: Mutex::new(core),
        rt,
        topic: cfg.kafka.topic.clone(),
        reload: Mutex::new(Vec::new()),
        fatal: Mutex::new(None),
        start_from: StartFrom::parse(&cfg.start_from).map_err(rdkafka::error::KafkaError::ClientCreation)?,
    };
    let mut c = cfg.kafka.client_config();
    c.set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        // also the rebalance timeout: how long a rebalance waits for members
        // that vanished (killed) before going on without them
        .set("max.poll.interval.ms", "60000")
        // eager protocol: a revoke always covers every partition
        .set("partition.assignment.strategy", "range,roundrobin");
    let c = cfg.kafka.finish(c);
    c.create_with_context(ctx)
}

/// Run until `shutdown` is set, then flush what is held.
pub fn run(cfg: &AggregatorConfig, consumer: BaseConsumer<AggContext>, shutdown: Arc<AtomicBool>) -> Result<(), AggError> {
    let ctx = consumer.context().clone();
    consumer.subscribe(&[&cfg.kafka.topic])?;
    info!(topic = %cfg.kafka.topic, group = %cfg.group_id, "AggregatorStarted");
    let interval = Duration::from_millis(cfg.flush_interval_ms);
    let mut next_flush = Instant::now() + interval;
    let mut next_lag = Instant::now();
    let mut backoff = Duration::from_millis(250);
    let mut paused = false;
    let topic_c = std::ffi::CString::new(cfg.kafka.topic.as_str()).map_err(|_| AggError::Config("topic contains NUL".into()))?;
    while !shutdown.load(Ordering::Relaxed) {
        if let Some(msg) = ctx.fatal.lock().expect("lock").take() {
            return Err(AggError::Config(format!("cannot load partition state: {msg}")));
        }
        reload_dropped(&consumer, &ctx)?;
        // at least a few ms: while a batch is written in the background a due
        // flush waits for it, and the loop must not spin meanwhile
        let wait = next_flush.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(5), Duration::from_millis(100));
        if let Some(first) = consumer.poll(wait) {
            let mut core = ctx.core.lock().expect("core lock");
            let now = clock_ms();
            let mut next = Some(first);
            let mut n = 0;
            while let Some(m) = next.take() {
                match m {
                    Ok(m) => {
                        core.process(m.partition(), m.offset(), m.payload().unwrap_or(&[]), now);
                    }
                    Err(e) => warn!(error = %e, "KafkaErrorReceived"),
                }
                n += 1;
                if n < 2048 {
                    drop(core);
                    next = consumer.poll(Duration::ZERO);
                    core = ctx.core.lock().expect("core lock");
                }
            }
        }
        let mut core = ctx.core.lock().expect("core lock");
        // collect the batch written in the background, if it is done
        if let Some(result) = core.poll_flush(&ctx.rt) {
            match result {
                Ok(report) => {
                    backoff = Duration::from_millis(250);
                    if paused && core.pending_rows() < cfg.max_pending_rows {
                        if let Ok(a) = consumer.assignment() {
                            let _ = consumer.resume(&a);
                        }
                        paused = false;
                        info!("ConsumptionResumed");
                    }
                    commit_positions(&consumer, &cfg.kafka.topic, &report.checkpointed);
                }
                Err(e) if e.needs_reload() => {
                    warn!(error = %e, "FlushFailed: reloading every partition from ClickHouse");
                    let parts = core.drop_all_state();
                    ctx.reload.lock().expect("lock").extend(parts);
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "FlushFailed");
                    next_flush = Instant::now() + backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
        let due = Instant::now() >= next_flush || core.pending_rows() >= cfg.flush_max_rows;
        if due && !core.is_flushing() {
            // write in the background and keep consuming meanwhile
            core.start_flush(&ctx.rt);
            next_flush = Instant::now() + interval;
            if !paused && core.pending_rows() >= cfg.max_pending_rows {
                if let Ok(a) = consumer.assignment() {
                    let _ = consumer.pause(&a);
                }
                paused = true;
                warn!(pending = core.pending_rows(), "ConsumptionPaused: too many rows wait for ClickHouse");
            }
            core.update_gauges();
        }
        if Instant::now() >= next_lag {
            next_lag = Instant::now() + Duration::from_secs(10);
            for p in core.assigned() {
                if let (Some(high), Some(pos)) = (cached_high_watermark(&consumer, &topic_c, p), core.position(p)) {
                    core.metrics.consumer_lag.with_label_values(&[&p.to_string()]).set((high - pos).max(0));
                }
            }
        }
    }
    info!("AggregatorStopping: flushing what is held");
    let started = Instant::now();
    let mut core = ctx.core.lock().expect("core lock");
    loop {
        match ctx.rt.block_on(core.flush(true)) {
            Ok(report) => {
                commit_positions(&consumer, &cfg.kafka.topic, &report.checkpointed);
                if !core.has_inflight() && core.pending_rows() == 0 {
                    break;
                }
            }
            Err(e) if e.needs_reload() => {
                warn!(error = %e, "stopping without the final flush; the next start reloads from ClickHouse");
                break;
            }
            Err(e) if started.elapsed() < SHUTDOWN_FLUSH_FOR => {
                warn!(error = %e, "FlushFailed during shutdown; retrying");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => {
                error!(error = %e, "giving up the final flush; the next start resumes from the last checkpoint");
                break;
            }
        }
    }
    drop(core);
    consumer.unsubscribe();
    info!("AggregatorStopped");
    Ok(())
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
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

fn commit_positions(consumer: &BaseConsumer<AggContext>, topic: &str, positions: &[(i32, i64)]) {
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for &(p, pos) in positions {
        let _ = tpl.add_partition_offset(topic, p, Offset::Offset(pos));
    }
    if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
        warn!(error = %e, "informative Kafka offset commit failed");
    }
}

/// After a rebalance interrupted a flush (or a partial insert), reload the
/// partitions we kept and seek them back to what ClickHouse holds.
fn reload_dropped(consumer: &BaseConsumer<AggContext>, ctx: &AggContext) -> Result<(), AggError> {
    let parts: Vec<i32> = std::mem::take(&mut *ctx.reload.lock().expect("lock"));
    if parts.is_empty() {
        return Ok(());
    }
    let mut core = ctx.core.lock().expect("core lock");
    let positions = ctx.rt.block_on(core.assign(&parts))?;
    for (p, offset) in ctx.start_offsets(consumer, &positions).map_err(AggError::Config)? {
        consumer.seek(&ctx.topic, p, offset, Duration::from_secs(10))?;
        info!(partition = p, ?offset, "PartitionReloaded");
    }
    Ok(())
}
