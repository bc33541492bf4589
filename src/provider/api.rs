//! The five endpoints the job uses and the bodies it sends them (NOTES.md). The
//! simulator (its own crate) implements them again from the same pages, sharing no code,
//! so a mistake here shows up in tests instead of hiding on both sides.

use crate::rates::rate_percent;
use chrono::{DateTime, FixedOffset, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// An endpoint, with its path below the base URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `GET /otp/verification/record/{verificationId}`
    RecordByVerificationId,
    /// `POST /otp/verification/orderId/record`
    RecordByOrderId,
    /// `POST /otp/postback/backfill`
    OtpPostback,
    /// `POST /sms/postback/backfill`
    SmsPostback,
    /// `POST /otp/backfillRate`
    BackfillRate,
}

impl Endpoint {
    pub const ALL: [Endpoint; 5] = [
        Endpoint::RecordByVerificationId,
        Endpoint::RecordByOrderId,
        Endpoint::OtpPostback,
        Endpoint::SmsPostback,
        Endpoint::BackfillRate,
    ];

    /// The path below the base URL (the verificationId follows the first one).
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::RecordByVerificationId => "otp/verification/record/",
            Endpoint::RecordByOrderId => "otp/verification/orderId/record",
            Endpoint::OtpPostback => "otp/postback/backfill",
            Endpoint::SmsPostback => "sms/postback/backfill",
            Endpoint::BackfillRate => "otp/backfillRate",
        }
    }

    /// A short stable name, used in logs; the simulator's stats use the same names.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::RecordByVerificationId => "record_by_verification_id",
            Endpoint::RecordByOrderId => "record_by_order_id",
            Endpoint::OtpPostback => "otp_postback",
            Endpoint::SmsPostback => "sms_postback",
            Endpoint::BackfillRate => "backfill_rate",
        }
    }
}

/// Body of the record-by-orderId query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderIdQuery {
    pub app_id: String,
    pub order_id: String,
}

/// Body of the OTP postback: one converted verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtpPostback {
    pub app_id: String,
    pub verification_id: String,
    pub number: String,
    /// Unix milliseconds, as a string (the provider's sample).
    pub time: String,
}

/// Body of the SMS postback: one converted SMS, by its `msgid`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SmsPostback {
    pub app_id: String,
    pub msgid: String,
    pub number: String,
    /// Unix milliseconds, as a string.
    pub time: String,
}

/// Body of `/otp/backfillRate`: one app's conversion rate in one country.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackfillRate {
    pub app_id: String,
    /// Documented as a string; the sample sends a number. We send the string.
    pub mcc: String,
    pub backfill_number: String,
    pub backfill_cardinal_number: String,
    /// Percent, at most two decimals.
    pub backfill_now: String,
    /// ISO 8601 with an offset.
    pub callback_time: String,
}

impl OtpPostback {
    pub fn new(app_id: &str, verification_id: &str, number: &str, at: DateTime<Utc>) -> Self {
        Self {
            app_id: app_id.to_owned(),
            verification_id: verification_id.to_owned(),
            number: number.to_owned(),
            time: at.timestamp_millis().to_string(),
        }
    }
}

impl SmsPostback {
    pub fn new(app_id: &str, msgid: &str, number: &str, at: DateTime<Utc>) -> Self {
        Self {
            app_id: app_id.to_owned(),
            msgid: msgid.to_owned(),
            number: number.to_owned(),
            time: at.timestamp_millis().to_string(),
        }
    }
}

impl BackfillRate {
    /// `converted` of `sent` sends converted; `sent` must be positive.
    pub fn new(
        app_id: &str,
        mcc: i64,
        converted: u64,
        sent: u64,
        at: DateTime<FixedOffset>,
    ) -> Option<Self> {
        Some(Self {
            app_id: app_id.to_owned(),
            mcc: mcc.to_string(),
            backfill_number: converted.to_string(),
            backfill_cardinal_number: sent.to_string(),
            backfill_now: rate_percent(converted, sent)?.to_string(),
            callback_time: at.to_rfc3339_opts(SecondsFormat::Secs, false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_the_endpoints_in_their_order() {
        // The client keeps one URL per endpoint, indexed by `endpoint as usize`.
        for (i, endpoint) in Endpoint::ALL.into_iter().enumerate() {
            assert_eq!(endpoint as usize, i);
        }
    }

    #[test]
    fn postback_time_is_unix_milliseconds() {
        let at = DateTime::parse_from_rfc3339("2023-04-11T03:46:04Z")
            .unwrap()
            .with_timezone(&Utc);
        let body = serde_json::to_value(OtpPostback::new("app", "v1", "91", at)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"appId":"app","verificationId":"v1","number":"91","time":"1681184764000"})
        );
    }
}
