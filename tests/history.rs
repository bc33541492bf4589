//! Months of history (issue 10): incremental conversion rates equal the full
//! computation, rates only for final windows, posted rates equal the final truth under
//! faults and a kill, `status` without counting history, and `prune`. Real PostgreSQL
//! (a database per test) and the simulator.

mod common;

use chrono::{DateTime, TimeDelta, Utc};
use common::*;
use otp_reconcile::apps;
use otp_reconcile::conversions::{self, Kind, NewConversion};
use otp_reconcile::db::Db;
use otp_reconcile::pass::{Ended, PassSettings};
use otp_reconcile::rates::{self, Rules, Window};
use otp_reconcile::sends::NewSend;
use otp_reconcile::simulator::{
    DEMO_API_KEY, DEMO_API_SECRET, FaultRates, Faults, Lookup, RecordConfig, SimConfig,
    SimHandle, Simulator,
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
                            app_id: if *app == 0 { APP.into() } else { "app-two".into() },
                            verification_id: Some(format!("c{case}-v{serial}")),
                            order_id: None,
                            number: None,
                            channel: None,
                            sent_at: start + TimeDelta::minutes(i64::from(*minutes)),
                        }
                    })
                    .collect();
                otp_reconcile::sends::insert(db, &rows).await.unwrap();
                ids = sqlx::query_scalar("SELECT id FROM sends ORDER BY id")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            }
            Step::Finish(ends) if !ids.is_empty() => {
                for (i, how, mcc) in ends {
                    let id = ids[i % ids.len()];
                    let state = ["settled", "settled", "expired", "rejected", "recheck"]
                        [usize::from(*how)];
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
                rates::compute(db, now, &rules).await.unwrap();
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
    let strategy = (
        prop::bool::ANY,
        prop::collection::vec(step(), 4..24),
    );
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
        "UPDATE sends SET next_check_at = now() - interval '1 second'
         WHERE state IN ('pending', 'recheck') AND lease_token IS NULL",
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
    assert!(posted.iter().all(|((app, _), _)| app == "app-two"), "{posted:?}");
    assert!(!posted.is_empty());
    let app_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversion_rates WHERE app_id = $1")
            .bind(APP)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(app_rows, 0, "a window with a send rechecking is not computed");

    // The rechecks come due and settle: APP's window is posted, with the final numbers.
    rechecks_due_now(&pool).await;
    let second = run_pass(&db, &client, &settings).await;
    assert_eq!(second.ended, Ended::Done);
    assert_eq!(second.rates.changed_after_post, 0);
    let truth = plain_full(&pool, "1 hour").await;
    let mut got: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for (key, numbers) in received(&sim) {
        assert!(got.insert(key.clone(), numbers).is_none(), "{key:?} posted twice");
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
        .args(["run", "--no-postbacks", "--concurrency", "4", "--request-timeout", "1s"])
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
    // Its leases run out (the database clock moved, not a sleep).
    for table in ["sends", "conversion_rates"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET lease_expires_at = now() - interval '1 second'
             WHERE lease_token IS NOT NULL"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
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
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sends WHERE state IN ('pending', 'recheck')",
        )
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
