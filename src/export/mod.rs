//! The finance export: attempts (or a daily or monthly summary of them) for a range of
//! sent_at, as CSV streamed from PostgreSQL to the writer: memory does not grow with
//! the number of rows.
//!
//! PostgreSQL writes the rows itself (`COPY (query) TO STDOUT` in CSV, [`sql`]); the
//! export passes its bytes on, rewriting only the cells whose text must differ from
//! PostgreSQL's, and adds up the totals as the rows go by ([`copy`]). So the manifest
//! describes exactly the bytes written, and the export runs at the speed of `COPY`.
//!
//! Money is written exactly as stored (PostgreSQL's `numeric` text: no float, no
//! exponent, no rounding). Times are RFC 3339 in UTC; the zone (`--timezone`) decides
//! only how dates are read and where a summary's days and months start. A text cell that
//! a spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, tab or CR)
//! gets a leading `'`; numeric columns stay plain numbers.

mod bound;
mod cell;
mod copy;
mod file;
mod sql;
mod totals;

pub use bound::{Bound, parse_bound};
pub use file::write_file;
pub use totals::Totals;

use crate::db::{Db, DbError};
use crate::zone::Zone;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// `--level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// One row per attempt.
    Attempt,
    /// One row per (day, app_id, mcc, channel, settle_currency).
    #[value(alias = "day")]
    Summary,
    /// One row per (month, app_id, mcc, channel, settle_currency): the days summed.
    Month,
}

impl Level {
    /// The columns of this level, in order.
    pub fn columns(self) -> &'static [&'static str] {
        match self {
            Level::Attempt => ATTEMPT_COLUMNS,
            Level::Summary => SUMMARY_COLUMNS,
            Level::Month => MONTH_COLUMNS,
        }
    }

    /// The summary's period as PostgreSQL's `date_trunc` names it; none for attempts.
    pub(crate) fn period(self) -> Option<&'static str> {
        match self {
            Level::Attempt => None,
            Level::Summary => Some("day"),
            Level::Month => Some("month"),
        }
    }
}

/// What to export.
#[derive(Debug, Clone, Serialize)]
pub struct Query {
    /// Sends with sent_at at or after this...
    pub from: DateTime<Utc>,
    /// ...and before this.
    pub to: DateTime<Utc>,
    /// Only these apps; all when empty.
    pub app_ids: Vec<String>,
    pub level: Level,
    /// Where the summary's days and months start (the bounds are already instants).
    pub timezone: Zone,
}

/// The attempt level's columns, in order.
pub const ATTEMPT_COLUMNS: &[&str] = &[
    "app_id",
    "verification_id",
    "order_id",
    "sent_at",
    "channel",
    "attempt",
    "status",
    "mcc",
    "mnc",
    "submitted_at",
    "completed_at",
    "units",
    "amount",
    "settle_price",
    "settle_amount",
    "settle_currency",
    "quote_exchange",
    "reason",
    "rate",
    "send_state",
];

/// The summary level's columns, in order.
pub const SUMMARY_COLUMNS: &[&str] = &[
    "day",
    "app_id",
    "mcc",
    "channel",
    "settle_currency",
    "sends",
    "attempts",
    "units",
    "amount",
    "settle_amount",
];

/// The month level's columns, in order: the summary's, by month (`2026-11`).
pub const MONTH_COLUMNS: &[&str] = &[
    "month",
    "app_id",
    "mcc",
    "channel",
    "settle_currency",
    "sends",
    "attempts",
    "units",
    "amount",
    "settle_amount",
];

/// The export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot write the export")]
    Write(#[source] std::io::Error),
    #[error("the database answered a value the export cannot read in column {column}: {value:?}")]
    Value { column: &'static str, value: String },
    #[error("the database answered a row the export cannot read: {0:?}")]
    Row(String),
}

impl From<sqlx::Error> for ExportError {
    fn from(e: sqlx::Error) -> Self {
        ExportError::Db(DbError::Query(e))
    }
}

/// The manifest written beside `--out FILE` as `FILE.manifest.json`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub file: String,
    pub rows: u64,
    pub sha256: String,
    pub totals: Totals,
    pub parameters: Query,
    pub columns: Vec<&'static str>,
    pub generated_at: DateTime<Utc>,
}

/// Whether PostgreSQL knows the time zone `name` (its tz data may differ from ours).
pub async fn zone_known(db: &Db, name: &str) -> Result<bool, ExportError> {
    db.counted(1);
    match sqlx::query("SELECT now() AT TIME ZONE $1")
        .bind(name)
        .execute(db.pool())
        .await
    {
        Ok(_) => Ok(true),
        // invalid_parameter_value: "time zone ... not recognized".
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("22023") => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Streams the export to `out`; answers the totals and the SHA-256 of the bytes.
///
/// One read-only transaction: the statement is made (its values quoted by PostgreSQL),
/// then `COPY` streams the rows.
pub async fn write_csv(
    db: &Db,
    query: &Query,
    out: impl std::io::Write,
) -> Result<(Totals, String), ExportError> {
    let mut tx = db.pool().begin().await?;
    db.counted(1);
    let statement = sql::copy_statement(&mut tx, query).await?;
    db.counted(1);
    let rows = tx.copy_out_raw(&statement).await?;
    let written = copy::rewrite(rows, query.level, out).await?;
    tx.commit().await?;
    Ok(written)
}
