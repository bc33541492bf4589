//! The answer's `data` as a tree that borrows its text: what a record is read from.
//!
//! `serde_json::Value` copies every key and string into its own allocation and hashes
//! each key into an `IndexMap`; reading a record that way was about an eighth of the
//! job's CPU per send. Here a string without escapes is a slice of the answer, an object
//! is a list of its entries (a record's objects have a few dozen keys at most: a linear
//! search is cheaper than hashing them), and numbers keep their exact text.
//!
//! An answer's tree is built by `provider::shape`, which refuses duplicate keys on the
//! way; [`Json::parse`] (a record's text read again) does not: the last of two equal keys
//! wins, as in `Value`.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// One JSON value, borrowing from the text it was read from.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// A number, exactly as written.
    Number(Cow<'a, str>),
    String(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Reads `text`, which must be one JSON value and nothing after it.
    pub fn parse(text: &'a str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The value of `key` in an object (the last one, if the key is there twice).
    pub fn get(entries: &'a [(Cow<'a, str>, Json<'a>)], key: &str) -> Option<&'a Json<'a>> {
        entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// What kind of value it is, as error messages name it.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Number(_) => "a number",
            Json::String(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }
}

/// The key under which serde_json (with `arbitrary_precision`) hands a number's text to
/// a visitor, as a map of one entry.
pub(crate) const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Cow::Owned(n.to_string())))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Cow::Owned(n.to_string())))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number(Cow::Owned(n.to_string())))
    }
    fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E: de::Error>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut entries: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        while let Some(Key(key)) = map.next_key()? {
            if entries.is_empty() && key == NUMBER_TOKEN {
                let text: String = map.next_value()?;
                return Ok(Json::Number(Cow::Owned(text)));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Json::Object(entries))
    }
}

/// An object key, borrowed from the text when it has no escapes (also what
/// `provider::shape` compares to find duplicate keys).
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// Back to a `Value`, to compare with serde_json's own reading.
    fn value(j: &Json) -> Value {
        match j {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) => serde_json::from_str(n).unwrap(),
            Json::String(s) => Value::String(s.to_string()),
            Json::Array(items) => Value::Array(items.iter().map(value).collect()),
            Json::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_string(), value(v)))
                    .collect(),
            ),
        }
    }

    #[test]
    fn reads_what_serde_json_reads_with_numbers_exact() {
        for text in [
            r#"{"a":1,"b":"x","c":[true,false,null],"d":{"e":"0.0051"},"f":-12.3400}"#,
            r#"{"big":123456789012345678901234567890,"exp":1e5,"esc":"a\"b\u0041","\u0061b":2}"#,
            r#"[]"#,
            r#"{}"#,
            r#""plain""#,
            r#"  {"sp" : [ 1 , 2 ] }  "#,
        ] {
            let ours = Json::parse(text).unwrap();
            let theirs: Value = serde_json::from_str(text).unwrap();
            assert_eq!(value(&ours), theirs, "{text}");
        }
        let Json::Object(e) = Json::parse(r#"{"f":-12.3400,"g":1E+2}"#).unwrap() else {
            panic!("an object")
        };
        assert_eq!(Json::get(&e, "f"), Some(&Json::Number("-12.3400".into())));
        // serde_json writes an exponent's `E` as `e`, in `Value` as here.
        let theirs: Value = serde_json::from_str(r#"1E+2"#).unwrap();
        let Value::Number(n) = theirs else {
            panic!("a number")
        };
        assert_eq!(Json::get(&e, "g"), Some(&Json::Number(n.as_str().into())));
    }

    #[test]
    fn strings_without_escapes_are_borrowed() {
        let Json::Object(e) = Json::parse(r#"{"a":"plain","b":"esc\n"}"#).unwrap() else {
            panic!("an object")
        };
        assert!(matches!(e[0].0, Cow::Borrowed("a")));
        assert!(matches!(
            Json::get(&e, "a"),
            Some(Json::String(Cow::Borrowed("plain")))
        ));
        assert!(matches!(
            Json::get(&e, "b"),
            Some(Json::String(Cow::Owned(_)))
        ));
    }

    #[test]
    fn the_last_of_two_equal_keys_wins_as_in_value() {
        let text = r#"{"pay":"1","pay":"2"}"#;
        let Json::Object(e) = Json::parse(text).unwrap() else {
            panic!("an object")
        };
        let theirs: Value = serde_json::from_str(text).unwrap();
        assert_eq!(Json::get(&e, "pay"), Some(&Json::String("2".into())));
        assert_eq!(theirs["pay"], "2");
    }

    #[test]
    fn what_is_not_one_json_value_is_refused() {
        for text in ["", "{", r#"{"a":1}x"#, "[1,]", "nul"] {
            assert!(Json::parse(text).is_err(), "{text:?}");
        }
    }
}
