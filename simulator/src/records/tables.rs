//! The simulator's price list: the countries records come from, their SMS and call
//! prices in the quotation currency (USD), and the settlement currencies.

use rust_decimal::Decimal;
use std::str::FromStr;

/// One country: its MCC, some MNCs, its dialling code and prices.
pub(super) struct Country {
    pub mcc: i64,
    pub mnc: &'static [i64],
    pub dial: &'static str,
    /// Quotation-currency (USD) price per SMS.
    pub sms_price: &'static str,
    /// USD per minute.
    pub call_rate: &'static str,
}

pub(super) const COUNTRIES: &[Country] = &[
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
pub(super) const SETTLEMENT: &[(&str, &str)] = &[("USD", "1"), ("EUR", "0.938"), ("CNY", "7.12")];

/// A price from the tables.
pub(super) fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("the simulator's price tables are decimals")
}
