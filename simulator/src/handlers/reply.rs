//! An answer as the handlers build it, before it becomes an HTTP response, and the
//! provider's reasons for its status codes.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

/// An answer before it becomes a response.
pub(super) struct Reply {
    pub http: StatusCode,
    pub retry_after: Option<u64>,
    pub body: Vec<u8>,
    /// How the stats and the log name it: a status code or a fault.
    pub label: String,
}

impl Reply {
    pub fn status(code: i64, reason: &str) -> Self {
        Self::json(code, reason, None)
    }

    pub fn json(code: i64, reason: &str, data: Option<Value>) -> Self {
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

    pub fn http(code: u16, retry_after: Option<u64>) -> Self {
        let http = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self {
            http,
            retry_after,
            body: format!("<html><body>{http}</body></html>").into_bytes(),
            label: format!("http_{code}"),
        }
    }

    pub fn into_response(self) -> Response {
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

/// The provider's reason for a status code.
pub(super) fn reason_for(code: i64) -> &'static str {
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
