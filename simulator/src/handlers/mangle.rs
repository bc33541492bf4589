//! The bodies of the faults that answer something wrong rather than nothing: a record
//! too big to be worth reading, keys written twice, a record gone back to sending, a
//! record that cannot be read.

use serde_json::{Map, Value};

/// About 1 MB (under the client's default 1 MiB cap) of status 0 whose record holds
/// 340,000 empty sms attempts.
pub(super) fn huge_record() -> Vec<u8> {
    const ATTEMPTS: usize = 340_000;
    let head = br#"{"status":"0","reason":"success","data":{"verifications":{"matched":0},"sms":["#;
    let mut body = Vec::with_capacity(head.len() + ATTEMPTS * 3 + 3);
    body.extend_from_slice(head);
    for i in 0..ATTEMPTS {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{}");
    }
    body.extend_from_slice(b"]}}");
    body
}

/// A placeholder key, replaced in the text by a duplicate pair.
const DUPLICATE: &str = "__duplicate__";

/// Serializes `answer` with the placeholder replaced by `pair`.
fn with_pair(answer: &Value, pair: &str) -> Vec<u8> {
    serde_json::to_string(answer)
        .expect("JSON serializes")
        .replacen(&format!("\"{DUPLICATE}\":true"), pair, 1)
        .into_bytes()
}

/// The record's first money field written twice (sms `pay`, call `cost`), or
/// `matched`, or else a `flowId`: the second copy says something else.
pub(super) fn duplicate_key(mut answer: Value) -> Vec<u8> {
    let data = &mut answer["data"];
    for (channel, field, second) in [
        ("sms", "pay", r#""pay":"99.99""#),
        ("call", "cost", r#""cost":"99.99""#),
    ] {
        let attempt = match &mut data[channel] {
            Value::Array(items) => items.first_mut(),
            object @ Value::Object(_) => Some(object),
            _ => None,
        };
        if let Some(Value::Object(attempt)) = attempt
            && attempt.contains_key(field)
        {
            attempt.insert(DUPLICATE.into(), Value::Bool(true));
            return with_pair(&answer, second);
        }
    }
    if let Some(Value::Object(v)) = data.get_mut("verifications")
        && v.contains_key("matched")
    {
        v.insert(DUPLICATE.into(), Value::Bool(true));
        return with_pair(&answer, r#""matched":1"#);
    }
    if let Value::Object(data) = data {
        data.insert(DUPLICATE.into(), Value::Bool(true));
        return with_pair(&answer, r#""flowId":1,"flowId":2"#);
    }
    serde_json::to_vec(&answer).expect("JSON serializes")
}

/// `{"status":"0","status":"-1",...}`: the answer's status written twice.
pub(super) fn duplicate_status(answer: Value) -> Vec<u8> {
    let Value::Object(fields) = answer else {
        return br#"{"status":"0","status":"-1"}"#.to_vec();
    };
    let mut out = Map::new();
    let status = fields.get("status").cloned().unwrap_or(Value::from("0"));
    out.insert("status".into(), status);
    out.insert(DUPLICATE.into(), Value::Bool(true));
    for (k, v) in fields {
        if k != "status" {
            out.insert(k, v);
        }
    }
    with_pair(&Value::Object(out), r#""status":"-1""#)
}

/// The record turned back to still sending: `matched` 1, every sms status -1, every
/// call without its hang-up and termination code.
pub(super) fn regressed(mut answer: Value) -> Vec<u8> {
    let data = &mut answer["data"];
    if data.is_object() {
        data["verifications"]["matched"] = Value::from(1);
        for channel in ["sms", "call"] {
            let attempts: Vec<&mut Value> = match &mut data[channel] {
                Value::Array(items) => items.iter_mut().collect(),
                object @ Value::Object(_) => vec![object],
                _ => Vec::new(),
            };
            for attempt in attempts {
                if let Value::Object(a) = attempt {
                    if channel == "sms" {
                        a.insert("status".into(), Value::from(-1));
                    } else {
                        a.insert("hangupTime".into(), Value::Null);
                        a.insert("terminationCode".into(), Value::Null);
                    }
                }
            }
        }
    }
    serde_json::to_vec(&answer).expect("JSON serializes")
}

/// Makes a record unreadable: its first sms or call money field becomes `"1e5"`,
/// or, without one, its verification time stops being a time.
pub(super) fn spoil(data: &mut Value) {
    for (channel, field) in [("sms", "pay"), ("call", "cost")] {
        let attempt = match &mut data[channel] {
            Value::Array(items) => items.first_mut(),
            object @ Value::Object(_) => Some(object),
            _ => None,
        };
        if let Some(Value::Object(attempt)) = attempt {
            attempt.insert(field.into(), Value::from("1e5"));
            return;
        }
    }
    if data.is_object() {
        data["verifications"]["verifiedDate"] = Value::from("yesterday");
    }
}
