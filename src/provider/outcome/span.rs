//! Where the text of a value of the answer's top-level object is, found from the keys
//! around it: a record keeps the provider's exact text of `data`, and finding it this
//! way costs no second reading of the answer.
//!
//! A key without escapes is borrowed from the answer, so its place in the text is
//! known. Between the end of a key and the start of the next one (or the object's
//! closing brace) there is only `":"`, the value, `","` and whitespace: trimmed of
//! those, what is left is the value's text, as serde_json's `RawValue` takes it. When a
//! key around the value was escaped (not borrowed), or anything is not where it must be,
//! there is no answer here and the caller reads the text the way it did before.

use crate::record::json::Json;
use std::borrow::Cow;

/// The text of `entries[i]`'s value in `body`, the JSON text whose top-level object
/// `entries` were read from (whole: a syntax error would have stopped the reading).
pub(super) fn value_text<'a>(
    body: &'a [u8],
    entries: &[(Cow<'a, str>, Json<'a>)],
    i: usize,
) -> Option<&'a str> {
    let (Cow::Borrowed(key), value) = entries.get(i)? else {
        return None;
    };
    let after_key = body.get(offset_in(body, key)? + key.len()..)?;
    let after_colon = trim_start(trim_start(after_key.strip_prefix(b"\"")?).strip_prefix(b":")?);
    let start = body.len() - after_colon.len();
    let end = match entries.get(i + 1) {
        Some((Cow::Owned(_), _)) => return None,
        Some((Cow::Borrowed(next), _)) => {
            let before_next = body.get(..offset_in(body, next)?)?.strip_suffix(b"\"")?;
            trim_end(trim_end(before_next).strip_suffix(b",")?).len()
        }
        None => trim_end(trim_end(body).strip_suffix(b"}")?).len(),
    };
    let text = std::str::from_utf8(body.get(start..end)?).ok()?;
    looks_like(value, text).then_some(text)
}

/// Where `key` starts in `body`, when it is a slice of it.
fn offset_in(body: &[u8], key: &str) -> Option<usize> {
    let offset = (key.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    (offset.checked_add(key.len())? <= body.len()).then_some(offset)
}

/// A last check that the text found is the value's: it starts and ends as the value's
/// kind does.
fn looks_like(value: &Json, text: &str) -> bool {
    let (first, last) = match text.as_bytes() {
        [] => return false,
        [only] => (*only, *only),
        [first, .., last] => (*first, *last),
    };
    match value {
        Json::Null => text == "null",
        Json::Bool(b) => text == if *b { "true" } else { "false" },
        Json::Number(_) => (first == b'-' || first.is_ascii_digit()) && last.is_ascii_digit(),
        Json::String(_) => text.len() >= 2 && first == b'"' && last == b'"',
        Json::Array(_) => first == b'[' && last == b']',
        Json::Object(_) => first == b'{' && last == b'}',
    }
}

/// JSON's whitespace, as serde_json skips it between tokens.
fn is_space(b: &u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\t' | b'\r')
}

fn trim_start(text: &[u8]) -> &[u8] {
    let n = text.iter().take_while(|b| is_space(b)).count();
    &text[n..]
}

fn trim_end(text: &[u8]) -> &[u8] {
    let n = text.iter().rev().take_while(|b| is_space(b)).count();
    &text[..text.len() - n]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::shape::{self, Limits};
    use serde_json::value::RawValue;

    /// The text of `key`'s value as found here, and as serde_json's `RawValue` takes it.
    fn both(text: &str, key: &str) -> (Option<String>, String) {
        let Json::Object(entries) = shape::read(text.as_bytes(), Limits::default()).unwrap() else {
            panic!("an object: {text}")
        };
        let i = entries.iter().position(|(k, _)| k == key).unwrap();
        let ours = value_text(text.as_bytes(), &entries, i).map(str::to_owned);
        let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).unwrap();
        assert!(map.contains_key(key));
        #[derive(serde::Deserialize)]
        struct Raw<'a> {
            #[serde(borrow)]
            v: &'a RawValue,
        }
        let renamed = text.replacen(&format!("\"{key}\""), "\"v\"", 1);
        let raw: Raw = serde_json::from_str(&renamed).unwrap();
        (ours, raw.v.get().to_owned())
    }

    #[test]
    fn finds_the_exact_text_between_the_keys_around_it() {
        for (text, key) in [
            (r#"{"status":"0","data":{"a":1},"reason":"x"}"#, "data"),
            (r#"{"status":"0","reason":"x","data":{"a":1}}"#, "data"),
            (r#"{"status":"0","data":{"a":1},"reason":"x"}"#, "status"),
            (r#"{"status":"0","data":{"a":1},"reason":"x" }"#, "reason"),
            (r#"{"data":{"a":1}}"#, "data"),
            (r#"{"data":[1,{"b":"}"}],"x":0}"#, "data"),
            (r#"{"data":"a,\"b\"","x":0}"#, "data"),
            (r#"{"data":-1.50e+3,"x":0}"#, "data"),
            (r#"{"data":true}"#, "data"),
            (r#"{"data":null,"x":0}"#, "data"),
            (
                " \r\n{ \"status\" : \"0\" ,\n\t\"data\"\n:\t{ \"a\" : [ 1 , 2 ] }\r\n , \"z\" : 1 } \n",
                "data",
            ),
            (" {\"data\" : { \"a\" : 1 }\n}\t", "data"),
            (r#"{"data":{"k\u0061":"\u00e9\n"},"x":0}"#, "data"),
            ("{\"data\":{\"k\":\"é ü 日本\"},\"x\":0}", "data"),
        ] {
            let (ours, theirs) = both(text, key);
            assert_eq!(ours.as_deref(), Some(theirs.as_str()), "{text:?}");
        }
    }

    #[test]
    fn finds_nothing_when_a_key_around_it_is_escaped() {
        for text in [
            r#"{"d\u0061ta":{"a":1},"x":0}"#,
            r#"{"data":{"a":1},"\u0078":0}"#,
            r#"{"status":"0","data":{"a":1},"re\nason":"x"}"#,
        ] {
            let Json::Object(entries) = shape::read(text.as_bytes(), Limits::default()).unwrap()
            else {
                panic!("an object")
            };
            let i = entries.iter().position(|(k, _)| k == "data").unwrap();
            assert_eq!(value_text(text.as_bytes(), &entries, i), None, "{text}");
        }
    }

    #[test]
    fn finds_nothing_for_keys_not_borrowed_from_the_text() {
        let text = r#"{"data":{"a":1},"x":0}"#;
        let Json::Object(entries) = shape::read(text.as_bytes(), Limits::default()).unwrap() else {
            panic!("an object")
        };
        // The same keys, read from another copy of the text.
        let copy = text.to_owned();
        assert_eq!(value_text(copy.as_bytes(), &entries, 0), None);
        assert_eq!(value_text(text.as_bytes(), &entries, 2), None);
        // A text that is not the one the entries were read from.
        let mut other = entries.clone();
        other[0].1 = Json::Array(Vec::new());
        assert_eq!(value_text(text.as_bytes(), &other, 0), None);
    }

    #[test]
    fn a_value_s_text_must_look_like_the_value() {
        assert!(looks_like(&Json::Number("1".into()), "1"));
        assert!(!looks_like(&Json::Number("1".into()), "\"1\""));
        assert!(looks_like(&Json::String("".into()), "\"\""));
        assert!(!looks_like(&Json::String("".into()), "\""));
        assert!(!looks_like(&Json::Bool(true), "false"));
        assert!(!looks_like(&Json::Object(Vec::new()), ""));
    }
}
