//! Exactly once under every arrival order and fault (issue 16), against the
//! real broker and ClickHouse. The events come from a producer written here,
//! not from the project's simulator, and the expected totals are computed
//! here from what was sent.
//!
//! - a stream spanning 27 days of event time, viewers interleaved, 10%
//!   reordered, 5% duplicates re-sent after all originals, poison records;
//! - SIGKILL right after each step of the write sequence, then a restart;
//! - a stale owner: paused (SIGSTOP) with rows pending while another member
//!   takes over, then resumed;
//! - two owners of one partition against the real ClickHouse, the
//!   superseded one's batch landing after the successor's claim;
//! - a checkpoint past the end of the Kafka log;
//! - events over the per-event byte maximum at every entry.

use aggregator::core::Core;
use aggregator::metrics::Metrics;
use aggregator::sink::Sink;
use aggregator::store::Store;
use aggregator::tables::Table;
use aggregator::AggregatorConfig;
use e2e::*;
use rdkafka::consumer::Consumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use schemas::validate::DEFAULT_MAX_EVENT_BYTES;
use schemas::{Codec, Protocol, ViewerUsage};
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

const DAY_MS: i64 = 86_400_000;

/// One report as this test's producer builds it.
#[derive(Clone)]
struct Report {
    viewer: String,
    seq: i64,
    start_ms: i64,
    bytes_out: i64,
    bytes_in: i64,
    tracking: Option<String>,
    cvd: Option<String>,
}

impl Report {
    fn encode(&self, codec: &Codec) -> Vec<u8> {
        codec.encode_to_vec(&ViewerUsage {
            viewer_id: self.viewer.as_str().into(),
            seq: self.seq,
            interval_start: self.start_ms,
            interval_end: self.start_ms + 10_000,
            bytes_out: self.bytes_out,
            bytes_in: self.bytes_in,
            account_id: "acct-x".into(),
            stream_name: "finale".into(),
            cluster: "ams-2".into(),
            server_id: "ams-2-edge-1".into(),
            protocol: Protocol::Webrtc,
            token_id: None,
            tracking_id: self.tracking.as_deref().map(Into::into),
            custom_viewer_data: self.cvd.as_deref().map(Into::into),
        })
    }
}

/// What a topic should add up to.
#[derive(Default, Debug)]
struct Want {
    events: u64,
    poison: u64,
    by_tracking: BTreeMap<String, Sums>,
    by_viewer: BTreeMap<String, Sums>,
    /// key: "epoch-seconds-of-hour|tracking"
    by_hour: BTreeMap<String, Sums>,
    /// key: "YYYY-MM-DD|tracking"
    by_day: BTreeMap<String, Sums>,
    /// key: "YYYY-MM-DD|viewer"
    by_viewer_day: BTreeMap<String, Sums>,
}

fn add(m: &mut BTreeMap<String, Sums>, k: String, r: &Report) {
    let s = m.entry(k).or_default();
    s.bytes_out = s.bytes_out.checked_add(r.bytes_out as u64).unwrap();
    s.bytes_in = s.bytes_in.checked_add(r.bytes_in as u64).unwrap();
    s.events += 1;
}

impl Want {
    fn count(&mut self, r: &Report) {
        let t = r.tracking.clone().unwrap_or_default();
        let day = chrono::DateTime::from_timestamp_millis(r.start_ms).unwrap().format("%Y-%m-%d").to_string();
        self.events += 1;
        add(&mut self.by_tracking, t.clone(), r);
        add(&mut self.by_viewer, r.viewer.clone(), r);
        add(&mut self.by_hour, format!("{}|{t}", r.start_ms / 3_600_000 * 3600), r);
        add(&mut self.by_day, format!("{day}|{t}"), r);
        add(&mut self.by_viewer_day, format!("{day}|{}", r.viewer), r);
    }
}

/// A tiny deterministic generator (xorshift), independent of the project's.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `viewers` viewers, each reporting every 10 s for `reports` reports from a
/// start spread over 27 days (a twentieth of them on a media server whose
/// clock runs a day ahead); the stream interleaves viewers at random, then
/// 10% of it is reordered, then 5% duplicates are re-sent after all
/// originals; one record in a thousand is poison.
fn interleaved_days(seed: u64, run: &str, viewers: usize, reports: usize) -> (Vec<(String, Vec<u8>)>, Want) {
    let mut rng = Rng(seed | 1);
    let codec = Codec::new();
    let day0 = 1_790_812_800_000; // 2026-10-01T00:00:00Z
    let mut per_viewer: Vec<Vec<Report>> = (0..viewers)
        .map(|v| {
            let ahead = if v % 20 == 0 { DAY_MS } else { 0 };
            let start = day0 + rng.below(26 * DAY_MS as u64) as i64 + ahead;
            let tracking = match v % 5 {
                0 => None,
                n => Some(format!("{run}-partner-{n}")),
            };
            let cvd = (v % 3 == 0).then(|| format!("{{\"seat\":{v}}}"));
            (0..reports)
                .map(|seq| Report {
                    viewer: format!("{run}-viewer-{v}"),
                    seq: seq as i64,
                    start_ms: start + seq as i64 * 10_000,
                    bytes_out: 50_000 + rng.below(5_000_000) as i64,
                    bytes_in: rng.below(4_000) as i64,
                    tracking: tracking.clone(),
                    cvd: cvd.clone(),
                })
                .rev()
                .collect()
        })
        .collect();
    // interleave: pick a random viewer with reports left, send its next one
    let mut stream = Vec::with_capacity(viewers * reports);
    let mut live: Vec<usize> = (0..viewers).collect();
    while !live.is_empty() {
        let i = rng.below(live.len() as u64) as usize;
        match per_viewer[live[i]].pop() {
            Some(r) => stream.push(r),
            None => {
                live.swap_remove(i);
            }
        }
    }
    // reorder 10%: swap with a report up to 500 places later
    let n = stream.len();
    for _ in 0..n / 20 {
        let i = rng.below(n as u64) as usize;
        let j = (i + 1 + rng.below(500) as usize).min(n - 1);
        stream.swap(i, j);
    }
    let mut want = Want::default();
    for r in &stream {
        want.count(r);
    }
    let dups: Vec<Report> = (0..n / 20).map(|_| stream[rng.below(n as u64) as usize].clone()).collect();
    let mut out = Vec::with_capacity(n + dups.len() + n / 1000);
    for r in stream.iter().chain(&dups) {
        if rng.below(1000) == 0 {
            out.push((format!("{run}-poison-{}", out.len()), b"\xC3\x01not avro at all".to_vec()));
            want.poison += 1;
        }
        out.push((r.viewer.clone(), r.encode(&codec)));
    }
    (out, want)
}

/// Produce `(key, payload)` records as an external producer would.
async fn produce(topic: &str, records: &[(String, Vec<u8>)]) {
    produce_with(topic, records, false).await
}

/// [`produce`], optionally stamping each record with its event's
/// `interval_start` as the Kafka timestamp (as some producers do), so that
/// record timestamps jump back and forth over days.
async fn produce_with(topic: &str, records: &[(String, Vec<u8>)], event_time_stamps: bool) {
    let codec = Codec::new();
    let p: FutureProducer = producer_config()
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .set("compression.type", "none")
        .create()
        .expect("producer");
    let mut last = 1_790_812_800_000;
    let stamps: Vec<i64> = records
        .iter()
        .map(|(_, v)| {
            if let Ok(ev) = codec.decode(v) {
                last = ev.interval_start;
            }
            last
        })
        .collect();
    for (chunk, stamps) in records.chunks(20_000).zip(stamps.chunks(20_000)) {
        let sends = chunk.iter().zip(stamps).map(|((k, v), &ts)| {
            let mut r = FutureRecord::to(topic).key(k).payload(v);
            if event_time_stamps {
                r = r.timestamp(ts);
            }
            p.send(r, Duration::from_secs(60))
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| e).expect("delivered");
        }
    }
}

/// Every table and view an analyst or billing reads equals `want`.
async fn assert_exact(db: &runtime::ch::ClickHouseConfig, want: &Want, timeout: Duration) {
    let got = wait_for_events(db, want.events, timeout).await;
    assert_eq!(got, want.events, "events counted once each");
    assert_eq!(sums_by(db, "usage_by_tracking", "tracking_id").await, want.by_tracking, "usage_by_tracking per tracking id");
    assert_eq!(sums_by(db, "usage_by_viewer", "viewer_id").await, want.by_viewer, "usage_by_viewer per viewer");
    let hourly = sums_by(db, "usage_by_tracking_hourly", "concat(toString(toUInt32(hour)), '|', tracking_id)").await;
    assert_eq!(hourly, want.by_hour, "hourly rollup per hour and tracking id");
    let daily = sums_by(db, "usage_by_tracking_daily", "concat(toString(day), '|', tracking_id)").await;
    assert_eq!(daily, want.by_day, "daily rollup per day and tracking id");
    let vdaily = sums_by(db, "usage_by_viewer_daily", "concat(toString(day), '|', viewer_id)").await;
    assert_eq!(vdaily, want.by_viewer_day, "daily viewer rollup per day and viewer");
    let dl = format!("SELECT count() FROM {}.usage_dead_letters", db.database);
    assert!(wait_until(Duration::from_secs(30), || async { count(db, &dl).await >= want.poison }).await);
    assert_eq!(count(db, &dl).await, want.poison, "each poison record dead-lettered once");
}

/// Rows of a batch whose checkpoint was never written (the partial batch a crash left).
async fn rows_without_checkpoint(db: &runtime::ch::ClickHouseConfig, table: Table) -> u64 {
    let (p, e, o) = if table.is_data() { ("src_partition", "src_epoch", "src_offset") } else { ("partition", "epoch", "position") };
    count(
        db,
        &format!(
            "SELECT count() FROM {d}.{t} WHERE ({p}, {e}, {o}) NOT IN (SELECT partition, epoch, position FROM {d}.aggregator_checkpoints)",
            d = db.database,
            t = table.name()
        ),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_days_with_late_duplicates_are_exact_in_every_table() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("eo_days");
    create_topic(&topic, 4).await;
    let db = test_db().await;
    let (records, want) = interleaved_days(0x5eed_0001, &topic, 1000, 300);
    assert!(want.events == 300_000 && records.len() > 315_000, "{} events, {} records", want.events, records.len());
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    produce(&topic, &records).await;
    assert_exact(&db, &want, Duration::from_secs(600)).await;
    drop_db(&db).await;
}

/// The same, from a producer that stamps every record with its event's
/// time: record timestamps jump over 27 days in arrival order, so a
/// horizon measured by them alone would forget active viewers. The record
/// horizon (`dedup_horizon_records`) keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_stamped_with_event_time_still_dedup_exactly() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("eo_stamped");
    create_topic(&topic, 4).await;
    let db = test_db().await;
    let (records, want) = interleaved_days(0x5eed_0006, &topic, 500, 200);
    produce_with(&topic, &records, true).await;
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    assert_exact(&db, &want, Duration::from_secs(300)).await;
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_each_step_of_the_write_sequence_keeps_every_table_exact() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("eo_steps");
    create_topic(&topic, 4).await;
    let db = test_db().await;
    let (records, want) = interleaved_days(0x5eed_0002, &topic, 300, 200);
    produce(&topic, &records).await;
    // small, frequent batches: every run is killed long before the stream ends
    let fast = || vec![("AGGREGATOR__FLUSH_INTERVAL_MS", "300".to_string()), ("AGGREGATOR__FLUSH_MAX_ROWS", "2000".to_string())];
    // a seal killed after one of these steps after each crash
    let seal_kills = ["lock", "usage_by_tracking_sealed", "usage_by_viewer_sealed", "usage_by_viewer_daily_sealed", "commit"];
    assert!(seal_kills.iter().all(|s| aggregator::seal::seal_steps().contains(s)));
    for (i, table) in [Table::DeadLetters, Table::Viewer, Table::Tracking, Table::Dedup, Table::Checkpoints].into_iter().enumerate() {
        let before = rows_without_checkpoint(&db, table).await;
        let mut env = fast();
        env.push(("AGGREGATOR_FAULT_KILL_AFTER", format!("{}:2", table.name())));
        let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &env);
        let status = agg.wait_exit(Duration::from_secs(120)).expect("the injected fault killed the aggregator");
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL after the 2nd insert into {}", table.name());
        if table != Table::Checkpoints {
            // the batch stopped half-way: rows of it are in the table, its checkpoint is not
            let partial = rows_without_checkpoint(&db, table).await;
            assert!(partial > before, "{}: a partial batch was left behind ({before} -> {partial})", table.name());
        }
        let counted = count(&db, &format!("SELECT sum(events) FROM {}.usage_by_tracking", db.database)).await;
        assert!(counted < want.events, "killed mid-stream after {}: {counted} of {}", table.name(), want.events);
        // a seal killed at one of its steps (a different one each time), then
        // one that completes: what every reader sees never changes
        let step = seal_kills[i];
        let killed = run_seal(&db, Some(step));
        assert_eq!(killed.signal(), Some(9), "the seal was killed after its step {step}");
        assert_sealed_equals_unsealed(&db).await;
        assert!(run_seal(&db, None).success(), "a seal after the killed one");
        assert_sealed_equals_unsealed(&db).await;
    }
    let sealed = format!("SELECT count() FROM {}.usage_seals", db.database);
    let n = count(&db, &sealed).await;
    assert!(n >= 5, "a seal committed after each crash: {n}");
    // the rest of the stream with a seal every second alongside
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &fast());
    let _sealer = Proc::spawn("aggregator", &["seal", "--every", "1"], &seal_env(&db));
    assert_exact(&db, &want, Duration::from_secs(300)).await;
    assert_sealed_equals_unsealed(&db).await;
    // what the crashes left behind is still in the tables, and does not count
    let raw = count(&db, &format!("SELECT sum(events) FROM {}.usage_by_tracking_log", db.database)).await;
    assert!(raw > want.events, "superseded rows are kept but invisible: {raw} raw vs {} counted", want.events);
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_member_that_resumes_after_a_takeover_adds_nothing() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("eo_pause");
    create_topic(&topic, 4).await;
    let db = test_db().await;
    let (records, want) = interleaved_days(0x5eed_0003, &topic, 400, 250);
    // member A: one flush every 15 s, so that it holds unwritten rows for
    // most of that time, and a pause can fall well between two flushes
    let port_a = free_port();
    let a = spawn_aggregator(
        &topic,
        &db,
        &unique("g"),
        &[
            ("AGGREGATOR__FLUSH_INTERVAL_MS", "15000".to_string()),
            ("AGGREGATOR__METRICS_LISTEN", format!("127.0.0.1:{port_a}")),
            ("AGGREGATOR__KAFKA__PROPERTIES__session.timeout.ms", "6000".to_string()),
        ],
    );
    // events keep arriving for at least 24 s, past A's first flush
    let producing = {
        let (topic, records) = (topic.clone(), records.clone());
        tokio::spawn(async move {
            for chunk in records.chunks(2_500) {
                produce(&topic, chunk).await;
                tokio::time::sleep(Duration::from_millis(600)).await;
            }
        })
    };
    let metrics = format!("http://127.0.0.1:{port_a}/metrics");
    // the sum of a metric's series (all label values), as A reports it
    let metric = |name: &'static str| {
        let metrics = metrics.clone();
        async move {
            let text = reqwest::get(&metrics).await.ok()?.text().await.ok()?;
            let values = text.lines().filter(|l| !l.starts_with('#')).filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                (series == name || series.strip_prefix(name)?.starts_with('{')).then(|| value.parse::<f64>().ok())?
            });
            Some(values.sum::<f64>())
        }
    };
    // A's first flush wrote checkpoints. A holds unwritten rows once it has
    // consumed messages past them (offsets start at 0, so a checkpoint's
    // position is the number of messages it covers), and its next flush is
    // then ~14 s away
    let checkpoints = format!("SELECT count() FROM {}.aggregator_checkpoints", db.database);
    assert!(wait_until(Duration::from_secs(60), || async { count(&db, &checkpoints).await > 0 }).await, "A made progress");
    let written =
        format!("SELECT sum(p) FROM (SELECT partition, max(position) AS p FROM {}.aggregator_checkpoints GROUP BY partition)", db.database);
    let written = count(&db, &written).await as f64;
    let holding = wait_until(Duration::from_secs(10), || async {
        metric("aggregator_events_total").await.is_some_and(|consumed| consumed > written)
    })
    .await;
    assert!(holding, "A consumed messages past its checkpoints");
    a.signal(19); // SIGSTOP
                  // B takes over (a group of its own: tansu may keep the paused member in A's group)
    let _b = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    producing.await.unwrap();
    assert_exact(&db, &want, Duration::from_secs(300)).await;
    // A resumes with its pending rows: they must not count
    a.signal(18); // SIGCONT
    let fenced = wait_until(Duration::from_secs(60), || async { metric("aggregator_fenced_total").await.is_some_and(|v| v > 0.0) }).await;
    assert!(fenced, "the resumed member found its partitions claimed by B");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exact(&db, &want, Duration::from_secs(60)).await;
    drop_db(&db).await;
}

/// Two owners of one partition, driven directly against the real ClickHouse
/// (no Kafka group, so no broker decides for them): A's batch lands after B
/// claimed the partition (a stale owner, or an insert orphaned by a crash),
/// and A's next flush is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_a_superseded_owner_after_the_claim_do_not_count() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let topic = unique("eo_two");
    let (records, want) = interleaved_days(0x5eed_0004, &topic, 50, 40);
    let member = |m: &str| AggregatorConfig { member_id: m.into(), ..Default::default() };
    let sink = Sink::connect(&db, &topic).await.unwrap();
    let core = |m: &str| Core::new(&member(m), sink.clone(), Arc::new(Metrics::new()));
    let (mut a, mut b) = (core("a"), core("b"));
    a.assign(&[0]).await.unwrap();
    let third = records.len() / 3;
    for (o, (_, payload)) in records.iter().enumerate().take(third) {
        a.process(0, o as i64, Some(1_800_000_000_000), payload);
    }
    a.flush(true).await.unwrap();
    for (o, (_, payload)) in records.iter().enumerate().take(2 * third).skip(third) {
        a.process(0, o as i64, Some(1_800_000_000_000), payload);
    }
    let orphan = a.take_batch().expect("A holds a batch");
    // B claims from A's checkpoint and consumes everything
    let start = b.assign(&[0]).await.unwrap()[0].1.expect("A's checkpoint");
    assert_eq!(start, third as i64);
    for (o, (_, payload)) in records.iter().enumerate().skip(start as usize) {
        b.process(0, o as i64, Some(1_800_000_000_000), payload);
    }
    b.flush(true).await.unwrap();
    // A's batch lands now, after B's claim
    for table in Table::ORDER {
        Store::insert(&a.store, table, orphan.rows(table), &unique("orphan")).await.unwrap();
    }
    // and A's next flush finds the partition claimed
    for (o, (_, payload)) in records.iter().enumerate().skip(2 * third) {
        a.process(0, o as i64, Some(1_800_000_000_000), payload);
    }
    let e = a.flush(true).await.unwrap_err();
    assert!(matches!(e, aggregator::AggError::Fenced(ref p) if p == &[0]), "{e}");
    let raw = count(&db, &format!("SELECT sum(events) FROM {}.usage_by_tracking_log", db.database)).await;
    assert!(raw > want.events, "A's rows are in the table ({raw} raw events)");
    assert_exact(&db, &want, Duration::from_secs(10)).await;
    // a third owner resumes from B's checkpoint with B's dedup state
    let mut c = core("c");
    assert_eq!(c.assign(&[0]).await.unwrap()[0].1, Some(records.len() as i64));
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_past_the_log_end_is_refused_not_reset() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("eo_past");
    create_topic(&topic, 2).await;
    let db = test_db().await;
    let codec = Codec::new();
    // unique, valid reports only: each partition's event count is its log length
    let records: Vec<(String, Vec<u8>)> = (0..40)
        .flat_map(|v| (0..25).map(move |seq| (v, seq)))
        .map(|(v, seq)| {
            let r = Report {
                viewer: format!("{topic}-v{v}"),
                seq,
                start_ms: 1_790_812_800_000 + seq * 10_000,
                bytes_out: 1000,
                bytes_in: 1,
                tracking: Some("t".into()),
                cvd: None,
            };
            (r.viewer.clone(), r.encode(&codec))
        })
        .collect();
    produce(&topic, &records).await;
    let reader = topic_reader(&topic, 2);
    let high: Vec<i64> = (0..2).map(|p| reader.fetch_watermarks(&topic, p, Duration::from_secs(10)).unwrap().1).collect();
    assert_eq!(high.iter().sum::<i64>() as usize, records.len());
    // ClickHouse says partition 1 was read up to an offset its log never reached
    // (the topic was deleted and recreated under the same name)
    let past = 1_000_000u64;
    db.client()
        .query(&format!(
            "INSERT INTO {d}.aggregator_claims (topic, partition, epoch, start_offset, member, claimed_at) VALUES (?, 1, 1, 0, 'old', now())",
            d = db.database
        ))
        .bind(&topic)
        .execute()
        .await
        .unwrap();
    db.client()
        .query(&format!(
            "INSERT INTO {d}.aggregator_checkpoints (topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at) \
             VALUES (?, 1, 1, ?, 0, 0, 'old', now())",
            d = db.database
        ))
        .bind(&topic)
        .bind(past)
        .execute()
        .await
        .unwrap();
    let port = free_port();
    let log = std::env::temp_dir().join(format!("{}.log", unique("agg_past")));
    let mut env = aggregator_env(&topic, &db, &unique("g"));
    env.push(("AGGREGATOR__METRICS_LISTEN", format!("127.0.0.1:{port}")));
    // a user property that would turn the silent reset back on is ignored
    env.push(("AGGREGATOR__KAFKA__PROPERTIES__auto.offset.reset", "earliest".to_string()));
    let _agg = Proc::spawn_logged("aggregator", &["run"], &env, &log);
    // partition 0 is consumed exactly; partition 1 not at all
    let sql = format!("SELECT sum(events) FROM {}.usage_by_tracking", db.database);
    assert_eq!(wait_for_events(&db, high[0] as u64, Duration::from_secs(60)).await, high[0] as u64);
    assert_eq!(count(&db, &sql).await, high[0] as u64);
    let p1 = format!("SELECT count() FROM {}.usage_by_tracking_log WHERE src_partition = 1", db.database);
    assert_eq!(count(&db, &p1).await, 0, "nothing of partition 1 was re-read from 0");
    // not ready, with a reason; an error metric; a log line naming the partition and the offsets
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let r = reqwest::get(&readyz).await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("refused"), "{body}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "aggregator_partitions_refused 1"), "{metrics}");
    assert!(metrics.lines().any(|l| l.starts_with("aggregator_offset_errors_total ") && !l.ends_with(" 0")), "{metrics}");
    // the internal event is counted under its name, as often as it was logged
    let text = std::fs::read_to_string(&log).unwrap();
    let logged = text.lines().filter(|l| l.contains("PartitionRefused")).count();
    let counted = format!("metering_internal_events_total{{event=\"PartitionRefused\"}} {logged}");
    assert!(logged > 0 && metrics.lines().any(|l| l == counted), "{counted} in\n{metrics}");
    let text = std::fs::read_to_string(&log).unwrap();
    let line = text.lines().find(|l| l.contains("PartitionRefused")).unwrap_or_else(|| panic!("no PartitionRefused line in:\n{text}"));
    assert!(line.contains(&format!("checkpoint at offset {past}")) && line.contains(&format!("[0, {}]", high[1])), "{line}");
    assert!(text.contains("ignoring a kafka property"), "the override was refused loudly");
    drop_db(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_over_the_byte_maximum_are_refused_at_every_entry_and_sums_never_wrap() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("eo_max");
    create_topic(&topic, 1).await;
    let db = test_db().await;
    let huge = |viewer: &str, seq: i64, bytes: i64| Report {
        viewer: viewer.into(),
        seq,
        start_ms: 1_790_812_800_000,
        bytes_out: bytes,
        bytes_in: 0,
        tracking: Some("big".into()),
        cvd: None,
    };
    // UsageProducer refuses before producing
    let codec = Codec::new();
    let p = producer(&topic);
    let encoded = huge("v", 0, i64::MAX).encode(&codec);
    let ev = codec.decode(&encoded).unwrap();
    match p.send(&ev).await {
        Err(ingest::IngestError::Invalid(errs)) => assert_eq!(schemas::validate::code_of(&errs), "too_large"),
        other => panic!("UsageProducer accepted 2^63-1 bytes: {other:?}"),
    }
    // the gateway answers 400 naming the maximum
    let mut cfg = ingest::http::IngestConfig::default();
    cfg.kafka.brokers = brokers();
    cfg.kafka.topic = topic.clone();
    cfg.api_keys = vec!["max-test-key-0123456789abcdefghij".into()];
    let app = ingest::http::router(cfg).expect("router");
    let (url, server) = serve_router(app).await;
    let body = serde_json::json!([{
        "viewer_id": "v", "seq": 0, "interval_start": 1_790_812_800_000i64, "interval_end": 1_790_812_810_000i64,
        "bytes_out": i64::MAX, "bytes_in": 0, "account_id": "a", "stream_name": "s", "cluster": "c", "server_id": "x"
    }]);
    let r = reqwest::Client::new()
        .post(format!("{url}/v1/usage"))
        .bearer_auth("max-test-key-0123456789abcdefghij")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(text.contains("per-event maximum"), "{text}");
    server.abort();
    // a producer that skips validation: the aggregator dead-letters the
    // oversized reports (three of them would wrap a u64 sum) and counts the
    // largest allowed ones exactly
    let records: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| huge("over", i, i64::MAX))
        .chain((0..3).map(|i| huge("at-max", i, DEFAULT_MAX_EVENT_BYTES)))
        .map(|r| (r.viewer.clone(), r.encode(&codec)))
        .collect();
    produce(&topic, &records).await;
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    assert_eq!(wait_for_events(&db, 3, Duration::from_secs(60)).await, 3);
    let got = sums_by(&db, "usage_by_tracking", "tracking_id").await;
    assert_eq!(got["big"].bytes_out, 3 * DEFAULT_MAX_EVENT_BYTES as u64);
    let dl = format!("SELECT count() FROM {}.usage_dead_letters WHERE startsWith(reason, 'too_large')", db.database);
    assert!(wait_until(Duration::from_secs(30), || async { count(&db, &dl).await == 3 }).await, "three too_large dead letters");
    drop_db(&db).await;
}

/// Two members claim one partition at once, against the real ClickHouse: a
/// barrier in the claim makes both read the latest epoch before either
/// writes, so both take the same epoch (a stale member reloading after a
/// failed insert while Kafka gave the partition to another). Both consume
/// the rest of the partition and one batch lands before the collision is
/// seen; nothing is counted twice, the other's check finds the contest, and
/// its new claim finishes the stream exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_claiming_one_partition_at_once_count_nothing_twice() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    race(&db, &db).await;
    drop_db(&db).await;
}

/// The same on the replicated cluster (`scripts/stack up --cluster`), the
/// two members reaching different servers of the partition's shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_claiming_one_partition_at_once_on_the_replicated_cluster_count_nothing_twice() {
    let _stack = e2e::turns::shared().await;
    let _replicas = e2e::turns::replica_faults().await;
    let database = unique("mtr_race");
    let db = on_cluster_server(0, &database);
    warehouse::migrate(&db).await.expect("migrations on the cluster (scripts/stack up --cluster)");
    // partition 0 is on shard 1: servers 1 and 2 are its replicas
    race(&db, &on_cluster_server(1, &database)).await;
    let _ = db.server_client().query(&format!("DROP DATABASE IF EXISTS {database} ON CLUSTER metering")).execute().await;
}

/// Claim partition 0, again after a refusal (on a cluster, a quorum insert or
/// a consistent read may be refused for a moment); the resume position.
async fn claim_until_ok<S: Store>(core: &mut Core<S>) -> Option<i64> {
    for _ in 0..30 {
        match core.assign(&[0]).await {
            Ok(p) => return p[0].1,
            Err(e) => {
                eprintln!("claim refused, again in 1 s: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    panic!("partition 0 could not be claimed in 30 s");
}

/// A (through `db`) and B (through `db_b`) claim partition 0 at once.
async fn race(db: &runtime::ch::ClickHouseConfig, db_b: &runtime::ch::ClickHouseConfig) {
    let db = db.clone();
    let topic = unique("eo_race");
    let (records, want) = interleaved_days(0x5eed_0005, &topic, 50, 40);
    let member = |m: &str| AggregatorConfig { member_id: m.into(), ..Default::default() };
    let sink = Sink::connect(&db, &topic).await.unwrap();
    let sink_b = Sink::connect(db_b, &topic).await.unwrap();
    let mut a = Core::new(&member("a"), sink.clone(), Arc::new(Metrics::new()));
    a.assign(&[0]).await.unwrap();
    let third = records.len() / 3;
    for (o, (_, payload)) in records.iter().enumerate().take(third) {
        a.process(0, o as i64, Some(1_800_000_000_000), payload);
    }
    a.flush(true).await.unwrap();
    a.drop_all_state();
    // A claims again while B is given the partition: both read, then both write
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut a = Core::new(&member("a"), sink.clone().with_claim_barrier(barrier.clone()), Arc::new(Metrics::new()));
    let mut b = Core::new(&member("b"), sink_b.clone().with_claim_barrier(barrier), Arc::new(Metrics::new()));
    let (from_a, from_b) = tokio::join!(a.assign(&[0]), b.assign(&[0]));
    let claims_sql = format!("SELECT count() FROM {}.aggregator_claims WHERE partition = 0", db.database);
    let epochs_sql = format!("SELECT uniqExact(epoch) FROM {}.aggregator_claims WHERE partition = 0", db.database);
    let collided = from_a.is_ok() && from_b.is_ok() && count(&db, &epochs_sql).await == 2 && count(&db, &claims_sql).await == 3;
    if collided {
        assert_eq!((from_a.unwrap()[0].1, from_b.unwrap()[0].1), (Some(third as i64), Some(third as i64)));
    } else {
        // only a replicated cluster keeps the claims apart: it runs one quorum
        // insert per shard at a time (code 286) and refuses reads a replica
        // cannot answer consistently; a refused member claims again
        assert!(!db.cluster.is_empty(), "the claims collided on one server: {from_a:?} {from_b:?}");
        for (core, result) in [(&mut a, from_a), (&mut b, from_b)] {
            if result.is_err() {
                claim_until_ok(core).await;
            }
        }
    }
    for (o, (_, payload)) in records.iter().enumerate().skip(third) {
        a.process(0, o as i64, Some(1_800_000_000_000), payload);
        b.process(0, o as i64, Some(1_800_000_000_000), payload);
    }
    // A's batch lands as if its check had run before B's claim was visible
    let landed = a.take_batch().expect("A holds a batch");
    for table in Table::ORDER {
        Store::insert(&a.store, table, landed.rows(table), &unique("raced")).await.unwrap();
    }
    let flushed = b.flush(true).await;
    if collided {
        let e = flushed.unwrap_err();
        assert!(matches!(e, aggregator::AggError::ClaimContested(ref p) if p == &[0]), "{e}");
    }
    // a member claims the partition (no barrier now) and finishes it
    let mut c = Core::new(&member("c"), sink_b, Arc::new(Metrics::new()));
    let start = claim_until_ok(&mut c).await.expect("a checkpoint");
    if collided {
        assert_eq!(start, third as i64, "resumes where the contested claims did");
    }
    for (o, (_, payload)) in records.iter().enumerate().skip(start as usize) {
        c.process(0, o as i64, Some(1_800_000_000_000), payload);
    }
    c.flush(true).await.unwrap();
    if collided {
        let raw = count(&db, &format!("SELECT sum(events) FROM {}.usage_by_tracking_log", db.database)).await;
        assert!(raw > want.events, "A's rows of the contested epoch are in the table ({raw} raw events)");
    }
    assert_exact(&db, &want, Duration::from_secs(10)).await;
}
