//! The schema on a sharded (and by default replicated) cluster.
//!
//! The migration files describe the single-server layout. With
//! `clickhouse.cluster` set, each statement is read into a `Statement`
//! (what it creates, drops, renames or alters) and rendered for the
//! `Target`: every table `T` becomes a local table `T_local`
//! (`Replicated*MergeTree`, or the plain engine when `replicated` is off) on
//! every server, plus a `Distributed` table `T` over the cluster under the
//! contract name, so readers and writers keep using `T`. Materialized views
//! read and write the local tables on each shard; plain views read the
//! `Distributed` tables. The aggregator's tables are sharded by source Kafka
//! partition ([`sharding_key`]), so one partition's rows of an insert land on
//! one shard in one part, which keeps its exactly-once design (see
//! `aggregator/src/lib.rs`) per partition. Inserts go through the
//! `Distributed` tables synchronously (`insert_distributed_sync`).

use runtime::ch::{leading_identifier, Layout};
use runtime::migrate::Migration;

/// A single-server migration statement, as far as its cluster rendering
/// depends on it. Names are without the `{db}.` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Statement<'a> {
    /// `CREATE TABLE IF NOT EXISTS db.name <columns>ENGINE = <engine>(<args>)<tail>`
    /// (`columns` keeps its text up to `ENGINE = `; `args` is empty for an
    /// engine without arguments).
    CreateTable { name: &'a str, columns: &'a str, engine: &'a str, args: &'a str, tail: &'a str },
    /// `CREATE VIEW IF NOT EXISTS db.name<rest>`.
    CreateView { name: &'a str, rest: &'a str },
    /// `CREATE MATERIALIZED VIEW IF NOT EXISTS db.name<body>`, the body
    /// naming its target (`TO db.t`) and its source (`FROM db.s`).
    CreateMaterializedView { name: &'a str, body: &'a str },
    /// `DROP TABLE IF EXISTS db.name` (a table or a view).
    Drop { name: &'a str },
    /// `RENAME TABLE db.from TO db.to`.
    Rename { from: &'a str, to: &'a str },
    /// `ALTER TABLE db.name<change>`.
    Alter { name: &'a str, change: &'a str },
    /// Anything else (inserts, ...): the same on every layout.
    Other(&'a str),
}

impl<'a> Statement<'a> {
    /// Read a statement of database `db`.
    pub fn parse(stmt: &'a str, db: &str) -> Statement<'a> {
        let after = |prefix: &str| stmt.strip_prefix(&format!("{prefix} {db}."));
        if let Some(rest) = after("CREATE VIEW IF NOT EXISTS") {
            let name = leading_identifier(rest);
            return Statement::CreateView { name, rest: &rest[name.len()..] };
        }
        if let Some(rest) = after("DROP TABLE IF EXISTS") {
            return Statement::Drop { name: leading_identifier(rest) };
        }
        if let Some(rest) = after("RENAME TABLE") {
            let from = leading_identifier(rest);
            let to = rest[from.len()..].trim_start().strip_prefix("TO ").and_then(|r| r.trim_start().strip_prefix(&format!("{db}.")));
            return match to {
                Some(to) => Statement::Rename { from, to: leading_identifier(to) },
                None => Statement::Other(stmt),
            };
        }
        if let Some(rest) = after("ALTER TABLE") {
            let name = leading_identifier(rest);
            return Statement::Alter { name, change: &rest[name.len()..] };
        }
        if let Some(rest) = after("CREATE MATERIALIZED VIEW IF NOT EXISTS") {
            let name = leading_identifier(rest);
            return Statement::CreateMaterializedView { name, body: &rest[name.len()..] };
        }
        if let Some(rest) = after("CREATE TABLE IF NOT EXISTS") {
            let name = leading_identifier(rest);
            let body = &rest[name.len()..];
            let Some(at) = body.find("ENGINE = ") else { return Statement::Other(stmt) };
            let engine_text = &body[at + "ENGINE = ".len()..];
            let engine = leading_identifier(engine_text);
            let after_name = &engine_text[engine.len()..];
            let (args, tail) = match balanced(after_name) {
                Some(end) => (&after_name[1..end - 1], &after_name[end..]),
                None => ("", after_name),
            };
            return Statement::CreateTable { name, columns: &body[..at], engine, args, tail };
        }
        Statement::Other(stmt)
    }
}

/// The length of the balanced `( ... )` that `s` starts with, if it starts with one.
fn balanced(s: &str) -> Option<usize> {
    if !s.starts_with('(') {
        return None;
    }
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    Some(s.len())
}

/// Column that shards a table across a cluster: the aggregator's tables by
/// source partition (one partition's rows of an insert on one shard), the rest
/// at random (written by materialized views on each shard, or small).
pub fn sharding_key(table: &str) -> &'static str {
    match table {
        "usage_by_tracking"
        | "usage_by_viewer"
        | "usage_dead_letters"
        | "usage_by_tracking_log"
        | "usage_by_viewer_log"
        | "usage_by_tracking_log_legacy"
        | "usage_by_viewer_log_legacy"
        | "usage_dead_letters_log" => "src_partition",
        "aggregator_checkpoints" | "aggregator_dedup" | "aggregator_claims" => "partition",
        // a partner's ledger on one shard
        "billing_ledger" | "billing_adjustments" => "cityHash64(partner_id)",
        _ => "rand()",
    }
}

/// Where a migration is rendered: the database on a cluster, whether its
/// tables are replicated and its DDL distributed (`ON CLUSTER`), and the
/// migration's version (it names the Keeper paths from migration 10 on).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target<'a> {
    pub db: &'a str,
    pub cluster: &'a str,
    pub replicated: bool,
    pub on_cluster: bool,
    pub version: u32,
}

impl Target<'_> {
    fn on(&self) -> String {
        if self.on_cluster {
            format!(" ON CLUSTER {}", self.cluster)
        } else {
            String::new()
        }
    }

    /// The `Distributed` table `name` over its local tables.
    fn distributed(&self, name: &str) -> String {
        let (db, cluster, on) = (self.db, self.cluster, self.on());
        format!(
            "CREATE TABLE IF NOT EXISTS {db}.{name}{on} AS {db}.{name}_local ENGINE = Distributed({cluster}, {db}, {name}_local, {})",
            sharding_key(name)
        )
    }

    /// The local table's engine: replicated under a Keeper path of its own.
    fn local_engine(&self, local: &str, engine: &str, args: &str) -> String {
        if !self.replicated {
            return if args.is_empty() { engine.to_string() } else { format!("{engine}({args})") };
        }
        // a table renamed keeps its Keeper path: from migration 10 on (which
        // renames the log tables and creates new ones under their names) the
        // path names the migration too, so it is never taken
        let db = self.db;
        let path = if self.version >= 10 {
            format!("'/clickhouse/tables/{{shard}}/{db}/{local}_m{}', '{{replica}}'", self.version)
        } else {
            format!("'/clickhouse/tables/{{shard}}/{db}/{local}', '{{replica}}'")
        };
        let args = if args.is_empty() { path } else { format!("{path}, {args}") };
        format!("Replicated{engine}({args})")
    }

    /// The statements that do `stmt` on the cluster.
    pub fn render(&self, stmt: &str) -> Vec<String> {
        let (db, on) = (self.db, self.on());
        match Statement::parse(stmt, db) {
            // plain views read the Distributed tables: one per server
            Statement::CreateView { name, rest } => vec![format!("CREATE VIEW IF NOT EXISTS {db}.{name}{on}{rest}")],
            // a table is a local table and its Distributed table; a view has no local twin
            Statement::Drop { name } => {
                vec![format!("DROP TABLE IF EXISTS {db}.{name}{on}"), format!("DROP TABLE IF EXISTS {db}.{name}_local{on}")]
            }
            // rename the local tables; the Distributed table names its local table, so make it anew
            Statement::Rename { from, to } => vec![
                format!("RENAME TABLE {db}.{from}_local TO {db}.{to}_local{on}"),
                format!("DROP TABLE IF EXISTS {db}.{from}{on}"),
                self.distributed(to),
            ],
            // the local tables change; the Distributed table (which holds no
            // rows: inserts are synchronous) is made anew over them.
            // (Distributed DDL refuses an ALTER of a table that is not
            // replicated on a cluster whose shards have replicas; an ALTER of
            // a Replicated table returns once every replica applied it, so
            // the new table sees the columns.)
            Statement::Alter { name, change } => vec![
                format!("ALTER TABLE {db}.{name}_local{on}{change}"),
                format!("DROP TABLE IF EXISTS {db}.{name}{on}"),
                self.distributed(name),
            ],
            Statement::CreateTable { name, columns, engine, args, tail } => {
                let local = format!("{name}_local");
                let engine = self.local_engine(&local, engine, args);
                vec![format!("CREATE TABLE IF NOT EXISTS {db}.{local}{on}{columns}ENGINE = {engine}{tail}"), self.distributed(name)]
            }
            // a view per shard, from the local source into the local target
            Statement::CreateMaterializedView { name, body } => {
                let mut body = body.to_string();
                for kw in ["TO ", "FROM "] {
                    let pat = format!("{kw}{db}.");
                    let at = body.match_indices(&pat).map(|(i, _)| i).find(|&i| i > 0 && body[..i].ends_with(char::is_whitespace));
                    if let Some(i) = at {
                        let t = leading_identifier(&body[i + pat.len()..]).to_string();
                        body.replace_range(i..i + pat.len() + t.len(), &format!("{pat}{t}_local"));
                    }
                }
                vec![format!("CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{name}{on}{body}")]
            }
            Statement::Other(s) => vec![s.to_string()],
        }
    }
}

/// The statements of migration `m` for `layout`, `{db}` replaced by `db`
/// (the runner's [`runtime::migrate::Schema::render`]).
pub fn render(m: &Migration, db: &str, layout: &Layout) -> Vec<String> {
    match layout {
        Layout::Single => m.statements(db),
        Layout::Cluster { cluster, replicated, on_cluster } => {
            let target = Target { db, cluster, replicated: *replicated, on_cluster: *on_cluster, version: m.version };
            m.statements(db).iter().flat_map(|s| target.render(s)).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_read_into_what_they_create_drop_rename_or_alter() {
        let t =
            Statement::parse("CREATE TABLE IF NOT EXISTS db.t (a UInt8, b String)\nENGINE = SummingMergeTree((a, b))\nORDER BY a", "db");
        assert_eq!(
            t,
            Statement::CreateTable {
                name: "t",
                columns: " (a UInt8, b String)\n",
                engine: "SummingMergeTree",
                args: "(a, b)",
                tail: "\nORDER BY a"
            }
        );
        let plain = Statement::parse("CREATE TABLE IF NOT EXISTS db.m (x UInt8) ENGINE = MergeTree ORDER BY x", "db");
        assert!(matches!(plain, Statement::CreateTable { engine: "MergeTree", args: "", tail: " ORDER BY x", .. }), "{plain:?}");
        assert_eq!(Statement::parse("RENAME TABLE db.a TO db.b_2", "db"), Statement::Rename { from: "a", to: "b_2" });
        assert_eq!(
            Statement::parse("ALTER TABLE db.a ADD COLUMN c UInt8", "db"),
            Statement::Alter { name: "a", change: " ADD COLUMN c UInt8" }
        );
        assert_eq!(Statement::parse("DROP TABLE IF EXISTS db.v", "db"), Statement::Drop { name: "v" });
        // another database's statement, or one without an engine, is left as it is
        assert_eq!(Statement::parse("DROP TABLE IF EXISTS other.v", "db"), Statement::Other("DROP TABLE IF EXISTS other.v"));
        let insert = "INSERT INTO db.t SELECT 1";
        assert_eq!(Target { db: "db", cluster: "c", replicated: true, on_cluster: true, version: 1 }.render(insert), [insert]);
    }
}
