//! # ingest
//!
//! - [`UsageProducer`]: the Rust library media servers use to validate,
//!   encode (Avro single-object) and produce usage events to Kafka.
//! - [`http`]: `ingest serve`, the authenticated HTTP gateway (`POST /v1/usage`),
//!   with a memory budget for the bodies of all requests ([`budget`]),
//!   configured by [`config::IngestConfig`].
//! - `ingest replay`: re-injects fixed dead letters.
//! - `events`: the internal events: each logs one line and counts in
//!   `metering_internal_events_total`.
//!
//! The media-server simulator lives in the `simulator` crate, so the
//! gateway links neither the token service nor the simulator.

#![warn(missing_docs)]

pub mod budget;
pub mod config;
pub mod error;
pub(crate) mod events;
pub mod http;
pub mod json;
pub mod producer;

pub use error::IngestError;
pub use producer::{ProducerOptions, UsageProducer, MEDIA_SERVER_DELIVERY_TIMEOUT};
