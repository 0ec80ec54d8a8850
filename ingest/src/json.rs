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
pub struct JsonEvent {
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
pub enum JsonTime {
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
    pub field: String,
    pub reason: String,
}

/// Parse one JSON value into an event; errors carry `index`.
pub fn parse_value(index: usize, v: serde_json::Value) -> Result<OwnedViewerUsage, Vec<EventError>> {
    let ev: JsonEvent = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let field = if path == "." || path.is_empty() {
            // serde names the field in the message for unknown/missing fields
            inner.split('`').nth(1).unwrap_or("").to_string()
        } else {
            path
        };
        vec![EventError { index: Some(index), field, reason: strip_position(&inner) }]
    })?;
    ev.into_event().map_err(|errs| {
        errs.into_iter()
            .map(|e| EventError { index: Some(index), field: e.field.to_string(), reason: e.reason })
            .collect()
    })
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Parse a request body: a JSON array of events, or NDJSON (one object per
/// line, blank lines ignored), and check every event against the contract
/// (`schemas::validate`, with the clock when `now_ms` is given). Returns all
/// events or all errors, parse and contract errors alike.
pub fn parse_body(body: &[u8], ndjson: bool, rules: &schemas::Rules) -> Result<Vec<OwnedViewerUsage>, Vec<EventError>> {
    let values: Vec<serde_json::Value> = if ndjson {
        let text = std::str::from_utf8(body).map_err(|e| {
            vec![EventError { index: None, field: String::new(), reason: format!("body is not UTF-8: {e}") }]
        })?;
        let mut out = Vec::new();
        let mut errs = Vec::new();
        for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
            match serde_json::from_str(line) {
                Ok(v) => out.push(v),
                Err(e) => errs.push(EventError { index: Some(i), field: String::new(), reason: format!("bad JSON: {e}") }),
            }
        }
        if !errs.is_empty() {
            return Err(errs);
        }
        out
    } else {
        match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(serde_json::Value::Array(a)) => a,
            Ok(_) => {
                return Err(vec![EventError {
                    index: None,
                    field: String::new(),
                    reason: "body must be a JSON array of events".into(),
                }])
            }
            Err(e) => {
                return Err(vec![EventError { index: None, field: String::new(), reason: format!("bad JSON: {e}") }])
            }
        }
    };
    let mut events = Vec::with_capacity(values.len());
    let mut errs = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        match parse_value(i, v) {
            Ok(ev) => {
                if let Err(fe) = schemas::validate_with(&ev, rules) {
                    errs.extend(fe.into_iter().map(|e| EventError { index: Some(i), field: e.field.to_string(), reason: e.reason }));
                }
                events.push(ev)
            }
            Err(e) => errs.extend(e),
        }
    }
    if errs.is_empty() {
        Ok(events)
    } else {
        Err(errs)
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
}
