//! Internal events, as Vector writes them: everything a service reports is a
//! struct in that service's `events.rs` catalogue, and its
//! [`emit`](InternalEvent::emit) writes the log line and counts the event in
//! `metering_internal_events_total{event="<Name>"}`. An event's name is a
//! `<Noun><Verb>` in the past tense (`FlushFailed`, `PartitionClaimed`) and
//! is the first word of its log line, so a log search and a metric name the
//! same thing.
//!
//! Every service registers the counter in its registry ([`register`]), so
//! its `/metrics` shows how often each event happened since the start.
//!
//! The events of the shared runtime itself (the rights check, DDL locks,
//! migrations, serving, shutdown) are defined at the end of this module;
//! each service's own are in its `events.rs`.

use prometheus::{IntCounterVec, Opts, Registry};
use std::fmt::{Debug, Display};
use std::sync::LazyLock;
use tracing::{debug, info, warn};

/// The counter's name in `/metrics`.
pub const COUNTER_NAME: &str = "metering_internal_events_total";

static COUNTER: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(Opts::new(COUNTER_NAME, "Internal events emitted since the start, by event name"), &["event"])
        .expect("a valid metric definition")
});

/// A reported event: its name and its log line.
pub trait InternalEvent: Sized {
    /// `<Noun><Verb>`: the log line's first word and the counter's label.
    const NAME: &'static str;

    /// Write the log line (at the level the event deserves), starting with
    /// [`Self::NAME`].
    fn log(&self);

    /// Log the event and count it.
    fn emit(self) {
        self.log();
        COUNTER.with_label_values(&[Self::NAME]).inc();
    }
}

/// Writes the `impl InternalEvent` of an event struct: its name is the
/// struct's, and `log` is the given expression, with the event and its name
/// bound to the two given identifiers:
///
/// ```
/// use runtime::events::InternalEvent;
/// pub struct LockTakenOver<'a> { pub lock: &'a str }
/// runtime::event!(LockTakenOver<'a>, |s, name| tracing::warn!(lock = s.lock, "{name}: taking the lock over"));
/// LockTakenOver { lock: "l" }.emit();
/// ```
#[macro_export]
macro_rules! event {
    ($ty:ident $(<$lt:lifetime>)?, |$s:ident, $name:ident| $log:expr) => {
        impl $(<$lt>)? $crate::events::InternalEvent for $ty $(<$lt>)? {
            const NAME: &'static str = stringify!($ty);
            fn log(&self) {
                let ($s, $name) = (self, <Self as $crate::events::InternalEvent>::NAME);
                $log
            }
        }
    };
}

/// How many times events named `name` were emitted in this process.
pub fn count(name: &str) -> u64 {
    COUNTER.with_label_values(&[name]).get()
}

/// Register the events counter in `registry` (once per registry: a second
/// registration in the same one is an error).
pub fn register(registry: &Registry) -> prometheus::Result<()> {
    registry.register(Box::new(COUNTER.clone()))
}

// ---- the events of the shared runtime (every service emits them) ----

/// The service's ClickHouse user has exactly the rights it needs.
pub struct ClickHouseUserChecked<'a> {
    /// The service that checked its user (`aggregator`, `billing`, `api`).
    pub service: &'a str,
    /// The ClickHouse user's name.
    pub user: &'a dyn Display,
    /// What the service needs of its database ([`crate::rights::Access`]).
    pub access: &'a dyn Debug,
}
event!(ClickHouseUserChecked<'a>, |s, name| info!(service = s.service, user = %s.user, access = ?s.access, "{name}"));

/// The service's ClickHouse user has more rights than it needs (`rights_check = "warn"`).
pub struct ClickHouseUserExcessRights<'a> {
    /// The service that checked its user (`aggregator`, `billing`, `api`).
    pub service: &'a str,
    /// The ClickHouse user's name.
    pub user: &'a dyn Display,
    /// What the service needs of its database ([`crate::rights::Access`]).
    pub access: &'a dyn Debug,
    /// The rights beyond those needs, one sentence each, joined by `; `.
    pub excess: &'a str,
}
event!(ClickHouseUserExcessRights<'a>, |s, name| warn!(
    service = s.service,
    user = %s.user,
    access = ?s.access,
    excess = %s.excess,
    "{name}: this service's ClickHouse user has more rights than it needs; give it its own user (docs/security.md \"ClickHouse users\"), or set clickhouse.rights_check = \"refuse\" to stop instead"
));

/// The rights of the service's ClickHouse user could not be read.
pub struct ClickHouseUserUnchecked<'a> {
    /// The service that checked its user (`aggregator`, `billing`, `api`).
    pub service: &'a str,
    /// The ClickHouse user's name.
    pub user: &'a dyn Display,
    /// Why the check could not run (ClickHouse down, the database not migrated yet, no answer in 10 s).
    pub error: &'a dyn Display,
}
event!(ClickHouseUserUnchecked<'a>, |s, name| warn!(
    service = s.service,
    user = %s.user,
    error = %s.error,
    "{name}: could not check the rights of this service's ClickHouse user"
));

/// A DDL lock older than its staleness limit was taken over.
pub struct LockTakenOver<'a> {
    /// The database that holds the lock table.
    pub database: &'a str,
    /// The lock's table name (e.g. `schema_migrations_lock`).
    pub lock: &'a str,
    /// Seconds since the lock was taken (over its staleness limit, or any age with a limit of 0).
    pub age_secs: u64,
}
event!(LockTakenOver<'a>, |s, name| warn!(
    database = s.database,
    lock = s.lock,
    age_secs = s.age_secs,
    "{name}: its holder did not finish; taking the lock over"
));

/// Waiting for a DDL lock another process holds (every 10 s).
pub struct LockWaiting<'a> {
    /// The database that holds the lock table.
    pub database: &'a str,
    /// The lock's table name (e.g. `schema_migrations_lock`).
    pub lock: &'a str,
    /// Seconds since the other process took the lock.
    pub held_secs: u64,
}
event!(LockWaiting<'a>, |s, name| info!(database = s.database, lock = s.lock, held_secs = s.held_secs, "{name}: another process holds it"));

/// A DDL lock could not be released: the next holder takes it over once stale.
pub struct LockNotReleased<'a> {
    /// The database that holds the lock table.
    pub database: &'a str,
    /// The lock's table name (e.g. `schema_migrations_lock`).
    pub lock: &'a str,
    /// ClickHouse's error for the `DROP TABLE` of the lock.
    pub error: &'a dyn Display,
}
event!(LockNotReleased<'a>, |s, name| warn!(
    database = s.database,
    lock = s.lock,
    error = %s.error,
    "{name}: the next holder takes it over once stale"
));

/// A statement of an interrupted migration had already taken effect: skipped.
pub struct MigrationStatementAlreadyApplied {
    /// The migration's version.
    pub version: u32,
    /// The statement's position in the migration, 1-based.
    pub statement: usize,
}
event!(MigrationStatementAlreadyApplied, |s, name| info!(version = s.version, statement = s.statement, "{name}"));

/// A distributed statement timed out at the initiator but took effect.
pub struct MigrationStatementTimedOutButApplied<'a> {
    /// The migration's version.
    pub version: u32,
    /// The statement's position in the migration, 1-based.
    pub statement: usize,
    /// The initiator's error (code 159: the distributed DDL timed out).
    pub error: &'a dyn Display,
}
event!(MigrationStatementTimedOutButApplied<'a>, |s, name| warn!(
    version = s.version,
    statement = s.statement,
    error = %s.error,
    "{name}"
));

/// A migration was applied and recorded.
pub struct MigrationApplied<'a> {
    /// The migration's version.
    pub version: u32,
    /// The migration's name (e.g. `contract_tables`).
    pub name: &'a str,
}
event!(MigrationApplied<'a>, |s, event| info!(version = s.version, name = s.name, "{event}"));

/// Accepting a connection failed (e.g. too many open files): retried after 100 ms.
pub struct AcceptFailed<'a> {
    /// The error of `accept` (e.g. too many open files).
    pub error: &'a dyn Display,
}
event!(AcceptFailed<'a>, |s, name| warn!(error = %s.error, "{name}: accept failed"));

/// A connection ended with an error (the client went away, a timeout).
pub struct ConnectionFailed<'a> {
    /// hyper's error for the connection.
    pub error: &'a dyn Display,
}
event!(ConnectionFailed<'a>, |s, name| debug!(error = %s.error, "{name}: connection ended with an error"));

/// SIGTERM or SIGINT arrived: the service stops.
pub struct ShutdownRequested;
event!(ShutdownRequested, |_s, name| info!("{name}"));

#[cfg(test)]
mod tests {
    use super::*;

    struct ThingDone {
        n: u32,
    }

    impl InternalEvent for ThingDone {
        const NAME: &'static str = "ThingDone";
        fn log(&self) {
            tracing::info!(n = self.n, "{}", Self::NAME);
        }
    }

    #[test]
    fn an_emitted_event_is_counted_and_shows_in_the_registry() {
        let registry = Registry::new();
        register(&registry).unwrap();
        let before = count("ThingDone");
        ThingDone { n: 1 }.emit();
        ThingDone { n: 2 }.emit();
        assert_eq!(count("ThingDone"), before + 2);
        let text = crate::ops::render(&registry).unwrap();
        let line = format!("{COUNTER_NAME}{{event=\"ThingDone\"}} {}", before + 2);
        assert!(text.contains(&line), "{line} in\n{text}");
        // a second service registry in the same process (the tests run several) also shows it
        let other = Registry::new();
        register(&other).unwrap();
        assert!(crate::ops::render(&other).unwrap().contains(&line));
        assert!(register(&other).is_err(), "twice in one registry");
    }
}
