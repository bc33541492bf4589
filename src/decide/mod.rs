//! What becomes of a send after a check (SPEC "One pass", step 4), and after a
//! replay's re-fetch ([`replay`]). Pure: the answer, the send's age and its check count
//! in, the next state out.

mod replay;

pub use replay::Replayed;

use crate::clock::after;
use crate::db::sends::SendState;
use crate::provider::Failure;
use crate::record::{Matched, Record};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::time::Duration;

/// The timing rules.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// Delays between re-checks of a send still sending: the n-th re-check waits the
    /// n-th delay, the last one repeating.
    #[serde(serialize_with = "crate::ser::durations")]
    pub rechecks: Vec<Duration>,
    /// After this long since sent_at, a send still not final is expired.
    #[serde(serialize_with = "crate::ser::duration")]
    pub max_age: Duration,
    /// A send the provider does not know (matched 3) is re-checked until this long after
    /// sent_at, then rejected.
    #[serde(serialize_with = "crate::ser::duration")]
    pub not_found_grace: Duration,
    /// The delay before the next pass tries a send whose retries ran out.
    #[serde(serialize_with = "crate::ser::duration")]
    pub transient_delay: Duration,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            rechecks: [120, 600, 3_600, 21_600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            max_age: Duration::from_secs(72 * 3_600),
            not_found_grace: Duration::from_secs(15 * 60),
            transient_delay: Duration::from_secs(60),
        }
    }
}

/// Why a send is checked again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Recheck {
    /// The record is not final yet.
    StillSending,
    /// The provider does not know the id yet (matched 3, within the grace period).
    NotYetVisible,
    /// The answer could not be read.
    Unreadable,
    /// Retries ran out on transient failures.
    Transient,
}

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub state: SendState,
    pub next_check_at: DateTime<Utc>,
    pub last_error: Option<String>,
    /// For a re-check, why.
    pub recheck: Option<Recheck>,
}

/// What a check answered.
#[derive(Debug, Clone, Copy)]
pub enum Checked<'a> {
    Record(&'a Record),
    Failed(&'a Failure),
}

impl Schedule {
    fn delay(&self, attempts: i32) -> Duration {
        let index = usize::try_from(attempts.max(0)).unwrap_or(0);
        self.rechecks
            .get(index)
            .or(self.rechecks.last())
            .copied()
            .unwrap_or(Duration::from_secs(120))
    }

    /// Decides the next state. `None` for a fatal failure: such a send is released,
    /// not decided.
    pub fn decide(
        &self,
        sent_at: DateTime<Utc>,
        attempts: i32,
        checked: Checked,
        now: DateTime<Utc>,
    ) -> Option<Decision> {
        let expires_at = after(sent_at, self.max_age);
        let recheck = |why: Recheck, at: DateTime<Utc>, error: Option<String>| {
            if now >= expires_at {
                let why = error.unwrap_or_else(|| "still sending at the maximum age".into());
                return Decision {
                    state: SendState::Expired,
                    next_check_at: now,
                    last_error: Some(why),
                    recheck: None,
                };
            }
            Decision {
                state: SendState::Recheck,
                next_check_at: at.min(expires_at).max(now),
                last_error: error,
                recheck: Some(why),
            }
        };
        let rejected = |reason: String| Decision {
            state: SendState::Rejected,
            next_check_at: now,
            last_error: Some(reason),
            recheck: None,
        };
        Some(match checked {
            Checked::Record(record) if record.verification.matched == Some(Matched::NoSuchId) => {
                let grace_ends = after(sent_at, self.not_found_grace);
                if now >= grace_ends {
                    rejected(
                        "the provider has no such id (matched 3) after the grace period".into(),
                    )
                } else {
                    let at = after(now, self.delay(attempts)).min(grace_ends);
                    recheck(
                        Recheck::NotYetVisible,
                        at,
                        Some("not yet visible at the provider (matched 3)".into()),
                    )
                }
            }
            Checked::Record(record) if record.still_sending() => recheck(
                Recheck::StillSending,
                after(now, self.delay(attempts)),
                None,
            ),
            Checked::Record(_) => Decision {
                state: SendState::Settled,
                next_check_at: now,
                last_error: None,
                recheck: None,
            },
            Checked::Failed(Failure::Rejected { status, reason }) => {
                rejected(format!("provider status {status}: {reason}"))
            }
            Checked::Failed(Failure::Unreadable { problem }) => recheck(
                Recheck::Unreadable,
                after(now, self.delay(attempts)),
                Some(format!("unreadable answer: {problem}")),
            ),
            Checked::Failed(failure @ Failure::Retry { .. }) => recheck(
                Recheck::Transient,
                after(now, self.transient_delay),
                Some(failure.to_string()),
            ),
            Checked::Failed(Failure::Fatal { .. }) => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{FatalCause, Transient};
    use crate::record::{SmsAttempt, Verification};

    /// Minutes after a fixed start (shared with the replay's tests).
    pub(super) fn at(minutes: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
            + chrono::Duration::minutes(minutes)
    }

    /// A record with one sms attempt (shared with the replay's tests).
    pub(super) fn record(matched: Matched, sms_status: i64) -> Record {
        Record {
            verification: Verification {
                matched: Some(matched),
                ..Verification::default()
            },
            sms: vec![SmsAttempt {
                status: Some(sms_status),
                ..SmsAttempt::default()
            }],
            ..Record::default()
        }
    }

    #[test]
    fn a_final_record_settles() {
        let d = Schedule::default()
            .decide(
                at(0),
                0,
                Checked::Record(&record(Matched::Verified, 0)),
                at(1),
            )
            .unwrap();
        assert_eq!(d.state, SendState::Settled);
        assert_eq!(d.last_error, None);
    }

    #[test]
    fn still_sending_backs_off_then_expires_keeping_the_answer() {
        let s = Schedule::default();
        let sending = record(Matched::Sending, -1);
        let first = s
            .decide(at(0), 0, Checked::Record(&sending), at(1))
            .unwrap();
        assert_eq!(
            (first.state, first.next_check_at),
            (SendState::Recheck, at(3))
        );
        assert_eq!(first.recheck, Some(Recheck::StillSending));
        let second = s
            .decide(at(0), 1, Checked::Record(&sending), at(3))
            .unwrap();
        assert_eq!(second.next_check_at, at(13));
        let late = s
            .decide(at(0), 9, Checked::Record(&sending), at(60 * 70))
            .unwrap();
        assert_eq!(
            late.next_check_at,
            at(60 * 72),
            "never past the maximum age"
        );
        let expired = s
            .decide(at(0), 10, Checked::Record(&sending), at(60 * 72))
            .unwrap();
        assert_eq!(expired.state, SendState::Expired);
        // A delivered sms still waiting for the call leg is also not final.
        let dlr_pending = record(Matched::Verified, -1);
        assert_eq!(
            s.decide(at(0), 0, Checked::Record(&dlr_pending), at(1))
                .unwrap()
                .state,
            SendState::Recheck
        );
    }

    #[test]
    fn no_such_id_is_rechecked_within_the_grace_period_then_rejected() {
        let s = Schedule::default();
        let missing = Record {
            verification: Verification {
                matched: Some(Matched::NoSuchId),
                ..Verification::default()
            },
            ..Record::default()
        };
        let early = s
            .decide(at(0), 0, Checked::Record(&missing), at(1))
            .unwrap();
        assert_eq!(early.state, SendState::Recheck);
        assert_eq!(early.recheck, Some(Recheck::NotYetVisible));
        assert_eq!(early.next_check_at, at(3));
        let near_end = s
            .decide(at(0), 3, Checked::Record(&missing), at(14))
            .unwrap();
        assert_eq!(near_end.next_check_at, at(15), "not past the grace period");
        let after = s
            .decide(at(0), 4, Checked::Record(&missing), at(15))
            .unwrap();
        assert_eq!(after.state, SendState::Rejected);
        assert!(after.last_error.unwrap().contains("matched 3"));
    }

    #[test]
    fn failures() {
        let s = Schedule::default();
        let rejected = Failure::Rejected {
            status: "-22".into(),
            reason: "Parameter exception".into(),
        };
        let d = s
            .decide(at(0), 0, Checked::Failed(&rejected), at(1))
            .unwrap();
        assert_eq!(d.state, SendState::Rejected);
        assert_eq!(
            d.last_error.as_deref(),
            Some("provider status -22: Parameter exception")
        );

        let transient = Failure::Retry {
            cause: Transient::Http(503),
            after: None,
        };
        let d = s
            .decide(at(0), 0, Checked::Failed(&transient), at(1))
            .unwrap();
        assert_eq!((d.state, d.next_check_at), (SendState::Recheck, at(2)));
        assert_eq!(d.recheck, Some(Recheck::Transient));

        let unreadable = Failure::Unreadable {
            problem: "field `data.sms.pay`: not an exact decimal: \"1e5\"".into(),
        };
        let d = s
            .decide(at(0), 0, Checked::Failed(&unreadable), at(1))
            .unwrap();
        assert_eq!(d.state, SendState::Recheck);
        assert!(d.last_error.unwrap().contains("data.sms.pay"));

        let fatal = Failure::Fatal {
            cause: FatalCause::Authentication,
            reason: String::new(),
        };
        assert_eq!(s.decide(at(0), 0, Checked::Failed(&fatal), at(1)), None);
    }
}
