//! `metering-api`: the token service of the syndication workflow.
//!
//! The content owner creates one **Subscribe token** per partner, each with
//! its own `trackingId` (the partner's *master token*). Partners hand the
//! master token to viewers directly, or **self-sign** viewer tokens (HS256
//! JWTs keyed with the master token string) that may add
//! `customViewerData`. Media servers admit a viewer only with a token that
//! [`tokens::verify::verify`] accepts, and attribute the viewer's bytes to the
//! [`tokens::verify::Attribution`] it returns (`token_id`, `tracking_id`,
//! `custom_viewer_data`).
//!
//! Three products, each in its folder:
//! - [`tokens`]: the token routes (`/api/subscribe_token`,
//!   `/api/publish_token`, `/api/token/verify`): the token model, request
//!   validation, handlers, responses, the tokens' store, self-signed viewer
//!   JWTs ([`tokens::sign`], `api token sign`) and the admission rules
//!   ([`tokens::verify`]: token, stream, cluster, the viewer's origin,
//!   address and country, and the attribution).
//! - `stats`: usage statistics (`/api/analytics/...`, `/api/records/viewers`)
//!   read from ClickHouse, with their queries built by its SQL builder.
//! - `console`: the web console at `/`: its handlers beside its assets
//!   (`console/assets/`, embedded), sign-in and sessions
//!   (`console::session`: credential roles), invoices.
//!
//! Shared by them:
//! - [`store`]: the API's SQLite file (tokens, IP bindings, console sessions).
//! - [`http`]: `api serve`: the router, health, readiness and metrics.
//! - `app`: state shared by the routes, replies, credential checks (a leaf).
//! - [`throttle`]: failed authentications throttled per client address (a leaf).
//! - `events`: the internal events: each logs one line and counts in
//!   `metering_internal_events_total` (a leaf).
//! - `openapi`: the OpenAPI document's fixed parts (the paths are
//!   generated from the handlers by `utoipa`).

#![warn(missing_docs)]

pub(crate) mod app;
pub mod config;
pub(crate) mod console;
pub mod entitlements;
pub(crate) mod events;
pub mod http;
pub(crate) mod openapi;
pub(crate) mod stats;
pub mod store;
pub mod throttle;
pub mod tokens;

/// The usage contract's limits, defined once in `schemas`.
pub use schemas::validate::{MAX_CUSTOM_VIEWER_DATA_CHARS, MAX_TRACKING_ID_CHARS};
/// The `originCluster` value that means "any cluster" (any case is accepted,
/// as the platform's guide writes it `Auto`).
pub const AUTO_CLUSTER: &str = "Auto";

/// Whether an `originCluster` means "any cluster".
pub fn is_auto_cluster(c: &str) -> bool {
    c.eq_ignore_ascii_case(AUTO_CLUSTER)
}
