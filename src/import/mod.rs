//! Loading CSV files: streamed (a reading thread hands over batches through a bounded
//! queue, so memory does not grow with the file), each bad line reported with its line
//! number and reason while the good lines load, idempotent.
//!
//! [`reader`] streams any CSV; [`sends`] and [`conversions`] say how their lines are
//! read and stored, with the field checks they share in [`fields`].

mod conversions;
mod fields;
mod reader;
mod sends;

pub use conversions::{CONVERSION_COLUMNS, import_conversions};
pub use fields::{MAX_ID_LEN, check_id, check_number};
pub use reader::{Columns, import};
pub use sends::{SEND_COLUMNS, import_sends};

use crate::db::apps;
use crate::db::{Db, DbError};
use csv::StringRecord;
use std::collections::HashSet;
use std::io::Read;

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
