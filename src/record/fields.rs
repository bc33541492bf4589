//! Tolerant readers for one JSON field each. The provider sends numbers as strings and
//! strings as numbers, `null` or `""` for "nothing", and times with offsets; every
//! reader here accepts all of those and answers a [`RecordError`] naming the field for
//! anything else. None of them panics, whatever the value.

use super::RecordError;
use super::json::Json;
use chrono::{DateTime, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use std::borrow::Cow;

/// One JSON object and the path it sits at (`data.sms[1]`), for error messages.
pub(crate) struct Fields<'a> {
    obj: &'a [(Cow<'a, str>, Json<'a>)],
    path: String,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(obj: &'a [(Cow<'a, str>, Json<'a>)], path: impl Into<String>) -> Self {
        Self {
            obj,
            path: path.into(),
        }
    }

    /// The full path of `key`, as errors name it.
    pub(crate) fn path_of(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_owned()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn error(&self, key: &str, problem: impl Into<String>) -> RecordError {
        RecordError::new(self.path_of(key), problem)
    }

    /// The raw value of `key`, `None` when absent, `null` or a blank string.
    pub(crate) fn present(&self, key: &str) -> Option<&'a Json<'a>> {
        match Json::get(self.obj, key)? {
            Json::Null => None,
            Json::String(s) if s.trim().is_empty() => None,
            v => Some(v),
        }
    }

    /// An integer, from a JSON integer, an integral decimal (`460.0`) or a string of one.
    pub(crate) fn int(&self, key: &str) -> Result<Option<i64>, RecordError> {
        let Some(value) = self.present(key) else {
            return Ok(None);
        };
        let text = match value {
            Json::Number(n) => n,
            Json::String(s) => s.trim(),
            other => {
                return Err(self.error(key, format!("expected an integer, got {}", other.kind())));
            }
        };
        parse_int(text)
            .map(Some)
            .ok_or_else(|| self.error(key, format!("not an integer: {}", shown(text))))
    }

    /// An exact decimal, from a JSON number (its exact text) or a string of one.
    /// Exponents (`1e5`), `NaN`, thousands separators and more than 28 significant
    /// digits are refused: money is never guessed.
    pub(crate) fn decimal(&self, key: &str) -> Result<Option<Decimal>, RecordError> {
        let Some(value) = self.present(key) else {
            return Ok(None);
        };
        let text = match value {
            Json::Number(n) => n,
            Json::String(s) => s.trim(),
            other => {
                return Err(self.error(key, format!("expected a decimal, got {}", other.kind())));
            }
        };
        parse_decimal(text)
            .map(Some)
            .ok_or_else(|| self.error(key, format!("not an exact decimal: {}", shown(text))))
    }

    /// Text, from a string or a number (its text). Blank is `None`.
    pub(crate) fn text(&self, key: &str) -> Result<Option<String>, RecordError> {
        Ok(self.text_ref(key)?.map(str::to_owned))
    }

    /// The same, borrowed from the answer.
    pub(crate) fn text_ref(&self, key: &str) -> Result<Option<&'a str>, RecordError> {
        match self.present(key) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(Json::Number(n)) => Ok(Some(n)),
            Some(other) => Err(self.error(key, format!("expected text, got {}", other.kind()))),
        }
    }

    /// An instant: ISO 8601 / RFC 3339 with an offset, kept as UTC. A time without an
    /// offset is refused: the provider's zone is not ours to guess.
    pub(crate) fn time(&self, key: &str) -> Result<Option<DateTime<Utc>>, RecordError> {
        match self.present(key) {
            None => Ok(None),
            Some(Json::String(s)) => parse_time(s.trim())
                .map(Some)
                .map_err(|problem| self.error(key, format!("{problem}: {}", shown(s)))),
            Some(other) => Err(self.error(key, format!("expected a time, got {}", other.kind()))),
        }
    }

    /// A nested object, `None` when absent or null.
    pub(crate) fn object(&self, key: &str) -> Result<Option<Fields<'a>>, RecordError> {
        match Json::get(self.obj, key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::Object(o)) => Ok(Some(Fields::new(o, self.path_of(key)))),
            Some(other) => {
                Err(self.error(key, format!("expected an object, got {}", other.kind())))
            }
        }
    }

    /// A list of objects that may arrive as one object, an array, or null.
    /// `null` elements inside an array are skipped.
    pub(crate) fn objects(&self, key: &str) -> Result<Vec<Fields<'a>>, RecordError> {
        match Json::get(self.obj, key) {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Object(o)) => Ok(vec![Fields::new(o, self.path_of(key))]),
            Some(Json::Array(items)) => items
                .iter()
                .enumerate()
                .filter(|(_, v)| **v != Json::Null)
                .map(|(i, v)| match v {
                    Json::Object(o) => Ok(Fields::new(o, format!("{}[{i}]", self.path_of(key)))),
                    other => Err(RecordError::new(
                        format!("{}[{i}]", self.path_of(key)),
                        format!("expected an object, got {}", other.kind()),
                    )),
                })
                .collect(),
            Some(other) => Err(self.error(
                key,
                format!("expected an object, an array or null, got {}", other.kind()),
            )),
        }
    }
}

/// An integer in plain notation, or an integral decimal such as `460.0`.
pub fn parse_int(text: &str) -> Option<i64> {
    if let Ok(i) = text.parse::<i64>() {
        return Some(i);
    }
    let d = parse_decimal(text)?;
    if d.fract().is_zero() {
        i64::try_from(d.trunc()).ok()
    } else {
        None
    }
}

/// A decimal in plain notation (`-12.3400`), exactly as written: the scale is kept,
/// nothing is rounded. `None` for anything else.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let well_formed = match frac {
        None => plain(int),
        Some(f) => (plain(int) || int.is_empty()) && plain(f),
    };
    if !well_formed {
        return None;
    }
    Decimal::from_str_exact(text).ok()
}

/// RFC 3339 (`2022-07-12T13:39:45+08:00`, `...Z`), or the same with a space for `T`.
pub fn parse_time(text: &str) -> Result<DateTime<Utc>, &'static str> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%z"] {
        if let Ok(t) = DateTime::parse_from_str(text, format) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    let naive = ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .any(|f| NaiveDateTime::parse_from_str(text, f).is_ok());
    if naive {
        Err("a time without a UTC offset")
    } else {
        Err("not an ISO 8601 time")
    }
}

/// A value as an error shows it: quoted, and cut to a readable length.
fn shown(text: &str) -> String {
    const MAX: usize = 40;
    if text.chars().count() <= MAX {
        format!("{text:?}")
    } else {
        let cut: String = text.chars().take(MAX).collect();
        format!("{cut:?}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_scale_and_refuse_what_is_not_plain() {
        assert_eq!(parse_decimal("0.000002").unwrap().to_string(), "0.000002");
        assert_eq!(parse_decimal("1.50").unwrap().to_string(), "1.50");
        assert_eq!(parse_decimal("-3").unwrap().to_string(), "-3");
        assert_eq!(parse_decimal(".5").unwrap().to_string(), "0.5");
        for bad in [
            "1e5",
            "abc",
            "",
            "-",
            ".",
            "1.",
            "1,5",
            "NaN",
            "inf",
            " 1",
            "0x10",
            "1.2.3",
            "12345678901234567890123456789012345",
        ] {
            assert_eq!(parse_decimal(bad), None, "{bad:?} must be refused");
        }
    }

    #[test]
    fn integers_accept_integral_decimals_only() {
        assert_eq!(parse_int("460"), Some(460));
        assert_eq!(parse_int("-1"), Some(-1));
        assert_eq!(parse_int("460.0"), Some(460));
        assert_eq!(parse_int("460.5"), None);
        assert_eq!(parse_int("99999999999999999999"), None);
    }

    #[test]
    fn times_need_an_offset() {
        let t = parse_time("2022-07-12T13:39:45+08:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2022-07-12T05:39:45+00:00");
        assert_eq!(
            parse_time("2022-07-12 13:39:45+08:00").unwrap(),
            parse_time("2022-07-12T05:39:45Z").unwrap()
        );
        assert_eq!(
            parse_time("2022-07-12T13:39:45"),
            Err("a time without a UTC offset")
        );
        assert_eq!(parse_time("yesterday"), Err("not an ISO 8601 time"));
    }
}
