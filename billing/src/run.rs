//! Billing runs: drafts, issuing, files, the run report, reconciliation and
//! partner statements.

use crate::invoice::{build_invoice, format_period, parse_period, period_bounds, price_late_usage, Adjustment, Invoice, InvoiceStatus};
use crate::rates::RateCard;
use crate::render;
use crate::store::{BilledRow, Store, StoreError};
use chrono::NaiveDate;
use runtime::csv;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BillingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    RateCard(#[from] crate::rates::RateCardError),
    #[error(transparent)]
    Invoice(#[from] crate::invoice::InvoiceError),
    #[error("bad period {0:?}: use YYYY-MM")]
    Period(String),
    #[error("writing {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}: the byte total does not fit 64 bits")]
    Overflow(&'static str),
}

/// A checked sum of byte counts: an overflow is an error, never a wrap.
fn total<'a>(what: &'static str, bytes: impl IntoIterator<Item = &'a u64>) -> Result<u64, BillingError> {
    bytes.into_iter().try_fold(0u64, |a, b| a.checked_add(*b)).ok_or(BillingError::Overflow(what))
}

/// Usage of an already issued period that arrived after it was issued.
#[derive(Debug, Clone, Serialize)]
pub struct LateUsage {
    pub partner_id: String,
    pub from_period: String,
    #[serde(with = "u64_str")]
    pub bytes: u64,
    pub per_tracking: BTreeMap<String, u64>,
    pub currency: String,
    pub amount: String,
}

/// Per-partner line of the run report.
#[derive(Debug, Clone, Serialize)]
pub struct PartnerSummary {
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
    pub period: String,
    /// All `bytes_out` of the period, every tracking id and untracked.
    #[serde(with = "u64_str")]
    pub total_bytes: u64,
    pub partners: Vec<PartnerSummary>,
    /// Usage of tracking ids no partner owns: not billed, listed here.
    pub unowned_tracking_ids: BTreeMap<String, u64>,
    /// Usage without a tracking id: not billed.
    #[serde(with = "u64_str")]
    pub untracked_bytes: u64,
    /// Late usage of earlier issued periods billed as adjustments on this run's drafts.
    pub adjustments: Vec<LateUsage>,
    /// Late usage of this period, arrived after its invoice was issued: billed next period.
    pub pending_late_usage: Vec<LateUsage>,
}

/// The result of computing a period.
#[derive(Debug, Clone)]
pub struct Computed {
    pub period: String,
    pub invoices: Vec<Invoice>,
    pub report: RunReport,
    /// Per partner: its own usage per tracking id (for `billing_billed_usage`).
    usage_by_partner: BTreeMap<String, BTreeMap<String, u64>>,
}

fn bounds(period: &str) -> Result<((i32, u32), NaiveDate, NaiveDate), BillingError> {
    let ym = parse_period(period).ok_or_else(|| BillingError::Period(period.to_string()))?;
    let (from, to) = period_bounds(ym.0, ym.1).ok_or_else(|| BillingError::Period(period.to_string()))?;
    Ok((ym, from, to))
}

/// Compute the invoices of `period`: drafts for partners not yet issued, the
/// stored issued invoice (unchanged) for the others.
pub async fn compute(store: &Store, card: &RateCard, period: &str) -> Result<Computed, BillingError> {
    let (ym, from, to) = bounds(period)?;
    let period = format_period(ym.0, ym.1);
    let usage = store.usage_by_tracking(from, to).await?;
    let mut usage_cache: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    usage_cache.insert(period.clone(), usage.clone());
    let mut invoices = Vec::new();
    let mut partners = Vec::new();
    let mut adjustments_report = Vec::new();
    let mut pending = Vec::new();
    let mut usage_by_partner = BTreeMap::new();
    let mut issued_invoices = store.issued_invoices(&period).await?;
    let billed_all = store.billed().await?;
    let no_billing = BTreeMap::new();
    for partner in &card.partners {
        let own: BTreeMap<String, u64> = partner.tracking_ids.iter().filter_map(|t| usage.get(t).map(|b| (t.clone(), *b))).collect();
        let billed = billed_all.get(&partner.id).unwrap_or(&no_billing);
        let inv = if let Some(issued) = issued_invoices.remove(&partner.id) {
            if let Some(late) = late_usage(billed, &own, &period)? {
                let list = partner.pricing_at(from);
                let billed_bytes =
                    total("billed bytes", partner.tracking_ids.iter().filter_map(|t| billed.get(&(period.clone(), t.clone()))))?;
                let adj = price_late_usage(&list, billed_bytes, late.1, &period);
                pending.push(LateUsage {
                    partner_id: partner.id.clone(),
                    from_period: period.clone(),
                    bytes: late.1,
                    per_tracking: late.0,
                    currency: adj.currency.clone(),
                    amount: adj.amount.to_string(),
                });
            }
            issued
        } else {
            // late usage of every earlier issued period of this partner
            let earlier: BTreeSet<String> = billed.keys().map(|(p, _)| p.clone()).filter(|p| p < &period).collect();
            let mut adjustments: Vec<Adjustment> = Vec::new();
            for q in earlier {
                if !usage_cache.contains_key(&q) {
                    let (_, qf, qt) = bounds(&q)?;
                    usage_cache.insert(q.clone(), store.usage_by_tracking(qf, qt).await?);
                }
                let q_usage = &usage_cache[&q];
                let q_own: BTreeMap<String, u64> =
                    partner.tracking_ids.iter().filter_map(|t| q_usage.get(t).map(|b| (t.clone(), *b))).collect();
                if let Some((per_tracking, late)) = late_usage(billed, &q_own, &q)? {
                    let (_, qf, _) = bounds(&q)?;
                    let billed_bytes =
                        total("billed bytes", partner.tracking_ids.iter().filter_map(|t| billed.get(&(q.clone(), t.clone()))))?;
                    let adj = price_late_usage(&partner.pricing_at(qf), billed_bytes, late, &q);
                    adjustments_report.push(LateUsage {
                        partner_id: partner.id.clone(),
                        from_period: q.clone(),
                        bytes: late,
                        per_tracking,
                        currency: adj.currency.clone(),
                        amount: adj.amount.to_string(),
                    });
                    adjustments.push(adj);
                }
            }
            build_invoice(partner, ym, total("partner usage", own.values())?, &adjustments, 1)?
        };
        partners.push(PartnerSummary {
            partner_id: partner.id.clone(),
            invoice_number: inv.invoice_number.clone(),
            status: if inv.status == InvoiceStatus::Issued { "issued".into() } else { "draft".into() },
            bytes: inv.total_bytes,
            currency: inv.currency.clone(),
            total: inv.total.to_string(),
        });
        usage_by_partner.insert(partner.id.clone(), own);
        invoices.push(inv);
    }
    let unowned: BTreeMap<String, u64> =
        usage.iter().filter(|(t, _)| !t.is_empty() && card.partner_for_tracking_id(t).is_none()).map(|(t, b)| (t.clone(), *b)).collect();
    let report = RunReport {
        period: period.clone(),
        total_bytes: total("period usage", usage.values())?,
        partners,
        unowned_tracking_ids: unowned,
        untracked_bytes: usage.get("").copied().unwrap_or(0),
        adjustments: adjustments_report,
        pending_late_usage: pending,
    };
    Ok(Computed { period, invoices, report, usage_by_partner })
}

/// Usage now minus usage billed, per tracking id, when positive anywhere.
/// Late usage per tracking id, and its total.
type Late = (BTreeMap<String, u64>, u64);

fn late_usage(
    billed: &BTreeMap<(String, String), u64>,
    usage_now: &BTreeMap<String, u64>,
    period: &str,
) -> Result<Option<Late>, BillingError> {
    let per: BTreeMap<String, u64> = usage_now
        .iter()
        .filter_map(|(t, now)| {
            let b = billed.get(&(period.to_string(), t.clone())).copied().unwrap_or(0);
            (*now > b).then(|| (t.clone(), now - b))
        })
        .collect();
    let late = total("late usage", per.values())?;
    Ok((late > 0).then_some((per, late)))
}

/// Files written by a run.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub invoices_json: Vec<PathBuf>,
    pub invoices_html: Vec<PathBuf>,
    pub lines_csv: PathBuf,
    pub report: PathBuf,
}

fn write(path: &Path, text: &str) -> Result<(), BillingError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| BillingError::Io { path: dir.to_path_buf(), source })?;
    }
    std::fs::write(path, text).map_err(|source| BillingError::Io { path: path.to_path_buf(), source })
}

/// Write the invoices (JSON, HTML), the lines CSV and the report under `out`.
/// Equal inputs give byte-identical files.
pub fn write_files(c: &Computed, out: &Path) -> Result<Written, BillingError> {
    let mut w = Written::default();
    for inv in &c.invoices {
        let json = out.join("invoices").join(format!("{}.json", inv.invoice_number));
        write(&json, &inv.to_json())?;
        let html = out.join("invoices").join(format!("{}.html", inv.invoice_number));
        write(&html, &render::invoice_html(inv))?;
        w.invoices_json.push(json);
        w.invoices_html.push(html);
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

/// `billing issue`: compute, then issue every draft: the invoice becomes
/// final and what it billed is recorded. Already issued invoices stay as they are.
pub async fn issue(store: &Store, card: &RateCard, period: &str, out: &Path) -> Result<(Computed, Written), BillingError> {
    let mut c = compute(store, card, period).await?;
    let now = chrono::Utc::now();
    let mut newly = Vec::new();
    let mut billed = Vec::new();
    for inv in c.invoices.iter_mut().filter(|i| i.status == InvoiceStatus::Draft) {
        inv.issue(now)?;
        let at = now.timestamp() as u32;
        let row = |usage_period: &str, tracking_id: &str, bytes: u64| BilledRow {
            invoice_number: inv.invoice_number.clone(),
            partner_id: inv.partner_id.clone(),
            billed_in_period: c.period.clone(),
            usage_period: usage_period.to_string(),
            tracking_id: tracking_id.to_string(),
            bytes,
            issued_at: at,
        };
        for (t, b) in c.usage_by_partner.get(&inv.partner_id).into_iter().flatten() {
            billed.push(row(&c.period, t, *b));
        }
        for adj in c.report.adjustments.iter().filter(|a| a.partner_id == inv.partner_id) {
            for (t, b) in &adj.per_tracking {
                billed.push(row(&adj.from_period, t, *b));
            }
        }
        newly.push(inv.clone());
    }
    for p in c.report.partners.iter_mut() {
        p.status = "issued".into();
    }
    // invoices first: a crash before the billed rows leaves an issued invoice
    // whose usage looks unbilled, which reconciliation reports
    store.save(&newly).await?;
    store.save_billed(&billed).await?;
    let w = write_files(&c, out)?;
    Ok((c, w))
}

/// One reconciliation check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The tracking ids whose bytes differ between `a` and `b`, as `"id": a vs b`.
fn differences(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> Vec<String> {
    a.keys()
        .chain(b.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|t| a.get(*t) != b.get(*t))
        .map(|t| format!("{t:?}: {} vs {}", a.get(t).copied().unwrap_or(0), b.get(t).copied().unwrap_or(0)))
        .collect()
}

/// `billing reconcile`: prove that every view of a period's bytes agrees.
pub async fn reconcile(store: &Store, card: &RateCard, period: &str) -> Result<Vec<Check>, BillingError> {
    let (_, from, to) = bounds(period)?;
    let period = &period[..7];
    let tracking = store.total("usage_by_tracking", "window_start", from, to).await?;
    let viewer = store.total("usage_by_viewer", "window_start", from, to).await?;
    let hourly = store.total("usage_by_tracking_hourly", "hour", from, to).await?;
    let daily = store.total("usage_by_tracking_daily", "day", from, to).await?;
    let viewer_daily = store.total("usage_by_viewer_daily", "day", from, to).await?;
    let mut checks = Vec::new();
    let base = total("usage_by_tracking", tracking.values())?;
    for (name, m) in [
        ("usage_by_viewer", &viewer),
        ("usage_by_tracking_hourly", &hourly),
        ("usage_by_tracking_daily", &daily),
        ("usage_by_viewer_daily", &viewer_daily),
    ] {
        let diff = differences(&tracking, m);
        checks.push(Check {
            name: format!("usage_by_tracking = {name} (per tracking id)"),
            ok: diff.is_empty(),
            detail: if diff.is_empty() { format!("{base} bytes") } else { diff.join("; ") },
        });
    }
    // the same bytes counted on the log tables under fences computed here from
    // the claims, without the views' join: a join that drops or repeats rows
    // (as `ANY` came to on current ClickHouse) fails here
    let fences = store.claim_fences().await?;
    for (view, log, m) in [("usage_by_tracking", "usage_by_tracking_log", &tracking), ("usage_by_viewer", "usage_by_viewer_log", &viewer)] {
        let direct = store.log_total(log, &fences, from, to).await?;
        let diff = differences(m, &direct);
        checks.push(Check {
            name: format!("{view} = {log} under the claims (per tracking id, without the views' join)"),
            ok: diff.is_empty(),
            detail: if diff.is_empty() { format!("{} bytes", total(log, direct.values())?) } else { diff.join("; ") },
        });
    }
    let billed = store.billed_for_period(period).await?;
    let owned = total("owned usage", tracking.iter().filter(|(t, _)| card.partner_for_tracking_id(t).is_some()).map(|(_, b)| b))?;
    let unowned = total(
        "unowned usage",
        tracking.iter().filter(|(t, _)| !t.is_empty() && card.partner_for_tracking_id(t).is_none()).map(|(_, b)| b),
    )?;
    let untracked = tracking.get("").copied().unwrap_or(0);
    checks.push(Check {
        name: "owned + unowned + untracked = total".into(),
        ok: total("usage", [&owned, &unowned, &untracked])? == base,
        detail: format!("{owned} + {unowned} + {untracked} = {base}"),
    });
    let over: Vec<String> = billed
        .iter()
        .filter(|(t, b)| tracking.get(*t).copied().unwrap_or(0) < **b)
        .map(|(t, b)| format!("{t:?}: billed {b} > usage {}", tracking.get(t).copied().unwrap_or(0)))
        .collect();
    let billed_total = total("billed usage", billed.values())?;
    let billed_ids_usage = total("usage of billed tracking ids", billed.keys().filter_map(|t| tracking.get(t)))?;
    let pending = billed_ids_usage.saturating_sub(billed_total);
    checks.push(Check {
        name: "billed <= usage (per tracking id); the difference is late usage not yet billed".into(),
        ok: over.is_empty(),
        detail: if over.is_empty() { format!("billed {billed_total}, late not yet billed {pending}") } else { over.join("; ") },
    });
    // issued invoices: usage lines sum to total_bytes, which equals what was recorded as billed
    let issued = store.issued_invoices(period).await?;
    let billed_all = store.billed().await?;
    for partner in &card.partners {
        if let Some(inv) = issued.get(&partner.id) {
            let lines = total("invoice lines", inv.lines.iter().filter(|l| l.kind == crate::invoice::LineKind::Usage).map(|l| &l.bytes))?;
            let recorded = total(
                "recorded billed usage",
                billed_all.get(&partner.id).into_iter().flatten().filter(|((p, _), _)| p == period).map(|(_, b)| b),
            )?;
            let late_billed_later = recorded.saturating_sub(inv.total_bytes);
            let ok = lines == inv.total_bytes && recorded >= inv.total_bytes;
            checks.push(Check {
                name: format!("invoice {} lines = total_bytes = billed usage", inv.invoice_number),
                ok,
                detail: format!(
                    "lines {lines}, total_bytes {}, recorded {recorded} (of which late, billed later: {late_billed_later})",
                    inv.total_bytes
                ),
            });
        }
    }
    Ok(checks)
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
