//! One attempt of a record, per channel: an sms with its charge count and delivery
//! report, a call with its billing period and duration, an sna check; and the
//! settlement fields most attempts carry.

use super::generate::{Channel, Gen};
use super::tables::{Country, SETTLEMENT, dec};
use crate::draw::Draw;
use chrono::{DateTime, Duration, Utc};
use rust_decimal::Decimal;
use serde_json::{Map, Value};

/// One attempt to write: where it stands in the record and how it went.
#[derive(Clone, Copy)]
pub(super) struct Attempt<'c> {
    /// Its place in the record, counted over every channel.
    pub index: usize,
    pub channel: Channel,
    pub country: &'c Country,
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// Still sending: no outcome yet.
    pub sending: bool,
    /// What the cost switch adds, on the record's first priced attempt only.
    pub delta: Option<Decimal>,
}

impl Attempt<'_> {
    /// An sms's or sna's `status`: -1 while sending, 0 delivered, 1 failed.
    fn status(&self) -> i64 {
        match (self.sending, self.ok) {
            (true, _) => -1,
            (false, true) => 0,
            (false, false) => 1,
        }
    }
}

impl Gen<'_> {
    /// The attempt's object, and whether it carries a price.
    pub(super) fn attempt(&self, a: &Attempt) -> (Value, bool) {
        let name = a.channel.name();
        let d = Draw::new(
            0,
            format!("{}:{name}{}", self.draw.bits("attempt"), a.index),
        );
        match a.channel {
            Channel::Sms => self.sms(a, &d),
            Channel::Call => self.call(a, &d),
            Channel::Sna => self.sna(a, &d),
        }
    }

    fn sms(&self, a: &Attempt, d: &Draw) -> (Value, bool) {
        let (c, at, delta) = (a.country, a.at, a.delta);
        let count = 1 + d.below("count", 3) as i64;
        let price = dec(c.sms_price);
        let pay = price * Decimal::from(count) + delta.unwrap_or_default();
        let mut o = Map::new();
        o.insert("submitTm".into(), self.time(at));
        o.insert("sendTm".into(), self.time(at + Duration::seconds(1)));
        o.insert(
            "doneTm".into(),
            self.outcome_time(a, 2 + d.below("done", 9) as i64),
        );
        self.network(&mut o, c, d);
        o.insert(
            "sender".into(),
            match d.below("sender", 3) {
                0 => Value::Null,
                1 => Value::from(""),
                _ => Value::from("Brand"),
            },
        );
        o.insert("chargeCnt".into(), self.int(count));
        o.insert("pay".into(), self.money(pay));
        let status = a.status();
        o.insert("status".into(), self.int(status));
        o.insert(
            "reason".into(),
            match status {
                -1 => Value::Null,
                0 => Value::from(*d.pick("ok-reason", &["success", "DELIVRD"])),
                _ => Value::from(*d.pick("fail-reason", &["UNDELIV", "EXPIRED", "REJECTD"])),
            },
        );
        self.settle(d, &mut o, price, count, delta);
        (Value::Object(o), true)
    }

    fn call(&self, a: &Attempt, d: &Draw) -> (Value, bool) {
        let Attempt {
            country: c,
            at,
            ok,
            sending,
            delta,
            ..
        } = *a;
        let (period, label) = *d.pick("period", &[(20, "20+20"), (60, "60+60"), (1, "1+1")]);
        let duration = if ok && !sending {
            5 + d.below("duration", 50) as i64
        } else {
            0
        };
        let charged = if duration == 0 {
            0
        } else {
            (duration + period - 1) / period * period
        };
        let rate = dec(c.call_rate);
        let cost = (rate * Decimal::from(charged) / Decimal::from(60)).round_dp(6)
            + delta.unwrap_or_default();
        let answered = ok && !sending;
        let mut o = Map::new();
        let code = if sending {
            Value::Null
        } else if ok {
            self.int(0)
        } else {
            self.int(*d.pick("code", &[100_005, 486, 480]))
        };
        o.insert("terminationCode".into(), code);
        o.insert(
            "terminationReason".into(),
            if sending {
                Value::Null
            } else if ok {
                Value::from("Normal Clearing")
            } else {
                Value::from("Temporarily Unavailable")
            },
        );
        o.insert("submitTime".into(), self.time(at));
        o.insert("callTime".into(), self.time(at + Duration::seconds(1)));
        o.insert("ringingTime".into(), self.time(at + Duration::seconds(2)));
        o.insert(
            "answerTime".into(),
            if answered {
                self.time(at + Duration::seconds(6))
            } else {
                Value::Null
            },
        );
        o.insert("hangupTime".into(), self.outcome_time(a, 6 + duration));
        o.insert("callDuration".into(), self.int(duration));
        o.insert("chargedDuration".into(), self.int(charged));
        o.insert(
            "displayNum".into(),
            if d.chance("display", 0.5) {
                Value::Null
            } else {
                Value::from(format!(
                    "+{}{}",
                    c.dial,
                    20_000_000 + d.below("display-num", 9_000_000)
                ))
            },
        );
        o.insert("billPeriodstring".into(), Value::from(label));
        o.insert(
            "code".into(),
            Value::from(*d.pick("supplier", &["661", "702", "815"])),
        );
        o.insert("rate".into(), self.money(rate));
        o.insert("cost".into(), self.money(cost));
        self.network(&mut o, c, d);
        let minutes = Decimal::from(charged) / Decimal::from(60);
        self.settle_amount(d, &mut o, rate, minutes, delta);
        (Value::Object(o), true)
    }

    fn sna(&self, a: &Attempt, d: &Draw) -> (Value, bool) {
        let (c, at, delta) = (a.country, a.at, a.delta);
        let mut o = Map::new();
        o.insert("postVerificationTime".into(), self.time(at));
        o.insert(
            "verificationBackTime".into(),
            self.outcome_time(a, 1 + d.below("back", 3) as i64),
        );
        self.network(&mut o, c, d);
        let status = a.status();
        o.insert("status".into(), self.int(status));
        o.insert(
            "reason".into(),
            Value::from(match status {
                -1 => "not verified",
                0 => "success",
                _ => "network mismatch",
            }),
        );
        // An sna attempt is priced only through its settlement fields.
        let priced = self.settle(d, &mut o, dec("0.0100"), 1, delta);
        (Value::Object(o), priced)
    }

    /// The country's MCC and one of its MNCs.
    fn network(&self, o: &mut Map<String, Value>, c: &Country, d: &Draw) {
        o.insert("mcc".into(), self.int(c.mcc));
        o.insert("mnc".into(), self.int(*d.pick("mnc", c.mnc)));
    }

    /// When the outcome came, `after_secs` after the attempt started; null while sending.
    fn outcome_time(&self, a: &Attempt, after_secs: i64) -> Value {
        if a.sending {
            Value::Null
        } else {
            self.time(a.at + Duration::seconds(after_secs))
        }
    }

    /// Settlement fields for a unit price × count, in 80% of attempts; true if written.
    fn settle(
        &self,
        d: &Draw,
        o: &mut Map<String, Value>,
        unit: Decimal,
        count: i64,
        delta: Option<Decimal>,
    ) -> bool {
        self.settle_amount(d, o, unit, Decimal::from(count), delta)
    }

    fn settle_amount(
        &self,
        d: &Draw,
        o: &mut Map<String, Value>,
        unit: Decimal,
        quantity: Decimal,
        delta: Option<Decimal>,
    ) -> bool {
        if !d.chance("settled", 0.8) {
            return false;
        }
        let (currency, exchange) = *self.draw.pick("currency", SETTLEMENT);
        let exchange = dec(exchange);
        let price = (unit * exchange).round_dp(5);
        let pay = (price * quantity).round_dp(5) + delta.unwrap_or_default();
        o.insert("settlePay".into(), self.money(pay));
        o.insert("settlePrice".into(), self.money(price));
        let name = if self.draw.chance("currency-name", 0.6) {
            "currency"
        } else {
            "settleCurrency"
        };
        o.insert(name.into(), Value::from(currency));
        o.insert("quoteExchange".into(), self.money(exchange));
        true
    }
}
