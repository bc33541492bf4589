//! What posting one item to the provider came to, as the two ledgers record it
//! (`conversions`, `conversion_rates`: both keep `state`, `next_attempt_at`,
//! `last_error`), and when an item of either is due.

use crate::provider::{Failure, Transient};
use chrono::{DateTime, Utc};

/// The SQL condition "ledger item `$t` (a table or its alias) is due at `$now`": not
/// posted yet, and its next attempt has come.
macro_rules! ledger_due {
    ($t:literal, $now:literal) => {
        concat!(
            $t,
            ".state = 'pending' AND ",
            $t,
            ".next_attempt_at <= ",
            $now
        )
    };
}
pub(crate) use ledger_due;

/// The ledger's verdict on one posting (fatal answers stop the pass before this).
#[derive(Debug, Clone, PartialEq)]
pub enum Posted {
    /// Status 0: never posted again.
    Sent,
    /// Refused (-14, -22, ...): kept with the reason, not posted again.
    Rejected(String),
    /// Transient failures spent the retries: try again at this time.
    Later { at: DateTime<Utc>, error: String },
}

impl Posted {
    /// The verdict on an outcome; `retry_at` is when a transient failure is tried again.
    pub fn from_outcome(outcome: Result<(), Failure>, retry_at: DateTime<Utc>) -> Self {
        match outcome {
            Ok(()) => Posted::Sent,
            Err(Failure::Rejected { status, reason }) => {
                Posted::Rejected(format!("provider status {status}: {reason}"))
            }
            Err(failure) => Posted::Later {
                at: retry_at,
                error: failure.to_string(),
            },
        }
    }

    /// True for an acknowledgement.
    pub fn is_sent(&self) -> bool {
        matches!(self, Posted::Sent)
    }

    /// The ledger columns this verdict writes at `now`: the state, when the item is due
    /// again, and the error kept.
    pub fn columns(&self, now: DateTime<Utc>) -> (&'static str, DateTime<Utc>, Option<&str>) {
        match self {
            Posted::Sent => ("sent", now, None),
            Posted::Rejected(reason) => ("rejected", now, Some(reason)),
            Posted::Later { at, error } => ("pending", *at, Some(error)),
        }
    }
}

/// True when a failed request may still have been applied by the provider: it timed
/// out or lost its connection after being sent, its answer was cut short or could not
/// be read, or the provider failed while handling it (HTTP 5xx, -18). A later
/// acknowledgement of the same item may then be a duplicate. Refusals before any work
/// (429, a connection never made, -16) are not.
pub fn outcome_unknown(answer: &Result<(), Failure>) -> bool {
    match answer {
        Err(Failure::Retry { cause, .. }) => matches!(
            cause,
            Transient::Timeout
                | Transient::Connection(_)
                | Transient::Malformed(_)
                | Transient::ProviderBusy(_)
                | Transient::Http(500..=599)
        ),
        Err(Failure::Unreadable { .. }) => true,
        _ => false,
    }
}
