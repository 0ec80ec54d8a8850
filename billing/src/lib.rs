//! # billing
//!
//! Monthly partner invoices from the aggregates in ClickHouse, exact to the
//! byte and the cent. No floating point anywhere: money and quantities are
//! [`rust_decimal::Decimal`], byte counts are `u64`.
//!
//! * [`config`]: the settings of the `billing` binary.
//! * [`rates`]: parse and validate the TOML rate card finance edits.
//! * [`pricing`]: turn a byte count and a price list into rounded charge lines.
//! * [`invoice`]: the invoice document and its stable JSON form.
//! * [`render`]: CSV, HTML and terminal renderings; [`pdf`]: the PDF.
//! * [`ledger`]: what was issued and billed, and the rules that read it.
//! * [`store`]: usage from the fenced `usage_by_tracking` view; invoice tables in ClickHouse.
//! * [`run`]: `billing run | issue | reconcile | statements`.
//! * `events`: the internal events: each logs one line and counts in `metering_internal_events_total`.
//!
//! ## Lifecycle
//! `billing run` computes drafts and writes them (JSON, HTML, CSV, report);
//! re-running over the same snapshot gives byte-identical files. `billing
//! issue` makes them final: each issued invoice is one row of the ledger
//! with everything it billed. An issued invoice never changes: what changes
//! later is carried by the partner's next invoice.
//!
//! ## The ledger
//! - **Exactly once.** `billing issue` holds a lock (a table created without
//!   `IF NOT EXISTS`: one creator wins, on a cluster through the distributed
//!   DDL queue), reads, and records every new invoice with its billed usage
//!   per usage period and tracking id as one row of `billing_ledger`, in one
//!   INSERT: both count or neither does. A second run, concurrent or after a
//!   crash at any step, finds them and issues nothing; it first copies into
//!   `billing_invoices`/`billing_invoice_lines` whatever a crash left out.
//!   Readers take one row per invoice number ([`ledger::Ledger::from_rows`]).
//! - **Corrections in both directions.** For every issued period (of any
//!   partner, so a partner without usage at issue is included), the next
//!   draft compares the usage now with the sum billed for it, per tracking
//!   id: more is late usage (an adjustment line), less is a credit line,
//!   both priced at the margin under that period's price list, and the
//!   difference is recorded as billed (signed). Manual adjustments (`billing
//!   adjust`) are carried once, by the next invoice after their period.
//! - **One snapshot per run.** Usage is read from the log tables under the
//!   claims' fences and up to each epoch's latest checkpoint, read once at
//!   the start ([`store::Snapshot`]): every figure of a run is of that one
//!   point, and the snapshot's digest is stored with each invoice.
//! - **Reconciliation** ([`reconcile`], `billing reconcile`) fails on anything billed twice
//!   (a second row of an invoice number, an adjustment carried twice) and
//!   lists the corrections pending per partner and period.

#![warn(missing_docs)]

pub mod config;
pub(crate) mod events;
pub mod invoice;
pub mod ledger;
pub mod pdf;
pub mod pricing;
pub mod rates;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod store;
