-- The consolidated views join a short list of seals (see docs/clickhouse.md
-- "A short list of seals").
--
-- Measured (`bench scale`, 26.9, 2026-12-04): after a year of 5-minute
-- seals, one stream's daily month took 104 ms at 100 M log rows and 107 ms
-- at 400 M, against 81 and 92 ms with one seal. What the year adds is the
-- list of every committed seal (105,120) that each view of migration 15
-- joins to its sealed rows, to count the rows of committed seals only.
--
-- The hourly and daily sealed tables are consolidated (`aggregator seal`,
-- `consolidate.rs`): a month's rows then carry the consolidation's id, and
-- only the seals since its last consolidation still have rows of their own
-- there. So the four views over them join the consolidations' seals
-- (`usage_seal_consolidations`) plus the seals from a floor on, under which
-- no plain seal has rows in those tables. The minute views keep the whole
-- list (their tables are never consolidated).
--
-- The floor is exact for every reader:
--   * each consolidation, once its months are swapped, measures the floor
--     (the oldest committed plain seal with rows in the four tables, on
--     every replica of every shard) and records it in `usage_seal_list_floor`;
--     no later state of the tables has rows of an older plain seal (new
--     seals are newer; consolidations and retention only remove rows);
--   * it also consolidates every month holding a plain seal that is
--     `--consolidate-min-seals` seals old, so one month of late rows cannot
--     hold the floor down for good;
--   * each seal's row carries the floor recorded before its commit
--     (`list_floor`, a consolidation's row copies the latest seal's), and
--     each head the oldest of the last 8 seals' (`publish_head`). A reader
--     takes the head before it fixes the tables' parts; 18.16, analysing the
--     join's right side again after that, may meet a newer head, whose floor
--     was measured before the commit 8 seals back: before the reader's
--     snapshot unless 8 seals commit during one question (the argument of
--     migration 15's time bound).
-- A database from before this migration: floor 0 (every seal listed) until
-- 8 seals carry a measured floor.

ALTER TABLE {db}.usage_seals ADD COLUMN list_floor UInt64;
ALTER TABLE {db}.usage_seal_head ADD COLUMN list_floor UInt64;

-- Every consolidation's seal id and covers, written before its commit (a
-- consolidation killed before it leaves an id no row carries: its months
-- are swapped in only after the commit), and by each measurement of the
-- floor for any committed consolidation missing (one committed by an
-- earlier binary). The views list them whatever the floor: a month
-- consolidated long ago keeps its consolidation's id. A few thousand a year.
CREATE TABLE IF NOT EXISTS {db}.usage_seal_consolidations (
    seal_id UInt64,
    covers  UInt64
) ENGINE = ReplacingMergeTree
ORDER BY seal_id;

INSERT INTO {db}.usage_seal_consolidations (seal_id, covers)
SELECT seal_id, covers FROM {db}.usage_seals
WHERE consolidated = 1 AND seal_id GLOBAL NOT IN (SELECT seal_id FROM {db}.usage_seal_consolidations);

-- The floors measured by consolidations: merges keep the largest.
CREATE TABLE IF NOT EXISTS {db}.usage_seal_list_floor (
    k           UInt8 DEFAULT 0,
    floor       UInt64,
    measured_at DateTime('UTC') DEFAULT now()
) ENGINE = ReplacingMergeTree(floor)
ORDER BY k;

-- As in migration 17, with the head's list floor fourth (0 with no head).
DROP TABLE IF EXISTS {db}.usage_seal_latest;
CREATE VIEW IF NOT EXISTS {db}.usage_seal_latest AS
SELECT tuple(argMax(covers, seq),
             arrayPushFront(arrayMap((t, p) -> concat(t, '/', toString(p)), argMax(topics, seq), argMax(partitions, seq)), ''),
             arrayPushFront(arrayMap(u -> if(u = 0, toUInt64(0), u + 1), argMax(sealed_to, seq)), toUInt64(0)),
             argMax(list_floor, seq)) AS latest
FROM {db}.usage_seal_head;

-- The views of migration 15 over the consolidated tables, their list of
-- seals from the floor on (the table's primary key), and every
-- consolidation's.
DROP TABLE IF EXISTS {db}.usage_by_tracking_hourly;
DROP TABLE IF EXISTS {db}.usage_by_tracking_daily;
DROP TABLE IF EXISTS {db}.usage_by_stream_daily;
DROP TABLE IF EXISTS {db}.usage_by_viewer_daily;

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
                   FROM (SELECT seal_id, covers FROM {db}.usage_seals
                         WHERE seq >= tupleElement((SELECT latest FROM {db}.usage_seal_latest), 4)
                         UNION ALL
                         SELECT seal_id, covers FROM {db}.usage_seal_consolidations)
                   GROUP BY seal_id) AS c
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
                   FROM (SELECT seal_id, covers FROM {db}.usage_seals
                         WHERE seq >= tupleElement((SELECT latest FROM {db}.usage_seal_latest), 4)
                         UNION ALL
                         SELECT seal_id, covers FROM {db}.usage_seal_consolidations)
                   GROUP BY seal_id) AS c
    USING (seal_id)
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE if(sealed = 1, toUInt8(ifNull(listed, 0) = 1 AND ifNull(seal_covers, 0) <= tupleElement(s, 1)),
         toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), if(sealed = 1, '', concat(src_topic, '/', toString(src_partition)))), 1)))) = counted;

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
                   FROM (SELECT seal_id, covers FROM {db}.usage_seals
                         WHERE seq >= tupleElement((SELECT latest FROM {db}.usage_seal_latest), 4)
                         UNION ALL
                         SELECT seal_id, covers FROM {db}.usage_seal_consolidations)
                   GROUP BY seal_id) AS c
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
                   FROM (SELECT seal_id, covers FROM {db}.usage_seals
                         WHERE seq >= tupleElement((SELECT latest FROM {db}.usage_seal_latest), 4)
                         UNION ALL
                         SELECT seal_id, covers FROM {db}.usage_seal_consolidations)
                   GROUP BY seal_id) AS c
    USING (seal_id)
) AS w
ARRAY JOIN [toUInt8(1)] AS counted
WHERE if(sealed = 1, toUInt8(ifNull(listed, 0) = 1 AND ifNull(seal_covers, 0) <= tupleElement(s, 1)),
         toUInt8(src_offset >= arraySum(arraySlice(tupleElement(s, 3), indexOf(tupleElement(s, 2), if(sealed = 1, '', concat(src_topic, '/', toString(src_partition)))), 1)))) = counted;
