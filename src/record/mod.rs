//! One model for both record shapes the provider answers: by verificationId (sms and
//! call as single objects) and by orderId (arrays, plus `flowId` and settlement fields).
//!
//! A record is read from the answer's `data` with the tolerant readers in [`fields`];
//! the parsed model sits beside the raw JSON it came from, which is kept for audit.

mod fields;
pub(crate) mod json;

pub use fields::{parse_decimal, parse_int, parse_time};

use chrono::{DateTime, Utc};
use fields::Fields;
use json::Json;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;

/// A field of the record could not be read. Names the field (`data.sms[1].pay`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct RecordError {
    pub field: String,
    pub problem: String,
}

impl RecordError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// `verifications.matched`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Matched {
    /// 0: the code was verified.
    Verified,
    /// -1: not verified (yet, or ever).
    NotVerified,
    /// 1: still sending.
    Sending,
    /// 2: verification failed.
    Failed,
    /// 3: the provider knows no such id.
    NoSuchId,
    /// A value the pages do not list.
    Other(i64),
}

impl Matched {
    pub fn from_code(code: i64) -> Self {
        match code {
            0 => Self::Verified,
            -1 => Self::NotVerified,
            1 => Self::Sending,
            2 => Self::Failed,
            3 => Self::NoSuchId,
            other => Self::Other(other),
        }
    }

    pub fn code(self) -> i64 {
        match self {
            Self::Verified => 0,
            Self::NotVerified => -1,
            Self::Sending => 1,
            Self::Failed => 2,
            Self::NoSuchId => 3,
            Self::Other(c) => c,
        }
    }
}

/// The verification outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Verification {
    pub matched: Option<Matched>,
    pub verified_date: Option<DateTime<Utc>>,
    pub ori_receiver: Option<String>,
    /// `sms`, `call` or `sna` as the provider wrote it.
    pub channel: Option<String>,
    pub order_id: Option<String>,
}

/// Money and settlement fields common to every channel (orderId page; the
/// verificationId page lists only some of them, and any may be absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Settlement {
    /// `settlePay`: the total in the settlement currency.
    pub settle_pay: Option<Decimal>,
    /// `settlePrice`: the unit price in the settlement currency.
    pub settle_price: Option<Decimal>,
    /// `settleCurrency`, or `currency` as the samples send it.
    pub settle_currency: Option<String>,
    /// `quoteExchange`: the quotation-to-settlement exchange rate.
    pub quote_exchange: Option<Decimal>,
}

/// One SMS attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SmsAttempt {
    pub submit_tm: Option<DateTime<Utc>>,
    pub send_tm: Option<DateTime<Utc>>,
    pub done_tm: Option<DateTime<Utc>>,
    pub mcc: Option<i64>,
    pub mnc: Option<i64>,
    pub sender: Option<String>,
    pub charge_cnt: Option<i64>,
    /// `pay`: total cost in the quotation currency.
    pub pay: Option<Decimal>,
    /// -1 sending, 0 delivered, 1 failed.
    pub status: Option<i64>,
    pub reason: Option<String>,
    pub settlement: Settlement,
}

/// One voice-call attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CallAttempt {
    /// 0 success, anything else a failure.
    pub termination_code: Option<i64>,
    pub termination_reason: Option<String>,
    pub submit_time: Option<DateTime<Utc>>,
    pub call_time: Option<DateTime<Utc>>,
    pub ringing_time: Option<DateTime<Utc>>,
    pub answer_time: Option<DateTime<Utc>>,
    pub hangup_time: Option<DateTime<Utc>>,
    pub call_duration: Option<i64>,
    pub charged_duration: Option<i64>,
    pub display_num: Option<String>,
    /// `billPeriodstring`, like `20+20`.
    pub bill_period: Option<String>,
    /// `code`: the regional supplier.
    pub code: Option<String>,
    pub rate: Option<Decimal>,
    /// `cost`: total in the quotation currency.
    pub cost: Option<Decimal>,
    pub mcc: Option<i64>,
    pub mnc: Option<i64>,
    pub settlement: Settlement,
}

/// One silent-network-authentication attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SnaAttempt {
    pub post_verification_time: Option<DateTime<Utc>>,
    pub verification_back_time: Option<DateTime<Utc>>,
    pub mcc: Option<i64>,
    pub mnc: Option<i64>,
    /// -1 not verified, 0 success, 1 failed.
    pub status: Option<i64>,
    pub reason: Option<String>,
    pub settlement: Settlement,
}

/// A record as the provider answered it, from either endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Record {
    pub verification_id: Option<String>,
    /// `data.orderId`, else `verifications.orderId`.
    pub order_id: Option<String>,
    pub flow_id: Option<i64>,
    pub verification: Verification,
    pub sms: Vec<SmsAttempt>,
    pub call: Vec<CallAttempt>,
    pub sna: Vec<SnaAttempt>,
}

/// A parsed record and the JSON it was read from, kept together for audit.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub record: Record,
    /// The answer's `data`, exactly the text the provider sent.
    pub raw: String,
}

impl Record {
    /// Reads the answer's `data`. Unknown fields are ignored; a field that is present
    /// but unreadable is an error naming it.
    pub fn from_data(data: &Value) -> Result<Self, RecordError> {
        let text = data.to_string();
        let data =
            Json::parse(&text).map_err(|e| RecordError::new("data", format!("not JSON ({e})")))?;
        Self::from_json(&data)
    }

    /// Reads an answer's `data` (the tree of `text`), refusing first what the database
    /// could not store.
    fn from_stored(data: &Json, text: &str) -> Result<Self, RecordError> {
        // JSON has no raw control characters in strings: a NUL can only be written
        // `\u0000`, so text without one has none, and the walk looks at numbers only.
        // Only a value refused is walked again, to name where it is.
        let nul_free = !text.contains("\\u0000");
        if !fits(data, nul_free) {
            storable(data, &mut String::from("data"))?;
        }
        Self::from_json(data)
    }

    /// Reads an answer's `data` from the tree its text was read into.
    fn from_json(data: &Json) -> Result<Self, RecordError> {
        let Json::Object(obj) = data else {
            return Err(RecordError::new("data", "expected an object"));
        };
        let data = Fields::new(obj, "data");
        let verifications = data.object("verifications")?;
        let has_verifications = verifications.is_some();
        let verification = match verifications {
            Some(v) => Verification {
                matched: v.int("matched")?.map(Matched::from_code),
                verified_date: v.time("verifiedDate")?,
                ori_receiver: v.text("oriReceiver")?,
                channel: v.text("channel")?,
                order_id: v.text("orderId")?,
            },
            None => Verification::default(),
        };
        let record = Record {
            verification_id: data.text("verificationId")?,
            order_id: data
                .text("orderId")?
                .or_else(|| verification.order_id.clone()),
            flow_id: data.int("flowId")?,
            sms: data
                .objects("sms")?
                .iter()
                .map(sms)
                .collect::<Result<_, _>>()?,
            call: data
                .objects("call")?
                .iter()
                .map(call)
                .collect::<Result<_, _>>()?,
            sna: data
                .objects("sna")?
                .iter()
                .map(sna)
                .collect::<Result<_, _>>()?,
            verification,
        };
        // Neither an outcome nor an attempt says nothing: not a record to settle on.
        if !has_verifications
            && record.sms.is_empty()
            && record.call.is_empty()
            && record.sna.is_empty()
        {
            return Err(RecordError::new(
                "data.verifications",
                "missing, and the record has no attempt",
            ));
        }
        Ok(record)
    }

    /// True while any part of the record may still change: `matched` 1, an sms still
    /// sending (status -1), a call not hung up yet, an sna not answered yet.
    pub fn still_sending(&self) -> bool {
        self.verification.matched == Some(Matched::Sending)
            || self.sms.iter().any(|s| s.status == Some(-1))
            || self
                .call
                .iter()
                .any(|c| c.termination_code.is_none() && c.hangup_time.is_none())
            || self.sna.iter().any(|s| {
                s.status.is_none() || (s.status == Some(-1) && s.verification_back_time.is_none())
            })
    }

    /// The mcc of the first attempt that has one (sms, then call, then sna).
    pub fn mcc(&self) -> Option<i64> {
        self.sms
            .iter()
            .map(|a| a.mcc)
            .chain(self.call.iter().map(|a| a.mcc))
            .chain(self.sna.iter().map(|a| a.mcc))
            .flatten()
            .next()
    }
}

impl Fetched {
    /// Reads a record from the text of an answer's `data`, kept as the record's `raw`
    /// (moved, not copied). An answer the database could not store (a NUL in a string,
    /// a number beyond `numeric`) is refused here, naming the field, so that it cannot
    /// fail a whole batch's write.
    pub fn from_raw(raw: String) -> Result<Self, RecordError> {
        let data =
            Json::parse(&raw).map_err(|e| RecordError::new("data", format!("not JSON ({e})")))?;
        let record = Record::from_stored(&data, &raw)?;
        drop(data);
        Ok(Self { record, raw })
    }

    /// Reads a record from the tree of an answer's `data`, built as the answer was read,
    /// and keeps `text`, its exact text in the answer (copied once it is read), as
    /// [`Self::from_raw`] does.
    pub(crate) fn from_tree(data: &Json, text: &str) -> Result<Self, RecordError> {
        let record = Record::from_stored(data, text)?;
        Ok(Self {
            record,
            raw: text.to_owned(),
        })
    }

    /// Reads a record from an answer's `data` already parsed.
    pub fn from_data(data: Value) -> Result<Self, RecordError> {
        let raw = data.to_string();
        let json =
            Json::parse(&raw).map_err(|e| RecordError::new("data", format!("not JSON ({e})")))?;
        let record = Record::from_json(&json)?;
        drop(json);
        Ok(Self { record, raw })
    }

    /// The raw JSON as a value, numbers with their exact text.
    pub fn raw_json(&self) -> Value {
        serde_json::from_str(&self.raw).unwrap_or(Value::Null)
    }
}

/// Whether the database can store `value` ([`storable`]'s rules), without naming what
/// it could not: the walk every answer takes, with no path built on the way. With
/// `nul_free` (the text has no `\u0000`), strings and keys are not searched.
fn fits(value: &Json, nul_free: bool) -> bool {
    match value {
        Json::String(s) => nul_free || !s.contains('\0'),
        Json::Number(text) => number_fits(text),
        Json::Array(items) => items.iter().all(|v| fits(v, nul_free)),
        Json::Object(entries) => entries
            .iter()
            .all(|(k, v)| (nul_free || !k.contains('\0')) && fits(v, nul_free)),
        Json::Null | Json::Bool(_) => true,
    }
}

/// Whether `numeric` keeps a number written `text`: no exponent beyond its range, no
/// text longer than it reads.
fn number_fits(text: &str) -> bool {
    let exponent = text.split_once(['e', 'E']).map_or(Some(0), |(_, e)| {
        e.trim_start_matches('+').parse::<i64>().ok()
    });
    exponent.is_some_and(|e| e.abs() <= 10_000) && text.len() <= 10_000
}

/// Refuses what PostgreSQL's `jsonb` cannot hold: NUL in strings or keys, and numbers
/// with an exponent or a length beyond what `numeric` keeps. `path` is where `value`
/// sits (`data.sms[1]`): one buffer, grown and cut back on the way, so that a value
/// costs no allocation unless it is refused.
fn storable(value: &Json, path: &mut String) -> Result<(), RecordError> {
    const NUL: &str = "contains a NUL character, which the database cannot store";
    match value {
        Json::String(s) if s.contains('\0') => Err(RecordError::new(path.as_str(), NUL)),
        Json::Number(text) if !number_fits(text) => Err(RecordError::new(
            path.as_str(),
            "a number too large for the database to store",
        )),
        Json::Array(items) => {
            let len = path.len();
            for (i, v) in items.iter().enumerate() {
                use std::fmt::Write as _;
                let _ = write!(path, "[{i}]");
                storable(v, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        Json::Object(entries) => {
            let len = path.len();
            for (k, v) in entries {
                if k.contains('\0') {
                    return Err(RecordError::new(path.as_str(), NUL));
                }
                path.push('.');
                path.push_str(k);
                storable(v, path)?;
                path.truncate(len);
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn settlement(f: &Fields) -> Result<Settlement, RecordError> {
    let settle = f.text_ref("settleCurrency")?;
    let plain = f.text_ref("currency")?;
    let settle_currency = match (settle, plain) {
        (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b) => {
            return Err(RecordError::new(
                f.path_of("settleCurrency"),
                format!("disagrees with `currency` ({a:?} vs {b:?})"),
            ));
        }
        (a, b) => a.or(b).map(|c| c.trim().to_ascii_uppercase()),
    };
    Ok(Settlement {
        settle_pay: f.decimal("settlePay")?,
        settle_price: f.decimal("settlePrice")?,
        settle_currency,
        quote_exchange: f.decimal("quoteExchange")?,
    })
}

fn sms(f: &Fields) -> Result<SmsAttempt, RecordError> {
    Ok(SmsAttempt {
        submit_tm: f.time("submitTm")?,
        send_tm: f.time("sendTm")?,
        done_tm: f.time("doneTm")?,
        mcc: f.int("mcc")?,
        mnc: f.int("mnc")?,
        sender: f.text("sender")?,
        charge_cnt: f.int("chargeCnt")?,
        pay: f.decimal("pay")?,
        status: f.int("status")?,
        reason: f.text("reason")?,
        settlement: settlement(f)?,
    })
}

fn call(f: &Fields) -> Result<CallAttempt, RecordError> {
    Ok(CallAttempt {
        termination_code: f.int("terminationCode")?,
        termination_reason: f.text("terminationReason")?,
        submit_time: f.time("submitTime")?,
        call_time: f.time("callTime")?,
        ringing_time: f.time("ringingTime")?,
        answer_time: f.time("answerTime")?,
        hangup_time: f.time("hangupTime")?,
        call_duration: f.int("callDuration")?,
        charged_duration: f.int("chargedDuration")?,
        display_num: f.text("displayNum")?,
        bill_period: f.text("billPeriodstring")?,
        code: f.text("code")?,
        rate: f.decimal("rate")?,
        cost: f.decimal("cost")?,
        mcc: f.int("mcc")?,
        mnc: f.int("mnc")?,
        settlement: settlement(f)?,
    })
}

fn sna(f: &Fields) -> Result<SnaAttempt, RecordError> {
    Ok(SnaAttempt {
        post_verification_time: f.time("postVerificationTime")?,
        verification_back_time: f.time("verificationBackTime")?,
        mcc: f.int("mcc")?,
        mnc: f.int("mnc")?,
        status: f.int("status")?,
        reason: f.text("reason")?,
        settlement: settlement(f)?,
    })
}
