//! Logging through `tracing`: human-readable on a terminal, JSON lines otherwise;
//! `RUST_LOG` filters (default `info`). Logs go to stderr; stdout is for output.

use clap::ValueEnum;
use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    #[default]
    Auto,
    Pretty,
    Json,
}

static JSON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// True when logs are JSON lines (a container): reports then go out as log events, not
/// as free text between the lines.
pub fn is_json() -> bool {
    JSON.get().copied().unwrap_or(false)
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Pretty => false,
        LogFormat::Json => true,
    };
    let _ = JSON.set(json);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init();
    } else {
        builder.with_target(false).init();
    }
}
