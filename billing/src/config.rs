//! Settings of `billing`: a TOML file plus `BILLING__...` environment
//! overrides (see [`runtime::config::load`]).

use runtime::ch::ClickHouseConfig;
use serde::{Deserialize, Serialize};

/// `billing` settings (file plus `BILLING__...` environment overrides).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// ClickHouse endpoint and database with the usage aggregates.
    pub clickhouse: ClickHouseConfig,
    /// Seconds after which the lock of a `billing issue` that crashed is
    /// taken over (an issue takes seconds; default 600).
    pub issue_lock_stale_secs: Option<u64>,
}
