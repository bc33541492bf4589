//! The `record_revisions` table: what a replay found different. Before a replay stores a
//! record whose raw answer changed, the previous record and attempts are kept here,
//! tagged with the replay's pass; the change report compares them with what is stored
//! now.

use crate::db::Db;
use crate::record::parse_decimal;
use crate::text::escape;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;

/// Keeps the current record and attempts of every send in `fetched` (held by the
/// caller's transaction) whose raw answer differs from the new one, or that had no
/// record yet. Call before the new records are stored. Answers how many were kept.
pub async fn capture(
    conn: &mut PgConnection,
    pass_id: i64,
    now: DateTime<Utc>,
    fetched: &[(i64, &str)],
    held: &[i64],
) -> Result<u64, sqlx::Error> {
    if fetched.is_empty() || held.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
        "INSERT INTO record_revisions (pass_id, send_id, revised_at, old_matched, old_raw, old_attempts)
         SELECT $1, u.send_id, $2, r.matched, r.raw::jsonb,
                coalesce((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.channel, a.position)
                          FROM attempts a WHERE a.send_id = u.send_id), '[]'::jsonb)
         FROM unnest($3::bigint[], $4::text[]) AS u(send_id, raw)
         LEFT JOIN records r ON r.send_id = u.send_id
         WHERE u.send_id = ANY($5::bigint[])
           AND (r.send_id IS NULL OR r.raw::jsonb IS DISTINCT FROM u.raw::jsonb)
         ON CONFLICT (pass_id, send_id) DO NOTHING",
    )
    .bind(pass_id)
    .bind(now)
    .bind(fetched.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(fetched.iter().map(|(_, raw)| *raw).collect::<Vec<_>>())
    .bind(held)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Keeps, for sends held by the caller's transaction, a replay answer less final than
/// the stored record (`(send_id, raw, matched)`), beside the record and attempts as they
/// are: the record is not replaced. Answers how many were kept.
pub async fn keep_regressions(
    conn: &mut PgConnection,
    pass_id: i64,
    now: DateTime<Utc>,
    answers: &[(i64, &str, Option<i64>)],
    held: &[i64],
) -> Result<u64, sqlx::Error> {
    if answers.is_empty() || held.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
        "INSERT INTO record_revisions (pass_id, send_id, revised_at, old_matched, old_raw,
                                       old_attempts, regression, new_matched, new_raw)
         SELECT $1, u.send_id, $2, r.matched, r.raw::jsonb,
                coalesce((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.channel, a.position)
                          FROM attempts a WHERE a.send_id = u.send_id), '[]'::jsonb),
                true, u.matched, u.raw::jsonb
         FROM unnest($3::bigint[], $4::text[], $5::bigint[]) AS u(send_id, raw, matched)
         LEFT JOIN records r ON r.send_id = u.send_id
         WHERE u.send_id = ANY($6::bigint[])
         ON CONFLICT (pass_id, send_id) DO NOTHING",
    )
    .bind(pass_id)
    .bind(now)
    .bind(answers.iter().map(|(id, _, _)| *id).collect::<Vec<_>>())
    .bind(answers.iter().map(|(_, raw, _)| *raw).collect::<Vec<_>>())
    .bind(answers.iter().map(|(_, _, m)| *m).collect::<Vec<_>>())
    .bind(held)
    .execute(conn)
    .await?
    .rows_affected())
}

/// A settled send the replay found answered less final than stored: the stored record
/// and attempts were kept.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Regression {
    pub send_id: i64,
    pub app_id: String,
    pub verification_id: Option<String>,
    pub order_id: Option<String>,
    /// `matched` as stored (and kept).
    pub matched_stored: Option<i64>,
    /// `matched` in the answer that was not stored.
    pub matched_answered: Option<i64>,
    /// Attempts stored (and kept), with their money.
    pub attempts_kept: usize,
}

/// One attempt's status and money, before or after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptMoney {
    pub channel: String,
    pub attempt: i64,
    pub status: Option<i64>,
    pub amount: Option<Decimal>,
    pub settle_price: Option<Decimal>,
    pub settle_amount: Option<Decimal>,
    pub settle_currency: Option<String>,
}

/// A send whose status or money a replay changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub send_id: i64,
    pub app_id: String,
    pub verification_id: Option<String>,
    pub order_id: Option<String>,
    pub matched_before: Option<i64>,
    pub matched_after: Option<i64>,
    pub before: Vec<AttemptMoney>,
    pub after: Vec<AttemptMoney>,
}

/// What a replay changed.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub pass_id: i64,
    /// Sends whose status or money differ from what was stored before.
    pub changed: Vec<Change>,
    /// After minus before, summed over the changed sends: `amount` in the provider's
    /// quotation currency.
    pub amount_difference: Decimal,
    /// After minus before of `settle_amount`, per settlement currency ("" when none).
    pub settle_difference: BTreeMap<String, Decimal>,
    /// Sends in the range that could not be re-fetched (transient failures or unreadable
    /// answers): they keep what they had.
    pub not_refetched: u64,
    /// Sends in the range another pass held until the replay's deadline: not replayed.
    pub held_elsewhere: u64,
    /// Settled sends answered less final than stored (still sending, or unknown): the
    /// stored record was kept, the answer is in `record_revisions`.
    pub regressions: Vec<Regression>,
}

/// The change report of replay `pass_id`.
pub async fn report(db: &Db, pass_id: i64) -> Result<Report, sqlx::Error> {
    db.counted(1);
    let rows = sqlx::query(
        "SELECT rv.send_id, s.app_id, s.verification_id, s.order_id,
                rv.old_matched, r.matched, rv.old_attempts::text AS before,
                coalesce((SELECT jsonb_agg(to_jsonb(a) ORDER BY a.channel, a.position)
                          FROM attempts a WHERE a.send_id = rv.send_id), '[]'::jsonb)::text AS after
         FROM record_revisions rv
         JOIN sends s ON s.id = rv.send_id
         JOIN records r ON r.send_id = rv.send_id
         WHERE rv.pass_id = $1 AND NOT rv.regression
         ORDER BY rv.send_id",
    )
    .bind(pass_id)
    .fetch_all(db.pool())
    .await?;
    let mut report = Report {
        pass_id,
        ..Report::default()
    };
    for row in rows {
        let before = attempts(&row.try_get::<String, _>("before")?);
        let after = attempts(&row.try_get::<String, _>("after")?);
        let change = Change {
            send_id: row.try_get("send_id")?,
            app_id: row.try_get("app_id")?,
            verification_id: row.try_get("verification_id")?,
            order_id: row.try_get("order_id")?,
            matched_before: row.try_get("old_matched")?,
            matched_after: row.try_get("matched")?,
            before,
            after,
        };
        if change.before == change.after && change.matched_before == change.matched_after {
            continue;
        }
        for (sign, side) in [
            (Decimal::NEGATIVE_ONE, &change.before),
            (Decimal::ONE, &change.after),
        ] {
            for a in side {
                report.amount_difference += sign * a.amount.unwrap_or_default();
                if let Some(settled) = a.settle_amount {
                    *report
                        .settle_difference
                        .entry(a.settle_currency.clone().unwrap_or_default())
                        .or_default() += sign * settled;
                }
            }
        }
        report.changed.push(change);
    }
    report.settle_difference.retain(|_, d| !d.is_zero());
    db.counted(1);
    report.regressions = sqlx::query(
        "SELECT rv.send_id, s.app_id, s.verification_id, s.order_id,
                rv.old_matched, rv.new_matched, jsonb_array_length(rv.old_attempts) AS kept
         FROM record_revisions rv
         JOIN sends s ON s.id = rv.send_id
         WHERE rv.pass_id = $1 AND rv.regression
         ORDER BY rv.send_id",
    )
    .bind(pass_id)
    .fetch_all(db.pool())
    .await?
    .iter()
    .map(|row| {
        Ok(Regression {
            send_id: row.try_get("send_id")?,
            app_id: row.try_get("app_id")?,
            verification_id: row.try_get("verification_id")?,
            order_id: row.try_get("order_id")?,
            matched_stored: row.try_get("old_matched")?,
            matched_answered: row.try_get("new_matched")?,
            attempts_kept: usize::try_from(row.try_get::<i32, _>("kept")?).unwrap_or(0),
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    Ok(report)
}

/// Prune's share of a statement whose CTE `batch` holds the ids of sends that go: the
/// CTE `v` deleting their revisions (`delete`), or how many those are (`count`).
macro_rules! revisions_of_batch {
    (delete) => {
        "v AS (DELETE FROM record_revisions WHERE send_id IN (SELECT id FROM batch) RETURNING 1)"
    };
    (count) => {
        "(SELECT count(*) FROM record_revisions WHERE send_id IN (SELECT id FROM batch))"
    };
}
pub(crate) use revisions_of_batch;

/// Attempts rows (as `to_jsonb` wrote them) to their status and money.
fn attempts(json: &str) -> Vec<AttemptMoney> {
    let rows: Vec<Value> = serde_json::from_str(json).unwrap_or_default();
    let decimal = |v: &Value| match v {
        Value::Number(n) => parse_decimal(&n.to_string()),
        Value::String(s) => parse_decimal(s),
        _ => None,
    };
    rows.iter()
        .map(|a| AttemptMoney {
            channel: a["channel"].as_str().unwrap_or_default().to_owned(),
            attempt: a["position"].as_i64().unwrap_or_default(),
            status: a["status"].as_i64(),
            amount: decimal(&a["amount"]),
            settle_price: decimal(&a["settle_price"]),
            settle_amount: decimal(&a["settle_pay"]),
            settle_currency: a["settle_currency"].as_str().map(str::to_owned),
        })
        .collect()
}

impl Report {
    /// For a terminal: each changed send, before and after, then the totals.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "replay {}: {} sends changed",
            self.pass_id,
            self.changed.len()
        );
        let money = |m: &Option<Decimal>| m.map_or("-".to_owned(), |d| d.to_string());
        for c in &self.changed {
            let id = c
                .verification_id
                .as_deref()
                .or(c.order_id.as_deref())
                .unwrap_or("?");
            let _ = writeln!(
                out,
                "  send {} ({}, {})",
                c.send_id,
                escape(&c.app_id),
                escape(id)
            );
            if c.matched_before != c.matched_after {
                let _ = writeln!(
                    out,
                    "    matched {:?} -> {:?}",
                    c.matched_before, c.matched_after
                );
            }
            let keys: std::collections::BTreeSet<(String, i64)> = c
                .before
                .iter()
                .chain(&c.after)
                .map(|a| (a.channel.clone(), a.attempt))
                .collect();
            for (channel, attempt) in keys {
                let find = |side: &[AttemptMoney]| {
                    side.iter()
                        .find(|a| a.channel == channel && a.attempt == attempt)
                        .cloned()
                };
                let (b, a) = (find(&c.before), find(&c.after));
                if b == a {
                    continue;
                }
                let show = |x: &Option<AttemptMoney>| match x {
                    None => "(none)".to_owned(),
                    Some(x) => format!(
                        "status {} amount {} settle {} {}",
                        x.status.map_or("-".into(), |s| s.to_string()),
                        money(&x.amount),
                        money(&x.settle_amount),
                        escape(x.settle_currency.as_deref().unwrap_or(""))
                    ),
                };
                let _ = writeln!(
                    out,
                    "    {channel} #{attempt}: {} -> {}",
                    show(&b),
                    show(&a)
                );
            }
        }
        let _ = writeln!(
            out,
            "difference in amount (quotation currency): {}",
            self.amount_difference
        );
        if self.not_refetched > 0 {
            let _ = writeln!(
                out,
                "{} sends could not be re-fetched (transient failures or unreadable answers) and keep what they had: replay again",
                self.not_refetched
            );
        }
        if !self.regressions.is_empty() {
            let _ = writeln!(
                out,
                "{} settled sends were answered less final than stored (regressions): their \
                 stored records and attempts were kept, the answers are in record_revisions",
                self.regressions.len()
            );
            let _ = writeln!(
                out,
                "  {:>10}  {:<32}  {:<32}  {:>14}  {:>16}  {:>13}",
                "send", "app", "id", "matched stored", "matched answered", "attempts kept"
            );
            let matched = |m: Option<i64>| m.map_or("-".to_owned(), |m| m.to_string());
            for g in &self.regressions {
                let id = g
                    .verification_id
                    .as_deref()
                    .or(g.order_id.as_deref())
                    .unwrap_or("?");
                let _ = writeln!(
                    out,
                    "  {:>10}  {:<32}  {:<32}  {:>14}  {:>16}  {:>13}",
                    g.send_id,
                    escape(&g.app_id),
                    escape(id),
                    matched(g.matched_stored),
                    matched(g.matched_answered),
                    g.attempts_kept
                );
            }
        }
        if self.held_elsewhere > 0 {
            let _ = writeln!(
                out,
                "{} sends were held by another pass until the replay's deadline and were not replayed: replay again",
                self.held_elsewhere
            );
        }
        for (currency, d) in &self.settle_difference {
            let currency = if currency.is_empty() {
                "(no currency)"
            } else {
                currency
            };
            let _ = writeln!(out, "difference in settle_amount {currency}: {d}");
        }
        out
    }
}
