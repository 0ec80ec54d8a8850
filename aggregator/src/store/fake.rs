//! An in-memory [`Store`] with fault injection, for unit tests of the flush
//! protocol. It decodes the rows it is given and applies the same fencing
//! rule as the ClickHouse views (`warehouse/migrations/0007_contested_claims.sql`):
//! a row of epoch `e` at flush position `p` is visible iff `p <= fence(e)`,
//! the smallest start of any later claim of its partition, or 0 when more
//! than one claim holds `e`.

use super::{new_claim_id, Latest, LoadedPartition, Store};
use crate::dedup::{Dedup, Horizon, SeqSet};
use crate::error::AggError;
use crate::rowbinary::RowBinary;
use crate::tables::Table;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// A decoded usage row: `(window, tracking_id, viewer_id or "")` and its sums.
pub type UsageKey = (u32, String, String);

#[derive(Debug, Clone)]
struct Provenance {
    partition: u32,
    epoch: u64,
    position: u64,
}

#[derive(Debug, Clone)]
struct Claim {
    partition: u32,
    epoch: u64,
    start: u64,
    id: u64,
}

#[derive(Debug, Default)]
struct Inner {
    claims: Vec<Claim>,
    tracking: Vec<(Provenance, UsageKey, [u64; 3])>,
    viewer: Vec<(Provenance, UsageKey, [u64; 3])>,
    dead: Vec<(Provenance, String)>,
    /// (provenance, viewer, flat ranges, last seen)
    dedup: Vec<(Provenance, String, Vec<i64>, i64)>,
    /// (provenance, watermark, arrival)
    checkpoints: Vec<(Provenance, i64, i64)>,
    inserts: usize,
    faults: Vec<Fault>,
    /// The partitions' claims as the next claim reads them, when a test
    /// froze them ([`FakeStore::freeze_claim_reads`]).
    frozen: Option<Vec<Claim>>,
}

/// A fault injected into the `n`th insert (counting from 1 over the store's life).
#[derive(Debug, Clone, Copy)]
pub struct Fault {
    /// The insert that fails: 1 for the store's first, whatever the table.
    pub insert_no: usize,
    /// The insert fails to the caller but its rows land anyway (a timeout
    /// after the server took the whole body: the "orphaned insert").
    pub lands: bool,
}

/// The fake store; clones share their data.
#[derive(Clone, Default)]
pub struct FakeStore {
    inner: Arc<Mutex<Inner>>,
    topic: String,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let (h, t) = self.b.split_at(n);
        self.b = t;
        h
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take(8).try_into().unwrap())
    }
    fn i64(&mut self) -> i64 {
        self.u64() as i64
    }
    fn uvarint(&mut self) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = self.take(1)[0];
            v |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    fn string(&mut self) -> String {
        let n = self.uvarint() as usize;
        String::from_utf8(self.take(n).to_vec()).unwrap()
    }
    fn src(&mut self) -> Provenance {
        let _topic = self.string();
        Provenance { partition: self.u32(), epoch: self.u64(), position: self.u64() }
    }
}

impl FakeStore {
    /// An empty store of `topic`'s partitions: no claims, no rows, no faults.
    pub fn new(topic: &str) -> Self {
        FakeStore { inner: Arc::default(), topic: topic.to_string() }
    }

    /// Make the given inserts fail.
    pub fn inject(&self, faults: &[Fault]) {
        self.inner.lock().unwrap().faults.extend_from_slice(faults);
    }

    /// Until [`FakeStore::thaw_claim_reads`], claims read the claims as they
    /// are now (not what later claims wrote): claimers that all read before
    /// any of them wrote, as members that claim at once.
    pub fn freeze_claim_reads(&self) {
        let mut g = self.inner.lock().unwrap();
        g.frozen = Some(g.claims.clone());
    }

    /// End [`FakeStore::freeze_claim_reads`]: claims read every claim written.
    pub fn thaw_claim_reads(&self) {
        self.inner.lock().unwrap().frozen = None;
    }

    /// Inserts made so far, failed ones included (the count [`Fault::insert_no`] refers to).
    pub fn inserts(&self) -> usize {
        self.inner.lock().unwrap().inserts
    }

    fn fence(claims: &[Claim], partition: u32, epoch: u64) -> Option<u64> {
        // no claim of that epoch: invisible, like the views' inner join
        let mut ids = claims.iter().filter(|c| c.partition == partition && c.epoch == epoch).map(|c| c.id).peekable();
        let first = ids.next()?;
        if ids.any(|id| id != first) {
            return Some(0); // contested: nothing of it counts
        }
        Some(claims.iter().filter(|c| c.partition == partition && c.epoch > epoch).map(|c| c.start).min().unwrap_or(u64::MAX))
    }

    fn latest(claims: &[Claim], partitions: &[i32]) -> HashMap<i32, Latest> {
        let mut out = HashMap::new();
        for &p in partitions {
            let of_p = || claims.iter().filter(|c| c.partition == p as u32);
            if let Some(epoch) = of_p().map(|c| c.epoch).max() {
                let mut ids: Vec<u64> = of_p().filter(|c| c.epoch == epoch).map(|c| c.id).collect();
                ids.sort_unstable();
                ids.dedup();
                out.insert(p, Latest { epoch, contested: ids.len() > 1 });
            }
        }
        out
    }

    fn visible(claims: &[Claim], p: &Provenance) -> bool {
        Self::fence(claims, p.partition, p.epoch).is_some_and(|f| p.position <= f)
    }

    /// Visible tracking sums per `(window, tracking_id)`, as an analyst's `sum()` over the view.
    pub fn tracking_totals(&self) -> BTreeMap<UsageKey, [u64; 3]> {
        let g = self.inner.lock().unwrap();
        Self::totals(&g.claims, &g.tracking)
    }

    /// Visible viewer sums per `(window, tracking_id, viewer_id)`.
    pub fn viewer_totals(&self) -> BTreeMap<UsageKey, [u64; 3]> {
        let g = self.inner.lock().unwrap();
        Self::totals(&g.claims, &g.viewer)
    }

    /// Visible dead letters' reasons, sorted.
    pub fn dead_letters(&self) -> Vec<String> {
        let g = self.inner.lock().unwrap();
        let mut v: Vec<String> = g.dead.iter().filter(|(p, _)| Self::visible(&g.claims, p)).map(|(_, r)| r.clone()).collect();
        v.sort();
        v
    }

    /// Rows written, visible or not (to check that a fault left a partial batch behind).
    pub fn raw_tracking_rows(&self) -> usize {
        self.inner.lock().unwrap().tracking.len()
    }

    fn totals(claims: &[Claim], rows: &[(Provenance, UsageKey, [u64; 3])]) -> BTreeMap<UsageKey, [u64; 3]> {
        let mut out: BTreeMap<UsageKey, [u64; 3]> = BTreeMap::new();
        for (p, k, s) in rows {
            if Self::visible(claims, p) {
                let e = out.entry(k.clone()).or_default();
                for i in 0..3 {
                    e[i] = e[i].checked_add(s[i]).expect("sum overflow in the fake");
                }
            }
        }
        out
    }

    fn decode(&self, g: &mut Inner, table: Table, rows: &RowBinary) {
        let mut r = Reader { b: &rows.buf };
        for _ in 0..rows.rows {
            match table {
                Table::Tracking => {
                    let window = r.u32();
                    let tracking = r.string();
                    for _ in 0..4 {
                        r.string();
                    }
                    let s = [r.u64(), r.u64(), r.u64()];
                    let p = r.src();
                    g.tracking.push((p, (window, tracking, String::new()), s));
                }
                Table::Viewer => {
                    let window = r.u32();
                    let tracking = r.string();
                    r.string();
                    let viewer = r.string();
                    for _ in 0..3 {
                        r.string();
                    }
                    let s = [r.u64(), r.u64(), r.u64()];
                    let p = r.src();
                    g.viewer.push((p, (window, tracking, viewer), s));
                }
                Table::DeadLetters => {
                    r.u32();
                    r.string();
                    let reason = r.string();
                    r.string();
                    let p = r.src();
                    g.dead.push((p, reason));
                }
                Table::Dedup => {
                    let p = r.src();
                    let viewer = r.string();
                    let n = r.uvarint() as usize;
                    let ranges: Vec<i64> = (0..n).map(|_| r.i64()).collect();
                    let seen = r.i64();
                    r.u32();
                    g.dedup.push((p, viewer, ranges, seen));
                }
                Table::Checkpoints => {
                    let p = r.src();
                    let (wm, arr) = (r.i64(), r.i64());
                    r.string();
                    r.u32();
                    g.checkpoints.push((p, wm, arr));
                }
            }
        }
        assert!(r.b.is_empty(), "{table:?}: trailing bytes");
    }
}

impl Store for FakeStore {
    fn topic(&self) -> &str {
        &self.topic
    }

    async fn latest_epochs(&self, partitions: &[i32]) -> Result<HashMap<i32, Latest>, AggError> {
        let g = self.inner.lock().unwrap();
        Ok(Self::latest(&g.claims, partitions))
    }

    async fn claim(&self, partitions: &[i32], _member: &str, horizon: Horizon) -> Result<HashMap<i32, LoadedPartition>, AggError> {
        let mut g = self.inner.lock().unwrap();
        let mut out = HashMap::new();
        let read = g.frozen.clone().unwrap_or_else(|| g.claims.clone());
        for &p in partitions {
            let p32 = p as u32;
            let cp = g
                .checkpoints
                .iter()
                .filter(|(prov, _, _)| prov.partition == p32 && Self::visible(&read, prov))
                .max_by_key(|(prov, _, _)| prov.position)
                .cloned();
            let epoch = Self::latest(&read, &[p]).get(&p).map_or(1, |l| l.epoch + 1);
            let position = cp.as_ref().map(|(prov, _, _)| prov.position);
            let (watermark_ms, arrival_ms) = cp.as_ref().map_or((i64::MIN, i64::MIN), |c| (c.1, c.2));
            let mut dedup = Dedup::new(horizon);
            let mut restored = 0;
            if let Some(pos) = position {
                let mut latest: BTreeMap<&str, (u64, &Vec<i64>, i64)> = BTreeMap::new();
                for (prov, viewer, ranges, seen) in &g.dedup {
                    if prov.partition == p32 && prov.position <= pos && Self::visible(&read, prov) {
                        let e = latest.entry(viewer).or_insert((prov.position, ranges, *seen));
                        if prov.position >= e.0 {
                            *e = (prov.position, ranges, *seen);
                        }
                    }
                }
                for (viewer, (at, ranges, seen)) in latest {
                    if seen >= arrival_ms.saturating_sub(horizon.ms) || at as i64 >= (pos as i64).saturating_sub(horizon.offsets) {
                        dedup.restore(viewer, SeqSet::from_flat(ranges).expect("valid ranges"), seen, at as i64);
                        restored += 1;
                    }
                }
            }
            g.claims.push(Claim { partition: p32, epoch, start: position.unwrap_or(0), id: new_claim_id() });
            out.insert(
                p,
                LoadedPartition {
                    epoch,
                    position: position.map(|x| x as i64),
                    watermark_ms,
                    arrival_ms,
                    dedup,
                    viewers_restored: restored,
                },
            );
        }
        Ok(out)
    }

    async fn insert(&self, table: Table, rows: &RowBinary, _query_id: &str) -> Result<(), AggError> {
        let mut g = self.inner.lock().unwrap();
        g.inserts += 1;
        let n = g.inserts;
        let fault = g.faults.iter().find(|f| f.insert_no == n).copied();
        if fault.is_none_or(|f| f.lands) {
            self.decode(&mut g, table, rows);
        }
        match fault {
            Some(f) => Err(AggError::Injected(format!("insert #{n} into {} failed (rows landed: {})", table.name(), f.lands))),
            None => Ok(()),
        }
    }
}
