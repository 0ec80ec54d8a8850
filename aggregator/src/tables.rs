//! The tables the aggregator writes: names, column lists and row encoders,
//! each from one definition ([`Table::columns`]), which a test compares with
//! the migrated tables' columns and types.
//!
//! Every data row carries `(src_topic, src_partition, src_epoch, src_offset)`:
//! the claim it was written under and the partition position of its flush
//! (see the crate docs, "Exactly once").

use crate::rowbinary::RowBinary;
use crate::rows::{DeadLetter, Sums};
use base64::Engine;

/// A table written by a flush, in the order a flush writes them: the
/// checkpoint goes last, so a checkpoint implies every table before it is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// `usage_dead_letters_log`: poison and rejected records.
    DeadLetters,
    /// `usage_by_viewer_log`: partial sums per window and viewer.
    Viewer,
    /// `usage_by_tracking_log`: partial sums per window and tracking id.
    Tracking,
    /// `aggregator_dedup`: the counted `seq` ranges of viewers changed since the last checkpoint.
    Dedup,
    /// `aggregator_checkpoints`: one row per checkpointed partition, with its position and clocks.
    Checkpoints,
}

/// The provenance of a flush's rows: `(topic, partition, epoch, position)`.
#[derive(Debug, Clone, Copy)]
pub struct Src<'a> {
    pub(crate) topic: &'a str,
    pub(crate) partition: u32,
    pub(crate) epoch: u64,
    pub(crate) position: u64,
}

impl Table {
    /// Every table, in the order a flush writes them.
    pub const ORDER: [Table; 5] = [Table::DeadLetters, Table::Viewer, Table::Tracking, Table::Dedup, Table::Checkpoints];

    /// The table's layout (`warehouse::tables`): its physical name (the
    /// analyst views under the contract names read the data tables through
    /// the claim fences) and its columns in encoding order.
    pub fn layout(self) -> warehouse::tables::TableLayout {
        use warehouse::tables::*;
        match self {
            Table::DeadLetters => USAGE_DEAD_LETTERS_LOG,
            Table::Viewer => USAGE_BY_VIEWER_LOG,
            Table::Tracking => USAGE_BY_TRACKING_LOG,
            Table::Dedup => AGGREGATOR_DEDUP,
            Table::Checkpoints => AGGREGATOR_CHECKPOINTS,
        }
    }

    /// The physical table.
    pub fn name(self) -> &'static str {
        self.layout().name
    }

    /// Columns in encoding order, with their ClickHouse types.
    pub fn columns(self) -> &'static [(&'static str, &'static str)] {
        self.layout().columns
    }

    /// Columns after [`Table::columns`] that the server fills and the
    /// aggregator never writes (`inserted_at`, which the tails' time bound
    /// relies on: migration 10, `crate::seal`).
    pub fn server_columns(self) -> &'static [(&'static str, &'static str)] {
        self.layout().server_columns
    }

    /// Data tables are read through the claim fences; state tables are read
    /// by the aggregator alone, which applies the same fences.
    pub fn is_data(self) -> bool {
        matches!(self, Table::DeadLetters | Table::Viewer | Table::Tracking)
    }

    /// The `INSERT` statement for this table in database `db`.
    pub fn insert_sql(self, db: &str) -> String {
        let cols: Vec<&str> = self.columns().iter().map(|c| c.0).collect();
        format!("INSERT INTO {db}.{} ({}) FORMAT RowBinary", self.name(), cols.join(", "))
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Encoded rows of one flush batch, per table.
#[derive(Debug, Default)]
pub struct BatchRows {
    tables: [RowBinary; 5],
    /// `(partition, epoch, position, watermark, arrival)` checkpointed by this batch.
    pub positions: Vec<(i32, u64, i64, i64, i64)>,
    /// `(partition, epoch)` of every partition with rows in this batch.
    pub epochs: Vec<(i32, u64)>,
}

impl BatchRows {
    /// The encoded rows for table `t` (empty when the batch has none).
    pub fn rows(&self, t: Table) -> &RowBinary {
        &self.tables[t.index()]
    }

    pub(crate) fn rows_mut(&mut self, t: Table) -> &mut RowBinary {
        &mut self.tables[t.index()]
    }

    pub(crate) fn total_rows(&self) -> usize {
        self.tables.iter().map(|t| t.rows).sum()
    }

    /// Note that `partition` (claimed at `epoch`) has rows in this batch.
    pub fn touch(&mut self, partition: i32, epoch: u64) {
        if !self.epochs.contains(&(partition, epoch)) {
            self.epochs.push((partition, epoch));
        }
    }
}

fn src(w: &mut RowBinary, s: Src<'_>) {
    w.string(s.topic).u32(s.partition).u64(s.epoch).u64(s.position);
}

/// `usage_by_tracking_log`: `strs` = tracking, account, stream, cluster, protocol.
pub fn tracking_row(w: &mut RowBinary, window: u32, strs: [&str; 5], s: &Sums, at: Src<'_>) {
    w.datetime(window);
    for x in strs {
        w.string(x);
    }
    w.u64(s.bytes_out).u64(s.bytes_in).u64(s.events);
    src(w, at);
    w.end_row();
}

/// `usage_by_viewer_log`: `strs` = tracking, custom viewer data, viewer, account, stream, cluster.
pub fn viewer_row(w: &mut RowBinary, window: u32, strs: [&str; 6], s: &Sums, at: Src<'_>) {
    w.datetime(window);
    for x in strs {
        w.string(x);
    }
    w.u64(s.bytes_out).u64(s.bytes_in).u64(s.events);
    src(w, at);
    w.end_row();
}

/// Dead-letter payloads are stored base64-encoded (Kafka payloads are binary).
pub fn dead_letter_row(w: &mut RowBinary, d: &DeadLetter, source: &str, at: Src<'_>) {
    let payload = base64::engine::general_purpose::STANDARD.encode(&d.payload);
    w.datetime(d.received_at).string(source).string(&d.reason).string(&payload);
    src(w, at);
    w.end_row();
}

/// `aggregator_dedup`: a viewer's counted seqs as flat `[start, end, ...]` ranges.
pub fn dedup_row(w: &mut RowBinary, at: Src<'_>, viewer: &str, seq_ranges: &[i64], last_seen_ms: i64, now: u32) {
    src(w, at);
    w.string(viewer).array_i64(seq_ranges).i64(last_seen_ms).datetime(now);
    w.end_row();
}

/// `aggregator_checkpoints`.
pub fn checkpoint_row(w: &mut RowBinary, at: Src<'_>, watermark_ms: i64, arrival_ms: i64, member: &str, now: u32) {
    src(w, at);
    w.i64(watermark_ms).i64(arrival_ms).string(member).datetime(now);
    w.end_row();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_data_then_state_with_the_checkpoint_last() {
        assert_eq!(Table::ORDER.map(|t| t.index()), [0, 1, 2, 3, 4]);
        assert_eq!(Table::ORDER.last(), Some(&Table::Checkpoints));
        assert!(Table::ORDER.iter().take(3).all(|t| t.is_data()));
        assert_eq!(
            Table::Checkpoints.insert_sql("db"),
            "INSERT INTO db.aggregator_checkpoints (topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at) FORMAT RowBinary"
        );
    }
}
