//! The reconcile pass, driven through the library against real PostgreSQL (a fresh
//! database per test) and the simulator.

mod common;

use common::*;
use otp_reconcile::clock::{self, SkewedClock};
use otp_reconcile::config::ProviderSettings;
use otp_reconcile::db::Db;
use otp_reconcile::db::records;
use otp_reconcile::db::sends::{self, Completing, Completion, SendState};
use otp_reconcile::pass::Ended;
use otp_reconcile::provider::ProviderClient;
use otp_reconcile::record::Fetched;
use otp_reconcile_simulator::{Fault, FaultRates, Faults, RecordConfig, SimConfig, Simulator};
use secrecy::SecretString;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

/// Faults of a fixed latency only.
fn latency(ms: u64) -> Faults {
    Faults {
        latency_ms: ms,
        ..Faults::default()
    }
}

async fn simulator(records: RecordConfig, faults: Faults) -> otp_reconcile_simulator::SimHandle {
    let mut config = SimConfig::new(11);
    config.records = records;
    config.faults = faults;
    Simulator::start(config).await.unwrap()
}

#[sqlx::test]
async fn a_pass_through_5xx_stalls_malformed_json_and_429_bursts_settles_every_final_record(
    pool: PgPool,
) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(5_000, "f")).await;
    let sim = simulator(
        RecordConfig::default(),
        Faults {
            // 429 bursts: above 1,500 requests a second the simulator answers 429.
            rate_limit: Some(1_500),
            rate_burst: Some(200),
            // Held past the client's timeout, so a stall is a timeout.
            stall_ms: Some(10_000),
            rates: FaultRates {
                http_500: 0.025,
                http_503: 0.025,
                stall: 0.02,
                malformed: 0.01,
                ..FaultRates::default()
            },
            ..Faults::default()
        },
    )
    .await;
    // A burst of 429s whatever the machine's speed: a loaded machine never reaches the
    // rate limit above, so the next 100 requests are answered 429 (Retry-After: 1).
    const BURST: u64 = 100;
    sim.script(
        None,
        (0..BURST).map(|_| Fault::TooManyRequests { retry_after: 1 }),
    );
    // Generous: only stalls time out, never an answer a busy machine was slow to give.
    let client = client(&sim, Duration::from_secs(5));
    let summary = run_pass(&db, &client, &quick_settings(64)).await;

    assert_eq!(summary.ended, Ended::Done);
    assert_eq!(summary.claimed, 5_000);
    assert_eq!(summary.checked, 5_000);
    let stats = sim.stats();
    for fault in ["http_500", "http_503", "stall", "malformed"] {
        let seen: u64 = stats.answers.values().filter_map(|a| a.get(fault)).sum();
        assert!(seen > 0, "the simulator injected no {fault}");
    }
    let limited: u64 = stats
        .answers
        .values()
        .filter_map(|a| a.get("http_429"))
        .sum();
    // Every 429 the simulator counted, the scripted burst and any the rate limit added.
    assert!(
        limited >= BURST,
        "{limited} answers 429, fewer than the burst"
    );
    let settled = assert_matches_simulator(&pool, &sim).await;
    assert_eq!(settled as u64, summary.settled);
    assert!(settled > 4_000, "{settled}");
}

#[sqlx::test]
async fn two_passes_at_once_never_fetch_a_final_record_twice(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(5_000, "c")).await;
    let sim = simulator(RecordConfig::default(), latency(2)).await;
    let client = client(&sim, Duration::from_secs(2));
    let mut first = quick_settings(32);
    first.owner = "pass-a".into();
    first.batch_size = 200;
    let mut second = first.clone();
    second.owner = "pass-b".into();
    let (a, b) = tokio::join!(
        run_pass(&db, &client, &first),
        run_pass(&db, &client, &second)
    );

    assert_eq!(
        a.claimed + b.claimed,
        5_000,
        "every send claimed once: {} + {}",
        a.claimed,
        b.claimed
    );
    assert!(
        a.claimed > 0 && b.claimed > 0,
        "both passes worked: {} / {}",
        a.claimed,
        b.claimed
    );
    let stats = sim.stats();
    assert!(
        stats.duplicates.final_fetches.is_empty(),
        "{:?}",
        stats.duplicates.final_fetches
    );
    assert_eq!(stats.fetches.len(), 5_000);
    assert!(stats.fetches.values().all(|f| f.requests == 1));
    assert_matches_simulator(&pool, &sim).await;
}

#[sqlx::test]
async fn a_second_pass_over_settled_sends_calls_nothing(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(300, "s")).await;
    let sim = simulator(
        RecordConfig {
            sending_share: 0.0,
            not_found_share: 0.0,
            ..RecordConfig::default()
        },
        Faults::default(),
    )
    .await;
    let client = client(&sim, Duration::from_secs(2));
    let first = run_pass(&db, &client, &quick_settings(16)).await;
    assert_eq!(first.settled, 300);
    let requests = sim.stats().total_requests;
    let changed_before: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&pool)
        .await
        .unwrap();

    let second = run_pass(&db, &client, &quick_settings(16)).await;
    assert_eq!((second.claimed, second.requests), (0, 0));
    assert_eq!(sim.stats().total_requests, requests, "no provider call");
    let changed_after: i64 = sqlx::query_scalar("SELECT count(*) FROM records")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(changed_before, changed_after);
}

#[sqlx::test]
async fn still_sending_and_unknown_ids_come_back_later_and_then_settle_or_are_rejected(
    pool: PgPool,
) {
    let db = db_with_app(&pool).await;
    let mut batch = new_sends(200, "later");
    batch[0].verification_id = Some("missing-one".into());
    batch[0].order_id = None;
    // Sent an hour ago: past the 15-minute grace for ids the provider does not know.
    batch[1].verification_id = Some("missing-old".into());
    batch[1].order_id = None;
    batch[1].sent_at = chrono::Utc::now() - chrono::Duration::hours(1);
    insert_sends(&db, &batch).await;
    let sim = simulator(
        RecordConfig {
            sending_share: 0.5,
            not_found_share: 0.0,
            ..RecordConfig::default()
        },
        Faults::default(),
    )
    .await;
    let client = client(&sim, Duration::from_secs(2));
    let first = run_pass(&db, &client, &quick_settings(16)).await;
    assert!(first.recheck_reasons.still_sending > 50, "{first:?}");
    assert_eq!(first.recheck_reasons.not_yet_visible, 1);
    assert_eq!(first.rejected, 1);
    let old = stored_sends(&pool)
        .await
        .into_iter()
        .find(|s| s.verification_id.as_deref() == Some("missing-old"))
        .unwrap();
    assert_eq!(old.state, "rejected");
    assert!(old.last_error.unwrap().contains("matched 3"));

    // Two minutes later (a clock ahead, not a sleep) the re-checks are due.
    let later = Arc::new(SkewedClock(chrono::Duration::minutes(3)));
    let summary = otp_reconcile::pass::run(
        deps(&db, &client, later, Default::default()),
        &quick_settings(16),
    )
    .await
    .unwrap();
    assert_eq!(summary.claimed, first.rechecks);
    assert_eq!(summary.settled, first.recheck_reasons.still_sending);
    let states = count_by_state(&pool).await;
    assert_eq!(states.get("settled").copied(), Some(198));
}

#[sqlx::test]
async fn bad_answers_are_kept_for_a_recheck_with_the_problem_and_the_rest_goes_on(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(100, "bad")).await;
    let sim = simulator(
        RecordConfig {
            sending_share: 0.0,
            not_found_share: 0.0,
            ..RecordConfig::default()
        },
        Faults {
            stall_ms: Some(1_000),
            ..Faults::default()
        },
    )
    .await;
    // Malformed every time, a record that does not parse, an answer too large.
    sim.script(Some("bad-v0"), [Fault::Malformed; 6]);
    sim.script(Some("bad-v1"), [Fault::Truncated; 6]);
    sim.script(Some("bad-v2"), [Fault::BadRecord]);
    sim.script(Some("bad-v3"), [Fault::Oversized]);
    sim.script(Some("bad-v5"), [Fault::Status(-22)]);
    let client = client(&sim, Duration::from_secs(2));
    let summary = run_pass(&db, &client, &quick_settings(16)).await;
    assert_eq!(summary.settled, 95);
    assert_eq!(summary.recheck_reasons.transient, 2);
    assert_eq!(summary.recheck_reasons.unreadable, 2);
    assert_eq!(summary.rejected, 1);
    let sends = stored_sends(&pool).await;
    let error = |id: &str| {
        sends
            .iter()
            .find(|s| s.verification_id.as_deref() == Some(id))
            .unwrap()
            .last_error
            .clone()
            .unwrap()
    };
    assert!(
        error("bad-v0").contains("malformed answer"),
        "{}",
        error("bad-v0")
    );
    assert!(error("bad-v1").contains("malformed answer"));
    assert!(
        error("bad-v2").contains("\"1e5\"") || error("bad-v2").contains("verifiedDate"),
        "{}",
        error("bad-v2")
    );
    assert!(error("bad-v3").contains("larger than"));
    assert!(error("bad-v5").contains("-22"));
    assert_eq!(
        sim.stats().fetches["bad-v0"].requests,
        6,
        "retried up to --max-attempts"
    );
}

#[sqlx::test]
async fn an_answer_the_database_cannot_store_is_kept_for_a_recheck_and_the_pass_goes_on(
    pool: PgPool,
) {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(4, "nul")).await;
    // A provider whose every record has a NUL in a text field and a number PostgreSQL's
    // numeric cannot hold.
    let provider = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string(
            r#"{"status":"0","reason":"ok\u0000","data":{"verifications":{"matched":0},"sms":{"pay":"0.1","status":0,"sender":"a\u0000b"},"x":1e1000000}}"#,
        ))
        .mount(&provider)
        .await;
    let client = ProviderClient::new(
        &ProviderSettings::new(&provider.uri(), "k", SecretString::from("s"), false).unwrap(),
        clock::system(),
    )
    .unwrap();
    let mut settings = quick_settings(4);
    settings.rates = None;
    let summary = run_pass(&db, &client, &settings).await;
    assert_eq!(summary.ended, Ended::Done, "{:?}", summary.error);
    assert_eq!(summary.recheck_reasons.unreadable, 4);
    for send in stored_sends(&pool).await {
        assert_eq!(send.state, "recheck");
        assert!(
            send.last_error.unwrap().contains("NUL"),
            "the problem is kept"
        );
    }
}

#[sqlx::test]
async fn refused_credentials_stop_the_pass_after_at_most_concurrency_requests(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(2_000, "auth")).await;
    let sim = simulator(RecordConfig::default(), latency(5)).await;
    let wrong = ProviderClient::new(
        &ProviderSettings::new(
            &sim.base_url(),
            "not-our-key",
            SecretString::from("x"),
            false,
        )
        .unwrap(),
        clock::system(),
    )
    .unwrap();
    let summary = run_pass(&db, &wrong, &quick_settings(8)).await;
    assert_eq!(summary.ended, Ended::CredentialsRefused);
    let requests = sim.stats().total_requests;
    assert!(
        (1..=8).contains(&requests),
        "{requests} requests with --concurrency 8"
    );
    assert_eq!(summary.checked, 0);
    assert_eq!(summary.released, summary.claimed);
    for send in stored_sends(&pool).await {
        assert_eq!(
            (send.attempts, send.state.as_str()),
            (0, "pending"),
            "send {}",
            send.id
        );
        assert!(send.lease_token.is_none());
        assert!(
            send.next_check_at <= chrono::Utc::now(),
            "due again at once"
        );
    }
    let (outcome, error): (String, Option<String>) =
        sqlx::query_as("SELECT outcome, error FROM passes")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(outcome, "credentials_refused");
    assert!(error.unwrap().contains("-1"));
}

#[sqlx::test]
async fn max_runtime_releases_what_has_not_started(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(1_000, "slow")).await;
    let sim = simulator(RecordConfig::default(), latency(100)).await;
    let client = client(&sim, Duration::from_secs(2));
    let mut settings = quick_settings(4);
    settings.batch_size = 50;
    // The deadline is reached on the pass's clock once 20 records have been served:
    // at 100 ms each, four at a time, most of the 1,000 have not started.
    settings.max_runtime = Some(Duration::from_secs(3_600));
    let summary = run_pass_jumping_clock(
        &db,
        &client,
        &settings,
        &sim,
        20,
        Duration::from_secs(3_600),
    )
    .await;
    assert_eq!(summary.ended, Ended::MaxRuntime);
    assert!(
        summary.checked > 0 && summary.checked < 1_000,
        "{summary:?}"
    );
    assert_eq!(summary.checked + summary.released, summary.claimed);
    let leased: i64 = sqlx::query_scalar("SELECT count(*) FROM send_leases")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(leased, 0);
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sends WHERE state = 'pending' AND attempts = 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(pending as u64, 1_000 - summary.checked);
}

/// A pass's claims of due sends go on from where the last stopped (a keyset, so a
/// claim does not walk over what the pass holds), and still take what came due behind
/// it: a dead pass's leases that ran out are claimed once the sends after the keyset
/// run short, and the claims end only when nothing is due anywhere.
#[sqlx::test]
async fn due_claims_go_on_from_the_last_and_come_back_for_what_came_due_behind(pool: PgPool) {
    let db = db_with_app(&pool).await;
    // Ten sends due at the same time: the keyset orders them by id.
    insert_sends(&db, &new_sends(10, "keyset")).await;
    let ids = send_ids(&pool).await;
    // In id order: a claim's rows come back in no order SQL promises.
    let ids_of = |claimed: &[sends::Claimed]| -> Vec<i64> {
        let mut ids: Vec<i64> = claimed.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        ids
    };
    let now = chrono::Utc::now();
    let all = otp_reconcile::db::lease::Scope::default();
    let lease = Duration::from_secs(60);
    // A pass that dies holding the first three.
    let dead = sends::claim(&db, now, &claim_of(3, lease, "dead-pass", &all))
        .await
        .unwrap();
    assert_eq!(ids_of(&dead), ids[..3]);

    let claims = sends::DueClaims::default();
    let ours = claim_of(4, lease, "our-pass", &all);
    let first = claims.claim(&db, now, &ours).await.unwrap();
    assert_eq!(ids_of(&first), ids[3..7]);
    // The dead pass's leases run out (on the database's clock), behind the keyset.
    let expired = sqlx::query(
        "UPDATE send_leases SET expires_at = now() - interval '1 second' WHERE owner = 'dead-pass'",
    )
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(expired, 3);
    // The three after the keyset first, then one from the start for the rest.
    let second = claims.claim(&db, now, &ours).await.unwrap();
    assert_eq!(ids_of(&second), [ids[0], ids[7], ids[8], ids[9]]);
    // Then on from that one: the last two behind, and then nothing is due anywhere.
    let third = claims.claim(&db, now, &ours).await.unwrap();
    assert_eq!(ids_of(&third), [ids[1], ids[2]]);
    assert!(claims.claim(&db, now, &ours).await.unwrap().is_empty());
    // Every send is ours now, each under one lease.
    let leases: Vec<(i64, String)> =
        sqlx::query_as("SELECT send_id, owner FROM send_leases ORDER BY send_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let expected: Vec<(i64, String)> = ids.iter().map(|id| (*id, "our-pass".into())).collect();
    assert_eq!(leases, expected);
}

#[sqlx::test]
async fn a_late_finisher_never_overwrites_a_send_claimed_again(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(10, "lease")).await;
    let now = chrono::Utc::now();
    let all = otp_reconcile::db::lease::Scope::default();
    let first = sends::claim(
        &db,
        now,
        &claim_of(10, Duration::from_secs(60), "slow-pass", &all),
    )
    .await
    .unwrap();
    assert_eq!(first.len(), 10);
    // Nothing is due while the lease holds.
    let other = claim_of(10, Duration::from_secs(60), "other", &all);
    assert!(sends::claim(&db, now, &other).await.unwrap().is_empty());
    // After it expires (on the database's clock) another pass claims them.
    assert_eq!(expire_leases(&pool, "sends").await, 10);
    let later = now + chrono::Duration::seconds(61);
    let second = sends::claim(&db, later, &other).await.unwrap();
    assert_eq!(second.len(), 10);

    let complete = |claimed: &[sends::Claimed], state: SendState| -> Vec<Completion> {
        claimed
            .iter()
            .map(|c| Completion {
                id: c.id,
                lease: c.lease,
                state,
                next_check_at: later,
                last_error: None,
            })
            .collect()
    };
    let mut tx = pool.begin().await.unwrap();
    let held = sends::complete(
        &mut tx,
        later,
        &complete(&first, SendState::Rejected),
        Completing::Pass,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert!(held.is_empty(), "the late finisher holds nothing");
    let mut tx = pool.begin().await.unwrap();
    let held = sends::complete(
        &mut tx,
        later,
        &complete(&second, SendState::Settled),
        Completing::Pass,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(held.len(), 10);
    assert_eq!(
        count_by_state(&pool).await.get("settled").copied(),
        Some(10)
    );
}

/// The row versions and due times of the sends, by id: a claim must leave them alone.
async fn send_versions(pool: &PgPool) -> Vec<(i64, String, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as("SELECT id, xmin::text, next_check_at FROM sends ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test]
async fn a_claim_writes_no_send_and_never_waits_for_a_lease_being_ended(pool: PgPool) {
    let db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(10, "skip")).await;
    let now = chrono::Utc::now();
    let all = otp_reconcile::db::lease::Scope::default();
    let before = send_versions(&pool).await;
    let first = sends::claim(
        &db,
        now,
        &claim_of(10, Duration::from_secs(60), "first-pass", &all),
    )
    .await
    .unwrap();
    assert_eq!(first.len(), 10);
    // The leases are rows of their own: every send keeps its version and its due time.
    assert_eq!(send_versions(&pool).await, before);
    let leases: i64 =
        sqlx::query_scalar("SELECT count(*) FROM send_leases WHERE owner = 'first-pass'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(leases, 10);

    // The leases run out while the first pass is writing five of its sends: their
    // completion holds their leases (uncommitted) when another pass claims.
    assert_eq!(expire_leases(&pool, "sends").await, 10);
    let completion = |claimed: &[sends::Claimed]| -> Vec<Completion> {
        claimed
            .iter()
            .map(|c| Completion {
                id: c.id,
                lease: c.lease,
                state: SendState::Settled,
                next_check_at: now,
                last_error: None,
            })
            .collect()
    };
    let (writing, idle) = first.split_at(5);
    let mut tx = pool.begin().await.unwrap();
    let written = sends::complete(&mut tx, now, &completion(writing), Completing::Pass)
        .await
        .unwrap();
    assert_eq!(written.len(), 5);
    // A claim that waited for those locks would never return while `tx` is open: the
    // guard only turns such a hang into a failure.
    let other = claim_of(10, Duration::from_secs(60), "other-pass", &all);
    let taken = tokio::time::timeout(Duration::from_secs(120), sends::claim(&db, now, &other))
        .await
        .expect("the claim waited for a lease being ended")
        .unwrap();
    let mut taken_ids: Vec<i64> = taken.iter().map(|c| c.id).collect();
    taken_ids.sort_unstable();
    let idle_ids: Vec<i64> = idle.iter().map(|c| c.id).collect();
    assert_eq!(
        taken_ids, idle_ids,
        "only the expired leases no one was ending"
    );
    tx.commit().await.unwrap();

    // The first pass finishing the others late writes nothing: their leases are taken.
    let mut tx = pool.begin().await.unwrap();
    let late = sends::complete(&mut tx, now, &completion(idle), Completing::Pass)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(late.is_empty());
    let counts = count_by_state(&pool).await;
    assert_eq!(
        (
            counts.get("settled").copied(),
            counts.get("pending").copied()
        ),
        (Some(5), Some(5))
    );
    let holders: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT owner FROM send_leases ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(holders, ["other-pass"]);
    // Given back unchecked, the other pass's sends are due when they were before.
    let released = otp_reconcile::db::lease::release(&db, &sends::DUE, now, &taken)
        .await
        .unwrap();
    assert_eq!(released, 5);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM send_leases")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let due_again: Vec<(i64, String, chrono::DateTime<chrono::Utc>)> = send_versions(&pool)
        .await
        .into_iter()
        .filter(|(id, _, _)| idle_ids.contains(id))
        .collect();
    let due_before: Vec<_> = before
        .into_iter()
        .filter(|(id, _, _)| idle_ids.contains(id))
        .collect();
    assert_eq!(due_again, due_before, "released sends are as they were");
}

/// Three sends (`{prefix}-v0` to `-v2`) and the simulator's final records of them, as
/// the pass reads them.
async fn three_sends_and_their_records(pool: &PgPool, prefix: &str) -> (Vec<i64>, Vec<Fetched>) {
    let db = db_with_app(pool).await;
    insert_sends(&db, &new_sends(3, prefix)).await;
    let sim = simulator(RecordConfig::default(), Faults::default()).await;
    let fetched = (0..3)
        .map(|i| {
            let id = format!("{prefix}-v{i}");
            let data = sim
                .final_record(otp_reconcile_simulator::Lookup::VerificationId(&id))
                .data;
            Fetched::from_data(data).unwrap()
        })
        .collect();
    (send_ids(pool).await, fetched)
}

#[sqlx::test]
async fn storing_an_unchanged_answer_writes_nothing(pool: PgPool) {
    let (ids, fetched) = three_sends_and_their_records(&pool, "idem").await;
    let batch: Vec<(i64, &Fetched)> = ids.iter().copied().zip(fetched.iter()).collect();
    let now = chrono::Utc::now();
    let mut tx = pool.begin().await.unwrap();
    let first = records::store(&mut tx, now, &batch, &ids).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(first.records, 3);
    assert!(first.attempts >= 3);
    let mut tx = pool.begin().await.unwrap();
    let again = records::store(&mut tx, now, &batch, &ids).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        again,
        records::Stored::default(),
        "nothing written the second time"
    );

    // A record that lost an attempt loses its row.
    let mut shorter = fetched[0].clone();
    let had = shorter.record.sms.len() + shorter.record.call.len() + shorter.record.sna.len();
    shorter.record.sms.clear();
    shorter.record.call.clear();
    shorter.record.sna.clear();
    shorter.raw = shorter.raw.replacen('{', "{\"changed\":true,", 1);
    let mut tx = pool.begin().await.unwrap();
    let changed = records::store(&mut tx, now, &[(ids[0], &shorter)], &ids)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(changed.records, 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts WHERE send_id = $1")
        .bind(ids[0])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((left, had > 0), (0, true));
}

#[sqlx::test]
async fn first_checks_are_inserted_and_one_stored_before_goes_through_the_upsert(pool: PgPool) {
    let (ids, fetched) = three_sends_and_their_records(&pool, "first").await;
    let batch: Vec<(i64, &Fetched)> = ids.iter().copied().zip(fetched.iter()).collect();
    let now = chrono::Utc::now();
    let mut tx = pool.begin().await.unwrap();
    let first = records::store_new(&mut tx, now, &batch, &ids)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let attempts: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((first.records, first.attempts), (3, attempts as u64));
    assert!(attempts >= 3);
    let (held, recounted) = spend_held_and_recounted(&pool).await;
    assert!(!recounted.is_empty());
    assert_eq!(held, recounted);

    // Sends that look new but have their records (state and checks reset by hand): the
    // inserts fail, the batch goes back to the savepoint and through the upserts, and
    // the transaction goes on. One answer changed and lost its attempts.
    let mut shorter = fetched[0].clone();
    shorter.record.sms.clear();
    shorter.record.call.clear();
    shorter.record.sna.clear();
    shorter.raw = shorter.raw.replacen('{', "{\"changed\":true,", 1);
    let again: Vec<(i64, &Fetched)> = vec![
        (ids[0], &shorter),
        (ids[1], &fetched[1]),
        (ids[2], &fetched[2]),
    ];
    let mut tx = pool.begin().await.unwrap();
    let stored = records::store_new(&mut tx, now, &again, &ids)
        .await
        .unwrap();
    let raw: String = sqlx::query_scalar("SELECT raw::text FROM records WHERE send_id = $1")
        .bind(ids[0])
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(stored.records, 1, "only the changed record is written");
    assert!(raw.contains("\"changed\":true"));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM attempts WHERE send_id = $1")
        .bind(ids[0])
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
    let (held, recounted) = spend_held_and_recounted(&pool).await;
    assert_eq!(held, recounted);
}

#[sqlx::test]
async fn the_schema_rejects_what_import_would_reject(pool: PgPool) {
    let db = db_with_app(&pool).await;
    for (sql, why) in [
        (
            "INSERT INTO sends (app_id, sent_at) VALUES ('app-test', now())",
            "sends_has_an_id",
        ),
        (
            "INSERT INTO sends (app_id, verification_id, sent_at) VALUES ('unknown-app', 'v', now())",
            "foreign key",
        ),
        (
            "INSERT INTO sends (app_id, verification_id, sent_at) VALUES ('app-test', 'has space', now())",
            "sends_verification_id_format",
        ),
        (
            "INSERT INTO sends (app_id, verification_id, sent_at) VALUES ('app-test', repeat('x', 5000), now())",
            "sends_verification_id_format",
        ),
        (
            "INSERT INTO sends (app_id, verification_id, sent_at) VALUES ('app-test', repeat('x', 129), now())",
            "sends_verification_id_format",
        ),
        (
            "INSERT INTO sends (app_id, verification_id, sent_at) VALUES ('app-test', '', now())",
            "sends_verification_id_format",
        ),
        (
            "INSERT INTO sends (app_id, verification_id, sent_at) VALUES ('app-test', 'caf\u{e9}', now())",
            "sends_verification_id_format",
        ),
        (
            "INSERT INTO sends (app_id, order_id, sent_at) VALUES ('app-test', 'tab\there', now())",
            "sends_order_id_format",
        ),
        (
            "INSERT INTO sends (app_id, order_id, sent_at) VALUES ('app-test', repeat('o', 129), now())",
            "sends_order_id_format",
        ),
        (
            "INSERT INTO conversions (kind, app_id, message_id, converted_at) VALUES ('otp', 'app-test', repeat('m', 129), now())",
            "conversions_message_id_format",
        ),
        (
            "INSERT INTO conversions (kind, app_id, message_id, converted_at) VALUES ('otp', 'app-test', 'two words', now())",
            "conversions_message_id_format",
        ),
    ] {
        let err = sqlx::query(sql).execute(db.pool()).await.unwrap_err();
        assert!(err.to_string().contains(why), "{sql}: {err}");
    }
    // The longest ids allowed, and every printable character, are accepted.
    for sql in [
        "INSERT INTO sends (app_id, verification_id, sent_at) VALUES ('app-test', repeat('x', 128), now())",
        "INSERT INTO sends (app_id, order_id, sent_at) VALUES ('app-test', repeat('o', 128), now())",
        "INSERT INTO sends (app_id, verification_id, sent_at) VALUES ('app-test', '!~azAZ09-_.:/', now())",
        "INSERT INTO conversions (kind, app_id, message_id, converted_at) VALUES ('otp', 'app-test', repeat('m', 128), now())",
    ] {
        sqlx::query(sql).execute(db.pool()).await.unwrap();
    }
    sqlx::query("DELETE FROM sends")
        .execute(db.pool())
        .await
        .unwrap();
    // The same id twice is one send.
    let twice = "INSERT INTO sends (app_id, verification_id, sent_at) VALUES ('app-test', 'v-dup', now()) ON CONFLICT DO NOTHING";
    sqlx::query(twice).execute(db.pool()).await.unwrap();
    sqlx::query(twice).execute(db.pool()).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM sends")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

#[sqlx::test]
async fn the_pass_is_recorded_with_its_counts(pool: PgPool) {
    let db: Db = db_with_app(&pool).await;
    insert_sends(&db, &new_sends(50, "rec")).await;
    let sim = simulator(RecordConfig::default(), Faults::default()).await;
    let summary = run_pass(
        &db,
        &client(&sim, Duration::from_secs(2)),
        &quick_settings(8),
    )
    .await;
    let (outcome, claimed, settled, params): (String, i64, i64, serde_json::Value) = sqlx::query_as(
        "SELECT outcome, (summary->>'claimed')::bigint, (summary->>'settled')::bigint, parameters FROM passes",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(outcome, "done");
    assert_eq!(claimed as u64, summary.claimed);
    assert_eq!(settled as u64, summary.settled);
    assert_eq!(params["settings"]["concurrency"], 8);
    assert_eq!(params["settings"]["schedule"]["max_age"], "3days");
    assert_eq!(params["task"], "run");
}
