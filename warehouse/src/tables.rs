//! The row layouts of the tables the services write: each table's columns
//! with their ClickHouse types, in the order its writer encodes them
//! (`aggregator::tables` for the aggregator's row encoders and `INSERT`
//! column lists, `billing::store` for billing's row structs, each bound to
//! its layout by a unit test). `tests/tests/it/foundation.rs` checks every
//! layout of [`WRITTEN`] against the migrated table.

/// A table as its writer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLayout {
    /// The physical table.
    pub name: &'static str,
    /// The columns the writer sends, in order, with their types.
    pub columns: &'static [(&'static str, &'static str)],
    /// The columns after them that the server fills (their default) and
    /// the writer never sends: `inserted_at`, the server's clock at the
    /// insert, which the tails' time bound relies on (migration 10).
    pub server_columns: &'static [(&'static str, &'static str)],
}

/// Every data row of the aggregator carries `(src_topic, src_partition,
/// src_epoch, src_offset)`: the claim it was written under and the
/// partition position of its flush.
const SRC: [(&str, &str); 4] = [("src_topic", "String"), ("src_partition", "UInt32"), ("src_epoch", "UInt64"), ("src_offset", "UInt64")];
const DEAD: &[(&str, &str)] = &[
    ("received_at", "DateTime('UTC')"),
    ("source", "String"),
    ("reason", "String"),
    ("payload", "String"),
    SRC[0],
    SRC[1],
    SRC[2],
    SRC[3],
];
const VIEWER: &[(&str, &str)] = &[
    ("window_start", "DateTime('UTC')"),
    ("tracking_id", "String"),
    ("custom_viewer_data", "String"),
    ("viewer_id", "String"),
    ("account_id", "String"),
    ("stream_name", "String"),
    ("cluster", "String"),
    ("bytes_out", "UInt64"),
    ("bytes_in", "UInt64"),
    ("events", "UInt64"),
    SRC[0],
    SRC[1],
    SRC[2],
    SRC[3],
];
const TRACKING: &[(&str, &str)] = &[
    ("window_start", "DateTime('UTC')"),
    ("tracking_id", "String"),
    ("account_id", "String"),
    ("stream_name", "String"),
    ("cluster", "String"),
    ("protocol", "String"),
    ("bytes_out", "UInt64"),
    ("bytes_in", "UInt64"),
    ("events", "UInt64"),
    SRC[0],
    SRC[1],
    SRC[2],
    SRC[3],
];
const DEDUP: &[(&str, &str)] = &[
    ("topic", "String"),
    ("partition", "UInt32"),
    ("epoch", "UInt64"),
    ("position", "UInt64"),
    ("viewer_id", "String"),
    ("seq_ranges", "Array(Int64)"),
    ("last_seen_ms", "Int64"),
    ("created_at", "DateTime('UTC')"),
];
const CHECKPOINTS: &[(&str, &str)] = &[
    ("topic", "String"),
    ("partition", "UInt32"),
    ("epoch", "UInt64"),
    ("position", "UInt64"),
    ("watermark_ms", "Int64"),
    ("arrival_ms", "Int64"),
    ("member", "String"),
    ("created_at", "DateTime('UTC')"),
];

const INSERTED_AT: &[(&str, &str)] = &[("inserted_at", "DateTime('UTC')")];

/// The aggregator's dead letters (poison records), read through the claim fences.
pub const USAGE_DEAD_LETTERS_LOG: TableLayout = TableLayout { name: "usage_dead_letters_log", columns: DEAD, server_columns: &[] };
/// The aggregator's per-viewer window sums, read through the claim fences and sealed.
pub const USAGE_BY_VIEWER_LOG: TableLayout = TableLayout { name: "usage_by_viewer_log", columns: VIEWER, server_columns: INSERTED_AT };
/// The aggregator's per-tracking-id window sums, read through the claim fences and sealed.
pub const USAGE_BY_TRACKING_LOG: TableLayout =
    TableLayout { name: "usage_by_tracking_log", columns: TRACKING, server_columns: INSERTED_AT };
/// The aggregator's dedup snapshots (each viewer's counted `seq` ranges).
pub const AGGREGATOR_DEDUP: TableLayout = TableLayout { name: "aggregator_dedup", columns: DEDUP, server_columns: &[] };
/// The aggregator's checkpoints (a partition's position, watermark and arrival clock).
pub const AGGREGATOR_CHECKPOINTS: TableLayout = TableLayout { name: "aggregator_checkpoints", columns: CHECKPOINTS, server_columns: &[] };

/// Billing's invoices (`InvoiceRow`).
pub const BILLING_INVOICES: TableLayout = TableLayout {
    name: "billing_invoices",
    columns: &[
        ("invoice_number", "String"),
        ("partner_id", "String"),
        ("period", "String"),
        ("revision", "UInt32"),
        ("status", "String"),
        ("currency", "String"),
        ("total_bytes", "UInt64"),
        ("subtotal", "String"),
        ("total", "String"),
        ("document", "String"),
        ("created_at", "DateTime('UTC')"),
    ],
    server_columns: &[],
};

/// Billing's invoice lines (`LineRow`).
pub const BILLING_INVOICE_LINES: TableLayout = TableLayout {
    name: "billing_invoice_lines",
    columns: &[
        ("invoice_number", "String"),
        ("partner_id", "String"),
        ("period", "String"),
        ("status", "String"),
        ("line_no", "UInt32"),
        ("kind", "String"),
        ("description", "String"),
        ("bytes", "UInt64"),
        ("quantity", "String"),
        ("unit", "String"),
        ("unit_price", "String"),
        ("amount", "String"),
        ("currency", "String"),
        ("created_at", "DateTime('UTC')"),
    ],
    server_columns: &[],
};

/// Billing's ledger: one record per issued invoice (`LedgerRow`).
pub const BILLING_LEDGER: TableLayout = TableLayout {
    name: "billing_ledger",
    columns: &[
        ("invoice_number", "String"),
        ("partner_id", "String"),
        ("period", "String"),
        ("issue_id", "UInt64"),
        ("issued_at", "DateTime('UTC')"),
        ("currency", "String"),
        ("total", "String"),
        ("document", "String"),
        ("billed_periods", "Array(String)"),
        ("billed_tracking_ids", "Array(String)"),
        ("billed_bytes", "Array(Int64)"),
        ("settled", "Array(String)"),
        ("snapshot", "String"),
    ],
    server_columns: &[],
};

/// Billing's manual adjustments (`AdjustmentRow`).
pub const BILLING_ADJUSTMENTS: TableLayout = TableLayout {
    name: "billing_adjustments",
    columns: &[
        ("adjustment_id", "String"),
        ("partner_id", "String"),
        ("period", "String"),
        ("kind", "String"),
        ("bytes", "UInt64"),
        ("amount", "String"),
        ("reason", "String"),
        ("author", "String"),
        ("created_at", "DateTime('UTC')"),
    ],
    server_columns: &[],
};

/// Every table a service writes row by row, with its layout.
pub const WRITTEN: [TableLayout; 9] = [
    USAGE_DEAD_LETTERS_LOG,
    USAGE_BY_VIEWER_LOG,
    USAGE_BY_TRACKING_LOG,
    AGGREGATOR_DEDUP,
    AGGREGATOR_CHECKPOINTS,
    BILLING_INVOICES,
    BILLING_INVOICE_LINES,
    BILLING_LEDGER,
    BILLING_ADJUSTMENTS,
];
