//! `simulate`: a deterministic media-server simulator. It sends usage events
//! to Kafka or through the gateway (optionally admitting every viewer through
//! the token service first) and prints and writes the exact expected totals.

use anyhow::{bail, Context, Result};
use chrono::{DateTime, Utc};
use clap::{Parser, ValueEnum};
use ingest::{ProducerOptions, UsageProducer};
use simulator::sim_run::{RunOptions, Target, UsageProducerHandle};
use simulator::simulate::SimConfig;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "simulate", version, about = "Media-server simulator with exact expected totals")]
struct Cli {
    #[command(flatten)]
    args: SimArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum TargetKind {
    Kafka,
    Http,
}

#[derive(clap::Args)]
struct SimArgs {
    /// Random seed: the same seed gives the same events
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Prefix of every viewer_id (default `s<seed>`); use distinct ones for runs on one topic
    #[arg(long, default_value = "")]
    run_id: String,
    #[arg(long, default_value = "acct-demo")]
    account: String,
    /// Number of syndication partners (tracking ids)
    #[arg(long, default_value_t = 3)]
    partners: usize,
    /// Viewers per partner
    #[arg(long, default_value_t = 20)]
    viewers_per_partner: usize,
    /// Viewers without a tracking id
    #[arg(long, default_value_t = 5)]
    untracked_viewers: usize,
    #[arg(long, default_value_t = 2)]
    streams: usize,
    /// Start of the simulated period (RFC 3339); default 2026-10-01T00:00:00Z, or now with --realtime
    #[arg(long)]
    start: Option<DateTime<Utc>>,
    /// Length of the simulated period, e.g. 3600s, 90m, 24h, 31d
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    duration: u64,
    /// Seconds between a viewer's reports
    #[arg(long, default_value_t = 10)]
    report_interval: u32,
    /// Shortest and longest session, seconds
    #[arg(long, default_value_t = 120)]
    session_min: u64,
    #[arg(long, default_value_t = 1800)]
    session_max: u64,
    /// Fraction of events re-sent (same viewer_id, seq)
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Fraction of events delivered after their successor
    #[arg(long, default_value_t = 0.0)]
    out_of_order: f64,
    /// Fraction of events held back to the end of the run
    #[arg(long, default_value_t = 0.0)]
    late: f64,
    /// Fraction of extra invalid events
    #[arg(long, default_value_t = 0.0)]
    invalid: f64,
    /// Fraction of extra undecodable messages (Kafka target only)
    #[arg(long, default_value_t = 0.0)]
    poison: f64,
    /// Send to Kafka directly or through the HTTP gateway
    #[arg(long, value_enum, default_value = "kafka")]
    target: TargetKind,
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    #[arg(long, default_value = "viewer-usage")]
    topic: String,
    /// Gateway base URL (with --target http)
    #[arg(long, default_value = "http://127.0.0.1:8088")]
    url: String,
    /// Gateway API key (with --target http). Prefer the environment variable:
    /// process arguments are visible to every user of the machine
    #[arg(long, env = "INGEST_API_KEY", default_value = "")]
    api_key: String,
    /// Events per HTTP request
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Pace events to the wall clock
    #[arg(long)]
    realtime: bool,
    /// Admit every viewer through the token service at this URL first (master
    /// token per partner, self-signed viewer JWT, verification)
    #[arg(long)]
    token_api: Option<String>,
    /// API secret of the token service (prefer the environment variable)
    #[arg(long, env = "API_SECRET", default_value = "")]
    token_secret: String,
    /// Fraction of viewers presenting a forged token (refused: no usage)
    #[arg(long, default_value_t = 0.0)]
    invalid_tokens: f64,
    /// Write the expected totals as JSON here
    #[arg(long)]
    expected_out: Option<PathBuf>,
    /// Print only the summary, no progress
    #[arg(long)]
    quiet: bool,
}

pub(crate) fn parse_duration(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}: use e.g. 90s, 30m, 24h, 31d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad duration unit in {s:?}: use s, m, h or d")),
    };
    Ok(n * mult)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    runtime::telemetry::init_tracing(false);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(simulate(cli.args))
}

async fn simulate(a: SimArgs) -> Result<()> {
    let start = a.start.unwrap_or_else(|| if a.realtime { Utc::now() } else { SimConfig::default_start() });
    let cfg = SimConfig {
        seed: a.seed,
        run_id: a.run_id,
        account_id: a.account,
        partners: a.partners,
        viewers_per_partner: a.viewers_per_partner,
        untracked_viewers: a.untracked_viewers,
        streams: a.streams,
        start_ms: start.timestamp_millis(),
        duration_secs: a.duration,
        report_interval_secs: a.report_interval,
        session_secs: (a.session_min, a.session_max),
        duplicates: a.duplicates,
        out_of_order: a.out_of_order,
        late: a.late,
        invalid: a.invalid,
        poison: a.poison,
        tracking_ids: vec![],
    };
    for (name, f) in [
        ("duplicates", cfg.duplicates),
        ("out-of-order", cfg.out_of_order),
        ("late", cfg.late),
        ("invalid", cfg.invalid),
        ("poison", cfg.poison),
    ] {
        if !(0.0..=1.0).contains(&f) {
            bail!("--{name} must be a fraction between 0 and 1, got {f}");
        }
    }
    let target = match a.target {
        TargetKind::Kafka => {
            let kafka = runtime::kafka::KafkaConfig { brokers: a.brokers, topic: a.topic, ..Default::default() };
            let opts = ProducerOptions {
                check_clock: false,
                linger_ms: 20,
                delivery_timeout: ingest::MEDIA_SERVER_DELIVERY_TIMEOUT,
                ..Default::default()
            };
            Target::Kafka(UsageProducerHandle(UsageProducer::new(&kafka, opts)?))
        }
        TargetKind::Http => {
            if a.api_key.is_empty() {
                bail!("--target http needs --api-key (or INGEST_API_KEY)");
            }
            Target::Http { url: a.url, api_key: a.api_key }
        }
    };
    let tokens =
        a.token_api.map(|url| simulator::tokens::TokenApi { url, secret: a.token_secret.clone(), invalid_fraction: a.invalid_tokens });
    let opts = RunOptions { realtime: a.realtime, batch: a.batch, progress: !a.quiet, tokens, ..Default::default() };
    let expected = simulator::sim_run::run(&cfg, &target, &opts).await?;
    if let Some(path) = &a.expected_out {
        std::fs::write(path, serde_json::to_vec_pretty(&expected)?).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "sent {} messages: {} unique valid events, {} duplicates, {} invalid, {} poison",
        expected.messages_sent, expected.unique_valid_events, expected.duplicates_sent, expected.invalid_sent, expected.poison_sent
    );
    println!("{:<24} {:>16} {:>14} {:>10}", "tracking_id", "bytes_out", "bytes_in", "events");
    for (t, tot) in &expected.by_tracking {
        let name = if t.is_empty() { "(untracked)" } else { t };
        println!("{:<24} {:>16} {:>14} {:>10}", name, tot.bytes_out, tot.bytes_in, tot.events);
    }
    if let Some(path) = &a.expected_out {
        println!("expected totals written to {}", path.display());
    }
    Ok(())
}
