//! The signed client for the provider's five endpoints.
//!
//! One hyper client (hyper-util's pooled client, TLS by rustls with the platform's
//! verifier, HTTP/1.1 or HTTP/2 by ALPN) with connect and request timeouts is shared by
//! every call. It is reqwest's own stack without reqwest's layers: those parsed each
//! request's URL twice more (the redirect policy, even with redirects off, and the
//! response's URL), about a tenth of the job's CPU per send at 1 ms (README, Benchmark).
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
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderValue, USER_AGENT};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use outcome::{Data, Envelope};
use secrecy::SecretString;
use serde::Serialize;
use tracing::Instrument;
use url::Url;

/// Could not build the HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("cannot set up TLS for the provider's connections")]
    Tls(#[source] std::io::Error),
    /// It would be refused by every request, so it is refused once, here.
    #[error("the API key cannot be sent in an HTTP header (a control character?)")]
    ApiKey(#[source] http::header::InvalidHeaderValue),
}

/// The connections: TCP, with TLS for an `https` base URL.
type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// How long an idle connection stays in the pool (reqwest's default).
const POOL_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);

/// The provider, as the job sees it. Cheap to clone; clones share one connection pool.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    http: HttpClient<Connector, Full<Bytes>>,
    /// Each endpoint's URL, joined to the base URL once: a join per request parsed the
    /// whole URL again.
    urls: std::sync::Arc<[Url; Endpoint::ALL.len()]>,
    /// `Authorization: Basic` from the user and password of the base URL, which the
    /// URLs above no longer hold (they would reach hyper's logs; reqwest did the same).
    basic_auth: Option<HeaderValue>,
    api_key: String,
    /// `api_key` as its header, checked once.
    api_key_header: HeaderValue,
    api_secret: SecretString,
    max_answer_bytes: usize,
    request_timeout: std::time::Duration,
    limits: Limits,
    clock: SharedClock,
}

impl ProviderClient {
    pub fn new(settings: &ProviderSettings, clock: SharedClock) -> Result<Self, BuildError> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(settings.connect_timeout));
        tcp.set_nodelay(true);
        // `https` URLs are the TLS layer's to take.
        tcp.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_platform_verifier(rustls::crypto::aws_lc_rs::default_provider())
            .map_err(BuildError::Tls)?
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(tcp);
        // No redirect is followed (a redirect is an answer for `classify`) and no
        // request that went out is sent again here (hyper only resends one whose pooled
        // connection closed before it was written): retries are ours (`retry`: backoff,
        // the pass's budget, the breaker), and a refused HTTP/2 stream comes back as a
        // connection error, which our policy retries.
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(512)
            .build(connector);
        let api_key_header =
            HeaderValue::from_str(&settings.api_key).map_err(BuildError::ApiKey)?;
        let mut base_url = settings.base_url.clone();
        let basic_auth = take_credentials(&mut base_url);
        Ok(Self {
            http,
            urls: std::sync::Arc::new(Endpoint::ALL.map(|endpoint| {
                base_url
                    .join(endpoint.path())
                    .expect("endpoint paths are valid relative URLs")
            })),
            basic_auth,
            api_key: settings.api_key.clone(),
            api_key_header,
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

    /// Signs, sends, and reads the answer up to the cap, all within the request
    /// timeout.
    async fn exchange(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<RawAnswer, Failure> {
        let request = self.request(method, url, body)?;
        tokio::time::timeout(self.request_timeout, self.answer(request))
            .await
            .map_err(|_| Failure::Retry {
                cause: Transient::Timeout,
                after: None,
            })?
    }

    /// The signed request.
    fn request(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
    ) -> Result<http::Request<Full<Bytes>>, Failure> {
        let signed = sign::headers(
            &self.api_key,
            &self.api_secret,
            self.clock.now().timestamp(),
        );
        // A `Url` is a valid URI but for what `url` lets through and `http` does not
        // (an IPv6 zone, say): that base URL fails every request the same way.
        let uri = http::Uri::try_from(String::from(url)).map_err(|e| Failure::Fatal {
            cause: FatalCause::Endpoint,
            reason: format!("the request URL is not a URI: {e}"),
        })?;
        let mut request = http::Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=UTF-8"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("otp-reconcile/", env!("CARGO_PKG_VERSION"))),
        );
        if let Some(auth) = &self.basic_auth {
            headers.insert(AUTHORIZATION, auth.clone());
        }
        headers.insert("Api-Key", self.api_key_header.clone());
        headers.insert("Timestamp", digits(signed.timestamp));
        headers.insert("Sign", digits(signed.sign));
        Ok(request)
    }

    /// Sends `request` and reads its answer up to the cap.
    async fn answer(&self, request: http::Request<Full<Bytes>>) -> Result<RawAnswer, Failure> {
        let response = self.http.request(request).await.map_err(transport)?;
        let (parts, mut body) = response.into_parts();
        let length = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if length.is_some_and(|n| n > self.max_answer_bytes as u64) {
            return Err(self.too_large());
        }
        // Sized once from Content-Length (within the cap): no growth by doubling.
        let mut answer = Vec::with_capacity(length.map_or(0, |n| usize::try_from(n).unwrap_or(0)));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| Failure::Retry {
                cause: Transient::Connection(chain(&e)),
                after: None,
            })?;
            let Ok(chunk) = frame.into_data() else {
                continue; // trailers
            };
            if answer.len() + chunk.len() > self.max_answer_bytes {
                return Err(self.too_large());
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(RawAnswer {
            http: parts.status,
            headers: parts.headers,
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
    pub http: StatusCode,
    pub headers: HeaderMap,
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
pub fn read_record_answer(http: StatusCode, body: &[u8]) -> Result<Fetched, Failure> {
    let envelope = outcome::classify(http, &HeaderMap::new(), body, chrono::Utc::now())?;
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

/// A failure below HTTP: refused or dropped connections, a connect that timed out.
/// (The request timeout is `exchange`'s.) hyper's errors name no URL, so nothing in
/// them needs redacting.
fn transport(e: hyper_util::client::legacy::Error) -> Failure {
    let text = chain(&e);
    let cause = if timed_out(&e) {
        Transient::Timeout
    } else if e.is_connect() {
        Transient::Connect(text)
    } else {
        Transient::Connection(text)
    };
    Failure::Retry { cause, after: None }
}

/// Whether `e` or one of its causes is an I/O timeout (the connect timeout's error).
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        source = s.source();
    }
    false
}

/// Takes the user and password out of `url`, as an `Authorization: Basic` header
/// (percent-decoded, marked sensitive); `None` when it has neither.
fn take_credentials(url: &mut Url) -> Option<HeaderValue> {
    use base64::Engine as _;
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(url.username());
    let password = url.password().map(decode);
    if user.is_empty() && password.is_none() {
        return None;
    }
    // Both succeed on a URL with a host, which an http(s) URL has.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let pair = format!("{user}:{}", password.unwrap_or_default());
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value =
        HeaderValue::try_from(format!("Basic {encoded}")).expect("base64 is visible ASCII");
    value.set_sensitive(true);
    Some(value)
}

/// A header value of digits or hex digits (the timestamp, the signature).
fn digits(text: String) -> HeaderValue {
    HeaderValue::try_from(text).expect("digits and hex digits are visible ASCII")
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
