//! Reconciliation's count of a period on the log tables: the rows above a
//! seal read under the fences, and the counts it records (migration 12) so
//! that the next count reads only what was written since.

use super::{secs, sql_string, Fences, Store, StoreError};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How reconciliation counts a log table ([`crate::reconcile::reconcile_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogCounting {
    /// The rows above the recorded count's seal, added to it; the count as
    /// of the latest seal is then recorded.
    #[default]
    Incremental,
    /// Every row again (recorded counts ignored); then recorded.
    Recount,
    /// As [`LogCounting::Incremental`], recording nothing: for a read-only
    /// user (the console's reconciliation).
    ReadOnly,
}

/// A period's bytes counted on a log table ([`Store::audited_log_total`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogCount {
    /// `bytes_out` per tracking id with rows.
    pub bytes: BTreeMap<String, u64>,
    /// Of them, the rows above the latest seal: what the views' tails must
    /// show.
    pub tail: BTreeMap<String, u64>,
    /// The seal whose recorded count was taken (0: none, every row counted now).
    pub counted_before: u64,
    /// The seal up to which the count is now recorded (0: none).
    pub recorded: u64,
    /// Why a recorded count was not used, and every row was counted.
    pub recounted: Option<Recounted>,
}

/// Why reconciliation counted every log row although a count was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recounted {
    /// The fences below the recorded seal changed since (a late contested claim).
    FencesChanged { seal: u64 },
    /// The valid log rows below the recorded seal inserted since the hour of
    /// its time bound numbered `then` when counted and `now` now: rows
    /// written below a seal (by hand: no writer of this project does), or
    /// deleted.
    RowsChanged { seal: u64, then: u64, now: u64 },
}

/// [`Store::log_rows_split`]: the valid log rows of a period read above a
/// seal `sealed`, split at a seal `upper`.
#[derive(Debug, Default)]
struct Split {
    /// `bytes_out` per tracking id of the rows at or below `upper`.
    below: BTreeMap<String, u64>,
    /// ... and above it.
    above: BTreeMap<String, u64>,
    /// Rows at or below `sealed` inserted since the hour of its time bound
    /// (with `with_below`).
    stale_rows: u64,
    /// Rows at or below `upper` inserted since the hour of its time bound.
    recent_below: u64,
}

/// A count recorded by a reconciliation (migration 12).
#[derive(Debug, Default)]
struct Audit {
    /// The seal it counts up to.
    seq: u64,
    /// `bytes_out` per tracking id.
    bytes: BTreeMap<String, u64>,
    /// [`fences_below`] that seal when counted.
    fences: BTreeMap<String, u64>,
    /// The valid rows at or below that seal inserted since the hour of its
    /// time bound, when counted ([`Split::recent_below`]).
    recent_below: u64,
}

/// What decides which log rows at or below `sealed` count: per claimed
/// epoch of a sealed partition (`topic/partition/epoch`), its fence cut at
/// the partition's sealed offset.
fn fences_below(fences: &Fences, sealed: &runtime::ch::Sealed) -> BTreeMap<String, u64> {
    fences
        .iter()
        .filter_map(|(((t, p), e), fence)| sealed.sealed_to.get(&(t.clone(), *p)).map(|upto| (format!("{t}/{p}/{e}"), (*fence).min(*upto))))
        .collect()
}

/// Add `more` into `into`, refusing an overflow.
fn add_into(into: &mut BTreeMap<String, u64>, more: &BTreeMap<String, u64>) -> Result<(), StoreError> {
    for (k, b) in more {
        let e = into.entry(k.clone()).or_insert(0);
        *e = e.checked_add(*b).ok_or_else(|| StoreError::Config("usage overflows u64".into()))?;
    }
    Ok(())
}

impl Store {
    /// `bytes_out` per tracking id with `window_start` in `[from, to)` read
    /// from a log table (`usage_by_tracking_log` or `usage_by_viewer_log`)
    /// under `fences` ([`Store::claim_fences`]), not through the fenced
    /// views' join, of the rows above `sealed` (its offsets per partition,
    /// and its time bound; [`runtime::ch::Sealed::default`]: all).
    pub(super) async fn log_rows_total(
        &self,
        log_table: &str,
        fences: &Fences,
        sealed: &runtime::ch::Sealed,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let split = self.log_rows_split(log_table, fences, sealed, &runtime::ch::Sealed::default(), from, to, false).await?;
        Ok(split.above)
    }

    /// [`Store::log_rows_total`] above `sealed`, in two parts: the rows at or
    /// below `upper`'s offsets, and those above them. `with_below`: also
    /// count the valid rows read at or below `sealed` ([`Split::recent_below`]).
    #[allow(clippy::too_many_arguments)]
    async fn log_rows_split(
        &self,
        log_table: &str,
        fences: &Fences,
        sealed: &runtime::ch::Sealed,
        upper: &runtime::ch::Sealed,
        from: NaiveDate,
        to: NaiveDate,
        with_below: bool,
    ) -> Result<Split, StoreError> {
        if fences.is_empty() {
            return Ok(Default::default());
        }
        let above = &sealed.sealed_to;
        let keys: Vec<String> = fences.keys().map(|((t, p), e)| format!("{t}/{p}/{e}")).collect();
        let limits: Vec<u64> = fences.values().copied().collect();
        // the log from the seal's time bound (its primary key); the legacy
        // table (migration 10), unless drained, read first (PREWHERE) on the
        // offset: a row of a partition in `above` at or below the smallest
        // bound is not read further (rows of partitions without a claim
        // never count; when every claimed partition is in `above`, the
        // offset alone decides, on one column)
        let unsealed: Vec<String> = fences
            .keys()
            .map(|((t, p), _)| (t.clone(), *p))
            .filter(|k| !above.contains_key(k))
            .map(|(t, p)| format!("({}, {p})", sql_string(&t)))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let prewhere = match above.values().copied().min() {
            None => String::new(),
            Some(floor) if unsealed.is_empty() => format!("PREWHERE src_offset > {floor}"),
            Some(floor) => format!("PREWHERE src_offset > {floor} OR (src_topic, src_partition) IN ({})", unsealed.join(", ")),
        };
        let columns = "tracking_id, bytes_out, window_start, src_topic, src_partition, src_epoch, src_offset, inserted_at";
        let recent = sealed.recent_log(&self.db, log_table, columns);
        let source = if sealed.legacy_drained {
            format!("({recent})")
        } else {
            format!("({recent} UNION ALL SELECT {columns} FROM {}.{log_table}_legacy {prewhere})", self.db)
        };
        // (no bound at all when `above` is empty: 18.16's transform refuses empty arrays)
        // (signed: a partition not in `above` has bound -1, so its rows at
        // position 0 count)
        let bounds = |sealed: &BTreeMap<runtime::ch::PartitionKey, u64>| -> (Vec<String>, Vec<i64>) {
            if sealed.is_empty() {
                (vec![String::new()], vec![-1])
            } else {
                (
                    sealed.keys().map(|(t, p)| format!("{t}/{p}")).collect(),
                    sealed.values().map(|&v| v.min(i64::MAX as u64) as i64).collect(),
                )
            }
        };
        let (parts, lows) = bounds(above);
        let (upper_parts, upper_lows) = bounds(&upper.sealed_to);
        // `fresh`: above `sealed`; `below`: at or below `upper`; `recent`:
        // inserted since the hour of `upper`'s time bound (and
        // `recent_since_sealed`: of `sealed`'s)
        let sql = format!(
            "WITH concat(src_topic, '/', toString(src_partition), '/', toString(src_epoch)) AS claim, \
                  concat(src_topic, '/', toString(src_partition)) AS part, \
                  toInt64(src_offset) > transform(part, ?, ?, toInt64(-1)) AS fresh, \
                  toInt64(src_offset) <= transform(part, ?, ?, toInt64(-1)) AS below, \
                  toStartOfHour(inserted_at) >= toStartOfHour(toDateTime(?, 'UTC')) AS recent, \
                  toStartOfHour(inserted_at) >= toStartOfHour(toDateTime(?, 'UTC')) AS recent_since_sealed \
             SELECT tracking_id AS key, sumIf(bytes_out, fresh AND below) AS sealed, countIf(fresh AND below) AS sealed_rows, \
                    sumIf(bytes_out, fresh AND NOT below) AS bytes, countIf(fresh AND NOT below) AS rows, \
                    countIf(NOT fresh AND recent_since_sealed) AS stale_rows, countIf(below AND recent) AS recent_below_rows FROM {source} AS l \
             WHERE window_start >= toDateTime(?) AND window_start < toDateTime(?) \
               AND has(?, claim) AND src_offset <= transform(claim, ?, ?, toUInt64(0)){} \
             GROUP BY tracking_id",
            if with_below { "" } else { " AND fresh" }
        );
        #[derive(Deserialize, clickhouse::Row)]
        struct Row {
            key: String,
            sealed: u64,
            sealed_rows: u64,
            bytes: u64,
            rows: u64,
            stale_rows: u64,
            recent_below_rows: u64,
        }
        let rows: Vec<Row> = self
            .client
            .query(&sql)
            .bind(&parts)
            .bind(&lows)
            .bind(&upper_parts)
            .bind(&upper_lows)
            .bind(upper.tail_since)
            .bind(sealed.tail_since)
            .bind(secs(from))
            .bind(secs(to))
            .bind(&keys)
            .bind(&keys)
            .bind(&limits)
            .fetch_all()
            .await?;
        let mut out = Split::default();
        for r in rows {
            out.stale_rows += r.stale_rows;
            out.recent_below += r.recent_below_rows;
            // a tracking id with rows is in the answer, also with 0 bytes (as in the views')
            if r.sealed_rows > 0 {
                out.below.insert(r.key.clone(), r.sealed);
            }
            if r.rows > 0 {
                out.above.insert(r.key, r.bytes);
            }
        }
        Ok(out)
    }

    /// [`Store::log_rows_total`] of `period` (`YYYY-MM`, from `from` to
    /// `to`) as reconciliation counts it: its independent count of what the
    /// views must show (migration 12): the count recorded by an
    /// earlier reconciliation, as of its seal, plus the rows above that
    /// seal; the count as of `latest` (read before `fences`, so that every
    /// epoch with rows below it is among them) is then recorded for the
    /// next one. A recorded count is used only while the fences it was
    /// counted under, cut at its seal, are unchanged (a late contested claim
    /// changes them).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn audited_log_total(
        &self,
        log_table: &str,
        fences: &Fences,
        latest: &runtime::ch::Sealed,
        period: &str,
        from: NaiveDate,
        to: NaiveDate,
        counting: LogCounting,
    ) -> Result<LogCount, StoreError> {
        let audit = if counting == LogCounting::Recount { None } else { self.log_audit(period, log_table).await? };
        // the audit's seal, for its offsets and time bound (one that is not
        // there any more, or not yet on this replica: count everything)
        let mut recounted = None;
        let mut base = None;
        if let Some(audit) = audit.filter(|a| a.seq <= latest.seq) {
            let config = |e: runtime::ch::ChError| StoreError::Config(e.to_string());
            if let Some(sealed) = runtime::ch::seal_at(&self.client, &self.db, audit.seq).await.map_err(config)? {
                if fences_below(fences, &sealed) != audit.fences {
                    recounted = Some(Recounted::FencesChanged { seal: audit.seq });
                } else if sealed.tail_since <= latest.tail_since {
                    // (else the rows the latest seal's count needs are not
                    // all among those read from the audit's bound: all)
                    base = Some((sealed, audit));
                }
            }
        }
        let mut counted = None;
        if let Some((sealed, audit)) = base {
            let split = self.log_rows_split(log_table, fences, &sealed, latest, from, to, true).await?;
            // rows below the audit's seal written (or gone) since it was
            // counted: a hand-made row, or a premise of the seal broken
            if split.stale_rows == audit.recent_below {
                counted = Some((sealed, audit.bytes, split));
            } else {
                recounted = Some(Recounted::RowsChanged { seal: audit.seq, then: audit.recent_below, now: split.stale_rows });
            }
        }
        let (lower, mut bytes, split) = match counted {
            Some(c) => c,
            None => {
                let everything = runtime::ch::Sealed::default();
                let split = self.log_rows_split(log_table, fences, &everything, latest, from, to, true).await?;
                (everything, BTreeMap::new(), split)
            }
        };
        add_into(&mut bytes, &split.below)?;
        if latest.seq > lower.seq && counting != LogCounting::ReadOnly {
            self.record_log_audit(period, log_table, latest.seq, &bytes, &fences_below(fences, latest), split.recent_below).await?;
        }
        let recorded = if counting == LogCounting::ReadOnly { lower.seq } else { latest.seq.max(lower.seq) };
        let counted_before = lower.seq;
        add_into(&mut bytes, &split.above)?;
        Ok(LogCount { bytes, tail: split.above, counted_before, recorded, recounted })
    }

    /// The latest complete audit of `period` and `log_table` (of the latest
    /// seal, the last written).
    async fn log_audit(&self, period: &str, log_table: &str) -> Result<Option<Audit>, StoreError> {
        #[derive(Deserialize, clickhouse::Row)]
        struct Header {
            seal_seq: u64,
            audit_id: u64,
        }
        let found: Option<Header> = self
            .client
            .query(&format!(
                "SELECT seal_seq, audit_id FROM {}.billing_log_audits WHERE period = ? AND log_table = ? \
                 GROUP BY seal_seq, audit_id, keys HAVING count() = keys ORDER BY seal_seq DESC, audit_id DESC LIMIT 1",
                self.db
            ))
            .bind(period)
            .bind(log_table)
            .fetch_optional()
            .await?;
        let Some(h) = found else { return Ok(None) };
        #[derive(Deserialize, clickhouse::Row)]
        struct Row {
            header: u8,
            tracking_id: String,
            bytes_out: u64,
            fence_claims: Vec<String>,
            fence_limits: Vec<u64>,
            recent_below: u64,
        }
        let rows: Vec<Row> = self
            .client
            .query(&format!(
                "SELECT header, tracking_id, bytes_out, fence_claims, fence_limits, recent_below FROM {}.billing_log_audits \
                 WHERE period = ? AND log_table = ? AND seal_seq = ? AND audit_id = ?",
                self.db
            ))
            .bind(period)
            .bind(log_table)
            .bind(h.seal_seq)
            .bind(h.audit_id)
            .fetch_all()
            .await?;
        let mut audit = Audit { seq: h.seal_seq, ..Audit::default() };
        for r in rows {
            if r.header == 1 {
                audit.fences = r.fence_claims.into_iter().zip(r.fence_limits).collect();
                audit.recent_below = r.recent_below;
            } else {
                audit.bytes.insert(r.tracking_id, r.bytes_out);
            }
        }
        Ok(Some(audit))
    }

    /// Record `bytes` as the count of `period` in `log_table` up to seal
    /// `seq`, counted under `fences` ([`fences_below`] it), with
    /// [`Split::recent_below`]: one INSERT.
    async fn record_log_audit(
        &self,
        period: &str,
        log_table: &str,
        seq: u64,
        bytes: &BTreeMap<String, u64>,
        fences: &BTreeMap<String, u64>,
        recent_below: u64,
    ) -> Result<(), StoreError> {
        #[derive(Serialize, clickhouse::Row)]
        struct AuditRow<'a> {
            period: &'a str,
            log_table: &'a str,
            seal_seq: u64,
            audit_id: u64,
            keys: u64,
            header: u8,
            tracking_id: &'a str,
            bytes_out: u64,
            fence_claims: Vec<&'a str>,
            fence_limits: Vec<u64>,
            recent_below: u64,
            audited_at: u32,
        }
        // ordered by the time of writing (milliseconds, then 16 random bits):
        // of two counts up to one seal, the later one is taken (a recount's)
        let now = chrono::Utc::now();
        let audit_id = ((now.timestamp_millis() as u64) << 16) | u64::from(rand::random::<u16>());
        let (keys, now) = (bytes.len() as u64 + 1, now.timestamp() as u32);
        let mut ins = self.client.insert::<AuditRow<'_>>("billing_log_audits").await?;
        let row = |header, tracking_id, bytes_out| AuditRow {
            period,
            log_table,
            seal_seq: seq,
            audit_id,
            keys,
            header,
            tracking_id,
            bytes_out,
            fence_claims: vec![],
            fence_limits: vec![],
            recent_below: 0,
            audited_at: now,
        };
        ins.write(&AuditRow {
            fence_claims: fences.keys().map(String::as_str).collect(),
            fence_limits: fences.values().copied().collect(),
            recent_below,
            ..row(1, "", 0)
        })
        .await?;
        for (t, b) in bytes {
            ins.write(&row(0, t.as_str(), *b)).await?;
        }
        ins.end().await?;
        Ok(())
    }
}
