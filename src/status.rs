//! `status`: what an operator asks first. Queue depth by state and app, the oldest due
//! send, sends held by an expired lease, conversions and rates pending, the last passes.

use crate::db::Db;
use crate::passes::{self, PassRow};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use std::fmt::Write;

#[derive(Debug, Clone, Serialize)]
pub struct Depth {
    pub state: String,
    pub app_id: String,
    pub sends: i64,
    /// Of those, due now.
    pub due: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub at: DateTime<Utc>,
    pub sends: Vec<Depth>,
    pub oldest_due: Option<DateTime<Utc>>,
    /// Sends whose lease expired without being completed or released (a pass died).
    pub expired_leases: i64,
    /// Sends held by a live lease (a pass is working on them).
    pub leased: i64,
    pub conversions_pending: i64,
    pub conversions_in_doubt: i64,
    pub conversions_rejected: i64,
    pub rates_pending: i64,
    /// Posted windows whose numbers changed since (see `--repost-rates`).
    pub rates_changed_after_post: i64,
    pub last_passes: Vec<PassRow>,
}

pub async fn read(db: &Db, now: DateTime<Utc>, passes: i64) -> Result<Status, sqlx::Error> {
    db.counted(4);
    let sends = sqlx::query(
        "SELECT state, app_id, count(*) AS sends,
                count(*) FILTER (WHERE state IN ('pending', 'recheck') AND next_check_at <= $1) AS due
         FROM sends GROUP BY state, app_id ORDER BY state, app_id",
    )
    .bind(now)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| {
        Ok(Depth {
            state: r.try_get("state")?,
            app_id: r.try_get("app_id")?,
            sends: r.try_get("sends")?,
            due: r.try_get("due")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let leases = sqlx::query(
        "SELECT min(next_check_at) FILTER (WHERE state IN ('pending', 'recheck')
                                                  AND next_check_at <= $1
                                                  AND (lease_token IS NULL OR lease_expires_at <= $1))
                    AS oldest_due,
                count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at <= $1) AS expired,
                count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at > $1) AS leased
         FROM sends
         WHERE (state IN ('pending', 'recheck') AND next_check_at <= $1) OR lease_token IS NOT NULL",
    )
    .bind(now)
    .fetch_one(db.pool())
    .await?;
    let conversions = sqlx::query(
        "SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
                count(*) FILTER (WHERE state = 'pending' AND in_doubt) AS in_doubt,
                count(*) FILTER (WHERE state = 'rejected') AS rejected
         FROM conversions",
    )
    .fetch_one(db.pool())
    .await?;
    let rates = sqlx::query(
        "SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
                count(*) FILTER (WHERE state = 'sent'
                                  AND (converted, sent) IS DISTINCT FROM (posted_converted, posted_sent)) AS changed
         FROM conversion_rates",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(Status {
        at: now,
        sends,
        oldest_due: leases.try_get("oldest_due")?,
        expired_leases: leases.try_get("expired")?,
        leased: leases.try_get("leased")?,
        conversions_pending: conversions.try_get("pending")?,
        conversions_in_doubt: conversions.try_get("in_doubt")?,
        conversions_rejected: conversions.try_get("rejected")?,
        rates_pending: rates.try_get("pending")?,
        rates_changed_after_post: rates.try_get("changed")?,
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
            "leases: {} held by a running pass, {} expired (a pass died; the next pass takes them)",
            self.leased, self.expired_leases
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
