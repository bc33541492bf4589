//! Finance export, replay with its change report, and status: real PostgreSQL (a
//! database per test), the simulator, and the binary where users run it.

mod common;

use chrono::{DateTime, Duration as Delta, Utc};
use common::*;
use otp_reconcile::db::Db;
use otp_reconcile::db::sends::{self, NewSend, Range};
use otp_reconcile::export::{self, Level, Query};
use otp_reconcile::pass::{self, PassSettings};
use otp_reconcile::provider::ProviderClient;
use otp_reconcile::record::Record;
use otp_reconcile_simulator::{
    CostChange, DEMO_API_KEY, DEMO_API_SECRET, Fault, RecordConfig, SimConfig, SimHandle, Simulator,
};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

async fn simulator() -> SimHandle {
    let mut config = SimConfig::new(31);
    config.records = RecordConfig {
        sending_share: 0.0,
        ..RecordConfig::default()
    };
    Simulator::start(config).await.unwrap()
}

/// `n` sends over the three days before `end`, checked against the simulator.
async fn dataset(pool: &PgPool, n: usize, end: DateTime<Utc>) -> (Db, SimHandle) {
    let db = db_with_app(pool).await;
    let sends: Vec<NewSend> = new_sends(n, "x")
        .into_iter()
        .enumerate()
        .map(|(i, s)| NewSend {
            sent_at: end - Delta::minutes((i as i64 * 3 * 1_440) / n as i64) - Delta::minutes(1),
            ..s
        })
        .collect();
    insert_sends(&db, &sends).await;
    let sim = simulator().await;
    let settings = PassSettings {
        rates: None,
        postbacks: false,
        ..quick_settings(32)
    };
    run_pass(&db, &client(&sim, Duration::from_secs(2)), &settings).await;
    (db, sim)
}

fn csv_rows(bytes: &[u8]) -> (Vec<String>, Vec<BTreeMap<String, String>>) {
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

#[sqlx::test]
async fn the_export_adds_up_to_the_database_and_its_summary_to_its_attempts(pool: PgPool) {
    let end = Utc::now();
    let (db, _sim) = dataset(&pool, 1_500, end).await;
    let from = (end - Delta::days(2))
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    let to = from + Delta::days(2);
    // Cells a spreadsheet would run as formulas, and a tiny amount.
    let id: i64 = sqlx::query_scalar(
        "SELECT a.send_id FROM attempts a JOIN sends s ON s.id = a.send_id
         WHERE a.channel = 'sms' AND s.sent_at >= $1 AND s.sent_at < $2 LIMIT 1",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&pool)
    .await
    .unwrap();
    sqlx::query("UPDATE sends SET verification_id = '=1+2' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("UPDATE attempts SET reason = '@SUM(A1)', amount = 0.000002, mnc = -1 WHERE send_id = $1 AND channel = 'sms' AND position = 1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();

    let query = |level| Query {
        from,
        to,
        app_ids: vec![],
        level,
        timezone: otp_reconcile::zone::Zone::default(),
    };
    let mut attempts_csv = Vec::new();
    export::write_csv(&db, &query(Level::Attempt), &mut attempts_csv)
        .await
        .unwrap();
    let (header, rows) = csv_rows(&attempts_csv);
    assert_eq!(
        &header[..17],
        &[
            "app_id",
            "verification_id",
            "order_id",
            "sent_at",
            "channel",
            "attempt",
            "status",
            "mcc",
            "mnc",
            "submitted_at",
            "completed_at",
            "units",
            "amount",
            "settle_price",
            "settle_amount",
            "settle_currency",
            "quote_exchange",
        ]
    );
    assert!(rows.len() > 1_000, "{} rows", rows.len());

    // Totals per currency, with exact decimals, equal the database's.
    let mut amount = Decimal::ZERO;
    let mut settle: BTreeMap<String, Decimal> = BTreeMap::new();
    for r in &rows {
        amount += dec(&r["amount"]);
        *settle.entry(r["settle_currency"].clone()).or_default() += dec(&r["settle_amount"]);
        for column in [
            "amount",
            "settle_price",
            "settle_amount",
            "quote_exchange",
            "rate",
            "units",
            "status",
            "mcc",
            "mnc",
        ] {
            assert!(!r[column].contains(['e', 'E']), "{column} {:?}", r[column]);
        }
        for column in ["sent_at", "submitted_at", "completed_at"] {
            assert!(
                r[column].is_empty() || r[column].ends_with('Z'),
                "{column} {:?}",
                r[column]
            );
        }
    }
    let db_settle: Vec<(Option<String>, Decimal)> = sqlx::query_as(
        "SELECT a.settle_currency, coalesce(sum(a.settle_pay), 0) FROM sends s JOIN attempts a ON a.send_id = s.id
         WHERE s.sent_at >= $1 AND s.sent_at < $2 GROUP BY 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(&pool)
    .await
    .unwrap();
    let db_settle: BTreeMap<String, Decimal> = db_settle
        .into_iter()
        .map(|(c, d)| (c.unwrap_or_default(), d))
        .collect();
    assert_eq!(settle, db_settle);
    let db_amount: Decimal = sqlx::query_scalar(
        "SELECT coalesce(sum(a.amount), 0) FROM sends s JOIN attempts a ON a.send_id = s.id WHERE s.sent_at >= $1 AND s.sent_at < $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(amount, db_amount);

    // Formulas are neutralized in text cells; numbers stay numbers; money as stored.
    let row = rows
        .iter()
        .find(|r| r["verification_id"] == "'=1+2" && r["channel"] == "sms")
        .expect("the formula row");
    assert_eq!(row["reason"], "'@SUM(A1)");
    assert_eq!(row["mnc"], "-1");
    assert_eq!(row["amount"], "0.000002");

    // The summary level equals the attempt level aggregated.
    #[derive(Default)]
    struct Group {
        sends: BTreeSet<(String, String)>,
        attempts: u64,
        units: i64,
        amount: Decimal,
        settle: Decimal,
    }
    let mut aggregated: BTreeMap<(String, String, String, String, String), Group> = BTreeMap::new();
    for r in &rows {
        let day = r["sent_at"][..10].to_owned();
        let key = (
            day,
            r["app_id"].clone(),
            r["mcc"].clone(),
            r["channel"].clone(),
            r["settle_currency"].clone(),
        );
        let g = aggregated.entry(key).or_default();
        g.sends
            .insert((r["verification_id"].clone(), r["order_id"].clone()));
        g.attempts += 1;
        g.units += r["units"].parse::<i64>().unwrap_or(0);
        g.amount += dec(&r["amount"]);
        g.settle += dec(&r["settle_amount"]);
    }
    let mut summary_csv = Vec::new();
    export::write_csv(&db, &query(Level::Summary), &mut summary_csv)
        .await
        .unwrap();
    let (header, summary) = csv_rows(&summary_csv);
    assert_eq!(header, export::SUMMARY_COLUMNS);
    assert_eq!(summary.len(), aggregated.len());
    for r in &summary {
        let key = (
            r["day"].clone(),
            r["app_id"].clone(),
            r["mcc"].clone(),
            r["channel"].clone(),
            r["settle_currency"].clone(),
        );
        let g = &aggregated[&key];
        assert_eq!(
            r["sends"].parse::<usize>().unwrap(),
            g.sends.len(),
            "{key:?}"
        );
        assert_eq!(r["attempts"].parse::<u64>().unwrap(), g.attempts, "{key:?}");
        assert_eq!(r["units"].parse::<i64>().unwrap_or(0), g.units, "{key:?}");
        assert_eq!(dec(&r["amount"]), g.amount, "{key:?}");
        assert_eq!(dec(&r["settle_amount"]), g.settle, "{key:?}");
    }

    // An app filter keeps only that app.
    let mut other = Vec::new();
    export::write_csv(
        &db,
        &Query {
            app_ids: vec!["nobody".into()],
            ..query(Level::Attempt)
        },
        &mut other,
    )
    .await
    .unwrap();
    assert_eq!(csv_rows(&other).1.len(), 0);
}

#[sqlx::test]
async fn export_to_a_file_writes_a_manifest_whose_hash_matches(pool: PgPool) {
    let end = Utc::now();
    let (_db, _sim) = dataset(&pool, 300, end).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("costs.csv");
    let from = (end - Delta::days(4)).date_naive().to_string();
    let to = (end + Delta::days(1)).date_naive().to_string();
    let status = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env("DATABASE_URL", db_url(&pool))
        .args([
            "export", "--from", &from, "--to", &to, "--app-id", APP, "--out",
        ])
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let bytes = std::fs::read(&out).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("costs.csv.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["sha256"], hex::encode(Sha256::digest(&bytes)));
    let (_, rows) = csv_rows(&bytes);
    assert_eq!(manifest["rows"], rows.len());
    let total: Decimal = rows.iter().map(|r| dec(&r["amount"])).sum();
    assert_eq!(dec(manifest["totals"]["amount"].as_str().unwrap()), total);
    assert_eq!(manifest["parameters"]["app_ids"][0], APP);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");

    // To standard output, the same bytes.
    let stdout = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env("DATABASE_URL", db_url(&pool))
        .args(["export", "--from", &from, "--to", &to, "--app-id", APP])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(stdout.stdout, bytes);
}

#[sqlx::test]
async fn an_export_that_loses_its_database_mid_stream_leaves_no_file(pool: PgPool) {
    db_with_app(&pool).await;
    sqlx::query(
        "INSERT INTO sends (app_id, verification_id, sent_at, state)
         SELECT 'app-test', 'big-' || g, timestamptz '2026-10-01' + g * interval '1 second', 'settled'
         FROM generate_series(1, 150000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO attempts (send_id, channel, position, status, amount, settle_pay, settle_currency)
         SELECT id, c, 1, 0, 0.0350, 0.03283, 'EUR' FROM sends CROSS JOIN unnest(ARRAY['sms', 'call']) AS c",
    )
    .execute(&pool)
    .await
    .unwrap();
    // The export's query waits behind this lock for as long as the test needs, however
    // busy the machine: it cannot finish before its connection is dropped.
    let mut locker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE attempts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *locker)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("costs.csv");
    let mut export = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env("DATABASE_URL", db_url(&pool))
        .args([
            "export",
            "--from",
            "2026-09-01",
            "--to",
            "2027-01-01",
            "--out",
        ])
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let database = pool.connect_options().get_database().unwrap().to_owned();
    let started = Instant::now();
    let terminated = loop {
        // Only once the export has its file open and its query waiting on the lock.
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND application_name = 'otp-reconcile' AND state = 'active'
               AND wait_event_type = 'Lock' AND query LIKE '%JOIN attempts%'
               AND $2",
        )
        .bind(&database)
        .bind(left > 0)
        .fetch_all(&pool)
        .await
        .unwrap();
        if killed.contains(&true) {
            break true;
        }
        // A generous cap on a condition that holds once the export has started.
        if export.try_wait().unwrap().is_some() || started.elapsed() > Duration::from_secs(120) {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    locker.rollback().await.unwrap();
    assert!(terminated, "the export never waited on its query");
    let output = export.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "files left behind: {left:?}");
}

/// Status and money of a record, per settlement currency and in the quotation currency.
fn money_of(record: &Record) -> (Decimal, BTreeMap<String, Decimal>) {
    let mut amount = Decimal::ZERO;
    let mut settle = BTreeMap::new();
    let settlements = record
        .sms
        .iter()
        .map(|a| (a.pay, &a.settlement))
        .chain(record.call.iter().map(|a| (a.cost, &a.settlement)))
        .chain(record.sna.iter().map(|a| (None, &a.settlement)));
    for (quoted, s) in settlements {
        amount += quoted.unwrap_or_default();
        if let Some(pay) = s.settle_pay {
            *settle
                .entry(s.settle_currency.clone().unwrap_or_default())
                .or_insert(Decimal::ZERO) += pay;
        }
    }
    (amount, settle)
}

async fn replay(
    db: &Db,
    client: &ProviderClient,
    range: &Range,
) -> (pass::Summary, otp_reconcile::db::revisions::Report) {
    run_replay(db, client, &quick_settings(32), range).await
}

async fn snapshot(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT t FROM (SELECT s::text AS t FROM sends s
                        UNION ALL SELECT r::text FROM records r
                        UNION ALL SELECT a::text FROM attempts a) x ORDER BY t",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test]
async fn replay_reports_exactly_the_changed_costs_and_a_second_replay_nothing(pool: PgPool) {
    let end = Utc::now();
    let (db, sim) = dataset(&pool, 2_000, end).await;
    let client = client(&sim, Duration::from_secs(2));
    let range = Range {
        from: end - Delta::days(4),
        to: end,
        app_ids: vec![],
    };

    // The provider fixes its billing for 1% of records.
    let change = CostChange {
        share: 0.01,
        epoch: 1,
    };
    sim.set_cost_change(change);
    let sends = stored_sends(&pool).await;
    let changed: BTreeSet<i64> = sends
        .iter()
        .filter(|s| sim.cost_changed(s.lookup()))
        .map(|s| s.id)
        .collect();
    assert!(changed.len() >= 10, "{}", changed.len());
    let mut expected_amount = Decimal::ZERO;
    let mut expected_settle: BTreeMap<String, Decimal> = BTreeMap::new();
    for s in sends.iter().filter(|s| changed.contains(&s.id)) {
        sim.set_cost_change(CostChange::default());
        let before = money_of(&Record::from_data(&sim.final_record(s.lookup()).data).unwrap());
        sim.set_cost_change(change);
        let after = money_of(&Record::from_data(&sim.final_record(s.lookup()).data).unwrap());
        expected_amount += after.0 - before.0;
        for (currency, d) in after.1 {
            *expected_settle.entry(currency).or_default() += d;
        }
        for (currency, d) in before.1 {
            *expected_settle.entry(currency).or_default() -= d;
        }
    }
    expected_settle.retain(|_, d| !d.is_zero());

    let (summary, report) = replay(&db, &client, &range).await;
    assert_eq!(summary.claimed, 2_000);
    assert_eq!(summary.checked, 2_000);
    let reported: BTreeSet<i64> = report.changed.iter().map(|c| c.send_id).collect();
    assert_eq!(reported, changed);
    assert_eq!(report.amount_difference, expected_amount);
    assert_eq!(report.settle_difference, expected_settle);
    for c in &report.changed {
        assert_ne!(c.before, c.after);
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM record_revisions WHERE pass_id = $1")
        .bind(summary.pass_id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        kept as usize,
        changed.len(),
        "the previous values are kept, tagged with the replay"
    );
    // The stored money is the provider's new money.
    assert_matches_simulator(&pool, &sim).await;

    // Idempotent: a second replay reports nothing and leaves every row as it was, even
    // for the sends it cannot re-fetch this time.
    for id in ["x-v0", "x-v1", "x-v2"] {
        sim.script(Some(id), [Fault::Http(503); 6]);
    }
    let before = snapshot(&pool).await;
    let (again, report) = replay(&db, &client, &range).await;
    assert_eq!(again.checked, 2_000);
    assert!(report.changed.is_empty(), "{:?}", report.changed);
    assert_eq!(report.amount_difference, Decimal::ZERO);
    assert_eq!(report.not_refetched, 3);
    assert_eq!(report.held_elsewhere, 0);
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test]
async fn replay_dry_run_and_report_file_from_the_binary(pool: PgPool) {
    let end = Utc::now();
    let (_db, sim) = dataset(&pool, 200, end).await;
    let from = (end - Delta::days(4)).date_naive().to_string();
    let to = (end + Delta::days(1)).date_naive().to_string();
    let requests = sim.stats().total_requests;
    let bin = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
        cmd.env("DATABASE_URL", db_url(&pool))
            .env("PROVIDER_BASE_URL", sim.base_url())
            .env("PROVIDER_API_KEY", DEMO_API_KEY)
            .env("PROVIDER_API_SECRET", DEMO_API_SECRET)
            .env("RUST_LOG", "warn")
            .args(["replay", "--from", &from, "--to", &to]);
        cmd
    };
    let mut dry = bin();
    dry.args(["--dry-run", "--rate", "50"]);
    let out = tokio::task::spawn_blocking(move || dry.output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text.contains("200 sends in range")
            && text.contains("at --rate 50/s that takes at least 4s"),
        "{text}"
    );
    assert_eq!(
        sim.stats().total_requests,
        requests,
        "a dry run calls nothing"
    );

    sim.set_cost_change(CostChange {
        share: 0.05,
        epoch: 2,
    });
    let dir = tempfile::tempdir().unwrap();
    let report_path = dir.path().join("report.json");
    let mut real = bin();
    real.arg("--report").arg(&report_path);
    let out = tokio::task::spawn_blocking(move || real.output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    let changed = report["changed"].as_array().unwrap();
    assert!(!changed.is_empty());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("{} sends changed", changed.len())),
        "{table}"
    );
    assert!(table.contains("difference in amount"), "{table}");
}

#[sqlx::test]
async fn status_shows_depth_leases_conversions_and_passes(pool: PgPool) {
    let end = Utc::now();
    let (db, sim) = dataset(&pool, 100, end).await;
    insert_sends(&db, &new_sends(7, "waiting")).await;
    // A pass that died holding five sends: its lease has run out.
    let all = otp_reconcile::db::lease::Scope::default();
    let dead = sends::claim(
        &db,
        Utc::now(),
        &claim_of(5, Duration::from_secs(60), "dead-pass", &all),
    )
    .await
    .unwrap();
    assert_eq!(dead.len(), 5);
    expire_leases(&pool, "sends").await;
    let out = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env("DATABASE_URL", db_url(&pool))
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["expired_leases"], 5);
    let pending: i64 = status["sends"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["state"] == "pending")
        .map(|d| d["sends"].as_i64().unwrap())
        .sum();
    assert_eq!(pending, 7);
    assert!(status["oldest_due"].is_string());
    assert_eq!(status["last_passes"][0]["outcome"], "done");
    assert_eq!(status["last_passes"][0]["summary"]["claimed"], 100);

    let text = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env("DATABASE_URL", db_url(&pool))
        .args(["status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("5 expired"), "{text}");
    assert!(text.contains("oldest due send"), "{text}");

    // A replay that died holding settled sends: the next pass clears those leases.
    let settled: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM sends WHERE state = 'settled' LIMIT 3")
            .fetch_all(&pool)
            .await
            .unwrap();
    sqlx::query(
        "INSERT INTO send_leases (send_id, token, owner, expires_at)
         SELECT id, gen_random_uuid(), 'dead-replay', now() - interval '1 hour'
         FROM unnest($1::bigint[]) AS id",
    )
    .bind(&settled)
    .execute(&pool)
    .await
    .unwrap();
    run_pass(
        &db,
        &client(&sim, Duration::from_secs(2)),
        &quick_settings(4),
    )
    .await;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM send_leases WHERE owner = 'dead-replay'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(left, 0);
}

#[test]
fn bad_ranges_are_usage_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )
        .args(["export", "--from", "2026-11-02", "--to", "2026-11-01"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not before"));
    let out = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .args(["export", "--from", "last week", "--to", "2026-11-01"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .env(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )
        .args([
            "replay",
            "--from",
            "2026-11-01",
            "--to",
            "2026-11-02",
            "--shard",
            "0/2",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("replay does not shard"));
}
