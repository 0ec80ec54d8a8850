-- What `billing reconcile` counted once (see billing/src/run.rs, "reconcile",
-- and docs/billing.md).
--
-- Reconciliation counts a period's bytes on the log tables directly, under
-- fences it computes from the claims, and compares them with the views.
-- Log rows at or below a committed seal's offsets never change (no later
-- claim can fence them, and no valid row arrives below them), so their count
-- is final: each reconciliation records it per period, log table and
-- tracking id, as of the latest seal, and the next one counts only the rows
-- above that seal (read from its time bound) and adds them. So a
-- reconciliation reads what arrived since the previous one, not the whole
-- log; `billing reconcile --recount` counts everything again.
--
-- One audit is the rows of one `audit_id`, written by one INSERT; it counts
-- only when all `keys` rows of it are there (a header row, `header = 1`,
-- plus one row per tracking id), so a write cut short is ignored. Of two
-- audits up to one seal, readers take the one written last (`audit_id`
-- starts with the time of writing in milliseconds): a recount's. A count is
-- used only while the fences it was counted under, cut at its seal, are the
-- same: a late contested claim (docs/clickhouse.md) changes which rows
-- below a seal count, and the next reconciliation then counts every row. It
-- does so too when the number of valid rows below the seal inserted since
-- the hour of the seal's time bound changed: no writer of this project
-- writes there, so such a row was written by hand (the next reconciliation
-- reads those rows anyway). Rows deleted from older hours are seen only by
-- `--recount`.
CREATE TABLE IF NOT EXISTS {db}.billing_log_audits (
    period      String,
    log_table   String,
    seal_seq    UInt64,
    audit_id    UInt64,
    keys        UInt64,
    header      UInt8,
    tracking_id String,
    bytes_out   UInt64,
    -- on the header row: per claimed epoch of a sealed partition
    -- (topic/partition/epoch), its fence cut at the sealed offset
    fence_claims Array(String),
    fence_limits Array(UInt64),
    -- on the header row: the valid rows at or below the seal inserted since
    -- the hour of its time bound (tail_since), when counted
    recent_below UInt64,
    audited_at  DateTime('UTC')
) ENGINE = MergeTree
ORDER BY (period, log_table, seal_seq, audit_id, header, tracking_id);
