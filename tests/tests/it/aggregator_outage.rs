//! ClickHouse stopped for 20 s in the middle of a run. It holds the stack
//! alone (`e2e::turns::exclusive`): it stops the shared ClickHouse server.

use e2e::*;
use simulator::simulate::SimConfig;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clickhouse_down_for_20_seconds_mid_run_loses_and_doubles_nothing() {
    let _stack = e2e::turns::exclusive().await;
    let topic = unique("agg_chdown");
    create_topic(&topic, 4).await;
    let db = test_db().await;
    let cfg = SimConfig {
        seed: 31,
        run_id: topic.clone(),
        partners: 4,
        viewers_per_partner: 60,
        duration_secs: 6 * 3600,
        session_secs: (300, 3600),
        duplicates: 0.02,
        ..Default::default()
    };
    let group = unique("g");
    let port = free_port();
    let _agg = spawn_aggregator(&topic, &db, &group, &[("AGGREGATOR__METRICS_LISTEN", format!("127.0.0.1:{port}"))]);
    let ready = |want: u16| async move {
        let url = format!("http://127.0.0.1:{port}/readyz");
        wait_until(Duration::from_secs(60), || async { reqwest::get(&url).await.map(|r| r.status().as_u16() == want).unwrap_or(false) })
            .await
    };
    let first = simulate_to_kafka(&SimConfig { seed: 30, run_id: format!("{topic}-a"), ..cfg.clone() }, &topic).await;
    let sql = format!("SELECT sum(events) FROM {}.usage_by_tracking", db.database);
    assert!(wait_until(Duration::from_secs(60), || async { count(&db, &sql).await > 0 }).await, "progress before the outage");
    assert!(ready(200).await, "/readyz 200 once assigned and flushing");
    {
        let _guard = StackOnDrop("start-clickhouse");
        assert!(stack("stop-clickhouse"), "ClickHouse stopped");
        // events keep arriving while ClickHouse is down
        let second = simulate_to_kafka(&cfg, &topic).await;
        let t = std::time::Instant::now();
        assert!(ready(503).await, "/readyz 503 while ClickHouse is down");
        tokio::time::sleep(Duration::from_secs(20).saturating_sub(t.elapsed())).await;
        assert!(stack("start-clickhouse"), "ClickHouse started");
        let mut exp = first.clone();
        exp.merge(&second);
        let got = wait_for_events(&db, exp.unique_valid_events, Duration::from_secs(180)).await;
        assert_eq!(got, exp.unique_valid_events);
        assert!(ready(200).await, "/readyz 200 again after ClickHouse is back");
        assert_eq!(sums_by(&db, "usage_by_tracking", "tracking_id").await, expected_by_tracking(&exp));
        assert_eq!(sums_by(&db, "usage_by_viewer", "viewer_id").await, expected_by_viewer(&exp));
        assert_eq!(sums_by(&db, "usage_by_tracking_daily", "tracking_id").await, expected_by_tracking(&exp));
    }
    drop_db(&db).await;
}
