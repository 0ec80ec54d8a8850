//! Tokens decide whose bill a byte lands on, through the whole pipeline:
//! master tokens created through the token service, a self-signed JWT per
//! viewer, verification by the "media server", usage through Kafka and the
//! aggregator; every byte lands on the tracking id and custom viewer data
//! its token carries, and viewers with forged tokens get no usage.

use api::config::ApiConfig;
use api::store::Store;
use e2e::*;
use simulator::simulate::SimConfig;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "tokens-pipeline-secret-0123456789";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_attributed_by_verified_viewer_tokens() {
    let _stack = e2e::turns::shared().await;
    let dir = std::env::temp_dir().join(unique("tokens_pipeline"));
    let cfg = ApiConfig { api_secrets: vec![SECRET.into()], store_path: dir.join("tokens.db"), ..Default::default() };
    let store = Arc::new(Store::open(&cfg.store_path).expect("token store"));
    let app = api::http::router(&cfg, store).expect("router");
    let (url, _server) = serve_router(app).await;

    let topic = unique("tok");
    create_topic(&topic, 2).await;
    let db = test_db().await;
    let sim = SimConfig {
        seed: 51,
        run_id: topic.clone(),
        partners: 3,
        viewers_per_partner: 10,
        untracked_viewers: 4,
        duration_secs: 3600,
        session_secs: (300, 1800),
        ..Default::default()
    };
    let target = simulator::sim_run::Target::Kafka(simulator::sim_run::UsageProducerHandle(producer(&topic)));
    let opts = simulator::sim_run::RunOptions {
        tokens: Some(simulator::tokens::TokenApi { url: url.clone(), secret: SECRET.into(), invalid_fraction: 0.1 }),
        ..Default::default()
    };
    let (exp, adm) = simulator::sim_run::run_admitted(&sim, &target, &opts).await.expect("simulation");
    let adm = adm.expect("admission ran");
    assert!(!adm.refused.is_empty(), "some forged tokens were refused");
    assert!(adm.refused.values().all(|c| c == "bad_signature"), "{:?}", adm.refused);
    assert_eq!(adm.master_tokens.len(), 4, "three partners and the owner's own player");

    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    assert_eq!(wait_for_events(&db, exp.unique_valid_events, Duration::from_secs(120)).await, exp.unique_valid_events);
    assert_eq!(sums_by(&db, "usage_by_tracking", "tracking_id").await, expected_by_tracking(&exp));

    // per viewer: the tracking id and custom viewer data in ClickHouse are the
    // ones the token service returned for that viewer
    #[derive(serde::Deserialize, clickhouse::Row)]
    struct V {
        viewer_id: String,
        tracking_id: String,
        cvd: String,
        bytes_out: u64,
    }
    let rows: Vec<V> = db
        .client()
        .query(&format!(
            "SELECT viewer_id, tracking_id, custom_viewer_data, sum(bytes_out) FROM {}.usage_by_viewer \
             GROUP BY viewer_id, tracking_id, custom_viewer_data",
            db.database
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(rows.len(), exp.by_viewer.len(), "one attribution per viewer connection");
    for r in &rows {
        let want = &exp.by_viewer[&r.viewer_id];
        assert_eq!((&r.tracking_id, &r.cvd, r.bytes_out), (&want.tracking_id, &want.custom_viewer_data, want.totals.bytes_out));
        // the partner's master token decides the channel: viewer ids name their partner
        let partner = r.viewer_id.trim_start_matches(&format!("{topic}-"));
        if partner.starts_with("untracked") {
            assert_eq!(r.tracking_id, "");
        } else {
            assert!(partner.starts_with(&r.tracking_id), "{} attributed to {}", r.viewer_id, r.tracking_id);
        }
        assert!(!adm.refused.contains_key(&r.viewer_id), "a refused viewer has usage: {}", r.viewer_id);
    }
    drop_db(&db).await;
    let _ = std::fs::remove_dir_all(&dir);
}
