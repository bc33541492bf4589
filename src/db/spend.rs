//! The `spend_days` table: the settled cost per UTC day of sent_at and per settle
//! currency, so today's spend (pushed after every pass) reads a few rows, not a day of
//! sends and attempts. The statements that write attempts keep it exact, in the same
//! statement, through the CTE fragments here; [`spend_since`] reads it.

use crate::db::Db;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

/// The settled cost of the sends sent since `since`, per settle currency (`None` when
/// the provider gave none), currencies in order, no currency last. The whole days from
/// `since` on are read from `spend_days`; a `since` that is not a UTC midnight adds the
/// sends of the rest of its day, read from the sends themselves.
pub async fn spend_since(
    db: &Db,
    since: DateTime<Utc>,
) -> Result<Vec<(Option<String>, Decimal)>, sqlx::Error> {
    let day = since.date_naive();
    let midnight = day.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    let (first_day, partial) = if midnight == Some(since) {
        (day, None)
    } else {
        let next = day.succ_opt().unwrap_or(day);
        let end = next.and_hms_opt(0, 0, 0).map_or(since, |t| t.and_utc());
        (next, Some(end))
    };
    db.counted(1);
    sqlx::query_as(
        "WITH parts AS (
             SELECT currency, pay, attempts FROM spend_days WHERE day >= $1
             UNION ALL
             SELECT a.settle_currency, a.settle_pay, 1
             FROM sends s JOIN attempts a ON a.send_id = s.id
             WHERE $3::timestamptz IS NOT NULL
               AND s.sent_at >= $2 AND s.sent_at < $3 AND a.settle_pay IS NOT NULL)
         SELECT currency, sum(pay) FROM parts
         GROUP BY 1 HAVING sum(attempts) > 0 ORDER BY 1 NULLS LAST",
    )
    .bind(first_day)
    .bind(since)
    .bind(partial)
    .fetch_all(db.pool())
    .await
}

/// A CTE `$name` adding to `spend_days` the signed `(send_id, currency, pay, n)` rows of
/// the query `$rows` (n: +1 for an attempt written, -1 for one replaced or removed),
/// with the day of each send's sent_at read from `$days` (a query of `(id, sent_at)`).
/// Days and currencies whose sum is unchanged are not written.
macro_rules! add_spend {
    ($name:literal, $rows:literal, $days:literal) => {
        concat!(
            $name,
            " AS (
             INSERT INTO spend_days AS d (day, currency, pay, attempts)
             SELECT (s.sent_at AT TIME ZONE 'UTC')::date, x.currency, sum(x.pay), sum(x.n)
             FROM (",
            $rows,
            ") AS x(send_id, currency, pay, n)
             JOIN (",
            $days,
            ") AS s(id, sent_at) ON s.id = x.send_id
             GROUP BY 1, 2
             HAVING sum(x.n) <> 0 OR sum(x.pay) <> 0
             ORDER BY 1, 2
             ON CONFLICT ON CONSTRAINT spend_days_once DO UPDATE
             SET pay = d.pay + EXCLUDED.pay, attempts = d.attempts + EXCLUDED.attempts)"
        )
    };
}
pub(crate) use add_spend;
