//! `otp-reconcile fetch` on answers it cannot read: the binary against the simulator's
//! faults, on loopback.

use otp_reconcile_simulator::{
    DEMO_API_KEY, DEMO_API_SECRET, Fault, SimConfig, SimHandle, Simulator,
};
use std::process::{Command, Output, Stdio};

fn fetch(sim: &SimHandle, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"));
    cmd.env_remove("PROVIDER_API_SECRET_FILE")
        .env("PROVIDER_BASE_URL", sim.base_url())
        .env("PROVIDER_API_KEY", DEMO_API_KEY)
        .env("PROVIDER_API_SECRET", DEMO_API_SECRET)
        .env("RUST_LOG", "warn")
        .arg("fetch")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_unreadable_record_is_printed_as_received_with_the_reason() {
    let sim = Simulator::start(SimConfig::new(5)).await.unwrap();
    sim.script(Some("v-bad"), [Fault::BadRecord]);
    let out = output(fetch(
        &sim,
        &["--verification-id", "v-bad", "--attempts", "1"],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "no record on stdout");
    assert!(
        stderr.contains("the provider's answer: HTTP 200, content type application/json"),
        "{stderr}"
    );
    // The raw answer, with the field the simulator spoiled (this record, seed 5, has
    // no sms or call: its verification time), and the parse error naming it.
    assert!(stderr.contains("\"verificationId\":\"v-bad\""), "{stderr}");
    assert!(
        stderr.contains("\"verifiedDate\":\"yesterday\""),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "the provider did not answer with a readable record: unreadable answer: \
             field `data.verifications.verifiedDate`: not an ISO 8601 time"
        ),
        "{stderr}"
    );
    assert_eq!(sim.stats().total_requests, 1);

    // Not JSON at all, every attempt: the last answer is shown.
    sim.script(Some("v-html"), [Fault::Malformed, Fault::Malformed]);
    let out = output(fetch(
        &sim,
        &["--verification-id", "v-html", "--attempts", "2"],
    ))
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("<html><head><title>502 Bad Gateway</title></head>"),
        "{stderr}"
    );
    assert!(stderr.contains("malformed answer: not JSON"), "{stderr}");

    // A readable record: printed on stdout, exit 0.
    let out = output(fetch(&sim, &["--verification-id", "v-good"])).await;
    assert_eq!(out.status.code(), Some(0));
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["raw"]["verificationId"], "v-good");
}
