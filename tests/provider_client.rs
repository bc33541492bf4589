//! The signed client against the simulator (a real HTTP server on loopback): every
//! status code and fault is classified, retries are signed afresh, and nothing the
//! client does leaks the secret.

mod common;

use otp_reconcile::clock::{self, SkewedClock};
use otp_reconcile::config::ProviderSettings;
use otp_reconcile::provider::{
    BackfillRate, Failure, FatalCause, Gate, OtpPostback, ProviderClient, RetryPolicy, SmsPostback,
    Transient, sign,
};
use otp_reconcile_simulator::{
    DEMO_API_KEY, DEMO_API_SECRET, Fault, Faults, Lookup, SimConfig, SimHandle, Simulator,
};
use secrecy::SecretString;
use std::sync::Arc;
use std::time::Duration;

async fn simulator() -> SimHandle {
    Simulator::start(SimConfig::new(7))
        .await
        .expect("simulator starts")
}

fn settings(base_url: &str, key: &str, secret: &str) -> ProviderSettings {
    let mut s = ProviderSettings::new(base_url, key, SecretString::from(secret), false).unwrap();
    s.request_timeout = Duration::from_millis(800);
    s.connect_timeout = Duration::from_millis(500);
    s
}

fn client(sim: &SimHandle) -> ProviderClient {
    ProviderClient::new(
        &settings(&sim.base_url(), DEMO_API_KEY, DEMO_API_SECRET),
        clock::system(),
    )
    .unwrap()
}

/// An id that the simulator serves as a found record, final from the first answer.
fn final_id(sim: &SimHandle, n: usize) -> String {
    (0..)
        .map(|i| format!("v-{n}-{i}"))
        .find(|id| {
            let first = sim.record(Lookup::VerificationId(id), 0);
            first.found && first.final_answer
        })
        .unwrap()
}

/// What a failure should look like.
type Expect = fn(&Failure) -> bool;

fn quick() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        min_delay: Duration::from_millis(5),
        max_delay: Duration::from_millis(20),
        ..RetryPolicy::default()
    }
}

#[tokio::test]
async fn a_record_by_verification_id_is_the_simulators_record() {
    let sim = simulator().await;
    let id = final_id(&sim, 1);
    let fetched = client(&sim).record_by_verification_id(&id).await.unwrap();
    assert_eq!(
        fetched.raw_json(),
        sim.final_record(Lookup::VerificationId(&id)).data
    );
    assert_eq!(fetched.record.verification_id.as_deref(), Some(id.as_str()));
    let stats = sim.stats();
    assert_eq!(stats.requests_to("record_by_verification_id"), 1);
    assert_eq!(stats.fetches[&id].final_answers, 1);
}

#[tokio::test]
async fn a_record_by_order_id() {
    let sim = simulator().await;
    let fetched = client(&sim)
        .record_by_order_id("app1", "ord-77")
        .await
        .unwrap();
    let served = sim.final_record(Lookup::OrderId {
        app_id: "app1",
        order_id: "ord-77",
    });
    assert_eq!(fetched.raw_json(), served.data);
    assert_eq!(fetched.record.order_id.as_deref(), Some("ord-77"));
    assert_eq!(sim.stats().fetches["order:ord-77"].answered, 1);
}

#[tokio::test]
async fn ids_that_need_escaping_reach_the_right_record() {
    let sim = simulator().await;
    let id = "a b/c?d#e%f";
    let fetched = client(&sim).record_by_verification_id(id).await.unwrap();
    assert_eq!(fetched.record.verification_id.as_deref(), Some(id));
}

#[tokio::test]
async fn every_provider_status_code_is_classified() {
    let sim = simulator().await;
    let client = client(&sim);
    let cases: [(Fault, Expect); 7] = [
        (Fault::Status(-1), |f| {
            matches!(
                f,
                Failure::Fatal {
                    cause: FatalCause::Authentication,
                    ..
                }
            )
        }),
        (Fault::Status(-2), |f| {
            matches!(
                f,
                Failure::Fatal {
                    cause: FatalCause::IpNotAllowed,
                    ..
                }
            )
        }),
        (
            Fault::Status(-14),
            |f| matches!(f, Failure::Rejected { status, .. } if status == "-14"),
        ),
        (Fault::Status(-16), |f| {
            matches!(
                f,
                Failure::Retry {
                    cause: Transient::TimestampExpired(_),
                    after: Some(_)
                }
            )
        }),
        (Fault::Status(-18), |f| {
            matches!(
                f,
                Failure::Retry {
                    cause: Transient::ProviderBusy(_),
                    ..
                }
            )
        }),
        (
            Fault::Status(-22),
            |f| matches!(f, Failure::Rejected { status, .. } if status == "-22"),
        ),
        (
            Fault::Status(-99),
            |f| matches!(f, Failure::Rejected { status, .. } if status == "-99"),
        ),
    ];
    for (i, (fault, expected)) in cases.iter().enumerate() {
        let id = format!("status-{i}");
        sim.script(Some(&id), [*fault]);
        let failure = client.record_by_verification_id(&id).await.unwrap_err();
        assert!(expected(&failure), "{fault}: {failure:?}");
    }
    // The same classification on the other endpoints.
    sim.script(Some("otp:pb-1"), [Fault::Status(-14)]);
    let body = OtpPostback::new("app1", "pb-1", "9100", chrono::Utc::now());
    assert!(
        matches!(client.otp_postback(&body).await, Err(Failure::Rejected { status, .. }) if status == "-14")
    );
    sim.script(Some("app1:460"), [Fault::Status(-2)]);
    let rate = BackfillRate::new("app1", 460, 1, 2, chrono::Utc::now().fixed_offset()).unwrap();
    assert!(matches!(
        client.backfill_rate(&rate).await,
        Err(Failure::Fatal {
            cause: FatalCause::IpNotAllowed,
            ..
        })
    ));
}

#[tokio::test]
async fn every_http_fault_is_classified() {
    let sim = simulator().await;
    let client = client(&sim);
    let cases: [(Fault, Expect); 11] = [
        (Fault::Http(500), |f| {
            matches!(
                f,
                Failure::Retry {
                    cause: Transient::Http(500),
                    ..
                }
            )
        }),
        (Fault::Http(503), |f| {
            matches!(
                f,
                Failure::Retry {
                    cause: Transient::Http(503),
                    ..
                }
            )
        }),
        (
            Fault::TooManyRequests { retry_after: 3 },
            |f| matches!(f, Failure::Retry { cause: Transient::RateLimited, after: Some(d) } if *d == Duration::from_secs(3)),
        ),
        (Fault::Http(401), |f| {
            matches!(
                f,
                Failure::Fatal {
                    cause: FatalCause::Forbidden,
                    ..
                }
            )
        }),
        (Fault::Http(403), |f| {
            matches!(
                f,
                Failure::Fatal {
                    cause: FatalCause::Forbidden,
                    ..
                }
            )
        }),
        (Fault::Drop, |f| {
            matches!(
                f,
                Failure::Retry {
                    cause: Transient::Connection(_),
                    ..
                }
            )
        }),
        (Fault::Stall, |f| {
            matches!(
                f,
                Failure::Retry {
                    cause: Transient::Timeout,
                    ..
                }
            )
        }),
        (Fault::Malformed, |f| {
            matches!(
                f,
                Failure::Retry {
                    cause: Transient::Malformed(_),
                    ..
                }
            )
        }),
        (Fault::Truncated, |f| {
            matches!(
                f,
                Failure::Retry {
                    cause: Transient::Malformed(_),
                    ..
                }
            )
        }),
        (Fault::BadRecord, |f| {
            matches!(f, Failure::Unreadable { problem }
                if problem.contains("\"1e5\"") || problem.contains("verifiedDate"))
        }),
        (
            Fault::Oversized,
            |f| matches!(f, Failure::Unreadable { problem } if problem.contains("larger than 1048576 bytes")),
        ),
    ];
    // A stall is held far past the short timeout, so it always ends in the client's
    // timeout; every other answer gets a generous timeout, so a busy machine slow to
    // build the oversized answer is never taken for a stall.
    sim.set_faults(Faults {
        stall_ms: Some(60_000),
        ..Faults::default()
    });
    let mut patient = settings(&sim.base_url(), DEMO_API_KEY, DEMO_API_SECRET);
    patient.request_timeout = Duration::from_secs(30);
    let patient = ProviderClient::new(&patient, clock::system()).unwrap();
    for (i, (fault, expected)) in cases.iter().enumerate() {
        let id = format!("http-{i}");
        sim.script(Some(&id), [*fault]);
        let client = if *fault == Fault::Stall {
            &client
        } else {
            &patient
        };
        let failure = client.record_by_verification_id(&id).await.unwrap_err();
        assert!(expected(&failure), "{fault}: {failure:?}");
    }
    let stats = sim.stats();
    for label in [
        "http_500",
        "http_503",
        "http_429",
        "drop",
        "stall",
        "malformed",
        "truncated",
        "bad_record",
        "oversized",
    ] {
        assert_eq!(
            stats.answered("record_by_verification_id", label),
            1,
            "{label}"
        );
    }
    // A truncated answer is not a served record, nor is a stalled or dropped one.
    assert!(stats.fetches.values().all(|c| c.answered == 0));
}

#[tokio::test]
async fn an_unknown_path_means_a_wrong_base_url() {
    let sim = simulator().await;
    let base = format!("{}/wrong-prefix", sim.base_url());
    let client = ProviderClient::new(
        &settings(&base, DEMO_API_KEY, DEMO_API_SECRET),
        clock::system(),
    )
    .unwrap();
    assert!(matches!(
        client.record_by_verification_id("x").await,
        Err(Failure::Fatal {
            cause: FatalCause::Endpoint,
            ..
        })
    ));
}

#[tokio::test]
async fn real_credential_and_clock_failures() {
    let sim = simulator().await;
    let wrong_key = ProviderClient::new(
        &settings(&sim.base_url(), "other-key", DEMO_API_SECRET),
        clock::system(),
    )
    .unwrap();
    assert!(matches!(
        wrong_key.record_by_verification_id("x").await,
        Err(Failure::Fatal {
            cause: FatalCause::Authentication,
            ..
        })
    ));
    let wrong_secret = ProviderClient::new(
        &settings(&sim.base_url(), DEMO_API_KEY, "not-it"),
        clock::system(),
    )
    .unwrap();
    assert!(matches!(
        wrong_secret.record_by_verification_id("x").await,
        Err(Failure::Fatal {
            cause: FatalCause::Authentication,
            ..
        })
    ));
    let slow_clock = Arc::new(SkewedClock(chrono::Duration::minutes(-10)));
    let stale = ProviderClient::new(
        &settings(&sim.base_url(), DEMO_API_KEY, DEMO_API_SECRET),
        slow_clock,
    )
    .unwrap();
    assert!(matches!(
        stale.record_by_verification_id("x").await,
        Err(Failure::Retry {
            cause: Transient::TimestampExpired(_),
            ..
        })
    ));
    let stats = sim.stats();
    assert_eq!(stats.answered("record_by_verification_id", "-1"), 2);
    assert_eq!(stats.answered("record_by_verification_id", "-16"), 1);
}

#[tokio::test]
async fn a_retry_after_minus_16_carries_a_new_timestamp_and_sign() {
    let sim = simulator().await;
    let client = client(&sim);
    let id = final_id(&sim, 2);
    sim.script(Some(&id), [Fault::Status(-16)]);
    let fetched = quick()
        .run(&Gate::open(), || client.record_by_verification_id(&id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched.record.verification_id.as_deref(), Some(id.as_str()));

    let log = sim.requests(Some(&id));
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].answer, "-16");
    assert_eq!(log[1].answer, "0");
    let (first, second) = (&log[0], &log[1]);
    assert_ne!(first.timestamp, second.timestamp, "a fresh timestamp");
    assert_ne!(first.sign, second.sign, "a fresh sign");
    // Each sign matches its own timestamp.
    for entry in &log {
        let ts: i64 = entry.timestamp.as_deref().unwrap().parse().unwrap();
        let expected = sign::sign(DEMO_API_KEY, &SecretString::from(DEMO_API_SECRET), ts);
        assert_eq!(entry.sign.as_deref(), Some(expected.as_str()));
    }
}

#[tokio::test]
async fn transient_faults_are_retried_and_rejections_are_not() {
    let sim = simulator().await;
    let client = client(&sim);
    let id = final_id(&sim, 3);
    sim.script(Some(&id), [Fault::Http(503), Fault::Malformed]);
    assert!(
        quick()
            .run(&Gate::open(), || client.record_by_verification_id(&id))
            .await
            .unwrap()
            .is_ok()
    );
    assert_eq!(sim.stats().fetches[&id].requests, 3);

    sim.script(Some("rejected"), [Fault::Status(-22), Fault::Ok]);
    let out = quick()
        .run(&Gate::open(), || {
            client.record_by_verification_id("rejected")
        })
        .await
        .unwrap();
    assert!(matches!(out, Err(Failure::Rejected { .. })));
    assert_eq!(sim.stats().fetches["rejected"].requests, 1);
}

#[tokio::test]
async fn the_simulators_rate_limit_answers_429_with_retry_after() {
    let sim = simulator().await;
    sim.set_faults(Faults {
        rate_limit: Some(5),
        rate_burst: Some(5),
        ..Faults::default()
    });
    let client = client(&sim);
    let mut limited = 0;
    for i in 0..10 {
        match client.record_by_verification_id(&format!("rl-{i}")).await {
            Ok(_) => {}
            Err(Failure::Retry {
                cause: Transient::RateLimited,
                after: Some(after),
            }) => {
                assert!(after >= Duration::from_secs(1));
                limited += 1;
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(
        (4..=6).contains(&limited),
        "{limited} of 10 over a burst of 5"
    );
}

#[tokio::test]
async fn latency_is_added_to_every_answer() {
    let sim = simulator().await;
    sim.set_faults(Faults {
        latency_ms: 150,
        jitter_ms: 50,
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    client(&sim)
        .record_by_verification_id("slow")
        .await
        .unwrap();
    // Seen from outside, the answer cannot come sooner than the latency; how much later
    // it comes depends on the machine, so the drawn latency's upper end (base plus
    // jitter) is checked by the simulator's own unit test, not by a wall-clock race.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert_eq!(sim.stats().total_requests, 1);
}

#[tokio::test]
async fn an_answer_over_the_cap_is_an_error_not_an_allocation() {
    let sim = simulator().await;
    let mut small = settings(&sim.base_url(), DEMO_API_KEY, DEMO_API_SECRET);
    small.max_answer_bytes = 100;
    let client = ProviderClient::new(&small, clock::system()).unwrap();
    match client.record_by_verification_id("big").await {
        Err(Failure::Unreadable { problem }) => assert!(problem.contains("larger than 100 bytes")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn nobody_listening_is_a_connect_failure() {
    let dead = common::DeadPort::new();
    let client = ProviderClient::new(
        &settings(&dead.url(), DEMO_API_KEY, DEMO_API_SECRET),
        clock::system(),
    )
    .unwrap();
    assert!(matches!(
        client.record_by_verification_id("x").await,
        Err(Failure::Retry {
            cause: Transient::Connect(_),
            ..
        })
    ));
}

#[tokio::test]
async fn postbacks_and_rates_are_acknowledged_and_counted() {
    let sim = simulator().await;
    let client = client(&sim);
    let now = chrono::Utc::now();
    client
        .otp_postback(&OtpPostback::new("app1", "v-1", "9100", now))
        .await
        .unwrap();
    client
        .sms_postback(&SmsPostback::new("app1", "msg-1", "9100", now))
        .await
        .unwrap();
    let rate = BackfillRate::new("app1", 460, 1, 3, now.fixed_offset()).unwrap();
    client.backfill_rate(&rate).await.unwrap();

    // An empty field and an unknown id are the provider's -14.
    let empty = OtpPostback::new("app1", "v-2", "", now);
    assert!(
        matches!(client.otp_postback(&empty).await, Err(Failure::Rejected { status, .. }) if status == "-14")
    );
    let unknown = OtpPostback::new("app1", "missing-9", "9100", now);
    assert!(
        matches!(client.otp_postback(&unknown).await, Err(Failure::Rejected { status, .. }) if status == "-14")
    );

    let stats = sim.stats();
    assert_eq!(stats.postbacks["otp:v-1"].acknowledged, 1);
    assert_eq!(stats.postbacks["sms:msg-1"].acknowledged, 1);
    assert_eq!(stats.postbacks["otp:v-2"].acknowledged, 0);
    assert_eq!(stats.backfill_rates.len(), 1);
    let body = &stats.backfill_rates[0].body;
    assert_eq!(body["backfillNow"], "33.33");
    assert_eq!(body["mcc"], "460");
    assert_eq!(stats.backfill_rates[0].answer, "0");
    assert!(stats.duplicates.postbacks.is_empty());
}

/// POSTs `body` as it is to the simulator, signed with the demo credentials.
async fn signed_post(
    sim: &SimHandle,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> serde_json::Value {
    let ts = chrono::Utc::now().timestamp();
    reqwest::Client::new()
        .post(format!("{}{path}", sim.base_url()))
        .header("Content-Type", "application/json;charset=UTF-8")
        .header("Api-Key", DEMO_API_KEY)
        .header("Timestamp", ts.to_string())
        .header(
            "Sign",
            sign::sign(DEMO_API_KEY, &SecretString::from(DEMO_API_SECRET), ts),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_pages_own_request_samples_are_accepted_verbatim() {
    let sim = simulator().await;
    for (path, sample) in [
        ("/otp/backfillRate", "backfill-rate.request.json"),
        (
            "/otp/verification/orderId/record",
            "order-id-record.request.json",
        ),
    ] {
        let body = std::fs::read(format!(
            "{}/tests/fixtures/provider-pages/{sample}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let answer = signed_post(&sim, path, body).await;
        assert_eq!(answer["status"], "0", "{sample}: {answer}");
    }
}

#[tokio::test]
async fn malformed_bodies_and_missing_fields_are_minus_22() {
    let sim = simulator().await;
    for (path, body) in [
        ("/otp/verification/orderId/record", "{not json"),
        ("/otp/verification/orderId/record", r#"{"appId":"a"}"#),
        (
            "/otp/postback/backfill",
            r#"{"appId":"a","verificationId":"v","number":"1"}"#,
        ),
        (
            "/otp/postback/backfill",
            r#"{"appId":"a","verificationId":"v","number":"1","time":"1681184764"}"#,
        ),
        ("/sms/postback/backfill", "[]"),
        (
            "/otp/backfillRate",
            r#"{"appId":"abc","mcc":"460","backfillNow":"1","callbackTime":"2023-01-29T09:59:58+08:00"}"#,
        ),
        (
            "/otp/backfillRate",
            r#"{"appId":"abcd","mcc":"460","backfillNow":"1.234","callbackTime":"2023-01-29T09:59:58+08:00"}"#,
        ),
        (
            "/otp/backfillRate",
            r#"{"appId":"abcd","mcc":"460","backfillNow":"1","callbackTime":"2023-01-29T09:59:58"}"#,
        ),
    ] {
        let answer = signed_post(&sim, path, body).await;
        assert_eq!(answer["status"], "-22", "{path} {body}: {answer}");
    }
}

#[tokio::test]
async fn the_record_call_is_a_signed_get() {
    use wiremock::matchers::{header, header_exists, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/otp/verification/record/22206051443051000003"))
        .and(header("Api-Key", "bDqJFiq9"))
        .and(header("Content-Type", "application/json;charset=UTF-8"))
        .and(header_exists("Timestamp"))
        .and(header_exists("Sign"))
        .respond_with(
            ResponseTemplate::new(200).set_body_string(
                std::fs::read_to_string(format!(
                    "{}/tests/fixtures/provider-pages/verification-record.response.json",
                    env!("CARGO_MANIFEST_DIR")
                ))
                .unwrap(),
            ),
        )
        .expect(1)
        .mount(&server)
        .await;
    let client = ProviderClient::new(
        &settings(&server.uri(), "bDqJFiq9", "s3cr3t"),
        clock::system(),
    )
    .unwrap();
    client
        .record_by_verification_id("22206051443051000003")
        .await
        .unwrap();
    let request = &server.received_requests().await.unwrap()[0];
    let ts: i64 = request.headers["Timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - ts).abs() <= 5,
        "signed when sent"
    );
    assert_eq!(
        request.headers["Sign"].to_str().unwrap(),
        sign::sign("bDqJFiq9", &SecretString::from("s3cr3t"), ts)
    );
    assert!(request.body.is_empty(), "a GET carries no body");
}

#[tokio::test]
async fn credentials_in_the_base_url_go_as_basic_auth_and_nowhere_else() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let server = MockServer::start().await;
    // base64("proxy user:p@ss:word"), as `printf %s 'proxy user:p@ss:word' | base64`.
    Mock::given(method("POST"))
        .and(path("/otp/postback/backfill"))
        .and(header(
            "Authorization",
            "Basic cHJveHkgdXNlcjpwQHNzOndvcmQ=",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string(r#"{"status":"0"}"#))
        .expect(1)
        .mount(&server)
        .await;
    let port = server.address().port();
    let base = format!("http://proxy%20user:p%40ss%3Aword@127.0.0.1:{port}/");
    let client = ProviderClient::new(&settings(&base, "k", "s"), clock::system()).unwrap();
    assert!(!format!("{client:?}").contains("p%40ss"), "{client:?}");
    let at = chrono::DateTime::from_timestamp(1_681_184_764, 0).unwrap();
    client
        .otp_postback(&OtpPostback::new("app", "v1", "91", at))
        .await
        .unwrap();
    let request = &server.received_requests().await.unwrap()[0];
    assert_eq!(request.url.path(), "/otp/postback/backfill");
    assert_eq!(request.url.username(), "");
    assert_eq!(request.url.password(), None);
}

#[test]
fn an_api_key_that_cannot_be_a_header_is_refused_when_the_client_is_built() {
    let settings = settings("http://127.0.0.1:1/", "key\u{7f}", "s");
    let err = ProviderClient::new(&settings, clock::system()).unwrap_err();
    assert!(err.to_string().contains("API key"), "{err}");
}

#[tokio::test]
async fn the_client_never_shows_its_secret() {
    let sim = simulator().await;
    let client = ProviderClient::new(
        &settings(&sim.base_url(), DEMO_API_KEY, "very-secret-value"),
        clock::system(),
    )
    .unwrap();
    assert!(!format!("{client:?}").contains("very-secret-value"));
    let failure = client.record_by_verification_id("x").await.unwrap_err();
    assert!(!format!("{failure:?} {failure}").contains("very-secret-value"));
}
