//! What an answer means: [`Failure`], sorted by what the caller should do about it,
//! and the [`Health`] it shows the circuit breaker. [`classify`] is the one place that
//! reads HTTP statuses and the provider's status codes to decide it; everything else
//! matches on [`Failure`].

mod classify;
mod envelope;
mod span;

pub use classify::{classify, classify_within};
pub(crate) use envelope::Data;
pub use envelope::Envelope;

use crate::text::escape;
use std::time::Duration;

/// Why a call did not succeed, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The provider refused this item (-22, -14, or a code it does not document here).
    /// Sending the same request again will not help; keep the reason.
    #[error("rejected by the provider (status {}): {}", escape(.status), escape(.reason))]
    Rejected { status: String, reason: String },

    /// Worth another try, after `after` if the provider said how long.
    #[error("transient: {cause}")]
    Retry {
        cause: Transient,
        after: Option<Duration>,
    },

    /// The provider said success but the answer cannot be read (a field that does not
    /// parse, an answer over the size cap). Keep the item for a later re-check and
    /// record the problem; an immediate retry would read the same answer.
    #[error("unreadable answer: {}", escape(.problem))]
    Unreadable { problem: String },

    /// Every further call would fail the same way: stop the whole pass.
    #[error("fatal: {cause} ({})", escape(.reason))]
    Fatal { cause: FatalCause, reason: String },
}

/// What went wrong, for a retryable failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Transient {
    #[error("timed out")]
    Timeout,
    #[error("could not connect: {}", escape(.0))]
    Connect(String),
    #[error("connection failed mid-request: {}", escape(.0))]
    Connection(String),
    #[error("HTTP {0}")]
    Http(u16),
    #[error("rate limited (HTTP 429)")]
    RateLimited,
    /// -18: the provider's own failure.
    #[error("provider failure (status -18): {}", escape(.0))]
    ProviderBusy(String),
    /// -16: the timestamp was stale; the retry is signed afresh.
    #[error("timestamp expired (status -16): {}", escape(.0))]
    TimestampExpired(String),
    /// Not JSON, truncated, or no status in it.
    #[error("malformed answer: {}", escape(.0))]
    Malformed(String),
    /// An HTTP 4xx without the provider's JSON: something in between (a proxy, a load
    /// balancer) answered, not the provider. Never a verdict on the item.
    #[error("HTTP {0} without a provider answer (not the provider: a proxy?)")]
    NotProvider(u16),
}

/// Why the whole pass must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FatalCause {
    /// -1.
    #[error("the provider refused our credentials (status -1)")]
    Authentication,
    /// -2.
    #[error("the provider refused our IP address (status -2)")]
    IpNotAllowed,
    /// HTTP 401 or 403 before any JSON.
    #[error("the provider's server refused access (HTTP 401/403)")]
    Forbidden,
    /// HTTP 404/405 or a redirect without a provider answer: the base URL or path is
    /// wrong, so every call would fail alike.
    #[error("the endpoint does not exist at the configured base URL")]
    Endpoint,
}

impl Health {
    /// A failure of either kind.
    pub fn failed(self) -> bool {
        matches!(self, Health::Failing | Health::TimedOut)
    }
}

/// What one request says about the provider's health, for the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The provider answered, whatever it said (success, a refusal, an unreadable
    /// record, -16).
    Answered,
    /// Unreachable or failing: a connection error, HTTP 5xx, an answer without its
    /// JSON, -18 (its own failure).
    Failing,
    /// No answer in time: a provider that hangs, or a machine too busy to read its
    /// answers. Weaker evidence than a failure: it opens the breaker only when nothing
    /// was answered for a whole window.
    TimedOut,
    /// Says nothing either way (429: we are too fast, not it down).
    Neutral,
}

/// The health a call's outcome shows.
pub fn health<T>(outcome: &Result<T, Failure>) -> Health {
    match outcome {
        Ok(_) => Health::Answered,
        Err(failure) => failure.health(),
    }
}

impl Failure {
    /// The health this failure shows.
    pub fn health(&self) -> Health {
        match self {
            Failure::Retry { cause, .. } => match cause {
                Transient::RateLimited => Health::Neutral,
                Transient::TimestampExpired(_) => Health::Answered,
                Transient::Timeout => Health::TimedOut,
                Transient::Connect(_)
                | Transient::Connection(_)
                | Transient::Http(_)
                | Transient::ProviderBusy(_)
                | Transient::Malformed(_)
                | Transient::NotProvider(_) => Health::Failing,
            },
            Failure::Rejected { .. } | Failure::Unreadable { .. } | Failure::Fatal { .. } => {
                Health::Answered
            }
        }
    }
}

impl Failure {
    /// True for failures worth retrying now.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Failure::Retry { .. })
    }

    /// The delay the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Retry { after, .. } => *after,
            _ => None,
        }
    }

    /// The provider's status code, when the failure carries one.
    pub fn status(&self) -> Option<&str> {
        match self {
            Failure::Rejected { status, .. } => Some(status),
            _ => None,
        }
    }
}
