//! A pass's counts, as they are recorded in `passes`, printed, and written as JSON.

use super::counters::Counters;
use crate::db::DbError;
use crate::provider::{Failure, Trip};
use serde::Serialize;

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// Nothing was due any more.
    Done,
    /// `--max-runtime` elapsed; what had not started was released.
    MaxRuntime,
    /// The provider refused our credentials or IP (-1, -2, HTTP 401/403).
    CredentialsRefused,
    /// SIGINT or SIGTERM.
    Interrupted,
    /// The circuit breaker opened: the provider was unreachable or failing on most
    /// requests; what was not checked was released.
    ProviderUnavailable,
    /// The database failed mid-pass.
    Failed,
}

impl Ended {
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Done => "done",
            Ended::MaxRuntime => "max_runtime",
            Ended::CredentialsRefused => "credentials_refused",
            Ended::Interrupted => "interrupted",
            Ended::ProviderUnavailable => "provider_unavailable",
            Ended::Failed => "failed",
        }
    }
}

/// What a pass's work came to, for judging how it ended.
#[derive(Debug, Default)]
pub struct Outcome<'a> {
    /// The database error that stopped it.
    pub failed: Option<&'a DbError>,
    /// The answer that refused our credentials and stopped it.
    pub fatal: Option<&'a Failure>,
    /// Why the circuit breaker opened, if it did.
    pub tripped: Option<Trip>,
    /// SIGINT or SIGTERM.
    pub interrupted: bool,
    /// `--max-runtime`, or a stage's share of it, stopped the claims.
    pub hit_deadline: bool,
}

impl Ended {
    /// How a pass ended, and the error it records, judged in this order: the database
    /// failed, the provider refused our credentials, the breaker opened, a signal, the
    /// deadline; done otherwise.
    pub fn judge(outcome: Outcome) -> (Ended, Option<String>) {
        match outcome {
            Outcome {
                failed: Some(e), ..
            } => (Ended::Failed, Some(crate::db::cause_chain(e))),
            Outcome { fatal: Some(f), .. } => (Ended::CredentialsRefused, Some(f.to_string())),
            Outcome {
                tripped: Some(trip),
                ..
            } => (
                Ended::ProviderUnavailable,
                Some(format!(
                    "{trip}; every send not checked was released for the next pass"
                )),
            ),
            Outcome {
                interrupted: true, ..
            } => (Ended::Interrupted, None),
            Outcome {
                hit_deadline: true, ..
            } => (Ended::MaxRuntime, None),
            Outcome { .. } => (Ended::Done, None),
        }
    }
}

/// Why sends were left for a later check.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rechecks {
    pub still_sending: u64,
    pub not_yet_visible: u64,
    pub unreadable: u64,
    /// Retries ran out on transient failures (timeouts, 5xx, 429, -18, -16...).
    pub transient: u64,
}

/// What the postbacks stage did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Conversions {
    pub claimed: u64,
    /// Acknowledged (status 0): never posted again.
    pub sent: u64,
    pub rejected: u64,
    /// Transient failures: posted again by a later pass.
    pub retry_later: u64,
    pub released: u64,
    pub lease_lost: u64,
    /// Acknowledged now, but an earlier attempt's outcome is unknown (a pass died while
    /// posting it, or a request timed out after it was sent): the provider may count
    /// it twice.
    pub possibly_duplicated: u64,
}

/// What the rates stage did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Rates {
    /// Closed windows new or whose numbers changed in this computation.
    pub windows_changed: u64,
    /// Posted windows whose numbers now differ from what was posted (posted again only
    /// with `--repost-rates`).
    pub changed_after_post: u64,
    pub claimed: u64,
    pub sent: u64,
    pub rejected: u64,
    pub retry_later: u64,
    pub released: u64,
}

/// What a pass did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub pass_id: i64,
    pub ended: Ended,
    pub claimed: u64,
    /// Sends checked and written (settled + re-checks + rejected + expired).
    pub checked: u64,
    pub settled: u64,
    pub rechecks: u64,
    pub recheck_reasons: Rechecks,
    pub rejected: u64,
    pub expired: u64,
    /// Claimed but not checked (stopping), given back with no check counted.
    pub released: u64,
    /// Checked, but the lease had expired and another pass held the send: not written.
    pub lease_lost: u64,
    pub requests: u64,
    pub retries: u64,
    /// The highest the in-flight limit went (adaptive, up to `--concurrency`).
    pub in_flight_limit_peak: usize,
    pub records_changed: u64,
    pub attempts_changed: u64,
    pub conversions: Conversions,
    pub rates: Rates,
    pub db_statements: u64,
    pub elapsed_secs: f64,
    pub sends_per_sec: f64,
    pub requests_per_sec: f64,
    pub db_statements_per_send: f64,
    /// The process's peak resident memory so far (Linux VmHWM), in KiB.
    pub peak_rss_kib: Option<u64>,
    /// The fatal answer or database error that ended the pass.
    pub error: Option<String>,
}

/// The numbers a pass hands over for its summary.
pub struct Totals<'a> {
    pub pass_id: i64,
    pub ended: Ended,
    pub counters: &'a Counters,
    pub requests: u64,
    pub retries: u64,
    pub in_flight_limit_peak: usize,
    pub db_statements: u64,
    pub elapsed_secs: f64,
    pub error: Option<String>,
}

impl Summary {
    pub fn new(t: Totals) -> Self {
        let (c, cv, rt) = (
            &t.counters.sends,
            &t.counters.conversions,
            &t.counters.rates,
        );
        let recheck_reasons = Rechecks {
            still_sending: c.still_sending.get(),
            not_yet_visible: c.not_yet_visible.get(),
            unreadable: c.unreadable.get(),
            transient: c.transient.get(),
        };
        let rechecks = recheck_reasons.still_sending
            + recheck_reasons.not_yet_visible
            + recheck_reasons.unreadable
            + recheck_reasons.transient;
        let checked = c.settled.get() + rechecks + c.rejected.get() + c.expired.get();
        let per_sec = |n: u64| {
            if t.elapsed_secs > 0.0 {
                (n as f64 / t.elapsed_secs * 10.0).round() / 10.0
            } else {
                0.0
            }
        };
        Summary {
            pass_id: t.pass_id,
            ended: t.ended,
            claimed: c.claimed.get(),
            checked,
            settled: c.settled.get(),
            rechecks,
            recheck_reasons,
            rejected: c.rejected.get(),
            expired: c.expired.get(),
            released: c.released.get(),
            lease_lost: c.lease_lost.get(),
            requests: t.requests,
            retries: t.retries,
            in_flight_limit_peak: t.in_flight_limit_peak,
            records_changed: c.records_changed.get(),
            attempts_changed: c.attempts_changed.get(),
            conversions: Conversions {
                claimed: cv.claimed.get(),
                sent: cv.sent.get(),
                rejected: cv.rejected.get(),
                retry_later: cv.later.get(),
                released: cv.released.get(),
                lease_lost: cv.lease_lost.get(),
                possibly_duplicated: cv.possibly_duplicated.get(),
            },
            rates: Rates {
                windows_changed: rt.windows_changed.get(),
                changed_after_post: rt.changed_after_post.get(),
                claimed: rt.claimed.get(),
                sent: rt.sent.get(),
                rejected: rt.rejected.get(),
                retry_later: rt.later.get(),
                released: rt.released.get(),
            },
            db_statements: t.db_statements,
            elapsed_secs: (t.elapsed_secs * 1000.0).round() / 1000.0,
            sends_per_sec: per_sec(checked),
            requests_per_sec: per_sec(t.requests),
            db_statements_per_send: if checked > 0 {
                (t.db_statements as f64 / checked as f64 * 1000.0).round() / 1000.0
            } else {
                0.0
            },
            peak_rss_kib: peak_rss_kib(),
            error: t.error,
        }
    }

    /// Writes the summary on stderr, whatever `RUST_LOG` filters: as text on a
    /// terminal, as one JSON line shaped like the log events otherwise.
    pub fn report(&self) {
        if crate::telemetry::is_json() {
            let line = serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "INFO",
                "fields": { "message": "pass summary", "summary": self },
                "target": "otp_reconcile::summary",
            });
            eprintln!("{line}");
        } else {
            eprintln!("{}", self.render());
        }
    }

    /// The summary as a few lines for a terminal or a log.
    pub fn render(&self) -> String {
        let r = &self.recheck_reasons;
        format!(
            "pass {id} ended: {ended}{error}\n\
             claimed {claimed}, checked {checked}: settled {settled}, re-check later {rechecks} \
             (still sending {ss}, not yet visible {nv}, unreadable {ur}, transient failures {tf}), \
             rejected {rejected}, expired {expired}\n\
             released unchecked {released}, lease lost {lost}; requests {requests} ({retries} retries, \
             in-flight limit up to {peak}); \
             records changed {rc}, attempts changed {ac}\n\
             conversions: posted {cs}, rejected {cr}, retry later {cl}, released {crel}, \
             possibly duplicated {cd}\n\
             rates: windows computed {rw}, posted {rs}, rejected {rr}, retry later {rl}, \
             changed after posting {rch}\n\
             {elapsed:.1} s: {sps:.0} sends/s, {rps:.0} requests/s, {stmts:.3} database statements per send{rss}",
            id = self.pass_id,
            ended = self.ended.as_str(),
            error = self
                .error
                .as_ref()
                .map(|e| format!(" ({})", crate::text::escape(e)))
                .unwrap_or_default(),
            claimed = self.claimed,
            checked = self.checked,
            settled = self.settled,
            rechecks = self.rechecks,
            ss = r.still_sending,
            nv = r.not_yet_visible,
            ur = r.unreadable,
            tf = r.transient,
            rejected = self.rejected,
            expired = self.expired,
            released = self.released,
            lost = self.lease_lost,
            requests = self.requests,
            retries = self.retries,
            peak = self.in_flight_limit_peak,
            rc = self.records_changed,
            ac = self.attempts_changed,
            cs = self.conversions.sent,
            cr = self.conversions.rejected,
            cl = self.conversions.retry_later,
            crel = self.conversions.released,
            cd = self.conversions.possibly_duplicated,
            rw = self.rates.windows_changed,
            rs = self.rates.sent,
            rr = self.rates.rejected,
            rl = self.rates.retry_later,
            rch = self.rates.changed_after_post,
            elapsed = self.elapsed_secs,
            sps = self.sends_per_sec,
            rps = self.requests_per_sec,
            stmts = self.db_statements_per_send,
            rss = self
                .peak_rss_kib
                .map(|k| format!(", peak RSS {:.1} MiB", k as f64 / 1024.0))
                .unwrap_or_default(),
        )
    }
}

/// Peak resident set size of this process, from /proc (Linux only).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::FatalCause;

    #[test]
    fn a_pass_ends_by_the_first_cause_that_says() {
        let failed = DbError::Query(sqlx::Error::PoolTimedOut);
        let fatal = Failure::Fatal {
            cause: FatalCause::Authentication,
            reason: "bad key".into(),
        };
        let trip = Trip {
            failed: 10,
            of: 10,
            span: "in a row".into(),
            last_cause: "timed out".into(),
        };
        let everything = || Outcome {
            failed: Some(&failed),
            fatal: Some(&fatal),
            tripped: Some(trip.clone()),
            interrupted: true,
            hit_deadline: true,
        };
        let (ended, error) = Ended::judge(everything());
        assert_eq!(ended, Ended::Failed);
        assert!(error.unwrap().starts_with("database error"));
        let no_db = || Outcome {
            failed: None,
            ..everything()
        };
        let (ended, error) = Ended::judge(no_db());
        assert_eq!(ended, Ended::CredentialsRefused);
        assert!(error.unwrap().contains("bad key"));
        let provider_down = || Outcome {
            fatal: None,
            ..no_db()
        };
        let (ended, error) = Ended::judge(provider_down());
        assert_eq!(ended, Ended::ProviderUnavailable);
        assert!(error.unwrap().ends_with("released for the next pass"));
        let signalled = || Outcome {
            tripped: None,
            ..provider_down()
        };
        assert_eq!(Ended::judge(signalled()), (Ended::Interrupted, None));
        let deadline = Outcome {
            interrupted: false,
            ..signalled()
        };
        assert_eq!(Ended::judge(deadline), (Ended::MaxRuntime, None));
        assert_eq!(Ended::judge(Outcome::default()), (Ended::Done, None));
    }
}
