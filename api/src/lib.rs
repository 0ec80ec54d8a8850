//! `metering-api`: the token service of the syndication workflow.
//!
//! The content owner creates one **Subscribe token** per partner, each with
//! its own `trackingId` (the partner's *master token*). Partners hand the
//! master token to viewers directly, or **self-sign** viewer tokens (HS256
//! JWTs keyed with the master token string) that may add
//! `customViewerData`. Media servers admit a viewer only with a token that
//! [`verify::verify`] accepts, and attribute the viewer's bytes to the
//! [`verify::Attribution`] it returns (`token_id`, `tracking_id`,
//! `custom_viewer_data`).
//!
//! - [`store`]: tokens in SQLite (persist across restarts).
//! - [`http`]: `api serve`: the router, health, readiness and metrics.
//! - [`app`]: state shared by the routes, replies, credential checks (a leaf).
//! - [`tokens`]: the token routes (`/api/subscribe_token`,
//!   `/api/publish_token`, `/api/token/verify`).
//! - [`stats`]: usage statistics (`/api/analytics/...`, `/api/records/viewers`)
//!   read from ClickHouse.
//! - [`console`]: the web console at `/` (embedded assets, sign-in, invoices).
//! - [`session`]: console sessions and credential roles (a leaf).
//! - [`throttle`]: failed authentications throttled per client address (a leaf).
//! - [`openapi`]: the OpenAPI document's fixed parts (the paths are
//!   generated from the handlers by `utoipa`).
//! - [`sign`]: self-signing viewer JWTs (`api token sign`).
//! - [`verify`]: the admission rules (token, stream, cluster, the viewer's
//!   origin, address and country) and the attribution.

pub mod app;
pub mod config;
pub mod console;
pub mod http;
pub mod openapi;
pub mod session;
pub mod sign;
pub mod stats;
pub mod store;
pub mod throttle;
pub mod tokens;
pub mod verify;

/// The usage contract's limits, defined once in `schemas`.
pub use schemas::validate::{MAX_CUSTOM_VIEWER_DATA_CHARS, MAX_TRACKING_ID_CHARS};
/// The `originCluster` value that means "any cluster" (any case is accepted,
/// as the platform's guide writes it `Auto`).
pub const AUTO_CLUSTER: &str = "Auto";

/// Whether an `originCluster` means "any cluster".
pub fn is_auto_cluster(c: &str) -> bool {
    c.eq_ignore_ascii_case(AUTO_CLUSTER)
}
