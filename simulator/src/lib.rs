//! # simulator
//!
//! A deterministic media-server simulator for tests, benchmarks and the
//! demo: [`simulate`] generates sessions, reports and faults (duplicates,
//! reordering, late, invalid and poison events) and computes the exact
//! expected totals of what it sends; [`sim_run`] sends them to Kafka (through
//! `ingest::UsageProducer`) or through the HTTP gateway; [`tokens`] admits
//! every viewer through the token service first. The production services do
//! not depend on this crate.

#![warn(missing_docs)]

pub mod sim_run;
pub mod simulate;
pub mod tokens;
