//! `aggregator dead-letters export`: dead letters as NDJSON an operator can
//! inspect and fix. Each line: `received_at`, `source`, `reason`, `payload`
//! (base64 as stored) and `event`: the decoded event in the gateway's JSON
//! form when the payload still decodes (it was rejected by a validity rule),
//! else `null`. Fix `event` and re-inject the file with `ingest replay`.

use base64::Engine;
use runtime::ch::ClickHouseConfig;
use schemas::Codec;
use serde::Deserialize;
use std::io::Write;

#[derive(Debug, Deserialize, clickhouse::Row)]
struct Row {
    received_at: u32,
    source: String,
    reason: String,
    payload: String,
}

/// Write the dead letters received at or after `since_secs` (epoch) whose
/// reason starts with `reason_prefix` to `out`; returns how many.
pub async fn export(cfg: &ClickHouseConfig, since_secs: u32, reason_prefix: &str, out: &mut dyn Write) -> Result<usize, crate::AggError> {
    let db = cfg.db().map_err(|e| crate::AggError::Config(e.to_string()))?;
    let rows: Vec<Row> = cfg
        .client()
        .query(&format!(
            "SELECT toUInt32(received_at), source, reason, payload FROM {db}.usage_dead_letters \
             WHERE received_at >= toDateTime(?) AND startsWith(reason, ?) ORDER BY received_at, source"
        ))
        .bind(since_secs)
        .bind(reason_prefix)
        .fetch_all()
        .await?;
    let codec = Codec::new();
    for r in &rows {
        let bytes = base64::engine::general_purpose::STANDARD.decode(&r.payload).unwrap_or_default();
        let event = codec.decode(&bytes).ok().map(|e| serde_json::to_value(&e).unwrap_or_default());
        let line = serde_json::json!({
            "received_at": r.received_at,
            "source": r.source,
            "reason": r.reason,
            "payload": r.payload,
            "event": event,
        });
        writeln!(out, "{line}").map_err(|e| crate::AggError::Config(format!("writing the export: {e}")))?;
    }
    Ok(rows.len())
}
