//! One pass of the job (SPEC "One pass"): fetch and store the records of due sends,
//! then post conversions back, then compute and post conversion rates. Each stage runs
//! through the same [`pipeline`]: claim under a lease, work through the shared gate,
//! write in batches with the lease token in every `WHERE`.
//!
//! The pass ends when nothing is due, at `--max-runtime`, on a signal, or at the first
//! answer that refuses our credentials; what was claimed but not worked is released.

mod held;
mod pipeline;
mod postbacks;
mod rate_posts;
mod records;
mod summary;

pub use summary::{Ended, Summary};

use crate::clock::SharedClock;
use crate::db::lease::{Claim, Scope};
use crate::db::passes;
use crate::db::revisions::{self, Report};
use crate::db::sends::{self, Range, Shard};
use crate::db::{Db, DbError};
use crate::decide::Schedule;
use crate::progress::Progress;
use crate::provider::{BreakerSettings, Failure, Gate, ProviderClient, RetryPolicy};
use crate::rates::Rules;
pub(crate) use held::Held;
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
    #[serde(skip)]
    pub retry: RetryPolicy,
    pub max_attempts: usize,
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
            batch_size: 500,
            write_batch: 500,
            write_interval: Duration::from_millis(200),
            writers: 2,
            concurrency: 32,
            rate: None,
            burst: 1,
            lease: Duration::from_secs(300),
            renew_every: None,
            max_runtime: None,
            grace: Duration::from_secs(20),
            schedule: Schedule::default(),
            retry: RetryPolicy::default(),
            max_attempts: RetryPolicy::default().max_attempts,
            breaker: BreakerSettings::default(),
            shard: None,
            apps: Vec::new(),
            postbacks: true,
            rates: Some(Rules::default()),
            owner: default_owner(),
        }
    }
}

/// A lease must outlast this many request timeouts: renewed every third of it, it then
/// always has at least one request timeout left, so a request never outlives it.
pub const LEASE_TIMEOUTS: u32 = 3;

/// Refuses a lease too short for the requests made under it: zero, or shorter than
/// [`LEASE_TIMEOUTS`] request timeouts.
pub fn check_lease(lease: Duration, request_timeout: Duration) -> Result<(), String> {
    let least = request_timeout * LEASE_TIMEOUTS;
    if lease.is_zero() || lease < least {
        return Err(format!(
            "--lease {} is too short: it must be at least {LEASE_TIMEOUTS} times \
             --request-timeout ({}), that is {} or more, so that no request outlives \
             the lease it is sent under",
            humantime::format_duration(lease),
            humantime::format_duration(request_timeout),
            humantime::format_duration(least),
        ));
    }
    Ok(())
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

/// Runs one pass to its end and records it (best effort when the database failed).
/// Every ending is in the summary, a database failure mid-pass too (`Ended::Failed`,
/// exit 4, with its cause chain); an error only when the pass could not start or its
/// end could not be recorded.
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
    // Three renewals missed: the pass is gone.
    let heartbeat_timeout = settings.renew_interval() * 3;
    let pass_id = passes::start(
        db,
        task.kind(),
        &settings.owner,
        clock.now(),
        &parameters,
        heartbeat_timeout,
    )
    .await?;
    let cleared = sends::clear_dead_leases(db).await?;
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
            started: clock.now(),
            cut_short: std::sync::atomic::AtomicBool::new(false),
            task,
            scope: settings.scope(),
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
            held: Holdings {
                sends: held::Holdings::new(&sends::DUE),
                conversions: held::Holdings::new(&crate::db::conversions::DUE),
                rates: held::Holdings::new(&crate::db::rates::DUE),
            },
            margin: client.request_timeout(),
            renew_failed: Mutex::new(None),
        };

                // The deadline, a signal or a fatal answer stops claiming and new requests;
        // in-flight requests then get `grace` to finish before they are abandoned (and
        // their items released).
        let hit_deadline = std::sync::atomic::AtomicBool::new(false);
        let timers = async {
            match settings.max_runtime {
                Some(limit) => tokio::select! {
                    _ = crate::clock::sleep_until(&*clock, crate::clock::after(run.started, limit), DEADLINE_CHECK) => {
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
            () = run.keep_alive() => unreachable!("the renewals never end"),
        };
        let renew_failed = run.renew_failed.lock().unwrap_or_else(|p| p.into_inner()).take();
        let result = match renew_failed {
            Some(e) => result.and(Err(e)),
            None => result,
        };
        let hit_deadline = hit_deadline.into_inner() || run.cut_short.into_inner();
        progress.finish();

        let fatal = fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (ended, error) = match (&result, &fatal) {
            (Err(e), _) => {
                let chain = crate::db::cause_chain(e);
                tracing::error!(error = %chain, "the database failed mid-pass: stopping; the leases expire for the next pass");
                (Ended::Failed, Some(chain))
            }
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
        match (result, recorded) {
            // The database failed: the summary says so (exit 4); recording it was best
            // effort (the pool opens a fresh connection if it can).
            (Err(_), Err(e)) => tracing::error!(
                error = %crate::db::cause_chain(&e),
                "cannot record the failed pass: it shows as abandoned once its heartbeat is stale"
            ),
            (Err(_), Ok(())) => {}
            (Ok(()), recorded) => recorded?,
        }
        tracing::info!(ended = ended.as_str(), checked = summary.checked, "pass ended");
        Ok(summary)
    }
    .instrument(span)
    .await
}

/// How often the deadlines (`--max-runtime` and the stages' shares of it) look at the
/// clock.
const DEADLINE_CHECK: Duration = Duration::from_millis(50);

/// Everything the stages of one pass share.
pub(crate) struct Run<'a> {
    pub pass_id: i64,
    /// When the pass started (on its clock), for the stages' shares of --max-runtime.
    pub started: chrono::DateTime<chrono::Utc>,
    /// A stage stopped claiming at its share of --max-runtime.
    pub cut_short: std::sync::atomic::AtomicBool,
    pub task: &'a Task,
    /// The shard and apps this pass claims.
    pub scope: Scope,
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
    /// What each stage holds, renewed together.
    pub held: Holdings,
    /// A request is sent only while its lease has this long left: the request timeout.
    pub margin: Duration,
    /// The renewals failed: the pass stopped, and ends with this error.
    pub renew_failed: Mutex<Option<DbError>>,
}

/// What a pass holds, per leased table.
pub(crate) struct Holdings {
    pub sends: held::Holdings,
    pub conversions: held::Holdings,
    pub rates: held::Holdings,
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
            lease: s.lease,
        };
        if let Task::Replay(range) = self.task {
            let stage = records::Records::replaying(self, range.clone());
            return pipeline::run(&stage, shape, self.stop).await;
        }
        // Under --max-runtime, records stop claiming at 70% of it and postbacks at 90%:
        // a backlog of sends never starves the postbacks and the rates.
        let share = |fraction: f64| {
            s.max_runtime
                .map(|limit| crate::clock::after(self.started, limit.mul_f64(fraction)))
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
            let stage = rate_posts::RatePosts::prepare(self, rules, &self.scope.apps).await?;
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
        until: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<(), DbError> {
        let stop = self.stop.child_token();
        let timer = async {
            if let Some(until) = until {
                crate::clock::sleep_until(&**self.clock, until, DEADLINE_CHECK).await;
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

    /// A claim of up to `limit` items in the pass's scope, none of `held`.
    pub fn lease_claim<'b>(&'b self, limit: usize, held: &'b [i64]) -> Claim<'b> {
        Claim {
            limit,
            lease: self.settings.lease,
            owner: &self.settings.owner,
            held,
            scope: &self.scope,
        }
    }

    /// When an item whose retries ran out is tried again.
    pub fn retry_at(&self) -> chrono::DateTime<chrono::Utc> {
        crate::clock::after(self.clock.now(), self.settings.schedule.transient_delay)
    }

    /// Renews the leases of everything the pass holds (one statement per table) and
    /// its heartbeat, every `renew_interval`, until the pass ends. If a renewal fails,
    /// the pass stops: no lease is extended any more, so no request starts on one that
    /// may be gone, and what is held is released.
    async fn keep_alive(&self) {
        let mut tick = tokio::time::interval(self.settings.renew_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.renew().await {
                tracing::error!(error = %crate::db::cause_chain(&e), "cannot renew the leases: stopping the pass");
                *self.renew_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                self.stop.cancel();
                return std::future::pending().await;
            }
        }
    }

    async fn renew(&self) -> Result<(), DbError> {
        let lease = self.settings.lease;
        for holdings in [&self.held.sends, &self.held.conversions, &self.held.rates] {
            let lost = held::renew(self.db, holdings, lease).await?;
            if lost > 0 {
                tracing::warn!(
                    table = holdings.table.name,
                    lost,
                    "leases taken over by another pass: their items are not worked"
                );
            }
        }
        passes::heartbeat(self.db, self.pass_id).await?;
        Ok(())
    }

    /// One call through the gate with the pass's retries, each attempt sent only while
    /// the item's lease (`held`) stays valid for at least the request timeout. A fatal
    /// answer stops the pass. `None` when the call was not made or its outcome is not to
    /// be recorded: the item is released.
    pub async fn call<T, F, Fut>(&self, held: Held<'_>, mut call: F) -> Option<Result<T, Failure>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        if !held.usable(self.margin) {
            return None;
        }
        let lease_short = std::cell::Cell::new(false);
        let guarded = || {
            let usable = held.usable(self.margin);
            let attempt = call();
            let lease_short = &lease_short;
            async move {
                if !usable {
                    // Not sent: the retry loop ends on this, and the item is released.
                    lease_short.set(true);
                    return Err(Failure::Rejected {
                        status: "lease".into(),
                        reason: "the lease may run out before an answer".into(),
                    });
                }
                attempt.await
            }
        };
        let outcome = tokio::select! {
            outcome = self.settings.retry.run(self.gate, guarded) => outcome?,
            _ = self.abort.cancelled() => return None,
        };
        if lease_short.get() {
            tracing::debug!("lease too short for another attempt: released, not sent");
            return None;
        }
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
