-- The log tables ordered by insertion time (see aggregator/src/seal.rs,
-- "The tail's time bound", and docs/clickhouse.md "Sealed aggregates").
--
-- Readers see sealed rows plus the tail: the log rows above the latest seal.
-- Ordered by tracking id, the log could not find its tail without reading an
-- offset column of every row ever written (one stream's month: 2.8 s at
-- 100 M rows). The new log tables are ordered by the hour they were
-- inserted, then by tracking id, and partitioned by the month they were
-- inserted; `inserted_at` is the server's clock at the insert (the writers
-- leave it to the default). Every seal records `tail_since`, a time before
-- which no row of its tail was inserted, and the tail views read the log
-- from that hour on: the primary key skips everything older.
--
-- The existing rows stay where they are, in `*_log_legacy` (renamed, not
-- copied: nothing is rewritten, and an insert in flight during the rename
-- lands in one table or the other, both read). The tails read the legacy
-- tables with the earlier offset bound until a seal finds nothing of them
-- left above its offsets (`legacy_drained`); from then on the legacy tables'
-- primary key skips them too. `billing reconcile`'s direct counts read both.

DROP TABLE IF EXISTS {db}.usage_by_tracking_tail;
DROP TABLE IF EXISTS {db}.usage_by_viewer_tail;
DROP TABLE IF EXISTS {db}.usage_tail_bound;

RENAME TABLE {db}.usage_by_tracking_log TO {db}.usage_by_tracking_log_legacy;

CREATE TABLE IF NOT EXISTS {db}.usage_by_tracking_log (
    window_start  DateTime('UTC'),
    tracking_id   String,
    account_id    String,
    stream_name   String,
    cluster       String,
    protocol      String,
    bytes_out     UInt64,
    bytes_in      UInt64,
    events        UInt64,
    src_topic     String,
    src_partition UInt32,
    src_epoch     UInt64,
    src_offset    UInt64,
    inserted_at   DateTime('UTC') DEFAULT now()
) ENGINE = MergeTree
PARTITION BY toYYYYMM(inserted_at)
ORDER BY (toStartOfHour(inserted_at), tracking_id, window_start, account_id, stream_name, cluster, protocol);

RENAME TABLE {db}.usage_by_viewer_log TO {db}.usage_by_viewer_log_legacy;

CREATE TABLE IF NOT EXISTS {db}.usage_by_viewer_log (
    window_start       DateTime('UTC'),
    tracking_id        String,
    custom_viewer_data String,
    viewer_id          String,
    account_id         String,
    stream_name        String,
    cluster            String,
    bytes_out          UInt64,
    bytes_in           UInt64,
    events             UInt64,
    src_topic          String,
    src_partition      UInt32,
    src_epoch          UInt64,
    src_offset         UInt64,
    inserted_at        DateTime('UTC') DEFAULT now()
) ENGINE = MergeTree
PARTITION BY toYYYYMM(inserted_at)
ORDER BY (toStartOfHour(inserted_at), tracking_id, window_start, viewer_id);

-- Seals before this migration have no time bound (1970: the whole log).
ALTER TABLE {db}.usage_seals ADD COLUMN tail_since DateTime('UTC');
ALTER TABLE {db}.usage_seals ADD COLUMN legacy_drained UInt8;
-- 1: a consolidation (aggregator/src/consolidate.rs), which moves no offset
ALTER TABLE {db}.usage_seals ADD COLUMN consolidated UInt8;

-- The latest seal's time bound, and whether the legacy tables are drained
-- (no seal: 1970 and 0, so everything is read).
CREATE VIEW IF NOT EXISTS {db}.usage_tail_bound AS
SELECT argMax(tail_since, seq) AS tail_since, max(legacy_drained) AS legacy_drained FROM {db}.usage_seals;

-- The tails: rows of the log that count and are not sealed yet. The log is
-- read from the hour of the latest seal's `tail_since` (its primary key);
-- the legacy tables, until drained, above the smallest sealed offset, and
-- once drained not at all (a tracking id is valid UTF-8, so never at or
-- above the byte 0xFF: the key skips every granule; the byte comes from a
-- subquery, so that the view's text stays UTF-8). Which rows count is
-- decided by the offsets and fences alone, as before; the bounds only skip.
CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_tail AS
SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
           src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_tracking_log
    PREWHERE toStartOfHour(inserted_at) >= toStartOfHour((SELECT tail_since FROM {db}.usage_tail_bound))
    UNION ALL
    SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
           src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_tracking_log_legacy
    PREWHERE (tracking_id < (SELECT if(legacy_drained = 1, '', unhex('FF')) FROM {db}.usage_tail_bound) OR tracking_id >= (SELECT unhex('FF')))
         AND (src_offset > (SELECT min(sealed_to) FROM {db}.usage_sealed_to)
              OR (src_topic, src_partition) GLOBAL NOT IN (SELECT src_topic, src_partition FROM {db}.usage_sealed_to))
) AS l
ALL INNER JOIN (SELECT src_topic, src_partition, src_epoch, fence, sealed_to FROM {db}.usage_tail_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence AND (sealed_to = 0 OR src_offset > sealed_to);

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer_tail AS
SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
           src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_viewer_log
    PREWHERE toStartOfHour(inserted_at) >= toStartOfHour((SELECT tail_since FROM {db}.usage_tail_bound))
    UNION ALL
    SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
           src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_viewer_log_legacy
    PREWHERE (tracking_id < (SELECT if(legacy_drained = 1, '', unhex('FF')) FROM {db}.usage_tail_bound) OR tracking_id >= (SELECT unhex('FF')))
         AND (src_offset > (SELECT min(sealed_to) FROM {db}.usage_sealed_to)
              OR (src_topic, src_partition) GLOBAL NOT IN (SELECT src_topic, src_partition FROM {db}.usage_sealed_to))
) AS l
ALL INNER JOIN (SELECT src_topic, src_partition, src_epoch, fence, sealed_to FROM {db}.usage_tail_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence AND (sealed_to = 0 OR src_offset > sealed_to);
