//! The first stage: fetch each due send's record, decide its next state, store both
//! (SPEC "One pass", steps 1-4).

use super::Run;
use super::held::{Held, Holdings};
use super::pipeline::{Stage, Worked};
use super::summary::Counters;
use crate::db::DbError;
use crate::db::lease::{self, Claim, Scope};
use crate::db::records;
use crate::db::revisions;
use crate::db::sends::{self, Claimed, Completion, Range, SendState};
use crate::decide::{Checked, Decision, Recheck};
use crate::provider::Failure;
use crate::record::{Fetched, Matched};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

/// The answers held between their fetch and their write, in bytes at most: beyond it,
/// workers wait for the writers (a batch of large answers cannot grow without bound).
pub const ANSWER_BYTES_IN_MEMORY: usize = 32 * 1024 * 1024;

pub struct Records<'a> {
    run: &'a Run<'a>,
    /// For a replay: the range, and how far the replay is in it.
    replay: Option<(Range, Mutex<Sweep>)>,
    /// Bytes of answers waiting to be written (see [`ANSWER_BYTES_IN_MEMORY`]).
    answer_bytes: Arc<Semaphore>,
}

impl<'a> Records<'a> {
    /// The sends that are due.
    pub fn due(run: &'a Run<'a>) -> Self {
        Self {
            run,
            replay: None,
            answer_bytes: Arc::new(Semaphore::new(ANSWER_BYTES_IN_MEMORY)),
        }
    }

    /// Every send in `range`, whatever its state, in id order.
    pub fn replaying(run: &'a Run<'a>, range: Range) -> Self {
        Self {
            run,
            replay: Some((range, Mutex::new(Sweep::default()))),
            answer_bytes: Arc::new(Semaphore::new(ANSWER_BYTES_IN_MEMORY)),
        }
    }
}

/// How often a replay looks again for the sends another pass held.
const HELD_POLL: Duration = Duration::from_secs(1);

/// Where a replay is in its range: it sweeps it in id order, then comes back to the
/// sends another pass held, until its deadline.
#[derive(Debug, Default)]
pub struct Sweep {
    /// The highest send id claimed by the sweep so far.
    after: i64,
    /// Sends passed over because another pass held them.
    held: BTreeSet<i64>,
    /// When the sweep reached the end of the range.
    ended: Option<Instant>,
}

fn lock(sweep: &Mutex<Sweep>) -> std::sync::MutexGuard<'_, Sweep> {
    sweep.lock().unwrap_or_else(|p| p.into_inner())
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
        &self.run.held.sends
    }

    fn done_id(done: &CheckedSend) -> i64 {
        done.send.id
    }

    async fn claim(&self, limit: usize, held: &[i64]) -> Result<Vec<Claimed>, DbError> {
        let r = self.run;
        let claimed = match &self.replay {
            None => sends::claim(r.db, r.clock.now(), &r.lease_claim(limit, held)).await?,
            Some((range, sweep)) => self.claim_replay(range, sweep, limit, held).await?,
        };
        Counters::add(&r.counters.claimed, claimed.len() as u64);
        Ok(claimed)
    }

    async fn work(&self, send: Claimed) -> Worked<Claimed, CheckedSend> {
        let span = tracing::debug_span!(
            "send",
            send_id = send.id,
            verification_id = send.verification_id.as_deref(),
            order_id = send.order_id.as_deref(),
        );
        let r = self.run;
        async {
            let held = Held {
                holdings: &r.held.sends,
                id: send.id,
            };
            let outcome = r
                .call(held, || async {
                    match (&send.verification_id, &send.order_id) {
                        (Some(id), _) => r.client.record_by_verification_id(id).await,
                        (None, Some(order)) => {
                            r.client.record_by_order_id(&send.app_id, order).await
                        }
                        (None, None) => Err(Failure::Rejected {
                            status: "none".into(),
                            reason: "the send has neither a verification id nor an order id".into(),
                        }),
                    }
                })
                .await;
            let Some(outcome) = outcome else {
                return Worked::Release(send);
            };
            let checked = match &outcome {
                Ok(fetched) => Checked::Record(&fetched.record),
                Err(failure) => Checked::Failed(failure),
            };
            let decision = match (&self.replay, &outcome) {
                // A replay that could not re-fetch a send changes nothing: the send keeps
                // what it had (completing with the same state leaves the row as it was).
                (Some(_), Err(failure @ (Failure::Retry { .. } | Failure::Unreadable { .. }))) => {
                    Decision {
                        state: send.state,
                        next_check_at: r.clock.now(),
                        last_error: Some(failure.to_string()),
                        recheck: Some(if failure.is_retryable() {
                            Recheck::Transient
                        } else {
                            Recheck::Unreadable
                        }),
                    }
                }
                _ => r
                    .settings
                    .schedule
                    .decide(send.sent_at, send.attempts, checked, r.clock.now())
                    .expect("fatal failures stop the pass before a decision"),
            };
            // A replay never trades a final record for a less final answer (a settled
            // send answered "still sending"): the stored record and attempts stay.
            let regression = self.replay.is_some()
                && send.state == SendState::Settled
                && outcome.as_ref().is_ok_and(|f| less_final(&f.record));
            let decision = if regression {
                Decision {
                    state: send.state,
                    next_check_at: r.clock.now(),
                    last_error: None,
                    recheck: None,
                }
            } else {
                decision
            };
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
        let r = self.run;
        let now = r.clock.now();
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
            let mut tx = r.db.pool().begin().await?;
            let replay = self.replay.is_some();
            // Completed under their lease: each (id, token) once. Only those records are
            // stored, so a batch never writes a send twice.
            let completed: HashSet<(i64, uuid::Uuid)> =
                sends::complete(&mut tx, now, &completions, replay)
                    .await?
                    .into_iter()
                    .collect();
            let mut seen = HashSet::new();
            let (regressions, fetched): (Vec<_>, Vec<_>) = batch
                .iter()
                .filter(|c| {
                    completed.contains(&(c.send.id, c.send.lease)) && seen.insert(c.send.id)
                })
                .filter_map(|c| c.fetched.as_deref().map(|f| (c.send.id, f, c.regression)))
                .partition(|(_, _, regression)| *regression);
            let fetched: Vec<(i64, &Fetched)> =
                fetched.into_iter().map(|(id, f, _)| (id, f)).collect();
            let regressions: Vec<(i64, &Fetched)> =
                regressions.into_iter().map(|(id, f, _)| (id, f)).collect();
            let held: Vec<i64> = completed.iter().map(|(id, _)| *id).collect();
            if replay {
                let raw: Vec<(i64, &str)> = fetched
                    .iter()
                    .map(|(id, f)| (*id, f.raw.as_str()))
                    .collect();
                revisions::capture(&mut tx, r.pass_id, now, &raw, &held).await?;
                r.db.counted(1);
                if !regressions.is_empty() {
                    let kept: Vec<(i64, &str, Option<i64>)> = regressions
                        .iter()
                        .map(|(id, f)| {
                            let matched = f.record.verification.matched.map(|m| m.code());
                            (*id, f.raw.as_str(), matched)
                        })
                        .collect();
                    revisions::keep_regressions(&mut tx, r.pass_id, now, &kept, &held).await?;
                    r.db.counted(1);
                }
            }
            let stored = records::store(&mut tx, now, &fetched, &held).await?;
            tx.commit().await?;
            // BEGIN, the sends update, the two stores when there were records, COMMIT.
            r.db.counted(
                3 + if fetched.is_empty() || held.is_empty() {
                    0
                } else {
                    2
                },
            );
            self.count(&batch, &completed, stored);
        }
        let n = lease::release(r.db, &sends::DUE, now, &released).await?;
        Counters::add(&r.counters.released, n);
        Ok(())
    }
}

/// True when a record is less final than a settled one: still sending, or unknown to
/// the provider.
fn less_final(record: &crate::record::Record) -> bool {
    record.still_sending() || record.verification.matched == Some(Matched::NoSuchId)
}

impl Records<'_> {
    /// A replay's claim: the next sends of its sweep; once the sweep is over, those
    /// another pass held, as they come free, until the replay's deadline (its
    /// --max-runtime, or one --lease after the sweep: a dead pass's lease has run out by
    /// then).
    async fn claim_replay(
        &self,
        range: &Range,
        sweep: &Mutex<Sweep>,
        limit: usize,
        held: &[i64],
    ) -> Result<Vec<Claimed>, DbError> {
        let r = self.run;
        // A replay takes the range's apps, all shards.
        let scope = Scope {
            shard: None,
            apps: range.app_ids.clone(),
        };
        let c = Claim {
            scope: &scope,
            ..r.lease_claim(limit, held)
        };
        let (after, ended) = {
            let s = lock(sweep);
            (s.after, s.ended)
        };
        let ended = match ended {
            Some(ended) => ended,
            None => {
                let claimed = sends::claim_range(r.db, range, after, &c).await?;
                if let Some(last) = claimed.iter().map(|c| c.id).max() {
                    // What the claim passed over up to its last send: held elsewhere.
                    let mut skipped = sends::ids_in_range(r.db, range, after, Some(last)).await?;
                    let ids: HashSet<i64> = claimed.iter().map(|c| c.id).collect();
                    skipped.retain(|id| !ids.contains(id));
                    let mut s = lock(sweep);
                    s.held.extend(skipped);
                    s.after = last;
                    return Ok(claimed);
                }
                let rest = sends::ids_in_range(r.db, range, after, None).await?;
                let mut s = lock(sweep);
                s.held.extend(rest);
                let now = Instant::now();
                s.ended = Some(now);
                if !s.held.is_empty() {
                    tracing::info!(
                        held = s.held.len(),
                        "sends held by another pass: coming back to them as they come free"
                    );
                }
                now
            }
        };
        let deadline = ended + r.settings.lease;
        loop {
            let held: Vec<i64> = lock(sweep).held.iter().copied().collect();
            if held.is_empty() {
                return Ok(Vec::new());
            }
            let claimed = sends::claim_ids(r.db, &held, &c).await?;
            if !claimed.is_empty() {
                let mut s = lock(sweep);
                for c in &claimed {
                    s.held.remove(&c.id);
                }
                return Ok(claimed);
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    held = held.len(),
                    "sends still held by another pass at the replay's deadline: replay again"
                );
                return Ok(Vec::new());
            }
            tokio::select! {
                () = tokio::time::sleep(HELD_POLL.min(deadline - now)) => {}
                () = r.stop.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    fn count(
        &self,
        batch: &[CheckedSend],
        held: &HashSet<(i64, uuid::Uuid)>,
        stored: records::Stored,
    ) {
        let c = self.run.counters;
        Counters::add(&c.records_changed, stored.records);
        Counters::add(&c.attempts_changed, stored.attempts);
        for checked in batch {
            if !held.contains(&(checked.send.id, checked.send.lease)) {
                Counters::add(&c.lease_lost, 1);
                continue;
            }
            let counter = match (checked.decision.state, checked.decision.recheck) {
                (_, Some(why)) => c.recheck(why),
                (SendState::Settled, _) => &c.settled,
                (SendState::Rejected, _) => &c.rejected,
                (SendState::Expired, _) => &c.expired,
                (SendState::Pending | SendState::Recheck, None) => &c.transient,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.run.progress.inc(batch.len() as u64);
    }
}
