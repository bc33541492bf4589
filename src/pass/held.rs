//! What a pass holds, per leased table: each item's token and, conservatively, until
//! when its lease is valid. Claims add to it and never return what is in it; the
//! renewer extends it; a request is sent only while its item's lease has at least the
//! request timeout left; writes and releases take items out.
//!
//! "Valid until" is measured from the moment the claim or the renewal was sent: the
//! database sets the expiry from its `now()`, which is later, so the lease is at least
//! as long as this side believes.

use crate::db::lease::{self, Leased, Table};
use crate::db::passes;
use crate::db::{Db, DbError};
use rustc_hash::FxHashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(Debug, Clone, Copy)]
struct Holding {
    lease: Uuid,
    valid_until: Instant,
    /// A renewal found the lease taken over (or the renewals failed): no request for it.
    lost: bool,
}

/// The items one table's stage holds.
#[derive(Debug)]
pub struct Holdings {
    pub table: &'static Table,
    items: Mutex<FxHashMap<i64, Holding>>,
}

impl Holdings {
    pub fn new(table: &'static Table) -> Self {
        Self {
            table,
            items: Mutex::default(),
        }
    }

    fn items(&self) -> std::sync::MutexGuard<'_, FxHashMap<i64, Holding>> {
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every id held, lost or not: a claim must not take any of them again.
    pub fn ids(&self) -> Vec<i64> {
        self.items().keys().copied().collect()
    }

    /// Records items claimed by a statement sent at `sent`, for `lease`.
    pub fn claimed(&self, items: &[impl Leased], sent: Instant, lease: Duration) {
        let valid_until = sent + lease;
        let mut held = self.items();
        for item in items {
            held.insert(
                item.id(),
                Holding {
                    lease: item.lease(),
                    valid_until,
                    lost: false,
                },
            );
        }
    }

    /// The (id, token) of every lease still believed held, for a renewal.
    pub fn to_renew(&self) -> Vec<(i64, Uuid)> {
        self.items()
            .iter()
            .filter(|(_, h)| !h.lost)
            .map(|(id, h)| (*id, h.lease))
            .collect()
    }

    /// A renewal sent at `sent` asked for `asked` and found `found`: those renewed are
    /// valid for `lease` from `sent`; those no longer held were taken over (or finished
    /// meanwhile); the others (being written) keep what they had. Answers how many were
    /// lost.
    pub fn renewed(
        &self,
        asked: &[(i64, Uuid)],
        found: &[lease::Renewed],
        sent: Instant,
        lease: Duration,
    ) -> usize {
        let found: FxHashMap<i64, lease::Renewed> = found.iter().map(|r| (r.id, *r)).collect();
        let mut held = self.items();
        let mut lost = 0;
        for (id, token) in asked {
            // Written or released meanwhile, or held under another claim: not ours to judge.
            let (Some(h), Some(r)) = (
                held.get_mut(id).filter(|h| h.lease == *token),
                found.get(id),
            ) else {
                continue;
            };
            if r.renewed {
                h.valid_until = h.valid_until.max(sent + lease);
            } else if !r.held && !h.lost {
                h.lost = true;
                lost += 1;
            }
        }
        lost
    }

    /// True when a request for `id` may be sent now: the lease is not lost and stays
    /// valid for at least `margin` (the request timeout).
    pub fn usable(&self, id: i64, margin: Duration) -> bool {
        self.items().get(&id).is_some_and(|h| {
            !h.lost && h.valid_until.saturating_duration_since(Instant::now()) >= margin
        })
    }

    /// Items written or released: no longer held.
    pub fn done(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.items();
        for id in ids {
            held.remove(&id);
        }
    }
}

/// One request's lease check: the holdings and the item.
#[derive(Debug, Clone, Copy)]
pub struct Held<'a> {
    pub holdings: &'a Holdings,
    pub id: i64,
}

impl Held<'_> {
    pub fn usable(&self, margin: Duration) -> bool {
        self.holdings.usable(self.id, margin)
    }
}

/// What a pass holds, per leased table.
#[derive(Debug)]
pub struct PassHoldings {
    pub sends: Holdings,
    pub conversions: Holdings,
    pub rates: Holdings,
}

impl Default for PassHoldings {
    fn default() -> Self {
        Self {
            sends: Holdings::new(&crate::db::sends::DUE),
            conversions: Holdings::new(&crate::db::conversions::DUE),
            rates: Holdings::new(&crate::db::rates::DUE),
        }
    }
}

impl PassHoldings {
    /// Renews the leases of everything the pass holds (one statement per table) and
    /// its heartbeat, `every` so often. Never ends unless a renewal fails: then it
    /// answers the error, and no lease is extended any more (so no request starts on
    /// one that may be gone); the pass is to stop and release what it holds.
    pub async fn keep_alive(
        &self,
        db: &Db,
        pass_id: i64,
        every: Duration,
        lease: Duration,
    ) -> DbError {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            if let Err(e) = self.renew(db, pass_id, lease).await {
                tracing::error!(error = %crate::db::cause_chain(&e), "cannot renew the leases: stopping the pass");
                return e;
            }
        }
    }

    async fn renew(&self, db: &Db, pass_id: i64, lease: Duration) -> Result<(), DbError> {
        for holdings in [&self.sends, &self.conversions, &self.rates] {
            let lost = renew(db, holdings, lease).await?;
            if lost > 0 {
                tracing::warn!(
                    table = holdings.table.name,
                    lost,
                    "leases taken over by another pass: their items are not worked"
                );
            }
        }
        passes::heartbeat(db, pass_id).await?;
        Ok(())
    }
}

/// Renews every lease `holdings` believes held, in one statement; answers how many
/// turned out lost.
async fn renew(db: &Db, holdings: &Holdings, lease: Duration) -> Result<usize, sqlx::Error> {
    let asked = holdings.to_renew();
    if asked.is_empty() {
        return Ok(0);
    }
    let sent = Instant::now();
    let found = lease::renew(db, holdings.table, &asked, lease).await?;
    Ok(holdings.renewed(&asked, &found, sent, lease))
}
