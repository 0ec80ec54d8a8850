//! Duplicate detection by `(viewer_id, seq)`.
//!
//! Per viewer the set of counted `seq` is kept as sorted, disjoint, inclusive
//! ranges: a media server numbers reports 0, 1, 2, ... so a well-behaved
//! connection needs one range however long it lives, and memory grows with
//! active viewers, not with events.
//!
//! **Horizon.** A viewer's state is forgotten once the partition's watermark
//! (largest `interval_start` seen on the partition) has moved more than
//! `horizon` (default 24 h) past the watermark at which the viewer was last
//! counted: a viewer unheard of for 24 h of event time. Forgetting is decided
//! lazily, at lookup, from event time only, so decisions are a pure function
//! of the partition's message sequence and identical on replay after a crash.
//! An event of a forgotten viewer is counted as new: a duplicate re-sent more
//! than `horizon` after the viewer's previous report was counted would be
//! counted twice. That is the documented limit; such events are counted in
//! the metric `aggregator_dedup_horizon_exceeded_total`. A late burst (a
//! media server that re-sends two days of reports at once) is still deduped,
//! since freshness follows arrival on the partition, not the event's own time.

use rustc_hash::FxHashMap;

/// Counted `seq` numbers of one viewer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SeqSet {
    /// Sorted, disjoint, non-adjacent inclusive ranges.
    ranges: Vec<(i64, i64)>,
}

impl SeqSet {
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

    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Flat `[start0, end0, start1, end1, ...]`, as stored in ClickHouse.
    pub fn to_flat(&self) -> Vec<i64> {
        self.ranges.iter().flat_map(|&(s, e)| [s, e]).collect()
    }

    /// Rebuild from [`SeqSet::to_flat`] output; `None` if malformed.
    pub fn from_flat(flat: &[i64]) -> Option<SeqSet> {
        if flat.len() % 2 != 0 {
            return None;
        }
        let ranges: Vec<(i64, i64)> = flat.chunks(2).map(|c| (c[0], c[1])).collect();
        let ok = ranges.iter().all(|&(s, e)| s <= e)
            && ranges.windows(2).all(|w| w[0].1.checked_add(1).is_some_and(|n| n < w[1].0));
        ok.then_some(SeqSet { ranges })
    }
}

/// State of one viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerSeqs {
    pub seqs: SeqSet,
    /// Partition watermark when the viewer was last counted.
    pub last_seen_ms: i64,
    /// Changed since the last checkpoint.
    pub dirty: bool,
}

/// What [`Dedup::check_and_insert`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    New,
    /// New, but the viewer's earlier state was past the horizon and forgotten.
    NewBeyondHorizon,
    Duplicate,
}

/// Dedup state of one Kafka partition (a viewer's events all land on one
/// partition, since the Kafka key is `viewer_id`).
#[derive(Debug, Default)]
pub struct Dedup {
    viewers: FxHashMap<Box<str>, ViewerSeqs>,
    horizon_ms: i64,
}

impl Dedup {
    pub fn new(horizon_ms: i64) -> Self {
        Dedup { viewers: FxHashMap::default(), horizon_ms }
    }

    /// Decide whether `(viewer, seq)` is new, and record it. `watermark_ms`
    /// is the partition watermark including this event.
    pub fn check_and_insert(&mut self, viewer: &str, seq: i64, watermark_ms: i64) -> Seen {
        let cutoff = watermark_ms.saturating_sub(self.horizon_ms);
        if let Some(v) = self.viewers.get_mut(viewer) {
            let mut result = Seen::New;
            if v.last_seen_ms < cutoff {
                // forgotten: start afresh
                v.seqs = SeqSet::default();
                result = Seen::NewBeyondHorizon;
            }
            if !v.seqs.insert(seq) {
                return Seen::Duplicate;
            }
            v.last_seen_ms = watermark_ms;
            v.dirty = true;
            return result;
        }
        let mut seqs = SeqSet::default();
        seqs.insert(seq);
        self.viewers.insert(viewer.into(), ViewerSeqs { seqs, last_seen_ms: watermark_ms, dirty: true });
        Seen::New
    }

    /// Put back a viewer's state loaded from a checkpoint.
    pub fn restore(&mut self, viewer: &str, seqs: SeqSet, last_seen_ms: i64) {
        self.viewers.insert(viewer.into(), ViewerSeqs { seqs, last_seen_ms, dirty: false });
    }

    /// Drop viewers past the horizon (memory only: lookups already treat them as forgotten).
    pub fn evict(&mut self, watermark_ms: i64) -> usize {
        let cutoff = watermark_ms.saturating_sub(self.horizon_ms);
        let before = self.viewers.len();
        self.viewers.retain(|_, v| v.last_seen_ms >= cutoff || v.dirty);
        before - self.viewers.len()
    }

    /// Viewers changed since the last [`Dedup::mark_clean`].
    pub fn dirty(&self) -> impl Iterator<Item = (&str, &ViewerSeqs)> {
        self.viewers.iter().filter(|(_, v)| v.dirty).map(|(k, v)| (&**k, v))
    }

    pub fn mark_clean(&mut self) {
        for v in self.viewers.values_mut() {
            v.dirty = false;
        }
    }

    pub fn len(&self) -> usize {
        self.viewers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.viewers.is_empty()
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

    #[test]
    fn horizon_is_decided_by_event_time() {
        let h = 24 * 3600 * 1000;
        let mut d = Dedup::new(h);
        assert_eq!(d.check_and_insert("v", 0, 1_000), Seen::New);
        assert_eq!(d.check_and_insert("v", 0, 1_000 + h), Seen::Duplicate, "exactly at the horizon still known");
        assert_eq!(d.check_and_insert("v", 1, 1_000 + h), Seen::New, "and refreshed");
        assert_eq!(d.check_and_insert("v", 0, 1_001 + 2 * h), Seen::NewBeyondHorizon);
        assert_eq!(d.check_and_insert("v", 0, 1_001 + 2 * h), Seen::Duplicate, "a fresh state dedups again");
        assert_eq!(d.check_and_insert("v", 1, 1_001 + 2 * h), Seen::New, "the forgotten seq 1 counts again");
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
