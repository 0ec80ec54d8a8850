//! The simulator's side of the token workflow: the content owner creates one
//! master Subscribe token per partner (with its tracking id) and one
//! untracked token for its own player through the token service; every
//! simulated viewer gets a self-signed JWT from its partner's master token
//! (with its `customViewerData`), the "media server" has it verified, and the
//! viewer's usage carries the attribution the service returned. A viewer
//! whose token is refused gets no usage.

use crate::simulate::{Session, SimConfig};
use ingest::IngestError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Where the token service is, and how many viewers present a bad token.
#[derive(Debug, Clone)]
pub struct TokenApi {
    /// Base URL, e.g. `http://127.0.0.1:8090`.
    pub url: String,
    /// API secret (bearer).
    pub secret: String,
    /// Fraction of viewers whose token is tampered with (refused: no usage).
    pub invalid_fraction: f64,
}

/// What the admission step did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Admission {
    /// Master token id per tracking id (`""`: the owner's untracked token).
    pub master_tokens: BTreeMap<String, i64>,
    pub(crate) admitted: usize,
    /// viewer_id -> refusal code.
    pub refused: BTreeMap<String, String>,
}

async fn call(client: &reqwest::Client, api: &TokenApi, path: &str, body: Value) -> Result<(u16, Value), IngestError> {
    let r = client
        .post(format!("{}{path}", api.url.trim_end_matches('/')))
        .bearer_auth(&api.secret)
        .json(&body)
        .send()
        .await
        .map_err(|e| IngestError::Http(format!("token service: {e}")))?;
    let status = r.status().as_u16();
    let v = r.json().await.map_err(|e| IngestError::Http(format!("token service reply: {e}")))?;
    Ok((status, v))
}

/// Create the master tokens, sign and verify a viewer token per session, and
/// return the admitted sessions with the attribution the service gave them.
pub(crate) async fn admit(cfg: &SimConfig, sessions: Vec<Session>, api: &TokenApi) -> Result<(Vec<Session>, Admission), IngestError> {
    let client = reqwest::Client::new();
    let mut adm = Admission::default();
    let mut masters: BTreeMap<String, (i64, String)> = BTreeMap::new();
    let mut keys: Vec<String> = cfg.tracking_ids();
    keys.push(String::new());
    for t in keys {
        let mut body = json!({
            "label": if t.is_empty() { format!("{} own player", cfg.account_id) } else { format!("master {t}") },
            "streams": [{"streamName": "live-.*", "isRegex": true}],
            "originCluster": "Auto",
            "expires": 400 * 86400,
        });
        if !t.is_empty() {
            body["tracking"] = json!({"trackingId": t});
        }
        let (status, v) = call(&client, api, "/api/subscribe_token", body).await?;
        let (Some(id), Some(token)) = (v["data"]["id"].as_i64(), v["data"]["token"].as_str()) else {
            return Err(IngestError::Http(format!("creating the master token for {t:?}: {status} {v}")));
        };
        adm.master_tokens.insert(t.clone(), id);
        masters.insert(t, (id, token.to_string()));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x70_6b_65_6e);
    let mut admitted = Vec::with_capacity(sessions.len());
    for mut s in sessions {
        let (parent_id, parent) = &masters[s.tracking_id.as_deref().unwrap_or("")];
        let req = api::tokens::sign::SignRequest {
            token_id: *parent_id,
            stream_name: s.stream_name.clone(),
            custom_viewer_data: s.custom_viewer_data.clone(),
            expires_in_secs: 3600,
            ..Default::default()
        };
        let mut jwt = api::tokens::sign::sign(parent, &req, chrono::Utc::now()).map_err(|e| IngestError::Config(e.to_string()))?;
        if rng.gen_bool(api.invalid_fraction.clamp(0.0, 1.0)) {
            // a forged token: the signature no longer matches. Change the
            // signature's first character (six data bits); the last one also
            // holds padding bits, so changing it could leave the signature
            // valid or make the token non-canonical base64 instead.
            if let Some(dot) = jwt.rfind('.') {
                let i = dot + 1;
                let c = if jwt.as_bytes().get(i) == Some(&b'A') { "B" } else { "A" };
                jwt.replace_range(i..i + 1, c);
            }
        }
        let (status, v) =
            call(&client, api, "/api/token/verify", json!({"token": jwt, "streamName": s.stream_name, "cluster": s.cluster})).await?;
        if status != 200 {
            adm.refused.insert(s.viewer_id.clone(), v["data"]["code"].as_str().unwrap_or("refused").to_string());
            continue;
        }
        let d = &v["data"];
        s.token_id = d["tokenId"].as_i64();
        s.tracking_id = d["trackingId"].as_str().map(String::from);
        s.custom_viewer_data = d["customViewerData"].as_str().map(String::from);
        adm.admitted += 1;
        admitted.push(s);
    }
    Ok((admitted, adm))
}
