//! The time zone an export reads its dates in and cuts its days and months in: an IANA
//! name (`Asia/Shanghai`, `America/New_York`) or a fixed UTC offset (`+08:00`).
//!
//! Dates become instants here (the first instant of a day in the zone); PostgreSQL cuts
//! each send's day with the same zone (`AT TIME ZONE` for a name, plus an interval for an
//! offset: never POSIX text like `'+08'`, whose sign PostgreSQL reads inverted).

use chrono::{DateTime, FixedOffset, NaiveDate, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A zone: an IANA name, or a fixed offset east of UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    Named(Tz),
    Fixed(FixedOffset),
}

impl Default for Zone {
    fn default() -> Self {
        Zone::Named(Tz::UTC)
    }
}

/// A `--timezone` that is neither a known IANA name nor an offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown time zone {0:?}: expected an IANA name such as Asia/Shanghai or America/New_York, \
     or a UTC offset such as +08:00 or -05:30"
)]
pub struct ZoneError(pub String);

/// The largest offset accepted, in hours (real zones stay within -12..+14).
const MAX_OFFSET_HOURS: i32 = 18;

impl FromStr for Zone {
    type Err = ZoneError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let text = s.trim();
        let bad = || ZoneError(s.to_owned());
        if text.starts_with(['+', '-']) {
            return parse_offset(text).map(Zone::Fixed).ok_or_else(bad);
        }
        if let Ok(tz) = Tz::from_str(text) {
            return Ok(Zone::Named(tz));
        }
        // PostgreSQL reads names in any case; so do we, and keep the canonical spelling.
        chrono_tz::TZ_VARIANTS
            .iter()
            .find(|tz| tz.name().eq_ignore_ascii_case(text))
            .map(|tz| Zone::Named(*tz))
            .ok_or_else(bad)
    }
}

/// `+08:00`, `-05:30`, `+0800` or `+08`: an offset east of UTC, as in ISO 8601.
fn parse_offset(text: &str) -> Option<FixedOffset> {
    let (sign, digits) = text.split_at(1);
    let sign = if sign == "-" { -1 } else { 1 };
    let (hours, minutes) = match digits.split_once(':') {
        Some((h, m)) => (h, m),
        None if digits.len() == 4 => digits.split_at(2),
        None => (digits, "00"),
    };
    let two_digits = |t: &str| t.len() == 2 && t.bytes().all(|b| b.is_ascii_digit());
    if !two_digits(hours) || !two_digits(minutes) {
        return None;
    }
    let (hours, minutes): (i32, i32) = (hours.parse().ok()?, minutes.parse().ok()?);
    if minutes >= 60 || hours * 60 + minutes > MAX_OFFSET_HOURS * 60 {
        return None;
    }
    FixedOffset::east_opt(sign * (hours * 3_600 + minutes * 60))
}

impl fmt::Display for Zone {
    /// The name, or the offset as `+08:00`: what `--timezone` reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Zone::Named(tz) => f.write_str(tz.name()),
            Zone::Fixed(offset) => {
                let seconds = offset.local_minus_utc();
                let sign = if seconds < 0 { '-' } else { '+' };
                let minutes = seconds.abs() / 60;
                write!(f, "{sign}{:02}:{:02}", minutes / 60, minutes % 60)
            }
        }
    }
}

impl Serialize for Zone {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Zone {
    /// The first instant whose date in this zone is `day`: its midnight, or, where the
    /// clocks skip midnight, the instant they land on after it.
    pub fn start_of_day(&self, day: NaiveDate) -> DateTime<Utc> {
        match self {
            Zone::Named(tz) => start_of_day_in(tz, day),
            Zone::Fixed(offset) => start_of_day_in(offset, day),
        }
    }

    /// The date of `instant` in this zone.
    pub fn date_of(&self, instant: DateTime<Utc>) -> NaiveDate {
        match self {
            Zone::Named(tz) => instant.with_timezone(tz).date_naive(),
            Zone::Fixed(offset) => instant.with_timezone(offset).date_naive(),
        }
    }

    /// The name PostgreSQL's `AT TIME ZONE` gets: the IANA name, or `UTC` for an offset
    /// (which is then added as [`Zone::sql_offset_seconds`]).
    pub fn sql_name(&self) -> &'static str {
        match self {
            Zone::Named(tz) => tz.name(),
            Zone::Fixed(_) => "UTC",
        }
    }

    /// Seconds east of UTC to add to the time `AT TIME ZONE` gave: the fixed offset, or 0.
    pub fn sql_offset_seconds(&self) -> i32 {
        match self {
            Zone::Named(_) => 0,
            Zone::Fixed(offset) => offset.local_minus_utc(),
        }
    }
}

fn start_of_day_in<Z: TimeZone>(zone: &Z, day: NaiveDate) -> DateTime<Utc> {
    let midnight = day.and_hms_opt(0, 0, 0).expect("midnight is a time");
    // Midnight, or the earlier of two (clocks set back over it); if the clocks skip it,
    // the first minute of the day that exists, which is where the skip lands.
    (0..=24 * 60)
        .map(|m| midnight + chrono::Duration::minutes(m))
        .find_map(|local| zone.from_local_datetime(&local).earliest())
        .map(|t| t.with_timezone(&Utc))
        // No zone skips a whole day of minutes; read as the offset at UTC midnight if one did.
        .unwrap_or_else(|| {
            let offset = zone.offset_from_utc_datetime(&midnight).fix();
            (midnight - chrono::Duration::seconds(offset.local_minus_utc().into())).and_utc()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn day(s: &str) -> NaiveDate {
        NaiveDate::from_str(s).unwrap()
    }

    #[test]
    fn names_and_offsets_parse_and_read_back() {
        for (text, shown) in [
            ("UTC", "UTC"),
            ("Asia/Shanghai", "Asia/Shanghai"),
            ("asia/shanghai", "Asia/Shanghai"),
            ("America/New_York", "America/New_York"),
            ("+08:00", "+08:00"),
            ("+0800", "+08:00"),
            ("+08", "+08:00"),
            ("-05:30", "-05:30"),
            ("+00:00", "+00:00"),
            ("+14:00", "+14:00"),
        ] {
            assert_eq!(Zone::from_str(text).unwrap().to_string(), shown, "{text}");
        }
        assert_eq!(Zone::default().to_string(), "UTC");
        assert_eq!(
            Zone::from_str("-05:30").unwrap().sql_offset_seconds(),
            -(5 * 3_600 + 30 * 60)
        );
        assert_eq!(
            Zone::from_str("+08:00").unwrap().sql_offset_seconds(),
            8 * 3_600
        );
    }

    #[test]
    fn anything_else_is_refused_with_its_text() {
        for text in [
            "",
            "Mars/Olympus",
            "UTC+8",
            "+8",
            "+8:00",
            "+08:60",
            "+19:00",
            "08:00",
            "+08:00:00",
            "+0a:00",
            "Asia/",
        ] {
            let error = Zone::from_str(text).unwrap_err();
            assert_eq!(error.0, text);
            assert!(error.to_string().contains("Asia/Shanghai"), "{error}");
        }
    }

    #[test]
    fn a_day_starts_at_midnight_in_its_zone() {
        let shanghai = Zone::from_str("Asia/Shanghai").unwrap();
        let plus8 = Zone::from_str("+08:00").unwrap();
        for zone in [shanghai, plus8] {
            assert_eq!(
                zone.start_of_day(day("2026-11-27")),
                utc("2026-11-26T16:00:00Z")
            );
            assert_eq!(zone.date_of(utc("2026-11-26T16:00:00Z")), day("2026-11-27"));
            assert_eq!(
                zone.date_of(utc("2026-11-26T15:59:59.999Z")),
                day("2026-11-26")
            );
        }
        let minus = Zone::from_str("-05:30").unwrap();
        assert_eq!(
            minus.start_of_day(day("2026-11-27")),
            utc("2026-11-27T05:30:00Z")
        );
    }

    #[test]
    fn days_across_a_daylight_saving_change_last_23_or_25_hours() {
        let new_york = Zone::from_str("America/New_York").unwrap();
        let length = |d: &str| {
            let d = day(d);
            new_york.start_of_day(d.succ_opt().unwrap()) - new_york.start_of_day(d)
        };
        assert_eq!(
            new_york.start_of_day(day("2026-11-01")),
            utc("2026-11-01T04:00:00Z")
        );
        assert_eq!(
            new_york.start_of_day(day("2026-11-02")),
            utc("2026-11-02T05:00:00Z")
        );
        assert_eq!(length("2026-11-01"), chrono::Duration::hours(25));
        assert_eq!(length("2026-03-08"), chrono::Duration::hours(23));
        assert_eq!(length("2026-11-03"), chrono::Duration::hours(24));
        // Chile moves its clocks at midnight: 2026-09-06 starts at 01:00 -03.
        let santiago = Zone::from_str("America/Santiago").unwrap();
        assert_eq!(
            santiago.start_of_day(day("2026-09-06")),
            utc("2026-09-06T04:00:00Z")
        );
        assert_eq!(
            santiago.date_of(utc("2026-09-06T03:59:59Z")),
            day("2026-09-05")
        );
    }
}
