//! A pass as the binary runs it: connected from its [`Settings`], on the system clock,
//! stopped by SIGINT/SIGTERM, with a progress bar on a terminal; then reported on
//! stderr, to a JSON file if asked, and to the Pushgateway if one is set.

use super::{Deps, PassSettings, Summary};
use crate::clock;
use crate::config::Settings;
use crate::db::sends::{self, Range};
use crate::db::{Db, DbError};
use crate::progress::Progress;
use crate::provider::ProviderClient;
use anyhow::Context;
use std::path::Path;

/// `run`: one pass, reported; its summary also written to `summary_json`, if given.
pub async fn run(settings: &Settings, summary_json: Option<&Path>) -> anyhow::Result<Summary> {
    let (db, client) = connect(settings).await?;
    let summary = pass(&db, &client, &settings.pass).await?;
    summary.report();
    if let Some(path) = summary_json {
        write_json(path, &summary)?;
    }
    push_metrics(settings, &db, &summary, "run").await;
    Ok(summary)
}

/// `replay`: re-fetches every send in `range`, reported; the change report on stdout,
/// and also written to `report_json`, if given.
pub async fn replay(
    settings: &Settings,
    range: &Range,
    report_json: Option<&Path>,
) -> anyhow::Result<Summary> {
    let (db, client) = connect(settings).await?;
    let deps = Deps {
        db: &db,
        client: &client,
        clock: clock::system(),
        interrupt: crate::shutdown::interrupt_on_signal(),
        progress: Progress::new(0, "replay"),
    };
    let (summary, report) = super::replay(deps, &settings.pass, range).await?;
    summary.report();
    print!("{}", report.render());
    if let Some(path) = report_json {
        write_json(path, &report)?;
    }
    push_metrics(settings, &db, &summary, "replay").await;
    Ok(summary)
}

/// Runs one pass on the system clock, stopped by SIGINT/SIGTERM, with a progress bar
/// sized by what is due now.
pub async fn pass(
    db: &Db,
    client: &ProviderClient,
    settings: &PassSettings,
) -> Result<Summary, DbError> {
    let clock = clock::system();
    let interrupt = crate::shutdown::interrupt_on_signal();
    let due: i64 = sends::due(db, clock.now(), &settings.scope())
        .await?
        .iter()
        .map(|d| d.count)
        .sum();
    let progress = Progress::new(due.max(0) as u64, "sends");
    super::run(
        Deps {
            db,
            client,
            clock,
            interrupt,
            progress,
        },
        settings,
    )
    .await
}

/// Connects to the database, with a pool large enough for the pass's writers, and
/// builds the provider client.
async fn connect(settings: &Settings) -> anyhow::Result<(Db, ProviderClient)> {
    let db = settings.db.connect_checked().await?;
    let client = ProviderClient::new(&settings.provider, clock::system())?;
    Ok((db, client))
}

/// Pushes the summary, and the queue's state after it, to the Pushgateway, if one is
/// set. A failed push is logged once, as a warning: it never fails the pass.
async fn push_metrics(settings: &Settings, db: &Db, summary: &Summary, kind: &str) {
    if let Some(gateway) = &settings.pushgateway {
        crate::metrics::push_pass(gateway, kind, settings.pass.shard, db, summary).await;
    }
}

/// Writes `value` as JSON, through a temporary file renamed into place.
fn write_json(path: &Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let json = serde_json::to_vec_pretty(value)?;
    std::fs::write(&tmp, json).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
