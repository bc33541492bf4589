//! `otp-reconcile run`: one reconcile pass, or with `--dry-run` what it would do.

use super::{DbArgs, ProviderArgs};
use crate::clock::{self, SharedClock};
use crate::config::ConfigError;
use crate::db::conversions;
use crate::db::rates;
use crate::db::sends::{self, Shard};
use crate::db::{Db, DbError};
use crate::decide::Schedule;
use crate::exit::Exit;
use crate::pass::{self, Deps, Ended, PassSettings, Summary};
use crate::progress::Progress;
use crate::provider::{BreakerSettings, ProviderClient, RetryBudget, RetryPolicy};
use crate::rates::{Rules, Window};
use clap::Args;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub pass: PassArgs,
    /// Show what is due and the calls and time it would take; call and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the pass's summary as JSON to this file.
    #[arg(long, env = "SUMMARY_JSON")]
    pub summary_json: Option<std::path::PathBuf>,
    /// Work on this app's sends, conversions and rates only (repeatable); all if unset.
    #[arg(long = "app-id", value_name = "APP")]
    pub app_ids: Vec<String>,
}

/// How a pass runs.
#[derive(Debug, Clone, Args)]
pub struct PassArgs {
    /// Requests in flight at most.
    #[arg(long, env = "PASS_CONCURRENCY", default_value_t = 32)]
    pub concurrency: usize,
    /// Requests per second for the whole pass (fractions allowed); unlimited if unset.
    #[arg(long, env = "PASS_RATE")]
    pub rate: Option<f64>,
    /// Requests allowed at once above the rate.
    #[arg(long, env = "PASS_BURST", default_value_t = 10)]
    pub burst: u32,
    /// Sends claimed at a time, and written per transaction.
    #[arg(long, env = "PASS_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Write transactions in flight at once (each holds a database connection).
    #[arg(long, env = "PASS_WRITERS", default_value_t = 2)]
    pub writers: usize,
    /// How long a claim holds a send; a crashed pass's sends come due again after it.
    #[arg(long, env = "PASS_LEASE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Stop claiming after this long, let in-flight requests finish, release the rest.
    #[arg(long, env = "PASS_MAX_RUNTIME", value_parser = humantime::parse_duration)]
    pub max_runtime: Option<Duration>,
    /// After a stop (SIGTERM, SIGINT, --max-runtime), how long in-flight requests may
    /// take before they are abandoned and their sends released.
    #[arg(long, env = "PASS_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// Work on shard I of N only (a stable hash of each send's id), at 1/N of --rate.
    #[arg(long, env = "SHARD", value_parser = Shard::parse, conflicts_with = "shards")]
    pub shard: Option<Shard>,
    /// Shard JOB_COMPLETION_INDEX (set by a Kubernetes Indexed Job) of this many.
    #[arg(long, env = "SHARDS")]
    pub shards: Option<u32>,
    /// Push the pass's counters and duration to this Prometheus Pushgateway.
    #[arg(long, env = "PUSHGATEWAY_URL", hide_env_values = true)]
    pub pushgateway: Option<url::Url>,
    /// A send still not final this long after it was sent is expired.
    #[arg(long, env = "PASS_MAX_AGE", default_value = "72h", value_parser = humantime::parse_duration)]
    pub max_age: Duration,
    /// A send the provider does not know is re-checked until this long after it was sent.
    #[arg(long, env = "PASS_NOT_FOUND_GRACE", default_value = "15m", value_parser = humantime::parse_duration)]
    pub not_found_grace: Duration,
    /// Delays between re-checks of a send still sending; the last repeats.
    #[arg(long, env = "PASS_RECHECK_SCHEDULE", default_value = "2m,10m,1h,6h", value_parser = parse_schedule)]
    pub recheck_schedule: Delays,
    /// Delay before a later pass retries a send whose retries ran out.
    #[arg(long, env = "PASS_TRANSIENT_DELAY", default_value = "1m", value_parser = humantime::parse_duration)]
    pub transient_delay: Duration,
    /// Attempts per request, the first included (429s aside).
    #[arg(long, env = "PASS_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: usize,
    /// Retries the whole pass may spend.
    #[arg(long, env = "PASS_RETRY_BUDGET", default_value_t = 20_000)]
    pub retry_budget: u64,
    /// Circuit breaker: how far back the share of failing requests is counted.
    #[arg(long, env = "PASS_BREAKER_WINDOW", default_value = "10s", value_parser = humantime::parse_duration)]
    pub breaker_window: Duration,
    /// Circuit breaker: failing requests needed (in the window, or in a row) to stop.
    #[arg(long, env = "PASS_BREAKER_MIN_FAILURES", default_value_t = 10)]
    pub breaker_min_failures: usize,
    /// Circuit breaker: share of failing requests in the window (0 to 1) that stops the pass.
    #[arg(long, env = "PASS_BREAKER_RATIO", default_value_t = 0.8)]
    pub breaker_ratio: f64,
    /// Do not post conversions back.
    #[arg(long, env = "NO_POSTBACKS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_postbacks: bool,
    /// Do not compute or post conversion rates.
    #[arg(long, env = "NO_RATES", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_rates: bool,
    /// The conversion-rate window, aligned to UTC.
    #[arg(long, env = "RATE_WINDOW", value_enum, default_value = "1h")]
    pub rate_window: Window,
    /// A window is closed, and its rate computed, once it ended this long ago.
    #[arg(long, env = "SETTLE_DELAY", default_value = "1h", value_parser = humantime::parse_duration)]
    pub settle_delay: Duration,
    /// Windows that start earlier than this are never computed.
    #[arg(long, env = "RATE_LOOKBACK", default_value = "7d", value_parser = humantime::parse_duration)]
    pub rate_lookback: Duration,
    /// Post again the windows whose numbers changed after they were posted.
    #[arg(long, env = "REPOST_RATES", value_parser = clap::builder::BoolishValueParser::new())]
    pub repost_rates: bool,
}

/// The re-check delays, as parsed from the command line.
#[derive(Debug, Clone)]
pub struct Delays(pub Vec<Duration>);

fn parse_schedule(s: &str) -> Result<Delays, String> {
    let delays = s
        .split(',')
        .map(|d| humantime::parse_duration(d.trim()).map_err(|e| format!("{d:?}: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if delays.is_empty() || delays.iter().any(Duration::is_zero) {
        return Err("give one or more positive delays, like 2m,10m,1h,6h".into());
    }
    Ok(Delays(delays))
}

impl PassArgs {
    /// `--shard I/N`, or `--shards N` with the index from JOB_COMPLETION_INDEX.
    fn shard(&self) -> Result<Option<Shard>, ConfigError> {
        match (self.shard, self.shards) {
            (Some(shard), _) => Ok(Some(shard)),
            (None, None) => Ok(None),
            (None, Some(of)) => {
                let index = std::env::var("JOB_COMPLETION_INDEX").map_err(|_| {
                    ConfigError::Invalid(
                        "--shards needs JOB_COMPLETION_INDEX (an Indexed Job sets it)".into(),
                    )
                })?;
                let index = index.trim().parse().map_err(|_| {
                    ConfigError::Invalid(format!("JOB_COMPLETION_INDEX {index:?} is not a number"))
                })?;
                Shard::new(index, of)
                    .map(Some)
                    .map_err(ConfigError::Invalid)
            }
        }
    }

    pub fn settings(&self) -> Result<PassSettings, ConfigError> {
        if self.concurrency == 0
            || self.batch_size == 0
            || self.max_attempts == 0
            || self.writers == 0
        {
            return Err(ConfigError::Invalid(
                "--concurrency, --batch-size, --writers and --max-attempts must be positive".into(),
            ));
        }
        if self.lease.is_zero() {
            return Err(ConfigError::Invalid(
                "--lease must be positive: a claim holds its items that long".into(),
            ));
        }
        if self.rate.is_some_and(|r| !(r.is_finite() && r >= 0.001)) {
            return Err(ConfigError::Invalid(
                "--rate must be a number of requests per second, at least 0.001".into(),
            ));
        }
        if !(self.breaker_ratio > 0.0 && self.breaker_ratio <= 1.0)
            || self.breaker_min_failures == 0
            || self.breaker_window.is_zero()
        {
            return Err(ConfigError::Invalid(
                "--breaker-ratio must be above 0 and at most 1, --breaker-min-failures and \
                 --breaker-window positive"
                    .into(),
            ));
        }
        let shard = self.shard()?;
        // A shard takes its share of the rate and the burst.
        let of = shard.map_or(1, |s| s.of);
        Ok(PassSettings {
            batch_size: self.batch_size,
            write_batch: self.batch_size,
            writers: self.writers,
            concurrency: self.concurrency,
            rate: self.rate.map(|r| r / f64::from(of)),
            burst: (self.burst / of).max(1),
            shard,
            grace: self.grace,
            lease: self.lease,
            max_runtime: self.max_runtime,
            schedule: Schedule {
                rechecks: self.recheck_schedule.0.clone(),
                max_age: self.max_age,
                not_found_grace: self.not_found_grace,
                transient_delay: self.transient_delay,
            },
            retry: RetryPolicy {
                max_attempts: self.max_attempts,
                budget: RetryBudget::new(self.retry_budget),
                ..RetryPolicy::default()
            },
            max_attempts: self.max_attempts,
            breaker: BreakerSettings {
                window: self.breaker_window,
                min_failures: self.breaker_min_failures,
                ratio: self.breaker_ratio,
            },
            postbacks: !self.no_postbacks,
            rates: (!self.no_rates).then_some(Rules {
                window: self.rate_window,
                settle_delay: self.settle_delay,
                lookback: self.rate_lookback,
                repost: self.repost_rates,
            }),
            ..PassSettings::default()
        })
    }
}

/// A token cancelled at the first SIGINT/SIGTERM; a second one exits at once.
pub fn interrupt_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        crate::shutdown::signalled().await;
        tracing::warn!(
            "stopping: no more claims, in-flight requests finish; signal again to exit at once"
        );
        cancel.cancel();
        crate::shutdown::signalled().await;
        eprintln!("otp-reconcile: second signal, exiting at once");
        std::process::exit(i32::from(Exit::Interrupted.code()));
    });
    token
}

/// The exit code for how a pass ended.
pub fn exit_for(summary: &Summary) -> Exit {
    match summary.ended {
        Ended::Done | Ended::MaxRuntime => Exit::Done,
        Ended::CredentialsRefused => Exit::Credentials,
        Ended::Interrupted => Exit::Interrupted,
        Ended::Failed => Exit::Database,
        Ended::ProviderUnavailable => Exit::ProviderUnavailable,
    }
}

pub async fn run(args: RunArgs) -> anyhow::Result<Exit> {
    let settings = PassSettings {
        apps: args.app_ids.clone(),
        ..args.pass.settings()?
    };
    if args.dry_run {
        let db = args.db.connect_checked().await?;
        dry_run(&db, &settings, clock::system()).await?;
        return Ok(Exit::Done);
    }
    let (db, client) = connect_for_pass(&args.db, &args.provider, &settings).await?;
    let summary = pass_with_progress(&db, &client, &settings).await?;
    report_summary(&summary);
    if let Some(path) = &args.summary_json {
        write_json(path, &summary)?;
    }
    push_metrics(&args.pass, &settings, &db, &summary, "run").await;
    Ok(exit_for(&summary))
}

/// The summary on stderr, whatever `RUST_LOG` filters: as text on a terminal, as one
/// JSON line shaped like the log events otherwise.
pub fn report_summary(summary: &Summary) {
    if crate::telemetry::is_json() {
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": "INFO",
            "fields": { "message": "pass summary", "summary": summary },
            "target": "otp_reconcile::summary",
        });
        eprintln!("{line}");
    } else {
        eprintln!("{}", summary.render());
    }
}

/// Pushes the summary, and the queue's state after it, to `--pushgateway`, if given.
/// A failed push is logged once, as a warning: it never fails the pass.
pub async fn push_metrics(
    args: &PassArgs,
    settings: &PassSettings,
    db: &Db,
    summary: &Summary,
    kind: &str,
) {
    let Some(gateway) = &args.pushgateway else {
        return;
    };
    let shown = crate::redact::url(gateway);
    let shard = settings
        .shard
        .map_or("all".to_owned(), |s| format!("{}-of-{}", s.index, s.of));
    let now = chrono::Utc::now();
    // After a database failure the queue cannot be read: the pass's own numbers are
    // pushed all the same.
    let queue = match crate::metrics::QueueState::read(db, now).await {
        Ok(queue) => Some(queue),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the queue's state for the metrics");
            None
        }
    };
    let body = crate::metrics::exposition(summary, queue.as_ref(), now);
    match crate::metrics::push(gateway, kind, &shard, body).await {
        Ok(()) => tracing::info!(gateway = %shown, kind, shard, "metrics pushed"),
        Err(e) => tracing::warn!(
            gateway = %shown,
            error = format!("{:#}", anyhow::Error::from(e)),
            "cannot push the metrics"
        ),
    }
}

/// Writes `value` as JSON, through a temporary file renamed into place.
pub fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    use anyhow::Context;
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, json).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Connects to the database, with a pool large enough for the pass's writers, and
/// builds the provider client.
pub async fn connect_for_pass(
    db: &DbArgs,
    provider: &ProviderArgs,
    settings: &PassSettings,
) -> anyhow::Result<(Db, ProviderClient)> {
    let provider = provider.settings()?;
    pass::check_lease(settings.lease, provider.request_timeout).map_err(ConfigError::Invalid)?;
    let db = db
        .with_at_least(settings.writers + 2)
        .connect_checked()
        .await?;
    let client = ProviderClient::new(&provider, clock::system())?;
    Ok((db, client))
}

/// Runs one pass on the system clock, stopped by SIGINT/SIGTERM, with a progress bar
/// sized by what is due now.
pub async fn pass_with_progress(
    db: &Db,
    client: &ProviderClient,
    settings: &PassSettings,
) -> Result<Summary, DbError> {
    let clock = clock::system();
    let interrupt = interrupt_on_signal();
    let due: i64 = sends::due(db, clock.now(), &settings.scope())
        .await?
        .iter()
        .map(|d| d.count)
        .sum();
    let progress = Progress::new(due.max(0) as u64, "sends");
    pass::run(
        Deps {
            db,
            client,
            clock,
            interrupt,
            progress,
        },
        settings,
    )
    .await
}

/// Prints what is due, by state and app, and the calls and time a pass would take.
async fn dry_run(db: &Db, settings: &PassSettings, clock: SharedClock) -> Result<(), DbError> {
    let scope = settings.scope();
    if !scope.apps.is_empty() {
        println!("apps: {} only", scope.apps.join(", "));
    }
    let due = sends::due(db, clock.now(), &scope).await?;
    let total: i64 = due.iter().map(|d| d.count).sum();
    println!("{:<10} {:<34} {:>10}  oldest due", "state", "app", "due");
    for d in &due {
        println!(
            "{:<10} {:<34} {:>10}  {}",
            d.state,
            d.app_id,
            d.count,
            d.oldest_due.to_rfc3339()
        );
    }
    println!("{total} sends due: {total} record fetches, plus retries on transient failures");
    let mut calls = total;
    if settings.postbacks {
        let due = conversions::due(db, clock.now(), &scope).await?;
        let n: i64 = due.iter().map(|d| d.count).sum();
        for d in &due {
            println!("conversions {:<4} {:<34} {:>10}", d.kind, d.app_id, d.count);
        }
        println!("{n} conversions to post back");
        calls += n;
    }
    if let Some(rules) = &settings.rates {
        let n = rates::preview(db, clock.now(), rules, &scope.apps).await?;
        println!("{n} conversion-rate windows to post");
        calls += n;
    }
    println!("{calls} calls in all");
    println!("{}", time_at_rate(calls, settings));
    Ok(())
}

/// How long `calls` requests take at the configured rate, or what bounds them.
pub fn time_at_rate(calls: i64, settings: &PassSettings) -> String {
    let total = calls.max(0) as f64;
    match settings.rate {
        Some(rate) => format!(
            "at --rate {rate}/s that takes at least {}",
            humantime::format_duration(
                Duration::try_from_secs_f64((total / rate).ceil()).unwrap_or(Duration::MAX)
            )
        ),
        None => format!(
            "no --rate: the time is set by the provider's latency at --concurrency {} \
             (about {} at 100 ms per request)",
            settings.concurrency,
            humantime::format_duration(
                Duration::try_from_secs_f64((total * 0.1 / settings.concurrency as f64).ceil())
                    .unwrap_or(Duration::MAX)
            )
        ),
    }
}
