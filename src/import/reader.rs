//! The streamed CSV reader: the header checked against the expected columns, lines
//! parsed on a reading thread and handed over in batches through a bounded queue.

use super::{ImportError, ImportReport, Rejected};
use crate::db::DbError;
use csv::StringRecord;
use std::collections::HashMap;
use std::io::Read;
use tokio::sync::mpsc;

/// Lines per insert.
const BATCH: usize = 1_000;

/// Column positions by name, checked against the expected header.
pub struct Columns(HashMap<String, usize>);

impl Columns {
    pub(super) fn new(header: &StringRecord, expected: &[&str]) -> Result<Self, ImportError> {
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
