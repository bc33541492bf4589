//! The `records` and `attempts` tables, one module because they are written together:
//! the provider's answer for each send, parsed into columns beside its raw JSON (an
//! attempt row per channel attempt). One statement per table per batch; re-storing an
//! unchanged answer writes nothing.

use crate::db::spend::add_spend;
use crate::record::{CallAttempt, Fetched, Settlement, SmsAttempt, SnaAttempt};
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rustc_hash::FxHashSet;
use sqlx::PgConnection;

/// What a store changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    /// Records inserted or changed.
    pub records: u64,
    /// Attempts inserted or changed.
    pub attempts: u64,
}

/// One attempt as its row, borrowing its text from the record: the batch's columns
/// are built without copying a string.
struct AttemptRow<'a> {
    send_id: i64,
    channel: &'static str,
    position: i32,
    status: Option<i64>,
    reason: Option<&'a str>,
    mcc: Option<i64>,
    mnc: Option<i64>,
    submitted_at: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    ringing_at: Option<DateTime<Utc>>,
    answered_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    sender: Option<&'a str>,
    charge_count: Option<i64>,
    call_duration: Option<i64>,
    charged_duration: Option<i64>,
    bill_period: Option<&'a str>,
    supplier_code: Option<&'a str>,
    rate: Option<Decimal>,
    amount: Option<Decimal>,
    settle: &'a Settlement,
}

impl<'a> AttemptRow<'a> {
    fn blank(send_id: i64, channel: &'static str, index: usize, settle: &'a Settlement) -> Self {
        Self {
            send_id,
            channel,
            position: i32::try_from(index + 1).unwrap_or(i32::MAX),
            status: None,
            reason: None,
            mcc: None,
            mnc: None,
            submitted_at: None,
            sent_at: None,
            ringing_at: None,
            answered_at: None,
            completed_at: None,
            sender: None,
            charge_count: None,
            call_duration: None,
            charged_duration: None,
            bill_period: None,
            supplier_code: None,
            rate: None,
            amount: None,
            settle,
        }
    }

    fn sms(send_id: i64, i: usize, a: &'a SmsAttempt) -> Self {
        Self {
            status: a.status,
            reason: a.reason.as_deref(),
            mcc: a.mcc,
            mnc: a.mnc,
            submitted_at: a.submit_tm,
            sent_at: a.send_tm,
            completed_at: a.done_tm,
            sender: a.sender.as_deref(),
            charge_count: a.charge_cnt,
            amount: a.pay,
            ..Self::blank(send_id, "sms", i, &a.settlement)
        }
    }

    fn call(send_id: i64, i: usize, a: &'a CallAttempt) -> Self {
        Self {
            status: a.termination_code,
            reason: a.termination_reason.as_deref(),
            mcc: a.mcc,
            mnc: a.mnc,
            submitted_at: a.submit_time,
            sent_at: a.call_time,
            ringing_at: a.ringing_time,
            answered_at: a.answer_time,
            completed_at: a.hangup_time,
            sender: a.display_num.as_deref(),
            call_duration: a.call_duration,
            charged_duration: a.charged_duration,
            bill_period: a.bill_period.as_deref(),
            supplier_code: a.code.as_deref(),
            rate: a.rate,
            amount: a.cost,
            ..Self::blank(send_id, "call", i, &a.settlement)
        }
    }

    fn sna(send_id: i64, i: usize, a: &'a SnaAttempt) -> Self {
        Self {
            status: a.status,
            reason: a.reason.as_deref(),
            mcc: a.mcc,
            mnc: a.mnc,
            submitted_at: a.post_verification_time,
            completed_at: a.verification_back_time,
            ..Self::blank(send_id, "sna", i, &a.settlement)
        }
    }
}

/// One column of the batch, as a Postgres array.
macro_rules! column {
    ($rows:expr, $($field:tt).+) => {
        $rows.iter().map(|r| r.$($field).+.clone()).collect::<Vec<_>>()
    };
}

/// One text column of the batch, borrowed from the rows (no string copied).
macro_rules! text_column {
    ($rows:expr, $($field:tt).+) => {
        $rows.iter().map(|r| r.$($field).+.as_deref()).collect::<Vec<_>>()
    };
}

/// Stores the records of `fetched` sends, in the caller's transaction, for the sends in
/// `held` only (those whose lease this pass still holds).
pub async fn store(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    fetched: &[(i64, &Fetched)],
    held: &[i64],
) -> Result<Stored, sqlx::Error> {
    let fetched = held_only(fetched, held);
    if fetched.is_empty() {
        return Ok(Stored::default());
    }
    let (records, inserted) = store_records(conn, now, &fetched, Write::Upsert).await?;
    // A send whose record was inserted now had none, so it has no attempts to compare
    // with, replace or subtract from the spend: only the others are read.
    let inserted: FxHashSet<i64> = inserted.into_iter().collect();
    let before: Vec<i64> = fetched
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !inserted.contains(id))
        .collect();
    let attempts = store_attempts(conn, &fetched, &before, Write::Upsert).await?;
    Ok(Stored { records, attempts })
}

/// Stores the records of sends checked for the first time (no check counted before
/// this one), in the caller's transaction, for the sends in `held` only. No pass has
/// completed them, so they have no record and no attempts: both are inserted without
/// looking for what is there. An upsert costs each row a look-up in the primary key and
/// a speculative insert confirmed by a second WAL record: about a seventh of the
/// buffer reads and WAL records Postgres spent per send.
///
/// Under a savepoint: should one have a record after all (a hand edit), the batch goes
/// back to the savepoint and through [`store`]'s upserts instead.
pub async fn store_new(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    fetched: &[(i64, &Fetched)],
    held: &[i64],
) -> Result<Stored, sqlx::Error> {
    let new = held_only(fetched, held);
    if new.is_empty() {
        return Ok(Stored::default());
    }
    let mut savepoint = sqlx::Connection::begin(&mut *conn).await?;
    let inserted = async {
        let (records, _) = store_records(&mut savepoint, now, &new, Write::New).await?;
        let attempts = store_attempts(&mut savepoint, &new, &[], Write::New).await?;
        Ok(Stored { records, attempts })
    }
    .await;
    match inserted {
        Ok(stored) => {
            savepoint.commit().await?;
            Ok(stored)
        }
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            savepoint.rollback().await?;
            tracing::warn!(
                error = %e,
                "a send checked for the first time already had a record: stored by upsert"
            );
            store(conn, now, &new, held).await
        }
        Err(e) => Err(e),
    }
}

/// The sends of `fetched` in `held` (those whose lease this pass still holds). Filtered
/// here: a filter `= ANY(held)` in SQL compares every row with every id.
fn held_only<'a>(fetched: &[(i64, &'a Fetched)], held: &[i64]) -> Vec<(i64, &'a Fetched)> {
    let held: FxHashSet<i64> = held.iter().copied().collect();
    fetched
        .iter()
        .filter(|(id, _)| held.contains(id))
        .copied()
        .collect()
}

/// How a batch is written: compared with what is there, or (sends that have nothing
/// yet) only inserted.
#[derive(Debug, Clone, Copy)]
enum Write {
    Upsert,
    New,
}

/// The insert of a batch of records, before what it does with a record already there.
macro_rules! records_insert {
    () => {
        "INSERT INTO records (send_id, matched, verified_at, ori_receiver, channel, order_id,
                              flow_id, mcc, still_sending, raw, first_stored_at, changed_at)
         SELECT u.send_id, u.matched, u.verified_at, u.ori_receiver, u.channel, u.order_id,
                u.flow_id, u.mcc, u.still_sending, u.raw::json, $1, $1
         FROM unnest($2::bigint[], $3::bigint[], $4::timestamptz[], $5::text[], $6::text[],
                     $7::text[], $8::bigint[], $9::bigint[], $10::bool[], $11::text[])
              AS u(send_id, matched, verified_at, ori_receiver, channel, order_id, flow_id,
                   mcc, still_sending, raw)"
    };
}

/// Inserts or updates the records of `fetched` (sends held, each once); answers how many
/// were written and the sends whose record was inserted (none before).
async fn store_records(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    fetched: &[(i64, &Fetched)],
    write: Write,
) -> Result<(u64, Vec<i64>), sqlx::Error> {
    let rows: Vec<_> = fetched
        .iter()
        .map(|(id, f)| (*id, &f.record, &f.raw))
        .collect();
    let result: Vec<(i64, bool)> = sqlx::query_as(match write {
        Write::New => concat!(records_insert!(), " RETURNING send_id, true"),
        Write::Upsert => concat!(
            records_insert!(),
            "
         ON CONFLICT (send_id) DO UPDATE
         SET matched = EXCLUDED.matched, verified_at = EXCLUDED.verified_at,
             ori_receiver = EXCLUDED.ori_receiver, channel = EXCLUDED.channel,
             order_id = EXCLUDED.order_id, flow_id = EXCLUDED.flow_id, mcc = EXCLUDED.mcc,
             still_sending = EXCLUDED.still_sending, raw = EXCLUDED.raw,
             changed_at = EXCLUDED.changed_at
         WHERE records.raw::text IS DISTINCT FROM EXCLUDED.raw::text
           AND records.raw::jsonb IS DISTINCT FROM EXCLUDED.raw::jsonb
         RETURNING send_id, xmax = 0 AS inserted"
        ),
    })
    .bind(now)
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|r| r.1.verification.matched.map(|m| m.code()))
            .collect::<Vec<_>>(),
    )
    .bind(column!(rows, 1.verification.verified_date))
    .bind(text_column!(rows, 1.verification.ori_receiver))
    .bind(text_column!(rows, 1.verification.channel))
    .bind(text_column!(rows, 1.order_id))
    .bind(column!(rows, 1.flow_id))
    .bind(rows.iter().map(|r| r.1.mcc()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1.still_sending()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    let written = result.len() as u64;
    let inserted = result
        .into_iter()
        .filter(|(_, inserted)| *inserted)
        .map(|(id, _)| id)
        .collect();
    Ok((written, inserted))
}

/// The insert of a batch's attempts, with the spend it adds (and, for the sends of
/// `before`, the attempts it removes and the spend it replaces), before what it does
/// with an attempt already there.
macro_rules! attempts_insert {
    () => {
        concat!(
            "WITH incoming AS (
                 SELECT * FROM unnest(
                     $1::bigint[], $2::text[], $3::int[], $4::bigint[], $5::text[], $6::bigint[],
                     $7::bigint[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                     $11::timestamptz[], $12::timestamptz[], $13::text[], $14::bigint[],
                     $15::bigint[], $16::bigint[], $17::text[], $18::text[], $19::numeric[],
                     $20::numeric[], $21::numeric[], $22::numeric[], $23::text[], $24::numeric[])
                 AS u(send_id, channel, position, status, reason, mcc, mnc, submitted_at, sent_at,
                      ringing_at, answered_at, completed_at, sender, charge_count, call_duration,
                      charged_duration, bill_period, supplier_code, rate, amount, settle_pay,
                      settle_price, settle_currency, quote_exchange)),
             gone AS (
                 DELETE FROM attempts a
                 WHERE cardinality($26::bigint[]) > 0 AND a.send_id = ANY($26::bigint[])
                   AND NOT EXISTS (SELECT 1 FROM incoming i
                                   WHERE i.send_id = a.send_id AND i.channel = a.channel
                                     AND i.position = a.position)),
             ",
            // The spend: what is written, less what it replaces (read before the writes).
            add_spend!(
                "spend",
                "SELECT send_id, settle_currency, settle_pay, 1 FROM incoming
                 WHERE settle_pay IS NOT NULL
                 UNION ALL
                 SELECT send_id, settle_currency, -settle_pay, -1 FROM attempts
                 WHERE cardinality($26::bigint[]) > 0 AND send_id = ANY($26::bigint[])
                   AND settle_pay IS NOT NULL",
                "SELECT id, sent_at FROM sends WHERE id = ANY($25::bigint[])"
            ),
            "
         INSERT INTO attempts AS a
         SELECT * FROM incoming"
        )
    };
}

/// Writes the attempts of `fetched` (sends held, each once): inserts the new, updates
/// the changed, removes those the answer no longer has, and keeps `spend_days` exact.
/// Only the sends of `before` (those that had a record) can have attempts already.
async fn store_attempts(
    conn: &mut PgConnection,
    fetched: &[(i64, &Fetched)],
    before: &[i64],
    write: Write,
) -> Result<u64, sqlx::Error> {
    let rows: Vec<AttemptRow> = fetched
        .iter()
        .flat_map(|(id, f)| {
            let r = &f.record;
            let sms = r
                .sms
                .iter()
                .enumerate()
                .map(|(i, a)| AttemptRow::sms(*id, i, a));
            let call = r
                .call
                .iter()
                .enumerate()
                .map(|(i, a)| AttemptRow::call(*id, i, a));
            let sna = r
                .sna
                .iter()
                .enumerate()
                .map(|(i, a)| AttemptRow::sna(*id, i, a));
            sms.chain(call).chain(sna).collect::<Vec<_>>()
        })
        .collect();
    let stored: Vec<i64> = fetched.iter().map(|(id, _)| *id).collect();
    let result = sqlx::query(match write {
        Write::New => attempts_insert!(),
        Write::Upsert => concat!(
            attempts_insert!(),
            "
         ON CONFLICT (send_id, channel, position) DO UPDATE
         SET status = EXCLUDED.status, reason = EXCLUDED.reason, mcc = EXCLUDED.mcc,
             mnc = EXCLUDED.mnc, submitted_at = EXCLUDED.submitted_at,
             sent_at = EXCLUDED.sent_at, ringing_at = EXCLUDED.ringing_at,
             answered_at = EXCLUDED.answered_at, completed_at = EXCLUDED.completed_at,
             sender = EXCLUDED.sender, charge_count = EXCLUDED.charge_count,
             call_duration = EXCLUDED.call_duration,
             charged_duration = EXCLUDED.charged_duration,
             bill_period = EXCLUDED.bill_period, supplier_code = EXCLUDED.supplier_code,
             rate = EXCLUDED.rate, amount = EXCLUDED.amount,
             settle_pay = EXCLUDED.settle_pay, settle_price = EXCLUDED.settle_price,
             settle_currency = EXCLUDED.settle_currency,
             quote_exchange = EXCLUDED.quote_exchange
         WHERE (a.status, a.reason, a.mcc, a.mnc, a.submitted_at, a.sent_at, a.ringing_at,
                a.answered_at, a.completed_at, a.sender, a.charge_count, a.call_duration,
                a.charged_duration, a.bill_period, a.supplier_code, a.rate, a.amount,
                a.settle_pay, a.settle_price, a.settle_currency, a.quote_exchange)
               IS DISTINCT FROM
               (EXCLUDED.status, EXCLUDED.reason, EXCLUDED.mcc, EXCLUDED.mnc,
                EXCLUDED.submitted_at, EXCLUDED.sent_at, EXCLUDED.ringing_at,
                EXCLUDED.answered_at, EXCLUDED.completed_at, EXCLUDED.sender,
                EXCLUDED.charge_count, EXCLUDED.call_duration, EXCLUDED.charged_duration,
                EXCLUDED.bill_period, EXCLUDED.supplier_code, EXCLUDED.rate, EXCLUDED.amount,
                EXCLUDED.settle_pay, EXCLUDED.settle_price, EXCLUDED.settle_currency,
                EXCLUDED.quote_exchange)"
        ),
    })
    .bind(column!(rows, send_id))
    .bind(rows.iter().map(|r| r.channel).collect::<Vec<_>>())
    .bind(column!(rows, position))
    .bind(column!(rows, status))
    .bind(column!(rows, reason))
    .bind(column!(rows, mcc))
    .bind(column!(rows, mnc))
    .bind(column!(rows, submitted_at))
    .bind(column!(rows, sent_at))
    .bind(column!(rows, ringing_at))
    .bind(column!(rows, answered_at))
    .bind(column!(rows, completed_at))
    .bind(column!(rows, sender))
    .bind(column!(rows, charge_count))
    .bind(column!(rows, call_duration))
    .bind(column!(rows, charged_duration))
    .bind(column!(rows, bill_period))
    .bind(column!(rows, supplier_code))
    .bind(column!(rows, rate))
    .bind(column!(rows, amount))
    .bind(column!(rows, settle.settle_pay))
    .bind(column!(rows, settle.settle_price))
    .bind(text_column!(rows, settle.settle_currency))
    .bind(column!(rows, settle.quote_exchange))
    .bind(stored)
    .bind(before)
    .execute(conn)
    .await?;
    Ok(result.rows_affected())
}

/// The settled cost of the sends sent since `since`, per settle currency (`None` when
/// the provider gave none): what the job pushes as today's spend. Reads `spend_days`
/// (see [`crate::db::spend`]), not the sends.
pub async fn spend_since(
    db: &crate::db::Db,
    since: DateTime<Utc>,
) -> Result<Vec<(Option<String>, Decimal)>, sqlx::Error> {
    crate::db::spend::spend_since(db, since).await
}

/// Prune's share of a statement whose CTE `batch` holds the ids of sends that go: the
/// CTEs `a` and `r` deleting their attempts and records (`delete attempts`, `delete
/// records`), or how many those are (`count attempts`, `count records`).
macro_rules! records_of_batch {
    (delete attempts) => {
        concat!(
            "a AS (DELETE FROM attempts WHERE send_id IN (SELECT id FROM batch)
               RETURNING send_id, settle_currency, settle_pay),
             ",
            $crate::db::spend::add_spend!(
                "spend",
                "SELECT send_id, settle_currency, -settle_pay, -1 FROM a
                 WHERE settle_pay IS NOT NULL",
                "SELECT id, sent_at FROM batch"
            )
        )
    };
    (delete records) => {
        "r AS (DELETE FROM records WHERE send_id IN (SELECT id FROM batch) RETURNING 1)"
    };
    (count attempts) => {
        "(SELECT count(*) FROM attempts WHERE send_id IN (SELECT id FROM batch))"
    };
    (count records) => {
        "(SELECT count(*) FROM records WHERE send_id IN (SELECT id FROM batch))"
    };
}
pub(crate) use records_of_batch;
