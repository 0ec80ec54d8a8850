//! The ingest crate's one error type.

use schemas::FieldError;
use thiserror::Error;

/// Errors of the producer and the gateway.
#[derive(Debug, Error)]
pub enum IngestError {
    /// The event breaks a contract rule; it was not produced.
    #[error("invalid event: {}", schemas::validate::reason_text(.0))]
    Invalid(Vec<FieldError>),
    /// Kafka did not acknowledge the event (broker down, timeout, queue full).
    /// The event may or may not have been written: re-send it, duplicates
    /// are dropped downstream by `(viewer_id, seq)`.
    #[error("Kafka did not acknowledge: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Invalid settings ([`crate::config::IngestConfig::validate`]), or
    /// something that could not be set up from them; holds the reason.
    #[error("configuration: {0}")]
    Config(String),
    /// The HTTP gateway refused or failed a request.
    #[error("HTTP: {0}")]
    Http(String),
}
