//! Logging set-up shared by the binaries.

/// Install a `tracing` subscriber: JSON lines when `json`, else human-readable;
/// the level comes from `RUST_LOG` (default `info`). Logs go to stderr.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
