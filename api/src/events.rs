//! The internal events of `api`: each logs one line and counts in `metering_internal_events_total`.

use runtime::event;
use std::fmt::Display;
use std::net::IpAddr;
use std::path::Path;

// ---- the service ----

/// The service listens (at the start of `api serve`).
pub struct ApiListening<'a> {
    pub listen: &'a str,
    pub store: &'a Path,
}

event!(ApiListening<'a>, |s, name| tracing::info!(listen = %s.listen, store = %s.store.display(), "{}", name));

/// `/healthz` found the token store unavailable.
pub struct HealthCheckFailed<'a> {
    pub error: &'a dyn Display,
}

event!(HealthCheckFailed<'a>, |s, name| tracing::error!(error = %s.error, "{}", name));

/// An address failed to authenticate often enough to start waiting (its first wait).
pub struct AuthLockout {
    pub address: IpAddr,
    pub wait_secs: u64,
}

event!(AuthLockout, |s, name| tracing::warn!(
    address = %s.address,
    wait_secs = s.wait_secs,
    "{}: too many failed authentications from one address",
    name
));

// ---- tokens ----

/// A Subscribe token was created.
pub struct SubscribeTokenCreated<'a> {
    pub id: i64,
    pub tracking_id: Option<&'a str>,
    pub origin_cluster: &'a str,
}

event!(
    SubscribeTokenCreated<'a>,
    |s, name| tracing::info!(id = s.id, tracking_id = ?s.tracking_id, origin_cluster = %s.origin_cluster, "{}", name)
);

/// A Subscribe token was updated (`rotated`: its token string was refreshed).
pub struct SubscribeTokenUpdated {
    pub id: i64,
    pub is_active: bool,
    pub rotated: bool,
}

event!(SubscribeTokenUpdated, |s, name| tracing::info!(id = s.id, is_active = s.is_active, rotated = s.rotated, "{}", name));

/// A Subscribe token was deleted.
pub struct SubscribeTokenDeleted {
    pub id: i64,
}

event!(SubscribeTokenDeleted, |s, name| tracing::info!(id = s.id, "{}", name));

/// A Publish token was created.
pub struct PublishTokenCreated {
    pub id: i64,
    pub subscribe_requires_auth: bool,
}

event!(PublishTokenCreated, |s, name| tracing::info!(id = s.id, subscribe_requires_auth = s.subscribe_requires_auth, "{}", name));

/// A Publish token was updated.
pub struct PublishTokenUpdated {
    pub id: i64,
    pub is_active: bool,
    pub subscribe_requires_auth: bool,
}

event!(PublishTokenUpdated, |s, name| tracing::info!(
    id = s.id,
    is_active = s.is_active,
    subscribe_requires_auth = s.subscribe_requires_auth,
    "{}",
    name
));

/// A Publish token was deleted.
pub struct PublishTokenDeleted {
    pub id: i64,
}

event!(PublishTokenDeleted, |s, name| tracing::info!(id = s.id, "{}", name));

/// A stored token's regex rule does not compile (the rule matches nothing).
pub struct StoredRegexInvalid<'a> {
    pub pattern: &'a str,
    pub error: &'a dyn Display,
}

event!(StoredRegexInvalid<'a>, |s, name| tracing::warn!(pattern = %s.pattern, error = %s.error, "{}", name));

/// The token store failed a route or a verification.
pub struct TokenStoreFailed<'a> {
    pub error: &'a dyn Display,
}

event!(TokenStoreFailed<'a>, |s, name| tracing::error!(error = %s.error, "{}", name));

// ---- verification ----

/// A viewer was admitted (`token_id` `None`: admitted without a token).
pub struct TokenVerified<'a> {
    pub token_id: Option<i64>,
    pub tracking_id: Option<&'a str>,
    pub stream: &'a str,
}

event!(TokenVerified<'a>, |s, name| tracing::debug!(token_id = ?s.token_id, tracking_id = ?s.tracking_id, stream = %s.stream, "{}", name));

/// A viewer was refused (`code`: the refusal's code).
pub struct TokenRefused<'a> {
    pub code: &'a str,
    pub reason: &'a dyn Display,
    pub stream: &'a str,
    pub cluster: &'a str,
}

event!(TokenRefused<'a>, |s, name| tracing::info!(code = s.code, reason = %s.reason, stream = %s.stream, cluster = %s.cluster, "{}", name));

// ---- allowances ----

/// The allowances' standing was read again.
pub(crate) struct AllowancesRefreshed {
    pub(crate) allowances: usize,
    pub(crate) exhausted: usize,
}

event!(AllowancesRefreshed, |s, name| tracing::debug!(allowances = s.allowances, exhausted = s.exhausted, "{}", name));

/// Reading the allowances' standing failed: retried at the next interval.
pub(crate) struct AllowancesRefreshFailed<'a> {
    pub(crate) error: &'a dyn Display,
}

event!(AllowancesRefreshFailed<'a>, |s, name| tracing::warn!(error = %s.error, "{}: retrying at the next interval", name));

/// A threshold was reached and recorded (by this process: once across all).
pub(crate) struct AllowanceThresholdReached<'a> {
    pub(crate) id: &'a str,
    pub(crate) percent: &'a str,
    pub(crate) policy: &'a str,
    pub(crate) exhausted: bool,
}

event!(AllowanceThresholdReached<'a>, |s, name| tracing::warn!(
    id = s.id,
    percent = s.percent,
    policy = s.policy,
    exhausted = s.exhausted,
    "{}",
    name
));

/// A receiver acknowledged a threshold notification.
pub(crate) struct AllowanceNotificationDelivered<'a> {
    pub(crate) id: &'a str,
    pub(crate) attempt: i64,
}

event!(AllowanceNotificationDelivered<'a>, |s, name| tracing::info!(id = s.id, attempt = s.attempt, "{}", name));

/// A notification's delivery attempt failed (`gave_up`: it was the last).
pub(crate) struct AllowanceNotificationFailed<'a> {
    pub(crate) id: &'a str,
    pub(crate) attempt: i64,
    pub(crate) error: &'a str,
    pub(crate) gave_up: bool,
}

event!(AllowanceNotificationFailed<'a>, |s, name| tracing::warn!(
    id = s.id,
    attempt = s.attempt,
    error = s.error,
    gave_up = s.gave_up,
    "{}",
    name
));

/// A verification met a standing older than `entitlements_max_staleness_secs`
/// (once per outage: until a refresh succeeds again).
pub(crate) struct EntitlementsStale<'a> {
    pub(crate) tracking_id: &'a str,
    pub(crate) fail_open: bool,
}

event!(EntitlementsStale<'a>, |s, name| tracing::warn!(
    tracking_id = s.tracking_id,
    fail_open = s.fail_open,
    "{}: the allowances' standing is unknown (usage unreadable); {}",
    name,
    if s.fail_open { "admitting (entitlements_fail = open)" } else { "refusing (entitlements_fail = closed)" }
));

// ---- usage statistics ----

/// A usage query to ClickHouse failed.
pub struct UsageQueryFailed<'a> {
    pub error: &'a dyn Display,
}

event!(UsageQueryFailed<'a>, |s, name| tracing::error!(error = %s.error, "{}", name));

/// Reading viewer records failed mid-stream (the answer ends with an error).
pub struct ViewerRecordsStreamFailed<'a> {
    pub error: &'a dyn Display,
}

event!(ViewerRecordsStreamFailed<'a>, |s, name| tracing::error!(error = %s.error, "{}", name));

/// Every viewer record of an answer was sent.
pub struct ViewerRecordsSent {
    pub records: u64,
}

event!(ViewerRecordsSent, |s, name| tracing::debug!(records = s.records, "{}", name));

// ---- console sign-in and sessions ----

/// A console sign-in was refused unread: its address waits.
pub struct ConsoleSignInThrottled;

event!(ConsoleSignInThrottled, |_s, name| tracing::info!("{}", name));

/// A console sign-in gave an unknown secret.
pub struct ConsoleSignInRefused;

event!(ConsoleSignInRefused, |_s, name| tracing::info!("{}", name));

/// A console session was opened (`admin`: with an admin secret; logged as `role`).
pub struct ConsoleSignedIn {
    pub admin: bool,
}

event!(ConsoleSignedIn, |s, name| tracing::info!(role = ?s.admin, "{}", name));

/// The store failed to open a console session.
pub struct ConsoleSessionOpenFailed<'a> {
    pub error: &'a dyn Display,
}

event!(ConsoleSessionOpenFailed<'a>, |s, name| tracing::error!(error = %s.error, "{}", name));

/// The store failed to read a request's console session (it reads as none).
pub struct ConsoleSessionReadFailed<'a> {
    pub error: &'a dyn Display,
}

event!(ConsoleSessionReadFailed<'a>, |s, name| tracing::error!(error = %s.error, "{}", name));

/// The store failed to close a console session at sign-out.
pub struct ConsoleSessionCloseFailed<'a> {
    pub error: &'a dyn Display,
}

event!(ConsoleSessionCloseFailed<'a>, |s, name| tracing::error!(error = %s.error, "{}", name));

// ---- console invoices ----

/// An invoice query to ClickHouse failed.
pub struct InvoiceQueryFailed<'a> {
    pub error: &'a dyn Display,
}

event!(InvoiceQueryFailed<'a>, |s, name| tracing::error!(error = %s.error, "{}", name));

/// A stored invoice document does not parse.
pub struct InvoiceDocumentUnreadable<'a> {
    pub error: &'a dyn Display,
    pub number: &'a str,
}

event!(InvoiceDocumentUnreadable<'a>, |s, name| tracing::error!(error = %s.error, number = s.number, "{}", name));

/// The console's live reconciliation failed.
pub struct ReconciliationFailed<'a> {
    pub error: &'a dyn Display,
}

event!(ReconciliationFailed<'a>, |s, name| tracing::error!(error = %s.error, "{}", name));
