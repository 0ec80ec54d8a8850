//! simulator -> Kafka -> aggregator -> ClickHouse -> billing, with invoice
//! totals checked against totals computed independently from the simulator.

use billing::invoice::{Invoice, LineKind};
use e2e::*;
use rust_decimal::prelude::*;
use simulator::simulate::SimConfig;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const RATES: &str = r#"
[[partner]]
id = "acme"
name = "Acme TV"
tracking_ids = ["acme-web"]
currency = "EUR"
unit = "GB"
pricing = "flat"
tiers = [ { unit_price = "0.050" } ]

[[partner]]
id = "globex"
name = "Globex <Streaming> & Co"
tracking_ids = ["globex-web"]
currency = "JPY"
unit = "GB"
pricing = "flat"
minimum_commitment = "100000"
tiers = [ { unit_price = "7" } ]

[[partner]]
id = "initech"
name = "Initech"
tracking_ids = ["initech-web"]
currency = "USD"
unit = "GiB"
pricing = "graduated"
tiers = [ { up_to = "1", unit_price = "0.10" }, { unit_price = "0.02" } ]
"#;

fn billing(db: &runtime::ch::ClickHouseConfig, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin("billing"))
        .args(args)
        .env("BILLING__CLICKHOUSE__URL", &db.url)
        .env("BILLING__CLICKHOUSE__DATABASE", &db.database)
        .output()
        .expect("run billing");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn invoice(dir: &Path, number: &str) -> Invoice {
    Invoice::from_json(&std::fs::read_to_string(dir.join("invoices").join(format!("{number}.json"))).unwrap()).unwrap()
}

fn read_all(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for e in walk(dir) {
        files.push((e.strip_prefix(dir).unwrap().display().to_string(), std::fs::read(&e).unwrap()));
    }
    files.sort();
    files
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Amount computed here, independently of the billing crate's pricing.
fn round2(x: Decimal, dp: u32) -> Decimal {
    x.round_dp_with_strategy(dp, RoundingStrategy::MidpointAwayFromZero)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_match_the_simulated_usage_and_late_usage_becomes_an_adjustment() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("bill");
    create_topic(&topic, 2).await;
    let db = test_db().await;
    let dir = std::env::temp_dir().join(unique("billing"));
    std::fs::create_dir_all(&dir).unwrap();
    let rates = dir.join("rates.toml");
    std::fs::write(&rates, RATES).unwrap();
    let rates = rates.to_str().unwrap().to_string();
    // Oct 31 18:00 .. Nov 1 02:00: usage on both sides of the period boundary;
    // 4 partners, but the rate card owns 3 ("umbrella-web" is unowned)
    let start = chrono::DateTime::parse_from_rfc3339("2026-10-31T18:00:00Z").unwrap().timestamp_millis();
    let cfg = SimConfig {
        seed: 41,
        run_id: topic.clone(),
        partners: 4,
        viewers_per_partner: 12,
        untracked_viewers: 4,
        start_ms: start,
        duration_secs: 8 * 3600,
        session_secs: (600, 5400),
        duplicates: 0.03,
        ..Default::default()
    };
    let exp = simulate_to_kafka(&cfg, &topic).await;
    let _agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    assert_eq!(wait_for_events(&db, exp.unique_valid_events, Duration::from_secs(120)).await, exp.unique_valid_events);
    assert!(wait_checkpointed(&db, Duration::from_secs(60)).await, "every flush checkpointed (billing reads as of the checkpoints)");
    // sealed: billing reads the sealed daily rows (and the log above them)
    assert!(run_seal(&db, None).success(), "a seal");

    // expected October bytes per tracking id, from the simulator's hourly totals
    let october = |t: &str| -> u64 {
        exp.by_hour.iter().filter(|(h, _)| h.starts_with("2026-10")).filter_map(|(_, m)| m.get(t)).map(|s| s.bytes_out).sum()
    };
    let out1 = dir.join("run1");
    let (ok, text) = billing(&db, &["run", "--period", "2026-10", "--rates", &rates, "--out", out1.to_str().unwrap()]);
    assert!(ok, "{text}");
    let acme = invoice(&out1, "INV-202610-acme-r1");
    assert_eq!(acme.total_bytes, october("acme-web"));
    let expect = round2(Decimal::from(october("acme-web")) * Decimal::from_str("0.050").unwrap() / Decimal::from(1_000_000_000u64), 2);
    assert_eq!(acme.total, expect, "acme: flat EUR");
    let globex = invoice(&out1, "INV-202610-globex-r1");
    let usage_yen = round2(Decimal::from(october("globex-web")) * Decimal::from(7) / Decimal::from(1_000_000_000u64), 0);
    assert_eq!(globex.total, usage_yen.max(Decimal::from(100_000)), "globex: JPY with its minimum commitment");
    assert!(globex.lines.iter().any(|l| l.kind == LineKind::CommitmentTrueUp));
    let initech = invoice(&out1, "INV-202610-initech-r1");
    let gib = Decimal::from(1u64 << 30);
    let b = october("initech-web");
    let first = b.min(1 << 30);
    let expect = round2(Decimal::from(first) * Decimal::from_str("0.10").unwrap() / gib, 2)
        + round2(Decimal::from(b - first) * Decimal::from_str("0.02").unwrap() / gib, 2);
    assert_eq!(initech.total, expect, "initech: graduated GiB, each line rounded once");
    assert_eq!(initech.lines.iter().map(|l| l.bytes).sum::<u64>(), b);
    let report = std::fs::read_to_string(out1.join("report-2026-10.json")).unwrap();
    assert!(report.contains("umbrella-web"), "unowned usage is reported: {report}");
    assert!(text.contains("INV-202610-acme-r1"), "terminal table: {text}");

    // a second run is byte-identical
    let out2 = dir.join("run2");
    assert!(billing(&db, &["run", "--period", "2026-10", "--rates", &rates, "--out", out2.to_str().unwrap()]).0);
    assert_eq!(read_all(&out1), read_all(&out2), "re-run gives byte-identical files");

    // reconciliation agrees
    let (ok, text) = billing(&db, &["reconcile", "--period", "2026-10", "--rates", &rates]);
    assert!(ok, "{text}");

    // issue October; then late October usage arrives for acme
    let out3 = dir.join("issued");
    let (ok, text) = billing(&db, &["issue", "--period", "2026-10", "--rates", &rates, "--out", out3.to_str().unwrap()]);
    assert!(ok, "{text}");
    let issued = std::fs::read(out3.join("invoices/INV-202610-acme-r1.json")).unwrap();
    let late = SimConfig {
        seed: 42,
        run_id: format!("{topic}-late"),
        partners: 1,
        viewers_per_partner: 3,
        untracked_viewers: 0,
        start_ms: chrono::DateTime::parse_from_rfc3339("2026-10-15T10:00:00Z").unwrap().timestamp_millis(),
        duration_secs: 1800,
        session_secs: (300, 900),
        ..Default::default()
    };
    let late_exp = simulate_to_kafka(&late, &topic).await;
    let late_bytes = late_exp.by_tracking["acme-web"].bytes_out;
    let total = exp.unique_valid_events + late_exp.unique_valid_events;
    assert_eq!(wait_for_events(&db, total, Duration::from_secs(120)).await, total);
    assert!(wait_checkpointed(&db, Duration::from_secs(60)).await);
    // the late usage sealed too: what was issued is read from two seals now
    assert!(run_seal(&db, None).success(), "a second seal");
    assert_eq!(count(&db, &format!("SELECT count() FROM {}.usage_seals WHERE consolidated = 0", db.database)).await, 2);
    // and October's rows of the two seals consolidated into one row per key
    assert_eq!(count(&db, &format!("SELECT count() FROM {}.usage_seals WHERE consolidated = 1", db.database)).await, 1);

    // the issued invoice does not change ...
    let out4 = dir.join("after-late");
    let (ok, text) = billing(&db, &["run", "--period", "2026-10", "--rates", &rates, "--out", out4.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert_eq!(std::fs::read(out4.join("invoices/INV-202610-acme-r1.json")).unwrap(), issued, "issued invoice unchanged");
    let report = std::fs::read_to_string(out4.join("report-2026-10.json")).unwrap();
    assert!(report.contains("pending_corrections") && report.contains(&late_bytes.to_string()), "{report}");
    // ... the late bytes are an adjustment on November's invoice
    let out5 = dir.join("nov");
    let (ok, text) = billing(&db, &["run", "--period", "2026-11", "--rates", &rates, "--out", out5.to_str().unwrap()]);
    assert!(ok, "{text}");
    let nov = invoice(&out5, "INV-202611-acme-r1");
    let adj: Vec<_> = nov.lines.iter().filter(|l| l.kind == LineKind::Adjustment).collect();
    assert_eq!(adj.len(), 1, "{:?}", nov.lines);
    assert_eq!(adj[0].bytes, late_bytes);
    let nov_usage: u64 =
        exp.by_hour.iter().filter(|(h, _)| h.starts_with("2026-11")).filter_map(|(_, m)| m.get("acme-web")).map(|s| s.bytes_out).sum();
    assert_eq!(nov.total_bytes, nov_usage);
    // reconciliation still agrees (late usage is billed later, not lost) ...
    let (ok, text) = billing(&db, &["reconcile", "--period", "2026-10", "--rates", &rates]);
    assert!(ok, "{text}");
    // ... and fails when a row is tampered with
    db.client()
        .query(&format!(
            "INSERT INTO {db}.usage_by_viewer_log (window_start, tracking_id, viewer_id, bytes_out, events, src_topic, src_partition, src_epoch, src_offset) \
             SELECT toDateTime('2026-10-31 20:00:00', 'UTC'), 'acme-web', 'forged', 12345, 1, topic, partition, epoch, position \
             FROM {db}.aggregator_checkpoints ORDER BY epoch DESC, position DESC LIMIT 1",
            db = db.database
        ))
        .execute()
        .await
        .unwrap();
    let (ok, text) = billing(&db, &["reconcile", "--period", "2026-10", "--rates", &rates]);
    assert!(!ok, "tampering must be detected: {text}");
    assert!(text.contains("FAIL"), "{text}");
    // statements
    let (ok, text) = billing(&db, &["statements", "--period", "2026-10", "--rates", &rates, "--out", out5.to_str().unwrap()]);
    assert!(ok, "{text}");
    let st = std::fs::read_to_string(out5.join("statement-acme-2026-10-daily.csv")).unwrap();
    let sum: u64 = st.lines().skip(1).map(|l| l.split(',').nth(2).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(sum, october("acme-web") + late_bytes);
    drop_db(&db).await;
}

#[test]
fn a_bad_rate_card_is_refused_with_its_line() {
    let _stack = e2e::turns::shared_blocking();
    let dir = std::env::temp_dir().join(unique("badrates"));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("rates.toml");
    std::fs::write(&f, "[[partner]]\nid = \"a\"\nname = \"A\"\ntracking_ids = [\"t\"]\ncurrency = \"EUR\"\npricing = \"flat\"\ntiers = [ { unit_price = 0.05 } ]\n").unwrap();
    let db = runtime::ch::ClickHouseConfig { url: clickhouse_url(), ..Default::default() };
    let (ok, text) = billing(&db, &["run", "--period", "2026-10", "--rates", f.to_str().unwrap(), "--out", dir.to_str().unwrap()]);
    assert!(!ok);
    assert!(text.contains("rates.toml:7"), "{text}");
}
