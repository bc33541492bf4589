//! The command line: one subcommand per job, one module per subcommand. Each reads as
//! parse (its flags, the shared groups from [`crate::config`]) -> build its settings ->
//! one call into the library -> an exit code. Errors are reported here, once.

mod admin;
mod demo;
mod export;
mod fetch;
mod import;
mod prune;
mod replay;
mod run;
mod simulate;
mod status;

use crate::config::ConfigError;
use crate::exit::Exit;
use crate::telemetry::LogFormat;
use clap::{Parser, Subcommand};

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
    Export(export::ExportArgs),
    /// Re-fetch every send in a range and report what the provider changed.
    Replay(replay::ReplayArgs),
    /// Queue depth, leases, pending conversions and rates, the last passes.
    Status(status::StatusArgs),
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

/// Runs the parsed command to its exit code.
pub async fn run(cli: Cli) -> Exit {
    let outcome = match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Import(args) => import::run(args).await,
        Command::Export(args) => export::run(args).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Status(args) => status::run(args).await,
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
