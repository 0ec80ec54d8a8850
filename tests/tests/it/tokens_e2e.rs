//! The syndication token workflow end to end, in-process (no stack needed):
//! the owner creates a publish token and one tracked master Subscribe token
//! per partner through the HTTP API; each partner self-signs viewer JWTs
//! with `customViewerData`; every viewer is admitted through
//! `/api/token/verify` and attributed exactly as its partner's master token
//! dictates, and the attribution makes valid usage events for the gateway.
//! A partner cannot bill its viewers to another partner's channel.

use api::config::ApiConfig;
use api::store::Store;
use api::tokens::sign::{sign, SignRequest};
use e2e::serve_router;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

const SECRET: &str = "tokens-e2e-secret-0123456789abcdef";
const PARTNERS: [&str; 3] = ["acme-web", "globex-tv", "initech-app"];
const VIEWERS_PER_PARTNER: usize = 4;

struct Api {
    url: String,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
    dir: std::path::PathBuf,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Api {
    async fn start() -> Api {
        let dir = std::env::temp_dir().join(e2e::unique("tokens_e2e"));
        let cfg = ApiConfig { api_secrets: vec![SECRET.into()], store_path: dir.join("tokens.db"), ..Default::default() };
        let store = Arc::new(Store::open(&cfg.store_path).expect("open token store"));
        let app = api::http::router(&cfg, store).expect("api router");
        let (url, server) = serve_router(app).await;
        Api { url, client: reqwest::Client::new(), server, dir }
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self.client.post(format!("{}{path}", self.url)).bearer_auth(SECRET).json(&body).send().await.expect("request");
        (r.status().as_u16(), r.json().await.expect("json reply"))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(format!("{}{path}", self.url)).bearer_auth(SECRET).send().await.expect("request");
        (r.status().as_u16(), r.json().await.expect("json reply"))
    }

    async fn verify(&self, token: &str, stream: &str, cluster: &str) -> (u16, Value) {
        self.post("/api/token/verify", json!({"token": token, "streamName": stream, "cluster": cluster})).await
    }
}

struct Master {
    id: i64,
    token: String,
}

#[tokio::test]
async fn partners_viewers_are_attributed_by_their_master_token() {
    let _stack = e2e::turns::shared().await;
    let api = Api::start().await;
    let now = chrono::Utc::now();

    // The owner: a publish token whose viewers need auth, and one master token per partner.
    let (st, p) =
        api.post("/api/publish_token", json!({"label": "owner", "streams": [{"streamName": "live"}], "subscribeRequiresAuth": true})).await;
    assert_eq!(st, 200, "{p}");
    assert_eq!(p["data"]["subscribeRequiresAuth"], true);
    let mut masters = BTreeMap::new();
    for partner in PARTNERS {
        let (st, r) = api
            .post(
                "/api/subscribe_token",
                json!({
                    "label": format!("syndication {partner}"),
                    "streams": [{"streamName": "live", "isRegex": false}, {"streamName": "live-[a-z]+", "isRegex": true}],
                    "tracking": {"trackingId": partner},
                    "originCluster": "Auto",
                    "expires": 86_400
                }),
            )
            .await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(r["data"]["tracking"]["trackingId"], partner);
        let m = Master { id: r["data"]["id"].as_i64().unwrap(), token: r["data"]["token"].as_str().unwrap().to_string() };
        masters.insert(partner, m);
    }

    // Every partner's viewers, self-signed, on the partner's own streams.
    let mut events = Vec::new();
    for (pi, partner) in PARTNERS.iter().enumerate() {
        let m = &masters[partner];
        for v in 0..VIEWERS_PER_PARTNER {
            let stream = if v % 2 == 0 { "live" } else { "live-backup" };
            let custom = json!({"partner": partner, "user": format!("u{v}")}).to_string();
            let jwt = sign(
                &m.token,
                &SignRequest {
                    token_id: m.id,
                    stream_name: stream.into(),
                    custom_viewer_data: Some(custom.clone()),
                    expires_in_secs: 3600,
                    ..Default::default()
                },
                now,
            )
            .expect("sign");
            let (st, r) = api.verify(&jwt, stream, "fra-1").await;
            assert_eq!(st, 200, "{partner} viewer {v}: {r}");
            assert_eq!(
                (&r["data"]["tokenId"], &r["data"]["trackingId"], &r["data"]["customViewerData"]),
                (&json!(m.id), &json!(partner), &json!(custom))
            );
            // What the media server would report for this viewer.
            events.push(json!({
                "viewer_id": format!("v-{pi}-{v}"), "seq": 0,
                "interval_start": now.timestamp_millis() - 10_000, "interval_end": now.timestamp_millis(),
                "bytes_out": 1_250_000, "bytes_in": 2_100, "account_id": "acct-owner", "stream_name": stream,
                "cluster": "fra-1", "server_id": "fra-1-media-1", "protocol": "WHEP",
                "token_id": r["data"]["tokenId"], "tracking_id": r["data"]["trackingId"],
                "custom_viewer_data": r["data"]["customViewerData"],
            }));
        }
        // A viewer using the master token directly: the partner's channel, no viewer data.
        let (st, r) = api.verify(&m.token, "live", "ams-1").await;
        assert_eq!(st, 200, "{r}");
        assert_eq!(
            (&r["data"]["tokenId"], &r["data"]["trackingId"], &r["data"]["customViewerData"]),
            (&json!(m.id), &json!(partner), &Value::Null)
        );
    }

    // The attributions are valid usage events for the gateway, per channel.
    let body = serde_json::to_vec(&events).unwrap();
    let parsed = ingest::json::parse_body(&body, false, &schemas::Rules { now_ms: Some(now.timestamp_millis()), ..Default::default() })
        .unwrap_or_else(|e| panic!("attribution does not fit the usage contract: {e:?}"));
    let mut per_channel: BTreeMap<String, usize> = BTreeMap::new();
    for ev in &parsed {
        let tracking = ev.tracking_id.as_deref().expect("tracked").to_string();
        assert_eq!(ev.token_id, Some(masters[tracking.as_str()].id));
        let cvd: Value = serde_json::from_str(ev.custom_viewer_data.as_deref().expect("viewer data")).unwrap();
        assert_eq!(cvd["partner"], tracking.as_str());
        *per_channel.entry(tracking).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = PARTNERS.iter().map(|p| (p.to_string(), VIEWERS_PER_PARTNER)).collect();
    assert_eq!(per_channel, expected);

    // globex tries to bill its viewer to acme's channel: refused.
    let globex = &masters["globex-tv"];
    let acme = &masters["acme-web"];
    let stolen = SignRequest {
        token_id: globex.id,
        stream_name: "live".into(),
        tracking_id: Some("acme-web".into()),
        expires_in_secs: 600,
        ..Default::default()
    };
    let (st, r) = api.verify(&sign(&globex.token, &stolen, now).unwrap(), "live", "fra-1").await;
    assert_eq!((st, r["data"]["code"].as_str()), (403, Some("tracking_override")), "{r}");
    // ... and naming acme's token id without acme's master token: bad signature.
    let spoofed = SignRequest { token_id: acme.id, ..stolen };
    let (st, r) = api.verify(&sign(&globex.token, &spoofed, now).unwrap(), "live", "fra-1").await;
    assert_eq!((st, r["data"]["code"].as_str()), (403, Some("bad_signature")), "{r}");
    // A viewer token outliving the master token is admitted until the master token expires (the platform's cap).
    let long = SignRequest { token_id: acme.id, stream_name: "live".into(), expires_in_secs: 2 * 86_400, ..Default::default() };
    let (st, r) = api.verify(&sign(&acme.token, &long, now).unwrap(), "live", "fra-1").await;
    assert_eq!(st, 200, "{r}");
    let parent_expiry = api.get(&format!("/api/subscribe_token/{}", acme.id)).await.1["data"]["expiresOn"].clone();
    assert_eq!(r["data"]["expiresAt"], parent_expiry, "{r}");
    // Revoking a partner's master token stops its viewers at once.
    let del = api.client.delete(format!("{}/api/subscribe_token/{}", api.url, acme.id)).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(del.status().as_u16(), 200);
    let ok_before = SignRequest { token_id: acme.id, stream_name: "live".into(), expires_in_secs: 600, ..Default::default() };
    let (st, r) = api.verify(&sign(&acme.token, &ok_before, now).unwrap(), "live", "fra-1").await;
    assert_eq!((st, r["data"]["code"].as_str()), (403, Some("parent_not_found")), "{r}");
    let (st, r) = api.verify(&acme.token, "live", "fra-1").await;
    assert_eq!((st, r["data"]["code"].as_str()), (403, Some("unknown_token")), "{r}");
}
