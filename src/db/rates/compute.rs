//! The computation of the `conversion_rates` windows from `rate_dirty`, `sends`,
//! `records` and `conversions` (the definitions are in [`crate::rates`]): one statement
//! that reads the marked windows and writes the ledger.

use super::changed_after_post;
use crate::db::sends::sent_in;
use crate::db::{Db, in_apps};
use crate::rates::Rules;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

/// The windows to compute, and what they are, as CTEs ending in `fresh` (app_id, mcc,
/// window_start, converted, sent) and `final` (app_id, window_start); `consumed` removes
/// the marks of the final windows (in a statement that writes). Parameters: $1 the window
/// as an interval, $2 and $3 the range of window starts, `$apps` the apps (all if empty).
///
/// - `candidates`: the windows in range holding an hour marked in `rate_dirty` (the
///   triggers and a pass's completion mark the hours whose sends, records or OTP
///   conversions changed);
/// - `final`: those with no send still `pending` or `recheck` (through the partial
///   index `sends_open`); the others keep their marks and wait;
/// - `fresh`: the aggregate of the definition over the final windows only; the OTP
///   conversion of each send is looked up by index (a lateral subquery), so the plan
///   never hashes the whole conversions table, whatever the planner guesses.
macro_rules! dirty_windows {
    ($apps:literal) => {
        concat!("candidates AS (
             SELECT DISTINCT d.app_id,
                    date_bin($1::interval, d.hour, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS window_start
             FROM rate_dirty d
             WHERE d.hour >= $2 AND d.hour < $3
               AND ", in_apps!("d.app_id", $apps), "),
         final AS (
             SELECT c.app_id, c.window_start FROM candidates c
             WHERE NOT EXISTS (
                 SELECT 1 FROM sends s
                 WHERE s.state IN ('pending', 'recheck') AND s.app_id = c.app_id
                   AND ", sent_in!("s", "c.window_start", "c.window_start + $1::interval"), ")),
         fresh AS (
             SELECT s.app_id, r.mcc, f.window_start, count(c.one) AS converted, count(*) AS sent
             FROM final f
             JOIN sends s ON s.app_id = f.app_id
                         AND ", sent_in!("s", "f.window_start", "f.window_start + $1::interval"), "
             JOIN records r ON r.send_id = s.id
             LEFT JOIN LATERAL (
                 SELECT 1 AS one FROM conversions c
                 WHERE c.kind = 'otp' AND c.app_id = s.app_id AND c.message_id = s.verification_id
                 LIMIT 1) AS c ON true
             WHERE s.state = 'settled' AND r.mcc IS NOT NULL
             GROUP BY 1, 2, 3)")
    };
}

/// What a computation changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Computed {
    /// Windows inserted or whose numbers changed.
    pub windows_changed: u64,
    /// Posted windows whose numbers differ from what was posted (reposted only with
    /// `--repost-rates`).
    pub changed_after_post: u64,
    /// Final windows recomputed because their inputs changed.
    pub windows_computed: u64,
}

/// Computes the windows in range whose inputs changed since they were last computed
/// and whose sends are all final, and records them: new windows become pending; a
/// posted window whose numbers changed is pending again only with `rules.repost`. A
/// window still holding a `pending` or `recheck` send is left for a later pass (its
/// posted numbers are then the final ones). One statement, plus one that drops the
/// marks of windows older than the lookback.
///
/// Only the windows of `apps` (all if empty) are computed: `run --app-id`.
pub async fn compute(
    db: &Db,
    now: DateTime<Utc>,
    rules: &Rules,
    apps: &[String],
) -> Result<Computed, sqlx::Error> {
    let (from, until) = rules.range(now);
    db.counted(3);
    // Marks of windows that start before the lookback are never computed.
    sqlx::query("DELETE FROM rate_dirty WHERE hour < $1")
        .bind(from)
        .execute(db.pool())
        .await?;
    if from >= until {
        return Ok(Computed::default());
    }
    // Nothing marked in range (a pass with nothing new): nothing to compute.
    let marked: bool = sqlx::query_scalar(concat!(
        "SELECT EXISTS (SELECT 1 FROM rate_dirty WHERE hour >= $1 AND hour < $2 AND ",
        in_apps!("app_id", "$3"),
        ")"
    ))
    .bind(from)
    .bind(until)
    .bind(apps.to_vec())
    .fetch_one(db.pool())
    .await?;
    if !marked && !rules.repost {
        return Ok(Computed {
            changed_after_post: count_changed_after_post(db).await?,
            ..Computed::default()
        });
    }
    db.counted(1);
    let row = sqlx::query(concat!(
        "WITH ",
        dirty_windows!("$6"),
        ",
         consumed AS (
             DELETE FROM rate_dirty d USING final f
             WHERE d.app_id = f.app_id
               AND d.hour >= f.window_start AND d.hour < f.window_start + $1::interval
             RETURNING d.id),
         vanished AS (
             DELETE FROM conversion_rates r USING final f
             WHERE r.app_id = f.app_id AND r.window_start = f.window_start
               AND r.window_length = $1::interval
               AND r.state = 'pending' AND r.posted_at IS NULL AND r.lease_token IS NULL
               AND r.attempts = 0 AND NOT r.in_doubt
               AND NOT EXISTS (SELECT 1 FROM fresh w
                               WHERE (w.app_id, w.mcc, w.window_start) = (r.app_id, r.mcc, r.window_start))
             RETURNING 1),
         upserted AS (
             INSERT INTO conversion_rates AS r
                 (app_id, mcc, window_start, window_length, converted, sent, computed_at, next_attempt_at)
             SELECT app_id, mcc, window_start, $1::interval, converted, sent, $4, $4
             FROM fresh
             ON CONFLICT (app_id, mcc, window_start, window_length) DO UPDATE
             SET converted = EXCLUDED.converted, sent = EXCLUDED.sent,
                 computed_at = EXCLUDED.computed_at,
                 state = CASE WHEN $5 AND r.state = 'sent'
                              AND (r.posted_converted, r.posted_sent) IS DISTINCT FROM (EXCLUDED.converted, EXCLUDED.sent)
                              THEN 'pending' ELSE r.state END,
                 next_attempt_at = CASE WHEN $5 AND r.state = 'sent' THEN EXCLUDED.next_attempt_at
                                        ELSE r.next_attempt_at END
             WHERE (r.converted, r.sent) IS DISTINCT FROM (EXCLUDED.converted, EXCLUDED.sent)
                OR ($5 AND r.state = 'sent'
                    AND (r.posted_converted, r.posted_sent) IS DISTINCT FROM (EXCLUDED.converted, EXCLUDED.sent))
             RETURNING 1)
         SELECT (SELECT count(*) FROM upserted) AS changed,
                (SELECT count(*) FROM vanished) AS vanished,
                (SELECT count(*) FROM final) AS computed,
                (SELECT count(*) FROM consumed) AS consumed",
    ))
    .bind(rules.window.interval())
    .bind(from)
    .bind(until)
    .bind(now)
    .bind(rules.repost)
    .bind(apps.to_vec())
    .fetch_one(db.pool())
    .await?;
    let mut changed: i64 = row.try_get("changed")?;
    if rules.repost {
        // Windows recomputed by earlier passes (without --repost-rates) whose numbers
        // differ from what was posted: through the partial index of those.
        db.counted(1);
        let reopened = sqlx::query(concat!(
            "UPDATE conversion_rates SET state = 'pending', next_attempt_at = $2
             WHERE ",
            changed_after_post!(),
            "
               AND window_length = $1::interval AND lease_token IS NULL AND ",
            in_apps!("app_id", "$3"),
        ))
        .bind(rules.window.interval())
        .bind(now)
        .bind(apps.to_vec())
        .execute(db.pool())
        .await?
        .rows_affected();
        changed += i64::try_from(reopened).unwrap_or(0);
    }
    let vanished: i64 = row.try_get("vanished")?;
    let computed: i64 = row.try_get("computed")?;
    Ok(Computed {
        windows_changed: u64::try_from(changed + vanished).unwrap_or(0),
        changed_after_post: count_changed_after_post(db).await?,
        windows_computed: u64::try_from(computed).unwrap_or(0),
    })
}

/// Posted windows whose numbers differ from what was posted (through the partial index
/// `conversion_rates_changed`).
async fn count_changed_after_post(db: &Db) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(concat!(
        "SELECT count(*) FROM conversion_rates
         WHERE ",
        changed_after_post!()
    ))
    .fetch_one(db.pool())
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// For `--dry-run`: how many windows a pass would post now (pending, or final windows
/// whose inputs changed that are new, or changed with `repost`), computing without
/// writing.
pub async fn preview(
    db: &Db,
    now: DateTime<Utc>,
    rules: &Rules,
    apps: &[String],
) -> Result<i64, sqlx::Error> {
    let (from, until) = rules.range(now);
    db.counted(1);
    sqlx::query_scalar(concat!(
        "WITH ",
        dirty_windows!("$5"),
        "
         SELECT count(*) FROM (
             SELECT app_id, mcc, window_start FROM conversion_rates
             WHERE state = 'pending' AND window_length = $1::interval AND ",
        in_apps!("app_id", "$5"),
        "
             UNION
             SELECT w.app_id, w.mcc, w.window_start
             FROM fresh w
             LEFT JOIN conversion_rates r
                    ON (r.app_id, r.mcc, r.window_start, r.window_length)
                     = (w.app_id, w.mcc, w.window_start, $1::interval)
             WHERE $2 < $3
               AND (r.app_id IS NULL
                    OR ($4 AND r.state = 'sent'
                        AND (r.posted_converted, r.posted_sent) IS DISTINCT FROM (w.converted, w.sent)))) AS x",
    ))
    .bind(rules.window.interval())
    .bind(from)
    .bind(until)
    .bind(rules.repost)
    .bind(apps.to_vec())
    .fetch_one(db.pool())
    .await
}
