//! JSON form of usage events for the HTTP gateway.
//!
//! Field names are those of the Avro contract. Times (`interval_start`,
//! `interval_end`) are RFC 3339 strings (`"2026-10-01T12:00:00Z"`, any
//! offset, converted to UTC) or integers of epoch milliseconds. `protocol` is
//! one of the Avro symbols and defaults to `OTHER`; `token_id`, `tracking_id`
//! and `custom_viewer_data` are optional (absent or `null`). Unknown fields
//! are errors.

use schemas::{FieldError, OwnedViewerUsage, Protocol, ViewerUsage};
use serde::Deserialize;
use std::borrow::Cow;

/// An event as accepted over HTTP.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JsonEvent {
    pub viewer_id: String,
    pub seq: i64,
    pub interval_start: JsonTime,
    pub interval_end: JsonTime,
    pub bytes_out: i64,
    pub bytes_in: i64,
    pub account_id: String,
    pub stream_name: String,
    pub cluster: String,
    pub server_id: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub token_id: Option<i64>,
    #[serde(default)]
    pub tracking_id: Option<String>,
    #[serde(default)]
    pub custom_viewer_data: Option<String>,
}

/// RFC 3339 text or epoch milliseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum JsonTime {
    Millis(i64),
    Text(String),
}

impl JsonTime {
    fn to_millis(&self, field: &'static str) -> Result<i64, FieldError> {
        match self {
            JsonTime::Millis(ms) => Ok(*ms),
            JsonTime::Text(s) => chrono::DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|e| FieldError::invalid(field, format!("not an RFC 3339 time or epoch milliseconds: {e}"))),
        }
    }
}

impl JsonEvent {
    /// Convert to the event type; errors name the field.
    pub fn into_event(self) -> Result<OwnedViewerUsage, Vec<FieldError>> {
        let mut errs = Vec::new();
        let start = self.interval_start.to_millis("interval_start").map_err(|e| errs.push(e)).unwrap_or(0);
        let end = self.interval_end.to_millis("interval_end").map_err(|e| errs.push(e)).unwrap_or(0);
        let protocol = match self.protocol.as_deref() {
            None => Protocol::Other,
            Some(s) => Protocol::from_symbol(s).unwrap_or_else(|| {
                errs.push(FieldError::invalid("protocol", format!("{s:?} is not one of WEBRTC, WHEP, RTMP, SRT, OTHER")));
                Protocol::Other
            }),
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(ViewerUsage {
            viewer_id: Cow::Owned(self.viewer_id),
            seq: self.seq,
            interval_start: start,
            interval_end: end,
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
            account_id: Cow::Owned(self.account_id),
            stream_name: Cow::Owned(self.stream_name),
            cluster: Cow::Owned(self.cluster),
            server_id: Cow::Owned(self.server_id),
            protocol,
            token_id: self.token_id,
            tracking_id: self.tracking_id.map(Cow::Owned),
            custom_viewer_data: self.custom_viewer_data.map(Cow::Owned),
        })
    }
}

/// One problem with one event of a request, as returned in a 400 reply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EventError {
    /// Index of the event in the request (array index or NDJSON line, from 0);
    /// `null` when the body as a whole could not be read.
    pub index: Option<usize>,
    /// The field at fault: a contract field, or the unknown name that was
    /// sent; empty when no field is (text that is not JSON, a body that is
    /// not an array). In a gateway answer, cut at 64 bytes.
    pub field: String,
    /// What is wrong, in words; in a gateway answer, cut at 256 bytes.
    pub reason: String,
}

/// Parse one JSON value into an event; errors carry `index`.
pub fn parse_value(index: usize, v: serde_json::Value) -> Result<OwnedViewerUsage, Vec<EventError>> {
    let ev: JsonEvent = serde_path_to_error::deserialize(v).map_err(|e| vec![path_error(index, e)])?;
    to_event(index, ev)
}

/// Parse one event from its JSON text; errors carry `index`.
fn parse_text(index: usize, text: &[u8]) -> Result<OwnedViewerUsage, Vec<EventError>> {
    let mut de = serde_json::Deserializer::from_slice(text);
    let ev: JsonEvent = serde_path_to_error::deserialize(&mut de).map_err(|e| vec![path_error(index, e)])?;
    de.end().map_err(|e| vec![EventError { index: Some(index), field: String::new(), reason: format!("bad JSON: {e}") }])?;
    to_event(index, ev)
}

fn path_error(index: usize, e: serde_path_to_error::Error<serde_json::Error>) -> EventError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let syntax = inner.is_syntax() || inner.is_eof();
    let inner = inner.to_string();
    let field = if syntax {
        String::new()
    } else if path == "." || path.is_empty() {
        // serde names the field in the message for unknown/missing fields
        inner.split('`').nth(1).unwrap_or("").to_string()
    } else {
        path
    };
    let reason = if syntax { format!("bad JSON: {inner}") } else { strip_position(&inner) };
    EventError { index: Some(index), field: truncate(&field, 64), reason: truncate(&reason, 256) }
}

/// At most `max` bytes of `s` (on a character boundary), marked when cut:
/// an error answer never echoes a large part of the request.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn to_event(index: usize, ev: JsonEvent) -> Result<OwnedViewerUsage, Vec<EventError>> {
    ev.into_event()
        .map_err(|errs| errs.into_iter().map(|e| EventError { index: Some(index), field: e.field.to_string(), reason: e.reason }).collect())
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The field names of an event: metric labels come from this fixed set
/// (plus the codes of [`metric_reason`]), never from request text.
pub const FIELDS: [&str; 14] = [
    "viewer_id",
    "seq",
    "interval_start",
    "interval_end",
    "bytes_out",
    "bytes_in",
    "account_id",
    "stream_name",
    "cluster",
    "server_id",
    "protocol",
    "token_id",
    "tracking_id",
    "custom_viewer_data",
];

/// The metric label of an error: the field when it is one of [`FIELDS`],
/// `unknown_field` for any other name, `bad_json` when no field is named.
pub fn metric_reason(e: &EventError) -> &'static str {
    if e.field.is_empty() {
        "bad_json"
    } else {
        FIELDS.iter().find(|f| **f == e.field).copied().unwrap_or("unknown_field")
    }
}

/// How much of a request body is read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// More events than this: the request is refused as soon as the next one is seen.
    pub max_events: usize,
    /// At most this many errors are listed (all are counted).
    pub max_errors: usize,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits { max_events: usize::MAX, max_errors: 100 }
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Some events are invalid (or the body is not JSON): the first
    /// `max_errors` problems, and how many there were in all.
    Invalid { errors: Vec<EventError>, total: usize },
    /// More than `max_events` events: refused when event `max + 1` was
    /// seen (`seen`), without reading further.
    TooManyEvents { max: usize, seen: usize },
}

/// Reads a body element by element: each element is parsed on its own
/// (an error in one does not stop the others from being checked), at most
/// `max_events` are kept, and errors beyond `max_errors` are only counted.
/// Memory stays within the body plus the kept events.
struct Collector<'r> {
    rules: &'r schemas::Rules,
    limits: BodyLimits,
    seen: usize,
    events: Vec<OwnedViewerUsage>,
    errors: Vec<EventError>,
    total_errors: usize,
    too_many: bool,
}

impl Collector<'_> {
    /// Take element `text`; false once the body has too many events.
    fn take(&mut self, text: &[u8]) -> bool {
        let index = self.seen;
        self.seen += 1;
        if self.seen > self.limits.max_events {
            self.too_many = true;
            return false;
        }
        let result = parse_text(index, text).and_then(|ev| match schemas::validate_with(&ev, self.rules) {
            Ok(()) => Ok(ev),
            Err(fe) => {
                Err(fe.into_iter().map(|e| EventError { index: Some(index), field: e.field.to_string(), reason: e.reason }).collect())
            }
        });
        match result {
            Ok(ev) if self.total_errors == 0 => self.events.push(ev),
            // after the first error the request is refused: keep checking, stop keeping
            Ok(_) => {}
            Err(errs) => self.error(errs),
        }
        true
    }

    fn error(&mut self, errs: Vec<EventError>) {
        if self.total_errors == 0 {
            self.events = Vec::new();
        }
        self.total_errors += errs.len();
        let room = self.limits.max_errors.saturating_sub(self.errors.len());
        // never echo a large part of the request
        self.errors.extend(errs.into_iter().take(room).map(|e| EventError {
            index: e.index,
            field: truncate(&e.field, 64),
            reason: truncate(&e.reason, 256),
        }));
    }

    fn finish(self) -> Result<Vec<OwnedViewerUsage>, Rejection> {
        if self.too_many {
            Err(Rejection::TooManyEvents { max: self.limits.max_events, seen: self.seen })
        } else if self.total_errors > 0 {
            Err(Rejection::Invalid { errors: self.errors, total: self.total_errors })
        } else {
            Ok(self.events)
        }
    }
}

/// Marks a stop of the array walk (too many events), not a JSON error.
const STOP: &str = "\u{0}stop";

struct Elements<'c, 'r>(&'c mut Collector<'r>);

impl<'de> serde::de::Visitor<'de> for Elements<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // each element as its raw text: parsed (and failed) on its own
        while let Some(raw) = seq.next_element::<&'de serde_json::value::RawValue>()? {
            if !self.0.take(raw.get().as_bytes()) {
                return Err(serde::de::Error::custom(STOP));
            }
        }
        Ok(())
    }
}

/// Parse a request body: a JSON array of events, or NDJSON (one object per
/// line, blank lines ignored), and check every event against the contract
/// under `rules`. Returns all events, or the errors (parse and contract
/// errors alike, at most `limits.max_errors` listed), or
/// [`Rejection::TooManyEvents`] as soon as the body holds more than
/// `limits.max_events`. Memory is bounded by the body and the kept events:
/// no JSON tree of the body is built.
pub(crate) fn parse_body_limited(
    body: &[u8],
    ndjson: bool,
    rules: &schemas::Rules,
    limits: BodyLimits,
) -> Result<Vec<OwnedViewerUsage>, Rejection> {
    let mut c = Collector { rules, limits, seen: 0, events: Vec::new(), errors: Vec::new(), total_errors: 0, too_many: false };
    if ndjson {
        for line in body.split(|&b| b == b'\n') {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if !c.take(line) {
                break;
            }
        }
        return c.finish();
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let walked = serde::Deserializer::deserialize_seq(&mut de, Elements(&mut c)).and_then(|()| de.end());
    match walked {
        Err(_) if c.too_many => c.finish(),
        Err(e) => {
            // the body as a whole is not an array of JSON values: that is the one error
            let reason = if e.is_data() { "body must be a JSON array of events".to_string() } else { format!("bad JSON: {e}") };
            Err(Rejection::Invalid { errors: vec![EventError { index: None, field: String::new(), reason }], total: 1 })
        }
        Ok(()) => c.finish(),
    }
}

/// Parse a request body (a JSON array of events, or NDJSON: one object per
/// line, blank lines ignored) and check every event against the contract
/// under `rules`, as the gateway does but without an event limit: all
/// events, or the errors (at most 100 listed).
pub fn parse_body(body: &[u8], ndjson: bool, rules: &schemas::Rules) -> Result<Vec<OwnedViewerUsage>, Vec<EventError>> {
    match parse_body_limited(body, ndjson, rules, BodyLimits::default()) {
        Ok(evs) => Ok(evs),
        Err(Rejection::Invalid { errors, .. }) => Err(errors),
        Err(Rejection::TooManyEvents { .. }) => unreachable!("no event limit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> serde_json::Value {
        serde_json::json!({
            "viewer_id": "v1", "seq": 0,
            "interval_start": "2025-10-01T12:00:00+02:00", "interval_end": 1759312810000i64,
            "bytes_out": 100, "bytes_in": 1, "account_id": "a", "stream_name": "s",
            "cluster": "fra-1", "server_id": "x", "protocol": "WHEP", "tracking_id": "t"
        })
    }

    #[test]
    fn parses_rfc3339_and_millis_in_utc() {
        let ev = parse_value(0, good()).unwrap();
        assert_eq!(ev.interval_start, 1_759_312_800_000);
        assert_eq!(ev.interval_end, 1_759_312_810_000);
        assert_eq!(ev.protocol, Protocol::Whep);
        assert_eq!(ev.custom_viewer_data, None);
    }

    #[test]
    fn errors_name_index_and_field() {
        let mut v = good();
        v["bogus"] = 1.into();
        let e = parse_value(3, v).unwrap_err();
        assert_eq!((e[0].index, e[0].field.as_str()), (Some(3), "bogus"));
        let mut v = good();
        v.as_object_mut().unwrap().remove("seq");
        assert_eq!(parse_value(0, v).unwrap_err()[0].field, "seq");
        let mut v = good();
        v["bytes_out"] = "many".into();
        assert_eq!(parse_value(0, v).unwrap_err()[0].field, "bytes_out");
        let mut v = good();
        v["protocol"] = "HTTP".into();
        assert_eq!(parse_value(0, v).unwrap_err()[0].field, "protocol");
        let mut v = good();
        v["interval_start"] = "yesterday".into();
        assert_eq!(parse_value(0, v).unwrap_err()[0].field, "interval_start");
    }

    #[test]
    fn bodies_array_and_ndjson() {
        let arr = serde_json::to_vec(&serde_json::json!([good(), good()])).unwrap();
        assert_eq!(parse_body(&arr, false, &schemas::Rules::default()).unwrap().len(), 2);
        let nd = format!("{}\n\n{}\n", good(), good());
        assert_eq!(parse_body(nd.as_bytes(), true, &schemas::Rules::default()).unwrap().len(), 2);
        assert_eq!(parse_body(b"{\"a\":1}", false, &schemas::Rules::default()).unwrap_err()[0].index, None);
        assert_eq!(parse_body(b"[1,", false, &schemas::Rules::default()).unwrap_err()[0].index, None);
        let nd = format!("{}\nnot json\n", good());
        assert_eq!(parse_body(nd.as_bytes(), true, &schemas::Rules::default()).unwrap_err()[0].index, Some(1));
    }

    fn limits() -> BodyLimits {
        BodyLimits { max_events: 50, max_errors: 100 }
    }

    /// Whatever the body, the parser answers (no panic), keeps at most
    /// `max_events` events and lists at most `max_errors` problems.
    fn bounded(body: &[u8], ndjson: bool) -> Result<(), proptest::test_runner::TestCaseError> {
        match parse_body_limited(body, ndjson, &schemas::Rules::default(), limits()) {
            Ok(evs) => proptest::prop_assert!(evs.len() <= 50),
            Err(Rejection::Invalid { errors, total }) => {
                proptest::prop_assert!(!errors.is_empty() && errors.len() <= 100 && errors.len() <= total);
                for e in &errors {
                    proptest::prop_assert!(e.field.len() <= 64 + 3 && e.reason.len() <= 256 + 3, "{e:?}");
                }
            }
            Err(Rejection::TooManyEvents { max, seen }) => proptest::prop_assert!(max == 50 && seen == 51),
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..2000), ndjson in proptest::bool::ANY) {
            bounded(&body, ndjson)?;
        }

        /// JSON-shaped input: arrays and lines of objects with contract and
        /// foreign field names, wrong types, huge strings, nesting.
        #[test]
        fn json_shaped_bodies_are_bounded(
            objs in proptest::collection::vec(
                proptest::collection::vec((0usize..20, 0u8..6, 0usize..3000), 0..16), 0..80),
            ndjson in proptest::bool::ANY,
        ) {
            let names: Vec<String> = FIELDS.iter().map(|s| s.to_string()).chain((0..6).map(|i| format!("x{i}"))).collect();
            let docs: Vec<serde_json::Value> = objs
                .iter()
                .map(|fields| {
                    let mut m = serde_json::Map::new();
                    for &(name, kind, n) in fields {
                        let v = match kind {
                            0 => serde_json::json!(n as i64 - 1500),
                            1 => serde_json::json!("v".repeat(n)),
                            2 => serde_json::json!(null),
                            3 => serde_json::json!([n, {"a": n}]),
                            4 => serde_json::json!(i64::MAX - n as i64),
                            _ => serde_json::json!("2026-10-01T00:00:00Z"),
                        };
                        m.insert(names[name % names.len()].clone(), v);
                    }
                    serde_json::Value::Object(m)
                })
                .collect();
            let body = if ndjson {
                docs.iter().map(|d| format!("{d}\n")).collect::<String>().into_bytes()
            } else {
                serde_json::to_vec(&docs).unwrap()
            };
            bounded(&body, ndjson)?;
        }
    }
}
