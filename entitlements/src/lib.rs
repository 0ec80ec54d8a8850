//! Partners' monthly allowances (issue 26's core): the entitlements file
//! ([`config`]), the standing of each allowance against the period's exact
//! usage and what follows from it (thresholds reached, refusals at token
//! verification, notifications due: [`standing`]), and the signature of the
//! notifications' webhooks ([`webhook`]).
//!
//! Everything here is pure: the usage comes from the fenced aggregates
//! (the caller reads them), the notifications' exactly-once record and
//! delivery are the caller's. Money is `rust_decimal`, bytes are integers,
//! periods are calendar months in UTC (billing's periods).
#![warn(missing_docs)]

pub mod config;
pub mod standing;
pub mod webhook;

pub use config::{load, parse, Allowance, Entitlement, Entitlements, EntitlementsError, Policy, Webhook};
pub use standing::{evaluate, notifications, refusal, Check, Notification, Standing};
