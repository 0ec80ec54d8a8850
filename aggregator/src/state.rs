//! Per-partition state and the per-event hot path: decode, validate, dedup,
//! roll into windows. No I/O here; `sink` and `core` do that.

use crate::dedup::{Dedup, Seen};
use crate::tables;
use rustc_hash::FxHashMap;
use schemas::{Codec, Protocol, ViewerUsage};

/// Settings the hot path needs.
#[derive(Debug, Clone)]
pub struct Limits {
    pub window_secs: u32,
    pub dedup_horizon_ms: i64,
    pub max_lateness_ms: i64,
    pub max_future_ms: i64,
}

impl Limits {
    pub fn from_config(c: &crate::config::AggregatorConfig) -> Self {
        Limits {
            window_secs: c.window_secs,
            dedup_horizon_ms: (c.dedup_horizon_secs as i64).saturating_mul(1000),
            max_lateness_ms: (c.max_lateness_secs as i64).saturating_mul(1000),
            max_future_ms: (c.max_future_secs as i64).saturating_mul(1000),
        }
    }
}

/// Interned string id, valid until the next flush cut.
type Sym = u32;

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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub events: u64,
}

impl Sums {
    #[inline]
    fn add(&mut self, ev: &ViewerUsage<'_>) {
        // validated: 0 <= bytes < 2^63, and events per flush are far below 2
        self.bytes_out += ev.bytes_out as u64;
        self.bytes_in += ev.bytes_in as u64;
        self.events += 1;
    }
}

/// A poison or rejected record, waiting for the dead-letter table.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub received_at: u32,
    pub offset: i64,
    pub reason: String,
    pub payload: Vec<u8>,
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

/// No row (the table already holds the event's offset).
const NO_ROW: u32 = u32::MAX;

/// Where a viewer's last event went, kept in the viewer's dedup entry so the
/// viewer's next event (usually the same window and attributes) skips the
/// interning and both row lookups: the event's strings are compared with the
/// cached ones instead of hashed. Valid only for the accumulation it was
/// made in (`generation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RowCache {
    generation: u32,
    window: u32,
    protocol: Protocol,
    /// tracking, account, stream, cluster, custom viewer data
    syms: [Sym; 5],
    tracking_row: u32,
    viewer_row: u32,
}

impl Default for RowCache {
    fn default() -> Self {
        RowCache { generation: 0, window: 0, protocol: Protocol::Webrtc, syms: [0; 5], tracking_row: NO_ROW, viewer_row: NO_ROW }
    }
}

/// How far each data table already holds this partition: events with an
/// offset below the threshold are in that table and must not be added again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Thresholds {
    pub viewer: i64,
    pub tracking: i64,
    pub dead: i64,
}

/// What happened to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Counted { late: bool, beyond_horizon: bool },
    Duplicate,
    DeadLettered(&'static str),
    /// Offset below the partition position: already processed.
    Stale,
}

/// Everything the aggregator holds for one Kafka partition.
#[derive(Debug)]
pub struct PartitionState {
    pub partition: i32,
    /// Next offset to read.
    pub position: i64,
    /// Largest `interval_start` of a valid event, epoch ms (`i64::MIN` before the first).
    pub watermark_ms: i64,
    /// Position and watermark written by the last completed checkpoint.
    pub checkpointed: Option<(i64, i64)>,
    pub thresholds: Thresholds,
    pub dedup: Dedup,
    pending: Pending,
    /// Counts flush cuts: tells row caches of an earlier accumulation apart.
    generation: u32,
}

impl PartitionState {
    pub fn new(partition: i32, position: i64, watermark_ms: i64, thresholds: Thresholds, dedup: Dedup) -> Self {
        PartitionState {
            partition,
            position,
            watermark_ms,
            checkpointed: None,
            thresholds,
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

    /// The hot path: one Kafka message at `offset`.
    pub fn process(&mut self, offset: i64, payload: &[u8], codec: &Codec, limits: &Limits, now_ms: i64) -> Outcome {
        if offset < self.position {
            return Outcome::Stale;
        }
        self.position = offset + 1;
        let ev = match codec.decode(payload) {
            Ok(ev) => ev,
            Err(e) => return self.dead_letter(offset, e.reason(), e.to_string(), payload, now_ms),
        };
        if let Err(errs) = schemas::validate(&ev, None) {
            return self.dead_letter(offset, "invalid", schemas::validate::reason_text(&errs), payload, now_ms);
        }
        if ev.interval_start > now_ms.saturating_add(limits.max_future_ms) {
            let reason = format!("in_future: interval_start is more than {} s ahead of the clock", limits.max_future_ms / 1000);
            return self.dead_letter(offset, "in_future", reason, payload, now_ms);
        }
        if ev.interval_start < self.watermark_ms.saturating_sub(limits.max_lateness_ms) {
            let reason = format!(
                "too_late: interval_start is more than {} s before the partition watermark",
                limits.max_lateness_ms / 1000
            );
            return self.dead_letter(offset, "too_late", reason, payload, now_ms);
        }
        let width_ms = limits.window_secs as i64 * 1000;
        let window_ms = ev.window_start_ms(width_ms);
        let late = window_ms + width_ms <= self.watermark_ms;
        self.watermark_ms = self.watermark_ms.max(ev.interval_start);
        let (seen, cache) = self.dedup.check_and_insert_cached(&ev.viewer_id, ev.seq, self.watermark_ms);
        let Some(cache) = cache else {
            return Outcome::Duplicate;
        };
        let window = (window_ms / 1000) as u32;
        let p = &mut self.pending;
        let (to_tracking, to_viewer) = (offset >= self.thresholds.tracking, offset >= self.thresholds.viewer);
        let fields = [
            ev.tracking_id_or_empty(),
            &*ev.account_id,
            &*ev.stream_name,
            &*ev.cluster,
            ev.custom_viewer_data_or_empty(),
        ];
        let hit = cache.generation == self.generation
            && cache.window == window
            && cache.protocol == ev.protocol
            && (!to_tracking || cache.tracking_row != NO_ROW)
            && (!to_viewer || cache.viewer_row != NO_ROW)
            && cache.syms.iter().zip(fields).all(|(&sym, f)| p.strings.get(sym) == f);
        if !hit && (to_tracking || to_viewer) {
            let [tracking, account, stream, cluster, cvd] = fields.map(|f| p.strings.intern(f));
            *cache = RowCache {
                generation: self.generation,
                window,
                protocol: ev.protocol,
                syms: [tracking, account, stream, cluster, cvd],
                tracking_row: NO_ROW,
                viewer_row: NO_ROW,
            };
            if to_tracking {
                cache.tracking_row =
                    p.tracking.slot(TrackingKey { window, tracking, account, stream, cluster, protocol: ev.protocol });
            }
            if to_viewer {
                let viewer = p.strings.intern(&ev.viewer_id);
                cache.viewer_row = p.viewer.slot(ViewerKey { window, tracking, cvd, viewer, account, stream, cluster });
            }
        }
        if to_tracking {
            p.tracking.rows[cache.tracking_row as usize].1.add(&ev);
        }
        if to_viewer {
            p.viewer.rows[cache.viewer_row as usize].1.add(&ev);
        }
        Outcome::Counted { late, beyond_horizon: seen == Seen::NewBeyondHorizon }
    }

    fn dead_letter(&mut self, offset: i64, kind: &'static str, reason: String, payload: &[u8], now_ms: i64) -> Outcome {
        if offset >= self.thresholds.dead {
            self.pending.dead.push(DeadLetter {
                received_at: (now_ms / 1000).clamp(0, u32::MAX as i64) as u32,
                offset,
                reason,
                payload: payload.to_vec(),
            });
        }
        Outcome::DeadLettered(kind)
    }

    /// Encode the pending rows into `out` (tagged with the current position)
    /// and start a fresh accumulation.
    pub fn cut(&mut self, topic: &str, now_secs: u32, out: &mut tables::BatchRows) {
        let p = std::mem::take(&mut self.pending);
        // row caches point into the accumulation just taken
        self.generation = self.generation.wrapping_add(1).max(1);
        let part = self.partition as u32;
        let pos = self.position as u64;
        let s = &p.strings;
        let mut any = [false; 3];
        for (k, v) in &p.tracking.rows {
            tables::tracking_row(
                &mut out.tracking,
                k.window,
                [s.get(k.tracking), s.get(k.account), s.get(k.stream), s.get(k.cluster), k.protocol.as_str()],
                v,
                (topic, part, pos),
                now_secs,
            );
            any[0] = true;
        }
        for (k, v) in &p.viewer.rows {
            tables::viewer_row(
                &mut out.viewer,
                k.window,
                [s.get(k.tracking), s.get(k.cvd), s.get(k.viewer), s.get(k.account), s.get(k.stream), s.get(k.cluster)],
                v,
                (topic, part, pos),
                now_secs,
            );
            any[1] = true;
        }
        for d in &p.dead {
            let source = format!("kafka:{topic}/{}@{}", self.partition, d.offset);
            tables::dead_letter_row(&mut out.dead, d, &source, (topic, part, pos));
            any[2] = true;
        }
        if any[0] {
            out.tracking_tags.push((self.partition, self.position));
        }
        if any[1] {
            out.viewer_tags.push((self.partition, self.position));
        }
        if any[2] {
            out.dead_tags.push((self.partition, self.position));
        }
    }

    /// Encode the dedup state of viewers changed since the last checkpoint and
    /// this partition's checkpoint row.
    pub fn checkpoint(&mut self, topic: &str, member: &str, now_secs: u32, out: &mut tables::BatchRows) {
        for (viewer, v) in self.dedup.dirty() {
            tables::dedup_row(&mut out.dedup, (topic, self.partition as u32, self.position as u64), viewer, v, now_secs);
        }
        self.dedup.mark_clean();
        tables::checkpoint_row(
            &mut out.checkpoints,
            (topic, self.partition as u32, self.position as u64),
            self.watermark_ms,
            member,
            now_secs,
        );
        out.positions.push((self.partition, self.position, self.watermark_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn limits() -> Limits {
        Limits {
            window_secs: 60,
            dedup_horizon_ms: 86_400_000,
            max_lateness_ms: 35 * 86_400_000,
            max_future_ms: 3_600_000,
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
        PartitionState::new(0, 0, i64::MIN, Thresholds::default(), Dedup::new(86_400_000))
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
        assert!(matches!(st.process(0, &ev("v1", 0, t0, 100), &codec, &limits(), NOW), Outcome::Counted { .. }));
        assert_eq!(st.process(1, &ev("v1", 0, t0, 100), &codec, &limits(), NOW), Outcome::Duplicate);
        assert!(matches!(st.process(2, &ev("v1", 1, t0 + 10_000, 50), &codec, &limits(), NOW), Outcome::Counted { .. }));
        assert_eq!(st.process(3, b"garbage!!!!!", &codec, &limits(), NOW), Outcome::DeadLettered("bad_header"));
        assert_eq!(st.process(4, &ev("v2", 0, t0, -5), &codec, &limits(), NOW), Outcome::DeadLettered("invalid"));
        assert_eq!(
            st.process(5, &ev("v3", 0, t0 - 36 * 86_400_000, 5), &codec, &limits(), NOW),
            Outcome::DeadLettered("too_late")
        );
        assert_eq!(st.process(6, &ev("v3", 0, NOW + 7_200_000, 5), &codec, &limits(), NOW), Outcome::DeadLettered("in_future"));
        assert_eq!(st.process(6, &ev("v9", 0, t0, 5), &codec, &limits(), NOW), Outcome::Stale);
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
        st.cut("t", 0, &mut out);
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
                let counted = matches!(st.process(i as i64, &codec.encode_to_vec(&e), &codec, &limits(), NOW), Outcome::Counted { .. });
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
        st.process(0, &ev("v1", 5, t0 + 600_000, 1), &codec, &limits(), NOW);
        assert_eq!(
            st.process(1, &ev("v1", 0, t0, 7), &codec, &limits(), NOW),
            Outcome::Counted { late: true, beyond_horizon: false }
        );
        assert_eq!(total(&st), (8, 8));
    }

    #[test]
    fn thresholds_skip_tables_that_already_hold_an_offset() {
        let codec = Codec::new();
        let mut st = state();
        st.thresholds = Thresholds { viewer: 2, tracking: 1, dead: 0 };
        let t0 = 1_764_000_000_000;
        for (o, b) in [(0, 1), (1, 10), (2, 100)] {
            st.process(o, &ev("v1", o, t0, b), &codec, &limits(), NOW);
        }
        assert_eq!(total(&st), (110, 100));
        // the dedup state saw all three
        assert_eq!(st.process(3, &ev("v1", 0, t0, 1), &codec, &limits(), NOW), Outcome::Duplicate);
    }
}
