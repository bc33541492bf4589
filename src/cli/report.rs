//! `export`, `replay` and `status`: what finance and whoever is on call run.

use super::run::{
    PassArgs, connect_for_pass, exit_for, interrupt_on_signal, push_metrics, report_summary,
    time_at_rate, write_json,
};
use super::{DbArgs, ProviderArgs};
use crate::clock;
use crate::config::ConfigError;
use crate::db::DbError;
use crate::db::sends::{self, Range};
use crate::exit::Exit;
use crate::export::{self, Bound, Level, Query};
use crate::pass::{self, Deps};
use crate::progress::Progress;
use crate::status;
use crate::zone::Zone;
use chrono::{DateTime, Utc};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// The range of sent_at both commands take.
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// The first day (UTC; export: in --timezone) or time of sent_at included, e.g. 2026-11-01.
    #[arg(long, value_parser = export::parse_bound)]
    pub from: Bound,
    /// The first day (UTC; export: in --timezone) or time of sent_at excluded, e.g. 2026-12-01.
    #[arg(long, value_parser = export::parse_bound)]
    pub to: Bound,
    /// Only this app (repeatable).
    #[arg(long = "app-id")]
    pub app_ids: Vec<String>,
}

impl RangeArgs {
    /// The range, its days read in UTC.
    fn range(&self) -> Result<Range, ConfigError> {
        self.range_in(&Zone::default())
    }

    /// The range, its days (and `today`, `yesterday`) read in `zone`.
    fn range_in(&self, zone: &Zone) -> Result<Range, ConfigError> {
        let now = Utc::now();
        let (from, to) = (self.from.resolve(zone, now), self.to.resolve(zone, now));
        if from >= to {
            return Err(ConfigError::Invalid(format!(
                "--from {} is not before --to {}",
                from.to_rfc3339(),
                to.to_rfc3339()
            )));
        }
        Ok(Range {
            from,
            to,
            app_ids: self.app_ids.clone(),
        })
    }
}

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

pub async fn export(args: ExportArgs) -> anyhow::Result<Exit> {
    let zone = args.timezone;
    let range = args.range.range_in(&zone)?;
    let query = Query {
        from: range.from,
        to: range.to,
        app_ids: range.app_ids,
        level: args.level,
        timezone: zone,
    };
    let out = args.out.as_ref().map(|path| {
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
    // A file-size limit (RLIMIT_FSIZE) must fail the write with EFBIG, cleaned up like
    // any failed write, instead of killing the process with SIGXFSZ and leaving the
    // temporary file behind.
    #[cfg(unix)]
    let _file_size_signal =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(libc::SIGXFSZ));
    let db = args.db.connect_checked().await?;
    if !export::zone_known(&db, zone.sql_name()).await? {
        return Err(ConfigError::Invalid(format!(
            "--timezone {zone}: this PostgreSQL does not know that zone (its time zone data is older?)"
        ))
        .into());
    }
    // SIGTERM or SIGINT drops the export: its temporary files go with it.
    // Biased: the signal handlers are in place before the export creates any file.
    tokio::select! {
        biased;
        () = crate::shutdown::signalled() => {
            eprintln!("otp-reconcile: export stopped by a signal; nothing written");
            return Ok(Exit::Interrupted);
        }
        written = write_export(&db, &query, out.as_deref()) => written?,
    }
    Ok(Exit::Done)
}

/// `--out`'s directory must exist (exit 2 otherwise, before any work).
fn check_out_dir(path: &std::path::Path) -> Result<(), ConfigError> {
    if path.file_name().is_none() {
        return Err(ConfigError::Invalid(format!(
            "--out {}: give a file name",
            path.display()
        )));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => std::path::Path::new("."),
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

async fn write_export(
    db: &crate::db::Db,
    query: &Query,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
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

#[derive(Debug, Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub pass: PassArgs,
    /// How many sends and calls, and the time at the configured rate; call and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the change report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub async fn replay(args: ReplayArgs) -> anyhow::Result<Exit> {
    let range = args.range.range()?;
    let settings = args.pass.settings()?;
    if settings.shard.is_some() {
        return Err(ConfigError::Invalid(
            "replay does not shard: split the work by --from/--to or --app-id instead".into(),
        )
        .into());
    }
    if args.dry_run {
        let db = args.db.connect_checked().await?;
        let by_state = sends::count_range(&db, &range)
            .await
            .map_err(DbError::from)?;
        let total: i64 = by_state.iter().map(|(_, n)| n).sum();
        for (state, n) in &by_state {
            println!("{state:<10} {n:>10}");
        }
        println!(
            "{total} sends in range: {total} record fetches, plus retries on transient failures"
        );
        println!("{}", time_at_rate(total, &settings));
        return Ok(Exit::Done);
    }
    let (db, client) = connect_for_pass(&args.db, &args.provider, &settings).await?;
    let deps = Deps {
        db: &db,
        client: &client,
        clock: clock::system(),
        interrupt: interrupt_on_signal(),
        progress: Progress::new(0, "replay"),
    };
    let (summary, report) = pass::replay(deps, &settings, &range).await?;
    report_summary(&summary);
    print!("{}", report.render());
    if let Some(path) = &args.report {
        write_json(path, &report)?;
    }
    push_metrics(&args.pass, &settings, &db, &summary, "replay").await;
    Ok(exit_for(&summary))
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: DbArgs,
    /// JSON, for scripts.
    #[arg(long)]
    pub json: bool,
    /// How many of the last passes to show.
    #[arg(long, default_value_t = 10)]
    pub passes: i64,
}

pub async fn status(args: StatusArgs) -> anyhow::Result<Exit> {
    let db = args.db.connect_checked().await?;
    let status = status::read(&db, Utc::now(), args.passes.max(0))
        .await
        .map_err(DbError::from)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(Exit::Done)
}
