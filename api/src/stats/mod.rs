//! Usage statistics read from ClickHouse in the platform's analytics shapes.
//! Same bearer secret as the token routes; the platform's envelopes (`400`
//! `{"status":"fail","data":...}` for invalid parameters, `403` a tracking id
//! outside a scoped secret, `500` `{"status":"error"}` ClickHouse failed).
//!
//! | route | `data` |
//! | --- | --- |
//! | `GET /api/analytics/tracking/total?trackingIds=a&trackingIds=b&startDate&stopDate` | `{a: [{streamName, bytesOut, bytesIn}]}` |
//! | `GET /api/analytics/tracking/series?...&resolution=Hour\|Day` | `{a: {"<bucket>": [{streamName, bytesOut, bytesIn}]}}` |
//! | `GET /api/analytics/tracking/streams/total?streamNames=s&startDate&stopDate` | `{s: [{trackingId?, bytesOut, bytesIn}]}` |
//! | `GET /api/analytics/tracking/streams/series?...&resolution=` | `{s: {"<bucket>": [{trackingId, bytesOut, bytesIn}]}}` |
//! | `POST /api/records/viewers` | viewer sessions, JSON lines (`application/x-jsonl`) or CSV (`Accept: text/csv`), see `viewer_records` |
//!
//! - `startDate` and `stopDate` are a date (`2026-10-31`, midnight UTC) or an
//!   ISO 8601 date-time (`2026-10-31T20:00:00Z`); `stopDate` is exclusive.
//! - `resolution`: `Hour` and `Day` as on the platform; `Minute` and `Month`
//!   are this service's extension. Series are **dense**: every bucket of
//!   the range is present, `[]` when it has no usage; a bucket is named by
//!   its start (`2026-10-31T20:00:00Z`). Every requested id is a key, even
//!   without usage.
//! - Untracked usage (no tracking id) appears in the stream routes only, as
//!   the platform shows it: an item **without** `trackingId` in
//!   `streams/total`, `"trackingId": ""` in `streams/series`.
//! - Limits: 1 to 10 ids per call (tracking ids at most 128 characters,
//!   stream names 256); ranges at most: Minute 2 days, Hour 31 days, Day
//!   366 days, Month 5 years, totals 366 days, records 31 days.
//!
//! Every value reaches ClickHouse as a bound parameter, never as SQL text.

pub(crate) mod records;
mod sql;

use crate::app::{success, AppState, Reply, Scope, StatsErrors, Success};
use crate::events;
use crate::MAX_TRACKING_ID_CHARS;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Timelike, Utc};
use runtime::events::InternalEvent;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sql::Sql;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};

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
/// How far before `startTime` and after `endTime` a session's rows are read,
/// so that a session is reported whole rather than cut at the query's
/// bounds (longer sessions are cut this far outside them), hours.
pub const SESSION_MARGIN_HOURS: i64 = 48;
/// A session with no usage for this long is completed, seconds (media
/// servers report every few seconds; the aggregator writes within a flush).
pub const SESSION_IDLE_SECS: i64 = 300;

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
            _ => Err(Reply::BadRequest(format!("resolution: one of Hour, Day (or this service's Minute, Month); got {s:?}"))),
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

    /// ClickHouse expression of a row's bucket (epoch seconds, or `YYYYMM`
    /// for Month), on ClickHouse 18.16 as on current versions.
    fn sql(self) -> &'static str {
        match self {
            Resolution::Minute => "toUInt32(toStartOfMinute(window_start))",
            Resolution::Hour => "toUInt32(toStartOfHour(window_start))",
            Resolution::Day => "toUInt32(toStartOfDay(window_start))",
            Resolution::Month => "toUInt32(toYYYYMM(window_start))",
        }
    }

    /// The bucket holding `t`.
    fn floor(self, t: DateTime<Utc>) -> DateTime<Utc> {
        let d = t.date_naive();
        let at = |h: u32, m: u32| Utc.from_utc_datetime(&d.and_hms_opt(h, m, 0).unwrap_or_default());
        match self {
            Resolution::Minute => at(t.hour(), t.minute()),
            Resolution::Hour => at(t.hour(), 0),
            Resolution::Day => at(0, 0),
            Resolution::Month => Utc.from_utc_datetime(&d.with_day(1).unwrap_or(d).and_hms_opt(0, 0, 0).unwrap_or_default()),
        }
    }

    fn next(self, t: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Resolution::Minute => t + Duration::minutes(1),
            Resolution::Hour => t + Duration::hours(1),
            Resolution::Day => t + Duration::days(1),
            Resolution::Month => t.checked_add_months(chrono::Months::new(1)).unwrap_or(t + Duration::days(31)),
        }
    }

    /// The bucket a row's `sql()` value names.
    fn bucket_of(self, v: u32) -> Option<DateTime<Utc>> {
        match self {
            Resolution::Month => {
                let d = NaiveDate::from_ymd_opt((v / 100) as i32, v % 100, 1)?;
                Some(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?))
            }
            _ => DateTime::from_timestamp(i64::from(v), 0),
        }
    }
}

/// The grain a question is read at: the coarsest whose boundaries both
/// ends of the range and every bucket fall on, so that the sealed table of
/// that grain answers it (docs/clickhouse.md, "Which table answers"): a
/// month of days reads one row per key and day, not per minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Grain {
    Minute,
    Hour,
    Day,
}

impl Grain {
    fn of(resolution: Option<Resolution>, start: DateTime<Utc>, stop: DateTime<Utc>) -> Grain {
        let bucket = match resolution {
            Some(Resolution::Minute) => Grain::Minute,
            Some(Resolution::Hour) => Grain::Hour,
            Some(Resolution::Day | Resolution::Month) | None => Grain::Day,
        };
        let aligned = |t: DateTime<Utc>| match t.timestamp() {
            s if s % 86_400 == 0 => Grain::Day,
            s if s % 3_600 == 0 => Grain::Hour,
            _ => Grain::Minute,
        };
        bucket.min(aligned(start)).min(aligned(stop))
    }

    /// The view, its time column, and the bucket expression of `resolution`
    /// on it (the same values as [`Resolution::sql`] on `window_start`).
    fn source(self, by: By, resolution: Option<Resolution>) -> (&'static str, &'static str, &'static str) {
        match (self, resolution) {
            (Grain::Minute, r) => ("usage_by_tracking", "window_start", r.map_or("toUInt32(0)", Resolution::sql)),
            (Grain::Hour, r) => (
                "usage_by_tracking_hourly",
                "hour",
                match r {
                    None => "toUInt32(0)",
                    Some(Resolution::Day) => "toUInt32(toStartOfDay(hour))",
                    Some(Resolution::Month) => "toUInt32(toYYYYMM(hour))",
                    // Hour (Minute buckets are read at the minute grain)
                    Some(_) => "toUInt32(hour)",
                },
            ),
            (Grain::Day, r) => (
                // the stream routes: the daily table ordered by stream
                if by == By::Stream { "usage_by_stream_daily" } else { "usage_by_tracking_daily" },
                "day",
                match r {
                    None => "toUInt32(0)",
                    Some(Resolution::Month) => "toUInt32(toYYYYMM(day))",
                    Some(_) => "toUInt32(toUInt32(day) * 86400)",
                },
            ),
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
    start: DateTime<Utc>,
    stop: DateTime<Utc>,
    resolution: Option<Resolution>,
}

/// An ISO 8601 date-time (`2026-10-31T20:00:00Z`, an offset, or none: UTC)
/// or a date (midnight UTC).
pub fn parse_time(v: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc()))
        .or_else(|| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok().and_then(|d| d.and_hms_opt(0, 0, 0)).map(|t| t.and_utc()))
}

fn required_time(name: &str, v: Option<String>) -> Result<DateTime<Utc>, Reply> {
    let v = v.ok_or_else(|| Reply::BadRequest(format!("{name}: required (YYYY-MM-DD or an ISO 8601 date-time)")))?;
    parse_time(&v).ok_or_else(|| Reply::BadRequest(format!("{name}: {v:?} is not a date (YYYY-MM-DD) or an ISO 8601 date-time")))
}

fn parse_query(raw: Option<String>, by: By, series: bool) -> Result<AnalyticsQuery, Reply> {
    let pairs = crate::app::query_pairs(raw.as_deref())?;
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
    let start = required_time("startDate", start)?;
    let stop = required_time("stopDate", stop)?;
    if start >= stop {
        return Err(Reply::BadRequest("startDate: must be before stopDate (stopDate is exclusive)".into()));
    }
    let span = stop - start;
    match (series, resolution) {
        (true, None) => return Err(Reply::BadRequest("resolution: required (Hour or Day; Minute, Month)".into())),
        (true, Some(r)) if span > Duration::days(r.max_days()) => {
            return Err(Reply::BadRequest(format!("stopDate: range too long for resolution {}: at most {} days", r.name(), r.max_days())))
        }
        (false, _) if span > Duration::days(MAX_TOTAL_DAYS) => {
            return Err(Reply::BadRequest(format!("stopDate: range too long: at most {MAX_TOTAL_DAYS} days")))
        }
        _ => {}
    }
    Ok(AnalyticsQuery { ids, start, stop, resolution })
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct AggRow {
    key: String,
    other: String,
    bucket: u32,
    bo: u64,
    bi: u64,
}

fn ch_error(e: clickhouse::error::Error) -> Reply {
    events::UsageQueryFailed { error: &e }.emit();
    Reply::Internal("usage store unavailable".into())
}

/// A bucket's name: its start, ISO 8601 UTC, whole seconds.
fn bucket_name(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// An item of the `tracking/...` routes: a stream's bytes.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamBytes {
    pub stream_name: String,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// An item of the `tracking/streams/...` routes: a tracking id's bytes.
/// Untracked usage: no `trackingId` in totals, `""` in series.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrackingBytes {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking_id: Option<String>,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// Totals: id → items.
pub type Totals<T> = BTreeMap<String, Vec<T>>;
/// Series: id → bucket start (ISO 8601) → items.
pub type Series<T> = BTreeMap<String, BTreeMap<String, Vec<T>>>;

/// One item of a reply: the other dimension and the bytes. Untracked usage
/// in `streams/total` has no `trackingId` (the platform's shape).
fn item(by: By, other: &str, bo: u64, bi: u64, series: bool) -> Value {
    let v = match by {
        By::Tracking => serde_json::to_value(StreamBytes { stream_name: other.to_string(), bytes_out: bo, bytes_in: bi }),
        By::Stream => {
            let tracking_id = (series || !other.is_empty()).then(|| other.to_string());
            serde_json::to_value(TrackingBytes { tracking_id, bytes_out: bo, bytes_in: bi })
        }
    };
    v.unwrap_or(Value::Null)
}

/// The query of the totals routes (documentation of [`parse_query`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct TotalsParams {
    /// 1 to 10 ids (`trackingIds` or `streamNames`, by route); repeat the parameter.
    #[param(rename = "trackingIds | streamNames")]
    ids: Vec<String>,
    /// A date (`YYYY-MM-DD`, midnight UTC) or an ISO 8601 date-time.
    start_date: String,
    /// Exclusive end: a date or an ISO 8601 date-time.
    stop_date: String,
}

/// The query of the series routes (documentation of [`parse_query`]).
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct SeriesParams {
    /// 1 to 10 ids (`trackingIds` or `streamNames`, by route); repeat the parameter.
    #[param(rename = "trackingIds | streamNames")]
    ids: Vec<String>,
    /// A date (`YYYY-MM-DD`, midnight UTC) or an ISO 8601 date-time.
    start_date: String,
    /// Exclusive end: a date or an ISO 8601 date-time.
    stop_date: String,
    /// `Hour` (31 days at most) or `Day` (366); this service's `Minute` (2) and `Month` (5 years).
    resolution: String,
}

async fn aggregate(s: &AppState, by: By, q: &AnalyticsQuery, scope: &Scope) -> Result<Response, Reply> {
    if by == By::Tracking {
        check_scope(scope, &q.ids)?;
    }
    let (key, other) = match by {
        By::Tracking => ("tracking_id", "stream_name"),
        By::Stream => ("stream_name", "tracking_id"),
    };
    let grain = Grain::of(q.resolution, q.start, q.stop);
    let (view, time, bucket) = grain.source(by, q.resolution);
    let scoped_ids: Option<&Vec<String>> = match by {
        By::Stream => scope.0.as_deref(),
        By::Tracking => None,
    };
    let mut sql = Sql::new(&format!(
        "SELECT {key} AS key, {other} AS other, {bucket} AS bucket, sum(bytes_out) AS bo, sum(bytes_in) AS bi FROM {view} WHERE {key} IN "
    ));
    sql.push_list(&q.ids);
    // a day's bounds as dates, compared with the `Date` column
    if grain == Grain::Day {
        sql.push_bind(&format!(" AND {time} >= toDate(?)"), q.start.date_naive().to_string());
        sql.push_bind(&format!(" AND {time} < toDate(?)"), q.stop.date_naive().to_string());
    } else {
        sql.push_bind(&format!(" AND {time} >= toDateTime(?)"), q.start.timestamp());
        sql.push_bind(&format!(" AND {time} < toDateTime(?)"), q.stop.timestamp());
    }
    if let Some(ids) = scoped_ids {
        sql.push(" AND tracking_id IN ").push_list(ids);
    }
    sql.push(" GROUP BY key, other, bucket ORDER BY key, bucket, other");
    let query = sql.query(&s.ch);
    let rows: Vec<AggRow> = query.fetch_all().await.map_err(ch_error)?;
    let mut data = Map::new();
    match q.resolution {
        None => {
            for id in &q.ids {
                data.insert(id.clone(), json!([]));
            }
            for r in rows {
                if let Some(Value::Array(list)) = data.get_mut(&r.key) {
                    list.push(item(by, &r.other, r.bo, r.bi, false));
                }
            }
        }
        Some(res) => {
            // every bucket of the range, in order, empty until filled
            let mut buckets = Vec::new();
            let mut t = res.floor(q.start);
            while t < q.stop {
                buckets.push(t);
                t = res.next(t);
            }
            let mut per_id: BTreeMap<&str, BTreeMap<DateTime<Utc>, Vec<Value>>> =
                q.ids.iter().map(|id| (id.as_str(), buckets.iter().map(|b| (*b, Vec::new())).collect())).collect();
            for r in &rows {
                let Some(b) = res.bucket_of(r.bucket) else { continue };
                if let Some(list) = per_id.get_mut(r.key.as_str()).and_then(|m| m.get_mut(&b)) {
                    list.push(item(by, &r.other, r.bo, r.bi, true));
                }
            }
            for id in &q.ids {
                let series: Map<String, Value> = per_id
                    .remove(id.as_str())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(b, list)| (bucket_name(b), Value::Array(list)))
                    .collect();
                data.insert(id.clone(), Value::Object(series));
            }
        }
    }
    Ok(success(Value::Object(data)))
}

/// `GET /api/analytics/tracking/total`
#[utoipa::path(get, path = "/api/analytics/tracking/total", tag = "Analytics", summary = "Bytes per tracking id and stream over a range", params(TotalsParams),
    responses((status = 200, body = Success<Totals<StreamBytes>>), StatsErrors))]
pub(crate) async fn tracking_total(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Reply> {
    let q = parse_query(raw, By::Tracking, false)?;
    aggregate(&s, By::Tracking, &q, &scope).await
}

/// `GET /api/analytics/tracking/series`
#[utoipa::path(get, path = "/api/analytics/tracking/series", tag = "Analytics", summary = "Bytes per tracking id, bucket and stream; every bucket present", params(SeriesParams),
    responses((status = 200, body = Success<Series<StreamBytes>>), StatsErrors))]
pub(crate) async fn tracking_series(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Reply> {
    let q = parse_query(raw, By::Tracking, true)?;
    aggregate(&s, By::Tracking, &q, &scope).await
}

/// `GET /api/analytics/tracking/streams/total`
#[utoipa::path(get, path = "/api/analytics/tracking/streams/total", tag = "Analytics", summary = "Bytes per stream and tracking id over a range (untracked: no trackingId)", params(TotalsParams),
    responses((status = 200, body = Success<Totals<TrackingBytes>>), StatsErrors))]
pub(crate) async fn streams_total(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Reply> {
    let q = parse_query(raw, By::Stream, false)?;
    aggregate(&s, By::Stream, &q, &scope).await
}

/// `GET /api/analytics/tracking/streams/series`
#[utoipa::path(get, path = "/api/analytics/tracking/streams/series", tag = "Analytics", summary = "Bytes per stream, bucket and tracking id; every bucket present (untracked: trackingId \"\")", params(SeriesParams),
    responses((status = 200, body = Success<Series<TrackingBytes>>), StatsErrors))]
pub(crate) async fn streams_series(
    State(s): State<Arc<AppState>>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, Reply> {
    let q = parse_query(raw, By::Stream, true)?;
    aggregate(&s, By::Stream, &q, &scope).await
}

// ---- viewer records ----

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_question_is_read_at_the_coarsest_grain_its_range_and_buckets_fall_on() {
        let t = |d: u32, h: u32, m: u32| Utc.with_ymd_and_hms(2026, 10, d, h, m, 0).unwrap();
        use Resolution::*;
        let cases = [
            // (resolution, start, stop, grain)
            (Some(Day), t(1, 0, 0), t(31, 0, 0), Grain::Day),
            (Some(Month), t(1, 0, 0), t(31, 0, 0), Grain::Day),
            (None, t(1, 0, 0), t(2, 0, 0), Grain::Day),
            (Some(Hour), t(1, 0, 0), t(31, 0, 0), Grain::Hour),
            (Some(Minute), t(1, 0, 0), t(2, 0, 0), Grain::Minute),
            // a range's end inside a day or an hour: the finer grain
            (Some(Day), t(1, 6, 0), t(31, 0, 0), Grain::Hour),
            (None, t(1, 0, 0), t(1, 20, 30), Grain::Minute),
            (Some(Hour), t(1, 0, 0), t(1, 20, 30), Grain::Minute),
        ];
        for (r, start, stop, want) in cases {
            assert_eq!(Grain::of(r, start, stop), want, "{r:?} {start} .. {stop}");
        }
        assert_eq!(Grain::Day.source(By::Stream, Some(Day)).0, "usage_by_stream_daily", "streams: the table ordered by stream");
        assert_eq!(Grain::Day.source(By::Tracking, Some(Day)).0, "usage_by_tracking_daily");
        assert_eq!(Grain::Hour.source(By::Stream, Some(Hour)).0, "usage_by_tracking_hourly");
        assert_eq!(Grain::Minute.source(By::Tracking, Some(Hour)), ("usage_by_tracking", "window_start", Hour.sql()));
    }

    #[test]
    fn query_parsing_and_limits() {
        let q = parse_query(
            Some("trackingIds=a&trackingIds=b%27&startDate=2026-10-01&stopDate=2026-10-03T12:00:00Z&resolution=Hour".into()),
            By::Tracking,
            true,
        )
        .unwrap();
        assert_eq!(q.ids, vec!["a".to_string(), "b'".to_string()]);
        assert_eq!(q.resolution, Some(Resolution::Hour));
        assert_eq!(q.stop, Utc.with_ymd_and_hms(2026, 10, 3, 12, 0, 0).unwrap());
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
    fn buckets_cover_the_range() {
        let t = Utc.with_ymd_and_hms(2026, 10, 31, 20, 17, 5).unwrap();
        assert_eq!(Resolution::Hour.floor(t), Utc.with_ymd_and_hms(2026, 10, 31, 20, 0, 0).unwrap());
        assert_eq!(Resolution::Month.floor(t), Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap());
        assert_eq!(Resolution::Month.next(Resolution::Month.floor(t)), Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap());
        assert_eq!(Resolution::Month.bucket_of(202612), Some(Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()));
        assert_eq!(bucket_name(Resolution::Day.floor(t)), "2026-10-31T00:00:00Z");
    }
}
