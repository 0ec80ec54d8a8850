//! The platform's published Python client (`dolbyio-rest-apis` from PyPI,
//! pinned), unchanged but for its base URL, against `api serve`: create with
//! tracking and region "Auto", read, rotate and edit, page, publish tokens,
//! delete, and a client error the client raises. The client is installed
//! into a virtual environment under `~/.cache/metering/` on first use
//! (needs `python3` with `venv`; `scripts/test` installs them).

use api::config::ApiConfig;
use api::store::Store;
use api::tokens::model::{PublishToken, SubscribeToken};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;

const SECRET: &str = "py-client-7c4e0b9d2a61f3851e90ab4c";
/// The client version this service is checked against.
const CLIENT: &str = "dolbyio-rest-apis==5.0.0";

fn venv() -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = home.join(".cache/metering/pyclient-dolbyio-rest-apis-5.0.0");
    let python = dir.join("bin/python");
    if !python.exists() {
        let ok = Command::new("python3").args(["-m", "venv"]).arg(&dir).status().is_ok_and(|s| s.success());
        assert!(ok, "python3 -m venv failed: install python3 and python3-venv (scripts/test does)");
        let ok = Command::new(dir.join("bin/pip")).args(["install", "-q", "--disable-pip-version-check", CLIENT]).status();
        if !ok.is_ok_and(|s| s.success()) {
            let _ = std::fs::remove_dir_all(&dir);
            panic!("pip install {CLIENT} failed (PyPI reachable?)");
        }
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platforms_python_client_works_unchanged_but_for_the_base_url() {
    let python = tokio::task::spawn_blocking(venv).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = ApiConfig { api_secrets: vec![SECRET.into()], store_path: dir.path().join("t.db"), ..Default::default() };
    let store = Arc::new(Store::open(&cfg.store_path).unwrap());
    let app = api::http::router(&cfg, store.clone()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    // cargo's run-time CARGO_MANIFEST_DIR, not the compiled-in one: the build
    // cache is shared by the clones of a machine (see the tests crate's repo_root)
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    let script = format!("{dir}/tests/platform/client_check.py");
    let out = tokio::process::Command::new(&python)
        .arg(script)
        .env("PLATFORM_BASE_URL", &url)
        .env("PLATFORM_API_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the client failed:\n{stderr}");
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));

    // what the client saw is what the server holds
    let c = &seen["created"];
    let id = c["id"].as_i64().unwrap();
    // the client's model types `trackingId` as a bool (its own quirk): it reads "acme" as true
    assert!(c["tracking"] == "acme" || c["tracking"] == true, "{c}");
    assert_eq!(c["originCluster"].as_str(), Some("Auto"));
    assert_eq!((&c["allowedCountries"], &c["bindIpsOnUsage"]), (&serde_json::json!(["FR", "DE"]), &serde_json::json!(3)));
    assert!(c["expiresOn"].as_str().unwrap().starts_with("2030-01-01T00:00:00"), "{c}");
    let held = store.get::<SubscribeToken>(id).unwrap().expect("the token the client created");
    let r = &seen["rotated"];
    assert_ne!(r["token"], c["token"], "rotated");
    assert_eq!(r["token"].as_str(), Some(held.common.token.as_str()));
    assert_eq!(r["tracking"], c["tracking"], "the tracking id survives the rotation");
    assert_eq!((held.common.label.as_str(), held.tracking_id.as_deref()), ("partner acme (rotated)", Some("acme")));
    assert_eq!(r["streams"], serde_json::json!([["live", false], ["backup", false]]));
    assert_eq!(held.common.rules.denied_countries, ["US"]);
    assert_eq!(seen["read_label"], "partner acme");
    // Name descending, one per page, then an empty page
    assert_eq!(seen["pages"], serde_json::json!([["partner globex"], ["partner acme (rotated)"], []]));
    let p = &seen["publish"];
    assert_eq!(
        (&p["subscribeRequiresAuth"], &p["record"], &p["label"]),
        (&Value::Bool(true), &Value::Bool(true), &Value::from("owner (recording)"))
    );
    assert_eq!(p["listed"], serde_json::json!([p["id"]]));
    // the client sends one restream target as an object: kept as the platform's list
    assert_eq!(p["restream"], serde_json::json!([["rtmp://restream.example/live", "stream-key-1"]]));
    assert!(store.get::<PublishToken>(p["id"].as_i64().unwrap()).unwrap().is_none(), "deleted through the client");
    // a client error in the platform's envelope: the client raises it with the message
    let e = &seen["read_deleted"];
    assert_eq!((&e["status"], &e["reason"]), (&serde_json::json!(400), &serde_json::json!("fail")), "{e}");
    assert!(e["message"].as_str().unwrap().contains("not found"), "{e}");
    assert_eq!(store.list::<SubscribeToken>(Default::default()).unwrap().len(), 1);
    server.abort();
}
