//! The database: connecting, the embedded migrations, and the schema check that keeps a
//! binary from working on a schema it does not know; below it, one module per table,
//! each the only place with that table's SQL, and the lease protocol they share:
//!
//! - [`apps`]: the apps allowed to record sends;
//! - [`sends`]: the sends, claimed under a lease, and their counts and retention;
//! - [`records`]: `records` and `attempts`, written together (the provider's answer);
//! - [`revisions`]: `record_revisions`, what a replay found different;
//! - [`conversions`]: the postback ledger;
//! - [`rates`]: the `conversion_rates` ledger and its marks, `rate_dirty`;
//! - [`passes`]: one row per run;
//! - [`ledger`]: what posting one item came to, as the two ledgers record it;
//! - [`lease`]: claim, renew, complete, release, once for every leased table.
//!
//! A statement that must span tables (a prune batch, the rate computation) is built
//! from fragments each table module gives (`macro_rules!` of literal SQL).

pub mod apps;
pub mod conversions;
pub mod lease;
pub mod ledger;
pub mod passes;
pub mod rates;
pub mod records;
pub mod revisions;
pub mod sends;
pub mod spend;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, PgPool};
use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The SQL condition "`$key` is in shard `$index` of `$of`" (both NULL-able: no shard
/// means everything). The hash is the first 32 bits of the md5 of the key: stable across
/// PostgreSQL versions and machines, so a send, and the OTP conversion whose message id
/// is its verification id, fall in the same shard.
macro_rules! in_shard {
    ($key:literal, $index:literal, $of:literal) => {
        concat!(
            "(",
            $index,
            "::int IS NULL OR mod(('x' || substr(md5(",
            $key,
            "), 1, 8))::bit(32)::bigint, ",
            $of,
            ") = ",
            $index,
            ")"
        )
    };
}
pub(crate) use in_shard;

/// The SQL condition "`$column` is one of the apps in `$apps`, a text[] parameter (all
/// apps if it is empty)": the scope of `run --app-id`, of a replay's range.
macro_rules! in_apps {
    ($column:literal, $apps:literal) => {
        concat!(
            "(cardinality(",
            $apps,
            "::text[]) = 0 OR ",
            $column,
            " = ANY(",
            $apps,
            "::text[]))"
        )
    };
}
pub(crate) use in_apps;

/// Runs one of `prune`'s deletions, `statement` ($1 before, $2 how many at most);
/// answers how many rows went.
pub(crate) async fn prune_old(
    db: &Db,
    statement: &'static str,
    before: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    db.counted(1);
    Ok(sqlx::query(statement)
        .bind(before)
        .bind(limit)
        .execute(db.pool())
        .await?
        .rows_affected())
}

/// Runs one of `prune`'s counts of what stays older than $1 (`statement`, one row),
/// through the indexes and without JIT, in a transaction of its own (four statements).
///
/// Right after the batches, the planner's statistics still count the rows they removed
/// (until the next ANALYZE): by them a sequential or bitmap scan of the range (over
/// every dead row, 2 s at 5M sends) and a JIT compilation (0.2 s) looked cheaper than
/// an index scan of the few rows left. An ANALYZE of sends and conversions first costs
/// as much as the counts it would fix (0.4 s at 5M).
pub(crate) async fn fetch_kept(
    db: &Db,
    statement: &'static str,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<sqlx::postgres::PgRow, sqlx::Error> {
    db.counted(4);
    let mut tx = db.pool().begin().await?;
    sqlx::query(
        "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true),
                set_config('jit', 'off', true)",
    )
    .execute(&mut *tx)
    .await?;
    let row = sqlx::query(statement)
        .bind(before)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(row)
}

/// Runs one of `prune`'s counts, `statement` ($1 before).
pub(crate) async fn count_old(
    db: &Db,
    statement: &'static str,
    before: chrono::DateTime<chrono::Utc>,
) -> Result<i64, sqlx::Error> {
    db.counted(1);
    sqlx::query_scalar(statement)
        .bind(before)
        .fetch_one(db.pool())
        .await
}

/// The migrations in `migrations/`, embedded at build time (no database needed to build).
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// The database cannot be used. Maps to exit code 4.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a PostgreSQL URL")]
    BadUrl(#[source] sqlx::Error),
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    #[error("database error")]
    Query(#[from] sqlx::Error),
    #[error("cannot apply the migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the database schema is older than this binary (missing migrations {missing:?}): \
         run `otp-reconcile migrate`"
    )]
    SchemaOlder { missing: Vec<i64> },
    #[error(
        "the database schema is newer than this binary (unknown migrations {unknown:?}): \
         use a newer otp-reconcile"
    )]
    SchemaNewer { unknown: Vec<i64> },
    #[error("migration {0} in the database differs from this binary's; the schema was edited")]
    SchemaEdited(i64),
    #[error(
        "migration {0} in the database is its text from before a later edit: \
         run `otp-reconcile migrate`, which repairs it"
    )]
    SchemaBeforeEdit(i64),
}

/// A migration that was edited after it had landed (a mistake never to repeat: migrations
/// are only added, and `tests/migrations.rs` pins every landed one). A database migrated
/// before the edit has the old checksum; `migrate` brings it to today's schema.
struct EditedMigration {
    version: i64,
    /// SHA-384 (hex) of the text as it first landed.
    checksum_before: &'static str,
    /// Makes a schema built from the old text equal to one built from today's.
    repair: &'static str,
}

/// Migration 3 first made `record_revisions.old_raw` NOT NULL (commit bb24522); the edit
/// in ebde0c6 let it be NULL for a send that had no record before a replay.
const EDITED: &[EditedMigration] = &[EditedMigration {
    version: 20261126000003,
    checksum_before: "3150142c7eb82834cbcce1d8c787e0c1156aed796c6bf8946830b74f2eadcb439aab9abbee17f946eb1a9f31eac43420",
    repair: "ALTER TABLE record_revisions ALTER COLUMN old_raw DROP NOT NULL",
}];

fn edited_before(version: i64, checksum: &[u8]) -> bool {
    EDITED.iter().any(|e| {
        e.version == version && hex::decode(e.checksum_before).is_ok_and(|old| old == checksum)
    })
}

/// An error and its causes, outermost first, joined by ": ": what `passes.error`, the
/// summary and stderr say when the database fails.
pub fn cause_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// A pool and a count of the statements the job sent through it (for the benchmark's
/// "statements per send"). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: PgPool,
    statements: Arc<AtomicU64>,
}

impl Db {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            statements: Arc::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Notes `n` statements sent (BEGIN and COMMIT included).
    pub fn counted(&self, n: u64) {
        self.statements.fetch_add(n, Ordering::Relaxed);
    }

    pub fn statements(&self) -> u64 {
        self.statements.load(Ordering::Relaxed)
    }
}

/// A statement slower than this is logged at WARN (on one line, by name: see
/// `telemetry`); every statement is logged at DEBUG.
pub const SLOW_STATEMENT: Duration = Duration::from_secs(1);

/// The connection options of every pool the job opens.
///
/// A server on this host (`localhost` or a loopback address: a local Postgres, a
/// pgbouncer or cloud-sql-proxy beside the job) is spoken to without TLS unless the URL
/// (`sslmode=`) or `PGSSLMODE` asks for a mode. Postgres's own default, `prefer`,
/// encrypts whenever the server offers TLS, and on loopback that protects nothing: the
/// bytes never leave the host. It cost both ends CPU for every batch sent and answered
/// (about a tenth of Postgres's CPU per send in `scripts/bench`). Anywhere else, and
/// whenever a mode is given, the URL's mode holds.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(DbError::BadUrl)?
        .application_name("otp-reconcile")
        .log_statements(log::LevelFilter::Debug)
        .log_slow_statements(log::LevelFilter::Warn, SLOW_STATEMENT);
    let asked = ssl_mode_asked(url, std::env::var_os("PGSSLMODE").is_some());
    Ok(if !asked && is_loopback(options.get_host()) {
        options.ssl_mode(PgSslMode::Disable)
    } else {
        options
    })
}

/// True when the URL (`sslmode` or `ssl-mode`, as sqlx reads them) or the environment
/// (`PGSSLMODE`, set: `from_env`) names an SSL mode.
fn ssl_mode_asked(url: &str, from_env: bool) -> bool {
    from_env
        || url::Url::parse(url).is_ok_and(|u| {
            u.query_pairs()
                .any(|(k, _)| k == "sslmode" || k == "ssl-mode")
        })
}

/// `localhost`, or an address of the loopback interface (127.0.0.0/8, ::1).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects a pool of `max_connections`, all of them opened at once before it answers.
///
/// Opened one by one, as a pool opens them when asked, each costs a full connection
/// setup in turn: over TLS about 90 ms (sqlx 0.9.0 leaves Nagle's algorithm on during
/// the handshake, transact-rs/sqlx#4335), and a pass with nothing to do opened three,
/// one after another. Opened together they cost one setup of wall time. A full pool
/// also never opens one mid-pass: a statement that starts while the last statement's
/// connection is on its way back to the pool waits for it. A failure to connect is the
/// same error as a pool's first connection gives.
pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
    let options = connect_options(url)?;
    let max_connections = max_connections.max(1);
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        // sqlx never shrinks a connection's buffers: each would keep the largest
        // statement it ever sent (a batch of 1,000 records and their attempts is a few
        // MiB) and the largest answer it read, on every connection of the pool in turn.
        .after_release(|conn, _| {
            Box::pin(async move {
                sqlx::Connection::shrink_buffers(conn);
                Ok(true)
            })
        })
        .connect_lazy_with(options);
    let opened = futures::future::try_join_all((0..max_connections).map(|_| pool.acquire()))
        .await
        .map_err(DbError::Connect)?;
    drop(opened);
    Ok(Db::new(pool))
}

/// Repairs migrations applied before a later edit (see [`EDITED`]), then applies every
/// migration the database lacks.
pub async fn migrate(db: &Db) -> Result<(), DbError> {
    repair_edited(db).await?;
    MIGRATOR.run(db.pool()).await?;
    Ok(())
}

/// In one transaction: each edited migration whose old checksum the database holds gets
/// its repair and today's checksum. Answers the versions repaired.
async fn repair_edited(db: &Db) -> Result<Vec<i64>, DbError> {
    let mut repaired = Vec::new();
    if !migrations_table_exists(db).await? {
        return Ok(repaired);
    }
    let mut tx = db.pool().begin().await?;
    for edited in EDITED {
        let Some(today) = MIGRATOR.iter().find(|m| m.version == edited.version) else {
            continue;
        };
        let old = hex::decode(edited.checksum_before).expect("a hex checksum");
        let updated = sqlx::query(
            "UPDATE _sqlx_migrations SET checksum = $1 WHERE version = $2 AND checksum = $3",
        )
        .bind(&*today.checksum)
        .bind(edited.version)
        .bind(old)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 1 {
            sqlx::query(edited.repair).execute(&mut *tx).await?;
            repaired.push(edited.version);
        }
    }
    tx.commit().await?;
    for version in &repaired {
        tracing::info!(
            version,
            "repaired a migration applied before its later edit"
        );
    }
    Ok(repaired)
}

async fn migrations_table_exists(db: &Db) -> Result<bool, DbError> {
    Ok(
        sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(db.pool())
            .await?,
    )
}

/// Refuses a schema that is older or newer than this binary's migrations.
pub async fn check_schema(db: &Db) -> Result<(), DbError> {
    let applied: Vec<(i64, Vec<u8>, bool)> = if migrations_table_exists(db).await? {
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(db.pool())
            .await?
    } else {
        Vec::new()
    };
    let ours: BTreeSet<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    let theirs: BTreeSet<i64> = applied
        .iter()
        .filter(|(_, _, ok)| *ok)
        .map(|(v, _, _)| *v)
        .collect();
    let unknown: Vec<i64> = theirs.difference(&ours).copied().collect();
    if !unknown.is_empty() {
        return Err(DbError::SchemaNewer { unknown });
    }
    // An edited migration first: a database migrated before an edit may also miss the
    // migrations added since, and `migrate` mends both.
    for migration in MIGRATOR.iter() {
        let stored = applied.iter().find(|(v, _, _)| *v == migration.version);
        if let Some((version, checksum, _)) = stored
            && checksum.as_slice() != &*migration.checksum
        {
            return Err(if edited_before(*version, checksum) {
                DbError::SchemaBeforeEdit(*version)
            } else {
                DbError::SchemaEdited(*version)
            });
        }
    }
    let missing: Vec<i64> = ours.difference(&theirs).copied().collect();
    if !missing.is_empty() {
        return Err(DbError::SchemaOlder { missing });
    }
    Ok(())
}

/// Creates the database named in `url` if it does not exist (for the demo and the
/// benchmark), connecting to the server's `postgres` database to do so.
pub async fn create_database_if_missing(url: &str) -> Result<(), DbError> {
    let options = connect_options(url)?;
    let name = options.get_database().unwrap_or("postgres").to_owned();
    let admin = options.clone().database("postgres");
    let mut conn = admin.connect().await.map_err(DbError::Connect)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        // CREATE DATABASE takes no bind parameters; the name is quoted as an identifier.
        let statement = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_on_this_host_is_spoken_to_without_tls_and_only_when_no_mode_is_asked() {
        let off = |url: &str, env: bool| {
            let host = PgConnectOptions::from_str(url).unwrap();
            !ssl_mode_asked(url, env) && is_loopback(host.get_host())
        };
        for url in [
            "postgres://postgres@127.0.0.1:5432/db",
            "postgres://postgres@127.0.0.53/db",
            "postgres://postgres@localhost/db",
            "postgres://postgres@LocalHost/db?application_name=x",
            "postgres://postgres@[::1]:5432/db",
        ] {
            assert!(off(url, false), "{url}");
            assert!(!off(url, true), "{url} with PGSSLMODE set");
        }
        for url in [
            "postgres://postgres@db.internal:5432/db",
            "postgres://postgres@localhost.example.com/db",
            "postgres://postgres@10.0.0.7/db",
            "postgres://postgres@127.0.0.1/db?sslmode=prefer",
            "postgres://postgres@localhost/db?sslmode=require",
            "postgres://postgres@localhost/db?ssl-mode=verify-full",
        ] {
            assert!(!off(url, false), "{url}");
        }
    }
}
