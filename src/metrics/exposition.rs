//! The Prometheus text format of a pass's summary and of the queue it leaves.

use super::METRICS;
use crate::db::Db;
use crate::pass::{Ended, Summary};
use crate::status::Status;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use std::fmt::{Display, Write};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
