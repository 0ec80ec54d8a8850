//! # billing
//!
//! Monthly partner invoices from the aggregates in ClickHouse, exact to the
//! byte and the cent. No floating point anywhere: money and quantities are
//! [`rust_decimal::Decimal`], byte counts are `u64`.
//!
//! * [`rates`]: parse and validate the TOML rate card finance edits.
//! * [`pricing`]: turn a byte count and a price list into rounded charge lines.
//! * [`invoice`]: the invoice document and its stable JSON form.
//! * [`render`]: CSV, HTML and terminal renderings.
//! * [`store`]: usage from the fenced `usage_by_tracking` view; invoice tables in ClickHouse.
//! * [`run`]: `billing run | issue | reconcile | statements`.
//!
//! ## Lifecycle
//! `billing run` computes drafts from `usage_by_tracking` (bytes with
//! `window_start` in the calendar month, UTC) and writes them (JSON, HTML,
//! CSV, report); re-running gives byte-identical files while usage is
//! unchanged. `billing issue` makes the drafts final and records, per tracking
//! id, the bytes each invoice billed (`billing_billed_usage`). An issued
//! invoice never changes: usage that arrives later for its period is the
//! difference between the period's usage now and what was billed for it, and
//! is billed as an adjustment line on the partner's next invoice, priced at
//! the margin under the late period's price list.

pub mod invoice;
pub mod pricing;
pub mod rates;
pub mod render;
pub mod run;
pub mod store;
