//! The provider's five endpoints: each reads what identifies its request, and says how
//! to answer once the request has passed the faults and the signature check.

use super::answer::{Endpoint, answer};
use super::checks::{check_postback, check_rate, json_object, text_field};
use super::reply::Reply;
use crate::records::Lookup;
use crate::server::ConnKill;
use crate::state::State;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, State as Shared};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{MethodRouter, post};
use std::sync::Arc;

pub(super) async fn by_verification_id(
    Shared(state): Shared<Arc<State>>,
    kill: Option<Extension<ConnKill>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let key = Lookup::VerificationId(&id).key();
    answer(
        state,
        kill,
        Endpoint::BY_VERIFICATION_ID,
        key,
        &headers,
        None,
        |s, commit| record_reply(s, Lookup::VerificationId(&id), commit),
    )
    .await
}

pub(super) async fn by_order_id(
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
        Endpoint::BY_ORDER_ID,
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

/// What tells the two postbacks apart.
#[derive(Debug, Clone, Copy)]
pub(super) struct Postback {
    endpoint: Endpoint,
    /// The stats count its ids as `PREFIX:ID`.
    key_prefix: &'static str,
    /// The body field that holds the id.
    id_field: &'static str,
}

impl Postback {
    /// `POST /otp/postback/backfill`: a converted verification.
    pub const OTP: Self = Self {
        endpoint: Endpoint::OTP_POSTBACK,
        key_prefix: "otp",
        id_field: "verificationId",
    };
    /// `POST /sms/postback/backfill`: a converted SMS, by its `msgid`.
    pub const SMS: Self = Self {
        endpoint: Endpoint::SMS_POSTBACK,
        key_prefix: "sms",
        id_field: "msgid",
    };

    /// The route that answers this postback.
    pub fn route(self) -> MethodRouter<Arc<State>> {
        post(
            move |Shared(state): Shared<Arc<State>>,
                  kill: Option<Extension<ConnKill>>,
                  headers: HeaderMap,
                  body: Bytes| self.answer(state, kill, headers, body),
        )
    }

    async fn answer(
        self,
        state: Arc<State>,
        kill: Option<Extension<ConnKill>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        let json = json_object(&body);
        let id = json
            .as_ref()
            .and_then(|b| text_field(b, self.id_field))
            .unwrap_or_default();
        let key = format!("{}:{id}", self.key_prefix);
        let ack_key = key.clone();
        answer(
            state,
            kill,
            self.endpoint,
            key,
            &headers,
            json.as_ref(),
            |s, commit| {
                let reply = check_postback(s, json.as_ref(), self.id_field);
                if commit && reply.label == "0" {
                    s.stats().acknowledged(&ack_key);
                }
                reply
            },
        )
        .await
    }
}

pub(super) async fn backfill_rate(
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
        Endpoint::BACKFILL_RATE,
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
