//! Duplicate detection by `(viewer_id, seq)`.
//!
//! Per viewer the set of counted `seq` is kept as sorted, disjoint, inclusive
//! ranges: a media server numbers reports 0, 1, 2, ... so a well-behaved
//! connection needs one range however long it lives, and memory grows with
//! active viewers, not with events.
//!
//! **Horizon, in arrival.** A viewer's state is kept until the partition's
//! *arrival clock* (the largest Kafka record timestamp seen on the
//! partition) has moved more than `horizon.ms` (default 24 h) past the
//! arrival clock at the viewer's last counted event **and** more than
//! `horizon.offsets` records (default 2,000,000) have arrived on the
//! partition since: a viewer unheard of for 24 h of arrival and two million
//! records. The record count makes the horizon robust to timestamps that do
//! not follow arrival (a producer stamping records with event time, a clock
//! far ahead): a viewer seen within the last two million records of its
//! partition is never forgotten, whatever the timestamps say. Event time plays no part: a backlog spanning days of
//! event time, a backfill, or a media server whose clock runs a day ahead
//! arrive within minutes and forget nobody, and an active viewer (one whose
//! reports keep arriving) is never forgotten. Payment meters keep idempotency
//! keys the same way, by the time they were received.
//!
//! Forgetting is decided lazily, at lookup, from the arrival clock, which is
//! part of the log (record timestamps are stored with the records), so the
//! decisions are a pure function of the partition's message sequence and
//! identical on replay. An event of a forgotten viewer is counted as new: a
//! duplicate re-sent more than `horizon` after the viewer's last report
//! arrived would be counted twice. That is the documented limit
//! (`docs/clickhouse.md`); such events are counted in the metric
//! `aggregator_dedup_horizon_exceeded_total` while the forgotten entry is
//! still in memory (until the next checkpoint evicts it).
//!
//! Record timestamps are the producers' (`CreateTime`: the gateway's and
//! `UsageProducer`'s clocks) unless the topic uses `LogAppendTime`, which the
//! production compose file sets so that the broker's clock decides.

use crate::rows::RowCache;
use hashbrown::hash_map::EntryRef;
use rustc_hash::FxBuildHasher;
use smallvec::SmallVec;

type ViewerMap = hashbrown::HashMap<ViewerKey, ViewerSeqs, FxBuildHasher>;

/// A viewer id as a map key: ids up to [`ViewerKey::INLINE`] bytes (UUIDs,
/// the simulator's ids) live inside the map's slot, so a lookup compares
/// bytes already in cache instead of following a pointer to the heap.
#[derive(Clone)]
enum ViewerKey {
    Inline { len: u8, bytes: [u8; ViewerKey::INLINE] },
    Heap(Box<str>),
}

impl ViewerKey {
    const INLINE: usize = 38; // with `len` and the tag: 40 bytes

    fn as_str(&self) -> &str {
        match self {
            // SAFETY: built from a `&str` in `From<&str>`; `len` bytes are that str's
            ViewerKey::Inline { len, bytes } => unsafe { std::str::from_utf8_unchecked(&bytes[..*len as usize]) },
            ViewerKey::Heap(s) => s,
        }
    }
}

impl From<&str> for ViewerKey {
    fn from(s: &str) -> Self {
        if s.len() <= ViewerKey::INLINE {
            let mut bytes = [0u8; ViewerKey::INLINE];
            bytes[..s.len()].copy_from_slice(s.as_bytes());
            ViewerKey::Inline { len: s.len() as u8, bytes }
        } else {
            ViewerKey::Heap(s.into())
        }
    }
}

impl std::borrow::Borrow<str> for ViewerKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// Hash and Eq agree with `str`'s, as `Borrow<str>` requires.
impl std::hash::Hash for ViewerKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_str().hash(h)
    }
}

impl PartialEq for ViewerKey {
    fn eq(&self, o: &Self) -> bool {
        self.as_str() == o.as_str()
    }
}

impl Eq for ViewerKey {}

impl std::fmt::Debug for ViewerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// Counted `seq` numbers of one viewer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeqSet {
    /// Sorted, disjoint, non-adjacent inclusive ranges; the usual single
    /// range is stored inline (no allocation, no pointer to follow).
    ranges: SmallVec<[(i64, i64); 1]>,
}

impl SeqSet {
    /// Whether `seq` was counted.
    pub fn contains(&self, seq: i64) -> bool {
        // ranges are few (usually one): search from the end, where new seqs land
        match self.ranges.binary_search_by(|&(s, _)| s.cmp(&seq)) {
            Ok(_) => true,
            Err(0) => false,
            Err(i) => self.ranges[i - 1].1 >= seq,
        }
    }

    /// Add `seq`; returns false when it was already present.
    pub fn insert(&mut self, seq: i64) -> bool {
        let i = match self.ranges.binary_search_by(|&(s, _)| s.cmp(&seq)) {
            Ok(_) => return false,
            Err(i) => i,
        };
        if i > 0 && self.ranges[i - 1].1 >= seq {
            return false;
        }
        let joins_prev = i > 0 && self.ranges[i - 1].1.checked_add(1) == Some(seq);
        let joins_next = i < self.ranges.len() && seq.checked_add(1) == Some(self.ranges[i].0);
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
            }
            (true, false) => self.ranges[i - 1].1 = seq,
            (false, true) => self.ranges[i].0 = seq,
            (false, false) => self.ranges.insert(i, (seq, seq)),
        }
        true
    }

    /// How many disjoint ranges hold the counted `seq` numbers (1 for a
    /// connection that reported without gaps).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Flat `[start0, end0, start1, end1, ...]`, as stored in ClickHouse.
    pub fn to_flat(&self) -> Vec<i64> {
        self.ranges.iter().flat_map(|&(s, e)| [s, e]).collect()
    }

    /// Rebuild from [`SeqSet::to_flat`] output; `None` if malformed.
    pub fn from_flat(flat: &[i64]) -> Option<SeqSet> {
        if !flat.len().is_multiple_of(2) {
            return None;
        }
        let ranges: SmallVec<[(i64, i64); 1]> = flat.chunks(2).map(|c| (c[0], c[1])).collect();
        let ok = ranges.iter().all(|&(s, e)| s <= e) && ranges.windows(2).all(|w| w[0].1.checked_add(1).is_some_and(|n| n < w[1].0));
        ok.then_some(SeqSet { ranges })
    }
}

/// Where a partition stands when an event is looked up: its arrival clock
/// (largest Kafka timestamp so far, this record's included) and the record's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    /// The partition's arrival clock, epoch ms: the largest Kafka record timestamp so far.
    pub arrival_ms: i64,
    /// Kafka offset of the record being looked up.
    pub offset: i64,
}

/// How long a viewer is remembered after its last counted event: until
/// *both* `ms` of arrival and `offsets` records of its partition have
/// passed. The record count guards against timestamps that do not follow
/// arrival (a producer stamping records with event time, or a clock far
/// ahead): a viewer seen within the last `offsets` records is never
/// forgotten, whatever the timestamps say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// Milliseconds of arrival clock after which a viewer may be forgotten
    /// (`dedup_horizon_secs` × 1000; default 24 h).
    pub ms: i64,
    /// Records of the partition after which a viewer may be forgotten
    /// (`dedup_horizon_records`; default 2,000,000).
    pub offsets: i64,
}

impl Horizon {
    /// Whether a viewer last counted at (`seen_ms`, `seen_offset`) is forgotten at `at`.
    #[inline]
    fn passed(&self, seen_ms: i64, seen_offset: i64, at: At) -> bool {
        seen_ms < at.arrival_ms.saturating_sub(self.ms) && seen_offset < at.offset.saturating_sub(self.offsets)
    }
}

/// State of one viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerSeqs {
    pub(crate) seqs: SeqSet,
    /// Partition arrival clock (epoch ms) when the viewer was last counted.
    pub last_seen_ms: i64,
    /// Offset of the viewer's last counted record (restored from a
    /// checkpoint: the checkpoint's position, an upper bound).
    pub last_offset: i64,
    /// Changed since the last checkpoint.
    pub dirty: bool,
    /// Where this viewer's last event went in the pending aggregates (the hot
    /// path's shortcut around interning and row lookups; not persisted).
    pub(crate) cache: RowCache,
}

/// What [`Dedup::check_and_insert`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// `(viewer_id, seq)` not counted before: count the event.
    New,
    /// New, but the viewer's earlier state was past the horizon and forgotten.
    NewBeyondHorizon,
    /// This `(viewer_id, seq)` was already counted: drop the event.
    Duplicate,
}

/// Dedup state of one Kafka partition (a viewer's events all land on one
/// partition, since the Kafka key is `viewer_id`).
#[derive(Debug)]
pub struct Dedup {
    viewers: ViewerMap,
    horizon: Horizon,
}

impl Dedup {
    /// An empty state that forgets viewers past `horizon`.
    pub fn new(horizon: Horizon) -> Self {
        Dedup { viewers: ViewerMap::default(), horizon }
    }

    /// Decide whether `(viewer, seq)` is new, and record it.
    pub fn check_and_insert(&mut self, viewer: &str, seq: i64, at: At) -> Seen {
        self.check_and_insert_cached(viewer, seq, at).0
    }

    /// [`Dedup::check_and_insert`], also handing out the viewer's row cache
    /// when the event is new (one hash lookup for both).
    pub(crate) fn check_and_insert_cached(&mut self, viewer: &str, seq: i64, at: At) -> (Seen, Option<&mut RowCache>) {
        let horizon = self.horizon;
        match self.viewers.entry_ref(viewer) {
            EntryRef::Occupied(o) => {
                let v = o.into_mut();
                let mut result = Seen::New;
                if horizon.passed(v.last_seen_ms, v.last_offset, at) {
                    // forgotten: start afresh
                    v.seqs = SeqSet::default();
                    result = Seen::NewBeyondHorizon;
                }
                if !v.seqs.insert(seq) {
                    return (Seen::Duplicate, None);
                }
                v.last_seen_ms = v.last_seen_ms.max(at.arrival_ms);
                v.last_offset = v.last_offset.max(at.offset);
                v.dirty = true;
                (result, Some(&mut v.cache))
            }
            EntryRef::Vacant(e) => {
                let mut seqs = SeqSet::default();
                seqs.insert(seq);
                let v = e.insert(ViewerSeqs {
                    seqs,
                    last_seen_ms: at.arrival_ms,
                    last_offset: at.offset,
                    dirty: true,
                    cache: RowCache::default(),
                });
                (Seen::New, Some(&mut v.cache))
            }
        }
    }

    /// Put back a viewer's state loaded from a checkpoint.
    pub fn restore(&mut self, viewer: &str, seqs: SeqSet, last_seen_ms: i64, last_offset: i64) {
        self.viewers.insert(viewer.into(), ViewerSeqs { seqs, last_seen_ms, last_offset, dirty: false, cache: RowCache::default() });
    }

    /// Drop viewers past the horizon at `at` (memory only: lookups already
    /// treat them as forgotten).
    pub fn evict(&mut self, at: At) -> usize {
        let (horizon, before) = (self.horizon, self.viewers.len());
        self.viewers.retain(|_, v| v.dirty || !horizon.passed(v.last_seen_ms, v.last_offset, at));
        before - self.viewers.len()
    }

    /// Viewers changed since the last [`Dedup::mark_clean`].
    pub fn dirty(&self) -> impl Iterator<Item = (&str, &ViewerSeqs)> {
        self.viewers.iter().filter(|(_, v)| v.dirty).map(|(k, v)| (k.as_str(), v))
    }

    /// Mark every viewer unchanged, once a checkpoint has encoded their dedup
    /// rows: [`Dedup::dirty`] then lists none.
    pub fn mark_clean(&mut self) {
        for v in self.viewers.values_mut() {
            v.dirty = false;
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.viewers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn in_order_sequence_is_one_range() {
        let mut s = SeqSet::default();
        for i in 0..1000 {
            assert!(s.insert(i));
        }
        assert_eq!(s.range_count(), 1);
        assert!(!s.insert(500));
        assert_eq!(s.to_flat(), vec![0, 999]);
    }

    #[test]
    fn gaps_fill_and_merge() {
        let mut s = SeqSet::default();
        for i in [5, 1, 3, 2, 4, 0] {
            assert!(s.insert(i));
        }
        assert_eq!(s.to_flat(), vec![0, 5]);
        assert!(s.insert(i64::MAX));
        assert!(s.insert(i64::MAX - 1));
        assert_eq!(s.to_flat(), vec![0, 5, i64::MAX - 1, i64::MAX]);
        assert_eq!(SeqSet::from_flat(&s.to_flat()), Some(s));
        assert_eq!(SeqSet::from_flat(&[3, 1]), None);
        assert_eq!(SeqSet::from_flat(&[1, 3, 4, 5]), None, "adjacent ranges must be merged");
    }

    /// The clock at arrival `ms` and offset `o`.
    fn at(ms: i64, o: i64) -> At {
        At { arrival_ms: ms, offset: o }
    }

    /// The clock at arrival `ms`, with offsets advancing as fast (so that
    /// the offset horizon of [`h_ms`] never holds a viewer back).
    fn at2(ms: i64) -> At {
        at(ms, ms)
    }

    /// A time-only horizon (the offset horizon passed at once).
    fn h_ms(ms: i64) -> Dedup {
        Dedup::new(Horizon { ms, offsets: 0 })
    }

    #[test]
    fn horizon_is_decided_by_the_arrival_clock() {
        let h = 24 * 3600 * 1000;
        let mut d = h_ms(h);
        assert_eq!(d.check_and_insert("v", 0, at2(1_000)), Seen::New);
        assert_eq!(d.check_and_insert("v", 0, at2(1_000 + h)), Seen::Duplicate, "exactly at the horizon still known");
        assert_eq!(d.check_and_insert("v", 1, at2(1_000 + h)), Seen::New, "and refreshed");
        assert_eq!(d.check_and_insert("v", 0, at2(1_001 + 2 * h)), Seen::NewBeyondHorizon);
        assert_eq!(d.check_and_insert("v", 0, at2(1_001 + 2 * h)), Seen::Duplicate, "a fresh state dedups again");
        assert_eq!(d.check_and_insert("v", 1, at2(1_001 + 2 * h)), Seen::New, "the forgotten seq 1 counts again");
    }

    /// Viewers interleaved over days of *event* time but arriving within
    /// minutes: nobody is forgotten, every re-sent report is a duplicate.
    /// (The partition's clock here is arrival; event time never reaches Dedup.)
    #[test]
    fn active_viewers_are_never_forgotten_whatever_their_event_times() {
        let h = 24 * 3600 * 1000;
        let mut d = h_ms(h);
        let arrival0 = 1_800_000_000_000;
        let mut n = 0;
        for seq in 0..50 {
            for v in 0..20 {
                assert_eq!(d.check_and_insert(&format!("v{v}"), seq, at2(arrival0 + n)), Seen::New);
                n += 10;
            }
        }
        for seq in 0..50 {
            for v in 0..20 {
                assert_eq!(d.check_and_insert(&format!("v{v}"), seq, at2(arrival0 + n)), Seen::Duplicate, "v{v} seq {seq}");
            }
        }
        assert_eq!(d.evict(at2(arrival0 + n)), 0);
        // a viewer silent for longer than the horizon of arrival is forgotten
        assert_eq!(d.check_and_insert("v0", 0, at2(arrival0 + n + h + 1)), Seen::NewBeyondHorizon);
    }

    /// Timestamps that do not follow arrival (records stamped with event
    /// time, spanning days, interleaved): within the offset horizon nobody
    /// is forgotten; beyond both horizons the viewer is.
    #[test]
    fn a_viewer_seen_within_the_offset_horizon_is_never_forgotten() {
        let day = 86_400_000;
        let mut d = Dedup::new(Horizon { ms: day, offsets: 1_000 });
        assert_eq!(d.check_and_insert("v", 0, at(0, 0)), Seen::New);
        // the clock jumps 27 days ahead, 10 records later: v is kept
        assert_eq!(d.check_and_insert("w", 0, at(27 * day, 10)), Seen::New);
        assert_eq!(d.check_and_insert("v", 0, at(27 * day, 20)), Seen::Duplicate);
        d.mark_clean();
        assert_eq!(d.evict(at(27 * day, 999)), 0, "v's arrival is 27 days old, but only 999 records");
        // 1,001 records later and a day of arrival: both horizons passed
        assert_eq!(d.check_and_insert("v", 0, at(29 * day, 1_021)), Seen::NewBeyondHorizon);
        d.mark_clean();
        assert_eq!(d.evict(at(31 * day, 5_000)), 2, "v and w both past both horizons");
    }

    #[test]
    fn short_and_long_viewer_ids_are_keys() {
        let mut d = h_ms(1_000);
        let long = "v".repeat(ViewerKey::INLINE + 1);
        let at_limit = "w".repeat(ViewerKey::INLINE);
        for id in [long.as_str(), at_limit.as_str(), "", "ü"] {
            assert_eq!(d.check_and_insert(id, 7, at2(0)), Seen::New, "{id}");
            assert_eq!(d.check_and_insert(id, 7, at2(0)), Seen::Duplicate, "{id}");
        }
        assert!(matches!(ViewerKey::from(long.as_str()), ViewerKey::Heap(_)));
        assert!(matches!(ViewerKey::from(at_limit.as_str()), ViewerKey::Inline { .. }));
        assert_eq!(std::mem::size_of::<ViewerKey>(), 40);
        let mut dirty: Vec<&str> = d.dirty().map(|(k, _)| k).collect();
        dirty.sort();
        assert_eq!(dirty, ["", &long, &at_limit, "ü"]);
    }

    proptest! {
        #[test]
        fn seqset_behaves_like_a_set(ops in proptest::collection::vec(0i64..200, 0..400)) {
            let mut s = SeqSet::default();
            let mut model = BTreeSet::new();
            for x in ops {
                prop_assert_eq!(s.insert(x), model.insert(x));
            }
            for x in -1..201 {
                prop_assert_eq!(s.contains(x), model.contains(&x));
            }
            prop_assert_eq!(SeqSet::from_flat(&s.to_flat()), Some(s));
        }
    }
}
