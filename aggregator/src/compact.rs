//! Bounded state in ClickHouse: a claim's dedup restore reads only the rows
//! it can need, and `aggregator seal` drops the dedup partitions that no
//! restore can need, so that claim time and storage follow the dedup
//! horizon, not the age of the topic; and the retention of sealed rows per
//! grain ([`apply_retention`]).
//!
//! **What a restore needs.** A claim resuming a partition at its checkpoint
//! `pos` (arrival clock `arrival`) restores the viewers whose latest dedup
//! row at or below `pos` was seen within the horizon: `last_seen_ms >=
//! arrival - horizon.ms` or `position >= pos - horizon.offsets`
//! (`Sink::claim`). A viewer's dedup row at position `q` is written in the
//! flush whose checkpoint is at `q`, with the same `created_at`, and that
//! checkpoint's arrival clock is at least the row's `last_seen_ms` (the
//! clock only moves forward). So every row a restore needs has a
//! `created_at` at or after the earliest `created_at` of the partition's
//! checkpoints at or below `pos` that meet the same condition
//! ([`restore_since`]). The restore reads `created_at >= since - 1 h` only:
//! the table is partitioned by day of `created_at`, so it reads the days of
//! the horizon, whatever the topic's age. No clock is compared with
//! another: both times come from the checkpoints.
//!
//! **What may be dropped.** The next claim of a partition resumes from its
//! latest valid checkpoint (or later), so it needs nothing older than that
//! checkpoint's [`restore_since`]. [`drop_stale_dedup`] takes the earliest
//! of these over every partition, keeps [`KEEP_DAYS`] more days (a claim
//! that resumes from an older checkpoint after a contested epoch, see
//! `docs/clickhouse.md`), and drops the day partitions of
//! `aggregator_dedup` before that. It is decided from the checkpoints, never
//! from the wall clock alone: a partition that stopped receiving keeps its
//! viewers as long as its checkpoints say a restore needs them.

use crate::dedup::Horizon;
use crate::error::AggError;
use crate::events;
use runtime::ch::ClickHouseConfig;
use runtime::events::InternalEvent;
use serde::Deserialize;

/// Slack below [`restore_since`] in the restore's filter, seconds.
pub const SINCE_MARGIN_SECS: u32 = 3600;
/// Days of dedup rows kept before the earliest [`restore_since`] of all partitions.
pub const KEEP_DAYS: u32 = 2;

/// The earliest `created_at` (Unix seconds) of a dedup row that a restore of
/// `(topic, partition)` from its checkpoint at `pos` can need, with the
/// restore's cut-offs; 0 when unknown (then everything is read).
pub async fn restore_since(
    client: &clickhouse::Client,
    db: &str,
    topic: &str,
    partition: u32,
    pos: u64,
    cutoff_ms: i64,
    cutoff_offset: u64,
) -> Result<u32, AggError> {
    let since: u32 = client
        .query(&format!(
            "SELECT toUInt32(min(created_at)) FROM {db}.aggregator_checkpoints \
             WHERE topic = ? AND partition = ? AND position <= ? AND (arrival_ms >= ? OR position >= ?)"
        ))
        .bind(topic)
        .bind(partition)
        .bind(pos)
        .bind(cutoff_ms)
        .bind(cutoff_offset)
        .fetch_one()
        .await?;
    Ok(since.saturating_sub(SINCE_MARGIN_SECS))
}

/// The cut-offs of a restore from a checkpoint at `pos` with arrival clock
/// `arrival_ms`: viewers seen at or after `(ms, offset)` (either) are restored.
pub fn cutoffs(horizon: Horizon, pos: i64, arrival_ms: i64) -> (i64, u64) {
    (arrival_ms.saturating_sub(horizon.ms), pos.saturating_sub(horizon.offsets).max(0) as u64)
}

#[derive(Debug, Deserialize, clickhouse::Row)]
struct LatestCheckpoint {
    topic: String,
    partition: u32,
    position: u64,
    arrival_ms: i64,
}

/// What [`drop_stale_dedup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DedupDropped {
    /// Unix seconds: every dedup row a claim can need is at or after this.
    pub needed_since: u32,
    /// The day partitions dropped (`YYYYMMDD`).
    pub days: Vec<u32>,
}

/// Drop the day partitions of `aggregator_dedup` that no claim can need
/// (module docs). `None`: no partition has a valid checkpoint yet.
pub async fn drop_stale_dedup(cfg: &ClickHouseConfig, horizon: Horizon) -> Result<Option<DedupDropped>, AggError> {
    let config = |e: runtime::ch::ChError| AggError::Config(e.to_string());
    let db = cfg.db().map_err(config)?;
    let client = cfg.writer_client().await.map_err(|e| AggError::Config(format!("ClickHouse at {}: {e}", cfg.url)))?;
    let latest: Vec<LatestCheckpoint> = client
        .query(&format!(
            "SELECT topic, partition, max(position), argMax(arrival_ms, position) FROM {db}.aggregator_checkpoints \
             ALL INNER JOIN (SELECT topic, partition, epoch, fence FROM {db}.aggregator_fences) AS f USING (topic, partition, epoch) \
             WHERE position <= fence GROUP BY topic, partition"
        ))
        .fetch_all()
        .await?;
    let mut needed_since = u32::MAX;
    for c in &latest {
        let (ms, offset) = cutoffs(horizon, c.position as i64, c.arrival_ms);
        needed_since = needed_since.min(restore_since(&client, db, &c.topic, c.partition, c.position, ms, offset).await?);
    }
    if latest.is_empty() || needed_since == 0 {
        return Ok(None);
    }
    // the start of the day KEEP_DAYS before
    let cut = (needed_since / 86_400).saturating_sub(KEEP_DAYS) * 86_400;
    let days: Vec<u32> = client
        .query(&format!(
            "SELECT DISTINCT toYYYYMMDD(created_at) AS d FROM {db}.aggregator_dedup WHERE created_at < toDateTime(?) ORDER BY d"
        ))
        .bind(cut)
        .fetch_all()
        .await?;
    let table = cfg.alter_target("aggregator_dedup").map_err(config)?;
    for d in &days {
        client.query(&format!("ALTER TABLE {table} DROP PARTITION {d}")).execute().await?;
    }
    if !days.is_empty() {
        events::DedupPartitionsDropped { dropped: &days, needed_since: &needed_since }.emit();
    }
    Ok(Some(DedupDropped { needed_since, days }))
}

/// The sealed tables retention applies to: `(table, time column, grain)`.
pub(crate) const RETAINED: [(&str, &str, Grain); 3] = [
    ("usage_by_tracking_sealed", "window_start", Grain::Minute),
    ("usage_by_viewer_sealed", "window_start", Grain::Minute),
    ("usage_by_tracking_hourly_sealed", "hour", Grain::Hourly),
];

/// A grain that has a retention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Grain {
    Minute,
    Hourly,
}

/// What [`apply_retention`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retained {
    /// `(table, YYYYMM)` dropped.
    pub dropped: Vec<(&'static str, u32)>,
    /// Months past their retention kept because their billing period is not issued.
    pub waiting_for_issue: Vec<(&'static str, u32)>,
}

/// Drop the months of sealed rows past their grain's retention at `today`
/// (`crate::config::Retention`): a month goes once it ends before the
/// first day of the month `days` before `today`, and, with `after_issue`,
/// once its billing period is in `billing_ledger`. Idempotent.
pub async fn apply_retention(
    cfg: &ClickHouseConfig,
    retention: &crate::config::Retention,
    today: chrono::NaiveDate,
) -> Result<Retained, AggError> {
    use chrono::Datelike;
    let config = |e: runtime::ch::ChError| AggError::Config(e.to_string());
    let db = cfg.db().map_err(config)?;
    let client = cfg.writer_client().await.map_err(|e| AggError::Config(format!("ClickHouse at {}: {e}", cfg.url)))?;
    let mut out = Retained::default();
    // the issued billing periods, read once and only if a month is due
    let mut issued: Option<std::collections::HashSet<String>> = None;
    for (table, column, grain) in RETAINED {
        let days = match grain {
            Grain::Minute => retention.minute_days,
            Grain::Hourly => retention.hourly_days,
        };
        if days == 0 {
            continue;
        }
        let edge = today - chrono::Days::new(u64::from(days));
        let first = edge.with_day(1).expect("day 1 exists");
        let months: Vec<u32> = client
            .query(&format!("SELECT DISTINCT toYYYYMM({column}) AS m FROM {db}.{table} WHERE {column} < toDateTime(?) ORDER BY m"))
            .bind(first.format("%Y-%m-%d 00:00:00").to_string())
            .fetch_all()
            .await?;
        for m in months {
            if retention.after_issue {
                if issued.is_none() {
                    let periods: Vec<String> =
                        client.query(&format!("SELECT DISTINCT period FROM {db}.billing_ledger")).fetch_all().await?;
                    issued = Some(periods.into_iter().collect());
                }
                let period = format!("{}-{:02}", m / 100, m % 100);
                if !issued.as_ref().is_some_and(|p| p.contains(&period)) {
                    out.waiting_for_issue.push((table, m));
                    continue;
                }
            }
            let target = cfg.alter_target(table).map_err(config)?;
            client.query(&format!("ALTER TABLE {target} DROP PARTITION {m}")).execute().await?;
            out.dropped.push((table, m));
        }
    }
    if !out.dropped.is_empty() {
        events::SealedMonthsDropped { dropped: &out.dropped }.emit();
    }
    if !out.waiting_for_issue.is_empty() {
        events::RetentionWaitsForIssue { waiting: &out.waiting_for_issue }.emit();
    }
    Ok(out)
}
