//! Pushing a pass's counters and duration to a Prometheus Pushgateway, for a job that
//! runs for minutes and is gone before anything could scrape it.

use crate::pass::Summary;
use std::fmt::Write;
use std::time::Duration;
use url::Url;

/// The push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot reach the Pushgateway")]
    Http(#[from] reqwest::Error),
    #[error("the Pushgateway answered HTTP {0}")]
    Status(u16),
}

/// The summary in the Prometheus text format, every metric prefixed `otp_reconcile_`.
pub fn exposition(summary: &Summary, kind: &str) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP otp_reconcile_{name} {help}");
        let _ = writeln!(out, "# TYPE otp_reconcile_{name} gauge");
        let _ = writeln!(out, "otp_reconcile_{name}{{kind=\"{kind}\"}} {value}");
    };
    let s = summary;
    gauge(
        "pass_duration_seconds",
        "How long the last pass took.",
        s.elapsed_secs,
    );
    gauge(
        "pass_claimed",
        "Sends the last pass claimed.",
        s.claimed as f64,
    );
    gauge(
        "pass_checked",
        "Sends the last pass checked and wrote.",
        s.checked as f64,
    );
    gauge(
        "pass_settled",
        "Sends the last pass settled.",
        s.settled as f64,
    );
    gauge(
        "pass_rechecks",
        "Sends the last pass left for a later check.",
        s.rechecks as f64,
    );
    gauge(
        "pass_rejected",
        "Sends the last pass rejected.",
        s.rejected as f64,
    );
    gauge(
        "pass_expired",
        "Sends the last pass expired.",
        s.expired as f64,
    );
    gauge(
        "pass_released",
        "Sends the last pass claimed but released unchecked.",
        s.released as f64,
    );
    gauge(
        "pass_requests",
        "Requests the last pass made to the provider.",
        s.requests as f64,
    );
    gauge(
        "pass_retries",
        "Retries the last pass made.",
        s.retries as f64,
    );
    gauge(
        "pass_conversions_sent",
        "Conversions the last pass posted back.",
        s.conversions.sent as f64,
    );
    gauge(
        "pass_conversions_rejected",
        "Conversions the provider refused.",
        s.conversions.rejected as f64,
    );
    gauge(
        "pass_conversions_possibly_duplicated",
        "Conversions acknowledged after an attempt of unknown outcome.",
        s.conversions.possibly_duplicated as f64,
    );
    gauge(
        "pass_rates_sent",
        "Conversion-rate windows the last pass posted.",
        s.rates.sent as f64,
    );
    gauge(
        "pass_rates_changed_after_post",
        "Posted rate windows whose numbers changed since.",
        s.rates.changed_after_post as f64,
    );
    gauge(
        "pass_db_statements",
        "Database statements the last pass sent.",
        s.db_statements as f64,
    );
    let _ = writeln!(
        out,
        "# HELP otp_reconcile_pass_ended How the last pass ended (1 for that way)."
    );
    let _ = writeln!(out, "# TYPE otp_reconcile_pass_ended gauge");
    let _ = writeln!(
        out,
        "otp_reconcile_pass_ended{{kind=\"{kind}\",ended=\"{}\"}} 1",
        s.ended.as_str()
    );
    out
}

/// Replaces the metrics of the group `job=otp-reconcile, kind, shard` at `gateway`.
pub async fn push(
    gateway: &Url,
    summary: &Summary,
    kind: &str,
    shard: &str,
) -> Result<(), PushError> {
    let mut url = gateway.clone();
    url.path_segments_mut()
        .map_err(|()| PushError::Status(0))?
        .pop_if_empty()
        .extend([
            "metrics",
            "job",
            "otp-reconcile",
            "kind",
            kind,
            "shard",
            shard,
        ]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let response = client
        .put(url)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(exposition(summary, kind))
        .send()
        .await?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(PushError::Status(response.status().as_u16()))
    }
}
