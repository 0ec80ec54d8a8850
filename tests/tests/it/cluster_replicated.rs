//! The production layout for real: the replicated cluster `metering` of
//! `scripts/stack up --cluster` (ZooKeeper and four ClickHouse 18.16
//! servers, two shards of two replicas), through the same `clickhouse.cluster`
//! setting operators use. `scripts/test` starts it; `METERING_TEST_CLUSTER`
//! lists the servers' HTTP URLs (default the stack's 8131-8134).

use e2e::*;
use runtime::ch::ClickHouseConfig;
use serde::Deserialize;
use simulator::simulate::{Expected, SimConfig};
use std::collections::BTreeMap;
use std::time::Duration;

fn on_server(n: usize, database: &str) -> ClickHouseConfig {
    on_cluster_server(n, database)
}

/// Stop or start replica `n` (1-based) with `scripts/stack`.
fn replica(cmd: &str, n: usize) -> bool {
    let root = e2e::repo_root();
    std::process::Command::new(root.join("scripts/stack")).args([cmd, &n.to_string()]).status().is_ok_and(|s| s.success())
}

/// Starts replica `n` again when dropped, even if the test panics.
struct ReplicaBack(usize);

impl Drop for ReplicaBack {
    fn drop(&mut self) {
        let _ = replica("start-replica", self.0);
    }
}

#[derive(Debug, PartialEq, Deserialize, clickhouse::Row)]
struct Column {
    table: String,
    name: String,
    ty: String,
    engine: String,
}

async fn schema(db: &ClickHouseConfig) -> Vec<Column> {
    let mut cols: Vec<Column> = db
        .server_client()
        .query(
            "SELECT c.table, c.name, c.type, t.engine FROM system.columns AS c \
             ALL INNER JOIN (SELECT name AS table, engine FROM system.tables WHERE database = ?) AS t USING (table) \
             WHERE c.database = ?",
        )
        .bind(&db.database)
        .bind(&db.database)
        .fetch_all()
        .await
        .unwrap_or_else(|e| panic!("{}: {e}; is the cluster up? scripts/stack up --cluster", db.url));
    cols.sort_by(|a, b| a.table.cmp(&b.table));
    cols
}

async fn drop_everywhere(database: &str) {
    let db = on_server(0, database);
    let _ = db.server_client().query(&format!("DROP DATABASE IF EXISTS {database} ON CLUSTER metering")).execute().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_from_two_servers_at_once_make_one_schema_on_every_server() {
    let _stack = e2e::turns::shared().await;
    // every server up: a replica stopped by another test holds the cluster's
    // DDL queue, which is not what this test is about
    let _turn = e2e::turns::replica_faults().await;
    let database = unique("mtr");
    let (a, b) = (on_server(0, &database), on_server(3, &database));
    let (ra, rb) = tokio::join!(warehouse::migrate(&a), warehouse::migrate(&b));
    let (ra, rb) = (ra.expect("migrate through server 1"), rb.expect("migrate through server 4"));
    assert!(!ra.applied.is_empty() || !rb.applied.is_empty(), "{ra:?} {rb:?}");
    // every server has the same tables and columns, and knows every migration as applied
    let first = schema(&a).await;
    assert!(first.iter().any(|c| c.table == "aggregator_claims_local" && c.name == "claim_id" && c.engine == "ReplicatedMergeTree"));
    assert!(first.iter().any(|c| c.table == "aggregator_claims" && c.name == "claim_id" && c.engine == "Distributed"));
    for n in 0..4 {
        let db = on_server(n, &database);
        assert_eq!(schema(&db).await, first, "server {} has the schema of server 1", n + 1);
        let again = warehouse::migrate(&db).await.unwrap();
        assert!(again.applied.is_empty(), "server {}: nothing left to apply: {again:?}", n + 1);
    }
    drop_everywhere(&database).await;
}

/// A new topic of 4 partitions named after `prefix`, and a new database
/// migrated on the cluster (its settings through server 1).
async fn fresh(prefix: &str) -> (String, String, ClickHouseConfig) {
    let topic = unique(prefix);
    create_topic(&topic, 4).await;
    let database = unique("mtr");
    let db = on_server(0, &database);
    warehouse::migrate(&db).await.expect("migrations on the cluster (scripts/stack up --cluster)");
    (topic, database, db)
}

/// Sums of a view by one column, read through server `n`.
async fn sums(database: &str, n: usize, view: &str, col: &str) -> BTreeMap<String, Sums> {
    sums_by(&on_server(n, database), view, col).await
}

/// The expected totals of several runs together: events, per tracking id, per viewer.
fn together(runs: &[&Expected]) -> (u64, BTreeMap<String, Sums>, BTreeMap<String, Sums>) {
    let add = |into: &mut BTreeMap<String, Sums>, from: BTreeMap<String, Sums>| {
        for (k, s) in from {
            let e = into.entry(k).or_default();
            e.bytes_out += s.bytes_out;
            e.bytes_in += s.bytes_in;
            e.events += s.events;
        }
    };
    let (mut tracking, mut viewers) = (BTreeMap::new(), BTreeMap::new());
    for r in runs {
        add(&mut tracking, expected_by_tracking(r));
        add(&mut viewers, expected_by_viewer(r));
    }
    (runs.iter().map(|r| r.unique_valid_events).sum(), tracking, viewers)
}

async fn exact_on_every_server(database: &str, runs: &[&Expected]) {
    let (events, want, viewers) = together(runs);
    for n in 0..4 {
        let db = on_server(n, database);
        let got = wait_for_events(&db, events, Duration::from_secs(180)).await;
        assert_eq!(got, events, "events through server {}", n + 1);
        assert_eq!(sums(database, n, "usage_by_tracking", "tracking_id").await, want, "per tracking id through server {}", n + 1);
        assert_eq!(sums(database, n, "usage_by_viewer", "viewer_id").await, viewers, "per viewer through server {}", n + 1);
        assert_eq!(sums(database, n, "usage_by_tracking_daily", "tracking_id").await, want, "daily rollup through server {}", n + 1);
        assert_eq!(sums(database, n, "usage_by_viewer_daily", "viewer_id").await, viewers, "viewer rollup through server {}", n + 1);
    }
}

/// The exactly-once stream on the replicated cluster: duplicates,
/// reordering and poison. The other replica of shard 1 is stopped while more
/// usage arrives (quorum inserts fail, the aggregator claims again and
/// waits), the aggregator is killed meanwhile, the replica comes back and a
/// new member finishes. Every view read through every server is exact.
/// The second seal consolidates each shard's month on that shard, and billing
/// (run, issue, reconcile) on the cluster reads the consolidated rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_on_the_replicated_cluster_across_a_replica_outage_and_a_kill() {
    let _stack = e2e::turns::shared().await;
    let _turn = e2e::turns::replica_faults().await;
    let (topic, database, db) = fresh("cl_eo").await;
    let sim = |seed: u64, run: &str| SimConfig {
        seed,
        run_id: run.to_string(),
        partners: 3,
        viewers_per_partner: 12,
        untracked_viewers: 4,
        duration_secs: 3 * 3600,
        session_secs: (60, 2400),
        duplicates: 0.05,
        out_of_order: 0.05,
        poison: 0.005,
        ..Default::default()
    };
    let first = simulate_to_kafka(&sim(31, &format!("{topic}-a")), &topic).await;
    let layout = [("AGGREGATOR__CLICKHOUSE__CLUSTER", "metering".to_string())];
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &layout);
    exact_on_every_server(&database, &[&first]).await;
    // sealed on the cluster, through server 3: every server's readers see the same
    assert!(wait_checkpointed(&db, Duration::from_secs(60)).await, "every flush checkpointed");
    // with every server as replica_urls: from the second seal on, each shard's months are consolidated on that shard
    assert!(run_seal(&on_cluster_server_with_replicas(3, &database), None).success(), "a seal on the cluster");
    let sealed = format!("SELECT count() FROM {database}.usage_seals");
    assert_eq!(count(&db, &sealed).await, 1, "one seal committed");
    assert_sealed_equals_unsealed(&on_server(1, &database)).await;
    exact_on_every_server(&database, &[&first]).await;

    // replica 2 (shard 1's other replica) down while more usage arrives
    let back = ReplicaBack(2);
    assert!(replica("stop-replica", 2), "replica 2 stopped");
    let second = simulate_to_kafka(&sim(32, &format!("{topic}-b")), &topic).await;
    let failed = format!("SELECT count() FROM {database}.aggregator_claims");
    let claims_before = count(&db, &failed).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    // and the member killed (it had run long past its join: tansu keeps its partitions then)
    agg.kill9();
    assert!(replica("start-replica", 2), "replica 2 started");
    drop(back);
    // a new member (a group of its own: offsets live in ClickHouse, not in the group) finishes
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &layout);
    exact_on_every_server(&database, &[&first, &second]).await;
    assert!(count(&db, &failed).await > claims_before, "the new member claimed the partitions");
    let dl = format!("SELECT count() FROM {database}.usage_dead_letters");
    let poison = first.poison_sent + second.poison_sent;
    assert!(wait_until(Duration::from_secs(60), || async { count(&db, &dl).await == poison }).await, "poison dead-lettered once");
    assert!(wait_checkpointed(&db, Duration::from_secs(60)).await, "every flush checkpointed");
    assert!(run_seal(&on_cluster_server_with_replicas(0, &database), None).success(), "a second seal on the cluster");
    assert_eq!(count(&db, &format!("{sealed} WHERE consolidated = 1")).await, 1, "and a consolidation");
    assert_sealed_equals_unsealed(&on_server(2, &database)).await;
    exact_on_every_server(&database, &[&first, &second]).await;

    // billing on the cluster: drafts (replaced through the local tables), issue, reconcile
    let card = billing::rates::load_rate_card(&e2e::repo_root().join("deploy/rates.example.toml")).unwrap();
    assert!(wait_checkpointed(&db, Duration::from_secs(60)).await, "every flush checkpointed (billing reads as of the checkpoints)");
    let store = billing::store::Store::connect(&on_server(2, &database)).await.unwrap();
    let period = first.by_day.keys().next().expect("a day of usage")[..7].to_string();
    let out = std::env::temp_dir().join(unique("cl_billing"));
    let (_, tracking, _) = together(&[&first, &second]);
    for _ in 0..2 {
        let (c, _) = billing::run::run(&store, &card, &period, &out).await.expect("billing run on the cluster");
        let billed: u64 = c.invoices.iter().map(|i| i.total_bytes).sum();
        let owned: u64 = tracking.iter().filter(|(t, _)| card.partner_for_tracking_id(t).is_some()).map(|(_, s)| s.bytes_out).sum();
        assert_eq!(billed, owned, "the drafts bill every owned byte once");
    }
    billing::run::issue(&store, &card, &period, &out, 60).await.expect("billing issue on the cluster");
    let checks = billing::reconcile::reconcile(&store, &card, &period).await.unwrap();
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    let _ = std::fs::remove_dir_all(&out);
    drop_everywhere(&database).await;
}

/// `SYSTEM STOP FETCHES` / `START FETCHES` on server `n` (0-based): that
/// replica stops copying the parts the others write.
async fn fetches(n: usize, database: &str, on: bool) {
    let sql = if on { "SYSTEM START FETCHES" } else { "SYSTEM STOP FETCHES" };
    on_server(n, database).server_client().query(sql).execute().await.unwrap_or_else(|e| panic!("{sql} on server {}: {e}", n + 1));
}

/// Starts fetches on server `n` again when dropped, even if the test panics.
struct FetchesBack(usize);

impl Drop for FetchesBack {
    fn drop(&mut self) {
        let url = cluster_servers()[self.0].clone();
        let _ = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--data-binary", "SYSTEM START FETCHES", &url])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

fn log_has(log: &std::path::Path, what: &str) -> bool {
    std::fs::read_to_string(log).is_ok_and(|s| s.contains(what))
}

/// A SIGKILL loop on the replicated cluster: more usage, then a member
/// reaching the cluster through each server in turn, killed at a random
/// moment after it made progress. Then a lagging replica: server 2 stops
/// fetching, so a claim written through server 1 stays on server 1 alone
/// (its quorum insert times out, code 319, and the shard refuses further
/// quorum inserts, code 286); that member is killed and a new one reaches
/// the cluster through server 2, whose reads miss that claim row. Its claim
/// waits as well; it never decides on the stale rows: once server 2 fetches
/// again, every view through every server is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_on_the_replicated_cluster_through_a_kill_loop_and_a_lagging_replica() {
    let _stack = e2e::turns::shared().await;
    use rand::Rng;
    let _turn = e2e::turns::replica_faults().await;
    let (topic, database, db) = fresh("cl_kill").await;
    let sim = |seed: u64, run: &str| SimConfig {
        seed,
        run_id: run.to_string(),
        partners: 4,
        viewers_per_partner: 25,
        untracked_viewers: 5,
        duration_secs: 4 * 3600,
        session_secs: (60, 3600),
        duplicates: 0.03,
        out_of_order: 0.03,
        poison: 0.002,
        ..Default::default()
    };
    let layout = [("AGGREGATOR__CLICKHOUSE__CLUSTER", "metering".to_string())];
    let checkpoints = format!("SELECT count() FROM {database}.aggregator_checkpoints");
    let mut runs = Vec::new();
    for k in 0..4 {
        // more usage, then a member through server k+1 (a fresh group each
        // time: positions live in ClickHouse), killed mid-run
        runs.push(simulate_to_kafka(&sim(41 + k as u64, &format!("{topic}-{k}")), &topic).await);
        let via = on_server(k, &database);
        let before = count(&db, &checkpoints).await;
        let mut agg = spawn_aggregator(&topic, &via, &unique("g"), &layout);
        let progressed = wait_until(Duration::from_secs(120), || async { count(&db, &checkpoints).await > before }).await;
        assert!(progressed, "member {k} through server {} made progress", k + 1);
        let ms = rand::thread_rng().gen_range(0..2_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        agg.kill9();
    }

    // the lagging replica: server 2 stops fetching and more usage arrives; a
    // member through server 1 claims the partitions: to shard 1 its claim
    // lands on server 1 alone and waits for a quorum it cannot get
    let back = FetchesBack(1);
    fetches(1, &database, false).await;
    runs.push(simulate_to_kafka(&sim(49, &format!("{topic}-lag")), &topic).await);
    let dir = std::env::temp_dir().join(unique("cl_lag"));
    std::fs::create_dir_all(&dir).unwrap();
    let (log_a, log_b) = (dir.join("a.log"), dir.join("b.log"));
    let mut env = aggregator_env(&topic, &db, &unique("g"));
    env.extend(layout.iter().cloned());
    let mut a = Proc::spawn_logged("aggregator", &["run"], &env, &log_a);
    let waits = wait_until(Duration::from_secs(120), || async { log_has(&log_a, "PartitionLoadFailed") }).await;
    assert!(waits, "a claim through server 1 waits for the quorum while server 2 does not fetch: {}", log_a.display());
    a.kill9();
    // the takeover reaches the cluster through the lagging replica, which
    // lacks that claim row: its own claim must wait too, not count
    let mut env = aggregator_env(&topic, &on_server(1, &database), &unique("g"));
    env.extend(layout.iter().cloned());
    let mut b = Proc::spawn_logged("aggregator", &["run"], &env, &log_b);
    let waits = wait_until(Duration::from_secs(120), || async { log_has(&log_b, "PartitionLoadFailed") }).await;
    assert!(waits, "a claim through the lagging replica waits: {}", log_b.display());
    fetches(1, &database, true).await;
    drop(back);
    // the member through server 2 (or, if it gave up meanwhile, its successor) finishes
    let _c = if b.is_running() { None } else { Some(spawn_aggregator(&topic, &on_server(1, &database), &unique("g"), &layout)) };
    exact_on_every_server(&database, &runs.iter().collect::<Vec<_>>()).await;
    let dl = format!("SELECT count() FROM {database}.usage_dead_letters");
    let poison: u64 = runs.iter().map(|r| r.poison_sent).sum();
    assert!(wait_until(Duration::from_secs(60), || async { count(&db, &dl).await == poison }).await, "poison dead-lettered once");
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    drop_everywhere(&database).await;
}

/// A new database migrated on the cluster, reached through server 1 with
/// every server as `clickhouse.replica_urls`, and every server's settings.
async fn fresh_with_replicas() -> (String, ClickHouseConfig, Vec<ClickHouseConfig>) {
    let database = unique("mtc");
    let db = on_cluster_server_with_replicas(0, &database);
    warehouse::migrate(&db).await.expect("migrations on the cluster (scripts/stack up --cluster)");
    let servers = (0..cluster_servers().len()).map(|n| on_server(n, &database)).collect();
    (database, db, servers)
}

/// Consolidation on the cluster rewrites each shard's sealed rows on that
/// shard and changes no answer, read through every server: the
/// single-server scenario (five seals, consolidations stopped after each
/// step, the first swap being one shard's alone, then a whole one), each
/// server's local tables ending with one row per key, on both replicas of
/// each shard. Without `replica_urls` it does nothing and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consolidation_on_the_cluster_rewrites_each_shard_on_that_shard() {
    let _stack = e2e::turns::shared().await;
    let _turn = e2e::turns::replica_faults().await;
    let (database, db, servers) = fresh_with_replicas().await;
    let without = on_server(0, &database);
    assert_eq!(
        aggregator::consolidate::consolidate(&without, 2, 0).await.unwrap(),
        Err(aggregator::consolidate::ConsolidationSkipped::NoReplicaUrls)
    );
    crate::clickhouse_conformance::consolidation_changes_no_answer(&db, &servers).await;
    drop_everywhere(&database).await;
}

/// A consolidation on the cluster that outlives its lock (paused before its
/// first swap while a seal takes the lock over and seals more of the month)
/// finds its staging gone from every replica and swaps nothing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_consolidation_on_the_cluster_drops_no_newer_seal() {
    let _stack = e2e::turns::shared().await;
    let _turn = e2e::turns::replica_faults().await;
    let (database, db, servers) = fresh_with_replicas().await;
    crate::clickhouse_conformance::paused_consolidation_drops_no_newer_seal(&db).await;
    for server in &servers {
        assert_sealed_equals_unsealed(server).await;
    }
    drop_everywhere(&database).await;
}

/// A replica that dies on its own comes back, as systemd's `Restart=always`
/// brings a production server back: ClickHouse 18.16's DDL worker can
/// terminate a replica when both replicas of a shard take the same
/// `ALTER ... ON CLUSTER` (its "Node exists" race), and the initiator's
/// migration then completes once the replica is back and finishes the task.
/// A replica stopped on purpose (`scripts/stack stop-replica`) stays down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_dies_comes_back_and_one_stopped_on_purpose_stays_down() {
    let _stack = e2e::turns::shared().await;
    let _turn = e2e::turns::replica_faults().await;
    let _back = ReplicaBack(3);
    let pid_file = repo_root().join(".stack/cluster/ch3.pid");
    let Ok(pid) = std::fs::read_to_string(&pid_file) else {
        eprintln!("skipped: the cluster was not started by scripts/stack (no {})", pid_file.display());
        return;
    };
    let pid = pid.trim().to_string();
    let ping = || async {
        let url = format!("{}/?query=SELECT%201", cluster_servers()[2]);
        reqwest::get(&url).await.map(|r| r.status().is_success()).unwrap_or(false)
    };
    assert!(ping().await, "replica 3 answers before");
    assert!(std::process::Command::new("kill").args(["-9", &pid]).status().unwrap().success(), "replica 3 killed");
    let new_pid = || std::fs::read_to_string(&pid_file).map(|p| p.trim().to_string()).unwrap_or_default();
    let back = wait_until(Duration::from_secs(60), || async { new_pid() != pid && ping().await }).await;
    assert!(back, "replica 3 is back under a new process");
    // stopped on purpose, it stays down
    assert!(replica("stop-replica", 3), "replica 3 stopped");
    let stays_down = !wait_until(Duration::from_secs(5), || async { ping().await }).await;
    assert!(stays_down, "a replica stopped on purpose is not started again");
    assert!(replica("start-replica", 3), "replica 3 started");
    assert!(ping().await, "replica 3 answers after");
}

/// The floor of the consolidated views' list of seals (migration 18) is
/// measured on every replica: a consolidation's swap reaches a shard's other
/// replica when that replica applies it, and until then the other replica
/// still serves the plain seals' rows, which its readers count only while
/// their seals are listed. Server 4 (shard 2's second replica) stops
/// fetching the last consolidated table, so the last swap, made on server 3
/// (where consolidations rewrite shard 2), does not reach it, and its quorum
/// mark times out: server 4 still holds both plain seals' rows. The floor
/// measured then is the first seal's number, the oldest plain seal any
/// replica holds, not the next seal's, which one replica per shard gives;
/// without every replica in `clickhouse.replica_urls` none is measured.
/// Once server 4 has applied the swap the floor passes both seals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_floor_waits_for_a_replica_that_has_not_applied_a_swap() {
    use crate::clickhouse_conformance::{claim_epoch_1, rows_and_checkpoint, synced};
    use aggregator::consolidate::{consolidate, measure_list_floor, CONSOLIDATED};
    const N: u64 = 500;
    let _stack = e2e::turns::shared().await;
    let _turn = e2e::turns::replica_faults().await;
    let (database, db, servers) = fresh_with_replicas().await;
    let d = &database;
    let topic = unique("lfloor");
    claim_epoch_1(&db, &topic).await;
    let mut seals = vec![];
    for i in 0..2 {
        rows_and_checkpoint(&db, &topic, i * N, N).await;
        seals.push(aggregator::seal::seal(&db, 0).await.unwrap().expect("a seal"));
    }
    synced(&db, &servers).await;
    // the oldest plain seal with rows in a consolidated table on `server` (its own parts; 0: none)
    let oldest_plain_on = |server: &ClickHouseConfig| {
        let tables = CONSOLIDATED.map(|t| format!("SELECT seal_id FROM {d}.{t}_local")).join(" UNION ALL ");
        let sql = format!(
            "SELECT if(count() = 0, toUInt64(0), min(seq)) FROM {d}.usage_seals \
             WHERE consolidated = 0 AND seal_id GLOBAL IN (SELECT seal_id FROM ({tables}))"
        );
        let server = server.clone();
        async move { count(&server, &sql).await }
    };
    let next = format!("SELECT max(seq) + 1 FROM {d}.usage_seals");
    let table = CONSOLIDATED[3];
    let _back = FetchesBack(3);
    exec_on(&servers[3], &format!("SYSTEM STOP FETCHES {d}.{table}_local")).await;
    let err = consolidate(&db, 2, 0).await.expect_err("the last swap's quorum mark waits for server 4 and times out");
    assert!(err.to_string().contains("marking"), "{err}");
    for server in &servers[..3] {
        assert_eq!(oldest_plain_on(server).await, 0, "{}: every month swapped", server.url);
    }
    assert_eq!(oldest_plain_on(&servers[3]).await, seals[0].seq, "server 4 has not applied the last swap");
    assert_eq!(measure_list_floor(&db).await.unwrap(), Some(seals[0].seq), "the floor is the oldest plain seal on any replica");
    let three = ClickHouseConfig { replica_urls: db.replica_urls[..3].to_vec(), ..db.clone() };
    assert_eq!(measure_list_floor(&three).await.unwrap(), None, "no floor without every replica");

    exec_on(&servers[3], &format!("SYSTEM START FETCHES {d}.{table}_local")).await;
    synced(&db, &servers).await;
    assert_eq!(oldest_plain_on(&servers[3]).await, 0, "server 4 applied the swap");
    let want = count(&db, &next).await;
    assert_eq!(measure_list_floor(&db).await.unwrap(), Some(want), "the floor passed both seals once no replica held their rows");
    rows_and_checkpoint(&db, &topic, 2 * N, N).await;
    aggregator::seal::seal(&db, 0).await.unwrap().expect("a seal");
    consolidate(&db, 2, 0).await.unwrap().expect("a consolidation");
    synced(&db, &servers).await;
    let recorded = count(&db, &format!("SELECT max(floor) FROM {d}.usage_seal_list_floor")).await;
    assert!(recorded > seals[1].seq, "the consolidation recorded a floor past both seals: {recorded}");
    for server in &servers {
        assert_sealed_equals_unsealed(server).await;
    }
    drop_everywhere(&database).await;
}

async fn exec_on(server: &ClickHouseConfig, sql: &str) {
    server.client().query(sql).execute().await.unwrap_or_else(|e| panic!("{sql} on {}: {e}", server.url));
}
