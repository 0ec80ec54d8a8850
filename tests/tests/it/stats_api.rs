//! Statistics API against the real stack: simulated usage (crossing midnight
//! and a month boundary, with duplicates) goes through Kafka and the
//! aggregator into ClickHouse once ([`run`]); each case below then asks its
//! own `api serve` one kind of question, and the answers equal the exact
//! expected totals.

use api::config::{ApiConfig, ScopedSecret};
use api::store::Store;
use e2e::*;
use serde_json::{json, Value};
use simulator::simulate::{Expected, SimConfig, ViewerTotals};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

const SECRET: &str = "stats-test-secret-0123456789abcdef";
const SCOPED: &str = "stats-scoped-secret-0123456789abcdef";

/// The usage every case reads: one simulation, aggregated once into its own
/// database by the first case that asks (the others wait for it).
struct Run {
    db: runtime::ch::ClickHouseConfig,
    exp: Expected,
    /// The simulation's tracking ids (untracked usage left out).
    tracked: Vec<String>,
    /// Cases finished (see [`Run::done`]).
    finished: AtomicUsize,
}

/// The number of cases (`#[tokio::test]`s) in this module: the last one to
/// finish drops the run's database.
const CASES: usize = 9;

static RUN: OnceCell<Run> = OnceCell::const_new();

async fn run() -> &'static Run {
    RUN.get_or_init(|| async {
        let topic = unique("stats");
        create_topic(&topic, 4).await;
        let db = test_db().await;
        let start = chrono::DateTime::parse_from_rfc3339("2026-10-31T20:00:00Z").unwrap().timestamp_millis();
        let cfg = SimConfig {
            seed: 21,
            run_id: topic.clone(),
            partners: 3,
            viewers_per_partner: 12,
            untracked_viewers: 4,
            streams: 2,
            start_ms: start,
            duration_secs: 8 * 3600,
            session_secs: (60, 2400),
            duplicates: 0.02,
            ..Default::default()
        };
        let exp: Expected = simulate_to_kafka(&cfg, &topic).await;
        assert!(exp.duplicates_sent > 0);
        assert!(exp.unique_valid_events > 1_000, "a meaningful run: {}", exp.unique_valid_events);
        let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
        let got = wait_for_events(&db, exp.unique_valid_events, Duration::from_secs(180)).await;
        assert_eq!(got, exp.unique_valid_events, "events in ClickHouse");
        agg.terminate(Duration::from_secs(30));
        let tracked: Vec<String> = exp.by_tracking.keys().filter(|k| !k.is_empty()).cloned().collect();
        assert!(tracked.len() >= 2, "{tracked:?}");
        Run { db, exp, tracked, finished: AtomicUsize::new(0) }
    })
    .await
}

impl Run {
    /// The partner the scoped secret belongs to.
    fn partner(&self) -> String {
        self.tracked[0].clone()
    }
    fn ids(&self) -> Vec<&str> {
        self.tracked.iter().map(String::as_str).collect()
    }
    /// The simulation's stream names.
    fn streams(&self) -> Vec<&str> {
        let streams: std::collections::BTreeSet<&str> = self.exp.by_viewer.values().map(|v| v.stream_name.as_str()).collect();
        assert_eq!(streams.len(), 2, "{streams:?}");
        streams.into_iter().collect()
    }
    /// Two partners' tracking ids and their viewers.
    fn chosen(&self) -> (Vec<&str>, BTreeMap<&String, &ViewerTotals>) {
        let chosen: Vec<&str> = self.ids()[..2].to_vec();
        let viewers: BTreeMap<&String, &ViewerTotals> =
            self.exp.by_viewer.iter().filter(|(_, v)| chosen.contains(&v.tracking_id.as_str())).collect();
        assert!(!viewers.is_empty());
        (chosen, viewers)
    }
    /// A case is over: the last one drops the database.
    async fn done(&self) {
        if self.finished.fetch_add(1, Ordering::SeqCst) + 1 == CASES {
            drop_db(&self.db).await;
        }
    }
}

/// A case's turn at the stack, the run, and an `api serve` of its own on the run's database.
async fn case() -> (tokio::sync::RwLockReadGuard<'static, ()>, &'static Run, Api) {
    let turn = e2e::turns::shared().await;
    let run = run().await;
    let api_cfg = ApiConfig {
        api_secrets: vec![SECRET.into()],
        store_path: std::env::temp_dir().join(format!("{}.db", unique("stats_tokens"))),
        clickhouse: run.db.clone(),
        scoped_secrets: vec![ScopedSecret { secret: SCOPED.into(), tracking_ids: vec![run.partner()] }],
        ..Default::default()
    };
    let store = Arc::new(Store::open(&api_cfg.store_path).expect("store"));
    let app = api::http::router(&api_cfg, store).expect("router");
    let (url, server) = serve_router(app).await;
    (turn, run, Api { url, client: reqwest::Client::new(), server, store_path: api_cfg.store_path })
}

struct Api {
    url: String,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    store_path: std::path::PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_file(&self.store_path);
    }
}

impl Api {
    async fn get_as(&self, path: &str, secret: Option<&str>) -> (u16, Value) {
        let mut rb = self.client.get(format!("{}{path}", self.url));
        if let Some(s) = secret {
            rb = rb.bearer_auth(s);
        }
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
    async fn get(&self, path: &str) -> (u16, Value) {
        self.get_as(path, Some(SECRET)).await
    }
    async fn records(&self, body: Value, csv: bool, secret: &str) -> (u16, String, String) {
        let mut rb = self.client.post(format!("{}/api/records/viewers", self.url)).bearer_auth(secret).json(&body);
        if csv {
            rb = rb.header("Accept", "text/csv");
        }
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let ctype = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        (status, ctype, r.text().await.unwrap())
    }
}

fn q(ids: &[&str], key: &str, extra: &str) -> String {
    let mut s: String = ids.iter().map(|i| format!("{key}={}&", urlencode(i))).collect();
    s.push_str(extra);
    s
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

const RANGE: &str = "startDate=2026-10-31&stopDate=2026-11-02";

/// (tracking id, bucket) -> (bytes_out, bytes_in) from a tracking total
/// (`{id: [items]}`, bucket `""`) or series (`{id: {bucket: [items]}}`)
/// reply; empty buckets are left out.
fn by_bucket(data: &Value) -> BTreeMap<(String, String), (u64, u64)> {
    let mut m = BTreeMap::new();
    for (id, v) in data.as_object().unwrap() {
        let lists: Vec<(String, &Value)> = match v {
            Value::Object(buckets) => buckets.iter().map(|(b, l)| (b.clone(), l)).collect(),
            list => vec![(String::new(), list)],
        };
        for (ts, list) in lists {
            for item in list.as_array().unwrap() {
                let e = m.entry((id.clone(), ts.clone())).or_insert((0u64, 0u64));
                e.0 += item["bytesOut"].as_u64().unwrap();
                e.1 += item["bytesIn"].as_u64().unwrap();
            }
        }
    }
    m
}

/// The bucket names of every id of a series reply (each id must have the same).
fn bucket_names(data: &Value) -> Vec<String> {
    let all: Vec<Vec<String>> = data.as_object().unwrap().values().map(|v| v.as_object().unwrap().keys().cloned().collect()).collect();
    assert!(all.windows(2).all(|w| w[0] == w[1]), "every id has every bucket");
    all.into_iter().next().unwrap_or_default()
}

/// A viewer's expected record times: the start of its first usage window and the end of its last.
fn session_bounds(v: &ViewerTotals) -> (i64, i64) {
    let w = i64::from(schemas::WINDOW_SECS);
    (v.first_start_ms.div_euclid(1000 * w) * w, v.last_start_ms.div_euclid(1000 * w) * w + w)
}

/// Ready without a secret; totals per tracking id, one day (stopDate exclusive, as a date or a date-time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn totals_per_tracking_id_equal_the_expected_usage() {
    let (_turn, run, api) = case().await;
    let exp = &run.exp;
    let tracked = run.tracked.clone();
    let ids_tracked = run.ids();
    // ready (token store and ClickHouse answer), without a secret
    let r = api.client.get(format!("{}/readyz", api.url)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["ready"], true);

    // totals per tracking id
    let (st, body) = api.get(&format!("/api/analytics/tracking/total?{}", q(&ids_tracked, "trackingIds", RANGE))).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(body["status"], "success");
    let totals = by_bucket(&body["data"]);
    for t in &tracked {
        let e = &exp.by_tracking[t];
        assert_eq!(totals.get(&(t.clone(), String::new())), Some(&(e.bytes_out, e.bytes_in)), "total of {t}");
    }

    // stopDate is exclusive: one day's totals equal that day
    let (st, body) = api
        .get(&format!("/api/analytics/tracking/total?{}", q(&ids_tracked, "trackingIds", "startDate=2026-10-31&stopDate=2026-11-01")))
        .await;
    assert_eq!(st, 200, "{body}");
    let day1 = by_bucket(&body["data"]);
    for t in &tracked {
        let want = exp.by_day["2026-10-31"].get(t).map(|s| (s.bytes_out, s.bytes_in));
        assert_eq!(day1.get(&(t.clone(), String::new())).copied(), want, "2026-10-31 of {t}");
    }

    // stopDate as a date-time equals the date
    let (_, a) = api
        .get(&format!("/api/analytics/tracking/total?{}", q(&ids_tracked, "trackingIds", "startDate=2026-10-31&stopDate=2026-11-01")))
        .await;
    let (_, b) = api
        .get(&format!(
            "/api/analytics/tracking/total?{}",
            q(&ids_tracked, "trackingIds", "startDate=2026-10-31&stopDate=2026-11-01T00:00:00Z")
        ))
        .await;
    assert_eq!(a["data"], b["data"]);

    run.done().await;
}

/// Hour, Day, Month and Minute series, and totals of a range that is not whole days.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_have_every_bucket_and_add_up_to_the_expected_usage() {
    let (_turn, run, api) = case().await;
    let exp = &run.exp;
    let tracked = run.tracked.clone();
    let ids_tracked = run.ids();
    // series: Hour, Day, Month, Minute
    // every bucket of the range is present (empty ones as []), as on the platform
    let series = |res: &'static str| {
        let path = format!("/api/analytics/tracking/series?{}", q(&ids_tracked, "trackingIds", &format!("{RANGE}&resolution={res}")));
        let api = &api;
        async move {
            let (st, body) = api.get(&path).await;
            assert_eq!(st, 200, "{res}: {body}");
            let names = bucket_names(&body["data"]);
            let want = match res {
                "Minute" => 2 * 1440,
                "Hour" => 48,
                "Day" => 2,
                _ => 2, // October and November
            };
            assert_eq!(names.len(), want, "{res} buckets: {names:?}");
            assert_eq!(names[0], "2026-10-31T00:00:00Z".replace("10-31", if res == "Month" { "10-01" } else { "10-31" }));
            by_bucket(&body["data"])
        }
    };
    let want = |m: &BTreeMap<String, BTreeMap<String, simulator::simulate::Totals>>, fmt: &dyn Fn(&str) -> String| {
        let mut w: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
        for (bucket, per) in m {
            for (t, s) in per {
                if t.is_empty() {
                    continue;
                }
                let e = w.entry((t.clone(), fmt(bucket))).or_default();
                e.0 += s.bytes_out;
                e.1 += s.bytes_in;
            }
        }
        w
    };
    assert_eq!(series("Hour").await, want(&exp.by_hour, &|h| h.to_string()), "hourly series");
    assert!(exp.by_day.len() == 2, "crosses midnight: {:?}", exp.by_day.keys());
    assert_eq!(series("Day").await, want(&exp.by_day, &|d| format!("{d}T00:00:00Z")), "daily series");
    let months = want(&exp.by_day, &|d| format!("{}-01T00:00:00Z", &d[..7]));
    assert_eq!(months.keys().map(|k| k.1.clone()).collect::<std::collections::BTreeSet<_>>().len(), 2, "two months");
    assert_eq!(series("Month").await, months, "monthly series");
    // a range whose ends are not whole days (read from the hourly rows):
    // the sums of its hours
    let (start, stop) = ("2026-10-31T06:00:00Z", "2026-11-01T12:00:00Z");
    let (st, body) = api
        .get(&format!("/api/analytics/tracking/total?{}", q(&ids_tracked, "trackingIds", &format!("startDate={start}&stopDate={stop}"))))
        .await;
    assert_eq!(st, 200, "{body}");
    let mut hours: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for ((t, h), v) in want(&exp.by_hour, &|h| h.to_string()) {
        if h.as_str() >= start && h.as_str() < stop {
            let e = hours.entry((t, String::new())).or_default();
            e.0 += v.0;
            e.1 += v.1;
        }
    }
    assert!(!hours.is_empty(), "the simulation has usage in those hours");
    assert_eq!(by_bucket(&body["data"]), hours, "totals of 06:00 to 12:00 the next day");
    let minute = series("Minute").await;
    assert!(minute.len() > 100, "many minute buckets");
    assert!(minute.keys().all(|(_, ts)| ts.ends_with(":00Z")));
    for t in &tracked {
        let sum = minute.iter().filter(|(k, _)| &k.0 == t).fold((0, 0), |a, (_, v)| (a.0 + v.0, a.1 + v.1));
        assert_eq!(sum, (exp.by_tracking[t].bytes_out, exp.by_tracking[t].bytes_in), "minute series of {t}");
    }

    run.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_routes_add_up_to_the_grand_total_untracked_included() {
    let (_turn, run, api) = case().await;
    let exp = &run.exp;
    // streams: per stream and tracking id, adding up to the grand total (untracked included)
    let sv = run.streams();
    let (st, body) = api.get(&format!("/api/analytics/tracking/streams/total?{}", q(&sv, "streamNames", RANGE))).await;
    assert_eq!(st, 200, "{body}");
    let mut per_tracking: BTreeMap<String, u64> = BTreeMap::new();
    for (_, list) in body["data"].as_object().unwrap() {
        for item in list.as_array().unwrap() {
            // untracked usage: an item without trackingId (the platform's shape)
            assert_ne!(item.get("trackingId"), Some(&json!("")), "{item}");
            let t = item.get("trackingId").map(|t| t.as_str().unwrap().to_string()).unwrap_or_default();
            *per_tracking.entry(t).or_default() += item["bytesOut"].as_u64().unwrap();
        }
    }
    assert!(per_tracking.contains_key(""), "untracked usage shown");
    let want_pt: BTreeMap<String, u64> = exp.by_tracking.iter().map(|(k, t)| (k.clone(), t.bytes_out)).collect();
    assert_eq!(per_tracking, want_pt, "streams/total per tracking id");
    assert_eq!(per_tracking.values().sum::<u64>(), exp.total.bytes_out);
    let (st, body) =
        api.get(&format!("/api/analytics/tracking/streams/series?{}", q(&sv, "streamNames", &format!("{RANGE}&resolution=Hour")))).await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(bucket_names(&body["data"]).len(), 48);
    let items: Vec<&Value> = body["data"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|buckets| buckets.as_object().unwrap().values())
        .flat_map(|l| l.as_array().unwrap())
        .collect();
    let grand: u64 = items.iter().map(|i| i["bytesOut"].as_u64().unwrap()).sum();
    assert_eq!(grand, exp.total.bytes_out, "streams/series grand total");
    let untracked: u64 = items.iter().filter(|i| i["trackingId"] == "").map(|i| i["bytesOut"].as_u64().unwrap()).sum();
    assert_eq!(untracked, exp.by_tracking[""].bytes_out, "untracked as trackingId \"\" in series");

    run.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_records_as_ndjson_and_csv_equal_each_viewers_usage() {
    let (_turn, run, api) = case().await;
    // viewer records, NDJSON and CSV
    let (chosen, want_viewers) = run.chosen();
    let body = json!({"startTime": "2026-10-31T20:00:00Z", "endTime": "2026-11-01T05:00:00Z", "trackingIds": chosen});
    let (st, ctype, text) = api.records(body.clone(), false, SECRET).await;
    assert_eq!(st, 200, "{text}");
    assert!(ctype.starts_with("application/x-jsonl"), "{ctype}");
    let recs: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(recs.len(), want_viewers.len(), "one record per viewer");
    for r in &recs {
        let v = want_viewers[&r["clientId"].as_str().unwrap().to_string()];
        let (start, end) = session_bounds(v);
        assert_eq!(r["bytesOut"].as_u64().unwrap(), v.totals.bytes_out);
        assert_eq!(r["bytesIn"].as_u64().unwrap(), v.totals.bytes_in);
        assert_eq!(r["bytes"].as_u64().unwrap(), v.totals.bytes_out + v.totals.bytes_in);
        assert_eq!(r["customViewerData"].as_str().unwrap_or(""), v.custom_viewer_data, "null when none");
        assert_eq!(r["trackingId"].as_str().unwrap(), v.tracking_id);
        assert_eq!(r["streamName"].as_str().unwrap(), v.stream_name);
        assert_eq!(
            (r["startTime"].as_str().unwrap(), r["endTime"].as_str().unwrap()),
            (iso_ms(start * 1000).as_str(), iso_ms(end * 1000).as_str())
        );
        assert_eq!(r["duration"].as_i64().unwrap(), end - start);
        for k in ["country", "ipAddress", "userAgent", "clusterId"] {
            assert!(r.get(k).is_some(), "platform field {k}: {r}");
        }
    }
    // startTime is optional, as on the platform: endTime - 31 days
    let (st, _, open_start) = api.records(json!({"endTime": "2026-11-01T05:00:00Z", "trackingIds": chosen}), false, SECRET).await;
    assert_eq!((st, open_start.lines().count()), (200, want_viewers.len()), "{open_start}");
    let (st, ctype, text) = api.records(body.clone(), true, SECRET).await;
    assert_eq!(st, 200, "{text}");
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    let mut lines = text.lines();
    assert!(lines
        .next()
        .unwrap()
        .starts_with("StartTime,EndTime,ClientId,ClusterId,Country,Duration,Bytes,IpAddress,StreamName,TrackingId"));
    let csv_rows: Vec<&str> = lines.collect();
    assert_eq!(csv_rows.len(), want_viewers.len());
    for l in csv_rows {
        let viewer = l.split(',').nth(2).unwrap().to_string();
        let v = want_viewers[&viewer];
        let bytes_out: u64 = l.rsplit(',').nth(1).unwrap().parse().unwrap();
        assert_eq!(bytes_out, v.totals.bytes_out, "csv {l}");
        if !v.custom_viewer_data.contains([',', '"']) {
            assert!(l.contains(&format!(",{},", v.custom_viewer_data)), "{l}");
        }
    }

    run.done().await;
}

/// Whole sessions, not cut at the bounds; none ongoing; untracked sessions by a null tracking id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_records_are_whole_sessions_within_the_bounds() {
    let (_turn, run, api) = case().await;
    let exp = &run.exp;
    let (chosen, want_viewers) = run.chosen();
    // whole sessions, not cut at the query's bounds: from the middle of the
    // longest session (which is then excluded, as it started before) for 4 h,
    // sessions started from then and completed before the end, each whole
    let longest = want_viewers.values().map(|v| session_bounds(v)).max_by_key(|(s, e)| e - s).unwrap();
    let from = (longest.0 + longest.1) / 2 / 60 * 60;
    let to = from + 4 * 3600;
    let inside: BTreeMap<&String, &ViewerTotals> = want_viewers
        .iter()
        .filter(|(_, v)| {
            let (s, e) = session_bounds(v);
            s >= from && e < to
        })
        .map(|(k, v)| (*k, *v))
        .collect();
    let crossing = want_viewers.values().filter(|v| (session_bounds(v).0 < from) && session_bounds(v).1 > from).count();
    assert!(!inside.is_empty() && crossing > 0, "sessions inside and across the bounds: {} {crossing}", inside.len());
    let narrow = json!({"startTime": iso_ms(from * 1000), "endTime": iso_ms(to * 1000), "trackingIds": chosen,
                        "startOperator": "GreaterThanOrEqualTo", "endOperator": "LessThan", "search": "Completed"});
    let (st, _, text) = api.records(narrow, false, SECRET).await;
    assert_eq!(st, 200, "{text}");
    let got: BTreeMap<String, (u64, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|r| {
            (r["clientId"].as_str().unwrap().to_string(), (r["bytesOut"].as_u64().unwrap(), r["startTime"].as_str().unwrap().to_string()))
        })
        .collect();
    let want: BTreeMap<String, (u64, String)> =
        inside.iter().map(|(k, v)| ((*k).clone(), (v.totals.bytes_out, iso_ms(session_bounds(v).0 * 1000)))).collect();
    assert_eq!(got, want, "whole sessions within the bounds");
    // nothing of 2026 is ongoing now
    let ongoing =
        json!({"startTime": "2026-10-31T20:00:00Z", "endTime": "2026-11-01T05:00:00Z", "trackingIds": chosen, "search": "Ongoing"});
    assert_eq!(api.records(ongoing, false, SECRET).await.2, "");
    // untracked sessions: a null tracking id
    let (st, _, text) = api
        .records(json!({"startTime": "2026-10-31T20:00:00Z", "endTime": "2026-11-01T05:00:00Z", "trackingIds": [null]}), false, SECRET)
        .await;
    assert_eq!(st, 200);
    let untracked_viewers = exp.by_viewer.values().filter(|v| v.tracking_id.is_empty()).count();
    assert_eq!(text.lines().count(), untracked_viewers);
    assert!(text.lines().all(|l| serde_json::from_str::<Value>(l).unwrap()["trackingId"].is_null()));
    assert_eq!(api.records(json!({"startTime": "2026-10-31T20:00:00Z", "trackingIds": [null]}), false, SCOPED).await.0, 403);

    run.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_attempts_get_nothing_or_400_and_the_tables_stay() {
    let (_turn, run, api) = case().await;
    let db = &run.db;
    // injection attempts: empty or 400, never someone else's data
    for evil in ["x' OR 1=1 --", "x') OR ('1'='1", "x\\' OR 1=1 --", "'; DROP TABLE usage_by_tracking; --"] {
        let (st, body) = api.get(&format!("/api/analytics/tracking/total?{}", q(&[evil], "trackingIds", RANGE))).await;
        assert!(st == 200 || st == 400, "{evil}: {st}");
        if st == 200 {
            assert_eq!(body["data"], json!({evil: []}), "{evil}");
        }
        let (st, _, text) = api
            .records(json!({"startTime": "2026-10-31T20:00:00Z", "endTime": "2026-11-01T05:00:00Z", "trackingIds": [evil]}), false, SECRET)
            .await;
        assert!(st == 400 || (st == 200 && text.is_empty()), "{evil}: {st} {text}");
    }
    for evil in ["live' OR 1=1 --", "x\\' OR stream_name != '"] {
        let (st, body) = api.get(&format!("/api/analytics/tracking/streams/total?{}", q(&[evil], "streamNames", RANGE))).await;
        assert_eq!(st, 200, "{evil}: {body}");
        assert_eq!(body["data"], json!({evil: []}), "{evil}");
        let (st, body) =
            api.get(&format!("/api/analytics/tracking/series?{}", q(&[evil], "trackingIds", &format!("{RANGE}&resolution=Minute")))).await;
        assert_eq!(st, 200, "{evil}: {body}");
        assert!(by_bucket(&body["data"]).is_empty(), "{evil}");
    }
    let (st, _) = api.get(&format!("/api/analytics/tracking/total?{}", q(&[&"x".repeat(129)], "trackingIds", RANGE))).await;
    assert_eq!(st, 400, "id over 128 characters");
    assert!(count(db, &format!("SELECT count() FROM {}.usage_by_tracking", db.database)).await > 0, "tables intact");

    run.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_limit_questions_are_refused_with_400_and_a_message() {
    let (_turn, run, api) = case().await;
    let ids_tracked = run.ids();
    let partner = run.partner();
    // limits
    let eleven: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    for (path, why) in [
        (format!("/api/analytics/tracking/total?{}", q(&eleven, "trackingIds", RANGE)), "11 ids"),
        (
            format!("/api/analytics/tracking/total?{}", q(&ids_tracked, "trackingIds", "startDate=2026-10-31&stopDate=2026-10-31")),
            "start == stop",
        ),
        (
            format!("/api/analytics/tracking/total?{}", q(&ids_tracked, "trackingIds", "startDate=2026-31-10&stopDate=2026-11-02")),
            "bad date",
        ),
        (
            format!("/api/analytics/tracking/total?{}", q(&ids_tracked, "trackingIds", "startDate=2025-01-01&stopDate=2026-11-02")),
            "totals > 366 days",
        ),
        (
            format!(
                "/api/analytics/tracking/series?{}",
                q(&ids_tracked, "trackingIds", "startDate=2026-10-01&stopDate=2026-10-04&resolution=Minute")
            ),
            "minute > 2 days",
        ),
        (
            format!(
                "/api/analytics/tracking/series?{}",
                q(&ids_tracked, "trackingIds", "startDate=2026-09-01&stopDate=2026-11-02&resolution=Hour")
            ),
            "hour > 31 days",
        ),
        (
            format!("/api/analytics/tracking/series?{}", q(&ids_tracked, "trackingIds", &format!("{RANGE}&resolution=Week"))),
            "bad resolution",
        ),
        (format!("/api/analytics/tracking/total?{RANGE}"), "no ids"),
    ] {
        let (st, body) = api.get(&path).await;
        assert_eq!(st, 400, "{why}: {body}");
        assert_eq!(body["status"], "fail", "{why}");
        assert!(body["data"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{why}");
    }
    let (st, _, _) = api
        .records(json!({"startTime": "2026-09-01T00:00:00Z", "endTime": "2026-11-01T00:00:00Z", "trackingIds": [partner]}), false, SECRET)
        .await;
    assert_eq!(st, 400, "records > 31 days");
    let (st, _, _) =
        api.records(json!({"startTime": "yesterday", "endTime": "2026-11-01T00:00:00Z", "trackingIds": [partner]}), false, SECRET).await;
    assert_eq!(st, 400, "records bad time");

    run.done().await;
}

/// Authentication, and a partner-scoped secret on every statistics route and the token routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_secret_reads_its_own_partners_usage_only() {
    let (_turn, run, api) = case().await;
    let exp = &run.exp;
    let ids_tracked = run.ids();
    let partner = run.partner();
    let sv = run.streams();
    // authentication and scoping
    let own = format!("/api/analytics/tracking/total?{}", q(&[&partner], "trackingIds", RANGE));
    assert_eq!(api.get_as(&own, None).await.0, 401);
    assert_eq!(api.get_as(&own, Some("wrong-secret-0123456789abcdef")).await.0, 401);
    let (st, body) = api.get_as(&own, Some(SCOPED)).await;
    assert_eq!(st, 200, "{body}");
    let e = &exp.by_tracking[&partner];
    assert_eq!(by_bucket(&body["data"]).get(&(partner.clone(), String::new())), Some(&(e.bytes_out, e.bytes_in)));
    let other = format!("/api/analytics/tracking/total?{}", q(&[&partner, ids_tracked[1]], "trackingIds", RANGE));
    assert_eq!(api.get_as(&other, Some(SCOPED)).await.0, 403, "another partner's id");
    let (st, body) = api.get_as(&format!("/api/analytics/tracking/streams/total?{}", q(&sv, "streamNames", RANGE)), Some(SCOPED)).await;
    assert_eq!(st, 200);
    let seen: std::collections::BTreeSet<&str> =
        body["data"].as_object().unwrap().values().flat_map(|l| l.as_array().unwrap()).map(|i| i["trackingId"].as_str().unwrap()).collect();
    assert_eq!(seen, [partner.as_str()].into_iter().collect(), "streams filtered to the scoped ids");
    let (st, _, text) = api
        .records(json!({"startTime": "2026-10-31T20:00:00Z", "endTime": "2026-11-01T05:00:00Z", "streamNames": sv}), false, SCOPED)
        .await;
    assert_eq!(st, 200);
    assert!(!text.is_empty() && text.lines().all(|l| serde_json::from_str::<Value>(l).unwrap()["trackingId"] == partner.as_str()));
    assert_eq!(api.records(body_for(ids_tracked[1]), false, SCOPED).await.0, 403);
    assert_eq!(api.get_as("/api/subscribe_token", Some(SCOPED)).await.0, 403, "scoped secret on token routes");
    assert_eq!(api.get("/api/subscribe_token").await.0, 200, "token routes still work");
    run.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_the_routes() {
    let (_turn, run, api) = case().await;
    let (st, doc) = api.get("/api/openapi.json").await;
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in ["/api/subscribe_token", "/api/analytics/tracking/total", "/api/analytics/tracking/series", "/api/records/viewers"] {
        assert!(doc["paths"].get(p).is_some(), "{p}");
    }
    run.done().await;
}

fn body_for(tracking_id: &str) -> Value {
    json!({"startTime": "2026-10-31T20:00:00Z", "endTime": "2026-11-01T05:00:00Z", "trackingIds": [tracking_id]})
}
