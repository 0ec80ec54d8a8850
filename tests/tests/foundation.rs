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
        viewer_id: "viewer-1".into(),
        seq,
        interval_start: 1_759_276_800_000,
        interval_end: 1_759_276_810_000,
        bytes_out: 123_456,
        bytes_in: 789,
        account_id: "acct".into(),
        stream_name: "live".into(),
        cluster: "fra-1".into(),
        server_id: "srv".into(),
        protocol: Protocol::Webrtc,
        token_id: Some(7),
        tracking_id: Some("acme-web".into()),
        custom_viewer_data: Some("{\"u\":1}".into()),
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
    let db = test_db().await; // first application
    let again = runtime::ch::migrate(&db).await.expect("second application");
    assert!(again.applied.is_empty(), "nothing applied twice: {again:?}");
    assert_eq!(again.already.len(), runtime::ch::MIGRATIONS.len());
    let recorded = count(&db, &format!("SELECT count() FROM {}.schema_migrations", db.database)).await;
    assert_eq!(recorded, runtime::ch::MIGRATIONS.len() as u64, "each migration recorded once");

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
    let cfg = runtime::ch::ClickHouseConfig { database: "x; DROP TABLE y".into(), ..Default::default() };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt.block_on(runtime::ch::migrate(&cfg)).unwrap_err();
    assert!(err.to_string().contains("invalid database name"), "{err}");
}

#[test]
fn compose_file_is_valid_for_a_real_compose_parser() {
    let root = e2e::repo_root();
    let out = std::process::Command::new("docker-compose")
        .args(["-f", "docker-compose.yml", "config"])
        .current_dir(&root)
        .output()
        .expect("docker-compose installed (scripts/test installs Debian's docker-compose)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "docker-compose config failed: {stderr}");
    let cfg = String::from_utf8_lossy(&out.stdout);
    for service in ["kafka:", "kafka-init:", "clickhouse:", "migrate:", "ingest:", "aggregator:", "api:", "billing:"] {
        assert!(cfg.contains(service), "service {service} missing from:\n{cfg}");
    }
    assert!(cfg.contains("healthcheck:"), "healthchecks present");
    assert!(cfg.contains("replicas: 2"), "two aggregator replicas in one group");
    assert!(cfg.contains("--partitions") && cfg.contains("service_completed_successfully"), "topic created before the services start");
}

/// The aggregator's row encoders and `INSERT` column lists come from one
/// definition per table (`aggregator::tables::Table::columns`); it must be
/// exactly the migrated table's columns, in order, with the same types.
#[tokio::test]
async fn aggregator_row_layouts_match_the_migrated_tables() {
    let db = test_db().await;
    for table in aggregator::tables::Table::ORDER {
        let got: Vec<(String, String)> = db
            .client()
            // in table order (18.16 has no `position` column to sort by)
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(&db.database)
            .bind(table.name())
            .fetch_all()
            .await
            .unwrap();
        let want: Vec<(String, String)> = table.columns().iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        assert_eq!(got, want, "{}", table.name());
    }
    drop_db(&db).await;
}

/// Billing's row structs (`billing::store::TABLES`) against the migrated tables.
#[tokio::test]
async fn billing_row_layouts_match_the_migrated_tables() {
    let db = test_db().await;
    for (table, cols) in billing::store::TABLES {
        let got: Vec<(String, String)> = db
            .client()
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(&db.database)
            .bind(table)
            .fetch_all()
            .await
            .unwrap();
        let want: Vec<(String, String)> = cols.iter().map(|(n, t)| (n.to_string(), t.to_string())).collect();
        assert_eq!(got, want, "{table}");
    }
    drop_db(&db).await;
}
