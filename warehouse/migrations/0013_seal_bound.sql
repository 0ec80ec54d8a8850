-- The tails ask for the latest seal in two small scalar subqueries (see
-- docs/clickhouse.md "Sealed aggregates").
--
-- Measured on ClickHouse 26.9 (bench scale, 10 M log rows and a year of
-- seals): each tail cost 40 to 60 ms of server time, whatever the question,
-- about half of it in planning. It asked for the latest seal in five scalar
-- subqueries (the time bound, the drained flag, the smallest sealed offset,
-- the byte 0xFF, and through a join with `usage_tail_fences` each
-- partition's sealed offset), and the current analyzer runs each while it
-- plans. Now:
--   * `usage_seal_bound` is the latest seal's (tail_since, bound of the
--     legacy tables, the byte 0xFF) as one tuple: one scalar subquery, which
--     26.x runs once per query however often the tails name it. Its columns
--     are the seal's scalar ones, so 18.16 (which runs each occurrence) reads
--     no array for it.
--   * `usage_seal_offsets` is its topics, partitions and sealed offsets (three
--     arrays in one tuple, one scalar subquery), looked up per tail row after
--     the join with the fences: the tails join the fences alone.
--   * No lambda here returns a tuple: 18.16 cannot read such a view back from
--     its metadata after a restart ("Unknown identifier"), and its
--     distributed DDL cannot parse the text it formats for `o.2[...]`; the
--     cluster suite restarts a replica and found both.
--   * The legacy tables (migration 10) are bounded by the drained flag only.
--     Until a seal drains them (minutes after an upgrade: the first seal past
--     the tail margin), a question reads them whole; before, it read three
--     columns of every row.
-- The same rows count; an empty tail takes about 25 ms instead of 42 on 26.9
-- and no longer on 18.16, with a year of seals.
--
-- `usage_seal_bound`'s elements: 1. tail_since (the log is read from its hour
-- on; 1970 with no seal); 2. '' once the legacy tables are drained, else the
-- byte 0xFF: a tracking id (valid UTF-8) sorts below it, so drained legacy
-- rows are skipped by the primary key; 3. the byte 0xFF (made here, so that
-- no view's text holds it). `usage_seal_offsets`: the topics and partitions
-- the latest seal names and the offset up to which it sealed each; a seal
-- covers at least offset 1, so a partition named with 0, or not named, is
-- not sealed.
-- An aggregate without GROUP BY gives one row even with no seal, so each
-- scalar subquery has a value.

DROP TABLE IF EXISTS {db}.usage_by_tracking_tail;
DROP TABLE IF EXISTS {db}.usage_by_viewer_tail;
DROP TABLE IF EXISTS {db}.usage_tail_fences;
DROP TABLE IF EXISTS {db}.usage_seal_bound;
DROP TABLE IF EXISTS {db}.usage_seal_offsets;

CREATE VIEW IF NOT EXISTS {db}.usage_seal_bound AS
SELECT tuple(argMax(tail_since, seal_id), if(argMax(legacy_drained, seal_id) = 1, '', unhex('FF')), unhex('FF')) AS bound
FROM {db}.usage_seals
WHERE seq = (SELECT max(seq) FROM {db}.usage_seals);

CREATE VIEW IF NOT EXISTS {db}.usage_seal_offsets AS
SELECT tuple(argMax(topics, seal_id), argMax(partitions, seal_id), argMax(sealed_to, seal_id)) AS offsets
FROM {db}.usage_seals
WHERE seq = (SELECT max(seq) FROM {db}.usage_seals);

CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_tail AS
SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
           src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_tracking_log
    PREWHERE toStartOfHour(inserted_at) >= toStartOfHour(tupleElement((SELECT bound FROM {db}.usage_seal_bound), 1))
    UNION ALL
    SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
           src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_tracking_log_legacy
    PREWHERE tracking_id < tupleElement((SELECT bound FROM {db}.usage_seal_bound), 2)
          OR tracking_id >= tupleElement((SELECT bound FROM {db}.usage_seal_bound), 3)
) AS l
ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence
  AND arrayAll(o -> arrayAll((t, p, u) -> t != src_topic OR p != src_partition OR u = 0 OR src_offset > u,
                              tupleElement(o, 1), tupleElement(o, 2), tupleElement(o, 3)),
               [(SELECT offsets FROM {db}.usage_seal_offsets)]);

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer_tail AS
SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
           src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_viewer_log
    PREWHERE toStartOfHour(inserted_at) >= toStartOfHour(tupleElement((SELECT bound FROM {db}.usage_seal_bound), 1))
    UNION ALL
    SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
           src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_viewer_log_legacy
    PREWHERE tracking_id < tupleElement((SELECT bound FROM {db}.usage_seal_bound), 2)
          OR tracking_id >= tupleElement((SELECT bound FROM {db}.usage_seal_bound), 3)
) AS l
ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence
  AND arrayAll(o -> arrayAll((t, p, u) -> t != src_topic OR p != src_partition OR u = 0 OR src_offset > u,
                              tupleElement(o, 1), tupleElement(o, 2), tupleElement(o, 3)),
               [(SELECT offsets FROM {db}.usage_seal_offsets)]);
