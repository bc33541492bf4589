//! The `sends` table: inserting sends, claiming due ones under a lease, completing them
//! with the lease token in the `WHERE`, and releasing what a pass did not finish.
//! Every write is one statement for the whole batch.

use crate::db::{Db, in_shard};
use crate::lease::Lease;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Row};
use std::time::Duration;
use uuid::Uuid;

/// Where a send is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum SendState {
    Pending,
    Recheck,
    Settled,
    Expired,
    Rejected,
}

impl SendState {
    pub fn as_str(self) -> &'static str {
        match self {
            SendState::Pending => "pending",
            SendState::Recheck => "recheck",
            SendState::Settled => "settled",
            SendState::Expired => "expired",
            SendState::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => SendState::Pending,
            "recheck" => SendState::Recheck,
            "settled" => SendState::Settled,
            "expired" => SendState::Expired,
            "rejected" => SendState::Rejected,
            _ => return None,
        })
    }
}

/// A send to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSend {
    pub app_id: String,
    pub verification_id: Option<String>,
    pub order_id: Option<String>,
    pub number: Option<String>,
    pub channel: Option<String>,
    pub sent_at: DateTime<Utc>,
}

/// Inserts sends, skipping any whose id is already there. Due at once.
/// Answers how many were new.
pub async fn insert(db: &Db, sends: &[NewSend]) -> Result<u64, sqlx::Error> {
    if sends.is_empty() {
        return Ok(0);
    }
    let col = |f: fn(&NewSend) -> Option<String>| sends.iter().map(f).collect::<Vec<_>>();
    db.counted(1);
    let inserted = sqlx::query(
        "INSERT INTO sends (app_id, verification_id, order_id, number, channel, sent_at, next_check_at)
         SELECT app_id, verification_id, order_id, number, channel, sent_at, sent_at
         FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[])
              AS t(app_id, verification_id, order_id, number, channel, sent_at)
         ON CONFLICT DO NOTHING",
    )
    .bind(col(|s| Some(s.app_id.clone())))
    .bind(col(|s| s.verification_id.clone()))
    .bind(col(|s| s.order_id.clone()))
    .bind(col(|s| s.number.clone()))
    .bind(col(|s| s.channel.clone()))
    .bind(sends.iter().map(|s| s.sent_at).collect::<Vec<_>>())
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(inserted)
}

/// Which slice of the work a pass takes: items whose stable hash modulo `of` equals
/// `index` (see [`crate::db::in_shard`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: u32,
    pub of: u32,
}

impl Shard {
    /// Parses `I/N`, with I < N.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?}: expected I/N, like 0/4"))?;
        let index: u32 = i
            .trim()
            .parse()
            .map_err(|_| format!("{i:?} is not a shard index"))?;
        let of: u32 = n
            .trim()
            .parse()
            .map_err(|_| format!("{n:?} is not a shard count"))?;
        Self::new(index, of)
    }

    pub fn new(index: u32, of: u32) -> Result<Self, String> {
        if of == 0 || index >= of {
            return Err(format!(
                "shard {index}/{of}: the index must be below the count"
            ));
        }
        Ok(Self { index, of })
    }
}

/// A send claimed by a pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: i64,
    pub app_id: String,
    pub verification_id: Option<String>,
    pub order_id: Option<String>,
    pub number: Option<String>,
    pub sent_at: DateTime<Utc>,
    pub state: SendState,
    /// Checks made before this one.
    pub attempts: i32,
    pub lease: Uuid,
    /// When it was due before it was claimed: a release gives that back.
    pub due_at: DateTime<Utc>,
}

/// Claims up to `limit` due sends for `lease_for`, committed at once. While leased, a
/// send's `next_check_at` is its lease expiry, so a crashed pass's sends come due again
/// by themselves and claiming never walks over leased rows.
pub async fn claim(
    db: &Db,
    now: DateTime<Utc>,
    limit: i64,
    lease_for: Duration,
    owner: &str,
    shard: Option<Shard>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let Lease { token, expires } = Lease::claim(db, now, lease_for);
    let rows = sqlx::query(concat!(
        "WITH due AS (
             SELECT id, next_check_at AS due_at FROM sends
             WHERE state IN ('pending', 'recheck') AND next_check_at <= $1
               AND (lease_expires_at IS NULL OR lease_expires_at <= $1) AND ",
        in_shard!(
            "coalesce(verification_id, app_id || ':' || order_id)",
            "$5",
            "$6"
        ),
        "
             ORDER BY next_check_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED)
         UPDATE sends s
         SET lease_token = $3, lease_owner = $4, lease_expires_at = $7,
             next_check_at = $7, updated_at = $1
         FROM due WHERE s.id = due.id
         RETURNING s.id, s.app_id, s.verification_id, s.order_id, s.number, s.sent_at,
                   s.state, s.attempts, due.due_at",
    ))
    .bind(now)
    .bind(limit)
    .bind(token)
    .bind(owner)
    .bind(shard.map(|s| s.index as i32))
    .bind(shard.map_or(1, |s| i64::from(s.of)))
    .bind(expires)
    .fetch_all(db.pool())
    .await?;
    claimed_rows(&rows, token)
}

fn claimed_rows(rows: &[sqlx::postgres::PgRow], token: Uuid) -> Result<Vec<Claimed>, sqlx::Error> {
    rows.iter()
        .map(|row| {
            let state: String = row.try_get("state")?;
            Ok(Claimed {
                id: row.try_get("id")?,
                app_id: row.try_get("app_id")?,
                verification_id: row.try_get("verification_id")?,
                order_id: row.try_get("order_id")?,
                number: row.try_get("number")?,
                sent_at: row.try_get("sent_at")?,
                state: SendState::parse(&state).unwrap_or(SendState::Recheck),
                attempts: row.try_get("attempts")?,
                lease: token,
                due_at: row.try_get("due_at")?,
            })
        })
        .collect()
}

/// The sends a replay re-fetches: sent_at in [from, to), of these apps (all if none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Range {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub app_ids: Vec<String>,
}

/// Claims, for a replay, up to `limit` sends in `range` with an id above `after`,
/// whatever their state, skipping those another pass holds. Unlike [`claim`], it leaves
/// `next_check_at` alone, so a send the replay does not change stays as it was.
/// Also answers the ids it skipped up to the last one it claimed (held elsewhere), so
/// that the replay can come back to them.
pub async fn claim_range(
    db: &Db,
    now: DateTime<Utc>,
    range: &Range,
    after: i64,
    limit: i64,
    lease_for: Duration,
    owner: &str,
) -> Result<(Vec<Claimed>, Vec<i64>), sqlx::Error> {
    let Lease { token, expires } = Lease::claim(db, now, lease_for);
    let rows = sqlx::query(
        "WITH todo AS (
             SELECT id FROM sends
             WHERE sent_at >= $1 AND sent_at < $2
               AND (cardinality($3::text[]) = 0 OR app_id = ANY($3))
               AND id > $4
               AND (lease_expires_at IS NULL OR lease_expires_at <= $5)
             ORDER BY id
             LIMIT $6
             FOR UPDATE SKIP LOCKED),
         claimed AS (
             UPDATE sends s
             SET lease_token = $7, lease_owner = $8, lease_expires_at = $9
             FROM todo WHERE s.id = todo.id
             RETURNING s.id, s.app_id, s.verification_id, s.order_id, s.number, s.sent_at,
                       s.state, s.attempts, s.next_check_at AS due_at)
         SELECT c.*,
                (SELECT coalesce(array_agg(x.id), '{}') FROM sends x
                 WHERE x.sent_at >= $1 AND x.sent_at < $2
                   AND (cardinality($3::text[]) = 0 OR x.app_id = ANY($3))
                   AND x.id > $4 AND x.id <= (SELECT max(id) FROM claimed)
                   AND x.id NOT IN (SELECT id FROM claimed)) AS skipped
         FROM claimed c",
    )
    .bind(range.from)
    .bind(range.to)
    .bind(&range.app_ids)
    .bind(after)
    .bind(now)
    .bind(limit)
    .bind(token)
    .bind(owner)
    .bind(expires)
    .fetch_all(db.pool())
    .await?;
    let skipped = match rows.first() {
        Some(row) => row.try_get("skipped")?,
        None => Vec::new(),
    };
    Ok((claimed_rows(&rows, token)?, skipped))
}

/// The ids in `range` above `after`: what a replay's sweep left behind when its claims
/// came back empty (held elsewhere).
pub async fn ids_in_range(db: &Db, range: &Range, after: i64) -> Result<Vec<i64>, sqlx::Error> {
    db.counted(1);
    sqlx::query_scalar(
        "SELECT id FROM sends
         WHERE sent_at >= $1 AND sent_at < $2
           AND (cardinality($3::text[]) = 0 OR app_id = ANY($3))
           AND id > $4
         ORDER BY id",
    )
    .bind(range.from)
    .bind(range.to)
    .bind(&range.app_ids)
    .bind(after)
    .fetch_all(db.pool())
    .await
}

/// Claims, for a replay, those of `ids` no other pass holds now, whatever their state,
/// leaving `next_check_at` alone like [`claim_range`].
pub async fn claim_ids(
    db: &Db,
    now: DateTime<Utc>,
    ids: &[i64],
    limit: i64,
    lease_for: Duration,
    owner: &str,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let Lease { token, expires } = Lease::claim(db, now, lease_for);
    let rows = sqlx::query(
        "WITH todo AS (
             SELECT id FROM sends
             WHERE id = ANY($1) AND (lease_expires_at IS NULL OR lease_expires_at <= $2)
             ORDER BY id
             LIMIT $6
             FOR UPDATE SKIP LOCKED)
         UPDATE sends s
         SET lease_token = $3, lease_owner = $4, lease_expires_at = $5
         FROM todo WHERE s.id = todo.id
         RETURNING s.id, s.app_id, s.verification_id, s.order_id, s.number, s.sent_at,
                   s.state, s.attempts, s.next_check_at AS due_at",
    )
    .bind(ids)
    .bind(now)
    .bind(token)
    .bind(owner)
    .bind(expires)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    claimed_rows(&rows, token)
}

/// How many sends a replay of `range` would re-fetch, per state.
pub async fn count_range(db: &Db, range: &Range) -> Result<Vec<(String, i64)>, sqlx::Error> {
    db.counted(1);
    sqlx::query_as(
        "SELECT state, count(*) FROM sends
         WHERE sent_at >= $1 AND sent_at < $2 AND (cardinality($3::text[]) = 0 OR app_id = ANY($3))
         GROUP BY state ORDER BY state",
    )
    .bind(range.from)
    .bind(range.to)
    .bind(&range.app_ids)
    .fetch_all(db.pool())
    .await
}

/// How a checked send ends this pass.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub id: i64,
    pub lease: Uuid,
    pub state: SendState,
    pub next_check_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// Writes the checked sends still held under their lease, in the caller's transaction;
/// answers the ids written. A send whose lease expired and was claimed again is left
/// as its new holder has it. The rows written stay locked until the transaction ends.
///
/// With `keep_unchanged` (a replay), a send whose state does not change keeps its
/// `next_check_at`, `last_error`, check count and `updated_at`: a replay that finds
/// nothing new leaves the row as it was.
pub async fn complete(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    done: &[Completion],
    keep_unchanged: bool,
) -> Result<Vec<i64>, sqlx::Error> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE sends s
         SET state = u.state,
             next_check_at = CASE WHEN $7 AND s.state = u.state THEN s.next_check_at ELSE u.next_check_at END,
             last_error = CASE WHEN $7 AND s.state = u.state THEN s.last_error ELSE u.last_error END,
             attempts = CASE WHEN $7 AND s.state = u.state THEN s.attempts ELSE s.attempts + 1 END,
             last_checked_at = CASE WHEN $7 AND s.state = u.state THEN s.last_checked_at ELSE $1 END,
             updated_at = CASE WHEN $7 AND s.state = u.state THEN s.updated_at ELSE $1 END,
             lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
         FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::timestamptz[], $6::text[])
              AS u(id, lease, state, next_check_at, last_error)
         WHERE s.id = u.id AND s.lease_token = u.lease
         RETURNING s.id",
    )
    .bind(now)
    .bind(done.iter().map(|c| c.id).collect::<Vec<_>>())
    .bind(done.iter().map(|c| c.lease).collect::<Vec<_>>())
    .bind(done.iter().map(|c| c.state.as_str()).collect::<Vec<_>>())
    .bind(done.iter().map(|c| c.next_check_at).collect::<Vec<_>>())
    .bind(done.iter().map(|c| c.last_error.clone()).collect::<Vec<_>>())
    .bind(keep_unchanged)
    .fetch_all(conn)
    .await
}

/// Gives back sends a pass claimed but did not check: due again when they were due
/// before the claim (at once, or as they were for a replay), no check counted.
/// Answers how many were still held.
pub async fn release(db: &Db, now: DateTime<Utc>, held: &[Claimed]) -> Result<u64, sqlx::Error> {
    if held.is_empty() {
        return Ok(0);
    }
    db.counted(1);
    Ok(sqlx::query(
        "UPDATE sends s
         SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL,
             next_check_at = u.due_at, updated_at = $1
         FROM unnest($2::bigint[], $3::uuid[], $4::timestamptz[]) AS u(id, lease, due_at)
         WHERE s.id = u.id AND s.lease_token = u.lease",
    )
    .bind(now)
    .bind(held.iter().map(|c| c.id).collect::<Vec<_>>())
    .bind(held.iter().map(|c| c.lease).collect::<Vec<_>>())
    .bind(held.iter().map(|c| c.due_at).collect::<Vec<_>>())
    .execute(db.pool())
    .await?
    .rows_affected())
}

/// Clears leases that expired on sends no claim comes back for (settled, rejected or
/// expired: a replay died holding them). Answers how many.
pub async fn clear_dead_leases(db: &Db, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    db.counted(1);
    Ok(sqlx::query(
        "UPDATE sends SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
         WHERE lease_token IS NOT NULL AND lease_expires_at <= $1
           AND state IN ('settled', 'rejected', 'expired')",
    )
    .bind(now)
    .execute(db.pool())
    .await?
    .rows_affected())
}

/// Due sends per state and app: what a pass would claim now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Due {
    pub state: String,
    pub app_id: String,
    pub count: i64,
    pub oldest_due: DateTime<Utc>,
}

pub async fn due(
    db: &Db,
    now: DateTime<Utc>,
    shard: Option<Shard>,
) -> Result<Vec<Due>, sqlx::Error> {
    db.counted(1);
    let rows = sqlx::query(concat!(
        "SELECT state, app_id, count(*) AS count, min(next_check_at) AS oldest_due
         FROM sends
         WHERE state IN ('pending', 'recheck') AND next_check_at <= $1 AND ",
        in_shard!(
            "coalesce(verification_id, app_id || ':' || order_id)",
            "$2",
            "$3"
        ),
        "
         GROUP BY state, app_id
         ORDER BY state, app_id",
    ))
    .bind(now)
    .bind(shard.map(|s| s.index as i32))
    .bind(shard.map_or(1, |s| i64::from(s.of)))
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Due {
                state: r.try_get("state")?,
                app_id: r.try_get("app_id")?,
                count: r.try_get("count")?,
                oldest_due: r.try_get("oldest_due")?,
            })
        })
        .collect()
}
