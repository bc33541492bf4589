//! A pass from start to end: recorded as started, its stages run under its deadline,
//! its grace after a stop and its lease renewals, then judged and recorded as ended.

use super::calls::Calls;
use super::counters::Counters;
use super::held::PassHoldings;
use super::pipeline::{Ctx, StageEnd, Terms};
use super::stages::{DEADLINE_CHECK, Stages};
use super::summary::{Ended, Outcome, Summary, Totals};
use super::{Deps, PassSettings, Task};
use crate::clock::{self, Clock};
use crate::db::passes;
use crate::db::sends;
use crate::db::{Db, DbError};
use crate::provider::Gate;
use crate::provider::limit::LimitSettings;
use chrono::{DateTime, Utc};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Runs one pass to its end and records it (best effort when the database failed).
pub async fn lifecycle(
    deps: Deps<'_>,
    settings: &PassSettings,
    task: &Task,
) -> Result<Summary, DbError> {
    let started = Instant::now();
    let pass_id = begin(deps.db, deps.clock.now(), settings, task).await?;
    let span = tracing::info_span!("pass", pass_id, kind = task.kind(), owner = %settings.owner);
    async {
        tracing::info!(concurrency = settings.concurrency, rate = ?settings.rate, "pass started");
        let retries_before = settings.retry.budget.left();
        let statements_before = deps.db.statements();
        let ran = work(&deps, settings, task, pass_id).await;
        deps.progress.finish();
        if let Err(e) = &ran.result {
            tracing::error!(error = %crate::db::cause_chain(e), "the database failed mid-pass: stopping; the leases expire for the next pass");
        }
        let (ended, error) = Ended::judge(Outcome {
            failed: ran.result.as_ref().err(),
            fatal: ran.fatal.as_ref(),
            tripped: ran.tripped,
            interrupted: deps.interrupt.is_cancelled(),
            hit_deadline: ran.hit_deadline,
        });
        let summary = Summary::new(Totals {
            pass_id,
            ended,
            counters: &ran.counters,
            requests: ran.requests,
            in_flight_limit_peak: ran.in_flight_limit_peak,
            retries: retries_before - settings.retry.budget.left(),
            // The final `passes` update is counted too.
            db_statements: deps.db.statements() - statements_before + 1,
            elapsed_secs: started.elapsed().as_secs_f64(),
            error,
        });
        finish(deps.db, &summary, deps.clock.now(), ran.result.is_err()).await?;
        tracing::info!(ended = ended.as_str(), checked = summary.checked, "pass ended");
        Ok(summary)
    }
    .instrument(span)
    .await
}

/// Records the pass as running and clears the leases a dead pass left on finished
/// sends. Answers the pass's id.
async fn begin(
    db: &Db,
    now: DateTime<Utc>,
    settings: &PassSettings,
    task: &Task,
) -> Result<i64, DbError> {
    let parameters = serde_json::json!({ "settings": settings, "task": task });
    // Three renewals missed: the pass is gone.
    let heartbeat_timeout = settings.renew_interval() * 3;
    let pass_id = passes::start(
        db,
        task.kind(),
        &settings.owner,
        now,
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
    Ok(pass_id)
}

/// What the stages came to.
struct Ran {
    result: Result<(), DbError>,
    fatal: Option<crate::provider::Failure>,
    tripped: Option<crate::provider::Trip>,
    hit_deadline: bool,
    requests: u64,
    in_flight_limit_peak: usize,
    counters: Counters,
}

/// Runs the stages under the pass's deadline, its grace after a stop and its lease
/// renewals. The deadline, a signal or a fatal answer stops claiming and new requests;
/// in-flight requests then get `grace` to finish before they are abandoned (and their
/// items released). A failed renewal stops the pass too, and ends it with its error.
async fn work(deps: &Deps<'_>, settings: &PassSettings, task: &Task, pass_id: i64) -> Ran {
    let stop = deps.interrupt.child_token();
    let abort = CancellationToken::new();
    let gate = Gate::new(settings.rate, settings.burst, stop.clone())
        .with_breaker(settings.breaker)
        .with_limit(LimitSettings {
            min: 1,
            max: settings.concurrency,
            rate: settings.rate,
            adaptive: settings.adaptive,
            memory_budget: settings.memory_budget_mib.map(|m| m * 1024 * 1024),
        });
    let calls = Calls::new(deps.client, &gate, &settings.retry, &stop, &abort);
    let scope = settings.scope();
    let held = PassHoldings::default();
    let counters = Counters::default();
    let started = deps.clock.now();
    let stages = Stages {
        ctx: Ctx {
            db: deps.db,
            clock: &deps.clock,
            calls: &calls,
            terms: Terms {
                lease: settings.lease,
                owner: &settings.owner,
                scope: &scope,
            },
        },
        settings,
        task,
        held: &held,
        counters: &counters,
        progress: &deps.progress,
        pass_id,
        started,
        stop: &stop,
    };
    let finished = CancellationToken::new();
    let working = async {
        let end = stages.run().await;
        finished.cancel();
        end
    };
    let renewing = async {
        let every = settings.renew_interval();
        tokio::select! {
            error = held.keep_alive(deps.db, pass_id, every, settings.lease) => {
                stop.cancel();
                Some(error)
            }
            () = finished.cancelled() => None,
        }
    };
    let hit_deadline = AtomicBool::new(false);
    let (end, renew_failed) = tokio::select! {
        both = async { tokio::join!(working, renewing) } => both,
        () = timers(&*deps.clock, started, settings, &stop, &abort, &hit_deadline) => {
            unreachable!("the timers never end")
        }
    };
    let result = match (end, renew_failed) {
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(end), None) => Ok(end),
    };
    Ran {
        hit_deadline: hit_deadline.into_inner()
            || result.as_ref().is_ok_and(|end| *end == StageEnd::CutShort),
        result: result.map(|_| ()),
        fatal: calls.take_fatal(),
        tripped: gate.tripped_at_end(),
        requests: gate.admitted(),
        in_flight_limit_peak: gate.in_flight_limit().1,
        counters,
    }
}

/// Stops the pass at `--max-runtime` (and says so in `hit`), then `grace` after any
/// stop abandons the calls in flight. Never ends.
async fn timers(
    clock: &dyn Clock,
    started: DateTime<Utc>,
    settings: &PassSettings,
    stop: &CancellationToken,
    abort: &CancellationToken,
    hit: &AtomicBool,
) {
    match settings.max_runtime {
        Some(limit) => tokio::select! {
            () = clock::sleep_until(clock, clock::after(started, limit), DEADLINE_CHECK) => {
                tracing::info!("max runtime reached: releasing what has not started");
                hit.store(true, Ordering::Relaxed);
                stop.cancel();
            }
            () = stop.cancelled() => {}
        },
        None => stop.cancelled().await,
    }
    tokio::time::sleep(settings.grace).await;
    tracing::warn!(grace = ?settings.grace, "grace period over: abandoning in-flight requests");
    abort.cancel();
    std::future::pending::<()>().await
}

/// Records how the pass ended. After a database failure this is best effort (the pool
/// opens a fresh connection if it can): the summary says what happened (exit 4) either
/// way.
async fn finish(
    db: &Db,
    summary: &Summary,
    now: DateTime<Utc>,
    db_failed: bool,
) -> Result<(), DbError> {
    let recorded = passes::finish(
        db,
        summary.pass_id,
        now,
        summary.ended.as_str(),
        &serde_json::to_value(summary).unwrap_or_default(),
        summary.error.as_deref(),
    )
    .await;
    match recorded {
        Err(e) if db_failed => {
            tracing::error!(
                error = %crate::db::cause_chain(&e),
                "cannot record the failed pass: it shows as abandoned once its heartbeat is stale"
            );
            Ok(())
        }
        recorded => Ok(recorded?),
    }
}
