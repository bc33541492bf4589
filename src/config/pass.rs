//! How a pass runs: its flags and environment ([`PassArgs`]), validated into
//! [`PassSettings`], the one typed struct the pass is given. Each setting is stored
//! once; `passes.parameters` records them as they are here.

use super::ConfigError;
use crate::db::lease::Scope;
use crate::db::sends::Shard;
use crate::decide::Schedule;
use crate::provider::{BreakerSettings, RetryBudget, RetryPolicy};
use crate::rates::{Rules, Window};
use clap::Args;
use serde::Serialize;
use std::time::Duration;

/// How a pass runs.
#[derive(Debug, Clone, Serialize)]
pub struct PassSettings {
    /// Sends claimed at a time.
    pub batch_size: usize,
    /// Checked sends written per transaction (at most; a partial batch is written
    /// after `write_interval`).
    pub write_batch: usize,
    #[serde(skip)]
    pub write_interval: Duration,
    /// Write transactions in flight at most.
    pub writers: usize,
    /// Requests in flight at most: the ceiling of the adaptive limit, or the limit
    /// itself when `adaptive` is off.
    pub concurrency: usize,
    /// The in-flight limit follows the provider's latency (`provider::limit`); off
    /// (`--fixed-concurrency`), it is `concurrency` always.
    pub adaptive: bool,
    /// Resident memory, in MiB, above which the adaptive limit backs off and stops
    /// growing; `None` for no budget (the library's default; the CLI's is
    /// [`DEFAULT_MEMORY_BUDGET_MIB`]).
    pub memory_budget_mib: Option<u64>,
    /// Requests per second for the whole pass; `None` for no limit.
    pub rate: Option<f64>,
    pub burst: u32,
    /// How long a claim holds a send.
    #[serde(serialize_with = "crate::ser::duration")]
    pub lease: Duration,
    /// How often the pass renews its leases and its heartbeat; `None`: a third of the
    /// lease.
    #[serde(serialize_with = "crate::ser::optional_duration")]
    pub renew_every: Option<Duration>,
    #[serde(serialize_with = "crate::ser::optional_duration")]
    pub max_runtime: Option<Duration>,
    /// After a stop, how long in-flight requests may take before they are abandoned.
    #[serde(serialize_with = "crate::ser::duration")]
    pub grace: Duration,
    pub schedule: Schedule,
    /// How hard to try each call; recorded as its `max_attempts`.
    #[serde(rename = "max_attempts", serialize_with = "max_attempts")]
    pub retry: RetryPolicy,
    /// When the provider counts as down and the pass stops.
    pub breaker: BreakerSettings,
    pub shard: Option<Shard>,
    /// Only these apps' sends, conversions and rates (`--app-id`); all if empty.
    pub apps: Vec<String>,
    /// Post conversions back (`--no-postbacks` turns it off).
    pub postbacks: bool,
    /// Compute and post conversion rates; `None` (`--no-rates`) turns it off.
    pub rates: Option<Rules>,
    /// Who holds the leases (host and process).
    pub owner: String,
}

impl Default for PassSettings {
    fn default() -> Self {
        Self {
            batch_size: DEFAULT_BATCH_SIZE,
            write_batch: DEFAULT_BATCH_SIZE,
            write_interval: Duration::from_millis(200),
            writers: 2,
            concurrency: DEFAULT_CONCURRENCY,
            adaptive: true,
            memory_budget_mib: None,
            rate: None,
            burst: 1,
            lease: Duration::from_secs(300),
            renew_every: None,
            max_runtime: None,
            grace: Duration::from_secs(20),
            schedule: Schedule::default(),
            retry: RetryPolicy::default(),
            breaker: BreakerSettings::default(),
            shard: None,
            apps: Vec::new(),
            postbacks: true,
            rates: Some(Rules::default()),
            owner: default_owner(),
        }
    }
}

impl PassSettings {
    /// The shard and apps the pass works on.
    pub fn scope(&self) -> Scope {
        Scope {
            shard: self.shard,
            apps: self.apps.clone(),
        }
    }

    /// How often leases and the heartbeat are renewed.
    pub fn renew_interval(&self) -> Duration {
        self.renew_every
            .unwrap_or(self.lease / 3)
            .max(Duration::from_millis(10))
    }
}

/// The default ceiling of the in-flight limit. The limit itself adapts below it, and
/// below the memory budget ([`DEFAULT_MEMORY_BUDGET_MIB`]): at about 45 KiB per request
/// in flight, 768 is about what a 60 MiB budget holds against a slow provider (README,
/// "Concurrency").
pub const DEFAULT_CONCURRENCY: usize = 768;
/// The default memory budget of a pass, in MiB: the adaptive limit stops growing when
/// the process's resident memory passes it, so a pass stays under a 64 MiB container
/// limit (README, "Concurrency"). Over the budget the allocator first gives its free
/// pages back, and the limit backs off only if that was not enough, and again only after
/// another sixteenth of the budget.
///
/// 60, not the 56 it was: a pass at a fixed 768 in flight holds 57 to 58 MiB against a
/// provider answering in 300 ms, so 56 took a tenth off the limit, and off the sends/s,
/// where it mattered most (100,000 sends: 91% of a fixed 768 at 56, 98% at 60, peak RSS
/// 59.9 MiB). At 50 ms, where answers waiting for the writers add to the requests in
/// flight, the peak was 60.3 MiB at 60 (it was 64.5 before the allocator gave memory
/// back).
pub const DEFAULT_MEMORY_BUDGET_MIB: u64 = 60;
/// Sends claimed at a time and written per transaction: enough to keep the default
/// ceiling busy between claims, and fewer statements per send.
pub const DEFAULT_BATCH_SIZE: usize = 1_000;

/// `host:pid`, for the lease owner column.
pub fn default_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
}

/// How a pass runs.
#[derive(Debug, Clone, Args)]
pub struct PassArgs {
    /// Requests in flight at most. The pass adapts its in-flight limit to the
    /// provider's latency (and --rate) below this ceiling.
    #[arg(long, env = "PASS_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Keep exactly --concurrency requests in flight instead of adapting.
    #[arg(long, env = "PASS_FIXED_CONCURRENCY")]
    pub fixed_concurrency: bool,
    /// Resident memory (MiB) above which the in-flight limit backs off and stops
    /// growing (0: no budget). Not applied with --fixed-concurrency.
    #[arg(long, env = "PASS_MEMORY_BUDGET", default_value_t = DEFAULT_MEMORY_BUDGET_MIB, value_name = "MIB")]
    pub memory_budget: u64,
    /// Requests per second for the whole pass (fractions allowed); unlimited if unset.
    #[arg(long, env = "PASS_RATE")]
    pub rate: Option<f64>,
    /// Requests allowed at once above the rate.
    #[arg(long, env = "PASS_BURST", default_value_t = 10)]
    pub burst: u32,
    /// Sends claimed at a time, and written per transaction.
    #[arg(long, env = "PASS_BATCH_SIZE", default_value_t = DEFAULT_BATCH_SIZE)]
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

    /// `run`'s: the pass over `apps` only (all if empty).
    pub fn for_run(&self, apps: &[String]) -> Result<PassSettings, ConfigError> {
        Ok(PassSettings {
            apps: apps.to_vec(),
            ..self.settings()?
        })
    }

    /// `replay`'s: a replay takes its range's apps, and never shards.
    pub fn for_replay(&self) -> Result<PassSettings, ConfigError> {
        let settings = self.settings()?;
        if settings.shard.is_some() {
            return Err(ConfigError::Invalid(
                "replay does not shard: split the work by --from/--to or --app-id instead".into(),
            ));
        }
        Ok(settings)
    }

    /// The settings every pass shares, validated.
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
            adaptive: !self.fixed_concurrency,
            memory_budget_mib: Some(self.memory_budget).filter(|&m| m > 0),
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

/// A retry policy as its attempts, for the pass's recorded parameters.
fn max_attempts<S: serde::Serializer>(retry: &RetryPolicy, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(retry.max_attempts as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        pass: PassArgs,
    }

    fn flags(args: &[&str]) -> PassArgs {
        Flags::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .pass
    }

    #[test]
    fn max_attempts_is_stored_once_and_recorded_under_its_name() {
        let settings = flags(&["--max-attempts", "7"]).settings().unwrap();
        assert_eq!(settings.retry.max_attempts, 7);
        let recorded = serde_json::to_value(&settings).unwrap();
        assert_eq!(recorded["max_attempts"], 7);
        assert!(recorded.get("retry").is_none());
    }

    #[test]
    fn a_shard_takes_its_share_of_the_rate_and_a_replay_none() {
        let shard = flags(&["--shard", "1/4", "--rate", "100", "--burst", "10"]);
        let settings = shard.for_run(&["app1".into()]).unwrap();
        assert_eq!((settings.rate, settings.burst), (Some(25.0), 2));
        assert_eq!(settings.apps, ["app1"]);
        let refused = shard.for_replay().unwrap_err().to_string();
        assert!(refused.starts_with("replay does not shard"), "{refused}");
    }
}
