//! The invoice document: building it from usage and serializing it to a
//! stable JSON form.
//!
//! JSON conventions: decimals and byte counts are strings (no precision loss in
//! any JSON reader), fields appear in declaration order, enums are lowercase
//! snake_case (`"draft"`, `"commitment_true_up"`), output is pretty-printed
//! with a trailing newline, so the same invoice always gives the same bytes.

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::pricing::{self, round_money};
use crate::rates::{Partner, PriceList, Unit};

/// The `rounding_rule` text stored on every invoice.
pub const ROUNDING_RULE: &str =
    "Each line amount is rounded once to the currency's minor unit, half away from zero; the total is the sum of the rounded line amounts.";

/// Lifecycle state of an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    /// Not yet sent; may still change.
    Draft,
    /// Sent to the partner; corrections need a new revision.
    Issued,
}

impl InvoiceStatus {
    /// `"draft"` or `"issued"`, as in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Issued => "issued",
        }
    }
}

/// What an invoice line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Usage of the invoiced period.
    Usage,
    /// Difference up to the minimum commitment.
    CommitmentTrueUp,
    /// Charge for an earlier, already issued period: late usage, or a manual charge.
    Adjustment,
    /// Credit for an earlier, already issued period: its usage fell below
    /// what was billed, or a manual credit. `bytes` is the size of the
    /// decrease; the amount is negative (or zero).
    Credit,
}

impl LineKind {
    /// `"usage"`, `"commitment_true_up"`, `"adjustment"` or `"credit"`, as in JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            LineKind::Usage => "usage",
            LineKind::CommitmentTrueUp => "commitment_true_up",
            LineKind::Adjustment => "adjustment",
            LineKind::Credit => "credit",
        }
    }
}

/// One line of an invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceLine {
    /// 1-based position on the invoice.
    pub line_no: u32,
    /// What the line is for.
    pub kind: LineKind,
    /// Human-readable description.
    pub description: String,
    /// Exact bytes (0 on the true-up line).
    #[serde(with = "u64_string")]
    pub bytes: u64,
    /// `bytes` in `unit`, for display.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// `"GB"` or `"GiB"`.
    pub unit: String,
    /// Price per unit; 0 on true-up and adjustment lines (whose amount is not
    /// a single rate times a quantity).
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    /// Amount in the invoice currency, rounded to its minor units.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// An invoice for one partner and one calendar month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invoice {
    /// `INV-{YYYYMM}-{partner_id}-r{revision}`.
    pub invoice_number: String,
    /// Partner id from the rate card.
    pub partner_id: String,
    /// Partner display name.
    pub partner_name: String,
    /// `YYYY-MM`.
    pub period: String,
    /// First day of the period (UTC).
    pub period_start: NaiveDate,
    /// First day after the period (exclusive).
    pub period_end: NaiveDate,
    /// ISO 4217 code.
    pub currency: String,
    /// Draft or issued.
    pub status: InvoiceStatus,
    /// Revision, starting at 1.
    pub revision: u32,
    /// RFC 3339 UTC timestamp, set by [`Invoice::issue`].
    pub issued_at: Option<String>,
    /// Usage of the period in bytes (adjustments excluded).
    #[serde(with = "u64_string")]
    pub total_bytes: u64,
    /// Usage lines, then the true-up (if any), then adjustments.
    pub lines: Vec<InvoiceLine>,
    /// Sum of the usage lines.
    #[serde(with = "rust_decimal::serde::str")]
    pub subtotal: Decimal,
    /// Sum of all lines.
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    /// [`ROUNDING_RULE`].
    pub rounding_rule: String,
    /// The partner's tracking ids, in rate card order.
    pub tracking_ids: Vec<String>,
}

/// A correction for usage of an earlier, already issued period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Adjustment {
    /// [`LineKind::Adjustment`] (a charge) or [`LineKind::Credit`].
    pub kind: LineKind,
    /// Line description.
    pub description: String,
    /// The period the usage belongs to, `YYYY-MM`; must precede the invoice's.
    pub from_period: String,
    /// Late bytes (a charge) or the decrease (a credit).
    #[serde(with = "u64_string")]
    pub bytes: u64,
    /// `bytes` in `unit`, for display.
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    /// Unit of `from_period`'s price list.
    pub unit: Unit,
    /// Currency code of `from_period`'s price list; must match the invoice's.
    pub currency: String,
    /// Amount to add (may be negative under volume pricing), in minor units.
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
}

/// Errors building or changing an invoice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    /// Year outside 1..=9999 or month outside 1..=12.
    #[error("invalid billing period {year}-{month:02}: year must be 1..=9999 and month 1..=12")]
    InvalidPeriod {
        /// Year given.
        year: i32,
        /// Month given.
        month: u32,
    },
    /// An adjustment's `from_period` is malformed or not before the invoice's period.
    #[error("adjustment {description:?}: from_period {from_period:?} must be a period (YYYY-MM) before {period}")]
    AdjustmentPeriod {
        /// Adjustment description.
        description: String,
        /// Its `from_period`.
        from_period: String,
        /// The invoice's period.
        period: String,
    },
    /// An adjustment is in another currency than the invoice.
    #[error("adjustment {description:?}: currency {found} differs from the invoice currency {expected}")]
    AdjustmentCurrency {
        /// Adjustment description.
        description: String,
        /// Its currency.
        found: String,
        /// The invoice's currency.
        expected: String,
    },
    /// An adjustment amount has more decimals than the currency's minor units.
    #[error("adjustment {description:?}: amount {amount} has more decimals than {currency} allows")]
    AdjustmentAmount {
        /// Adjustment description.
        description: String,
        /// Its amount.
        amount: Decimal,
        /// The invoice's currency.
        currency: String,
    },
    /// [`Invoice::issue`] on an invoice that is already issued.
    #[error("invoice {invoice_number} is already issued")]
    AlreadyIssued {
        /// The invoice number.
        invoice_number: String,
    },
}

/// `(first day, first day of the next month)` of a month, if valid
/// (year 1..=9999, month 1..=12).
pub fn period_bounds(year: i32, month: u32) -> Option<(NaiveDate, NaiveDate)> {
    if !(1..=9999).contains(&year) {
        return None;
    }
    let start = NaiveDate::from_ymd_opt(year, month, 1)?;
    let end = if month == 12 { NaiveDate::from_ymd_opt(year + 1, 1, 1)? } else { NaiveDate::from_ymd_opt(year, month + 1, 1)? };
    Some((start, end))
}

/// `"YYYY-MM"`.
pub fn format_period(year: i32, month: u32) -> String {
    format!("{year:04}-{month:02}")
}

/// Parses a strict `"YYYY-MM"` period.
pub fn parse_period(s: &str) -> Option<(i32, u32)> {
    let (y, m) = s.split_once('-')?;
    if y.len() != 4 || m.len() != 2 || !(y.bytes().chain(m.bytes())).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, month) = (y.parse().ok()?, m.parse().ok()?);
    period_bounds(year, month).map(|_| (year, month))
}

/// `INV-{YYYYMM}-{partner_id}-r{revision}`, e.g. `INV-202610-acme-r1`.
pub fn invoice_number(period: &str, partner_id: &str, revision: u32) -> String {
    format!("INV-{}-{partner_id}-r{revision}", period.replace('-', ""))
}

/// Builds a draft invoice for `partner` and the calendar month `period`
/// (`(year, month)`), priced with the partner's pricing in force on the first
/// day of the month. `adjustments` are appended after the usage lines and
/// added to the total.
pub fn build_invoice(
    partner: &Partner,
    period: (i32, u32),
    usage_bytes: u64,
    adjustments: &[Adjustment],
    revision: u32,
) -> Result<Invoice, InvoiceError> {
    let (year, month) = period;
    let (period_start, period_end) = period_bounds(year, month).ok_or(InvoiceError::InvalidPeriod { year, month })?;
    let period = format_period(year, month);
    let list = partner.pricing_at(period_start);
    let currency = &list.currency;

    for adj in adjustments {
        if parse_period(&adj.from_period).is_none_or(|p| p >= (year, month)) {
            return Err(InvoiceError::AdjustmentPeriod {
                description: adj.description.clone(),
                from_period: adj.from_period.clone(),
                period: period.clone(),
            });
        }
        if adj.currency != currency.code {
            return Err(InvoiceError::AdjustmentCurrency {
                description: adj.description.clone(),
                found: adj.currency.clone(),
                expected: currency.code.clone(),
            });
        }
        if round_money(adj.amount, currency) != adj.amount {
            return Err(InvoiceError::AdjustmentAmount {
                description: adj.description.clone(),
                amount: adj.amount,
                currency: currency.code.clone(),
            });
        }
    }

    let charge = pricing::price(usage_bytes, &list);
    let mut lines = Vec::with_capacity(charge.lines.len() + 1 + adjustments.len());
    let charge_lines =
        charge.lines.iter().map(|l| (LineKind::Usage, l)).chain(charge.commitment_true_up.iter().map(|l| (LineKind::CommitmentTrueUp, l)));
    for (kind, l) in charge_lines {
        lines.push(InvoiceLine {
            line_no: 0,
            kind,
            description: l.description.clone(),
            bytes: l.bytes,
            quantity: l.quantity,
            unit: l.unit.symbol().to_owned(),
            unit_price: l.unit_price,
            amount: l.amount,
        });
    }
    for adj in adjustments {
        lines.push(InvoiceLine {
            line_no: 0,
            kind: adj.kind,
            description: adj.description.clone(),
            bytes: adj.bytes,
            quantity: adj.quantity,
            unit: adj.unit.symbol().to_owned(),
            unit_price: Decimal::ZERO,
            amount: round_money(adj.amount, currency),
        });
    }
    for (no, line) in (1u32..).zip(lines.iter_mut()) {
        line.line_no = no;
    }
    let total = round_money(lines.iter().map(|l| l.amount).sum(), currency);

    Ok(Invoice {
        invoice_number: invoice_number(&period, &partner.id, revision),
        partner_id: partner.id.clone(),
        partner_name: partner.name.clone(),
        period,
        period_start,
        period_end,
        currency: currency.code.clone(),
        status: InvoiceStatus::Draft,
        revision,
        issued_at: None,
        total_bytes: usage_bytes,
        lines,
        subtotal: charge.usage_subtotal,
        total,
        rounding_rule: ROUNDING_RULE.to_owned(),
        tracking_ids: partner.tracking_ids.clone(),
    })
}

/// Prices usage that arrived after period `from_period` was issued.
///
/// The amount is the marginal one under that period's price list `list`:
/// `price(issued_bytes + late_bytes).total - price(issued_bytes).total`, so
/// tiers and the minimum commitment stay right (late usage still covered by
/// the commitment costs nothing). Under volume pricing crossing into a
/// cheaper tier the amount can be negative. The byte sum saturates at
/// `u64::MAX`.
pub fn price_late_usage(list: &PriceList, issued_bytes: u64, late_bytes: u64, from_period: &str) -> Adjustment {
    price_correction(list, issued_bytes, issued_bytes.saturating_add(late_bytes), from_period, None)
}

/// Prices the change of period `from_period`'s billed usage from `billed`
/// to `now` bytes, at the margin under its price list `list`:
/// `price(now).total - price(billed).total` (a charge when `now > billed`, a
/// [`LineKind::Credit`] otherwise, whose amount is then negative or zero).
/// `reason`, when given, ends the description (manual adjustments).
pub fn price_correction(list: &PriceList, billed: u64, now: u64, from_period: &str, reason: Option<&str>) -> Adjustment {
    let before = pricing::price(billed, list);
    let after = pricing::price(now, list);
    let (kind, bytes) = if now >= billed { (LineKind::Adjustment, now - billed) } else { (LineKind::Credit, billed - now) };
    let quantity = pricing::quantity(bytes, list.unit);
    let (u, was) = (list.unit, pricing::quantity(billed, list.unit));
    let mut description = match (kind, reason) {
        (LineKind::Credit, None) => format!("Correction for {from_period}: usage {quantity} {u} lower than the {was} {u} invoiced"),
        (LineKind::Credit, Some(_)) => format!("Credit for {from_period}: {quantity} {u} (of {was} {u} invoiced)"),
        (_, None) => format!("Late usage for {from_period}: {quantity} {u} (on top of {was} {u} invoiced)"),
        (_, Some(_)) => format!("Charge for {from_period}: {quantity} {u} (on top of {was} {u} invoiced)"),
    };
    if let Some(r) = reason {
        description.push_str(&format!(": {r}"));
    }
    Adjustment {
        kind,
        description,
        from_period: from_period.to_owned(),
        bytes,
        quantity,
        unit: list.unit,
        currency: list.currency.code.clone(),
        amount: round_money(after.total - before.total, &list.currency),
    }
}

impl Invoice {
    /// Marks a draft as issued at `at` (stored as RFC 3339, seconds, `Z`).
    pub fn issue(&mut self, at: DateTime<Utc>) -> Result<(), InvoiceError> {
        if self.status == InvoiceStatus::Issued {
            return Err(InvoiceError::AlreadyIssued { invoice_number: self.invoice_number.clone() });
        }
        self.status = InvoiceStatus::Issued;
        self.issued_at = Some(at.to_rfc3339_opts(SecondsFormat::Secs, true));
        Ok(())
    }

    /// `(year, month)` of the period, from `period_start`.
    pub fn year_month(&self) -> (i32, u32) {
        (self.period_start.year(), self.period_start.month())
    }

    /// Pretty-printed JSON with a trailing newline; byte-identical for equal invoices.
    pub fn to_json(&self) -> String {
        // Cannot fail: only strings, integers, sequences and string-keyed structs.
        let mut s = serde_json::to_string_pretty(self).expect("invoice serialization cannot fail");
        s.push('\n');
        s
    }

    /// Parses JSON written by [`Invoice::to_json`] (unknown fields are rejected).
    pub fn from_json(json: &str) -> Result<Invoice, serde_json::Error> {
        serde_json::from_str(json)
    }
}

/// `u64` as a JSON string of digits.
mod u64_string {
    use serde::{de, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(de::Error::custom(format!("expected a byte count as a string of digits, found {s:?}")));
        }
        s.parse().map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rates::parse_rate_card;
    use chrono::TimeZone;
    use rust_decimal_macros::dec;

    const GB: u64 = 1_000_000_000;

    const CARD: &str = r#"
[[partner]]
id = "acme"
name = "Acme TV"
tracking_ids = ["acme-web", "acme-app"]
currency = "EUR"
pricing = "graduated"
minimum_commitment = "250.00"
tiers = [
  { up_to = "1000",  unit_price = "0.050" },
  { up_to = "10000", unit_price = "0.040" },
  { unit_price = "0.030" },
]
[[partner.price_change]]
effective_from = "2026-11-01"
pricing = "volume"
tiers = [ { unit_price = "0.020" } ]
"#;

    fn acme() -> Partner {
        parse_rate_card(CARD, "rates.toml").expect("card parses").partners.remove(0)
    }

    fn invoice(bytes: u64) -> Invoice {
        build_invoice(&acme(), (2026, 10), bytes, &[], 1).expect("builds")
    }

    #[test]
    fn builds_usage_invoice() {
        let inv = invoice(12_345 * GB);
        assert_eq!(inv.invoice_number, "INV-202610-acme-r1");
        assert_eq!(inv.period, "2026-10");
        assert_eq!(inv.period_start.to_string(), "2026-10-01");
        assert_eq!(inv.period_end.to_string(), "2026-11-01");
        assert_eq!(inv.status, InvoiceStatus::Draft);
        assert_eq!(inv.issued_at, None);
        assert_eq!(inv.lines.len(), 3);
        assert_eq!(inv.lines.iter().map(|l| l.line_no).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(inv.lines.iter().all(|l| l.kind == LineKind::Usage && l.unit == "GB"));
        assert_eq!(inv.subtotal, dec!(480.35)); // 50 + 360 + 70.35
        assert_eq!(inv.total, inv.subtotal);
        assert_eq!(inv.rounding_rule, ROUNDING_RULE);
        assert_eq!(inv.tracking_ids, ["acme-web", "acme-app"]);
        assert_eq!(inv.year_month(), (2026, 10));
    }

    #[test]
    fn true_up_line_follows_usage() {
        let inv = invoice(100 * GB); // 5.00
        assert_eq!(inv.lines.len(), 2);
        assert_eq!(inv.lines[1].kind, LineKind::CommitmentTrueUp);
        assert_eq!(inv.lines[1].amount, dec!(245.00));
        assert_eq!(inv.subtotal, dec!(5.00));
        assert_eq!(inv.total.to_string(), "250.00");
    }

    #[test]
    fn period_start_selects_price_change() {
        let nov = build_invoice(&acme(), (2026, 11), 2000 * GB, &[], 1).expect("builds");
        assert_eq!(nov.lines[0].unit_price, dec!(0.020));
        assert_eq!(nov.lines[0].description, "Egress 2000 GB (volume tier from 0 GB)");
        let dec_inv = build_invoice(&acme(), (2026, 12), 0, &[], 2).expect("builds");
        assert_eq!(dec_inv.invoice_number, "INV-202612-acme-r2");
        assert_eq!(dec_inv.period_end.to_string(), "2027-01-01");
    }

    #[test]
    fn late_usage_is_priced_at_the_margin() {
        let list = acme().pricing_at(NaiveDate::from_ymd_opt(2026, 10, 1).expect("date"));
        // 900 GB issued (45.00 usage, trued up to 250), +200 GB late: usage 85.00, still under 250.
        let absorbed = price_late_usage(&list, 900 * GB, 200 * GB, "2026-10");
        assert_eq!(absorbed.amount.to_string(), "0.00");
        // 9000 GB issued (50 + 320 = 370), +2000 GB late crosses two tiers:
        // 1000 @ 0.040 + 1000 @ 0.030 = 70.00
        let crossing = price_late_usage(&list, 9000 * GB, 2000 * GB, "2026-10");
        assert_eq!(crossing.amount, dec!(70.00));
        assert_eq!(crossing.bytes, 2000 * GB);
        assert_eq!(crossing.quantity, dec!(2000));
        assert_eq!(crossing.currency, "EUR");
        assert_eq!(crossing.description, "Late usage for 2026-10: 2000 GB (on top of 9000 GB invoiced)");

        let nov = build_invoice(&acme(), (2026, 11), 20_000 * GB, &[crossing], 1).expect("builds");
        let last = nov.lines.last().expect("lines");
        assert_eq!((last.line_no, last.kind), (2, LineKind::Adjustment));
        assert_eq!(last.amount, dec!(70.00));
        assert_eq!(nov.subtotal, dec!(400.00));
        assert_eq!(nov.total, dec!(470.00));
        assert_eq!(nov.total_bytes, 20_000 * GB);
    }

    #[test]
    fn late_usage_can_be_negative_under_volume_pricing() {
        let text = CARD.replace("pricing = \"graduated\"", "pricing = \"volume\"").replace("\"250.00\"", "\"0\"");
        let p = parse_rate_card(&text, "x").expect("parses").partners.remove(0);
        let list = p.pricing_at(NaiveDate::from_ymd_opt(2026, 1, 1).expect("date"));
        // 1000 GB @ 0.050 = 50.00; 1001 GB @ 0.040 = 40.04.
        let adj = price_late_usage(&list, 1000 * GB, GB, "2026-01");
        assert_eq!(adj.amount, dec!(-9.96));
    }

    #[test]
    fn adjustment_errors() {
        let mut adj = price_late_usage(&acme().base, 0, GB, "2026-10");
        assert!(matches!(build_invoice(&acme(), (2026, 10), 0, &[adj.clone()], 1), Err(InvoiceError::AdjustmentPeriod { .. })));
        adj.from_period = "2026-9".into();
        assert!(matches!(build_invoice(&acme(), (2026, 11), 0, &[adj.clone()], 1), Err(InvoiceError::AdjustmentPeriod { .. })));
        adj.from_period = "2026-09".into();
        adj.currency = "USD".into();
        let e = build_invoice(&acme(), (2026, 11), 0, &[adj.clone()], 1).expect_err("currency");
        assert!(e.to_string().contains("currency USD differs from the invoice currency EUR"));
        adj.currency = "EUR".into();
        adj.amount = dec!(1.001);
        assert!(matches!(build_invoice(&acme(), (2026, 11), 0, &[adj], 1), Err(InvoiceError::AdjustmentAmount { .. })));
    }

    #[test]
    fn invalid_periods_rejected() {
        for (y, m) in [(2026, 0), (2026, 13), (0, 1), (10_000, 1)] {
            assert_eq!(build_invoice(&acme(), (y, m), 0, &[], 1), Err(InvoiceError::InvalidPeriod { year: y, month: m }));
        }
        assert_eq!(parse_period("2026-10"), Some((2026, 10)));
        for bad in ["2026-1", "26-10", "2026-13", "2026/10", "+026-10", "2026-10-01"] {
            assert_eq!(parse_period(bad), None, "{bad}");
        }
    }

    #[test]
    fn issue_once() {
        let mut inv = invoice(GB);
        let at = Utc.with_ymd_and_hms(2026, 11, 2, 9, 30, 0).single().expect("time");
        inv.issue(at).expect("issues");
        assert_eq!(inv.status, InvoiceStatus::Issued);
        assert_eq!(inv.issued_at.as_deref(), Some("2026-11-02T09:30:00Z"));
        assert!(matches!(inv.issue(at), Err(InvoiceError::AlreadyIssued { .. })));
    }

    #[test]
    fn json_is_stable_and_round_trips() {
        let inv = invoice(1_234_567_890_123);
        let json = inv.to_json();
        assert!(json.ends_with("}\n"));
        assert_eq!(json, invoice(1_234_567_890_123).to_json());
        assert!(json.starts_with("{\n  \"invoice_number\": \"INV-202610-acme-r1\",\n  \"partner_id\": \"acme\",\n"));
        assert!(json.contains("\"total_bytes\": \"1234567890123\""));
        assert!(json.contains("\"bytes\": \"1000000000000\""));
        assert!(json.contains("\"unit_price\": \"0.050\""));
        assert!(json.contains("\"quantity\": \"234.567890123\""));
        assert!(json.contains("\"total\": \"250.00\""));
        assert!(json.contains("\"status\": \"draft\""));
        assert!(json.contains("\"kind\": \"commitment_true_up\""));
        assert!(json.contains("\"issued_at\": null"));
        let keys: Vec<&str> =
            json.lines().filter(|l| l.starts_with("  \"")).map(|l| l.trim_start().split('"').nth(1).unwrap_or("")).collect();
        assert_eq!(
            keys,
            [
                "invoice_number",
                "partner_id",
                "partner_name",
                "period",
                "period_start",
                "period_end",
                "currency",
                "status",
                "revision",
                "issued_at",
                "total_bytes",
                "lines",
                "subtotal",
                "total",
                "rounding_rule",
                "tracking_ids"
            ]
        );
        let back = Invoice::from_json(&json).expect("parses");
        assert_eq!(back, inv);
        assert_eq!(back.to_json(), json);
    }

    #[test]
    fn json_rejects_numbers_for_strings_and_unknown_fields() {
        let json = invoice(GB).to_json();
        let numeric = json.replace("\"total_bytes\": \"1000000000\"", "\"total_bytes\": 1000000000");
        assert!(Invoice::from_json(&numeric).is_err());
        let signed = json.replace("\"total_bytes\": \"1000000000\"", "\"total_bytes\": \"+1000000000\"");
        assert!(Invoice::from_json(&signed).is_err());
        let extra = json.replacen('{', "{\n  \"extra\": 1,", 1);
        assert!(Invoice::from_json(&extra).is_err());
    }
}
