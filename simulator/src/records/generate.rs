//! One record's `data`: which attempts it has, in which channels, on which page shape,
//! and how its numbers, money and times are written.

use super::Lookup;
use super::attempts::Attempt;
use super::tables::COUNTRIES;
use crate::draw::Draw;
use chrono::{DateTime, Duration, FixedOffset, SecondsFormat, TimeZone, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Number, Value};
use std::str::FromStr;

/// The channel of an attempt.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Channel {
    Sms,
    Call,
    Sna,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Sms => "sms",
            Channel::Call => "call",
            Channel::Sna => "sna",
        }
    }
}

/// One planned attempt: its channel and whether it succeeds.
#[derive(Clone, Copy)]
struct Planned(Channel, bool);

/// Writes one record, in the quirks drawn for its id.
pub(super) struct Gen<'a> {
    pub draw: &'a Draw,
    pub by_order: bool,
    /// Integers rendered as strings ("460").
    pub strings: bool,
    /// Money rendered as JSON numbers (0.035) instead of strings.
    pub money_numbers: bool,
    /// The UTC offset times are written in, in seconds.
    pub offset: i32,
    pub cost_delta: Option<Decimal>,
}

impl Gen<'_> {
    /// The record's `data`, and whether any attempt carries a price.
    pub fn record(&self, lookup: Lookup, sending: bool) -> (Value, bool) {
        let d = self.draw;
        let plan = self.plan();
        let country = d.pick("country", COUNTRIES);
        let sent = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
            + Duration::seconds(d.below("sent", 300 * 86_400) as i64);
        let last_ok = plan.last().is_some_and(|p| p.1);
        let matched: i64 = if sending {
            1
        } else if last_ok {
            if d.chance("unverified", 0.2) { -1 } else { 0 }
        } else if d.chance("failed-matched", 0.5) {
            2
        } else {
            -1
        };
        let order_id = match lookup {
            Lookup::OrderId { order_id, .. } => Value::from(order_id),
            Lookup::VerificationId(_) => match d.below("order-id", 3) {
                0 => Value::Null,
                1 => Value::from(""),
                _ => Value::from(format!("ord-{}", d.bits("order-id-value") % 1_000_000_000)),
            },
        };
        let channel = plan.last().map(|p| p.0.name());
        let verified_at = sent + Duration::seconds(40 + d.below("verified", 200) as i64);

        let mut sms = Vec::new();
        let mut call = Vec::new();
        let mut sna = Vec::new();
        let mut at = sent;
        let mut priced = false;
        for (i, step) in plan.iter().enumerate() {
            let is_last = i + 1 == plan.len();
            let (value, has_price) = self.attempt(&Attempt {
                index: i,
                channel: step.0,
                country,
                at,
                ok: step.1,
                sending: sending && is_last,
                delta: if priced { None } else { self.cost_delta },
            });
            priced |= has_price;
            match step.0 {
                Channel::Sms => sms.push(value),
                Channel::Call => call.push(value),
                Channel::Sna => sna.push(value),
            }
            at += Duration::seconds(30 + d.below(&format!("gap{i}"), 60) as i64);
        }

        let mut verifications = Map::new();
        verifications.insert("matched".into(), self.int(matched));
        verifications.insert(
            "verifiedDate".into(),
            if matched == 0 {
                self.time(verified_at)
            } else {
                Value::Null
            },
        );
        verifications.insert(
            "oriReceiver".into(),
            Value::from(format!(
                "{}{}",
                country.dial,
                7_000_000_000 + d.below("number", 999_999_999)
            )),
        );
        verifications.insert("channel".into(), channel.map_or(Value::Null, Value::from));
        verifications.insert("orderId".into(), order_id.clone());

        let mut data = Map::new();
        match lookup {
            Lookup::VerificationId(id) => {
                data.insert("verificationId".into(), Value::from(id));
            }
            Lookup::OrderId { .. } => {
                data.insert("orderId".into(), order_id);
                data.insert(
                    "flowId".into(),
                    self.int(d.below("flow", 100_000) as i64 + 1),
                );
            }
        }
        data.insert("verifications".into(), Value::Object(verifications));
        data.insert("sms".into(), self.list(sms, "sms-shape"));
        data.insert("call".into(), self.list(call, "call-shape"));
        if self.by_order || !sna.is_empty() {
            data.insert(
                "sna".into(),
                if sna.is_empty() && d.chance("sna-null", 0.5) {
                    Value::Null
                } else {
                    Value::Array(sna)
                },
            );
        }
        if d.chance("unknown-field", 0.1) {
            data.insert(
                "traceId".into(),
                Value::from(format!("t{}", d.bits("trace"))),
            );
        }
        (Value::Object(data), priced)
    }

    /// The attempts, in order.
    fn plan(&self) -> Vec<Planned> {
        use Channel::*;
        let d = self.draw;
        let ok = |tag: &str, p: f64| d.chance(tag, p);
        match d.unit("scenario") {
            u if u < 0.40 => vec![Planned(Sms, true)],
            u if u < 0.50 => vec![Planned(Sms, false)],
            u if u < 0.65 => vec![Planned(Sms, false), Planned(Call, ok("call-ok", 0.85))],
            u if u < 0.75 => vec![Planned(Call, ok("call-ok", 0.8))],
            u if u < 0.82 => vec![Planned(Sna, ok("sna-ok", 0.9))],
            u if u < 0.85 => vec![Planned(Sna, false), Planned(Sms, true)],
            u if u < 0.95 => vec![Planned(Sms, false), Planned(Sms, ok("sms2-ok", 0.9))],
            _ => vec![Planned(Sms, false), Planned(Call, false)],
        }
    }

    /// A channel's attempts: one object or an array on the verificationId page
    /// (mostly an object when there is one), always an array on the orderId page.
    fn list(&self, items: Vec<Value>, tag: &str) -> Value {
        match items.len() {
            0 if self.by_order && self.draw.chance(tag, 0.5) => Value::Array(items),
            0 => Value::Null,
            1 if !self.by_order && self.draw.chance(tag, 0.8) => {
                items.into_iter().next().unwrap_or(Value::Null)
            }
            _ => Value::Array(items),
        }
    }

    pub(super) fn int(&self, v: i64) -> Value {
        if self.strings {
            Value::from(v.to_string())
        } else {
            Value::from(v)
        }
    }

    pub(super) fn money(&self, v: Decimal) -> Value {
        if self.money_numbers {
            Number::from_str(&v.to_string())
                .map_or_else(|_| Value::from(v.to_string()), Value::Number)
        } else {
            Value::from(v.to_string())
        }
    }

    pub(super) fn time(&self, t: DateTime<Utc>) -> Value {
        let offset = FixedOffset::east_opt(self.offset).expect("offsets are in range");
        Value::from(
            t.with_timezone(&offset)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        )
    }
}
