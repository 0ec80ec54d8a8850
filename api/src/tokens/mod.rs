//! The token routes of `api serve`, shaped like the platform's REST API
//! (request bodies, response fields, paging, envelopes): Subscribe and
//! Publish tokens (create, read, update incl. `refreshToken` rotation,
//! list, delete) and viewer-token verification.
//!
//! Unknown body fields are ignored, as the platform does; fields of a known
//! name with a wrong type or value are a `400`.
//!
//! - [`model`]: the tokens (the fields both kinds share in [`model::TokenCommon`]);
//! - `validate`: request bodies and their checks;
//! - `handlers`: the routes; `response`: what they answer;
//! - [`store`]: the tokens in the API's SQLite file, each operation written once for both kinds;
//! - [`verify`]: the admission rules and the attribution; [`sign`]: self-signed viewer JWTs.

pub(crate) mod handlers;
pub mod model;
pub(crate) mod response;
pub mod sign;
pub mod store;
pub(crate) mod validate;
pub mod verify;

/// Longest accepted token lifetime, seconds (10 years).
pub const MAX_EXPIRES_SECS: i64 = 10 * 365 * 86_400;
const MAX_LABEL_CHARS: usize = 256;
const MAX_STREAM_CHARS: usize = 256;
const MAX_STREAMS: usize = 100;
const MAX_LIST_ITEMS: usize = 100;
/// Largest `bindIpsOnUsage`.
pub const MAX_BIND_IPS: u32 = 1000;
/// Largest `itemsOnPage` of the platform's `/list` routes.
pub const MAX_PLATFORM_ITEMS_ON_PAGE: u32 = 100;
/// Most tokens `GET /api/subscribe_token` (without `/list`) answers with.
pub const MAX_ITEMS_ON_PAGE: u32 = 1000;
/// Largest accepted request body of the token routes, bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;
