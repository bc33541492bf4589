//! The signed client for the provider's five endpoints.
//!
//! One [`reqwest::Client`] with connect and request timeouts is shared by every call.
//! Each request is signed at the moment it is sent, so a retry carries a fresh
//! `Timestamp` and `Sign`. Answers are read up to a size cap and handed to
//! [`outcome::classify`], the only code that looks at status codes.

pub mod api;
pub mod breaker;
pub mod gate;
pub mod limit;
pub mod outcome;
pub mod retry;
pub mod shape;
pub mod sign;

pub use api::{BackfillRate, Endpoint, OrderIdQuery, OtpPostback, SmsPostback};
pub use breaker::{Breaker, BreakerSettings, Trip};
pub use gate::Gate;
pub use outcome::{Failure, FatalCause, Health, Transient};
pub use retry::{RetryBudget, RetryPolicy};
pub use shape::Limits;

use crate::clock::SharedClock;
use crate::config::ProviderSettings;
use crate::record::Fetched;
use outcome::{Data, Envelope};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest::{Method, redirect};
use secrecy::SecretString;
use serde::Serialize;
use std::error::Error as _;
use tracing::Instrument;
use url::Url;

/// Could not build the HTTP client (a TLS backend problem, in practice).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client")]
pub struct BuildError(#[source] reqwest::Error);

/// The provider, as the job sees it. Cheap to clone; clones share one connection pool.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    http: reqwest::Client,
    /// Each endpoint's URL, joined to the base URL once: a join per request parsed the
    /// whole URL again.
    urls: std::sync::Arc<[Url; Endpoint::ALL.len()]>,
    api_key: String,
    api_secret: SecretString,
    max_answer_bytes: usize,
    request_timeout: std::time::Duration,
    limits: Limits,
    clock: SharedClock,
}

impl ProviderClient {
    pub fn new(settings: &ProviderSettings, clock: SharedClock) -> Result<Self, BuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(redirect::Policy::none())
            // Retries are ours (`retry`: backoff, the pass's budget, the breaker). The
            // default policy would clone every request's headers and URL before sending
            // it, in case HTTP/2 refused the stream; with no retry allowed it clones
            // nothing, and a refused stream comes back as a connection error, which our
            // policy retries.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            .pool_max_idle_per_host(512)
            .tcp_nodelay(true)
            .user_agent(concat!("otp-reconcile/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(BuildError)?;
        Ok(Self {
            http,
            urls: std::sync::Arc::new(Endpoint::ALL.map(|endpoint| {
                settings
                    .base_url
                    .join(endpoint.path())
                    .expect("endpoint paths are valid relative URLs")
            })),
            api_key: settings.api_key.clone(),
            api_secret: settings.api_secret.clone(),
            max_answer_bytes: settings.max_answer_bytes,
            request_timeout: settings.request_timeout,
            limits: Limits {
                max_attempts: settings.max_record_attempts,
            },
            clock,
        })
    }

    /// The longest a request may take, answer included.
    pub fn request_timeout(&self) -> std::time::Duration {
        self.request_timeout
    }

    /// `GET /otp/verification/record/{verificationId}`.
    pub async fn record_by_verification_id(&self, id: &str) -> Result<Fetched, Failure> {
        let mut url = self.url(Endpoint::RecordByVerificationId);
        url.path_segments_mut()
            .expect("an http(s) base URL has path segments")
            .pop_if_empty()
            .push(id);
        let span = tracing::debug_span!("provider.request", endpoint = "record_by_verification_id", verification_id = %id);
        self.send(Method::GET, url, None, record)
            .instrument(span)
            .await
    }

    /// The answer to `GET /otp/verification/record/{verificationId}` as received, for
    /// `fetch` to show it when it cannot be read ([`RawAnswer::read_record`] reads it
    /// exactly as [`Self::record_by_verification_id`] does).
    pub async fn raw_record_by_verification_id(&self, id: &str) -> Result<RawAnswer, Failure> {
        let mut url = self.url(Endpoint::RecordByVerificationId);
        url.path_segments_mut()
            .expect("an http(s) base URL has path segments")
            .pop_if_empty()
            .push(id);
        let span = tracing::debug_span!("provider.request", endpoint = "record_by_verification_id", verification_id = %id);
        self.exchange(Method::GET, url, None).instrument(span).await
    }

    /// The answer to `POST /otp/verification/orderId/record` as received.
    pub async fn raw_record_by_order_id(
        &self,
        app_id: &str,
        order_id: &str,
    ) -> Result<RawAnswer, Failure> {
        let body = OrderIdQuery {
            app_id: app_id.to_owned(),
            order_id: order_id.to_owned(),
        };
        let body = serde_json::to_vec(&body).expect("request bodies serialize");
        let span = tracing::debug_span!("provider.request", endpoint = "record_by_order_id", app_id = %app_id, order_id = %order_id);
        self.exchange(
            Method::POST,
            self.url(Endpoint::RecordByOrderId),
            Some(body),
        )
        .instrument(span)
        .await
    }

    /// `POST /otp/verification/orderId/record`.
    pub async fn record_by_order_id(
        &self,
        app_id: &str,
        order_id: &str,
    ) -> Result<Fetched, Failure> {
        let body = OrderIdQuery {
            app_id: app_id.to_owned(),
            order_id: order_id.to_owned(),
        };
        let span = tracing::debug_span!("provider.request", endpoint = "record_by_order_id", app_id = %app_id, order_id = %order_id);
        self.post(Endpoint::RecordByOrderId, &body, record)
            .instrument(span)
            .await
    }

    /// `POST /otp/postback/backfill`: one converted OTP.
    pub async fn otp_postback(&self, body: &OtpPostback) -> Result<(), Failure> {
        let span = tracing::debug_span!("provider.request", endpoint = "otp_postback", verification_id = %body.verification_id);
        self.post(Endpoint::OtpPostback, body, accepted)
            .instrument(span)
            .await
    }

    /// `POST /sms/postback/backfill`: one converted SMS.
    pub async fn sms_postback(&self, body: &SmsPostback) -> Result<(), Failure> {
        let span = tracing::debug_span!("provider.request", endpoint = "sms_postback", msgid = %body.msgid);
        self.post(Endpoint::SmsPostback, body, accepted)
            .instrument(span)
            .await
    }

    /// `POST /otp/backfillRate`: one app's conversion rate in one country.
    pub async fn backfill_rate(&self, body: &BackfillRate) -> Result<(), Failure> {
        let span = tracing::debug_span!("provider.request", endpoint = "backfill_rate", app_id = %body.app_id, mcc = %body.mcc);
        self.post(Endpoint::BackfillRate, body, accepted)
            .instrument(span)
            .await
    }

    fn url(&self, endpoint: Endpoint) -> Url {
        self.urls[endpoint as usize].clone()
    }

    async fn post<B: Serialize, T>(
        &self,
        endpoint: Endpoint,
        body: &B,
        read: impl FnOnce(Envelope<'_>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let body = serde_json::to_vec(body).expect("request bodies serialize");
        self.send(Method::POST, self.url(endpoint), Some(body), read)
            .await
    }

    /// Signs, sends, reads the answer up to the cap, classifies it, and hands its
    /// envelope to `read` (which borrows the answer: it is read where it lies).
    async fn send<T>(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        read: impl FnOnce(Envelope<'_>) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let raw = self.exchange(method, url, body).await?;
        let outcome = outcome::classify_within(
            raw.http,
            &raw.headers,
            &raw.body,
            self.clock.now(),
            self.limits,
        );
        match &outcome {
            Ok(env) => tracing::debug!(http = raw.http.as_u16(), status = %env.status, "answer"),
            Err(failure) => tracing::debug!(http = raw.http.as_u16(), %failure, "answer"),
        }
        read(outcome?)
    }

    /// Signs, sends, and reads the answer up to the cap.
    async fn exchange(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<RawAnswer, Failure> {
        let signed = sign::headers(
            &self.api_key,
            &self.api_secret,
            self.clock.now().timestamp(),
        );
        let mut request = self
            .http
            .request(method, url)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json;charset=UTF-8"),
            )
            .header("Api-Key", signed.api_key)
            .header("Timestamp", signed.timestamp)
            .header("Sign", signed.sign);
        if let Some(body) = body {
            request = request.body(body);
        }
        let mut response = request.send().await.map_err(transport)?;
        let http = response.status();
        // Taken, not cloned: the body is read without them.
        let headers = std::mem::take(response.headers_mut());
        if response
            .content_length()
            .is_some_and(|n| n > self.max_answer_bytes as u64)
        {
            return Err(self.too_large());
        }
        // Sized once from Content-Length (within the cap): no growth by doubling.
        let mut answer = Vec::with_capacity(
            response
                .content_length()
                .map_or(0, |n| usize::try_from(n).unwrap_or(0)),
        );
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if answer.len() + chunk.len() > self.max_answer_bytes {
                return Err(self.too_large());
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(RawAnswer {
            http,
            headers,
            body: answer,
        })
    }

    fn too_large(&self) -> Failure {
        Failure::Unreadable {
            problem: format!("answer larger than {} bytes", self.max_answer_bytes),
        }
    }
}

/// An answer as received: its HTTP status, headers and body (at most the size cap).
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub http: reqwest::StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// Reads it as a record answer, exactly as the client's record calls do.
    pub fn read_record(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Fetched, Failure> {
        record(outcome::classify(
            self.http,
            &self.headers,
            &self.body,
            now,
        )?)
    }
}

/// Reads a complete record answer the way the client does: classify, then read `data`.
/// Public so that fixtures go through exactly the client's path.
pub fn read_record_answer(http: reqwest::StatusCode, body: &[u8]) -> Result<Fetched, Failure> {
    let envelope = outcome::classify(
        http,
        &reqwest::header::HeaderMap::new(),
        body,
        chrono::Utc::now(),
    )?;
    record(envelope)
}

/// A record answer: status 0 with a readable `data`.
fn record(envelope: Envelope<'_>) -> Result<Fetched, Failure> {
    let data = envelope.data.ok_or_else(|| Failure::Unreadable {
        problem: "status 0 without `data`".into(),
    })?;
    match data {
        Data::Read { tree, text } => Fetched::from_tree(&tree, text),
        // The text moves into the record: no copy of it.
        Data::Text(text) => Fetched::from_raw(Box::<str>::from(text).into_string()),
    }
    .map_err(|e| Failure::Unreadable {
        problem: e.to_string(),
    })
}

/// A postback's answer: status 0 is all it says.
fn accepted(_: Envelope<'_>) -> Result<(), Failure> {
    Ok(())
}

/// A failure below HTTP: timeouts, refused or dropped connections.
fn transport(e: reqwest::Error) -> Failure {
    // Its message names the URL, which is logged: without credentials.
    let e = crate::redact::reqwest_error(e);
    let cause = if e.is_timeout() {
        Transient::Timeout
    } else if e.is_connect() {
        Transient::Connect(chain(&e))
    } else {
        Transient::Connection(chain(&e))
    };
    Failure::Retry { cause, after: None }
}

/// An error and its causes on one line.
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
