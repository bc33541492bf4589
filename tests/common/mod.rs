//! Shared by the integration tests: a database per test (`#[sqlx::test]`), the
//! simulator on loopback, and ways to compare what was stored with what it served.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use otp_reconcile::clock;
use otp_reconcile::config::ProviderSettings;
use otp_reconcile::db::Db;
use otp_reconcile::db::apps;
use otp_reconcile::db::sends::{self, NewSend};
use otp_reconcile::pass::{self, Deps, PassSettings, Summary};
use otp_reconcile::progress::Progress;
use otp_reconcile::provider::{ProviderClient, RetryPolicy};
use otp_reconcile::record::Record;
use otp_reconcile_simulator::{DEMO_API_KEY, DEMO_API_SECRET, Lookup, SimHandle};
use rust_decimal::Decimal;
use secrecy::SecretString;
use sqlx::{PgPool, Row};
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub const APP: &str = "app-test";

/// A loopback port nothing listens on, for as long as this lives: a socket bound to it
/// without `listen`, so a connection to it is refused and no other socket can take the
/// port. A listener bound and dropped to find a free port let another test's simulator,
/// started at the same moment, get that port, and the "dead" provider answered.
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

impl DeadPort {
    pub fn new() -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
        let port = socket.local_addr().unwrap().port();
        Self {
            _socket: socket,
            port,
        }
    }

    /// `http://127.0.0.1:{port}`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The URL of the test's own database, for the binary.
pub fn db_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    let name = pool
        .connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    url.set_path(&name);
    url.to_string()
}

pub async fn db_with_app(pool: &PgPool) -> Db {
    let db = Db::new(pool.clone());
    apps::add(&db, APP, Some("tests")).await.unwrap();
    db
}

/// `n` sends sent a minute ago: every fifth by order id, the rest by verification id.
pub fn new_sends(n: usize, prefix: &str) -> Vec<NewSend> {
    let sent_at = Utc::now() - chrono::Duration::minutes(1);
    (0..n)
        .map(|i| {
            let by_order = i % 5 == 4;
            NewSend {
                app_id: APP.into(),
                verification_id: (!by_order).then(|| format!("{prefix}-v{i}")),
                order_id: by_order.then(|| format!("{prefix}-o{i}")),
                number: Some(format!("91{:010}", 7_000_000_000u64 + i as u64)),
                channel: None,
                sent_at,
            }
        })
        .collect()
}

pub async fn insert_sends(db: &Db, sends: &[NewSend]) {
    for chunk in sends.chunks(1_000) {
        sends::insert(db, chunk).await.unwrap();
    }
}

/// Every send's id, in id order.
pub async fn send_ids(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT id FROM sends ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A client for the simulator with short timeouts.
pub fn client(sim: &SimHandle, request_timeout: Duration) -> ProviderClient {
    let mut settings = ProviderSettings::new(
        &sim.base_url(),
        DEMO_API_KEY,
        SecretString::from(DEMO_API_SECRET),
        false,
    )
    .unwrap();
    settings.request_timeout = request_timeout;
    settings.connect_timeout = Duration::from_secs(1);
    ProviderClient::new(&settings, clock::system()).unwrap()
}

/// Pass settings with short delays, for tests.
pub fn quick_settings(concurrency: usize) -> PassSettings {
    PassSettings {
        concurrency,
        write_interval: Duration::from_millis(50),
        retry: RetryPolicy {
            max_attempts: 6,
            min_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
            ..RetryPolicy::default()
        },
        ..PassSettings::default()
    }
}

/// What a pass is given in tests: this database and client, this clock, this
/// interrupt, no progress bar.
pub fn deps<'a>(
    db: &'a Db,
    client: &'a ProviderClient,
    clock: clock::SharedClock,
    interrupt: CancellationToken,
) -> Deps<'a> {
    Deps {
        db,
        client,
        clock,
        interrupt,
        progress: Progress::hidden(),
    }
}

pub async fn run_pass(db: &Db, client: &ProviderClient, settings: &PassSettings) -> Summary {
    let deps = deps(db, client, clock::system(), CancellationToken::new());
    pass::run(deps, settings)
        .await
        .expect("the pass ends without a database error")
}

/// A replay of `range` on the system clock.
pub async fn run_replay(
    db: &Db,
    client: &ProviderClient,
    settings: &PassSettings,
    range: &otp_reconcile::db::sends::Range,
) -> (Summary, otp_reconcile::db::revisions::Report) {
    let deps = deps(db, client, clock::system(), CancellationToken::new());
    pass::replay(deps, settings, range)
        .await
        .expect("the replay ends without a database error")
}

/// Waits until the simulator has received at least `n` requests: tests move on by the
/// simulator's counters, not by the wall clock. The two-minute limit only turns a pass
/// that never gets there into a failure instead of a hang.
pub async fn until_requests(sim: &SimHandle, n: u64) {
    let started = std::time::Instant::now();
    while sim.stats().total_requests < n {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the simulator never reached {n} requests"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs a pass whose clock jumps `by` ahead once the simulator has answered
/// `after_requests` requests: a test reaches `--max-runtime` (or a stage's share of
/// it) at a point of the work it chooses, however fast or loaded the machine is.
pub async fn run_pass_jumping_clock(
    db: &Db,
    client: &ProviderClient,
    settings: &PassSettings,
    sim: &SimHandle,
    after_requests: u64,
    by: Duration,
) -> Summary {
    let clock = std::sync::Arc::new(clock::AdjustableClock::default());
    let deps = deps(db, client, clock.clone(), CancellationToken::new());
    let driver = async {
        until_requests(sim, after_requests).await;
        clock.advance(by);
    };
    let (summary, ()) = tokio::join!(pass::run(deps, settings), driver);
    summary.expect("the pass ends without a database error")
}

/// A send as stored.
#[derive(Debug, Clone)]
pub struct StoredSend {
    pub id: i64,
    pub verification_id: Option<String>,
    pub order_id: Option<String>,
    pub app_id: String,
    pub state: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub lease_token: Option<uuid::Uuid>,
    pub next_check_at: DateTime<Utc>,
}

impl StoredSend {
    pub fn lookup(&self) -> Lookup<'_> {
        match (&self.verification_id, &self.order_id) {
            (Some(id), _) => Lookup::VerificationId(id),
            (None, Some(order)) => Lookup::OrderId {
                app_id: &self.app_id,
                order_id: order,
            },
            (None, None) => unreachable!("a send has an id"),
        }
    }
}

pub async fn stored_sends(pool: &PgPool) -> Vec<StoredSend> {
    sqlx::query(
        "SELECT id, verification_id, order_id, app_id, state, attempts, last_error,
                (SELECT l.token FROM send_leases l WHERE l.send_id = sends.id) AS lease_token,
                next_check_at
         FROM sends ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| StoredSend {
        id: r.get("id"),
        verification_id: r.get("verification_id"),
        order_id: r.get("order_id"),
        app_id: r.get("app_id"),
        state: r.get("state"),
        attempts: r.get("attempts"),
        last_error: r.get("last_error"),
        lease_token: r.get("lease_token"),
        next_check_at: r.get("next_check_at"),
    })
    .collect()
}

pub async fn count_by_state(pool: &PgPool) -> HashMap<String, i64> {
    sqlx::query_as("SELECT state, count(*) FROM sends GROUP BY state")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

/// One attempt's money and status, as stored or as the simulator's record has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Money {
    pub status: Option<i64>,
    pub mcc: Option<i64>,
    pub units: Option<i64>,
    pub amount: Option<Decimal>,
    pub rate: Option<Decimal>,
    pub settle_pay: Option<Decimal>,
    pub settle_price: Option<Decimal>,
    pub settle_currency: Option<String>,
    pub quote_exchange: Option<Decimal>,
}

/// Attempts by (channel, position), from the database.
pub async fn stored_money(pool: &PgPool, send_id: i64) -> HashMap<(String, i32), Money> {
    sqlx::query(
        "SELECT channel, position, status, mcc, coalesce(charge_count, charged_duration) AS units,
                amount, rate, settle_pay, settle_price, settle_currency, quote_exchange
         FROM attempts WHERE send_id = $1",
    )
    .bind(send_id)
    .fetch_all(pool)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            (r.get("channel"), r.get("position")),
            Money {
                status: r.get("status"),
                mcc: r.get("mcc"),
                units: r.get("units"),
                amount: r.get("amount"),
                rate: r.get("rate"),
                settle_pay: r.get("settle_pay"),
                settle_price: r.get("settle_price"),
                settle_currency: r.get("settle_currency"),
                quote_exchange: r.get("quote_exchange"),
            },
        )
    })
    .collect()
}

/// Attempts by (channel, position), from the simulator's record.
pub fn expected_money(record: &Record) -> HashMap<(String, i32), Money> {
    let mut out = HashMap::new();
    for (i, a) in record.sms.iter().enumerate() {
        out.insert(
            ("sms".into(), i as i32 + 1),
            Money {
                status: a.status,
                mcc: a.mcc,
                units: a.charge_cnt,
                amount: a.pay,
                rate: None,
                settle_pay: a.settlement.settle_pay,
                settle_price: a.settlement.settle_price,
                settle_currency: a.settlement.settle_currency.clone(),
                quote_exchange: a.settlement.quote_exchange,
            },
        );
    }
    for (i, a) in record.call.iter().enumerate() {
        out.insert(
            ("call".into(), i as i32 + 1),
            Money {
                status: a.termination_code,
                mcc: a.mcc,
                units: a.charged_duration,
                amount: a.cost,
                rate: a.rate,
                settle_pay: a.settlement.settle_pay,
                settle_price: a.settlement.settle_price,
                settle_currency: a.settlement.settle_currency.clone(),
                quote_exchange: a.settlement.quote_exchange,
            },
        );
    }
    for (i, a) in record.sna.iter().enumerate() {
        out.insert(
            ("sna".into(), i as i32 + 1),
            Money {
                status: a.status,
                mcc: a.mcc,
                units: None,
                amount: None,
                rate: None,
                settle_pay: a.settlement.settle_pay,
                settle_price: a.settlement.settle_price,
                settle_currency: a.settlement.settle_currency.clone(),
                quote_exchange: a.settlement.quote_exchange,
            },
        );
    }
    out
}

/// The raw JSON stored for a send.
pub async fn stored_raw(pool: &PgPool, send_id: i64) -> Option<serde_json::Value> {
    let raw: Option<String> =
        sqlx::query_scalar("SELECT raw::text FROM records WHERE send_id = $1")
            .bind(send_id)
            .fetch_optional(pool)
            .await
            .unwrap();
    raw.map(|r| serde_json::from_str(&r).unwrap())
}

/// Checks every send against the simulator's last answer for it (the stats count the
/// answers served, so the record it was served is known): a found, final record is
/// settled with its attempts' money exactly as served and its raw JSON kept; a record
/// still sending, or unknown to the provider, is re-checked. Answers how many settled.
pub async fn assert_matches_simulator(pool: &PgPool, sim: &SimHandle) -> usize {
    let stats = sim.stats();
    let mut settled = 0;
    for send in stored_sends(pool).await {
        let lookup = send.lookup();
        let answered = stats.fetches.get(&lookup.key()).map_or(0, |f| f.answered);
        assert!(answered > 0, "send {} was never answered", send.id);
        let last = sim.record(lookup, u32::try_from(answered - 1).unwrap());
        assert!(
            send.lease_token.is_none(),
            "send {} is still leased",
            send.id
        );
        if !last.found {
            // Re-checked within the grace period after sent_at, rejected after it.
            assert!(
                ["recheck", "rejected"].contains(&send.state.as_str()),
                "send {} is unknown to the provider: {}",
                send.id,
                send.state
            );
            continue;
        }
        if !last.final_answer {
            assert_eq!(send.state, "recheck", "send {} was still sending", send.id);
            continue;
        }
        assert_eq!(
            send.state, "settled",
            "send {}: {:?}",
            send.id, send.last_error
        );
        let record = Record::from_data(&last.data).unwrap();
        assert_eq!(
            stored_money(pool, send.id).await,
            expected_money(&record),
            "send {}",
            send.id
        );
        assert_eq!(
            stored_raw(pool, send.id).await.as_ref(),
            Some(&last.data),
            "send {}",
            send.id
        );
        settled += 1;
    }
    settled
}

/// Ends the database backends of a pass whose process was killed, waiting for each to
/// exit. A statement it had sent (a claim, a write) runs on in its backend after the
/// process is gone, and commits, at a moment no test can know (when Postgres finds the
/// socket closed): a test that reads or moves the pass's leases calls this first.
///
/// `pg_terminate_backend` answers false both when its wait ran out and when the backend
/// had already exited by itself (between the listing and the call: it found the
/// socket closed first), so what decides is whether any is left afterwards.
pub async fn end_dead_pass_backends(pool: &PgPool) {
    macro_rules! dead_pass {
        () => {
            " FROM pg_stat_activity
             WHERE datname = current_database() AND application_name = 'otp-reconcile'
               AND pid <> pg_backend_pid()"
        };
    }
    sqlx::query(concat!(
        "SELECT pg_terminate_backend(pid, 60000)",
        dead_pass!()
    ))
    .execute(pool)
    .await
    .unwrap();
    let left: i64 = sqlx::query_scalar(concat!("SELECT count(*)", dead_pass!()))
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "the dead pass's backends did not exit");
}

/// Moves every lease on `table` (`sends`, `conversions` or `conversion_rates`) into the
/// past on the database's clock: what waiting for them to run out would do, at once.
pub async fn expire_leases(pool: &PgPool, table: &str) -> u64 {
    let sql = match table {
        "sends" => {
            // A leased send stays due at its own time: only the lease moves.
            "UPDATE send_leases SET expires_at = now() - interval '1 second'"
        }
        "conversions" => {
            "UPDATE conversions SET lease_expires_at = now() - interval '1 second',
                                    next_attempt_at = now() - interval '1 second'
             WHERE lease_token IS NOT NULL"
        }
        "conversion_rates" => {
            "UPDATE conversion_rates SET lease_expires_at = now() - interval '1 second',
                                         next_attempt_at = now() - interval '1 second'
             WHERE lease_token IS NOT NULL"
        }
        other => panic!("{other} is not a leased table"),
    };
    sqlx::query(sql)
        .execute(pool)
        .await
        .unwrap()
        .rows_affected()
}

/// A claim of up to `limit` items for `lease`, by `owner`, in every shard and app.
pub fn claim_of<'a>(
    limit: usize,
    lease: Duration,
    owner: &'a str,
    scope: &'a otp_reconcile::db::lease::Scope,
) -> otp_reconcile::db::lease::Claim<'a> {
    otp_reconcile::db::lease::Claim {
        limit,
        lease,
        owner,
        held: &[],
        scope,
    }
}

/// A day, a settle currency and the spend, as text.
pub type SpendRow = (String, Option<String>, String);

/// Spend per day and currency as `spend_days` holds it, and as the attempts left add up.
pub async fn spend_held_and_recounted(pool: &PgPool) -> (Vec<SpendRow>, Vec<SpendRow>) {
    let held = sqlx::query_as(
        "SELECT day::text, currency, pay::text FROM spend_days WHERE attempts <> 0
         ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let recounted = sqlx::query_as(
        "SELECT (s.sent_at AT TIME ZONE 'UTC')::date::text, a.settle_currency,
                sum(a.settle_pay)::text
         FROM sends s JOIN attempts a ON a.send_id = s.id WHERE a.settle_pay IS NOT NULL
         GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    (held, recounted)
}
