//! A replay's claims: it sweeps its range in id order, then comes back to the sends
//! another pass held, as they come free, until its deadline (its --max-runtime, or one
//! --lease after the sweep: a dead pass's lease has run out by then).

use super::pipeline::Ctx;
use crate::db::DbError;
use crate::db::lease::Scope;
use crate::db::sends::{self, Claimed, Range};
use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often a replay looks again for the sends another pass held.
const HELD_POLL: Duration = Duration::from_secs(1);

/// A replay's range and how far it is in it.
#[derive(Debug)]
pub struct Sweep<'a> {
    range: Range,
    /// A replay takes the range's apps, all shards.
    scope: Scope,
    /// How long after the sweep the replay waits for the sends another pass held.
    lease: Duration,
    stop: &'a CancellationToken,
    at: Mutex<At>,
}

/// Where the sweep is.
#[derive(Debug, Default)]
struct At {
    /// The highest send id claimed by the sweep so far.
    after: i64,
    /// Sends passed over because another pass held them.
    held: BTreeSet<i64>,
    /// When the sweep reached the end of the range.
    ended: Option<Instant>,
}

impl<'a> Sweep<'a> {
    pub fn new(range: Range, lease: Duration, stop: &'a CancellationToken) -> Self {
        Self {
            scope: Scope {
                shard: None,
                apps: range.app_ids.clone(),
            },
            range,
            lease,
            stop,
            at: Mutex::default(),
        }
    }

    fn at(&self) -> std::sync::MutexGuard<'_, At> {
        self.at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next sends of the sweep; once it is over, those another pass held, as they
    /// come free, until the deadline. Empty when there are no more.
    pub async fn claim(
        &self,
        ctx: &Ctx<'_>,
        limit: usize,
        held: &[i64],
    ) -> Result<Vec<Claimed>, DbError> {
        let (db, range) = (ctx.db, &self.range);
        let c = ctx.terms.claim_in(&self.scope, limit, held);
        let (after, ended) = {
            let at = self.at();
            (at.after, at.ended)
        };
        let ended = match ended {
            Some(ended) => ended,
            None => {
                let claimed = sends::claim_range(db, range, after, &c).await?;
                if let Some(last) = claimed.iter().map(|c| c.id).max() {
                    // What the claim passed over up to its last send: held elsewhere.
                    let mut skipped = sends::ids_in_range(db, range, after, Some(last)).await?;
                    let ids: HashSet<i64> = claimed.iter().map(|c| c.id).collect();
                    skipped.retain(|id| !ids.contains(id));
                    let mut at = self.at();
                    at.held.extend(skipped);
                    at.after = last;
                    return Ok(claimed);
                }
                let rest = sends::ids_in_range(db, range, after, None).await?;
                let mut at = self.at();
                at.held.extend(rest);
                let now = Instant::now();
                at.ended = Some(now);
                if !at.held.is_empty() {
                    tracing::info!(
                        held = at.held.len(),
                        "sends held by another pass: coming back to them as they come free"
                    );
                }
                now
            }
        };
        let deadline = ended + self.lease;
        loop {
            let held: Vec<i64> = self.at().held.iter().copied().collect();
            if held.is_empty() {
                return Ok(Vec::new());
            }
            let claimed = sends::claim_ids(db, &held, &c).await?;
            if !claimed.is_empty() {
                let mut at = self.at();
                for c in &claimed {
                    at.held.remove(&c.id);
                }
                return Ok(claimed);
            }
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!(
                    held = held.len(),
                    "sends still held by another pass at the replay's deadline: replay again"
                );
                return Ok(Vec::new());
            }
            tokio::select! {
                () = tokio::time::sleep(HELD_POLL.min(deadline - now)) => {}
                () = self.stop.cancelled() => return Ok(Vec::new()),
            }
        }
    }
}
