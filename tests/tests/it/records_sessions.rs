//! Viewer records on live data: a session whose last usage is minutes old
//! is `Ongoing` with `endTime` null; one that ended an hour ago is
//! `Completed` with its end; `search` selects between them (the platform's
//! Completed / Ongoing / Ongoing_Completed).

use api::config::ApiConfig;
use api::store::Store;
use e2e::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "records-sessions-7f2d9a0c4e6b1835";

fn event(viewer: &str, seq: i64, start_ms: i64) -> schemas::OwnedViewerUsage {
    schemas::ViewerUsage {
        bytes_in: 7,
        token_id: Some(1),
        tracking_id: Some("sessions-partner".into()),
        ..usage_event(viewer, seq, start_ms, 1_000 + seq)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ongoing_and_completed_sessions() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("sessions");
    create_topic(&topic, 2).await;
    let db = test_db().await;
    let p = producer(&topic);
    let now = chrono::Utc::now().timestamp_millis();
    let window = i64::from(schemas::WINDOW_SECS) * 1000;
    // (viewer, start of each event): ended two hours ago; still watching (last report 30 s ago)
    let done: Vec<i64> = (0..6).map(|i| now - 2 * 3_600_000 + i * 10_000).collect();
    let live: Vec<i64> = (0..20).map(|i| now - 20 * 60_000 + i * 60_000 + 30_000).collect();
    let (vd, vl) = (format!("{topic}-done"), format!("{topic}-live"));
    let mut expected: BTreeMap<String, (i64, i64, u64)> = BTreeMap::new(); // viewer -> (first window, last window end, bytes out)
    for (v, starts) in [(&vd, &done), (&vl, &live)] {
        for (seq, t) in starts.iter().enumerate() {
            p.send(&event(v, seq as i64, *t)).await.unwrap();
        }
        let out: u64 = (0..starts.len() as u64).map(|s| 1_000 + s).sum();
        let first = starts[0].div_euclid(window) * window;
        let last_end = starts[starts.len() - 1].div_euclid(window) * window + window;
        expected.insert(v.clone(), (first, last_end, out));
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    let total = (done.len() + live.len()) as u64;
    assert_eq!(wait_for_events(&db, total, Duration::from_secs(120)).await, total);
    agg.terminate(Duration::from_secs(30));

    let cfg = ApiConfig {
        api_secrets: vec![SECRET.into()],
        store_path: std::env::temp_dir().join(format!("{}.db", unique("sessions_tokens"))),
        clickhouse: db.clone(),
        ..Default::default()
    };
    let app = api::http::router(&cfg, Arc::new(Store::open(&cfg.store_path).unwrap())).unwrap();
    let (url, server) = serve_router(app).await;
    let client = reqwest::Client::new();
    let ask = |body: Value| {
        let (client, url) = (&client, &url);
        async move {
            let r = client.post(format!("{url}/api/records/viewers")).bearer_auth(SECRET).json(&body).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let text = r.text().await.unwrap();
            text.lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .map(|r| (r["clientId"].as_str().unwrap().to_string(), r))
                .collect::<BTreeMap<_, _>>()
        }
    };
    let records = |search: &str| {
        ask(json!({"startTime": iso_ms(now - 3 * 3_600_000), "endTime": iso_ms(now + 3_600_000),
                   "trackingIds": ["sessions-partner"], "search": search}))
    };
    let ongoing = records("Ongoing").await;
    assert_eq!(ongoing.keys().collect::<Vec<_>>(), [&vl], "only the live session is ongoing");
    let r = &ongoing[&vl];
    let (first, last_end, out) = expected[&vl];
    assert_eq!(r["endTime"], Value::Null, "an ongoing session has no end yet");
    assert_eq!((r["startTime"].as_str().unwrap(), r["bytesOut"].as_u64().unwrap()), (iso_ms(first).as_str(), out));
    assert_eq!(r["duration"].as_i64().unwrap(), (last_end - first) / 1000);
    let completed = records("Completed").await;
    assert_eq!(completed.keys().collect::<Vec<_>>(), [&vd], "only the finished session is completed");
    let (first, last_end, out) = expected[&vd];
    let r = &completed[&vd];
    assert_eq!((r["startTime"].as_str().unwrap(), r["endTime"].as_str().unwrap()), (iso_ms(first).as_str(), iso_ms(last_end).as_str()));
    assert_eq!(r["bytesOut"].as_u64().unwrap(), out);
    let both = records("Ongoing_Completed").await;
    assert_eq!(both.len(), 2);
    // neither bound, as the platform allows: the last 31 days, which hold both
    assert_eq!(ask(json!({"trackingIds": ["sessions-partner"]})).await, both);
    server.abort();
    let _ = std::fs::remove_file(&cfg.store_path);
    drop_db(&db).await;
}
