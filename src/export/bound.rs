//! `--from`/`--to`: a day, `today`, `yesterday`, or an instant, read in the export's zone.

use crate::zone::Zone;
use chrono::{DateTime, NaiveDate, Utc};
use std::str::FromStr;

/// `--from`/`--to` as given: a day, `today`, `yesterday`, or an instant. A day becomes
/// an instant only with the zone it is read in ([`Bound::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Day(NaiveDate),
    Today,
    Yesterday,
    Instant(DateTime<Utc>),
}

impl Bound {
    /// The instant: a day's first instant in `zone` (`today` and `yesterday` are days in
    /// `zone` at `now`); a time with an explicit offset keeps its own.
    pub fn resolve(self, zone: &Zone, now: DateTime<Utc>) -> DateTime<Utc> {
        let today = zone.date_of(now);
        let day = match self {
            Bound::Instant(t) => return t,
            Bound::Day(day) => day,
            Bound::Today => today,
            Bound::Yesterday => today.pred_opt().unwrap_or(today),
        };
        zone.start_of_day(day)
    }
}

/// Parses `--from`/`--to`: a date (`2026-11-01`, its midnight), `today` or `yesterday`
/// (for a scheduled export), or an RFC 3339 time with its offset.
pub fn parse_bound(s: &str) -> Result<Bound, String> {
    match s.trim() {
        "today" => return Ok(Bound::Today),
        "yesterday" => return Ok(Bound::Yesterday),
        other => {
            if let Ok(day) = NaiveDate::from_str(other) {
                return Ok(Bound::Day(day));
            }
        }
    }
    crate::record::parse_time(s.trim())
        .map(Bound::Instant)
        .map_err(|e| format!("{s:?}: expected a date like 2026-11-01 or an RFC 3339 time ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_dates_or_times_in_utc() {
        let utc = Zone::default();
        let now = Utc::now();
        let read = |s: &str| parse_bound(s).unwrap().resolve(&utc, now);
        assert_eq!(read("2026-11-01").to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(
            read("2026-11-01T08:00:00+08:00").to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert!(parse_bound("last week").is_err());
        let today = read("today");
        assert_eq!(
            today,
            now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc()
        );
        assert_eq!(read("yesterday"), today - chrono::Duration::days(1));
    }

    #[test]
    fn bounds_are_read_in_the_zone_unless_they_carry_an_offset() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let plus8: Zone = "+08:00".parse().unwrap();
        let shanghai: Zone = "Asia/Shanghai".parse().unwrap();
        let new_york: Zone = "America/New_York".parse().unwrap();
        // 17:00Z on the 26th is already the 27th at +08:00, and still the 26th in New York.
        let now = at("2026-11-26T17:00:00Z");
        let read = |s: &str, zone: &Zone| parse_bound(s).unwrap().resolve(zone, now);
        for zone in [&plus8, &shanghai] {
            assert_eq!(read("2026-11-27", zone), at("2026-11-26T16:00:00Z"));
            assert_eq!(read("today", zone), at("2026-11-26T16:00:00Z"));
            assert_eq!(read("yesterday", zone), at("2026-11-25T16:00:00Z"));
            assert_eq!(
                read("2026-11-27T08:00:00Z", zone),
                at("2026-11-27T08:00:00Z")
            );
            assert_eq!(
                read("2026-11-27T08:00:00-05:00", zone),
                at("2026-11-27T13:00:00Z")
            );
        }
        assert_eq!(read("today", &new_york), at("2026-11-26T05:00:00Z"));
        assert_eq!(read("yesterday", &new_york), at("2026-11-25T05:00:00Z"));
        // Across the change from daylight saving time: midnight is -04:00, then -05:00.
        assert_eq!(read("2026-11-01", &new_york), at("2026-11-01T04:00:00Z"));
        assert_eq!(read("2026-11-02", &new_york), at("2026-11-02T05:00:00Z"));
    }
}
