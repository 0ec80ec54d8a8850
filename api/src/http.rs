//! `api serve`: the platform's token and analytics REST API (reference:
//! `api/README.md`; document: `GET /api/openapi.json`, generated from the
//! handlers listed in [`router`]).
//!
//! Every `/api/...` route needs `Authorization: Bearer <secret>`; without a
//! known one: `401`. Three roles (held as digests, compared in constant
//! time; `docs/security.md`): `api_secrets` (admin: everything),
//! `verify_secrets` (media servers: `POST /api/token/verify` only) and
//! `scoped_secrets` (a partner's statistics only, elsewhere `403`). Replies
//! are the platform's envelopes (`app`).
//!
//! `GET /healthz`, `GET /readyz` (token store and ClickHouse answer) and
//! `GET /metrics` (Prometheus: `api_requests_total{status}`,
//! `api_verify_total{result}`) need no secret.

pub use crate::app::ApiError;
use crate::app::{limit_stats, require_secret, AppState, Metrics};
use crate::config::ApiConfig;
use crate::events;
use crate::store::Store;
use crate::tokens::handlers::{update_publish, update_subscribe};
use crate::tokens::MAX_BODY_BYTES;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use runtime::events::InternalEvent;
use runtime::ops::{BoxFuture, Check, Ops, Readiness};
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

pub use crate::app::MAX_CONCURRENT_STATS;

/// The service's router on an open store (also used by tests).
pub fn router(cfg: &ApiConfig, store: Arc<Store>) -> Result<Router, ApiError> {
    cfg.validate().map_err(|e| ApiError::Config(e.into_message()))?;
    let metrics = Metrics::new().map_err(|e| ApiError::Config(format!("metrics: {e}")))?;
    let console = console_settings(cfg)?;
    let tracker = crate::entitlements::start(cfg, console.rates.as_ref(), console.billing.as_ref(), &store, &metrics.registry)
        .map_err(ApiError::Config)?;
    let (entitlements, tracker_task) = tracker.map_or((None, None), |(t, task)| (Some(t), Some(task)));
    let state = Arc::new(AppState {
        entitlements,
        _tracker_task: tracker_task,
        sessions: crate::console::session::Sessions(store.clone()),
        store,
        secrets: runtime::auth::KeySet::new(&cfg.api_secrets),
        verify_secrets: runtime::auth::KeySet::new(&cfg.verify_secrets),
        scoped_keys: runtime::auth::KeySet::new(&cfg.scoped_secrets.iter().map(|s| s.secret.as_str()).collect::<Vec<_>>()),
        scoped_ids: cfg.scoped_secrets.iter().map(|s| Arc::new(s.tracking_ids.clone())).collect(),
        metrics,
        // statistics only read, within limits, whatever user the config names
        // (a key's filter reaches the sealed tables and the log under the views)
        ch: runtime::ch::predicates_pushed(cfg.clickhouse.client())
            .with_option("readonly", "2")
            .with_option("max_execution_time", "30")
            .with_option("max_memory_usage", "2000000000")
            .with_option("max_result_rows", "2000000")
            .with_option("result_overflow_mode", "throw"),
        stats_slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_STATS)),
        ch_probe: runtime::health::Probe::default(),
        console,
        throttle: Default::default(),
        client_address_header: match cfg.client_address_header.trim() {
            "" => None,
            h => Some(
                axum::http::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| ApiError::Config(format!("client_address_header: {h:?} is not a header name")))?,
            ),
        },
        policy: crate::tokens::verify::Policy {
            untracked_parent_sets_tracking: cfg.untracked_parent_sets_tracking,
            max_viewer_token_secs: cfg.max_viewer_token_secs as i64,
            ..Default::default()
        },
    });
    // The routes and the OpenAPI document come from one list of handlers.
    let stats = OpenApiRouter::new()
        .routes(routes!(crate::stats::tracking_total))
        .routes(routes!(crate::stats::tracking_series))
        .routes(routes!(crate::stats::streams_total))
        .routes(routes!(crate::stats::streams_series))
        .routes(routes!(crate::stats::records::viewer_records))
        .routes(routes!(crate::entitlements::allowances))
        .routes(routes!(crate::entitlements::notifications))
        .layer(middleware::from_fn_with_state(state.clone(), limit_stats));
    let (api, doc) = OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(crate::tokens::handlers::create_subscribe, crate::tokens::handlers::all_subscribe))
        .routes(routes!(crate::tokens::handlers::list_subscribe))
        .routes(routes!(
            crate::tokens::handlers::get_subscribe,
            crate::tokens::handlers::update_subscribe,
            crate::tokens::handlers::delete_subscribe
        ))
        .routes(routes!(crate::tokens::handlers::create_publish, crate::tokens::handlers::all_publish))
        .routes(routes!(crate::tokens::handlers::list_publish))
        .routes(routes!(
            crate::tokens::handlers::get_publish,
            crate::tokens::handlers::update_publish,
            crate::tokens::handlers::delete_publish
        ))
        .routes(routes!(crate::tokens::handlers::verify_token))
        .merge(stats)
        .split_for_parts();
    let doc = Arc::new(doc.to_pretty_json().map_err(|e| ApiError::Config(format!("openapi: {e}")))?);
    let api = api
        // the platform's v2 update: the same handlers (the v1 body's names without `update`)
        .route("/api/v2/subscribe_token/{id}", put(update_subscribe))
        .route("/api/v2/publish_token/{id}", put(update_publish))
        .route(
            "/api/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc.as_str().to_owned()) }
            }),
        )
        // the console's own routes, behind the same credentials (a session cookie or a bearer secret)
        .route("/console/sign", post(crate::console::sign))
        .route("/console/invoices", get(crate::console::invoices))
        .route("/console/invoices/{file}", get(crate::console::invoice_file))
        .route("/console/reconciliation", get(crate::console::reconciliation))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), require_secret));
    let console = Router::new()
        .route("/", get(crate::console::index))
        .route("/console/app.js", get(crate::console::app_js))
        .route("/console/app.css", get(crate::console::app_css))
        .route("/console/login", post(crate::console::login))
        .route("/console/session", get(crate::console::session))
        .route("/console/logout", post(crate::console::logout))
        .layer(DefaultBodyLimit::max(4096));
    let ops = runtime::ops::router(Arc::new(ApiOps(state.clone())));
    Ok(Router::new()
        .merge(api)
        .merge(console)
        .with_state(state.clone())
        .merge(ops)
        .layer(middleware::from_fn_with_state(state, count_requests)))
}

fn console_settings(cfg: &ApiConfig) -> Result<crate::console::session::ConsoleSettings, ApiError> {
    let rates = match &cfg.billing_rates {
        Some(p) => Some(Arc::new(billing::rates::load_rate_card(p).map_err(|e| ApiError::Config(format!("billing_rates: {e}")))?)),
        None => None,
    };
    let billing = match rates {
        Some(_) => Some(Arc::new(billing::store::Store::new(&cfg.clickhouse).map_err(|e| ApiError::Config(format!("clickhouse: {e}")))?)),
        None => None,
    };
    Ok(crate::console::session::ConsoleSettings {
        session_secs: cfg.console_session_secs,
        secure_cookie: cfg.console_secure_cookie,
        rates,
        billing,
    })
}

/// Open the store at `cfg.store_path` and serve on `cfg.listen` until
/// `shutdown` resolves.
pub async fn serve(cfg: ApiConfig, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Result<(), ApiError> {
    cfg.validate().map_err(|e| ApiError::Config(e.into_message()))?;
    runtime::rights::check_rights(&cfg.clickhouse, runtime::rights::Access::Read, "api")
        .await
        .map_err(|e| ApiError::Config(e.to_string()))?;
    let store = Arc::new(Store::open(&cfg.store_path)?);
    let app = router(&cfg, store)?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen).await?;
    events::ApiListening { listen: &cfg.listen, store: &cfg.store_path }.emit();
    runtime::serve::serve(listener, app, runtime::serve::Timeouts::default(), shutdown).await?;
    Ok(())
}

async fn count_requests(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    s.metrics.requests.with_label_values(&[r.status().as_str()]).inc();
    r
}

/// What the operations endpoints read (`runtime::ops`).
struct ApiOps(Arc<AppState>);

impl ApiOps {
    /// The token store answers; the error is the reason to show.
    fn store_up(&self) -> Result<(), String> {
        self.0.store.ping().map_err(|e| {
            events::HealthCheckFailed { error: &e }.emit();
            "token store unavailable".to_string()
        })
    }
}

impl Ops for ApiOps {
    /// Live when the token store answers.
    fn health(&self) -> BoxFuture<'_, Vec<Check>> {
        Box::pin(async { vec![Check { name: "tokenStore", result: self.store_up() }] })
    }

    /// Ready when the token store and ClickHouse (statistics) both answer.
    fn readiness(&self) -> BoxFuture<'_, Readiness> {
        Box::pin(async {
            let mut reasons = Vec::new();
            if let Err(e) = self.store_up() {
                reasons.push(e);
            }
            let s = &self.0;
            if let Err(e) = s.ch_probe.check(|| runtime::health::clickhouse_ping(&s.ch)).await {
                reasons.push(e);
            }
            Readiness { reasons, extra: Default::default() }
        })
    }

    fn registry(&self) -> &prometheus::Registry {
        &self.0.metrics.registry
    }
}
