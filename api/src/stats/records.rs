//! `POST /api/records/viewers`: viewer sessions as the platform's records.
//!
//! Three steps, each its own function: [`RecordsQuery::parse`] reads the
//! request (defaults, limits, the secret's scope), [`RecordsQuery::sql`]
//! builds the query with its bound values ([`Sql`]), and
//! [`stream_records`] sends the rows as JSON lines or CSV.

use super::sql::Sql;
use super::{
    ch_error, check_ids, check_scope, required_time, By, MAX_IDS, MAX_RECORD_DAYS, MAX_RECORD_ROWS, SESSION_IDLE_SECS, SESSION_MARGIN_HOURS,
};
use crate::app::{AppState, Reply, Scope, StatsErrors};
use crate::events;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Duration, Utc};
use runtime::events::InternalEvent;
use schemas::WINDOW_SECS;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use utoipa::ToSchema;

/// Comparison of `startOperator` / `endOperator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
pub enum Operator {
    GreaterThanOrEqualTo,
    GreaterThan,
    LessThanOrEqualTo,
    LessThan,
}

impl Operator {
    fn sql(self) -> &'static str {
        match self {
            Operator::GreaterThanOrEqualTo => ">=",
            Operator::GreaterThan => ">",
            Operator::LessThanOrEqualTo => "<=",
            Operator::LessThan => "<",
        }
    }
}

/// Which sessions `search` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, ToSchema)]
pub enum Search {
    Completed,
    Ongoing,
    #[default]
    #[serde(rename = "Ongoing_Completed")]
    OngoingCompleted,
}

/// The platform's viewer-records request (unknown fields ignored).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct RecordsBody {
    #[serde(default)]
    start_time: Option<String>,
    #[serde(default)]
    start_operator: Option<Operator>,
    #[serde(default)]
    end_time: Option<String>,
    #[serde(default)]
    end_operator: Option<Operator>,
    #[serde(default)]
    search: Option<Search>,
    /// `null` elements ask for untracked sessions.
    #[serde(default)]
    tracking_ids: Option<Vec<Option<String>>>,
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
    /// The end of the session's last window (its end when completed).
    last_end: i64,
    bo: u64,
    bi: u64,
}

/// A record's time: ISO 8601 UTC, milliseconds (the platform's format).
fn record_time(secs: i64) -> String {
    DateTime::<Utc>::from_timestamp(secs, 0).map(crate::app::iso_time).unwrap_or_default()
}

/// CSV header of `/api/records/viewers`: the platform's columns, then this
/// service's `CustomViewerData`, `BytesOut`, `BytesIn`.
pub const RECORD_CSV_HEADER: &str =
    "StartTime,EndTime,ClientId,ClusterId,Country,Duration,Bytes,IpAddress,StreamName,TrackingId,UserAgent,CustomViewerData,BytesOut,BytesIn\n";

/// A viewer record: the platform's fields in its order, then this
/// service's `customViewerData`, `bytesOut`, `bytesIn`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    start_time: String,
    end_time: Option<String>,
    client_id: &'a str,
    cluster_id: &'a str,
    country: Option<&'a str>,
    duration: i64,
    /// `bytesOut + bytesIn`, exact (a `u128`: never wraps).
    bytes: u128,
    ip_address: Option<&'a str>,
    stream_name: &'a str,
    tracking_id: Option<&'a str>,
    user_agent: Option<&'a str>,
    custom_viewer_data: Option<&'a str>,
    bytes_out: u64,
    bytes_in: u64,
}

/// One session as the platform's record. `country`, `ipAddress` and
/// `userAgent` are `null`: usage events do not carry them.
fn record_line(r: &RecordRow, ongoing_after: i64, csv: bool) -> String {
    let start = i64::from(r.first_ws);
    let last_end = r.last_end;
    let ongoing = last_end >= ongoing_after;
    let end = (!ongoing).then(|| record_time(last_end));
    let duration = last_end - start;
    // checked: bytes_out and bytes_in are each at most u64::MAX
    let bytes = u128::from(r.bo) + u128::from(r.bi);
    let tracking = (!r.tid.is_empty()).then_some(r.tid.as_str());
    let cvd = (!r.cvd.is_empty()).then_some(r.cvd.as_str());
    if csv {
        let cells = [
            record_time(start),
            end.unwrap_or_default(),
            runtime::csv::text(&r.viewer_id).into_owned(),
            runtime::csv::text(&r.cl).into_owned(),
            String::new(),
            duration.to_string(),
            bytes.to_string(),
            String::new(),
            runtime::csv::text(&r.sname).into_owned(),
            tracking.map(|t| runtime::csv::text(t).into_owned()).unwrap_or_default(),
            String::new(),
            cvd.map(|t| runtime::csv::text(t).into_owned()).unwrap_or_default(),
            r.bo.to_string(),
            r.bi.to_string(),
        ];
        format!("{}\n", cells.join(","))
    } else {
        let v = Record {
            start_time: record_time(start),
            end_time: end,
            client_id: &r.viewer_id,
            cluster_id: &r.cl,
            country: None,
            duration,
            bytes,
            ip_address: None,
            stream_name: &r.sname,
            tracking_id: tracking,
            user_agent: None,
            custom_viewer_data: cvd,
            bytes_out: r.bo,
            bytes_in: r.bi,
        };
        let v = serde_json::to_string(&v).unwrap_or_default();
        format!("{v}\n")
    }
}

/// `POST /api/records/viewers`: one record per viewer session (a viewer
/// connection, `clientId`), whole: its bytes and times over every window,
/// not cut at window or query bounds (within [`SESSION_MARGIN_HOURS`]).
///
/// - `startTime` with `startOperator` (default `GreaterThanOrEqualTo`)
///   compares with the session's start;
/// - `endTime` with `endOperator` (default `LessThan`) with a completed
///   session's end; an ongoing session passes; a missing bound is the other
///   one -/+ 31 days, neither: the last 31 days;
/// - `search`: `Completed`, `Ongoing` or `Ongoing_Completed` (default); a
///   session is ongoing while its last usage is less than
///   [`SESSION_IDLE_SECS`] old (`endTime` then `null`);
/// - `trackingIds` (a `null` element: untracked sessions) or `streamNames`,
///   not both; neither: every session a scoped secret may see.
///
/// JSON lines (`application/x-jsonl`, default) or CSV (`Accept: text/csv`,
/// [`RECORD_CSV_HEADER`]), streamed from a ClickHouse cursor through a
/// bounded channel, so a long range never sits in memory.
#[utoipa::path(post, path = "/api/records/viewers", tag = "Analytics", summary = "Viewer sessions as the platform's records, streamed", request_body = RecordsBody,
    responses((status = 200, description = "one record per line, or CSV with a header line (`Accept: text/csv`)", content((Record = "application/x-jsonl"), (String = "text/csv"))), StatsErrors))]
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
    let q = RecordsQuery::parse(b, &scope, Utc::now())?;
    let ongoing_after = Utc::now().timestamp() - SESSION_IDLE_SECS;
    let csv =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.split(',').any(|p| p.trim().starts_with("text/csv")));
    let mut cursor = q.sql(ongoing_after).query(&s.ch).fetch::<RecordRow>().map_err(ch_error)?;
    // the first row before answering: a failing query is a 500, not a cut stream
    let first = cursor.next().await.map_err(ch_error)?;
    let stream = stream_records(cursor, first, ongoing_after, csv, permit);
    let ctype = if csv { "text/csv; charset=utf-8" } else { "application/x-jsonl" };
    let limit = MAX_RECORD_ROWS.to_string();
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, ctype), (header::HeaderName::from_static("x-row-limit"), limit.as_str())],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Which sessions a viewer-records request asks for, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RecordsQuery {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    start_op: Operator,
    end_op: Operator,
    search: Search,
    /// `(column, values)` of the filter by tracking id or stream name.
    filter: Option<(&'static str, Vec<String>)>,
    /// A scoped secret's tracking ids, when the filter does not already
    /// hold the request to them.
    scoped: Option<Vec<String>>,
}

impl RecordsQuery {
    /// Check `b` against the limits and the secret's `scope`; `now` places
    /// the default range.
    fn parse(b: RecordsBody, scope: &Scope, now: DateTime<Utc>) -> Result<RecordsQuery, Reply> {
        // both optional, as on the platform: a missing bound is the other one
        // -/+ 31 days (neither: the last 31 days)
        let start = b.start_time.map(|v| required_time("startTime", Some(v))).transpose()?;
        let end = b.end_time.map(|v| required_time("endTime", Some(v))).transpose()?;
        let span = Duration::days(MAX_RECORD_DAYS);
        let (start, end) = match (start, end) {
            (Some(s), Some(e)) => (s, e),
            (Some(s), None) => (s, s + span),
            (None, Some(e)) => (e - span, e),
            // up to a minute ahead: a session that is still being written
            (None, None) => (now + Duration::minutes(1) - span, now + Duration::minutes(1)),
        };
        if start >= end {
            return Err(Reply::BadRequest("startTime: must be before endTime".into()));
        }
        if end - start > span {
            return Err(Reply::BadRequest(format!("endTime: range too long: at most {MAX_RECORD_DAYS} days")));
        }
        // scoped secrets are held to their ids: by the tracking id filter
        // itself (checked against the scope here), else by a second list
        let scoped_ids = || scope.0.as_deref().cloned();
        let (filter, scoped) = match (b.tracking_ids, b.stream_names) {
            (Some(_), Some(_)) => return Err(Reply::BadRequest("trackingIds: give trackingIds or streamNames, not both".into())),
            (Some(t), None) => {
                if t.iter().any(Option::is_none) && scope.0.is_some() {
                    return Err(Reply::Forbidden("this API secret may not read untracked sessions".into()));
                }
                let t: Vec<String> = t.into_iter().map(Option::unwrap_or_default).collect();
                let named: Vec<String> = t.iter().filter(|i| !i.is_empty()).cloned().collect();
                if t.is_empty() || t.len() > MAX_IDS {
                    return Err(Reply::BadRequest(format!("trackingIds: between 1 and {MAX_IDS} values required")));
                }
                if !named.is_empty() {
                    check_ids(By::Tracking, &named)?;
                }
                check_scope(scope, &named)?;
                (Some(("tracking_id", t)), None)
            }
            (None, Some(st)) => {
                check_ids(By::Stream, &st)?;
                (Some(("stream_name", st)), scoped_ids())
            }
            (None, None) => (None, scoped_ids()),
        };
        Ok(RecordsQuery {
            start,
            end,
            start_op: b.start_operator.unwrap_or(Operator::GreaterThanOrEqualTo),
            end_op: b.end_operator.unwrap_or(Operator::LessThan),
            search: b.search.unwrap_or_default(),
            filter,
            scoped,
        })
    }

    /// The sessions' query: the viewer rows of the range widened by
    /// [`SESSION_MARGIN_HOURS`], grouped per session, then the sessions
    /// that start and end as asked; a session whose last usage is after
    /// `ongoing_after` is ongoing.
    fn sql(&self, ongoing_after: i64) -> Sql {
        let margin = Duration::hours(SESSION_MARGIN_HOURS);
        let mut s = Sql::new(&format!(
            "SELECT viewer_id, tracking_id AS tid, custom_viewer_data AS cvd, stream_name AS sname, cluster AS cl, \
             toUInt32(min(window_start)) AS first_ws, toInt64(toUInt32(max(window_start))) + {WINDOW_SECS} AS last_end, \
             sum(bytes_out) AS bo, sum(bytes_in) AS bi FROM usage_by_viewer WHERE "
        ));
        s.push_bind("window_start >= toDateTime(?)", (self.start - margin).timestamp());
        s.push_bind(" AND window_start < toDateTime(?)", (self.end + margin).timestamp());
        if let Some((col, ids)) = &self.filter {
            s.push(&format!(" AND {col} IN ")).push_list(ids);
        }
        if let Some(ids) = &self.scoped {
            s.push(" AND tracking_id IN ").push_list(ids);
        }
        s.push(" GROUP BY viewer_id, tracking_id, custom_viewer_data, stream_name, cluster HAVING ");
        s.push_bind(&format!("toInt64(first_ws) {} ?", self.start_op.sql()), self.start.timestamp());
        s.push_bind(" AND (last_end >= ?", ongoing_after);
        s.push_bind(&format!(" OR last_end {} ?)", self.end_op.sql()), self.end.timestamp());
        match self.search {
            Search::Completed => s.push_bind(" AND last_end < ?", ongoing_after),
            Search::Ongoing => s.push_bind(" AND last_end >= ?", ongoing_after),
            Search::OngoingCompleted => &mut s,
        };
        s.push(&format!(" ORDER BY first_ws, viewer_id LIMIT {MAX_RECORD_ROWS}"));
        s
    }
}

/// The records, one line each (after [`RECORD_CSV_HEADER`] for CSV), sent
/// from the cursor through a bounded channel so that a long range never
/// sits in memory; `permit` (the statistics concurrency slot) is held
/// until the last line is sent or the client goes away.
fn stream_records<P: Send + 'static>(
    mut cursor: clickhouse::query::RowCursor<RecordRow>,
    first: Option<RecordRow>,
    ongoing_after: i64,
    csv: bool,
    permit: P,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
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
            if tx.send(Ok(Bytes::from(record_line(&r, ongoing_after, csv)))).await.is_err() {
                return; // client went away
            }
            next = match cursor.next().await {
                Ok(r) => r,
                Err(e) => {
                    events::ViewerRecordsStreamFailed { error: &e }.emit();
                    let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                    return;
                }
            };
        }
        events::ViewerRecordsSent { records: n }.emit();
    });
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

#[cfg(test)]
mod tests {
    use super::super::sql::Param;
    use super::*;
    use serde_json::Value;

    #[test]
    fn records_in_the_platform_shape() {
        let r = RecordRow {
            viewer_id: "c,1".into(),
            tid: String::new(),
            cvd: "u=1".into(),
            sname: "live".into(),
            cl: "fra-1".into(),
            first_ws: 1_790_000_040,
            last_end: 1_790_000_220,
            bo: u64::MAX,
            bi: 2,
        };
        let line = record_line(&r, i64::MAX, false);
        assert!(line.contains(r#""bytes":18446744073709551617,"#), "exact beyond u64: {line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["duration"], 180);
        assert_eq!(v["trackingId"], Value::Null);
        assert_eq!(v["endTime"], "2026-09-21T14:17:00.000Z");
        let ongoing: Value = serde_json::from_str(&record_line(&r, 0, false)).unwrap();
        assert_eq!(ongoing["endTime"], Value::Null);
        assert_eq!(record_line(&r, i64::MAX, true).split(',').count(), RECORD_CSV_HEADER.split(',').count() + 1, "quoted comma");
    }

    fn body(v: serde_json::Value) -> RecordsBody {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_scoped_secret_asking_by_stream_is_held_to_its_ids_in_the_query() {
        let now = DateTime::parse_from_rfc3339("2026-10-20T00:00:00Z").unwrap().with_timezone(&Utc);
        let scope = Scope(Some(Arc::new(vec!["p-1".to_string(), "p-2".to_string()])));
        let q = RecordsQuery::parse(
            body(serde_json::json!({"startTime": "2026-10-01T00:00:00Z", "endTime": "2026-10-02T00:00:00Z", "streamNames": ["live"], "search": "Completed"})),
            &scope,
            now,
        )
        .unwrap();
        let sql = q.sql(1_000);
        let (from, to) = (1_790_812_800_i64, 1_790_899_200_i64); // 2026-10-01, 2026-10-02
        let margin = SESSION_MARGIN_HOURS * 3600;
        let expected: Vec<Param> = vec![
            (from - margin).into(),
            (to + margin).into(),
            "live".into(),
            "p-1".into(),
            "p-2".into(),
            from.into(),
            1_000.into(),
            to.into(),
            1_000.into(),
        ];
        assert_eq!(sql.params(), &expected[..]);
        assert!(sql.text().contains(" AND stream_name IN (?) AND tracking_id IN (?, ?) GROUP BY "), "{}", sql.text());
        assert!(
            sql.text().contains("HAVING toInt64(first_ws) >= ? AND (last_end >= ? OR last_end < ?) AND last_end < ? ORDER BY"),
            "{}",
            sql.text()
        );
        // asking by tracking id, the ids are the scope: no second list
        let q = RecordsQuery::parse(body(serde_json::json!({"trackingIds": ["p-2"]})), &scope, now).unwrap();
        assert_eq!(q.scoped, None);
        let end = now + Duration::minutes(1);
        assert_eq!(
            (q.start, q.end),
            (end - Duration::days(MAX_RECORD_DAYS), end),
            "neither bound: the last 31 days (a request the first version refused)"
        );
        assert_eq!(q.sql(0).text().matches('?').count(), 6);
        // and an id outside it is refused
        assert!(matches!(RecordsQuery::parse(body(serde_json::json!({"trackingIds": ["other"]})), &scope, now), Err(Reply::Forbidden(_))));
        assert!(matches!(RecordsQuery::parse(body(serde_json::json!({"trackingIds": [null]})), &scope, now), Err(Reply::Forbidden(_))));
    }
}
