//! The common path of every provider request: count it, wait the latency, apply the
//! rate limit, then a scripted or drawn fault, then check `Api-Key`, `Sign` and
//! `Timestamp`, then let the endpoint answer; log what was answered.

use super::mangle::{duplicate_key, duplicate_status, huge_record, regressed, spoil};
use super::reply::{Reply, reason_for};
use crate::draw::Draw;
use crate::faults::Fault;
use crate::server::ConnKill;
use crate::state::State;
use crate::stats::LoggedRequest;
use axum::Extension;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use std::sync::Arc;

/// A provider endpoint as the simulator counts it: the name its requests have in the
/// stats and the log, and what they are about.
#[derive(Debug, Clone, Copy)]
pub(super) struct Endpoint {
    name: &'static str,
    about: About,
}

/// What a request is about: records and postbacks are counted per id, rates per post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum About {
    Record,
    Postback,
    Rate,
}

impl Endpoint {
    /// `GET /otp/verification/record/{verificationId}`
    pub const BY_VERIFICATION_ID: Self = Self::new("record_by_verification_id", About::Record);
    /// `POST /otp/verification/orderId/record`
    pub const BY_ORDER_ID: Self = Self::new("record_by_order_id", About::Record);
    /// `POST /otp/postback/backfill`
    pub const OTP_POSTBACK: Self = Self::new("otp_postback", About::Postback);
    /// `POST /sms/postback/backfill`
    pub const SMS_POSTBACK: Self = Self::new("sms_postback", About::Postback);
    /// `POST /otp/backfillRate`
    pub const BACKFILL_RATE: Self = Self::new("backfill_rate", About::Rate);

    const fn new(name: &'static str, about: About) -> Self {
        Self { name, about }
    }
}

/// The common path of every provider request. `respond` builds the endpoint's own
/// answer once the request passed the faults and the signature check; `commit` says
/// whether that answer is really sent (false when it is only truncated).
pub(super) async fn answer(
    state: Arc<State>,
    kill: Option<Extension<ConnKill>>,
    endpoint: Endpoint,
    key: String,
    headers: &HeaderMap,
    body: Option<&Value>,
    respond: impl Fn(&State, bool) -> Reply,
) -> Response {
    let earlier = state
        .stats()
        .arrived(endpoint.name, &key, endpoint.about != About::Record);
    let draw = Draw::new(state.seed, format!("{}:{key}:{earlier}", endpoint.name));
    let faults = state.faults();
    tokio::time::sleep(faults.latency(&draw)).await;

    let fault = if let Some(wait) = state.rate_limited() {
        Fault::TooManyRequests { retry_after: wait }
    } else {
        state
            .scripts()
            .next(&key)
            .unwrap_or_else(|| faults.draw(&draw))
    };
    let reply = match fault {
        Fault::Ok => match state.auth.check(headers) {
            Err(code) => Reply::status(code, reason_for(code)),
            Ok(()) => respond(&state, true),
        },
        Fault::Status(code) => Reply::status(code, reason_for(code)),
        Fault::Http(code) => Reply::http(code, None),
        Fault::TooManyRequests { retry_after } => Reply::http(429, Some(retry_after)),
        Fault::Malformed => Reply {
            body: b"<html><head><title>502 Bad Gateway</title></head>".to_vec(),
            label: "malformed".into(),
            ..Reply::status(0, "")
        },
        Fault::Truncated => {
            let mut full = respond(&state, false);
            full.body.truncate(full.body.len() / 2);
            full.label = "truncated".into();
            full
        }
        Fault::BadRecord | Fault::Oversized => {
            let full = respond(&state, false);
            let mut answer: Value = serde_json::from_slice(&full.body).unwrap_or(Value::Null);
            let label = if fault == Fault::BadRecord {
                spoil(&mut answer["data"]);
                "bad_record"
            } else {
                answer["padding"] = Value::from(" ".repeat(2 * 1024 * 1024 + 1));
                "oversized"
            };
            Reply {
                body: serde_json::to_vec(&answer).expect("JSON serializes"),
                label: label.into(),
                ..full
            }
        }
        Fault::HugeRecord => Reply {
            body: huge_record(),
            label: "huge_record".into(),
            ..Reply::status(0, "")
        },
        Fault::DuplicateKey | Fault::DuplicateStatus | Fault::Regressed => {
            let full = respond(&state, false);
            let answer: Value = serde_json::from_slice(&full.body).unwrap_or(Value::Null);
            let (body, label) = match fault {
                Fault::DuplicateKey => (duplicate_key(answer), "duplicate_key"),
                Fault::DuplicateStatus => (duplicate_status(answer), "duplicate_status"),
                _ => (regressed(answer), "regressed"),
            };
            Reply {
                body,
                label: label.into(),
                ..full
            }
        }
        Fault::Drop | Fault::Stall => {
            let label = if fault == Fault::Drop {
                "drop"
            } else {
                "stall"
            };
            log(&state, endpoint, key, headers, body, label);
            if fault == Fault::Stall {
                tokio::time::sleep(faults.stall()).await;
            }
            return close_unanswered(kill).await;
        }
    };
    log(&state, endpoint, key, headers, body, &reply.label);
    reply.into_response()
}

fn log(
    state: &State,
    endpoint: Endpoint,
    key: String,
    headers: &HeaderMap,
    body: Option<&Value>,
    label: &str,
) {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut stats = state.stats();
    if endpoint.about == About::Rate {
        stats.rate_posted(body.cloned().unwrap_or(Value::Null), label);
    }
    stats.answered(
        endpoint.name,
        LoggedRequest {
            endpoint: endpoint.name.to_owned(),
            key,
            timestamp: text("Timestamp"),
            sign: text("Sign"),
            answer: label.to_owned(),
        },
    );
}

/// Closes the connection without a byte of answer.
async fn close_unanswered(kill: Option<Extension<ConnKill>>) -> Response {
    match kill {
        Some(Extension(ConnKill(token))) => {
            token.cancel();
            std::future::pending().await
        }
        // Outside the accept loop there is no connection to close.
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
