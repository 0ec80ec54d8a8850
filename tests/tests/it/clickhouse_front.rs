//! The HTTP interface the project relies on, asserted the same way against
//! the real 18.16 server and the current engine's front
//! (`scripts/chdb-http`): `scripts/test` runs this file on both, so the front
//! answers as a ClickHouse server does wherever the project looks.

use e2e::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clickhouse::Row)]
struct Row {
    id: u64,
    name: String,
    tags: Vec<i64>,
    at: u32,
}

fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// The error's code: the `X-ClickHouse-Exception-Code` header of current
/// servers (and the front), else the `Code: N` that starts 18.16's text.
async fn error_code(r: reqwest::Response) -> (String, String) {
    let header = r.headers().get("X-ClickHouse-Exception-Code").map(|v| v.to_str().unwrap().to_string());
    let text = r.text().await.unwrap();
    let code = header
        .unwrap_or_else(|| text.strip_prefix("Code: ").and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next()).unwrap_or("").into());
    (code, text)
}

#[tokio::test]
async fn ping_errors_with_their_code_and_a_query_in_the_url() {
    let _stack = e2e::turns::shared().await;
    let url = clickhouse_url();
    let ping = http().get(format!("{url}/ping")).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    assert_eq!(ping.text().await.unwrap(), "Ok.\n");
    let one = http().get(format!("{url}/?query=SELECT%2040%2B2")).send().await.unwrap();
    assert_eq!(one.text().await.unwrap(), "42\n");
    let bad = http().post(format!("{url}/")).body("SELECT * FROM no_such_db.no_such_table").send().await.unwrap();
    assert!(bad.status().is_client_error() || bad.status().is_server_error());
    let (code, text) = error_code(bad).await;
    assert_eq!(code, "81", "unknown database: {text}");
    assert!(text.contains("no_such_db"), "the server's text: {text}");
    // through the crate: the error is an error, with the server's text
    let cfg = runtime::ch::ClickHouseConfig { url: url.clone(), database: "no_such_db".into(), ..Default::default() };
    let err = cfg.client().query("SELECT 1").fetch_one::<u8>().await.unwrap_err();
    assert!(err.to_string().contains("no_such_db"), "{err}");
}

#[tokio::test]
async fn typed_rows_round_trip_in_row_binary_with_the_database_parameter() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let c = db.client();
    c.query("CREATE TABLE front_rows (id UInt64, name String, tags Array(Int64), at DateTime('UTC')) ENGINE = MergeTree ORDER BY id")
        .execute()
        .await
        .unwrap();
    let rows: Vec<Row> = (0..2_000u64)
        .map(|i| Row {
            id: i,
            name: format!("n\t'{i}\"\\é"),
            tags: vec![-(i as i64), i as i64 * 1_000_000_007],
            at: 1_790_000_000 + i as u32,
        })
        .collect();
    // one INSERT, streamed in chunks by the crate
    let mut insert = c.insert::<Row>("front_rows").await.unwrap();
    for r in &rows {
        insert.write(r).await.unwrap();
    }
    insert.end().await.unwrap();
    let back: Vec<Row> = c.query("SELECT ?fields FROM front_rows ORDER BY id").fetch_all().await.unwrap();
    assert_eq!(back, rows);
    // an INSERT with an empty body inserts nothing and succeeds; into a missing table it fails
    let insert = |table: &str| {
        let u = format!("{}/?database={}&query=INSERT%20INTO%20{table}%20FORMAT%20RowBinary", db.url, db.database);
        async move { http().post(u).header("Content-Length", "0").body(Vec::<u8>::new()).send().await.unwrap().status() }
    };
    assert!(insert("front_rows").await.is_success());
    assert!(!insert("no_such_table").await.is_success());
    // bound values are escaped
    let n: u64 = c.query("SELECT count() FROM front_rows WHERE name = ?").bind(&rows[7].name).fetch_one().await.unwrap();
    assert_eq!(n, 1);
    drop_db(&db).await;
}

#[tokio::test]
async fn settings_hold_for_their_query_alone_and_readonly_refuses_writes() {
    let _stack = e2e::turns::shared().await;
    let db = test_db().await;
    let url = &db.url;
    let get = |q: &str, extra: &str| {
        let u = format!("{url}/?database={}{extra}", db.database);
        let q = q.to_string();
        async move { http().post(u).body(q).send().await.unwrap() }
    };
    let setting = "SELECT value FROM system.settings WHERE name = 'max_result_rows'";
    let with = get(setting, "&max_result_rows=7").await;
    assert_eq!(with.text().await.unwrap(), "7\n");
    let without = get(setting, "").await;
    assert_eq!(without.text().await.unwrap(), "0\n", "the setting did not outlive its query");
    get("CREATE TABLE ro (a UInt8) ENGINE = MergeTree ORDER BY a", "").await;
    let refused = get("INSERT INTO ro VALUES (1)", "&readonly=2").await;
    assert!(!refused.status().is_success());
    assert_eq!(error_code(refused).await.0, "164", "READONLY");
    let read = get("SELECT count() FROM ro", "&readonly=2&max_execution_time=30").await;
    assert_eq!(read.text().await.unwrap(), "0\n");
    let written = get("INSERT INTO ro VALUES (1)", "").await;
    assert!(written.status().is_success(), "a later writer is not read-only");
    assert_eq!(get("SELECT count() FROM ro", "").await.text().await.unwrap(), "1\n");
    drop_db(&db).await;
}
