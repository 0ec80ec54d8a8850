-- The latest seal and the tails' time bound from one row that merges keep
-- at one (see docs/clickhouse.md "The latest seal from a table of its own").
--
-- Measured (`bench scale`, 10 M log rows, a year of seals, 18.16): one
-- stream's daily month took 177 to 200 ms through the views of migration
-- 16 against 83 ms with one seal. On 18.16 every question runs the scalar
-- subqueries that name the latest seal and the time bound several times
-- (once per analysis of each query that names them), and each run of
-- them scanned a year of rows: `max(seq)` of `usage_seal_heads`, and the
-- last 8 rows of `usage_seals` by a condition no index serves. The same
-- views over tables of one seal each answered in 82 ms.
--
-- `usage_seal_head` replaces `usage_seal_heads`: a `ReplacingMergeTree`
-- whose rows share one key, so merges keep the row of the largest `seq`
-- and the table holds one row plus the few not merged yet. Readers take
-- `argMax(..., seq)` over it, which is the latest head whatever has been
-- merged. `aggregator seal` writes a head after each seal's commit, as
-- before (migration 16 says why never before), and now with the tails'
-- time bound of migration 15 computed when it is written: the oldest
-- `tail_since` of the last 8 seals up to it, and whether all 8 found the
-- legacy tables drained. A reader whose analysis meets a newer head than
-- its snapshot (18.16 analyses the tails again once a predicate is pushed
-- into them) gets a bound of 8 seals that include its own, unless 8 seals
-- commit while one question is analysed: the argument of migration 15,
-- unchanged.
CREATE TABLE IF NOT EXISTS {db}.usage_seal_head (
    k          UInt8 DEFAULT 0,
    seq        UInt64,
    covers     UInt64,
    topics     Array(String),
    partitions Array(UInt32),
    sealed_to  Array(UInt64),
    tail_floor DateTime('UTC'),
    drained    UInt8
) ENGINE = ReplacingMergeTree(seq)
ORDER BY k;

-- the latest seal's head with its bound, for a database sealed before this
-- migration (the statement `aggregator seal` runs; a second run of the
-- migration finds it written)
INSERT INTO {db}.usage_seal_head (seq, covers, topics, partitions, sealed_to, tail_floor, drained)
SELECT max(seq), argMax(covers, seq), argMax(topics, seq), argMax(partitions, seq), argMax(sealed_to, seq), min(tail_since), min(legacy_drained)
FROM {db}.usage_seals
WHERE seq + 8 > (SELECT max(seq) FROM {db}.usage_seals)
HAVING argMax(covers, seq) > (SELECT max(covers) FROM {db}.usage_seal_head);

-- As in migration 16, from the latest head.
DROP TABLE IF EXISTS {db}.usage_seal_latest;
CREATE VIEW IF NOT EXISTS {db}.usage_seal_latest AS
SELECT tuple(argMax(covers, seq),
             arrayPushFront(arrayMap((t, p) -> concat(t, '/', toString(p)), argMax(topics, seq), argMax(partitions, seq)), ''),
             arrayPushFront(arrayMap(u -> if(u = 0, toUInt64(0), u + 1), argMax(sealed_to, seq)), toUInt64(0))) AS latest
FROM {db}.usage_seal_head;

-- As in migration 15 (the bound, '' once the legacy tables are drained or
-- else the byte 0xFF, then the byte 0xFF), from the latest head. With no
-- head: 1970 and not drained, so all is read.
DROP TABLE IF EXISTS {db}.usage_seal_floor;
CREATE VIEW IF NOT EXISTS {db}.usage_seal_floor AS
SELECT tuple(argMax(tail_floor, seq), if(argMax(drained, seq) = 1, '', unhex('FF')), unhex('FF')) AS bound
FROM {db}.usage_seal_head;

DROP TABLE IF EXISTS {db}.usage_seal_heads;
