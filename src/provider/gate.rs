//! The one gate every request of a pass goes through: a stop token (no request starts
//! once the pass is stopping), a pause the provider asked for with 429, the shared
//! rate limit (governor), the in-flight limit (adaptive, [`super::limit`]), and the
//! circuit breaker that stops the pass when the provider is down. It also counts the
//! requests it let through.

use super::breaker::{Breaker, BreakerSettings, Trip};
use super::limit::{LimitSettings, Limiter, Permit, Sample};
use super::outcome::{Failure, Health, health};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A request let through the gate, and when: its latency is a sample for the
/// in-flight limit.
#[derive(Debug)]
#[must_use = "give the outcome to Gate::observe"]
pub struct Admitted(Instant);

/// A call's place under the in-flight limit, held from its first attempt to its
/// outcome.
pub type Slot<'a> = Permit<'a>;

#[derive(Debug)]
pub struct Gate {
    limiter: Option<DefaultDirectRateLimiter>,
    /// The queue for the rate limiter (see [`Gate::admit`]).
    rate_turn: tokio::sync::Mutex<()>,
    paused_until: Mutex<Option<Instant>>,
    stop: CancellationToken,
    admitted: AtomicU64,
    breaker: Breaker,
    in_flight: Limiter,
}

impl Gate {
    /// `rate` requests per second (fractions allowed, for shards) with `burst`;
    /// `None` for no limit.
    pub fn new(rate: Option<f64>, burst: u32, stop: CancellationToken) -> Self {
        let limiter = rate.filter(|r| *r > 0.0).map(|rate| {
            let period = Duration::try_from_secs_f64(1.0 / rate)
                .unwrap_or(Duration::MAX)
                .max(Duration::from_nanos(1));
            let burst = NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(period)
                .expect("a positive period")
                .allow_burst(burst);
            RateLimiter::direct(quota)
        });
        Self {
            limiter,
            rate_turn: tokio::sync::Mutex::new(()),
            paused_until: Mutex::new(None),
            stop,
            admitted: AtomicU64::new(0),
            breaker: Breaker::new(BreakerSettings::default()),
            in_flight: Limiter::new(LimitSettings::fixed(usize::MAX)),
        }
    }

    /// The same gate with this in-flight limit (without one, the callers' own bound is
    /// the only one).
    pub fn with_limit(mut self, settings: LimitSettings) -> Self {
        self.in_flight = Limiter::new(settings);
        self
    }

    /// The in-flight limit now, and the highest it reached.
    pub fn in_flight_limit(&self) -> (usize, usize) {
        (self.in_flight.limit(), self.in_flight.peak())
    }

    /// The same gate with these breaker settings.
    pub fn with_breaker(mut self, settings: BreakerSettings) -> Self {
        self.breaker = Breaker::new(settings);
        self
    }

    /// Records what one `admitted` request came to: its latency or its overload for
    /// the in-flight limit, its health for the breaker. When it opens the
    /// breaker, the gate stops: no request starts any more, and waiting ones give up.
    pub fn observe<T>(&self, admitted: Admitted, outcome: &Result<T, Failure>) {
        let health = health(outcome);
        let now = Instant::now();
        let sample = match health {
            Health::Answered => Sample::Answered(now.saturating_duration_since(admitted.0)),
            Health::TimedOut | Health::Neutral => Sample::Overloaded,
            Health::Failing => Sample::Ignored,
        };
        self.in_flight.sample(sample, now);
        let cause = || match outcome {
            Err(failure) => failure.to_string(),
            Ok(_) => String::new(),
        };
        if self.breaker.record(now, health, cause) {
            if let Some(trip) = self.breaker.tripped() {
                tracing::error!(%trip, "stopping the pass: the provider is unavailable");
            }
            self.stop.cancel();
        }
    }

    /// Why the breaker opened, if it did.
    pub fn tripped(&self) -> Option<Trip> {
        self.breaker.tripped()
    }

    /// Why the breaker opened, judged once more now the pass has ended
    /// ([`Breaker::judge_end`]).
    pub fn tripped_at_end(&self) -> Option<Trip> {
        self.breaker.judge_end()
    }

    /// True when the provider answered nothing within the breaker's window: a failure
    /// now says nothing about the item it was about.
    pub fn provider_silent(&self) -> bool {
        self.breaker.unanswered(Instant::now())
    }

    /// No limit, never stopped: for one-off calls.
    pub fn open() -> Self {
        Self::new(None, 1, CancellationToken::new())
    }

    /// Waits for a place under the in-flight limit for one call (a request and its
    /// retries). `None` once the pass is stopping.
    pub async fn slot(&self) -> Option<Slot<'_>> {
        tokio::select! {
            slot = self.in_flight.acquire() => (!self.stop.is_cancelled()).then_some(slot),
            _ = self.stop.cancelled() => None,
        }
    }

    /// Waits for any pause and for the rate limit. `None`, without waiting further,
    /// once the pass is stopping: the request must not be sent.
    pub async fn admit(&self) -> Option<Admitted> {
        loop {
            let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match paused {
                Some(until) if until > Instant::now() => {
                    if !self.sleep_until(until).await {
                        return None;
                    }
                }
                _ => break,
            }
        }
        if let Some(limiter) = &self.limiter {
            // One request at a time waits on the rate limiter, the others in a FIFO
            // queue: every waiter of governor's `until_ready` sleeps until the same next
            // cell and all wake for it, so hundreds in flight under `--rate` cost
            // hundreds of wake-ups per request admitted (770 µs of CPU per send at
            // 500/s with 300 in flight).
            tokio::select! {
                _ = async {
                    let _turn = self.rate_turn.lock().await;
                    until_ready(limiter).await;
                } => {}
                _ = self.stop.cancelled() => return None,
            }
        }
        if self.stop.is_cancelled() {
            return None;
        }
        self.admitted.fetch_add(1, Ordering::Relaxed);
        Some(Admitted(Instant::now()))
    }

    /// Holds every request for `delay` (the provider's `Retry-After`).
    pub fn pause_for(&self, delay: Duration) {
        let Some(until) = Instant::now().checked_add(delay) else {
            return;
        };
        let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// Sleeps `delay`; false if the pass started stopping meanwhile.
    pub async fn sleep(&self, delay: Duration) -> bool {
        match Instant::now().checked_add(delay) {
            Some(until) => self.sleep_until(until).await,
            // Longer than the clock can count: wait for the stop.
            None => {
                self.stop.cancelled().await;
                false
            }
        }
    }

    async fn sleep_until(&self, until: Instant) -> bool {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => !self.stop.is_cancelled(),
            _ = self.stop.cancelled() => false,
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Requests let through so far.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }
}

/// Waits until `limiter` lets one request through, as governor's `until_ready` does,
/// but on tokio's timer. governor sleeps on futures-timer, whose timer runs on a thread
/// of its own: every wait was a wake-up of that thread and then of the pass's, two
/// context switches per request admitted (a fifth of the job's CPU under `--rate 500`,
/// perf: `finish_task_switch`).
async fn until_ready(limiter: &DefaultDirectRateLimiter) {
    use governor::clock::Clock;
    while let Err(not_until) = limiter.check() {
        tokio::time::sleep(not_until.wait_time_from(limiter.clock().now())).await;
    }
}
