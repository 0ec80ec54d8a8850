//! Partners' allowances enforced at token verification, on the real stack:
//! usage goes through Kafka and the aggregator into ClickHouse; the API's
//! tracker reads it back from the fenced aggregates; a partner under a
//! `soft` allowance keeps its viewers admitted below 100% and has new ones
//! refused once it is used up, while another partner's viewers and the
//! first partner's re-verifications are still admitted. The expected bytes
//! are summed here from the events sent.

use api::config::ApiConfig;
use api::store::Store;
use api::tokens::sign::{sign, SignRequest};
use e2e::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "entitlements-e2e-5c1d7e9a3b2f4068";
const ALLOWANCE: u64 = 1_000_000;

/// A rate card of `(partner id, its one tracking id)`, each at 1 EUR per GB, flat.
fn rate_card(partners: &[(&str, &str)]) -> String {
    partners
        .iter()
        .map(|(id, tracking)| {
            format!(
                "[[partner]]\nid = \"{id}\"\nname = \"{id}\"\ntracking_ids = [\"{tracking}\"]\ncurrency = \"EUR\"\nunit = \"GB\"\npricing = \"flat\"\ntiers = [ {{ unit_price = \"1\" }} ]\n"
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_up_soft_allowance_refuses_new_viewers_of_that_partner_only() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("allow");
    create_topic(&topic, 2).await;
    let db = test_db().await;
    let dir = std::env::temp_dir().join(unique("allow"));
    std::fs::create_dir_all(&dir).unwrap();
    let (acme, globex) = (format!("{topic}-acme"), format!("{topic}-globex"));
    std::fs::write(dir.join("rates.toml"), rate_card(&[("acme", &acme), ("globex", &globex)])).unwrap();
    let mut cfg = ApiConfig {
        api_secrets: vec![SECRET.into()],
        store_path: dir.join("tokens.db"),
        clickhouse: db.clone(),
        billing_rates: Some(dir.join("rates.toml")),
        entitlements_refresh_secs: 1,
        ..Default::default()
    };
    // the tokens first (the owner's override names one of them), then the
    // service with the allowances, on the same store
    let app = api::http::router(&cfg, Arc::new(Store::open(&cfg.store_path).unwrap())).unwrap();
    let (setup_url, setup) = serve_router(app).await;
    let client = reqwest::Client::new();
    let post = |url: String, path: &'static str, body: Value| {
        let client = &client;
        async move {
            let r = client.post(format!("{url}{path}")).bearer_auth(SECRET).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    // a master token per partner; a self-signed viewer token of each
    let mut masters = Vec::new();
    for t in [&acme, &globex, &acme] {
        let (st, r) = post(
            setup_url.clone(),
            "/api/subscribe_token",
            json!({"label": t, "streams": [{"streamName": "live"}], "tracking": {"trackingId": t}, "originCluster": "Auto", "expires": 86_400}),
        )
        .await;
        assert_eq!(st, 200, "{r}");
        masters.push((r["data"]["id"].as_i64().unwrap(), r["data"]["token"].as_str().unwrap().to_string()));
    }
    setup.abort();
    let exempt = masters[2].0;
    std::fs::write(
        dir.join("entitlements.toml"),
        format!(
            "[[partner]]\nid = \"acme\"\nbytes = \"{ALLOWANCE}\"\npolicy = \"soft\"\nexempt_token_ids = [{exempt}]\n\
             [[partner]]\nid = \"globex\"\nbytes = \"{ALLOWANCE}\"\npolicy = \"soft\"\n"
        ),
    )
    .unwrap();
    cfg.entitlements = Some(dir.join("entitlements.toml"));
    let app = api::http::router(&cfg, Arc::new(Store::open(&cfg.store_path).unwrap())).unwrap();
    let (url, server) = serve_router(app).await;
    let viewer = |m: usize| {
        let (id, token) = &masters[m];
        let req = SignRequest { token_id: *id, stream_name: "live".into(), expires_in_secs: 600, ..Default::default() };
        sign(token, &req, chrono::Utc::now()).unwrap()
    };
    let verify = |token: String, reverification: bool| {
        let mut body = json!({"token": token, "streamName": "live", "cluster": "fra-1"});
        if reverification {
            body["reverification"] = json!(true);
        }
        post(url.clone(), "/api/token/verify", body)
    };
    let standing = || {
        let (client, url) = (&client, &url);
        async move {
            let r = client.get(format!("{url}/api/entitlements")).bearer_auth(SECRET).send().await.unwrap();
            let v: Value = r.json().await.unwrap();
            v["data"]["allowances"].as_array().cloned().unwrap_or_default()
        }
    };
    let used_of = |list: &[Value], partner: &str| -> Option<u64> {
        list.iter().find(|a| a["partner"] == partner).and_then(|a| a["used"]["bytes"].as_str()?.parse().ok())
    };

    // usage through the pipeline, in the current month
    let p = producer(&topic);
    let now = chrono::Utc::now();
    let month_start = chrono::Datelike::with_day(&now.date_naive(), 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis();
    let start = (now.timestamp_millis() - 120_000).max(month_start);
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    let mut seq = 0i64;
    let mut sent = 0u64;
    let mut send = |tracking: &str, bytes: u64, n: u64| {
        let evs: Vec<_> = (0..n)
            .map(|_| {
                seq += 1;
                schemas::ViewerUsage {
                    tracking_id: Some(tracking.to_string().into()),
                    ..usage_event(&format!("{tracking}-v"), seq, start, bytes as i64)
                }
            })
            .collect();
        sent += n;
        evs
    };
    // acme at 85%, globex at 10%
    let first: Vec<_> = send(&acme, 85_000, 10).into_iter().chain(send(&globex, 10_000, 10)).collect();
    for e in &first {
        p.send(e).await.unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let seen = wait_until(Duration::from_secs(90), || async {
        let list = standing().await;
        used_of(&list, "acme") == Some(850_000) && used_of(&list, "globex") == Some(100_000)
    })
    .await;
    assert!(seen, "the API sees acme at 850,000 and globex at 100,000 bytes: {:?}", standing().await);
    let list = standing().await;
    let acme_standing = list.iter().find(|a| a["partner"] == "acme").unwrap();
    assert_eq!(acme_standing["thresholdsReached"], json!([50, 80]));
    assert_eq!((acme_standing["percent"].as_str(), acme_standing["exhausted"].as_bool()), (Some("85.00"), Some(false)));
    assert_eq!(acme_standing["remaining"]["bytes"], json!("150000"));
    let (st, r) = verify(viewer(0), false).await;
    assert_eq!(st, 200, "below 100% acme's new viewers are admitted: {r}");

    // acme past 100%
    let second = send(&acme, 20_000, 10);
    for e in &second {
        p.send(e).await.unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
    let used_up = wait_until(Duration::from_secs(90), || async { used_of(&standing().await, "acme") == Some(1_050_000) }).await;
    assert!(used_up, "the API sees acme at 1,050,000 bytes: {:?}", standing().await);
    assert_eq!(wait_for_events(&db, sent, Duration::from_secs(60)).await, sent);
    let (st, r) = verify(viewer(0), false).await;
    assert_eq!(st, 403, "{r}");
    assert_eq!(r["data"]["code"], "allowance_exhausted");
    let message = r["data"]["message"].as_str().unwrap();
    assert!(message.contains("partner acme's monthly allowance") && message.contains("1050000 bytes of 1000000 bytes"), "{message}");
    // soft: viewers already watching continue; another partner is not touched
    let (st, r) = verify(viewer(0), true).await;
    assert_eq!(st, 200, "re-verification under soft is admitted: {r}");
    let (st, r) = verify(viewer(1), false).await;
    assert_eq!(st, 200, "globex's viewers are admitted: {r}");
    let (st, r) = verify(viewer(2), false).await;
    assert_eq!(st, 200, "the owner's override: the exempt master token's viewers are admitted: {r}");
    let acme_standing = standing().await.into_iter().find(|a| a["partner"] == "acme").unwrap();
    assert_eq!(acme_standing["thresholdsReached"], json!([50, 80, 100]));
    assert_eq!((acme_standing["remaining"]["bytes"].as_str(), acme_standing["exhausted"].as_bool()), (Some("0"), Some(true)));
    agg.terminate(Duration::from_secs(30));
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    drop_db(&db).await;
}

/// What the test's webhook receiver saw: every request, with whether its
/// signature verified, and the answer it gave.
#[derive(Default)]
struct Received {
    /// (notification id, signature valid, answered 2xx)
    requests: Vec<(String, bool, bool)>,
}

const HOOK_SECRET: &str = "whsec-entitlements-e2e-7d3a9c1f5b2e8046";

/// A receiver that verifies each request's `Metering-Signature` as a partner
/// would, answers the very first request 503 (to be retried), and the rest 200.
async fn receiver() -> (String, Arc<std::sync::Mutex<Received>>, tokio::task::JoinHandle<()>) {
    use axum::http::{HeaderMap, StatusCode};
    let seen = Arc::new(std::sync::Mutex::new(Received::default()));
    let state = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let seen = state.clone();
            async move {
                let header = headers.get("metering-signature").and_then(|h| h.to_str().ok()).unwrap_or("");
                let valid = verify_signature(header, &body);
                let id = serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["id"].as_str().map(str::to_string)).unwrap_or_default();
                let mut seen = seen.lock().unwrap();
                let accept = !seen.requests.is_empty() && valid;
                seen.requests.push((id, valid, accept));
                if accept {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let (url, server) = serve_router(app).await;
    (format!("{url}/hook"), seen, server)
}

/// `t=<unix>,v1=<hex>` checked as the platform's docs tell partners to:
/// HMAC-SHA256 over `"<t>.<body>"`, within 5 minutes (computed here with
/// the `hmac` crate, not the project's signer).
fn verify_signature(header: &str, body: &[u8]) -> bool {
    use hmac::{Hmac, Mac};
    let parts: std::collections::BTreeMap<&str, &str> = header.split(',').filter_map(|p| p.split_once('=')).collect();
    let (Some(t), Some(v1)) = (parts.get("t"), parts.get("v1")) else { return false };
    let Ok(ts) = t.parse::<i64>() else { return false };
    if (chrono::Utc::now().timestamp() - ts).abs() > 300 {
        return false;
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    hex::decode(v1).is_ok_and(|sig| mac.verify_slice(&sig).is_ok())
}

/// Thresholds 50, 80 and 100% of one partner's allowance reached in three
/// steps, with two API processes sharing one token store and a SIGKILL of
/// both and a restart between the steps: each notification reaches the
/// receiver exactly once with a valid signature, the one answered 503 is
/// retried, and the notifications route shows them delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_threshold_is_notified_once_across_replicas_and_a_restart() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("notify");
    create_topic(&topic, 1).await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let acme = format!("{topic}-acme");
    let (hook, seen, hook_server) = receiver().await;
    std::fs::write(dir.path().join("rates.toml"), rate_card(&[("acme", &acme)])).unwrap();
    std::fs::write(
        dir.path().join("entitlements.toml"),
        format!(
            "[[partner]]\nid = \"acme\"\nbytes = \"{ALLOWANCE}\"\nwebhook_url = \"{hook}\"\nwebhook_secret_env = \"ACME_HOOK_SECRET\"\n"
        ),
    )
    .unwrap();
    let spawn = |port: u16| {
        let env = vec![
            ("API__LISTEN", format!("127.0.0.1:{port}")),
            ("API__API_SECRETS", format!("[\"{SECRET}\"]")),
            ("API__STORE_PATH", dir.path().join("tokens.db").display().to_string()),
            ("API__CLICKHOUSE__URL", db.url.clone()),
            ("API__CLICKHOUSE__DATABASE", db.database.clone()),
            ("API__CLICKHOUSE__RIGHTS_CHECK", "off".into()),
            ("API__BILLING_RATES", dir.path().join("rates.toml").display().to_string()),
            ("API__ENTITLEMENTS", dir.path().join("entitlements.toml").display().to_string()),
            ("API__ENTITLEMENTS_REFRESH_SECS", "1".into()),
            ("ACME_HOOK_SECRET", HOOK_SECRET.into()),
        ];
        Proc::spawn("api", &["serve"], &env)
    };
    let up = |port: u16| serving(port, "api");
    let accepted = |id: String| {
        let seen = seen.clone();
        async move { wait_until(Duration::from_secs(90), || async { seen.lock().unwrap().requests.iter().any(|r| r.0 == id && r.2) }).await }
    };
    let period = chrono::Utc::now().format("%Y-%m").to_string();
    let id = |threshold: u32| format!("acme/-/{period}/{threshold}");

    let p = producer(&topic);
    let now = chrono::Utc::now();
    let month_start = chrono::Datelike::with_day(&now.date_naive(), 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis();
    let start = (now.timestamp_millis() - 120_000).max(month_start);
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    let mut seq = 0i64;
    let mut send = |bytes: u64| {
        seq += 1;
        schemas::ViewerUsage { tracking_id: Some(acme.clone().into()), ..usage_event(&format!("{acme}-v"), seq, start, bytes as i64) }
    };

    // two replicas on one store; 55%
    let (pa, pb) = (free_port(), free_port());
    let (mut a, mut b) = (spawn(pa), spawn(pb));
    let url_a = up(pa).await;
    up(pb).await;
    p.send(&send(550_000)).await.unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    assert!(accepted(id(50)).await, "50% notified: {:?}", seen.lock().unwrap().requests);
    // recorded as delivered before the kill (a kill between the receiver's
    // 2xx and that record would send it again: receivers de-duplicate on id)
    let http = reqwest::Client::new();
    let records = |url: String| {
        let http = &http;
        async move {
            let r = http.get(format!("{url}/api/entitlements/notifications")).bearer_auth(SECRET).send().await.unwrap();
            r.json::<Value>().await.unwrap()["data"].as_array().cloned().unwrap_or_default()
        }
    };
    let recorded = wait_until(Duration::from_secs(10), || async {
        records(url_a.clone()).await.iter().any(|r| r["id"] == id(50) && r["status"] == "delivered")
    })
    .await;
    assert!(recorded, "{:?}", records(url_a.clone()).await);
    // both replicas killed, one started again; 85%, then 100%
    a.kill9();
    b.kill9();
    let pc = free_port();
    let mut c = spawn(pc);
    let url = up(pc).await;
    p.send(&send(300_000)).await.unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    assert!(accepted(id(80)).await, "80% notified: {:?}", seen.lock().unwrap().requests);
    p.send(&send(150_000)).await.unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    assert!(accepted(id(100)).await, "100% notified: {:?}", seen.lock().unwrap().requests);

    // the record says delivered, with the retried one's two attempts
    let all_delivered = wait_until(Duration::from_secs(30), || async {
        let list = records(url.clone()).await;
        list.len() == 3 && list.iter().all(|r| r["status"] == "delivered")
    })
    .await;
    assert!(all_delivered, "{:?}", records(url.clone()).await);
    let list = records(url.clone()).await;
    let attempts: std::collections::BTreeMap<String, i64> =
        list.iter().map(|r| (r["id"].as_str().unwrap().to_string(), r["attempts"].as_i64().unwrap())).collect();
    assert_eq!(attempts[&id(50)], 2, "the first attempt was answered 503 and retried");
    assert_eq!((attempts[&id(80)], attempts[&id(100)]), (1, 1));
    let body_100 = &list.iter().find(|r| r["id"] == id(100)).unwrap()["body"];
    assert_eq!((body_100["used"]["bytes"].as_str(), body_100["exhausted"].as_bool()), (Some("1000000"), Some(true)));

    // a few refresh cycles (1 s) more send nothing; each id was accepted
    // exactly once, and every signature verifies
    let stable = !wait_until(Duration::from_secs(3), || async { seen.lock().unwrap().requests.len() > 4 }).await;
    assert!(stable, "nothing sent again: {:?}", seen.lock().unwrap().requests);
    let requests = seen.lock().unwrap().requests.clone();
    assert!(requests.iter().all(|r| r.1), "every signature verifies: {requests:?}");
    for t in [50, 80, 100] {
        assert_eq!(requests.iter().filter(|r| r.0 == id(t) && r.2).count(), 1, "{t}% accepted once: {requests:?}");
    }
    c.terminate(Duration::from_secs(10));
    agg.terminate(Duration::from_secs(30));
    hook_server.abort();
    drop_db(&db).await;
}

/// ClickHouse stopped under the API: once the standing is older than
/// `entitlements_max_staleness_secs`, a service with `entitlements_fail =
/// "closed"` refuses with `allowance_unknown`, one with `"open"` admits and
/// says so in `/metrics`; both admit from the usage again once ClickHouse is
/// back. It holds the stack alone: it stops the shared ClickHouse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clickhouse_outage_fails_open_or_closed_as_configured() {
    let _stack = e2e::turns::exclusive().await;
    let db = test_db().await;
    let dir = tempfile::tempdir().unwrap();
    let tracking = unique("outage-acme");
    std::fs::write(dir.path().join("rates.toml"), rate_card(&[("acme", &tracking)])).unwrap();
    std::fs::write(
        dir.path().join("entitlements.toml"),
        format!("[[partner]]\nid = \"acme\"\nbytes = \"{ALLOWANCE}\"\npolicy = \"soft\"\n"),
    )
    .unwrap();
    let client = reqwest::Client::new();
    let mut services = Vec::new(); // (mode, url, server, viewer token)
    for fail in [api::entitlements::FailMode::Open, api::entitlements::FailMode::Closed] {
        let cfg = ApiConfig {
            api_secrets: vec![SECRET.into()],
            store_path: dir.path().join(format!("{fail:?}.db")),
            clickhouse: db.clone(),
            billing_rates: Some(dir.path().join("rates.toml")),
            entitlements: Some(dir.path().join("entitlements.toml")),
            entitlements_refresh_secs: 1,
            entitlements_max_staleness_secs: 2,
            entitlements_fail: fail,
            ..Default::default()
        };
        let app = api::http::router(&cfg, Arc::new(Store::open(&cfg.store_path).unwrap())).unwrap();
        let (url, server) = serve_router(app).await;
        let body = json!({"label": "outage", "streams": [{"streamName": "live"}], "tracking": {"trackingId": tracking}, "expires": 86_400});
        let r: Value =
            client.post(format!("{url}/api/subscribe_token")).bearer_auth(SECRET).json(&body).send().await.unwrap().json().await.unwrap();
        let req = SignRequest {
            token_id: r["data"]["id"].as_i64().unwrap(),
            stream_name: "live".into(),
            expires_in_secs: 600,
            ..Default::default()
        };
        let jwt = sign(r["data"]["token"].as_str().unwrap(), &req, chrono::Utc::now()).unwrap();
        services.push((fail, url, server, jwt));
    }
    let verify = |i: usize| {
        let (client, (_, url, _, jwt)) = (&client, &services[i]);
        async move {
            let body = json!({"token": jwt, "streamName": "live", "cluster": "fra-1"});
            let r = client.post(format!("{url}/api/token/verify")).bearer_auth(SECRET).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let admitted = |i: usize| async move { verify(i).await.0 == 200 };
    for (i, (mode, ..)) in services.iter().enumerate() {
        assert!(wait_until(Duration::from_secs(30), || admitted(i)).await, "{mode:?} admits before the outage");
    }
    {
        let _back = StackOnDrop("start-clickhouse");
        assert!(stack("stop-clickhouse"), "ClickHouse stopped");
        let refused = wait_until(Duration::from_secs(60), || async { verify(1).await.0 == 403 }).await;
        assert!(refused, "closed refuses once the standing is stale");
        let (_, r) = verify(1).await;
        assert_eq!(r["data"]["code"], "allowance_unknown", "{r}");
        // each service refreshes on its own clock, so the open one's standing
        // may go stale up to a refresh interval after the closed one's: await
        // it, admitting all along
        let metrics = || async { client.get(format!("{}/metrics", services[0].1)).send().await.unwrap().text().await.unwrap() };
        let open_admits_stale = wait_until(Duration::from_secs(30), || async {
            let (st, r) = verify(0).await;
            assert_eq!(st, 200, "open admits, stale or not: {r}");
            metrics().await.lines().any(|l| l == "api_allowance_standing_stale 1")
        })
        .await;
        assert!(open_admits_stale, "open admits once stale and says so in /metrics: {}", metrics().await);
        assert!(stack("start-clickhouse"), "ClickHouse started");
    }
    assert!(wait_until(Duration::from_secs(90), || admitted(1)).await, "closed admits again once ClickHouse is back");
    assert!(admitted(0).await);
    for (_, _, server, _) in &services {
        server.abort();
    }
    drop_db(&db).await;
}
