//! The second stage: post each pending conversion to the OTP or SMS postback endpoint
//! (SPEC "One pass", step 5). Marked sent only on status 0, kept with its reason when
//! rejected, tried again later when the failure was transient.

use super::Run;
use super::held::{Held, Holdings};
use super::pipeline::{Stage, Worked};
use super::summary::Counters;
use crate::db::DbError;
use crate::db::conversions::{self, Claimed, Done, Kind};
use crate::db::lease;
use crate::db::ledger::{Posted, outcome_unknown};
use crate::provider::{OtpPostback, SmsPostback};
use std::cell::Cell;
use std::collections::HashMap;
use tracing::Instrument;

pub struct Postbacks<'a> {
    pub run: &'a Run<'a>,
}

impl Stage for Postbacks<'_> {
    type Item = Claimed;
    type Done = Done;

    fn name(&self) -> &'static str {
        "postbacks"
    }

    fn holdings(&self) -> &Holdings {
        &self.run.held.conversions
    }

    fn done_id(done: &Done) -> i64 {
        done.id
    }

    async fn claim(&self, limit: usize, held: &[i64]) -> Result<Vec<Claimed>, DbError> {
        let r = self.run;
        let claimed = conversions::claim(r.db, r.clock.now(), &r.lease_claim(limit, held)).await?;
        Counters::add(&r.counters.conversions.claimed, claimed.len() as u64);
        Ok(claimed)
    }

    async fn work(&self, c: Claimed) -> Worked<Claimed, Done> {
        let span = tracing::debug_span!(
            "conversion",
            conversion_id = c.id,
            kind = c.kind.as_str(),
            message_id = %c.message_id,
        );
        let r = self.run;
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
                holdings: &r.held.conversions,
                id: c.id,
            };
            let outcome = r
                .call(held, || async {
                    in_flight.set(true);
                    let answer = match c.kind {
                        Kind::Otp => {
                            let body =
                                OtpPostback::new(&c.app_id, &c.message_id, &number, c.converted_at);
                            r.client.otp_postback(&body).await
                        }
                        Kind::Sms => {
                            let body =
                                SmsPostback::new(&c.app_id, &c.message_id, &number, c.converted_at);
                            r.client.sms_postback(&body).await
                        }
                    };
                    in_flight.set(false);
                    if outcome_unknown(&answer) {
                        doubt.set(true);
                    }
                    answer
                })
                .await;
            let Some(outcome) = outcome else {
                // Abandoned mid-request, or stopped after an attempt of unknown outcome:
                // released in doubt.
                let in_doubt = doubt.get() || in_flight.get();
                return Worked::Release(Claimed { in_doubt, ..c });
            };
            let posted = Posted::from_outcome(outcome, r.retry_at());
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
        let r = self.run;
        let now = r.clock.now();
        let written: HashMap<i64, conversions::Written> = conversions::complete(r.db, now, &done)
            .await?
            .into_iter()
            .map(|w| (w.id, w))
            .collect();
        let c = &r.counters.conversions;
        for d in &done {
            let Some(w) = written.get(&d.id) else {
                Counters::add(&c.lease_lost, 1);
                continue;
            };
            match d.posted {
                Posted::Sent => {
                    Counters::add(&c.sent, 1);
                    // As the ledger has it: what this pass wrote as sent and in doubt.
                    if w.in_doubt {
                        Counters::add(&c.possibly_duplicated, 1);
                    }
                }
                Posted::Rejected(_) => Counters::add(&c.rejected, 1),
                Posted::Later { .. } => Counters::add(&c.later, 1),
            }
        }
        Counters::add(
            &c.released,
            lease::release(r.db, &conversions::DUE, now, &released).await?,
        );
        Ok(())
    }
}
