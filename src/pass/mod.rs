//! One pass of the job (SPEC "One pass"): fetch and store the records of due sends,
//! then post conversions back, then compute and post conversion rates.
//!
//! Read top to bottom: the [`lifecycle`] records the pass, runs its [`stages`] under
//! its deadline and lease renewals ([`held`]), and judges how it ended ([`summary`]).
//! Each stage ([`records`], [`postbacks`], [`rate_posts`]) runs through the same
//! [`pipeline`]: claim under a lease, work each item (a step that answers what became
//! of it) with [`calls`] through the shared gate, write in batches with the lease token
//! in every `WHERE`. A stage gets only what it needs; none reaches back into the pass.
//!
//! The pass ends when nothing is due, at `--max-runtime`, on a signal, or at the first
//! answer that refuses our credentials; what was claimed but not worked is released.
//! [`job`] runs a pass as the binary does; [`plan`] is what a dry run shows.

mod calls;
mod counters;
mod held;
pub mod job;
mod lifecycle;
mod pipeline;
pub mod plan;
mod postbacks;
mod rate_posts;
mod records;
mod stages;
mod summary;
mod sweep;

pub use crate::config::PassSettings;
pub use summary::{Ended, Summary};

use crate::clock::SharedClock;
use crate::db::revisions::{self, Report};
use crate::db::sends::{self, Range};
use crate::db::{Db, DbError};
use crate::progress::Progress;
use crate::provider::ProviderClient;
use lifecycle::lifecycle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// What the pass needs from outside: passed in, never global.
pub struct Deps<'a> {
    pub db: &'a Db,
    pub client: &'a ProviderClient,
    pub clock: SharedClock,
    /// Cancelled on SIGINT/SIGTERM.
    pub interrupt: CancellationToken,
    pub progress: Progress,
}

/// What a pass does.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Records of due sends, then postbacks, then rates.
    Run,
    /// Re-fetch every send in a range, whatever its state.
    Replay(Range),
}

impl Task {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Task::Run => "run",
            Task::Replay(_) => "replay",
        }
    }
}

/// Runs one pass to its end and records it (best effort when the database failed).
/// Every ending is in the summary, a database failure mid-pass too (`Ended::Failed`,
/// exit 4, with its cause chain); an error only when the pass could not start or its
/// end could not be recorded.
pub async fn run(deps: Deps<'_>, settings: &PassSettings) -> Result<Summary, DbError> {
    lifecycle(deps, settings, &Task::Run).await
}

/// Re-fetches every send in `range` through the same gate and writers as a pass, keeps
/// the previous records of those that changed, and reports what changed.
pub async fn replay(
    deps: Deps<'_>,
    settings: &PassSettings,
    range: &Range,
) -> Result<(Summary, Report), DbError> {
    let db = deps.db;
    let in_range: i64 = sends::count_range(db, range)
        .await?
        .iter()
        .map(|(_, n)| n)
        .sum();
    deps.progress
        .set_length(u64::try_from(in_range).unwrap_or(0));
    let summary = lifecycle(deps, settings, &Task::Replay(range.clone())).await?;
    let mut report = revisions::report(db, summary.pass_id).await?;
    report.not_refetched = summary.recheck_reasons.transient + summary.recheck_reasons.unreadable;
    report.held_elsewhere = u64::try_from(in_range)
        .unwrap_or(0)
        .saturating_sub(summary.claimed);
    Ok((summary, report))
}
