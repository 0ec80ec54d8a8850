//! Partners' monthly allowances in the API (`entitlements` in the
//! configuration; the file's format is the `entitlements` crate's):
//!
//! * a [`Tracker`] refreshes the standing of every allowance from the fenced
//!   aggregates every `entitlements_refresh_secs` (the same numbers billing
//!   invoices; the lag is the aggregator's flush plus the refresh interval);
//! * `POST /api/token/verify` asks it ([`Tracker::decide`]) once a viewer's
//!   token is otherwise valid: a used-up allowance under `soft` refuses new
//!   viewers of the partner's tracking ids, under `hard` also the media
//!   server's re-verification (`"reverification": true`), with the code
//!   `allowance_exhausted` and a message naming the allowance;
//! * when the standing is older than `entitlements_max_staleness_secs`
//!   (ClickHouse unreachable), `entitlements_fail = "open"` (the default)
//!   admits and reports `EntitlementsStale`, `"closed"` refuses with
//!   `allowance_unknown`;
//! * each threshold reached is notified once ([`notify`]: recorded in the
//!   token store, delivered as a signed webhook with retries);
//! * `GET /api/entitlements` answers each allowance's standing and
//!   `GET /api/entitlements/notifications` the notifications (a scoped
//!   secret sees its own partner's only), and `/metrics` has
//!   `api_allowance_used_percent{partner,tracking_id}`.

pub mod notify;

use crate::app::{success, AppState, Reply, Scope};
use crate::events;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::Extension;
use billing::rates::RateCard;
use chrono::{DateTime, Months, NaiveDate, Utc};
use entitlements::{Allowance, Check, Entitlements, Standing};
use prometheus::{GaugeVec, IntGauge, Opts, Registry};
use runtime::events::InternalEvent;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// What verification does when the standing is not known (stale).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Admit (and report `EntitlementsStale`).
    #[default]
    Open,
    /// Refuse with `allowance_unknown`.
    Closed,
}

/// The tracker's settings.
#[derive(Debug, Clone, Copy)]
pub struct TrackerSettings {
    /// How often the standing is read again.
    pub refresh: Duration,
    /// How old a standing may be before it counts as unknown.
    pub max_staleness: Duration,
    /// What verification does then.
    pub fail: FailMode,
}

/// The standing of every allowance, as last read.
#[derive(Debug, Clone)]
struct Snapshot {
    period_start: NaiveDate,
    standings: Vec<Standing>,
    refreshed_at: DateTime<Utc>,
}

/// A partner's webhook, its secret read at start.
struct Hook {
    url: String,
    secret: String,
}

/// Every allowance's standing, refreshed from ClickHouse.
pub struct Tracker {
    entitlements: Entitlements,
    card: Arc<RateCard>,
    usage: Arc<billing::store::Store>,
    records: Arc<crate::store::Store>,
    hooks: std::collections::BTreeMap<String, Hook>,
    http: reqwest::Client,
    settings: TrackerSettings,
    /// Shared with each verification that reads it (no copy per viewer).
    snapshot: RwLock<Option<Arc<Snapshot>>>,
    used_percent: GaugeVec,
    stale: IntGauge,
}

/// What verification does with a viewer of a tracking id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Admit.
    Admit,
    /// Refuse: the code (`allowance_exhausted`, `allowance_unknown`) and why.
    Refuse {
        /// The stable machine code.
        code: &'static str,
        /// Which allowance, how much of it was used.
        message: String,
    },
}

impl Tracker {
    /// A tracker of `entitlements` (validated against `card`) reading usage
    /// through `usage` and recording notifications in `records`; each
    /// webhook's secret is read from its environment variable now. Its
    /// metrics are registered in `registry`.
    pub fn new(
        entitlements: Entitlements,
        card: Arc<RateCard>,
        usage: Arc<billing::store::Store>,
        records: Arc<crate::store::Store>,
        settings: TrackerSettings,
        registry: &Registry,
    ) -> Result<Tracker, String> {
        let mut hooks = std::collections::BTreeMap::new();
        for w in &entitlements.webhooks {
            let secret = std::env::var(&w.secret_env).map_err(|_| {
                format!("entitlements: partner {}: the environment variable {} (webhook_secret_env) is not set", w.partner, w.secret_env)
            })?;
            runtime::auth::check_secret(&w.secret_env, &secret).map_err(|e| format!("entitlements: partner {}: {e}", w.partner))?;
            hooks.insert(w.partner.clone(), Hook { url: w.url.clone(), secret });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("webhook client: {e}"))?;
        let metric = |e: prometheus::Error| format!("metrics: {e}");
        let used_percent = runtime::ops::register(
            registry,
            GaugeVec::new(
                Opts::new("api_allowance_used_percent", "Percent of each monthly allowance used (tracking_id empty: the partner's own)"),
                &["partner", "tracking_id"],
            ),
        )
        .map_err(metric)?;
        let stale = runtime::ops::register(
            registry,
            IntGauge::new("api_allowance_standing_stale", "1 while the allowances' standing is older than entitlements_max_staleness_secs"),
        )
        .map_err(metric)?;
        Ok(Tracker { entitlements, card, usage, records, hooks, http, settings, snapshot: RwLock::new(None), used_percent, stale })
    }

    /// Read the period's usage and compute every standing again.
    pub async fn refresh(&self, now: DateTime<Utc>) -> Result<(), String> {
        let period_start = entitlements::standing::period_start(now.date_naive());
        let next = period_start.checked_add_months(Months::new(1)).ok_or("the period's end is out of range")?;
        let usage = self.usage.usage_by_tracking(period_start, next).await.map_err(|e| e.to_string())?;
        let standings = entitlements::evaluate(&self.entitlements, &self.card, period_start, &usage).map_err(|e| e.to_string())?;
        for s in &standings {
            let labels = [s.entitlement.partner.as_str(), s.entitlement.tracking_id.as_deref().unwrap_or("")];
            self.used_percent.with_label_values(&labels).set(s.percent.try_into().unwrap_or(f64::MAX));
        }
        events::AllowancesRefreshed { allowances: standings.len(), exhausted: standings.iter().filter(|s| s.exhausted).count() }.emit();
        let due = entitlements::notifications(&standings, &entitlements::standing::period_label(period_start));
        // verification decides from the new standing even if recording a notification fails below
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(Snapshot { period_start, standings, refreshed_at: now }));
        self.stale.set(0);
        // each threshold reached, once across processes and restarts
        for n in due {
            if notify::record(&self.records, &n, self.hooks.contains_key(&n.partner), now)
                .map_err(|e| format!("recording {}: {e}", n.id))?
            {
                events::AllowanceThresholdReached { id: &n.id, percent: &n.percent, policy: n.policy, exhausted: n.exhausted }.emit();
            }
        }
        Ok(())
    }

    /// The current snapshot if it is fresh at `now` and of `now`'s period.
    fn fresh(&self, now: DateTime<Utc>) -> Option<Arc<Snapshot>> {
        let snap = self.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        let age = (now - snap.refreshed_at).to_std().unwrap_or_default();
        let same_period = snap.period_start == entitlements::standing::period_start(now.date_naive());
        (age <= self.settings.max_staleness && same_period).then_some(snap)
    }

    /// Whether a viewer of `tracking_id`, admitted by Subscribe token
    /// `token_id`, is admitted at `check`.
    pub fn decide(&self, tracking_id: &str, token_id: Option<i64>, check: Check, now: DateTime<Utc>) -> Decision {
        if self.card.partner_for_tracking_id(tracking_id).is_none() {
            return Decision::Admit; // no partner, no allowance
        }
        let Some(snap) = self.fresh(now) else {
            // reported once per outage (the gauge stays 1 until a refresh succeeds), not per viewer
            if self.stale.get() == 0 {
                events::EntitlementsStale { tracking_id, fail_open: self.settings.fail == FailMode::Open }.emit();
            }
            self.stale.set(1);
            return match self.settings.fail {
                FailMode::Open => Decision::Admit,
                FailMode::Closed => Decision::Refuse {
                    code: "allowance_unknown",
                    message: "the allowances' standing is not known now (usage unreadable); refused (entitlements_fail = closed)".into(),
                },
            };
        };
        match entitlements::refusal(&snap.standings, &self.card, tracking_id, token_id, check) {
            Some(s) => Decision::Refuse { code: "allowance_exhausted", message: s.refusal_message() },
            None => Decision::Admit,
        }
    }

    /// Deliver the notifications due now, one attempt each.
    pub async fn deliver_due(&self) -> Result<(), String> {
        while let Some(n) = notify::lease_next(&self.records, Utc::now()).map_err(|e| e.to_string())? {
            let Some(hook) = self.hooks.get(&n.partner) else {
                // its webhook was removed from the file since: no one to tell
                notify::attempt_failed(&self.records, &n.id, notify::MAX_ATTEMPTS, "no webhook configured", Utc::now())
                    .map_err(|e| e.to_string())?;
                continue;
            };
            let signature = entitlements::webhook::signature(hook.secret.as_bytes(), Utc::now().timestamp(), n.body.as_bytes());
            let sent = self
                .http
                .post(&hook.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(entitlements::webhook::SIGNATURE_HEADER, signature)
                .body(n.body.clone())
                .send()
                .await;
            let outcome = match sent {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("answered {}", r.status())),
                Err(e) => Err(format!("not delivered: {e}")),
            };
            match outcome {
                Ok(()) => {
                    notify::delivered(&self.records, &n.id, Utc::now()).map_err(|e| e.to_string())?;
                    events::AllowanceNotificationDelivered { id: &n.id, attempt: n.attempt }.emit();
                }
                Err(error) => {
                    notify::attempt_failed(&self.records, &n.id, n.attempt, &error, Utc::now()).map_err(|e| e.to_string())?;
                    events::AllowanceNotificationFailed {
                        id: &n.id,
                        attempt: n.attempt,
                        error: &error,
                        gave_up: n.attempt >= notify::MAX_ATTEMPTS,
                    }
                    .emit();
                }
            }
        }
        Ok(())
    }

    /// Refresh every `refresh` and deliver due notifications every second,
    /// until the process ends (failures are reported and retried).
    pub async fn run(self: Arc<Self>) {
        let mut last_refresh: Option<std::time::Instant> = None;
        loop {
            if last_refresh.is_none_or(|t| t.elapsed() >= self.settings.refresh) {
                last_refresh = Some(std::time::Instant::now());
                if let Err(e) = self.refresh(Utc::now()).await {
                    events::AllowancesRefreshFailed { error: &e }.emit();
                }
            }
            if let Err(e) = self.deliver_due().await {
                events::AllowancesRefreshFailed { error: &format!("delivering notifications: {e}") }.emit();
            }
            tokio::time::sleep(self.settings.refresh.min(Duration::from_secs(1))).await;
        }
    }
}

/// The tracker's refresh task, stopped when the router holding it is dropped.
pub(crate) struct TrackerTask(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for TrackerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The tracker of `cfg`'s entitlements file, if one is configured, and its
/// refresh task (started here: call from within the runtime).
pub(crate) fn start(
    cfg: &crate::config::ApiConfig,
    card: Option<&Arc<RateCard>>,
    usage: Option<&Arc<billing::store::Store>>,
    records: &Arc<crate::store::Store>,
    registry: &Registry,
) -> Result<Option<(Arc<Tracker>, TrackerTask)>, String> {
    let Some(path) = &cfg.entitlements else { return Ok(None) };
    let (Some(card), Some(usage)) = (card, usage) else { return Err("entitlements: needs billing_rates".into()) };
    let ent = entitlements::load(path, card).map_err(|e| format!("entitlements: {e}"))?;
    let settings = TrackerSettings {
        refresh: Duration::from_secs(cfg.entitlements_refresh_secs),
        max_staleness: Duration::from_secs(cfg.entitlements_max_staleness_secs),
        fail: cfg.entitlements_fail,
    };
    let tracker = Arc::new(Tracker::new(ent, card.clone(), usage.clone(), records.clone(), settings, registry)?);
    let task = TrackerTask(tokio::spawn(tracker.clone().run()));
    Ok(Some((tracker, task)))
}

fn amount(a: Allowance, currency: &str) -> Value {
    match a {
        Allowance::Bytes(b) => json!({ "bytes": b.to_string() }),
        Allowance::Spend(s) => json!({ "spend": s.to_string(), "currency": currency }),
    }
}

/// One allowance's standing as `GET /api/entitlements` answers it.
fn standing_json(s: &Standing) -> Value {
    let e = &s.entitlement;
    let remaining = s.remaining();
    let mut used = json!({ "bytes": s.used_bytes.to_string() });
    if let Some(spend) = s.used_spend {
        used["spend"] = json!(spend.to_string());
        used["currency"] = json!(s.currency);
    }
    json!({
        "partner": e.partner,
        "trackingId": e.tracking_id,
        "policy": e.policy.as_str(),
        "gracePercent": e.grace_percent,
        "allowance": amount(e.allowance, &s.currency),
        "used": used,
        "remaining": amount(remaining, &s.currency),
        "percent": s.percent.to_string(),
        "thresholdsReached": s.reached,
        "exhausted": s.exhausted,
    })
}

/// The service's tracker, or 400 when no entitlements are configured.
fn configured(s: &AppState) -> Result<&Arc<Tracker>, Reply> {
    s.entitlements
        .as_ref()
        .ok_or_else(|| Reply::BadRequest("no entitlements configured on this service (set entitlements and billing_rates)".into()))
}

/// `GET /api/entitlements/notifications`: every threshold notification,
/// newest first, with its delivery status (a scoped secret: its partner's only).
#[utoipa::path(get, path = "/api/entitlements/notifications", tag = "Analytics", summary = "Allowance threshold notifications and their delivery status",
    responses((status = 200, description = "`[{id, partner, status, attempts, lastError, createdAt, deliveredAt, body}]`"), crate::app::StatsErrors))]
pub(crate) async fn notifications(State(s): State<Arc<AppState>>, Extension(scope): Extension<Scope>) -> Result<Response, Reply> {
    let tracker = configured(&s)?;
    let partners: Option<Vec<String>> = scope
        .0
        .as_ref()
        .map(|ids| tracker.card.partners.iter().filter(|p| p.tracking_ids.iter().any(|t| ids.contains(t))).map(|p| p.id.clone()).collect());
    let list = notify::list(&tracker.records, partners.as_deref())?;
    Ok(success(serde_json::to_value(list).unwrap_or(Value::Null)))
}

/// Query of `GET /api/entitlements`.
#[derive(Deserialize, utoipa::IntoParams)]
#[allow(dead_code)] // documents the query string; parsed by hand (repeated keys)
struct AllowancesParams {
    /// Only the allowances covering these tracking ids (comma-separated or repeated); none: all.
    #[serde(rename = "trackingIds")]
    tracking_ids: Option<String>,
}

/// `GET /api/entitlements[?trackingIds=a,b]`: every allowance's standing in
/// the current period (a scoped secret: its partner's only). `stale` is true
/// when the standing is older than `entitlements_max_staleness_secs`.
#[utoipa::path(get, path = "/api/entitlements", tag = "Analytics", summary = "Each partner's monthly allowance: used, remaining, thresholds reached, exhausted", params(AllowancesParams),
    responses((status = 200, description = "`{period, refreshedAt, stale, thresholds, allowances: [{partner, trackingId, policy, gracePercent, allowance, used, remaining, percent, thresholdsReached, exhausted}]}`"), crate::app::StatsErrors))]
pub(crate) async fn allowances(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Reply> {
    let tracker = configured(&s)?;
    let pairs = crate::app::query_pairs(raw.as_deref())?;
    let mut ids: Vec<String> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "trackingIds" | "trackingIds[]" => ids.extend(v.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_string)),
            other => return Err(Reply::BadRequest(format!("unknown query parameter {other:?} (trackingIds)"))),
        }
    }
    let now = Utc::now();
    let snap = tracker.snapshot.read().unwrap_or_else(|p| p.into_inner()).clone();
    let Some(snap) = snap else {
        return Err(Reply::Internal("the allowances' standing has not been read yet (usage unreadable since the start)".into()));
    };
    let card = &tracker.card;
    let partner_ids = |p: &str| card.partner(p).map(|p| p.tracking_ids.clone()).unwrap_or_default();
    let visible = |s: &&Standing| {
        let covers: Vec<String> = match &s.entitlement.tracking_id {
            Some(t) => vec![t.clone()],
            None => partner_ids(&s.entitlement.partner),
        };
        let in_scope = scope.0.as_ref().is_none_or(|allowed| covers.iter().any(|t| allowed.contains(t)));
        let asked = ids.is_empty() || covers.iter().any(|t| ids.contains(t));
        in_scope && asked
    };
    let list: Vec<Value> = snap.standings.iter().filter(visible).map(standing_json).collect();
    Ok(success(json!({
        "period": entitlements::standing::period_label(snap.period_start),
        "refreshedAt": snap.refreshed_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "stale": tracker.fresh(now).is_none(),
        "thresholds": tracker.entitlements.thresholds,
        "allowances": list,
    })))
}
