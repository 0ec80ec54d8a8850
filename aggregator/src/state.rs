//! Per-partition state and the per-event hot path: decode, validate, dedup,
//! roll into windows. No I/O here; `sink` and `core` do that.

use crate::dedup::{At, Dedup, Horizon, Seen};
use crate::rows::{DeadLetter, RowCache, Sums, Sym, NO_ROW};
use crate::tables::{self, Src, Table};
use rustc_hash::FxHashMap;
use schemas::validate::{code_of, reason_text, Rules};
use schemas::{Codec, Protocol};

/// Settings the hot path needs.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Width of the tumbling windows, seconds (`window_secs`; default 60).
    pub window_secs: u32,
    /// How long a viewer's counted `seq` numbers are remembered
    /// (`dedup_horizon_secs`, `dedup_horizon_records`; default 24 h and 2,000,000 records).
    pub dedup_horizon: Horizon,
    /// Events whose `interval_start` is more than this before the partition
    /// watermark are dead-lettered as `too_late`, ms (`max_lateness_secs`; default 35 days).
    pub max_lateness_ms: i64,
    /// Events whose `interval_start` is more than this after their record's
    /// Kafka timestamp are dead-lettered as `in_future`, ms (`max_future_secs`; default 1 h).
    pub max_future_ms: i64,
    /// Per-event maximum of `bytes_out` and `bytes_in`, bytes; larger events
    /// are dead-lettered as `too_large` (`max_event_bytes`).
    pub max_event_bytes: i64,
}

impl Limits {
    /// The limits `c` sets, its seconds turned into milliseconds.
    pub fn from_config(c: &crate::config::AggregatorConfig) -> Self {
        Limits {
            window_secs: c.window_secs,
            dedup_horizon: Horizon {
                ms: (c.dedup_horizon_secs as i64).saturating_mul(1000),
                offsets: i64::try_from(c.dedup_horizon_records).unwrap_or(i64::MAX),
            },
            max_lateness_ms: (c.max_lateness_secs as i64).saturating_mul(1000),
            max_future_ms: (c.max_future_secs as i64).saturating_mul(1000),
            max_event_bytes: c.max_event_bytes,
        }
    }
}

#[derive(Debug, Default)]
struct Interner {
    map: FxHashMap<Box<str>, Sym>,
    strs: Vec<Box<str>>,
}

impl Interner {
    #[inline]
    fn intern(&mut self, s: &str) -> Sym {
        if let Some(&id) = self.map.get(s) {
            return id;
        }
        let id = self.strs.len() as Sym;
        let b: Box<str> = s.into();
        self.strs.push(b.clone());
        self.map.insert(b, id);
        id
    }
    fn get(&self, id: Sym) -> &str {
        &self.strs[id as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TrackingKey {
    window: u32,
    tracking: Sym,
    account: Sym,
    stream: Sym,
    cluster: Sym,
    protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ViewerKey {
    window: u32,
    tracking: Sym,
    cvd: Sym,
    viewer: Sym,
    account: Sym,
    stream: Sym,
    cluster: Sym,
}

/// Rows of one table: sums in arrival order, with an index by key.
#[derive(Debug)]
struct Rows<K> {
    index: FxHashMap<K, u32>,
    rows: Vec<(K, Sums)>,
}

impl<K> Default for Rows<K> {
    fn default() -> Self {
        Rows { index: FxHashMap::default(), rows: Vec::new() }
    }
}

impl<K: Copy + Eq + std::hash::Hash> Rows<K> {
    /// Index of `key`'s row, created empty if new.
    #[inline]
    fn slot(&mut self, key: K) -> u32 {
        let rows = &mut self.rows;
        *self.index.entry(key).or_insert_with(|| {
            rows.push((key, Sums::default()));
            (rows.len() - 1) as u32
        })
    }

    fn len(&self) -> usize {
        self.rows.len()
    }

    /// Add an event to row `*idx`; when a sum would overflow, start another
    /// partial row for the same key and point `*idx` (and the index) at it.
    #[inline]
    fn add(&mut self, idx: &mut u32, bytes_out: i64, bytes_in: i64) {
        if self.rows[*idx as usize].1.try_add(bytes_out, bytes_in) {
            return;
        }
        let key = self.rows[*idx as usize].0;
        let mut fresh = Sums::default();
        // bytes are validated non-negative and below 2^63: a fresh row takes them
        let added = fresh.try_add(bytes_out, bytes_in);
        debug_assert!(added);
        self.rows.push((key, fresh));
        *idx = (self.rows.len() - 1) as u32;
        self.index.insert(key, *idx);
    }
}

/// Aggregates accumulated since the last flush cut.
#[derive(Debug, Default)]
struct Pending {
    strings: Interner,
    tracking: Rows<TrackingKey>,
    viewer: Rows<ViewerKey>,
    dead: Vec<DeadLetter>,
}

impl Pending {
    fn rows(&self) -> usize {
        self.tracking.len() + self.viewer.len() + self.dead.len()
    }
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Added to the pending aggregates.
    Counted {
        /// Its window had ended before the partition watermark: it adds a
        /// further partial row to a window that may already be written.
        late: bool,
        /// The viewer's dedup state had passed the horizon and was
        /// forgotten: a re-sent duplicate would have been counted again.
        beyond_horizon: bool,
    },
    /// Its `(viewer_id, seq)` was already counted: dropped.
    Duplicate,
    /// Written to the dead letters, with the reason's code (`malformed`,
    /// `invalid`, `too_large`, `too_late`, `in_future`, ...).
    DeadLettered(&'static str),
    /// Offset below the partition position: already processed.
    Stale,
}

/// Everything the aggregator holds for one Kafka partition.
#[derive(Debug)]
pub struct PartitionState {
    pub(crate) partition: i32,
    /// This member's claim on the partition: every row it writes carries it.
    pub epoch: u64,
    /// Next offset to read.
    pub position: i64,
    /// Largest `interval_start` of a valid event, epoch ms (`i64::MIN` before
    /// the first): decides lateness.
    pub watermark_ms: i64,
    /// Largest Kafka record timestamp seen, epoch ms (`i64::MIN` before the
    /// first): the clock of the dedup horizon and of the `in_future` check.
    pub arrival_ms: i64,
    /// Position written by the last completed checkpoint.
    pub checkpointed: Option<i64>,
    pub(crate) dedup: Dedup,
    pending: Pending,
    /// Counts flush cuts: tells row caches of an earlier accumulation apart.
    generation: u32,
}

impl PartitionState {
    /// The state of `partition` claimed at `epoch`, resuming at `position`
    /// with the clocks and dedup state restored from its checkpoint (use
    /// `i64::MIN` for clocks with no event yet); nothing pending.
    pub fn new(partition: i32, epoch: u64, position: i64, watermark_ms: i64, arrival_ms: i64, dedup: Dedup) -> Self {
        PartitionState {
            partition,
            epoch,
            position,
            watermark_ms,
            arrival_ms,
            checkpointed: None,
            dedup,
            pending: Pending::default(),
            generation: 1,
        }
    }

    /// Rows waiting for the next flush cut.
    pub fn pending_rows(&self) -> usize {
        self.pending.rows()
    }

    /// Distinct windows with pending rows (the "open windows" metric).
    pub fn open_windows(&self) -> usize {
        let mut w: Vec<u32> = self.pending.tracking.rows.iter().map(|(k, _)| k.window).collect();
        w.sort_unstable();
        w.dedup();
        w.len()
    }

    /// The hot path: one Kafka message at `offset` with record timestamp
    /// `timestamp_ms` (`None` when the broker gave none). Every decision is a
    /// function of the partition's messages (offsets, timestamps, payloads)
    /// and of the state restored from the last checkpoint, never of the wall
    /// clock, so a replay decides exactly as the first run did.
    pub fn process(&mut self, offset: i64, timestamp_ms: Option<i64>, payload: &[u8], codec: &Codec, limits: &Limits) -> Outcome {
        if offset < self.position {
            return Outcome::Stale;
        }
        self.position = offset + 1;
        if let Some(ts) = timestamp_ms {
            self.arrival_ms = self.arrival_ms.max(ts);
        }
        let ev = match codec.decode(payload) {
            Ok(ev) => ev,
            Err(e) => return self.dead_letter(offset, e.reason(), e.to_string(), payload),
        };
        if let Err(errs) = schemas::validate_with(&ev, &Rules { now_ms: None, max_event_bytes: limits.max_event_bytes }) {
            return self.dead_letter(offset, code_of(&errs), reason_text(&errs), payload);
        }
        // "in the future" relative to when the record reached Kafka
        let arrived = timestamp_ms.unwrap_or(self.arrival_ms);
        if arrived != i64::MIN && ev.interval_start > arrived.saturating_add(limits.max_future_ms) {
            let reason =
                format!("in_future: interval_start is more than {} s after the record's Kafka timestamp", limits.max_future_ms / 1000);
            return self.dead_letter(offset, "in_future", reason, payload);
        }
        if ev.interval_start < self.watermark_ms.saturating_sub(limits.max_lateness_ms) {
            let reason =
                format!("too_late: interval_start is more than {} s before the partition watermark", limits.max_lateness_ms / 1000);
            return self.dead_letter(offset, "too_late", reason, payload);
        }
        let width_ms = limits.window_secs as i64 * 1000;
        let window_ms = ev.window_start_ms(width_ms);
        let late = window_ms + width_ms <= self.watermark_ms;
        self.watermark_ms = self.watermark_ms.max(ev.interval_start);
        let at = At { arrival_ms: self.arrival_ms, offset };
        let (seen, cache) = self.dedup.check_and_insert_cached(&ev.viewer_id, ev.seq, at);
        let Some(cache) = cache else {
            return Outcome::Duplicate;
        };
        let window = (window_ms / 1000) as u32;
        let p = &mut self.pending;
        let fields = [ev.tracking_id_or_empty(), &*ev.account_id, &*ev.stream_name, &*ev.cluster, ev.custom_viewer_data_or_empty()];
        let hit = cache.generation == self.generation
            && cache.window == window
            && cache.protocol == ev.protocol
            && cache.tracking_row != NO_ROW
            && cache.viewer_row != NO_ROW
            && cache.syms.iter().zip(fields).all(|(&sym, f)| p.strings.get(sym) == f);
        if !hit {
            let [tracking, account, stream, cluster, cvd] = fields.map(|f| p.strings.intern(f));
            let viewer = p.strings.intern(&ev.viewer_id);
            *cache = RowCache {
                generation: self.generation,
                window,
                protocol: ev.protocol,
                syms: [tracking, account, stream, cluster, cvd],
                tracking_row: p.tracking.slot(TrackingKey { window, tracking, account, stream, cluster, protocol: ev.protocol }),
                viewer_row: p.viewer.slot(ViewerKey { window, tracking, cvd, viewer, account, stream, cluster }),
            };
        }
        p.tracking.add(&mut cache.tracking_row, ev.bytes_out, ev.bytes_in);
        p.viewer.add(&mut cache.viewer_row, ev.bytes_out, ev.bytes_in);
        Outcome::Counted { late, beyond_horizon: seen == Seen::NewBeyondHorizon }
    }

    fn dead_letter(&mut self, offset: i64, kind: &'static str, reason: String, payload: &[u8]) -> Outcome {
        // the record's arrival, not the wall clock: a replay writes the same row
        let received_at = if self.arrival_ms == i64::MIN { 0 } else { (self.arrival_ms / 1000).clamp(0, u32::MAX as i64) as u32 };
        self.pending.dead.push(DeadLetter { received_at, offset, reason, payload: payload.to_vec() });
        Outcome::DeadLettered(kind)
    }

    fn src<'a>(&self, topic: &'a str) -> Src<'a> {
        Src { topic, partition: self.partition as u32, epoch: self.epoch, position: self.position as u64 }
    }

    /// Encode the pending rows into `out` (tagged with the claim and the
    /// current position) and start a fresh accumulation.
    pub fn cut(&mut self, topic: &str, out: &mut tables::BatchRows) {
        let p = std::mem::take(&mut self.pending);
        // row caches point into the accumulation just taken
        self.generation = self.generation.wrapping_add(1).max(1);
        let at = self.src(topic);
        let s = &p.strings;
        for (k, v) in &p.tracking.rows {
            tables::tracking_row(
                out.rows_mut(Table::Tracking),
                k.window,
                [s.get(k.tracking), s.get(k.account), s.get(k.stream), s.get(k.cluster), k.protocol.as_str()],
                v,
                at,
            );
        }
        for (k, v) in &p.viewer.rows {
            tables::viewer_row(
                out.rows_mut(Table::Viewer),
                k.window,
                [s.get(k.tracking), s.get(k.cvd), s.get(k.viewer), s.get(k.account), s.get(k.stream), s.get(k.cluster)],
                v,
                at,
            );
        }
        for d in &p.dead {
            let source = format!("kafka:{topic}/{}@{}", self.partition, d.offset);
            tables::dead_letter_row(out.rows_mut(Table::DeadLetters), d, &source, at);
        }
        if p.rows() > 0 {
            out.touch(self.partition, self.epoch);
        }
    }

    /// Encode the dedup state of viewers changed since the last checkpoint and
    /// this partition's checkpoint row.
    pub fn checkpoint(&mut self, topic: &str, member: &str, now_secs: u32, out: &mut tables::BatchRows) {
        let at = self.src(topic);
        for (viewer, v) in self.dedup.dirty() {
            tables::dedup_row(out.rows_mut(Table::Dedup), at, viewer, &v.seqs.to_flat(), v.last_seen_ms, now_secs);
        }
        self.dedup.mark_clean();
        tables::checkpoint_row(out.rows_mut(Table::Checkpoints), at, self.watermark_ms, self.arrival_ms, member, now_secs);
        out.touch(self.partition, self.epoch);
        out.positions.push((self.partition, self.epoch, self.position, self.watermark_ms, self.arrival_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::ViewerUsage;
    use std::borrow::Cow;

    fn limits() -> Limits {
        Limits {
            window_secs: 60,
            dedup_horizon: Horizon { ms: 86_400_000, offsets: 2_000_000 },
            max_lateness_ms: 35 * 86_400_000,
            max_future_ms: 3_600_000,
            max_event_bytes: schemas::validate::DEFAULT_MAX_EVENT_BYTES,
        }
    }

    fn ev(viewer: &str, seq: i64, t: i64, bytes: i64) -> Vec<u8> {
        Codec::new().encode_to_vec(&ViewerUsage {
            viewer_id: Cow::Borrowed(viewer),
            seq,
            interval_start: t,
            interval_end: t + 10_000,
            bytes_out: bytes,
            bytes_in: 1,
            account_id: "a".into(),
            stream_name: "s".into(),
            cluster: "c".into(),
            server_id: "x".into(),
            protocol: Protocol::Webrtc,
            token_id: None,
            tracking_id: Some("t1".into()),
            custom_viewer_data: None,
        })
    }

    const NOW: i64 = 1_800_000_000_000;

    fn state() -> PartitionState {
        PartitionState::new(0, 1, 0, i64::MIN, i64::MIN, Dedup::new(Horizon { ms: 86_400_000, offsets: 2_000_000 }))
    }

    fn total(st: &PartitionState) -> (u64, u64) {
        let t: u64 = st.pending.tracking.rows.iter().map(|(_, s)| s.bytes_out).sum();
        let v: u64 = st.pending.viewer.rows.iter().map(|(_, s)| s.bytes_out).sum();
        (t, v)
    }

    #[test]
    fn counts_dedups_and_dead_letters() {
        let codec = Codec::new();
        let mut st = state();
        let t0 = 1_764_000_000_000;
        assert!(matches!(st.process(0, Some(NOW), &ev("v1", 0, t0, 100), &codec, &limits()), Outcome::Counted { .. }));
        assert_eq!(st.process(1, Some(NOW), &ev("v1", 0, t0, 100), &codec, &limits()), Outcome::Duplicate);
        assert!(matches!(st.process(2, Some(NOW), &ev("v1", 1, t0 + 10_000, 50), &codec, &limits()), Outcome::Counted { .. }));
        assert_eq!(st.process(3, Some(NOW), b"garbage!!!!!", &codec, &limits()), Outcome::DeadLettered("bad_header"));
        assert_eq!(st.process(4, Some(NOW), &ev("v2", 0, t0, -5), &codec, &limits()), Outcome::DeadLettered("invalid"));
        assert_eq!(st.process(5, Some(NOW), &ev("v3", 0, t0 - 36 * 86_400_000, 5), &codec, &limits()), Outcome::DeadLettered("too_late"));
        assert_eq!(st.process(6, Some(NOW), &ev("v3", 0, NOW + 7_200_000, 5), &codec, &limits()), Outcome::DeadLettered("in_future"));
        assert_eq!(st.process(6, Some(NOW), &ev("v9", 0, t0, 5), &codec, &limits()), Outcome::Stale);
        assert_eq!(total(&st), (150, 150));
        assert_eq!(st.pending.dead.len(), 4);
        assert_eq!(st.position, 7);
    }

    /// Pending viewer rows as `(window, [tracking, cvd, viewer, stream], protocol-free) -> bytes_out`,
    /// taken out as a flush cut does.
    fn take_viewer_rows(st: &mut PartitionState) -> std::collections::BTreeMap<(u32, [String; 4]), u64> {
        let mut out = tables::BatchRows::default();
        let p = &st.pending;
        let s = &p.strings;
        let rows = p
            .viewer
            .rows
            .iter()
            .map(|(k, v)| {
                let names = [k.tracking, k.cvd, k.viewer, k.stream].map(|x| s.get(x).to_string());
                ((k.window, names), v.bytes_out)
            })
            .collect();
        st.cut("t", &mut out);
        rows
    }

    proptest::proptest! {
        /// The row cache (viewer -> last rows) never sends bytes to another
        /// key's row: viewers switching stream, tracking id, custom data or
        /// window, with flush cuts in between, give the same rows as summing
        /// each event under its own key.
        #[test]
        fn cached_rows_equal_a_plain_sum(
            evs in proptest::collection::vec((0u8..3, 0u8..2, 0u8..2, 0u8..2, 0u8..3, 1i64..1000, proptest::bool::ANY), 1..200)
        ) {
            let codec = Codec::new();
            let mut st = state();
            let t0 = 1_764_000_000_000;
            let mut want = std::collections::BTreeMap::new();
            let mut got = std::collections::BTreeMap::new();
            for (i, (viewer, stream, tracking, cvd, window, bytes, cut)) in evs.into_iter().enumerate() {
                let names = [format!("t{tracking}"), if cvd == 0 { String::new() } else { format!("c{cvd}") }, format!("v{viewer}"), format!("s{stream}")];
                let t = t0 + window as i64 * 60_000;
                let e = ViewerUsage {
                    viewer_id: Cow::Borrowed(&names[2]),
                    seq: i as i64,
                    interval_start: t,
                    interval_end: t + 1000,
                    bytes_out: bytes,
                    bytes_in: 0,
                    account_id: "a".into(),
                    stream_name: Cow::Borrowed(&names[3]),
                    cluster: "c".into(),
                    server_id: "x".into(),
                    protocol: Protocol::Webrtc,
                    token_id: None,
                    tracking_id: Some(Cow::Borrowed(&names[0])),
                    custom_viewer_data: (cvd != 0).then(|| Cow::Borrowed(names[1].as_str())),
                };
                let counted = matches!(st.process(i as i64, Some(NOW), &codec.encode_to_vec(&e), &codec, &limits()), Outcome::Counted { .. });
                proptest::prop_assert!(counted);
                *want.entry(((t / 1000) as u32 / 60 * 60, names.clone())).or_insert(0u64) += bytes as u64;
                if cut {
                    for (k, v) in take_viewer_rows(&mut st) {
                        *got.entry(k).or_insert(0) += v;
                    }
                }
            }
            for (k, v) in take_viewer_rows(&mut st) {
                *got.entry(k).or_insert(0) += v;
            }
            proptest::prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn late_event_is_counted_and_flagged() {
        let codec = Codec::new();
        let mut st = state();
        let t0 = 1_764_000_000_000;
        st.process(0, Some(NOW), &ev("v1", 5, t0 + 600_000, 1), &codec, &limits());
        assert_eq!(
            st.process(1, Some(NOW), &ev("v1", 0, t0, 7), &codec, &limits()),
            Outcome::Counted { late: true, beyond_horizon: false }
        );
        assert_eq!(total(&st), (8, 8));
    }

    #[test]
    fn in_future_is_judged_by_the_record_timestamp_not_the_clock() {
        let codec = Codec::new();
        let mut st = state();
        let t = 1_764_000_000_000;
        // two hours after its record's timestamp: in the future, whenever it is replayed
        assert_eq!(st.process(0, Some(t), &ev("v1", 0, t + 7_200_000, 1), &codec, &limits()), Outcome::DeadLettered("in_future"));
        // half an hour after: fine, even though the wall clock is years later
        assert!(matches!(st.process(1, Some(t), &ev("v1", 1, t + 1_800_000, 1), &codec, &limits()), Outcome::Counted { .. }));
        // no timestamp: the partition's arrival clock decides
        assert_eq!(st.process(2, None, &ev("v1", 2, t + 7_200_000, 1), &codec, &limits()), Outcome::DeadLettered("in_future"));
        assert_eq!(st.pending.dead[0].received_at as i64, t / 1000, "dead letters carry the record's time");
    }

    #[test]
    fn too_large_events_are_dead_lettered_and_sums_never_wrap() {
        let codec = Codec::new();
        let mut st = state();
        let t0 = 1_764_000_000_000;
        let max = schemas::validate::DEFAULT_MAX_EVENT_BYTES;
        assert_eq!(st.process(0, Some(NOW), &ev("v1", 0, t0, i64::MAX), &codec, &limits()), Outcome::DeadLettered("too_large"));
        assert_eq!(st.process(1, Some(NOW), &ev("v1", 1, t0, max + 1), &codec, &limits()), Outcome::DeadLettered("too_large"));
        assert!(st.pending.dead[0].reason.starts_with("too_large: bytes_out"), "{}", st.pending.dead[0].reason);
        // with a small maximum per event, sums would still fit; force the
        // overflow path with a row already near u64::MAX
        let n = 5u64;
        for i in 0..n {
            assert!(matches!(
                st.process(2 + i as i64, Some(NOW), &ev("v1", 2 + i as i64, t0, max), &codec, &limits()),
                Outcome::Counted { .. }
            ));
        }
        st.pending.tracking.rows[0].1.bytes_out = u64::MAX - 10;
        assert!(matches!(st.process(20, Some(NOW), &ev("v1", 20, t0, max), &codec, &limits()), Outcome::Counted { .. }));
        let rows: Vec<Sums> = st.pending.tracking.rows.iter().map(|r| r.1).collect();
        assert_eq!(rows.len(), 2, "a second partial row for the same key");
        assert_eq!(rows[0].bytes_out, u64::MAX - 10, "the full row is left as it was");
        assert_eq!(rows[1], Sums { bytes_out: max as u64, bytes_in: 1, events: 1 });
        // and the next event of the key goes to the new row
        assert!(matches!(st.process(21, Some(NOW), &ev("v1", 21, t0, 7), &codec, &limits()), Outcome::Counted { .. }));
        assert_eq!(st.pending.tracking.rows[1].1.bytes_out, max as u64 + 7);
    }
}
