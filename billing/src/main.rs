//! `billing`: monthly partner invoices from the usage aggregates.

use anyhow::{Context, Result};
use billing::rates::load_rate_card;
use billing::run;
use billing::store::Store;
use clap::{Parser, Subcommand};
use runtime::ch::ClickHouseConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `billing` settings (file plus `BILLING__...` environment overrides).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct BillingConfig {
    /// ClickHouse endpoint and database with the usage aggregates.
    clickhouse: ClickHouseConfig,
}

#[derive(Parser)]
#[command(name = "billing", version, about = "Monthly partner invoices from the usage aggregates")]
struct Cli {
    /// TOML config file (BILLING__CLICKHOUSE__URL etc. override it)
    #[arg(long, short, global = true, env = "BILLING_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct PeriodArgs {
    /// Billing period, YYYY-MM (calendar month, UTC)
    #[arg(long)]
    period: String,
    /// Rate card (TOML)
    #[arg(long, default_value = "rates.toml")]
    rates: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compute draft invoices; write JSON, HTML, a lines CSV and the run report
    Run {
        #[command(flatten)]
        p: PeriodArgs,
        /// Output folder
        #[arg(long, default_value = "out/billing")]
        out: PathBuf,
    },
    /// Finalise the period's drafts (issued invoices never change afterwards)
    Issue {
        #[command(flatten)]
        p: PeriodArgs,
        #[arg(long, default_value = "out/billing")]
        out: PathBuf,
    },
    /// Prove that raw tables, rollups and invoices agree for the period; exit 1 if not
    Reconcile {
        #[command(flatten)]
        p: PeriodArgs,
    },
    /// Per-partner usage statements (CSV per tracking id per day, per viewer data)
    Statements {
        #[command(flatten)]
        p: PeriodArgs,
        #[arg(long, default_value = "out/billing")]
        out: PathBuf,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let cfg: BillingConfig = runtime::config::load(cli.config.as_deref(), "BILLING")?;
    runtime::telemetry::init_tracing(false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let store = Store::connect(&cfg.clickhouse).await?;
        match cli.cmd {
            Cmd::Run { p, out } => {
                let card = load_rate_card(&p.rates)?;
                let started = std::time::Instant::now();
                let (c, w) = run::run(&store, &card, &p.period, &out).await?;
                print_run("draft", &c, &w, started.elapsed());
            }
            Cmd::Issue { p, out } => {
                let card = load_rate_card(&p.rates)?;
                let started = std::time::Instant::now();
                let (c, w) = run::issue(&store, &card, &p.period, &out).await?;
                print_run("issued", &c, &w, started.elapsed());
            }
            Cmd::Reconcile { p } => {
                let card = load_rate_card(&p.rates)?;
                let checks = run::reconcile(&store, &card, &p.period).await?;
                let mut failed = 0;
                for c in &checks {
                    println!("{} {}: {}", if c.ok { "ok  " } else { "FAIL" }, c.name, c.detail);
                    failed += usize::from(!c.ok);
                }
                if failed > 0 {
                    anyhow::bail!("reconciliation of {} failed: {failed} of {} checks", p.period, checks.len());
                }
                println!("reconciliation of {}: all {} checks agree", p.period, checks.len());
            }
            Cmd::Statements { p, out } => {
                let card = load_rate_card(&p.rates)?;
                for f in run::statements(&store, &card, &p.period, &out).await? {
                    println!("{}", f.display());
                }
            }
        }
        Ok::<(), anyhow::Error>(())
    })
    .context("billing failed")
}

fn print_run(what: &str, c: &run::Computed, w: &run::Written, took: std::time::Duration) {
    println!("{}", billing::render::terminal_table(&c.invoices));
    let r = &c.report;
    println!(
        "period {}: {} bytes in all; untracked {}; unowned tracking ids {}",
        r.period,
        r.total_bytes,
        r.untracked_bytes,
        r.unowned_tracking_ids.len()
    );
    for (t, b) in &r.unowned_tracking_ids {
        println!("  unowned {t}: {b} bytes (not billed)");
    }
    for a in &r.adjustments {
        println!("  adjustment {}: {} late bytes of {} = {} {}", a.partner_id, a.bytes, a.from_period, a.amount, a.currency);
    }
    for a in &r.pending_late_usage {
        println!(
            "  late usage after issue {}: {} bytes of {} ({} {}), billed next period",
            a.partner_id, a.bytes, a.from_period, a.amount, a.currency
        );
    }
    println!("{} invoices ({what}) in {} ms:", c.invoices.len(), took.as_millis());
    for p in &w.invoices_json {
        println!("  {}", p.display());
    }
    for p in &w.invoices_html {
        println!("  {}", p.display());
    }
    println!("  {}\n  {}", w.lines_csv.display(), w.report.display());
}
