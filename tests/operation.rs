//! Production operation: SIGTERM and the grace period, sharding, logs that never carry
//! the secret or a Sign. (Metrics pushed to a real Pushgateway: `tests/pushgateway.rs`.)
//! Real PostgreSQL (a database per test), the simulator, and the binary.

mod common;

use common::*;
use otp_reconcile::pass::{self, Ended};
use otp_reconcile_simulator::{Fault, Faults, RecordConfig, SimConfig, SimHandle, Simulator};
use secrecy::SecretString;
use sqlx::PgPool;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const KEY: &str = "op-key";
const SECRET: &str = "s3cr3t-that-must-never-be-logged-7731";

async fn simulator(latency_ms: u64) -> SimHandle {
    let mut config = SimConfig::new(41);
    config.api_key = KEY.into();
    config.api_secret = SecretString::from(SECRET);
    config.records = RecordConfig {
        sending_share: 0.0,
        not_found_share: 0.0,
        ..RecordConfig::default()
    };
    config.faults = Faults {
        latency_ms,
        ..Faults::default()
    };
    Simulator::start(config).await.unwrap()
}

fn bin(pool: &PgPool, sim: &SimHandle) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
    cmd.env_remove("PROVIDER_API_SECRET_FILE")
        .env_remove("JOB_COMPLETION_INDEX")
        .env("DATABASE_URL", db_url(pool))
        .env("PROVIDER_BASE_URL", sim.base_url())
        .env("PROVIDER_API_KEY", KEY)
        .env("PROVIDER_API_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "json");
    cmd
}

async fn wait(mut child: Child) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        let _ = &mut child;
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap()
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn leased(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM send_leases")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn sigterm_exits_130_within_the_grace_releasing_every_lease_and_the_next_pass_finishes(
    pool: PgPool,
) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(20_000, "term")).await;
    let sim = simulator(200).await;
    let child = bin(&pool, &sim)
        // A grace far longer than an answer (200 ms), so "within the grace" never races
        // a busy machine, yet far shorter than the backlog (minutes).
        .args(["run", "--concurrency", "32", "--grace", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Let it work a little, with requests in flight.
    until_requests(&sim, 100).await;
    sigterm(&child);
    let signalled = Instant::now();
    let out = wait(child).await;
    let took = signalled.elapsed();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took < Duration::from_secs(60),
        "exited {took:?} after SIGTERM, grace 60s"
    );
    assert_eq!(leased(&pool).await, 0, "no lease is left held");
    let (outcome,): (String,) = sqlx::query_as("SELECT outcome FROM passes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(outcome, "interrupted");
    let checked: i64 = sqlx::query_scalar("SELECT count(*) FROM sends WHERE attempts > 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(checked > 0 && checked < 20_000, "{checked}");

    // The next pass completes the rest, each send checked once in all.
    sim.set_faults(Faults::default());
    let mut next = bin(&pool, &sim);
    next.args(["run", "--concurrency", "64"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = wait(next.spawn().unwrap()).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let counts: Vec<(i32, i64)> = sqlx::query_as("SELECT attempts, count(*) FROM sends GROUP BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(counts, [(1, 20_000)]);
    assert!(sim.stats().duplicates.final_fetches.is_empty());
}

#[sqlx::test]
async fn in_flight_requests_are_abandoned_when_the_grace_runs_out(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(200, "hang")).await;
    // No answer comes in the test's time: the pass is stopped once the simulator has
    // received a request from each of the eight workers, so they are all in flight.
    let sim = simulator(600_000).await;
    let client = client(&sim, Duration::from_secs(60));
    let interrupt = CancellationToken::new();
    let mut settings = quick_settings(8);
    settings.grace = Duration::from_millis(300);
    let stopper = {
        let interrupt = interrupt.clone();
        let sim = &sim;
        async move {
            until_requests(sim, 8).await;
            interrupt.cancel();
        }
    };
    let started = Instant::now();
    let deps = deps(&db, &client, otp_reconcile::clock::system(), interrupt);
    let (summary, ()) = tokio::join!(pass::run(deps, &settings), stopper);
    let summary = summary.unwrap();
    // Not waiting for the answers: they would take ten minutes.
    assert!(
        started.elapsed() < Duration::from_secs(300),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(summary.ended, Ended::Interrupted);
    assert_eq!(summary.checked, 0);
    assert_eq!(summary.released, summary.claimed);
    assert_eq!(leased(&pool).await, 0);
    let counted: i64 = sqlx::query_scalar("SELECT count(*) FROM sends WHERE attempts > 0")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(counted, 0);
}

#[sqlx::test]
async fn two_shards_run_together_process_every_send_once_each_within_its_share(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(600, "shard")).await;
    let sim = simulator(2).await;
    let dir = tempfile::tempdir().unwrap();
    let summary = |i: usize| dir.path().join(format!("shard-{i}.json"));
    // One as --shard I/N, the other as an Indexed Job's pod would run it.
    let mut first = bin(&pool, &sim);
    first
        .args([
            "run",
            "--shard",
            "0/2",
            "--rate",
            "100",
            "--concurrency",
            "8",
            "--summary-json",
        ])
        .arg(summary(0));
    let mut second = bin(&pool, &sim);
    second
        .env("JOB_COMPLETION_INDEX", "1")
        .args([
            "run",
            "--shards",
            "2",
            "--rate",
            "100",
            "--concurrency",
            "8",
            "--summary-json",
        ])
        .arg(summary(1));
    let (a, b) = tokio::join!(
        wait(
            first
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        ),
        wait(
            second
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        ),
    );
    assert_eq!(
        a.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
    assert_eq!(
        b.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );

    let stats = sim.stats();
    assert_eq!(stats.fetches.len(), 600);
    assert!(
        stats.fetches.values().all(|f| f.requests == 1),
        "every send fetched once"
    );
    let summaries: Vec<serde_json::Value> = (0..2)
        .map(|i| serde_json::from_slice(&std::fs::read(summary(i)).unwrap()).unwrap())
        .collect();
    let claimed: Vec<u64> = summaries
        .iter()
        .map(|s| s["claimed"].as_u64().unwrap())
        .collect();
    assert_eq!(claimed.iter().sum::<u64>(), 600);
    assert!(
        claimed.iter().all(|c| (200..400).contains(c)),
        "{claimed:?}"
    );
    for s in &summaries {
        let rate = s["requests_per_sec"].as_f64().unwrap();
        assert!(
            rate <= 52.5,
            "a shard ran at {rate}/s, above its share of 50/s"
        );
        assert!(rate >= 35.0, "a shard ran at {rate}/s, far below its share");
    }
    let (settled,): (i64,) = sqlx::query_as("SELECT count(*) FROM sends WHERE state = 'settled'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(settled, 600);
}

#[sqlx::test]
async fn debug_logs_carry_ids_but_never_the_secret_or_a_sign(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(50, "logs")).await;
    let sim = simulator(1).await;
    // Errors and retries too: a stale timestamp, a 500, a refusal.
    sim.script(Some("logs-v0"), [Fault::Status(-16)]);
    sim.script(Some("logs-v1"), [Fault::Http(500)]);
    sim.script(Some("logs-v2"), [Fault::Status(-22)]);
    let mut cmd = bin(&pool, &sim);
    cmd.env("RUST_LOG", "debug")
        .args(["run", "--concurrency", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let out = wait(cmd.spawn().unwrap()).await;
    assert_eq!(out.status.code(), Some(0));
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.lines().count() > 100, "debug logs were captured");
    assert!(!logs.contains(SECRET), "the API secret is in the logs");
    let signs: Vec<String> = sim
        .requests(None)
        .into_iter()
        .filter_map(|r| r.sign)
        .collect();
    assert!(signs.len() >= 50);
    for sign in &signs {
        assert!(
            !logs.contains(sign.as_str()),
            "a Sign value is in the logs: {sign}"
        );
    }
    // JSON lines, with the pass, batch and request spans and their ids.
    for line in logs.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    for needle in [
        "\"pass_id\"",
        "\"verification_id\":\"logs-v",
        "\"name\":\"provider.request\"",
        "\"name\":\"batch\"",
        "pass summary",
    ] {
        assert!(logs.contains(needle), "no {needle} in the logs");
    }
}

/// A Postgres on this host is spoken to without TLS unless the URL asks for a mode: on
/// loopback TLS protects nothing and cost both ends CPU for every batch. Asked, the
/// URL's mode holds (`prefer` encrypts when the server offers TLS).
#[sqlx::test]
async fn a_postgres_on_this_host_is_spoken_to_without_tls_unless_the_url_asks(pool: PgPool) {
    let url = db_url(&pool);
    assert!(
        url.contains("@127.0.0.1") || url.contains("@localhost"),
        "the tests' Postgres is on this host: {url}"
    );
    let ssl = |db: otp_reconcile::db::Db| async move {
        sqlx::query_scalar::<_, bool>("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(db.pool())
            .await
            .unwrap()
    };
    let plain = otp_reconcile::db::connect(&url, 1).await.unwrap();
    assert!(!ssl(plain).await);
    let offered: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(&pool)
        .await
        .unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let asked = otp_reconcile::db::connect(&format!("{url}{sep}sslmode=prefer"), 1)
        .await
        .unwrap();
    assert_eq!(ssl(asked).await, offered == "on");
}
