//! What the provider checks in a request's body before it answers status 0: required
//! fields, their forms, and ids it does not know.

use super::reply::Reply;
use crate::state::State;
use chrono::{DateTime, NaiveDateTime};
use rust_decimal::Decimal;
use serde_json::Value;

pub(super) fn check_postback(state: &State, body: Option<&Value>, id_field: &str) -> Reply {
    let Some(body) = body else {
        return Reply::status(-22, "Parameter exception: the body is not a JSON object");
    };
    let mut values = Vec::new();
    for field in ["appId", id_field, "number", "time"] {
        match text_field(body, field) {
            None => {
                return Reply::status(-22, &format!("Parameter exception: {field} is required"));
            }
            Some(v) if v.trim().is_empty() => {
                return Reply::status(-14, &format!("Field is empty: {field}"));
            }
            Some(v) => values.push(v),
        }
    }
    let time = &values[3];
    if time.len() != 13 || !time.bytes().all(|b| b.is_ascii_digit()) {
        return Reply::status(-22, "Parameter exception: time must be unix milliseconds");
    }
    if state.records().is_missing(state.seed, &values[1]) {
        return Reply::status(-14, "Query ID is abnormal");
    }
    Reply::status(0, "success")
}

pub(super) fn check_rate(body: Option<&Value>) -> Result<(), String> {
    let body = body.ok_or("the body is not a JSON object")?;
    let field = |f: &str| text_field(body, f).filter(|v| !v.trim().is_empty());
    let app_id = field("appId").ok_or("appId is required")?;
    if !(4..=32).contains(&app_id.chars().count()) {
        return Err("appId must be 4-32 characters".into());
    }
    let digits = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    if !field("mcc").is_some_and(|m| digits(&m)) {
        return Err("mcc is required, as digits".into());
    }
    for optional in ["backfillNumber", "backfillCardinalNumber"] {
        if field(optional).is_some_and(|v| !digits(&v)) {
            return Err(format!("{optional} must be a whole number"));
        }
    }
    let now = field("backfillNow").ok_or("backfillNow is required")?;
    let rate = plain_decimal(&now).ok_or("backfillNow is not a decimal")?;
    if rate.scale() > 2 || rate.is_sign_negative() || rate > Decimal::ONE_HUNDRED {
        return Err("backfillNow must be 0-100 with at most two decimals".into());
    }
    let at = field("callbackTime").ok_or("callbackTime is required")?;
    time_with_offset(&at).map_err(|e| format!("callbackTime: {e}"))?;
    Ok(())
}

/// A decimal written out: an optional sign, digits, and a point followed by digits
/// (`12`, `33.33`, `.5`); no exponent, no spaces, nothing after.
fn plain_decimal(text: &str) -> Option<Decimal> {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits_only = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let written_out = digits_only(whole)
        && fraction.map_or(!whole.is_empty(), |f| !f.is_empty() && digits_only(f));
    written_out
        .then(|| Decimal::from_str_exact(text).ok())
        .flatten()
}

/// An ISO 8601 date and time with its UTC offset (`2023-01-29T09:59:58+08:00`, `...Z`),
/// a space allowed for the `T`.
fn time_with_offset(text: &str) -> Result<(), &'static str> {
    let iso = text.replacen(' ', "T", 1);
    if DateTime::parse_from_rfc3339(&iso).is_ok()
        || DateTime::parse_from_str(&iso, "%Y-%m-%dT%H:%M:%S%.f%z").is_ok()
    {
        Ok(())
    } else if NaiveDateTime::parse_from_str(&iso, "%Y-%m-%dT%H:%M:%S%.f").is_ok() {
        Err("a time without a UTC offset")
    } else {
        Err("not an ISO 8601 time")
    }
}

pub(super) fn json_object(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

/// A field as text: strings as they are, numbers as their text.
pub(super) fn text_field(body: &Value, field: &str) -> Option<String> {
    match body.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_rate_is_a_plain_percentage_with_two_decimals_at_most() {
        for (text, value) in [
            ("0", "0"),
            ("33.33", "33.33"),
            ("100.00", "100.00"),
            (".5", "0.5"),
            ("+7", "7"),
        ] {
            let read = plain_decimal(text).map(|d| d.to_string());
            assert_eq!(read.as_deref(), Some(value), "{text}");
        }
        for bad in [
            "", "1e5", "1.", ".", " 1", "1 ", "abc", "+-1", "0x10", "1.2.3",
        ] {
            assert_eq!(plain_decimal(bad), None, "{bad:?}");
        }
        let body = |now: &str, at: &str| json!({"appId": "abcd", "mcc": "460", "backfillNow": now, "callbackTime": at});
        let at = "2023-01-29T09:59:58+08:00";
        assert_eq!(check_rate(Some(&body("33.33", at))), Ok(()));
        for rejected in ["100.01", "-1", "1.234"] {
            assert!(check_rate(Some(&body(rejected, at))).is_err(), "{rejected}");
        }
    }

    #[test]
    fn a_callback_time_needs_its_offset() {
        for ok in [
            "2023-01-29T09:59:58+08:00",
            "2023-01-29T01:59:58Z",
            "2023-01-29 09:59:58+08:00",
            "2023-01-29T09:59:58.250+05:30",
        ] {
            assert_eq!(time_with_offset(ok), Ok(()), "{ok}");
        }
        assert_eq!(
            time_with_offset("2023-01-29T09:59:58"),
            Err("a time without a UTC offset")
        );
        assert_eq!(time_with_offset("yesterday"), Err("not an ISO 8601 time"));
    }
}
