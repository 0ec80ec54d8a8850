-- Sealed aggregates (see aggregator/src/seal.rs, and docs/clickhouse.md
-- "Sealed aggregates").
--
-- Rows of the log at or below a partition's latest valid checkpoint are final:
-- every later claim starts at or past that checkpoint, so no fence can move
-- below it. `aggregator seal` folds them, per seal, into summing tables at
-- minute, hour and day grain, tagged with the seal's id, and then writes one
-- commit row to `usage_seals`: the seal's id and, for every partition, the
-- offset up to which it is sealed. Rows of a seal count only once that row
-- exists, so a seal interrupted at any step adds nothing (its rows stay
-- invisible; the next seal takes a new id and covers the same offsets).
--
-- Readers see, under the contract names, the sealed rows of committed seals
-- plus the fenced log rows above the latest commit (the "tail"). The answer
-- equals the unsealed computation at every step.

CREATE TABLE IF NOT EXISTS {db}.usage_seals (
    seal_id    UInt64,
    seq        UInt64,
    topics     Array(String),
    partitions Array(UInt32),
    sealed_to  Array(UInt64),
    sealed_at  DateTime('UTC')
) ENGINE = MergeTree
ORDER BY (seq, seal_id);

CREATE TABLE IF NOT EXISTS {db}.usage_by_tracking_sealed (
    window_start DateTime('UTC'),
    tracking_id  String,
    account_id   String,
    stream_name  String,
    cluster      String,
    protocol     String,
    bytes_out    UInt64,
    bytes_in     UInt64,
    events       UInt64,
    seal_id      UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (tracking_id, window_start, account_id, stream_name, cluster, protocol);

CREATE TABLE IF NOT EXISTS {db}.usage_by_tracking_hourly_sealed (
    hour         DateTime('UTC'),
    tracking_id  String,
    account_id   String,
    stream_name  String,
    cluster      String,
    protocol     String,
    bytes_out    UInt64,
    bytes_in     UInt64,
    events       UInt64,
    seal_id      UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (tracking_id, hour, account_id, stream_name, cluster, protocol);

CREATE TABLE IF NOT EXISTS {db}.usage_by_tracking_daily_sealed (
    day          Date,
    tracking_id  String,
    account_id   String,
    stream_name  String,
    cluster      String,
    protocol     String,
    bytes_out    UInt64,
    bytes_in     UInt64,
    events       UInt64,
    seal_id      UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (tracking_id, day, account_id, stream_name, cluster, protocol);

CREATE TABLE IF NOT EXISTS {db}.usage_by_stream_daily_sealed (
    day          Date,
    account_id   String,
    stream_name  String,
    tracking_id  String,
    cluster      String,
    protocol     String,
    bytes_out    UInt64,
    bytes_in     UInt64,
    events       UInt64,
    seal_id      UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (account_id, stream_name, day, tracking_id, cluster, protocol);

CREATE TABLE IF NOT EXISTS {db}.usage_by_viewer_sealed (
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
    seal_id            UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMM(window_start)
ORDER BY (tracking_id, window_start, custom_viewer_data, viewer_id, account_id, stream_name, cluster);

CREATE TABLE IF NOT EXISTS {db}.usage_by_viewer_daily_sealed (
    day                Date,
    tracking_id        String,
    custom_viewer_data String,
    viewer_id          String,
    account_id         String,
    stream_name        String,
    cluster            String,
    bytes_out          UInt64,
    bytes_in           UInt64,
    events             UInt64,
    seal_id            UInt64
) ENGINE = MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (tracking_id, day, custom_viewer_data, viewer_id, account_id, stream_name, cluster);

DROP TABLE IF EXISTS {db}.usage_by_tracking_hourly;
DROP TABLE IF EXISTS {db}.usage_by_tracking_daily;
DROP TABLE IF EXISTS {db}.usage_by_stream_daily;
DROP TABLE IF EXISTS {db}.usage_by_viewer_daily;
DROP TABLE IF EXISTS {db}.usage_by_tracking;
DROP TABLE IF EXISTS {db}.usage_by_viewer;
DROP TABLE IF EXISTS {db}.usage_by_tracking_tail;
DROP TABLE IF EXISTS {db}.usage_by_viewer_tail;
DROP TABLE IF EXISTS {db}.usage_tail_fences;
DROP TABLE IF EXISTS {db}.usage_sealed_to;

-- Per partition: the offset up to which the latest commit sealed it (no row:
-- nothing sealed).
CREATE VIEW IF NOT EXISTS {db}.usage_sealed_to AS
SELECT topic AS src_topic, partition AS src_partition, upto AS sealed_to
FROM (SELECT argMax(topics, seq) AS ts, argMax(partitions, seq) AS ps, argMax(sealed_to, seq) AS us FROM {db}.usage_seals)
ARRAY JOIN ts AS topic, ps AS partition, us AS upto;

-- Per claimed epoch: its fence, and where its partition is sealed (0: not
-- sealed; a seal covers at least offset 1, and its first covers offset 0 too).
CREATE VIEW IF NOT EXISTS {db}.usage_tail_fences AS
SELECT src_topic, src_partition, src_epoch, fence, sealed_to
FROM (SELECT topic AS src_topic, partition AS src_partition, epoch AS src_epoch, fence FROM {db}.aggregator_fences) AS f
ALL LEFT JOIN (SELECT src_topic, src_partition, sealed_to FROM {db}.usage_sealed_to) AS s
USING (src_topic, src_partition);

-- The tails: rows of the log that count and are not sealed yet. The first
-- condition is the cheap one, read first (PREWHERE): a row of a sealed
-- partition at or below the smallest offset any partition is sealed to is
-- in no tail, so the sealed bulk of the log is skipped on three small
-- columns. (Rows of partitions the latest seal does not name are all read.)
CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_tail AS
SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT * FROM {db}.usage_by_tracking_log
    PREWHERE src_offset > (SELECT min(sealed_to) FROM {db}.usage_sealed_to)
          OR (src_topic, src_partition) GLOBAL NOT IN (SELECT src_topic, src_partition FROM {db}.usage_sealed_to)
) AS l
ALL INNER JOIN (SELECT src_topic, src_partition, src_epoch, fence, sealed_to FROM {db}.usage_tail_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence AND (sealed_to = 0 OR src_offset > sealed_to);

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer_tail AS
SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM (
    SELECT * FROM {db}.usage_by_viewer_log
    PREWHERE src_offset > (SELECT min(sealed_to) FROM {db}.usage_sealed_to)
          OR (src_topic, src_partition) GLOBAL NOT IN (SELECT src_topic, src_partition FROM {db}.usage_sealed_to)
) AS l
ALL INNER JOIN (SELECT src_topic, src_partition, src_epoch, fence, sealed_to FROM {db}.usage_tail_fences) AS f
USING (src_topic, src_partition, src_epoch)
WHERE src_offset <= fence AND (sealed_to = 0 OR src_offset > sealed_to);

-- The contract views: sealed rows of committed seals, then the tail. Sealed
-- rows carry no source (src_topic '', the other src_ columns 0).
CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking AS
SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
       '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_epoch, toUInt64(0) AS src_offset, toDateTime(0, 'UTC') AS inserted_at
FROM {db}.usage_by_tracking_sealed
WHERE seal_id GLOBAL IN (SELECT seal_id FROM {db}.usage_seals)
UNION ALL
SELECT window_start, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM {db}.usage_by_tracking_tail;

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer AS
SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
       '' AS src_topic, toUInt32(0) AS src_partition, toUInt64(0) AS src_epoch, toUInt64(0) AS src_offset, toDateTime(0, 'UTC') AS inserted_at
FROM {db}.usage_by_viewer_sealed
WHERE seal_id GLOBAL IN (SELECT seal_id FROM {db}.usage_seals)
UNION ALL
SELECT window_start, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events,
       src_topic, src_partition, src_epoch, src_offset, inserted_at
FROM {db}.usage_by_viewer_tail;

CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_hourly AS
SELECT hour, tracking_id, account_id, stream_name, cluster, protocol,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM (
    SELECT hour, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events
    FROM {db}.usage_by_tracking_hourly_sealed
    WHERE seal_id GLOBAL IN (SELECT seal_id FROM {db}.usage_seals)
    UNION ALL
    SELECT toStartOfHour(window_start) AS hour, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events
    FROM {db}.usage_by_tracking_tail
)
GROUP BY hour, tracking_id, account_id, stream_name, cluster, protocol;

CREATE VIEW IF NOT EXISTS {db}.usage_by_tracking_daily AS
SELECT day, tracking_id, account_id, stream_name, cluster, protocol,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM (
    SELECT day, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events
    FROM {db}.usage_by_tracking_daily_sealed
    WHERE seal_id GLOBAL IN (SELECT seal_id FROM {db}.usage_seals)
    UNION ALL
    SELECT toDate(window_start) AS day, tracking_id, account_id, stream_name, cluster, protocol, bytes_out, bytes_in, events
    FROM {db}.usage_by_tracking_tail
)
GROUP BY day, tracking_id, account_id, stream_name, cluster, protocol;

-- The daily rollup keyed by stream: for the stream routes.
CREATE VIEW IF NOT EXISTS {db}.usage_by_stream_daily AS
SELECT day, account_id, stream_name, tracking_id, cluster, protocol,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM (
    SELECT day, account_id, stream_name, tracking_id, cluster, protocol, bytes_out, bytes_in, events
    FROM {db}.usage_by_stream_daily_sealed
    WHERE seal_id GLOBAL IN (SELECT seal_id FROM {db}.usage_seals)
    UNION ALL
    SELECT toDate(window_start) AS day, account_id, stream_name, tracking_id, cluster, protocol, bytes_out, bytes_in, events
    FROM {db}.usage_by_tracking_tail
)
GROUP BY day, account_id, stream_name, tracking_id, cluster, protocol;

CREATE VIEW IF NOT EXISTS {db}.usage_by_viewer_daily AS
SELECT day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM (
    SELECT day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events
    FROM {db}.usage_by_viewer_daily_sealed
    WHERE seal_id GLOBAL IN (SELECT seal_id FROM {db}.usage_seals)
    UNION ALL
    SELECT toDate(window_start) AS day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster, bytes_out, bytes_in, events
    FROM {db}.usage_by_viewer_tail
)
GROUP BY day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster;
