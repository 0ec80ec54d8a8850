//! Kafka stopped under the gateway: requests are refused with 503 and
//! Retry-After in bounded time (never a false 200), /healthz says so, and
//! after Kafka is back every acknowledged event is on the topic. It holds the
//! stack alone (`e2e::turns::exclusive`): it stops the shared broker.

use e2e::*;
use ingest::http::IngestConfig;
use schemas::{Codec, OwnedViewerUsage, ViewerUsage};
use serde_json::Value;
use std::collections::HashSet;
use std::time::{Duration, Instant};

const KEY: &str = "down-test-key-0123456789abcdefgh";
const PARTITIONS: i32 = 2;

fn event(viewer: &str, seq: i64) -> OwnedViewerUsage {
    let start = chrono::Utc::now().timestamp_millis() / 1000 * 1000 - 600_000 + seq * 10_000;
    ViewerUsage {
        bytes_in: 5_000,
        account_id: "acct-down".into(),
        stream_name: "live-0".into(),
        server_id: "srv-1".into(),
        tracking_id: Some("acme-web".into()),
        ..usage_event(viewer, seq, start, 500_000 + seq)
    }
}

fn batch(viewer: &str, n: i64) -> Vec<OwnedViewerUsage> {
    (0..n).map(|s| event(viewer, s)).collect()
}

fn body(evs: &[OwnedViewerUsage]) -> Vec<Value> {
    evs.iter().map(|e| simulator::sim_run::to_json(e)).collect()
}

struct Reply {
    status: u16,
    retry_after: Option<String>,
    text: String,
}

async fn post(client: &reqwest::Client, url: &str, evs: &[OwnedViewerUsage]) -> Reply {
    let r = client.post(format!("{url}/v1/usage")).bearer_auth(KEY).json(&body(evs)).send().await.expect("gateway answers");
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
    Reply { status, retry_after, text: r.text().await.unwrap_or_default() }
}

/// Read the topic from the beginning until `want` messages arrived and then
/// nothing more for 3 s (or 60 s passed); every message keyed by its viewer_id.
async fn read_topic(topic: &str, want: usize) -> Vec<OwnedViewerUsage> {
    let codec = Codec::new();
    e2e::read_topic(topic, PARTITIONS, want, Duration::from_secs(3), Duration::from_secs(60))
        .await
        .into_iter()
        .map(|(key, payload)| {
            let ev = codec.decode(&payload).expect("decodable").into_owned();
            assert_eq!(key, ev.viewer_id, "keyed by viewer_id");
            ev
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_down_gives_503_with_retry_after_and_loses_nothing_acknowledged() {
    let _stack = e2e::turns::exclusive().await;
    let topic = unique("ingest_down");
    create_topic(&topic, PARTITIONS).await;
    let mut cfg = IngestConfig::default();
    cfg.kafka.brokers = brokers();
    cfg.kafka.topic = topic.clone();
    cfg.api_keys = vec![KEY.to_string()];
    cfg.delivery_timeout_ms = 3000;
    // The local broker, tansu 0.6.0, cannot take librdkafka's idempotent
    // producer after a delivery timeout: librdkafka then bumps the producer
    // epoch locally, and tansu's sqlite storage panics on the first produce
    // with the unknown epoch (tansu-storage lite.rs:503 "more or less than one
    // row"), after which the broker accepts connections but answers nothing.
    // Apache Kafka (docker-compose) accepts the bump. So here the gateway runs
    // with idempotence off; what is asserted does not depend on it (re-sends
    // are safe either way: duplicates are dropped downstream).
    cfg.kafka.properties.insert("enable.idempotence".into(), "false".into());
    let app = ingest::http::router(cfg).expect("router");
    let (url, server) = serve_router(app).await;
    let client = reqwest::Client::new();
    let mut acked: Vec<OwnedViewerUsage> = Vec::new();

    let before = batch(&format!("{topic}-before"), 10);
    let r = post(&client, &url, &before).await;
    assert_eq!(r.status, 200, "{}", r.text);
    acked.extend(before);

    let last_refused;
    {
        let _guard = StackOnDrop("start-kafka");
        assert!(stack("stop-kafka"), "Kafka stopped");
        let mut refused = Vec::new();
        for k in 0..3 {
            let evs = batch(&format!("{topic}-down{k}"), 5);
            let t = Instant::now();
            let r = post(&client, &url, &evs).await;
            let took = t.elapsed();
            eprintln!("batch {k} with Kafka down: {} in {took:?}", r.status);
            assert_eq!(r.status, 503, "batch {k} with Kafka down: {}", r.text);
            let secs: u32 = r.retry_after.as_deref().expect("Retry-After").parse().expect("Retry-After in seconds");
            assert!(secs >= 1, "Retry-After {secs}");
            assert!(took < Duration::from_secs(15), "batch {k} answered in {took:?}");
            refused.push(evs);
        }
        let t = Instant::now();
        let h = client.get(format!("{url}/healthz")).send().await.unwrap();
        assert_eq!(h.status().as_u16(), 503, "/healthz with Kafka down");
        assert!(t.elapsed() < Duration::from_secs(15), "/healthz answered in {:?}", t.elapsed());
        let r = client.get(format!("{url}/readyz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 503, "/readyz with Kafka down");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["ready"], false);
        assert!(body["reasons"].to_string().contains("kafka unreachable"), "{body}");

        assert!(stack("start-kafka"), "Kafka started");
        // the client re-sends its last refused batch until it is accepted
        let evs = refused.pop().unwrap();
        let t = Instant::now();
        loop {
            let r = post(&client, &url, &evs).await;
            if r.status == 200 {
                break;
            }
            assert!(matches!(r.status, 503 | 429), "while Kafka comes back: {} {}", r.status, r.text);
            assert!(r.retry_after.is_some(), "{} without Retry-After", r.status);
            assert!(t.elapsed() < Duration::from_secs(60), "no 200 within 60 s of Kafka's restart: {}", r.text);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!("accepted again {:?} after Kafka's restart", t.elapsed());
        acked.extend(evs.iter().cloned());
        last_refused = evs;
    }
    let after = batch(&format!("{topic}-after"), 10);
    let r = post(&client, &url, &after).await;
    assert_eq!(r.status, 200, "{}", r.text);
    acked.extend(after);
    assert_eq!(client.get(format!("{url}/healthz")).send().await.unwrap().status().as_u16(), 200);
    assert_eq!(client.get(format!("{url}/readyz")).send().await.unwrap().status().as_u16(), 200);

    let on_topic: HashSet<OwnedViewerUsage> = read_topic(&topic, acked.len()).await.into_iter().collect();
    let lost: Vec<_> = acked.iter().filter(|e| !on_topic.contains(*e)).collect();
    assert!(lost.is_empty(), "acknowledged events missing from the topic: {lost:#?}");
    assert!(last_refused.iter().all(|e| on_topic.contains(e)));
    server.abort();
}
