//! The export's `COPY` statement for a query, and what each of its columns holds.
//!
//! `COPY` takes no bind parameters, so the statement is made by PostgreSQL: `format()`
//! with `%L` quotes the bound values into the constant text below. The values never pass
//! through string building here, and the planner sees them as literals, as it would for
//! `psql`.
//!
//! The columns are PostgreSQL's own text, as cheap for it to write as a plain `SELECT`:
//! what the export must write differently (RFC 3339 times, guarded text) is rewritten
//! while streaming ([`super::copy`]), where it costs far less than in SQL.

use super::{Level, Query};
use sqlx::PgConnection;

/// What a column's cells hold, which says how they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cell {
    /// Numbers, money, dates: PostgreSQL's text is the export's.
    Plain,
    /// Text: neutralized against spreadsheet formulas; an empty string as nothing.
    Text,
    /// A `timestamptz` in UTC, to be written as RFC 3339.
    Time,
}

use Cell::{Plain, Text, Time};

/// The cells of a level's rows, in the order of [`Level::columns`].
pub(super) fn cells(level: Level) -> &'static [Cell] {
    match level {
        Level::Attempt => &[
            Text, Text, Text, Time, Text, Plain, Plain, Plain, Plain, Time, Time, Plain, Plain,
            Plain, Plain, Text, Plain, Text, Plain, Text,
        ],
        Level::Summary | Level::Month => &[
            Plain, Text, Plain, Text, Text, Plain, Plain, Plain, Plain, Plain,
        ],
    }
}

// %1$L and %2$L: the bounds (RFC 3339 with their offset, so read alike whatever the
// session's zone); %3$L: the apps, none for all.
const ATTEMPTS_SQL: &str = "
    COPY (
    SELECT s.app_id, s.verification_id, s.order_id, s.sent_at, a.channel, a.position,
           a.status, a.mcc, a.mnc, a.submitted_at, a.completed_at,
           CASE a.channel WHEN 'sms' THEN a.charge_count WHEN 'call' THEN a.charged_duration END AS units,
           a.amount, a.settle_price, a.settle_pay AS settle_amount, a.settle_currency,
           a.quote_exchange, a.reason, a.rate, s.state
    FROM sends s
    JOIN attempts a ON a.send_id = s.id
    WHERE s.sent_at >= %1$L::timestamptz AND s.sent_at < %2$L::timestamptz
      AND (cardinality(%3$L::text[]) = 0 OR s.app_id = ANY(%3$L::text[]))
    ORDER BY s.sent_at, s.id, a.channel, a.position
    ) TO STDOUT WITH (FORMAT csv)";

// The period (%4$L: 'day' or 'month') of sent_at in the zone: the local time `AT TIME
// ZONE` an IANA name (%5$L), plus a fixed offset in seconds east of UTC (%6$L; 0 for a
// name); written as %7$L (`2026-11-01` or `2026-11`).
const SUMMARY_SQL: &str = "
    COPY (
    SELECT to_char(period::timestamp, %7$L), app_id, mcc, channel, settle_currency,
           sends, attempts, units, amount, settle_amount
    FROM (
        SELECT date_trunc(%4$L, (s.sent_at AT TIME ZONE %5$L) + %6$L::integer * interval '1 second')::date AS period,
               s.app_id, a.mcc, a.channel, a.settle_currency,
               count(DISTINCT s.id) AS sends, count(*) AS attempts,
               sum(CASE a.channel WHEN 'sms' THEN a.charge_count WHEN 'call' THEN a.charged_duration END)::bigint AS units,
               sum(a.amount) AS amount, sum(a.settle_pay) AS settle_amount
        FROM sends s
        JOIN attempts a ON a.send_id = s.id
        WHERE s.sent_at >= %1$L::timestamptz AND s.sent_at < %2$L::timestamptz
          AND (cardinality(%3$L::text[]) = 0 OR s.app_id = ANY(%3$L::text[]))
        GROUP BY 1, 2, 3, 4, 5
    ) AS summary
    ORDER BY period, app_id, mcc NULLS FIRST, channel, settle_currency NULLS FIRST
    ) TO STDOUT WITH (FORMAT csv)";

/// The `COPY` statement for `query`, made on `conn`, whose transaction it also sets to
/// write times in UTC and dates in ISO form (what [`super::copy`] reads), whatever the
/// connection was given.
pub(super) async fn copy_statement(
    conn: &mut PgConnection,
    query: &Query,
) -> Result<String, sqlx::Error> {
    let (template, period_format) = match query.level {
        Level::Attempt => (ATTEMPTS_SQL, ""),
        Level::Summary => (SUMMARY_SQL, "YYYY-MM-DD"),
        Level::Month => (SUMMARY_SQL, "YYYY-MM"),
    };
    let (_, _, statement): (String, String, String) = sqlx::query_as(
        "SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, MDY', true),
                format($1, $2, $3, $4::text[], $5, $6, $7, $8)",
    )
    .bind(template)
    .bind(query.from.to_rfc3339())
    .bind(query.to.to_rfc3339())
    .bind(&query.app_ids)
    .bind(query.level.period().unwrap_or("day"))
    .bind(query.timezone.sql_name())
    .bind(query.timezone.sql_offset_seconds())
    .bind(period_format)
    .fetch_one(conn)
    .await?;
    Ok(statement)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_column_has_its_cell() {
        for level in [Level::Attempt, Level::Summary, Level::Month] {
            let cells = cells(level);
            assert_eq!(cells.len(), level.columns().len(), "{level:?}");
            for (column, cell) in level.columns().iter().zip(cells) {
                let time = column.ends_with("_at");
                let text = matches!(
                    *column,
                    "app_id"
                        | "verification_id"
                        | "order_id"
                        | "channel"
                        | "settle_currency"
                        | "reason"
                        | "send_state"
                );
                let want = match (time, text) {
                    (true, _) => Time,
                    (_, true) => Text,
                    _ => Plain,
                };
                assert_eq!(*cell, want, "{level:?} {column}");
            }
        }
    }
}
