//! What the sends are waiting for: due per state and app, a replay's range per state,
//! and what `status` shows (queue depth, the planner's estimate of the history, leases).

use super::{Range, send_due, sent_in};
use crate::db::lease::{self, Scope, in_scope};
use crate::db::passes::live_owners;
use crate::db::{Db, in_apps};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

/// How many sends a replay of `range` would re-fetch, per state.
pub async fn count_range(db: &Db, range: &Range) -> Result<Vec<(String, i64)>, sqlx::Error> {
    db.counted(1);
    sqlx::query_as(concat!(
        "SELECT state, count(*) FROM sends
         WHERE ",
        sent_in!("sends", "$1", "$2"),
        " AND ",
        in_apps!("app_id", "$3"),
        "
         GROUP BY state ORDER BY state",
    ))
    .bind(range.from)
    .bind(range.to)
    .bind(&range.app_ids)
    .fetch_all(db.pool())
    .await
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
         WHERE ",
        send_due!("sends", "$1"),
        " AND ",
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

/// Sends not final yet, of one state and app, counted exactly.
#[derive(Debug, Clone, Serialize)]
pub struct Depth {
    pub state: String,
    pub app_id: String,
    pub sends: i64,
    /// Of those, due now.
    pub due: i64,
}

/// The sends not final yet (pending, recheck), per state and app (through the partial
/// index `sends_open`).
pub async fn depth(db: &Db, now: DateTime<Utc>) -> Result<Vec<Depth>, sqlx::Error> {
    db.counted(1);
    sqlx::query(concat!(
        "SELECT state, app_id, count(*) AS sends, count(*) FILTER (WHERE ",
        send_due!("sends", "$1"),
        ") AS due
         FROM sends WHERE state IN ('pending', 'recheck')
         GROUP BY state, app_id ORDER BY state, app_id",
    ))
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
    .collect()
}

/// Sends in a final state, estimated (never counted: that would read the history).
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub state: String,
    pub sends_estimate: i64,
}

/// The sends in final states, from the planner's statistics, and when those were taken
/// (the last ANALYZE).
pub async fn final_estimate(
    db: &Db,
) -> Result<(Vec<Estimate>, Option<DateTime<Utc>>), sqlx::Error> {
    db.counted(2);
    // The planner's estimate: rows (scaled to the table's current size, as the planner
    // does) times each final state's share among the most common values.
    let estimate = sqlx::query(
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
    let as_of: Option<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT greatest(last_analyze, last_autoanalyze) FROM pg_stat_user_tables
         WHERE relid = 'sends'::regclass",
    )
    .fetch_optional(db.pool())
    .await?
    .flatten();
    Ok((estimate, as_of))
}

/// The oldest due send and the sends under a lease, by whose lease it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leases {
    /// The oldest due send no live lease holds.
    pub oldest_due: Option<DateTime<Utc>>,
    /// Leases that expired without being completed or released (a pass died).
    pub expired: i64,
    /// Live leases of a running pass.
    pub leased: i64,
    /// Live leases of a pass whose heartbeat stopped.
    pub abandoned: i64,
}

pub async fn leases(db: &Db, now: DateTime<Utc>) -> Result<Leases, sqlx::Error> {
    db.counted(1);
    // A leased send stays due: the oldest due send is read through `sends_due`, past
    // the sends whose lease is live (as many as passes hold).
    let row = sqlx::query(concat!(
        "WITH live AS (",
        live_owners!(),
        ")
         SELECT (SELECT sends.next_check_at FROM sends
                 WHERE ",
        send_due!("sends", "$1"),
        "
                   AND NOT EXISTS (SELECT 1 FROM send_leases l
                                   WHERE l.send_id = sends.id AND l.expires_at > $1)
                 ORDER BY sends.next_check_at LIMIT 1) AS oldest_due,
                count(*) FILTER (WHERE l.expires_at <= $1) AS expired,
                count(*) FILTER (WHERE l.expires_at > $1
                                   AND EXISTS (SELECT 1 FROM live WHERE live.owner = l.owner)) AS leased,
                count(*) FILTER (WHERE l.expires_at > $1
                                   AND NOT EXISTS (SELECT 1 FROM live WHERE live.owner = l.owner))
                    AS abandoned_leases
         FROM send_leases l",
    ))
    .bind(now)
    .fetch_one(db.pool())
    .await?;
    Ok(Leases {
        oldest_due: row.try_get("oldest_due")?,
        expired: row.try_get("expired")?,
        leased: row.try_get("leased")?,
        abandoned: row.try_get("abandoned_leases")?,
    })
}

/// The latest `sent_at` of any send (`None` when there are none): through the
/// `sent_at` index, one entry read.
pub async fn last_sent_at(db: &Db) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    db.counted(1);
    sqlx::query_scalar("SELECT max(sent_at) FROM sends")
        .fetch_one(db.pool())
        .await
}
