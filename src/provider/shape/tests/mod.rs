mod scan;

use super::build::KEYS_SEARCHED_IN_LINE;
use super::*;
use proptest::prelude::*;

/// What the former separate pass answered for the same text: text that is not JSON
/// was left to the envelope.
fn refusal(text: &str, limits: Limits) -> Result<(), Refused> {
    match read(text.as_bytes(), limits) {
        Ok(_) | Err(Unread::NotJson) => Ok(()),
        Err(Unread::Refused(refused)) => Err(refused),
    }
}

fn shape(text: &str) -> Result<(), Refused> {
    refusal(text, Limits::default())
}

/// Reads `text` with `limits` and checks it against the former pass and, once read,
/// against [`Json::parse`].
fn same_as_before(text: &str, limits: Limits) {
    let now = read(text.as_bytes(), limits);
    let before = scan::check(text.as_bytes(), limits);
    match now {
        Ok(tree) => {
            assert_eq!(before, Ok(()), "{text}");
            assert_eq!(Json::parse(text).ok(), Some(tree), "{text}");
        }
        Err(Unread::NotJson) => assert_eq!(before, Ok(()), "{text}"),
        Err(Unread::Refused(refused)) => assert_eq!(before, Err(refused), "{text}"),
    }
}

fn duplicate(key: &str, at: &str) -> Result<(), Refused> {
    Err(Refused::DuplicateKey {
        key: key.into(),
        at: at.into(),
    })
}

#[test]
fn duplicate_keys_are_refused_where_they_are() {
    assert_eq!(
        shape(r#"{"status":"0","status":"-1"}"#),
        duplicate("status", "")
    );
    let nested = r#"{"status":"0","data":{"sms":[{"pay":"1"},{"pay":"0.0051","pay":"99.99"}]}}"#;
    let refused = shape(nested).unwrap_err();
    assert_eq!(
        refused,
        Refused::DuplicateKey {
            key: "pay".into(),
            at: "data.sms[1]".into()
        }
    );
    assert_eq!(refused.to_string(), "duplicate key `pay` in `data.sms[1]`");
    assert_eq!(
        shape(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#),
        Ok(()),
        "equal keys in different objects"
    );
}

#[test]
fn duplicate_keys_are_found_at_every_depth() {
    for (text, at) in [
        (r#"{"k":1,"k":2}"#, ""),
        (r#"{"data":{"k":1,"k":2}}"#, "data"),
        (
            r#"{"data":{"verifications":{"k":1,"k":2}}}"#,
            "data.verifications",
        ),
        (r#"{"data":{"sms":{"k":1,"k":2}}}"#, "data.sms"),
        (r#"{"data":{"sms":[{"k":1,"k":2}]}}"#, "data.sms[0]"),
        (r#"[{},[0,{"k":1,"k":2}]]"#, "[1][1]"),
        (
            r#"{"data":{"call":[{},{"x":{"k":1,"k":2}}]}}"#,
            "data.call[1].x",
        ),
        (r#"{"a":[[{"b":[{"k":1,"k":2}]}]]}"#, "a[0][0].b[0]"),
    ] {
        assert_eq!(shape(text), duplicate("k", at), "{text}");
        same_as_before(text, Limits::default());
    }
    // As deep as serde_json reads (its recursion limit is 128 levels).
    let depth = 120;
    let deep = format!(
        r#"{}{{"k":1,"k":2}}{}"#,
        r#"{"o":"#.repeat(depth),
        "}".repeat(depth)
    );
    let at = vec!["o"; depth].join(".");
    assert_eq!(shape(&deep), duplicate("k", &at));
    same_as_before(&deep, Limits::default());
}

#[test]
fn escaped_keys_are_the_keys_they_spell() {
    assert_eq!(shape(r#"{"a":1,"\u0061":2}"#), duplicate("a", ""));
    assert_eq!(shape(r#"{"\u0061":1,"a":2}"#), duplicate("a", ""));
    assert_eq!(shape(r#"{"a\"b":1,"a\u0022b":2}"#), duplicate("a\"b", ""));
    assert_eq!(
        shape(r#"{"d\u0061ta":{"p\"q":{"k":1,"k":2}}}"#),
        duplicate("k", "data.p\"q")
    );
    // An escaped `data` and `sms` are where attempts are.
    let limits = Limits { max_attempts: 1 };
    assert_eq!(
        refusal(r#"{"d\u0061ta":{"\u0073ms":[{},{}]}}"#, limits),
        Err(Refused::TooManyAttempts { limit: 1 })
    );
    assert_eq!(shape(r#"{"a\n":1,"a":2,"a\\n":3}"#), Ok(()));
}

#[test]
fn duplicate_keys_are_found_in_objects_of_any_size() {
    for n in [2, KEYS_SEARCHED_IN_LINE, KEYS_SEARCHED_IN_LINE + 1, 100] {
        let keys: Vec<String> = (0..n)
            .map(|i| format!(r#""k{i}":{{"a":1,"b":2}}"#))
            .collect();
        let unique = format!("{{{}}}", keys.join(","));
        assert_eq!(shape(&unique), Ok(()), "{n} keys");
        for dup in [0, n - 1] {
            let twice = format!(r#"{{{},"k{dup}":0,"z":1}}"#, keys.join(","));
            assert_eq!(
                shape(&twice),
                duplicate(&format!("k{dup}"), ""),
                "{n} keys, k{dup} twice"
            );
            same_as_before(&twice, Limits::default());
        }
        // The same keys in sibling and nested objects are no duplicates.
        let nested = format!(r#"{{"x":{unique},"y":{unique},"k0":{unique}}}"#);
        assert_eq!(shape(&nested), Ok(()), "{n} keys, nested");
    }
    let inner = r#"{"x":{"k0":1},"k0":{"k0":{"k0":1,"k0":2}}}"#;
    assert_eq!(shape(inner), duplicate("k0", "k0.k0"));
}

#[test]
fn attempts_are_capped_exactly_in_lists_and_as_single_objects() {
    let limits = Limits { max_attempts: 3 };
    let answer = |sms: usize, call: &str| {
        format!(
            r#"{{"status":"0","data":{{"sms":[{}],"call":{call}}}}}"#,
            vec!["{}"; sms].join(",")
        )
    };
    for (text, refused) in [
        (answer(2, "{}"), false),
        (answer(3, "[]"), false),
        (answer(3, "{}"), true),
        (answer(4, "null"), true),
        (answer(1, "[{},{}]"), false),
        (answer(2, "[{},{}]"), true),
    ] {
        let expected = match refused {
            true => Err(Refused::TooManyAttempts { limit: 3 }),
            false => Ok(()),
        };
        assert_eq!(refusal(&text, limits), expected, "{text}");
        same_as_before(&text, limits);
    }
    // Elsewhere, objects are not attempts.
    let elsewhere = format!(
        r#"{{"x":[{}],"data":{{"y":[{}]}}}}"#,
        ["{}"; 10].join(","),
        ["{}"; 10].join(",")
    );
    assert_eq!(refusal(&elsewhere, limits), Ok(()));
    // Nor are objects inside an attempt.
    let inside = r#"{"data":{"sms":[{"a":{},"b":[{},{},{}]}]}}"#;
    assert_eq!(refusal(inside, limits), Ok(()));
}

#[test]
fn values_are_capped_exactly() {
    let limits = Limits { max_attempts: 1 };
    assert_eq!(limits.max_values(), 1_100);
    // The object, the list and its items.
    let zeros = |n: usize| format!(r#"{{"x":[{}]}}"#, vec!["0"; n].join(","));
    assert_eq!(refusal(&zeros(1_098), limits), Ok(()));
    assert_eq!(
        refusal(&zeros(1_099), limits),
        Err(Refused::TooManyValues { limit: 1_100 })
    );
    // A number that is no 64-bit integer counts twice, as serde_json hands it over.
    let halves = |n: usize| format!(r#"{{"x":[{}]}}"#, vec!["0.5"; n].join(","));
    assert_eq!(refusal(&halves(549), limits), Ok(()));
    assert_eq!(
        refusal(&halves(550), limits),
        Err(Refused::TooManyValues { limit: 1_100 })
    );
    for text in [zeros(1_098), zeros(1_099), halves(549), halves(550)] {
        same_as_before(&text, limits);
    }
}

#[test]
fn the_tree_is_the_one_json_parse_builds() {
    for text in [
        r#"{"a":1,"b":"x","c":[true,false,null],"d":{"e":"0.0051"},"f":-12.3400}"#,
        r#"{"big":123456789012345678901234567890,"exp":1E+5,"esc":"a\"b\u0041","\u0061b":2}"#,
        r#"  {"sp" : [ 1 , 2 ] , "neg": -0 }  "#,
        r#"[]"#,
        r#""plain""#,
        "null",
    ] {
        let tree = read(text.as_bytes(), Limits::default()).unwrap();
        assert_eq!(Some(tree), Json::parse(text).ok(), "{text}");
    }
}

#[test]
fn what_is_not_one_json_value_is_left_to_the_lenient_reading() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for text in [
        "",
        "<html>",
        r#"{"status":"0","da"#,
        "[1,2",
        r#"{"a":1} x"#,
        r#"{"a":"\ud800"}"#,
        deep.as_str(),
    ] {
        assert!(
            matches!(
                read(text.as_bytes(), Limits::default()),
                Err(Unread::NotJson)
            ),
            "{text:?}"
        );
        same_as_before(text, Limits::default());
    }
    // Text that is not UTF-8 is read as bytes: up to its first bad byte, it is checked
    // as any other.
    let limits = Limits::default();
    for (text, expected) in [
        (&b"{\"a\":\"\xff\"}"[..], Ok(())),
        (b"{\"a\":1,\"a\":2,\"x\":\"\xff\"}", duplicate("a", "")),
        (
            b"{\"data\":{\"sms\":[{\"k\":1,\"k\":2}]},\"\xff\":0}",
            duplicate("k", "data.sms[0]"),
        ),
        (b"{\"x\":\"\xff\",\"a\":1,\"a\":2}", Ok(())),
    ] {
        let now = match read(text, limits) {
            Ok(_) => panic!("read: {text:?}"),
            Err(Unread::NotJson) => Ok(()),
            Err(Unread::Refused(refused)) => Err(refused),
        };
        assert_eq!(now, expected, "{text:?}");
        assert_eq!(scan::check(text, limits), expected, "{text:?}");
    }
    // What comes first in the text decides: a refusal before a syntax error is one.
    assert_eq!(shape(r#"{"a":1,"a":2,"b":"#), duplicate("a", ""));
    assert_eq!(shape(r#"{"b":,"a":1,"a":2}"#), Ok(()));
}

/// Keys from a small set, so that objects often hold one twice, with `data` and the
/// attempts' keys among them, escaped or not.
fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        r#""a""#,
        r#""b""#,
        r#""\u0061""#,
        r#""data""#,
        r#""d\u0061ta""#,
        r#""sms""#,
        r#""call""#,
        r#""sna""#,
        r#""pay""#,
    ])
    .prop_map(String::from)
}

fn value() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "null",
        "true",
        "0",
        "-12",
        "1.50",
        "1e5",
        "-0",
        "18446744073709551616",
        r#""s""#,
        r#""\u0041\n""#,
    ])
    .prop_map(String::from);
    leaf.prop_recursive(6, 64, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key(), inner), 0..5).prop_map(|entries| {
                let entries: Vec<String> =
                    entries.iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", entries.join(","))
            }),
        ]
    })
}

proptest! {
    /// Whatever the text, whole or cut short, the single pass refuses what the former
    /// pass refused, at the same place, and reads the tree `Json::parse` reads.
    #[test]
    fn refuses_what_the_former_pass_refused(
        data in value(),
        cut in any::<prop::sample::Index>(),
        whole in any::<bool>(),
        max_attempts in 0usize..4,
    ) {
        let text = format!(r#"{{"status":"0","data":{data}}}"#);
        let text = if whole { text.as_str() } else { &text[..cut.index(text.len())] };
        same_as_before(text, Limits { max_attempts });
        same_as_before(&data, Limits { max_attempts });
    }
}
