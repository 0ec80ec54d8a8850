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

/// Aggregates accumulated since the last flush cut.
#[derive(Debug, Default)]
struct Pending {
    strings: Interner,
    tracking: FxHashMap<TrackingKey, Sums>,
    viewer: FxHashMap<ViewerKey, Sums>,
    dead: Vec<DeadLetter>,
}

impl Pending {
    fn rows(&self) -> usize {
        self.tracking.len() + self.viewer.len() + self.dead.len()
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
        }
    }

    /// Rows waiting for the next flush cut.
    pub fn pending_rows(&self) -> usize {
        self.pending.rows()
    }

    /// Distinct windows with pending rows (the "open windows" metric).
    pub fn open_windows(&self) -> usize {
        let mut w: Vec<u32> = self.pending.tracking.keys().map(|k| k.window).collect();
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
        let seen = self.dedup.check_and_insert(&ev.viewer_id, ev.seq, self.watermark_ms);
        if seen == Seen::Duplicate {
            return Outcome::Duplicate;
        }
        let window = (window_ms / 1000) as u32;
        let p = &mut self.pending;
        let (to_tracking, to_viewer) = (offset >= self.thresholds.tracking, offset >= self.thresholds.viewer);
        if to_tracking || to_viewer {
            // intern the shared dimensions once for both tables
            let tracking = p.strings.intern(ev.tracking_id_or_empty());
            let account = p.strings.intern(&ev.account_id);
            let stream = p.strings.intern(&ev.stream_name);
            let cluster = p.strings.intern(&ev.cluster);
            if to_tracking {
                let key = TrackingKey { window, tracking, account, stream, cluster, protocol: ev.protocol };
                p.tracking.entry(key).or_default().add(&ev);
            }
            if to_viewer {
                let key = ViewerKey {
                    window,
                    tracking,
                    cvd: p.strings.intern(ev.custom_viewer_data_or_empty()),
                    viewer: p.strings.intern(&ev.viewer_id),
                    account,
                    stream,
                    cluster,
                };
                p.viewer.entry(key).or_default().add(&ev);
            }
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
        let part = self.partition as u32;
        let pos = self.position as u64;
        let s = &p.strings;
        let mut any = [false; 3];
        for (k, v) in &p.tracking {
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
        for (k, v) in &p.viewer {
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
        let t: u64 = st.pending.tracking.values().map(|s| s.bytes_out).sum();
        let v: u64 = st.pending.viewer.values().map(|s| s.bytes_out).sum();
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
