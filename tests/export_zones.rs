//! The export in a time zone (`--timezone`) and by month (`--level month`): real
//! PostgreSQL (a database per test) and the binary where finance runs it. Sends and
//! attempts are written with SQL at chosen instants: on a day's first and last
//! millisecond in UTC+8, across daylight saving changes, across a month boundary that
//! UTC and UTC+8 cut differently.

mod common;

use chrono::{DateTime, FixedOffset, Utc};
use common::*;
use otp_reconcile::export;
use rust_decimal::Decimal;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};

type Row = BTreeMap<String, String>;

fn csv_rows(bytes: &[u8]) -> (Vec<String>, Vec<Row>) {
    let mut reader = csv::Reader::from_reader(bytes);
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| {
            header
                .iter()
                .cloned()
                .zip(r.unwrap().iter().map(str::to_owned))
                .collect()
        })
        .collect();
    (header, rows)
}

fn dec(s: &str) -> Decimal {
    if s.is_empty() {
        Decimal::ZERO
    } else {
        Decimal::from_str_exact(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// Runs `otp-reconcile export ARGS` against the test's database.
fn export_cmd(pool: &PgPool, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env("DATABASE_URL", db_url(pool))
        .env_remove("EXPORT_TIMEZONE")
        .arg("export")
        .args(args)
        .output()
        .unwrap()
}

/// The CSV an export writes to standard output; the export must succeed.
fn exported(pool: &PgPool, args: &[&str]) -> (Vec<String>, Vec<Row>) {
    let out = export_cmd(pool, args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "export {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    csv_rows(&out.stdout)
}

/// One send per (verification id, sent_at), each with one sms attempt whose amount is
/// its own (so every sum names the sends in it).
async fn seed_single_sends(pool: &PgPool, sends: &[(&str, &str, &str)]) {
    db_with_app(pool).await;
    for (id, sent_at, amount) in sends {
        sqlx::query(
            "WITH s AS (
                 INSERT INTO sends (app_id, verification_id, sent_at, state)
                 VALUES ($1, $2, $3, 'settled') RETURNING id)
             INSERT INTO attempts (send_id, channel, position, status, mcc, mnc, charge_count,
                                   amount, settle_pay, settle_currency)
             SELECT id, 'sms', 1, 0, 460, 1, 1, $4::numeric, $4::numeric * 2, 'USD' FROM s",
        )
        .bind(APP)
        .bind(id)
        .bind(at(sent_at))
        .bind(amount)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Exports [from, to) read in `zone`, at the attempt and the day level, and checks that
/// exactly the `expected` sends are in it, each on its day: counts and exact sums.
fn check_days(
    pool: &PgPool,
    sends: &[(&str, &str, &str)],
    zone: &str,
    from: &str,
    to: &str,
    expected: &[(&str, &str)],
) {
    let amount_of: BTreeMap<&str, Decimal> = sends.iter().map(|(id, _, a)| (*id, dec(a))).collect();
    let sent_at_of: BTreeMap<&str, &str> = sends.iter().map(|(id, t, _)| (*id, *t)).collect();
    let range = ["--from", from, "--to", to, "--timezone", zone];

    let (_, attempts) = exported(pool, &range);
    let ids: BTreeSet<&str> = attempts
        .iter()
        .map(|r| r["verification_id"].as_str())
        .collect();
    let want: BTreeSet<&str> = expected.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, want, "{zone} [{from}, {to})");
    for r in &attempts {
        // The rows keep UTC times, whatever the zone.
        let sent_at = r["sent_at"].as_str();
        assert!(sent_at.ends_with('Z'), "{sent_at}");
        assert_eq!(
            at(sent_at),
            at(sent_at_of[r["verification_id"].as_str()]),
            "{zone}"
        );
    }

    let mut days: BTreeMap<&str, (usize, Decimal)> = BTreeMap::new();
    for (id, day) in expected {
        let d = days.entry(day).or_default();
        d.0 += 1;
        d.1 += amount_of[id];
    }
    let (header, summary) = exported(pool, &[&range[..], &["--level", "summary"][..]].concat());
    assert_eq!(header, export::SUMMARY_COLUMNS);
    let got: BTreeMap<&str, (usize, Decimal)> = summary
        .iter()
        .map(|r| {
            (
                r["day"].as_str(),
                (r["sends"].parse().unwrap(), dec(&r["amount"])),
            )
        })
        .collect();
    assert_eq!(got.len(), summary.len(), "one row per day: {summary:?}");
    assert_eq!(got, days, "{zone} [{from}, {to})");
}

#[sqlx::test]
async fn a_send_on_midnight_in_utc_plus_8_is_on_the_next_day_by_name_and_by_offset(pool: PgPool) {
    let sends = [
        ("b0", "2026-11-25T16:00:00Z", "0.0001"),
        ("b1", "2026-11-26T15:59:59.999Z", "0.0010"),
        ("b2", "2026-11-26T16:00:00Z", "0.0100"),
        ("b3", "2026-11-27T15:59:59.999Z", "0.1000"),
        ("b4", "2026-11-27T16:00:00Z", "1.0000"),
        ("m1", "2026-11-28T05:29:59.999Z", "0.00000001"),
        ("m2", "2026-11-28T05:30:00Z", "0.00000002"),
    ];
    seed_single_sends(&pool, &sends).await;

    for zone in ["Asia/Shanghai", "+08:00", "+0800"] {
        check_days(
            &pool,
            &sends,
            zone,
            "2026-11-26",
            "2026-11-28",
            &[
                ("b0", "2026-11-26"),
                ("b1", "2026-11-26"),
                ("b2", "2026-11-27"),
                ("b3", "2026-11-27"),
            ],
        );
        // One day; and the same bounds written as times keep their own offsets.
        for (from, to) in [
            ("2026-11-27", "2026-11-28"),
            ("2026-11-27T00:00:00+08:00", "2026-11-28T00:00:00+08:00"),
            ("2026-11-26T16:00:00Z", "2026-11-27T16:00:00Z"),
        ] {
            check_days(
                &pool,
                &sends,
                zone,
                from,
                to,
                &[("b2", "2026-11-27"), ("b3", "2026-11-27")],
            );
        }
    }
    // In UTC (the default, and by name) the same sends fall on other days.
    check_days(
        &pool,
        &sends,
        "UTC",
        "2026-11-26",
        "2026-11-28",
        &[
            ("b1", "2026-11-26"),
            ("b2", "2026-11-26"),
            ("b3", "2026-11-27"),
            ("b4", "2026-11-27"),
        ],
    );
    let (_, default) = exported(
        &pool,
        &[
            "--from",
            "2026-11-26",
            "--to",
            "2026-11-28",
            "--level",
            "day",
        ],
    );
    let (_, utc) = exported(
        &pool,
        &[
            "--from",
            "2026-11-26",
            "--to",
            "2026-11-28",
            "--level",
            "summary",
            "--timezone",
            "UTC",
        ],
    );
    assert_eq!(default, utc);
    // West of UTC, the sign is not inverted: 05:30Z is midnight at -05:30.
    check_days(
        &pool,
        &sends,
        "-05:30",
        "2026-11-27",
        "2026-11-29",
        &[
            ("b3", "2026-11-27"),
            ("b4", "2026-11-27"),
            ("m1", "2026-11-27"),
            ("m2", "2026-11-28"),
        ],
    );
}

#[sqlx::test]
async fn days_across_daylight_saving_changes_last_25_or_23_hours(pool: PgPool) {
    let sends = [
        // New York, back to standard time on 2026-11-01 at 02:00 EDT (06:00Z).
        ("n1", "2026-11-01T03:59:59.999Z", "0.001"), // 10-31 23:59:59.999 EDT
        ("n2", "2026-11-01T04:00:00Z", "0.002"),     // 11-01 00:00 EDT
        ("n3", "2026-11-01T05:30:00Z", "0.004"),     // 11-01 01:30 EDT
        ("n4", "2026-11-01T06:30:00Z", "0.008"),     // 11-01 01:30 EST
        ("n5", "2026-11-02T04:59:59.999Z", "0.016"), // 11-01 23:59:59.999 EST
        ("n6", "2026-11-02T05:00:00Z", "0.032"),     // 11-02 00:00 EST
        // New York, to daylight saving time on 2026-03-08 at 02:00 EST (07:00Z).
        ("s1", "2026-03-08T04:59:59.999Z", "0.1"), // 03-07 23:59:59.999 EST
        ("s2", "2026-03-08T05:00:00Z", "0.2"),     // 03-08 00:00 EST
        ("s3", "2026-03-08T06:59:59Z", "0.3"),     // 03-08 01:59:59 EST
        ("s4", "2026-03-08T07:00:00Z", "0.4"),     // 03-08 03:00 EDT
        ("s5", "2026-03-09T03:59:59.999Z", "0.5"), // 03-08 23:59:59.999 EDT
        ("s6", "2026-03-09T04:00:00Z", "0.6"),     // 03-09 00:00 EDT
        // Berlin, back to standard time on 2026-10-25 at 03:00 CEST (01:00Z).
        ("e1", "2026-10-24T21:59:59.999Z", "1"), // 10-24 23:59:59.999 CEST
        ("e2", "2026-10-24T22:00:00Z", "2"),     // 10-25 00:00 CEST
        ("e3", "2026-10-25T22:59:59.999Z", "4"), // 10-25 23:59:59.999 CET
        ("e4", "2026-10-25T23:00:00Z", "8"),     // 10-26 00:00 CET
        // Santiago skips its midnight on 2026-09-06: 00:00 -04 is 01:00 -03.
        ("c1", "2026-09-06T03:59:59.999Z", "10"), // 09-05 23:59:59.999 -04
        ("c2", "2026-09-06T04:00:00Z", "20"),     // 09-06 01:00 -03
        ("c3", "2026-09-07T02:59:59.999Z", "40"), // 09-06 23:59:59.999 -03
        ("c4", "2026-09-07T03:00:00Z", "80"),     // 09-07 00:00 -03
    ];
    seed_single_sends(&pool, &sends).await;
    let ny = "America/New_York";

    // 25 hours: from 04:00Z to 05:00Z the next day.
    check_days(
        &pool,
        &sends,
        ny,
        "2026-11-01",
        "2026-11-02",
        &[
            ("n2", "2026-11-01"),
            ("n3", "2026-11-01"),
            ("n4", "2026-11-01"),
            ("n5", "2026-11-01"),
        ],
    );
    check_days(
        &pool,
        &sends,
        ny,
        "2026-10-31",
        "2026-11-03",
        &[
            ("n1", "2026-10-31"),
            ("n2", "2026-11-01"),
            ("n3", "2026-11-01"),
            ("n4", "2026-11-01"),
            ("n5", "2026-11-01"),
            ("n6", "2026-11-02"),
        ],
    );
    // 23 hours: from 05:00Z to 04:00Z the next day.
    check_days(
        &pool,
        &sends,
        ny,
        "2026-03-08",
        "2026-03-09",
        &[
            ("s2", "2026-03-08"),
            ("s3", "2026-03-08"),
            ("s4", "2026-03-08"),
            ("s5", "2026-03-08"),
        ],
    );
    check_days(
        &pool,
        &sends,
        ny,
        "2026-03-07",
        "2026-03-10",
        &[
            ("s1", "2026-03-07"),
            ("s2", "2026-03-08"),
            ("s3", "2026-03-08"),
            ("s4", "2026-03-08"),
            ("s5", "2026-03-08"),
            ("s6", "2026-03-09"),
        ],
    );
    // Berlin's 25-hour day.
    check_days(
        &pool,
        &sends,
        "Europe/Berlin",
        "2026-10-24",
        "2026-10-27",
        &[
            ("e1", "2026-10-24"),
            ("e2", "2026-10-25"),
            ("e3", "2026-10-25"),
            ("e4", "2026-10-26"),
        ],
    );
    check_days(
        &pool,
        &sends,
        "Europe/Berlin",
        "2026-10-25",
        "2026-10-26",
        &[("e2", "2026-10-25"), ("e3", "2026-10-25")],
    );
    // A day whose midnight does not exist starts where the clocks land, in the bounds
    // (ours) as in the day cut (PostgreSQL's).
    check_days(
        &pool,
        &sends,
        "America/Santiago",
        "2026-09-06",
        "2026-09-07",
        &[("c2", "2026-09-06"), ("c3", "2026-09-06")],
    );
    check_days(
        &pool,
        &sends,
        "America/Santiago",
        "2026-09-05",
        "2026-09-08",
        &[
            ("c1", "2026-09-05"),
            ("c2", "2026-09-06"),
            ("c3", "2026-09-06"),
            ("c4", "2026-09-07"),
        ],
    );
}

/// Many sends around the end of October 2026, with several attempts each, mccs and
/// currencies (some missing), and amounts with many decimals.
async fn seed_month_boundary(pool: &PgPool) {
    db_with_app(pool).await;
    sqlx::query("INSERT INTO apps (app_id) VALUES ('app-two')")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO sends (app_id, verification_id, sent_at, state)
         SELECT CASE WHEN g % 4 = 0 THEN 'app-two' ELSE 'app-test' END, 'g-' || g,
                timestamptz '2026-10-29T00:00:00Z' + g * interval '47 minutes 11 seconds', 'settled'
         FROM generate_series(0, 200) AS g
         UNION ALL
         SELECT 'app-test', id, t, 'settled'
         FROM (VALUES ('edge-oct', timestamptz '2026-10-31T15:59:59.999Z'),
                      ('edge-nov', timestamptz '2026-10-31T16:00:00Z'),
                      ('late-oct', timestamptz '2026-10-31T20:00:00Z'),
                      ('utc-nov', timestamptz '2026-11-01T00:00:00Z')) AS e(id, t)",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO attempts (send_id, channel, position, status, mcc, mnc, charge_count,
                               charged_duration, amount, settle_pay, settle_currency)
         SELECT s.id, c.channel, c.position, 0,
                (ARRAY[460, 310, NULL])[1 + s.id % 3], 1,
                CASE c.channel WHEN 'sms' THEN 1 + s.id % 2 END,
                CASE c.channel WHEN 'call' THEN 30 + s.id % 31 END,
                CASE WHEN c.channel <> 'sna' THEN round(0.0301 + s.id * 0.0000013, 7) END,
                CASE WHEN c.channel <> 'sna' THEN round(0.0328312 * (1 + s.id % 5), 9) END,
                (ARRAY['USD', 'EUR', 'CNY', NULL])[1 + s.id % 4]
         FROM sends s
         CROSS JOIN (VALUES ('sms', 1), ('sms', 2), ('call', 1), ('sna', 1)) AS c(channel, position)
         WHERE c.position = 1 AND c.channel = 'sms'
            OR (c.channel = 'sms' AND s.id % 3 = 0)
            OR (c.channel = 'call' AND s.id % 4 = 1)
            OR (c.channel = 'sna' AND s.id % 5 = 2)",
    )
    .execute(pool)
    .await
    .unwrap();
}

type Key = (String, String, String, String, String);

#[derive(Debug, Default, PartialEq)]
struct Sums {
    sends: usize,
    attempts: u64,
    units: i64,
    amount: Decimal,
    settle: Decimal,
}

fn key(period: &str, r: &Row) -> Key {
    (
        period.to_owned(),
        r["app_id"].clone(),
        r["mcc"].clone(),
        r["channel"].clone(),
        r["settle_currency"].clone(),
    )
}

/// Summary rows by key.
fn sums_of(rows: &[Row], period: &str) -> BTreeMap<Key, Sums> {
    let mut out = BTreeMap::new();
    for r in rows {
        let previous = out.insert(
            key(&r[period], r),
            Sums {
                sends: r["sends"].parse().unwrap(),
                attempts: r["attempts"].parse().unwrap(),
                units: r["units"].parse().unwrap_or(0),
                amount: dec(&r["amount"]),
                settle: dec(&r["settle_amount"]),
            },
        );
        assert!(previous.is_none(), "one row per key: {r:?}");
    }
    out
}

fn manifest(path: &Path) -> serde_json::Value {
    let mut name = path.file_name().unwrap().to_os_string();
    name.push(".manifest.json");
    serde_json::from_slice(&std::fs::read(path.with_file_name(name)).unwrap()).unwrap()
}

#[sqlx::test]
async fn the_month_level_is_its_days_summed_and_its_attempts_summed_in_the_zone(pool: PgPool) {
    seed_month_boundary(&pool).await;
    let dir = tempfile::tempdir().unwrap();
    let sends_before = |t: &str| {
        let pool = pool.clone();
        let t = at(t);
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM sends WHERE sent_at < $1")
                .bind(t)
                .fetch_one(&pool)
                .await
                .unwrap() as usize
        }
    };
    let (october_utc, october_plus8) = (
        sends_before("2026-11-01T00:00:00Z").await,
        sends_before("2026-10-31T16:00:00Z").await,
    );
    assert!(october_utc > october_plus8 + 2, "the boundaries differ");

    for (zone, offset, october) in [
        ("+08:00", 8, october_plus8),
        ("Asia/Shanghai", 8, october_plus8),
        ("UTC", 0, october_utc),
    ] {
        let local = FixedOffset::east_opt(offset * 3_600).unwrap();
        let mut files = BTreeMap::new();
        for level in ["attempt", "summary", "month"] {
            let pattern = dir.path().join(format!("{level}-{{from}}-{{to}}.csv"));
            let out = export_cmd(
                &pool,
                &[
                    "--from",
                    "2026-10-01",
                    "--to",
                    "2026-12-01",
                    "--timezone",
                    zone,
                    "--level",
                    level,
                    "--out",
                    pattern.to_str().unwrap(),
                ],
            );
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The file is named for the dates as read in the zone.
            let path = dir
                .path()
                .join(format!("{level}-2026-10-01-2026-12-01.csv"));
            let (header, rows) = csv_rows(&std::fs::read(&path).unwrap());
            let manifest = manifest(&path);
            assert_eq!(manifest["parameters"]["timezone"], zone);
            assert_eq!(manifest["parameters"]["level"], level);
            assert_eq!(manifest["columns"], serde_json::json!(header));
            assert_eq!(manifest["rows"], rows.len());
            files.insert(level, (header, rows, manifest));
        }
        let (_, attempts, attempt_manifest) = &files["attempt"];
        let (_, days, _) = &files["summary"];
        let (month_header, months, _) = &files["month"];
        assert_eq!(month_header, export::MONTH_COLUMNS);
        assert_eq!(
            attempts.len() as i64,
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM attempts")
                .fetch_one(&pool)
                .await
                .unwrap()
        );

        // The attempts, summed by their send's month in the zone.
        let mut from_attempts: BTreeMap<Key, (BTreeSet<String>, Sums)> = BTreeMap::new();
        for r in attempts {
            let month = at(&r["sent_at"])
                .with_timezone(&local)
                .format("%Y-%m")
                .to_string();
            let (ids, sums) = from_attempts.entry(key(&month, r)).or_default();
            ids.insert(r["verification_id"].clone());
            sums.attempts += 1;
            sums.units += r["units"].parse::<i64>().unwrap_or(0);
            sums.amount += dec(&r["amount"]);
            sums.settle += dec(&r["settle_amount"]);
        }
        let from_attempts: BTreeMap<Key, Sums> = from_attempts
            .into_iter()
            .map(|(k, (ids, sums))| {
                (
                    k,
                    Sums {
                        sends: ids.len(),
                        ..sums
                    },
                )
            })
            .collect();
        // The days, summed by month.
        let mut from_days: BTreeMap<Key, Sums> = BTreeMap::new();
        for (k, s) in sums_of(days, "day") {
            let sums = from_days
                .entry((k.0[..7].to_owned(), k.1, k.2, k.3, k.4))
                .or_default();
            sums.sends += s.sends;
            sums.attempts += s.attempts;
            sums.units += s.units;
            sums.amount += s.amount;
            sums.settle += s.settle;
        }
        let by_month = sums_of(months, "month");
        assert_eq!(by_month, from_attempts, "{zone}: months and attempts");
        assert_eq!(by_month, from_days, "{zone}: months and days");
        assert!(
            by_month.keys().any(|k| k.0 == "2026-10") && by_month.keys().any(|k| k.0 == "2026-11")
        );

        // October holds the sends before midnight in the zone, counted independently.
        let october_sends: usize = by_month
            .iter()
            .filter(|(k, _)| k.0 == "2026-10" && k.3 == "sms")
            .map(|(_, s)| s.sends)
            .sum();
        assert_eq!(october_sends, october, "{zone}");
        // The send at 2026-10-31T20:00Z is in November at +08:00, October in UTC.
        let late = attempts
            .iter()
            .find(|r| r["verification_id"] == "late-oct")
            .unwrap();
        assert_eq!(late["sent_at"], "2026-10-31T20:00:00Z");
        let month_of_late = if offset == 8 { "2026-11" } else { "2026-10" };
        assert!(from_attempts.contains_key(&key(month_of_late, late)));

        // The three files add up to the same totals, which the database agrees with.
        for level in ["summary", "month"] {
            let totals = &files[level].2["totals"];
            for total in ["amount", "settle_amount", "units"] {
                assert_eq!(
                    totals[total], attempt_manifest["totals"][total],
                    "{zone} {level} {total}"
                );
            }
        }
        let (amount, settle_usd): (Decimal, Decimal) = sqlx::query_as(
            "SELECT sum(amount), sum(settle_pay) FILTER (WHERE settle_currency = 'USD') FROM attempts",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let totals = &attempt_manifest["totals"];
        assert_eq!(dec(totals["amount"].as_str().unwrap()), amount);
        assert_eq!(
            dec(totals["settle_amount"]["USD"].as_str().unwrap()),
            settle_usd
        );
    }
}

#[test]
fn a_zone_that_is_not_one_is_a_usage_error() {
    for zone in ["Mars/Olympus", "UTC+8", "+8", "+25:00", "08:00", ""] {
        let out = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
            .env(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            )
            .args([
                "export",
                "--from",
                "2026-11-01",
                "--to",
                "2026-12-01",
                "--timezone",
                zone,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{zone:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(&format!("unknown time zone {zone:?}")) && stderr.contains("+08:00"),
            "{zone:?}: {stderr}"
        );
        assert!(out.stdout.is_empty());
    }
}

#[sqlx::test]
async fn postgres_is_asked_whether_it_knows_the_zone(pool: PgPool) {
    let db = db_with_app(&pool).await;
    assert!(export::zone_known(&db, "Asia/Shanghai").await.unwrap());
    assert!(export::zone_known(&db, "America/New_York").await.unwrap());
    assert!(!export::zone_known(&db, "Mars/Olympus").await.unwrap());
}
