//! # ingest
//!
//! - [`UsageProducer`]: the Rust library media servers use to validate,
//!   encode (Avro single-object) and produce usage events to Kafka.
//! - [`http`]: `ingest serve`, the authenticated HTTP gateway (`POST /v1/usage`).
//! - [`simulate`] and [`sim_run`]: `ingest simulate`, a deterministic
//!   media-server simulator that also computes the exact expected totals.

pub mod error;
pub mod http;
pub mod json;
pub mod producer;
pub mod sim_run;
pub mod simulate;
pub mod tokens;

pub use error::IngestError;
pub use producer::{ProducerOptions, UsageProducer};
