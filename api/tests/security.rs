//! Roles, the token store's file mode, slow clients and concurrent updates
//! (docs/security.md), against the service in-process.

use api::config::{ApiConfig, ScopedSecret};
use api::store::{Store, StoreError};
use api::tokens::model::{AccessRules, NewSubscribeToken, NewTokenCommon, StreamRule, SubscribeToken};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN: &str = "sec-admin-secret-0123456789abcdef";
const VERIFY: &str = "sec-verify-secret-0123456789abcdef";
const PARTNER: &str = "sec-partner-secret-0123456789abcdef";

async fn start(dir: &std::path::Path, header_timeout: Duration) -> String {
    let cfg = ApiConfig {
        api_secrets: vec![ADMIN.into()],
        verify_secrets: vec![VERIFY.into()],
        scoped_secrets: vec![ScopedSecret { secret: PARTNER.into(), tracking_ids: vec!["acme".into()] }],
        store_path: dir.join("tokens.db"),
        ..Default::default()
    };
    serve(&cfg, runtime::serve::Timeouts { header: header_timeout, body: Duration::from_secs(5) }).await
}

/// `cfg`'s service as `api serve` runs it (`runtime::serve`: requests carry
/// the peer's address); its base URL.
async fn serve(cfg: &ApiConfig, timeouts: runtime::serve::Timeouts) -> String {
    let store = Arc::new(Store::open(&cfg.store_path).unwrap());
    let app = api::http::router(cfg, store).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(runtime::serve::serve(listener, app, timeouts, std::future::pending()));
    format!("http://{addr}")
}

async fn call(url: &str, method: reqwest::Method, path: &str, secret: &str, body: Option<Value>) -> (u16, Value) {
    let mut rb = reqwest::Client::new().request(method, format!("{url}{path}")).bearer_auth(secret);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn each_role_reaches_only_its_routes() {
    let dir = tempfile::tempdir().unwrap();
    let url = start(dir.path(), Duration::from_secs(10)).await;
    use reqwest::Method as M;
    let (st, created) = call(
        &url,
        M::POST,
        "/api/subscribe_token",
        ADMIN,
        Some(json!({"streams": [{"streamName": "live"}], "tracking": {"trackingId": "acme"}})),
    )
    .await;
    assert_eq!(st, 200, "{created}");
    let token = created["data"]["token"].as_str().unwrap().to_string();
    let verify = json!({"token": token, "streamName": "live", "cluster": "fra-1"});
    // media servers: verification only
    let (st, v) = call(&url, M::POST, "/api/token/verify", VERIFY, Some(verify.clone())).await;
    assert_eq!((st, v["data"]["trackingId"].clone()), (200, json!("acme")), "{v}");
    for (m, path) in [(M::GET, "/api/subscribe_token"), (M::GET, "/api/subscribe_token/1"), (M::DELETE, "/api/subscribe_token/1")] {
        let (st, body) = call(&url, m.clone(), path, VERIFY, None).await;
        assert_eq!(st, 403, "verify-only secret on {m} {path}: {body}");
        assert!(!body.to_string().contains(&token), "no token leaks in a refusal");
    }
    let (st, _) =
        call(&url, M::GET, "/api/analytics/tracking/total?trackingIds=acme&startDate=2026-10-01&stopDate=2026-10-02", VERIFY, None).await;
    assert_eq!(st, 403, "verify-only secret on statistics");
    // a partner: its statistics only
    let (st, _) = call(&url, M::GET, "/api/subscribe_token", PARTNER, None).await;
    assert_eq!(st, 403);
    let (st, _) = call(&url, M::POST, "/api/token/verify", PARTNER, Some(verify.clone())).await;
    assert_eq!(st, 403, "a partner secret cannot verify");
    // the admin: everything; anyone else: 401
    assert_eq!(call(&url, M::GET, "/api/subscribe_token", ADMIN, None).await.0, 200);
    assert_eq!(call(&url, M::POST, "/api/token/verify", ADMIN, Some(verify.clone())).await.0, 200);
    assert_eq!(call(&url, M::GET, "/api/subscribe_token", "sec-unknown-secret-0123456789abcdef", None).await.0, 401);
    // the token store holds every master token: readable by its owner only
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("tokens.db")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "tokens.db mode {mode:o}");
}

/// A client that never finishes its headers is disconnected (slowloris).
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let url = start(dir.path(), Duration::from_millis(500)).await;
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    // the server closes the connection (an answer or EOF); without the
    // timeout this read would wait forever: bounded by the test's own limit
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection was not closed");
    // and a normal client is still served
    assert_eq!(reqwest::get(format!("{url}/healthz")).await.unwrap().status(), 200);
}

/// Updates are read-modify-write in one transaction: a revocation racing
/// label updates is never undone by a stale copy.
#[test]
fn concurrent_updates_never_reactivate_a_revoked_token() {
    for round in 0..20 {
        let store = Arc::new(Store::open_in_memory().unwrap());
        let t = store
            .create::<SubscribeToken>(
                NewSubscribeToken {
                    common: NewTokenCommon {
                        label: "t".into(),
                        streams: vec![StreamRule { stream_name: "live".into(), is_regex: false }],
                        origin_cluster: "auto".into(),
                        expires_on: None,
                        rules: AccessRules::default(),
                    },
                    tracking_id: None,
                },
                chrono::Utc::now(),
            )
            .unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(5));
        let mut threads = Vec::new();
        for i in 0..4 {
            let (store, barrier) = (store.clone(), barrier.clone());
            threads.push(std::thread::spawn(move || {
                barrier.wait();
                for j in 0..50 {
                    store
                        .update::<SubscribeToken, _>(t.common.id, |t| {
                            t.common.label = format!("w{i}-{j}");
                            Ok::<_, StoreError>(())
                        })
                        .unwrap();
                }
            }));
        }
        barrier.wait();
        store
            .update::<SubscribeToken, _>(t.common.id, |t| {
                t.common.is_active = false;
                Ok::<_, StoreError>(())
            })
            .unwrap();
        for th in threads {
            th.join().unwrap();
        }
        assert!(!store.get::<SubscribeToken>(t.common.id).unwrap().unwrap().common.is_active, "round {round}: revoked token re-activated");
    }
}

/// A verify-only secret (what media servers hold) cannot open a console session.
#[tokio::test]
async fn verify_only_secrets_cannot_sign_in_to_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let verify = "verify-only-console-0123456789abcdef";
    let cfg = ApiConfig {
        api_secrets: vec!["console-admin-0123456789abcdef0123".into()],
        verify_secrets: vec![verify.into()],
        store_path: dir.path().join("t.db"),
        ..Default::default()
    };
    let store = Arc::new(Store::open(&cfg.store_path).unwrap());
    let app = api::http::router(&cfg, store).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let r = reqwest::Client::new().post(format!("{url}/console/login")).json(&json!({ "secret": verify })).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("set-cookie").is_none());
    server.abort();
}

/// Failed authentications are throttled per client address: after 5
/// failures an address must wait (429 with Retry-After, its secret not
/// looked at, the right one neither), doubling with each further failure;
/// a user at another address signs in at once; after the wait the right
/// secret works and clears the address. The same for bearer secrets.
#[tokio::test]
async fn failed_sign_ins_are_throttled_per_address_without_locking_others_out() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ApiConfig {
        api_secrets: vec![ADMIN.into()],
        store_path: dir.path().join("tokens.db"),
        // behind a proxy that names the client in X-Forwarded-For
        client_address_header: "x-forwarded-for".into(),
        ..Default::default()
    };
    let url = serve(&cfg, runtime::serve::Timeouts::default()).await;
    let client = reqwest::Client::new();
    let login = |from: &'static str, secret: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let r = client
                .post(format!("{url}/console/login"))
                .header("x-forwarded-for", format!("10.9.8.7, {from}"))
                .json(&json!({ "secret": secret }))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string()))
        }
    };
    const WRONG: &str = "not-the-admin-secret-0123456789abcd";
    for i in 0..api::throttle::FREE_FAILURES {
        assert_eq!(login("192.0.2.1", WRONG).await, (401, None), "failure {}", i + 1);
    }
    // the attacker's address waits, even with the right secret
    assert_eq!(login("192.0.2.1", ADMIN).await, (429, Some("1".into())));
    // a user elsewhere is not locked out
    assert_eq!(login("198.51.100.20", ADMIN).await.0, 200);
    // after the wait the right secret works and clears the address
    let mut ok = false;
    let t = std::time::Instant::now();
    while !ok && t.elapsed() < Duration::from_secs(10) {
        let (st, retry) = login("192.0.2.1", ADMIN).await;
        ok = st == 200;
        if !ok {
            assert_eq!(st, 429);
            tokio::time::sleep(Duration::from_secs(retry.unwrap().parse().unwrap())).await;
        }
    }
    assert!(ok, "signed in after the wait");
    assert_eq!(login("192.0.2.1", WRONG).await.0, 401, "cleared: failures count from zero");

    // bearer secrets: the same per address
    let bearer = |from: &'static str, secret: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            client
                .get(format!("{url}/api/subscribe_token/list?page=1&itemsOnPage=10"))
                .header("x-forwarded-for", from)
                .bearer_auth(secret)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    for _ in 0..api::throttle::FREE_FAILURES {
        assert_eq!(bearer("203.0.113.5", WRONG).await, 401);
    }
    assert_eq!(bearer("203.0.113.5", ADMIN).await, 429);
    assert_eq!(bearer("203.0.113.6", ADMIN).await, 200);
    let metrics = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("api_auth_failures_total{result=\"lockout\"} 2"), "{metrics}");
    let throttled: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("api_auth_failures_total{result=\"throttled\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(throttled >= 2, "{metrics}");
}

/// At most `MAX_CONCURRENT_STATS` statistics queries run at once: with that
/// many held by a ClickHouse that does not answer (a listener that accepts
/// and stays silent), the next one is refused at once with `503` and
/// `Retry-After`, and token routes are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statistics_queries_past_the_concurrency_limit_get_503() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ch_url = format!("http://{}", silent.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    {
        let (accepted, held) = (accepted.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = silent.accept().await {
                held.lock().await.push(conn);
                accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = ApiConfig {
        api_secrets: vec![ADMIN.into()],
        store_path: dir.path().join("tokens.db"),
        clickhouse: runtime::ch::ClickHouseConfig { url: ch_url, ..Default::default() },
        ..Default::default()
    };
    let url = serve(&cfg, runtime::serve::Timeouts::default()).await;
    let path = "/api/analytics/tracking/total?trackingIds=acme&startDate=2026-10-01&stopDate=2026-10-02";
    let mut running = Vec::new();
    for _ in 0..api::http::MAX_CONCURRENT_STATS {
        let url = url.clone();
        running.push(tokio::spawn(async move { call(&url, reqwest::Method::GET, path, ADMIN, None).await }));
    }
    // every one of them is waiting on ClickHouse
    let t = std::time::Instant::now();
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < api::http::MAX_CONCURRENT_STATS {
        assert!(t.elapsed() < Duration::from_secs(10), "the queries reached ClickHouse");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = reqwest::Client::new().get(format!("{url}{path}")).bearer_auth(ADMIN).timeout(Duration::from_secs(5)).send().await;
    let r = r.expect("the query past the limit is answered at once, not run");
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(call(&url, reqwest::Method::GET, "/api/subscribe_token/list?page=1&itemsOnPage=10", ADMIN, None).await.0, 200);
    for r in running {
        r.abort();
    }
}
