//! `billing`: monthly partner invoices from the usage aggregates.

use anyhow::{Context, Result};
use billing::config::BillingConfig;
use billing::rates::load_rate_card;
use billing::run;
use billing::store::Store;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
    /// Record a manual credit or charge for a partner's period (carried by the next invoice)
    Adjust {
        #[command(flatten)]
        p: PeriodArgs,
        /// Partner id from the rate card
        #[arg(long)]
        partner: String,
        /// A credit (the partner pays less)
        #[arg(long, conflicts_with = "charge", required_unless_present = "charge")]
        credit: bool,
        /// A charge (the partner pays more)
        #[arg(long)]
        charge: bool,
        /// Bytes of the period to credit or charge, priced at the margin of that period
        #[arg(long, conflicts_with = "amount", required_unless_present = "amount")]
        bytes: Option<u64>,
        /// An amount in the partner's currency of that period (positive)
        #[arg(long)]
        amount: Option<rust_decimal::Decimal>,
        /// Why (printed on the invoice)
        #[arg(long)]
        reason: String,
        /// Who records it (audit trail)
        #[arg(long = "by")]
        by: String,
    },
    /// Prove that raw tables, rollups and invoices agree for the period; exit 1 if not
    Reconcile {
        #[command(flatten)]
        p: PeriodArgs,
        /// Count every log row of the period again, not only those since the
        /// previous reconciliation's seal, and compare the minute views whole,
        /// not only their tails (docs/operations.md, "Re-running billing")
        #[arg(long)]
        recount: bool,
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
    // a test hook's variable in a build without the hooks: refuse to run
    runtime::fault::refuse_unless_built_in(&[run::FAULT_ENV]).map_err(anyhow::Error::msg)?;
    let cfg: BillingConfig = runtime::config::load(cli.config.as_deref(), "BILLING")?;
    runtime::telemetry::init_tracing(false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let store = Store::connect(&cfg.clickhouse).await?;
        runtime::rights::check_rights(&cfg.clickhouse, runtime::rights::Access::Write, "billing").await?;
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
                let stale = cfg.issue_lock_stale_secs.unwrap_or(billing::store::ISSUE_LOCK_STALE_SECS);
                let (c, w) = run::issue(&store, &card, &p.period, &out, stale).await?;
                print_run("issued", &c, &w, started.elapsed());
            }
            Cmd::Adjust { p, partner, credit, charge: _, bytes, amount, reason, by } => {
                let card = load_rate_card(&p.rates)?;
                let kind = if credit { billing::ledger::AdjustmentKind::Credit } else { billing::ledger::AdjustmentKind::Charge };
                let m = run::adjust(&store, &card, &partner, &p.period, kind, bytes, amount, &reason, &by).await?;
                let what = match m.amount {
                    Some(a) => format!("{a} (currency of {})", m.period),
                    None => format!("{} bytes", m.bytes),
                };
                println!(
                    "recorded {} {} for {} {}: {what}; reason {:?}, by {:?}; the next invoice issued for {} carries it",
                    m.kind.as_str(),
                    m.adjustment_id,
                    m.partner_id,
                    m.period,
                    m.reason,
                    m.author,
                    m.partner_id
                );
            }
            Cmd::Reconcile { p, recount } => {
                let card = load_rate_card(&p.rates)?;
                let checks = billing::reconcile::reconcile_with(
                    &store,
                    &card,
                    &p.period,
                    if recount {
                        billing::store::log_count::LogCounting::Recount
                    } else {
                        billing::store::log_count::LogCounting::Incremental
                    },
                )
                .await?;
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
        println!("  correction {} {}: {} bytes of {} = {} {}", a.partner_id, a.kind, a.bytes, a.from_period, a.amount, a.currency);
    }
    for a in &r.pending_corrections {
        println!(
            "  pending {} {}: {} bytes of {} ({} {}), carried by the next invoice",
            a.partner_id, a.kind, a.bytes, a.from_period, a.amount, a.currency
        );
    }
    println!("snapshot {}", r.snapshot);
    println!("{} invoices ({what}) in {} ms:", c.invoices.len(), took.as_millis());
    for p in &w.invoices_json {
        println!("  {}", p.display());
    }
    for p in w.invoices_html.iter().chain(&w.invoices_pdf) {
        println!("  {}", p.display());
    }
    println!("  {}\n  {}", w.lines_csv.display(), w.report.display());
}
