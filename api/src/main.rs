//! `api`: the token service and the viewer-token signer.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "api", version, about = "Subscribe/Publish token service and viewer-token signer")]
struct Cli {
    /// TOML config file of `serve` (API__KEY env vars override it)
    #[arg(long, short, global = true, env = "API_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the token REST API until SIGTERM/SIGINT
    #[command(long_about = "Run the token REST API until SIGTERM/SIGINT.

Configuration (TOML file via --config, each key overridable by API__<KEY>):
  listen       address to listen on (default 127.0.0.1:8090)
  api_secrets  admin secrets for `Authorization: Bearer <secret>`, each at least
               32 characters; required, e.g. API__API_SECRETS='[\"'$(openssl rand -hex 32)'\"]'
  verify_secrets  secrets that may only verify viewer tokens (media servers)
  scoped_secrets  [{secret, tracking_ids}]: statistics of those tracking ids only
  untracked_parent_sets_tracking  let viewer tokens of untracked master tokens set a
               trackingId (the platform's rule; default false)
  max_viewer_token_secs  longest viewer-token lifetime (default 604800, 7 days)
  store_path   SQLite file holding the tokens (default .stack/api/tokens.db;
               parent directories are created)
  json_logs    log as JSON lines (default false)")]
    Serve,
    /// Viewer tokens
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Print a self-signed viewer JWT (HS256, keyed with the parent token string)
    Sign(SignArgs),
}

#[derive(clap::Args)]
struct SignArgs {
    /// File holding the parent (master) Subscribe token string (64 hex
    /// characters), `-` for standard input. Without it the token is read from
    /// the environment variable METERING_PARENT_TOKEN. (Never an argument:
    /// process arguments are visible to every user of the machine.)
    #[arg(long)]
    parent_token_file: Option<PathBuf>,
    /// Id of the parent Subscribe token
    #[arg(long)]
    token_id: i64,
    /// Stream the viewer may watch
    #[arg(long)]
    stream: String,
    /// Tracking id (must equal the parent's if it has one; absent inherits it)
    #[arg(long)]
    tracking_id: Option<String>,
    /// Opaque viewer data reported with the viewer's usage (at most 1024 characters)
    #[arg(long)]
    custom_viewer_data: Option<String>,
    /// Origin cluster (must equal the parent's unless the parent's is `auto`)
    #[arg(long)]
    origin_cluster: Option<String>,
    /// Allowed web origin (repeatable)
    #[arg(long = "allowed-origin")]
    allowed_origins: Vec<String>,
    /// Allowed viewer IP address or CIDR (repeatable)
    #[arg(long = "allowed-ip")]
    allowed_ip_addresses: Vec<String>,
    /// Lifetime, seconds (not beyond the parent's expiry)
    #[arg(long)]
    expires_in: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve => {
            let cfg: api::config::ApiConfig = runtime::config::load(cli.config.as_deref(), "API")?;
            runtime::telemetry::init_tracing(cfg.json_logs);
            cfg.validate().context("invalid configuration")?;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
            rt.block_on(api::http::serve(cfg, runtime::shutdown_signal()))?;
            Ok(())
        }
        Cmd::Token(TokenCmd::Sign(a)) => {
            let req = api::tokens::sign::SignRequest {
                token_id: a.token_id,
                stream_name: a.stream,
                tracking_id: a.tracking_id,
                custom_viewer_data: a.custom_viewer_data,
                origin_cluster: a.origin_cluster,
                allowed_origins: a.allowed_origins,
                allowed_ip_addresses: a.allowed_ip_addresses,
                expires_in_secs: a.expires_in,
            };
            let parent = read_parent_token(a.parent_token_file.as_deref())?;
            let jwt = api::tokens::sign::sign(&parent, &req, chrono::Utc::now())?;
            println!("{jwt}");
            Ok(())
        }
    }
}

/// The parent token from a file, standard input (`-`) or `METERING_PARENT_TOKEN`.
fn read_parent_token(file: Option<&std::path::Path>) -> Result<String> {
    let text = match file {
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading the parent token from standard input")?;
            s
        }
        Some(p) => std::fs::read_to_string(p).with_context(|| format!("reading the parent token from {}", p.display()))?,
        None => std::env::var("METERING_PARENT_TOKEN")
            .context("no parent token: set METERING_PARENT_TOKEN or pass --parent-token-file FILE (or - for standard input)")?,
    };
    let token = text.trim().to_string();
    anyhow::ensure!(api::tokens::verify::is_master_token(&token), "the parent token is not 64 hex characters");
    Ok(token)
}
