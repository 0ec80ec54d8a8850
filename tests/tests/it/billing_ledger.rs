//! Billing as a ledger, end to end on the real stack (simulator -> Kafka ->
//! aggregator -> ClickHouse -> the `billing` binary): issuing exactly once
//! under crashes at every step and under two runs at once; late usage of a
//! partner that had none at issue; usage that fell after issue and a manual
//! credit, carried by the next invoice; the PDF. Every figure is checked
//! against totals computed here from the events the test produced (or read
//! with plain SQL from the contract views), never from billing's output.

use billing::invoice::{Invoice, LineKind};
use e2e::*;
use rust_decimal::prelude::*;
use simulator::simulate::{Expected, SimConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

/// acme's price changes in November, so "priced as October" is visible;
/// zed owns `initech-web`, which has no usage until late October events.
const RATES: &str = r#"
[[partner]]
id = "acme"
name = "Acme TV"
tracking_ids = ["acme-web"]
currency = "EUR"
unit = "GB"
pricing = "flat"
tiers = [ { unit_price = "0.050" } ]

[[partner.price_change]]
effective_from = "2026-11-01"
tiers = [ { unit_price = "0.080" } ]

[[partner]]
id = "globex"
name = "Globex"
tracking_ids = ["globex-web"]
currency = "EUR"
unit = "GB"
pricing = "flat"
tiers = [ { unit_price = "0.030" } ]

[[partner]]
id = "zed"
name = "Zed Média"
tracking_ids = ["initech-web"]
currency = "EUR"
unit = "GB"
pricing = "flat"
tiers = [ { unit_price = "0.040" } ]

[[partner.price_change]]
effective_from = "2026-11-01"
tiers = [ { unit_price = "0.090" } ]
"#;

const PARTNERS: [(&str, &str); 3] = [("acme", "acme-web"), ("globex", "globex-web"), ("zed", "initech-web")];

/// The October price per GB of each partner, as the rate card above says.
fn october_price(partner: &str) -> Decimal {
    Decimal::from_str(match partner {
        "acme" => "0.050",
        "globex" => "0.030",
        _ => "0.040",
    })
    .unwrap()
}

struct Env {
    db: runtime::ch::ClickHouseConfig,
    dir: std::path::PathBuf,
    rates: String,
}

impl Env {
    fn new(db: runtime::ch::ClickHouseConfig, name: &str) -> Env {
        let dir = std::env::temp_dir().join(unique(name));
        std::fs::create_dir_all(&dir).unwrap();
        let rates = dir.join("rates.toml");
        std::fs::write(&rates, RATES).unwrap();
        Env { db, rates: rates.to_str().unwrap().to_string(), dir }
    }

    fn cmd(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(bin("billing"));
        c.args(args)
            .args(["--rates", &self.rates])
            .env("BILLING__CLICKHOUSE__URL", &self.db.url)
            .env("BILLING__CLICKHOUSE__DATABASE", &self.db.database)
            .env("BILLING__ISSUE_LOCK_STALE_SECS", "3")
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.cmd(args, env).output().expect("run billing")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, &[]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "billing {args:?}: {text}");
        text
    }

    fn out(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

fn invoice(dir: &str, number: &str) -> Invoice {
    let path = Path::new(dir).join("invoices").join(format!("{number}.json"));
    Invoice::from_json(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Bytes out of a simulated run per tracking id, for days of `month`.
fn month_bytes(e: &Expected, month: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (_, m) in e.by_day.iter().filter(|(d, _)| d.starts_with(month)) {
        for (t, s) in m {
            *out.entry(t.clone()).or_insert(0) += s.bytes_out;
        }
    }
    out
}

fn add(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (t, b) in from {
        *into.entry(t.clone()).or_insert(0) += b;
    }
}

/// A small simulated run of 30 minutes from `start` (RFC 3339).
fn sim(seed: u64, run: &str, partners: usize, start: &str) -> SimConfig {
    SimConfig {
        seed,
        run_id: run.to_string(),
        partners,
        viewers_per_partner: 4,
        untracked_viewers: 1,
        start_ms: chrono::DateTime::parse_from_rfc3339(start).unwrap().timestamp_millis(),
        duration_secs: 1800,
        session_secs: (300, 1200),
        duplicates: 0.03,
        ..Default::default()
    }
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct KeyBytes {
    key: String,
    bytes: i64,
}

/// What the ledger billed for `usage_period`, per tracking id, over every
/// ledger row (the `billing_billed` view, read with plain SQL).
async fn billed(db: &runtime::ch::ClickHouseConfig, usage_period: &str) -> BTreeMap<String, i64> {
    let rows: Vec<KeyBytes> = db
        .client()
        .query(&format!(
            "SELECT tracking_id AS key, sum(bytes) AS bytes FROM {}.billing_billed WHERE usage_period = ? GROUP BY tracking_id",
            db.database
        ))
        .bind(usage_period)
        .fetch_all()
        .await
        .unwrap();
    rows.into_iter().filter(|r| r.bytes != 0).map(|r| (r.key, r.bytes)).collect()
}

/// `usage` restricted to the tracking ids the rate card owns, as i64.
fn owned(usage: &BTreeMap<String, u64>) -> BTreeMap<String, i64> {
    PARTNERS.iter().filter_map(|(_, t)| usage.get(*t).filter(|b| **b > 0).map(|b| (t.to_string(), *b as i64))).collect()
}

async fn count(db: &runtime::ch::ClickHouseConfig, sql: &str) -> u64 {
    e2e::count(db, &sql.replace("{db}", &db.database)).await
}

async fn counted(db: &runtime::ch::ClickHouseConfig, events: u64) {
    assert_eq!(wait_for_events(db, events, Duration::from_secs(120)).await, events, "events counted");
    assert!(wait_checkpointed(db, Duration::from_secs(60)).await, "every flush checkpointed");
}

fn round_cents(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Flat price of `bytes` at `price` per GB, rounded once to cents.
fn flat(bytes: u64, price: Decimal) -> Decimal {
    round_cents(Decimal::from(bytes) * price / Decimal::from(1_000_000_000u64))
}

/// After `billing issue --period month` (however often it ran or crashed):
/// one ledger row and one issued invoice row per partner, the issued lines
/// of each, and billed = the usage the test produced.
async fn issued_once(env: &Env, month: &str, usage: &BTreeMap<String, u64>, out: &str) {
    let db = &env.db;
    let p = format!("period = '{month}'");
    assert_eq!(count(db, &format!("SELECT count() FROM {{db}}.billing_ledger WHERE {p}")).await, 3, "{month}: one ledger row per partner");
    assert_eq!(
        count(db, &format!("SELECT count() FROM {{db}}.billing_invoices WHERE {p} AND status = 'issued'")).await,
        3,
        "{month}: one issued invoice row per partner"
    );
    for (partner, _) in PARTNERS {
        let number = format!("INV-{}-{partner}-r1", month.replace('-', ""));
        let inv = invoice(out, &number);
        let lines =
            count(db, &format!("SELECT count() FROM {{db}}.billing_invoice_lines WHERE invoice_number = '{number}' AND status = 'issued'"))
                .await;
        assert_eq!(lines, inv.lines.len() as u64, "{number}: its lines stored once");
        assert!(Path::new(out).join("invoices").join(format!("{number}.pdf")).exists(), "{number}.pdf written");
    }
    assert_eq!(billed(db, month).await, owned(usage), "{month}: billed = usage, once");
}

/// `billing issue` killed (SIGKILL) right after each of its writing steps,
/// each time for a new month, then run again: the invoices and the billed
/// usage are as if it had run once. Then two `billing issue` started
/// together: one set of invoices, one of billed usage. Then a computation
/// over one snapshot, repeated after more usage arrived, gives the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_bills_once_across_a_crash_at_every_step_and_two_runs_at_once() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("ledger_crash");
    create_topic(&topic, 2).await;
    let env = Env::new(test_db().await, "ledger_crash");
    let steps = billing::run::ISSUE_STEPS;
    let months: Vec<String> = (1..=steps.len() + 1).map(|m| format!("2026-{m:02}")).collect();
    let mut usage: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut events = 0;
    for (i, month) in months.iter().enumerate() {
        let e = simulate_to_kafka(&sim(60 + i as u64, &format!("{topic}-{month}"), 3, &format!("{month}-10T10:00:00Z")), &topic).await;
        events += e.unique_valid_events;
        usage.insert(month.clone(), month_bytes(&e, month));
    }
    let _agg = spawn_aggregator(&topic, &env.db, &unique("g"), &[]);
    counted(&env.db, events).await;

    for (step, month) in steps.iter().zip(&months) {
        let out = env.out(&format!("issue-{month}"));
        let crashed = env.run(&["issue", "--period", month, "--out", &out], &[(billing::run::FAULT_ENV, step)]);
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&crashed.status),
            Some(9),
            "killed after {step}: {}",
            String::from_utf8_lossy(&crashed.stderr)
        );
        env.ok(&["issue", "--period", month, "--out", &out]);
        issued_once(&env, month, &usage[month], &out).await;
    }

    // two at once, for the last month
    let month = months.last().unwrap();
    let (a, b) = (env.out("together-a"), env.out("together-b"));
    let mut first = env.cmd(&["issue", "--period", month, "--out", &a], &[]).spawn().unwrap();
    let mut second = env.cmd(&["issue", "--period", month, "--out", &b], &[]).spawn().unwrap();
    assert!(first.wait().unwrap().success() && second.wait().unwrap().success(), "both runs end well");
    issued_once(&env, month, &usage[month], &a).await;
    for (partner, _) in PARTNERS {
        let number = format!("INV-{}-{partner}-r1", month.replace('-', ""));
        assert_eq!(invoice(&a, &number), invoice(&b, &number), "{number}: both runs wrote the one issued invoice");
    }
    // no corrections anywhere: every month's usage was billed once, when issued
    for m in &months {
        assert_eq!(billed(&env.db, m).await, owned(&usage[m]), "{m}: billed once over all the invoices");
        let text = env.ok(&["reconcile", "--period", m]);
        assert!(text.contains("one ledger record per invoice number"), "{text}");
    }

    // one snapshot per run: usage written after it does not change what a
    // computation over it gives; a new snapshot sees it
    let store = billing::store::Store::connect(&env.db).await.unwrap();
    let card = billing::rates::load_rate_card(Path::new(&env.rates)).unwrap();
    let july = "2026-07";
    let part1 = simulate_to_kafka(&sim(80, &format!("{topic}-jul1"), 3, "2026-07-05T10:00:00Z"), &topic).await;
    events += part1.unique_valid_events;
    counted(&env.db, events).await;
    let inputs = billing::run::Inputs::read(&store).await.unwrap();
    let shown = |c: &billing::run::Computed| {
        (c.invoices.iter().map(Invoice::to_json).collect::<Vec<_>>(), serde_json::to_string(&c.report).unwrap())
    };
    let before = billing::run::compute_at(&store, &card, july, &inputs).await.unwrap();
    let part2 = simulate_to_kafka(&sim(81, &format!("{topic}-jul2"), 3, "2026-07-06T10:00:00Z"), &topic).await;
    events += part2.unique_valid_events;
    counted(&env.db, events).await;
    let again = billing::run::compute_at(&store, &card, july, &inputs).await.unwrap();
    assert_eq!(shown(&again), shown(&before), "the same snapshot gives the same invoices and report");
    let part1_bytes: u64 = month_bytes(&part1, july).values().sum();
    assert_eq!(before.report.total_bytes, part1_bytes, "the snapshot holds the first part exactly");
    let fresh = billing::run::compute(&store, &card, july).await.unwrap();
    assert_eq!(fresh.report.total_bytes, part1_bytes + month_bytes(&part2, july).values().sum::<u64>(), "a new snapshot sees both parts");
    assert_ne!(fresh.report.snapshot, before.report.snapshot);
    let _ = std::fs::remove_dir_all(&env.dir);
    drop_db(&env.db).await;
}

/// Text of a PDF, read with `lopdf` (not the writer's code).
fn pdf_text(path: &Path) -> String {
    let doc = lopdf::Document::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let pages: Vec<u32> = doc.get_pages().keys().copied().collect();
    doc.extract_text(&pages).unwrap()
}

/// An amount as the invoice documents print it: `-12345.50` as `-12,345.50`.
fn grouped(d: Decimal) -> String {
    let s = d.abs().to_string();
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let mut g = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            g.push(',');
        }
        g.push(c);
    }
    let frac = if frac.is_empty() { String::new() } else { format!(".{frac}") };
    format!("{}{g}{frac}", if d.is_sign_negative() && !d.is_zero() { "-" } else { "" })
}

/// October is issued; late October usage arrives, for partners with usage
/// and for zed, which had none at issue; then a later claim supersedes part
/// of a partition's rows (the fenced rows no longer count, so October's
/// usage falls below what was billed for some tracking ids), and finance
/// records a manual credit. November's invoices carry every correction,
/// priced under October's prices, in both directions; the reconciliation
/// agrees; the issued October invoices never change; the PDF says what the
/// JSON says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_in_both_directions_and_manual_credits_reach_the_next_invoice() {
    let _stack = e2e::turns::shared().await;
    let topic = unique("ledger_fix");
    create_topic(&topic, 2).await;
    let env = Env::new(test_db().await, "ledger_fix");
    let db = env.db.clone();
    // October: acme and globex only
    let oct = simulate_to_kafka(&sim(70, &format!("{topic}-oct"), 2, "2026-10-20T10:00:00Z"), &topic).await;
    let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
    counted(&db, oct.unique_valid_events).await;
    let issued_dir = env.out("oct");
    env.ok(&["issue", "--period", "2026-10", "--out", &issued_dir]);
    let oct_usage = month_bytes(&oct, "2026-10");
    assert!(!oct_usage.contains_key("initech-web"), "zed has no October usage at issue");
    assert_eq!(billed(&db, "2026-10").await, owned(&oct_usage));
    let issued: Vec<Vec<u8>> = PARTNERS
        .iter()
        .map(|(p, _)| std::fs::read(Path::new(&issued_dir).join(format!("invoices/INV-202610-{p}-r1.json"))).unwrap())
        .collect();

    // late October usage of all three
    let late_cfg = SimConfig {
        viewers_per_partner: 2,
        duration_secs: 600,
        session_secs: (120, 400),
        ..sim(71, &format!("{topic}-late"), 3, "2026-10-25T12:00:00Z")
    };
    let late = simulate_to_kafka(&late_cfg, &topic).await;
    let all = oct.unique_valid_events + late.unique_valid_events;
    counted(&db, all).await;
    let mut with_late = oct_usage.clone();
    add(&mut with_late, &month_bytes(&late, "2026-10"));
    assert_eq!(
        sums_by(&db, "usage_by_tracking", "tracking_id").await.into_iter().map(|(t, s)| (t, s.bytes_out)).collect::<BTreeMap<_, _>>(),
        with_late
    );
    agg.terminate(Duration::from_secs(30));

    // a later claim of partition 0 starting half-way: rows past it no longer count
    let half = count(&db, "SELECT intDiv(max(src_offset), 2) FROM {db}.usage_by_tracking_log WHERE src_partition = 0").await;
    let epoch = count(&db, "SELECT max(epoch) FROM {db}.aggregator_claims WHERE partition = 0").await;
    db.client()
        .query(&format!(
            "INSERT INTO {}.aggregator_claims (topic, partition, epoch, start_offset, member, claim_id, claimed_at) \
             SELECT ?, 0, ?, ?, 'test-supersede', 777, now()",
            db.database
        ))
        .bind(&topic)
        .bind(epoch + 1)
        .bind(half)
        .execute()
        .await
        .unwrap();
    // October's usage now, as the contract view shows it
    let now: BTreeMap<String, u64> =
        sums_by(&db, "usage_by_tracking", "tracking_id").await.into_iter().map(|(t, s)| (t, s.bytes_out)).collect();
    assert!(now.iter().any(|(t, b)| *b < with_late[t]), "some usage fell: {now:?} vs {with_late:?}");

    // finance records a credit for acme's October
    let text = env.ok(&[
        "adjust",
        "--partner",
        "acme",
        "--period",
        "2026-10",
        "--credit",
        "--amount",
        "1.50",
        "--reason",
        "outage credit",
        "--by",
        "finance@example.test",
    ]);
    assert!(text.contains("ADJ-"), "{text}");
    let refused = env
        .run(&["adjust", "--partner", "acme", "--period", "2026-10", "--credit", "--amount", "1.505", "--reason", "x", "--by", "y"], &[]);
    assert!(!refused.status.success(), "an amount finer than the currency is refused");

    // November: every correction, priced as October
    let nov_dir = env.out("nov");
    let text = env.ok(&["issue", "--period", "2026-11", "--out", &nov_dir]);
    assert!(text.contains("correction"), "{text}");
    let mut credits = 0;
    for (partner, tracking) in PARTNERS {
        let inv = invoice(&nov_dir, &format!("INV-202611-{partner}-r1"));
        let was = oct_usage.get(tracking).copied().unwrap_or(0);
        let is = now.get(tracking).copied().unwrap_or(0);
        let price = october_price(partner);
        let corr: Vec<_> = inv
            .lines
            .iter()
            .filter(|l| {
                matches!(l.kind, LineKind::Adjustment | LineKind::Credit)
                    && l.description.contains("2026-10")
                    && !l.description.contains("outage")
            })
            .collect();
        if was == is {
            assert!(corr.is_empty(), "{partner}: nothing to correct: {:?}", inv.lines);
        } else {
            assert_eq!(corr.len(), 1, "{partner}: one correction line: {:?}", inv.lines);
            let kind = if is > was { LineKind::Adjustment } else { LineKind::Credit };
            assert_eq!((corr[0].kind, corr[0].bytes), (kind, is.abs_diff(was)), "{partner}");
            assert_eq!(corr[0].amount, flat(is, price) - flat(was, price), "{partner}: at October's price");
            credits += usize::from(kind == LineKind::Credit);
        }
        if partner == "zed" {
            assert_eq!(was, 0);
            assert!(is > 0 && corr[0].kind == LineKind::Adjustment, "zed's late October usage is billed");
        }
        if partner == "acme" {
            let manual: Vec<_> = inv.lines.iter().filter(|l| l.description.contains("outage credit")).collect();
            assert_eq!(manual.len(), 1, "the manual credit, once: {:?}", inv.lines);
            assert_eq!((manual[0].kind, manual[0].amount), (LineKind::Credit, Decimal::from_str("-1.50").unwrap()));
        }
        let sum: Decimal = inv.lines.iter().map(|l| l.amount).sum();
        assert_eq!(inv.total, sum, "{partner}: the total is the sum of the lines");
        // the PDF says what the JSON says
        let pdf = pdf_text(&Path::new(&nov_dir).join("invoices").join(format!("{}.pdf", inv.invoice_number)));
        assert!(pdf.contains(&inv.invoice_number), "{pdf}");
        assert!(pdf.contains(&format!("{} EUR", grouped(inv.total))), "total {} in the PDF: {pdf}", inv.total);
        assert!(pdf.contains(&format!("{} EUR", grouped(inv.subtotal))), "subtotal in the PDF: {pdf}");
        for l in &inv.lines {
            assert!(pdf.contains(&grouped(l.amount)), "line {} amount {} in the PDF: {pdf}", l.line_no, l.amount);
        }
    }
    assert!(credits > 0, "at least one partner's October usage fell");
    // billed for October is now its usage; the issued October invoices did not change
    assert_eq!(billed(&db, "2026-10").await, owned(&now));
    env.ok(&["run", "--period", "2026-10", "--out", &env.out("oct-again")]);
    for ((p, _), before) in PARTNERS.iter().zip(&issued) {
        let again = std::fs::read(Path::new(&env.out("oct-again")).join(format!("invoices/INV-202610-{p}-r1.json"))).unwrap();
        assert_eq!(&again, before, "{p}: the issued October invoice never changes");
    }
    let text = env.ok(&["reconcile", "--period", "2026-10"]);
    assert!(text.contains("billed") && !text.contains("FAIL"), "{text}");
    // December carries nothing more: every correction was settled once
    let dec = env.out("dec");
    env.ok(&["run", "--period", "2026-12", "--out", &dec]);
    for (partner, _) in PARTNERS {
        let inv = invoice(&dec, &format!("INV-202612-{partner}-r1"));
        assert!(inv.lines.iter().all(|l| l.kind == LineKind::Usage), "{partner}: nothing left to carry: {:?}", inv.lines);
    }
    let _ = std::fs::remove_dir_all(&env.dir);
    drop_db(&db).await;
}
