//! The standing of every allowance against one period's exact usage, and
//! what follows from it: which thresholds are reached, whether a tracking
//! id's new viewers are refused, and which notifications are due.
//!
//! # Exactness
//! * Usage is the exact byte count per tracking id of the fenced aggregates
//!   (the numbers billing invoices); a partner's is the checked sum over its
//!   tracking ids.
//! * A threshold `t` is reached when `used * 100 >= t * allowance`, compared
//!   exactly (integers for bytes, decimals for money), never through a
//!   rounded percentage; the percentage shown is rounded down to 2 places,
//!   so it never shows 100.00 before the allowance is used up.
//! * A money allowance compares the usage's price (billing's `price`, the
//!   invoice's usage subtotal, minimum commitment excluded) under the price
//!   list in force at the period's start. A tracking id's money allowance
//!   prices that tracking id's bytes alone on the partner's price list.
//! * An allowance is used up when `used * 100 >= allowance * (100 + grace)`.

use crate::config::{Allowance, Entitlement, Entitlements, Policy};
use billing::rates::RateCard;
use chrono::{Datelike, NaiveDate};
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;
use std::collections::BTreeMap;

/// How much of one allowance the period's usage took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standing {
    /// The allowance.
    pub entitlement: Entitlement,
    /// Bytes used in the period by what the allowance covers.
    pub used_bytes: u64,
    /// Their price, for a money allowance.
    pub used_spend: Option<Decimal>,
    /// The partner's currency (ISO 4217).
    pub currency: String,
    /// `used / allowance` in percent, rounded down to 2 decimal places.
    pub percent: Decimal,
    /// The thresholds reached, ascending.
    pub reached: Vec<u32>,
    /// Used up, grace included: the policy applies.
    pub exhausted: bool,
}

/// Usage could not be summed: more bytes than a `u64` holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the usage of partner {partner} overflows 64 bits")]
pub struct UsageOverflow {
    /// The partner whose sum overflowed.
    pub partner: String,
}

/// The first day of the period (calendar month, UTC) that holds `day`.
pub fn period_start(day: NaiveDate) -> NaiveDate {
    day.with_day(1).expect("every month has a first day")
}

/// The period's label, `YYYY-MM`.
pub fn period_label(start: NaiveDate) -> String {
    start.format("%Y-%m").to_string()
}

/// The standing of every allowance of `ent` for the period that starts on
/// `period_start`, from `usage`: bytes per tracking id in that period.
pub fn evaluate(
    ent: &Entitlements,
    card: &RateCard,
    period_start: NaiveDate,
    usage: &BTreeMap<String, u64>,
) -> Result<Vec<Standing>, UsageOverflow> {
    let mut out = Vec::with_capacity(ent.entitlements.len());
    for e in &ent.entitlements {
        let Some(partner) = card.partner(&e.partner) else { continue }; // validated against the same card
        let used_bytes = match &e.tracking_id {
            Some(t) => usage.get(t).copied().unwrap_or(0),
            None => partner
                .tracking_ids
                .iter()
                .try_fold(0u64, |sum, t| sum.checked_add(usage.get(t).copied().unwrap_or(0)))
                .ok_or_else(|| UsageOverflow { partner: e.partner.clone() })?,
        };
        let list = partner.pricing_at(period_start);
        let (used_spend, ratio) = match e.allowance {
            Allowance::Bytes(allowance) => (None, Ratio::Bytes { used: used_bytes, allowance }),
            Allowance::Spend(allowance) => {
                let spend = billing::pricing::price(used_bytes, &list).usage_subtotal;
                (Some(spend), Ratio::Spend { used: spend, allowance })
            }
        };
        out.push(Standing {
            reached: ent.thresholds.iter().copied().filter(|&t| ratio.at_least(t)).collect(),
            exhausted: ratio.at_least(100 + e.grace_percent),
            percent: ratio.percent(),
            entitlement: e.clone(),
            used_bytes,
            used_spend,
            currency: list.currency.code.clone(),
        });
    }
    Ok(out)
}

/// `used` against `allowance`, compared exactly.
enum Ratio {
    Bytes { used: u64, allowance: u64 },
    Spend { used: Decimal, allowance: Decimal },
}

impl Ratio {
    /// `used * 100 >= percent * allowance`.
    fn at_least(&self, percent: u32) -> bool {
        match *self {
            Ratio::Bytes { used, allowance } => used as u128 * 100 >= percent as u128 * allowance as u128,
            // both sides are far inside Decimal's range (allowances have at
            // most 4 places, prices are validated); an overflow would mean
            // an absurd spend, which reaches every threshold
            Ratio::Spend { used, allowance } => {
                match (used.checked_mul(Decimal::ONE_HUNDRED), allowance.checked_mul(Decimal::from(percent))) {
                    (Some(u), Some(a)) => u >= a,
                    _ => true,
                }
            }
        }
    }

    /// The percentage, rounded down to 2 places.
    fn percent(&self) -> Decimal {
        match *self {
            Ratio::Bytes { used, allowance } => {
                let hundredths = used as u128 * 10_000 / allowance as u128;
                Decimal::from_i128_with_scale(hundredths.min(i64::MAX as u128) as i128, 2)
            }
            Ratio::Spend { used, allowance } => {
                (used * Decimal::ONE_HUNDRED / allowance).round_dp_with_strategy(2, RoundingStrategy::ToZero).max(Decimal::ZERO)
            }
        }
    }
}

/// Where a tracking id's viewer is being checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// A viewer asking to start watching (token verification).
    Admission,
    /// The media server re-verifying a viewer already watching.
    Reverification,
}

/// The used-up allowance that refuses a viewer of `tracking_id`, admitted
/// by Subscribe token `token_id`, at `check`, if any: the tracking id's own,
/// else its partner's. `notify` never refuses; `soft` refuses admissions;
/// `hard` also re-verifications; a token in the allowance's
/// `exempt_token_ids` is never refused.
pub fn refusal<'a>(
    standings: &'a [Standing],
    card: &RateCard,
    tracking_id: &str,
    token_id: Option<i64>,
    check: Check,
) -> Option<&'a Standing> {
    let partner = card.partner_for_tracking_id(tracking_id)?;
    let refuses = |s: &&Standing| {
        s.exhausted
            && !token_id.is_some_and(|id| s.entitlement.exempt_token_ids.contains(&id))
            && match s.entitlement.policy {
                Policy::Notify => false,
                Policy::Soft => check == Check::Admission,
                Policy::Hard => true,
            }
    };
    let own = standings.iter().filter(|s| s.entitlement.tracking_id.as_deref() == Some(tracking_id)).find(refuses);
    own.or_else(|| standings.iter().filter(|s| s.entitlement.partner == partner.id && s.entitlement.tracking_id.is_none()).find(refuses))
}

impl Standing {
    /// What a refusal says: which allowance, how much of it was used.
    pub fn refusal_message(&self) -> String {
        let whose = match &self.entitlement.tracking_id {
            Some(t) => format!("the monthly allowance of tracking id {t} (partner {})", self.entitlement.partner),
            None => format!("partner {}'s monthly allowance", self.entitlement.partner),
        };
        format!("{whose} is used up: {} of {} ({}%)", self.used_text(), self.allowance_text(), self.percent)
    }

    /// What is left of the allowance (none once used up; grace is not counted).
    pub fn remaining(&self) -> Allowance {
        match self.entitlement.allowance {
            Allowance::Bytes(b) => Allowance::Bytes(b.saturating_sub(self.used_bytes)),
            Allowance::Spend(a) => Allowance::Spend((a - self.used_spend.unwrap_or_default()).max(Decimal::ZERO)),
        }
    }

    /// The allowance, with its unit.
    pub fn allowance_text(&self) -> String {
        match self.entitlement.allowance {
            Allowance::Bytes(b) => format!("{b} bytes"),
            Allowance::Spend(s) => format!("{s} {}", self.currency),
        }
    }

    /// The usage, in the allowance's unit.
    pub fn used_text(&self) -> String {
        match self.used_spend {
            Some(s) => format!("{s} {}", self.currency),
            None => format!("{} bytes", self.used_bytes),
        }
    }
}

/// A threshold reached in a period: sent once, whatever happens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// `allowance.threshold_reached`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The notification's identity: `partner/tracking id or -/period/threshold`.
    /// Receivers de-duplicate on it.
    pub id: String,
    /// The partner.
    pub partner: String,
    /// The tracking id of a tracking id's allowance.
    pub tracking_id: Option<String>,
    /// `YYYY-MM`.
    pub period: String,
    /// The threshold reached, in percent.
    pub threshold: u32,
    /// The allowance: `{"bytes": "..."}` or `{"spend": "...", "currency": "..."}`.
    pub allowance: serde_json::Value,
    /// The usage when it was found, in the same unit.
    pub used: serde_json::Value,
    /// The percentage when it was found (rounded down to 2 places).
    pub percent: String,
    /// `notify`, `soft` or `hard`.
    pub policy: &'static str,
    /// Whether the policy applies now.
    pub exhausted: bool,
}

/// The notification's type.
pub const NOTIFICATION_TYPE: &str = "allowance.threshold_reached";

impl Notification {
    /// The notification of threshold `threshold` of `s` in the period `period` (`YYYY-MM`).
    pub fn new(s: &Standing, period: &str, threshold: u32) -> Notification {
        let e = &s.entitlement;
        let (allowance, used) = match e.allowance {
            Allowance::Bytes(b) => {
                (serde_json::json!({ "bytes": b.to_string() }), serde_json::json!({ "bytes": s.used_bytes.to_string() }))
            }
            Allowance::Spend(a) => (
                serde_json::json!({ "spend": a.to_string(), "currency": s.currency }),
                serde_json::json!({ "spend": s.used_spend.unwrap_or_default().to_string(), "currency": s.currency, "bytes": s.used_bytes.to_string() }),
            ),
        };
        Notification {
            kind: NOTIFICATION_TYPE,
            id: notification_id(&e.partner, e.tracking_id.as_deref(), period, threshold),
            partner: e.partner.clone(),
            tracking_id: e.tracking_id.clone(),
            period: period.to_string(),
            threshold,
            allowance,
            used,
            percent: s.percent.to_string(),
            policy: e.policy.as_str(),
            exhausted: s.exhausted,
        }
    }
}

/// The identity of a notification.
pub fn notification_id(partner: &str, tracking_id: Option<&str>, period: &str, threshold: u32) -> String {
    format!("{partner}/{}/{period}/{threshold}", tracking_id.unwrap_or("-"))
}

/// Every notification the standings call for in `period`, in order: each
/// reached threshold of each allowance (the caller keeps those already sent).
pub fn notifications(standings: &[Standing], period: &str) -> Vec<Notification> {
    standings.iter().flat_map(|s| s.reached.iter().map(move |&t| Notification::new(s, period, t))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use proptest::prelude::*;

    fn card() -> RateCard {
        billing::rates::parse_rate_card(
            r#"
[[partner]]
id = "acme"
name = "Acme"
tracking_ids = ["acme-web", "acme-app"]
currency = "EUR"
unit = "GB"
pricing = "graduated"
minimum_commitment = "1000.00"
tiers = [ { up_to = "10", unit_price = "0.10" }, { unit_price = "0.05" } ]

[[partner]]
id = "globex"
name = "Globex"
tracking_ids = ["globex-web"]
currency = "USD"
unit = "GB"
pricing = "flat"
tiers = [ { unit_price = "1" } ]
"#,
            "rates.toml",
        )
        .unwrap()
    }

    const GB: u64 = 1_000_000_000;

    fn usage(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(t, b)| (t.to_string(), *b)).collect()
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
    }

    #[test]
    fn bytes_thresholds_are_reached_exactly_at_their_byte() {
        let ent = parse("[[partner]]\nid = \"globex\"\nbytes = \"1000\"\npolicy = \"soft\"", "e", &card()).unwrap();
        let at = |b: u64| evaluate(&ent, &card(), day(), &usage(&[("globex-web", b)])).unwrap().remove(0);
        assert_eq!(at(499).reached, Vec::<u32>::new());
        assert_eq!(at(500).reached, vec![50]);
        assert_eq!(at(799).percent, "79.90".parse::<Decimal>().unwrap());
        assert_eq!(at(800).reached, vec![50, 80]);
        assert!(!at(999).exhausted);
        assert_eq!(at(999).percent, "99.90".parse::<Decimal>().unwrap());
        let full = at(1000);
        assert!(full.exhausted && full.reached == vec![50, 80, 100]);
        assert_eq!(full.percent, Decimal::ONE_HUNDRED);
        assert_eq!(at(0).percent, Decimal::ZERO);
        // another partner's usage counts for nothing here
        assert_eq!(evaluate(&ent, &card(), day(), &usage(&[("acme-web", 5000)])).unwrap()[0].used_bytes, 0);
    }

    #[test]
    fn a_partners_allowance_sums_its_tracking_ids_and_a_tracking_allowance_its_own() {
        let text = "[[partner]]\nid = \"acme\"\nbytes = \"100\"\n[[partner.tracking]]\ntracking_id = \"acme-app\"\nbytes = \"10\"";
        let ent = parse(text, "e", &card()).unwrap();
        let s = evaluate(&ent, &card(), day(), &usage(&[("acme-web", 60), ("acme-app", 5), ("globex-web", 1000)])).unwrap();
        assert_eq!((s[0].used_bytes, s[1].used_bytes), (65, 5));
        assert_eq!((s[0].reached.clone(), s[1].reached.clone()), (vec![50], vec![50]));
        let overflow = evaluate(&ent, &card(), day(), &usage(&[("acme-web", u64::MAX), ("acme-app", 1)]));
        assert_eq!(overflow.unwrap_err(), UsageOverflow { partner: "acme".into() });
    }

    #[test]
    fn a_money_allowance_compares_the_usage_subtotal_without_the_minimum_commitment() {
        // graduated: 10 GB at 0.10, then 0.05: 30 GB cost 1.00 + 1.00 = 2.00 EUR
        let ent = parse("[[partner]]\nid = \"acme\"\nspend = \"4.00\"", "e", &card()).unwrap();
        let s = evaluate(&ent, &card(), day(), &usage(&[("acme-web", 30 * GB)])).unwrap().remove(0);
        assert_eq!(s.used_spend, Some("2.00".parse().unwrap()));
        assert_eq!(s.reached, vec![50]);
        assert_eq!(s.percent, "50.00".parse::<Decimal>().unwrap());
        assert_eq!(s.currency, "EUR");
        // one byte short of 70 GB: 1.00 + 3.00 = 4.00 after rounding to cents, the price invoices would show
        let s = evaluate(&ent, &card(), day(), &usage(&[("acme-web", 70 * GB - 1)])).unwrap().remove(0);
        assert_eq!(s.used_spend, Some("4.00".parse().unwrap()));
        assert!(s.exhausted);
        assert_eq!(s.remaining(), Allowance::Spend(Decimal::ZERO));
        let s = evaluate(&ent, &card(), day(), &usage(&[("acme-web", 30 * GB)])).unwrap().remove(0);
        assert_eq!(s.remaining(), Allowance::Spend("2.00".parse().unwrap()));
    }

    #[test]
    fn grace_delays_the_policy_not_the_notifications() {
        let ent = parse("[[partner]]\nid = \"globex\"\nbytes = \"1000\"\npolicy = \"hard\"\ngrace_percent = 10", "e", &card()).unwrap();
        let s = evaluate(&ent, &card(), day(), &usage(&[("globex-web", 1099)])).unwrap();
        assert!(s[0].reached.contains(&100) && !s[0].exhausted);
        assert!(refusal(&s, &card(), "globex-web", None, Check::Admission).is_none());
        let s = evaluate(&ent, &card(), day(), &usage(&[("globex-web", 1100)])).unwrap();
        assert!(s[0].exhausted);
        assert!(refusal(&s, &card(), "globex-web", None, Check::Admission).is_some());
    }

    #[test]
    fn policies_decide_who_is_refused_and_where() {
        let text = "[[partner]]\nid = \"acme\"\nbytes = \"100\"\npolicy = \"soft\"\nexempt_token_ids = [42]\n\
                    [[partner.tracking]]\ntracking_id = \"acme-app\"\nbytes = \"10\"\npolicy = \"hard\"\n\
                    [[partner]]\nid = \"globex\"\nbytes = \"10\"";
        let ent = parse(text, "e", &card()).unwrap();
        let card = card();
        // acme's own allowance used up (soft); acme-app's too (hard); globex's (notify)
        let s = evaluate(&ent, &card, day(), &usage(&[("acme-web", 90), ("acme-app", 10), ("globex-web", 50)])).unwrap();
        let who =
            |t: &str, c: Check| refusal(&s, &card, t, None, c).map(|s| (s.entitlement.partner.clone(), s.entitlement.tracking_id.clone()));
        assert_eq!(who("acme-web", Check::Admission), Some(("acme".into(), None)));
        assert_eq!(who("acme-web", Check::Reverification), None, "soft: viewers already watching continue");
        assert_eq!(who("acme-app", Check::Reverification), Some(("acme".into(), Some("acme-app".into()))));
        assert_eq!(who("globex-web", Check::Admission), None, "notify never refuses");
        assert_eq!(who("unknown", Check::Admission), None);
        // the owner's override: token 42's viewers are never refused, another token's are
        assert!(refusal(&s, &card, "acme-web", Some(42), Check::Admission).is_none());
        assert!(refusal(&s, &card, "acme-app", Some(42), Check::Reverification).is_none());
        assert!(refusal(&s, &card, "acme-web", Some(43), Check::Admission).is_some());
        let m = refusal(&s, &card, "acme-web", None, Check::Admission).unwrap().refusal_message();
        assert_eq!(m, "partner acme's monthly allowance is used up: 100 bytes of 100 bytes (100.00%)");
    }

    #[test]
    fn notifications_name_partner_period_and_threshold() {
        let ent = parse("[[partner]]\nid = \"acme\"\nspend = \"4\"", "e", &card()).unwrap();
        let s = evaluate(&ent, &card(), day(), &usage(&[("acme-app", 30 * GB)])).unwrap();
        let n = notifications(&s, &period_label(period_start(day())));
        assert_eq!(n.len(), 1);
        let v = serde_json::to_value(&n[0]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "allowance.threshold_reached", "id": "acme/-/2026-12/50", "partner": "acme", "trackingId": null,
                "period": "2026-12", "threshold": 50, "allowance": {"spend": "4", "currency": "EUR"},
                "used": {"spend": "2.00", "currency": "EUR", "bytes": "30000000000"}, "percent": "50.00",
                "policy": "notify", "exhausted": false
            })
        );
    }

    #[test]
    fn allowances_reset_at_the_months_first_instant_utc() {
        let last = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        let next = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
        assert_eq!((period_start(last), period_label(period_start(last))), (day(), "2026-12".to_string()));
        assert_eq!((period_start(next), period_label(period_start(next))), (next, "2027-01".to_string()));
        // the same threshold in the next period is a new notification (sent again), its usage counted afresh
        let ent = parse("[[partner]]\nid = \"globex\"\nbytes = \"100\"", "e", &card()).unwrap();
        let december = evaluate(&ent, &card(), day(), &usage(&[("globex-web", 60)])).unwrap();
        let january = evaluate(&ent, &card(), next, &usage(&[("globex-web", 0)])).unwrap();
        assert_eq!(notifications(&december, "2026-12")[0].id, "globex/-/2026-12/50");
        assert!(notifications(&january, "2027-01").is_empty());
        let january = evaluate(&ent, &card(), next, &usage(&[("globex-web", 50)])).unwrap();
        assert_eq!(notifications(&january, "2027-01")[0].id, "globex/-/2027-01/50");
    }

    proptest! {
        /// The thresholds reached and the exhaustion agree with a count of
        /// bytes done in u128 by hand, and the percentage never rounds up.
        #[test]
        fn bytes_standing_matches_an_exact_count(allowance in 1u64..=u64::MAX / 2, used in 0u64..=u64::MAX / 2, grace in 0u32..=50) {
            let text = format!("thresholds = [1, 50, 99, 100, 150]\n[[partner]]\nid = \"globex\"\nbytes = \"{allowance}\"\ngrace_percent = {grace}");
            let ent = parse(&text, "e", &card()).unwrap();
            let s = evaluate(&ent, &card(), day(), &usage(&[("globex-web", used)])).unwrap().remove(0);
            let want: Vec<u32> = [1u32, 50, 99, 100, 150].into_iter().filter(|&t| (used as u128) * 100 >= (t as u128) * (allowance as u128)).collect();
            prop_assert_eq!(&s.reached, &want);
            prop_assert_eq!(s.exhausted, (used as u128) * 100 >= (100 + grace as u128) * allowance as u128);
            let exact = Decimal::from(used) * Decimal::ONE_HUNDRED / Decimal::from(allowance);
            prop_assert!(s.percent <= exact.round_dp(6) + Decimal::new(1, 6));
            prop_assert!(exact - s.percent < Decimal::new(1, 2) + Decimal::new(1, 6));
        }
    }
}
