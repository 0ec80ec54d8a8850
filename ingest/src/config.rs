//! Settings of `ingest serve`: a TOML file plus `INGEST__...` environment
//! overrides (see [`runtime::config::load`]).

use runtime::config::ConfigError;
use runtime::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

/// Settings of `ingest serve` (file plus `INGEST__...` environment overrides).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Kafka brokers, topic, extra librdkafka properties.
    pub kafka: KafkaConfig,
    /// Address to listen on.
    pub listen: String,
    /// Accepted bearer API keys. Required: the gateway refuses to start without one.
    pub api_keys: Vec<String>,
    /// Largest accepted request body, bytes (`413` above).
    pub max_body_bytes: usize,
    /// Bytes of request bodies held at once, across all requests (`503`
    /// with `Retry-After` when spent; see `budget`).
    pub max_bodies_bytes: usize,
    /// The part of `max_bodies_bytes` one API key may hold (`429` with
    /// `Retry-After` when spent).
    pub max_bodies_bytes_per_key: usize,
    /// Most events in one request (`413` above).
    pub max_events_per_request: usize,
    /// Events produced but not yet acknowledged, across all requests; a request
    /// that would exceed it gets `429` with `Retry-After`.
    pub max_inflight_events: usize,
    /// How long Kafka may take to acknowledge an event, ms.
    pub delivery_timeout_ms: u64,
    /// Per-event maximum of `bytes_out` and `bytes_in` (default: 10 Gbit/s
    /// over the longest allowed interval, `schemas::validate::DEFAULT_MAX_EVENT_BYTES`).
    pub max_event_bytes: i64,
    /// Log as JSON lines.
    pub json_logs: bool,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            kafka: KafkaConfig::default(),
            listen: "127.0.0.1:8088".into(),
            api_keys: vec![],
            max_body_bytes: 16 * 1024 * 1024,
            max_bodies_bytes: 128 * 1024 * 1024,
            max_bodies_bytes_per_key: 64 * 1024 * 1024,
            max_events_per_request: 10_000,
            max_inflight_events: 200_000,
            delivery_timeout_ms: 10_000,
            max_event_bytes: schemas::validate::DEFAULT_MAX_EVENT_BYTES,
            json_logs: false,
        }
    }
}

impl IngestConfig {
    /// Check the settings that have no safe default.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(ConfigError::Invalid)
    }

    fn check(&self) -> Result<(), String> {
        if self.api_keys.is_empty() {
            return Err("api_keys: at least one key is required (INGEST__API_KEYS='[\"...\"]')".into());
        }
        for (i, k) in self.api_keys.iter().enumerate() {
            runtime::auth::check_secret(&format!("api_keys[{i}]"), k)?;
        }
        if self.max_events_per_request == 0 || self.max_inflight_events < self.max_events_per_request {
            return Err("need 0 < max_events_per_request <= max_inflight_events".into());
        }
        if !(self.max_body_bytes <= self.max_bodies_bytes_per_key && self.max_bodies_bytes_per_key <= self.max_bodies_bytes) {
            return Err("need max_body_bytes <= max_bodies_bytes_per_key <= max_bodies_bytes".into());
        }
        Ok(())
    }
}
