//! The export's bytes, pinned: every level and option on one fixture database, compared
//! byte for byte with the files in tests/fixtures/export/ (the CSV, and its manifest less
//! `generated_at`). The fixture holds what a CSV or a spreadsheet can trip on: formulas,
//! commas, quotes, line breaks, empty strings beside NULLs, sub-second times of every
//! precision, long and tiny decimals, currencies missing or odd.
//!
//! The files were written by the export as it was before it streamed `COPY`; to write
//! them anew after a deliberate change of output: `EXPORT_BYTES=write cargo test --test
//! export_bytes`, then read the diff.

mod common;

use common::*;
use sqlx::PgPool;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// (case, arguments split at spaces); each is exported with `--out CASE-{from}-{to}.csv`.
const CASES: &[(&str, &str)] = &[
    ("attempt-utc", "--from 2026-10-01 --to 2026-12-01"),
    (
        "attempt-app-two",
        "--from 2026-10-01 --to 2026-12-01 --app-id app-two",
    ),
    (
        "attempt-both-apps",
        "--from 2026-10-01 --to 2026-12-01 --app-id app-two --app-id app-test",
    ),
    (
        "attempt-shanghai",
        "--from 2026-10-31 --to 2026-11-02 --timezone Asia/Shanghai",
    ),
    (
        "attempt-instants",
        "--from 2026-10-31T16:00:00Z --to 2026-11-01T00:00:00.5+00:00",
    ),
    ("attempt-empty", "--from 2025-01-01 --to 2025-02-01"),
    (
        "summary-utc",
        "--from 2026-10-01 --to 2026-12-01 --level summary",
    ),
    ("day-utc", "--from 2026-10-01 --to 2026-12-01 --level day"),
    (
        "summary-shanghai",
        "--from 2026-10-01 --to 2026-12-01 --level summary --timezone Asia/Shanghai",
    ),
    (
        "summary-plus8",
        "--from 2026-10-01 --to 2026-12-01 --level summary --timezone +08:00",
    ),
    (
        "summary-minus0530",
        "--from 2026-10-01 --to 2026-12-01 --level summary --timezone -05:30",
    ),
    (
        "summary-new-york-app-two",
        "--from 2026-10-01 --to 2026-12-01 --level summary --timezone America/New_York --app-id app-two",
    ),
    (
        "summary-empty",
        "--from 2025-01-01 --to 2025-02-01 --level summary",
    ),
    (
        "month-utc",
        "--from 2026-10-01 --to 2026-12-01 --level month",
    ),
    (
        "month-shanghai",
        "--from 2026-10-01 --to 2026-12-01 --level month --timezone Asia/Shanghai",
    ),
    (
        "month-plus8",
        "--from 2026-10-01 --to 2026-12-01 --level month --timezone +08:00",
    ),
];

/// Sends on both sides of midnight and of a month in UTC and UTC+8, with every kind of
/// awkward cell; then many ordinary ones.
async fn seed(pool: &PgPool) {
    db_with_app(pool).await;
    for sql in [
        "INSERT INTO apps (app_id) VALUES ('app-two')",
        "INSERT INTO sends (app_id, verification_id, order_id, sent_at, state)
         VALUES ('app-test', '=1+2', NULL, '2026-10-31T15:59:59.999Z', 'settled'),
                ('app-test', 'a,b', 'o\"1', '2026-10-31T16:00:00Z', 'settled'),
                ('app-two', '+plus', NULL, '2026-10-31T23:59:59.123456Z', 'expired'),
                ('app-two', NULL, '-minus', '2026-11-01T00:00:00.5Z', 'settled'),
                ('app-test', '@at', 'o,2', '2026-11-01T00:00:00.000001Z', 'rejected'),
                ('app-test', 'q\"uote', NULL, '2026-11-01T04:30:00.12Z', 'pending'),
                ('app-two', 'plain', '=o', '2026-11-02T12:00:00.01Z', 'recheck')",
        "INSERT INTO attempts (send_id, channel, position, status, reason, mcc, mnc,
                               submitted_at, completed_at, charge_count, charged_duration,
                               amount, settle_pay, settle_price, settle_currency,
                               quote_exchange, rate)
         SELECT s.id, a.channel, a.position, a.status, a.reason, a.mcc, a.mnc,
                a.submitted_at::timestamptz, a.completed_at::timestamptz, a.charge_count,
                a.charged_duration, a.amount::numeric, a.settle_pay::numeric,
                a.settle_price::numeric, a.settle_currency, a.quote_exchange::numeric,
                a.rate::numeric
         FROM (VALUES
           ('=1+2', 'sms', 1, 0, '@SUM(A1)', 460, -1, '2026-10-31T15:59:59.999Z', NULL, 2, NULL,
            '0.000002', '0.00000000000000000001', '0.03283', 'USD', '0.938', NULL),
           ('=1+2', 'call', 1, 1, E'line\\nbreak', 460, 1, '2026-10-31T16:00:00.123456Z',
            '2026-10-31T16:01:01.000001Z', NULL, 61, '123456789.123456789', '-1.5', '1.00',
            'EUR', '1', '0.138'),
           ('a,b', 'sms', 1, 0, '', 310, 260, '2026-10-31T16:00:00.5Z', '2026-10-31T16:00:03Z',
            1, NULL, '0', '0.0', '0.000', '', NULL, NULL),
           ('a,b', 'sms', 2, 2, E'\\ttab', 310, 260, NULL, NULL, 1, NULL, NULL, NULL, NULL,
            NULL, NULL, NULL),
           ('+plus', 'sna', 1, 9, E'\\rcr', NULL, NULL, '2026-11-01T00:00:00Z', NULL, NULL,
            NULL, '1.10', '2.200', '2.2', '=X', '0.5', NULL),
           ('-minus', 'sms', 1, 0, 'comma, \"quoted\"', 460, 0, '2026-11-01T00:00:00.5Z',
            '2026-11-01T00:00:01.25Z', 3, NULL, '100', '7.7', '2.5666', 'CNY', '7.1', NULL),
           ('-minus', 'call', 1, 17, 'é中文', 460, 0, NULL, NULL, NULL, 0, '0.0000', '0', NULL,
            'CNY', NULL, '0.0000'),
           ('@at', 'call', 1, -3, '-', NULL, 7, '2026-11-01T00:00:00.000001Z', NULL, NULL, 30,
            '0.5', '0.25', '0.5', '''USD', NULL, '1'),
           ('q\"uote', 'sms', 1, 0, ' lead space', 460, 1, '2026-11-01T04:30:00.12Z',
            '2026-11-01T04:30:00.999999Z', 1, NULL, '1000000', '999999.999999', '0.1', 'USD',
            '0.938', NULL),
           ('plain', 'sms', 1, 0, '\"', 460, 1, NULL, NULL, 1, NULL, '0.035', '0.03283',
            '0.03283', 'EUR', '0.938', NULL),
           ('plain', 'sms', 2, 0, '=', 460, 1, NULL, NULL, 1, NULL, '0.035', '0.03283', '0.03283',
            'EUR ', '0.938', NULL)
         ) AS a(vid, channel, position, status, reason, mcc, mnc, submitted_at, completed_at,
                charge_count, charged_duration, amount, settle_pay, settle_price,
                settle_currency, quote_exchange, rate)
         JOIN sends s ON s.verification_id = a.vid OR s.order_id = a.vid",
        "INSERT INTO sends (app_id, verification_id, sent_at, state)
         SELECT CASE WHEN g % 3 = 0 THEN 'app-two' ELSE 'app-test' END, 'g-' || g,
                timestamptz '2026-10-29T00:00:00Z' + g * interval '1 hour 17 minutes 3.25 seconds'
                    + (g % 7) * interval '0.000013 seconds',
                'settled'
         FROM generate_series(0, 80) AS g",
        "INSERT INTO attempts (send_id, channel, position, status, mcc, mnc, submitted_at,
                               completed_at, charge_count, charged_duration, amount, settle_pay,
                               settle_price, settle_currency, quote_exchange, rate, reason)
         SELECT s.id, c.channel, c.position, s.id % 4,
                (ARRAY[460, 310, NULL])[1 + s.id % 3], 1 + s.id % 2,
                s.sent_at + (s.id % 5) * interval '0.1 seconds', s.sent_at + interval '3 seconds',
                CASE c.channel WHEN 'sms' THEN 1 + s.id % 2 END,
                CASE c.channel WHEN 'call' THEN 30 + s.id % 31 END,
                CASE WHEN c.channel <> 'sna' THEN round(0.0301 + s.id * 0.0000013, 7) END,
                CASE WHEN c.channel <> 'sna' THEN round(0.0328312 * (1 + s.id % 5), 9) END,
                0.0328312, (ARRAY['USD', 'EUR', 'CNY', NULL])[1 + s.id % 4], 0.938,
                CASE c.channel WHEN 'call' THEN 0.138 END,
                (ARRAY['DELIVRD', 'UNDELIV', NULL, '+REJECT'])[1 + s.id % 4]
         FROM sends s
         CROSS JOIN (VALUES ('sms', 1), ('sms', 2), ('call', 1), ('sna', 1)) AS c(channel, position)
         WHERE s.verification_id LIKE 'g-%'
           AND (c.position = 1 AND c.channel = 'sms'
                OR (c.channel = 'sms' AND s.id % 3 = 0)
                OR (c.channel = 'call' AND s.id % 4 = 1)
                OR (c.channel = 'sna' AND s.id % 5 = 2))",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

fn run(pool: &PgPool, args: &[&str], out: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
    cmd.env("DATABASE_URL", db_url(pool))
        .env_remove("EXPORT_TIMEZONE")
        .arg("export")
        .args(args);
    if let Some(out) = out {
        cmd.arg("--out").arg(out);
    }
    let output = cmd.output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "export {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/export")
        .join(name)
}

/// The manifest less its time of writing, which it must have.
fn stable_manifest(path: &Path) -> String {
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let generated_at = manifest
        .as_object_mut()
        .unwrap()
        .remove("generated_at")
        .expect("a manifest says when it was written");
    assert!(generated_at.is_string(), "{generated_at}");
    serde_json::to_string_pretty(&manifest).unwrap() + "\n"
}

/// Compares `got` with the fixture `name` (or writes it, with EXPORT_BYTES=write).
fn same_as_fixture(name: &str, got: &[u8]) {
    let path = fixture(name);
    if std::env::var("EXPORT_BYTES").as_deref() == Ok("write") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if got != want {
        panic!(
            "{name} differs from its fixture.\n--- fixture\n{}\n--- export\n{}",
            String::from_utf8_lossy(&want),
            String::from_utf8_lossy(got)
        );
    }
}

#[sqlx::test]
async fn every_level_and_option_writes_the_pinned_bytes(pool: PgPool) {
    seed(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    for (case, args) in CASES {
        let args: Vec<&str> = args.split(' ').collect();
        let pattern = dir.path().join(format!("{case}-{{from}}-{{to}}.csv"));
        run(&pool, &args, Some(&pattern));
        // `{from}` and `{to}` are the bounds' dates in the zone.
        let (from, to) = (args[1].get(..10).unwrap(), args[3].get(..10).unwrap());
        let path = dir.path().join(format!("{case}-{from}-{to}.csv"));
        let csv = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        same_as_fixture(&format!("{case}.csv"), &csv);
        let manifest = dir
            .path()
            .join(format!("{case}-{from}-{to}.csv.manifest.json"));
        same_as_fixture(
            &format!("{case}.manifest.json"),
            stable_manifest(&manifest).as_bytes(),
        );
        // To standard output, the same bytes.
        assert_eq!(run(&pool, &args, None).stdout, csv, "{case} to stdout");
    }
}

#[sqlx::test]
async fn yesterday_to_today_is_the_day_before_today_in_the_zone(pool: PgPool) {
    db_with_app(&pool).await;
    sqlx::query(
        "INSERT INTO sends (app_id, verification_id, sent_at, state)
         SELECT 'app-test', 'rel-' || g, now() - g * interval '97 minutes', 'settled'
         FROM generate_series(0, 60) AS g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO attempts (send_id, channel, position, status, amount, settle_pay, settle_currency)
         SELECT id, 'sms', 1, 0, 0.035, 0.03283, 'USD' FROM sends",
    )
    .execute(&pool)
    .await
    .unwrap();
    let zone = chrono::FixedOffset::east_opt(8 * 3_600).unwrap();
    let today = || chrono::Utc::now().with_timezone(&zone).date_naive();
    let dir = tempfile::tempdir().unwrap();
    // Again if the day turned while the test ran.
    for _ in 0..3 {
        let before = today();
        let yesterday = before.pred_opt().unwrap();
        let relative = [
            "--from",
            "yesterday",
            "--to",
            "today",
            "--timezone",
            "+08:00",
        ];
        let out = dir.path().join("costs-{from}.csv");
        run(&pool, &relative, Some(&out));
        let (from, to) = (yesterday.to_string(), before.to_string());
        let dated = run(
            &pool,
            &["--from", &from, "--to", &to, "--timezone", "+08:00"],
            None,
        );
        if today() != before {
            continue;
        }
        let file = std::fs::read(dir.path().join(format!("costs-{from}.csv"))).unwrap();
        assert_eq!(file, dated.stdout);
        let rows = String::from_utf8(file).unwrap().lines().count() - 1;
        assert!(rows > 0 && rows < 61, "{rows} rows: one day of the sends");
        return;
    }
    panic!("the day never held still");
}
