//! The aggregator's state across partitions and the flush protocol.
//!
//! A flush cuts the pending aggregates of every partition into one batch,
//! encoded once, then writes it table by table in [`Table::ORDER`]. Before
//! the first insert it checks that no other member claimed one of the
//! batch's partitions since ([`AggError::Fenced`]). A batch is never
//! retried: any failure drops the whole in-memory state, and the partitions
//! are claimed again and re-read from their last checkpoint. The new claim
//! supersedes whatever part of the failed batch did land, so there is no
//! "did it land?" question to get wrong.
//!
//! The consume loop writes a batch on the tokio runtime
//! ([`Core::start_flush`], [`Core::poll_flush`]) and keeps consuming while
//! ClickHouse works; at most one batch is in flight, so batches land in
//! order. Rebalances and shutdown wait for it ([`Core::flush`]).

use crate::config::AggregatorConfig;
use crate::error::AggError;
use crate::events;
use crate::metrics::Metrics;
use crate::state::{Limits, Outcome, PartitionState};
use crate::store::Store;
use crate::tables::{BatchRows, Table};
use runtime::events::InternalEvent;
use schemas::Codec;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

struct Inflight {
    seq: u64,
    rows: BatchRows,
}

/// The batch in flight, if any.
enum Flight {
    Idle,
    /// Being written by a task on the runtime.
    Running {
        task: JoinHandle<Result<FlushReport, AggError>>,
        rows: usize,
    },
}

/// What a completed flush wrote.
#[derive(Debug, Default, Clone)]
pub struct FlushReport {
    /// `(partition, epoch, position)` checkpointed by this flush.
    pub checkpointed: Vec<(i32, u64, i64)>,
}

/// A test hook: kill the process (SIGKILL) right after the `n`th successful
/// insert into `table`, leaving a partially written batch behind. Set by the
/// environment variable `AGGREGATOR_FAULT_KILL_AFTER=<table>:<n>` (e.g.
/// `usage_by_viewer_log:3`), in builds with the `fault-injection` feature
/// only (`runtime::fault`); `aggregator`'s `main` refuses the variable at
/// start in a build without it.
#[derive(Debug, Clone, Copy)]
pub struct KillAfter {
    table: Table,
    n: u64,
}

impl KillAfter {
    /// The environment variable that arms the hook: `<table>:<n>`.
    pub const ENV: &'static str = "AGGREGATOR_FAULT_KILL_AFTER";

    /// The hook as [`KillAfter::ENV`] sets it (`None` when unset); a value
    /// other than a [`Table::name`] and a count, `<table>:<n>`, is an
    /// [`AggError::Config`].
    pub fn from_env() -> Result<Option<KillAfter>, AggError> {
        let Ok(v) = std::env::var(Self::ENV) else { return Ok(None) };
        let bad = || AggError::Config(format!("{}={v:?}: expected <table>:<n>, e.g. usage_by_viewer_log:3", Self::ENV));
        let (t, n) = v.split_once(':').ok_or_else(bad)?;
        let table = Table::ORDER.into_iter().find(|x| x.name() == t).ok_or_else(bad)?;
        Ok(Some(KillAfter { table, n: n.parse().map_err(|_| bad())? }))
    }
}

/// All partitions of this member, and the batch in flight.
pub struct Core<S: Store> {
    pub(crate) limits: Limits,
    pub(crate) codec: Codec,
    /// Where batches are written and partitions claimed; tests write a
    /// batch from [`Core::take_batch`] through it themselves.
    pub store: S,
    pub(crate) metrics: Arc<Metrics>,
    member: String,
    checkpoint_every: u32,
    parts: BTreeMap<i32, PartitionState>,
    flight: Flight,
    batches: u64,
    flushes_since_checkpoint: u32,
    started_ms: i64,
    kill_after: Option<KillAfter>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl<S: Store> Core<S> {
    /// A member with no partitions yet, named [`AggregatorConfig::member_id`]
    /// (or host name and pid), writing through `store` and counting in `metrics`.
    pub fn new(cfg: &AggregatorConfig, store: S, metrics: Arc<Metrics>) -> Self {
        Core {
            limits: Limits::from_config(cfg),
            codec: Codec::new(),
            store,
            metrics,
            member: cfg.member(),
            checkpoint_every: cfg.checkpoint_every,
            parts: BTreeMap::new(),
            flight: Flight::Idle,
            batches: 0,
            flushes_since_checkpoint: 0,
            started_ms: now_ms(),
            kill_after: None,
        }
    }

    /// Arm the [`KillAfter`] test hook.
    pub fn with_kill_after(mut self, k: Option<KillAfter>) -> Self {
        self.kill_after = k;
        self
    }

    pub(crate) fn assigned(&self) -> Vec<i32> {
        self.parts.keys().copied().collect()
    }

    pub(crate) fn position(&self, partition: i32) -> Option<i64> {
        self.parts.get(&partition).map(|p| p.position)
    }

    /// Claim `partitions` and load their state; returns the offset to start
    /// each at (`None`: no checkpoint yet).
    pub async fn assign(&mut self, partitions: &[i32]) -> Result<Vec<(i32, Option<i64>)>, AggError> {
        let loaded = self.store.claim(partitions, &self.member, self.limits.dedup_horizon).await?;
        let mut out = Vec::new();
        for (p, l) in loaded {
            events::PartitionClaimed { partition: p, epoch: l.epoch, position: &l.position, viewers: l.viewers_restored }.emit();
            let mut st = PartitionState::new(p, l.epoch, l.position.unwrap_or(0), l.watermark_ms, l.arrival_ms, l.dedup);
            st.checkpointed = l.position;
            self.parts.insert(p, st);
            out.push((p, l.position));
        }
        out.sort_unstable();
        self.metrics.assigned_partitions.set(self.parts.len() as i64);
        self.metrics.group_joined.set(1);
        Ok(out)
    }

    /// Forget `partitions` without writing anything (refused or fenced ones).
    pub fn forget(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.parts.remove(p);
        }
        self.metrics.assigned_partitions.set(self.parts.len() as i64);
    }

    /// Give up `partitions`: flush what can be flushed (one attempt), then
    /// drop their state. If the batch could not be written it is dropped
    /// too; the next owner re-reads from the last checkpoint, and its claim
    /// supersedes whatever part of the batch landed.
    pub async fn revoke(&mut self, partitions: &[i32]) -> Result<(), AggError> {
        events::PartitionsRevoking { partitions: &partitions, pending: self.pending_rows(), flushing: self.is_flushing() }.emit();
        // first the batch in flight (if any), then what accumulated since
        let mut flushed = self.flush(true).await;
        if flushed.is_ok() && self.pending_rows() > 0 {
            flushed = self.flush(true).await;
        }
        for p in partitions {
            self.parts.remove(p);
            events::PartitionRevoked { partition: *p }.emit();
        }
        self.metrics.assigned_partitions.set(self.parts.len() as i64);
        if let Err(e) = flushed {
            events::FlushAbandoned { error: &e }.emit();
            // Partitions we keep may have had rows in the dropped batch: their
            // in-memory state is now ahead of ClickHouse. Drop it as well; the
            // caller claims them again.
            let kept = self.drop_all_state();
            if !kept.is_empty() {
                return Err(AggError::RebalanceInterrupt(kept));
            }
        }
        Ok(())
    }

    /// The hot path: one message.
    pub fn process(&mut self, partition: i32, offset: i64, timestamp_ms: Option<i64>, payload: &[u8]) -> Option<Outcome> {
        let st = self.parts.get_mut(&partition)?;
        let outcome = st.process(offset, timestamp_ms, payload, &self.codec, &self.limits);
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

    pub(crate) fn pending_rows(&self) -> usize {
        self.parts.values().map(|p| p.pending_rows()).sum::<usize>()
            + match &self.flight {
                Flight::Idle => 0,
                Flight::Running { rows, .. } => *rows,
            }
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

    fn cut(&mut self, force_checkpoint: bool) -> Option<Box<Inflight>> {
        let now = now_ms();
        let now_secs = (now / 1000) as u32;
        let topic = self.store.topic().to_string();
        let mut rows = BatchRows::default();
        self.flushes_since_checkpoint += 1;
        let checkpoint = force_checkpoint || self.flushes_since_checkpoint >= self.checkpoint_every;
        for st in self.parts.values_mut() {
            st.cut(&topic, &mut rows);
            let moved = st.checkpointed != Some(st.position) && st.position > 0;
            if checkpoint && moved {
                st.checkpoint(&topic, &self.member, now_secs, &mut rows);
                st.dedup.evict(crate::dedup::At { arrival_ms: st.arrival_ms, offset: st.position });
            }
        }
        if checkpoint {
            self.flushes_since_checkpoint = 0;
        }
        if rows.total_rows() == 0 {
            return None;
        }
        self.batches += 1;
        Some(Box::new(Inflight { seq: self.batches, rows }))
    }

    /// Cut what is pending into a batch (with checkpoints) and hand it out
    /// unwritten: for tools and tests that write it themselves, e.g. to
    /// land a stale owner's batch after a successor's claim.
    pub fn take_batch(&mut self) -> Option<BatchRows> {
        self.cut(true).map(|b| b.rows)
    }

    /// Write what is pending and wait until it is written. A batch being
    /// written in the background is waited for first (and then that is the
    /// flush). `force_checkpoint` checkpoints regardless of `checkpoint_every`.
    pub async fn flush(&mut self, force_checkpoint: bool) -> Result<FlushReport, AggError> {
        let result = match std::mem::replace(&mut self.flight, Flight::Idle) {
            Flight::Running { task, .. } => task.await.map_err(|e| AggError::FlushLost(e.to_string()))?,
            Flight::Idle => match self.cut(force_checkpoint) {
                None => return Ok(FlushReport::default()),
                Some(batch) => write_batch(self.store.clone(), self.metrics.clone(), self.query_prefix(), batch, self.kill_after).await,
            },
        };
        self.finish(result)
    }

    /// Start writing a batch on `rt` (if anything is pending) and return at
    /// once; [`Core::poll_flush`] collects the result. No-op while a batch
    /// is being written.
    pub fn start_flush(&mut self, rt: &Handle) {
        if self.is_flushing() {
            return;
        }
        if let Some(batch) = self.cut(false) {
            let rows = batch.rows.total_rows();
            let task = rt.spawn(write_batch(self.store.clone(), self.metrics.clone(), self.query_prefix(), batch, self.kill_after));
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
            Ok(result) => self.finish(result),
            Err(e) => Err(AggError::FlushLost(e.to_string())),
        })
    }

    /// Drop all partition state and the batch in flight (after a failed
    /// flush); returns the partitions to claim again.
    pub fn drop_all_state(&mut self) -> Vec<i32> {
        let parts = self.assigned();
        self.parts.clear();
        if let Flight::Running { task, .. } = std::mem::replace(&mut self.flight, Flight::Idle) {
            task.abort();
        }
        self.metrics.assigned_partitions.set(0);
        parts
    }

    fn query_prefix(&self) -> String {
        format!("agg-{}-{}", self.member, self.started_ms)
    }

    /// Take a written batch's checkpoints into the partitions' state.
    fn finish(&mut self, result: Result<FlushReport, AggError>) -> Result<FlushReport, AggError> {
        let report = result?;
        for &(p, epoch, pos) in &report.checkpointed {
            if let Some(st) = self.parts.get_mut(&p).filter(|st| st.epoch == epoch) {
                st.checkpointed = Some(pos);
            }
        }
        Ok(report)
    }
}

/// Write `batch` table by table in [`Table::ORDER`], after checking that
/// this member still holds the latest claim on each of its partitions.
async fn write_batch<S: Store>(
    store: S,
    metrics: Arc<Metrics>,
    query_prefix: String,
    batch: Box<Inflight>,
    kill_after: Option<KillAfter>,
) -> Result<FlushReport, AggError> {
    let started = Instant::now();
    let result = write_tables(&store, &metrics, &query_prefix, &batch, kill_after).await;
    metrics.flush_failing.set(result.is_err() as i64);
    match &result {
        Ok(_) => {
            metrics.flush_seconds.observe(started.elapsed().as_secs_f64());
            events::BatchFlushed { batch: batch.seq, rows: batch.rows.total_rows(), ms: started.elapsed().as_millis() as u64 }.emit();
        }
        Err(AggError::Fenced(parts)) => {
            metrics.fenced.inc_by(parts.len() as u64);
        }
        Err(AggError::ClaimContested(parts)) => {
            metrics.contested.inc_by(parts.len() as u64);
        }
        Err(_) => metrics.flush_errors.inc(),
    }
    result
}

async fn write_tables<S: Store>(
    store: &S,
    metrics: &Metrics,
    query_prefix: &str,
    batch: &Inflight,
    kill_after: Option<KillAfter>,
) -> Result<FlushReport, AggError> {
    let parts: Vec<i32> = batch.rows.epochs.iter().map(|&(p, _)| p).collect();
    let latest = store.latest_epochs(&parts).await?;
    let fenced: Vec<i32> =
        batch.rows.epochs.iter().filter(|&&(p, e)| latest.get(&p).is_some_and(|l| l.epoch != e)).map(|&(p, _)| p).collect();
    if !fenced.is_empty() {
        return Err(AggError::Fenced(fenced));
    }
    let contested: Vec<i32> =
        batch.rows.epochs.iter().filter(|&&(p, e)| latest.get(&p).is_some_and(|l| l.epoch == e && l.contested)).map(|&(p, _)| p).collect();
    if !contested.is_empty() {
        return Err(AggError::ClaimContested(contested));
    }
    for table in Table::ORDER {
        let rows = batch.rows.rows(table);
        if rows.rows == 0 {
            continue;
        }
        let query_id = format!("{query_prefix}-{}-{}", batch.seq, table.name());
        store.insert(table, rows, &query_id).await?;
        metrics.flush_rows.with_label_values(&[table.name()]).inc_by(rows.rows as u64);
        if let Some(k) = kill_after.filter(|k| k.table == table) {
            static INSERTS: AtomicU64 = AtomicU64::new(0);
            let n = INSERTS.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= k.n {
                runtime::fault::now(runtime::fault::Fault::Kill, &format!("{} inserts into {}", n, table.name()));
            }
        }
    }
    Ok(FlushReport { checkpointed: batch.rows.positions.iter().map(|&(p, e, pos, _, _)| (p, e, pos)).collect() })
}

#[cfg(test)]
mod tests {
    //! The flush protocol against the fault-injecting fake store: faults at
    //! every insert (failing before or after its rows landed), a stale owner
    //! whose writes land after a successor's claim. Expected totals are
    //! computed here from the messages, independently of the aggregator.
    use super::*;
    use crate::store::fake::{FakeStore, Fault, UsageKey};
    use schemas::{Protocol, ViewerUsage};
    use std::collections::{BTreeMap, BTreeSet};

    struct Msg {
        ts: i64,
        payload: Vec<u8>,
    }

    /// A partition's messages: viewers interleaved over 27 days of event
    /// time, arriving 10 ms apart, duplicates re-sent after all originals,
    /// and a few poison records.
    type Totals = BTreeMap<UsageKey, [u64; 3]>;

    fn messages(seed: u64) -> (Vec<Msg>, Totals, Totals) {
        let mut rng = seed;
        let mut next = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            rng >> 33
        };
        let codec = Codec::new();
        let day0 = 1_790_000_000_000i64 / 86_400_000 * 86_400_000;
        let mut events = Vec::new();
        for v in 0..12 {
            for seq in 0..15i64 {
                let t = day0 + (next() % 27) as i64 * 86_400_000 + (next() % 86_400) as i64 * 1000;
                events.push((format!("viewer-{v}"), seq, t, 1000 + next() as i64 % 5000, format!("partner-{}", v % 3)));
            }
        }
        // random order across viewers
        for i in (1..events.len()).rev() {
            events.swap(i, next() as usize % (i + 1));
        }
        let dups: Vec<_> = events.iter().filter(|_| next() % 10 == 0).cloned().collect();
        let mut tracking = Totals::new();
        let mut viewer = Totals::new();
        let mut seen = BTreeSet::new();
        for (v, seq, t, bytes, partner) in &events {
            if seen.insert((v.clone(), *seq)) {
                let w = (t / 60_000 * 60) as u32;
                for (map, key) in [(&mut tracking, (w, partner.clone(), String::new())), (&mut viewer, (w, partner.clone(), v.clone()))] {
                    let e = map.entry(key).or_default();
                    e[0] += *bytes as u64;
                    e[1] += 7;
                    e[2] += 1;
                }
            }
        }
        let mut msgs = Vec::new();
        let mut arrival = 1_800_000_000_000i64;
        for (i, (v, seq, t, bytes, partner)) in events.iter().chain(dups.iter()).enumerate() {
            arrival += 10;
            if i % 50 == 25 {
                msgs.push(Msg { ts: arrival, payload: b"poison".to_vec() });
            }
            let ev = ViewerUsage {
                viewer_id: v.as_str().into(),
                seq: *seq,
                interval_start: *t,
                interval_end: t + 5000,
                bytes_out: *bytes,
                bytes_in: 7,
                account_id: "acct".into(),
                stream_name: "live".into(),
                cluster: "fra".into(),
                server_id: "m1".into(),
                protocol: Protocol::Whep,
                token_id: None,
                tracking_id: Some(partner.as_str().into()),
                custom_viewer_data: None,
            };
            msgs.push(Msg { ts: arrival, payload: codec.encode_to_vec(&ev) });
        }
        (msgs, tracking, viewer)
    }

    fn config() -> AggregatorConfig {
        AggregatorConfig { member_id: "test".into(), ..Default::default() }
    }

    /// Consume `msgs` in chunks, flushing after each; after a failed flush,
    /// drop the state, claim again and re-read from where the claim says.
    async fn consume(core: &mut Core<FakeStore>, msgs: &[Msg], chunk: usize) -> usize {
        let mut failures = 0;
        let mut pos = core.assign(&[0]).await.unwrap()[0].1.unwrap_or(0) as usize;
        loop {
            let end = (pos + chunk).min(msgs.len());
            for (o, m) in msgs.iter().enumerate().take(end).skip(pos) {
                core.process(0, o as i64, Some(m.ts), &m.payload);
            }
            pos = end;
            match core.flush(false).await {
                Ok(_) if pos == msgs.len() => return failures,
                Ok(_) => {}
                Err(e) => {
                    assert!(matches!(e, AggError::Injected(_)), "{e}");
                    failures += 1;
                    core.drop_all_state();
                    pos = core.assign(&[0]).await.unwrap()[0].1.unwrap_or(0) as usize;
                }
            }
        }
    }

    #[tokio::test]
    async fn a_fault_at_any_insert_landed_or_not_leaves_totals_exact() {
        let (msgs, want_tracking, want_viewer) = messages(7);
        let clean = FakeStore::new("t");
        let mut core = Core::new(&config(), clean.clone(), Arc::new(Metrics::new()));
        assert_eq!(consume(&mut core, &msgs, 40).await, 0);
        assert_eq!(clean.tracking_totals(), want_tracking);
        assert_eq!(clean.viewer_totals(), want_viewer);
        let poison = msgs.iter().filter(|m| m.payload == b"poison").count();
        assert_eq!(clean.dead_letters().len(), poison);
        let inserts = clean.inserts();
        assert!(inserts > 20, "{inserts} inserts in a clean run");
        for insert_no in 1..=inserts {
            for lands in [false, true] {
                let store = FakeStore::new("t");
                store.inject(&[Fault { insert_no, lands }, Fault { insert_no: insert_no + 3, lands: !lands }]);
                let mut core = Core::new(&config(), store.clone(), Arc::new(Metrics::new()));
                let failures = consume(&mut core, &msgs, 40).await;
                assert!(failures >= 1, "fault at insert {insert_no} happened");
                assert_eq!(store.tracking_totals(), want_tracking, "fault at insert {insert_no}, landed: {lands}");
                assert_eq!(store.viewer_totals(), want_viewer, "fault at insert {insert_no}, landed: {lands}");
                assert_eq!(store.dead_letters().len(), poison, "fault at insert {insert_no}, landed: {lands}");
            }
        }
    }

    #[tokio::test]
    async fn a_stale_owner_writing_after_the_successor_claimed_adds_nothing() {
        let (msgs, want_tracking, want_viewer) = messages(11);
        let store = FakeStore::new("t");
        let mut a = Core::new(&config(), store.clone(), Arc::new(Metrics::new()));
        // A consumes a third and flushes, then consumes more and is paused
        // with those rows pending (and cut into a batch it has not sent)
        a.assign(&[0]).await.unwrap();
        let third = msgs.len() / 3;
        for (o, m) in msgs.iter().enumerate().take(third) {
            a.process(0, o as i64, Some(m.ts), &m.payload);
        }
        a.flush(true).await.unwrap();
        for (o, m) in msgs.iter().enumerate().take(2 * third).skip(third) {
            a.process(0, o as i64, Some(m.ts), &m.payload);
        }
        let stale_batch = a.cut(true).expect("a batch");
        // B takes the partition over and finishes the stream
        let mut b = Core::new(&AggregatorConfig { member_id: "b".into(), ..config() }, store.clone(), Arc::new(Metrics::new()));
        consume(&mut b, &msgs, 25).await;
        assert_eq!(store.tracking_totals(), want_tracking);
        let raw_before = store.raw_tracking_rows();
        // A resumes: its flush finds the partition claimed by B and writes nothing ...
        for (o, m) in msgs.iter().enumerate().skip(2 * third) {
            a.process(0, o as i64, Some(m.ts), &m.payload);
        }
        let e = a.flush(true).await.unwrap_err();
        assert!(matches!(&e, AggError::Fenced(p) if p == &[0]), "{e}");
        assert_eq!(store.raw_tracking_rows(), raw_before);
        // ... and had its check raced B's claim, its rows would land and not count
        for table in Table::ORDER {
            store.insert(table, stale_batch.rows.rows(table), "stale").await.unwrap();
        }
        assert!(store.raw_tracking_rows() > raw_before, "the stale rows are in the table");
        assert_eq!(store.tracking_totals(), want_tracking);
        assert_eq!(store.viewer_totals(), want_viewer);
        // a third owner resumes from B's checkpoint, not the stale one's
        let mut c = Core::new(&AggregatorConfig { member_id: "c".into(), ..config() }, store.clone(), Arc::new(Metrics::new()));
        let start = c.assign(&[0]).await.unwrap()[0].1;
        assert_eq!(start, Some(msgs.len() as i64));
        assert_eq!(c.parts[&0].dedup.len(), 12, "every viewer's dedup state restored from B's rows");
    }

    #[tokio::test]
    async fn two_members_claiming_at_once_count_nothing_twice() {
        let (msgs, want_tracking, want_viewer) = messages(13);
        let store = FakeStore::new("t");
        let member = |m: &str| Core::new(&AggregatorConfig { member_id: m.into(), ..config() }, store.clone(), Arc::new(Metrics::new()));
        let (mut a, mut b) = (member("a"), member("b"));
        a.assign(&[0]).await.unwrap();
        let third = msgs.len() / 3;
        for (o, m) in msgs.iter().enumerate().take(third) {
            a.process(0, o as i64, Some(m.ts), &m.payload);
        }
        a.flush(true).await.unwrap();
        // A reloads (as after a failed insert) while B is given the partition:
        // both read the claims before either writes, so both take the same epoch
        a.drop_all_state();
        store.freeze_claim_reads();
        let from_a = a.assign(&[0]).await.unwrap()[0].1;
        let from_b = b.assign(&[0]).await.unwrap()[0].1;
        store.thaw_claim_reads();
        assert_eq!((from_a, from_b), (Some(third as i64), Some(third as i64)));
        assert_eq!(a.parts[&0].epoch, b.parts[&0].epoch, "the claims collided");
        // both consume the rest; A's batch lands as if its check ran before B's claim was visible
        for (o, m) in msgs.iter().enumerate().skip(third) {
            a.process(0, o as i64, Some(m.ts), &m.payload);
            b.process(0, o as i64, Some(m.ts), &m.payload);
        }
        let landed = a.cut(true).expect("a batch");
        for table in Table::ORDER {
            store.insert(table, landed.rows.rows(table), "raced").await.unwrap();
        }
        // neither counts: the epoch is contested, and B's check finds it
        let e = b.flush(true).await.unwrap_err();
        assert!(matches!(&e, AggError::ClaimContested(p) if p == &[0]), "{e}");
        let counted: u64 = store.tracking_totals().values().map(|v| v[2]).sum();
        let first_third: u64 = {
            let solo = FakeStore::new("t");
            let mut s = Core::new(&config(), solo.clone(), Arc::new(Metrics::new()));
            s.assign(&[0]).await.unwrap();
            for (o, m) in msgs.iter().enumerate().take(third) {
                s.process(0, o as i64, Some(m.ts), &m.payload);
            }
            s.flush(true).await.unwrap();
            solo.tracking_totals().values().map(|v| v[2]).sum()
        };
        assert_eq!(counted, first_third, "only the rows before the contested claims count");
        // B claims again and finishes: exact
        b.drop_all_state();
        let start = b.assign(&[0]).await.unwrap()[0].1;
        assert_eq!(start, Some(third as i64), "the new claim resumes where the contested ones did");
        for (o, m) in msgs.iter().enumerate().skip(third) {
            b.process(0, o as i64, Some(m.ts), &m.payload);
        }
        b.flush(true).await.unwrap();
        assert_eq!(store.tracking_totals(), want_tracking);
        assert_eq!(store.viewer_totals(), want_viewer);
        // and A, at its next flush, finds the partition claimed since
        a.process(0, msgs.len() as i64, Some(msgs[0].ts), &msgs[0].payload);
        let e = a.flush(true).await.unwrap_err();
        assert!(matches!(&e, AggError::Fenced(p) if p == &[0]), "{e}");
        assert_eq!(store.tracking_totals(), want_tracking);
    }
}
