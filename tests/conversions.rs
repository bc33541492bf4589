//! Conversions back to the provider: postbacks acknowledged exactly once, a kill
//! mid-postback, and conversion rates against a plain SQL computation of their
//! definition. Real PostgreSQL (a database per test) and the simulator.

mod common;

use chrono::{DurationRound, TimeDelta, Utc};
use common::*;
use otp_reconcile::db::Db;
use otp_reconcile::db::apps;
use otp_reconcile::db::conversions::{self, Kind, NewConversion};
use otp_reconcile::db::sends::NewSend;
use otp_reconcile::pass::{Ended, PassSettings};
use otp_reconcile::rates::{Rules, Window};
use otp_reconcile_simulator::{
    DEMO_API_KEY, DEMO_API_SECRET, FaultRates, Faults, RecordConfig, SimConfig, SimHandle,
    Simulator,
};
use rust_decimal::Decimal;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The simulator; only ids with the `missing-` prefix are unknown to it.
async fn simulator(records: RecordConfig, faults: Faults) -> SimHandle {
    let records = RecordConfig {
        not_found_share: 0.0,
        ..records
    };
    let mut config = SimConfig::new(23);
    config.records = records;
    config.faults = faults;
    Simulator::start(config).await.unwrap()
}

/// `n` conversions: four in five OTP, the rest SMS; every 100th for an id the provider
/// does not know.
fn new_conversions(n: usize, prefix: &str) -> Vec<NewConversion> {
    (0..n)
        .map(|i| NewConversion {
            kind: if i % 5 == 4 { Kind::Sms } else { Kind::Otp },
            app_id: APP.into(),
            message_id: if i % 100 == 99 {
                format!("missing-{prefix}{i}")
            } else {
                format!("{prefix}{i}")
            },
            number: Some(format!("91{:010}", 8_000_000_000u64 + i as u64)),
            converted_at: Utc::now() - chrono::Duration::minutes(5),
        })
        .collect()
}

async fn insert_conversions(db: &Db, rows: &[NewConversion]) {
    for chunk in rows.chunks(1_000) {
        conversions::insert(db, chunk).await.unwrap();
    }
}

fn postbacks_only(concurrency: usize) -> PassSettings {
    PassSettings {
        rates: None,
        ..quick_settings(concurrency)
    }
}

fn postback_key(c: &NewConversion) -> String {
    format!("{}:{}", c.kind.as_str(), c.message_id)
}

#[sqlx::test]
async fn ten_thousand_conversions_are_acknowledged_exactly_once_through_transient_faults(
    pool: PgPool,
) {
    let db = db_with_app(&pool).await;
    let rows = new_conversions(10_000, "pb");
    insert_conversions(&db, &rows).await;
    let sim = simulator(
        RecordConfig::default(),
        Faults {
            // Held past the client's timeout, so a stall is a timeout.
            stall_ms: Some(10_000),
            rates: FaultRates {
                http_500: 0.015,
                http_503: 0.015,
                drop: 0.01,
                stall: 0.005,
                malformed: 0.005,
                ..FaultRates::default()
            },
            ..Faults::default()
        },
    )
    .await;
    // Generous: only stalls time out. A postback answered after the client gave up is
    // acknowledged twice (rightly), so the timeout must never race a slow answer.
    let client = client(&sim, Duration::from_secs(5));
    let summary = run_pass(&db, &client, &postbacks_only(64)).await;
    assert_eq!(summary.ended, Ended::Done);

    let stats = sim.stats();
    let faults: u64 = ["http_500", "http_503", "drop", "stall", "malformed"]
        .iter()
        .map(|f| stats.answered("otp_postback", f) + stats.answered("sms_postback", f))
        .sum();
    assert!(faults > 300, "{faults} transient faults injected");
    assert!(
        stats.duplicates.postbacks.is_empty(),
        "{:?}",
        stats.duplicates.postbacks
    );
    let mut sent = 0;
    for c in &rows {
        let acked = stats
            .postbacks
            .get(&postback_key(c))
            .map_or(0, |p| p.acknowledged);
        let unknown = c.message_id.starts_with("missing-");
        assert_eq!(acked, u64::from(!unknown), "{}", postback_key(c));
        sent += usize::from(!unknown);
    }
    assert_eq!(summary.conversions.sent as usize, sent);
    assert_eq!(summary.conversions.rejected, 100);
    let rejected: Vec<(String, String)> =
        sqlx::query_as("SELECT message_id, last_error FROM conversions WHERE state = 'rejected'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rejected.len(), 100);
    assert!(
        rejected
            .iter()
            .all(|(id, why)| id.starts_with("missing-") && why.contains("-14")),
        "{rejected:?}"
    );
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM conversions WHERE state = 'pending'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending, 0);

    // A second pass posts nothing.
    let before = sim.stats().total_requests;
    let again = run_pass(&db, &client, &postbacks_only(64)).await;
    assert_eq!((again.conversions.claimed, again.requests), (0, 0));
    assert_eq!(sim.stats().total_requests, before);
}

#[sqlx::test]
async fn postbacks_use_the_sends_number_and_the_right_endpoint_and_body(pool: PgPool) {
    let db = db_with_app(&pool).await;
    let mut send = new_sends(1, "num").remove(0);
    send.number = Some("919900001111".into());
    insert_sends(&db, &[send]).await;
    let converted_at = chrono::DateTime::parse_from_rfc3339("2026-11-20T10:00:00.250Z")
        .unwrap()
        .to_utc();
    let rows = [
        NewConversion {
            kind: Kind::Otp,
            app_id: APP.into(),
            message_id: "num-v0".into(),
            number: None,
            converted_at,
        },
        NewConversion {
            kind: Kind::Sms,
            app_id: APP.into(),
            message_id: "msg-1".into(),
            number: Some("+4470000".into()),
            converted_at,
        },
        NewConversion {
            kind: Kind::Otp,
            app_id: APP.into(),
            message_id: "no-number".into(),
            number: None,
            converted_at,
        },
    ];
    insert_conversions(&db, &rows).await;
    let sim = simulator(RecordConfig::default(), Faults::default()).await;
    let summary = run_pass(
        &db,
        &client(&sim, Duration::from_secs(2)),
        &postbacks_only(4),
    )
    .await;
    assert_eq!(
        (summary.conversions.sent, summary.conversions.rejected),
        (2, 1)
    );

    let otp = sim.requests(Some("otp:num-v0"));
    assert_eq!(otp.len(), 1);
    let sms = sim.requests(Some("sms:msg-1"));
    assert_eq!(sms.len(), 1);
    assert_eq!(
        (otp[0].endpoint.as_str(), sms[0].endpoint.as_str()),
        ("otp_postback", "sms_postback")
    );
    let (why,): (String,) =
        sqlx::query_as("SELECT last_error FROM conversions WHERE message_id = 'no-number'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(why.contains("no number"), "{why}");
    assert!(
        sim.requests(Some("otp:no-number")).is_empty(),
        "nothing sent without a number"
    );
}

#[sqlx::test]
async fn a_pass_killed_mid_postback_duplicates_only_what_was_in_flight(pool: PgPool) {
    let db = db_with_app(&pool).await;
    let rows: Vec<NewConversion> = new_conversions(4_000, "kill")
        .into_iter()
        .filter(|c| !c.message_id.starts_with("missing-"))
        .collect();
    insert_conversions(&db, &rows).await;
    let sim = simulator(
        RecordConfig::default(),
        Faults {
            latency_ms: 10,
            ..Faults::default()
        },
    )
    .await;
    let bin = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
        cmd.env_remove("PROVIDER_API_SECRET_FILE")
            .env("DATABASE_URL", db_url(&pool))
            .env("PROVIDER_BASE_URL", sim.base_url())
            .env("PROVIDER_API_KEY", DEMO_API_KEY)
            .env("PROVIDER_API_SECRET", DEMO_API_SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    };
    let mut first = bin()
        .args(["run", "--no-rates", "--concurrency", "8", "--lease", "60s"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let acked = sim
            .stats()
            .postbacks
            .values()
            .filter(|p| p.acknowledged > 0)
            .count();
        if acked >= 1_200 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    end_dead_pass_backends(&pool).await;
    // Its leases run out (on the database's clock).
    expire_leases(&pool, "conversions").await;

    let dir = tempfile::tempdir().unwrap();
    let summary_path = dir.path().join("summary.json");
    let mut second = bin();
    second
        .args(["run", "--no-rates", "--concurrency", "8", "--summary-json"])
        .arg(&summary_path);
    let status = tokio::task::spawn_blocking(move || second.status().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&summary_path).unwrap()).unwrap();

    let stats = sim.stats();
    for c in &rows {
        assert!(
            stats.postbacks[&postback_key(c)].acknowledged >= 1,
            "{} never acknowledged",
            c.message_id
        );
    }
    let states = sqlx::query_scalar::<_, String>("SELECT DISTINCT state FROM conversions")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(states, ["sent"]);
    let in_doubt: BTreeSet<String> = sqlx::query_scalar::<_, String>(
        "SELECT kind || ':' || message_id FROM conversions WHERE in_doubt",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let twice: BTreeSet<String> = stats.duplicates.postbacks.iter().cloned().collect();
    assert!(
        twice.is_subset(&in_doubt),
        "acknowledged twice but not in doubt: {:?}",
        twice.difference(&in_doubt)
    );
    let possibly = summary["conversions"]["possibly_duplicated"]
        .as_u64()
        .unwrap();
    assert_eq!(
        possibly as usize,
        in_doubt.len(),
        "the summary counts every conversion in doubt"
    );
    assert!(possibly as usize >= twice.len());
    // Only what the killed pass held: small claims, not the whole table.
    assert!(in_doubt.len() <= 64, "{} in doubt", in_doubt.len());
}

#[sqlx::test]
async fn postbacks_abandoned_when_the_grace_runs_out_are_released_in_doubt(pool: PgPool) {
    let db = db_with_app(&pool).await;
    let rows: Vec<NewConversion> = new_conversions(10, "grace").into_iter().take(10).collect();
    insert_conversions(&db, &rows).await;
    // No postback is ever answered in the test's time: the pass is stopped once the
    // simulator has received all ten, so all ten are in flight, however busy the machine.
    let sim = simulator(
        RecordConfig::default(),
        Faults {
            latency_ms: 600_000,
            ..Faults::default()
        },
    )
    .await;
    let client = client(&sim, Duration::from_secs(60));
    let mut settings = postbacks_only(16);
    settings.grace = Duration::from_millis(200);
    let interrupt = tokio_util::sync::CancellationToken::new();
    let stopper = {
        let interrupt = interrupt.clone();
        let sim = &sim;
        async move {
            until_requests(sim, 10).await;
            interrupt.cancel();
        }
    };
    let deps = deps(&db, &client, otp_reconcile::clock::system(), interrupt);
    let (summary, ()) = tokio::join!(otp_reconcile::pass::run(deps, &settings), stopper);
    let summary = summary.unwrap();
    assert_eq!(summary.ended, Ended::Interrupted);
    assert_eq!(summary.conversions.released, 10);
    let (pending, in_doubt, leased): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE in_doubt),
                count(*) FILTER (WHERE lease_token IS NOT NULL)
         FROM conversions",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((pending, in_doubt, leased), (10, 10, 0));

    // The next pass posts them, and counts each as possibly duplicated.
    sim.set_faults(Faults::default());
    let next = run_pass(&db, &client, &postbacks_only(16)).await;
    assert_eq!(
        (next.conversions.sent, next.conversions.possibly_duplicated),
        (10, 10)
    );
}

#[sqlx::test]
async fn a_backlog_of_sends_does_not_starve_the_postbacks(pool: PgPool) {
    let db = db_with_app(&pool).await;
    // Far more sends than the pass can check before --max-runtime.
    insert_sends(&db, &new_sends(3_000, "backlog")).await;
    let rows: Vec<NewConversion> = new_conversions(20, "starved")
        .into_iter()
        .take(20)
        .collect();
    insert_conversions(&db, &rows).await;
    let sim = simulator(
        RecordConfig::default(),
        Faults {
            latency_ms: 50,
            ..Faults::default()
        },
    )
    .await;
    let client = client(&sim, Duration::from_secs(2));
    let mut settings = postbacks_only(4);
    settings.max_runtime = Some(Duration::from_secs(60));
    // The pass's clock is moved past the records' share of --max-runtime (70%, not the
    // postbacks' 90%) once the simulator has answered 100 record fetches: at 50 ms each,
    // four at a time, the backlog of 3,000 is far from done, however fast the machine.
    let summary =
        run_pass_jumping_clock(&db, &client, &settings, &sim, 100, Duration::from_secs(45)).await;
    assert_eq!(summary.ended, Ended::MaxRuntime);
    assert!(summary.checked < 3_000, "{}", summary.checked);
    assert_eq!(summary.conversions.sent, 20, "{:?}", summary.conversions);
}

/// Sends spread over the last 30 days, for two apps.
fn month_of_sends(n: usize) -> Vec<NewSend> {
    let now = Utc::now();
    (0..n)
        .map(|i| NewSend {
            app_id: if i % 3 == 0 {
                "app-other".into()
            } else {
                APP.into()
            },
            verification_id: Some(format!("m{i}")),
            order_id: None,
            number: Some(format!("91{:010}", 7_000_000_000u64 + i as u64)),
            channel: None,
            sent_at: now - chrono::Duration::minutes((i as i64 * 30 * 24 * 60) / n as i64),
        })
        .collect()
}

/// The definition, in plain SQL, from attempts (not from the job's own columns).
const PLAIN_RATES: &str = "
    WITH settled AS (
        SELECT s.id, s.app_id, s.verification_id, s.sent_at,
               (SELECT a.mcc FROM attempts a
                WHERE a.send_id = s.id AND a.mcc IS NOT NULL
                ORDER BY CASE a.channel WHEN 'sms' THEN 1 WHEN 'call' THEN 2 ELSE 3 END, a.position
                LIMIT 1) AS mcc
        FROM sends s WHERE s.state = 'settled')
    SELECT app_id, mcc, date_trunc('day', sent_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
           count(*) FILTER (WHERE EXISTS (
               SELECT 1 FROM conversions c
               WHERE c.kind = 'otp' AND c.app_id = settled.app_id
                 AND c.message_id = settled.verification_id)) AS converted,
           count(*) AS sent
    FROM settled
    WHERE mcc IS NOT NULL AND sent_at >= $1 AND sent_at < $2
    GROUP BY 1, 2, 3";

type Window_ = (String, i64, chrono::DateTime<Utc>);

async fn plain_rates(
    pool: &PgPool,
    from: chrono::DateTime<Utc>,
    until: chrono::DateTime<Utc>,
) -> BTreeMap<Window_, (i64, i64)> {
    sqlx::query_as::<_, (String, i64, chrono::DateTime<Utc>, i64, i64)>(PLAIN_RATES)
        .bind(from)
        .bind(until)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(app, mcc, day, converted, sent)| ((app, mcc, day), (converted, sent)))
        .collect()
}

async fn posted_rates(pool: &PgPool) -> BTreeMap<Window_, (i64, i64, Decimal)> {
    sqlx::query_as::<_, (String, i64, chrono::DateTime<Utc>, i64, i64, Decimal)>(
        "SELECT app_id, mcc, window_start, posted_converted, posted_sent, posted_rate
         FROM conversion_rates WHERE state = 'sent'",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(app, mcc, day, c, s, r)| ((app, mcc, day), (c, s, r)))
    .collect()
}

#[sqlx::test]
async fn rates_for_a_month_equal_a_plain_sql_computation_and_are_posted_once(pool: PgPool) {
    let db = db_with_app(&pool).await;
    apps::add(&db, "app-other", None).await.unwrap();
    let sends = month_of_sends(3_000);
    insert_sends(&db, &sends).await;
    // About a third converted, a few for ids that were never sent.
    let mut conversions: Vec<NewConversion> = sends
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 == 1 || i % 7 == 0)
        .map(|(_, s)| NewConversion {
            kind: Kind::Otp,
            app_id: s.app_id.clone(),
            message_id: s.verification_id.clone().unwrap(),
            number: None,
            converted_at: s.sent_at + chrono::Duration::seconds(30),
        })
        .collect();
    conversions.extend((0..20).map(|i| NewConversion {
        kind: Kind::Otp,
        app_id: APP.into(),
        message_id: format!("never-sent-{i}"),
        number: Some("9100000".into()),
        converted_at: Utc::now(),
    }));
    insert_conversions(&db, &conversions).await;

    let sim = simulator(
        RecordConfig {
            sending_share: 0.0,
            ..RecordConfig::default()
        },
        Faults::default(),
    )
    .await;
    let client = client(&sim, Duration::from_secs(2));
    let rules = Rules {
        window: Window::Day,
        lookback: Duration::from_secs(31 * 86_400),
        ..Rules::default()
    };
    let settings = PassSettings {
        rates: Some(rules.clone()),
        ..quick_settings(32)
    };
    let summary = run_pass(&db, &client, &settings).await;
    assert_eq!(summary.ended, Ended::Done);
    assert!(summary.rates.sent > 50, "{:?}", summary.rates);

    // Every posted (app, mcc, window) is the plain computation, and nothing else.
    let (from, until) = rules.range(Utc::now());
    assert_eq!(
        until,
        (Utc::now() - TimeDelta::hours(1))
            .duration_trunc(TimeDelta::days(1))
            .unwrap()
    );
    let expected = plain_rates(&pool, from, until).await;
    let posted = posted_rates(&pool).await;
    assert_eq!(
        posted.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (window, (converted, sent)) in &expected {
        let (c, s, rate) = &posted[window];
        assert_eq!((c, s), (converted, sent), "{window:?}");
        let plain: Decimal = sqlx::query_scalar("SELECT round(100.0 * $1 / $2, 2)")
            .bind(*converted)
            .bind(*sent)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(*rate, plain, "{window:?}");
    }
    // What the provider received is exactly the ledger, once each.
    let stats = sim.stats();
    let mut received: Vec<(String, String, String, String, String)> = stats
        .backfill_rates
        .iter()
        .map(|p| {
            assert_eq!(p.answer, "0");
            let b = &p.body;
            let f = |k: &str| b[k].as_str().unwrap().to_owned();
            (
                f("appId"),
                f("mcc"),
                f("backfillNumber"),
                f("backfillCardinalNumber"),
                f("backfillNow"),
            )
        })
        .collect();
    received.sort();
    let mut ledger: Vec<(String, String, String, String, String)> = posted
        .iter()
        .map(|((app, mcc, _), (c, s, r))| {
            (
                app.clone(),
                mcc.to_string(),
                c.to_string(),
                s.to_string(),
                r.normalize().to_string(),
            )
        })
        .collect();
    ledger.sort();
    assert_eq!(received, ledger);

    // A second pass posts no window again.
    let again = run_pass(&db, &client, &settings).await;
    assert_eq!(again.rates.sent, 0);
    assert_eq!(sim.stats().backfill_rates.len(), stats.backfill_rates.len());

    // A late conversion changes a posted window: reported, not posted...
    let (late_app, late_id): (String, String) = sqlx::query_as(
        "SELECT s.app_id, s.verification_id FROM sends s
         WHERE s.state = 'settled' AND s.sent_at >= $1 AND s.sent_at < $2
           AND NOT EXISTS (SELECT 1 FROM conversions c WHERE c.message_id = s.verification_id)
         LIMIT 1",
    )
    .bind(from)
    .bind(until)
    .fetch_one(&pool)
    .await
    .unwrap();
    insert_conversions(
        &db,
        &[NewConversion {
            kind: Kind::Otp,
            app_id: late_app,
            message_id: late_id,
            number: Some("9100001".into()),
            converted_at: Utc::now(),
        }],
    )
    .await;
    let late = run_pass(&db, &client, &settings).await;
    assert_eq!(late.rates.changed_after_post, 1);
    assert_eq!(late.rates.sent, 0);
    // ...unless the pass is told to repost it.
    let repost = PassSettings {
        rates: Some(Rules {
            repost: true,
            ..rules.clone()
        }),
        ..settings.clone()
    };
    let reposted = run_pass(&db, &client, &repost).await;
    assert_eq!(reposted.rates.sent, 1);
    assert_eq!(
        posted_rates(&pool)
            .await
            .values()
            .map(|v| (v.0, v.1))
            .collect::<Vec<_>>(),
        plain_rates(&pool, from, until)
            .await
            .values()
            .copied()
            .collect::<Vec<_>>()
    );
}

#[sqlx::test]
async fn import_conversions_reports_bad_lines(pool: PgPool) {
    db_with_app(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("conversions.csv");
    std::fs::write(
        &file,
        "kind,app_id,message_id,number,converted_at\n\
         otp,app-test,v1,+919876543210,2026-11-20T10:00:00Z\n\
         fax,app-test,v2,,2026-11-20T10:00:00Z\n\
         sms,nobody,m1,,2026-11-20T10:00:00Z\n\
         sms,app-test,m 2,,2026-11-20T10:00:00Z\n\
         sms,app-test,m3,,yesterday\n\
         OTP,app-test,v4,,2026-11-20T10:00:00+08:00\n\
         otp,app-test,v1,,2026-11-21T10:00:00Z\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env("DATABASE_URL", db_url(&pool))
        .args(["import", "conversions"])
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    for expected in [
        "line 3: kind \"fax\" is not otp or sms",
        "line 4: unknown app_id \"nobody\"",
        "line 5: message_id \"m 2\" contains a space",
        "line 6: converted_at \"yesterday\"",
        "7 lines read, 2 loaded, 1 already loaded, 4 rejected",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in\n{err}");
    }
}
