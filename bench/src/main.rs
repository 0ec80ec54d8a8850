//! `cargo run --release -p metering-bench -- codec [--events N]`
//!
//! Prints a table: stage, the project's figure, a baseline measured in the
//! same process on the same data, and their ratio. Absolute numbers vary
//! between machines and runs; the ratio is what to compare.

use aggregator::dedup::Dedup;
use aggregator::state::{Limits, PartitionState};
use anyhow::Result;
use clap::{Parser, Subcommand};
use schemas::Codec;
use simulator::simulate::{Messages, SimConfig, SimMessage};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod stack;

#[derive(Parser)]
#[command(name = "bench", about = "Pipeline benchmarks against same-run baselines")]
struct Cli {
    /// ClickHouse for the benchmarks that need it: the local 18.16 server
    /// (default) or the current engine (`http://127.0.0.1:8124`, 26.x)
    #[arg(long, global = true, env = "METERING_BENCH_CLICKHOUSE", default_value = "http://127.0.0.1:8123")]
    clickhouse: String,
    /// The cluster layout on this cluster of the servers' `remote_servers`
    /// (replicated, DDL `ON CLUSTER`), e.g. `metering` with `--clickhouse
    /// http://127.0.0.1:8131` on `scripts/stack up --cluster`
    #[arg(long, global = true, default_value = "")]
    cluster: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Memory of the dedup state with N distinct active viewers (RSS before and after)
    Memory {
        #[arg(long, default_value_t = 1_000_000)]
        viewers: usize,
    },
    /// Aggregator draining a pre-filled topic into ClickHouse vs a consume-only reader (needs the stack)
    Aggregator {
        #[arg(long, default_value_t = 2_000_000)]
        events: usize,
        #[arg(long, default_value_t = 200_000)]
        viewers: usize,
        #[arg(long, default_value_t = 1)]
        dup_pct: usize,
    },
    /// Gateway over HTTP (batches of 1,000, acks=all) vs a direct producer of the same events (needs the stack)
    Ingest {
        #[arg(long, default_value_t = 300_000)]
        events: usize,
    },
    /// `billing run` over a month of hourly usage for 10,000 tracking ids vs the bare aggregate query (needs the stack)
    Billing {
        #[arg(long, default_value_t = 10_000)]
        tracking_ids: usize,
    },
    /// Produced -> visible in usage_by_tracking, p50/p99, at a steady rate with default aggregator settings (needs the stack)
    Latency {
        #[arg(long, default_value_t = 20_000)]
        rate: usize,
        #[arg(long, default_value_t = 60)]
        seconds: usize,
    },
    /// The gateway (`ingest serve`, release) answering hostile 16 MiB bodies:
    /// its peak memory and slowest answer, next to its idle memory and a
    /// one-event request (needs the stack's broker only for start-up)
    Hostile,
    /// Questions asked of a month of usage as the aggregator writes it
    /// (fragments; several streams, clusters, protocols per tracking id), at
    /// growing sizes, next to the same questions on a pre-aggregated hourly
    /// table in the same run (needs the stack)
    Scale {
        /// Log rows per size, comma-separated
        #[arg(long, default_value = "10000000", value_delimiter = ',')]
        rows: Vec<u64>,
        /// Tracking ids
        #[arg(long, default_value_t = 1_000)]
        tracking_ids: u64,
        /// After the one seal of the log: this many seals in all, each of late
        /// usage of every tracking id on every day of the month (what seals every
        /// 5 minutes do to a day's rows), and billing's month before and after
        /// the consolidation (1: none)
        #[arg(long, default_value_t = 1)]
        seals: u64,
        /// Keep each size's database (its name is printed) to ask it more
        /// questions by hand; drop it with `DROP DATABASE`
        #[arg(long)]
        keep: bool,
    },
    /// A claim of a partition with N active viewers and D days of dedup
    /// history: the claim and its dedup restore, next to the bare read of
    /// the rows it needs and to the restore without the horizon's bound, in
    /// the same run (needs the stack)
    Restore {
        #[arg(long, default_value_t = 1_000_000)]
        viewers: u64,
        #[arg(long, default_value_t = 30)]
        days: u64,
    },
    /// Every benchmark with its default size
    All,
    /// Decode + window update of single-object events on one core, vs apache-avro's generic decode
    Codec {
        /// Events to generate
        #[arg(long, default_value_t = 1_000_000)]
        events: usize,
        /// Repetitions (best is reported)
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Run only the project's hot path, many rounds, for a profiler
        /// (`perf record -- bench codec --profile`)
        #[arg(long)]
        profile: bool,
    },
}

fn main() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    eprintln!("machine: {}", machine());
    let cli = Cli::parse();
    stack::set_clickhouse(&cli.clickhouse, &cli.cluster);
    match cli.cmd {
        Cmd::Codec { events, rounds, profile } => codec(events, rounds, profile),
        Cmd::Memory { viewers } => memory(viewers),
        Cmd::Aggregator { events, viewers, dup_pct } => rt.block_on(bench_aggregator(events, viewers, dup_pct)),
        Cmd::Ingest { events } => rt.block_on(bench_ingest(events)),
        Cmd::Billing { tracking_ids } => rt.block_on(bench_billing(tracking_ids)),
        Cmd::Latency { rate, seconds } => rt.block_on(bench_latency(rate, seconds)),
        Cmd::Hostile => rt.block_on(bench_hostile()),
        Cmd::Scale { rows, tracking_ids, seals, keep } => rt.block_on(bench_scale(&rows, tracking_ids, seals, keep)),
        Cmd::Restore { viewers, days } => rt.block_on(bench_restore(viewers, days)),
        Cmd::All => {
            codec(1_000_000, 3, false)?;
            memory(1_000_000)?;
            rt.block_on(bench_ingest(300_000))?;
            rt.block_on(bench_hostile())?;
            rt.block_on(bench_billing(10_000))?;
            rt.block_on(bench_latency(20_000, 60))?;
            rt.block_on(bench_aggregator(2_000_000, 200_000, 1))
        }
    }
}

fn header() {
    println!("| stage | project | baseline | ratio |");
    println!("| --- | ---: | ---: | ---: |");
}

async fn bench_aggregator(events: usize, viewers: usize, dup_pct: usize) -> Result<()> {
    let topic = format!("bench-agg-{}", stack::stamp());
    stack::create_topic(&topic, 4).await?;
    let (msgs, unique) = stack::events(events, viewers, dup_pct, 1_790_000_000_000);
    eprintln!("producing {} messages ({unique} unique, {viewers} viewers) to {topic}...", msgs.len());
    let rate = stack::produce(&topic, &msgs, true).await?;
    eprintln!("produced at {rate:.0} msg/s; consume-only baseline...");
    let total = msgs.len();
    let t2 = topic.clone();
    let baseline = tokio::task::spawn_blocking(move || stack::consume_only(&t2, 4, total)).await??;
    eprintln!("baseline {baseline:.0} msg/s; aggregator...");
    let (ours, peak, engine) = stack::aggregator_drain(&topic, unique).await?;
    // the aggregator reads every message, duplicates too: compare messages/s
    let ours_msgs = ours * total as f64 / unique as f64;
    header();
    println!(
        "| aggregator: {total} messages ({dup_pct}% duplicates, {viewers} viewers) -> visible in ClickHouse {engine} | {ours_msgs:.0} msg/s, peak RSS {} MiB | {baseline:.0} msg/s (consume-only rdkafka reader) | {:.2} |",
        peak / 1024,
        ours_msgs / baseline
    );
    Ok(())
}

/// Produce `rate` events per second for `seconds` seconds to `topic`: second
/// `s` carries tracking id `lat-{s}`. Returns when each second's events were
/// handed to the producer; `delivered[s]` is set to the number the broker
/// acknowledged once all of second `s` were answered (a failed delivery is
/// not waited for: latency is measured over what was written).
async fn produce_load(topic: &str, rate: usize, seconds: usize, delivered: Arc<Vec<AtomicUsize>>) -> Result<Vec<Instant>> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stack::BROKERS)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        // a delivery the broker cannot take in 30 s counts as failed (and is
        // left out of the latency) instead of holding the result for 5 minutes
        .set("message.timeout.ms", "30000")
        .create()?;
    let codec = Codec::new();
    let mut produced_at = Vec::with_capacity(seconds);
    let start = Instant::now();
    for s in 0..seconds {
        let due = start + Duration::from_secs(s as u64);
        tokio::time::sleep_until(due.into()).await;
        let now_ms = chrono_like_now_ms();
        let mut futs = Vec::with_capacity(rate);
        for i in 0..rate {
            let viewer = format!("lat-{s}-{i}");
            let ev = schemas::ViewerUsage {
                viewer_id: viewer.as_str().into(),
                seq: 0,
                interval_start: now_ms - 10_000,
                interval_end: now_ms,
                bytes_out: 1_000,
                bytes_in: 0,
                account_id: "acct".into(),
                stream_name: "live".into(),
                cluster: "fra-1".into(),
                server_id: "srv".into(),
                protocol: schemas::Protocol::Webrtc,
                token_id: None,
                tracking_id: Some(format!("lat-{s}").into()),
                custom_viewer_data: None,
            };
            let payload = codec.encode_to_vec(&ev);
            loop {
                match producer.send_result(FutureRecord::to(topic).key(&viewer).payload(&payload)) {
                    Ok(f) => {
                        futs.push(f);
                        break;
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }
        produced_at.push(Instant::now());
        let delivered = delivered.clone();
        tokio::spawn(async move {
            let ok = futures::future::join_all(futs).await.into_iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
            if ok < rate {
                eprintln!("second {s}: {} of {rate} deliveries failed", rate - ok);
            }
            delivered[s].store(ok, Ordering::SeqCst);
        });
    }
    // dropping a producer purges what it still holds: wait for it first
    let p = producer.clone();
    tokio::task::spawn_blocking(move || rdkafka::producer::Producer::flush(&p, Duration::from_secs(60))).await??;
    Ok(produced_at)
}

/// p50 and p99 of `seen - produced` per second of load (never seen: infinite).
fn latency_percentiles(produced_at: &[Instant], seen: &[Option<Instant>]) -> (f64, f64) {
    let mut lat: Vec<f64> = produced_at
        .iter()
        .zip(seen)
        .map(|(p, s)| s.map(|s| s.saturating_duration_since(*p).as_secs_f64()).unwrap_or(f64::INFINITY))
        .collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
    (pct(0.5), pct(0.99))
}

/// Baseline: the same load read by a consume-only reader that decodes each
/// event and notes when all of a second's events have arrived (what the
/// broker alone allows on this machine).
async fn latency_baseline(rate: usize, seconds: usize) -> Result<(f64, f64)> {
    let topic = format!("bench-lat-base-{}", stack::stamp());
    stack::create_topic(&topic, 4).await?;
    let t2 = topic.clone();
    let delivered: Arc<Vec<AtomicUsize>> = Arc::new((0..seconds).map(|_| AtomicUsize::new(usize::MAX)).collect());
    let delivered2 = delivered.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<Vec<Option<Instant>>> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let c: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", stack::BROKERS)
            .set("group.id", format!("bench-lat-base-{}", stack::stamp()))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition_offset(&t2, p, rdkafka::Offset::Beginning)?;
        }
        c.assign(&tpl)?;
        let codec = Codec::new();
        let mut counts = vec![0usize; seconds];
        let mut seen = vec![None; seconds];
        let d = delivered2;
        let deadline = Instant::now() + Duration::from_secs(seconds as u64 + 120);
        while seen.iter().any(|s: &Option<Instant>| s.is_none()) && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let Ok(ev) = codec.decode(rdkafka::Message::payload(&m).unwrap_or(&[])) else { continue };
                if let Some(i) = ev.tracking_id.as_deref().and_then(|t| t.strip_prefix("lat-")).and_then(|x| x.parse::<usize>().ok()) {
                    if i < seconds {
                        counts[i] += 1;
                    }
                }
            }
            for i in 0..seconds {
                if seen[i].is_none() && counts[i] >= d[i].load(Ordering::SeqCst) {
                    seen[i] = Some(Instant::now());
                }
            }
        }
        Ok(seen)
    });
    let produced_at = produce_load(&topic, rate, seconds, delivered).await?;
    let seen = reader.await??;
    Ok(latency_percentiles(&produced_at, &seen))
}

async fn bench_latency(rate: usize, seconds: usize) -> Result<()> {
    eprintln!("baseline: consume-only reader under the same load...");
    let (b50, b99) = latency_baseline(rate, seconds).await?;
    eprintln!("baseline p50 {b50:.1} s, p99 {b99:.1} s; aggregator...");
    let topic = format!("bench-lat-{}", stack::stamp());
    stack::create_topic(&topic, 4).await?;
    let db = stack::clickhouse(format!("bench_lat_{}", stack::stamp()));
    warehouse::migrate(&db).await?;
    let mut agg = std::process::Command::new(stack::release_bin("aggregator")?)
        .arg("run")
        .env("AGGREGATOR__KAFKA__TOPIC", &topic)
        .env("AGGREGATOR__CLICKHOUSE__DATABASE", &db.database)
        .env("AGGREGATOR__CLICKHOUSE__URL", &db.url)
        .env("AGGREGATOR__GROUP_ID", format!("bench-{topic}"))
        .env("AGGREGATOR__METRICS_LISTEN", "")
        .env("RUST_LOG", "warn")
        .spawn()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let start = Instant::now();
    let delivered: Arc<Vec<AtomicUsize>> = Arc::new((0..seconds).map(|_| AtomicUsize::new(usize::MAX)).collect());
    let watcher = {
        let db = db.clone();
        let d = delivered.clone();
        tokio::spawn(async move {
            let mut seen: Vec<Option<Instant>> = vec![None; seconds];
            let deadline = Instant::now() + Duration::from_secs(seconds as u64 + 120);
            while seen.iter().any(|s| s.is_none()) && Instant::now() < deadline {
                #[derive(serde::Deserialize, clickhouse::Row)]
                struct R {
                    t: String,
                    n: u64,
                }
                let rows: Vec<R> = db
                    .client()
                    .query(&format!("SELECT tracking_id, sum(events) FROM {}.usage_by_tracking GROUP BY tracking_id", db.database))
                    .fetch_all()
                    .await
                    .unwrap_or_default();
                let now = Instant::now();
                for r in rows {
                    if let Some(i) = r.t.strip_prefix("lat-").and_then(|x| x.parse::<usize>().ok()) {
                        if i < seconds && seen[i].is_none() && r.n as usize >= d[i].load(Ordering::SeqCst) {
                            seen[i] = Some(now);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            seen
        })
    };
    let produced_at = produce_load(&topic, rate, seconds, delivered).await?;
    let seen = watcher.await?;
    let _ = agg.kill();
    let _ = agg.wait();
    let _ = db.server_client().query(&format!("DROP DATABASE IF EXISTS {}", db.database)).execute().await;
    let (p50, p99) = latency_percentiles(&produced_at, &seen);
    let achieved = (rate * seconds) as f64 / produced_at.last().map(|l| l.duration_since(start).as_secs_f64() + 1.0).unwrap_or(1.0);
    header();
    println!(
        "| latency produced -> visible in usage_by_tracking at {rate} events/s (achieved {achieved:.0}), {seconds} s | p50 {p50:.1} s, p99 {p99:.1} s | p50 {b50:.1} s, p99 {b99:.1} s (consume-only reader, same load) | p99 +{:.1} s |",
        p99 - b99
    );
    Ok(())
}

fn chrono_like_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

async fn bench_ingest(events: usize) -> Result<()> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let topic = format!("bench-ingest-{}", stack::stamp());
    stack::create_topic(&topic, 4).await?;
    let base_topic = format!("{topic}-direct");
    stack::create_topic(&base_topic, 4).await?;
    let now = 1_790_000_000_000;
    let (msgs, _) = stack::events(events, events / 10, 0, now);
    let codec = Codec::new();
    let bodies: Vec<Vec<u8>> = msgs
        .chunks(1000)
        .map(|c| {
            let evs: Vec<serde_json::Value> =
                c.iter().map(|(_, p)| simulator::sim_run::to_json(&codec.decode(p).expect("decodes"))).collect();
            serde_json::to_vec(&evs).expect("json")
        })
        .collect();
    let key = "bench-ingest-key-0123456789abcdef".to_string();
    let cfg = ingest::http::IngestConfig {
        kafka: runtime::kafka::KafkaConfig { brokers: stack::BROKERS.into(), topic: topic.clone(), ..Default::default() },
        api_keys: vec![key.clone()],
        ..Default::default()
    };
    let app = ingest::http::router(cfg)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/v1/usage", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let t = Instant::now();
    let mut inflight = FuturesUnordered::new();
    for b in &bodies {
        inflight.push(client.post(&url).bearer_auth(&key).header("content-type", "application/json").body(b.clone()).send());
        while inflight.len() >= 8 {
            let r = inflight.next().await.expect("a reply")?;
            anyhow::ensure!(r.status().is_success(), "gateway answered {}", r.status());
        }
    }
    while let Some(r) = inflight.next().await {
        anyhow::ensure!(r?.status().is_success(), "gateway refused a batch");
    }
    let ours = msgs.len() as f64 / t.elapsed().as_secs_f64();
    let baseline = stack::produce(&base_topic, &msgs, true).await?;
    header();
    println!(
        "| ingest: {} events over HTTP, batches of 1,000, acks=all | {ours:.0} events/s | {baseline:.0} events/s (direct idempotent rdkafka producer) | {:.2} |",
        msgs.len(),
        ours / baseline
    );
    Ok(())
}

/// VmRSS of a process, KiB.
fn rss_of_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

async fn bench_hostile() -> Result<()> {
    const MAX_BODY: usize = 16 * 1024 * 1024;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let key = format!("bench-hostile-{}-0123456789abcdef", stack::stamp());
    let topic = format!("bench-hostile-{}", stack::stamp());
    stack::create_topic(&topic, 1).await?;
    let mut gw = std::process::Command::new(stack::release_bin("ingest")?)
        .arg("serve")
        .env("INGEST__API_KEYS", format!("[\"{key}\"]"))
        .env("INGEST__LISTEN", format!("127.0.0.1:{port}"))
        .env("INGEST__KAFKA__BROKERS", stack::BROKERS)
        .env("INGEST__KAFKA__TOPIC", &topic)
        .env("INGEST__MAX_BODY_BYTES", MAX_BODY.to_string())
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()?;
    let pid = gw.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut up = false;
    for _ in 0..200 {
        if client.get(format!("{base}/healthz")).send().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::ensure!(up, "the gateway did not start");
    let post = |ctype: &'static str, body: Vec<u8>| {
        let (client, url, key) = (client.clone(), format!("{base}/v1/usage"), key.clone());
        async move {
            let t = Instant::now();
            let r = client.post(url).bearer_auth(key).header("Content-Type", ctype).body(body).send().await?;
            let status = r.status().as_u16();
            let len = r.bytes().await?.len();
            anyhow::Ok((status, len, t.elapsed().as_secs_f64()))
        }
    };
    // baseline: idle memory, and one small (invalid) request
    let idle = rss_of_kib(pid);
    let (st, _, small) = post("application/json", b"[{}]".to_vec()).await?;
    anyhow::ensure!(st == 400, "small request answered {st}");
    // hostile bodies, each just under the body limit
    let empties_nd = "{}\n".repeat(MAX_BODY / 3 - 16).into_bytes();
    let empties_arr = format!("[{}]", vec!["{}"; MAX_BODY / 3 - 16].join(",")).into_bytes();
    let filler = "v".repeat(1600);
    let one = format!("{{\"viewer_id\":\"{filler}\",\"seq\":0,\"interval_start\":0,\"interval_end\":0,\"bytes_out\":0,\"bytes_in\":0,\"account_id\":\"a\",\"stream_name\":\"s\",\"cluster\":\"c\",\"server_id\":\"x\"}}");
    let n = (MAX_BODY - 2) / (one.len() + 1);
    let fat = format!("[{}]", vec![one.as_str(); n.min(10_000)].join(",")).into_bytes();
    // valid events as large as the contract allows (kept in memory, then produced)
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let id = "i".repeat(250);
    let cvd = "é".repeat(1024);
    let valid: Vec<String> = (0..)
        .map(|i| format!("{{\"viewer_id\":\"{id}-{i}\",\"seq\":0,\"interval_start\":{now},\"interval_end\":{now},\"bytes_out\":1,\"bytes_in\":1,\"account_id\":\"{id}\",\"stream_name\":\"{id}\",\"cluster\":\"{id}\",\"server_id\":\"{id}\",\"custom_viewer_data\":\"{cvd}\"}}"))
        .scan(2usize, |size, e| {
            *size += e.len() + 1;
            (*size < MAX_BODY).then_some(e)
        })
        .take(10_000)
        .collect();
    let valid = format!("[{}]", valid.join(",")).into_bytes();
    let mut slowest = 0f64;
    let mut answers = Vec::new();
    for (what, ctype, body) in [
        ("16 MiB of {} lines", "application/x-ndjson", empties_nd),
        ("16 MiB array of {}", "application/json", empties_arr),
        ("10,000 events with 1.6 kB ids", "application/json", fat),
        ("the largest valid events, up to the body limit", "application/json", valid),
    ] {
        let size = body.len();
        let (st, len, secs) = post(ctype, body).await?;
        eprintln!("{what}: {size} bytes -> {st}, {len} bytes answer, {secs:.3} s");
        slowest = slowest.max(secs);
        answers.push(len);
    }
    let peak = stack::peak_rss_kib(pid);
    // a flood: 256 maximum-size bodies at once (the body budget lets a few
    // in at a time and refuses the others unread), then a valid request
    let flood = bytes::Bytes::from("{}\n".repeat(MAX_BODY / 3 - 16).into_bytes());
    let t = Instant::now();
    let statuses: Vec<u16> = futures::future::join_all((0..256).map(|_| {
        let (client, url, key, body) = (client.clone(), format!("{base}/v1/usage"), key.clone(), flood.clone());
        async move {
            match client.post(url).bearer_auth(key).header("Content-Type", "application/x-ndjson").body(body).send().await {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0, // refused unread: the server may close before the client sent everything
            }
        }
    }))
    .await;
    let flood_secs = t.elapsed().as_secs_f64();
    let flood_peak = stack::peak_rss_kib(pid);
    let count = |st: u16| statuses.iter().filter(|s| **s == st).count();
    let after = post("application/json", b"[]".to_vec()).await?;
    anyhow::ensure!(after.0 == 200, "a request after the flood answered {}", after.0);
    eprintln!(
        "flood of 256 x 16 MiB: {} read and refused (413), {} refused unread (503), {} (429), {} connections closed unread, in {flood_secs:.1} s",
        count(413),
        count(503),
        count(429),
        count(0)
    );
    let _ = gw.kill();
    let _ = gw.wait();
    header();
    let over_idle = peak.saturating_sub(idle) as f64 * 1024.0 / MAX_BODY as f64;
    println!(
        "| gateway: hostile 16 MiB bodies (empty objects as NDJSON and array, events with oversized ids, the largest valid events) | peak RSS {} MiB ({over_idle:.1}x max_body_bytes above idle), slowest answer {slowest:.2} s, largest answer {} bytes | idle RSS {} MiB, one small request {small:.3} s | goal ≤ 4x, < 1 s |",
        peak / 1024,
        answers.iter().max().copied().unwrap_or(0),
        idle / 1024,
    );
    println!(
        "| gateway: 256 concurrent 16 MiB bodies (the body budget's defaults: 128 MiB in all, 64 MiB per key) | peak RSS {} MiB; {} read, {} refused unread; a valid request right after: 200 | idle RSS {} MiB | goal < 512 MiB |",
        flood_peak / 1024,
        count(413),
        256 - count(413),
        idle / 1024,
    );
    Ok(())
}

async fn bench_billing(tracking_ids: usize) -> Result<()> {
    let db = stack::clickhouse(format!("bench_billing_{}", stack::stamp()));
    warehouse::migrate(&db).await?;
    let rows = tracking_ids * 744;
    let c = db.client();
    let t = Instant::now();
    // one row per tracking id and hour, as an aggregator (claim epoch 1 of
    // partition 0, checkpointed at position 1) would have written it; the
    // hourly rollup is a view over it
    c.query(&format!(
        "INSERT INTO {}.aggregator_claims (topic, partition, epoch, start_offset, member, claimed_at) VALUES ('bench', 0, 1, 0, 'bench', now())",
        db.database
    ))
    .execute()
    .await?;
    c.query(&format!(
        "INSERT INTO {}.aggregator_checkpoints (topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at) \
         VALUES ('bench', 0, 1, 1, 0, 0, 'bench', now())",
        db.database
    ))
    .execute()
    .await?;
    c.query(&format!(
        "INSERT INTO {}.usage_by_tracking_log (window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, \
         src_topic, src_partition, src_epoch, src_offset) \
         SELECT toDateTime(1790812800 + (number % 744) * 3600), concat('t-', toString(intDiv(number, 744))), 'acct', 'live', 'fra-1', 'WEBRTC', \
         1000000 + number % 1000, 0, 1, 'bench', 0, 1, 1 FROM numbers({rows})",
        db.database
    ))
    .execute()
    .await?;
    eprintln!("{rows} hourly rows inserted in {:.1} s", t.elapsed().as_secs_f64());
    let dir = std::env::temp_dir().join(format!("bench-billing-{}", stack::stamp()));
    std::fs::create_dir_all(&dir)?;
    let mut card = String::new();
    for p in 0..tracking_ids.div_ceil(10) {
        let ids: Vec<String> = (p * 10..((p + 1) * 10).min(tracking_ids)).map(|i| format!("\"t-{i}\"")).collect();
        card.push_str(&format!(
            "[[partner]]\nid = \"p{p}\"\nname = \"Partner {p}\"\ntracking_ids = [{}]\ncurrency = \"EUR\"\npricing = \"graduated\"\ntiers = [ {{ up_to = \"100\", unit_price = \"0.05\" }}, {{ unit_price = \"0.04\" }} ]\n\n",
            ids.join(", ")
        ));
    }
    let rates = dir.join("rates.toml");
    std::fs::write(&rates, card)?;
    // baseline: the bare aggregate query billing needs
    let t = Instant::now();
    let n: u64 = c
        .query(&format!(
            "SELECT count() FROM (SELECT tracking_id, sum(bytes_out) FROM {}.usage_by_tracking \
             WHERE window_start >= toDateTime(1790812800) AND window_start < toDateTime(1793491200) GROUP BY tracking_id)",
            db.database
        ))
        .fetch_one()
        .await?;
    let baseline = t.elapsed().as_secs_f64();
    anyhow::ensure!(n as usize == tracking_ids, "aggregate saw {n} tracking ids");
    let billing = stack::release_bin("billing")?;
    let t = Instant::now();
    let out = std::process::Command::new(billing)
        .args(["run", "--period", "2026-10", "--rates", rates.to_str().unwrap(), "--out", dir.join("out").to_str().unwrap()])
        .env("BILLING__CLICKHOUSE__DATABASE", &db.database)
        .env("BILLING__CLICKHOUSE__URL", &db.url)
        .output()?;
    let ours = t.elapsed().as_secs_f64();
    anyhow::ensure!(out.status.success(), "billing run failed: {}", String::from_utf8_lossy(&out.stderr));
    let report = std::fs::read_to_string(dir.join("out").join("report-2026-10.json"))?;
    anyhow::ensure!(report.contains(&format!("\"total_bytes\": \"{}\"", expected_total(rows))), "billing run priced every usage row");
    let _ = db.server_client().query(&format!("DROP DATABASE IF EXISTS {}", db.database)).execute().await;
    header();
    println!(
        "| billing run: {rows} usage rows (one per hour), {tracking_ids} tracking ids, {} partners | {ours:.2} s | {baseline:.2} s (the bare GROUP BY query over the fenced view) | {:.1}x the query |",
        tracking_ids.div_ceil(10),
        ours / baseline
    );
    Ok(())
}

/// Sum of the bench's usage rows (`1000000 + number % 1000` bytes each), computed here.
fn expected_total(rows: usize) -> u64 {
    (0..rows as u64).map(|n| 1_000_000 + n % 1000).sum()
}

/// Seconds `f` takes, best of 3 (the first run warms the caches).
async fn best_of_3<F, Fut, T>(mut f: F) -> Result<(f64, T)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut best = f64::MAX;
    let mut out = None;
    for _ in 0..3 {
        let t = Instant::now();
        let v = f().await?;
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(v);
    }
    Ok((best, out.expect("ran")))
}

/// Wait (at most 10 minutes, with progress) until no background merge runs on
/// `d`'s tables, so that the questions after it are timed in the steady state a
/// server reaches between inserts, not while merges of a bulk insert take both
/// cores. Returns the seconds waited.
async fn merges_settled(c: &clickhouse::Client, d: &str) -> Result<f64> {
    let t = Instant::now();
    let mut said = Instant::now();
    loop {
        let running: u64 = c.query("SELECT count() FROM system.merges WHERE database = ?").bind(d).fetch_one().await?;
        if running == 0 {
            return Ok(t.elapsed().as_secs_f64());
        }
        anyhow::ensure!(t.elapsed() < Duration::from_secs(600), "{running} merges still run on {d} after 10 minutes");
        if said.elapsed() >= Duration::from_secs(10) {
            eprintln!("waiting for {running} background merges on {d} ({:.0} s)", t.elapsed().as_secs_f64());
            said = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn bench_restore(viewers: u64, days: u64) -> Result<()> {
    use aggregator::store::Store;
    let db = stack::clickhouse(format!("bench_restore_{}", stack::stamp()));
    warehouse::migrate(&db).await?;
    let c = db.client();
    let d = &db.database;
    // a day of arrival, a million records and a checkpoint per day; every
    // viewer reports every day (one dedup row per viewer and day)
    let t = Instant::now();
    let start = OCT_2026.0;
    c.query(&format!(
        "INSERT INTO {d}.aggregator_claims (topic, partition, epoch, start_offset, member, claim_id, claimed_at) \
         VALUES ('bench', 0, 1, 0, 'bench', 1, toDateTime({start}))"
    ))
    .execute()
    .await?;
    c.query(&format!(
        "INSERT INTO {d}.aggregator_checkpoints (topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at) \
         SELECT 'bench', 0, 1, (number + 1) * 1000000, 0, ({start} + number * 86400) * 1000, 'bench', toDateTime({start} + number * 86400) \
         FROM numbers({days})"
    ))
    .execute()
    .await?;
    for day in 0..days {
        c.query(&format!(
            "INSERT INTO {d}.aggregator_dedup (topic, partition, epoch, position, viewer_id, seq_ranges, last_seen_ms, created_at) \
             SELECT 'bench', 0, 1, {pos}, concat('viewer-', toString(number)), [0, {seq}], {seen}, toDateTime({at}) FROM numbers({viewers})",
            pos = (day + 1) * 1_000_000,
            seq = day * 100,
            seen = (start + day as i64 * 86_400) * 1000,
            at = start + day as i64 * 86_400,
        ))
        .execute()
        .await?;
    }
    let rows: u64 = c.query(&format!("SELECT count() FROM {d}.aggregator_dedup")).fetch_one().await?;
    eprintln!("{rows} dedup rows ({viewers} viewers x {days} days) in {:.1} s", t.elapsed().as_secs_f64());

    let horizon = aggregator::dedup::Horizon { ms: 86_400_000, offsets: 2_000_000 };
    let sink = aggregator::sink::Sink::connect(&db, "bench").await?;
    let (claim_s, restored) = best_of_3(|| async {
        let loaded = sink.claim(&[0], "bench", horizon).await?;
        Ok(loaded.get(&0).map_or(0, |l| l.viewers_restored))
    })
    .await?;
    anyhow::ensure!(restored as u64 == viewers, "the claim restored {restored} of {viewers} active viewers");
    // the bare read of what the restore needs: the rows of the days its
    // bound names, no grouping, no fences
    let pos = days * 1_000_000;
    let (cutoff_ms, cutoff_offset) = aggregator::compact::cutoffs(horizon, pos as i64, (start + (days as i64 - 1) * 86_400) * 1000);
    let since = aggregator::compact::restore_since(&c, d, "bench", 0, pos, cutoff_ms, cutoff_offset).await?;
    #[derive(serde::Deserialize, clickhouse::Row)]
    struct Bare {
        _viewer_id: String,
        _seq_ranges: Vec<i64>,
    }
    let (bare_s, bare_rows) = best_of_3(|| async {
        let rows: Vec<Bare> = c
            .query(&format!("SELECT viewer_id, seq_ranges FROM {d}.aggregator_dedup WHERE created_at >= toDateTime(?)"))
            .bind(since)
            .fetch_all()
            .await?;
        Ok(rows.len())
    })
    .await?;
    // before the bound: the same restore query over every day
    let (unbounded_s, n) = best_of_3(|| async {
        let rows: Vec<Bare> = c
            .query(&format!(
                "SELECT viewer_id, argMax(seq_ranges, position) AS ranges FROM {d}.aggregator_dedup \
                 ALL INNER JOIN (SELECT topic, partition, epoch, fence FROM {d}.aggregator_fences) AS f USING (topic, partition, epoch) \
                 WHERE topic = 'bench' AND partition = 0 AND position <= {pos} AND position <= fence \
                 GROUP BY viewer_id HAVING max(last_seen_ms) >= {cutoff_ms} OR max(position) >= {cutoff_offset}"
            ))
            .fetch_all()
            .await?;
        Ok(rows.len())
    })
    .await?;
    anyhow::ensure!(n as u64 == viewers, "the unbounded restore found {n} viewers");
    let bytes: u64 = c
        .query(&format!("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{d}' AND table = 'aggregator_dedup' AND active"))
        .fetch_one()
        .await?;
    let _ = db.server_client().query(&format!("DROP DATABASE IF EXISTS {d}")).execute().await;
    header();
    println!(
        "| claim and dedup restore: {viewers} active viewers, {days} days of dedup rows ({rows} rows, {} MB) | {claim_s:.2} s ({restored} viewers restored) | {bare_s:.2} s (the bare read of the {bare_rows} rows of the days the bound names) | {:.1}x; before the bound: {unbounded_s:.2} s |",
        bytes / 1_000_000,
        claim_s / bare_s,
    );
    Ok(())
}

/// Billing's usage of October 2026: a snapshot and every tracking id's bytes.
async fn bill_october(store: billing::store::Store) -> Result<std::collections::BTreeMap<String, u64>> {
    let snap = store.snapshot().await?;
    let (from, to) = billing::invoice::period_bounds(2026, 10).expect("October");
    Ok(store.usage_at(&snap, from, to).await?)
}

/// `bench scale --seals`: `seals - 1` more seals, each of one row per
/// tracking id and day of October (late usage, at the server's clock), then
/// billing's month with every key-day split over the seals, the
/// consolidation, and billing's month again (the same usage).
async fn many_seals(
    db: &runtime::ch::ClickHouseConfig,
    store: &billing::store::Store,
    tracking_ids: u64,
    seals: u64,
    bill_bare: f64,
) -> Result<String> {
    let (c, d) = (db.client(), &db.database);
    let days = (OCT_2026.1 - OCT_2026.0) / 86_400;
    let t = Instant::now();
    for k in 1..seals {
        let offset = 2_000_000_000 + k;
        c.query(&format!(
            "INSERT INTO {d}.usage_by_tracking_log (window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, \
             events, src_topic, src_partition, src_epoch, src_offset) \
             SELECT toDateTime({start} + (number % {days}) * 86400), concat('t-', toString(intDiv(number, {days}) % {tracking_ids})), 'acct', \
             'live-0', 'c-0', 'WEBRTC', 1, 0, 1, 'bench', 0, 1, {offset} FROM numbers({n})",
            start = OCT_2026.0,
            n = tracking_ids * days as u64,
        ))
        .execute()
        .await?;
        c.query(&format!(
            "INSERT INTO {d}.aggregator_checkpoints (topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at) \
             VALUES ('bench', 0, 1, {offset}, 0, 0, 'bench', now())"
        ))
        .execute()
        .await?;
        aggregator::seal::seal(db, 600).await?.map_err(|skipped| anyhow::anyhow!("seal {k} did not run: {skipped:?}"))?;
    }
    let sealing_s = t.elapsed().as_secs_f64();
    let daily_rows = || {
        let c = c.clone();
        async move {
            let n: u64 = c.query(&format!("SELECT count() FROM {d}.usage_by_tracking_daily_sealed")).fetch_one().await?;
            anyhow::Ok(n)
        }
    };
    let bill_month = || bill_october(store.clone());
    // the part of billing's read that consolidation changes: the daily rows
    let daily_read = || {
        let c = c.clone();
        async move {
            let n: u64 = c
                .query(&format!(
                    "SELECT count() FROM (SELECT tracking_id, sum(bytes_out) FROM {d}.usage_by_tracking_daily_sealed \
                     WHERE day >= toDate('2026-10-01') AND day < toDate('2026-11-01') \
                       AND seal_id GLOBAL IN (SELECT seal_id FROM {d}.usage_seals) GROUP BY tracking_id)"
                ))
                .fetch_one()
                .await?;
            anyhow::Ok(n)
        }
    };
    let split_rows = daily_rows().await?;
    let (split, usage) = best_of_3(bill_month).await?;
    let (split_daily, _) = best_of_3(daily_read).await?;
    let t = Instant::now();
    let done = aggregator::consolidate::consolidate(db, 2, 600)
        .await?
        .map_err(|skipped| anyhow::anyhow!("the consolidation did not run: {skipped:?}"))?;
    let consolidate_s = t.elapsed().as_secs_f64();
    eprintln!("consolidated in {consolidate_s:.1} s: {:?}", done.months);
    let one_rows = daily_rows().await?;
    let (consolidated, usage_after) = best_of_3(bill_month).await?;
    let (one_daily, _) = best_of_3(daily_read).await?;
    anyhow::ensure!(usage_after == usage, "billing reads the same usage before and after the consolidation");
    Ok(format!(
        "| {seals} seals, each with usage of every tracking id on every day of the month ({:.0} s): billing's usage of a month, before / after the consolidation ({:.1} s); of it, the daily sealed rows' read | {:.0} / {:.0} ms; the daily rows: {:.0} ms ({split_rows} rows) / {:.0} ms ({one_rows} rows) | {:.0} ms | {:.0}x after |",
        sealing_s,
        consolidate_s,
        split * 1000.0,
        consolidated * 1000.0,
        split_daily * 1000.0,
        one_daily * 1000.0,
        bill_bare * 1000.0,
        consolidated / bill_bare
    ))
}

/// October 2026 (UTC), as unix seconds.
const OCT_2026: (i64, i64) = (1_790_812_800, 1_793_491_200);

async fn bench_scale(sizes: &[u64], tracking_ids: u64, seals: u64, keep: bool) -> Result<()> {
    let mut lines = Vec::new();
    for &rows in sizes {
        let db = stack::clickhouse(format!("bench_scale_{}_{rows}", stack::stamp()));
        warehouse::migrate(&db).await?;
        let c = db.client();
        let d = &db.database;
        // four partitions, claimed once, checkpointed past every row
        c.query(&format!(
            "INSERT INTO {d}.aggregator_claims (topic, partition, epoch, start_offset, member, claim_id, claimed_at) \
             SELECT 'bench', number, 1, 0, 'bench', number + 1, now() FROM numbers(4)"
        ))
        .execute()
        .await?;
        c.query(&format!(
            "INSERT INTO {d}.aggregator_checkpoints (topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at) \
             SELECT 'bench', number, 1, 1000000000, 0, 0, 'bench', now() FROM numbers(4)"
        ))
        .execute()
        .await?;
        // as a flush writes them: per tracking id a row per minute window, in
        // 3 fragments (flushes) per window, over 2 streams x 2 clusters x 2
        // protocols; the window walks the month as the row number grows, and
        // each row was inserted by the flush after its window closed
        let flushed = 65;
        let t = Instant::now();
        let minutes = (OCT_2026.1 - OCT_2026.0) / 60;
        let per_window = tracking_ids * 3;
        c.query(&format!(
            "INSERT INTO {d}.usage_by_tracking_log (window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, \
             events, src_topic, src_partition, src_epoch, src_offset, inserted_at) \
             SELECT toDateTime({start} + (intDiv(number, {per_window}) % {minutes}) * 60) AS w, concat('t-', toString(number % {tracking_ids})), 'acct', \
             concat('live-', toString(intDiv(number, 7) % 2)), concat('c-', toString(intDiv(number, 11) % 2)), if(intDiv(number, 13) % 2 = 0, 'WEBRTC', 'SRT'), \
             1000 + number % 1000, 10, 1, 'bench', number % 4, 1, 1 + intDiv(number, 4000), w + {flushed} FROM numbers({rows})",
            start = OCT_2026.0
        ))
        .execute()
        .await?;
        // and each row's viewer, as the viewer table holds it (one viewer per
        // tracking id's row; 100 viewers per tracking id)
        c.query(&format!(
            "INSERT INTO {d}.usage_by_viewer_log (window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, \
             bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at) \
             SELECT toDateTime({start} + (intDiv(number, {per_window}) % {minutes}) * 60) AS w, concat('t-', toString(number % {tracking_ids})), '', \
             concat('v-', toString(number % ({tracking_ids} * 100))), 'acct', concat('live-', toString(intDiv(number, 7) % 2)), \
             concat('c-', toString(intDiv(number, 11) % 2)), 1000 + number % 1000, 10, 1, 'bench', number % 4, 1, 1 + intDiv(number, 4000), \
             w + {flushed} FROM numbers({rows})",
            start = OCT_2026.0
        ))
        .execute()
        .await?;
        // the tail: what the flushes wrote since the last checkpoint a seal can
        // use, with a seal every 5 minutes at most two intervals: the month's
        // rows of 10 minutes (at least 1,000), at the server's clock as the
        // aggregator writes, at offsets past the checkpoints
        let tail = (rows * 10 / minutes as u64).max(1000);
        for (log, cols, vals) in [
            ("usage_by_tracking_log", "protocol", "'WEBRTC'"),
            ("usage_by_viewer_log", "custom_viewer_data, viewer_id", "'', concat('v-', toString(number % 100))"),
        ] {
            c.query(&format!(
                "INSERT INTO {d}.{log} (window_start, tracking_id, account_id, stream_name, cluster, {cols}, bytes_out, bytes_in, events, \
                 src_topic, src_partition, src_epoch, src_offset) \
                 SELECT toDateTime({end} - 60), concat('t-', toString(number % {tracking_ids})), 'acct', concat('live-', toString(number % 2)), \
                 'c-0', {vals}, 1000, 10, 1, 'bench', number % 4, 1, 1000000001 + intDiv(number, 4) FROM numbers({tail})",
                end = OCT_2026.1
            ))
            .execute()
            .await?;
        }
        let insert_s = t.elapsed().as_secs_f64();
        // the baseline: the same usage pre-aggregated per tracking id and hour
        c.query(&format!(
            "CREATE TABLE {d}.bench_hourly (tracking_id String, hour DateTime('UTC'), bytes_out UInt64) \
             ENGINE = SummingMergeTree ORDER BY (tracking_id, hour)"
        ))
        .execute()
        .await?;
        c.query(&format!(
            "INSERT INTO {d}.bench_hourly SELECT tracking_id, toStartOfHour(window_start) AS h, sum(bytes_out) \
             FROM {d}.usage_by_tracking_log GROUP BY tracking_id, h"
        ))
        .execute()
        .await?;
        c.query(&format!("OPTIMIZE TABLE {d}.bench_hourly FINAL")).execute().await?;
        let bytes: u64 = c
            .query(&format!(
                "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{d}' AND table = 'usage_by_tracking_log' AND active"
            ))
            .fetch_one()
            .await?;
        eprintln!("{rows} log rows inserted in {insert_s:.1} s ({bytes} bytes on disk)");
        let waited = merges_settled(&c, d).await?;
        eprintln!("background merges settled after {waited:.1} s");

        // one id's hourly month: the statistics API's query, without and with
        // the predicate setting readers set, next to the pre-aggregated table
        let one = "t-7";
        let series = format!(
            "SELECT tracking_id AS key, stream_name AS other, toUInt32(hour) AS bucket, sum(bytes_out) AS bo \
             FROM {d}.usage_by_tracking_hourly WHERE tracking_id IN (?) AND hour >= toDateTime(?) AND hour < toDateTime(?) \
             GROUP BY key, other, bucket"
        );
        let series_with = |push: bool| {
            let q = if push {
                c.clone().with_option("enable_optimize_predicate_expression", "1")
            } else {
                c.clone().with_option("enable_optimize_predicate_expression", "0")
            };
            let series = series.clone();
            move || {
                let q = q.clone();
                let series = series.clone();
                async move {
                    let n: u64 =
                        q.query(&format!("SELECT count() FROM ({series})")).bind(one).bind(OCT_2026.0).bind(OCT_2026.1).fetch_one().await?;
                    Ok(n)
                }
            }
        };
        let (plain, n1) = best_of_3(series_with(false)).await?;
        let (pushed, n2) = best_of_3(series_with(true)).await?;
        anyhow::ensure!(n1 == n2 && n1 > 0, "the series has {n1} / {n2} points");
        let (bare, _) = best_of_3(|| {
            let c = c.clone();
            async move {
                let n: u64 = c
                    .query(&format!(
                        "SELECT count() FROM {d}.bench_hourly WHERE tracking_id = ? AND hour >= toDateTime(?) AND hour < toDateTime(?)"
                    ))
                    .bind(one)
                    .bind(OCT_2026.0)
                    .bind(OCT_2026.1)
                    .fetch_one()
                    .await?;
                Ok(n)
            }
        })
        .await?;
        // billing a month: the snapshot and every tracking id's bytes
        let store = billing::store::Store::new(&db)?;
        let bill_month = || bill_october(store.clone());
        let (bill, usage) = best_of_3(bill_month).await?;
        anyhow::ensure!(usage.len() as u64 == tracking_ids, "billing saw {} tracking ids", usage.len());
        let (bill_bare, _) = best_of_3(|| {
            let c = c.clone();
            async move {
                let n: u64 = c
                    .query(&format!("SELECT count() FROM (SELECT tracking_id, sum(bytes_out) FROM {d}.bench_hourly GROUP BY tracking_id)"))
                    .fetch_one()
                    .await?;
                Ok(n)
            }
        })
        .await?;
        // sealed: the same questions once `aggregator seal` folded the log
        let t = Instant::now();
        let report = aggregator::seal::seal(&db, 600).await?.map_err(|skipped| anyhow::anyhow!("the seal did not run: {skipped:?}"))?;
        let seal_s = t.elapsed().as_secs_f64();
        eprintln!("sealed {} partitions in {seal_s:.1} s: {:?}", report.moved.len(), report.tables);
        let waited = merges_settled(&c, d).await?;
        eprintln!("background merges settled after {waited:.1} s");
        let (sealed_series, n3) = best_of_3(series_with(true)).await?;
        anyhow::ensure!(n3 == n1, "the sealed series has {n3} points, the log's {n1}");
        let (sealed_bill, sealed_usage) = best_of_3(bill_month).await?;
        anyhow::ensure!(sealed_usage == usage, "billing reads the same usage sealed and unsealed");
        let pushed_client = runtime::ch::predicates_pushed(c.clone());
        let timed = |sql: String| {
            let q = pushed_client.clone();
            move || {
                let (q, sql) = (q.clone(), sql.clone());
                async move {
                    let n: u64 = q.query(&format!("SELECT count() FROM ({sql})")).fetch_one().await?;
                    Ok(n)
                }
            }
        };
        let (id_year, _) = best_of_3(timed(format!(
            "SELECT day, sum(bytes_out) FROM {d}.usage_by_tracking_daily WHERE tracking_id = '{one}' \
             AND day >= toDate('2026-01-01') AND day < toDate('2027-01-01') GROUP BY day"
        )))
        .await?;
        let stream_sql = format!(
            "SELECT day, sum(bytes_out) FROM {d}.usage_by_stream_daily WHERE account_id = 'acct' AND stream_name = 'live-1' \
             AND day >= toDate('2026-10-01') AND day < toDate('2026-11-01') GROUP BY day"
        );
        let (stream_month, n4) = best_of_3(timed(stream_sql.clone())).await?;
        anyhow::ensure!(n4 > 0, "one stream has no day of usage");
        // billing's reconciliation of the month (every check), sealed
        let t = Instant::now();
        let checks = billing::reconcile::reconcile(&store, &billing::rates::RateCard { partners: vec![] }, "2026-10").await?;
        let reconcile_s = t.elapsed().as_secs_f64();
        let failed: Vec<&str> = checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
        anyhow::ensure!(failed.is_empty(), "reconcile failed: {failed:?}");
        // and again: the log rows below the seal were counted and recorded by
        // the first run (migration 12); this one counts the tail
        let t = Instant::now();
        let again = billing::reconcile::reconcile(&store, &billing::rates::RateCard { partners: vec![] }, "2026-10").await?;
        let reconcile_again_s = t.elapsed().as_secs_f64();
        let failed: Vec<&str> = again.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
        anyhow::ensure!(failed.is_empty(), "the second reconcile failed: {failed:?}");
        // and `--recount`: every log row again, and the minute views whole
        // (what every run read before migration 14, less the rollups' grouping)
        let t = Instant::now();
        let recount = billing::reconcile::reconcile_with(
            &store,
            &billing::rates::RateCard { partners: vec![] },
            "2026-10",
            billing::store::log_count::LogCounting::Recount,
        )
        .await?;
        let recount_s = t.elapsed().as_secs_f64();
        let failed: Vec<&str> = recount.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
        anyhow::ensure!(failed.is_empty(), "the recount failed: {failed:?}");
        // the rollups' month per tracking id, as reconciliation reads them,
        // on the views and on the same views with the GROUP BY by their whole
        // key they had before migration 14 (created here, for the baseline)
        let rollups = [
            (
                "usage_by_tracking_hourly",
                "usage_by_tracking_hourly_sealed",
                "toStartOfHour(window_start) AS hour",
                "usage_by_tracking_tail",
                "hour, tracking_id, account_id, stream_name, cluster, protocol",
            ),
            (
                "usage_by_tracking_daily",
                "usage_by_tracking_daily_sealed",
                "toDate(window_start) AS day",
                "usage_by_tracking_tail",
                "day, tracking_id, account_id, stream_name, cluster, protocol",
            ),
            (
                "usage_by_stream_daily",
                "usage_by_stream_daily_sealed",
                "toDate(window_start) AS day",
                "usage_by_tracking_tail",
                "day, account_id, stream_name, tracking_id, cluster, protocol",
            ),
            (
                "usage_by_viewer_daily",
                "usage_by_viewer_daily_sealed",
                "toDate(window_start) AS day",
                "usage_by_viewer_tail",
                "day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster",
            ),
        ];
        for (view, sealed, time, tail, key) in rollups {
            let rest = key.split_once(", ").expect("a time column first").1;
            c.query(&format!(
                "CREATE VIEW {d}.bench_grouped_{view} AS SELECT {key}, sum(bytes_out) AS bytes_out FROM ( \
                 SELECT {key}, bytes_out FROM {d}.{sealed} WHERE seal_id GLOBAL IN (SELECT seal_id FROM {d}.usage_seals) \
                 UNION ALL SELECT {time}, {rest}, bytes_out FROM {d}.{tail}) GROUP BY {key}"
            ))
            .execute()
            .await?;
        }
        let month_per_id = |grouped: bool| {
            let q = pushed_client.clone();
            move || {
                let q = q.clone();
                async move {
                    let mut n = 0u64;
                    for (view, .., key) in rollups {
                        let col = key.split_once(", ").expect("a time column first").0;
                        let (name, bound) = if col == "day" { ("toDate", "'2026-10-01'") } else { ("toDateTime", "'2026-10-01 00:00:00'") };
                        let end = if col == "day" { "'2026-11-01'" } else { "'2026-11-01 00:00:00'" };
                        let from = if grouped { format!("{d}.bench_grouped_{view}") } else { format!("{d}.{view}") };
                        let k: u64 = q
                            .query(&format!(
                                "SELECT count() FROM (SELECT tracking_id, sum(bytes_out) FROM {from} \
                                 WHERE {col} >= {name}({bound}) AND {col} < {name}({end}) GROUP BY tracking_id)"
                            ))
                            .fetch_one()
                            .await?;
                        n += k;
                    }
                    Ok(n)
                }
            }
        };
        let (flat_s, flat_n) = best_of_3(month_per_id(false)).await?;
        let (grouped_s, grouped_n) = best_of_3(month_per_id(true)).await?;
        anyhow::ensure!(flat_n == grouped_n && flat_n == 4 * tracking_ids, "the rollups answered {flat_n} / {grouped_n} keys");
        // storage of the sealed tables next to the log's
        let sealed_bytes: u64 = c
            .query(&format!("SELECT sum(bytes_on_disk) FROM system.parts WHERE database = '{d}' AND endsWith(table, '_sealed') AND active"))
            .fetch_one()
            .await?;
        let ms = |s: f64| format!("{:.0} ms", s * 1000.0);
        lines.push(format!(
            "| {rows} log rows, sealed: billing's reconciliation of the month ({} checks): the first (counts every log row once) / the next (rows since the seal) | {} / {} | {} (`--recount`: every log row, and the minute views whole) | {:.1}x |",
            checks.len(),
            ms(reconcile_s),
            ms(reconcile_again_s),
            ms(recount_s),
            recount_s / reconcile_again_s
        ));
        lines.push(format!(
            "| {rows} log rows, sealed: the four rollups' month per tracking id (hourly, daily, by stream, viewer daily; reconciliation's reads) | {} | {} (the same views grouped by their whole key first, as before migration 14) | {:.1}x |",
            ms(flat_s),
            ms(grouped_s),
            grouped_s / flat_s
        ));
        lines.push(format!(
            "| {rows} log rows, sealed: storage per event (one event per log row) | {:.1} bytes in the log + {:.1} in the sealed tables | | |",
            bytes as f64 / rows as f64,
            sealed_bytes as f64 / rows as f64
        ));
        lines.push(format!(
            "| {rows} log rows, sealed (seal: {}): one id's hourly month / one id's daily year / one stream's daily month | {} / {} / {} | {} (pre-aggregated hourly table, one id's month) | {:.0}x |",
            ms(seal_s),
            ms(sealed_series),
            ms(id_year),
            ms(stream_month),
            ms(bare),
            sealed_series / bare
        ));
        lines.push(format!(
            "| {rows} log rows, sealed: billing's usage of a month | {} (unsealed {}) | {} | {:.0}x |",
            ms(sealed_bill),
            ms(bill),
            ms(bill_bare),
            sealed_bill / bill_bare
        ));
        lines.push(format!(
            "| {rows} log rows, {tracking_ids} tracking ids: one id's hourly month (statistics API query) | {} (predicates pushed: {}) | {} (pre-aggregated hourly table) | {:.0}x |",
            ms(plain),
            ms(pushed),
            ms(bare),
            pushed / bare
        ));
        lines.push(format!(
            "| {rows} log rows: billing's usage of a month (snapshot + per tracking id) | {} | {} | {:.0}x |",
            ms(bill),
            ms(bill_bare),
            bill / bill_bare
        ));
        if seals > 1 {
            lines.push(many_seals(&db, &store, tracking_ids, seals, bill_bare).await?);
        }
        // a year of seals every 5 minutes over a 64-partition topic, as
        // `aggregator seal` leaves it: within a year every month of the seal
        // above has been consolidated (a month is, once its plain seal is
        // `--consolidate-min-seals` seals old), which the consolidation here
        // does at once and then measures the floor of the consolidated
        // views' list of seals (migration 18); then the latest seal copied
        // 105,119 times (seals that found nothing new) with 60 idle
        // partitions added, every 49th a consolidation's commit (the default
        // of one every 48 seals), each seal's list floor 96 seals back (what
        // a consolidation every 48 seals records: the oldest plain seal with
        // rows, up to 48 seals before it); then the same questions again;
        // what they read above must not grow with the seals
        let t = Instant::now();
        let done = aggregator::consolidate::consolidate(&db, 1, 600)
            .await?
            .map_err(|skipped| anyhow::anyhow!("the consolidation before the year of seals did not run: {skipped:?}"))?;
        eprintln!("consolidated {} months in {:.1} s before the year of seals", done.months.len(), t.elapsed().as_secs_f64());
        let year = 365 * 24 * 12 - 1;
        c.query(&format!(
            "INSERT INTO {d}.usage_seals (seal_id, seq, topics, partitions, sealed_to, sealed_at, tail_since, legacy_drained, list_floor, consolidated) \
             SELECT 13835058055282163712 + n, seq + n, arrayConcat(topics, arrayMap(x -> 'bench-idle', range(60))), \
             arrayConcat(partitions, arrayMap(x -> toUInt32(x), range(60))), arrayConcat(sealed_to, arrayMap(x -> toUInt64(1), range(60))), \
             sealed_at, tail_since, legacy_drained, toUInt64(greatest(toInt64((SELECT max(floor) FROM {d}.usage_seal_list_floor)), toInt64(seq + n) - 96)), n % 49 = 0 \
             FROM (SELECT seq, topics, partitions, sealed_to, sealed_at, tail_since, legacy_drained FROM {d}.usage_seals ORDER BY seq DESC LIMIT 1) \
             ARRAY JOIN arrayMap(x -> x + 1, range({year})) AS n"
        ))
        .execute()
        .await?;
        // the consolidations listed, as each writes itself before its commit
        aggregator::consolidate::list_consolidations(&c, d).await?;
        // and their heads, as each seal writes its own after its commit
        // (migration 17: the latest head, each with the oldest `tail_since`
        // of the 8 seals up to it; migration 18: and the oldest list floor,
        // here the seal's own, 7 seals later than the oldest of 8), then
        // merged as the server's background merges keep them: one seal's
        // head every 5 minutes, one row
        c.query(&format!(
            "INSERT INTO {d}.usage_seal_head (seq, covers, topics, partitions, sealed_to, tail_floor, drained, list_floor) \
             SELECT seq, covers, topics, partitions, sealed_to, tail_since, legacy_drained, list_floor FROM {d}.usage_seals \
             WHERE seq > (SELECT max(seq) FROM {d}.usage_seal_head) AND consolidated = 0 ORDER BY seq"
        ))
        .execute()
        .await?;
        c.query(&format!("OPTIMIZE TABLE {d}.usage_seal_head FINAL")).execute().await?;
        let (year_series, n5) = best_of_3(series_with(true)).await?;
        anyhow::ensure!(n5 == n1, "after a year of seals the series has {n5} points, the log's {n1}");
        let (year_stream, n6) = best_of_3(timed(stream_sql.clone())).await?;
        anyhow::ensure!(n6 == n4, "after a year of seals one stream has {n6} days, before {n4}");
        let (year_bill, year_usage) = best_of_3(bill_month).await?;
        anyhow::ensure!(year_usage == usage, "billing reads the same usage after a year of seals");
        lines.push(format!(
            "| {rows} log rows, sealed, then a year of 5-minute seals ({} commits, 64 partitions): one id's hourly month / one stream's daily month / billing's month | {} / {} / {} | {} / {} / {} (one seal, above) | {:.1}x |",
            year + 1,
            ms(year_series),
            ms(year_stream),
            ms(year_bill),
            ms(sealed_series),
            ms(stream_month),
            ms(sealed_bill),
            year_stream / stream_month
        ));
        if keep {
            eprintln!("kept the database {d}");
        } else {
            let _ = db.server_client().query(&format!("DROP DATABASE IF EXISTS {d}")).execute().await;
        }
    }
    header();
    for l in lines {
        println!("{l}");
    }
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
        .unwrap_or(0)
}

fn memory(viewers: usize) -> Result<()> {
    let before = rss_kib();
    let mut d = Dedup::new(aggregator::dedup::Horizon { ms: 86_400_000, offsets: 2_000_000 });
    for v in 0..viewers {
        let id = format!("s1-partner-{}-{v}-0", v % 10);
        for seq in 0..30 {
            let at = aggregator::dedup::At { arrival_ms: 1_764_000_000_000 + seq * 10_000, offset: (v * 30) as i64 + seq };
            d.check_and_insert(&id, seq, at);
        }
    }
    d.mark_clean();
    let after = rss_kib();
    header();
    println!(
        "| dedup state, {viewers} active viewers x 30 reports | {} MiB RSS | {} MiB RSS before | {:.0} bytes/viewer |",
        after / 1024,
        before / 1024,
        (after - before) as f64 * 1024.0 / viewers as f64
    );
    std::hint::black_box(&d);
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown cpu".into());
    format!("{} cores, {cpu}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

fn codec(events: usize, rounds: usize, profile: bool) -> Result<()> {
    let codec = Codec::new();
    // realistic events: the simulator's, many viewers
    let cfg = SimConfig {
        partners: 10,
        viewers_per_partner: 2000,
        untracked_viewers: 1000,
        duration_secs: 6 * 3600,
        session_secs: (600, 3600),
        ..Default::default()
    };
    let msgs: Vec<Vec<u8>> = Messages::new(&cfg)
        .filter_map(|m| match m {
            SimMessage::Valid(ev) => Some(codec.encode_to_vec(&ev)),
            _ => None,
        })
        .take(events)
        .collect();
    let n = msgs.len();
    let bytes: usize = msgs.iter().map(|m| m.len()).sum();
    eprintln!("{n} events, {:.0} bytes each on average", bytes as f64 / n as f64);
    let limits = Limits {
        window_secs: 60,
        dedup_horizon: aggregator::dedup::Horizon { ms: 86_400_000, offsets: 2_000_000 },
        max_lateness_ms: 35 * 86_400_000,
        max_future_ms: 3_600_000,
        max_event_bytes: schemas::validate::DEFAULT_MAX_EVENT_BYTES,
    };
    let now = 1_900_000_000_000;

    let best = |f: &mut dyn FnMut() -> u64| -> f64 {
        let mut best = f64::MAX;
        for _ in 0..rounds {
            let t = Instant::now();
            std::hint::black_box(f());
            best = best.min(t.elapsed().as_secs_f64());
        }
        best
    };
    // project: the aggregator's hot path (decode, validate, dedup, window update)
    let ours = best(&mut || {
        let mut st = PartitionState::new(0, 1, 0, i64::MIN, i64::MIN, Dedup::new(limits.dedup_horizon));
        for (i, m) in msgs.iter().enumerate() {
            st.process(i as i64, Some(now), m, &codec, &limits);
        }
        st.pending_rows() as u64
    });
    if profile {
        eprintln!("hot path only: {:.0} events/s", n as f64 / ours);
        return Ok(());
    }
    // project: decode only
    let decode_only = best(&mut || {
        let mut s = 0u64;
        for m in &msgs {
            s += codec.decode(m).map(|e| e.bytes_out as u64).unwrap_or(0);
        }
        s
    });
    // baseline: apache-avro generic decode of the same bytes (no window update)
    let schema = &codec.current().schema;
    let generic = best(&mut || {
        let mut s = 0u64;
        for m in &msgs {
            let mut body = &m[schemas::codec::HEADER_LEN..];
            if apache_avro::from_avro_datum(schema, &mut body, None).is_ok() {
                s += 1;
            }
        }
        s
    });
    let rate = |secs: f64| n as f64 / secs;
    header();
    println!(
        "| decode + validate + dedup + window update (1 core) | {:.0} events/s | {:.0} events/s (apache-avro from_avro_datum) | {:.1}x |",
        rate(ours),
        rate(generic),
        generic / ours
    );
    println!(
        "| decode only (1 core) | {:.0} events/s | {:.0} events/s (apache-avro from_avro_datum) | {:.1}x |",
        rate(decode_only),
        rate(generic),
        generic / decode_only
    );
    Ok(())
}
