//! The lease protocol, once, for every table a pass claims (`sends`, `conversions`,
//! `conversion_rates`): claim, renew, complete with the token, release.
//!
//! A lease is kept in one of two places:
//! - in the row itself (`lease_token`, `lease_owner`, `lease_expires_at`:
//!   `conversions`, `conversion_rates`), described by [`leased_table!`]: its name, its
//!   due predicate, the order to claim in, the key it is sharded by, what a claim, a
//!   renewal and a release also write, and the columns a claim returns. Its completion
//!   (the table's own decision columns) is its own statement, built with
//!   [`still_held!`] in its `WHERE` and [`lease_cleared!`] in its `SET`;
//! - in a table of leases beside it (`send_leases` for `sends`), described by
//!   [`leased_by_table!`]. A claim then writes no row of the claimed table: it locks the
//!   due rows and inserts their leases, so the claimed row keeps its version and its
//!   index entries (a claim that wrote `sends` made a new version of each send, with a
//!   new entry in each of its six indexes: a third of the CPU Postgres spent per send).
//!   Its completion ends the leases with [`lease_rows_ended!`] and writes only the rows
//!   whose lease it ended.
//!
//! Either way a late finisher whose lease was taken over changes nothing.
//!
//! Expiry is measured on the database's clock (`now()`), never the host's: passes on
//! machines whose clocks disagree still keep out of each other's way. Every table is
//! keyed by a `bigint id` and aliased `t` (the table) and `u` (the batch) in these
//! statements.

use crate::db::Db;
use crate::db::sends::Shard;
use sqlx::Postgres;
use sqlx::postgres::{PgArguments, PgRow};
use std::time::Duration;
use uuid::Uuid;

/// A claimed table's statements, built at compile time by [`leased_table!`].
#[derive(Debug)]
pub struct Table {
    /// For logs.
    pub name: &'static str,
    /// Parameters: $1 limit, $2 token, $3 owner, $4 lease (ms), $5 ids the pass already
    /// holds, $6 and $7 the shard, $8 the app ids (empty: all); the table's own from $9.
    pub claim: &'static str,
    /// Parameters: $1 ids, $2 tokens, $3 lease (ms). Returns each id, whether it was
    /// renewed, and whether it was still held (a row being written is neither renewed
    /// nor lost).
    pub renew: &'static str,
    /// Parameters: $1 now (host clock, when the item is due again), $2 ids, $3 tokens,
    /// $4 in doubt, $5 when each was due before its claim (NULL: unknown). Returns how
    /// many were still held.
    pub release: &'static str,
}

/// The `SET` that ends a lease, for a table's completion.
macro_rules! lease_cleared {
    () => {
        "lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL"
    };
}
pub(crate) use lease_cleared;

/// The `WHERE` that keeps a completion to the items still held under their lease: the
/// table aliased `t`, the batch `u` with columns `id` and `lease`.
macro_rules! still_held {
    () => {
        "t.id = u.id AND t.lease_token = u.lease"
    };
}
pub(crate) use still_held;

/// The SQL condition "in the scope": the app is one of `$apps` (all when empty) and
/// `$shard_key` is in shard `$index` of `$of` (see [`crate::db::in_shard`]). Bound by
/// [`bind_scope`].
macro_rules! in_scope {
    ($shard_key:literal, $index:literal, $of:literal, $apps:literal) => {
        concat!(
            $crate::db::in_apps!("app_id", $apps),
            " AND ",
            $crate::db::in_shard!($shard_key, $index, $of)
        )
    };
}
pub(crate) use in_scope;

/// Binds a scope's three parameters (shard index, shard count, apps), in that order.
pub fn bind_scope<'q>(query: Query<'q>, scope: &Scope) -> Query<'q> {
    query
        .bind(scope.shard.map(|s| s.index as i32))
        .bind(scope.shard.map_or(1, |s| i64::from(s.of)))
        .bind(scope.apps.clone())
}

/// The lease `$ms` milliseconds from the database's now.
macro_rules! expiry {
    ($ms:literal) => {
        concat!("now() + ", $ms, "::bigint * interval '1 millisecond'")
    };
}
pub(crate) use expiry;

/// The end of a claim's `due` query, after its own conditions: the scope ($8 the apps,
/// $6 and $7 the shard), the order, the limit ($1), and the lock that skips rows
/// another claim or a completion holds.
macro_rules! claim_tail {
    ($shard_key:literal, $order:literal) => {
        concat!(
            $crate::db::in_apps!("t.app_id", "$8"),
            "
                       AND ",
            $crate::db::in_shard!($shard_key, "$6", "$7"),
            "
                     ORDER BY ",
            $order,
            "
                     LIMIT $1
                     FOR UPDATE OF t SKIP LOCKED"
        )
    };
}
pub(crate) use claim_tail;

/// A table's [`Table`], from literal pieces of SQL:
/// - `due`: which rows may be claimed (besides a free lease and the scope), a literal or
///   a table's due predicate (a macro giving one);
/// - `order`: which first; `shard_key`: the expression a shard hashes;
/// - `on_claim`, `on_renew`, `on_release`: more `SET` items (each starting with a comma,
///   or empty); `on_claim` may use the table's own parameters from $9, `on_release` $1
///   (now), `u.in_doubt` and `u.due_at`;
/// - `before` (optional): columns read before the claim writes, as `due.name` in
///   `returning` (e.g. when the item was due, for a release that gives it back);
/// - `returning`: the claimed rows' columns.
///
/// A claim compares the ids the pass holds only with rows whose lease expired (a free
/// row is held by no one): that array is scanned once per row compared. The update
/// finds the locked rows by `t.id = ANY (ARRAY(SELECT id FROM due))` alone, through the
/// primary key, and `returning` is read from the updated rows (`t`) joined with the
/// locked CTE (`due`, for the `before` columns) afterwards. Two shapes were worse:
/// - `UPDATE ... FROM due WHERE t.id = due.id`: on a table of up to a few hundred
///   thousand rows the planner hashes the whole table for each claim (a seq scan of
///   30,000 sends for 1,000 claimed, a quarter of the claim's time);
/// - both that join and the `ANY` together: the planner (which estimates one due row
///   from the partial index's statistics) ran a nested loop whose inner scan returned
///   the whole batch for every outer row, a million rows for a claim of 1,000 (1.9 s at
///   5M sends of history).
macro_rules! leased_table {
    (
        table: $table:literal,
        due: $due:expr,
        order: $order:literal,
        shard_key: $shard_key:literal,
        on_claim: $on_claim:literal,
        on_renew: $on_renew:literal,
        on_release: $on_release:literal,
        $(before: $before:literal,)?
        returning: $returning:literal $(,)?
    ) => {
        $crate::db::lease::Table {
            name: $table,
            claim: concat!(
                "WITH due AS (
                     SELECT t.id",
                $($before,)?
                " FROM ",
                $table,
                " t
                     WHERE ",
                $due,
                "
                       AND (t.lease_expires_at IS NULL
                            OR (t.lease_expires_at <= now() AND t.id <> ALL($5::bigint[])))
                       AND ",
                $crate::db::lease::claim_tail!($shard_key, $order),
                "),
                 claimed AS (UPDATE ",
                $table,
                " t
                 SET lease_token = $2, lease_owner = $3, lease_expires_at = ",
                $crate::db::lease::expiry!("$4"),
                $on_claim,
                "
                 WHERE t.id = ANY (ARRAY(SELECT id FROM due))
                 RETURNING t.*)
                 SELECT ",
                $returning,
                " FROM claimed t JOIN due ON due.id = t.id"
            ),
            // Rows locked by a write (the pass's own completion, or another pass's
            // claim) are skipped, never waited for: no deadlock with a completion that
            // locks the same rows in another order. Each asked item comes back with
            // whether it was renewed and whether its token was still there.
            renew: concat!(
                "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::uuid[]) AS u(id, lease)),
                 free AS (SELECT t.id FROM ",
                $table,
                " t JOIN u ON ",
                $crate::db::lease::still_held!(),
                "
                          FOR UPDATE OF t SKIP LOCKED),
                 renewed AS (
                     UPDATE ",
                $table,
                " t
                     SET lease_expires_at = ",
                $crate::db::lease::expiry!("$3"),
                $on_renew,
                "
                     FROM free WHERE t.id = free.id
                     RETURNING t.id)
                 SELECT u.id,
                        u.id IN (SELECT id FROM renewed) AS renewed,
                        EXISTS (SELECT 1 FROM ",
                $table,
                " t WHERE ",
                $crate::db::lease::still_held!(),
                ") AS held
                 FROM u"
            ),
            release: concat!(
                "WITH released AS (
                     UPDATE ",
                $table,
                " t
                     SET ",
                $crate::db::lease::lease_cleared!(),
                $on_release,
                "
                     FROM unnest($2::bigint[], $3::uuid[], $4::bool[], $5::timestamptz[])
                          AS u(id, lease, in_doubt, due_at)
                     WHERE ",
                $crate::db::lease::still_held!(),
                "
                     RETURNING 1)
                 SELECT count(*) FROM released"
            ),
        }
    };
}
pub(crate) use leased_table;

/// A table whose leases are rows of a table of leases (`$leases`: `$key` the claimed
/// row's id, `token`, `owner`, `expires_at`), from literal pieces of SQL:
/// - `due`: which rows may be claimed (besides having no live lease, and the scope);
/// - `order`: which first; `shard_key`: the expression a shard hashes;
/// - `returning`: the claimed rows' columns (of `t`, read as they are locked); the claim
///   answers them, then `leased` (whether the row had an expired lease), which a reader
///   by position leaves unread.
///
/// The claim locks the due rows (`FOR UPDATE SKIP LOCKED`: two claims never take the
/// same row, and a row being completed is skipped), inserts a lease for those that had
/// none, and takes over the expired leases it can lock (`SKIP LOCKED` again: a lease
/// being ended or renewed is left alone). Each due row's lease is read once, joined to
/// it: the insert and the takeover go by what that read found. (Read again, apart, it
/// cost a look-up per claimed row in the leases' index for the takeover, though a
/// lease rarely expires, and a scan of every lease for the insert: a sixth of a
/// claim's buffer reads.) It never waits for a lock: the writes that
/// wait (a completion ending a lease a claim is taking over) wait for a claim, never
/// the other way round. Only the rows whose lease it wrote come back.
///
/// A row stays due while leased (the claim does not move its due time), so a claim
/// walks over the rows leased before it: as many as are in flight, unless `due` starts
/// after them (the sends' keyset, `sends::DueClaims`).
///
/// The rows whose lease it wrote are picked with `(due.id IN (...)) IS TRUE`, not a
/// plain `IN`: a plain one becomes a semi join, and where the planner estimates one due
/// row (a keyset inside a run of equal due times, or a generic plan) that was a nested
/// loop, every due row against every lease written: 500,000 comparisons and 130 ms for
/// a claim of 1,000. Wrapped, it stays a subplan, hashed once whatever the estimate.
macro_rules! leased_by_table {
    (
        table: $table:literal,
        leases: $leases:literal,
        key: $key:literal,
        due: $due:expr,
        order: $order:literal,
        shard_key: $shard_key:literal,
        returning: $returning:expr $(,)?
    ) => {
        $crate::db::lease::Table {
            name: $table,
            claim: concat!(
                "WITH due AS (
                     SELECT ",
                $returning,
                ", l.",
                $key,
                " IS NOT NULL AS leased
                     FROM ",
                $table,
                " t LEFT JOIN ",
                $leases,
                " l ON l.",
                $key,
                " = t.id
                     WHERE ",
                $due,
                "
                       AND (l.",
                $key,
                " IS NULL OR (l.expires_at <= now() AND l.",
                $key,
                " <> ALL ($5::bigint[])))
                       AND ",
                $crate::db::lease::claim_tail!($shard_key, $order),
                "),
                 fresh AS (
                     INSERT INTO ",
                $leases,
                " AS l (",
                $key,
                ", token, owner, expires_at)
                     SELECT due.id, $2, $3, ",
                $crate::db::lease::expiry!("$4"),
                " FROM due WHERE NOT due.leased
                     ON CONFLICT (",
                $key,
                ") DO NOTHING
                     RETURNING l.",
                $key,
                " AS id),
                 expired AS (
                     SELECT l.",
                $key,
                " AS id FROM ",
                $leases,
                " l
                     WHERE l.",
                $key,
                " = ANY (ARRAY(SELECT id FROM due WHERE due.leased)) AND l.expires_at <= now()
                     FOR UPDATE SKIP LOCKED),
                 taken AS (
                     UPDATE ",
                $leases,
                " l
                     SET token = $2, owner = $3, expires_at = ",
                $crate::db::lease::expiry!("$4"),
                "
                     FROM expired WHERE l.",
                $key,
                " = expired.id AND l.expires_at <= now()
                     RETURNING l.",
                $key,
                " AS id)
                 SELECT due.* FROM due
                 WHERE (due.id IN (SELECT id FROM fresh UNION ALL SELECT id FROM taken)) IS TRUE"
            ),
            // As for a lease in the row: a lease locked by a write (the pass's own
            // completion ending it) is skipped, never waited for.
            renew: concat!(
                "WITH u AS (SELECT * FROM unnest($1::bigint[], $2::uuid[]) AS u(id, lease)),
                 free AS (SELECT l.",
                $key,
                " AS id FROM ",
                $leases,
                " l JOIN u ON l.",
                $key,
                " = u.id AND l.token = u.lease
                          FOR UPDATE OF l SKIP LOCKED),
                 renewed AS (
                     UPDATE ",
                $leases,
                " l
                     SET expires_at = ",
                $crate::db::lease::expiry!("$3"),
                "
                     FROM free WHERE l.",
                $key,
                " = free.id
                     RETURNING l.",
                $key,
                " AS id)
                 SELECT u.id,
                        u.id IN (SELECT id FROM renewed) AS renewed,
                        EXISTS (SELECT 1 FROM ",
                $leases,
                " l WHERE l.",
                $key,
                " = u.id AND l.token = u.lease) AS held
                 FROM u"
            ),
            // Nothing of the row changes: it is due when it was due before its claim.
            // $1 (now), in doubt and due_at are the in-row release's.
            release: concat!(
                "WITH u AS (SELECT * FROM unnest($2::bigint[], $3::uuid[], $4::bool[],
                                                 $5::timestamptz[])
                            AS u(id, lease, in_doubt, due_at)
                            WHERE $1::timestamptz IS NOT NULL),
                 ",
                $crate::db::lease::lease_rows_ended!("ended", $leases, $key, "u"),
                "
                 SELECT count(*) FROM ended"
            ),
        }
    };
}
pub(crate) use leased_by_table;

/// The CTE `$name` ending the leases of a batch `$batch` (a relation with columns `id`
/// and `lease`) whose leases are in `$leases` (keyed by `$key`): it deletes those still
/// held under their token and returns their rows of the batch, whole; the caller writes
/// only those rows, joined on `id`: each id comes back at most once (its lease is one
/// row, deleted once, whatever the batch repeats). The delete locks each lease and
/// reads it again once free, so when a claim took over an expired lease first, the
/// token no longer matches and nothing is written for that row.
macro_rules! lease_rows_ended {
    ($name:literal, $leases:literal, $key:literal, $batch:literal) => {
        concat!(
            $name,
            " AS (DELETE FROM ",
            $leases,
            " l USING ",
            $batch,
            " b WHERE l.",
            $key,
            " = b.id AND l.token = b.lease RETURNING b.*)"
        )
    };
}
pub(crate) use lease_rows_ended;

/// Which items a pass works on: a shard of them, and some apps only (none: all).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Scope {
    pub shard: Option<Shard>,
    pub apps: Vec<String>,
}

/// One claim's parameters.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub limit: usize,
    pub lease: Duration,
    pub owner: &'a str,
    /// What the pass already holds: never claimed again while it does.
    pub held: &'a [i64],
    pub scope: &'a Scope,
}

/// A query with its parameters bound so far.
pub type Query<'q> = sqlx::query::Query<'q, Postgres, PgArguments>;

/// Milliseconds, for the lease parameters.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Claims up to `c.limit` due items of `table` under a fresh token, committed at once;
/// `extra` binds the table's own parameters (from $9). Answers the token and the rows.
pub async fn claim<'q>(
    db: &Db,
    table: &'static Table,
    c: &Claim<'_>,
    extra: impl FnOnce(Query<'q>) -> Query<'q>,
) -> Result<(Uuid, Vec<PgRow>), sqlx::Error> {
    db.counted(1);
    let token = Uuid::new_v4();
    // Planned with its values every time (an unnamed statement, about 0.5 ms a claim):
    // the best plan depends on them (where the keyset is, how much is due), and the
    // generic plan Postgres settles on after five runs estimated a handful of due rows
    // and read and sorted every due send after the keyset (a bitmap scan), where the
    // index gives them in order and the limit stops after a batch.
    let query = sqlx::query(table.claim)
        .persistent(false)
        .bind(i64::try_from(c.limit).unwrap_or(i64::MAX))
        .bind(token)
        .bind(c.owner.to_owned())
        .bind(millis(c.lease))
        .bind(c.held.to_vec());
    let query = bind_scope(query, c.scope);
    let rows = extra(query).fetch_all(db.pool()).await?;
    Ok((token, rows))
}

/// What a renewal found for one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Renewed {
    pub id: i64,
    /// Its lease now runs `lease` from the database's now.
    pub renewed: bool,
    /// Its token was still there (false: taken over, or finished).
    pub held: bool,
}

/// Extends the leases of `held` (id, token) for `lease` from the database's now, in one
/// statement; answers what it found for each.
pub async fn renew(
    db: &Db,
    table: &'static Table,
    held: &[(i64, Uuid)],
    lease: Duration,
) -> Result<Vec<Renewed>, sqlx::Error> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    db.counted(1);
    sqlx::query_as(table.renew)
        .bind(held.iter().map(|(id, _)| *id).collect::<Vec<_>>())
        .bind(held.iter().map(|(_, t)| *t).collect::<Vec<_>>())
        .bind(millis(lease))
        .fetch_all(db.pool())
        .await
}

/// An item claimed under a lease.
pub trait Leased {
    fn id(&self) -> i64;
    fn lease(&self) -> Uuid;
    /// An attempt's outcome is unknown: the provider may have it already.
    fn in_doubt(&self) -> bool {
        false
    }
    /// When it was due before its claim, where the table keeps that.
    fn due_at(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        None
    }
}

/// Implements [`Leased`] for a claimed row type with fields `id` and `lease` (and
/// `in_doubt`, given as a second argument).
macro_rules! impl_leased {
    ($ty:ty) => {
        impl $crate::db::lease::Leased for $ty {
            fn id(&self) -> i64 {
                self.id
            }
            fn lease(&self) -> uuid::Uuid {
                self.lease
            }
        }
    };
    ($ty:ty, in_doubt) => {
        impl $crate::db::lease::Leased for $ty {
            fn id(&self) -> i64 {
                self.id
            }
            fn lease(&self) -> uuid::Uuid {
                self.lease
            }
            fn in_doubt(&self) -> bool {
                self.in_doubt
            }
        }
    };
}
pub(crate) use impl_leased;

/// Gives back items claimed but not finished, those still held only; due again at
/// `now` (or, where the table says so, when they were due before the claim: no check
/// counted), marked in doubt when an attempt's outcome is unknown. Answers how many were
/// still held.
pub async fn release(
    db: &Db,
    table: &'static Table,
    now: chrono::DateTime<chrono::Utc>,
    held: &[impl Leased],
) -> Result<u64, sqlx::Error> {
    if held.is_empty() {
        return Ok(0);
    }
    db.counted(1);
    let released: i64 = sqlx::query_scalar(table.release)
        .bind(now)
        .bind(held.iter().map(Leased::id).collect::<Vec<_>>())
        .bind(held.iter().map(Leased::lease).collect::<Vec<_>>())
        .bind(held.iter().map(Leased::in_doubt).collect::<Vec<_>>())
        .bind(held.iter().map(Leased::due_at).collect::<Vec<_>>())
        .fetch_one(db.pool())
        .await?;
    Ok(u64::try_from(released).unwrap_or(0))
}
