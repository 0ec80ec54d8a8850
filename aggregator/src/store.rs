//! What the flush protocol needs from storage, as a trait: the ClickHouse
//! implementation is `sink::Sink`; tests use a fault-injecting
//! in-memory fake (`store::fake`) that applies the same fencing rule.

use crate::dedup::{Dedup, Horizon};
use crate::error::AggError;
use crate::rowbinary::RowBinary;
use crate::tables::Table;
use std::collections::HashMap;
use std::future::Future;

/// A partition claimed by this member: where to resume and with what state.
#[derive(Debug)]
pub struct LoadedPartition {
    /// This member's new claim epoch: every row it writes carries it.
    pub epoch: u64,
    /// Position of the last valid checkpoint (`None`: none yet; the claim
    /// then starts at 0 and `start_from` decides where reading begins).
    pub position: Option<i64>,
    /// The checkpoint's partition watermark, epoch ms (`i64::MIN` without a checkpoint).
    pub watermark_ms: i64,
    /// The checkpoint's arrival clock, epoch ms (`i64::MIN` without a checkpoint).
    pub arrival_ms: i64,
    /// The dedup state as of the checkpoint: the viewers within the horizon of it.
    pub dedup: Dedup,
    /// How many viewers were restored into `dedup`.
    pub viewers_restored: usize,
}

/// The latest claim of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latest {
    pub(crate) epoch: u64,
    /// More than one claim (distinct `claim_id`) holds `epoch`: members
    /// claimed at once. None of the epoch's rows count (the fence rule, see
    /// `lib.rs`); each claimer must claim again.
    pub contested: bool,
}

/// A fresh claim id: random and never 0 (0 marks the claims written before
/// claims had ids, which keep their former meaning).
pub fn new_claim_id() -> u64 {
    rand::random::<u64>() | 1
}

/// Storage of the aggregator's rows, claims and state.
pub trait Store: Clone + Send + Sync + 'static {
    /// The Kafka topic whose partitions this store holds.
    fn topic(&self) -> &str;

    /// Claim `partitions` for `member`: read each partition's last valid
    /// checkpoint `R` and latest epoch `e`, record the claim
    /// `(partition, e + 1, R)` (which supersedes every row of an earlier
    /// epoch past `R`), and load the dedup state as of `R` (viewers within
    /// `horizon` of it).
    fn claim(
        &self,
        partitions: &[i32],
        member: &str,
        horizon: Horizon,
    ) -> impl Future<Output = Result<HashMap<i32, LoadedPartition>, AggError>> + Send;

    /// The latest claim epoch of each of `partitions` (absent: none), and
    /// whether more than one claim holds it.
    fn latest_epochs(&self, partitions: &[i32]) -> impl Future<Output = Result<HashMap<i32, Latest>, AggError>> + Send;

    /// Write one table's rows of a batch in a single insert.
    fn insert(&self, table: Table, rows: &RowBinary, query_id: &str) -> impl Future<Output = Result<(), AggError>> + Send;
}

/// The fake, for this crate's unit tests and, with the `testing` feature,
/// for other crates' (never in a release build: the feature is off by default).
#[cfg(any(test, feature = "testing"))]
pub mod fake;
