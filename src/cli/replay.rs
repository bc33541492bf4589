//! `otp-reconcile replay`: re-fetch every send in a range and report what the provider
//! changed, or with `--dry-run` what it would take.

use crate::config::{DbArgs, PassArgs, ProviderArgs, RangeArgs, Settings};
use crate::exit::Exit;
use crate::pass::{job, plan};
use clap::Args;
use std::path::PathBuf;

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

pub async fn run(args: ReplayArgs) -> anyhow::Result<Exit> {
    let range = args.range.range()?;
    let pass = args.pass.for_replay()?;
    if args.dry_run {
        let db = args.db.connect_checked().await?;
        print!("{}", plan::replay(&db, &range, &pass).await?);
        return Ok(Exit::Done);
    }
    let settings = Settings::new(pass, &args.pass, &args.provider, &args.db)?;
    let summary = job::replay(&settings, &range, args.report.as_deref()).await?;
    Ok(summary.ended.into())
}
