//! A conversions file: one OTP or SMS conversion per line, to post back.

use super::fields::{check_id, check_number, known_app, time_in};
use super::{Columns, ImportError, ImportReport, Loadable, Rejected, import_rows};
use crate::db::Db;
use crate::db::conversions::{self, Kind, NewConversion};
use csv::StringRecord;
use std::collections::HashSet;
use std::io::Read;

/// The columns of a conversions file.
pub const CONVERSION_COLUMNS: &[&str] = &["kind", "app_id", "message_id", "number", "converted_at"];

impl Loadable for NewConversion {
    const COLUMNS: &'static [&'static str] = CONVERSION_COLUMNS;
    fn parse(
        columns: &Columns,
        record: &StringRecord,
        known: &HashSet<String>,
    ) -> Result<Self, String> {
        parse_conversion(columns, record, known)
    }
    fn insert(db: &Db, rows: &[Self]) -> impl Future<Output = Result<u64, sqlx::Error>> {
        conversions::insert(db, rows)
    }
}

/// Imports conversions.
pub async fn import_conversions(
    db: &Db,
    input: Box<dyn Read + Send>,
    on_rejected: impl FnMut(&Rejected),
) -> Result<ImportReport, ImportError> {
    import_rows::<NewConversion>(db, input, on_rejected).await
}

fn parse_conversion(
    columns: &Columns,
    record: &StringRecord,
    known: &HashSet<String>,
) -> Result<NewConversion, String> {
    let kind = columns.get(record, "kind").ok_or("kind is empty")?;
    let kind = Kind::parse(&kind.to_ascii_lowercase())
        .ok_or_else(|| format!("kind {kind:?} is not otp or sms"))?;
    let app_id = known_app(columns, record, known)?;
    let message_id = columns
        .get(record, "message_id")
        .ok_or("message_id is empty")?;
    check_id("message_id", message_id)?;
    let number = columns.get(record, "number");
    if let Some(n) = number {
        check_number(n)?;
    }
    Ok(NewConversion {
        kind,
        app_id: app_id.to_owned(),
        message_id: message_id.to_owned(),
        number: number.map(str::to_owned),
        converted_at: time_in(columns, record, "converted_at")?,
    })
}
