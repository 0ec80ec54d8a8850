//! Billing runs: drafts, issuing, files, the run report and partner
//! statements (reconciliation is [`crate::reconcile`]).

use crate::events;
use crate::invoice::{
    build_invoice, format_period, parse_period, period_bounds, price_correction, Adjustment, Invoice, InvoiceStatus, LineKind,
};
use crate::ledger::{differences, AdjustmentKind, Billed, Ledger, LedgerRecord, ManualAdjustment};
use crate::rates::{Partner, RateCard};
use crate::render;
use crate::store::{Snapshot, Store, StoreError};
use chrono::NaiveDate;
use runtime::csv;
use runtime::events::InternalEvent;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a billing command failed.
#[derive(Debug, Error)]
pub enum BillingError {
    /// Reading or writing ClickHouse failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The rate card could not be read or is invalid.
    #[error(transparent)]
    RateCard(#[from] crate::rates::RateCardError),
    /// An invoice could not be built or issued.
    #[error(transparent)]
    Invoice(#[from] crate::invoice::InvoiceError),
    /// A period that is not a valid `YYYY-MM`; holds it as given.
    #[error("bad period {0:?}: use YYYY-MM")]
    Period(String),
    /// A file or folder under the output folder could not be written.
    #[error("writing {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A sum of bytes (or a signed correction) does not fit 64 bits; holds what was summed.
    #[error("{0}: the byte total does not fit 64 bits")]
    Overflow(&'static str),
    /// `billing adjust` refused its arguments (a partner not in the rate
    /// card, not exactly one of `--bytes` and `--amount`, no `--reason` or
    /// `--by`, ...); holds why. Nothing was recorded.
    #[error("billing adjust: {0}")]
    Adjust(String),
}

/// A checked sum of byte counts: an overflow is an error, never a wrap.
pub(crate) fn total<'a>(what: &'static str, bytes: impl IntoIterator<Item = &'a u64>) -> Result<u64, BillingError> {
    bytes.into_iter().try_fold(0u64, |a, b| a.checked_add(*b)).ok_or(BillingError::Overflow(what))
}

/// A correction of an earlier, issued period: usage that changed since it
/// was billed (late usage, or usage that fell), or a manual adjustment.
#[derive(Debug, Clone, Serialize)]
pub struct Correction {
    /// The partner whose invoice carries it (or will: a pending correction).
    pub partner_id: String,
    /// The usage period corrected.
    pub from_period: String,
    /// `late_usage`, `lower_usage`, `manual_charge` or `manual_credit`.
    pub kind: &'static str,
    /// The size of the change (a decrease for `lower_usage`).
    #[serde(with = "u64_str")]
    pub bytes: u64,
    /// Usage now minus billed, per tracking id (usage corrections only).
    pub per_tracking: BTreeMap<String, i64>,
    /// ISO 4217 code of `amount`: the partner's currency in the corrected period.
    pub currency: String,
    /// Signed: negative for credits.
    pub amount: String,
    /// Manual adjustments: their id, reason and author.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustment: Option<ManualAdjustment>,
}

/// Per-partner line of the run report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PartnerSummary {
    pub partner_id: String,
    pub invoice_number: String,
    pub status: String,
    #[serde(with = "u64_str")]
    pub bytes: u64,
    pub currency: String,
    pub total: String,
}

/// What a run computed besides the invoices; written as `report-<period>.json`.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The period computed, `YYYY-MM`.
    pub period: String,
    /// The usage snapshot every figure of this run was read from ([`Snapshot::summary`]).
    pub snapshot: String,
    /// All `bytes_out` of the period, every tracking id and untracked.
    #[serde(with = "u64_str")]
    pub total_bytes: u64,
    pub(crate) partners: Vec<PartnerSummary>,
    /// Usage of tracking ids no partner owns: not billed, listed here.
    pub unowned_tracking_ids: BTreeMap<String, u64>,
    /// Usage without a tracking id: not billed.
    #[serde(with = "u64_str")]
    pub untracked_bytes: u64,
    /// Corrections of earlier issued periods carried by this run's drafts, in both directions.
    pub adjustments: Vec<Correction>,
    /// Corrections not carried yet: usage of this (issued) period changed
    /// since its invoice, and manual adjustments waiting for a later invoice.
    pub pending_corrections: Vec<Correction>,
}

/// What issuing a draft records with it in the ledger.
#[derive(Debug, Clone, Default)]
struct ToRecord {
    billed: Vec<Billed>,
    settled: Vec<String>,
}

/// The result of computing a period.
#[derive(Debug, Clone)]
pub struct Computed {
    pub(crate) period: String,
    /// One invoice per partner of the rate card, in its order: a draft, or
    /// the invoice issued for the period, as issued.
    pub invoices: Vec<Invoice>,
    /// Everything else the run computed (written as `report-<period>.json`).
    pub report: RunReport,
    /// Per partner with a draft: what issuing it records.
    to_record: BTreeMap<String, ToRecord>,
}

pub(crate) fn bounds(period: &str) -> Result<((i32, u32), NaiveDate, NaiveDate), BillingError> {
    let ym = parse_period(period).ok_or_else(|| BillingError::Period(period.to_string()))?;
    let (from, to) = period_bounds(ym.0, ym.1).ok_or_else(|| BillingError::Period(period.to_string()))?;
    Ok((ym, from, to))
}

/// Everything one run reads: the usage snapshot, the ledger, the manual adjustments.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub(crate) snapshot: Snapshot,
    pub(crate) ledger: Ledger,
    pub(crate) manual: Vec<ManualAdjustment>,
}

impl Inputs {
    /// Read them now (the checkpoints and claims first: the snapshot).
    pub async fn read(store: &Store) -> Result<Inputs, BillingError> {
        let snapshot = store.snapshot().await?;
        Ok(Inputs { snapshot, ledger: store.ledger().await?, manual: store.adjustments().await? })
    }
}

fn to_i64(what: &'static str, v: i128) -> Result<i64, BillingError> {
    i64::try_from(v).map_err(|_| BillingError::Overflow(what))
}

/// Usage of a period as of the snapshot, read once per run.
struct UsageCache<'a> {
    store: &'a Store,
    snapshot: &'a Snapshot,
    by_period: BTreeMap<String, BTreeMap<String, u64>>,
}

impl UsageCache<'_> {
    async fn get(&mut self, period: &str) -> Result<&BTreeMap<String, u64>, BillingError> {
        if !self.by_period.contains_key(period) {
            let (_, from, to) = bounds(period)?;
            let u = self.store.usage_at(self.snapshot, from, to).await?;
            self.by_period.insert(period.to_string(), u);
        }
        Ok(&self.by_period[period])
    }

    /// `partner`'s usage of `period`, per tracking id.
    async fn own(&mut self, partner: &Partner, period: &str) -> Result<BTreeMap<String, u64>, BillingError> {
        let u = self.get(period).await?;
        Ok(partner.tracking_ids.iter().filter_map(|t| u.get(t).map(|b| (t.clone(), *b))).collect())
    }
}

/// A usage correction: its report entry, its invoice line, its billed rows.
type UsageCorrection = (Correction, Option<Adjustment>, Vec<Billed>);

/// The correction of `partner`'s period `q` from what the ledger billed to
/// the usage now: its report entry, its line (none when the change nets to
/// zero bytes) and its billed rows.
fn usage_correction(
    partner: &Partner,
    q: &str,
    own: &BTreeMap<String, u64>,
    billed: &BTreeMap<String, i128>,
) -> Result<Option<UsageCorrection>, BillingError> {
    let diffs = differences(own, billed);
    if diffs.is_empty() {
        return Ok(None);
    }
    let (_, qf, _) = bounds(q)?;
    let billed_total = u64::try_from(billed.values().sum::<i128>().max(0)).map_err(|_| BillingError::Overflow("billed bytes"))?;
    let now_total = total("usage", own.values())?;
    let adj = price_correction(&partner.pricing_at(qf), billed_total, now_total, q, None);
    let per_tracking =
        diffs.iter().map(|(t, d)| Ok((t.clone(), to_i64("correction", *d)?))).collect::<Result<BTreeMap<_, _>, BillingError>>()?;
    let rows = per_tracking.iter().map(|(t, d)| Billed { usage_period: q.to_string(), tracking_id: t.clone(), bytes: *d }).collect();
    let c = Correction {
        partner_id: partner.id.clone(),
        from_period: q.to_string(),
        kind: if adj.kind == LineKind::Credit { "lower_usage" } else { "late_usage" },
        bytes: adj.bytes,
        per_tracking,
        currency: adj.currency.clone(),
        amount: adj.amount.to_string(),
        adjustment: None,
    };
    Ok(Some((c, (adj.bytes > 0).then_some(adj), rows)))
}

/// A manual adjustment priced for `partner`: bytes at the margin of its
/// period's usage now (`usage_now` bytes), under that period's price list;
/// an amount as it is.
fn manual_line(partner: &Partner, m: &ManualAdjustment, usage_now: u64) -> Result<(Correction, Adjustment), BillingError> {
    let (_, qf, _) = bounds(&m.period)?;
    let list = partner.pricing_at(qf);
    let credit = m.kind == AdjustmentKind::Credit;
    let who = format!("{} ({}, {})", m.reason, m.author, m.adjustment_id);
    let adj = match m.amount {
        Some(a) => Adjustment {
            kind: if credit { LineKind::Credit } else { LineKind::Adjustment },
            description: format!("{} for {}: {who}", if credit { "Credit" } else { "Charge" }, m.period),
            from_period: m.period.clone(),
            bytes: 0,
            quantity: rust_decimal::Decimal::ZERO,
            unit: list.unit,
            currency: list.currency.code.clone(),
            amount: if credit { -a } else { a },
        },
        None => {
            let now = if credit { usage_now.saturating_sub(m.bytes) } else { usage_now.saturating_add(m.bytes) };
            price_correction(&list, usage_now, now, &m.period, Some(&who))
        }
    };
    let c = Correction {
        partner_id: partner.id.clone(),
        from_period: m.period.clone(),
        kind: if credit { "manual_credit" } else { "manual_charge" },
        bytes: adj.bytes,
        per_tracking: BTreeMap::new(),
        currency: adj.currency.clone(),
        amount: adj.amount.to_string(),
        adjustment: Some(m.clone()),
    };
    Ok((c, adj))
}

/// Compute the invoices of `period` as of now ([`Inputs::read`], then [`compute_at`]).
pub async fn compute(store: &Store, card: &RateCard, period: &str) -> Result<Computed, BillingError> {
    compute_at(store, card, period, &Inputs::read(store).await?).await
}

/// Compute the invoices of `period` from `inputs`: drafts for partners not
/// yet issued, carrying every correction of an earlier issued period (usage
/// now against what the ledger billed, in both directions; pending manual
/// adjustments); the ledger's invoice (unchanged) for the others, with
/// their pending corrections in the report. The same inputs give the same
/// result, whatever was written since they were read.
pub async fn compute_at(store: &Store, card: &RateCard, period: &str, inputs: &Inputs) -> Result<Computed, BillingError> {
    let (ym, _, _) = bounds(period)?;
    let period = format_period(ym.0, ym.1);
    let ledger = &inputs.ledger;
    let mut usage = UsageCache { store, snapshot: &inputs.snapshot, by_period: BTreeMap::new() };
    let all = usage.get(&period).await?.clone();
    let issued_periods = ledger.issued_periods();
    let settled = ledger.settled();
    let (mut invoices, mut partners, mut carried, mut pending) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut to_record = BTreeMap::new();
    for partner in &card.partners {
        let own = usage.own(partner, &period).await?;
        let open: Vec<&ManualAdjustment> =
            inputs.manual.iter().filter(|m| m.partner_id == partner.id && !settled.contains_key(&m.adjustment_id)).collect();
        let inv = if let Some(rec) = ledger.issued(&partner.id, &period) {
            if let Some((c, _, _)) = usage_correction(partner, &period, &own, &ledger.billed(&partner.id, &period))? {
                pending.push(c);
            }
            for m in open {
                let now = total("usage", usage.own(partner, &m.period).await?.values())?;
                pending.push(manual_line(partner, m, now)?.0);
            }
            rec.invoice.clone()
        } else {
            let mut rec = ToRecord {
                billed: own
                    .iter()
                    .map(|(t, b)| {
                        Ok(Billed { usage_period: period.clone(), tracking_id: t.clone(), bytes: to_i64("usage", i128::from(*b))? })
                    })
                    .collect::<Result<_, BillingError>>()?,
                settled: vec![],
            };
            let mut lines = Vec::new();
            for q in issued_periods.iter().filter(|q| **q < period) {
                let q_own = usage.own(partner, q).await?;
                if let Some((c, line, rows)) = usage_correction(partner, q, &q_own, &ledger.billed(&partner.id, q))? {
                    carried.push(c);
                    lines.extend(line);
                    rec.billed.extend(rows);
                }
            }
            for m in open {
                let now = total("usage", usage.own(partner, &m.period).await?.values())?;
                let (c, line) = manual_line(partner, m, now)?;
                if m.period < period {
                    carried.push(c);
                    lines.push(line);
                    rec.settled.push(m.adjustment_id.clone());
                } else {
                    pending.push(c); // for this period or later: the next invoice after it carries it
                }
            }
            to_record.insert(partner.id.clone(), rec);
            build_invoice(partner, ym, total("partner usage", own.values())?, &lines, 1)?
        };
        partners.push(PartnerSummary {
            partner_id: partner.id.clone(),
            invoice_number: inv.invoice_number.clone(),
            status: inv.status.as_str().into(),
            bytes: inv.total_bytes,
            currency: inv.currency.clone(),
            total: inv.total.to_string(),
        });
        invoices.push(inv);
    }
    let unowned: BTreeMap<String, u64> =
        all.iter().filter(|(t, _)| !t.is_empty() && card.partner_for_tracking_id(t).is_none()).map(|(t, b)| (t.clone(), *b)).collect();
    let report = RunReport {
        period: period.clone(),
        snapshot: inputs.snapshot.summary(),
        total_bytes: total("period usage", all.values())?,
        partners,
        unowned_tracking_ids: unowned,
        untracked_bytes: all.get("").copied().unwrap_or(0),
        adjustments: carried,
        pending_corrections: pending,
    };
    Ok(Computed { period, invoices, report, to_record })
}

/// Files written by a run.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// Each invoice's JSON document, `<out>/invoices/<invoice_number>.json`.
    pub invoices_json: Vec<PathBuf>,
    /// Each invoice's HTML rendering, `<out>/invoices/<invoice_number>.html`.
    pub invoices_html: Vec<PathBuf>,
    /// PDFs of the issued invoices (drafts get none).
    pub invoices_pdf: Vec<PathBuf>,
    /// Every line of the period's invoices, `<out>/invoice-lines-<period>.csv`.
    pub lines_csv: PathBuf,
    /// The run report ([`RunReport`]), `<out>/report-<period>.json`.
    pub report: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<(), BillingError> {
    write_bytes(path, text.as_bytes())
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<(), BillingError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| BillingError::Io { path: dir.to_path_buf(), source })?;
    }
    std::fs::write(path, bytes).map_err(|source| BillingError::Io { path: path.to_path_buf(), source })
}

/// Write the invoices (JSON, HTML, and PDF once issued), the lines CSV and
/// the report under `out`. Equal inputs give byte-identical files.
pub fn write_files(c: &Computed, out: &Path) -> Result<Written, BillingError> {
    let mut w = Written::default();
    for inv in &c.invoices {
        let json = out.join("invoices").join(format!("{}.json", inv.invoice_number));
        write(&json, &inv.to_json())?;
        let html = out.join("invoices").join(format!("{}.html", inv.invoice_number));
        write(&html, &render::invoice_html(inv))?;
        w.invoices_json.push(json);
        w.invoices_html.push(html);
        if inv.status == InvoiceStatus::Issued {
            let pdf = out.join("invoices").join(format!("{}.pdf", inv.invoice_number));
            write_bytes(&pdf, &crate::pdf::invoice_pdf(inv))?;
            w.invoices_pdf.push(pdf);
        }
    }
    w.lines_csv = out.join(format!("invoice-lines-{}.csv", c.period));
    write(&w.lines_csv, &render::lines_csv(&c.invoices))?;
    w.report = out.join(format!("report-{}.json", c.period));
    let mut report = serde_json::to_string_pretty(&c.report).expect("report serializes");
    report.push('\n');
    write(&w.report, &report)?;
    Ok(w)
}

/// `billing run`: compute, store the drafts, write the files.
pub async fn run(store: &Store, card: &RateCard, period: &str, out: &Path) -> Result<(Computed, Written), BillingError> {
    let c = compute(store, card, period).await?;
    let drafts: Vec<Invoice> = c.invoices.iter().filter(|i| i.status == InvoiceStatus::Draft).cloned().collect();
    store.save_drafts(&c.period, &drafts).await?;
    let w = write_files(&c, out)?;
    Ok((c, w))
}

/// Test hook: `BILLING_FAULT_AFTER=<step>` kills `billing issue` (SIGKILL)
/// right after that step of [`ISSUE_STEPS`], to prove that the next run
/// completes whatever a crash left. Only in builds with the
/// `fault-injection` feature (`runtime::fault`); a build without it refuses
/// the variable.
pub const FAULT_ENV: &str = "BILLING_FAULT_AFTER";

/// The steps of `billing issue` that write, in order: the lock taken, the
/// ledger rows, the `billing_invoices` rows, the `billing_invoice_lines`
/// rows, the files.
pub const ISSUE_STEPS: [&str; 5] = ["lock", "ledger", "invoices", "lines", "files"];

fn fault_after(step: &str) {
    runtime::fault::at(FAULT_ENV, step, runtime::fault::Fault::Kill);
}

/// `billing issue`: issue every draft of `period`, exclusively and
/// atomically. Holds the issue lock throughout (another `billing issue`
/// waits for it; one held longer than `lock_stale_secs` is taken over);
/// first completes the invoice tables from the ledger (an earlier run's
/// crash), then computes from one snapshot, then records each new invoice
/// with everything it billed as one ledger row (all in one INSERT), then
/// copies them to the invoice tables and writes the files. Invoices
/// already issued stay as they are; a second run issues nothing.
pub async fn issue(
    store: &Store,
    card: &RateCard,
    period: &str,
    out: &Path,
    lock_stale_secs: u64,
) -> Result<(Computed, Written), BillingError> {
    bounds(period)?;
    store.lock_issue(lock_stale_secs).await?;
    fault_after("lock");
    let result = issue_locked(store, card, period, out).await;
    store.unlock_issue().await;
    result
}

async fn issue_locked(store: &Store, card: &RateCard, period: &str, out: &Path) -> Result<(Computed, Written), BillingError> {
    let inputs = Inputs::read(store).await?;
    let completed = store.complete_invoices(&inputs.ledger).await? + store.complete_lines(&inputs.ledger).await?;
    if completed > 0 {
        events::IssuedInvoicesCompleted { invoices: completed }.emit();
    }
    let mut c = compute_at(store, card, period, &inputs).await?;
    let now = chrono::Utc::now();
    let issue_id: u64 = rand::random();
    let mut records = Vec::new();
    for inv in c.invoices.iter_mut().filter(|i| i.status == InvoiceStatus::Draft) {
        inv.issue(now)?;
        let r = c.to_record.remove(&inv.partner_id).unwrap_or_default();
        records.push(LedgerRecord {
            invoice: inv.clone(),
            issue_id,
            issued_at: now.timestamp() as u32,
            billed: r.billed,
            settled: r.settled,
            snapshot: c.report.snapshot.clone(),
        });
    }
    store.append_ledger(&records).await?;
    fault_after("ledger");
    // what counts is the ledger's record of each number (a concurrent issue
    // that got past the lock would show here: the first one counts)
    let ledger = store.ledger().await?;
    for inv in c.invoices.iter_mut() {
        if let Some(rec) = ledger.issued(&inv.partner_id, &c.period) {
            *inv = rec.invoice.clone();
        }
    }
    for p in c.report.partners.iter_mut() {
        p.status = InvoiceStatus::Issued.as_str().into();
    }
    store.complete_invoices(&ledger).await?;
    fault_after("invoices");
    store.complete_lines(&ledger).await?;
    fault_after("lines");
    let w = write_files(&c, out)?;
    fault_after("files");
    Ok((c, w))
}

/// `billing adjust`: record a manual credit or charge for `partner_id`'s
/// usage `period`, in bytes (priced at the margin of that period's usage
/// under its price list when an invoice carries it) or as an amount in the
/// partner's currency of that period. The next invoice issued for the
/// partner after `period` carries it; it never edits an issued invoice.
#[allow(clippy::too_many_arguments)]
pub async fn adjust(
    store: &Store,
    card: &RateCard,
    partner_id: &str,
    period: &str,
    kind: AdjustmentKind,
    bytes: Option<u64>,
    amount: Option<rust_decimal::Decimal>,
    reason: &str,
    author: &str,
) -> Result<ManualAdjustment, BillingError> {
    let (ym, from, _) = bounds(period)?;
    let bad = |m: String| Err(BillingError::Adjust(m));
    let Some(partner) = card.partners.iter().find(|p| p.id == partner_id) else {
        return bad(format!("partner {partner_id:?} is not in the rate card"));
    };
    let list = partner.pricing_at(from);
    match (bytes, amount) {
        (Some(0), None) => return bad("--bytes must be more than 0".into()),
        (Some(_), None) => {}
        (None, Some(a)) if a <= rust_decimal::Decimal::ZERO => {
            return bad("--amount must be more than 0 (--credit or --charge gives the sign)".into())
        }
        (None, Some(a)) if crate::pricing::round_money(a, &list.currency) != a => {
            return bad(format!("--amount {a} has more decimals than {} allows", list.currency.code));
        }
        (None, Some(_)) => {}
        _ => return bad("give exactly one of --bytes and --amount".into()),
    }
    if reason.trim().is_empty() || author.trim().is_empty() {
        return bad("--reason and --by are required (the audit trail)".into());
    }
    let m = ManualAdjustment {
        adjustment_id: format!("ADJ-{:016x}", rand::random::<u64>()),
        partner_id: partner.id.clone(),
        period: format_period(ym.0, ym.1),
        kind,
        bytes: bytes.unwrap_or(0),
        amount,
        reason: reason.trim().to_string(),
        author: author.trim().to_string(),
        created_at: chrono::Utc::now().timestamp() as u32,
    };
    store.record_adjustment(&m).await?;
    Ok(m)
}

/// `billing statements`: per partner, bytes per tracking id per day, and per
/// custom viewer data for the month, as CSV files under `out`.
pub async fn statements(store: &Store, card: &RateCard, period: &str, out: &Path) -> Result<Vec<PathBuf>, BillingError> {
    let (_, from, to) = bounds(period)?;
    let period = &period[..7];
    let mut files = Vec::new();
    for p in &card.partners {
        let mut daily = String::from("tracking_id,day,bytes_out,bytes_in\n");
        for (t, d, o, i) in store.daily(&p.tracking_ids, from, to).await? {
            daily.push_str(&format!("{},{d},{o},{i}\n", csv::text(&t)));
        }
        let path = out.join(format!("statement-{}-{period}-daily.csv", p.id));
        write(&path, &daily)?;
        files.push(path);
        let mut viewers = String::from("tracking_id,custom_viewer_data,viewers,bytes_out,bytes_in\n");
        for (t, cvd, n, o, i) in store.by_viewer_data(&p.tracking_ids, from, to).await? {
            viewers.push_str(&format!("{},{},{n},{o},{i}\n", csv::text(&t), csv::text(&cvd)));
        }
        let path = out.join(format!("statement-{}-{period}-viewers.csv", p.id));
        write(&path, &viewers)?;
        files.push(path);
    }
    Ok(files)
}

mod u64_str {
    pub fn serialize<S: serde::Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
}
