//! ClickHouse connection settings, errors, the table layout, seals, and the
//! DDL lock. The migration runner that uses them is [`crate::migrate`].

use crate::events::{self, InternalEvent};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Where and how to reach ClickHouse (HTTP interface).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClickHouseConfig {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// User name.
    pub user: String,
    /// Password (empty for none).
    pub password: String,
    /// Database that holds the metering tables.
    pub database: String,
    /// Cluster layout: the cluster's name in the servers' `remote_servers`.
    /// Empty (the default): one server, plain `MergeTree` tables.
    pub cluster: String,
    /// With `cluster`: local tables are `Replicated*MergeTree` (needs
    /// ClickHouse Keeper or ZooKeeper and the `{shard}`/`{replica}` macros).
    /// Off: plain engines on each shard (sharded, not replicated).
    pub replicated: bool,
    /// With `cluster`: run the DDL `ON CLUSTER` (distributed DDL, needs
    /// Keeper). Off: `migrate` creates the tables on the server it talks to
    /// only; run it against every server.
    pub on_cluster: bool,
    /// With `cluster` and `replicated`: every insert of the aggregator and
    /// billing waits until this many replicas of its shard have it
    /// (`insert_quorum`), and their reads see every such insert or fail
    /// (`select_sequential_consistency`), so that a claim never decides on a
    /// lagging replica and a claim row is never lost with one replica.
    /// 0: neither (not recommended).
    pub insert_quorum: u32,
    /// With `cluster`: the HTTP address of every server of the cluster, or
    /// of at least one replica of every shard, for the work that runs on
    /// each shard's own tables (the consolidation of `aggregator seal`: a
    /// shard's sealed rows are rewritten from that shard's rows, on that
    /// shard). Each server tells which shard it is (`system.clusters`).
    /// Empty (the default): consolidation is skipped on a cluster.
    pub replica_urls: Vec<String>,
    /// What a service does at start when its user has more rights than it
    /// needs ([`crate::rights`]): `warn` (the default) logs
    /// `ClickHouseUserExcessRights`, `refuse` stops the service, `off` skips
    /// the check (`migrate`, which needs an administrator, never checks).
    pub rights_check: RightsCheck,
}

/// See [`ClickHouseConfig::rights_check`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RightsCheck {
    /// Log `ClickHouseUserExcessRights` (or `ClickHouseUserUnchecked`) and start all the same.
    #[default]
    Warn,
    /// Refuse to start: [`ChError::ExcessRights`], or the error of a check that could not run.
    Refuse,
    /// Do not check.
    Off,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            user: "default".into(),
            password: String::new(),
            database: "metering".into(),
            cluster: String::new(),
            replicated: true,
            on_cluster: true,
            insert_quorum: 2,
            replica_urls: Vec::new(),
            rights_check: RightsCheck::Warn,
        }
    }
}

/// `client` with its GROUP BY spilling to disk past 1 GB
/// (`max_bytes_before_external_group_by`) instead of failing on the
/// server's memory limit: for the queries that group a whole month or more
/// of rows by every key (a seal; billing's reconciliation with `--recount`,
/// which reads the minute views whole).
pub fn spilling(client: clickhouse::Client) -> clickhouse::Client {
    client.with_option("max_bytes_before_external_group_by", "1000000000")
}

/// `client` with a reader's filters pushed down into the views' subqueries
/// (`enable_optimize_predicate_expression = 1`), so that one key's or one
/// period's question reads that key's or that period's rows of the sealed
/// tables and of the log, not every row. It is the default of current
/// versions; 18.16's is 0, under which one tracking id's series scanned
/// every row (`bench scale`). Every reader of the views sets it here rather
/// than leave it to the server's configuration.
pub fn predicates_pushed(client: clickhouse::Client) -> clickhouse::Client {
    client.with_option("enable_optimize_predicate_expression", "1")
}

/// Errors of the ClickHouse helpers.
#[derive(Debug, Error)]
pub enum ChError {
    /// A query failed, or ClickHouse could not be reached.
    #[error("ClickHouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    /// A database, cluster or lock name that is not a plain identifier ([`check_identifier`]); holds it.
    #[error("invalid database name {0:?}: use letters, digits and '_' only")]
    BadIdentifier(String),
    /// An applied migration's file was edited since: never edit one, add a new migration.
    #[error("migration {version} ({name}) was applied with checksum {applied} but the file now has {current}; never edit an applied migration, add a new one")]
    ChecksumMismatch {
        /// The migration's version.
        version: u32,
        /// The migration's name.
        name: String,
        /// The checksum recorded in `schema_migrations` when it was applied.
        applied: String,
        /// The checksum of the file in this build.
        current: String,
    },
    /// A test stopped the migrations on purpose ([`crate::migrate::migrate_interrupted`]), as a crash there would.
    #[error("migration {version} interrupted before statement {index} (on purpose, by a test)")]
    Interrupted {
        /// The migration it stopped in.
        version: u32,
        /// The statement it stopped before, 1-based; one past the last: before the migration is recorded.
        index: usize,
    },
    /// `SELECT version()` answered text that is not `MAJOR.MINOR...`; holds it.
    #[error("ClickHouse answered version {0:?}, which is not MAJOR.MINOR...")]
    Version(String),
    /// A statement of a migration failed; once its cause is fixed, running the migrations again finishes the run.
    #[error("migration {version} ({name}), statement {index}: {source}")]
    Statement {
        /// The migration's version.
        version: u32,
        /// The migration's name.
        name: String,
        /// The failed statement's position in the migration, 1-based.
        index: usize,
        /// ClickHouse's error.
        source: clickhouse::error::Error,
    },
    /// ClickHouse did not answer in time: retry later.
    #[error("ClickHouse did not answer {0} in time")]
    Timeout(&'static str),
    /// The service's user has rights it does not need and
    /// `rights_check = "refuse"`: give the service its own user.
    #[error("ClickHouse user {user:?} has more rights than this service needs: {detail} (docs/security.md \"ClickHouse users\")")]
    ExcessRights {
        /// The ClickHouse user's name.
        user: String,
        /// What it can do beyond the service's needs, one sentence each, joined by `; `.
        detail: String,
    },
    /// Stored state that cannot be read back: stop, do not guess.
    #[error("corrupt state in {table}: {detail}")]
    Corrupt {
        /// The table that holds it.
        table: &'static str,
        /// What is wrong, and what to do about it.
        detail: String,
    },
}

/// A Kafka partition as the seals name it: `(topic, partition)`.
pub type PartitionKey = (String, u32);

/// The latest committed seal (migration 9, `aggregator::seal`): its sequence
/// number and, per partition, the offset up to which the log is sealed
/// (empty and 0 before the first seal); since migration 10 also its time
/// bound and whether the legacy log tables are drained.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sealed {
    /// The seal's sequence number; 0 before the first seal.
    pub seq: u64,
    /// Per partition, the checkpoint position up to which its log rows are sealed; empty before the first seal.
    pub sealed_to: std::collections::BTreeMap<PartitionKey, u64>,
    /// No row of the tail was inserted before this time (Unix seconds; 0:
    /// no bound): the tails read the log from its hour on.
    pub tail_since: u32,
    /// A seal found no row of the legacy log tables above its offsets: the
    /// tails no longer read them.
    pub legacy_drained: bool,
}

impl Sealed {
    /// The rows of the log table `log` (`usage_by_tracking_log` or
    /// `usage_by_viewer_log`) that a reader above this seal must consider,
    /// as a parenthesised subquery of `columns`: [`Sealed::recent_log`], and
    /// the `_legacy` twin unless drained. [`Sealed::default`] gives every row.
    pub fn log_source(&self, db: &str, log: &str, columns: &str) -> String {
        let recent = self.recent_log(db, log, columns);
        if self.legacy_drained {
            format!("({recent})")
        } else {
            format!("({recent} UNION ALL SELECT {columns} FROM {db}.{log}_legacy)")
        }
    }

    /// `SELECT columns` of `log` from the hour of `tail_since` on (its
    /// primary key), without the legacy twin.
    pub fn recent_log(&self, db: &str, log: &str, columns: &str) -> String {
        format!(
            "SELECT {columns} FROM {db}.{log} PREWHERE toStartOfHour(inserted_at) >= toStartOfHour(toDateTime({}, 'UTC'))",
            self.tail_since
        )
    }
}

/// Read the latest committed seal of `db`.
pub async fn latest_seal(client: &clickhouse::Client, db: &str) -> Result<Sealed, ChError> {
    // the rows of the largest number only (its primary key; a year of seals
    // is 10^5 rows of arrays, see migration 11)
    Ok(seal_rows(client, db, &format!("GLOBAL IN (SELECT max(seq) FROM {db}.usage_seals)")).await?.unwrap_or_default())
}

/// Read the committed seal number `seq` of `db` (`None`: no such seal).
pub async fn seal_at(client: &clickhouse::Client, db: &str, seq: u64) -> Result<Option<Sealed>, ChError> {
    seal_rows(client, db, &format!("= {seq}")).await
}

/// The seal whose `seq` matches `condition` (SQL after `seq`), refusing a
/// number committed twice.
async fn seal_rows(client: &clickhouse::Client, db: &str, condition: &str) -> Result<Option<Sealed>, ChError> {
    #[derive(serde::Deserialize, clickhouse::Row)]
    struct SealRow {
        seq: u64,
        topics: Vec<String>,
        partitions: Vec<u32>,
        sealed_to: Vec<u64>,
        tail_since: u32,
        legacy_drained: u8,
    }
    let mut rows: Vec<SealRow> = client
        .query(&format!(
            "SELECT seq, topics, partitions, sealed_to, toUInt32(tail_since), legacy_drained FROM {db}.usage_seals \
             PREWHERE seq {condition} ORDER BY seal_id DESC LIMIT 2"
        ))
        .fetch_all()
        .await?;
    // each commit is conditional on the number before it (seal.rs): two
    // commits of one number mean two of them ran at the same instant, and
    // every reader would count both; stop rather than build on either
    if rows.len() == 2 && rows[0].seq == rows[1].seq {
        return Err(ChError::Corrupt {
            table: "usage_seals",
            detail: format!("two seals committed as #{}; delete one of them (docs/clickhouse.md \"Sealed aggregates\")", rows[0].seq),
        });
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let r = rows.swap_remove(0);
    if r.topics.len() != r.partitions.len() || r.topics.len() != r.sealed_to.len() {
        return Err(ChError::Corrupt { table: "usage_seals", detail: format!("seal {} has arrays of different lengths", r.seq) });
    }
    let sealed_to = r.topics.into_iter().zip(r.partitions).zip(r.sealed_to).collect();
    // every seal carries `legacy_drained` forward once set (seal.rs)
    Ok(Some(Sealed { seq: r.seq, sealed_to, tail_since: r.tail_since, legacy_drained: r.legacy_drained == 1 }))
}

/// Check that `name` is a plain identifier, safe to put into SQL unquoted.
pub fn check_identifier(name: &str) -> Result<&str, ChError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(name)
    } else {
        Err(ChError::BadIdentifier(name.to_string()))
    }
}

impl ClickHouseConfig {
    /// A client bound to [`ClickHouseConfig::database`].
    ///
    /// Compression is off and row validation disabled: both are required by
    /// ClickHouse 18.16 (with LZ4 a SELECT silently returns no rows; the
    /// validation needs `RowBinaryWithNamesAndTypes`) and cost little on loopback.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    /// A client not bound to a database (for `CREATE DATABASE`).
    pub fn server_client(&self) -> clickhouse::Client {
        let mut c = clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_compression(clickhouse::Compression::None)
            .with_validation(false);
        if !self.cluster.is_empty() {
            // an insert into a Distributed table returns once every shard has its rows
            c = c.with_option("insert_distributed_sync", "1");
        }
        if !self.password.is_empty() {
            c = c.with_password(&self.password);
        }
        c
    }

    /// A client bound to [`ClickHouseConfig::database`] for writers whose
    /// exactly-once design needs every INSERT to be one synchronous part,
    /// visible when it returns (the aggregator, billing): on servers that know
    /// `async_insert` (21.11 and later; on by default since 26.2) it is sent
    /// as `0` with every query; older servers refuse the unknown setting, so
    /// they get nothing. The version is read once, here.
    ///
    /// On a replicated cluster it also sets the quorum of
    /// [`ClickHouseConfig::insert_quorum`] for inserts and sequential
    /// consistency for reads.
    pub async fn writer_client(&self) -> Result<clickhouse::Client, ChError> {
        let mut client = self.client();
        let version = server_version(&self.server_client()).await?;
        if version.knows_async_insert() {
            client = client.with_option("async_insert", "0");
        }
        if matches!(self.layout()?, Layout::Cluster { replicated: true, .. }) && self.insert_quorum > 0 {
            client = client
                .with_option("insert_quorum", self.insert_quorum.to_string())
                // a quorum that cannot be reached fails the insert in 30 s, not 10 min
                .with_option("insert_quorum_timeout", "30000")
                .with_option("select_sequential_consistency", "1");
        }
        Ok(client)
    }

    /// The database name, checked to be a plain identifier.
    pub fn db(&self) -> Result<&str, ChError> {
        check_identifier(&self.database)
    }

    /// ` ON CLUSTER c` for DDL that every server must run (a cluster whose
    /// DDL is distributed), else empty.
    pub fn ddl_on(&self) -> Result<String, ChError> {
        Ok(match self.layout()? {
            Layout::Cluster { cluster, on_cluster: true, .. } => format!(" ON CLUSTER {cluster}"),
            _ => String::new(),
        })
    }

    /// `db.table` as an `ALTER` (a mutation, `DROP PARTITION`) must name
    /// it: on a cluster the local table, `ON CLUSTER` when the DDL is
    /// distributed (`Distributed` tables take neither).
    pub fn alter_target(&self, table: &str) -> Result<String, ChError> {
        let db = self.db()?;
        Ok(match self.layout()? {
            Layout::Single => format!("{db}.{table}"),
            Layout::Cluster { .. } => format!("{db}.{table}_local{}", self.ddl_on()?),
        })
    }

    /// The table layout these settings select.
    pub fn layout(&self) -> Result<Layout, ChError> {
        if self.cluster.is_empty() {
            return Ok(Layout::Single);
        }
        check_identifier(&self.cluster)?;
        Ok(Layout::Cluster { cluster: self.cluster.clone(), replicated: self.replicated, on_cluster: self.on_cluster })
    }
}

/// A ClickHouse server's version, as `SELECT version()` answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServerVersion {
    /// The first number, e.g. 18 of `18.16.1`.
    pub major: u32,
    /// The second number, e.g. 16 of `18.16.1`.
    pub minor: u32,
}

impl ServerVersion {
    /// Parse `MAJOR.MINOR[.anything]`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some(ServerVersion { major, minor })
    }

    /// Whether the server has the `async_insert` setting (added in 21.11).
    pub fn knows_async_insert(&self) -> bool {
        *self >= ServerVersion { major: 21, minor: 11 }
    }
}

/// The server's version (`SELECT version()`).
pub async fn server_version(client: &clickhouse::Client) -> Result<ServerVersion, ChError> {
    let text: String = client.query("SELECT version()").fetch_one().await?;
    ServerVersion::parse(&text).ok_or(ChError::Version(text))
}

/// How the tables are laid out (see [`crate::migrate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// One server: every table under its contract name (`clickhouse.cluster` empty).
    Single,
    /// A sharded cluster: each table a local `T_local` on every server and a `Distributed` table `T` over them.
    Cluster {
        /// The cluster's name in the servers' `remote_servers`; a plain identifier.
        cluster: String,
        /// The local tables are `Replicated*MergeTree` (needs ClickHouse Keeper or ZooKeeper).
        replicated: bool,
        /// The DDL runs `ON CLUSTER` (distributed DDL); off: on the server it is sent to only.
        on_cluster: bool,
    },
}

/// The identifier at the start of `rest` (a table or column name after
/// `{db}.` or a keyword).
pub fn leading_identifier(rest: &str) -> &str {
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
    &rest[..end]
}

/// What [`ddl_lock`] does when another process holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Wait for it (logging every 10 s).
    Wait,
    /// Return `Ok(false)` at once.
    Fail,
}

/// Take the lock `{db}.{name}`: a table created without `IF NOT EXISTS`,
/// which exactly one creator gets (on a cluster `on` is ` ON CLUSTER c`: the
/// distributed DDL queue orders the creators, so exactly one succeeds on
/// every server). Returns `Ok(true)` once taken; when it is held, waits or
/// returns `Ok(false)` as `wait` says. A lock older than `stale_secs` (its
/// holder crashed) is taken over; with `stale_secs` 0, at once. Release it with [`ddl_unlock`].
pub async fn ddl_lock(
    server: &clickhouse::Client,
    db: &str,
    name: &str,
    on: &str,
    stale_secs: u64,
    wait: LockWait,
) -> Result<bool, ChError> {
    check_identifier(name)?;
    let mut waited_log = std::time::Instant::now();
    loop {
        let created = server.query(&format!("CREATE TABLE {db}.{name}{on} (holder UInt8) ENGINE = Memory")).execute().await;
        let Err(e) = created else { return Ok(true) };
        let text = e.to_string();
        if !(text.contains("Code: 57") || text.contains("already exists")) {
            return Err(e.into());
        }
        let age: u64 = server
            .query(
                "SELECT toUInt64(greatest(toInt64(toUInt32(now())) - toInt64(toUInt32(metadata_modification_time)), 0)) \
                 FROM system.tables WHERE database = ? AND name = ?",
            )
            .bind(db)
            .bind(name)
            .fetch_optional()
            .await?
            .unwrap_or(0);
        if stale_secs == 0 || age > stale_secs {
            events::LockTakenOver { database: db, lock: name, age_secs: age }.emit();
            ddl_unlock(server, db, name, on).await;
            continue;
        }
        if wait == LockWait::Fail {
            return Ok(false);
        }
        if waited_log.elapsed() > std::time::Duration::from_secs(10) {
            events::LockWaiting { database: db, lock: name, held_secs: age }.emit();
            waited_log = std::time::Instant::now();
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
}

/// Release a lock taken with [`ddl_lock`] (a failure is logged: the lock
/// goes stale and is taken over).
pub async fn ddl_unlock(server: &clickhouse::Client, db: &str, name: &str, on: &str) {
    if let Err(e) = server.query(&format!("DROP TABLE IF EXISTS {db}.{name}{on}")).execute().await {
        events::LockNotReleased { database: db, lock: name, error: &e }.emit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_know_async_insert_from_21_11() {
        let v = |t| ServerVersion::parse(t).unwrap_or_else(|| panic!("{t}"));
        assert!(!v("18.16.1").knows_async_insert());
        assert!(!v("21.10.6.2").knows_async_insert());
        assert!(v("21.11.1").knows_async_insert());
        assert!(v("24.8.14.39").knows_async_insert());
        assert!(v("26.9.2.1").knows_async_insert());
        assert_eq!(ServerVersion::parse("x.1"), None);
        assert_eq!(ServerVersion::parse("26"), None);
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("metering").is_ok());
        assert!(check_identifier("metering_test_12").is_ok());
        for bad in ["", "a-b", "a;DROP", "1abc", "a b", "`x`"] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }
}
