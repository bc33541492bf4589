//! `otp-reconcile status`: queue depth, leases, pending conversions and rates, the last
//! passes.

use crate::config::DbArgs;
use crate::db::DbError;
use crate::exit::Exit;
use crate::status;
use chrono::Utc;
use clap::Args;

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

pub async fn run(args: StatusArgs) -> anyhow::Result<Exit> {
    let db = args.db.connect_one_checked().await?;
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
