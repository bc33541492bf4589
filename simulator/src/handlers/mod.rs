//! The provider's five endpoints and the simulator's own `/_sim/*` control routes.
//!
//! Every provider request goes through [`answer::answer`]: count it, wait the latency,
//! apply the rate limit, then a scripted or drawn fault, then check `Api-Key`, `Sign`
//! and `Timestamp`, then the endpoint's own body checks and answer.

mod answer;
mod checks;
mod mangle;
mod provider;
mod reply;

use crate::faults::{Faults, parse_script};
use crate::records::CostChange;
use crate::state::State;
use axum::extract::{Query, State as Shared};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use provider::{Postback, backfill_rate, by_order_id, by_verification_id};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/otp/verification/record/{id}",
            get(by_verification_id).post(by_verification_id),
        )
        .route("/otp/verification/orderId/record", post(by_order_id))
        .route("/otp/postback/backfill", Postback::OTP.route())
        .route("/sms/postback/backfill", Postback::SMS.route())
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
