//! The second stage: post each pending conversion to the OTP or SMS postback endpoint
//! (SPEC "One pass", step 5). Marked sent only on status 0, kept with its reason when
//! rejected, tried again later when the failure was transient.

use super::calls::Called;
use super::counters::ConversionCounters;
use super::held::{Held, Holdings};
use super::pipeline::{Ctx, Stage, Worked};
use crate::db::DbError;
use crate::db::conversions::{self, Claimed, Done, Kind};
use crate::db::lease;
use crate::db::ledger::{Posted, outcome_unknown};
use crate::provider::{OtpPostback, SmsPostback};
use std::cell::Cell;
use std::collections::HashMap;
use std::time::Duration;
use tracing::Instrument;

/// The postbacks stage: only what it needs of the pass.
pub struct Postbacks<'a> {
    pub ctx: Ctx<'a>,
    /// The conversions it holds.
    pub holdings: &'a Holdings,
    pub counters: &'a ConversionCounters,
    /// How long before a later pass posts again a conversion whose retries ran out.
    pub retry_later: Duration,
}

impl Stage for Postbacks<'_> {
    type Item = Claimed;
    type Done = Done;

    fn name(&self) -> &'static str {
        "postbacks"
    }

    fn holdings(&self) -> &Holdings {
        self.holdings
    }

    fn done_id(done: &Done) -> i64 {
        done.id
    }

    async fn claim(&self, limit: usize, held: &[i64]) -> Result<Vec<Claimed>, DbError> {
        let ctx = &self.ctx;
        let claimed =
            conversions::claim(ctx.db, ctx.clock.now(), &ctx.terms.claim(limit, held)).await?;
        self.counters.claimed.add(claimed.len() as u64);
        Ok(claimed)
    }

    async fn work(&self, c: Claimed) -> Worked<Claimed, Done> {
        let span = tracing::debug_span!(
            "conversion",
            conversion_id = c.id,
            kind = c.kind.as_str(),
            message_id = %c.message_id,
        );
        let ctx = &self.ctx;
        let client = ctx.calls.client;
        async {
            let Some(number) = c.number.clone() else {
                let reason = "no number: neither the conversion nor its send has one".to_owned();
                return Worked::Done(Done {
                    id: c.id,
                    lease: c.lease,
                    posted: Posted::Rejected(reason),
                    in_doubt: c.in_doubt,
                });
            };
            // A request that timed out or lost its connection after it was sent may have
            // reached the provider: a later acknowledgement may be a duplicate.
            let doubt = Cell::new(c.in_doubt);
            let in_flight = Cell::new(false);
            let held = Held {
                holdings: self.holdings,
                id: c.id,
            };
            let called = ctx
                .calls
                .call(held, || async {
                    in_flight.set(true);
                    let answer = match c.kind {
                        Kind::Otp => {
                            let body =
                                OtpPostback::new(&c.app_id, &c.message_id, &number, c.converted_at);
                            client.otp_postback(&body).await
                        }
                        Kind::Sms => {
                            let body =
                                SmsPostback::new(&c.app_id, &c.message_id, &number, c.converted_at);
                            client.sms_postback(&body).await
                        }
                    };
                    in_flight.set(false);
                    if outcome_unknown(&answer) {
                        doubt.set(true);
                    }
                    answer
                })
                .await;
            let Called::Answered(outcome) = called else {
                // Abandoned mid-request, or stopped after an attempt of unknown outcome:
                // released in doubt.
                let in_doubt = doubt.get() || in_flight.get();
                return Worked::Release(Claimed { in_doubt, ..c });
            };
            let retry_at = crate::clock::after(ctx.clock.now(), self.retry_later);
            let posted = Posted::from_outcome(outcome, retry_at);
            Worked::Done(Done {
                id: c.id,
                lease: c.lease,
                posted,
                in_doubt: doubt.get(),
            })
        }
        .instrument(span)
        .await
    }

    async fn write(&self, done: Vec<Done>, released: Vec<Claimed>) -> Result<(), DbError> {
        let (db, now) = (self.ctx.db, self.ctx.clock.now());
        let written: HashMap<i64, conversions::Written> = conversions::complete(db, now, &done)
            .await?
            .into_iter()
            .map(|w| (w.id, w))
            .collect();
        let c = self.counters;
        for d in &done {
            let Some(w) = written.get(&d.id) else {
                c.lease_lost.add(1);
                continue;
            };
            match d.posted {
                Posted::Sent => {
                    c.sent.add(1);
                    // As the ledger has it: what this pass wrote as sent and in doubt.
                    if w.in_doubt {
                        c.possibly_duplicated.add(1);
                    }
                }
                Posted::Rejected(_) => c.rejected.add(1),
                Posted::Later { .. } => c.later.add(1),
            }
        }
        c.released
            .add(lease::release(db, &conversions::DUE, now, &released).await?);
        Ok(())
    }
}
