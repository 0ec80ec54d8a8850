//! `aggregator`: Kafka usage events -> exact tumbling windows in ClickHouse.

use aggregator::{consumer, core::Core, events, metrics::Metrics, sink::Sink, AggregatorConfig};
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use runtime::events::InternalEvent;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Parser)]
#[command(name = "aggregator", version, about = "Roll usage events from Kafka into exact windows in ClickHouse")]
struct Cli {
    /// TOML config file (every key is optional; AGGREGATOR__SECTION__KEY env vars override it)
    #[arg(long, short, global = true, env = "AGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Consume the usage topic and write windows until SIGTERM/SIGINT
    Run,
    /// Apply the ClickHouse migrations (idempotent) and exit
    Migrate,
    /// Print the effective configuration as TOML and exit
    Config,
    /// Seal what can no longer change: fold the log rows at or below every
    /// partition's latest valid checkpoint into the sealed tables (one seal at
    /// a time; safe to kill at any point). Run it from cron, or with --every
    Seal {
        /// Seal again every this many seconds until SIGTERM/SIGINT (default: once)
        #[arg(long)]
        every: Option<u64>,
        /// A seal lock older than this many seconds is a crashed seal's, and taken over
        /// (longer than the slowest seal: the first seal of 100 M log rows took 10 to 13
        /// minutes on 2 cores; a seal that loses its lock does not commit)
        #[arg(long, default_value_t = 3600)]
        lock_stale_secs: u64,
        /// The tail's time margin: longer than an insert may take from its start
        /// until it is acknowledged (the aggregator's 60 s timeout) plus the clock
        /// difference between ClickHouse servers (docs/clickhouse.md, "Sealed aggregates")
        #[arg(long, default_value_t = aggregator::seal::DEFAULT_TAIL_MARGIN_SECS, value_parser = clap::value_parser!(u32).range(61..))]
        tail_margin_secs: u32,
        /// Consolidate a month of the hourly and daily sealed rows into one row per key
        /// once its rows come from this many seals (0: never; docs/clickhouse.md "Sealed aggregates")
        #[arg(long, default_value_t = aggregator::consolidate::DEFAULT_MIN_SEALS)]
        consolidate_min_seals: u64,
    },
    /// Export dead letters as NDJSON (decoded event included when it decodes), to fix and re-inject with `ingest replay`
    DeadLetters {
        /// Only those received at or after this time (RFC 3339)
        #[arg(long)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Only reasons starting with this (e.g. `invalid`, `too_late`)
        #[arg(long, default_value = "")]
        reason: String,
        /// Output file (default: standard output)
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // a test hook's variable in a build without the hooks: refuse to run
    // rather than run without the fault a test expects
    runtime::fault::refuse_unless_built_in(&[
        aggregator::core::KillAfter::ENV,
        aggregator::seal::SEAL_FAULT_ENV,
        aggregator::seal::SEAL_PAUSE_ENV,
    ])
    .map_err(anyhow::Error::msg)?;
    let cfg: AggregatorConfig = runtime::config::load(cli.config.as_deref(), "AGGREGATOR")?;
    cfg.validate().context("invalid configuration")?;
    runtime::telemetry::init_tracing(cfg.json_logs);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    match cli.cmd {
        Cmd::Config => {
            print!("{}", toml::to_string_pretty(&cfg)?);
            Ok(())
        }
        Cmd::Migrate => {
            let report = rt.block_on(warehouse::migrate(&cfg.clickhouse))?;
            println!("migrations applied: {:?}, already present: {:?}", report.applied, report.already);
            Ok(())
        }
        Cmd::Run => run(cfg, rt),
        Cmd::Seal { every, lock_stale_secs, tail_margin_secs, consolidate_min_seals } => {
            rt.block_on(seal(&cfg, every, SealArgs { lock_stale_secs, tail_margin_secs, consolidate_min_seals }))
        }
        Cmd::DeadLetters { since, reason, out } => {
            let since = since.map(|t| t.timestamp().clamp(0, u32::MAX as i64) as u32).unwrap_or(0);
            let mut w: Box<dyn std::io::Write> = match &out {
                Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?),
                None => Box::new(std::io::stdout()),
            };
            let n = rt.block_on(aggregator::dead_letters::export(&cfg.clickhouse, since, &reason, &mut w))?;
            eprintln!("{n} dead letters exported");
            Ok(())
        }
    }
}

/// The options of `aggregator seal` besides `--every`.
struct SealArgs {
    lock_stale_secs: u64,
    tail_margin_secs: u32,
    consolidate_min_seals: u64,
}

async fn seal(cfg: &AggregatorConfig, every: Option<u64>, args: SealArgs) -> Result<()> {
    use aggregator::seal::SealSkipped;
    let SealArgs { lock_stale_secs, tail_margin_secs, consolidate_min_seals } = args;
    warehouse::migrate(&cfg.clickhouse).await.context("applying ClickHouse migrations")?;
    runtime::rights::check_rights(&cfg.clickhouse, runtime::rights::Access::Write, "aggregator").await?;
    let shutdown = runtime::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        match aggregator::seal::seal_with(&cfg.clickhouse, lock_stale_secs, tail_margin_secs).await {
            Ok(Ok(r)) => eprintln!("seal {} (#{}): {} partitions sealed further, in {} ms", r.seal_id, r.seq, r.moved.len(), r.millis),
            Ok(Err(SealSkipped::NothingNew)) => eprintln!("nothing new to seal"),
            Ok(Err(SealSkipped::Locked)) => eprintln!("another seal is running; not sealing now"),
            Ok(Err(SealSkipped::ClaimsChanged)) => {
                eprintln!("a partition was claimed while sealing; not committed, the next seal covers it")
            }
            Ok(Err(SealSkipped::Superseded)) => {
                eprintln!("another seal committed while this one ran (its lock had gone stale); not committed")
            }
            Err(e) if every.is_some() && e.is_transient() => events::SealFailed { error: &e }.emit(),
            Err(e) => return Err(e).context("sealing"),
        }
        // the dedup days no claim can need (aggregator::compact)
        let horizon = aggregator::state::Limits::from_config(cfg).dedup_horizon;
        match aggregator::compact::drop_stale_dedup(&cfg.clickhouse, horizon).await {
            Ok(Some(d)) if !d.days.is_empty() => {
                eprintln!("dedup: {} day partitions dropped ({:?}); kept what claims need", d.days.len(), d.days)
            }
            Ok(_) => {}
            Err(e) if every.is_some() && e.is_transient() => events::DedupDropFailed { error: &e }.emit(),
            Err(e) => return Err(e).context("dropping stale dedup partitions"),
        }
        // sealed months past their grain's retention
        match aggregator::compact::apply_retention(&cfg.clickhouse, &cfg.retention, chrono::Utc::now().date_naive()).await {
            Ok(r) if !r.dropped.is_empty() => eprintln!("retention: dropped {:?}", r.dropped),
            Ok(_) => {}
            Err(e) if every.is_some() && e.is_transient() => events::RetentionFailed { error: &e }.emit(),
            Err(e) => return Err(e).context("applying retention"),
        }
        // one row per key of a month's hourly and daily sealed rows
        if consolidate_min_seals > 0 {
            match aggregator::consolidate::consolidate(&cfg.clickhouse, consolidate_min_seals, lock_stale_secs).await {
                Ok(Ok(c)) => eprintln!("consolidated (seal {}): {:?}", c.seal_id, c.months),
                Ok(Err(_)) => {}
                Err(e) if every.is_some() && e.is_transient() => events::ConsolidationFailed { error: &e }.emit(),
                Err(e) => return Err(e).context("consolidating sealed rows"),
            }
        }
        let Some(secs) = every else { return Ok(()) };
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(secs.max(1))) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

fn run(cfg: AggregatorConfig, rt: tokio::runtime::Runtime) -> Result<()> {
    rt.block_on(warehouse::migrate(&cfg.clickhouse)).context("applying ClickHouse migrations")?;
    rt.block_on(runtime::rights::check_rights(&cfg.clickhouse, runtime::rights::Access::Write, "aggregator"))?;
    let metrics = Arc::new(Metrics::new());
    let sink = rt.block_on(Sink::connect(&cfg.clickhouse, &cfg.kafka.topic))?;
    if !cfg.metrics_listen.is_empty() {
        let (listen, m, ch) = (cfg.metrics_listen.clone(), metrics.clone(), cfg.clickhouse.client());
        rt.spawn(async move {
            if let Err(e) = aggregator::server::serve(&listen, m, ch).await {
                events::MetricsEndpointFailed { error: &e, listen: &listen }.emit();
            }
        });
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    {
        let shutdown = shutdown.clone();
        rt.spawn(async move {
            runtime::shutdown_signal().await;
            shutdown.store(true, Ordering::Relaxed);
        });
    }
    let core = Core::new(&cfg, sink, metrics).with_kill_after(aggregator::core::KillAfter::from_env()?);
    let consumer = consumer::create_consumer(&cfg, core, rt.handle().clone()).context("creating the Kafka consumer")?;
    let handle = std::thread::Builder::new().name("consume-loop".into()).spawn(move || consumer::run(&cfg, consumer, shutdown))?;
    handle.join().map_err(|_| anyhow::anyhow!("consume loop panicked"))??;
    Ok(())
}
