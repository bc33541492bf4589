//! The `passes` table: one row per run, with its parameters, counts and how it ended.

use crate::db::Db;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::Row;

/// Records a pass as running; answers its id.
pub async fn start(
    db: &Db,
    kind: &str,
    owner: &str,
    now: DateTime<Utc>,
    parameters: &Value,
) -> Result<i64, sqlx::Error> {
    db.counted(1);
    sqlx::query_scalar(
        "INSERT INTO passes (kind, owner, started_at, parameters)
         VALUES ($1, $2, $3, $4::text::jsonb) RETURNING id",
    )
    .bind(kind)
    .bind(owner)
    .bind(now)
    .bind(parameters.to_string())
    .fetch_one(db.pool())
    .await
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

/// The last `limit` passes, newest first.
pub async fn recent(db: &Db, limit: i64) -> Result<Vec<PassRow>, sqlx::Error> {
    db.counted(1);
    let rows = sqlx::query(
        "SELECT id, kind, owner, started_at, finished_at, outcome, summary::text AS summary, error
         FROM passes ORDER BY started_at DESC, id DESC LIMIT $1",
    )
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
