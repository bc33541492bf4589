//! What becomes of a send after a replay re-fetched it (SPEC "Replay"). Pure, like the
//! pass's decision: the stored state, the answer, the send's age and its check count
//! in, the next state out.
//!
//! A replay is a correction, never a setback: an answer it could not get leaves the
//! send as it was, and an answer less final than a settled record leaves the stored
//! record in place (the answer is kept aside as a regression).

use super::{Checked, Decision, Recheck, Schedule};
use crate::db::sends::SendState;
use crate::provider::Failure;
use crate::record::{Matched, Record};
use chrono::{DateTime, Utc};

/// The outcome of a replay's re-fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct Replayed {
    pub decision: Decision,
    /// The answer is less final than the stored, settled record: the record stays, the
    /// answer is kept aside, not stored.
    pub regression: bool,
}

impl Schedule {
    /// Decides what a replay does with a send stored as `stored`. `None` for a fatal
    /// failure: such a send is released, not decided.
    pub fn replayed(
        &self,
        stored: SendState,
        sent_at: DateTime<Utc>,
        attempts: i32,
        checked: Checked,
        now: DateTime<Utc>,
    ) -> Option<Replayed> {
        let unchanged = |last_error: Option<String>, recheck: Option<Recheck>| Decision {
            state: stored,
            next_check_at: now,
            last_error,
            recheck,
        };
        let decision = match checked {
            // Not re-fetched: the send keeps what it had (completing with the same
            // state leaves the row as it was).
            Checked::Failed(failure @ (Failure::Retry { .. } | Failure::Unreadable { .. })) => {
                let why = if failure.is_retryable() {
                    Recheck::Transient
                } else {
                    Recheck::Unreadable
                };
                unchanged(Some(failure.to_string()), Some(why))
            }
            // A settled send answered "still sending" (or unknown): the stored record
            // and attempts stay.
            Checked::Record(record) if stored == SendState::Settled && less_final(record) => {
                return Some(Replayed {
                    decision: unchanged(None, None),
                    regression: true,
                });
            }
            checked => self.decide(sent_at, attempts, checked, now)?,
        };
        Some(Replayed {
            decision,
            regression: false,
        })
    }
}

/// True when a record is less final than a settled one: still sending, or unknown to
/// the provider.
fn less_final(record: &Record) -> bool {
    record.still_sending() || record.verification.matched == Some(Matched::NoSuchId)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{at, record};
    use super::*;
    use crate::provider::{FatalCause, Transient};

    fn replay(stored: SendState, checked: Checked) -> Option<Replayed> {
        Schedule::default().replayed(stored, at(0), 2, checked, at(60))
    }

    #[test]
    fn a_send_not_refetched_keeps_what_it_had() {
        let transient = Failure::Retry {
            cause: Transient::Http(503),
            after: None,
        };
        let unreadable = Failure::Unreadable {
            problem: "field `data.sms.pay`".into(),
        };
        for (stored, failure, why) in [
            (SendState::Settled, &transient, Recheck::Transient),
            (SendState::Rejected, &transient, Recheck::Transient),
            (SendState::Settled, &unreadable, Recheck::Unreadable),
            (SendState::Expired, &unreadable, Recheck::Unreadable),
        ] {
            let r = replay(stored, Checked::Failed(failure)).unwrap();
            assert!(!r.regression);
            assert_eq!(
                r.decision,
                Decision {
                    state: stored,
                    next_check_at: at(60),
                    last_error: Some(failure.to_string()),
                    recheck: Some(why),
                }
            );
        }
    }

    #[test]
    fn a_settled_send_answered_less_final_is_a_regression_that_changes_nothing() {
        for answer in [
            record(Matched::Sending, -1),
            record(Matched::Verified, -1),
            // Unknown to the provider, even with a delivered sms.
            record(Matched::NoSuchId, 0),
        ] {
            let r = replay(SendState::Settled, Checked::Record(&answer)).unwrap();
            assert!(r.regression, "{answer:?}");
            assert_eq!(
                r.decision,
                Decision {
                    state: SendState::Settled,
                    next_check_at: at(60),
                    last_error: None,
                    recheck: None,
                }
            );
        }
    }

    #[test]
    fn otherwise_a_replay_decides_as_a_pass_does() {
        let s = Schedule::default();
        let sending = record(Matched::Sending, -1);
        let settled = record(Matched::Verified, 0);
        let rejected = Failure::Rejected {
            status: "-22".into(),
            reason: "Parameter exception".into(),
        };
        for (stored, checked) in [
            // Only a settled send can regress: any other is decided again.
            (SendState::Expired, Checked::Record(&sending)),
            (SendState::Recheck, Checked::Record(&sending)),
            (SendState::Settled, Checked::Record(&settled)),
            (SendState::Rejected, Checked::Record(&settled)),
            (SendState::Settled, Checked::Failed(&rejected)),
        ] {
            let r = replay(stored, checked).unwrap();
            assert!(!r.regression);
            assert_eq!(Some(r.decision), s.decide(at(0), 2, checked, at(60)));
        }
    }

    #[test]
    fn a_fatal_failure_is_not_decided() {
        let fatal = Failure::Fatal {
            cause: FatalCause::Authentication,
            reason: String::new(),
        };
        assert_eq!(replay(SendState::Settled, Checked::Failed(&fatal)), None);
    }
}
