//! The `apps` table: the apps allowed to record sends.

use crate::db::Db;
use std::collections::HashSet;

/// An app id as the provider allows it: 4-32 letters, digits, `-` or `_`.
pub fn valid_app_id(app_id: &str) -> bool {
    (4..=32).contains(&app_id.len())
        && app_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Registers an app; answers false if it was already there.
pub async fn add(db: &Db, app_id: &str, name: Option<&str>) -> Result<bool, sqlx::Error> {
    db.counted(1);
    let inserted = sqlx::query(
        "INSERT INTO apps (app_id, name) VALUES ($1, $2) ON CONFLICT (app_id) DO NOTHING",
    )
    .bind(app_id)
    .bind(name)
    .execute(db.pool())
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Every app, with its name.
pub async fn list(db: &Db) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    db.counted(1);
    sqlx::query_as("SELECT app_id, name FROM apps ORDER BY app_id")
        .fetch_all(db.pool())
        .await
}

/// The ids of every app.
pub async fn known(db: &Db) -> Result<HashSet<String>, sqlx::Error> {
    Ok(list(db).await?.into_iter().map(|(id, _)| id).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn app_ids_follow_the_providers_rule() {
        assert!(super::valid_app_id("mRELxtHc"));
        assert!(super::valid_app_id("app_1-x"));
        assert!(!super::valid_app_id("abc"));
        assert!(!super::valid_app_id("has space"));
        assert!(!super::valid_app_id(&"a".repeat(33)));
    }
}
