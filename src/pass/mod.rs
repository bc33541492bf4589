//! One pass of the job (SPEC "One pass"): fetch and store the records of due sends,
//! then post conversions back, then compute and post conversion rates. Each stage runs
//! through the same [`pipeline`]: claim under a lease, work through the shared gate,
//! write in batches with the lease token in every `WHERE`.
//!
//! The pass ends when nothing is due, at `--max-runtime`, on a signal, or at the first
//! answer that refuses our credentials; what was claimed but not worked is released.

mod pipeline;
mod postbacks;
mod rate_posts;
mod records;
mod summary;

pub use summary::{Ended, Summary};

use crate::clock::SharedClock;
use crate::db::{Db, DbError};
use crate::decide::Schedule;
use crate::passes;
use crate::progress::Progress;
use crate::provider::{BreakerSettings, Failure, Gate, ProviderClient, RetryPolicy};
use crate::rates::Rules;
use crate::revisions::{self, Report};
use crate::sends::{self, Range, Shard};
use serde::Serialize;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use summary::{Counters, Totals};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

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
    /// Requests in flight at most.
    pub concurrency: usize,
    /// Requests per second for the whole pass; `None` for no limit.
    pub rate: Option<f64>,
    pub burst: u32,
    /// How long a claim holds a send.
    #[serde(serialize_with = "crate::ser::duration")]
    pub lease: Duration,
    #[serde(serialize_with = "crate::ser::optional_duration")]
    pub max_runtime: Option<Duration>,
    /// After a stop, how long in-flight requests may take before they are abandoned.
    #[serde(serialize_with = "crate::ser::duration")]
    pub grace: Duration,
    pub schedule: Schedule,
    #[serde(skip)]
    pub retry: RetryPolicy,
    pub max_attempts: usize,
    /// When the provider counts as down and the pass stops.
    pub breaker: BreakerSettings,
    pub shard: Option<Shard>,
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
            batch_size: 500,
            write_batch: 500,
            write_interval: Duration::from_millis(200),
            writers: 2,
            concurrency: 32,
            rate: None,
            burst: 1,
            lease: Duration::from_secs(300),
            max_runtime: None,
            grace: Duration::from_secs(20),
            schedule: Schedule::default(),
            retry: RetryPolicy::default(),
            max_attempts: RetryPolicy::default().max_attempts,
            breaker: BreakerSettings::default(),
            shard: None,
            postbacks: true,
            rates: Some(Rules::default()),
            owner: default_owner(),
        }
    }
}

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

/// What the pass needs from outside: passed in, never global.
pub struct Deps<'a> {
    pub db: &'a Db,
    pub client: &'a ProviderClient,
    pub clock: SharedClock,
    /// Cancelled on SIGINT/SIGTERM.
    pub interrupt: CancellationToken,
    pub progress: Progress,
}

/// What a pass does.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Records of due sends, then postbacks, then rates.
    Run,
    /// Re-fetch every send in a range, whatever its state.
    Replay(Range),
}

impl Task {
    fn kind(&self) -> &'static str {
        match self {
            Task::Run => "run",
            Task::Replay(_) => "replay",
        }
    }
}

/// Runs one pass to its end and records it. A database failure is an error (exit 4);
/// every other ending is in the summary.
pub async fn run(deps: Deps<'_>, settings: &PassSettings) -> Result<Summary, DbError> {
    lifecycle(deps, settings, &Task::Run).await
}

/// Re-fetches every send in `range` through the same gate and writers as a pass, keeps
/// the previous records of those that changed, and reports what changed.
pub async fn replay(
    deps: Deps<'_>,
    settings: &PassSettings,
    range: &Range,
) -> Result<(Summary, Report), DbError> {
    let db = deps.db;
    let in_range: i64 = sends::count_range(db, range)
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum();
    deps.progress
        .set_length(u64::try_from(in_range).unwrap_or(0));
    let summary = lifecycle(deps, settings, &Task::Replay(range.clone())).await?;
    let mut report = revisions::report(db, summary.pass_id).await?;
    report.not_refetched = summary.recheck_reasons.transient + summary.recheck_reasons.unreadable;
    report.held_elsewhere = u64::try_from(in_range)
        .unwrap_or(0)
        .saturating_sub(summary.claimed);
    Ok((summary, report))
}

async fn lifecycle(
    deps: Deps<'_>,
    settings: &PassSettings,
    task: &Task,
) -> Result<Summary, DbError> {
    let Deps {
        db,
        client,
        clock,
        interrupt,
        progress,
    } = deps;
    let started = Instant::now();
    let parameters = serde_json::json!({ "settings": settings, "task": task });
    let pass_id = passes::start(db, task.kind(), &settings.owner, clock.now(), &parameters).await?;
    let cleared = sends::clear_dead_leases(db, clock.now()).await?;
    if cleared > 0 {
        tracing::info!(
            cleared,
            "cleared expired leases a dead pass left on finished sends"
        );
    }
    let span = tracing::info_span!("pass", pass_id, kind = task.kind(), owner = %settings.owner);
    async move {
        tracing::info!(concurrency = settings.concurrency, rate = ?settings.rate, "pass started");
                let stop = interrupt.child_token();
        let abort = CancellationToken::new();
        let gate = Gate::new(settings.rate, settings.burst, stop.clone())
            .with_breaker(settings.breaker);
        let counters = Counters::default();
        let fatal: Mutex<Option<Failure>> = Mutex::new(None);
        let retries_before = settings.retry.budget.left();
        let statements_before = db.statements();
        let run = Run {
            pass_id,
            started,
            cut_short: std::sync::atomic::AtomicBool::new(false),
            task,
            db,
            client,
            clock: &clock,
            settings,
            gate: &gate,
                        stop: &stop,
            abort: &abort,
            counters: &counters,
            fatal: &fatal,
            progress: &progress,
        };

                // The deadline, a signal or a fatal answer stops claiming and new requests;
        // in-flight requests then get `grace` to finish before they are abandoned (and
        // their items released).
        let hit_deadline = std::sync::atomic::AtomicBool::new(false);
        let timers = async {
            match settings.max_runtime {
                Some(limit) => tokio::select! {
                    _ = tokio::time::sleep(limit) => {
                        tracing::info!("max runtime reached: releasing what has not started");
                        hit_deadline.store(true, std::sync::atomic::Ordering::Relaxed);
                        stop.cancel();
                    }
                    _ = stop.cancelled() => {}
                },
                None => stop.cancelled().await,
            }
            tokio::time::sleep(settings.grace).await;
            tracing::warn!(grace = ?settings.grace, "grace period over: abandoning in-flight requests");
            abort.cancel();
            std::future::pending::<()>().await
        };
        let result = tokio::select! {
            result = run.stages() => result,
            () = timers => unreachable!("the timers never end"),
        };
        let hit_deadline = hit_deadline.into_inner() || run.cut_short.into_inner();
        progress.finish();

        let fatal = fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (ended, error) = match (&result, &fatal) {
            (Err(e), _) => (Ended::Failed, Some(format!("{e:#}"))),
            (Ok(()), Some(f)) => (Ended::CredentialsRefused, Some(f.to_string())),
            (Ok(()), None) if gate.tripped().is_some() => (
                Ended::ProviderUnavailable,
                gate.tripped().map(|trip| {
                    format!("{trip}; every send not checked was released for the next pass")
                }),
            ),
            (Ok(()), None) if interrupt.is_cancelled() => (Ended::Interrupted, None),
            (Ok(()), None) if hit_deadline => (Ended::MaxRuntime, None),
            (Ok(()), None) => (Ended::Done, None),
        };
        let summary = Summary::new(Totals {
            pass_id,
            ended,
            counters: &counters,
            requests: gate.admitted(),
            retries: retries_before - settings.retry.budget.left(),
            // The final `passes` update is counted too.
            db_statements: db.statements() - statements_before + 1,
            elapsed_secs: started.elapsed().as_secs_f64(),
            error: error.clone(),
        });
        let recorded = passes::finish(
            db,
            pass_id,
            clock.now(),
            ended.as_str(),
            &serde_json::to_value(&summary).unwrap_or_default(),
            error.as_deref(),
        )
        .await;
        result?;
        recorded?;
        tracing::info!(ended = ended.as_str(), checked = summary.checked, "pass ended");
        Ok(summary)
    }
    .instrument(span)
    .await
}

/// Everything the stages of one pass share.
pub(crate) struct Run<'a> {
    pub pass_id: i64,
    /// When the pass started, for the stages' shares of --max-runtime.
    pub started: Instant,
    /// A stage stopped claiming at its share of --max-runtime.
    pub cut_short: std::sync::atomic::AtomicBool,
    pub task: &'a Task,
    pub db: &'a Db,
    pub client: &'a ProviderClient,
    pub clock: &'a SharedClock,
    pub settings: &'a PassSettings,
    pub gate: &'a Gate,
    pub stop: &'a CancellationToken,
    /// Cancelled when the grace after a stop is over: in-flight calls are abandoned.
    pub abort: &'a CancellationToken,
    pub counters: &'a Counters,
    pub fatal: &'a Mutex<Option<Failure>>,
    pub progress: &'a Progress,
}

impl Run<'_> {
    /// The stages in order: records, then postbacks, then rates.
    async fn stages(&self) -> Result<(), DbError> {
        let s = self.settings;
        // With a rate, a claim holds no more than can be sent in a quarter of the lease
        // (two batches wait in the queue): queued sends never outlive their lease.
        let by_rate = s.rate.map_or(usize::MAX, |rate| {
            ((rate * s.lease.as_secs_f64() / 4.0) as usize).max(1)
        });
        let shape = pipeline::Shape {
            claim_batch: s.batch_size.min(by_rate),
            write_batch: s.write_batch,
            writers: s.writers,
            concurrency: s.concurrency,
            write_interval: s.write_interval,
        };
        if let Task::Replay(range) = self.task {
            let stage = records::Records::replaying(self, range.clone());
            return pipeline::run(&stage, shape, self.stop).await;
        }
        // Under --max-runtime, records stop claiming at 70% of it and postbacks at 90%:
        // a backlog of sends never starves the postbacks and the rates.
        let share = |fraction: f64| {
            s.max_runtime
                .map(|limit| self.started + limit.mul_f64(fraction))
        };
        self.stage(&records::Records::due(self), shape, share(0.7))
            .await?;
        // Postbacks and rates are claimed in small batches: what a killed pass leaves
        // claimed is what may have been posted without being recorded.
        let small = pipeline::Shape {
            claim_batch: s.concurrency.clamp(1, shape.claim_batch),
            write_batch: s.concurrency.clamp(1, s.write_batch.max(1)),
            ..shape
        };
        if s.postbacks && !self.stop.is_cancelled() {
            self.stage(&postbacks::Postbacks { run: self }, small, share(0.9))
                .await?;
        }
        // Rates are computed over every send: one shard (the first) does it.
        if let Some(rules) = &s.rates
            && !self.stop.is_cancelled()
            && s.shard.is_none_or(|shard| shard.index == 0)
        {
            let stage = rate_posts::RatePosts::prepare(self, rules).await?;
            self.stage(&stage, small, None).await?;
        }
        Ok(())
    }

    /// Runs a stage until nothing is due or the pass stops; from `until` on, it claims
    /// no more (what it claimed still goes through).
    async fn stage<S: pipeline::Stage>(
        &self,
        stage: &S,
        shape: pipeline::Shape,
        until: Option<Instant>,
    ) -> Result<(), DbError> {
        let stop = self.stop.child_token();
        let timer = async {
            if let Some(until) = until {
                tokio::time::sleep_until(until.into()).await;
                if !stop.is_cancelled() {
                    tracing::info!(
                        stage = stage.name(),
                        "its share of --max-runtime is over: no more claims"
                    );
                    self.cut_short
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    stop.cancel();
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            result = pipeline::run(stage, shape, &stop) => result,
            () = timer => unreachable!("the timer never ends"),
        }
    }

    /// When an item whose retries ran out is tried again.
    pub fn retry_at(&self) -> chrono::DateTime<chrono::Utc> {
        crate::clock::after(self.clock.now(), self.settings.schedule.transient_delay)
    }

    /// One call through the gate with the pass's retries. A fatal answer stops the
    /// pass. `None` when the call was not made or its outcome is not to be recorded:
    /// the item is released.
    pub async fn call<T, F, Fut>(&self, call: F) -> Option<Result<T, Failure>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let outcome = tokio::select! {
            outcome = self.settings.retry.run(self.gate, call) => outcome?,
            _ = self.abort.cancelled() => return None,
        };
        match outcome {
            Err(failure @ Failure::Fatal { .. }) => {
                let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
                if fatal.is_none() {
                    tracing::error!(%failure, "the provider refused our credentials: stopping the pass");
                    *fatal = Some(failure);
                }
                self.stop.cancel();
                None
            }
            // The provider answered nothing lately, or the breaker opened: this failure
            // is no check of the item, only a sign of the outage. The item is given
            // back untouched (the breaker stops the pass, or a later claim tries it).
            Err(failure)
                if failure.health().failed()
                    && (self.gate.provider_silent() || self.gate.tripped().is_some()) =>
            {
                None
            }
            outcome => Some(outcome),
        }
    }
}
