//! The provider's five endpoints and the simulator's own `/_sim/*` control routes.
//!
//! Every provider request goes through [`answer`]: count it, wait the latency, apply
//! the rate limit, then a scripted or drawn fault, then check `Api-Key`, `Sign` and
//! `Timestamp`, then the endpoint's own body checks and answer.

use super::State;
use super::draw::Draw;
use super::faults::{Fault, Faults, parse_script};
use super::records::{CostChange, Lookup};
use super::server::ConnKill;
use super::stats::LoggedRequest;
use crate::provider::Endpoint;
use crate::provider::sign::sign;
use crate::record::{parse_decimal, parse_time};
use axum::body::Bytes;
use axum::extract::{Path, Query};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router, extract::State as Shared};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/otp/verification/record/{id}",
            get(by_verification_id).post(by_verification_id),
        )
        .route("/otp/verification/orderId/record", post(by_order_id))
        .route("/otp/postback/backfill", post(otp_postback))
        .route("/sms/postback/backfill", post(sms_postback))
        .route("/otp/backfillRate", post(backfill_rate))
        .route("/_sim/stats", get(stats))
        .route("/_sim/requests", get(requests))
        .route("/_sim/faults", get(get_faults).put(put_faults))
        .route("/_sim/script", post(post_script))
        .route("/_sim/cost-change", put(put_cost_change))
        .route("/_sim/reset", post(reset))
        .fallback(unknown)
        .with_state(state)
}

/// An answer before it becomes a response.
struct Reply {
    http: StatusCode,
    retry_after: Option<u64>,
    body: Vec<u8>,
    /// How the stats and the log name it: a status code or a fault.
    label: String,
}

impl Reply {
    fn status(code: i64, reason: &str) -> Self {
        Self::json(code, reason, None)
    }

    fn json(code: i64, reason: &str, data: Option<Value>) -> Self {
        let mut body = Map::new();
        body.insert("status".into(), Value::from(code.to_string()));
        body.insert("reason".into(), Value::from(reason));
        if let Some(data) = data {
            body.insert("data".into(), data);
        }
        Self {
            http: StatusCode::OK,
            retry_after: None,
            body: serde_json::to_vec(&body).expect("JSON serializes"),
            label: code.to_string(),
        }
    }

    fn http(code: u16, retry_after: Option<u64>) -> Self {
        let http = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            http,
            retry_after,
            body: format!("<html><body>{http}</body></html>").into_bytes(),
            label: format!("http_{code}"),
        }
    }

    fn into_response(self) -> Response {
        let mut response = (self.http, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// What a request is about, as the stats count it.
#[derive(Clone, Copy, PartialEq)]
enum Counted {
    Record,
    Postback,
    Rate,
}

/// The common path of every provider request. `respond` builds the endpoint's own
/// answer once the request passed the faults and the signature check; `commit` says
/// whether that answer is really sent (false when it is only truncated).
async fn answer(
    state: Arc<State>,
    kill: Option<Extension<ConnKill>>,
    endpoint: Endpoint,
    key: String,
    headers: &HeaderMap,
    body: Option<&Value>,
    respond: impl Fn(&State, bool) -> Reply,
) -> Response {
    let counted = match endpoint {
        Endpoint::RecordByVerificationId | Endpoint::RecordByOrderId => Counted::Record,
        Endpoint::OtpPostback | Endpoint::SmsPostback => Counted::Postback,
        Endpoint::BackfillRate => Counted::Rate,
    };
    let earlier = state
        .stats()
        .arrived(endpoint.name(), &key, counted != Counted::Record);
    let draw = Draw::new(state.seed, format!("{}:{key}:{earlier}", endpoint.name()));
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
        Fault::Ok => match check_signature(&state, headers) {
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

/// About 1 MB (under the client's default 1 MiB cap) of status 0 whose record holds
/// 340,000 empty sms attempts.
fn huge_record() -> Vec<u8> {
    const ATTEMPTS: usize = 340_000;
    let head = br#"{"status":"0","reason":"success","data":{"verifications":{"matched":0},"sms":["#;
    let mut body = Vec::with_capacity(head.len() + ATTEMPTS * 3 + 3);
    body.extend_from_slice(head);
    for i in 0..ATTEMPTS {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(b"{}");
    }
    body.extend_from_slice(b"]}}");
    body
}

/// A placeholder key, replaced in the text by a duplicate pair.
const DUPLICATE: &str = "__duplicate__";

/// Serializes `answer` with the placeholder replaced by `pair`.
fn with_pair(answer: &Value, pair: &str) -> Vec<u8> {
    serde_json::to_string(answer)
        .expect("JSON serializes")
        .replacen(&format!("\"{DUPLICATE}\":true"), pair, 1)
        .into_bytes()
}

/// The record's first money field written twice (sms `pay`, call `cost`), or
/// `matched`, or else a `flowId`: the second copy says something else.
fn duplicate_key(mut answer: Value) -> Vec<u8> {
    let data = &mut answer["data"];
    for (channel, field, second) in [
        ("sms", "pay", r#""pay":"99.99""#),
        ("call", "cost", r#""cost":"99.99""#),
    ] {
        let attempt = match &mut data[channel] {
            Value::Array(items) => items.first_mut(),
            object @ Value::Object(_) => Some(object),
            _ => None,
        };
        if let Some(Value::Object(attempt)) = attempt
            && attempt.contains_key(field)
        {
            attempt.insert(DUPLICATE.into(), Value::Bool(true));
            return with_pair(&answer, second);
        }
    }
    if let Some(Value::Object(v)) = data.get_mut("verifications")
        && v.contains_key("matched")
    {
        v.insert(DUPLICATE.into(), Value::Bool(true));
        return with_pair(&answer, r#""matched":1"#);
    }
    if let Value::Object(data) = data {
        data.insert(DUPLICATE.into(), Value::Bool(true));
        return with_pair(&answer, r#""flowId":1,"flowId":2"#);
    }
    serde_json::to_vec(&answer).expect("JSON serializes")
}

/// `{"status":"0","status":"-1",...}`: the answer's status written twice.
fn duplicate_status(answer: Value) -> Vec<u8> {
    let Value::Object(fields) = answer else {
        return br#"{"status":"0","status":"-1"}"#.to_vec();
    };
    let mut out = Map::new();
    let status = fields.get("status").cloned().unwrap_or(Value::from("0"));
    out.insert("status".into(), status);
    out.insert(DUPLICATE.into(), Value::Bool(true));
    for (k, v) in fields {
        if k != "status" {
            out.insert(k, v);
        }
    }
    with_pair(&Value::Object(out), r#""status":"-1""#)
}

/// The record turned back to still sending: `matched` 1, every sms status -1, every
/// call without its hang-up and termination code.
fn regressed(mut answer: Value) -> Vec<u8> {
    let data = &mut answer["data"];
    if data.is_object() {
        data["verifications"]["matched"] = Value::from(1);
        for channel in ["sms", "call"] {
            let attempts: Vec<&mut Value> = match &mut data[channel] {
                Value::Array(items) => items.iter_mut().collect(),
                object @ Value::Object(_) => vec![object],
                _ => Vec::new(),
            };
            for attempt in attempts {
                if let Value::Object(a) = attempt {
                    if channel == "sms" {
                        a.insert("status".into(), Value::from(-1));
                    } else {
                        a.insert("hangupTime".into(), Value::Null);
                        a.insert("terminationCode".into(), Value::Null);
                    }
                }
            }
        }
    }
    serde_json::to_vec(&answer).expect("JSON serializes")
}

/// Makes a record unreadable: its first sms or call money field becomes `"1e5"`,
/// or, without one, its verification time stops being a time.
fn spoil(data: &mut Value) {
    for (channel, field) in [("sms", "pay"), ("call", "cost")] {
        let attempt = match &mut data[channel] {
            Value::Array(items) => items.first_mut(),
            object @ Value::Object(_) => Some(object),
            _ => None,
        };
        if let Some(Value::Object(attempt)) = attempt {
            attempt.insert(field.into(), Value::from("1e5"));
            return;
        }
    }
    if data.is_object() {
        data["verifications"]["verifiedDate"] = Value::from("yesterday");
    }
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
    if endpoint == Endpoint::BackfillRate {
        stats.rate_posted(body.cloned().unwrap_or(Value::Null), label);
    }
    stats.answered(
        endpoint.name(),
        LoggedRequest {
            endpoint: endpoint.name().to_owned(),
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

/// `Api-Key`, then `Sign`, then `Timestamp` within the window: -1 or -16.
fn check_signature(state: &State, headers: &HeaderMap) -> Result<(), i64> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if text("Api-Key") != Some(state.api_key.as_str()) {
        return Err(-1);
    }
    let Some(timestamp) = text("Timestamp").and_then(|t| t.parse::<i64>().ok()) else {
        return Err(-16);
    };
    if text("Sign") != Some(sign(&state.api_key, &state.api_secret, timestamp).as_str()) {
        return Err(-1);
    }
    let skew = (state.clock.now().timestamp() - timestamp).abs();
    if skew > state.timestamp_window_secs {
        return Err(-16);
    }
    Ok(())
}

fn reason_for(code: i64) -> &'static str {
    match code {
        0 => "success",
        -1 => "Authentication error",
        -2 => "Restricted IP access",
        -14 => "Field is empty or query ID is abnormal",
        -16 => "Timestamp expires",
        -18 => "Port program unusual",
        -22 => "Parameter exception",
        _ => "Failure",
    }
}

async fn by_verification_id(
    Shared(state): Shared<Arc<State>>,
    kill: Option<Extension<ConnKill>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let key = Lookup::VerificationId(&id).key();
    answer(
        state,
        kill,
        Endpoint::RecordByVerificationId,
        key,
        &headers,
        None,
        |s, commit| record_reply(s, Lookup::VerificationId(&id), commit),
    )
    .await
}

async fn by_order_id(
    Shared(state): Shared<Arc<State>>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = json_object(&body);
    let app_id = json
        .as_ref()
        .and_then(|b| text_field(b, "appId"))
        .unwrap_or_default();
    let order_id = json.as_ref().and_then(|b| text_field(b, "orderId"));
    let key = match &order_id {
        Some(o) => Lookup::OrderId {
            app_id: &app_id,
            order_id: o,
        }
        .key(),
        None => "order:".into(),
    };
    answer(
        state,
        kill,
        Endpoint::RecordByOrderId,
        key,
        &headers,
        json.as_ref(),
        |s, commit| match order_id.as_deref().filter(|o| !o.is_empty()) {
            Some(order_id) => record_reply(
                s,
                Lookup::OrderId {
                    app_id: &app_id,
                    order_id,
                },
                commit,
            ),
            None => Reply::status(-22, "Parameter exception: orderId is required"),
        },
    )
    .await
}

fn record_reply(state: &State, lookup: Lookup, commit: bool) -> Reply {
    let key = lookup.key();
    let records = state.records();
    let mut stats = state.stats();
    let served = records.serve(state.seed, lookup, stats.answered_records(&key));
    if commit {
        stats.served_record(&key, served.final_answer);
    }
    Reply::json(0, "success", Some(served.data))
}

async fn otp_postback(
    Shared(state): Shared<Arc<State>>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    postback(
        state,
        kill,
        headers,
        body,
        Endpoint::OtpPostback,
        "otp",
        "verificationId",
    )
    .await
}

async fn sms_postback(
    Shared(state): Shared<Arc<State>>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    postback(
        state,
        kill,
        headers,
        body,
        Endpoint::SmsPostback,
        "sms",
        "msgid",
    )
    .await
}

async fn postback(
    state: Arc<State>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Bytes,
    endpoint: Endpoint,
    kind: &str,
    id_field: &'static str,
) -> Response {
    let json = json_object(&body);
    let id = json
        .as_ref()
        .and_then(|b| text_field(b, id_field))
        .unwrap_or_default();
    let key = format!("{kind}:{id}");
    let ack_key = key.clone();
    answer(
        state,
        kill,
        endpoint,
        key,
        &headers,
        json.as_ref(),
        |s, commit| {
            let reply = check_postback(s, json.as_ref(), id_field);
            if commit && reply.label == "0" {
                s.stats().acknowledged(&ack_key);
            }
            reply
        },
    )
    .await
}

fn check_postback(state: &State, body: Option<&Value>, id_field: &str) -> Reply {
    let Some(body) = body else {
        return Reply::status(-22, "Parameter exception: the body is not a JSON object");
    };
    let mut values = Vec::new();
    for field in ["appId", id_field, "number", "time"] {
        match text_field(body, field) {
            None => {
                return Reply::status(-22, &format!("Parameter exception: {field} is required"));
            }
            Some(v) if v.trim().is_empty() => {
                return Reply::status(-14, &format!("Field is empty: {field}"));
            }
            Some(v) => values.push(v),
        }
    }
    let time = &values[3];
    if time.len() != 13 || !time.bytes().all(|b| b.is_ascii_digit()) {
        return Reply::status(-22, "Parameter exception: time must be unix milliseconds");
    }
    if state.records().is_missing(state.seed, &values[1]) {
        return Reply::status(-14, "Query ID is abnormal");
    }
    Reply::status(0, "success")
}

async fn backfill_rate(
    Shared(state): Shared<Arc<State>>,
    kill: Option<Extension<ConnKill>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = json_object(&body);
    let field = |f| {
        json.as_ref()
            .and_then(|b| text_field(b, f))
            .unwrap_or_default()
    };
    let key = format!("{}:{}", field("appId"), field("mcc"));
    answer(
        state,
        kill,
        Endpoint::BackfillRate,
        key,
        &headers,
        json.as_ref(),
        |_, _| match check_rate(json.as_ref()) {
            Ok(()) => Reply::status(0, "success"),
            Err(why) => Reply::status(-22, &format!("Parameter exception: {why}")),
        },
    )
    .await
}

fn check_rate(body: Option<&Value>) -> Result<(), String> {
    let body = body.ok_or("the body is not a JSON object")?;
    let field = |f: &str| text_field(body, f).filter(|v| !v.trim().is_empty());
    let app_id = field("appId").ok_or("appId is required")?;
    if !(4..=32).contains(&app_id.chars().count()) {
        return Err("appId must be 4-32 characters".into());
    }
    let digits = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    if !field("mcc").is_some_and(|m| digits(&m)) {
        return Err("mcc is required, as digits".into());
    }
    for optional in ["backfillNumber", "backfillCardinalNumber"] {
        if field(optional).is_some_and(|v| !digits(&v)) {
            return Err(format!("{optional} must be a whole number"));
        }
    }
    let now = field("backfillNow").ok_or("backfillNow is required")?;
    let rate = parse_decimal(&now).ok_or("backfillNow is not a decimal")?;
    if rate.scale() > 2 || rate.is_sign_negative() || rate > rust_decimal::Decimal::ONE_HUNDRED {
        return Err("backfillNow must be 0-100 with at most two decimals".into());
    }
    let at = field("callbackTime").ok_or("callbackTime is required")?;
    parse_time(&at).map_err(|e| format!("callbackTime: {e}"))?;
    Ok(())
}

fn json_object(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

/// A field as text: strings as they are, numbers as their text.
fn text_field(body: &Value, field: &str) -> Option<String> {
    match body.get(field)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

async fn unknown(Shared(state): Shared<Arc<State>>) -> Response {
    let mut stats = state.stats();
    stats.arrived("unknown", "", true);
    (StatusCode::NOT_FOUND, "no such endpoint").into_response()
}

#[derive(Deserialize)]
struct StatsQuery {
    #[serde(default)]
    summary: bool,
}

async fn stats(Shared(state): Shared<Arc<State>>, Query(q): Query<StatsQuery>) -> Response {
    Json(state.stats().snapshot(!q.summary)).into_response()
}

#[derive(Deserialize)]
struct RequestsQuery {
    key: Option<String>,
}

async fn requests(Shared(state): Shared<Arc<State>>, Query(q): Query<RequestsQuery>) -> Response {
    Json(state.stats().log(q.key.as_deref())).into_response()
}

async fn get_faults(Shared(state): Shared<Arc<State>>) -> Response {
    Json(state.faults().as_ref().clone()).into_response()
}

async fn put_faults(Shared(state): Shared<Arc<State>>, Json(faults): Json<Faults>) -> Response {
    state.set_faults(faults);
    StatusCode::NO_CONTENT.into_response()
}

#[derive(Deserialize)]
struct ScriptBody {
    key: Option<String>,
    faults: String,
}

async fn post_script(
    Shared(state): Shared<Arc<State>>,
    Json(script): Json<ScriptBody>,
) -> Response {
    match parse_script(&script.faults) {
        Ok(faults) => {
            state.scripts().push(script.key, faults);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

async fn put_cost_change(
    Shared(state): Shared<Arc<State>>,
    Json(change): Json<CostChange>,
) -> Response {
    state.set_cost_change(change);
    StatusCode::NO_CONTENT.into_response()
}

async fn reset(Shared(state): Shared<Arc<State>>) -> Response {
    state.reset();
    Json(json!({"reset": true})).into_response()
}
