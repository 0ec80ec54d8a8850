//! Usage statistics read from ClickHouse, shaped like the analytics API of
//! the established real-time streaming platforms. Same bearer secret as the
//! token routes; replies `{"status":"success","data":...}` or
//! `{"status":"error","message":...}` (`400` invalid parameters, `403`
//! tracking id outside a scoped secret, `500` ClickHouse failed).
//!
//! | route | data |
//! | --- | --- |
//! | `GET /api/analytics/tracking/total?trackingIds=a&trackingIds=b&startDate=YYYY-MM-DD&stopDate=YYYY-MM-DD` | `{a: [{streamName, bytesOut, bytesIn}]}` (daily rollup) |
//! | `GET /api/analytics/tracking/series?...&resolution=Minute\|Hour\|Day\|Month` | `{a: [{timestamp, streamName, bytesOut, bytesIn}]}` |
//! | `GET /api/analytics/tracking/streams/total?streamNames=s&startDate&stopDate` | `{s: [{trackingId, bytesOut, bytesIn}]}` (`""` = untracked) |
//! | `GET /api/analytics/tracking/streams/series?...&resolution=` | `{s: [{timestamp, trackingId, bytesOut, bytesIn}]}` |
//! | `POST /api/records/viewers` `{startTime, endTime, trackingIds \| streamNames}` | one record per viewer connection, NDJSON (default) or CSV (`Accept: text/csv`), streamed |
//!
//! `stopDate` (and `endTime`) are exclusive; dates are UTC days. Every id
//! list holds 1 to 10 ids (tracking ids at most 128 characters, stream names
//! at most 256). Longest ranges: Minute 2 days, Hour 31 days, Day 366 days,
//! Month 5 years, totals 366 days, records 31 days.
//!
//! **Series buckets without usage are absent** (no zero rows); `timestamp` is
//! the bucket start in ISO 8601 UTC (`2026-10-31T20:00:00Z`). Sources:
//! Minute `usage_by_tracking` (window start rounded down to the minute),
//! Hour `usage_by_tracking_hourly`, Day `usage_by_tracking_daily`, Month the
//! daily rollup grouped by `toStartOfMonth(day)`. The ids of a reply key
//! appear even when they have no usage (empty list).
//!
//! Every value reaches ClickHouse as a bound parameter, never as SQL text.

use crate::app::{success, AppState, Reply, Scope};
use crate::MAX_TRACKING_ID_CHARS;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;

/// Most ids (tracking ids or stream names) per call.
pub const MAX_IDS: usize = 10;
/// Most characters of a stream name.
pub const MAX_STREAM_NAME_CHARS: usize = 256;
/// Longest range of the totals routes, days.
pub const MAX_TOTAL_DAYS: i64 = 366;
/// Longest range of `/api/records/viewers`, days.
pub const MAX_RECORD_DAYS: i64 = 31;
/// Most records one viewer-records answer holds (the `X-Row-Limit` header
/// says so; narrow the range or the ids for more).
pub const MAX_RECORD_ROWS: u64 = 1_000_000;
/// Length of a usage window, seconds (the aggregator's default).
use schemas::WINDOW_SECS;

/// Bucket size of a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    Minute,
    Hour,
    Day,
    Month,
}

impl Resolution {
    fn parse(s: &str) -> Result<Self, Reply> {
        match s {
            "Minute" => Ok(Resolution::Minute),
            "Hour" => Ok(Resolution::Hour),
            "Day" => Ok(Resolution::Day),
            "Month" => Ok(Resolution::Month),
            _ => Err(Reply::BadRequest(format!("resolution: one of Minute, Hour, Day, Month (got {s:?})"))),
        }
    }

    /// Longest accepted range, days.
    pub fn max_days(self) -> i64 {
        match self {
            Resolution::Minute => 2,
            Resolution::Hour => 31,
            Resolution::Day => 366,
            Resolution::Month => 5 * 365 + 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Resolution::Minute => "Minute",
            Resolution::Hour => "Hour",
            Resolution::Day => "Day",
            Resolution::Month => "Month",
        }
    }
}

/// What the ids of a request are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum By {
    Tracking,
    Stream,
}

impl By {
    fn param(self) -> &'static str {
        match self {
            By::Tracking => "trackingIds",
            By::Stream => "streamNames",
        }
    }
    fn max_chars(self) -> usize {
        match self {
            By::Tracking => MAX_TRACKING_ID_CHARS,
            By::Stream => MAX_STREAM_NAME_CHARS,
        }
    }
}

fn check_ids(by: By, ids: &[String]) -> Result<(), Reply> {
    let p = by.param();
    if ids.is_empty() || ids.len() > MAX_IDS {
        return Err(Reply::BadRequest(format!("{p}: between 1 and {MAX_IDS} values required (got {})", ids.len())));
    }
    for (i, id) in ids.iter().enumerate() {
        let n = id.chars().count();
        if n == 0 || n > by.max_chars() {
            return Err(Reply::BadRequest(format!("{p}[{i}]: 1 to {} characters", by.max_chars())));
        }
    }
    Ok(())
}

/// A scoped secret may ask only for its own tracking ids.
fn check_scope(scope: &Scope, ids: &[String]) -> Result<(), Reply> {
    if let Some(allowed) = &scope.0 {
        if let Some(bad) = ids.iter().find(|id| !allowed.contains(id)) {
            return Err(Reply::Forbidden(format!("this API secret may not read tracking id {bad:?}")));
        }
    }
    Ok(())
}

/// Parsed query string of the analytics routes.
#[derive(Debug)]
struct AnalyticsQuery {
    ids: Vec<String>,
    start: NaiveDate,
    stop: NaiveDate,
    resolution: Option<Resolution>,
}

fn parse_date(name: &str, v: Option<String>) -> Result<NaiveDate, Reply> {
    let v = v.ok_or_else(|| Reply::BadRequest(format!("{name}: required (YYYY-MM-DD)")))?;
    NaiveDate::parse_from_str(&v, "%Y-%m-%d").map_err(|_| Reply::BadRequest(format!("{name}: {v:?} is not a date (YYYY-MM-DD)")))
}

fn parse_query(raw: Option<String>, by: By, series: bool) -> Result<AnalyticsQuery, Reply> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).map_err(|e| Reply::BadRequest(format!("invalid query string: {e}")))?;
    let (mut ids, mut start, mut stop, mut resolution) = (vec![], None, None, None);
    for (k, v) in pairs {
        match k.as_str() {
            "trackingIds" | "trackingIds[]" if by == By::Tracking => ids.push(v),
            "streamNames" | "streamNames[]" if by == By::Stream => ids.push(v),
            "startDate" => start = Some(v),
            "stopDate" => stop = Some(v),
            "resolution" if series => resolution = Some(Resolution::parse(&v)?),
            other => return Err(Reply::BadRequest(format!("unknown query parameter {other:?}"))),
        }
    }
    check_ids(by, &ids)?;
    let start = parse_date("startDate", start)?;
    let stop = parse_date("stopDate", stop)?;
    if start >= stop {
        return Err(Reply::BadRequest("startDate must be before stopDate (stopDate is exclusive)".into()));
    }
    let days = (stop - start).num_days();
    match (series, resolution) {
        (true, None) => return Err(Reply::BadRequest("resolution: required (Minute, Hour, Day or Month)".into())),
        (true, Some(r)) if days > r.max_days() => {
            return Err(Reply::BadRequest(format!(
                "range of {days} days too long for resolution {}: at most {} days",
                r.name(),
                r.max_days()
            )))
        }
        (false, _) if days > MAX_TOTAL_DAYS => {
            return Err(Reply::BadRequest(format!("range of {days} days too long: at most {MAX_TOTAL_DAYS} days")))
        }
        _ => {}
    }
    Ok(AnalyticsQuery { ids, start, stop, resolution })
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct AggRow {
    key: String,
    other: String,
    ts: String,
    bo: u64,
    bi: u64,
}

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn ch_error(e: clickhouse::error::Error) -> Reply {
    tracing::error!(error = %e, "UsageQueryFailed");
    Reply::Internal("usage store unavailable".into())
}

/// `2026-10-31` or `2026-10-31 20:00:00` (ClickHouse `toString`) to ISO 8601 UTC.
fn iso(ts: &str) -> String {
    if ts.len() == 10 {
        format!("{ts}T00:00:00Z")
    } else {
        format!("{}Z", ts.replacen(' ', "T", 1))
    }
}

async fn aggregate(s: &AppState, by: By, q: &AnalyticsQuery, scope: &Scope) -> Result<Response, Reply> {
    if by == By::Tracking {
        check_scope(scope, &q.ids)?;
    }
    let (key, other) = match by {
        By::Tracking => ("tracking_id", "stream_name"),
        By::Stream => ("stream_name", "tracking_id"),
    };
    // (table, time column is a Date, bucket expression)
    let (table, date_col, ts) = match q.resolution {
        None => ("usage_by_tracking_daily", true, "''"),
        Some(Resolution::Day) => ("usage_by_tracking_daily", true, "toString(day)"),
        Some(Resolution::Month) => ("usage_by_tracking_daily", true, "toString(toStartOfMonth(day))"),
        Some(Resolution::Hour) => ("usage_by_tracking_hourly", false, "toString(hour)"),
        Some(Resolution::Minute) => ("usage_by_tracking", false, "toString(toDateTime(intDiv(toUInt32(window_start), 60) * 60, 'UTC'))"),
    };
    let range = if date_col {
        "day >= toDate(?) AND day < toDate(?)"
    } else if table == "usage_by_tracking" {
        "window_start >= toDateTime(?) AND window_start < toDateTime(?)"
    } else {
        "hour >= toDateTime(?) AND hour < toDateTime(?)"
    };
    let scoped_ids: Option<&Vec<String>> = match by {
        By::Stream => scope.0.as_deref(),
        By::Tracking => None,
    };
    let scope_clause = scoped_ids.map(|ids| format!(" AND tracking_id IN ({})", placeholders(ids.len()))).unwrap_or_default();
    let sql = format!(
        "SELECT {key} AS key, {other} AS other, {ts} AS ts, sum(bytes_out) AS bo, sum(bytes_in) AS bi \
         FROM {table} WHERE {key} IN ({}) AND {range}{scope_clause} \
         GROUP BY key, other, ts ORDER BY key, ts, other",
        placeholders(q.ids.len())
    );
    let mut query = s.ch.query(&sql);
    for id in &q.ids {
        query = query.bind(id.as_str());
    }
    if date_col {
        query = query.bind(q.start.format("%Y-%m-%d").to_string()).bind(q.stop.format("%Y-%m-%d").to_string());
    } else {
        let secs = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp()).unwrap_or(0);
        query = query.bind(secs(q.start)).bind(secs(q.stop));
    }
    if let Some(ids) = scoped_ids {
        for id in ids.iter() {
            query = query.bind(id.as_str());
        }
    }
    let rows: Vec<AggRow> = query.fetch_all().await.map_err(ch_error)?;
    let other_name = match by {
        By::Tracking => "streamName",
        By::Stream => "trackingId",
    };
    let mut data = Map::new();
    for id in &q.ids {
        data.insert(id.clone(), Value::Array(vec![]));
    }
    for r in rows {
        let mut item = Map::new();
        if q.resolution.is_some() {
            item.insert("timestamp".into(), Value::String(iso(&r.ts)));
        }
        item.insert(other_name.into(), Value::String(r.other));
        item.insert("bytesOut".into(), json!(r.bo));
        item.insert("bytesIn".into(), json!(r.bi));
        if let Some(Value::Array(list)) = data.get_mut(&r.key) {
            list.push(Value::Object(item));
        }
    }
    Ok(success(Value::Object(data)))
}

/// `GET /api/analytics/tracking/total`
pub(crate) async fn tracking_total(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Reply> {
    let q = parse_query(raw, By::Tracking, false)?;
    aggregate(&s, By::Tracking, &q, &scope).await
}

/// `GET /api/analytics/tracking/series`
pub(crate) async fn tracking_series(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Reply> {
    let q = parse_query(raw, By::Tracking, true)?;
    aggregate(&s, By::Tracking, &q, &scope).await
}

/// `GET /api/analytics/tracking/streams/total`
pub(crate) async fn streams_total(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Reply> {
    let q = parse_query(raw, By::Stream, false)?;
    aggregate(&s, By::Stream, &q, &scope).await
}

/// `GET /api/analytics/tracking/streams/series`
pub(crate) async fn streams_series(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Reply> {
    let q = parse_query(raw, By::Stream, true)?;
    aggregate(&s, By::Stream, &q, &scope).await
}

// ---- viewer records ----

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecordsBody {
    start_time: String,
    end_time: String,
    #[serde(default)]
    tracking_ids: Option<Vec<String>>,
    #[serde(default)]
    stream_names: Option<Vec<String>>,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct RecordRow {
    viewer_id: String,
    tid: String,
    cvd: String,
    sname: String,
    cl: String,
    first_ws: u32,
    last_ws: u32,
    bo: u64,
    bi: u64,
}

fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, Reply> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S").map(|t| t.and_utc()))
        .map_err(|_| Reply::BadRequest(format!("{name}: {v:?} is not an RFC 3339 time")))
}

fn ts_iso(secs: u32) -> String {
    DateTime::<Utc>::from_timestamp(secs as i64, 0).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
}

/// CSV header of `/api/records/viewers`.
pub const RECORD_CSV_HEADER: &str = "viewerId,trackingId,customViewerData,streamName,clusterId,startTime,endTime,bytesOut,bytesIn\n";

fn csv_field(out: &mut String, v: &str) {
    out.push_str(&runtime::csv::text(v));
}

fn record_line(r: &RecordRow, csv: bool) -> String {
    let start = ts_iso(r.first_ws);
    let end = ts_iso(r.last_ws.saturating_add(WINDOW_SECS));
    if csv {
        let mut s = String::new();
        for (i, f) in [&r.viewer_id, &r.tid, &r.cvd, &r.sname, &r.cl, &start, &end].iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            csv_field(&mut s, f);
        }
        s.push_str(&format!(",{},{}\n", r.bo, r.bi));
        s
    } else {
        let v = json!({
            "viewerId": r.viewer_id,
            "trackingId": r.tid,
            "customViewerData": r.cvd,
            "streamName": r.sname,
            "clusterId": r.cl,
            "startTime": start,
            "endTime": end,
            "bytesOut": r.bo,
            "bytesIn": r.bi,
        });
        format!("{v}\n")
    }
}

/// `POST /api/records/viewers`: streamed from a ClickHouse cursor through a
/// bounded channel, so a long range never sits in memory.
pub(crate) async fn viewer_records(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    Extension(slot): Extension<crate::app::StatsSlot>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Reply> {
    // the stream below holds the concurrency slot until its last row is sent
    let permit = slot.take();
    let b: RecordsBody = serde_json::from_slice(&body).map_err(|e| Reply::BadRequest(format!("invalid body: {e}")))?;
    let start = parse_time("startTime", &b.start_time)?;
    let end = parse_time("endTime", &b.end_time)?;
    if start >= end {
        return Err(Reply::BadRequest("startTime must be before endTime (endTime is exclusive)".into()));
    }
    if end - start > chrono::Duration::days(MAX_RECORD_DAYS) {
        return Err(Reply::BadRequest(format!("range too long: at most {MAX_RECORD_DAYS} days")));
    }
    let (by, ids) = match (b.tracking_ids, b.stream_names) {
        (Some(t), None) => (By::Tracking, t),
        (None, Some(st)) => (By::Stream, st),
        _ => return Err(Reply::BadRequest("exactly one of trackingIds and streamNames is required".into())),
    };
    check_ids(by, &ids)?;
    if by == By::Tracking {
        check_scope(&scope, &ids)?;
    }
    let col = match by {
        By::Tracking => "tracking_id",
        By::Stream => "stream_name",
    };
    let scoped_ids = if by == By::Stream { scope.0.clone() } else { None };
    let scope_clause = scoped_ids.as_ref().map(|v| format!(" AND tracking_id IN ({})", placeholders(v.len()))).unwrap_or_default();
    let sql = format!(
        "SELECT viewer_id, tracking_id AS tid, custom_viewer_data AS cvd, stream_name AS sname, cluster AS cl, \
         toUInt32(min(window_start)) AS first_ws, toUInt32(max(window_start)) AS last_ws, \
         sum(bytes_out) AS bo, sum(bytes_in) AS bi FROM usage_by_viewer \
         WHERE {col} IN ({}) AND window_start >= toDateTime(?) AND window_start < toDateTime(?){scope_clause} \
         GROUP BY viewer_id, tracking_id, custom_viewer_data, stream_name, cluster ORDER BY first_ws, viewer_id \
         LIMIT {MAX_RECORD_ROWS}",
        placeholders(ids.len())
    );
    let mut query = s.ch.query(&sql);
    for id in &ids {
        query = query.bind(id.as_str());
    }
    query = query.bind(start.timestamp()).bind(end.timestamp());
    if let Some(v) = &scoped_ids {
        for id in v.iter() {
            query = query.bind(id.as_str());
        }
    }
    let csv =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.split(',').any(|p| p.trim().starts_with("text/csv")));
    let mut cursor = query.fetch::<RecordRow>().map_err(ch_error)?;
    // the first row before answering: a failing query is a 500, not a cut stream
    let first = cursor.next().await.map_err(ch_error)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let _permit = permit;
        if csv && tx.send(Ok(Bytes::from_static(RECORD_CSV_HEADER.as_bytes()))).await.is_err() {
            return;
        }
        let mut next = first;
        let mut n = 0u64;
        while let Some(r) = next {
            n += 1;
            if tx.send(Ok(Bytes::from(record_line(&r, csv)))).await.is_err() {
                return; // client went away
            }
            next = match cursor.next().await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "ViewerRecordsStreamFailed");
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
        }
        tracing::debug!(records = n, "ViewerRecordsSent");
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let ctype = if csv { "text/csv; charset=utf-8" } else { "application/x-ndjson" };
    let limit = MAX_RECORD_ROWS.to_string();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, ctype), (header::HeaderName::from_static("x-row-limit"), limit.as_str())],
        Body::from_stream(stream),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_and_limits() {
        let q = parse_query(
            Some("trackingIds=a&trackingIds=b%27&startDate=2026-10-01&stopDate=2026-10-03&resolution=Hour".into()),
            By::Tracking,
            true,
        )
        .unwrap();
        assert_eq!(q.ids, vec!["a".to_string(), "b'".to_string()]);
        assert_eq!(q.resolution, Some(Resolution::Hour));
        let bad = [
            "startDate=2026-10-01&stopDate=2026-10-03&resolution=Hour",
            "trackingIds=a&startDate=2026-10-03&stopDate=2026-10-01&resolution=Hour",
            "trackingIds=a&startDate=2026-13-01&stopDate=2026-10-03&resolution=Hour",
            "trackingIds=a&startDate=2026-10-01&stopDate=2026-10-04&resolution=Minute",
            "trackingIds=a&startDate=2026-10-01&stopDate=2026-10-03&resolution=Week",
            "trackingIds=a&startDate=2026-10-01&stopDate=2026-10-03",
        ];
        for b in bad {
            assert!(parse_query(Some(b.into()), By::Tracking, true).is_err(), "{b}");
        }
        let many: String = (0..11).map(|i| format!("trackingIds=t{i}&")).collect();
        assert!(parse_query(Some(format!("{many}startDate=2026-10-01&stopDate=2026-10-03")), By::Tracking, false).is_err());
        let long = "x".repeat(129);
        assert!(parse_query(Some(format!("trackingIds={long}&startDate=2026-10-01&stopDate=2026-10-03")), By::Tracking, false).is_err());
        assert!(parse_query(Some("trackingIds=a&startDate=2025-01-01&stopDate=2026-10-03".into()), By::Tracking, false).is_err());
    }

    #[test]
    fn timestamps_and_csv() {
        assert_eq!(iso("2026-10-31"), "2026-10-31T00:00:00Z");
        assert_eq!(iso("2026-10-31 20:01:00"), "2026-10-31T20:01:00Z");
        let mut s = String::new();
        csv_field(&mut s, "a,\"b\"");
        assert_eq!(s, "\"a,\"\"b\"\"\"");
    }
}
