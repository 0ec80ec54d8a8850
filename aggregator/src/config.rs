//! `aggregator` configuration: one TOML file plus `AGGREGATOR__...` environment overrides.

use runtime::ch::ClickHouseConfig;
use runtime::config::ConfigError;
use runtime::kafka::KafkaConfig;
use serde::{Deserialize, Serialize};

/// Every setting of the aggregator, with its default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Kafka brokers, topic and extra librdkafka properties.
    pub kafka: KafkaConfig,
    /// ClickHouse endpoint and database.
    pub clickhouse: ClickHouseConfig,
    /// Consumer group; every aggregator of one deployment uses the same one.
    pub group_id: String,
    /// Width of the tumbling windows, seconds (windows align to multiples of it since the epoch).
    pub window_secs: u32,
    /// Flush pending windows at least this often, milliseconds, also when no events arrive.
    pub flush_interval_ms: u64,
    /// Flush early when this many aggregate rows are pending.
    pub flush_max_rows: usize,
    /// Stop consuming (pause partitions) while this many rows wait for ClickHouse.
    pub max_pending_rows: usize,
    /// Write the dedup state and consumer positions every N flushes (1 = every flush).
    pub checkpoint_every: u32,
    /// How long a viewer's counted `seq` numbers are remembered after its
    /// last event arrived, seconds, measured by the partition's arrival clock
    /// (Kafka record timestamps), never by event time.
    pub dedup_horizon_secs: u64,
    /// ... and until this many records of its partition have arrived since
    /// (both must pass before a viewer is forgotten): guards against record
    /// timestamps that do not follow arrival, e.g. producers stamping
    /// records with event time.
    pub dedup_horizon_records: u64,
    /// Events older than the partition watermark minus this are dead-lettered as `too_late`, seconds.
    pub max_lateness_secs: u64,
    /// Events whose `interval_start` is further than this after their
    /// record's Kafka timestamp are dead-lettered as `in_future`, seconds.
    pub max_future_secs: u64,
    /// Per-event maximum of `bytes_out` and `bytes_in`; larger events are
    /// dead-lettered as `too_large` (default: 10 Gbit/s over the longest
    /// allowed interval, as in the gateway).
    pub max_event_bytes: i64,
    /// Partitions whose checkpoint lies before the start of the Kafka log
    /// (retention deleted records never aggregated) are refused: not
    /// consumed, readiness false, an error logged. Listing a partition here
    /// accepts the gap for it: it resumes at the log start, and the records
    /// lost to retention are not counted. A checkpoint past the log end
    /// (topic deleted and recreated) is always refused: use a new topic
    /// name or a fresh database (docs/operations.md).
    pub accept_gap_partitions: Vec<i32>,
    /// Address of the `/metrics` and `/healthz` HTTP endpoint; empty disables it.
    pub metrics_listen: String,
    /// Where to start a partition that has no checkpoint in ClickHouse yet (a
    /// new deployment, or a backfill into a fresh database): `earliest` (the
    /// default), `latest`, an RFC 3339 time (the first offset at or after it,
    /// by Kafka timestamp; needs a broker with ListOffsets by time, which
    /// tansu 0.6 lacks: it answers offset 0 for any time), or offsets per partition `0:1200,1:1187`
    /// (unlisted partitions start at the earliest). Ignored once a
    /// partition has a checkpoint: restarts always resume from ClickHouse.
    /// Read once, with the configuration ([`StartFrom`]).
    pub start_from: StartFrom,
    /// Name of this member in checkpoints and logs; default host name and pid.
    pub member_id: String,
    /// Log as JSON lines.
    pub json_logs: bool,
    /// How long `aggregator seal` keeps sealed rows, per grain.
    pub retention: Retention,
}

/// How long sealed rows are kept, per grain (`[retention]`;
/// `crate::compact::apply_retention`, run by `aggregator seal`). Rows go by
/// whole months (the sealed tables' partitions), once the month is older
/// than the grain's days. Daily rows are always kept: billing reads them,
/// also for late usage of issued periods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Days minute rows are kept (`usage_by_tracking_sealed`,
    /// `usage_by_viewer_sealed`: the contract views' detail); 0 keeps them.
    /// Default 90.
    pub minute_days: u32,
    /// Days hourly rows are kept (`usage_by_tracking_hourly_sealed`); 0
    /// keeps them. Default 730.
    pub hourly_days: u32,
    /// Drop a month only once its billing period has been issued
    /// (`billing_ledger`), so that reconciling a period before its issue
    /// always sees its detail. Default true; set false where billing is not
    /// used.
    pub after_issue: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { minute_days: 90, hourly_days: 730, after_issue: true }
    }
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        AggregatorConfig {
            kafka: KafkaConfig::default(),
            clickhouse: ClickHouseConfig::default(),
            group_id: "metering-aggregator".into(),
            window_secs: schemas::WINDOW_SECS,
            flush_interval_ms: 5_000,
            flush_max_rows: 200_000,
            max_pending_rows: 2_000_000,
            checkpoint_every: 1,
            dedup_horizon_secs: 24 * 3600,
            dedup_horizon_records: 2_000_000,
            max_lateness_secs: 35 * 24 * 3600,
            max_future_secs: 3600,
            max_event_bytes: schemas::validate::DEFAULT_MAX_EVENT_BYTES,
            accept_gap_partitions: vec![],
            metrics_listen: "127.0.0.1:9101".into(),
            start_from: StartFrom::Earliest,
            member_id: String::new(),
            json_logs: false,
            retention: Retention::default(),
        }
    }
}

impl AggregatorConfig {
    /// Check values that serde cannot; the error names the setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(ConfigError::Invalid)
    }

    fn check(&self) -> Result<(), String> {
        // a seal must never write into a month retention has dropped
        let least = self.max_lateness_secs.div_ceil(86_400) + 32;
        for (name, days) in [("retention.minute_days", self.retention.minute_days), ("retention.hourly_days", self.retention.hourly_days)] {
            if days != 0 && u64::from(days) < least {
                return Err(format!("{name} = {days}: 0 (keep) or at least {least} (max_lateness_secs in days plus a month)"));
            }
        }
        if self.window_secs == 0 || 86_400 % self.window_secs != 0 {
            return Err(format!("window_secs = {}: must divide a day (e.g. 10, 60, 300, 3600)", self.window_secs));
        }
        if self.flush_interval_ms == 0 {
            return Err("flush_interval_ms must be > 0".into());
        }
        if self.checkpoint_every == 0 {
            return Err("checkpoint_every must be >= 1".into());
        }
        if self.flush_max_rows == 0 || self.max_pending_rows < self.flush_max_rows {
            return Err("need 0 < flush_max_rows <= max_pending_rows".into());
        }
        if self.max_event_bytes <= 0 {
            return Err("max_event_bytes must be > 0".into());
        }
        if self.group_id.is_empty() || self.kafka.topic.is_empty() {
            return Err("group_id and kafka.topic must not be empty".into());
        }
        runtime::ch::check_identifier(&self.clickhouse.database).map_err(|e| e.to_string())?;
        self.clickhouse.layout().map_err(|e| format!("clickhouse.cluster: {e}"))?;
        Ok(())
    }

    pub(crate) fn member(&self) -> String {
        if self.member_id.is_empty() {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        } else {
            self.member_id.clone()
        }
    }
}

/// [`AggregatorConfig::start_from`], parsed once as the configuration is
/// read (a malformed value is an error naming the key) and written back in
/// the same forms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum StartFrom {
    /// `earliest` (also an empty value): the first offset still in the log.
    Earliest,
    /// `latest`: the log end, so only records produced after the claim count.
    Latest,
    /// Epoch milliseconds.
    Time(i64),
    /// `(partition, offset)`; other partitions start at the earliest.
    Offsets(Vec<(i32, i64)>),
}

impl StartFrom {
    fn parse(s: &str) -> Result<StartFrom, String> {
        let s = s.trim();
        match s {
            "" | "earliest" => return Ok(StartFrom::Earliest),
            "latest" => return Ok(StartFrom::Latest),
            _ => {}
        }
        if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
            return Ok(StartFrom::Time(t.timestamp_millis()));
        }
        let bad =
            || format!("start_from = {s:?}: expected earliest, latest, an RFC 3339 time or partition:offset pairs like 0:1200,1:1187");
        let mut out = Vec::new();
        for pair in s.split(',') {
            let (p, o) = pair.trim().split_once(':').ok_or_else(bad)?;
            let p: i32 = p.trim().parse().map_err(|_| bad())?;
            let o: i64 = o.trim().parse().map_err(|_| bad())?;
            if p < 0 || o < 0 || out.iter().any(|&(q, _)| q == p) {
                return Err(bad());
            }
            out.push((p, o));
        }
        Ok(StartFrom::Offsets(out))
    }
}

impl TryFrom<String> for StartFrom {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        StartFrom::parse(&s)
    }
}

impl From<StartFrom> for String {
    fn from(s: StartFrom) -> String {
        match s {
            StartFrom::Earliest => "earliest".into(),
            StartFrom::Latest => "latest".into(),
            StartFrom::Time(ms) => chrono::DateTime::from_timestamp_millis(ms)
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                .unwrap_or_else(|| ms.to_string()),
            StartFrom::Offsets(list) => list.iter().map(|(p, o)| format!("{p}:{o}")).collect::<Vec<_>>().join(","),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_shorter_than_lateness_and_a_month_is_refused() {
        let mut c = AggregatorConfig::default();
        assert_eq!(c.check(), Ok(()), "the defaults (90 and 730 days)");
        // 35 days of lateness plus 32
        c.retention.minute_days = 66;
        assert!(c.validate().unwrap_err().to_string().contains("retention.minute_days = 66: 0 (keep) or at least 67"));
        c.retention.minute_days = 67;
        assert_eq!(c.check(), Ok(()));
        c.retention.minute_days = 0;
        assert_eq!(c.check(), Ok(()), "0 keeps");
    }

    #[test]
    fn start_from_forms() {
        assert_eq!(StartFrom::parse("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(StartFrom::parse("latest"), Ok(StartFrom::Latest));
        assert_eq!(StartFrom::parse("2026-11-01T00:00:00Z"), Ok(StartFrom::Time(1_793_491_200_000)));
        assert_eq!(StartFrom::parse("0:12, 3:0"), Ok(StartFrom::Offsets(vec![(0, 12), (3, 0)])));
        for bad in ["yesterday", "0:", "0:1,0:2", "-1:5", "1:-5", "2026-11-01"] {
            let e = StartFrom::parse(bad).unwrap_err();
            assert!(e.contains("start_from"), "{bad}: {e}");
        }
    }

    #[test]
    fn start_from_is_read_once_with_the_configuration_and_written_back_alike() {
        let load = |v: &str| runtime::config::load_from::<AggregatorConfig>(None, "AGG", [("AGG__START_FROM".to_string(), v.to_string())]);
        assert_eq!(load("0:12,3:0").unwrap().start_from, StartFrom::Offsets(vec![(0, 12), (3, 0)]));
        assert_eq!(load("latest").unwrap().start_from, StartFrom::Latest);
        let e = load("yesterday").unwrap_err().to_string();
        assert!(e.contains("start_from = \"yesterday\""), "{e}");
        for s in ["earliest", "latest", "2026-11-01T00:00:00.000Z", "0:12,3:0"] {
            assert_eq!(String::from(StartFrom::parse(s).unwrap()), s);
        }
    }
}
