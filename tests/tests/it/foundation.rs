//! Foundation: the real stack speaks our wire format, migrations are
//! idempotent, and the compose file is valid.

use e2e::*;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message};
use schemas::{Codec, Protocol, ViewerUsage};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

fn event(seq: i64) -> ViewerUsage<'static> {
    ViewerUsage {
        bytes_in: 789,
        protocol: Protocol::Webrtc,
        token_id: Some(7),
        tracking_id: Some("acme-web".into()),
        custom_viewer_data: Some("{\"u\":1}".into()),
        ..usage_event("viewer-1", seq, 1_759_276_800_000, 123_456)
    }
}

fn consumer(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

fn poll_one(c: &BaseConsumer, timeout: Duration) -> Option<(Vec<u8>, Vec<u8>, i32, i64)> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                return Some((m.key().unwrap_or_default().to_vec(), m.payload().unwrap_or_default().to_vec(), m.partition(), m.offset()))
            }
            Some(Err(e)) => eprintln!("poll error: {e}"),
            None => {}
        }
    }
    None
}

#[tokio::test]
async fn single_object_event_round_trips_through_kafka_in_a_consumer_group() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("found");
    create_topic(&topic, 1).await;
    let codec = Codec::new();
    let producer: FutureProducer =
        ClientConfig::new().set("bootstrap.servers", brokers()).set("enable.idempotence", "true").set("acks", "all").create().unwrap();
    for seq in 0..2 {
        let payload = codec.encode_to_vec(&event(seq));
        producer.send(FutureRecord::to(&topic).key("viewer-1").payload(&payload), Duration::from_secs(10)).await.expect("delivered");
    }
    let group = unique("g");
    let c = consumer(&group);
    c.subscribe(&[&topic]).unwrap();
    let (key, payload, partition, offset) = poll_one(&c, Duration::from_secs(30)).expect("a message");
    assert_eq!(key, b"viewer-1", "Kafka key is the viewer_id");
    assert_eq!(&payload[..10], &[0xC3, 0x01, 0x2a, 0x9c, 0xa5, 0x0d, 0x2b, 0xf4, 0x8a, 0x30]);
    assert_eq!(codec.decode(&payload).unwrap(), event(0));
    // commit only the first message, by hand
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset + 1)).unwrap();
    c.commit(&tpl, CommitMode::Sync).expect("manual commit");
    drop(c);
    // a new member of the group resumes after the committed offset
    let c2 = consumer(&group);
    c2.subscribe(&[&topic]).unwrap();
    let (_, payload, _, offset2) = poll_one(&c2, Duration::from_secs(30)).expect("the second message");
    assert_eq!(offset2, offset + 1);
    assert_eq!(codec.decode(&payload).unwrap(), event(1));
}

#[derive(Debug, Serialize, Deserialize, clickhouse::Row, PartialEq)]
struct TrackingRow {
    window_start: u32,
    tracking_id: String,
    account_id: String,
    stream_name: String,
    cluster: String,
    protocol: String,
    bytes_out: u64,
    bytes_in: u64,
    events: u64,
}

#[derive(Debug, Serialize, Deserialize, clickhouse::Row, PartialEq)]
struct ViewerRow {
    window_start: u32,
    tracking_id: String,
    custom_viewer_data: String,
    viewer_id: String,
    account_id: String,
    stream_name: String,
    cluster: String,
    bytes_out: u64,
    bytes_in: u64,
    events: u64,
}

#[derive(Debug, Serialize, Deserialize, clickhouse::Row, PartialEq)]
struct DeadRow {
    received_at: u32,
    source: String,
    reason: String,
    payload: String,
}

#[tokio::test]
async fn migrations_are_idempotent_and_every_contract_table_takes_a_row() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await; // first application
    let again = warehouse::migrate(&db).await.expect("second application");
    assert!(again.applied.is_empty(), "nothing applied twice: {again:?}");
    assert_eq!(again.already.len(), warehouse::MIGRATIONS.len());
    let recorded = count(&db, &format!("SELECT count() FROM {}.schema_migrations", db.database)).await;
    assert_eq!(recorded, warehouse::MIGRATIONS.len() as u64, "each migration recorded once");

    let c = db.client();
    // Rows are written to the append-only logs under a claim (here epoch 0 of
    // partition 0 of topic '', the columns' defaults) and read back through
    // the views under the contract names.
    c.query(
        "INSERT INTO aggregator_claims (topic, partition, epoch, start_offset, member, claimed_at) VALUES ('', 0, 0, 0, 'test', now())",
    )
    .execute()
    .await
    .unwrap();
    let t = TrackingRow {
        window_start: 1_759_276_800,
        tracking_id: "acme-web".into(),
        account_id: "a".into(),
        stream_name: "s".into(),
        cluster: "fra-1".into(),
        protocol: "WHEP".into(),
        bytes_out: u64::MAX - 1,
        bytes_in: 2,
        events: 3,
    };
    let mut ins = c.insert::<TrackingRow>("usage_by_tracking_log").await.unwrap();
    ins.write(&t).await.unwrap();
    ins.end().await.unwrap();
    let back: Vec<TrackingRow> = c
        .query("SELECT toUInt32(window_start), tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events FROM usage_by_tracking")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(back, vec![t]);

    let v = ViewerRow {
        window_start: 1_759_276_860,
        tracking_id: "".into(),
        custom_viewer_data: "{\"u\":\"ü\"}".into(),
        viewer_id: "v".into(),
        account_id: "a".into(),
        stream_name: "s".into(),
        cluster: "iad-1".into(),
        bytes_out: 10,
        bytes_in: 1,
        events: 1,
    };
    let mut ins = c.insert::<ViewerRow>("usage_by_viewer_log").await.unwrap();
    ins.write(&v).await.unwrap();
    ins.end().await.unwrap();
    let back: Vec<ViewerRow> = c
        .query("SELECT toUInt32(window_start), tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events FROM usage_by_viewer")
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(back, vec![v]);

    let d = DeadRow { received_at: 1_764_000_000, source: "http".into(), reason: "invalid: bytes_out".into(), payload: "{}".into() };
    let mut ins = c.insert::<DeadRow>("usage_dead_letters_log").await.unwrap();
    ins.write(&d).await.unwrap();
    ins.end().await.unwrap();
    let back: Vec<DeadRow> =
        c.query("SELECT toUInt32(received_at), source, reason, payload FROM usage_dead_letters").fetch_all().await.unwrap();
    assert_eq!(back, vec![d]);

    // the contract's example query runs, and the rollups saw the rows
    let day: u64 =
        c.query("SELECT sum(bytes_out) FROM usage_by_tracking_daily WHERE day = toDate('2025-10-01')").fetch_one().await.unwrap();
    assert_eq!(day, u64::MAX - 1);
    drop_db(&db).await;
}

#[test]
fn migration_with_bad_database_name_is_refused() {
    let _stack = e2e::turns::shared_blocking();
    let cfg = runtime::ch::ClickHouseConfig { database: "x; DROP TABLE y".into(), ..Default::default() };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(warehouse::migrate(&cfg)).unwrap_err();
    assert!(err.to_string().contains("invalid database name"), "{err}");
}

#[test]
fn compose_file_is_valid_for_a_real_compose_parser() {
    let _stack = e2e::turns::shared_blocking();
    let root = e2e::repo_root();
    let out = std::process::Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(&root)
        .output()
        .expect("docker-compose installed (scripts/test installs Debian's docker-compose)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "docker-compose config failed: {stderr}");
    let cfg = String::from_utf8_lossy(&out.stdout);
    for service in ["kafka:", "kafka-init:", "clickhouse:", "migrate:", "ingest:", "aggregator:", "seal:", "api:", "billing:"] {
        assert!(cfg.contains(service), "service {service} missing from:\n{cfg}");
    }
    assert!(cfg.contains("healthcheck:"), "healthchecks present");
    assert!(cfg.contains("replicas: 2"), "two aggregator replicas in one group");
    assert!(cfg.contains("- seal") && cfg.contains("- --every"), "sealing runs as a service");
    assert!(cfg.contains("--partitions") && cfg.contains("service_completed_successfully"), "topic created before the services start");
}

/// Every table a service writes row by row has one layout
/// (`warehouse::tables`), from which the aggregator's row encoders and
/// `INSERT` column lists and billing's row structs are made; it must be
/// exactly the migrated table's columns, in order, with the same types.
#[tokio::test]
async fn row_layouts_match_the_migrated_tables() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    for table in warehouse::tables::WRITTEN {
        let got: Vec<(String, String)> = db
            .client()
            // in table order (18.16 has no `position` column to sort by)
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(&db.database)
            .bind(table.name)
            .fetch_all()
            .await
            .unwrap();
        let want: Vec<(String, String)> =
            table.columns.iter().chain(table.server_columns).map(|(n, t)| (n.to_string(), t.to_string())).collect();
        assert_eq!(got, want, "{}", table.name);
    }
    // and the writers use them: the aggregator's tables and billing's, each once
    let used: Vec<&str> =
        aggregator::tables::Table::ORDER.iter().map(|t| t.name()).chain(billing::store::ledger::TABLES.iter().map(|t| t.name)).collect();
    let mut written: Vec<&str> = warehouse::tables::WRITTEN.iter().map(|t| t.name).collect();
    let mut sorted = used.clone();
    sorted.sort();
    written.sort();
    assert_eq!(sorted, written);
    drop_db(&db).await;
}

/// The services' own ClickHouse users of the stack (scripts/stack, on
/// 18.16: users.xml profiles; docs/security.md "ClickHouse users"): the
/// writer and the reader reach their database only, the reader cannot
/// write; the check each service makes at start finds no excess in them
/// and finds the administrator's; with `rights_check = "refuse"` the API
/// and the aggregator refuse to start as the administrator and start as
/// their own users. 18.16 only (`scripts/test` skips `service_users` on the
/// in-process engine, which has no users).
#[tokio::test]
async fn service_users_have_least_privilege_and_services_refuse_more() {
    let _stack = e2e::turns::shared().await;
    use runtime::rights::{excess_rights, Access};
    let admin = runtime::ch::ClickHouseConfig { url: clickhouse_url(), database: "metering_privileges".into(), ..Default::default() };
    let user = |name: &str| runtime::ch::ClickHouseConfig { user: format!("metering_privileges_{name}"), ..admin.clone() };
    let (writer, reader) = (user("writer"), user("reader"));
    admin.server_client().query("DROP DATABASE IF EXISTS metering_privileges").execute().await.unwrap();
    warehouse::migrate(&admin).await.expect("the administrator migrates");

    assert_eq!(excess_rights(&writer, Access::Write).await.unwrap(), Vec::<String>::new());
    assert_eq!(excess_rights(&reader, Access::Read).await.unwrap(), Vec::<String>::new());
    // the administrator reaches other databases (at least `default`) and writes
    let excess = excess_rights(&admin, Access::Read).await.unwrap();
    assert_eq!(excess.len(), 2, "{excess:?}");
    assert!(excess[0].starts_with("reaches databases other than metering_privileges: ") && excess[0].contains("default"), "{excess:?}");
    assert_eq!(excess[1], "can write to metering_privileges (INSERT is allowed)");
    // the writer used as a reader can write
    assert_eq!(
        excess_rights(&writer, Access::Read).await.unwrap(),
        vec!["can write to metering_privileges (INSERT is allowed)".to_string()]
    );

    // what the server itself refuses, whatever the services do
    let refused = |r: Result<(), clickhouse::error::Error>, code: &str| {
        let e = r.expect_err("refused").to_string();
        assert!(e.contains(&format!("Code: {code}")), "{e}");
    };
    let insert =
        "INSERT INTO aggregator_claims (topic, partition, epoch, start_offset, member, claimed_at) VALUES ('t', 0, 1, 0, 'm', now())";
    refused(reader.client().query(insert).execute().await, "164");
    refused(reader.client().query("DROP TABLE aggregator_claims").execute().await, "164");
    refused(writer.server_client().query("SELECT count() FROM default.nothing").execute().await, "291");
    refused(reader.server_client().query("SELECT count() FROM default.nothing").execute().await, "291");
    writer.client().query(insert).execute().await.expect("the writer inserts");
    let claims = count(&reader, "SELECT count() FROM metering_privileges.aggregator_claims").await;
    assert_eq!(claims, 1, "the reader reads");

    // the services' start
    let env = |prefix: &str, cfg: &runtime::ch::ClickHouseConfig| -> Vec<(String, String)> {
        vec![
            (format!("{prefix}__CLICKHOUSE__URL"), cfg.url.clone()),
            (format!("{prefix}__CLICKHOUSE__DATABASE"), cfg.database.clone()),
            (format!("{prefix}__CLICKHOUSE__USER"), cfg.user.clone()),
            (format!("{prefix}__CLICKHOUSE__RIGHTS_CHECK"), "refuse".into()),
        ]
    };
    let run = |name: &str, args: &[&str], env: Vec<(String, String)>| {
        let out = std::process::Command::new(bin(name)).args(args).envs(env).output().expect("spawn");
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, err) = run("aggregator", &["seal"], env("AGGREGATOR", &admin));
    assert!(!ok && err.contains("has more rights than this service needs"), "the aggregator as the administrator: {err}");
    let (ok, err) = run("aggregator", &["seal"], env("AGGREGATOR", &writer));
    assert!(ok, "the aggregator as its writer seals: {err}");
    let (ok, err) = run("billing", &["reconcile", "--period", "2026-10", "--rates", "deploy/rates.example.toml"], env("BILLING", &admin));
    assert!(!ok && err.contains("has more rights than this service needs"), "billing as the administrator: {err}");

    let secret = "privileges-admin-secret-0123456789abcdef".to_string();
    let api = |cfg: &runtime::ch::ClickHouseConfig| {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let mut e = env("API", cfg);
        e.push(("API__LISTEN".into(), format!("127.0.0.1:{port}")));
        e.push(("API__API_SECRETS".into(), format!("[\"{secret}\"]")));
        e.push(("API__STORE_PATH".into(), dir.path().join("t.db").display().to_string()));
        (port, dir, e)
    };
    let (_, _dir, e) = api(&admin);
    let (ok, err) = run("api", &["serve"], e);
    assert!(!ok && err.contains("can write to metering_privileges"), "the API as the administrator: {err}");
    let (port, _dir, e) = api(&reader);
    let e: Vec<(&str, String)> = e.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let _api = Proc::spawn("api", &["serve"], &e);
    let url = serving(port, "the API as its reader").await;
    let r = reqwest::Client::new()
        .get(format!("{url}/api/analytics/tracking/total?trackingIds=acme&startDate=2026-10-01&stopDate=2026-10-02"))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "statistics as the reader: {}", r.text().await.unwrap());
}

/// Console sessions live in the token store: two `api serve` processes on
/// one store share them (sign in on one, use the console on the other, with
/// its CSRF token), a restart keeps them, a sign-out on one ends them on
/// both, and a secret removed from the configuration ends its sessions.
#[tokio::test]
async fn console_sessions_survive_a_restart_and_work_across_api_processes() {
    let _stack = e2e::turns::shared().await;
    let dir = tempfile::tempdir().unwrap();
    const ADMIN: &str = "replicas-admin-secret-0123456789abcdef";
    const PARTNER: &str = "replicas-partner-secret-0123456789abcd";
    let spawn = |port: u16, with_partner: bool| {
        let scoped = if with_partner { format!("[{{secret = \"{PARTNER}\", tracking_ids = [\"acme-web\"]}}]") } else { "[]".into() };
        let env = vec![
            ("API__LISTEN", format!("127.0.0.1:{port}")),
            ("API__API_SECRETS", format!("[\"{ADMIN}\"]")),
            ("API__SCOPED_SECRETS", scoped),
            ("API__STORE_PATH", dir.path().join("tokens.db").display().to_string()),
            ("API__CLICKHOUSE__URL", clickhouse_url()),
            ("API__CLICKHOUSE__RIGHTS_CHECK", "off".into()),
        ];
        Proc::spawn("api", &["serve"], &env)
    };
    let up = |port: u16| serving(port, "api");
    let pa = free_port();
    let pb = std::iter::repeat_with(free_port).find(|&p| p != pa).unwrap();
    // both start at once on a new store, as replicas behind a balancer do
    let mut a = spawn(pa, true);
    let mut b = spawn(pb, true);
    let (ua, ub) = (up(pa).await, up(pb).await);
    let http = reqwest::Client::new();
    let login = |url: String, secret: &'static str| {
        let http = http.clone();
        async move {
            let r = http.post(format!("{url}/console/login")).json(&serde_json::json!({ "secret": secret })).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
            let body: serde_json::Value = r.json().await.unwrap();
            (cookie, body["data"]["csrf"].as_str().unwrap().to_string())
        }
    };
    let session = |url: String, cookie: String| {
        let http = http.clone();
        async move {
            let r = http.get(format!("{url}/console/session")).header("cookie", cookie).send().await.unwrap();
            let body: serde_json::Value = r.json().await.unwrap();
            body["data"]["role"].as_str().map(str::to_string)
        }
    };
    let (admin_cookie, csrf) = login(ua.clone(), ADMIN).await;
    let (partner_cookie, _) = login(ua.clone(), PARTNER).await;
    assert_eq!(session(ub.clone(), admin_cookie.clone()).await.as_deref(), Some("admin"), "the session opened on A, on B");
    // a change on B with the session of A: the CSRF token of A's sign-in is B's too
    let create = |csrf: Option<String>| {
        let (http, ub, cookie) = (http.clone(), ub.clone(), admin_cookie.clone());
        async move {
            let mut r = http
                .post(format!("{ub}/api/subscribe_token"))
                .header("cookie", cookie)
                .json(&serde_json::json!({"label": "via B", "streams": [{"streamName": "live"}], "tracking": {"trackingId": "acme-web"}}));
            if let Some(c) = csrf {
                r = r.header("x-csrf-token", c);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(create(None).await, 403, "without the CSRF token");
    assert_eq!(create(Some(csrf.clone())).await, 200, "with it");

    // A restarts: its sessions are still there
    a.terminate(Duration::from_secs(10));
    let _a = spawn(pa, true);
    let ua = up(pa).await;
    assert_eq!(session(ua.clone(), admin_cookie.clone()).await.as_deref(), Some("admin"), "after A's restart");
    assert_eq!(session(ua.clone(), partner_cookie.clone()).await.as_deref(), Some("partner"));

    // B restarts without the partner's secret: that secret's session ends there
    b.terminate(Duration::from_secs(10));
    let _b = spawn(pb, false);
    let ub = up(pb).await;
    assert_eq!(session(ub.clone(), partner_cookie.clone()).await, None, "a removed secret's session");
    assert_eq!(session(ua.clone(), partner_cookie).await.as_deref(), Some("partner"), "A still has the secret");

    // signing out on B ends the session on A
    let r =
        http.post(format!("{ub}/console/logout")).header("cookie", admin_cookie.clone()).header("x-csrf-token", csrf).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(session(ua, admin_cookie).await, None, "signed out on B, on A");
}
