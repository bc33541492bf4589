//! The `conversions` table: which sends converted, and the ledger of posting each one
//! back to the provider. Claimed under a lease like sends; a conversion marked `sent`
//! is never claimed again. Also its counts for `status` and its share of `prune`.

use crate::db::Db;
use crate::db::lease::{
    self, Claim, Scope, Table, in_scope, lease_cleared, leased_table, still_held,
};
use crate::db::ledger::{Posted, ledger_due};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use uuid::Uuid;

/// Which postback a conversion goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `/otp/postback/backfill`, by verificationId.
    Otp,
    /// `/sms/postback/backfill`, by SMS msgid.
    Sms,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Otp => "otp",
            Kind::Sms => "sms",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "otp" => Some(Kind::Otp),
            "sms" => Some(Kind::Sms),
            _ => None,
        }
    }
}

/// A conversion to insert.
#[derive(Debug, Clone, PartialEq)]
pub struct NewConversion {
    pub kind: Kind,
    pub app_id: String,
    pub message_id: String,
    pub number: Option<String>,
    pub converted_at: DateTime<Utc>,
}

/// Inserts conversions, skipping any (kind, message_id) already there. Answers how
/// many were new.
pub async fn insert(db: &Db, rows: &[NewConversion]) -> Result<u64, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    db.counted(1);
    Ok(sqlx::query(
        "INSERT INTO conversions (kind, app_id, message_id, number, converted_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
         ON CONFLICT (kind, message_id) DO NOTHING",
    )
    .bind(rows.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.app_id.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.message_id.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.number.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.converted_at).collect::<Vec<_>>())
    .execute(db.pool())
    .await?
    .rows_affected())
}

/// A conversion claimed for posting.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    pub id: i64,
    pub kind: Kind,
    pub app_id: String,
    pub message_id: String,
    /// The conversion's number, else its send's.
    pub number: Option<String>,
    pub converted_at: DateTime<Utc>,
    /// An earlier attempt's outcome is unknown.
    pub in_doubt: bool,
    pub lease: Uuid,
}

/// The conversions a pass claims: pending and due. One whose last lease was abandoned
/// (its pass died while posting) is marked in doubt. $9: now.
pub static DUE: Table = leased_table! {
    table: "conversions",
    due: ledger_due!("t", "$9"),
    order: "t.next_attempt_at",
    shard_key: "message_id",
    on_claim: ", next_attempt_at = now() + $4::bigint * interval '1 millisecond', updated_at = $9,
                in_doubt = t.in_doubt OR t.lease_token IS NOT NULL",
    on_renew: ", next_attempt_at = now() + $3::bigint * interval '1 millisecond'",
    on_release: ", next_attempt_at = $1, updated_at = $1, in_doubt = t.in_doubt OR u.in_doubt",
    returning: "t.id, t.kind, t.app_id, t.message_id, t.converted_at, t.in_doubt,
                coalesce(t.number, (SELECT s.number FROM sends s
                                    WHERE s.verification_id = t.message_id
                                      AND s.app_id = t.app_id)) AS number",
};

/// Claims up to `c.limit` pending conversions due at `now`.
pub async fn claim(
    db: &Db,
    now: DateTime<Utc>,
    c: &Claim<'_>,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let (token, rows) = lease::claim(db, &DUE, c, |q| q.bind(now)).await?;
    rows.iter()
        .map(|r| {
            let kind: String = r.try_get("kind")?;
            Ok(Claimed {
                id: r.try_get("id")?,
                kind: Kind::parse(&kind).unwrap_or(Kind::Otp),
                app_id: r.try_get("app_id")?,
                message_id: r.try_get("message_id")?,
                number: r.try_get("number")?,
                converted_at: r.try_get("converted_at")?,
                in_doubt: r.try_get("in_doubt")?,
                lease: token,
            })
        })
        .collect()
}

/// A posted conversion, to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Done {
    pub id: i64,
    pub lease: Uuid,
    pub posted: Posted,
    pub in_doubt: bool,
}

/// A conversion as a completion wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Written {
    pub id: i64,
    /// Acknowledged.
    pub sent: bool,
    /// Acknowledged, but an attempt's outcome was unknown: possibly duplicated.
    pub in_doubt: bool,
}

/// Records postings for the conversions still held under their lease; answers what was
/// written. An acknowledgement is recorded even when the lease was lost meanwhile (the
/// provider has it: posting it again would duplicate it); if another pass holds the
/// conversion then, it may post it too, so it is marked in doubt.
pub async fn complete(
    db: &Db,
    now: DateTime<Utc>,
    done: &[Done],
) -> Result<Vec<Written>, sqlx::Error> {
    if done.is_empty() {
        return Ok(Vec::new());
    }
    let mut state = Vec::with_capacity(done.len());
    let mut next = Vec::with_capacity(done.len());
    let mut sent_at = Vec::with_capacity(done.len());
    let mut error = Vec::with_capacity(done.len());
    for d in done {
        let (s, n, e) = d.posted.columns(now);
        state.push(s);
        next.push(n);
        sent_at.push(d.posted.is_sent().then_some(now));
        error.push(e);
    }
    db.counted(1);
    sqlx::query_as(concat!(
        "UPDATE conversions t
         SET state = u.state, attempts = t.attempts + 1, next_attempt_at = u.next_attempt_at,
             sent_at = u.sent_at, last_error = u.last_error,
             in_doubt = u.in_doubt OR (t.lease_token IS NOT NULL AND t.lease_token <> u.lease),
             updated_at = $1, ",
        lease_cleared!(),
        "
         FROM unnest($2::bigint[], $3::uuid[], $4::text[], $5::timestamptz[], $6::timestamptz[],
                     $7::text[], $8::bool[])
              AS u(id, lease, state, next_attempt_at, sent_at, last_error, in_doubt)
         WHERE t.state = 'pending' AND ((",
        still_held!(),
        ") OR (t.id = u.id AND u.state = 'sent'))
         RETURNING t.id, t.state = 'sent' AS sent, t.in_doubt",
    ))
    .bind(now)
    .bind(done.iter().map(|d| d.id).collect::<Vec<_>>())
    .bind(done.iter().map(|d| d.lease).collect::<Vec<_>>())
    .bind(state)
    .bind(next)
    .bind(sent_at)
    .bind(error)
    .bind(done.iter().map(|d| d.in_doubt).collect::<Vec<_>>())
    .fetch_all(db.pool())
    .await
}

lease::impl_leased!(Claimed, in_doubt);

/// Pending conversions due now, per kind and app.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Due {
    pub kind: String,
    pub app_id: String,
    pub count: i64,
}

pub async fn due(db: &Db, now: DateTime<Utc>, scope: &Scope) -> Result<Vec<Due>, sqlx::Error> {
    db.counted(1);
    let query = sqlx::query(concat!(
        "SELECT kind, app_id, count(*) AS count FROM conversions
         WHERE ",
        ledger_due!("conversions", "$1"),
        " AND ",
        in_scope!("message_id", "$2", "$3", "$4"),
        "
         GROUP BY kind, app_id ORDER BY kind, app_id",
    ))
    .bind(now);
    let rows = lease::bind_scope(query, scope).fetch_all(db.pool()).await?;
    rows.iter()
        .map(|r| {
            Ok(Due {
                kind: r.try_get("kind")?,
                app_id: r.try_get("app_id")?,
                count: r.try_get("count")?,
            })
        })
        .collect()
}

/// The conversions not posted yet, for `status` (through the partial indexes
/// `conversions_due` and `conversions_rejected`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Pending {
    pub pending: i64,
    /// Of those, whose last attempt's outcome is unknown.
    pub in_doubt: i64,
    pub rejected: i64,
}

pub async fn pending(db: &Db) -> Result<Pending, sqlx::Error> {
    db.counted(1);
    let row = sqlx::query(
        "SELECT (SELECT count(*) FROM conversions WHERE state = 'pending') AS pending,
                (SELECT count(*) FROM conversions WHERE state = 'pending' AND in_doubt) AS in_doubt,
                (SELECT count(*) FROM conversions WHERE state = 'rejected') AS rejected",
    )
    .fetch_one(db.pool())
    .await?;
    Ok(Pending {
        pending: row.try_get("pending")?,
        in_doubt: row.try_get("in_doubt")?,
        rejected: row.try_get("rejected")?,
    })
}

/// Prune's share of a statement whose CTE `batch` holds sends that go (id, app_id,
/// verification_id): `waiting`, the CTE of the OTP conversions not posted back yet
/// (their sends stay); `delete`, the CTE `c` removing the batch's acknowledged or
/// refused OTP conversions; `count`, how many those are.
macro_rules! conversions_of_batch {
    (waiting) => {
        "waiting AS MATERIALIZED (
                 SELECT app_id, message_id FROM conversions
                 WHERE state = 'pending' AND kind = 'otp')"
    };
    (delete) => {
        // Through the index, one probe per send: the LATERAL subquery is kept apart
        // (OFFSET 0) so the planner cannot turn it into a hash join over every
        // conversion, and the ids are deleted by primary key.
        "c AS (DELETE FROM conversions
               WHERE id = ANY(ARRAY(
                   SELECT x.id FROM batch b CROSS JOIN LATERAL (
                       SELECT c.id FROM conversions c
                       WHERE c.kind = 'otp' AND c.app_id = b.app_id
                         AND c.message_id = b.verification_id
                         AND c.state IN ('sent', 'rejected')
                       OFFSET 0) AS x))
               RETURNING 1)"
    };
    (count) => {
        "(SELECT count(*) FROM conversions c JOIN batch b
                        ON c.kind = 'otp' AND c.app_id = b.app_id AND c.message_id = b.verification_id
                 WHERE c.state IN ('sent', 'rejected'))"
    };
}
pub(crate) use conversions_of_batch;

/// The conversions that may go, older than $1: acknowledged or refused; an OTP one only
/// once no send of its verification id is left.
macro_rules! removable {
    () => {
        "SELECT c.id FROM conversions c
         WHERE c.converted_at < $1 AND c.state IN ('sent', 'rejected') AND c.lease_token IS NULL
           AND (c.kind = 'sms'
                OR NOT EXISTS (SELECT 1 FROM sends s
                               WHERE s.verification_id = c.message_id AND s.app_id = c.app_id))"
    };
}

/// Removes up to `limit` conversions that may go (see `removable!`), oldest first,
/// skipping those locked; answers how many went.
pub async fn remove_old(db: &Db, before: DateTime<Utc>, limit: i64) -> Result<u64, sqlx::Error> {
    let statement = concat!(
        "DELETE FROM conversions WHERE id IN (",
        removable!(),
        " ORDER BY c.converted_at LIMIT $2 FOR UPDATE OF c SKIP LOCKED)",
    );
    crate::db::prune_old(db, statement, before, limit).await
}

/// How many conversions may go now without their send (whose send is gone already).
pub async fn count_removable(db: &Db, before: DateTime<Utc>) -> Result<i64, sqlx::Error> {
    let statement = concat!("SELECT count(*) FROM (", removable!(), ") AS x");
    crate::db::count_old(db, statement, before).await
}

/// The conversions older than `before` that stay, by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub pending: i64,
    pub in_doubt: i64,
    /// Acknowledged OTP conversions whose send stays.
    pub send_kept: i64,
}

/// Through `conversions_converted_at` and without JIT (see [`crate::db::fetch_kept`]).
pub async fn kept_old(db: &Db, before: DateTime<Utc>) -> Result<Kept, sqlx::Error> {
    let statement = "SELECT count(*) FILTER (WHERE state = 'pending') AS pending,
                count(*) FILTER (WHERE state = 'pending' AND in_doubt) AS in_doubt,
                count(*) FILTER (WHERE state IN ('sent', 'rejected') AND kind = 'otp'
                                   AND EXISTS (SELECT 1 FROM sends s
                                               WHERE s.verification_id = c.message_id
                                                 AND s.app_id = c.app_id)) AS send_kept
         FROM conversions c WHERE converted_at < $1";
    let row = crate::db::fetch_kept(db, statement, before).await?;
    Ok(Kept {
        pending: row.try_get("pending")?,
        in_doubt: row.try_get("in_doubt")?,
        send_kept: row.try_get("send_kept")?,
    })
}
