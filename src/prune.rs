//! Retention: `prune --before DATE` removes the history older than DATE (by a send's
//! sent_at, a conversion's converted_at, a rate window's end) in small transactions, so
//! a pass running beside it is never held up for long.
//!
//! Only what is final goes:
//! - a send that is settled, expired or rejected, not under a lease, whose rate window
//!   is computed and posted (no mark in `rate_dirty` for its hour, no pending window
//!   holding it) and whose OTP conversion, if any, is not waiting to be posted back;
//!   with it go its record, attempts and record revisions, and its OTP conversion;
//! - a conversion acknowledged or refused (`sent`, `rejected`): a pending one, in doubt
//!   or not, stays, and so does an OTP conversion whose send stays;
//! - a rate window posted or refused, not under a lease.
//!
//! Everything else older than DATE is kept, and the report says how much and why.
//! Each batch is one statement (its own transaction) that locks its sends with
//! `FOR UPDATE SKIP LOCKED`: rows a pass holds are skipped, never waited for.

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use std::time::Instant;

/// What to prune.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub before: DateTime<Utc>,
    /// Sends (and conversions, and windows) per transaction.
    pub batch: i64,
    /// Count what would go and what would stay; delete nothing.
    pub dry_run: bool,
}

/// Rows removed (or, in a dry run, that would be), per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Removed {
    pub sends: u64,
    pub records: u64,
    pub attempts: u64,
    pub record_revisions: u64,
    pub conversions: u64,
    pub conversion_rates: u64,
}

/// What is older than `before` and stays, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// Sends still pending or recheck.
    pub sends_not_final: i64,
    /// Final sends under a lease (a replay holds them).
    pub sends_leased: i64,
    /// Final sends whose rate window is not computed and posted yet.
    pub sends_window_not_posted: i64,
    /// Final sends whose OTP conversion is not posted back yet.
    pub sends_conversion_pending: i64,
    /// Final sends locked by a pass while prune ran (the next prune takes them).
    pub sends_busy: i64,
    /// Conversions not acknowledged yet (pending), of which `conversions_in_doubt` may
    /// have reached the provider already.
    pub conversions_pending: i64,
    pub conversions_in_doubt: i64,
    /// Acknowledged OTP conversions whose send stays.
    pub conversions_send_kept: i64,
    /// Rate windows not posted yet (pending) or under a lease.
    pub conversion_rates_not_posted: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub before: DateTime<Utc>,
    pub dry_run: bool,
    pub removed: Removed,
    pub kept: Kept,
    /// Transactions (batches) that removed something.
    pub batches: u64,
    pub elapsed_secs: f64,
    /// Sends removed per second of the batches of sends (children included).
    pub sends_per_sec: f64,
}

/// The sends that may go, older than $1 and from $2 on (the batch cursor), as a CTE
/// body selecting id, app_id, verification_id, sent_at. `blocked` (windows not posted)
/// and `waiting` (OTP conversions not posted back) are CTEs of the statement.
macro_rules! removable_sends {
    () => {
        concat!(
            "SELECT s.id, s.app_id, s.verification_id, s.sent_at FROM sends s
             WHERE s.sent_at >= $2 AND s.sent_at < $1
               AND s.state IN ('settled', 'expired', 'rejected') AND s.lease_token IS NULL
               AND NOT EXISTS (SELECT 1 FROM blocked b
                               WHERE b.app_id = s.app_id AND s.sent_at >= b.window_start
                                 AND s.sent_at < b.window_end)
               AND NOT EXISTS (SELECT 1 FROM waiting w
                               WHERE w.app_id = s.app_id AND w.message_id = s.verification_id)"
        )
    };
}

/// The windows not posted yet, before $1: pending windows and marked hours. Both sets
/// are small (what a pass has not done yet).
macro_rules! blocked_and_waiting {
    () => {
        concat!(
            "blocked AS MATERIALIZED (
                 SELECT app_id, window_start, window_start + window_length AS window_end
                 FROM conversion_rates WHERE state = 'pending' AND window_start < $1
                 UNION ALL
                 SELECT app_id, hour, hour + interval '1 hour' FROM rate_dirty WHERE hour < $1),
             waiting AS MATERIALIZED (
                 SELECT app_id, message_id FROM conversions
                 WHERE state = 'pending' AND kind = 'otp')"
        )
    };
}

/// Runs the plan: batches of sends (with their children), then conversions, then rate
/// windows; then counts what stayed. In a dry run, only counts.
pub async fn run(db: &Db, plan: &Plan) -> Result<Report, sqlx::Error> {
    let started = Instant::now();
    let mut removed = Removed::default();
    let mut batches = 0;
    let mut sends_secs = 0.0;
    if plan.dry_run {
        removed = would_remove(db, plan).await?;
    } else {
        let mut cursor = earliest();
        loop {
            let (batch, last) = remove_sends(db, plan, cursor).await?;
            if batch.sends == 0 {
                break;
            }
            batches += 1;
            add(&mut removed, &batch);
            cursor = last.unwrap_or(cursor);
            tracing::debug!(sends = removed.sends, "pruning");
        }
        sends_secs = started.elapsed().as_secs_f64();
        loop {
            let n = remove_conversions(db, plan).await?;
            if n == 0 {
                break;
            }
            batches += 1;
            removed.conversions += n;
        }
        loop {
            let n = remove_rates(db, plan).await?;
            if n == 0 {
                break;
            }
            batches += 1;
            removed.conversion_rates += n;
        }
    }
    let kept = kept(db, plan).await?;
    let elapsed_secs = started.elapsed().as_secs_f64();
    Ok(Report {
        before: plan.before,
        dry_run: plan.dry_run,
        removed,
        kept,
        batches,
        elapsed_secs,
        sends_per_sec: if sends_secs > 0.0 {
            removed.sends as f64 / sends_secs
        } else {
            0.0
        },
    })
}

/// Before any send (the batches' first cursor).
fn earliest() -> DateTime<Utc> {
    DateTime::from_timestamp(-2_208_988_800, 0).unwrap_or_default() // 1900-01-01
}

fn add(total: &mut Removed, batch: &Removed) {
    total.sends += batch.sends;
    total.records += batch.records;
    total.attempts += batch.attempts;
    total.record_revisions += batch.record_revisions;
    total.conversions += batch.conversions;
    total.conversion_rates += batch.conversion_rates;
}

fn count(row: &sqlx::postgres::PgRow, column: &str) -> Result<u64, sqlx::Error> {
    let n: i64 = row.try_get(column)?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// One batch: up to `plan.batch` removable sends from `cursor` on, in sent_at order,
/// with their attempts, revisions, records and acknowledged OTP conversions: one
/// statement, children first. Answers what went and the last sent_at removed.
async fn remove_sends(
    db: &Db,
    plan: &Plan,
    cursor: DateTime<Utc>,
) -> Result<(Removed, Option<DateTime<Utc>>), sqlx::Error> {
    db.counted(1);
    let row = sqlx::query(concat!(
        "WITH ",
        blocked_and_waiting!(),
        ",
         batch AS MATERIALIZED (",
        removable_sends!(),
        "
             ORDER BY s.sent_at
             LIMIT $3
             FOR UPDATE OF s SKIP LOCKED),
         a AS (DELETE FROM attempts WHERE send_id IN (SELECT id FROM batch) RETURNING 1),
         v AS (DELETE FROM record_revisions WHERE send_id IN (SELECT id FROM batch) RETURNING 1),
         r AS (DELETE FROM records WHERE send_id IN (SELECT id FROM batch) RETURNING 1),
         c AS (DELETE FROM conversions c USING batch b
               WHERE c.kind = 'otp' AND c.app_id = b.app_id AND c.message_id = b.verification_id
                 AND c.state IN ('sent', 'rejected')
               RETURNING 1),
         s AS (DELETE FROM sends WHERE id IN (SELECT id FROM batch) RETURNING sent_at)
         SELECT (SELECT count(*) FROM s) AS sends, (SELECT max(sent_at) FROM s) AS last,
                (SELECT count(*) FROM r) AS records, (SELECT count(*) FROM a) AS attempts,
                (SELECT count(*) FROM v) AS revisions, (SELECT count(*) FROM c) AS conversions",
    ))
    .bind(plan.before)
    .bind(cursor)
    .bind(plan.batch)
    .fetch_one(db.pool())
    .await?;
    Ok((
        Removed {
            sends: count(&row, "sends")?,
            records: count(&row, "records")?,
            attempts: count(&row, "attempts")?,
            record_revisions: count(&row, "revisions")?,
            conversions: count(&row, "conversions")?,
            conversion_rates: 0,
        },
        row.try_get("last")?,
    ))
}

/// The conversions that may go, older than $1: acknowledged or refused; an OTP one only
/// once no send of its verification id is left.
macro_rules! removable_conversions {
    () => {
        "SELECT c.id FROM conversions c
         WHERE c.converted_at < $1 AND c.state IN ('sent', 'rejected') AND c.lease_token IS NULL
           AND (c.kind = 'sms'
                OR NOT EXISTS (SELECT 1 FROM sends s
                               WHERE s.verification_id = c.message_id AND s.app_id = c.app_id))"
    };
}

async fn remove_conversions(db: &Db, plan: &Plan) -> Result<u64, sqlx::Error> {
    db.counted(1);
    Ok(sqlx::query(concat!(
        "DELETE FROM conversions WHERE id IN (",
        removable_conversions!(),
        " ORDER BY c.converted_at LIMIT $2 FOR UPDATE OF c SKIP LOCKED)",
    ))
    .bind(plan.before)
    .bind(plan.batch)
    .execute(db.pool())
    .await?
    .rows_affected())
}

/// The rate windows that may go: ended by $1, posted or refused, not leased.
macro_rules! removable_rates {
    () => {
        "SELECT app_id, mcc, window_start, window_length FROM conversion_rates
         WHERE window_start < $1 AND window_start + window_length <= $1
           AND state IN ('sent', 'rejected') AND lease_token IS NULL"
    };
}

async fn remove_rates(db: &Db, plan: &Plan) -> Result<u64, sqlx::Error> {
    db.counted(1);
    Ok(sqlx::query(concat!(
        "DELETE FROM conversion_rates WHERE (app_id, mcc, window_start, window_length) IN (",
        removable_rates!(),
        " ORDER BY window_start LIMIT $2 FOR UPDATE SKIP LOCKED)",
    ))
    .bind(plan.before)
    .bind(plan.batch)
    .execute(db.pool())
    .await?
    .rows_affected())
}

/// For `--dry-run`: what would go, per table (the same conditions as the batches).
async fn would_remove(db: &Db, plan: &Plan) -> Result<Removed, sqlx::Error> {
    db.counted(3);
    let row = sqlx::query(concat!(
        "WITH ",
        blocked_and_waiting!(),
        ",
         batch AS MATERIALIZED (",
        removable_sends!(),
        ")
         SELECT (SELECT count(*) FROM batch) AS sends,
                (SELECT count(*) FROM records WHERE send_id IN (SELECT id FROM batch)) AS records,
                (SELECT count(*) FROM attempts WHERE send_id IN (SELECT id FROM batch)) AS attempts,
                (SELECT count(*) FROM record_revisions WHERE send_id IN (SELECT id FROM batch)) AS revisions,
                (SELECT count(*) FROM conversions c JOIN batch b
                        ON c.kind = 'otp' AND c.app_id = b.app_id AND c.message_id = b.verification_id
                 WHERE c.state IN ('sent', 'rejected')) AS conversions",
    ))
    .bind(plan.before)
    .bind(earliest())
    .fetch_one(db.pool())
    .await?;
    // Conversions without a send that goes or stays: those whose send is gone already.
    let orphans: i64 = sqlx::query_scalar(concat!(
        "SELECT count(*) FROM (",
        removable_conversions!(),
        ") AS x"
    ))
    .bind(plan.before)
    .fetch_one(db.pool())
    .await?;
    let rates: i64 = sqlx::query_scalar(concat!(
        "SELECT count(*) FROM (",
        removable_rates!(),
        ") AS x"
    ))
    .bind(plan.before)
    .fetch_one(db.pool())
    .await?;
    Ok(Removed {
        sends: count(&row, "sends")?,
        records: count(&row, "records")?,
        attempts: count(&row, "attempts")?,
        record_revisions: count(&row, "revisions")?,
        conversions: count(&row, "conversions")? + u64::try_from(orphans).unwrap_or(0),
        conversion_rates: u64::try_from(rates).unwrap_or(0),
    })
}

/// What is older than `before` and stays (in a dry run: stays besides what would go),
/// by reason, first reason first.
async fn kept(db: &Db, plan: &Plan) -> Result<Kept, sqlx::Error> {
    db.counted(3);
    // After a prune, few sends older than `before` are left; in a dry run, this reads
    // the range (as the dry run's count does).
    let sends = sqlx::query(concat!(
        "WITH ",
        blocked_and_waiting!(),
        ",
         old AS (
             SELECT CASE
                 WHEN s.state IN ('pending', 'recheck') THEN 'not_final'
                 WHEN s.lease_token IS NOT NULL THEN 'leased'
                 WHEN EXISTS (SELECT 1 FROM blocked b
                              WHERE b.app_id = s.app_id AND s.sent_at >= b.window_start
                                AND s.sent_at < b.window_end) THEN 'window'
                 WHEN EXISTS (SELECT 1 FROM waiting w
                              WHERE w.app_id = s.app_id AND w.message_id = s.verification_id)
                      THEN 'conversion'
                 ELSE 'busy' END AS reason
             FROM sends s WHERE s.sent_at < $1)
         SELECT count(*) FILTER (WHERE reason = 'not_final') AS not_final,
                count(*) FILTER (WHERE reason = 'leased') AS leased,
                count(*) FILTER (WHERE reason = 'window') AS window_not_posted,
                count(*) FILTER (WHERE reason = 'conversion') AS conversion,
                count(*) FILTER (WHERE reason = 'busy') AS busy
         FROM old",
    ))
    .bind(plan.before)
    .fetch_one(db.pool())
    .await?;
    let conversions = sqlx::query(
        "SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
                count(*) FILTER (WHERE state = 'pending' AND in_doubt) AS in_doubt,
                count(*) FILTER (WHERE state IN ('sent', 'rejected') AND kind = 'otp'
                                   AND EXISTS (SELECT 1 FROM sends s
                                               WHERE s.verification_id = c.message_id
                                                 AND s.app_id = c.app_id)) AS send_kept
         FROM conversions c WHERE converted_at < $1",
    )
    .bind(plan.before)
    .fetch_one(db.pool())
    .await?;
    let rates: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversion_rates
         WHERE window_start < $1 AND window_start + window_length <= $1
           AND (state = 'pending' OR lease_token IS NOT NULL)",
    )
    .bind(plan.before)
    .fetch_one(db.pool())
    .await?;
    let get = |row: &sqlx::postgres::PgRow, c: &str| row.try_get::<i64, _>(c);
    let busy = get(&sends, "busy")?;
    let conversions_send_kept = get(&conversions, "send_kept")?;
    Ok(Kept {
        sends_not_final: get(&sends, "not_final")?,
        sends_leased: get(&sends, "leased")?,
        sends_window_not_posted: get(&sends, "window_not_posted")?,
        sends_conversion_pending: get(&sends, "conversion")?,
        // In a dry run, what would go is not kept.
        sends_busy: if plan.dry_run { 0 } else { busy },
        conversions_pending: get(&conversions, "pending")?,
        conversions_in_doubt: get(&conversions, "in_doubt")?,
        conversions_send_kept: if plan.dry_run {
            0
        } else {
            conversions_send_kept
        },
        conversion_rates_not_posted: rates,
    })
}

impl Report {
    /// For a terminal.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let verb = if self.dry_run {
            "would remove"
        } else {
            "removed"
        };
        let r = &self.removed;
        let _ = writeln!(out, "prune before {}: {verb}", self.before.to_rfc3339());
        for (table, n) in [
            ("sends", r.sends),
            ("records", r.records),
            ("attempts", r.attempts),
            ("record_revisions", r.record_revisions),
            ("conversions", r.conversions),
            ("conversion_rates", r.conversion_rates),
        ] {
            let _ = writeln!(out, "  {table:<18} {n:>12}");
        }
        let k = &self.kept;
        let _ = writeln!(
            out,
            "kept (older than --before, not final or not done yet):"
        );
        for (n, why) in [
            (k.sends_not_final, "sends not final (pending or recheck)"),
            (k.sends_leased, "sends under a lease (a replay holds them)"),
            (
                k.sends_window_not_posted,
                "sends whose conversion-rate window is not posted yet",
            ),
            (
                k.sends_conversion_pending,
                "sends whose OTP conversion is not posted back yet",
            ),
            (
                k.sends_busy,
                "sends locked by a pass meanwhile (next prune)",
            ),
            (
                k.conversions_pending,
                "conversions not acknowledged yet (pending)",
            ),
            (
                k.conversions_in_doubt,
                "  of them in doubt (may have reached the provider)",
            ),
            (
                k.conversions_send_kept,
                "OTP conversions whose send is kept",
            ),
            (
                k.conversion_rates_not_posted,
                "conversion-rate windows not posted yet",
            ),
        ] {
            let _ = writeln!(out, "  {n:>12} {why}");
        }
        if !self.dry_run {
            let _ = writeln!(
                out,
                "{} sends at {:.0} sends/s; {:.1} s in all, {} transactions",
                r.sends, self.sends_per_sec, self.elapsed_secs, self.batches
            );
        }
        out
    }
}
