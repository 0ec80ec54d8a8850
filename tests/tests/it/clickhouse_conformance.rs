//! The fenced SQL means the same on every supported ClickHouse (18.16 and a
//! current 26.x; `scripts/test` runs this file on both). Rows are written
//! straight into the log and state tables under several epochs, with a
//! superseded batch, a claim row written twice, a checkpoint per epoch,
//! viewers in the dedup table and rows of an epoch that was never claimed;
//! an epoch claimed by two members at once (contested), every view, rollup,
//! the claim-time checkpoint read and the dedup restore are compared with
//! what this file computes from the rows it inserted.

use aggregator::dedup::{At, Horizon, Seen};
use aggregator::sink::Sink;
use aggregator::store::Store;
use e2e::*;
use runtime::ch::ClickHouseConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

const DAY1: &str = "2026-10-01";
const DAY2: &str = "2026-10-02";

/// A claim: (partition, epoch, start_offset, claim_id).
type Claim = (u32, u64, u64, u64);

/// One row of a log table: (partition, epoch, offset, tracking id, viewer id, window start, bytes_out).
#[derive(Clone, Copy)]
struct LogRow {
    partition: u32,
    epoch: u64,
    offset: u64,
    tracking: &'static str,
    viewer: &'static str,
    window: (&'static str, u32, u32), // day, hour, minute
    bytes: u64,
}

const fn row(
    partition: u32,
    epoch: u64,
    offset: u64,
    tracking: &'static str,
    viewer: &'static str,
    window: (&'static str, u32, u32),
    bytes: u64,
) -> LogRow {
    LogRow { partition, epoch, offset, tracking, viewer, window, bytes }
}

const ROWS: &[LogRow] = &[
    row(0, 1, 50, "alpha", "v1", (DAY1, 10, 0), 1_000),
    row(0, 1, 50, "beta", "v2", (DAY1, 10, 1), 2_000),
    // at epoch 1's fence itself: counts
    row(0, 1, 100, "beta", "v2", (DAY1, 10, 3), 256),
    // written by epoch 1 after epoch 2 claimed from 100: superseded
    row(0, 1, 120, "alpha", "v1", (DAY1, 10, 2), 4_000),
    // the same events, counted again by epoch 2
    row(0, 2, 120, "alpha", "v1", (DAY1, 10, 2), 4_000),
    // written by epoch 2 after epoch 3 claimed from 150: superseded
    row(0, 2, 160, "beta", "v2", (DAY1, 11, 0), 8_000),
    row(0, 3, 160, "beta", "v2", (DAY1, 11, 0), 8_000),
    row(0, 3, 200, "gamma", "v3", (DAY2, 10, 0), 16_000),
    row(0, 3, 200, "gamma", "v4", (DAY2, 23, 59), 16_001),
    row(1, 1, 5, "alpha", "v5", (DAY1, 10, 0), 32_000),
    row(1, 1, 5, "", "v6", (DAY1, 12, 30), 64_000),
    row(1, 1, 7, "alpha", "v5", (DAY1, 10, 0), 3),
    // an epoch that was never claimed: never visible
    row(1, 9, 1, "ghost", "v7", (DAY1, 10, 0), 128_000),
    // partition 2: epoch 2 claimed by two members at once, from 10 and 12;
    // epoch 3 resumed from 10
    row(2, 1, 8, "delta", "v8", (DAY1, 9, 0), 1),
    row(2, 1, 11, "delta", "v8", (DAY1, 9, 1), 2),
    row(2, 2, 14, "delta", "v8", (DAY1, 9, 2), 4),
    row(2, 2, 15, "delta", "v9", (DAY1, 9, 3), 8),
    row(2, 3, 16, "delta", "v8", (DAY1, 9, 2), 16),
];

const CLAIMS: &[Claim] = &[
    (0, 1, 0, 7),
    (0, 1, 0, 7),
    (0, 2, 100, 8),
    (0, 3, 150, 9),
    (1, 1, 0, 0),
    (2, 1, 0, 21),
    (2, 2, 12, 22),
    (2, 2, 10, 23),
    (2, 3, 10, 24),
];

/// A checkpoint: (partition, epoch, position, watermark_ms, arrival_ms).
const CHECKPOINTS: &[(u32, u64, u64, i64, i64)] = &[
    (0, 1, 50, 1_000, 2_000),
    (0, 2, 120, 1_100, 2_100),
    (0, 2, 180, 1_900, 2_900), // past epoch 3's start: superseded
    (0, 3, 170, 1_700, 2_700),
    (1, 1, 5, 500, 600),
    (1, 9, 99, 9_900, 9_990), // never claimed
    (2, 1, 8, 800, 880),
    (2, 1, 11, 1_100, 1_180), // past the contested claims' smallest start
    (2, 2, 15, 1_500, 1_580), // of the contested epoch
    (2, 3, 16, 1_600, 1_680),
];

/// A dedup row: (epoch, position, viewer, flat seq ranges, last_seen_ms), partition 0.
const DEDUP: &[(u64, u64, &str, &[i64], i64)] = &[
    (1, 50, "v1", &[0, 3], 2_000),
    (2, 120, "v1", &[0, 5], 2_100),
    (1, 50, "v2", &[0, 1], 2_000),
    (2, 180, "v2", &[0, 9], 2_900), // superseded with its checkpoint
    (3, 170, "v3", &[0, 2], 2_700),
    (3, 200, "v4", &[0, 7], 2_800), // past the checkpoint the claim resumes from
];

/// The rule, stated here apart from the SQL: a row of epoch `e` at `offset`
/// counts iff its epoch was claimed by one claim (one `claim_id`, however
/// many times written) and no later claim of its partition started before
/// `offset`.
fn counts(claims: &[Claim], partition: u32, epoch: u64, offset: u64) -> bool {
    let ids: std::collections::BTreeSet<u64> = claims.iter().filter(|c| c.0 == partition && c.1 == epoch).map(|c| c.3).collect();
    ids.len() == 1 && claims.iter().filter(|c| c.0 == partition && c.1 > epoch).all(|c| offset <= c.2)
}

fn window_secs((day, hour, minute): (&str, u32, u32)) -> i64 {
    let d = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").unwrap();
    d.and_hms_opt(hour, minute, 0).unwrap().and_utc().timestamp()
}

async fn exec(db: &ClickHouseConfig, sql: String) {
    // on a replicated cluster an insert returns once both replicas have it
    let client = db.writer_client().await.unwrap_or_else(|e| panic!("{}: {e}", db.url));
    client.query(&sql).execute().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `INSERT INTO table (columns) VALUES rows...`: each row a tuple's text.
async fn insert(db: &ClickHouseConfig, table: &str, columns: &str, rows: impl Iterator<Item = String>) {
    let values: Vec<String> = rows.collect();
    exec(db, format!("INSERT INTO {}.{table} ({columns}) VALUES {}", db.database, values.join(", "))).await;
}

async fn insert_fixture(db: &ClickHouseConfig, topic: &str) {
    insert(
        db,
        "aggregator_claims",
        "topic, partition, epoch, start_offset, member, claim_id, claimed_at",
        CLAIMS.iter().map(|(p, e, s, id)| format!("('{topic}', {p}, {e}, {s}, 'm', {id}, now())")),
    )
    .await;
    let time = |w| format!("toDateTime({}, 'UTC')", window_secs(w));
    let src = |r: &LogRow| format!("'{topic}', {}, {}, {}", r.partition, r.epoch, r.offset);
    insert(
        db,
        "usage_by_tracking_log",
        "window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, \
         src_topic, src_partition, src_epoch, src_offset",
        ROWS.iter()
            .map(|r| format!("({}, '{}', 'acct', 'live', 'fra-1', 'WHEP', {}, 1, 1, {})", time(r.window), r.tracking, r.bytes, src(r))),
    )
    .await;
    insert(
        db,
        "usage_by_viewer_log",
        "window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, \
         src_topic, src_partition, src_epoch, src_offset",
        ROWS.iter().map(|r| {
            format!("({}, '{}', '', '{}', 'acct', 'live', 'fra-1', {}, 1, 1, {})", time(r.window), r.tracking, r.viewer, r.bytes, src(r))
        }),
    )
    .await;
    insert(
        db,
        "usage_dead_letters_log",
        "received_at, source, reason, payload, src_topic, src_partition, src_epoch, src_offset",
        ROWS.iter().map(|r| format!("(now(), 'kafka', 'test:{}', '', {})", r.bytes, src(r))),
    )
    .await;
    insert(
        db,
        "aggregator_checkpoints",
        "topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at",
        CHECKPOINTS.iter().map(|(p, e, pos, wm, arr)| format!("('{topic}', {p}, {e}, {pos}, {wm}, {arr}, 'm', now())")),
    )
    .await;
    insert(
        db,
        "aggregator_dedup",
        "topic, partition, epoch, position, viewer_id, seq_ranges, last_seen_ms, created_at",
        DEDUP.iter().map(|(e, pos, v, ranges, seen)| format!("('{topic}', 0, {e}, {pos}, '{v}', {ranges:?}, {seen}, now())")),
    )
    .await;
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct KeyBytes {
    key: String,
    rows: u64,
    bytes: u64,
}

/// `SELECT key, count(), sum(bytes_out) ... GROUP BY key` of a view.
async fn grouped(db: &ClickHouseConfig, view: &str, key: &str) -> BTreeMap<String, (u64, u64)> {
    grouped_by(db, view, key, "count()").await
}

/// [`grouped`], counting `rows` as given (e.g. the distinct time buckets of
/// a rollup, whose rows are partial sums).
async fn grouped_by(db: &ClickHouseConfig, view: &str, key: &str, rows: &str) -> BTreeMap<String, (u64, u64)> {
    let sql = format!(
        "SELECT toString({key}) AS key, {rows} AS rows, sum(bytes_out) AS bytes FROM {}.{view} GROUP BY key ORDER BY key",
        db.database
    );
    let rows: Vec<KeyBytes> = db.client().query(&sql).fetch_all().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.into_iter().map(|r| (r.key, (r.rows, r.bytes))).collect()
}

/// The same from the fixture: rows that count, grouped by `key`.
fn expected(claims: &[Claim], key: impl Fn(&LogRow) -> String) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in ROWS.iter().filter(|r| counts(claims, r.partition, r.epoch, r.offset)) {
        let e = out.entry(key(r)).or_default();
        e.0 += 1;
        e.1 += r.bytes;
    }
    out
}

/// Groups of rollup rows: the number of distinct rollup keys and their bytes.
fn rollup(claims: &[Claim], key: impl Fn(&LogRow) -> (String, String)) -> BTreeMap<String, (u64, u64)> {
    let mut groups: BTreeMap<(String, String), u64> = BTreeMap::new();
    for r in ROWS.iter().filter(|r| counts(claims, r.partition, r.epoch, r.offset)) {
        *groups.entry(key(r)).or_default() += r.bytes;
    }
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for ((k, _), bytes) in groups {
        let e = out.entry(k).or_default();
        e.0 += 1;
        e.1 += bytes;
    }
    out
}

async fn check_views(db: &ClickHouseConfig, claims: &[Claim], when: &str) {
    let hour = |r: &LogRow| format!("{} {:02}:00:00", r.window.0, r.window.1);
    assert_eq!(grouped(db, "usage_by_tracking", "tracking_id").await, expected(claims, |r| r.tracking.into()), "usage_by_tracking {when}");
    assert_eq!(grouped(db, "usage_by_viewer", "viewer_id").await, expected(claims, |r| r.viewer.into()), "usage_by_viewer {when}");
    // dead letters carry their row's bytes in the reason; count them per reason
    let sql = format!("SELECT reason AS key, count() AS rows, toUInt64(0) AS bytes FROM {}.usage_dead_letters GROUP BY key", db.database);
    let dead: Vec<KeyBytes> = db.client().query(&sql).fetch_all().await.unwrap();
    let dead: BTreeMap<String, u64> = dead.into_iter().map(|r| (r.key, r.rows)).collect();
    let want: BTreeMap<String, u64> = expected(claims, |r| format!("test:{}", r.bytes)).into_iter().map(|(k, (n, _))| (k, n)).collect();
    assert_eq!(dead, want, "usage_dead_letters {when}");
    // rollups (partial sums, as every table): per key, its time buckets and
    // the bytes of its rows
    assert_eq!(
        grouped_by(db, "usage_by_tracking_hourly", "tracking_id", "uniqExact(hour)").await,
        rollup(claims, |r| (r.tracking.into(), hour(r))),
        "usage_by_tracking_hourly {when}"
    );
    assert_eq!(
        grouped_by(db, "usage_by_tracking_daily", "tracking_id", "uniqExact(day)").await,
        rollup(claims, |r| (r.tracking.into(), r.window.0.into())),
        "usage_by_tracking_daily {when}"
    );
    assert_eq!(
        grouped_by(db, "usage_by_viewer_daily", "viewer_id", "uniqExact(day)").await,
        rollup(claims, |r| (r.viewer.into(), r.window.0.into())),
        "usage_by_viewer_daily {when}"
    );
    // the fences: one row per claimed (partition, epoch)
    #[derive(Debug, Deserialize, clickhouse::Row, PartialEq)]
    struct Fence {
        partition: u32,
        epoch: u64,
        fence: u64,
    }
    let fences: Vec<Fence> = db
        .client()
        .query(&format!("SELECT partition, epoch, fence FROM {}.aggregator_fences ORDER BY partition, epoch", db.database))
        .fetch_all()
        .await
        .unwrap();
    let mut want: Vec<Fence> = Vec::new();
    for &(p, e, _, _) in claims {
        if want.iter().any(|f| f.partition == p && f.epoch == e) {
            continue;
        }
        let ids: std::collections::BTreeSet<u64> = claims.iter().filter(|c| c.0 == p && c.1 == e).map(|c| c.3).collect();
        let fence = if ids.len() > 1 { 0 } else { claims.iter().filter(|c| c.0 == p && c.1 > e).map(|c| c.2).min().unwrap_or(u64::MAX) };
        want.push(Fence { partition: p, epoch: e, fence });
    }
    want.sort_by_key(|f| (f.partition, f.epoch));
    assert_eq!(fences, want, "aggregator_fences {when}");
}

#[tokio::test]
async fn every_view_rollup_checkpoint_read_and_dedup_restore_matches_the_rows_inserted() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let topic = unique("conf");
    insert_fixture(&db, &topic).await;
    check_views(&db, CLAIMS, "before the claim").await;

    // a member claims both partitions: it resumes from each partition's last
    // checkpoint that counts and restores the dedup state as of it
    let sink = Sink::connect(&db, &topic).await.unwrap();
    let horizon = Horizon { ms: 86_400_000, offsets: 1_000_000 };
    let claimed = sink.claim(&[0, 1, 2], "conformance", horizon).await.unwrap();
    let last_checkpoint = |partition: u32| {
        CHECKPOINTS
            .iter()
            .filter(|c| c.0 == partition && counts(CLAIMS, c.0, c.1, c.2))
            .max_by_key(|c| c.2)
            .copied()
            .unwrap_or_else(|| panic!("partition {partition} has a checkpoint that counts"))
    };
    for p in [0u32, 1, 2] {
        let (_, _, position, watermark, arrival) = last_checkpoint(p);
        let l = &claimed[&(p as i32)];
        assert_eq!(l.position, Some(position as i64), "partition {p}: resume position");
        assert_eq!((l.watermark_ms, l.arrival_ms), (watermark, arrival), "partition {p}: watermark and arrival of that checkpoint");
        let latest = CLAIMS.iter().filter(|c| c.0 == p).map(|c| c.1).max().unwrap();
        assert_eq!(l.epoch, latest + 1, "partition {p}: the next epoch");
    }
    // partition 0's viewers: per viewer, the row with the largest position
    // among those that count and are not past the resume position
    let (_, _, resume, _, arrival) = last_checkpoint(0);
    let mut restored: BTreeMap<&str, (u64, &[i64])> = BTreeMap::new();
    for &(e, pos, viewer, ranges, _) in DEDUP {
        if pos <= resume && counts(CLAIMS, 0, e, pos) && restored.get(viewer).is_none_or(|(p, _)| *p < pos) {
            restored.insert(viewer, (pos, ranges));
        }
    }
    assert_eq!(restored.len(), 3, "the fixture restores v1, v2 and v3");
    let mut dedup = claimed.into_iter().find(|(p, _)| *p == 0).unwrap().1;
    assert_eq!(dedup.viewers_restored, restored.len());
    let at = At { arrival_ms: arrival, offset: resume as i64 };
    let viewers: std::collections::BTreeSet<&str> = DEDUP.iter().map(|d| d.2).collect();
    for viewer in viewers {
        // the restored ranges are one range 0..=last each
        let last = restored.get(viewer).map(|(_, r)| r[1]);
        for seq in 0..12 {
            let want = if last.is_some_and(|l| seq <= l) { Seen::Duplicate } else { Seen::New };
            assert_eq!(dedup.dedup.check_and_insert(viewer, seq, at), want, "{viewer} seq {seq} after the restore");
        }
    }
    // the claim (partition, latest + 1, resume) now fences every row past it
    let mut after: Vec<Claim> = CLAIMS.to_vec();
    for p in [0u32, 1, 2] {
        let latest = CLAIMS.iter().filter(|c| c.0 == p).map(|c| c.1).max().unwrap();
        after.push((p, latest + 1, last_checkpoint(p).2, 1_000 + p as u64));
    }
    check_views(&db, &after, "after the claim").await;
    // and after a restart: the server reads every view back from the text it
    // stored (18.16 failed to read back a view with a lambda returning a tuple)
    let server = db.server_client();
    server.query(&format!("DETACH DATABASE {}", db.database)).execute().await.unwrap();
    server.query(&format!("ATTACH DATABASE {}", db.database)).execute().await.unwrap();
    check_views(&db, &after, "after every view was read back from its stored text").await;
    drop_db(&db).await;
}

/// `billing reconcile` counts the log tables under the claims without the
/// views' join: a view that drops rows fails it.
#[tokio::test]
async fn reconcile_sees_a_fenced_view_that_drops_rows() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let topic = unique("conf_rec");
    insert_fixture(&db, &topic).await;
    let card = billing::rates::load_rate_card(&e2e::repo_root().join("deploy/rates.example.toml")).unwrap();
    let store = billing::store::Store::connect(&db).await.unwrap();
    let checks = billing::reconcile::reconcile(&store, &card, "2026-10").await.unwrap();
    let direct: Vec<_> = checks.iter().filter(|c| c.name.contains("without the views' join")).collect();
    assert_eq!(direct.len(), 2, "{checks:#?}");
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    let total: u64 = expected(CLAIMS, |r| r.tracking.into()).values().map(|v| v.1).sum();
    assert_eq!(direct[0].detail, format!("{total} bytes (every row counted)"), "no seal: nothing recorded");

    // the view as it would be with a join that loses the rows at the fence itself
    let d = &db.database;
    exec(&db, format!("DROP TABLE {d}.usage_by_tracking")).await;
    exec(
        &db,
        format!(
            "CREATE VIEW {d}.usage_by_tracking AS SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, \
             bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at FROM {d}.usage_by_tracking_log \
             ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {d}.aggregator_fences) AS f \
             USING (src_topic, src_partition, src_epoch) WHERE src_offset < fence"
        ),
    )
    .await;
    let checks = billing::reconcile::reconcile(&store, &card, "2026-10").await.unwrap();
    let broken: Vec<_> = checks.iter().filter(|c| !c.ok).collect();
    assert!(
        broken.iter().any(|c| c.name.starts_with("usage_by_tracking = usage_by_tracking_log")),
        "the direct count catches the view: {checks:#?}"
    );
    drop_db(&db).await;
}

/// The writers' inserts are synchronous parts on current versions: the
/// writer client runs with `async_insert = 0` where the server knows the
/// setting (on by default since 26.2) and sends nothing on 18.16 (which
/// refuses it), and a claim written through the aggregator's sink is visible
/// to another client the moment its INSERT returns.
#[tokio::test]
async fn a_writers_insert_is_visible_when_it_returns() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let version = runtime::ch::server_version(&db.server_client()).await.unwrap();
    let writer = db.writer_client().await.unwrap();
    if version.knows_async_insert() {
        let setting: String = writer.query("SELECT toString(getSetting('async_insert'))").fetch_one().await.unwrap();
        assert!(setting == "0" || setting == "false", "ClickHouse {version:?}: the writer's async_insert is {setting:?}");
    } else {
        let refused = db.client().with_option("async_insert", "0").query("SELECT 1").fetch_one::<u8>().await;
        assert!(refused.is_err(), "ClickHouse {version:?} refuses the unknown setting, so the writer must not send it");
        assert_eq!(writer.query("SELECT 1").fetch_one::<u8>().await.unwrap(), 1);
    }
    let topic = unique("conf_sync");
    let sink = Sink::connect(&db, &topic).await.unwrap();
    let reader = db.client();
    for round in 1..=5u64 {
        sink.claim(&[0, 1, 2], "m", Horizon { ms: 1, offsets: 1 }).await.unwrap();
        let n: u64 = reader
            .query(&format!("SELECT count() FROM {}.aggregator_claims WHERE topic = ?", db.database))
            .bind(&topic)
            .fetch_one()
            .await
            .unwrap();
        assert_eq!(n, 3 * round, "round {round}: every claim row visible as the insert returned");
    }
    drop_db(&db).await;
}

/// Bounded dedup state (`aggregator::compact`): ten days of checkpoints and
/// dedup rows of one partition, with record timestamps five days ahead of
/// the writers' clock (a producer stamping records with its own clock). A
/// claim restores exactly the viewers within the horizon, reading the days
/// that can hold them; the compaction drops the days before those (less
/// two), and a claim after it restores the same state.
#[tokio::test]
async fn dedup_restore_reads_the_horizon_days_and_compaction_drops_older_ones() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let topic = unique("bound");
    const DAY_MS: i64 = 86_400_000;
    // day d: written at noon of 2026-10-(1+d), arrival clock 5 days ahead,
    // checkpoint at position 1000 (d + 1)
    let base = window_secs(("2026-10-01", 12, 0));
    let written = |d: i64| base + d * 86_400;
    let arrival = |d: i64| (written(d) * 1000) + 5 * DAY_MS;
    let position = |d: i64| 1_000 * (d as u64 + 1);
    // viewers and the days they were seen on
    let seen: &[(&str, &[i64])] = &[
        ("v-day0", &[0]),
        ("v-days0to5", &[0, 1, 2, 3, 4, 5]),
        ("v-every-day", &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]),
        ("v-day7", &[7]),
        ("v-day6", &[6]),
    ];
    insert(
        &db,
        "aggregator_claims",
        "topic, partition, epoch, start_offset, member, claim_id, claimed_at",
        [format!("('{topic}', 0, 1, 0, 'm', 1, toDateTime({}, 'UTC'))", written(0) - 60)].into_iter(),
    )
    .await;
    insert(
        &db,
        "aggregator_checkpoints",
        "topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at",
        (0..10).map(|d| format!("('{topic}', 0, 1, {}, 0, {}, 'm', toDateTime({}, 'UTC'))", position(d), arrival(d), written(d))),
    )
    .await;
    // a viewer's row at each checkpoint of a day it was seen on: its seqs
    // so far (one per day seen), last seen at that day's arrival clock
    let mut rows = Vec::new();
    for &(viewer, days) in seen {
        for (i, &d) in days.iter().enumerate() {
            rows.push(format!(
                "('{topic}', 0, 1, {}, '{viewer}', [0, {i}], {}, toDateTime({}, 'UTC'))",
                position(d),
                arrival(d),
                written(d)
            ));
        }
    }
    insert(&db, "aggregator_dedup", "topic, partition, epoch, position, viewer_id, seq_ranges, last_seen_ms, created_at", rows.into_iter())
        .await;

    // horizon: 2.5 days of arrival, or the last 1,500 records
    let horizon = Horizon { ms: 5 * DAY_MS / 2, offsets: 1_500 };
    let (resume, resume_arrival) = (position(9), arrival(9));
    // computed here: a viewer is restored iff its last day's arrival is
    // within the horizon of day 9's, or its last position within 1,500 of it
    let expected: BTreeMap<&str, i64> = seen
        .iter()
        .filter(|(_, days)| {
            let last = *days.last().unwrap();
            arrival(last) >= resume_arrival - horizon.ms || position(last) + 1_500 >= resume
        })
        .map(|&(v, days)| (v, days.len() as i64 - 1))
        .collect();
    assert_eq!(expected.keys().copied().collect::<Vec<_>>(), ["v-day7", "v-every-day"], "the fixture's horizon");
    let check = |dedup: &mut aggregator::store::LoadedPartition, when: &str| {
        assert_eq!(dedup.viewers_restored, expected.len(), "{when}");
        let at = At { arrival_ms: resume_arrival, offset: resume as i64 };
        for &(viewer, _) in seen {
            let last = expected.get(viewer).copied();
            for seq in 0..12 {
                let want = if last.is_some_and(|l| seq <= l) { Seen::Duplicate } else { Seen::New };
                assert_eq!(dedup.dedup.check_and_insert(viewer, seq, at), want, "{when}: {viewer} seq {seq}");
            }
        }
    };
    let sink = Sink::connect(&db, &topic).await.unwrap();
    let mut first = sink.claim(&[0], "m2", horizon).await.unwrap().remove(&0).unwrap();
    assert_eq!(first.position, Some(resume as i64));
    check(&mut first, "the first claim");

    // the restore reads from the earliest checkpoint within the horizon
    // (day 7 by arrival), less an hour: from day 7's partition on
    let earliest_needed = (0..10).find(|&d| arrival(d) >= resume_arrival - horizon.ms || position(d) + 1_500 >= resume).unwrap();
    assert_eq!(earliest_needed, 7);
    let since =
        aggregator::compact::restore_since(&db.client(), &db.database, &topic, 0, resume, resume_arrival - horizon.ms, resume - 1_500)
            .await
            .unwrap();
    assert_eq!(since as i64, written(earliest_needed) - aggregator::compact::SINCE_MARGIN_SECS as i64);

    // the compaction keeps two more days: it drops the days before day 5's
    let dropped = aggregator::compact::drop_stale_dedup(&db, horizon).await.unwrap().expect("checkpoints exist");
    let kept_from = (earliest_needed - aggregator::compact::KEEP_DAYS as i64) as usize;
    // YYYYMMDD of 2026-10-01 .. 2026-10-05
    let want_days: Vec<u32> = (1..=kept_from as u32).map(|d| 20_261_000 + d).collect();
    assert_eq!(dropped.days, want_days, "the day partitions dropped");
    let left = count(&db, &format!("SELECT count() FROM {}.aggregator_dedup WHERE topic = '{topic}'", db.database)).await;
    let want_left = seen.iter().flat_map(|(_, days)| days.iter()).filter(|&&d| d >= kept_from as i64).count() as u64;
    assert_eq!(left, want_left, "dedup rows of days {kept_from}.. kept");
    // nothing more to drop, and the next claim restores the same state
    assert_eq!(aggregator::compact::drop_stale_dedup(&db, horizon).await.unwrap().unwrap().days, Vec::<u32>::new());
    let mut second = sink.claim(&[0], "m3", horizon).await.unwrap().remove(&0).unwrap();
    check(&mut second, "the claim after the compaction");
    drop_db(&db).await;
}

/// Retention (`aggregator::compact::apply_retention`): ten months of sealed
/// rows at every grain, periods January to May issued. With minute rows kept
/// 90 days, on 2026-10-15 the months before July are past it: January to
/// May go from both minute tables, June waits for its issue, the hourly and
/// daily rows stay; without the issue rule June goes too; a second run
/// drops nothing. What the contract views show is what is left.
#[tokio::test]
async fn retention_drops_whole_sealed_months_past_their_grain_once_issued() {
    let _stack = e2e::turns::shared().await;
    use aggregator::config::Retention;
    let db = test_db().await;
    let month_start = |m: u32| window_secs((&format!("2026-{m:02}-01"), 0, 0));
    let months: Vec<u32> = (1..=10).collect();
    insert(
        &db,
        "usage_seals",
        "seal_id, seq, topics, partitions, sealed_to, sealed_at",
        ["(7, 1, ['t'], [0], [0], now())".to_string()].into_iter(),
    )
    .await;
    // and its head, as a seal writes it after its commit (migrations 16, 17)
    insert(&db, "usage_seal_head", "seq, covers, topics, partitions, sealed_to", ["(1, 1, ['t'], [0], [0])".to_string()].into_iter()).await;
    // month m: one row of m * 1000 bytes at each grain, on its 3rd day
    let at = |m: u32| month_start(m) + 2 * 86_400 + 3_600;
    let cols = "tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, seal_id";
    let vals = |m: u32| format!("'acme', 'a', 's', 'c', 'p', {}, 0, 1, 7", m * 1000);
    insert(
        &db,
        "usage_by_tracking_sealed",
        &format!("window_start, {cols}"),
        months.iter().map(|&m| format!("(toDateTime({}, 'UTC'), {})", at(m), vals(m))),
    )
    .await;
    insert(
        &db,
        "usage_by_tracking_hourly_sealed",
        &format!("hour, {cols}"),
        months.iter().map(|&m| format!("(toDateTime({}, 'UTC'), {})", at(m), vals(m))),
    )
    .await;
    insert(
        &db,
        "usage_by_tracking_daily_sealed",
        &format!("day, {cols}"),
        months.iter().map(|&m| format!("(toDate(toDateTime({}, 'UTC')), {})", at(m), vals(m))),
    )
    .await;
    insert(
        &db,
        "usage_by_viewer_sealed",
        "window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, seal_id",
        months.iter().map(|&m| format!("(toDateTime({}, 'UTC'), 'acme', '', 'v', 'a', 's', 'c', {}, 0, 1, 7)", at(m), m * 1000)),
    )
    .await;
    insert(
        &db,
        "billing_ledger",
        "invoice_number, partner_id, period, issue_id, issued_at, currency, total, document, billed_periods, billed_tracking_ids, billed_bytes, settled, snapshot",
        (1..=5).map(|m| format!("('INV-2026{m:02}-acme-r1', 'acme', '2026-{m:02}', 1, now(), 'EUR', '1.00', '', [], [], [], [], '')")),
    )
    .await;
    // bytes per month through a view, as analysts see them
    let per_month = |view: &'static str, column: &'static str| {
        let db = db.clone();
        async move {
            #[derive(Deserialize, clickhouse::Row)]
            struct Month {
                m: u32,
                bytes: u64,
            }
            let rows: Vec<Month> = db
                .client()
                .query(&format!("SELECT toYYYYMM({column}) AS m, sum(bytes_out) FROM {view} GROUP BY m ORDER BY m"))
                .fetch_all()
                .await
                .unwrap();
            rows.into_iter().map(|r| (r.m, r.bytes)).collect::<Vec<_>>()
        }
    };
    let expect = |from: u32| months.iter().filter(|&&m| m >= from).map(|&m| (202_600 + m, u64::from(m) * 1000)).collect::<Vec<_>>();
    assert_eq!(per_month("usage_by_tracking", "window_start").await, expect(1), "before");

    let today = chrono::NaiveDate::from_ymd_opt(2026, 10, 15).unwrap();
    let r = Retention { minute_days: 90, hourly_days: 730, after_issue: true };
    let out = aggregator::compact::apply_retention(&db, &r, today).await.unwrap();
    let minute_tables = ["usage_by_tracking_sealed", "usage_by_viewer_sealed"];
    let pairs = |tables: &[&'static str], ms: std::ops::RangeInclusive<u32>| {
        tables.iter().flat_map(|&t| ms.clone().map(move |m| (t, 202_600 + m))).collect::<Vec<_>>()
    };
    assert_eq!(out.dropped, pairs(&minute_tables, 1..=5), "issued months past 90 days");
    assert_eq!(out.waiting_for_issue, pairs(&minute_tables, 6..=6), "June is past 90 days but not issued");
    assert_eq!(per_month("usage_by_tracking", "window_start").await, expect(6));
    assert_eq!(per_month("usage_by_viewer", "window_start").await, expect(6));
    assert_eq!(per_month("usage_by_tracking_hourly", "hour").await, expect(1), "hourly rows kept 730 days");
    assert_eq!(per_month("usage_by_tracking_daily", "day").await, expect(1), "daily rows kept");

    let r = Retention { after_issue: false, ..r };
    let out = aggregator::compact::apply_retention(&db, &r, today).await.unwrap();
    assert_eq!(out.dropped, pairs(&minute_tables, 6..=6), "without the issue rule");
    assert_eq!(per_month("usage_by_tracking", "window_start").await, expect(7));
    assert_eq!(aggregator::compact::apply_retention(&db, &r, today).await.unwrap(), Default::default(), "a second run");
    drop_db(&db).await;
}

/// A sealed checkpoint counts whatever claim lands later. Epoch 2 resumed
/// from epoch 1's checkpoint at 100 and checkpointed at 150 and 200; a seal
/// sealed the partition to 200; then a claim of epoch 2 by another member
/// lands late (contested: epoch 2's rows and checkpoints stop counting).
/// The next claim resumes at 200 with the dedup state as of 200, not at
/// 100: resuming at 100 would count again, in its first flush past 200,
/// the events of (100, 200] that the sealed rows hold.
#[tokio::test]
async fn a_claim_never_resumes_below_a_sealed_checkpoint_after_a_late_contest() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let topic = unique("late");
    insert(
        &db,
        "aggregator_claims",
        "topic, partition, epoch, start_offset, member, claim_id, claimed_at",
        [(1, 0, 1), (2, 100, 2)].iter().map(|(e, s, id)| format!("('{topic}', 0, {e}, {s}, 'm', {id}, now())")),
    )
    .await;
    insert(
        &db,
        "aggregator_checkpoints",
        "topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at",
        [(1, 100, 1_000), (2, 150, 1_500), (2, 200, 2_000)]
            .iter()
            .map(|(e, pos, ms)| format!("('{topic}', 0, {e}, {pos}, {ms}, {ms}, 'm', now())")),
    )
    .await;
    insert(
        &db,
        "aggregator_dedup",
        "topic, partition, epoch, position, viewer_id, seq_ranges, last_seen_ms, created_at",
        [(1, 100, "v1", "[0, 1]", 1_000), (2, 150, "v1", "[0, 3]", 1_500), (2, 200, "v2", "[0, 5]", 2_000)]
            .iter()
            .map(|(e, pos, v, r, ms)| format!("('{topic}', 0, {e}, {pos}, '{v}', {r}, {ms}, now())")),
    )
    .await;
    insert(
        &db,
        "usage_seals",
        "seal_id, seq, topics, partitions, sealed_to, sealed_at",
        [format!("(7, 1, ['{topic}'], [0], [200], now())")].into_iter(),
    )
    .await;
    // the late claim of epoch 2
    insert(
        &db,
        "aggregator_claims",
        "topic, partition, epoch, start_offset, member, claim_id, claimed_at",
        [format!("('{topic}', 0, 2, 100, 'late', 99, now())")].into_iter(),
    )
    .await;

    let sink = Sink::connect(&db, &topic).await.unwrap();
    let horizon = Horizon { ms: 86_400_000, offsets: 1_000_000 };
    let mut l = sink.claim(&[0], "next", horizon).await.unwrap().remove(&0).unwrap();
    assert_eq!(l.epoch, 3);
    assert_eq!(l.position, Some(200), "resumes at the sealed checkpoint");
    assert_eq!((l.watermark_ms, l.arrival_ms), (2_000, 2_000));
    assert_eq!(l.viewers_restored, 2);
    let at = At { arrival_ms: 2_000, offset: 200 };
    for (viewer, last) in [("v1", 3), ("v2", 5)] {
        for seq in 0..8 {
            let want = if seq <= last { Seen::Duplicate } else { Seen::New };
            assert_eq!(l.dedup.check_and_insert(viewer, seq, at), want, "{viewer} seq {seq}: the state as of 200");
        }
    }
    drop_db(&db).await;
}

/// `n` rows into both log tables (before migration 10, into their first
/// layout), offsets `1..=n` of partition 0 under epoch 1: row `i` (from 0)
/// has tracking id `t{i % 100}`, stream `s{i % 10}`, viewer `v{i % 1000}`,
/// window `2026-10-01 + (i / 100)` minutes and `i % 1000 + 1` bytes out,
/// and was inserted 30 s after its window (a month of history).
async fn bulk_rows(db: &ClickHouseConfig, topic: &str, n: u64) {
    let d = &db.database;
    let window = "toDateTime('2026-10-01 00:00:00', 'UTC') + intDiv(number, 100) * 60";
    let (col, val) = (", inserted_at", format!(", {window} + 30"));
    let src = format!("'{topic}', toUInt32(0), toUInt64(1), number + 1");
    exec(
        db,
        format!(
            "INSERT INTO {d}.usage_by_tracking_log (window_start, tracking_id, account_id, stream_name, cluster, protocol, \
             bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset{col}) \
             SELECT {window}, concat('t', toString(number % 100)), 'acct', concat('s', toString(number % 10)), 'c', 'WHEP', \
             number % 1000 + 1, 0, 1, {src}{val} FROM system.numbers LIMIT {n}"
        ),
    )
    .await;
    exec(
        db,
        format!(
            "INSERT INTO {d}.usage_by_viewer_log (window_start, tracking_id, custom_viewer_data, viewer_id, account_id, \
             stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset{col}) \
             SELECT {window}, concat('t', toString(number % 100)), '', concat('v', toString(number % 1000)), 'acct', \
             concat('s', toString(number % 10)), 'c', number % 1000 + 1, 0, 1, {src}{val} FROM system.numbers LIMIT {n}"
        ),
    )
    .await;
}

/// Bytes out per day of stream `s{stream}` among the rows `0..n` of [`bulk_rows`].
fn stream_days(n: u64, stream: u64) -> BTreeMap<String, u64> {
    let start = chrono::NaiveDate::from_ymd_opt(2026, 10, 1).unwrap().and_hms_opt(0, 0, 0).unwrap();
    let mut out = BTreeMap::new();
    for i in (0..n).filter(|i| i % 10 == stream) {
        let day = (start + chrono::Duration::minutes((i / 100) as i64)).date().to_string();
        *out.entry(day).or_insert(0) += i % 1000 + 1;
    }
    out
}

/// One stream's daily month as the statistics API asks it, under a read
/// limit of `max_rows` (ClickHouse refuses a query that would read more).
async fn stream_month(db: &ClickHouseConfig, stream: &str, max_rows: u64) -> Result<BTreeMap<String, u64>, clickhouse::error::Error> {
    #[derive(Deserialize, clickhouse::Row)]
    struct Day {
        d: String,
        bytes: u64,
    }
    let rows: Vec<Day> = db
        .client()
        .with_option("enable_optimize_predicate_expression", "1")
        .with_option("max_rows_to_read", max_rows.to_string())
        .query(&format!(
            "SELECT toString(day) AS d, sum(bytes_out) AS bytes FROM {}.usage_by_stream_daily \
             WHERE account_id = 'acct' AND stream_name = ? AND day >= toDate('2026-10-01') AND day < toDate('2026-11-01') \
             GROUP BY d ORDER BY d",
            db.database
        ))
        .bind(stream)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().map(|r| (r.d, r.bytes)).collect())
}

/// Partition 0 of `topic` claimed once, from offset 0, at epoch 1.
pub(crate) async fn claim_epoch_1(db: &ClickHouseConfig, topic: &str) {
    insert(
        db,
        "aggregator_claims",
        "topic, partition, epoch, start_offset, member, claim_id, claimed_at",
        [format!("('{topic}', 0, 1, 0, 'm', 1, now())")].into_iter(),
    )
    .await;
}

/// A checkpoint of partition 0 of `topic` at `position`, epoch 1.
async fn checkpoint(db: &ClickHouseConfig, topic: &str, position: u64) {
    insert(
        db,
        "aggregator_checkpoints",
        "topic, partition, epoch, position, watermark_ms, arrival_ms, member, created_at",
        [format!("('{topic}', 0, 1, {position}, 0, 0, 'm', now())")].into_iter(),
    )
    .await;
}

/// Readers touch what arrived since the latest seal, not the whole log:
/// 600,000 rows inserted in October (explicit `inserted_at`), sealed, then
/// a few rows at the server's clock (the tail). Before the seal one stream's
/// month reads the whole log and exceeds a 200,000-row read limit; after it
/// the same question answers under that limit, with the bytes computed
/// here, and every view equals the unsealed computation. (18.16 counts a
/// granule, 8,192 rows, for every part it opens, however small: the limit
/// leaves room for the small tables' parts, not for the log.)
#[tokio::test]
async fn the_tails_read_what_arrived_since_the_seal_not_the_whole_log() {
    let _stack = e2e::turns::shared().await;
    const N: u64 = 600_000;
    const LIMIT: u64 = 200_000;
    let db = test_db().await;
    let topic = unique("tail");
    claim_epoch_1(&db, &topic).await;
    bulk_rows(&db, &topic, N).await;
    checkpoint(&db, &topic, N).await;
    let err = stream_month(&db, "s3", LIMIT).await.expect_err("unsealed, one stream's month reads the whole log");
    assert!(err.to_string().contains("158") || err.to_string().contains("TOO_MANY_ROWS"), "{err}");

    let report = aggregator::seal::seal(&db, 0).await.unwrap().expect("a seal");
    assert_eq!(report.moved.values().copied().collect::<Vec<_>>(), vec![(0, N)]);
    let sealed = runtime::ch::latest_seal(&db.client(), &db.database).await.unwrap();
    let newest_old = window_secs(("2026-10-01", 0, 0)) + ((N - 1) / 100 * 60 + 30) as i64;
    assert!(i64::from(sealed.tail_since) > newest_old, "the bound is past every sealed row: {}", sealed.tail_since);
    assert!(sealed.legacy_drained, "an empty legacy table is drained at once");

    // the tail: 20 rows of the next offsets at the server's clock, 2 of them on s3
    let d = &db.database;
    for log in ["usage_by_tracking_log", "usage_by_viewer_log"] {
        let viewer = if log == "usage_by_viewer_log" { "'', 'v1', " } else { "" };
        let (vcols, pcol, pval) =
            if viewer.is_empty() { ("", ", protocol", ", 'WHEP'") } else { ("custom_viewer_data, viewer_id, ", "", "") };
        exec(
            &db,
            format!(
                "INSERT INTO {d}.{log} (window_start, tracking_id, {vcols}account_id, stream_name, cluster{pcol}, bytes_out, bytes_in, events, \
                 src_topic, src_partition, src_epoch, src_offset) \
                 SELECT toDateTime('2026-10-05 00:00:00', 'UTC'), 't3', {viewer}'acct', concat('s', toString(number % 10)), 'c'{pval}, \
                 7, 0, 1, '{topic}', toUInt32(0), toUInt64(1), {N} + 1 + number FROM system.numbers LIMIT 20"
            ),
        )
        .await;
    }
    let mut want = stream_days(N, 3);
    *want.entry("2026-10-05".into()).or_insert(0) += 2 * 7;
    assert_eq!(stream_month(&db, "s3", LIMIT).await.expect("sealed, under the read limit"), want);
    assert_sealed_equals_unsealed(&db).await;
    // sealed again: the tail moves into the sealed tables, the answer stays
    checkpoint(&db, &topic, N + 20).await;
    aggregator::seal::seal(&db, 0).await.unwrap().expect("a second seal");
    assert_eq!(stream_month(&db, "s3", LIMIT).await.expect("under the read limit"), want);
    assert_sealed_equals_unsealed(&db).await;

    // a row that breaks the bound's premise (inserted with a clock from
    // before the seal, which no writer of this project does) is skipped by
    // the tails, and `billing reconcile`'s direct count, which reads the
    // whole log on its first run for the period, reports the difference
    exec(
        &db,
        format!(
            "INSERT INTO {d}.usage_by_tracking_log (window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, \
             bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at) \
             VALUES (toDateTime('2026-10-05 00:00:00', 'UTC'), 't3', 'acct', 's3', 'c', 'WHEP', 5, 0, 1, '{topic}', 0, 1, {}, \
             toDateTime('2026-10-05 00:00:00', 'UTC'))",
            N + 21
        ),
    )
    .await;
    let card = billing::rates::load_rate_card(&e2e::repo_root().join("deploy/rates.example.toml")).unwrap();
    let store = billing::store::Store::connect(&db).await.unwrap();
    let checks = billing::reconcile::reconcile(&store, &card, "2026-10").await.unwrap();
    let broken: Vec<_> = checks.iter().filter(|c| !c.ok).map(|c| c.name.as_str()).collect();
    assert_eq!(broken, vec!["usage_by_tracking = usage_by_tracking_log under the claims (per tracking id, without the views' join)"]);
    drop_db(&db).await;
}

/// An upgrade to migration 10 moves the log tables aside (`*_legacy`) and
/// loses no row: every view shows what it showed before. The legacy rows are
/// read until a seal finds none of them above its offsets; from then on a
/// question reads no legacy row (a read limit below the legacy tables' size).
#[tokio::test]
async fn an_upgrade_keeps_every_logged_row_and_a_seal_drains_the_legacy_tables() {
    let _stack = e2e::turns::shared().await;
    const N: u64 = 300_000;
    const LIMIT: u64 = 100_000;
    let db = ClickHouseConfig { url: clickhouse_url(), database: unique("upg"), ..Default::default() };
    let err = warehouse::migrate_interrupted(&db, 10, 1).await.unwrap_err();
    assert!(matches!(err, runtime::ch::ChError::Interrupted { version: 10, index: 1 }), "{err}");
    let topic = unique("upg");
    claim_epoch_1(&db, &topic).await;
    bulk_rows(&db, &topic, N).await;
    checkpoint(&db, &topic, N).await;
    let want = stream_days(N, 3);
    assert_eq!(stream_month(&db, "s3", u64::MAX).await.unwrap(), want, "before the upgrade");

    warehouse::migrate(&db).await.unwrap();
    let d = &db.database;
    assert_eq!(count(&db, &format!("SELECT count() FROM {d}.usage_by_tracking_log_legacy")).await, N);
    assert_eq!(count(&db, &format!("SELECT count() FROM {d}.usage_by_tracking_log")).await, 0);
    assert_eq!(stream_month(&db, "s3", u64::MAX).await.unwrap(), want, "after the upgrade");
    assert_sealed_equals_unsealed(&db).await;
    stream_month(&db, "s3", LIMIT).await.expect_err("the legacy rows are read before a seal");

    // margin 0: the test's own inserts are all acknowledged
    aggregator::seal::seal_with(&db, 0, 0).await.unwrap().expect("a seal");
    let sealed = runtime::ch::latest_seal(&db.client(), d).await.unwrap();
    assert!(sealed.legacy_drained, "no legacy row above the seal");
    assert_eq!(stream_month(&db, "s3", LIMIT).await.expect("drained: no legacy row read"), want);
    assert_sealed_equals_unsealed(&db).await;
    drop_db(&db).await;
}

/// Rows of every consolidated table per key: `(table, rows, distinct keys)`
/// of the committed seals, in `{table}{suffix}` (`_local`: one server's
/// share of a cluster).
async fn rows_and_keys(db: &ClickHouseConfig, suffix: &str) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    for name in aggregator::consolidate::CONSOLIDATED {
        let t = aggregator::seal::SEAL_TABLES.iter().find(|t| t.name == name).unwrap();
        let key = t.key();
        let (rows, keys): (u64, u64) = db
            .client()
            .query(&format!(
                "SELECT count(), uniqExact(tuple({key})) FROM {}.{name}{suffix} WHERE seal_id GLOBAL IN (SELECT seal_id FROM {}.usage_seals)",
                db.database, db.database
            ))
            .fetch_one()
            .await
            .unwrap();
        out.push((name.to_string(), rows, keys));
    }
    out
}

/// Every server's replicas of `db`'s tables up to date (a cluster; nothing on one server).
pub(crate) async fn synced(db: &ClickHouseConfig, servers: &[ClickHouseConfig]) {
    if db.cluster.is_empty() {
        return;
    }
    for server in servers {
        for name in aggregator::consolidate::CONSOLIDATED.iter().chain(&["usage_seals"]) {
            exec(server, format!("SYSTEM SYNC REPLICA {}.{name}_local", db.database)).await;
        }
    }
}

/// Consolidation rewrites a month of the hourly and daily sealed rows into
/// one row per key and changes no answer: five seals of the same keys, then
/// consolidations stopped after each step (as a crash would), then a whole
/// one. At every step every view equals the unsealed computation; at the end
/// each consolidated table holds one row per key, a row of a seal that was
/// never committed is gone, a billing read from a snapshot taken before is
/// refused and a new one answers the same, and a later seal still adds up.
#[tokio::test]
async fn consolidation_makes_one_row_per_key_and_changes_no_answer() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    consolidation_changes_no_answer(&db, std::slice::from_ref(&db)).await;
    drop_db(&db).await;
}

/// The body of [`consolidation_makes_one_row_per_key_and_changes_no_answer`]
/// on `db`, whose rows lie on `servers` (`db` itself on one server; every
/// server of a cluster, each then holding one row per key of its shard).
pub(crate) async fn consolidation_changes_no_answer(db: &ClickHouseConfig, servers: &[ClickHouseConfig]) {
    use aggregator::consolidate::{consolidate, consolidate_until, Stop};
    const BATCH: u64 = 2_000;
    let topic = unique("cons");
    let d = db.database.clone();
    let local = if db.cluster.is_empty() { "" } else { "_local" };
    let every_server_exact = || async {
        for server in servers {
            assert_sealed_equals_unsealed(server).await;
        }
    };
    claim_epoch_1(db, &topic).await;
    // batch i: the same 20 tracking ids, 4 streams and 50 viewers over the
    // minutes of 2026-10-01, offsets i * BATCH + 1 ..= (i + 1) * BATCH
    let batch = |i: u64| {
        let (db, topic, d) = (db.clone(), topic.clone(), d.clone());
        async move {
            for (log, vcols, vvals) in [
                ("usage_by_tracking_log", "protocol", "'WHEP'"),
                ("usage_by_viewer_log", "custom_viewer_data, viewer_id", "'', concat('v', toString(number % 50))"),
            ] {
                exec(
                    &db,
                    format!(
                        "INSERT INTO {d}.{log} (window_start, tracking_id, account_id, stream_name, cluster, {vcols}, bytes_out, bytes_in, \
                         events, src_topic, src_partition, src_epoch, src_offset) \
                         SELECT toDateTime('2026-10-01 00:00:00', 'UTC') + (number % 1440) * 60, concat('t', toString(number % 20)), 'acct', \
                         concat('s', toString(number % 4)), 'c', {vvals}, number % 100 + 1, 0, 1, '{topic}', toUInt32(0), toUInt64(1), \
                         {} + number + 1 FROM system.numbers LIMIT {BATCH}",
                        i * BATCH
                    ),
                )
                .await;
            }
            checkpoint(&db, &topic, (i + 1) * BATCH).await;
            aggregator::seal::seal(&db, 0).await.unwrap().expect("a seal");
        }
    };
    for i in 0..5 {
        batch(i).await;
    }
    every_server_exact().await;
    let split = rows_and_keys(db, "").await;
    assert!(split.iter().all(|(_, rows, keys)| rows >= &(keys * 5)), "each key's day split over the five seals: {split:?}");
    // a killed seal's row: never counted, and gone after the consolidation
    exec(
        db,
        format!(
            "INSERT INTO {d}.usage_by_tracking_daily_sealed (day, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, \
             bytes_in, events, seal_id) VALUES ('2026-10-01', 't1', 'acct', 's1', 'c', 'WHEP', 999, 0, 1, 4242)"
        ),
    )
    .await;
    let store = billing::store::Store::connect(db).await.unwrap();
    let (from, to) = billing::invoice::period_bounds(2026, 10).unwrap();
    let before = store.snapshot().await.unwrap();
    let usage = store.usage_at(&before, from, to).await.unwrap();
    assert_eq!(usage.values().sum::<u64>(), (0..BATCH).map(|n| n % 100 + 1).sum::<u64>() * 5, "billing's month");

    // on a cluster the first swap is one shard's: a reader sees the other's earlier rows
    for stop in [Stop::Staged, Stop::Committed, Stop::FirstSwap] {
        let r = consolidate_until(db, 5, 0, Some(stop)).await.unwrap().expect("a consolidation");
        assert!(!r.months.is_empty());
        every_server_exact().await;
    }
    let r = consolidate(db, 2, 0).await.unwrap().expect("a whole consolidation");
    assert!(!r.months.is_empty());
    every_server_exact().await;
    synced(db, servers).await;
    for server in servers {
        for (name, rows, keys) in rows_and_keys(server, local).await {
            assert_eq!(rows, keys, "{name}{local} on {}: one row per key", server.url);
        }
        let staging = format!("SELECT count() FROM system.tables WHERE database = '{d}' AND name LIKE '%_consolidating%'");
        assert_eq!(count(server, &staging).await, 0, "no staging table left on {}", server.url);
    }
    let shards = servers.len() as u64 / if db.cluster.is_empty() { 1 } else { 2 };
    for (name, rows, keys) in rows_and_keys(db, "").await {
        assert!(rows >= keys && rows <= keys * shards, "{name}: a key's month is at most one row per shard ({rows} rows, {keys} keys)");
    }
    assert_eq!(count(db, &format!("SELECT count() FROM {d}.usage_by_tracking_daily_sealed WHERE seal_id = 4242")).await, 0);

    let err = store.usage_at(&before, from, to).await.expect_err("a snapshot from before the consolidation");
    assert!(matches!(err, billing::store::StoreError::SnapshotConsolidated(_)), "{err}");
    let now = store.snapshot().await.unwrap();
    assert_eq!(store.usage_at(&now, from, to).await.unwrap(), usage, "the same usage from a new snapshot");

    batch(5).await;
    every_server_exact().await;
}

/// `aggregator seal` paused (it stops itself, SIGSTOP) after `step`, taking a
/// held lock over at once and consolidating months of 2 seals or more.
fn paused_seal(db: &ClickHouseConfig, step: &str) -> Proc {
    let mut env = seal_env(db);
    env.push((aggregator::seal::SEAL_PAUSE_ENV, step.to_string()));
    let mut p = Proc::spawn("aggregator", &["seal", "--lock-stale-secs", "0", "--consolidate-min-seals", "2"], &env);
    assert!(p.wait_stopped(Duration::from_secs(60)), "aggregator seal reached {step} and paused");
    p
}

/// `n` rows into both logs at offsets `from + 1 ..= from + n` of partition 0
/// under epoch 1 (tracking id `t{i % 5}`, viewer `v{i % 7}`, a minute of
/// 2026-10-02 each, `i % 100 + 1` bytes out), then a checkpoint at `from + n`.
pub(crate) async fn rows_and_checkpoint(db: &ClickHouseConfig, topic: &str, from: u64, n: u64) {
    rows_and_checkpoint_at(db, topic, from, n, None).await
}

/// [`rows_and_checkpoint`], inserted at `inserted_at` (`None`: the server's clock, as the aggregator writes).
async fn rows_and_checkpoint_at(db: &ClickHouseConfig, topic: &str, from: u64, n: u64, inserted_at: Option<&str>) {
    rows_on_day(db, topic, from, n, "2026-10-02", inserted_at).await
}

/// [`rows_and_checkpoint_at`], the minutes of `day` (`YYYY-MM-DD`).
async fn rows_on_day(db: &ClickHouseConfig, topic: &str, from: u64, n: u64, day: &str, inserted_at: Option<&str>) {
    let d = &db.database;
    let (icol, ival) = match inserted_at {
        Some(t) => (", inserted_at", format!(", toDateTime('{t}', 'UTC')")),
        None => ("", String::new()),
    };
    for (log, vcols, vvals) in [
        ("usage_by_tracking_log", "protocol", "'WHEP'"),
        ("usage_by_viewer_log", "custom_viewer_data, viewer_id", "'', concat('v', toString(number % 7))"),
    ] {
        exec(
            db,
            format!(
                "INSERT INTO {d}.{log} (window_start, tracking_id, account_id, stream_name, cluster, {vcols}, bytes_out, bytes_in, \
                 events, src_topic, src_partition, src_epoch, src_offset{icol}) \
                 SELECT toDateTime('{day} 00:00:00', 'UTC') + (number % 1440) * 60, concat('t', toString(number % 5)), 'acct', \
                 's1', 'c', {vvals}, number % 100 + 1, 0, 1, '{topic}', toUInt32(0), toUInt64(1), {from} + number + 1{ival} \
                 FROM system.numbers LIMIT {n}"
            ),
        )
        .await;
    }
    checkpoint(db, topic, from + n).await;
}

/// Bytes out of the month through billing's read and through the contract
/// view, next to the bytes written (`1..=n` offsets of [`rows_and_checkpoint`]).
async fn assert_month_bytes(db: &ClickHouseConfig, n: u64) {
    let want: u64 = (0..n).map(|i| i % 100 + 1).sum();
    let store = billing::store::Store::connect(db).await.unwrap();
    let (from, to) = billing::invoice::period_bounds(2026, 10).unwrap();
    let snap = store.snapshot().await.unwrap();
    assert_eq!(store.usage_at(&snap, from, to).await.unwrap().values().sum::<u64>(), want, "billing's month");
    let d = &db.database;
    assert_eq!(count(db, &format!("SELECT sum(bytes_out) FROM {d}.usage_by_tracking")).await, want, "usage_by_tracking");
    assert_sealed_equals_unsealed(db).await;
}

/// A seal that outlives its lock commits nothing: paused (SIGSTOP) after its
/// last check, right before its commit, while another seal takes the lock
/// over and commits; resumed, its commit finds a newer seal and adds
/// nothing. One commit per sequence number, every byte once.
#[tokio::test]
async fn a_seal_paused_before_its_commit_adds_nothing_after_a_takeover() {
    let _stack = e2e::turns::shared().await;
    const N: u64 = 3_000;
    let db = test_db().await;
    let topic = unique("pause");
    claim_epoch_1(&db, &topic).await;
    rows_and_checkpoint(&db, &topic, 0, N).await;
    let mut stale = paused_seal(&db, "checked");
    rows_and_checkpoint(&db, &topic, N, N).await;
    aggregator::seal::seal(&db, 0).await.unwrap().expect("the seal that takes the lock over");
    stale.signal(18); // SIGCONT
    let st = stale.wait_exit(Duration::from_secs(60)).expect("the stale seal finished");
    assert!(st.success(), "{st:?}");
    let d = &db.database;
    assert_eq!(count(&db, &format!("SELECT count() FROM {d}.usage_seals")).await, 1, "one commit");
    assert_month_bytes(&db, 2 * N).await;
    // two commits of one number (two commit statements at the same
    // instant) every reader would count: no seal builds on them, and
    // billing does not read them
    exec(
        &db,
        format!(
            "INSERT INTO {d}.usage_seals (seal_id, seq, topics, partitions, sealed_to, sealed_at) \
             SELECT 7, 1, topics, partitions, sealed_to, now() FROM {d}.usage_seals"
        ),
    )
    .await;
    let err = aggregator::seal::seal(&db, 0).await.expect_err("a seal on a doubled commit");
    assert!(err.to_string().contains("two seals committed as #1"), "{err}");
    let store = billing::store::Store::connect(&db).await.unwrap();
    assert!(store.snapshot().await.is_err(), "billing's snapshot on a doubled commit");
    drop_db(&db).await;
}

/// A seal killed between its commit and its head (`usage_seal_head`,
/// migration 16) changes no answer: readers stay on the previous seal's
/// head and read its longer tail. A consolidation then writes the missing
/// head before it copies the newer seal's `covers` into its rows (without
/// that head, the consolidated rows would cover more than the head readers
/// take, and a month of sealed bytes would not count).
#[tokio::test]
async fn a_seal_killed_before_its_head_and_a_consolidation_after_it_change_no_answer() {
    let _stack = e2e::turns::shared().await;
    const N: u64 = 2_000;
    let db = test_db().await;
    let d = &db.database;
    let topic = unique("head");
    claim_epoch_1(&db, &topic).await;
    rows_and_checkpoint(&db, &topic, 0, N).await;
    aggregator::seal::seal(&db, 0).await.unwrap().expect("the first seal");
    rows_and_checkpoint(&db, &topic, N, N).await;
    let killed = run_seal(&db, Some("commit"));
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed), Some(9), "the seal was killed after its commit");
    let heads = format!("SELECT max(seq) FROM {d}.usage_seal_head");
    assert_eq!(count(&db, &format!("SELECT max(seq) FROM {d}.usage_seals")).await, 2, "the killed seal committed");
    assert_eq!(count(&db, &heads).await, 1, "its head is missing");
    assert_month_bytes(&db, 2 * N).await;
    rows_and_checkpoint(&db, &topic, 2 * N, N).await;
    let done = aggregator::consolidate::consolidate(&db, 2, 0).await.unwrap().expect("a consolidation");
    assert!(done.months.iter().any(|m| m.1 == 202_610), "the month consolidated: {done:?}");
    assert_month_bytes(&db, 3 * N).await;
    assert_eq!(count(&db, &heads).await, 2, "the consolidation wrote the killed seal's head first");
    aggregator::seal::seal(&db, 0).await.unwrap().expect("a seal after the consolidation");
    assert_eq!(count(&db, &heads).await, 4, "the next seal's head");
    assert_month_bytes(&db, 3 * N).await;
    drop_db(&db).await;
}

/// The tails' time bound (`usage_seal_floor`) is the oldest `tail_since` of
/// the last 8 seals up to the latest head (migration 17 writes it into the
/// head), never a newer one than the latest seal's own and never an older
/// seal's once 8 seals have passed it; and the answers stay exact. Each
/// seal's margin sets its `tail_since` (`now - margin`, no tail row), in an
/// order where the third seal's is the oldest of all, so a bound of every
/// seal or of the latest alone differs from the expected one.
#[tokio::test]
async fn the_tails_time_bound_is_the_oldest_of_the_last_8_seals() {
    let _stack = e2e::turns::shared().await;
    const N: u64 = 200;
    const MARGINS: [u32; 12] = [500, 100, 900, 50, 300, 700, 20, 400, 800, 10, 600, 30];
    let db = test_db().await;
    let d = &db.database;
    let topic = unique("floor");
    claim_epoch_1(&db, &topic).await;
    #[derive(Deserialize, clickhouse::Row)]
    struct SealBound {
        seq: u64,
        tail_since: u32,
    }
    for (i, margin) in MARGINS.into_iter().enumerate() {
        let i = i as u64;
        rows_and_checkpoint(&db, &topic, i * N, N).await;
        aggregator::seal::seal_with(&db, 0, margin).await.unwrap().expect("a seal");
        let seals: Vec<SealBound> =
            db.client().query(&format!("SELECT seq, toUInt32(tail_since) FROM {d}.usage_seals ORDER BY seq")).fetch_all().await.unwrap();
        assert_eq!(seals.len() as u64, i + 1, "one commit per seal");
        let last = seals.last().unwrap();
        let want = seals.iter().filter(|s| s.seq + 8 > last.seq).map(|s| s.tail_since).min().unwrap();
        let floor = count(&db, &format!("SELECT toUInt64(toUInt32(tupleElement(bound, 1))) FROM {d}.usage_seal_floor")).await;
        assert_eq!(floor, u64::from(want), "after seal {}: the oldest bound of the last 8 seals", last.seq);
        assert!(floor <= u64::from(last.tail_since), "never newer than the latest seal's own bound");
        assert_month_bytes(&db, (i + 1) * N).await;
    }
    let oldest = count(&db, &format!("SELECT toUInt64(toUInt32(min(tail_since))) FROM {d}.usage_seals")).await;
    let floor = count(&db, &format!("SELECT toUInt64(toUInt32(tupleElement(bound, 1))) FROM {d}.usage_seal_floor")).await;
    assert!(floor > oldest, "the third seal's bound has left the window of 8");
    drop_db(&db).await;
}

/// A consolidation that outlives its lock swaps nothing in: paused before
/// its first swap while a seal takes the lock over and seals new rows of
/// the same month; resumed, its swap would replace the month without the
/// new rows. It finds its staging gone and stops.
#[tokio::test]
async fn a_consolidation_paused_before_its_swap_drops_no_newer_seal() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    paused_consolidation_drops_no_newer_seal(&db).await;
    drop_db(&db).await;
}

/// The body of [`a_consolidation_paused_before_its_swap_drops_no_newer_seal`] on `db`.
pub(crate) async fn paused_consolidation_drops_no_newer_seal(db: &ClickHouseConfig) {
    const N: u64 = 3_000;
    let topic = unique("cpause");
    claim_epoch_1(db, &topic).await;
    rows_and_checkpoint(db, &topic, 0, N).await;
    aggregator::seal::seal(db, 0).await.unwrap().expect("a first seal");
    rows_and_checkpoint(db, &topic, N, N).await;
    aggregator::seal::seal(db, 0).await.unwrap().expect("a second seal");
    let mut stale = paused_seal(db, "swap");
    rows_and_checkpoint(db, &topic, 2 * N, N).await;
    aggregator::seal::seal(db, 0).await.unwrap().expect("the seal that takes the lock over");
    assert_month_bytes(db, 3 * N).await;
    stale.signal(18); // SIGCONT
    stale.wait_exit(Duration::from_secs(60)).expect("the stale consolidation finished");
    assert_month_bytes(db, 3 * N).await;
    // the next consolidation runs whole and changes no answer
    let done = aggregator::consolidate::consolidate(db, 2, 0).await.unwrap().expect("a consolidation");
    assert!(!done.months.is_empty());
    assert_month_bytes(db, 3 * N).await;
}

/// The two direct checks of `billing reconcile` (each log table counted
/// under the claims): `(ok, detail)`.
fn direct_checks(checks: &[billing::reconcile::Check]) -> Vec<(bool, String)> {
    let direct: Vec<_> = checks.iter().filter(|c| c.name.contains("without the views' join")).map(|c| (c.ok, c.detail.clone())).collect();
    assert_eq!(direct.len(), 2, "{checks:#?}");
    direct
}

/// `billing reconcile` counts a log row once. Its first run counts every row
/// of the period and records the count as of the latest seal; later runs
/// count only the rows above the recorded seal (read from its time bound)
/// and add them, and record anew when a newer seal exists. What each run
/// reads shows in what it sees: with the log's older rows below the
/// recorded seal dropped, the next run still agrees (it does not read them),
/// while `--recount`, which reads every row again, reports them missing. A
/// row written by hand below the recorded seal, in the hours a run reads,
/// makes it count everything (and fail); so does a late contested claim. A
/// recorded count cut short is ignored; a read-only run records nothing.
#[tokio::test]
async fn reconcile_counts_each_log_row_once_and_a_recount_reads_them_all() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let d = &db.database;
    let topic = unique("audit");
    let bytes = |n: u64| (0..n).map(|i| i % 100 + 1).sum::<u64>();
    claim_epoch_1(&db, &topic).await;
    // a month of history, inserted in October (the log's partition 202610)
    rows_and_checkpoint_at(&db, &topic, 0, 1000, Some("2026-10-02 12:00:00")).await;
    let first = aggregator::seal::seal(&db, 0).await.unwrap().expect("a seal").seq;
    let card = billing::rates::load_rate_card(&e2e::repo_root().join("deploy/rates.example.toml")).unwrap();
    let store = billing::store::Store::connect(&db).await.unwrap();
    let run = |recount: bool| {
        let (store, card) = (store.clone(), card.clone());
        let counting =
            if recount { billing::store::log_count::LogCounting::Recount } else { billing::store::log_count::LogCounting::Incremental };
        async move { billing::reconcile::reconcile_with(&store, &card, "2026-10", counting).await.unwrap() }
    };
    // read-only (the console's): counts, records nothing
    let checks =
        billing::reconcile::reconcile_with(&store, &card, "2026-10", billing::store::log_count::LogCounting::ReadOnly).await.unwrap();
    for (ok, detail) in direct_checks(&checks) {
        assert!(ok);
        assert_eq!(detail, format!("{} bytes (every row counted)", bytes(1000)));
    }
    assert_eq!(count(&db, &format!("SELECT count() FROM {d}.billing_log_audits")).await, 0, "read-only records nothing");
    let checks = run(false).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    for (_, detail) in direct_checks(&checks) {
        assert_eq!(detail, format!("{} bytes (every row counted; recorded up to seal #{first})", bytes(1000)));
    }
    // rows above the seal, at the server's clock: counted now, added to the recorded count
    rows_and_checkpoint(&db, &topic, 1000, 500).await;
    let total = bytes(1000) + bytes(500);
    let checks = run(false).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    for (_, detail) in direct_checks(&checks) {
        assert_eq!(detail, format!("{total} bytes (rows up to seal #{first} as counted before, the rest counted now)"));
    }
    let second = aggregator::seal::seal(&db, 0).await.unwrap().expect("a second seal").seq;
    assert!(second > first);
    let checks = run(false).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    for (_, detail) in direct_checks(&checks) {
        assert_eq!(
            detail,
            format!("{total} bytes (rows up to seal #{first} as counted before, the rest counted now; recorded up to seal #{second})")
        );
    }
    // a count up to the latest seal cut short: a header that promises more
    // rows than are there, and a wrong count; ignored
    exec(
        &db,
        format!(
            "INSERT INTO {d}.billing_log_audits (period, log_table, seal_seq, audit_id, keys, header, tracking_id, bytes_out, audited_at) \
             VALUES ('2026-10', 'usage_by_tracking_log', {second}, 18446744073709551615, 6, 1, '', 0, now()), \
                    ('2026-10', 'usage_by_tracking_log', {second}, 18446744073709551615, 6, 0, 't0', 1, now())"
        ),
    )
    .await;
    let checks = run(false).await;
    assert!(checks.iter().all(|c| c.ok), "the count cut short is not taken: {checks:#?}");
    for (_, detail) in direct_checks(&checks) {
        assert_eq!(detail, format!("{total} bytes (rows up to seal #{second} as counted before, the rest counted now)"));
    }
    // a late contested claim of epoch 1 (docs/clickhouse.md): the rows below
    // the seal count differently now, so the recorded count is not used
    // (it would agree with the views, which keep what they sealed)
    insert(
        &db,
        "aggregator_claims",
        "topic, partition, epoch, start_offset, member, claim_id, claimed_at",
        [format!("('{topic}', 0, 1, 0, 'late', 999, now())")].into_iter(),
    )
    .await;
    let checks = run(false).await;
    for (ok, detail) in direct_checks(&checks) {
        assert!(!ok && detail.contains(&format!("the fences below seal #{second} changed since it was counted")), "{detail}");
    }
    // the claims as they were: counted again, agreeing
    exec(&db, format!("TRUNCATE TABLE {d}.aggregator_claims")).await;
    claim_epoch_1(&db, &topic).await;
    let checks = run(false).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    for (_, detail) in direct_checks(&checks) {
        assert!(detail.starts_with(&format!("{total} bytes (every row counted: the fences below seal #{second} changed")), "{detail}");
    }
    // October's log rows (all below the seals) gone: the next run still
    // agrees, reading none of them
    for log in ["usage_by_tracking_log", "usage_by_viewer_log"] {
        exec(&db, format!("ALTER TABLE {d}.{log} DROP PARTITION 202610")).await;
    }
    let checks = run(false).await;
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    for (_, detail) in direct_checks(&checks) {
        assert_eq!(detail, format!("{total} bytes (rows up to seal #{second} as counted before, the rest counted now)"));
    }
    // a row written by hand below the seal, now: that run counts every row
    // (and sees October's missing)
    exec(
        &db,
        format!(
            "INSERT INTO {d}.usage_by_tracking_log (window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, \
             bytes_in, events, src_topic, src_partition, src_epoch, src_offset) \
             VALUES (toDateTime('2026-10-02 00:00:00', 'UTC'), 't0', 'acct', 's1', 'c', 'WHEP', 12345, 0, 1, '{topic}', 0, 1, 1500)"
        ),
    )
    .await;
    let checks = run(false).await;
    let direct = direct_checks(&checks);
    assert!(
        !direct[0].0
            && direct[0].1.contains(&format!(
                "rows below seal #{second} were written or deleted since it was counted (500 recent rows then, 501 now)"
            )),
        "{direct:?}"
    );
    assert!(direct[1].0, "the viewer log is as counted: {direct:?}");
    // a recount reads the whole log again: October's rows are missing
    let checks = run(true).await;
    for (ok, detail) in direct_checks(&checks) {
        assert!(!ok, "a recount sees the log's rows gone: {detail}");
    }
    drop_db(&db).await;
}

/// `billing reconcile` reads the rollups (one row per key and day or hour)
/// and the minute views only on their tail, the fenced log rows above the
/// latest seal; `--recount` also reads the minute views whole. What each
/// run reads shows in what it sees: with the sealed minute rows of October
/// dropped by hand, a run agrees (it reads none of them) and a recount
/// reports them missing; with the tail gone from the minute view (a fence
/// join that drops rows), a run reports it per tracking id.
#[tokio::test]
async fn reconcile_reads_the_minute_views_on_their_tail_and_a_recount_reads_them_whole() {
    use billing::store::log_count::LogCounting;
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let d = &db.database;
    let topic = unique("minute");
    claim_epoch_1(&db, &topic).await;
    // 1,000 rows sealed, 300 above the seal (the tail); row i of a batch is
    // tracking id t(i % 5) with i % 100 + 1 bytes
    rows_and_checkpoint(&db, &topic, 0, 1000).await;
    let seal = aggregator::seal::seal(&db, 0).await.unwrap().expect("a seal").seq;
    rows_and_checkpoint(&db, &topic, 1000, 300).await;
    let per_id = |n: u64, id: u64| (0..n).filter(|i| i % 5 == id).map(|i| i % 100 + 1).sum::<u64>();
    let total: u64 = (0..5).map(|id| per_id(1000, id) + per_id(300, id)).sum();
    let card = billing::rates::load_rate_card(&e2e::repo_root().join("deploy/rates.example.toml")).unwrap();
    let store = billing::store::Store::connect(&db).await.unwrap();
    let run = |counting: LogCounting| {
        let (store, card) = (store.clone(), card.clone());
        async move { billing::reconcile::reconcile_with(&store, &card, "2026-10", counting).await.unwrap() }
    };
    let names = |checks: &[billing::reconcile::Check]| -> Vec<String> {
        checks.iter().filter(|c| c.name.contains("(per tracking id)")).map(|c| c.name.clone()).collect()
    };
    let failed =
        |checks: &[billing::reconcile::Check]| -> Vec<String> { checks.iter().filter(|c| !c.ok).map(|c| c.name.clone()).collect() };
    let rollups = ["usage_by_tracking_hourly", "usage_by_stream_daily", "usage_by_viewer_daily"];
    let compared =
        |with: &[&str]| -> Vec<String> { with.iter().map(|v| format!("usage_by_tracking_daily = {v} (per tracking id)")).collect() };
    const DIRECT: &str = "usage_by_tracking = usage_by_tracking_log under the claims (per tracking id, without the views' join)";

    let checks = run(LogCounting::Incremental).await;
    assert!(failed(&checks).is_empty(), "{checks:#?}");
    assert_eq!(names(&checks), compared(&rollups), "a run compares the rollups, not the minute views whole");
    for (_, detail) in direct_checks(&checks) {
        assert_eq!(detail, format!("{total} bytes (every row counted; recorded up to seal #{seal})"));
    }
    let checks = run(LogCounting::Recount).await;
    assert!(failed(&checks).is_empty(), "{checks:#?}");
    let mut all = rollups.to_vec();
    all.extend(["usage_by_tracking", "usage_by_viewer"]);
    assert_eq!(names(&checks), compared(&all), "a recount compares the minute views whole too");

    // the sealed minute rows of October gone: a run reads none of them
    exec(&db, format!("ALTER TABLE {d}.usage_by_tracking_sealed DROP PARTITION 202610")).await;
    let checks = run(LogCounting::Incremental).await;
    assert!(failed(&checks).is_empty(), "a run reads no sealed minute row: {checks:#?}");
    let checks = run(LogCounting::Recount).await;
    assert_eq!(failed(&checks), vec!["usage_by_tracking_daily = usage_by_tracking (per tracking id)".to_string(), DIRECT.to_string()]);
    let direct = checks.iter().find(|c| c.name == DIRECT).unwrap();
    // what the minute view still shows: the tail
    assert!(direct.detail.contains(&format!("\"t0\": {} vs {}", per_id(300, 0), per_id(1000, 0) + per_id(300, 0))), "{direct:?}");

    // the minute view without its tail (a join that drops the rows above the seal)
    exec(&db, format!("DROP TABLE {d}.usage_by_tracking")).await;
    exec(
        &db,
        format!(
            "CREATE VIEW {d}.usage_by_tracking AS SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, \
             bytes_out, bytes_in, events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_epoch, \
             toUInt64(0) AS src_offset, toDateTime(0, 'UTC') AS inserted_at FROM {d}.usage_by_tracking_sealed \
             WHERE seal_id GLOBAL IN (SELECT seal_id FROM {d}.usage_seals)"
        ),
    )
    .await;
    let checks = run(LogCounting::Incremental).await;
    assert_eq!(failed(&checks), vec![DIRECT.to_string()], "{checks:#?}");
    let direct = checks.iter().find(|c| c.name == DIRECT).unwrap();
    for id in 0..5 {
        assert!(direct.detail.contains(&format!("above the latest seal \"t{id}\": 0 vs {}", per_id(300, id))), "{direct:?}");
    }
    drop_db(&db).await;
}

/// Every view's answer counts each byte once while seals commit: a writer
/// inserts batches of rows (each with its checkpoint) and seals after each,
/// while a reader asks every view under the contract names, again and
/// again, for the month's bytes (the whole view, and one tracking id with
/// predicates pushed, as the statistics API asks). A seal that commits in
/// the middle of a read must not let that read count its rows twice (as
/// sealed rows and as the tail above the previous seal) or not at all. An
/// answer read while no batch was being inserted must equal the bytes of the
/// batches inserted so far; one read during an insert, the bytes of the
/// batches done before it or of one more. Each seal starts once a read has
/// started after its batch, so reads meet the commits.
#[tokio::test]
async fn every_read_racing_seal_commits_counts_each_byte_once() {
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    let _stack = e2e::turns::shared().await;
    const N: u64 = 200;
    const SEALS: u64 = 30;
    let db = test_db().await;
    let topic = unique("race");
    claim_epoch_1(&db, &topic).await;
    // one batch as `rows_and_checkpoint` writes it: row j has j % 100 + 1 bytes, tracking id t{j % 5}
    let batch_total: u64 = (0..N).map(|j| j % 100 + 1).sum();
    let batch_t1: u64 = (0..N).filter(|j| j % 5 == 1).map(|j| j % 100 + 1).sum();
    // batches whose insert began; batches whose both inserts returned; seals committed; reads begun
    let [started, done, sealed, reads] = [(); 4].map(|_| Arc::new(AtomicU64::new(0)));
    let read_began = Arc::new(tokio::sync::Notify::new());
    let writer = {
        let (db, topic, started, done, sealed, reads, read_began) =
            (db.clone(), topic.clone(), started.clone(), done.clone(), sealed.clone(), reads.clone(), read_began.clone());
        tokio::spawn(async move {
            for k in 1..=SEALS {
                started.store(k, SeqCst);
                rows_and_checkpoint(&db, &topic, (k - 1) * N, N).await;
                done.store(k, SeqCst);
                let r = reads.load(SeqCst);
                while reads.load(SeqCst) == r {
                    read_began.notified().await;
                }
                aggregator::seal::seal(&db, 0).await.unwrap().expect("a seal");
                sealed.store(k, SeqCst);
                // months of 3 seals or with a plain seal 3 seals old
                // consolidated: swaps and raised list floors (migration 18)
                // race the reads too
                aggregator::consolidate::consolidate(&db, 3, 0).await.unwrap().ok();
            }
        })
    };
    let d = db.database.clone();
    // (18.16 compares a DateTime with a Date wrongly: each column is
    // compared with its own type)
    let (minutes, days) = (
        ("toDateTime('2026-10-01 00:00:00', 'UTC')", "toDateTime('2026-11-01 00:00:00', 'UTC')"),
        ("toDate('2026-10-01')", "toDate('2026-11-01')"),
    );
    let views = [
        ("usage_by_tracking", "window_start", minutes),
        ("usage_by_viewer", "window_start", minutes),
        ("usage_by_tracking_hourly", "hour", minutes),
        ("usage_by_tracking_daily", "day", days),
        ("usage_by_stream_daily", "day", days),
        ("usage_by_viewer_daily", "day", days),
    ];
    let pushed = runtime::ch::predicates_pushed(db.client());
    let mut met_a_commit = 0u64;
    while !writer.is_finished() {
        for (view, time, (from, to)) in views {
            for (filter, per_batch) in [("", batch_total), (" AND tracking_id = 't1'", batch_t1)] {
                let (before, sealed_before) = (done.load(SeqCst), sealed.load(SeqCst));
                reads.fetch_add(1, SeqCst);
                read_began.notify_one();
                let sql = format!("SELECT sum(bytes_out) FROM {d}.{view} WHERE {time} >= {from} AND {time} < {to}{filter}");
                let got: u64 = pushed.query(&sql).fetch_one().await.unwrap_or_else(|e| panic!("{sql}: {e}"));
                let after = started.load(SeqCst);
                met_a_commit += u64::from(sealed.load(SeqCst) != sealed_before);
                assert!(
                    (before..=after).any(|k| got == k * per_batch),
                    "{view}{filter}: {got} bytes, read while {before} to {after} batches of {per_batch} bytes were inserted"
                );
            }
        }
    }
    writer.await.expect("the writer");
    assert_eq!(count(&db, &format!("SELECT count() FROM {d}.usage_seals WHERE consolidated = 0")).await, SEALS, "one commit per batch");
    let floor = count(&db, &format!("SELECT tupleElement(latest, 4) FROM {d}.usage_seal_latest")).await;
    assert!(floor > SEALS / 2, "the consolidated views' list of seals moved up while they were read: its floor is {floor}");
    assert!(met_a_commit >= SEALS / 2, "reads met the commits: {met_a_commit} reads saw a seal commit while they ran");
    assert_sealed_equals_unsealed(&db).await;
    drop_db(&db).await;
}

/// The consolidated views' list of seals (migration 18): its floor never
/// passes a plain seal that still has rows in the consolidated tables, and
/// it moves up. A month written by one late seal alone is consolidated once
/// that seal is `min_seals` seals old (else it would hold the floor down for
/// good). Every answer stays the unsealed computation's at every step.
#[tokio::test]
async fn the_consolidated_views_list_no_seal_under_the_oldest_with_rows_and_the_floor_moves_up() {
    let _stack = e2e::turns::shared().await;
    const N: u64 = 100;
    const MIN_SEALS: u64 = 3;
    const SEALS: u64 = 24;
    const LATE: u64 = 2;
    let db = test_db().await;
    let d = &db.database;
    let topic = unique("list");
    claim_epoch_1(&db, &topic).await;
    // the oldest committed plain seal with a row in a consolidated table, as the tables are now
    let oldest_with_rows = {
        let tables = aggregator::consolidate::CONSOLIDATED.map(|t| format!("SELECT seal_id FROM {d}.{t}")).join(" UNION ALL ");
        format!("SELECT min(seq) FROM {d}.usage_seals WHERE consolidated = 0 AND seal_id GLOBAL IN (SELECT seal_id FROM ({tables}))")
    };
    let head_floor = format!("SELECT tupleElement(latest, 4) FROM {d}.usage_seal_latest");
    let mut late_seq = 0;
    for i in 0..SEALS {
        let from = i * (N + 10);
        rows_and_checkpoint(&db, &topic, from, N).await;
        if i == LATE {
            // late rows of September: no other seal writes that month
            rows_on_day(&db, &topic, from + N, 10, "2026-09-15", None).await;
        }
        let sealed = aggregator::seal::seal(&db, 0).await.unwrap().expect("a seal");
        if i == LATE {
            late_seq = sealed.seq;
        }
        aggregator::consolidate::consolidate(&db, MIN_SEALS, 0).await.unwrap().ok();
        let floor = count(&db, &head_floor).await;
        let oldest = count(&db, &oldest_with_rows).await;
        assert!(oldest == 0 || floor <= oldest, "after seal {i}: the list's floor {floor} passed seal #{oldest}, which has rows");
        assert_sealed_equals_unsealed(&db).await;
    }
    let september = format!(
        "SELECT count() FROM {d}.usage_by_tracking_daily_sealed WHERE toYYYYMM(day) = 202609 \
         AND seal_id GLOBAL IN (SELECT seal_id FROM {d}.usage_seals WHERE consolidated = 0)"
    );
    assert_eq!(count(&db, &september).await, 0, "September, written by one seal, was consolidated");
    let floor = count(&db, &head_floor).await;
    assert!(floor > late_seq, "the floor {floor} passed the late seal #{late_seq}");
    let plain = count(&db, &format!("SELECT count() FROM {d}.usage_seals WHERE consolidated = 0")).await;
    let listed = count(&db, &format!("SELECT count() FROM {d}.usage_seals WHERE consolidated = 0 AND seq >= {floor}")).await;
    assert!(listed * 2 < plain, "the consolidated views list {listed} of {plain} plain seals");
    drop_db(&db).await;
}
