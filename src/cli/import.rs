//! `otp-reconcile import sends FILE`.

use crate::config::ConfigError;
use crate::config::DbArgs;
use crate::exit::Exit;
use crate::import::{self, ImportReport};
use clap::{Args, Subcommand};
use std::io::Read;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    pub what: ImportWhat,
}

#[derive(Debug, Subcommand)]
pub enum ImportWhat {
    /// Sends, as CSV with the header app_id,verification_id,order_id,number,channel,sent_at.
    Sends {
        #[command(flatten)]
        db: DbArgs,
        /// The CSV file, or - for standard input.
        file: PathBuf,
    },
    /// Conversions, as CSV with the header kind,app_id,message_id,number,converted_at.
    Conversions {
        #[command(flatten)]
        db: DbArgs,
        /// The CSV file, or - for standard input.
        file: PathBuf,
    },
}

/// Opens FILE, or standard input for `-`.
pub fn open_input(path: &PathBuf) -> Result<Box<dyn Read + Send>, ConfigError> {
    if path.as_os_str() == "-" {
        return Ok(Box::new(std::io::stdin()));
    }
    std::fs::File::open(path)
        .map(|f| Box::new(std::io::BufReader::new(f)) as Box<dyn Read + Send>)
        .map_err(|e| ConfigError::Invalid(format!("cannot open {}: {e}", path.display())))
}

pub async fn run(args: ImportArgs) -> anyhow::Result<Exit> {
    match args.what {
        ImportWhat::Sends { db, file } => {
            let input = open_input(&file)?;
            let db = db.connect_checked().await?;
            let report = import::import_sends(&db, input, |bad| {
                eprintln!("line {}: {}", bad.line, crate::text::escape(&bad.reason));
            })
            .await?;
            Ok(finish("sends", &report))
        }
        ImportWhat::Conversions { db, file } => {
            let input = open_input(&file)?;
            let db = db.connect_checked().await?;
            let report = import::import_conversions(&db, input, |bad| {
                eprintln!("line {}: {}", bad.line, crate::text::escape(&bad.reason));
            })
            .await?;
            Ok(finish("conversions", &report))
        }
    }
}

/// Prints the report; the exit code says whether lines were rejected.
pub fn finish(what: &str, report: &ImportReport) -> Exit {
    eprintln!(
        "{what}: {} lines read, {} loaded, {} already loaded, {} rejected",
        report.lines, report.inserted, report.duplicates, report.rejected
    );
    if report.rejected > 0 {
        Exit::Rejected
    } else {
        Exit::Done
    }
}
