//! The manifest's totals, added up from the cells as they are written.

use super::{ExportError, Level};
use rust_decimal::Decimal;
use serde::Serialize;
use std::collections::BTreeMap;

/// Totals of what was written, for the manifest.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub rows: u64,
    /// Sum of `amount` (the provider's quotation currency).
    pub amount: Decimal,
    /// Sum of `settle_amount` per `settle_currency` ("" when the provider gave none).
    pub settle_amount: BTreeMap<String, Decimal>,
    pub units: i64,
}

/// Where the columns the totals add up sit in a level's rows: found once per export,
/// not once per row.
pub(super) struct TotalColumns {
    pub amount: usize,
    pub settle_amount: usize,
    pub settle_currency: usize,
    pub units: usize,
}

impl TotalColumns {
    pub fn of(level: Level) -> Self {
        let at = |name: &str| {
            level
                .columns()
                .iter()
                .position(|c| *c == name)
                .expect("every level has the total columns")
        };
        Self {
            amount: at("amount"),
            settle_amount: at("settle_amount"),
            settle_currency: at("settle_currency"),
            units: at("units"),
        }
    }
}

impl Totals {
    /// Adds one row: its money and units as written (empty is zero), and its settlement
    /// money under its currency as stored (the `'` a formula guard put in front, and any
    /// the currency began with, left out).
    pub(super) fn add(
        &mut self,
        amount: &str,
        settle_amount: &str,
        settle_currency: &str,
        units: &str,
    ) -> Result<(), ExportError> {
        let amount = decimal(amount, "amount")?;
        let settle = decimal(settle_amount, "settle_amount")?;
        self.rows += 1;
        self.amount += amount;
        let currency = settle_currency.trim_start_matches('\'');
        match self.settle_amount.get_mut(currency) {
            Some(sum) => *sum += settle,
            None => {
                self.settle_amount.insert(currency.to_owned(), settle);
            }
        }
        self.units += units.parse::<i64>().unwrap_or(0);
        Ok(())
    }
}

/// A money cell: PostgreSQL's `numeric` text, exactly; empty (NULL) is zero.
fn decimal(value: &str, column: &'static str) -> Result<Decimal, ExportError> {
    if value.is_empty() {
        return Ok(Decimal::ZERO);
    }
    Decimal::from_str_exact(value).map_err(|_| ExportError::Value {
        column,
        value: value.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_exact_per_currency_as_stored() {
        let mut totals = Totals::default();
        totals.add("0.000002", "1.5", "USD", "2").unwrap();
        totals.add("", "", "", "").unwrap();
        totals
            .add("1", "0.00000000000000000001", "'USD", "x")
            .unwrap();
        totals.add("2", "3", "", "-4").unwrap();
        assert_eq!(totals.rows, 4);
        assert_eq!(totals.amount.to_string(), "3.000002");
        assert_eq!(totals.units, -2);
        assert_eq!(
            totals.settle_amount["USD"].to_string(),
            "1.50000000000000000001"
        );
        assert_eq!(totals.settle_amount[""].to_string(), "3");
        let error = totals.add("NaN", "0", "USD", "0").unwrap_err();
        assert!(
            matches!(
                error,
                ExportError::Value {
                    column: "amount",
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(totals.rows, 4, "a row that cannot be read is not counted");
    }
}
