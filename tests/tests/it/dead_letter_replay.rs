//! Dead letters: inspected, fixed and re-injected with a command; the fixed
//! events are counted once, also when the replay is run twice.

use e2e::*;
use std::process::Command;
use std::time::Duration;

fn event(viewer: &str, seq: i64, bytes: i64, account: &str) -> schemas::OwnedViewerUsage {
    schemas::ViewerUsage {
        bytes_in: 1,
        account_id: account.to_string().into(),
        protocol: schemas::Protocol::Srt,
        tracking_id: Some("replay-partner".into()),
        custom_viewer_data: Some("{\"u\":1}".into()),
        ..usage_event(viewer, seq, 1_790_000_000_000 + seq * 10_000, bytes)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_dead_letters_are_reinjected_and_counted_once() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("dlq");
    create_topic(&topic, 2).await;
    let db = test_db().await;
    let p = producer(&topic);
    let codec = schemas::Codec::new();
    let viewer = format!("{topic}-viewer");
    for seq in 0..3 {
        p.send(&event(&viewer, seq, 1000, "acct")).await.unwrap();
    }
    // two events a buggy media server wrote past validation, and garbage
    for ev in [event(&viewer, 3, -5, "acct"), event(&viewer, 4, 2000, "")] {
        p.send_encoded(&ev.viewer_id, &codec.encode_to_vec(&ev)).await.unwrap();
    }
    p.send_encoded("junk", b"not avro at all").await.unwrap();
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    assert_eq!(wait_for_events(&db, 3, Duration::from_secs(60)).await, 3);
    let dl = format!("SELECT count() FROM {}.usage_dead_letters", db.database);
    assert!(wait_until(Duration::from_secs(30), || async { count(&db, &dl).await == 3 }).await, "three dead letters");

    // inspect: export the invalid ones
    let dir = std::env::temp_dir().join(unique("dlq"));
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("dead.ndjson");
    let st = Command::new(bin("aggregator"))
        .args(["dead-letters", "--reason", "invalid", "--out", export.to_str().unwrap()])
        .env("AGGREGATOR__CLICKHOUSE__URL", &db.url)
        .env("AGGREGATOR__CLICKHOUSE__DATABASE", &db.database)
        .status()
        .unwrap();
    assert!(st.success());
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&export).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "the two invalid events, not the garbage");
    // fix them
    let fixed: Vec<String> = lines
        .into_iter()
        .map(|mut l| {
            assert!(l["reason"].as_str().unwrap().starts_with("invalid"));
            assert!(l["source"].as_str().unwrap().starts_with(&format!("kafka:{topic}/")));
            let e = &mut l["event"];
            if e["bytes_out"].as_i64().unwrap() < 0 {
                e["bytes_out"] = 500.into();
            }
            if e["account_id"] == "" {
                e["account_id"] = "acct".into();
            }
            l.to_string()
        })
        .collect();
    let fixed_file = dir.join("fixed.ndjson");
    std::fs::write(&fixed_file, fixed.join("\n")).unwrap();
    // re-inject, twice: the second run's copies are duplicates
    for _ in 0..2 {
        let out = Command::new(bin("ingest"))
            .args(["replay", "--file", fixed_file.to_str().unwrap(), "--brokers", &brokers(), "--topic", &topic])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("re-injected 2 events"));
    }
    assert_eq!(wait_for_events(&db, 5, Duration::from_secs(60)).await, 5);
    let got = sums_by(&db, "usage_by_tracking", "tracking_id").await;
    assert_eq!(got["replay-partner"].bytes_out, 3 * 1000 + 500 + 2000);
    // an unfixed export is refused line by line, nothing produced
    let out = Command::new(bin("ingest"))
        .args(["replay", "--file", export.to_str().unwrap(), "--brokers", &brokers(), "--topic", &topic])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bytes_out"), "{}", String::from_utf8_lossy(&out.stderr));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(wait_for_events(&db, 5, Duration::from_secs(5)).await, 5);
    drop_db(&db).await;
}
