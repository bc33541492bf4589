//! How a stage calls the provider: through the pass's gate with its retries, each
//! attempt sent only while the item's lease holds for at least the request timeout,
//! until the grace after a stop is over. The one place a fatal answer stops the pass.

use super::held::Held;
use crate::provider::{Failure, Gate, ProviderClient, RetryPolicy};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What became of one call.
#[derive(Debug)]
pub enum Called<T> {
    /// An answer, or a failure, to record.
    Answered(Result<T, Failure>),
    /// Nothing to record: the call was not made (the pass is stopping, or the lease may
    /// run out before an answer), was abandoned, refused our credentials, or failed in
    /// an outage that says nothing of the item. The item is given back.
    GiveBack,
}

/// The pass's provider calls, shared by its stages.
pub struct Calls<'a> {
    pub client: &'a ProviderClient,
    gate: &'a Gate,
    retry: &'a RetryPolicy,
    /// A request is sent only while its lease has this long left: the request timeout.
    margin: Duration,
    stop: &'a CancellationToken,
    /// Cancelled when the grace after a stop is over: in-flight calls are abandoned.
    abort: &'a CancellationToken,
    /// The first answer that refused our credentials.
    fatal: Mutex<Option<Failure>>,
}

impl<'a> Calls<'a> {
    pub fn new(
        client: &'a ProviderClient,
        gate: &'a Gate,
        retry: &'a RetryPolicy,
        stop: &'a CancellationToken,
        abort: &'a CancellationToken,
    ) -> Self {
        Self {
            client,
            gate,
            retry,
            margin: client.request_timeout(),
            stop,
            abort,
            fatal: Mutex::new(None),
        }
    }

    /// Calls that may be in flight now (the in-flight limit).
    pub fn places(&self) -> usize {
        self.gate.in_flight_limit().0
    }

    /// The answer that refused our credentials and stopped the pass, if one did.
    pub fn take_fatal(&self) -> Option<Failure> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// One call with the pass's retries, each attempt sent only while the item's lease
    /// (`held`) stays valid for at least the request timeout. A fatal answer stops the
    /// pass.
    pub async fn call<T, F, Fut>(&self, held: Held<'_>, mut call: F) -> Called<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        if !held.usable(self.margin) {
            return Called::GiveBack;
        }
        let lease_short = std::cell::Cell::new(false);
        let guarded = || {
            let usable = held.usable(self.margin);
            let attempt = call();
            let lease_short = &lease_short;
            async move {
                if !usable {
                    // Not sent: the retry loop ends on this, and the item is released.
                    lease_short.set(true);
                    return Err(Failure::Rejected {
                        status: "lease".into(),
                        reason: "the lease may run out before an answer".into(),
                    });
                }
                attempt.await
            }
        };
        let outcome = tokio::select! {
            outcome = self.retry.run(self.gate, guarded) => outcome,
            _ = self.abort.cancelled() => return Called::GiveBack,
        };
        let Some(outcome) = outcome else {
            return Called::GiveBack;
        };
        if lease_short.get() {
            tracing::debug!("lease too short for another attempt: released, not sent");
            return Called::GiveBack;
        }
        match outcome {
            Err(failure @ Failure::Fatal { .. }) => {
                let mut fatal = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
                if fatal.is_none() {
                    tracing::error!(%failure, "the provider refused our credentials: stopping the pass");
                    *fatal = Some(failure);
                }
                self.stop.cancel();
                Called::GiveBack
            }
            // The provider answered nothing lately, or the breaker opened: this failure
            // is no check of the item, only a sign of the outage. The item is given
            // back untouched (the breaker stops the pass, or a later claim tries it).
            Err(failure)
                if failure.health().failed()
                    && (self.gate.provider_silent() || self.gate.tripped().is_some()) =>
            {
                Called::GiveBack
            }
            outcome => Called::Answered(outcome),
        }
    }
}
