//! The cells whose text the export writes otherwise than PostgreSQL, rewritten from
//! PostgreSQL's CSV without being unquoted.
//!
//! PostgreSQL quotes a CSV cell exactly when the export's writer always did (when it
//! holds a comma, a quote, CR or LF; quotes doubled), with one exception: an empty
//! string, which it writes `""` to tell it from NULL, and the export writes as nothing.
//! So:
//!
//! - text gets `'` in front of a leading `=`, `+`, `-`, `@`, tab or CR (inside the
//!   quotes when quoted; the `'` never calls for quotes), and `""` becomes empty;
//! - a time, `2026-11-01 08:00:00.25+00` (the transaction is in UTC), becomes
//!   `2026-11-01T08:00:00.250Z`: RFC 3339 with as many decimals as needed of 0, 3 or 6;
//! - numbers, money and dates are PostgreSQL's text, as they were (not here).

use chrono::{DateTime, SecondsFormat, Utc};
use std::borrow::Cow;

/// What a text cell's first character must not be, lest a spreadsheet run it.
const FORMULA_STARTS: &[u8] = b"=+-@\t\r";

/// A text cell as CSV, neutralized against spreadsheet formulas; `""` (an empty string)
/// as nothing, like NULL.
pub(super) fn text_cell(raw: &[u8], out: &mut Vec<u8>) {
    match raw {
        [] | [b'"', b'"'] => {}
        [b'"', first, rest @ ..] if FORMULA_STARTS.contains(first) => {
            out.extend_from_slice(b"\"'");
            out.push(*first);
            out.extend_from_slice(rest);
        }
        [first, ..] if FORMULA_STARTS.contains(first) => {
            out.push(b'\'');
            out.extend_from_slice(raw);
        }
        _ => out.extend_from_slice(raw),
    }
}

/// Whether [`text_cell`] writes `raw` otherwise: a formula's start, or `""`.
pub(super) fn text_is_rewritten(raw: &[u8]) -> bool {
    match raw {
        [b'"', b'"'] => true,
        [b'"', first, ..] | [first, ..] => FORMULA_STARTS.contains(first),
        [] => false,
    }
}

/// A cell's text, its CSV quotes removed.
pub(super) fn unquote(raw: &str) -> Cow<'_, str> {
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => Cow::Owned(inner.replace("\"\"", "\"")),
        None => Cow::Borrowed(raw),
    }
}

/// A `timestamptz` as PostgreSQL writes it in UTC with ISO dates, as RFC 3339 in UTC
/// with 0, 3 or 6 decimals (chrono's `AutoSi`); none if it is not such a time.
pub(super) fn time_cell(raw: &[u8], out: &mut Vec<u8>) -> Option<()> {
    if raw.is_empty() {
        return Some(());
    }
    // `YYYY-MM-DD HH:MM:SS`, up to six decimals without trailing zeros, `+00`.
    let n = raw.len();
    let plain = n >= 22
        && raw[4] == b'-'
        && raw[7] == b'-'
        && raw[10] == b' '
        && raw[13] == b':'
        && raw[16] == b':'
        && raw.ends_with(b"+00");
    let decimals = match plain.then(|| &raw[19..n - 3]) {
        Some([]) => Some(0),
        Some([b'.', digits @ ..])
            if (1..=6).contains(&digits.len()) && digits.iter().all(u8::is_ascii_digit) =>
        {
            Some(digits.len())
        }
        _ => None,
    };
    match decimals {
        Some(decimals) => {
            out.extend_from_slice(&raw[..10]);
            out.push(b'T');
            out.extend_from_slice(&raw[11..n - 3]);
            let width = match decimals {
                0 => 0,
                1..=3 => 3,
                _ => 6,
            };
            out.resize(out.len() + width - decimals, b'0');
            out.push(b'Z');
        }
        // Another form PostgreSQL may write (a year past 9999): read it, as a time.
        _ => {
            let text = std::str::from_utf8(raw).ok()?;
            let time = DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z").ok()?;
            let utc = time.with_timezone(&Utc);
            out.extend_from_slice(utc.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(raw: &str) -> String {
        let mut out = Vec::new();
        text_cell(raw.as_bytes(), &mut out);
        String::from_utf8(out).unwrap()
    }

    fn time(raw: &str) -> Option<String> {
        let mut out = Vec::new();
        time_cell(raw.as_bytes(), &mut out)?;
        Some(String::from_utf8(out).unwrap())
    }

    #[test]
    fn formulas_are_neutralized_in_text_cells() {
        for (cell, out) in [
            ("=SUM(A1)", "'=SUM(A1)"),
            ("+1", "'+1"),
            ("-2", "'-2"),
            ("@cmd", "'@cmd"),
            ("\tx", "'\tx"),
            ("\"\rx\"", "\"'\rx\""),
            ("\"=a,b\"", "\"'=a,b\""),
            ("\"\"\"=\"", "\"\"\"=\""),
            ("plain", "plain"),
            ("'USD", "'USD"),
            ("\"\"", ""),
            ("", ""),
        ] {
            assert_eq!(text(cell), out, "{cell:?}");
            assert_eq!(
                text_is_rewritten(cell.as_bytes()),
                text(cell) != cell,
                "{cell:?}"
            );
        }
    }

    #[test]
    fn times_are_rfc_3339_in_utc_with_0_3_or_6_decimals() {
        for (cell, out) in [
            ("2026-11-01 08:00:00+00", "2026-11-01T08:00:00Z"),
            ("2026-11-01 08:00:00.5+00", "2026-11-01T08:00:00.500Z"),
            ("2026-11-01 08:00:00.12+00", "2026-11-01T08:00:00.120Z"),
            ("2026-11-01 08:00:00.999+00", "2026-11-01T08:00:00.999Z"),
            ("2026-11-01 08:00:00.0001+00", "2026-11-01T08:00:00.000100Z"),
            (
                "2026-11-01 08:00:00.123456+00",
                "2026-11-01T08:00:00.123456Z",
            ),
            (
                "2026-11-01 08:00:00.000001+00",
                "2026-11-01T08:00:00.000001Z",
            ),
            // Not in UTC: read with its offset.
            ("2026-11-01 08:00:00.25+08", "2026-11-01T00:00:00.250Z"),
            ("", ""),
        ] {
            assert_eq!(time(cell).as_deref(), Some(out), "{cell:?}");
        }
        for cell in ["infinity", "2026-11-01 08:00:00+00 BC", "yesterday"] {
            assert_eq!(time(cell), None, "{cell:?}");
        }
    }

    #[test]
    fn quotes_are_removed_from_a_cell() {
        assert_eq!(unquote("\"a,\"\"b\"\"\""), "a,\"b\"");
        assert_eq!(unquote("USD"), "USD");
        assert_eq!(unquote(""), "");
    }
}
