//! One reconcile pass (SPEC "One pass", steps 1-4 and 7).
//!
//! Three tasks joined together:
//! - the claimer claims due sends in batches under a lease (committed at once, no
//!   transaction held across HTTP calls) while the work queue has room;
//! - the checkers fetch each send's record through the shared [`Gate`] (rate limit,
//!   pause on 429, stop) with at most `concurrency` in flight, retrying transient
//!   failures, and decide its next state;
//! - the writer stores what was checked in batches, one transaction and one statement
//!   per table per batch, with the lease token in every `WHERE`.
//!
//! The pass ends when nothing is due, at `--max-runtime`, on a signal, or at the first
//! answer that refuses our credentials; what was claimed but not checked is released.

mod summary;

pub use summary::{Ended, Summary};

use crate::clock::SharedClock;
use crate::db::{Db, DbError};
use crate::decide::{Checked, Decision, Schedule};
use crate::passes;
use crate::progress::Progress;
use crate::provider::{Failure, Gate, ProviderClient, RetryPolicy};
use crate::record::Fetched;
use crate::sends::{self, Claimed, Completion, SendState, Shard};
use crate::store;
use futures::StreamExt;
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use summary::{Counters, Totals};
use tokio::sync::mpsc;
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
    pub schedule: Schedule,
    #[serde(skip)]
    pub retry: RetryPolicy,
    pub max_attempts: usize,
    pub shard: Option<Shard>,
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
            schedule: Schedule::default(),
            retry: RetryPolicy::default(),
            max_attempts: RetryPolicy::default().max_attempts,
            shard: None,
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

/// A checked send as the writer holds it.
type CheckedSend = (Claimed, Option<Box<Fetched>>, Decision);

/// A checked send, on its way to the writer.
enum Done {
    Checked {
        send: Claimed,
        fetched: Option<Box<Fetched>>,
        decision: Decision,
    },
    /// Claimed but not checked: give it back.
    Release(Claimed),
}

/// Runs one pass to its end and records it. A database failure is an error (exit 4);
/// every other ending is in the summary.
pub async fn run(deps: Deps<'_>, settings: &PassSettings) -> Result<Summary, DbError> {
    let Deps {
        db,
        client,
        clock,
        interrupt,
        progress,
    } = deps;
    let started = Instant::now();
    let parameters = serde_json::to_value(settings).unwrap_or_default();
    let pass_id = passes::start(db, "run", &settings.owner, clock.now(), &parameters).await?;
    let span = tracing::info_span!("pass", pass_id, owner = %settings.owner);
    async move {
        tracing::info!(concurrency = settings.concurrency, rate = ?settings.rate, "pass started");
        let stop = interrupt.child_token();
        let gate = Gate::new(settings.rate, settings.burst, stop.clone());
        let counters = Counters::default();
        let fatal: Mutex<Option<Failure>> = Mutex::new(None);
        let retries_before = settings.retry.budget.left();
        let statements_before = db.statements();
        let ctx = Ctx {
            db,
            client,
            clock: &clock,
            settings,
            gate: &gate,
            stop: &stop,
            counters: &counters,
            fatal: &fatal,
            progress: &progress,
        };

        // The deadline only stops claiming and new requests; the work then drains.
        let work = ctx.work();
        tokio::pin!(work);
        let mut hit_deadline = false;
        let result = tokio::select! {
            result = &mut work => result,
            _ = tokio::time::sleep(settings.max_runtime.unwrap_or_default()), if settings.max_runtime.is_some() => {
                tracing::info!("max runtime reached: releasing what has not started");
                hit_deadline = true;
                stop.cancel();
                work.await
            }
        };
        progress.finish();

        let fatal = fatal.lock().unwrap_or_else(|p| p.into_inner()).take();
        let (ended, error) = match (&result, &fatal) {
            (Err(e), _) => (Ended::Failed, Some(format!("{e:#}"))),
            (Ok(()), Some(f)) => (Ended::CredentialsRefused, Some(f.to_string())),
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

/// Everything the pass's tasks share.
struct Ctx<'a> {
    db: &'a Db,
    client: &'a ProviderClient,
    clock: &'a SharedClock,
    settings: &'a PassSettings,
    gate: &'a Gate,
    stop: &'a CancellationToken,
    counters: &'a Counters,
    fatal: &'a Mutex<Option<Failure>>,
    progress: &'a Progress,
}

impl Ctx<'_> {
    /// The whole pass: claimer, checkers and writer, joined.
    async fn work(&self) -> Result<(), DbError> {
        let (work_tx, mut work_rx) = mpsc::channel(self.settings.batch_size.max(1) * 2);
        let (done_tx, done_rx) =
            mpsc::channel(self.settings.write_batch.max(1) * (self.settings.writers.max(1) + 1));
        let claimer = self.claim_all(work_tx);
        let checkers = async move {
            futures::stream::poll_fn(|cx| work_rx.poll_recv(cx))
                .map(|send| self.check(send))
                .buffer_unordered(self.settings.concurrency.max(1))
                .for_each(|done| {
                    let done_tx = done_tx.clone();
                    async move {
                        let _ = done_tx.send(done).await;
                    }
                })
                .await;
            Ok::<(), DbError>(())
        };
        let writer = self.write_all(done_rx);
        tokio::try_join!(claimer, checkers, writer)?;
        Ok(())
    }

    /// Claims batches while the work queue has room, until nothing is due or the pass
    /// is stopping.
    async fn claim_all(&self, work: mpsc::Sender<Claimed>) -> Result<(), DbError> {
        let batch = self.settings.batch_size.max(1);
        loop {
            let permits = tokio::select! {
                permits = work.reserve_many(batch) => match permits {
                    Ok(p) => p,
                    Err(_) => return Ok(()),
                },
                _ = self.stop.cancelled() => return Ok(()),
            };
            if self.stop.is_cancelled() {
                return Ok(());
            }
            let claiming = Instant::now();
            let claimed = sends::claim(
                self.db,
                self.clock.now(),
                batch as i64,
                self.settings.lease,
                &self.settings.owner,
                self.settings.shard,
            )
            .await?;
            tracing::debug!(
                claimed = claimed.len(),
                ms = claiming.elapsed().as_millis() as u64,
                "claimed a batch"
            );
            Counters::add(&self.counters.claimed, claimed.len() as u64);
            if claimed.is_empty() {
                return Ok(());
            }
            for (permit, send) in permits.zip(claimed) {
                permit.send(send);
            }
        }
    }

    /// Fetches one send's record and decides its next state.
    async fn check(&self, send: Claimed) -> Done {
        let span = tracing::debug_span!(
            "send",
            send_id = send.id,
            verification_id = send.verification_id.as_deref(),
            order_id = send.order_id.as_deref(),
        );
        async {
            let outcome = self
                .settings
                .retry
                .run(self.gate, || async {
                    match (&send.verification_id, &send.order_id) {
                        (Some(id), _) => self.client.record_by_verification_id(id).await,
                        (None, Some(order)) => self.client.record_by_order_id(&send.app_id, order).await,
                        (None, None) => Err(Failure::Rejected {
                            status: "none".into(),
                            reason: "the send has neither a verification id nor an order id".into(),
                        }),
                    }
                })
                .await;
            let outcome = match outcome {
                None => return Done::Release(send),
                Some(Err(failure @ Failure::Fatal { .. })) => {
                    tracing::error!(%failure, "the provider refused our credentials: stopping the pass");
                    self.fatal
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get_or_insert(failure);
                    self.stop.cancel();
                    return Done::Release(send);
                }
                Some(outcome) => outcome,
            };
            let checked = match &outcome {
                Ok(fetched) => Checked::Record(&fetched.record),
                Err(failure) => Checked::Failed(failure),
            };
            let decision = self
                .settings
                .schedule
                .decide(send.sent_at, send.attempts, checked, self.clock.now())
                .expect("only fatal failures are left undecided");
            Done::Checked {
                send,
                fetched: outcome.ok().map(Box::new),
                decision,
            }
        }
        .instrument(span)
        .await
    }

    /// Writes checked sends in batches, and releases unchecked ones.
    async fn write_all(&self, mut done: mpsc::Receiver<Done>) -> Result<(), DbError> {
        let batch = self.settings.write_batch.max(1);
        let writers = self.settings.writers.max(1);
        let mut checked = Vec::new();
        let mut released = Vec::new();
        let mut writing = futures::stream::FuturesUnordered::new();
        let mut tick = tokio::time::interval(self.settings.write_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut closed = false;
        loop {
            let pending = !checked.is_empty() || !released.is_empty();
            let full = checked.len() >= batch || released.len() >= batch;
            // Start a write when a batch is full, or when the input ended.
            if (full || (closed && pending)) && writing.len() < writers {
                writing
                    .push(self.flush(std::mem::take(&mut checked), std::mem::take(&mut released)));
                continue;
            }
            if closed && !pending && writing.is_empty() {
                return Ok(());
            }
            tokio::select! {
                // While a full batch waits for a writer, take no more: the checkers wait.
                item = done.recv(), if !full && !closed => match item {
                    Some(Done::Checked { send, fetched, decision }) => checked.push((send, fetched, decision)),
                    Some(Done::Release(send)) => released.push(send),
                    None => closed = true,
                },
                Some(result) = writing.next(), if !writing.is_empty() => result?,
                _ = tick.tick(), if pending && writing.len() < writers => {
                    writing.push(self.flush(std::mem::take(&mut checked), std::mem::take(&mut released)));
                }
            }
        }
    }

    async fn flush(
        &self,
        checked: Vec<CheckedSend>,
        released: Vec<Claimed>,
    ) -> Result<(), DbError> {
        if !checked.is_empty() {
            self.write_checked(&checked).await?;
        }
        if !released.is_empty() {
            let held: Vec<_> = released.iter().map(|s| (s.id, s.lease)).collect();
            let n = sends::release(self.db, self.clock.now(), &held).await?;
            Counters::add(&self.counters.released, n);
        }
        Ok(())
    }

    /// One transaction: complete the sends still held, then store their records.
    async fn write_checked(&self, batch: &[CheckedSend]) -> Result<(), DbError> {
        let now = self.clock.now();
        let completions: Vec<Completion> = batch
            .iter()
            .map(|(send, _, d)| Completion {
                id: send.id,
                lease: send.lease,
                state: d.state,
                next_check_at: d.next_check_at,
                last_error: d.last_error.clone(),
            })
            .collect();
        let fetched: Vec<(i64, &Fetched)> = batch
            .iter()
            .filter_map(|(send, f, _)| f.as_deref().map(|f| (send.id, f)))
            .collect();
        let writing = Instant::now();
        let mut tx = self.db.pool().begin().await?;
        let held = sends::complete(&mut tx, now, &completions).await?;
        let completed_ms = writing.elapsed().as_millis() as u64;
        let stored = store::store(&mut tx, now, &fetched, &held).await?;
        tx.commit().await?;
        tracing::debug!(
            sends = batch.len(),
            completed_ms,
            ms = writing.elapsed().as_millis() as u64,
            "wrote a batch"
        );
        // BEGIN, the sends update, the two stores when there were records, COMMIT.
        self.db.counted(
            3 + if fetched.is_empty() || held.is_empty() {
                0
            } else {
                2
            },
        );

        let held: std::collections::HashSet<i64> = held.into_iter().collect();
        let c = self.counters;
        Counters::add(&c.records_changed, stored.records);
        Counters::add(&c.attempts_changed, stored.attempts);
        for (send, _, decision) in batch {
            if !held.contains(&send.id) {
                Counters::add(&c.lease_lost, 1);
                continue;
            }
            let counter = match (decision.state, decision.recheck) {
                (_, Some(why)) => c.recheck(why),
                (SendState::Settled, _) => &c.settled,
                (SendState::Rejected, _) => &c.rejected,
                (SendState::Expired, _) => &c.expired,
                (SendState::Pending | SendState::Recheck, None) => &c.transient,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        self.progress.inc(batch.len() as u64);
        Ok(())
    }
}
