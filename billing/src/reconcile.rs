//! `billing reconcile`: every view of a period's bytes agrees (the fenced
//! views, the rollups, the log tables counted under fences computed here,
//! billing's snapshot), each invoice agrees with the ledger, and nothing is
//! billed twice.

use crate::invoice::LineKind;
use crate::ledger::differences;
use crate::rates::RateCard;
use crate::run::{bounds, total, BillingError, Inputs};
use crate::store::log_count::{LogCounting, Recounted};
use crate::store::Store;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One reconciliation check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What is compared, in words.
    pub name: String,
    /// The two sides agree; `billing reconcile` fails (exit 1) if any check does not.
    pub ok: bool,
    /// The figures compared, or where they differ.
    pub detail: String,
}

/// The tracking ids whose bytes differ between `a` and `b`, as `"id": a vs b`.
fn mismatches(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> Vec<String> {
    a.keys()
        .chain(b.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .filter(|t| a.get(*t) != b.get(*t))
        .map(|t| format!("{t:?}: {} vs {}", a.get(t).copied().unwrap_or(0), b.get(t).copied().unwrap_or(0)))
        .collect()
}

/// `billing reconcile`: prove that every view of a period's bytes agrees
/// ([`reconcile_with`], counting the log from the previous count on).
pub async fn reconcile(store: &Store, card: &RateCard, period: &str) -> Result<Vec<Check>, BillingError> {
    reconcile_with(store, card, period, LogCounting::Incremental).await
}

/// [`reconcile`], counting the log tables as `counting` says (migration 12).
///
/// **What it reads, and so how long it takes.** The rollups are compared at
/// their own grain, per tracking id: `usage_by_tracking_daily` (the base)
/// with the hourly, the by-stream and the viewer daily rollups, each the
/// sealed rows of its grain plus the tail. The log tables are counted under
/// the claims, each row once per period (the count up to the latest seal is
/// recorded, and later runs read only the rows above it), and compared with
/// the daily rollups; the minute views' tails, the fenced log rows above the
/// latest seal and where a fence join that drops or repeats rows would show,
/// are compared with the same rows counted on the log. So after a period's
/// first count, a run reads the rollups' rows (one per key and hour or day)
/// and what arrived since the previous one, not the month's minute rows.
/// [`LogCounting::Recount`] reads everything: every log row, and the minute
/// views whole, compared with the base too.
pub async fn reconcile_with(store: &Store, card: &RateCard, period: &str, counting: LogCounting) -> Result<Vec<Check>, BillingError> {
    let (_, from, to) = bounds(period)?;
    let period = &period[..7];
    let base_name = "usage_by_tracking_daily";
    let daily = store.total(base_name, "day", from, to).await?;
    let mut compared = vec![
        ("usage_by_tracking_hourly", store.total("usage_by_tracking_hourly", "hour", from, to).await?),
        ("usage_by_stream_daily", store.total("usage_by_stream_daily", "day", from, to).await?),
        ("usage_by_viewer_daily", store.total("usage_by_viewer_daily", "day", from, to).await?),
    ];
    let full = counting == LogCounting::Recount;
    if full {
        compared.push(("usage_by_tracking", store.total("usage_by_tracking", "window_start", from, to).await?));
        compared.push(("usage_by_viewer", store.total("usage_by_viewer", "window_start", from, to).await?));
    }
    let mut checks = Vec::new();
    let base = total(base_name, daily.values())?;
    for (name, m) in &compared {
        let diff = mismatches(&daily, m);
        checks.push(Check {
            name: format!("{base_name} = {name} (per tracking id)"),
            ok: diff.is_empty(),
            detail: if diff.is_empty() { format!("{base} bytes") } else { diff.join("; ") },
        });
    }
    let viewer_daily = compared.iter().find(|(n, _)| *n == "usage_by_viewer_daily").map(|(_, m)| m).expect("compared above");
    // the same bytes counted on the log tables under fences computed here from
    // the claims, without the views' join: a join that drops or repeats rows
    // (as `ANY` came to on current ClickHouse) fails here
    // (the seal before the fences: every epoch with rows below it is among them)
    let latest = store.latest_seal().await?;
    let fences = store.claim_fences().await?;
    for (view, log, rollup) in
        [("usage_by_tracking", "usage_by_tracking_log", &daily), ("usage_by_viewer", "usage_by_viewer_log", viewer_daily)]
    {
        let count = store.audited_log_total(log, &fences, &latest, period, from, to, counting).await?;
        // the whole view (a recount), else its daily rollup, and its tail
        let whole = match compared.iter().find(|(n, _)| *n == view) {
            Some((_, m)) => m,
            None => rollup,
        };
        let mut diff: Vec<String> = mismatches(whole, &count.bytes);
        let tail = store.tail_total(view, from, to).await?;
        diff.extend(mismatches(&tail, &count.tail).into_iter().map(|d| format!("above the latest seal {d}")));
        let recorded = |r: u64| if r > 0 { format!("; recorded up to seal #{r}") } else { String::new() };
        let how = match (count.counted_before, count.recorded, count.recounted) {
            (0, r, Some(Recounted::FencesChanged { seal })) => {
                format!("every row counted: the fences below seal #{seal} changed since it was counted (a late claim){}", recorded(r))
            }
            (0, r, Some(Recounted::RowsChanged { seal, then, now })) => format!(
                "every row counted: rows below seal #{seal} were written or deleted since it was counted ({then} recent rows then, {now} now){}",
                recorded(r)
            ),
            (0, r, _) => format!("every row counted{}", recorded(r)),
            (b, r, _) if b == r => format!("rows up to seal #{b} as counted before, the rest counted now"),
            (b, r, _) => format!("rows up to seal #{b} as counted before, the rest counted now{}", recorded(r)),
        };
        let against = if full { format!("{view} whole") } else { format!("{view}'s tail and the daily rollup") };
        checks.push(Check {
            name: format!("{view} = {log} under the claims (per tracking id, without the views' join)"),
            ok: diff.is_empty(),
            detail: if diff.is_empty() {
                format!("{} bytes ({how})", total(log, count.bytes.values())?)
            } else {
                format!("{} ({how}; compared with {against})", diff.join("; "))
            },
        });
    }
    // billing's side, from one snapshot: what the invoices price and bill
    let inputs = Inputs::read(store).await?;
    let ledger = &inputs.ledger;
    let at = store.usage_at(&inputs.snapshot, from, to).await?;
    let base = total("usage", at.values())?;
    let owned = total("owned usage", at.iter().filter(|(t, _)| card.partner_for_tracking_id(t).is_some()).map(|(_, b)| b))?;
    let unowned =
        total("unowned usage", at.iter().filter(|(t, _)| !t.is_empty() && card.partner_for_tracking_id(t).is_none()).map(|(_, b)| b))?;
    let untracked = at.get("").copied().unwrap_or(0);
    checks.push(Check {
        name: "owned + unowned + untracked = total (at the billing snapshot)".into(),
        ok: total("usage", [&owned, &unowned, &untracked])? == base,
        detail: format!("{owned} + {unowned} + {untracked} = {base}; snapshot {}", inputs.snapshot.summary()),
    });
    // billed twice: a second ledger row of an invoice number, an adjustment carried twice
    let twice: Vec<String> = ledger.ignored.iter().map(|(n, id)| format!("{n} (issue {id:016x})")).collect();
    checks.push(Check {
        name: "one ledger record per invoice number".into(),
        ok: twice.is_empty(),
        detail: if twice.is_empty() {
            format!("{} invoices issued", ledger.records.len())
        } else {
            format!("issued twice (the first counts; remove the others after review): {}", twice.join(", "))
        },
    });
    let carried_twice: Vec<String> = ledger.settled().into_iter().filter(|(_, n)| *n > 1).map(|(id, n)| format!("{id} x{n}")).collect();
    checks.push(Check {
        name: "each manual adjustment carried by one invoice at most".into(),
        ok: carried_twice.is_empty(),
        detail: if carried_twice.is_empty() { format!("{} adjustments recorded", inputs.manual.len()) } else { carried_twice.join(", ") },
    });
    for partner in &card.partners {
        let own: BTreeMap<String, u64> = partner.tracking_ids.iter().filter_map(|t| at.get(t).map(|b| (t.clone(), *b))).collect();
        let Some(rec) = ledger.issued(&partner.id, period) else { continue };
        let inv = &rec.invoice;
        let lines = total("invoice lines", inv.lines.iter().filter(|l| l.kind == LineKind::Usage).map(|l| &l.bytes))?;
        let recorded: i128 = rec.billed.iter().filter(|b| b.usage_period == period).map(|b| i128::from(b.bytes)).sum();
        checks.push(Check {
            name: format!("invoice {} usage lines = total_bytes = its billed usage", inv.invoice_number),
            ok: lines == inv.total_bytes && recorded == i128::from(inv.total_bytes),
            detail: format!("lines {lines}, total_bytes {}, billed by it {recorded}", inv.total_bytes),
        });
        let billed = ledger.billed(&partner.id, period);
        let diffs = differences(&own, &billed);
        let billed_sum: i128 = billed.values().sum();
        let (late, lower): (i128, i128) = diffs.values().fold((0, 0), |(l, w), d| if *d > 0 { (l + d, w) } else { (l, w - d) });
        checks.push(Check {
            name: format!("{} {period}: billed = usage (a difference is a correction for the next invoice)", partner.id),
            ok: true,
            detail: if diffs.is_empty() {
                format!("billed {billed_sum} = usage")
            } else {
                format!("billed {billed_sum}, usage {}: late usage {late} and lower usage {lower} pending", total("usage", own.values())?)
            },
        });
    }
    Ok(checks)
}
