//! The event contract of the metering pipeline and nothing else (the
//! ClickHouse schema is the `warehouse` crate's): the usage event,
//! its Avro single-object codec and schema versions, and the validity rules
//! and limits. No I/O: the shared runtime (ClickHouse, Kafka, config,
//! telemetry, credentials, HTTP serving) is the `runtime` crate.

#![warn(missing_docs)]

pub mod codec;
pub mod event;
pub mod validate;

/// Width of the tumbling windows of the usage tables, seconds (the
/// contract's default; `aggregator`'s `window_secs`).
pub const WINDOW_SECS: u32 = 60;

pub use codec::{Codec, DecodeError};
pub use event::{OwnedViewerUsage, Protocol, ViewerUsage};
pub use validate::{validate, validate_with, FieldError, Rules};
