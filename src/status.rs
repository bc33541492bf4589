//! `status`: what an operator asks first. Queue depth by state and app, the oldest due
//! send, sends held by an expired lease, conversions and rates pending, the last passes.
//!
//! Every count reads a partial index of what is not final (`sends_open`, `sends_due`,
//! `sends_leased`, `conversions_due`, `conversions_rejected`, `conversion_rates_due`,
//! `conversion_rates_changed`): none scans the history. The sends in final states
//! (settled, expired, rejected: the history itself) are not counted: their totals are
//! PostgreSQL's planner estimate (table size times the state's share in the statistics
//! of the last ANALYZE), labelled as such.

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

/// Sends in a final state, estimated (never counted: that would read the history).
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub state: String,
    pub sends_estimate: i64,
}

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

pub async fn read(db: &Db, now: DateTime<Utc>, passes: i64) -> Result<Status, sqlx::Error> {
    db.counted(6);
    let sends = sqlx::query(
        "SELECT state, app_id, count(*) AS sends, count(*) FILTER (WHERE next_check_at <= $1) AS due
         FROM sends WHERE state IN ('pending', 'recheck')
         GROUP BY state, app_id ORDER BY state, app_id",
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
    // The planner's estimate: rows (scaled to the table's current size, as the planner
    // does) times each final state's share among the most common values.
    let final_sends_estimate = sqlx::query(
        "SELECT v.state,
                round(v.freq * CASE WHEN c.relpages > 0
                                    THEN c.reltuples / c.relpages
                                         * (pg_relation_size(c.oid) / current_setting('block_size')::int)
                                    ELSE greatest(c.reltuples, 0) END)::bigint AS sends_estimate
         FROM pg_class c
         JOIN pg_stats st ON st.schemaname = current_schema() AND st.tablename = 'sends'
                         AND st.attname = 'state'
         CROSS JOIN LATERAL unnest(st.most_common_vals::text::text[], st.most_common_freqs)
              AS v(state, freq)
         WHERE c.oid = 'sends'::regclass AND v.state IN ('settled', 'expired', 'rejected')
         ORDER BY v.state",
    )
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|r| {
        Ok(Estimate {
            state: r.try_get("state")?,
            sends_estimate: r.try_get("sends_estimate")?,
        })
    })
    .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let estimated_as_of: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables
         WHERE relid = 'sends'::regclass",
    )
    .fetch_optional(db.pool())
    .await?
    .flatten();
    let leases = sqlx::query(concat!(
        "WITH live AS (SELECT owner FROM passes WHERE outcome = 'running' AND ",
        passes::heartbeat_fresh!(), ")
         SELECT min(next_check_at) FILTER (WHERE state IN ('pending', 'recheck')
                                                  AND next_check_at <= $1
                                                  AND (lease_token IS NULL OR lease_expires_at <= $1))
                    AS oldest_due,
                count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at <= $1) AS expired,
                count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at > $1
                                   AND EXISTS (SELECT 1 FROM live WHERE live.owner = lease_owner)) AS leased,
                count(*) FILTER (WHERE lease_token IS NOT NULL AND lease_expires_at > $1
                                   AND NOT EXISTS (SELECT 1 FROM live WHERE live.owner = lease_owner))
                    AS abandoned_leases
         FROM sends
         WHERE (state IN ('pending', 'recheck') AND next_check_at <= $1) OR lease_token IS NOT NULL",
    ))
    .bind(now)
    .fetch_one(db.pool())
    .await?;
    let conversions = sqlx::query(
        "SELECT (SELECT count(*) FROM conversions WHERE state = 'pending') AS pending,
                (SELECT count(*) FROM conversions WHERE state = 'pending' AND in_doubt) AS in_doubt,
                (SELECT count(*) FROM conversions WHERE state = 'rejected') AS rejected",
    )
    .fetch_one(db.pool())
    .await?;
    let rates = sqlx::query(
        "SELECT (SELECT count(*) FROM conversion_rates WHERE state = 'pending') AS pending,
                (SELECT count(*) FROM conversion_rates
                 WHERE state = 'sent'
                   AND (converted, sent) IS DISTINCT FROM (posted_converted, posted_sent)) AS changed",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(Status {
        at: now,
        sends,
        final_sends_estimate,
        estimated_as_of,
        oldest_due: leases.try_get("oldest_due")?,
        expired_leases: leases.try_get("expired")?,
        leased: leases.try_get("leased")?,
        abandoned_leases: leases.try_get("abandoned_leases")?,
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
