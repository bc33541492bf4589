//! The third stage: compute each app's conversion rate per mcc over the closed windows,
//! then post each new window to `/otp/backfillRate` once (SPEC "One pass", step 6).

use super::calls::Called;
use super::counters::RateCounters;
use super::held::{Held, Holdings};
use super::pipeline::{Ctx, Stage, Worked};
use crate::db::DbError;
use crate::db::lease;
use crate::db::ledger::{Posted, outcome_unknown};
use crate::db::rates::{self, Claimed, Done};
use crate::provider::BackfillRate;
use crate::rates::{Rules, rate_percent};
use std::cell::Cell;
use std::time::Duration;
use tracing::Instrument;

/// The rates stage: only what it needs of the pass.
pub struct RatePosts<'a> {
    ctx: Ctx<'a>,
    /// The windows it holds.
    holdings: &'a Holdings,
    counters: &'a RateCounters,
    /// How long before a later pass posts again a window whose retries ran out.
    retry_later: Duration,
}

impl<'a> RatePosts<'a> {
    /// Computes the closed windows of the pass's apps (all if none; one statement),
    /// then is ready to post them.
    pub async fn prepare(
        ctx: Ctx<'a>,
        holdings: &'a Holdings,
        counters: &'a RateCounters,
        rules: &Rules,
        retry_later: Duration,
    ) -> Result<Self, DbError> {
        let apps = &ctx.terms.scope.apps;
        let computed = rates::compute(ctx.db, ctx.clock.now(), rules, apps).await?;
        tracing::debug!(
            windows = computed.windows_computed,
            changed = computed.windows_changed,
            "conversion-rate windows recomputed"
        );
        counters.windows_changed.add(computed.windows_changed);
        counters.changed_after_post.add(computed.changed_after_post);
        if computed.changed_after_post > 0 && !rules.repost {
            tracing::warn!(
                windows = computed.changed_after_post,
                "conversion rates changed after they were posted; --repost-rates posts them again"
            );
        }
        Ok(Self {
            ctx,
            holdings,
            counters,
            retry_later,
        })
    }
}

impl Stage for RatePosts<'_> {
    type Item = Claimed;
    type Done = Done;

    fn name(&self) -> &'static str {
        "rates"
    }

    fn holdings(&self) -> &Holdings {
        self.holdings
    }

    fn done_id(done: &Done) -> i64 {
        done.window.id
    }

    async fn claim(&self, limit: usize, held: &[i64]) -> Result<Vec<Claimed>, DbError> {
        let ctx = &self.ctx;
        let claimed = rates::claim(ctx.db, ctx.clock.now(), &ctx.terms.claim(limit, held)).await?;
        self.counters.claimed.add(claimed.len() as u64);
        Ok(claimed)
    }

    async fn work(&self, window: Claimed) -> Worked<Claimed, Done> {
        let span = tracing::debug_span!(
            "rate",
            app_id = %window.app_id,
            mcc = window.mcc,
            window_start = %window.window_start,
        );
        let (ctx, client) = (&self.ctx, self.ctx.calls.client);
        async {
            let (converted, sent) = (
                u64::try_from(window.converted).unwrap_or(0),
                u64::try_from(window.sent).unwrap_or(0),
            );
            let rate = rate_percent(converted, sent).unwrap_or_default();
            let doubt = Cell::new(window.in_doubt);
            let mut callback_at = ctx.clock.now();
            let held = Held {
                holdings: self.holdings,
                id: window.id,
            };
            let called = ctx
                .calls
                .call(held, || {
                    // callbackTime is when it is posted: each attempt says its own time.
                    callback_at = ctx.clock.now();
                    let body = BackfillRate::new(
                        &window.app_id,
                        window.mcc,
                        converted,
                        sent,
                        callback_at.fixed_offset(),
                    );
                    let doubt = &doubt;
                    async move {
                        let answer = match body {
                            Some(body) => client.backfill_rate(&body).await,
                            None => unreachable!("the ledger keeps only windows with sends"),
                        };
                        if outcome_unknown(&answer) {
                            doubt.set(true);
                        }
                        answer
                    }
                })
                .await;
            let Called::Answered(outcome) = called else {
                // Not sent, or stopped after an attempt of unknown outcome: released,
                // in doubt if an attempt may have been applied.
                let in_doubt = doubt.get();
                return Worked::Release(Claimed { in_doubt, ..window });
            };
            Worked::Done(Done {
                posted: Posted::from_outcome(
                    outcome,
                    crate::clock::after(ctx.clock.now(), self.retry_later),
                ),
                rate,
                callback_at,
                in_doubt: doubt.get(),
                window,
            })
        }
        .instrument(span)
        .await
    }

    async fn write(&self, done: Vec<Done>, released: Vec<Claimed>) -> Result<(), DbError> {
        let (db, now) = (self.ctx.db, self.ctx.clock.now());
        let written: std::collections::HashSet<i64> =
            rates::complete(db, now, &done).await?.into_iter().collect();
        let c = self.counters;
        for d in &done {
            if !written.contains(&d.window.id) {
                continue;
            }
            match d.posted {
                Posted::Sent => c.sent.add(1),
                Posted::Rejected(_) => c.rejected.add(1),
                Posted::Later { .. } => c.later.add(1),
            }
        }
        c.released
            .add(lease::release(db, &rates::DUE, now, &released).await?);
        Ok(())
    }
}
