//! The `passes` table: one row per run, with its parameters, counts and how it ended.

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

/// The SQL condition "the pass's heartbeat is fresh" (on the database's clock); a pass
/// recorded before heartbeats existed counts as fresh.
macro_rules! heartbeat_fresh {
    () => {
        "(heartbeat_at IS NULL OR heartbeat_at + heartbeat_timeout >= now())"
    };
}
pub(crate) use heartbeat_fresh;

/// The owners of the running passes whose heartbeat is fresh, as a subquery: whose
/// leases are worked on.
macro_rules! live_owners {
    () => {
        concat!(
            "SELECT owner FROM passes WHERE outcome = 'running' AND ",
            $crate::db::passes::heartbeat_fresh!()
        )
    };
}
pub(crate) use live_owners;

/// Records a pass as running, its heartbeat beating now; answers its id. A heartbeat
/// older than `heartbeat_timeout` (on the database's clock) means the pass is gone.
pub async fn start(
    db: &Db,
    kind: &str,
    owner: &str,
    now: DateTime<Utc>,
    parameters: &Value,
    heartbeat_timeout: std::time::Duration,
) -> Result<i64, sqlx::Error> {
    db.counted(1);
    sqlx::query_scalar(
        "INSERT INTO passes (kind, owner, started_at, parameters, heartbeat_at, heartbeat_timeout)
         VALUES ($1, $2, $3, $4::text::jsonb, now(), $5::bigint * interval '1 millisecond')
         RETURNING id",
    )
    .bind(kind)
    .bind(owner)
    .bind(now)
    .bind(parameters.to_string())
    .bind(i64::try_from(heartbeat_timeout.as_millis()).unwrap_or(i64::MAX))
    .fetch_one(db.pool())
    .await
}

/// The pass is alive: its heartbeat, now on the database's clock.
pub async fn heartbeat(db: &Db, id: i64) -> Result<(), sqlx::Error> {
    db.counted(1);
    sqlx::query("UPDATE passes SET heartbeat_at = now() WHERE id = $1 AND outcome = 'running'")
        .bind(id)
        .execute(db.pool())
        .await?;
    Ok(())
}

/// Records how a pass ended.
pub async fn finish(
    db: &Db,
    id: i64,
    now: DateTime<Utc>,
    outcome: &str,
    summary: &Value,
    error: Option<&str>,
) -> Result<(), sqlx::Error> {
    db.counted(1);
    sqlx::query(
        "UPDATE passes SET finished_at = $2, outcome = $3, summary = $4::text::jsonb, error = $5
         WHERE id = $1",
    )
    .bind(id)
    .bind(now)
    .bind(outcome)
    .bind(summary.to_string())
    .bind(error)
    .execute(db.pool())
    .await?;
    Ok(())
}

/// A pass as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PassRow {
    pub id: i64,
    pub kind: String,
    pub owner: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: String,
    pub summary: Value,
    pub error: Option<String>,
}

/// The last `limit` passes, newest first. A running pass whose heartbeat stopped shows
/// as `abandoned`.
pub async fn recent(db: &Db, limit: i64) -> Result<Vec<PassRow>, sqlx::Error> {
    db.counted(1);
    let rows = sqlx::query(concat!(
        "SELECT id, kind, owner, started_at, finished_at, summary::text AS summary, error,
                CASE WHEN outcome = 'running' AND NOT ",
        heartbeat_fresh!(),
        " THEN 'abandoned' ELSE outcome END AS outcome
         FROM passes ORDER BY started_at DESC, id DESC LIMIT $1",
    ))
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let summary: String = r.try_get("summary")?;
            Ok(PassRow {
                id: r.try_get("id")?,
                kind: r.try_get("kind")?,
                owner: r.try_get("owner")?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
                outcome: r.try_get("outcome")?,
                summary: serde_json::from_str(&summary).unwrap_or(Value::Null),
                error: r.try_get("error")?,
            })
        })
        .collect()
}
