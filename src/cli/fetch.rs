//! `otp-reconcile fetch`: one record, as the provider answers it, for whoever is on
//! call and wants to see what the job sees. An answer that cannot be read is printed as
//! received (control characters escaped) with the reason, and the exit is non-zero.

use crate::clock;
use crate::config::ProviderArgs;
use crate::exit::Exit;
use crate::provider::{Gate, ProviderClient, RawAnswer, RetryPolicy};
use clap::Args;
use std::sync::Mutex;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("id").required(true))]
pub struct FetchArgs {
    #[command(flatten)]
    pub provider: ProviderArgs,

    /// The provider's verificationId.
    #[arg(long, group = "id")]
    pub verification_id: Option<String>,

    /// The company's own orderId (needs --app-id).
    #[arg(long, group = "id", requires = "app_id")]
    pub order_id: Option<String>,

    /// The app the order belongs to.
    #[arg(long)]
    pub app_id: Option<String>,

    /// Attempts in all, retries on transient failures included.
    #[arg(long, default_value_t = 3)]
    pub attempts: usize,
}

pub async fn run(args: FetchArgs) -> anyhow::Result<Exit> {
    let settings = args.provider.settings()?;
    let client = ProviderClient::new(&settings, clock::system())?;
    let policy = RetryPolicy {
        max_attempts: args.attempts.max(1),
        ..RetryPolicy::default()
    };
    let gate = Gate::open();
    // The last answer received, to show when it cannot be read.
    let last: Mutex<Option<RawAnswer>> = Mutex::new(None);
    let fetched = policy
        .run(&gate, || async {
            let raw = match (&args.verification_id, &args.order_id) {
                (Some(id), _) => client.raw_record_by_verification_id(id).await?,
                (None, Some(order)) => {
                    let app = args.app_id.as_deref().unwrap_or_default();
                    client.raw_record_by_order_id(app, order).await?
                }
                (None, None) => unreachable!("clap requires one id"),
            };
            let read = raw.read_record(chrono::Utc::now());
            *last.lock().unwrap_or_else(|p| p.into_inner()) = Some(raw);
            read
        })
        .await
        .expect("an open gate never stops");
    let fetched = match fetched {
        Ok(fetched) => fetched,
        Err(failure) => {
            let last = last.into_inner().unwrap_or_else(|p| p.into_inner());
            if let Some(raw) = last {
                eprint!("{}", shown_answer(&raw));
            }
            return Err(anyhow::Error::from(failure)
                .context("the provider did not answer with a readable record"));
        }
    };
    let out = serde_json::json!({ "record": fetched.record, "raw": fetched.raw_json() });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(Exit::Done)
}

/// The answer as received, for a person: HTTP status, content type, and the body as
/// text with control characters escaped (cut after 64 KiB).
fn shown_answer(raw: &RawAnswer) -> String {
    const SHOWN: usize = 64 * 1024;
    let text = String::from_utf8_lossy(&raw.body[..raw.body.len().min(SHOWN)]);
    let cut = if raw.body.len() > SHOWN {
        format!(" (first {SHOWN} of {} bytes)", raw.body.len())
    } else {
        String::new()
    };
    let content_type = raw
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    format!(
        "the provider's answer: HTTP {}, content type {}, {} bytes{cut}:\n{}\n",
        raw.http.as_u16(),
        crate::redact::escape_control(content_type),
        raw.body.len(),
        crate::redact::escape_control(&text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_shown_with_its_control_characters_escaped() {
        let raw = RawAnswer {
            http: http::StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: b"{\"status\":\"0\",\"data\":{\"pay\":\"\x1b[2J\x07\"}}\r\n".to_vec(),
        };
        let shown = shown_answer(&raw);
        assert_eq!(
            shown,
            "the provider's answer: HTTP 200, content type none, 39 bytes:\n\
             {\"status\":\"0\",\"data\":{\"pay\":\"\\u{1b}[2J\\u{7}\"}}\\r\\n\n"
        );
        assert!(!shown.contains('\x1b') && !shown.contains('\x07'));
    }
}
