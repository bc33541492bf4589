//! `otp-reconcile simulate` as a process, queried with curl as the README shows.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The simulator process; killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `simulate` on a free port and answers its base URL.
fn start(args: &[&str]) -> (Running, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .args(["simulate", "--port", "0", "--exit-after", "60s"])
        .args(args)
        .env_remove("PROVIDER_API_KEY")
        .env_remove("PROVIDER_API_SECRET")
        .env_remove("PROVIDER_API_SECRET_FILE")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("it prints its address");
    (Running(child), line.trim().to_owned())
}

fn md5_sign(timestamp: i64) -> String {
    otp_reconcile::provider::sign::sign(
        "demo-key",
        &secrecy::SecretString::from("demo-secret"),
        timestamp,
    )
}

fn curl(args: &[&str]) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn get_record(base: &str, id: &str, timestamp: i64, sign: &str) -> serde_json::Value {
    curl(&[
        "-H",
        "Content-Type: application/json;charset=UTF-8",
        "-H",
        "Api-Key: demo-key",
        "-H",
        &format!("Timestamp: {timestamp}"),
        "-H",
        &format!("Sign: {sign}"),
        &format!("{base}/otp/verification/record/{id}"),
    ])
}

#[test]
fn curl_sees_success_a_wrong_sign_and_a_stale_timestamp() {
    let (_sim, base) = start(&["--seed", "7"]);
    let now = chrono::Utc::now().timestamp();

    let ok = get_record(&base, "22206051443051000003", now, &md5_sign(now));
    assert_eq!(ok["status"], "0", "{ok}");
    assert_eq!(ok["data"]["verificationId"], "22206051443051000003");
    assert!(
        ok["data"]["verifications"]["matched"].is_string()
            || ok["data"]["verifications"]["matched"].is_number()
    );

    let wrong = get_record(
        &base,
        "22206051443051000003",
        now,
        "0123456789abcdef0123456789abcdef",
    );
    assert_eq!(wrong["status"], "-1", "{wrong}");

    let old = now - 600;
    let stale = get_record(&base, "22206051443051000003", old, &md5_sign(old));
    assert_eq!(stale["status"], "-16", "{stale}");

    let stats = curl(&[&format!("{base}/_sim/stats")]);
    assert_eq!(stats["requests"]["record_by_verification_id"], 3, "{stats}");
    let answers = &stats["answers"]["record_by_verification_id"];
    assert_eq!(
        (
            answers["0"].clone(),
            answers["-1"].clone(),
            answers["-16"].clone()
        ),
        (1.into(), 1.into(), 1.into())
    );
    assert_eq!(stats["fetches"]["22206051443051000003"]["requests"], 3);
    assert_eq!(stats["fetches"]["22206051443051000003"]["final"], 1);
}

#[test]
fn the_same_seed_serves_the_same_records_and_another_seed_others() {
    let (_a, base_a) = start(&["--seed", "7", "--sending-share", "0"]);
    let (_b, base_b) = start(&["--seed", "7", "--sending-share", "0"]);
    let (_c, base_c) = start(&["--seed", "8", "--sending-share", "0"]);
    let now = chrono::Utc::now().timestamp();
    let fetch = |base: &str| get_record(base, "same-id", now, &md5_sign(now))["data"].clone();
    assert_eq!(fetch(&base_a), fetch(&base_b));
    assert_ne!(fetch(&base_a), fetch(&base_c));
}

#[test]
fn scripted_faults_and_runtime_controls_over_http() {
    let (_sim, base) = start(&["--script", "-18,500"]);
    let now = chrono::Utc::now().timestamp();
    assert_eq!(get_record(&base, "a", now, &md5_sign(now))["status"], "-18");
    let http_500 = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/otp/verification/record/a"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&http_500.stdout), "500");

    // A script for one id, set at run time.
    let set = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"key":"b","faults":"-22"}"#,
            &format!("{base}/_sim/script"),
        ])
        .status()
        .unwrap();
    assert!(set.success());
    assert_eq!(get_record(&base, "b", now, &md5_sign(now))["status"], "-22");
    assert_eq!(get_record(&base, "b", now, &md5_sign(now))["status"], "0");
}

#[test]
fn bad_fault_options_are_usage_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .args(["simulate", "--port", "0", "--script", "explode"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown fault"));
    let out = Command::new(env!("CARGO_BIN_EXE_otp-reconcile"))
        .args(["simulate", "--port", "0", "--http-500", "1.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
