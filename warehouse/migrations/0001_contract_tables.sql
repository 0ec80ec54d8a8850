-- Contract tables (shared/contract/README.md, section 2). Rows are partial sums:
-- read them with sum(...) and GROUP BY.
--
-- src_topic/src_partition/src_offset say which Kafka flush wrote a row:
-- src_offset is the consumer position (next offset to read) of src_partition
-- after the flush. The aggregator derives from them, per table, how far the
-- table already holds the stream (see aggregator/src/lib.rs, "Exactly once").
-- The tables have no PARTITION BY on purpose: one INSERT then writes exactly
-- one part, atomically, which that design needs.

CREATE TABLE IF NOT EXISTS {db}.usage_by_tracking (
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
    src_offset    UInt64,
    inserted_at   DateTime('UTC')
) ENGINE = MergeTree
ORDER BY (tracking_id, window_start, account_id, stream_name, cluster, protocol);

CREATE TABLE IF NOT EXISTS {db}.usage_by_viewer (
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
    src_offset         UInt64,
    inserted_at        DateTime('UTC')
) ENGINE = MergeTree
ORDER BY (tracking_id, window_start, viewer_id);

CREATE TABLE IF NOT EXISTS {db}.usage_dead_letters (
    received_at   DateTime('UTC'),
    source        String,
    reason        String,
    payload       String,
    src_topic     String,
    src_partition UInt32,
    src_offset    UInt64
) ENGINE = MergeTree
ORDER BY received_at;
