//! Aggregator against the real stack: ClickHouse totals equal the exact
//! totals computed independently from the produced events.

use e2e::*;
use simulator::simulate::{Expected, SimConfig};
use std::collections::BTreeMap;
use std::time::Duration;

fn sim(seed: u64, run: &str) -> SimConfig {
    SimConfig {
        seed,
        run_id: run.to_string(),
        partners: 3,
        viewers_per_partner: 15,
        untracked_viewers: 5,
        duration_secs: 3 * 3600,
        session_secs: (60, 2400),
        ..Default::default()
    }
}

/// Every view an analyst or billing reads agrees with the expected totals.
async fn assert_exact(db: &runtime::ch::ClickHouseConfig, exp: &Expected) {
    let got = wait_for_events(db, exp.unique_valid_events, Duration::from_secs(120)).await;
    assert_eq!(got, exp.unique_valid_events, "events in usage_by_tracking");
    assert_eq!(sums_by(db, "usage_by_tracking", "tracking_id").await, expected_by_tracking(exp), "per tracking id");
    assert_eq!(sums_by(db, "usage_by_viewer", "viewer_id").await, expected_by_viewer(exp), "per viewer");
    assert_eq!(sums_by(db, "usage_by_tracking_daily", "tracking_id").await, expected_by_tracking(exp), "daily rollup");
    assert_eq!(sums_by(db, "usage_by_viewer_daily", "viewer_id").await, expected_by_viewer(exp), "daily viewer rollup");
    // per hour and tracking id, from the hourly rollup
    let sql = format!(
        "SELECT concat(formatDateTime(hour, '%Y-%m-%dT%H:00:00Z'), '|', tracking_id) AS key, sum(bytes_out) AS bytes_out, \
         sum(bytes_in) AS bytes_in, sum(events) AS events FROM {}.usage_by_tracking_hourly GROUP BY key ORDER BY key",
        db.database
    );
    #[derive(serde::Deserialize, clickhouse::Row)]
    struct R {
        key: String,
        bytes_out: u64,
        bytes_in: u64,
        events: u64,
    }
    let rows: Vec<R> = db.client().query(&sql).fetch_all().await.unwrap();
    let got: BTreeMap<String, Sums> =
        rows.into_iter().map(|r| (r.key, Sums { bytes_out: r.bytes_out, bytes_in: r.bytes_in, events: r.events })).collect();
    let want: BTreeMap<String, Sums> = exp
        .by_hour
        .iter()
        .flat_map(|(h, m)| {
            m.iter().map(move |(t, s)| (format!("{h}|{t}"), Sums { bytes_out: s.bytes_out, bytes_in: s.bytes_in, events: s.events }))
        })
        .collect();
    assert_eq!(got, want, "per hour and tracking id");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_run_is_exact_per_tracking_id_viewer_and_hour() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("agg_clean");
    create_topic(&topic, 4).await;
    let db = test_db().await;
    let exp = simulate_to_kafka(&sim(11, &topic), &topic).await;
    assert!(exp.unique_valid_events > 5_000, "a meaningful run: {}", exp.unique_valid_events);
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    assert_exact(&db, &exp).await;
    assert!(agg.terminate(Duration::from_secs(30)).is_some_and(|s| s.success()), "graceful exit on SIGTERM");
    assert_eq!(count(&db, &format!("SELECT count() FROM {}.usage_dead_letters", db.database)).await, 0);
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_late_out_of_order_and_poison_including_duplicates_after_a_restart() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("agg_faults");
    create_topic(&topic, 4).await;
    let db = test_db().await;
    let cfg = SimConfig { duplicates: 0.05, out_of_order: 0.05, late: 0.02, invalid: 0.005, poison: 0.005, ..sim(12, &topic) };
    let exp = simulate_to_kafka(&cfg, &topic).await;
    assert!(exp.duplicates_sent > 100 && exp.invalid_sent > 0 && exp.poison_sent > 0);
    let group = unique("g");
    let mut agg = spawn_aggregator(&topic, &db, &group, &[]);
    assert_exact(&db, &exp).await;
    assert!(agg.terminate(Duration::from_secs(30)).is_some());
    let dead = exp.invalid_sent + exp.poison_sent;
    let dl = format!("SELECT count() FROM {}.usage_dead_letters", db.database);
    assert_eq!(count(&db, &dl).await, dead, "every poison and invalid record dead-lettered once");

    // The same run again, after the restart: every valid event is now a duplicate.
    let again = simulate_to_kafka(&cfg, &topic).await;
    assert_eq!(again.unique_valid_events, exp.unique_valid_events);
    let _agg = spawn_aggregator(&topic, &db, &group, &[]);
    // wait until the aggregator has read the whole topic, then compare
    let cp =
        format!("SELECT sum(p) FROM (SELECT partition, max(position) AS p FROM {}.aggregator_checkpoints GROUP BY partition)", db.database);
    let total_msgs = exp.messages_sent + again.messages_sent;
    assert!(
        wait_until(Duration::from_secs(120), || async { count(&db, &cp).await >= total_msgs }).await,
        "aggregator read the whole topic"
    );
    assert_exact(&db, &exp).await;
    assert_eq!(count(&db, &dl).await, 2 * dead, "the re-sent poison records are new messages, dead-lettered again");
    let reasons: Vec<String> = db
        .client()
        .query(&format!("SELECT DISTINCT splitByChar(':', reason)[1] FROM {}.usage_dead_letters ORDER BY 1", db.database))
        .fetch_all()
        .await
        .unwrap();
    assert!(reasons.iter().any(|r| r == "invalid"), "{reasons:?}");
    assert!(reasons.len() >= 2, "{reasons:?}");
    drop_db(&db).await;
}

/// A v2 writer (new optional field `player_version`) and v1 writers on one
/// topic: both are counted, exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_events_on_one_topic_are_both_counted() {
    let _stack = e2e::turns::shared().await;
    use apache_avro::types::{Record, Value};
    let topic = unique("agg_v2");
    create_topic(&topic, 2).await;
    let db = test_db().await;
    let codec = schemas::Codec::new();
    let v2 = codec.versions().iter().find(|v| v.name == "v2").expect("v2 known");
    let p = producer(&topic);
    let (mut v1_bytes, mut v2_bytes) = (0u64, 0u64);
    for i in 0..200i64 {
        let viewer = format!("{topic}-v{}", i % 20);
        let t = 1_790_000_000_000 + (i / 20) * 10_000;
        if i % 2 == 0 {
            let ev = schemas::ViewerUsage {
                viewer_id: viewer.as_str().into(),
                seq: i / 20,
                interval_start: t,
                interval_end: t + 10_000,
                bytes_out: 1000 + i,
                bytes_in: 1,
                account_id: "a".into(),
                stream_name: "s".into(),
                cluster: "c".into(),
                server_id: "x".into(),
                protocol: schemas::Protocol::Whep,
                token_id: None,
                tracking_id: Some("v1-partner".into()),
                custom_viewer_data: None,
            };
            p.send(&ev).await.expect("v1 produced");
            v1_bytes += 1000 + i as u64;
        } else {
            let mut r = Record::new(&v2.schema).unwrap();
            r.put("viewer_id", viewer.clone());
            r.put("seq", i / 20);
            r.put("interval_start", Value::TimestampMillis(t));
            r.put("interval_end", Value::TimestampMillis(t + 10_000));
            r.put("bytes_out", 1000 + i);
            r.put("bytes_in", 1i64);
            r.put("account_id", "a");
            r.put("stream_name", "s");
            r.put("cluster", "c");
            r.put("server_id", "x");
            r.put("protocol", Value::Enum(1, "WHEP".into()));
            r.put("token_id", Value::Union(0, Box::new(Value::Null)));
            r.put("tracking_id", Value::Union(1, Box::new(Value::String("v2-partner".into()))));
            r.put("custom_viewer_data", Value::Union(0, Box::new(Value::Null)));
            r.put("player_version", Value::Union(1, Box::new(Value::String("web-sdk/4.2.0".into()))));
            let mut msg = schemas::codec::MAGIC.to_vec();
            msg.extend_from_slice(&v2.fingerprint);
            msg.extend(apache_avro::to_avro_datum(&v2.schema, r).unwrap());
            p.send_encoded(&viewer, &msg).await.expect("v2 produced");
            v2_bytes += 1000 + i as u64;
        }
    }
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    assert_eq!(wait_for_events(&db, 200, Duration::from_secs(60)).await, 200);
    let got = sums_by(&db, "usage_by_tracking", "tracking_id").await;
    assert_eq!(got["v1-partner"].bytes_out, v1_bytes);
    assert_eq!(got["v2-partner"].bytes_out, v2_bytes);
    assert_eq!(count(&db, &format!("SELECT count() FROM {}.usage_dead_letters", db.database)).await, 0);
    drop_db(&db).await;
}

/// The cluster table layout (local tables, `Distributed` tables over them,
/// fenced views under the contract names) on the stack's one-shard
/// cluster `metering_local`, without replication (no Keeper here): the
/// aggregator reads its state and writes through the `Distributed` tables,
/// is killed mid-run and restarted, and every total is still exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_layout_through_distributed_tables_is_exact_across_a_kill() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("agg_cluster");
    create_topic(&topic, 4).await;
    let db = runtime::ch::ClickHouseConfig {
        url: clickhouse_url(),
        database: unique("mtc"),
        cluster: "metering_local".into(),
        replicated: false,
        on_cluster: false,
        ..Default::default()
    };
    warehouse::migrate(&db)
        .await
        .expect("cluster-layout migrations (is metering_local in the server's remote_servers? scripts/stack up writes it)");
    let engines: BTreeMap<String, String> = db
        .client()
        .query(&format!("SELECT name, engine FROM system.tables WHERE database = '{}'", db.database))
        .fetch_all::<(String, String)>()
        .await
        .unwrap()
        .into_iter()
        .collect();
    for t in ["usage_by_tracking_log", "usage_by_viewer_log", "usage_dead_letters_log", "aggregator_checkpoints", "aggregator_claims"] {
        assert_eq!(engines.get(t).map(String::as_str), Some("Distributed"), "{t}: {engines:?}");
        assert!(engines.get(&format!("{t}_local")).is_some_and(|e| e.ends_with("MergeTree")), "{t}_local: {engines:?}");
    }
    // analysts read views under the contract names, which apply the claim fences
    for t in ["usage_by_tracking", "usage_by_viewer", "usage_dead_letters", "usage_by_tracking_hourly", "usage_by_tracking_daily"] {
        assert_eq!(engines.get(t).map(String::as_str), Some("View"), "{t}: {engines:?}");
    }
    let cfg = SimConfig { duplicates: 0.05, out_of_order: 0.05, poison: 0.005, ..sim(13, &topic) };
    let exp = simulate_to_kafka(&cfg, &topic).await;
    let layout = [
        ("AGGREGATOR__CLICKHOUSE__CLUSTER", "metering_local".to_string()),
        ("AGGREGATOR__CLICKHOUSE__REPLICATED", "false".to_string()),
        ("AGGREGATOR__CLICKHOUSE__ON_CLUSTER", "false".to_string()),
    ];
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &layout);
    let sql = format!("SELECT sum(events) FROM {}.usage_by_tracking", db.database);
    assert!(wait_until(Duration::from_secs(60), || async { count(&db, &sql).await > 0 }).await, "progress");
    agg.kill9();
    // the restart in a fresh consumer group: positions live in ClickHouse,
    // so the group does not matter for correctness, and tansu 0.6.0 can
    // leave a group whose member was killed seconds after its join without
    // an owner for good (CI, 2026-12-03: the restart in the same group never
    // got a partition, 2,182 of 10,289 events)
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &layout);
    assert_exact(&db, &exp).await;
    let dl = format!("SELECT count() FROM {}.usage_dead_letters", db.database);
    assert!(wait_until(Duration::from_secs(30), || async { count(&db, &dl).await == exp.poison_sent }).await);
    assert_eq!(count(&db, &dl).await, exp.poison_sent, "poison dead-lettered once");
    drop_db(&db).await;
}

/// Backfill from an offset: a fresh database and group with `start_from`
/// set to the offsets where run B began count run B exactly and nothing of
/// run A before it; a restart resumes from the checkpoints, not from
/// `start_from` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_offsets_counts_exactly_what_follows_them() {
    let _stack = e2e::turns::shared().await;
    use rdkafka::consumer::Consumer;
    let topic = unique("agg_from");
    create_topic(&topic, 2).await;
    let _a = simulate_to_kafka(&sim(14, &format!("{topic}-a")), &topic).await;
    let reader = topic_reader(&topic, 2);
    let starts: Vec<String> =
        (0..2).map(|p| format!("{p}:{}", reader.fetch_watermarks(&topic, p, Duration::from_secs(10)).expect("watermarks").1)).collect();
    let b = simulate_to_kafka(&sim(15, &format!("{topic}-b")), &topic).await;
    let db = test_db().await;
    let group = unique("g");
    let from = [("AGGREGATOR__START_FROM", starts.join(","))];
    let mut agg = spawn_aggregator(&topic, &db, &group, &from);
    assert_exact(&db, &b).await;
    assert!(agg.terminate(Duration::from_secs(30)).is_some());
    // a restart with start_from now pointing at the beginning changes nothing
    let _agg = spawn_aggregator(&topic, &db, &group, &[("AGGREGATOR__START_FROM", "0:0,1:0".to_string())]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_exact(&db, &b).await;
    // a malformed start_from is a configuration error that names the key
    let mut bad = spawn_aggregator(&topic, &db, &unique("g"), &[("AGGREGATOR__START_FROM", "yesterday".to_string())]);
    let status = bad.wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| !s.success()), "exits by itself with an error: {status:?}");
    drop_db(&db).await;
}
