//! Bounded retries with exponential backoff and jitter (backon), honouring the delay
//! the provider asks for. Only [`Failure::Retry`] is retried; every attempt is a new
//! call, so it is signed afresh.

use super::Failure;
use backon::{ExponentialBuilder, Retryable};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How hard to try one call.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: usize,
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
            max_attempts: 4,
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
    /// Runs `call` until it succeeds, fails for good, or the attempts, the delays or
    /// the pass's budget run out; answers the last outcome.
    pub async fn run<T, F, Fut>(&self, call: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1))
            .with_jitter();
        call.retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|failure: &Failure| failure.is_retryable())
            .adjust(|failure, backoff| {
                let delay = match (backoff, failure.retry_after()) {
                    (None, _) => return None,
                    (Some(_), Some(asked)) if asked > self.max_retry_after => return None,
                    (Some(ours), Some(asked)) => ours.max(asked),
                    (Some(ours), None) => ours,
                };
                self.budget.take().then_some(delay)
            })
            .notify(|failure, delay| {
                tracing::debug!(%failure, delay_ms = delay.as_millis() as u64, "retrying");
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Transient;
    use std::sync::atomic::AtomicUsize;

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

    #[tokio::test]
    async fn retries_transient_failures_up_to_the_bound() {
        let calls = AtomicUsize::new(0);
        let out: Result<(), _> = quick(3)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(transient())
            })
            .await;
        assert_eq!(out, Err(transient()));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn never_retries_a_rejection() {
        let calls = AtomicUsize::new(0);
        let rejected = Failure::Rejected {
            status: "-22".into(),
            reason: "bad".into(),
        };
        let out: Result<(), _> = quick(5)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(rejected.clone())
            })
            .await;
        assert_eq!(out, Err(rejected));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_shared_budget_caps_retries_across_calls() {
        let mut policy = quick(10);
        policy.budget = RetryBudget::new(3);
        let calls = AtomicUsize::new(0);
        for _ in 0..2 {
            let _: Result<(), _> = policy
                .run(|| async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(transient())
                })
                .await;
        }
        // Two first attempts plus three retries in all.
        assert_eq!(calls.load(Ordering::SeqCst), 5);
        assert_eq!(policy.budget.left(), 0);
    }

    #[tokio::test]
    async fn waits_at_least_what_the_provider_asks_unless_too_long() {
        let asked = Failure::Retry {
            cause: Transient::RateLimited,
            after: Some(Duration::from_millis(150)),
        };
        let calls = AtomicUsize::new(0);
        let started = std::time::Instant::now();
        let _: Result<(), _> = quick(2)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(asked.clone())
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(started.elapsed() >= Duration::from_millis(150));

        let mut policy = quick(5);
        policy.max_retry_after = Duration::from_millis(100);
        let calls = AtomicUsize::new(0);
        let _: Result<(), _> = policy
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(asked.clone())
            })
            .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "a too-long Retry-After is not waited for"
        );
    }
}
