//! `status`: what an operator asks first. Queue depth by state and app, the oldest due
//! send, sends held by an expired lease, conversions and rates pending, the last passes.
//!
//! Every count reads a partial index of what is not final (`sends_open`, `sends_due`,
//! `sends_leased`, `conversions_due`, `conversions_rejected`, `conversion_rates_due`,
//! `conversion_rates_changed`): none scans the history. The sends in final states
//! (settled, expired, rejected: the history itself) are not counted: their totals are
//! PostgreSQL's planner estimate (table size times the state's share in the statistics
//! of the last ANALYZE), labelled as such.
//!
//! Each table answers its own counts ([`sends`], [`conversions`], [`rates`],
//! [`passes`]); this module assembles and renders them.

use crate::db::passes::{self, PassRow};
use crate::db::{Db, conversions, rates, sends};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::fmt::Write;

pub use crate::db::sends::{Depth, Estimate};

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub at: DateTime<Utc>,
    /// The sends not final yet (pending, recheck), counted exactly.
    pub sends: Vec<Depth>,
    /// The sends in final states, from the planner's statistics: an estimate.
    pub final_sends_estimate: Vec<Estimate>,
    /// When the statistics behind the estimate were taken (the last ANALYZE).
    pub estimated_as_of: Option<DateTime<Utc>>,
    pub oldest_due: Option<DateTime<Utc>>,
    /// Sends whose lease expired without being completed or released (a pass died).
    pub expired_leases: i64,
    /// Sends held by a live lease of a running pass (it is working on them).
    pub leased: i64,
    /// Sends held by a live lease of a pass whose heartbeat stopped (abandoned): the
    /// leases run out by themselves.
    pub abandoned_leases: i64,
    pub conversions_pending: i64,
    pub conversions_in_doubt: i64,
    pub conversions_rejected: i64,
    pub rates_pending: i64,
    /// Posted windows whose numbers changed since (see `--repost-rates`).
    pub rates_changed_after_post: i64,
    pub last_passes: Vec<PassRow>,
}

/// Asks each table for its counts (see the table modules for the SQL).
pub async fn read(db: &Db, now: DateTime<Utc>, passes: i64) -> Result<Status, sqlx::Error> {
    let depth = sends::depth(db, now).await?;
    let (final_sends_estimate, estimated_as_of) = sends::final_estimate(db).await?;
    let leases = sends::leases(db, now).await?;
    let conversions = conversions::pending(db).await?;
    let rates = rates::pending(db).await?;
    Ok(Status {
        at: now,
        sends: depth,
        final_sends_estimate,
        estimated_as_of,
        oldest_due: leases.oldest_due,
        expired_leases: leases.expired,
        leased: leases.leased,
        abandoned_leases: leases.abandoned,
        conversions_pending: conversions.pending,
        conversions_in_doubt: conversions.in_doubt,
        conversions_rejected: conversions.rejected,
        rates_pending: rates.pending,
        rates_changed_after_post: rates.changed_after_post,
        last_passes: passes::recent(db, passes).await?,
    })
}

impl Status {
    /// For a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "sends at {}", self.at.to_rfc3339());
        let _ = writeln!(
            out,
            "  {:<10} {:<32} {:>10} {:>10}",
            "state", "app", "sends", "due now"
        );
        for d in &self.sends {
            let _ = writeln!(
                out,
                "  {:<10} {:<32} {:>10} {:>10}",
                d.state, d.app_id, d.sends, d.due
            );
        }
        let estimate = if self.final_sends_estimate.is_empty() {
            "no statistics yet (ANALYZE sends)".to_owned()
        } else {
            self.final_sends_estimate
                .iter()
                .map(|e| format!("{} ~{}", e.state, e.sends_estimate))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            out,
            "  final states, estimated from the planner's statistics{}: {estimate}",
            self.estimated_as_of
                .map(|t| format!(" (ANALYZE at {})", t.to_rfc3339()))
                .unwrap_or_default()
        );
        let oldest = self.oldest_due.map_or("none".to_owned(), |t| {
            let late = std::time::Duration::from_secs(
                u64::try_from((self.at - t).num_seconds()).unwrap_or(0),
            );
            format!(
                "{} ({} late)",
                t.to_rfc3339(),
                humantime::format_duration(late)
            )
        });
        let _ = writeln!(out, "oldest due send: {oldest}");
        let _ = writeln!(
            out,
            "leases: {} held by a running pass, {} held by an abandoned pass (they run out by themselves), \
             {} expired (a pass died; the next pass takes them)",
            self.leased, self.abandoned_leases, self.expired_leases
        );
        let _ = writeln!(
            out,
            "conversions: {} pending ({} in doubt), {} rejected",
            self.conversions_pending, self.conversions_in_doubt, self.conversions_rejected
        );
        let _ = writeln!(
            out,
            "conversion rates: {} windows pending, {} changed after posting",
            self.rates_pending, self.rates_changed_after_post
        );
        let _ = writeln!(out, "last passes:");
        for p in &self.last_passes {
            let s = &p.summary;
            let n = |k: &str| s.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
            let _ = writeln!(
                out,
                "  {:>6} {:<6} {} {:<20} claimed {} settled {} rechecks {} rejected {} requests {}{}",
                p.id,
                p.kind,
                p.started_at.format("%Y-%m-%d %H:%M:%S"),
                p.outcome,
                n("claimed"),
                n("settled"),
                n("rechecks"),
                n("rejected"),
                n("requests"),
                p.error
                    .as_ref()
                    .map(|e| format!(" ({})", crate::text::escape(e)))
                    .unwrap_or_default(),
            );
        }
        out
    }
}
