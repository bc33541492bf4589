//! The real binary: `run`, `import sends`, `migrate` and `run --dry-run`, against a
//! fresh database per test and the simulator on loopback.

mod common;

use common::*;
use otp_reconcile_simulator::{
    DEMO_API_KEY, DEMO_API_SECRET, Faults, SimConfig, SimHandle, Simulator,
};
use sqlx::PgPool;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary with a clean environment pointed at `db` and `sim`.
fn bin(pool: &PgPool, sim: Option<&SimHandle>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
    for var in [
        "PROVIDER_API_KEY",
        "PROVIDER_API_SECRET",
        "PROVIDER_API_SECRET_FILE",
        "PROVIDER_BASE_URL",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("DATABASE_URL", db_url(pool))
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "json");
    if let Some(sim) = sim {
        cmd.env("PROVIDER_BASE_URL", sim.base_url())
            .env("PROVIDER_API_KEY", DEMO_API_KEY)
            .env("PROVIDER_API_SECRET", DEMO_API_SECRET);
    }
    cmd
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn simulator(latency_ms: u64) -> SimHandle {
    let mut config = SimConfig::new(5);
    config.faults = Faults {
        latency_ms,
        ..Faults::default()
    };
    Simulator::start(config).await.unwrap()
}

/// Runs a blocking closure (the binary) without holding up the simulator's runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[sqlx::test]
async fn a_pass_killed_half_way_loses_and_duplicates_nothing(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(3_000, "kill")).await;
    let sim = simulator(10).await;

    let mut first = bin(&pool, Some(&sim))
        .args([
            "run",
            "--concurrency",
            "8",
            "--lease",
            "30s",
            "--request-timeout",
            "10s",
            "--batch-size",
            "100",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let checked: i64 = sqlx::query_scalar("SELECT count(*) FROM sends WHERE attempts > 0")
            .fetch_one(&pool)
            .await
            .unwrap();
        if checked >= 800 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the pass made no progress"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    end_dead_pass_backends(&pool).await;
    let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM send_leases")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(leased > 0, "the kill left sends in flight");

    // The leases expire (on the database's clock); the next pass picks those sends up.
    expire_leases(&pool, "sends").await;
    let mut second = bin(&pool, Some(&sim));
    second.args(["run", "--concurrency", "32"]);
    let out = blocking(move || output(&mut second)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    for send in stored_sends(&pool).await {
        assert_eq!(
            send.attempts, 1,
            "send {} checked once, not lost, not twice",
            send.id
        );
    }
    assert_matches_simulator(&pool, &sim).await;
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(records, 3_000);
}

#[sqlx::test]
async fn refused_credentials_exit_3_after_at_most_concurrency_requests(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(500, "cred")).await;
    let sim = simulator(5).await;
    let mut cmd = bin(&pool, Some(&sim));
    cmd.env("PROVIDER_API_KEY", "wrong-key")
        .args(["run", "--concurrency", "4"]);
    let out = blocking(move || output(&mut cmd)).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("credentials_refused"),
        "{}",
        stderr(&out)
    );
    assert!(sim.stats().total_requests <= 4);
    let counted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sends s
         WHERE s.attempts > 0 OR EXISTS (SELECT 1 FROM send_leases l WHERE l.send_id = s.id)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(counted, 0);
}

#[sqlx::test]
async fn import_reports_each_bad_line_and_loads_the_rest(pool: PgPool) {
    db_with_app(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sends.csv");
    std::fs::write(
        &file,
        "app_id,verification_id,order_id,number,channel,sent_at\n\
         app-test,v1,,+919876543210,sms,2026-01-01T00:00:00Z\n\
         app-test,,,,,2026-01-01T00:00:00Z\n\
         unknown-app,v2,,,,2026-01-01T00:00:00Z\n\
         app-test,v 3,,,,2026-01-01T00:00:00Z\n\
         app-test,v4,,,,not-a-date\n\
         app-test,v5,o5,,call,2026-01-01T08:00:00+08:00\n\
         app-test,v1,,,,2026-01-01T00:00:00Z\n\
         app-test,v6,,,,2026-01-01T00:00:00Z,extra\n\
         \"app-test\",\"v7\",,,,2026-01-01T00:00:00Z\n",
    )
    .unwrap();
    let path = file.to_str().unwrap().to_owned();
    let mut cmd = bin(&pool, None);
    cmd.args(["import", "sends", &path]);
    let out = blocking(move || output(&mut cmd)).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(5), "{err}");
    for expected in [
        "line 3: neither verification_id nor order_id",
        "line 4: unknown app_id \"unknown-app\"",
        "line 5: verification_id \"v 3\" contains a space",
        "line 6: sent_at \"not-a-date\"",
        "line 9: 7 fields, the header has 6",
        "9 lines read, 3 loaded, 1 already loaded, 5 rejected",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in\n{err}");
    }
    let ids: Vec<String> = sqlx::query_scalar("SELECT verification_id FROM sends ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ids, ["v1", "v5", "v7"]);

    // Again: nothing new. From standard input: the same.
    let mut again = bin(&pool, None);
    again
        .args(["import", "sends", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let content = std::fs::read(&file).unwrap();
    let out = blocking(move || {
        let mut child = again.spawn().unwrap();
        child.stdin.take().unwrap().write_all(&content).unwrap();
        child.wait_with_output().unwrap()
    })
    .await;
    assert!(
        stderr(&out).contains("0 loaded, 4 already loaded, 5 rejected"),
        "{}",
        stderr(&out)
    );

    // A header without a required column is a usage error.
    std::fs::write(
        &file,
        "app_id,verification_id,sent_at\napp-test,v9,2026-01-01T00:00:00Z\n",
    )
    .unwrap();
    let mut bad = bin(&pool, None);
    bad.args(["import", "sends", &path]);
    let out = blocking(move || output(&mut bad)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("lacks the column(s) order_id, number, channel"),
        "{}",
        stderr(&out)
    );
}

/// `run` with credentials that are never used: it stops before any call.
async fn run_with_placeholder_credentials(pool: &PgPool) -> Output {
    let mut cmd = bin(pool, None);
    cmd.env("PROVIDER_API_KEY", "k")
        .env("PROVIDER_API_SECRET", "s")
        .args(["run"]);
    blocking(move || output(&mut cmd)).await
}

#[sqlx::test(migrations = false)]
async fn run_refuses_a_schema_it_does_not_know(pool: PgPool) {
    let out = run_with_placeholder_credentials(&pool).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("run `otp-reconcile migrate`"),
        "{}",
        stderr(&out)
    );

    let mut migrate = bin(&pool, None);
    migrate.args(["migrate"]);
    let out = blocking(move || output(&mut migrate)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from the future', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let out = run_with_placeholder_credentials(&pool).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(
        stderr(&out).contains("newer than this binary"),
        "{}",
        stderr(&out)
    );
}

#[sqlx::test]
async fn dry_run_calls_nothing_and_writes_nothing(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(40, "dry")).await;
    let conversions: Vec<_> = (0..5)
        .map(|i| otp_reconcile::db::conversions::NewConversion {
            kind: otp_reconcile::db::conversions::Kind::Otp,
            app_id: APP.into(),
            message_id: format!("dry-v{i}"),
            number: None,
            converted_at: chrono::Utc::now(),
        })
        .collect();
    otp_reconcile::db::conversions::insert(&db, &conversions)
        .await
        .unwrap();
    let sim = simulator(0).await;
    let mut cmd = bin(&pool, Some(&sim));
    cmd.args(["run", "--dry-run", "--rate", "10"]);
    let out = blocking(move || output(&mut cmd)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("pending") && stdout.contains("app-test") && stdout.contains("40"),
        "{stdout}"
    );
    assert!(
        stdout.contains("40 sends due") && stdout.contains("5 conversions to post back"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 conversion-rate windows to post"),
        "{stdout}"
    );
    assert!(
        stdout.contains("45 calls in all")
            && stdout.contains("at --rate 10/s that takes at least 5s"),
        "{stdout}"
    );
    assert_eq!(sim.stats().total_requests, 0);
    let passes: i64 = sqlx::query_scalar("SELECT count(*) FROM passes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(passes, 0);
    assert_eq!(
        count_by_state(&pool).await.get("pending").copied(),
        Some(40)
    );
}

#[sqlx::test]
async fn configuration_errors_exit_2_and_never_show_the_secret(pool: PgPool) {
    let mut plain_http = bin(&pool, None);
    plain_http
        .env("PROVIDER_BASE_URL", "http://api.example.com")
        .env("PROVIDER_API_KEY", "k")
        .env("PROVIDER_API_SECRET", "super-secret-value")
        .args(["run"]);
    let out = blocking(move || output(&mut plain_http)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--allow-insecure-http"),
        "{}",
        stderr(&out)
    );
    assert!(!stderr(&out).contains("super-secret-value"));

    let mut no_secret = bin(&pool, None);
    no_secret.env("PROVIDER_API_KEY", "k").args(["run"]);
    let out = blocking(move || output(&mut no_secret)).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("PROVIDER_API_SECRET"),
        "{}",
        stderr(&out)
    );

    let help = output(
        Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
            .env("DATABASE_URL", "postgres://otp:db-password-42@db/otp")
            .env("PROVIDER_API_KEY", "key-value-43")
            .args(["run", "--help"]),
    );
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--api-secret-file") && !text.contains("--api-secret "),
        "{text}"
    );
    assert!(
        !text.contains("db-password-42") && !text.contains("key-value-43"),
        "{text}"
    );
}
