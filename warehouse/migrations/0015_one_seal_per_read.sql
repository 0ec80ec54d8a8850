-- Every question reads the seals once (see docs/clickhouse.md "Sealed
-- aggregates", "One read of the seals per question").
--
-- Measured (tests/it/clickhouse_conformance.rs,
-- every_read_racing_seal_commits_counts_each_byte_once): a reader asking the
-- views while seals commit was answered, on ClickHouse 18.16, 4 batches of
-- bytes where 3 had been written (and in a CI run 12,447 events per tracking
-- id against 12,000). Every view under the contract names read `usage_seals`
-- twice per question: the sealed rows counted the seals committed when the
-- `GLOBAL IN` set was built, and the tail started above the latest seal as
-- a scalar subquery found it, at another moment. A seal committed in between
-- was counted twice (its sealed rows, and its log rows as the tail above
-- the previous seal) or not at all.
--
-- Now each view decides from one snapshot (docs/clickhouse.md says why each
-- part is where it is):
--   1. the union of the sealed rows and the log's recent rows (fenced log
--      rows from a time bound on), after a first branch with no row that
--      names the latest seal (below);
--   2. a query over it that names the latest seal once, in its select list
--      (`usage_seal_latest`: its `covers`, and per partition the first offset
--      of its tail), and joins each committed seal's id to its `covers`;
--   3. a filter: a sealed row counts if its seal is committed and covers no
--      more than the latest seal; a log row, if it is at or above its
--      partition's first tail offset.
-- A scalar subquery runs once per occurrence, while its query is analysed.
-- On 18.16 that is before the tables under it are opened (their parts
-- fixed, when it executes), so every seal up to the latest has its rows in
-- what is read. A current version fixes a table's parts as its analyser
-- meets the table, which for the union comes before the select list above
-- it; but it runs each scalar subquery's text once per question, the first
-- time it meets it. So the union's first branch, which has no row, names
-- the same subquery before any table: the latest seal is read there, first,
-- and the select list above gets that value. (18.16 runs that occurrence
-- too, and uses the one above.) The filter depends on
-- `counted`, a column of the query's own ARRAY JOIN, so it is never pushed
-- down to where the subquery would run again. The join's right side is read
-- when the query executes, after the latest seal: it holds every seal up to
-- it, and a seal committed since covers more and is left out (its rows are
-- still in the tail). A consolidation committed meanwhile covers the same
-- as the latest seal: a month it swapped in counts in its rows, the others
-- in theirs. A sealed row with seal id 0 (a consolidation's quorum mark on a
-- cluster) joins no seal.
--
-- The log is read from a time bound on (migrations 10 and 13), which only
-- skips rows. It is now the oldest of the last 8 seals' bounds
-- (`usage_seal_floor`): on 18.16 the tails' subqueries are analysed again
-- after the snapshot once a predicate is pushed into them, and a bound from
-- a seal newer than the snapshot could skip rows of its tail; one from any
-- of the 8 latest seals cannot, unless 8 seals commit while one question is
-- analysed (each seal is several statements, one seal at a time).
--
-- The rows that count are those of migration 14.

-- What a seal covers: its seq; a consolidation's, the covers of the seal it
-- rewrote (it copies it). A row written before this migration gets
-- `seq - consolidated`: exact for a seal and for a consolidation that
-- followed a seal; one that followed another consolidation counts one more
-- than it covers, which only a question asked while it committed could see.
ALTER TABLE {db}.usage_seals ADD COLUMN covers UInt64 DEFAULT toUInt64(seq - consolidated);

DROP TABLE IF EXISTS {db}.usage_by_tracking;
DROP TABLE IF EXISTS {db}.usage_by_viewer;
DROP TABLE IF EXISTS {db}.usage_by_tracking_hourly;
DROP TABLE IF EXISTS {db}.usage_by_tracking_daily;
DROP TABLE IF EXISTS {db}.usage_by_stream_daily;
DROP TABLE IF EXISTS {db}.usage_by_viewer_daily;
DROP TABLE IF EXISTS {db}.usage_by_tracking_tail;
DROP TABLE IF EXISTS {db}.usage_by_viewer_tail;
DROP TABLE IF EXISTS {db}.usage_by_tracking_recent;
DROP TABLE IF EXISTS {db}.usage_by_viewer_recent;
DROP TABLE IF EXISTS {db}.usage_seal_latest;
DROP TABLE IF EXISTS {db}.usage_seal_floor;
DROP TABLE IF EXISTS {db}.usage_seal_offsets;
DROP TABLE IF EXISTS {db}.usage_seal_bound;

-- The latest seal, as the tails read it: (its covers; `topic/partition`
-- of each partition it names; the first offset of each one's tail, 0 if it
-- is not sealed). Each list starts with an entry for '' (0), which the
-- sealed rows look up, so that they find it at once. With no seal:
-- (0, [''], [0]).
CREATE VIEW IF NOT EXISTS {db}.usage_seal_latest AS
SELECT tuple(argMax(covers, seal_id),
             arrayPushFront(arrayMap((t, p) -> concat(t, '/', toString(p)), argMax(topics, seal_id), argMax(partitions, seal_id)), ''),
             arrayPushFront(arrayMap(u -> if(u = 0, toUInt64(0), u + 1), argMax(sealed_to, seal_id)), toUInt64(0))) AS latest
FROM {db}.usage_seals
WHERE seq = (SELECT max(seq) FROM {db}.usage_seals);

-- The time bound of the log's recent rows: the oldest `tail_since` of the
-- last 8 seals, and their legacy tables drained only if all 8 say so (as
-- the dropped `usage_seal_bound` of migration 13: '' once drained, else the byte 0xFF;
-- then the byte 0xFF). With no seal, 1970 and not drained: all is read.
CREATE VIEW IF NOT EXISTS {db}.usage_seal_floor AS
SELECT tuple(min(tail_since), if(min(legacy_drained) = 1, '', unhex('FF')), unhex('FF')) AS bound
FROM {db}.usage_seals
WHERE seq + 8 > (SELECT max(seq) FROM {db}.usage_seals);

-- The log's rows that their fences admit, read from the time bound on: the
-- tail's candidates.
CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_recent AS
SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_tracking_log
    PREWHERE toStartOfHour(inserted_at) >= toStartOfHour(tupleElement((SELECT bound FROM {db}.usage_seal_floor), 1))
    UNION ALL
    SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_tracking_log_legacy
    PREWHERE tracking_id < tupleElement((SELECT bound FROM {db}.usage_seal_floor), 2)
          OR tracking_id >= tupleElement((SELECT bound FROM {db}.usage_seal_floor), 3)
) AS l
ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence;

-- The log's rows that their fences admit, read from the time bound on: the
-- tail's candidates.
CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer_recent AS
SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_viewer_log
    PREWHERE toStartOfHour(inserted_at) >= toStartOfHour(tupleElement((SELECT bound FROM {db}.usage_seal_floor), 1))
    UNION ALL
    SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
    FROM {db}.usage_by_viewer_log_legacy
    PREWHERE tracking_id < tupleElement((SELECT bound FROM {db}.usage_seal_floor), 2)
          OR tracking_id >= tupleElement((SELECT bound FROM {db}.usage_seal_floor), 3)
) AS l
ALL INNER JOIN (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence;

-- The tails alone: the recent rows above the latest seal (reconciliation's
-- baseline in `bench scale`; what is not sealed yet).
CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_tail AS
SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at, (SELECT latest FROM {db}.usage_seal_latest) AS s
    FROM (
        SELECT toDateTime(0, 'UTC') AS window_start, '' AS tracking_id, '' AS account_id, '' AS stream_name, '' AS cluster, '' AS protocol, toUInt64(0) AS bytes_out, toUInt64(0) AS bytes_in, toUInt64(0) AS events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_epoch, toUInt64(0) AS src_offset, toDateTime(0, 'UTC') AS inserted_at, toUInt64(tupleElement((SELECT latest FROM {db}.usage_seal_latest), 1)) AS seal_id, toUInt8(0) AS sealed
        WHERE 0
        UNION ALL
        SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at, toUInt64(0) AS seal_id, toUInt8(0) AS sealed
        FROM {db}.usage_by_tracking_recent
    ) AS u
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), concat(src_topic, '/', toString(src_partition))), 1))) = counted;

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer_tail AS
SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at, (SELECT latest FROM {db}.usage_seal_latest) AS s
    FROM (
        SELECT toDateTime(0, 'UTC') AS window_start, '' AS tracking_id, '' AS custom_viewer_data, '' AS viewer_id, '' AS account_id, '' AS stream_name, '' AS cluster, toUInt64(0) AS bytes_out, toUInt64(0) AS bytes_in, toUInt64(0) AS events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_epoch, toUInt64(0) AS src_offset, toDateTime(0, 'UTC') AS inserted_at, toUInt64(tupleElement((SELECT latest FROM {db}.usage_seal_latest), 1)) AS seal_id, toUInt8(0) AS sealed
        WHERE 0
        UNION ALL
        SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at, toUInt64(0) AS seal_id, toUInt8(0) AS sealed
        FROM {db}.usage_by_viewer_recent
    ) AS u
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), concat(src_topic, '/', toString(src_partition))), 1))) = counted;

-- The contract views: the rows of the seals listed, and the tail above the
-- latest seal. Sealed rows carry no source (src_topic '', the other src_
-- columns 0).
CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking AS
SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, src_epoch, inserted_at, sealed, listed, seal_covers, (SELECT latest FROM {db}.usage_seal_latest) AS s
    FROM (
        SELECT toDateTime(0, 'UTC') AS window_start, '' AS tracking_id, '' AS account_id, '' AS stream_name, '' AS cluster, '' AS protocol, toUInt64(0) AS bytes_out, toUInt64(0) AS bytes_in, toUInt64(0) AS events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_epoch, toUInt64(0) AS src_offset, toDateTime(0, 'UTC') AS inserted_at, toUInt64(tupleElement((SELECT latest FROM {db}.usage_seal_latest), 1)) AS seal_id, toUInt8(0) AS sealed
        WHERE 0
        UNION ALL
        SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_epoch, toUInt64(0) AS src_offset, toDateTime(0, 'UTC') AS inserted_at, seal_id, toUInt8(1) AS sealed
        FROM {db}.usage_by_tracking_sealed
        UNION ALL
        SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at, toUInt64(0) AS seal_id, toUInt8(0) AS sealed
        FROM {db}.usage_by_tracking_recent
    ) AS u
    ALL LEFT JOIN (SELECT seal_id, max(covers) AS seal_covers, toUInt8(1) AS listed
                   FROM {db}.usage_seals GROUP BY seal_id) AS c
    USING (seal_id)
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE if(sealed = 1, toUInt8(ifNull(listed, 0) = 1 AND ifNull(seal_covers, 0) <= tupleElement(s, 1)),
         toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), if(sealed = 1, '', concat(src_topic, '/', toString(src_partition)))), 1)))) = counted;

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer AS
SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, src_epoch, inserted_at, sealed, listed, seal_covers, (SELECT latest FROM {db}.usage_seal_latest) AS s
    FROM (
        SELECT toDateTime(0, 'UTC') AS window_start, '' AS tracking_id, '' AS custom_viewer_data, '' AS viewer_id, '' AS account_id, '' AS stream_name, '' AS cluster, toUInt64(0) AS bytes_out, toUInt64(0) AS bytes_in, toUInt64(0) AS events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_epoch, toUInt64(0) AS src_offset, toDateTime(0, 'UTC') AS inserted_at, toUInt64(tupleElement((SELECT latest FROM {db}.usage_seal_latest), 1)) AS seal_id, toUInt8(0) AS sealed
        WHERE 0
        UNION ALL
        SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_epoch, toUInt64(0) AS src_offset, toDateTime(0, 'UTC') AS inserted_at, seal_id, toUInt8(1) AS sealed
        FROM {db}.usage_by_viewer_sealed
        UNION ALL
        SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_epoch, src_offset, inserted_at, toUInt64(0) AS seal_id, toUInt8(0) AS sealed
        FROM {db}.usage_by_viewer_recent
    ) AS u
    ALL LEFT JOIN (SELECT seal_id, max(covers) AS seal_covers, toUInt8(1) AS listed
                   FROM {db}.usage_seals GROUP BY seal_id) AS c
    USING (seal_id)
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE if(sealed = 1, toUInt8(ifNull(listed, 0) = 1 AND ifNull(seal_covers, 0) <= tupleElement(s, 1)),
         toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), if(sealed = 1, '', concat(src_topic, '/', toString(src_partition)))), 1)))) = counted;

CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_hourly AS
SELECT hour, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events
FROM (
    SELECT hour, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, sealed, listed, seal_covers, (SELECT latest FROM {db}.usage_seal_latest) AS s
    FROM (
        SELECT toDateTime(0, 'UTC') AS hour, '' AS tracking_id, '' AS account_id, '' AS stream_name, '' AS cluster, '' AS protocol, toUInt64(0) AS bytes_out, toUInt64(0) AS bytes_in, toUInt64(0) AS events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_offset, toUInt64(tupleElement((SELECT latest FROM {db}.usage_seal_latest), 1)) AS seal_id, toUInt8(0) AS sealed
        WHERE 0
        UNION ALL
        SELECT hour, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_offset, seal_id, toUInt8(1) AS sealed
        FROM {db}.usage_by_tracking_hourly_sealed
        UNION ALL
        SELECT toStartOfHour(window_start) AS hour, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, toUInt64(0) AS seal_id, toUInt8(0) AS sealed
        FROM {db}.usage_by_tracking_recent
    ) AS u
    ALL LEFT JOIN (SELECT seal_id, max(covers) AS seal_covers, toUInt8(1) AS listed
                   FROM {db}.usage_seals GROUP BY seal_id) AS c
    USING (seal_id)
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE if(sealed = 1, toUInt8(ifNull(listed, 0) = 1 AND ifNull(seal_covers, 0) <= tupleElement(s, 1)),
         toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), if(sealed = 1, '', concat(src_topic, '/', toString(src_partition)))), 1)))) = counted;

CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_daily AS
SELECT day, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events
FROM (
    SELECT day, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, sealed, listed, seal_covers, (SELECT latest FROM {db}.usage_seal_latest) AS s
    FROM (
        SELECT toDate(0) AS day, '' AS tracking_id, '' AS account_id, '' AS stream_name, '' AS cluster, '' AS protocol, toUInt64(0) AS bytes_out, toUInt64(0) AS bytes_in, toUInt64(0) AS events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_offset, toUInt64(tupleElement((SELECT latest FROM {db}.usage_seal_latest), 1)) AS seal_id, toUInt8(0) AS sealed
        WHERE 0
        UNION ALL
        SELECT day, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_offset, seal_id, toUInt8(1) AS sealed
        FROM {db}.usage_by_tracking_daily_sealed
        UNION ALL
        SELECT toDate(window_start) AS day, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, toUInt64(0) AS seal_id, toUInt8(0) AS sealed
        FROM {db}.usage_by_tracking_recent
    ) AS u
    ALL LEFT JOIN (SELECT seal_id, max(covers) AS seal_covers, toUInt8(1) AS listed
                   FROM {db}.usage_seals GROUP BY seal_id) AS c
    USING (seal_id)
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE if(sealed = 1, toUInt8(ifNull(listed, 0) = 1 AND ifNull(seal_covers, 0) <= tupleElement(s, 1)),
         toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), if(sealed = 1, '', concat(src_topic, '/', toString(src_partition)))), 1)))) = counted;

-- The daily rollup keyed by stream: for the stream routes.
CREATE VIEW IF NOT EXISTS {db}.usage_by_stream_daily AS
SELECT day, account_id, stream_name, tracking_id, cluster, protocol, bytes_out, bytes_in, events
FROM (
    SELECT day, account_id, stream_name, tracking_id, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, sealed, listed, seal_covers, (SELECT latest FROM {db}.usage_seal_latest) AS s
    FROM (
        SELECT toDate(0) AS day, '' AS account_id, '' AS stream_name, '' AS tracking_id, '' AS cluster, '' AS protocol, toUInt64(0) AS bytes_out, toUInt64(0) AS bytes_in, toUInt64(0) AS events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_offset, toUInt64(tupleElement((SELECT latest FROM {db}.usage_seal_latest), 1)) AS seal_id, toUInt8(0) AS sealed
        WHERE 0
        UNION ALL
        SELECT day, account_id, stream_name, tracking_id, cluster, protocol, bytes_out, bytes_in, events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_offset, seal_id, toUInt8(1) AS sealed
        FROM {db}.usage_by_stream_daily_sealed
        UNION ALL
        SELECT toDate(window_start) AS day, account_id, stream_name, tracking_id, cluster, protocol, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, toUInt64(0) AS seal_id, toUInt8(0) AS sealed
        FROM {db}.usage_by_tracking_recent
    ) AS u
    ALL LEFT JOIN (SELECT seal_id, max(covers) AS seal_covers, toUInt8(1) AS listed
                   FROM {db}.usage_seals GROUP BY seal_id) AS c
    USING (seal_id)
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE if(sealed = 1, toUInt8(ifNull(listed, 0) = 1 AND ifNull(seal_covers, 0) <= tupleElement(s, 1)),
         toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), if(sealed = 1, '', concat(src_topic, '/', toString(src_partition)))), 1)))) = counted;

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer_daily AS
SELECT day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events
FROM (
    SELECT day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, sealed, listed, seal_covers, (SELECT latest FROM {db}.usage_seal_latest) AS s
    FROM (
        SELECT toDate(0) AS day, '' AS tracking_id, '' AS custom_viewer_data, '' AS viewer_id, '' AS account_id, '' AS stream_name, '' AS cluster, toUInt64(0) AS bytes_out, toUInt64(0) AS bytes_in, toUInt64(0) AS events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_offset, toUInt64(tupleElement((SELECT latest FROM {db}.usage_seal_latest), 1)) AS seal_id, toUInt8(0) AS sealed
        WHERE 0
        UNION ALL
        SELECT day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_offset, seal_id, toUInt8(1) AS sealed
        FROM {db}.usage_by_viewer_daily_sealed
        UNION ALL
        SELECT toDate(window_start) AS day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events, src_topic, src_partition, src_offset, toUInt64(0) AS seal_id, toUInt8(0) AS sealed
        FROM {db}.usage_by_viewer_recent
    ) AS u
    ALL LEFT JOIN (SELECT seal_id, max(covers) AS seal_covers, toUInt8(1) AS listed
                   FROM {db}.usage_seals GROUP BY seal_id) AS c
    USING (seal_id)
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE if(sealed = 1, toUInt8(ifNull(listed, 0) = 1 AND ifNull(seal_covers, 0) <= tupleElement(s, 1)),
         toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), if(sealed = 1, '', concat(src_topic, '/', toString(src_partition)))), 1)))) = counted;
