//! The end-to-end suites, one module each, in one test binary (as
//! clickhouse-rs keeps its integration tests): the workspace is linked once
//! for all of them. Every test runs against the real local stack
//! (`scripts/stack up`; `scripts/test` starts it) and takes its turn at it
//! through `e2e::turns`: shared by default, alone for the two suites that
//! stop a server everyone uses (`aggregator_outage` stops ClickHouse,
//! `ingest_broker_down` the broker).
//!
//! One suite: `cargo test -p metering-tests --test it exactly_once::`.

mod aggregator_crash;
mod aggregator_exact;
mod aggregator_outage;
mod billing_e2e;
mod billing_ledger;
mod clickhouse_conformance;
mod clickhouse_front;
mod cluster_replicated;
mod console_browser;
mod dead_letter_replay;
mod entitlements;
mod exactly_once;
mod foundation;
mod ingest_broker_down;
mod ingest_gateway;
mod migrations_interrupted;
mod records_sessions;
mod stats_api;
mod tokens_e2e;
mod tokens_pipeline;
