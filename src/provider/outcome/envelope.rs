//! The JSON envelope every answer carries, `{"status", "reason", "data"}`: read from the
//! answer's tree, built in the one reading of its text ([`from_tree`]), or, when that
//! tree cannot give exactly what the text gave before, from the text the lenient way
//! ([`from_text`]).

use super::span;
use super::{Failure, Transient};
use crate::record::json::Json;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// The JSON envelope every answer carries, borrowing from the answer.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    pub status: String,
    pub reason: String,
    /// `data`; `None` when absent or null.
    pub(crate) data: Option<Data<'a>>,
}

/// An answer's `data`.
#[derive(Debug, Clone)]
pub(crate) enum Data<'a> {
    /// Read with the answer: its tree, and its text exactly as the provider wrote it.
    Read { tree: Json<'a>, text: &'a str },
    /// Its text only, exactly as the provider wrote it: the answer was read the lenient
    /// way, and `data` is read from this text.
    Text(Box<RawValue>),
}

/// The envelope as the lenient reading takes it: only its three fields, `data` left as
/// text.
#[derive(Deserialize)]
struct Wire {
    status: Option<Value>,
    reason: Option<Value>,
    data: Option<Box<RawValue>>,
}

fn malformed(why: &str) -> Failure {
    Failure::Retry {
        cause: Transient::Malformed(why.into()),
        after: None,
    }
}

/// Reads the envelope from the tree of `body`. The status may be a string or a number.
///
/// What the tree cannot give as the text gave it before is read from the text
/// instead: a `reason` that is not a string (kept as `Value` writes it), and a `data`
/// whose text is not found between the keys around it (an escaped key).
pub(super) fn from_tree<'a>(body: &'a [u8], tree: Json<'a>) -> Result<Envelope<'a>, Failure> {
    // Unlike the lenient reading, which took `[status, reason, data]` as an envelope.
    let Json::Object(mut entries) = tree else {
        return Err(malformed("not a JSON object"));
    };
    // Duplicate keys were refused: each is there once at most.
    let at = |key: &str| entries.iter().position(|(k, _)| k == key);
    let status = match at("status").map(|i| &entries[i].1) {
        Some(Json::String(s)) if is_code(s.trim()) => s.trim().to_owned(),
        Some(Json::Number(n)) if is_code(n) => n.to_string(),
        _ => return Err(malformed("no integer `status`")),
    };
    let reason = match at("reason").map(|i| &entries[i].1) {
        Some(Json::String(s)) => without_nul(s),
        Some(Json::Null) | None => String::new(),
        Some(_) => return from_text(body),
    };
    let data = match at("data") {
        Some(i) if !matches!(entries[i].1, Json::Null) => {
            let Some(text) = span::value_text(body, &entries, i) else {
                return from_text(body);
            };
            let tree = std::mem::replace(&mut entries[i].1, Json::Null);
            Some(Data::Read { tree, text })
        }
        _ => None,
    };
    Ok(Envelope {
        status,
        reason,
        data,
    })
}

/// Reads the envelope from the text, the lenient way: for an answer that is not one
/// JSON value as the tree is read (its error message is serde_json's, as before), and
/// where the tree cannot give what the text gives.
pub(super) fn from_text(body: &[u8]) -> Result<Envelope<'_>, Failure> {
    let wire: Wire = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            malformed("not a JSON object")
        } else {
            malformed(&format!("not JSON ({e})"))
        }
    })?;
    let status = match &wire.status {
        Some(Value::String(s)) if is_code(s.trim()) => s.trim().to_owned(),
        Some(Value::Number(n)) if is_code(&n.to_string()) => n.to_string(),
        _ => return Err(malformed("no integer `status`")),
    };
    let reason = match wire.reason {
        Some(Value::String(s)) => without_nul(&s),
        Some(Value::Null) | None => String::new(),
        Some(other) => without_nul(&other.to_string()),
    };
    Ok(Envelope {
        status,
        reason,
        data: wire
            .data
            .filter(|d| d.get().trim() != "null")
            .map(Data::Text),
    })
}

/// The reason is kept in the database: a NUL would fail the write.
fn without_nul(reason: &str) -> String {
    reason.replace('\0', "\u{fffd}")
}

fn is_code(s: &str) -> bool {
    s.parse::<i64>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::shape::{self, Limits, Unread};
    use proptest::prelude::*;

    /// What an envelope says: status, reason, `data`'s text, and whether `data` was read
    /// with the answer.
    type Said = (String, String, Option<String>, bool);

    fn said(envelope: Result<Envelope, Failure>) -> Result<Said, Failure> {
        let envelope = envelope?;
        let (text, read) = match &envelope.data {
            None => (None, false),
            Some(Data::Read { tree, text }) => {
                // The tree is the one the text reads into.
                assert_eq!(Json::parse(text).ok().as_ref(), Some(tree), "{text}");
                (Some(text.to_string()), true)
            }
            Some(Data::Text(text)) => (Some(text.get().to_owned()), false),
        };
        Ok((envelope.status, envelope.reason, text, read))
    }

    /// The envelope as classify reads it now.
    fn now(body: &str) -> Result<Said, Failure> {
        said(match shape::read(body.as_bytes(), Limits::default()) {
            Ok(tree) => from_tree(body.as_bytes(), tree),
            Err(Unread::NotJson) => from_text(body.as_bytes()),
            Err(Unread::Refused(refused)) => panic!("{refused}: {body}"),
        })
    }

    /// The envelope as it was read before, from the text alone.
    fn before(body: &str) -> Result<Said, Failure> {
        said(from_text(body.as_bytes()))
    }

    /// The same as before, and `data` read with the answer (or not).
    fn same(body: &str, in_one_pass: bool) {
        let now = now(body);
        let before = before(body).map(|(s, r, d, _)| {
            let read = in_one_pass && d.is_some();
            (s, r, d, read)
        });
        assert_eq!(now, before, "{body}");
    }

    #[test]
    fn the_provider_s_pages_and_quirks_read_as_before_in_one_pass() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let mut read = 0;
        for sub in ["provider-pages", "quirks"] {
            for entry in std::fs::read_dir(format!("{dir}/{sub}")).unwrap() {
                let path = entry.unwrap().path();
                let body = std::fs::read_to_string(&path).unwrap();
                if path.to_string_lossy().ends_with(".request.json") {
                    continue;
                }
                same(&body, true);
                read += 1;
            }
        }
        assert!(read >= 20, "{read} fixtures");
    }

    #[test]
    fn reads_as_before() {
        for body in [
            r#"{"status":"0","reason":"success","data":{"a":[1,2.50,"x"]}}"#,
            r#"{"data":{"a":1},"status":0}"#,
            " {\n \"status\" : \"-22\" ,\t\"data\" :\r\n [ 1 , { } ] ,\"x\":{\"y\":null} }\n",
            r#"{"status":" 7 ","reason":null,"data":null}"#,
            r#"{"status":"0","reason":"a\u0000b\nc","data":"text \"quoted\""}"#,
            r#"{"status":"0","data":-0.0}"#,
            r#"{"status":"0","data":{},"extra":[]}"#,
        ] {
            same(body, true);
        }
        for body in [
            r#"{"status":"x","data":{}}"#,
            r#"{"status":1.5,"data":{}}"#,
            r#"{"status":null}"#,
            r#"{"reason":"no status"}"#,
            "5",
            r#""status""#,
            "null",
            "[]",
            "[1]",
            "",
            "<html>",
            r#"{"status":"0","da"#,
            r#"{"status":"0"} x"#,
        ] {
            assert!(now(body).is_err(), "{body}");
            same(body, true);
        }
    }

    #[test]
    fn reads_from_the_text_what_the_tree_cannot_give_as_before() {
        for body in [
            // `data`'s text is not found between escaped keys.
            r#"{"status":"0","d\u0061ta":{"a":1}}"#,
            r#"{"status":"0","data":{"a":1},"\u0078":0}"#,
            // A reason that is not a string is kept as `Value` writes it.
            r#"{"status":"-22","reason":{"why" : [1, 2.50]},"data":{"a":1}}"#,
            r#"{"status":"-22","reason":12.50}"#,
            // Text that serde_json reads leniently beside `data`: invalid UTF-8 in
            // an unknown field is skipped, a lone surrogate in `data` left to the record.
            "{\"status\":\"0\",\"x\":\"\u{fffd}\",\"data\":{\"a\":\"\\ud800\"}}",
        ] {
            same(body, false);
        }
        let invalid_utf8 = b"{\"status\":\"0\",\"x\":\"\xff\",\"data\":{\"a\":1}}";
        let read = match shape::read(invalid_utf8, Limits::default()) {
            Ok(_) => panic!("not read in one pass"),
            Err(_) => from_text(invalid_utf8),
        };
        assert_eq!(said(read).unwrap().2.as_deref(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn a_top_level_array_is_not_a_json_object() {
        // The lenient reading took a list of three as `[status, reason, data]`, and
        // said of a longer one that it was not JSON.
        let body = r#"["0","reason",{"a":1}]"#;
        assert!(before(body).is_ok());
        assert_eq!(now(body), Err(malformed("not a JSON object")));
        let body = "[1,2,3,4]";
        assert_eq!(
            before(body),
            Err(malformed(
                "not JSON (trailing characters at line 1 column 8)"
            ))
        );
        assert_eq!(now(body), Err(malformed("not a JSON object")));
    }

    /// An envelope's keys in any order, some escaped, with whitespace around tokens; and
    /// whether `data` can be read with it: its key and the next are not escaped, and
    /// the reason is a string or null.
    fn envelope() -> impl Strategy<Value = (String, bool)> {
        use prop::sample::select;
        let entry = |value: BoxedStrategy<&'static str>| (any::<bool>(), any::<bool>(), value);
        let entries = (
            entry(select(vec![r#""0""#, "0", r#""-22""#, "null", "1.5", r#""x""#]).boxed()),
            entry(select(vec![r#""ok""#, "null", "5", r#"{"a":[1]}"#, r#""a\u0000""#]).boxed()),
            entry(
                select(vec![
                    r#"{"sms":[{"pay":"0.0051"}]}"#,
                    r#"{"a":{"b":[1,2.5,"}",null]}}"#,
                    "null",
                    "[]",
                    r#""text""#,
                    "-1.5e3",
                    "true",
                ])
                .boxed(),
            ),
            entry(Just(r#"[{"y":1}]"#).boxed()),
        )
            .prop_map(|(status, reason, data, x)| {
                [
                    ("status", status),
                    ("reason", reason),
                    ("data", data),
                    ("x", x),
                ]
                .into_iter()
                .filter(|(_, (present, _, _))| *present)
                .map(|(name, (_, escaped, value))| (name, escaped, value))
                .collect::<Vec<_>>()
            })
            .prop_shuffle();
        let spaces = prop::collection::vec(select(vec!["", " ", "\n", "\t ", "\r\n"]), 8);
        (entries, spaces).prop_map(|(entries, spaces)| {
            let s = |i: usize| spaces[i % spaces.len()];
            let key = |name: &str, escaped: bool| match escaped {
                true => format!("\"\\u{:04x}{}\"", name.as_bytes()[0], &name[1..]),
                false => format!("\"{name}\""),
            };
            let text: Vec<String> = entries
                .iter()
                .enumerate()
                .map(|(i, (name, escaped, value))| {
                    let key = key(name, *escaped);
                    format!("{}{key}{}:{}{value}{}", s(i), s(i + 1), s(i + 2), s(i + 3))
                })
                .collect();
            let body = format!("{}{{{}}}{}", s(5), text.join(","), s(6));
            let reason_is_text = entries
                .iter()
                .all(|(name, _, v)| *name != "reason" || v.starts_with('"') || *v == "null");
            let data = entries.iter().position(|(name, _, _)| *name == "data");
            let keys_plain = data.is_some_and(|i| {
                !entries[i].1 && entries.get(i + 1).is_none_or(|(_, escaped, _)| !escaped)
            });
            (body, reason_is_text && keys_plain)
        })
    }

    proptest! {
        /// Any envelope reads as before, and `data` is read with the answer whenever the
        /// tree can give it as before.
        #[test]
        fn any_envelope_reads_as_before((body, in_one_pass) in envelope()) {
            same(&body, in_one_pass);
        }
    }
}
