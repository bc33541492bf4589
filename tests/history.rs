//! Months of history (issue 10): incremental conversion rates equal the full
//! computation, rates only for final windows, posted rates equal the final truth under
//! faults and a kill, `status` without counting history, and `prune`. Real PostgreSQL
//! (a database per test) and the simulator.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use otp_reconcile::db::Db;
use otp_reconcile::db::apps;
use otp_reconcile::db::conversions::{self, Kind, NewConversion};
use otp_reconcile::db::rates;
use otp_reconcile::db::sends::NewSend;
use otp_reconcile::pass::{Ended, PassSettings};
use otp_reconcile::prune::{self, Plan};
use otp_reconcile::rates::{Rules, Window};
use otp_reconcile_simulator::{
    DEMO_API_KEY, DEMO_API_SECRET, FaultRates, Faults, Lookup, RecordConfig, SimConfig, SimHandle,
    Simulator,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().to_utc()
}

type Key = (String, i64, DateTime<Utc>);

/// The definition in plain SQL over every send (no marks, no finality): per app, mcc
/// and window, the settled sends with a record mcc and how many have an OTP conversion.
async fn plain_full(pool: &PgPool, window: &str) -> BTreeMap<Key, (i64, i64)> {
    sqlx::query_as::<_, (String, i64, DateTime<Utc>, i64, i64)>(
        "SELECT s.app_id, r.mcc,
                date_bin($1::interval, s.sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS w,
                count(*) FILTER (WHERE EXISTS (
                    SELECT 1 FROM conversions c
                    WHERE c.kind = 'otp' AND c.app_id = s.app_id
                      AND c.message_id = s.verification_id)),
                count(*)
         FROM sends s JOIN records r ON r.send_id = s.id
         WHERE s.state = 'settled' AND r.mcc IS NOT NULL
         GROUP BY 1, 2, 3",
    )
    .bind(window)
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(a, m, w, c, s)| ((a, m, w), (c, s)))
    .collect()
}

/// The (app, window) pairs holding a send still pending or recheck.
async fn open_windows(pool: &PgPool, window: &str) -> Vec<(String, DateTime<Utc>)> {
    sqlx::query_as(
        "SELECT DISTINCT app_id,
                date_bin($1::interval, sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
         FROM sends WHERE state IN ('pending', 'recheck')",
    )
    .bind(window)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn stored_rates(pool: &PgPool) -> BTreeMap<Key, (i64, i64)> {
    sqlx::query_as::<_, (String, i64, DateTime<Utc>, i64, i64)>(
        "SELECT app_id, mcc, window_start, converted, sent FROM conversion_rates",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(a, m, w, c, s)| ((a, m, w), (c, s)))
    .collect()
}

/// One step of a random history.
#[derive(Debug, Clone)]
enum Step {
    /// New sends (pending): (app, minutes after the start, verification id suffix).
    Insert(Vec<(u8, u32)>),
    /// Sends (by index, modulo the count) that end: 0 settled with mcc, 1 settled
    /// without mcc, 2 expired, 3 rejected, 4 recheck; mcc 0..3.
    Finish(Vec<(usize, u8, u8)>),
    /// OTP conversions for sends (by index), or for ids never sent.
    Convert(Vec<usize>),
    /// A replay changed the mcc of settled sends' records.
    Remcc(Vec<(usize, u8)>),
    /// A pass computes rates, this many hours after the start.
    Compute(u32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        prop::collection::vec((0u8..2, 0u32..(30 * 60)), 1..8).prop_map(Step::Insert),
        prop::collection::vec((0usize..64, 0u8..5, 0u8..3), 1..8).prop_map(Step::Finish),
        prop::collection::vec(0usize..80, 1..5).prop_map(Step::Convert),
        prop::collection::vec((0usize..64, 0u8..3), 1..3).prop_map(Step::Remcc),
        (1u32..40).prop_map(Step::Compute),
    ]
}

/// Applies a history through the same writes the job and the apps make (inserts of
/// sends and conversions, state updates, records stored), computing rates at each
/// Compute step; after each, every final closed window equals the full computation.
async fn check_history(pool: &PgPool, db: &Db, case: usize, window: Window, steps: &[Step]) {
    for table in [
        "attempts",
        "records",
        "conversions",
        "conversion_rates",
        "rate_dirty",
        "sends",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(pool)
            .await
            .unwrap();
    }
    let start = at("2026-11-20T00:00:00Z");
    let interval = match window {
        Window::Hour => "1 hour",
        Window::Day => "1 day",
    };
    let rules = Rules {
        window,
        settle_delay: Duration::from_secs(3_600),
        lookback: Duration::from_secs(7 * 86_400),
        repost: false,
    };
    let mut ids: Vec<i64> = Vec::new();
    let mut serial = 0;
    let mut now = start;
    let mut steps = steps.to_vec();
    // The history ends with every send final and a pass long after.
    steps.push(Step::Compute(100));
    for step in &steps {
        match step {
            Step::Insert(new) => {
                let rows: Vec<NewSend> = new
                    .iter()
                    .map(|(app, minutes)| {
                        serial += 1;
                        NewSend {
                            app_id: if *app == 0 {
                                APP.into()
                            } else {
                                "app-two".into()
                            },
                            verification_id: Some(format!("c{case}-v{serial}")),
                            order_id: None,
                            number: None,
                            channel: None,
                            sent_at: start + TimeDelta::minutes(i64::from(*minutes)),
                        }
                    })
                    .collect();
                otp_reconcile::db::sends::insert(db, &rows).await.unwrap();
                ids = sqlx::query_scalar("SELECT id FROM sends ORDER BY id")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            }
            Step::Finish(ends) if !ids.is_empty() => {
                for (i, how, mcc) in ends {
                    let id = ids[i % ids.len()];
                    let state =
                        ["settled", "settled", "expired", "rejected", "recheck"][usize::from(*how)];
                    sqlx::query("UPDATE sends SET state = $2 WHERE id = $1")
                        .bind(id)
                        .bind(state)
                        .execute(pool)
                        .await
                        .unwrap();
                    if *how <= 1 {
                        let mcc = (*how == 0).then_some(404 + i64::from(*mcc));
                        sqlx::query(
                            "INSERT INTO records (send_id, mcc, still_sending, raw, first_stored_at, changed_at)
                             VALUES ($1, $2, false, '{}', now(), now())
                             ON CONFLICT (send_id) DO UPDATE SET mcc = EXCLUDED.mcc",
                        )
                        .bind(id)
                        .bind(mcc)
                        .execute(pool)
                        .await
                        .unwrap();
                    }
                }
            }
            Step::Convert(which) => {
                let rows: Vec<NewConversion> = which
                    .iter()
                    .map(|i| {
                        let (app, message_id) = match ids.get(*i) {
                            Some(_) if *i < ids.len() => {
                                let app = if *i % 3 == 0 { "app-two" } else { APP };
                                (app.to_owned(), format!("c{case}-v{}", i + 1))
                            }
                            _ => (APP.to_owned(), format!("c{case}-never-{i}")),
                        };
                        NewConversion {
                            kind: Kind::Otp,
                            app_id: app,
                            message_id,
                            number: Some("91000".into()),
                            converted_at: now,
                        }
                    })
                    .collect();
                conversions::insert(db, &rows).await.unwrap();
            }
            Step::Remcc(changes) if !ids.is_empty() => {
                for (i, mcc) in changes {
                    sqlx::query("UPDATE records SET mcc = $2 WHERE send_id = $1")
                        .bind(ids[i % ids.len()])
                        .bind(404 + i64::from(*mcc))
                        .execute(pool)
                        .await
                        .unwrap();
                }
            }
            Step::Compute(hours) => {
                if *hours == 100 {
                    // The end: what is left open ends (settled without record: no mcc).
                    sqlx::query(
                        "UPDATE sends SET state = 'expired' WHERE state IN ('pending', 'recheck')",
                    )
                    .execute(pool)
                    .await
                    .unwrap();
                }
                now = now.max(start + TimeDelta::hours(i64::from(*hours)));
                rates::compute(db, now, &rules, &[]).await.unwrap();
                let (from, until) = rules.range(now);
                let open = open_windows(pool, interval).await;
                let expected: BTreeMap<Key, (i64, i64)> = plain_full(pool, interval)
                    .await
                    .into_iter()
                    .filter(|((app, _, w), _)| {
                        *w >= from && *w < until && !open.contains(&(app.clone(), *w))
                    })
                    .collect();
                let stored: BTreeMap<Key, (i64, i64)> = stored_rates(pool)
                    .await
                    .into_iter()
                    .filter(|((app, _, w), _)| !open.contains(&(app.clone(), *w)))
                    .collect();
                assert_eq!(
                    stored, expected,
                    "case {case}, {window:?}, at {now}: stored windows differ from the full computation\n{steps:?}"
                );
            }
            _ => {}
        }
    }
    // Nothing is left to compute: every mark in range was consumed.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rate_dirty")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "case {case}: marks left after the last pass");
}

#[sqlx::test]
async fn incremental_rates_equal_the_full_computation_over_random_histories(pool: PgPool) {
    let db = db_with_app(&pool).await;
    apps::add(&db, "app-two", None).await.unwrap();
    let strategy = (prop::bool::ANY, prop::collection::vec(step(), 4..24));
    let mut runner = TestRunner::new(Config {
        cases: 40,
        ..Config::default()
    });
    for case in 0..40 {
        let (daily, steps) = strategy.new_tree(&mut runner).unwrap().current();
        let window = if daily { Window::Day } else { Window::Hour };
        check_history(&pool, &db, case, window, &steps).await;
    }
}

/// The hours marked in `rate_dirty`, as (app, hour), each once, in order.
async fn marked_hours(pool: &PgPool) -> Vec<(String, DateTime<Utc>)> {
    sqlx::query_as("SELECT DISTINCT app_id, hour FROM rate_dirty ORDER BY 1, 2")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Runs `sql` on its own, then answers the marks it left (each mark once) and how many
/// rows of marks it added, and clears them for the next step.
async fn marks_of(pool: &PgPool, sql: &str) -> (Vec<(String, DateTime<Utc>)>, i64) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap();
    let hours = marked_hours(pool).await;
    let rows: i64 =
        sqlx::query_scalar("WITH d AS (DELETE FROM rate_dirty RETURNING 1) SELECT count(*) FROM d")
            .fetch_one(pool)
            .await
            .unwrap();
    (hours, rows)
}

#[sqlx::test]
async fn writes_by_hand_mark_each_hour_once_and_under_the_pass_flag_mark_nothing(pool: PgPool) {
    let db = db_with_app(&pool).await;
    let ten = at("2026-11-20T10:00:00Z");
    let eleven = ten + TimeDelta::hours(1);
    // Three sends in the hour of 10:00, three in that of 11:00.
    let rows: Vec<NewSend> = (0..6)
        .map(|i| NewSend {
            app_id: APP.into(),
            verification_id: Some(format!("mark-{i}")),
            order_id: None,
            number: None,
            channel: None,
            sent_at: ten + TimeDelta::minutes(20 * i),
        })
        .collect();
    insert_sends(&db, &rows).await;
    let both = vec![(APP.to_owned(), ten), (APP.to_owned(), eleven)];
    let (hours, _) = marks_of(&pool, "SELECT 1").await;
    assert_eq!(hours, both, "inserted sends mark their hours");

    let (hours, _) = marks_of(&pool, "UPDATE sends SET state = 'recheck'").await;
    assert_eq!(hours, vec![], "pending to recheck changes no window");
    let (hours, rows) = marks_of(&pool, "UPDATE sends SET state = 'settled'").await;
    assert_eq!(hours, both, "settled sends mark their hours");
    assert_eq!(rows, 2, "one mark per hour, not one per send");
    let (hours, rows) = marks_of(
        &pool,
        "UPDATE sends SET sent_at = sent_at + interval '1 day' WHERE sent_at < '2026-11-20T10:30:00Z'",
    )
    .await;
    assert_eq!(
        hours,
        vec![
            (APP.to_owned(), ten),
            (APP.to_owned(), ten + TimeDelta::days(1))
        ],
        "a moved send marks the hour it left and the one it joined"
    );
    assert_eq!(rows, 2);
    let (hours, rows) = marks_of(
        &pool,
        "INSERT INTO records (send_id, still_sending, raw, first_stored_at, changed_at)
         SELECT id, false, '{}', now(), now() FROM sends
         WHERE sent_at >= '2026-11-20T10:30:00Z' AND sent_at < '2026-11-21T00:00:00Z'",
    )
    .await;
    assert_eq!(hours, both, "stored records mark their sends' hours");
    assert_eq!(rows, 2);
    let (hours, _) = marks_of(&pool, "UPDATE records SET matched = 1").await;
    assert_eq!(hours, vec![], "a record whose mcc stays marks nothing");
    let (hours, _) = marks_of(
        &pool,
        "UPDATE records SET mcc = 310 WHERE send_id = (SELECT max(id) FROM sends)",
    )
    .await;
    assert_eq!(hours, vec![(APP.to_owned(), eleven)], "a changed mcc marks");

    // Under a pass's flag the same writes mark nothing: the pass marks its hours itself.
    let mut tx = pool.begin().await.unwrap();
    for sql in [
        "SELECT set_config('otp_reconcile.pass_marks_hours', 'on', true)",
        "UPDATE sends SET state = 'expired'",
        "UPDATE records SET mcc = 311",
        "DELETE FROM records WHERE send_id = (SELECT min(send_id) FROM records)",
        "INSERT INTO records (send_id, still_sending, raw, first_stored_at, changed_at)
         SELECT min(id), false, '{}', now(), now() FROM sends",
    ] {
        sqlx::query(sql).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(marked_hours(&pool).await, vec![]);
    // The flag ends with its transaction.
    let (hours, _) = marks_of(&pool, "UPDATE sends SET state = 'settled'").await;
    assert_eq!(hours.len(), 3, "{hours:?}");
}

#[sqlx::test]
async fn a_pass_marks_the_hour_of_every_send_it_completes(pool: PgPool) {
    let db = db_with_app(&pool).await;
    apps::add(&db, "app-two", None).await.unwrap();
    let sim = simulator(0.3, 1, Faults::default()).await;
    let hour = chrono::DurationRound::duration_trunc(Utc::now(), TimeDelta::hours(1)).unwrap();
    // Sends of two apps over three hours of the last day, some still sending.
    let rows: Vec<NewSend> = (0..60)
        .map(|i| NewSend {
            app_id: if i % 2 == 0 { APP } else { "app-two" }.into(),
            verification_id: Some(format!("pm-{i}")),
            order_id: None,
            number: Some("9100".into()),
            channel: None,
            sent_at: hour - TimeDelta::hours(20 + i64::from(i % 3))
                + TimeDelta::minutes(i64::from(i)),
        })
        .collect();
    insert_sends(&db, &rows).await;
    sqlx::query("DELETE FROM rate_dirty")
        .execute(&pool)
        .await
        .unwrap();
    // The pass's own rate computation would consume the marks of final windows.
    let settings = PassSettings {
        postbacks: false,
        rates: None,
        ..quick_settings(8)
    };
    let summary = run_pass(&db, &client(&sim, Duration::from_secs(2)), &settings).await;
    assert_eq!(summary.ended, Ended::Done);
    let hours_of_sends: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT DISTINCT app_id, date_bin('1 hour', sent_at, TIMESTAMPTZ '2000-01-01 00:00:00+00')
         FROM sends WHERE attempts > 0 ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(hours_of_sends.len(), 6, "every send was checked");
    assert_eq!(marked_hours(&pool).await, hours_of_sends);
}

/// The simulator, every id known; `sending_share` of them still sending at first.
async fn simulator(sending_share: f64, sending_fetches: u32, faults: Faults) -> SimHandle {
    let mut config = SimConfig::new(31);
    config.records = RecordConfig {
        not_found_share: 0.0,
        sending_share,
        sending_fetches,
        ..RecordConfig::default()
    };
    config.faults = faults;
    Simulator::start(config).await.unwrap()
}

/// Makes every send waiting for a re-check due now (the database clock, not a sleep).
async fn rechecks_due_now(pool: &PgPool) -> u64 {
    sqlx::query(
        "UPDATE sends s SET next_check_at = now() - interval '1 second'
         WHERE s.state IN ('pending', 'recheck')
           AND NOT EXISTS (SELECT 1 FROM send_leases l WHERE l.send_id = s.id)",
    )
    .execute(pool)
    .await
    .unwrap()
    .rows_affected()
}

/// The rate bodies the simulator acknowledged, as (app, mcc) -> (converted, sent).
fn received(sim: &SimHandle) -> Vec<((String, i64), (i64, i64))> {
    sim.stats()
        .backfill_rates
        .iter()
        .filter(|p| p.answer == "0")
        .map(|p| {
            let f = |k: &str| p.body[k].as_str().unwrap().to_owned();
            (
                (f("appId"), f("mcc").parse().unwrap()),
                (
                    f("backfillNumber").parse().unwrap(),
                    f("backfillCardinalNumber").parse().unwrap(),
                ),
            )
        })
        .collect()
}

#[sqlx::test]
async fn a_window_with_a_send_still_rechecking_is_posted_once_it_settles(pool: PgPool) {
    let db = db_with_app(&pool).await;
    apps::add(&db, "app-two", None).await.unwrap();
    let sim = simulator(0.3, 1, Faults::default()).await;
    // Two closed hours: APP's sends in one, app-two's in the other; APP's hour holds
    // sends still sending at the first fetch, app-two's none.
    let hour = chrono::DurationRound::duration_trunc(Utc::now(), TimeDelta::hours(1)).unwrap()
        - TimeDelta::hours(3);
    let sending = |id: &str| !sim.record(Lookup::VerificationId(id), 0).final_answer;
    let mut rows = Vec::new();
    let (mut waiting, mut i) = (0, 0);
    while rows.len() < 40 {
        i += 1;
        let id = format!("fw-{i}");
        let app = if rows.len() < 20 { APP } else { "app-two" };
        if app == "app-two" && sending(&id) {
            continue;
        }
        if app == APP && sending(&id) {
            waiting += 1;
        }
        let offset = if app == APP { 0 } else { 1 };
        rows.push(NewSend {
            app_id: app.into(),
            verification_id: Some(id),
            order_id: None,
            number: Some("9100".into()),
            channel: None,
            sent_at: hour + TimeDelta::hours(offset) + TimeDelta::minutes(i64::from(i % 50)),
        });
    }
    assert!(waiting > 0, "some of APP's sends are still sending");
    insert_sends(&db, &rows).await;
    let conversions: Vec<NewConversion> = rows
        .iter()
        .step_by(3)
        .map(|s| NewConversion {
            kind: Kind::Otp,
            app_id: s.app_id.clone(),
            message_id: s.verification_id.clone().unwrap(),
            number: None,
            converted_at: s.sent_at,
        })
        .collect();
    conversions::insert(&db, &conversions).await.unwrap();
    let client = client(&sim, Duration::from_secs(2));
    let settings = PassSettings {
        postbacks: false,
        ..quick_settings(8)
    };

    let first = run_pass(&db, &client, &settings).await;
    assert_eq!(first.ended, Ended::Done);
    let rechecking: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sends WHERE state = 'recheck' AND app_id = $1")
            .bind(APP)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(rechecking, waiting);
    // app-two's hour is final and posted; APP's is neither computed nor posted.
    let posted = received(&sim);
    assert!(
        posted.iter().all(|((app, _), _)| app == "app-two"),
        "{posted:?}"
    );
    assert!(!posted.is_empty());
    let app_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversion_rates WHERE app_id = $1")
            .bind(APP)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        app_rows, 0,
        "a window with a send rechecking is not computed"
    );

    // The rechecks come due and settle: APP's window is posted, with the final numbers.
    rechecks_due_now(&pool).await;
    let second = run_pass(&db, &client, &settings).await;
    assert_eq!(second.ended, Ended::Done);
    assert_eq!(second.rates.changed_after_post, 0);
    let truth = plain_full(&pool, "1 hour").await;
    let mut got: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for (key, numbers) in received(&sim) {
        assert!(
            got.insert(key.clone(), numbers).is_none(),
            "{key:?} posted twice"
        );
    }
    let want: BTreeMap<(String, i64), (i64, i64)> = truth
        .into_iter()
        .map(|((app, mcc, _), n)| ((app, mcc), n))
        .collect();
    assert_eq!(got, want);
    // A third pass has nothing to compute or post.
    let third = run_pass(&db, &client, &settings).await;
    assert_eq!(third.rates.sent, 0);
    assert_eq!(third.rates.windows_changed, 0);
}

#[sqlx::test]
async fn every_posted_rate_equals_the_final_truth_under_faults_and_a_kill(pool: PgPool) {
    let db = db_with_app(&pool).await;
    // One closed hour: each (app, mcc) is one window, so a body names its window.
    let hour = chrono::DurationRound::duration_trunc(Utc::now(), TimeDelta::hours(1)).unwrap()
        - TimeDelta::hours(2);
    let rows: Vec<NewSend> = (0..600)
        .map(|i| NewSend {
            app_id: APP.into(),
            verification_id: Some(format!("chaos-{i}")),
            order_id: None,
            number: Some(format!("91{i:08}")),
            channel: None,
            sent_at: hour + TimeDelta::seconds(i64::from(i % 3_600)),
        })
        .collect();
    insert_sends(&db, &rows).await;
    let conversions: Vec<NewConversion> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 0)
        .map(|(_, s)| NewConversion {
            kind: Kind::Otp,
            app_id: s.app_id.clone(),
            message_id: s.verification_id.clone().unwrap(),
            number: None,
            converted_at: s.sent_at,
        })
        .collect();
    conversions::insert(&db, &conversions).await.unwrap();
    let sim = simulator(
        0.3,
        2,
        Faults {
            latency_ms: 2,
            stall_ms: Some(3_000),
            rates: FaultRates {
                http_500: 0.05,
                http_503: 0.05,
                http_429: 0.03,
                drop: 0.03,
                stall: 0.002,
                malformed: 0.02,
                ..FaultRates::default()
            },
            ..Faults::default()
        },
    )
    .await;

    // A pass killed (SIGKILL) once it has posted a few windows...
    let mut killed = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env_remove("PROVIDER_API_SECRET_FILE")
        .env("DATABASE_URL", db_url(&pool))
        .env("PROVIDER_BASE_URL", sim.base_url())
        .env("PROVIDER_API_KEY", DEMO_API_KEY)
        .env("PROVIDER_API_SECRET", DEMO_API_SECRET)
        .env("RUST_LOG", "warn")
        .args([
            "run",
            "--no-postbacks",
            "--concurrency",
            "4",
            "--request-timeout",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let fetched = sim.stats().requests.values().sum::<u64>();
        if fetched >= 250 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    end_dead_pass_backends(&pool).await;
    // Its leases run out (the database clock moved, not a sleep).
    expire_leases(&pool, "sends").await;
    sqlx::query(
        "UPDATE conversion_rates SET lease_expires_at = now() - interval '1 second'
         WHERE lease_token IS NOT NULL",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE sends SET next_check_at = now() - interval '1 second'
         WHERE state IN ('pending', 'recheck')",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE conversion_rates SET next_attempt_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();

    // ...then passes under the same faults until every send is final.
    let client = client(&sim, Duration::from_secs(1));
    let settings = PassSettings {
        postbacks: false,
        ..quick_settings(8)
    };
    for round in 0.. {
        assert!(round < 30, "sends never all final");
        let summary = run_pass(&db, &client, &settings).await;
        assert_eq!(summary.ended, Ended::Done);
        let open: i64 =
            sqlx::query_scalar("SELECT count(*) FROM sends WHERE state IN ('pending', 'recheck')")
                .fetch_one(&pool)
                .await
                .unwrap();
        let unposted: i64 =
            sqlx::query_scalar("SELECT count(*) FROM conversion_rates WHERE state = 'pending'")
                .fetch_one(&pool)
                .await
                .unwrap();
        if open == 0 && unposted == 0 {
            break;
        }
        rechecks_due_now(&pool).await;
        sqlx::query(
            "UPDATE conversion_rates SET next_attempt_at = now() - interval '1 second'
             WHERE state = 'pending'",
        )
        .execute(&pool)
        .await
        .unwrap();
    }

    // Every body the provider acknowledged is the final truth of its window, and every
    // window of the truth was acknowledged.
    let truth: BTreeMap<(String, i64), (i64, i64)> = plain_full(&pool, "1 hour")
        .await
        .into_iter()
        .map(|((app, mcc, _), n)| ((app, mcc), n))
        .collect();
    assert!(truth.len() > 3, "{truth:?}");
    let posted = received(&sim);
    for (key, numbers) in &posted {
        assert_eq!(
            truth.get(key),
            Some(numbers),
            "{key:?} posted {numbers:?}, final truth {:?}",
            truth.get(key)
        );
    }
    for key in truth.keys() {
        assert!(posted.iter().any(|(k, _)| k == key), "{key:?} never posted");
    }
    let changed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversion_rates
         WHERE (converted, sent) IS DISTINCT FROM (posted_converted, posted_sent)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(changed, 0);
}

/// History for prune: `n` sends a day for the three days before `cut` and one day after
/// it, with records, attempts, a revision each tenth, OTP conversions for a third, SMS
/// conversions, and every hourly window posted. Answers the sends older than `cut`.
async fn history_for_prune(pool: &PgPool, cut: DateTime<Utc>, n: i64) -> i64 {
    sqlx::query(
        "INSERT INTO passes (kind, owner, started_at, parameters) VALUES ('replay', 't', now(), '{}')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "WITH g AS (SELECT g, $1::timestamptz - interval '3 days'
                              + (interval '4 days') * (g - 1) / ($2 * 4) AS sent_at
                    FROM generate_series(1, $2 * 4) AS g)
         INSERT INTO sends (app_id, verification_id, sent_at, state, next_check_at)
         SELECT $3, 'p' || g, sent_at, 'settled', sent_at FROM g",
    )
    .bind(cut)
    .bind(n)
    .bind(APP)
    .execute(pool)
    .await
    .unwrap();
    for sql in [
        "INSERT INTO records (send_id, mcc, still_sending, raw, first_stored_at, changed_at)
         SELECT id, 404 + id % 3, false, '{\"a\":1}', now(), now() FROM sends",
        "INSERT INTO attempts (send_id, channel, position, mcc, amount)
         SELECT id, c, 1, 404 + id % 3, 0.035 FROM sends, unnest(ARRAY['sms', 'call']) AS c",
        "INSERT INTO record_revisions (pass_id, send_id, revised_at, old_attempts)
         SELECT (SELECT min(id) FROM passes), id, now(), '[]' FROM sends WHERE id % 10 = 0",
        "INSERT INTO conversions (kind, app_id, message_id, converted_at, state)
         SELECT 'otp', app_id, verification_id, sent_at + interval '1 minute', 'sent'
         FROM sends WHERE id % 3 = 0 OR id = (SELECT min(id) + 104 FROM sends)",
        "INSERT INTO conversions (kind, app_id, message_id, converted_at, state)
         SELECT 'sms', app_id, 'sms-' || id, sent_at, 'sent' FROM sends WHERE id % 7 = 0",
        "INSERT INTO conversion_rates (app_id, mcc, window_start, window_length, converted, sent,
                                       computed_at, state, posted_converted, posted_sent, posted_at)
         SELECT s.app_id, r.mcc, date_bin('1 hour', s.sent_at, TIMESTAMPTZ '2000-01-01'),
                interval '1 hour', 0, count(*), now(), 'sent', 0, count(*), now()
         FROM sends s JOIN records r ON r.send_id = s.id GROUP BY 1, 2, 3",
        "DELETE FROM rate_dirty",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query_scalar("SELECT count(*) FROM sends WHERE sent_at < $1")
        .bind(cut)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, sql: &str, cut: DateTime<Utc>) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(cut)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn prune_removes_only_final_history_and_says_what_it_kept(pool: PgPool) {
    let _db = db_with_app(&pool).await;
    let db = Db::new(pool.clone());
    let cut = at("2026-11-20T00:00:00Z");
    let old = history_for_prune(&pool, cut, 300).await;
    assert_eq!(old, 900);
    // What must stay, older than the cut: a send not final, one leased by a replay, the
    // sends of an hour whose window is not posted, those of an hour still marked, and a
    // send whose OTP conversion is not posted back (in doubt); an SMS conversion pending.
    let first: i64 = count(&pool, "SELECT min(id) FROM sends WHERE $1 IS NOT NULL", cut).await;
    for sql in [
        "UPDATE sends SET state = 'recheck' WHERE id = $1",
        "INSERT INTO send_leases (send_id, token, owner, expires_at)
         VALUES ($1 + 1, gen_random_uuid(), 'a-replay', now() + interval '1 hour')",
        "UPDATE conversions SET state = 'pending', in_doubt = true
         WHERE message_id = 'p' || ($1 + 102) AND kind = 'otp'",
        "UPDATE conversion_rates SET state = 'pending'
         WHERE window_start = date_bin('1 hour', (SELECT sent_at FROM sends WHERE id = $1 + 500),
                                       TIMESTAMPTZ '2000-01-01') AND mcc = 404",
        "INSERT INTO rate_dirty (app_id, hour)
         SELECT app_id, date_bin('1 hour', sent_at, TIMESTAMPTZ '2000-01-01') FROM sends WHERE id = $1 + 700",
        "INSERT INTO conversions (kind, app_id, message_id, converted_at)
         VALUES ('sms', 'app-test', 'sms-pending-' || $1, '2026-11-01')",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(first + 2)
            .execute(&pool)
            .await
            .unwrap();
    }
    // The sends of the blocked windows: the pending window's hour, the marked hour, and
    // the hour of the send made recheck (its state change marked it: not final).
    let in_hour = |offset: i64| {
        format!(
            "SELECT count(*) FROM sends WHERE sent_at < $1 AND date_bin('1 hour', sent_at, TIMESTAMPTZ '2000-01-01')
               = (SELECT date_bin('1 hour', sent_at, TIMESTAMPTZ '2000-01-01') FROM sends WHERE id = {})",
            first + 2 + offset
        )
    };
    let blocked = count(&pool, &in_hour(500), cut).await
        + count(&pool, &in_hour(700), cut).await
        + count(&pool, &in_hour(0), cut).await
        - 2;
    assert!(blocked > 10);
    let before =
        |table: &str, column: &str| format!("SELECT count(*) FROM {table} WHERE {column} < $1");
    let expected_sends = old - 3 - blocked;

    let plan = Plan {
        before: cut,
        batch: 37,
        dry_run: true,
    };
    let dry = prune::run(&db, &plan).await.unwrap();
    assert_eq!(
        count(&pool, &before("sends", "sent_at"), cut).await,
        old,
        "a dry run removes nothing"
    );
    let report = prune::run(
        &db,
        &Plan {
            dry_run: false,
            ..plan
        },
    )
    .await
    .unwrap();
    assert_eq!(
        dry.removed, report.removed,
        "the dry run counts what the run removes"
    );
    assert_eq!(report.removed.sends, expected_sends as u64);
    assert_eq!(report.removed.records, expected_sends as u64);
    assert_eq!(report.removed.attempts, 2 * expected_sends as u64);
    assert!(report.batches >= (expected_sends as u64).div_ceil(37));
    assert!(report.removed.record_revisions > 0 && report.removed.conversions > 0);
    assert!(report.removed.conversion_rates > 0);
    let k = report.kept;
    assert_eq!(k.sends_not_final, 1);
    assert_eq!(k.sends_leased, 1);
    assert_eq!(k.sends_window_not_posted, blocked);
    assert_eq!(k.sends_conversion_pending, 1);
    assert_eq!(k.sends_busy, 0);
    assert_eq!(k.conversions_pending, 2);
    assert_eq!(k.conversions_in_doubt, 1);
    assert_eq!(k.conversion_rates_not_posted, 1);

    // What stays older than the cut is exactly what was kept; nothing after it went.
    assert_eq!(
        count(&pool, &before("sends", "sent_at"), cut).await,
        3 + blocked
    );
    let orphans = count(
        &pool,
        "SELECT count(*) FROM records r WHERE NOT EXISTS (SELECT 1 FROM sends s WHERE s.id = r.send_id)
           AND $1 IS NOT NULL",
        cut,
    )
    .await;
    assert_eq!(orphans, 0);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sends WHERE sent_at >= $1", cut).await,
        300
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM attempts a JOIN sends s ON s.id = a.send_id WHERE s.sent_at >= $1", cut).await,
        600
    );
    let rates_after: i64 = count(
        &pool,
        "SELECT count(*) FROM conversion_rates WHERE window_start >= $1",
        cut,
    )
    .await;
    assert!(rates_after > 0);
    // A second prune finds nothing more to remove.
    let again = prune::run(
        &db,
        &Plan {
            dry_run: false,
            ..plan
        },
    )
    .await
    .unwrap();
    assert_eq!(again.removed, prune::Removed::default());
}

#[sqlx::test]
async fn prune_while_a_pass_runs_loses_nothing(pool: PgPool) {
    let db = db_with_app(&pool).await;
    let cut = Utc::now() - TimeDelta::days(8);
    let old = history_for_prune(&pool, cut, 2_000).await;
    // Sends due now, beside the history.
    insert_sends(&db, &new_sends(400, "due")).await;
    let sim = simulator(
        0.0,
        1,
        Faults {
            latency_ms: 1,
            ..Faults::default()
        },
    )
    .await;
    let client = client(&sim, Duration::from_secs(2));
    let settings = PassSettings {
        batch_size: 50,
        write_batch: 50,
        ..quick_settings(8)
    };
    let plan = Plan {
        before: cut,
        batch: 500,
        dry_run: false,
    };
    let (summary, report) = tokio::join!(run_pass(&db, &client, &settings), async {
        prune::run(&db, &plan).await.unwrap()
    });
    assert_eq!(summary.ended, Ended::Done);
    assert_eq!(summary.claimed, 400);
    assert_eq!(report.removed.sends, old as u64);
    let due = count(
        &pool,
        "SELECT count(*) FROM sends s JOIN records r ON r.send_id = s.id
         WHERE s.verification_id LIKE 'due-%' AND s.state = 'settled'
           AND NOT EXISTS (SELECT 1 FROM send_leases l WHERE l.send_id = s.id)
           AND $1 IS NOT NULL",
        cut,
    )
    .await;
    let by_order = count(
        &pool,
        "SELECT count(*) FROM sends s WHERE s.order_id LIKE 'due-%' AND s.state = 'settled' AND $1 IS NOT NULL",
        cut,
    )
    .await;
    assert_eq!(
        due + by_order,
        400,
        "every send of the pass settled and stored"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sends WHERE sent_at < $1", cut).await,
        0
    );
}

#[sqlx::test]
async fn status_counts_what_is_not_final_and_estimates_the_history(pool: PgPool) {
    let db = db_with_app(&pool).await;
    let cut = Utc::now() - TimeDelta::days(8);
    history_for_prune(&pool, cut, 500).await;
    sqlx::query("UPDATE sends SET state = 'rejected' WHERE id % 4 = 0")
        .execute(&pool)
        .await
        .unwrap();
    insert_sends(&db, &new_sends(9, "open")).await;
    sqlx::query("ANALYZE sends").execute(&pool).await.unwrap();
    let status = otp_reconcile::status::read(&db, Utc::now(), 5)
        .await
        .unwrap();
    let pending: i64 = status
        .sends
        .iter()
        .filter(|d| d.state == "pending")
        .map(|d| d.sends)
        .sum();
    assert_eq!(pending, 9);
    assert!(
        status
            .sends
            .iter()
            .all(|d| d.state == "pending" || d.state == "recheck")
    );
    // ANALYZE of a table this small reads every row: the estimate is the count.
    let estimate: BTreeMap<String, i64> = status
        .final_sends_estimate
        .iter()
        .map(|e| (e.state.clone(), e.sends_estimate))
        .collect();
    let exact: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT state, count(*) FROM sends WHERE state IN ('settled', 'rejected') GROUP BY state",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(estimate, exact);
    assert!(status.estimated_as_of.is_some());
    assert!(
        status
            .render()
            .contains("estimated from the planner's statistics")
    );
}

#[sqlx::test]
async fn prune_by_several_workers_removes_each_send_once_and_the_totals_add_up(pool: PgPool) {
    let _db = db_with_app(&pool).await;
    let db = Db::new(pool.clone());
    let cut = at("2026-11-20T00:00:00Z");
    let old = history_for_prune(&pool, cut, 300).await;
    // Settled spend on every attempt, in spend_days as the stores of attempts leave it:
    // the workers subtract from the same days at once.
    for sql in [
        "UPDATE attempts SET settle_pay = 0.01 + (send_id % 5) / 1000.0, settle_currency = 'EUR'",
        "INSERT INTO spend_days (day, currency, pay, attempts)
         SELECT (s.sent_at AT TIME ZONE 'UTC')::date, a.settle_currency, sum(a.settle_pay), count(*)
         FROM sends s JOIN attempts a ON a.send_id = s.id GROUP BY 1, 2",
        // Kept: a send not final and one leased (hours apart), amid the range.
        "UPDATE sends SET state = 'recheck' WHERE id = (SELECT min(id) + 450 FROM sends)",
        "INSERT INTO send_leases (send_id, token, owner, expires_at)
         SELECT min(id) + 350, gen_random_uuid(), 'a-replay', now() + interval '1 hour' FROM sends",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    // The recheck send's state change marked its hour: its window's sends stay too.
    let blocked = count(
        &pool,
        "SELECT count(*) FROM sends s JOIN rate_dirty d ON d.app_id = s.app_id
           AND s.sent_at >= d.hour AND s.sent_at < d.hour + interval '1 hour' WHERE s.sent_at < $1",
        cut,
    )
    .await;
    let expected = old - 1 - blocked;
    let plan = Plan {
        before: cut,
        batch: 7,
        dry_run: true,
    };
    let dry = prune::run_with(&db, &plan, 4).await.unwrap();
    let report = prune::run_with(
        &db,
        &Plan {
            dry_run: false,
            ..plan
        },
        4,
    )
    .await
    .unwrap();
    assert_eq!(
        report.removed, dry.removed,
        "the dry run counts what 4 workers remove"
    );
    assert_eq!(report.removed.sends, expected as u64);
    assert_eq!(report.removed.records, expected as u64);
    assert_eq!(report.removed.attempts, 2 * expected as u64);
    assert_eq!(
        report.removed.record_revisions,
        dry.removed.record_revisions
    );
    assert!(report.batches >= (expected as u64).div_ceil(7));
    assert_eq!(report.kept.sends_not_final, 1);
    assert_eq!(report.kept.sends_leased, 1);
    assert_eq!(report.kept.sends_window_not_posted, blocked - 1);
    assert_eq!(report.kept.sends_busy, 0);
    // Every removed send is gone with all its children; nothing else went.
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sends WHERE sent_at < $1", cut).await,
        old - expected
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sends WHERE sent_at >= $1", cut).await,
        300
    );
    for child in ["records", "attempts", "record_revisions"] {
        let orphans = count(
            &pool,
            &format!(
                "SELECT count(*) FROM {child} c WHERE NOT EXISTS (SELECT 1 FROM sends s WHERE s.id = c.send_id)
                   AND $1 IS NOT NULL"
            ),
            cut,
        )
        .await;
        assert_eq!(orphans, 0, "{child} of removed sends are gone");
    }
    // The spend the workers subtracted, each from the same days at once, adds up.
    let (held, recounted) = spend_held_and_recounted(&pool).await;
    assert_eq!(held, recounted);
    // One worker after four finds nothing more.
    let again = prune::run_with(
        &db,
        &Plan {
            dry_run: false,
            ..plan
        },
        1,
    )
    .await
    .unwrap();
    assert_eq!(again.removed, prune::Removed::default());
}

#[sqlx::test]
async fn prune_by_one_worker_and_by_several_remove_the_same(pool: PgPool) {
    // The dry run counts in one statement; the same history is then removed by one
    // worker (its older half) and by five (the rest), on batches that do not divide
    // the stripes evenly.
    let _db = db_with_app(&pool).await;
    let db = Db::new(pool.clone());
    let cut = at("2026-11-20T00:00:00Z");
    let old = history_for_prune(&pool, cut, 250).await;
    let plan = Plan {
        before: cut,
        batch: 13,
        dry_run: true,
    };
    let dry = prune::run_with(&db, &plan, 1).await.unwrap();
    assert_eq!(dry.removed.sends, old as u64);
    // Half the history by one worker (before a cut in the middle), the rest by five.
    let middle = cut - TimeDelta::hours(36);
    let first = prune::run_with(
        &db,
        &Plan {
            before: middle,
            dry_run: false,
            ..plan
        },
        1,
    )
    .await
    .unwrap();
    let rest = prune::run_with(
        &db,
        &Plan {
            dry_run: false,
            ..plan
        },
        5,
    )
    .await
    .unwrap();
    assert!(first.removed.sends > 0 && rest.removed.sends > 0);
    assert_eq!(first.removed.sends + rest.removed.sends, dry.removed.sends);
    assert_eq!(
        first.removed.records + rest.removed.records,
        dry.removed.records
    );
    assert_eq!(
        first.removed.attempts + rest.removed.attempts,
        dry.removed.attempts
    );
    assert_eq!(
        first.removed.record_revisions + rest.removed.record_revisions,
        dry.removed.record_revisions
    );
    assert_eq!(
        first.removed.conversions + rest.removed.conversions,
        dry.removed.conversions
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM sends WHERE sent_at < $1", cut).await,
        0
    );
}
