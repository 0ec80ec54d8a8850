//! The internal events of `ingest`: each logs one line and counts in `metering_internal_events_total`.

use runtime::event;
use std::fmt::Display;

// ---- the gateway ----

/// The gateway listens (at the start of `ingest serve`).
pub struct IngestListening<'a> {
    pub listen: &'a str,
}

event!(IngestListening<'a>, |s, name| tracing::info!(listen = %s.listen, "{}", name));

/// A request was refused unread: the body budget (`scope`: `total` or `key`) was spent.
pub struct BodyBudgetSpent<'a> {
    pub scope: &'a str,
}

event!(BodyBudgetSpent<'a>, |s, name| tracing::warn!(scope = s.scope, "{}: a request was refused unread", name));

// ---- producing to Kafka ----

/// Kafka refused one of a request's records (the broker is up).
pub struct RecordRefused<'a> {
    pub error: &'a dyn Display,
    pub events: usize,
}

event!(RecordRefused<'a>, |s, name| tracing::warn!(error = %s.error, events = s.events, "{}", name));

/// Kafka did not acknowledge every event of a request.
pub struct ProduceFailed<'a> {
    pub error: &'a dyn Display,
    pub events: usize,
}

event!(ProduceFailed<'a>, |s, name| tracing::warn!(error = %s.error, events = s.events, "{}", name));
