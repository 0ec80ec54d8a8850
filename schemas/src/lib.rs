//! Shared pieces of the metering pipeline: the usage event and its Avro
//! single-object codec, the contract's validity rules, ClickHouse migrations,
//! and configuration helpers.

pub mod auth;
pub mod ch;
pub mod codec;
pub mod config;
pub mod csv;
pub mod event;
pub mod health;
pub mod kafka;
pub mod serve;
pub mod telemetry;
pub mod validate;

pub use codec::{Codec, DecodeError};
pub use event::{OwnedViewerUsage, Protocol, ViewerUsage};
pub use validate::{validate, validate_with, FieldError, Rules};
