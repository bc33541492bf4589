//! The stages of a pass in order: records, then postbacks, then rates. Each runs
//! through the [`pipeline`](super::pipeline) until nothing is due, the pass stops, or
//! its share of `--max-runtime` is over, and is given only what it needs.

use super::counters::Counters;
use super::held::PassHoldings;
use super::pipeline::{self, Ctx, Shape, Stage, StageEnd};
use super::postbacks::Postbacks;
use super::rate_posts::RatePosts;
use super::records::Records;
use super::sweep::Sweep;
use super::{PassSettings, Task};
use crate::clock;
use crate::db::DbError;
use crate::progress::Progress;
use chrono::{DateTime, Utc};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the deadlines (`--max-runtime` and the stages' shares of it) look at the
/// clock.
pub const DEADLINE_CHECK: Duration = Duration::from_millis(50);

/// What the stages are built from.
pub struct Stages<'a> {
    pub ctx: Ctx<'a>,
    pub settings: &'a PassSettings,
    pub task: &'a Task,
    pub held: &'a PassHoldings,
    pub counters: &'a Counters,
    pub progress: &'a Progress,
    pub pass_id: i64,
    /// When the pass started (on its clock), for the stages' shares of --max-runtime.
    pub started: DateTime<Utc>,
    pub stop: &'a CancellationToken,
}

impl Stages<'_> {
    /// Runs the stages in order; answers how the last one that ran ended, or
    /// [`StageEnd::CutShort`] if any was cut short by its share of --max-runtime.
    pub async fn run(&self) -> Result<StageEnd, DbError> {
        let s = self.settings;
        // With a rate, a claim holds no more than can be sent in a quarter of the lease
        // (two batches wait in the queue): queued sends never outlive their lease.
        let by_rate = s.rate.map_or(usize::MAX, |rate| {
            ((rate * s.lease.as_secs_f64() / 4.0) as usize).max(1)
        });
        let shape = Shape {
            claim_batch: s.batch_size.min(by_rate),
            write_batch: s.write_batch,
            writers: s.writers,
            concurrency: s.concurrency,
            write_interval: s.write_interval,
            lease: s.lease,
        };
        if let Task::Replay(range) = self.task {
            let sweep = Sweep::new(range.clone(), s.lease, self.stop);
            return pipeline::run(&self.records(Some(sweep)), shape, &self.places(), self.stop)
                .await;
        }
        // Under --max-runtime, records stop claiming at 70% of it and postbacks at 90%:
        // a backlog of sends never starves the postbacks and the rates.
        let share = |fraction: f64| {
            s.max_runtime
                .map(|limit| clock::after(self.started, limit.mul_f64(fraction)))
        };
        let mut ends = vec![self.stage(&self.records(None), shape, share(0.7)).await?];
        // Postbacks and rates are claimed in small batches: what a killed pass leaves
        // claimed is what may have been posted without being recorded.
        let small = Shape {
            claim_batch: s.concurrency.clamp(1, shape.claim_batch),
            write_batch: s.concurrency.clamp(1, s.write_batch.max(1)),
            ..shape
        };
        if s.postbacks && !self.stop.is_cancelled() {
            let postbacks = Postbacks {
                ctx: self.ctx,
                holdings: &self.held.conversions,
                counters: &self.counters.conversions,
                retry_later: s.schedule.transient_delay,
            };
            ends.push(self.stage(&postbacks, small, share(0.9)).await?);
        }
        // Rates are computed over every send: one shard (the first) does it.
        if let Some(rules) = &s.rates
            && !self.stop.is_cancelled()
            && s.shard.is_none_or(|shard| shard.index == 0)
        {
            let rates = RatePosts::prepare(
                self.ctx,
                &self.held.rates,
                &self.counters.rates,
                rules,
                s.schedule.transient_delay,
            )
            .await?;
            ends.push(self.stage(&rates, small, None).await?);
        }
        if ends.contains(&StageEnd::CutShort) {
            return Ok(StageEnd::CutShort);
        }
        Ok(ends.last().copied().unwrap_or(StageEnd::Drained))
    }

    /// The records stage: the sends that are due, or a replay's sweep.
    fn records<'s>(&'s self, replay: Option<Sweep<'s>>) -> Records<'s> {
        Records::new(
            self.ctx,
            &self.held.sends,
            &self.counters.sends,
            self.progress,
            &self.settings.schedule,
            self.pass_id,
            replay,
        )
    }

    /// The pass's in-flight limit, as the pipeline reads it.
    fn places(&self) -> impl Fn() -> usize + Sync + '_ {
        || self.ctx.calls.places()
    }

    /// Runs a stage until nothing is due or the pass stops; from `until` on, it claims
    /// no more (what it claimed still goes through).
    async fn stage<S: Stage>(
        &self,
        stage: &S,
        shape: Shape,
        until: Option<DateTime<Utc>>,
    ) -> Result<StageEnd, DbError> {
        let stop = self.stop.child_token();
        let places = self.places();
        let running = pipeline::run(stage, shape, &places, &stop);
        tokio::pin!(running);
        let Some(until) = until else {
            return running.await;
        };
        tokio::select! {
            end = &mut running => return end,
            () = clock::sleep_until(&**self.ctx.clock, until, DEADLINE_CHECK) => {}
        }
        if stop.is_cancelled() {
            return running.await;
        }
        tracing::info!(
            stage = stage.name(),
            "its share of --max-runtime is over: no more claims"
        );
        stop.cancel();
        running.await?;
        Ok(StageEnd::CutShort)
    }
}
