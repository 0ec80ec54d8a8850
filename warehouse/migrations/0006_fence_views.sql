-- The fenced views (see aggregator/src/lib.rs, "Exactly once"), written so
-- that they mean the same on every ClickHouse version this project supports
-- (18.16 to 26.x):
--
-- * `aggregator_fences` has exactly one row per (topic, partition, epoch) by
--   construction (GROUP BY), whatever the claims table holds (a claim row
--   written twice by a retried insert or a re-run migration);
-- * the views join it with `ALL INNER JOIN`: every row of the log with its one
--   fence. (`ANY INNER JOIN` kept every left row on 18.16 but keeps one row per
--   key of both sides since 19.14; `ALL` with a unique right side is the same
--   relation on both);
-- * the joined subquery has an alias (required by current versions).
--
-- Every statement drops before it creates, so a run interrupted at any
-- statement leaves, when re-run, the same schema.

DROP TABLE IF EXISTS {db}.usage_by_tracking_hourly;
DROP TABLE IF EXISTS {db}.usage_by_tracking_daily;
DROP TABLE IF EXISTS {db}.usage_by_viewer_daily;
DROP TABLE IF EXISTS {db}.usage_by_tracking;
DROP TABLE IF EXISTS {db}.usage_by_viewer;
DROP TABLE IF EXISTS {db}.usage_dead_letters;
DROP TABLE IF EXISTS {db}.aggregator_fences;

-- Per claim: the first offset it no longer owns (the smallest start of any
-- later claim of the partition; 2^64-1 while it is the latest). A row of
-- epoch e with flush position p is valid iff p <= fence(e).
CREATE VIEW IF NOT EXISTS {db}.aggregator_fences AS
SELECT topic, partition, epoch, min(fence) AS fence
FROM (
    SELECT topic, partition, epoch,
           arrayReduce('min', arrayPushBack(arrayFilter((s, e) -> e > epoch, starts, epochs), toUInt64(18446744073709551615))) AS fence
    FROM (
        SELECT topic, partition, groupArray(epoch) AS epochs, groupArray(start_offset) AS starts
        FROM {db}.aggregator_claims GROUP BY topic, partition
    )
    ARRAY JOIN epochs AS epoch
)
GROUP BY topic, partition, epoch;

CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking AS
SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM {db}.usage_by_tracking_log
ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence;

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer AS
SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM {db}.usage_by_viewer_log
ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence;

CREATE VIEW IF NOT EXISTS {db}.usage_dead_letters AS
SELECT received_at, source, reason, payload, src_topic, src_partition, src_epoch, src_offset
FROM {db}.usage_dead_letters_log
ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence;

CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_hourly AS
SELECT toStartOfHour(window_start) AS hour, tracking_id, account_id, stream_name, cluster, protocol,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM {db}.usage_by_tracking
GROUP BY hour, tracking_id, account_id, stream_name, cluster, protocol;

CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_daily AS
SELECT toDate(window_start) AS day, tracking_id, account_id, stream_name, cluster, protocol,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM {db}.usage_by_tracking
GROUP BY day, tracking_id, account_id, stream_name, cluster, protocol;

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer_daily AS
SELECT toDate(window_start) AS day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM {db}.usage_by_viewer
GROUP BY day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster;
