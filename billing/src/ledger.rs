//! The billing ledger: what was issued, what it billed, which corrections
//! are pending. Pure types and rules; `store` reads and writes them.
//!
//! **The contract.**
//! - An issued invoice and the usage it billed are one row of
//!   `billing_ledger`, written by one `INSERT` of that row: both count or
//!   neither does. Nothing else records what was billed.
//! - One record per invoice number counts: the first by `(issued_at,
//!   issue_id)` ([`Ledger::from_rows`]). `billing issue` holds a lock while it
//!   issues, so a second row cannot normally exist; if one does (a lock
//!   taken over from a holder that was only slow), it is ignored here and
//!   `billing reconcile` fails on it.
//! - Billed bytes are signed and summed per partner, usage period and
//!   tracking id over every record: a period's own invoice bills its usage
//!   at issue; each later invoice bills the difference between the usage
//!   then and the sum billed before (late usage positive, a correction
//!   downward negative). So after any invoice, billed = usage at its
//!   snapshot, for every period it looked at.
//! - A manual adjustment is carried by exactly one invoice, which lists its
//!   id in `settled`.

use crate::invoice::Invoice;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Bytes billed for one usage period and tracking id by one invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Billed {
    pub usage_period: String,
    pub tracking_id: String,
    /// Negative for a correction downward.
    pub bytes: i64,
}

/// One issued invoice with what it billed.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRecord {
    /// The invoice as issued; it never changes afterwards.
    pub invoice: Invoice,
    /// Random per issuing run.
    pub issue_id: u64,
    /// Unix seconds.
    pub issued_at: u32,
    pub(crate) billed: Vec<Billed>,
    /// Ids of the manual adjustments this invoice carried.
    pub settled: Vec<String>,
    /// The snapshot the invoice was priced on ([`crate::store::Snapshot::summary`]).
    pub snapshot: String,
}

/// The issued invoices: one record per invoice number.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// By invoice number.
    pub records: BTreeMap<String, LedgerRecord>,
    /// Rows of an invoice number besides its record: `(invoice_number, issue_id)`.
    pub ignored: Vec<(String, u64)>,
}

impl Ledger {
    /// The ledger from every stored row, in any order: per invoice number the
    /// row first by `(issued_at, issue_id)` is the record; the others are
    /// listed in `ignored`. Deterministic whatever order the rows come in.
    pub fn from_rows(rows: impl IntoIterator<Item = LedgerRecord>) -> Ledger {
        let mut by_number: BTreeMap<String, Vec<LedgerRecord>> = BTreeMap::new();
        for r in rows {
            by_number.entry(r.invoice.invoice_number.clone()).or_default().push(r);
        }
        let mut ledger = Ledger::default();
        for (number, mut rows) in by_number {
            rows.sort_by_key(|r| (r.issued_at, r.issue_id));
            rows.dedup_by(|b, a| a.issue_id == b.issue_id && a.issued_at == b.issued_at); // one row stored twice is one row
            let mut rows = rows.into_iter();
            let first = rows.next().expect("a group has a row");
            ledger.ignored.extend(rows.map(|r| (number.clone(), r.issue_id)));
            ledger.records.insert(number, first);
        }
        ledger
    }

    /// The issued invoice of `partner_id` for `period`.
    pub fn issued(&self, partner_id: &str, period: &str) -> Option<&LedgerRecord> {
        self.records.values().find(|r| r.invoice.partner_id == partner_id && r.invoice.period == period)
    }

    /// Every period with an issued invoice (of any partner).
    pub fn issued_periods(&self) -> BTreeSet<String> {
        self.records.values().map(|r| r.invoice.period.clone()).collect()
    }

    /// Bytes billed so far for `partner_id`'s usage of `usage_period`, per
    /// tracking id (signed sums over every record; entries summing to 0 kept).
    pub fn billed(&self, partner_id: &str, usage_period: &str) -> BTreeMap<String, i128> {
        let mut out: BTreeMap<String, i128> = BTreeMap::new();
        for r in self.records.values().filter(|r| r.invoice.partner_id == partner_id) {
            for b in r.billed.iter().filter(|b| b.usage_period == usage_period) {
                *out.entry(b.tracking_id.clone()).or_default() += i128::from(b.bytes);
            }
        }
        out
    }

    /// How many records carried each manual adjustment id.
    pub fn settled(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for id in self.records.values().flat_map(|r| r.settled.iter()) {
            *out.entry(id.clone()).or_default() += 1;
        }
        out
    }
}

/// Usage now minus billed, per tracking id, where they differ: the
/// correction an invoice must carry for one period. Bytes are exact
/// (`i128`: a `u64` usage minus a signed sum cannot overflow it).
pub fn differences(usage_now: &BTreeMap<String, u64>, billed: &BTreeMap<String, i128>) -> BTreeMap<String, i128> {
    usage_now
        .keys()
        .chain(billed.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter_map(|t| {
            let d = i128::from(usage_now.get(t).copied().unwrap_or(0)) - billed.get(t).copied().unwrap_or(0);
            (d != 0).then(|| (t.clone(), d))
        })
        .collect()
}

/// Credit or charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustmentKind {
    /// The partner pays less: a credit line on the invoice that carries it.
    Credit,
    /// The partner pays more: an adjustment line on the invoice that carries it.
    Charge,
}

impl AdjustmentKind {
    /// `credit` or `charge`: the value of the `kind` column of
    /// `billing_adjustments` and the word `billing adjust` prints.
    pub const fn as_str(self) -> &'static str {
        match self {
            AdjustmentKind::Credit => "credit",
            AdjustmentKind::Charge => "charge",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "credit" => Some(AdjustmentKind::Credit),
            "charge" => Some(AdjustmentKind::Charge),
            _ => None,
        }
    }
}

/// A manual correction recorded by `billing adjust`: bytes of `period`
/// (priced at that period's margin) or an amount, with its reason and author.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManualAdjustment {
    /// Its id, `ADJ-` and 16 hex digits: listed in the `settled` of the
    /// invoice that carries it, and on that invoice's line.
    pub adjustment_id: String,
    /// The partner it is for (an `id` of the rate card).
    pub partner_id: String,
    /// The usage period it corrects, `YYYY-MM`.
    pub period: String,
    /// Whether the partner pays less (credit) or more (charge).
    pub kind: AdjustmentKind,
    /// Bytes to credit or charge (0 when `amount` is given).
    #[serde(serialize_with = "u64_str")]
    pub bytes: u64,
    /// An amount in the partner's currency of `period` (positive; `kind` gives the sign).
    pub amount: Option<Decimal>,
    /// Why it was recorded (`--reason`, trimmed; never empty): printed on the invoice line.
    pub reason: String,
    /// Who recorded it (`--by`, trimmed; never empty): the audit trail, printed with the reason.
    pub author: String,
    /// Unix seconds.
    pub created_at: u32,
}

fn u64_str<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(number: &str, issued_at: u32, issue_id: u64, billed: &[(&str, &str, i64)]) -> LedgerRecord {
        let card = crate::rates::parse_rate_card(
            "[[partner]]\nid = \"p\"\nname = \"P\"\ntracking_ids = [\"t\"]\ncurrency = \"EUR\"\nunit = \"GB\"\npricing = \"flat\"\ntiers = [ { unit_price = \"0.05\" } ]\n",
            "rates.toml",
        )
        .unwrap();
        let mut invoice = crate::invoice::build_invoice(&card.partners[0], (2026, 10), 0, &[], 1).unwrap();
        invoice.invoice_number = number.to_string();
        LedgerRecord {
            invoice,
            issue_id,
            issued_at,
            billed: billed.iter().map(|(p, t, b)| Billed { usage_period: p.to_string(), tracking_id: t.to_string(), bytes: *b }).collect(),
            settled: vec![],
            snapshot: String::new(),
        }
    }

    #[test]
    fn the_first_issue_of_a_number_counts_whatever_the_row_order() {
        let rows = vec![
            record("A", 20, 1, &[("2026-10", "t", 500)]),
            record("A", 10, 9, &[("2026-10", "t", 400)]),
            record("A", 10, 9, &[("2026-10", "t", 400)]), // the same row twice
            record("A", 10, 11, &[("2026-10", "t", 300)]),
            record("B", 30, 2, &[("2026-10", "t", -50), ("2026-09", "t", 7)]),
        ];
        for order in [rows.clone(), rows.iter().rev().cloned().collect()] {
            let l = Ledger::from_rows(order);
            assert_eq!(l.records.len(), 2);
            assert_eq!(l.records["A"].issue_id, 9);
            let mut ignored = l.ignored.clone();
            ignored.sort();
            assert_eq!(ignored, vec![("A".to_string(), 1), ("A".to_string(), 11)]);
            assert_eq!(l.billed("p", "2026-10"), BTreeMap::from([("t".to_string(), 350)]));
            assert_eq!(l.billed("p", "2026-09"), BTreeMap::from([("t".to_string(), 7)]));
        }
    }

    #[test]
    fn differences_are_signed_per_tracking_id() {
        let now = BTreeMap::from([("a".to_string(), 10u64), ("b".to_string(), 5)]);
        let billed = BTreeMap::from([("a".to_string(), 12i128), ("b".to_string(), 5), ("c".to_string(), 3)]);
        assert_eq!(differences(&now, &billed), BTreeMap::from([("a".to_string(), -2), ("c".to_string(), -3)]));
        let max = BTreeMap::from([("a".to_string(), u64::MAX)]);
        assert_eq!(differences(&max, &BTreeMap::from([("a".to_string(), -1i128)]))["a"], i128::from(u64::MAX) + 1);
    }
}
