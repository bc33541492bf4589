//! The records the simulator serves, generated from the seed and the id.
//!
//! Every shape on the provider's pages appears: sms only, call only, sna, sms falling
//! back to call, two sms attempts, still sending (final after a number of fetches),
//! failed; single objects and arrays; `null` and `""` fields; both currency field
//! names; numbers as strings and money as JSON numbers; times in several offsets.
//! The same id always yields the same final record.

mod attempts;
mod generate;
mod tables;

use crate::draw::Draw;
use generate::Gen;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

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

#[cfg(test)]
mod tests {
    use super::*;

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
