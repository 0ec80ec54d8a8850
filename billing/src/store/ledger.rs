//! The ledger and the invoice tables: billing's writes (`billing_ledger`,
//! `billing_adjustments`, `billing_invoices`, `billing_invoice_lines`), their
//! row structs, and the reads of the ledger back.

use super::{Store, StoreError};
use crate::invoice::Invoice;
use crate::ledger::{AdjustmentKind, Billed, Ledger, LedgerRecord, ManualAdjustment};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Debug, Serialize, clickhouse::Row)]
struct InvoiceRow<'a> {
    invoice_number: &'a str,
    partner_id: &'a str,
    period: &'a str,
    revision: u32,
    status: &'a str,
    currency: &'a str,
    total_bytes: u64,
    subtotal: String,
    total: String,
    document: String,
    created_at: u32,
}

#[derive(Debug, Serialize, clickhouse::Row)]
struct LineRow<'a> {
    invoice_number: &'a str,
    partner_id: &'a str,
    period: &'a str,
    status: &'a str,
    line_no: u32,
    kind: String,
    description: &'a str,
    bytes: u64,
    quantity: String,
    unit: &'a str,
    unit_price: String,
    amount: String,
    currency: &'a str,
    created_at: u32,
}

/// One row of `billing_ledger`: one issued invoice and what it billed.
#[derive(Debug, Serialize, Deserialize, clickhouse::Row)]
struct LedgerRow {
    invoice_number: String,
    partner_id: String,
    period: String,
    issue_id: u64,
    issued_at: u32,
    currency: String,
    total: String,
    document: String,
    billed_periods: Vec<String>,
    billed_tracking_ids: Vec<String>,
    billed_bytes: Vec<i64>,
    settled: Vec<String>,
    snapshot: String,
}

/// One row of `billing_adjustments`.
#[derive(Debug, Serialize, Deserialize, clickhouse::Row)]
struct AdjustmentRow {
    adjustment_id: String,
    partner_id: String,
    period: String,
    kind: String,
    bytes: u64,
    amount: String,
    reason: String,
    author: String,
    created_at: u32,
}

/// The tables billing writes (their layouts are `warehouse::tables`'s), in
/// the order of the row structs that write them (`InvoiceRow`, `LineRow`,
/// `LedgerRow`, `AdjustmentRow`). A unit test binds each layout to its
/// struct, an end-to-end test
/// (`foundation::row_layouts_match_the_migrated_tables`) to the migrated
/// tables.
pub const TABLES: [warehouse::tables::TableLayout; 4] = [
    warehouse::tables::BILLING_INVOICES,
    warehouse::tables::BILLING_INVOICE_LINES,
    warehouse::tables::BILLING_LEDGER,
    warehouse::tables::BILLING_ADJUSTMENTS,
];

fn status_str(inv: &Invoice) -> &'static str {
    match inv.status {
        crate::invoice::InvoiceStatus::Draft => "draft",
        crate::invoice::InvoiceStatus::Issued => "issued",
    }
}

impl Store {
    /// Replace the stored drafts of `period` with `invoices`.
    pub async fn save_drafts(&self, period: &str, invoices: &[Invoice]) -> Result<(), StoreError> {
        for table in ["billing_invoices", "billing_invoice_lines"] {
            self.client
                .query(&format!("ALTER TABLE {} DELETE WHERE period = ? AND status = 'draft'", self.local.alter(&self.db, table)))
                .bind(period)
                .execute()
                .await?;
        }
        self.save(invoices).await
    }

    /// Append invoices and their lines.
    pub async fn save(&self, invoices: &[Invoice]) -> Result<(), StoreError> {
        self.save_invoice_rows(invoices).await?;
        self.save_line_rows(invoices).await
    }

    async fn save_invoice_rows(&self, invoices: &[Invoice]) -> Result<(), StoreError> {
        if invoices.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp() as u32;
        let mut ins = self.client.insert::<InvoiceRow<'_>>("billing_invoices").await?;
        for inv in invoices {
            ins.write(&InvoiceRow {
                invoice_number: &inv.invoice_number,
                partner_id: &inv.partner_id,
                period: &inv.period,
                revision: inv.revision,
                status: status_str(inv),
                currency: &inv.currency,
                total_bytes: inv.total_bytes,
                subtotal: inv.subtotal.to_string(),
                total: inv.total.to_string(),
                document: inv.to_json(),
                created_at: now,
            })
            .await?;
        }
        ins.end().await?;
        Ok(())
    }

    async fn save_line_rows(&self, invoices: &[Invoice]) -> Result<(), StoreError> {
        if invoices.iter().all(|i| i.lines.is_empty()) {
            return Ok(());
        }
        let now = chrono::Utc::now().timestamp() as u32;
        let mut ins = self.client.insert::<LineRow<'_>>("billing_invoice_lines").await?;
        for inv in invoices {
            for l in &inv.lines {
                ins.write(&LineRow {
                    invoice_number: &inv.invoice_number,
                    partner_id: &inv.partner_id,
                    period: &inv.period,
                    status: status_str(inv),
                    line_no: l.line_no,
                    kind: l.kind.as_str().to_string(),
                    description: &l.description,
                    bytes: l.bytes,
                    quantity: l.quantity.to_string(),
                    unit: &l.unit,
                    unit_price: l.unit_price.to_string(),
                    amount: l.amount.to_string(),
                    currency: &inv.currency,
                    created_at: now,
                })
                .await?;
            }
        }
        ins.end().await?;
        Ok(())
    }

    /// The ledger: every issued invoice with what it billed ([`Ledger::from_rows`]).
    pub async fn ledger(&self) -> Result<Ledger, StoreError> {
        let rows: Vec<LedgerRow> = self
            .client
            .query(&format!(
                "SELECT invoice_number, partner_id, period, issue_id, toUInt32(issued_at), currency, total, document, \
                 billed_periods, billed_tracking_ids, billed_bytes, settled, snapshot FROM {}.billing_ledger",
                self.db
            ))
            .fetch_all()
            .await?;
        let mut records = Vec::with_capacity(rows.len());
        for r in rows {
            let invoice = Invoice::from_json(&r.document).map_err(|e| StoreError::Corrupt(r.invoice_number.clone(), e.to_string()))?;
            let n = r.billed_periods.len();
            if r.billed_tracking_ids.len() != n || r.billed_bytes.len() != n {
                return Err(StoreError::Corrupt(r.invoice_number, "billed arrays of different lengths".into()));
            }
            let billed = (r.billed_periods.into_iter().zip(r.billed_tracking_ids).zip(r.billed_bytes))
                .map(|((usage_period, tracking_id), bytes)| Billed { usage_period, tracking_id, bytes })
                .collect();
            records.push(LedgerRecord {
                invoice,
                issue_id: r.issue_id,
                issued_at: r.issued_at,
                billed,
                settled: r.settled,
                snapshot: r.snapshot,
            });
        }
        Ok(Ledger::from_rows(records))
    }

    /// Record issued invoices: one row each, in one INSERT. A row is the
    /// invoice with everything it billed, so either it counts whole or it is
    /// not there.
    pub async fn append_ledger(&self, records: &[LedgerRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut ins = self.client.insert::<LedgerRow>("billing_ledger").await?;
        for r in records {
            let inv = &r.invoice;
            ins.write(&LedgerRow {
                invoice_number: inv.invoice_number.clone(),
                partner_id: inv.partner_id.clone(),
                period: inv.period.clone(),
                issue_id: r.issue_id,
                issued_at: r.issued_at,
                currency: inv.currency.clone(),
                total: inv.total.to_string(),
                document: inv.to_json(),
                billed_periods: r.billed.iter().map(|b| b.usage_period.clone()).collect(),
                billed_tracking_ids: r.billed.iter().map(|b| b.tracking_id.clone()).collect(),
                billed_bytes: r.billed.iter().map(|b| b.bytes).collect(),
                settled: r.settled.clone(),
                snapshot: r.snapshot.clone(),
            })
            .await?;
        }
        ins.end().await?;
        Ok(())
    }

    /// The issued invoices of `ledger` that `table` has no issued row of.
    async fn missing(&self, ledger: &Ledger, table: &str) -> Result<Vec<Invoice>, StoreError> {
        let sql = format!("SELECT DISTINCT invoice_number FROM {}.{table} WHERE status = 'issued'", self.db);
        let have: BTreeSet<String> = self.client.query(&sql).fetch_all::<String>().await?.into_iter().collect();
        Ok(ledger.records.values().filter(|r| !have.contains(&r.invoice.invoice_number)).map(|r| r.invoice.clone()).collect())
    }

    /// Copy the ledger's issued invoices that `billing_invoices` lacks into
    /// it (for the console and analysts): completes what a crash after the
    /// ledger insert left out. Returns how many were copied.
    pub async fn complete_invoices(&self, ledger: &Ledger) -> Result<usize, StoreError> {
        let missing = self.missing(ledger, "billing_invoices").await?;
        self.save_invoice_rows(&missing).await?;
        Ok(missing.len())
    }

    /// The same for `billing_invoice_lines`.
    pub async fn complete_lines(&self, ledger: &Ledger) -> Result<usize, StoreError> {
        let missing = self.missing(ledger, "billing_invoice_lines").await?;
        self.save_line_rows(&missing).await?;
        Ok(missing.len())
    }

    /// Every manual adjustment, oldest first.
    pub async fn adjustments(&self) -> Result<Vec<ManualAdjustment>, StoreError> {
        let rows: Vec<AdjustmentRow> = self
            .client
            .query(&format!(
                "SELECT adjustment_id, partner_id, period, kind, bytes, amount, reason, author, toUInt32(created_at) \
                 FROM {}.billing_adjustments ORDER BY created_at, adjustment_id",
                self.db
            ))
            .fetch_all()
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let corrupt = |what: &str| StoreError::Corrupt(format!("adjustment {}", r.adjustment_id), what.to_string());
            let kind = AdjustmentKind::parse(&r.kind).ok_or_else(|| corrupt("kind"))?;
            let amount = if r.amount.is_empty() { None } else { Some(r.amount.parse().map_err(|_| corrupt("amount"))?) };
            out.push(ManualAdjustment {
                adjustment_id: r.adjustment_id,
                partner_id: r.partner_id,
                period: r.period,
                kind,
                bytes: r.bytes,
                amount,
                reason: r.reason,
                author: r.author,
                created_at: r.created_at,
            });
        }
        Ok(out)
    }

    /// Record a manual adjustment (never changed afterwards).
    pub async fn record_adjustment(&self, a: &ManualAdjustment) -> Result<(), StoreError> {
        let mut ins = self.client.insert::<AdjustmentRow>("billing_adjustments").await?;
        ins.write(&AdjustmentRow {
            adjustment_id: a.adjustment_id.clone(),
            partner_id: a.partner_id.clone(),
            period: a.period.clone(),
            kind: a.kind.as_str().to_string(),
            bytes: a.bytes,
            amount: a.amount.map(|d| d.to_string()).unwrap_or_default(),
            reason: a.reason.clone(),
            author: a.author.clone(),
            created_at: a.created_at,
        })
        .await?;
        ins.end().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clickhouse::Row;

    #[test]
    fn table_layouts_are_the_row_structs() {
        fn names(cols: &[(&'static str, &'static str)]) -> Vec<&'static str> {
            cols.iter().map(|c| c.0).collect()
        }
        assert_eq!(names(TABLES[0].columns), <InvoiceRow<'_> as Row>::COLUMN_NAMES);
        assert_eq!(names(TABLES[1].columns), <LineRow<'_> as Row>::COLUMN_NAMES);
        assert_eq!(names(TABLES[2].columns), <LedgerRow as Row>::COLUMN_NAMES);
        assert_eq!(names(TABLES[3].columns), <AdjustmentRow as Row>::COLUMN_NAMES);
    }
}
