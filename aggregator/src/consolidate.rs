//! Consolidation: one sealed row per key and grain instead of one per seal.
//!
//! Every seal writes its own rows, so a day's row of a key active all day is
//! split over every seal of that day (288 with a seal every 5 minutes), and
//! billing's month, which reads the daily rows, would grow with the number of
//! seals. [`consolidate`] rewrites a month of the hourly and daily sealed
//! tables into one row per key, for the months whose rows come from at
//! least `min_seals` seals, or hold rows of a plain seal `min_seals` seals
//! old (a month of late rows from one seal). (The minute tables are left as
//! they are: a minute's rows come from one or two seals.)
//!
//! **The list floor** (migration 18). The views over these tables join only
//! the consolidations' seals (`usage_seal_consolidations`, written before
//! each commit) and the seals from a floor on. After its
//! swaps a run measures the floor ([`measure_list_floor`]: the oldest plain
//! seal with rows left, on every replica) and records it; each seal copies
//! the latest record into its row, each head takes the oldest of the last 8
//! seals'. The age rule above keeps the floor within about `2 * min_seals`
//! seals of the latest.
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
//! **On a sharded cluster** each shard's sealed rows (sharded at random)
//! are rewritten from that shard's own rows, on that shard: its staging
//! table is a plain table on one replica of the shard, filled from the
//! shard's local table, and swapped into it (`REPLACE PARTITION` on a
//! `Replicated` table is replicated to the shard's other replicas). So at
//! every moment each shard holds its earlier rows or their sums, and a
//! reader between two shards' swaps counts each row once. A key's month ends
//! as at most one row per shard. The replica of each shard is the first of
//! `clickhouse.replica_urls` that answers (each server names its own shard
//! in `system.clusters`); it is brought up to date (`SYSTEM SYNC REPLICA`)
//! before its rows are read, since a swap replaces every part of the month,
//! fetched yet or not. A run that takes the lock drops the staging tables on
//! every replica of that list that answers; a replica down then keeps its
//! staging, and a run that staged there and lost its lock is stopped by the
//! check before each swap (`Superseded`). Without `replica_urls` a
//! consolidation on a cluster is skipped (`NoReplicaUrls`). After each swap
//! on a replicated table a row that counts for nothing is inserted with a
//! quorum ([`mark_quorum`] says why: sequentially consistent reads refuse a
//! month swapped on 18.16 until then); every run first marks a month that a
//! killed run swapped and did not mark.

use crate::error::AggError;
use crate::events;
use crate::seal::{SEAL_LOCK, SEAL_TABLES, SUMS};
use runtime::ch::{ClickHouseConfig, Layout, LockWait};
use runtime::events::InternalEvent;
use std::collections::{BTreeMap, BTreeSet};

/// The sealed tables consolidated (the hourly and daily grains).
pub const CONSOLIDATED: [&str; 4] =
    ["usage_by_tracking_hourly_sealed", "usage_by_tracking_daily_sealed", "usage_by_stream_daily_sealed", "usage_by_viewer_daily_sealed"];

/// Default: a month is consolidated once its rows come from this many seals
/// (4 hours of seals every 5 minutes).
pub const DEFAULT_MIN_SEALS: u64 = 48;

/// What [`consolidate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consolidated {
    /// `(table, YYYYMM, rows before, rows after)` (on a cluster, over every shard).
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
    /// A cluster without `clickhouse.replica_urls`: no shard can be reached
    /// on its own (module docs).
    NoReplicaUrls,
    /// No replica of these shards in `clickhouse.replica_urls` answered.
    ShardsUnreachable(Vec<u32>),
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
    /// The first month is swapped (on a cluster: on the first shard), its
    /// quorum not yet marked (`mark_quorum`).
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
    if matches!(cfg.layout().map_err(config)?, Layout::Cluster { .. }) && cfg.replica_urls.is_empty() {
        events::ConsolidationImpossible { why: &"a cluster without clickhouse.replica_urls: no shard can be reached on its own" }.emit();
        return Ok(Err(ConsolidationSkipped::NoReplicaUrls));
    }
    let db = cfg.db().map_err(config)?.to_string();
    let on = cfg.ddl_on().map_err(config)?;
    let server = cfg.server_client();
    if !runtime::ch::ddl_lock(&server, &db, SEAL_LOCK, &on, lock_stale_secs, LockWait::Fail)
        .await
        .map_err(|e| AggError::Config(format!("the seal lock: {e}")))?
    {
        return Ok(Err(ConsolidationSkipped::Locked));
    }
    let result = locked(cfg, &db, min_seals, stop).await;
    runtime::ch::ddl_unlock(&server, &db, SEAL_LOCK, &on).await;
    result
}

/// A ClickHouse error of `what` on `shard`, naming the replica (transient,
/// as every ClickHouse error: the next run retries).
fn on_shard<'a>(shard: &'a Shard, what: &'a str) -> impl Fn(clickhouse::error::Error) -> AggError + 'a {
    move |e| AggError::ClickHouse(clickhouse::error::Error::Other(format!("{what} on shard {} ({}): {e}", shard.num, shard.url).into()))
}

/// Where a month is rewritten: the one server, or one replica of a shard.
struct Shard {
    /// The shard's number in `system.clusters` (1 on one server).
    num: u32,
    /// The replica's address (for errors).
    url: String,
    /// A writer's client to that replica.
    client: clickhouse::Client,
}

/// The servers a consolidation reaches.
struct Targets {
    /// One replica per shard, by shard number.
    shards: Vec<Shard>,
    /// Every server reached: the staging tables are dropped on each.
    servers: Vec<clickhouse::Client>,
    /// The local tables' name suffix (`_local` on a cluster) and whether
    /// they are `Replicated`.
    local: &'static str,
    replicated: bool,
}

/// The one server, or on a cluster one replica of every shard from
/// `clickhouse.replica_urls` (`Err`: a shard none of them reaches).
async fn targets(cfg: &ClickHouseConfig, client: &clickhouse::Client) -> Result<Result<Targets, ConsolidationSkipped>, AggError> {
    let connect = |cfg: &ClickHouseConfig| {
        let cfg = cfg.clone();
        async move { cfg.writer_client().await.map_err(|e| AggError::Config(format!("ClickHouse at {}: {e}", cfg.url))) }
    };
    let (cluster, replicated) = match cfg.layout().map_err(|e| AggError::Config(e.to_string()))? {
        Layout::Single => {
            let client = client.clone();
            let shards = vec![Shard { num: 1, url: cfg.url.clone(), client: client.clone() }];
            return Ok(Ok(Targets { shards, servers: vec![client], local: "", replicated: false }));
        }
        Layout::Cluster { cluster, replicated, .. } => (cluster, replicated),
    };
    let all: Vec<u32> = cfg
        .client()
        .query("SELECT DISTINCT shard_num FROM system.clusters WHERE cluster = ? ORDER BY shard_num")
        .bind(&cluster)
        .fetch_all()
        .await?;
    let mut targets = Targets { shards: vec![], servers: vec![], local: "_local", replicated };
    for url in &cfg.replica_urls {
        let replica = ClickHouseConfig { url: url.clone(), ..cfg.clone() };
        let found = async {
            let client = connect(&replica).await?;
            let num: Vec<u32> = client
                .query("SELECT DISTINCT shard_num FROM system.clusters WHERE cluster = ? AND is_local = 1")
                .bind(&cluster)
                .fetch_all()
                .await?;
            Ok::<_, AggError>((client, num))
        }
        .await;
        match found {
            Ok((client, num)) => {
                let [num] = num[..] else {
                    return Err(AggError::Config(format!(
                        "clickhouse.replica_urls: {url} is not a server of one shard of cluster {cluster} \
                         (the shards its system.clusters calls local: {num:?})"
                    )));
                };
                targets.servers.push(client.clone());
                if !targets.shards.iter().any(|s| s.num == num) {
                    targets.shards.push(Shard { num, url: url.clone(), client });
                }
            }
            Err(e) => events::ConsolidationReplicaUnreachable { url, error: &e }.emit(),
        }
    }
    let missing: Vec<u32> = all.into_iter().filter(|n| !targets.shards.iter().any(|s| s.num == *n)).collect();
    if !missing.is_empty() {
        events::ConsolidationImpossible { why: &format!("no server of clickhouse.replica_urls answers for shards {missing:?}") }.emit();
        return Ok(Err(ConsolidationSkipped::ShardsUnreachable(missing)));
    }
    targets.shards.sort_by_key(|s| s.num);
    Ok(Ok(targets))
}

async fn locked(
    cfg: &ClickHouseConfig,
    db: &str,
    min_seals: u64,
    stop: Option<Stop>,
) -> Result<Result<Consolidated, ConsolidationSkipped>, AggError> {
    let client = cfg.writer_client().await.map_err(|e| AggError::Config(format!("ClickHouse at {}: {e}", cfg.url)))?;
    let targets = match targets(cfg, &client).await? {
        Ok(t) => t,
        Err(skipped) => return Ok(Err(skipped)),
    };
    for server in &targets.servers {
        drop_staging(server, db).await?;
    }
    if targets.replicated {
        for shard in &targets.shards {
            mark_quorum_after_a_killed_swap(shard, db).await?;
        }
    }
    // the head of the seal whose `covers` the commit below copies, before it
    crate::seal::publish_head(&client, db).await?;
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
    // the plain seals that may still have rows of their own (none below the recorded floor)
    let plain = plain_seals(&client, db).await?;
    let mut out = Consolidated { months: vec![], seal_id: id };
    // (table, month, shard index) of every staged month with rows
    let mut swaps: Vec<(&'static str, u32, usize)> = vec![];
    let local = targets.local;
    for name in CONSOLIDATED {
        let t = SEAL_TABLES.iter().find(|t| t.name == name).expect("a sealed table");
        let time = t.time();
        #[derive(serde::Deserialize, clickhouse::Row)]
        struct Month {
            m: u32,
            rows: u64,
            ids: Vec<u64>,
        }
        // chosen over every shard: the contract-named table
        let months: Vec<Month> = client
            .query(&format!(
                "SELECT toYYYYMM({time}) AS m, count() AS rows, groupUniqArray(seal_id) AS ids FROM {db}.{name} WHERE {committed} \
                 GROUP BY m ORDER BY m"
            ))
            .fetch_all()
            .await?;
        let months: Vec<Month> = months.into_iter().filter(|m| due(&m.ids, &plain, min_seals, seq)).collect();
        if months.is_empty() {
            continue;
        }
        let staging = format!("{db}.{}", staging(name, id));
        let mut after = vec![0u64; months.len()];
        for (i, shard) in targets.shards.iter().enumerate() {
            if targets.replicated {
                // every part of the shard's month here: the swap replaces them all
                let sync = format!("SYSTEM SYNC REPLICA {db}.{name}{local}");
                shard.client.query(&sync).execute().await.map_err(on_shard(shard, &sync))?;
            }
            let engine = staging_engine(&shard.client, db, &format!("{name}{local}"), targets.replicated).await?;
            shard.client.query(&format!("CREATE TABLE IF NOT EXISTS {staging} AS {db}.{name}{local}{engine}")).execute().await?;
            let grouping = runtime::ch::spilling(shard.client.clone());
            for (month, after) in months.iter().zip(after.iter_mut()) {
                let m = month.m;
                shard.client.query(&format!("ALTER TABLE {staging} DROP PARTITION {m}")).execute().await?;
                grouping
                    .query(&format!(
                        "INSERT INTO {staging} ({columns}, seal_id) SELECT {group}, {SUMS}, toUInt64({id}) FROM {db}.{name}{local} \
                         WHERE toYYYYMM({time}) = {m} AND {committed} GROUP BY {group}",
                        columns = t.columns,
                        group = t.group,
                    ))
                    .execute()
                    .await?;
                let staged: u64 =
                    shard.client.query(&format!("SELECT count() FROM {staging} WHERE toYYYYMM({time}) = {m}")).fetch_one().await?;
                *after += staged;
                // a shard with no committed row of the month has nothing to swap
                if staged > 0 {
                    swaps.push((name, m, i));
                }
            }
        }
        for (month, after) in months.iter().zip(after) {
            out.months.push((name, month.m, month.rows, after));
        }
    }
    if out.months.is_empty() {
        return Ok(Err(ConsolidationSkipped::NothingToDo));
    }
    if stop == Some(Stop::Staged) {
        return Ok(Ok(out));
    }
    // listed by the views over these tables before the commit, whatever the
    // floor (migration 18): no row carries the id until a swap after it
    client
        .query(&format!(
            "INSERT INTO {db}.usage_seal_consolidations (seal_id, covers) \
             SELECT toUInt64({id}), covers FROM {db}.usage_seals WHERE seq = {seq} LIMIT 1"
        ))
        .execute()
        .await?;
    // the commit: the latest seal's offsets, bound and `covers` (what the
    // views compare: migration 15) under the next number;
    // not if another seal committed meanwhile (this run's lock went stale)
    // (conditional on the server, as a seal's commit)
    client
        .query(&format!(
            "INSERT INTO {db}.usage_seals (seal_id, seq, covers, topics, partitions, sealed_to, sealed_at, tail_since, legacy_drained, list_floor, consolidated) \
             SELECT toUInt64({id}), toUInt64({next}), covers, topics, partitions, sealed_to, now(), tail_since, legacy_drained, list_floor, 1 \
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
    for (done, (name, m, shard)) in swaps.iter().enumerate() {
        let shard = &targets.shards[*shard];
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
        let swapped = shard
            .client
            .query(&format!("ALTER TABLE {db}.{name}{local} REPLACE PARTITION {m} FROM {db}.{}", staging(name, id)))
            .execute()
            .await;
        if let Err(e) = swapped {
            if exists(&shard.client, db, &staging(name, id)).await? {
                return Err(on_shard(shard, &format!("swapping {name} {m} in"))(e));
            }
            events::ConsolidationAbandoned {
                seal_id: id,
                why: "its staging was dropped by a run that took the lock over; the months not swapped stay as they are",
            }
            .emit();
            return Ok(Err(ConsolidationSkipped::Superseded));
        }
        if done == 0 && stop == Some(Stop::FirstSwap) {
            return Ok(Ok(out));
        }
        if targets.replicated {
            mark_quorum(shard, db, name, *m).await?;
        }
    }
    for shard in &targets.shards {
        for name in CONSOLIDATED {
            shard.client.query(&format!("DROP TABLE IF EXISTS {db}.{}", staging(name, id))).execute().await?;
        }
    }
    events::SealsConsolidated { seal_id: id, seq: seq + 1, months: &out.months }.emit();
    // the months are swapped: the consolidated views' list may start later
    // (a failure here leaves the floor where it was; the next run measures again)
    let raised = match measure_list_floor(cfg).await {
        Ok(Some(floor)) => record_list_floor(&client, db, floor).await,
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = raised {
        events::SealListFloorHeld { why: &e }.emit();
    }
    Ok(Ok(out))
}

/// The replicas of the consolidated tables that a measurement of the list
/// floor reached. 18.16's `system.clusters` calls every replica of a
/// server's own shard local, so a replica is told by its own row of
/// `system.replicas` (its Keeper path, one per shard and table, and its
/// name); an unreplicated cluster's server by its shard.
#[derive(Default)]
struct Reached {
    /// Per consolidated table and Keeper path (a shard): the total number of
    /// replicas and the names reached; unreplicated, per shard number.
    replicas: BTreeMap<(&'static str, String), (u64, BTreeSet<String>)>,
}

impl Reached {
    async fn add(&mut self, server: &clickhouse::Client, db: &str, cluster: &str, replicated: bool) -> Result<(), AggError> {
        if !replicated {
            let own: Vec<u32> = server
                .query("SELECT DISTINCT shard_num FROM system.clusters WHERE cluster = ? AND is_local = 1")
                .bind(cluster)
                .fetch_all()
                .await?;
            for shard in own {
                for table in CONSOLIDATED {
                    self.replicas.entry((table, shard.to_string())).or_insert((1, BTreeSet::new())).1.insert(String::new());
                }
            }
            return Ok(());
        }
        for table in CONSOLIDATED {
            let own: Vec<(String, String, u8)> = server
                .query("SELECT zookeeper_path, replica_name, total_replicas FROM system.replicas WHERE database = ? AND table = ?")
                .bind(db)
                .bind(format!("{table}_local"))
                .fetch_all()
                .await?;
            for (path, name, total) in own {
                self.replicas.entry((table, path)).or_insert((u64::from(total), BTreeSet::new())).1.insert(name);
            }
        }
        Ok(())
    }

    /// What was not reached of `shards` shards (each of their replicas if
    /// `replicated`), for every consolidated table; `None`: all.
    fn missing(&self, shards: u64, replicated: bool) -> Option<String> {
        for table in CONSOLIDATED {
            let found: Vec<_> = self.replicas.iter().filter(|((t, _), _)| *t == table).map(|(_, r)| r).collect();
            if (found.len() as u64) < shards {
                return Some(format!("{} of {shards} shards of {table} answered among clickhouse.replica_urls", found.len()));
            }
            if let Some((total, names)) = found.iter().find(|(total, names)| (names.len() as u64) < *total) {
                let what = if replicated { "replicas" } else { "servers" };
                return Some(format!(
                    "{} of the {total} {what} of a shard of {table} answered among clickhouse.replica_urls ({names:?})",
                    names.len()
                ));
            }
        }
        None
    }
}

/// Whether a month whose committed rows carry `ids` is consolidated: its rows
/// come from `min_seals` seals or more, or a plain seal among them is
/// `min_seals` seals older than the latest (`latest`): a month of late rows
/// from one seal is consolidated too, or it would hold the floor of the
/// consolidated views' list of seals (migration 18) down for good. `plain`:
/// each plain seal's number.
fn due(ids: &[u64], plain: &BTreeMap<u64, u64>, min_seals: u64, latest: u64) -> bool {
    let oldest = ids.iter().filter_map(|id| plain.get(id)).min();
    ids.len() as u64 >= min_seals || oldest.is_some_and(|&s| s.saturating_add(min_seals) <= latest)
}

/// Every committed plain seal (not a consolidation) from the recorded list
/// floor on, by id: its number. A seal under the floor has no row left in
/// the consolidated tables.
async fn plain_seals(client: &clickhouse::Client, db: &str) -> Result<BTreeMap<u64, u64>, AggError> {
    let floor = recorded_list_floor(client, db).await?;
    let rows: Vec<(u64, u64)> = client
        .query(&format!("SELECT seal_id, seq FROM {db}.usage_seals WHERE consolidated = 0 AND seq >= ?"))
        .bind(floor)
        .fetch_all()
        .await?;
    Ok(rows.into_iter().collect())
}

/// The latest floor of the consolidated views' list of seals that a
/// consolidation recorded (`usage_seal_list_floor`, migration 18; 0: none).
/// A seal copies it into its row before its commit.
pub(crate) async fn recorded_list_floor(client: &clickhouse::Client, db: &str) -> Result<u64, AggError> {
    Ok(client.query(&format!("SELECT max(floor) FROM {db}.usage_seal_list_floor")).fetch_one::<u64>().await?)
}

async fn record_list_floor(client: &clickhouse::Client, db: &str, floor: u64) -> Result<(), AggError> {
    if floor > recorded_list_floor(client, db).await? {
        client.query(&format!("INSERT INTO {db}.usage_seal_list_floor (floor) VALUES (?)")).bind(floor).execute().await?;
        events::SealListFloorRaised { floor }.emit();
    }
    Ok(())
}

/// The floor of the consolidated views' list of seals as the tables are now
/// (migration 18): the number of the oldest committed plain seal with rows
/// in a table of [`CONSOLIDATED`] on any server that holds them, or the
/// next seal's number when none has. No later state of the tables has rows
/// of an older plain seal: new seals are newer, and consolidations and
/// retention only remove rows.
///
/// On a cluster every replica of every shard is read, each its local tables:
/// `REPLACE PARTITION` reaches the other replicas of a shard when they
/// apply it, and a replica that has not still serves the plain seals' rows.
/// `Ok(None)` when a replica of the cluster is not among the answering
/// servers of `clickhouse.replica_urls` (the floor stays where it was).
/// Under the seal lock (a consolidation's last step; tests).
pub async fn measure_list_floor(cfg: &ClickHouseConfig) -> Result<Option<u64>, AggError> {
    let config = |e: runtime::ch::ChError| AggError::Config(e.to_string());
    let db = cfg.db().map_err(config)?.to_string();
    let client = cfg.writer_client().await.map_err(config)?;
    let (servers, local) = match cfg.layout().map_err(config)? {
        Layout::Single => (vec![client.clone()], ""),
        Layout::Cluster { cluster, replicated, .. } => {
            let shards: u64 =
                client.query("SELECT uniqExact(shard_num) FROM system.clusters WHERE cluster = ?").bind(&cluster).fetch_one().await?;
            let (mut servers, mut reached) = (vec![], Reached::default());
            for url in &cfg.replica_urls {
                let server = ClickHouseConfig { url: url.clone(), ..cfg.clone() }.client();
                match reached.add(&server, &db, &cluster, replicated).await {
                    Ok(()) => servers.push(server),
                    Err(e) => events::ConsolidationReplicaUnreachable { url, error: &e }.emit(),
                }
            }
            if let Some(why) = reached.missing(shards, replicated) {
                events::SealListFloorHeld { why: &why }.emit();
                return Ok(None);
            }
            (servers, "_local")
        }
    };
    // before the tables are read: a seal committed later is newer than the
    // floor; every consolidation committed so far is listed whatever the
    // floor (one committed by an earlier binary, before migration 18, is
    // listed here)
    let next = crate::seal::latest_seq(&client, &db).await? + 1;
    list_consolidations(&client, &db).await?;
    let plain = plain_seals(&client, &db).await?;
    let mut floor = next;
    for server in servers {
        // a replica's own parts, whatever the quorum (a read of the month a
        // killed swap left unmarked would be refused: `mark_quorum`)
        let server = server.with_option("select_sequential_consistency", "0");
        for table in CONSOLIDATED {
            #[derive(serde::Deserialize, clickhouse::Row)]
            struct Ids {
                ids: Vec<u64>,
            }
            let Ids { ids } = server.query(&format!("SELECT groupUniqArray(seal_id) AS ids FROM {db}.{table}{local}")).fetch_one().await?;
            floor = ids.iter().filter_map(|id| plain.get(id)).fold(floor, |f, &s| f.min(s));
        }
    }
    Ok(Some(floor))
}

/// List every committed consolidation missing from
/// `usage_seal_consolidations` (migration 18): one committed by a binary
/// from before it, or written into `usage_seals` by hand (`bench scale`'s
/// year of seals). A consolidation lists itself before its commit; this is
/// for the others, before a floor is measured.
pub async fn list_consolidations(client: &clickhouse::Client, db: &str) -> Result<(), AggError> {
    client
        .query(&format!(
            "INSERT INTO {db}.usage_seal_consolidations (seal_id, covers) SELECT seal_id, covers FROM {db}.usage_seals \
             WHERE consolidated = 1 AND seal_id GLOBAL NOT IN (SELECT seal_id FROM {db}.usage_seal_consolidations)"
        ))
        .execute()
        .await?;
    Ok(())
}

/// After a swap on a `Replicated` table: one quorum insert into the month,
/// a row that counts for nothing (seal id 0, never committed; sums 0; the
/// key of a row already there).
///
/// Why: a reader with `select_sequential_consistency` (the aggregator's and
/// billing's) refuses a replica that lacks the last part inserted into the
/// month with a quorum, and reads only the blocks up to it (Keeper's
/// `quorum/last_part`). `REPLACE PARTITION` replaces that part by parts
/// with later block numbers and, on 18.16, leaves `last_part` naming it, so
/// such a read of the month fails on both replicas ("Replica doesn't have
/// part ...", code 289) until a quorum insert into the month names a part
/// they have, covering the new blocks. This is that insert.
async fn mark_quorum(shard: &Shard, db: &str, table: &str, month: u32) -> Result<(), AggError> {
    let t = SEAL_TABLES.iter().find(|t| t.name == table).expect("a sealed table");
    let time = t.time();
    shard
        .client
        .clone()
        // the row copied is read as it is, not as of the quorum
        .with_option("select_sequential_consistency", "0")
        .query(&format!(
            "INSERT INTO {db}.{table}_local ({columns}, seal_id) SELECT {group}, 0, 0, 0, toUInt64(0) FROM {db}.{table}_local \
             WHERE toYYYYMM({time}) = {month} LIMIT 1",
            columns = t.columns,
            group = t.group,
        ))
        .execute()
        .await
        .map_err(on_shard(shard, &format!("marking {table} {month}")))
}

/// [`mark_quorum`] for every month of a consolidated table on `shard` that a
/// sequentially consistent read refuses: a run killed between a swap and its
/// mark left it so, and billing's reads fail until it is marked. Every run
/// marks them first. One read of each table finds them: the refusal (code
/// 289) names the part, whose name starts with its month.
async fn mark_quorum_after_a_killed_swap(shard: &Shard, db: &str) -> Result<(), AggError> {
    for table in CONSOLIDATED {
        let mut marked = vec![];
        loop {
            let read = shard.client.query(&format!("SELECT count() FROM {db}.{table}_local")).fetch_one::<u64>().await;
            let e = match read {
                Ok(_) => break,
                Err(clickhouse::error::Error::BadResponse(e)) if e.contains("Code: 289") => e,
                Err(e) => return Err(e.into()),
            };
            let month = refused_month(&e)
                .filter(|m| !marked.contains(m))
                .ok_or_else(|| on_shard(shard, &format!("reading {table}"))(clickhouse::error::Error::BadResponse(e.clone())))?;
            events::ConsolidationSwapMarked { table, month, shard: shard.num }.emit();
            mark_quorum(shard, db, table, month).await?;
            marked.push(month);
        }
    }
    Ok(())
}

/// The month (`YYYYMM`, the partition) of the part that a sequentially
/// consistent read says the replica lacks: "Replica doesn't have part
/// 202610_4_4_0 which was successfully written to quorum ...".
fn refused_month(error: &str) -> Option<u32> {
    let part = error.split("doesn't have part ").nth(1)?;
    part.split('_').next()?.parse().ok()
}

/// The ` ENGINE = ...` clause of a staging table of `local`: none (it is
/// copied with the columns) unless `local` is `Replicated`, whose engine
/// names its Keeper path: the staging table then gets the same engine
/// unreplicated, with the same partitioning and order, which is what
/// `REPLACE PARTITION` needs.
async fn staging_engine(client: &clickhouse::Client, db: &str, local: &str, replicated: bool) -> Result<String, AggError> {
    if !replicated {
        return Ok(String::new());
    }
    let create: String = client.query(&format!("SHOW CREATE TABLE {db}.{local}")).fetch_one().await?;
    unreplicated_engine(&create)
        .map(|engine| format!(" ENGINE = {engine}"))
        .ok_or_else(|| AggError::CorruptState(format!("{db}.{local} is not a Replicated*MergeTree table: {create}")))
}

/// The engine clause of a `CREATE TABLE` statement with a
/// `Replicated*MergeTree('path', 'replica'[, args])` engine, made the
/// same engine without replication: `*MergeTree[(args)]` and what follows
/// (`PARTITION BY`, `ORDER BY`, `SETTINGS`). `None`: not such an engine.
pub(crate) fn unreplicated_engine(create: &str) -> Option<String> {
    let rest = &create[create.find("ENGINE = Replicated")? + "ENGINE = Replicated".len()..];
    let name = runtime::ch::leading_identifier(rest);
    let rest = &rest[name.len()..];
    let Some(args) = rest.strip_prefix('(') else {
        // no arguments: the server's default path
        return Some(format!("{name}{rest}"));
    };
    // the arguments up to the closing parenthesis, outside quotes
    let (mut depth, mut quoted, mut escaped, mut end) = (1, false, false, None);
    let mut commas = vec![];
    for (i, c) in args.char_indices() {
        match (quoted, c) {
            (true, _) if escaped => escaped = false,
            (true, '\\') => escaped = true,
            (true, '\'') => quoted = false,
            (true, _) => {}
            (false, '\'') => quoted = true,
            (false, '(') => depth += 1,
            (false, ')') => {
                depth -= 1;
                if depth == 0 {
                    end = Some(i);
                    break;
                }
            }
            (false, ',') if depth == 1 => commas.push(i),
            _ => {}
        }
    }
    let end = end?;
    let tail = &args[end + 1..];
    // the Keeper path and the replica name are the first two
    Some(match commas.get(1) {
        Some(&second) => format!("{name}({}){tail}", args[second + 1..end].trim()),
        None => format!("{name}{tail}"),
    })
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

/// Drop every staging table of `db` on the server of `client`. Called by
/// every run that takes the seal lock, before it writes anything, on every
/// server a consolidation may stage on ([`drop_staging_everywhere`]): a
/// staging table then left belongs to a run that crashed or whose lock went
/// stale (paused, or slower than `--lock-stale-secs`). Without its staging
/// such a run, resumed, cannot swap a month in over rows sealed after it
/// was staged.
async fn drop_staging(client: &clickhouse::Client, db: &str) -> Result<(), AggError> {
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

/// [`drop_staging`] on every server a consolidation may stage on: the one
/// server, or on a cluster each of `clickhouse.replica_urls` that answers
/// (a seal calls it when it takes the lock).
pub(crate) async fn drop_staging_everywhere(cfg: &ClickHouseConfig, client: &clickhouse::Client, db: &str) -> Result<(), AggError> {
    if matches!(cfg.layout().map_err(|e| AggError::Config(e.to_string()))?, Layout::Single) {
        return drop_staging(client, db).await;
    }
    for url in &cfg.replica_urls {
        let replica = ClickHouseConfig { url: url.clone(), ..cfg.clone() }.client();
        match drop_staging(&replica, db).await {
            Ok(()) => {}
            Err(e) => events::ConsolidationReplicaUnreachable { url, error: &e }.emit(),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{due, refused_month, unreplicated_engine};
    use std::collections::BTreeMap;

    #[test]
    fn a_month_is_due_with_min_seals_seals_or_a_plain_seal_min_seals_old() {
        // plain seals #1..=#9 by id 101..=109; id 7 is a consolidation (#5)
        let plain: BTreeMap<u64, u64> = (1..=9).filter(|&s| s != 5).map(|s| (100 + s, s)).collect();
        // three seals' rows: due with 3, not with 4 while the oldest is recent
        assert!(due(&[108, 109, 7], &plain, 3, 9));
        assert!(!due(&[108, 109, 7], &plain, 4, 9));
        // one late seal's rows, #6: due once it is 3 seals old (#9), not at #8
        assert!(due(&[106], &plain, 3, 9));
        assert!(!due(&[106], &plain, 3, 8));
        // a consolidation's rows alone are never due for their age
        assert!(!due(&[7], &plain, 2, 1_000));
        // an id that is not a plain seal counts as a seal, never for its age
        assert!(!due(&[42], &plain, 2, 1_000));
        assert!(due(&[42, 7], &plain, 2, 9));
    }

    #[test]
    fn the_refused_month_is_read_from_the_part_that_18_16_names() {
        // as 18.16 answers a sequentially consistent read of a swapped month
        let e = "Code: 289, e.displayText() = DB::Exception: Replica doesn't have part 202610_4_4_0 which was successfully \
                 written to quorum of other replicas. Send query to another replica or disable 'select_sequential_consistency' setting.";
        assert_eq!(refused_month(e), Some(202610));
        assert_eq!(refused_month("Code: 289, e.displayText() = DB::Exception: something else"), None);
    }

    #[test]
    fn a_replicated_engine_loses_its_keeper_path_and_replica_and_keeps_the_rest() {
        // as 18.16's SHOW CREATE TABLE prints a sealed table's local table
        let create = "CREATE TABLE mt.usage_by_tracking_daily_sealed_local ( day Date,  tracking_id String,  seal_id UInt64) \
             ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/mt/usage_by_tracking_daily_sealed_local', '{replica}') \
             PARTITION BY toYYYYMM(day) ORDER BY (tracking_id, day) SETTINGS index_granularity = 8192";
        assert_eq!(
            unreplicated_engine(create).as_deref(),
            Some("MergeTree PARTITION BY toYYYYMM(day) ORDER BY (tracking_id, day) SETTINGS index_granularity = 8192")
        );
        // engine arguments after the two, a quote and a comma inside the path, newlines (current versions)
        let create = "CREATE TABLE x.t_local\n(\n    `d` Date\n)\nENGINE = ReplicatedSummingMergeTree('/p/it''s,{shard}', '{replica}', (a, b))\nORDER BY d";
        assert_eq!(unreplicated_engine(create).as_deref(), Some("SummingMergeTree((a, b))\nORDER BY d"));
        let create = "CREATE TABLE x.t (d Date) ENGINE = ReplicatedMergeTree\nORDER BY d";
        assert_eq!(unreplicated_engine(create).as_deref(), Some("MergeTree\nORDER BY d"));
        assert_eq!(unreplicated_engine("CREATE TABLE x.t (d Date) ENGINE = MergeTree ORDER BY d"), None);
        assert_eq!(unreplicated_engine("CREATE TABLE x.t (d Date) ENGINE = ReplicatedMergeTree('/p', '{r}'"), None);
    }
}
