//! The `conversion_rates` table: per app, mcc and closed window, the OTP sends that
//! settled and how many of them converted; posted to `/otp/backfillRate` once.
//!
//! Definitions (the issue's, in one place):
//! - windows are an hour or a day, aligned to UTC; a window is closed once it ended at
//!   least `settle_delay` ago; windows that start before `now - lookback` are never
//!   computed;
//! - a window is final once it is closed and no send of its app in it is `pending` or
//!   `recheck`; only final windows are computed and posted, so the posted numbers are
//!   the final ones (a late change is reposted only with `--repost-rates`);
//! - a window is recomputed only when its inputs changed: the triggers of migrations
//!   `20261127000020` and `20261128000080` mark the hours of changed sends, records and
//!   OTP conversions in `rate_dirty` (a pass marks those of the sends it completes
//!   itself, [`crate::db::sends::Completing::Pass`]), and a computation consumes the
//!   marks of the windows it computed;
//! - sent (backfillCardinalNumber): the sends in the window (by sent_at) whose record is
//!   settled and has that mcc (the mcc of the record's first attempt that has one);
//! - converted (backfillNumber): how many of those sends have an OTP conversion (of the
//!   same app, whose message_id is the send's verification id);
//! - the rate (backfillNow) is [`rate_percent`].
//!
//! This module holds the rules and the arithmetic; the SQL is in [`crate::db::rates`].

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use clap::ValueEnum;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;
use std::time::Duration;

/// `--rate-window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Window {
    #[value(name = "1h")]
    #[serde(rename = "1h")]
    Hour,
    #[value(name = "1d")]
    #[serde(rename = "1d")]
    Day,
}

impl Window {
    pub fn length(self) -> TimeDelta {
        match self {
            Window::Hour => TimeDelta::hours(1),
            Window::Day => TimeDelta::days(1),
        }
    }

    /// As PostgreSQL reads an interval.
    pub(crate) fn interval(self) -> &'static str {
        match self {
            Window::Hour => "1 hour",
            Window::Day => "1 day",
        }
    }
}

/// How rates are computed and posted.
#[derive(Debug, Clone, Serialize)]
pub struct Rules {
    pub window: Window,
    #[serde(serialize_with = "crate::ser::duration")]
    pub settle_delay: Duration,
    #[serde(serialize_with = "crate::ser::duration")]
    pub lookback: Duration,
    /// Post again a window whose numbers changed after it was posted.
    pub repost: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            window: Window::Hour,
            settle_delay: Duration::from_secs(3_600),
            lookback: Duration::from_secs(7 * 86_400),
            repost: false,
        }
    }
}

impl Rules {
    /// The closed windows to compute at `now`: those starting at or after the first
    /// boundary inside the lookback and ending by `now - settle_delay`. Empty when the
    /// start is not before the end.
    pub fn range(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let length = self.window.length();
        let earliest = crate::clock::before(now, self.lookback);
        let from = earliest.duration_trunc(length).unwrap_or(earliest);
        let from = if from < earliest { from + length } else { from };
        let latest_end = crate::clock::before(now, self.settle_delay);
        let until = latest_end.duration_trunc(length).unwrap_or(latest_end);
        (from, until)
    }
}

/// `100 × converted / sent`, rounded half up to two decimals; `None` when nothing was sent.
pub fn rate_percent(converted: u64, sent: u64) -> Option<Decimal> {
    if sent == 0 {
        return None;
    }
    let rate = Decimal::from(converted) * Decimal::ONE_HUNDRED / Decimal::from(sent);
    Some(
        rate.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
            .normalize(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn rates_round_half_up_to_two_decimals() {
        assert_eq!(rate_percent(100, 1000).unwrap().to_string(), "10");
        assert_eq!(rate_percent(1, 3).unwrap().to_string(), "33.33");
        assert_eq!(rate_percent(2, 3).unwrap().to_string(), "66.67");
        // 1/8 = 12.5%; 1/16 = 6.25%; 1/32 = 3.125% -> 3.13 (half up).
        assert_eq!(rate_percent(1, 32).unwrap().to_string(), "3.13");
        assert_eq!(rate_percent(0, 5).unwrap().to_string(), "0");
        assert_eq!(rate_percent(1, 0), None);
    }

    #[test]
    fn closed_windows_are_aligned_to_utc() {
        let hourly = Rules::default();
        // At 10:20, with a one-hour settle delay, windows up to 09:00 are closed; the
        // lookback starts at 10:20 seven days earlier, so the first whole hour is 11:00.
        let (from, until) = hourly.range(at("2026-11-26T10:20:00Z"));
        assert_eq!(from, at("2026-11-19T11:00:00Z"));
        assert_eq!(until, at("2026-11-26T09:00:00Z"));
        let daily = Rules {
            window: Window::Day,
            ..Rules::default()
        };
        let (from, until) = daily.range(at("2026-11-26T00:30:00Z"));
        assert_eq!(from, at("2026-11-20T00:00:00Z"));
        // 23:30 the day before is not a day's end: the 25th is not closed yet.
        assert_eq!(until, at("2026-11-25T00:00:00Z"));
        let (_, until) = daily.range(at("2026-11-26T01:00:00Z"));
        assert_eq!(until, at("2026-11-26T00:00:00Z"));
    }
}
