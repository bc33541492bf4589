//! Leases: what a claim writes, a token and an expiry, for every table that is claimed.
//! Each table keeps its own SQL.

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
