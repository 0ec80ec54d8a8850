//! Sending a simulation to Kafka directly or through the HTTP gateway.

use crate::simulate::{Expected, Messages, SimConfig, SimMessage};
use futures::stream::{FuturesUnordered, StreamExt};
use ingest::IngestError;
use ingest::UsageProducer;
use rdkafka::producer::FutureRecord;
use std::time::{Duration, Instant};

/// Where the simulator sends.
#[derive(Debug, Clone)]
pub enum Target {
    /// Produce to Kafka with [`UsageProducer`].
    Kafka(UsageProducerHandle),
    /// POST batches to the gateway's `/v1/usage`.
    Http {
        /// The gateway's base URL, e.g. `http://127.0.0.1:8088` (`/v1/usage` is appended).
        url: String,
        /// A bearer key the gateway accepts (one of its `api_keys`).
        api_key: String,
    },
}

/// A cloneable producer handle (for `Target::Kafka`).
#[derive(Clone)]
pub struct UsageProducerHandle(pub UsageProducer);

impl std::fmt::Debug for UsageProducerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UsageProducer({})", self.0.topic())
    }
}

/// How to send.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Pace messages to the wall clock by event time (`start` should be about now).
    pub realtime: bool,
    /// Events per HTTP request.
    pub batch: usize,
    /// Print progress to stderr every few seconds.
    pub progress: bool,
    /// Kafka: most messages awaiting acknowledgement at once.
    pub max_inflight: usize,
    /// Admit every viewer through the token service first (see [`crate::tokens`]).
    pub tokens: Option<crate::tokens::TokenApi>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions { realtime: false, batch: 1000, progress: false, max_inflight: 50_000, tokens: None }
    }
}

/// Send every message of the simulation; returns the exact expected totals.
/// Fails if any message could not be delivered (the totals would be wrong).
pub async fn run(cfg: &SimConfig, target: &Target, opts: &RunOptions) -> Result<Expected, IngestError> {
    run_admitted(cfg, target, opts).await.map(|(e, _)| e)
}

/// [`run`], also returning what the token admission did (when `opts.tokens` is set).
pub async fn run_admitted(
    cfg: &SimConfig,
    target: &Target,
    opts: &RunOptions,
) -> Result<(Expected, Option<crate::tokens::Admission>), IngestError> {
    let mut expected = Expected::default();
    let mut admission = None;
    let mut msgs = match &opts.tokens {
        None => Messages::new(cfg),
        Some(api) => {
            let (sessions, adm) = crate::tokens::admit(cfg, crate::simulate::sessions(cfg), api).await?;
            if opts.progress {
                eprintln!("[simulate] token service admitted {} sessions, refused {}", adm.admitted, adm.refused.len());
            }
            admission = Some(adm);
            Messages::with_sessions(cfg, sessions)
        }
    };
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let period_ms = (cfg.duration_secs as i64 * 1000).max(1);
    let mut progress = |sent: u64, sim_ms: i64, force: bool| {
        if opts.progress && (force || last_progress.elapsed() >= Duration::from_secs(3)) {
            last_progress = Instant::now();
            let pct = ((sim_ms - cfg.start_ms) * 100 / period_ms).clamp(0, 100);
            let rate = sent as f64 / started.elapsed().as_secs_f64().max(1e-3);
            eprintln!("[simulate] {sent} messages sent, {pct}% of the simulated period, {rate:.0} msg/s");
        }
    };
    match target {
        Target::Kafka(UsageProducerHandle(p)) => {
            let mut inflight = FuturesUnordered::new();
            let mut sent = 0u64;
            let mut failures = 0u64;
            let mut first_err = None;
            while let Some(m) = msgs.next() {
                if opts.realtime {
                    pace(cfg, started, &m).await;
                }
                let (key, payload) = match &m {
                    SimMessage::Valid(ev) | SimMessage::Duplicate(ev) | SimMessage::Invalid(ev) => {
                        (ev.viewer_id.to_string(), p.codec().encode_to_vec(ev))
                    }
                    SimMessage::Poison(b) => ("poison".to_string(), b.clone()),
                };
                expected.record(&m);
                loop {
                    let record = FutureRecord::to(p.topic()).key(&key).payload(&payload);
                    match p.inner().send_result(record) {
                        Ok(f) => {
                            inflight.push(f);
                            break;
                        }
                        Err((e, _)) => {
                            // local queue full: wait for acknowledgements, then retry
                            if inflight.is_empty() {
                                return Err(IngestError::Kafka(e));
                            }
                            if let Some(r) = inflight.next().await {
                                check(r, &mut failures, &mut first_err);
                            }
                        }
                    }
                }
                sent += 1;
                while inflight.len() >= opts.max_inflight {
                    if let Some(r) = inflight.next().await {
                        check(r, &mut failures, &mut first_err);
                    }
                }
                progress(sent, msgs.sim_time_ms, false);
            }
            while let Some(r) = inflight.next().await {
                check(r, &mut failures, &mut first_err);
            }
            progress(sent, msgs.sim_time_ms, true);
            if failures > 0 {
                return Err(IngestError::Kafka(first_err.expect("an error")));
            }
        }
        Target::Http { url, api_key } => {
            let client = reqwest::Client::new();
            let endpoint = format!("{}/v1/usage", url.trim_end_matches('/'));
            let mut batch: Vec<serde_json::Value> = Vec::with_capacity(opts.batch);
            let mut sent = 0u64;
            while let Some(m) = msgs.next() {
                if opts.realtime {
                    pace(cfg, started, &m).await;
                }
                match &m {
                    SimMessage::Valid(ev) | SimMessage::Duplicate(ev) => batch.push(to_json(ev)),
                    SimMessage::Invalid(ev) => {
                        // alone, so that its 400 does not reject valid events
                        let status = post(&client, &endpoint, api_key, &[to_json(ev)]).await?;
                        if status != 400 {
                            return Err(IngestError::Http(format!("invalid event answered {status}, expected 400")));
                        }
                    }
                    SimMessage::Poison(_) => {} // cannot be expressed in JSON
                }
                if !matches!(m, SimMessage::Poison(_)) {
                    expected.record(&m);
                    sent += 1;
                }
                if batch.len() >= opts.batch {
                    send_batch(&client, &endpoint, api_key, &mut batch).await?;
                }
                progress(sent, msgs.sim_time_ms, false);
            }
            send_batch(&client, &endpoint, api_key, &mut batch).await?;
            progress(sent, msgs.sim_time_ms, true);
        }
    }
    Ok((expected, admission))
}

fn check(
    r: Result<rdkafka::producer::future_producer::OwnedDeliveryResult, futures::channel::oneshot::Canceled>,
    failures: &mut u64,
    first: &mut Option<rdkafka::error::KafkaError>,
) {
    match r {
        Ok(Ok(_)) => {}
        Ok(Err((e, _))) => {
            *failures += 1;
            first.get_or_insert(e);
        }
        Err(_) => {
            *failures += 1;
            first.get_or_insert(rdkafka::error::KafkaError::Canceled);
        }
    }
}

async fn pace(cfg: &SimConfig, started: Instant, m: &SimMessage) {
    let t = match m {
        SimMessage::Valid(ev) | SimMessage::Duplicate(ev) | SimMessage::Invalid(ev) => ev.interval_end,
        SimMessage::Poison(_) => return,
    };
    let due = Duration::from_millis((t - cfg.start_ms).max(0) as u64);
    let elapsed = started.elapsed();
    if due > elapsed {
        tokio::time::sleep(due - elapsed).await;
    }
}

/// JSON form of an event, as the gateway accepts it.
pub fn to_json(ev: &schemas::ViewerUsage<'_>) -> serde_json::Value {
    serde_json::json!({
        "viewer_id": ev.viewer_id, "seq": ev.seq,
        "interval_start": ev.interval_start, "interval_end": ev.interval_end,
        "bytes_out": ev.bytes_out, "bytes_in": ev.bytes_in,
        "account_id": ev.account_id, "stream_name": ev.stream_name,
        "cluster": ev.cluster, "server_id": ev.server_id,
        "protocol": ev.protocol.as_str(), "token_id": ev.token_id,
        "tracking_id": ev.tracking_id, "custom_viewer_data": ev.custom_viewer_data,
    })
}

async fn post(client: &reqwest::Client, url: &str, key: &str, events: &[serde_json::Value]) -> Result<u16, IngestError> {
    let r = client.post(url).bearer_auth(key).json(events).send().await.map_err(|e| IngestError::Http(e.to_string()))?;
    Ok(r.status().as_u16())
}

/// Send a batch, retrying on 429/503 (re-sending is safe: identity dedup).
async fn send_batch(client: &reqwest::Client, url: &str, key: &str, batch: &mut Vec<serde_json::Value>) -> Result<(), IngestError> {
    if batch.is_empty() {
        return Ok(());
    }
    let mut delay = Duration::from_millis(200);
    for _ in 0..30 {
        let r = client.post(url).bearer_auth(key).json(&*batch).send().await;
        match r {
            Ok(r) if r.status().is_success() => {
                batch.clear();
                return Ok(());
            }
            Ok(r) if r.status() == 429 || r.status() == 503 => {}
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                return Err(IngestError::Http(format!("{status}: {body}")));
            }
            Err(e) => tracing::warn!(error = %e, "gateway request failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
    Err(IngestError::Http("gateway kept refusing the batch".into()))
}
