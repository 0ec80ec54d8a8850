-- Aggregator state, owned by the aggregator (not for analysts).
--
-- aggregator_checkpoints: one row per partition per completed flush, written
-- after every data table of that flush. `position` is the next offset to read.
-- A partition resumes from its largest position.
CREATE TABLE IF NOT EXISTS {db}.aggregator_checkpoints (
    topic        String,
    partition    UInt32,
    position     UInt64,
    watermark_ms Int64,
    member       String,
    created_at   DateTime('UTC')
) ENGINE = MergeTree
ORDER BY (topic, partition, position);

-- aggregator_dedup: per viewer, the set of `seq` already counted, as flat
-- [start, end] pairs of inclusive ranges, as of consumer position `position`.
-- A row is written for each viewer touched since the previous checkpoint.
-- Partitions older than the dedup horizon can be dropped.
CREATE TABLE IF NOT EXISTS {db}.aggregator_dedup (
    topic         String,
    partition     UInt32,
    position      UInt64,
    viewer_id     String,
    seq_ranges    Array(Int64),
    last_seen_ms  Int64,
    created_at    DateTime('UTC')
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(created_at)
ORDER BY (topic, partition, viewer_id, position);
