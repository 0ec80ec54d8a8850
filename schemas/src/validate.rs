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
/// At most this many bytes (UTF-8) in each id: `viewer_id`, `account_id`,
/// `stream_name`, `cluster`, `server_id` and `tracking_id`.
pub const MAX_ID_BYTES: usize = 256;
/// The longest reporting interval an event may cover (`interval_end -
/// interval_start`): one hour. Media servers report every few seconds.
pub const MAX_INTERVAL_MS: i64 = 3_600_000;
/// The fastest viewer connection the default byte maximum allows for: 10 Gbit/s.
pub const MAX_VIEWER_BYTES_PER_SEC: i64 = 10_000_000_000 / 8;
/// Default per-event maximum of `bytes_out` and of `bytes_in`: 10 Gbit/s over
/// the longest allowed interval (4.5 TB). Far below `2^63`, and a sum of a
/// million such events still fits a `u64`; sums are checked all the same.
pub const DEFAULT_MAX_EVENT_BYTES: i64 = MAX_VIEWER_BYTES_PER_SEC * (MAX_INTERVAL_MS / 1000);

/// Reason code of an event over the per-event byte maximum (dead letters, metrics).
pub const CODE_TOO_LARGE: &str = "too_large";
/// Reason code of any other broken rule.
pub const CODE_INVALID: &str = "invalid";

/// Settings of [`validate_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// When given, also reject an `interval_end` more than
    /// [`MAX_FUTURE_SKEW_MS`] after this time (epoch ms).
    pub now_ms: Option<i64>,
    /// Per-event maximum of `bytes_out` and `bytes_in`.
    pub max_event_bytes: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Rules { now_ms: None, max_event_bytes: DEFAULT_MAX_EVENT_BYTES }
    }
}

/// One broken rule: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The field that breaks the rule, by its schema name (e.g. `bytes_out`).
    pub field: &'static str,
    /// Why, in plain words, without the field name (e.g. `must be >= 0, got -1`).
    pub reason: String,
    /// [`CODE_TOO_LARGE`] or [`CODE_INVALID`] (not serialised: the text says it).
    #[serde(skip)]
    pub code: &'static str,
}

impl FieldError {
    /// A broken rule with code [`CODE_INVALID`].
    pub fn invalid(field: &'static str, reason: String) -> Self {
        FieldError { field, reason, code: CODE_INVALID }
    }
}

/// The reason code of a rejected event: [`CODE_TOO_LARGE`] when a byte count
/// is over the maximum, else [`CODE_INVALID`].
pub fn code_of(errs: &[FieldError]) -> &'static str {
    if errs.iter().any(|e| e.code == CODE_TOO_LARGE) {
        CODE_TOO_LARGE
    } else {
        CODE_INVALID
    }
}

/// Why `s` is not a valid id, if it is not: too long, or holding a control
/// or bidirectional-formatting character (which would let one id display as
/// another in the console, logs and invoices).
pub fn id_problem(s: &str) -> Option<String> {
    if s.len() > MAX_ID_BYTES {
        return Some(format!("{} bytes, at most {MAX_ID_BYTES} allowed", s.len()));
    }
    // ASCII fast path: only C0 controls and DEL can be wrong
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    s.chars().find(|&c| c.is_control() || is_bidi_control(c)).map(|c| format!("holds the control character U+{:04X}", c as u32))
}

/// Unicode bidirectional formatting characters (UAX #9): embeddings,
/// overrides, isolates and marks.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Check every contract rule with the default byte maximum; `now_ms`, when
/// given, also rejects an `interval_end` more than five minutes in the
/// future. Returns all broken rules, not just the first.
pub fn validate(ev: &ViewerUsage<'_>, now_ms: Option<i64>) -> Result<(), Vec<FieldError>> {
    validate_with(ev, &Rules { now_ms, ..Rules::default() })
}

/// Check every contract rule under `rules`.
pub fn validate_with(ev: &ViewerUsage<'_>, rules: &Rules) -> Result<(), Vec<FieldError>> {
    let now_ms = rules.now_ms;
    let mut errs = Vec::new();
    let mut bad = |field: &'static str, reason: String| errs.push(FieldError::invalid(field, reason));
    for (field, v) in [
        ("viewer_id", &ev.viewer_id),
        ("account_id", &ev.account_id),
        ("stream_name", &ev.stream_name),
        ("cluster", &ev.cluster),
        ("server_id", &ev.server_id),
    ] {
        if v.is_empty() {
            bad(field, "must not be empty".into());
        } else if let Some(p) = id_problem(v) {
            bad(field, p);
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
    let mut too_large = Vec::new();
    for (field, v) in [("bytes_out", ev.bytes_out), ("bytes_in", ev.bytes_in)] {
        if v > rules.max_event_bytes {
            too_large.push(FieldError {
                field,
                reason: format!("{v} is over the per-event maximum of {} bytes", rules.max_event_bytes),
                code: CODE_TOO_LARGE,
            });
        }
    }
    if !(0..MAX_TIMESTAMP_MS).contains(&ev.interval_start) {
        bad("interval_start", format!("{} ms is outside 1970-01-01..2106-02-07", ev.interval_start));
    }
    if ev.interval_end < ev.interval_start {
        bad("interval_end", format!("must not be before interval_start ({} < {})", ev.interval_end, ev.interval_start));
    } else if ev.interval_end - ev.interval_start > MAX_INTERVAL_MS {
        bad("interval_end", format!("the interval is longer than {} s", MAX_INTERVAL_MS / 1000));
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
        } else if let Some(p) = id_problem(t) {
            bad("tracking_id", p);
        }
    }
    if let Some(c) = &ev.custom_viewer_data {
        let n = chars(c, MAX_CUSTOM_VIEWER_DATA_CHARS);
        if n > MAX_CUSTOM_VIEWER_DATA_CHARS {
            bad("custom_viewer_data", format!("{n} characters, at most {MAX_CUSTOM_VIEWER_DATA_CHARS} allowed"));
        }
    }
    errs.extend(too_large);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

/// Join field errors into one dead-letter reason, led by its code:
/// `invalid: bytes_out: must be >= 0, got -1; ...` or `too_large: ...`.
pub fn reason_text(errs: &[FieldError]) -> String {
    let parts: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
    format!("{}: {}", code_of(errs), parts.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    fn ev() -> ViewerUsage<'static> {
        ViewerUsage {
            viewer_id: "v".into(),
            seq: 0,
            interval_start: 1_000_000,
            interval_end: 1_010_000,
            bytes_out: 1,
            bytes_in: 1,
            account_id: "a".into(),
            stream_name: "s".into(),
            cluster: "c".into(),
            server_id: "x".into(),
            protocol: crate::Protocol::Webrtc,
            token_id: None,
            tracking_id: None,
            custom_viewer_data: None,
        }
    }

    #[test]
    fn default_byte_maximum_is_ten_gigabit_for_an_hour() {
        // 10 Gbit/s = 1.25e9 bytes/s, for 3600 s
        assert_eq!(DEFAULT_MAX_EVENT_BYTES, 4_500_000_000_000);
        let mut e = ev();
        e.bytes_out = DEFAULT_MAX_EVENT_BYTES;
        assert!(validate(&e, None).is_ok());
        e.bytes_out = DEFAULT_MAX_EVENT_BYTES + 1;
        e.bytes_in = i64::MAX;
        let errs = validate(&e, None).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(code_of(&errs), CODE_TOO_LARGE);
        assert!(reason_text(&errs).starts_with("too_large: bytes_out: 4500000000001 is over"), "{}", reason_text(&errs));
        let strict = Rules { max_event_bytes: 10, ..Rules::default() };
        e.bytes_out = 11;
        e.bytes_in = 10;
        assert_eq!(validate_with(&e, &strict).unwrap_err()[0].field, "bytes_out");
    }

    #[test]
    fn ids_are_bounded_and_free_of_control_and_bidi_characters() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let at_limit = "y".repeat(MAX_ID_BYTES);
        for (id, ok) in [
            (at_limit.as_str(), true),
            ("ünïcode-ok", true),
            (long.as_str(), false),
            ("a\0b", false),
            ("tab\there", false),
            ("del\u{7f}", false),
            ("acme\u{202E}evil", false),
            ("iso\u{2066}late", false),
            ("mark\u{200F}", false),
        ] {
            let mut e = ev();
            e.viewer_id = Cow::Owned(id.to_string());
            e.tracking_id = Some(Cow::Owned(id.chars().take(MAX_TRACKING_ID_CHARS).collect()));
            let r = validate(&e, None);
            assert_eq!(r.is_ok(), ok, "{id:?}: {r:?}");
            if !ok {
                assert_eq!(code_of(&r.unwrap_err()), CODE_INVALID);
            }
        }
    }

    /// The largest event the rules allow (every id at its byte limit,
    /// tracking id and custom data at their character limits in 4-byte
    /// characters) encodes far below Kafka's default message size (1 MB).
    #[test]
    fn the_largest_valid_event_fits_a_kafka_message() {
        let id = "i".repeat(MAX_ID_BYTES);
        let mut e = ev();
        e.viewer_id = Cow::Owned(id.clone());
        e.account_id = Cow::Owned(id.clone());
        e.stream_name = Cow::Owned(id.clone());
        e.cluster = Cow::Owned(id.clone());
        e.server_id = Cow::Owned(id);
        e.tracking_id = Some(Cow::Owned("𝄞".repeat(MAX_TRACKING_ID_CHARS / 2)));
        e.custom_viewer_data = Some(Cow::Owned("𝄞".repeat(MAX_CUSTOM_VIEWER_DATA_CHARS)));
        e.bytes_out = DEFAULT_MAX_EVENT_BYTES;
        e.seq = i64::MAX;
        e.token_id = Some(i64::MAX);
        assert!(validate(&e, None).is_ok(), "{:?}", validate(&e, None));
        let bytes = crate::Codec::new().encode_to_vec(&e).len();
        assert!(bytes < 8 * 1024, "{bytes} bytes");
        assert!(bytes < 1_000_000);
    }

    #[test]
    fn intervals_longer_than_an_hour_are_refused() {
        let mut e = ev();
        e.interval_end = e.interval_start + MAX_INTERVAL_MS;
        assert!(validate(&e, None).is_ok());
        e.interval_end += 1;
        assert_eq!(validate(&e, None).unwrap_err()[0].field, "interval_end");
    }
}
