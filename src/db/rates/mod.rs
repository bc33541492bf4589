//! The `conversion_rates` ledger (and its marks, `rate_dirty`): per app, mcc and closed
//! window, the OTP sends that settled and how many of them converted; posted to
//! `/otp/backfillRate` once. The rules and the arithmetic are in [`crate::rates`]; the
//! computation of the windows is [`compute`].

mod compute;

pub use compute::{Computed, compute, preview};

/// The SQL condition "a posted window whose numbers differ from what was posted" (the
/// partial index `conversion_rates_changed`).
macro_rules! changed_after_post {
    () => {
        "state = 'sent' AND (converted, sent) IS DISTINCT FROM (posted_converted, posted_sent)"
    };
}
use changed_after_post;

use crate::db::Db;
use crate::db::lease::{self, Claim, Table, lease_cleared, leased_table, still_held};
use crate::db::ledger::{Posted, ledger_due};
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

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
    due: ledger_due!("t", "$9"),
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

/// The windows not posted yet, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub pending: i64,
    /// Posted windows whose numbers changed since (see `--repost-rates`).
    pub changed_after_post: i64,
}

pub async fn pending(db: &Db) -> Result<Pending, sqlx::Error> {
    db.counted(1);
    let row = sqlx::query(concat!(
        "SELECT (SELECT count(*) FROM conversion_rates WHERE state = 'pending') AS pending,
                (SELECT count(*) FROM conversion_rates
                 WHERE ",
        changed_after_post!(),
        ") AS changed",
    ))
    .fetch_one(db.pool())
    .await?;
    Ok(Pending {
        pending: row.try_get("pending")?,
        changed_after_post: row.try_get("changed")?,
    })
}

/// Prune's share of a statement: the CTE `blocked` (app_id, window_start, window_end) of
/// the windows not posted yet before $1, pending windows and marked hours, whose sends
/// stay. Both sets are small (what a pass has not done yet).
macro_rules! blocked {
    () => {
        "blocked AS MATERIALIZED (
                 SELECT app_id, window_start, window_start + window_length AS window_end
                 FROM conversion_rates WHERE state = 'pending' AND window_start < $1
                 UNION ALL
                 SELECT app_id, hour, hour + interval '1 hour' FROM rate_dirty WHERE hour < $1)"
    };
}
pub(crate) use blocked;

/// The rate windows that may go: ended by $1, posted or refused, not leased.
macro_rules! removable {
    () => {
        "SELECT app_id, mcc, window_start, window_length FROM conversion_rates
         WHERE window_start < $1 AND window_start + window_length <= $1
           AND state IN ('sent', 'rejected') AND lease_token IS NULL"
    };
}

/// Removes up to `limit` windows that may go (see `removable!`), oldest first,
/// skipping those locked; answers how many went.
pub async fn remove_old(db: &Db, before: DateTime<Utc>, limit: i64) -> Result<u64, sqlx::Error> {
    let statement = concat!(
        "DELETE FROM conversion_rates WHERE (app_id, mcc, window_start, window_length) IN (",
        removable!(),
        " ORDER BY window_start LIMIT $2 FOR UPDATE SKIP LOCKED)",
    );
    crate::db::prune_old(db, statement, before, limit).await
}

/// How many windows may go now.
pub async fn count_removable(db: &Db, before: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    let statement = concat!("SELECT count(*) FROM (", removable!(), ") AS x");
    crate::db::count_old(db, statement, before).await
}

/// The windows ended by `before` that stay: not posted yet (pending) or under a lease.
pub async fn kept_old(db: &Db, before: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    let statement = "SELECT count(*) FROM conversion_rates
         WHERE window_start < $1 AND window_start + window_length <= $1
           AND (state = 'pending' OR lease_token IS NOT NULL)";
    crate::db::count_old(db, statement, before).await
}

/// Where the latest computed window ends (`None` when none is).
pub async fn last_window_end(db: &Db) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    db.counted(1);
    sqlx::query_scalar("SELECT max(window_start + window_length) FROM conversion_rates")
        .fetch_one(db.pool())
        .await
}
