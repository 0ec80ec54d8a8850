//! Consolidation: one sealed row per key and grain instead of one per seal.
//!
//! Every seal writes its own rows, so a day's row of a key active all day is
//! split over every seal of that day (288 with a seal every 5 minutes), and
//! billing's month, which reads the daily rows, would grow with the number of
//! seals. [`consolidate`] rewrites a month of the hourly and daily sealed
//! tables into one row per key, for the months whose rows come from at
//! least `min_seals` seals. (The minute tables are left as they are: a
//! minute's rows come from one or two seals.)
//!
//! **Exactly once.** It holds the seal lock, so no seal writes meanwhile.
//! For each month it fills a staging table of its own
//! (`<table>_consolidating_<id>`) with the sums of the committed seals'
//! rows, under a fresh id. Then it commits that id as a seal of its own in
//! `usage_seals`: the next sequence number, the same offsets and time bound
//! as the latest seal, and `consolidated = 1`. Then it swaps each month in
//! with `REPLACE PARTITION`, which is atomic: a reader sees the month's rows
//! of the earlier seals or the consolidated ones, never both and never
//! neither (both are committed from the commit on). A run killed after the
//! commit leaves some months swapped and the others as they were; each is
//! right. Rows of a seal that was never committed (a killed seal) are left
//! out: nothing counted them.
//!
//! **A run that outlives its lock** (paused, or slower than
//! `--lock-stale-secs`, while another run takes the lock over) must not
//! commit, nor swap a month in over rows sealed after it staged them. Its
//! commit is conditional on the server (as a seal's, `seal.rs`), and every
//! run that takes the lock first drops every staging table it finds
//! (`drop_staging`): the stale run's swap then fails, and it stops.
//!
//! **Snapshots.** Billing reads sealed rows of the seals up to its snapshot
//! (`seq <= S`). A consolidation committed after the snapshot takes the
//! earlier rows away from it; `billing::store::Store::usage_at` checks for
//! one after reading and refuses the stale answer (run billing again).
//!
//! **Not on a sharded cluster** (yet): the sealed rows of a month lie on
//! every shard, and the swap must run on each shard's local table.

use crate::error::AggError;
use crate::events;
use crate::seal::{SEAL_LOCK, SEAL_TABLES, SUMS};
use runtime::ch::{ClickHouseConfig, Layout, LockWait};
use runtime::events::InternalEvent;

/// The sealed tables consolidated (the hourly and daily grains).
pub const CONSOLIDATED: [&str; 4] =
    ["usage_by_tracking_hourly_sealed", "usage_by_tracking_daily_sealed", "usage_by_stream_daily_sealed", "usage_by_viewer_daily_sealed"];

/// Default: a month is consolidated once its rows come from this many seals
/// (4 hours of seals every 5 minutes).
pub const DEFAULT_MIN_SEALS: u64 = 48;

/// What [`consolidate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consolidated {
    /// `(table, YYYYMM, rows before, rows after)`.
    pub months: Vec<(&'static str, u32, u64, u64)>,
    /// The seal it committed (0: none).
    pub seal_id: u64,
}

/// Why a consolidation did not run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsolidationSkipped {
    /// A seal or another consolidation holds the lock.
    Locked,
    /// Nothing is sealed yet, or no month has rows of `min_seals` seals.
    NothingToDo,
    /// The cluster layout (module docs).
    Cluster,
    /// Another seal committed while it ran (its lock had gone stale): it
    /// swapped nothing.
    Superseded,
}

/// A step [`consolidate_until`] stops after, as a crash there would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Every staging month is filled, nothing committed.
    Staged,
    /// The consolidation seal is committed, no month swapped.
    Committed,
    /// The first month is swapped.
    FirstSwap,
}

/// Consolidate every month of [`CONSOLIDATED`] whose rows come from at least
/// `min_seals` committed seals (module docs).
pub async fn consolidate(
    cfg: &ClickHouseConfig,
    min_seals: u64,
    lock_stale_secs: u64,
) -> Result<Result<Consolidated, ConsolidationSkipped>, AggError> {
    consolidate_until(cfg, min_seals, lock_stale_secs, None).await
}

/// [`consolidate`], stopping after `stop` (for tests of an interrupted run).
pub async fn consolidate_until(
    cfg: &ClickHouseConfig,
    min_seals: u64,
    lock_stale_secs: u64,
    stop: Option<Stop>,
) -> Result<Result<Consolidated, ConsolidationSkipped>, AggError> {
    let config = |e: runtime::ch::ChError| AggError::Config(e.to_string());
    if !matches!(cfg.layout().map_err(config)?, Layout::Single) {
        return Ok(Err(ConsolidationSkipped::Cluster));
    }
    let db = cfg.db().map_err(config)?.to_string();
    let server = cfg.server_client();
    if !runtime::ch::ddl_lock(&server, &db, SEAL_LOCK, "", lock_stale_secs, LockWait::Fail)
        .await
        .map_err(|e| AggError::Config(format!("the seal lock: {e}")))?
    {
        return Ok(Err(ConsolidationSkipped::Locked));
    }
    let result = locked(cfg, &db, min_seals, stop).await;
    runtime::ch::ddl_unlock(&server, &db, SEAL_LOCK, "").await;
    result
}

async fn locked(
    cfg: &ClickHouseConfig,
    db: &str,
    min_seals: u64,
    stop: Option<Stop>,
) -> Result<Result<Consolidated, ConsolidationSkipped>, AggError> {
    let client = cfg.writer_client().await.map_err(|e| AggError::Config(format!("ClickHouse at {}: {e}", cfg.url)))?;
    drop_staging(&client, db).await?;
    let seq = crate::seal::latest_seq(&client, db).await?;
    if seq == 0 {
        return Ok(Err(ConsolidationSkipped::NothingToDo));
    }
    let id = loop {
        let id = rand::random::<u64>();
        if id != 0 {
            break id;
        }
    };
    let committed = format!("seal_id GLOBAL IN (SELECT seal_id FROM {db}.usage_seals)");
    let grouping = runtime::ch::spilling(client.clone());
    let mut out = Consolidated { months: vec![], seal_id: id };
    for name in CONSOLIDATED {
        let t = SEAL_TABLES.iter().find(|t| t.name == name).expect("a sealed table");
        let time = t.group.split(',').next().unwrap_or_default().trim();
        #[derive(serde::Deserialize, clickhouse::Row)]
        struct Month {
            m: u32,
            rows: u64,
        }
        let months: Vec<Month> = client
            .query(&format!(
                "SELECT toYYYYMM({time}) AS m, count() AS rows FROM {db}.{name} WHERE {committed} \
                 GROUP BY m HAVING uniqExact(seal_id) >= ? ORDER BY m"
            ))
            .bind(min_seals)
            .fetch_all()
            .await?;
        if months.is_empty() {
            continue;
        }
        let staging = format!("{db}.{}", staging(name, id));
        client.query(&format!("CREATE TABLE IF NOT EXISTS {staging} AS {db}.{name}")).execute().await?;
        for month in months {
            let m = month.m;
            client.query(&format!("ALTER TABLE {staging} DROP PARTITION {m}")).execute().await?;
            grouping
                .query(&format!(
                    "INSERT INTO {staging} ({columns}, seal_id) SELECT {group}, {SUMS}, toUInt64({id}) FROM {db}.{name} \
                     WHERE toYYYYMM({time}) = {m} AND {committed} GROUP BY {group}",
                    columns = t.columns,
                    group = t.group,
                ))
                .execute()
                .await?;
            let after: u64 = client.query(&format!("SELECT count() FROM {staging} WHERE toYYYYMM({time}) = {m}")).fetch_one().await?;
            out.months.push((name, m, month.rows, after));
        }
    }
    if out.months.is_empty() {
        return Ok(Err(ConsolidationSkipped::NothingToDo));
    }
    if stop == Some(Stop::Staged) {
        return Ok(Ok(out));
    }
    // the commit: the latest seal's offsets and bound under the next number;
    // not if another seal committed meanwhile (this run's lock went stale)
    // (conditional on the server, as a seal's commit)
    client
        .query(&format!(
            "INSERT INTO {db}.usage_seals (seal_id, seq, topics, partitions, sealed_to, sealed_at, tail_since, legacy_drained, consolidated) \
             SELECT toUInt64({id}), toUInt64({next}), topics, partitions, sealed_to, now(), tail_since, legacy_drained, 1 \
             FROM {db}.usage_seals WHERE seq = {seq} AND {condition} LIMIT 1",
            next = seq + 1,
            condition = crate::seal::commit_condition(db),
        ))
        .bind(seq)
        .execute()
        .await?;
    if !crate::seal::committed(&client, db, id).await? {
        events::ConsolidationAbandoned { seal_id: id, why: "another seal committed meanwhile (this run's lock went stale)" }.emit();
        return Ok(Err(ConsolidationSkipped::Superseded));
    }
    if stop == Some(Stop::Committed) {
        return Ok(Ok(out));
    }
    for (i, (name, m, _, _)) in out.months.iter().enumerate() {
        if crate::seal::latest_seq(&client, db).await? != seq + 1 {
            events::ConsolidationAbandoned {
                seal_id: id,
                why: "another seal committed meanwhile; the months not swapped stay as they are",
            }
            .emit();
            return Ok(Err(ConsolidationSkipped::Superseded));
        }
        crate::seal::fault_after("swap");
        // a run whose lock was taken over finds its staging dropped (see
        // [`drop_staging`]): the swap fails and the month stays as it is
        let swapped =
            client.query(&format!("ALTER TABLE {db}.{name} REPLACE PARTITION {m} FROM {db}.{}", staging(name, id))).execute().await;
        if let Err(e) = swapped {
            if exists(&client, db, &staging(name, id)).await? {
                return Err(e.into());
            }
            events::ConsolidationAbandoned {
                seal_id: id,
                why: "its staging was dropped by a run that took the lock over; the months not swapped stay as they are",
            }
            .emit();
            return Ok(Err(ConsolidationSkipped::Superseded));
        }
        if i == 0 && stop == Some(Stop::FirstSwap) {
            return Ok(Ok(out));
        }
    }
    for name in CONSOLIDATED {
        client.query(&format!("DROP TABLE IF EXISTS {db}.{}", staging(name, id))).execute().await?;
    }
    events::SealsConsolidated { seal_id: id, seq: seq + 1, months: &out.months }.emit();
    Ok(Ok(out))
}

/// The staging table of `table` for the run `id`: a name of its own, so a
/// run never swaps in another run's rows.
fn staging(table: &str, id: u64) -> String {
    format!("{table}{STAGING}{id:016x}")
}

/// What every staging table's name holds.
const STAGING: &str = "_consolidating_";

async fn exists(client: &clickhouse::Client, db: &str, table: &str) -> Result<bool, AggError> {
    let n: u64 = client.query("SELECT count() FROM system.tables WHERE database = ? AND name = ?").bind(db).bind(table).fetch_one().await?;
    Ok(n > 0)
}

/// Drop every staging table of `db`. Called by every run that takes the
/// seal lock, before it writes anything: a staging table then left belongs
/// to a run that crashed or whose lock went stale (paused, or slower than
/// `--lock-stale-secs`). Without its staging such a run, resumed, cannot
/// swap a month in over rows sealed after it was staged.
pub(crate) async fn drop_staging(client: &clickhouse::Client, db: &str) -> Result<(), AggError> {
    let tables: Vec<String> = client
        .query("SELECT name FROM system.tables WHERE database = ? AND position(name, ?) > 0")
        .bind(db)
        .bind(STAGING)
        .fetch_all()
        .await?;
    for t in tables {
        events::ConsolidationStagingDropped { table: &t }.emit();
        client
            .query(&format!(
                "DROP TABLE IF EXISTS {db}.{}",
                runtime::ch::check_identifier(&t).map_err(|e| AggError::CorruptState(e.to_string()))?
            ))
            .execute()
            .await?;
    }
    Ok(())
}
