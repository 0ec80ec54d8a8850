//! Harness for the end-to-end tests: isolated topics and databases on the
//! real local stack, the project's binaries as child processes, and readers
//! of the totals in ClickHouse.
//!
//! The stack must be up (`scripts/stack up`; `scripts/test` does it).
//! `METERING_TEST_BROKERS` and `METERING_TEST_CLICKHOUSE` point elsewhere.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use runtime::ch::ClickHouseConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Turns at the shared stack. The suites are modules of one test binary
/// (`tests/tests/it`), whose tests run two at a time: every test holds
/// [`turns::shared`] while it runs, and the few that stop a server every
/// test uses (ClickHouse, the broker) hold [`turns::exclusive`] instead, so
/// no other test meets their outage. The tests that break a replica of the
/// cluster take [`turns::replica_faults`] too.
pub mod turns {
    use tokio::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

    static STACK: RwLock<()> = RwLock::const_new(());
    static REPLICA_FAULTS: Mutex<()> = Mutex::const_new(());

    /// A turn at the stack alongside other tests (a test that panicked
    /// while holding a turn does not stop the others).
    pub async fn shared() -> RwLockReadGuard<'static, ()> {
        let turn = STACK.read().await;
        restart_a_panicked_broker().await;
        turn
    }

    /// tansu 0.6.0's storage task can panic ("more or less than one row",
    /// in its idempotent-producer check, seen twice in 2026-12-03's CI runs
    /// while producers reconnected), after which the process lives on and
    /// answers every request with an error. A turn taken after such a panic
    /// first restarts the broker of this project's stack (`scripts/stack
    /// restart-kafka`, its data kept), so one broker fault fails the tests
    /// that met it, not every later one.
    async fn restart_a_panicked_broker() {
        static RESTARTING: Mutex<()> = Mutex::const_new(());
        if std::env::var_os("METERING_TEST_BROKERS").is_some() {
            return;
        }
        let stack =
            std::env::var_os("METERING_STACK_DIR").map(std::path::PathBuf::from).unwrap_or_else(|| crate::repo_root().join(".stack"));
        let log = stack.join("tansu/tansu.log");
        let panicked = || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let started = text.rfind("tansu broker ").unwrap_or(0);
            text.rfind("panicked at").is_some_and(|at| at > started)
        };
        if !panicked() {
            return;
        }
        let _one = RESTARTING.lock().await;
        if panicked() {
            eprintln!("[turns] the broker's storage panicked (see {}): restarting it", log.display());
            let status = std::process::Command::new(crate::repo_root().join("scripts/stack")).arg("restart-kafka").status();
            assert!(status.is_ok_and(|s| s.success()), "scripts/stack restart-kafka after the broker panicked");
        }
    }

    /// [`shared`], for a test that is not async.
    pub fn shared_blocking() -> RwLockReadGuard<'static, ()> {
        STACK.blocking_read()
    }

    /// The stack alone: for a test that stops one of its servers.
    pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
        STACK.write().await
    }

    /// The tests that break a replica (stop it, stop its fetches) or need
    /// every replica up take turns: each expects the replicas as the last
    /// one left them.
    pub async fn replica_faults() -> MutexGuard<'static, ()> {
        REPLICA_FAULTS.lock().await
    }
}

pub fn brokers() -> String {
    std::env::var("METERING_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn clickhouse_url() -> String {
    std::env::var("METERING_TEST_CLICKHOUSE").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// The HTTP URLs of the replicated cluster `metering` of `scripts/stack up
/// --cluster` (`METERING_TEST_CLUSTER`, comma-separated, overrides them).
pub fn cluster_servers() -> Vec<String> {
    std::env::var("METERING_TEST_CLUSTER")
        .unwrap_or_else(|_| (1..=4).map(|n| format!("http://127.0.0.1:{}", 8130 + n)).collect::<Vec<_>>().join(","))
        .split(',')
        .map(str::to_string)
        .collect()
}

/// Settings for `database` in the cluster layout on `metering`, reached through server `n` (0-based).
pub fn on_cluster_server(n: usize, database: &str) -> ClickHouseConfig {
    ClickHouseConfig { url: cluster_servers()[n].clone(), database: database.into(), cluster: "metering".into(), ..Default::default() }
}

/// [`on_cluster_server`] with every server of the cluster as
/// `clickhouse.replica_urls` (what consolidation needs).
pub fn on_cluster_server_with_replicas(n: usize, database: &str) -> ClickHouseConfig {
    ClickHouseConfig { replica_urls: cluster_servers(), ..on_cluster_server(n, database) }
}

/// A name unique to this process and call, safe as a topic or database name.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos % 100_000)
}

/// A fresh, migrated database.
pub async fn test_db() -> ClickHouseConfig {
    let cfg = ClickHouseConfig { url: clickhouse_url(), database: unique("mt"), ..Default::default() };
    warehouse::migrate(&cfg)
        .await
        .unwrap_or_else(|e| panic!("migrations on {} failed ({e}); is the stack up? run scripts/stack up", cfg.url));
    cfg
}

/// Create a topic (idempotent).
pub async fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = admin
        .create_topics([&topic], &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))))
        .await
        .unwrap_or_else(|e| panic!("create topic {name}: {e}; is the stack up? run scripts/stack up"));
    for r in res {
        if let Err((t, code)) = r {
            assert_eq!(code, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists, "create topic {t}: {code}");
        }
    }
}

/// Path of a binary of this workspace, built next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| if d.ends_with("deps") { d.parent() } else { Some(d) }).expect("target dir");
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins --features metering-aggregator/fault-injection,metering-billing/fault-injection` first (scripts/test does)", p.display());
    p
}

/// A child process, killed when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str], env: &[(&str, String)]) -> Proc {
        let mut cmd = Command::new(bin(name));
        cmd.args(args).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        if std::env::var("METERING_TEST_QUIET").is_ok() {
            cmd.stderr(Stdio::null());
        }
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child, name: name.to_string() }
    }

    /// Like [`Proc::spawn`], with standard error appended to `log` (to read what it logged).
    pub fn spawn_logged(name: &str, args: &[&str], env: &[(&str, String)], log: &std::path::Path) -> Proc {
        let mut cmd = Command::new(bin(name));
        cmd.args(args).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        cmd.stderr(f);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc { child, name: name.to_string() }
    }

    /// Send a signal (e.g. 19 SIGSTOP, 18 SIGCONT).
    pub fn signal(&self, sig: i32) {
        send_signal(self.child.id(), sig);
    }

    /// SIGKILL: no chance to flush.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a graceful exit.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        send_signal(self.child.id(), 15);
        let st = self.wait_exit(timeout);
        if st.is_none() {
            self.kill9();
        }
        st
    }

    /// Wait up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether the process is stopped (SIGSTOP, state `T` in `/proc`).
    pub fn is_stopped(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // the state follows the command name's closing parenthesis
        stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T'))
    }

    /// Wait up to `timeout` until the process has stopped itself (SIGSTOP).
    pub fn wait_stopped(&mut self, timeout: Duration) -> bool {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.is_stopped() {
                return true;
            }
            if !self.is_running() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

fn send_signal(pid: u32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Environment for an `aggregator run` on `topic` writing to `db`.
pub fn aggregator_env(topic: &str, db: &ClickHouseConfig, group: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AGGREGATOR__KAFKA__BROKERS", brokers()),
        ("AGGREGATOR__KAFKA__TOPIC", topic.to_string()),
        ("AGGREGATOR__CLICKHOUSE__URL", db.url.clone()),
        ("AGGREGATOR__CLICKHOUSE__DATABASE", db.database.clone()),
        ("AGGREGATOR__GROUP_ID", group.to_string()),
        ("AGGREGATOR__METRICS_LISTEN", String::new()),
        ("AGGREGATOR__FLUSH_INTERVAL_MS", "1000".into()),
        ("RUST_LOG", "warn,aggregator=info".into()),
    ]
}

pub fn spawn_aggregator(topic: &str, db: &ClickHouseConfig, group: &str, extra: &[(&'static str, String)]) -> Proc {
    let mut env = aggregator_env(topic, db, group);
    env.extend(extra.iter().cloned());
    Proc::spawn("aggregator", &["run"], &env)
}

/// Sum of bytes_out, bytes_in and events by one column of a table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clickhouse::Row)]
pub struct Sums {
    pub bytes_out: u64,
    pub bytes_in: u64,
    pub events: u64,
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct KeyedSums {
    key: String,
    bytes_out: u64,
    bytes_in: u64,
    events: u64,
}

/// `SELECT col, sum(...) FROM table GROUP BY col` as a map.
pub async fn sums_by(db: &ClickHouseConfig, table: &str, col: &str) -> BTreeMap<String, Sums> {
    let sql = format!(
        "SELECT toString({col}) AS key, sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events \
         FROM {}.{table} GROUP BY key ORDER BY key",
        db.database
    );
    let rows: Vec<KeyedSums> = db.client().query(&sql).fetch_all().await.expect("sums query");
    rows.into_iter().map(|r| (r.key, Sums { bytes_out: r.bytes_out, bytes_in: r.bytes_in, events: r.events })).collect()
}

/// The environment of `aggregator seal` against `db`.
pub fn seal_env(db: &ClickHouseConfig) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("AGGREGATOR__CLICKHOUSE__URL", db.url.clone()),
        ("AGGREGATOR__CLICKHOUSE__DATABASE", db.database.clone()),
        ("RUST_LOG", "warn".to_string()),
    ];
    if !db.cluster.is_empty() {
        env.push(("AGGREGATOR__CLICKHOUSE__CLUSTER", db.cluster.clone()));
    }
    if !db.replica_urls.is_empty() {
        let urls: Vec<String> = db.replica_urls.iter().map(|u| format!("{u:?}")).collect();
        env.push(("AGGREGATOR__CLICKHOUSE__REPLICA_URLS", format!("[{}]", urls.join(", "))));
    }
    env
}

/// Run `aggregator seal` once against `db` and wait for it. `fault`: kill
/// it (SIGKILL) right after that step ([`aggregator::seal::SEAL_FAULT_ENV`]).
/// The lock is taken over at once (`--lock-stale-secs 0`): a killed seal
/// leaves it behind. Months with rows of 2 seals or more are consolidated
/// after the seal (`aggregator::consolidate`).
pub fn run_seal(db: &ClickHouseConfig, fault: Option<&str>) -> std::process::ExitStatus {
    let mut env = seal_env(db);
    if let Some(step) = fault {
        env.push((aggregator::seal::SEAL_FAULT_ENV, step.to_string()));
    }
    // consolidating from the second seal on: every suite that seals also
    // reads consolidated rows
    let mut p = Proc::spawn("aggregator", &["seal", "--lock-stale-secs", "0", "--consolidate-min-seals", "2"], &env);
    p.wait_exit(Duration::from_secs(120)).expect("aggregator seal finished")
}

/// Every reader's view (the contract views and the rollups) gives, per key,
/// what the log gives under the fences alone: the unsealed computation,
/// written here as the views were before sealing existed.
pub async fn assert_sealed_equals_unsealed(db: &ClickHouseConfig) {
    let d = &db.database;
    let unsealed = |log: &str| {
        format!(
            "(SELECT * FROM {} AS l ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence \
             FROM {d}.aggregator_fences) AS f USING (src_topic, src_partition, src_epoch) WHERE src_offset <= fence)",
            // every row of the log and of its legacy table (migration 10)
            runtime::ch::Sealed::default().log_source(d, log, "*")
        )
    };
    let checks = [
        ("usage_by_tracking", "usage_by_tracking_log", "concat(toString(window_start), '|', tracking_id, '|', stream_name, '|', protocol)"),
        ("usage_by_viewer", "usage_by_viewer_log", "concat(toString(window_start), '|', viewer_id, '|', custom_viewer_data)"),
        (
            "usage_by_tracking_hourly",
            "usage_by_tracking_log",
            "concat(toString(toStartOfHour(window_start)), '|', tracking_id, '|', cluster)",
        ),
        ("usage_by_tracking_daily", "usage_by_tracking_log", "concat(toString(toDate(window_start)), '|', tracking_id, '|', account_id)"),
        ("usage_by_stream_daily", "usage_by_tracking_log", "concat(toString(toDate(window_start)), '|', stream_name, '|', tracking_id)"),
        ("usage_by_viewer_daily", "usage_by_viewer_log", "concat(toString(toDate(window_start)), '|', viewer_id)"),
    ];
    for (view, log, key) in checks {
        // the same key over the view's own time column
        let view_key = match view {
            "usage_by_tracking_hourly" => key.replace("toStartOfHour(window_start)", "hour"),
            "usage_by_tracking_daily" | "usage_by_stream_daily" | "usage_by_viewer_daily" => key.replace("toDate(window_start)", "day"),
            _ => key.to_string(),
        };
        let got = sums_by(db, view, &view_key).await;
        let sql = format!(
            "SELECT {key} AS key, sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events \
             FROM {} GROUP BY key ORDER BY key",
            unsealed(log)
        );
        let rows: Vec<KeyedSums> = db.client().query(&sql).fetch_all().await.expect("unsealed query");
        let want: BTreeMap<String, Sums> =
            rows.into_iter().map(|r| (r.key, Sums { bytes_out: r.bytes_out, bytes_in: r.bytes_in, events: r.events })).collect();
        assert_eq!(got.len(), want.len(), "{view}: as many keys as the unsealed computation");
        assert!(got == want, "{view}: every key's sums equal the unsealed computation's");
    }
}

pub async fn count(db: &ClickHouseConfig, sql: &str) -> u64 {
    db.client().query(sql).fetch_one::<u64>().await.expect("count query")
}

/// Expected per-tracking totals in the same shape as [`sums_by`].
pub fn expected_by_tracking(e: &simulator::simulate::Expected) -> BTreeMap<String, Sums> {
    e.by_tracking.iter().map(|(k, t)| (k.clone(), Sums { bytes_out: t.bytes_out, bytes_in: t.bytes_in, events: t.events })).collect()
}

pub fn expected_by_viewer(e: &simulator::simulate::Expected) -> BTreeMap<String, Sums> {
    e.by_viewer
        .iter()
        .map(|(k, t)| (k.clone(), Sums { bytes_out: t.totals.bytes_out, bytes_in: t.totals.bytes_in, events: t.totals.events }))
        .collect()
}

/// Poll `f` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

/// Wait until `usage_by_tracking` holds exactly `events` events (and then a bit
/// longer, to catch double counting that arrives late).
pub async fn wait_for_events(db: &ClickHouseConfig, events: u64, timeout: Duration) -> u64 {
    let sql = format!("SELECT sum(events) FROM {}.usage_by_tracking", db.database);
    let t = Instant::now();
    while t.elapsed() < timeout {
        if count(db, &sql).await >= events {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    count(db, &sql).await
}

/// Drop a test database.
/// Wait until every flush written to `usage_by_tracking_log` has its
/// checkpoint (billing reads usage as of the checkpoints: a flush whose
/// checkpoint is not written yet belongs to its next run). False on timeout.
pub async fn wait_checkpointed(db: &ClickHouseConfig, timeout: Duration) -> bool {
    let unflushed = format!(
        "SELECT count() FROM (SELECT src_topic AS topic, src_partition AS partition, src_epoch AS epoch, max(src_offset) AS o \
         FROM {db}.usage_by_tracking_log GROUP BY topic, partition, epoch) AS l \
         ALL LEFT JOIN (SELECT topic, partition, epoch, max(position) AS p FROM {db}.aggregator_checkpoints GROUP BY topic, partition, epoch) AS c \
         USING (topic, partition, epoch) WHERE o > p",
        db = db.database
    );
    wait_until(timeout, || async { count(db, &unflushed).await == 0 }).await
}

pub async fn drop_db(db: &ClickHouseConfig) {
    let _ = db.server_client().query(&format!("DROP DATABASE IF EXISTS {}", db.database)).execute().await;
}

/// Whether the tests' own producers ask for idempotence: they do not.
/// tansu 0.6.0's storage panics now and then in its idempotent-producer
/// check ("more or less than one row", `idempotent_message_check`) under
/// concurrent idempotent producers, on fresh storage too, and then answers
/// every request with an error ([`turns`] restarts it). What a test
/// produces stands in for the media servers; the aggregator deduplicates
/// a re-sent event by its id whatever the producer, and the gateway's own
/// producer (`ingest serve`, the `simulate` binary) stays idempotent, as
/// `foundation` checks against the broker.
pub const TEST_PRODUCER_IDEMPOTENCE: &str = "false";

/// A librdkafka producer config for tests that produce records themselves
/// (`acks=all`, [`TEST_PRODUCER_IDEMPOTENCE`]).
pub fn producer_config() -> rdkafka::ClientConfig {
    let mut c = rdkafka::ClientConfig::new();
    c.set("bootstrap.servers", brokers()).set("enable.idempotence", TEST_PRODUCER_IDEMPOTENCE).set("acks", "all");
    c
}

/// A producer for tests (no clock check: simulated periods lie in the past;
/// [`TEST_PRODUCER_IDEMPOTENCE`]; re-sends as a media server does,
/// [`ingest::MEDIA_SERVER_DELIVERY_TIMEOUT`]).
pub fn producer(topic: &str) -> ingest::UsageProducer {
    let properties = [("enable.idempotence".to_string(), TEST_PRODUCER_IDEMPOTENCE.to_string())].into();
    let kafka = runtime::kafka::KafkaConfig { brokers: brokers(), topic: topic.to_string(), properties };
    let opts = ingest::ProducerOptions {
        check_clock: false,
        linger_ms: 10,
        delivery_timeout: ingest::MEDIA_SERVER_DELIVERY_TIMEOUT,
        ..Default::default()
    };
    ingest::UsageProducer::new(&kafka, opts).expect("producer")
}

/// Send a simulation straight to Kafka; returns the expected totals.
pub async fn simulate_to_kafka(cfg: &simulator::simulate::SimConfig, topic: &str) -> simulator::simulate::Expected {
    let target = simulator::sim_run::Target::Kafka(simulator::sim_run::UsageProducerHandle(producer(topic)));
    let opts = simulator::sim_run::RunOptions { progress: true, ..Default::default() };
    simulator::sim_run::run(cfg, &target, &opts).await.expect("simulation sent")
}

/// The repository's root. Read from the `CARGO_MANIFEST_DIR` that cargo sets
/// when it runs a test, not the one compiled in: the build cache is shared
/// by every clone on a machine (`scripts/test`), so a test binary built in
/// another clone can be fresh for this one, and its compiled-in path point
/// into that clone.
pub fn repo_root() -> std::path::PathBuf {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    let dir = dir.unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    dir.parent().expect("the workspace root").to_path_buf()
}

/// Run `scripts/stack <cmd>` (used by the tests that stop a server).
pub fn stack(cmd: &str) -> bool {
    let root = repo_root();
    Command::new(root.join("scripts/stack")).arg(cmd).status().map(|s| s.success()).unwrap_or(false)
}

/// Runs `scripts/stack <cmd>` when dropped: restarts a stopped server even if the test panics.
pub struct StackOnDrop(pub &'static str);

impl Drop for StackOnDrop {
    fn drop(&mut self) {
        let _ = stack(self.0);
    }
}

/// A consumer assigned to every partition of `topic` from the beginning (no group offsets).
pub fn topic_reader(topic: &str, partitions: i32) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).expect("assign");
    c
}

/// Read `topic` from the beginning until at least `want` messages arrived and
/// then nothing more for `quiet` (or `max` passed). Returns (key, payload).
pub async fn read_topic(topic: &str, partitions: i32, want: usize, quiet: Duration, max: Duration) -> Vec<(String, Vec<u8>)> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let c = topic_reader(&topic, partitions);
        let mut out = Vec::new();
        let started = Instant::now();
        let mut last = Instant::now();
        while started.elapsed() < max && (out.len() < want || last.elapsed() < quiet) {
            match c.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let key = String::from_utf8(m.key().unwrap_or_default().to_vec()).expect("utf-8 key");
                    out.push((key, m.payload().unwrap_or_default().to_vec()));
                    last = Instant::now();
                }
                Some(Err(e)) => eprintln!("poll error: {e}"),
                None => {}
            }
        }
        out
    })
    .await
    .unwrap()
}

/// Epoch milliseconds as ISO 8601 UTC with milliseconds (the API's record times).
pub fn iso_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).expect("time in range").to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (for a child process to listen on).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A valid event of `viewer`, number `seq`: `bytes_out` bytes in the 10 s
/// from `start_ms`, and plain values elsewhere (account `acct`, stream
/// `live`, cluster `fra-1`, server `srv`, WHEP, no token, tracking id or
/// viewer data) that a test changes with `ViewerUsage { field, ..usage_event(...) }`.
pub fn usage_event(viewer: &str, seq: i64, start_ms: i64, bytes_out: i64) -> schemas::OwnedViewerUsage {
    schemas::ViewerUsage {
        viewer_id: viewer.to_string().into(),
        seq,
        interval_start: start_ms,
        interval_end: start_ms + 10_000,
        bytes_out,
        bytes_in: 0,
        account_id: "acct".into(),
        stream_name: "live".into(),
        cluster: "fra-1".into(),
        server_id: "srv".into(),
        protocol: schemas::Protocol::Whep,
        token_id: None,
        tracking_id: None,
        custom_viewer_data: None,
    }
}

/// The base URL of a service starting on loopback `port`, once its
/// `/healthz` answers (panics naming `what` after 30 s).
pub async fn serving(port: u16, what: &str) -> String {
    let url = format!("http://127.0.0.1:{port}");
    let up = wait_until(Duration::from_secs(30), || async { reqwest::get(format!("{url}/healthz")).await.is_ok() }).await;
    assert!(up, "{what} (port {port}) did not answer /healthz within 30 s");
    url
}

/// Serve `app` on a free loopback port: its base URL (`http://127.0.0.1:N`,
/// no trailing slash) and the server's task.
pub async fn serve_router(app: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (url, server)
}
