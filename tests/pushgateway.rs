//! Metrics pushed to a real Pushgateway (the Debian package `prometheus-pushgateway`,
//! which `scripts/ensure-tools` installs), started by each test on an ephemeral
//! loopback port and read back from its `/metrics`; and the alert rules and dashboard
//! checked against what the job pushes. Real PostgreSQL (a database per test), the
//! simulator, and the binary.

mod common;

use common::*;
use otp_reconcile::metrics::{JOB, METRICS};
use otp_reconcile_simulator::{Faults, RecordConfig, SimConfig, SimHandle, Simulator};
use secrecy::SecretString;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "pg-key";
const SECRET: &str = "pg-secret-never-logged-5521";

/// A Pushgateway process on 127.0.0.1, killed when dropped.
struct Pushgateway {
    child: Child,
    url: String,
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary: `PUSHGATEWAY_BIN`, or where the Debian package puts it. Missing, the
/// test fails (it never skips): `scripts/test` installs it through `scripts/ensure-tools`.
fn pushgateway_bin() -> String {
    let bin = std::env::var("PUSHGATEWAY_BIN")
        .unwrap_or_else(|_| "/usr/bin/prometheus-pushgateway".into());
    assert!(
        std::path::Path::new(&bin).is_file(),
        "no Pushgateway at {bin}: run scripts/ensure-tools (scripts/test does), \
         or set PUSHGATEWAY_BIN"
    );
    bin
}

impl Pushgateway {
    /// Starts one on a free ephemeral port and waits until it answers `/-/ready`. Its
    /// routes sit under a random prefix, so a readiness answer can only come from this
    /// one (not from another test's gateway that took the same port first, in which
    /// case this one exits and another port is tried). The job pushes below that prefix
    /// as to any gateway URL with a path. It keeps nothing on disk.
    async fn start() -> Self {
        let bin = pushgateway_bin();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let prefix = uuid::Uuid::new_v4().simple().to_string();
            let mut child = Command::new(&bin)
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg(format!("--web.route-prefix=/{prefix}"))
                // In memory only: Debian's build defaults to a shared file in
                // /var/lib/prometheus, which would carry groups from run to run.
                .arg("--persistence.file=")
                .arg("--log.level=error")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
            let url = format!("http://127.0.0.1:{port}/{prefix}");
            let client = reqwest::Client::new();
            let started = Instant::now();
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // the port was taken: another one
                }
                if let Ok(r) = client.get(format!("{url}/-/ready")).send().await
                    && r.status().is_success()
                {
                    return Self { child, url };
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "the Pushgateway never became ready"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("could not start a Pushgateway on a free port")
    }

    /// The samples it serves, by metric name, of the job's groups only.
    async fn samples(&self) -> Vec<Sample> {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse(&text)
            .into_iter()
            .filter(|s| s.labels.get("job").map(String::as_str) == Some(JOB))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The Prometheus text format, as much as the Pushgateway serves (no escapes in the
/// job's label values).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once("=\"").unwrap();
                    (k.to_owned(), v.trim_end_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().unwrap(),
            }
        })
        .collect()
}

/// The one sample of `name` in group `kind`/`shard` with these extra labels.
fn value(samples: &[Sample], name: &str, group: (&str, &str), extra: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && s.labels["kind"] == group.0
                && s.labels["shard"] == group.1
                && extra
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {group:?} {extra:?}: {found:?}");
    found[0].value
}

async fn simulator() -> SimHandle {
    let mut config = SimConfig::new(43);
    config.api_key = KEY.into();
    config.api_secret = SecretString::from(SECRET);
    config.records = RecordConfig {
        sending_share: 0.0,
        not_found_share: 0.0,
        ..RecordConfig::default()
    };
    config.faults = Faults {
        latency_ms: 1,
        ..Faults::default()
    };
    Simulator::start(config).await.unwrap()
}

fn bin(pool: &PgPool, sim: &SimHandle) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
    cmd.env_remove("PROVIDER_API_SECRET_FILE")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("PUSHGATEWAY_URL")
        .env("DATABASE_URL", db_url(pool))
        .env("PROVIDER_BASE_URL", sim.base_url())
        .env("PROVIDER_API_KEY", KEY)
        .env("PROVIDER_API_SECRET", SECRET)
        .env("RUST_LOG", "info")
        .env("LOG_FORMAT", "json")
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

/// Sends sent now, so that they count in today's spend.
async fn sends_now(pool: &PgPool, n: usize, prefix: &str) {
    let db = db_with_app(pool).await;
    let mut sends = new_sends(n, prefix);
    let now = chrono::Utc::now();
    for s in &mut sends {
        s.sent_at = now;
    }
    insert_sends(&db, &sends).await;
}

#[sqlx::test]
async fn a_pass_pushes_every_metric_and_label_to_a_real_pushgateway(pool: PgPool) {
    sends_now(&pool, 30, "push").await;
    let sim = simulator().await;
    let gateway = Pushgateway::start().await;
    assert_eq!(gateway.samples().await, Vec::new(), "a fresh gateway");
    let mut cmd = bin(&pool, &sim);
    cmd.args(["run", "--pushgateway", &gateway.url]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out).matches("metrics pushed").count(), 1);

    let samples = gateway.samples().await;
    let group = ("run", "all");
    // Every metric of the registry is there, in the group job/kind/shard only.
    let pushed: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for metric in METRICS {
        assert!(pushed.contains(metric.name), "{} not pushed", metric.name);
    }
    for s in &samples {
        let mut keys: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
        for key in ["job", "kind", "shard", "instance"] {
            assert!(keys.remove(key) || key == "instance", "{s:?} has no {key}");
        }
        let allowed: BTreeSet<&str> = METRICS
            .iter()
            .find(|m| m.name == s.name)
            .map_or(BTreeSet::new(), |m| m.labels.iter().copied().collect());
        assert_eq!(keys, allowed, "labels of {s:?}");
        if s.name.starts_with("otp_reconcile_") {
            assert_eq!(s.labels["kind"], "run");
            assert_eq!(s.labels["shard"], "all", "{s:?} of {}", gateway.url);
        }
    }
    // The Pushgateway's own per-group series, and nothing but ours besides.
    assert!(pushed.contains("push_time_seconds"));
    for name in &pushed {
        assert!(
            name.starts_with("otp_reconcile_")
                || ["push_time_seconds", "push_failure_time_seconds"].contains(name),
            "{name}"
        );
    }

    // The values: the pass's counts, as the summary and the database have them.
    let v = |name: &str| value(&samples, name, group, &[]);
    assert_eq!(v("otp_reconcile_pass_claimed"), 30.0);
    assert_eq!(v("otp_reconcile_pass_checked"), 30.0);
    assert_eq!(v("otp_reconcile_pass_settled"), 30.0);
    assert_eq!(v("otp_reconcile_pass_rechecks"), 0.0);
    assert_eq!(v("otp_reconcile_pass_rejected"), 0.0);
    assert_eq!(v("otp_reconcile_pass_expired"), 0.0);
    assert_eq!(v("otp_reconcile_pass_released"), 0.0);
    assert_eq!(v("otp_reconcile_pass_retries"), 0.0);
    assert_eq!(
        v("otp_reconcile_pass_requests"),
        sim.stats().total_requests as f64
    );
    assert!(v("otp_reconcile_pass_duration_seconds") > 0.0);
    assert!(v("otp_reconcile_pass_db_statements") > 0.0);
    assert_eq!(
        value(
            &samples,
            "otp_reconcile_pass_ended",
            group,
            &[("ended", "done")]
        ),
        1.0
    );
    let ended_at = v("otp_reconcile_pass_end_timestamp_seconds");
    assert_eq!(v("otp_reconcile_last_success_timestamp_seconds"), ended_at);
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        ended_at <= now + 1.0 && ended_at > now - 600.0,
        "{ended_at}"
    );
    // The queue after the pass.
    // Not final: counted exactly. Final: the planner's estimate (never a count over the
    // history), at most what there is.
    let state = |s: &str| value(&samples, "otp_reconcile_sends", group, &[("state", s)]);
    for s in ["pending", "recheck"] {
        assert_eq!(state(s), 0.0, "{s}");
    }
    for s in ["settled", "rejected", "expired"] {
        assert!((0.0..=30.0).contains(&state(s)), "{s}: {}", state(s));
    }
    assert_eq!(v("otp_reconcile_sends_due"), 0.0);
    assert_eq!(v("otp_reconcile_oldest_due_age_seconds"), 0.0);
    assert_eq!(v("otp_reconcile_leases_expired"), 0.0);
    assert_eq!(v("otp_reconcile_conversions_pending"), 0.0);
    assert_eq!(v("otp_reconcile_conversions_in_doubt"), 0.0);
    // Today's spend per currency, against the attempts in the database (today: the
    // UTC day of the pushed end of the pass).
    let day_start = (ended_at as i64).div_euclid(86_400) * 86_400;
    let expected: Vec<(Option<String>, rust_decimal::Decimal)> = sqlx::query_as(
        "SELECT a.settle_currency, sum(a.settle_pay) FROM sends s JOIN attempts a ON a.send_id = s.id
         WHERE s.sent_at >= to_timestamp($1) AND a.settle_pay IS NOT NULL GROUP BY 1",
    )
    .bind(day_start as f64)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(!expected.is_empty(), "the simulator's records carry a cost");
    let spend: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "otp_reconcile_spend_today")
        .collect();
    assert_eq!(spend.len(), expected.len(), "{spend:?}");
    for (currency, amount) in expected {
        let currency = currency.unwrap_or_else(|| "unknown".into());
        let pushed = value(
            &samples,
            "otp_reconcile_spend_today",
            group,
            &[("currency", &currency)],
        );
        let amount: f64 = amount.to_string().parse().unwrap();
        assert!(
            (pushed - amount).abs() < 1e-6,
            "{currency}: {pushed} vs {amount}"
        );
    }
}

#[sqlx::test]
async fn a_failed_pass_keeps_the_last_success_and_shards_and_replays_keep_their_groups(
    pool: PgPool,
) {
    sends_now(&pool, 40, "groups").await;
    let sim = simulator().await;
    let gateway = Pushgateway::start().await;
    for shard in ["0/2", "1/2"] {
        let mut cmd = bin(&pool, &sim);
        cmd.args(["run", "--shard", shard, "--pushgateway", &gateway.url]);
        let out = output(cmd).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    }
    let samples = gateway.samples().await;
    let claimed_0 = value(
        &samples,
        "otp_reconcile_pass_claimed",
        ("run", "0-of-2"),
        &[],
    );
    let claimed_1 = value(
        &samples,
        "otp_reconcile_pass_claimed",
        ("run", "1-of-2"),
        &[],
    );
    assert_eq!(claimed_0 + claimed_1, 40.0, "each shard its own group");
    assert!(claimed_0 > 0.0 && claimed_1 > 0.0);
    let success_0 = value(
        &samples,
        "otp_reconcile_last_success_timestamp_seconds",
        ("run", "0-of-2"),
        &[],
    );

    // A replay has its own group: the runs' groups are untouched.
    let mut cmd = bin(&pool, &sim);
    let today = chrono::Utc::now().date_naive();
    cmd.args([
        "replay",
        "--from",
        &today.pred_opt().unwrap().to_string(),
        "--to",
        &today.succ_opt().unwrap().to_string(),
        "--pushgateway",
        &gateway.url,
    ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let samples = gateway.samples().await;
    assert_eq!(
        value(
            &samples,
            "otp_reconcile_pass_claimed",
            ("replay", "all"),
            &[]
        ),
        40.0
    );
    assert_eq!(
        value(
            &samples,
            "otp_reconcile_pass_claimed",
            ("run", "0-of-2"),
            &[]
        ),
        claimed_0
    );

    // A pass refused by the provider (wrong secret) pushes how it ended, and the last
    // success stays what it was.
    let due: u64 = sqlx::query("UPDATE sends SET state = 'recheck', next_check_at = now()")
        .execute(&pool)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(due, 40);
    let mut cmd = bin(&pool, &sim);
    cmd.env("PROVIDER_API_SECRET", "wrong").args([
        "run",
        "--shard",
        "0/2",
        "--pushgateway",
        &gateway.url,
    ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let samples = gateway.samples().await;
    let group = ("run", "0-of-2");
    assert_eq!(
        value(
            &samples,
            "otp_reconcile_pass_ended",
            group,
            &[("ended", "credentials_refused")]
        ),
        1.0
    );
    let ended: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "otp_reconcile_pass_ended" && s.labels["shard"] == "0-of-2")
        .collect();
    assert_eq!(
        ended.len(),
        1,
        "the old `done` series is replaced: {ended:?}"
    );
    assert_eq!(
        value(
            &samples,
            "otp_reconcile_last_success_timestamp_seconds",
            group,
            &[]
        ),
        success_0
    );
    assert!(
        value(
            &samples,
            "otp_reconcile_pass_end_timestamp_seconds",
            group,
            &[]
        ) >= success_0
    );
    assert!(value(&samples, "otp_reconcile_sends_due", group, &[]) > 0.0);
}

#[sqlx::test]
async fn a_failed_push_is_logged_once_never_fails_the_pass_and_hides_credentials(pool: PgPool) {
    sends_now(&pool, 5, "down").await;
    let sim = simulator().await;
    // Nothing listens on this port.
    let dead = DeadPort::new();
    let port = dead.port;
    let mut cmd = bin(&pool, &sim);
    cmd.args([
        "run",
        "--pushgateway",
        &format!("http://pusher:gw-pass-8812@127.0.0.1:{port}/"),
    ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let logs = stderr(&out);
    assert_eq!(logs.matches("cannot push the metrics").count(), 1, "{logs}");
    assert!(logs.contains("pusher:***@127.0.0.1"), "{logs}");
    assert!(!logs.contains("gw-pass-8812"), "{logs}");

    // A gateway that answers, behind a URL with credentials (sent as basic auth,
    // never logged); the database and provider URLs with passwords too (trust auth and
    // the simulator ignore them).
    let gateway = Pushgateway::start().await;
    let with_password = |url: &str, secret: &str| {
        let mut url = url::Url::parse(url).unwrap();
        if url.username().is_empty() {
            url.set_username("someone").unwrap();
        }
        url.set_password(Some(secret)).unwrap();
        url.to_string()
    };
    sqlx::query("UPDATE sends SET state = 'recheck', next_check_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    let mut cmd = bin(&pool, &sim);
    cmd.env("RUST_LOG", "debug")
        .env(
            "DATABASE_URL",
            with_password(&db_url(&pool), "db-pass-4471"),
        )
        .env(
            "PROVIDER_BASE_URL",
            with_password(&sim.base_url(), "prov-pass-9043"),
        )
        .args([
            "run",
            "--pushgateway",
            &with_password(&gateway.url, "gw-pass-8812"),
        ]);
    let out = output(cmd).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let logs = stderr(&out);
    assert!(logs.contains("metrics pushed"), "{logs}");
    assert!(logs.contains("someone:***@127.0.0.1"), "{logs}");
    for secret in ["gw-pass-8812", "db-pass-4471", "prov-pass-9043"] {
        assert!(!logs.contains(secret), "{secret} in the logs: {logs}");
    }
    let samples = gateway.samples().await;
    assert_eq!(
        value(&samples, "otp_reconcile_pass_checked", ("run", "all"), &[]),
        5.0
    );

    // A provider URL refused by the configuration check is named without its password.
    let mut cmd = bin(&pool, &sim);
    cmd.env(
        "PROVIDER_BASE_URL",
        "http://someone:prov-pass-9043@provider.example/",
    )
    .arg("run");
    let out = output(cmd).await;
    let logs = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{logs}");
    assert!(
        logs.contains("http://someone:***@provider.example/"),
        "{logs}"
    );
    assert!(!logs.contains("prov-pass-9043"), "{logs}");

    // A provider that cannot be reached: the failure, in the logs, names the URL without
    // the password (reqwest moves the credentials to a header; `redact::reqwest_error`
    // would mask any left). A provider that has answered nothing is an outage, not a
    // check: the sends are given back untouched (see tests/resilience.rs).
    let mut cmd = bin(&pool, &sim);
    sqlx::query("UPDATE sends SET state = 'recheck', next_check_at = now()")
        .execute(&pool)
        .await
        .unwrap();
    cmd.env(
        "PROVIDER_BASE_URL",
        format!("http://someone:prov-pass-9043@127.0.0.1:{port}/"),
    )
    .env("RUST_LOG", "debug")
    .args(["run", "--max-attempts", "1"]);
    let out = output(cmd).await;
    let logs = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{logs}");
    assert!(!logs.contains("prov-pass-9043"), "{logs}");
    assert!(logs.contains(&format!("127.0.0.1:{port}")), "{logs}");
    let errors: Vec<Option<String>> = sqlx::query_scalar("SELECT last_error FROM sends")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        errors,
        vec![None; 5],
        "released untouched, no check counted"
    );
}
