-- The latest seal, read from a table of its own with small granules (see
-- docs/clickhouse.md "One read of the seals per question").
--
-- Measured (`bench scale`, 10 M log rows, after a year of seals written in
-- one block): every question through a view of migration 15 reads the
-- latest seal several times (on 18.16 once per analysis of each query that
-- names it), and each read took the whole granule that holds the largest
-- `seq` of `usage_seals`: 8,192 rows of arrays with an element per Kafka
-- partition. Merges make such granules of a year of seals in production
-- too, one seal per row.
--
-- `usage_seal_heads` holds a copy of each seal's offsets, written by
-- `aggregator seal` after the seal's commit to `usage_seals` (never before:
-- a reader takes the latest head first and the committed seals after it, so
-- every seal up to the head is in what it reads). A head that is missing
-- (a seal killed between its commit and its head) leaves readers on the
-- previous seal: its tail is longer and the newer seal's rows do not count
-- yet, so the answer is the same; every seal and consolidation first writes
-- the head of the latest seal if it is missing, under the seal lock, before
-- a consolidation could copy the newer `covers`. A consolidation writes no
-- head: its row covers the same as the seal it rewrote. Granules of 16 rows:
-- the latest head is one small granule however many seals there were.
CREATE TABLE IF NOT EXISTS {db}.usage_seal_heads (
    seq        UInt64,
    covers     UInt64,
    topics     Array(String),
    partitions Array(UInt32),
    sealed_to  Array(UInt64)
) ENGINE = MergeTree
ORDER BY seq
SETTINGS index_granularity = 16;

-- the latest seal's head, for a database sealed before this migration (a
-- second run of the migration finds it written)
INSERT INTO {db}.usage_seal_heads (seq, covers, topics, partitions, sealed_to)
SELECT seq, covers, topics, partitions, sealed_to FROM {db}.usage_seals
WHERE seq = (SELECT max(seq) FROM {db}.usage_seals) AND seq > (SELECT max(seq) FROM {db}.usage_seal_heads)
LIMIT 1;

-- As in migration 15, from the latest head: (its covers; `topic/partition`
-- of each partition it names; the first offset of each one's tail, 0 if it
-- is not sealed), each list led by an entry for '' (0). With no head:
-- (0, [''], [0]). The views of migration 15 name it at every question.
DROP TABLE IF EXISTS {db}.usage_seal_latest;
CREATE VIEW IF NOT EXISTS {db}.usage_seal_latest AS
SELECT tuple(argMax(covers, seq),
             arrayPushFront(arrayMap((t, p) -> concat(t, '/', toString(p)), argMax(topics, seq), argMax(partitions, seq)), ''),
             arrayPushFront(arrayMap(u -> if(u = 0, toUInt64(0), u + 1), argMax(sealed_to, seq)), toUInt64(0))) AS latest
FROM {db}.usage_seal_heads
WHERE seq = (SELECT max(seq) FROM {db}.usage_seal_heads);
