//! The `conversion_rates` table: per app, mcc and closed window, the OTP sends that
//! settled and how many of them converted; posted to `/otp/backfillRate` once.
//!
//! Definitions (the issue's, in one place):
//! - windows are an hour or a day, aligned to UTC; a window is closed once it ended at
//!   least `settle_delay` ago; windows that start before `now - lookback` are never
//!   computed;
//! - a window is final once it is closed and no send of its app in it is `pending` or
//!   `recheck`; only final windows are computed and posted, so the posted numbers are
//!   the final ones (a late change is reposted only with `--repost-rates`);
//! - a window is recomputed only when its inputs changed: the triggers of migration
//!   `20261127000020` mark the hours of changed sends, records and OTP conversions in
//!   `rate_dirty`, and a computation consumes the marks of the windows it computed;
//! - sent (backfillCardinalNumber): the sends in the window (by sent_at) whose record is
//!   settled and has that mcc (the mcc of the record's first attempt that has one);
//! - converted (backfillNumber): how many of those sends have an OTP conversion (of the
//!   same app, whose message_id is the send's verification id);
//! - the rate (backfillNow) is [`crate::provider::api::rate_percent`].

use crate::db::Db;
use crate::lease::{self, Claim, Table, lease_cleared, leased_table, still_held};
use crate::ledger::Posted;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use clap::ValueEnum;
use serde::Serialize;
use sqlx::Row;
use std::time::Duration;
use uuid::Uuid;

/// `--rate-window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
pub enum Window {
    #[value(name = "1h")]
    #[serde(rename = "1h")]
    Hour,
    #[value(name = "1d")]
    #[serde(rename = "1d")]
    Day,
}

impl Window {
    pub fn length(self) -> TimeDelta {
        match self {
            Window::Hour => TimeDelta::hours(1),
            Window::Day => TimeDelta::days(1),
        }
    }

    /// As PostgreSQL reads an interval.
    fn interval(self) -> &'static str {
        match self {
            Window::Hour => "1 hour",
            Window::Day => "1 day",
        }
    }
}

/// How rates are computed and posted.
#[derive(Debug, Clone, Serialize)]
pub struct Rules {
    pub window: Window,
    #[serde(serialize_with = "crate::ser::duration")]
    pub settle_delay: Duration,
    #[serde(serialize_with = "crate::ser::duration")]
    pub lookback: Duration,
    /// Post again a window whose numbers changed after it was posted.
    pub repost: bool,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            window: Window::Hour,
            settle_delay: Duration::from_secs(3_600),
            lookback: Duration::from_secs(7 * 86_400),
            repost: false,
        }
    }
}

impl Rules {
    /// The closed windows to compute at `now`: those starting at or after the first
    /// boundary inside the lookback and ending by `now - settle_delay`. Empty when the
    /// start is not before the end.
    pub fn range(&self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let length = self.window.length();
        let earliest = crate::clock::before(now, self.lookback);
        let from = earliest.duration_trunc(length).unwrap_or(earliest);
        let from = if from < earliest { from + length } else { from };
        let latest_end = crate::clock::before(now, self.settle_delay);
        let until = latest_end.duration_trunc(length).unwrap_or(latest_end);
        (from, until)
    }
}

/// The windows to compute, and what they are, as CTEs ending in `fresh` (app_id, mcc,
/// window_start, converted, sent) and `final` (app_id, window_start); `consumed` removes
/// the marks of the final windows (in a statement that writes). Parameters: $1 the window
/// as an interval, $2 and $3 the range of window starts, `$apps` the apps (all if empty).
///
/// - `candidates`: the windows in range holding an hour marked in `rate_dirty` (the
///   triggers mark the hours whose sends, records or OTP conversions changed);
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
                   AND s.sent_at >= c.window_start AND s.sent_at < c.window_start + $1::interval)),
         fresh AS (
             SELECT s.app_id, r.mcc, f.window_start, count(c.one) AS converted, count(*) AS sent
             FROM final f
             JOIN sends s ON s.app_id = f.app_id
                         AND s.sent_at >= f.window_start AND s.sent_at < f.window_start + $1::interval
             JOIN records r ON r.send_id = s.id
             LEFT JOIN LATERAL (
                 SELECT 1 AS one FROM conversions c
                 WHERE c.kind = 'otp' AND c.app_id = s.app_id AND c.message_id = s.verification_id
                 LIMIT 1) AS c ON true
             WHERE s.state = 'settled' AND r.mcc IS NOT NULL
             GROUP BY 1, 2, 3)")
    };
}

/// The SQL condition "`$column` is one of the apps in `$apps`, a text[] parameter (all
/// apps if it is empty)": the scope of `run --app-id`.
macro_rules! in_apps {
    ($column:literal, $apps:literal) => {
        concat!(
            "(cardinality(",
            $apps,
            "::text[]) = 0 OR ",
            $column,
            " = ANY(",
            $apps,
            "::text[]))"
        )
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
            changed_after_post: changed_after_post(db).await?,
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
             WHERE state = 'sent' AND (converted, sent) IS DISTINCT FROM (posted_converted, posted_sent)
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
        changed_after_post: changed_after_post(db).await?,
        windows_computed: u64::try_from(computed).unwrap_or(0),
    })
}

/// Posted windows whose numbers differ from what was posted (through the partial index
/// `conversion_rates_changed`).
async fn changed_after_post(db: &Db) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversion_rates
         WHERE state = 'sent' AND (converted, sent) IS DISTINCT FROM (posted_converted, posted_sent)",
    )
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

/// A window claimed for posting, with the numbers to post.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: i64,
    pub app_id: String,
    pub mcc: i64,
    pub window_start: DateTime<Utc>,
    /// The window's length as PostgreSQL prints it.
    pub window_length: String,
    pub converted: i64,
    pub sent: i64,
    pub in_doubt: bool,
    pub lease: Uuid,
}

/// The windows a pass posts: pending and due. One whose last lease was abandoned is
/// marked in doubt. $9: now.
pub static DUE: Table = leased_table! {
    table: "conversion_rates",
    due: "t.state = 'pending' AND t.next_attempt_at <= $9",
    order: "t.next_attempt_at",
    shard_key: "app_id",
    on_claim: ", next_attempt_at = now() + $4::bigint * interval '1 millisecond',
                in_doubt = t.in_doubt OR t.lease_token IS NOT NULL",
    on_renew: ", next_attempt_at = now() + $3::bigint * interval '1 millisecond'",
    on_release: ", next_attempt_at = $1, in_doubt = t.in_doubt OR u.in_doubt",
    returning: "t.id, t.app_id, t.mcc, t.window_start, t.window_length::text AS window_length,
                t.converted, t.sent, t.in_doubt",
};

/// Claims up to `c.limit` pending windows due at `now`.
pub async fn claim(
    db: &Db,
    now: DateTime<Utc>,
    c: &Claim<'_>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let (token, rows) = lease::claim(db, &DUE, c, |q| q.bind(now)).await?;
    rows.iter()
        .map(|r| {
            Ok(Claimed {
                id: r.try_get("id")?,
                app_id: r.try_get("app_id")?,
                mcc: r.try_get("mcc")?,
                window_start: r.try_get("window_start")?,
                window_length: r.try_get("window_length")?,
                converted: r.try_get("converted")?,
                sent: r.try_get("sent")?,
                in_doubt: r.try_get("in_doubt")?,
                lease: token,
            })
        })
        .collect()
}

/// A window posted, to record: the rate and callbackTime sent with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub window: Claimed,
    pub posted: Posted,
    pub rate: rust_decimal::Decimal,
    pub callback_at: DateTime<Utc>,
    pub in_doubt: bool,
}

/// Records postings of windows still held under their lease; answers the ids written.
/// An acknowledgement is recorded even when the lease was lost meanwhile (the provider
/// has it: posting it again would duplicate it).
pub async fn complete(db: &Db, now: DateTime<Utc>, done: &[Done]) -> Result<Vec<i64>, sqlx::Error> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let mut state = Vec::with_capacity(done.len());
    let mut next = Vec::with_capacity(done.len());
    let mut rate = Vec::with_capacity(done.len());
    let mut posted_at = Vec::with_capacity(done.len());
    let mut error = Vec::with_capacity(done.len());
    for d in done {
        let (s, n, e) = d.posted.columns(now);
        state.push(s);
        next.push(n);
        rate.push(d.posted.is_sent().then_some(d.rate));
        posted_at.push(d.posted.is_sent().then_some(d.callback_at));
        error.push(e);
    }
    db.counted(1);
    sqlx::query_scalar(concat!(
        "UPDATE conversion_rates t
         SET state = u.state, attempts = t.attempts + 1, next_attempt_at = u.next_attempt_at,
             last_error = u.last_error, in_doubt = u.in_doubt,
             posted_converted = CASE WHEN u.state = 'sent' THEN u.converted ELSE t.posted_converted END,
             posted_sent = CASE WHEN u.state = 'sent' THEN u.sent ELSE t.posted_sent END,
             posted_rate = coalesce(u.rate, t.posted_rate),
             posted_at = coalesce(u.posted_at, t.posted_at), ",
        lease_cleared!(),
        "
         FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::timestamptz[], $5::bigint[],
                     $6::bigint[], $7::numeric[], $8::timestamptz[], $9::text[], $10::bool[])
              AS u(id, lease, state, next_attempt_at, converted, sent, rate, posted_at,
                   last_error, in_doubt)
         WHERE (",
        still_held!(),
        ") OR (t.id = u.id AND u.state = 'sent' AND t.state = 'pending')
         RETURNING t.id",
    ))
    .bind(done.iter().map(|d| d.window.id).collect::<Vec<_>>())
    .bind(done.iter().map(|d| d.window.lease).collect::<Vec<_>>())
    .bind(state)
    .bind(next)
    .bind(done.iter().map(|d| d.window.converted).collect::<Vec<_>>())
    .bind(done.iter().map(|d| d.window.sent).collect::<Vec<_>>())
    .bind(rate)
    .bind(posted_at)
    .bind(error)
    .bind(done.iter().map(|d| d.in_doubt).collect::<Vec<_>>())
    .fetch_all(db.pool())
    .await
}

lease::impl_leased!(Claimed, in_doubt);

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn closed_windows_are_aligned_to_utc() {
        let hourly = Rules::default();
        // At 10:20, with a one-hour settle delay, windows up to 09:00 are closed; the
        // lookback starts at 10:20 seven days earlier, so the first whole hour is 11:00.
        let (from, until) = hourly.range(at("2026-11-26T10:20:00Z"));
        assert_eq!(from, at("2026-11-19T11:00:00Z"));
        assert_eq!(until, at("2026-11-26T09:00:00Z"));
        let daily = Rules {
            window: Window::Day,
            ..Rules::default()
        };
        let (from, until) = daily.range(at("2026-11-26T00:30:00Z"));
        assert_eq!(from, at("2026-11-20T00:00:00Z"));
        // 23:30 the day before is not a day's end: the 25th is not closed yet.
        assert_eq!(until, at("2026-11-25T00:00:00Z"));
        let (_, until) = daily.range(at("2026-11-26T01:00:00Z"));
        assert_eq!(until, at("2026-11-26T00:00:00Z"));
    }
}
