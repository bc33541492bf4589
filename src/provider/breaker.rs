//! The circuit breaker: when the provider is unreachable or failing on most requests,
//! the pass stops instead of spending its retries on every send.
//!
//! Every request's outcome is recorded with its [`Health`]. The breaker judges once it
//! has seen requests for a whole `window` (a slow start, a busy machine's first
//! seconds, does not open it), and opens (once, for the rest of the pass) when either
//! - among the requests that ended in the last `window`, at least `min_failures`
//!   failed and they are at least `ratio` of those that said anything, or
//! - the last `min_failures` requests failed in a row and nothing was answered for a
//!   whole `window` (a slow rate or long timeouts never fill a window; a few items that
//!   fail alone at the end of a healthy pass do not open it).
//!
//! A pass that ends before a window has passed is judged once more at its end (see
//! [`Breaker::judge_end`]): `min_failures` failures in a row and no answer at all, ever,
//! open it then.
//!
//! Timeouts count only toward the second rule (a busy machine times requests out while
//! the provider answers others); 429s say nothing either way. Times are passed in, so
//! tests drive them.

use super::outcome::Health;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// When the breaker opens.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct BreakerSettings {
    /// How far back the failure ratio looks.
    #[serde(serialize_with = "crate::ser::duration")]
    pub window: Duration,
    /// Failures needed, in the window or in a row.
    pub min_failures: usize,
    /// Share of failing requests in the window (0 to 1).
    pub ratio: f64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_failures: 10,
            ratio: 0.8,
        }
    }
}

/// Why the breaker opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub failed: usize,
    /// Requests that said anything (failed or answered) in the span counted.
    pub of: usize,
    /// "in the last 10s" or "in a row".
    pub span: String,
    /// The last failure's cause.
    pub last_cause: String,
}

impl std::fmt::Display for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the provider is unavailable: {} of {} requests failed {} (last: {})",
            self.failed, self.of, self.span, self.last_cause
        )
    }
}

#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// (when, failed) of the requests in the window, oldest first.
    recent: VecDeque<(Instant, bool)>,
    failures_in_window: usize,
    streak: usize,
    last_answered: Option<Instant>,
    /// When the breaker was made (the pass started).
    created: Instant,
    last_cause: String,
    trip: Option<Trip>,
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self::new_at(settings, Instant::now())
    }

    /// A breaker made at `created`.
    pub fn new_at(settings: BreakerSettings, created: Instant) -> Self {
        Self {
            settings,
            inner: Mutex::new(Inner {
                recent: VecDeque::new(),
                failures_in_window: 0,
                streak: 0,
                last_answered: None,
                created,
                last_cause: String::new(),
                trip: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one request's outcome at `at`. True when this outcome opened the breaker.
    pub fn record(&self, at: Instant, health: Health, cause: impl FnOnce() -> String) -> bool {
        let s = self.settings;
        let mut inner = self.lock();
        let failed = match health {
            Health::Neutral => return false,
            Health::Answered => {
                inner.streak = 0;
                inner.last_answered = Some(at);
                false
            }
            Health::Failing => {
                inner.streak += 1;
                inner.last_cause = cause();
                true
            }
            Health::TimedOut => {
                inner.streak += 1;
                inner.last_cause = cause();
                return self.judge(&mut inner, at);
            }
        };
        inner.recent.push_back((at, failed));
        inner.failures_in_window += usize::from(failed);
        while let Some(&(when, old_failed)) = inner.recent.front() {
            if at.saturating_duration_since(when) <= s.window {
                break;
            }
            inner.recent.pop_front();
            inner.failures_in_window -= usize::from(old_failed);
        }
        if !failed {
            return false;
        }
        self.judge(&mut inner, at)
    }

    /// After a failure at `at`: opens the breaker if a rule says so.
    fn judge(&self, inner: &mut Inner, at: Instant) -> bool {
        let s = self.settings;
        if inner.trip.is_some() || at.saturating_duration_since(inner.created) < s.window {
            return false;
        }
        let in_window = inner.recent.len();
        let failures = inner.failures_in_window;
        let min = s.min_failures.max(1);
        let trip = if failures >= min && failures as f64 >= s.ratio * in_window as f64 {
            Some((
                failures,
                in_window,
                format!("in the last {}", humantime::format_duration(s.window)),
            ))
        } else if inner.streak >= min
            && at.saturating_duration_since(inner.last_answered.unwrap_or(inner.created))
                >= s.window
        {
            Some((inner.streak, inner.streak, "in a row".to_owned()))
        } else {
            None
        };
        let Some((failed, of, span)) = trip else {
            return false;
        };
        inner.trip = Some(Trip {
            failed,
            of,
            span,
            last_cause: inner.last_cause.clone(),
        });
        true
    }

    /// At the end of the pass: opens the breaker if the last `min_failures` requests
    /// failed in a row and none was ever answered. A small backlog against a provider
    /// that is down spends its retries before a whole window has passed; the pass must
    /// still say the provider was unavailable, not that it is done. Answers why the
    /// breaker is open, if it is.
    pub fn judge_end(&self) -> Option<Trip> {
        let mut inner = self.lock();
        if inner.trip.is_none()
            && inner.last_answered.is_none()
            && inner.streak >= self.settings.min_failures.max(1)
        {
            inner.trip = Some(Trip {
                failed: inner.streak,
                of: inner.streak,
                span: "in a row, and none was answered in the whole pass".to_owned(),
                last_cause: inner.last_cause.clone(),
            });
        }
        inner.trip.clone()
    }

    /// Why the breaker opened, if it did.
    pub fn tripped(&self) -> Option<Trip> {
        self.lock().trip.clone()
    }

    /// True when no request was answered within the window before `at`: a failure now
    /// says nothing about the item, only about the provider.
    pub fn unanswered(&self, at: Instant) -> bool {
        self.lock()
            .last_answered
            .is_none_or(|t| at.saturating_duration_since(t) > self.settings.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static T0: Instant = Instant::now();
    }

    fn breaker() -> Breaker {
        Breaker::new_at(BreakerSettings::default(), T0.with(|t| *t))
    }

    fn cause() -> String {
        "could not connect".into()
    }

    #[test]
    fn opens_when_most_requests_in_the_window_fail() {
        let b = Breaker::new_at(
            BreakerSettings {
                ratio: 0.5,
                ..BreakerSettings::default()
            },
            T0.with(|t| *t),
        );
        let t0 = T0.with(|t| *t);
        b.record(t0, Health::Answered, cause);
        let t1 = t0 + Duration::from_secs(20);
        for i in 0..9 {
            assert!(!b.record(t1 + Duration::from_millis(i), Health::Failing, cause));
            assert!(!b.record(t1 + Duration::from_millis(i), Health::Answered, cause));
        }
        assert!(b.tripped().is_none());
        // The tenth failure: 10 of 19.
        assert!(b.record(t1 + Duration::from_millis(20), Health::Failing, cause));
        let trip = b.tripped().unwrap();
        assert_eq!((trip.failed, trip.of), (10, 19));
        assert_eq!(
            trip.to_string(),
            "the provider is unavailable: 10 of 19 requests failed in the last 10s (last: could not connect)"
        );
        // It opens once.
        assert!(!b.record(t1 + Duration::from_millis(21), Health::Failing, cause));
    }

    #[test]
    fn judges_only_after_a_whole_window() {
        let b = breaker();
        let t0 = T0.with(|t| *t);
        // A busy start: everything fails for 3 s, then answers come.
        for i in 0..300u64 {
            assert!(!b.record(t0 + Duration::from_millis(i * 10), Health::Failing, cause));
        }
        assert!(
            b.unanswered(t0 + Duration::from_secs(3)),
            "nothing answered yet"
        );
        for i in 300..1_500u64 {
            b.record(t0 + Duration::from_millis(i * 10), Health::Answered, cause);
        }
        assert_eq!(b.tripped(), None);

        // A provider down from the start opens it once a window has passed.
        let b = breaker();
        let mut opened_at = None;
        for i in 0..2_000u64 {
            let at = t0 + Duration::from_millis(i * 10);
            if b.record(at, Health::Failing, cause) {
                opened_at = Some(at - t0);
                break;
            }
        }
        assert_eq!(opened_at, Some(Duration::from_secs(10)));
        assert_eq!(b.tripped().unwrap().span, "in the last 10s");
    }

    #[test]
    fn stays_closed_under_occasional_faults() {
        let b = breaker();
        let t0 = T0.with(|t| *t);
        // One failure in twelve (8%), 10,000 requests over 100 s.
        for i in 0..10_000u64 {
            let health = if i % 12 == 0 {
                Health::Failing
            } else {
                Health::Answered
            };
            b.record(t0 + Duration::from_millis(i * 10), health, cause);
        }
        assert_eq!(b.tripped(), None);
        assert!(!b.unanswered(t0 + Duration::from_millis(100_000)));
    }

    #[test]
    fn old_failures_leave_the_window_but_a_streak_still_opens_it() {
        let b = breaker();
        let t0 = T0.with(|t| *t);
        // One answer, then a failure every 5 s: never 10 in a 10 s window, but 10 in a
        // row with nothing answered for longer than the window.
        b.record(t0, Health::Answered, cause);
        for i in 1..10u64 {
            assert!(!b.record(t0 + Duration::from_secs(i * 5), Health::Failing, cause));
        }
        assert!(b.record(t0 + Duration::from_secs(50), Health::Failing, cause));
        assert_eq!(b.tripped().unwrap().span, "in a row");

        // Ten failures in a row right after answers (a few bad items at the end of a
        // healthy pass) do not open it.
        let b = breaker();
        b.record(t0, Health::Answered, cause);
        for i in 0..30 {
            let at = t0 + Duration::from_secs(20) + Duration::from_millis(i * 300);
            b.record(at, Health::Answered, cause);
        }
        for i in 0..12u64 {
            let at = t0 + Duration::from_secs(29) + Duration::from_millis(i * 100);
            assert!(!b.record(at, Health::Failing, cause));
        }
        assert_eq!(b.tripped(), None);
    }

    #[test]
    fn timeouts_open_it_only_when_nothing_was_answered_for_a_window() {
        let b = breaker();
        let t0 = T0.with(|t| *t);
        // A busy machine: most requests time out, some are answered.
        for i in 0..3_000u64 {
            let health = if i % 5 == 0 {
                Health::Answered
            } else {
                Health::TimedOut
            };
            assert!(!b.record(t0 + Duration::from_millis(i * 10), health, cause));
        }
        // A provider that hangs: nothing answered for a window.
        let at = t0 + Duration::from_secs(30);
        for i in 0..20u64 {
            b.record(at + Duration::from_millis(i * 600), Health::TimedOut, cause);
        }
        let trip = b.tripped().unwrap();
        assert_eq!(trip.span, "in a row");
    }

    #[test]
    fn rate_limits_say_nothing_and_an_answer_ends_a_streak() {
        let b = breaker();
        let t0 = T0.with(|t| *t);
        for _ in 0..100 {
            assert!(!b.record(t0, Health::Neutral, cause));
        }
        assert!(b.unanswered(t0));
        for i in 0..60u64 {
            let at = t0 + Duration::from_secs(i * 5);
            let health = if i % 5 == 4 {
                Health::Answered
            } else {
                Health::Failing
            };
            b.record(at, health, cause);
        }
        assert_eq!(b.tripped(), None, "4 in a row at most, 2 or 3 per window");
    }

    #[test]
    fn a_pass_that_ends_before_a_window_is_judged_at_its_end() {
        let t0 = T0.with(|t| *t);
        let b = breaker();
        for i in 0..10 {
            assert!(!b.record(t0 + Duration::from_millis(i), Health::Failing, cause));
        }
        // Within the first window: not judged yet; at the end of the pass, it is.
        assert!(b.tripped().is_none());
        let trip = b.judge_end().expect("opened at the end");
        assert_eq!((trip.failed, trip.of), (10, 10));
        assert_eq!(trip.last_cause, "could not connect");

        // One answer in the pass: the provider was up; nine failures: too few.
        let answered = breaker();
        answered.record(t0, Health::Answered, cause);
        for i in 1..20 {
            answered.record(t0 + Duration::from_millis(i), Health::Failing, cause);
        }
        assert!(answered.judge_end().is_none());
        let few = breaker();
        for i in 0..9 {
            few.record(t0 + Duration::from_millis(i), Health::Failing, cause);
        }
        assert!(few.judge_end().is_none());
    }
}
