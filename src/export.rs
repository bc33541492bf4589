//! The finance export: attempts (or a daily or monthly summary of them) for a range of
//! sent_at, as CSV streamed from PostgreSQL to the writer, row by row: memory does not
//! grow with the number of rows.
//!
//! Money is written exactly as stored (PostgreSQL's `numeric` text: no float, no
//! exponent, no rounding). Times are RFC 3339 in UTC; the zone (`--timezone`) decides
//! only how dates are read and where a summary's days and months start. A text cell that
//! a spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, tab or CR)
//! gets a leading `'`; numeric columns stay plain numbers.

use crate::db::{Db, DbError};
use crate::zone::Zone;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use futures::TryStreamExt;
use rust_decimal::Decimal;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;

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
    fn period(self) -> Option<&'static str> {
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
}

impl From<sqlx::Error> for ExportError {
    fn from(e: sqlx::Error) -> Self {
        ExportError::Db(DbError::Query(e))
    }
}

impl From<csv::Error> for ExportError {
    fn from(e: csv::Error) -> Self {
        ExportError::Write(std::io::Error::other(e))
    }
}

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

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

const ATTEMPTS_SQL: &str = "
    SELECT s.app_id, s.verification_id, s.order_id, s.sent_at, a.channel, a.position,
           a.status, a.mcc, a.mnc, a.submitted_at, a.completed_at,
           CASE a.channel WHEN 'sms' THEN a.charge_count WHEN 'call' THEN a.charged_duration END AS units,
           a.amount::text AS amount, a.settle_price::text AS settle_price,
           a.settle_pay::text AS settle_amount, a.settle_currency, a.quote_exchange::text AS quote_exchange,
           a.reason, a.rate::text AS rate, s.state
    FROM sends s
    JOIN attempts a ON a.send_id = s.id
    WHERE s.sent_at >= $1 AND s.sent_at < $2 AND (cardinality($3::text[]) = 0 OR s.app_id = ANY($3))
    ORDER BY s.sent_at, s.id, a.channel, a.position";

// The period ($4: 'day' or 'month') of sent_at in the zone: the local time `AT TIME
// ZONE` an IANA name ($5), plus a fixed offset in seconds east of UTC ($6; 0 for a name).
const SUMMARY_SQL: &str = "
    SELECT date_trunc($4, (s.sent_at AT TIME ZONE $5) + $6::integer * interval '1 second')::date AS period,
           s.app_id, a.mcc, a.channel, a.settle_currency,
           count(DISTINCT s.id) AS sends, count(*) AS attempts,
           sum(CASE a.channel WHEN 'sms' THEN a.charge_count WHEN 'call' THEN a.charged_duration END)::bigint AS units,
           sum(a.amount)::text AS amount, sum(a.settle_pay)::text AS settle_amount
    FROM sends s
    JOIN attempts a ON a.send_id = s.id
    WHERE s.sent_at >= $1 AND s.sent_at < $2 AND (cardinality($3::text[]) = 0 OR s.app_id = ANY($3))
    GROUP BY 1, 2, 3, 4, 5
    ORDER BY 1, 2, 3 NULLS FIRST, 4, 5 NULLS FIRST";

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
pub async fn write_csv(
    db: &Db,
    query: &Query,
    out: impl Write,
) -> Result<(Totals, String), ExportError> {
    let mut writer = csv::WriterBuilder::new().from_writer(Hashing {
        inner: out,
        hash: Sha256::new(),
    });
    let mut totals = Totals::default();
    let columns = query.level.columns();
    let sql = match query.level {
        Level::Attempt => ATTEMPTS_SQL,
        Level::Summary | Level::Month => SUMMARY_SQL,
    };
    let total_columns = TotalColumns::of(query.level);
    writer.write_record(columns)?;
    db.counted(1);
    let mut statement = sqlx::query(sql)
        .bind(query.from)
        .bind(query.to)
        .bind(&query.app_ids);
    if let Some(period) = query.level.period() {
        statement = statement
            .bind(period)
            .bind(query.timezone.sql_name())
            .bind(query.timezone.sql_offset_seconds());
    }
    let mut rows = statement.fetch(db.pool());
    let mut record: Vec<String> = Vec::with_capacity(columns.len());
    while let Some(row) = rows.try_next().await? {
        record.clear();
        match query.level {
            Level::Attempt => attempt_cells(&row, &mut record)?,
            Level::Summary => summary_cells(&row, "%Y-%m-%d", &mut record)?,
            Level::Month => summary_cells(&row, "%Y-%m", &mut record)?,
        }
        total_columns.add(&mut totals, &record)?;
        writer.write_record(&record)?;
    }
    let hashing = writer
        .into_inner()
        .map_err(|e| ExportError::Write(e.into_error()))?;
    let digest = hex::encode(hashing.hash.finalize());
    Ok((totals, digest))
}

/// Writes the export to `path` through a temporary file renamed only on success, then
/// `path.manifest.json` the same way. On failure (a full disk, a file-size limit, the
/// database) and when the future is dropped (a stop signal), neither file is written
/// and no temporary file is left.
///
/// The temporary files are `.NAME.XXXXXX.tmp` beside `path`: unique, so two exports to
/// the same file never share one, and locked (flock) while an export writes them, so
/// the next export to the same file removes those a killed export left and never one
/// still being written.
pub async fn write_file(db: &Db, query: &Query, path: &Path) -> Result<Manifest, ExportError> {
    let tmp = temp_beside(path).map_err(ExportError::Write)?;
    let mut buffered = std::io::BufWriter::with_capacity(1 << 16, tmp.as_file());
    let (totals, sha256) = write_csv(db, query, &mut buffered).await?;
    buffered.flush().map_err(ExportError::Write)?;
    drop(buffered);
    tmp.as_file().sync_all().map_err(ExportError::Write)?;
    let manifest = Manifest {
        file: path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default(),
        rows: totals.rows,
        sha256,
        totals,
        parameters: query.clone(),
        columns: query.level.columns().to_vec(),
        generated_at: Utc::now(),
    };
    let manifest_path = sibling(path, ".manifest.json");
    let manifest_tmp = temp_beside(&manifest_path).map_err(ExportError::Write)?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ExportError::Write(e.into()))?;
    (&mut manifest_tmp.as_file())
        .write_all(&json)
        .and_then(|()| manifest_tmp.as_file().sync_all())
        .map_err(ExportError::Write)?;
    // The manifest first: a CSV is never there without its manifest. If the CSV's
    // rename fails, the manifest goes too.
    manifest_tmp
        .persist(&manifest_path)
        .map_err(|e| ExportError::Write(e.error))?;
    if let Err(e) = tmp.persist(path) {
        let _ = std::fs::remove_file(&manifest_path);
        return Err(ExportError::Write(e.error));
    }
    Ok(manifest)
}

/// A new temporary file `.NAME.XXXXXX.tmp` beside `path`, locked, after removing the
/// ones of the same pattern that no export holds any more (a killed export's). The
/// directory's lock makes the removal and the creation one step for every export
/// into the directory, so a file just created is never taken for an abandoned one.
fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let prefix = temp_prefix(path);
    let guard = std::fs::File::open(dir)?;
    guard.lock()?;
    remove_abandoned_temps(dir, &prefix);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        // As File::create would: 0666 less the umask (tempfile's default is 0600).
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let tmp = builder.tempfile_in(dir)?;
    tmp.as_file().lock()?;
    drop(guard);
    Ok(tmp)
}

/// `.NAME.` for `path` = `DIR/NAME`.
fn temp_prefix(path: &Path) -> String {
    format!(
        ".{}.",
        path.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// Removes `PREFIX` + random letters + `.tmp` files in `dir` that no process holds.
fn remove_abandoned_temps(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(random) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(".tmp"))
        else {
            continue;
        };
        if random.is_empty() || !random.chars().all(|c| c.is_ascii_alphanumeric()) {
            continue;
        }
        let Ok(file) = std::fs::File::open(entry.path()) else {
            continue;
        };
        // Held: an export is writing it. Free: its export died.
        if file.try_lock().is_ok() {
            match std::fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(
                    file = %entry.path().display(),
                    "removed a temporary file an interrupted export left"
                ),
                Err(e) => tracing::warn!(
                    file = %entry.path().display(),
                    error = %e,
                    "cannot remove a temporary file an interrupted export left"
                ),
            }
        }
    }
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn attempt_cells(row: &sqlx::postgres::PgRow, out: &mut Vec<String>) -> Result<(), sqlx::Error> {
    out.push(text(row.try_get("app_id")?));
    out.push(text(row.try_get("verification_id")?));
    out.push(text(row.try_get("order_id")?));
    out.push(time(row.try_get("sent_at")?));
    out.push(text(row.try_get("channel")?));
    out.push(number(row.try_get::<Option<i32>, _>("position")?));
    out.push(number(row.try_get::<Option<i64>, _>("status")?));
    out.push(number(row.try_get::<Option<i64>, _>("mcc")?));
    out.push(number(row.try_get::<Option<i64>, _>("mnc")?));
    out.push(time(row.try_get("submitted_at")?));
    out.push(time(row.try_get("completed_at")?));
    out.push(number(row.try_get::<Option<i64>, _>("units")?));
    for money in ["amount", "settle_price", "settle_amount"] {
        out.push(row.try_get::<Option<String>, _>(money)?.unwrap_or_default());
    }
    out.push(text(row.try_get("settle_currency")?));
    out.push(
        row.try_get::<Option<String>, _>("quote_exchange")?
            .unwrap_or_default(),
    );
    out.push(text(row.try_get("reason")?));
    out.push(
        row.try_get::<Option<String>, _>("rate")?
            .unwrap_or_default(),
    );
    out.push(text(row.try_get("state")?));
    Ok(())
}

/// A summary row; its period (the first day of it in the zone) written as `period`.
fn summary_cells(
    row: &sqlx::postgres::PgRow,
    period: &str,
    out: &mut Vec<String>,
) -> Result<(), sqlx::Error> {
    out.push(
        row.try_get::<NaiveDate, _>("period")?
            .format(period)
            .to_string(),
    );
    out.push(text(row.try_get("app_id")?));
    out.push(number(row.try_get::<Option<i64>, _>("mcc")?));
    out.push(text(row.try_get("channel")?));
    out.push(text(row.try_get("settle_currency")?));
    out.push(number(row.try_get::<Option<i64>, _>("sends")?));
    out.push(number(row.try_get::<Option<i64>, _>("attempts")?));
    out.push(number(row.try_get::<Option<i64>, _>("units")?));
    out.push(
        row.try_get::<Option<String>, _>("amount")?
            .unwrap_or_default(),
    );
    out.push(
        row.try_get::<Option<String>, _>("settle_amount")?
            .unwrap_or_default(),
    );
    Ok(())
}

/// Where the columns the totals add up sit in a level's rows: found once per export,
/// not once per row.
struct TotalColumns {
    amount: usize,
    settle_amount: usize,
    settle_currency: usize,
    units: usize,
}

impl TotalColumns {
    fn of(level: Level) -> Self {
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

    fn add(&self, totals: &mut Totals, cells: &[String]) -> Result<(), ExportError> {
        let decimal = |i: usize, column: &'static str| -> Result<Decimal, ExportError> {
            let value = cells[i].as_str();
            if value.is_empty() {
                return Ok(Decimal::ZERO);
            }
            Decimal::from_str_exact(value).map_err(|_| ExportError::Value {
                column,
                value: value.to_owned(),
            })
        };
        totals.rows += 1;
        totals.amount += decimal(self.amount, "amount")?;
        *totals
            .settle_amount
            .entry(
                cells[self.settle_currency]
                    .trim_start_matches('\'')
                    .to_owned(),
            )
            .or_default() += decimal(self.settle_amount, "settle_amount")?;
        totals.units += cells[self.units].parse::<i64>().unwrap_or(0);
        Ok(())
    }
}

/// A text cell, neutralized against spreadsheet formulas.
pub fn text(value: Option<String>) -> String {
    match value {
        Some(v) if v.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{v}"),
        Some(v) => v,
        None => String::new(),
    }
}

fn number<T: ToString>(value: Option<T>) -> String {
    value.map(|v| v.to_string()).unwrap_or_default()
}

fn time(value: Option<DateTime<Utc>>) -> String {
    value
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

/// `--from`/`--to` as given: a day, `today`, `yesterday`, or an instant. A day becomes
/// an instant only with the zone it is read in ([`Bound::resolve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Day(NaiveDate),
    Today,
    Yesterday,
    Instant(DateTime<Utc>),
}

impl Bound {
    /// The instant: a day's first instant in `zone` (`today` and `yesterday` are days in
    /// `zone` at `now`); a time with an explicit offset keeps its own.
    pub fn resolve(self, zone: &Zone, now: DateTime<Utc>) -> DateTime<Utc> {
        let today = zone.date_of(now);
        let day = match self {
            Bound::Instant(t) => return t,
            Bound::Day(day) => day,
            Bound::Today => today,
            Bound::Yesterday => today.pred_opt().unwrap_or(today),
        };
        zone.start_of_day(day)
    }
}

/// Parses `--from`/`--to`: a date (`2026-11-01`, its midnight), `today` or `yesterday`
/// (for a scheduled export), or an RFC 3339 time with its offset.
pub fn parse_bound(s: &str) -> Result<Bound, String> {
    match s.trim() {
        "today" => return Ok(Bound::Today),
        "yesterday" => return Ok(Bound::Yesterday),
        other => {
            if let Ok(day) = NaiveDate::from_str(other) {
                return Ok(Bound::Day(day));
            }
        }
    }
    crate::record::parse_time(s.trim())
        .map(Bound::Instant)
        .map_err(|e| format!("{s:?}: expected a date like 2026-11-01 or an RFC 3339 time ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_neutralized_in_text_cells() {
        for (cell, out) in [
            ("=SUM(A1)", "'=SUM(A1)"),
            ("+1", "'+1"),
            ("-2", "'-2"),
            ("@cmd", "'@cmd"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("plain", "plain"),
        ] {
            assert_eq!(text(Some(cell.into())), out);
        }
        assert_eq!(text(None), "");
        assert_eq!(number(Some(-1)), "-1", "numbers stay numbers");
    }

    #[test]
    fn bounds_are_dates_or_times_in_utc() {
        let utc = Zone::default();
        let now = Utc::now();
        let read = |s: &str| parse_bound(s).unwrap().resolve(&utc, now);
        assert_eq!(read("2026-11-01").to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(
            read("2026-11-01T08:00:00+08:00").to_rfc3339(),
            "2026-11-01T00:00:00+00:00"
        );
        assert!(parse_bound("last week").is_err());
        let today = read("today");
        assert_eq!(
            today,
            now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc()
        );
        assert_eq!(read("yesterday"), today - chrono::Duration::days(1));
    }

    #[test]
    fn bounds_are_read_in_the_zone_unless_they_carry_an_offset() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let plus8: Zone = "+08:00".parse().unwrap();
        let shanghai: Zone = "Asia/Shanghai".parse().unwrap();
        let new_york: Zone = "America/New_York".parse().unwrap();
        // 17:00Z on the 26th is already the 27th at +08:00, and still the 26th in New York.
        let now = at("2026-11-26T17:00:00Z");
        let read = |s: &str, zone: &Zone| parse_bound(s).unwrap().resolve(zone, now);
        for zone in [&plus8, &shanghai] {
            assert_eq!(read("2026-11-27", zone), at("2026-11-26T16:00:00Z"));
            assert_eq!(read("today", zone), at("2026-11-26T16:00:00Z"));
            assert_eq!(read("yesterday", zone), at("2026-11-25T16:00:00Z"));
            assert_eq!(
                read("2026-11-27T08:00:00Z", zone),
                at("2026-11-27T08:00:00Z")
            );
            assert_eq!(
                read("2026-11-27T08:00:00-05:00", zone),
                at("2026-11-27T13:00:00Z")
            );
        }
        assert_eq!(read("today", &new_york), at("2026-11-26T05:00:00Z"));
        assert_eq!(read("yesterday", &new_york), at("2026-11-25T05:00:00Z"));
        // Across the change from daylight saving time: midnight is -04:00, then -05:00.
        assert_eq!(read("2026-11-01", &new_york), at("2026-11-01T04:00:00Z"));
        assert_eq!(read("2026-11-02", &new_york), at("2026-11-02T05:00:00Z"));
    }

    #[test]
    fn temporary_files_are_unique_locked_and_only_abandoned_ones_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("costs.csv");
        let live = temp_beside(&out).unwrap();
        let other = temp_beside(&out).unwrap();
        assert_ne!(live.path(), other.path());
        let name = live.path().file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(".costs.csv.") && name.ends_with(".tmp"),
            "{name}"
        );
        // Abandoned: of our pattern and held by no one.
        let abandoned = dir.path().join(".costs.csv.Zx81Qa.tmp");
        std::fs::write(&abandoned, "half").unwrap();
        // Not ours: another file's, or not of the pattern.
        let others = [
            ".other.csv.Zx81Qa.tmp",
            "costs.csv.tmp",
            ".costs.csv.a-b.tmp",
        ];
        for name in others {
            std::fs::write(dir.path().join(name), "x").unwrap();
        }
        drop(other);
        let third = temp_beside(&out).unwrap();
        assert!(!abandoned.exists());
        assert!(live.path().exists(), "a live export's file is kept");
        assert!(third.path().exists());
        for name in others {
            assert!(dir.path().join(name).exists(), "{name}");
        }
    }

    #[test]
    fn sibling_files_sit_beside_the_output() {
        assert_eq!(
            sibling(Path::new("/x/costs.csv"), ".manifest.json"),
            PathBuf::from("/x/costs.csv.manifest.json")
        );
    }
}
