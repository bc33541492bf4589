//! Leases: what a claim writes (a token and an expiry) and the release of rows keyed by
//! id, shared by the tables that are claimed. Each table keeps its own SQL.

use crate::db::Db;
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// A new claim's token and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub token: Uuid,
    pub expires: DateTime<Utc>,
}

impl Lease {
    /// A fresh token, holding for `lease_for` from `now`. Counts the claim statement.
    pub fn claim(db: &Db, now: DateTime<Utc>, lease_for: Duration) -> Self {
        db.counted(1);
        Self {
            token: Uuid::new_v4(),
            expires: crate::clock::after(now, lease_for),
        }
    }
}

/// The statement that gives back the leased rows of `$table` (keyed by `id`), due again
/// at once by `$due`: `$1` now, `$2` the ids, `$3` their lease tokens.
macro_rules! release_sql {
    ($table:literal, $due:literal) => {
        concat!(
            "UPDATE ",
            $table,
            " t
             SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL, ",
            $due,
            " = $1, updated_at = $1
             FROM unnest($2::bigint[], $3::uuid[]) AS u(id, lease)
             WHERE t.id = u.id AND t.lease_token = u.lease"
        )
    };
}
pub(crate) use release_sql;

/// Runs a table's release statement (`$1` now, `$2` the ids, `$3` their lease tokens)
/// for the rows in `held`; answers how many were still held.
pub async fn release_by_id(
    db: &Db,
    sql: &'static str,
    now: DateTime<Utc>,
    held: &[(i64, Uuid)],
) -> Result<u64, sqlx::Error> {
    if held.is_empty() {
        return Ok(0);
    }
    db.counted(1);
    Ok(sqlx::query(sql)
        .bind(now)
        .bind(held.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(held.iter().map(|(_, lease)| *lease).collect::<Vec<_>>())
        .execute(db.pool())
        .await?
        .rows_affected())
}
