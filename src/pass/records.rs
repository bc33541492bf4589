//! The first stage: fetch each due send's record, decide its next state, store both
//! (SPEC "One pass", steps 1-4).

use super::calls::Called;
use super::counters::SendCounters;
use super::held::{Held, Holdings};
use super::pipeline::{Ctx, Stage, Worked};
use super::sweep::Sweep;
use crate::db::DbError;
use crate::db::lease;
use crate::db::records;
use crate::db::revisions;
use crate::db::sends::{self, Claimed, Completing, Completion, DueClaims, SendState};
use crate::decide::{Checked, Decision, Replayed, Schedule};
use crate::progress::Progress;
use crate::provider::Failure;
use crate::record::Fetched;
use rustc_hash::FxHashSet;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// The answers held between their fetch and their write, in bytes at most: beyond it,
/// workers wait for the writers (a batch of large answers cannot grow without bound).
/// At 50 ms, where the writers are the bottleneck, 8 MiB gave the same sends/s as 4 and
/// a peak RSS 0.6 MiB higher.
pub const ANSWER_BYTES_IN_MEMORY: usize = 4 * 1024 * 1024;

/// The records stage: only what it needs of the pass.
pub struct Records<'a> {
    ctx: Ctx<'a>,
    /// The sends it holds.
    holdings: &'a Holdings,
    counters: &'a SendCounters,
    progress: &'a Progress,
    /// What becomes of a send after a check.
    schedule: &'a Schedule,
    /// The pass, whose id the replay's revisions carry.
    pass_id: i64,
    /// For a replay: its range, swept in id order, whatever the sends' states; `None`
    /// for the sends that are due.
    replay: Option<Sweep<'a>>,
    /// Bytes of answers waiting to be written (see [`ANSWER_BYTES_IN_MEMORY`]).
    answer_bytes: Arc<Semaphore>,
    /// Its claims of due sends, each from where the last stopped.
    due: DueClaims,
}

impl<'a> Records<'a> {
    pub fn new(
        ctx: Ctx<'a>,
        holdings: &'a Holdings,
        counters: &'a SendCounters,
        progress: &'a Progress,
        schedule: &'a Schedule,
        pass_id: i64,
        replay: Option<Sweep<'a>>,
    ) -> Self {
        Self {
            ctx,
            holdings,
            counters,
            progress,
            schedule,
            pass_id,
            replay,
            answer_bytes: Arc::new(Semaphore::new(ANSWER_BYTES_IN_MEMORY)),
            due: DueClaims::default(),
        }
    }
}

/// A checked send: its record when it was read, and what becomes of it.
pub struct CheckedSend {
    send: Claimed,
    fetched: Option<Box<Fetched>>,
    decision: Decision,
    /// A replay's answer less final than what is stored: kept aside, not stored.
    regression: bool,
    /// Its share of [`ANSWER_BYTES_IN_MEMORY`], given back once written.
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Stage for Records<'_> {
    type Item = Claimed;
    type Done = CheckedSend;

    fn name(&self) -> &'static str {
        "records"
    }

    fn holdings(&self) -> &Holdings {
        self.holdings
    }

    fn done_id(done: &CheckedSend) -> i64 {
        done.send.id
    }

    async fn claim(&self, limit: usize, held: &[i64]) -> Result<Vec<Claimed>, DbError> {
        let ctx = &self.ctx;
        let claimed = match &self.replay {
            None => {
                let c = ctx.terms.claim(limit, held);
                self.due.claim(ctx.db, ctx.clock.now(), &c).await?
            }
            Some(sweep) => sweep.claim(ctx, limit, held).await?,
        };
        self.counters.claimed.add(claimed.len() as u64);
        Ok(claimed)
    }

    async fn work(&self, send: Claimed) -> Worked<Claimed, CheckedSend> {
        let span = tracing::debug_span!(
            "send",
            send_id = send.id,
            verification_id = send.verification_id.as_deref(),
            order_id = send.order_id.as_deref(),
        );
        let ctx = &self.ctx;
        let client = ctx.calls.client;
        async {
            let held = Held {
                holdings: self.holdings,
                id: send.id,
            };
            let called = ctx
                .calls
                .call(held, || async {
                    match (&send.verification_id, &send.order_id) {
                        (Some(id), _) => client.record_by_verification_id(id).await,
                        (None, Some(order)) => client.record_by_order_id(&send.app_id, order).await,
                        (None, None) => Err(Failure::Rejected {
                            status: "none".into(),
                            reason: "the send has neither a verification id nor an order id".into(),
                        }),
                    }
                })
                .await;
            let Called::Answered(outcome) = called else {
                return Worked::Release(send);
            };
            let checked = match &outcome {
                Ok(fetched) => Checked::Record(&fetched.record),
                Err(failure) => Checked::Failed(failure),
            };
            let Replayed {
                decision,
                regression,
            } = self.decide(&send, checked);
            let fetched = outcome.ok().map(Box::new);
            let weight = fetched
                .as_ref()
                .map_or(0, |f| f.raw.len())
                .min(ANSWER_BYTES_IN_MEMORY);
            let bytes = match u32::try_from(weight) {
                Ok(n) if n > 0 => Arc::clone(&self.answer_bytes)
                    .acquire_many_owned(n)
                    .await
                    .ok(),
                _ => None,
            };
            Worked::Done(CheckedSend {
                send,
                fetched,
                decision,
                regression,
                _bytes: bytes,
            })
        }
        .instrument(span)
        .await
    }

    /// One transaction: complete the sends still held, then store their records; then
    /// release what was not checked.
    async fn write(&self, batch: Vec<CheckedSend>, released: Vec<Claimed>) -> Result<(), DbError> {
        let db = self.ctx.db;
        let now = self.ctx.clock.now();
        if !batch.is_empty() {
            let completions: Vec<Completion> = batch
                .iter()
                .map(|c| Completion {
                    id: c.send.id,
                    lease: c.send.lease,
                    state: c.decision.state,
                    next_check_at: c.decision.next_check_at,
                    last_error: c.decision.last_error.clone(),
                })
                .collect();
            let mut tx = db.pool().begin().await?;
            let replay = self.replay.is_some();
            let completing = if replay {
                Completing::Replay
            } else {
                Completing::Pass
            };
            // Completed under their lease: each (id, token) once. Only those records are
            // stored, so a batch never writes a send twice.
            let completed: FxHashSet<(i64, uuid::Uuid)> =
                sends::complete(&mut tx, now, &completions, completing)
                    .await?
                    .into_iter()
                    .collect();
            let mut seen = FxHashSet::default();
            let (regressions, fetched): (Vec<_>, Vec<_>) = batch
                .iter()
                .filter(|c| {
                    completed.contains(&(c.send.id, c.send.lease)) && seen.insert(c.send.id)
                })
                .filter_map(|c| c.fetched.as_deref().map(|f| (c, f)))
                .partition(|(c, _)| c.regression);
            // Sends checked for the first time have nothing stored yet: only inserted.
            let (new, known): (Vec<_>, Vec<_>) =
                fetched.into_iter().partition(|(c, _)| c.send.first_check());
            let (new, known, regressions) = (by_id(new), by_id(known), by_id(regressions));
            let held: Vec<i64> = completed.iter().map(|(id, _)| *id).collect();
            if replay {
                let raw: Vec<(i64, &str)> = new
                    .iter()
                    .chain(&known)
                    .map(|(id, f)| (*id, f.raw.as_str()))
                    .collect();
                revisions::capture(&mut tx, self.pass_id, now, &raw, &held).await?;
                db.counted(1);
                if !regressions.is_empty() {
                    let kept: Vec<(i64, &str, Option<i64>)> = regressions
                        .iter()
                        .map(|(id, f)| {
                            let matched = f.record.verification.matched.map(|m| m.code());
                            (*id, f.raw.as_str(), matched)
                        })
                        .collect();
                    revisions::keep_regressions(&mut tx, self.pass_id, now, &kept, &held).await?;
                    db.counted(1);
                }
            }
            let mut stored = records::store_new(&mut tx, now, &new, &held).await?;
            let more = records::store(&mut tx, now, &known, &held).await?;
            stored.records += more.records;
            stored.attempts += more.attempts;
            tx.commit().await?;
            // BEGIN, the sends update (after the flag of a pass), COMMIT; the two
            // stores of each kind of record there was (`new` and `known` hold completed
            // sends only), the new ones' between SAVEPOINT and RELEASE.
            let stores = |n: usize, each: u64| if n == 0 { 0 } else { each };
            let flag = u64::from(completing == Completing::Pass);
            db.counted(3 + flag + stores(new.len(), 4) + stores(known.len(), 2));
            self.count(&batch, &completed, stored);
        }
        let n = lease::release(db, &sends::DUE, now, &released).await?;
        self.counters.released.add(n);
        Ok(())
    }
}

/// The sends' ids beside their answers, as the stores take them.
fn by_id<'a>(checked: Vec<(&CheckedSend, &'a Fetched)>) -> Vec<(i64, &'a Fetched)> {
    checked.into_iter().map(|(c, f)| (c.send.id, f)).collect()
}

impl Records<'_> {
    /// What becomes of `send` after its check: the pass's decision, or a replay's.
    fn decide(&self, send: &Claimed, checked: Checked) -> Replayed {
        let (schedule, now) = (self.schedule, self.ctx.clock.now());
        let (sent_at, attempts) = (send.sent_at, send.attempts);
        match &self.replay {
            None => schedule
                .decide(sent_at, attempts, checked, now)
                .map(|decision| Replayed {
                    decision,
                    regression: false,
                }),
            Some(_) => schedule.replayed(send.state, sent_at, attempts, checked, now),
        }
        // A fatal answer stops the pass and its send is given back: it is never decided.
        .expect("fatal failures stop the pass before a decision")
    }

    fn count(
        &self,
        batch: &[CheckedSend],
        held: &FxHashSet<(i64, uuid::Uuid)>,
        stored: records::Stored,
    ) {
        let c = self.counters;
        c.records_changed.add(stored.records);
        c.attempts_changed.add(stored.attempts);
        for checked in batch {
            if !held.contains(&(checked.send.id, checked.send.lease)) {
                c.lease_lost.add(1);
                continue;
            }
            let counter = match (checked.decision.state, checked.decision.recheck) {
                (_, Some(why)) => c.recheck(why),
                (SendState::Settled, _) => &c.settled,
                (SendState::Rejected, _) => &c.rejected,
                (SendState::Expired, _) => &c.expired,
                (SendState::Pending | SendState::Recheck, None) => &c.transient,
            };
            counter.add(1);
        }
        self.progress.inc(batch.len() as u64);
    }
}
