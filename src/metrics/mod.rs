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
//! [`exposition`] writes a pass's summary and the queue's state in the text format,
//! [`push`] sends it.

mod exposition;
mod push;

pub use exposition::{QueueState, exposition, is_success};
pub use push::{PushError, group_url, push, push_pass};

/// The `job` label of every group the job pushes.
pub const JOB: &str = "otp-reconcile";

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
}
