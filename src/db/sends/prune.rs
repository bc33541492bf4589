//! The sends' share of retention (orchestrated by [`crate::prune`]): which sends may go,
//! a batch of them removed with their children in one statement (children first, each
//! child's SQL from its own module), and what stays, by reason.
//!
//! Parameters of every statement: $1 `before`; a batch's range of sent_at is from its
//! cursor $2 to its stripe's end (at most `before`): $4 in a batch, $3 in a count.

use super::sent_in;
use crate::db::Db;
use crate::db::conversions::conversions_of_batch;
use crate::db::rates::blocked;
use crate::db::records::records_of_batch;
use crate::db::revisions::revisions_of_batch;
use chrono::{DateTime, Utc};
use sqlx::Row;
use std::ops::Range;

/// The CTEs `blocked` (rate windows not posted: their sends stay) and `waiting` (OTP
/// conversions not posted back: their sends stay), before $1.
macro_rules! blocked_and_waiting {
    () => {
        concat!(
            blocked!(),
            ",\n             ",
            conversions_of_batch!(waiting)
        )
    };
}

/// The sends that may go, sent from $2 (the batch cursor) to `$to` (the stripe's end, at
/// most $1), as the CTEs `blocked`, `waiting` and `batch` (id, app_id, verification_id,
/// sent_at), `$tail` ending the batch's query (an order and a limit, or nothing).
macro_rules! removable_sends {
    ($to:literal, $tail:literal) => {
        concat!(
            "WITH ",
            blocked_and_waiting!(),
            ",
         batch AS MATERIALIZED (",
            "SELECT s.id, s.app_id, s.verification_id, s.sent_at FROM sends s
             WHERE ",
            sent_in!("s", "$2", $to),
            "
               AND s.state IN ('settled', 'expired', 'rejected')
               AND NOT EXISTS (SELECT 1 FROM send_leases l WHERE l.send_id = s.id)
               AND NOT EXISTS (SELECT 1 FROM blocked b
                               WHERE b.app_id = s.app_id AND ",
            sent_in!("s", "b.window_start", "b.window_end"),
            ")
               AND NOT EXISTS (SELECT 1 FROM waiting w
                               WHERE w.app_id = s.app_id AND w.message_id = s.verification_id)",
            $tail,
            ")"
        )
    };
}

/// What a batch removed (or, counted, would remove), per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    pub sends: u64,
    pub records: u64,
    pub attempts: u64,
    pub record_revisions: u64,
    /// OTP conversions acknowledged or refused, of the sends that go.
    pub conversions: u64,
}

impl Batch {
    fn from_row(row: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        let count = |column: &str| -> Result<u64, sqlx::Error> {
            let n: i64 = row.try_get(column)?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok(Self {
            sends: count("sends")?,
            records: count("records")?,
            attempts: count("attempts")?,
            record_revisions: count("revisions")?,
            conversions: count("conversions")?,
        })
    }
}

/// One batch: up to `limit` removable sends sent in `range` (from the cursor to the
/// stripe's end, which is at most `before`), in sent_at order, with their attempts,
/// revisions, records and acknowledged OTP conversions: one statement, children first.
/// Answers what went and the last sent_at removed.
pub async fn remove_batch(
    db: &Db,
    before: DateTime<Utc>,
    range: Range<DateTime<Utc>>,
    limit: i64,
) -> Result<(Batch, Option<DateTime<Utc>>), sqlx::Error> {
    db.counted(1);
    let row = sqlx::query(concat!(
        removable_sends!(
            "$4",
            "
             ORDER BY s.sent_at
             LIMIT $3
             FOR UPDATE OF s SKIP LOCKED"
        ),
        ",
         ",
        records_of_batch!(delete attempts),
        ",
         ",
        revisions_of_batch!(delete),
        ",
         ",
        records_of_batch!(delete records),
        ",
         ",
        conversions_of_batch!(delete),
        ",
         s AS (DELETE FROM sends WHERE id IN (SELECT id FROM batch) RETURNING sent_at)
         SELECT (SELECT count(*) FROM s) AS sends, (SELECT max(sent_at) FROM s) AS last,
                (SELECT count(*) FROM r) AS records, (SELECT count(*) FROM a) AS attempts,
                (SELECT count(*) FROM v) AS revisions, (SELECT count(*) FROM c) AS conversions",
    ))
    .bind(before)
    .bind(range.start)
    .bind(limit)
    .bind(range.end.min(before))
    .fetch_one(db.pool())
    .await?;
    Ok((Batch::from_row(&row)?, row.try_get("last")?))
}

/// For a dry run: what [`remove_batch`] would remove in `range`, all at once.
pub async fn count_removable(
    db: &Db,
    before: DateTime<Utc>,
    range: Range<DateTime<Utc>>,
) -> Result<Batch, sqlx::Error> {
    db.counted(1);
    let row = sqlx::query(concat!(
        removable_sends!("$3", ""),
        "
         SELECT (SELECT count(*) FROM batch) AS sends,
                ",
        records_of_batch!(count records),
        " AS records,
                ",
        records_of_batch!(count attempts),
        " AS attempts,
                ",
        revisions_of_batch!(count),
        " AS revisions,
                ",
        conversions_of_batch!(count),
        " AS conversions",
    ))
    .bind(before)
    .bind(range.start)
    .bind(range.end.min(before))
    .fetch_one(db.pool())
    .await?;
    Batch::from_row(&row)
}

/// The sends older than `before` that stay, by their first reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kept {
    pub not_final: i64,
    pub leased: i64,
    pub window_not_posted: i64,
    pub conversion_pending: i64,
    /// Final and free, yet not removed: locked by a pass meanwhile (or, in a dry run,
    /// what would go).
    pub busy: i64,
}

/// After a prune, few sends older than `before` are left (read through `sends_sent_at`,
/// whatever the statistics say: see [`crate::db::fetch_kept`]); in a dry run, this reads
/// the range (as the dry run's count does).
pub async fn kept_old(db: &Db, before: DateTime<Utc>) -> Result<Kept, sqlx::Error> {
    let statement = concat!(
        "WITH ",
        blocked_and_waiting!(),
        ",
         old AS (
             SELECT CASE
                 WHEN s.state IN ('pending', 'recheck') THEN 'not_final'
                 WHEN EXISTS (SELECT 1 FROM send_leases l WHERE l.send_id = s.id) THEN 'leased'
                 WHEN EXISTS (SELECT 1 FROM blocked b
                              WHERE b.app_id = s.app_id AND ",
        sent_in!("s", "b.window_start", "b.window_end"),
        ") THEN 'window'
                 WHEN EXISTS (SELECT 1 FROM waiting w
                              WHERE w.app_id = s.app_id AND w.message_id = s.verification_id)
                      THEN 'conversion'
                 ELSE 'busy' END AS reason
             FROM sends s WHERE s.sent_at < $1)
         SELECT count(*) FILTER (WHERE reason = 'not_final') AS not_final,
                count(*) FILTER (WHERE reason = 'leased') AS leased,
                count(*) FILTER (WHERE reason = 'window') AS window_not_posted,
                count(*) FILTER (WHERE reason = 'conversion') AS conversion,
                count(*) FILTER (WHERE reason = 'busy') AS busy
         FROM old",
    );
    let row = crate::db::fetch_kept(db, statement, before).await?;
    Ok(Kept {
        not_final: row.try_get("not_final")?,
        leased: row.try_get("leased")?,
        window_not_posted: row.try_get("window_not_posted")?,
        conversion_pending: row.try_get("conversion")?,
        busy: row.try_get("busy")?,
    })
}

/// The first and last sent_at of the sends older than `before` (through `sends_sent_at`,
/// one probe at each end), or None when there is none: the range the batches stripe.
pub async fn sent_range(
    db: &Db,
    before: DateTime<Utc>,
) -> Result<Option<(DateTime<Utc>, DateTime<Utc>)>, sqlx::Error> {
    db.counted(1);
    let row = sqlx::query(
        "SELECT min(sent_at) AS first, max(sent_at) AS last FROM sends WHERE sent_at < $1",
    )
    .bind(before)
    .fetch_one(db.pool())
    .await?;
    let first: Option<DateTime<Utc>> = row.try_get("first")?;
    let last: Option<DateTime<Utc>> = row.try_get("last")?;
    Ok(first.zip(last))
}
