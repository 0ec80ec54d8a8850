//! Validity rules of the contract (`shared/contract/README.md`, "Validity"),
//! shared by the ingest gateway (rejects with 400) and the aggregator
//! (dead-letters). An invalid event is never half-counted.

use crate::event::ViewerUsage;
use serde::Serialize;
use std::fmt;

/// At most this many characters in `tracking_id`.
pub const MAX_TRACKING_ID_CHARS: usize = 128;
/// At most this many characters in `custom_viewer_data`.
pub const MAX_CUSTOM_VIEWER_DATA_CHARS: usize = 1024;
/// ClickHouse `DateTime` holds seconds in `0..2^32`; event times must fit.
pub const MAX_TIMESTAMP_MS: i64 = (u32::MAX as i64) * 1000;
/// How far in the future `interval_end` may be, when checked against a clock.
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

/// One broken rule: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Check every contract rule; `now_ms`, when given, also rejects an
/// `interval_end` more than five minutes in the future. Returns all broken
/// rules, not just the first.
pub fn validate(ev: &ViewerUsage<'_>, now_ms: Option<i64>) -> Result<(), Vec<FieldError>> {
    let mut errs = Vec::new();
    let mut bad = |field: &'static str, reason: String| errs.push(FieldError { field, reason });
    for (field, v) in [
        ("viewer_id", &ev.viewer_id),
        ("account_id", &ev.account_id),
        ("stream_name", &ev.stream_name),
        ("cluster", &ev.cluster),
        ("server_id", &ev.server_id),
    ] {
        if v.is_empty() {
            bad(field, "must not be empty".into());
        }
    }
    if ev.seq < 0 {
        bad("seq", format!("must be >= 0, got {}", ev.seq));
    }
    if ev.bytes_out < 0 {
        bad("bytes_out", format!("must be >= 0, got {}", ev.bytes_out));
    }
    if ev.bytes_in < 0 {
        bad("bytes_in", format!("must be >= 0, got {}", ev.bytes_in));
    }
    if !(0..MAX_TIMESTAMP_MS).contains(&ev.interval_start) {
        bad("interval_start", format!("{} ms is outside 1970-01-01..2106-02-07", ev.interval_start));
    }
    if ev.interval_end < ev.interval_start {
        bad(
            "interval_end",
            format!("must not be before interval_start ({} < {})", ev.interval_end, ev.interval_start),
        );
    }
    if let Some(now) = now_ms {
        if ev.interval_end > now.saturating_add(MAX_FUTURE_SKEW_MS) {
            bad("interval_end", "is more than 5 minutes in the future".into());
        }
    }
    // a string of at most N bytes has at most N characters: count only longer ones
    let chars = |s: &str, max: usize| if s.len() <= max { s.len() } else { s.chars().count() };
    if let Some(t) = &ev.tracking_id {
        let n = chars(t, MAX_TRACKING_ID_CHARS);
        if n > MAX_TRACKING_ID_CHARS {
            bad("tracking_id", format!("{n} characters, at most {MAX_TRACKING_ID_CHARS} allowed"));
        }
    }
    if let Some(c) = &ev.custom_viewer_data {
        let n = chars(c, MAX_CUSTOM_VIEWER_DATA_CHARS);
        if n > MAX_CUSTOM_VIEWER_DATA_CHARS {
            bad(
                "custom_viewer_data",
                format!("{n} characters, at most {MAX_CUSTOM_VIEWER_DATA_CHARS} allowed"),
            );
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Join field errors into one dead-letter reason: `invalid: bytes_out: must be >= 0, got -1; ...`.
pub fn reason_text(errs: &[FieldError]) -> String {
    let parts: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    format!("invalid: {}", parts.join("; "))
}
