//! The checks every kind of line shares: ids, numbers, apps, times.

use super::Columns;
use crate::record::parse_time;
use chrono::{DateTime, Utc};
use csv::StringRecord;
use std::collections::HashSet;

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id: printable ASCII without spaces, at most [`MAX_ID_LEN`] characters.
pub fn check_id(column: &str, id: &str) -> Result<(), String> {
    let len = id.chars().count();
    if len > MAX_ID_LEN {
        return Err(format!(
            "{column} is {len} characters long (at most {MAX_ID_LEN})"
        ));
    }
    if id.chars().any(char::is_whitespace) {
        return Err(format!("{column} {id:?} contains a space"));
    }
    if !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{column} {id:?} has characters other than printable ASCII"
        ));
    }
    Ok(())
}

/// A phone number: digits, an optional leading `+`, 5 to 20 digits.
pub fn check_number(number: &str) -> Result<(), String> {
    let digits = number.strip_prefix('+').unwrap_or(number);
    if (5..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "number {number:?} is not a phone number (5-20 digits)"
        ))
    }
}

/// The app id of a line, which must be registered.
pub(super) fn known_app<'r>(
    columns: &Columns,
    record: &'r StringRecord,
    known: &HashSet<String>,
) -> Result<&'r str, String> {
    let app_id = columns.get(record, "app_id").ok_or("app_id is empty")?;
    if known.contains(app_id) {
        Ok(app_id)
    } else if crate::db::apps::valid_app_id(app_id) {
        Err(format!(
            "unknown app_id {app_id:?} (register it with `otp-reconcile app add {app_id}`)"
        ))
    } else {
        Err(format!(
            "app_id \"{}\" is not an app id (4-32 letters, digits, - or _)",
            crate::text::escape(app_id)
        ))
    }
}

/// An RFC 3339 time with an offset, in `column`.
pub(super) fn time_in(
    columns: &Columns,
    record: &StringRecord,
    column: &str,
) -> Result<DateTime<Utc>, String> {
    let text = columns
        .get(record, column)
        .ok_or_else(|| format!("{column} is empty"))?;
    parse_time(text).map_err(|e| format!("{column} {text:?}: {e}"))
}
