//! Bounded retries with exponential backoff and jitter (backon's backoff), honouring the
//! delay the provider asks for. Only [`Failure::Retry`] is retried; every attempt goes
//! through the pass's [`Gate`] and is a new call, so it is signed afresh.
//!
//! A 429 does not spend the item's attempts: it says the pass is too fast, so the whole
//! gate pauses for its `Retry-After` and the item waits its turn again.

use super::gate::Gate;
use super::{Failure, Transient};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How hard to try one call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (429 answers aside).
    pub max_attempts: usize,
    /// 429 answers one call waits out before giving up.
    pub max_rate_limited: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// A `Retry-After` longer than this is not waited for: the item is left for a
    /// later pass instead of holding a worker.
    pub max_retry_after: Duration,
    /// Retries left for the whole pass, shared by every call that holds this policy.
    pub budget: RetryBudget,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_rate_limited: 10,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
            budget: RetryBudget::unlimited(),
        }
    }
}

/// A count of retries shared across calls, so that a pass against a failing
/// provider stops retrying once it has spent its share.
#[derive(Debug, Clone)]
pub struct RetryBudget(Arc<AtomicU64>);

impl RetryBudget {
    pub fn new(retries: u64) -> Self {
        Self(Arc::new(AtomicU64::new(retries)))
    }

    pub fn unlimited() -> Self {
        Self::new(u64::MAX)
    }

    /// Takes one retry; false once none is left.
    pub fn take(&self) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    pub fn left(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl RetryPolicy {
    /// Runs `call` through `gate` until it succeeds, fails for good, or the attempts,
    /// the delays or the pass's budget run out; answers the last outcome. `None` when
    /// the gate stopped before a final outcome: nothing happened that needs recording.
    pub async fn run<T, F, Fut>(&self, gate: &Gate, mut call: F) -> Option<Result<T, Failure>>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1))
            .with_jitter()
            .build();
        let mut rate_limited = 0;
        let mut stale_timestamps = 0;
        // One place under the in-flight limit for the whole call, retries included.
        let _slot = gate.slot().await?;
        loop {
            let admitted = gate.admit().await?;
            let outcome = call().await;
            gate.observe(admitted, &outcome);
            let failure = match outcome {
                Ok(value) => return Some(Ok(value)),
                Err(failure) if !failure.is_retryable() => return Some(Err(failure)),
                Err(failure) => failure,
            };

            let delay = match &failure {
                Failure::Retry {
                    cause: Transient::RateLimited,
                    after,
                } => {
                    rate_limited += 1;
                    let pause = after.unwrap_or(self.min_delay);
                    // A pause longer than we wait for would hold every request: the item
                    // is left for a later pass instead, and the gate is not touched.
                    if rate_limited > self.max_rate_limited || pause > self.max_retry_after {
                        return Some(Err(failure));
                    }
                    // The gate holds every request, this one included.
                    gate.pause_for(pause);
                    Duration::ZERO
                }
                _ => match backoff.next() {
                    None => return Some(Err(failure)),
                    Some(ours) => ours.max(failure.retry_after().unwrap_or_default()),
                },
            };
            if let Failure::Retry {
                cause: Transient::TimestampExpired(_),
                ..
            } = &failure
            {
                stale_timestamps += 1;
                if stale_timestamps == 2 {
                    tracing::warn!(
                        "the provider answered -16 (timestamp expired) twice to fresh signatures: \
                         this machine's clock is probably off"
                    );
                }
            }
            if failure
                .retry_after()
                .is_some_and(|d| d > self.max_retry_after)
                || !self.budget.take()
            {
                return Some(Err(failure));
            }
            tracing::debug!(%failure, delay_ms = delay.as_millis() as u64, "retrying");
            if !delay.is_zero() && !gate.sleep(delay).await {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio_util::sync::CancellationToken;

    fn quick(attempts: usize) -> RetryPolicy {
        RetryPolicy {
            max_attempts: attempts,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..RetryPolicy::default()
        }
    }

    fn transient() -> Failure {
        Failure::Retry {
            cause: Transient::Http(503),
            after: None,
        }
    }

    /// Runs `policy` over a call that always fails with `failure`; answers the outcome
    /// and how many calls were made.
    async fn always(
        policy: &RetryPolicy,
        gate: &Gate,
        failure: Failure,
    ) -> (Option<Result<(), Failure>>, usize) {
        let calls = AtomicUsize::new(0);
        let out = policy
            .run(gate, || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(failure.clone())
            })
            .await;
        (out, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn retries_transient_failures_up_to_the_bound() {
        let (out, calls) = always(&quick(3), &Gate::open(), transient()).await;
        assert_eq!(out, Some(Err(transient())));
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn never_retries_a_rejection() {
        let rejected = Failure::Rejected {
            status: "-22".into(),
            reason: "bad".into(),
        };
        let (out, calls) = always(&quick(5), &Gate::open(), rejected.clone()).await;
        assert_eq!(out, Some(Err(rejected)));
        assert_eq!(calls, 1);
    }

    #[tokio::test]
    async fn the_shared_budget_caps_retries_across_calls() {
        let mut policy = quick(10);
        policy.budget = RetryBudget::new(3);
        let gate = Gate::open();
        let (_, first) = always(&policy, &gate, transient()).await;
        let (_, second) = always(&policy, &gate, transient()).await;
        // Two first attempts plus three retries in all.
        assert_eq!(first + second, 5);
        assert_eq!(policy.budget.left(), 0);
    }

    #[tokio::test]
    async fn waits_at_least_what_the_provider_asks_unless_too_long() {
        let asked = Failure::Retry {
            cause: Transient::ProviderBusy(String::new()),
            after: Some(Duration::from_millis(150)),
        };
        let started = std::time::Instant::now();
        let (_, calls) = always(&quick(2), &Gate::open(), asked.clone()).await;
        assert_eq!(calls, 2);
        assert!(started.elapsed() >= Duration::from_millis(150));

        let mut policy = quick(5);
        policy.max_retry_after = Duration::from_millis(100);
        let (_, calls) = always(&policy, &Gate::open(), asked).await;
        assert_eq!(calls, 1, "a too-long Retry-After is not waited for");
    }

    #[tokio::test]
    async fn a_429_pauses_the_gate_without_spending_attempts() {
        let limited = Failure::Retry {
            cause: Transient::RateLimited,
            after: Some(Duration::from_millis(30)),
        };
        let mut policy = quick(1);
        policy.max_rate_limited = 3;
        let started = std::time::Instant::now();
        let (out, calls) = always(&policy, &Gate::open(), limited.clone()).await;
        assert_eq!(out, Some(Err(limited)));
        assert_eq!(calls, 4, "one attempt plus three 429s waited out");
        assert!(started.elapsed() >= Duration::from_millis(90));
    }

    #[tokio::test]
    async fn a_429_asking_for_too_long_does_not_hold_the_gate() {
        let limited = Failure::Retry {
            cause: Transient::RateLimited,
            after: Some(Duration::from_secs(3_600)),
        };
        let gate = Gate::open();
        let (out, calls) = always(&quick(3), &gate, limited.clone()).await;
        assert_eq!((out, calls), (Some(Err(limited)), 1));
        let started = std::time::Instant::now();
        assert!(gate.admit().await.is_some());
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "the gate is not paused"
        );
    }

    #[tokio::test]
    async fn absurd_delays_do_not_overflow_the_clock() {
        let stop = CancellationToken::new();
        let gate = Gate::new(None, 1, stop.clone());
        gate.pause_for(Duration::MAX);
        stop.cancel();
        assert!(!gate.sleep(Duration::MAX).await);
    }

    #[tokio::test]
    async fn a_stopped_gate_sends_nothing_more() {
        let stop = CancellationToken::new();
        let gate = Gate::new(None, 1, stop.clone());
        stop.cancel();
        let (out, calls) = always(&quick(3), &gate, transient()).await;
        assert_eq!((out, calls), (None, 0));

        // Stopping during the backoff ends the retries too.
        let stop = CancellationToken::new();
        let gate = Gate::new(None, 1, stop.clone());
        let mut slow = quick(3);
        slow.min_delay = Duration::from_secs(30);
        slow.max_delay = Duration::from_secs(30);
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.cancel();
        });
        let (out, calls) = always(&slow, &gate, transient()).await;
        stopper.await.unwrap();
        assert_eq!((out, calls), (None, 1));
        assert_eq!(gate.admitted(), 1);
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_requests() {
        let gate = Gate::new(Some(50.0), 1, CancellationToken::new());
        let started = std::time::Instant::now();
        for _ in 0..11 {
            assert!(gate.admit().await.is_some());
        }
        // 50 per second: ten gaps of 20 ms after the first.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(190), "{took:?}");
        assert_eq!(gate.admitted(), 11);
    }
}
