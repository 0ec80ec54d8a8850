//! Sealing: fold the log rows that can no longer change into the sealed
//! tables, so that readers scan one row per key and grain instead of every
//! flush fragment of every partition (migration 9, docs/clickhouse.md
//! "Sealed aggregates").
//!
//! **What is final.** A partition's rows at or below its latest valid
//! checkpoint never change: a checkpoint is written after every table of
//! its flush, and every later claim of the partition starts at or past the
//! latest valid checkpoint, so no fence can move below it. A seal folds,
//! per partition, the valid log rows with a flush position in
//! `(sealed_to, checkpoint]` into the sealed tables.
//!
//! **Exactly once.** One seal at a time (a DDL lock, as `billing issue`).
//! A seal writes its rows under a fresh random `seal_id`, every table in
//! [`SEAL_TABLES`] order, and then one row to `usage_seals`: its id, its
//! sequence number (the previous one plus one) and, for every partition,
//! the offset up to which it is now sealed. That single row is the commit:
//! readers count sealed rows only of ids in `usage_seals`, and read the log
//! only above the latest commit's offsets. A seal killed at any step adds
//! nothing (its rows stay invisible); the next one takes a new id and
//! covers the same offsets. A claim that lands while a seal runs changes
//! the fences the seal read: the seal then does not commit. After its
//! commit a seal writes its head (a copy of its offsets, `publish_head`),
//! which readers take as the latest seal; a missing head leaves them on the
//! previous seal, with the same answers, until the next run writes it.
//!
//! **A seal that outlives its lock** (paused, or slower than
//! `--lock-stale-secs`, while another seal takes the lock over) must not
//! commit over its successor. Its commit is one statement, conditional on
//! the server: it writes the row only if the latest sequence number is
//! still the one the seal started from, and the seal reads its row back to
//! learn whether it committed. No pause of the process can fall between
//! that check and the write; two commits of one number would need two
//! statements executing at the same instant, and [`latest`] then refuses
//! to build on either (`ChError::Corrupt`), as `billing reconcile`'s
//! direct counts would report the double count.
//!
//! **Reading.** Under the contract names, the views add the sealed rows of
//! committed seals and the fenced log rows above the latest commit; the
//! answer equals the unsealed computation at every step.
//!
//! **The tail's time bound.** The log tables are ordered by the hour their
//! rows were inserted (migration 10; `inserted_at` is the server's clock at
//! the insert). Each seal records `tail_since`: no row of its tail (a valid
//! row above its offsets) was inserted before it. The tails and the next
//! seal read the log from that hour on, so they read what arrived since
//! about the latest seal, not the whole log. A seal takes the server's
//! clock `now` before it reads anything and sets
//! `tail_since = min(now - margin, the earliest insert of a tail
//! row it sees)`. A row it does not see landed after its reads began: its
//! insert was acknowledged later, and an insert that counts is acknowledged
//! within the writer's 60 s timeout of its start (one that is not makes
//! its writer claim anew, and the new claim supersedes its rows). So
//! the margin (`aggregator seal --tail-margin-secs`, default
//! [`DEFAULT_TAIL_MARGIN_SECS`] = 600) must exceed that timeout plus the
//! clock difference between the servers of a cluster. Which rows count is still
//! decided by offsets and fences alone: the bound only skips rows, and
//! `billing reconcile` counts the log without it (its direct checks).
//!
//! **The legacy tables.** The rows written before migration 10 stay in
//! `usage_by_*_log_legacy`. Seals read them too until one finds none of
//! their valid rows above its offsets, once they are empty or the margin
//! has passed since the migration (an insert in flight at the rename lands there); it
//! records `legacy_drained`, and from then on no reader of the tails reads
//! them.

use crate::error::AggError;
use crate::events;
use runtime::ch::{ClickHouseConfig, LockWait, PartitionKey, Sealed};
use runtime::events::InternalEvent;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// The lock table: one seal at a time.
pub const SEAL_LOCK: &str = "usage_seal_lock";

/// Test hook: `AGGREGATOR_SEAL_FAULT_AFTER=<step>` kills `aggregator seal`
/// (SIGKILL) right after that step: one of [`seal_steps`], or `swap` (a
/// consolidation's check before each month's swap).
pub const SEAL_FAULT_ENV: &str = "AGGREGATOR_SEAL_FAULT_AFTER";

/// Test hook: `AGGREGATOR_SEAL_PAUSE_AFTER=<step>` stops `aggregator seal`
/// (SIGSTOP, as a pause of the host would) right after that step, like
/// [`SEAL_FAULT_ENV`]; SIGCONT resumes it.
pub const SEAL_PAUSE_ENV: &str = "AGGREGATOR_SEAL_PAUSE_AFTER";

/// The steps [`SEAL_FAULT_ENV`] can name, in the order a seal takes them:
/// `lock`, each table of [`SEAL_TABLES`], `checked` (the checks before the
/// commit), `commit` and `head` (its copy in `usage_seal_head`).
pub fn seal_steps() -> Vec<&'static str> {
    std::iter::once("lock").chain(SEAL_TABLES.iter().map(|t| t.name)).chain(["checked", "commit", "head"]).collect()
}

/// See the module docs, "The tail's time bound".
pub const DEFAULT_TAIL_MARGIN_SECS: u32 = 600;

/// The columns of `usage_by_tracking_log` a seal reads.
const TRACKING_COLUMNS: &str = "window_start, tracking_id, account_id, stream_name, cluster, protocol, \
     bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at";
/// The columns of `usage_by_viewer_log` a seal reads.
const VIEWER_COLUMNS: &str = "window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, \
     bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at";

/// The log tables: `(log, its columns)`; each has a `_legacy` twin.
pub const LOGS: [(&str, &str); 2] = [("usage_by_tracking_log", TRACKING_COLUMNS), ("usage_by_viewer_log", VIEWER_COLUMNS)];

/// One sealed table: where it is written from, at which grain.
pub struct SealTable {
    /// The sealed table's name (`usage_by_tracking_sealed`, ...).
    pub name: &'static str,
    /// The log table read.
    log: &'static str,
    /// The columns read from it.
    log_columns: &'static str,
    /// The sealed table's columns, in order, without `seal_id`.
    pub(crate) columns: &'static str,
    /// The SELECT list over the log, matching `columns` (sums last).
    select: &'static str,
    /// The GROUP BY over the log: the sealed table's key, its time column first.
    pub(crate) group: &'static str,
}

pub(crate) const SUMS: &str = "sum(bytes_out), sum(bytes_in), sum(events)";

impl SealTable {
    /// The sealed table's key columns, its time column first.
    pub fn key(&self) -> &'static str {
        self.group
    }

    /// The sealed table's time column (the first of its key).
    pub fn time(&self) -> &'static str {
        self.group.split(',').next().unwrap_or_default().trim()
    }
}

/// Every sealed table, in the order a seal writes them.
pub const SEAL_TABLES: [SealTable; 6] = [
    SealTable {
        name: "usage_by_tracking_sealed",
        log: "usage_by_tracking_log",
        log_columns: TRACKING_COLUMNS,
        columns: "window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events",
        select: "window_start, tracking_id, account_id, stream_name, cluster, protocol",
        group: "window_start, tracking_id, account_id, stream_name, cluster, protocol",
    },
    SealTable {
        name: "usage_by_tracking_hourly_sealed",
        log: "usage_by_tracking_log",
        log_columns: TRACKING_COLUMNS,
        columns: "hour, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events",
        select: "toStartOfHour(window_start) AS hour, tracking_id, account_id, stream_name, cluster, protocol",
        group: "hour, tracking_id, account_id, stream_name, cluster, protocol",
    },
    SealTable {
        name: "usage_by_tracking_daily_sealed",
        log: "usage_by_tracking_log",
        log_columns: TRACKING_COLUMNS,
        columns: "day, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events",
        select: "toDate(window_start) AS day, tracking_id, account_id, stream_name, cluster, protocol",
        group: "day, tracking_id, account_id, stream_name, cluster, protocol",
    },
    SealTable {
        name: "usage_by_stream_daily_sealed",
        log: "usage_by_tracking_log",
        log_columns: TRACKING_COLUMNS,
        columns: "day, account_id, stream_name, tracking_id, cluster, protocol, bytes_out, bytes_in, events",
        select: "toDate(window_start) AS day, account_id, stream_name, tracking_id, cluster, protocol",
        group: "day, account_id, stream_name, tracking_id, cluster, protocol",
    },
    SealTable {
        name: "usage_by_viewer_sealed",
        log: "usage_by_viewer_log",
        log_columns: VIEWER_COLUMNS,
        columns: "window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events",
        select: "window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster",
        group: "window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster",
    },
    SealTable {
        name: "usage_by_viewer_daily_sealed",
        log: "usage_by_viewer_log",
        log_columns: VIEWER_COLUMNS,
        columns: "day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events",
        select: "toDate(window_start) AS day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster",
        group: "day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster",
    },
];

/// What one seal did.
#[derive(Debug, Clone)]
pub struct SealReport {
    /// The seal's random id (never 0): its rows in the sealed tables carry it.
    pub seal_id: u64,
    /// The seal's sequence number in `usage_seals`: the previous commit's plus one.
    pub seq: u64,
    /// Per partition that moved: `(from, to]`.
    pub moved: BTreeMap<PartitionKey, (u64, u64)>,
    /// Milliseconds spent on each sealed table.
    pub tables: Vec<(&'static str, u64)>,
    /// Milliseconds from taking the lock to the commit.
    pub millis: u64,
}

/// Why a seal did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealSkipped {
    /// Another seal holds the lock.
    Locked,
    /// No partition has a valid checkpoint past the latest seal.
    NothingNew,
    /// A claim landed while the seal ran: its rows were not committed.
    ClaimsChanged,
    /// Another seal committed while this one ran (its lock had gone stale
    /// and was taken over): its rows were not committed.
    Superseded,
}

#[derive(Deserialize, clickhouse::Row)]
struct CheckpointMax {
    topic: String,
    partition: u32,
    position: u64,
}

/// The latest committed seal of `db`.
pub async fn latest(client: &clickhouse::Client, db: &str) -> Result<Sealed, AggError> {
    runtime::ch::latest_seal(client, db).await.map_err(|e| match e {
        runtime::ch::ChError::ClickHouse(e) => AggError::ClickHouse(e),
        other => AggError::CorruptState(other.to_string()),
    })
}

/// The sequence number of the latest committed seal (0: none).
pub(crate) async fn latest_seq(client: &clickhouse::Client, db: &str) -> Result<u64, AggError> {
    Ok(client.query(&format!("SELECT max(seq) FROM {db}.usage_seals")).fetch_one::<u64>().await?)
}

/// The condition of a commit to `usage_seals` (one bound value: the
/// sequence number the committing run started from): no other run
/// committed meanwhile.
pub(crate) fn commit_condition(db: &str) -> String {
    format!("(SELECT max(seq) FROM {db}.usage_seals) = toUInt64(?)")
}

/// Whether `seal_id` is committed (its conditional commit wrote its row).
pub(crate) async fn committed(client: &clickhouse::Client, db: &str, seal_id: u64) -> Result<bool, AggError> {
    let n: u64 = client.query(&format!("SELECT count() FROM {db}.usage_seals WHERE seal_id = ?")).bind(seal_id).fetch_one().await?;
    Ok(n > 0)
}

/// Write the latest seal's head to `usage_seal_head` (migrations 16 and 17)
/// unless a head of what it covers is there: after a seal's commit, and
/// first in every run under the seal lock, which writes the head a seal
/// killed after its commit did not. Readers take the latest head as the
/// latest seal, so a head is only ever written after its seal's commit; a
/// missing head leaves them on the previous seal, with the same answer. A
/// consolidation writes none: its row covers what the seal it rewrote
/// covers, and the head of that seal stands for it (the condition on
/// `covers` skips it). The head carries the tails' time bound: the oldest
/// `tail_since` of the last 8 seals up to it, and whether all 8 found the
/// legacy tables drained (migration 15 says why 8), and the floor of the
/// consolidated views' list of seals: the oldest of the same 8 seals'
/// `list_floor` (migration 18, [`crate::consolidate::measure_list_floor`]).
/// One statement, which migration 17 runs too for a database sealed before it.
pub(crate) async fn publish_head(client: &clickhouse::Client, db: &str) -> Result<(), AggError> {
    client
        .query(&format!(
            "INSERT INTO {db}.usage_seal_head (seq, covers, topics, partitions, sealed_to, tail_floor, drained, list_floor) \
             SELECT max(seq), argMax(covers, seq), argMax(topics, seq), argMax(partitions, seq), argMax(sealed_to, seq), \
             min(tail_since), min(legacy_drained), min(list_floor) \
             FROM {db}.usage_seals WHERE seq + 8 > (SELECT max(seq) FROM {db}.usage_seals) \
             HAVING argMax(covers, seq) > (SELECT max(covers) FROM {db}.usage_seal_head)"
        ))
        .execute()
        .await?;
    Ok(())
}

/// A digest of the claims table: a seal commits only if it is unchanged.
async fn claims_digest(client: &clickhouse::Client, db: &str) -> Result<(u64, u64), AggError> {
    Ok(client
        .query(&format!("SELECT count(), sum(cityHash64(topic, partition, epoch, start_offset, claim_id)) FROM {db}.aggregator_claims"))
        .fetch_one::<(u64, u64)>()
        .await?)
}

/// The test hooks [`SEAL_FAULT_ENV`] and [`SEAL_PAUSE_ENV`] at `step`
/// (`runtime::fault`: only in builds with the `fault-injection` feature).
pub(crate) fn fault_after(step: &str) {
    runtime::fault::at(SEAL_FAULT_ENV, step, runtime::fault::Fault::Kill);
    runtime::fault::at(SEAL_PAUSE_ENV, step, runtime::fault::Fault::Stop);
}

/// Run one seal (see the module docs). `lock_stale_secs`: a lock older
/// than this is taken to be a crashed seal's and taken over.
pub async fn seal(cfg: &ClickHouseConfig, lock_stale_secs: u64) -> Result<Result<SealReport, SealSkipped>, AggError> {
    seal_with(cfg, lock_stale_secs, DEFAULT_TAIL_MARGIN_SECS).await
}

/// [`seal`] with the tail's time margin `tail_margin_secs` (module docs).
pub async fn seal_with(
    cfg: &ClickHouseConfig,
    lock_stale_secs: u64,
    tail_margin_secs: u32,
) -> Result<Result<SealReport, SealSkipped>, AggError> {
    let db = cfg.db().map_err(|e| AggError::Config(e.to_string()))?.to_string();
    let on = cfg.ddl_on().map_err(|e| AggError::Config(e.to_string()))?;
    let server = cfg.server_client();
    let taken = runtime::ch::ddl_lock(&server, &db, SEAL_LOCK, &on, lock_stale_secs, LockWait::Fail)
        .await
        .map_err(|e| AggError::Config(format!("the seal lock: {e}")))?;
    if !taken {
        return Ok(Err(SealSkipped::Locked));
    }
    fault_after("lock");
    let result = seal_locked(cfg, &db, tail_margin_secs).await;
    runtime::ch::ddl_unlock(&server, &db, SEAL_LOCK, &on).await;
    result
}

async fn seal_locked(cfg: &ClickHouseConfig, db: &str, margin: u32) -> Result<Result<SealReport, SealSkipped>, AggError> {
    let started = Instant::now();
    let client = cfg.writer_client().await.map_err(|e| AggError::Config(format!("ClickHouse at {}: {e}", cfg.url)))?;
    crate::consolidate::drop_staging_everywhere(cfg, &client, db).await?;
    publish_head(&client, db).await?;
    let before = latest(&client, db).await?;
    let digest = claims_digest(&client, db).await?;
    // per partition, the latest checkpoint that counts
    let checkpoints: Vec<CheckpointMax> = client
        .query(&format!(
            "SELECT topic, partition, max(position) FROM {db}.aggregator_checkpoints \
             ALL INNER JOIN (SELECT topic, partition, epoch, fence FROM {db}.aggregator_fences) AS f USING (topic, partition, epoch) \
             WHERE position <= fence GROUP BY topic, partition"
        ))
        .fetch_all()
        .await?;
    let mut moved = BTreeMap::new();
    let mut sealed_to = before.sealed_to.clone();
    for c in checkpoints {
        let key = (c.topic, c.partition);
        let from = before.sealed_to.get(&key).copied().unwrap_or(0);
        if c.position > from {
            moved.insert(key.clone(), (from, c.position));
            sealed_to.insert(key, c.position);
        }
    }
    if moved.is_empty() {
        return Ok(Err(SealSkipped::NothingNew));
    }
    let seal_id = loop {
        let id = rand::random::<u64>();
        if id != 0 {
            break id;
        }
    };
    // the server's clock before anything is read (the tail's time bound)
    let now: u32 = client.query("SELECT toUInt32(now())").fetch_one().await?;
    let keys: Vec<String> = moved.keys().map(|(t, p)| format!("{t}/{p}")).collect();
    // the first offset to seal: past the last seal, or 0 (rows at position 0
    // count, e.g. written before migration 5) for a partition never sealed
    let firsts: Vec<u64> = moved.keys().map(|k| before.sealed_to.get(k).map_or(0, |f| f + 1)).collect();
    let tos: Vec<u64> = moved.values().map(|r| r.1).collect();
    // the first seal of a large log groups all of it: the grouping spills to
    // disk past 1 GB instead of failing on the server's memory limit
    let grouping = runtime::ch::spilling(client.clone());
    let mut tables = Vec::new();
    for t in &SEAL_TABLES {
        let t0 = Instant::now();
        grouping
            .query(&format!(
                "INSERT INTO {db}.{name} ({columns}, seal_id) \
                 SELECT {select}, {SUMS}, toUInt64({seal_id}) FROM ( \
                   SELECT * FROM {source} AS l \
                   ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f \
                   USING (src_topic, src_partition, src_epoch) \
                   WHERE has(?, concat(src_topic, '/', toString(src_partition))) AND src_offset <= fence \
                     AND src_offset >= transform(concat(src_topic, '/', toString(src_partition)), ?, ?, toUInt64(0)) \
                     AND src_offset <= transform(concat(src_topic, '/', toString(src_partition)), ?, ?, toUInt64(0)) \
                 ) GROUP BY {group}",
                name = t.name,
                columns = t.columns,
                select = t.select,
                source = before.log_source(db, t.log, t.log_columns),
                group = t.group,
            ))
            .bind(&keys)
            .bind(&keys)
            .bind(&firsts)
            .bind(&keys)
            .bind(&tos)
            .execute()
            .await?;
        tables.push((t.name, t0.elapsed().as_millis() as u64));
        fault_after(t.name);
    }
    let (tail_since, legacy_drained) = tail_bound(&client, db, &before, &sealed_to, now, margin).await?;
    if claims_digest(&client, db).await? != digest {
        events::SealAbandoned { seal_id, why: "a claim landed while sealing; its rows stay invisible, the next seal covers them" }.emit();
        return Ok(Err(SealSkipped::ClaimsChanged));
    }
    fault_after("checked");
    let seq = before.seq + 1;
    // the latest floor a consolidation measured, read before the commit (migration 18)
    let list_floor = crate::consolidate::recorded_list_floor(&client, db).await?;
    let (topics, partitions): (Vec<String>, Vec<u32>) = sealed_to.keys().cloned().unzip();
    let upto: Vec<u64> = sealed_to.values().copied().collect();
    // a seal that outlived its lock (paused, or slower than
    // --lock-stale-secs) and whose lock was taken over must not commit
    // over its successor's work: the commit is conditional on the server,
    // in the statement itself, so no pause of this process can fall
    // between the check and the write
    client
        .query(&format!(
            "INSERT INTO {db}.usage_seals (seal_id, seq, covers, topics, partitions, sealed_to, sealed_at, tail_since, legacy_drained, list_floor) \
             SELECT toUInt64(?), toUInt64(?), toUInt64(?), ?, ?, ?, now(), toDateTime(?, 'UTC'), toUInt8(?), toUInt64(?) \
             WHERE {}",
            commit_condition(db)
        ))
        .bind(seal_id)
        .bind(seq)
        .bind(seq)
        .bind(&topics)
        .bind(&partitions)
        .bind(&upto)
        .bind(tail_since)
        .bind(legacy_drained as u8)
        .bind(list_floor)
        .bind(before.seq)
        .execute()
        .await?;
    if !committed(&client, db, seal_id).await? {
        events::SealAbandoned { seal_id, why: "another seal committed meanwhile (this seal's lock went stale); its rows stay invisible" }
            .emit();
        return Ok(Err(SealSkipped::Superseded));
    }
    fault_after("commit");
    // committed: a head that fails here is written by the next run, and
    // readers stay on the previous seal until then, with the same answers
    if let Err(e) = publish_head(&client, db).await {
        events::SealHeadDeferred { seal_id, error: &e }.emit();
    }
    fault_after("head");
    let millis = started.elapsed().as_millis() as u64;
    events::SealCommitted { seal_id, seq, partitions: moved.len(), tables: &tables, millis, tail_since, legacy_drained }.emit();
    Ok(Ok(SealReport { seal_id, seq, moved, tables, millis }))
}

/// The new seal's `tail_since` and `legacy_drained` (module docs): `now` is
/// the server's clock taken before the seal read anything, `sealed_to` the
/// offsets it is about to commit.
async fn tail_bound(
    client: &clickhouse::Client,
    db: &str,
    before: &Sealed,
    sealed_to: &BTreeMap<PartitionKey, u64>,
    now: u32,
    margin: u32,
) -> Result<(u32, bool), AggError> {
    let keys: Vec<String> = sealed_to.keys().map(|(t, p)| format!("{t}/{p}")).collect();
    let upto: Vec<u64> = sealed_to.values().copied().collect();
    // a valid row above the new offsets (of any partition; one never sealed
    // has all its rows above)
    let above = |source: String| {
        format!(
            "SELECT count(), toUInt32(min(inserted_at)) FROM {source} AS l \
             ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f \
             USING (src_topic, src_partition, src_epoch) \
             WHERE src_offset <= fence AND (NOT has(?, concat(src_topic, '/', toString(src_partition))) \
                OR src_offset > transform(concat(src_topic, '/', toString(src_partition)), ?, ?, toUInt64(0)))"
        )
    };
    const COLUMNS: &str = "src_topic, src_partition, src_epoch, src_offset, inserted_at";
    let mut since = now.saturating_sub(margin);
    for (log, _) in LOGS {
        let (n, first): (u64, u32) = client
            .query(&above(format!("({})", before.recent_log(db, log, COLUMNS))))
            .bind(&keys)
            .bind(&keys)
            .bind(&upto)
            .fetch_one()
            .await?;
        if n > 0 {
            since = since.min(first);
        }
    }
    if before.legacy_drained {
        return Ok((since, true));
    }
    // drained: no valid legacy row is above the new offsets, and the legacy
    // tables are empty or migration 10 is older than the margin (an insert
    // in flight at its rename may land late)
    let migrated: u32 =
        client.query(&format!("SELECT toUInt32(min(applied_at)) FROM {db}.schema_migrations WHERE version = 10")).fetch_one().await?;
    let mut legacy_rows = 0;
    for (log, _) in LOGS {
        legacy_rows += client.query(&format!("SELECT count() FROM {db}.{log}_legacy")).fetch_one::<u64>().await?;
    }
    if legacy_rows > 0 && (migrated == 0 || migrated > now.saturating_sub(margin)) {
        return Ok((since, false));
    }
    let mut left = 0;
    for (log, _) in LOGS {
        let (n, _): (u64, u32) = client
            .query(&above(format!("(SELECT {COLUMNS} FROM {db}.{log}_legacy)")))
            .bind(&keys)
            .bind(&keys)
            .bind(&upto)
            .fetch_one()
            .await?;
        left += n;
    }
    Ok((since, left == 0))
}
