//! End-to-end benchmarks on the local stack (scripts/stack up): each prints
//! the project's figure next to a baseline measured in the same run.

use anyhow::{bail, Context, Result};
use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use runtime::ch::ClickHouseConfig;
use schemas::{Codec, Protocol, ViewerUsage};
use std::borrow::Cow;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BROKERS: &str = "127.0.0.1:9092";

static CLICKHOUSE: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// The ClickHouse the benchmarks use (`--clickhouse`, `--cluster`).
pub fn set_clickhouse(url: &str, cluster: &str) {
    let _ = CLICKHOUSE.set((url.to_string(), cluster.to_string()));
}

/// Settings for a benchmark database on that ClickHouse.
pub fn clickhouse(database: String) -> ClickHouseConfig {
    let (url, cluster) = CLICKHOUSE.get().cloned().unwrap_or_else(|| (ClickHouseConfig::default().url, String::new()));
    ClickHouseConfig { url, database, cluster, ..Default::default() }
}

pub fn stamp() -> String {
    format!("{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs())
}

pub async fn create_topic(name: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", BROKERS).create()?;
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in admin.create_topics([&t], &AdminOptions::new()).await.context("create topic (is the stack up?)")? {
        if let Err((t, e)) = r {
            bail!("create topic {t}: {e}");
        }
    }
    Ok(())
}

/// Synthetic events: `viewers` distinct viewers, reports in seq order,
/// `dup_pct` % re-sent. Returns (key, payload) pairs and the unique count.
pub fn events(n: usize, viewers: usize, dup_pct: usize, start_ms: i64) -> (Vec<(String, Vec<u8>)>, u64) {
    let codec = Codec::new();
    let mut out = Vec::with_capacity(n + n * dup_pct / 100);
    let mut unique = 0;
    for i in 0..n {
        let v = i % viewers;
        let seq = (i / viewers) as i64;
        let t = start_ms + seq * 10_000;
        let viewer = format!("bench-v{v}");
        let ev = ViewerUsage {
            viewer_id: Cow::Borrowed(&viewer),
            seq,
            interval_start: t,
            interval_end: t + 10_000,
            bytes_out: 1_000_000 + (i % 977) as i64,
            bytes_in: 10_000,
            account_id: "acct-bench".into(),
            stream_name: Cow::Borrowed(["live-0", "live-1", "live-2"][v % 3]),
            cluster: Cow::Borrowed(["fra-1", "iad-1", "sin-1"][v % 3]),
            server_id: "srv-1".into(),
            protocol: Protocol::ALL[v % 4],
            token_id: Some(1),
            tracking_id: Some(Cow::Owned(format!("partner-{}", v % 50))),
            custom_viewer_data: Some(Cow::Owned(format!("{{\"u\":{v}}}"))),
        };
        let payload = codec.encode_to_vec(&ev);
        if dup_pct > 0 && i % (100 / dup_pct) == 0 {
            out.push((viewer.clone(), payload.clone()));
        }
        out.push((viewer, payload));
        unique += 1;
    }
    (out, unique)
}

/// Produce every message; returns events/s.
pub async fn produce(topic: &str, msgs: &[(String, Vec<u8>)], idempotent: bool) -> Result<f64> {
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("enable.idempotence", if idempotent { "true" } else { "false" })
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let t = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for (k, v) in msgs {
        loop {
            match p.send_result(FutureRecord::to(topic).key(k).payload(v)) {
                Ok(f) => {
                    inflight.push(f);
                    break;
                }
                Err(_) => {
                    if let Some(r) = inflight.next().await {
                        r?.map_err(|(e, _)| e)?;
                    }
                }
            }
        }
        while inflight.len() >= 100_000 {
            if let Some(r) = inflight.next().await {
                r?.map_err(|(e, _)| e)?;
            }
        }
    }
    while let Some(r) = inflight.next().await {
        r?.map_err(|(e, _)| e)?;
    }
    Ok(msgs.len() as f64 / t.elapsed().as_secs_f64())
}

/// Baseline: a consume-only reader of the whole topic. Returns messages/s.
pub fn consume_only(topic: &str, partitions: i32, total: usize) -> Result<f64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", format!("bench-consume-{}", stamp()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let t = Instant::now();
    let mut n = 0;
    while n < total {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                std::hint::black_box(rdkafka::Message::payload(&m));
                n += 1;
            }
            Some(Err(e)) => bail!("consume: {e}"),
            None => bail!("consume stalled at {n} of {total}"),
        }
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The release binary `name` of this workspace, next to this benchmark's own
/// executable. It is (re)built first with `cargo build --release` (a no-op
/// when up to date), so a benchmark never measures a stale binary.
pub fn release_bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("exe dir")?;
    let target = dir.parent().context("target dir")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // cargo's run-time CARGO_MANIFEST_DIR first: the build cache is shared by
    // the clones of a machine, so the compiled-in one may name another clone
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let manifest = format!("{manifest_dir}/../Cargo.toml");
    eprintln!("building {name} (release)...");
    let st = Command::new(&cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            &format!("metering-{name}"),
            "--bin",
            name,
            "--manifest-path",
            &manifest,
            "--target-dir",
        ])
        .arg(target)
        .status()
        .with_context(|| format!("running {cargo}"))?;
    let p = dir.join(name);
    if !st.success() || !p.exists() {
        bail!("{} missing and `cargo build --release -p metering-{name}` failed", p.display());
    }
    Ok(p)
}

pub async fn sum_events(db: &ClickHouseConfig) -> u64 {
    db.client().query(&format!("SELECT sum(events) FROM {}.usage_by_tracking", db.database)).fetch_one::<u64>().await.unwrap_or(0)
}

/// Peak RSS (VmHWM) of a process, KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

/// The aggregator draining `topic` into a fresh database until `unique`
/// events are visible. Returns (events/s, peak RSS KiB, the server's version).
pub async fn aggregator_drain(topic: &str, unique: u64) -> Result<(f64, u64, String)> {
    let db = clickhouse(format!("bench_{}", stamp()));
    warehouse::migrate(&db).await?;
    let mut version: String = db.server_client().query("SELECT version()").fetch_one().await?;
    if !db.cluster.is_empty() {
        version = format!("{version}, cluster {} (replicated, insert_quorum {})", db.cluster, db.insert_quorum);
    }
    let aggregator = release_bin("aggregator")?;
    let t = Instant::now();
    let mut child = Command::new(aggregator)
        .arg("run")
        .env("AGGREGATOR__KAFKA__TOPIC", topic)
        .env("AGGREGATOR__CLICKHOUSE__DATABASE", &db.database)
        .env("AGGREGATOR__CLICKHOUSE__URL", &db.url)
        .env("AGGREGATOR__CLICKHOUSE__CLUSTER", &db.cluster)
        .env("AGGREGATOR__GROUP_ID", format!("bench-{topic}"))
        .env("AGGREGATOR__METRICS_LISTEN", "")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let mut peak = 0;
    loop {
        peak = peak.max(peak_rss_kib(pid));
        if sum_events(&db).await >= unique {
            break;
        }
        if t.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            bail!("aggregator did not finish in 15 minutes");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    peak = peak.max(peak_rss_kib(pid));
    let _ = child.kill();
    let _ = child.wait();
    let got = sum_events(&db).await;
    let on = if db.cluster.is_empty() { String::new() } else { format!(" ON CLUSTER {}", db.cluster) };
    let _ = db.server_client().query(&format!("DROP DATABASE IF EXISTS {}{on}", db.database)).execute().await;
    if got != unique {
        bail!("aggregator counted {got} events, expected {unique}");
    }
    Ok((unique as f64 / secs, peak, version))
}
