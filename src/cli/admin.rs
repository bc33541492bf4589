//! `otp-reconcile migrate` and `otp-reconcile app`: the schema and the apps table.

use crate::config::ConfigError;
use crate::config::DbArgs;
use crate::db::apps;
use crate::db::{self, DbError};
use crate::exit::Exit;
use clap::{Args, Subcommand};

/// `migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DbArgs,
}

pub async fn migrate(args: MigrateArgs) -> anyhow::Result<Exit> {
    let db = args.db.connect().await?;
    db::migrate(&db).await?;
    db::check_schema(&db).await?;
    let versions: Vec<i64> = db::MIGRATOR.iter().map(|m| m.version).collect();
    eprintln!("schema up to date (migrations {versions:?})");
    Ok(Exit::Done)
}

/// `app`.
#[derive(Debug, Args)]
pub struct AppArgs {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub action: AppAction,
}

#[derive(Debug, Subcommand)]
pub enum AppAction {
    /// Register an app, so that its sends are accepted.
    Add {
        /// The provider's app id (4-32 letters, digits, - or _).
        app_id: String,
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the registered apps.
    List,
}

pub async fn app(args: AppArgs) -> anyhow::Result<Exit> {
    let db = args.db.connect_checked().await?;
    match args.action {
        AppAction::Add { app_id, name } => {
            if !apps::valid_app_id(&app_id) {
                return Err(ConfigError::Invalid(format!(
                    "app id \"{}\" must be 4-32 letters, digits, - or _",
                    crate::text::escape(&app_id)
                ))
                .into());
            }
            let added = apps::add(&db, &app_id, name.as_deref())
                .await
                .map_err(DbError::from)?;
            eprintln!(
                "{app_id}: {}",
                if added {
                    "registered"
                } else {
                    "already registered"
                }
            );
        }
        AppAction::List => {
            for (id, name) in apps::list(&db).await.map_err(DbError::from)? {
                println!("{id}\t{}", name.unwrap_or_default());
            }
        }
    }
    Ok(Exit::Done)
}
