//! A sends file: one send per line, by verification id or order id.

use super::fields::{check_id, check_number, known_app, time_in};
use super::{Columns, ImportError, ImportReport, Loadable, Rejected, import_rows};
use crate::db::Db;
use crate::db::sends::{self, NewSend};
use csv::StringRecord;
use std::collections::HashSet;
use std::io::Read;

/// The columns of a sends file.
pub const SEND_COLUMNS: &[&str] = &[
    "app_id",
    "verification_id",
    "order_id",
    "number",
    "channel",
    "sent_at",
];

impl Loadable for NewSend {
    const COLUMNS: &'static [&'static str] = SEND_COLUMNS;
    fn parse(
        columns: &Columns,
        record: &StringRecord,
        known: &HashSet<String>,
    ) -> Result<Self, String> {
        parse_send(columns, record, known)
    }
    fn insert(db: &Db, rows: &[Self]) -> impl Future<Output = Result<u64, sqlx::Error>> {
        sends::insert(db, rows)
    }
}

/// Imports sends.
pub async fn import_sends(
    db: &Db,
    input: Box<dyn Read + Send>,
    on_rejected: impl FnMut(&Rejected),
) -> Result<ImportReport, ImportError> {
    import_rows::<NewSend>(db, input, on_rejected).await
}

fn parse_send(
    columns: &Columns,
    record: &StringRecord,
    known: &HashSet<String>,
) -> Result<NewSend, String> {
    let app_id = known_app(columns, record, known)?;
    let verification_id = columns.get(record, "verification_id");
    let order_id = columns.get(record, "order_id");
    if verification_id.is_none() && order_id.is_none() {
        return Err("neither verification_id nor order_id is set".into());
    }
    if let Some(id) = verification_id {
        check_id("verification_id", id)?;
    }
    if let Some(id) = order_id {
        check_id("order_id", id)?;
    }
    let number = columns.get(record, "number");
    if let Some(n) = number {
        check_number(n)?;
    }
    let channel = columns.get(record, "channel").map(str::to_ascii_lowercase);
    if let Some(c) = &channel
        && !["sms", "call", "sna"].contains(&c.as_str())
    {
        return Err(format!("channel {c:?} is not sms, call or sna"));
    }
    let sent_at = time_in(columns, record, "sent_at")?;
    Ok(NewSend {
        app_id: app_id.to_owned(),
        verification_id: verification_id.map(str::to_owned),
        order_id: order_id.map(str::to_owned),
        number: number.map(str::to_owned),
        channel,
        sent_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<NewSend, String> {
        let header = StringRecord::from(SEND_COLUMNS.to_vec());
        let columns = Columns::new(&header, SEND_COLUMNS).unwrap();
        let record = StringRecord::from(line.split(',').collect::<Vec<_>>());
        let known: HashSet<String> = ["app1".to_owned()].into();
        parse_send(&columns, &record, &known)
    }

    #[test]
    fn good_lines() {
        let s = parse("app1,v1,,+919876543210,SMS,2026-01-01T08:00:00+08:00").unwrap();
        assert_eq!(s.verification_id.as_deref(), Some("v1"));
        assert_eq!(s.order_id, None);
        assert_eq!(s.channel.as_deref(), Some("sms"));
        assert_eq!(s.sent_at.to_rfc3339(), "2026-01-01T00:00:00+00:00");
        assert!(parse("app1,,o1,,,2026-01-01T00:00:00Z").is_ok());
    }

    #[test]
    fn bad_lines_say_why() {
        let long = "x".repeat(5_000);
        for (line, why) in [
            (
                "app1,,,,,2026-01-01T00:00:00Z",
                "neither verification_id nor order_id",
            ),
            ("nope,v1,,,,2026-01-01T00:00:00Z", "unknown app_id \"nope\""),
            (",v1,,,,2026-01-01T00:00:00Z", "app_id is empty"),
            ("app1,v 1,,,,2026-01-01T00:00:00Z", "contains a space"),
            (
                &format!("app1,{long},,,,2026-01-01T00:00:00Z"),
                "5000 characters long",
            ),
            ("app1,v1,,12ab,,2026-01-01T00:00:00Z", "not a phone number"),
            ("app1,v1,,,fax,2026-01-01T00:00:00Z", "not sms, call or sna"),
            ("app1,v1,,,,yesterday", "sent_at \"yesterday\""),
            ("app1,v1,,,,2026-01-01T00:00:00", "without a UTC offset"),
            ("app1,v1,,,,", "sent_at is empty"),
        ] {
            let err = parse(line).unwrap_err();
            assert!(err.contains(why), "{line}: {err}");
        }
    }
}
