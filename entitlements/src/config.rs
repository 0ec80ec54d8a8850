//! The entitlements file: each partner's monthly allowance, in bytes or in
//! money of the partner's rate-card currency, optionally one per tracking id
//! of the partner, with the policy applied once it is used up.
//!
//! ```toml
//! thresholds = [50, 80, 100]          # percent; notifications fire once per period each
//!
//! [[partner]]
//! id = "acme"                         # a partner of the rate card
//! spend = "1500.00"                   # or bytes = "2000000000000"
//! policy = "soft"                     # notify (default) | soft | hard
//! grace_percent = 10                  # refusals start at 110% (default 0)
//! webhook_url = "https://hooks.acme.example/metering"
//! webhook_secret_env = "ACME_WEBHOOK_SECRET"
//! exempt_token_ids = [42]             # Subscribe tokens never refused (the owner's override)
//!
//! [[partner.tracking]]                # an allowance of one of its tracking ids
//! tracking_id = "acme-web"
//! bytes = "500000000000"
//! ```
//!
//! Amounts are strings, as in the rate card: TOML floats are inexact and are
//! refused. The period is the calendar month in UTC, the billing period;
//! allowances reset at its first instant. The webhook's signing secret is
//! never in the file: `webhook_secret_env` names the environment variable
//! that holds it.

use billing::rates::RateCard;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::path::Path;

/// What happens once an allowance is used up (past its grace).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Notifications only; every token keeps working.
    #[default]
    Notify,
    /// New viewers of the partner's tracking ids are refused at token
    /// verification; viewers already watching continue.
    Soft,
    /// Also refused at the media server's periodic re-verification.
    Hard,
}

impl Policy {
    /// The name used in the file and in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Notify => "notify",
            Policy::Soft => "soft",
            Policy::Hard => "hard",
        }
    }
}

/// An allowance per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Bytes delivered to viewers (egress), at most this many.
    Bytes(u64),
    /// The usage's price (the invoice's usage subtotal, before any minimum
    /// commitment), at most this much, in the partner's currency.
    Spend(Decimal),
}

/// One allowance of a partner: its own (`tracking_id` none) or one tracking id's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entitlement {
    /// The partner (a rate-card partner id).
    pub partner: String,
    /// The tracking id this allowance covers alone; `None`: all the partner's.
    pub tracking_id: Option<String>,
    /// How much per period.
    pub allowance: Allowance,
    /// What happens once it is used up.
    pub policy: Policy,
    /// Percent above the allowance that is still served before refusals
    /// start (notifications are not delayed by it).
    pub grace_percent: u32,
    /// Subscribe tokens (master tokens, and the viewer tokens signed from
    /// them) whose viewers are never refused by it: the owner's override.
    pub exempt_token_ids: Vec<i64>,
}

/// Where a partner's notifications go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The partner it belongs to.
    pub partner: String,
    /// `https://` (or `http://` to a loopback address, for tests) URL the
    /// notifications are POSTed to.
    pub url: String,
    /// The environment variable holding the signing secret.
    pub secret_env: String,
}

/// A validated entitlements file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entitlements {
    /// Percent thresholds, ascending, each in 1..=1000.
    pub thresholds: Vec<u32>,
    /// Every allowance, partners' own first within each partner, in file order.
    pub entitlements: Vec<Entitlement>,
    /// The partners' webhooks (partners without one are notified in the log only).
    pub webhooks: Vec<Webhook>,
}

/// The default thresholds.
pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

/// Everything that can be wrong with an entitlements file.
#[derive(Debug, thiserror::Error)]
pub enum EntitlementsError {
    /// The file could not be read.
    #[error("{path}: cannot read the entitlements file: {source}")]
    Io {
        /// The path as given.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the file's shape (unknown fields, wrong types).
    #[error("{file}: {message}")]
    Parse {
        /// The file's name.
        file: String,
        /// The parser's message, with the line.
        message: String,
    },
    /// A value that is well-formed but not allowed.
    #[error("{file}: {message}")]
    Invalid {
        /// The file's name.
        file: String,
        /// What is wrong and where.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    thresholds: Option<Vec<u32>>,
    #[serde(default)]
    partner: Vec<PartnerDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerDoc {
    id: String,
    bytes: Option<String>,
    spend: Option<String>,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    grace_percent: u32,
    webhook_url: Option<String>,
    webhook_secret_env: Option<String>,
    #[serde(default)]
    exempt_token_ids: Vec<i64>,
    #[serde(default)]
    tracking: Vec<TrackingDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackingDoc {
    tracking_id: String,
    bytes: Option<String>,
    spend: Option<String>,
    policy: Option<Policy>,
    grace_percent: Option<u32>,
}

/// Read and validate the entitlements file at `path` against `card`.
pub fn load(path: &Path, card: &RateCard) -> Result<Entitlements, EntitlementsError> {
    let text = std::fs::read_to_string(path).map_err(|source| EntitlementsError::Io { path: path.display().to_string(), source })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
    parse(&text, &name, card)
}

/// Validate the text of an entitlements file named `file` against `card`:
/// every partner and tracking id must be the rate card's, each allowance
/// says exactly one of `bytes` and `spend`, amounts are positive.
pub fn parse(text: &str, file: &str, card: &RateCard) -> Result<Entitlements, EntitlementsError> {
    let doc: FileDoc = toml::from_str(text).map_err(|e| EntitlementsError::Parse { file: file.into(), message: e.to_string() })?;
    let invalid = |message: String| EntitlementsError::Invalid { file: file.into(), message };
    let thresholds = doc.thresholds.unwrap_or_else(|| DEFAULT_THRESHOLDS.to_vec());
    if thresholds.is_empty() || thresholds.iter().any(|t| !(1..=1000).contains(t)) || thresholds.windows(2).any(|w| w[0] >= w[1]) {
        return Err(invalid(format!("thresholds = {thresholds:?}: percents from 1 to 1000, strictly ascending")));
    }
    let mut out = Entitlements { thresholds, ..Default::default() };
    for (i, p) in doc.partner.iter().enumerate() {
        let at = format!("partner[{i}] ({})", p.id);
        let partner = card.partner(&p.id).ok_or_else(|| invalid(format!("{at}: not a partner of the rate card")))?;
        if out.entitlements.iter().any(|e| e.partner == p.id) || out.webhooks.iter().any(|w| w.partner == p.id) {
            return Err(invalid(format!("{at}: listed twice")));
        }
        check_grace(p.grace_percent).map_err(|m| invalid(format!("{at}: {m}")))?;
        if let Some(bad) = p.exempt_token_ids.iter().find(|&&id| id <= 0) {
            return Err(invalid(format!("{at}: exempt_token_ids: {bad} is not a token id (ids are positive)")));
        }
        if let Some(allowance) = allowance(p.bytes.as_deref(), p.spend.as_deref(), true).map_err(|m| invalid(format!("{at}: {m}")))? {
            out.entitlements.push(Entitlement {
                partner: p.id.clone(),
                tracking_id: None,
                allowance,
                policy: p.policy,
                grace_percent: p.grace_percent,
                exempt_token_ids: p.exempt_token_ids.clone(),
            });
        }
        for (j, t) in p.tracking.iter().enumerate() {
            let at = format!("{at}.tracking[{j}] ({})", t.tracking_id);
            if !partner.tracking_ids.contains(&t.tracking_id) {
                return Err(invalid(format!("{at}: not one of the partner's tracking ids in the rate card")));
            }
            if p.tracking[..j].iter().any(|u| u.tracking_id == t.tracking_id) {
                return Err(invalid(format!("{at}: listed twice")));
            }
            let grace_percent = t.grace_percent.unwrap_or(p.grace_percent);
            check_grace(grace_percent).map_err(|m| invalid(format!("{at}: {m}")))?;
            let allowance = allowance(t.bytes.as_deref(), t.spend.as_deref(), false)
                .map_err(|m| invalid(format!("{at}: {m}")))?
                .expect("required allowance");
            out.entitlements.push(Entitlement {
                partner: p.id.clone(),
                tracking_id: Some(t.tracking_id.clone()),
                allowance,
                policy: t.policy.unwrap_or(p.policy),
                grace_percent,
                exempt_token_ids: p.exempt_token_ids.clone(),
            });
        }
        if !out.entitlements.iter().any(|e| e.partner == p.id) {
            return Err(invalid(format!("{at}: no allowance (set bytes or spend, or one per tracking id)")));
        }
        match (&p.webhook_url, &p.webhook_secret_env) {
            (None, None) => {}
            (Some(url), Some(env)) => {
                check_url(url).map_err(|m| invalid(format!("{at}: webhook_url: {m}")))?;
                if env.is_empty() || !env.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(invalid(format!("{at}: webhook_secret_env: the name of an environment variable (A-Z, 0-9, _)")));
                }
                out.webhooks.push(Webhook { partner: p.id.clone(), url: url.clone(), secret_env: env.clone() });
            }
            _ => return Err(invalid(format!("{at}: webhook_url and webhook_secret_env go together"))),
        }
    }
    Ok(out)
}

fn check_grace(grace: u32) -> Result<(), String> {
    if grace > 1000 {
        return Err(format!("grace_percent = {grace}: at most 1000"));
    }
    Ok(())
}

/// `bytes` or `spend`, exactly one (or neither, when `optional`).
fn allowance(bytes: Option<&str>, spend: Option<&str>, optional: bool) -> Result<Option<Allowance>, String> {
    match (bytes, spend) {
        (Some(_), Some(_)) => Err("set bytes or spend, not both".into()),
        (None, None) if optional => Ok(None),
        (None, None) => Err("set bytes or spend".into()),
        (Some(b), None) => match b.parse::<u64>() {
            Ok(n) if n > 0 => Ok(Some(Allowance::Bytes(n))),
            _ => Err(format!("bytes = {b:?}: a whole number of bytes above 0, as a string")),
        },
        (None, Some(s)) => match s.parse::<Decimal>() {
            Ok(d) if d > Decimal::ZERO && d.scale() <= 4 => Ok(Some(Allowance::Spend(d))),
            _ => Err(format!("spend = {s:?}: a positive decimal with at most 4 decimal places, as a string")),
        },
    }
}

fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") && url.len() > "https://".len() {
        return Ok(());
    }
    // plain HTTP only to this machine (a local receiver, tests)
    let local = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
    if local.iter().any(|l| url.strip_prefix(l).is_some_and(|r| r.is_empty() || r.starts_with(':') || r.starts_with('/'))) {
        return Ok(());
    }
    Err(format!("{url:?}: https://, or http:// to a loopback address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card() -> RateCard {
        billing::rates::parse_rate_card(
            r#"
[[partner]]
id = "acme"
name = "Acme"
tracking_ids = ["acme-web", "acme-app"]
currency = "EUR"
unit = "GB"
pricing = "flat"
tiers = [ { unit_price = "0.05" } ]

[[partner]]
id = "globex"
name = "Globex"
tracking_ids = ["globex-web"]
currency = "USD"
unit = "GiB"
pricing = "flat"
tiers = [ { unit_price = "0.04" } ]
"#,
            "rates.toml",
        )
        .unwrap()
    }

    #[test]
    fn a_full_file_reads_as_written() {
        let e = parse(
            r#"
thresholds = [25, 100]
[[partner]]
id = "acme"
spend = "1500.00"
policy = "soft"
grace_percent = 10
webhook_url = "https://hooks.acme.example/m"
webhook_secret_env = "ACME_SECRET"
exempt_token_ids = [7]
[[partner.tracking]]
tracking_id = "acme-web"
bytes = "500000000000"
policy = "hard"
[[partner]]
id = "globex"
bytes = "1000"
"#,
            "e.toml",
            &card(),
        )
        .unwrap();
        assert_eq!(e.thresholds, vec![25, 100]);
        assert_eq!(
            e.entitlements,
            vec![
                Entitlement {
                    partner: "acme".into(),
                    tracking_id: None,
                    allowance: Allowance::Spend("1500.00".parse().unwrap()),
                    policy: Policy::Soft,
                    grace_percent: 10,
                    exempt_token_ids: vec![7]
                },
                Entitlement {
                    partner: "acme".into(),
                    tracking_id: Some("acme-web".into()),
                    allowance: Allowance::Bytes(500_000_000_000),
                    policy: Policy::Hard,
                    grace_percent: 10,
                    exempt_token_ids: vec![7]
                },
                Entitlement {
                    partner: "globex".into(),
                    tracking_id: None,
                    allowance: Allowance::Bytes(1000),
                    policy: Policy::Notify,
                    grace_percent: 0,
                    exempt_token_ids: vec![]
                },
            ]
        );
        assert_eq!(
            e.webhooks,
            vec![Webhook { partner: "acme".into(), url: "https://hooks.acme.example/m".into(), secret_env: "ACME_SECRET".into() }]
        );
    }

    #[test]
    fn mistakes_are_refused_with_where_they_are() {
        let cases = [
            ("[[partner]]\nid = \"nobody\"\nbytes = \"1\"", "partner[0] (nobody): not a partner of the rate card"),
            ("[[partner]]\nid = \"acme\"\nbytes = \"1\"\nspend = \"1\"", "set bytes or spend, not both"),
            ("[[partner]]\nid = \"acme\"", "no allowance"),
            ("[[partner]]\nid = \"acme\"\nbytes = 5", "invalid type"),
            ("[[partner]]\nid = \"acme\"\nspend = 1.5", "invalid type"),
            ("[[partner]]\nid = \"acme\"\nbytes = \"0\"", "above 0"),
            ("[[partner]]\nid = \"acme\"\nbytes = \"-3\"", "above 0"),
            ("[[partner]]\nid = \"acme\"\nspend = \"0.00001\"", "at most 4 decimal places"),
            ("[[partner]]\nid = \"acme\"\nbytes = \"1\"\npolicy = \"block\"", "unknown variant"),
            ("[[partner]]\nid = \"acme\"\nbytes = \"1\"\ncolour = \"red\"", "unknown field"),
            ("thresholds = [80, 50]\n[[partner]]\nid = \"acme\"\nbytes = \"1\"", "strictly ascending"),
            ("thresholds = []", "strictly ascending"),
            ("[[partner]]\nid = \"acme\"\nbytes = \"1\"\n[[partner]]\nid = \"acme\"\nbytes = \"2\"", "listed twice"),
            (
                "[[partner]]\nid = \"acme\"\n[[partner.tracking]]\ntracking_id = \"globex-web\"\nbytes = \"1\"",
                "not one of the partner's tracking ids",
            ),
            ("[[partner]]\nid = \"acme\"\nbytes = \"1\"\nwebhook_url = \"https://x\"", "go together"),
            ("[[partner]]\nid = \"acme\"\nbytes = \"1\"\nwebhook_url = \"http://hooks.example\"\nwebhook_secret_env = \"S\"", "loopback"),
            (
                "[[partner]]\nid = \"acme\"\nbytes = \"1\"\nwebhook_url = \"https://x\"\nwebhook_secret_env = \"a-b\"",
                "environment variable",
            ),
            ("[[partner]]\nid = \"acme\"\nbytes = \"1\"\ngrace_percent = 5000", "at most 1000"),
            ("[[partner]]\nid = \"acme\"\nbytes = \"1\"\nexempt_token_ids = [0]", "not a token id"),
        ];
        for (text, want) in cases {
            let e = parse(text, "e.toml", &card()).unwrap_err().to_string();
            assert!(e.contains(want) && e.starts_with("e.toml: "), "{text:?}: {e}");
        }
        // a loopback receiver over plain HTTP is fine (a local receiver, the tests)
        let local = "[[partner]]\nid = \"acme\"\nbytes = \"1\"\nwebhook_url = \"http://127.0.0.1:9/h\"\nwebhook_secret_env = \"S\"";
        assert!(parse(local, "e.toml", &card()).is_ok());
        assert_eq!(parse("", "e.toml", &card()).unwrap().thresholds, DEFAULT_THRESHOLDS);
    }
}
