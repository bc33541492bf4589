//! Loading CSV files: streamed (a reading thread hands over batches through a bounded
//! queue, so memory does not grow with the file), each bad line reported with its line
//! number and reason while the good lines load, idempotent.

use crate::db::apps;
use crate::db::conversions::{self, Kind, NewConversion};
use crate::db::sends::{self, NewSend};
use crate::db::{Db, DbError};
use crate::record::parse_time;
use chrono::{DateTime, Utc};
use csv::StringRecord;
use std::collections::{HashMap, HashSet};
use std::io::Read;
use tokio::sync::mpsc;

/// Lines per insert.
const BATCH: usize = 1_000;

/// The file cannot be imported at all.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read the CSV header")]
    Header(#[source] csv::Error),
    #[error("the CSV header lacks the column(s) {0}; expected {1}")]
    MissingColumns(String, String),
    #[error("cannot read the input")]
    Read(#[source] std::io::Error),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A line that was not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub line: u64,
    pub reason: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Data lines read (the header aside).
    pub lines: u64,
    pub inserted: u64,
    /// Good lines whose id was already loaded.
    pub duplicates: u64,
    pub rejected: u64,
}

/// Column positions by name, checked against the expected header.
pub struct Columns(HashMap<String, usize>);

impl Columns {
    fn new(header: &StringRecord, expected: &[&str]) -> Result<Self, ImportError> {
        let found: HashMap<String, usize> = header
            .iter()
            .enumerate()
            .map(|(i, name)| {
                (
                    name.trim()
                        .trim_start_matches('\u{feff}')
                        .to_ascii_lowercase(),
                    i,
                )
            })
            .collect();
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|c| !found.contains_key(*c))
            .collect();
        if !missing.is_empty() {
            return Err(ImportError::MissingColumns(
                missing.join(", "),
                expected.join(","),
            ));
        }
        Ok(Self(found))
    }

    /// The trimmed cell, `None` when empty.
    pub fn get<'r>(&self, record: &'r StringRecord, column: &str) -> Option<&'r str> {
        let i = *self.0.get(column)?;
        record.get(i).map(str::trim).filter(|s| !s.is_empty())
    }
}

/// One parsed batch, or one bad line, from the reading thread.
enum Read_<T> {
    Rows(Vec<T>),
    Bad(Rejected),
    Failed(std::io::Error),
}

/// Reads `input` as CSV with the `expected` columns, parsing each line with `parse`;
/// calls `insert` for each batch of good rows and `on_rejected` for each bad line.
pub async fn import<T, P, I, Fut>(
    input: Box<dyn Read + Send>,
    expected: &'static [&'static str],
    parse: P,
    mut insert: I,
    mut on_rejected: impl FnMut(&Rejected),
) -> Result<ImportReport, ImportError>
where
    T: Send + 'static,
    P: Fn(&Columns, &StringRecord) -> Result<T, String> + Send + 'static,
    I: FnMut(Vec<T>) -> Fut,
    Fut: Future<Output = Result<u64, DbError>>,
{
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::None)
        .from_reader(input);
    let header = reader.headers().map_err(ImportError::Header)?.clone();
    let columns = Columns::new(&header, expected)?;
    let width = header.len();
    let (tx, mut rx) = mpsc::channel::<Read_<T>>(4);
    let reading = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(BATCH);
        let mut record = StringRecord::new();
        let mut lines = 0u64;
        loop {
            let line = reader.position().line() + 1;
            match reader.read_record(&mut record) {
                Ok(false) => break,
                Ok(true) => {
                    lines += 1;
                    let line = record.position().map_or(line, |p| p.line());
                    let parsed = if record.len() != width {
                        Err(format!("{} fields, the header has {width}", record.len()))
                    } else {
                        parse(&columns, &record)
                    };
                    match parsed {
                        Ok(row) => {
                            batch.push(row);
                            if batch.len() == BATCH
                                && tx
                                    .blocking_send(Read_::Rows(std::mem::take(&mut batch)))
                                    .is_err()
                            {
                                return lines;
                            }
                        }
                        Err(reason) => {
                            if tx
                                .blocking_send(Read_::Bad(Rejected { line, reason }))
                                .is_err()
                            {
                                return lines;
                            }
                        }
                    }
                }
                Err(e) => {
                    lines += 1;
                    let failure = match e.kind() {
                        csv::ErrorKind::Io(_) => {
                            Read_::Failed(std::io::Error::other(e.to_string()))
                        }
                        _ => Read_::Bad(Rejected {
                            line: e.position().map_or(line, |p| p.line()),
                            reason: format!("not valid CSV: {e}"),
                        }),
                    };
                    let fatal = matches!(failure, Read_::Failed(_));
                    if tx.blocking_send(failure).is_err() || fatal {
                        return lines;
                    }
                }
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send(Read_::Rows(batch));
        }
        lines
    });

    let mut report = ImportReport::default();
    let mut good = 0u64;
    while let Some(item) = rx.recv().await {
        match item {
            Read_::Rows(rows) => {
                good += rows.len() as u64;
                report.inserted += insert(rows).await?;
            }
            Read_::Bad(rejected) => {
                report.rejected += 1;
                on_rejected(&rejected);
            }
            Read_::Failed(e) => return Err(ImportError::Read(e)),
        }
    }
    report.lines = reading.await.unwrap_or(0);
    report.duplicates = good - report.inserted;
    Ok(report)
}

/// The columns of a sends file.
pub const SEND_COLUMNS: &[&str] = &[
    "app_id",
    "verification_id",
    "order_id",
    "number",
    "channel",
    "sent_at",
];

/// A kind of row the importer loads: its CSV columns, how a line is read (apps must be
/// registered first), how a batch is stored.
pub trait Loadable: Sized + Send + 'static {
    const COLUMNS: &'static [&'static str];
    fn parse(
        columns: &Columns,
        record: &StringRecord,
        known_apps: &HashSet<String>,
    ) -> Result<Self, String>;
    fn insert(db: &Db, rows: &[Self]) -> impl Future<Output = Result<u64, sqlx::Error>>;
}

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

/// Imports rows of `T` from CSV.
pub async fn import_rows<T: Loadable>(
    db: &Db,
    input: Box<dyn Read + Send>,
    on_rejected: impl FnMut(&Rejected),
) -> Result<ImportReport, ImportError> {
    let known = apps::known(db).await.map_err(DbError::from)?;
    import(
        input,
        T::COLUMNS,
        move |columns, record| T::parse(columns, record, &known),
        |rows| async move { T::insert(db, &rows).await.map_err(DbError::from) },
        on_rejected,
    )
    .await
}

/// Imports sends.
pub async fn import_sends(
    db: &Db,
    input: Box<dyn Read + Send>,
    on_rejected: impl FnMut(&Rejected),
) -> Result<ImportReport, ImportError> {
    import_rows::<NewSend>(db, input, on_rejected).await
}

/// The columns of a conversions file.
pub const CONVERSION_COLUMNS: &[&str] = &["kind", "app_id", "message_id", "number", "converted_at"];

/// Imports conversions.
pub async fn import_conversions(
    db: &Db,
    input: Box<dyn Read + Send>,
    on_rejected: impl FnMut(&Rejected),
) -> Result<ImportReport, ImportError> {
    import_rows::<NewConversion>(db, input, on_rejected).await
}

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 128;

/// Checks an id: printable ASCII without spaces, at most [`MAX_ID_LEN`] characters.
pub fn check_id(column: &str, id: &str) -> Result<(), String> {
    let len = id.chars().count();
    if len > MAX_ID_LEN {
        return Err(format!(
            "{column} is {len} characters long (at most {MAX_ID_LEN})"
        ));
    }
    if id.chars().any(char::is_whitespace) {
        return Err(format!("{column} {id:?} contains a space"));
    }
    if !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{column} {id:?} has characters other than printable ASCII"
        ));
    }
    Ok(())
}

/// A phone number: digits, an optional leading `+`, 5 to 20 digits.
pub fn check_number(number: &str) -> Result<(), String> {
    let digits = number.strip_prefix('+').unwrap_or(number);
    if (5..=20).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!(
            "number {number:?} is not a phone number (5-20 digits)"
        ))
    }
}

/// The app id of a line, which must be registered.
fn known_app<'r>(
    columns: &Columns,
    record: &'r StringRecord,
    known: &HashSet<String>,
) -> Result<&'r str, String> {
    let app_id = columns.get(record, "app_id").ok_or("app_id is empty")?;
    if known.contains(app_id) {
        Ok(app_id)
    } else if crate::db::apps::valid_app_id(app_id) {
        Err(format!(
            "unknown app_id {app_id:?} (register it with `otp-reconcile app add {app_id}`)"
        ))
    } else {
        Err(format!(
            "app_id \"{}\" is not an app id (4-32 letters, digits, - or _)",
            crate::text::escape(app_id)
        ))
    }
}

/// An RFC 3339 time with an offset, in `column`.
fn time_in(
    columns: &Columns,
    record: &StringRecord,
    column: &str,
) -> Result<DateTime<Utc>, String> {
    let text = columns
        .get(record, column)
        .ok_or_else(|| format!("{column} is empty"))?;
    parse_time(text).map_err(|e| format!("{column} {text:?}: {e}"))
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
