//! Logs a person can read: slow statements on one line by name, no PostgreSQL NOTICE
//! that says nothing new, and `demo` runs that end without a warning. Real PostgreSQL
//! (a database per test), the binary and the in-process subscriber.

mod common;

use common::*;
use otp_reconcile::db;
use sqlx::PgPool;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};

/// A writer the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A statement slower than the threshold (PostgreSQL sleeps past it: it is slow on any
/// machine), through a pool the job opens, logged by the job's own subscriber.
async fn slow_statement_logs(pool: &PgPool, json: bool) -> String {
    let captured = Captured::default();
    let subscriber = otp_reconcile::telemetry::subscriber(json, Some("info"), captured.clone());
    let _guard = tracing::subscriber::set_default(subscriber);
    let db = db::connect(&db_url(pool), 1).await.unwrap();
    otp_reconcile::db::apps::add(&db, "app-logs", None)
        .await
        .unwrap();
    let slow = db::SLOW_STATEMENT.as_secs_f64() + 0.2;
    let (one, _): (i32, String) = sqlx::query_as(
        "SELECT 1 AS one, 'a secret-looking literal' AS words
         FROM apps, pg_sleep($1)
         LIMIT 1",
    )
    .bind(slow)
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(one, 1);
    // A fast one: nothing at INFO.
    sqlx::query("SELECT 2").execute(db.pool()).await.unwrap();
    db.pool().close().await;
    captured.text()
}

// One thread: the subscriber set for this test sees every event of the query.
#[sqlx::test]
async fn a_slow_statement_is_one_line_with_its_name_and_time_not_its_text(pool: PgPool) {
    let logs = slow_statement_logs(&pool, false).await;
    // Every line is a one-line slow-statement warning (on a loaded machine the setup's
    // own statements may pass the threshold too); the sleeping SELECT is exactly one.
    for line in logs.lines() {
        assert!(line.contains(" WARN slow statement statement="), "{logs}");
    }
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("statement=\"SELECT apps\""))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let line = lines[0];
    assert!(
        line.contains(" WARN slow statement statement=\"SELECT apps\""),
        "{line}"
    );
    assert!(
        !line.contains("pg_sleep") && !line.contains("secret-looking"),
        "{line}"
    );
    let elapsed: f64 = line
        .split("elapsed_ms=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        elapsed >= db::SLOW_STATEMENT.as_secs_f64() * 1000.0,
        "{line}"
    );
    assert!(line.contains("rows_returned=1"), "{line}");

    let logs = slow_statement_logs(&pool, true).await;
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for event in &events {
        assert_eq!(event["fields"]["message"], "slow statement", "{logs}");
    }
    let lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"statement\":\"SELECT apps\""))
        .collect();
    assert_eq!(lines.len(), 1, "{logs}");
    let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(event["level"], "WARN");
    assert_eq!(event["target"], "sqlx::query");
    assert_eq!(event["fields"]["message"], "slow statement");
    assert_eq!(event["fields"]["statement"], "SELECT apps");
    assert!(event["fields"]["elapsed_ms"].as_f64().unwrap() >= 1000.0);
    assert!(!lines[0].contains("pg_sleep"), "{}", lines[0]);
}

fn bin(pool: &PgPool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
    cmd.env_remove("RUST_LOG")
        .env_remove("PUSHGATEWAY_URL")
        .env("DATABASE_URL", db_url(pool))
        .env("DEMO_DATABASE_URL", db_url(pool))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[sqlx::test]
async fn migrate_on_a_migrated_database_shows_no_notice(pool: PgPool) {
    for format in ["json", "pretty"] {
        let mut cmd = bin(&pool);
        cmd.env("LOG_FORMAT", format).arg("migrate");
        let out = output(cmd).await;
        let logs = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{logs}");
        assert!(!logs.contains("already exists"), "{format}: {logs}");
    }
}

#[sqlx::test]
async fn every_demo_run_ends_without_a_warning(pool: PgPool) {
    for run in 1..=3 {
        let mut cmd = bin(&pool);
        cmd.env("LOG_FORMAT", "pretty")
            .args(["demo", "--sends", "600", "--latency-ms", "0"]);
        let out = output(cmd).await;
        let logs = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "run {run}: {logs}");
        // No warning, save a statement slower than the threshold: that one says the
        // machine is loaded (a busy test machine can make a batch write take over a
        // second), not that the demo did something its user cannot fix.
        let warnings: Vec<&str> = logs
            .lines()
            .filter(|l| l.contains("WARN") && !l.contains(" WARN slow statement statement="))
            .collect();
        assert!(warnings.is_empty(), "run {run}: {warnings:?}\n{logs}");
        assert!(!logs.contains("already exists"), "run {run}: {logs}");
        assert!(logs.contains("imported 600 sends"), "run {run}: {logs}");
        if run == 1 {
            // The demo still shows the whole job: rates posted for the closed windows.
            let posted: i64 =
                sqlx::query_scalar("SELECT count(*) FROM conversion_rates WHERE state = 'sent'")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert!(posted > 0, "no rate posted by the first demo run");
        }
    }
    let changed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM conversion_rates
         WHERE state = 'sent' AND (converted, sent) IS DISTINCT FROM (posted_converted, posted_sent)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(changed, 0, "no posted rate changed after posting");
}
