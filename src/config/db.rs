//! Where the database is: its flags and environment, and the connection they make.

use crate::db::{self, Db, DbError};
use clap::Args;

/// Where the database is. Its `Debug` leaves the URL out: it may carry a password.
#[derive(Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL, e.g. postgres://user@host:5432/dbname.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    /// Connections in the pool.
    #[arg(long, env = "DB_CONNECTIONS", default_value_t = 4)]
    pub db_connections: u32,
}

impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field("database_url", &"[redacted]")
            .field("db_connections", &self.db_connections)
            .finish()
    }
}

impl DbArgs {
    /// The same, with a pool of at least `connections`.
    pub fn with_at_least(&self, connections: usize) -> Self {
        Self {
            db_connections: self
                .db_connections
                .max(u32::try_from(connections).unwrap_or(u32::MAX)),
            ..self.clone()
        }
    }

    /// Connects, without checking the schema (for `migrate`).
    pub async fn connect(&self) -> Result<Db, DbError> {
        db::connect(&self.database_url, self.db_connections.max(2)).await
    }

    /// Connects and refuses a schema this binary does not know.
    pub async fn connect_checked(&self) -> Result<Db, DbError> {
        checked(self.connect().await?).await
    }

    /// [`DbArgs::connect_checked`] with a pool of one connection, for a command that
    /// runs its statements one after another (`status`, `export`): it needs no more,
    /// and each connection costs a backend and, over TLS, a handshake (see
    /// [`db::connect`]).
    pub async fn connect_one_checked(&self) -> Result<Db, DbError> {
        checked(db::connect(&self.database_url, 1).await?).await
    }
}

/// `db`, once its schema is one this binary knows.
async fn checked(db: Db) -> Result<Db, DbError> {
    db::check_schema(&db).await?;
    Ok(db)
}
