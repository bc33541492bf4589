//! `otp-reconcile run`: one reconcile pass, or with `--dry-run` what it would do.

use crate::config::{DbArgs, PassArgs, ProviderArgs, Settings};
use crate::exit::Exit;
use crate::pass::{job, plan};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub pass: PassArgs,
    /// Show what is due and the calls and time it would take; call and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also write the pass's summary as JSON to this file.
    #[arg(long, env = "SUMMARY_JSON")]
    pub summary_json: Option<PathBuf>,
    /// Work on this app's sends, conversions and rates only (repeatable); all if unset.
    #[arg(long = "app-id", value_name = "APP")]
    pub app_ids: Vec<String>,
}

pub async fn run(args: RunArgs) -> anyhow::Result<Exit> {
    let pass = args.pass.for_run(&args.app_ids)?;
    if args.dry_run {
        // No provider settings: a dry run calls nothing, and needs no key.
        let db = args.db.connect_checked().await?;
        print!("{}", plan::due(&db, &pass, chrono::Utc::now()).await?);
        return Ok(Exit::Done);
    }
    let settings = Settings::new(pass, &args.pass, &args.provider, &args.db)?;
    let summary = job::run(&settings, args.summary_json.as_deref()).await?;
    Ok(summary.ended.into())
}
