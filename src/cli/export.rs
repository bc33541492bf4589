//! `otp-reconcile export`: finance's CSV of a range (attempts, or a daily or monthly
//! summary), to standard output or to a file with its manifest.

use crate::config::{ConfigError, DbArgs, RangeArgs};
use crate::db::Db;
use crate::exit::Exit;
use crate::export::{self, Level, Query};
use crate::shutdown;
use crate::zone::Zone;
use chrono::{DateTime, Utc};
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub range: RangeArgs,
    /// One row per attempt, or a summary per day (or month), app, mcc, channel, currency.
    #[arg(long, value_enum, default_value = "attempt")]
    pub level: Level,
    /// The zone dates are read in and days and months start in: an IANA name
    /// (Asia/Shanghai) or a UTC offset (+08:00). Times in the rows stay UTC.
    #[arg(
        long,
        env = "EXPORT_TIMEZONE",
        default_value = "UTC",
        value_parser = parse_zone,
        allow_hyphen_values = true
    )]
    pub timezone: Zone,
    /// Write here (through a temporary file renamed on success, with FILE.manifest.json)
    /// instead of standard output. `{from}` and `{to}` in the name become the dates.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn parse_zone(s: &str) -> Result<Zone, String> {
    s.parse().map_err(|e: crate::zone::ZoneError| e.to_string())
}

impl ExportArgs {
    /// The query, and the file to write (`{from}` and `{to}` replaced), whose
    /// directory must exist.
    fn settings(&self) -> Result<(Query, Option<PathBuf>), ConfigError> {
        let zone = self.timezone;
        let range = self.range.range_in(&zone)?;
        let query = Query {
            from: range.from,
            to: range.to,
            app_ids: range.app_ids,
            level: self.level,
            timezone: zone,
        };
        let out = self.out.as_ref().map(|path| {
            let name = path.to_string_lossy();
            let date = |t: DateTime<Utc>| zone.date_of(t).to_string();
            PathBuf::from(
                name.replace("{from}", &date(query.from))
                    .replace("{to}", &date(query.to)),
            )
        });
        if let Some(path) = &out {
            check_out_dir(path)?;
        }
        Ok((query, out))
    }
}

pub async fn run(args: ExportArgs) -> anyhow::Result<Exit> {
    let (query, out) = args.settings()?;
    #[cfg(unix)]
    let _file_size_signal = shutdown::catch_file_size_signal();
    let db = args.db.connect_one_checked().await?;
    let zone = query.timezone;
    if !export::zone_known(&db, zone.sql_name()).await? {
        return Err(ConfigError::Invalid(format!(
            "--timezone {zone}: this PostgreSQL does not know that zone (its time zone data is older?)"
        ))
        .into());
    }
    // SIGTERM or SIGINT drops the export: its temporary files go with it.
    match shutdown::unless_signalled(write_export(&db, &query, out.as_deref())).await {
        Some(written) => written.map(|()| Exit::Done),
        None => {
            eprintln!("otp-reconcile: export stopped by a signal; nothing written");
            Ok(Exit::Interrupted)
        }
    }
}

/// `--out`'s directory must exist (exit 2 otherwise, before any work).
fn check_out_dir(path: &Path) -> Result<(), ConfigError> {
    if path.file_name().is_none() {
        return Err(ConfigError::Invalid(format!(
            "--out {}: give a file name",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(ConfigError::Invalid(format!(
            "--out {}: the directory {} does not exist",
            path.display(),
            dir.display()
        )));
    }
    Ok(())
}

async fn write_export(db: &Db, query: &Query, out: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    match out {
        Some(path) => {
            let manifest = export::write_file(db, query, path)
                .await
                .with_context(|| format!("export to {} failed, nothing written", path.display()))?;
            eprintln!(
                "{} rows written to {} (sha256 {}), manifest {}.manifest.json",
                manifest.rows,
                path.display(),
                manifest.sha256,
                path.display()
            );
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            export::write_csv(db, query, &mut out).await?;
            out.flush().map_err(export::ExportError::Write)?;
        }
    }
    Ok(())
}
