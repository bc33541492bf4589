//! Pushing a pass's counters, and the state of the queue it leaves, to a Prometheus
//! Pushgateway, for a job that runs for minutes and is gone before anything could
//! scrape it.
//!
//! Grouping key: `job="otp-reconcile"`, `kind` (`run` or `replay`) and `shard` (`all`,
//! or `I-of-N`), so shards and replays each keep their own group. The push is a POST:
//! it replaces the metrics of the same names in that group and leaves the others, so
//! `otp_reconcile_last_success_timestamp_seconds`, pushed only by a pass that ended
//! well, survives the failed passes after it (which is what an alert on it needs).
//! Every other metric is pushed by every pass, so nothing stale is left behind.
//!
//! [`METRICS`] lists every metric the job pushes; `jobs/prometheus-rules.yaml` and
//! `jobs/grafana-dashboard.json` name only metrics from it (a test checks).

use crate::db::Db;
use crate::pass::{Ended, Summary};
use crate::status::Status;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::fmt::{Display, Write};
use std::time::Duration;
use url::Url;

/// The `job` label of every group the job pushes.
pub const JOB: &str = "otp-reconcile";

/// The push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot reach the Pushgateway")]
    Http(#[source] reqwest::Error),
    #[error("the Pushgateway answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("the Pushgateway URL cannot take a path")]
    BadUrl,
}

/// A metric the job pushes: every one is a gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// The full name, `otp_reconcile_` included.
    pub name: &'static str,
    pub help: &'static str,
    /// Labels beyond the grouping key (`job`, `kind`, `shard`).
    pub labels: &'static [&'static str],
}

const fn metric(name: &'static str, help: &'static str) -> Metric {
    Metric {
        name,
        help,
        labels: &[],
    }
}

/// Every metric the job pushes.
pub const METRICS: &[Metric] = &[
    metric(
        "otp_reconcile_pass_duration_seconds",
        "How long the last pass took.",
    ),
    metric(
        "otp_reconcile_pass_end_timestamp_seconds",
        "When the last pass ended (Unix time).",
    ),
    metric(
        "otp_reconcile_last_success_timestamp_seconds",
        "When a pass last ended well (done or --max-runtime; Unix time). Pushed only then.",
    ),
    Metric {
        name: "otp_reconcile_pass_ended",
        help: "How the last pass ended: 1 on the series of that way.",
        labels: &["ended"],
    },
    metric("otp_reconcile_pass_claimed", "Sends the last pass claimed."),
    metric(
        "otp_reconcile_pass_checked",
        "Sends the last pass checked and wrote.",
    ),
    metric("otp_reconcile_pass_settled", "Sends the last pass settled."),
    metric(
        "otp_reconcile_pass_rechecks",
        "Sends the last pass left for a later check.",
    ),
    metric(
        "otp_reconcile_pass_rejected",
        "Sends the last pass rejected.",
    ),
    metric("otp_reconcile_pass_expired", "Sends the last pass expired."),
    metric(
        "otp_reconcile_pass_released",
        "Sends the last pass claimed but released unchecked.",
    ),
    metric(
        "otp_reconcile_pass_requests",
        "Requests the last pass made to the provider.",
    ),
    metric("otp_reconcile_pass_retries", "Retries the last pass made."),
    metric(
        "otp_reconcile_pass_conversions_sent",
        "Conversions the last pass posted back.",
    ),
    metric(
        "otp_reconcile_pass_conversions_rejected",
        "Conversions the provider refused in the last pass.",
    ),
    metric(
        "otp_reconcile_pass_conversions_possibly_duplicated",
        "Conversions acknowledged after an attempt of unknown outcome, in the last pass.",
    ),
    metric(
        "otp_reconcile_pass_rates_sent",
        "Conversion-rate windows the last pass posted.",
    ),
    metric(
        "otp_reconcile_pass_rates_rejected",
        "Conversion-rate windows the provider refused in the last pass.",
    ),
    metric(
        "otp_reconcile_pass_rates_changed_after_post",
        "Posted rate windows whose numbers changed since.",
    ),
    metric(
        "otp_reconcile_pass_db_statements",
        "Database statements the last pass sent.",
    ),
    Metric {
        name: "otp_reconcile_sends",
        help: "Sends by state after the last pass: pending and recheck counted exactly; settled, rejected and expired estimated from the planner's statistics (the last ANALYZE), so a pass never counts history.",
        labels: &["state"],
    },
    metric(
        "otp_reconcile_sends_due",
        "Sends due for a check now, after the last pass (the queue depth).",
    ),
    metric(
        "otp_reconcile_oldest_due_age_seconds",
        "How long the oldest due, unheld send has been due, after the last pass (0: none).",
    ),
    metric(
        "otp_reconcile_leases_expired",
        "Sends held by a lease that expired (a pass died holding them).",
    ),
    metric(
        "otp_reconcile_conversions_pending",
        "Conversions waiting to be posted back.",
    ),
    metric(
        "otp_reconcile_conversions_in_doubt",
        "Pending conversions whose last post has an unknown outcome.",
    ),
    metric(
        "otp_reconcile_conversions_rejected",
        "Conversions the provider refused, in all.",
    ),
    metric(
        "otp_reconcile_rates_pending",
        "Conversion-rate windows waiting to be posted.",
    ),
    Metric {
        name: "otp_reconcile_spend_today",
        help: "Settled cost of the sends sent since 00:00 UTC today, per settle currency \
               (`unknown` when the provider gave none).",
        labels: &["currency"],
    },
];

/// The sends states, each pushed (0 when none) so a state that empties shows 0.
const SEND_STATES: [&str; 5] = ["pending", "recheck", "settled", "rejected", "expired"];

/// The database's state after a pass, pushed beside the pass's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueState {
    pub at: DateTime<Utc>,
    /// Sends by state.
    pub sends: Vec<(String, i64)>,
    pub due: i64,
    pub oldest_due: Option<DateTime<Utc>>,
    pub expired_leases: i64,
    pub conversions_pending: i64,
    pub conversions_in_doubt: i64,
    pub conversions_rejected: i64,
    pub rates_pending: i64,
    /// Settled cost since 00:00 UTC per currency (`None`: the provider gave none).
    pub spend_today: Vec<(Option<String>, Decimal)>,
}

impl QueueState {
    /// Reads it: `status`'s queries and today's spend.
    pub async fn read(db: &Db, now: DateTime<Utc>) -> Result<Self, sqlx::Error> {
        let status = crate::status::read(db, now, 0).await?;
        let today = now
            .date_naive()
            .and_hms_opt(0, 0, 0)
            .map_or(now, |t| t.and_utc());
        let spend_today = crate::db::records::spend_since(db, today).await?;
        Ok(Self::from_status(&status, spend_today))
    }

    fn from_status(status: &Status, spend_today: Vec<(Option<String>, Decimal)>) -> Self {
        let mut sends: Vec<(String, i64)> = Vec::new();
        for depth in &status.sends {
            match sends.iter_mut().find(|(s, _)| *s == depth.state) {
                Some((_, n)) => *n += depth.sends,
                None => sends.push((depth.state.clone(), depth.sends)),
            }
        }
        // Final states: the estimate `status` reads (no count over the history).
        for estimate in &status.final_sends_estimate {
            sends.push((estimate.state.clone(), estimate.sends_estimate));
        }
        Self {
            at: status.at,
            sends,
            due: status.sends.iter().map(|d| d.due).sum(),
            oldest_due: status.oldest_due,
            expired_leases: status.expired_leases,
            conversions_pending: status.conversions_pending,
            conversions_in_doubt: status.conversions_in_doubt,
            conversions_rejected: status.conversions_rejected,
            rates_pending: status.rates_pending,
            spend_today,
        }
    }
}

/// True for the ways a pass ends well (exit 0): they move the last-success timestamp.
pub fn is_success(ended: Ended) -> bool {
    matches!(ended, Ended::Done | Ended::MaxRuntime)
}

/// Writes the Prometheus text format, with HELP and TYPE from [`METRICS`].
struct Exposition {
    out: String,
    last: Option<&'static str>,
}

impl Exposition {
    fn new() -> Self {
        Self {
            out: String::new(),
            last: None,
        }
    }

    fn sample(&mut self, name: &'static str, labels: &[(&str, &str)], value: impl Display) {
        if self.last != Some(name) {
            let help = METRICS
                .iter()
                .find(|m| m.name == name)
                .map_or("", |m| m.help);
            debug_assert!(!help.is_empty(), "{name} is not in METRICS");
            let _ = writeln!(self.out, "# HELP {name} {help}");
            let _ = writeln!(self.out, "# TYPE {name} gauge");
            self.last = Some(name);
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(value));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The pass's summary and the queue's state in the Prometheus text format. Labels of the
/// grouping key are not repeated: the Pushgateway adds them.
pub fn exposition(
    summary: &Summary,
    queue: Option<&QueueState>,
    ended_at: DateTime<Utc>,
) -> String {
    let mut e = Exposition::new();
    let s = summary;
    let end = ended_at.timestamp_millis() as f64 / 1000.0;
    e.sample("otp_reconcile_pass_duration_seconds", &[], s.elapsed_secs);
    e.sample("otp_reconcile_pass_end_timestamp_seconds", &[], end);
    if is_success(s.ended) {
        e.sample("otp_reconcile_last_success_timestamp_seconds", &[], end);
    }
    e.sample(
        "otp_reconcile_pass_ended",
        &[("ended", s.ended.as_str())],
        1,
    );
    for (name, value) in [
        ("otp_reconcile_pass_claimed", s.claimed),
        ("otp_reconcile_pass_checked", s.checked),
        ("otp_reconcile_pass_settled", s.settled),
        ("otp_reconcile_pass_rechecks", s.rechecks),
        ("otp_reconcile_pass_rejected", s.rejected),
        ("otp_reconcile_pass_expired", s.expired),
        ("otp_reconcile_pass_released", s.released),
        ("otp_reconcile_pass_requests", s.requests),
        ("otp_reconcile_pass_retries", s.retries),
        ("otp_reconcile_pass_conversions_sent", s.conversions.sent),
        (
            "otp_reconcile_pass_conversions_rejected",
            s.conversions.rejected,
        ),
        (
            "otp_reconcile_pass_conversions_possibly_duplicated",
            s.conversions.possibly_duplicated,
        ),
        ("otp_reconcile_pass_rates_sent", s.rates.sent),
        ("otp_reconcile_pass_rates_rejected", s.rates.rejected),
        (
            "otp_reconcile_pass_rates_changed_after_post",
            s.rates.changed_after_post,
        ),
        ("otp_reconcile_pass_db_statements", s.db_statements),
    ] {
        e.sample(name, &[], value);
    }
    if let Some(q) = queue {
        for state in SEND_STATES {
            let n = q
                .sends
                .iter()
                .find(|(s, _)| s == state)
                .map_or(0, |(_, n)| *n);
            e.sample("otp_reconcile_sends", &[("state", state)], n);
        }
        for (state, n) in &q.sends {
            if !SEND_STATES.contains(&state.as_str()) {
                e.sample("otp_reconcile_sends", &[("state", state)], n);
            }
        }
        e.sample("otp_reconcile_sends_due", &[], q.due);
        let age = q.oldest_due.map_or(0.0, |t| {
            ((q.at - t).num_milliseconds().max(0) as f64) / 1000.0
        });
        e.sample("otp_reconcile_oldest_due_age_seconds", &[], age);
        e.sample("otp_reconcile_leases_expired", &[], q.expired_leases);
        e.sample(
            "otp_reconcile_conversions_pending",
            &[],
            q.conversions_pending,
        );
        e.sample(
            "otp_reconcile_conversions_in_doubt",
            &[],
            q.conversions_in_doubt,
        );
        e.sample(
            "otp_reconcile_conversions_rejected",
            &[],
            q.conversions_rejected,
        );
        e.sample("otp_reconcile_rates_pending", &[], q.rates_pending);
        // Money as PostgreSQL's exact decimal text, never through a float.
        for (currency, amount) in &q.spend_today {
            let currency = currency.as_deref().filter(|c| !c.is_empty());
            e.sample(
                "otp_reconcile_spend_today",
                &[("currency", currency.unwrap_or("unknown"))],
                amount.normalize(),
            );
        }
    }
    e.out
}

/// The group's URL: `{gateway}/metrics/job/otp-reconcile/kind/{kind}/shard/{shard}`.
pub fn group_url(gateway: &Url, kind: &str, shard: &str) -> Result<Url, PushError> {
    let mut url = gateway.clone();
    url.path_segments_mut()
        .map_err(|()| PushError::BadUrl)?
        .pop_if_empty()
        .extend(["metrics", "job", JOB, "kind", kind, "shard", shard]);
    Ok(url)
}

/// POSTs `body` to the group `kind`/`shard` at `gateway`: metrics of the same names in
/// the group are replaced, the others (the last success) kept.
pub async fn push(gateway: &Url, kind: &str, shard: &str, body: String) -> Result<(), PushError> {
    let url = group_url(gateway, kind, shard)?;
    let http = |e: reqwest::Error| PushError::Http(crate::redact::reqwest_error(e));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(http)?;
    let response = client
        .post(url)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(body)
        .send()
        .await
        .map_err(http)?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(PushError::Status {
        status: status.as_u16(),
        body: crate::redact::escape_control(body.trim())
            .chars()
            .take(300)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_has_one_unique_name_with_the_prefix() {
        let mut names: Vec<&str> = METRICS.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), METRICS.len());
        assert!(names.iter().all(|n| n.starts_with("otp_reconcile_")));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn the_group_url_keeps_the_gateways_path() {
        let gateway = Url::parse("http://127.0.0.1:9091/prefix/").unwrap();
        assert_eq!(
            group_url(&gateway, "run", "1-of-4").unwrap().as_str(),
            "http://127.0.0.1:9091/prefix/metrics/job/otp-reconcile/kind/run/shard/1-of-4"
        );
    }
}
