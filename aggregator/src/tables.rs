//! The tables the aggregator writes, their column lists and row encoders.
//! Column order here must match the `INSERT` column lists below.

use crate::dedup::ViewerSeqs;
use crate::rowbinary::RowBinary;
use crate::state::{DeadLetter, Sums};
use base64::Engine;

/// A table written by a flush, in the order a flush writes them: the
/// checkpoint goes last, so a checkpoint implies every table before it is complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    DeadLetters,
    Viewer,
    Tracking,
    Dedup,
    Checkpoints,
}

impl Table {
    pub const ORDER: [Table; 5] = [Table::DeadLetters, Table::Viewer, Table::Tracking, Table::Dedup, Table::Checkpoints];

    pub fn name(self) -> &'static str {
        match self {
            Table::DeadLetters => "usage_dead_letters",
            Table::Viewer => "usage_by_viewer",
            Table::Tracking => "usage_by_tracking",
            Table::Dedup => "aggregator_dedup",
            Table::Checkpoints => "aggregator_checkpoints",
        }
    }

    pub fn columns(self) -> &'static str {
        match self {
            Table::DeadLetters => "received_at, source, reason, payload, src_topic, src_partition, src_offset",
            Table::Viewer => "window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, inserted_at",
            Table::Tracking => "window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, inserted_at",
            Table::Dedup => "topic, partition, position, viewer_id, seq_ranges, last_seen_ms, created_at",
            Table::Checkpoints => "topic, partition, position, watermark_ms, member, created_at",
        }
    }

    /// Data tables are protected by per-table thresholds and must be written
    /// exactly once; state tables tolerate repeats.
    pub fn is_data(self) -> bool {
        matches!(self, Table::DeadLetters | Table::Viewer | Table::Tracking)
    }

    /// The `INSERT` statement for this table in database `db`.
    pub fn insert_sql(self, db: &str) -> String {
        format!("INSERT INTO {db}.{} ({}) FORMAT RowBinary", self.name(), self.columns())
    }
}

/// `(src_topic, src_partition, src_offset)` of a flush.
pub type Src<'a> = (&'a str, u32, u64);

/// Encoded rows of one flush batch, per table, with the `(partition, position)`
/// tags each data table received.
#[derive(Debug, Default)]
pub struct BatchRows {
    pub tracking: RowBinary,
    pub viewer: RowBinary,
    pub dead: RowBinary,
    pub dedup: RowBinary,
    pub checkpoints: RowBinary,
    pub tracking_tags: Vec<(i32, i64)>,
    pub viewer_tags: Vec<(i32, i64)>,
    pub dead_tags: Vec<(i32, i64)>,
    /// `(partition, position, watermark)` checkpointed by this batch.
    pub positions: Vec<(i32, i64, i64)>,
}

impl BatchRows {
    pub fn rows(&self, t: Table) -> &RowBinary {
        match t {
            Table::DeadLetters => &self.dead,
            Table::Viewer => &self.viewer,
            Table::Tracking => &self.tracking,
            Table::Dedup => &self.dedup,
            Table::Checkpoints => &self.checkpoints,
        }
    }

    pub fn tags(&self, t: Table) -> &[(i32, i64)] {
        match t {
            Table::DeadLetters => &self.dead_tags,
            Table::Viewer => &self.viewer_tags,
            Table::Tracking => &self.tracking_tags,
            _ => &[],
        }
    }

    pub fn total_rows(&self) -> usize {
        Table::ORDER.iter().map(|t| self.rows(*t).rows).sum()
    }
}

fn src(w: &mut RowBinary, (topic, part, off): Src<'_>) {
    w.string(topic).u32(part).u64(off);
}

pub fn tracking_row(w: &mut RowBinary, window: u32, strs: [&str; 5], s: &Sums, at: Src<'_>, now: u32) {
    w.datetime(window);
    for x in strs {
        w.string(x);
    }
    w.u64(s.bytes_out).u64(s.bytes_in).u64(s.events);
    src(w, at);
    w.datetime(now);
    w.end_row();
}

pub fn viewer_row(w: &mut RowBinary, window: u32, strs: [&str; 6], s: &Sums, at: Src<'_>, now: u32) {
    w.datetime(window);
    for x in strs {
        w.string(x);
    }
    w.u64(s.bytes_out).u64(s.bytes_in).u64(s.events);
    src(w, at);
    w.datetime(now);
    w.end_row();
}

/// Dead-letter payloads are stored base64-encoded (Kafka payloads are binary).
pub fn dead_letter_row(w: &mut RowBinary, d: &DeadLetter, source: &str, at: Src<'_>) {
    let payload = base64::engine::general_purpose::STANDARD.encode(&d.payload);
    w.datetime(d.received_at).string(source).string(&d.reason).string(&payload);
    src(w, at);
    w.end_row();
}

pub fn dedup_row(w: &mut RowBinary, at: Src<'_>, viewer: &str, v: &ViewerSeqs, now: u32) {
    src(w, at);
    w.string(viewer).array_i64(&v.seqs.to_flat()).i64(v.last_seen_ms).datetime(now);
    w.end_row();
}

pub fn checkpoint_row(w: &mut RowBinary, at: Src<'_>, watermark_ms: i64, member: &str, now: u32) {
    src(w, at);
    w.i64(watermark_ms).string(member).datetime(now);
    w.end_row();
}
