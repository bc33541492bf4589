//! The one place that reads HTTP statuses and the provider's status codes and decides
//! what an answer means. Everything else matches on [`Failure`].

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;
use std::time::Duration;

use super::scan::{self, Limits};
use crate::text::escape;

/// Why a call did not succeed, sorted by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Failure {
    /// The provider refused this item (-22, -14, or a code it does not document here).
    /// Sending the same request again will not help; keep the reason.
    #[error("rejected by the provider (status {}): {}", escape(.status), escape(.reason))]
    Rejected { status: String, reason: String },

    /// Worth another try, after `after` if the provider said how long.
    #[error("transient: {cause}")]
    Retry {
        cause: Transient,
        after: Option<Duration>,
    },

    /// The provider said success but the answer cannot be read (a field that does not
    /// parse, an answer over the size cap). Keep the item for a later re-check and
    /// record the problem; an immediate retry would read the same answer.
    #[error("unreadable answer: {}", escape(.problem))]
    Unreadable { problem: String },

    /// Every further call would fail the same way: stop the whole pass.
    #[error("fatal: {cause} ({})", escape(.reason))]
    Fatal { cause: FatalCause, reason: String },
}

/// What went wrong, for a retryable failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Transient {
    #[error("timed out")]
    Timeout,
    #[error("could not connect: {}", escape(.0))]
    Connect(String),
    #[error("connection failed mid-request: {}", escape(.0))]
    Connection(String),
    #[error("HTTP {0}")]
    Http(u16),
    #[error("rate limited (HTTP 429)")]
    RateLimited,
    /// -18: the provider's own failure.
    #[error("provider failure (status -18): {}", escape(.0))]
    ProviderBusy(String),
    /// -16: the timestamp was stale; the retry is signed afresh.
    #[error("timestamp expired (status -16): {}", escape(.0))]
    TimestampExpired(String),
    /// Not JSON, truncated, or no status in it.
    #[error("malformed answer: {}", escape(.0))]
    Malformed(String),
    /// An HTTP 4xx without the provider's JSON: something in between (a proxy, a load
    /// balancer) answered, not the provider. Never a verdict on the item.
    #[error("HTTP {0} without a provider answer (not the provider: a proxy?)")]
    NotProvider(u16),
}

/// Why the whole pass must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FatalCause {
    /// -1.
    #[error("the provider refused our credentials (status -1)")]
    Authentication,
    /// -2.
    #[error("the provider refused our IP address (status -2)")]
    IpNotAllowed,
    /// HTTP 401 or 403 before any JSON.
    #[error("the provider's server refused access (HTTP 401/403)")]
    Forbidden,
    /// HTTP 404/405 or a redirect without a provider answer: the base URL or path is
    /// wrong, so every call would fail alike.
    #[error("the endpoint does not exist at the configured base URL")]
    Endpoint,
}

impl Health {
    /// A failure of either kind.
    pub fn failed(self) -> bool {
        matches!(self, Health::Failing | Health::TimedOut)
    }
}

/// What one request says about the provider's health, for the circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The provider answered, whatever it said (success, a refusal, an unreadable
    /// record, -16).
    Answered,
    /// Unreachable or failing: a connection error, HTTP 5xx, an answer without its
    /// JSON, -18 (its own failure).
    Failing,
    /// No answer in time: a provider that hangs, or a machine too busy to read its
    /// answers. Weaker evidence than a failure: it opens the breaker only when nothing
    /// was answered for a whole window.
    TimedOut,
    /// Says nothing either way (429: we are too fast, not it down).
    Neutral,
}

/// The health a call's outcome shows.
pub fn health<T>(outcome: &Result<T, Failure>) -> Health {
    match outcome {
        Ok(_) => Health::Answered,
        Err(failure) => failure.health(),
    }
}

impl Failure {
    /// The health this failure shows.
    pub fn health(&self) -> Health {
        match self {
            Failure::Retry { cause, .. } => match cause {
                Transient::RateLimited => Health::Neutral,
                Transient::TimestampExpired(_) => Health::Answered,
                Transient::Timeout => Health::TimedOut,
                Transient::Connect(_)
                | Transient::Connection(_)
                | Transient::Http(_)
                | Transient::ProviderBusy(_)
                | Transient::Malformed(_)
                | Transient::NotProvider(_) => Health::Failing,
            },
            Failure::Rejected { .. } | Failure::Unreadable { .. } | Failure::Fatal { .. } => {
                Health::Answered
            }
        }
    }
}

impl Failure {
    /// True for failures worth retrying now.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Failure::Retry { .. })
    }

    /// The delay the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Failure::Retry { after, .. } => *after,
            _ => None,
        }
    }

    /// The provider's status code, when the failure carries one.
    pub fn status(&self) -> Option<&str> {
        match self {
            Failure::Rejected { status, .. } => Some(status),
            _ => None,
        }
    }
}

/// The JSON envelope every answer carries.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub status: String,
    pub reason: String,
    /// `data` exactly as the provider wrote it; `None` when absent or null.
    pub data: Option<Box<RawValue>>,
}

/// The envelope as it is read: only its three fields, `data` left as text.
#[derive(Deserialize)]
struct Wire {
    status: Option<Value>,
    reason: Option<Value>,
    data: Option<Box<RawValue>>,
}

/// Classifies a complete answer with the default [`Limits`]. `now` is when it
/// arrived, for `Retry-After` dates.
pub fn classify(
    http: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Envelope, Failure> {
    classify_within(http, headers, body, now, Limits::default())
}

/// Classifies a complete answer whose shape must stay within `limits`: an answer with
/// duplicate keys, too many attempts or too many values is unreadable, refused before
/// anything is built from it.
pub fn classify_within(
    http: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
    limits: Limits,
) -> Result<Envelope, Failure> {
    if http == StatusCode::UNAUTHORIZED || http == StatusCode::FORBIDDEN {
        return Err(Failure::Fatal {
            cause: FatalCause::Forbidden,
            reason: format!("HTTP {}", http.as_u16()),
        });
    }
    if http == StatusCode::TOO_MANY_REQUESTS {
        return Err(Failure::Retry {
            cause: Transient::RateLimited,
            after: retry_after(headers, now),
        });
    }
    if http.is_server_error() || http == StatusCode::REQUEST_TIMEOUT {
        return Err(Failure::Retry {
            cause: Transient::Http(http.as_u16()),
            after: retry_after(headers, now),
        });
    }
    if let Err(refused) = scan::check(body, limits) {
        return Err(Failure::Unreadable {
            problem: refused.to_string(),
        });
    }
    let envelope = envelope(body);
    if !http.is_success() {
        // A provider answer inside an error status still says what happened.
        if let Ok(env) = envelope {
            return by_status(env, now);
        }
        let reason = format!("HTTP {} without a provider answer", http.as_u16());
        return Err(
            if http.is_redirection()
                || http == StatusCode::NOT_FOUND
                || http == StatusCode::METHOD_NOT_ALLOWED
            {
                Failure::Fatal {
                    cause: FatalCause::Endpoint,
                    reason,
                }
            } else {
                // A proxy's error page is no verdict of the provider's on this item.
                Failure::Retry {
                    cause: Transient::NotProvider(http.as_u16()),
                    after: retry_after(headers, now),
                }
            },
        );
    }
    by_status(envelope?, now)
}

/// Classifies by the provider's status code.
fn by_status(env: Envelope, now: DateTime<Utc>) -> Result<Envelope, Failure> {
    let reason = env.reason.clone();
    match env.status.as_str() {
        "0" => Ok(env),
        "-1" => Err(Failure::Fatal {
            cause: FatalCause::Authentication,
            reason,
        }),
        "-2" => Err(Failure::Fatal {
            cause: FatalCause::IpNotAllowed,
            reason,
        }),
        // Re-sign in the next second: a retry in the same second would carry the
        // same timestamp and sign.
        "-16" => Err(Failure::Retry {
            cause: Transient::TimestampExpired(reason),
            after: Some(until_next_second(now)),
        }),
        "-18" => Err(Failure::Retry {
            cause: Transient::ProviderBusy(reason),
            after: None,
        }),
        status => Err(Failure::Rejected {
            status: status.to_owned(),
            reason,
        }),
    }
}

/// Reads `{"status", "reason", "data"}`. The status may be a string or a number.
fn envelope(body: &[u8]) -> Result<Envelope, Failure> {
    let malformed = |why: String| Failure::Retry {
        cause: Transient::Malformed(why),
        after: None,
    };
    let wire: Wire = serde_json::from_slice(body).map_err(|e| {
        if e.is_data() {
            malformed("not a JSON object".into())
        } else {
            malformed(format!("not JSON ({e})"))
        }
    })?;
    let status = match &wire.status {
        Some(Value::String(s)) if is_code(s.trim()) => s.trim().to_owned(),
        Some(Value::Number(n)) if is_code(&n.to_string()) => n.to_string(),
        _ => return Err(malformed("no integer `status`".into())),
    };
    // The reason is kept in the database: a NUL would fail the write.
    let reason = match wire.reason {
        Some(Value::String(s)) => s,
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
    .replace('\0', "\u{fffd}");
    Ok(Envelope {
        status,
        reason,
        data: wire.data.filter(|d| d.get().trim() != "null"),
    })
}

fn is_code(s: &str) -> bool {
    s.parse::<i64>().is_ok()
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(value)
        .ok()?
        .with_timezone(&Utc);
    Some((at - now).to_std().unwrap_or(Duration::ZERO))
}

fn until_next_second(now: DateTime<Utc>) -> Duration {
    let into_second = Duration::from_nanos(u64::from(now.timestamp_subsec_nanos()));
    Duration::from_secs(1).saturating_sub(into_second) + Duration::from_millis(5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn answer(http: u16, body: &str) -> Result<Envelope, Failure> {
        classify(
            StatusCode::from_u16(http).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
            Utc::now(),
        )
    }

    #[test]
    fn status_codes_are_sorted_by_what_to_do() {
        assert!(answer(200, r#"{"status":"0","reason":"success"}"#).is_ok());
        assert!(answer(200, r#"{"status":0}"#).is_ok());
        for (code, cause) in [
            ("-1", FatalCause::Authentication),
            ("-2", FatalCause::IpNotAllowed),
        ] {
            let body = format!(r#"{{"status":"{code}","reason":"x"}}"#);
            assert!(
                matches!(answer(200, &body), Err(Failure::Fatal { cause: c, .. }) if c == cause)
            );
        }
        for code in ["-14", "-22", "-10", "-27", "-99"] {
            let body = format!(r#"{{"status":"{code}","reason":"why"}}"#);
            assert_eq!(
                answer(200, &body).unwrap_err(),
                (Failure::Rejected {
                    status: code.into(),
                    reason: "why".into()
                })
            );
        }
        let stale = answer(200, r#"{"status":"-16","reason":"expired"}"#).unwrap_err();
        assert!(
            matches!(&stale, Failure::Retry { cause: Transient::TimestampExpired(_), after: Some(d) } if *d <= Duration::from_millis(1005))
        );
        assert!(matches!(
            answer(200, r#"{"status":"-18"}"#),
            Err(Failure::Retry {
                cause: Transient::ProviderBusy(_),
                after: None
            })
        ));
    }

    #[test]
    fn http_statuses_come_first() {
        assert!(matches!(
            answer(401, ""),
            Err(Failure::Fatal {
                cause: FatalCause::Forbidden,
                ..
            })
        ));
        assert!(matches!(
            answer(403, "{}"),
            Err(Failure::Fatal {
                cause: FatalCause::Forbidden,
                ..
            })
        ));
        assert!(matches!(
            answer(500, ""),
            Err(Failure::Retry {
                cause: Transient::Http(500),
                ..
            })
        ));
        assert!(matches!(
            answer(503, ""),
            Err(Failure::Retry {
                cause: Transient::Http(503),
                ..
            })
        ));
        assert!(matches!(
            answer(404, "not here"),
            Err(Failure::Fatal {
                cause: FatalCause::Endpoint,
                ..
            })
        ));
        assert!(matches!(
            answer(400, "<html>bad</html>"),
            Err(Failure::Retry {
                cause: Transient::NotProvider(400),
                ..
            })
        ));
        assert_eq!(
            health(&answer(400, "<html>bad</html>")),
            Health::Failing,
            "a proxy's 4xx counts toward the breaker"
        );
        assert!(
            matches!(answer(400, r#"{"status":"-22","reason":"p"}"#), Err(Failure::Rejected { status, .. }) if status == "-22")
        );
    }

    #[test]
    fn malformed_answers_are_retryable() {
        for body in [
            "<html>",
            r#"{"status":"0","da"#,
            "[]",
            r#"{"reason":"no status"}"#,
            "",
        ] {
            assert!(
                matches!(
                    answer(200, body),
                    Err(Failure::Retry {
                        cause: Transient::Malformed(_),
                        ..
                    })
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn duplicate_keys_make_an_answer_unreadable_wherever_they_are() {
        for (body, key) in [
            (r#"{"status":"0","status":"-1"}"#, "`status`"),
            (
                r#"{"status":"0","data":{"sms":{"pay":"0.0051","pay":"99.99"}}}"#,
                "`pay` in `data.sms`",
            ),
        ] {
            match answer(200, body) {
                Err(Failure::Unreadable { problem }) => assert!(
                    problem.contains(&format!("duplicate key {key}")),
                    "{problem}"
                ),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_a_date() {
        let now = Utc::now();
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(3)));
        let later = (now + chrono::Duration::seconds(10)).to_rfc2822();
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        let d = retry_after(&headers, now).unwrap();
        assert!(
            d > Duration::from_secs(8) && d <= Duration::from_secs(10),
            "{d:?}"
        );
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }
}
