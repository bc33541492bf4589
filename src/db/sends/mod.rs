//! The `sends` table: inserting sends, claiming due ones under a lease (`leased`),
//! completing them with the lease token in the `WHERE`, and releasing what a pass did
//! not finish; its counts (`counts`) and its share of retention ([`prune`]). Every
//! write is one statement for the whole batch.

mod counts;
mod leased;
pub mod prune;

pub use counts::{
    Depth, Due, Estimate, Leases, count_range, depth, due, final_estimate, last_sent_at, leases,
};
pub use leased::{
    BY_ID, Claimed, DUE, DueClaims, IN_RANGE, claim, claim_ids, claim_range, ids_in_range,
};

use crate::db::Db;
use crate::db::lease::lease_rows_ended;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// The SQL condition "send `$t` (the table or its alias) is due at `$now`": not final,
/// and its next check has come (the partial index `sends_due`).
macro_rules! send_due {
    ($t:literal, $now:literal) => {
        concat!(
            $t,
            ".state IN ('pending', 'recheck') AND ",
            $t,
            ".next_check_at <= ",
            $now
        )
    };
}
pub(crate) use send_due;

/// The SQL condition "send `$t` (the table or its alias) was sent in [`$from`, `$to`)":
/// a replay's range, a rate window, a prune's batch.
macro_rules! sent_in {
    ($t:literal, $from:literal, $to:literal) => {
        concat!($t, ".sent_at >= ", $from, " AND ", $t, ".sent_at < ", $to)
    };
}
pub(crate) use sent_in;

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

/// The sends a replay re-fetches: sent_at in [from, to), of these apps (all if none).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Range {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub app_ids: Vec<String>,
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

/// Who completes checked sends, and so who marks the hours they touch in `rate_dirty`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completing {
    /// A pass of due sends. It marks the hour of every send it completes, in the
    /// completion's statement, and sets `otp_reconcile.pass_marks_hours` for the rest
    /// of the transaction, so the row triggers of `sends` and `records` mark nothing
    /// for its writes (migration `20261128000080`). The sends it claims are all pending
    /// or recheck, so a mark for one that did not change waits with its window.
    Pass,
    /// A replay: a send whose state does not change keeps its `next_check_at`,
    /// `last_error`, check count and `updated_at` (a replay that finds nothing new
    /// leaves the row as it was), and the triggers mark what changed.
    Replay,
}

/// Writes the checked sends still held under their lease, in the caller's transaction;
/// answers the (id, lease) of each send written. A send whose lease expired and was
/// claimed again is left as its new holder has it. The rows written stay locked until
/// the transaction ends. Two statements for a pass (see [`Completing::Pass`]), one for a
/// replay.
pub async fn complete(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    done: &[Completion],
    by: Completing,
) -> Result<Vec<(i64, Uuid)>, sqlx::Error> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let pass = by == Completing::Pass;
    if pass {
        sqlx::query("SELECT set_config('otp_reconcile.pass_marks_hours', 'on', true)")
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query_as(concat!(
        "WITH u AS (SELECT * FROM unnest($2::bigint[], $3::uuid[], $4::text[],
                                         $5::timestamptz[], $6::text[])
                    AS u(id, lease, state, next_check_at, last_error)),
         ",
        lease_rows_ended!("ended", "send_leases", "send_id", "u"),
        ",
         written AS (
         UPDATE sends t
         SET state = u.state,
             next_check_at = CASE WHEN $7 AND t.state = u.state THEN t.next_check_at ELSE u.next_check_at END,
             last_error = CASE WHEN $7 AND t.state = u.state THEN t.last_error ELSE u.last_error END,
             attempts = CASE WHEN $7 AND t.state = u.state THEN t.attempts ELSE t.attempts + 1 END,
             last_checked_at = CASE WHEN $7 AND t.state = u.state THEN t.last_checked_at ELSE $1 END,
             updated_at = CASE WHEN $7 AND t.state = u.state THEN t.updated_at ELSE $1 END
         FROM ended u
         WHERE t.id = u.id
         RETURNING t.id, u.lease, t.app_id, t.sent_at),
         marked AS (
         INSERT INTO rate_dirty (app_id, hour)
         SELECT DISTINCT app_id, date_bin('1 hour', sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
         FROM written
         WHERE NOT $7
         ORDER BY 1, 2)
         SELECT id, lease FROM written",
    ))
    .bind(now)
    .bind(done.iter().map(|c| c.id).collect::<Vec<_>>())
    .bind(done.iter().map(|c| c.lease).collect::<Vec<_>>())
    .bind(done.iter().map(|c| c.state.as_str()).collect::<Vec<_>>())
    .bind(done.iter().map(|c| c.next_check_at).collect::<Vec<_>>())
    .bind(done.iter().map(|c| c.last_error.clone()).collect::<Vec<_>>())
    .bind(!pass)
    .fetch_all(conn)
    .await
}

/// Clears leases that expired on sends no claim comes back for (settled, rejected or
/// expired: a replay died holding them), and leases of sends that are gone (deleted by
/// hand). Answers how many.
pub async fn clear_dead_leases(db: &Db) -> Result<u64, sqlx::Error> {
    db.counted(1);
    Ok(sqlx::query(
        "DELETE FROM send_leases l
         WHERE l.expires_at <= now()
           AND NOT EXISTS (SELECT 1 FROM sends s
                           WHERE s.id = l.send_id AND s.state IN ('pending', 'recheck'))",
    )
    .execute(db.pool())
    .await?
    .rows_affected())
}
