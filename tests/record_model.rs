//! The record model against the provider's own samples (verbatim) and one fixture per
//! quirk in NOTES.md, read through the same path the client uses; and every record the
//! simulator (an implementation of its own) generates.

use otp_reconcile::provider::{Failure, read_record_answer};
use otp_reconcile::record::{Fetched, Matched, Record};
use otp_reconcile_simulator::{Lookup, RecordConfig};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use std::str::FromStr;

fn fixture(path: &str) -> String {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn read(path: &str) -> Fetched {
    read_record_answer(StatusCode::OK, fixture(path).as_bytes())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn unreadable(path: &str) -> String {
    match read_record_answer(StatusCode::OK, fixture(path).as_bytes()) {
        Err(Failure::Unreadable { problem }) => problem,
        other => panic!("{path}: expected an unreadable answer, got {other:?}"),
    }
}

fn dec(s: &str) -> Option<Decimal> {
    Some(Decimal::from_str(s).unwrap())
}

fn utc(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    Some(chrono::DateTime::parse_from_rfc3339(s).unwrap().to_utc())
}

#[test]
fn the_verification_id_page_sample() {
    let f = read("provider-pages/verification-record.response.json");
    let r = &f.record;
    assert_eq!(r.verification_id.as_deref(), Some("verificationId"));
    assert_eq!(r.verification.matched, Some(Matched::Verified));
    assert_eq!(r.verification.verified_date, utc("2021-12-31T16:00:10Z"));
    assert_eq!(r.verification.ori_receiver.as_deref(), Some("91856321412"));
    assert_eq!(r.verification.channel.as_deref(), Some("sms"));
    assert_eq!(r.order_id, None);
    assert_eq!(r.sms.len(), 1);
    assert!(r.call.is_empty() && r.sna.is_empty());
    let sms = &r.sms[0];
    assert_eq!(sms.submit_tm, utc("2021-12-31T16:00:00Z"));
    assert_eq!(sms.done_tm, utc("2021-12-31T16:00:02Z"));
    assert_eq!((sms.mcc, sms.mnc), (Some(404), Some(-1)));
    assert_eq!(sms.sender, None);
    assert_eq!(sms.charge_cnt, Some(2));
    assert_eq!(sms.pay, dec("0.015"));
    assert_eq!(sms.status, Some(0));
    assert_eq!(sms.reason.as_deref(), Some("success"));
    assert_eq!(sms.settlement.settle_currency, None);
    assert!(!r.still_sending());
    assert_eq!(r.mcc(), Some(404));
    // The raw JSON is kept untouched beside the model.
    assert_eq!(f.raw_json()["sms"]["pay"], "0.015");
}

#[test]
fn the_order_id_page_sample() {
    let f = read("provider-pages/order-id-record.response.json");
    let r = &f.record;
    assert_eq!(r.order_id.as_deref(), Some("1234566"));
    assert_eq!(r.flow_id, Some(1));
    assert_eq!(r.verification.channel.as_deref(), Some("call"));
    assert_eq!(r.sms.len(), 1);
    assert_eq!(r.call.len(), 1);
    let sms = &r.sms[0];
    assert_eq!(sms.sender, None, "an empty sender is no sender");
    assert_eq!(sms.pay, dec("0.000002"));
    assert_eq!(sms.settlement.settle_pay, dec("0.01368"));
    assert_eq!(sms.settlement.settle_price, dec("0.01"));
    assert_eq!(sms.settlement.settle_currency.as_deref(), Some("EUR"));
    assert_eq!(sms.settlement.quote_exchange, dec("0.938"));
    let call = &r.call[0];
    assert_eq!(call.termination_code, Some(100_005));
    assert_eq!(
        call.termination_reason.as_deref(),
        Some("Temporarily Unavailable")
    );
    assert_eq!(call.hangup_time, utc("2022-07-12T05:59:56Z"));
    assert_eq!(
        (call.call_duration, call.charged_duration),
        (Some(0), Some(0))
    );
    assert_eq!(call.display_num, None);
    assert_eq!(call.bill_period.as_deref(), Some("20+20"));
    assert_eq!(call.code.as_deref(), Some("661"));
    assert_eq!(call.rate, dec("0.138"));
    assert_eq!(call.cost, dec("0"));
    assert_eq!(call.settlement.settle_currency.as_deref(), Some("EUR"));
    assert!(!r.still_sending());
}

#[test]
fn the_status_only_answers_of_the_postback_and_rate_pages_are_success() {
    for page in [
        "provider-pages/otp-postback.response.json",
        "provider-pages/sms-postback.response.json",
        "provider-pages/backfill-rate.response.json",
    ] {
        // No data: a success for a postback, unreadable as a record.
        match read_record_answer(StatusCode::OK, fixture(page).as_bytes()) {
            Err(Failure::Unreadable { problem }) => assert!(problem.contains("without `data`")),
            other => panic!("{page}: {other:?}"),
        }
    }
}

#[test]
fn integers_sent_as_strings() {
    let r = read("quirks/ints-as-strings.json").record;
    assert_eq!(r.flow_id, Some(7));
    assert_eq!(r.verification.matched, Some(Matched::Verified));
    assert_eq!((r.sms[0].mcc, r.sms[0].mnc), (Some(460), Some(-1)));
    assert_eq!(r.sms[0].charge_cnt, Some(2));
    assert_eq!(r.sms[0].status, Some(0));
    assert_eq!(r.call[0].termination_code, Some(0));
    assert_eq!(r.call[0].charged_duration, Some(20));
}

#[test]
fn money_sent_as_json_numbers_stays_exact() {
    let r = read("quirks/money-as-numbers.json").record;
    assert_eq!(r.sms[0].pay, dec("0.015"));
    assert_eq!(
        r.sms[0].settlement.settle_price.unwrap().to_string(),
        "0.0100",
        "scale kept"
    );
    assert_eq!(r.sms[0].settlement.quote_exchange, dec("0.938"));
    assert_eq!(r.call[0].cost, dec("0"));
    assert_eq!(
        r.call[0].settlement.settle_pay.unwrap().to_string(),
        "1.23456789012345678901234567",
        "27 significant digits, no float on the way"
    );
}

#[test]
fn text_sent_as_numbers() {
    let r = read("quirks/strings-as-numbers.json").record;
    assert_eq!(r.order_id.as_deref(), Some("1234566"));
    assert_eq!(r.verification.ori_receiver.as_deref(), Some("91856321412"));
    assert_eq!(r.call[0].code.as_deref(), Some("661"));
    assert_eq!(r.call[0].display_num.as_deref(), Some("18005550100"));
    assert!(r.sms.is_empty(), "an empty array is no attempt");
}

#[test]
fn settle_currency_or_currency() {
    let r = read("quirks/both-currency-names.json").record;
    assert_eq!(r.sms[0].settlement.settle_currency.as_deref(), Some("EUR"));
    assert_eq!(
        r.call[0].settlement.settle_currency.as_deref(),
        Some("USD"),
        "upper-cased"
    );
    assert_eq!(
        r.sna[0].settlement.settle_currency.as_deref(),
        Some("CNY"),
        "both names, agreeing"
    );
    assert_eq!(r.sna[0].settlement.settle_pay, dec("0.01"));
}

#[test]
fn nulls_and_empty_strings_are_nothing() {
    let r = read("quirks/nulls-and-empty-strings.json").record;
    assert_eq!(r.order_id, None);
    assert_eq!(r.verification.ori_receiver, None);
    assert_eq!(r.verification.matched, Some(Matched::NotVerified));
    let sms = &r.sms[0];
    assert_eq!((sms.send_tm, sms.done_tm), (None, None));
    assert_eq!((sms.mcc, sms.mnc), (None, Some(-1)));
    assert_eq!((sms.pay, sms.settlement.settle_price), (None, None));
    assert!(r.call.is_empty() && r.sna.is_empty());
    assert!(!r.still_sending());
}

#[test]
fn unknown_fields_are_ignored() {
    let f = read("quirks/unknown-fields.json");
    assert_eq!(f.record.sms[0].pay, dec("0.015"));
    assert_eq!(
        f.raw_json()["sms"]["operator"]["name"],
        "Jio",
        "but kept in the raw JSON"
    );
}

#[test]
fn times_with_offsets_become_utc_instants() {
    let r = read("quirks/times-with-offsets.json").record;
    let first = &r.sms[0];
    assert_eq!(first.submit_tm, utc("2022-07-12T05:39:45Z"));
    assert_eq!(first.send_tm, utc("2022-07-12T05:39:45Z"));
    assert_eq!(first.done_tm, utc("2022-07-12T05:39:49Z"));
    let second = &r.sms[1];
    assert_eq!(second.submit_tm, utc("2022-07-12T05:39:45.250Z"));
    assert_eq!(second.send_tm, utc("2022-07-12T05:39:45Z"));
}

#[test]
fn objects_arrays_and_null_elements() {
    let r = read("quirks/object-array-null-shapes.json").record;
    assert_eq!(r.sms.len(), 2, "the null element is skipped");
    assert_eq!(r.call.len(), 1);
    assert_eq!(r.sna.len(), 1);
    assert_eq!(r.sna[0].status, Some(1));
    assert_eq!(r.mcc(), Some(460));
}

#[test]
fn still_sending_and_no_such_id() {
    let sending = read("quirks/still-sending.json").record;
    assert_eq!(sending.verification.matched, Some(Matched::Sending));
    assert!(sending.still_sending());
    let missing = read("quirks/no-such-id.json").record;
    assert_eq!(missing.verification.matched, Some(Matched::NoSuchId));
    assert!(missing.sms.is_empty() && missing.call.is_empty());
}

#[test]
fn a_status_sent_as_a_number() {
    let r = read("quirks/status-as-number.json").record;
    assert_eq!(r.verification.matched, Some(Matched::NotVerified));
}

#[test]
fn unreadable_fields_are_named() {
    for (path, field) in [
        ("quirks/bad-money-exponent.json", "`data.sms.pay`"),
        ("quirks/bad-money-text.json", "`data.call[1].settlePay`"),
        ("quirks/bad-time.json", "`data.sms.doneTm`"),
        (
            "quirks/time-without-offset.json",
            "`data.verifications.verifiedDate`",
        ),
        ("quirks/wrong-types.json", "`data.sms`"),
        ("quirks/currency-conflict.json", "`data.sms.settleCurrency`"),
        ("quirks/nul-in-a-string.json", "`data.sms.sender`"),
        ("quirks/no-outcome-no-attempt.json", "`data.verifications`"),
        ("quirks/number-too-large.json", "`data.debug.weight`"),
    ] {
        let problem = unreadable(path);
        assert!(problem.contains(field), "{path}: {problem}");
    }
    assert!(unreadable("quirks/bad-money-exponent.json").contains("\"1e5\""));
    assert!(unreadable("quirks/time-without-offset.json").contains("without a UTC offset"));
}

/// What the database could not store is found wherever it sits, and named: a NUL in a
/// key or deep in an array, a number beyond `numeric` in a nested array. A backslash
/// written before `u0000` is text, not a NUL: that answer reads, its text kept as sent.
#[test]
fn what_the_database_cannot_store_is_named_wherever_it_sits() {
    let answer = |data: &str| format!(r#"{{"status":"0","reason":"ok","data":{data}}}"#);
    for (data, field, problem) in [
        (
            r#"{"verifications":{"matched":0},"sms":[{"status":0},{"a\u0000b":1}]}"#,
            "`data.sms[1]`",
            "NUL",
        ),
        (
            r#"{"verifications":{"matched":0},"sms":[{"status":0,"reason":["x","y\u0000"]}]}"#,
            "`data.sms[0].reason[1]`",
            "NUL",
        ),
        (
            r#"{"verifications":{"matched":0},"debug":[1,[2,3e20000]]}"#,
            "`data.debug[1][1]`",
            "too large",
        ),
    ] {
        match read_record_answer(StatusCode::OK, answer(data).as_bytes()) {
            Err(Failure::Unreadable { problem: p }) => {
                assert!(p.contains(field) && p.contains(problem), "{data}: {p}")
            }
            other => panic!("{data}: expected an unreadable answer, got {other:?}"),
        }
    }
    let data = r#"{"verifications":{"matched":0},"sms":{"status":0,"sender":"C:\\u0000"}}"#;
    let fetched = read_record_answer(StatusCode::OK, answer(data).as_bytes())
        .unwrap_or_else(|e| panic!("{data}: {e}"));
    assert_eq!(fetched.record.sms[0].sender.as_deref(), Some(r"C:\u0000"));
    assert_eq!(fetched.raw, data);
}

/// The simulator writes its records in its own code: the model reads every shape it
/// generates, still sending exactly while the simulator says so.
#[test]
fn every_record_the_simulator_generates_parses() {
    let cfg = RecordConfig {
        sending_share: 0.3,
        ..RecordConfig::default()
    };
    for i in 0..2_000 {
        let id = format!("v{i}");
        for lookup in [
            Lookup::VerificationId(&id),
            Lookup::OrderId {
                app_id: "app1",
                order_id: &id,
            },
        ] {
            for answered in [0, 1] {
                let served = cfg.serve(3, lookup, answered);
                let record = Record::from_data(&served.data)
                    .unwrap_or_else(|e| panic!("{id}: {e}\n{}", served.data));
                assert_eq!(
                    record.still_sending(),
                    !served.final_answer,
                    "{}",
                    served.data
                );
            }
        }
    }
}
