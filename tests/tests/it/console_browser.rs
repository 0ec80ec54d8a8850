//! The web console in a real browser (headless Chromium through
//! chromedriver, WebDriver via `fantoccini`) against `api serve` on the real
//! stack: simulated usage through Kafka and the aggregator, billing drafts
//! for the period, then what a content owner and a partner do in the
//! console. Screenshots are saved to `out/test-artifacts/console/`.
//!
//! Needs `chromium` and `chromium-driver` (Debian packages; `scripts/test`
//! installs them).

use api::config::{ApiConfig, ScopedSecret};
use api::store::Store;
use api::tokens::model::SubscribeToken;
use e2e::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use simulator::simulate::{Expected, SimConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

const ADMIN: &str = "console-admin-5d1f0e7a9c3b48d2a6e4";
const PARTNER: &str = "console-partner-8b2c6e1f4a7d09e35c1b";
const WAIT: Duration = Duration::from_secs(20);

struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_chrome(downloads: &Path) -> (Driver, Client) {
    let port = free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver; scripts/test installs it)");
    let driver = Driver(child);
    let status = format!("http://127.0.0.1:{port}/status");
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !http.get(&status).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(std::time::Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1366,900"],
            "prefs": {"download.default_directory": downloads.to_str().unwrap(), "download.prompt_for_download": false},
        }),
    );
    caps.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a Chromium session");
    (driver, client)
}

/// chromedriver's browser log (what the browser's console shows), read and cleared.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

struct Page {
    c: Client,
    base: String,
    shots: PathBuf,
    n: u32,
}

impl Page {
    async fn shot(&mut self, name: &str) {
        self.n += 1;
        let png = self.c.screenshot().await.unwrap();
        std::fs::write(self.shots.join(format!("{:02}-{name}.png", self.n)), png).unwrap();
    }
    async fn set(&self, id: &str, value: &str) {
        // inputs of type date / datetime-local take their value from script, not keystrokes (locale-independent)
        self.c
            .execute("const e = document.getElementById(arguments[0]); e.value = arguments[1];", vec![json!(id), json!(value)])
            .await
            .unwrap();
    }
    async fn click(&self, css: &str) {
        self.c.wait().at_most(WAIT).for_element(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).click().await.unwrap();
    }
    async fn text(&self, css: &str) -> String {
        self.c.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css}: {e}")).text().await.unwrap()
    }
    /// Wait until `script` (an expression) is truthy.
    async fn until(&self, what: &str, script: &str) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let v = self.c.execute(&format!("return !!({script});"), vec![]).await.unwrap();
            if v == Value::Bool(true) {
                return;
            }
            let msg = self.c.execute("return document.getElementById('message').textContent", vec![]).await.unwrap();
            assert!(std::time::Instant::now() < deadline, "{what}: timed out (message: {msg})");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    /// The browser console's errors since the last call (and clear them).
    async fn console_errors(&self) -> Vec<String> {
        let log = self.c.issue_cmd(BrowserLog).await.expect("browser log");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
    /// Neither script errors nor any other error in the browser's console.
    async fn no_errors(&self, when: &str) {
        let errs = self.c.execute("return window.__consoleErrors", vec![]).await.unwrap();
        assert_eq!(errs, json!([]), "script errors in the console {when}");
        assert_eq!(self.console_errors().await, Vec::<String>::new(), "errors in the browser console {when}");
    }
    async fn sign_in(&self, secret: &str) {
        self.c.goto(&self.base).await.unwrap();
        self.until("sign-in form", "!document.getElementById('sign-in').hidden").await;
        self.c.find(Locator::Id("secret")).await.unwrap().send_keys(secret).await.unwrap();
        self.click("#sign-in-form button[type=submit]").await;
        self.until("signed in", "!document.getElementById('tabs').hidden").await;
    }
    async fn sign_out(&self) {
        self.click("#sign-out").await;
        self.until("signed out", "!document.getElementById('sign-in').hidden").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_real_browser() {
    let _stack = e2e::turns::shared().await;
    let s = Scene::new().await;
    let shots = e2e::repo_root().join("out/test-artifacts/console");
    std::fs::create_dir_all(&shots).unwrap();
    let (_driver, c) = start_chrome(&s.downloads).await;
    let mut p = Page { c, base: s.base.clone(), shots, n: 0 };
    // the content owner
    owner_is_refused_a_wrong_secret_then_signs_in(&mut p, &s).await;
    owner_creates_signs_rotates_and_edits_a_subscribe_token(&mut p, &s).await;
    owner_creates_a_publish_token_requiring_subscribe_auth(&p).await;
    owner_sees_the_exact_usage_of_two_partners(&mut p, &s).await;
    owner_filters_and_downloads_viewer_records(&mut p, &s).await;
    owner_sees_the_invoices_and_reconciles_the_period(&mut p, &s).await;
    owner_sees_each_allowance_and_its_notification(&mut p, &s).await;
    p.no_errors("as the owner").await;
    p.sign_out().await;
    // a partner: its own data only
    a_partner_sees_its_own_usage_invoice_and_allowance_only(&mut p, &s).await;
    a_partner_can_neither_fetch_another_invoice_nor_forge_a_change(&p, &s).await;
    p.c.close().await.unwrap();
    s.clean_up().await;
}

/// What the console shows: usage through Kafka and the aggregator (the
/// simulation's October, and 1,000,000 bytes of the first partner this
/// month), the period's billing drafts, and `api serve` on them with an
/// allowance file.
struct Scene {
    db: runtime::ch::ClickHouseConfig,
    exp: Expected,
    invoices: Vec<billing::invoice::Invoice>,
    /// The partner's tracking id (acme-web) and another partner's (globex-web).
    mine: String,
    theirs: String,
    store: Arc<Store>,
    base: String,
    /// This month, as allowance notifications name it.
    period: String,
    server: tokio::task::JoinHandle<()>,
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    downloads: PathBuf,
}

impl Scene {
    async fn new() -> Scene {
        let topic = unique("console");
        create_topic(&topic, 2).await;
        let db = test_db().await;
        let start = chrono::DateTime::parse_from_rfc3339("2026-10-31T20:00:00Z").unwrap().timestamp_millis();
        let cfg = SimConfig {
            seed: 5,
            run_id: topic.clone(),
            partners: 3,
            viewers_per_partner: 6,
            untracked_viewers: 2,
            streams: 2,
            start_ms: start,
            duration_secs: 6 * 3600,
            session_secs: (60, 1800),
            ..Default::default()
        };
        let exp: Expected = simulate_to_kafka(&cfg, &topic).await;
        // and this month's usage of the first partner's tracking id: 4 x 250,000
        // bytes, half of the allowance the console shows below
        let this_month = cfg.tracking_ids()[0].clone();
        let now = chrono::Utc::now();
        let month_start =
            chrono::Datelike::with_day(&now.date_naive(), 1).unwrap().and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_millis();
        let at = (now.timestamp_millis() - 120_000).max(month_start);
        let extra = producer(&topic);
        for seq in 0..4 {
            let e = schemas::ViewerUsage {
                tracking_id: Some(this_month.clone().into()),
                ..usage_event(&format!("{topic}-now"), seq, at, 250_000)
            };
            extra.send(&e).await.unwrap();
        }
        extra.flush(Duration::from_secs(10)).unwrap();
        let mut agg = spawn_aggregator(&topic, &db, &unique("g"), &[]);
        let all = exp.unique_valid_events + 4;
        assert_eq!(wait_for_events(&db, all, Duration::from_secs(180)).await, all);
        agg.terminate(Duration::from_secs(30));
        let rates_path = e2e::repo_root().join("deploy/rates.example.toml");
        let card = billing::rates::load_rate_card(&rates_path).unwrap();
        let billing_store = billing::store::Store::connect(&db).await.unwrap();
        let billing_out = tempfile_dir("console-billing");
        let (computed, _) = billing::run::run(&billing_store, &card, "2026-10", &billing_out).await.expect("billing run");
        assert_eq!(computed.invoices.len(), 3);

        let tracked: Vec<String> = cfg.tracking_ids();
        let (mine, theirs) = (tracked[0].clone(), tracked[1].clone()); // acme-web, globex-web
        let store_path = std::env::temp_dir().join(format!("{}.db", unique("console_tokens")));
        let entitlements_path = std::env::temp_dir().join(format!("{}.toml", unique("console_entitlements")));
        std::fs::write(
            &entitlements_path,
            "[[partner]]\nid = \"acme\"\nbytes = \"2000000\"\n[[partner]]\nid = \"globex\"\nbytes = \"1000000000\"\n",
        )
        .unwrap();
        let api_cfg = ApiConfig {
            api_secrets: vec![ADMIN.into()],
            store_path: store_path.clone(),
            clickhouse: db.clone(),
            scoped_secrets: vec![ScopedSecret { secret: PARTNER.into(), tracking_ids: vec![mine.clone()] }],
            billing_rates: Some(rates_path),
            entitlements: Some(entitlements_path.clone()),
            entitlements_refresh_secs: 1,
            ..Default::default()
        };
        let store = Arc::new(Store::open(&store_path).unwrap());
        let app = api::http::router(&api_cfg, store.clone()).unwrap();
        let (url, server) = serve_router(app).await;
        let base = format!("{url}/");

        let downloads = tempfile_dir("console-downloads");
        Scene {
            db,
            exp,
            invoices: computed.invoices,
            mine,
            theirs,
            store,
            base,
            period: now.format("%Y-%m").to_string(),
            server,
            files: vec![store_path, entitlements_path],
            dirs: vec![downloads.clone(), billing_out],
            downloads,
        }
    }

    async fn clean_up(self) {
        self.server.abort();
        for f in &self.files {
            let _ = std::fs::remove_file(f);
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
        drop_db(&self.db).await;
    }
}

/// A wrong secret gets a message (not raw JSON); the session cookie is HttpOnly.
async fn owner_is_refused_a_wrong_secret_then_signs_in(p: &mut Page, s: &Scene) {
    p.c.goto(&s.base).await.unwrap();
    p.until("sign-in form", "!document.getElementById('sign-in').hidden").await;
    // a wrong secret: a message, not raw JSON
    p.c.find(Locator::Id("secret")).await.unwrap().send_keys("not-the-secret-0000000000000000").await.unwrap();
    p.click("#sign-in-form button[type=submit]").await;
    p.until("refusal shown", "!document.getElementById('message').hidden").await;
    let m = p.text("#message").await;
    assert!(m.contains("unknown API secret") && !m.contains('{'), "{m}");
    p.shot("sign-in-refused").await;
    let refused = p.console_errors().await;
    assert!(refused.len() == 1 && refused[0].contains("401"), "only the refused sign-in: {refused:?}");
    p.sign_in(ADMIN).await;
    assert_eq!(p.text("#who-role").await, "Admin");
    // the session cookie is HttpOnly: not visible to scripts
    assert_eq!(p.c.execute("return document.cookie", vec![]).await.unwrap(), json!(""));
}

/// A token with a tracking id, listed; a viewer token signed from it verifies with its attribution; rotated, relabelled.
async fn owner_creates_signs_rotates_and_edits_a_subscribe_token(p: &mut Page, s: &Scene) {
    let store = &s.store;
    // create a token with a tracking id; it is listed
    p.until("tokens tab", "!document.getElementById('tab-tokens').hidden").await;
    p.c.find(Locator::Id("token-label")).await.unwrap().send_keys("Browser partner").await.unwrap();
    p.c.find(Locator::Id("token-streams")).await.unwrap().send_keys("live").await.unwrap();
    p.c.find(Locator::Id("token-tracking")).await.unwrap().send_keys("browser-partner").await.unwrap();
    p.click("#token-submit").await;
    p.until("token listed", "[...document.querySelectorAll('#tokens-table td.tracking')].some(td => td.textContent === 'browser-partner')")
        .await;
    let held = store.list::<SubscribeToken>(Default::default()).unwrap();
    let created = held.iter().find(|t| t.tracking_id.as_deref() == Some("browser-partner")).expect("created in the store");
    assert_eq!((created.common.label.as_str(), created.common.origin_cluster.as_str()), ("Browser partner", "Auto"));
    p.shot("token-created").await;

    // sign a test viewer token for it; it verifies with the partner's attribution
    p.c.execute("document.getElementById('sign-parent').value = arguments[0];", vec![json!(created.common.id.to_string())]).await.unwrap();
    p.c.find(Locator::Id("sign-cvd")).await.unwrap().send_keys("{\"user\":\"u-browser\"}").await.unwrap();
    p.click("#sign-form button[type=submit]").await;
    p.until("signed", "document.getElementById('signed-token').value.split('.').length === 3").await;
    let jwt = p.c.execute("return document.getElementById('signed-token').value", vec![]).await.unwrap();
    let verdict = api::tokens::verify::verify(store.as_ref(), jwt.as_str().unwrap(), "live", "fra-1", chrono::Utc::now()).unwrap();
    assert_eq!(verdict.tracking_id.as_deref(), Some("browser-partner"));
    assert_eq!(verdict.custom_viewer_data.as_deref(), Some("{\"user\":\"u-browser\"}"));
    p.click("#copy-token").await;
    p.until("copied", "!document.getElementById('copied').hidden").await;
    p.shot("viewer-token-signed").await;

    // rotate it (two clicks), then edit its label
    let row = format!("#tokens-table tr[data-token-id='{}']", created.common.id);
    p.click(&format!("{row} button:nth-of-type(2)")).await;
    p.click(&format!("{row} button:nth-of-type(2)")).await;
    p.until("rotated", "document.getElementById('message').textContent.includes('rotated')").await;
    assert_ne!(store.get::<SubscribeToken>(created.common.id).unwrap().unwrap().common.token, created.common.token, "rotated in the store");
    p.click(&format!("{row} button:nth-of-type(1)")).await;
    p.until("edit form", "document.getElementById('token-submit').textContent === 'Save'").await;
    p.set("token-label", "Browser partner (renamed)").await;
    p.click("#token-submit").await;
    p.until("saved", "document.getElementById('message').textContent.includes('saved')").await;
    assert_eq!(store.get::<SubscribeToken>(created.common.id).unwrap().unwrap().common.label, "Browser partner (renamed)");
}

async fn owner_creates_a_publish_token_requiring_subscribe_auth(p: &Page) {
    // publish tokens show subscribeRequiresAuth
    p.click("nav button[data-tab=publish]").await;
    p.c.find(Locator::Id("publish-label")).await.unwrap().send_keys("owner").await.unwrap();
    p.c.find(Locator::Id("publish-streams")).await.unwrap().send_keys("live").await.unwrap();
    p.click("#publish-auth").await;
    p.click("#publish-form button[type=submit]").await;
    p.until(
        "publish token listed",
        "[...document.querySelectorAll('#publish-table td.requires-auth')].some(td => td.textContent === 'yes')",
    )
    .await;
    p.no_errors("on the token pages").await;
}

/// The chart and the exact totals of the simulated partners.
async fn owner_sees_the_exact_usage_of_two_partners(p: &mut Page, s: &Scene) {
    let exp = &s.exp;
    let (mine, theirs) = (s.mine.clone(), s.theirs.clone());
    // usage: the chart and the exact totals of the simulated partners
    p.click("nav button[data-tab=usage]").await;
    p.set("usage-ids", &format!("{mine}, {theirs}")).await;
    p.set("usage-start", "2026-10-31").await;
    p.set("usage-stop", "2026-11-02").await;
    p.click("#usage-form button[type=submit]").await;
    p.until("chart", "document.querySelectorAll('#usage-svg path').length === 2").await;
    for t in [&mine, &theirs] {
        let cell = p.c.find(Locator::Css(&format!("#usage-totals tr[data-tracking-id='{t}'] td.bytes-out"))).await.unwrap();
        let shown: u64 = cell.attr("data-bytes").await.unwrap().unwrap().parse().unwrap();
        assert_eq!(shown, exp.by_tracking[t].bytes_out, "total of {t} in the console");
        assert_eq!(cell.text().await.unwrap().replace(',', "").parse::<u64>().unwrap(), exp.by_tracking[t].bytes_out);
    }
    p.until("per-stream totals", "document.querySelectorAll('#stream-totals tbody tr').length > 0").await;
    p.shot("usage").await;
}

/// Filter, table, and a CSV download that adds up to the partner's usage.
async fn owner_filters_and_downloads_viewer_records(p: &mut Page, s: &Scene) {
    let (exp, mine) = (&s.exp, s.mine.clone());
    // viewer records: filter, table, CSV download
    p.click("nav button[data-tab=records]").await;
    p.set("records-tracking", &mine).await;
    p.set("records-start", "2026-10-31T00:00").await;
    p.set("records-end", "2026-11-02T00:00").await;
    p.click("#records-form button[type=submit]").await;
    let viewers: Vec<_> = exp.by_viewer.values().filter(|v| v.tracking_id == mine).collect();
    p.until("records", &format!("document.querySelectorAll('#records-table tbody tr').length === {}", viewers.len())).await;
    p.shot("viewer-records").await;
    p.click("#records-csv").await;
    let file = s.downloads.join("viewer-records.csv");
    let deadline = std::time::Instant::now() + WAIT;
    while !file.exists() {
        assert!(std::time::Instant::now() < deadline, "the CSV was not downloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let csv = std::fs::read_to_string(&file).unwrap();
    let mut lines = csv.lines();
    assert!(lines.next().unwrap().starts_with("StartTime,EndTime,ClientId"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), viewers.len(), "one CSV row per session");
    let bytes_out: u64 = rows.iter().map(|l| l.rsplit(',').nth(1).unwrap().parse::<u64>().unwrap()).sum();
    assert_eq!(bytes_out, exp.by_tracking[&mine].bytes_out, "the CSV adds up to the partner's usage");
}

/// Periods, partners, status, totals and links; the reconciliation agrees.
async fn owner_sees_the_invoices_and_reconciles_the_period(p: &mut Page, s: &Scene) {
    let base = &s.base;
    // invoices: periods, partners, status, totals, links; the reconciliation
    p.click("nav button[data-tab=invoices]").await;
    p.until("invoices", "document.querySelectorAll('#invoices-table tr[data-invoice]').length === 3").await;
    for inv in &s.invoices {
        let row = format!("#invoices-table tr[data-invoice='{}']", inv.invoice_number);
        assert_eq!(p.text(&format!("{row} td.total")).await, format!("{} {}", inv.total, inv.currency));
        assert_eq!(p.text(&format!("{row} td.status-draft")).await, "draft");
        let href = p.c.find(Locator::Css(&format!("{row} a"))).await.unwrap().attr("href").await.unwrap().unwrap();
        let html = reqwest::Client::new().get(format!("{base}{}", href.trim_start_matches('/'))).bearer_auth(ADMIN).send().await.unwrap();
        assert_eq!(html.status().as_u16(), 200);
        assert!(html.text().await.unwrap().contains(&inv.invoice_number));
    }
    p.set("reconcile-period", "2026-10").await;
    p.click("#reconcile-form button[type=submit]").await;
    p.until("reconciled", "document.getElementById('reconcile-result').textContent.includes('checks agree')").await;
    p.shot("invoices").await;
}

/// A bar per allowance at its use, a line per threshold; the notification of 50%.
async fn owner_sees_each_allowance_and_its_notification(p: &mut Page, s: &Scene) {
    let period = &s.period;
    // allowances: a bar per allowance at its use, a line per threshold; the notification of 50%
    p.click("nav button[data-tab=allowances]").await;
    p.until("allowances", "document.querySelectorAll('#allowances-table tr[data-allowance]').length === 2").await;
    assert!(p.text("#allowances-table tr[data-allowance='acme/-'] td.used").await.ends_with("(50.00%)"));
    assert!(p.text("#allowances-table tr[data-allowance='globex/-'] td.used").await.ends_with("(0.00%)"));
    let width = p.c.execute("return document.querySelector(\"tr[data-allowance='acme/-'] .fill\").style.width", vec![]).await.unwrap();
    assert_eq!(width, json!("50%"));
    let ticks =
        p.c.execute("return [...document.querySelectorAll(\"tr[data-allowance='acme/-'] .tick\")].map(t => t.style.left)", vec![])
            .await
            .unwrap();
    assert_eq!(ticks, json!(["50%", "80%", "100%"]));
    p.until(
        "notification",
        &format!("document.querySelector(\"#notifications-table tr[data-notification='acme/-/{period}/50'] td.status-logged\")"),
    )
    .await;
    p.shot("allowances").await;
}

async fn a_partner_sees_its_own_usage_invoice_and_allowance_only(p: &mut Page, s: &Scene) {
    let (mine, theirs) = (s.mine.clone(), s.theirs.clone());
    p.sign_in(PARTNER).await;
    assert!(p.text("#who-role").await.contains(&mine));
    p.no_errors("signing in as a partner").await;
    let hidden = p.c.execute("return document.querySelector('nav button[data-tab=tokens]').hidden", vec![]).await.unwrap();
    assert_eq!(hidden, json!(true), "no token pages for a partner");
    p.set("usage-ids", &theirs).await;
    p.set("usage-start", "2026-10-31").await;
    p.set("usage-stop", "2026-11-02").await;
    p.click("#usage-form button[type=submit]").await;
    p.until("refused", "document.getElementById('message').textContent.includes('may not read')").await;
    let m = p.text("#message").await;
    assert!(!m.contains('{') && m.contains(&theirs), "a message, not raw JSON: {m}");
    p.shot("partner-refused").await;
    let refused = p.console_errors().await;
    assert!(!refused.is_empty() && refused.iter().all(|e| e.contains("403")), "only the refused requests: {refused:?}");
    p.set("usage-ids", &mine).await;
    p.click("#usage-form button[type=submit]").await;
    p.until("own usage", &format!("document.querySelector(\"#usage-totals tr[data-tracking-id='{mine}'] td.bytes-out\")")).await;
    p.click("nav button[data-tab=invoices]").await;
    p.until("own invoice", "document.querySelectorAll('#invoices-table tr[data-invoice]').length === 1").await;
    let own = s.invoices.iter().find(|i| i.partner_id == "acme").unwrap();
    assert!(p.c.find(Locator::Css(&format!("tr[data-invoice='{}']", own.invoice_number))).await.is_ok());
    p.shot("partner-invoices").await;
    // its own allowance only
    p.click("nav button[data-tab=allowances]").await;
    p.until("own allowance", "document.querySelectorAll('#allowances-table tr[data-allowance]').length === 1").await;
    assert!(p.c.find(Locator::Css("#allowances-table tr[data-allowance='acme/-']")).await.is_ok());
    p.shot("partner-allowances").await;
    p.no_errors("as a partner").await;
}

/// Another partner's invoice file is refused to the session, and so is a state change without the CSRF token.
async fn a_partner_can_neither_fetch_another_invoice_nor_forge_a_change(p: &Page, s: &Scene) {
    // another partner's invoice file is refused to this session
    let other = s.invoices.iter().find(|i| i.partner_id != "acme").unwrap();
    let status =
        p.c.execute_async(
            "fetch('/console/invoices/' + arguments[0] + '.json').then(r => arguments[1](r.status))",
            vec![json!(other.invoice_number)],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(400), "another partner's invoice");
    // a forged state change without the CSRF token is refused even with the session cookie
    let status =
        p.c.execute_async("fetch('/console/sign', {method: 'POST', body: '{}'}).then(r => arguments[0](r.status))", vec![]).await.unwrap();
    assert_eq!(status, json!(403), "no CSRF token");
}

fn tempfile_dir(prefix: &str) -> PathBuf {
    let d = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&d).unwrap();
    d
}
