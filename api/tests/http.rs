//! The token API in-process over HTTP (127.0.0.1, ephemeral port, SQLite in
//! a temporary directory).

use api::config::ApiConfig;
use api::store::Store;
use api::tokens::sign::{sign, SignRequest};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;

const SECRET: &str = "api-test-secret-0123456789abcdef";

struct Service {
    url: String,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Reply {
    status: u16,
    json: Value,
}

async fn start(db: &Path) -> Service {
    let cfg = ApiConfig { api_secrets: vec![SECRET.into()], store_path: db.to_path_buf(), ..Default::default() };
    let store = Arc::new(Store::open(&cfg.store_path).expect("open store"));
    let app = api::http::router(&cfg, store).expect("router");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Service { url: format!("http://{addr}"), client: reqwest::Client::new(), server }
}

impl Service {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>, secret: Option<&str>) -> Reply {
        let mut rb = self.client.request(method, format!("{}{path}", self.url));
        if let Some(s) = secret {
            rb = rb.bearer_auth(s);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply { status, json }
    }
    async fn get(&self, path: &str) -> Reply {
        self.call(reqwest::Method::GET, path, None, Some(SECRET)).await
    }
    async fn post(&self, path: &str, body: Value) -> Reply {
        self.call(reqwest::Method::POST, path, Some(body), Some(SECRET)).await
    }
    async fn put(&self, path: &str, body: Value) -> Reply {
        self.call(reqwest::Method::PUT, path, Some(body), Some(SECRET)).await
    }
    async fn delete(&self, path: &str) -> Reply {
        self.call(reqwest::Method::DELETE, path, None, Some(SECRET)).await
    }
    async fn create(&self, body: Value) -> Value {
        let r = self.post("/api/subscribe_token", body).await;
        assert_eq!(r.status, 200, "{}", r.json);
        assert_eq!(r.json["status"], "success");
        r.json["data"].clone()
    }
}

fn partner(tracking: &str) -> Value {
    json!({
        "label": format!("partner {tracking}"),
        "streams": [{"streamName": "live", "isRegex": false}, {"streamName": "event-[0-9]+", "isRegex": true}],
        "tracking": {"trackingId": tracking},
        "originCluster": "auto",
        "expires": 3600,
        "allowedOrigins": ["https://partner.example"],
        "allowedIpAddresses": ["10.0.0.0/8"]
    })
}

/// The message of a client error in the platform's envelope (`fail`).
fn error_message(r: &Reply) -> String {
    assert_eq!(r.json["status"], "fail", "{}", r.json);
    r.json["data"]["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn subscribe_token_crud() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("nested/dir/tokens.db")).await;
    let t = svc.create(partner("acme")).await;
    let id = t["id"].as_i64().unwrap();
    let token = t["token"].as_str().unwrap();
    assert_eq!(token.len(), 64);
    assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(t["tracking"], json!({"trackingId": "acme"}));
    assert_eq!(t["originCluster"], "Auto");
    assert_eq!(t["isActive"], true);
    assert_eq!(t["streams"][1], json!({"streamName": "event-[0-9]+", "isRegex": true}));
    assert!(t["expiresOn"].is_string() && t["addedOn"].is_string());
    assert_eq!(t["allowedIpAddresses"], json!(["10.0.0.0/8"]));

    // Minimal body: untracked, auto, no expiry.
    let u = svc.create(json!({"label": "open", "streams": [{"streamName": "live"}]})).await;
    assert_eq!(u["tracking"], Value::Null);
    assert_eq!(u["expiresOn"], Value::Null);
    assert_eq!(u["originCluster"], "Auto");
    assert_ne!(u["token"], t["token"]);

    let g = svc.get(&format!("/api/subscribe_token/{id}")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json["data"], t);

    for path in ["/api/subscribe_token/list?page=1&itemsOnPage=10&sortBy=AddedOn", "/api/subscribe_token"] {
        let l = svc.get(path).await;
        assert_eq!(l.status, 200);
        let ids: Vec<i64> = l.json["data"].as_array().unwrap().iter().map(|x| x["id"].as_i64().unwrap()).collect();
        assert_eq!(ids, vec![id, u["id"].as_i64().unwrap()]);
    }

    let p = svc
        .put(
            &format!("/api/subscribe_token/{id}"),
            json!({"label": "renamed", "isActive": false, "streams": [{"streamName": "other"}], "updateAllowedOrigins": [],
                   "updateAllowedIpAddresses": ["::1"], "expiresOn": null, "tracking": {"trackingId": "acme"}}),
        )
        .await;
    assert_eq!(p.status, 200, "{}", p.json);
    let d = &p.json["data"];
    assert_eq!(d["label"], "renamed");
    assert_eq!(d["isActive"], false);
    assert_eq!(d["streams"], json!([{"streamName": "other", "isRegex": false}]));
    assert_eq!(d["expiresOn"], Value::Null);
    assert_eq!(d["tracking"], json!({"trackingId": "acme"}));
    assert_eq!(d["token"], t["token"]);
    assert_eq!(svc.get(&format!("/api/subscribe_token/{id}")).await.json["data"], *d);

    let del = svc.delete(&format!("/api/subscribe_token/{id}")).await;
    assert_eq!((del.status, &del.json), (200, &json!({"status": "success", "data": true})));
    assert_eq!(svc.get(&format!("/api/subscribe_token/{id}")).await.status, 400);
    assert_eq!(svc.delete(&format!("/api/subscribe_token/{id}")).await.status, 400);
}

#[tokio::test]
async fn tracking_is_immutable() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("t.db")).await;
    let t = svc.create(partner("acme")).await;
    let path = format!("/api/subscribe_token/{}", t["id"]);
    for body in [
        json!({"tracking": {"trackingId": "other"}}),
        json!({"tracking": null}),
        json!({"label": "x", "tracking": {"trackingId": "acme2"}}),
    ] {
        let r = svc.put(&path, body).await;
        assert_eq!(r.status, 400, "{}", r.json);
        assert!(error_message(&r).contains("tracking"), "{}", r.json);
    }
    let u = svc.create(json!({"streams": [{"streamName": "live"}]})).await;
    let r = svc.put(&format!("/api/subscribe_token/{}", u["id"]), json!({"tracking": {"trackingId": "late"}})).await;
    assert_eq!(r.status, 400);
    // Nothing changed.
    assert_eq!(svc.get(&path).await.json["data"], t);
}

#[tokio::test]
async fn secret_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("t.db")).await;
    let routes = [
        (reqwest::Method::GET, "/api/subscribe_token/list"),
        (reqwest::Method::POST, "/api/subscribe_token"),
        (reqwest::Method::GET, "/api/subscribe_token/1"),
        (reqwest::Method::PUT, "/api/subscribe_token/1"),
        (reqwest::Method::DELETE, "/api/subscribe_token/1"),
        (reqwest::Method::POST, "/api/publish_token"),
        (reqwest::Method::POST, "/api/token/verify"),
    ];
    for (m, path) in routes {
        for secret in [None, Some("wrong-secret-0123456789abcdef"), Some(&SECRET[..SECRET.len() - 1]), Some("")] {
            let r = svc.call(m.clone(), path, Some(partner("acme")), secret).await;
            assert_eq!(r.status, 401, "{m} {path} {secret:?}");
            assert!(!error_message(&r).is_empty());
        }
    }
    assert!(svc.get("/api/subscribe_token").await.json["data"].as_array().unwrap().is_empty());
    let h = svc.call(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(h.status, 200);
}

/// The platform answers an unknown token id with `400` `{"tokenId": ...}`.
#[tokio::test]
async fn unknown_ids_are_400_as_on_the_platform() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("t.db")).await;
    for r in [
        svc.get("/api/subscribe_token/12345").await,
        svc.get("/api/subscribe_token/abc").await,
        svc.put("/api/subscribe_token/12345", json!({"label": "x"})).await,
        svc.put("/api/v2/subscribe_token/12345", json!({"label": "x"})).await,
        svc.delete("/api/subscribe_token/12345").await,
        svc.get("/api/publish_token/7").await,
        svc.put("/api/publish_token/7", json!({"label": "x"})).await,
        svc.delete("/api/publish_token/7").await,
    ] {
        assert_eq!(r.status, 400, "{}", r.json);
        assert!(r.json["data"]["tokenId"].as_str().unwrap().contains("not found"), "{}", r.json);
        assert!(!error_message(&r).is_empty());
    }
}

#[tokio::test]
async fn update_rotates_and_edits_the_platform_way() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("t.db")).await;
    let t = svc.create(partner("acme")).await;
    let id = t["id"].as_i64().unwrap();
    let old = t["token"].as_str().unwrap().to_string();
    let jwt = sign(
        &old,
        &SignRequest { token_id: id, stream_name: "live".into(), expires_in_secs: 600, ..Default::default() },
        chrono::Utc::now(),
    )
    .unwrap();
    let verify = |token: &str| json!({"token": token, "streamName": "live", "cluster": "fra-1", "origin": "https://partner.example", "ipAddress": "10.1.1.1"});
    assert_eq!(svc.post("/api/token/verify", verify(&jwt)).await.status, 200);
    // rotation: a new token string; the old one and its viewer tokens stop verifying at once
    let r = svc.put(&format!("/api/subscribe_token/{id}"), json!({"refreshToken": true})).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let new = r.json["data"]["token"].as_str().unwrap().to_string();
    assert!(new != old && new.len() == 64);
    assert_eq!(r.json["data"]["tracking"], json!({"trackingId": "acme"}), "the tracking id survives a rotation");
    assert_eq!(svc.post("/api/token/verify", verify(&old)).await.json["data"]["code"], "unknown_token");
    assert_eq!(svc.post("/api/token/verify", verify(&jwt)).await.json["data"]["code"], "bad_signature");
    assert_eq!(svc.post("/api/token/verify", verify(&new)).await.status, 200);
    // streams: added, and removed by name (the reference) or by object (the client libraries)
    let path = format!("/api/subscribe_token/{id}");
    let r = svc.put(&path, json!({"addTokenStreams": [{"streamName": "a"}, {"streamName": "b[0-9]", "isRegex": true}]})).await;
    assert_eq!(r.json["data"]["streams"].as_array().unwrap().len(), 4, "{}", r.json);
    let r = svc.put(&path, json!({"removeTokenStreams": ["a", {"streamName": "b[0-9]", "isRegex": true}]})).await;
    assert_eq!(r.json["data"]["streams"], t["streams"], "{}", r.json);
    // update* fields (v1) and the same without the prefix (v2)
    let r = svc
        .put(&path, json!({"updateAllowedCountries": ["fr"], "updateBindIpsOnUsage": 2, "updateOriginCluster": "AUTO", "label": "x"}))
        .await;
    let d = &r.json["data"];
    assert_eq!((&d["allowedCountries"], &d["bindIpsOnUsage"], &d["originCluster"]), (&json!(["FR"]), &json!(2), &json!("Auto")));
    let r = svc.put(&format!("/api/v2/subscribe_token/{id}"), json!({"deniedCountries": ["US"], "allowedCountries": []})).await;
    assert_eq!((&r.json["data"]["deniedCountries"], &r.json["data"]["allowedCountries"]), (&json!(["US"]), &json!([])));
    // nothing to update, and a token that would keep no stream
    let r = svc.put(&path, json!({"unknown": 1})).await;
    assert_eq!((r.status, r.json["data"]["token"].as_str()), (400, Some("No properties specified to update.")));
    let r = svc.put(&path, json!({"removeTokenStreams": ["live", "event-[0-9]+"]})).await;
    assert_eq!(r.status, 400, "{}", r.json);
}

#[tokio::test]
async fn list_pages_like_the_platform() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("t.db")).await;
    for l in ["c", "a", "d", "b"] {
        svc.create(json!({"label": l, "streams": [{"streamName": "live"}]})).await;
    }
    let labels = |v: &Value| v["data"].as_array().unwrap().iter().map(|t| t["label"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    let svc = &svc;
    let l = |q: &str| {
        let path = format!("/api/subscribe_token/list?{q}");
        async move { svc.get(&path).await }
    };
    assert_eq!(labels(&l("page=1&itemsOnPage=3").await.json), ["a", "b", "c"], "sortBy defaults to Name");
    assert_eq!(labels(&l("page=2&itemsOnPage=3").await.json), ["d"]);
    assert_eq!(labels(&l("page=3&itemsOnPage=3").await.json), Vec::<String>::new());
    assert_eq!(labels(&l("page=1&itemsOnPage=2&sortBy=AddedOn&isDescending=True").await.json), ["b", "d"]);
    for bad in ["itemsOnPage=2", "page=1", "page=0&itemsOnPage=2", "page=1&itemsOnPage=101", "page=1&itemsOnPage=2&sortBy=Size"] {
        let r = l(bad).await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.json["data"]["errors"].is_object(), "{bad}: {}", r.json);
    }
}

#[tokio::test]
async fn validation_errors_are_400() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("t.db")).await;
    let live = json!([{"streamName": "live"}]);
    let cases = [
        json!({"streams": live, "tracking": {"trackingId": "t".repeat(129)}}),
        json!({"streams": live, "tracking": {"trackingId": ""}}),
        json!({"streams": []}),
        json!({"label": "no streams"}),
        json!({"streams": [{"streamName": "live(", "isRegex": true}]}),
        json!({"streams": [{"streamName": ""}]}),
        json!({"streams": live, "expires": 0}),
        json!({"streams": live, "expires": -5}),
        json!({"streams": live, "originCluster": "bad cluster"}),
        json!({"streams": live, "allowedIpAddresses": ["300.1.1.1"]}),
        json!({"streams": live, "allowedCountries": ["France"]}),
        json!({"streams": live, "bindIpsOnUsage": -1}),
        json!({"streams": live, "expiresOn": "tomorrow"}),
        json!({"streams": live, "expiresOn": "2001-01-01T00:00:00Z"}),
        json!({"streams": "live"}),
    ];
    for body in cases {
        let r = svc.post("/api/subscribe_token", body.clone()).await;
        assert_eq!(r.status, 400, "{body} -> {}", r.json);
        assert!(!error_message(&r).is_empty());
    }
    // Not JSON at all.
    let r = svc.client.post(format!("{}/api/subscribe_token", svc.url)).bearer_auth(SECRET).body("{not json").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // 128 characters is fine; unknown fields are ignored, as the platform does.
    svc.create(json!({"streams": live, "tracking": {"trackingId": "t".repeat(128)}, "unknownField": 1})).await;
    // Updates are validated too.
    let t = svc.create(partner("acme")).await;
    let path = format!("/api/subscribe_token/{}", t["id"]);
    for body in [json!({"streams": []}), json!({"streams": [{"streamName": "[", "isRegex": true}]}), json!({"updateOriginCluster": "x y"})]
    {
        assert_eq!(svc.put(&path, body.clone()).await.status, 400, "{body}");
    }
    assert!(svc.get("/api/subscribe_token").await.json["data"].as_array().unwrap().len() == 2);
}

#[tokio::test]
async fn tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tokens.db");
    let svc = start(&db).await;
    let a = svc.create(partner("acme")).await;
    let b = svc.create(partner("globex")).await;
    let p =
        svc.post("/api/publish_token", json!({"label": "owner", "streams": [{"streamName": "live"}], "subscribeRequiresAuth": true})).await;
    assert_eq!(p.status, 200, "{}", p.json);
    svc.put(&format!("/api/subscribe_token/{}", b["id"]), json!({"isActive": false})).await;
    let before = svc.get("/api/subscribe_token").await.json["data"].clone();
    drop(svc);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let svc = start(&db).await;
    let after = svc.get("/api/subscribe_token").await.json["data"].clone();
    assert_eq!(after, before);
    assert_eq!(after[0]["token"], a["token"]);
    assert_eq!(after[1]["isActive"], false);
    let pubs = svc.get("/api/publish_token/list?page=1&itemsOnPage=10").await.json["data"].clone();
    assert_eq!(pubs, json!([p.json["data"]]));
    // Ids keep increasing: a deleted id is never reused.
    svc.delete(&format!("/api/subscribe_token/{}", b["id"])).await;
    let c = svc.create(partner("initech")).await;
    assert!(c["id"].as_i64().unwrap() > b["id"].as_i64().unwrap());
    // And the master token still verifies after the restart.
    let r = svc
        .post(
            "/api/token/verify",
            json!({"token": a["token"], "streamName": "live", "cluster": "fra-1", "origin": "https://partner.example", "ipAddress": "10.0.0.1"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(r.json["data"]["trackingId"], "acme");
}

#[tokio::test]
async fn publish_token_crud() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("t.db")).await;
    let r =
        svc.post("/api/publish_token", json!({"label": "owner", "streams": [{"streamName": "live"}], "subscribeRequiresAuth": true})).await;
    assert_eq!(r.status, 200, "{}", r.json);
    let d = &r.json["data"];
    assert_eq!(d["subscribeRequiresAuth"], true);
    assert_eq!(d["token"].as_str().unwrap().len(), 64);
    let path = format!("/api/publish_token/{}", d["id"]);
    assert_eq!(svc.get(&path).await.json["data"], *d);
    assert_eq!(svc.get("/api/publish_token").await.json["data"], json!([d]));
    assert_eq!((&d["multisource"], &d["record"]), (&json!(true), &json!(false)), "the platform's defaults");
    assert_eq!(svc.post("/api/publish_token", json!({"streams": []})).await.status, 400);
    let u = svc.put(&path, json!({"subscribeRequiresAuth": false, "record": true, "refreshToken": true})).await;
    assert_eq!(u.status, 200, "{}", u.json);
    assert_eq!((&u.json["data"]["subscribeRequiresAuth"], &u.json["data"]["record"]), (&json!(false), &json!(true)));
    assert_ne!(u.json["data"]["token"], d["token"]);
    assert_eq!(svc.delete(&path).await.status, 200);
    assert_eq!(svc.get(&path).await.status, 400);
}

#[tokio::test]
async fn verify_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("t.db")).await;
    let acme = svc.create(partner("acme")).await;
    let pinned = svc.create(json!({"streams": [{"streamName": "live"}], "originCluster": "fra-1"})).await;
    let acme_token = acme["token"].as_str().unwrap();
    let acme_id = acme["id"].as_i64().unwrap();
    let now = chrono::Utc::now();
    let v = |token: String, stream: &str, cluster: &str| json!({"token": token, "streamName": stream, "cluster": cluster});

    // Master token.
    let r = svc.post("/api/token/verify", v(acme_token.into(), "event-42", "ams-1")).await;
    let viewer = |mut body: Value| {
        body["origin"] = json!("https://partner.example");
        body["ipAddress"] = json!("10.2.3.4");
        body
    };
    assert_eq!(r.status, 403, "partner() restricts origins and IPs: {}", r.json);
    assert_eq!(r.json["data"]["code"], "origin_not_allowed");
    let r = svc.post("/api/token/verify", viewer(v(acme_token.into(), "event-42", "ams-1"))).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!((&r.json["data"]["tokenId"], &r.json["data"]["trackingId"]), (&json!(acme_id), &json!("acme")));
    assert_eq!(r.json["data"]["customViewerData"], Value::Null);

    // Self-signed, inheriting the tracking.
    let req = SignRequest {
        token_id: acme_id,
        stream_name: "live".into(),
        custom_viewer_data: Some("viewer-7".into()),
        expires_in_secs: 600,
        ..Default::default()
    };
    let jwt = sign(acme_token, &req, now).unwrap();
    let r = svc.post("/api/token/verify", viewer(v(jwt.clone(), "live", "ams-1"))).await;
    assert_eq!(r.status, 200, "{}", r.json);
    assert_eq!(
        r.json["data"],
        json!({"tokenId": acme_id, "trackingId": "acme", "customViewerData": "viewer-7",
               "expiresAt": chrono::DateTime::from_timestamp(now.timestamp() + 600, 0).unwrap()
                   .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)})
    );

    // Refusals, with their codes.
    let expect = |r: Reply, status: u16, code: &str| {
        assert_eq!(r.status, status, "{}", r.json);
        assert_eq!(r.json["data"]["code"], code, "{}", r.json);
        assert_eq!(r.json["status"], "fail");
    };
    expect(svc.post("/api/token/verify", viewer(v(jwt.clone(), "other", "ams-1"))).await, 403, "stream_mismatch");
    let stolen = sign(acme_token, &SignRequest { tracking_id: Some("globex".into()), ..req.clone() }, now).unwrap();
    expect(svc.post("/api/token/verify", viewer(v(stolen, "live", "ams-1"))).await, 403, "tracking_override");
    // a viewer token outliving its parent is admitted until the parent expires
    let long = sign(acme_token, &SignRequest { expires_in_secs: 7200, ..req.clone() }, now).unwrap();
    let r = svc.post("/api/token/verify", viewer(v(long, "live", "ams-1"))).await;
    assert_eq!(r.json["data"]["expiresAt"], acme["expiresOn"], "{}", r.json);
    let mut wrong_ip = viewer(v(jwt.clone(), "live", "ams-1"));
    wrong_ip["ipAddress"] = json!("192.0.2.1");
    expect(svc.post("/api/token/verify", wrong_ip).await, 403, "ip_not_allowed");
    // the viewer's address under another common name
    let aliased = json!({"token": jwt, "streamName": "live", "cluster": "ams-1", "origin": "https://partner.example", "ip": "10.9.9.9"});
    assert_eq!(svc.post("/api/token/verify", aliased).await.status, 200);
    let forged = sign(pinned["token"].as_str().unwrap(), &req, now).unwrap();
    expect(svc.post("/api/token/verify", v(forged, "live", "ams-1")).await, 403, "bad_signature");
    expect(svc.post("/api/token/verify", v(pinned["token"].as_str().unwrap().into(), "live", "ams-1")).await, 403, "cluster_mismatch");
    expect(svc.post("/api/token/verify", v("garbage".into(), "live", "ams-1")).await, 400, "malformed");
    svc.put(&format!("/api/subscribe_token/{acme_id}"), json!({"isActive": false})).await;
    expect(svc.post("/api/token/verify", viewer(v(jwt.clone(), "live", "ams-1"))).await, 403, "parent_inactive");
    svc.delete(&format!("/api/subscribe_token/{acme_id}")).await;
    expect(svc.post("/api/token/verify", viewer(v(jwt, "live", "ams-1"))).await, 403, "parent_not_found");
    // without a token: admitted untracked unless a publish token requires auth
    let none = json!({"streamName": "live", "cluster": "fra-1"});
    let r = svc.post("/api/token/verify", none.clone()).await;
    assert_eq!((r.status, &r.json["data"]["tokenId"], &r.json["data"]["trackingId"]), (200, &Value::Null, &Value::Null), "{}", r.json);
    svc.post("/api/publish_token", json!({"label": "o", "streams": [{"streamName": "live"}], "subscribeRequiresAuth": true})).await;
    expect(svc.post("/api/token/verify", none).await, 403, "token_required");
    // A body without the cluster is a bad request.
    let r = svc.post("/api/token/verify", json!({"token": acme_token, "streamName": "live"})).await;
    assert_eq!(r.status, 400);
    // The refusals are counted.
    let m = svc.client.get(format!("{}/metrics", svc.url)).send().await.unwrap().text().await.unwrap();
    assert!(m.contains("api_verify_total{result=\"tracking_override\"} 1"), "{m}");
}

/// The console's sign-in: admin and scoped secrets open a session with an
/// HttpOnly, SameSite=Strict cookie; state changes through the cookie need
/// the session's CSRF token; sign-out ends the session.
#[tokio::test]
async fn console_sessions_and_csrf() {
    let dir = tempfile::tempdir().unwrap();
    let svc = start(&dir.path().join("t.db")).await;
    let page = svc.client.get(&svc.url).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(page.text().await.unwrap().contains("/console/app.js"));
    let login = |secret: &str| svc.client.post(format!("{}/console/login", svc.url)).json(&json!({ "secret": secret })).send();
    assert_eq!(login("wrong-secret-0123456789abcdef0123").await.unwrap().status().as_u16(), 401);
    let r = login(SECRET).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=1800"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_string();
    let csrf = r.json::<Value>().await.unwrap()["data"]["csrf"].as_str().unwrap().to_string();
    let with = |m: reqwest::Method, path: &str| svc.client.request(m, format!("{}{path}", svc.url)).header("Cookie", &session);
    // reads need only the cookie
    assert_eq!(with(reqwest::Method::GET, "/api/subscribe_token").send().await.unwrap().status().as_u16(), 200);
    // a state change without (or with a wrong) CSRF token is refused; with it, done
    let body = json!({"label": "c", "streams": [{"streamName": "live"}]});
    let r = with(reqwest::Method::POST, "/api/subscribe_token").json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = with(reqwest::Method::POST, "/api/subscribe_token").header("X-CSRF-Token", "0".repeat(64)).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = with(reqwest::Method::POST, "/api/subscribe_token").header("X-CSRF-Token", &csrf).json(&body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // sign-out ends it
    with(reqwest::Method::POST, "/console/logout").header("X-CSRF-Token", &csrf).send().await.unwrap();
    assert_eq!(with(reqwest::Method::GET, "/api/subscribe_token").send().await.unwrap().status().as_u16(), 401);
    let s = with(reqwest::Method::GET, "/console/session").send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(s["data"], Value::Null);
}
