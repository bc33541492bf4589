//! The third stage: compute each app's conversion rate per mcc over the closed windows,
//! then post each new window to `/otp/backfillRate` once (SPEC "One pass", step 6).

use super::Run;
use super::held::{Held, Holdings};
use super::pipeline::{Stage, Worked};
use super::summary::Counters;
use crate::db::DbError;
use crate::db::lease;
use crate::db::ledger::{Posted, outcome_unknown};
use crate::db::rates::{self, Claimed, Done};
use crate::provider::BackfillRate;
use crate::rates::{Rules, rate_percent};
use std::cell::Cell;
use tracing::Instrument;

pub struct RatePosts<'a> {
    run: &'a Run<'a>,
}

impl<'a> RatePosts<'a> {
    /// Computes the closed windows of `apps` (all if empty; one statement), then is ready
    /// to post them.
    pub async fn prepare(
        run: &'a Run<'a>,
        rules: &Rules,
        apps: &[String],
    ) -> Result<Self, DbError> {
        let computed = rates::compute(run.db, run.clock.now(), rules, apps).await?;
        tracing::debug!(
            windows = computed.windows_computed,
            changed = computed.windows_changed,
            "conversion-rate windows recomputed"
        );
        let c = &run.counters.rates;
        Counters::add(&c.windows_changed, computed.windows_changed);
        Counters::add(&c.changed_after_post, computed.changed_after_post);
        if computed.changed_after_post > 0 && !rules.repost {
            tracing::warn!(
                windows = computed.changed_after_post,
                "conversion rates changed after they were posted; --repost-rates posts them again"
            );
        }
        Ok(Self { run })
    }
}

impl Stage for RatePosts<'_> {
    type Item = Claimed;
    type Done = Done;

    fn name(&self) -> &'static str {
        "rates"
    }

    fn holdings(&self) -> &Holdings {
        &self.run.held.rates
    }

    fn done_id(done: &Done) -> i64 {
        done.window.id
    }

    async fn claim(&self, limit: usize, held: &[i64]) -> Result<Vec<Claimed>, DbError> {
        let r = self.run;
        let claimed = rates::claim(r.db, r.clock.now(), &r.lease_claim(limit, held)).await?;
        Counters::add(&r.counters.rates.claimed, claimed.len() as u64);
        Ok(claimed)
    }

    async fn work(&self, window: Claimed) -> Worked<Claimed, Done> {
        let span = tracing::debug_span!(
            "rate",
            app_id = %window.app_id,
            mcc = window.mcc,
            window_start = %window.window_start,
        );
        let r = self.run;
        async {
            let (converted, sent) = (
                u64::try_from(window.converted).unwrap_or(0),
                u64::try_from(window.sent).unwrap_or(0),
            );
            let rate = rate_percent(converted, sent).unwrap_or_default();
            let doubt = Cell::new(window.in_doubt);
            let mut callback_at = r.clock.now();
            let held = Held {
                holdings: &r.held.rates,
                id: window.id,
            };
            let outcome = r
                .call(held, || {
                    // callbackTime is when it is posted: each attempt says its own time.
                    callback_at = r.clock.now();
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
                            Some(body) => r.client.backfill_rate(&body).await,
                            None => unreachable!("the ledger keeps only windows with sends"),
                        };
                        if outcome_unknown(&answer) {
                            doubt.set(true);
                        }
                        answer
                    }
                })
                .await;
            let Some(outcome) = outcome else {
                // Not sent, or stopped after an attempt of unknown outcome: released,
                // in doubt if an attempt may have been applied.
                let in_doubt = doubt.get();
                return Worked::Release(Claimed { in_doubt, ..window });
            };
            Worked::Done(Done {
                posted: Posted::from_outcome(outcome, r.retry_at()),
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
        let r = self.run;
        let now = r.clock.now();
        let written: std::collections::HashSet<i64> = rates::complete(r.db, now, &done)
            .await?
            .into_iter()
            .collect();
        let c = &r.counters.rates;
        for d in &done {
            if !written.contains(&d.window.id) {
                continue;
            }
            match d.posted {
                Posted::Sent => Counters::add(&c.sent, 1),
                Posted::Rejected(_) => Counters::add(&c.rejected, 1),
                Posted::Later { .. } => Counters::add(&c.later, 1),
            }
        }
        Counters::add(
            &c.released,
            lease::release(r.db, &rates::DUE, now, &released).await?,
        );
        Ok(())
    }
}
