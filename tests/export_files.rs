//! `export --out`: what is left on disk when an export is stopped, killed, limited or
//! pointed at a missing directory. The real binary against real PostgreSQL (a database
//! per test). An export is held at a known point by a table lock the test takes: it has
//! created its temporary file and waits on its query, for as long as the test wants.

mod common;

use common::*;
use sqlx::{PgPool, Postgres, Transaction};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

async fn with_attempts(pool: &PgPool) {
    db_with_app(pool).await;
    sqlx::query(
        "INSERT INTO sends (app_id, verification_id, sent_at, state)
         SELECT 'app-test', 'file-' || g, timestamptz '2026-10-01' + g * interval '1 minute', 'settled'
         FROM generate_series(1, 50) g",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO attempts (send_id, channel, position, status, amount, settle_pay, settle_currency)
         SELECT id, 'sms', 1, 0, 0.0350, 0.03283, 'EUR' FROM sends",
    )
    .execute(pool)
    .await
    .unwrap();
}

fn export(pool: &PgPool, out: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
    cmd.env("DATABASE_URL", db_url(pool))
        .env("RUST_LOG", "info")
        .args([
            "export",
            "--from",
            "2026-09-01",
            "--to",
            "2027-01-01",
            "--out",
        ])
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Holds the attempts table: an export's query waits until the transaction ends.
async fn hold_attempts(pool: &PgPool) -> Transaction<'static, Postgres> {
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

fn files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn temps(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// Waits until `dir` holds `n` temporary files (the exports have started writing), and
/// until the exports are waiting on the held table. Fails if one exits first.
async fn started(pool: &PgPool, dir: &Path, children: &mut [&mut Child], n: usize) -> Vec<String> {
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let since = Instant::now();
    loop {
        for child in children.iter_mut() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "the export ended before it was stopped"
            );
        }
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'otp-reconcile' AND wait_event_type = 'Lock'",
        )
        .bind(&database)
        .fetch_one(pool)
        .await
        .unwrap();
        let temps = temps(dir);
        if temps.len() == n && waiting == n as i64 {
            return temps;
        }
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "the exports never started: {temps:?}, {waiting} waiting"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait(child: Child) -> Output {
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[sqlx::test]
async fn sigterm_or_sigint_during_an_export_exits_130_and_leaves_nothing(pool: PgPool) {
    with_attempts(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("costs.csv");
    for signal in ["TERM", "INT"] {
        let held = hold_attempts(&pool).await;
        let mut child = export(&pool, &out).spawn().unwrap();
        let temps = started(&pool, dir.path(), &mut [&mut child], 1).await;
        assert!(temps[0].starts_with(".costs.csv."), "{temps:?}");
        kill(&child, signal);
        let output = wait(child).await;
        assert_eq!(
            output.status.code(),
            Some(130),
            "SIG{signal}: {}",
            stderr(&output)
        );
        assert!(stderr(&output).contains("stopped by a signal"));
        assert_eq!(files(dir.path()), Vec::<String>::new(), "SIG{signal}");
        held.rollback().await.unwrap();
    }
}

#[sqlx::test]
async fn a_killed_exports_temporary_file_is_removed_by_the_next_export(pool: PgPool) {
    with_attempts(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("costs.csv");
    let held = hold_attempts(&pool).await;
    let mut child = export(&pool, &out).spawn().unwrap();
    let stale = started(&pool, dir.path(), &mut [&mut child], 1).await;
    kill(&child, "KILL");
    let output = wait(child).await;
    assert_eq!(output.status.code(), None, "killed");
    assert_eq!(temps(dir.path()), stale, "SIGKILL leaves the file behind");
    held.rollback().await.unwrap();

    let output = export(&pool, &out).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("removed a temporary file an interrupted export left"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        files(dir.path()),
        vec!["costs.csv".to_owned(), "costs.csv.manifest.json".to_owned()]
    );
    let text = std::fs::read_to_string(&out).unwrap();
    assert_eq!(text.lines().count(), 51, "a header and 50 attempts");
}

#[sqlx::test]
async fn two_exports_to_one_file_never_share_a_temporary_file(pool: PgPool) {
    with_attempts(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("costs.csv");
    let held = hold_attempts(&pool).await;
    let mut first = export(&pool, &out).spawn().unwrap();
    started(&pool, dir.path(), &mut [&mut first], 1).await;
    // The second export finds the first's file held: it keeps it and makes its own.
    let mut second = export(&pool, &out).spawn().unwrap();
    let both = started(&pool, dir.path(), &mut [&mut first, &mut second], 2).await;
    assert_ne!(both[0], both[1]);
    held.rollback().await.unwrap();
    for child in [first, second] {
        let output = wait(child).await;
        assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    }
    assert_eq!(
        files(dir.path()),
        vec!["costs.csv".to_owned(), "costs.csv.manifest.json".to_owned()]
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 51);
}

#[sqlx::test]
async fn a_missing_directory_exits_2_and_says_so(pool: PgPool) {
    with_attempts(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let out: PathBuf = dir.path().join("no-such-dir").join("costs.csv");
    let output = export(&pool, &out).output().unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains(&format!(
            "the directory {} does not exist",
            dir.path().join("no-such-dir").display()
        )),
        "{message}"
    );
    assert_eq!(files(dir.path()), Vec::<String>::new());
}

#[sqlx::test]
async fn a_file_size_limit_fails_the_export_and_leaves_the_previous_file(pool: PgPool) {
    with_attempts(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("costs.csv");
    let output = export(&pool, &out).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let before = std::fs::read(&out).unwrap();
    let manifest_before = std::fs::read(dir.path().join("costs.csv.manifest.json")).unwrap();
    assert!(before.len() > 1024);

    // Under RLIMIT_FSIZE of 1 KiB (the file is larger), SIGXFSZ at its default
    // (terminate): the binary turns the limit into a write error and cleans up.
    let exe = env!("CARGO_BIN_EXE_otp-reconcile");
    let mut limited = export(&pool, &out);
    let args: Vec<_> = limited.get_args().map(|a| a.to_owned()).collect();
    let mut cmd = Command::new("prlimit");
    cmd.arg("--fsize=1024")
        .arg(exe)
        .args(args)
        .env("DATABASE_URL", db_url(&pool))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    limited = cmd;
    let output = limited.output().unwrap();
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains(&format!(
            "export to {} failed, nothing written",
            out.display()
        )) && message.contains("File too large"),
        "{message}"
    );
    assert_eq!(
        files(dir.path()),
        vec!["costs.csv".to_owned(), "costs.csv.manifest.json".to_owned()]
    );
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "the last good export stays"
    );
    assert_eq!(
        std::fs::read(dir.path().join("costs.csv.manifest.json")).unwrap(),
        manifest_before
    );
}

#[sqlx::test]
async fn losing_the_database_mid_stream_exits_4(pool: PgPool) {
    db_with_app(&pool).await;
    // More rows than the pipe and the socket buffers hold (about 25 MB of CSV).
    sqlx::query(
        "WITH s AS (
             INSERT INTO sends (app_id, verification_id, sent_at, state)
             SELECT 'app-test', 'mid-' || g, timestamptz '2026-10-01' + g * interval '1 second', 'settled'
             FROM generate_series(1, 160000) g
             RETURNING id)
         INSERT INTO attempts (send_id, channel, position, status, amount, settle_pay, settle_currency, reason)
         SELECT id, 'sms', 1, 0, 0.0350, 0.03283, 'EUR', 'DELIVRD' FROM s",
    )
    .execute(&pool)
    .await
    .unwrap();
    // To a pipe the test does not read: the export stops reading its rows once the pipe
    // is full, and PostgreSQL waits to send the rest, mid-COPY, for as long as we want.
    let mut child = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env("DATABASE_URL", db_url(&pool))
        .args(["export", "--from", "2026-09-01", "--to", "2027-01-01"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let since = Instant::now();
    loop {
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'otp-reconcile'
               AND wait_event = 'ClientWrite' AND query LIKE '%COPY%'",
        )
        .bind(&database)
        .fetch_all(&pool)
        .await
        .unwrap();
        if terminated.contains(&true) {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the export ended before its rows filled the pipe"
        );
        assert!(
            since.elapsed() < Duration::from_secs(120),
            "the export never waited to send its rows"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Read on: the export gets the rows that were on their way, then the loss.
    let output = wait(child).await;
    assert_eq!(output.status.code(), Some(4), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("otp-reconcile: database error"),
        "{}",
        stderr(&output)
    );
    let written = String::from_utf8_lossy(&output.stdout);
    assert!(written.starts_with("app_id,verification_id,"));
    assert!(
        written.lines().count() > 1_000,
        "rows went out before the loss"
    );
}
