-- Hourly and daily rollups, kept by materialized views from the raw tables.
-- SummingMergeTree merges partial sums in the background: still read them with
-- sum(...) and GROUP BY.
CREATE TABLE IF NOT EXISTS {db}.usage_by_tracking_hourly (
    hour        DateTime('UTC'),
    tracking_id String,
    account_id  String,
    stream_name String,
    cluster     String,
    protocol    String,
    bytes_out   UInt64,
    bytes_in    UInt64,
    events      UInt64
) ENGINE = SummingMergeTree((bytes_out, bytes_in, events))
PARTITION BY toYYYYMM(hour)
ORDER BY (tracking_id, hour, account_id, stream_name, cluster, protocol);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_by_tracking_hourly_mv
TO {db}.usage_by_tracking_hourly AS
SELECT toStartOfHour(window_start) AS hour, tracking_id, account_id, stream_name, cluster, protocol,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM {db}.usage_by_tracking
GROUP BY hour, tracking_id, account_id, stream_name, cluster, protocol;

CREATE TABLE IF NOT EXISTS {db}.usage_by_tracking_daily (
    day         Date,
    tracking_id String,
    account_id  String,
    stream_name String,
    cluster     String,
    protocol    String,
    bytes_out   UInt64,
    bytes_in    UInt64,
    events      UInt64
) ENGINE = SummingMergeTree((bytes_out, bytes_in, events))
PARTITION BY toYYYYMM(day)
ORDER BY (tracking_id, day, account_id, stream_name, cluster, protocol);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_by_tracking_daily_mv
TO {db}.usage_by_tracking_daily AS
SELECT toDate(window_start) AS day, tracking_id, account_id, stream_name, cluster, protocol,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM {db}.usage_by_tracking
GROUP BY day, tracking_id, account_id, stream_name, cluster, protocol;

CREATE TABLE IF NOT EXISTS {db}.usage_by_viewer_daily (
    day                Date,
    tracking_id        String,
    custom_viewer_data String,
    viewer_id          String,
    account_id         String,
    stream_name        String,
    cluster            String,
    bytes_out          UInt64,
    bytes_in           UInt64,
    events             UInt64
) ENGINE = SummingMergeTree((bytes_out, bytes_in, events))
PARTITION BY toYYYYMM(day)
ORDER BY (tracking_id, day, custom_viewer_data, viewer_id, account_id, stream_name, cluster);

CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.usage_by_viewer_daily_mv
TO {db}.usage_by_viewer_daily AS
SELECT toDate(window_start) AS day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster,
       sum(bytes_out) AS bytes_out, sum(bytes_in) AS bytes_in, sum(events) AS events
FROM {db}.usage_by_viewer
GROUP BY day, tracking_id, custom_viewer_data, viewer_id, account_id, stream_name, cluster;
