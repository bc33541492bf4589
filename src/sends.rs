//! The `sends` table: inserting sends, claiming due ones under a lease, completing them
//! with the lease token in the `WHERE`, and releasing what a pass did not finish.
//! Every write is one statement for the whole batch.

use crate::db::Db;
use crate::lease::{self, Claim, Scope, Table, in_scope, lease_cleared, leased_table, still_held};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, Row};
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

/// The sends a pass claims when they are due. While leased, a send's `next_check_at` is
/// its lease expiry, so a crashed pass's sends come due again by themselves and claiming
/// never walks over leased rows; a renewal moves both. A send given back unchecked is
/// due when it was due before its claim (`due_at`): no check counted, nothing pushed
/// back, so a pass stopped by an outage leaves its sends as they were. $9: now.
pub static DUE: Table = leased_table! {
    table: "sends",
    due: "t.state IN ('pending', 'recheck') AND t.next_check_at <= $9",
    order: "t.next_check_at",
    shard_key: "coalesce(verification_id, app_id || ':' || order_id)",
    on_claim: ", next_check_at = now() + $4::bigint * interval '1 millisecond', updated_at = $9",
    on_renew: ", next_check_at = CASE WHEN t.next_check_at = t.lease_expires_at
                                      THEN now() + $3::bigint * interval '1 millisecond'
                                      ELSE t.next_check_at END",
    on_release: ", next_check_at = coalesce(u.due_at, $1), updated_at = $1",
    before: ", t.next_check_at AS due_at",
    returning: "t.id, t.app_id, t.verification_id, t.order_id, t.number, t.sent_at, t.state, t.attempts,
                due.due_at",
};

/// A table of sends a replay claims, whatever their state, in id order, by `$due`. It
/// leaves `next_check_at` alone, so a send the replay does not change stays as it was
/// (and is given back as it was).
macro_rules! replay_table {
    ($due:literal) => {
        leased_table! {
            table: "sends",
            due: $due,
            order: "t.id",
            shard_key: "coalesce(verification_id, app_id || ':' || order_id)",
            on_claim: "",
            on_renew: ", next_check_at = CASE WHEN t.next_check_at = t.lease_expires_at
                                              THEN now() + $3::bigint * interval '1 millisecond'
                                              ELSE t.next_check_at END",
            on_release: ", next_check_at = coalesce(u.due_at, $1), updated_at = $1",
            returning: "t.id, t.app_id, t.verification_id, t.order_id, t.number, t.sent_at,
                        t.state, t.attempts, t.next_check_at AS due_at",
        }
    };
}

/// The sends a replay sweeps: in a range, above the highest id claimed so far.
/// $9, $10: the range of sent_at; $11: that id.
pub static IN_RANGE: Table = replay_table!("t.sent_at >= $9 AND t.sent_at < $10 AND t.id > $11");

/// The sends a replay comes back to, by id, once the pass that held them let go.
/// $9: the ids.
pub static BY_ID: Table = replay_table!("t.id = ANY($9::bigint[])");

/// Claims up to `c.limit` due sends at `now`, committed at once.
pub async fn claim(
    db: &Db,
    now: DateTime<Utc>,
    c: &Claim<'_>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let (token, rows) = lease::claim(db, &DUE, c, |q| q.bind(now)).await?;
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

/// Claims, for a replay, up to `c.limit` sends in `range` with an id above `after`,
/// whatever their state, skipping those another pass holds (`c.scope` carries the
/// range's apps).
pub async fn claim_range(
    db: &Db,
    range: &Range,
    after: i64,
    c: &Claim<'_>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let (from, to) = (range.from, range.to);
    let (token, rows) =
        lease::claim(db, &IN_RANGE, c, |q| q.bind(from).bind(to).bind(after)).await?;
    claimed_rows(&rows, token)
}

/// The ids in `range` above `after` (and up to `until`, if given), in id order: what a
/// replay's sweep passed over because another pass held them.
pub async fn ids_in_range(
    db: &Db,
    range: &Range,
    after: i64,
    until: Option<i64>,
) -> Result<Vec<i64>, sqlx::Error> {
    db.counted(1);
    sqlx::query_scalar(
        "SELECT id FROM sends
         WHERE sent_at >= $1 AND sent_at < $2
           AND (cardinality($3::text[]) = 0 OR app_id = ANY($3))
           AND id > $4 AND ($5::bigint IS NULL OR id <= $5)
         ORDER BY id",
    )
    .bind(range.from)
    .bind(range.to)
    .bind(&range.app_ids)
    .bind(after)
    .bind(until)
    .fetch_all(db.pool())
    .await
}

/// Claims, for a replay, those of `ids` no other pass holds now, whatever their state,
/// leaving `next_check_at` alone like [`claim_range`].
pub async fn claim_ids(db: &Db, ids: &[i64], c: &Claim<'_>) -> Result<Vec<Claimed>, sqlx::Error> {
    let (token, rows) = lease::claim(db, &BY_ID, c, |q| q.bind(ids.to_vec())).await?;
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
/// answers the (id, lease) of each send written. A send whose lease expired and was claimed again is left
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
) -> Result<Vec<(i64, Uuid)>, sqlx::Error> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_as(concat!(
        "UPDATE sends t
         SET state = u.state,
             next_check_at = CASE WHEN $7 AND t.state = u.state THEN t.next_check_at ELSE u.next_check_at END,
             last_error = CASE WHEN $7 AND t.state = u.state THEN t.last_error ELSE u.last_error END,
             attempts = CASE WHEN $7 AND t.state = u.state THEN t.attempts ELSE t.attempts + 1 END,
             last_checked_at = CASE WHEN $7 AND t.state = u.state THEN t.last_checked_at ELSE $1 END,
             updated_at = CASE WHEN $7 AND t.state = u.state THEN t.updated_at ELSE $1 END,
             ", lease_cleared!(), "
         FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::timestamptz[], $6::text[])
              AS u(id, lease, state, next_check_at, last_error)
         WHERE ", still_held!(), "
         RETURNING t.id, u.lease",
    ))
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

impl lease::Leased for Claimed {
    fn id(&self) -> i64 {
        self.id
    }
    fn lease(&self) -> Uuid {
        self.lease
    }
    fn due_at(&self) -> Option<DateTime<Utc>> {
        Some(self.due_at)
    }
}

/// Clears leases that expired on sends no claim comes back for (settled, rejected or
/// expired: a replay died holding them). Answers how many.
pub async fn clear_dead_leases(db: &Db) -> Result<u64, sqlx::Error> {
    db.counted(1);
    Ok(sqlx::query(
        "UPDATE sends SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
         WHERE lease_token IS NOT NULL AND lease_expires_at <= now()
           AND state IN ('settled', 'rejected', 'expired')",
    )
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

pub async fn due(db: &Db, now: DateTime<Utc>, scope: &Scope) -> Result<Vec<Due>, sqlx::Error> {
    db.counted(1);
    let query = sqlx::query(concat!(
        "SELECT state, app_id, count(*) AS count, min(next_check_at) AS oldest_due
         FROM sends
         WHERE state IN ('pending', 'recheck') AND next_check_at <= $1 AND ",
        in_scope!(
            "coalesce(verification_id, app_id || ':' || order_id)",
            "$2",
            "$3",
            "$4"
        ),
        "
         GROUP BY state, app_id
         ORDER BY state, app_id",
    ))
    .bind(now);
    let rows = lease::bind_scope(query, scope).fetch_all(db.pool()).await?;
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
