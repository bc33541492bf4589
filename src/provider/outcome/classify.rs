//! The classifier: an HTTP status, its headers and the body in, an [`Envelope`] or a
//! [`Failure`] out. HTTP statuses come first, then the shape check (while the answer is
//! read), then the provider's status code.

use super::envelope::{self, Envelope};
use super::{Failure, FatalCause, Transient};
use crate::provider::shape::{self, Limits, Unread};
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use std::time::Duration;

/// Classifies a complete answer with the default [`Limits`]. `now` is when it
/// arrived, for `Retry-After` dates.
pub fn classify<'a>(
    http: StatusCode,
    headers: &HeaderMap,
    body: &'a [u8],
    now: DateTime<Utc>,
) -> Result<Envelope<'a>, Failure> {
    classify_within(http, headers, body, now, Limits::default())
}

/// Classifies a complete answer whose shape must stay within `limits`: an answer with
/// duplicate keys, too many attempts or too many values is unreadable, refused while it
/// is read (see [`shape`] for what it may have built by then).
pub fn classify_within<'a>(
    http: StatusCode,
    headers: &HeaderMap,
    body: &'a [u8],
    now: DateTime<Utc>,
    limits: Limits,
) -> Result<Envelope<'a>, Failure> {
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
    // One reading of the text: the tree `data` is read from is built here.
    let envelope = match shape::read(body, limits) {
        Ok(tree) => envelope::from_tree(body, tree),
        Err(Unread::NotJson) => envelope::from_text(body),
        Err(Unread::Refused(refused)) => {
            return Err(Failure::Unreadable {
                problem: refused.to_string(),
            });
        }
    };
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
fn by_status(env: Envelope<'_>, now: DateTime<Utc>) -> Result<Envelope<'_>, Failure> {
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
    use super::super::{Health, health};
    use super::*;
    use reqwest::header::HeaderValue;

    fn answer(http: u16, body: &str) -> Result<Envelope<'_>, Failure> {
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
