//! Leases that live as long as the work (issue 9): stalls under 429s and a slow
//! provider fetch and post nothing twice; a request is never sent on a lease that may
//! run out first; too-short leases are refused; a pass that loses the database says so
//! and leaves a trace; `run --app-id` keeps to its apps. Real PostgreSQL, the simulator;
//! time is driven by the simulator's latency and counters and the database's clock.

mod common;

use chrono::Utc;
use common::*;
use otp_reconcile::db::apps;
use otp_reconcile::db::conversions::{self, Kind, NewConversion};
use otp_reconcile::db::sends::NewSend;
use otp_reconcile::pass::{Ended, PassSettings};
use otp_reconcile::rates::{Rules, Window};
use otp_reconcile_simulator::{
    DEMO_API_KEY, DEMO_API_SECRET, Fault, FaultRates, Faults, RecordConfig, SimConfig, SimHandle,
    Simulator,
};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

async fn simulator(faults: Faults) -> SimHandle {
    let mut config = SimConfig::new(31);
    config.records = RecordConfig {
        not_found_share: 0.0,
        sending_share: 0.0,
        ..RecordConfig::default()
    };
    config.faults = faults;
    Simulator::start(config).await.unwrap()
}

fn bin(pool: &PgPool, sim: &SimHandle) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
    cmd.env_remove("PROVIDER_API_SECRET_FILE")
        .env("DATABASE_URL", db_url(pool))
        .env("PROVIDER_BASE_URL", sim.base_url())
        .env("PROVIDER_API_KEY", DEMO_API_KEY)
        .env("PROVIDER_API_SECRET", DEMO_API_SECRET)
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "json");
    cmd
}

async fn run_bin(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn conversions_for(n: usize, prefix: &str) -> Vec<NewConversion> {
    (0..n)
        .map(|i| NewConversion {
            kind: if i % 5 == 4 { Kind::Sms } else { Kind::Otp },
            app_id: APP.into(),
            message_id: format!("{prefix}{i}"),
            number: Some(format!("91{:010}", 8_000_000_000u64 + i as u64)),
            converted_at: Utc::now() - chrono::Duration::minutes(5),
        })
        .collect()
}

fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Issue 9: `--lease 2s --batch-size 50 --concurrency 32` with 30% HTTP 429. Items wait
/// behind the 429 pauses far longer than a lease; renewed, they are never claimed twice.
#[sqlx::test]
async fn a_stall_behind_429s_fetches_no_id_twice(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(300, "stall")).await;
    let sim = simulator(Faults {
        retry_after_secs: Some(1),
        rates: FaultRates {
            http_429: 0.3,
            ..FaultRates::default()
        },
        ..Faults::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.json");
    let mut cmd = bin(&pool, &sim);
    cmd.args([
        "run",
        "--no-rates",
        "--no-postbacks",
        "--lease",
        "2s",
        "--request-timeout",
        "500ms",
        "--batch-size",
        "50",
        "--concurrency",
        "32",
        "--summary-json",
    ])
    .arg(&summary);
    let out = run_bin(cmd).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("ON CONFLICT"), "{err}");
    let stats = sim.stats();
    let limited: u64 = stats
        .answers
        .values()
        .filter_map(|a| a.get("http_429"))
        .sum();
    assert!(limited > 50, "{limited} 429s injected");
    assert!(
        stats.duplicates.final_fetches.is_empty(),
        "fetched twice: {:?}",
        stats.duplicates.final_fetches
    );
    // Every send checked exactly once, none left leased.
    for send in stored_sends(&pool).await {
        assert_eq!(send.attempts, 1, "send {}", send.id);
        assert!(send.lease_token.is_none());
    }
    assert_eq!(read_json(&summary)["lease_lost"], 0);
}

/// Issue 9: 50 conversions against a provider that takes 3 s per postback, more than
/// the whole lease can cover without renewals: nothing acknowledged twice, the summary's
/// possibly duplicated is the ledger's, nothing acknowledged is left pending.
#[sqlx::test]
async fn slow_postbacks_are_acknowledged_once_and_the_ledger_agrees(pool: PgPool) {
    let db = db_with_app(&pool).await;
    let rows = conversions_for(50, "slow");
    conversions::insert(&db, &rows).await.unwrap();
    let sim = simulator(Faults {
        latency_ms: 3_000,
        ..Faults::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let summary_path = dir.path().join("summary.json");
    let mut cmd = bin(&pool, &sim);
    // 7 rounds of 3 s: the pass outlives its 12 s leases several times over.
    cmd.args([
        "run",
        "--no-rates",
        "--lease",
        "12s",
        "--request-timeout",
        "4s",
        "--concurrency",
        "8",
        "--summary-json",
    ])
    .arg(&summary_path);
    let out = run_bin(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary = read_json(&summary_path);
    let stats = sim.stats();
    assert!(
        stats.duplicates.postbacks.is_empty(),
        "acknowledged twice: {:?}",
        stats.duplicates.postbacks
    );
    let (sent, in_doubt): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'sent'),
                count(*) FILTER (WHERE state = 'sent' AND in_doubt)
         FROM conversions",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(summary["conversions"]["possibly_duplicated"], in_doubt);
    assert_eq!(summary["conversions"]["sent"], sent);
    assert_eq!(sent, 50);
    for c in &rows {
        let key = format!("{}:{}", c.kind.as_str(), c.message_id);
        assert_eq!(stats.postbacks[&key].acknowledged, 1, "{key}");
    }
}

/// Issue 9.2: with no renewal, a retry that would be sent after the lease has less than
/// the request timeout left is not sent: the conversion is released, and posted once
/// by a later claim. The simulator's latency makes the first answer come after that
/// point, however fast the machine.
#[sqlx::test]
async fn a_retry_is_never_sent_on_a_lease_that_may_run_out(pool: PgPool) {
    let db = db_with_app(&pool).await;
    let rows = conversions_for(4, "short");
    conversions::insert(&db, &rows).await.unwrap();
    let sim = simulator(Faults {
        latency_ms: 800,
        ..Faults::default()
    })
    .await;
    for c in &rows {
        let key = format!("{}:{}", c.kind.as_str(), c.message_id);
        sim.script(Some(&key), [Fault::Http(503), Fault::Ok]);
    }
    // A 2 s lease, never renewed; requests time out after 1 s. The 503 comes at least
    // 0.8 s after the claim and the retry waits at least 0.5 s more: it would have less
    // than 1 s left, so it is not sent.
    let client = client(&sim, Duration::from_secs(1));
    let mut settings = PassSettings {
        rates: None,
        lease: Duration::from_secs(2),
        renew_every: Some(Duration::from_secs(3_600)),
        ..quick_settings(4)
    };
    settings.retry.min_delay = Duration::from_millis(500);
    settings.retry.max_delay = Duration::from_millis(600);
    let first = run_pass(&db, &client, &settings).await;
    assert_eq!(first.ended, Ended::Done);
    assert_eq!((first.conversions.released, first.conversions.sent), (4, 0));
    // Released, not sent: the next pass posts each once.
    let summary = run_pass(&db, &client, &settings).await;
    let stats = sim.stats();
    for c in &rows {
        let key = format!("{}:{}", c.kind.as_str(), c.message_id);
        let requests = sim.requests(Some(&key));
        assert_eq!(
            requests.len(),
            2,
            "{key}: the 503, then one post after a new claim"
        );
        assert_eq!(stats.postbacks[&key].acknowledged, 1, "{key}");
    }
    assert_eq!(summary.conversions.sent, 4);
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM conversions WHERE state <> 'sent'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(pending, 0);
}

/// Sends over the last days, settled by a first pass, and a conversion for every third.
async fn closed_windows(db: &otp_reconcile::db::Db, n: usize) {
    let now = Utc::now();
    let sends: Vec<NewSend> = (0..n)
        .map(|i| NewSend {
            app_id: APP.into(),
            verification_id: Some(format!("w{i}")),
            order_id: None,
            number: Some(format!("91{:010}", 7_000_000_000u64 + i as u64)),
            channel: None,
            sent_at: now - chrono::Duration::minutes(120 + (i as i64 * 5 * 24 * 60) / n as i64),
        })
        .collect();
    insert_sends(db, &sends).await;
    let conv: Vec<NewConversion> = (0..n)
        .step_by(3)
        .map(|i| NewConversion {
            kind: Kind::Otp,
            app_id: APP.into(),
            message_id: format!("w{i}"),
            number: None,
            converted_at: now,
        })
        .collect();
    conversions::insert(db, &conv).await.unwrap();
}

/// Issue 9: under 8% faults with 2 s leases, no conversion-rate window is posted twice.
#[sqlx::test]
async fn rate_windows_under_faults_and_short_leases_are_posted_once(pool: PgPool) {
    let db = db_with_app(&pool).await;
    closed_windows(&db, 1_500).await;
    let sim = simulator(Faults::default()).await;
    let client = client(&sim, Duration::from_millis(600));
    // Settle the sends first (no faults), then post the rates under faults.
    let records_only = PassSettings {
        rates: None,
        postbacks: false,
        ..quick_settings(32)
    };
    run_pass(&db, &client, &records_only).await;
    sim.set_faults(Faults {
        stall_ms: Some(1_000),
        rates: FaultRates {
            http_500: 0.02,
            http_503: 0.02,
            drop: 0.02,
            malformed: 0.01,
            stall: 0.01,
            ..FaultRates::default()
        },
        ..Faults::default()
    });
    let settings = PassSettings {
        lease: Duration::from_secs(2),
        postbacks: false,
        rates: Some(Rules {
            window: Window::Hour,
            ..Rules::default()
        }),
        ..quick_settings(16)
    };
    let summary = run_pass(&db, &client, &settings).await;
    assert_eq!(summary.ended, Ended::Done);
    let posted = summary.rates.sent;
    let stats = sim.stats();
    assert!(
        stats.backfill_rates.len() > 20,
        "{}",
        stats.backfill_rates.len()
    );
    let faults: u64 = ["http_500", "http_503", "drop", "malformed", "stall"]
        .iter()
        .map(|f| stats.answered("backfill_rate", f))
        .sum();
    assert!(faults > 0, "faults were injected");
    // A body does not name its window (the simulator's duplicate list mixes windows
    // with equal numbers): the acknowledged posts, counted per (app, mcc, numbers),
    // against the windows the ledger has as sent: once each, unless the ledger says an
    // attempt's outcome was unknown.
    let mut acked: BTreeMap<(String, i64, i64, i64), u32> = BTreeMap::new();
    for post in stats.backfill_rates.iter().filter(|p| p.answer == "0") {
        let b = &post.body;
        let n = |k: &str| b[k].as_str().unwrap().parse::<i64>().unwrap();
        let key = (
            b["appId"].as_str().unwrap().to_owned(),
            n("mcc"),
            n("backfillNumber"),
            n("backfillCardinalNumber"),
        );
        *acked.entry(key).or_default() += 1;
    }
    // Per (app, mcc, numbers): windows sent, and attempts of windows in doubt (a request
    // that timed out may have been applied: the ledger says so).
    let mut sent: BTreeMap<(String, i64, i64, i64), u32> = BTreeMap::new();
    let mut doubt: BTreeMap<(String, i64, i64, i64), u32> = BTreeMap::new();
    let rows: Vec<(String, i64, i64, i64, String, bool, i32)> = sqlx::query_as(
        "SELECT app_id, mcc, converted, sent, state, in_doubt, attempts FROM conversion_rates",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for (app, mcc, converted, n, state, in_doubt, attempts) in rows {
        let key = (app, mcc, converted, n);
        if state == "sent" {
            *sent.entry(key.clone()).or_default() += 1;
        }
        if in_doubt {
            *doubt.entry(key).or_default() += attempts.max(1) as u32;
        }
    }
    for (key, n) in &acked {
        let sent = sent.get(key).copied().unwrap_or(0);
        let doubt = doubt.get(key).copied().unwrap_or(0);
        if doubt == 0 {
            assert_eq!(
                *n, sent,
                "{key:?}: acknowledged {n} times, {sent} windows sent"
            );
        } else {
            assert!(
                *n <= sent + doubt,
                "{key:?}: {n} acks, {sent} sent, {doubt} in doubt"
            );
        }
    }
    for (key, n) in &sent {
        assert!(
            acked.get(key).copied().unwrap_or(0) >= *n,
            "{key:?}: sent without an ack"
        );
    }
    assert_eq!(sent.values().sum::<u32>() as u64, posted);
}

/// Issue 9.3: a zero lease, or one shorter than three request timeouts, is refused
/// before anything is claimed.
#[sqlx::test]
async fn too_short_leases_are_refused_with_exit_2(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(5, "refused")).await;
    let sim = simulator(Faults::default()).await;
    for (args, expected) in [
        (vec!["run", "--lease", "0s"], "--lease must be positive"),
        // The issue's own stall command, with the default 15 s request timeout.
        (
            vec!["run", "--lease", "1s", "--concurrency", "8"],
            "at least 3 times --request-timeout (15s), that is 45s",
        ),
        (
            vec!["run", "--lease", "2s", "--request-timeout", "1s"],
            "--lease 2s is too short",
        ),
    ] {
        let mut cmd = bin(&pool, &sim);
        cmd.args(&args);
        let out = run_bin(cmd).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(sim.stats().total_requests, 0);
    let touched: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sends s
         WHERE s.attempts > 0 OR EXISTS (SELECT 1 FROM send_leases l WHERE l.send_id = s.id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(touched, 0);
    // Three request timeouts exactly is enough.
    let mut cmd = bin(&pool, &sim);
    cmd.args(["run", "--lease", "3s", "--request-timeout", "1s"]);
    let out = run_bin(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Issue 9.6: the database lost mid-pass (its connections terminated while it waits on
/// a lock, after the simulator has answered 200 requests): exit 4, the cause on stderr
/// and in the summary JSON, and `passes.error` holds the cause chain.
#[sqlx::test]
async fn a_pass_that_loses_the_database_says_so_and_records_why(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(3_000, "lost")).await;
    let sim = simulator(Faults {
        latency_ms: 5,
        ..Faults::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let summary_path = dir.path().join("summary.json");
    let mut cmd = bin(&pool, &sim);
    cmd.args([
        "run",
        "--concurrency",
        "8",
        "--batch-size",
        "100",
        "--summary-json",
    ])
    .arg(&summary_path)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    until_requests(&sim, 200).await;
    // Hold every write to sends; terminate the pass's connections as they wait on it.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE sends IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'otp-reconcile'
               AND wait_event_type = 'Lock'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        if !killed.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pass never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    blocker.rollback().await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "{err}");
    assert!(err.contains("the database failed mid-pass"), "{err}");
    let summary = read_json(&summary_path);
    assert_eq!(summary["ended"], "failed");
    let error = summary["error"].as_str().unwrap();
    // The cause chain, not just "database error".
    assert!(error.starts_with("database error: "), "{error}");
    assert!(error.len() > "database error: ".len() + 10, "{error}");
    assert!(err.contains(error), "{err}");
    let (outcome, recorded): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, error FROM passes ORDER BY id DESC LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(outcome, "failed");
    assert_eq!(recorded.as_deref(), Some(error));
}

/// Issue 9.6: a pass killed mid-way leaves its row `running`; once its heartbeat is
/// stale (on the database's clock) `status` shows it abandoned and does not count its
/// leases as held by a running pass.
#[sqlx::test]
async fn a_pass_whose_heartbeat_stopped_shows_as_abandoned(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(2_000, "dead")).await;
    let sim = simulator(Faults {
        latency_ms: 20,
        ..Faults::default()
    })
    .await;
    let mut cmd = bin(&pool, &sim);
    cmd.args(["run", "--concurrency", "8", "--batch-size", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    until_requests(&sim, 100).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    end_dead_pass_backends(&pool).await;
    let status = |pool: PgPool| async move {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
        cmd.env("DATABASE_URL", db_url(&pool))
            .args(["status", "--json"]);
        let out = run_bin(cmd).await;
        assert_eq!(out.status.code(), Some(0));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    // Its heartbeat is fresh: it still counts as running.
    let before = status(pool.clone()).await;
    assert_eq!(before["last_passes"][0]["outcome"], "running");
    assert!(before["leased"].as_i64().unwrap() > 0, "{before}");
    sqlx::query("UPDATE passes SET heartbeat_at = now() - interval '1 hour'")
        .execute(&pool)
        .await
        .unwrap();
    let after = status(pool.clone()).await;
    assert_eq!(after["last_passes"][0]["outcome"], "abandoned");
    assert_eq!(after["leased"], 0);
    assert_eq!(after["abandoned_leases"], before["leased"]);
}

/// Issue 13.3: `run --app-id` claims only those apps' sends and conversions and
/// computes only their rates, beside a concurrent full pass; `--dry-run` shows the
/// same scope.
#[sqlx::test]
async fn run_app_id_keeps_to_its_apps_beside_a_full_pass(pool: PgPool) {
    let db = db_with_app(&pool).await;
    apps::add(&db, "app-other", None).await.unwrap();
    let mut sends = new_sends(600, "scope");
    for (i, s) in sends.iter_mut().enumerate() {
        if i % 2 == 0 {
            s.app_id = "app-other".into();
        }
    }
    insert_sends(&db, &sends).await;
    let mut conv = conversions_for(40, "scopec");
    for (i, c) in conv.iter_mut().enumerate() {
        if i % 2 == 0 {
            c.app_id = "app-other".into();
        }
    }
    conversions::insert(&db, &conv).await.unwrap();
    let sim = simulator(Faults {
        latency_ms: 2,
        ..Faults::default()
    })
    .await;

    let mut dry = bin(&pool, &sim);
    dry.args(["run", "--dry-run", "--app-id", "app-other"]);
    let out = run_bin(dry).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(text.contains("apps: app-other only"), "{text}");
    assert!(text.contains("300 sends due"), "{text}");
    assert!(text.contains("20 conversions to post back"), "{text}");
    assert!(!text.contains(APP), "{text}");

    // Alone: only app-other's sends and conversions.
    let mut scoped = bin(&pool, &sim);
    scoped.args(["run", "--app-id", "app-other", "--batch-size", "50"]);
    let only = tokio::task::spawn_blocking(move || scoped.output().unwrap());
    let out = only.await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let by_app: Vec<(String, i64)> = sqlx::query_as(
        "SELECT app_id, count(*) FILTER (WHERE attempts > 0) FROM sends GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(by_app, [("app-other".to_owned(), 300), (APP.to_owned(), 0)]);
    let posted: Vec<(String, String)> =
        sqlx::query_as("SELECT app_id, state FROM conversions GROUP BY 1, 2 ORDER BY 1, 2")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        posted,
        [
            ("app-other".to_owned(), "sent".to_owned()),
            (APP.to_owned(), "pending".to_owned())
        ]
    );

    // Beside a concurrent full pass: both apps due again, two passes at once; every
    // send is checked once, nothing fetched twice.
    sqlx::query("UPDATE sends SET state = 'recheck', next_check_at = now() - interval '1 s'")
        .execute(&pool)
        .await
        .unwrap();
    let fetched_before = sim.stats();
    let before: std::collections::BTreeMap<String, u64> = fetched_before
        .fetches
        .iter()
        .map(|(k, f)| (k.clone(), f.answered))
        .collect();
    let mut full = bin(&pool, &sim);
    full.args(["run", "--batch-size", "20", "--concurrency", "4"]);
    let mut scoped = bin(&pool, &sim);
    scoped.args([
        "run",
        "--app-id",
        "app-other",
        "--batch-size",
        "20",
        "--concurrency",
        "4",
    ]);
    let (a, b) = tokio::join!(run_bin(full), run_bin(scoped));
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(b.status.code(), Some(0), "{}", stderr(&b));
    let stats = sim.stats();
    for send in stored_sends(&pool).await {
        let key = send.lookup().key();
        let now = stats.fetches.get(&key).map_or(0, |f| f.answered);
        let earlier = before.get(&key).copied().unwrap_or(0);
        let expected = if send.app_id == "app-other" { 2 } else { 1 };
        assert_eq!(send.attempts, expected, "send {}", send.id);
        assert_eq!(
            now - earlier,
            1,
            "send {} fetched once by the two passes",
            send.id
        );
    }
    assert!(stats.duplicates.postbacks.is_empty());
}
