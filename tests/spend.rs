//! Today's spend (the gauge pushed after every pass) is read from `spend_days`, kept by
//! the statements that write attempts: it equals the plain SQL over the sends and
//! attempts after stores, restores that change the cost, a send moved to another day,
//! and a prune.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use otp_reconcile::db::records;
use otp_reconcile::prune::{self, Plan};
use otp_reconcile::record::{Fetched, Record};
use rust_decimal::Decimal;
use sqlx::PgPool;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

/// A settled answer with an sms attempt per `(pay, currency)`.
fn answer(costs: &[(&str, Option<&str>)]) -> Fetched {
    let sms: Vec<serde_json::Value> = costs
        .iter()
        .map(|(pay, currency)| {
            let mut a = serde_json::json!({"status": 0, "mcc": "404", "settlePay": pay});
            if let Some(c) = currency {
                a["settleCurrency"] = serde_json::json!(c);
            }
            a
        })
        .collect();
    let data = serde_json::json!({"verifications": {"matched": 0, "channel": "sms"}, "sms": sms});
    Fetched {
        record: Record::from_data(&data).unwrap(),
        raw: data.to_string(),
    }
}

/// The definition: every attempt with a settle pay, of the sends sent since `since`.
async fn plain(pool: &PgPool, since: DateTime<Utc>) -> Vec<(Option<String>, Decimal)> {
    sqlx::query_as(
        "SELECT a.settle_currency, sum(a.settle_pay)
         FROM sends s JOIN attempts a ON a.send_id = s.id
         WHERE s.sent_at >= $1 AND a.settle_pay IS NOT NULL
         GROUP BY 1 ORDER BY 1 NULLS LAST",
    )
    .bind(since)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The gauge equals the plain SQL from every day's midnight, and from within a day.
async fn check(pool: &PgPool, db: &otp_reconcile::db::Db, step: &str) {
    let first = at("2026-03-01T00:00:00Z");
    for hours in [0, 10, 24, 30, 48, 72] {
        let since = first + TimeDelta::hours(hours);
        let gauge = records::spend_since(db, since).await.unwrap();
        assert_eq!(gauge, plain(pool, since).await, "{step}, since {since}");
    }
}

async fn store(pool: &PgPool, answers: &[(i64, Fetched)]) {
    let fetched: Vec<(i64, &Fetched)> = answers.iter().map(|(id, f)| (*id, f)).collect();
    let held: Vec<i64> = answers.iter().map(|(id, _)| *id).collect();
    let mut tx = pool.begin().await.unwrap();
    records::store(&mut tx, Utc::now(), &fetched, &held)
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

#[sqlx::test]
async fn spend_today_equals_the_plain_sql_after_stores_restores_and_prune(pool: PgPool) {
    let db = db_with_app(&pool).await;
    // 40 settled sends over three days (2026-03-01 to 03), one every 1.8 hours.
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO sends (app_id, verification_id, sent_at, state, next_check_at)
         SELECT $1, 'v' || g, TIMESTAMPTZ '2026-03-01 00:30:00+00' + interval '108 minutes' * g,
                'settled', now()
         FROM generate_series(0, 39) AS g RETURNING id",
    )
    .bind(APP)
    .fetch_all(&pool)
    .await
    .unwrap();
    check(&pool, &db, "nothing stored").await;

    // Stores: one or two attempts per send, USD, EUR or no currency.
    let first: Vec<(i64, Fetched)> = ids
        .iter()
        .map(|&id| {
            let f = match id % 4 {
                0 => answer(&[("0.0350", Some("USD"))]),
                1 => answer(&[("0.0100", Some("USD")), ("0.0200", Some("EUR"))]),
                2 => answer(&[("0.0400", None)]),
                _ => answer(&[("0.0010", Some("EUR"))]),
            };
            (id, f)
        })
        .collect();
    store(&pool, &first).await;
    check(&pool, &db, "stored").await;
    // The same answers again: nothing changes.
    store(&pool, &first).await;
    check(&pool, &db, "stored again").await;

    // Restores (a replay's answers): other costs, other currencies, fewer attempts, and
    // an answer with no cost at all.
    let restored: Vec<(i64, Fetched)> = ids
        .iter()
        .filter(|&&id| id % 3 != 0)
        .map(|&id| {
            let f = match id % 5 {
                0 => answer(&[("0.0360", Some("USD"))]),
                1 => answer(&[("0.0200", Some("EUR"))]),
                2 => answer(&[("0.0500", Some("GBP")), ("0.0010", None)]),
                3 => answer(&[]),
                _ => answer(&[("0.0350", Some("USD")), ("0.0350", Some("USD"))]),
            };
            (id, f)
        })
        .collect();
    store(&pool, &restored).await;
    check(&pool, &db, "restored").await;

    // An app moves sends to another day.
    sqlx::query(
        "UPDATE sends SET sent_at = sent_at + interval '1 day' WHERE id % 7 = 0 AND id = ANY($1)",
    )
    .bind(&ids)
    .execute(&pool)
    .await
    .unwrap();
    check(&pool, &db, "moved").await;

    // Prune the first day and a half (no rate window waits: nothing is marked).
    sqlx::query("DELETE FROM rate_dirty")
        .execute(&pool)
        .await
        .unwrap();
    let plan = Plan {
        before: at("2026-03-02T12:00:00Z"),
        batch: 7,
        dry_run: false,
    };
    let report = prune::run(&db, &plan).await.unwrap();
    assert!(report.removed.sends > 10, "{report:?}");
    assert!(report.removed.attempts > 10, "{report:?}");
    check(&pool, &db, "pruned").await;
    // The whole day pruned leaves no currency behind.
    assert_eq!(
        records::spend_since(&db, at("2026-03-01T00:00:00Z"))
            .await
            .unwrap(),
        plain(&pool, at("2026-03-01T00:00:00Z")).await
    );
}
