//! Properties of the record model: whatever JSON the provider puts in any field, reading
//! never panics; decimals come back exactly, written as strings or as JSON numbers.

use otp_reconcile::provider::read_record_answer;
use otp_reconcile::record::{Record, parse_decimal};
use proptest::prelude::*;
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{Number, Value, json};
use std::str::FromStr;

fn page(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/provider-pages/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every position in a JSON tree, as a path of keys and indexes.
#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn paths(value: &Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                prefix.push(Step::Key(k.clone()));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                prefix.push(Step::Index(i));
                out.push(prefix.clone());
                paths(v, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn slot<'a>(value: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(value, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// Number text of every kind: huge, tiny, exponents, negative zero.
fn number_text() -> impl Strategy<Value = String> {
    "-?[0-9]{1,40}(\\.[0-9]{1,40})?([eE][+-]?[0-9]{1,3})?"
}

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| Number::from_f64(f).map(Value::Number)),
        number_text().prop_filter_map("a JSON number", |s| Number::from_str(&s)
            .ok()
            .map(Value::Number)),
        number_text().prop_map(Value::from),
        ".{0,30}".prop_map(Value::from),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}([+-][0-9]{2}:[0-9]{2}|Z)?"
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn any_value_in_any_field_never_panics(
        which in 0usize..2,
        pick in any::<prop::sample::Index>(),
        value in any_json(),
    ) {
        let mut answer = page(["verification-record.response.json", "order-id-record.response.json"][which]);
        let mut all = Vec::new();
        paths(&answer, &mut Vec::new(), &mut all);
        let path = pick.get(&all).clone();
        *slot(&mut answer, &path) = value;
        let body = serde_json::to_vec(&answer).unwrap();
        // Ok or a named error: both are fine, a panic is not.
        let _ = read_record_answer(StatusCode::OK, &body);
    }

    #[test]
    fn any_data_never_panics(data in any_json()) {
        let _ = Record::from_data(&data);
    }

    #[test]
    fn any_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), http in 100u16..600) {
        let _ = read_record_answer(StatusCode::from_u16(http).unwrap(), &body);
    }

    #[test]
    fn decimals_round_trip_exactly(lo in any::<u32>(), mid in any::<u32>(), hi in any::<u32>(), negative in any::<bool>(), scale in 0u32..=28) {
        let d = Decimal::from_parts(lo, mid, hi, negative, scale);
        let text = d.to_string();
        let parsed = parse_decimal(&text).expect("a Decimal's own text parses");
        prop_assert_eq!(parsed, d);
        prop_assert_eq!(parsed.to_string(), text.clone(), "scale kept");

        // The same value in a record, once as a string and once as a JSON number.
        for pay in [Value::from(text.clone()), Value::Number(Number::from_str(&text).unwrap())] {
            let data = json!({"verifications": {"matched": 0}, "sms": {"pay": pay, "settlePay": pay}});
            let record = Record::from_data(&data).unwrap();
            prop_assert_eq!(record.sms[0].pay.unwrap().to_string(), text.clone());
            prop_assert_eq!(record.sms[0].settlement.settle_pay.unwrap(), d);
        }
    }
}
