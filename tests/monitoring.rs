//! The alert rules (`jobs/prometheus-rules.yaml`) and the Grafana dashboard
//! (`jobs/grafana-dashboard.json`): checked and unit-tested with promtool (the Debian
//! package `prometheus`, which `scripts/ensure-tools` installs), and naming only
//! metrics the job pushes. That the job pushes every metric of its registry is checked
//! against a real Pushgateway in `tests/pushgateway.rs`.

use otp_reconcile::metrics::METRICS;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn jobs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs")
}

/// promtool: `PROMTOOL`, or where the Debian package puts it. Missing, the test fails
/// (it never skips): `scripts/test` installs it through `scripts/ensure-tools`.
fn promtool() -> Command {
    let bin = std::env::var("PROMTOOL").unwrap_or_else(|_| "/usr/bin/promtool".into());
    assert!(
        Path::new(&bin).is_file(),
        "no promtool at {bin}: run scripts/ensure-tools (scripts/test does), or set PROMTOOL"
    );
    Command::new(bin)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The `otp_reconcile_*` names in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("otp_reconcile_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

fn pushed() -> BTreeSet<String> {
    METRICS.iter().map(|m| m.name.to_owned()).collect()
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(jobs().join("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title").to_owned();
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().expect("an expr").to_owned();
            exprs.push((title.clone(), expr));
        }
    }
    exprs
}

#[test]
fn the_rules_pass_promtool_check_and_every_alert_is_unit_tested() {
    let rules = jobs().join("prometheus-rules.yaml");
    let tests = jobs().join("prometheus-rules.test.yaml");
    let checked = run(promtool().arg("check").arg("rules").arg(&rules));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run(promtool().arg("test").arg("rules").arg(&tests));
    assert!(tested.contains("SUCCESS"), "{tested}");

    let alerts: BTreeSet<String> = std::fs::read_to_string(&rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|a| a.trim().to_owned())
        .collect();
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    let test_text = std::fs::read_to_string(&tests).unwrap();
    for alert in &alerts {
        let firing = test_text
            .split("- eval_time:")
            .filter(|case| case.contains(&format!("alertname: {alert}\n")))
            .collect::<Vec<_>>();
        assert!(
            firing.iter().any(|c| c.contains("exp_labels:")),
            "{alert}: no test where it fires"
        );
        assert!(
            firing.iter().any(|c| c.contains("exp_alerts: []")),
            "{alert}: no test where it stays quiet"
        );
    }
}

#[test]
fn the_rules_and_the_dashboard_name_only_metrics_the_job_pushes() {
    let pushed = pushed();
    let rules = std::fs::read_to_string(jobs().join("prometheus-rules.yaml")).unwrap();
    let named = metric_names(&rules);
    assert!(named.len() >= 6, "{named:?}");
    for name in &named {
        assert!(pushed.contains(name), "the rules name {name}, never pushed");
    }
    let exprs = dashboard_exprs();
    let mut named = BTreeSet::new();
    for (title, expr) in &exprs {
        let names = metric_names(expr);
        assert!(
            !names.is_empty(),
            "{title}: {expr} names no metric of the job"
        );
        for name in names {
            assert!(
                pushed.contains(&name),
                "the dashboard's {title:?} names {name}, never pushed"
            );
            named.insert(name);
        }
    }
    // The panels the issue asks for have their metrics.
    for needed in [
        "otp_reconcile_pass_checked",
        "otp_reconcile_pass_settled",
        "otp_reconcile_pass_rechecks",
        "otp_reconcile_pass_requests",
        "otp_reconcile_pass_retries",
        "otp_reconcile_sends_due",
        "otp_reconcile_oldest_due_age_seconds",
        "otp_reconcile_spend_today",
        "otp_reconcile_pass_conversions_sent",
        "otp_reconcile_pass_rates_sent",
    ] {
        assert!(named.contains(needed), "no panel shows {needed}");
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    // promtool parses each query as a recording rule.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_exprs().iter().enumerate() {
        rules.push_str(&format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let path = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&path, rules).unwrap();
    let checked = run(promtool().arg("check").arg("rules").arg(&path));
    assert!(checked.contains("SUCCESS"), "{checked}");
}
