//! `ingest`: the usage gateway, and the re-injection of fixed dead letters.
//! (The media-server simulator is the `simulate` binary of the `simulator` crate.)

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ingest::http::IngestConfig;
use ingest::{ProducerOptions, UsageProducer};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "ingest", version, about = "Usage gateway (HTTP -> Kafka)")]
struct Cli {
    /// TOML config file of `serve` (INGEST__KEY env vars override it)
    #[arg(long, short, global = true, env = "INGEST_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the HTTP gateway until SIGTERM/SIGINT
    Serve,
    /// Re-inject fixed dead letters: NDJSON from `aggregator dead-letters`, each line's `event` is validated and produced
    Replay {
        /// The (fixed) export file
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value = "127.0.0.1:9092")]
        brokers: String,
        #[arg(long, default_value = "viewer-usage")]
        topic: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.cmd {
        Cmd::Serve => {
            let cfg: IngestConfig = runtime::config::load(cli.config.as_deref(), "INGEST")?;
            runtime::telemetry::init_tracing(cfg.json_logs);
            cfg.validate().context("invalid configuration")?;
            rt.block_on(ingest::http::serve(cfg, runtime::shutdown_signal()))
        }
        Cmd::Replay { file, brokers, topic } => {
            runtime::telemetry::init_tracing(false);
            rt.block_on(replay(&file, brokers, topic))
        }
    }
}

async fn replay(file: &std::path::Path, brokers: String, topic: String) -> Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let kafka = runtime::kafka::KafkaConfig { brokers, topic, ..Default::default() };
    let producer = UsageProducer::new(&kafka, ProducerOptions::default())?;
    let (mut sent, mut failed) = (0usize, 0usize);
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("line {}: bad JSON", n + 1))?;
        let source = v["source"].as_str().unwrap_or("?").to_string();
        if v["event"].is_null() {
            eprintln!("line {}: {source}: no decodable event ({}); not re-injected", n + 1, v["reason"].as_str().unwrap_or(""));
            failed += 1;
            continue;
        }
        let ev = match ingest::json::parse_value(n, v["event"].clone()) {
            Ok(ev) => ev,
            Err(errs) => {
                for e in errs {
                    eprintln!("line {}: {source}: {}: {}", n + 1, e.field, e.reason);
                }
                failed += 1;
                continue;
            }
        };
        match producer.send(&ev).await {
            Ok(()) => sent += 1,
            Err(e) => {
                eprintln!("line {}: {source}: {e}", n + 1);
                failed += 1;
            }
        }
    }
    println!("re-injected {sent} events; {failed} lines not re-injected");
    if failed > 0 {
        bail!("{failed} lines could not be re-injected (fix them and run again: duplicates are dropped by (viewer_id, seq))");
    }
    Ok(())
}
