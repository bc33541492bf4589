//! The records the simulator serves, generated from the seed and the id.
//!
//! Every shape on the provider's pages appears: sms only, call only, sna, sms falling
//! back to call, two sms attempts, still sending (final after a number of fetches),
//! failed; single objects and arrays; `null` and `""` fields; both currency field
//! names; numbers as strings and money as JSON numbers; times in several offsets.
//! The same id always yields the same final record.

use super::draw::Draw;
use chrono::{DateTime, Duration, FixedOffset, SecondsFormat, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value, json};
use std::str::FromStr;

/// What records look like; part of the simulator's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RecordConfig {
    /// Share of ids (chosen by hashing the id) that answer `matched: 3`.
    pub not_found_share: f64,
    /// Ids starting with this answer `matched: 3` too.
    pub not_found_prefix: String,
    /// Share of ids that are still sending when first fetched.
    pub sending_share: f64,
    /// How many answers such an id gives while still sending before it is final.
    pub sending_fetches: u32,
    /// The cost switch, for replay tests.
    pub cost_change: CostChange,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            not_found_share: 0.02,
            not_found_prefix: NOT_FOUND_PREFIX.to_owned(),
            sending_share: 0.10,
            sending_fetches: 1,
            cost_change: CostChange::default(),
        }
    }
}

/// Ids with this prefix always answer `matched: 3` (no such id).
pub const NOT_FOUND_PREFIX: &str = "missing-";

/// Changes the cost of `share` of the records (chosen by hashing the id with `epoch`):
/// the first priced attempt costs [`COST_DELTA`] more, in both its quotation amount and
/// its settlement amount. A new epoch picks a new set of ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CostChange {
    pub share: f64,
    pub epoch: u32,
}

/// What the cost switch adds to a changed record's first priced attempt.
pub const COST_DELTA: Decimal = Decimal::from_parts(1, 0, 0, false, 3); // 0.001

/// How a record is looked up.
#[derive(Debug, Clone, Copy)]
pub enum Lookup<'a> {
    VerificationId(&'a str),
    OrderId { app_id: &'a str, order_id: &'a str },
}

impl Lookup<'_> {
    /// The key the simulator counts fetches under.
    pub fn key(&self) -> String {
        match self {
            Lookup::VerificationId(id) => (*id).to_owned(),
            Lookup::OrderId { order_id, .. } => format!("order:{order_id}"),
        }
    }
}

/// One record answer.
#[derive(Debug, Clone)]
pub struct Served {
    pub data: Value,
    /// False while the record is still sending.
    pub final_answer: bool,
    /// False for `matched: 3`.
    pub found: bool,
    /// True when the cost switch changed this answer's money.
    pub cost_changed: bool,
}

struct Country {
    mcc: i64,
    mnc: &'static [i64],
    dial: &'static str,
    /// Quotation-currency (USD) price per SMS.
    sms_price: &'static str,
    /// USD per minute.
    call_rate: &'static str,
}

const COUNTRIES: &[Country] = &[
    Country {
        mcc: 460,
        mnc: &[0, 1, 11],
        dial: "86",
        sms_price: "0.0350",
        call_rate: "0.138",
    },
    Country {
        mcc: 404,
        mnc: &[10, 45, -1],
        dial: "91",
        sms_price: "0.0024",
        call_rate: "0.0410",
    },
    Country {
        mcc: 310,
        mnc: &[260, 410],
        dial: "1",
        sms_price: "0.0075",
        call_rate: "0.0130",
    },
    Country {
        mcc: 234,
        mnc: &[10, 15, 30],
        dial: "44",
        sms_price: "0.0330",
        call_rate: "0.0980",
    },
    Country {
        mcc: 262,
        mnc: &[1, 2, 3],
        dial: "49",
        sms_price: "0.0710",
        call_rate: "0.1650",
    },
    Country {
        mcc: 510,
        mnc: &[10, 11],
        dial: "62",
        sms_price: "0.2800",
        call_rate: "0.3120",
    },
    Country {
        mcc: 639,
        mnc: &[2, 3],
        dial: "254",
        sms_price: "0.1530",
        call_rate: "0.2050",
    },
    Country {
        mcc: 724,
        mnc: &[5, 11],
        dial: "55",
        sms_price: "0.0190",
        call_rate: "0.0720",
    },
];

/// (currency, quotation-to-settlement rate).
const SETTLEMENT: &[(&str, &str)] = &[("USD", "1"), ("EUR", "0.938"), ("CNY", "7.12")];

#[derive(Clone, Copy, PartialEq)]
enum Channel {
    Sms,
    Call,
    Sna,
}

impl Channel {
    fn name(self) -> &'static str {
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

impl RecordConfig {
    /// True when `id` answers `matched: 3`.
    pub fn is_missing(&self, seed: u64, id: &str) -> bool {
        id.starts_with(&self.not_found_prefix)
            || Draw::new(seed, id).chance("missing", self.not_found_share)
    }

    /// True when the cost switch changes the final record for `lookup`: the switch
    /// picked it and it has a priced attempt.
    pub fn cost_changed(&self, seed: u64, lookup: Lookup) -> bool {
        self.serve(seed, lookup, u32::MAX).cost_changed
    }

    fn picked_for_cost_change(&self, seed: u64, lookup: Lookup) -> bool {
        Draw::new(seed, format!("{}:{}", self.cost_change.epoch, lookup.key()))
            .chance("cost", self.cost_change.share)
    }

    /// The record for `lookup`, as it looks after `answered` earlier answers.
    pub fn serve(&self, seed: u64, lookup: Lookup, answered: u32) -> Served {
        let key = lookup.key();
        let draw = Draw::new(seed, key.as_str());
        if self.is_missing(seed, lookup_id(lookup)) {
            return Served {
                data: missing(lookup),
                final_answer: true,
                found: false,
                cost_changed: false,
            };
        }
        let sending = draw.chance("sending", self.sending_share) && answered < self.sending_fetches;
        let generator = Gen {
            draw: &draw,
            by_order: matches!(lookup, Lookup::OrderId { .. }),
            strings: draw.chance("ints-as-strings", 0.15),
            money_numbers: draw.chance("money-as-numbers", 0.15),
            offset: *draw.pick("offset", &[8 * 3600, 8 * 3600, 8 * 3600, 0, 19_800]),
            cost_delta: self
                .picked_for_cost_change(seed, lookup)
                .then_some(COST_DELTA),
        };
        let (data, priced) = generator.record(lookup, sending);
        Served {
            data,
            final_answer: !sending,
            found: true,
            cost_changed: priced && generator.cost_delta.is_some(),
        }
    }
}

fn lookup_id<'a>(lookup: Lookup<'a>) -> &'a str {
    match lookup {
        Lookup::VerificationId(id) => id,
        Lookup::OrderId { order_id, .. } => order_id,
    }
}

fn missing(lookup: Lookup) -> Value {
    let verifications = json!({
        "matched": 3, "verifiedDate": null, "oriReceiver": null, "channel": null, "orderId": null
    });
    match lookup {
        Lookup::VerificationId(id) => {
            json!({"verificationId": id, "verifications": verifications, "sms": null, "call": null})
        }
        Lookup::OrderId { order_id, .. } => {
            json!({"orderId": order_id, "flowId": null, "verifications": verifications, "sms": [], "call": [], "sna": []})
        }
    }
}

struct Gen<'a> {
    draw: &'a Draw,
    by_order: bool,
    /// Integers rendered as strings ("460").
    strings: bool,
    /// Money rendered as JSON numbers (0.035) instead of strings.
    money_numbers: bool,
    /// The UTC offset times are written in, in seconds.
    offset: i32,
    cost_delta: Option<Decimal>,
}

impl Gen<'_> {
    /// The record's `data`, and whether any attempt carries a price.
    fn record(&self, lookup: Lookup, sending: bool) -> (Value, bool) {
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
            let attempt_sending = sending && is_last;
            let delta = if !priced { self.cost_delta } else { None };
            let (value, has_price) = match step.0 {
                Channel::Sms => self.sms(i, country, at, step.1, attempt_sending, delta),
                Channel::Call => self.call(i, country, at, step.1, attempt_sending, delta),
                Channel::Sna => self.sna(i, country, at, step.1, attempt_sending, delta),
            };
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

    fn sms(
        &self,
        i: usize,
        c: &Country,
        at: DateTime<Utc>,
        ok: bool,
        sending: bool,
        delta: Option<Decimal>,
    ) -> (Value, bool) {
        let d = Draw::new(0, format!("{}:sms{i}", self.draw.bits("attempt")));
        let count = 1 + d.below("count", 3) as i64;
        let price = dec(c.sms_price);
        let pay = price * Decimal::from(count) + delta.unwrap_or_default();
        let mut o = Map::new();
        o.insert("submitTm".into(), self.time(at));
        o.insert("sendTm".into(), self.time(at + Duration::seconds(1)));
        o.insert(
            "doneTm".into(),
            if sending {
                Value::Null
            } else {
                self.time(at + Duration::seconds(2 + d.below("done", 9) as i64))
            },
        );
        o.insert("mcc".into(), self.int(c.mcc));
        o.insert("mnc".into(), self.int(*d.pick("mnc", c.mnc)));
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
        let status = if sending {
            -1
        } else if ok {
            0
        } else {
            1
        };
        o.insert("status".into(), self.int(status));
        o.insert(
            "reason".into(),
            match status {
                -1 => Value::Null,
                0 => Value::from(*d.pick("ok-reason", &["success", "DELIVRD"])),
                _ => Value::from(*d.pick("fail-reason", &["UNDELIV", "EXPIRED", "REJECTD"])),
            },
        );
        self.settle(&d, &mut o, price, count, delta);
        (Value::Object(o), true)
    }

    fn call(
        &self,
        i: usize,
        c: &Country,
        at: DateTime<Utc>,
        ok: bool,
        sending: bool,
        delta: Option<Decimal>,
    ) -> (Value, bool) {
        let d = Draw::new(0, format!("{}:call{i}", self.draw.bits("attempt")));
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
        o.insert(
            "hangupTime".into(),
            if sending {
                Value::Null
            } else {
                self.time(at + Duration::seconds(6 + duration))
            },
        );
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
        o.insert("mcc".into(), self.int(c.mcc));
        o.insert("mnc".into(), self.int(*d.pick("mnc", c.mnc)));
        let minutes = Decimal::from(charged) / Decimal::from(60);
        self.settle_amount(&d, &mut o, rate, minutes, delta);
        (Value::Object(o), true)
    }

    fn sna(
        &self,
        i: usize,
        c: &Country,
        at: DateTime<Utc>,
        ok: bool,
        sending: bool,
        delta: Option<Decimal>,
    ) -> (Value, bool) {
        let d = Draw::new(0, format!("{}:sna{i}", self.draw.bits("attempt")));
        let mut o = Map::new();
        o.insert("postVerificationTime".into(), self.time(at));
        o.insert(
            "verificationBackTime".into(),
            if sending {
                Value::Null
            } else {
                self.time(at + Duration::seconds(1 + d.below("back", 3) as i64))
            },
        );
        o.insert("mcc".into(), self.int(c.mcc));
        o.insert("mnc".into(), self.int(*d.pick("mnc", c.mnc)));
        let status = if sending {
            -1
        } else if ok {
            0
        } else {
            1
        };
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
        let priced = self.settle(&d, &mut o, dec("0.0100"), 1, delta);
        (Value::Object(o), priced)
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

    fn int(&self, v: i64) -> Value {
        if self.strings {
            Value::from(v.to_string())
        } else {
            Value::from(v)
        }
    }

    fn money(&self, v: Decimal) -> Value {
        if self.money_numbers {
            Number::from_str(&v.to_string())
                .map_or_else(|_| Value::from(v.to_string()), Value::Number)
        } else {
            Value::from(v.to_string())
        }
    }

    fn time(&self, t: DateTime<Utc>) -> Value {
        let offset = FixedOffset::east_opt(self.offset).expect("offsets are in range");
        Value::from(
            t.with_timezone(&offset)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        )
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("the simulator's price tables are decimals")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Record;

    #[test]
    fn the_same_id_always_yields_the_same_final_record() {
        let cfg = RecordConfig::default();
        for i in 0..200 {
            let id = format!("v{i}");
            let a = cfg.serve(7, Lookup::VerificationId(&id), 5);
            let b = cfg.serve(7, Lookup::VerificationId(&id), 9);
            assert_eq!(a.data, b.data);
            assert!(a.final_answer);
        }
    }

    #[test]
    fn every_generated_record_parses() {
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

    #[test]
    fn missing_ids_by_prefix_and_by_share() {
        let cfg = RecordConfig {
            not_found_share: 0.5,
            ..RecordConfig::default()
        };
        let served = cfg.serve(1, Lookup::VerificationId("missing-42"), 0);
        assert!(!served.found);
        assert_eq!(served.data["verifications"]["matched"], 3);
        let missing = (0..1_000)
            .filter(|i| cfg.is_missing(1, &format!("x{i}")))
            .count();
        assert!((400..600).contains(&missing), "{missing}");
    }

    #[test]
    fn the_cost_switch_changes_exactly_the_chosen_share() {
        let off = RecordConfig::default();
        let on = RecordConfig {
            cost_change: CostChange {
                share: 0.1,
                epoch: 1,
            },
            ..RecordConfig::default()
        };
        let mut changed = 0;
        for i in 0..2_000 {
            let id = format!("v{i}");
            let lookup = Lookup::VerificationId(&id);
            let before = off.serve(5, lookup, 9).data;
            let after = on.serve(5, lookup, 9).data;
            assert_eq!(before != after, on.cost_changed(5, lookup), "{id}");
            changed += usize::from(before != after);
        }
        assert!((140..260).contains(&changed), "{changed}");
    }
}
