//! The shape every stage of a pass shares: claim items under a lease, work each through
//! the gate with a bound on items in flight, write the results in batches.
//!
//! Three tasks joined together:
//! - the claimer claims a batch while the work queue has room for it (committed at
//!   once: no transaction is held across HTTP calls), until nothing is due or the pass
//!   is stopping;
//! - the workers take items from the queue, at most `concurrency` at a time;
//! - the writer collects results and writes them, `write_batch` at a time (or whatever
//!   is there after `write_interval`), with up to `writers` writes in flight.

use super::calls::Calls;
use super::held::Holdings;
use crate::clock::SharedClock;
use crate::db::lease::{Claim, Leased, Scope};
use crate::db::{Db, DbError};
use futures::StreamExt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// What every stage works with, and nothing else of the pass: the database, the
/// clock, the provider calls and the terms of its claims.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub db: &'a Db,
    pub clock: &'a SharedClock,
    pub calls: &'a Calls<'a>,
    pub terms: Terms<'a>,
}

/// The terms of a stage's claims: how long they hold, for whom, in what scope.
#[derive(Debug, Clone, Copy)]
pub struct Terms<'a> {
    pub lease: Duration,
    pub owner: &'a str,
    pub scope: &'a Scope,
}

impl Terms<'_> {
    /// A claim of up to `limit` items in the pass's scope, none of `held`.
    pub fn claim<'b>(&'b self, limit: usize, held: &'b [i64]) -> Claim<'b> {
        self.claim_in(self.scope, limit, held)
    }

    /// The same in another scope.
    pub fn claim_in<'b>(&'b self, scope: &'b Scope, limit: usize, held: &'b [i64]) -> Claim<'b> {
        Claim {
            limit,
            lease: self.lease,
            owner: self.owner,
            held,
            scope,
        }
    }
}

/// What became of an item.
pub enum Worked<I, D> {
    /// Worked: write it.
    Done(D),
    /// Not started (the pass is stopping): give it back.
    Release(I),
}

/// One kind of work a pass does.
pub trait Stage: Sync {
    type Item: Send + Leased;
    type Done: Send;

    /// For logs.
    fn name(&self) -> &'static str;

    /// What the stage holds: claims add to it, writes and releases take from it.
    fn holdings(&self) -> &Holdings;

    /// The id of a worked item.
    fn done_id(done: &Self::Done) -> i64;

    /// Claims up to `limit` due items under a lease, committed at once, none of `held`.
    async fn claim(&self, limit: usize, held: &[i64]) -> Result<Vec<Self::Item>, DbError>;

    /// Works one item.
    async fn work(&self, item: Self::Item) -> Worked<Self::Item, Self::Done>;

    /// Writes finished items and releases unstarted ones, with the lease in every `WHERE`.
    async fn write(&self, done: Vec<Self::Done>, released: Vec<Self::Item>) -> Result<(), DbError>;
}

/// The sizes of a stage's pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub claim_batch: usize,
    pub write_batch: usize,
    pub writers: usize,
    pub concurrency: usize,
    pub write_interval: Duration,
    /// How long a claim holds an item.
    pub lease: Duration,
}

/// How a stage's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageEnd {
    /// Nothing was due any more.
    Drained,
    /// The pass is stopping: a signal, its deadline, a fatal answer, the breaker.
    Stopped,
    /// Its share of --max-runtime was over: it claimed no more.
    CutShort,
}

/// What one claim came to.
enum Claiming {
    /// A batch, queued for the workers.
    Queued,
    NothingDue,
    Stopping,
}

/// Runs `stage` until nothing is due or `stop` is cancelled and everything claimed is
/// written or released, working at most `places()` items at once (the pass's in-flight
/// limit, read as it moves). A database error ends it at once; its leases then expire.
pub async fn run<S: Stage>(
    stage: &S,
    shape: Shape,
    places: &(dyn Fn() -> usize + Sync),
    stop: &CancellationToken,
) -> Result<StageEnd, DbError> {
    let claim_batch = shape.claim_batch.max(1);
    let (work_tx, mut work_rx) = mpsc::channel(claim_batch * 2);
    let (done_tx, done_rx) = mpsc::channel(shape.write_batch.max(1) * (shape.writers.max(1) + 1));
    let claimer = claim_all(stage, claim_batch, shape.lease, work_tx, stop);
    let workers = async move {
        let mut working = futures::stream::FuturesUnordered::new();
        let mut queue_open = true;
        loop {
            // An item leaves the queue only when a place under the in-flight limit is
            // free (or the stage is stopping, when it is given back unstarted): with
            // the ceiling's worth of items taken at once, the adaptive limit's hundreds
            // of waiting calls cost CPU per send (wakeups, and items held in memory
            // instead of in the queue).
            let room = stop.is_cancelled()
                || working.len() < shape.concurrency.max(1).min(places().max(1));
            tokio::select! {
                item = work_rx.recv(), if queue_open && room => match item {
                    Some(item) => working.push(async {
                        if stop.is_cancelled() {
                            Worked::Release(item)
                        } else {
                            stage.work(item).await
                        }
                    }),
                    None => queue_open = false,
                },
                Some(worked) = working.next(), if !working.is_empty() => {
                    let _ = done_tx.send(worked).await;
                }
                else => break,
            }
        }
        drop(done_tx);
        Ok::<(), DbError>(())
    };
    let writer = write_all(stage, shape, done_rx);
    let (end, (), ()) = tokio::try_join!(claimer, workers, writer)?;
    Ok(end)
}

/// Claims batch after batch while the work queue has room, until nothing is due or the
/// stage is stopping.
async fn claim_all<S: Stage>(
    stage: &S,
    batch: usize,
    lease: Duration,
    work: mpsc::Sender<S::Item>,
    stop: &CancellationToken,
) -> Result<StageEnd, DbError> {
    loop {
        match claim_next(stage, batch, lease, &work, stop).await? {
            Claiming::Queued => {}
            Claiming::NothingDue => return Ok(StageEnd::Drained),
            Claiming::Stopping => return Ok(StageEnd::Stopped),
        }
    }
}

/// One claim, once the queue has room for a batch, committed at once.
async fn claim_next<S: Stage>(
    stage: &S,
    batch: usize,
    lease: Duration,
    work: &mpsc::Sender<S::Item>,
    stop: &CancellationToken,
) -> Result<Claiming, DbError> {
    let permits = tokio::select! {
        permits = work.reserve_many(batch) => match permits {
            Ok(p) => p,
            Err(_) => return Ok(Claiming::Stopping),
        },
        _ = stop.cancelled() => return Ok(Claiming::Stopping),
    };
    if stop.is_cancelled() {
        return Ok(Claiming::Stopping);
    }
    let claiming = Instant::now();
    // Never what the pass still holds (a lease taken over while its item waits).
    let held = stage.holdings().ids();
    let claimed = stage
        .claim(batch, &held)
        .instrument(tracing::debug_span!(
            "claim",
            stage = stage.name(),
            limit = batch
        ))
        .await?;
    tracing::debug!(
        stage = stage.name(),
        claimed = claimed.len(),
        ms = claiming.elapsed().as_millis() as u64,
        "claimed a batch"
    );
    if claimed.is_empty() {
        return Ok(Claiming::NothingDue);
    }
    stage.holdings().claimed(&claimed, claiming, lease);
    for (permit, item) in permits.zip(claimed) {
        permit.send(item);
    }
    Ok(Claiming::Queued)
}

async fn write_all<S: Stage>(
    stage: &S,
    shape: Shape,
    mut results: mpsc::Receiver<Worked<S::Item, S::Done>>,
) -> Result<(), DbError> {
    let batch = shape.write_batch.max(1);
    let writers = shape.writers.max(1);
    let mut done = Vec::new();
    let mut released = Vec::new();
    let mut writing = futures::stream::FuturesUnordered::new();
    // A partial batch is written `write_interval` after the last write started, not at
    // fixed ticks: at a fixed period the tick came due just after a full batch went and
    // wrote the few results since (30,000 sends at 1 ms went in 44 writes of 682 on
    // average, not 30 of 1,000), each write costing Postgres its per-statement share.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + shape.write_interval,
        shape.write_interval,
    );
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closed = false;
    let write = |done: Vec<S::Done>, released: Vec<S::Item>| {
        let span = tracing::debug_span!(
            "batch",
            stage = stage.name(),
            done = done.len(),
            released = released.len()
        );
        async move {
            let started = Instant::now();
            let ids: Vec<i64> = done
                .iter()
                .map(S::done_id)
                .chain(released.iter().map(Leased::id))
                .collect();
            stage.write(done, released).await?;
            stage.holdings().done(ids);
            tracing::debug!(ms = started.elapsed().as_millis() as u64, "wrote a batch");
            Ok::<(), DbError>(())
        }
        .instrument(span)
    };
    loop {
        let pending = !done.is_empty() || !released.is_empty();
        let full = done.len() >= batch || released.len() >= batch;
        // Start a write when a batch is full, or when the input ended.
        if (full || (closed && pending)) && writing.len() < writers {
            writing.push(write(
                std::mem::take(&mut done),
                std::mem::take(&mut released),
            ));
            tick.reset();
            continue;
        }
        if closed && !pending && writing.is_empty() {
            return Ok(());
        }
        tokio::select! {
            // While a full batch waits for a writer, take no more: the workers wait.
            item = results.recv(), if !full && !closed => match item {
                Some(Worked::Done(d)) => done.push(d),
                Some(Worked::Release(i)) => released.push(i),
                None => closed = true,
            },
            Some(result) = writing.next(), if !writing.is_empty() => result?,
            _ = tick.tick(), if pending && writing.len() < writers => {
                writing.push(write(std::mem::take(&mut done), std::mem::take(&mut released)));
                tick.reset();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::sends::DUE;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use uuid::Uuid;

    struct Item(i64);

    impl Leased for Item {
        fn id(&self) -> i64 {
            self.0
        }
        fn lease(&self) -> Uuid {
            Uuid::nil()
        }
    }

    /// Items handed out in one claim, each worked when its time on tokio's clock comes
    /// (`done_at`, ms after `start`) or, without one, when the test hands it a turn (a
    /// semaphore); it counts how many are being worked, and logs each write with its
    /// time.
    struct Scripted {
        holdings: Holdings,
        items: Mutex<Option<Vec<Item>>>,
        done_at: Option<fn(i64) -> u64>,
        turns: tokio::sync::Semaphore,
        start: tokio::time::Instant,
        working: AtomicUsize,
        most: AtomicUsize,
        writes: Mutex<Vec<(u64, Vec<i64>)>>,
    }

    impl Scripted {
        fn new(items: i64, done_at: Option<fn(i64) -> u64>) -> Self {
            Self {
                holdings: Holdings::new(&DUE),
                items: Mutex::new(Some((1..=items).map(Item).collect())),
                done_at,
                turns: tokio::sync::Semaphore::new(0),
                start: tokio::time::Instant::now(),
                working: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                writes: Mutex::new(Vec::new()),
            }
        }

        fn written(&self) -> usize {
            self.writes
                .lock()
                .unwrap()
                .iter()
                .map(|(_, ids)| ids.len())
                .sum()
        }
    }

    impl Stage for Scripted {
        type Item = Item;
        type Done = i64;

        fn name(&self) -> &'static str {
            "scripted"
        }
        fn holdings(&self) -> &Holdings {
            &self.holdings
        }
        fn done_id(done: &i64) -> i64 {
            *done
        }
        async fn claim(&self, _: usize, _: &[i64]) -> Result<Vec<Item>, DbError> {
            Ok(self.items.lock().unwrap().take().unwrap_or_default())
        }
        async fn work(&self, item: Item) -> Worked<Item, i64> {
            let now = self.working.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            match self.done_at {
                Some(at) => {
                    let at = self.start + Duration::from_millis(at(item.0));
                    tokio::time::sleep_until(at).await;
                }
                None => self.turns.acquire().await.unwrap().forget(),
            }
            self.working.fetch_sub(1, Ordering::SeqCst);
            Worked::Done(item.0)
        }
        async fn write(&self, done: Vec<i64>, _: Vec<Item>) -> Result<(), DbError> {
            let ms = (tokio::time::Instant::now() - self.start).as_millis() as u64;
            self.writes.lock().unwrap().push((ms, done));
            Ok(())
        }
    }

    /// Under a ceiling of 50 with 3 places, 3 items are worked at a time, not 50: the
    /// others wait in the queue until a place is free.
    #[tokio::test]
    async fn items_leave_the_queue_only_for_a_free_place() {
        let stage = Scripted::new(20, None);
        let shape = Shape {
            claim_batch: 20,
            write_batch: 5,
            writers: 1,
            concurrency: 50,
            write_interval: Duration::from_secs(3600),
            lease: Duration::from_secs(60),
        };
        let stop = CancellationToken::new();
        let turns = async {
            // A turn at a time, each after the pipeline has had every chance to start
            // more items (one thread: yielding lets it run until it waits).
            for _ in 0..20 {
                for _ in 0..100 {
                    tokio::task::yield_now().await;
                }
                stage.turns.add_permits(1);
            }
        };
        let (end, ()) = tokio::join!(run(&stage, shape, &|| 3, &stop), turns);
        assert_eq!(end.unwrap(), StageEnd::Drained);
        assert_eq!(stage.written(), 20);
        assert_eq!(stage.most.load(Ordering::SeqCst), 3);
    }

    /// Full batches go at once, and a partial one `write_interval` after the last write
    /// started, not at the next tick of a fixed period: the batch that filled just
    /// before a tick is not followed by a write of the few results since. The clock is
    /// tokio's, paused: it moves only when every task waits.
    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_waits_the_interval_after_the_last_write() {
        let stage = Scripted::new(
            13,
            Some(|id| match id {
                1..=5 => 95,
                6..=10 => 150,
                11 | 12 => 160,
                _ => 400,
            }),
        );
        let shape = Shape {
            claim_batch: 13,
            write_batch: 5,
            writers: 1,
            concurrency: 13,
            write_interval: Duration::from_millis(100),
            lease: Duration::from_secs(60),
        };
        let stop = CancellationToken::new();
        let end = run(&stage, shape, &|| 13, &stop).await;
        assert_eq!(end.unwrap(), StageEnd::Drained);
        let mut writes = stage.writes.into_inner().unwrap();
        for (_, ids) in &mut writes {
            ids.sort_unstable();
        }
        // On a fixed period (its first tick due at once) the same items went as
        // [1-4] at 95, [5-9] at 150 and [10-12] at 195.
        assert_eq!(
            writes,
            vec![
                (95, vec![1, 2, 3, 4, 5]),
                (150, vec![6, 7, 8, 9, 10]),
                // 100 ms after the last write, not at the period's 200.
                (250, vec![11, 12]),
                // The input ended.
                (400, vec![13]),
            ]
        );
    }
}
