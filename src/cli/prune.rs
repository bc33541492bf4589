//! `otp-reconcile prune`: retention (see [`crate::prune`]).

use crate::config::ConfigError;
use crate::config::DbArgs;
use crate::db::DbError;
use crate::exit::Exit;
use crate::export;
use crate::prune::{self, Plan};
use chrono::{DateTime, Utc};
use clap::Args;

#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// Remove what is older than this day (UTC) or time, or than this long ago at
    /// midnight UTC (e.g. 90d): sends by sent_at, conversions by converted_at, rate
    /// windows by their end. Must be in the past.
    #[arg(long, env = "PRUNE_BEFORE", value_parser = parse_before)]
    pub before: DateTime<Utc>,
    /// Count what would be removed and what kept; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Sends per transaction (with their records, attempts, revisions, conversions).
    #[arg(long, env = "PRUNE_BATCH_SIZE", default_value_t = 5_000)]
    pub batch_size: i64,
    /// Workers removing sends at once, each its own connection and transactions, on
    /// disjoint ranges of sent_at (default: one per core, at most --db-connections).
    #[arg(long, env = "PRUNE_JOBS")]
    pub jobs: Option<usize>,
    /// The report as JSON on standard output.
    #[arg(long)]
    pub json: bool,
}

/// A day or time ([`export::parse_bound`]), or a duration ago, at midnight UTC.
fn parse_before(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(bound) = export::parse_bound(s) {
        return Ok(bound.resolve(&crate::zone::Zone::default(), Utc::now()));
    }
    let ago = humantime::parse_duration(s.trim()).map_err(|_| {
        format!("{s:?}: expected a date like 2026-08-01, an RFC 3339 time, or an age like 90d")
    })?;
    let then = crate::clock::before(Utc::now(), ago);
    Ok(then
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .expect("midnight exists")
        .and_utc())
}

pub async fn run(args: PruneArgs) -> anyhow::Result<Exit> {
    if args.before > Utc::now() {
        return Err(ConfigError::Invalid(format!(
            "--before {} is in the future",
            args.before.to_rfc3339()
        ))
        .into());
    }
    if !(1..=100_000).contains(&args.batch_size) {
        return Err(ConfigError::Invalid("--batch-size must be 1 to 100000".into()).into());
    }
    if args.jobs == Some(0) {
        return Err(ConfigError::Invalid("--jobs must be at least 1".into()).into());
    }
    let db = args.db.connect_checked().await?;
    let plan = Plan {
        before: args.before,
        batch: args.batch_size,
        dry_run: args.dry_run,
    };
    let jobs = args.jobs.unwrap_or_else(|| prune::default_jobs(&db));
    let report = prune::run_with(&db, &plan, jobs)
        .await
        .map_err(DbError::from)?;
    tracing::info!(
        removed_sends = report.removed.sends,
        dry_run = report.dry_run,
        elapsed_secs = report.elapsed_secs,
        "prune done"
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(Exit::Done)
}
