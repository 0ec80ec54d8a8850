//! Compatibility with the platform's REST API: its documented request and
//! response examples (`tests/platform/examples.json`, from the public API
//! reference and guides) replayed against `api serve`; and the OpenAPI
//! document describing exactly the routes served.

use api::config::ApiConfig;
use api::store::Store;
use serde_json::Value;
use std::sync::Arc;

const SECRET: &str = "compat-suite-9f3a1c77e2b04d58a6c1";

async fn start(dir: &std::path::Path) -> (String, tokio::task::JoinHandle<()>) {
    let cfg = ApiConfig { api_secrets: vec![SECRET.into()], store_path: dir.join("t.db"), ..Default::default() };
    let store = Arc::new(Store::open(&cfg.store_path).unwrap());
    let app = api::http::router(&cfg, store).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (url, tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Every field of the documented value is in ours, with the same JSON type
/// (a documented `null` only says the field exists).
fn same_shape(doc: &Value, ours: &Value, at: &str, problems: &mut Vec<String>) {
    if doc.is_null() {
        return;
    }
    if kind(doc) != kind(ours) {
        problems.push(format!("{at}: documented {}, got {} ({ours})", kind(doc), kind(ours)));
        return;
    }
    match (doc, ours) {
        (Value::Object(d), Value::Object(o)) => {
            for (k, dv) in d {
                match o.get(k) {
                    None => problems.push(format!("{at}/{k}: missing")),
                    Some(ov) => same_shape(dv, ov, &format!("{at}/{k}"), problems),
                }
            }
        }
        (Value::Array(d), Value::Array(o)) => {
            if let (Some(dv), Some(ov)) = (d.first(), o.first()) {
                same_shape(dv, ov, &format!("{at}[0]"), problems);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn the_platforms_documented_examples_replay() {
    let dir = tempfile::tempdir().unwrap();
    let (url, server) = start(dir.path()).await;
    let client = reqwest::Client::new();
    let examples: Value = serde_json::from_str(include_str!("platform/examples.json")).unwrap();
    let cases = examples["cases"].as_array().unwrap();
    assert!(cases.len() >= 15);
    let mut last_id = 0i64;
    let mut problems = Vec::new();
    for c in cases {
        let name = c["name"].as_str().unwrap();
        let path = c["path"].as_str().unwrap().replace("$id", &last_id.to_string());
        let method = reqwest::Method::from_bytes(c["method"].as_str().unwrap().as_bytes()).unwrap();
        let mut rb = client.request(method.clone(), format!("{url}{path}")).bearer_auth(SECRET);
        if let Some(b) = c.get("body") {
            rb = rb.json(b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status != c["status"].as_u64().unwrap() as u16 {
            problems.push(format!("{name}: status {status}, documented {}: {body}", c["status"]));
            continue;
        }
        let mut p = Vec::new();
        same_shape(&c["response"], &body, "", &mut p);
        problems.extend(p.into_iter().map(|p| format!("{name}: {p}")));
        for (pointer, want) in c.get("exact").and_then(Value::as_object).into_iter().flatten() {
            if body.pointer(pointer) != Some(want) {
                problems.push(format!("{name}: {pointer} is {:?}, want {want}", body.pointer(pointer)));
            }
        }
        if let Some(secs) = c.get("expires_after_added_secs").and_then(Value::as_i64) {
            let t = |k: &str| chrono::DateTime::parse_from_rfc3339(body["data"][k].as_str().unwrap()).unwrap().timestamp();
            if t("expiresOn") - t("addedOn") != secs {
                problems.push(format!("{name}: expiresOn - addedOn != {secs}"));
            }
        }
        if method == reqwest::Method::POST {
            last_id = body["data"]["id"].as_i64().unwrap_or(last_id);
        }
    }
    server.abort();
    assert!(problems.is_empty(), "differences from the platform's examples:\n{}", problems.join("\n"));
}

/// The document lists every route the router serves and nothing else: each
/// documented path and method answers (not 404/405), and the token, records
/// and analytics schemas are there.
#[tokio::test]
async fn the_openapi_document_describes_the_served_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (url, server) = start(dir.path()).await;
    let client = reqwest::Client::new();
    let doc: Value = client.get(format!("{url}/api/openapi.json")).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut described = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys().filter(|m| ["get", "post", "put", "delete"].contains(&m.as_str())) {
            described.push(format!("{} {path}", method.to_uppercase()));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = client
                .request(m, format!("{url}{}", path.replace("{id}", "1")))
                .bearer_auth(SECRET)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            assert!(![404, 405].contains(&r.status().as_u16()), "{method} {path} is described but not served");
        }
    }
    described.sort();
    for route in [
        "POST /api/subscribe_token",
        "GET /api/subscribe_token/list",
        "PUT /api/subscribe_token/{id}",
        "DELETE /api/publish_token/{id}",
        "PUT /api/publish_token/{id}",
        "POST /api/token/verify",
        "GET /api/analytics/tracking/series",
        "GET /api/analytics/tracking/streams/total",
        "POST /api/records/viewers",
    ] {
        assert!(described.iter().any(|d| d == route), "{route} not described: {described:?}");
    }
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for s in ["SubscribeTokenData", "PublishTokenData", "StreamRule", "Record", "StreamBytes", "TrackingBytes", "VerifyData", "Fail"] {
        assert!(schemas.contains_key(s), "schema {s}: {:?}", schemas.keys().collect::<Vec<_>>());
    }
    // the records' fields are the ones the service writes
    let record = &schemas["Record"]["properties"];
    for f in [
        "startTime",
        "endTime",
        "clientId",
        "clusterId",
        "country",
        "duration",
        "bytes",
        "ipAddress",
        "streamName",
        "trackingId",
        "userAgent",
    ] {
        assert!(record.get(f).is_some(), "Record.{f}");
    }
    server.abort();
}
