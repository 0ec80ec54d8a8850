//! The HTTP gateway (`POST /v1/usage`) in-process against the real broker:
//! what a media server sends is exactly what lands on the topic, invalid or
//! unauthorised requests produce nothing, limits answer 413, and a simulation
//! sent through the gateway recounts to its expected totals.

use chrono::{DateTime, FixedOffset, SecondsFormat};
use e2e::*;
use ingest::http::IngestConfig;
use rdkafka::consumer::Consumer;
use schemas::{Codec, OwnedViewerUsage, Protocol, ViewerUsage};
use serde_json::{json, Value};
use simulator::simulate::{SimConfig, Totals};
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

/// The gateway's one API key (32 characters).
const KEY: &str = "gw-test-key-0123456789abcdefghij";
const PARTITIONS: i32 = 2;

/// A gateway serving on an ephemeral port, with its own fresh topic.
struct Gateway {
    url: String,
    topic: String,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    json: Value,
}

async fn gateway(tweak: impl FnOnce(&mut IngestConfig)) -> Gateway {
    assert_eq!(KEY.len(), 32);
    let topic = unique("ingest_gw");
    create_topic(&topic, PARTITIONS).await;
    let mut cfg = IngestConfig::default();
    cfg.kafka.brokers = brokers();
    cfg.kafka.topic = topic.clone();
    cfg.api_keys = vec![KEY.to_string()];
    tweak(&mut cfg);
    let app = ingest::http::router(cfg).expect("gateway router");
    let (url, server) = serve_router(app).await;
    Gateway { url, topic, client: reqwest::Client::new(), server }
}

impl Gateway {
    async fn request(&self, rb: reqwest::RequestBuilder) -> Reply {
        let r = rb.send().await.expect("gateway answers");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, text, json }
    }

    /// POST a raw body with a Content-Type and the right key.
    async fn post(&self, ctype: &str, body: impl Into<reqwest::Body>) -> Reply {
        let rb = self.client.post(format!("{}/v1/usage", self.url)).bearer_auth(KEY).header("content-type", ctype).body(body);
        self.request(rb).await
    }

    async fn post_array(&self, events: &[Value]) -> Reply {
        self.post("application/json", serde_json::to_vec(events).unwrap()).await
    }

    async fn get(&self, path: &str) -> Reply {
        self.request(self.client.get(format!("{}{path}", self.url))).await
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A valid event of viewer `v{i % 7}` of this test, seq `i`, an hour ago.
fn event(prefix: &str, i: i64) -> OwnedViewerUsage {
    let start = now_ms() / 1000 * 1000 - 3_600_000 + i * 10_000 + (i % 3) * 7; // some odd milliseconds
    ViewerUsage {
        viewer_id: Cow::Owned(format!("{prefix}-v{}", i % 7)),
        seq: i,
        interval_start: start,
        interval_end: start + 10_000 - (i % 2),
        bytes_out: 1_000_000 + i * 4321,
        bytes_in: 10_000 + i,
        account_id: "acct-gw".into(),
        stream_name: Cow::Owned(format!("live-{}", i % 2)),
        cluster: ["fra-1", "iad-1", "sin-1"][(i % 3) as usize].into(),
        server_id: Cow::Owned(format!("srv-{}", i % 4)),
        protocol: Protocol::ALL[(i % 5) as usize],
        token_id: (i % 3 != 0).then_some(1000 + i),
        tracking_id: match i % 5 {
            0 => None,
            1 | 4 => Some("acme-web".into()),
            2 => Some("globex-web".into()),
            _ => Some("партнёр-ü".into()),
        },
        custom_viewer_data: (i % 3 == 1).then(|| Cow::Owned(format!("{{\"user\":\"u{i}\",\"plan\":\"premium\"}}"))),
    }
}

fn rfc3339(ms: i64, offset_secs: i32) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap()
        .with_timezone(&FixedOffset::east_opt(offset_secs).unwrap())
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// JSON form of `ev` as a media server would send it; `style` varies the time
/// format (epoch ms, RFC 3339 in UTC or with an offset) and whether absent
/// optional fields are `null` or left out.
fn to_json(ev: &OwnedViewerUsage, style: usize) -> Value {
    let time = |ms: i64, k: usize| match (style + k) % 3 {
        0 => json!(ms),
        1 => json!(rfc3339(ms, 0)),
        _ => json!(rfc3339(ms, if style.is_multiple_of(2) { 5 * 3600 + 1800 } else { -7 * 3600 })),
    };
    let mut v = json!({
        "viewer_id": ev.viewer_id, "seq": ev.seq,
        "interval_start": time(ev.interval_start, 0), "interval_end": time(ev.interval_end, 1),
        "bytes_out": ev.bytes_out, "bytes_in": ev.bytes_in,
        "account_id": ev.account_id, "stream_name": ev.stream_name,
        "cluster": ev.cluster, "server_id": ev.server_id,
    });
    let o = v.as_object_mut().unwrap();
    let omit = style % 2 == 1; // absent instead of null
    if ev.protocol != Protocol::Other || !omit {
        o.insert("protocol".into(), json!(ev.protocol.as_str()));
    }
    for (k, val) in [
        ("token_id", ev.token_id.map(|t| json!(t))),
        ("tracking_id", ev.tracking_id.as_ref().map(|t| json!(t))),
        ("custom_viewer_data", ev.custom_viewer_data.as_ref().map(|t| json!(t))),
    ] {
        match val {
            Some(val) => {
                o.insert(k.into(), val);
            }
            None if !omit => {
                o.insert(k.into(), Value::Null);
            }
            None => {}
        }
    }
    v
}

/// Read the topic from the beginning (see [`e2e::read_topic`]).
async fn read_topic(topic: &str, want: usize, quiet: Duration, max: Duration) -> Vec<(String, Vec<u8>)> {
    e2e::read_topic(topic, PARTITIONS, want, quiet, max).await
}

/// Messages on the topic by its watermarks (high - low, summed over partitions).
async fn topic_len(topic: &str) -> i64 {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c = topic_reader(&topic, PARTITIONS);
        (0..PARTITIONS)
            .map(|p| {
                let (lo, hi) = c.fetch_watermarks(&topic, p, Duration::from_secs(10)).expect("watermarks");
                hi - lo
            })
            .sum()
    })
    .await
    .unwrap()
}

/// After a short wait (for anything still in flight), the topic holds nothing.
async fn assert_topic_empty(topic: &str) {
    tokio::time::sleep(Duration::from_secs(3)).await;
    let msgs = read_topic(topic, 0, Duration::from_secs(3), Duration::from_secs(3)).await;
    assert!(msgs.is_empty(), "nothing may be produced, found {} messages on {topic}", msgs.len());
    assert_eq!(topic_len(topic).await, 0, "watermarks of {topic} show messages");
}

/// Decode every message, checking its key is the viewer_id.
fn decode_all(msgs: &[(String, Vec<u8>)]) -> Vec<OwnedViewerUsage> {
    let codec = Codec::new();
    msgs.iter()
        .map(|(key, payload)| {
            let ev = codec.decode(payload).expect("decodable message").into_owned();
            assert_eq!(key, ev.viewer_id.as_ref(), "message keyed by its viewer_id");
            ev
        })
        .collect()
}

/// The topic holds exactly `sent` (as a set, no extra copies), each keyed by viewer_id.
async fn assert_topic_holds_exactly(topic: &str, sent: &[OwnedViewerUsage]) {
    let msgs = read_topic(topic, sent.len(), Duration::from_secs(2), Duration::from_secs(60)).await;
    let got = decode_all(&msgs);
    assert_eq!(got.len(), sent.len(), "message count on the topic");
    let got: HashSet<OwnedViewerUsage> = got.into_iter().collect();
    let want: HashSet<OwnedViewerUsage> = sent.iter().cloned().collect();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(missing.is_empty() && extra.is_empty(), "missing {missing:#?}\nunexpected {extra:#?}");
    assert_eq!(topic_len(topic).await, sent.len() as i64, "watermarks agree");
}

/// Events 0..n of this gateway, with boundary values sprinkled in.
fn batch(gw: &Gateway, n: i64) -> Vec<OwnedViewerUsage> {
    let mut evs: Vec<OwnedViewerUsage> = (0..n).map(|i| event(&gw.topic, i)).collect();
    if n > 13 {
        evs[10].tracking_id = Some("t".repeat(128).into()); // longest allowed
        evs[11].custom_viewer_data = Some("ü".repeat(1024).into()); // 1024 characters, 2048 bytes
        evs[12].bytes_out = 0;
        evs[12].bytes_in = 0;
        evs[12].interval_end = evs[12].interval_start; // empty interval is allowed
        evs[13].bytes_out = schemas::validate::DEFAULT_MAX_EVENT_BYTES; // the largest allowed, more than 2^32
        evs[13].interval_end = now_ms() + 60_000; // within the 5 minutes of clock skew
    }
    evs
}

fn error_list(r: &Reply) -> Vec<(Option<u64>, String, String)> {
    r.json["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("no errors[] in {}", r.text))
        .iter()
        .map(|e| (e["index"].as_u64(), e["field"].as_str().expect("field").to_string(), e["reason"].as_str().expect("reason").to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_batch_lands_on_the_topic_exactly_as_sent() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|_| {}).await;
    let sent = batch(&gw, 50);
    let body: Vec<Value> = sent.iter().enumerate().map(|(i, ev)| to_json(ev, i)).collect();
    // the variants really are mixed
    assert!(body.iter().any(|v| v["interval_start"].is_i64()) && body.iter().any(|v| v["interval_start"].is_string()));
    assert!(body.iter().any(|v| v["tracking_id"].is_null() && v.get("tracking_id").is_some()));
    assert!(body.iter().any(|v| v.get("tracking_id").is_none()));
    assert!(body.iter().any(|v| v.get("custom_viewer_data").is_none()));
    let r = gw.post_array(&body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["accepted"], 50, "{}", r.text);
    assert_topic_holds_exactly(&gw.topic, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_batch_lands_on_the_topic_exactly_as_sent() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|_| {}).await;
    let sent = batch(&gw, 50);
    let mut body = String::new();
    for (i, ev) in sent.iter().enumerate() {
        body.push_str(&serde_json::to_string(&to_json(ev, i + 1)).unwrap());
        body.push('\n');
        if i == 20 {
            body.push('\n'); // a blank line is ignored
        }
    }
    let r = gw.post("application/x-ndjson", body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["accepted"], 50, "{}", r.text);
    assert_topic_holds_exactly(&gw.topic, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_invalid_event_gets_400_naming_the_field_and_nothing_is_produced() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|_| {}).await;
    let good = || to_json(&event(&gw.topic, 1), 0);
    let start = good()["interval_start"].as_i64().unwrap();
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("negative bytes_out", Box::new(|v| v["bytes_out"] = json!(-1)), "bytes_out"),
        ("interval_end before interval_start", Box::new(move |v| v["interval_end"] = json!(start - 1)), "interval_end"),
        ("tracking_id of 129 chars", Box::new(|v| v["tracking_id"] = json!("t".repeat(129))), "tracking_id"),
        ("custom_viewer_data of 1025 chars", Box::new(|v| v["custom_viewer_data"] = json!("ü".repeat(1025))), "custom_viewer_data"),
        ("empty viewer_id", Box::new(|v| v["viewer_id"] = json!("")), "viewer_id"),
        (
            "interval_end more than 5 minutes in the future",
            Box::new(|v| {
                v["interval_start"] = json!(now_ms());
                v["interval_end"] = json!(now_ms() + 6 * 60_000);
            }),
            "interval_end",
        ),
        ("unknown field", Box::new(|v| v["bogus_field"] = json!(1)), "bogus_field"),
        ("missing field", Box::new(|v| drop(v.as_object_mut().unwrap().remove("seq"))), "seq"),
        ("wrong type", Box::new(|v| v["bytes_out"] = json!("lots")), "bytes_out"),
        ("bad time text", Box::new(|v| v["interval_start"] = json!("yesterday")), "interval_start"),
        ("unknown protocol", Box::new(|v| v["protocol"] = json!("HTTP")), "protocol"),
    ];
    for (name, edit, field) in &cases {
        let mut v = good();
        edit(&mut v);
        for ndjson in [false, true] {
            let r = if ndjson {
                gw.post("application/x-ndjson", format!("{v}\n")).await
            } else {
                gw.post_array(std::slice::from_ref(&v)).await
            };
            assert_eq!(r.status, 400, "{name} (ndjson {ndjson}): {}", r.text);
            assert_eq!(r.json["status"], "error", "{name}: {}", r.text);
            assert!(r.json["message"].as_str().unwrap_or("").contains("nothing was produced"), "{name}: {}", r.text);
            let errs = error_list(&r);
            assert_eq!(errs.len(), 1, "{name}: one problem: {}", r.text);
            assert_eq!((errs[0].0, errs[0].1.as_str()), (Some(0), *field), "{name}: {}", r.text);
            assert!(!errs[0].2.is_empty(), "{name}: a reason is given");
        }
    }
    assert_topic_empty(&gw.topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_and_wrong_content_type_are_refused_and_nothing_is_produced() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|_| {}).await;
    let good = to_json(&event(&gw.topic, 0), 0);

    let r = gw.post("application/json", format!("[{good}, {{\"viewer_id\": ")).await;
    assert_eq!(r.status, 400, "bad JSON: {}", r.text);
    let errs = error_list(&r);
    assert_eq!(errs.len(), 1, "{}", r.text);
    assert_eq!(errs[0].0, None, "the body as a whole: index null: {}", r.text);
    assert!(errs[0].2.contains("bad JSON"), "{}", r.text);

    let r = gw.post("application/json", good.to_string()).await;
    assert_eq!(r.status, 400, "an object, not an array: {}", r.text);
    let errs = error_list(&r);
    assert_eq!(errs[0].0, None, "{}", r.text);
    assert!(errs[0].2.contains("JSON array"), "{}", r.text);

    let r = gw.post("application/json", "").await;
    assert_eq!(r.status, 400, "empty body: {}", r.text);

    let r = gw.post("application/x-ndjson", format!("{good}\n{{not json\n{good}\n")).await;
    assert_eq!(r.status, 400, "bad NDJSON line: {}", r.text);
    let errs = error_list(&r);
    assert_eq!((errs.len(), errs[0].0), (1, Some(1)), "{}", r.text);

    for ctype in ["text/plain", "application/x-www-form-urlencoded", "application/avro"] {
        let r = gw.post(ctype, serde_json::to_vec(&[&good]).unwrap()).await;
        assert_eq!(r.status, 415, "{ctype}: {}", r.text);
        assert!(r.json["message"].as_str().unwrap_or("").contains("Content-Type"), "{}", r.text);
    }
    let r = gw.request(gw.client.post(format!("{}/v1/usage", gw.url)).bearer_auth(KEY).body(serde_json::to_vec(&[&good]).unwrap())).await;
    assert_eq!(r.status, 415, "no Content-Type: {}", r.text);

    assert_topic_empty(&gw.topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_invalid_event_rejects_the_whole_batch() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|_| {}).await;
    let evs = batch(&gw, 20);

    // array: event 13 breaks a contract rule
    let mut body: Vec<Value> = evs.iter().enumerate().map(|(i, e)| to_json(e, i)).collect();
    body[13]["bytes_out"] = json!(-5);
    let r = gw.post_array(&body).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let errs = error_list(&r);
    assert_eq!(errs.len(), 1, "only the bad event is listed: {}", r.text);
    assert_eq!((errs[0].0, errs[0].1.as_str()), (Some(13), "bytes_out"), "{}", r.text);
    assert!(errs[0].2.contains("-5"), "{}", r.text);

    // NDJSON: line 4 lacks a field
    let mut nd = String::new();
    for (i, e) in evs.iter().enumerate() {
        let mut v = to_json(e, i);
        if i == 4 {
            v.as_object_mut().unwrap().remove("account_id");
        }
        nd.push_str(&format!("{v}\n"));
    }
    let r = gw.post("application/x-ndjson", nd).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let errs = error_list(&r);
    assert_eq!(errs.len(), 1, "{}", r.text);
    assert_eq!((errs[0].0, errs[0].1.as_str()), (Some(4), "account_id"), "{}", r.text);

    // every problem of a request is listed, whatever its kind
    let mut body: Vec<Value> = evs.iter().enumerate().map(|(i, e)| to_json(e, i)).collect();
    body[2]["bogus"] = json!(true);
    body[9]["tracking_id"] = json!("x".repeat(200));
    body[17]["viewer_id"] = json!("");
    let r = gw.post_array(&body).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let listed: Vec<(Option<u64>, String)> = error_list(&r).into_iter().map(|(i, f, _)| (i, f)).collect();
    assert_eq!(
        listed,
        vec![(Some(2), "bogus".to_string()), (Some(9), "tracking_id".to_string()), (Some(17), "viewer_id".to_string())],
        "{}",
        r.text
    );

    assert_topic_empty(&gw.topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_bearer_key_get_401_and_produce_nothing() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|_| {}).await;
    let body = serde_json::to_vec(&[to_json(&event(&gw.topic, 0), 0)]).unwrap();
    let url = format!("{}/v1/usage", gw.url);
    let basic = format!("Basic {}", base64_encode(format!("user:{KEY}").as_bytes()));
    let wrong_same_length: String = KEY.chars().rev().collect();
    let auths: Vec<(&str, Option<String>)> = vec![
        ("no Authorization", None),
        ("wrong key", Some("Bearer wrong-key-0123456789".into())),
        ("wrong key of the same length", Some(format!("Bearer {wrong_same_length}"))),
        ("key with a prefix missing", Some(format!("Bearer {}", &KEY[1..]))),
        ("Basic scheme", Some(basic)),
        ("Basic scheme with the key", Some(format!("Basic {KEY}"))),
        ("bare key", Some(KEY.to_string())),
        ("empty bearer", Some("Bearer ".into())),
    ];
    for (name, auth) in &auths {
        let mut rb = gw.client.post(&url).header("content-type", "application/json").body(body.clone());
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        let r = gw.request(rb).await;
        assert_eq!(r.status, 401, "{name}: {}", r.text);
        let www = r.headers.get("www-authenticate").unwrap_or_else(|| panic!("{name}: WWW-Authenticate missing"));
        assert!(www.to_str().unwrap().starts_with("Bearer"), "{name}: {www:?}");
        assert_eq!(r.json["status"], "error", "{name}: {}", r.text);
    }
    assert_topic_empty(&gw.topic).await;
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_and_too_many_events_get_413_and_produce_nothing() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|c| {
        c.max_body_bytes = 4096;
        c.max_events_per_request = 5;
    })
    .await;
    // six small events (well under 4096 bytes): too many
    let six: Vec<Value> = (0..6).map(|i| to_json(&event(&gw.topic, i), 0)).collect();
    let bytes = serde_json::to_vec(&six).unwrap();
    assert!(bytes.len() < 4096);
    let r = gw.post("application/json", bytes).await;
    assert_eq!(r.status, 413, "6 events > 5: {}", r.text);
    assert!(r.json["message"].as_str().unwrap_or("").contains("at most 5"), "{}", r.text);
    let nd: String = six.iter().map(|v| format!("{v}\n")).collect();
    let r = gw.post("application/x-ndjson", nd).await;
    assert_eq!(r.status, 413, "6 NDJSON events > 5: {}", r.text);

    // four events with long custom_viewer_data: over 4096 bytes
    let big: Vec<Value> = (0..4)
        .map(|i| {
            let mut e = event(&gw.topic, 10 + i);
            e.custom_viewer_data = Some("d".repeat(1000).into());
            to_json(&e, 0)
        })
        .collect();
    let bytes = serde_json::to_vec(&big).unwrap();
    assert!(bytes.len() > 4096);
    let r = gw.post("application/json", bytes).await;
    assert_eq!(r.status, 413, "body of more than 4096 bytes: {}", r.text);
    assert_topic_empty(&gw.topic).await;

    // at the limits is fine
    let five: Vec<OwnedViewerUsage> = (20..25).map(|i| event(&gw.topic, i)).collect();
    let r = gw.post_array(&five.iter().map(|e| to_json(e, 1)).collect::<Vec<_>>()).await;
    assert_eq!(r.status, 200, "5 events: {}", r.text);
    assert_topic_holds_exactly(&gw.topic, &five).await;
}

/// `name{labels} value` lines of a Prometheus text page.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_accepted_and_rejected_events_and_healthz_is_ok() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|c| c.max_events_per_request = 10).await;
    let h = gw.get("/healthz").await;
    assert_eq!(h.status, 200, "{}", h.text);
    assert_eq!(h.json["kafka"], "reachable", "{}", h.text);

    let evs: Vec<Value> = (0..7).map(|i| to_json(&event(&gw.topic, i), i as usize)).collect();
    assert_eq!(gw.post_array(&evs).await.status, 200);
    let more: Vec<Value> = (7..10).map(|i| to_json(&event(&gw.topic, i), 0)).collect();
    assert_eq!(gw.post("application/x-ndjson", more.iter().map(|v| format!("{v}\n")).collect::<String>()).await.status, 200);
    let mut bad = to_json(&event(&gw.topic, 20), 0);
    bad["bytes_out"] = json!(-1);
    assert_eq!(gw.post_array(&[bad]).await.status, 400);
    let mut bad = to_json(&event(&gw.topic, 21), 0);
    bad["nope"] = json!(1);
    assert_eq!(gw.post_array(&[bad]).await.status, 400);
    assert_eq!(gw.post("application/json", "{]").await.status, 400);
    assert_eq!(gw.post("text/plain", "[]").await.status, 415);
    let eleven: Vec<Value> = (30..41).map(|i| to_json(&event(&gw.topic, i), 0)).collect();
    assert_eq!(gw.post_array(&eleven).await.status, 413);

    let m = gw.get("/metrics").await;
    assert_eq!(m.status, 200);
    let mm = parse_metrics(&m.text);
    let val = |k: &str| mm.get(k).copied().unwrap_or_else(|| panic!("{k} missing from /metrics:\n{}", m.text));
    assert_eq!(val("ingest_events_accepted_total"), 10.0);
    assert_eq!(val("ingest_events_rejected_total{reason=\"bytes_out\"}"), 1.0);
    // metric labels come from a fixed set, never from request text
    assert_eq!(val("ingest_events_rejected_total{reason=\"unknown_field\"}"), 1.0);
    assert!(!m.text.contains("nope"), "{}", m.text);
    assert_eq!(val("ingest_events_rejected_total{reason=\"bad_json\"}"), 1.0);
    assert_eq!(val("ingest_events_rejected_total{reason=\"content_type\"}"), 1.0);
    assert_eq!(val("ingest_events_rejected_total{reason=\"too_many_events\"}"), 11.0);
    assert_eq!(val("ingest_requests_total{status=\"200\"}"), 2.0);
    assert_eq!(val("ingest_requests_total{status=\"400\"}"), 3.0);
    assert_eq!(val("ingest_inflight_events"), 0.0);
    let h = gw.get("/healthz").await;
    assert_eq!(h.status, 200, "{}", h.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulation_through_the_gateway_recounts_to_its_expected_totals() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|_| {}).await;
    let cfg = SimConfig {
        seed: 77,
        run_id: gw.topic.clone(),
        partners: 3,
        viewers_per_partner: 6,
        untracked_viewers: 3,
        start_ms: now_ms() / 1000 * 1000 - 3 * 3_600_000,
        duration_secs: 3600,
        session_secs: (60, 900),
        duplicates: 0.05,
        invalid: 0.01,
        ..Default::default()
    };
    let target = simulator::sim_run::Target::Http { url: gw.url.clone(), api_key: KEY.to_string() };
    let opts = simulator::sim_run::RunOptions { batch: 250, ..Default::default() };
    let started = Instant::now();
    let exp = simulator::sim_run::run(&cfg, &target, &opts).await.expect("simulation sent through the gateway");
    eprintln!("simulation: {exp:?} in {:?}", started.elapsed()); // totals printed for diagnosis
    assert!(exp.duplicates_sent > 0 && exp.invalid_sent > 0, "faults present: {} dup, {} invalid", exp.duplicates_sent, exp.invalid_sent);

    let on_topic = (exp.unique_valid_events + exp.duplicates_sent) as usize;
    let msgs = read_topic(&gw.topic, on_topic, Duration::from_secs(2), Duration::from_secs(120)).await;
    assert_eq!(msgs.len(), on_topic, "every valid message and every re-send, no invalid one");
    let mut seen = HashSet::new();
    let mut by_tracking: BTreeMap<String, Totals> = BTreeMap::new();
    for ev in decode_all(&msgs) {
        assert!(!ev.viewer_id.contains("-invalid-"), "invalid event on the topic: {ev:?}");
        assert!(schemas::validate(&ev, None).is_ok(), "{ev:?}");
        if seen.insert((ev.viewer_id.to_string(), ev.seq)) {
            let t = by_tracking.entry(ev.tracking_id_or_empty().to_string()).or_default();
            t.bytes_out += ev.bytes_out as u64;
            t.bytes_in += ev.bytes_in as u64;
            t.events += 1;
        }
    }
    assert_eq!(seen.len() as u64, exp.unique_valid_events, "distinct identities on the topic");
    assert_eq!(by_tracking, exp.by_tracking);
}

/// Hostile bodies get small, bounded answers and leave bounded metrics:
/// a 16 MiB body of empty objects, thousands of invalid events, thousands
/// of distinct unknown field names, a 2 MB id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_get_bounded_answers_and_bounded_metrics() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|c| c.max_body_bytes = 16 * 1024 * 1024).await;
    // 16 MiB of `{}` lines: refused as soon as event 10,001 is seen
    let flood = "{}\n".repeat(16 * 1024 * 1024 / 3 - 16);
    let r = gw.post("application/x-ndjson", flood).await;
    assert_eq!(r.status, 413, "{}", &r.text[..r.text.len().min(500)]);
    assert!(r.text.len() < 1024, "a short answer: {} bytes", r.text.len());
    // 9,000 empty objects (under the event limit): every one is wrong, 100 are listed, all are counted
    let empties = format!("[{}]", vec!["{}"; 9_000].join(","));
    let r = gw.post("application/json", empties).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json["errors"].as_array().map(Vec::len), Some(100), "the first 100 problems listed");
    assert_eq!(r.json["error_count"], 9_000, "one problem per event (the first missing field)");
    assert!(r.text.len() < 64 * 1024, "{} bytes", r.text.len());
    // 2,000 distinct unknown field names
    let odd: Vec<Value> = (0..2_000)
        .map(|i| {
            let mut v = to_json(&event(&gw.topic, i), 0);
            v[format!("field_{i}")] = json!(1);
            v
        })
        .collect();
    assert_eq!(gw.post_array(&odd).await.status, 400);
    // a 2 MB viewer id is a 400 naming the field, not a 503 to retry forever
    let mut long = to_json(&event(&gw.topic, 5_000), 0);
    long["viewer_id"] = json!("v".repeat(2 * 1024 * 1024));
    let r = gw.post_array(&[long]).await;
    assert_eq!(r.status, 400, "{}", &r.text[..r.text.len().min(500)]);
    assert_eq!(r.json["errors"][0]["field"], "viewer_id");
    assert!(r.text.len() < 4096, "the id is not echoed: {} bytes", r.text.len());
    // control and bidi characters in ids
    for bad in ["a\u{0}b", "partner\u{202E}evil"] {
        let mut v = to_json(&event(&gw.topic, 6_000), 0);
        v["tracking_id"] = json!(bad);
        assert_eq!(gw.post_array(&[v]).await.status, 400, "{bad:?}");
    }
    let m = gw.get("/metrics").await;
    let series = m.text.lines().filter(|l| l.starts_with("ingest_events_rejected_total{")).count();
    assert!(series <= ingest::json::FIELDS.len() + 8, "{series} series:\n{}", m.text);
    assert!(!m.text.contains("field_"), "no label from request text");
    assert_eq!(topic_len(&gw.topic).await, 0, "nothing was produced");
}

/// A record the broker refuses (here, beyond the producer's own message size
/// limit) is that request's 422; the broker is not marked down, and the next
/// request is taken at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_record_is_the_requests_4xx_and_never_marks_the_broker_down() {
    let _stack = e2e::turns::shared().await;
    let gw = gateway(|c| {
        c.kafka.properties.insert("message.max.bytes".into(), "1000".into());
        c.kafka.properties.insert("batch.size".into(), "1000".into());
    })
    .await;
    let mut big = to_json(&event(&gw.topic, 0), 0);
    big["custom_viewer_data"] = json!("x".repeat(1000));
    let r = gw.post_array(&[big]).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let small = to_json(&event(&gw.topic, 1), 0);
    let r = gw.post_array(&[small]).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(gw.get("/readyz").await.status, 200);
}

/// An upload that declares `len` bytes, sends `sent` of them and stalls
/// (a slow or hostile client holding its share of the body budget).
async fn stalled_upload(url: &str, key: &str, len: usize, sent: usize) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /v1/usage HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b' '; sent]).await.unwrap();
    s.flush().await.unwrap();
    s
}

/// Bytes of bodies the gateway holds, from its metrics.
async fn held(gw: &Gateway) -> f64 {
    let m = gw.get("/metrics").await;
    m.text.lines().find_map(|l| l.strip_prefix("ingest_body_bytes_held ")).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
}

/// The bodies of all requests share a budget: uploads that hold it make the
/// next request wait outside (`503`, or `429` for a key past its share, with
/// `Retry-After`, its body unread), and once they end a valid batch is
/// accepted again. The budget's counts are back to zero afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bodies_of_all_requests_share_a_memory_budget() {
    let _stack = e2e::turns::shared().await;
    const MIB: usize = 1024 * 1024;
    let other = "gw-test-key-other-0123456789abcd";
    let gw = gateway(|c| {
        c.api_keys.push(other.to_string());
        c.max_body_bytes = 2 * MIB;
        c.max_bodies_bytes_per_key = 4 * MIB;
        c.max_bodies_bytes = 6 * MIB;
    })
    .await;
    // KEY holds its whole share with two stalled 2 MiB uploads
    let a = stalled_upload(&gw.url, KEY, 2 * MIB, 1000).await;
    let b = stalled_upload(&gw.url, KEY, 2 * MIB, 1000).await;
    assert!(wait_until(Duration::from_secs(10), || async { held(&gw).await >= (4 * MIB) as f64 }).await, "the two uploads hold 4 MiB");
    let sent = batch(&gw, 20);
    let body: Vec<Value> = sent.iter().enumerate().map(|(i, ev)| to_json(ev, i)).collect();
    let r = gw.post_array(&body).await;
    assert_eq!(r.status, 429, "KEY's share is spent: {}", r.text);
    assert_eq!(r.headers.get("retry-after").map(|v| v.to_str().unwrap()), Some("1"));
    // the other key still has room; then the total is spent for everyone
    let c = stalled_upload(&gw.url, other, 2 * MIB, 1000).await;
    assert!(wait_until(Duration::from_secs(10), || async { held(&gw).await >= (6 * MIB) as f64 }).await, "6 MiB held in all");
    let rb = gw.client.post(format!("{}/v1/usage", gw.url)).bearer_auth(other).header("content-type", "application/json").body("[]");
    let r = gw.request(rb).await;
    assert_eq!(r.status, 503, "the total is spent: {}", r.text);
    assert!(r.headers.contains_key("retry-after"));
    assert_topic_empty(&gw.topic).await;
    // the uploads end (their clients go away): the budget is free again
    drop((a, b, c));
    assert!(wait_until(Duration::from_secs(10), || async { held(&gw).await == 0.0 }).await, "everything given back");
    let r = gw.post_array(&body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_topic_holds_exactly(&gw.topic, &sent).await;
    let m = gw.get("/metrics").await;
    assert!(m.text.contains("ingest_body_budget_refused_total{scope=\"key\"} 1"), "{}", m.text);
    assert!(m.text.contains("ingest_body_budget_refused_total{scope=\"total\"} 1"), "{}", m.text);
}
