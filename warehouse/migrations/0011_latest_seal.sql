-- The latest seal, read without reading every seal (see docs/clickhouse.md
-- "Sealed aggregates").
--
-- A seal every 5 minutes commits 105,120 rows to `usage_seals` a year, each
-- with one array element per Kafka partition. The views of migrations 9 and
-- 10 found the latest seal with `argMax(..., seq)`, which reads every row's
-- arrays, and every tail query asks for it several times: with a year of
-- seals over 64 partitions and an empty log, one stream's month took 0.8 to
-- 1.0 s on ClickHouse 18.16 and 0.25 s on 26.9. Now they read the rows of
-- the largest `seq` only: the scalar subquery becomes a constant before the
-- primary key is consulted, on both engines (a GLOBAL IN here costs 26.9
-- about 15 ms a query, and 18.16 uses the key for it only in PREWHERE).
-- Every seal carries `legacy_drained` forward once set, so the latest row
-- says it.
--
-- One number committed twice is refused by `aggregator seal` and billing
-- (`runtime::ch::latest_seal`); until it is repaired, both views pick the
-- same row of the two (the larger `seal_id`).

DROP TABLE IF EXISTS {db}.usage_sealed_to;
DROP TABLE IF EXISTS {db}.usage_tail_bound;

-- Per partition: the offset up to which the latest commit sealed it (no row:
-- nothing sealed).
CREATE VIEW IF NOT EXISTS {db}.usage_sealed_to AS
SELECT topic AS src_topic, partition AS src_partition, upto AS sealed_to
FROM (
    SELECT argMax(topics, seal_id) AS ts, argMax(partitions, seal_id) AS ps, argMax(sealed_to, seal_id) AS us
    FROM {db}.usage_seals
    WHERE seq = (SELECT max(seq) FROM {db}.usage_seals)
)
ARRAY JOIN ts AS topic, ps AS partition, us AS upto;

-- The latest seal's time bound, and whether the legacy tables are drained
-- (no seal: 1970 and 0, so everything is read).
CREATE VIEW IF NOT EXISTS {db}.usage_tail_bound AS
SELECT argMax(tail_since, seal_id) AS tail_since, argMax(legacy_drained, seal_id) AS legacy_drained
FROM {db}.usage_seals
WHERE seq = (SELECT max(seq) FROM {db}.usage_seals);
