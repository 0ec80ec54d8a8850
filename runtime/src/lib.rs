//! The runtime every service shares: ClickHouse client and the migration
//! runner ([`ch`]; the schema itself is the `warehouse` crate's), Kafka settings ([`kafka`]), configuration
//! loading ([`config`]), tracing ([`telemetry`]), bearer credentials
//! ([`auth`]), HTTP serving with slow-client limits ([`serve`]), cached
//! health probes ([`health`]), the check of a service's ClickHouse user
//! ([`rights`]), CSV cells ([`csv`]), internal events that log and count
//! ([`events`]), the test hooks ([`fault`], only with
//! the `fault-injection` feature) and the shutdown signal
//! ([`shutdown_signal`]). The contract itself (event, codec, validation) is
//! the `schemas` crate.

#![warn(missing_docs)]

pub mod auth;
pub mod ch;
pub mod config;
pub mod csv;
pub mod events;
pub mod fault;
pub mod health;
pub mod kafka;
pub mod migrate;
pub mod ops;
pub mod rights;
pub mod serve;
pub mod telemetry;

/// Resolves on SIGTERM or SIGINT (Ctrl-C): what every service stops on.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! { _ = term.recv() => {}, _ = tokio::signal::ctrl_c() => {} }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    events::InternalEvent::emit(events::ShutdownRequested);
}
