//! The command line: flags and environment variables (12-factor), one subcommand per
//! job. Each subcommand's module turns its arguments into settings and runs it.

mod admin;
mod demo;
mod fetch;
mod import;
mod prune;
mod report;
mod run;
mod simulate;

use crate::config::{self, ConfigError, ProviderSettings};
use crate::db::{self, Db, DbError};
use crate::exit::Exit;
use crate::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

/// Keeps the company's books with its OTP/SMS provider straight.
#[derive(Debug, Parser)]
#[command(name = "otp-reconcile", version, about, long_about = None)]
pub struct Cli {
    /// Log format: pretty on a terminal, JSON otherwise (auto).
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one reconcile pass: claim due sends, fetch their records, store, decide.
    Run(run::RunArgs),
    /// The main job on a ready default: demo database, simulator, generated sends, a pass.
    Demo(demo::DemoArgs),
    /// Load sends or conversions from CSV.
    Import(import::ImportArgs),
    /// Finance export: attempts, or a daily or monthly summary, for a range, as CSV.
    Export(report::ExportArgs),
    /// Re-fetch every send in a range and report what the provider changed.
    Replay(report::ReplayArgs),
    /// Queue depth, leases, pending conversions and rates, the last passes.
    Status(report::StatusArgs),
    /// Remove the final history older than a date (export it first), in small batches.
    Prune(prune::PruneArgs),
    /// Apply the database schema.
    Migrate(admin::MigrateArgs),
    /// Register and list apps.
    App(admin::AppArgs),
    /// Run the provider simulator on 127.0.0.1 (for tests, the demo and benchmarks).
    Simulate(simulate::SimulateArgs),
    /// Fetch one record from the provider and print it, parsed and raw.
    Fetch(fetch::FetchArgs),
    /// Check that a command line parses (for the manifests' and crontab's checks).
    #[command(hide = true)]
    CheckArgs {
        /// The arguments after `otp-reconcile`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Where the database is. Its `Debug` leaves the URL out: it may carry a password.
#[derive(Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/dbname.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: u32,
}

impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field("database_url", &"[redacted]")
            .field("db_connections", &self.db_connections)
            .finish()
    }
}

impl DbArgs {
    /// The same, with a pool of at least `connections`.
    pub fn with_at_least(&self, connections: usize) -> Self {
        Self {
            db_connections: self
                .db_connections
                .max(u32::try_from(connections).unwrap_or(u32::MAX)),
            ..self.clone()
        }
    }

    /// Connects, without checking the schema (for `migrate`).
    pub async fn connect(&self) -> Result<Db, DbError> {
        db::connect(&self.database_url, self.db_connections.max(2)).await
    }

    /// Connects and refuses a schema this binary does not know.
    pub async fn connect_checked(&self) -> Result<Db, DbError> {
        let db = self.connect().await?;
        db::check_schema(&db).await?;
        Ok(db)
    }
}

/// How to reach the provider. The API secret comes from `PROVIDER_API_SECRET` or the
/// file in `PROVIDER_API_SECRET_FILE`, never from a flag.
#[derive(Debug, Clone, Args)]
pub struct ProviderArgs {
    /// The provider's base URL.
    #[arg(
        long,
        env = "PROVIDER_BASE_URL",
        default_value = "https://api.itniotech.com"
    )]
    pub base_url: String,

    /// The API key (`Api-Key` header).
    #[arg(long, env = "PROVIDER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// A file holding the API secret (a mounted Secret). Or set PROVIDER_API_SECRET.
    #[arg(long, env = config::SECRET_FILE_ENV)]
    pub api_secret_file: Option<PathBuf>,

    /// Allow plain http:// to a host that is not loopback.
    #[arg(long, env = "ALLOW_INSECURE_HTTP", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_insecure_http: bool,

    /// Time allowed to connect to the provider.
    #[arg(long, env = "PROVIDER_CONNECT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Time allowed for a whole request, answer included.
    #[arg(long, env = "PROVIDER_REQUEST_TIMEOUT", default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Answers larger than this many bytes are an error.
    #[arg(long, env = "PROVIDER_MAX_ANSWER_BYTES", default_value_t = 1024 * 1024)]
    pub max_answer_bytes: usize,

    /// Attempts one record may hold (sms, call and sna together); more is unreadable.
    #[arg(long, env = "PROVIDER_MAX_RECORD_ATTEMPTS", default_value_t = crate::provider::scan::DEFAULT_MAX_ATTEMPTS)]
    pub max_record_attempts: usize,
}

impl ProviderArgs {
    /// The settings, with the secret read from the environment or its file.
    pub fn settings(&self) -> Result<ProviderSettings, ConfigError> {
        let key = self.api_key.as_deref().ok_or(ConfigError::MissingKey)?;
        let secret = config::api_secret_from_env(self.api_secret_file.as_deref())?;
        let mut settings =
            ProviderSettings::new(&self.base_url, key, secret, self.allow_insecure_http)?;
        if self.max_answer_bytes == 0 {
            return Err(ConfigError::Invalid(
                "--max-answer-bytes must be positive".into(),
            ));
        }
        settings.connect_timeout = self.connect_timeout;
        settings.request_timeout = self.request_timeout;
        settings.max_answer_bytes = self.max_answer_bytes;
        if self.max_record_attempts == 0 {
            return Err(ConfigError::Invalid(
                "--max-record-attempts must be positive".into(),
            ));
        }
        settings.max_record_attempts = self.max_record_attempts;
        Ok(settings)
    }
}

/// Runs the parsed command to its exit code.
pub async fn run(cli: Cli) -> Exit {
    let outcome = match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Import(args) => import::run(args).await,
        Command::Export(args) => report::export(args).await,
        Command::Replay(args) => report::replay(args).await,
        Command::Status(args) => report::status(args).await,
        Command::Prune(args) => prune::run(args).await,
        Command::Migrate(args) => admin::migrate(args).await,
        Command::App(args) => admin::app(args).await,
        Command::Simulate(args) => simulate::run(args).await,
        Command::Fetch(args) => fetch::run(args).await,
        Command::CheckArgs { args } => {
            let line = std::iter::once("otp-reconcile".to_owned()).chain(args);
            match Cli::try_parse_from(line) {
                Ok(_) => Ok(Exit::Done),
                Err(e) => Err(ConfigError::Invalid(e.to_string().trim().to_owned()).into()),
            }
        }
    };
    match outcome {
        Ok(exit) => exit,
        Err(error) => {
            let exit = Exit::for_error(&error);
            tracing::error!(error = format!("{error:#}"), exit = exit.code(), "failed");
            eprintln!(
                "otp-reconcile: {}",
                crate::text::escape(&format!("{error:#}"))
            );
            exit
        }
    }
}
